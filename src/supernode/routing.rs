//! Requests this supernode is waiting on, and the decisions that lookups and routed payloads
//! turn on.
//!
//! Every request we send (to a peer supernode or a client) is remembered by transaction ID
//! with a continuation ([`Cont`]) saying whom its answer goes to. A lookup asks the user's
//! homes in rendezvous order until one has the entry; a routed payload is a lookup whose entry
//! says where to forward it ([`after_lookup`]).

use std::collections::HashMap;

use crate::identity::UserId;
use crate::session::{SessionId, TransactionId};
use crate::signal::{Entry, Response};

/// The answer to a supernode-to-supernode request from a peer the mesh has not told us about
/// (yet): a supernode just promoted reaches the homes of its first clients before its join has
/// gossiped to them. "Too early": the sender tries again once the join has spread.
pub(super) const NOT_YET_MEMBER: u16 = 425;

/// A request of ours waiting for its answer.
#[derive(Clone, Debug)]
pub(super) enum Cont {
    /// A client's lookup (or the lookup before a route), trying homes in order.
    Lookup {
        client: SessionId,
        txn: TransactionId,
        user: UserId,
        rest: Vec<UserId>,
        name: Option<String>,
        route: Option<(UserId, Vec<u8>)>,
    },
    LookupName {
        client: SessionId,
        txn: TransactionId,
        name: String,
        rest: Vec<UserId>,
    },
    /// A claim sent to the name's orderer: relay its answer.
    Claim {
        client: SessionId,
        txn: TransactionId,
    },
    /// A forward to the recipient's supernode: relay its answer.
    Forward {
        client: SessionId,
        txn: TransactionId,
    },
    /// A delivery to our client: answer whoever asked.
    Deliver {
        asker: SessionId,
        txn: TransactionId,
    },
    /// A client's watch, answered when the first home confirms it.
    Watch {
        client: SessionId,
        txn: TransactionId,
    },
    /// Nothing waits on this (replication, unwatching).
    Fire,
    /// An entry replicated to `home`, one of `user`'s homes (`sends`: how many times so far):
    /// a home that does not know us as a member yet ([`NOT_YET_MEMBER`]) gets it again later.
    Store {
        home: UserId,
        user: UserId,
        sends: u8,
    },
    /// A failover notice to a client ([`Message::PrimaryLost`], [`Message::StandbyLost`]): sent
    /// again when unanswered, until the client acknowledges or its session dies.
    ///
    /// [`Message::PrimaryLost`]: crate::signal::Message::PrimaryLost
    /// [`Message::StandbyLost`]: crate::signal::Message::StandbyLost
    Notice { client: SessionId, body: Vec<u8> },
}

/// Our requests in flight, by transaction ID.
#[derive(Default)]
pub(super) struct Pending {
    conts: HashMap<TransactionId, Cont>,
}

impl Pending {
    /// Request `txn` went; `cont` waits on its answer.
    pub fn insert(&mut self, txn: TransactionId, cont: Cont) {
        self.conts.insert(txn, cont);
    }

    /// The answer to `txn` came (or never will): what waited on it, if it was ours.
    pub fn take(&mut self, txn: &TransactionId) -> Option<Cont> {
        self.conts.remove(txn)
    }
}

/// What a home's answer to a lookup of `user` means.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum HomeAnswer {
    /// The user's entry, signed by the user.
    Found(Entry),
    /// Ask the next home; count the reason if there is one (a home that hands out an entry
    /// the user did not sign is lying or broken).
    Next(Option<&'static str>),
}

/// Judges a home's answer to a lookup of `user` (`None`: no answer).
pub(super) fn home_answer(user: UserId, resp: Option<Response>) -> HomeAnswer {
    match resp {
        Some(Response::Entry(e)) if e.signer() == Some(user) => HomeAnswer::Found(e),
        Some(Response::Entry(_)) => HomeAnswer::Next(Some("bad entry from a home")),
        // Not there, or that home is gone.
        Some(Response::NotFound | Response::Error { .. }) | None => HomeAnswer::Next(None),
        Some(_) => HomeAnswer::Next(Some("unexpected answer")),
    }
}

/// What to do once a lookup ends with `entry`.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum AfterLookup {
    /// Answer the client.
    Answer(Response),
    /// Refuse with this code and reason.
    Refuse(u16, &'static str),
    /// Forward the routed payload to the user's supernode.
    Forward(UserId),
}

/// A lookup by supernode `me` ended with `entry`; `routing` if a payload waits to be routed.
pub(super) fn after_lookup(me: UserId, entry: Option<Entry>, routing: bool) -> AfterLookup {
    match (routing, entry) {
        (false, Some(e)) => AfterLookup::Answer(Response::Entry(e)),
        (false, None) => AfterLookup::Answer(Response::NotFound),
        (true, None) => AfterLookup::Refuse(404, "unknown user"),
        // Offline, stale, or "connected here" while it is not (we checked our clients first).
        (true, Some(e)) if !e.online || e.stale || e.via == me => {
            AfterLookup::Refuse(410, "user offline")
        }
        (true, Some(e)) => AfterLookup::Forward(e.via),
    }
}

/// The answer to relay to a client for its claim or forward (`None`: no answer came).
pub(super) fn relayed(resp: Option<Response>) -> Response {
    resp.unwrap_or(Response::Error {
        code: 504,
        reason: "no answer from the supernode".into(),
    })
}

/// The answer to give whoever routed a payload our client acknowledged (or did not).
pub(super) fn delivered(resp: Option<Response>) -> Response {
    match resp {
        Some(Response::Ok) => Response::Routed,
        Some(other) => other,
        None => Response::Error {
            code: 504,
            reason: "the user's client did not acknowledge".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Identity, Timestamp, sign_record};
    use crate::signal::Registration;

    fn who(n: u8) -> Identity {
        Identity::from_seed(&[n; 32])
    }

    fn entry(user: &Identity, via: UserId, online: bool, stale: bool) -> Entry {
        let payload = Registration {
            supernode: via,
            addrs: Vec::new(),
        };
        let record = sign_record(user, 1, Timestamp(1), Timestamp(2), &payload).unwrap();
        Entry {
            record: record.into(),
            name: None,
            online,
            last_seen: 1,
            via,
            stale,
        }
    }

    #[test]
    fn after_lookup_decisions() {
        let (me, other) = (who(8).id(), who(9).id());
        let u = who(1);
        let cases: Vec<(&str, Option<Entry>, bool, AfterLookup)> = vec![
            (
                "lookup found",
                Some(entry(&u, other, true, false)),
                false,
                AfterLookup::Answer(Response::Entry(entry(&u, other, true, false))),
            ),
            (
                "lookup of an offline user still answers",
                Some(entry(&u, other, false, true)),
                false,
                AfterLookup::Answer(Response::Entry(entry(&u, other, false, true))),
            ),
            (
                "lookup missed",
                None,
                false,
                AfterLookup::Answer(Response::NotFound),
            ),
            (
                "route to nobody",
                None,
                true,
                AfterLookup::Refuse(404, "unknown user"),
            ),
            (
                "route to an offline user",
                Some(entry(&u, other, false, false)),
                true,
                AfterLookup::Refuse(410, "user offline"),
            ),
            (
                "route to a stale entry",
                Some(entry(&u, other, true, true)),
                true,
                AfterLookup::Refuse(410, "user offline"),
            ),
            (
                "route to a user said to be here but not connected",
                Some(entry(&u, me, true, false)),
                true,
                AfterLookup::Refuse(410, "user offline"),
            ),
            (
                "route to an online user elsewhere",
                Some(entry(&u, other, true, false)),
                true,
                AfterLookup::Forward(other),
            ),
        ];
        for (name, e, routing, want) in cases {
            assert_eq!(after_lookup(me, e, routing), want, "{name}");
        }
    }

    #[test]
    fn home_answers_are_judged_by_the_users_signature() {
        let (alice, mallory) = (who(1), who(2));
        let via = who(9).id();
        let good = entry(&alice, via, true, false);
        assert_eq!(
            home_answer(alice.id(), Some(Response::Entry(good.clone()))),
            HomeAnswer::Found(good)
        );
        let forged = entry(&mallory, via, true, false);
        assert_eq!(
            home_answer(alice.id(), Some(Response::Entry(forged))),
            HomeAnswer::Next(Some("bad entry from a home"))
        );
        assert_eq!(home_answer(alice.id(), None), HomeAnswer::Next(None));
        assert_eq!(
            home_answer(alice.id(), Some(Response::NotFound)),
            HomeAnswer::Next(None)
        );
        assert_eq!(
            home_answer(alice.id(), Some(Response::Ok)),
            HomeAnswer::Next(Some("unexpected answer"))
        );
    }

    #[test]
    fn relayed_answers() {
        assert_eq!(delivered(Some(Response::Ok)), Response::Routed);
        assert_eq!(delivered(Some(Response::NotFound)), Response::NotFound);
        assert!(matches!(delivered(None), Response::Error { code: 504, .. }));
        assert_eq!(relayed(Some(Response::Ok)), Response::Ok);
        assert!(matches!(relayed(None), Response::Error { code: 504, .. }));
    }
}
