//! A call's quality as figures a person reads: loss before and after recovery, the share of
//! playout that was concealment, and an E-model estimate (ITU-T G.107) of what a listener
//! would score it.
//!
//! **The E-model**, in its planning form: `R = 93.2 - Id - Ie,eff` (G.107's default send and
//! receive conditions, no advantage factor), mapped to a mean opinion score by G.107's own
//! curve (4.41 at best: the scale is narrowband's, so a perfect wideband call also scores
//! 4.41). Delay impairment from the mouth-to-ear delay `Ta`: `Id = 0.024 Ta + 0.11 (Ta - 177.3)`
//! above 177.3 ms (the widely used fit of G.107's delay curve, Cole and Rosenbluth 2001).
//! Loss impairment: `Ie,eff = Ie + (95 - Ie) Ppl / (Ppl / BurstR + Bpl)` with `Ppl` the loss
//! the listener hears (what FEC did not rebuild, late packets included), random loss
//! (`BurstR` 1).
//!
//! G.113 lists no factors for Opus. We take those of G.711 with packet loss concealment
//! (`Ie` 0, `Bpl` 25.1): Opus at our rates is wideband and conceals at least as well, so the
//! estimate errs low, never high.
//!
//! `Ta` is what the call can see: half the measured round trip, the jitter buffer's delay,
//! one packet of packetisation and Opus's 6.5 ms look-ahead (sound-card buffers are not seen).

use serde::Serialize;

use super::MediaStats;

/// G.107's rating with default conditions and no impairments beyond the connection's.
const R_DEFAULT: f64 = 93.2;
/// G.113's equipment impairment of G.711 with PLC (our stand-in for Opus: see above).
const IE: f64 = 0.0;
/// G.113's packet-loss robustness of G.711 with PLC.
const BPL: f64 = 25.1;
/// Opus's encoder look-ahead, ms.
const LOOKAHEAD_MS: f64 = 6.5;

/// A call's quality so far.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Quality {
    /// Packets lost on the way, % of those the peer sent (before recovery).
    pub loss_percent: f64,
    /// Playout slots lost for good (concealed: FEC could not rebuild them, or they came too
    /// late), % of the slots played (after recovery).
    pub unrecovered_percent: f64,
    /// Playout that was concealment (lost slots and waiting for late packets), % of frames.
    pub concealed_percent: f64,
    /// Mouth-to-ear delay as far as the call can see it, ms.
    pub delay_ms: f64,
    /// E-model transmission rating, 0-93.2.
    pub r_factor: f64,
    /// Mean opinion score from `r_factor`, 1-4.41.
    pub mos: f64,
}

impl Quality {
    /// The estimate from a session's statistics.
    pub fn of(s: &MediaStats) -> Quality {
        let pct = |part: f64, whole: f64| {
            if whole > 0.0 {
                100.0 * part / whole
            } else {
                0.0
            }
        };
        let p = &s.playout;
        let slots = (p.normal + p.fec + p.plc + p.accelerate) as f64;
        let unrecovered = pct(p.plc as f64, slots);
        let delay_ms = s.rtt_ms.unwrap_or(0.0) / 2.0
            + p.delay_ms.max(p.target_delay_ms)
            + p.packet_ms
            + LOOKAHEAD_MS;
        let r = r_factor(delay_ms, unrecovered);
        Quality {
            loss_percent: pct(s.received.lost.max(0) as f64, s.received.expected as f64),
            unrecovered_percent: unrecovered,
            concealed_percent: pct((p.plc + p.expand) as f64, slots + p.expand as f64),
            delay_ms,
            r_factor: r,
            mos: mos(r),
        }
    }
}

/// The E-model rating for a mouth-to-ear delay (ms) and a heard random loss (%).
pub fn r_factor(delay_ms: f64, loss_percent: f64) -> f64 {
    let ta = delay_ms.max(0.0);
    let id = 0.024 * ta + if ta > 177.3 { 0.11 * (ta - 177.3) } else { 0.0 };
    let ppl = loss_percent.clamp(0.0, 100.0);
    let ie_eff = IE + (95.0 - IE) * ppl / (ppl + BPL);
    (R_DEFAULT - id - ie_eff).max(0.0)
}

/// G.107's mapping of a rating to a mean opinion score.
pub fn mos(r: f64) -> f64 {
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7e-6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// G.107's curve at the ratings its figure B.1 marks.
    #[test]
    fn the_rating_maps_to_g107s_opinion_scores() {
        for (r, want) in [
            (93.2, 4.41),
            (90.0, 4.34),
            (80.0, 4.02),
            (70.0, 3.60),
            (60.0, 3.10),
            (50.0, 2.58),
        ] {
            assert!((mos(r) - want).abs() < 0.01, "R {r}: {:.3}", mos(r));
        }
        assert_eq!((mos(-3.0), mos(120.0)), (1.0, 4.5));
    }

    #[test]
    fn delay_and_heard_loss_lower_the_rating() {
        assert!((r_factor(0.0, 0.0) - 93.2).abs() < 1e-9);
        // 150 ms costs 3.6; past 177.3 ms the steeper term adds on.
        assert!((r_factor(150.0, 0.0) - 89.6).abs() < 1e-9);
        assert!((r_factor(277.3, 0.0) - (93.2 - 0.024 * 277.3 - 11.0)).abs() < 1e-9);
        // 2 % random loss with G.711+PLC's robustness: Ie,eff = 95 * 2 / 27.1 = 7.01.
        assert!((r_factor(0.0, 2.0) - (93.2 - 7.011)).abs() < 1e-3);
        assert!(r_factor(100.0, 10.0) < r_factor(100.0, 5.0));
        assert_eq!(r_factor(10_000.0, 100.0), 0.0);
    }

    #[test]
    fn a_session_s_figures_come_from_its_counters() {
        let mut s = MediaStats::default();
        s.received.expected = 1000;
        s.received.lost = 50;
        s.playout.normal = 940;
        s.playout.fec = 40;
        s.playout.plc = 20;
        s.playout.expand = 10;
        s.playout.delay_ms = 15.0;
        s.playout.packet_ms = 20.0;
        s.rtt_ms = Some(100.0);
        let q = Quality::of(&s);
        assert!((q.loss_percent - 5.0).abs() < 1e-9);
        assert!((q.unrecovered_percent - 2.0).abs() < 1e-9);
        assert!((q.concealed_percent - 30.0 / 1010.0 * 100.0).abs() < 1e-9);
        assert!((q.delay_ms - (50.0 + 15.0 + 20.0 + 6.5)).abs() < 1e-9);
        assert!((q.r_factor - r_factor(91.5, 2.0)).abs() < 1e-9);
        assert!(q.mos > 3.9 && q.mos < 4.3, "{q:?}");
        // Nothing played yet: no loss, and the estimate is the delay's alone.
        let q = Quality::of(&MediaStats::default());
        assert_eq!((q.loss_percent, q.unrecovered_percent), (0.0, 0.0));
    }
}
