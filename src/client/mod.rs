//! The client side of the directory: stay registered through a supernode, keep a warm standby
//! with a second one, watch presence, look users up, claim a name, route messages. Sans-IO over
//! a [`crate::session::Endpoint`]; `answer` and `dial` drive it (see [`crate::net::drivers::client`]).
//!
//! Failover: the agent registers through its primary supernode and opens a standby session with
//! another (picked by rendezvous hashing over the live members, so one supernode's clients spread
//! their standbys over the mesh), telling each about the other. When SWIM declares the primary
//! dead, the standby tells us ([`Message::PrimaryLost`]); when it declares the standby dead, the
//! primary does ([`Message::StandbyLost`]); both notices are requests, retransmitted until we
//! acknowledge them or the session dies. The agent also notices by itself when a session closes
//! (keepalives unanswered, TCP stream gone) or a request fails. On losing the primary it
//! registers through the standby (already connected: one round trip) if the standby is still
//! plausibly alive (not demoted, and listed by the mesh), else walks its host cache.
//!
//! A supernode that fails us in any way (session closed, handshake failed, registration refused
//! or unanswered, the mesh says it is down) is *demoted*: it is not picked again, as primary or
//! standby, while any other candidate is left, and is forgiven once it answers a handshake.
//! Nothing latches: every loss of the primary starts a new attempt, and when no supernode is
//! connected a retry timer is always armed (see [`Agent::is_recovering`]).
//!
//! UDP-blocked networks: beside a handshake over UDP the agent has the driver open an empty TCP
//! connection to the same supernode; once it is up (a round trip, which UDP's answer needs too)
//! UDP gets half that again ([`PRECONNECT_MARGIN`] at least, [`UDP_HEAD_START`] at most in all),
//! then a second session over TCP races it (its frames carry `Transmit::socket` =
//! [`crate::transmit::STREAM`]; the driver owns the stream); the first to complete becomes the
//! primary and the other is closed. Later sessions to a supernode TCP won for start on TCP.

pub mod relay;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::identity::{
    Identity, NameClaim, NodeKey, Timestamp, UserId, normalize_name, sign_record,
};
use crate::session::{self, Endpoint, Event, SessionId, TransactionId, Transmit};
use crate::signal::{
    self, Entry, Message, NodeInfo, Pager, PagerStep, Registration, RelayOffer, Request, Response,
    Target,
};

/// Agent settings.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Supernodes to try, in order (bootstrap entries first, then the host cache).
    pub supernodes: Vec<(NodeKey, SocketAddr)>,
    pub session: session::Config,
    /// How often the registration is refreshed inside the session.
    pub refresh_interval: Duration,
    /// Lifetime of the signed registration record.
    pub record_lifetime: Duration,
    /// Stay registered (false for one-shot tools like `dial --lookup`).
    pub register: bool,
    /// Keep a standby session with a second supernode.
    pub standby: bool,
    /// How long a handshake over UDP runs alone before the agent starts a second one to the
    /// same supernode over TCP, racing it ("happy eyeballs", RFC 8305 style): whichever session
    /// completes first is kept and the other is closed. A network that blocks UDP then costs
    /// this head start, not a timeout. See [`UDP_HEAD_START`] for the choice of value.
    pub udp_head_start: Duration,
    /// Supernodes that an earlier run reached only over TCP (UDP lost the race): TCP races
    /// UDP to these almost at once ([`HINTED_HEAD_START`]), not after `udp_head_start`. UDP is still tried, so a network that
    /// lets UDP through again wins back at the cost of one TCP connection; the program keeps
    /// these across runs ([`Agent::transports_learnt`]), which is what makes a fresh `dial` on
    /// a UDP-blocked network ring as fast as TCP allows.
    pub race_tcp_at_once: HashSet<SocketAddr>,
    /// How long a standby handshake may go unanswered before that supernode is demoted and
    /// another is tried. A standby is not urgent, but while we wait on a dead one we have none:
    /// the session layer's own handshake timeout (20 s) is far too patient for that.
    pub standby_patience: Duration,
    /// The first record sequence number, when the program knows the wall clock finer than the
    /// `unix_now` seconds [`Agent::new`] gets (milliseconds since the epoch): two processes of
    /// one identity started within the same second then still sign growing sequence numbers
    /// (a `dial` right after another would otherwise be refused as a replay). `None`: the
    /// seconds times 1000.
    pub first_seq: Option<u64>,
    /// Registration and what waits for it (a fresh `dial`'s invite, lookups, relay offers) ride
    /// in the primary's handshake as early data (0-RTT, [`Endpoint::connect_early`]): a
    /// supernode that takes it answers them a round trip sooner. The first connection is then
    /// made at the first [`Agent::handle_timeout`], not in [`Agent::new`], so that requests
    /// made right after `new` go with it.
    pub early_data: bool,
    /// At most this many member-list pages per fetch ([`Pager::bounded`]), from our own ID on:
    /// about 19 supernodes a page, more than the host cache keeps (64), so a large mesh's
    /// churn costs each client a few pages per change, not the whole list.
    pub member_pages: u32,
}

impl AgentConfig {
    pub fn new(supernodes: Vec<(NodeKey, SocketAddr)>) -> AgentConfig {
        AgentConfig {
            supernodes,
            session: session::Config {
                accept: false,
                ..session::Config::default()
            },
            refresh_interval: Duration::from_secs(10),
            record_lifetime: Duration::from_secs(3600),
            register: true,
            standby: true,
            udp_head_start: UDP_HEAD_START,
            race_tcp_at_once: HashSet::new(),
            standby_patience: Duration::from_secs(3),
            first_seq: None,
            early_data: false,
            member_pages: MEMBER_PAGES,
        }
    }
}

/// Default [`AgentConfig::member_pages`]: six pages, about 110 supernodes (a mesh of some
/// 20,000 clients is listed whole; larger ones in slices).
pub const MEMBER_PAGES: u32 = 6;

/// The head start a UDP handshake gets before TCP races it ([`AgentConfig::udp_head_start`]).
/// 150 ms is more than one round trip to a supernode on nearly any working path (UDP then
/// answers first and no TCP connection is even opened), and far less than the session's first
/// handshake retransmission (500 ms): when the first UDP handshake is lost or blocked, TCP is
/// already under way before UDP would have tried again. RFC 8305 recommends 250 ms for its
/// connection attempt delay and allows 100 ms; a supernode handshake is one round trip and
/// this delay adds directly to a UDP-blocked caller's ringing time, so we sit near the low end.
pub const UDP_HEAD_START: Duration = Duration::from_millis(150);

/// The head start UDP keeps over TCP to a supernode an earlier run reached only over TCP
/// ([`AgentConfig::race_tcp_at_once`]): RFC 8305's floor for its connection attempt delay. It
/// lets UDP win on a network that passes it again (the hint is then dropped) even when both
/// paths are equally fast, and costs a UDP-blocked caller next to nothing.
pub const HINTED_HEAD_START: Duration = Duration::from_millis(10);

/// The least the UDP handshake gets, after the TCP connection beside it came up, before TCP
/// races it (see [`Agent::stream_connected`]): a supernode's handshake costs it a few DH
/// operations, and a loaded one takes longer to answer than the kernel takes to accept.
pub const PRECONNECT_MARGIN: Duration = Duration::from_millis(20);

/// How long a session that lost the race after carrying our early registration stays open
/// (see the agent's `draining`): longer than a supernode retransmits a delivery (the session layer's
/// transaction timeout, 5 s), so what it was delivering there when we moved arrives.
pub const EARLY_DRAIN: Duration = Duration::from_secs(10);

/// After a handshake with every known supernode has failed in a row, the agent waits this long
/// before the next round, doubling per round up to [`RETRY_MAX`]: a wrong bootstrap entry or a
/// broken key file must not make it hammer a supernode with handshakes (each failure reaches the
/// user as an [`AgentEvent::Error`]).
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between rounds of handshakes (see [`RETRY_FIRST`]).
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the agent reports.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentEvent {
    Registered {
        supernode: UserId,
        addr: SocketAddr,
        failover: bool,
    },
    /// A warm standby is ready on `supernode` (it acknowledged knowing our primary), or, with
    /// `None`, the standby was lost (a new one is being set up when a candidate is left).
    Standby {
        supernode: Option<UserId>,
    },
    Presence {
        user: UserId,
        online: bool,
        last_seen: u64,
        stale: bool,
    },
    Lookup {
        target: Target,
        result: Result<Option<Entry>, String>,
    },
    Claimed {
        name: String,
    },
    /// The outcome of [`Agent::route`] number `id`: delivered and acknowledged by the
    /// recipient's client, with the reply it put on the acknowledgement (if any), or failed
    /// ("CODE reason": 404 unknown user, 410 offline, 503/504 no way through for now).
    Routed {
        to: UserId,
        id: u64,
        result: Result<Option<Vec<u8>>, String>,
    },
    /// A payload routed to us. Acknowledge it with [`Agent::acknowledge`] (optionally with a
    /// reply that travels back on the acknowledgement), promptly: the sender waits for it.
    Delivered {
        from: UserId,
        payload: Vec<u8>,
        id: u64,
    },
    Relays(Result<Vec<RelayOffer>, String>),
    /// The answer to [`Agent::roles`] (promotion).
    Roles(Result<signal::RolesAnswer, String>),
    /// Something failed that the agent will retry or cannot fix (a message for the user).
    Error {
        message: String,
    },
}

/// What the agent refused from its supernodes, by reason: messages that do not decode, answers
/// of the wrong kind, entries nobody signed. For logs and tests; nothing else depends on them.
#[derive(Clone, Debug, Default)]
pub struct AgentCounters {
    pub refused: HashMap<String, u64>,
}

impl AgentCounters {
    fn refuse(&mut self, why: &str) {
        *self.refused.entry(why.to_string()).or_default() += 1;
    }
}

#[derive(Clone, Debug)]
enum Pending {
    Register {
        failover: bool,
    },
    /// A fresh record before the registered one expires (same session, same supernode).
    Renew,
    Refresh,
    /// On the standby's session: who our primary is.
    Standby,
    /// On the primary's session: who our standby is.
    StandbyIs,
    /// A page of the member list, for fetch number `n` (answers to an older fetch are ignored).
    Members(u32),
    Watch,
    Lookup(Target),
    Claim(String),
    /// A routed payload: recipient, route number, and the payload itself while our
    /// registration is still on its way (sent right behind it, the request is refused if it
    /// overtakes the registration; it is then sent again once registered).
    Route(UserId, u64, Option<Vec<u8>>),
    Relays,
    Roles,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Link {
    node: UserId,
    addr: SocketAddr,
    session: SessionId,
    /// The session runs on a TCP stream (`Transmit::socket` [`crate::transmit::STREAM`]).
    tcp: bool,
}

/// Deliveries kept waiting for the application's acknowledgement, at most (the oldest is
/// dropped beyond it; its sender then sees no acknowledgement).
const MAX_UNACKED: usize = 256;

/// The directory client.
pub struct Agent {
    identity: Identity,
    config: AgentConfig,
    ep: Endpoint,
    clock: crate::identity::UnixClock,
    primary: Option<Link>,
    standby: Option<Link>,
    /// Host cache: every supernode we know, in preference order.
    known: Vec<(NodeKey, SocketAddr)>,
    /// Index in `known` of the next supernode to try when nothing is connected.
    next_try: usize,
    registered: bool,
    seq: u64,
    watches: HashSet<UserId>,
    /// Our outstanding requests, with the session each went out on: an answer that arrives
    /// after that session stopped being our primary (or standby) is about the past and ignored.
    pending: HashMap<TransactionId, (SessionId, Pending)>,
    /// Requests asked before any session was up, sent once one is.
    queued: VecDeque<(Request, Pending)>,
    next_refresh: Option<Instant>,
    events: VecDeque<AgentEvent>,
    /// The primary was lost since the last registration: the next one is a failover (this only
    /// labels [`AgentEvent::Registered`]; it gates nothing, so it cannot latch).
    after_loss: bool,
    /// Supernodes demoted (see the module doc), with when.
    dead: HashMap<UserId, Instant>,
    /// The mesh's members as our primary last listed them (`None` before the first list): a
    /// standby the mesh no longer lists is not promoted.
    members: Option<HashSet<UserId>>,
    /// Collects the member list page by page, and remembers the digest of the last complete
    /// one (so an unchanged list costs one small answer).
    pager: Pager,
    /// Number of the current member list fetch.
    members_fetch: u32,
    /// Number of the last [`Agent::route`].
    next_route: u64,
    /// Deliveries awaiting [`Agent::acknowledge`]: number -> the request to answer.
    deliveries: HashMap<u64, (SessionId, TransactionId)>,
    next_delivery: u64,
    /// Supernode addresses reached over TCP (UDP went unanswered).
    stream: HashSet<SocketAddr>,
    /// Supernodes whose UDP handshake completed in this run.
    udp_answered: HashSet<SocketAddr>,
    refreshes: u64,
    /// The primary's handshake over UDP, and when TCP starts racing it.
    attempt: Option<(SessionId, Instant)>,
    /// The session to the primary's supernode over TCP racing the primary's UDP handshake: the
    /// first of the two to complete becomes the primary, the other is closed.
    race: Option<Link>,
    /// The TCP connection opened (empty) beside the primary's UDP handshake, and when it was
    /// asked for: its set-up measures the round trip, which brings the race forward (see
    /// [`Agent::stream_connected`]), and a race then starts on a connected stream.
    preconnect: Option<(SocketAddr, Instant)>,
    /// TCP streams the driver should open now, empty.
    open_streams: VecDeque<SocketAddr>,
    /// The primary's session whose handshake carries our registration as early data (its
    /// answer is pending like any request's): no second registration when it comes up.
    early: Option<SessionId>,
    /// Sessions kept open for a while after they stopped being ours, and when they close: a
    /// UDP session whose early registration the supernode may have taken before TCP won the
    /// race (the supernode routes to it what it was already delivering, until our new
    /// registration moves us, and retransmits it there; closed at once, that was lost).
    draining: Vec<(SessionId, Instant)>,
    /// TCP streams the driver should close (a race's loser): no session uses them any more.
    close_streams: VecDeque<SocketAddr>,
    /// The standby session being opened and when we give up on it.
    standby_attempt: Option<(SessionId, Instant)>,
    /// When to sign a fresh registration record: half way through the current one's life, so
    /// homes never hold an expired record of a connected user (they could not re-home it).
    renew_at: Option<Instant>,
    /// Handshakes that failed in a row (reset by a registration), and when to start the next
    /// round after a whole round failed (see [`RETRY_FIRST`]).
    failed_handshakes: u32,
    retry_at: Option<Instant>,
    counters: AgentCounters,
}

impl Agent {
    pub fn new(
        identity: Identity,
        config: AgentConfig,
        now: Instant,
        unix_now: u64,
        seed: [u8; 32],
    ) -> Agent {
        let ep = Endpoint::new(config.session.clone(), &identity, now, seed);
        let known = config.supernodes.clone();
        let pager = Pager::bounded(identity.id(), config.member_pages);
        let mut a = Agent {
            identity,
            ep,
            clock: crate::identity::UnixClock::new(now, unix_now),
            primary: None,
            standby: None,
            known,
            next_try: 0,
            registered: false,
            // Sequence numbers must grow across restarts: start from the clock.
            seq: config.first_seq.unwrap_or(unix_now * 1000),
            watches: HashSet::new(),
            pending: HashMap::new(),
            queued: VecDeque::new(),
            next_refresh: None,
            events: VecDeque::new(),
            after_loss: false,
            dead: HashMap::new(),
            members: None,
            pager,
            members_fetch: 0,
            next_route: 0,
            deliveries: HashMap::new(),
            next_delivery: 0,
            stream: HashSet::new(),
            udp_answered: HashSet::new(),
            refreshes: 0,
            attempt: None,
            race: None,
            preconnect: None,
            open_streams: VecDeque::new(),
            early: None,
            draining: Vec::new(),
            close_streams: VecDeque::new(),
            standby_attempt: None,
            renew_at: None,
            failed_handshakes: 0,
            retry_at: None,
            counters: AgentCounters::default(),
            config,
        };
        // The wall clock, for early data's freshness check (seconds are enough: the
        // supernode allows `session::Config::early_window`).
        a.ep.set_wall_clock(now, unix_now.saturating_mul(1000));
        if a.config.early_data {
            a.retry_at = Some(now);
        } else {
            a.connect_next(now);
        }
        a
    }

    pub fn id(&self) -> UserId {
        self.identity.id()
    }

    /// The supernode we are registered through.
    pub fn primary(&self) -> Option<(UserId, SocketAddr)> {
        self.primary
            .filter(|_| self.registered)
            .map(|l| (l.node, l.addr))
    }

    pub fn standby_node(&self) -> Option<UserId> {
        self.standby.map(|l| l.node)
    }

    pub fn is_registered(&self) -> bool {
        self.registered
    }

    /// Whether the agent is doing something about being offline: registered, or a session to a
    /// supernode is being set up or registered on, or a retry is scheduled. Always true while it
    /// should stay registered (the failover paths keep this invariant; tests check it).
    pub fn is_recovering(&self) -> bool {
        self.registered || self.primary.is_some() || self.retry_at.is_some()
    }

    /// Whether `node` is demoted (believed dead).
    pub fn is_demoted(&self, node: &UserId) -> bool {
        self.dead.contains_key(node)
    }

    /// What the agent refused, by reason.
    pub fn counters(&self) -> &AgentCounters {
        &self.counters
    }

    /// Every supernode we know (for persisting the host cache).
    pub fn known_supernodes(&self) -> &[(NodeKey, SocketAddr)] {
        &self.known
    }

    fn unix(&self, now: Instant) -> u64 {
        self.clock.at(now)
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.ep.poll_transmit()
    }

    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.ep.recycle(buf);
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }

    /// Whether the agent reaches the supernode at `addr` over TCP (UDP did not answer first).
    /// Which transport each frame takes is its `Transmit::socket`; this is for the call
    /// endpoint, which then starts its relay allocation over TCP at once.
    pub fn uses_stream(&self, addr: SocketAddr) -> bool {
        self.stream.contains(&addr)
    }

    /// What this run learnt about reaching supernodes: those only TCP reached (UDP lost a
    /// race or gave up) and those UDP answered. A program keeps the first across runs and
    /// drops the second from what it kept ([`AgentConfig::race_tcp_at_once`]).
    pub fn transports_learnt(&self) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        let tcp = self.stream.iter().copied().collect();
        let udp = self.udp_answered.iter().copied().collect();
        (tcp, udp)
    }

    /// Whether the primary supernode session runs over TCP.
    pub fn on_stream(&self) -> bool {
        self.primary.is_some_and(|p| p.tcp)
    }

    /// A TCP stream no session uses any more (the loser of a race): the driver closes it.
    #[must_use]
    pub fn poll_stream_close(&mut self) -> Option<SocketAddr> {
        self.close_streams.pop_front()
    }

    /// A TCP stream to open now, with nothing to send on it yet (the connection beside a UDP
    /// handshake, see [`Agent::stream_connected`]): the driver connects and reports it.
    #[must_use]
    pub fn poll_stream_open(&mut self) -> Option<SocketAddr> {
        self.open_streams.pop_front()
    }

    /// The driver's TCP connection to `addr` is up. For the connection opened beside the
    /// primary's UDP handshake, its set-up took one round trip, which UDP's handshake needs
    /// too: UDP gets that plus half again (at least [`PRECONNECT_MARGIN`]) before TCP races
    /// it, instead of the whole fixed head start. The head start is a guess for a path we
    /// know nothing about; this is the path's own round trip, measured by the connection
    /// UDP is racing. A UDP-blocked caller then rings about 75 ms sooner in the lab.
    pub fn stream_connected(&mut self, now: Instant, addr: SocketAddr) {
        let Some((at, asked)) = self.preconnect else {
            return;
        };
        if at != addr || self.race.is_some() {
            return;
        }
        if let Some((sid, deadline)) = self.attempt
            && self
                .primary
                .is_some_and(|p| p.session == sid && p.addr == addr)
        {
            let rtt = now.saturating_duration_since(asked);
            let sooner = now + (rtt / 2).max(PRECONNECT_MARGIN);
            self.attempt = Some((sid, deadline.min(sooner)));
        }
    }

    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        [
            self.ep.poll_timeout(),
            self.next_refresh,
            self.attempt.map(|(_, t)| t),
            self.standby_attempt.map(|(_, t)| t),
            self.retry_at,
            self.draining.iter().map(|(_, t)| *t).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.ep.handle_timeout(now);
        let (done, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.draining)
            .into_iter()
            .partition(|(_, t)| *t <= now);
        self.draining = kept;
        for (session, _) in done {
            self.ep.close(now, session);
        }
        if let Some((sid, t)) = self.standby_attempt
            && t <= now
        {
            self.standby_attempt = None;
            if self
                .standby
                .is_some_and(|s| s.session == sid && !self.ep.is_established(sid))
            {
                self.drop_standby(now, "no handshake answer");
            }
        }
        if let Some((sid, t)) = self.attempt
            && t <= now
        {
            self.attempt = None;
            if let Some(p) = self
                .primary
                .filter(|p| p.session == sid && !self.ep.is_established(sid))
                && self.race.is_none()
            {
                // UDP has not answered within its head start: race TCP to the same supernode,
                // keeping the UDP handshake going (it may only have lost a packet).
                tracing::info!("no answer over UDP from {} yet; racing TCP", p.addr);
                if let Some(&(key, _)) = self.known.iter().find(|(k, _)| k.id == p.node)
                    && let Ok(session) =
                        self.ep
                            .connect_via(now, p.addr, &key, crate::transmit::STREAM as u8)
                {
                    self.race = Some(Link {
                        session,
                        tcp: true,
                        ..p
                    });
                }
            }
        }
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            if self.primary.is_none() {
                self.connect_next(now);
            }
        }
        if self.next_refresh.is_some_and(|t| t <= now) {
            self.next_refresh = Some(now + self.config.refresh_interval);
            if let Some(p) = self.primary.filter(|_| self.registered) {
                if self.renew_at.is_some_and(|t| t <= now) {
                    self.renew_at = None;
                    if let Some(record) = self.sign_registration(now, p.node) {
                        self.request_on(
                            now,
                            p.session,
                            &Request::CRegister { record },
                            Pending::Renew,
                        );
                    }
                } else {
                    self.request_on(now, p.session, &Request::CRefresh, Pending::Refresh);
                }
                // Every few refreshes, the member list: a dead standby is replaced before the
                // primary fails too.
                self.refreshes += 1;
                if self.refreshes % 3 == 0 {
                    self.ask_members(now, p.session);
                }
            }
        }
        self.pump(now);
    }

    pub fn handle_input(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.ep.handle_input(now, from, data);
        self.pump(now);
    }

    /// The TCP stream to `addr` broke (the supernode died or the path failed): sessions over it
    /// are gone, without waiting for keepalives to notice.
    pub fn stream_closed(&mut self, now: Instant, addr: SocketAddr) {
        if self.preconnect.is_some_and(|(a, _)| a == addr) {
            // Refused or reset before or during a race: UDP carries on alone.
            self.preconnect = None;
        }
        if let Some(r) = self.race.filter(|r| r.addr == addr) {
            // TCP lost the race by itself (refused, reset): UDP carries on alone.
            self.race = None;
            self.ep.close(now, r.session);
        } else if self
            .primary
            .is_some_and(|p| p.tcp && p.addr == addr && self.ep.is_established(p.session))
        {
            self.fail_over(now, "the TCP connection to the supernode closed");
        } else if self.standby.is_some_and(|s| s.tcp && s.addr == addr) {
            self.drop_standby(now, "its TCP connection closed");
        }
        self.pump(now);
    }

    /// Closes every session (going offline politely: the supernode publishes it at once).
    pub fn close(&mut self, now: Instant) {
        for l in [self.primary.take(), self.standby.take(), self.race.take()]
            .into_iter()
            .flatten()
        {
            self.ep.close(now, l.session);
        }
        for (session, _) in std::mem::take(&mut self.draining) {
            self.ep.close(now, session);
        }
        self.registered = false;
        self.next_refresh = None;
    }

    // ------------------------------------------------------------------ operations

    /// Watch `user`'s presence (kept across failovers).
    pub fn watch(&mut self, now: Instant, user: UserId) {
        self.watches.insert(user);
        self.ask(now, Request::CWatch(user), Pending::Watch);
    }

    pub fn lookup(&mut self, now: Instant, target: Target) {
        self.ask(
            now,
            Request::CLookup(target.clone()),
            Pending::Lookup(target),
        );
    }

    /// Claims `name` (first come, first served).
    pub fn claim(&mut self, now: Instant, name: &str) -> Result<(), String> {
        let name = normalize_name(name).map_err(|e| e.to_string())?;
        let ts = Timestamp(self.unix(now));
        self.seq += 1;
        let claim = sign_record(
            &self.identity,
            self.seq,
            ts,
            ts.plus(30 * 24 * 3600),
            &NameClaim { name: name.clone() },
        )
        .map_err(|e| e.to_string())?;
        self.ask(now, Request::CClaim { claim }, Pending::Claim(name));
        Ok(())
    }

    /// Sends `payload` to `to`'s client through the supernodes.
    /// Sends `payload` to `to`'s client through the supernodes; returns the number its
    /// [`AgentEvent::Routed`] outcome will carry.
    pub fn route(&mut self, now: Instant, to: UserId, payload: Vec<u8>) -> u64 {
        self.next_route += 1;
        let id = self.next_route;
        let early = (!self.registered && self.config.register).then(|| payload.clone());
        self.ask(
            now,
            Request::CRoute { to, payload },
            Pending::Route(to, id, early),
        );
        id
    }

    /// Acknowledges delivery `id` ([`AgentEvent::Delivered`]), with a reply for the sender or
    /// none. Unknown or already acknowledged deliveries are ignored.
    pub fn acknowledge(&mut self, now: Instant, id: u64, reply: Option<Vec<u8>>) {
        let Some((session, txn)) = self.deliveries.remove(&id) else {
            return;
        };
        let resp = match reply {
            Some(r) => Response::Reply(r),
            None => Response::Ok,
        };
        if self
            .ep
            .respond(now, session, txn, &signal::encode(&resp))
            .is_err()
        {
            // Too big for one frame, or the session is gone: a plain acknowledgement at least.
            let _ = self
                .ep
                .respond(now, session, txn, &signal::encode(&Response::Ok));
        }
    }

    /// Asks for relay candidates with credentials.
    pub fn relays(&mut self, now: Instant) {
        self.ask(now, Request::CRelays, Pending::Relays);
    }

    /// Asks the primary for the mesh's members (merged into [`Agent::known_supernodes`]): for
    /// an agent that does not register, which otherwise never asks.
    pub fn members(&mut self, now: Instant) {
        // By pages, on the primary once one is up (like `ask`, which cannot page).
        match self.primary {
            Some(l) if self.ep.is_established(l.session) => self.ask_members(now, l.session),
            _ => {
                self.members_fetch = self.members_fetch.wrapping_add(1);
                let req = self.pager.first();
                self.queued
                    .push_back((req, Pending::Members(self.members_fetch)));
            }
        }
        self.pump(now);
    }

    /// A promotion request ([`crate::roles`]) to the primary; answered by [`AgentEvent::Roles`].
    pub fn roles(&mut self, now: Instant, req: signal::RolesRequest) {
        self.ask(now, Request::CRoles(req), Pending::Roles);
    }

    /// Sends on the primary, or queues until one is connected.
    fn ask(&mut self, now: Instant, req: Request, p: Pending) {
        // Only on an established session: before that, the primary's session may still be
        // replaced by the one racing it over TCP (requests on the loser would fail).
        match self.primary {
            Some(l) if self.ep.is_established(l.session) => {
                self.request_on(now, l.session, &req, p);
            }
            _ => self.queued.push_back((req, p)),
        }
        self.pump(now);
    }

    /// Sends `req` on `sid`; a request that cannot even be sent (its session just went away, or
    /// is full) fails at once, exactly as one that got no answer.
    fn request_on(&mut self, now: Instant, sid: SessionId, req: &Request, p: Pending) {
        match self.ep.request(now, sid, &signal::encode(req)) {
            Ok(txn) => {
                self.pending.insert(txn, (sid, p));
            }
            Err(e) => {
                tracing::debug!("cannot send on session {sid:?}: {e}");
                self.on_response(now, sid, p, None);
            }
        }
    }

    // ------------------------------------------------------------------ connection management

    /// Opens a session to the next supernode in the host cache as the primary candidate:
    /// supernodes not demoted first, in host-cache order from where the last attempt left off;
    /// if every one is demoted, the next one anyway (one of them may be back). If no session can
    /// be opened at all, a retry is scheduled: the agent never sits without a way back.
    fn connect_next(&mut self, now: Instant) {
        if self.known.is_empty() {
            self.events.push_back(AgentEvent::Error {
                message: "no supernode to connect to".into(),
            });
            return;
        }
        let n = self.known.len();
        let order: Vec<usize> = (0..n).map(|k| (self.next_try + k) % n).collect();
        let standby = self.standby.map(|s| s.node);
        let usable = |i: &usize| Some(self.known[*i].0.id) != standby;
        let alive: Vec<usize> = order
            .iter()
            .copied()
            .filter(|i| usable(i) && !self.dead.contains_key(&self.known[*i].0.id))
            .collect();
        let rest: Vec<usize> = order.iter().copied().filter(|i| usable(i)).collect();
        for i in alive.into_iter().chain(rest) {
            let (key, addr) = self.known[i];
            self.next_try = i + 1;
            let opened = if self.config.early_data && self.config.register {
                self.open_early(now, key, addr)
            } else {
                self.open(now, key, addr)
            };
            if let Ok(link) = opened {
                self.primary = Some(link);
                if !link.tcp {
                    let head_start = if self.config.race_tcp_at_once.contains(&addr) {
                        HINTED_HEAD_START
                    } else {
                        // Connect TCP beside it now (an empty connection, no handshake): its
                        // set-up measures the round trip UDP should answer in.
                        self.end_race(now);
                        self.preconnect = Some((addr, now));
                        self.open_streams.push_back(addr);
                        self.config.udp_head_start
                    };
                    self.attempt = Some((link.session, now + head_start));
                }
                return;
            }
        }
        self.retry_at = Some(now + RETRY_FIRST);
    }

    /// Opens a standby session if we have none: with the best-ranked supernode (rendezvous
    /// hashing of our ID, so clients of one supernode spread their standbys) among those the
    /// mesh lists and we have not demoted; failing that, any not demoted. None left: no standby
    /// until the next member list.
    fn open_standby(&mut self, now: Instant) {
        if !self.config.standby || self.standby.is_some() {
            return;
        }
        let Some(p) = self.primary else { return };
        let candidates: Vec<UserId> = self
            .known
            .iter()
            .map(|(k, _)| k.id)
            .filter(|id| *id != p.node && !self.dead.contains_key(id))
            .collect();
        let listed: Vec<UserId> = match &self.members {
            Some(m) => candidates
                .iter()
                .copied()
                .filter(|id| m.contains(id))
                .collect(),
            None => candidates.clone(),
        };
        let pool = if listed.is_empty() {
            &candidates
        } else {
            &listed
        };
        let mut key = b"voxmesh/v1/standby\0".to_vec();
        key.extend_from_slice(self.identity.id().as_bytes());
        let Some(best) = crate::directory::homes(&key, pool, 1).first().copied() else {
            return;
        };
        let Some(&(key, addr)) = self.known.iter().find(|(k, _)| k.id == best) else {
            return;
        };
        if self.stream.contains(&p.addr) {
            // UDP did not work for the primary: do not wait for it to fail again.
            self.stream.insert(addr);
        }
        if let Ok(link) = self.open(now, key, addr) {
            self.standby = Some(link);
            self.standby_attempt = Some((link.session, now + self.config.standby_patience));
        }
    }

    /// Opens a session to `key` at `addr`: over TCP if that supernode was reached over TCP
    /// before (UDP lost a race to it), else over UDP.
    fn open(
        &mut self,
        now: Instant,
        key: NodeKey,
        addr: SocketAddr,
    ) -> Result<Link, session::ConnectError> {
        self.open_with(now, key, addr, &[]).map(|(link, _)| link)
    }

    /// [`Agent::open`] with `requests` as the handshake's early data; returns their
    /// transactions.
    fn open_with(
        &mut self,
        now: Instant,
        key: NodeKey,
        addr: SocketAddr,
        requests: &[Vec<u8>],
    ) -> Result<(Link, Vec<TransactionId>), session::ConnectError> {
        let tcp = self.stream.contains(&addr);
        let socket = if tcp {
            crate::transmit::STREAM
        } else {
            crate::transmit::UDP
        };
        let (session, txns) = self
            .ep
            .connect_early(now, addr, &key, socket as u8, requests)?;
        let link = Link {
            node: key.id,
            addr,
            session,
            tcp,
        };
        Ok((link, txns))
    }

    /// [`Agent::open`] with a fresh registration and the requests that may go with it (see
    /// [`Agent::register_on`]) as the handshake's early data.
    fn open_early(
        &mut self,
        now: Instant,
        key: NodeKey,
        addr: SocketAddr,
    ) -> Result<Link, session::ConnectError> {
        let Some(record) = self.sign_registration(now, key.id) else {
            return self.open(now, key, addr);
        };
        let (early, later): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.queued)
            .into_iter()
            .partition(|(_, p)| rides_with_registration(p));
        self.queued = later;
        let mut reqs = vec![(
            Request::CRegister { record },
            Pending::Register {
                failover: self.after_loss,
            },
        )];
        reqs.extend(early);
        let bodies: Vec<Vec<u8>> = reqs.iter().map(|(r, _)| signal::encode(r)).collect();
        match self.open_with(now, key, addr, &bodies) {
            Ok((link, txns)) => {
                for (txn, (_, p)) in txns.into_iter().zip(reqs) {
                    self.pending.insert(txn, (link.session, p));
                }
                self.early = Some(link.session);
                Ok(link)
            }
            Err(e) => {
                // Back in the queue, in order, for a later session.
                for r in reqs.into_iter().skip(1).rev() {
                    self.queued.push_front(r);
                }
                Err(e)
            }
        }
    }

    /// Takes back the requests that rode in `session`'s handshake (given up unanswered: UDP
    /// lost the race to TCP), to go right behind the registration on the winner instead of a
    /// round trip after it. The registration itself is signed afresh there.
    fn requeue_early(&mut self, session: SessionId) {
        let mut back: Vec<Pending> = Vec::new();
        self.pending.retain(|_, (sid, p)| {
            let keep = *sid != session || again(p).is_none();
            if !keep {
                back.push(p.clone());
            }
            keep
        });
        // Routes in the order they were asked (their numbers grow), the rest after them.
        back.sort_by_key(|p| match p {
            Pending::Route(_, id, _) => *id,
            _ => u64::MAX,
        });
        for p in back.into_iter().rev() {
            if let Some(req) = again(&p) {
                self.queued.push_front((req, p));
            }
        }
    }

    /// Ends a race of TCP against the primary's UDP handshake, closing the racing session and
    /// its stream (UDP won, or the primary is being replaced).
    fn end_race(&mut self, now: Instant) {
        let opened = self.preconnect.take().map(|(addr, _)| addr);
        let stream = if let Some(r) = self.race.take() {
            self.ep.close(now, r.session);
            Some(r.addr)
        } else {
            opened
        };
        // The stream goes unless another session of ours runs on it.
        if let Some(addr) = stream
            && self.standby.is_none_or(|s| s.addr != addr || !s.tcp)
            && self.primary.is_none_or(|p| p.addr != addr || !p.tcp)
        {
            self.close_streams.push_back(addr);
        }
    }

    /// Closes the standby session, demotes its supernode and opens another standby: once a fresh
    /// member list is in when we have a primary to ask (supernodes that died with the standby
    /// must not be picked in its place), else at once.
    fn drop_standby(&mut self, now: Instant, why: &str) {
        self.lose_standby(now, why);
        match self.primary.filter(|_| self.registered) {
            Some(p) => self.ask_members(now, p.session),
            None => self.open_standby(now),
        }
    }

    /// Closes the standby session and demotes its supernode.
    fn lose_standby(&mut self, now: Instant, why: &str) {
        if let Some(s) = self.standby.take() {
            tracing::info!("standby supernode lost ({why})");
            self.ep.close(now, s.session);
            self.demote(now, s.node);
            self.events
                .push_back(AgentEvent::Standby { supernode: None });
        }
    }

    /// Marks `node` as believed dead and moves it to the back of the host cache.
    fn demote(&mut self, now: Instant, node: UserId) {
        self.dead.insert(node, now);
        if let Some(i) = self.known.iter().position(|(k, _)| k.id == node) {
            let e = self.known.remove(i);
            self.known.push(e);
        }
    }

    /// Whether a standby on `node` may be promoted: not demoted, and still a member as far as
    /// the mesh told us.
    fn plausible(&self, node: &UserId) -> bool {
        !self.dead.contains_key(node) && self.members.as_ref().is_none_or(|m| m.contains(node))
    }

    /// Tells the standby who our primary is, and the primary who our standby is (so each can
    /// warn us when the mesh declares the other dead).
    fn announce_standby(&mut self, now: Instant) {
        let (Some(p), Some(s)) = (self.primary, self.standby) else {
            return;
        };
        if !self.registered || !self.ep.is_established(s.session) {
            return;
        }
        self.request_on(
            now,
            s.session,
            &Request::CStandby { primary: p.node },
            Pending::Standby,
        );
        self.request_on(
            now,
            p.session,
            &Request::CStandbyIs { standby: s.node },
            Pending::StandbyIs,
        );
    }

    /// A fresh registration record naming `supernode`.
    fn sign_registration(&mut self, now: Instant, supernode: UserId) -> Option<Vec<u8>> {
        let ts = Timestamp(self.unix(now));
        self.seq += 1;
        let payload = Registration {
            supernode,
            addrs: Vec::new(),
        };
        let lifetime = self.config.record_lifetime.as_secs();
        match sign_record(&self.identity, self.seq, ts, ts.plus(lifetime), &payload) {
            Ok(r) => Some(r),
            Err(e) => {
                self.events.push_back(AgentEvent::Error {
                    message: format!("cannot sign: {e}"),
                });
                None
            }
        }
    }

    fn register_on(&mut self, now: Instant, link: Link, failover: bool) {
        if let Some(record) = self.sign_registration(now, link.node) {
            self.request_on(
                now,
                link.session,
                &Request::CRegister { record },
                Pending::Register { failover },
            );
            // What waited for the session goes right behind the registration, in the same
            // flight, instead of a round trip later: a fresh `dial`'s invite reaches the callee
            // one round trip sooner (the supernode handles a session's requests in order; one
            // that overtakes a lost registration is refused and sent again, see
            // `Pending::Route`). Lookups and relay offers need no registration at all;
            // claims and watches still wait for it.
            self.send_with_registration(now, link.session);
        }
    }

    /// Sends the queued requests that may follow a registration in the same flight.
    fn send_with_registration(&mut self, now: Instant, session: SessionId) {
        let (early, later): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.queued)
            .into_iter()
            .partition(|(_, p)| rides_with_registration(p));
        self.queued = later;
        for (req, pend) in early {
            self.request_on(now, session, &req, pend);
        }
    }

    /// The primary is gone (or failed us): demote it, then promote the standby if it is still
    /// plausible (registering on it if its session is up, or as soon as its handshake ends), or
    /// reconnect from the host cache. Runs in full every time it is called: a failover that
    /// fails simply fails over again, to the next candidate.
    fn fail_over(&mut self, now: Instant, why: &str) {
        let old = self.primary.take();
        self.early = None;
        self.registered = false;
        self.next_refresh = None;
        self.renew_at = None;
        self.attempt = None;
        self.end_race(now);
        self.after_loss = true;
        if let Some(o) = old {
            self.ep.close(now, o.session);
            self.demote(now, o.node);
        }
        tracing::info!("primary supernode lost ({why}); failing over");
        match self.standby.take() {
            Some(s) if self.plausible(&s.node) => {
                self.primary = Some(s);
                if self.ep.is_established(s.session) {
                    self.register_on(now, s, true);
                } else if !s.tcp {
                    self.attempt = Some((s.session, now + self.config.udp_head_start));
                }
            }
            Some(s) => {
                self.ep.close(now, s.session);
                self.connect_next(now);
            }
            None => self.connect_next(now),
        }
    }

    fn pump(&mut self, now: Instant) {
        while let Some(ev) = self.ep.poll_event() {
            self.on_event(now, ev);
        }
    }

    fn on_event(&mut self, now: Instant, ev: Event) {
        match ev {
            Event::Connected { session, peer } => {
                // It answered: forgiven.
                self.dead.remove(&peer.id);
                if let Some(r) = self.race.filter(|r| r.session == session) {
                    // TCP won the race: it becomes the primary's session; UDP is given up (and
                    // later sessions to this supernode start on TCP).
                    tracing::info!("{} answered over TCP first; UDP given up", r.addr);
                    self.race = None;
                    self.preconnect = None;
                    self.attempt = None;
                    if let Some(p) = self.primary.replace(r) {
                        if self.early == Some(p.session) {
                            self.requeue_early(p.session);
                            self.draining.push((p.session, now + EARLY_DRAIN));
                        } else {
                            self.ep.close(now, p.session);
                        }
                    }
                    self.stream.insert(r.addr);
                } else if let Some(p) = self.primary.filter(|p| p.session == session) {
                    // UDP won (or ran alone): a racing TCP session is not needed.
                    self.attempt = None;
                    self.end_race(now);
                    if !p.tcp {
                        self.udp_answered.insert(p.addr);
                    }
                }
                if let Some(p) = self.primary.filter(|p| p.session == session) {
                    self.failed_handshakes = 0;
                    if self.early == Some(session) {
                        // The registration went in the handshake; what was asked since follows.
                        self.send_with_registration(now, session);
                    } else if self.config.register {
                        self.register_on(now, p, self.after_loss);
                    } else {
                        self.flush_queue(now);
                    }
                } else if self.standby.is_some_and(|s| s.session == session) {
                    self.announce_standby(now);
                }
            }
            Event::HandshakeFailed { session, error } => {
                if self.race.is_some_and(|r| r.session == session) {
                    self.end_race(now);
                    return;
                }
                if let Some(p) = self.primary.filter(|p| p.session == session)
                    && let Some(r) = self.race.take()
                {
                    // UDP gave up while TCP is still trying: TCP carries on as the primary.
                    self.primary = Some(Link { node: p.node, ..r });
                    self.stream.insert(r.addr);
                    return;
                }
                if let Some(p) = self.primary.filter(|p| p.session == session) {
                    self.events.push_back(AgentEvent::Error {
                        message: format!("supernode unreachable: {error}"),
                    });
                    self.primary = None;
                    self.attempt = None;
                    self.end_race(now);
                    self.demote(now, p.node);
                    self.failed_handshakes += 1;
                    let tried = self.known.len().max(1) as u32;
                    if self.failed_handshakes % tried == 0 {
                        // A whole round failed: wait before the next one.
                        let rounds = (self.failed_handshakes / tried).min(16);
                        let wait = RETRY_FIRST.saturating_mul(1 << (rounds - 1)).min(RETRY_MAX);
                        self.retry_at = Some(now + wait);
                    } else {
                        self.connect_next(now);
                    }
                } else if self.standby.is_some_and(|s| s.session == session) {
                    self.drop_standby(now, "its handshake failed");
                }
            }
            Event::Closed {
                session, reason, ..
            } => {
                if self.primary.is_some_and(|p| p.session == session) {
                    self.fail_over(now, &reason.to_string());
                } else if self.standby.is_some_and(|s| s.session == session) {
                    self.drop_standby(now, &reason.to_string());
                }
            }
            Event::Request { session, txn, body } => {
                // Supernodes ask us three things: to take a routed payload, and to hear that our
                // primary or our standby is dead. Each is acknowledged (a duplicate too: the
                // session layer answers retransmissions from its cache).
                match signal::decode::<Message>(&body) {
                    Ok(Message::Deliver { from, payload }) => {
                        if self.deliveries.len() >= MAX_UNACKED
                            && let Some(oldest) = self.deliveries.keys().min().copied()
                        {
                            self.deliveries.remove(&oldest);
                        }
                        self.next_delivery += 1;
                        let id = self.next_delivery;
                        self.deliveries.insert(id, (session, txn));
                        self.events
                            .push_back(AgentEvent::Delivered { from, payload, id });
                    }
                    Ok(Message::PrimaryLost { primary }) => {
                        let _ = self
                            .ep
                            .respond(now, session, txn, &signal::encode(&Response::Ok));
                        if self.standby.is_some_and(|s| s.session == session)
                            && self.primary.is_some_and(|p| p.node == primary)
                        {
                            self.fail_over(now, "the standby reports the primary dead");
                        }
                    }
                    Ok(Message::StandbyLost { standby }) => {
                        let _ = self
                            .ep
                            .respond(now, session, txn, &signal::encode(&Response::Ok));
                        if self.primary.is_some_and(|p| p.session == session)
                            && self.standby.is_some_and(|s| s.node == standby)
                        {
                            self.drop_standby(now, "the primary reports it dead");
                        }
                    }
                    _ => {
                        self.counters.refuse("unexpected request");
                        let resp = Response::Error {
                            code: 400,
                            reason: "unexpected request".into(),
                        };
                        let _ = self.ep.respond(now, session, txn, &signal::encode(&resp));
                    }
                }
            }
            Event::Message { body, .. } => match signal::decode::<Message>(&body) {
                Ok(Message::Presence {
                    user,
                    online,
                    last_seen,
                    stale,
                }) => {
                    self.events.push_back(AgentEvent::Presence {
                        user,
                        online,
                        last_seen,
                        stale,
                    });
                }
                Ok(_) => self.counters.refuse("unexpected message"),
                Err(_) => self.counters.refuse("malformed message"),
            },
            Event::Response { txn, body, .. } => {
                if let Some((sid, p)) = self.pending.remove(&txn) {
                    let resp = match signal::decode::<Response>(&body) {
                        Ok(r) => {
                            if !answers(&p, &r) {
                                self.counters.refuse("unexpected answer");
                            }
                            r
                        }
                        Err(_) => {
                            self.counters.refuse("malformed answer");
                            Response::Error {
                                code: 502,
                                reason: "malformed answer".into(),
                            }
                        }
                    };
                    self.on_response(now, sid, p, Some(resp));
                }
            }
            Event::TransactionFailed { txn, .. } => {
                if let Some((sid, p)) = self.pending.remove(&txn) {
                    self.on_response(now, sid, p, None);
                }
            }
        }
    }

    fn flush_queue(&mut self, now: Instant) {
        let Some(p) = self.primary else { return };
        while let Some((req, pend)) = self.queued.pop_front() {
            self.request_on(now, p.session, &req, pend);
        }
    }

    fn on_response(&mut self, now: Instant, sid: SessionId, p: Pending, resp: Option<Response>) {
        let err = |r: &Option<Response>| match r {
            Some(Response::Error { code, reason }) => format!("{code} {reason}"),
            None => "504 no answer from the supernode".to_string(),
            Some(other) => format!("unexpected answer {other:?}"),
        };
        let on_primary = self.primary.is_some_and(|l| l.session == sid);
        let on_standby = self.standby.is_some_and(|l| l.session == sid);
        match p {
            // Connection management answers from a session that is no longer ours (closed by a
            // failover, which fails its outstanding requests) are about the past.
            Pending::Register { .. } | Pending::Renew | Pending::Refresh | Pending::Members(_)
                if !on_primary => {}
            Pending::Members(n) if n != self.members_fetch => {}
            Pending::Standby if !on_standby => {}
            Pending::StandbyIs => {}
            // A lookup or relay request that went down with a session we closed: ask again on
            // the next primary (both are safe to repeat). Claims and routed payloads fail to the
            // caller instead: repeating them is the caller's decision.
            Pending::Lookup(_) | Pending::Relays if resp.is_none() && !on_primary => {
                let req = again(&p).expect("a lookup or relay request can be asked again");
                self.queued.push_back((req, p));
                if self.registered || !self.config.register {
                    self.flush_queue(now);
                }
            }
            Pending::Register { failover } => match resp {
                Some(Response::Registered { .. }) => {
                    self.registered = true;
                    self.after_loss = false;
                    let l = self.primary.expect("registering on a primary");
                    self.next_refresh = Some(now + self.config.refresh_interval);
                    self.renew_at = Some(now + self.config.record_lifetime / 2);
                    self.events.push_back(AgentEvent::Registered {
                        supernode: l.node,
                        addr: l.addr,
                        failover,
                    });
                    // In ID order (the set's is a hash's, different in every process): a
                    // seeded simulation replays the same requests in the same order.
                    let mut watches: Vec<UserId> = self.watches.iter().copied().collect();
                    watches.sort_unstable();
                    for user in watches {
                        self.request_on(now, l.session, &Request::CWatch(user), Pending::Watch);
                    }
                    self.ask_members(now, l.session);
                    self.flush_queue(now);
                    // A standby whose primary was the dead one must learn the new primary.
                    self.announce_standby(now);
                    self.open_standby(now);
                }
                other => {
                    self.events.push_back(AgentEvent::Error {
                        message: format!("registration failed: {}", err(&other)),
                    });
                    self.fail_over(now, "registration failed");
                }
            },
            Pending::Refresh => {
                if !matches!(resp, Some(Response::Ok)) {
                    self.fail_over(now, "refresh failed");
                }
            }
            Pending::Renew => match resp {
                Some(Response::Registered { .. }) => {
                    self.renew_at = Some(now + self.config.record_lifetime / 2);
                }
                other => {
                    self.events.push_back(AgentEvent::Error {
                        message: format!("registration renewal failed: {}", err(&other)),
                    });
                    self.fail_over(now, "registration renewal failed");
                }
            },
            Pending::Members(_) => match resp {
                Some(page @ Response::MembersPage { .. }) => match self.pager.on_page(page) {
                    Some(PagerStep::Ask(req)) => {
                        let n = self.members_fetch;
                        self.request_on(now, sid, &req, Pending::Members(n));
                    }
                    Some(PagerStep::Done(list, _)) => {
                        if let Some(list) = list {
                            self.merge_members(&list);
                            // A slice of a larger list says nothing of who is missing from it.
                            self.members = self
                                .pager
                                .complete()
                                .then(|| list.iter().map(|n| n.key.id).collect());
                        }
                        // A standby the mesh no longer lists is dead: replace it.
                        if self.standby.is_some_and(|s| !self.plausible(&s.node)) {
                            self.lose_standby(now, "the mesh no longer lists it");
                        }
                        self.open_standby(now);
                    }
                    None => unreachable!("a page is a page"),
                },
                // The primary did not answer at all: as telling as an unanswered refresh.
                None => self.fail_over(now, "the primary did not answer"),
                // Refused: pick from the list we have rather than sit without a standby.
                Some(_) => self.open_standby(now),
            },
            Pending::Standby => {
                // The standby did not take it (or did not answer): it cannot be relied on.
                if matches!(resp, Some(Response::Ok)) {
                    let supernode = self.standby.map(|s| s.node);
                    self.events.push_back(AgentEvent::Standby { supernode });
                } else {
                    self.drop_standby(now, "it did not acknowledge being our standby");
                }
            }
            Pending::Watch => {}
            Pending::Lookup(target) => {
                let result = match resp {
                    // The entry must carry the user's own signature (a name lookup: anyone's,
                    // since the name is the supernodes' word): a supernode cannot make one up.
                    Some(Response::Entry(e)) => match (&target, e.signer()) {
                        (Target::Id(want), Some(got)) if got == *want => Ok(Some(e)),
                        (Target::Name(_), Some(_)) => Ok(Some(e)),
                        _ => {
                            self.counters.refuse("unsigned entry");
                            Err("the supernode answered with an entry the user did not sign".into())
                        }
                    },
                    Some(Response::NotFound) => Ok(None),
                    other => Err(err(&other)),
                };
                self.events.push_back(AgentEvent::Lookup { target, result });
            }
            Pending::Claim(name) => match resp {
                Some(Response::Claimed { name }) => {
                    self.events.push_back(AgentEvent::Claimed { name })
                }
                other => self.events.push_back(AgentEvent::Error {
                    message: format!("claim of '{name}' refused: {}", err(&other)),
                }),
            },
            Pending::Route(to, id, Some(payload))
                if matches!(&resp, Some(Response::Error { code: 403, .. }))
                    || (resp.is_none() && !on_primary) =>
            {
                // It overtook our registration: again once registered. The refusal can arrive
                // after the registration did (the first one was lost and the supernode repeats
                // its cached answer to our retransmission), so this does not ask whether we are
                // registered now, only whether the route left before we were. Likewise a route
                // that went, with the registration, on a session we gave up before it was
                // answered (UDP lost the race to TCP): the callee answers a repeated invite as
                // the first.
                self.queued.push_back((
                    Request::CRoute { to, payload },
                    Pending::Route(to, id, None),
                ));
                if self.registered {
                    self.flush_queue(now);
                }
            }
            Pending::Route(to, id, _) => {
                let result = match resp {
                    Some(Response::Routed) => Ok(None),
                    Some(Response::Reply(r)) => Ok(Some(r)),
                    other => Err(err(&other)),
                };
                self.events.push_back(AgentEvent::Routed { to, id, result });
            }
            Pending::Relays => {
                let result = match resp {
                    Some(Response::Relays(r)) => Ok(r),
                    other => Err(err(&other)),
                };
                self.events.push_back(AgentEvent::Relays(result));
            }
            Pending::Roles => {
                let result = match resp {
                    Some(Response::Roles(r)) => Ok(r),
                    other => Err(err(&other)),
                };
                self.events.push_back(AgentEvent::Roles(result));
            }
        }
    }

    /// Starts fetching the member list on `session` (a fetch under way is abandoned: its
    /// answers are ignored).
    fn ask_members(&mut self, now: Instant, session: SessionId) {
        self.members_fetch = self.members_fetch.wrapping_add(1);
        let req = self.pager.first();
        self.request_on(now, session, &req, Pending::Members(self.members_fetch));
    }

    /// Adds supernodes learnt from the mesh to the host cache (bounded).
    fn merge_members(&mut self, list: &[NodeInfo]) {
        for n in list {
            if !self.known.iter().any(|(k, _)| k.id == n.key.id) && self.known.len() < 64 {
                self.known.push((n.key, n.addr));
            }
        }
    }
}

/// Whether `resp` is an answer of the kind `p` waits for (an error is always one).
/// Whether a queued request may go right behind a registration, before its answer: lookups
/// and relay offers need no registration, and a route that overtakes a lost one is refused
/// and sent again (see `Pending::Route`).
fn rides_with_registration(p: &Pending) -> bool {
    matches!(p, Pending::Route(..) | Pending::Lookup(_) | Pending::Relays)
}

/// The request to send again for what is pending, when it can be rebuilt from it: lookups,
/// relay offers, and routes whose payload is kept (those that left before the registration).
fn again(p: &Pending) -> Option<Request> {
    match p {
        Pending::Route(to, _, Some(payload)) => Some(Request::CRoute {
            to: *to,
            payload: payload.clone(),
        }),
        Pending::Lookup(t) => Some(Request::CLookup(t.clone())),
        Pending::Relays => Some(Request::CRelays),
        _ => None,
    }
}

fn answers(p: &Pending, resp: &Response) -> bool {
    matches!(
        (p, resp),
        (_, Response::Error { .. })
            | (
                Pending::Register { .. } | Pending::Renew,
                Response::Registered { .. }
            )
            | (
                Pending::Refresh | Pending::Standby | Pending::Watch,
                Response::Ok
            )
            | (Pending::Members(_), Response::MembersPage { .. })
            | (Pending::Lookup(_), Response::Entry(_) | Response::NotFound)
            | (Pending::Claim(_), Response::Claimed { .. })
            | (Pending::Route(..), Response::Routed | Response::Reply(_))
            | (Pending::Relays, Response::Relays(_))
            | (Pending::Roles, Response::Roles(_))
    )
}
