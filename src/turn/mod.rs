//! TURN (RFC 8656): the relay server's sans-IO core and its parts.
//!
//! - [`server`]: allocations, permissions, channels, authentication, quotas, drain.
//! - [`client`]: the TURN client (allocate, permissions, channels, send/receive).
//! - [`auth`]: long-term and time-limited credentials, nonces, the 401 rate limiter.
//! - [`peer_policy`]: which peers a relay may reach (IANA special-purpose registries).
//! - [`channel`]: ChannelData framing.
//! - [`ports`]: relayed port bookkeeping (EVEN-PORT, RESERVATION-TOKEN).

pub mod auth;
pub mod channel;
pub mod client;
pub mod peer_policy;
pub mod ports;
pub mod server;

pub use auth::{Credentials, mint_rest_credential, rest_password};
pub use client::{Op, Received, SendError, TurnClient, TurnClientConfig, TurnEvent};
pub use peer_policy::{AllowPeerError, IpNet, PeerPolicy, Refusal, parse_allow_peer};
pub use server::{
    AllocId, ClientAction, ClientAddr, Event, PeerAction, Transport, TurnConfig, TurnCounters,
    TurnServer,
};
