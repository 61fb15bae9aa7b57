//! Frame layouts. Every frame's first byte is its type, in 4..=15 (DESIGN.md §3: the range RFC
//! 7983 and RFC 9443 leave free, so STUN, TURN ChannelData, RTP and QUIC never collide with it).
//! Handshake frames have fixed lengths, so anything else is refused before any work.
//!
//! ```text
//! HANDSHAKE_INIT  4 | ver | sender idx (4) | Noise IK msg 1 (193) | mac1 (16) | mac2 (16)  = 231
//! INIT_EARLY      8 | ver | sender idx (4) | Noise IK msg 1 (193 + early) | mac1 | mac2  <= 1200
//! HANDSHAKE_RESP  5 | ver | sender idx (4) | receiver idx (4) | Noise IK msg 2 (146)      = 156
//! COOKIE_REPLY    6 | ver | receiver idx (4) | nonce (24) | sealed cookie (16 + 16)       =  62
//! TRANSPORT       7 | receiver idx (4) | epoch (2) | counter (6) | ciphertext (inner + 16) >= 29
//! ```
//!
//! `INIT_EARLY` is `HANDSHAKE_INIT` with early data (0-RTT) after the binding in message 1's
//! encrypted payload: the wall-clock time (unix ms, 8 bytes), then inner messages, each as
//! length (2 bytes) and inner message (below; requests and messages only). Its length is bounded
//! (`EARLY_INIT_MIN..=EARLY_INIT_MAX`), its MACs are its last 32 bytes. See `endpoint` for when
//! a responder acts on early data and how replays are refused.
//!
//! Indices are chosen at random by the side that receives with them, so a session survives the
//! peer's address changing (NAT rebinding) and an off-path attacker must guess 32 bits to aim a
//! packet at a session. The response is smaller than the initiation and the cookie reply
//! smaller still: nothing a spoofed source sends us is answered with more bytes than it sent.
//!
//! A transport frame's 8-byte epoch-and-counter field ([`nonce_field`]) is explicit because UDP
//! loses and reorders. The epoch (16 bits, wrapping) names the key that sealed the frame: each
//! direction changes its key every epoch (see `crypto::TransportKeys`), so the receiver picks
//! the key from the header, and frames reordered around a key change still open. The counter
//! (48 bits) runs on across epochs, never reset, so one replay window covers every epoch (the
//! receiver checks it before decrypting). The whole field, read as a big-endian u64, is the
//! Noise nonce, so no (key, nonce) pair ever repeats. 2^48 frames is 9 years at a million a
//! second; `Config::nonce_limit` closes a session well before the counter could wrap.
//!
//! [`VERSION`] 2 is the layout above with epochs; version 1 had one key per session, so a
//! version 1 peer would fail at the first key change. Handshakes carry the version, and one of
//! another version is refused before any work.
//!
//! Inside a transport frame's ciphertext, the first byte says what it carries:
//!
//! ```text
//! PING 0 | PONG 1 | REQUEST 2 txn (12) body | RESPONSE 3 txn (12) body | MESSAGE 4 body | CLOSE 5
//! ```

use crate::identity::BINDING_LEN;

pub const HANDSHAKE_INIT: u8 = 4;
pub const HANDSHAKE_RESP: u8 = 5;
pub const COOKIE_REPLY: u8 = 6;
pub const TRANSPORT: u8 = 7;
pub const INIT_EARLY: u8 = 8;
/// Frame types that are ours (DESIGN.md §3). 9..=15 are reserved for later use.
pub const FRAME_TYPES: std::ops::RangeInclusive<u8> = 4..=15;
/// Wire version, in every handshake frame (and so, implicitly, of the transport frames of the
/// session it opens). 2: keys change per epoch, named in the transport header.
pub const VERSION: u8 = 2;

pub const TAG: usize = 16;
pub const DH: usize = 32;
pub const MAC: usize = 16;

/// Noise IK message 1: e, encrypted s, encrypted payload (the binding).
pub const NOISE1_LEN: usize = DH + (DH + TAG) + (BINDING_LEN + TAG);
/// Payload of message 2: a status byte and the responder's binding.
pub const RESP_PAYLOAD_LEN: usize = 1 + BINDING_LEN;
/// Noise IK message 2: e, encrypted payload.
pub const NOISE2_LEN: usize = DH + RESP_PAYLOAD_LEN + TAG;

pub const INIT_NOISE: usize = 6;
pub const INIT_MAC1: usize = INIT_NOISE + NOISE1_LEN;
pub const INIT_MAC2: usize = INIT_MAC1 + MAC;
pub const INIT_LEN: usize = INIT_MAC2 + MAC;

/// Early data's own header in message 1's payload: the sender's wall clock, unix ms.
pub const EARLY_CLOCK: usize = 8;
/// The shortest early initiation: a clock and one inner message of a kind byte.
pub const EARLY_INIT_MIN: usize = INIT_LEN + EARLY_CLOCK + 2 + 1;
/// The longest: one datagram within IPv6's minimum MTU (1280) less IP and UDP headers, with
/// room to spare for a TURN or tunnel header on the way.
pub const EARLY_INIT_MAX: usize = 1200;
/// Room for early data's inner messages (with their length prefixes) in one initiation.
pub const EARLY_ROOM: usize = EARLY_INIT_MAX - INIT_LEN - EARLY_CLOCK;

/// Offsets of mac1 and mac2 in an initiation frame of either kind: its last 32 bytes.
pub fn init_macs(frame_len: usize) -> (usize, usize) {
    (frame_len - 2 * MAC, frame_len - MAC)
}

pub const RESP_NOISE: usize = 10;
pub const RESP_LEN: usize = RESP_NOISE + NOISE2_LEN;

pub const COOKIE_NONCE: usize = 6;
pub const COOKIE_SEALED: usize = COOKIE_NONCE + 24;
pub const COOKIE_LEN: usize = COOKIE_SEALED + MAC + TAG;

pub const TRANSPORT_HEADER: usize = 13;
/// Bits of the frame counter in a transport header's epoch-and-counter field.
pub const COUNTER_BITS: u32 = 48;
/// The largest frame counter.
pub const COUNTER_MAX: u64 = (1 << COUNTER_BITS) - 1;

/// A transport header's epoch-and-counter field (bytes 5..13, big-endian): the epoch in the top
/// 16 bits, the counter (at most [`COUNTER_MAX`]) below. It is also the frame's Noise nonce.
pub fn nonce_field(epoch: u16, counter: u64) -> u64 {
    (u64::from(epoch) << COUNTER_BITS) | (counter & COUNTER_MAX)
}

/// The epoch and counter of a transport header's field.
pub fn split_nonce_field(field: u64) -> (u16, u64) {
    ((field >> COUNTER_BITS) as u16, field & COUNTER_MAX)
}
/// The largest inner header (kind and transaction ID).
pub const INNER_MAX_HEADER: usize = 1 + 12;

/// Status byte in message 2.
pub const STATUS_OK: u8 = 0;
/// The responder refused the initiator's binding (its Noise key is not signed by its identity).
pub const STATUS_BINDING_REFUSED: u8 = 1;
/// As [`STATUS_OK`], and the responder acted on the early data: the session is established at
/// its end, and the early requests need not be sent again.
pub const STATUS_OK_EARLY: u8 = 2;

pub mod inner {
    pub const PING: u8 = 0;
    pub const PONG: u8 = 1;
    pub const REQUEST: u8 = 2;
    pub const RESPONSE: u8 = 3;
    pub const MESSAGE: u8 = 4;
    pub const CLOSE: u8 = 5;
}

// No answer to an unauthenticated frame is larger than the frame (no amplification).
const _: () = assert!(RESP_LEN < INIT_LEN && COOKIE_LEN < INIT_LEN && INIT_LEN < EARLY_INIT_MIN);

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Whether a datagram is a session frame (for a driver's demultiplexer).
pub fn is_session_frame(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| FRAME_TYPES.contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_field_layout() {
        assert_eq!(nonce_field(0, 5), 5);
        assert_eq!(nonce_field(1, 0).to_be_bytes(), [0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            split_nonce_field(nonce_field(0xbeef, COUNTER_MAX)),
            (0xbeef, COUNTER_MAX)
        );
        assert_eq!(split_nonce_field(u64::MAX), (u16::MAX, COUNTER_MAX));
    }

    #[test]
    fn lengths_and_no_amplification() {
        assert_eq!(NOISE1_LEN, 193);
        assert_eq!(INIT_LEN, 231);
        assert_eq!(RESP_LEN, 156);
        assert_eq!(COOKIE_LEN, 62);
        assert_eq!(init_macs(INIT_LEN), (INIT_MAC1, INIT_MAC2));
    }
}
