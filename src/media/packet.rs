//! The media packet header: RTP's fixed header (RFC 3550 §5.1), byte for byte, and nothing else.
//!
//! ```text
//! byte 0      1 0 0 0 0 0 0 0   V=2 (bits 7-6), P=0, X=0, CC=0: always 0x80
//! byte 1      M P P P P P P P   marker (bit 7), payload type (bits 6-0)
//! bytes 2-3   sequence number   big-endian; low 16 bits of the packet index of its payload type
//! bytes 4-7   timestamp         big-endian, 48 kHz clock (Opus: first sample; DTMF: event start)
//! bytes 8-11  stream id         big-endian; RTP's SSRC
//! bytes 12..  ciphertext        the payload, sealed (see `seal`), then the 16-byte AEAD tag
//! ```
//!
//! Why RTP's layout and not a tighter one of our own: the first byte lands in RFC 7983's
//! 128-191 (RTP) range on the client's one socket, and Wireshark's "Decode As RTP" reads
//! sequence, timestamp and stream id from a capture, as it does for SRTP. Our fields (version,
//! payload type, marker, 16-bit sequence, 32-bit timestamp, stream id) are exactly RTP's, so a
//! private layout could save at most the one byte P/X/CC occupy: 0.4 kbit/s at 50 packets/s, not
//! worth losing the tooling. What we leave out: padding, header extensions and CSRC lists
//! (version 1 of this format has none; a receiver drops a packet with P, X or CC set, which
//! leaves X for a later version to claim), and the 8-byte explicit counter (derived, below).
//!
//! Payload types, in RTP's dynamic range 96-127 and clear of 64-95 (the range RFC 5761 §4 keeps
//! apart from RTCP): [`PayloadType::Opus`] 111 (the value WebRTC offers for Opus),
//! [`PayloadType::Red`] 112 (RFC 2198 redundant audio: the Opus packet with a copy of the one
//! before, see `red`), [`PayloadType::Dtmf`] 101 (RFC 4733 telephone-event, customarily 101),
//! [`PayloadType::Report`] 127 (our receiver report; not RTCP, which would need its own header).
//! No comfort-noise type (RFC 3389): Opus carries DTX and comfort noise in-band (RFC 7587
//! §3.1.3).
//!
//! The header travels in clear (authenticated, not encrypted), as in SRTP: a relay or observer
//! sees payload types, sequence numbers, timestamps, the marker (talkspurt starts) and packet
//! lengths, never the audio or the digits.

/// Header length.
pub const HEADER_LEN: usize = 12;
/// The first byte of every packet of this format: V=2, no padding, extension or CSRC.
pub const FIRST_BYTE: u8 = 0x80;

/// What a packet carries. Each kind of traffic has its own sequence (and packet index) space, as
/// RTP and RTCP have theirs, so audio sequence numbers stay contiguous for loss accounting and
/// the jitter buffer's silence detection however many digits or reports go in between. Opus and
/// RED packets are both audio and share one space: a call switches between them as loss comes
/// and goes, and the sequence must not notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PayloadType {
    /// One Opus packet (RFC 7587).
    Opus,
    /// One Opus packet with a copy of the one before (RFC 2198), sent while the peer reports
    /// random loss.
    Red,
    /// One RFC 4733 telephone event (4 bytes).
    Dtmf,
    /// A receiver report (see `report`).
    Report,
}

impl PayloadType {
    /// All types.
    pub const ALL: [PayloadType; 4] = [
        PayloadType::Opus,
        PayloadType::Red,
        PayloadType::Dtmf,
        PayloadType::Report,
    ];
    /// Index spaces (see [`space`](Self::space)).
    pub const SPACES: usize = 3;

    /// The 7-bit value on the wire.
    pub const fn code(self) -> u8 {
        match self {
            PayloadType::Opus => 111,
            PayloadType::Red => 112,
            PayloadType::Dtmf => 101,
            PayloadType::Report => 127,
        }
    }

    /// The type of a wire value, if it is one of ours.
    pub const fn from_code(code: u8) -> Option<PayloadType> {
        match code {
            111 => Some(PayloadType::Opus),
            112 => Some(PayloadType::Red),
            101 => Some(PayloadType::Dtmf),
            127 => Some(PayloadType::Report),
            _ => None,
        }
    }

    /// Its sequence and packet index space (0..[`SPACES`](Self::SPACES)): audio (Opus and
    /// RED), DTMF, reports.
    pub const fn space(self) -> usize {
        match self {
            PayloadType::Opus | PayloadType::Red => 0,
            PayloadType::Dtmf => 1,
            PayloadType::Report => 2,
        }
    }
}

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// RTP's marker bit: set on the first Opus packet of a talkspurt (after DTX silence, RFC
    /// 3551 §4.1) and on the first packet of a DTMF event (RFC 4733 §2.5.1.1).
    pub marker: bool,
    pub payload_type: PayloadType,
    /// The low 16 bits of the packet index.
    pub sequence: u16,
    /// 48 kHz media clock.
    pub timestamp: u32,
    /// The sender's stream id (RTP's SSRC).
    pub stream: u32,
}

/// Why a datagram is not a media packet of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Shorter than a header, or its first byte is not 0x80 (another version, padding,
    /// extension or CSRCs).
    Malformed,
    /// A payload type we do not speak.
    UnknownType(u8),
}

impl Header {
    /// Writes the 12 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = FIRST_BYTE;
        b[1] = (u8::from(self.marker) << 7) | self.payload_type.code();
        b[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        b[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        b[8..12].copy_from_slice(&self.stream.to_be_bytes());
        b
    }

    /// Reads the header at the start of `datagram`.
    pub fn parse(datagram: &[u8]) -> Result<Header, HeaderError> {
        let b: &[u8; HEADER_LEN] = datagram
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(HeaderError::Malformed)?;
        if b[0] != FIRST_BYTE {
            return Err(HeaderError::Malformed);
        }
        let code = b[1] & 0x7f;
        Ok(Header {
            marker: b[1] & 0x80 != 0,
            payload_type: PayloadType::from_code(code).ok_or(HeaderError::UnknownType(code))?,
            sequence: u16::from_be_bytes([b[2], b[3]]),
            timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            stream: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        })
    }
}

/// Whether a datagram belongs to the media range of the first-byte demultiplexer (RFC 7983
/// §7: 128-191 is RTP/RTCP).
pub fn is_media(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| (128..=191).contains(b))
}

/// The stream id of a media datagram, for a driver that routes several calls on one socket.
pub fn stream_of(datagram: &[u8]) -> Option<u32> {
    Header::parse(datagram).ok().map(|h| h.stream)
}

/// The packet index whose low 16 bits are `sequence`, nearest to `highest` (the highest index
/// authenticated so far): RFC 3711 §3.3.1's estimate of the rollover counter. With nothing
/// received yet, the sender's index space starts at 0, so the index is the sequence number.
pub fn estimate_index(highest: Option<u64>, sequence: u16) -> u64 {
    let Some(v) = highest else {
        return u64::from(sequence);
    };
    let candidate = (v & !0xffff) | u64::from(sequence);
    if candidate > v && candidate - v > 0x8000 && candidate >= 0x1_0000 {
        candidate - 0x1_0000
    } else if candidate < v && v - candidate > 0x8000 {
        candidate.checked_add(0x1_0000).unwrap_or(candidate)
    } else {
        candidate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer_layout() {
        let h = Header {
            marker: true,
            payload_type: PayloadType::Opus,
            sequence: 0x1234,
            timestamp: 0x89ab_cdef,
            stream: 0x0102_0304,
        };
        let b = h.encode();
        assert_eq!(
            b,
            [
                0x80,
                0x80 | 111,
                0x12,
                0x34,
                0x89,
                0xab,
                0xcd,
                0xef,
                0x01,
                0x02,
                0x03,
                0x04
            ]
        );
        assert_eq!(Header::parse(&b), Ok(h));
        let d = Header {
            marker: false,
            payload_type: PayloadType::Dtmf,
            sequence: 0,
            timestamp: 0,
            stream: 0xffff_ffff,
        };
        assert_eq!(d.encode()[..2], [0x80, 101]);
        assert!(is_media(&b) && is_media(&[191]) && !is_media(&[192]) && !is_media(&[4]));
    }

    #[test]
    fn malformed_and_unknown() {
        let good = Header {
            marker: false,
            payload_type: PayloadType::Report,
            sequence: 1,
            timestamp: 2,
            stream: 3,
        }
        .encode();
        assert_eq!(Header::parse(&good[..11]), Err(HeaderError::Malformed));
        for first in [0x00, 0x40, 0x90, 0xa0, 0x81, 0xc0] {
            let mut b = good;
            b[0] = first;
            assert_eq!(Header::parse(&b), Err(HeaderError::Malformed), "{first:#x}");
        }
        let mut b = good;
        b[1] = 0x80 | 96;
        assert_eq!(Header::parse(&b), Err(HeaderError::UnknownType(96)));
    }

    #[test]
    fn index_estimates() {
        // (highest, sequence, wanted)
        let cases: &[(Option<u64>, u16, u64)] = &[
            (None, 7, 7),
            (Some(10), 11, 11),
            (Some(10), 5, 5),
            (Some(0xfff0), 0x0003, 0x1_0003),
            (Some(0x1_0003), 0xfff0, 0xfff0),
            (Some(0x5_8000), 0x0000, 0x5_0000),
            (Some(0x5_8001), 0x0000, 0x6_0000),
            (Some(3), 0xfffe, 0xfffe),
            (Some(u64::MAX), 0, u64::MAX - 0xffff),
        ];
        for &(highest, seq, want) in cases {
            assert_eq!(estimate_index(highest, seq), want, "{highest:?} {seq:#x}");
        }
    }
}
