//! Send-rate adaptation from the peer's receiver reports: a call through a narrow link lowers
//! its rate instead of drowning in loss (in the spirit of WebRTC's loss-based controller).
//!
//! The controller works in bit/s on the wire (IP and UDP headers, our header, the AEAD tag and
//! Opus, and a link layer's framing), because that is what a bottleneck carries: at 20 ms packets
//! the overhead alone is 28 kbit/s (70 bytes × 50 packets/s over IPv4 and Ethernet), so a 32 kbit/s link cannot carry 20 ms
//! packets of any useful Opus rate, and the controller lengthens frames (40, then 60 ms) before
//! it starves the codec.
//!
//! Each report (one a second) gives the loss of the last interval and a round trip. Loss alone
//! does not say the link is too narrow: random loss (a radio link) stays whatever the rate, and
//! an outage loses everything for a while; cutting the rate then only costs quality. A full
//! bottleneck queue also delays every packet, so the controller calls loss above [`LOW_LOSS`]
//! congestion when it comes with a round trip [`QUEUE_DELAY`] above the least seen. A call that
//! starts into a full queue never saw the unloaded round trip, so heavy loss
//! ([`SEVERE_LOSS`]) on two reports in a row counts too (an outage's edges are separated by its
//! all-lost reports, which count for nothing). Then the
//! link delivered about `sent × (1 − loss)`, and the target drops to a margin below that at
//! once (one report, not a slow multiplicative walk: a queue that overflows every second is
//! audible), and that delivered rate is remembered. Below [`LOW_LOSS`], the target grows by
//! [`GROWTH`] per report up to the configured maximum, but not above [`PROBE_CAP`] of the rate
//! that last overflowed until [`REPROBE_AFTER`] has passed without a cut (a few packets of
//! headroom: a variable-rate codec's loud frames overflow a short queue kept full on average),
//! and then only by [`PROBE_GROWTH`] near it; in between it holds. No growth for
//! [`HOLD_AFTER_DECREASE`] after a decrease.

use std::time::{Duration, Instant};

use super::codec::FrameDuration;

/// Bytes around each Opus payload on the wire over IPv4: Ethernet (14) + IP (20) + UDP (8) + our
/// header (12) + AEAD tag (16). (IPv6 adds 20, a relay's ChannelData 4: the margin below
/// absorbs them.) A link's rate counts its own framing: without Ethernet's 14 bytes the
/// controller took a 32 kbit/s link's 40 ms packets for 2.8 kbit/s less than they were.
pub const WIRE_OVERHEAD: u32 = 70;
/// Round-trip growth over the least seen that means a queue is building.
pub const QUEUE_DELAY: Duration = Duration::from_millis(50);
/// Loss taken for congestion when two reports in a row show it, whatever the round trip.
pub const SEVERE_LOSS: f64 = 0.25;
/// Growth per clean report near the rate that last overflowed.
pub const PROBE_GROWTH: f64 = 1.01;
/// Share of the rate that last overflowed that clean reports grow the target to, until
/// [`REPROBE_AFTER`].
pub const PROBE_CAP: f64 = 0.9;
/// Time without a cut after which the target may probe above [`PROBE_CAP`] again (the link may
/// have widened).
pub const REPROBE_AFTER: Duration = Duration::from_secs(30);
/// Loss below which the rate may grow.
pub const LOW_LOSS: f64 = 0.02;
/// Growth per clean report.
pub const GROWTH: f64 = 1.08;
/// Share of the delivered rate aimed at after a loss: room for the queue to drain.
pub const MARGIN: f64 = 0.85;
/// No growth this long after a decrease (the queue drains, the next report is fair).
pub const HOLD_AFTER_DECREASE: Duration = Duration::from_secs(2);
/// No second decrease this soon after one: the next report still describes packets sent
/// before the cut (a report interval plus a round trip).
pub const DECREASE_GAP: Duration = Duration::from_millis(1500);
/// Loss at or above which an interval says nothing about the link's rate: it was down (an
/// outage, a path being switched), and cutting the rate would only slow the recovery.
pub const OUTAGE_LOSS: f64 = 0.9;
/// Round-trip growth that means a queue is filling even without loss (a deep buffer): the
/// target is cut by [`DELAY_CUT`].
pub const DEEP_QUEUE: Duration = Duration::from_millis(100);
pub const DELAY_CUT: f64 = 0.9;
/// Loss (the smoothed estimate FEC is sized for) from which the Opus rate is raised by
/// [`FEC_BOOST`]: libopus pays for in-band FEC out of the bitrate it is given, so at the
/// configured rate FEC coarsens the speech it protects. Measured offline on the bench's speech
/// at 5 % random loss (PESQ-WB of the FEC decode, three loss traces): 32 kbit/s 2.91-3.21,
/// 48 kbit/s 3.45-3.78; raising the expected loss instead (10-30 %) at 32 kbit/s gained
/// nothing.
pub const FEC_BOOST_LOSS: f64 = 0.02;
/// Opus rate under loss, over the configured one, while the path has never overflowed (a
/// narrow link's loss is the queue's, and more rate would only lose more).
pub const FEC_BOOST: f64 = 1.5;
/// Least Opus rate worth sending, bit/s: below it speech is not intelligible.
pub const MIN_OPUS: u32 = 6_000;

/// What the encoder should use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateChoice {
    pub frame: FrameDuration,
    /// Opus bitrate, bit/s.
    pub bitrate: u32,
}

/// The rate controller of one call direction.
#[derive(Debug)]
pub struct RateControl {
    /// The most Opus rate wanted (the configured bitrate) and the frame it is sent in.
    max_opus: u32,
    preferred: FrameDuration,
    /// Target on the wire, bit/s.
    target: f64,
    last_decrease: Option<Instant>,
    /// What the link delivered when it last overflowed, bit/s on the wire.
    overflowed_at: Option<f64>,
    min_rtt: Option<Duration>,
    /// Reports in a row with loss in [`SEVERE_LOSS`]..[`OUTAGE_LOSS`].
    severe: u32,
}

fn wire(opus: u32, frame: FrameDuration) -> f64 {
    let per_second = 1000.0 / frame.millis() as f64;
    opus as f64 + f64::from(WIRE_OVERHEAD * 8) * per_second
}

impl RateControl {
    /// Starts at the configured bitrate and frame.
    pub fn new(opus: u32, frame: FrameDuration) -> RateControl {
        RateControl {
            max_opus: opus,
            preferred: frame,
            target: wire(opus, frame),
            last_decrease: None,
            overflowed_at: None,
            min_rtt: None,
            severe: 0,
        }
    }

    /// Whether the path ever showed itself too narrow (a queue overflowing).
    pub fn overflowed(&self) -> bool {
        self.overflowed_at.is_some()
    }

    /// The target on the wire, bit/s.
    pub fn target(&self) -> f64 {
        self.target
    }

    /// A round trip measured elsewhere on the same path (ICE's checks, before media loaded it).
    pub fn note_rtt(&mut self, rtt: Duration) {
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
    }

    /// Whether a cut was made within [`DECREASE_GAP`]: the loss reported meanwhile is the
    /// queue's, which the cut answers.
    pub fn cut_recently(&self, now: Instant) -> bool {
        self.last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < DECREASE_GAP)
    }

    /// A report: `loss` (0..=1) in the interval in which we sent `sent_wire_bps` on average,
    /// and the latest round trip. Returns the encoder settings to use.
    pub fn on_report(
        &mut self,
        now: Instant,
        loss: f64,
        sent_wire_bps: f64,
        rtt: Option<Duration>,
    ) -> RateChoice {
        if let Some(r) = rtt {
            self.min_rtt = Some(self.min_rtt.map_or(r, |m| m.min(r)));
        }
        let grown = |by: Duration| matches!((rtt, self.min_rtt), (Some(r), Some(m)) if r >= m + by);
        // A queue that overflows a little (probing just above the link) loses a few percent:
        // with the delay to show it is a queue, that is enough.
        self.severe = if (SEVERE_LOSS..OUTAGE_LOSS).contains(&loss) {
            self.severe + 1
        } else {
            0
        };
        let congested =
            loss < OUTAGE_LOSS && ((loss > LOW_LOSS && grown(QUEUE_DELAY)) || self.severe >= 2);
        let ceiling = wire(self.max_opus, self.preferred);
        let may_cut = self
            .last_decrease
            .is_none_or(|t| now.saturating_duration_since(t) >= DECREASE_GAP);
        if (congested || grown(DEEP_QUEUE)) && !may_cut {
            // Still the cut's own aftermath: wait for a report about the new rate.
        } else if congested && sent_wire_bps > 0.0 {
            let delivered = sent_wire_bps * (1.0 - loss);
            self.overflowed_at = Some(delivered);
            // At most quartered per report: a loss figure from a short interval can mislead.
            // (Halving left a call's first cut through the bench's 32 kbit/s link at 31.5
            // kbit/s, 98 % of it, where 4 % loss a second went on and a round trip sampled
            // between the queue's peaks did not show it.)
            let aim = (delivered * MARGIN).max(self.target * 0.25);
            if aim < self.target {
                self.target = aim;
                self.last_decrease = Some(now);
            }
        } else if loss < OUTAGE_LOSS && grown(DEEP_QUEUE) {
            self.target *= DELAY_CUT;
            self.last_decrease = Some(now);
        } else if loss < LOW_LOSS
            && self
                .last_decrease
                .is_none_or(|t| now.saturating_duration_since(t) >= HOLD_AFTER_DECREASE)
        {
            let reprobe = self
                .last_decrease
                .is_none_or(|t| now.saturating_duration_since(t) >= REPROBE_AFTER);
            let mut grown = self.target * GROWTH;
            if let Some(o) = self.overflowed_at {
                if !reprobe {
                    grown = grown.min(PROBE_CAP * o).max(self.target);
                } else if grown > 0.95 * o {
                    grown = self.target * PROBE_GROWTH;
                }
            }
            self.target = grown.min(ceiling);
        }
        let floor = wire(MIN_OPUS, FrameDuration::Ms60);
        self.target = self.target.max(floor);
        self.choice()
    }

    /// The shortest frame (from the preferred one up to 60 ms) that leaves Opus a useful rate
    /// within the target, and that rate.
    pub fn choice(&self) -> RateChoice {
        let frames = [
            FrameDuration::Ms10,
            FrameDuration::Ms20,
            FrameDuration::Ms40,
            FrameDuration::Ms60,
        ];
        for frame in frames
            .into_iter()
            .filter(|f| f.millis() >= self.preferred.millis())
        {
            let overhead = wire(0, frame);
            let opus = (self.target - overhead).min(f64::from(self.max_opus));
            // Shorter frames need more Opus rate to be worth their overhead: 24 kbit/s at 10
            // ms, 16 at 20, 12 at 40, the floor at 60.
            let need = match frame.millis() {
                0..=10 => 24_000,
                11..=20 => 16_000,
                21..=40 => 12_000,
                _ => MIN_OPUS,
            };
            if opus >= f64::from(need.min(self.max_opus)) {
                return RateChoice {
                    frame,
                    bitrate: opus.round() as u32,
                };
            }
        }
        RateChoice {
            frame: FrameDuration::Ms60,
            bitrate: MIN_OPUS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 32 kbit/s link under a 32 kbit/s Opus call at 20 ms (60 kbit/s on the wire): one
    /// lossy report brings the wire rate under the link (at most quartering it), with longer
    /// frames; the next overflow's delivered rate sets the target a margin below it, and clean
    /// reports grow it only to [`PROBE_CAP`] of that until [`REPROBE_AFTER`], then back to the
    /// configured rate.
    #[test]
    fn a_narrow_link_lowers_the_rate_at_once_and_clean_reports_raise_it() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut rc = RateControl::new(32_000, FrameDuration::Ms20);
        assert!((rc.target() - 60_000.0).abs() < 1.0, "{}", rc.target());
        // The link delivered 32 of the 60 kbit/s sent: 47% loss.
        let ms = Duration::from_millis;
        rc.on_report(t0, 0.0, 60_000.0, Some(ms(40)));
        let c = rc.on_report(t0 + secs(1), 1.0 - 32.0 / 60.0, 60_000.0, Some(ms(140)));
        assert!(rc.target() <= 32_000.0, "{}", rc.target());
        // 20 ms packets' overhead alone would take 28 of the 30 kbit/s: longer frames.
        assert!(c.frame.millis() >= 40, "{c:?}");
        assert!(wire(c.bitrate, c.frame) <= 32_000.0, "{c:?}");
        assert!(c.bitrate >= MIN_OPUS, "{c:?}");
        assert!(rc.target() <= 32_000.0 * MARGIN + 1.0, "{}", rc.target());
        // Clean reports within the hold time change nothing; later ones grow the rate, to a
        // few packets' headroom below the link until the reprobe time.
        let held = rc.on_report(t0 + secs(2), 0.0, 27_000.0, None);
        assert_eq!(held, c);
        for s in 3..31 {
            rc.on_report(t0 + secs(s), 0.0, rc.target(), None);
            assert!(rc.target() <= 32_000.0 * PROBE_CAP + 1.0, "{}", rc.target());
        }
        assert!(rc.target() > 32_000.0 * MARGIN + 1.0, "{}", rc.target());
        let mut last = c;
        for s in 31..400 {
            last = rc.on_report(t0 + secs(s), 0.0, rc.target(), None);
        }
        assert_eq!(
            last,
            RateChoice {
                frame: FrameDuration::Ms20,
                bitrate: 32_000
            }
        );
    }

    /// Loss without queueing delay is not congestion (random loss stays whatever the rate);
    /// the same loss with a grown round trip is.
    #[test]
    fn random_loss_keeps_the_rate_and_queueing_loss_cuts_it() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut rc = RateControl::new(32_000, FrameDuration::Ms20);
        let before = rc.target();
        for s in 0..10 {
            rc.on_report(t0 + Duration::from_secs(s), 0.15, before, Some(ms(50)));
        }
        assert_eq!(
            rc.target(),
            before,
            "random 15% loss is FEC's job, not a rate cut"
        );
        rc.on_report(t0 + Duration::from_secs(10), 0.15, before, Some(ms(130)));
        assert!(rc.target() < before * 0.8, "{}", rc.target());
    }

    /// An outage (everything lost) is not a narrow link; a deep queue without loss is.
    #[test]
    fn an_outage_keeps_the_rate_and_a_deep_queue_lowers_it() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut rc = RateControl::new(32_000, FrameDuration::Ms20);
        let before = rc.target();
        rc.on_report(t0, 0.0, before, Some(ms(40)));
        rc.on_report(t0 + ms(1000), 1.0, before, None);
        assert_eq!(rc.target(), before);
        rc.on_report(t0 + ms(2000), 0.0, before, Some(ms(150)));
        assert!(
            (rc.target() - before * DELAY_CUT).abs() < 1.0,
            "{}",
            rc.target()
        );
    }

    /// The configured frame is kept on a good link, 10 ms included.
    #[test]
    fn a_good_link_keeps_the_configured_frame_and_rate() {
        for frame in [
            FrameDuration::Ms10,
            FrameDuration::Ms20,
            FrameDuration::Ms60,
        ] {
            let mut rc = RateControl::new(32_000, frame);
            let c = rc.on_report(Instant::now(), 0.0, 0.0, None);
            assert_eq!(
                c,
                RateChoice {
                    frame,
                    bitrate: 32_000
                }
            );
        }
    }

    #[test]
    fn moderate_loss_holds_and_the_rate_never_falls_below_the_floor() {
        let t0 = Instant::now();
        let mut rc = RateControl::new(32_000, FrameDuration::Ms20);
        let before = rc.target();
        rc.on_report(t0, 0.05, before, None);
        assert_eq!(rc.target(), before, "5% loss is FEC's job, not a rate cut");
        rc.on_report(t0, 0.0, before, Some(Duration::from_millis(40)));
        for s in 1..20 {
            let rtt = Some(Duration::from_millis(200));
            rc.on_report(t0 + Duration::from_secs(s), 0.8, 1_000.0, rtt);
        }
        let c = rc.choice();
        assert_eq!(
            c,
            RateChoice {
                frame: FrameDuration::Ms60,
                bitrate: MIN_OPUS
            }
        );
    }
}
