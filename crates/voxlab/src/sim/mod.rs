//! The discrete-event network every simulated test runs on: one clock, one event queue, hosts
//! behind the NAT model, links impaired by the lab's seeded [`Impairer`](crate::netem::Impairer),
//! the real STUN and TURN server cores on the internet, a log of every datagram sent, and
//! injection from any address.
//!
//! ```text
//!  host 0  10.0.1.2  --LAN-- NAT 203.0.113.1 ==access link 0==+
//!  host 1  10.0.2.2  --LAN-- NAT 203.0.113.2 ==access link 1==+== internet: STUN, TURN, paths
//!  host 2  198.51.100.7 (public: untranslated) ===============+
//! ```
//!
//! A datagram from host 0 to host 1 crosses host 0's NAT and uplink, the internet path between
//! the two (clean unless the world impairs paths), host 1's downlink and NAT. So "25 ms per NAT
//! link" gives a 100 ms round trip between two NATed hosts and 50 ms to a server; a world of
//! public hosts (session endpoints, supernodes) puts its latency and loss on the internet paths
//! instead, per direction and per pair if it likes.
//!
//! The world knows nothing of the programs on the hosts: a test (or a thin layer in
//! `tests/support`: natprobe's `Sim`, the ICE calls, session endpoints, the mesh, media pairs)
//! sends datagrams with [`World::send`] and receives what [`World::deliver_due`] hands back,
//! driving its own state machines in between, and asks [`World::next_event`] when something
//! happens next. Time is simulated (a base `Instant` plus an offset that jumps from event to
//! event: a minute of protocol costs microseconds). Every random choice comes from the world's
//! seed: the NATs' ports from its `StdRng`, each link's impairment from its own stream derived
//! from the seed and the link's name, and events run in (time, insertion) order, so a seed
//! replays the same run.
//!
//! The promotion issue's large simulation grows from here; it is in the lab crate so that it is
//! never part of the product.

mod link;
mod nat;
mod world;

pub use link::{Crossing, Link, LinkStats, Path};
pub use nat::{Filtering, Mapping, Nat, NatConfig, NatDrops, Outbound};
pub use world::{
    Datagram, Delivery, Fate, Host, LAN_DELAY, Relay, Sent, StunBehaviour, StunServer, World,
    WorldStats,
};
