//! Real-time pacing, sans-IO: when may the next block of audio go out (or be taken in)?
//!
//! A consumer that keeps its own time (a sound card) asks for audio when it needs it, and we
//! hand it over at once. One that does not (ALSA's `null` and `file` devices, a pipe with
//! `--realtime`) would take an hour of audio in a second, so the pacer holds each block back
//! until its time on the audio clock: frame `n` is due at `start + n / rate`. Deadlines are
//! computed from the start, never by adding up sleeps, so lateness in one block does not
//! accumulate into drift.
//!
//! [`PaceMode::Auto`] tells the two kinds apart by watching: a consumer that gets more than
//! `lead` ahead of the wall clock does not keep time, and from then on the pacer holds it back.
//! A sound card never gets further ahead than its buffer, so `lead` is set above that.
//!
//! Use: call [`Pacer::due`] with the current time and the frame whose time must have come; if
//! it returns a deadline, sleep until then; then call [`Pacer::record`] with the time the block
//! actually went. [`Pacer::end`] says when the last frame has been played.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Whether to pace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PaceMode {
    /// Pace only a consumer that runs ahead of real time.
    Auto,
    /// Always hold audio to real time.
    Always,
    /// Never wait (as fast as the consumer takes it).
    Never,
}

/// Histogram resolution for lateness, and its range (later ones land in the last bucket).
const BUCKET: Duration = Duration::from_micros(10);
const BUCKETS: usize = 10_000;

/// Holds blocks of audio to their time on the audio clock and measures how late they go.
#[derive(Clone, Debug)]
pub struct Pacer {
    rate: f64,
    mode: PaceMode,
    lead: Duration,
    start: Option<Instant>,
    paced: bool,
    hist: Vec<u32>,
    count: u64,
    max: Duration,
}

impl Pacer {
    /// A pacer for `rate` frames per second.
    pub fn new(rate: u32, mode: PaceMode, lead: Duration) -> Pacer {
        Pacer {
            rate: rate as f64,
            mode,
            lead,
            start: None,
            paced: mode == PaceMode::Always,
            hist: vec![0; BUCKETS],
            count: 0,
            max: Duration::ZERO,
        }
    }

    /// Whether the pacer is holding audio back (always, or since auto mode saw the consumer run
    /// ahead).
    pub fn is_pacing(&self) -> bool {
        self.paced
    }

    /// The time frame `frame` is due on the audio clock (the clock starts at the first call).
    pub fn time_of(&self, frame: u64) -> Option<Instant> {
        self.start
            .map(|s| s + Duration::from_secs_f64(frame as f64 / self.rate))
    }

    /// A block whose time is frame `frame` is ready at `now`: the deadline to wait for, if any.
    /// For playback pass the block's first frame; for capture, the frame after its last.
    #[must_use]
    pub fn due(&mut self, now: Instant, frame: u64) -> Option<Instant> {
        let start = *self.start.get_or_insert(now);
        let at = start + Duration::from_secs_f64(frame as f64 / self.rate);
        if self.mode == PaceMode::Auto && !self.paced && at > now + self.lead {
            self.paced = true;
        }
        (self.paced && at > now).then_some(at)
    }

    /// The block due at `frame` actually went at `now`: counts its lateness (paced blocks only).
    pub fn record(&mut self, now: Instant, frame: u64) {
        if !self.paced {
            return;
        }
        let Some(at) = self.time_of(frame) else {
            return;
        };
        let late = now.saturating_duration_since(at);
        let b = ((late.as_nanos() / BUCKET.as_nanos()) as usize).min(BUCKETS - 1);
        self.hist[b] += 1;
        self.count += 1;
        self.max = self.max.max(late);
    }

    /// When `frames` frames in total have been played: their time on the audio clock.
    pub fn end(&self, frames: u64) -> Option<Instant> {
        self.time_of(frames)
    }

    /// Lateness of paced blocks so far.
    pub fn lateness(&self) -> Lateness {
        let q = |p: f64| -> f64 {
            if self.count == 0 {
                return 0.0;
            }
            let want = (p * self.count as f64).ceil().max(1.0) as u64;
            let mut seen = 0u64;
            for (i, &n) in self.hist.iter().enumerate() {
                seen += n as u64;
                if seen >= want {
                    return ((i + 1) as f64 * BUCKET.as_secs_f64() * 1e3)
                        .min(self.max.as_secs_f64() * 1e3);
                }
            }
            self.max.as_secs_f64() * 1e3
        };
        Lateness {
            blocks: self.count,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            max_ms: self.max.as_secs_f64() * 1e3,
        }
    }
}

/// How late paced blocks went out, in milliseconds (upper bounds, 10 µs resolution).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Lateness {
    /// Paced blocks measured.
    pub blocks: u64,
    /// Median lateness.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Worst.
    pub max_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn deadlines_come_from_the_start_not_from_the_last_sleep() {
        let t0 = Instant::now();
        let mut p = Pacer::new(48_000, PaceMode::Always, Duration::ZERO);
        assert_eq!(p.due(t0, 0), None);
        // Each block is woken 3 ms late; the deadlines do not slide.
        let mut now = t0;
        for k in 1..=100u64 {
            let at = p.due(now, k * 960).unwrap();
            assert_eq!(at, t0 + 20 * MS * k as u32);
            now = at + 3 * MS;
            p.record(now, k * 960);
        }
        assert_eq!(p.end(101 * 960), Some(t0 + 2020 * MS));
        let l = p.lateness();
        assert_eq!(l.blocks, 100);
        assert!((l.p99_ms - 3.0).abs() < 0.011 && (l.max_ms - 3.0).abs() < 1e-9);
    }

    #[test]
    fn auto_leaves_a_self_timed_consumer_alone_and_catches_a_fast_one() {
        let t0 = Instant::now();
        // A card with a 40 ms buffer: asks for 20 ms blocks 40 ms ahead, then in real time.
        let mut card = Pacer::new(48_000, PaceMode::Auto, 100 * MS);
        for k in 0..500u64 {
            let now = t0 + (20 * MS * k as u32).saturating_sub(40 * MS);
            assert_eq!(card.due(now, k * 960), None);
        }
        assert!(!card.is_pacing());
        // The null device: asks for everything at once.
        let mut null = Pacer::new(48_000, PaceMode::Auto, 100 * MS);
        let mut held = None;
        for k in 0..500u64 {
            if let Some(at) = null.due(t0, k * 960) {
                held = Some((k, at));
                break;
            }
        }
        let (k, at) = held.unwrap();
        assert_eq!(k, 6, "held back once more than 100 ms ahead");
        assert_eq!(at, t0 + 120 * MS);
        assert!(null.is_pacing());
    }

    #[test]
    fn never_never_waits() {
        let t0 = Instant::now();
        let mut p = Pacer::new(8_000, PaceMode::Never, Duration::ZERO);
        assert!((0..100).all(|k| p.due(t0, k * 8_000).is_none()));
        assert_eq!(p.lateness().blocks, 0);
    }
}
