//! The supernode role, sans-IO: the STUN binding service ([`binding`], RFC 5780) and the
//! supernode core ([`Supernode`]: registration, lookup, presence, names, relays, routing), which
//! dispatches to one sub-machine per concern: `peers`, `clients`, `presence`, `names`, `relays`,
//! `routing`, `promotion`. Their driver is [`crate::net::drivers::stun_server`] (STUN port) with
//! [`crate::net::drivers::supernode`] (the core's loop).

pub mod binding;
mod clients;
mod names;
mod node;
mod peers;
mod presence;
mod promotion;
mod relays;
mod routing;

pub use binding::{BindingConfig, BindingCounters, BindingService, Reply, Via};
pub use node::{NodeConfig, NodeCounters, Status, Supernode};
