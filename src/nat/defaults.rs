//! Every timer and bound natprobe uses, in one place, with how they relate.
//!
//! # One rule for every "no"
//!
//! Negative answers ("no response came back") are the slow part of NAT discovery and the only
//! kind that can be wrong: a lost response looks like a filter, an expired binding or a blocked
//! path. Every one of them is decided by the same rule, [`silence_is_conclusive`]: after `n`
//! unanswered tries, each of which would have been answered with probability `q` if the answer
//! were "yes", the chance that all were merely lost is `(1 − q)ⁿ`, and the answer is "no" only
//! once that is at most [`Timing::false_negative`] (10⁻⁴). What differs is where `q` comes from:
//!
//! - **With evidence.** The filtering and hairpinning tests run in rounds next to a control
//!   request to the same server, and each binding-lifetime probe goes with a control too; the
//!   controls answered give `q`, taken not at face value (a lucky run of answers would overstate
//!   it) but at the lower end of its Wilson score interval, two standard deviations down
//!   ([`answer_rate_lower_bound`]). The tries needed therefore grow with the loss actually seen:
//!   9 on a clean path, about 20 at 20 % loss each way, 55 to 60 at 50 %, up to
//!   [`Timing::max_rounds`] (then null).
//!   Because the rule is re-checked after every round, the chance of a wrong "no" is not simply
//!   10⁻⁴ per look; computed exactly over all looks (`wrong_no_chance` in the tests below) it is
//!   at most 2.3·10⁻⁵ per question, whatever the loss.
//! - **Without evidence.** When no server has answered at all, there is no control and no loss
//!   to reason from, so `q` is a stated worst case: [`Timing::worst_loss`] (50 %) each way, so a
//!   request and its answer both get through with `q = (1 − 0.5)² = 0.25`. Then `0.75ⁿ ≤ 10⁻⁴`
//!   needs `n ≥ ln 10⁻⁴ / ln 0.75 = 32.02`, so [`Timing::blocked_probes`] = 33 requests
//!   (`0.75³³ = 7.5·10⁻⁵`). A server counts as unreachable once that many of its requests have
//!   gone unanswered for [`Timing::answer_wait`] each, and UDP as blocked when no server answered.
//!
//! # UDP blocked within the window, by rate, not by waiting
//!
//! The 33 requests to a silent server go at a fixed interval through the window
//! [`Timing::blocked_budget`] (1.5 s; `--blocked-after`, at most 3 s), the last one
//! [`Timing::answer_wait`] (300 ms, the longest round trip waited for) before the window ends:
//! [`Timing::discovery_interval`] = (1.5 s − 300 ms) / 32 = 37.5 ms. So "UDP blocked" is said
//! at 1.5 s (plus [`Timing::stagger`] when several servers are given), as before, but on 33
//! requests instead of 14 at 100 ms (`0.75¹⁴ = 1.8 %`: at 50 % loss about one probe in 55 called
//! a reachable NAT blocked). The interval has a floor, [`MIN_DISCOVERY_INTERVAL`], which sets the
//! shortest window the CLI accepts ([`Timing::min_blocked_budget`], 0.62 s).
//!
//! This departs from RFC 8489 §6.2.1, which asks a client to space new transactions to a server
//! by an RTO and keep at most ten outstanding: a silent server gets 33 Binding requests of 28
//! bytes in 1.2 s (about 1.8 kB with headers, 12 kbit/s, once per run), paced like ICE's
//! connectivity checks (RFC 8445 §14.2: one every Ta = 50 ms by default, never more often than
//! every 5 ms). A server that answers is sampled at its measured RTO from then on.
//!
//! # Timers from the measured path
//!
//! Once a server answers, every later timer derives from the measured round trip (RFC
//! 6298-style SRTT + 4·RTTVAR), bounded below by [`Timing::rto_floor`] — the deliberate,
//! documented deviation from RFC 8489's fixed 500 ms initial RTO (see [`crate::stun::timers`]).
//! A round or a lifetime try counts only once [`Timing::settle_rtos`] RTOs have passed since it
//! was sent, so a late answer (a busy host, a queue) is not mistaken for a missing one. Tries
//! of one lifetime probe point go a quarter SRTT apart (at least the RTO floor) rather than an
//! RTO apart: the 9 to 20 a "no" needs then span under a second even at 20 % loss and 150 ms RTT,
//! which keeps the lifetime range narrow.

use std::time::Duration;

/// The shortest interval between requests to a silent server (see the module docs).
pub const MIN_DISCOVERY_INTERVAL: Duration = Duration::from_millis(10);

/// Timing parameters of a probe. `Default` is what the CLI uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// How long the first server gets alone before the others are contacted too. Contacting the
    /// others later keeps the RFC 5780 server's alternate address untouched before the filtering
    /// tests when the user lists it as a server of its own.
    pub stagger: Duration,
    /// The window in which a server that never answers gets its [`Timing::blocked_probes`]
    /// requests; when no server answered within it, UDP is blocked.
    pub blocked_budget: Duration,
    /// The longest round trip a request to a silent server is waited for before its silence
    /// counts; the last request goes this long before the window ends.
    pub answer_wait: Duration,
    /// Loss assumed in each direction when nothing has answered yet (no loss could be observed).
    pub worst_loss: f64,
    /// Lower bound of every RTT-derived timer: protects against retransmitting faster than a
    /// loaded host can answer.
    pub rto_floor: Duration,
    /// RTOs a round must age before its silence counts.
    pub settle_rtos: u32,
    /// Accepted probability that a "no" is really an unlucky run of losses.
    pub false_negative: f64,
    /// Rounds (or lifetime tries) after which an undecided question is reported as null. A
    /// negative answer takes about 20 rounds at 20% loss each way and 55 to 60 at 50%: 80 lets
    /// most of the latter decide (at 60, a quarter of them ended null), and costs nothing where
    /// answers come sooner. The chance of a wrong "no" does not grow with it (see the tests).
    pub max_rounds: u32,
    /// RTT samples taken from each server.
    pub rtt_samples: u32,
    /// Longest binding lifetime `--lifetime` searches for.
    pub lifetime_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            stagger: Duration::from_millis(200),
            blocked_budget: Duration::from_millis(1500),
            answer_wait: Duration::from_millis(300),
            worst_loss: 0.5,
            rto_floor: Duration::from_millis(20),
            settle_rtos: 2,
            false_negative: 1e-4,
            max_rounds: 80,
            rtt_samples: 3,
            lifetime_max: Duration::from_secs(120),
        }
    }
}

impl Timing {
    /// Chance that a request and its answer both get through under [`Timing::worst_loss`].
    pub fn worst_answer_rate(&self) -> f64 {
        (1.0 - self.worst_loss).powi(2)
    }

    /// Unanswered requests after which a server counts as unreachable: the fewest whose all
    /// being lost, at the worst-case answer rate, is at most [`Timing::false_negative`].
    pub fn blocked_probes(&self) -> u32 {
        let q = self.worst_answer_rate();
        (1..=10_000)
            .find(|&n| silence_is_conclusive(n, q, self.false_negative))
            .unwrap_or(10_000)
    }

    /// Pace of requests to a server that has not answered: the [`Timing::blocked_probes`]
    /// requests spread evenly over the window, the last one [`Timing::answer_wait`] before its
    /// end. Never below [`MIN_DISCOVERY_INTERVAL`].
    pub fn discovery_interval(&self) -> Duration {
        let span = self.blocked_budget.saturating_sub(self.answer_wait);
        let gaps = self.blocked_probes().saturating_sub(1).max(1);
        (span / gaps).max(MIN_DISCOVERY_INTERVAL)
    }

    /// The shortest window that fits the requests at [`MIN_DISCOVERY_INTERVAL`].
    pub fn min_blocked_budget(&self) -> Duration {
        self.answer_wait + MIN_DISCOVERY_INTERVAL * self.blocked_probes().saturating_sub(1)
    }
}

/// Probe times for the binding lifetime search, up to `max`: 0.5 s steps to 10 s, 1 s steps to
/// 60 s, 5 s steps to 120 s, 15 s steps beyond. The estimate is the midpoint of a step, so it is
/// within half a step of the truth: at most ±0.5 s up to 60 s, where the common timeouts (30 s,
/// 60 s) and the keepalive intervals derived from them lie. Every point gets its own socket, bound
/// at the start, so the whole search takes one lifetime plus a step, not a binary search's many.
pub fn lifetime_schedule(max: Duration) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut t = Duration::ZERO;
    while t < max {
        let step = match t.as_secs() {
            0..10 => Duration::from_millis(500),
            10..60 => Duration::from_secs(1),
            60..120 => Duration::from_secs(5),
            _ => Duration::from_secs(15),
        };
        t = (t + step).min(max);
        out.push(t);
    }
    out
}

/// Whether `tries` unanswered tries, each answered with probability at least `q` were the answer
/// "yes", are enough to say "no": all of them lost by chance with probability at most
/// `false_negative`. The one decision rule behind every negative answer (see the module docs).
pub fn silence_is_conclusive(tries: u32, q: f64, false_negative: f64) -> bool {
    tries > 0 && q > 0.0 && (1.0 - q.min(1.0)).powi(tries as i32) <= false_negative
}

/// A cautious per-try answer rate from `answered` of `tries` control requests: the lower end of
/// the Wilson score interval, two standard deviations down.
pub fn answer_rate_lower_bound(tries: u32, answered: u32) -> f64 {
    if tries == 0 {
        return 0.0;
    }
    let (n, k, z) = (tries as f64, answered.min(tries) as f64, 2.0f64);
    let centre = k + z * z / 2.0;
    let spread = z * (k * (n - k) / n + z * z / 4.0).sqrt();
    ((centre - spread) / (n + z * z)).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_increasing_and_bounded() {
        let s = lifetime_schedule(Duration::from_secs(120));
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(s[0], Duration::from_millis(500));
        assert_eq!(*s.last().unwrap(), Duration::from_secs(120));
        assert!(s.contains(&Duration::from_secs(5)));
        assert!(s.contains(&Duration::from_secs(59)) && s.contains(&Duration::from_secs(60)));
        assert!(s.len() < 96);
        assert_eq!(lifetime_schedule(Duration::from_secs(2)).len(), 4);
    }

    /// Silence judged with the control answers seen, as the probe does.
    fn conclusive(rounds: u32, controls: u32, eps: f64) -> bool {
        silence_is_conclusive(rounds, answer_rate_lower_bound(rounds, controls), eps)
    }

    #[test]
    fn silence_needs_more_rounds_when_loss_is_high() {
        let eps = 1e-4;
        // No loss: nine clean rounds are enough, eight are not.
        assert!(!conclusive(8, 8, eps));
        assert!(conclusive(9, 9, eps));
        // 36% round-trip loss (20% each way): about twice as many.
        let needed = (1..100).find(|&r| conclusive(r, (r as f64 * 0.64) as u32, eps));
        assert!(matches!(needed, Some(15..=22)), "{needed:?}");
        // No control answered: never conclusive.
        assert!(!conclusive(40, 0, eps));
    }

    /// The exact chance that a question whose true answer is "yes" ends as "no": its response
    /// and the control each get through a round with probability `q`, the rule is checked after
    /// every round up to `max_rounds`, and "no" needs every response until then lost.
    fn wrong_no_chance(q: f64, max_rounds: u32, eps: f64) -> f64 {
        // dist[k]: chance of k control answers so far with the rule not yet satisfied.
        let mut dist = vec![1.0f64];
        let mut wrong = 0.0;
        for n in 1..=max_rounds {
            let mut next = vec![0.0; dist.len() + 1];
            for (k, p) in dist.iter().enumerate() {
                next[k + 1] += p * q;
                next[k] += p * (1.0 - q);
            }
            for (k, p) in next.iter_mut().enumerate() {
                if conclusive(n, k as u32, eps) {
                    wrong += *p * (1.0 - q).powi(n as i32);
                    *p = 0.0;
                }
            }
            dist = next;
        }
        wrong
    }

    #[test]
    fn a_wrong_no_stays_below_the_bound_at_every_loss() {
        let t = Timing::default();
        // Over every per-round answer rate, and whatever the round limit.
        for max_rounds in [40, t.max_rounds, 160] {
            let worst = (1..=200)
                .map(|i| wrong_no_chance(i as f64 / 200.0, max_rounds, t.false_negative))
                .fold(0.0, f64::max);
            assert!(worst < 2.3e-5, "{max_rounds} rounds: {worst}");
        }
        // At the worst-case 50% each way in particular.
        assert!(wrong_no_chance(0.25, t.max_rounds, t.false_negative) < t.false_negative);
    }

    #[test]
    fn udp_blocked_takes_33_requests_within_the_window() {
        let t = Timing::default();
        assert_eq!(t.worst_answer_rate(), 0.25);
        assert_eq!(t.blocked_probes(), 33);
        assert!(0.75f64.powi(33) <= t.false_negative && 0.75f64.powi(32) > t.false_negative);
        assert_eq!(t.discovery_interval(), Duration::from_micros(37_500));
        // The last request leaves `answer_wait` before the window ends.
        assert_eq!(
            t.discovery_interval() * 32 + t.answer_wait,
            t.blocked_budget
        );
        assert_eq!(t.min_blocked_budget(), Duration::from_millis(620));
        // The CLI's longest window still paces faster than the old 100 ms.
        let slow = Timing {
            blocked_budget: Duration::from_secs(3),
            ..t.clone()
        };
        assert!(slow.discovery_interval() < Duration::from_millis(100));
        // Below the minimum the interval stays at its floor.
        let short = Timing {
            blocked_budget: Duration::from_millis(400),
            ..t
        };
        assert_eq!(short.discovery_interval(), MIN_DISCOVERY_INTERVAL);
    }
}
