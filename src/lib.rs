//! voxmesh: peer-to-peer voice calling as a toolkit of small, composable programs.
//!
//! The binaries in `src/bin/` are thin: they parse flags (definitions in [`cli`]) and call into
//! this library. Protocol logic is sans-IO: state machines that take `now` and packets and
//! return packets and timeouts, driven by thin tokio drivers in [`net`].
//!
//! # Layout
//!
//! - [`stun`]: STUN message parsing and building (RFC 8489, RFC 5780, RFC 3489 compatibility).
//! - [`supernode`]: the supernode's services; for now the STUN binding service.
//! - [`identity`]: Ed25519 identities, user IDs (`vx1...`), signed records, name claims, key and
//!   contacts files.
//! - [`session`]: the authenticated, encrypted client-supernode channel (Noise IK) as a sans-IO
//!   endpoint: handshakes, transactions, keepalives, replay window, cookies and rate limits.
//! - [`call`]: calls: signalling, end-to-end keys, call state, connectivity (ICE, RFC 8445), and
//!   the client endpoint joining agent, phone, media, relay and STUN on one socket.
//! - [`nat`]: NAT behaviour discovery (RFC 5780 / RFC 4787) as a state machine and its report.
//! - [`media`]: call media, sans-IO: RTP-style framing, end-to-end sealing, Opus, jitter buffer,
//!   FEC and PLC, receiver reports, DTMF events.
//! - [`net`]: sockets, batched UDP I/O, drivers, metrics endpoint, shutdown.
//! - [`audio`]: audio devices, WAV/Ogg Opus/raw I/O, resampling, pacing, analysis (`pipe-audio`).
//! - [`cli`]: flag definitions shared by the binaries, completions and man pages.
//! - [`lab`]: the network-namespace NAT lab used by tests, benchmarks and the demo.

pub mod agent;
pub mod audio;
#[cfg(feature = "calls")]
pub mod call;
pub mod cli;
pub mod directory;
pub mod identity;
#[cfg(feature = "supernode")]
pub mod lab;
#[cfg(feature = "calls")]
pub mod media;
#[cfg(feature = "supernode")]
pub mod mesh;
#[cfg(feature = "natprobe")]
pub mod nat;
pub mod net;
pub mod session;
pub mod signal;
pub mod stun;
#[cfg(feature = "supernode")]
pub mod supernode;
pub mod turn;
