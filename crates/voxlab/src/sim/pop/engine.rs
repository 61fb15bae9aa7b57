//! The population: clients arriving and leaving on the simulated network, each a real client
//! [`Agent`]; promoted clients also run a real [`Supernode`] and a real relay link
//! ([`RelayLink`], the relay's control plane to the supernodes that offer it); calls are a real
//! lookup and a real routed invite through the supernodes, then a path: direct when the two
//! NATs allow hole punching, else through a relay from the caller's supernode's real offers.
//!
//! Timers: every core says when it next wants time ([`Agent::poll_timeout`] etc.); the engine
//! keeps one heap of (time, node) and re-asks a node only after touching it, so a timer costs
//! O(log n) however many nodes there are. Stale heap entries are skipped when popped.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use voxmesh::client::relay::{RelayLink, RelayLinkConfig};
use voxmesh::client::{Agent, AgentConfig, AgentEvent};
use voxmesh::identity::{Identity, NodeKey, UserId};
use voxmesh::roles::{
    self, DemoteReason, GrantBook, GrantConfig, Input, Need, NeedInputs, Promoter, Reachability,
    Role,
};
use voxmesh::signal::Target;
use voxmesh::supernode::{NodeConfig, Supernode};

use super::promote::{Action, Candidate, Policy, Serving, View};
use super::stats::{exponential, normal};
use super::{Config, Counts};
use crate::netem::Spec;
use crate::sim::{Filtering, Mapping, NatConfig, Path, World};

const AGENT_PORT: u16 = 5000;
const SN_PORT: u16 = 4000;
const LINK_PORT: u16 = 4100;
const TURN_PORT: u16 = 3478;
/// Every NATed host's address behind its box (hosts never see each other's LANs).
const LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
/// The wall clock (Unix seconds) at the start.
const UNIX0: u64 = 1_800_000_000;
/// No node: an empty slot of [`Engine::host_nodes`].
const NONE: u32 = u32::MAX;

/// A relayed call's media, each way, kbit/s (Opus at a high bitrate plus headers).
pub const CALL_KBPS: u32 = 48;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NatKind {
    Public,
    FullCone,
    RestrictedCone,
    PortRestrictedCone,
    Symmetric,
}

impl NatKind {
    /// The mix drawn from: (kind, share).
    pub const MIX: [(NatKind, f64); 5] = [
        (NatKind::Public, 0.10),
        (NatKind::FullCone, 0.15),
        (NatKind::RestrictedCone, 0.20),
        (NatKind::PortRestrictedCone, 0.40),
        (NatKind::Symmetric, 0.15),
    ];

    fn config(self) -> NatConfig {
        use Filtering as F;
        use Mapping as M;
        match self {
            NatKind::Public => NatConfig::public(),
            NatKind::FullCone => NatConfig::nat(M::EndpointIndependent, F::EndpointIndependent),
            NatKind::RestrictedCone => NatConfig::nat(M::EndpointIndependent, F::AddressPerMapping),
            NatKind::PortRestrictedCone => {
                NatConfig::nat(M::EndpointIndependent, F::AddressAndPortDependent)
            }
            NatKind::Symmetric => {
                NatConfig::nat(M::AddressAndPortDependent, F::AddressAndPortDependent)
            }
        }
    }

    /// Whether hole punching works between the two (ICE with server-reflexive candidates): a
    /// symmetric NAT's per-destination port is unpredictable, so it fails against a symmetric or
    /// port-restricted peer, whose filter wants exactly the port it sent to.
    pub fn direct(a: NatKind, b: NatKind) -> bool {
        let hard = |x: NatKind, y: NatKind| {
            x == NatKind::Symmetric && matches!(y, NatKind::Symmetric | NatKind::PortRestrictedCone)
        };
        !hard(a, b) && !hard(b, a)
    }
}

enum Core {
    Agent(Box<Agent>),
    Sn(Box<Supernode>),
    Link(Box<RelayLink>),
    /// A public client's promotion core (no socket: its messages to the mesh are abstracted).
    Promoter(Box<Promoter>),
    Gone,
}

/// Who decides promotions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Promotion {
    /// The product's sans-IO [`Promoter`] on every public client, with the supernodes' real
    /// need formula and grant books.
    Real,
    /// The simulator's stand-in policy ([`super::promote::StandIn`]).
    StandIn,
}

struct Node {
    core: Core,
    client: u32,
    host: usize,
    addr: SocketAddr,
    armed: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Lookup,
    Route(u64),
    Relays,
}

#[derive(Clone, Copy, Debug)]
struct Call {
    seq: u32,
    callee: u32,
    stage: Stage,
    started: Duration,
}

struct Client {
    user: u32,
    nat: NatKind,
    up_kbps: u32,
    host: usize,
    joined: Duration,
    leaves_at: Duration,
    alive: bool,
    agent: u32,
    /// Its supernode node, since when, and how others reach it.
    sn: Option<(u32, Duration, NodeKey, SocketAddr)>,
    link: Option<u32>,
    /// Its promotion core (public clients, with the real promoter).
    promoter: Option<u32>,
    /// A relay role it took on its own (not beside its supernode).
    relay_only: bool,
    /// When its relay or supernode role began, as the promoter holds it.
    cpu: f32,
    /// Relayed calls it carries now, and how many it may.
    relay_load: u32,
    relay_limit: u32,
    registered_at: Option<Duration>,
    /// Its latest registration after the first (a failover: the agent then watches its
    /// contacts again and hears their current state, which is not news of a change).
    reregistered_at: Option<Duration>,
    primary: Option<UserId>,
    /// Clients registered through its supernode, as the simulator saw them register.
    sn_clients: usize,
    call: Option<Call>,
    calls: u32,
}

#[derive(Debug)]
enum Ev {
    Arrive { initial: bool },
    Leave(u32),
    Call(u32),
    CallTimeout(u32, u32),
    CallEnd(u32),
    Sample,
    Tick,
    Reap(u32),
}

/// A user's last change of state, for presence latency: when, to what, and through which
/// supernode (a watcher on the same one does not count: the issue measures between supernodes).
#[derive(Clone, Copy)]
struct Change {
    at: Duration,
    online: bool,
    via: Option<UserId>,
}

struct User {
    id: Identity,
    uid: UserId,
    client: Option<u32>,
    change: Option<Change>,
}

/// One sample of the mesh.
#[derive(Clone, Debug, serde::Serialize, PartialEq)]
pub struct Sample {
    pub t_s: f64,
    pub online: usize,
    pub registered: usize,
    pub supernodes: usize,
    pub fraction: f64,
    pub relays: usize,
    pub sn_load_max: usize,
    pub relay_load_max: u32,
    pub relayed_calls: u32,
}

pub struct Engine<P: Policy> {
    cfg: Config,
    policy: P,
    pub world: World,
    base: Instant,
    rng: StdRng,
    nodes: Vec<Node>,
    host_nodes: Vec<[u32; 3]>,
    timers: BinaryHeap<Reverse<(Instant, u32)>>,
    events: BinaryHeap<Reverse<(Duration, u64, EvBox)>>,
    ev_seq: u64,
    clients: Vec<Client>,
    users: Vec<User>,
    user_by_id: HashMap<UserId, u32>,
    /// Users offline now (they may come back).
    offline: Vec<u32>,
    /// Online clients, and each one's place in the list.
    online: Vec<u32>,
    online_pos: HashMap<u32, usize>,
    /// Clients that serve as supernodes now, in promotion order.
    sns: Vec<u32>,
    sn_by_id: HashMap<UserId, u32>,
    relay_by_id: HashMap<UserId, u32>,
    /// Clients that relay now (beside their supernode or on their own).
    relays: Vec<u32>,
    /// Each supernode's grant book (by the supernode's client), as `supernoded` keeps one.
    books: HashMap<u32, GrantBook<u32>>,
    grant_cfg: GrantConfig,
    promotion: Promotion,
    registered_online: u32,
    relayed_now: u32,
    pub counts: Counts,
    pub samples: Vec<Sample>,
    pub sn_loads: Vec<f64>,
    pub relay_loads: Vec<f64>,
    pub presence: Vec<f64>,
    /// (watcher, user, change) already measured: a change counts once per watcher.
    presence_seen: std::collections::HashSet<(u32, u32, Duration)>,
    pub setup: Vec<f64>,
    pub tenures: Vec<f64>,
    pub errors: BTreeMap<String, u64>,
    pub call_failures: BTreeMap<String, u64>,
    /// Failures by their cause as the simulator sees it ([`Engine::cause`]).
    pub failure_causes: BTreeMap<String, u64>,
    pub steps: u64,
    /// The work of supernodes already gone (see [`Engine::work`]).
    work_of_gone: Work,
}

/// What the supernodes did, summed over every supernode of the run: where the real cores spend
/// the simulator's time (each handshake is X25519 work on both sides, each registration and
/// store an Ed25519 verification).
#[derive(Clone, Debug, Default, serde::Serialize, PartialEq)]
pub struct Work {
    /// Handshakes supernodes answered (from clients, relays and other supernodes).
    pub handshakes_answered: u64,
    /// Handshakes supernodes started (to other supernodes, on demand).
    pub handshakes_initiated: u64,
    /// Datagrams supernodes sent and received.
    pub frames_in: u64,
    pub frames_out: u64,
    /// Registrations accepted (a signature check each).
    pub registrations: u64,
    /// Entries stored as a home for another supernode (a signature check each, but for
    /// `stores_held`: records the home held already).
    pub stores: u64,
    pub stores_held: u64,
    pub refreshes: u64,
    pub lookups: u64,
    pub presence_pushes: u64,
    /// Member-list pages served with members in them (clients re-fetch the list when its
    /// digest changed).
    pub member_pages: u64,
    /// Requests to other supernodes sent again on a fresh session.
    pub peer_retries: u64,
    /// What the supernodes refused or counted as failed, by reason (stores from members they
    /// did not know yet, lookups that found a bad entry...): the first place to look when a
    /// lookup or call fails.
    pub refused: BTreeMap<String, u64>,
}

impl Work {
    fn add(&mut self, s: &Supernode) {
        let c = s.session_counters();
        self.handshakes_answered += c.handshakes_answered;
        self.handshakes_initiated += c.handshakes_initiated;
        self.frames_in += c.frames_in;
        self.frames_out += c.frames_out;
        let n = s.counters();
        self.registrations += n.registrations;
        self.stores += n.stores;
        self.stores_held += n.stores_held;
        self.refreshes += n.refreshes;
        self.lookups += n.lookups;
        self.presence_pushes += n.presence_pushes;
        self.peer_retries += n.peer_retries;
        self.member_pages += n.member_pages;
        for (why, k) in &n.refused {
            *self.refused.entry(why.clone()).or_default() += k;
        }
    }
}

/// Events ordered by (time, insertion) only: the payload never takes part in the comparison.
#[derive(Debug)]
struct EvBox(Ev);
impl PartialEq for EvBox {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for EvBox {}
impl PartialOrd for EvBox {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for EvBox {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// 32 bytes from the run's seed, a purpose and a number: identities and core seeds that a seed
/// replays, independent of the order they are made in.
fn derive(seed: u64, what: u8, n: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut x = seed ^ (u64::from(what) << 56) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for chunk in out.chunks_mut(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out
}

impl<P: Policy> Engine<P> {
    pub fn new(cfg: Config, policy: P, promotion: Promotion) -> Self {
        let world = {
            let mut w = World::new(cfg.seed);
            w.record = false;
            w
        };
        let base = world.instant();
        let grant_cfg = GrantConfig {
            clients_per_supernode: cfg.clients_per_supernode as u32,
            ..GrantConfig::default()
        };
        Engine {
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            policy,
            world,
            base,
            nodes: Vec::new(),
            host_nodes: Vec::new(),
            timers: BinaryHeap::new(),
            events: BinaryHeap::new(),
            ev_seq: 0,
            clients: Vec::new(),
            users: Vec::new(),
            user_by_id: HashMap::new(),
            offline: Vec::new(),
            online: Vec::new(),
            online_pos: HashMap::new(),
            sns: Vec::new(),
            sn_by_id: HashMap::new(),
            relay_by_id: HashMap::new(),
            relays: Vec::new(),
            books: HashMap::new(),
            grant_cfg,
            promotion,
            registered_online: 0,
            relayed_now: 0,
            counts: Counts::default(),
            samples: Vec::new(),
            sn_loads: Vec::new(),
            relay_loads: Vec::new(),
            presence: Vec::new(),
            presence_seen: std::collections::HashSet::new(),
            setup: Vec::new(),
            tenures: Vec::new(),
            errors: BTreeMap::new(),
            call_failures: BTreeMap::new(),
            failure_causes: BTreeMap::new(),
            steps: 0,
            work_of_gone: Work::default(),
        }
    }

    fn now(&self) -> Duration {
        self.world.elapsed()
    }

    fn at(&mut self, after: Duration, ev: Ev) {
        self.ev_seq += 1;
        let t = self.now() + after;
        self.events.push(Reverse((t, self.ev_seq, EvBox(ev))));
    }

    fn unix(&self) -> u64 {
        UNIX0 + self.now().as_secs()
    }

    /// Runs the whole simulation.
    pub fn run(&mut self) {
        let n = self.cfg.clients;
        // The founders: public clients that already serve as supernodes at the start (the
        // bootstrap the network grows from), then the rest arriving over the warm-up.
        let founders = n.div_ceil(self.cfg.clients_per_supernode).max(3);
        for _ in 0..founders {
            self.new_client(true, Some(NatKind::Public));
        }
        for _ in founders..n {
            let t = Duration::from_secs(5)
                + self
                    .cfg
                    .warmup
                    .saturating_sub(Duration::from_secs(5))
                    .mul_f64(self.rng.random());
            self.ev_seq += 1;
            self.events.push(Reverse((
                t,
                self.ev_seq,
                EvBox(Ev::Arrive { initial: true }),
            )));
        }
        let warm = self.cfg.warmup;
        self.at(warm, Ev::Arrive { initial: false });
        self.at(warm, Ev::Sample);
        self.at(self.policy.period(), Ev::Tick);
        let end = self.base + self.cfg.duration;
        loop {
            let tn = self.world.next_event();
            let tt = self.timers.peek().map(|Reverse((t, _))| *t);
            let ts = self.events.peek().map(|Reverse((t, _, _))| self.base + *t);
            let Some(next) = [tn, tt, ts].into_iter().flatten().min() else {
                break;
            };
            if next > end {
                break;
            }
            self.steps += 1;
            self.world.advance_to(next);
            if tn == Some(next) {
                for d in self.world.deliver_due() {
                    let role = match d.to.port() {
                        AGENT_PORT => 0,
                        SN_PORT => 1,
                        LINK_PORT => 2,
                        _ => continue,
                    };
                    let node = self.host_nodes[d.host][role];
                    if node == NONE {
                        continue;
                    }
                    match &mut self.nodes[node as usize].core {
                        Core::Agent(a) => a.handle_input(next, d.from, &d.data),
                        Core::Sn(s) => s.handle_input(next, d.from, &d.data),
                        Core::Link(l) => l.handle_input(next, d.from, &d.data),
                        Core::Promoter(_) | Core::Gone => continue,
                    }
                    self.flush(node);
                }
            } else if tt == Some(next) {
                let Reverse((t, node)) = self.timers.pop().expect("peeked");
                let n = &mut self.nodes[node as usize];
                if n.armed != Some(t) {
                    continue;
                }
                n.armed = None;
                match &mut n.core {
                    Core::Agent(a) => a.handle_timeout(t),
                    Core::Sn(s) => s.handle_timeout(t),
                    Core::Link(l) => l.handle_timeout(t),
                    Core::Promoter(p) => p.handle_timeout(t),
                    Core::Gone => continue,
                }
                self.flush(node);
            } else {
                let Reverse((_, _, EvBox(ev))) = self.events.pop().expect("peeked");
                self.on_event(ev);
            }
        }
    }

    // ------------------------------------------------------------------ nodes

    fn add_node(&mut self, core: Core, client: u32, role: usize, port: u16) -> u32 {
        let c = &self.clients[client as usize];
        let host = c.host;
        let ip = match core {
            Core::Agent(_) if c.nat != NatKind::Public => IpAddr::V4(LAN),
            _ => self.world.hosts[host].nat_wan(),
        };
        let i = self.nodes.len() as u32;
        self.nodes.push(Node {
            core,
            client,
            host,
            addr: SocketAddr::new(ip, port),
            armed: None,
        });
        self.host_nodes[host][role] = i;
        self.flush(i);
        i
    }

    /// Sends what node `n` has to send, handles its agent's events, and re-arms its timer.
    fn flush(&mut self, n: u32) {
        for _ in 0..64 {
            let node = &mut self.nodes[n as usize];
            let (host, addr) = (node.host, node.addr);
            let mut out = Vec::new();
            loop {
                let t = match &mut self.nodes[n as usize].core {
                    Core::Agent(a) => a.poll_transmit(),
                    Core::Sn(s) => s.poll_transmit(),
                    Core::Link(l) => l.poll_transmit(),
                    Core::Promoter(_) | Core::Gone => None,
                };
                let Some(t) = t else { break };
                // The simulated network has no streams: the agent's TCP race is switched off.
                if t.socket == voxmesh::transmit::UDP {
                    out.push(t);
                }
            }
            // The cores emit a burst in the order of their hash maps, which std randomises per
            // process; the burst goes on the wire in address order, then by its bytes (two
            // sessions with one peer send alike datagrams to one address), so the receivers
            // see the same order and each link's seeded loss draws fall on the same datagrams
            // in every run of a seed.
            out.sort_unstable_by(|a, b| (a.to, &a.data).cmp(&(b.to, &b.data)));
            for t in out {
                self.world.send(host, addr, t.to, t.data);
            }
            let mut evs = Vec::new();
            let mut pevs = Vec::new();
            match &mut self.nodes[n as usize].core {
                Core::Agent(a) => {
                    while let Some(e) = a.poll_event() {
                        evs.push(e);
                    }
                }
                Core::Promoter(p) => {
                    while let Some(e) = p.poll_event() {
                        pevs.push(e);
                    }
                }
                _ => {}
            }
            if evs.is_empty() && pevs.is_empty() {
                break;
            }
            let c = self.nodes[n as usize].client;
            for e in evs {
                self.on_agent(c, e);
            }
            for e in pevs {
                self.on_promoter(c, n, e);
            }
        }
        let node = &mut self.nodes[n as usize];
        let t = match &mut node.core {
            Core::Agent(a) => a.poll_timeout(),
            Core::Sn(s) => s.poll_timeout(),
            Core::Link(l) => l.poll_timeout(),
            Core::Promoter(p) => p.poll_timeout(),
            Core::Gone => None,
        };
        if t != node.armed {
            node.armed = t;
            if let Some(t) = t {
                self.timers.push(Reverse((t, n)));
            }
        }
    }

    fn agent(&mut self, c: u32) -> Option<&mut Agent> {
        let n = self.clients[c as usize].agent;
        match &mut self.nodes[n as usize].core {
            Core::Agent(a) => Some(a),
            _ => None,
        }
    }

    fn reap(&mut self, n: u32) {
        if let Core::Sn(s) = &self.nodes[n as usize].core {
            self.work_of_gone.add(s);
        }
        let node = &mut self.nodes[n as usize];
        node.core = Core::Gone;
        node.armed = None;
        for slot in &mut self.host_nodes[node.host] {
            if *slot == n {
                *slot = NONE;
            }
        }
    }

    // ------------------------------------------------------------------ churn

    fn draw_nat(&mut self) -> NatKind {
        let x: f64 = self.rng.random();
        let mut acc = 0.0;
        for (k, share) in NatKind::MIX {
            acc += share;
            if x < acc {
                return k;
            }
        }
        NatKind::Symmetric
    }

    /// A session length: lognormal with the configured median and sigma; for a client already
    /// online at the start, the rest of a session in progress (length-biased: lognormal with
    /// mu + sigma², times a uniform fraction), so the population starts in its steady state.
    /// Also returns how long it has been online already (0 for a new arrival).
    fn session_length(&mut self, initial: bool) -> (Duration, Duration) {
        let mu = self.cfg.session_median.as_secs_f64().ln();
        let s = self.cfg.session_sigma;
        let z = normal(&mut self.rng);
        let (rest, age) = if initial {
            let whole = (mu + s * s + s * z).exp();
            let u: f64 = self.rng.random();
            (whole * u, whole * (1.0 - u))
        } else {
            ((mu + s * z).exp(), 0.0)
        };
        (
            Duration::from_secs_f64(rest.clamp(10.0, 30.0 * 86400.0)),
            Duration::from_secs_f64(age.min(30.0 * 86400.0)),
        )
    }

    /// A client arrives (`founder`: a public one that serves as a supernode from the start;
    /// its supernode exists before its agent, which may then register through it).
    fn new_client(&mut self, initial: bool, founder: Option<NatKind>) -> u32 {
        let now = self.now();
        let nat = founder.unwrap_or_else(|| self.draw_nat());
        let founder = founder.is_some();
        // Uplinks: NATed homes 1–20 Mbit/s, public hosts 5–200 (log-uniform).
        let (lo, hi): (f64, f64) = if nat == NatKind::Public {
            (5_000.0, 200_000.0)
        } else {
            (1_000.0, 20_000.0)
        };
        let up_kbps = (lo.ln() + (hi.ln() - lo.ln()) * self.rng.random::<f64>()).exp() as u32;
        // A returning user half the time (watchers see them come back), else a new one.
        let user = if !self.offline.is_empty() && self.rng.random::<bool>() {
            let k = self.rng.random_range(0..self.offline.len());
            self.offline.swap_remove(k)
        } else {
            let u = self.users.len() as u32;
            let id = Identity::from_seed(&derive(self.cfg.seed, 1, u64::from(u)));
            let uid = id.id();
            self.user_by_id.insert(uid, u);
            self.users.push(User {
                id,
                uid,
                client: None,
                change: None,
            });
            u
        };
        let c = self.clients.len() as u32;
        let wan = Ipv4Addr::from(0x0b00_0000u32 + c);
        let host = self.world.add_host(
            nat.config(),
            if nat == NatKind::Public {
                IpAddr::V4(wan)
            } else {
                IpAddr::V4(LAN)
            },
            IpAddr::V4(wan),
            {
                // 5–40 ms each way on the access link, a little loss.
                let ms = self.rng.random_range(5..=40);
                let spec = Spec {
                    delay: Duration::from_millis(ms),
                    loss: self.cfg.loss,
                    ..Spec::default()
                };
                Path {
                    up: spec,
                    down: spec,
                }
            },
        );
        assert_eq!(host, self.host_nodes.len());
        self.host_nodes.push([NONE; 3]);
        let (length, age) = self.session_length(initial);
        let cpu = 0.1 + 0.8 * self.rng.random::<f32>();
        self.clients.push(Client {
            user,
            nat,
            up_kbps,
            host,
            joined: now,
            leaves_at: now + length,
            alive: true,
            agent: NONE,
            sn: None,
            link: None,
            promoter: None,
            relay_only: false,
            cpu,
            relay_load: 0,
            relay_limit: 0,
            registered_at: None,
            reregistered_at: None,
            primary: None,
            sn_clients: 0,
            call: None,
            calls: 0,
        });
        self.users[user as usize].client = Some(c);
        self.online_pos.insert(c, self.online.len());
        self.online.push(c);
        self.counts.sessions += 1;
        self.counts.peak_online = self.counts.peak_online.max(self.online.len());
        if founder {
            self.promote(c);
        }
        // The host cache: a few supernodes, least loaded first (the member lists it would have
        // fetched carry load).
        let mut cache: Vec<u32> = Vec::new();
        for _ in 0..12 {
            if self.sns.is_empty() || cache.len() >= 6 {
                break;
            }
            let s = self.sns[self.rng.random_range(0..self.sns.len())];
            if !cache.contains(&s) && self.sn_has_room(s) {
                cache.push(s);
            }
        }
        cache.sort_by_key(|s| (self.clients[*s as usize].sn_clients, *s));
        let list: Vec<(NodeKey, SocketAddr)> = cache
            .iter()
            .filter_map(|s| self.clients[*s as usize].sn.map(|(_, _, k, a)| (k, a)))
            .collect();
        let mut acfg = AgentConfig::new(list);
        // No TCP in the simulated network: UDP alone, never raced.
        acfg.udp_head_start = Duration::from_secs(24 * 3600);
        let identity = self.users[user as usize].id.clone();
        let seed = derive(self.cfg.seed, 2, u64::from(c));
        let agent = Agent::new(identity, acfg, self.base + now, self.unix(), seed);
        let node = self.add_node(Core::Agent(Box::new(agent)), c, 0, AGENT_PORT);
        self.clients[c as usize].agent = node;
        // Contacts: watch a few users online now (a buddy list).
        for _ in 0..self.cfg.watches {
            let k = self.online[self.rng.random_range(0..self.online.len())];
            if k != c {
                let uid = self.users[self.clients[k as usize].user as usize].uid;
                let t = self.base + now;
                if let Some(a) = self.agent(c) {
                    a.watch(t, uid);
                }
            }
        }
        self.flush(node);
        if nat == NatKind::Public && !founder && self.promotion == Promotion::Real {
            self.add_promoter(c, age);
        }
        self.at(length, Ev::Leave(c));
        let gap = exponential(&mut self.rng, 3600.0 / self.cfg.calls_per_hour);
        self.at(Duration::from_secs_f64(gap), Ev::Call(c));
        c
    }

    fn leave(&mut self, c: u32) {
        let now = self.now();
        let t = self.base + now;
        let cl = &self.clients[c as usize];
        if !cl.alive {
            return;
        }
        let (user, via) = (cl.user, cl.primary);
        if cl.sn.is_some() {
            self.demote(c, false);
        }
        if let Some(a) = self.agent(c) {
            a.close(t);
        }
        let node = self.clients[c as usize].agent;
        self.flush(node);
        self.reap(node);
        let host = self.clients[c as usize].host;
        self.world.hosts[host].down = true;
        if let Some(p) = self.clients[c as usize].promoter.take() {
            self.reap(p);
        }
        if self.clients[c as usize].relay_only {
            self.stop_relay(c);
        }
        let cl = &mut self.clients[c as usize];
        cl.alive = false;
        cl.call = None;
        if cl.registered_at.is_some() {
            self.registered_online -= 1;
        }
        if let Some(p) = cl.primary.take() {
            self.unload(p);
        }
        self.users[user as usize].client = None;
        self.users[user as usize].change = Some(Change {
            at: now,
            online: false,
            via,
        });
        self.offline.push(user);
        let pos = self.online_pos.remove(&c).expect("online");
        self.online.swap_remove(pos);
        if let Some(&moved) = self.online.get(pos) {
            self.online_pos.insert(moved, pos);
        }
        self.counts.leaves += 1;
    }

    fn unload(&mut self, sn: UserId) {
        if let Some(&s) = self.sn_by_id.get(&sn) {
            let l = &mut self.clients[s as usize].sn_clients;
            *l = l.saturating_sub(1);
        }
    }

    // ------------------------------------------------------------------ roles

    fn promote(&mut self, c: u32) {
        let now = self.now();
        let t = self.base + now;
        let wan = self.world.hosts[self.clients[c as usize].host].nat_wan();
        let addr = SocketAddr::new(wan, SN_PORT);
        let mut bootstrap = Vec::new();
        for _ in 0..6 {
            if self.sns.is_empty() || bootstrap.len() >= 3 {
                break;
            }
            let s = self.sns[self.rng.random_range(0..self.sns.len())];
            let (_, _, k, a) = self.clients[s as usize].sn.expect("a supernode");
            if !bootstrap
                .iter()
                .any(|(b, _): &(NodeKey, SocketAddr)| b.id == k.id)
            {
                bootstrap.push((k, a));
            }
        }
        let id = Identity::from_seed(&derive(self.cfg.seed, 3, u64::from(c)));
        let mut ncfg = NodeConfig::new(addr);
        ncfg.max_users = self.cfg.sn_max_records;
        let sn = Supernode::new(
            &id,
            ncfg,
            &bootstrap,
            t,
            self.unix(),
            derive(self.cfg.seed, 4, u64::from(c)),
        );
        let key = sn.node_key();
        self.sn_by_id.insert(key.id, c);
        let node = self.add_node(Core::Sn(Box::new(sn)), c, 1, SN_PORT);
        self.clients[c as usize].sn = Some((node, now, key, addr));
        self.sns.push(c);
        self.counts.promotions += 1;
        // Every supernode also relays: a relay link to itself and up to three others.
        if self.clients[c as usize].link.is_none() {
            let mut links = vec![(key, addr)];
            links.extend(bootstrap);
            self.start_relay(c, links);
        }
    }

    /// Starts `c`'s relay: the real relay link to `links`, which then offer it to callers.
    fn start_relay(&mut self, c: u32, links: Vec<(NodeKey, SocketAddr)>) {
        let t = self.base + self.now();
        let wan = self.world.hosts[self.clients[c as usize].host].nat_wan();
        let rid = Identity::from_seed(&derive(self.cfg.seed, 5, u64::from(c)));
        let mut lcfg = RelayLinkConfig::new(links);
        lcfg.udp = vec![SocketAddr::new(wan, TURN_PORT)];
        let link = RelayLink::new(&rid, lcfg, t, derive(self.cfg.seed, 6, u64::from(c)));
        self.relay_by_id.insert(link.id(), c);
        let up = self.clients[c as usize].up_kbps;
        // Half the uplink for relaying; each call takes both directions of it.
        self.clients[c as usize].relay_limit = (up / 2 / (2 * CALL_KBPS)).min(500);
        let lnode = self.add_node(Core::Link(Box::new(link)), c, 2, LINK_PORT);
        self.clients[c as usize].link = Some(lnode);
        self.relays.push(c);
    }

    /// Closes `c`'s relay link (calls it carries run on: media is not simulated).
    fn stop_relay(&mut self, c: u32) {
        let t = self.base + self.now();
        self.clients[c as usize].relay_only = false;
        if let Some(l) = self.clients[c as usize].link.take() {
            if let Core::Link(link) = &mut self.nodes[l as usize].core {
                link.close(t);
                let id = link.id();
                self.relay_by_id.remove(&id);
            }
            self.flush(l);
            self.at(Duration::from_secs(3), Ev::Reap(l));
        }
        self.relays.retain(|r| *r != c);
    }

    /// Whether supernode `s` takes more clients: under its promoter's load ramp (founders:
    /// under the configured limit).
    fn sn_has_room(&self, s: u32) -> bool {
        let cl = &self.clients[s as usize];
        let limit = match cl.promoter.map(|p| &self.nodes[p as usize].core) {
            Some(Core::Promoter(p)) => p.supernode_client_limit(self.base + self.now()) as usize,
            _ => self.cfg.sn_max_clients,
        };
        cl.sn_clients < limit.min(self.cfg.sn_max_clients)
    }

    /// The mesh's need by the supernodes' formula, from what the simulator knows (a supernode
    /// estimates the same from its own counts and the member list).
    fn need_now(&self) -> Need {
        let cap: u64 = self
            .relays
            .iter()
            .map(|r| u64::from(self.clients[*r as usize].up_kbps / 2))
            .sum();
        roles::need(
            &self.grant_cfg,
            &NeedInputs {
                registered_clients: self.registered_online,
                supernodes: self.sns.len() as u32,
                relays: self.relays.len() as u32,
                relay_capacity_kbps: cap,
                relayed_calls: self.relayed_now,
            },
        )
    }

    /// A public client's promoter: dial-back is abstracted (the simulator knows the NAT: only
    /// public clients get one, proved reachable), uplink half the line, CPU headroom drawn.
    /// Clients online at the start have been so for `age`: their uptime counts from then.
    fn add_promoter(&mut self, c: u32, age: Duration) {
        let t = self.base + self.now();
        let since = t.checked_sub(age).unwrap_or(t);
        let pcfg = roles::Config {
            min_tenure: self.cfg.min_tenure,
            supernode_max_clients: self.cfg.sn_max_clients as u32,
            ..roles::Config::default()
        };
        let seed = u64::from_le_bytes(
            derive(self.cfg.seed, 7, u64::from(c))[..8]
                .try_into()
                .expect("8"),
        );
        let mut p = Promoter::new(since, pcfg, seed);
        let cl = &self.clients[c as usize];
        let wan = self.world.hosts[cl.host].nat_wan();
        p.handle_input(
            t,
            Input::Reachability(Reachability {
                reflexive: SocketAddr::new(wan, AGENT_PORT),
                host_is_reflexive: true,
                unsolicited_probe: true,
            }),
        );
        p.handle_input(t, Input::UplinkKbps(cl.up_kbps / 2));
        p.handle_input(t, Input::CpuHeadroom(cl.cpu));
        p.handle_input(t, Input::Need(self.need_now()));
        let i = self.nodes.len() as u32;
        self.nodes.push(Node {
            core: Core::Promoter(Box::new(p)),
            client: c,
            host: cl.host,
            addr: SocketAddr::new(wan, 0),
            armed: None,
        });
        self.clients[c as usize].promoter = Some(i);
        self.flush(i);
    }

    fn on_promoter(&mut self, c: u32, n: u32, ev: roles::Event) {
        let t = self.base + self.now();
        if !self.clients[c as usize].alive {
            return;
        }
        match ev {
            roles::Event::RequestGrant(role) => {
                // Asked of its primary supernode's grant book; the answer's round trip is
                // abstracted (it comes at once).
                let need = self.need_now();
                let owner = self.clients[c as usize]
                    .primary
                    .and_then(|p| self.sn_by_id.get(&p).copied());
                let cfg = self.grant_cfg.clone();
                let granted = owner.is_some_and(|s| {
                    self.books
                        .entry(s)
                        .or_insert_with(|| GrantBook::new(cfg))
                        .request(t, &c, role, &need)
                });
                self.counts.grant_requests += 1;
                self.counts.grants += u64::from(granted);
                if let Core::Promoter(p) = &mut self.nodes[n as usize].core {
                    p.handle_input(t, Input::Grant { role, granted });
                }
            }
            roles::Event::BecomeSupernode => {
                for b in self.books.values_mut() {
                    b.confirmed(&c, Role::Supernode);
                }
                if self.clients[c as usize].sn.is_none() {
                    self.promote(c);
                }
            }
            roles::Event::BecomeRelay => {
                for b in self.books.values_mut() {
                    b.confirmed(&c, Role::Relay);
                }
                if self.clients[c as usize].link.is_none() && !self.sns.is_empty() {
                    let mut links: Vec<(NodeKey, SocketAddr)> = Vec::new();
                    for _ in 0..8 {
                        if links.len() >= 4 {
                            break;
                        }
                        let s = self.sns[self.rng.random_range(0..self.sns.len())];
                        let (_, _, k, a) = self.clients[s as usize].sn.expect("a supernode");
                        if !links.iter().any(|(b, _)| b.id == k.id) {
                            links.push((k, a));
                        }
                    }
                    self.start_relay(c, links);
                    self.clients[c as usize].relay_only = true;
                    self.counts.relay_promotions += 1;
                }
            }
            roles::Event::Demote { role, reason } => {
                if reason == DemoteReason::Shutdown {
                    return;
                }
                match role {
                    Role::Supernode => self.demote(c, true),
                    Role::Relay if self.clients[c as usize].relay_only => self.stop_relay(c),
                    Role::Relay => {}
                }
            }
        }
    }

    /// Stops `c`'s supernode and relay gracefully: the supernode leaves the mesh and lingers a
    /// few seconds so its goodbyes go out; the relay link closes.
    fn demote(&mut self, c: u32, by_policy: bool) {
        let now = self.now();
        let t = self.base + now;
        let Some((node, since, key, _)) = self.clients[c as usize].sn.take() else {
            return;
        };
        let tenure = (now - since).as_secs_f64();
        if by_policy {
            self.counts.demotions += 1;
            if now - since < self.cfg.min_tenure {
                self.counts.demoted_below_min += 1;
            }
            self.tenures.push(tenure);
        } else {
            self.counts.sn_departures += 1;
        }
        if let Core::Sn(s) = &mut self.nodes[node as usize].core {
            s.leave(t);
        }
        self.flush(node);
        self.at(Duration::from_secs(3), Ev::Reap(node));
        self.sn_by_id.remove(&key.id);
        self.sns.retain(|s| *s != c);
        if !self.clients[c as usize].relay_only {
            self.stop_relay(c);
        }
        self.clients[c as usize].sn_clients = 0;
    }

    // ------------------------------------------------------------------ events

    fn on_event(&mut self, ev: Ev) {
        let now = self.now();
        match ev {
            Ev::Arrive { initial } => {
                self.new_client(initial, None);
                self.counts.joins += 1;
                if !initial {
                    let mean = self.mean_session() / self.cfg.clients as f64;
                    let gap = exponential(&mut self.rng, mean);
                    self.at(Duration::from_secs_f64(gap), Ev::Arrive { initial: false });
                }
            }
            Ev::Leave(c) => self.leave(c),
            Ev::Call(c) => {
                if !self.clients[c as usize].alive {
                    return;
                }
                let gap = exponential(&mut self.rng, 3600.0 / self.cfg.calls_per_hour);
                self.at(Duration::from_secs_f64(gap), Ev::Call(c));
                self.place_call(c);
            }
            Ev::CallTimeout(c, seq) => {
                if let Some(call) = self.clients[c as usize].call
                    && call.seq == seq
                {
                    let why = match call.stage {
                        Stage::Lookup => "timeout: lookup",
                        Stage::Route(_) => "timeout: invite",
                        Stage::Relays => "timeout: relay offers",
                    };
                    self.fail_call(c, why.into());
                }
            }
            Ev::CallEnd(r) => {
                self.relayed_now = self.relayed_now.saturating_sub(1);
                let l = &mut self.clients[r as usize].relay_load;
                *l = l.saturating_sub(1);
                self.report_load(r);
            }
            Ev::Sample => {
                self.sample();
                self.at(self.cfg.sample_every, Ev::Sample);
            }
            Ev::Tick => {
                self.tick();
                self.at(self.policy.period(), Ev::Tick);
            }
            Ev::Reap(n) => self.reap(n),
        }
        let _ = now;
    }

    /// Mean session length, seconds (the lognormal's mean), for the arrival rate that keeps
    /// the online population steady.
    fn mean_session(&self) -> f64 {
        let s = self.cfg.session_sigma;
        self.cfg.session_median.as_secs_f64() * (s * s / 2.0).exp()
    }

    fn report_load(&mut self, r: u32) {
        let load = self.clients[r as usize].relay_load;
        if let Some(l) = self.clients[r as usize].link
            && let Core::Link(link) = &mut self.nodes[l as usize].core
        {
            link.set_load(load);
        }
    }

    fn place_call(&mut self, c: u32) {
        let now = self.now();
        let cl = &self.clients[c as usize];
        if cl.call.is_some() || cl.registered_at.is_none() || cl.leaves_at < now + CALL_MARGIN {
            return;
        }
        // A callee that looks online: registered a few seconds ago at least, and staying
        // through the call's setup.
        let mut callee = None;
        for _ in 0..10 {
            let k = self.online[self.rng.random_range(0..self.online.len())];
            let kc = &self.clients[k as usize];
            if k != c
                && kc.registered_at.is_some_and(|r| r + SETTLED <= now)
                && kc.leaves_at > now + CALL_MARGIN
            {
                callee = Some(k);
                break;
            }
        }
        let Some(k) = callee else { return };
        let cl = &mut self.clients[c as usize];
        cl.calls += 1;
        let seq = cl.calls;
        cl.call = Some(Call {
            seq,
            callee: k,
            stage: Stage::Lookup,
            started: now,
        });
        self.counts.calls += 1;
        self.counts.lookups += 1;
        let uid = self.users[self.clients[k as usize].user as usize].uid;
        let t = self.base + now;
        if let Some(a) = self.agent(c) {
            a.lookup(t, Target::Id(uid));
        }
        let node = self.clients[c as usize].agent;
        self.flush(node);
        self.at(CALL_TIMEOUT, Ev::CallTimeout(c, seq));
    }

    fn fail_call(&mut self, c: u32, why: String) {
        if let Some(call) = self.clients[c as usize].call.take() {
            let cause = self.cause(c, call.callee);
            let stage = why.split(':').next().unwrap_or("").to_string();
            *self
                .failure_causes
                .entry(format!("{stage}: {cause}"))
                .or_default() += 1;
        }
        *self.call_failures.entry(why).or_default() += 1;
    }

    /// What the simulator knows about a failed call's callee `k` and caller `c`: the first that
    /// holds of callee gone, callee not registered, its supernode gone or promoted less than a
    /// minute ago, its re-registration (a failover) less than 20 s ago, the caller's supernode
    /// promoted less than a minute ago; else "no known cause".
    fn cause(&self, c: u32, k: u32) -> &'static str {
        let now = self.now();
        let recent = |d: Duration, s: u64| d + Duration::from_secs(s) > now;
        let kc = &self.clients[k as usize];
        let promoted = |cl: &Client| {
            cl.primary
                .and_then(|p| self.sn_by_id.get(&p))
                .and_then(|s| self.clients[*s as usize].sn)
                .map(|(_, since, ..)| since)
        };
        if !kc.alive {
            return "callee left";
        }
        let Some(p) = kc.primary else {
            return "callee not registered";
        };
        if !self.sn_by_id.contains_key(&p) {
            return "callee's supernode gone";
        }
        if promoted(kc).is_some_and(|s| recent(s, 60)) {
            return "callee's supernode promoted < 60 s before";
        }
        if kc.reregistered_at.is_some_and(|r| recent(r, 20)) {
            return "callee re-registered < 20 s before";
        }
        if promoted(&self.clients[c as usize]).is_some_and(|s| recent(s, 60)) {
            return "caller's supernode promoted < 60 s before";
        }
        "no known cause"
    }

    fn call_ok(&mut self, c: u32, relayed: bool) {
        let call = self.clients[c as usize].call.take().expect("a call");
        self.setup.push((self.now() - call.started).as_secs_f64());
        self.counts.calls_ok += 1;
        if relayed {
            self.counts.relayed += 1;
        } else {
            self.counts.direct += 1;
        }
    }

    fn on_agent(&mut self, c: u32, ev: AgentEvent) {
        let now = self.now();
        let t = self.base + now;
        match ev {
            AgentEvent::Registered {
                supernode,
                failover,
                ..
            } => {
                let cl = &mut self.clients[c as usize];
                let old = cl.primary.replace(supernode);
                let first = cl.registered_at.is_none();
                if first {
                    cl.registered_at = Some(now);
                    self.registered_online += 1;
                } else {
                    cl.reregistered_at = Some(now);
                }
                let user = cl.user;
                if let Some(o) = old {
                    self.unload(o);
                }
                if let Some(&s) = self.sn_by_id.get(&supernode) {
                    self.clients[s as usize].sn_clients += 1;
                }
                self.counts.registrations += 1;
                self.counts.failovers += u64::from(failover);
                if first {
                    self.users[user as usize].change = Some(Change {
                        at: now,
                        online: true,
                        via: Some(supernode),
                    });
                }
            }
            AgentEvent::Presence { user, online, .. } => {
                self.counts.presence_events += 1;
                let Some(&u) = self.user_by_id.get(&user) else {
                    return;
                };
                let cl = &self.clients[c as usize];
                let (Some(ch), Some(reg)) = (self.users[u as usize].change, cl.registered_at)
                else {
                    return;
                };
                // A change the watcher was there to see, seen through another supernode.
                let rewatched = cl.reregistered_at.is_some_and(|r| r + SETTLED >= ch.at);
                // A user that failed over to another supernode is announced again: no change.
                let reannounced = online
                    && self.users[u as usize]
                        .client
                        .and_then(|x| self.clients[x as usize].reregistered_at)
                        .is_some_and(|r| r > ch.at);
                let first = self.presence_seen.insert((c, u, ch.at));
                if ch.online == online
                    && ch.at >= reg + SETTLED
                    && !rewatched
                    && !reannounced
                    && first
                    && ch.via != cl.primary
                {
                    self.presence.push((now - ch.at).as_secs_f64());
                }
            }
            AgentEvent::Lookup { target, result } => {
                let Some(call) = self.clients[c as usize].call else {
                    return;
                };
                let callee = self.clients[call.callee as usize].user;
                let uid = self.users[callee as usize].uid;
                if call.stage != Stage::Lookup || target != Target::Id(uid) {
                    return;
                }
                match result {
                    Ok(Some(e)) if e.online => {
                        self.counts.lookups_ok += 1;
                        let id = self
                            .agent(c)
                            .map(|a| a.route(t, uid, b"INVITE".to_vec()))
                            .unwrap_or(0);
                        if let Some(call) = &mut self.clients[c as usize].call {
                            call.stage = Stage::Route(id);
                        }
                    }
                    Ok(Some(_)) => self.fail_call(c, "lookup: shown offline".into()),
                    Ok(None) => self.fail_call(c, "lookup: not found".into()),
                    Err(e) => self.fail_call(c, format!("lookup: {}", short(&e))),
                }
            }
            AgentEvent::Routed { id, result, .. } => {
                let Some(call) = self.clients[c as usize].call else {
                    return;
                };
                if call.stage != Stage::Route(id) {
                    return;
                }
                match result {
                    Ok(_) => {
                        let a = self.clients[c as usize].nat;
                        let b = self.clients[call.callee as usize].nat;
                        if NatKind::direct(a, b) {
                            self.call_ok(c, false);
                        } else {
                            if let Some(call) = &mut self.clients[c as usize].call {
                                call.stage = Stage::Relays;
                            }
                            if let Some(a) = self.agent(c) {
                                a.relays(t);
                            }
                        }
                    }
                    Err(e) => self.fail_call(c, format!("invite: {}", short(&e))),
                }
            }
            AgentEvent::Relays(result) => {
                let Some(call) = self.clients[c as usize].call else {
                    return;
                };
                if call.stage != Stage::Relays {
                    return;
                }
                let offers = match result {
                    Ok(o) => o,
                    Err(e) => return self.fail_call(c, format!("relays: {}", short(&e))),
                };
                // The least loaded offered relay with room, as the simulator knows it.
                let best = offers
                    .iter()
                    .filter_map(|o| self.relay_by_id.get(&o.relay).copied())
                    .filter(|r| {
                        let rc = &self.clients[*r as usize];
                        rc.alive && rc.relay_load < rc.relay_limit
                    })
                    .min_by_key(|r| (self.clients[*r as usize].relay_load, *r));
                match best {
                    Some(r) => {
                        self.clients[r as usize].relay_load += 1;
                        self.relayed_now += 1;
                        self.report_load(r);
                        self.call_ok(c, true);
                        let len = self.call_length();
                        self.at(len, Ev::CallEnd(r));
                    }
                    None if offers.is_empty() => self.fail_call(c, "relays: none offered".into()),
                    None => self.fail_call(c, "relays: all full".into()),
                }
            }
            AgentEvent::Delivered { id, .. } => {
                if let Some(a) = self.agent(c) {
                    a.acknowledge(t, id, Some(b"200 OK".to_vec()));
                }
            }
            AgentEvent::Error { message } => {
                *self.errors.entry(short(&message)).or_default() += 1;
            }
            AgentEvent::Standby { .. } | AgentEvent::Claimed { .. } | AgentEvent::Roles(_) => {}
        }
    }

    /// A call's length: lognormal, median 3 minutes.
    fn call_length(&mut self) -> Duration {
        let z = normal(&mut self.rng);
        Duration::from_secs_f64((180f64.ln() + z).exp().clamp(5.0, 4.0 * 3600.0))
    }

    fn sample(&mut self) {
        let now = self.now();
        let mut registered = 0;
        for i in 0..self.online.len() {
            let c = self.online[i];
            if self.agent(c).is_some_and(|a| a.is_registered()) {
                registered += 1;
            }
        }
        let mut sn_max = 0;
        for &s in &self.sns {
            let (node, ..) = self.clients[s as usize].sn.expect("a supernode");
            if let Core::Sn(sn) = &self.nodes[node as usize].core {
                let load = sn.client_count();
                sn_max = sn_max.max(load);
                self.sn_loads.push(load as f64);
                if load > self.cfg.sn_max_clients {
                    self.counts.sn_over_limit += 1;
                }
            }
        }
        let (mut relay_max, mut relayed) = (0, 0);
        for &s in &self.relays {
            let c = &self.clients[s as usize];
            relay_max = relay_max.max(c.relay_load);
            relayed += c.relay_load;
            self.relay_loads.push(f64::from(c.relay_load));
            if c.relay_load > c.relay_limit {
                self.counts.relay_over_limit += 1;
            }
        }
        let online = self.online.len();
        self.samples.push(Sample {
            t_s: now.as_secs_f64(),
            online,
            registered,
            supernodes: self.sns.len(),
            fraction: super::stats::round_fine(self.sns.len() as f64 / online.max(1) as f64),
            relays: self.relays.len(),
            sn_load_max: sn_max,
            relay_load_max: relay_max,
            relayed_calls: relayed,
        });
    }

    fn tick(&mut self) {
        if self.promotion == Promotion::Real {
            return self.tick_real();
        }
        let now = self.now();
        let candidates: Vec<Candidate> = self
            .online
            .iter()
            .map(|&c| (c, &self.clients[c as usize]))
            .filter(|(_, cl)| cl.nat == NatKind::Public && cl.sn.is_none())
            .map(|(c, cl)| Candidate {
                client: c,
                uptime: now - cl.joined,
                up_kbps: cl.up_kbps,
            })
            .collect();
        let mut candidates = candidates;
        candidates.sort_by_key(|c| c.client);
        let supernodes: Vec<Serving> = self
            .sns
            .iter()
            .map(|&s| {
                let cl = &self.clients[s as usize];
                Serving {
                    client: s,
                    tenure: now - cl.sn.expect("a supernode").1,
                    clients: cl.sn_clients,
                }
            })
            .collect();
        let view = View {
            online: self.online.len(),
            candidates: &candidates,
            supernodes: &supernodes,
        };
        let actions = self.policy.tick(&view, &mut self.rng);
        for a in actions {
            match a {
                Action::Promote(c) => {
                    if self.clients[c as usize].alive && self.clients[c as usize].sn.is_none() {
                        self.promote(c);
                    }
                }
                Action::Demote(c) => self.demote(c, true),
            }
        }
    }

    /// Every promoter hears the need (as from its supernode's periodic answer); a surplus
    /// beyond a quarter asks the least loaded promoted supernodes to retire (their promoters
    /// honour it once the minimum tenure has passed).
    fn tick_real(&mut self) {
        let t = self.base + self.now();
        let need = self.need_now();
        for i in 0..self.online.len() {
            let c = self.online[i];
            if let Some(p) = self.clients[c as usize].promoter {
                if let Core::Promoter(pr) = &mut self.nodes[p as usize].core {
                    pr.handle_input(t, Input::Need(need));
                }
                self.flush(p);
            }
        }
        let (want, have) = (need.supernodes_wanted as usize, self.sns.len());
        if have > want + want / 4 + 1 {
            let mut by_load: Vec<(usize, u32)> = self
                .sns
                .iter()
                .filter(|s| self.clients[**s as usize].promoter.is_some())
                .map(|s| (self.clients[*s as usize].sn_clients, *s))
                .collect();
            by_load.sort_unstable();
            for (_, s) in by_load.into_iter().take((have - want).div_ceil(4)) {
                let p = self.clients[s as usize].promoter.expect("filtered");
                if let Core::Promoter(pr) = &mut self.nodes[p as usize].core {
                    pr.handle_input(t, Input::Retire(Role::Supernode));
                }
                self.flush(p);
            }
        }
    }

    /// Calls still being set up at the end, and of those, how many wait on their lookup: the
    /// report leaves them out of the ratios (their outcome is not known).
    pub fn calls_in_flight(&self) -> (u64, u64) {
        let mut all = 0;
        let mut lookups = 0;
        for c in &self.clients {
            if let Some(call) = c.call {
                all += 1;
                lookups += u64::from(call.stage == Stage::Lookup);
            }
        }
        (all, lookups)
    }

    /// Tenures of the supernodes still serving at the end (not ended, so not in the
    /// distribution of ended ones).
    pub fn serving_tenures(&self) -> Vec<f64> {
        let now = self.now();
        self.sns
            .iter()
            .map(|s| (now - self.clients[*s as usize].sn.expect("serving").1).as_secs_f64())
            .collect()
    }
}

/// How long a user must have been registered before it counts as "online" to a caller or as a
/// watcher: the registration's own round trips to its homes.
const SETTLED: Duration = Duration::from_secs(5);
/// Callers and callees are not about to leave (setup must not race a departure).
const CALL_MARGIN: Duration = Duration::from_secs(30);
/// A call not set up by then failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The first words of an error (the counts group by them).
fn short(s: &str) -> String {
    s.chars().take(48).collect()
}

impl<P: Policy> Engine<P> {
    /// The supernodes' work over the run: those gone and those serving at the end.
    pub fn work(&self) -> Work {
        let mut w = self.work_of_gone.clone();
        for n in &self.nodes {
            if let Core::Sn(s) = &n.core {
                w.add(s);
            }
        }
        w
    }

    /// Users ever seen (identities; a returning user counts once).
    pub fn user_count(&self) -> usize {
        self.users.len()
    }
}
