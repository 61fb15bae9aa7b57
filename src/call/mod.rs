//! Calls: signalling between two users' clients, end-to-end keys, connectivity and call state.
//! Sans-IO, like every core: the client driver feeds it routed messages and datagrams.
//!
//! - [`message`]: the call message set, signed end to end.
//! - [`e2e`]: the Noise XX key exchange for media keys and the short authentication string.
//! - [`endpoint`]: a client's whole network side on one socket: agent, phone, media, TURN, STUN.
//! - [`phone`]: the calls of one user: call states, timers, glare, busy, privacy of addresses.
//! - [`relay_rank`]: which of the offered relays carries a call and which stands by.
//! - [`ice`]: candidates, connectivity checks, nomination, relay fallback, consent freshness,
//!   ICE restart (RFC 8445, RFC 7675) as a sans-IO state machine.

pub mod e2e;
pub mod endpoint;
pub mod ice;
pub mod message;
pub mod phone;
pub mod relay_rank;
