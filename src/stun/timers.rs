//! Retransmission timing for STUN transactions.
//!
//! RFC 8489 §6.2.1 recommends an initial RTO above 500 ms, doubling, 7 sends, which takes about
//! 39.5 s to give up. That schedule suits a client that knows nothing of its path. Where voxmesh
//! measures the path first (NAT probing; connectivity checks as in RFC 8445 §14), it derives the
//! RTO from the measured round trip the way TCP does (RFC 6298) and bounds it below by a floor,
//! so it is fast on a LAN and still right across an ocean. That is a deliberate, documented
//! deviation; the floor keeps it from ever retransmitting faster than a path could answer.

use std::time::Duration;

/// RFC 8489 §6.2.1 defaults, for clients with no RTT knowledge.
pub const RFC8489_INITIAL_RTO: Duration = Duration::from_millis(500);
/// RFC 8489's Rc: requests sent before giving up.
pub const RFC8489_RC: u32 = 7;
/// RFC 8489's Rm: the final wait, in multiples of the initial RTO.
pub const RFC8489_RM: u32 = 16;

/// Smoothed RTT estimator (RFC 6298 §2 with alpha 1/8, beta 1/4). Kept in whole microseconds
/// (24 bytes instead of 56: a supernode holds one per connected client); RTTs above
/// `u32::MAX` µs (71 minutes) saturate.
#[derive(Clone, Copy, Debug, Default)]
pub struct RttEstimator {
    srtt: Option<u32>,
    rttvar: u32,
    min: Option<u32>,
    samples: u32,
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

fn duration(us: u32) -> Duration {
    Duration::from_micros(us as u64)
}

impl RttEstimator {
    /// Feeds one measured round trip. Callers take samples only from unambiguous exchanges
    /// (Karn's rule): a response matched to one specific transmission.
    pub fn sample(&mut self, rtt: Duration) {
        let rtt = micros(rtt);
        self.samples = self.samples.saturating_add(1);
        self.min = Some(self.min.map_or(rtt, |m| m.min(rtt)));
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(rtt) as u64;
                self.rttvar = ((self.rttvar as u64 * 3 + diff) / 4) as u32;
                self.srtt = Some(((srtt as u64 * 7 + rtt as u64) / 8) as u32);
            }
        }
    }

    pub fn srtt(&self) -> Option<Duration> {
        self.srtt.map(duration)
    }

    pub fn min_rtt(&self) -> Option<Duration> {
        self.min.map(duration)
    }

    pub fn samples(&self) -> u32 {
        self.samples
    }

    /// SRTT + 4·RTTVAR, at least `floor`; `initial` before any sample.
    pub fn rto(&self, floor: Duration, initial: Duration) -> Duration {
        match self.srtt {
            None => initial,
            Some(srtt) => (duration(srtt) + duration(self.rttvar) * 4).max(floor),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rto_uses_initial_before_samples_and_floor_after() {
        let mut e = RttEstimator::default();
        let floor = Duration::from_millis(25);
        assert_eq!(
            e.rto(floor, Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        e.sample(Duration::from_micros(200));
        assert_eq!(e.rto(floor, Duration::from_millis(100)), floor);
        let mut far = RttEstimator::default();
        far.sample(Duration::from_millis(150));
        // 150 + 4 * 75 = 450 ms
        assert_eq!(far.rto(floor, Duration::ZERO), Duration::from_millis(450));
        far.sample(Duration::from_millis(150));
        assert!(far.rto(floor, Duration::ZERO) < Duration::from_millis(450));
        assert_eq!(far.min_rtt(), Some(Duration::from_millis(150)));
    }
}
