//! Every timer and bound of the session layer, in one place, with how they relate.
//!
//! **Handshake.** The initiator knows nothing of the path before its first answer, so its
//! handshake is retransmitted on a fixed schedule: RFC 8489's 500 ms initial RTO (the
//! conservative choice for an unknown path), doubling up to [`Config::handshake_max_rto`], until
//! [`Config::handshake_timeout`]. With the defaults that is 12 sends in 20 s: at 30 % loss each
//! way (51 % per round trip) a handshake still fails only once in about 3,000 tries. The same
//! initiation message is resent each time (the responder answers duplicates from a cache,
//! without crypto), so retransmissions cost the responder nothing.
//!
//! **Transactions.** Once a handshake has measured the path, requests are retransmitted on an
//! RTT-derived timer (RFC 6298 SRTT + 4·RTTVAR, the same estimator as STUN,
//! [`crate::stun::timers`]) bounded below by [`Config::rto_floor`] and above by
//! [`Config::rto_max`], doubling per attempt, at most [`Config::transaction_attempts`] sends and
//! never past [`Config::transaction_timeout`]. A responder keeps its answer for
//! [`Config::response_cache_ttl`], which must outlast the requester's timeout, so a duplicate
//! request gets the cached answer instead of running twice. The defaults give up after 5 s: on a
//! 40 ms path that is 7 sends (0, 0.12, 0.36, 0.84, 1.8, 3.3, 4.8 s), so a request survives 30 %
//! loss each way 99 % of the time, and a supernode that dies costs a client at most 5 s before it
//! moves its requests to its standby session (which is already established).
//!
//! **Liveness.** An initiator with nothing to send pings every [`Config::keepalive_interval`]
//! (DESIGN.md §3: 15-25 s holds the common 30 s UDP NAT bindings); a ping is retransmitted like a
//! request, and [`Config::ping_attempts`] unanswered pings close the session as unresponsive
//! (seconds, not a keepalive period, once a ping is out). Either side closes a session that has
//! received nothing for [`Config::idle_timeout`] (three keepalive intervals and a margin).
//!
//! **Responder protection.** Handshakes are the expensive thing a stranger can make us do, so
//! they are rate limited per source and overall ([`RateLimits`]); when a limit is hit, the
//! responder answers with a stateless cookie instead of doing the work, and only initiators that
//! prove their address with it get further (see `session/cookie.rs`). Every table is bounded.

use std::time::Duration;

/// Rate limits on handshakes a responder performs. Rates are per second, bursts in handshakes.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimits {
    /// All handshakes from unproven (cookie-less) sources together. Above it, every new
    /// initiator is asked for a cookie first: "under load".
    pub global_rate: f64,
    pub global_burst: f64,
    /// Handshakes from one unproven source IP (IPv6: its /64). Above it, that source is asked
    /// for a cookie.
    pub source_rate: f64,
    pub source_burst: f64,
    /// Handshakes from one source IP that proved its address with a cookie. Above it, the
    /// source's handshakes are dropped: it is really flooding. Generous, since many users can
    /// share a carrier-grade NAT address.
    pub proven_rate: f64,
    pub proven_burst: f64,
    /// Buckets in each per-source table. Sources are hashed into buckets with a secret key, so
    /// memory is fixed whatever the number of sources; a collision makes two sources share a
    /// limit, which an attacker cannot aim at a chosen victim without the key.
    pub buckets: usize,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            global_rate: 1000.0,
            global_burst: 200.0,
            source_rate: 4.0,
            source_burst: 8.0,
            proven_rate: 20.0,
            proven_burst: 40.0,
            buckets: 4096,
        }
    }
}

/// Session layer configuration. `Default` is what the binaries use.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Accept handshakes from others (supernodes do; a client need not).
    pub accept: bool,

    pub handshake_initial_rto: Duration,
    pub handshake_max_rto: Duration,
    /// An initiator gives up after this long without a valid answer.
    pub handshake_timeout: Duration,
    /// A responder forgets a handshake whose initiator never sent a first transport message
    /// (key confirmation) after this long.
    pub confirm_timeout: Duration,

    pub rto_floor: Duration,
    pub rto_max: Duration,
    /// RTO before the path has been measured (only used if a request leaves before the
    /// handshake's own sample, which cannot happen for an initiator).
    pub rto_initial: Duration,
    pub transaction_attempts: u32,
    pub transaction_timeout: Duration,
    pub response_cache_ttl: Duration,

    pub keepalive_interval: Duration,
    pub ping_attempts: u32,
    pub idle_timeout: Duration,

    /// Largest datagram accepted or sent. 1232 is what fits the IPv6 minimum MTU (1280) after
    /// IPv6 and UDP headers: no fragmentation on any path.
    pub max_frame: usize,
    /// Sessions in any state.
    pub max_sessions: usize,
    /// Responder handshakes awaiting the initiator's key confirmation.
    pub max_pending_handshakes: usize,
    /// Requests a session may have outstanding (ours, unanswered).
    pub max_in_flight: usize,
    /// Requests from the peer that we have not answered yet.
    pub max_unanswered: usize,
    /// Answers kept for duplicate requests, per session.
    pub max_cached_responses: usize,
    /// Messages queued on a session whose handshake is still running.
    pub max_queued: usize,
    /// Sending stops (and the session closes) when the nonce reaches this. Noise allows
    /// 2^64 - 1 nonces; the margin keeps us far from the edge.
    pub nonce_limit: u64,
    /// How often the cookie secret changes. A cookie is valid for up to twice this.
    pub cookie_rotation: Duration,

    pub rate: RateLimits,
}

impl Default for Config {
    fn default() -> Self {
        let transaction_timeout = Duration::from_secs(5);
        Config {
            accept: true,
            handshake_initial_rto: Duration::from_millis(500),
            handshake_max_rto: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(20),
            confirm_timeout: Duration::from_secs(20),
            rto_floor: Duration::from_millis(100),
            rto_max: Duration::from_millis(1500),
            rto_initial: Duration::from_millis(500),
            transaction_attempts: 7,
            transaction_timeout,
            response_cache_ttl: transaction_timeout + Duration::from_secs(4),
            keepalive_interval: Duration::from_secs(20),
            ping_attempts: 5,
            idle_timeout: Duration::from_secs(65),
            max_frame: 1232,
            max_sessions: 100_000,
            max_pending_handshakes: 8192,
            max_in_flight: 64,
            max_unanswered: 64,
            max_cached_responses: 256,
            max_queued: 32,
            nonce_limit: u64::MAX - (1 << 16),
            cookie_rotation: Duration::from_secs(120),
            rate: RateLimits::default(),
        }
    }
}

impl Config {
    /// A client: initiates only.
    pub fn client() -> Config {
        Config {
            accept: false,
            ..Config::default()
        }
    }

    /// Largest request, response or message body that fits in one frame.
    pub fn max_body(&self) -> usize {
        self.max_frame.saturating_sub(
            super::wire::TRANSPORT_HEADER + super::wire::TAG + super::wire::INNER_MAX_HEADER,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_relate_as_documented() {
        let c = Config::default();
        assert!(c.response_cache_ttl > c.transaction_timeout);
        assert!(c.idle_timeout > c.keepalive_interval * 3);
        assert!((15..=25).contains(&c.keepalive_interval.as_secs()));
        assert!(c.rto_floor <= c.rto_max);
        // Handshake sends within the timeout, and the failure rate at 30 % loss each way.
        let mut t = Duration::ZERO;
        let mut rto = c.handshake_initial_rto;
        let mut sends = 0;
        while t < c.handshake_timeout {
            sends += 1;
            t += rto;
            rto = (rto * 2).min(c.handshake_max_rto);
        }
        assert_eq!(sends, 12);
        let fail = (1.0f64 - 0.7 * 0.7).powi(sends);
        assert!(fail < 1.0 / 3000.0, "{fail}");
        assert!(c.max_body() >= 1150);
    }
}
