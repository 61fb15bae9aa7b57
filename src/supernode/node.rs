//! The supernode core: sessions with clients, other supernodes and relays; SWIM membership; the
//! directory of users homed here; presence fan-out; name claims; relay credentials; routing.
//! Sans-IO: the driver feeds datagrams ([`Supernode::handle_input`]) and timers
//! ([`Supernode::handle_timeout`]), and sends what [`Supernode::poll_transmit`] returns.
//!
//! # Parts
//!
//! `Supernode` owns the session endpoint, the SWIM mesh and the directory of records it homes,
//! and dispatches to sub-machines that each own their state:
//! `peers` (a session per member, proof of key, per-peer queues),
//! `clients` (registered and standby clients),
//! `presence` (our clients' watches and fan-out),
//! `names` (claim ordering and storage rules),
//! `relays` (relays that authorised us, minted credentials),
//! `routing` (requests in flight, lookup and routing decisions) and
//! `promotion` (the mesh's need, dial-back probes, role grants).
//!
//! # Flows
//!
//! - **Register**: a client's signed [`Registration`] names this supernode; its entry goes to
//!   the user's 3 homes (rendezvous hashing over the live members), marked online via us.
//!   Refreshes inside the session are local: the session already proves the user.
//! - **Offline**: when a registered client's session ends, its homes learn `online: false`
//!   with the last-seen time; a supernode that dies is noticed by SWIM, and every home marks the
//!   entries of users connected through it as stale until they register again.
//! - **Lookup**: one hop: asked of the user's homes in rendezvous order.
//! - **Presence**: a supernode watching a user for its clients subscribes at the user's homes;
//!   homes push changes; the supernode fans them out to its watching clients.
//! - **Failover**: a client keeps a standby session with a second supernode and says which one
//!   is its primary; when SWIM declares the primary dead, the standby tells the client at once
//!   (seconds, not a keepalive period).
//! - **Routing**: a client's payload for a user goes to that user's supernode (found by lookup)
//!   and to its client, whose acknowledgement travels back; or a clear error.
//! - **Names**: a claim is ordered by the name's first home and replicated to the others.
//! - **Relays**: relays that authorised us give us a secret each; we mint time-limited TURN
//!   credentials with it, with our ID in the username so the relay knows whose secret to use.
//! - **Promotion**: clients ask what the mesh needs, get dialled back from a socket they never
//!   contacted ([`Supernode::poll_probe`]) and are granted roles, at most the deficit at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::clients::Clients;
use super::names;
use super::peers::{Peers, gained};
use super::presence::{Presence, TooManyWatches, WatchAnswer};
use super::promotion::Promotion;
use super::relays::{Relay, Relays};
use super::routing::{
    AfterLookup, Cont, HomeAnswer, NOT_YET_MEMBER, Pending, after_lookup, delivered, home_answer,
    relayed,
};
use crate::directory::{Directory, HomeCache, name_homes, user_homes};
use crate::identity::{
    Check, ClaimStamp, Identity, NameClaim, NodeKey, RecordPolicy, Timestamp, UserId,
    normalize_name, recheck_record, verify_record,
};
use crate::mesh::{Member, Mesh, MeshConfig, MeshEvent};
use crate::roles::{GrantConfig, NeedInputs, Role};
use crate::session::{self, Endpoint, Event, SessionId, TransactionId, Transmit};
use crate::signal::{
    self, Entry, Message, NodeInfo, Registration, Request, Response, RolesAnswer, RolesRequest,
    Target,
};

/// Sends of a registration to a home that answers [`NOT_YET_MEMBER`], at most.
const STORE_SENDS: u8 = 5;
/// The wait before the second of them, doubled before each further one (1, 2, 4, 8 s: a
/// join gossips to a mesh of 1,000 in about seven rounds of [`crate::mesh::GOSSIP_PERIOD`];
/// a member also learns of it when the new one first probes it).
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Supernode settings.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The address clients and other supernodes reach us at.
    pub addr: SocketAddr,
    pub session: session::Config,
    pub mesh: MeshConfig,
    /// Entries this supernode will home.
    pub max_users: usize,
    pub records: RecordPolicy,
    /// Relay offers per request.
    pub relay_offers: usize,
    /// Lifetime of minted relay credentials.
    pub relay_credential_lifetime: Duration,
    /// Registrations expire this long after the record's expiry at the latest.
    pub registration_lifetime: Duration,
    /// How many relays and supernodes the mesh wants, and how grants are handed out.
    pub grants: GrantConfig,
    /// A promoted supernode's load ramp ([`crate::roles::Ramp`]), from the core's start:
    /// registrations beyond it are refused (503) and the client registers elsewhere. `None`
    /// (a `supernoded`): no ramp.
    pub client_ramp: Option<crate::roles::Ramp>,
    /// A session with another supernode that carried nothing (but keepalives) for this long is
    /// closed; the next thing to send opens one again. Sessions are on demand, so a large mesh
    /// holds sessions only with the peers it works with and probes. Must exceed twice the
    /// session's transaction timeout (no request of either side can still be in flight on a
    /// session this idle); above the keepalive interval, an idle session costs at most a
    /// keepalive or two before it goes. SWIM probes each member about once per (members ×
    /// probe period): meshes smaller than `peer_idle / probe_period` keep every session open.
    pub peer_idle: Duration,
}

impl NodeConfig {
    pub fn new(addr: SocketAddr) -> NodeConfig {
        NodeConfig {
            addr,
            session: session::Config::default(),
            mesh: MeshConfig::default(),
            max_users: 2_000_000,
            records: RecordPolicy::default(),
            relay_offers: 3,
            relay_credential_lifetime: Duration::from_secs(600),
            registration_lifetime: Duration::from_secs(3600),
            grants: GrantConfig::default(),
            client_ramp: None,
            peer_idle: PEER_IDLE,
        }
    }
}

/// Default [`NodeConfig::peer_idle`]: 30 s, six session transaction timeouts and one and a half
/// keepalive intervals.
pub const PEER_IDLE: Duration = Duration::from_secs(30);

/// Counters for the status and metrics.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct NodeCounters {
    pub registrations: u64,
    /// Entries replicated to us as a home.
    pub stores: u64,
    /// Of those, the ones whose record we held already (its signature not verified again).
    pub stores_held: u64,
    /// Entries we sent a home again because it did not know us as a member yet.
    pub store_resends: u64,
    pub refreshes: u64,
    pub lookups: u64,
    pub routed: u64,
    pub presence_pushes: u64,
    pub claims: u64,
    pub relay_offers: u64,
    /// Member-list pages served with members in them (an asker whose digest is current gets
    /// an empty page, not counted).
    pub member_pages: u64,
    /// Requests to other supernodes sent again because their session closed under them.
    pub peer_retries: u64,
    /// Refusals by reason (bad records, impostors, unknown roles...).
    pub refused: HashMap<String, u64>,
}

impl NodeCounters {
    fn refuse(&mut self, why: &str) {
        *self.refused.entry(why.to_string()).or_default() += 1;
    }
}

/// What [`Supernode::status`] reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    pub id: String,
    pub key: String,
    pub addr: SocketAddr,
    pub members: Vec<(String, SocketAddr)>,
    pub clients: usize,
    pub standby_clients: usize,
    pub homed_users: usize,
    pub names: usize,
    pub sessions: usize,
    /// Of those, sessions with other supernodes (opened on demand, closed when idle).
    pub peer_sessions: usize,
    pub relays: Vec<(String, u32)>,
    pub counters: NodeCounters,
}

/// The supernode core.
///
/// Inputs: [`handle_input`](Self::handle_input) (a datagram), [`handle_timeout`](Self::handle_timeout)
/// (when [`poll_timeout`](Self::poll_timeout) says), [`join`](Self::join) and
/// [`leave`](Self::leave); each takes `now`, which only moves forward. After each input, send
/// everything [`poll_transmit`](Self::poll_transmit) returns, then ask
/// [`poll_timeout`](Self::poll_timeout) for the next wake-up. There is no `poll_event`: the
/// supernode answers its clients itself and reports nothing to its driver.
pub struct Supernode {
    me: UserId,
    key: NodeKey,
    config: NodeConfig,
    ep: Endpoint,
    mesh: Mesh,
    dir: Directory,
    /// Monotonic instant and the Unix time it corresponds to.
    clock: crate::identity::UnixClock,
    /// The other supernodes: sessions, proof of key, queued requests.
    peers: Peers<Cont>,
    /// Our clients, registered here or keeping a standby session with us.
    clients: Clients,
    /// Our clients' watches.
    presence: Presence,
    /// Our requests in flight and what waits on each.
    pending: Pending,
    /// Relays that authorised us.
    relays: Relays,
    /// Need, dial-back and grants.
    promotion: Promotion,
    /// When the core started (the load ramp's origin).
    started: Instant,
    /// Our requests to other supernodes in flight, with their bodies: one that fails because
    /// its session closed under it (an idle close crossing it, two sessions settling on one)
    /// is sent once more on a fresh session.
    retry: HashMap<TransactionId, (UserId, Vec<u8>)>,
    /// Entries to send again: a home answered [`NOT_YET_MEMBER`]. (Home, user) -> (when,
    /// sends so far).
    store_retry: HashMap<(UserId, UserId), (Instant, u8)>,
    /// Members that answered [`NOT_YET_MEMBER`] and that we announced ourselves to.
    announced_to: std::collections::HashSet<UserId>,
    /// When to close idle peer sessions next.
    next_sweep: Instant,
    /// The homes of the users we hold, for the member list of the last re-homing.
    homes: HomeCache,
    /// The member list and its digest as last served to clients, for the mesh's and the
    /// peers' versions it was built at: every client asks for it every few refreshes, and
    /// building and hashing it costs a step per member.
    member_list: Option<((u64, u64), Vec<NodeInfo>, signal::Digest)>,
    counters: NodeCounters,
}

impl Supernode {
    /// A supernode with `identity`, joining the mesh through `bootstrap` members.
    pub fn new(
        identity: &Identity,
        config: NodeConfig,
        bootstrap: &[(NodeKey, SocketAddr)],
        now: Instant,
        unix_now: u64,
        seed: [u8; 32],
    ) -> Supernode {
        let mut ep = Endpoint::new(config.session.clone(), identity, now, seed);
        // For early data's freshness check (clients' registrations and invites in handshakes).
        ep.set_wall_clock(now, unix_now.saturating_mul(1000));
        let me = ep.id();
        let key = ep.node_key();
        let member = Member {
            id: me,
            noise: key.noise,
            addr: config.addr,
            generation: 0,
        };
        let mesh_seed = u64::from_le_bytes(seed[..8].try_into().expect("8 bytes"));
        let mesh = Mesh::new(member, &config.mesh, mesh_seed, now);
        let promotion = Promotion::new(config.grants.clone(), mesh_seed ^ 0x5eed);
        let next_sweep = now + config.peer_idle / 4;
        let mut node = Supernode {
            promotion,
            started: now,
            me,
            key,
            dir: Directory::new(config.max_users),
            config,
            ep,
            mesh,
            clock: crate::identity::UnixClock::new(now, unix_now),
            peers: Peers::new(me),
            clients: Clients::default(),
            presence: Presence::default(),
            pending: Pending::default(),
            relays: Relays::default(),
            retry: HashMap::new(),
            store_retry: HashMap::new(),
            announced_to: Default::default(),
            next_sweep,
            homes: HomeCache::default(),
            member_list: None,
            counters: NodeCounters::default(),
        };
        for (k, addr) in bootstrap {
            node.join(now, *k, *addr);
        }
        node
    }

    pub fn id(&self) -> UserId {
        self.me
    }

    pub fn node_key(&self) -> NodeKey {
        self.key
    }

    /// Contacts another supernode to join (or rejoin) the mesh.
    pub fn join(&mut self, now: Instant, key: NodeKey, addr: SocketAddr) {
        if key.id == self.me {
            return;
        }
        self.mesh.join(
            now,
            Member {
                id: key.id,
                noise: key.noise,
                addr,
                generation: 0,
            },
        );
        self.pump(now);
    }

    /// Live members (us included) with their addresses: the host cache.
    pub fn members(&self) -> Vec<NodeInfo> {
        self.live_members()
            .iter()
            .filter_map(|id| self.mesh.member(id))
            .map(|m| NodeInfo {
                key: m.node_key(),
                addr: m.addr,
            })
            .collect()
    }

    /// Live members (us included) that proved their key: what homes are computed over.
    fn live_members(&self) -> Vec<UserId> {
        self.peers.live(self.mesh.member_ids())
    }

    /// `id` proved its key in a session: once it is a member too, it counts.
    fn verify_member(&mut self, now: Instant, id: UserId) {
        if self.mesh.is_member(&id) && self.peers.verify(id) {
            self.rehome(now);
        }
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.me.to_string(),
            key: self.key.to_string(),
            addr: self.config.addr,
            members: self
                .members()
                .into_iter()
                .map(|m| (m.key.id.to_string(), m.addr))
                .collect(),
            clients: self.clients.len(),
            standby_clients: self.clients.standby_len(),
            homed_users: self.dir.len(),
            names: self.dir.name_count(),
            sessions: self.ep.session_count(),
            peer_sessions: self.peers.session_count(),
            relays: self.relays.loads(),
            counters: self.counters.clone(),
        }
    }

    /// Registered clients now: [`Self::status`]'s `clients` without building the rest of it
    /// (the member list grows with the mesh).
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    pub fn counters(&self) -> &NodeCounters {
        &self.counters
    }

    /// Users whose entries this supernode homes.
    pub fn homed_users(&self) -> Vec<UserId> {
        self.dir.users().copied().collect()
    }

    /// Session-layer counters (refusals by reason, handshakes).
    pub fn session_counters(&self) -> &session::Counters {
        self.ep.counters()
    }

    fn unix(&self, now: Instant) -> u64 {
        self.clock.at(now)
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.ep.poll_transmit()
    }

    /// Gives a sent datagram's buffer back for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.ep.recycle(buf);
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        [
            self.ep.poll_timeout(),
            self.mesh.poll_timeout(),
            Some(self.next_sweep),
            self.store_retry.values().map(|(at, _)| *at).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Timers due at `now` fire.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.ep.handle_timeout(now);
        self.mesh.handle_timeout(now);
        self.resend_stores(now);
        if now >= self.next_sweep {
            self.next_sweep = now + self.config.peer_idle / 4;
            for (id, sid) in self.peers.idle(now, self.config.peer_idle) {
                tracing::debug!("closing the idle session with supernode {id}");
                self.ep.close(now, sid);
                self.forget_session(now, sid, Some(id));
            }
        }
        self.pump(now);
    }

    /// A voxmesh frame (first byte 4..=15) that arrived from `from`.
    pub fn handle_input(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.ep.handle_input(now, from, bytes);
        self.pump(now);
    }

    /// Announces our departure to the mesh (graceful shutdown).
    pub fn leave(&mut self, now: Instant) {
        self.mesh.leave(now);
        self.pump(now);
    }

    /// Processes everything the endpoint and the mesh produced until both are quiet.
    fn pump(&mut self, now: Instant) {
        for _ in 0..10_000 {
            let mut busy = false;
            while let Some(ev) = self.ep.poll_event() {
                busy = true;
                self.on_session_event(now, ev);
            }
            while let Some((to, data)) = self.mesh.poll_send() {
                busy = true;
                let sid = self.peer_session(now, &to);
                if let Some(sid) = sid {
                    let _ = self
                        .ep
                        .send(now, sid, &signal::encode(&Message::Swim(data)));
                }
            }
            while let Some(ev) = self.mesh.poll_event() {
                busy = true;
                self.on_mesh_event(now, ev);
            }
            if !busy {
                return;
            }
        }
    }

    /// A session with member `m`, opening one if needed.
    fn peer_session(&mut self, now: Instant, m: &Member) -> Option<SessionId> {
        if let Some(sid) = self.peers.session(&m.id) {
            self.peers.touch(m.id, now);
            return Some(sid);
        }
        let sid = self.ep.connect(now, m.addr, &m.node_key()).ok()?;
        self.peers.add_session(m.id, sid);
        self.peers.touch(m.id, now);
        Some(sid)
    }

    /// Sends a request to supernode `id` (a live member), remembering what waits on it. When
    /// the session has as many requests in flight as it allows (a burst of registrations
    /// fans out to the same homes), the request waits in a per-peer queue, in order, and goes
    /// as answers come back. `false` only when the peer is unreachable or its queue is full.
    fn send_to_peer(&mut self, now: Instant, id: UserId, req: &Request, cont: Cont) -> bool {
        self.send_body_to_peer(now, id, signal::encode(req), cont, true)
    }

    /// [`send_to_peer`](Self::send_to_peer) with the request encoded; `retry`: remember the
    /// body to send it once more if its session closes under it.
    fn send_body_to_peer(
        &mut self,
        now: Instant,
        id: UserId,
        body: Vec<u8>,
        cont: Cont,
        retry: bool,
    ) -> bool {
        let Some(m) = self.mesh.member(&id).cloned() else {
            return false;
        };
        let Some(sid) = self.peer_session(now, &m) else {
            return false;
        };
        if !self.peers.is_queued(&id) {
            match self.ep.request(now, sid, &body) {
                Ok(txn) => {
                    self.pending.insert(txn, cont);
                    if retry {
                        self.retry.insert(txn, (id, body));
                    }
                    return true;
                }
                Err(session::SendError::TooManyInFlight | session::SendError::QueueFull) => {}
                Err(_) => return false,
            }
        }
        if self.peers.enqueue(id, body, cont).is_err() {
            self.counters.refuse("peer queue full");
            return false;
        }
        true
    }

    /// Sends what waits for `peer` while its session takes more.
    fn drain_peer_queue(&mut self, now: Instant, peer: UserId) {
        let Some(sid) = self.peers.session(&peer) else {
            return;
        };
        self.peers.touch(peer, now);
        while let Some(body) = self.peers.front(&peer) {
            match self.ep.request(now, sid, body) {
                Ok(txn) => {
                    let body = body.to_vec();
                    let cont = self.peers.pop(&peer).expect("front exists");
                    self.pending.insert(txn, cont);
                    self.retry.insert(txn, (peer, body));
                }
                Err(session::SendError::TooManyInFlight | session::SendError::QueueFull) => return,
                Err(_) => {
                    // The session is gone: whatever waited fails now.
                    for c in self.peers.take_queue(&peer) {
                        self.on_answer(now, c, None);
                    }
                    return;
                }
            }
        }
    }

    fn respond(&mut self, now: Instant, sid: SessionId, txn: TransactionId, resp: &Response) {
        let _ = self.ep.respond(now, sid, txn, &signal::encode(resp));
    }

    fn error(&mut self, now: Instant, sid: SessionId, txn: TransactionId, code: u16, reason: &str) {
        self.counters.refuse(reason);
        self.respond(
            now,
            sid,
            txn,
            &Response::Error {
                code,
                reason: reason.into(),
            },
        );
    }

    fn on_session_event(&mut self, now: Instant, ev: Event) {
        match ev {
            Event::Connected { session, peer } => {
                if self.mesh.is_member(&peer.id) {
                    // Two sessions with one peer (both opened at once) are both kept: each end
                    // sends on its own and closes it when idle, and so does the other end.
                    // (Settling on one by closing the other cost SWIM its queued datagrams
                    // and slowed convergence.)
                    self.peers.add_session(peer.id, session);
                    self.peers.touch(peer.id, now);
                    self.verify_member(now, peer.id);
                    self.drain_peer_queue(now, peer.id);
                }
            }
            Event::HandshakeFailed { session, .. } => self.forget_session(now, session, None),
            Event::Closed { session, peer, .. } => self.forget_session(now, session, peer),
            Event::Request { session, txn, body } => {
                self.touch_peer(now, session);
                match signal::decode::<Request>(&body) {
                    Ok(req) => self.on_request(now, session, txn, req),
                    Err(e) => {
                        // Counted under one reason (the detail varies), answered with it.
                        self.counters.refuse("bad request");
                        let reason = format!("bad request: {e}");
                        self.respond(now, session, txn, &Response::Error { code: 400, reason });
                    }
                }
            }
            Event::Response { session, txn, body } => {
                self.retry.remove(&txn);
                self.touch_peer(now, session);
                if let Some(cont) = self.pending.take(&txn) {
                    let resp = match signal::decode::<Response>(&body) {
                        Ok(r) => r,
                        Err(_) => {
                            self.counters.refuse("malformed answer");
                            Response::Error {
                                code: 502,
                                reason: "malformed answer".into(),
                            }
                        }
                    };
                    self.on_answer(now, cont, Some(resp));
                }
                if let Some(peer) = self.peer_id(session) {
                    self.drain_peer_queue(now, peer);
                }
            }
            Event::TransactionFailed {
                session,
                txn,
                error,
            } => {
                let again = self.retry.remove(&txn);
                if let Some(cont) = self.pending.take(&txn) {
                    match again {
                        Some((peer, body)) if error == session::TransactionError::SessionClosed => {
                            // Once more on a fresh session; the continuation fails only if
                            // that cannot even be sent.
                            self.counters.peer_retries += 1;
                            let cont_copy = cont.clone();
                            if !self.send_body_to_peer(now, peer, body, cont, false) {
                                self.on_answer(now, cont_copy, None);
                            }
                        }
                        _ => self.on_answer(now, cont, None),
                    }
                }
                if let Some(peer) = self.peer_id(session) {
                    self.drain_peer_queue(now, peer);
                }
            }
            Event::Message { session, body } => {
                self.touch_peer(now, session);
                self.on_message(now, session, &body)
            }
        }
    }

    /// Traffic on `sid`: if it is the session we hold with a supernode, it is in use.
    fn touch_peer(&mut self, now: Instant, sid: SessionId) {
        if let Some(peer) = self.peer_id(sid)
            && self.peers.session(&peer) == Some(sid)
        {
            self.peers.touch(peer, now);
        }
    }

    fn peer_id(&self, sid: SessionId) -> Option<UserId> {
        self.ep.peer_id(sid)
    }

    /// Session `sid` (authenticated as `peer`, if it got that far) is gone.
    fn forget_session(&mut self, now: Instant, sid: SessionId, peer: Option<UserId>) {
        self.peers.forget_session(sid);
        if let Some(record) = self.clients.forget_session(sid, peer)
            && let Some(user) = peer
        {
            self.publish_offline(now, user, record);
        }
        self.relays.forget_session(sid);
        // Our clients' watches die with their session.
        for user in self.presence.drop_session(sid) {
            self.unsubscribe(now, user);
        }
    }

    /// Nobody here watches `user` any more: the homes stop telling us.
    fn unsubscribe(&mut self, now: Instant, user: UserId) {
        for h in user_homes(&user, &self.live_members()) {
            self.send_or_local(
                now,
                h,
                Request::PUnwatch {
                    user,
                    watcher: self.me,
                },
            );
        }
    }

    fn on_message(&mut self, now: Instant, sid: SessionId, body: &[u8]) {
        let Ok(msg) = signal::decode::<Message>(body) else {
            self.counters.refuse("malformed message");
            return;
        };
        let Some(peer) = self.peer_id(sid) else {
            return;
        };
        match msg {
            Message::Swim(data) => {
                if let Err(e) = self.mesh.handle_data(now, peer, &data) {
                    self.counters.refuse(match e {
                        crate::mesh::MeshError::Impostor { .. } => "swim impostor",
                        crate::mesh::MeshError::Malformed(_) => "swim malformed",
                    });
                    return;
                }
                self.peers.add_session(peer, sid);
                self.verify_member(now, peer);
            }
            Message::Presence {
                user,
                online,
                last_seen,
                stale,
            } if self.mesh.is_member(&peer) => {
                self.fan_out_presence(now, user, online, last_seen, stale);
            }
            Message::RLoad { allocations } if self.relays.is_relay(&peer) => {
                self.relays.set_load(&peer, allocations);
            }
            _ => self.counters.refuse("unexpected message"),
        }
    }

    /// A request on session `sid`: clients' (`C*`) and relays' (`R*`) go to their handlers;
    /// the rest are supernode-to-supernode, and only live members may ask them.
    fn on_request(&mut self, now: Instant, sid: SessionId, txn: TransactionId, req: Request) {
        let Some(peer) = self.peer_id(sid) else {
            return;
        };
        match req {
            Request::CRegister { record } => self.register(now, sid, txn, peer, &record),
            Request::CRefresh => self.refresh(now, sid, txn, peer),
            Request::CLookup(target) => self.client_lookup(now, sid, txn, target),
            Request::CWatch(user) => self.watch(now, sid, txn, user),
            Request::CUnwatch(user) => self.unwatch(now, sid, txn, user),
            Request::CClaim { claim } => self.claim(now, sid, txn, peer, claim),
            Request::CRoute { to, payload } => self.client_route(now, sid, txn, peer, to, payload),
            Request::CRelays => self.relay_offers(now, sid, txn, peer),
            Request::CStandby { primary } => self.standby(now, sid, txn, primary),
            Request::CMembers => self.members_whole(now, sid, txn),
            Request::CMembersPage { after, digest } => {
                let key = (self.mesh.version(), self.peers.version());
                if self.member_list.as_ref().is_none_or(|(k, ..)| *k != key) {
                    let list = self.members();
                    let d = signal::members_digest(&list);
                    self.member_list = Some((key, list, d));
                }
                let (_, list, d) = self.member_list.as_ref().expect("just made");
                let budget = self.ep.config().max_body();
                let resp = signal::members_page(list, *d, after, digest, budget);
                if matches!(&resp, Response::MembersPage { members, .. } if !members.is_empty()) {
                    self.counters.member_pages += 1;
                }
                self.respond(now, sid, txn, &resp);
            }
            Request::CStandbyIs { standby } => self.standby_is(now, sid, txn, peer, standby),
            Request::CRoles(r) => self.roles(now, sid, txn, peer, r),
            Request::RHello {
                udp,
                tcp,
                tls,
                realm,
                secret,
                load,
            } => {
                let relay = Relay {
                    udp,
                    tcp,
                    tls,
                    realm,
                    secret,
                    load,
                };
                self.relay_hello(now, sid, txn, peer, relay)
            }
            req if self.mesh.is_member(&peer) && peer != self.me => {
                let resp = self.on_peer_request(now, sid, txn, req);
                if let Some(resp) = resp {
                    self.respond(now, sid, txn, &resp);
                }
            }
            _ => {
                let why = "supernode request from a non-member";
                self.error(now, sid, txn, NOT_YET_MEMBER, why)
            }
        }
    }

    /// A live member's request: the answer, unless one was given already or will be later.
    fn on_peer_request(
        &mut self,
        now: Instant,
        sid: SessionId,
        txn: TransactionId,
        req: Request,
    ) -> Option<Response> {
        Some(match req {
            Request::PStore { user, entry } => self.store(now, user, entry),
            Request::PProbe { to, nonce } => {
                self.promotion.probe_for_peer(to, nonce);
                Response::Ok
            }
            Request::PFetch(user) => self
                .local_entry(&user)
                .map_or(Response::NotFound, Response::Entry),
            Request::PFetchName(name) => {
                Response::Holder(names::holder(&self.dir, &name, Timestamp(self.unix(now))))
            }
            Request::PWatch { user, watcher } => {
                if !self.dir.watch(user, watcher) {
                    self.error(now, sid, txn, 429, "too many watchers");
                    return None;
                }
                Response::Ok
            }
            Request::PUnwatch { user, watcher } => {
                self.dir.unwatch(&user, &watcher);
                Response::Ok
            }
            Request::PForward { from, to, payload } => {
                self.deliver(now, sid, txn, from, to, payload);
                return None;
            }
            Request::PClaim { claim } => self.order_claim(now, &claim),
            Request::PClaimStore {
                claim,
                orderer,
                order,
                received_at,
            } => {
                let received_at = Timestamp(received_at);
                let stamp = ClaimStamp {
                    orderer,
                    order,
                    received_at,
                };
                if !self.store_claim(now, &claim, stamp) {
                    let reason = "bad claim record".into();
                    return Some(Response::Error { code: 403, reason });
                }
                Response::Ok
            }
            // on_request handles them before asking whether the sender is a member.
            Request::CRegister { .. }
            | Request::CRefresh
            | Request::CLookup(_)
            | Request::CWatch(_)
            | Request::CUnwatch(_)
            | Request::CClaim { .. }
            | Request::CRoute { .. }
            | Request::CRelays
            | Request::CStandby { .. }
            | Request::CMembers
            | Request::CMembersPage { .. }
            | Request::CStandbyIs { .. }
            | Request::CRoles(_)
            | Request::RHello { .. } => unreachable!("not a supernode request"),
        })
    }

    // ------------------------------------------------------------------ client requests

    /// The whole member list in one answer, or a refusal that says why: a list too long for
    /// one frame used to go unanswered, which the asker took for a dead supernode.
    fn members_whole(&mut self, now: Instant, sid: SessionId, txn: TransactionId) {
        let body = signal::encode(&Response::Members(self.members()));
        if body.len() <= self.ep.config().max_body() {
            let _ = self.ep.respond(now, sid, txn, &body);
        } else {
            self.error(
                now,
                sid,
                txn,
                413,
                "member list exceeds one frame: ask by pages",
            );
        }
    }

    fn refresh(&mut self, now: Instant, sid: SessionId, txn: TransactionId, peer: UserId) {
        if self.clients.is_registered(&peer, sid) {
            self.counters.refreshes += 1;
            self.respond(now, sid, txn, &Response::Ok);
        } else {
            self.error(now, sid, txn, 403, "not registered here");
        }
    }

    fn client_lookup(&mut self, now: Instant, sid: SessionId, txn: TransactionId, t: Target) {
        self.counters.lookups += 1;
        match t {
            Target::Id(user) => self.lookup(now, sid, txn, user, None, None),
            Target::Name(name) => self.lookup_name(now, sid, txn, &name),
        }
    }

    fn watch(&mut self, now: Instant, sid: SessionId, txn: TransactionId, user: UserId) {
        match self.presence.watch(sid, user) {
            Err(TooManyWatches) => return self.error(now, sid, txn, 429, "too many watches"),
            Ok(false) => return self.respond(now, sid, txn, &Response::Ok),
            Ok(true) => {}
        }
        // Answer once a home holds the subscription (any one pushes every change), so a change
        // right after the answer cannot be missed.
        let mut pending = 0u8;
        let mut held = false;
        let req = Request::PWatch {
            user,
            watcher: self.me,
        };
        for h in user_homes(&user, &self.live_members()) {
            if h == self.me {
                self.send_or_local(now, h, req.clone());
                held = true;
            } else if self.send_to_peer(now, h, &req, Cont::Watch { client: sid, txn }) {
                pending += 1;
            }
        }
        if held || pending == 0 {
            // Held here, or no home reachable: then the homes learn of the watch when
            // membership settles and records re-home; answer now either way.
            self.respond(now, sid, txn, &Response::Ok);
        } else {
            self.presence.await_homes(sid, txn, pending);
        }
    }

    fn unwatch(&mut self, now: Instant, sid: SessionId, txn: TransactionId, user: UserId) {
        if self.presence.unwatch(sid, user) {
            self.unsubscribe(now, user);
        }
        self.respond(now, sid, txn, &Response::Ok);
    }

    fn client_route(
        &mut self,
        now: Instant,
        sid: SessionId,
        txn: TransactionId,
        peer: UserId,
        to: UserId,
        payload: Vec<u8>,
    ) {
        if !self.clients.is_registered(&peer, sid) {
            return self.error(now, sid, txn, 403, "register before routing");
        }
        self.route(now, sid, txn, peer, to, payload);
    }

    fn standby(&mut self, now: Instant, sid: SessionId, txn: TransactionId, primary: UserId) {
        self.clients.standby_for(sid, primary);
        self.respond(now, sid, txn, &Response::Ok);
    }

    fn standby_is(
        &mut self,
        now: Instant,
        sid: SessionId,
        txn: TransactionId,
        peer: UserId,
        standby: UserId,
    ) {
        if self.clients.set_standby(&peer, sid, &standby) {
            self.respond(now, sid, txn, &Response::Ok);
        } else {
            self.error(now, sid, txn, 403, "not registered here");
        }
    }

    fn relay_hello(
        &mut self,
        now: Instant,
        sid: SessionId,
        txn: TransactionId,
        peer: UserId,
        relay: Relay,
    ) {
        match self.relays.hello(sid, peer, relay) {
            Ok(()) => {
                self.promotion.confirmed(&peer, Role::Relay);
                self.respond(now, sid, txn, &Response::Ok)
            }
            Err(e) => self.error(now, sid, txn, 400, e.reason()),
        }
    }

    /// Sends `req` to supernode `to`, or handles it here when `to` is us.
    fn send_or_local(&mut self, now: Instant, to: UserId, req: Request) {
        if to != self.me {
            self.send_to_peer(now, to, &req, Cont::Fire);
            return;
        }
        match req {
            Request::PStore { user, entry } => {
                let _ = self.store(now, user, entry);
            }
            Request::PWatch { user, watcher } => {
                self.dir.watch(user, watcher);
            }
            Request::PUnwatch { user, watcher } => self.dir.unwatch(&user, &watcher),
            _ => {}
        }
    }

    // ------------------------------------------------------------------ registration

    fn register(
        &mut self,
        now: Instant,
        sid: SessionId,
        txn: TransactionId,
        peer: UserId,
        record: &[u8],
    ) {
        // The newest registration we know of this user (as one of its homes, or as the
        // supernode it is registered through) must be older: a replay of it, or of anything
        // before it, is refused. The agent signs a new record for every registration.
        let newer_than = [self.dir.get(&peer).map(|s| s.seq), self.clients.seq(&peer)]
            .into_iter()
            .flatten()
            .max();
        let check = Check {
            now: Timestamp(self.unix(now)),
            expected_signer: Some(&peer),
            newer_than,
            policy: self.config.records,
        };
        let rec = match verify_record::<Registration>(record, &check) {
            Ok(r) => r,
            Err(e) => {
                let code = e.code();
                return self.error(now, sid, txn, 403, &format!("registration refused: {code}"));
            }
        };
        if rec.payload.supernode != self.me {
            return self.error(now, sid, txn, 400, "registration names another supernode");
        }
        if let Some(ramp) = self.config.client_ramp
            && self.clients.session_of(&peer).is_none()
            && self.clients.len()
                >= ramp.limit(now.saturating_duration_since(self.started)) as usize
        {
            self.counters.refuse("ramping up");
            return self.error(now, sid, txn, 503, "ramping up: register elsewhere");
        }
        self.counters.registrations += 1;
        let record: std::sync::Arc<[u8]> = record.into();
        self.clients.register(peer, sid, record.clone(), rec.seq);
        self.replicate_registration(now, peer, record);
        let expires_at = rec.expires_at.0;
        self.respond(now, sid, txn, &Response::Registered { expires_at });
    }

    /// Publishes `user`'s registration here to its homes.
    fn replicate_registration(&mut self, now: Instant, user: UserId, record: std::sync::Arc<[u8]>) {
        let entry = self.own_entry(record, true, self.unix(now));
        for h in user_homes(&user, &self.live_members()) {
            self.store_at(now, h, user, entry.clone(), 1);
        }
    }

    /// Sends `user`'s entry to its home `home` (or stores it, when that is us); `sends`: the
    /// how-many-th time. A home that answers [`NOT_YET_MEMBER`] gets it again later.
    fn store_at(&mut self, now: Instant, home: UserId, user: UserId, entry: Entry, sends: u8) {
        let req = Request::PStore { user, entry };
        if home == self.me {
            self.send_or_local(now, home, req);
        } else {
            self.send_to_peer(now, home, &req, Cont::Store { home, user, sends });
        }
    }

    /// Entries a home refused as too early, due again: sent if it is still one of the user's
    /// homes, with what we know now (our client's registration, else the entry we home).
    fn resend_stores(&mut self, now: Instant) {
        if !self.store_retry.values().any(|(at, _)| *at <= now) {
            return;
        }
        let mut due: Vec<((UserId, UserId), u8)> = self
            .store_retry
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(k, (_, sends))| (*k, *sends))
            .collect();
        // In a fixed order (a hash map's is not): the simulator's runs repeat.
        due.sort_unstable();
        let members = self.live_members();
        for ((home, user), sends) in due {
            self.store_retry.remove(&(home, user));
            if !user_homes(&user, &members).contains(&home) {
                continue;
            }
            let entry = match self.clients.record(&user) {
                Some(record) => Some(self.own_entry(record, true, self.unix(now))),
                None => self.dir.get(&user).map(|s| s.entry.clone()),
            };
            if let Some(entry) = entry {
                self.counters.store_resends += 1;
                self.store_at(now, home, user, entry, sends + 1);
            }
        }
    }

    /// The entry of a client registered through us, as we publish it to its homes.
    fn own_entry(&self, record: std::sync::Arc<[u8]>, online: bool, last_seen: u64) -> Entry {
        Entry {
            record,
            name: None,
            online,
            last_seen,
            via: self.me,
            stale: false,
        }
    }

    /// A registered client left: its homes learn it is offline and when it was last seen.
    fn publish_offline(&mut self, now: Instant, user: UserId, record: std::sync::Arc<[u8]>) {
        let e = self.own_entry(record, false, self.unix(now));
        for h in user_homes(&user, &self.live_members()) {
            self.send_or_local(
                now,
                h,
                Request::PStore {
                    user,
                    entry: e.clone(),
                },
            );
        }
    }

    /// Stores an entry replicated to us. Verifies the user's signature: homes never trust the
    /// forwarding supernode for who the user is, nor for where the user is connected (the
    /// record names that supernode), nor for a name (names come from claims, not entries).
    fn store(&mut self, now: Instant, user: UserId, mut entry: Entry) -> Response {
        self.counters.stores += 1;
        let check = Check {
            now: Timestamp(self.unix(now)),
            expected_signer: Some(&user),
            newer_than: None,
            policy: RecordPolicy {
                // Replicas accept records that are still valid, however old their issue time.
                ..self.config.records
            },
        };
        // A home is sent the record it holds again and again: by each of the user's other homes
        // when it gains the entry after a membership change, and with `online: false` when the
        // user leaves. Those exact bytes passed the full check when they were stored here
        // (nothing enters the directory otherwise), so their signature is not verified again;
        // every other check is (the record may have expired since, the signer must match).
        let held = self
            .dir
            .get(&user)
            .is_some_and(|s| *s.entry.record == *entry.record);
        self.counters.stores_held += u64::from(held);
        let opened = if held {
            recheck_record::<Registration>(&entry.record, &check)
        } else {
            verify_record::<Registration>(&entry.record, &check)
        };
        let rec = match opened {
            Ok(r) => r,
            Err(e) => {
                self.counters
                    .refuse(&format!("store refused: {}", e.code()));
                return Response::Error {
                    code: 403,
                    reason: format!("bad record: {}", e.code()),
                };
            }
        };
        if rec.payload.supernode != entry.via {
            self.counters.refuse("store refused: via");
            return Response::Error {
                code: 403,
                reason: "bad record: names another supernode than the entry".into(),
            };
        }
        entry.name = None;
        match self.dir.store(user, entry, rec.seq) {
            Ok(Some(change)) => {
                self.push_presence(
                    now,
                    change.user,
                    change.online,
                    change.last_seen,
                    change.stale,
                );
                Response::Ok
            }
            Ok(None) => Response::Ok,
            Err(e) => {
                self.counters.refuse(match e {
                    crate::directory::StoreError::Stale => "store refused: stale",
                    crate::directory::StoreError::Full => "store refused: full",
                });
                Response::Error {
                    code: 409,
                    reason: e.to_string(),
                }
            }
        }
    }

    /// The entry we home for `user`, with staleness as of now.
    fn local_entry(&self, user: &UserId) -> Option<Entry> {
        let s = self.dir.get(user)?;
        let mut e = s.entry.clone();
        if !self.mesh.is_member(&e.via) {
            e.stale = true;
        }
        Some(e)
    }

    // ------------------------------------------------------------------ presence

    /// A stored entry changed here: tell the supernodes watching it.
    fn push_presence(
        &mut self,
        now: Instant,
        user: UserId,
        online: bool,
        last_seen: u64,
        stale: bool,
    ) {
        for w in self.dir.watchers_of(&user) {
            if w == self.me {
                self.fan_out_presence(now, user, online, last_seen, stale);
            } else if let Some(m) = self.mesh.member(&w).cloned()
                && let Some(sid) = self.peer_session(now, &m)
            {
                let msg = Message::Presence {
                    user,
                    online,
                    last_seen,
                    stale,
                };
                let _ = self.ep.send(now, sid, &signal::encode(&msg));
            }
        }
    }

    /// Presence for our watching clients. Each of the user's homes pushes the same change:
    /// clients hear it once.
    fn fan_out_presence(
        &mut self,
        now: Instant,
        user: UserId,
        online: bool,
        last_seen: u64,
        stale: bool,
    ) {
        let sessions = self.presence.fan_out(user, online, stale);
        if sessions.is_empty() {
            return;
        }
        let msg = signal::encode(&Message::Presence {
            user,
            online,
            last_seen,
            stale,
        });
        for sid in sessions {
            self.counters.presence_pushes += 1;
            let _ = self.ep.send(now, sid, &msg);
        }
    }

    // ------------------------------------------------------------------ lookups and routing

    fn lookup(
        &mut self,
        now: Instant,
        client: SessionId,
        txn: TransactionId,
        user: UserId,
        name: Option<String>,
        route: Option<(UserId, Vec<u8>)>,
    ) {
        let homes = user_homes(&user, &self.live_members());
        if homes.contains(&self.me)
            && let Some(e) = self.local_entry(&user)
        {
            return self.lookup_done(now, client, txn, user, Some(with_name(e, name)), route);
        }
        let rest: Vec<UserId> = homes.into_iter().filter(|h| *h != self.me).collect();
        self.lookup_next(now, client, txn, user, rest, name, route);
    }

    #[allow(clippy::too_many_arguments)]
    fn lookup_next(
        &mut self,
        now: Instant,
        client: SessionId,
        txn: TransactionId,
        user: UserId,
        mut rest: Vec<UserId>,
        name: Option<String>,
        route: Option<(UserId, Vec<u8>)>,
    ) {
        while !rest.is_empty() {
            let h = rest.remove(0);
            let cont = Cont::Lookup {
                client,
                txn,
                user,
                rest: rest.clone(),
                name: name.clone(),
                route: route.clone(),
            };
            if self.send_to_peer(now, h, &Request::PFetch(user), cont) {
                return;
            }
        }
        self.lookup_done(now, client, txn, user, None, route);
    }

    fn lookup_done(
        &mut self,
        now: Instant,
        client: SessionId,
        txn: TransactionId,
        user: UserId,
        entry: Option<Entry>,
        route: Option<(UserId, Vec<u8>)>,
    ) {
        match (after_lookup(self.me, entry, route.is_some()), route) {
            (AfterLookup::Answer(resp), _) => self.respond(now, client, txn, &resp),
            (AfterLookup::Refuse(code, why), _) => self.error(now, client, txn, code, why),
            (AfterLookup::Forward(via), Some((from, payload))) => {
                let req = Request::PForward {
                    from,
                    to: user,
                    payload,
                };
                if !self.send_to_peer(now, via, &req, Cont::Forward { client, txn }) {
                    self.error(now, client, txn, 503, "the user's supernode is unreachable");
                }
            }
            (AfterLookup::Forward(_), None) => unreachable!("forwards only what is routed"),
        }
    }

    fn lookup_name(&mut self, now: Instant, client: SessionId, txn: TransactionId, name: &str) {
        let Ok(name) = normalize_name(name) else {
            return self.error(now, client, txn, 400, "invalid name");
        };
        let homes = name_homes(&name, &self.live_members());
        if homes.contains(&self.me) {
            if let Some(holder) = names::holder(&self.dir, &name, Timestamp(self.unix(now))) {
                return self.lookup(now, client, txn, holder, Some(name), None);
            }
        }
        let rest: Vec<UserId> = homes.into_iter().filter(|h| *h != self.me).collect();
        self.lookup_name_next(now, client, txn, name, rest);
    }

    fn lookup_name_next(
        &mut self,
        now: Instant,
        client: SessionId,
        txn: TransactionId,
        name: String,
        mut rest: Vec<UserId>,
    ) {
        while !rest.is_empty() {
            let h = rest.remove(0);
            let cont = Cont::LookupName {
                client,
                txn,
                name: name.clone(),
                rest: rest.clone(),
            };
            if self.send_to_peer(now, h, &Request::PFetchName(name.clone()), cont) {
                return;
            }
        }
        self.respond(now, client, txn, &Response::NotFound);
    }

    fn route(
        &mut self,
        now: Instant,
        client: SessionId,
        txn: TransactionId,
        from: UserId,
        to: UserId,
        payload: Vec<u8>,
    ) {
        self.counters.routed += 1;
        if let Some(dst) = self.clients.session_of(&to) {
            return self.deliver_to(now, dst, client, txn, from, payload);
        }
        self.lookup(now, client, txn, to, None, Some((from, payload)));
    }

    /// A forward arrived for one of our clients.
    fn deliver(
        &mut self,
        now: Instant,
        asker: SessionId,
        txn: TransactionId,
        from: UserId,
        to: UserId,
        payload: Vec<u8>,
    ) {
        match self.clients.session_of(&to) {
            Some(dst) => self.deliver_to(now, dst, asker, txn, from, payload),
            None => self.error(now, asker, txn, 410, "user not connected here"),
        }
    }

    fn deliver_to(
        &mut self,
        now: Instant,
        dst: SessionId,
        asker: SessionId,
        txn: TransactionId,
        from: UserId,
        payload: Vec<u8>,
    ) {
        let body = signal::encode(&Message::Deliver { from, payload });
        match self.ep.request(now, dst, &body) {
            Ok(t) => {
                self.pending.insert(t, Cont::Deliver { asker, txn });
            }
            Err(_) => self.error(now, asker, txn, 503, "cannot reach the user's client"),
        }
    }

    /// Sends a failover notice to a client as a request, so it is retransmitted until the client
    /// acknowledges it (see [`Cont::Notice`]).
    fn notify(&mut self, now: Instant, client: SessionId, body: Vec<u8>) {
        if let Ok(t) = self.ep.request(now, client, &body) {
            self.pending.insert(t, Cont::Notice { client, body });
        }
    }

    fn on_answer(&mut self, now: Instant, cont: Cont, resp: Option<Response>) {
        match cont {
            Cont::Fire => {}
            Cont::Store { home, user, sends } => {
                let early = matches!(
                    resp,
                    Some(Response::Error {
                        code: NOT_YET_MEMBER,
                        ..
                    })
                );
                if early && self.announced_to.insert(home) {
                    // Gossip may take many rounds to tell this home about us (a member that
                    // hears nothing learns of a newcomer when one of them probes the other):
                    // introduce ourselves, as we did to our bootstrap. Once per home.
                    if let Some(m) = self.mesh.member(&home).cloned() {
                        self.mesh.join(now, m);
                    }
                }
                if early && sends < STORE_SENDS {
                    // Gossip reaches the whole mesh within a few rounds; wait longer each time.
                    let at = now + STORE_RETRY * (1 << (sends - 1));
                    self.store_retry.entry((home, user)).or_insert((at, sends));
                }
            }
            Cont::Notice { client, body } => {
                if resp.is_none() && self.ep.is_established(client) {
                    self.notify(now, client, body);
                }
            }
            Cont::Watch { client, txn } => {
                let held = matches!(resp, Some(Response::Ok));
                match self.presence.home_answered(client, txn, held) {
                    WatchAnswer::Wait => {}
                    WatchAnswer::Held => self.respond(now, client, txn, &Response::Ok),
                    WatchAnswer::Failed => {
                        let resp = Response::Error {
                            code: 503,
                            reason: "no home supernode took the watch".into(),
                        };
                        self.respond(now, client, txn, &resp);
                    }
                }
            }
            Cont::Lookup {
                client,
                txn,
                user,
                rest,
                name,
                route,
            } => match home_answer(user, resp) {
                HomeAnswer::Found(e) => {
                    self.lookup_done(now, client, txn, user, Some(with_name(e, name)), route)
                }
                HomeAnswer::Next(why) => {
                    if let Some(why) = why {
                        self.counters.refuse(why);
                    }
                    self.lookup_next(now, client, txn, user, rest, name, route)
                }
            },
            Cont::LookupName {
                client,
                txn,
                name,
                rest,
            } => match resp {
                Some(Response::Holder(Some(holder))) => {
                    self.lookup(now, client, txn, holder, Some(name), None)
                }
                Some(Response::Holder(None) | Response::NotFound | Response::Error { .. })
                | None => self.lookup_name_next(now, client, txn, name, rest),
                Some(_) => {
                    self.counters.refuse("unexpected answer");
                    self.lookup_name_next(now, client, txn, name, rest)
                }
            },
            Cont::Claim { client, txn } | Cont::Forward { client, txn } => {
                self.respond(now, client, txn, &relayed(resp))
            }
            Cont::Deliver { asker, txn } => self.respond(now, asker, txn, &delivered(resp)),
        }
    }

    // ------------------------------------------------------------------ names

    fn claim(
        &mut self,
        now: Instant,
        sid: SessionId,
        txn: TransactionId,
        peer: UserId,
        claim: Vec<u8>,
    ) {
        let check = Check {
            now: Timestamp(self.unix(now)),
            expected_signer: Some(&peer),
            newer_than: None,
            policy: self.config.records,
        };
        let rec = match verify_record::<NameClaim>(&claim, &check) {
            Ok(r) => r,
            Err(e) => {
                return self.error(now, sid, txn, 403, &format!("claim refused: {}", e.code()));
            }
        };
        self.counters.claims += 1;
        let homes = name_homes(&rec.payload.name, &self.live_members());
        match homes.first().copied() {
            Some(h) if h == self.me => {
                let resp = self.order_claim(now, &claim);
                self.respond(now, sid, txn, &resp);
            }
            Some(h) => {
                if !self.send_to_peer(
                    now,
                    h,
                    &Request::PClaim { claim },
                    Cont::Claim { client: sid, txn },
                ) {
                    self.error(now, sid, txn, 503, "the name's home is unreachable");
                }
            }
            None => self.error(now, sid, txn, 503, "no supernodes"),
        }
    }

    /// We are the name's first home: admit or refuse, stamp, replicate.
    fn order_claim(&mut self, now: Instant, claim: &[u8]) -> Response {
        let now_ts = Timestamp(self.unix(now));
        let (name, stamp) = match names::order(&mut self.dir, self.me, claim, now_ts) {
            Ok(ordered) => ordered,
            Err(refused) => {
                self.counters.refuse(&refused.counted);
                return refused.response;
            }
        };
        self.store_claim(now, claim, stamp);
        for h in name_homes(&name, &self.live_members()) {
            if h != self.me {
                let req = Request::PClaimStore {
                    claim: claim.to_vec(),
                    orderer: stamp.orderer,
                    order: stamp.order,
                    received_at: stamp.received_at.0,
                };
                self.send_to_peer(now, h, &req, Cont::Fire);
            }
        }
        Response::Claimed { name }
    }

    /// Keeps a stamped claim by the replicas' rule; `false` (counted) if the record is bad.
    fn store_claim(&mut self, now: Instant, claim: &[u8], stamp: ClaimStamp) -> bool {
        let now_ts = Timestamp(self.unix(now));
        let members = self.live_members();
        let homes = |name: &str| name_homes(name, &members);
        let stored = names::store(&mut self.dir, claim, stamp, now_ts, homes);
        if !stored {
            self.counters.refuse("bad stored claim");
        }
        stored
    }

    // ------------------------------------------------------------------ relays

    fn relay_offers(&mut self, now: Instant, sid: SessionId, txn: TransactionId, user: UserId) {
        let expires_at = self.unix(now) + self.config.relay_credential_lifetime.as_secs();
        let offers = self
            .relays
            .offers(self.me, user, expires_at, self.config.relay_offers);
        self.counters.relay_offers += offers.len() as u64;
        self.respond(now, sid, txn, &Response::Relays(offers));
    }

    // ------------------------------------------------------------------ promotion

    /// The mesh's need as this supernode sees it: its clients times the live members estimate
    /// the population (rendezvous hashing spreads clients evenly enough for a count).
    fn need(&self) -> crate::roles::Need {
        let members = self.live_members().len().max(1);
        let clients = self.clients.len().saturating_mul(members);
        let (relays, load) = self.relays.count_and_load();
        let typical = u64::from(self.config.grants.typical_relay_kbps);
        self.promotion.need(&NeedInputs {
            registered_clients: u32::try_from(clients).unwrap_or(u32::MAX),
            supernodes: u32::try_from(members).unwrap_or(u32::MAX),
            relays,
            relay_capacity_kbps: u64::from(relays) * typical,
            // An allocation is one side of a relayed call: two make one call.
            relayed_calls: load.div_ceil(2),
        })
    }

    fn roles(
        &mut self,
        now: Instant,
        sid: SessionId,
        txn: TransactionId,
        peer: UserId,
        req: RolesRequest,
    ) {
        let answer = match req {
            RolesRequest::Need => RolesAnswer::Need(self.need()),
            RolesRequest::DialBack => {
                let Some(source) = self.ep.peer(sid).map(|p| p.addr) else {
                    return;
                };
                // A second vantage point once one exists: another live member probes too.
                let helper = self
                    .live_members()
                    .into_iter()
                    .find(|m| *m != self.me && self.mesh.member(m).is_some());
                let (answer, second) =
                    self.promotion
                        .dial_back(now, peer, source, helper.is_some());
                if let (Some(h), Some(nonce)) = (helper, second) {
                    let req = Request::PProbe { to: source, nonce };
                    self.send_to_peer(now, h, &req, Cont::Fire);
                }
                answer
            }
            RolesRequest::Promote { role, proof, id } => {
                let need = self.need();
                self.promotion.promote(now, peer, role, proof, id, need)
            }
        };
        self.respond(now, sid, txn, &Response::Roles(answer));
    }

    /// The next dial-back probe: the driver sends `data` to `to` from a socket of its own that
    /// no client has contacted (not the supernode's port).
    #[must_use]
    pub fn poll_probe(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.promotion.poll_probe()
    }

    // ------------------------------------------------------------------ membership

    fn on_mesh_event(&mut self, now: Instant, ev: MeshEvent) {
        match ev {
            MeshEvent::Up(m) => {
                tracing::info!("supernode {} joined ({})", m.id, m.addr);
                self.promotion.confirmed(&m.id, Role::Supernode);
                // It counts once it proves its key: at once if a session with it is up, else
                // when the session we open now is.
                match self.peers.session(&m.id) {
                    Some(sid) if self.ep.is_established(sid) => {
                        self.peers.verify(m.id);
                    }
                    Some(_) => {}
                    None => {
                        let _ = self.peer_session(now, &m);
                    }
                }
            }
            MeshEvent::Down(m) => {
                tracing::info!("supernode {} is gone", m.id);
                self.announced_to.remove(&m.id);
                let (sid, waiting) = self.peers.remove(&m.id);
                if let Some(sid) = sid {
                    self.ep.close(now, sid);
                }
                for c in waiting {
                    self.on_answer(now, c, None);
                }
                // Entries of users connected through it are now the last known state.
                for change in self.dir.mark_stale_via(&m.id) {
                    self.push_presence(
                        now,
                        change.user,
                        change.online,
                        change.last_seen,
                        change.stale,
                    );
                }
                self.dir.drop_watcher(&m.id);
                // Clients using us as standby for it: switch now.
                let lost = self.clients.standbys_of(&m.id);
                let msg = signal::encode(&Message::PrimaryLost { primary: m.id });
                for sid in lost {
                    self.notify(now, sid, msg.clone());
                }
                // Clients registered here whose standby it was: open another now, before we
                // fail too.
                let orphans = self.clients.with_standby(&m.id);
                let msg = signal::encode(&Message::StandbyLost { standby: m.id });
                for sid in orphans {
                    self.notify(now, sid, msg.clone());
                }
            }
        }
        self.rehome(now);
    }

    /// After a membership change: push entries and names to homes that gained them, drop what
    /// we no longer home, and re-register our clients' watches where the homes moved.
    fn rehome(&mut self, now: Instant) {
        let members = self.live_members();
        let Some(old) = self.peers.members_changed(&members) else {
            return;
        };
        let mut cache = std::mem::take(&mut self.homes);
        let mut change = cache.change(&old, &members);
        let mut pushes = Vec::new();
        let mut stores = Vec::new();
        // In a fixed order (hash maps' is not): what goes first, and what waits in a peer's
        // queue, is then the same in every run.
        // Our own clients' registrations go to every home they gained, whether we home them or
        // not: we are where they registered, the authority on their entry. (Only pushing what
        // we home lost the first clients of a supernode that had just joined: homed here while
        // it knew few members, dropped when it learnt more, refused by homes that had not
        // heard of it yet.)
        let mut ours: Vec<_> = self.clients.registered().collect();
        ours.sort_unstable_by_key(|(u, _)| *u);
        let unix = self.unix(now);
        for (user, record) in ours {
            let (before, after) = change.track(&user);
            let mut entry = None;
            for h in after.into_iter().filter(|h| !before.contains(h)) {
                let e = entry.get_or_insert_with(|| self.own_entry(record.clone(), true, unix));
                stores.push((h, user, e.clone()));
            }
        }
        let mut held: Vec<_> = self.dir.iter().collect();
        held.sort_unstable_by_key(|(u, _)| **u);
        for (user, stored) in held {
            if self.clients.record(user).is_some() {
                continue;
            }
            let (before, after) = change.moved(user);
            for h in gained(self.me, &before, &after) {
                stores.push((h, *user, stored.entry.clone()));
            }
        }
        let mut names: Vec<_> = self.dir.names().collect();
        names.sort_unstable_by(|a, b| a.held.name.cmp(&b.held.name));
        for n in names {
            let before = name_homes(&n.held.name, &old);
            let after = name_homes(&n.held.name, &members);
            for h in gained(self.me, &before, &after) {
                let s = n.held.stamp;
                let req = Request::PClaimStore {
                    claim: n.record.clone(),
                    orderer: s.orderer,
                    order: s.order,
                    received_at: s.received_at.0,
                };
                pushes.push((h, req));
            }
        }
        for (h, user, entry) in stores {
            self.store_at(now, h, user, entry, 1);
        }
        for (h, req) in pushes {
            self.send_to_peer(now, h, &req, Cont::Fire);
        }
        let me = self.me;
        self.dir.retain(|u| change.keep(&me, u));
        self.dir
            .retain_names(|n| name_homes(n, &members).contains(&me));
        let mut watched = self.presence.watched_users();
        watched.sort();
        for user in watched {
            let (before, after) = change.moved(&user);
            for h in after {
                if !before.contains(&h) {
                    self.send_or_local(now, h, Request::PWatch { user, watcher: me });
                }
            }
        }
        cache.finish(change);
        self.homes = cache;
    }
}

fn with_name(mut e: Entry, name: Option<String>) -> Entry {
    if name.is_some() {
        e.name = name;
    }
    e
}
