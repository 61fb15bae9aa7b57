//! A client's whole network side as one sans-IO state machine: the directory agent, the phone
//! (calls, ICE), each call's media, a TURN allocation and server-reflexive discovery, all on
//! **one UDP socket** (DESIGN §3), demultiplexed by what each datagram is.
//!
//! ```text
//!                  ┌ session frame ───────────────▶ Agent (registration, routing, presence)
//!  handle_input ┼ from the TURN server ────────▶ TurnClient ─▶ (data from a peer, as below)
//!                  ┼ STUN ─ our binding answer ───▶ server-reflexive candidate
//!                  │      └ a connectivity check ─▶ Phone ─▶ the call's ICE agent
//!                  └ media (first byte 128-191) ──▶ the call's MediaSession
//! ```
//!
//! Signalling: what the phone wants to say is routed through the agent; a delivered payload goes
//! to the phone and its reply rides the delivery's acknowledgement (the callee's ringing reaches
//! the caller with the invite's acknowledgement). Candidates: host addresses are given by the
//! driver, the server-reflexive one comes from a STUN binding request to our primary supernode
//! (its port answers STUN) sent from the call socket, the relayed one from an allocation on the
//! relay our supernode offers, started when a call is placed or rings (in parallel with the
//! call's set-up, never after a failure).
//!
//! Relay choice ([`super::relay_rank`], on each side of a call alike): the offers with a UDP
//! address of our socket's family are allocated on in parallel (up to [`TRIALS`], least loaded
//! first), each allocation's round trip is measured, and the ranking by measured round trip
//! plus reported load picks the relay that carries calls and the **standby**, kept allocated
//! with its relayed candidate known to ICE (added after the chosen one, so it ranks below it):
//! when the chosen relay dies, consent on the relayed path notices within
//! [`PhoneConfig::ice_timing`]'s relayed consent timeout and ICE moves the call to the
//! standby's pair, which consent has kept checked, with no signalling. The others are
//! released. [`EndpointEvent::RelayChoice`] reports the ranking. When the path moves, every
//! allocation of ours refreshes its permission for the peer: one whose relay died times out
//! (the TURN client's seven sends, ~13 s), is dropped with its candidate, the standby takes the
//! active role if it was the dead one, and a new standby is allocated from fresh offers (not
//! on the dead relay); its candidate reaches the peer by trickle. Over TCP (UDP blocked) only
//! one relay is allocated, the least loaded, ties broken by relay ID.
//!
//! A network that blocks UDP: the allocation over UDP gets a head start
//! ([`RELAY_UDP_HEAD_START`]), then one over TCP to the same relay races it and the first to
//! allocate is kept; when the agent reaches its supernode over TCP only, the relay is allocated
//! over TCP at once (among offers with a TCP address). The TURN client then runs in stream mode
//! (padded ChannelData) and its messages go out with `Transmit::socket` =
//! [`crate::transmit::STREAM`]: the driver owns the TCP stream, this core stays socket-free.
//!
//! Media flows once a call is answered and ICE has a path; the first authenticated packet from
//! the peer makes the call `Connected` (what a user hears), with the path and the short
//! authentication string both ends show.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::ice::{ChangeReason, LocalCandidate, PathInfo, Route};
use super::message::CallId;
use super::phone::{EndReason, Phone, PhoneConfig, PhoneEvent, RouteError};
use super::relay_rank::{self, Measured, RANK_WAIT, Scored, TRIALS};
use crate::client::{Agent, AgentEvent};
use crate::demux;
use crate::identity::UserId;
use crate::media::{self, DtmfDigit, Frame, MediaConfig, MediaSession, MediaStats, PeerReport};
use crate::signal::RelayOffer;
use crate::stun::{Class, Message, MessageBuilder, TransactionId, method};
use crate::transmit::Transmit;
use crate::turn::client::{TurnClient, TurnClientConfig, TurnEvent};

/// How long the relay allocation over UDP runs alone before one over TCP races it (when the
/// relay offers TCP): the first to allocate is kept, the other released. A relay answers an
/// Allocate within one round trip (its 401 challenge), so on a network that passes UDP the
/// TCP allocation is never started; 150 ms is also under the TURN client's first
/// retransmission (250 ms), so a blocked or lossy UDP path costs no more than that. The same
/// reasoning as the agent's head start to its supernode ([`crate::client::UDP_HEAD_START`]).
/// When the agent already reaches its supernode over TCP only (UDP lost that race), the relay
/// is allocated over TCP straight away.
pub const RELAY_UDP_HEAD_START: Duration = Duration::from_millis(150);

/// How often a server-reflexive binding request is sent until answered, and how many times.
const SRFLX_RTO: Duration = Duration::from_millis(250);
const SRFLX_ATTEMPTS: u32 = 5;

/// What the endpoint tells the program.
#[derive(Debug)]
pub enum EndpointEvent {
    /// The directory agent's news (registration, presence, lookups, errors).
    Agent(AgentEvent),
    /// A call is ringing here: accept or reject it.
    Incoming {
        call: CallId,
        from: UserId,
    },
    /// Our call rings at the callee.
    Ringing {
        call: CallId,
    },
    /// The call was answered.
    Answered {
        call: CallId,
    },
    /// The first authenticated media from the peer arrived: the call is up.
    Connected {
        call: CallId,
        path: Option<PathInfo>,
        sas: String,
    },
    /// The call's path changed (or was found after `Connected`).
    Path {
        call: CallId,
        path: PathInfo,
        reason: Option<ChangeReason>,
    },
    /// The call has no working path for now.
    PathLost {
        call: CallId,
    },
    /// The peer held or resumed the call.
    Held {
        call: CallId,
        held: bool,
    },
    /// The peer pressed a key.
    Dtmf {
        call: CallId,
        digit: DtmfDigit,
    },
    /// The peer's receiver report: how our audio fares there.
    Report {
        call: CallId,
        report: PeerReport,
    },
    /// The call's media figures (on request, and once as the call ends).
    Stats {
        call: CallId,
        stats: Box<MediaStats>,
    },
    /// An audio packet sent or received (only with the media trace on, `MediaConfig::trace`).
    Trace {
        call: CallId,
        record: media::TraceRecord,
    },
    /// The relay allocation is up (its address is offered as a candidate).
    Relay {
        relayed: SocketAddr,
        server: SocketAddr,
    },
    /// The measured relays ranked, best first: the first carries calls, the second (if any) is
    /// the standby; the others were released.
    RelayChoice {
        ranking: Vec<Scored>,
    },
    Ended {
        call: CallId,
        reason: EndReason,
    },
}

/// Settings of the endpoint.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    pub phone: PhoneConfig,
    pub media: MediaConfig,
    /// Allocate a relay for calls (off: direct paths only).
    pub relay: bool,
    /// Offer only the relayed candidate: no address of ours reaches a peer, every call goes
    /// through the relay (privacy, or a network that must not be punched through).
    pub relay_only: bool,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            phone: PhoneConfig::default(),
            media: MediaConfig::default(),
            relay: true,
            relay_only: false,
        }
    }
}

/// One call's media and what we reported of it.
struct CallMedia {
    session: MediaSession,
    sas: String,
    connected: bool,
}

/// The relay allocation's state.
enum Relay {
    None,
    /// Offers requested from our supernode.
    Asked,
    Allocating(Box<TurnClient>),
    Up(Box<TurnClient>),
    /// Allocation failed: calls go without (never retried mid-call).
    Failed,
}

/// Another relay allocated on in parallel with the first, to be measured for the ranking;
/// the runner-up stays as the standby.
struct Trial {
    turn: Box<TurnClient>,
    relay: UserId,
    load: u32,
    up: bool,
    failed: bool,
}

impl Trial {
    /// Starts allocating on `offer`'s relay at `server`, over UDP.
    fn start(now: Instant, server: SocketAddr, offer: &RelayOffer) -> Self {
        let mut turn = TurnClient::new(turn_config(server, offer, false));
        turn.allocate(now);
        Trial {
            turn: Box::new(turn),
            relay: offer.relay,
            load: offer.load,
            up: false,
            failed: false,
        }
    }

    /// An allocation that is up already (the active relay stepping down to standby).
    fn standby(turn: Box<TurnClient>, relay: UserId, load: u32) -> Self {
        Trial {
            turn,
            relay,
            load,
            up: true,
            failed: false,
        }
    }
}

/// The endpoint: see the module documentation.
pub struct Endpoint {
    agent: Agent,
    phone: Phone,
    config: EndpointConfig,
    /// Our socket's addresses (host candidates).
    hosts: Vec<SocketAddr>,
    media: HashMap<CallId, CallMedia>,
    /// Phone tag of each routed message, by agent route number.
    routes: HashMap<u64, u64>,
    relay: Relay,
    /// The client in `relay` talks to its server over TCP (`Transmit::socket` is
    /// [`crate::transmit::STREAM`]; the driver frames it as TURN over TCP).
    relay_stream: bool,
    /// The relay allocation over TCP racing the UDP one in `relay`, and before it starts: when,
    /// with what settings. `relay_heard`: the relay answered us over UDP (then no race).
    relay_race: Option<Box<TurnClient>>,
    relay_race_at: Option<(Instant, TurnClientConfig)>,
    relay_heard: bool,
    /// TCP streams to relays that no allocation uses any more: the driver closes them.
    close_streams: VecDeque<SocketAddr>,
    /// The offer `relay` allocates on: relay ID and reported load.
    relay_offer: Option<(UserId, u32)>,
    /// Relays measured alongside `relay` until the ranking; after it, at most the standby.
    trials: Vec<Trial>,
    /// The ranking is done: relayed candidates are known to ICE.
    ranked: bool,
    /// When the first allocation succeeded: the ranking waits [`RANK_WAIT`] after it at most.
    first_up: Option<Instant>,
    /// A new standby is being asked for (offers requested), not on these relays.
    replenish: Option<Vec<UserId>>,
    /// Server-reflexive discovery: (transaction, supernode, next send, sends so far).
    srflx: Option<(TransactionId, SocketAddr, Instant, u32)>,
    out: VecDeque<Transmit>,
    events: VecDeque<EndpointEvent>,
}

impl Endpoint {
    /// An endpoint on a socket bound to `hosts` (the addresses peers on our networks can reach
    /// it at; the driver lists them, one port).
    pub fn new(agent: Agent, phone: Phone, config: EndpointConfig, hosts: Vec<SocketAddr>) -> Self {
        let mut e = Endpoint {
            agent,
            phone,
            config,
            hosts: Vec::new(),
            media: HashMap::new(),
            routes: HashMap::new(),
            relay: Relay::None,
            relay_stream: false,
            relay_race: None,
            relay_race_at: None,
            relay_heard: false,
            close_streams: VecDeque::new(),
            relay_offer: None,
            trials: Vec::new(),
            ranked: true,
            first_up: None,
            replenish: None,
            srflx: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
        };
        e.set_hosts(Instant::now(), hosts);
        e
    }

    /// Replaces the host addresses (an interface came or went).
    pub fn set_hosts(&mut self, now: Instant, hosts: Vec<SocketAddr>) {
        if self.config.relay_only {
            self.hosts = hosts;
            return;
        }
        for gone in self.hosts.iter().filter(|h| !hosts.contains(h)) {
            self.phone.remove_local_candidate(now, *gone);
        }
        for h in &hosts {
            self.phone
                .add_local_candidate(now, LocalCandidate::Host(*h));
        }
        self.hosts = hosts;
    }

    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    pub fn agent_mut(&mut self) -> &mut Agent {
        &mut self.agent
    }

    pub fn phone(&self) -> &Phone {
        &self.phone
    }

    /// The relay allocation's address, once up.
    pub fn relayed(&self) -> Option<SocketAddr> {
        match &self.relay {
            Relay::Up(t) => t.relayed(),
            _ => None,
        }
    }

    // ------------------------------------------------------------------ user actions

    /// Calls `to`.
    pub fn dial(&mut self, now: Instant, to: UserId) -> Result<CallId, String> {
        let call = self.phone.dial(now, to)?;
        self.want_relay(now);
        self.pump(now);
        Ok(call)
    }

    pub fn accept(&mut self, now: Instant, call: CallId) -> Result<(), String> {
        self.phone.accept(now, call)?;
        self.pump(now);
        Ok(())
    }

    pub fn reject(&mut self, now: Instant, call: CallId, reason: &str) -> Result<(), String> {
        self.phone.reject(now, call, reason)?;
        self.pump(now);
        Ok(())
    }

    pub fn hangup(&mut self, now: Instant, call: CallId) -> Result<(), String> {
        self.phone.hangup(now, call)?;
        self.pump(now);
        Ok(())
    }

    pub fn hold(&mut self, now: Instant, call: CallId, hold: bool) -> Result<(), String> {
        if hold {
            self.phone.hold(now, call)?;
        } else {
            self.phone.resume(now, call)?;
        }
        self.pump(now);
        Ok(())
    }

    /// Looks a user up in the directory (the answer is an `Agent(Lookup)` event).
    pub fn lookup(&mut self, now: Instant, target: crate::signal::Target) {
        self.agent.lookup(now, target);
        self.pump(now);
    }

    pub fn watch(&mut self, now: Instant, user: UserId) {
        self.agent.watch(now, user);
        self.pump(now);
    }

    pub fn claim(&mut self, now: Instant, name: &str) -> Result<(), String> {
        self.agent.claim(now, name)?;
        self.pump(now);
        Ok(())
    }

    /// Whether call messages (a hang-up's bye, say) still wait for their delivery to be
    /// acknowledged: see [`Phone::signals_pending`].
    pub fn signals_pending(&self) -> bool {
        self.phone.signals_pending()
    }

    /// Whether `call` exists and has not ended (audio attached to it will be used).
    pub fn is_live(&self, call: &CallId) -> bool {
        self.phone.is_live(call)
    }

    /// Whether `call` carries media now (answered, not held, with a path).
    /// Whether the call's audio flows: answered, not on hold, with keys and a path, and the
    /// peer able to decrypt it (it confirmed the key exchange, or its media is arriving). A
    /// caller answered at once would otherwise send audio the callee cannot open while its
    /// confirmation is on the way, and on a narrow uplink that audio crowds out the
    /// confirmation itself (a 32 kbit/s link then lost it for seconds).
    pub fn is_talking(&self, call: &CallId) -> bool {
        self.phone.is_talking(call)
            && self.phone.ice(call).is_some_and(|i| i.selected().is_some())
            && self
                .media
                .get(call)
                .is_some_and(|m| self.phone.peer_keyed(call) || m.session.heard_peer())
    }

    /// Whether the peer's audio for `call` should be played: the call is answered and not on
    /// hold, and the peer's media authenticates. That can come before [`is_talking`]: the
    /// callee's own path selection follows the caller's nomination by a round trip, or by a
    /// retransmission when that check is lost, while the caller already talks; waiting for it
    /// lost the caller's first words (once, in a clean lab call, 860 ms of them).
    ///
    /// [`is_talking`]: Self::is_talking
    pub fn hears(&self, call: &CallId) -> bool {
        self.phone.is_talking(call) && self.media.get(call).is_some_and(|m| m.session.heard_peer())
    }

    /// Captured audio for `call` (48 kHz mono); dropped unless the call is talking.
    pub fn send_audio(&mut self, now: Instant, call: CallId, pcm: &[f32]) {
        if !self.is_talking(&call) {
            return;
        }
        if let Some(m) = self.media.get_mut(&call)
            && let Err(e) = m.session.send_audio(now, pcm)
        {
            tracing::warn!("call {call}: cannot encode: {e}");
        }
        self.pump(now);
    }

    /// Time not sent (muted): the peer's clock of our stream moves on.
    pub fn skip_audio(&mut self, call: CallId, duration: Duration) {
        if let Some(m) = self.media.get_mut(&call) {
            m.session.skip_audio(duration);
        }
    }

    pub fn send_dtmf(&mut self, now: Instant, call: CallId, digit: char) -> Result<(), String> {
        let m = self
            .media
            .get_mut(&call)
            .ok_or("the call has no media yet")?;
        m.session
            .send_dtmf(now, digit, Duration::from_millis(100))
            .map_err(|e| e.to_string())?;
        self.pump(now);
        Ok(())
    }

    /// The next 20 ms of the peer's audio (concealment when none arrived), if the call has
    /// media.
    pub fn pop_frame(&mut self, now: Instant, call: CallId) -> Option<Frame> {
        self.media.get_mut(&call).map(|m| m.session.pop_frame(now))
    }

    pub fn media_stats(&self, call: &CallId) -> Option<MediaStats> {
        self.media.get(call).map(|m| m.session.stats())
    }

    /// Goes offline: hangs up every call, releases the relay, closes the agent's sessions.
    pub fn close(&mut self, now: Instant) {
        if let Relay::Up(t) | Relay::Allocating(t) = &mut self.relay {
            t.release(now);
        }
        if let Some(t) = &mut self.relay_race {
            t.release(now);
        }
        for t in &mut self.trials {
            t.turn.release(now);
        }
        self.relay_race_at = None;
        self.pump(now);
        self.agent.close(now);
        self.pump(now);
    }

    // ------------------------------------------------------------------ network inputs

    /// A datagram that arrived on the call socket.
    pub fn handle_input(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if demux::classify(data) == demux::Kind::Session {
            self.agent.handle_input(now, from, data);
        } else if !self.relay_stream
            && let Relay::Up(t) | Relay::Allocating(t) = &mut self.relay
            && t.server() == from
        {
            self.relay_heard = true;
            if let Some(r) = t.handle_input(now, data) {
                let relayed = t.relayed();
                let inner = data[r.data].to_vec();
                if let Some(relayed) = relayed {
                    self.peer_input(now, Route::Relay(relayed), r.peer, &inner);
                }
            }
        } else if let Some(t) = self.trials.iter_mut().find(|t| t.turn.server() == from) {
            let got = t.turn.handle_input(now, data).and_then(|r| {
                let relayed = t.turn.relayed()?;
                Some((relayed, r.peer, data[r.data].to_vec()))
            });
            // Before the ranking ICE knows no candidate of a trial allocation.
            if let Some((relayed, peer, inner)) = got
                && self.ranked
            {
                self.peer_input(now, Route::Relay(relayed), peer, &inner);
            }
        } else if self.is_srflx_answer(data) {
            self.on_srflx_answer(now, data);
        } else {
            let route = Route::Direct(self.host_for(from));
            self.peer_input(now, route, from, data);
        }
        self.pump(now);
    }

    /// One message from a TURN server over our TCP stream to it (`from` is the server).
    pub fn handle_stream(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let t = match &mut self.relay {
            Relay::Up(t) | Relay::Allocating(t) if self.relay_stream && t.server() == from => t,
            _ => match &mut self.relay_race {
                Some(t) if t.server() == from => t,
                _ => return,
            },
        };
        if let Some(r) = t.handle_input(now, data)
            && let Some(relayed) = t.relayed()
        {
            let inner = data[r.data].to_vec();
            self.peer_input(now, Route::Relay(relayed), r.peer, &inner);
        }
        self.pump(now);
    }

    /// Our TCP stream to the TURN server at `from` closed: an allocation over it is gone.
    pub fn relay_stream_closed(&mut self, now: Instant, from: SocketAddr) {
        if self.relay_race.as_ref().is_some_and(|t| t.server() == from) {
            self.relay_race = None;
        } else if self.relay_stream
            && matches!(&self.relay, Relay::Up(t) | Relay::Allocating(t) if t.server() == from)
        {
            tracing::warn!("the TCP connection to the relay closed: calls go without a relay");
            self.relay = Relay::Failed;
        }
        self.pump(now);
    }

    /// A TCP stream to a relay no allocation uses any more (a race's loser): the driver
    /// closes it once what is queued on it is written.
    #[must_use]
    pub fn poll_relay_stream_close(&mut self) -> Option<SocketAddr> {
        self.close_streams.pop_front()
    }

    /// A TCP stream to a supernode the agent no longer uses: the driver closes it.
    #[must_use]
    pub fn poll_stream_close(&mut self) -> Option<SocketAddr> {
        self.agent.poll_stream_close()
    }

    /// A datagram from a peer (directly or through our relay): a check or media.
    fn peer_input(&mut self, now: Instant, route: Route, from: SocketAddr, data: &[u8]) {
        if demux::classify(data) == demux::Kind::Media {
            let Some(call) = self.call_for_media(route, from, data) else {
                return;
            };
            let m = self.media.get_mut(&call).expect("listed");
            m.session.handle_input(now, data);
            if !m.connected && m.session.stats().received.accepted > 0 {
                m.connected = true;
                let sas = m.sas.clone();
                let path = self.phone.ice(&call).and_then(|i| i.selected());
                self.events
                    .push_back(EndpointEvent::Connected { call, path, sas });
            }
        } else {
            self.phone.handle_input(now, route, from, data);
        }
    }

    /// Which call a media packet belongs to: the one whose path it came along, else the one
    /// whose peer stream it names (a packet on a path being switched to).
    fn call_for_media(&self, route: Route, from: SocketAddr, data: &[u8]) -> Option<CallId> {
        let on_path = self.media.keys().find(|c| {
            self.phone
                .ice(c)
                .and_then(|i| i.selected())
                .is_some_and(|p| p.route == route && p.remote == from)
        });
        if let Some(c) = on_path {
            return Some(*c);
        }
        let stream = media::stream_of(data)?;
        self.media
            .iter()
            .find(|(_, m)| m.session.streams().1 == Some(stream))
            .map(|(c, _)| *c)
            .or_else(|| (self.media.len() == 1).then(|| *self.media.keys().next().unwrap()))
    }

    /// The host address a datagram from `from` most likely arrived at.
    fn host_for(&self, from: SocketAddr) -> SocketAddr {
        self.hosts
            .iter()
            .find(|h| {
                h.is_ipv4() == from.is_ipv4() && h.ip().is_loopback() == from.ip().is_loopback()
            })
            .or_else(|| self.hosts.iter().find(|h| h.is_ipv4() == from.is_ipv4()))
            .or(self.hosts.first())
            .copied()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Whether the agent's supernode session for `addr` is framed on TCP.
    pub fn uses_stream(&self, addr: SocketAddr) -> bool {
        self.agent.uses_stream(addr)
    }

    pub fn stream_closed(&mut self, now: Instant, addr: SocketAddr) {
        self.agent.stream_closed(now, addr);
        self.pump(now);
    }

    /// See [`Agent::poll_stream_open`].
    #[must_use]
    pub fn poll_stream_open(&mut self) -> Option<SocketAddr> {
        self.agent.poll_stream_open()
    }

    /// See [`Agent::stream_connected`].
    pub fn stream_connected(&mut self, now: Instant, addr: SocketAddr) {
        self.agent.stream_connected(now, addr);
        self.pump(now);
    }

    // ------------------------------------------------------------------ timers

    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let relay = match &self.relay {
            Relay::Up(t) | Relay::Allocating(t) => t.poll_timeout(),
            _ => None,
        };
        let race = [
            self.relay_race.as_ref().and_then(|t| t.poll_timeout()),
            self.relay_race_at.as_ref().map(|(t, _)| *t),
        ]
        .into_iter()
        .flatten()
        .min();
        let trials = self
            .trials
            .iter()
            .filter_map(|t| t.turn.poll_timeout())
            .chain(
                self.first_up
                    .filter(|_| !self.ranked)
                    .map(|t| t + RANK_WAIT),
            )
            .min();
        let media = self
            .media
            .values()
            .filter_map(|m| m.session.poll_timeout())
            .min();
        [
            self.agent.poll_timeout(),
            self.phone.poll_timeout(),
            relay,
            race,
            trials,
            media,
            self.srflx.map(|(_, _, t, _)| t),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.agent.handle_timeout(now);
        self.phone.handle_timeout(now);
        if let Relay::Up(t) | Relay::Allocating(t) = &mut self.relay
            && t.poll_timeout().is_some_and(|d| d <= now)
        {
            t.handle_timeout(now);
        }
        if let Some(t) = &mut self.relay_race
            && t.poll_timeout().is_some_and(|d| d <= now)
        {
            t.handle_timeout(now);
        }
        for t in &mut self.trials {
            if t.turn.poll_timeout().is_some_and(|d| d <= now) {
                t.turn.handle_timeout(now);
            }
        }
        if self.relay_race_at.as_ref().is_some_and(|(t, _)| *t <= now)
            && let Some((_, cfg)) = self.relay_race_at.take()
            && matches!(self.relay, Relay::Allocating(_))
            && !self.relay_heard
        {
            // No answer over UDP within its head start: race an allocation over TCP.
            tracing::info!("no answer from the relay over UDP yet; racing TCP");
            let mut t = TurnClient::new(cfg);
            t.allocate(now);
            self.relay_race = Some(Box::new(t));
        }
        for m in self.media.values_mut() {
            if m.session.poll_timeout().is_some_and(|d| d <= now) {
                m.session.handle_timeout(now);
            }
        }
        if let Some((_, server, t, sent)) = self.srflx
            && t <= now
        {
            if sent >= SRFLX_ATTEMPTS {
                self.srflx = None;
            } else {
                self.send_srflx(now, server, sent);
            }
        }
        self.pump(now);
    }

    // ------------------------------------------------------------------ outputs

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The agent's datagrams go out separately: the driver sends those for a TCP-framed
    /// supernode on its stream.
    #[must_use]
    pub fn poll_agent_transmit(&mut self) -> Option<crate::session::Transmit> {
        self.agent.poll_transmit()
    }

    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.agent.recycle(buf);
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        if self.config.media.trace {
            for (call, m) in &mut self.media {
                while let Some(record) = m.session.poll_trace() {
                    self.events.push_back(EndpointEvent::Trace {
                        call: *call,
                        record,
                    });
                }
            }
        }
        self.events.pop_front()
    }

    // ------------------------------------------------------------------ plumbing

    /// Moves everything between the parts until nothing moves.
    fn pump(&mut self, now: Instant) {
        for _ in 0..64 {
            let mut moved = false;
            while let Some(ev) = self.agent.poll_event() {
                moved = true;
                self.on_agent_event(now, ev);
            }
            while let Some(out) = self.phone.poll_signal() {
                moved = true;
                let id = self.agent.route(now, out.to, out.payload);
                self.routes.insert(id, out.tag);
            }
            while let Some(ev) = self.phone.poll_event() {
                moved = true;
                self.on_phone_event(now, ev);
            }
            if self.pump_relay(now) {
                moved = true;
            }
            while let Some(t) = self.phone.poll_transmit() {
                moved = true;
                self.send_on(now, t.route, t.to, t.data);
            }
            let calls: Vec<CallId> = self.media.keys().copied().collect();
            for call in calls {
                let path = self.phone.ice(&call).and_then(|i| i.selected());
                let talking = self.phone.is_talking(&call);
                let m = self.media.get_mut(&call).expect("listed");
                let mut packets = Vec::new();
                while let Some(p) = m.session.poll_transmit() {
                    packets.push(p);
                }
                while let Some(ev) = m.session.poll_event() {
                    moved = true;
                    self.events.push_back(match ev {
                        media::Event::Dtmf(digit) => EndpointEvent::Dtmf { call, digit },
                        media::Event::Report(report) => EndpointEvent::Report { call, report },
                    });
                }
                // Media without a path, or on hold, is dropped (the peer conceals the gap).
                if let (Some(p), true) = (path, talking) {
                    for data in packets {
                        moved = true;
                        self.send_on(now, p.route, p.remote, data);
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Sends `data` to `to` along `route`: from the socket, or through the relay.
    fn send_on(&mut self, now: Instant, route: Route, to: SocketAddr, data: Vec<u8>) {
        match route {
            Route::Direct(_) => self.out.push_back(Transmit::new(to, data)),
            Route::Relay(relayed) => {
                if let Some(t) = self.turn_for(relayed) {
                    // Media through the relay gets a channel (4 bytes of overhead, not 36).
                    if demux::classify(&data) == demux::Kind::Media && t.channel_of(to).is_none() {
                        t.bind_channel(now, to);
                    }
                    if let Err(e) = t.send_to(to, &data) {
                        tracing::debug!("relay cannot send to {to}: {e}");
                    }
                }
            }
        }
    }

    fn on_agent_event(&mut self, now: Instant, ev: AgentEvent) {
        match ev {
            AgentEvent::Routed { to, id, result } => {
                if let Some(tag) = self.routes.remove(&id) {
                    let result = result.map_err(|e| {
                        let (code, reason) = e.split_once(' ').unwrap_or(("504", e.as_str()));
                        RouteError {
                            code: code.parse().unwrap_or(504),
                            reason: reason.to_string(),
                        }
                    });
                    self.phone.handle_route_result(now, tag, result);
                } else {
                    self.events
                        .push_back(EndpointEvent::Agent(AgentEvent::Routed { to, id, result }));
                }
            }
            AgentEvent::Delivered { from, payload, id } => {
                let reply = self.phone.handle_signal(now, from, &payload);
                self.agent.acknowledge(now, id, reply);
            }
            AgentEvent::Relays(Ok(offers)) => match self.replenish.take() {
                Some(exclude) => self.on_standby_offers(now, &offers, &exclude),
                None => self.on_relay_offers(now, &offers),
            },
            AgentEvent::Relays(Err(e)) => {
                if self.replenish.take().is_some() {
                    tracing::info!("no new standby relay: {e}");
                } else if matches!(self.relay, Relay::Asked) {
                    tracing::info!("no relay: {e}");
                    self.relay = Relay::Failed;
                }
            }
            AgentEvent::Registered { addr, .. } => {
                // Our mapping as the supernode sees it, from the call socket.
                self.send_srflx(now, addr, 0);
                self.events.push_back(EndpointEvent::Agent(ev));
            }
            other => self.events.push_back(EndpointEvent::Agent(other)),
        }
    }

    fn on_phone_event(&mut self, now: Instant, ev: PhoneEvent) {
        match ev {
            PhoneEvent::Keys { call, keys } => {
                let outgoing = self.phone.peer(&call).is_some_and(|(_, out)| out);
                // Our e2e keys are (send, receive); the media layer names them by direction.
                let (i2r, r2i) = if outgoing {
                    (*keys.send, *keys.recv)
                } else {
                    (*keys.recv, *keys.send)
                };
                let role = if outgoing {
                    media::Role::Initiator
                } else {
                    media::Role::Responder
                };
                let mut cfg = self.config.media.clone();
                cfg.stream = rand::random();
                match MediaSession::new(now, &media::MediaKeys::new(i2r, r2i), role, cfg) {
                    Ok(session) => {
                        self.media.insert(
                            call,
                            CallMedia {
                                session,
                                sas: keys.sas.clone(),
                                connected: false,
                            },
                        );
                    }
                    Err(e) => {
                        self.phone.fail(now, call, &format!("media: {e}"));
                    }
                }
            }
            PhoneEvent::Incoming { call, from } => {
                self.want_relay(now);
                self.events
                    .push_back(EndpointEvent::Incoming { call, from });
            }
            PhoneEvent::Ringing { call } => self.events.push_back(EndpointEvent::Ringing { call }),
            PhoneEvent::Answered { call } => {
                self.events.push_back(EndpointEvent::Answered { call })
            }
            PhoneEvent::Path { call, path, reason } => {
                if let Route::Relay(a) = path.route {
                    self.on_standby_used(now, a);
                }
                // A new remote: measure the relays' round trips to it (a renamed one is not).
                if reason.is_some_and(|r| r != ChangeReason::Renamed) {
                    self.probe_relays(now, path.remote);
                }
                // The checks' round trip is the path's unloaded one: the rate controller's
                // baseline for telling a filling queue (a call that starts into a full one
                // would otherwise never see the baseline).
                if let (Some(m), Some(rtt)) = (self.media.get_mut(&call), path.rtt) {
                    m.session.note_path_rtt(rtt);
                }
                self.events
                    .push_back(EndpointEvent::Path { call, path, reason });
            }
            PhoneEvent::PathLost { call } => {
                self.events.push_back(EndpointEvent::PathLost { call })
            }
            PhoneEvent::RelayPermission { relayed, peer } => {
                if let Some(t) = self.turn_for(relayed)
                    && !t.has_permission(peer.ip())
                {
                    t.create_permission(now, peer);
                }
            }
            PhoneEvent::Restarted { .. } => {
                // Our mapping may have moved: ask again from the call socket.
                if let Some((_, addr)) = self.agent.primary() {
                    self.send_srflx(now, addr, 0);
                }
            }
            PhoneEvent::Held { call, held } => {
                self.events.push_back(EndpointEvent::Held { call, held })
            }
            PhoneEvent::Ended { call, reason } => {
                if let Some(m) = self.media.remove(&call) {
                    let stats = Box::new(m.session.stats());
                    self.events.push_back(EndpointEvent::Stats { call, stats });
                }
                self.events.push_back(EndpointEvent::Ended { call, reason });
            }
        }
    }

    // ------------------------------------------------------------------ relay

    /// Starts getting a relay allocation, once per endpoint.
    fn want_relay(&mut self, now: Instant) {
        if self.config.relay && matches!(self.relay, Relay::None) {
            self.relay = Relay::Asked;
            self.agent.relays(now);
        }
    }

    fn on_relay_offers(&mut self, now: Instant, offers: &[RelayOffer]) {
        if !matches!(self.relay, Relay::Asked) {
            return;
        }
        let v4 = self.hosts.iter().any(|h| h.is_ipv4());
        let config = turn_config;
        // Our supernode answered over TCP only: UDP is most likely blocked here, so the relay
        // goes over TCP at once (waiting for UDP to fail would add its head start to the call).
        let tcp_first = self.agent.on_stream();
        let udp = if tcp_first {
            None
        } else {
            pick_relay(offers, v4)
        };
        let (cfg, stream) = match udp {
            Some((offer, server)) => {
                if let Some(tcp) = tcp_address(offer, v4) {
                    self.relay_race_at =
                        Some((now + RELAY_UDP_HEAD_START, config(tcp, offer, true)));
                }
                (config(server, offer, false), false)
            }
            None => match pick_relay_tcp(offers, v4) {
                Some((offer, server)) => (config(server, offer, true), true),
                None => {
                    tracing::info!("no relay offered: calls go without one");
                    self.relay = Relay::Failed;
                    return;
                }
            },
        };
        let mut t = TurnClient::new(cfg);
        t.allocate(now);
        self.relay = Relay::Allocating(Box::new(t));
        self.relay_stream = stream;
        let first = udp
            .or_else(|| pick_relay_tcp(offers, v4))
            .map(|(o, _)| o.relay);
        self.relay_offer = first.and_then(|id| {
            let o = offers.iter().find(|o| o.relay == id)?;
            Some((o.relay, o.load))
        });
        if stream {
            return;
        }
        // The other relays, allocated in parallel to be measured; the ranking keeps one as
        // the standby.
        let mut others: Vec<(&RelayOffer, SocketAddr)> = offers
            .iter()
            .filter(|o| Some(o.relay) != first)
            .filter_map(|o| pick_relay(std::slice::from_ref(o), v4))
            .collect();
        others.sort_by_key(|(o, _)| (o.load, o.relay));
        for (offer, server) in others.into_iter().take(TRIALS - 1) {
            self.trials.push(Trial::start(now, server, offer));
        }
        self.ranked = self.trials.is_empty();
    }

    /// The allocation (chosen or standby) whose relayed address is `relayed`.
    fn turn_for(&mut self, relayed: SocketAddr) -> Option<&mut TurnClient> {
        if let Relay::Up(t) = &mut self.relay
            && t.relayed() == Some(relayed)
        {
            return Some(t);
        }
        self.trials
            .iter_mut()
            .map(|t| &mut *t.turn)
            .find(|t| t.relayed() == Some(relayed))
    }

    /// Moves the trial allocations' output and events; true if anything moved. After the
    /// ranking, a new standby that comes up becomes a candidate, and a standby that stops
    /// answering (a transaction timed out: its relay is gone) is dropped and replaced.
    fn pump_trials(&mut self, now: Instant) -> bool {
        let mut moved = false;
        let mut came_up = Vec::new();
        for t in &mut self.trials {
            while let Some(tx) = t.turn.poll_transmit() {
                moved = true;
                self.out.push_back(tx);
            }
            while let Some(ev) = t.turn.poll_event() {
                moved = true;
                match ev {
                    TurnEvent::Allocated { relayed, .. } => {
                        t.up = true;
                        self.first_up.get_or_insert(now);
                        came_up.push((relayed, t.turn.server()));
                    }
                    TurnEvent::Failed { op, code, reason } => {
                        tracing::debug!("relay {}: {op:?} failed: {code} {reason}", t.relay);
                        t.failed |= op == crate::turn::client::Op::Allocate || (t.up && code == 0);
                    }
                    other => tracing::debug!("relay {}: {other:?}", t.relay),
                }
            }
        }
        let gone: Vec<(Option<SocketAddr>, UserId)> = self
            .trials
            .iter()
            .filter(|t| t.failed)
            .map(|t| (t.turn.relayed().filter(|_| t.up), t.relay))
            .collect();
        self.trials.retain(|t| !t.failed);
        if !self.ranked {
            return moved | !gone.is_empty();
        }
        for (relayed, server) in came_up {
            tracing::info!("a new standby relay is up at {server}");
            self.phone
                .add_local_candidate(now, LocalCandidate::Relayed(relayed));
            self.events
                .push_back(EndpointEvent::Relay { relayed, server });
        }
        for (relayed, relay) in &gone {
            if let Some(relayed) = relayed {
                tracing::info!("the standby relay {relay} stopped answering: dropped");
                self.phone.remove_local_candidate(now, *relayed);
            }
        }
        if !gone.is_empty() {
            self.want_standby(now, gone.into_iter().map(|(_, r)| r).collect());
            moved = true;
        }
        moved
    }

    /// Asks for offers for a new standby relay (none held now), not on `exclude`.
    fn want_standby(&mut self, now: Instant, exclude: Vec<UserId>) {
        if self.config.relay
            && !self.relay_stream
            && self.replenish.is_none()
            && self.trials.is_empty()
            && matches!(self.relay, Relay::Up(_))
        {
            self.replenish = Some(exclude);
            self.agent.relays(now);
        }
    }

    /// Offers for a new standby: allocates on the least loaded one that is neither the active
    /// relay nor excluded (its candidate goes to ICE once allocated).
    fn on_standby_offers(&mut self, now: Instant, offers: &[RelayOffer], exclude: &[UserId]) {
        let v4 = self.hosts.iter().any(|h| h.is_ipv4());
        let active = self.relay_offer.map(|(id, _)| id);
        let pick = offers
            .iter()
            .filter(|o| Some(o.relay) != active && !exclude.contains(&o.relay))
            .filter_map(|o| pick_relay(std::slice::from_ref(o), v4))
            .min_by_key(|(o, _)| (o.load, o.relay));
        let Some((offer, server)) = pick else {
            tracing::info!("no other relay offered: no standby for now");
            return;
        };
        self.trials.push(Trial::start(now, server, offer));
    }

    /// A call's path changed (to `peer`): a relay of ours may have died. Each allocation is
    /// asked to refresh the permission for the peer; one whose relay is gone times out and is
    /// replaced ([`Endpoint::pump_trials`], [`Endpoint::pump_relay`]).
    fn probe_relays(&mut self, now: Instant, peer: SocketAddr) {
        if self.relay_stream || !self.ranked {
            return;
        }
        if let Relay::Up(t) = &mut self.relay {
            t.create_permission(now, peer);
        }
        for t in self.trials.iter_mut().filter(|t| t.up) {
            t.turn.create_permission(now, peer);
        }
    }

    /// A call's path now runs through our allocation `relayed`: if that is the standby's,
    /// the standby is the active relay now (the old one's path was lost, or the peer chose
    /// this one), and the old allocation the standby.
    fn on_standby_used(&mut self, _now: Instant, relayed: SocketAddr) {
        if self.relay_stream || !self.ranked {
            return;
        }
        let Some(i) = self
            .trials
            .iter()
            .position(|t| t.up && t.turn.relayed() == Some(relayed))
        else {
            return;
        };
        let won = self.trials.remove(i);
        tracing::info!("the call moved to the standby relay {}", won.relay);
        let old = std::mem::replace(&mut self.relay, Relay::Up(won.turn));
        let old_offer = self.relay_offer.replace((won.relay, won.load));
        if let (Relay::Up(turn), Some((relay, load))) = (old, old_offer) {
            self.trials.push(Trial::standby(turn, relay, load));
        }
    }

    /// Ranks the measured relays once all answered, or [`RANK_WAIT`] after the first did: the
    /// best carries calls, the second stands by, both become ICE candidates in that order.
    fn maybe_rank(&mut self, now: Instant) -> bool {
        if self.ranked {
            return false;
        }
        let primary_done = !matches!(self.relay, Relay::Allocating(_));
        let all_done = primary_done && self.trials.iter().all(|t| t.up);
        let waited = self.first_up.is_some_and(|t| now >= t + RANK_WAIT);
        if !(all_done || waited) {
            return false;
        }
        if self.relay_stream && matches!(self.relay, Relay::Up(_) | Relay::Allocating(_)) {
            // The first relay answered over TCP: UDP is blocked here, the trials are moot.
            for mut t in std::mem::take(&mut self.trials) {
                t.turn.release(now);
            }
            self.ranked = true;
            self.add_relayed_candidates(now);
            return true;
        }
        self.ranked = true;
        let mut measured = Vec::new();
        if let (Relay::Up(t), Some((relay, load))) = (&self.relay, self.relay_offer) {
            measured.push(measure(relay, load, t, now));
        }
        for t in self.trials.iter().filter(|t| t.up) {
            measured.push(measure(t.relay, t.load, &t.turn, now));
        }
        let ranking = relay_rank::rank(measured);
        let Some(best) = ranking.first().map(|s| s.m.server) else {
            // Nothing measured: the first allocation's own outcome decides, as without trials.
            return true;
        };
        let standby = ranking.get(1).map(|s| s.m.server);
        let primary_server = match &self.relay {
            Relay::Up(t) => Some(t.server()),
            _ => None,
        };
        if primary_server != Some(best) {
            // A trial won: it becomes the relay; the first allocation becomes a trial (it may
            // be the standby) or, still allocating or failed, is dropped with its TCP race.
            let i = self
                .trials
                .iter()
                .position(|t| t.turn.server() == best)
                .expect("ranked trials are listed");
            let won = self.trials.remove(i);
            self.relay_race_at = None;
            if let Some(mut r) = self.relay_race.take() {
                r.release(now);
                self.flush_race(&mut r);
                self.close_streams.push_back(r.server());
            }
            let old = std::mem::replace(&mut self.relay, Relay::Up(won.turn));
            let old_offer = self.relay_offer.replace((won.relay, won.load));
            match (old, old_offer) {
                (Relay::Up(turn), Some((relay, load))) => {
                    self.trials.push(Trial::standby(turn, relay, load))
                }
                (Relay::Allocating(mut turn), _) => {
                    turn.release(now);
                    while let Some(tx) = turn.poll_transmit() {
                        self.out.push_back(tx);
                    }
                }
                _ => {}
            }
        }
        // Everything but the standby is released.
        let (keep, drop): (Vec<Trial>, Vec<Trial>) = std::mem::take(&mut self.trials)
            .into_iter()
            .partition(|t| Some(t.turn.server()) == standby);
        for mut t in drop {
            t.turn.release(now);
            while let Some(tx) = t.turn.poll_transmit() {
                self.out.push_back(tx);
            }
        }
        self.trials = keep;
        self.events
            .push_back(EndpointEvent::RelayChoice { ranking });
        self.add_relayed_candidates(now);
        true
    }

    /// Gives ICE the chosen relay's candidate, then the standby's (ranked below it).
    fn add_relayed_candidates(&mut self, now: Instant) {
        if let Relay::Up(t) = &self.relay
            && let Some(relayed) = t.relayed()
        {
            let server = t.server();
            self.phone
                .add_local_candidate(now, LocalCandidate::Relayed(relayed));
            self.events
                .push_back(EndpointEvent::Relay { relayed, server });
        }
        let standby: Vec<SocketAddr> = self
            .trials
            .iter()
            .filter(|t| t.up)
            .filter_map(|t| t.turn.relayed())
            .collect();
        for relayed in standby {
            self.phone
                .add_local_candidate(now, LocalCandidate::Relayed(relayed));
        }
    }

    /// Moves the TURN clients' output and events; true if anything moved.
    fn pump_relay(&mut self, now: Instant) -> bool {
        let mut moved = self.pump_relay_race(now);
        moved |= self.pump_trials(now);
        let mut allocated = None;
        let mut failed = false;
        let mut gone = false;
        let socket = if self.relay_stream {
            crate::transmit::STREAM
        } else {
            crate::transmit::UDP
        };
        if let Relay::Up(t) | Relay::Allocating(t) = &mut self.relay {
            while let Some(mut tx) = t.poll_transmit() {
                moved = true;
                tx.socket = socket;
                self.out.push_back(tx);
            }
            while let Some(ev) = t.poll_event() {
                moved = true;
                match ev {
                    TurnEvent::Allocated { relayed, .. } => allocated = Some((relayed, t.server())),
                    TurnEvent::Failed { op, code, reason } => {
                        // A refused permission is routine: ICE pairs our relay with every
                        // candidate of the peer, private and relayed ones included. A
                        // timeout (code 0) of an allocation that is up: the relay is gone.
                        tracing::debug!("relay: {op:?} failed: {code} {reason}");
                        failed |= op == crate::turn::client::Op::Allocate;
                        gone |= code == 0 && t.relayed().is_some() && !self.relay_stream;
                    }
                    other => tracing::debug!("relay: {other:?}"),
                }
            }
        }
        if let Some((relayed, server)) = allocated
            && let Relay::Allocating(t) = std::mem::replace(&mut self.relay, Relay::None)
        {
            // This allocation won: a TCP one racing it (or about to) is not needed.
            self.relay_race_at = None;
            if let Some(mut r) = self.relay_race.take() {
                r.release(now);
                self.flush_race(&mut r);
                self.close_streams.push_back(r.server());
            }
            self.relay_up(now, t, relayed, server);
        }
        if failed {
            if let Some(r) = self.relay_race.take() {
                // UDP failed outright while TCP is still trying: TCP carries on alone.
                self.relay = Relay::Allocating(r);
                self.relay_stream = true;
            } else if let Some((_, cfg)) = self.relay_race_at.take() {
                let mut t = TurnClient::new(cfg);
                t.allocate(now);
                self.relay = Relay::Allocating(Box::new(t));
                self.relay_stream = true;
            } else {
                if self.trials.is_empty() {
                    tracing::warn!("the relay allocation failed: calls go without a relay");
                } else {
                    tracing::info!("the first relay's allocation failed: the others are measured");
                }
                if self.relay_stream
                    && let Relay::Up(t) | Relay::Allocating(t) = &self.relay
                {
                    self.close_streams.push_back(t.server());
                }
                self.relay = Relay::Failed;
            }
            moved = true;
        }
        if gone && self.ranked {
            moved = true;
            self.on_active_relay_gone(now);
        }
        moved | self.maybe_rank(now)
    }

    /// The active relay stopped answering: the standby (if up) takes its place, the dead
    /// allocation's candidate goes, and a new standby is asked for.
    fn on_active_relay_gone(&mut self, now: Instant) {
        let Some(i) = self.trials.iter().position(|t| t.up) else {
            tracing::warn!("the relay stopped answering and no standby is up");
            return;
        };
        let won = self.trials.remove(i);
        let dead = self.relay_offer.replace((won.relay, won.load));
        if let Relay::Up(t) = std::mem::replace(&mut self.relay, Relay::Up(won.turn)) {
            if let Some(relayed) = t.relayed() {
                self.phone.remove_local_candidate(now, relayed);
            }
        }
        tracing::info!(
            "the active relay stopped answering: {} takes its place",
            won.relay
        );
        self.want_standby(now, dead.map(|(id, _)| id).into_iter().collect());
    }

    /// Queues what the racing TCP client wants sent.
    /// Our allocation `t` is up at `relayed`: it becomes the relay, and once the offers are
    /// ranked its relayed candidate goes to the calls and the program hears of it.
    fn relay_up(
        &mut self,
        now: Instant,
        t: Box<TurnClient>,
        relayed: SocketAddr,
        server: SocketAddr,
    ) {
        self.relay = Relay::Up(t);
        self.first_up.get_or_insert(now);
        if self.ranked {
            self.phone
                .add_local_candidate(now, LocalCandidate::Relayed(relayed));
            self.events
                .push_back(EndpointEvent::Relay { relayed, server });
        }
    }

    fn flush_race(&mut self, t: &mut TurnClient) {
        while let Some(mut tx) = t.poll_transmit() {
            tx.socket = crate::transmit::STREAM;
            self.out.push_back(tx);
        }
    }

    /// Moves the racing TCP allocation's output and events: when it allocates before the UDP
    /// one, it becomes the relay and the UDP attempt is dropped. True if anything moved.
    fn pump_relay_race(&mut self, now: Instant) -> bool {
        let Some(mut t) = self.relay_race.take() else {
            return false;
        };
        let mut moved = false;
        self.flush_race(&mut t);
        let mut won = None;
        let mut failed = false;
        while let Some(ev) = t.poll_event() {
            moved = true;
            match ev {
                TurnEvent::Allocated { relayed, .. } => won = Some(relayed),
                TurnEvent::Failed {
                    op: crate::turn::client::Op::Allocate,
                    code,
                    reason,
                } => {
                    tracing::info!("relay over TCP: allocation failed: {code} {reason}");
                    failed = true;
                }
                other => tracing::debug!("relay over TCP: {other:?}"),
            }
        }
        if failed {
            self.close_streams.push_back(t.server());
            return true;
        }
        match won {
            Some(relayed) if matches!(self.relay, Relay::Allocating(_)) => {
                tracing::info!("the relay answered over TCP first; UDP allocation dropped");
                if let Relay::Allocating(mut udp) = std::mem::replace(&mut self.relay, Relay::None)
                {
                    // Nothing reached us over UDP: releasing it would most likely be lost
                    // too; an allocation it made anyway expires on its own.
                    udp.release(now);
                    while let Some(tx) = udp.poll_transmit() {
                        self.out.push_back(tx);
                    }
                }
                let server = t.server();
                self.relay_stream = true;
                self.relay_up(now, t, relayed, server);
                true
            }
            Some(_) => {
                // Too late: UDP is already up.
                t.release(now);
                self.flush_race(&mut t);
                self.close_streams.push_back(t.server());
                true
            }
            None => {
                self.relay_race = Some(t);
                moved
            }
        }
    }

    // ------------------------------------------------------------------ server-reflexive

    fn send_srflx(&mut self, now: Instant, server: SocketAddr, sent: u32) {
        if self.config.relay_only {
            return;
        }
        let txid = match self.srflx {
            Some((t, s, _, _)) if s == server && sent > 0 => t,
            _ => TransactionId::random(),
        };
        let mut data = Vec::with_capacity(28);
        let m = MessageBuilder::new(&mut data, method::BINDING, Class::Request, txid);
        m.fingerprint();
        self.out.push_back(Transmit::new(server, data));
        self.srflx = Some((txid, server, now + SRFLX_RTO * 2u32.pow(sent), sent + 1));
    }

    fn is_srflx_answer(&self, data: &[u8]) -> bool {
        let Some((txid, ..)) = self.srflx else {
            return false;
        };
        Message::parse(data).is_ok_and(|m| {
            m.transaction_id() == txid
                && m.method() == method::BINDING
                && m.class() == Class::Success
        })
    }

    fn on_srflx_answer(&mut self, now: Instant, data: &[u8]) {
        self.srflx = None;
        let Ok(m) = Message::parse(data) else { return };
        let Some(mapped) = m.reflexive_address() else {
            return;
        };
        if self.hosts.contains(&mapped) {
            return; // no NAT: the host candidate is the same address
        }
        let base = self.host_for(mapped);
        self.phone
            .add_local_candidate(now, LocalCandidate::ServerReflexive { addr: mapped, base });
    }
}

/// A TURN client's settings for `offer` at `server` (over a stream or not).
fn turn_config(server: SocketAddr, offer: &RelayOffer, stream: bool) -> TurnClientConfig {
    let mut cfg = TurnClientConfig::new(server, &offer.username, &offer.password);
    cfg.software = Some(concat!("voxmesh ", env!("CARGO_PKG_VERSION")).to_string());
    cfg.stream = stream;
    cfg
}

/// What the ranking needs of an allocation: our round trip to its relay (the smallest sample;
/// half the time since the client was made is never used, an allocation over UDP always has
/// one), the relay's reported load.
fn measure(relay: UserId, load: u32, t: &TurnClient, _now: Instant) -> Measured {
    Measured {
        relay,
        server: t.server(),
        rtt: t.min_rtt().unwrap_or(Duration::from_secs(1)),
        far_rtt: None,
        load,
    }
}

/// The TCP address of `offer` of our family, if it serves TCP.
fn tcp_address(offer: &RelayOffer, v4: bool) -> Option<SocketAddr> {
    offer
        .tcp
        .iter()
        .find(|a| a.is_ipv4() == v4 && !a.ip().is_unspecified())
        .copied()
}

/// The relay to use over TCP (UDP is blocked here): like [`pick_relay`], among offers with a
/// TCP address of our family.
pub fn pick_relay_tcp(offers: &[RelayOffer], v4: bool) -> Option<(&RelayOffer, SocketAddr)> {
    offers
        .iter()
        .filter_map(|o| tcp_address(o, v4).map(|a| (o, a)))
        .min_by_key(|(o, _)| (o.load, o.relay.as_bytes().to_vec()))
}

/// The relay to use: among offers with a UDP address of our family, the least loaded, then the
/// lowest relay ID. Returns the offer and the address to allocate on.
pub fn pick_relay(offers: &[RelayOffer], v4: bool) -> Option<(&RelayOffer, SocketAddr)> {
    offers
        .iter()
        .filter_map(|o| {
            o.udp
                .iter()
                .find(|a| {
                    a.is_ipv4() == v4 && !matches!(a.ip(), IpAddr::V4(ip) if ip.is_unspecified())
                })
                .map(|a| (o, *a))
        })
        .min_by_key(|(o, _)| (o.load, o.relay.as_bytes().to_vec()))
}
