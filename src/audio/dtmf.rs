//! DTMF (ITU-T Q.23) tones: the frequency table, and a detector, sans-IO.
//!
//! The detector runs a Goertzel filter at each of the eight exact DTMF frequencies over a 25 ms
//! Hann window every 5 ms. A window shows a digit when the strongest row and column tones (a)
//! each stand 10 dB above the other tones of their group, (b) are within 8 dB of each other
//! (twist), (c) carry at least 70% of the window's power (speech and noise do not), and (d) are
//! each above -46 dBFS. A digit is reported once it shows in 3 windows in a row (35 ms of tone,
//! so Q.24's 40 ms minimum is met) and may repeat after 3 windows without it (a 15 ms gap).

/// Row (low group) frequencies, Hz.
pub const ROWS: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
/// Column (high group) frequencies, Hz.
pub const COLS: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
/// The keypad, `KEYS[row][col]`.
pub const KEYS: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// The (row, column) frequencies of `digit`, if it is a DTMF digit (case-insensitive).
pub fn frequencies(digit: char) -> Option<(f64, f64)> {
    let d = digit.to_ascii_uppercase();
    KEYS.iter()
        .enumerate()
        .find_map(|(r, row)| row.iter().position(|&k| k == d).map(|c| (ROWS[r], COLS[c])))
}

const WINDOW_S: f64 = 0.025;
const HOP_S: f64 = 0.005;
const CONFIRM: u32 = 3;
const MIN_AMPLITUDE: f64 = 0.005;

/// A detected digit.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct DtmfEvent {
    /// The key.
    pub digit: char,
    /// Time of the first window that showed it, seconds from the start.
    pub at_s: f64,
}

/// Finds DTMF digits in mono audio. Feed [`DtmfDetector::push`]; read [`DtmfDetector::events`].
pub struct DtmfDetector {
    rate: f64,
    window: Vec<f64>,
    hop: usize,
    buf: Vec<f32>,
    /// Absolute index of `buf[0]`.
    base: u64,
    coeffs: [f64; 8],
    /// Σ window, to turn Goertzel magnitudes into amplitudes.
    wsum: f64,
    candidate: Option<char>,
    run: u32,
    active: Option<char>,
    events: Vec<DtmfEvent>,
}

impl DtmfDetector {
    /// A detector for audio at `rate` Hz.
    pub fn new(rate: u32) -> DtmfDetector {
        let n = (rate as f64 * WINDOW_S).round() as usize;
        let window: Vec<f64> = (0..n)
            .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos())
            .collect();
        let mut coeffs = [0.0; 8];
        for (c, f) in coeffs.iter_mut().zip(ROWS.iter().chain(COLS.iter())) {
            *c = 2.0 * (2.0 * std::f64::consts::PI * f / rate as f64).cos();
        }
        DtmfDetector {
            rate: rate as f64,
            wsum: window.iter().sum(),
            window,
            hop: ((rate as f64 * HOP_S).round() as usize).max(1),
            buf: Vec::new(),
            base: 0,
            coeffs,
            candidate: None,
            run: 0,
            active: None,
            events: Vec::new(),
        }
    }

    /// Feeds mono samples.
    pub fn push(&mut self, samples: &[f32]) {
        self.buf.extend_from_slice(samples);
        let n = self.window.len();
        let mut at = 0;
        while at + n <= self.buf.len() {
            let d = self.classify(&self.buf[at..at + n]);
            self.step(d, self.base + at as u64);
            at += self.hop;
        }
        self.buf.drain(..at);
        self.base += at as u64;
    }

    /// Digits found so far.
    pub fn events(&self) -> &[DtmfEvent] {
        &self.events
    }

    /// The digits found so far as a string.
    pub fn digits(&self) -> String {
        self.events.iter().map(|e| e.digit).collect()
    }

    fn step(&mut self, d: Option<char>, at: u64) {
        if d == self.candidate {
            self.run += 1;
        } else {
            self.candidate = d;
            self.run = 1;
        }
        if self.run == CONFIRM {
            match d {
                Some(digit) if self.active != Some(digit) => {
                    let first = at - (CONFIRM as u64 - 1) * self.hop as u64;
                    self.events.push(DtmfEvent {
                        digit,
                        at_s: first as f64 / self.rate,
                    });
                    self.active = Some(digit);
                }
                None => self.active = None,
                _ => {}
            }
        }
    }

    fn classify(&self, x: &[f32]) -> Option<char> {
        let mut amp = [0.0f64; 8];
        for (k, c) in self.coeffs.iter().enumerate() {
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for (&v, w) in x.iter().zip(&self.window) {
                let s = v as f64 * w + c * s1 - s2;
                s2 = s1;
                s1 = s;
            }
            let power = (s1 * s1 + s2 * s2 - c * s1 * s2).max(0.0);
            amp[k] = 2.0 * power.sqrt() / self.wsum;
        }
        let mean_sq = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
        let best = |group: &[f64]| -> (usize, f64, f64) {
            let (i, &a) = group
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap();
            let next = group
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, &v)| v)
                .fold(0.0, f64::max);
            (i, a, next)
        };
        let (r, ar, nr) = best(&amp[..4]);
        let (c, ac, nc) = best(&amp[4..]);
        let ten_db = 10f64.powf(10.0 / 20.0);
        let twist = ar / ac;
        let tone_power = (ar * ar + ac * ac) / 2.0;
        let ok = ar >= MIN_AMPLITUDE
            && ac >= MIN_AMPLITUDE
            && ar >= nr * ten_db
            && ac >= nc * ten_db
            && (10f64.powf(-8.0 / 20.0)..=10f64.powf(8.0 / 20.0)).contains(&twist)
            && tone_power >= 0.7 * mean_sq;
        ok.then(|| KEYS[r][c])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tones(rate: u32, digits: &str, on: f64, off: f64, noise: f32) -> Vec<f32> {
        let mut x = Vec::new();
        let mut seed = 12_345u32;
        for d in digits.chars() {
            let (fr, fc) = frequencies(d).unwrap();
            for i in 0..(rate as f64 * on) as usize {
                let t = i as f64 / rate as f64;
                let w = std::f64::consts::TAU;
                x.push((0.2 * (w * fr * t).sin() + 0.2 * (w * fc * t).sin()) as f32);
            }
            x.extend(std::iter::repeat_n(0.0, (rate as f64 * off) as usize));
        }
        for v in &mut x {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *v += noise * ((seed >> 8) as f32 / (1 << 24) as f32 - 0.5);
        }
        x
    }

    fn detect(rate: u32, x: &[f32], chunk: usize) -> String {
        let mut d = DtmfDetector::new(rate);
        for c in x.chunks(chunk) {
            d.push(c);
        }
        d.digits()
    }

    #[test]
    fn every_key_at_several_rates() {
        let all = "123A456B789C*0#D";
        for rate in [8_000, 16_000, 44_100, 48_000] {
            assert_eq!(detect(rate, &tones(rate, all, 0.07, 0.06, 0.0), 333), all);
        }
    }

    #[test]
    fn short_tones_repeats_and_noise() {
        // Q.24's minimum: 40 ms on, 40 ms off; a repeated key is two digits.
        assert_eq!(
            detect(48_000, &tones(48_000, "1155#", 0.04, 0.04, 0.02), 960),
            "1155#"
        );
        // Too short to be a digit.
        assert_eq!(detect(48_000, &tones(48_000, "9", 0.02, 0.1, 0.0), 960), "");
    }

    #[test]
    fn single_tones_music_and_noise_are_not_digits() {
        let rate = 48_000;
        let single: Vec<f32> = (0..rate)
            .map(|i| (0.4 * (std::f64::consts::TAU * 697.0 * i as f64 / rate as f64).sin()) as f32)
            .collect();
        assert_eq!(detect(rate, &single, 1000), "");
        let chord: Vec<f32> = (0..rate)
            .map(|i| {
                let t = i as f64 / rate as f64;
                [697.0, 1209.0, 440.0, 2000.0]
                    .iter()
                    .map(|f| 0.15 * (std::f64::consts::TAU * f * t).sin())
                    .sum::<f64>() as f32
            })
            .collect();
        assert_eq!(detect(rate, &chord, 1000), "");
        assert_eq!(detect(rate, &tones(rate, "", 0.0, 0.0, 0.0), 10), "");
    }
}
