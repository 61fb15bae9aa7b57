//! Session endpoints on the one simulated network (`voxlab::sim::World`), in the manner of
//! quinn-proto's `Pair`: every endpoint is a public host, the internet path between each pair
//! of addresses is impaired per direction by the lab's seeded impairer (20 ms one way by
//! default; loss, duplication and reordering where a test asks), and time jumps from event to
//! event, so a test of minutes of protocol time runs in milliseconds.
//!
//! Packets to addresses with no endpoint land in the world's sink that tests can read (an
//! attacker's inbox), and tests can inject raw datagrams from any address.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;
use voxlab::netem::Spec;
use voxlab::sim::{Datagram, World};
use voxmesh::identity::Identity;
use voxmesh::session::{Config, Endpoint, Event, SessionId};

/// One-way latency of every path unless a test says otherwise.
pub const LATENCY: Duration = Duration::from_millis(20);

/// The default path: 20 ms one way, nothing else.
pub fn clean() -> Spec {
    Spec {
        delay: LATENCY,
        ..Spec::default()
    }
}

/// A bad path: `loss`, 5 % duplicates, and 20 % of datagrams overtaking the others (they skip
/// the delay while the rest get up to 60 ms of jitter on top of it).
pub fn lossy(loss: f64) -> Spec {
    Spec {
        loss,
        duplicate: 0.05,
        reorder: 0.2,
        jitter: Duration::from_millis(60),
        ..clean()
    }
}

/// Computes the answer to a request body.
pub type Answerer = fn(&[u8]) -> Vec<u8>;

pub struct Node {
    pub ep: Endpoint,
    pub addr: SocketAddr,
    /// The world's host at `addr`'s IP.
    pub host: usize,
    /// Every event, in order.
    pub events: Vec<Event>,
    /// Answer requests automatically with this function of the body (None: leave them).
    pub auto_answer: Option<Answerer>,
}

pub struct Sim {
    pub world: World,
    pub start: Instant,
    /// The world's clock, as an instant.
    pub now: Instant,
    pub nodes: Vec<Node>,
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn identity(n: u8) -> Identity {
    Identity::from_seed(&[n; 32])
}

pub fn echo(body: &[u8]) -> Vec<u8> {
    let mut v = b"re:".to_vec();
    v.extend_from_slice(body);
    v
}

impl Sim {
    pub fn new(seed: u64) -> Sim {
        let mut world = World::new(seed);
        world.set_internet(clean());
        // Off unless a test wants the log (fuzzers send millions of datagrams).
        world.record = false;
        let start = world.instant();
        Sim {
            world,
            start,
            now: start,
            nodes: Vec::new(),
        }
    }

    pub fn add(&mut self, config: Config, identity: &Identity, at: &str) -> usize {
        let seed: [u8; 32] = self.world.rng.random();
        let addr = addr(at);
        let host = match self.world.host_at(addr.ip()) {
            Some(h) => h,
            None => self.world.add_public(addr.ip()),
        };
        self.nodes.push(Node {
            ep: Endpoint::new(config, identity, self.now, seed),
            addr,
            host,
            events: Vec::new(),
            auto_answer: None,
        });
        self.nodes.len() - 1
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The path every pair of addresses without one of its own takes; forgets per-pair paths.
    pub fn set_default_link(&mut self, spec: Spec) {
        self.world.set_internet(spec);
        self.world.reset_paths();
    }

    /// Every pair back on the default path.
    pub fn reset_links(&mut self) {
        self.world.reset_paths();
    }

    /// Impairment from `from` to `to` (one direction).
    pub fn set_path(&mut self, from: SocketAddr, to: SocketAddr, spec: Spec) {
        self.world.set_path(from, to, spec);
    }

    /// Nothing passes from `from` to `to` (a dead node or a blocked path, one direction).
    pub fn cut(&mut self, from: SocketAddr, to: SocketAddr) {
        self.world.path(from, to).cut = true;
    }

    /// Nothing passes between two nodes, either way.
    pub fn cut_between(&mut self, a: usize, b: usize) {
        let (x, y) = (self.nodes[a].addr, self.nodes[b].addr);
        self.cut(x, y);
        self.cut(y, x);
    }

    /// Sets impairment in both directions between two nodes.
    pub fn set_link(&mut self, a: usize, b: usize, spec: Spec) {
        let (x, y) = (self.nodes[a].addr, self.nodes[b].addr);
        self.set_path(x, y, spec);
        self.set_path(y, x, spec);
    }

    /// Puts a datagram on the wire from `from` (any address) to `to`, impaired like any other.
    pub fn inject(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        self.world.inject(from, to, data);
    }

    /// Delivers a datagram straight to a node now, bypassing the network.
    pub fn deliver(&mut self, node: usize, from: SocketAddr, data: &[u8]) {
        let now = self.now;
        self.nodes[node].ep.handle_input(now, from, data);
        self.drain(node);
    }

    /// Moves every output of node `i` into the network and its events into its log.
    pub fn drain(&mut self, i: usize) {
        loop {
            let mut progressed = false;
            while let Some(t) = self.nodes[i].ep.poll_transmit() {
                progressed = true;
                let (host, from) = (self.nodes[i].host, self.nodes[i].addr);
                self.world.send(host, from, t.to, t.data);
            }
            while let Some(e) = self.nodes[i].ep.poll_event() {
                progressed = true;
                if let (Some(f), Event::Request { session, txn, body }) =
                    (self.nodes[i].auto_answer, &e)
                {
                    let answer = f(body);
                    let now = self.now;
                    self.nodes[i]
                        .ep
                        .respond(now, *session, *txn, &answer)
                        .unwrap();
                }
                self.nodes[i].events.push(e);
            }
            if !progressed {
                break;
            }
        }
    }

    pub fn drain_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.drain(i);
        }
    }

    /// The next instant anything happens.
    fn next_time(&mut self) -> Option<Instant> {
        let mut t = self.world.next_event();
        for n in &mut self.nodes {
            if let Some(x) = n.ep.poll_timeout() {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        }
        t
    }

    fn advance(&mut self, t: Instant) {
        self.world.advance_to(t);
        self.now = self.world.instant();
    }

    /// Runs one step: advance to the next instant, deliver packets due, fire timers due.
    /// False when nothing is left to do.
    pub fn step(&mut self, limit: Instant) -> bool {
        self.drain_all();
        let Some(t) = self.next_time() else {
            return false;
        };
        if t > limit {
            self.advance(limit);
            return false;
        }
        self.advance(self.now.max(t));
        let now = self.now;
        for d in self.world.deliver_due() {
            match self.nodes.iter().position(|n| n.addr == d.to) {
                Some(i) => {
                    self.nodes[i].ep.handle_input(now, d.from, &d.data);
                    self.drain(i);
                }
                // A host but no endpoint on that port.
                None => self.world.sink.push(Datagram {
                    from: d.from,
                    to: d.to,
                    data: d.data,
                }),
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].ep.poll_timeout().is_some_and(|x| x <= now) {
                self.nodes[i].ep.handle_timeout(now);
                self.drain(i);
            }
        }
        true
    }

    /// Runs until `done` holds or `max` of simulated time passes; returns whether `done` held.
    pub fn drive_until(&mut self, max: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let limit = self.now + max;
        loop {
            self.drain_all();
            if done(self) {
                return true;
            }
            if !self.step(limit) {
                self.drain_all();
                return done(self);
            }
        }
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        self.drive_until(d, |_| false);
    }

    pub fn connected(&self, node: usize, session: SessionId) -> bool {
        self.nodes[node]
            .events
            .iter()
            .any(|e| matches!(e, Event::Connected { session: s, .. } if *s == session))
    }

    /// Responder side: sessions that reported `Connected`.
    pub fn connected_sessions(&self, node: usize) -> Vec<SessionId> {
        self.nodes[node]
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Connected { session, .. } => Some(*session),
                _ => None,
            })
            .collect()
    }

    /// The bodies of the answers node `node` got, in order of arrival.
    pub fn responses(&self, node: usize) -> Vec<Vec<u8>> {
        self.bodies(node, |e| match e {
            Event::Response { body, .. } => Some(body),
            _ => None,
        })
    }

    /// The bodies of the requests node `node`'s application was handed, in order.
    pub fn requests(&self, node: usize) -> Vec<Vec<u8>> {
        self.bodies(node, |e| match e {
            Event::Request { body, .. } => Some(body),
            _ => None,
        })
    }

    fn bodies(&self, node: usize, pick: impl Fn(&Event) -> Option<&Vec<u8>>) -> Vec<Vec<u8>> {
        self.nodes[node]
            .events
            .iter()
            .filter_map(|e| pick(e).cloned())
            .collect()
    }

    /// The first recorded datagram whose frame type is `kind` (`world.record` on), drained
    /// first: what an attacker on the path captures to replay.
    pub fn first_sent(&mut self, kind: u8) -> Vec<u8> {
        self.drain_all();
        self.world
            .sent
            .iter()
            .find(|p| p.data[0] == kind)
            .expect("a frame of that kind was sent")
            .data
            .clone()
    }

    pub fn count(&self, node: usize, pred: impl Fn(&Event) -> bool) -> usize {
        self.nodes[node].events.iter().filter(|e| pred(e)).count()
    }

    /// Connects node `client` to node `server` and drives until connected (panics otherwise).
    pub fn connect(&mut self, client: usize, server: usize) -> SessionId {
        let key = self.nodes[server].ep.node_key();
        let to = self.nodes[server].addr;
        let now = self.now;
        let s = self.nodes[client].ep.connect(now, to, &key).unwrap();
        let ok = self.drive_until(Duration::from_secs(30), |sim| sim.connected(client, s));
        assert!(ok, "handshake did not complete");
        s
    }
}
