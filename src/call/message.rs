//! The call message set: what two users' clients say to each other to set up, run and end a call
//! (DESIGN §6). Supernodes never parse these: each message is an opaque, signed payload that
//! rides the mesh's routed messages (caller → its supernode → callee's supernode → callee,
//! acknowledged end to end).
//!
//! Every message is a record ([`crate::identity::sign_record`], kind
//! [`RecordKind::CallSignal`]) signed by the sender's identity key, names its recipient and its
//! call, and lives for [`SIGNAL_LIFETIME`]: a supernode cannot forge one, redirect one to
//! another user, or replay one after it expires; within its life, replays are caught by the
//! receiver's call-ID cache and per-call sequence numbers ([`super::phone`]).
//!
//! The flow:
//!
//! ```text
//! caller                                        callee
//!   Invite {noise msg 1, ICE creds, candidates} ->
//!                 <- Ringing {noise msg 2, ICE creds, candidates*}   (* only relayed ones
//!   Confirm {noise msg 3}                        ->                     for a non-contact)
//!   Candidates {...}                            <->  (trickled as they are gathered)
//!                 <- Accept                          (or Reject, Busy; the caller may Cancel)
//!   ... media ...
//!   Bye                                         <->
//! ```
//!
//! Variant order is the wire format (postcard enum indexes): add new variants at the end.

use serde::{Deserialize, Serialize};

pub use super::ice::{Candidate, CandidateKind, Credentials};
use crate::identity::{
    Check, Identity, Record, RecordError, RecordKind, RecordPayload, SignError, Timestamp, UserId,
    sign_record, verify_record,
};

/// Version of the call message set, inside every message.
pub const CALL_VERSION: u8 = 1;

/// How long a call message is valid after it is signed. Long enough for a message to cross the
/// mesh with retransmissions and for ordinary clock skew (the record policy allows 120 s of
/// skew into the future); short, so a captured invite cannot ring anyone later.
pub const SIGNAL_LIFETIME: u64 = 60;

/// A call's identifier: random, chosen by the caller.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub [u8; 16]);

impl std::fmt::Debug for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// One signed call message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Signal {
    pub version: u8,
    pub call: CallId,
    /// The recipient: a message for someone else is refused (a supernode cannot redirect it).
    pub to: UserId,
    pub body: Body,
}

impl RecordPayload for Signal {
    const KIND: RecordKind = RecordKind::CallSignal;
}

/// What a call message says.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Caller → callee: please ring.
    Invite(Offer),
    /// Callee → caller: ringing; the callee's half of the key exchange and ICE.
    Ringing(Offer),
    /// Caller → callee: the last message of the key exchange (Noise XX message 3).
    Confirm {
        noise: Vec<u8>,
    },
    /// Callee → caller: the user picked up.
    Accept,
    /// Callee → caller: the user declined.
    Reject {
        reason: String,
    },
    /// Callee → caller: already in as many calls as it takes.
    Busy,
    /// Caller → callee: hung up before an answer.
    Cancel,
    /// Either way: the call is over.
    Bye {
        reason: String,
    },
    /// Either way: media paused (consent checks keep the path alive).
    Hold,
    Resume,
    /// Either way: more of the sender's candidates (trickle ICE), for ICE generation `ice`.
    Candidates {
        ice: u32,
        candidates: Vec<Candidate>,
    },
    /// Either way: an ICE restart with new credentials (a NAT rebinding or address change).
    Restart {
        ice: u32,
        credentials: Credentials,
        candidates: Vec<Candidate>,
    },
}

impl Body {
    /// A short name for logs, counters and events.
    pub fn name(&self) -> &'static str {
        match self {
            Body::Invite(_) => "invite",
            Body::Ringing(_) => "ringing",
            Body::Confirm { .. } => "confirm",
            Body::Accept => "accept",
            Body::Reject { .. } => "reject",
            Body::Busy => "busy",
            Body::Cancel => "cancel",
            Body::Bye { .. } => "bye",
            Body::Hold => "hold",
            Body::Resume => "resume",
            Body::Candidates { .. } => "candidates",
            Body::Restart { .. } => "restart",
        }
    }
}

/// One side's opening: its key-exchange message, ICE credentials, first candidates and media
/// parameters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// Noise XX message 1 (invite) or 2 (ringing).
    pub noise: Vec<u8>,
    pub credentials: Credentials,
    pub candidates: Vec<Candidate>,
    pub media: MediaParams,
}

/// What the sender's media will be.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaParams {
    /// Only Opus (0) today.
    pub codec: u8,
    /// Packet duration in ms (10, 20, 40 or 60).
    pub frame_ms: u8,
}

impl Default for MediaParams {
    fn default() -> Self {
        MediaParams {
            codec: 0,
            frame_ms: 20,
        }
    }
}

/// A verified call message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub from: UserId,
    /// The sender's sequence number (grows per message of the sender).
    pub seq: u64,
    pub issued_at: u64,
    pub signal: Signal,
}

/// Why a call message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    /// The record does not verify (forged, altered, expired, from the future, malformed).
    #[error("call message refused: {0}")]
    Record(#[from] RecordError),
    /// Made by another version of the call protocol: upgrade the older side.
    #[error("call message version {0} is not supported (this software speaks {CALL_VERSION})")]
    Version(u8),
    /// Signed for another user: a supernode redirected it, or it was replayed to us.
    #[error("call message addressed to {0}, not to us")]
    Misdirected(UserId),
}

impl SignalError {
    /// A short, stable name for counters.
    pub fn code(&self) -> &'static str {
        match self {
            SignalError::Record(e) => e.code(),
            SignalError::Version(_) => "version",
            SignalError::Misdirected(_) => "misdirected",
        }
    }
}

/// Signs `signal` from `identity` at Unix time `now` with sequence number `seq`.
pub fn sign(
    identity: &Identity,
    seq: u64,
    now: u64,
    signal: &Signal,
) -> Result<Vec<u8>, SignError> {
    sign_record(
        identity,
        seq,
        Timestamp(now),
        Timestamp(now + SIGNAL_LIFETIME),
        signal,
    )
}

/// Verifies a call message received at Unix time `now` by user `me`.
pub fn verify(bytes: &[u8], me: &UserId, now: u64) -> Result<Verified, SignalError> {
    let mut check = Check::at(Timestamp(now));
    check.policy.max_lifetime = SIGNAL_LIFETIME;
    let rec: Record<Signal> = verify_record(bytes, &check)?;
    if rec.payload.version != CALL_VERSION {
        return Err(SignalError::Version(rec.payload.version));
    }
    if rec.payload.to != *me {
        return Err(SignalError::Misdirected(rec.payload.to));
    }
    Ok(Verified {
        from: rec.id,
        seq: rec.seq,
        issued_at: rec.issued_at.0,
        signal: rec.payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(n: u8) -> Identity {
        Identity::from_seed(&[n; 32])
    }

    fn invite(to: UserId) -> Signal {
        Signal {
            version: CALL_VERSION,
            call: CallId([7; 16]),
            to,
            body: Body::Invite(Offer {
                noise: vec![1; 32],
                credentials: Credentials {
                    ufrag: "abcd".into(),
                    pwd: "0123456789abcdefghijkl".into(),
                },
                candidates: vec![Candidate {
                    kind: CandidateKind::Host,
                    addr: "10.0.0.2:5000".parse().unwrap(),
                    priority: 2_130_706_431,
                    foundation: 1,
                }],
                media: MediaParams::default(),
            }),
        }
    }

    #[test]
    fn signed_messages_verify_for_their_recipient_only() {
        let (alice, bob, eve) = (ident(1), ident(2), ident(3));
        let t = 1_800_000_000;
        let bytes = sign(&alice, 1, t, &invite(bob.id())).unwrap();
        assert!(
            bytes.len() < 400,
            "an invite with one candidate is small: {}",
            bytes.len()
        );
        let v = verify(&bytes, &bob.id(), t + 1).unwrap();
        assert_eq!(v.from, alice.id());
        assert_eq!(v.signal, invite(bob.id()));
        // Redirected to Eve: refused.
        assert!(matches!(
            verify(&bytes, &eve.id(), t + 1),
            Err(SignalError::Misdirected(_))
        ));
        // Expired after its lifetime; from the future beyond the skew.
        assert_eq!(
            verify(&bytes, &bob.id(), t + SIGNAL_LIFETIME + 1)
                .unwrap_err()
                .code(),
            "expired"
        );
        assert_eq!(
            verify(&bytes, &bob.id(), t - 1000).unwrap_err().code(),
            "from_the_future"
        );
        // Any flipped byte breaks it.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(verify(&b, &bob.id(), t + 1).is_err(), "byte {i}");
        }
    }

    #[test]
    fn a_long_lived_message_is_refused() {
        let (alice, bob) = (ident(1), ident(2));
        let t = 1_800_000_000;
        let bytes = sign_record(
            &alice,
            1,
            Timestamp(t),
            Timestamp(t + 3600),
            &invite(bob.id()),
        )
        .unwrap();
        assert_eq!(
            verify(&bytes, &bob.id(), t).unwrap_err().code(),
            "bad_lifetime"
        );
    }
}
