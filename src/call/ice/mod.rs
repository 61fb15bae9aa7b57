//! Connectivity for calls: ICE (RFC 8445) as a sans-IO state machine.
//!
//! The agent finds and keeps a path between two clients: candidates go in (gathered outside,
//! as str0m's agent expects), connectivity checks go out, and the selected path and its
//! changes come back as events. It speaks STUN through our own codec ([`crate::stun`]) and
//! sends through the call's one UDP socket or through our TURN client
//! ([`crate::turn::TurnClient`]): every [`Transmit`] names its [`Route`].
//!
//! # Driving
//!
//! See [`IceAgent`]. A call core:
//! 1. creates the agent (`controlling` for the caller) and signals
//!    [`IceAgent::local_credentials`];
//! 2. adds local candidates as they appear and trickles what [`IceAgent::add_local_candidate`]
//!    returns: the host address at once, the server-reflexive one from the supernode's STUN
//!    answer, the relayed one when the TURN allocation succeeds (`TurnEvent::Allocated`);
//! 3. feeds the peer's credentials and candidates from signalling;
//! 4. hands every STUN datagram not from the supernode or the TURN server to
//!    [`IceAgent::handle_input`], with [`Route::Direct`] for the socket and [`Route::Relay`]
//!    for data the TURN client received (`TurnClient::handle_input` → `Received`);
//! 5. sends [`Transmit`]s: `Direct` from the socket, `Relay` via `TurnClient::send_to`
//!    (installing the permission [`Event::RelayPermission`] asks for first);
//! 6. sends media on [`IceAgent::selected`] (the same two routes), and follows
//!    [`Event::Connected`], [`Event::PathChanged`], [`Event::ConsentLost`]. Consent checks
//!    run on their own timer whether or not media flows, so mute and DTX need nothing;
//! 7. on [`Event::MappingChanged`] (as the controlled side) or [`Event::Disconnected`],
//!    may [`IceAgent::restart`], asking the supernode for the mapping again and re-allocating
//!    on the relay if it changed.
//!
//! A callee hiding its addresses from a caller who is not a contact (DESIGN §6.5) adds only
//! its relayed candidate to the agent until it accepts, then its host and server-reflexive
//! ones: until then no check leaves from its own address, and the call moves from the relay
//! to a direct pair as soon as one works.
//!
//! # Choices
//!
//! - **Nomination: aggressive, with renomination.** The controlling agent puts USE-CANDIDATE
//!   on its checks (relayed pairs only after [`Timing::relay_grace`]), so the first answered
//!   check selects a pair on both sides: one round trip less than regular nomination, which
//!   matters when the callee accepts and the first audio should flow at once. RFC 8445 dropped
//!   aggressive nomination because several pairs could end up nominated with no way to tell
//!   which one counts; we add the NOMINATION counter (draft-thatcher-ice-renomination, as
//!   libwebrtc does): the controlled agent uses the nominated pair with the highest
//!   (counter, priority), which the controlling agent keeps equal to its own choice, and the
//!   controlling agent can move the call (to a direct pair that starts working, off a path
//!   that lost consent, after its NAT rebound) by nominating again with a higher counter,
//!   without an ICE restart.
//! - **Direct before relayed.** Relayed pairs rank below every direct pair (type preference 0),
//!   direct pairs keep being checked while the relay carries the call, and the best working
//!   direct pair takes over at once ([`ChangeReason::Better`]).
//! - **Pace Ta = 20 ms** and RTT-derived retransmission: see [`defaults`].
//! - **Consent** (RFC 7675) on the selected pair and one standby pair, interval and timeout
//!   configurable: the RFC's 30 s by default, [`Timing::fast_consent`] for a 1 s failover.
//! - **NAT rebinding**: answers carry XOR-MAPPED-ADDRESS; when it changes on a path we report
//!   [`Event::MappingChanged`]. A controlling agent renominates the same pair (the peer sees it
//!   from the new address, learns a peer-reflexive candidate and follows); the peer of a
//!   rebound controlled agent learns the new address from its consent checks and switches to
//!   the new, higher-priority peer-reflexive pair. Where the peer's filtering refuses the new
//!   mapping, [`IceAgent::restart`] (new credentials, re-punching) recovers; media stays on
//!   the old pair until the new session nominates.
//! - **No amplification**: checks go only to signalled candidates and to peer-reflexive
//!   addresses learned from authenticated checks; answers go only to sources of authenticated
//!   requests; unauthenticated or malformed messages are dropped unanswered and counted
//!   ([`IceCounters::refused`]); remote candidates and pairs are bounded.
//! - **Deterministic**: every random choice comes from a seeded generator in [`IceConfig`];
//!   no clock is read.
//!
//! # Why not `is` or `rice-proto` (evaluated 2026-12, `is` 0.12.0, `rice-proto` 0.4.3)
//!
//! Both are sans-IO ICE agents under MIT/Apache-2.0 and both would work with a socket the
//! application owns. Neither fits; ours is about 2,300 lines with its documentation, on top of
//! the STUN codec, RTT estimator and TURN client we already have.
//!
//! `is` (str0m's agent, 9.3k lines, Rust ≥ 1.89) comes closest. Its relay hooks are right: a
//! relayed candidate is added from outside and a `Transmit` whose source is the relayed address
//! can be routed through our TURN client. It does trickle, IPv6, ICE restart, peer-reflexive
//! discovery, a configurable Ta. Against it:
//! - it carries its own STUN stack (`is::stun`, 2k lines): every check would be parsed by a
//!   second codec next to ours, which the design forbids (one zero-copy codec, cross-checked);
//! - randomness (transaction IDs, pair IDs, credentials) comes from `fastrand`'s process-wide
//!   thread-local generator inside `str0m-proto`: not injectable per agent, so our seeded
//!   simulations could only be made deterministic by reseeding a global behind its back;
//! - liveness is not RFC 7675 consent: every pair is re-checked on its STUN backoff schedule
//!   (at most `max_rto` apart) and a pair dies after nine unanswered checks (about 20 s with
//!   its defaults); there is no consent interval or timeout to set apart from check
//!   retransmission, and no event saying "this path lost consent";
//! - nomination follows pair priority only; there is no notion of "relay only after direct
//!   had a chance" and no counter to make the peer follow a deliberate non-priority choice;
//! - refused messages (wrong password, unsigned, unknown transaction) are not counted, which
//!   our security tests and metrics need; it pulls `str0m-proto` (with `time`, `base64ct`,
//!   `fastrand`, `serde`), `crc`, `subtle` and a second `sha1`/`hmac` pair, and would raise our
//!   MSRV from 1.85 to 1.89.
//!
//! `rice-proto` (16k lines, Rust ≥ 1.85) does not fit at all: a relayed candidate must come
//! with *its* TURN client (`turn-client-proto`; `add_local_gathered_candidate` takes a
//! `TurnClient`), so our TURN client core could not carry the checks; it has its own STUN
//! stack (`stun-proto`), gathers itself, has no RFC 7675 consent (its crate docs list it as
//! not implemented), draws randomness from `rand::rng()` (the thread's OS-seeded generator),
//! and by default builds OpenSSL and rustls with a platform verifier.

mod agent;
pub mod candidate;
pub mod defaults;
mod types;
mod wire;

pub use agent::IceAgent;
pub use candidate::{Candidate, CandidateKind, Credentials};
pub use defaults::{Timing, TimingError};
pub use types::{
    BadCredentials, CandidateError, ChangeReason, Event, IceConfig, IceCounters, Inbound,
    LocalCandidate, PathInfo, Route, Transmit,
};
pub use wire::{NOMINATION, Refusal};
