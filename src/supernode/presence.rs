//! Presence as this supernode's clients watch it: who watches whom, and what they last heard.
//!
//! The watched user's homes hold the subscriptions (one per watching supernode, in the
//! [`Directory`](crate::directory::Directory)); this is the other half, the watching supernode's
//! side: it subscribes at the homes for the first of its clients to watch a user, unsubscribes
//! when the last one stops, and fans each change out to its watching clients once, although
//! every home pushes it.

use std::collections::{HashMap, HashSet};

use crate::identity::UserId;
use crate::session::{SessionId, TransactionId};

/// Users one client session may watch at once: presence subscriptions cost the supernode and
/// the watched users' homes memory, so a client cannot ask for millions.
pub(super) const MAX_WATCHES_PER_SESSION: usize = 1024;

/// A client session asked to watch more than [`MAX_WATCHES_PER_SESSION`] users.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TooManyWatches;

/// What a home's answer to a client's watch means for the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WatchAnswer {
    /// Still waiting on other homes, or the client was answered already.
    Wait,
    /// A home holds the subscription: answer OK.
    Held,
    /// Every home refused or did not answer: answer with an error.
    Failed,
}

/// The watching side of presence.
#[derive(Default)]
pub(super) struct Presence {
    /// watched user -> our client sessions watching it.
    watchers: HashMap<UserId, HashSet<SessionId>>,
    /// How many users each client session watches (bounded by [`MAX_WATCHES_PER_SESSION`]).
    per_session: HashMap<SessionId, usize>,
    /// Client watches waiting for a home's confirmation: answers still expected.
    waits: HashMap<(SessionId, TransactionId), u8>,
    /// The last state (online, stale) our watching clients heard, per watched user: dedupes
    /// the homes' identical pushes.
    last: HashMap<UserId, (bool, bool)>,
}

impl Presence {
    /// Client session `sid` watches `user`. `Ok(true)` when it is the first here to watch
    /// `user`: the homes must be asked to tell us.
    pub fn watch(&mut self, sid: SessionId, user: UserId) -> Result<bool, TooManyWatches> {
        let already = self.watchers.get(&user).is_some_and(|s| s.contains(&sid));
        if !already {
            let count = self.per_session.entry(sid).or_default();
            if *count >= MAX_WATCHES_PER_SESSION {
                return Err(TooManyWatches);
            }
            *count += 1;
        }
        let set = self.watchers.entry(user).or_default();
        let first = set.is_empty();
        set.insert(sid);
        Ok(first)
    }

    /// Client session `sid` no longer watches `user`. `true` when nobody here watches `user`
    /// any more: the homes can stop telling us.
    pub fn unwatch(&mut self, sid: SessionId, user: UserId) -> bool {
        let Some(set) = self.watchers.get_mut(&user) else {
            return false;
        };
        if set.remove(&sid)
            && let Some(c) = self.per_session.get_mut(&sid)
        {
            *c = c.saturating_sub(1);
        }
        if !set.is_empty() {
            return false;
        }
        self.watchers.remove(&user);
        self.last.remove(&user);
        true
    }

    /// Client session `sid` is gone, and its watches with it: the users nobody here watches
    /// any more.
    pub fn drop_session(&mut self, sid: SessionId) -> Vec<UserId> {
        if self.per_session.remove(&sid).is_none() {
            return Vec::new();
        }
        let mut watched: Vec<UserId> = self
            .watchers
            .iter()
            .filter(|(_, set)| set.contains(&sid))
            .map(|(u, _)| *u)
            .collect();
        // Sorted wherever a set's order becomes the order of messages: std's hash order
        // differs per process, and a seeded simulation must replay the same traffic.
        watched.sort_unstable();
        watched
            .into_iter()
            .filter(|u| self.unwatch(sid, *u))
            .collect()
    }

    /// Users our clients watch.
    pub fn watched_users(&self) -> Vec<UserId> {
        self.watchers.keys().copied().collect()
    }

    /// A client's watch (`sid`, `txn`) was sent to `homes` homes; the first to hold it
    /// answers the client.
    pub fn await_homes(&mut self, sid: SessionId, txn: TransactionId, homes: u8) {
        self.waits.insert((sid, txn), homes);
    }

    /// A home answered the client's watch (`held`: it holds the subscription), or did not
    /// answer at all.
    pub fn home_answered(&mut self, sid: SessionId, txn: TransactionId, held: bool) -> WatchAnswer {
        let Some(left) = self.waits.get_mut(&(sid, txn)) else {
            return WatchAnswer::Wait; // already answered
        };
        *left -= 1;
        if !held && *left > 0 {
            return WatchAnswer::Wait;
        }
        self.waits.remove(&(sid, txn));
        if held {
            WatchAnswer::Held
        } else {
            WatchAnswer::Failed
        }
    }

    /// A home pushed `user`'s state: the client sessions to tell, none if they heard it
    /// already (each of the user's homes pushes the same change) or nobody here watches.
    pub fn fan_out(&mut self, user: UserId, online: bool, stale: bool) -> Vec<SessionId> {
        let Some(set) = self.watchers.get(&user) else {
            return Vec::new();
        };
        if self.last.insert(user, (online, stale)) == Some((online, stale)) {
            return Vec::new();
        }
        let mut v: Vec<SessionId> = set.iter().copied().collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: u8) -> UserId {
        UserId([n; 20])
    }

    fn sorted(mut v: Vec<SessionId>) -> Vec<SessionId> {
        v.sort();
        v
    }

    #[test]
    fn fan_out_tells_each_watcher_once_per_change() {
        let mut p = Presence::default();
        let (a, b) = (SessionId(1), SessionId(2));
        assert_eq!(p.watch(a, user(1)), Ok(true));
        assert_eq!(p.watch(b, user(1)), Ok(false));
        // Three homes push the same change: the clients hear it once.
        assert_eq!(sorted(p.fan_out(user(1), true, false)), vec![a, b]);
        assert!(p.fan_out(user(1), true, false).is_empty());
        assert!(p.fan_out(user(1), true, false).is_empty());
        // Going stale is a change; so is going offline.
        assert_eq!(sorted(p.fan_out(user(1), true, true)), vec![a, b]);
        assert_eq!(sorted(p.fan_out(user(1), false, true)), vec![a, b]);
        // Nobody watches user 2.
        assert!(p.fan_out(user(2), true, false).is_empty());
    }

    #[test]
    fn a_user_watched_again_hears_its_state_again() {
        let mut p = Presence::default();
        let a = SessionId(1);
        p.watch(a, user(1)).unwrap();
        assert_eq!(p.fan_out(user(1), true, false), vec![a]);
        assert!(p.unwatch(a, user(1)));
        // Nothing is remembered for an unwatched user: a new watcher hears the current state.
        assert_eq!(p.watch(a, user(1)), Ok(true));
        assert_eq!(p.fan_out(user(1), true, false), vec![a]);
    }

    #[test]
    fn watches_per_session_are_capped_and_rewatching_is_free() {
        let mut p = Presence::default();
        let a = SessionId(1);
        for n in 0..MAX_WATCHES_PER_SESSION {
            let mut id = [0u8; 20];
            id[..8].copy_from_slice(&(n as u64).to_le_bytes());
            assert!(p.watch(a, UserId(id)).is_ok());
        }
        assert_eq!(p.watch(a, user(0xff)), Err(TooManyWatches));
        // Watching one already watched does not count.
        assert_eq!(p.watch(a, UserId([0; 20])), Ok(false));
        // Another session has its own budget.
        assert_eq!(p.watch(SessionId(2), user(0xff)), Ok(true));
        // Unwatching frees a slot.
        assert!(p.unwatch(a, UserId([0; 20])));
        assert_eq!(p.watch(a, user(0xfe)), Ok(true));
        assert_eq!(p.watch(a, user(0xfd)), Err(TooManyWatches));
    }

    #[test]
    fn the_last_watcher_leaving_unsubscribes() {
        let mut p = Presence::default();
        let (a, b) = (SessionId(1), SessionId(2));
        p.watch(a, user(1)).unwrap();
        p.watch(b, user(1)).unwrap();
        p.watch(a, user(2)).unwrap();
        assert!(!p.unwatch(b, user(2)), "b never watched user 2");
        assert!(!p.unwatch(b, user(1)), "a still watches user 1");
        // a's session ends: both users lose their last watcher here.
        let mut gone = p.drop_session(a);
        gone.sort();
        assert_eq!(gone, vec![user(1), user(2)]);
        assert!(p.watched_users().is_empty());
        assert!(p.drop_session(a).is_empty());
    }

    #[test]
    fn a_watch_is_answered_by_the_first_home_that_holds_it() {
        let mut p = Presence::default();
        let (a, t) = (SessionId(1), TransactionId([1; 12]));
        p.await_homes(a, t, 3);
        assert_eq!(p.home_answered(a, t, false), WatchAnswer::Wait);
        assert_eq!(p.home_answered(a, t, true), WatchAnswer::Held);
        // The third home's answer comes after the client was answered.
        assert_eq!(p.home_answered(a, t, true), WatchAnswer::Wait);

        let t2 = TransactionId([2; 12]);
        p.await_homes(a, t2, 2);
        assert_eq!(p.home_answered(a, t2, false), WatchAnswer::Wait);
        assert_eq!(p.home_answered(a, t2, false), WatchAnswer::Failed);
    }
}
