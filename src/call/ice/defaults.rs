//! Every timer and bound of the ICE agent, in one place, with how they relate.
//!
//! **Pacing (Ta, RFC 8445 §14.2).** The agent sends at most one connectivity check (new,
//! triggered or retransmitted) per [`Timing::pace`]. RFC 8445's default is 50 ms; we use 20 ms
//! because a voxmesh call is one stream with one component whose media runs at one packet per
//! 20 ms (Opus frames, DESIGN §6): a check of about 100 bytes every 20 ms is 40 kbit/s, the same
//! order as the call's own media, which is the budget §14.2 asks Ta to respect. With the five or
//! so candidates a client has, the whole first round of checks leaves within about 200 ms, and a
//! triggered check (the answer that opens a hole) waits at most one Ta. Responses are never
//! paced (§7.3). RFC 8445 forbids less than 5 ms; [`Timing::validate`] enforces that.
//!
//! **Check retransmission (RFC 8445 §14.3).** Before the agent has any round trip sample it
//! retransmits a check after [`Timing::initial_rto`] (250 ms, the TURN client's choice too: a
//! call is being set up and RFC 8489's 500 ms per loss is a long pause there). Once a check has
//! been answered, the RTO is SRTT + 4·RTTVAR of the answered checks, bounded below by
//! [`Timing::rto_floor`] (DESIGN §2: RTT-derived STUN timers always have a floor) — the
//! documented deviation from §14.3's `MAX(500 ms, Ta·N)`. Each retransmission doubles the RTO up
//! to [`Timing::max_rto`]; a pair fails after [`Timing::check_sends`] unanswered sends and one
//! more RTO of waiting. With the defaults a check to an address that never answers is sent at
//! 0, 0.25, 0.75, 1.75, 2.75, 3.75, 4.75 s and fails at 5.75 s: enough for a peer that starts
//! checking a few seconds late (candidates trickle) to still punch through, and a pair survives
//! 5 % loss each way essentially always (seven sends all lost: ~1e-7).
//!
//! **Relay grace.** Relayed pairs rank below every direct pair (type preference 0, RFC 8445
//! §5.1.2.2), and the controlling agent nominates one only when no direct pair has worked within
//! [`Timing::relay_grace`] of the first check (or every direct pair has failed). The grace keeps
//! a call that would go direct from starting on the relay and switching a few tens of
//! milliseconds later; it costs a relay-only call that long. Direct pairs keep being checked
//! after a relayed pair is selected, and a direct pair that works later takes over.
//!
//! **Consent freshness (RFC 7675).** On the selected pair (and on one standby pair, so a
//! fallback is known to work) the agent sends a binding request every [`Timing::consent_interval`]
//! randomised by ±[`Timing::consent_jitter`] (RFC 7675 §5.1: 5 s in 0.8..1.2), each a new
//! transaction; consent is lost when no answer arrived for [`Timing::consent_timeout`] (RFC 7675:
//! 30 s). After a consent check has gone unanswered for one RTO, the next is sent after
//! [`Timing::consent_retry`] instead of a whole interval, so the decision rests on many probes
//! and a path that comes back is seen quickly.
//!
//! The RFC defaults notice a dead path only after 30 s, which is right for "may I still send"
//! but far too slow for moving a call to a standby path: to notice a dead relayed path within
//! 1 s, use e.g. [`Timing::fast_consent`] (interval 200 ms, retry 100 ms, timeout 1 s), or give
//! only relayed pairs (either end a relay) such timers with the `relayed_consent_*` fields: a
//! dead relay is what a standby relay allocation is for, while a direct path has no such
//! fallback and keeps the calmer timers (and so does a relayed pair while no standby pair
//! avoiding its relays is held). The
//! relations to respect: `consent_timeout` must exceed the path's round trip plus
//! `consent_interval·(1 + jitter)`, or a healthy path is declared dead between two probes; and
//! `consent_timeout / consent_retry` is the number of probes that must all be lost for a false
//! alarm (at 5 % loss each way and the fast values, 10 probes: ~1e-10). The price is traffic:
//! one ~100-byte request and response per interval, 4 kbit/s each way at 200 ms, against the
//! call's ~40 kbit/s. Consent runs whether or not media flows, so a muted or DTX-silent call
//! keeps its consent and its NAT bindings (interval ≤ 15 s, RFC 8445 §11).
//!
//! **Bounds.** At most [`Timing::max_pairs`] pairs (RFC 8445 §6.1.2.5: 100) and
//! [`Timing::max_remote_candidates`] remote candidates (peer-reflexive ones included) per
//! agent; an authenticated peer cannot make the agent send to more addresses than that.

use std::time::Duration;

/// Open transactions at most (checks and consent together): a peer cannot make the agent keep
/// more state than this by triggering check after check.
pub const MAX_TXNS: usize = 256;
/// Finished transaction IDs remembered, so that a late or duplicate answer (normal on a lossy
/// path) is ignored rather than refused.
pub const MAX_FINISHED: usize = 128;

/// Timers and bounds of an [`super::IceAgent`]. `Default` is what calls use.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// Ta: at most one check per this interval.
    pub pace: Duration,
    /// RTO of a check before any round trip has been measured.
    pub initial_rto: Duration,
    /// Lower bound of the RTT-derived RTO.
    pub rto_floor: Duration,
    /// Upper bound of a doubled RTO.
    pub max_rto: Duration,
    /// Sends of one check before its pair fails.
    pub check_sends: u32,
    /// How long the controlling agent waits for a direct pair before nominating a relayed one.
    pub relay_grace: Duration,
    /// Base interval between consent checks on the selected and standby pairs.
    pub consent_interval: Duration,
    /// Each interval is multiplied by a uniform factor in `1 ± consent_jitter`.
    pub consent_jitter: f64,
    /// Interval between consent checks once one went unanswered.
    pub consent_retry: Duration,
    /// Consent is lost after this long without an answer.
    pub consent_timeout: Duration,
    /// The same three for pairs through a relay (either end relayed): a relay that dies should
    /// be noticed faster than a direct path when a standby relay is waiting. The interval and
    /// retry apply to every relayed pair; the timeout only while the agent holds a standby
    /// pair that shares no relay with the selected one (with nowhere to go, a fast verdict
    /// would only turn a lossy moment into a disconnection): otherwise `consent_timeout`.
    pub relayed_consent_interval: Duration,
    pub relayed_consent_retry: Duration,
    pub relayed_consent_timeout: Duration,
    /// Bound on candidate pairs.
    pub max_pairs: usize,
    /// Bound on remote candidates, signalled and peer-reflexive.
    pub max_remote_candidates: usize,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            pace: Duration::from_millis(20),
            initial_rto: Duration::from_millis(250),
            rto_floor: Duration::from_millis(50),
            max_rto: Duration::from_secs(1),
            check_sends: 7,
            relay_grace: Duration::from_millis(200),
            consent_interval: Duration::from_secs(5),
            consent_jitter: 0.2,
            consent_retry: Duration::from_secs(1),
            consent_timeout: Duration::from_secs(30),
            relayed_consent_interval: Duration::from_secs(5),
            relayed_consent_retry: Duration::from_secs(1),
            relayed_consent_timeout: Duration::from_secs(30),
            max_pairs: 100,
            max_remote_candidates: 32,
        }
    }
}

/// Why a [`Timing`] is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    /// RFC 8445 §14.2: Ta must not be below 5 ms. Raise `pace`.
    #[error("pace (Ta) below 5 ms")]
    PaceTooShort,
    /// A check must be sent at least once and retransmission must be able to wait.
    #[error("check_sends must be at least 1 and rto_floor <= initial_rto <= max_rto")]
    BadRetransmission,
    /// `consent_timeout` must exceed `consent_interval·(1 + consent_jitter)` and `consent_retry`
    /// (and likewise the `relayed_consent_*` three), or consent is declared lost between two
    /// probes. Lengthen the timeout.
    #[error("consent_timeout must exceed consent_interval (with jitter) and consent_retry")]
    ConsentTimeoutTooShort,
    /// `consent_jitter` must lie in 0..1.
    #[error("consent_jitter must lie in 0..1")]
    BadJitter,
    /// The bounds must allow at least one pair and one remote candidate.
    #[error("max_pairs and max_remote_candidates must be at least 1")]
    BadBounds,
}

impl Timing {
    /// Consent tuned to notice a dead path within about 1 s (a relayed path that must fail over
    /// to a standby): probes every 200 ms (±20 %), every 100 ms once one is unanswered, lost
    /// after 1 s of silence. Suits paths with round trips well under 500 ms.
    pub fn fast_consent() -> Self {
        Timing {
            consent_interval: Duration::from_millis(200),
            consent_retry: Duration::from_millis(100),
            consent_timeout: Duration::from_secs(1),
            relayed_consent_interval: Duration::from_millis(200),
            relayed_consent_retry: Duration::from_millis(100),
            relayed_consent_timeout: Duration::from_secs(1),
            ..Timing::default()
        }
    }

    /// How long a pair (relayed or not, last measured round trip `rtt`) may go unanswered
    /// before it loses consent: the configured timeout, but never less than one jittered
    /// interval plus two round trips, so a path longer than the timeout was sized for is not
    /// declared dead between two answers (fast relayed timers on an intercontinental relay).
    pub(crate) fn consent_timeout_for(&self, relayed: bool, rtt: Option<Duration>) -> Duration {
        let (interval, _, timeout) = self.consent(relayed);
        let floor = interval.mul_f64(1.0 + self.consent_jitter) + rtt.unwrap_or_default() * 2;
        timeout.max(floor)
    }

    /// The consent timers of a pair, relayed or not: (interval, retry, timeout).
    pub(crate) fn consent(&self, relayed: bool) -> (Duration, Duration, Duration) {
        if relayed {
            (
                self.relayed_consent_interval,
                self.relayed_consent_retry,
                self.relayed_consent_timeout,
            )
        } else {
            (
                self.consent_interval,
                self.consent_retry,
                self.consent_timeout,
            )
        }
    }

    /// Checks the relations the module docs state.
    pub fn validate(&self) -> Result<(), TimingError> {
        if self.pace < Duration::from_millis(5) {
            return Err(TimingError::PaceTooShort);
        }
        if self.check_sends == 0
            || self.rto_floor > self.initial_rto
            || self.initial_rto > self.max_rto
            || self.rto_floor.is_zero()
        {
            return Err(TimingError::BadRetransmission);
        }
        if !(0.0..1.0).contains(&self.consent_jitter) {
            return Err(TimingError::BadJitter);
        }
        for relayed in [false, true] {
            let (interval, retry, timeout) = self.consent(relayed);
            let longest = interval.mul_f64(1.0 + self.consent_jitter);
            if timeout <= longest || timeout <= retry {
                return Err(TimingError::ConsentTimeoutTooShort);
            }
        }
        if self.max_pairs == 0 || self.max_remote_candidates == 0 {
            return Err(TimingError::BadBounds);
        }
        Ok(())
    }

    /// How long a check is listened to for at most: every send spaced by the largest RTO, and
    /// one more RTO. A superseded check (a triggered check replaced it) keeps listening this
    /// long, so its answer still counts.
    pub fn check_lifetime(&self) -> Duration {
        self.max_rto * (self.check_sends + 1)
    }

    /// After a retransmission, how long its transaction is kept for a late answer: two of the
    /// largest RTOs.
    pub(crate) fn late_answer_wait(&self) -> Duration {
        self.max_rto * 2
    }

    /// The RTO of the `send`-th send (1-based) given the base RTO: doubling, capped.
    pub(crate) fn backoff(&self, base: Duration, send: u32) -> Duration {
        let doubled = base.saturating_mul(1 << (send.saturating_sub(1)).min(16));
        doubled.min(self.max_rto).max(self.rto_floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_fast_consent_are_valid() {
        assert_eq!(Timing::default().validate(), Ok(()));
        assert_eq!(Timing::fast_consent().validate(), Ok(()));
    }

    #[test]
    fn broken_relations_are_refused() {
        let t = Timing {
            pace: Duration::from_millis(4),
            ..Timing::default()
        };
        assert_eq!(t.validate(), Err(TimingError::PaceTooShort));
        let t = Timing {
            consent_timeout: Duration::from_secs(6),
            ..Timing::default()
        };
        assert_eq!(t.validate(), Err(TimingError::ConsentTimeoutTooShort));
        let t = Timing {
            initial_rto: Duration::from_secs(2),
            ..Timing::default()
        };
        assert_eq!(t.validate(), Err(TimingError::BadRetransmission));
    }

    #[test]
    fn default_check_gives_up_after_the_documented_schedule() {
        let t = Timing::default();
        let mut at = Duration::ZERO;
        let mut sends = Vec::new();
        for k in 1..=t.check_sends {
            sends.push(at);
            at += t.backoff(t.initial_rto, k);
        }
        let ms: Vec<u128> = sends.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [0, 250, 750, 1750, 2750, 3750, 4750]);
        assert_eq!(at, Duration::from_millis(5750));
    }
}
