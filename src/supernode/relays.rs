//! Relays that authorised this supernode, and the TURN credentials we mint for them.
//!
//! A relay opens a session and says hello ([`Request::RHello`](crate::signal::Request)) with
//! its addresses and a secret for us; it reports its load now and then. We offer clients the
//! least loaded relays with credentials in the TURN REST scheme (DESIGN §5): the username
//! carries our ID so the relay knows whose secret checks the password.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::identity::UserId;
use crate::session::SessionId;
use crate::signal::RelayOffer;
use crate::turn::rest_password;

/// Longest relay secret we keep: a relay cannot make us hold much memory per session.
const MAX_SECRET: usize = 256;

/// A relay that authorised us: where clients reach it and the secret it gave us.
#[derive(Clone, Debug)]
pub(super) struct Relay {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub realm: String,
    pub secret: Vec<u8>,
    /// Allocations it last reported.
    pub load: u32,
}

/// Why a relay's hello is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HelloRefused {
    /// Empty or longer than [`MAX_SECRET`].
    BadSecret,
}

impl HelloRefused {
    pub fn reason(self) -> &'static str {
        match self {
            HelloRefused::BadSecret => "relay secret must be 1..=256 bytes",
        }
    }
}

/// The relays that authorised us, by relay ID, with the session each spoke on.
#[derive(Default)]
pub(super) struct Relays {
    /// relay -> (the session it said hello on, what it said).
    by_id: HashMap<UserId, (SessionId, Relay)>,
    /// session -> relay, so a closed session forgets its relay without a scan.
    of_session: HashMap<SessionId, UserId>,
}

impl Relays {
    /// Relay `id` said hello on session `sid`; a later hello (a reconnected relay) replaces
    /// the earlier one.
    pub fn hello(&mut self, sid: SessionId, id: UserId, relay: Relay) -> Result<(), HelloRefused> {
        if relay.secret.is_empty() || relay.secret.len() > MAX_SECRET {
            return Err(HelloRefused::BadSecret);
        }
        self.of_session.insert(sid, id);
        self.by_id.insert(id, (sid, relay));
        Ok(())
    }

    pub fn is_relay(&self, id: &UserId) -> bool {
        self.by_id.contains_key(id)
    }

    /// Relay `id` reports `load` allocations.
    pub fn set_load(&mut self, id: &UserId, load: u32) {
        if let Some((_, r)) = self.by_id.get_mut(id) {
            r.load = load;
        }
    }

    /// Session `sid` closed: its relay is gone, unless it already said hello on a newer one.
    pub fn forget_session(&mut self, sid: SessionId) {
        if let Some(id) = self.of_session.remove(&sid)
            && self.by_id.get(&id).is_some_and(|(s, _)| *s == sid)
        {
            self.by_id.remove(&id);
        }
    }

    /// How many relays, and their allocations summed (the need's inputs).
    pub fn count_and_load(&self) -> (u32, u32) {
        let n = u32::try_from(self.by_id.len()).unwrap_or(u32::MAX);
        let load = self.by_id.values().map(|(_, r)| r.load).sum();
        (n, load)
    }

    /// Each relay's ID and load, for the status.
    pub fn loads(&self) -> Vec<(String, u32)> {
        self.by_id
            .iter()
            .map(|(id, (_, r))| (id.to_string(), r.load))
            .collect()
    }

    /// Up to `count` offers for `user`, least loaded first (ties by relay ID), with credentials
    /// minted by supernode `me` that expire at Unix time `expires_at`.
    pub fn offers(
        &self,
        me: UserId,
        user: UserId,
        expires_at: u64,
        count: usize,
    ) -> Vec<RelayOffer> {
        let mut relays: Vec<(&UserId, &Relay)> =
            self.by_id.iter().map(|(id, (_, r))| (id, r)).collect();
        relays.sort_by_key(|(id, r)| (r.load, **id));
        // The relay finds our secret by our ID in the username (DESIGN §5).
        let username = format!("{expires_at}:{me}:{user}");
        relays
            .into_iter()
            .take(count)
            .map(|(id, r)| RelayOffer {
                relay: *id,
                udp: r.udp.clone(),
                tcp: r.tcp.clone(),
                tls: r.tls.clone(),
                realm: r.realm.clone(),
                password: rest_password(&r.secret, &username),
                username: username.clone(),
                expires_at,
                load: r.load,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> UserId {
        UserId([n; 20])
    }

    fn relay(secret: &[u8], load: u32) -> Relay {
        Relay {
            udp: vec!["127.0.0.1:3478".parse().unwrap()],
            tcp: Vec::new(),
            tls: Vec::new(),
            realm: "voxmesh".into(),
            secret: secret.to_vec(),
            load,
        }
    }

    #[test]
    fn hello_refuses_empty_and_oversized_secrets() {
        let mut r = Relays::default();
        let s = SessionId(1);
        assert_eq!(
            r.hello(s, id(1), relay(b"", 0)),
            Err(HelloRefused::BadSecret)
        );
        assert_eq!(
            r.hello(s, id(1), relay(&[7; MAX_SECRET + 1], 0)),
            Err(HelloRefused::BadSecret)
        );
        assert!(!r.is_relay(&id(1)));
        assert_eq!(r.hello(s, id(1), relay(&[7; MAX_SECRET], 0)), Ok(()));
        assert!(r.is_relay(&id(1)));
    }

    #[test]
    fn offers_are_least_loaded_first_and_capped() {
        let mut r = Relays::default();
        r.hello(SessionId(1), id(1), relay(b"a", 30)).unwrap();
        r.hello(SessionId(2), id(2), relay(b"b", 10)).unwrap();
        r.hello(SessionId(3), id(3), relay(b"c", 20)).unwrap();
        r.set_load(&id(1), 5);
        let offers = r.offers(id(9), id(8), 1000, 2);
        let order: Vec<UserId> = offers.iter().map(|o| o.relay).collect();
        assert_eq!(order, vec![id(1), id(2)]);
        let o = &offers[0];
        assert_eq!(o.load, 5);
        assert_eq!(o.expires_at, 1000);
        assert_eq!(o.username, format!("1000:{}:{}", id(9), id(8)));
        assert_eq!(o.password, rest_password(b"a", &o.username));
    }

    #[test]
    fn a_reconnected_relay_survives_its_old_session_closing() {
        let mut r = Relays::default();
        let (old, new) = (SessionId(1), SessionId(2));
        r.hello(old, id(1), relay(b"a", 0)).unwrap();
        r.hello(new, id(1), relay(b"a", 0)).unwrap();
        r.forget_session(old);
        assert!(r.is_relay(&id(1)));
        r.forget_session(new);
        assert!(!r.is_relay(&id(1)));
        assert!(r.offers(id(9), id(8), 1000, 3).is_empty());
    }
}
