//! The first-byte demultiplexer for a UDP port that carries several protocols, in the spirit of
//! RFC 7983 §7: one rule table, used by the server driver (the STUN port that also takes session
//! frames) and by every client socket (agent, relay link, call endpoint). Sans-IO.
//!
//! | first byte | what                                                      |
//! |-----------:|-----------------------------------------------------------|
//! | 0..=3      | STUN, and TURN messages (which are STUN), RFC 8489        |
//! | 4..=15     | voxmesh session frames ([`crate::session`], DESIGN §3)    |
//! | 64..=127   | TURN ChannelData ([`crate::turn::channel`])               |
//! | 128..=191  | call media, RTP-shaped ([`crate::media`])                 |
//! | otherwise  | nobody's: dropped                                         |
//!
//! RFC 7983 gives ChannelData 64..=79 (channels 0x4000..=0x4FFF); 80..=127 is kept for the
//! RFC 5766 channel numbers up to 0x7FFF that servers still accept ([`crate::turn::channel::ACCEPTED`]).
//! 16..=63 (ZRTP, DTLS in RFC 7983) and 192..=255 are unused here.

use std::ops::RangeInclusive;

/// First bytes of STUN messages (the top two bits of a STUN header are zero, and the message
/// type's high bits leave the first byte at most 3).
pub const STUN: RangeInclusive<u8> = 0..=3;
/// First bytes of session frames: the frame type.
pub const SESSION: RangeInclusive<u8> = 4..=15;
/// First bytes of TURN ChannelData: the high byte of the channel number.
pub const CHANNEL_DATA: RangeInclusive<u8> = 64..=127;
/// First bytes of media packets.
pub const MEDIA: RangeInclusive<u8> = 128..=191;

/// What a datagram is, by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A STUN or TURN message.
    Stun,
    /// A session frame (handshake, cookie or transport).
    Session,
    /// TURN ChannelData.
    ChannelData,
    /// Call media.
    Media,
    /// Empty, or a first byte no layer here uses.
    Unknown,
}

/// Classifies a datagram by its first byte. Only the byte is looked at: each layer still parses
/// (and may reject) what it is given.
#[must_use]
pub fn classify(datagram: &[u8]) -> Kind {
    let Some(&b) = datagram.first() else {
        return Kind::Unknown;
    };
    if STUN.contains(&b) {
        Kind::Stun
    } else if SESSION.contains(&b) {
        Kind::Session
    } else if CHANNEL_DATA.contains(&b) {
        Kind::ChannelData
    } else if MEDIA.contains(&b) {
        Kind::Media
    } else {
        Kind::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_first_byte_has_one_kind() {
        let expect = |b: u8| match b {
            0..=3 => Kind::Stun,
            4..=15 => Kind::Session,
            64..=127 => Kind::ChannelData,
            128..=191 => Kind::Media,
            _ => Kind::Unknown,
        };
        for b in 0..=255u8 {
            assert_eq!(classify(&[b, 0, 0, 0]), expect(b), "first byte {b}");
        }
        assert_eq!(classify(&[]), Kind::Unknown);
    }

    #[test]
    fn agrees_with_each_layer() {
        for b in 0..=255u8 {
            let d = [b];
            assert_eq!(
                crate::session::is_session_frame(&d),
                classify(&d) == Kind::Session,
                "{b}"
            );
            assert_eq!(
                crate::media::is_media(&d),
                classify(&d) == Kind::Media,
                "{b}"
            );
            assert_eq!(
                crate::turn::channel::is_channel_data(b),
                classify(&d) == Kind::ChannelData,
                "{b}"
            );
        }
        assert_eq!(classify(&[crate::media::packet::FIRST_BYTE]), Kind::Media);
    }

    #[test]
    fn real_messages() {
        use crate::stun::{Class, MessageBuilder, TransactionId, method};
        let mut req = Vec::new();
        MessageBuilder::new(
            &mut req,
            method::BINDING,
            Class::Request,
            TransactionId::random(),
        )
        .finish();
        assert_eq!(classify(&req), Kind::Stun);
        let mut cd = Vec::new();
        crate::turn::channel::encode(&mut cd, 0x4000, b"x", false);
        assert_eq!(classify(&cd), Kind::ChannelData);
    }
}
