//! A deterministic discrete-event network for natprobe, in the style of quinn-proto's `Pair` and
//! str0m's netem: one client host whose sockets are the probe's, a modelled NAT (RFC 4787 terms)
//! in front of it, STUN servers running the real [`BindingService`], and an impaired path between
//! the NAT and the internet.
//!
//! ```text
//!  client 10.0.0.2:50000+i  --LAN--  NAT 203.0.113.1  ==path (delay, jitter, loss)==  servers
//! ```
//!
//! Time is simulated: a base `Instant` plus an offset that jumps from event to event, so a probe
//! that waits a minute for a binding to expire costs microseconds. Nothing sleeps. Every random
//! choice (loss, jitter, the NAT's random ports) comes from one seeded `StdRng` and events run in
//! (time, insertion) order, so a seed always replays the same run. (The probe draws its STUN
//! transaction IDs from the OS; they change bytes on the wire, never the course of a run.)
//!
//! What the NAT models:
//! - mapping: endpoint-independent (optionally port-preserving), address-dependent or
//!   address-and-port-dependent, the last two with random external ports;
//! - filtering: endpoint-independent, address-dependent with the state kept per mapping (RFC 4787)
//!   or per box (one packet to an IP from any mapping lets that IP in to every mapping), or
//!   address-and-port-dependent;
//! - binding lifetime, refreshed by outbound packets and optionally by accepted inbound ones (as
//!   Linux conntrack does); filter state expires with the same lifetime;
//! - hairpinning: a packet to the NAT's own address is turned around to the mapping it names, with
//!   the sender's mapped address as its source, and is not filtered (like the lab's nft rules);
//! - "public" (no NAT, no filter), "firewall" (no translation, address-and-port-dependent
//!   filtering) and "blocked" (all UDP dropped). A host without translation delivers packets to its
//!   own address locally, so it always "hairpins".
//!
//! Not modelled: port exhaustion, ICMP, several LAN hosts, bursty (correlated) loss. The LAN
//! between client and NAT is clean; impairment applies to the internet path only.
//!
//! Servers run the real [`BindingService`] (its `Via` sockets are routed by address), as an RFC
//! 5780 server on two IPs × two ports, a plain one-address server, one that advertises an
//! alternate but answers CHANGE-REQUEST from the socket asked, or a dead one;
//! [`Sim::servers_fail_at`] kills them all mid-run.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use voxmesh::nat::{Probe, ProbeConfig, Report, Stage};
use voxmesh::supernode::{BindingConfig, BindingCounters, BindingService, Via};

/// A world of several hosts behind their own NATs, with a STUN server and a TURN relay (used by
/// the ICE simulations; natprobe's single-client `Sim` below predates it).
#[allow(dead_code)]
pub mod world;

/// The client's address behind a NAT.
pub const CLIENT_LAN: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
/// The NAT's WAN address, and the client's own address when it is not translated.
pub const WAN: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
/// The probe's socket `i` is bound to port `FIRST_PORT + i`.
pub const FIRST_PORT: u16 = 50000;
/// Packets between the client and its NAT (or to itself) take this long.
const LAN_DELAY: Duration = Duration::from_micros(100);
/// A run still going after this much simulated time is a hung probe.
const TIME_LIMIT: Duration = Duration::from_secs(600);

fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
}

/// The RFC 5780 server's primary address (A1:p1) ...
pub fn rfc5780_primary() -> SocketAddr {
    v4(198, 51, 100, 1, 3478)
}
/// ... and its alternate (A2:p2).
pub fn rfc5780_alternate() -> SocketAddr {
    v4(198, 51, 100, 2, 3479)
}
/// The RFC 5780 server's socket on the alternate IP and the primary port (A2:p1): what a user
/// who lists "the other address" of that server as a server of its own points at.
pub fn rfc5780_alt_ip() -> SocketAddr {
    v4(198, 51, 100, 2, 3478)
}
/// Two ordinary (one-address) STUN servers on different IPs ...
pub fn plain_a() -> SocketAddr {
    v4(198, 51, 100, 3, 3478)
}
pub fn plain_b() -> SocketAddr {
    v4(198, 51, 100, 4, 3478)
}
/// ... and a third on `plain_a`'s IP, another port.
pub fn plain_a_port2() -> SocketAddr {
    v4(198, 51, 100, 3, 3479)
}
/// A server that never answers.
pub fn dead() -> SocketAddr {
    v4(198, 51, 100, 9, 3478)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filtering {
    EndpointIndependent,
    /// Address-dependent, state per mapping (RFC 4787 §5).
    AddressPerMapping,
    /// Address-dependent, state per box: an IP any mapping has sent to may reach every mapping.
    AddressPerBox,
    AddressAndPortDependent,
}

/// The box between the client and the internet.
#[derive(Clone, Copy, Debug)]
pub struct NatConfig {
    /// Translate addresses at all (false: public host or firewall, the client owns `WAN`).
    pub translate: bool,
    pub mapping: Mapping,
    pub filtering: Filtering,
    /// An endpoint-independent or first mapping keeps the internal port when it is free.
    pub port_preservation: bool,
    pub hairpin: bool,
    /// Idle time after which a binding (and its filter state) is gone.
    pub lifetime: Duration,
    /// Accepted inbound packets refresh the binding too (Linux conntrack), not only outbound.
    pub refresh_inbound: bool,
    /// Drop all UDP.
    pub blocked: bool,
}

impl NatConfig {
    pub fn nat(mapping: Mapping, filtering: Filtering) -> Self {
        NatConfig {
            translate: true,
            mapping,
            filtering,
            port_preservation: mapping == Mapping::EndpointIndependent,
            hairpin: false,
            lifetime: Duration::from_secs(120),
            refresh_inbound: true,
            blocked: false,
        }
    }

    pub fn public() -> Self {
        NatConfig {
            translate: false,
            ..Self::nat(Mapping::EndpointIndependent, Filtering::EndpointIndependent)
        }
    }

    pub fn firewall() -> Self {
        NatConfig {
            translate: false,
            ..Self::nat(
                Mapping::EndpointIndependent,
                Filtering::AddressAndPortDependent,
            )
        }
    }

    pub fn blocked() -> Self {
        NatConfig {
            blocked: true,
            ..Self::nat(
                Mapping::EndpointIndependent,
                Filtering::AddressAndPortDependent,
            )
        }
    }

    pub fn hairpin(self, hairpin: bool) -> Self {
        NatConfig { hairpin, ..self }
    }

    pub fn port_preservation(self, port_preservation: bool) -> Self {
        NatConfig {
            port_preservation,
            ..self
        }
    }

    pub fn lifetime(self, lifetime: Duration) -> Self {
        NatConfig { lifetime, ..self }
    }

    pub fn refresh_inbound(self, refresh_inbound: bool) -> Self {
        NatConfig {
            refresh_inbound,
            ..self
        }
    }

    /// The client's own address: on the LAN behind a NAT, or the public one.
    pub fn client_ip(&self) -> IpAddr {
        if self.translate { CLIENT_LAN } else { WAN }
    }
}

/// One binding: an internal endpoint, what else keys it (by the mapping behaviour), its external
/// port, and the filter state kept with it.
#[derive(Clone, Debug)]
struct Binding {
    internal: SocketAddr,
    /// `None` (endpoint-independent), the remote IP with port 0, or the remote endpoint.
    key: Option<SocketAddr>,
    port: u16,
    expires: Duration,
    /// Remote endpoints this binding has sent to, and until when they may answer.
    permits: Vec<(SocketAddr, Duration)>,
}

/// What the NAT did with an outbound packet.
pub enum Outbound {
    Drop,
    /// Out on the WAN, with this source.
    Wan(SocketAddr),
    /// Turned around (hairpin, or a host sending to itself): deliver to `to`, from `from`.
    Lan {
        to: SocketAddr,
        from: SocketAddr,
    },
}

/// Why the NAT dropped an inbound packet (for statistics and test diagnostics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatDrops {
    pub blocked: u64,
    pub no_binding: u64,
    pub filtered: u64,
    pub hairpin_off: u64,
}

#[derive(Debug)]
pub struct Nat {
    config: NatConfig,
    /// The box's WAN address (the client's own when it does not translate).
    wan: IpAddr,
    bindings: Vec<Binding>,
    /// Per-box address-dependent filter state: remote IP -> expiry.
    box_permits: BTreeMap<IpAddr, Duration>,
    /// Every binding ever allocated, in order: internal endpoint, key, external address.
    pub history: Vec<(SocketAddr, Option<SocketAddr>, SocketAddr)>,
    pub drops: NatDrops,
}

impl Nat {
    fn new(config: NatConfig) -> Self {
        Self::with_wan(config, WAN)
    }

    /// A NAT (or untranslated host) whose WAN address is `wan`, for worlds with several boxes.
    pub fn with_wan(config: NatConfig, wan: IpAddr) -> Self {
        Nat {
            config,
            wan,
            bindings: Vec::new(),
            box_permits: BTreeMap::new(),
            history: Vec::new(),
            drops: NatDrops::default(),
        }
    }

    /// The external address first given to `internal` for packets to `remote`.
    pub fn first_mapping(&self, internal: SocketAddr, remote: SocketAddr) -> Option<SocketAddr> {
        let key = self.key(remote);
        self.history
            .iter()
            .find(|(i, k, _)| *i == internal && *k == key)
            .map(|(_, _, e)| *e)
    }

    fn expire(&mut self, now: Duration) {
        self.bindings.retain(|b| b.expires > now);
        for b in &mut self.bindings {
            b.permits.retain(|(_, t)| *t > now);
        }
        self.box_permits.retain(|_, t| *t > now);
    }

    fn key(&self, remote: SocketAddr) -> Option<SocketAddr> {
        match self.config.mapping {
            Mapping::EndpointIndependent => None,
            Mapping::AddressDependent => Some(SocketAddr::new(remote.ip(), 0)),
            Mapping::AddressAndPortDependent => Some(remote),
        }
    }

    /// Finds or creates the binding for `internal` -> `remote`, refreshes it, and returns its
    /// index.
    fn bind(
        &mut self,
        now: Duration,
        internal: SocketAddr,
        remote: SocketAddr,
        rng: &mut StdRng,
    ) -> usize {
        let key = self.key(remote);
        let expires = now + self.config.lifetime;
        if let Some(i) = self
            .bindings
            .iter()
            .position(|b| b.internal == internal && b.key == key)
        {
            self.bindings[i].expires = expires;
            return i;
        }
        let in_use = |p: u16, bs: &[Binding]| bs.iter().any(|b| b.port == p);
        // Untranslated hosts "map" to themselves; port preservation keeps a free internal port.
        let keep = !self.config.translate
            || (self.config.port_preservation && !in_use(internal.port(), &self.bindings));
        let port = if keep {
            internal.port()
        } else {
            loop {
                let p = rng.random_range(1024..=65535u16);
                // Never the internal port by chance: "not preserved" stays a fact of the config.
                if p != internal.port() && !in_use(p, &self.bindings) {
                    break p;
                }
            }
        };
        self.history
            .push((internal, key, SocketAddr::new(self.wan, port)));
        self.bindings.push(Binding {
            internal,
            key,
            port,
            expires,
            permits: Vec::new(),
        });
        self.bindings.len() - 1
    }

    /// The box's WAN address.
    pub fn wan(&self) -> IpAddr {
        self.wan
    }

    pub fn config(&self) -> NatConfig {
        self.config
    }

    pub fn outbound(
        &mut self,
        now: Duration,
        src: SocketAddr,
        dst: SocketAddr,
        rng: &mut StdRng,
    ) -> Outbound {
        if self.config.blocked {
            self.drops.blocked += 1;
            return Outbound::Drop;
        }
        self.expire(now);
        if dst.ip() == self.wan {
            if !self.config.translate {
                // A host sending to its own address: the kernel loops it back.
                return Outbound::Lan { to: dst, from: src };
            }
            if !self.config.hairpin {
                self.drops.hairpin_off += 1;
                return Outbound::Drop;
            }
            let Some(target) = self.bindings.iter().find(|b| b.port == dst.port()) else {
                self.drops.no_binding += 1;
                return Outbound::Drop;
            };
            let to = target.internal;
            let i = self.bind(now, src, dst, rng);
            let from = SocketAddr::new(self.wan, self.bindings[i].port);
            return Outbound::Lan { to, from };
        }
        let i = self.bind(now, src, dst, rng);
        let expires = now + self.config.lifetime;
        let b = &mut self.bindings[i];
        match b.permits.iter_mut().find(|(r, _)| *r == dst) {
            Some((_, t)) => *t = expires,
            None => b.permits.push((dst, expires)),
        }
        self.box_permits.insert(dst.ip(), expires);
        Outbound::Wan(SocketAddr::new(self.wan, b.port))
    }

    /// The internal endpoint an inbound packet from `src` to `dst` reaches, if any.
    pub fn inbound(
        &mut self,
        now: Duration,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Option<SocketAddr> {
        if self.config.blocked {
            self.drops.blocked += 1;
            return None;
        }
        let c = self.config;
        if !c.translate && c.filtering == Filtering::EndpointIndependent {
            return Some(dst); // a public host: every packet reaches it
        }
        self.expire(now);
        let Some(i) = self.bindings.iter().position(|b| b.port == dst.port()) else {
            self.drops.no_binding += 1;
            return None;
        };
        let b = &self.bindings[i];
        let allowed = match c.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressPerMapping => b.permits.iter().any(|(r, _)| r.ip() == src.ip()),
            Filtering::AddressPerBox => self.box_permits.contains_key(&src.ip()),
            Filtering::AddressAndPortDependent => b.permits.iter().any(|(r, _)| *r == src),
        };
        if !allowed {
            self.drops.filtered += 1;
            return None;
        }
        let b = &mut self.bindings[i];
        if c.refresh_inbound {
            let expires = now + c.lifetime;
            b.expires = expires;
            for (r, t) in &mut b.permits {
                if r.ip() == src.ip()
                    && (c.filtering != Filtering::AddressAndPortDependent || *r == src)
                {
                    *t = expires;
                }
            }
            if let Some(t) = self.box_permits.get_mut(&src.ip()) {
                *t = expires;
            }
        }
        Some(b.internal)
    }
}

/// How a simulated STUN server behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// RFC 5780: two IPs × two ports, OTHER-ADDRESS advertised, CHANGE-REQUEST honoured.
    Rfc5780,
    /// Advertises an alternate address but answers every request from the socket it came in on.
    IgnoresChange,
    /// One address, no RFC 5780 (CHANGE-REQUEST answered with 420).
    Plain,
    /// Never answers.
    Dead,
}

#[derive(Clone, Copy, Debug)]
pub struct ServerSpec {
    pub kind: ServerKind,
    pub primary: SocketAddr,
}

impl ServerSpec {
    pub fn rfc5780() -> Self {
        ServerSpec {
            kind: ServerKind::Rfc5780,
            primary: rfc5780_primary(),
        }
    }

    pub fn ignores_change() -> Self {
        ServerSpec {
            kind: ServerKind::IgnoresChange,
            primary: rfc5780_primary(),
        }
    }

    pub fn plain(primary: SocketAddr) -> Self {
        ServerSpec {
            kind: ServerKind::Plain,
            primary,
        }
    }

    pub fn dead(primary: SocketAddr) -> Self {
        ServerSpec {
            kind: ServerKind::Dead,
            primary,
        }
    }
}

struct Server {
    kind: ServerKind,
    service: BindingService,
}

/// One direction of the internet path.
#[derive(Clone, Copy, Debug, Default)]
pub struct Link {
    pub delay: Duration,
    /// Extra delay, uniform in [0, jitter) (so packets may be reordered).
    pub jitter: Duration,
    pub loss: f64,
}

/// The internet path between the NAT and the servers: `up` is outbound from the client.
#[derive(Clone, Copy, Debug, Default)]
pub struct Path {
    pub up: Link,
    pub down: Link,
}

impl Path {
    /// No loss, no jitter, `one_way` each way.
    pub fn clean(one_way: Duration) -> Self {
        let l = Link {
            delay: one_way,
            ..Link::default()
        };
        Path { up: l, down: l }
    }

    /// The same impairment both ways.
    pub fn symmetric(delay: Duration, jitter: Duration, loss: f64) -> Self {
        let l = Link {
            delay,
            jitter,
            loss,
        };
        Path { up: l, down: l }
    }
}

#[derive(Debug)]
enum Event {
    /// A datagram on the internet side, arriving at `dst`.
    Internet {
        src: SocketAddr,
        dst: SocketAddr,
        data: Vec<u8>,
    },
    /// A datagram on the LAN side, arriving at the client's `to`.
    Lan {
        to: SocketAddr,
        from: SocketAddr,
        data: Vec<u8>,
    },
}

struct Scheduled {
    at: Duration,
    seq: u64,
    event: Event,
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

/// Datagram counts for one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Datagrams put on the internet path, outbound and inbound, and how many of them it lost.
    pub sent_up: u64,
    pub lost_up: u64,
    pub sent_down: u64,
    pub lost_down: u64,
    /// Datagrams that reached a dead server.
    pub to_dead_server: u64,
}

/// The simulated world: clock, event queue, NAT, servers, path.
pub struct Sim {
    base: Instant,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    rng: StdRng,
    pub nat: Nat,
    servers: Vec<Server>,
    /// Every server socket: address -> (server, which socket).
    routes: BTreeMap<SocketAddr, (usize, Via)>,
    path: Path,
    client_ip: IpAddr,
    pub stats: Stats,
    /// Every stage the probe went through, with the simulated time it began.
    pub stages: Vec<(Duration, Stage)>,
    /// From this simulated time on, every server is dead.
    servers_fail_at: Option<Duration>,
}

impl Sim {
    pub fn new(nat: NatConfig, servers: &[ServerSpec], path: Path, seed: u64) -> Self {
        let mut routes = BTreeMap::new();
        let servers = servers
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let two = matches!(spec.kind, ServerKind::Rfc5780 | ServerKind::IgnoresChange);
                let config = BindingConfig {
                    primary: spec.primary,
                    alternate: two.then(rfc5780_alternate),
                    rfc5780: two,
                    software: None,
                };
                for (via, addr) in config.sockets() {
                    let old = routes.insert(addr, (i, via));
                    assert!(old.is_none(), "two simulated servers on {addr}");
                }
                Server {
                    kind: spec.kind,
                    service: BindingService::new(config, Arc::new(BindingCounters::default())),
                }
            })
            .collect();
        Sim {
            base: Instant::now(),
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            rng: StdRng::seed_from_u64(seed),
            nat: Nat::new(nat),
            servers,
            routes,
            path,
            client_ip: nat.client_ip(),
            stats: Stats::default(),
            stages: Vec::new(),
            servers_fail_at: None,
        }
    }

    /// Makes every server stop answering at `at` (simulated time since the start).
    pub fn servers_fail_at(&mut self, at: Duration) {
        self.servers_fail_at = Some(at);
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// The client's socket `i`.
    pub fn local(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.client_ip, FIRST_PORT + i as u16)
    }

    fn schedule(&mut self, after: Duration, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + after,
            seq: self.seq,
            event,
        }));
    }

    /// Sends over one direction of the path: lost, or scheduled after its delay and jitter.
    fn over_path(&mut self, up: bool, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        let (link, sent, lost) = if up {
            (
                self.path.up,
                &mut self.stats.sent_up,
                &mut self.stats.lost_up,
            )
        } else {
            (
                self.path.down,
                &mut self.stats.sent_down,
                &mut self.stats.lost_down,
            )
        };
        *sent += 1;
        if link.loss > 0.0 && self.rng.random_bool(link.loss) {
            *lost += 1;
            return;
        }
        let jitter = if link.jitter.is_zero() {
            Duration::ZERO
        } else {
            link.jitter.mul_f64(self.rng.random::<f64>())
        };
        self.schedule(link.delay + jitter, Event::Internet { src, dst, data });
    }

    fn client_send(&mut self, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        match self.nat.outbound(self.now, src, dst, &mut self.rng) {
            Outbound::Drop => {}
            Outbound::Wan(src) => self.over_path(true, src, dst, data),
            Outbound::Lan { to, from } => self.schedule(LAN_DELAY, Event::Lan { to, from, data }),
        }
    }

    /// Runs one event; returns a datagram for the client's socket, if one arrives.
    fn deliver(&mut self, event: Event) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        match event {
            Event::Lan { to, from, data } => Some((to, from, data)),
            Event::Internet { src, dst, data } => {
                if let Some(&(i, via)) = self.routes.get(&dst) {
                    self.serve(i, via, src, &data);
                    None
                } else if dst.ip() == WAN {
                    let to = self.nat.inbound(self.now, src, dst)?;
                    Some((to, src, data))
                } else {
                    None // unroutable
                }
            }
        }
    }

    fn serve(&mut self, i: usize, via: Via, from: SocketAddr, data: &[u8]) {
        let server = &self.servers[i];
        if server.kind == ServerKind::Dead || self.servers_fail_at.is_some_and(|t| self.now >= t) {
            self.stats.to_dead_server += 1;
            return;
        }
        let mut out = Vec::new();
        let Some(reply) = server.service.handle(via, from, data, &mut out) else {
            return;
        };
        let send_via = match server.kind {
            ServerKind::IgnoresChange => via,
            _ => reply.via,
        };
        let src = server.service.config().local(send_via);
        out.truncate(reply.len);
        self.over_path(false, src, reply.to, out);
    }

    /// Runs a probe to its report, driving it through its public API only.
    pub fn run(&mut self, config: ProbeConfig) -> Report {
        let n = Probe::sockets_needed(&config);
        let locals: Vec<SocketAddr> = (0..n).map(|i| self.local(i)).collect();
        let mut probe = Probe::new(config, locals.clone(), self.instant());
        let mut idle_spins = 0u32;
        loop {
            while let Some(t) = probe.poll_transmit() {
                self.client_send(locals[t.socket], t.to, t.data);
            }
            if self.stages.last().is_none_or(|(_, s)| *s != probe.stage()) {
                self.stages.push((self.now, probe.stage()));
            }
            if let Some(report) = probe.poll_report() {
                return report;
            }
            let timer = probe
                .poll_timeout()
                .map(|t| t.saturating_duration_since(self.base).max(self.now));
            let event = self.queue.peek().map(|Reverse(s)| s.at);
            let at = match (timer, event) {
                (None, None) => panic!(
                    "probe stalled at {:?}: no timer set and nothing in flight",
                    self.now
                ),
                (Some(t), None) => t,
                (None, Some(e)) => e,
                (Some(t), Some(e)) => t.min(e),
            };
            assert!(
                at <= TIME_LIMIT,
                "probe still running after {TIME_LIMIT:?} of simulated time"
            );
            if at == self.now && event != Some(at) {
                // A timer that is due and stays due without anything happening is a busy loop.
                idle_spins += 1;
                assert!(
                    idle_spins < 10_000,
                    "probe busy-loops on a due timer at {at:?}"
                );
            } else {
                idle_spins = 0;
            }
            self.now = at;
            if event == Some(at) {
                let Reverse(s) = self.queue.pop().expect("peeked");
                if let Some((to, from, data)) = self.deliver(s.event) {
                    if to.ip() != self.client_ip {
                        continue;
                    }
                    let Some(socket) = locals.iter().position(|l| *l == to) else {
                        continue; // no socket on that port
                    };
                    probe.handle_input(self.instant(), socket, from, &data);
                }
            } else {
                probe.handle_timeout(self.instant());
            }
        }
    }
}
