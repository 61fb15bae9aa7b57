//! A radix-2 complex FFT, enough for cross-correlation (the analyzer's delay search).

use std::f64::consts::PI;

/// In-place FFT of `re`/`im` (length a power of two); `inverse` computes the unscaled inverse.
pub fn fft(re: &mut [f64], im: &mut [f64], inverse: bool) {
    let n = re.len();
    assert!(n.is_power_of_two() && im.len() == n);
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    let sign = if inverse { 1.0 } else { -1.0 };
    let mut len = 2;
    while len <= n {
        let ang = sign * 2.0 * PI / len as f64;
        let (wr, wi) = (ang.cos(), ang.sin());
        for start in (0..n).step_by(len) {
            let (mut cr, mut ci) = (1.0, 0.0);
            for k in 0..len / 2 {
                let (a, b) = (start + k, start + k + len / 2);
                let tr = re[b] * cr - im[b] * ci;
                let ti = re[b] * ci + im[b] * cr;
                re[b] = re[a] - tr;
                im[b] = im[a] - ti;
                re[a] += tr;
                im[a] += ti;
                (cr, ci) = (cr * wr - ci * wi, cr * wi + ci * wr);
            }
        }
        len <<= 1;
    }
}

/// Circular-free cross-correlation: `c[lag]` = Σ x[i + lag]·y[i] for lags in
/// `-(y.len()-1) ..= x.len()-1`, returned as (first lag, values).
pub fn xcorr(x: &[f32], y: &[f32]) -> (isize, Vec<f64>) {
    let n = (x.len() + y.len()).max(2).next_power_of_two();
    let (mut xr, mut xi) = (vec![0.0; n], vec![0.0; n]);
    let (mut yr, mut yi) = (vec![0.0; n], vec![0.0; n]);
    for (d, s) in xr.iter_mut().zip(x) {
        *d = *s as f64;
    }
    for (d, s) in yr.iter_mut().zip(y) {
        *d = *s as f64;
    }
    fft(&mut xr, &mut xi, false);
    fft(&mut yr, &mut yi, false);
    // X · conj(Y)
    for k in 0..n {
        let (a, b, c, d) = (xr[k], xi[k], yr[k], -yi[k]);
        xr[k] = a * c - b * d;
        xi[k] = a * d + b * c;
    }
    fft(&mut xr, &mut xi, true);
    let scale = 1.0 / n as f64;
    let first = -(y.len() as isize - 1);
    let out = (first..x.len() as isize)
        .map(|lag| xr[lag.rem_euclid(n as isize) as usize] * scale)
        .collect();
    (first, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xcorr_matches_the_direct_sum() {
        let x: Vec<f32> = (0..37).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
        let y: Vec<f32> = (0..11).map(|i| ((i * 104_729) % 5) as f32 - 2.0).collect();
        let (first, c) = xcorr(&x, &y);
        for (k, v) in c.iter().enumerate() {
            let lag = first + k as isize;
            let direct: f64 = (0..y.len() as isize)
                .filter(|i| (0..x.len() as isize).contains(&(i + lag)))
                .map(|i| x[(i + lag) as usize] as f64 * y[i as usize] as f64)
                .sum();
            assert!((v - direct).abs() < 1e-9, "lag {lag}: {v} vs {direct}");
        }
    }
}
