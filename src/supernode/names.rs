//! Human names as this supernode homes them: ordering claims when we are the name's first
//! home, keeping stamped claims replicated to us, and answering who holds a name.
//!
//! The claims live in the [`Directory`] with the entries (both move together when homes
//! change); this module holds the rules. First come wins: the name's first home is its
//! orderer and stamps each admitted claim with its order; the other homes keep whichever
//! stamped claim wins by the replicas' rule ([`Directory::merge_name`]).

use crate::directory::{Directory, Name};
use crate::identity::{
    Check, ClaimRefusal, ClaimStamp, HeldClaim, NameClaim, Timestamp, UserId, admit_claim,
    verify_record,
};
use crate::signal::Response;

/// Why a claim was refused: the reason to count, and the answer to give.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Refused {
    pub counted: String,
    pub response: Response,
}

/// The live holder of `name` (normalised) here, if any.
pub(super) fn holder(dir: &Directory, name: &str, now: Timestamp) -> Option<UserId> {
    dir.name(name)
        .filter(|n| n.held.is_live(now))
        .map(|n| n.held.claimant)
}

/// We are the name's first home and orderer: admits `claim` (taken by someone else, stale,
/// or badly named: refused) and stamps it with orderer `me` and the next order. The caller
/// stores and replicates it ([`store`]).
pub(super) fn order(
    dir: &mut Directory,
    me: UserId,
    claim: &[u8],
    now: Timestamp,
) -> Result<(String, ClaimStamp), Refused> {
    let rec = verify_record::<NameClaim>(claim, &Check::at(now)).map_err(|e| {
        let reason = format!("claim refused: {}", e.code());
        Refused {
            counted: reason.clone(),
            response: Response::Error { code: 403, reason },
        }
    })?;
    let name = rec.payload.name.clone();
    let held = dir.name(&name).map(|n| n.held.clone());
    if let Err(why) = admit_claim(&name, held.as_ref(), &rec, now) {
        let counted = match why {
            ClaimRefusal::Taken { .. } => "claim taken",
            ClaimRefusal::Stale { .. } => "claim stale",
            ClaimRefusal::BadName(_) | ClaimRefusal::OtherName => "claim bad name",
        };
        return Err(Refused {
            counted: counted.into(),
            response: Response::Error {
                code: 409,
                reason: why.to_string(),
            },
        });
    }
    let stamp = ClaimStamp {
        orderer: me,
        order: dir.next_order(),
        received_at: now,
    };
    Ok((name, stamp))
}

/// Keeps a stamped claim by the replicas' rule among the name's `homes`; `false` if the
/// record is bad.
pub(super) fn store(
    dir: &mut Directory,
    claim: &[u8],
    stamp: ClaimStamp,
    now: Timestamp,
    homes: impl FnOnce(&str) -> Vec<UserId>,
) -> bool {
    let Ok(rec) = verify_record::<NameClaim>(claim, &Check::at(now)) else {
        return false;
    };
    let homes = homes(&rec.payload.name);
    let name = Name {
        held: HeldClaim::new(&rec, stamp),
        record: claim.to_vec(),
    };
    dir.merge_name(name, &homes, now);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Identity, sign_record};

    const NOW: u64 = 1_700_000_000;

    fn who(n: u8) -> Identity {
        Identity::from_seed(&[n; 32])
    }

    fn claim(by: &Identity, seq: u64, name: &str) -> Vec<u8> {
        let payload = NameClaim { name: name.into() };
        sign_record(by, seq, Timestamp(NOW), Timestamp(NOW + 3600), &payload).unwrap()
    }

    /// Orders and stores `claim` at the orderer `me`, as the supernode does.
    fn order_and_store(dir: &mut Directory, me: UserId, c: &[u8]) -> Result<String, Refused> {
        let (name, stamp) = order(dir, me, c, Timestamp(NOW))?;
        assert!(store(dir, c, stamp, Timestamp(NOW), |_| vec![me]));
        Ok(name)
    }

    #[test]
    fn first_claim_wins_and_others_are_refused() {
        let me = who(9).id();
        let (alice, bob) = (who(1), who(2));
        let mut dir = Directory::new(10);
        assert_eq!(holder(&dir, "alice", Timestamp(NOW)), None);
        let name = order_and_store(&mut dir, me, &claim(&alice, 1, "alice")).unwrap();
        assert_eq!(name, "alice");
        assert_eq!(holder(&dir, "alice", Timestamp(NOW)), Some(alice.id()));

        let refused = order_and_store(&mut dir, me, &claim(&bob, 5, "alice")).unwrap_err();
        assert_eq!(refused.counted, "claim taken");
        assert!(matches!(
            refused.response,
            Response::Error { code: 409, .. }
        ));
        assert_eq!(holder(&dir, "alice", Timestamp(NOW)), Some(alice.id()));
    }

    #[test]
    fn the_holder_renews_with_a_newer_claim_only() {
        let me = who(9).id();
        let alice = who(1);
        let mut dir = Directory::new(10);
        order_and_store(&mut dir, me, &claim(&alice, 2, "alice")).unwrap();
        let stale = order_and_store(&mut dir, me, &claim(&alice, 2, "alice")).unwrap_err();
        assert_eq!(stale.counted, "claim stale");
        assert!(order_and_store(&mut dir, me, &claim(&alice, 3, "alice")).is_ok());
    }

    #[test]
    fn orders_increase_and_bad_records_are_refused() {
        let me = who(9).id();
        let mut dir = Directory::new(10);
        let (_, a) = order(&mut dir, me, &claim(&who(1), 1, "a"), Timestamp(NOW)).unwrap();
        let (_, b) = order(&mut dir, me, &claim(&who(2), 1, "b"), Timestamp(NOW)).unwrap();
        assert!(b.order > a.order);
        assert_eq!(a.orderer, me);

        let mut bad = claim(&who(1), 1, "c");
        *bad.last_mut().unwrap() ^= 1;
        let refused = order(&mut dir, me, &bad, Timestamp(NOW)).unwrap_err();
        assert!(refused.counted.starts_with("claim refused: "));
        assert!(matches!(
            refused.response,
            Response::Error { code: 403, .. }
        ));
        assert!(!store(&mut dir, &bad, a, Timestamp(NOW), |_| vec![me]));
        assert_eq!(holder(&dir, "c", Timestamp(NOW)), None);
    }

    #[test]
    fn an_expired_claim_holds_nothing() {
        let me = who(9).id();
        let mut dir = Directory::new(10);
        order_and_store(&mut dir, me, &claim(&who(1), 1, "alice")).unwrap();
        assert_eq!(holder(&dir, "alice", Timestamp(NOW + 7200)), None);
    }
}
