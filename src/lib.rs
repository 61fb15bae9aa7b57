//! voxmesh: peer-to-peer voice calling as a toolkit of small, composable programs.
//!
//! The binaries in `src/bin/` are thin: they parse flags (definitions in [`cli`]) and call into
//! this library. Protocol logic lives in sans-IO cores: state machines that take `now` and
//! packets and return packets, events and timeouts. Thin tokio drivers in [`net::drivers`] own
//! the sockets, threads and timers and move bytes between them and the cores.
//!
//! # Layout
//!
//! Cores (sans-IO: no sockets, threads, tokio or devices; checked by `tests/docs_current.rs`):
//!
//! - [`stun`]: STUN message parsing and building (RFC 8489, RFC 5780, RFC 3489 compatibility).
//! - [`demux`]: the first-byte demultiplexer (RFC 7983 style) every shared port uses.
//! - [`transmit`]: [`transmit::Transmit`], the outgoing datagram every core's `poll_transmit`
//!   returns.
//! - [`identity`]: Ed25519 identities, user IDs (`vx1...`), signed records, name claims, key and
//!   contacts files.
//! - [`session`]: the authenticated, encrypted client-supernode channel (Noise IK) as a sans-IO
//!   endpoint: handshakes, transactions, keepalives, replay window, cookies and rate limits.
//! - [`signal`]: the signalling messages carried inside sessions.
//! - [`directory`]: a supernode's directory (entries, presence, names) and rendezvous hashing.
//! - [`mesh`]: supernode membership (SWIM) carried inside sessions.
//! - [`supernode`]: the supernode role: the STUN binding service and the supernode core
//!   (registration, presence, lookup, names, membership, relays, routing).
//! - [`client`]: the client agent core: registration with failover, lookups, presence, names,
//!   routed messages; and a relay's link to its supernodes.
//! - [`turn`]: TURN (RFC 8656): the relay server core, the client allocation, ChannelData,
//!   credentials and peer policy.
//! - [`nat`]: NAT behaviour discovery (RFC 5780 / RFC 4787) as a state machine and its report.
//! - [`call`]: calls: signalling, end-to-end keys, call state, connectivity (ICE, RFC 8445), and
//!   the client endpoint joining agent, phone, media, relay and STUN on one socket.
//! - [`roles`]: promotion: when a client takes on the relay or supernode role, and how many
//!   of each the mesh wants (need and grants).
//! - [`media`]: call media: RTP-style framing, end-to-end sealing, Opus, jitter buffer, FEC and
//!   PLC, receiver reports, DTMF events.
//!
//! Around them:
//!
//! - [`net`]: the tokio drivers ([`net::drivers`]: STUN server, supernode, relay, relay link,
//!   client, call, NAT probe, TURN client) and their plumbing: socket set-up, batched UDP I/O,
//!   metrics endpoint, readiness notification, shutdown.
//! - [`audio`]: audio devices, WAV/Ogg Opus/raw I/O, resampling, pacing, analysis (`pipe-audio`);
//!   echo cancellation, noise suppression and gain control for microphone-and-speaker calls.
//! - [`cli`]: the binaries' programs: flag definitions, configuration, completions and man pages.
//!
//! The network-namespace NAT lab (harness, impairment forwarder, load generators, demo, doc
//! generation) is a separate crate, `crates/voxlab`, used by the tests and benchmarks only.

pub mod audio;
#[cfg(feature = "calls")]
pub mod call;
pub mod cli;
pub mod client;
pub mod demux;
pub mod directory;
pub mod identity;
#[cfg(feature = "calls")]
pub mod media;
#[cfg(feature = "supernode")]
pub mod mesh;
#[cfg(feature = "natprobe")]
pub mod nat;
pub mod net;
pub mod roles;
pub mod session;
pub mod signal;
pub mod stun;
#[cfg(feature = "supernode")]
pub mod supernode;
pub mod transmit;
pub mod turn;
