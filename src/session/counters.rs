//! What the endpoint counts: every refusal by reason, and the normal events worth graphing.

/// Why an incoming frame (or part of one) was refused. Each refusal is counted under its reason
/// and nothing else happens: no panic, no state change, no answer (except where an answer is the
/// point: a cookie reply, or a handshake answer telling an initiator its binding was refused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Longer than `Config::max_frame`.
    Oversized,
    /// First byte outside 4..=15: not a session frame (a demultiplexing bug upstream).
    NotSessionFrame,
    /// A frame type in our range that this version does not use.
    UnknownType,
    /// Wrong length or layout for its type.
    Malformed,
    /// A handshake frame of another protocol version.
    UnsupportedVersion,
    /// A handshake initiation while this endpoint does not accept sessions.
    NotAccepting,
    /// mac1 wrong: not meant for our key (or the sender has a wrong key for us).
    BadMac1,
    /// A source that proved its address is over its handshake rate.
    RateLimited,
    /// The session table is full.
    SessionsFull,
    /// The pending-handshake table is full.
    PendingFull,
    /// A handshake message that does not decrypt.
    BadHandshake,
    /// A peer's Noise static key is not bound to the identity it claims.
    BindingRefused,
    /// The responder's identity is not the one its node key names.
    IdentityMismatch,
    /// No session with that index (expired, closed, or guessed).
    UnknownSession,
    /// A frame the session's stage does not expect (a handshake answer after completion).
    WrongStage,
    /// A cookie reply that does not open.
    BadCookie,
    /// A transport nonce already received.
    Replayed,
    /// A transport nonce older than the replay window.
    TooOld,
    /// A transport nonce at or beyond the nonce limit.
    NonceLimit,
    /// A transport frame that does not authenticate.
    BadAuth,
    /// A transport frame sealed in an epoch whose key is gone: older than the previous epoch,
    /// or the previous one after its overlap (`Config::rekey_overlap`). Late frames after a
    /// rekey land here, and so does any replay of an old epoch's frames.
    StaleEpoch,
    /// A transport frame sealed in an epoch more than `MAX_EPOCH_SKIP` ahead of the latest
    /// received: not from the peer (its epochs advance one at a time).
    FutureEpoch,
    /// A transport frame whose decrypted content is malformed.
    MalformedPayload,
    /// A new request while the peer already has `max_unanswered` unanswered.
    TooManyUnanswered,
}

impl Refusal {
    pub const ALL: [Refusal; 24] = [
        Refusal::Oversized,
        Refusal::NotSessionFrame,
        Refusal::UnknownType,
        Refusal::Malformed,
        Refusal::UnsupportedVersion,
        Refusal::NotAccepting,
        Refusal::BadMac1,
        Refusal::RateLimited,
        Refusal::SessionsFull,
        Refusal::PendingFull,
        Refusal::BadHandshake,
        Refusal::BindingRefused,
        Refusal::IdentityMismatch,
        Refusal::UnknownSession,
        Refusal::WrongStage,
        Refusal::BadCookie,
        Refusal::Replayed,
        Refusal::TooOld,
        Refusal::NonceLimit,
        Refusal::BadAuth,
        Refusal::StaleEpoch,
        Refusal::FutureEpoch,
        Refusal::MalformedPayload,
        Refusal::TooManyUnanswered,
    ];

    /// A stable snake_case name for metrics and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Oversized => "oversized",
            Refusal::NotSessionFrame => "not_session_frame",
            Refusal::UnknownType => "unknown_type",
            Refusal::Malformed => "malformed",
            Refusal::UnsupportedVersion => "unsupported_version",
            Refusal::NotAccepting => "not_accepting",
            Refusal::BadMac1 => "bad_mac1",
            Refusal::RateLimited => "rate_limited",
            Refusal::SessionsFull => "sessions_full",
            Refusal::PendingFull => "pending_full",
            Refusal::BadHandshake => "bad_handshake",
            Refusal::BindingRefused => "binding_refused",
            Refusal::IdentityMismatch => "identity_mismatch",
            Refusal::UnknownSession => "unknown_session",
            Refusal::WrongStage => "wrong_stage",
            Refusal::BadCookie => "bad_cookie",
            Refusal::Replayed => "replayed",
            Refusal::TooOld => "too_old",
            Refusal::NonceLimit => "nonce_limit",
            Refusal::BadAuth => "bad_auth",
            Refusal::StaleEpoch => "stale_epoch",
            Refusal::FutureEpoch => "future_epoch",
            Refusal::MalformedPayload => "malformed_payload",
            Refusal::TooManyUnanswered => "too_many_unanswered",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one endpoint. Plain numbers: the endpoint is single-threaded, and a driver copies
/// them out for its metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    refused: [u64; Refusal::ALL.len()],
    /// Frames handed to `handle_input`.
    pub frames_in: u64,
    /// Frames produced for sending.
    pub frames_out: u64,
    pub handshakes_initiated: u64,
    /// Initiator side: handshakes that completed.
    pub handshakes_completed: u64,
    /// Initiator side: handshakes that failed (timeout, refusal, wrong identity).
    pub handshakes_failed: u64,
    pub handshake_retransmits: u64,
    /// Responder side: initiations answered with full handshake work.
    pub handshakes_answered: u64,
    /// Responder side: duplicate initiations answered from the cache, without crypto.
    pub handshake_duplicates: u64,
    /// Responder side: handshakes confirmed by the initiator's first transport frame.
    pub handshakes_confirmed: u64,
    /// Responder side: answered handshakes never confirmed (lost initiators, or replays).
    pub handshakes_unconfirmed: u64,
    /// Initiator side: initiations that carried early data (0-RTT requests).
    pub early_sent: u64,
    /// Responder side: early data acted on (the session established at once).
    pub early_taken: u64,
    /// Responder side: early data not acted on (no wall clock, a clock off by more than the
    /// window, an initiation seen before, or the replay table full): the handshake went on
    /// without it, and the initiator sends those requests after it.
    pub early_declined: u64,
    pub cookies_sent: u64,
    pub cookies_received: u64,
    pub requests_sent: u64,
    pub request_retransmits: u64,
    pub transactions_failed: u64,
    /// Duplicate requests (retransmissions) from peers, answered from the cache or ignored
    /// while the application has not answered yet.
    pub duplicate_requests: u64,
    pub cached_responses_sent: u64,
    /// Responses to requests no longer outstanding (duplicates, or after give-up).
    pub late_responses: u64,
    pub pings_sent: u64,
    pub sessions_closed: u64,
    /// A session's peer address changed (NAT rebinding) on an authenticated frame.
    pub address_changes: u64,
    /// Our send key moved to the next epoch.
    pub rekeys: u64,
    /// A peer's frame of a later epoch authenticated: we moved to its new key.
    pub peer_rekeys: u64,
    /// Events or transmits dropped because the driver did not drain the queues.
    pub queue_overflows: u64,
}

impl Counters {
    pub(crate) fn refuse(&mut self, r: Refusal) {
        self.refused[r.index()] += 1;
    }

    pub fn refused(&self, r: Refusal) -> u64 {
        self.refused[r.index()]
    }

    /// All refusals.
    pub fn refused_total(&self) -> u64 {
        self.refused.iter().sum()
    }

    /// Every counter as `(name, value)`, refusals as `refused_<reason>`.
    pub fn iter(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        let named = [
            ("frames_in", self.frames_in),
            ("frames_out", self.frames_out),
            ("handshakes_initiated", self.handshakes_initiated),
            ("handshakes_completed", self.handshakes_completed),
            ("handshakes_failed", self.handshakes_failed),
            ("handshake_retransmits", self.handshake_retransmits),
            ("handshakes_answered", self.handshakes_answered),
            ("handshake_duplicates", self.handshake_duplicates),
            ("handshakes_confirmed", self.handshakes_confirmed),
            ("handshakes_unconfirmed", self.handshakes_unconfirmed),
            ("early_sent", self.early_sent),
            ("early_taken", self.early_taken),
            ("early_declined", self.early_declined),
            ("cookies_sent", self.cookies_sent),
            ("cookies_received", self.cookies_received),
            ("requests_sent", self.requests_sent),
            ("request_retransmits", self.request_retransmits),
            ("transactions_failed", self.transactions_failed),
            ("duplicate_requests", self.duplicate_requests),
            ("cached_responses_sent", self.cached_responses_sent),
            ("late_responses", self.late_responses),
            ("pings_sent", self.pings_sent),
            ("sessions_closed", self.sessions_closed),
            ("address_changes", self.address_changes),
            ("rekeys", self.rekeys),
            ("peer_rekeys", self.peer_rekeys),
            ("queue_overflows", self.queue_overflows),
        ];
        named.into_iter().map(|(k, v)| (k.to_string(), v)).chain(
            Refusal::ALL
                .iter()
                .map(|r| (format!("refused_{}", r.name()), self.refused(*r))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_indices_match_all() {
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut c = Counters::default();
        c.refuse(Refusal::BadMac1);
        c.refuse(Refusal::BadMac1);
        assert_eq!(c.refused(Refusal::BadMac1), 2);
        assert_eq!(c.refused_total(), 2);
        assert!(c.iter().any(|(k, v)| k == "refused_bad_mac1" && v == 2));
    }
}
