//! A relay's link to the supernodes it authorises (DESIGN §5): one authenticated session to
//! each, over which the relay gives that supernode its own secret (one per relay–supernode pair)
//! and reports its load. The supernode mints time-limited TURN credentials with the secret; the
//! relay checks them against the secret of the supernode named in the username.
//!
//! Secrets rotate: every [`RelayLinkConfig::rotate_every`] the relay draws a new one per
//! supernode, sends it, and keeps accepting the previous one for
//! [`RelayLinkConfig::keep_previous`] (credentials minted just before the rotation stay valid).
//! Dropping a supernode from the list revokes it.
//!
//! Sans-IO: drive it like the [`super::Agent`]; after every call, [`RelayLink::secrets`] tells the
//! relay which secrets to accept (it changes only when [`RelayLink::take_changed`] says so).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::identity::{Identity, NodeKey, UserId};
use crate::session::{self, Endpoint, Event, SessionId, Transmit};
use crate::signal::{self, Message, Request, Response};

/// Settings of the link.
#[derive(Clone, Debug)]
pub struct RelayLinkConfig {
    /// The supernodes this relay authorises.
    pub supernodes: Vec<(NodeKey, SocketAddr)>,
    /// What the relay serves, for the supernodes to pass on.
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub realm: String,
    pub rotate_every: Duration,
    pub keep_previous: Duration,
    /// How often load is reported.
    pub load_every: Duration,
    /// Delay before reconnecting to a supernode that went away.
    pub retry: Duration,
    pub session: session::Config,
}

impl RelayLinkConfig {
    pub fn new(supernodes: Vec<(NodeKey, SocketAddr)>) -> RelayLinkConfig {
        RelayLinkConfig {
            supernodes,
            udp: Vec::new(),
            tcp: Vec::new(),
            tls: Vec::new(),
            realm: "voxmesh".into(),
            rotate_every: Duration::from_secs(3600),
            keep_previous: Duration::from_secs(1200),
            load_every: Duration::from_secs(5),
            retry: Duration::from_secs(2),
            session: session::Config {
                accept: false,
                ..session::Config::default()
            },
        }
    }
}

#[derive(Debug)]
struct Peer {
    key: NodeKey,
    addr: SocketAddr,
    session: Option<SessionId>,
    current: Vec<u8>,
    previous: Option<(Vec<u8>, Instant)>,
    /// The supernode has acknowledged the current secret.
    acknowledged: bool,
    reconnect_at: Option<Instant>,
}

/// The relay's side of the relay directory.
pub struct RelayLink {
    config: RelayLinkConfig,
    ep: Endpoint,
    peers: Vec<Peer>,
    load: u32,
    next_rotation: Instant,
    next_load: Instant,
    changed: bool,
}

fn fresh_secret() -> Vec<u8> {
    rand::random::<[u8; 32]>().to_vec()
}

impl RelayLink {
    pub fn new(
        identity: &Identity,
        config: RelayLinkConfig,
        now: Instant,
        seed: [u8; 32],
    ) -> RelayLink {
        let ep = Endpoint::new(config.session.clone(), identity, now, seed);
        let peers = config
            .supernodes
            .iter()
            .map(|(key, addr)| Peer {
                key: *key,
                addr: *addr,
                session: None,
                current: fresh_secret(),
                previous: None,
                acknowledged: false,
                reconnect_at: Some(now),
            })
            .collect();
        let mut link = RelayLink {
            next_rotation: now + config.rotate_every,
            next_load: now + config.load_every,
            config,
            ep,
            peers,
            load: 0,
            changed: true,
        };
        link.handle_timeout(now);
        link
    }

    /// Authorises one more supernode (one that joined the mesh after the link started); a
    /// supernode already on the list is left as it is.
    pub fn add_supernode(&mut self, now: Instant, key: NodeKey, addr: SocketAddr) {
        if self.peers.iter().any(|p| p.key.id == key.id) {
            return;
        }
        self.config.supernodes.push((key, addr));
        self.peers.push(Peer {
            key,
            addr,
            session: None,
            current: fresh_secret(),
            previous: None,
            acknowledged: false,
            reconnect_at: Some(now),
        });
        self.handle_timeout(now);
    }

    /// This relay's identity, as supernodes see it.
    pub fn id(&self) -> UserId {
        self.ep.id()
    }

    /// The secrets to accept, per supernode ID (current first).
    pub fn secrets(&self, now: Instant) -> Vec<(UserId, Vec<Vec<u8>>)> {
        self.peers
            .iter()
            .map(|p| {
                let mut v = vec![p.current.clone()];
                if let Some((prev, until)) = &p.previous
                    && *until > now
                {
                    v.push(prev.clone());
                }
                (p.key.id, v)
            })
            .collect()
    }

    /// Whether the secrets changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Supernodes that have acknowledged their current secret.
    pub fn authorised(&self) -> Vec<UserId> {
        self.peers
            .iter()
            .filter(|p| p.acknowledged)
            .map(|p| p.key.id)
            .collect()
    }

    /// Closes every session (the relay is stopping): supernodes stop offering it at once
    /// instead of when the session times out.
    pub fn close(&mut self, now: Instant) {
        for p in &mut self.peers {
            if let Some(s) = p.session.take() {
                self.ep.close(now, s);
            }
            p.acknowledged = false;
            p.reconnect_at = None;
        }
    }

    pub fn set_load(&mut self, allocations: u32) {
        self.load = allocations;
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.ep.poll_transmit()
    }

    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let mut t = vec![self.next_rotation, self.next_load];
        t.extend(self.peers.iter().filter_map(|p| p.reconnect_at));
        t.extend(
            self.peers
                .iter()
                .filter_map(|p| p.previous.as_ref().map(|(_, u)| *u)),
        );
        t.extend(self.ep.poll_timeout());
        t.into_iter().min()
    }

    pub fn handle_input(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.ep.handle_input(now, from, data);
        self.pump(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.ep.handle_timeout(now);
        for p in &mut self.peers {
            if p.previous.as_ref().is_some_and(|(_, until)| *until <= now) {
                p.previous = None;
                self.changed = true;
            }
        }
        if now >= self.next_rotation {
            self.next_rotation = now + self.config.rotate_every;
            for p in &mut self.peers {
                let old = std::mem::replace(&mut p.current, fresh_secret());
                p.previous = Some((old, now + self.config.keep_previous));
                p.acknowledged = false;
            }
            self.changed = true;
            for i in 0..self.peers.len() {
                self.hello(now, i);
            }
        }
        if now >= self.next_load {
            self.next_load = now + self.config.load_every;
            let msg = signal::encode(&Message::RLoad {
                allocations: self.load,
            });
            for p in &self.peers {
                if let Some(s) = p.session {
                    let _ = self.ep.send(now, s, &msg);
                }
            }
        }
        for i in 0..self.peers.len() {
            if self.peers[i].reconnect_at.is_some_and(|t| t <= now) {
                self.peers[i].reconnect_at = None;
                let (addr, key) = (self.peers[i].addr, self.peers[i].key);
                match self.ep.connect(now, addr, &key) {
                    Ok(s) => {
                        self.peers[i].session = Some(s);
                        self.hello(now, i);
                    }
                    Err(_) => self.peers[i].reconnect_at = Some(now + self.config.retry),
                }
            }
        }
        self.pump(now);
    }

    /// Gives supernode `i` its current secret (queued until the handshake completes).
    fn hello(&mut self, now: Instant, i: usize) {
        let Some(s) = self.peers[i].session else {
            return;
        };
        let req = Request::RHello {
            udp: self.config.udp.clone(),
            tcp: self.config.tcp.clone(),
            tls: self.config.tls.clone(),
            realm: self.config.realm.clone(),
            secret: self.peers[i].current.clone(),
            load: self.load,
        };
        let _ = self.ep.request(now, s, &signal::encode(&req));
    }

    fn pump(&mut self, now: Instant) {
        while let Some(ev) = self.ep.poll_event() {
            match ev {
                Event::Response { session, body, .. } => {
                    if let Some(p) = self.peers.iter_mut().find(|p| p.session == Some(session)) {
                        p.acknowledged =
                            matches!(signal::decode::<Response>(&body), Ok(Response::Ok));
                    }
                }
                Event::HandshakeFailed { session, .. } | Event::Closed { session, .. } => {
                    let retry = self.config.retry;
                    if let Some(p) = self.peers.iter_mut().find(|p| p.session == Some(session)) {
                        p.session = None;
                        p.acknowledged = false;
                        p.reconnect_at = Some(now + retry);
                    }
                }
                Event::TransactionFailed { session, .. } => {
                    // The hello got no answer: the session will close by itself if the
                    // supernode is gone; otherwise say it again.
                    if let Some(i) = self.peers.iter().position(|p| p.session == Some(session)) {
                        self.hello(now, i);
                    }
                }
                Event::Request { session, txn, .. } => {
                    let resp = signal::encode(&Response::Error {
                        code: 400,
                        reason: "a relay takes no requests".into(),
                    });
                    let _ = self.ep.respond(now, session, txn, &resp);
                }
                Event::Connected { .. } | Event::Message { .. } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_rotate_and_the_previous_one_expires() {
        let t0 = Instant::now();
        let sn = Identity::generate().node_key();
        let mut cfg = RelayLinkConfig::new(vec![(sn, "127.0.0.1:9".parse().unwrap())]);
        cfg.rotate_every = Duration::from_secs(60);
        cfg.keep_previous = Duration::from_secs(20);
        let mut link = RelayLink::new(&Identity::generate(), cfg, t0, [7; 32]);
        assert!(link.take_changed());
        let first = link.secrets(t0);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].0, sn.id);
        assert_eq!(first[0].1.len(), 1);

        // Rotation: a new current secret, the old one still accepted.
        let t1 = t0 + Duration::from_secs(60);
        link.handle_timeout(t1);
        assert!(link.take_changed());
        let rotated = link.secrets(t1);
        assert_eq!(rotated[0].1.len(), 2);
        assert_ne!(rotated[0].1[0], first[0].1[0]);
        assert_eq!(rotated[0].1[1], first[0].1[0]);
        assert!(
            link.poll_timeout()
                .is_some_and(|t| t <= t1 + Duration::from_secs(20))
        );

        // Past keep_previous the old one is gone.
        let t2 = t1 + Duration::from_secs(20);
        link.handle_timeout(t2);
        assert!(link.take_changed());
        assert_eq!(link.secrets(t2)[0].1, vec![rotated[0].1[0].clone()]);
        assert!(!link.take_changed());
    }
}
