//! A deterministic network of several hosts, each behind its own modelled NAT ([`super::Nat`]),
//! with a STUN server (the real [`BindingService`], standing in for the supernode) and a TURN
//! relay (the real [`TurnServer`] core) on the internet.
//!
//! ```text
//!  host 0  10.0.1.2  --LAN-- NAT 203.0.113.1 ==link 0==+
//!  host 1  10.0.2.2  --LAN-- NAT 203.0.113.2 ==link 1==+== internet: STUN 198.51.100.1:3478
//!  ...                                                 +            TURN 198.51.100.10:3478
//! ```
//!
//! Every host has an access link between its NAT and the internet with its own delay, jitter
//! and loss in each direction; the servers sit on the internet itself. So a packet from host 0
//! to host 1 takes link 0's up delay plus link 1's down delay, and "25 ms per NAT link" gives a
//! 100 ms round trip between two NATed hosts and 50 ms to a server.
//!
//! The world knows nothing of the programs on the hosts: a test sends datagrams with
//! [`World::send`] and receives what [`World::deliver_due`] hands back, driving its own state
//! machines in between, and asks [`World::next_event`] when something happens next. Time is
//! simulated (a base `Instant` plus an offset) and every random choice comes from one seeded
//! `StdRng`, so a seed replays the same run. Every datagram a host sends is logged
//! ([`World::sent`]) for assertions about where traffic went.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use voxmesh::supernode::{BindingConfig, BindingCounters, BindingService};
use voxmesh::turn::server::{
    ClientAction, ClientAddr, Event as TurnServerEvent, PeerAction, Transport,
};
use voxmesh::turn::{AllocId, Credentials, PeerPolicy, TurnConfig, TurnServer};

use super::{Link, Nat, NatConfig, Outbound, Path};

/// Between a host and its NAT.
const LAN_DELAY: Duration = Duration::from_micros(100);

/// One host: its address, its NAT, its access link.
pub struct Host {
    pub lan: IpAddr,
    pub nat: Nat,
    pub link: Path,
    /// No packet passes in either direction while set (a dead link).
    pub down: bool,
}

#[derive(Debug)]
enum Ev {
    /// On the internet, arriving at `dst` now.
    Internet {
        src: SocketAddr,
        dst: SocketAddr,
        data: Vec<u8>,
    },
    /// Through host `host`'s down link, arriving at its NAT now.
    AtNat {
        host: usize,
        src: SocketAddr,
        dst: SocketAddr,
        data: Vec<u8>,
    },
    /// On host `host`'s LAN, arriving at its socket `to`.
    Lan {
        host: usize,
        to: SocketAddr,
        from: SocketAddr,
        data: Vec<u8>,
    },
}

struct Scheduled {
    at: Duration,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// A datagram that reached a host's socket.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub host: usize,
    /// The socket it arrived at.
    pub to: SocketAddr,
    pub from: SocketAddr,
    pub data: Vec<u8>,
}

/// The TURN relay: the real server core, its relayed sockets routed by address.
pub struct Relay {
    pub listen: SocketAddr,
    pub server: TurnServer,
    relays: BTreeMap<SocketAddr, AllocId>,
    /// Stops answering and relaying from this time on (a relay that died).
    pub dead_from: Option<Duration>,
}

/// Counts for one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct WorldStats {
    pub sent: u64,
    pub lost: u64,
    /// Datagrams to an address nothing listens on (e.g. a peer's private address).
    pub unroutable: u64,
    pub dropped_by_nat: u64,
}

pub struct World {
    base: Instant,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    pub rng: StdRng,
    pub hosts: Vec<Host>,
    stun: Vec<(SocketAddr, BindingService)>,
    pub relay: Option<Relay>,
    /// Pairs of addresses between which nothing passes on the internet (a path that broke
    /// between two sites while each still reaches the servers).
    pub blocked: Vec<(IpAddr, IpAddr)>,
    /// Every datagram a host sent: (time, host, source socket, destination, bytes).
    pub sent: Vec<(Duration, usize, SocketAddr, SocketAddr, Vec<u8>)>,
    pub stats: WorldStats,
}

impl World {
    pub fn new(seed: u64) -> World {
        World {
            base: Instant::now(),
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            rng: StdRng::seed_from_u64(seed),
            hosts: Vec::new(),
            stun: Vec::new(),
            relay: None,
            blocked: Vec::new(),
            sent: Vec::new(),
            stats: WorldStats::default(),
        }
    }

    /// Adds a host with LAN address `lan` behind a box with WAN address `wan` (equal for an
    /// untranslated host) and access link `link`. Returns its index.
    pub fn add_host(&mut self, nat: NatConfig, lan: IpAddr, wan: IpAddr, link: Path) -> usize {
        assert!(
            nat.translate || lan == wan,
            "an untranslated host owns its WAN address"
        );
        self.hosts.push(Host {
            lan,
            nat: Nat::with_wan(nat, wan),
            link,
            down: false,
        });
        self.hosts.len() - 1
    }

    /// A STUN binding server at `addr` (one address, no RFC 5780).
    pub fn add_stun(&mut self, addr: SocketAddr) {
        let config = BindingConfig {
            primary: addr,
            alternate: None,
            rfc5780: false,
            software: None,
        };
        let service = BindingService::new(config, Arc::new(BindingCounters::default()));
        self.stun.push((addr, service));
    }

    /// A TURN relay listening on `listen`, relaying from `relay_ips`, accepting `creds`, and
    /// allowed to reach the documentation ranges the world uses.
    pub fn add_relay(&mut self, listen: SocketAddr, relay_ips: Vec<IpAddr>, creds: Credentials) {
        let config = TurnConfig {
            relay_ips: relay_ips.clone(),
            ports: 49152..=49999,
            policy: PeerPolicy {
                allow: vec![
                    "203.0.113.0/24".parse().unwrap(),
                    "198.51.100.0/24".parse().unwrap(),
                    "2001:db8::/32".parse().unwrap(),
                    "10.0.0.0/8".parse().unwrap(),
                ],
                own: relay_ips,
            },
            ..TurnConfig::default()
        };
        let seed: [u8; 32] = self.rng.random();
        let server = TurnServer::new(config, creds, self.instant(), 1_000_000, seed);
        self.relay = Some(Relay {
            listen,
            server,
            relays: BTreeMap::new(),
            dead_from: None,
        });
    }

    /// Host `host`'s NAT forgets its bindings (a reboot, or the lab flushing conntrack) and
    /// from now on picks random external ports, so the next packet gets a new mapping.
    pub fn rebind(&mut self, host: usize) {
        let nat = &mut self.hosts[host].nat;
        let config = nat.config().port_preservation(false);
        *nat = Nat::with_wan(config, nat.wan());
    }

    pub fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now
    }

    /// Simulated time of `t`.
    pub fn since_start(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.base)
    }

    /// When the world next has something to do (a datagram in flight, a relay timer).
    pub fn next_event(&self) -> Option<Instant> {
        let q = self.queue.peek().map(|Reverse(s)| self.base + s.at);
        let relay = self.relay.as_ref().and_then(|r| r.server.poll_timeout());
        match (q, relay) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Moves the clock to `t` (never backwards).
    pub fn advance_to(&mut self, t: Instant) {
        let d = t.saturating_duration_since(self.base);
        assert!(d >= self.now, "time only moves forward");
        self.now = d;
    }

    fn schedule(&mut self, after: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + after,
            seq: self.seq,
            ev,
        }));
    }

    /// Crosses `link` (loss, delay, jitter); `None` when lost.
    fn cross(&mut self, link: Link) -> Option<Duration> {
        self.stats.sent += 1;
        if link.loss > 0.0 && self.rng.random_bool(link.loss) {
            self.stats.lost += 1;
            return None;
        }
        let jitter = if link.jitter.is_zero() {
            Duration::ZERO
        } else {
            link.jitter.mul_f64(self.rng.random::<f64>())
        };
        Some(link.delay + jitter)
    }

    /// Host `host` sends `data` from its socket `src` to `dst`: through its NAT and up its link.
    pub fn send(&mut self, host: usize, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        self.sent.push((self.now, host, src, dst, data.clone()));
        if self.hosts[host].down {
            self.stats.lost += 1;
            return;
        }
        let now = self.now;
        let h = &mut self.hosts[host];
        match h.nat.outbound(now, src, dst, &mut self.rng) {
            Outbound::Drop => self.stats.dropped_by_nat += 1,
            Outbound::Lan { to, from } => self.schedule(
                LAN_DELAY,
                Ev::Lan {
                    host,
                    to,
                    from,
                    data,
                },
            ),
            Outbound::Wan(src) => {
                let up = self.hosts[host].link.up;
                if let Some(d) = self.cross(up) {
                    self.schedule(d, Ev::Internet { src, dst, data });
                }
            }
        }
    }

    /// Puts a datagram on the internet with any source address: an off-path attacker that
    /// spoofs its source.
    pub fn inject(&mut self, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        self.schedule(Duration::ZERO, Ev::Internet { src, dst, data });
    }

    /// Sends from a server on the internet (no access link).
    fn server_send(&mut self, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        self.schedule(Duration::ZERO, Ev::Internet { src, dst, data });
    }

    /// Runs every event due at the current time; returns the datagrams that reached hosts.
    pub fn deliver_due(&mut self) -> Vec<Delivery> {
        let mut out = Vec::new();
        if let Some(r) = &mut self.relay
            && r.server
                .poll_timeout()
                .is_some_and(|t| t <= self.base + self.now)
        {
            r.server.handle_timeout(self.base + self.now);
            while let Some(TurnServerEvent::Released { relay, .. }) = r.server.poll_event() {
                r.relays.remove(&relay);
            }
        }
        while self.queue.peek().is_some_and(|Reverse(s)| s.at <= self.now) {
            let Reverse(s) = self.queue.pop().expect("peeked");
            match s.ev {
                Ev::Lan {
                    host,
                    to,
                    from,
                    data,
                } => out.push(Delivery {
                    host,
                    to,
                    from,
                    data,
                }),
                Ev::AtNat {
                    host,
                    src,
                    dst,
                    data,
                } => {
                    let now = self.now;
                    match self.hosts[host].nat.inbound(now, src, dst) {
                        Some(to) => self.schedule(
                            LAN_DELAY,
                            Ev::Lan {
                                host,
                                to,
                                from: src,
                                data,
                            },
                        ),
                        None => self.stats.dropped_by_nat += 1,
                    }
                }
                Ev::Internet { src, dst, data } => self.route(src, dst, data),
            }
        }
        out
    }

    /// A datagram on the internet: to a server, to a relayed address, or down a host's link.
    fn route(&mut self, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        let (s, d) = (src.ip(), dst.ip());
        if self
            .blocked
            .iter()
            .any(|&(a, b)| (a, b) == (s, d) || (a, b) == (d, s))
        {
            self.stats.lost += 1;
            return;
        }
        if let Some(i) = self.stun.iter().position(|(a, _)| *a == dst) {
            let mut out = Vec::new();
            let via = self.stun[i].1.config().sockets()[0].0;
            if let Some(reply) = self.stun[i].1.handle(via, src, &data, &mut out) {
                out.truncate(reply.len);
                self.server_send(dst, reply.to, out);
            }
            return;
        }
        let now = self.instant();
        if let Some(r) = &mut self.relay {
            let dead = r.dead_from.is_some_and(|t| self.now >= t);
            if dst == r.listen {
                if dead {
                    return;
                }
                let from = ClientAddr {
                    transport: Transport::Udp,
                    remote: src,
                    local: r.listen,
                    conn: 0,
                };
                let mut out = Vec::new();
                let mut action = r.server.handle_client(now, from, &data, &mut out);
                let mut sends = Vec::new();
                loop {
                    match action {
                        ClientAction::Bind { pending, id, addr } => {
                            r.relays.insert(addr, id);
                            action = r.server.relay_bound(now, pending, Ok(()), &mut out);
                            continue;
                        }
                        ClientAction::ToClient { to, len } => {
                            sends.push((to.local, to.remote, out[..len].to_vec()))
                        }
                        ClientAction::ToPeer {
                            id,
                            peer,
                            data: range,
                        } => {
                            let relay = r.server.relay_of(id).expect("live allocation");
                            sends.push((relay, peer, data[range].to_vec()));
                        }
                        ClientAction::None => {}
                    }
                    break;
                }
                for (s, d, bytes) in sends {
                    self.server_send(s, d, bytes);
                }
                return;
            }
            if let Some(&id) = r.relays.get(&dst) {
                if dead {
                    return;
                }
                let mut out = Vec::new();
                if let PeerAction::ToClient { to, len } =
                    r.server.handle_peer(now, id, src, &data, &mut out)
                {
                    out.truncate(len);
                    self.server_send(to.local, to.remote, out);
                }
                return;
            }
        }
        if let Some(host) = self.hosts.iter().position(|h| h.nat_wan() == dst.ip()) {
            if self.hosts[host].down {
                self.stats.lost += 1;
                return;
            }
            let down = self.hosts[host].link.down;
            if let Some(d) = self.cross(down) {
                self.schedule(
                    d,
                    Ev::AtNat {
                        host,
                        src,
                        dst,
                        data,
                    },
                );
            }
            return;
        }
        self.stats.unroutable += 1;
    }
}

impl Host {
    /// The address the internet reaches this host's box at.
    pub fn nat_wan(&self) -> IpAddr {
        self.nat.wan()
    }
}
