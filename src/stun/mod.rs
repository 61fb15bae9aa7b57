//! STUN messages (RFC 8489, RFC 5780, RFC 3489 compatibility): a zero-copy parser and a builder
//! that writes into a reused buffer.
//!
//! Why our own codec: the server hot path must not allocate per packet, and RFC 3489 requests
//! (no magic cookie) must still be answered. `stun_codec` allocates a decoded attribute list per
//! message and rejects classic requests; it stays in the test suite as a cross-check.
//!
//! The parser ([`Message::parse`]) validates the framing once (header bits, lengths, attribute
//! bounds, at most [`MAX_ATTRIBUTES`] attributes, FINGERPRINT last) so that every later lookup is
//! bounds-safe and the work per packet is bounded. Attribute values are decoded on demand.

mod address;
mod build;
mod integrity;
mod parse;
pub mod timers;

pub use address::{decode_address, decode_xor_address};
pub use build::MessageBuilder;
pub use integrity::{IntegrityCheck, long_term_key};
pub use parse::{Attribute, Attributes, Message, ParseError};

/// The fixed value in bytes 4..8 of every RFC 5389/8489 message (RFC 8489 §5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Bytes in a STUN header.
pub const HEADER_LEN: usize = 20;
/// XORed into the CRC-32 of a message to form FINGERPRINT (RFC 8489 §14.7).
pub const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// Upper bound on attributes walked per message; legitimate messages carry about a dozen.
pub const MAX_ATTRIBUTES: usize = 48;

/// A 96-bit transaction ID (RFC 8489 §5). RFC 3489 used 128 bits, the first 32 of which now hold
/// the magic cookie; [`Message::raw_id`] gives all 16 bytes for answering such clients.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct TransactionId(pub [u8; 12]);

impl TransactionId {
    /// A fresh random ID. RFC 8489 §5 asks for a cryptographically random value so that
    /// off-path attackers cannot forge responses.
    pub fn random() -> Self {
        TransactionId(rand::random())
    }
}

/// Message class (RFC 8489 §5): the two class bits of the message type.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// STUN and TURN methods used by voxmesh.
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute types. Values below 0x8000 are comprehension-required (RFC 8489 §14).
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// RFC 3489 only; never honoured (it lets anyone aim our responses at a third party).
    pub const RESPONSE_ADDRESS: u16 = 0x0002;
    /// RFC 5780 §7.2 (and RFC 3489 §11.2.4).
    pub const CHANGE_REQUEST: u16 = 0x0003;
    /// RFC 3489 only: the address a response was sent from.
    pub const SOURCE_ADDRESS: u16 = 0x0004;
    /// RFC 3489 only: the server's alternate address (RFC 5780's OTHER-ADDRESS).
    pub const CHANGED_ADDRESS: u16 = 0x0005;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const EVEN_PORT: u16 = 0x0018;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const DONT_FRAGMENT: u16 = 0x001A;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    /// RFC 5780 §7.6.
    pub const PADDING: u16 = 0x0026;
    /// RFC 5780 §7.5.
    pub const RESPONSE_PORT: u16 = 0x0027;
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    pub const SOFTWARE: u16 = 0x8022;
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const ICE_CONTROLLED: u16 = 0x8029;
    pub const ICE_CONTROLLING: u16 = 0x802A;
    /// RFC 5780 §7.3.
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    /// RFC 5780 §7.4.
    pub const OTHER_ADDRESS: u16 = 0x802C;

    /// Whether a receiver that does not know `t` must reject the message (RFC 8489 §14).
    pub fn is_comprehension_required(t: u16) -> bool {
        t < 0x8000
    }
}

/// CHANGE-REQUEST flags (RFC 5780 §7.2).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ChangeRequest {
    pub ip: bool,
    pub port: bool,
}

impl ChangeRequest {
    pub const IP: u32 = 0x4;
    pub const PORT: u32 = 0x2;

    pub fn to_bits(self) -> u32 {
        (if self.ip { Self::IP } else { 0 }) | (if self.port { Self::PORT } else { 0 })
    }

    pub fn from_bits(bits: u32) -> Self {
        ChangeRequest {
            ip: bits & Self::IP != 0,
            port: bits & Self::PORT != 0,
        }
    }
}

/// Encodes method and class into the 14-bit message type (RFC 8489 §5, figure 3).
pub fn message_type(method: u16, class: Class) -> u16 {
    let c = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    let m = method & 0x0fff;
    (m & 0x000f) | ((m & 0x0070) << 1) | ((m & 0x0f80) << 2) | ((c & 0b01) << 4) | ((c & 0b10) << 7)
}

/// Splits a 14-bit message type into method and class.
pub fn split_message_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000f) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0f80);
    let class = match ((t >> 7) & 0b10) | ((t >> 4) & 0b01) {
        0b00 => Class::Request,
        0b01 => Class::Indication,
        0b10 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

/// The total length of the STUN message at the start of `buf`, if the header is complete and
/// plausible. Stream transports (TCP/TLS) use this to cut messages out of a byte stream.
pub fn framed_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 4 || buf[0] & 0xc0 != 0 {
        return None;
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    (len % 4 == 0).then_some(HEADER_LEN + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_round_trips_for_every_method_and_class() {
        for m in 0..0x1000u16 {
            for c in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                let t = message_type(m, c);
                assert_eq!(t & 0xc000, 0);
                assert_eq!(split_message_type(t), (m, c));
            }
        }
    }

    #[test]
    fn binding_types_match_rfc_8489() {
        assert_eq!(message_type(method::BINDING, Class::Request), 0x0001);
        assert_eq!(message_type(method::BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(method::BINDING, Class::Error), 0x0111);
        assert_eq!(message_type(method::SEND, Class::Indication), 0x0016);
        assert_eq!(message_type(method::ALLOCATE, Class::Error), 0x0113);
    }
}
