//! A deterministic in-memory network for session endpoints, in the manner of quinn-proto's
//! `Pair`: endpoints joined by a packet queue with a simulated clock, and seeded impairment
//! (loss, duplication, reordering through extra delay) per link. `drive_until` moves time from
//! event to event, so a test of minutes of protocol time runs in milliseconds.
//!
//! Packets to addresses with no endpoint land in a sink that tests can read (an attacker's
//! inbox), and tests can inject raw datagrams from any address.

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use voxmesh::identity::Identity;
use voxmesh::session::{Config, Endpoint, Event, SessionId};

/// Impairment of packets between two addresses (or all, by default).
#[derive(Clone, Copy, Debug)]
pub struct Link {
    pub latency: Duration,
    /// Probability that a packet is lost.
    pub loss: f64,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Probability that a packet gets up to `reorder_delay` of extra delay (and so overtakes or
    /// is overtaken by its neighbours).
    pub reorder: f64,
    pub reorder_delay: Duration,
    /// Everything is dropped (a dead node or a blocked path).
    pub down: bool,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            latency: Duration::from_millis(20),
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(60),
            down: false,
        }
    }
}

impl Link {
    pub fn lossy(loss: f64) -> Link {
        Link {
            loss,
            duplicate: 0.05,
            reorder: 0.2,
            ..Link::default()
        }
    }
}

/// Computes the answer to a request body.
pub type Answerer = fn(&[u8]) -> Vec<u8>;

pub struct Node {
    pub ep: Endpoint,
    pub addr: SocketAddr,
    /// Every event, in order.
    pub events: Vec<Event>,
    /// Answer requests automatically with this function of the body (None: leave them).
    pub auto_answer: Option<Answerer>,
}

#[derive(Clone, Debug)]
pub struct Packet {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

pub struct Sim {
    pub start: Instant,
    pub now: Instant,
    pub nodes: Vec<Node>,
    rng: SmallRng,
    pub default_link: Link,
    /// Per (from, to) overrides.
    pub links: HashMap<(SocketAddr, SocketAddr), Link>,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    in_flight: HashMap<usize, Packet>,
    next_id: usize,
    seq: u64,
    /// Packets to addresses with no node.
    pub sink: Vec<Packet>,
    /// Every packet sent (before impairment), when `record` is on.
    pub record: bool,
    pub sent: Vec<Packet>,
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
        let start = Instant::now();
        Sim {
            start,
            now: start,
            nodes: Vec::new(),
            rng: SmallRng::seed_from_u64(seed),
            default_link: Link::default(),
            links: HashMap::new(),
            queue: BinaryHeap::new(),
            in_flight: HashMap::new(),
            next_id: 0,
            seq: 0,
            sink: Vec::new(),
            record: false,
            sent: Vec::new(),
        }
    }

    pub fn add(&mut self, config: Config, identity: &Identity, at: &str) -> usize {
        let seed: [u8; 32] = self.rng.random();
        self.nodes.push(Node {
            ep: Endpoint::new(config, identity, self.now, seed),
            addr: addr(at),
            events: Vec::new(),
            auto_answer: None,
        });
        self.nodes.len() - 1
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    pub fn link(&self, from: SocketAddr, to: SocketAddr) -> Link {
        self.links
            .get(&(from, to))
            .copied()
            .unwrap_or(self.default_link)
    }

    /// Sets impairment in both directions between two nodes.
    pub fn set_link(&mut self, a: usize, b: usize, link: Link) {
        let (x, y) = (self.nodes[a].addr, self.nodes[b].addr);
        self.links.insert((x, y), link);
        self.links.insert((y, x), link);
    }

    /// Puts a datagram on the wire from `from` to `to`, impaired like any other.
    pub fn inject(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        let link = self.link(from, to);
        if self.record {
            self.sent.push(Packet {
                from,
                to,
                data: data.clone(),
            });
        }
        if link.down || self.rng.random_bool(link.loss.clamp(0.0, 1.0)) {
            return;
        }
        let copies = if self.rng.random_bool(link.duplicate.clamp(0.0, 1.0)) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut at = self.now + link.latency;
            if self.rng.random_bool(link.reorder.clamp(0.0, 1.0)) {
                at += link.reorder_delay.mul_f64(self.rng.random_range(0.0..1.0));
            }
            let id = self.next_id;
            self.next_id += 1;
            self.in_flight.insert(
                id,
                Packet {
                    from,
                    to,
                    data: data.clone(),
                },
            );
            self.seq += 1;
            self.queue.push(Reverse((at, self.seq, id)));
        }
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
                let from = self.nodes[i].addr;
                self.inject(from, t.to, t.data);
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
        let mut t = self.queue.peek().map(|Reverse((t, _, _))| *t);
        for n in &mut self.nodes {
            if let Some(x) = n.ep.poll_timeout() {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        }
        t
    }

    /// Runs one step: advance to the next instant, deliver packets due, fire timers due.
    /// False when nothing is left to do.
    pub fn step(&mut self, limit: Instant) -> bool {
        self.drain_all();
        let Some(t) = self.next_time() else {
            return false;
        };
        if t > limit {
            self.now = limit;
            return false;
        }
        self.now = self.now.max(t);
        let now = self.now;
        while let Some(&Reverse((at, _, id))) = self.queue.peek() {
            if at > now {
                break;
            }
            self.queue.pop();
            let p = self.in_flight.remove(&id).expect("queued packet");
            match self.nodes.iter().position(|n| n.addr == p.to) {
                Some(i) => {
                    self.nodes[i].ep.handle_input(now, p.from, &p.data);
                    self.drain(i);
                }
                None => self.sink.push(p),
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
