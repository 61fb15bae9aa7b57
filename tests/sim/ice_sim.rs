//! The ICE agent (`voxmesh::call::ice`) between two clients on the simulated network
//! (`voxlab::sim::World`): each behind its own modelled NAT, a real STUN binding service standing
//! in for the supernode, a real TURN server core as the relay, and each client's one socket shared
//! by STUN, TURN and the checks as in the product (first-byte demultiplexing, RFC 7983).
//! Deterministic: a seed replays a run exactly; time is simulated.
//!
//! Run `cargo test --test ice_sim -- --nocapture` to see the setup-time tables.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use voxlab::sim::{Delivery, Filtering, Mapping, Nat, NatConfig, Path, World};
use voxmesh::call::ice::{
    Candidate, CandidateKind, ChangeReason, Credentials, Event, IceAgent, IceConfig, Inbound,
    LocalCandidate, PathInfo, Refusal, Route, Timing,
};
use voxmesh::stun::{Class, Message, MessageBuilder, TransactionId, attr, method};
use voxmesh::turn::{Credentials as TurnCredentials, TurnClient, TurnClientConfig, TurnEvent};

// ---------------------------------------------------------------------------- the world

const STUN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 3478);
const TURN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10)), 3478);
const RELAY_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
/// The same servers on IPv6, for IPv6-only clients.
fn stun6() -> SocketAddr {
    "[2001:db8:ffff::1]:3478".parse().unwrap()
}
fn turn6() -> SocketAddr {
    "[2001:db8:ffff::10]:3478".parse().unwrap()
}
fn relay_ip6() -> IpAddr {
    "2001:db8:ffff::10".parse().unwrap()
}
const PORT: u16 = 40000;
/// A media packet: first byte 128 (RTP-like, RFC 7983), then the sender's index and a sequence.
const MEDIA: u8 = 0x80;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The NAT types of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Public,
    FullCone,
    Restricted,
    PortRestricted,
    Symmetric,
}

const KINDS: [Kind; 5] = [
    Kind::Public,
    Kind::FullCone,
    Kind::Restricted,
    Kind::PortRestricted,
    Kind::Symmetric,
];

impl Kind {
    fn nat(self) -> NatConfig {
        const EIM: Mapping = Mapping::EndpointIndependent;
        const APDM: Mapping = Mapping::AddressAndPortDependent;
        match self {
            Kind::Public => NatConfig::public(),
            Kind::FullCone => NatConfig::nat(EIM, Filtering::EndpointIndependent),
            Kind::Restricted => NatConfig::nat(EIM, Filtering::AddressPerMapping),
            Kind::PortRestricted => NatConfig::nat(EIM, Filtering::AddressAndPortDependent),
            Kind::Symmetric => NatConfig::nat(APDM, Filtering::AddressAndPortDependent),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Public => "public",
            Kind::FullCone => "full-cone",
            Kind::Restricted => "restricted",
            Kind::PortRestricted => "port-restr",
            Kind::Symmetric => "symmetric",
        }
    }
}

/// RFC 4787 reasoning: hole punching fails only when one side's mapping depends on the
/// destination (symmetric) and the other side filters by port (port-restricted or symmetric).
fn needs_relay(a: Kind, b: Kind) -> bool {
    let filters_port = |k| matches!(k, Kind::PortRestricted | Kind::Symmetric);
    (a == Kind::Symmetric && filters_port(b)) || (b == Kind::Symmetric && filters_port(a))
}

// ---------------------------------------------------------------------------- a client

/// What signalling carries between the two clients.
#[derive(Clone, Debug)]
enum Signal {
    Creds(Credentials),
    Cand(Candidate),
    /// End of candidates (RFC 8838).
    End,
}

/// One interface: a socket on a host of the world.
#[derive(Clone, Copy, Debug)]
struct Iface {
    host: usize,
    socket: SocketAddr,
}

/// A STUN binding query to the supernode (gathering, outside the agent).
struct StunQuery {
    id: TransactionId,
    bytes: Vec<u8>,
    next: Instant,
    tries: u32,
}

/// A client: the ICE agent plus what a call core would do around it (gathering, the TURN
/// client, the demultiplexer, media).
struct Peer {
    index: usize,
    /// The first interface talks to the supernode and the relay.
    ifaces: Vec<Iface>,
    stun_server: SocketAddr,
    turn_server: SocketAddr,
    agent: IceAgent,
    rng: StdRng,
    turn: Option<TurnClient>,
    relayed: Option<SocketAddr>,
    use_relay: bool,
    stun: Option<StunQuery>,
    gathering: u32,
    outbox: Vec<Signal>,
    /// Direct candidates not given to the agent yet (a callee that hides its addresses from a
    /// caller who is not a contact until it accepts, DESIGN §6.5).
    withheld: Vec<LocalCandidate>,
    withhold_direct: bool,
    /// Restart ICE (re-gathering) when the path is lost, or, as the controlled side, when our
    /// NAT mapping changed: what a call core does.
    auto_restart: bool,
    last_restart: Option<Instant>,
    restarts: u32,
    /// A restart asked the supernode for our mapping again.
    regathering: bool,
    /// End of candidates signalled for the current session.
    ended: bool,
    /// No media (mute, or DTX silence).
    muted: bool,
    events: Vec<(Duration, Event)>,
    /// Every check or answer the agent sent: (route, destination).
    agent_sent: Vec<(Route, SocketAddr)>,
    /// Sources of datagrams the agent accepted (authenticated checks and answers).
    authenticated: BTreeSet<SocketAddr>,
    /// Every remote candidate signalled to this client.
    signalled: BTreeSet<SocketAddr>,
    refused: Vec<Refusal>,
    relay_send_errors: u64,
    media_next: Option<Instant>,
    media_seq: u64,
    media_sent: u64,
    /// Media received: (time, route it came in on).
    media_recv: Vec<(Duration, bool)>,
}

impl Peer {
    fn new(index: usize, ifaces: Vec<Iface>, controlling: bool, timing: Timing, seed: u64) -> Peer {
        let mut rng = StdRng::seed_from_u64(seed);
        let agent = IceAgent::new(IceConfig {
            controlling,
            seed: rng.random(),
            timing,
        })
        .expect("valid timing");
        let v6 = ifaces[0].socket.is_ipv6();
        Peer {
            index,
            ifaces,
            stun_server: if v6 { stun6() } else { STUN },
            turn_server: if v6 { turn6() } else { TURN },
            agent,
            rng,
            turn: None,
            relayed: None,
            use_relay: true,
            stun: None,
            gathering: 0,
            outbox: Vec::new(),
            withheld: Vec::new(),
            withhold_direct: false,
            auto_restart: false,
            last_restart: None,
            restarts: 0,
            regathering: false,
            ended: false,
            muted: false,
            events: Vec::new(),
            agent_sent: Vec::new(),
            authenticated: BTreeSet::new(),
            signalled: BTreeSet::new(),
            refused: Vec::new(),
            relay_send_errors: 0,
            media_next: None,
            media_seq: 0,
            media_sent: 0,
            media_recv: Vec::new(),
        }
    }

    /// Starts gathering, as a call core does at dial/ring time: host candidates at once, the
    /// supernode's STUN answer and the relay allocation in parallel on the IPv4 socket.
    fn gather(&mut self, now: Instant) {
        self.outbox
            .push(Signal::Creds(self.agent.local_credentials().clone()));
        for i in 0..self.ifaces.len() {
            self.add_local(now, LocalCandidate::Host(self.ifaces[i].socket));
        }
        self.query_stun(now);
        if self.use_relay {
            self.allocate(now);
        }
    }

    fn query_stun(&mut self, now: Instant) {
        let id = TransactionId(self.rng.random());
        let mut bytes = Vec::new();
        MessageBuilder::new(&mut bytes, method::BINDING, Class::Request, id).fingerprint();
        self.stun = Some(StunQuery {
            id,
            bytes,
            next: now,
            tries: 0,
        });
        self.gathering += 1;
    }

    fn allocate(&mut self, now: Instant) {
        let name = format!("peer{}", self.index);
        let mut config = TurnClientConfig::new(self.turn_server, &name, "secret");
        config.ipv6_relay = self.turn_server.is_ipv6();
        let mut turn = TurnClient::new(config);
        turn.allocate(now);
        self.turn = Some(turn);
        self.relayed = None;
        self.gathering += 1;
    }

    /// Gives a gathered candidate to the agent and trickles it, unless direct candidates are
    /// withheld.
    fn add_local(&mut self, now: Instant, c: LocalCandidate) {
        if self.withhold_direct && !matches!(c, LocalCandidate::Relayed(_)) {
            self.withheld.push(c);
            return;
        }
        if let Some(c) = self.agent.add_local_candidate(now, c) {
            self.outbox.push(Signal::Cand(c));
        }
    }

    /// The callee accepted: its direct candidates join the agent and are signalled.
    fn reveal(&mut self, now: Instant) {
        self.withhold_direct = false;
        for c in std::mem::take(&mut self.withheld) {
            self.add_local(now, c);
        }
    }

    /// Restarts ICE as a call core would when the path is lost or the NAT mapping changed: new
    /// credentials, the candidates signalled again, and the supernode asked for the mapping;
    /// if that changed, the server-reflexive candidate and the relay allocation (bound to the
    /// old mapping) are replaced.
    fn restart(&mut self, now: Instant) {
        self.restarts += 1;
        self.last_restart = Some(now);
        let creds = self.agent.restart(now);
        self.outbox.push(Signal::Creds(creds));
        for c in self.agent.local_candidates() {
            self.outbox.push(Signal::Cand(c));
        }
        self.regathering = true;
        self.ended = false;
        self.query_stun(now);
    }

    /// The supernode's answer after a restart: a new mapping replaces what the old one gave.
    fn remapped(&mut self, now: Instant, mapped: SocketAddr) {
        self.regathering = false;
        let old: Vec<Candidate> = self
            .agent
            .local_candidates()
            .into_iter()
            .filter(|c| c.kind == CandidateKind::ServerReflexive)
            .collect();
        if old.iter().any(|c| c.addr == mapped) {
            return;
        }
        for c in old {
            self.agent.remove_local_candidate(now, c.addr);
        }
        if let Some(r) = self.relayed.take() {
            self.agent.remove_local_candidate(now, r);
            self.allocate(now);
        }
    }

    fn gathered(&self) -> bool {
        self.gathering == 0
    }

    fn v4(&self) -> Iface {
        self.ifaces[0]
    }

    fn on_signal(&mut self, now: Instant, s: Signal) {
        match s {
            Signal::Creds(c) => {
                if let Some(mine) = self
                    .agent
                    .set_remote_credentials(now, c)
                    .expect("valid credentials")
                {
                    // The peer restarted ICE and so did we: signal our new session.
                    self.outbox.push(Signal::Creds(mine));
                    for c in self.agent.local_candidates() {
                        self.outbox.push(Signal::Cand(c));
                    }
                }
            }
            Signal::Cand(c) => {
                self.signalled.insert(c.addr);
                self.agent
                    .add_remote_candidate(now, c)
                    .expect("acceptable candidate");
            }
            Signal::End => self.agent.end_of_remote_candidates(now),
        }
    }

    /// The demultiplexer of the call's socket (RFC 7983): STUN from the supernode is
    /// gathering, STUN/ChannelData from the relay goes to the TURN client (whose relayed data
    /// may be a check or media), other STUN goes to the agent, first byte 128..191 is media.
    fn on_datagram(&mut self, now: Instant, elapsed: Duration, d: Delivery) {
        if d.from == self.stun_server {
            let Ok(msg) = Message::parse(&d.data) else {
                return;
            };
            if self
                .stun
                .as_ref()
                .is_some_and(|q| q.id == msg.transaction_id())
                && let Some(mapped) = msg.xor_mapped_address()
            {
                self.stun = None;
                self.gathering -= 1;
                if self.regathering {
                    self.remapped(now, mapped);
                }
                let base = self.v4().socket;
                self.add_local(now, LocalCandidate::ServerReflexive { addr: mapped, base });
            }
            return;
        }
        if d.from == self.turn_server {
            let Some(turn) = self.turn.as_mut() else {
                return;
            };
            if let Some(r) = turn.handle_input(now, &d.data) {
                // The TURN client passes on relayed data even before its allocation succeeded
                // (or for one it no longer has): nothing to do with it then.
                let Some(relayed) = self.relayed else {
                    return;
                };
                let payload = d.data[r.data].to_vec();
                self.dispatch_peer_datagram(elapsed, now, Route::Relay(relayed), r.peer, &payload);
            }
            return;
        }
        self.dispatch_peer_datagram(elapsed, now, Route::Direct(d.to), d.from, &d.data);
    }

    fn dispatch_peer_datagram(
        &mut self,
        elapsed: Duration,
        now: Instant,
        route: Route,
        from: SocketAddr,
        data: &[u8],
    ) {
        match data.first() {
            Some(0..=3) => match self.agent.handle_input(now, route, from, data) {
                Inbound::Consumed => {
                    self.authenticated.insert(from);
                }
                Inbound::Refused(r) => self.refused.push(r),
                Inbound::NotIce => {}
            },
            Some(&MEDIA) => self.media_recv.push((elapsed, route.is_relay())),
            _ => {}
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [
            self.agent.poll_timeout(),
            self.turn.as_ref().and_then(|t| t.poll_timeout()),
            self.stun.as_ref().map(|q| q.next),
            self.media_next,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn on_timeout(&mut self, world: &mut World, now: Instant) {
        if self.agent.poll_timeout().is_some_and(|t| t <= now) {
            self.agent.handle_timeout(now);
        }
        if let Some(turn) = self.turn.as_mut()
            && turn.poll_timeout().is_some_and(|t| t <= now)
        {
            turn.handle_timeout(now);
        }
        if let Some(q) = self.stun.as_mut()
            && q.next <= now
        {
            if q.tries == 6 {
                self.stun = None; // no answer: no server-reflexive candidate
                self.gathering -= 1;
            } else {
                q.tries += 1;
                q.next = now + ms(250);
                let (host, socket) = (self.ifaces[0].host, self.ifaces[0].socket);
                world.send(host, socket, self.stun_server, q.bytes.clone());
            }
        }
        if self.media_next.is_some_and(|t| t <= now) {
            self.media_next = Some(now + ms(20));
            if !self.muted {
                self.send_media(world);
            }
        }
    }

    /// One media packet on the selected path, as the call core will send it.
    fn send_media(&mut self, world: &mut World) {
        let Some(path) = self.agent.selected() else {
            return;
        };
        self.media_seq += 1;
        let mut data = vec![MEDIA, self.index as u8];
        data.extend_from_slice(&self.media_seq.to_be_bytes());
        self.media_sent += 1;
        self.route_out(world, path.route, path.remote, data);
    }

    fn route_out(&mut self, world: &mut World, route: Route, to: SocketAddr, data: Vec<u8>) {
        match route {
            Route::Direct(src) => {
                let host = self
                    .ifaces
                    .iter()
                    .find(|i| i.socket == src)
                    .expect("a socket of ours")
                    .host;
                world.send(host, src, to, data);
            }
            Route::Relay(_) => {
                let turn = self
                    .turn
                    .as_mut()
                    .expect("relayed route implies a TURN client");
                if turn.send_to(to, &data).is_err() {
                    self.relay_send_errors += 1;
                }
            }
        }
    }

    /// Moves everything the agent and the TURN client want to send into the world, and acts
    /// on their events.
    fn flush(&mut self, world: &mut World, now: Instant) {
        loop {
            let mut progress = false;
            let mut restart = false;
            while let Some(ev) = self.agent.poll_event() {
                progress = true;
                let recently = self
                    .last_restart
                    .is_some_and(|t| now < t + Duration::from_secs(3));
                match &ev {
                    Event::Disconnected if self.auto_restart && !recently => restart = true,
                    Event::MappingChanged { .. }
                        if self.auto_restart && !recently && !self.agent.controlling() =>
                    {
                        restart = true
                    }
                    Event::RelayPermission { peer, .. } => {
                        if let Some(t) = self.turn.as_mut() {
                            t.create_permission(now, *peer);
                        }
                    }
                    Event::Connected(p) | Event::PathChanged { to: p, .. } => {
                        if self.media_next.is_none() {
                            self.media_next = Some(now);
                        }
                        // Media through the relay uses a channel (4 bytes of overhead, not 36).
                        if let (Route::Relay(_), Some(t)) = (p.route, self.turn.as_mut())
                            && t.channel_of(p.remote).is_none()
                        {
                            let _ = t.bind_channel(now, p.remote);
                        }
                    }
                    _ => {}
                }
                self.events.push((world.elapsed(), ev));
            }
            while let Some(t) = self.agent.poll_transmit() {
                progress = true;
                self.agent_sent.push((t.route, t.to));
                self.route_out(world, t.route, t.to, t.data);
            }
            let mut allocated = None;
            if let Some(turn) = self.turn.as_mut() {
                while let Some(ev) = turn.poll_event() {
                    progress = true;
                    match ev {
                        TurnEvent::Allocated { relayed, .. } => allocated = Some(relayed),
                        TurnEvent::Failed {
                            op: voxmesh::turn::Op::Allocate,
                            ..
                        } => self.gathering -= 1,
                        _ => {}
                    }
                }
                while let Some(t) = turn.poll_transmit() {
                    progress = true;
                    let v4 = self.ifaces[0];
                    world.send(v4.host, v4.socket, t.to, t.data);
                }
            }
            if let Some(relayed) = allocated {
                self.relayed = Some(relayed);
                self.gathering -= 1;
                self.add_local(now, LocalCandidate::Relayed(relayed));
            }
            if restart {
                self.restart(now);
                progress = true;
            }
            if self.gathering == 0 && !self.ended && !self.withhold_direct {
                self.ended = true;
                self.agent.end_of_local_candidates(now);
                self.outbox.push(Signal::End);
                progress = true;
            }
            if !progress {
                break;
            }
        }
    }

    fn first_connected(&self) -> Option<Duration> {
        self.events
            .iter()
            .find(|(_, e)| matches!(e, Event::Connected(_)))
            .map(|(t, _)| *t)
    }

    /// When the selected path last changed.
    fn last_change(&self) -> Option<Duration> {
        self.events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Connected(_) | Event::PathChanged { .. }))
            .map(|(t, _)| *t)
            .next_back()
    }

    fn path_changes(&self) -> Vec<(Duration, PathInfo, PathInfo, ChangeReason)> {
        self.events
            .iter()
            .filter_map(|(t, e)| match e {
                Event::PathChanged { from, to, reason } => Some((*t, *from, *to, *reason)),
                _ => None,
            })
            .collect()
    }

    /// Every check and answer went to a signalled candidate or to an address that sent an
    /// authenticated message first.
    fn assert_no_stray_sends(&self) {
        for (route, to) in &self.agent_sent {
            assert!(
                self.signalled.contains(to) || self.authenticated.contains(to),
                "peer {} sent to {to} via {route:?}: neither signalled nor authenticated",
                self.index
            );
        }
    }
}

// ---------------------------------------------------------------------------- a call

struct CallSpec {
    a: Kind,
    b: Kind,
    link: Path,
    seed: u64,
    timing: Timing,
    /// Hold signalling until both clients have gathered, then deliver everything at once (for
    /// measuring setup from "both sides have candidates"); otherwise trickle.
    hold: bool,
    signal_delay: Duration,
    relay: bool,
    dual_stack: bool,
    /// IPv6 only: each client has one IPv6 address behind a stateful firewall, and talks to
    /// the supernode and the relay over IPv6 (the relay allocates IPv6 addresses).
    ipv6_only: bool,
}

impl CallSpec {
    fn new(a: Kind, b: Kind, seed: u64) -> CallSpec {
        CallSpec {
            a,
            b,
            link: Path::clean(ms(25)),
            seed,
            timing: Timing::default(),
            hold: true,
            signal_delay: Duration::ZERO,
            relay: true,
            dual_stack: false,
            ipv6_only: false,
        }
    }
}

struct Call {
    world: World,
    peers: [Peer; 2],
    signals: Vec<(Instant, usize, Signal)>,
    hold: bool,
    signal_delay: Duration,
    /// When the held signals were released: both sides have all candidates.
    t0: Option<Duration>,
}

fn host_of(world: &mut World, i: usize, kind: Kind, link: Path) -> Iface {
    let wan = IpAddr::V4(Ipv4Addr::new(203, 0, 113, i as u8 + 1));
    let lan = if kind == Kind::Public {
        wan
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 0, i as u8 + 1, 2))
    };
    let host = world.add_host(kind.nat(), lan, wan, link);
    Iface {
        host,
        socket: SocketAddr::new(lan, PORT),
    }
}

impl Call {
    fn new(spec: &CallSpec) -> Call {
        let mut world = World::new(spec.seed);
        world.add_stun(if spec.ipv6_only { stun6() } else { STUN });
        let mut creds = TurnCredentials::new("voxmesh.test");
        creds.add_user("peer0", "secret");
        creds.add_user("peer1", "secret");
        let listen = if spec.ipv6_only { turn6() } else { TURN };
        world.add_relay(listen, vec![RELAY_IP, relay_ip6()], creds);
        let kinds = [spec.a, spec.b];
        let peers = [0, 1].map(|i| {
            let v6 = |world: &mut World| {
                // IPv6: no translation, a stateful firewall (the common case, DESIGN §8).
                let v6: IpAddr = format!("2001:db8:{}::2", i + 1).parse().unwrap();
                let host = world.add_host(NatConfig::firewall(), v6, v6, spec.link);
                Iface {
                    host,
                    socket: SocketAddr::new(v6, PORT),
                }
            };
            let mut ifaces = Vec::new();
            if spec.ipv6_only {
                ifaces.push(v6(&mut world));
            } else {
                ifaces.push(host_of(&mut world, i, kinds[i], spec.link));
                if spec.dual_stack {
                    ifaces.push(v6(&mut world));
                }
            }
            let mut p = Peer::new(
                i,
                ifaces,
                i == 0,
                spec.timing.clone(),
                spec.seed * 2 + i as u64,
            );
            p.use_relay = spec.relay;
            p
        });
        Call {
            world,
            peers,
            signals: Vec::new(),
            hold: spec.hold,
            signal_delay: spec.signal_delay,
            t0: None,
        }
    }

    fn now(&self) -> Instant {
        self.world.instant()
    }

    fn start(&mut self) {
        let now = self.now();
        for p in &mut self.peers {
            p.gather(now);
        }
    }

    /// Moves outputs into the world and signalling.
    fn flush(&mut self) {
        let now = self.now();
        for i in 0..2 {
            self.peers[i].flush(&mut self.world, now);
        }
        if self.hold && self.t0.is_none() && !(self.peers[0].gathered() && self.peers[1].gathered())
        {
            return;
        }
        if self.hold && self.t0.is_none() {
            self.t0 = Some(self.world.elapsed());
        }
        for i in 0..2 {
            for s in std::mem::take(&mut self.peers[i].outbox) {
                self.signals.push((now + self.signal_delay, 1 - i, s));
            }
        }
    }

    /// Runs until `stop` holds or `limit` of simulated time has passed.
    fn run_until(&mut self, limit: Duration, mut stop: impl FnMut(&Call) -> bool) -> bool {
        let end = self.world.elapsed() + limit;
        let mut spins = 0u32;
        loop {
            self.flush();
            if stop(self) {
                return true;
            }
            let next = [
                self.world.next_event(),
                self.peers[0].poll_timeout(),
                self.peers[1].poll_timeout(),
                self.signals.iter().map(|s| s.0).min(),
            ]
            .into_iter()
            .flatten()
            .min()
            .expect("something is always scheduled (media, consent)");
            let next = next.max(self.now());
            if self.world.since_start(next) > end {
                return false;
            }
            if next == self.now() {
                spins += 1;
                assert!(spins < 100_000, "busy loop at {:?}", self.world.elapsed());
            } else {
                spins = 0;
            }
            self.world.advance_to(next);
            let now = self.now();
            let due: Vec<(usize, Signal)> = {
                let (due, later): (Vec<_>, Vec<_>) =
                    self.signals.drain(..).partition(|(t, _, _)| *t <= now);
                self.signals = later;
                due.into_iter().map(|(_, to, s)| (to, s)).collect()
            };
            for (to, s) in due {
                self.peers[to].on_signal(now, s);
            }
            let elapsed = self.world.elapsed();
            for d in self.world.deliver_due() {
                let p = self
                    .peers
                    .iter_mut()
                    .find(|p| p.ifaces.iter().any(|i| i.host == d.host))
                    .expect("a host of ours");
                p.on_datagram(now, elapsed, d);
            }
            for p in &mut self.peers {
                p.on_timeout(&mut self.world, now);
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        self.run_until(d, |_| false);
    }

    fn both_connected(&self) -> bool {
        self.peers.iter().all(|p| p.agent.selected().is_some())
    }

    fn selected(&self) -> [PathInfo; 2] {
        [0, 1].map(|i| {
            self.peers[i]
                .agent
                .selected()
                .unwrap_or_else(|| panic!("peer {i} has no path"))
        })
    }

    /// Both ends use the same path: each one's remote is the other's mapped address.
    fn assert_same_path(&self) {
        let [a, b] = self.selected();
        assert_eq!(a.relayed, b.relayed, "{a:?} vs {b:?}");
        let local = |p: &PathInfo| match p.route {
            Route::Relay(r) => r,
            Route::Direct(_) => p.mapped.expect("a valid path has a mapped address"),
        };
        assert_eq!(
            a.remote,
            local(&b),
            "a sends where b is seen: {a:?} vs {b:?}"
        );
        assert_eq!(
            b.remote,
            local(&a),
            "b sends where a is seen: {a:?} vs {b:?}"
        );
    }

    /// Prints every event (set ICE_TRACE to see them for the matrix).
    fn trace(&self) {
        for p in &self.peers {
            println!("peer {} ({:?})", p.index, p.agent.counters());
            for (t, e) in &p.events {
                println!("  {:>6} ms {e:?}", t.as_millis());
            }
        }
    }

    /// Media flowed both ways in the last `window`.
    fn assert_media_flows(&self, window: Duration) {
        let since = self.world.elapsed().saturating_sub(window);
        for p in &self.peers {
            let recent = p.media_recv.iter().filter(|(t, _)| *t >= since).count();
            // 50 packets/s; allow for loss and a path change.
            let want = (window.as_millis() / 20) as usize / 2;
            assert!(
                recent >= want,
                "peer {} received {recent} media packets in the last {window:?}, want >= {want}",
                p.index
            );
        }
    }
}

/// One call of the matrix: setup figures and the final path.
struct Outcome {
    a: Kind,
    b: Kind,
    relayed: bool,
    /// The caller's view of the final path: its end and the callee's end.
    kinds: (CandidateKind, CandidateKind),
    /// From both sides having all candidates to both having a selected path.
    connected: Duration,
    /// ... to the last path change (the final path).
    settled: Duration,
    changes: usize,
}

fn run_matrix_call(a: Kind, b: Kind, link: Path, seed: u64) -> Outcome {
    let mut call = Call::new(&CallSpec {
        link,
        ..CallSpec::new(a, b, seed)
    });
    call.start();
    let ok = call.run_until(Duration::from_secs(20), |c| c.both_connected());
    assert!(ok, "{a:?} <-> {b:?} never connected (seed {seed})");
    // Let it settle: a relayed start may still move to a direct pair, and consent runs.
    call.run_for(Duration::from_secs(8));
    call.assert_same_path();
    call.assert_media_flows(Duration::from_secs(2));
    for p in &call.peers {
        p.assert_no_stray_sends();
        assert!(
            p.refused.is_empty(),
            "{a:?} <-> {b:?}: peer {} refused {:?}",
            p.index,
            p.refused
        );
    }
    if std::env::var_os("ICE_TRACE").is_some() {
        call.trace();
    }
    let t0 = call.t0.expect("signalling released");
    let connected = call
        .peers
        .iter()
        .map(|p| p.first_connected().unwrap())
        .max()
        .unwrap();
    let settled = call
        .peers
        .iter()
        .map(|p| p.last_change().unwrap())
        .max()
        .unwrap();
    let [pa, _] = call.selected();
    Outcome {
        a,
        b,
        relayed: pa.relayed,
        kinds: (pa.local_kind, pa.remote_kind),
        connected: connected - t0,
        settled: settled - t0,
        changes: call.peers.iter().map(|p| p.path_changes().len()).sum(),
    }
}

fn print_table(title: &str, rows: &[Outcome]) {
    println!("\n{title}");
    println!(
        "{:<11} {:<11} {:<8} {:<13} {:>13} {:>11} {:>8}",
        "caller", "callee", "path", "types", "connected ms", "settled ms", "changes"
    );
    for o in rows {
        println!(
            "{:<11} {:<11} {:<8} {:<13} {:>13} {:>11} {:>8}",
            o.a.name(),
            o.b.name(),
            if o.relayed { "relayed" } else { "direct" },
            format!("{}-{}", o.kinds.0.name(), o.kinds.1.name()),
            o.connected.as_millis(),
            o.settled.as_millis(),
            o.changes
        );
    }
}

fn check_matrix(link: Path, seed: u64, title: &str) {
    let mut rows = Vec::new();
    for (i, a) in KINDS.into_iter().enumerate() {
        for (j, b) in KINDS.into_iter().enumerate() {
            let o = run_matrix_call(a, b, link, seed + (i * 5 + j) as u64);
            assert_eq!(
                o.relayed,
                needs_relay(a, b),
                "{a:?} <-> {b:?}: relayed {} (seed {seed})",
                o.relayed
            );
            rows.push(o);
        }
    }
    print_table(title, &rows);
}

// ---------------------------------------------------------------------------- tests

#[test]
fn every_nat_pair_connects_on_the_expected_path() {
    check_matrix(
        Path::clean(ms(25)),
        100,
        "NAT matrix, 25 ms one way per NAT link (100 ms RTT between NATed peers), no loss",
    );
}

#[test]
fn every_nat_pair_connects_with_loss_on_the_same_path() {
    let lossy = Path::symmetric(ms(25), Duration::ZERO, 0.05);
    for seed in [1000, 2000, 3000] {
        check_matrix(
            lossy,
            seed,
            &format!("NAT matrix, 25 ms one way and 5 % loss each way per NAT link, seed {seed}"),
        );
    }
}

/// Starts a call per `spec` and runs it until both ends have a path (and `settle` more).
fn connected_call(spec: &CallSpec, settle: Duration) -> Call {
    let mut call = Call::new(spec);
    call.start();
    assert!(
        call.run_until(Duration::from_secs(20), |c| c.both_connected()),
        "{:?} <-> {:?} never connected",
        spec.a,
        spec.b
    );
    call.run_for(settle);
    call
}

/// Time of the first event at peer `p`, at or after `since`, that `f` matches.
fn first_event(
    call: &Call,
    p: usize,
    since: Duration,
    f: impl Fn(&Event) -> bool,
) -> Option<Duration> {
    call.peers[p]
        .events
        .iter()
        .find(|(t, e)| *t >= since && f(e))
        .map(|(t, _)| *t)
}

#[test]
fn relayed_call_moves_to_direct_when_direct_candidates_appear() {
    // The callee hides its addresses from a caller who is not a contact: only its relayed
    // candidate is used until it accepts (at 2 s), then its direct candidates join.
    let spec = CallSpec::new(Kind::FullCone, Kind::PortRestricted, 7);
    let mut call = Call::new(&spec);
    call.peers[1].withhold_direct = true;
    call.start();
    assert!(call.run_until(Duration::from_secs(5), |c| c.both_connected()));
    call.run_until(Duration::from_secs(2), |c| {
        c.world.elapsed() >= Duration::from_secs(2)
    });
    call.assert_same_path();
    let [a, b] = call.selected();
    assert!(
        a.relayed && b.relayed,
        "before accept the path is relayed: {a:?}"
    );
    assert!(
        b.route.is_relay(),
        "the callee sends through its relay only: {b:?}"
    );
    // Nothing of the callee's own addresses reached the caller: every check it sent went
    // through the relay.
    assert!(call.peers[1].agent_sent.iter().all(|(r, _)| r.is_relay()));
    let callee_wan = call.world.hosts[call.peers[1].ifaces[0].host].nat_wan();
    assert!(
        call.peers[0]
            .authenticated
            .iter()
            .all(|a| a.ip() != callee_wan)
    );
    call.assert_media_flows(Duration::from_secs(1));

    let accept = call.world.elapsed();
    let now = call.now();
    call.peers[1].reveal(now);
    call.run_for(Duration::from_secs(3));
    call.assert_same_path();
    let [a, b] = call.selected();
    assert!(
        !a.relayed && !b.relayed,
        "after accept the path is direct: {a:?} {b:?}"
    );
    for p in 0..2 {
        let changes = call.peers[p].path_changes();
        let (t, from, to, reason) = *changes.last().expect("a path change");
        assert!(from.relayed && !to.relayed, "peer {p}: {from:?} -> {to:?}");
        let expect = if p == 0 {
            ChangeReason::Better
        } else {
            ChangeReason::PeerNominated
        };
        assert_eq!(reason, expect);
        // Candidates arrive at once (no signalling delay here); one check round trip of
        // 100 ms plus pacing moves the call.
        assert!(
            t - accept <= ms(300),
            "peer {p} moved after {:?}",
            t - accept
        );
        println!(
            "peer {p}: relayed -> direct {} ms after accept",
            (t - accept).as_millis()
        );
    }
    call.assert_media_flows(Duration::from_secs(1));
    for p in &call.peers {
        p.assert_no_stray_sends();
    }
}

#[test]
fn consent_loss_is_detected_within_the_configured_timeout() {
    for timing in [Timing::default(), Timing::fast_consent()] {
        // A relayed-only call; the relay dies.
        let spec = CallSpec {
            timing: timing.clone(),
            ..CallSpec::new(Kind::Symmetric, Kind::Symmetric, 11)
        };
        let mut call = connected_call(&spec, Duration::from_secs(3));
        assert!(call.selected()[0].relayed);
        let died = call.world.elapsed();
        call.world.relay.as_mut().unwrap().dead_from = Some(died);
        call.run_for(timing.consent_timeout * 2);
        for p in 0..2 {
            let lost = first_event(&call, p, died, |e| {
                matches!(e, Event::ConsentLost { selected: true, .. })
            })
            .unwrap_or_else(|| panic!("peer {p}: no consent loss"));
            let after = lost - died;
            // The last answer came at most one interval (+ jitter) before the relay died;
            // consent is lost `consent_timeout` after it.
            let earliest = timing
                .consent_timeout
                .saturating_sub(timing.consent_interval.mul_f64(1.0 + timing.consent_jitter));
            assert!(
                after >= earliest && after <= timing.consent_timeout,
                "peer {p}: consent lost {after:?} after the relay died (timeout {:?})",
                timing.consent_timeout
            );
            assert!(
                first_event(&call, p, died, |e| matches!(e, Event::Disconnected)).is_some(),
                "peer {p}: nothing else works, so the call is disconnected"
            );
            println!(
                "consent timeout {:?}: peer {p} noticed the dead relay after {} ms",
                timing.consent_timeout,
                after.as_millis()
            );
        }
    }
}

#[test]
fn a_dead_direct_path_fails_over_to_the_relay_within_a_second() {
    let spec = CallSpec {
        timing: Timing::fast_consent(),
        ..CallSpec::new(Kind::FullCone, Kind::PortRestricted, 12)
    };
    let mut call = connected_call(&spec, Duration::from_secs(3));
    assert!(!call.selected()[0].relayed);
    for p in &call.peers {
        let standby = p.agent.standby().expect("a standby path");
        assert!(standby.relayed, "the standby is the relay: {standby:?}");
    }
    // The direct path breaks between the two sites; both still reach the relay.
    let wans = [0, 1].map(|i| call.world.hosts[call.peers[i].ifaces[0].host].nat_wan());
    call.world.blocked.push((wans[0], wans[1]));
    let broke = call.world.elapsed();
    call.run_for(Duration::from_secs(3));
    for p in 0..2 {
        let (t, from, to, reason) = call.peers[p].path_changes()[0];
        assert!(!from.relayed && to.relayed, "peer {p}: {from:?} -> {to:?}");
        // Whoever notices first moves; the controlled side may be moved by the nomination.
        let ok = [ChangeReason::ConsentLost, ChangeReason::PeerNominated];
        assert!(ok.contains(&reason), "peer {p}: {reason:?}");
        assert!(
            t - broke <= Duration::from_secs(1),
            "peer {p}: {:?}",
            t - broke
        );
        println!(
            "peer {p}: moved to the relay {} ms after the direct path broke",
            (t - broke).as_millis()
        );
    }
    call.assert_same_path();
    call.assert_media_flows(Duration::from_secs(1));
}

#[test]
fn controlling_side_nat_rebinding_recovers_in_band() {
    // Full cones: the peer accepts the new mapping. The controlling side sees its mapped
    // address change and renominates; no signalling.
    let spec = CallSpec {
        timing: Timing::fast_consent(),
        ..CallSpec::new(Kind::FullCone, Kind::FullCone, 13)
    };
    let mut call = connected_call(&spec, Duration::from_secs(2));
    let before = call.selected();
    let host = call.peers[0].ifaces[0].host;
    call.world.rebind(host);
    let t = call.world.elapsed();
    call.run_for(Duration::from_secs(3));
    let changed = first_event(&call, 0, t, |e| matches!(e, Event::MappingChanged { .. }))
        .expect("mapping change noticed");
    let moved = first_event(&call, 1, t, |e| matches!(e, Event::PathChanged { .. }))
        .expect("the peer moved to the new mapping");
    call.assert_same_path();
    let after = call.selected();
    assert_ne!(
        after[1].remote, before[1].remote,
        "the peer sends to the new mapping"
    );
    assert!(!after[0].relayed);
    assert_eq!(call.peers[0].restarts + call.peers[1].restarts, 0);
    call.assert_media_flows(Duration::from_secs(1));
    println!(
        "rebinding noticed after {} ms, peer moved after {} ms",
        (changed - t).as_millis(),
        (moved - t).as_millis()
    );
    assert!(moved - t <= Duration::from_secs(1));
}

#[test]
fn controlled_side_nat_rebinding_recovers_in_band() {
    let spec = CallSpec {
        timing: Timing::fast_consent(),
        ..CallSpec::new(Kind::FullCone, Kind::FullCone, 14)
    };
    let mut call = connected_call(&spec, Duration::from_secs(2));
    let before = call.selected();
    let host = call.peers[1].ifaces[0].host;
    call.world.rebind(host);
    let t = call.world.elapsed();
    call.run_for(Duration::from_secs(3));
    let moved = first_event(&call, 0, t, |e| matches!(e, Event::PathChanged { .. }))
        .expect("the controlling side moved to the new mapping");
    call.assert_same_path();
    assert_ne!(call.selected()[0].remote, before[0].remote);
    call.assert_media_flows(Duration::from_secs(1));
    println!(
        "controlling side moved to the rebound peer after {} ms",
        (moved - t).as_millis()
    );
    assert!(moved - t <= Duration::from_secs(1), "{:?}", moved - t);
}

#[test]
fn ice_restart_recovers_after_the_nat_mapping_changes() {
    // Port-restricted cones filter the new mapping, so the old path just dies on both sides,
    // and so do the relayed paths of the rebound side (its TURN allocation was bound to the old
    // mapping). The call core restarts ICE; checks punch new holes.
    let spec = CallSpec {
        timing: Timing::fast_consent(),
        signal_delay: ms(50),
        ..CallSpec::new(Kind::PortRestricted, Kind::PortRestricted, 15)
    };
    let mut call = connected_call(&spec, Duration::from_secs(2));
    for p in &mut call.peers {
        p.auto_restart = true;
    }
    let before = call.selected();
    assert!(!before[0].relayed);
    let host = call.peers[1].ifaces[0].host;
    call.world.rebind(host);
    let t = call.world.elapsed();
    call.run_for(Duration::from_secs(6));
    assert!(
        call.peers[0].restarts + call.peers[1].restarts >= 1,
        "ICE restarted"
    );
    call.assert_same_path();
    let after = call.selected();
    assert!(!after[0].relayed, "direct again: {:?}", after[0]);
    assert_ne!(after[0].remote, before[0].remote, "to the new mapping");
    let recovered = [0, 1].map(|p| {
        call.peers[p]
            .events
            .iter()
            .filter(|(at, e)| {
                *at > t && matches!(e, Event::Connected(_) | Event::PathChanged { .. })
            })
            .map(|(at, _)| *at)
            .next_back()
            .expect("a new path")
    });
    let took = recovered.into_iter().max().unwrap() - t;
    println!("recovered {} ms after the NAT rebinding", took.as_millis());
    assert!(took <= Duration::from_secs(2), "recovery took {took:?}");
    call.assert_media_flows(Duration::from_secs(2));
    for p in &call.peers {
        p.assert_no_stray_sends();
    }
}

#[test]
fn media_can_stay_silent_for_longer_than_the_nat_lifetime() {
    // Mute for a minute behind NATs that forget bindings after 20 s idle: consent checks
    // (every ~5 s) keep the bindings, and media resumes at once on the same path.
    let spec = CallSpec::new(Kind::PortRestricted, Kind::Restricted, 16);
    let mut call = Call::new(&spec);
    for i in 0..2 {
        let host = call.peers[i].ifaces[0].host;
        let wan = call.world.hosts[host].nat_wan();
        let kind = [spec.a, spec.b][i];
        call.world.hosts[host].nat =
            Nat::with_wan(kind.nat().lifetime(Duration::from_secs(20)), wan);
    }
    call.start();
    assert!(call.run_until(Duration::from_secs(5), |c| c.both_connected()));
    call.run_for(Duration::from_secs(1));
    let before = call.selected();
    for p in &mut call.peers {
        p.muted = true;
    }
    let muted = call.world.elapsed();
    call.run_for(Duration::from_secs(60));
    for p in &mut call.peers {
        p.muted = false;
    }
    call.run_for(Duration::from_secs(1));
    assert_eq!(
        call.selected(),
        before,
        "same path after a minute of silence"
    );
    for p in &call.peers {
        assert!(
            !p.events.iter().any(|(t, e)| *t > muted
                && matches!(
                    e,
                    Event::PathChanged { .. } | Event::ConsentLost { .. } | Event::Disconnected
                )),
            "peer {}: {:?}",
            p.index,
            p.events
        );
        assert!(p.agent.counters().consent_checks >= 10);
    }
    call.assert_media_flows(Duration::from_secs(1));
}

/// A check request as an attacker who saw the ufrags (not the password) would forge it.
fn forged_request(username: &str, key: Option<&str>, good_fingerprint: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b = MessageBuilder::new(
        &mut out,
        method::BINDING,
        Class::Request,
        TransactionId([0x5a; 12]),
    );
    b.attr(attr::USERNAME, username.as_bytes());
    b.u32_attr(attr::PRIORITY, 0x6e00_00ff);
    b.attr(attr::ICE_CONTROLLED, &7u64.to_be_bytes());
    b.attr(attr::USE_CANDIDATE, &[]);
    if let Some(k) = key {
        b.message_integrity(k.as_bytes());
    }
    b.fingerprint();
    if !good_fingerprint {
        let n = out.len();
        out[n - 1] ^= 0xff;
    }
    out
}

#[test]
fn forged_unsigned_and_wrongly_signed_messages_are_refused_and_never_answered() {
    let spec = CallSpec::new(Kind::Public, Kind::FullCone, 17);
    let mut call = connected_call(&spec, Duration::from_secs(1));
    let before = call.selected();
    let victim = call.peers[0].ifaces[0].socket;
    let ufrag_a = call.peers[0].agent.local_credentials().ufrag.clone();
    let ufrag_b = call.peers[1].agent.local_credentials().ufrag.clone();
    let user = format!("{ufrag_a}:{ufrag_b}");
    let spoofed: SocketAddr = "198.51.100.66:9999".parse().unwrap();
    let attacks: Vec<(Vec<u8>, Refusal)> = vec![
        (
            forged_request(&user, Some("not-the-password-at-all"), true),
            Refusal::BadIntegrity,
        ),
        (forged_request(&user, None, true), Refusal::Unsigned),
        (
            forged_request(&user, Some("x"), false),
            Refusal::BadFingerprint,
        ),
        (
            forged_request("nobody:else", Some("x"), true),
            Refusal::UnknownUfrag,
        ),
        (
            forged_request("no-colon", Some("x"), true),
            Refusal::BadUsername,
        ),
        (
            {
                // A "success" answer to a transaction nobody sent.
                let mut out = Vec::new();
                let mut b = MessageBuilder::new(
                    &mut out,
                    method::BINDING,
                    Class::Success,
                    TransactionId([9; 12]),
                );
                b.xor_address(attr::XOR_MAPPED_ADDRESS, spoofed);
                b.message_integrity(b"guess");
                b.fingerprint();
                out
            },
            Refusal::UnknownTransaction,
        ),
    ];
    let now = call.now();
    let _ = now;
    for (bytes, _) in &attacks {
        // From a spoofed address, and from the real peer's address (an on-path forger).
        call.world.inject(spoofed, victim, bytes.clone());
        call.world.inject(before[0].remote, victim, bytes.clone());
    }
    call.run_for(Duration::from_secs(2));
    let refused = &call.peers[0].agent.counters().refused;
    for (_, why) in &attacks {
        assert_eq!(refused.get(why), Some(&2), "{why:?}: {refused:?}");
    }
    assert_eq!(call.peers[0].refused.len(), 2 * attacks.len());
    assert!(
        !call
            .world
            .sent
            .iter()
            .any(|s| s.host.is_some() && s.dst == spoofed),
        "nothing was ever sent to the spoofed address"
    );
    assert_eq!(call.selected(), before, "the call did not move");
    call.peers[0].assert_no_stray_sends();
}

#[test]
fn dual_stack_prefers_ipv6_and_connects_directly() {
    let spec = CallSpec {
        dual_stack: true,
        ..CallSpec::new(Kind::PortRestricted, Kind::Symmetric, 18)
    };
    let call = connected_call(&spec, Duration::from_secs(3));
    call.assert_same_path();
    let [a, b] = call.selected();
    assert!(a.remote.is_ipv6() && b.remote.is_ipv6(), "{a:?} {b:?}");
    assert!(
        !a.relayed && a.local_kind == CandidateKind::Host && a.remote_kind == CandidateKind::Host
    );
    call.assert_media_flows(Duration::from_secs(1));
    // The IPv4 candidates were checked too (interleaved), just ranked lower.
    assert!(call.peers[0].agent_sent.iter().any(|(_, to)| to.is_ipv4()));
}

#[test]
fn trickled_candidates_with_signalling_delay_connect() {
    for (a, b) in [
        (Kind::PortRestricted, Kind::PortRestricted),
        (Kind::Symmetric, Kind::Symmetric),
    ] {
        let spec = CallSpec {
            hold: false,
            signal_delay: ms(150),
            ..CallSpec::new(a, b, 19)
        };
        let call = connected_call(&spec, Duration::from_secs(3));
        call.assert_same_path();
        assert_eq!(call.selected()[0].relayed, needs_relay(a, b));
        let t = call
            .peers
            .iter()
            .map(|p| p.first_connected().unwrap())
            .max()
            .unwrap();
        println!(
            "{a:?} <-> {b:?} trickled, 150 ms signalling: connected {} ms after dialling",
            t.as_millis()
        );
    }
}

#[test]
fn a_role_conflict_resolves() {
    let spec = CallSpec::new(Kind::FullCone, Kind::Restricted, 20);
    let mut call = Call::new(&spec);
    // Both believe they are controlling (e.g. glare in signalling).
    call.peers[1] = {
        let ifaces = call.peers[1].ifaces.clone();
        Peer::new(1, ifaces, true, Timing::default(), 99)
    };
    call.start();
    assert!(call.run_until(Duration::from_secs(5), |c| c.both_connected()));
    call.run_for(Duration::from_secs(2));
    call.assert_same_path();
    let switched: Vec<bool> = call
        .peers
        .iter()
        .map(|p| {
            p.events
                .iter()
                .any(|(_, e)| matches!(e, Event::RoleChanged { .. }))
        })
        .collect();
    assert_eq!(
        switched.iter().filter(|s| **s).count(),
        1,
        "exactly one side gave way"
    );
    assert_ne!(
        call.peers[0].agent.controlling(),
        call.peers[1].agent.controlling()
    );
    call.assert_media_flows(Duration::from_secs(1));
}

#[test]
fn a_seed_replays_the_same_run() {
    // Without the relay: the TURN client draws its transaction IDs from the OS and keeps its
    // transactions in a HashMap, so two of its retransmissions due at once may leave in either
    // order and draw the path's loss in another order. The ICE agent itself is fully seeded.
    let run = |seed| {
        let lossy = Path::symmetric(ms(25), ms(5), 0.05);
        let spec = CallSpec {
            link: lossy,
            relay: false,
            ..CallSpec::new(Kind::PortRestricted, Kind::Restricted, seed)
        };
        let call = connected_call(&spec, Duration::from_secs(3));
        let events: Vec<String> = call
            .peers
            .iter()
            .flat_map(|p| p.events.iter().map(|e| format!("{e:?}")))
            .collect();
        (events, call.world.sent.clone())
    };
    let (e1, s1) = run(21);
    let (e2, s2) = run(21);
    assert_eq!(e1, e2);
    assert_eq!(s1.len(), s2.len());
    let ice =
        |s: &[voxlab::sim::Sent]| -> Vec<Vec<u8>> { s.iter().map(|x| x.data.clone()).collect() };
    assert_eq!(ice(&s1), ice(&s2));
    let (_, s3) = run(22);
    assert_ne!(ice(&s1), ice(&s3), "another seed, another run");
}

#[test]
fn without_a_relay_symmetric_nats_fail_once_candidates_are_complete() {
    let spec = CallSpec {
        relay: false,
        ..CallSpec::new(Kind::Symmetric, Kind::Symmetric, 23)
    };
    let mut call = Call::new(&spec);
    call.start();
    let failed = |c: &Call| {
        c.peers
            .iter()
            .all(|p| p.events.iter().any(|(_, e)| matches!(e, Event::Failed)))
    };
    assert!(
        call.run_until(Duration::from_secs(30), failed),
        "both report failure"
    );
    let t0 = call.t0.unwrap();
    for p in &call.peers {
        assert!(p.agent.selected().is_none());
        assert!(
            !p.events
                .iter()
                .any(|(_, e)| matches!(e, Event::Connected(_)))
        );
        let at = first_event(&call, p.index, Duration::ZERO, |e| {
            matches!(e, Event::Failed)
        })
        .unwrap();
        // The last pair's check gives up `check_lifetime`-ish after it started; every pair
        // started within the first second.
        let took = at - t0;
        assert!(
            took <= Duration::from_secs(8),
            "peer {}: failed after {took:?}",
            p.index
        );
        println!(
            "peer {}: no path, reported after {} ms",
            p.index,
            took.as_millis()
        );
        p.assert_no_stray_sends();
    }
}

#[test]
fn ipv6_only_clients_connect_directly_or_through_an_ipv6_relay() {
    let spec = CallSpec {
        ipv6_only: true,
        ..CallSpec::new(Kind::Public, Kind::Public, 24)
    };
    let call = connected_call(&spec, Duration::from_secs(2));
    call.assert_same_path();
    let [a, _] = call.selected();
    assert!(a.remote.is_ipv6() && !a.relayed, "firewalls punched: {a:?}");

    // The direct IPv6 path is broken between the two sites: the relay carries the call.
    let mut call = Call::new(&spec);
    let wans = [0, 1].map(|i| call.world.hosts[call.peers[i].ifaces[0].host].nat_wan());
    call.world.blocked.push((wans[0], wans[1]));
    call.start();
    assert!(call.run_until(Duration::from_secs(10), |c| c.both_connected()));
    call.run_for(Duration::from_secs(2));
    call.assert_same_path();
    let [a, b] = call.selected();
    assert!(a.relayed && b.relayed, "{a:?} {b:?}");
    let relayed = call
        .peers
        .iter()
        .filter_map(|p| p.relayed)
        .collect::<Vec<_>>();
    assert_eq!(relayed.len(), 2);
    assert!(
        relayed.iter().all(|r| r.is_ipv6()),
        "IPv6 allocations: {relayed:?}"
    );
    call.assert_media_flows(Duration::from_secs(1));
}
