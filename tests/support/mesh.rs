//! Shared by `tests/sim/mesh_sim.rs`, `tests/loopback/mesh_security.rs` and
//! `tests/fuzz/fuzz_signal.rs`: supernodes, client agents and attackers in one process on the one
//! simulated network (`voxlab::sim::World`: every node a public host, 2 ms one way on every
//! path), plus record builders.
//!
//! An [`Attacker`] is a bare [`Endpoint`] the test drives by hand: it opens sessions with its own
//! identity and sends whatever bytes it likes inside them (requests, messages, responses), and,
//! given a [`Mesh`], speaks SWIM as a supernode would, so it can be a member of the mesh (a
//! malicious supernode) or pretend to be one under an ID that is not its own.
//!
//! Deterministic: identities come from seeds ([`identity`]), time is simulated, and events run in
//! (time, insertion) order.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use voxlab::netem::Spec;

use voxmesh::client::{Agent, AgentConfig, AgentEvent};
use voxmesh::identity::{Identity, NodeKey, RecordKind, Timestamp, UserId, sign_raw, sign_record};
use voxmesh::mesh::{Member, Mesh, MeshConfig};
use voxmesh::session::{self, Endpoint, Event, SessionId, TransactionId};
use voxmesh::signal::{self, Entry, Message, Registration, Request, Response, Target};
use voxmesh::supernode::{NodeConfig, Supernode};

/// One-way latency of every simulated link.
pub const LATENCY: Duration = Duration::from_millis(2);
/// The wall-clock time (Unix seconds) at the start of every simulation.
pub const UNIX0: u64 = 1_800_000_000;

/// Session timers shortened as in `tests/sim/mesh_sim.rs`, so dead peers are noticed in seconds.
pub fn fast_session(accept: bool) -> session::Config {
    session::Config {
        accept,
        keepalive_interval: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(8),
        ..session::Config::default()
    }
}

/// The seed of the `n`th node's supernode core: as it always was below 255 (tests keep their
/// runs), distinct above.
fn sn_seed(n: usize) -> [u8; 32] {
    match u8::try_from(n + 1) {
        Ok(b) => [b; 32],
        Err(_) => {
            let mut s = [0xa5; 32];
            s[..8].copy_from_slice(&(n as u64).to_le_bytes());
            s
        }
    }
}

/// A deterministic identity: the same `n` always gives the same keys.
pub fn identity(n: u64) -> Identity {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    seed[31] = 0x5e;
    Identity::from_seed(&seed)
}

/// A registration record signed by `who`, naming `supernode`, issued at `issued` for `ttl` s.
pub fn registration(who: &Identity, seq: u64, supernode: UserId, issued: u64, ttl: u64) -> Vec<u8> {
    let payload = Registration {
        supernode,
        addrs: Vec::new(),
    };
    sign_record(
        who,
        seq,
        Timestamp(issued),
        Timestamp(issued + ttl),
        &payload,
    )
    .unwrap()
}

/// A name claim record signed by `who`.
pub fn claim(who: &Identity, seq: u64, name: &str, issued: u64, ttl: u64) -> Vec<u8> {
    let payload = voxmesh::identity::NameClaim { name: name.into() };
    sign_record(
        who,
        seq,
        Timestamp(issued),
        Timestamp(issued + ttl),
        &payload,
    )
    .unwrap()
}

/// Raw record bytes of `kind` (for records whose payload is not what the kind says).
pub fn raw_record(
    who: &Identity,
    kind: RecordKind,
    seq: u64,
    issued: u64,
    payload: &[u8],
) -> Vec<u8> {
    sign_raw(
        who,
        kind,
        seq,
        Timestamp(issued),
        Timestamp(issued + 3600),
        payload,
    )
    .unwrap()
}

/// How an attacker answers requests that reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Like a quiet supernode: `NotFound` to fetches, `Holder(None)` to name fetches, `Ok` to
    /// everything else.
    Member,
    /// Like a supernode to a client: registrations, refreshes, member lists, standby and watch
    /// requests get plausible answers; everything else waits for the test.
    Directory,
    /// Not at all: the requests wait in [`Attacker::requests`] for the test to answer.
    Manual,
}

/// Which requests an attacker holds for the test to answer.
pub type HoldRule = Box<dyn Fn(&Request) -> bool>;

/// A bare endpoint driven by the test.
pub struct Attacker {
    pub identity: Identity,
    pub ep: Endpoint,
    /// SWIM, when the attacker plays a supernode.
    pub mesh: Option<Mesh>,
    /// Sessions by peer ID (opened by us, or accepted once connected).
    pub sessions: HashMap<UserId, SessionId>,
    /// Session events not consumed by SWIM or by [`Answer::Member`].
    pub events: Vec<Event>,
    pub answer: Answer,
    /// Requests that reached us and wait for the test's answer: (session, transaction, body).
    pub requests: Vec<(SessionId, TransactionId, Vec<u8>)>,
    /// SWIM datagrams our mesh refused (a supernode told the truth about who it is).
    pub swim_refused: u64,
    /// Requests that wait for the test whatever [`Attacker::answer`] says.
    pub hold: Option<HoldRule>,
    /// The first SWIM datagrams received (seeds for fuzzing).
    pub swim_seen: Vec<Vec<u8>>,
}

impl Attacker {
    /// Opens (or reuses) a session to `key` at `addr`.
    pub fn connect(&mut self, now: Instant, key: &NodeKey, addr: SocketAddr) -> SessionId {
        if let Some(s) = self.sessions.get(&key.id) {
            return *s;
        }
        let s = self.ep.connect(now, addr, key).expect("a session slot");
        self.sessions.insert(key.id, s);
        s
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        let a = self.ep.poll_timeout();
        let b = self.mesh.as_ref().and_then(|m| m.poll_timeout());
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.ep.handle_timeout(now);
        if let Some(m) = &mut self.mesh {
            m.handle_timeout(now);
        }
        self.process(now);
    }

    /// Consumes session events (SWIM, requests when answering as a member) and sends what the
    /// mesh wants sent.
    fn process(&mut self, now: Instant) {
        for _ in 0..10_000 {
            let mut busy = false;
            while let Some(ev) = self.ep.poll_event() {
                busy = true;
                self.on_event(now, ev);
            }
            if let Some(mesh) = &mut self.mesh {
                while let Some((to, data)) = mesh.poll_send() {
                    busy = true;
                    let sid = match self.sessions.get(&to.id) {
                        Some(s) => *s,
                        None => match self.ep.connect(now, to.addr, &to.node_key()) {
                            Ok(s) => {
                                self.sessions.insert(to.id, s);
                                s
                            }
                            Err(_) => continue,
                        },
                    };
                    let _ = self
                        .ep
                        .send(now, sid, &signal::encode(&Message::Swim(data)));
                }
            }
            if !busy {
                return;
            }
        }
    }

    fn on_event(&mut self, now: Instant, ev: Event) {
        match ev {
            Event::Connected { session, ref peer } => {
                self.sessions.entry(peer.id).or_insert(session);
                self.events.push(ev);
            }
            Event::HandshakeFailed { session, .. } | Event::Closed { session, .. } => {
                self.sessions.retain(|_, s| *s != session);
                self.events.push(ev);
            }
            Event::Message { session, ref body } if self.mesh.is_some() => {
                match (signal::decode::<Message>(body), self.ep.peer(session)) {
                    (Ok(Message::Swim(data)), Some(peer)) => {
                        let peer = peer.id;
                        if self.swim_seen.len() < 16 {
                            self.swim_seen.push(data.clone());
                        }
                        let mesh = self.mesh.as_mut().expect("checked");
                        if mesh.handle_data(now, peer, &data).is_err() {
                            self.swim_refused += 1;
                        }
                    }
                    _ => self.events.push(ev),
                }
            }
            Event::Request { session, txn, body } => {
                let req = signal::decode::<Request>(&body).ok();
                let held = match (&self.hold, &req) {
                    (Some(h), Some(r)) => h(r),
                    _ => false,
                };
                let resp = match (self.answer, req) {
                    _ if held => None,
                    (Answer::Member, Some(Request::PFetch(_))) => Some(Response::NotFound),
                    (Answer::Member, Some(Request::PFetchName(_))) => Some(Response::Holder(None)),
                    (Answer::Member, _) => Some(Response::Ok),
                    (Answer::Directory, Some(Request::CRegister { .. })) => {
                        Some(Response::Registered {
                            expires_at: UNIX0 + 30 * 24 * 3600,
                        })
                    }
                    (Answer::Directory, Some(Request::CMembers)) => {
                        Some(Response::Members(Vec::new()))
                    }
                    (Answer::Directory, Some(Request::CMembersPage { .. })) => Some(
                        signal::members_page(&[], signal::members_digest(&[]), None, None, 1200),
                    ),
                    (
                        Answer::Directory,
                        Some(
                            Request::CRefresh
                            | Request::CStandby { .. }
                            | Request::CWatch(_)
                            | Request::CUnwatch(_),
                        ),
                    ) => Some(Response::Ok),
                    _ => None,
                };
                match resp {
                    Some(r) => {
                        let _ = self.ep.respond(now, session, txn, &signal::encode(&r));
                    }
                    None => self.requests.push((session, txn, body)),
                }
            }
            other => self.events.push(other),
        }
    }

    /// Takes the response to `txn` if it arrived.
    pub fn take_response(&mut self, txn: TransactionId) -> Option<Result<Vec<u8>, String>> {
        let i = self.events.iter().position(|e| match e {
            Event::Response { txn: t, .. } | Event::TransactionFailed { txn: t, .. } => *t == txn,
            _ => false,
        })?;
        Some(match self.events.remove(i) {
            Event::Response { body, .. } => Ok(body),
            Event::TransactionFailed { error, .. } => Err(error.to_string()),
            _ => unreachable!(),
        })
    }

    pub fn is_connected(&self, session: SessionId) -> bool {
        self.ep.is_established(session)
    }
}

pub enum Node {
    Sn(Box<Supernode>),
    Client(Box<Agent>),
    Raw(Box<Attacker>),
}

/// Supernodes, agents and attackers on one simulated network.
pub struct World {
    /// The network: node `i` is its host `i`.
    pub net: voxlab::sim::World,
    /// The network's clock, as an instant.
    pub now: Instant,
    pub start: Instant,
    pub nodes: Vec<(SocketAddr, Node, bool)>,
    index: HashMap<SocketAddr, usize>,
    pub events: HashMap<usize, Vec<AgentEvent>>,
    next_identity: u64,
    /// Datagrams delivered so far.
    pub delivered: u64,
    /// Clients acknowledge a delivery with `"re:"` + payload (else with no reply).
    pub reply_to_deliveries: bool,
    /// `NodeConfig::peer_idle` of supernodes added from now on.
    pub peer_idle: Duration,
    /// Session settings of supernodes added from now on (`None`: [`fast_session`]).
    pub sn_session: Option<session::Config>,
    /// Datagrams and bytes (UDP payload) each node sent.
    pub sent: Vec<(u64, u64)>,
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

impl World {
    pub fn new() -> World {
        let mut net = voxlab::sim::World::new(0);
        net.set_internet(Spec {
            delay: LATENCY,
            ..Spec::default()
        });
        // Long runs: keep no log of every datagram.
        net.record = false;
        let now = net.instant();
        World {
            net,
            now,
            start: now,
            nodes: Vec::new(),
            index: HashMap::new(),
            events: HashMap::new(),
            next_identity: 1000,
            delivered: 0,
            reply_to_deliveries: false,
            peer_idle: voxmesh::supernode::PEER_IDLE,
            sn_session: None,
            sent: Vec::new(),
        }
    }

    /// The simulated wall clock, in Unix seconds.
    pub fn unix(&self) -> u64 {
        UNIX0 + self.now.duration_since(self.start).as_secs()
    }

    /// A fresh deterministic identity.
    pub fn fresh_identity(&mut self) -> Identity {
        self.next_identity += 1;
        identity(self.next_identity)
    }

    fn push(&mut self, addr: SocketAddr, node: Node) -> usize {
        let i = self.nodes.len();
        assert!(self.index.insert(addr, i).is_none(), "{addr} taken");
        let host = self.net.add_public(addr.ip());
        assert_eq!(host, i, "one host per node");
        self.nodes.push((addr, node, true));
        self.sent.push((0, 0));
        i
    }

    pub fn add_supernode(
        &mut self,
        bootstrap: &[(NodeKey, SocketAddr)],
    ) -> (usize, NodeKey, SocketAddr) {
        let id = self.fresh_identity();
        self.add_supernode_with(&id, bootstrap)
    }

    pub fn add_supernode_with(
        &mut self,
        identity: &Identity,
        bootstrap: &[(NodeKey, SocketAddr)],
    ) -> (usize, NodeKey, SocketAddr) {
        self.add_supernode_config(identity, bootstrap, |_| {})
    }

    /// A supernode whose configuration `tune` adjusts (after the test defaults).
    pub fn add_supernode_config(
        &mut self,
        identity: &Identity,
        bootstrap: &[(NodeKey, SocketAddr)],
        tune: impl FnOnce(&mut NodeConfig),
    ) -> (usize, NodeKey, SocketAddr) {
        let n = self.nodes.len();
        let addr: SocketAddr = format!("10.0.{}.{}:4000", n / 250, n % 250 + 1)
            .parse()
            .unwrap();
        let mut cfg = NodeConfig::new(addr);
        cfg.session = self
            .sn_session
            .clone()
            .unwrap_or_else(|| fast_session(true));
        cfg.peer_idle = self.peer_idle;
        tune(&mut cfg);
        let sn = Supernode::new(identity, cfg, bootstrap, self.now, self.unix(), sn_seed(n));
        let key = sn.node_key();
        let i = self.push(addr, Node::Sn(Box::new(sn)));
        (i, key, addr)
    }

    pub fn add_client(&mut self, supernodes: Vec<(NodeKey, SocketAddr)>, register: bool) -> usize {
        let id = self.fresh_identity();
        self.add_client_with(id, supernodes, register)
    }

    pub fn add_client_with(
        &mut self,
        identity: Identity,
        supernodes: Vec<(NodeKey, SocketAddr)>,
        register: bool,
    ) -> usize {
        let mut cfg = AgentConfig::new(supernodes);
        cfg.session = fast_session(false);
        cfg.register = register;
        cfg.refresh_interval = Duration::from_secs(3);
        self.add_client_config(identity, cfg)
    }

    /// A client with its own configuration.
    pub fn add_client_config(&mut self, identity: Identity, cfg: AgentConfig) -> usize {
        let n = self.nodes.len();
        let addr: SocketAddr = format!("10.1.{}.{}:5000", n / 250, n % 250 + 1)
            .parse()
            .unwrap();
        let a = Agent::new(
            identity,
            cfg,
            self.now,
            self.unix(),
            [200 + (n % 50) as u8; 32],
        );
        self.push(addr, Node::Client(Box::new(a)))
    }

    /// An attacker endpoint with `identity` (accepting sessions when `accept`).
    pub fn add_attacker(&mut self, identity: Identity, accept: bool) -> usize {
        let n = self.nodes.len();
        let addr: SocketAddr = format!("10.66.{}.{}:6666", n / 250, n % 250 + 1)
            .parse()
            .unwrap();
        let ep = Endpoint::new(
            fast_session(accept),
            &identity,
            self.now,
            [n as u8 + 77; 32],
        );
        self.push(
            addr,
            Node::Raw(Box::new(Attacker {
                identity,
                ep,
                mesh: None,
                sessions: HashMap::new(),
                events: Vec::new(),
                answer: Answer::Member,
                requests: Vec::new(),
                swim_refused: 0,
                hold: None,
                swim_seen: Vec::new(),
            })),
        )
    }

    /// Gives attacker `i` a SWIM instance as `member` and has it join through `seed`.
    pub fn attacker_joins(&mut self, i: usize, member: Member, seed: Option<Member>) {
        let now = self.now;
        let a = self.attacker(i);
        let mut mesh = Mesh::new(member, &MeshConfig::default(), 7, now);
        if let Some(s) = seed {
            mesh.join(now, s);
        }
        a.mesh = Some(mesh);
        a.process(now);
    }

    /// The SWIM member an attacker is when it tells the truth.
    pub fn attacker_member(&self, i: usize) -> Member {
        let Node::Raw(a) = &self.nodes[i].1 else {
            panic!("not an attacker")
        };
        Member {
            id: a.identity.id(),
            noise: *a.identity.noise_public(),
            addr: self.nodes[i].0,
            generation: 0,
        }
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].0
    }

    pub fn agent(&mut self, i: usize) -> &mut Agent {
        match &mut self.nodes[i].1 {
            Node::Client(a) => a,
            _ => panic!("not a client"),
        }
    }

    pub fn attacker(&mut self, i: usize) -> &mut Attacker {
        match &mut self.nodes[i].1 {
            Node::Raw(a) => a,
            _ => panic!("not an attacker"),
        }
    }

    pub fn sn(&self, i: usize) -> &Supernode {
        match &self.nodes[i].1 {
            Node::Sn(s) => s,
            _ => panic!("not a supernode"),
        }
    }

    pub fn sn_mut(&mut self, i: usize) -> &mut Supernode {
        match &mut self.nodes[i].1 {
            Node::Sn(s) => s,
            _ => panic!("not a supernode"),
        }
    }

    /// Node `i` dies: it sends, receives and times out no more.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].2 = false;
        self.net.hosts[i].down = true;
    }

    /// Drops every datagram from node `from` to node `to` from now on.
    pub fn cut(&mut self, from: usize, to: usize) {
        let (a, b) = (self.addr(from), self.addr(to));
        self.net.path(a, b).cut = true;
    }

    /// Drops the next `n` datagrams from node `from` to node `to`.
    pub fn lose_next(&mut self, from: usize, to: usize, n: u32) {
        let (a, b) = (self.addr(from), self.addr(to));
        self.net.path(a, b).lose_next = n;
    }

    /// Datagrams lost on the paths (to [`World::cut`] and [`World::lose_next`]).
    pub fn dropped(&self) -> u64 {
        self.net.path_stats().lost
    }

    /// The node index of supernode `id`.
    pub fn sn_index(&self, id: UserId) -> usize {
        (0..self.nodes.len())
            .find(|i| matches!(&self.nodes[*i].1, Node::Sn(s) if s.id() == id))
            .expect("a supernode")
    }

    /// Puts a datagram on the wire as if `from` sent it to node `to`.
    pub fn inject(&mut self, from: SocketAddr, to: usize, data: Vec<u8>) {
        let to = self.addr(to);
        self.net.inject(from, to, data);
    }

    fn collect(&mut self) {
        let now = self.now;
        for i in 0..self.nodes.len() {
            let (from, alive) = (self.nodes[i].0, self.nodes[i].2);
            if let Node::Raw(a) = &mut self.nodes[i].1 {
                a.process(now);
            }
            loop {
                let t = match &mut self.nodes[i].1 {
                    Node::Sn(s) => s.poll_transmit(),
                    Node::Client(a) => a.poll_transmit(),
                    Node::Raw(a) => a.ep.poll_transmit(),
                };
                let Some(t) = t else { break };
                if !alive {
                    continue;
                }
                let sent = &mut self.sent[i];
                sent.0 += 1;
                sent.1 += t.data.len() as u64;
                self.net.send(i, from, t.to, t.data);
            }
            let reply = self.reply_to_deliveries;
            if let Node::Client(a) = &mut self.nodes[i].1 {
                while let Some(ev) = a.poll_event() {
                    // Clients acknowledge deliveries at once.
                    if let AgentEvent::Delivered { id, payload, .. } = &ev {
                        let reply = reply.then(|| [b"re:".as_slice(), payload].concat());
                        a.acknowledge(now, *id, reply);
                    }
                    self.events.entry(i).or_default().push(ev);
                }
            }
        }
    }

    /// Runs the network for `d` of simulated time.
    pub fn run(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until_time(end, |_| false);
    }

    /// Runs until `done` holds (checked between events) or `max` has passed; returns whether
    /// `done` held.
    pub fn run_until(&mut self, max: Duration, done: impl FnMut(&mut World) -> bool) -> bool {
        let end = self.now + max;
        self.run_until_time(end, done)
    }

    fn run_until_time(&mut self, end: Instant, mut done: impl FnMut(&mut World) -> bool) -> bool {
        for _ in 0..20_000_000u64 {
            self.collect();
            if done(self) {
                return true;
            }
            let net = self.net.next_event();
            let mut timer: Option<(Instant, usize)> = None;
            for (i, (_, n, alive)) in self.nodes.iter_mut().enumerate() {
                if !*alive {
                    continue;
                }
                let t = match n {
                    Node::Sn(s) => s.poll_timeout(),
                    Node::Client(a) => a.poll_timeout(),
                    Node::Raw(a) => a.poll_timeout(),
                };
                if let Some(t) = t
                    && timer.is_none_or(|(b, _)| t < b)
                {
                    timer = Some((t, i));
                }
            }
            let next = match (net, timer) {
                (Some(n), Some((t, _))) => n.min(t),
                (Some(n), None) => n,
                (None, Some((t, _))) => t,
                (None, None) => end,
            };
            if next > end {
                self.advance(end);
                return false;
            }
            self.advance(self.now.max(next));
            let now = self.now;
            if net == Some(next) {
                for d in self.net.deliver_due() {
                    let j = d.host;
                    // A datagram already on its way when its node died.
                    if !self.nodes[j].2 || self.nodes[j].0 != d.to {
                        continue;
                    }
                    self.delivered += 1;
                    let (from, data) = (d.from, &d.data);
                    match &mut self.nodes[j].1 {
                        Node::Sn(s) => s.handle_input(now, from, data),
                        Node::Client(a) => a.handle_input(now, from, data),
                        Node::Raw(a) => a.ep.handle_input(now, from, data),
                    }
                }
            } else if let Some((_, i)) = timer {
                match &mut self.nodes[i].1 {
                    Node::Sn(s) => s.handle_timeout(now),
                    Node::Client(a) => a.handle_timeout(now),
                    Node::Raw(a) => a.handle_timeout(now),
                }
            }
        }
        panic!("simulation did not settle");
    }

    fn advance(&mut self, t: Instant) {
        self.net.advance_to(t);
        self.now = self.net.instant();
    }

    pub fn take_events(&mut self, i: usize) -> Vec<AgentEvent> {
        self.events.remove(&i).unwrap_or_default()
    }

    // ------------------------------------------------------------------ attacker helpers

    /// Attacker `i` opens a session to `key` at `addr` and waits (bounded) until it is up.
    #[track_caller]
    pub fn attacker_connect(&mut self, i: usize, key: &NodeKey, addr: SocketAddr) -> SessionId {
        let now = self.now;
        let s = self.attacker(i).connect(now, key, addr);
        let up = self.run_until(Duration::from_secs(3), |w| w.attacker(i).is_connected(s));
        assert!(up, "attacker session to {} did not come up", key.id);
        s
    }

    /// Attacker `i` sends `body` as a request on `session` and waits (bounded) for the answer.
    pub fn ask_raw(
        &mut self,
        i: usize,
        session: SessionId,
        body: &[u8],
    ) -> Result<Vec<u8>, String> {
        let now = self.now;
        let txn = self
            .attacker(i)
            .ep
            .request(now, session, body)
            .map_err(|e| format!("cannot send: {e}"))?;
        let mut got = None;
        self.run_until(Duration::from_secs(8), |w| {
            got = w.attacker(i).take_response(txn);
            got.is_some()
        });
        got.unwrap_or_else(|| Err("no answer".into()))
    }

    /// Attacker `i` asks `req` on `session`; the decoded answer.
    #[track_caller]
    pub fn ask(&mut self, i: usize, session: SessionId, req: &Request) -> Response {
        let body = self
            .ask_raw(i, session, &signal::encode(req))
            .unwrap_or_else(|e| panic!("{req:?}: {e}"));
        signal::decode(&body).expect("a decodable response")
    }

    // ------------------------------------------------------------------ client helpers

    /// Client `c` looks `target` up; the result (bounded wait).
    pub fn lookup(&mut self, c: usize, target: Target) -> Result<Option<Entry>, String> {
        let now = self.now;
        self.agent(c).lookup(now, target.clone());
        let mut result = None;
        self.run_until(Duration::from_secs(8), |w| {
            let evs = w.events.entry(c).or_default();
            if let Some(i) = evs
                .iter()
                .position(|e| matches!(e, AgentEvent::Lookup { target: t, .. } if *t == target))
            {
                if let AgentEvent::Lookup { result: r, .. } = evs.remove(i) {
                    result = Some(r);
                }
                return true;
            }
            false
        });
        result.unwrap_or_else(|| Err("no lookup answer".into()))
    }

    /// Every supernode's refusal counters added up, by reason.
    pub fn refusals(&self) -> HashMap<String, u64> {
        let mut all = HashMap::new();
        for (_, n, _) in &self.nodes {
            if let Node::Sn(s) = n {
                for (k, v) in s.status().counters.refused {
                    *all.entry(k).or_insert(0) += v;
                }
            }
        }
        all
    }

    /// Indices of the supernodes.
    pub fn supernodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| matches!(self.nodes[*i].1, Node::Sn(_)) && self.nodes[*i].2)
            .collect()
    }
}

/// `n` supernodes that bootstrap from the first, run until they all see each other.
pub fn mesh(n: usize) -> (World, Vec<(NodeKey, SocketAddr)>) {
    let mut w = World::new();
    let (_, k0, a0) = w.add_supernode(&[]);
    let mut keys = vec![(k0, a0)];
    for _ in 1..n {
        let (_, k, a) = w.add_supernode(&[(k0, a0)]);
        keys.push((k, a));
    }
    w.run(Duration::from_secs(6));
    for i in 0..n {
        assert_eq!(
            w.sn(i).members().len(),
            n,
            "supernode {i} sees {} members",
            w.sn(i).members().len()
        );
    }
    (w, keys)
}

/// The user a registration record in `entry` belongs to (verified).
pub fn entry_user(entry: &Entry, unix: u64) -> UserId {
    voxmesh::identity::verify_record::<Registration>(
        &entry.record,
        &voxmesh::identity::Check::at(Timestamp(unix)),
    )
    .expect("a valid record")
    .id
}

/// The service is unharmed: two fresh clients (primaries `at` and the next supernode) register,
/// each looks the other up and finds it online through its supernode, and each is found by a
/// client of another supernode.
#[track_caller]
pub fn assert_service(w: &mut World, sns: &[(NodeKey, SocketAddr)], at: usize, what: &str) {
    let mut la = sns.to_vec();
    la.rotate_left(at % sns.len());
    let mut lb = sns.to_vec();
    lb.rotate_left((at + 1) % sns.len());
    let a = w.add_client(la, true);
    let b = w.add_client(lb, true);
    let ok = w.run_until(Duration::from_secs(5), |w| {
        w.agent(a).is_registered() && w.agent(b).is_registered()
    });
    assert!(ok, "{what}: honest clients did not register");
    for (x, y) in [(a, b), (b, a)] {
        let id = w.agent(y).id();
        let via = w.agent(y).primary().map(|p| p.0);
        let e = w
            .lookup(x, Target::Id(id))
            .unwrap_or_else(|e| panic!("{what}: lookup failed: {e}"))
            .unwrap_or_else(|| panic!("{what}: an honest client is not found"));
        assert!(e.online && !e.stale, "{what}: {e:?}");
        assert_eq!(Some(e.via), via, "{what}: entry names another supernode");
        assert_eq!(
            entry_user(&e, w.unix()),
            id,
            "{what}: another user's record"
        );
    }
    // Park them: they stay registered, which no later check minds.
}
