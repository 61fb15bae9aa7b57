//! The supernode role, sans-IO: the STUN binding service ([`BindingService`], stateless) and
//! the supernode core ([`Supernode`]: sessions, registration, presence, lookup, names, routing of
//! call signalling, relay offers, the mesh).

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
