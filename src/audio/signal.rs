//! Test and scripted-call signals, generated sample by sample from their continuous-time
//! definitions (so the same signal at two rates is the same function sampled twice, which is
//! what resampling tests compare against).

use std::f64::consts::TAU;

use super::dtmf;
use super::error::{Error, Result};

/// A signal to generate (mono; the caller copies it to every channel).
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    /// A sine at `freq` Hz.
    Tone {
        /// Frequency, Hz.
        freq: f64,
    },
    /// DTMF digits, each `on` seconds of tone then `off` seconds of silence.
    Dtmf {
        /// The digits (0-9, *, #, A-D).
        digits: String,
        /// Tone length, seconds.
        on: f64,
        /// Gap length, seconds.
        off: f64,
    },
    /// Digital silence.
    Silence,
    /// An exponential sine sweep from `from` Hz to `to` Hz over the whole duration.
    Sweep {
        /// Start frequency, Hz.
        from: f64,
        /// End frequency, Hz.
        to: f64,
    },
    /// One-sample impulses every `interval` seconds, the first at time 0.
    Clicks {
        /// Seconds between clicks.
        interval: f64,
    },
}

/// Generates a [`Signal`] at `rate` Hz, `amplitude` peak (DTMF: per tone), `frames` long.
pub struct Generator {
    signal: Signal,
    rate: f64,
    amplitude: f64,
    frames: u64,
    pos: u64,
}

impl Generator {
    /// A generator; `duration` is ignored for DTMF (whose length follows from the digits).
    pub fn new(signal: Signal, rate: u32, amplitude: f64, duration: f64) -> Result<Generator> {
        let nyquist = rate as f64 / 2.0;
        let frames = match &signal {
            Signal::Dtmf { digits, on, off } => {
                if let Some(bad) = digits.chars().find(|&c| dtmf::frequencies(c).is_none()) {
                    return Err(Error::Unsupported(format!(
                        "'{bad}' is not a DTMF digit (0-9, *, #, A-D)"
                    )));
                }
                (digits.chars().count() as f64 * (on + off) * rate as f64).round() as u64
            }
            _ => (duration * rate as f64).round() as u64,
        };
        let check = |f: f64| {
            if f <= 0.0 || f >= nyquist {
                Err(Error::Unsupported(format!(
                    "{f} Hz at {rate} Hz sampling (must be between 0 and {nyquist} Hz)"
                )))
            } else {
                Ok(())
            }
        };
        match &signal {
            Signal::Tone { freq } => check(*freq)?,
            Signal::Sweep { from, to } => {
                check(*from)?;
                check(*to)?;
            }
            Signal::Dtmf { .. } => check(dtmf::COLS[3])?,
            Signal::Clicks { interval } if *interval <= 0.0 => {
                return Err(Error::Unsupported("click interval must be positive".into()));
            }
            _ => {}
        }
        Ok(Generator {
            signal,
            rate: rate as f64,
            amplitude,
            frames,
            pos: 0,
        })
    }

    /// Total frames.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Appends up to `max` samples; returns how many (0 at the end).
    pub fn fill(&mut self, out: &mut Vec<f32>, max: usize) -> usize {
        let n = (self.frames - self.pos).min(max as u64) as usize;
        let total_s = self.frames as f64 / self.rate;
        for i in self.pos..self.pos + n as u64 {
            let t = i as f64 / self.rate;
            let v = match &self.signal {
                Signal::Tone { freq } => (TAU * freq * t).sin(),
                Signal::Silence => 0.0,
                Signal::Sweep { from, to } => {
                    // Instantaneous frequency from·(to/from)^(t/T); phase is its integral.
                    let k = (to / from).ln() / total_s.max(1e-9);
                    let phase = if k.abs() < 1e-12 {
                        t
                    } else {
                        (k * t).exp_m1() / k
                    };
                    (TAU * from * phase).sin()
                }
                Signal::Clicks { interval } => {
                    let period = (interval * self.rate).round().max(1.0) as u64;
                    if i % period == 0 { 1.0 } else { 0.0 }
                }
                Signal::Dtmf { digits, on, off } => {
                    let slot = on + off;
                    let idx = (t / slot) as usize;
                    let within = t - idx as f64 * slot;
                    match digits.chars().nth(idx).and_then(dtmf::frequencies) {
                        Some((r, c)) if within < *on => {
                            0.5 * ((TAU * r * within).sin() + (TAU * c * within).sin())
                        }
                        _ => 0.0,
                    }
                }
            };
            out.push((self.amplitude * v) as f32);
        }
        self.pos += n as u64;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(g: &mut Generator) -> Vec<f32> {
        let mut v = Vec::new();
        while g.fill(&mut v, 1000) > 0 {}
        v
    }

    #[test]
    fn lengths_levels_and_clicks() {
        let mut g = Generator::new(Signal::Tone { freq: 1000.0 }, 48_000, 0.5, 1.5).unwrap();
        let x = all(&mut g);
        assert_eq!(x.len(), 72_000);
        let peak = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!((peak - 0.5).abs() < 1e-3);
        let mut g = Generator::new(Signal::Clicks { interval: 0.25 }, 8_000, 1.0, 1.0).unwrap();
        let x = all(&mut g);
        let at: Vec<usize> = (0..x.len()).filter(|&i| x[i] != 0.0).collect();
        assert_eq!(at, [0, 2000, 4000, 6000]);
    }

    #[test]
    fn dtmf_is_detected_back() {
        let sig = Signal::Dtmf {
            digits: "0123456789*#ABCD".into(),
            on: 0.05,
            off: 0.05,
        };
        let mut g = Generator::new(sig, 16_000, 0.5, 0.0).unwrap();
        let x = all(&mut g);
        assert_eq!(x.len(), 16 * 1600);
        let mut d = dtmf::DtmfDetector::new(16_000);
        d.push(&x);
        assert_eq!(d.digits(), "0123456789*#ABCD");
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(Generator::new(Signal::Tone { freq: 30_000.0 }, 48_000, 0.5, 1.0).is_err());
        let sig = Signal::Dtmf {
            digits: "12x".into(),
            on: 0.1,
            off: 0.1,
        };
        assert!(Generator::new(sig, 48_000, 0.5, 1.0).is_err());
    }
}
