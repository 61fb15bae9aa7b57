//! Time-stretching for the jitter buffer: shortening decoded audio by whole pitch periods, so
//! the buffer can give back delay without dropping a 20 ms frame (a click and a lost piece of
//! a syllable). NetEQ calls this *accelerate*.
//!
//! A voiced sound repeats with its pitch period, and two neighbouring periods are nearly the
//! same: one can be taken out, cross-fading the period before into the one after, and the ear
//! hears the sound a little shorter at its own pitch. The period is the lag that maximises the
//! normalised correlation of the frame's first stretch with the next; only a clearly periodic
//! frame (correlation at least [`MIN_CORRELATION`]) is shortened, or a quiet one (below
//! [`QUIET_RMS`], where anything goes). Noise-like sound (fricatives, music) is left alone: the
//! buffer waits for a better frame.

/// Shortest period searched: 2.5 ms (400 Hz, above a high voice's pitch).
pub const MIN_PERIOD: usize = 120;
/// Longest period searched: 12.5 ms (80 Hz, below a low voice's pitch).
const MAX_PERIOD: usize = 600;
/// Correlation between neighbouring periods above which a frame counts as periodic.
pub const MIN_CORRELATION: f32 = 0.9;
/// Below this RMS (about -50 dBFS) a frame is quiet enough to shorten anywhere.
pub const QUIET_RMS: f32 = 0.003;

/// Removes up to `max` samples from `x`: one pitch period of a periodic frame, or up to half
/// of a quiet one, cross-fading across the cut. Returns how many were removed: 0 when the
/// frame is neither periodic nor quiet, or `max` is below the shortest period.
pub fn shorten(x: &mut Vec<f32>, max: usize) -> usize {
    let n = x.len();
    if max < MIN_PERIOD || n < 2 * MIN_PERIOD {
        return 0;
    }
    let rms = (x.iter().map(|v| v * v).sum::<f32>() / n as f32).sqrt();
    if rms < QUIET_RMS {
        // Near silence: one cut as long as allowed (the fade needs as much again).
        let cut = max.min(n / 2);
        splice(x, cut);
        return cut;
    }
    match best_period(x, max) {
        Some((period, corr)) if corr >= MIN_CORRELATION => {
            splice(x, period);
            period
        }
        _ => 0,
    }
}

/// The lag in `MIN_PERIOD..=min(max, MAX_PERIOD, len / 2)` whose two neighbouring windows
/// (each as long as the lag) correlate best, with that correlation.
fn best_period(x: &[f32], max: usize) -> Option<(usize, f32)> {
    let hi = max.min(MAX_PERIOD).min(x.len() / 2);
    let mut best: Option<(usize, f32)> = None;
    for t in MIN_PERIOD..=hi {
        let (mut ab, mut aa, mut bb) = (0.0f32, 0.0f32, 0.0f32);
        for (p, q) in x[..t].iter().zip(&x[t..2 * t]) {
            ab += p * q;
            aa += p * p;
            bb += q * q;
        }
        let c = if aa > 0.0 && bb > 0.0 {
            ab / (aa * bb).sqrt()
        } else {
            0.0
        };
        if best.is_none_or(|(_, bc)| c > bc) {
            best = Some((t, c));
        }
    }
    best
}

/// Drops `cut` samples from `x` (at least twice as long): its first `cut` samples fade from
/// `x[i]` into `x[i + cut]`, and `x[2 * cut..]` follows unchanged, so both joins are
/// continuous.
fn splice(x: &mut Vec<f32>, cut: usize) {
    for i in 0..cut {
        let w = (i as f32 + 0.5) / cut as f32;
        x[i] = x[i] * (1.0 - w) + x[i + cut] * w;
    }
    x.drain(cut..2 * cut);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f32::consts::TAU;

    /// A voiced-like wave: 200 Hz with harmonics (period 240 samples), peak about 0.3.
    fn voiced(n: usize, start: usize) -> Vec<f32> {
        (start..start + n)
            .map(|i| {
                let t = i as f32 / 48_000.0;
                0.3 * ((TAU * 200.0 * t).sin()
                    + 0.5 * (TAU * 400.0 * t).sin()
                    + 0.25 * (TAU * 600.0 * t + 1.0).sin())
                    / 1.75
            })
            .collect()
    }

    #[test]
    fn a_periodic_frame_loses_whole_periods_and_stays_the_same_wave() {
        let mut x = voiced(960, 0);
        let removed = shorten(&mut x, 960);
        assert!(removed > 0 && removed % 240 == 0, "{removed}");
        assert_eq!(x.len(), 960 - removed);
        // The same wave, shorter: it joins the next frame (sample 960 of the wave) seamlessly.
        let reference = voiced(960 - removed, 0);
        let err = x
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 1e-3, "off the wave by {err}");
    }

    #[test]
    fn noise_is_left_alone_and_near_silence_is_cut() {
        let mut seed = 5u32;
        let mut x: Vec<f32> = (0..960)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect();
        let before = x.clone();
        assert_eq!(shorten(&mut x, 960), 0);
        assert_eq!(x, before);
        let mut quiet = vec![0.0005f32; 960];
        assert_eq!(shorten(&mut quiet, 300), 300);
        assert_eq!(quiet.len(), 660);
        // Allowed less than the shortest period: nothing.
        let mut y = voiced(960, 0);
        assert_eq!(shorten(&mut y, 100), 0);
        assert_eq!(y.len(), 960);
    }
}
