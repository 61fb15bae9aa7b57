//! The secure channel between a client and its supernode, and between supernodes (DESIGN.md §3,
//! §5): Noise IK over the client's one UDP socket, bound to Ed25519 identities, with
//! transactions, keepalives, replay protection, and a responder that survives handshake floods.
//!
//! - [`Endpoint`]: the sans-IO state machine for all sessions of one socket (`handle_input`,
//!   `handle_timeout`, `poll_transmit`, `poll_timeout`, `poll_event`).
//! - [`Config`] and [`defaults`]: every timer and bound, and how they relate.
//! - [`crypto`]: why Noise IK, how identities are bound to Noise keys, and
//!   [`crypto::ResponderCrypto`], the bare cryptographic cost of a responder handshake.
//! - `wire` (public with the `testing` feature): frame layouts (first byte 4..=15); transport
//!   frames name the epoch of the key that sealed them, as each direction rekeys every 2
//!   minutes or 2^20 frames ([`crypto`], [`defaults`]).
//! - DoS protection (module `cookie`, private): mac1/mac2, stateless cookies, rate limits, as
//!   WireGuard does; tuned by [`RateLimits`].
//! - [`ReplayWindow`]: the 512-nonce sliding window.
//! - [`Counters`] and [`Refusal`]: everything refused, by reason.

mod cookie;
mod counters;
pub mod crypto;
pub mod defaults;
mod endpoint;
mod replay;
/// The frame layout, public only for the lab's load generator and the security tests.
#[cfg(feature = "testing")]
pub mod wire;
#[cfg(not(feature = "testing"))]
mod wire;

pub use counters::{Counters, Refusal};
pub use crypto::KeyEpochs;
pub use defaults::{Config, RateLimits};
pub use endpoint::{
    CloseReason, ConnectError, Endpoint, Event, HandshakeError, Peer, Role, SendError, SessionId,
    TransactionError, TransactionId, Transmit,
};
pub use replay::{ReplayError, ReplayWindow, WINDOW as REPLAY_WINDOW};
pub use wire::is_session_frame;
