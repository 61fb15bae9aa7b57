//! What is in a recording: length, level, silence, DTMF digits, and, against a reference, how
//! late it is and how alike the two are. Sans-IO: feed frames, then ask for the [`Analysis`].

use serde::Serialize;

use super::dtmf::{DtmfDetector, DtmfEvent};
use super::fft;
use super::pcm::Spec;

/// Length of the blocks that are judged silent or not, seconds.
const SILENCE_BLOCK_S: f64 = 0.010;

/// A summary of one recording.
#[derive(Clone, Debug, Serialize)]
pub struct Analysis {
    /// Sample rate, Hz.
    pub rate: u32,
    /// Channels.
    pub channels: u16,
    /// Length in frames (samples per channel).
    pub samples: u64,
    /// Length in seconds.
    pub seconds: f64,
    /// RMS level over all channels, dBFS (a full-scale sine is -3 dBFS); null when silent.
    pub rms_dbfs: Option<f64>,
    /// Highest absolute sample, dBFS; null when silent.
    pub peak_dbfs: Option<f64>,
    /// Fraction of 10 ms blocks whose RMS is below the silence threshold.
    pub silence_ratio: f64,
    /// The threshold used, dBFS.
    pub silence_threshold_dbfs: f64,
    /// DTMF digits detected, in order.
    pub dtmf: String,
    /// Each digit with its start time.
    pub dtmf_events: Vec<DtmfEvent>,
    /// Comparison with a reference recording, when one was given.
    pub reference: Option<Comparison>,
}

/// How a recording relates to a reference.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// How many samples later the recording is than the reference (negative: earlier), at the
    /// recording's rate; the lag of the cross-correlation peak.
    pub delay_samples: i64,
    /// The same in seconds.
    pub delay_seconds: f64,
    /// Normalised cross-correlation at that lag over the overlap, -1 to 1 (1: identical up to
    /// gain; near 0: unrelated).
    pub similarity: f64,
    /// Signal-to-difference ratio of the aligned overlap after the best gain, dB.
    pub snr_db: Option<f64>,
}

/// Accumulates a recording and produces its [`Analysis`].
pub struct Analyzer {
    spec: Spec,
    frames: u64,
    sum_sq: f64,
    peak: f32,
    block_len: usize,
    block_sum: f64,
    block_fill: usize,
    blocks: u64,
    silent_blocks: u64,
    threshold_db: f64,
    threshold_sq: f64,
    dtmf: DtmfDetector,
    /// The mono mix, kept when a reference comparison will be asked for.
    keep: Option<Vec<f32>>,
    mono: Vec<f32>,
}

impl Analyzer {
    /// An analyzer for audio of `spec`; blocks below `silence_db` dBFS RMS count as silent.
    /// `keep_mono` keeps the mono mix for [`Analyzer::compare`].
    pub fn new(spec: Spec, silence_db: f64, keep_mono: bool) -> Analyzer {
        let block_len = ((spec.rate as f64 * SILENCE_BLOCK_S).round() as usize).max(1);
        Analyzer {
            spec,
            frames: 0,
            sum_sq: 0.0,
            peak: 0.0,
            block_len,
            block_sum: 0.0,
            block_fill: 0,
            blocks: 0,
            silent_blocks: 0,
            threshold_db: silence_db,
            threshold_sq: 10f64.powf(silence_db / 10.0),
            dtmf: DtmfDetector::new(spec.rate),
            keep: keep_mono.then(Vec::new),
            mono: Vec::new(),
        }
    }

    /// Feeds interleaved frames.
    pub fn push(&mut self, x: &[f32]) {
        let ch = self.spec.channels as usize;
        self.mono.clear();
        super::pcm::mix(x, self.spec.channels, 1, &mut self.mono);
        for f in x.chunks_exact(ch) {
            let mut e = 0.0f64;
            for &v in f {
                e += v as f64 * v as f64;
                self.peak = self.peak.max(v.abs());
            }
            self.sum_sq += e;
            self.block_sum += e / ch as f64;
            self.block_fill += 1;
            if self.block_fill == self.block_len {
                self.close_block();
            }
        }
        self.frames += (x.len() / ch) as u64;
        self.dtmf.push(&self.mono);
        if let Some(k) = &mut self.keep {
            k.extend_from_slice(&self.mono);
        }
    }

    fn close_block(&mut self) {
        self.blocks += 1;
        if self.block_sum / (self.block_fill as f64) < self.threshold_sq {
            self.silent_blocks += 1;
        }
        self.block_sum = 0.0;
        self.block_fill = 0;
    }

    /// The kept mono mix (empty unless asked for at construction).
    pub fn mono(&self) -> &[f32] {
        self.keep.as_deref().unwrap_or(&[])
    }

    /// The summary (a trailing partial block counts toward the silence ratio).
    pub fn finish(mut self, reference: Option<Comparison>) -> Analysis {
        if self.block_fill > 0 {
            self.close_block();
        }
        let n = self.frames * self.spec.channels as u64;
        let db = |v: f64| (v > 0.0).then(|| 10.0 * v.log10());
        Analysis {
            rate: self.spec.rate,
            channels: self.spec.channels,
            samples: self.frames,
            seconds: self.frames as f64 / self.spec.rate as f64,
            rms_dbfs: db(if n > 0 { self.sum_sq / n as f64 } else { 0.0 }),
            peak_dbfs: db((self.peak as f64).powi(2)),
            silence_ratio: if self.blocks > 0 {
                self.silent_blocks as f64 / self.blocks as f64
            } else {
                1.0
            },
            silence_threshold_dbfs: self.threshold_db,
            dtmf: self.dtmf.digits(),
            dtmf_events: self.dtmf.events().to_vec(),
            reference,
        }
    }
}

/// Compares `x` (the recording) with `reference`, both mono at `rate`: the lag of the
/// cross-correlation peak, searched within `max_lag` samples each way if given.
pub fn compare(x: &[f32], reference: &[f32], rate: u32, max_lag: Option<usize>) -> Comparison {
    let (first, c) = fft::xcorr(x, reference);
    let in_range = |lag: isize| max_lag.is_none_or(|m| lag.unsigned_abs() <= m);
    let (best_k, _) = c
        .iter()
        .enumerate()
        .filter(|&(k, _)| in_range(first + k as isize))
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap_or((0, &0.0));
    let lag = first + best_k as isize;
    // The overlap: reference sample i against recording sample i + lag.
    let lo = 0.max(-lag) as usize;
    let hi = (reference.len() as isize)
        .min(x.len() as isize - lag)
        .max(lo as isize) as usize;
    let (mut xy, mut xx, mut yy) = (0.0f64, 0.0f64, 0.0f64);
    for i in lo..hi {
        let a = x[(i as isize + lag) as usize] as f64;
        let b = reference[i] as f64;
        xy += a * b;
        xx += a * a;
        yy += b * b;
    }
    let similarity = if xx > 0.0 && yy > 0.0 {
        xy / (xx * yy).sqrt()
    } else {
        0.0
    };
    // Best gain g = xy/yy; residual energy xx - xy²/yy.
    let snr_db = (yy > 0.0 && xx > 0.0).then(|| {
        let resid = (xx - xy * xy / yy).max(xx * 1e-15);
        10.0 * (xx / resid).log10()
    });
    Comparison {
        delay_samples: lag as i64,
        delay_seconds: lag as f64 / rate as f64,
        similarity,
        snr_db,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn delays_both_ways_and_similarity() {
        let r = noise(20_000, 1);
        for delay in [0isize, 1, 137, -59] {
            let x: Vec<f32> = (0..20_000isize)
                .map(|i| {
                    let j = i - delay;
                    if (0..20_000).contains(&j) {
                        0.5 * r[j as usize]
                    } else {
                        0.0
                    }
                })
                .collect();
            let c = compare(&x, &r, 48_000, None);
            assert_eq!(c.delay_samples, delay as i64);
            assert!(c.similarity > 0.999, "{}", c.similarity);
            assert!(c.snr_db.unwrap() > 60.0);
        }
        let unrelated = compare(&noise(20_000, 2), &r, 48_000, None);
        assert!(unrelated.similarity.abs() < 0.1);
        let limited = compare(&r, &r, 48_000, Some(10));
        assert_eq!(limited.delay_samples, 0);
    }

    #[test]
    fn levels_and_silence() {
        let spec = Spec {
            rate: 1000,
            channels: 2,
        };
        let mut a = Analyzer::new(spec, -50.0, false);
        // 0.5 s of full-scale square wave, 0.5 s of silence, stereo.
        let mut x = Vec::new();
        for i in 0..500 {
            let v = if i % 2 == 0 { 1.0 } else { -1.0 };
            x.extend([v, v]);
        }
        x.extend(std::iter::repeat_n(0.0, 1000));
        a.push(&x);
        let r = a.finish(None);
        assert_eq!(r.samples, 1000);
        assert!((r.rms_dbfs.unwrap() - (-3.0103)).abs() < 1e-3);
        assert!(r.peak_dbfs.unwrap().abs() < 1e-9);
        assert!((r.silence_ratio - 0.5).abs() < 1e-9);
    }
}
