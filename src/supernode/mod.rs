//! The supernode role, sans-IO: the STUN binding service ([`BindingService`], RFC 5780) and the
//! supernode core ([`Supernode`]: sessions, registration and presence, lookup, names, membership,
//! relays and routing). Their driver is [`crate::net::drivers::stun_server`] (STUN port) with
//! [`crate::net::drivers::supernode`] (the core's loop).

pub mod binding;
mod clients;
mod names;
mod node;
mod peers;
mod presence;
mod relays;
mod routing;

pub use binding::{BindingConfig, BindingCounters, BindingService, Reply, Via};
pub use node::{NodeConfig, NodeCounters, Status, Supernode};
