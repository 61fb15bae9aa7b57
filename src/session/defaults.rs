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
//! **Rekeying.** Each direction's key changes every epoch (see `crypto::TransportKeys`): the
//! sender moves on at its first frame after [`Config::rekey_interval`] (120 s, WireGuard's
//! REKEY_AFTER_TIME) or after [`Config::rekey_messages`] frames (2^20) with one key, whichever
//! comes first. The interval bounds how much recorded traffic one stolen key opens: at most
//! 120 s plus a keepalive interval (both ends send at least once per keepalive interval, the
//! initiator a ping and the responder its pong, and the rekey happens at a send). The message
//! limit bounds the same for a busy session: at 2^20 frames (1.2 GB at the largest frame) the
//! two limits meet at about 8,700 frames a second, so above that rate a key covers less than
//! 120 s and never more than 2^20 frames. Both are far below ChaCha20-Poly1305's own per-key
//! limits (RFC 9001 §6.6 and Appendix B: none below 2^62 frames for confidentiality) and below
//! WireGuard's 2^60 nonce guard, which is about nonce space, not exposure; a key change costs one
//! ChaCha20 block per direction and no message, so being strict costs nothing. After a
//! receiver moves to a new epoch it keeps the previous key for [`Config::rekey_overlap`] (5 s):
//! frames sealed before the switch can only arrive later by reordering or queueing (a
//! retransmission is sealed anew), which on a real path is milliseconds; 5 s is more than QUIC's
//! three probe timeouts (RFC 9001 §6.5) at our longest RTO, and far less than an interval, so at
//! most two receive keys exist at once. A receiver follows at most [`MAX_EPOCH_SKIP`] epochs
//! ahead in one step: by time a sender can only be one ahead (a receiver that heard nothing for
//! a whole interval closed the session at [`Config::idle_timeout`]); skipping needs every frame
//! of an epoch lost, and the bound caps the derivation work a forged frame can cause.
//!
//! **Responder protection.** Handshakes are the expensive thing a stranger can make us do, so
//! they are rate limited per source and overall ([`RateLimits`]); when a limit is hit, the
//! responder answers with a stateless cookie instead of doing the work, and only initiators that
//! prove their address with it get further (see `session/cookie.rs`). Every table is bounded.

use std::time::Duration;

/// Most epochs a receiver moves ahead for one frame (see the module docs on rekeying).
pub const MAX_EPOCH_SKIP: u16 = 4;

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
    /// Sending stops (and the session closes) when the frame counter reaches this. The
    /// counter has 48 bits (`wire::COUNTER_MAX`); the margin keeps us far from the edge.
    pub nonce_limit: u64,
    /// A sender moves to the next key at its first frame this long after the current key's
    /// first frame.
    pub rekey_interval: Duration,
    /// ... or after this many frames with one key, whichever comes first.
    pub rekey_messages: u64,
    /// A receiver keeps the previous epoch's key this long after the first frame of the next
    /// epoch, for frames reordered around the switch; then the key is erased.
    pub rekey_overlap: Duration,
    /// How often the cookie secret changes. A cookie is valid for up to twice this.
    pub cookie_rotation: Duration,
    /// Early data (0-RTT requests in the initiation) is acted on only if the initiator's wall
    /// clock in it is within this of ours; each such initiation is remembered for twice this,
    /// so a replay is refused for as long as its clock would pass (see `Endpoint`).
    pub early_window: Duration,
    /// At most this many initiations with early data remembered; beyond, early data is
    /// declined (the handshake goes on without it).
    pub max_early_remembered: usize,

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
            nonce_limit: super::wire::COUNTER_MAX + 1 - (1 << 16),
            rekey_interval: Duration::from_secs(120),
            rekey_messages: 1 << 20,
            rekey_overlap: Duration::from_secs(5),
            cookie_rotation: Duration::from_secs(120),
            early_window: Duration::from_secs(30),
            max_early_remembered: 65_536,
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
        // Rekeying: the overlap covers three of our longest RTOs (RFC 9001 §6.5's three PTOs)
        // and is a small part of an interval, so at most two receive keys are ever held; a
        // sender cannot get two epochs ahead by time alone, since a receiver that heard nothing
        // for an interval has closed the session; the limits meet near 8,700 frames a second.
        assert!(c.rekey_overlap >= c.rto_max * 3);
        assert!(c.rekey_overlap * 10 <= c.rekey_interval);
        assert!(c.idle_timeout < c.rekey_interval);
        assert!(c.keepalive_interval < c.rekey_interval);
        let meet = c.rekey_messages as f64 / c.rekey_interval.as_secs_f64();
        assert!((8_000.0..9_000.0).contains(&meet), "{meet}");
        assert!(c.rekey_messages < u64::from(u32::MAX));
        assert!(c.nonce_limit <= super::super::wire::COUNTER_MAX);
    }
}
