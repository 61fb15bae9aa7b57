//! Cross-correlation of two long signals in blocks, in bounded memory: the analyzer's delay
//! search. Neither signal is held whole; blocks are read on demand through [`Samples`] (a slice,
//! or a spool file for recordings too long to keep in memory).
//!
//! Both signals are cut into blocks of `B` samples, each zero-padded to `2B`. The linear
//! correlation of block `m` of `x` with block `j` of `y` covers the lags `(m-j)·B ± (B-1)`, and
//! every pair with the same `e = m - j` lands on the same lags, so their spectra are summed
//! first and inverted once per `e` (the correlation theorem is linear). Adjacent `e` overlap by
//! half a window: lags `[(e-1)·B, e·B)` are `r(e-1)`'s upper half plus `r(e)`'s lower half, and
//! are final once `r(e)` is known. Work is `O(N·M/B · log B)`; memory is a few `2B` buffers.
//! With a lag limit only the `e` that reach it are computed.

use std::io;

use realfft::RealFftPlanner;
use realfft::num_complex::Complex;

/// The largest block: FFTs of 2^21 points, about a dozen 16 MiB buffers. Longer signals take
/// more blocks, not more memory.
pub const MAX_BLOCK: usize = 1 << 20;

/// A mono signal that can be read at any offset.
pub trait Samples {
    /// Length in samples.
    fn len(&self) -> usize;
    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `out` with the samples from `start`, zeros past the end.
    fn read_at(&mut self, start: usize, out: &mut [f32]) -> io::Result<()>;
}

impl Samples for &[f32] {
    fn len(&self) -> usize {
        <[f32]>::len(self)
    }
    fn read_at(&mut self, start: usize, out: &mut [f32]) -> io::Result<()> {
        let have = self.get(start..).unwrap_or(&[]);
        let n = have.len().min(out.len());
        out[..n].copy_from_slice(&have[..n]);
        out[n..].fill(0.0);
        Ok(())
    }
}

/// The lag (of `x` against `y`) with the highest correlation `Σ x[i + lag]·y[i]`, among lags
/// `-(y.len()-1) ..= x.len()-1` within `max_lag` each way if given; on ties the latest lag, as
/// the whole-signal search did. `block` (a power of two) caps the block length (tests use small
/// ones to exercise many blocks). `None` when either signal is empty.
pub fn best_lag(
    x: &mut dyn Samples,
    y: &mut dyn Samples,
    max_lag: Option<usize>,
    block: usize,
) -> io::Result<Option<isize>> {
    let (n, m) = (x.len(), y.len());
    if n == 0 || m == 0 {
        return Ok(None);
    }
    let b = n.max(m).next_power_of_two().min(block.next_power_of_two());
    let (bx, by) = (n.div_ceil(b) as isize, m.div_ceil(b) as isize);
    let bi = b as isize;
    // Lags that exist and are allowed.
    let limit = max_lag.map_or(isize::MAX, |l| l.min(isize::MAX as usize) as isize);
    let lag_lo = (-(m as isize - 1)).max(-limit);
    let lag_hi = (n as isize - 1).min(limit);
    if lag_lo > lag_hi {
        return Ok(None);
    }
    // r(e) holds lags (e-1)·B+1 ..= (e+1)·B-1; lag block [(k-1)·B, k·B) needs r(k-1) and r(k).
    let e_lo = (-(by - 1)).max(lag_lo.div_euclid(bi));
    let e_hi = (bx - 1).min(lag_hi.div_euclid(bi) + 1);

    let mut planner = RealFftPlanner::<f64>::new();
    let fwd = planner.plan_fft_forward(2 * b);
    let inv = planner.plan_fft_inverse(2 * b);
    let mut time = fwd.make_input_vec();
    let mut spec_x = fwd.make_output_vec();
    let mut spec_y = fwd.make_output_vec();
    let mut acc = fwd.make_output_vec();
    let mut scratch = vec![Complex::default(); fwd.get_scratch_len().max(inv.get_scratch_len())];
    let mut read = vec![0f32; b];
    // The lower half of r(e-1): lags [(e-1)·B, e·B) before r(e)'s share is added.
    let mut lower = vec![0f64; b];
    let scale = 1.0 / (2 * b) as f64;
    let mut best: Option<(isize, f64)> = None;

    let mut spectrum = |s: &mut dyn Samples,
                        k: isize,
                        time: &mut Vec<f64>,
                        out: &mut Vec<Complex<f64>>,
                        scratch: &mut Vec<Complex<f64>>|
     -> io::Result<()> {
        s.read_at(k as usize * b, &mut read)?;
        for (d, v) in time.iter_mut().zip(&read) {
            *d = *v as f64;
        }
        time[b..].fill(0.0);
        fwd.process_with_scratch(time, out, scratch)
            .map_err(io::Error::other)
    };

    for e in e_lo..=e_hi + 1 {
        // r(e), or zeros past the last e that has block pairs.
        if e <= e_hi {
            acc.fill(Complex::default());
            let j_lo = 0.max(-e);
            let j_hi = by.min(bx - e);
            for j in j_lo..j_hi {
                spectrum(x, j + e, &mut time, &mut spec_x, &mut scratch)?;
                spectrum(y, j, &mut time, &mut spec_y, &mut scratch)?;
                for ((a, p), q) in acc.iter_mut().zip(&spec_x).zip(&spec_y) {
                    *a += p * q.conj();
                }
            }
            // DC and Nyquist of a real signal's spectrum are real; rounding must not say
            // otherwise to the inverse transform.
            acc[0].im = 0.0;
            acc[b].im = 0.0;
            inv.process_with_scratch(&mut acc, &mut time, &mut scratch)
                .map_err(io::Error::other)?;
        } else {
            time.fill(0.0);
        }
        // Lags [(e-1)·B, e·B) are now final. (At e_lo, r(e_lo - 1) is zero: no block pairs,
        // or lags below the limit, which the range check drops.)
        let base = (e - 1) * bi;
        for (i, l) in lower.iter().enumerate() {
            let lag = base + i as isize;
            if lag < lag_lo || lag > lag_hi {
                continue;
            }
            let v = (l + time[b + i]) * scale;
            if best.is_none_or(|(_, bv)| v >= bv) {
                best = Some((lag, v));
            }
        }
        lower.copy_from_slice(&time[..b]);
    }
    Ok(best.map(|(lag, _)| lag))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(x: &[f32], y: &[f32], lag: isize) -> f64 {
        (0..y.len() as isize)
            .filter(|i| (0..x.len() as isize).contains(&(i + lag)))
            .map(|i| x[(i + lag) as usize] as f64 * y[i as usize] as f64)
            .sum()
    }

    /// The brute-force answer: the latest lag of the maximum.
    fn brute(x: &[f32], y: &[f32], max_lag: Option<usize>) -> isize {
        let lim = max_lag.map_or(isize::MAX, |l| l as isize);
        let mut best = (0, f64::MIN);
        for lag in -(y.len() as isize - 1)..x.len() as isize {
            if lag.abs() > lim {
                continue;
            }
            let v = direct(x, y, lag);
            if v >= best.1 {
                best = (lag, v);
            }
        }
        best.0
    }

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
    fn every_block_size_finds_what_brute_force_finds() {
        // Unequal lengths, lengths that are not multiples of the block, limits inside and
        // across block boundaries, unrelated noise (where the peak is anywhere).
        for (n, m, seed) in [(300, 170, 1), (170, 300, 2), (257, 257, 3), (1, 40, 4)] {
            let x = noise(n, seed);
            let y = noise(m, seed + 10);
            for lim in [None, Some(0), Some(5), Some(64), Some(1000)] {
                let want = brute(&x, &y, lim);
                for block in [1, 2, 16, 64, 1024] {
                    let got = best_lag(&mut &x[..], &mut &y[..], lim, block).unwrap();
                    assert_eq!(got, Some(want), "n {n} m {m} lim {lim:?} block {block}");
                }
            }
        }
    }

    #[test]
    fn empty_signals_have_no_lag() {
        let x = noise(10, 1);
        assert_eq!(best_lag(&mut &x[..], &mut &[][..], None, 8).unwrap(), None);
        assert_eq!(best_lag(&mut &[][..], &mut &x[..], None, 8).unwrap(), None);
    }
}
