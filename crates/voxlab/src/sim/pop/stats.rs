//! Distributions for the report: exact percentiles of what was measured (sorted copies; the
//! largest runs keep a few hundred thousand samples).

use serde::Serialize;

/// max / p50 / p99 (and the count) of a set of values.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Dist {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Dist {
    pub fn of(values: &[f64]) -> Dist {
        if values.is_empty() {
            return Dist::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((q * v.len() as f64) as usize).min(v.len() - 1)];
        Dist {
            n: v.len(),
            p50: round(at(0.5)),
            p99: round(at(0.99)),
            max: round(v[v.len() - 1]),
        }
    }
}

/// Three decimals: enough for seconds and ratios, and the JSON stays readable.
pub fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `ok / all` (1 when nothing was tried).
pub fn ratio(ok: u64, all: u64) -> f64 {
    if all == 0 {
        1.0
    } else {
        round_fine(ok as f64 / all as f64)
    }
}

/// Six decimals, for success ratios near 1.
pub fn round_fine(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// A standard normal draw (Box–Muller), for lognormal session and call lengths.
pub fn normal(rng: &mut rand::rngs::StdRng) -> f64 {
    use rand::Rng;
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// An exponential draw with mean `mean`.
pub fn exponential(rng: &mut rand::rngs::StdRng, mean: f64) -> f64 {
    use rand::Rng;
    -mean * rng.random::<f64>().max(1e-12).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let d = Dist::of(&v);
        assert_eq!((d.n, d.p50, d.p99, d.max), (100, 51.0, 100.0, 100.0));
        assert_eq!(Dist::of(&[]).n, 0);
    }
}
