//! ChannelData framing (RFC 8656 §12.4): 2 bytes of channel number, 2 bytes of length, the data.
//!
//! Over UDP the datagram delimits the message and padding is optional; over TCP and TLS the
//! message is padded to a multiple of 4 bytes (§12.5) so a reader can find the next one. Numbers
//! 0x4000..=0x4FFF are valid channels; the first byte of ChannelData is therefore 64..=79, which
//! is how the demultiplexer (RFC 7983) tells it from STUN.

use std::ops::Range;

/// The channel numbers RFC 8656 §12 allows, and the ones our client binds.
pub const CHANNELS: std::ops::RangeInclusive<u16> = 0x4000..=0x4FFF;
/// The numbers a server accepts: RFC 5766 allowed up to 0x7FFF, and clients still use that
/// range (coturn's among them); accepting it costs nothing on a TURN port.
pub const ACCEPTED: std::ops::RangeInclusive<u16> = 0x4000..=0x7FFF;
/// Bytes of ChannelData header.
pub const HEADER: usize = 4;

/// Whether `first` (a datagram's first byte) starts ChannelData (of the [`ACCEPTED`] range).
pub fn is_channel_data(first: u8) -> bool {
    (0x40..=0x7F).contains(&first)
}

/// Why bytes are not a ChannelData message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelDataError {
    #[error("shorter than a ChannelData header")]
    TooShort,
    #[error("channel number outside 0x4000..=0x7FFF")]
    BadChannel,
    #[error("length field exceeds the data")]
    Truncated,
}

/// A parsed ChannelData message: the channel and where its data lies in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelData {
    pub channel: u16,
    pub data: Range<usize>,
}

/// Parses a ChannelData datagram. Trailing bytes (padding) are allowed, as RFC 8656 §12.5 asks
/// of UDP receivers.
pub fn parse(buf: &[u8]) -> Result<ChannelData, ChannelDataError> {
    if buf.len() < HEADER {
        return Err(ChannelDataError::TooShort);
    }
    let channel = u16::from_be_bytes([buf[0], buf[1]]);
    if !ACCEPTED.contains(&channel) {
        return Err(ChannelDataError::BadChannel);
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    if HEADER + len > buf.len() {
        return Err(ChannelDataError::Truncated);
    }
    Ok(ChannelData {
        channel,
        data: HEADER..HEADER + len,
    })
}

/// Length of the ChannelData frame at the start of a stream buffer, padding included, if the
/// header is there.
pub fn framed_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < HEADER {
        return None;
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    Some(HEADER + padded(len))
}

/// Writes the header for `len` data bytes of `channel` into `out[..4]`.
pub fn write_header(out: &mut [u8], channel: u16, len: usize) {
    out[0..2].copy_from_slice(&channel.to_be_bytes());
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
}

/// Appends a whole ChannelData message to `out`, padded to 4 bytes when `pad` (streams).
pub fn encode(out: &mut Vec<u8>, channel: u16, data: &[u8], pad: bool) {
    let start = out.len();
    out.resize(start + HEADER, 0);
    write_header(&mut out[start..], channel, data.len());
    out.extend_from_slice(data);
    if pad {
        out.resize(start + HEADER + padded(data.len()), 0);
    }
}

pub(crate) fn padded(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        for (len, pad, want) in [(0, false, 4), (5, false, 9), (5, true, 12), (8, true, 12)] {
            let data = vec![7u8; len];
            let mut out = Vec::new();
            encode(&mut out, 0x4001, &data, pad);
            assert_eq!(out.len(), want);
            let cd = parse(&out).unwrap();
            assert_eq!(cd.channel, 0x4001);
            assert_eq!(&out[cd.data.clone()], &data[..]);
            assert_eq!(framed_len(&out), Some(HEADER + padded(len)));
            assert!(is_channel_data(out[0]));
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        assert_eq!(parse(&[0x40, 0]), Err(ChannelDataError::TooShort));
        assert_eq!(
            parse(&[0x3f, 0xff, 0, 0]),
            Err(ChannelDataError::BadChannel)
        );
        assert_eq!(parse(&[0x80, 0, 0, 0]), Err(ChannelDataError::BadChannel));
        assert!(
            parse(&[0x7f, 0xff, 0, 0]).is_ok(),
            "RFC 5766's range is accepted"
        );
        assert_eq!(
            parse(&[0x40, 0, 0, 5, 1, 2]),
            Err(ChannelDataError::Truncated)
        );
        assert!(!is_channel_data(0x00) && !is_channel_data(0x80));
    }
}
