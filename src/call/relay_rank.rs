//! Which relays a call uses: the ranking of measured relay allocations (sans-IO, pure).
//!
//! The endpoint allocates on up to [`TRIALS`] of the relays its supernode offers, in parallel,
//! and measures each allocation's round trip (the TURN client's first-try transactions: the
//! 401 challenge and the authenticated Allocate, Karn's rule). Once all have answered (or
//! [`RANK_WAIT`] after the first did), it ranks them here; the best carries the call and the
//! second is kept allocated as the **standby**, its relayed candidate known to ICE, so a call
//! whose relay dies moves to it without a signalling round trip. The rest are released.
//!
//! # The score (lower is better), in milliseconds
//!
//! ```text
//! score = rtt_here + rtt_far + LOAD_MS_PER_ALLOCATION · load
//! ```
//!
//! - `rtt_here`: our measured round trip to the relay (smallest sample).
//! - `rtt_far`: the far end's round trip to that relay when known; unknown (the usual case at
//!   allocation time, before any check crossed the relay) counts as `rtt_here` again, i.e. the
//!   far end is assumed as far from each relay as we are, which keeps known and unknown scores
//!   comparable (both estimate the relayed path's round trip).
//! - `load`: the allocations the relay last reported to the mesh; each costs
//!   [`LOAD_MS_PER_ALLOCATION`], so a relay 50 calls busier must be 50 ms closer to win.
//!
//! Scores are compared in steps of [`SCORE_STEP_MS`]: a few milliseconds between two relays is
//! measurement noise (one sample's scheduling delay), not a reason to differ. Ties go to the
//! lower relay ID, so both ends of a call, given the same offers and measuring nearly alike,
//! pick the same relay and the call crosses one relay rather than two.

use std::net::SocketAddr;
use std::time::Duration;

use crate::identity::UserId;

/// Relays allocated on in parallel to be measured (the supernode offers up to 3).
pub const TRIALS: usize = 3;

/// How long the ranking waits for slower allocations after the first one succeeded: a relay
/// more than this much farther than the first would not win anyway unless far less loaded.
pub const RANK_WAIT: Duration = Duration::from_millis(150);

/// What one reported allocation weighs, in milliseconds of round trip.
pub const LOAD_MS_PER_ALLOCATION: f64 = 1.0;

/// Scores closer than this are not told apart (the relay ID decides).
pub const SCORE_STEP_MS: f64 = 5.0;

/// One measured relay: what the ranking needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    pub relay: UserId,
    /// The TURN server address we allocated on.
    pub server: SocketAddr,
    /// Our round trip to it.
    pub rtt: Duration,
    /// The far end's round trip to it, when known.
    pub far_rtt: Option<Duration>,
    /// Allocations it reported.
    pub load: u32,
}

/// A ranked relay: the measurement and its score.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    pub m: Measured,
    pub score_ms: f64,
}

/// The score of one relay (see the module docs).
pub fn score(m: &Measured) -> f64 {
    let here = m.rtt.as_secs_f64() * 1000.0;
    let far = m.far_rtt.map_or(here, |f| f.as_secs_f64() * 1000.0);
    here + far + LOAD_MS_PER_ALLOCATION * f64::from(m.load)
}

/// Ranks `measured`, best first: the first carries calls, the second is the standby.
pub fn rank(measured: Vec<Measured>) -> Vec<Scored> {
    let mut v: Vec<Scored> = measured
        .into_iter()
        .map(|m| Scored {
            score_ms: score(&m),
            m,
        })
        .collect();
    v.sort_by_key(|s| ((s.score_ms / SCORE_STEP_MS).floor() as i64, s.m.relay));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u8, rtt_ms: u64, far_ms: Option<u64>, load: u32) -> Measured {
        Measured {
            relay: UserId([id; 20]),
            server: SocketAddr::from(([10, 0, 0, id], 3478)),
            rtt: Duration::from_millis(rtt_ms),
            far_rtt: far_ms.map(Duration::from_millis),
            load,
        }
    }

    fn order(v: &[Scored]) -> Vec<u8> {
        v.iter().map(|s| s.m.relay.0[0]).collect()
    }

    #[test]
    fn nearer_wins_when_loads_are_equal() {
        let r = rank(vec![
            m(1, 80, None, 0),
            m(2, 20, None, 0),
            m(3, 50, None, 0),
        ]);
        assert_eq!(order(&r), [2, 3, 1]);
        assert_eq!(r[0].score_ms, 40.0);
    }

    #[test]
    fn load_outweighs_a_small_rtt_advantage_but_not_a_large_one() {
        // 10 ms nearer (20 ms of path) against 30 more allocations: the idle one wins.
        let r = rank(vec![m(1, 10, None, 30), m(2, 20, None, 0)]);
        assert_eq!(order(&r), [2, 1]);
        // 100 ms nearer (200 ms of path) against the same load: the near one wins.
        let r = rank(vec![m(1, 10, None, 30), m(2, 110, None, 0)]);
        assert_eq!(order(&r), [1, 2]);
    }

    #[test]
    fn a_known_far_end_replaces_the_symmetric_guess() {
        // Near us but far from the peer, against a relay halfway.
        let r = rank(vec![m(1, 10, Some(200), 0), m(2, 60, Some(60), 0)]);
        assert_eq!(order(&r), [2, 1]);
        assert_eq!(r[1].score_ms, 210.0);
    }

    #[test]
    fn ties_go_to_the_lower_relay_id_whatever_the_input_order() {
        let a = rank(vec![m(7, 30, None, 2), m(3, 30, None, 2)]);
        let b = rank(vec![m(3, 30, None, 2), m(7, 30, None, 2)]);
        assert_eq!(order(&a), [3, 7]);
        assert_eq!(a, b);
    }

    #[test]
    fn measurement_noise_does_not_decide() {
        // 1 ms apart (2 ms of score): the same step, so the relay ID decides at both ends,
        // whichever of the two each end happened to measure faster.
        let here = rank(vec![m(7, 11, None, 0), m(3, 12, None, 0)]);
        let there = rank(vec![m(7, 12, None, 0), m(3, 11, None, 0)]);
        assert_eq!(order(&here), [3, 7]);
        assert_eq!(order(&there), [3, 7]);
    }

    #[test]
    fn nothing_measured_ranks_nothing() {
        assert!(rank(Vec::new()).is_empty());
    }
}
