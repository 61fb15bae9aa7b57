//! What is in a recording: length, level, silence, DTMF digits, and, against a reference, how
//! late it is and how alike the two are. Sans-IO: feed frames, then ask for the [`Analysis`].

use std::io;

use serde::Serialize;

use super::dtmf::{DtmfDetector, DtmfEvent};
use super::fft;
use super::pcm::Spec;
use super::xcorr::{self, Samples};

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
    /// The mono mix of the last [`Analyzer::push`].
    mono: Vec<f32>,
}

impl Analyzer {
    /// An analyzer for audio of `spec`; blocks below `silence_db` dBFS RMS count as silent.
    pub fn new(spec: Spec, silence_db: f64) -> Analyzer {
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
    }

    fn close_block(&mut self) {
        self.blocks += 1;
        if self.block_sum / (self.block_fill as f64) < self.threshold_sq {
            self.silent_blocks += 1;
        }
        self.block_sum = 0.0;
        self.block_fill = 0;
    }

    /// The mono mix of the frames last pushed (to keep for [`compare_samples`]).
    pub fn last_mono(&self) -> &[f32] {
        &self.mono
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
    compare_samples(&mut &x[..], &mut &reference[..], rate, max_lag)
        .expect("slices do not fail to read")
}

/// [`compare`] on signals read in blocks ([`xcorr::best_lag`]): memory stays a few MiB-sized
/// FFT buffers however long they are, and a lag limit saves the work outside it.
pub fn compare_samples(
    x: &mut dyn Samples,
    reference: &mut dyn Samples,
    rate: u32,
    max_lag: Option<usize>,
) -> io::Result<Comparison> {
    compare_blocked(x, reference, rate, max_lag, xcorr::MAX_BLOCK)
}

fn compare_blocked(
    x: &mut dyn Samples,
    reference: &mut dyn Samples,
    rate: u32,
    max_lag: Option<usize>,
    block: usize,
) -> io::Result<Comparison> {
    let lag = xcorr::best_lag(x, reference, max_lag, block)?.unwrap_or(0);
    measure_at(x, reference, rate, lag)
}

/// The whole-signal search `pipe-audio analyze` used before the blocked one: one FFT of both
/// signals at once (2^26 points for two ten-minute recordings, about 2 GiB). Kept as the
/// reference the blocked search is tested and benchmarked against.
pub fn compare_whole(
    x: &[f32],
    reference: &[f32],
    rate: u32,
    max_lag: Option<usize>,
) -> Comparison {
    let (first, c) = fft::xcorr(x, reference);
    let in_range = |lag: isize| max_lag.is_none_or(|m| lag.unsigned_abs() <= m);
    let (best_k, _) = c
        .iter()
        .enumerate()
        .filter(|&(k, _)| in_range(first + k as isize))
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap_or((0, &0.0));
    let lag = first + best_k as isize;
    measure_at(&mut &x[..], &mut &reference[..], rate, lag).expect("slices do not fail to read")
}

/// Similarity and SNR of the overlap at `lag`: reference sample i against recording sample
/// i + lag, read a block at a time.
fn measure_at(
    x: &mut dyn Samples,
    reference: &mut dyn Samples,
    rate: u32,
    lag: isize,
) -> io::Result<Comparison> {
    let lo = 0.max(-lag) as usize;
    let hi = (reference.len() as isize)
        .min(x.len() as isize - lag)
        .max(lo as isize) as usize;
    let (mut xy, mut xx, mut yy) = (0.0f64, 0.0f64, 0.0f64);
    const CHUNK: usize = 1 << 16;
    let (mut xa, mut ya) = (vec![0f32; CHUNK], vec![0f32; CHUNK]);
    let mut i = lo;
    while i < hi {
        let n = CHUNK.min(hi - i);
        x.read_at((i as isize + lag) as usize, &mut xa[..n])?;
        reference.read_at(i, &mut ya[..n])?;
        for (a, b) in xa[..n].iter().zip(&ya[..n]) {
            let (a, b) = (*a as f64, *b as f64);
            xy += a * b;
            xx += a * a;
            yy += b * b;
        }
        i += n;
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
    Ok(Comparison {
        delay_samples: lag as i64,
        delay_seconds: lag as f64 / rate as f64,
        similarity,
        snr_db,
    })
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

    fn direct(x: &[f32], y: &[f32], lag: isize) -> f64 {
        (0..y.len() as isize)
            .filter(|i| (0..x.len() as isize).contains(&(i + lag)))
            .map(|i| x[(i + lag) as usize] as f64 * y[i as usize] as f64)
            .sum()
    }

    fn generated(signal: super::super::Signal, seconds: f64) -> Vec<f32> {
        let mut g = super::super::Generator::new(signal, 8000, 0.5, seconds).unwrap();
        let mut out = Vec::new();
        while g.fill(&mut out, 4096) > 0 {}
        out
    }

    fn delayed(x: &[f32], delay: isize, gain: f32) -> Vec<f32> {
        let n = x.len() as isize + delay.max(0);
        (0..n)
            .map(|i| {
                let j = i - delay;
                if (0..x.len() as isize).contains(&j) {
                    gain * x[j as usize]
                } else {
                    0.0
                }
            })
            .collect()
    }

    #[test]
    fn the_blocked_search_answers_as_the_whole_signal_search_did() {
        use super::super::Signal;
        // Signals with one sharp peak (noise, sweep, DTMF), and periodic ones (clicks, a tone)
        // whose peaks tie: there rounding picks among equal lags, in either search, so the two
        // must only agree on the peak's height. Delayed both ways, cut short, searched with and
        // without a limit; blocks much shorter than the signals, so that many pairs add up.
        let signals = [
            ("noise", noise(9_000, 7)),
            (
                "sweep",
                generated(
                    Signal::Sweep {
                        from: 50.0,
                        to: 3900.0,
                    },
                    1.1,
                ),
            ),
            ("clicks", generated(Signal::Clicks { interval: 0.05 }, 1.0)),
            ("tone", generated(Signal::Tone { freq: 440.0 }, 0.7)),
            (
                "dtmf",
                generated(
                    Signal::Dtmf {
                        digits: "19#".into(),
                        on: 0.08,
                        off: 0.05,
                    },
                    0.0,
                ),
            ),
        ];
        for (name, r) in &signals {
            for delay in [0isize, 333, -1234, 4000] {
                let mut x = delayed(r, delay, 0.7);
                x.truncate(x.len() * 9 / 10);
                for lim in [None, Some(500), Some(5000)] {
                    let want = compare_whole(&x, r, 8000, lim);
                    for block in [256, 1024, 1 << 20] {
                        let got =
                            compare_blocked(&mut &x[..], &mut &r[..], 8000, lim, block).unwrap();
                        let ctx = format!("{name} delay {delay} lim {lim:?} block {block}");
                        // Everywhere: a peak as high as the whole-signal search found.
                        let at = |lag: i64| direct(&x, r, lag as isize);
                        let (g, w) = (at(got.delay_samples), at(want.delay_samples));
                        assert!((g - w).abs() <= 1e-9 * w.abs().max(1.0), "{ctx}: {g} {w}");
                        // With one true peak in range: the very same answer, and the right one.
                        if lim.is_none_or(|l| delay.unsigned_abs() <= l)
                            && !matches!(*name, "clicks" | "tone")
                        {
                            assert_eq!(got.delay_samples, delay as i64, "{ctx}");
                            assert_eq!(got.delay_samples, want.delay_samples, "{ctx}");
                            assert_eq!(got.similarity, want.similarity, "{ctx}");
                            assert_eq!(got.snr_db, want.snr_db, "{ctx}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn levels_and_silence() {
        let spec = Spec {
            rate: 1000,
            channels: 2,
        };
        let mut a = Analyzer::new(spec, -50.0);
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
