//! The directory a supernode keeps for the users homed on it (DESIGN §5): entries, presence
//! watchers and name claims, plus the rendezvous hashing that picks every user's homes.
//!
//! Pure data and rules; the supernode core ([`crate::supernode::Supernode`]) moves entries
//! between supernodes and tells watchers.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};

use crate::identity::{HeldClaim, UserId, name_key, winner};
use crate::signal::Entry;

/// How many supernodes hold each user's entry.
pub const REPLICAS: usize = 3;

/// The `n` members that home `key` (rendezvous, or highest-random-weight, hashing: every member
/// scores every key; the best scores win). When membership changes, only the keys whose winners
/// changed move, and every supernode computes the same answer from the same member list.
pub fn homes(key: &[u8], members: &[UserId], n: usize) -> Vec<UserId> {
    top_homes(home_key(key), members.iter(), n)
        .into_iter()
        .map(|(_, m)| m)
        .collect()
}

/// A key's rendezvous digest: hashed once, then scored against every member by
/// [`home_score`]. One SHA-256 per key rather than per (member, key) pair: a supernode scores
/// every entry it homes against the whole mesh on each membership change, and with hundreds of
/// members a hash per pair made that the largest cost of a big mesh. The score stays as hard
/// to steer: member IDs are themselves hashes of keys, and the key side is still SHA-256.
/// Every supernode of a mesh must score alike: a change here moves homes (as this one did).
pub fn home_key(key: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update(b"voxmesh/v1/home\0");
    h.update(key);
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// Member `m`'s score for a key digest: the digest mixed with the member's ID by the splitmix64
/// finaliser (a bijection with full avalanche), twice to take in 16 bytes of the ID.
pub fn home_score(key: u64, m: &UserId) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let b = m.as_bytes();
    let a = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
    let c = u64::from_be_bytes(b[8..16].try_into().expect("8 bytes"));
    mix(mix(key ^ a) ^ c)
}

/// The `n` best (score, member) of `members` for key digest `key`, best first (ties broken by
/// the higher ID; a member listed twice counts once).
pub fn top_homes<'a>(
    key: u64,
    members: impl IntoIterator<Item = &'a UserId>,
    n: usize,
) -> Vec<(u64, UserId)> {
    best_of(members.into_iter().map(|m| (home_score(key, m), *m)), n)
}

/// The `n` highest of `scored`, best first, each member once.
fn best_of(scored: impl IntoIterator<Item = (u64, UserId)>, n: usize) -> Vec<(u64, UserId)> {
    let mut best: Vec<(u64, UserId)> = Vec::with_capacity(n + 1);
    if n == 0 {
        return best;
    }
    for e in scored {
        if best.len() == n && e <= best[n - 1] {
            continue;
        }
        if best.iter().any(|b| b.1 == e.1) {
            continue;
        }
        let at = best.iter().position(|b| e > *b).unwrap_or(best.len());
        best.insert(at, e);
        best.truncate(n);
    }
    best
}

/// The homes (with scores) of the users a supernode holds, for the member list they were
/// computed over, so that a membership change costs a score per added member per user rather
/// than a scan of the whole mesh per user: if none of a user's homes left, its new homes are
/// the best of its old homes and the members that joined (every other old member ranked below
/// all of its old homes). Only a user that lost a home is scored against the whole mesh.
#[derive(Debug, Default)]
pub struct HomeCache {
    over: Vec<UserId>,
    homes: HashMap<UserId, Vec<(u64, UserId)>>,
}

/// One membership change seen through a [`HomeCache`]: [`Rehoming::moved`] gives a user's
/// homes before and after; [`Rehoming::keep`] records the users still held.
pub struct Rehoming<'a> {
    old: &'a [UserId],
    new: &'a [UserId],
    added: Vec<UserId>,
    removed: HashSet<UserId>,
    cached: HashMap<UserId, Vec<(u64, UserId)>>,
    next: HashMap<UserId, Vec<(u64, UserId)>>,
}

impl HomeCache {
    /// Starts the change from `old` to `new` (the cache is trusted only if it was computed over
    /// `old`; else every user is scored afresh).
    pub fn change<'a>(&mut self, old: &'a [UserId], new: &'a [UserId]) -> Rehoming<'a> {
        let mut cached = std::mem::take(&mut self.homes);
        if self.over != old {
            cached.clear();
        }
        let was: HashSet<UserId> = old.iter().copied().collect();
        let now: HashSet<UserId> = new.iter().copied().collect();
        Rehoming {
            old,
            new,
            added: new.iter().filter(|m| !was.contains(m)).copied().collect(),
            removed: old.iter().filter(|m| !now.contains(m)).copied().collect(),
            cached,
            next: HashMap::new(),
        }
    }

    /// Ends a change: the users [`Rehoming::keep`] and [`Rehoming::track`] recorded are cached
    /// over its new members.
    pub fn finish(&mut self, r: Rehoming<'_>) {
        self.over = r.new.to_vec();
        self.homes = r.next;
    }
}

impl Rehoming<'_> {
    /// `user`'s homes over the old members and the new.
    pub fn moved(&self, user: &UserId) -> (Vec<UserId>, Vec<UserId>) {
        let (b, a) = self.scored(user);
        (ids(&b), ids(&a))
    }

    fn scored(&self, user: &UserId) -> (Scored, Scored) {
        let k = home_key(user.as_bytes());
        let before = match self.cached.get(user) {
            Some(b) => b.clone(),
            None => top_homes(k, self.old, REPLICAS),
        };
        let after = if before.iter().any(|(_, h)| self.removed.contains(h)) {
            top_homes(k, self.new, REPLICAS)
        } else {
            let joined = self.added.iter().map(|m| (home_score(k, m), *m));
            best_of(before.iter().copied().chain(joined), REPLICAS)
        };
        (before, after)
    }

    /// [`moved`](Self::moved) for a user whose homes we follow whether or not we are one (a
    /// client registered through us): its new homes are cached for the next change.
    pub fn track(&mut self, user: &UserId) -> (Vec<UserId>, Vec<UserId>) {
        let (b, a) = self.scored(user);
        let moved = (ids(&b), ids(&a));
        self.next.insert(*user, a);
        moved
    }

    /// Whether `me` homes `user` (a user ID) after the change; if so its homes are cached.
    pub fn keep(&mut self, me: &UserId, user: &UserId) -> bool {
        if let Some(a) = self.next.get(user) {
            return a.iter().any(|(_, h)| h == me);
        }
        let (_, after) = self.scored(user);
        let kept = after.iter().any(|(_, h)| h == me);
        if kept {
            self.next.insert(*user, after);
        }
        kept
    }
}

/// Homes with their scores, best first.
type Scored = Vec<(u64, UserId)>;

fn ids(v: &[(u64, UserId)]) -> Vec<UserId> {
    v.iter().map(|(_, m)| *m).collect()
}

/// The homes of a user's entry.
pub fn user_homes(user: &UserId, members: &[UserId]) -> Vec<UserId> {
    homes(user.as_bytes(), members, REPLICAS)
}

/// The homes of a name (the first of them orders competing claims).
pub fn name_homes(normalized: &str, members: &[UserId]) -> Vec<UserId> {
    homes(&name_key(normalized), members, REPLICAS)
}

/// An entry as stored here, with the registration's sequence number for replay checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub entry: Entry,
    pub seq: u64,
}

/// A held name with the claim record that took it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name {
    pub held: HeldClaim,
    pub record: Vec<u8>,
}

/// Why a store was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("older registration than the one held")]
    Stale,
    #[error("the directory is full")]
    Full,
}

/// A change of what watchers should see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceChange {
    pub user: UserId,
    pub online: bool,
    pub last_seen: u64,
    pub stale: bool,
}

/// The entries, watchers and names homed on one supernode. Every table is bounded.
#[derive(Debug)]
pub struct Directory {
    /// Boxed: a hash table keeps spare slots (up to half of them right after it grows), which
    /// should cost a pointer each rather than an entry each.
    entries: HashMap<UserId, Box<Stored>>,
    /// watched user -> supernodes that want its presence changes
    watchers: HashMap<UserId, HashSet<UserId>>,
    names: HashMap<String, Name>,
    max_entries: usize,
    max_watchers: usize,
    /// The orderer's counter for name claims.
    next_order: u64,
}

impl Directory {
    pub fn new(max_entries: usize) -> Directory {
        Directory {
            entries: HashMap::new(),
            watchers: HashMap::new(),
            names: HashMap::new(),
            max_entries,
            max_watchers: 64,
            next_order: 1,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, user: &UserId) -> Option<&Stored> {
        self.entries.get(user).map(|s| &**s)
    }

    pub fn users(&self) -> impl Iterator<Item = &UserId> {
        self.entries.keys()
    }

    /// Stores `entry` (registration sequence `seq`). A newer registration replaces the entry;
    /// the same one may update presence; an older one is refused. Returns the presence change
    /// watchers should hear about, if any.
    pub fn store(
        &mut self,
        user: UserId,
        entry: Entry,
        seq: u64,
    ) -> Result<Option<PresenceChange>, StoreError> {
        let before = self.entries.get(&user);
        match before {
            Some(s) if seq < s.seq => return Err(StoreError::Stale),
            None if self.entries.len() >= self.max_entries => return Err(StoreError::Full),
            _ => {}
        }
        let changed = before.is_none_or(|s| {
            s.entry.online != entry.online
                || s.entry.stale != entry.stale
                || s.entry.via != entry.via
        });
        let change = changed.then_some(PresenceChange {
            user,
            online: entry.online,
            last_seen: entry.last_seen,
            stale: entry.stale,
        });
        // A replica that already knows a later last-seen keeps it.
        let last_seen = before.map_or(entry.last_seen, |s| s.entry.last_seen.max(entry.last_seen));
        let mut entry = entry;
        entry.last_seen = last_seen;
        self.entries.insert(user, Box::new(Stored { entry, seq }));
        Ok(change)
    }

    /// Marks the entries of users connected through `dead` as stale (the supernode is gone; the
    /// user will register again through another). Returns the changes.
    pub fn mark_stale_via(&mut self, dead: &UserId) -> Vec<PresenceChange> {
        let mut out = Vec::new();
        for (user, s) in self.entries.iter_mut() {
            if s.entry.via == *dead && !s.entry.stale {
                s.entry.stale = true;
                out.push(PresenceChange {
                    user: *user,
                    online: s.entry.online,
                    last_seen: s.entry.last_seen,
                    stale: true,
                });
            }
        }
        // In user order, not the map's (std's hash order differs per process).
        out.sort_unstable_by_key(|c| c.user);
        out
    }

    /// Forgets entries this supernode no longer homes.
    pub fn retain(&mut self, mut keep: impl FnMut(&UserId) -> bool) {
        self.entries.retain(|u, _| keep(u));
        self.watchers.retain(|u, _| keep(u));
    }

    /// Entries as (user, stored) for re-homing.
    pub fn iter(&self) -> impl Iterator<Item = (&UserId, &Stored)> {
        self.entries.iter().map(|(u, s)| (u, &**s))
    }

    /// Supernode `watcher` wants `user`'s presence changes. Bounded per user, and in watched
    /// users (as many as entries: a member cannot make us keep watchers of millions of IDs).
    pub fn watch(&mut self, user: UserId, watcher: UserId) -> bool {
        if !self.watchers.contains_key(&user) && self.watchers.len() >= self.max_entries {
            return false;
        }
        let set = self.watchers.entry(user).or_default();
        if set.len() >= self.max_watchers && !set.contains(&watcher) {
            return false;
        }
        set.insert(watcher);
        true
    }

    pub fn unwatch(&mut self, user: &UserId, watcher: &UserId) {
        if let Some(set) = self.watchers.get_mut(user) {
            set.remove(watcher);
            if set.is_empty() {
                self.watchers.remove(user);
            }
        }
    }

    /// Forgets a watching supernode everywhere (it left the mesh).
    pub fn drop_watcher(&mut self, watcher: &UserId) {
        self.watchers.retain(|_, set| {
            set.remove(watcher);
            !set.is_empty()
        });
    }

    pub fn watchers_of(&self, user: &UserId) -> Vec<UserId> {
        let mut v: Vec<UserId> = self
            .watchers
            .get(user)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        // In ID order, not the set's (std's hash order differs per process): the pushes then
        // go out in the same order in every run of a seeded simulation.
        v.sort_unstable();
        v
    }

    pub fn watched(&self) -> impl Iterator<Item = (&UserId, &HashSet<UserId>)> {
        self.watchers.iter()
    }

    /// The next orderer stamp number.
    pub fn next_order(&mut self) -> u64 {
        let o = self.next_order;
        self.next_order += 1;
        o
    }

    pub fn name(&self, name: &str) -> Option<&Name> {
        self.names.get(name)
    }

    /// Keeps the winner of the held claim and `new` by the replicas' rule. Returns whether
    /// `new` now holds the name.
    pub fn merge_name(
        &mut self,
        new: Name,
        homes: &[UserId],
        now: crate::identity::Timestamp,
    ) -> bool {
        let name = new.held.name.clone();
        match self.names.get(&name) {
            Some(old) => {
                let keep_new = std::ptr::eq(winner(&new.held, &old.held, homes, now), &new.held);
                if keep_new {
                    self.names.insert(name, new);
                }
                keep_new
            }
            None => {
                if self.names.len() >= self.max_entries {
                    return false;
                }
                self.names.insert(name, new);
                true
            }
        }
    }

    /// The name `user` holds, if any.
    pub fn name_of(&self, user: &UserId, now: crate::identity::Timestamp) -> Option<&str> {
        self.names
            .values()
            .find(|n| n.held.claimant == *user && n.held.is_live(now))
            .map(|n| n.held.name.as_str())
    }

    pub fn names(&self) -> impl Iterator<Item = &Name> {
        self.names.values()
    }

    pub fn name_count(&self) -> usize {
        self.names.len()
    }

    pub fn retain_names(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.names.retain(|n, _| keep(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> UserId {
        UserId([n; 20])
    }

    fn entry(online: bool, via: u8) -> Entry {
        Entry {
            record: vec![1].into(),
            name: None,
            online,
            last_seen: 10,
            via: id(via),
            stale: false,
        }
    }

    #[test]
    fn rendezvous_homes_are_stable_and_move_minimally() {
        let members: Vec<UserId> = (1..=5).map(id).collect();
        let key = b"some user";
        let h5 = homes(key, &members, 3);
        assert_eq!(h5.len(), 3);
        assert_eq!(
            h5,
            homes(key, &members.iter().rev().copied().collect::<Vec<_>>(), 3),
            "order-independent"
        );
        // Removing a non-home changes nothing; removing a home promotes the fourth.
        let non_home = members.iter().find(|m| !h5.contains(m)).unwrap();
        let without: Vec<UserId> = members.iter().filter(|m| *m != non_home).copied().collect();
        assert_eq!(homes(key, &without, 3), h5);
        let without_first: Vec<UserId> = members.iter().filter(|m| **m != h5[0]).copied().collect();
        let h4 = homes(key, &without_first, 3);
        assert_eq!(&h4[..2], &h5[1..3]);
        assert_eq!(
            homes(key, &members[..2], 3).len(),
            2,
            "fewer members than replicas"
        );
        // Spread: over many keys each member homes roughly 3/5 of them.
        let mut count = HashMap::new();
        for k in 0..3000u32 {
            for h in homes(&k.to_be_bytes(), &members, 3) {
                *count.entry(h).or_insert(0) += 1;
            }
        }
        assert!(
            count.values().all(|c| (1500..2100).contains(c)),
            "{count:?}"
        );
    }

    #[test]
    fn the_home_cache_agrees_with_scoring_the_whole_mesh() {
        let uid = |n: u32| {
            let mut b = [0u8; 20];
            b[..4].copy_from_slice(&n.to_be_bytes());
            UserId(Sha256::digest(b)[..20].try_into().unwrap())
        };
        let users: Vec<UserId> = (1000..1300).map(uid).collect();
        let me = uid(0);
        let mut members: Vec<UserId> = (0..12).map(uid).collect();
        let mut cache = HomeCache::default();
        // Joins, departures of homes and others, several at once, and a cache for another
        // list (a change it did not see: it must start afresh).
        let steps: [(&[u32], &[u32]); 5] = [
            (&[20], &[]),
            (&[21, 22], &[3]),
            (&[], &[20, 5]),
            (&[23], &[21]),
            (&[24], &[]),
        ];
        for (i, (join, leave)) in steps.iter().enumerate() {
            let old = members.clone();
            members.retain(|m| !leave.iter().any(|l| uid(*l) == *m));
            members.extend(join.iter().map(|j| uid(*j)));
            if i == 3 {
                cache = HomeCache::default();
            }
            let mut r = cache.change(&old, &members);
            for u in &users {
                let (before, after) = r.moved(u);
                assert_eq!(before, user_homes(u, &old));
                assert_eq!(after, user_homes(u, &members));
                assert_eq!(r.keep(&me, u), after.contains(&me));
            }
            cache.finish(r);
        }
    }

    #[test]
    fn store_orders_by_sequence_and_reports_presence_changes() {
        let mut d = Directory::new(2);
        let u = id(1);
        assert!(
            d.store(u, entry(true, 9), 5).unwrap().is_some(),
            "a new entry is a change"
        );
        assert_eq!(
            d.store(u, entry(true, 9), 5).unwrap(),
            None,
            "same state: no change"
        );
        let off = d.store(u, entry(false, 9), 5).unwrap().unwrap();
        assert!(!off.online);
        assert_eq!(d.store(u, entry(true, 9), 4), Err(StoreError::Stale));
        d.store(id(2), entry(true, 9), 1).unwrap();
        assert_eq!(d.store(id(3), entry(true, 9), 1), Err(StoreError::Full));
        let stale = d.mark_stale_via(&id(9));
        assert_eq!(stale.len(), 2);
        assert!(d.get(&u).unwrap().entry.stale);
        assert!(d.mark_stale_via(&id(9)).is_empty(), "marked once");
    }

    #[test]
    fn watchers_are_bounded_and_dropped_with_their_supernode() {
        let mut d = Directory::new(10);
        for w in 0..70u8 {
            let ok = d.watch(id(1), id(100 + w));
            assert_eq!(ok, w < 64);
        }
        assert_eq!(d.watchers_of(&id(1)).len(), 64);
        d.drop_watcher(&id(100));
        assert_eq!(d.watchers_of(&id(1)).len(), 63);
        d.unwatch(&id(1), &id(101));
        assert_eq!(d.watchers_of(&id(1)).len(), 62);
    }
}
