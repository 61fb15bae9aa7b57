//! Signed records: anything a node claims (registration, name, presence), in a versioned,
//! compact binary envelope signed by the claimant's identity key.
//!
//! # Encoding
//!
//! A record is `body || signature`: `body` is the postcard encoding of [`Envelope`] (version,
//! kind, signer key, sequence number, issued-at, expiry, kind-specific payload bytes) and the
//! signature is Ed25519 over `domain(kind) || body`. A registration with a few addresses is about
//! 200 bytes. postcard is serde's compact binary format: varint integers, no field names, no
//! schema negotiation; the version byte in the envelope is what lets the format change.
//!
//! # Domain separation
//!
//! Each kind signs under its own domain string (`voxmesh/v1/record/<kind>\0`), distinct from the
//! Noise binding's ([`super::keys::BINDING_DOMAIN`]), so no signature made for one purpose (or
//! one kind) verifies as another, even if the bytes happened to parse as both.
//!
//! # Verification, in order (cheap checks first, so forged floods cost no signature check)
//!
//! size → envelope → version → kind → expected signer (wrong key) → time (from the future,
//! expired, lifetime) → sequence (stale) → signature → payload. Every refusal is a
//! [`RecordError`] with a stable [`RecordError::code`] for counters.
//!
//! Times are Unix seconds ([`Timestamp`]) passed in by the caller: nothing here reads a clock.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::id::{PublicKey, UserId};
use super::keys::Identity;

/// Largest record accepted or produced, in bytes. Records travel in single datagrams.
pub const MAX_RECORD_LEN: usize = 1024;
/// The envelope version this code writes and reads.
pub const RECORD_VERSION: u8 = 1;
const SIGNATURE_LEN: usize = 64;

/// Seconds since the Unix epoch (wall-clock time, as records carry it).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The system clock, for drivers and binaries (protocol cores take time as input).
    pub fn now() -> Timestamp {
        Timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
    }

    pub fn plus(self, secs: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(secs))
    }
}

/// Unix time for a sans-IO core: told the Unix time once, with the monotonic instant it
/// corresponds to, it counts on from there, so simulated time moves both clocks together.
#[derive(Clone, Copy, Debug)]
pub struct UnixClock {
    start: std::time::Instant,
    unix: u64,
}

impl UnixClock {
    pub fn new(start: std::time::Instant, unix: u64) -> UnixClock {
        UnixClock { start, unix }
    }

    /// Unix seconds at `now`.
    pub fn at(&self, now: std::time::Instant) -> u64 {
        self.unix + now.saturating_duration_since(self.start).as_secs()
    }
}

/// What a record is about. The discriminant is the wire value; the name is part of the
/// signature's domain string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// A user's registration at its home supernodes (addresses, current supernode).
    Registration = 1,
    /// A claim on a human name ([`super::name`]).
    NameClaim = 2,
    /// A presence status.
    Presence = 3,
    /// A supernode's membership entry (address, node key) for the mesh.
    Membership = 4,
    /// A call signalling message, end to end between two users ([`crate::call::message`]).
    CallSignal = 5,
}

impl RecordKind {
    pub fn from_u8(v: u8) -> Option<RecordKind> {
        Some(match v {
            1 => RecordKind::Registration,
            2 => RecordKind::NameClaim,
            3 => RecordKind::Presence,
            4 => RecordKind::Membership,
            5 => RecordKind::CallSignal,
            _ => return None,
        })
    }

    /// The signature domain for records of this kind.
    pub fn domain(self) -> &'static [u8] {
        match self {
            RecordKind::Registration => b"voxmesh/v1/record/registration\0",
            RecordKind::NameClaim => b"voxmesh/v1/record/name-claim\0",
            RecordKind::Presence => b"voxmesh/v1/record/presence\0",
            RecordKind::Membership => b"voxmesh/v1/record/membership\0",
            RecordKind::CallSignal => b"voxmesh/v1/record/call-signal\0",
        }
    }
}

/// A payload type that can be carried in a record.
pub trait RecordPayload: Serialize + DeserializeOwned {
    const KIND: RecordKind;
}

/// The signed part of a record.
#[derive(Serialize, Deserialize, Debug)]
struct Envelope<'a> {
    version: u8,
    kind: u8,
    signer: [u8; 32],
    /// Incremented by the signer for every new record of this kind; a verifier that has seen
    /// sequence `n` refuses anything at or below `n`, which defeats replay of older records.
    seq: u64,
    issued_at: u64,
    expires_at: u64,
    #[serde(borrow)]
    payload: &'a [u8],
}

/// How strict verification is about time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordPolicy {
    /// How far in the future `issued_at` may be (clock skew between signer and verifier).
    pub max_clock_skew: u64,
    /// Longest `expires_at - issued_at` accepted: a stolen record cannot outlive this.
    pub max_lifetime: u64,
}

impl Default for RecordPolicy {
    fn default() -> Self {
        RecordPolicy {
            max_clock_skew: 120,
            max_lifetime: 30 * 24 * 3600,
        }
    }
}

/// What a verifier checks a record against.
#[derive(Clone, Copy, Debug)]
pub struct Check<'a> {
    pub now: Timestamp,
    /// The ID the record must be signed by (the user it is about), when known.
    pub expected_signer: Option<&'a UserId>,
    /// The newest sequence number already accepted from this signer for this kind: the record
    /// must be newer.
    pub newer_than: Option<u64>,
    pub policy: RecordPolicy,
}

impl Check<'_> {
    /// Only time checks: no expected signer, no sequence history.
    pub fn at(now: Timestamp) -> Check<'static> {
        Check {
            now,
            expected_signer: None,
            newer_than: None,
            policy: RecordPolicy::default(),
        }
    }
}

/// A verified record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<T> {
    pub signer: PublicKey,
    pub id: UserId,
    pub seq: u64,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub payload: T,
    /// SHA-256 of the whole encoded record: a stable name for it (deduplication, tie-breaks).
    pub digest: [u8; 32],
}

/// Why a record was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Longer than [`MAX_RECORD_LEN`]: refused before any parsing.
    #[error("record of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// The envelope does not parse: damaged, truncated, or not a record.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    /// Written by a newer (or older) version of the format; upgrade the software.
    #[error("record version {0} is not supported (this software reads version {RECORD_VERSION})")]
    UnsupportedVersion(u8),
    /// A record of another kind (for example a presence record offered as a registration).
    #[error("record kind {found} where {expected:?} was expected")]
    WrongKind { expected: RecordKind, found: u8 },
    /// Signed by a valid key, but not the key of the user it must come from.
    #[error("record is signed by {found}, not by {expected}")]
    WrongKey { expected: UserId, found: UserId },
    /// `issued_at` lies beyond now plus the allowed skew: the signer's clock is wrong, or the
    /// record was made to outlive its welcome.
    #[error("record issued at {issued_at} is from the future (now {now})")]
    FromTheFuture { issued_at: u64, now: u64 },
    /// `expires_at` has passed: the signer must send a fresh record.
    #[error("record expired at {expires_at} (now {now})")]
    Expired { expires_at: u64, now: u64 },
    /// Valid for longer than the policy allows (or expires before it is issued).
    #[error("record lifetime {lifetime} s exceeds the {max} s limit")]
    BadLifetime { lifetime: u64, max: u64 },
    /// Sequence number not newer than one already accepted: a replay of an older record.
    #[error("stale record: sequence {seq}, already have {newest}")]
    StaleSequence { seq: u64, newest: u64 },
    /// The signature does not verify: forged, altered, or signed by another key than the one
    /// the record names.
    #[error("bad signature")]
    BadSignature,
    /// The signature is good but the payload does not decode as the expected type.
    #[error("bad payload: {0}")]
    BadPayload(&'static str),
}

impl RecordError {
    /// A short, stable name for counters and logs.
    pub fn code(&self) -> &'static str {
        match self {
            RecordError::TooLarge { .. } => "too_large",
            RecordError::Malformed(_) => "malformed",
            RecordError::UnsupportedVersion(_) => "unsupported_version",
            RecordError::WrongKind { .. } => "wrong_kind",
            RecordError::WrongKey { .. } => "wrong_key",
            RecordError::FromTheFuture { .. } => "from_the_future",
            RecordError::Expired { .. } => "expired",
            RecordError::BadLifetime { .. } => "bad_lifetime",
            RecordError::StaleSequence { .. } => "stale_sequence",
            RecordError::BadSignature => "bad_signature",
            RecordError::BadPayload(_) => "bad_payload",
        }
    }
}

/// Why a record could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The encoded record would exceed [`MAX_RECORD_LEN`]: shorten the payload.
    #[error("record of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// `expires_at` is not after `issued_at`.
    #[error("record expires before it is issued")]
    BadLifetime,
    /// The payload could not be serialized.
    #[error("payload does not serialize: {0}")]
    Payload(String),
}

/// Signs `payload` as a record of `T::KIND`, valid from `issued_at` to `expires_at`.
pub fn sign_record<T: RecordPayload>(
    identity: &Identity,
    seq: u64,
    issued_at: Timestamp,
    expires_at: Timestamp,
    payload: &T,
) -> Result<Vec<u8>, SignError> {
    let payload = postcard::to_stdvec(payload).map_err(|e| SignError::Payload(e.to_string()))?;
    sign_raw(identity, T::KIND, seq, issued_at, expires_at, &payload)
}

/// Signs raw payload bytes as a record of `kind` (for tests and for kinds without a Rust type).
pub fn sign_raw(
    identity: &Identity,
    kind: RecordKind,
    seq: u64,
    issued_at: Timestamp,
    expires_at: Timestamp,
    payload: &[u8],
) -> Result<Vec<u8>, SignError> {
    if expires_at <= issued_at {
        return Err(SignError::BadLifetime);
    }
    let env = Envelope {
        version: RECORD_VERSION,
        kind: kind as u8,
        signer: *identity.public().as_bytes(),
        seq,
        issued_at: issued_at.0,
        expires_at: expires_at.0,
        payload,
    };
    let mut out = postcard::to_stdvec(&env).map_err(|e| SignError::Payload(e.to_string()))?;
    let len = out.len() + SIGNATURE_LEN;
    if len > MAX_RECORD_LEN {
        return Err(SignError::TooLarge {
            len,
            max: MAX_RECORD_LEN,
        });
    }
    let sig = identity.sign(kind.domain(), &out);
    out.extend_from_slice(&sig);
    Ok(out)
}

/// Verifies `bytes` as a record of `T::KIND` against `check` and decodes its payload.
pub fn verify_record<T: RecordPayload>(
    bytes: &[u8],
    check: &Check,
) -> Result<Record<T>, RecordError> {
    open_record(bytes, check, true)
}

/// [`verify_record`] for bytes whose signature the caller already verified: it holds these
/// exact bytes, kept only after a full [`verify_record`]. Every other check runs again (kind,
/// signer, times, sequence); the Ed25519 verification does not (same bytes, same answer).
pub fn recheck_record<T: RecordPayload>(
    bytes: &[u8],
    check: &Check,
) -> Result<Record<T>, RecordError> {
    open_record(bytes, check, false)
}

fn open_record<T: RecordPayload>(
    bytes: &[u8],
    check: &Check,
    signature: bool,
) -> Result<Record<T>, RecordError> {
    let (env, signer) = verify_envelope(bytes, T::KIND, check, signature)?;
    let payload: T = postcard::from_bytes(env.payload)
        .map_err(|_| RecordError::BadPayload("does not decode"))?;
    Ok(Record {
        id: signer.id(),
        signer,
        seq: env.seq,
        issued_at: Timestamp(env.issued_at),
        expires_at: Timestamp(env.expires_at),
        payload,
        digest: Sha256::digest(bytes).into(),
    })
}

/// Verifies a record of `kind` and returns its raw payload bytes.
pub fn verify_raw<'a>(
    bytes: &'a [u8],
    kind: RecordKind,
    check: &Check,
) -> Result<Record<&'a [u8]>, RecordError> {
    let (env, signer) = verify_envelope(bytes, kind, check, true)?;
    Ok(Record {
        id: signer.id(),
        signer,
        seq: env.seq,
        issued_at: Timestamp(env.issued_at),
        expires_at: Timestamp(env.expires_at),
        payload: env.payload,
        digest: Sha256::digest(bytes).into(),
    })
}

fn verify_envelope<'a>(
    bytes: &'a [u8],
    kind: RecordKind,
    check: &Check,
    signature: bool,
) -> Result<(Envelope<'a>, PublicKey), RecordError> {
    if bytes.len() > MAX_RECORD_LEN {
        return Err(RecordError::TooLarge {
            len: bytes.len(),
            max: MAX_RECORD_LEN,
        });
    }
    if bytes.len() < SIGNATURE_LEN + 1 {
        return Err(RecordError::Malformed("too short"));
    }
    let (body, sig) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
    // The version is the first byte whatever the rest says, so check it before the envelope.
    if body[0] != RECORD_VERSION {
        return Err(RecordError::UnsupportedVersion(body[0]));
    }
    let (env, rest): (Envelope, _) =
        postcard::take_from_bytes(body).map_err(|_| RecordError::Malformed("bad envelope"))?;
    if !rest.is_empty() {
        return Err(RecordError::Malformed("trailing bytes"));
    }
    if env.kind != kind as u8 {
        return Err(RecordError::WrongKind {
            expected: kind,
            found: env.kind,
        });
    }
    let signer = PublicKey::from_bytes(&env.signer).map_err(|_| RecordError::BadSignature)?;
    if let Some(expected) = check.expected_signer {
        let found = signer.id();
        if found != *expected {
            return Err(RecordError::WrongKey {
                expected: *expected,
                found,
            });
        }
    }
    let now = check.now.0;
    if env.issued_at > now.saturating_add(check.policy.max_clock_skew) {
        return Err(RecordError::FromTheFuture {
            issued_at: env.issued_at,
            now,
        });
    }
    if env.expires_at <= now {
        return Err(RecordError::Expired {
            expires_at: env.expires_at,
            now,
        });
    }
    let lifetime = env.expires_at.saturating_sub(env.issued_at);
    if env.expires_at <= env.issued_at || lifetime > check.policy.max_lifetime {
        return Err(RecordError::BadLifetime {
            lifetime,
            max: check.policy.max_lifetime,
        });
    }
    if let Some(newest) = check.newer_than
        && env.seq <= newest
    {
        return Err(RecordError::StaleSequence {
            seq: env.seq,
            newest,
        });
    }
    if !signature {
        return Ok((env, signer));
    }
    let domain = kind.domain();
    let mut msg = Vec::with_capacity(domain.len() + body.len());
    msg.extend_from_slice(domain);
    msg.extend_from_slice(body);
    let sig = ed25519_dalek::Signature::from_bytes(sig.try_into().expect("64 bytes"));
    signer
        .verifying_key()
        .verify_strict(&msg, &sig)
        .map_err(|_| RecordError::BadSignature)?;
    Ok((env, signer))
}
