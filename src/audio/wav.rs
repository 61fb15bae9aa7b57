//! WAV headers, sans-IO: parsing from the bytes read so far, and building.
//!
//! Covers PCM (8, 16, 24, 32-bit), IEEE float (32-bit) and `WAVE_FORMAT_EXTENSIBLE` carrying
//! either. Streams: a writer that cannot seek back to patch the sizes (stdout) writes sox's
//! "unspecified" size (`0x7ffff000`), which sox, ffmpeg and we read up to end of file. Sizes of
//! `0` and `0xffffffff` (other streaming writers) are read the same way. Any other size is
//! trusted, and a file that ends before it is truncated.

use super::error::{Error, Result};
use super::pcm::{SampleFormat, Spec};

/// The data size a streaming writer puts in the header (sox's `MS_UNSPEC`).
pub const STREAMING_SIZE: u32 = 0x7fff_f000;

const FORMAT_PCM: u16 = 1;
const FORMAT_FLOAT: u16 = 3;
const FORMAT_EXTENSIBLE: u16 = 0xfffe;

/// What a WAV header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Rate and channels.
    pub spec: Spec,
    /// Sample encoding.
    pub format: SampleFormat,
    /// Bytes of sample data, or `None` for a stream that runs to end of file.
    pub data_len: Option<u64>,
    /// Where the sample data starts.
    pub data_offset: usize,
}

/// Parses the header at the start of `buf`. `Ok(None)`: more bytes are needed (read some and
/// call again with the longer buffer).
pub fn parse(buf: &[u8]) -> Result<Option<Header>> {
    if buf.len() < 12 {
        return Ok(None);
    }
    if &buf[0..4] == b"RIFX" || &buf[0..4] == b"RF64" {
        return Err(Error::Unsupported(format!(
            "{} WAV files",
            String::from_utf8_lossy(&buf[0..4])
        )));
    }
    if &buf[0..4] != b"RIFF" || &buf[8..12] != b"WAVE" {
        return Err(Error::Corrupt(
            "not a WAV file (no RIFF/WAVE header)".into(),
        ));
    }
    let mut pos = 12;
    let mut fmt: Option<(Spec, SampleFormat)> = None;
    loop {
        if buf.len() < pos + 8 {
            return Ok(None);
        }
        let id = &buf[pos..pos + 4];
        let len = u32::from_le_bytes(buf[pos + 4..pos + 8].try_into().unwrap());
        let body = pos + 8;
        if id == b"data" {
            let Some((spec, format)) = fmt else {
                return Err(Error::Corrupt("WAV data chunk before its fmt chunk".into()));
            };
            let data_len = match len {
                0 | STREAMING_SIZE | u32::MAX => None,
                n => Some(n as u64),
            };
            return Ok(Some(Header {
                spec,
                format,
                data_len,
                data_offset: body,
            }));
        }
        // Every other chunk is read whole (they are small: fmt, fact, LIST, cue).
        let padded = len as usize + (len as usize & 1);
        if len > 1 << 24 {
            return Err(Error::Corrupt(format!(
                "WAV chunk '{}' of {len} bytes before the data",
                String::from_utf8_lossy(id)
            )));
        }
        if buf.len() < body + padded {
            return Ok(None);
        }
        if id == b"fmt " {
            fmt = Some(parse_fmt(&buf[body..body + len as usize])?);
        }
        pos = body + padded;
    }
}

fn parse_fmt(b: &[u8]) -> Result<(Spec, SampleFormat)> {
    if b.len() < 16 {
        return Err(Error::Corrupt("WAV fmt chunk shorter than 16 bytes".into()));
    }
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let mut tag = u16_at(0);
    let channels = u16_at(2);
    let rate = u32::from_le_bytes(b[4..8].try_into().unwrap());
    let block_align = u16_at(12);
    let bits = u16_at(14);
    if tag == FORMAT_EXTENSIBLE {
        if b.len() < 40 {
            return Err(Error::Corrupt("WAV extensible fmt chunk too short".into()));
        }
        tag = u16_at(24);
    }
    let format = match (tag, bits) {
        (FORMAT_PCM, 8) => SampleFormat::U8,
        (FORMAT_PCM, 16) => SampleFormat::S16,
        (FORMAT_PCM, 24) => SampleFormat::S24,
        (FORMAT_PCM, 32) => SampleFormat::S32,
        (FORMAT_FLOAT, 32) => SampleFormat::F32,
        (FORMAT_FLOAT, 64) => {
            return Err(Error::Unsupported("64-bit float WAV".into()));
        }
        (FORMAT_PCM | FORMAT_FLOAT, b) => {
            return Err(Error::Unsupported(format!("{b}-bit WAV samples")));
        }
        (t, _) => {
            return Err(Error::Unsupported(format!(
                "WAV encoding 0x{t:04x} (only PCM and IEEE float)"
            )));
        }
    };
    if channels == 0 || rate == 0 {
        return Err(Error::Corrupt(format!(
            "WAV header says {channels} channels at {rate} Hz"
        )));
    }
    if block_align as usize != channels as usize * format.bytes() {
        return Err(Error::Corrupt(format!(
            "WAV block alignment {block_align} does not match {channels} channels of {bits} bits"
        )));
    }
    Ok((Spec { rate, channels }.validate()?, format))
}

/// The 44-byte header (46 for float, 68 with `WAVE_FORMAT_EXTENSIBLE`, used above 2 channels)
/// for `data_len` bytes of samples, or for a stream of unknown length.
pub fn build(spec: Spec, format: SampleFormat, data_len: Option<u64>) -> Vec<u8> {
    let extensible = spec.channels > 2;
    // Formats other than integer PCM carry cbSize (0 here): 18 bytes of fmt, as sox expects.
    let fmt_len: u32 = match (extensible, format.is_float()) {
        (true, _) => 40,
        (false, true) => 18,
        (false, false) => 16,
    };
    let data = match data_len {
        Some(n) if n + (n & 1) + 20 + fmt_len as u64 <= u32::MAX as u64 => n as u32,
        _ => STREAMING_SIZE,
    };
    let pad = data & 1;
    let riff = 4 + 8 + fmt_len + 8 + data + pad;
    let tag = if format.is_float() {
        FORMAT_FLOAT
    } else {
        FORMAT_PCM
    };
    let block = spec.channels as u32 * format.bytes() as u32;
    let mut h = Vec::with_capacity(68);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&riff.to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&fmt_len.to_le_bytes());
    h.extend_from_slice(&(if extensible { FORMAT_EXTENSIBLE } else { tag }).to_le_bytes());
    h.extend_from_slice(&spec.channels.to_le_bytes());
    h.extend_from_slice(&spec.rate.to_le_bytes());
    h.extend_from_slice(&(spec.rate * block).to_le_bytes());
    h.extend_from_slice(&(block as u16).to_le_bytes());
    h.extend_from_slice(&format.bits().to_le_bytes());
    if fmt_len == 18 {
        h.extend_from_slice(&0u16.to_le_bytes());
    }
    if extensible {
        h.extend_from_slice(&22u16.to_le_bytes());
        h.extend_from_slice(&format.bits().to_le_bytes()); // valid bits
        h.extend_from_slice(&0u32.to_le_bytes()); // channel mask: unspecified
        // The subformat GUID: the format tag, then the fixed KSDATAFORMAT suffix.
        h.extend_from_slice(&(tag as u32).to_le_bytes());
        h.extend_from_slice(&[
            0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xaa, 0x00, 0x38, 0x9b, 0x71,
        ]);
    }
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_headers_parse_back() {
        for (channels, format) in [
            (1, SampleFormat::S16),
            (2, SampleFormat::S24),
            (1, SampleFormat::F32),
            (6, SampleFormat::S16),
            (1, SampleFormat::U8),
        ] {
            let spec = Spec {
                rate: 44_100,
                channels,
            };
            for len in [Some(1000), None] {
                let h = build(spec, format, len);
                let parsed = parse(&h).unwrap().unwrap();
                assert_eq!(parsed.spec, spec);
                assert_eq!(parsed.format, format);
                assert_eq!(parsed.data_len, len);
                assert_eq!(parsed.data_offset, h.len());
                // Every shorter prefix asks for more, none errs.
                for cut in 0..h.len() {
                    assert_eq!(parse(&h[..cut]).unwrap(), None, "cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn other_chunks_are_skipped_and_odd_ones_padded() {
        let spec = Spec {
            rate: 8000,
            channels: 1,
        };
        let h = build(spec, SampleFormat::S16, Some(10));
        let mut f = h[..36].to_vec();
        f.extend_from_slice(b"LIST\x03\x00\x00\x00abc\x00");
        f.extend_from_slice(&h[36..]);
        let p = parse(&f).unwrap().unwrap();
        assert_eq!(p.data_offset, f.len());
        assert_eq!(p.data_len, Some(10));
    }

    #[test]
    fn streaming_sizes_mean_until_end_of_file() {
        let spec = Spec {
            rate: 48_000,
            channels: 1,
        };
        for size in [0u32, STREAMING_SIZE, u32::MAX] {
            let mut h = build(spec, SampleFormat::S16, Some(2));
            let n = h.len();
            h[n - 4..].copy_from_slice(&size.to_le_bytes());
            assert_eq!(parse(&h).unwrap().unwrap().data_len, None);
        }
    }

    #[test]
    fn garbage_is_corrupt_and_odd_encodings_unsupported() {
        assert!(matches!(
            parse(b"OggS\0\0\0\0\0\0\0\0\0\0"),
            Err(Error::Corrupt(_))
        ));
        let spec = Spec {
            rate: 48_000,
            channels: 1,
        };
        let mut h = build(spec, SampleFormat::S16, Some(2));
        h[20] = 2; // ADPCM
        assert!(matches!(parse(&h), Err(Error::Unsupported(_))));
        let mut h = build(spec, SampleFormat::S16, Some(2));
        h[32] = 3; // block align disagrees with bits
        assert!(matches!(parse(&h), Err(Error::Corrupt(_))));
    }
}
