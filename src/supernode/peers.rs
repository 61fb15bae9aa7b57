//! The other supernodes as this one sees them: a session to each, which members proved their
//! key, the requests waiting for room in each session, and the member set homes were last
//! computed over.
//!
//! SWIM ([`Mesh`](crate::mesh::Mesh)) says who is a member; this says which members count.
//! Gossip can name members that do not exist (anyone in the mesh can gossip anything), and such
//! a fake member must never be a home, or lookups would wait on it: only members that proved
//! their key in a session (we reached them with the key SWIM gave, or their SWIM traffic came
//! through a session they authenticated) are homes or listed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::identity::UserId;
use crate::session::SessionId;

/// Requests waiting per peer supernode beyond what its session has in flight.
pub(super) const MAX_PEER_QUEUE: usize = 100_000;

/// A peer's request queue holds [`MAX_PEER_QUEUE`] already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct QueueFull;

/// Peer supernodes; `C` is what waits on each queued request (the supernode's continuation).
pub(super) struct Peers<C> {
    me: UserId,
    /// A session to each supernode we talk to (ours or theirs).
    sessions: HashMap<UserId, SessionId>,
    /// Members that proved their key to us in a session.
    verified: HashSet<UserId>,
    version: u64,
    /// Requests (encoded, with what waits on them) for each peer, waiting for room in its
    /// session, in order.
    queues: HashMap<UserId, VecDeque<(Vec<u8>, C)>>,
    /// Live members at the last re-homing (to push only what moved).
    last_members: Vec<UserId>,
    /// When each peer's session last carried something of ours or theirs (not keepalives).
    used: HashMap<UserId, Instant>,
}

impl<C> Peers<C> {
    pub fn new(me: UserId) -> Peers<C> {
        Peers {
            me,
            sessions: HashMap::new(),
            verified: HashSet::new(),
            version: 0,
            queues: HashMap::new(),
            last_members: vec![me],
            used: HashMap::new(),
        }
    }

    /// Our session with supernode `id`.
    pub fn session(&self, id: &UserId) -> Option<SessionId> {
        self.sessions.get(id).copied()
    }

    /// Session `sid` is with supernode `id`, unless we have one with it already.
    pub fn add_session(&mut self, id: UserId, sid: SessionId) {
        self.sessions.entry(id).or_insert(sid);
    }

    /// Session `sid` is gone.
    pub fn forget_session(&mut self, sid: SessionId) {
        self.sessions.retain(|_, s| *s != sid);
    }

    /// Traffic with `id` (either way) at `now`: its session is in use.
    pub fn touch(&mut self, id: UserId, now: Instant) {
        if self.sessions.contains_key(&id) {
            self.used.insert(id, now);
        }
    }

    /// Sessions unused for `limit` (and with no requests waiting for them): to close. Their
    /// entries are forgotten here; the members stay verified.
    pub fn idle(&mut self, now: Instant, limit: Duration) -> Vec<(UserId, SessionId)> {
        let mut out = Vec::new();
        let used = &mut self.used;
        let queues = &self.queues;
        self.sessions.retain(|id, sid| {
            let last = *used.entry(*id).or_insert(now);
            let busy = queues.get(id).is_some_and(|q| !q.is_empty());
            if now.saturating_duration_since(last) >= limit && !busy {
                out.push((*id, *sid));
                false
            } else {
                true
            }
        });
        used.retain(|id, _| self.sessions.contains_key(id));
        out.sort();
        out
    }

    /// Sessions held with other supernodes.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// `id` proved its key. `true` if it had not before.
    pub fn verify(&mut self, id: UserId) -> bool {
        let new = id != self.me && self.verified.insert(id);
        self.version += u64::from(new);
        new
    }

    /// Changes whenever the verified set does (with [`crate::mesh::Mesh::version`]: whether the
    /// live member list may have changed).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Supernode `id` left the mesh: its session (to close) and what waited on it (to fail).
    pub fn remove(&mut self, id: &UserId) -> (Option<SessionId>, Vec<C>) {
        self.version += u64::from(self.verified.remove(id));
        self.used.remove(id);
        (self.sessions.remove(id), self.take_queue(id))
    }

    /// Of SWIM's `members`, those that count: us and the verified.
    pub fn live(&self, mut members: Vec<UserId>) -> Vec<UserId> {
        members.retain(|id| *id == self.me || self.verified.contains(id));
        members
    }

    /// Whether requests wait for `id` (a new one must queue behind them).
    pub fn is_queued(&self, id: &UserId) -> bool {
        self.queues.get(id).is_some_and(|q| !q.is_empty())
    }

    /// Queues a request for `id` behind the others.
    pub fn enqueue(&mut self, id: UserId, body: Vec<u8>, cont: C) -> Result<(), QueueFull> {
        let queue = self.queues.entry(id).or_default();
        if queue.len() >= MAX_PEER_QUEUE {
            return Err(QueueFull);
        }
        queue.push_back((body, cont));
        Ok(())
    }

    /// The next request waiting for `id`.
    pub fn front(&self, id: &UserId) -> Option<&[u8]> {
        self.queues.get(id)?.front().map(|(b, _)| b.as_slice())
    }

    /// The next request for `id` went: what waits on its answer.
    pub fn pop(&mut self, id: &UserId) -> Option<C> {
        self.queues.get_mut(id)?.pop_front().map(|(_, c)| c)
    }

    /// Everything waiting for `id`, which can take no more.
    pub fn take_queue(&mut self, id: &UserId) -> Vec<C> {
        self.queues
            .remove(id)
            .map(|q| q.into_iter().map(|(_, c)| c).collect())
            .unwrap_or_default()
    }

    /// The live members are `members` now: the ones before, if they changed (homes must move).
    pub fn members_changed(&mut self, members: &[UserId]) -> Option<Vec<UserId>> {
        if members == self.last_members {
            return None;
        }
        Some(std::mem::replace(&mut self.last_members, members.to_vec()))
    }
}

/// Homes in `after` that were not in `before`, us excepted: the ones to push a record to
/// after a membership change.
pub(super) fn gained(me: UserId, before: &[UserId], after: &[UserId]) -> Vec<UserId> {
    after
        .iter()
        .filter(|h| **h != me && !before.contains(h))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> UserId {
        UserId([n; 20])
    }

    #[test]
    fn only_verified_members_count() {
        let mut p: Peers<()> = Peers::new(id(0));
        assert!(!p.verify(id(0)), "we need no proof");
        assert!(p.verify(id(1)));
        assert!(!p.verify(id(1)), "once");
        // SWIM names 2 and 3 too; neither proved its key.
        assert_eq!(p.live(vec![id(0), id(1), id(2), id(3)]), vec![id(0), id(1)]);
        p.remove(&id(1));
        assert_eq!(p.live(vec![id(0), id(1)]), vec![id(0)]);
    }

    #[test]
    fn queues_keep_order_and_fail_together() {
        let mut p: Peers<u32> = Peers::new(id(0));
        assert!(!p.is_queued(&id(1)));
        p.enqueue(id(1), vec![1], 10).unwrap();
        p.enqueue(id(1), vec![2], 20).unwrap();
        p.enqueue(id(2), vec![3], 30).unwrap();
        assert!(p.is_queued(&id(1)));
        assert_eq!(p.front(&id(1)), Some(&[1u8][..]));
        assert_eq!(p.pop(&id(1)), Some(10));
        assert_eq!(p.front(&id(1)), Some(&[2u8][..]));
        p.add_session(id(2), SessionId(7));
        assert_eq!(p.remove(&id(2)), (Some(SessionId(7)), vec![30]));
        assert_eq!(p.take_queue(&id(1)), vec![20]);
        assert!(p.front(&id(1)).is_none());
    }

    #[test]
    fn a_full_queue_refuses() {
        let mut p: Peers<()> = Peers::new(id(0));
        for _ in 0..MAX_PEER_QUEUE {
            p.enqueue(id(1), Vec::new(), ()).unwrap();
        }
        assert_eq!(p.enqueue(id(1), Vec::new(), ()), Err(QueueFull));
        assert_eq!(p.enqueue(id(2), Vec::new(), ()), Ok(()));
    }

    #[test]
    fn the_first_session_with_a_peer_is_kept() {
        let mut p: Peers<()> = Peers::new(id(0));
        p.add_session(id(1), SessionId(1));
        p.add_session(id(1), SessionId(2));
        assert_eq!(p.session(&id(1)), Some(SessionId(1)));
        p.forget_session(SessionId(1));
        assert_eq!(p.session(&id(1)), None);
    }

    #[test]
    fn sessions_unused_for_the_limit_are_closed_and_proof_of_key_stays() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(30);
        let mut p: Peers<()> = Peers::new(id(0));
        p.add_session(id(1), SessionId(1));
        p.add_session(id(2), SessionId(2));
        p.add_session(id(3), SessionId(3));
        p.verify(id(1));
        p.touch(id(1), t0);
        p.touch(id(2), t0);
        p.touch(id(3), t0);
        p.enqueue(id(3), vec![1], ()).unwrap();
        p.touch(id(2), t0 + Duration::from_secs(20));
        assert!(p.idle(t0 + Duration::from_secs(29), limit).is_empty());
        // 1 is idle; 2 was used later; 3 has a request waiting.
        let closed = p.idle(t0 + Duration::from_secs(30), limit);
        assert_eq!(closed, vec![(id(1), SessionId(1))]);
        assert_eq!(p.session(&id(1)), None);
        assert_eq!(p.session_count(), 2);
        assert_eq!(
            p.live(vec![id(0), id(1)]),
            vec![id(0), id(1)],
            "still verified"
        );
        // A touch without a session records nothing (it must not keep a future one alive).
        p.touch(id(1), t0 + Duration::from_secs(31));
        p.add_session(id(1), SessionId(4));
        // Never touched: its idle time counts from the first sweep that sees it.
        let closed = p.idle(t0 + Duration::from_secs(61), limit);
        assert_eq!(closed, vec![(id(2), SessionId(2))]);
        let closed = p.idle(t0 + Duration::from_secs(91), limit);
        assert!(closed.contains(&(id(1), SessionId(4))), "{closed:?}");
    }

    #[test]
    fn membership_changes_report_the_old_members_once() {
        let mut p: Peers<()> = Peers::new(id(0));
        assert_eq!(p.members_changed(&[id(0)]), None);
        assert_eq!(p.members_changed(&[id(0), id(1)]), Some(vec![id(0)]));
        assert_eq!(p.members_changed(&[id(0), id(1)]), None);
    }

    #[test]
    fn gained_homes_exclude_us_and_the_old_homes() {
        let before = [id(0), id(1), id(2)];
        let after = [id(0), id(2), id(3), id(4)];
        assert_eq!(gained(id(0), &before, &after), vec![id(3), id(4)]);
        assert_eq!(gained(id(3), &before, &after), vec![id(4)]);
        assert!(gained(id(0), &after, &after).is_empty());
    }
}
