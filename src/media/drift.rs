//! Clock drift between the sender's sample clock and our playout, and its compensation.
//!
//! Two sound cards never run at exactly one rate: 100 ppm apart, a sender 48 kHz clock gains
//! 60 ms in ten minutes on ours. Left alone, the jitter buffer corrects that in whole frames
//! (an accelerate every few minutes when the sender is fast, an expand when it is slow): a
//! periodic 20 ms glitch. Here the drift is estimated and absorbed continuously instead: the
//! buffer consumes its decoded audio a little faster or slower than it plays it, by linear
//! interpolation at a ratio within ±[`MAX_RATIO`] (0.1 %: a pitch change far below hearing).
//!
//! **Estimate.** Our clock is the audio we have played (one frame per pop: a sound card pulls at
//! its own rate), between pops interpolated with the arrival clock. A packet's timestamp less
//! its arrival on that clock (the negative of its transit) moves by the drift, plus network
//! jitter and nothing else: DTX silence still advances timestamps, and the buffer's own skips
//! move neither. Per [`BUCKET`] pops the highest value is kept (the fastest packet: the lower
//! envelope of the transit, where jitter is least), and the slope of a least-squares line
//! through the last [`WINDOW`] buckets is the drift. It applies once [`MIN_BUCKETS`] are in and
//! only above [`DEADBAND`], so a call without drift plays every decoded sample as it was.

use std::collections::VecDeque;

/// Pops per bucket (50 pops of 20 ms: one second).
pub const BUCKET: u32 = 50;
/// Buckets in the estimate (a minute): long enough that tens of ms of jitter make a few ppm.
pub const WINDOW: usize = 60;
/// Buckets before the estimate is used.
pub const MIN_BUCKETS: usize = 20;
/// Smaller estimated drift is left alone (noise, and a call that has none plays untouched).
pub const DEADBAND: f64 = 20e-6;
/// The largest correction: real crystals are within ±100 ppm; 0.1 % leaves room and cannot be
/// heard.
pub const MAX_RATIO: f64 = 1e-3;

/// Drift estimator and fractional-rate reader.
#[derive(Debug, Default)]
pub struct Drift {
    /// Output samples played so far (our clock).
    played: i64,
    /// The arrival clock at the last pop.
    last_pop: Option<i64>,
    pops: u32,
    /// Highest timestamp less arrival (on our clock) in the bucket being filled.
    bucket_max: Option<i64>,
    /// (played at the bucket's end, its highest `head - played`).
    buckets: VecDeque<(i64, i64)>,
    /// Input samples consumed per output sample, minus one.
    correction: f64,
    /// Fractional read position into the decoded audio.
    phase: f64,
}

impl Drift {
    /// A packet with timestamp `ts` arrived at `arrival` (the clock `pop` gets).
    pub fn on_packet(&mut self, ts: i64, arrival: i64) {
        let Some(last) = self.last_pop else { return };
        let x = ts - (self.played + (arrival - last));
        self.bucket_max = Some(self.bucket_max.map_or(x, |m| m.max(x)));
    }

    /// The current correction (input samples per output sample, minus one).
    pub fn correction(&self) -> f64 {
        self.correction
    }

    /// Input samples a frame of `want` output samples needs buffered.
    pub fn needs(&self, want: usize) -> usize {
        if self.correction == 0.0 && self.phase == 0.0 {
            want
        } else {
            (self.phase + want as f64 * (1.0 + self.correction)).floor() as usize + 2
        }
    }

    /// Takes one frame of `want` samples from `fifo` (which holds at least
    /// [`needs`](Self::needs)), consuming more or fewer as the correction says, and accounts it
    /// as played.
    pub fn take(&mut self, now: i64, fifo: &mut VecDeque<f32>, want: usize) -> Vec<f32> {
        let out = self.read(fifo, want);
        // A new estimate applies from the next frame, which asks `needs` again first.
        self.observe(now, want);
        out
    }

    fn read(&mut self, fifo: &mut VecDeque<f32>, want: usize) -> Vec<f32> {
        if self.correction == 0.0 && self.phase == 0.0 {
            return fifo.drain(..want).collect();
        }
        let step = 1.0 + self.correction;
        let out = (0..want)
            .map(|k| {
                let pos = self.phase + k as f64 * step;
                let i = pos.floor() as usize;
                let f = (pos - i as f64) as f32;
                fifo[i] * (1.0 - f) + fifo[i + 1] * f
            })
            .collect();
        let end = self.phase + want as f64 * step;
        let used = end.floor() as usize;
        fifo.drain(..used);
        self.phase = end - used as f64;
        // Back to exact playout once no correction is wanted and the phase has come round.
        if self.correction == 0.0 && self.phase < 1e-9 {
            self.phase = 0.0;
        }
        out
    }

    /// Accounts `want` samples played at `now` and updates the estimate at each bucket's end.
    fn observe(&mut self, now: i64, want: usize) {
        self.played += want as i64;
        self.last_pop = Some(now);
        self.pops += 1;
        if self.pops < BUCKET {
            return;
        }
        self.pops = 0;
        if let Some(m) = self.bucket_max.take() {
            if self.buckets.len() == WINDOW {
                self.buckets.pop_front();
            }
            self.buckets.push_back((self.played, m));
        }
        self.correction = match slope(&self.buckets) {
            Some(s) if self.buckets.len() >= MIN_BUCKETS && s.abs() > DEADBAND => {
                s.clamp(-MAX_RATIO, MAX_RATIO)
            }
            _ => 0.0,
        };
    }
}

/// Least-squares slope of y over x.
fn slope(points: &VecDeque<(i64, i64)>) -> Option<f64> {
    let n = points.len() as f64;
    if n < 2.0 {
        return None;
    }
    let (x0, y0) = points[0];
    let (mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0);
    for &(x, y) in points {
        let (x, y) = ((x - x0) as f64, (y - y0) as f64);
        sx += x;
        sy += y;
        sxx += x * x;
        sxy += x * y;
    }
    let d = n * sxx - sx * sx;
    (d > 0.0).then(|| (n * sxy - sx * sy) / d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender `ppm` fast (or slow) with packets arriving with up to `jitter` samples of
    /// jitter: the estimate after a minute and a bit.
    fn estimate(ppm: f64, jitter: i64) -> f64 {
        let mut d = Drift::default();
        let mut fifo: VecDeque<f32> = VecDeque::new();
        let mut seed = 7u64;
        for pop in 0..(WINDOW as i64 + 5) * BUCKET as i64 {
            // Packets up to our time, each `jitter`-late at random.
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let late = if jitter > 0 {
                (seed >> 33) as i64 % jitter
            } else {
                0
            };
            // The sender's packet for our time `pop * 960`, `late` samples late.
            let ts = ((pop * 960) as f64 * (1.0 + ppm * 1e-6)) as i64;
            d.on_packet(ts, pop * 960 + late);
            fifo.resize(d.needs(960), 0.0);
            let _ = d.take(pop * 960, &mut fifo, 960);
        }
        d.correction() * 1e6
    }

    #[test]
    fn the_drift_is_found_and_none_is_left_alone() {
        for (ppm, jitter) in [(100.0, 0), (-100.0, 0), (100.0, 1440), (-60.0, 1440)] {
            let got = estimate(ppm, jitter);
            // 15 ppm off leaves 9 ms in ten minutes: well inside a frame.
            let tolerance = if jitter > 0 { 15.0 } else { 2.0 };
            assert!(
                (got - ppm).abs() < tolerance,
                "{ppm} ppm with {jitter} samples of jitter: estimated {got:.1}"
            );
        }
        assert_eq!(estimate(0.0, 1440), 0.0, "no drift: untouched");
    }

    #[test]
    fn without_correction_playout_is_exact_and_with_it_consumes_the_ratio() {
        let mut d = Drift::default();
        let mut fifo: VecDeque<f32> = (0..2000).map(|i| i as f32).collect();
        assert_eq!(
            d.take(0, &mut fifo, 960),
            (0..960).map(|i| i as f32).collect::<Vec<_>>()
        );
        // (Fewer pops than a bucket, so the estimate does not reset the correction.)
        let mut d = Drift {
            correction: 1e-3,
            ..Drift::default()
        };
        let mut fifo: VecDeque<f32> = (0..100_000).map(|i| i as f32 * 1e-3).collect();
        let before = fifo.len();
        for _ in 0..40 {
            let _ = d.take(0, &mut fifo, 960);
        }
        // 40 frames at 1.001: 38,438.4 samples consumed (and the interpolation is a ramp's).
        assert_eq!(before - fifo.len(), 38_438);
        let out = d.take(0, &mut fifo, 960);
        assert!((out[1] - out[0] - 1.001e-3).abs() < 1e-5, "{:?}", &out[..2]);
    }
}
