//! The media of calls, sans-IO (DESIGN.md §6.6): Opus 48 kHz mono in RTP-style packets, sealed
//! end to end, through a jitter buffer to playout, with receiver reports and DTMF events.
//!
//! ```text
//!  send_audio(pcm) ─ Opus encode ─ seal ──┐                       ┌─ open ─ jitter buffer ─ pop_frame(now)
//!  send_dtmf(digit) ─ RFC 4733 ── seal ───┼─ poll_transmit  handle_input ─┼─ DTMF events ─ poll_event
//!  timer: reports ─────────────── seal ───┘                       └─ reports: loss, jitter, RTT
//! ```
//!
//! - [`MediaSession`]: the state machine a call drives (inputs, outputs, settings, stats).
//! - [`packet`]: the 12-byte header (RTP's fixed header), payload types, index estimation.
//! - [`seal`]: ChaCha20-Poly1305 with per-direction keys, derived 64-bit counters, replay window.
//! - [`codec`]: Opus encoder and decoder for calls, DTX detection, the in-band FEC flag.
//! - `jitter`: the adaptive jitter buffer with FEC recovery and PLC ([`Frame`], [`FrameKind`]).
//! - `report`: receiver reports (RFC 3550 §6.4.1 block, A.8 jitter, LSR/DLSR round trip).
//! - `dtmf`: RFC 4733 events, sent with redundancy and received exactly once.
//! - `quality`: loss before and after recovery, concealment, an E-model MOS ([`Quality`]).
//! - [`red`]: RFC 2198 redundancy, a copy of the previous packet in the next, under random loss.
//! - [`rate`]: send-rate adaptation to the loss the peer reports (bitrate, then frame length).
//! - `config`: every setting and timer, and how they relate ([`MediaConfig`]).
//!
//! A sealed audio packet is 12 (header) + Opus + 16 (tag) bytes: 28 bytes of overhead against
//! SRTP's 12 + 10 (HMAC-SHA1-80) = 22, for an AEAD instead of a truncated MAC.

pub mod codec;
mod config;
mod drift;
mod dtmf;
mod jitter;
pub mod packet;
mod quality;
pub mod rate;
pub mod red;
mod report;
pub mod seal;
mod session;

pub use codec::{FrameDuration, OpusSettings, Vbr};
pub use config::{DtmfConfig, MediaConfig, PlayoutConfig};
pub use dtmf::{DtmfDigit, DtmfError, MAX_DIGIT, MIN_DIGIT};
pub use jitter::{Frame, FrameKind, PlayoutStats};
pub use packet::{Header, PayloadType, is_media, stream_of};
pub use quality::{Quality, mos, r_factor};
pub use report::PeerReport;
pub use seal::{KeyError, MediaKeys, Role};
pub use session::{
    Drops, Event, MediaError, MediaSession, MediaStats, ReceiveStats, SendStats, TraceRecord,
};
