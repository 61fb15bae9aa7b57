//! The tokio drivers: each owns sockets, timers and channels and moves bytes between them and
//! one or more sans-IO cores. No protocol logic lives here.
//!
//! - [`stun_server`]: the STUN (RFC 5780) and directory-port server: per-socket threads around
//!   [`crate::supernode::BindingService`], handing session frames to the supernode driver.
//! - [`supernode`]: the [`crate::supernode::Supernode`] core's loop and its status socket.
//! - [`relay`]: the TURN relay daemon around [`crate::turn::TurnServer`].
//! - [`relay_link`]: a relay's registration link to its supernode.
//! - [`roles`]: promotion ([`crate::roles::Promoter`]) and the relay and supernode roles it
//!   hosts in `answer`.
//! - [`client`]: the client agent ([`crate::client::Agent`]) on one UDP socket.
//! - `streams`: TCP and TLS streams to supernodes and relays, for networks that block UDP.
//! - [`call`]: the call endpoint ([`crate::call::endpoint::Endpoint`]) with audio channels.
//! - [`probe`]: NAT discovery ([`crate::nat::Probe`]).
//! - [`turn_client`]: a TURN client allocation ([`crate::turn::client`]) over UDP or TCP.

// Gated like the cores they drive (see Cargo.toml's features).
#[cfg(feature = "calls")]
pub mod call;
pub mod client;
#[cfg(feature = "natprobe")]
pub mod probe;
#[cfg(feature = "relay")]
pub mod relay;
pub mod relay_link;
#[cfg(all(feature = "calls", feature = "relay", feature = "supernode"))]
pub mod roles;
pub(crate) mod streams;
#[cfg(feature = "supernode")]
pub mod stun_server;
#[cfg(feature = "supernode")]
pub mod supernode;
pub mod turn_client;
