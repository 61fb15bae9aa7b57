//! Human names: first-come claims, and the rule that orders competing claims.
//!
//! A user claims a name with a signed [`NameClaim`] record. The name's home supernodes are
//! chosen by hashing the name ([`name_key`], rendezvous hashing in the directory); the **first**
//! home is the *orderer*: it admits claims one at a time ([`admit_claim`]) and stamps each
//! admitted claim with its own counter ([`ClaimStamp`]) before replicating it. Whoever the orderer
//! admitted first holds the name; replicas that see two stamped claims for one name pick the
//! same winner with [`winner`].
//!
//! The claim's own `issued_at` never decides anything: it is the claimant's clock, and a claim
//! backdated by its sender would otherwise take a name someone already holds. Only the orderer's
//! receive order does. A holder keeps the name by renewing its claim (a newer sequence number)
//! before it expires; an expired claim frees the name.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::id::UserId;
use super::record::{Record, RecordKind, RecordPayload, Timestamp};

/// Longest name, in bytes.
pub const MAX_NAME_LEN: usize = 32;
const NAME_KEY_DOMAIN: &[u8] = b"voxmesh/v1/name\0";

/// The payload of a name claim record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameClaim {
    /// The name, in normal form ([`normalize_name`]).
    pub name: String,
}

impl RecordPayload for NameClaim {
    const KIND: RecordKind = RecordKind::NameClaim;
}

/// Why a string is not a valid name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a name cannot be empty")]
    Empty,
    #[error("a name is at most {MAX_NAME_LEN} bytes")]
    TooLong,
    /// Names are ASCII letters, digits, `.`, `-` and `_`, starting with a letter, so that no two
    /// names look alike on screen (no Unicode confusables) and none looks like an ID.
    #[error("{0:?} is not allowed in a name (letters, digits, '.', '-', '_'; first a letter)")]
    BadChar(char),
    /// Looks like a user ID (`vx1...`); IDs cannot be claimed as names.
    #[error("a name cannot look like a user ID")]
    LooksLikeId,
    /// A claim must carry the name in normal form (lower case, no surrounding spaces).
    #[error("name is not in normal form (lower case, trimmed)")]
    NotNormal,
}

/// The normal form of a name: lower case; ASCII letters, digits, `.`, `-`, `_`; first a letter;
/// at most [`MAX_NAME_LEN`] bytes; not starting with `vx1` (which would look like an ID).
pub fn normalize_name(name: &str) -> Result<String, NameError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    let lower = name.to_ascii_lowercase();
    for (i, c) in lower.chars().enumerate() {
        let ok = c.is_ascii_lowercase() || (i > 0 && (c.is_ascii_digit() || "._-".contains(c)));
        if !ok {
            return Err(NameError::BadChar(c));
        }
    }
    if lower.starts_with("vx1") {
        return Err(NameError::LooksLikeId);
    }
    Ok(lower)
}

/// The hash that places a name on the ring of supernodes (rendezvous hashing uses it as the key).
pub fn name_key(normalized: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(NAME_KEY_DOMAIN);
    h.update(normalized.as_bytes());
    h.finalize().into()
}

/// The orderer's mark on a claim it admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClaimStamp {
    /// The supernode that admitted the claim (the name's first home at that time).
    pub orderer: UserId,
    /// The orderer's counter: strictly increasing over every claim it admits.
    pub order: u64,
    /// The orderer's clock when it admitted the claim; compares claims stamped by different
    /// orderers (after a membership change), and is a supernode's clock, not the claimant's.
    pub received_at: Timestamp,
}

/// A claim as the directory keeps it: who, which record, and the orderer's stamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldClaim {
    pub name: String,
    pub claimant: UserId,
    pub seq: u64,
    pub expires_at: Timestamp,
    /// Digest of the claim record (the last tie-break).
    pub digest: [u8; 32],
    pub stamp: ClaimStamp,
}

impl HeldClaim {
    /// A verified claim record with the orderer's stamp.
    pub fn new(record: &Record<NameClaim>, stamp: ClaimStamp) -> HeldClaim {
        HeldClaim {
            name: record.payload.name.clone(),
            claimant: record.id,
            seq: record.seq,
            expires_at: record.expires_at,
            digest: record.digest,
            stamp,
        }
    }

    pub fn is_live(&self, now: Timestamp) -> bool {
        self.expires_at > now
    }
}

/// What the orderer does with an incoming, already verified claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Nobody holds the name (or the holder's claim expired): the claim takes it.
    New,
    /// The holder renews its own claim (newer sequence number).
    Renewal,
}

/// Why the orderer refused a claim.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimRefusal {
    /// Another user holds the name, whatever time the claim says it was made.
    #[error("the name is held by {holder}")]
    Taken { holder: UserId },
    /// The holder's own claim, but not newer than the one held (a replay or a duplicate).
    #[error("stale claim: sequence {seq}, holding {held}")]
    Stale { seq: u64, held: u64 },
    /// The claim's name is not in normal form.
    #[error("invalid name: {0}")]
    BadName(#[from] NameError),
    /// The claim is for a different name than the slot it was offered for.
    #[error("claim is for another name")]
    OtherName,
}

/// The orderer's rule: does `claim` (verified, for `name`) take or renew the name, given what is
/// `held` now? Called with claims in the order they arrived; the caller stamps admitted claims.
pub fn admit_claim(
    name: &str,
    held: Option<&HeldClaim>,
    claim: &Record<NameClaim>,
    now: Timestamp,
) -> Result<Admission, ClaimRefusal> {
    if normalize_name(&claim.payload.name)? != claim.payload.name {
        return Err(ClaimRefusal::BadName(NameError::NotNormal));
    }
    if claim.payload.name != name {
        return Err(ClaimRefusal::OtherName);
    }
    match held {
        Some(h) if h.is_live(now) && h.claimant != claim.id => {
            Err(ClaimRefusal::Taken { holder: h.claimant })
        }
        Some(h) if h.is_live(now) => {
            if claim.seq > h.seq {
                Ok(Admission::Renewal)
            } else {
                Err(ClaimRefusal::Stale {
                    seq: claim.seq,
                    held: h.seq,
                })
            }
        }
        _ => Ok(Admission::New),
    }
}

/// The replicas' rule: of two stamped claims for the same name, which holds it at `now`? Pure and
/// symmetric (`winner(a, b)` and `winner(b, a)` pick the same claim), so every replica converges
/// whatever order the claims reached it in.
///
/// 1. A live claim beats an expired one.
/// 2. The same claimant's claims: the higher sequence number (a renewal).
/// 3. Claims stamped by the same orderer: the lower order (admitted first).
/// 4. Stamped by different orderers (the first home changed between them): the earlier orderer
///    receive time, then the orderer that ranks first in `homes` (the name's current homes, in
///    rendezvous order), then the smaller record digest.
///
/// The claims' own `issued_at` appears nowhere.
pub fn winner<'a>(
    a: &'a HeldClaim,
    b: &'a HeldClaim,
    homes: &[UserId],
    now: Timestamp,
) -> &'a HeldClaim {
    match compare(a, b, homes, now) {
        Ordering::Greater => b,
        _ => a,
    }
}

/// `Less` when `a` wins.
fn compare(a: &HeldClaim, b: &HeldClaim, homes: &[UserId], now: Timestamp) -> Ordering {
    let live = b.is_live(now).cmp(&a.is_live(now));
    if live != Ordering::Equal {
        return live;
    }
    if a.claimant == b.claimant {
        return b.seq.cmp(&a.seq).then(a.digest.cmp(&b.digest));
    }
    if a.stamp.orderer == b.stamp.orderer {
        return a.stamp.order.cmp(&b.stamp.order);
    }
    let rank = |id: &UserId| homes.iter().position(|h| h == id).unwrap_or(usize::MAX);
    a.stamp
        .received_at
        .cmp(&b.stamp.received_at)
        .then(rank(&a.stamp.orderer).cmp(&rank(&b.stamp.orderer)))
        .then(a.digest.cmp(&b.digest))
}
