//! The world: hosts behind their NATs, their access links, the internet between them with STUN
//! servers and a TURN relay on it, one clock and one event queue.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use voxmesh::supernode::{BindingConfig, BindingCounters, BindingService, Via};
use voxmesh::turn::server::{
    ClientAction, ClientAddr, Event as TurnServerEvent, PeerAction, Transport,
};
use voxmesh::turn::{AllocId, Credentials, PeerPolicy, TurnConfig, TurnServer};

use super::link::{Crossing, Link, LinkStats, Path, link_seed};
use super::nat::{Nat, NatConfig, Outbound};
use crate::netem::Spec;

/// Between a host and its NAT, each way, unless the host says otherwise.
pub const LAN_DELAY: Duration = Duration::from_micros(100);

/// One host: its address, its NAT, its access link.
pub struct Host {
    pub lan: IpAddr,
    pub nat: Nat,
    /// Leaving the host (after its NAT) ...
    pub uplink: Link,
    /// ... and reaching it (before its NAT).
    pub downlink: Link,
    /// Between the host and its NAT (and for a host sending to itself).
    pub lan_delay: Duration,
    /// No packet passes in either direction while set (a dead host or link).
    pub down: bool,
}

impl Host {
    /// The address the internet reaches this host's box at.
    pub fn nat_wan(&self) -> IpAddr {
        self.nat.wan()
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

/// A datagram on the wire, for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// What became of a logged datagram (its first copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    InFlight,
    /// Reached a host's socket, a server or a relay.
    Delivered,
    /// Lost on a link (or on a cut or blocked path).
    Lost,
    /// Dropped by a NAT, outbound or inbound.
    DroppedByNat,
    /// Nothing lives at its destination.
    Unroutable,
}

/// One entry of the sent-datagram log.
#[derive(Clone, Debug)]
pub struct Sent {
    /// Simulated time since the start.
    pub at: Duration,
    /// The sending host; `None` for an injected datagram.
    pub host: Option<usize>,
    /// The sender's socket (before its NAT) and the destination.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub data: Vec<u8>,
    pub fate: Fate,
}

/// How a simulated STUN server behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StunBehaviour {
    /// As its configuration says (RFC 5780 or plain).
    Normal,
    /// Advertises an alternate address but answers every request from the socket it came in on.
    IgnoresChange,
    /// Never answers.
    Dead,
}

/// A STUN server: the real [`BindingService`], its sockets routed by address.
pub struct StunServer {
    pub service: BindingService,
    pub behaviour: StunBehaviour,
    /// Stops answering from this simulated time on.
    pub dead_from: Option<Duration>,
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
    /// Datagrams put on a link (an access link or an internet path) and lost there.
    pub sent: u64,
    pub lost: u64,
    /// Datagrams to an address nothing listens on (e.g. a peer's private address).
    pub unroutable: u64,
    pub dropped_by_nat: u64,
    /// Datagrams that reached a dead STUN server.
    pub to_dead_server: u64,
}

#[derive(Debug)]
enum Ev {
    /// On the internet, arriving at `dst` now.
    Internet {
        src: SocketAddr,
        dst: SocketAddr,
        data: Vec<u8>,
        log: Option<usize>,
    },
    /// Through host `host`'s downlink, arriving at its NAT now.
    AtNat {
        host: usize,
        src: SocketAddr,
        dst: SocketAddr,
        data: Vec<u8>,
        log: Option<usize>,
    },
    /// On host `host`'s LAN, arriving at its socket `to`.
    Lan {
        host: usize,
        to: SocketAddr,
        from: SocketAddr,
        data: Vec<u8>,
        log: Option<usize>,
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

/// The simulated network. See the [module documentation](super).
pub struct World {
    base: Instant,
    now: Duration,
    seq: u64,
    seed: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    /// The NATs' random ports and the relay's secrets come from here; links draw their own.
    pub rng: StdRng,
    pub hosts: Vec<Host>,
    /// Host by WAN address (the first host added at an address), so routing a datagram costs
    /// one lookup however many hosts the world holds.
    host_index: HashMap<IpAddr, usize>,
    stun: Vec<StunServer>,
    /// Every STUN server socket: address -> (server, which socket).
    stun_routes: BTreeMap<SocketAddr, (usize, Via)>,
    pub relay: Option<Relay>,
    /// Pairs of addresses between which nothing passes on the internet (a path that broke
    /// between two sites while each still reaches the servers).
    pub blocked: Vec<(IpAddr, IpAddr)>,
    /// The impairment of every internet path between a source (after its NAT) and a
    /// destination, on top of the hosts' access links; [`World::path`] overrides it per pair.
    /// Clean and instant by default: worlds of NATed hosts put their delays on access links.
    internet: Spec,
    paths: HashMap<(SocketAddr, SocketAddr), Link>,
    /// Log every datagram sent (or injected) in [`World::sent`].
    pub record: bool,
    pub sent: Vec<Sent>,
    /// Datagrams that reached an address where nothing lives (an attacker's inbox, a peer's
    /// private address).
    pub sink: Vec<Datagram>,
    pub stats: WorldStats,
}

impl World {
    pub fn new(seed: u64) -> World {
        World {
            base: Instant::now(),
            now: Duration::ZERO,
            seq: 0,
            seed,
            queue: BinaryHeap::new(),
            rng: StdRng::seed_from_u64(seed),
            hosts: Vec::new(),
            host_index: HashMap::new(),
            stun: Vec::new(),
            stun_routes: BTreeMap::new(),
            relay: None,
            blocked: Vec::new(),
            internet: Spec::default(),
            paths: HashMap::new(),
            record: true,
            sent: Vec::new(),
            sink: Vec::new(),
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
        let i = self.hosts.len();
        let tag = |dir: &str| format!("host {i} {dir}").into_bytes();
        self.host_index.entry(wan).or_insert(i);
        self.hosts.push(Host {
            lan,
            nat: Nat::with_wan(nat, wan),
            uplink: Link::new(link.up, link_seed(self.seed, &tag("up"))),
            downlink: Link::new(link.down, link_seed(self.seed, &tag("down"))),
            lan_delay: LAN_DELAY,
            down: false,
        });
        i
    }

    /// Adds a public host at `ip` whose access link is clean and instant: a world whose
    /// impairment lives on internet paths ([`World::set_internet`], [`World::path`]).
    pub fn add_public(&mut self, ip: IpAddr) -> usize {
        let h = self.add_host(NatConfig::public(), ip, ip, Path::default());
        self.hosts[h].lan_delay = Duration::ZERO;
        h
    }

    /// The host that owns `ip` (its WAN address), if any.
    pub fn host_at(&self, ip: IpAddr) -> Option<usize> {
        self.host_index.get(&ip).copied()
    }

    /// A STUN binding server at `addr` (one address, no RFC 5780).
    pub fn add_stun(&mut self, addr: SocketAddr) {
        let config = BindingConfig {
            primary: addr,
            alternate: None,
            rfc5780: false,
            software: None,
        };
        self.add_stun_server(config, StunBehaviour::Normal);
    }

    /// A STUN server on every socket `config` names (two IPs × two ports for RFC 5780).
    /// Returns its index.
    pub fn add_stun_server(&mut self, config: BindingConfig, behaviour: StunBehaviour) -> usize {
        let i = self.stun.len();
        for (via, addr) in config.sockets() {
            let old = self.stun_routes.insert(addr, (i, via));
            assert!(old.is_none(), "two simulated servers on {addr}");
        }
        self.stun.push(StunServer {
            service: BindingService::new(config, Arc::new(BindingCounters::default())),
            behaviour,
            dead_from: None,
        });
        i
    }

    pub fn stun_servers(&mut self) -> &mut [StunServer] {
        &mut self.stun
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

    /// The impairment of every internet path without one of its own; paths already used keep
    /// theirs (call [`World::reset_paths`] to start them afresh).
    pub fn set_internet(&mut self, spec: Spec) {
        self.internet = spec;
    }

    /// Forgets every per-pair path: all go back to the [`World::set_internet`] impairment.
    pub fn reset_paths(&mut self) {
        self.paths.clear();
    }

    /// The internet path from `src` (after its NAT) to `dst`, made on first use.
    pub fn path(&mut self, src: SocketAddr, dst: SocketAddr) -> &mut Link {
        let (seed, spec) = (self.seed, &self.internet);
        self.paths.entry((src, dst)).or_insert_with(|| {
            Link::new(
                *spec,
                link_seed(seed, format!("path {src} {dst}").as_bytes()),
            )
        })
    }

    /// Sets the impairment from `src` to `dst` (one direction).
    pub fn set_path(&mut self, src: SocketAddr, dst: SocketAddr, spec: Spec) {
        let seed = link_seed(self.seed, format!("path {src} {dst}").as_bytes());
        self.path(src, dst).set_spec(spec, seed);
    }

    /// Every internet path's counts added up.
    pub fn path_stats(&self) -> LinkStats {
        self.paths
            .values()
            .fold(LinkStats::default(), |a, l| LinkStats {
                sent: a.sent + l.stats.sent,
                lost: a.lost + l.stats.lost,
                duplicated: a.duplicated + l.stats.duplicated,
            })
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

    fn log(
        &mut self,
        host: Option<usize>,
        src: SocketAddr,
        dst: SocketAddr,
        data: &[u8],
    ) -> Option<usize> {
        if !self.record {
            return None;
        }
        self.sent.push(Sent {
            at: self.now,
            host,
            src,
            dst,
            data: data.to_vec(),
            fate: Fate::InFlight,
        });
        Some(self.sent.len() - 1)
    }

    fn settle(&mut self, log: Option<usize>, fate: Fate) {
        if let Some(e) = log.and_then(|i| self.sent.get_mut(i))
            && e.fate == Fate::InFlight
        {
            e.fate = fate;
        }
        match fate {
            Fate::Lost => self.stats.lost += 1,
            Fate::DroppedByNat => self.stats.dropped_by_nat += 1,
            Fate::Unroutable => self.stats.unroutable += 1,
            Fate::InFlight | Fate::Delivered => {}
        }
    }

    /// Host `host` sends `data` from its socket `src` to `dst`: through its NAT and up its link.
    pub fn send(&mut self, host: usize, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        let log = self.log(Some(host), src, dst, &data);
        if self.hosts[host].down {
            return self.settle(log, Fate::Lost);
        }
        let now = self.now;
        let h = &mut self.hosts[host];
        match h.nat.outbound(now, src, dst, &mut self.rng) {
            Outbound::Drop => self.settle(log, Fate::DroppedByNat),
            Outbound::Lan { to, from } => {
                let d = self.hosts[host].lan_delay;
                self.schedule(
                    d,
                    Ev::Lan {
                        host,
                        to,
                        from,
                        data,
                        log,
                    },
                );
            }
            Outbound::Wan(src) => {
                let t = self.instant();
                self.stats.sent += 1;
                match self.hosts[host].uplink.cross(t, data.len()) {
                    Crossing::Lost => self.settle(log, Fate::Lost),
                    // On the internet at once: it takes its path now, so cutting a path right
                    // after a send does not catch a datagram that already left.
                    Crossing::Arrives { after, twice } if after.is_zero() => {
                        if twice {
                            self.route(src, dst, data.clone(), None);
                        }
                        self.route(src, dst, data, log);
                    }
                    Crossing::Arrives { after, twice } => {
                        if twice {
                            let ev = Ev::Internet {
                                src,
                                dst,
                                data: data.clone(),
                                log: None,
                            };
                            self.schedule(after, ev);
                        }
                        self.schedule(
                            after,
                            Ev::Internet {
                                src,
                                dst,
                                data,
                                log,
                            },
                        );
                    }
                }
            }
        }
    }

    /// Puts a datagram on the internet with any source address (an off-path attacker that
    /// spoofs its source, or a test standing in for a sender); it takes the internet path to
    /// `dst` like any other.
    pub fn inject(&mut self, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        let log = self.log(None, src, dst, &data);
        self.route(src, dst, data, log);
    }

    /// Sends from a server on the internet (no access link).
    fn server_send(&mut self, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        self.schedule(
            Duration::ZERO,
            Ev::Internet {
                src,
                dst,
                data,
                log: None,
            },
        );
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
                    log,
                } => {
                    self.settle(log, Fate::Delivered);
                    out.push(Delivery {
                        host,
                        to,
                        from,
                        data,
                    })
                }
                Ev::AtNat {
                    host,
                    src,
                    dst,
                    data,
                    log,
                } => {
                    let now = self.now;
                    match self.hosts[host].nat.inbound(now, src, dst) {
                        Some(to) => {
                            let d = self.hosts[host].lan_delay;
                            let ev = Ev::Lan {
                                host,
                                to,
                                from: src,
                                data,
                                log,
                            };
                            self.schedule(d, ev)
                        }
                        None => self.settle(log, Fate::DroppedByNat),
                    }
                }
                Ev::Internet {
                    src,
                    dst,
                    data,
                    log,
                } => self.route(src, dst, data, log),
            }
        }
        out
    }

    /// A datagram on the internet: to a server, to a relayed address, or down a host's link.
    fn route(&mut self, src: SocketAddr, dst: SocketAddr, data: Vec<u8>, log: Option<usize>) {
        let (s, d) = (src.ip(), dst.ip());
        if self
            .blocked
            .iter()
            .any(|&(a, b)| (a, b) == (s, d) || (a, b) == (d, s))
        {
            return self.settle(log, Fate::Lost);
        }
        if let Some(&(i, via)) = self.stun_routes.get(&dst) {
            return self.serve_stun(i, via, src, &data, log);
        }
        let now = self.instant();
        if let Some(r) = &mut self.relay {
            let dead = r.dead_from.is_some_and(|t| self.now >= t);
            if dst == r.listen {
                if dead {
                    return self.settle(log, Fate::Lost);
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
                return self.settle(log, Fate::Delivered);
            }
            if let Some(&id) = r.relays.get(&dst) {
                if dead {
                    return self.settle(log, Fate::Lost);
                }
                let mut out = Vec::new();
                if let PeerAction::ToClient { to, len } =
                    r.server.handle_peer(now, id, src, &data, &mut out)
                {
                    out.truncate(len);
                    self.server_send(to.local, to.remote, out);
                }
                return self.settle(log, Fate::Delivered);
            }
        }
        let Some(host) = self.host_at(dst.ip()) else {
            self.sink.push(Datagram {
                from: src,
                to: dst,
                data,
            });
            return self.settle(log, Fate::Unroutable);
        };
        if self.hosts[host].down {
            return self.settle(log, Fate::Lost);
        }
        // The internet path (when this world impairs paths), then the host's downlink.
        let mut after = Duration::ZERO;
        let mut copies = 1;
        if self.paths.contains_key(&(src, dst)) || self.internet != Spec::default() {
            self.stats.sent += 1;
            match self.path(src, dst).cross(now, data.len()) {
                Crossing::Lost => return self.settle(log, Fate::Lost),
                Crossing::Arrives { after: a, twice } => {
                    after += a;
                    copies += usize::from(twice);
                }
            }
        }
        for copy in 0..copies {
            self.stats.sent += 1;
            let at = now + after;
            match self.hosts[host].downlink.cross(at, data.len()) {
                Crossing::Lost => self.settle(log.filter(|_| copy == 0), Fate::Lost),
                Crossing::Arrives { after: a, twice } => {
                    let log = log.filter(|_| copy == 0);
                    if twice {
                        let ev = Ev::AtNat {
                            host,
                            src,
                            dst,
                            data: data.clone(),
                            log: None,
                        };
                        self.schedule(after + a, ev);
                    }
                    let ev = Ev::AtNat {
                        host,
                        src,
                        dst,
                        data: data.clone(),
                        log,
                    };
                    self.schedule(after + a, ev);
                }
            }
        }
    }

    fn serve_stun(
        &mut self,
        i: usize,
        via: Via,
        from: SocketAddr,
        data: &[u8],
        log: Option<usize>,
    ) {
        self.settle(log, Fate::Delivered);
        let server = &self.stun[i];
        if server.behaviour == StunBehaviour::Dead
            || server.dead_from.is_some_and(|t| self.now >= t)
        {
            self.stats.to_dead_server += 1;
            return;
        }
        let mut out = Vec::new();
        let Some(reply) = server.service.handle(via, from, data, &mut out) else {
            return;
        };
        let send_via = match server.behaviour {
            StunBehaviour::IgnoresChange => via,
            _ => reply.via,
        };
        let src = server.service.config().local(send_via);
        out.truncate(reply.len);
        self.server_send(src, reply.to, out);
    }
}
