//! The supernode role: the STUN binding service ([`binding`]) and the supernode core
//! ([`Supernode`]: registration, lookup, presence, names, relays, routing), which dispatches to
//! one sub-machine per concern: `peers`, `clients`, `presence`, `names`, `relays`, `routing`.

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
