//! Shared by the STUN test files: the RFC test vectors, transcribed by hand from the RFC text,
//! and the `stun_codec` attribute set used as the reference decoder.
//!
//! Each test file that needs it declares `mod stun_support;` and uses a part of it, hence the
//! `dead_code` allowance.

#![allow(dead_code)]

/// RFC 5769 §2.1, "Sample Request". Short-term credentials; USERNAME padded with spaces.
pub const RFC5769_REQUEST: &[u8] = &[
    0x00, 0x01, 0x00, 0x58, // Request type and message length
    0x21, 0x12, 0xa4, 0x42, // Magic cookie
    0xb7, 0xe7, 0xa7, 0x01, // }
    0xbc, 0x34, 0xd6, 0x86, // }  Transaction ID
    0xfa, 0x87, 0xdf, 0xae, // }
    0x80, 0x22, 0x00, 0x10, // SOFTWARE attribute header
    0x53, 0x54, 0x55, 0x4e, // }
    0x20, 0x74, 0x65, 0x73, // }  User-agent...
    0x74, 0x20, 0x63, 0x6c, // }  ...name
    0x69, 0x65, 0x6e, 0x74, // }
    0x00, 0x24, 0x00, 0x04, // PRIORITY attribute header
    0x6e, 0x00, 0x01, 0xff, // ICE priority value
    0x80, 0x29, 0x00, 0x08, // ICE-CONTROLLED attribute header
    0x93, 0x2f, 0xf9, 0xb1, // }  Pseudo-random tie breaker...
    0x51, 0x26, 0x3b, 0x36, // }   ...for ICE control
    0x00, 0x06, 0x00, 0x09, // USERNAME attribute header
    0x65, 0x76, 0x74, 0x6a, // }
    0x3a, 0x68, 0x36, 0x76, // }  Username (9 bytes) and padding (3 bytes)
    0x59, 0x20, 0x20, 0x20, // }
    0x00, 0x08, 0x00, 0x14, // MESSAGE-INTEGRITY attribute header
    0x9a, 0xea, 0xa7, 0x0c, // }
    0xbf, 0xd8, 0xcb, 0x56, // }
    0x78, 0x1e, 0xf2, 0xb5, // }  HMAC-SHA1 fingerprint
    0xb2, 0xd3, 0xf2, 0x49, // }
    0xc1, 0xb5, 0x71, 0xa2, // }
    0x80, 0x28, 0x00, 0x04, // FINGERPRINT attribute header
    0xe5, 0x7a, 0x3b, 0xcf, // CRC32 fingerprint
];

/// RFC 5769 §2.1-§2.3: the short-term password (used as the key as is).
pub const RFC5769_PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";
pub const RFC5769_USERNAME: &str = "evtj:h6vY";
pub const RFC5769_CLIENT_SOFTWARE: &str = "STUN test client";
pub const RFC5769_SERVER_SOFTWARE: &str = "test vector";
/// §2.2: the mapped address in the IPv4 response.
pub const RFC5769_MAPPED_V4: &str = "192.0.2.1:32853";
/// §2.3: the mapped address in the IPv6 response.
pub const RFC5769_MAPPED_V6: &str = "[2001:db8:1234:5678:11:2233:4455:6677]:32853";
/// §2.1-§2.3 transaction ID.
pub const RFC5769_TXID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

/// RFC 5769 §2.2, "Sample IPv4 Response". SOFTWARE padded with a space.
pub const RFC5769_RESPONSE_V4: &[u8] = &[
    0x01, 0x01, 0x00, 0x3c, // Response type and message length
    0x21, 0x12, 0xa4, 0x42, // Magic cookie
    0xb7, 0xe7, 0xa7, 0x01, // }
    0xbc, 0x34, 0xd6, 0x86, // }  Transaction ID
    0xfa, 0x87, 0xdf, 0xae, // }
    0x80, 0x22, 0x00, 0x0b, // SOFTWARE attribute header
    0x74, 0x65, 0x73, 0x74, // }
    0x20, 0x76, 0x65, 0x63, // }  UTF-8 server name
    0x74, 0x6f, 0x72, 0x20, // }
    0x00, 0x20, 0x00, 0x08, // XOR-MAPPED-ADDRESS attribute header
    0x00, 0x01, 0xa1, 0x47, // Address family (IPv4) and xor'd mapped port number
    0xe1, 0x12, 0xa6, 0x43, // Xor'd mapped IPv4 address
    0x00, 0x08, 0x00, 0x14, // MESSAGE-INTEGRITY attribute header
    0x2b, 0x91, 0xf5, 0x99, // }
    0xfd, 0x9e, 0x90, 0xc3, // }
    0x8c, 0x74, 0x89, 0xf9, // }  HMAC-SHA1 fingerprint
    0x2a, 0xf9, 0xba, 0x53, // }
    0xf0, 0x6b, 0xe7, 0xd7, // }
    0x80, 0x28, 0x00, 0x04, // FINGERPRINT attribute header
    0xc0, 0x7d, 0x4c, 0x96, // CRC32 fingerprint
];

/// RFC 5769 §2.3, "Sample IPv6 Response".
pub const RFC5769_RESPONSE_V6: &[u8] = &[
    0x01, 0x01, 0x00, 0x48, // Response type and message length
    0x21, 0x12, 0xa4, 0x42, // Magic cookie
    0xb7, 0xe7, 0xa7, 0x01, // }
    0xbc, 0x34, 0xd6, 0x86, // }  Transaction ID
    0xfa, 0x87, 0xdf, 0xae, // }
    0x80, 0x22, 0x00, 0x0b, // SOFTWARE attribute header
    0x74, 0x65, 0x73, 0x74, // }
    0x20, 0x76, 0x65, 0x63, // }  UTF-8 server name
    0x74, 0x6f, 0x72, 0x20, // }
    0x00, 0x20, 0x00, 0x14, // XOR-MAPPED-ADDRESS attribute header
    0x00, 0x02, 0xa1, 0x47, // Address family (IPv6) and xor'd mapped port number
    0x01, 0x13, 0xa9, 0xfa, // }
    0xa5, 0xd3, 0xf1, 0x79, // }  Xor'd mapped IPv6 address
    0xbc, 0x25, 0xf4, 0xb5, // }
    0xbe, 0xd2, 0xb9, 0xd9, // }
    0x00, 0x08, 0x00, 0x14, // MESSAGE-INTEGRITY attribute header
    0xa3, 0x82, 0x95, 0x4e, // }
    0x4b, 0xe6, 0x7b, 0xf1, // }
    0x17, 0x84, 0xc9, 0x7c, // }  HMAC-SHA1 fingerprint
    0x82, 0x92, 0xc2, 0x75, // }
    0xbf, 0xe3, 0xed, 0x41, // }
    0x80, 0x28, 0x00, 0x04, // FINGERPRINT attribute header
    0xc8, 0xfb, 0x0b, 0x4c, // CRC32 fingerprint
];

/// RFC 5769 §2.4 and RFC 8489 B.1: USERNAME "<U+30DE><U+30C8><U+30EA><U+30C3><U+30AF><U+30B9>".
pub const LONG_TERM_USERNAME: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
/// The password "The<U+00AD>M<U+00AA>tr<U+2168>" after SASLprep (RFC 5769) or OpaqueString
/// (RFC 8489) processing.
pub const LONG_TERM_PASSWORD: &str = "TheMatrIX";
pub const LONG_TERM_REALM: &str = "example.org";
pub const RFC5769_LONG_TERM_NONCE: &str = "f//499k954d6OL34oL9FSTvy64sA";
pub const RFC8489_B1_NONCE: &str = "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA";

/// RFC 5769 §2.4, "Sample Request with Long-Term Authentication". No FINGERPRINT.
pub const RFC5769_LONG_TERM_REQUEST: &[u8] = &[
    0x00, 0x01, 0x00, 0x60, // Request type and message length
    0x21, 0x12, 0xa4, 0x42, // Magic cookie
    0x78, 0xad, 0x34, 0x33, // }
    0xc6, 0xad, 0x72, 0xc0, // }  Transaction ID
    0x29, 0xda, 0x41, 0x2e, // }
    0x00, 0x06, 0x00, 0x12, // USERNAME attribute header
    0xe3, 0x83, 0x9e, 0xe3, // }
    0x83, 0x88, 0xe3, 0x83, // }
    0xaa, 0xe3, 0x83, 0x83, // }  Username value (18 bytes) and padding (2 bytes)
    0xe3, 0x82, 0xaf, 0xe3, // }
    0x82, 0xb9, 0x00, 0x00, // }
    0x00, 0x15, 0x00, 0x1c, // NONCE attribute header
    0x66, 0x2f, 0x2f, 0x34, // }
    0x39, 0x39, 0x6b, 0x39, // }
    0x35, 0x34, 0x64, 0x36, // }
    0x4f, 0x4c, 0x33, 0x34, // }  Nonce value
    0x6f, 0x4c, 0x39, 0x46, // }
    0x53, 0x54, 0x76, 0x79, // }
    0x36, 0x34, 0x73, 0x41, // }
    0x00, 0x14, 0x00, 0x0b, // REALM attribute header
    0x65, 0x78, 0x61, 0x6d, // }
    0x70, 0x6c, 0x65, 0x2e, // }  Realm value (11 bytes) and padding (1 byte)
    0x6f, 0x72, 0x67, 0x00, // }
    0x00, 0x08, 0x00, 0x14, // MESSAGE-INTEGRITY attribute header
    0xf6, 0x70, 0x24, 0x65, // }
    0x6d, 0xd6, 0x4a, 0x3e, // }
    0x02, 0xb8, 0xe0, 0x71, // }  HMAC-SHA1 fingerprint
    0x2e, 0x85, 0xc9, 0xa2, // }
    0x8c, 0xa8, 0x96, 0x66, // }
];

/// The RFC 8489 B.1 attributes both versions of the vector share: USERHASH, NONCE, REALM.
macro_rules! b1_common {
    () => {
        [
            0x00, 0x1e, 0x00, 0x20, // USERHASH attribute header
            0x4a, 0x3c, 0xf3, 0x8f, // }
            0xef, 0x69, 0x92, 0xbd, // }
            0xa9, 0x52, 0xc6, 0x78, // }
            0x04, 0x17, 0xda, 0x0f, // }  Userhash value (32 bytes)
            0x24, 0x81, 0x94, 0x15, // }
            0x56, 0x9e, 0x60, 0xb2, // }
            0x05, 0xc4, 0x6e, 0x41, // }
            0x40, 0x7f, 0x17, 0x04, // }
            0x00, 0x15, 0x00, 0x29, // NONCE attribute header
            0x6f, 0x62, 0x4d, 0x61, // }
            0x74, 0x4a, 0x6f, 0x73, // }
            0x32, 0x41, 0x41, 0x41, // }
            0x43, 0x66, 0x2f, 0x2f, // }
            0x34, 0x39, 0x39, 0x6b, // }  Nonce value and padding (3 bytes)
            0x39, 0x35, 0x34, 0x64, // }
            0x36, 0x4f, 0x4c, 0x33, // }
            0x34, 0x6f, 0x4c, 0x39, // }
            0x46, 0x53, 0x54, 0x76, // }
            0x79, 0x36, 0x34, 0x73, // }
            0x41, 0x00, 0x00, 0x00, // }
            0x00, 0x14, 0x00, 0x0b, // REALM attribute header
            0x65, 0x78, 0x61, 0x6d, // }
            0x70, 0x6c, 0x65, 0x2e, // }  Realm value (11 bytes) and padding (1 byte)
            0x6f, 0x72, 0x67, 0x00, // }
        ]
    };
}

/// The header of both B.1 versions but for the length field: type, cookie, transaction ID.
const B1_TXID: [u8; 12] = [
    0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e,
];

fn b1_message(length: u16, extra: &[u8], mac: &[u8]) -> Vec<u8> {
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&length.to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    m.extend_from_slice(&B1_TXID);
    m.extend_from_slice(&b1_common!());
    m.extend_from_slice(extra);
    m.extend_from_slice(&[0x00, 0x1c, 0x00, 0x20]); // MESSAGE-INTEGRITY-SHA256 header
    m.extend_from_slice(mac);
    m
}

/// RFC 8489 Appendix B.1 exactly as published: length 0x9c (156) although the attributes take
/// 136 bytes, no PASSWORD-ALGORITHM, and this HMAC-SHA256 value.
pub fn rfc8489_b1_as_published() -> Vec<u8> {
    b1_message(
        0x9c,
        &[],
        &[
            0xe4, 0x68, 0x6c, 0x8f, 0x0e, 0xde, 0xb5, 0x90, 0x13, 0xe0, 0x70, 0x90, 0x01, 0x0a,
            0x93, 0xef, 0xcc, 0xbc, 0xcc, 0x54, 0x4c, 0x0a, 0x45, 0xd9, 0xf8, 0x30, 0xaa, 0x6d,
            0x6f, 0x73, 0x5a, 0x01,
        ],
    )
}

/// RFC 8489 Appendix B.1 as corrected by erratum 6268: PASSWORD-ALGORITHM (SHA-256) added
/// before MESSAGE-INTEGRITY-SHA256, length 0x90, and a new HMAC-SHA256 value.
pub fn rfc8489_b1_erratum_6268() -> Vec<u8> {
    b1_message(
        0x90,
        &[
            0x00, 0x1d, 0x00, 0x04, // PASSWORD-ALGORITHM attribute header
            0x00, 0x02, 0x00, 0x00, // SHA-256, no parameters
        ],
        &[
            0xb5, 0xc7, 0xbf, 0x00, 0x5b, 0x6c, 0x52, 0xa2, 0x1c, 0x51, 0xc5, 0xe8, 0x92, 0xf8,
            0x19, 0x24, 0x13, 0x62, 0x96, 0xcb, 0x92, 0x7c, 0x43, 0x14, 0x93, 0x09, 0x27, 0x8c,
            0xc6, 0x51, 0x8e, 0x65,
        ],
    )
}

/// The B.1 transaction ID.
pub fn rfc8489_b1_txid() -> [u8; 12] {
    B1_TXID
}

/// The `stun_codec` side: an attribute set covering what the binding service and its clients
/// use. CHANGE-REQUEST and RESPONSE-PORT are left out of [`codec::Attr`] on purpose (they stay
/// raw attributes): `stun_codec` 0.4 decodes CHANGE-REQUEST flags from the wrong bits and
/// re-encodes RESPONSE-PORT as 0, which breaks its own FINGERPRINT check of any message that
/// carries one (see the pinning tests in `stun_codec_crosscheck.rs`). [`codec::AttrAll`] has
/// both, for encoding and for those pinning tests.
pub mod codec {
    use bytecodec::{DecodeExt, EncodeExt};
    use stun_codec::rfc5389::attributes::{
        AlternateServer, ErrorCode, Fingerprint, MappedAddress, MessageIntegrity, Nonce, Realm,
        Software, UnknownAttributes, Username, XorMappedAddress,
    };
    use stun_codec::rfc5780::attributes::{
        ChangeRequest, OtherAddress, ResponseOrigin, ResponsePort,
    };
    use stun_codec::{Message, MessageDecoder, MessageEncoder};

    stun_codec::define_attribute_enums!(
        Attr,
        AttrDecoder,
        AttrEncoder,
        [
            MappedAddress,
            Username,
            MessageIntegrity,
            ErrorCode,
            UnknownAttributes,
            Realm,
            Nonce,
            XorMappedAddress,
            Software,
            AlternateServer,
            Fingerprint,
            ResponseOrigin,
            OtherAddress
        ]
    );

    // `stun_codec` 0.4 encodes the message type wrongly for methods above 0x00f (it shifts
    // method bits 4-6 by 5 and 7-11 by 9 instead of 1 and 2; its decoder is right). It checks
    // FINGERPRINT by re-encoding the message, so for such methods the check fails on any correct
    // message: decode those with this set, which leaves FINGERPRINT raw.
    stun_codec::define_attribute_enums!(
        AttrNoFingerprint,
        AttrNoFingerprintDecoder,
        AttrNoFingerprintEncoder,
        [
            MappedAddress,
            Username,
            MessageIntegrity,
            ErrorCode,
            UnknownAttributes,
            Realm,
            Nonce,
            XorMappedAddress,
            Software,
            AlternateServer,
            ResponseOrigin,
            OtherAddress
        ]
    );

    stun_codec::define_attribute_enums!(
        AttrAll,
        AttrAllDecoder,
        AttrAllEncoder,
        [
            MappedAddress,
            Username,
            MessageIntegrity,
            ErrorCode,
            UnknownAttributes,
            Realm,
            Nonce,
            XorMappedAddress,
            Software,
            AlternateServer,
            Fingerprint,
            ResponseOrigin,
            OtherAddress,
            ResponsePort,
            ChangeRequest
        ]
    );

    /// Decodes one whole message; a broken message (e.g. a bad FINGERPRINT) is an error.
    pub fn decode<A: stun_codec::Attribute>(bytes: &[u8]) -> Result<Message<A>, String> {
        let mut decoder = MessageDecoder::<A>::new();
        match decoder.decode_from_bytes(bytes) {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(broken)) => Err(format!("broken message: {:?}", broken.error())),
            Err(e) => Err(format!("undecodable: {e}")),
        }
    }

    pub fn encode<A: stun_codec::Attribute>(message: Message<A>) -> Vec<u8> {
        MessageEncoder::<A>::new()
            .encode_into_bytes(message)
            .expect("stun_codec encodes its own message")
    }
}
