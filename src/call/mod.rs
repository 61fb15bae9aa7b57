//! Calls: connectivity (ICE), and later signalling, media keys and call state.
//!
//! - [`ice`]: candidates, connectivity checks, nomination, relay fallback, consent freshness,
//!   ICE restart (RFC 8445, RFC 7675) as a sans-IO state machine.

pub mod ice;
