//! The supernode role: for now its STUN binding service; registration, presence, lookup and
//! call signalling join it in later modules.

pub mod binding;
mod clients;
mod names;
mod node;
mod peers;
mod presence;
mod relays;
mod routing;
mod service;

pub use binding::{BindingConfig, BindingCounters, BindingService, Reply, Via};
pub use node::{NodeConfig, NodeCounters, Status, Supernode};
pub use service::{StunServer, StunServerError};
