//! Every timer and bound natprobe uses, in one place, with how they relate.
//!
//! The probe knows nothing of the path at first, so it starts with fixed pacing
//! ([`Timing::discovery_interval`]) and gives up on silence after [`Timing::blocked_budget`]. Once
//! a server answers, every later timer derives from the measured round trip (RFC 6298-style
//! SRTT + 4·RTTVAR), bounded below by [`Timing::rto_floor`] — the deliberate, documented
//! deviation from RFC 8489's fixed 500 ms initial RTO (see [`crate::stun::timers`]).
//!
//! Negative answers ("no response came back") are the slow part of NAT discovery and the only
//! kind that can be wrong: a lost response looks like a filter. Instead of one long timeout,
//! the probe sends a test in rounds, one RTO apart, next to a control request whose answer
//! shows the path is working in that round. A test counts as failed only when, given the
//! control answers seen, the chance that every round's response was merely lost falls below
//! [`Timing::false_negative`]; the rounds needed therefore grow with the loss actually observed.
//! A round counts only once [`Timing::settle_rtos`] RTOs have passed since it was sent, so a
//! late answer (a busy host, a queue) is not mistaken for a missing one.

use std::time::Duration;

/// Timing parameters of a probe. `Default` is what the CLI uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// Pace of requests to a server that has not answered yet.
    pub discovery_interval: Duration,
    /// How long the first server gets alone before the others are contacted too. Contacting the
    /// others later keeps the RFC 5780 server's alternate address untouched before the filtering
    /// tests when the user lists it as a server of its own.
    pub stagger: Duration,
    /// Silence after which a server counts as unreachable; when no server answered within it, UDP
    /// is blocked. Long enough for requests sent until `blocked_budget - 300 ms` to come back
    /// across a 300 ms round trip.
    pub blocked_budget: Duration,
    /// Lower bound of every RTT-derived timer: protects against retransmitting faster than a
    /// loaded host can answer.
    pub rto_floor: Duration,
    /// RTOs a round must age before its silence counts.
    pub settle_rtos: u32,
    /// Accepted probability that a "no" is really an unlucky run of losses.
    pub false_negative: f64,
    /// Rounds after which an undecided test is reported as null. At 20% loss each way a
    /// negative answer takes about 20 rounds; 60 leaves room for much worse paths.
    pub max_rounds: u32,
    /// RTT samples taken from each server.
    pub rtt_samples: u32,
    /// Longest binding lifetime `--lifetime` searches for.
    pub lifetime_max: Duration,
    /// Attempts at each lifetime probe before it counts as expired.
    pub lifetime_attempts: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            discovery_interval: Duration::from_millis(100),
            stagger: Duration::from_millis(200),
            blocked_budget: Duration::from_millis(1500),
            rto_floor: Duration::from_millis(20),
            settle_rtos: 2,
            false_negative: 1e-4,
            max_rounds: 60,
            rtt_samples: 3,
            lifetime_max: Duration::from_secs(120),
            lifetime_attempts: 5,
        }
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

/// Whether `rounds` silent rounds, during which `controls` control requests were answered,
/// are enough to call a test failed. The per-round success chance `q` is not taken at face value
/// (a lucky run of control answers would overstate it) but at the lower end of its Wilson score
/// interval, two standard deviations down; the test fails only if even a path that good would
/// have lost every round with probability at most `false_negative`.
pub fn silence_is_conclusive(rounds: u32, controls: u32, false_negative: f64) -> bool {
    if rounds == 0 {
        return false;
    }
    let (n, k, z) = (rounds as f64, controls.min(rounds) as f64, 2.0f64);
    let centre = k + z * z / 2.0;
    let spread = z * (k * (n - k) / n + z * z / 4.0).sqrt();
    let q_low = ((centre - spread) / (n + z * z)).max(0.0);
    (1.0 - q_low).powi(rounds as i32) <= false_negative
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

    #[test]
    fn silence_needs_more_rounds_when_loss_is_high() {
        let eps = 1e-4;
        // No loss: nine clean rounds are enough, eight are not.
        assert!(!silence_is_conclusive(8, 8, eps));
        assert!(silence_is_conclusive(9, 9, eps));
        // 36% round-trip loss (20% each way): about twice as many.
        let needed = (1..100).find(|&r| silence_is_conclusive(r, (r as f64 * 0.64) as u32, eps));
        assert!(matches!(needed, Some(15..=22)), "{needed:?}");
        // No control answered: never conclusive.
        assert!(!silence_is_conclusive(40, 0, eps));
    }
}
