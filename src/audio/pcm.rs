//! Samples: the encodings files and pipes carry, their conversion to and from `f32`, and channel
//! mixing. Everything inside the module is interleaved `f32` in [-1, 1); integer encodings
//! convert exactly (16- and 24-bit values survive a round trip bit for bit).

use serde::Serialize;

use super::error::{Error, Result};

/// The call format's rate: what `dial` and `answer` send and receive (Opus's native rate).
pub const CALL_RATE: u32 = 48_000;
/// The call format's channel count.
pub const CALL_CHANNELS: u16 = 1;
/// The call format's sample encoding.
pub const CALL_SAMPLE: SampleFormat = SampleFormat::S16;

/// Lowest and highest rates accepted anywhere (sox's practical range).
pub const RATE_RANGE: std::ops::RangeInclusive<u32> = 1_000..=768_000;
/// Most channels accepted anywhere.
pub const MAX_CHANNELS: u16 = 32;

/// Rate and channel count of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Spec {
    /// Frames per second.
    pub rate: u32,
    /// Samples per frame.
    pub channels: u16,
}

impl Spec {
    /// The call format's rate and channels (48 kHz mono).
    pub const CALL: Spec = Spec {
        rate: CALL_RATE,
        channels: CALL_CHANNELS,
    };

    /// Checks the rate and channel count are in range.
    pub fn validate(self) -> Result<Spec> {
        if !RATE_RANGE.contains(&self.rate) {
            return Err(Error::Unsupported(format!(
                "sample rate {} Hz (supported: {} to {} Hz)",
                self.rate,
                RATE_RANGE.start(),
                RATE_RANGE.end()
            )));
        }
        if self.channels == 0 || self.channels > MAX_CHANNELS {
            return Err(Error::Unsupported(format!(
                "{} channels (supported: 1 to {MAX_CHANNELS})",
                self.channels
            )));
        }
        Ok(self)
    }
}

/// A sample encoding, little-endian where it has bytes to order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SampleFormat {
    /// Unsigned 8-bit (WAV's 8-bit encoding).
    U8,
    /// Signed 16-bit.
    S16,
    /// Signed 24-bit, packed in 3 bytes.
    S24,
    /// Signed 32-bit.
    S32,
    /// IEEE 754 32-bit float.
    F32,
}

impl SampleFormat {
    /// Bytes per sample.
    pub fn bytes(self) -> usize {
        match self {
            SampleFormat::U8 => 1,
            SampleFormat::S16 => 2,
            SampleFormat::S24 => 3,
            SampleFormat::S32 | SampleFormat::F32 => 4,
        }
    }

    /// Bits per sample.
    pub fn bits(self) -> u16 {
        self.bytes() as u16 * 8
    }

    /// The name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            SampleFormat::U8 => "u8",
            SampleFormat::S16 => "s16",
            SampleFormat::S24 => "s24",
            SampleFormat::S32 => "s32",
            SampleFormat::F32 => "f32",
        }
    }

    /// Whether this is the float encoding.
    pub fn is_float(self) -> bool {
        self == SampleFormat::F32
    }
}

const S16_SCALE: f32 = 32_768.0;
const S24_SCALE: f32 = 8_388_608.0;
const S32_SCALE: f64 = 2_147_483_648.0;

/// Appends the samples encoded in `bytes` (whole samples only; a trailing partial sample is the
/// caller's to keep) to `out`.
pub fn decode(format: SampleFormat, bytes: &[u8], out: &mut Vec<f32>) {
    let n = bytes.len() / format.bytes();
    out.reserve(n);
    match format {
        SampleFormat::U8 => out.extend(bytes.iter().map(|&b| (b as f32 - 128.0) / 128.0)),
        SampleFormat::S16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as f32 / S16_SCALE),
        ),
        SampleFormat::S24 => out.extend(bytes.chunks_exact(3).map(|c| {
            let v = i32::from_le_bytes([0, c[0], c[1], c[2]]) >> 8;
            v as f32 / S24_SCALE
        })),
        SampleFormat::S32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| (i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64 / S32_SCALE) as f32),
        ),
        SampleFormat::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
    }
}

/// Converts one sample to 16 bits: clipped, rounded to nearest (ties to even). Exact for values
/// that came from 16 bits. Written to vectorise (this is the decode hot path), without
/// `f32::round` or a float-to-int cast: adding 1.5·2²³ to a value in [-32768, 32767] makes the
/// FPU round it to an integer and leaves that integer in the low mantissa bits, as
/// `0x4b40_0000 + value`.
#[inline]
#[allow(clippy::manual_clamp)] // clamp passes NaN through; max/min map it into range.
pub fn to_i16(x: f32) -> i16 {
    const MAGIC: f32 = 12_582_912.0;
    let v = (x * S16_SCALE).max(-32_768.0).min(32_767.0);
    ((v + MAGIC).to_bits() as i32 - 0x4b40_0000) as i16
}

/// Appends `samples` encoded as `format` to `out`. Out-of-range values clip.
pub fn encode(format: SampleFormat, samples: &[f32], out: &mut Vec<u8>) {
    out.reserve(samples.len() * format.bytes());
    match format {
        SampleFormat::U8 => out.extend(
            samples
                .iter()
                .map(|&x| ((x * 128.0).round().clamp(-128.0, 127.0) + 128.0) as u8),
        ),
        SampleFormat::S16 => {
            let start = out.len();
            out.resize(start + samples.len() * 2, 0);
            for (d, &x) in out[start..].chunks_exact_mut(2).zip(samples) {
                d.copy_from_slice(&to_i16(x).to_le_bytes());
            }
        }
        SampleFormat::S24 => {
            for &x in samples {
                let v = (x * S24_SCALE).round().clamp(-8_388_608.0, 8_388_607.0) as i32;
                out.extend_from_slice(&v.to_le_bytes()[..3]);
            }
        }
        SampleFormat::S32 => {
            for &x in samples {
                let v = (x as f64 * S32_SCALE)
                    .round()
                    .clamp(-2_147_483_648.0, 2_147_483_647.0) as i32;
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        SampleFormat::F32 => {
            for &x in samples {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
}

/// Remaps interleaved frames from `from` channels to `to` channels, appending to `out`.
///
/// To mono: the mean of all channels (a stereo signal identical on both sides keeps its level).
/// From mono: copied to every channel. Otherwise output channel `c` is the mean of the input
/// channels `i` with `i % to == c` (fewer outputs), or input `c % from` (more outputs).
pub fn mix(input: &[f32], from: u16, to: u16, out: &mut Vec<f32>) {
    let (from, to) = (from as usize, to as usize);
    if from == to {
        out.extend_from_slice(input);
        return;
    }
    let frames = input.len() / from;
    out.reserve(frames * to);
    if to == 1 {
        let k = 1.0 / from as f32;
        out.extend(input.chunks_exact(from).map(|f| f.iter().sum::<f32>() * k));
    } else if from < to {
        for f in input.chunks_exact(from) {
            out.extend((0..to).map(|c| f[c % from]));
        }
    } else {
        for f in input.chunks_exact(from) {
            for c in 0..to {
                let (mut sum, mut n) = (0.0, 0);
                for s in f.iter().skip(c).step_by(to) {
                    sum += s;
                    n += 1;
                }
                out.push(sum / n as f32);
            }
        }
    }
}

/// Turns a stream of one [`Spec`] into another: channel mixing plus resampling, in the order
/// that does the least work (mix down before resampling, mix up after).
pub struct Conform {
    from: Spec,
    to: Spec,
    resampler: Option<super::resample::Resampler>,
    scratch: Vec<f32>,
}

impl Conform {
    /// A converter from `from` to `to`.
    pub fn new(from: Spec, to: Spec) -> Conform {
        let channels = from.channels.min(to.channels);
        let resampler = (from.rate != to.rate)
            .then(|| super::resample::Resampler::new(from.rate, to.rate, channels));
        Conform {
            from,
            to,
            resampler,
            scratch: Vec::new(),
        }
    }

    /// Sets how a fractional output length is rounded (see [`super::resample::Rounding`]).
    pub fn with_rounding(mut self, rounding: super::resample::Rounding) -> Conform {
        self.resampler = self.resampler.map(|r| r.with_rounding(rounding));
        self
    }

    /// Whether this converter changes nothing.
    pub fn is_identity(&self) -> bool {
        self.from == self.to
    }

    /// Converts `input` (whole frames of `from`), appending whole frames of `to` to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.run(input, out, false);
    }

    /// Ends the stream: appends what the resampler still holds. The total output is the input's
    /// length scaled by the rate ratio, rounded to the nearest frame unless set otherwise.
    pub fn flush(&mut self, out: &mut Vec<f32>) {
        self.run(&[], out, true);
    }

    fn run(&mut self, input: &[f32], out: &mut Vec<f32>, flush: bool) {
        let (fc, tc) = (self.from.channels, self.to.channels);
        let Some(rs) = self.resampler.as_mut() else {
            mix(input, fc, tc, out);
            return;
        };
        self.scratch.clear();
        if tc < fc {
            let mut mixed = Vec::with_capacity(input.len() / fc as usize * tc as usize);
            mix(input, fc, tc, &mut mixed);
            rs.process(&mixed, out);
            if flush {
                rs.flush(out);
            }
        } else {
            rs.process(input, &mut self.scratch);
            if flush {
                rs.flush(&mut self.scratch);
            }
            mix(&self.scratch, fc, tc, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_encodings_round_trip_bit_exactly() {
        for format in [SampleFormat::U8, SampleFormat::S16, SampleFormat::S24] {
            let n = format.bytes();
            // Every byte pattern of the extremes and a spread of values in between.
            let mut bytes = Vec::new();
            for i in 0..4096u32 {
                let v = i.wrapping_mul(2_654_435_761).to_le_bytes();
                bytes.extend_from_slice(&v[..n]);
            }
            let mut f = Vec::new();
            decode(format, &bytes, &mut f);
            assert!(f.iter().all(|x| (-1.0..1.0).contains(x)));
            let mut back = Vec::new();
            encode(format, &f, &mut back);
            assert_eq!(back, bytes, "{format:?}");
        }
    }

    #[test]
    fn sixteen_bit_rounding_is_to_nearest() {
        let q = |v: f32| to_i16(v / S16_SCALE);
        assert_eq!(
            [q(1.4), q(1.6), q(-1.4), q(-1.6), q(2.5), q(-2.5)],
            [1, 2, -1, -2, 2, -2]
        );
        assert_eq!(
            [q(40_000.0), q(-40_000.0), q(f32::NAN)],
            [32_767, -32_768, -32_768]
        );
    }

    #[test]
    fn float_round_trips_and_integers_clip() {
        let x = [0.25f32, -1.5, 1.5, 0.999_99];
        let mut b = Vec::new();
        encode(SampleFormat::F32, &x, &mut b);
        let mut y = Vec::new();
        decode(SampleFormat::F32, &b, &mut y);
        assert_eq!(y, x);
        let mut b = Vec::new();
        encode(SampleFormat::S16, &x, &mut b);
        let mut y = Vec::new();
        decode(SampleFormat::S16, &b, &mut y);
        assert_eq!(y, [0.25, -1.0, 32_767.0 / 32_768.0, 32_767.0 / 32_768.0]);
    }

    #[test]
    fn mixing_keeps_levels() {
        let mut out = Vec::new();
        mix(&[0.5, 0.5, 0.2, -0.2], 2, 1, &mut out);
        assert_eq!(out, [0.5, 0.0]);
        out.clear();
        mix(&[0.5, 0.1], 1, 2, &mut out);
        assert_eq!(out, [0.5, 0.5, 0.1, 0.1]);
        out.clear();
        mix(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 6, 2, &mut out);
        assert_eq!(out, [3.0, 4.0]);
    }

    #[test]
    fn conform_scales_length_to_the_rate_ratio() {
        let from = Spec {
            rate: 44_100,
            channels: 2,
        };
        let mut c = Conform::new(from, Spec::CALL);
        let input = vec![0.1f32; 44_100 * 2];
        let mut out = Vec::new();
        for chunk in input.chunks(2 * 1000) {
            c.process(chunk, &mut out);
        }
        c.flush(&mut out);
        assert_eq!(out.len(), 48_000);
        // Away from the edges a constant stays the same constant.
        assert!(out[1000..47_000].iter().all(|x| (x - 0.1).abs() < 1e-5));
    }
}
