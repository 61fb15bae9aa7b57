//! Clients connected to this supernode: those registered here (we are their primary) and those
//! keeping a standby session with us.
//!
//! A session's user is what it authenticated ([`Endpoint::peer_id`](crate::session::Endpoint),
//! or the `peer` of its `Closed` event), so no session -> user map is kept.

use std::collections::HashMap;
use std::sync::Arc;

use crate::identity::UserId;
use crate::session::SessionId;

/// A client registered through us: its session, and the record it published (kept to publish
/// it offline when the session ends) with its sequence number (a replay of it, or of anything
/// older, is refused). The rest of the entry is ours. One map for both: a supernode holds one
/// of these per connected client.
struct Registered {
    session: SessionId,
    /// The client's standby supernode ([`standby_tag`] of its ID; 0: none told), to warn the
    /// client when the mesh declares it dead. A tag, not the ID, keeps this entry at 32 bytes;
    /// a collision only sends a notice the client checks against the full ID and ignores.
    standby: u32,
    record: Arc<[u8]>,
    seq: u64,
}

/// A client's standby supernode as [`Registered`] keeps it: never 0 (0 means none).
fn standby_tag(id: &UserId) -> u32 {
    u32::from_le_bytes(id.as_bytes()[..4].try_into().expect("4 bytes")) | 1
}

/// Our clients, primary and standby.
#[derive(Default)]
pub(super) struct Clients {
    /// Clients registered here, by user.
    registered: HashMap<UserId, Registered>,
    /// Clients using us as their standby: session -> their primary supernode.
    standby: HashMap<SessionId, UserId>,
}

impl Clients {
    /// The session `user` is registered here on.
    pub fn session_of(&self, user: &UserId) -> Option<SessionId> {
        self.registered.get(user).map(|c| c.session)
    }

    /// Whether `user` is registered here on session `sid` (not an older or newer one).
    pub fn is_registered(&self, user: &UserId, sid: SessionId) -> bool {
        self.session_of(user) == Some(sid)
    }

    /// The sequence number of `user`'s registration here.
    pub fn seq(&self, user: &UserId) -> Option<u64> {
        self.registered.get(user).map(|c| c.seq)
    }

    /// The record `user` registered here with.
    pub fn record(&self, user: &UserId) -> Option<Arc<[u8]>> {
        self.registered.get(user).map(|c| c.record.clone())
    }

    /// Every client registered here, with its record.
    pub fn registered(&self) -> impl Iterator<Item = (UserId, Arc<[u8]>)> + '_ {
        self.registered.iter().map(|(u, c)| (*u, c.record.clone()))
    }

    /// `user` registered on session `sid`. A newer session replaces an older one (a restarted
    /// client); a session that was a standby is a primary now.
    pub fn register(&mut self, user: UserId, sid: SessionId, record: Arc<[u8]>, seq: u64) {
        self.standby.remove(&sid);
        self.registered.insert(
            user,
            Registered {
                session: sid,
                standby: 0,
                record,
                seq,
            },
        );
    }

    /// `user`, registered on `sid`, keeps its standby session with supernode `standby`.
    /// `false` if it is not registered on that session.
    pub fn set_standby(&mut self, user: &UserId, sid: SessionId, standby: &UserId) -> bool {
        match self.registered.get_mut(user) {
            Some(c) if c.session == sid => {
                c.standby = standby_tag(standby);
                true
            }
            _ => false,
        }
    }

    /// Session `sid` is a client's standby session; its primary is `primary`.
    pub fn standby_for(&mut self, sid: SessionId, primary: UserId) {
        self.standby.insert(sid, primary);
    }

    /// Session `sid` (authenticated as `user`, if it got that far) is gone: the record to
    /// publish offline if it was `user`'s registration here.
    pub fn forget_session(&mut self, sid: SessionId, user: Option<UserId>) -> Option<Arc<[u8]>> {
        self.standby.remove(&sid);
        let user = user?;
        if !self.is_registered(&user, sid) {
            return None;
        }
        self.registered.remove(&user).map(|c| c.record)
    }

    /// Standby sessions of clients whose primary is `primary`.
    pub fn standbys_of(&self, primary: &UserId) -> Vec<SessionId> {
        let mut v: Vec<SessionId> = self
            .standby
            .iter()
            .filter(|(_, p)| *p == primary)
            .map(|(s, _)| *s)
            .collect();
        // In session order, not the map's (which differs per process): see `Presence`.
        v.sort_unstable();
        v
    }

    /// Sessions of clients registered here whose standby is (by tag) `standby`.
    pub fn with_standby(&self, standby: &UserId) -> Vec<SessionId> {
        let tag = standby_tag(standby);
        let mut v: Vec<SessionId> = self
            .registered
            .values()
            .filter(|c| c.standby == tag)
            .map(|c| c.session)
            .collect();
        v.sort_unstable();
        v
    }

    /// Clients registered here.
    pub fn len(&self) -> usize {
        self.registered.len()
    }

    /// Clients keeping a standby session with us.
    pub fn standby_len(&self) -> usize {
        self.standby.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: u8) -> UserId {
        UserId([n; 20])
    }

    fn record(n: u8) -> Arc<[u8]> {
        vec![n; 4].into()
    }

    #[test]
    fn a_restarted_clients_old_session_does_not_unregister_it() {
        let mut c = Clients::default();
        c.register(user(1), SessionId(1), record(1), 1);
        c.register(user(1), SessionId(2), record(2), 2);
        assert_eq!(c.len(), 1);
        assert!(!c.is_registered(&user(1), SessionId(1)));
        assert_eq!(c.forget_session(SessionId(1), Some(user(1))), None);
        assert_eq!(c.seq(&user(1)), Some(2));
        assert_eq!(
            c.forget_session(SessionId(2), None),
            None,
            "unauthenticated"
        );
        assert_eq!(
            c.forget_session(SessionId(2), Some(user(1))),
            Some(record(2))
        );
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn standby_notices_go_to_the_right_clients() {
        let mut c = Clients::default();
        // Clients 1 and 2 are registered here; 1 keeps its standby at supernode 9.
        c.register(user(1), SessionId(1), record(1), 1);
        c.register(user(2), SessionId(2), record(2), 1);
        assert!(c.set_standby(&user(1), SessionId(1), &user(9)));
        assert!(
            !c.set_standby(&user(2), SessionId(7), &user(9)),
            "wrong session"
        );
        assert_eq!(c.with_standby(&user(9)), vec![SessionId(1)]);
        assert!(c.with_standby(&user(8)).is_empty());
        // Sessions 5 and 6 use us as standby for primaries 8 and 9.
        c.standby_for(SessionId(5), user(8));
        c.standby_for(SessionId(6), user(9));
        assert_eq!(c.standby_len(), 2);
        assert_eq!(c.standbys_of(&user(9)), vec![SessionId(6)]);
        // A standby that registers here is a primary session now.
        c.register(user(3), SessionId(6), record(3), 1);
        assert!(c.standbys_of(&user(9)).is_empty());
        c.forget_session(SessionId(5), Some(user(4)));
        assert_eq!(c.standby_len(), 0);
    }

    #[test]
    fn standby_tags_are_never_zero() {
        assert_ne!(standby_tag(&UserId([0; 20])), 0);
        assert_eq!(standby_tag(&user(1)), standby_tag(&user(1)));
    }
}
