//! The session endpoint: every session of one UDP socket, as a sans-IO state machine.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use snow::HandshakeState;

use super::cookie::{CookieJar, MacKeys, RateLimiter, mac, open_cookie, seal_cookie};
use super::counters::{Counters, Refusal};
use super::crypto::{HandshakeCryptoError, KeyEpochs, Local, OpenError, TransportKeys};
use super::defaults::Config;
use super::replay::{ReplayError, ReplayWindow};
use super::wire::{self, inner, u32_at, u64_at};
use crate::identity::{Binding, BindingError, Identity, NodeKey, PublicKey, UserId};
use crate::stun::timers::RttEstimator;

/// A session's handle: the index the peer puts in frames addressed to us. Random, so handles are
/// never reused in practice and reveal nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u32);

/// A request's 96-bit random ID (like STUN's, RFC 8489 §5: random so an off-path attacker
/// cannot guess it).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionId(pub [u8; 12]);

impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Txn({})", crate::identity::text::encode("t", &self.0))
    }
}

/// Our side of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

/// The authenticated other end of a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub id: UserId,
    pub identity: PublicKey,
    /// Where its last authenticated frame came from.
    pub addr: SocketAddr,
    pub role: Role,
}

pub use crate::transmit::Transmit;

/// What happened, for the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A session is established: the initiator received the handshake answer, or the responder
    /// received the initiator's first transport frame (key confirmation).
    Connected { session: SessionId, peer: Box<Peer> },
    /// An initiator's handshake failed; the session is gone.
    HandshakeFailed {
        session: SessionId,
        error: HandshakeError,
    },
    /// The peer asks something; answer with [`Endpoint::respond`].
    Request {
        session: SessionId,
        txn: TransactionId,
        body: Vec<u8>,
    },
    /// The answer to one of our requests.
    Response {
        session: SessionId,
        txn: TransactionId,
        body: Vec<u8>,
    },
    /// One of our requests got no answer.
    TransactionFailed {
        session: SessionId,
        txn: TransactionId,
        error: TransactionError,
    },
    /// An unreliable message from the peer ([`Endpoint::send`]).
    Message { session: SessionId, body: Vec<u8> },
    /// The session is gone. `peer` is who it authenticated, so the application needs no map of
    /// its own from sessions to peers.
    Closed {
        session: SessionId,
        peer: Option<UserId>,
        reason: CloseReason,
    },
}

/// Why an initiator's handshake failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// No valid answer within `Config::handshake_timeout`. The node is down or unreachable over
    /// UDP, or it does not hold the key in its node key: check the bootstrap entry.
    #[error(
        "no valid answer after {attempts} attempts: the node is unreachable, or its key is not the one in the bootstrap entry"
    )]
    TimedOut { attempts: u32 },
    /// The responder proved it holds the expected Noise key, but its binding to an identity does
    /// not verify. Its key material is broken or tampered with.
    #[error("the responder's Noise key is not bound to its identity: {0}")]
    Binding(BindingError),
    /// The responder holds the Noise key but is bound to another identity than the node key
    /// names: a wrong or outdated bootstrap entry.
    #[error("the responder is {found}, not {expected}")]
    IdentityMismatch { expected: UserId, found: UserId },
    /// The responder refused our binding (our key file's binding does not verify for it).
    #[error("the responder refused our identity binding")]
    RefusedByPeer,
}

/// Why one of our requests failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    /// No answer after this many sends (or `Config::transaction_timeout`).
    #[error("no answer after {attempts} attempts")]
    TimedOut { attempts: u32 },
    /// The session closed (or its handshake failed) first.
    #[error("the session closed")]
    SessionClosed,
}

/// Why a session closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    /// Nothing received for `Config::idle_timeout`.
    #[error("idle timeout")]
    IdleTimeout,
    /// `Config::ping_attempts` keepalives went unanswered: the peer is gone or unreachable.
    #[error("peer unresponsive")]
    PeerUnresponsive,
    /// The peer closed it.
    #[error("closed by peer")]
    ClosedByPeer,
    /// The send nonce reached `Config::nonce_limit`: open a new session.
    #[error("nonce space exhausted")]
    NonceExhausted,
}

/// Why a session could not be opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// `Config::max_sessions` sessions exist already.
    #[error("too many sessions")]
    TooManySessions,
    /// An early request is refused as [`Endpoint::request`] would refuse it.
    #[error("early request: {0}")]
    Request(SendError),
}

/// Why a request, response or message could not be sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No such session (closed, failed, or never existed).
    #[error("no such session")]
    UnknownSession,
    /// The body does not fit in one frame (`Config::max_body`).
    #[error("body of {len} bytes exceeds {max}")]
    TooLarge { len: usize, max: usize },
    /// `Config::max_in_flight` requests are outstanding on this session: wait for answers.
    #[error("too many requests in flight")]
    TooManyInFlight,
    /// The handshake is still running and `Config::max_queued` messages wait for it.
    #[error("too many messages queued for the handshake")]
    QueueFull,
}

/// Bound on queued events and transmits (a driver drains both after every call).
const MAX_QUEUE: usize = 1 << 16;

struct Initiating {
    hs: HandshakeState,
    frame: Vec<u8>,
    expected: NodeKey,
    keys: MacKeys,
    cookie: Option<([u8; wire::MAC], Instant)>,
    sends: u32,
    first_sent: Instant,
    next: Instant,
    deadline: Instant,
    /// Sent more than once: an answer cannot be matched to one send (Karn), so no RTT sample.
    ambiguous: bool,
    /// Requests that ride in the initiation as early data.
    early: Vec<TransactionId>,
}

/// Where a session is. The handshake stages are boxed: they are short-lived, and an
/// established session (nearly all of a supernode's) should not carry their room.
enum Stage {
    Initiating(Box<Initiating>),
    /// Responder: answered, waiting for the initiator's first transport frame.
    Unconfirmed(Box<Unconfirmed>),
    Established,
}

/// An initiation whose early data was acted on.
struct EarlySeen {
    session: u32,
    /// Our answer, for a duplicate of the initiation (its first answer was lost).
    response: Vec<u8>,
}

struct Unconfirmed {
    response: Vec<u8>,
    ephemeral: [u8; 32],
    deadline: Instant,
    /// When the answer went out, for an RTT sample at confirmation; `None` once a duplicate
    /// was answered (Karn: the confirmation may answer either).
    answered_at: Option<Instant>,
    /// The initiator's identity key, for the `Connected` event at confirmation.
    identity: PublicKey,
}

struct OutTxn {
    body: Vec<u8>,
    sends: u32,
    first_sent: Option<Instant>,
    next: Option<Instant>,
    deadline: Option<Instant>,
}

struct Ping {
    attempts: u32,
    next: Instant,
}

/// Requests from the peer: unanswered ones, and answers kept for duplicates.
#[derive(Default)]
struct Inbound {
    /// `None` while the application has not answered.
    map: HashMap<TransactionId, Option<Vec<u8>>>,
    order: VecDeque<(Instant, TransactionId)>,
    unanswered: usize,
}

impl Inbound {
    fn expire(&mut self, now: Instant) {
        while let Some(&(t, id)) = self.order.front() {
            if t > now {
                break;
            }
            self.order.pop_front();
            self.remove(&id);
        }
    }

    fn remove(&mut self, id: &TransactionId) {
        if let Some(None) = self.map.remove(id) {
            self.unanswered -= 1;
        }
    }

    fn evict_oldest(&mut self) {
        if let Some((_, id)) = self.order.pop_front() {
            self.remove(&id);
        }
    }
}

/// The authenticated peer, as a session keeps it: its ID and the bytes of its identity key.
/// (A [`PublicKey`] also holds the decompressed point, 160 bytes more per session, and
/// nothing here verifies with it; [`Endpoint::peer`] rebuilds it when asked.)
#[derive(Clone, Copy)]
struct PeerKey {
    id: UserId,
    key: [u8; 32],
}

impl PeerKey {
    fn of(identity: &PublicKey) -> PeerKey {
        PeerKey {
            id: identity.id(),
            key: *identity.as_bytes(),
        }
    }
}

/// One session. Kept boxed in the session table, and lean: a supernode holds one per connected
/// client, so every byte here is multiplied by its clients.
struct Session {
    id: SessionId,
    role: Role,
    /// Where the peer's last authenticated frame came from (its [`Peer::addr`]).
    addr: SocketAddr,
    /// Which of the driver's transports carries this session (its frames' [`Transmit::socket`]):
    /// 0 the datagram socket; an initiator may pick another (the client's TCP stream to a
    /// supernode when UDP is blocked, see [`Endpoint::connect_via`]). Small: see above.
    socket: u8,
    remote_idx: u32,
    stage: Stage,
    peer: Option<PeerKey>,
    transport: Option<TransportKeys>,
    send_nonce: u64,
    replay: ReplayWindow,
    rtt: RttEstimator,
    last_recv: Instant,
    last_send: Instant,
    ping: Option<Ping>,
    out: BTreeMap<TransactionId, OutTxn>,
    /// Requests from the peer; allocated while there are any (most of the time a session has
    /// nothing unanswered and no answer cached, and then holds no memory for them).
    inbound: Option<Box<Inbound>>,
    /// Messages sent before the handshake finished; boxed (8 bytes instead of 32), as nearly
    /// every session is past it.
    #[allow(clippy::box_collection)]
    queued: Option<Box<VecDeque<Vec<u8>>>>,
    /// The deadline this session is filed under in the timer heap.
    scheduled: Option<Instant>,
    closing: Option<CloseReason>,
}

impl Session {
    fn new(id: SessionId, role: Role, addr: SocketAddr, stage: Stage, now: Instant) -> Session {
        Session {
            id,
            role,
            addr,
            socket: 0,
            remote_idx: 0,
            stage,
            peer: None,
            transport: None,
            send_nonce: 0,
            replay: ReplayWindow::default(),
            rtt: RttEstimator::default(),
            last_recv: now,
            last_send: now,
            ping: None,
            out: BTreeMap::new(),
            inbound: None,
            queued: None,
            scheduled: None,
            closing: None,
        }
    }

    /// Forgets cached answers past their time, and the cache itself once it is empty.
    fn expire_inbound(&mut self, now: Instant) {
        if let Some(inbound) = self.inbound.as_mut() {
            inbound.expire(now);
            if inbound.map.is_empty() {
                self.inbound = None;
            }
        }
    }

    /// The authenticated peer, rebuilt in full.
    fn peer(&self) -> Option<Peer> {
        let p = self.peer?;
        Some(Peer {
            id: p.id,
            identity: PublicKey::from_bytes(&p.key).ok()?,
            addr: self.addr,
            role: self.role,
        })
    }

    fn rto(&self, c: &Config, attempt: u32) -> Duration {
        let base = self.rtt.rto(c.rto_floor, c.rto_initial);
        (base * 2u32.saturating_pow(attempt.saturating_sub(1).min(16))).min(c.rto_max)
    }

    /// The earliest instant this session needs [`Endpoint::handle_timeout`]: timers are data.
    fn next_deadline(&self, c: &Config) -> Option<Instant> {
        match &self.stage {
            Stage::Initiating(i) => Some(i.next.min(i.deadline)),
            Stage::Unconfirmed(u) => Some(u.deadline),
            Stage::Established => {
                let mut t = self.last_recv + c.idle_timeout;
                match &self.ping {
                    Some(p) => t = t.min(p.next),
                    None if self.role == Role::Initiator => {
                        t = t.min(self.last_send + c.keepalive_interval)
                    }
                    None => {}
                }
                for o in self.out.values() {
                    if let Some(n) = o.next {
                        t = t.min(n);
                    }
                }
                if let Some(&(e, _)) = self.inbound.as_ref().and_then(|i| i.order.front()) {
                    t = t.min(e);
                }
                // The end of a rekey overlap, when the previous key is erased.
                if let Some(e) = self.transport.as_ref().and_then(|k| k.next_deadline()) {
                    t = t.min(e);
                }
                Some(t)
            }
        }
    }
}

/// The I/O side of the endpoint, split from the session table so both can be borrowed at once.
struct Io {
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    pool: Vec<Vec<u8>>,
    scratch: Vec<u8>,
    counters: Counters,
}

impl Io {
    fn buf(&mut self) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_default();
        b.clear();
        b
    }

    fn send(&mut self, to: SocketAddr, data: Vec<u8>) {
        self.send_via(0, to, data);
    }

    /// Queues `data` for `to` on the driver's transport number `socket`.
    fn send_via(&mut self, socket: u8, to: SocketAddr, data: Vec<u8>) {
        if self.transmits.len() >= MAX_QUEUE {
            self.counters.queue_overflows += 1;
            return;
        }
        self.counters.frames_out += 1;
        let mut t = Transmit::new(to, data);
        t.socket = socket as usize;
        self.transmits.push_back(t);
    }

    fn send_copy(&mut self, to: SocketAddr, data: &[u8]) {
        let mut b = self.buf();
        b.extend_from_slice(data);
        self.send(to, b);
    }

    fn event(&mut self, e: Event) {
        if self.events.len() >= MAX_QUEUE {
            self.counters.queue_overflows += 1;
            return;
        }
        self.events.push_back(e);
    }

    /// Encrypts one inner message onto the session. False when the nonce space is used up (the
    /// session is then marked for closing).
    fn seal(
        &mut self,
        c: &Config,
        s: &mut Session,
        now: Instant,
        kind: u8,
        txn: Option<&TransactionId>,
        body: &[u8],
    ) -> bool {
        let Some(keys) = s.transport.as_mut() else {
            return false;
        };
        // (A limit configured beyond the counter's 48 bits is held to them.)
        if s.send_nonce >= c.nonce_limit.min(wire::COUNTER_MAX) {
            s.closing.get_or_insert(CloseReason::NonceExhausted);
            return false;
        }
        let nonce = s.send_nonce;
        s.send_nonce += 1;
        self.scratch.clear();
        self.scratch.push(kind);
        if let Some(id) = txn {
            self.scratch.extend_from_slice(&id.0);
        }
        self.scratch.extend_from_slice(body);
        let mut buf = self.buf();
        buf.resize(wire::TRANSPORT_HEADER + self.scratch.len() + wire::TAG, 0);
        buf[0] = wire::TRANSPORT;
        buf[1..5].copy_from_slice(&s.remote_idx.to_be_bytes());
        match keys.seal(
            now,
            c,
            nonce,
            &self.scratch,
            &mut buf[wire::TRANSPORT_HEADER..],
        ) {
            Some((field, n, rekeyed)) => {
                buf[5..13].copy_from_slice(&field.to_be_bytes());
                buf.truncate(wire::TRANSPORT_HEADER + n);
                if rekeyed {
                    self.counters.rekeys += 1;
                }
            }
            None => return false,
        }
        s.last_send = now;
        self.send_via(s.socket, s.addr, buf);
        true
    }
}

/// All sessions of one socket: initiator and responder sides, handshakes, transactions,
/// keepalives, replay protection, cookies and rate limits.
///
/// # Driving it
///
/// Inputs: [`handle_input`](Self::handle_input) for each datagram whose first byte is in 4..=15
/// ([`super::is_session_frame`]), [`handle_timeout`](Self::handle_timeout) when
/// [`poll_timeout`](Self::poll_timeout)'s instant arrives, and the application's calls
/// ([`connect`](Self::connect), [`request`](Self::request), [`respond`](Self::respond),
/// [`send`](Self::send), [`close`](Self::close)). After each, drain in this order:
/// [`poll_transmit`](Self::poll_transmit) until `None` (send them), [`poll_event`](Self::poll_event)
/// until `None`, then [`poll_timeout`](Self::poll_timeout) for the next wake-up. Every input takes
/// `now`, and time only moves forward. Nothing here reads a clock or touches a socket.
///
/// A stream transport (the TCP/TLS fallback) carries the same frames with a 2-byte length prefix;
/// its driver calls the same methods with the stream's peer address.
pub struct Endpoint {
    config: Config,
    local: Local,
    id: UserId,
    node_key: NodeKey,
    rng: StdRng,
    /// Boxed: sessions are large, and a hash table keeps spare slots (up to half of them,
    /// right after it grows), which should cost a pointer each, not a session each.
    sessions: HashMap<u32, Box<Session>>,
    /// Responder handshakes awaiting confirmation, by initiator ephemeral key: duplicates of an
    /// initiation are answered from here without crypto.
    pending: HashMap<[u8; 32], u32>,
    /// Initiations whose early data we acted on, by initiator ephemeral key, until their
    /// clock could no longer pass (see [`Endpoint::connect_early`]): a duplicate is answered
    /// from here, a replay after its session is gone is refused.
    early_seen: HashMap<[u8; 32], EarlySeen>,
    early_order: VecDeque<(Instant, [u8; 32])>,
    /// Our wall clock: unix ms at an instant (see [`Endpoint::set_wall_clock`]).
    wall_clock: Option<(Instant, u64)>,
    timers: BinaryHeap<Reverse<(Instant, u32)>>,
    cookies: CookieJar,
    global_limit: RateLimiter,
    source_limit: RateLimiter,
    proven_limit: RateLimiter,
    io: Io,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint for `identity`. `seed` seeds the generator for indices, transaction IDs and
    /// cookie secrets: pass OS randomness (`rand::random()`) in production, a constant in tests.
    /// (Noise ephemeral keys always come from the OS.)
    pub fn new(config: Config, identity: &Identity, now: Instant, seed: [u8; 32]) -> Endpoint {
        let mut rng = StdRng::from_seed(seed);
        let r = &config.rate;
        let cookies = CookieJar::new(now, config.cookie_rotation, rng.random());
        let global_limit = RateLimiter::new(1, r.global_rate, r.global_burst, [0; 16]);
        // The per-source tables are only consulted for handshakes we answer: an endpoint that
        // accepts none (every client's) keeps one bucket rather than thousands (~200 KB).
        let buckets = if config.accept { r.buckets } else { 1 };
        let source_limit = RateLimiter::new(buckets, r.source_rate, r.source_burst, rng.random());
        let proven_limit = RateLimiter::new(buckets, r.proven_rate, r.proven_burst, rng.random());
        Endpoint {
            local: Local::new(identity),
            id: identity.id(),
            node_key: identity.node_key(),
            rng,
            sessions: HashMap::new(),
            pending: HashMap::new(),
            early_seen: HashMap::new(),
            early_order: VecDeque::new(),
            wall_clock: None,
            timers: BinaryHeap::new(),
            cookies,
            global_limit,
            source_limit,
            proven_limit,
            io: Io {
                transmits: VecDeque::new(),
                events: VecDeque::new(),
                pool: Vec::new(),
                scratch: Vec::with_capacity(config.max_frame),
                counters: Counters::default(),
            },
            config,
        }
    }

    // ---- getters ----

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn id(&self) -> UserId {
        self.id
    }

    /// What others need to connect to us.
    pub fn node_key(&self) -> NodeKey {
        self.node_key
    }

    pub fn counters(&self) -> &Counters {
        &self.io.counters
    }

    /// Sessions in any stage.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Responder handshakes waiting for confirmation.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The authenticated peer of an established session.
    pub fn peer(&self, session: SessionId) -> Option<Peer> {
        self.sessions.get(&session.0).and_then(|s| s.peer())
    }

    /// The ID of a session's authenticated peer (cheaper than [`Endpoint::peer`]).
    pub fn peer_id(&self, session: SessionId) -> Option<UserId> {
        self.sessions
            .get(&session.0)
            .and_then(|s| s.peer.map(|p| p.id))
    }

    pub fn is_established(&self, session: SessionId) -> bool {
        self.sessions
            .get(&session.0)
            .is_some_and(|s| matches!(s.stage, Stage::Established))
    }

    /// The smoothed round-trip time of a session, once measured.
    pub fn rtt(&self, session: SessionId) -> Option<Duration> {
        self.sessions.get(&session.0).and_then(|s| s.rtt.srtt())
    }

    /// Which epochs' keys a session holds (see the session's transport keys): for tests and
    /// diagnostics, since a rekey is otherwise invisible.
    pub fn key_epochs(&self, session: SessionId) -> Option<KeyEpochs> {
        self.sessions
            .get(&session.0)
            .and_then(|s| s.transport.as_ref())
            .map(|k| k.epochs())
    }

    /// Established sessions with the peer `id`.
    pub fn sessions_with(&self, id: &UserId) -> Vec<SessionId> {
        let mut v: Vec<_> = self
            .sessions
            .values()
            .filter(|s| s.peer.as_ref().is_some_and(|p| p.id == *id))
            .map(|s| s.id)
            .collect();
        v.sort();
        v
    }

    // ---- outputs ----

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.io.transmits.pop_front()
    }

    /// Gives a sent datagram's buffer back, so the next frame needs no allocation.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.io.pool.len() < 64 {
            self.io.pool.push(buf);
        }
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.io.events.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    #[must_use]
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((t, idx))) = self.timers.peek() {
            match self.sessions.get(&idx) {
                Some(s) if s.scheduled == Some(t) => return Some(t),
                _ => {
                    self.timers.pop();
                }
            }
        }
        None
    }

    // ---- inputs ----

    /// Opens a session to the node `key` at `addr` (Noise IK; see [`super::crypto`]). The session
    /// is usable at once: requests and messages wait for the handshake (up to
    /// `Config::max_queued`). Completion is reported by [`Event::Connected`] or
    /// [`Event::HandshakeFailed`].
    pub fn connect(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        key: &NodeKey,
    ) -> Result<SessionId, ConnectError> {
        self.connect_via(now, addr, key, 0)
    }

    /// [`Endpoint::connect`] over the driver's transport number `socket`: every frame of the
    /// session goes out with that [`Transmit::socket`]. The client opens a second session to
    /// the same supernode over its TCP stream this way, racing the first over UDP (a session is
    /// found by its index, not its address, so the two never mix).
    pub fn connect_via(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        key: &NodeKey,
        socket: u8,
    ) -> Result<SessionId, ConnectError> {
        self.connect_early(now, addr, key, socket, &[])
            .map(|(session, _)| session)
    }

    /// [`Endpoint::connect_via`] with `requests` made at once: they ride in the initiation as
    /// early data (0-RTT), as many as fit in one datagram, so a responder that acts on them
    /// answers them a round trip sooner; the rest, or all of them if the responder declines
    /// (or we have no wall clock, [`Endpoint::set_wall_clock`]), go when the handshake ends, as
    /// any request made meanwhile. Their answers arrive as [`Event::Response`], in the order
    /// of the returned transactions.
    ///
    /// # Why early data is safe here
    ///
    /// It is encrypted to the responder's static key and authenticated by ours (IK's `es` and
    /// `ss`), so only the responder reads it and only we could have written it. What it lacks
    /// is forward secrecy against a later theft of the responder's static key (as the binding
    /// in the same message already does), and freshness: anyone can replay the initiation. So
    /// the responder acts on early data only when the wall clock in it is within
    /// `Config::early_window` of its own and it has not seen that initiation (its ephemeral
    /// key) within twice the window; otherwise it declines the early data and the handshake
    /// goes on without it. Requests that are not safe to repeat must be refused by the
    /// application as well (signed records carry sequence numbers, invites a call-ID cache).
    pub fn connect_early(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        key: &NodeKey,
        socket: u8,
        requests: &[Vec<u8>],
    ) -> Result<(SessionId, Vec<TransactionId>), ConnectError> {
        if self.sessions.len() >= self.config.max_sessions {
            return Err(ConnectError::TooManySessions);
        }
        if requests.len() > self.config.max_in_flight {
            return Err(ConnectError::Request(SendError::TooManyInFlight));
        }
        for body in requests {
            self.check_body(body).map_err(ConnectError::Request)?;
        }
        let idx = self.fresh_index();
        // The requests, as transactions; those that fit go in the initiation.
        let mut out = BTreeMap::new();
        let mut txns = Vec::with_capacity(requests.len());
        let mut early = Vec::new();
        let mut early_bytes = Vec::new();
        if let Some(unix_ms) = self.unix_ms(now)
            && !requests.is_empty()
        {
            early_bytes.extend_from_slice(&unix_ms.to_be_bytes());
        }
        // In order: once one does not fit, the rest wait too (a responder handles a session's
        // requests in the order they come).
        let mut room = !early_bytes.is_empty();
        for body in requests {
            let txn = TransactionId(self.rng.random());
            let inner_len = 1 + 12 + body.len();
            let fits =
                room && early_bytes.len() - wire::EARLY_CLOCK + 2 + inner_len <= wire::EARLY_ROOM;
            room = fits;
            let mut o = OutTxn {
                body: body.clone(),
                sends: 0,
                first_sent: None,
                next: None,
                deadline: None,
            };
            if fits {
                early_bytes.extend_from_slice(&(inner_len as u16).to_be_bytes());
                early_bytes.push(inner::REQUEST);
                early_bytes.extend_from_slice(&txn.0);
                early_bytes.extend_from_slice(body);
                // Sent, in the initiation: its timer starts when the handshake ends.
                o.sends = 1;
                o.first_sent = Some(now);
                early.push(txn);
                self.io.counters.requests_sent += 1;
            }
            out.insert(txn, o);
            txns.push(txn);
        }
        if early.is_empty() {
            early_bytes.clear();
        }
        let len = wire::INIT_LEN + early_bytes.len();
        let mut frame = vec![0u8; len];
        frame[0] = if early.is_empty() {
            wire::HANDSHAKE_INIT
        } else {
            wire::INIT_EARLY
        };
        frame[1] = wire::VERSION;
        frame[2..6].copy_from_slice(&idx.to_be_bytes());
        let (m1, m2) = wire::init_macs(len);
        let hs = self
            .local
            .initiate(&key.noise, &early_bytes, &mut frame[wire::INIT_NOISE..m1])
            .expect("an initiation to a 32-byte key cannot fail");
        let keys = MacKeys::for_static(&key.noise);
        let mac1 = mac(&keys.mac1, &[&frame[..m1]]);
        frame[m1..m2].copy_from_slice(&mac1);
        if !early.is_empty() {
            self.io.counters.early_sent += 1;
        }
        let init = Initiating {
            hs,
            frame,
            expected: *key,
            keys,
            cookie: None,
            sends: 1,
            first_sent: now,
            next: now + self.config.handshake_initial_rto,
            deadline: now + self.config.handshake_timeout,
            ambiguous: false,
            early,
        };
        let mut first = self.io.buf();
        first.extend_from_slice(&init.frame);
        self.io.send_via(socket, addr, first);
        self.io.counters.handshakes_initiated += 1;
        let mut s = Session::new(
            SessionId(idx),
            Role::Initiator,
            addr,
            Stage::Initiating(Box::new(init)),
            now,
        );
        s.socket = socket;
        s.out = out;
        self.sessions.insert(idx, Box::new(s));
        self.reschedule(idx);
        Ok((SessionId(idx), txns))
    }

    /// Tells the endpoint the wall clock: `unix_ms` (milliseconds since the Unix epoch) at
    /// `now`. Early data carries it and is checked against it (see
    /// [`Endpoint::connect_early`]); without it, none is sent and none is acted on.
    pub fn set_wall_clock(&mut self, now: Instant, unix_ms: u64) {
        self.wall_clock = Some((now, unix_ms));
    }

    fn unix_ms(&self, now: Instant) -> Option<u64> {
        let (at, ms) = self.wall_clock?;
        let since = now.saturating_duration_since(at).as_millis() as u64;
        let before = at.saturating_duration_since(now).as_millis() as u64;
        Some((ms + since).saturating_sub(before))
    }

    /// Sends a request; its answer arrives as [`Event::Response`], or [`Event::TransactionFailed`]
    /// after the retransmissions (see [`super::defaults`]).
    pub fn request(
        &mut self,
        now: Instant,
        session: SessionId,
        body: &[u8],
    ) -> Result<TransactionId, SendError> {
        self.check_body(body)?;
        let c = &self.config;
        let s = self
            .sessions
            .get_mut(&session.0)
            .ok_or(SendError::UnknownSession)?;
        if s.out.len() >= c.max_in_flight {
            return Err(SendError::TooManyInFlight);
        }
        let txn = TransactionId(self.rng.random());
        let mut o = OutTxn {
            body: body.to_vec(),
            sends: 0,
            first_sent: None,
            next: None,
            deadline: None,
        };
        if matches!(s.stage, Stage::Established) {
            send_request(&mut self.io, c, s, now, &txn, &mut o);
        }
        s.out.insert(txn, o);
        self.after(session.0);
        Ok(txn)
    }

    /// Answers the peer's request `txn`. The answer is kept for `Config::response_cache_ttl` and
    /// sent again, without bothering the application, if the request arrives again.
    pub fn respond(
        &mut self,
        now: Instant,
        session: SessionId,
        txn: TransactionId,
        body: &[u8],
    ) -> Result<(), SendError> {
        self.check_body(body)?;
        let s = self
            .sessions
            .get_mut(&session.0)
            .ok_or(SendError::UnknownSession)?;
        if let Some(inbound) = s.inbound.as_mut()
            && let Some(slot) = inbound.map.get_mut(&txn)
            && slot.is_none()
        {
            *slot = Some(body.to_vec());
            inbound.unanswered -= 1;
        }
        self.io
            .seal(&self.config, s, now, inner::RESPONSE, Some(&txn), body);
        self.after(session.0);
        Ok(())
    }

    /// Sends an unreliable message (no retransmission, no answer): for traffic with its own
    /// recovery, such as SWIM or presence pushes.
    pub fn send(&mut self, now: Instant, session: SessionId, body: &[u8]) -> Result<(), SendError> {
        self.check_body(body)?;
        let c = &self.config;
        let s = self
            .sessions
            .get_mut(&session.0)
            .ok_or(SendError::UnknownSession)?;
        if matches!(s.stage, Stage::Established) {
            self.io.seal(c, s, now, inner::MESSAGE, None, body);
        } else {
            let queued = s.queued.get_or_insert_with(Default::default);
            if queued.len() >= c.max_queued {
                return Err(SendError::QueueFull);
            }
            queued.push_back(body.to_vec());
        }
        self.after(session.0);
        Ok(())
    }

    /// Sends `plain` (first byte the inner kind) as one encrypted frame, bypassing every check
    /// on its content. Only for fuzzing a peer's handling of malformed content from an
    /// authenticated sender. False if the session is not established.
    #[cfg(feature = "testing")]
    pub fn send_raw_inner_for_fuzzing(
        &mut self,
        now: Instant,
        session: SessionId,
        plain: &[u8],
    ) -> bool {
        let Some((&kind, body)) = plain.split_first() else {
            return false;
        };
        let Some(s) = self.sessions.get_mut(&session.0) else {
            return false;
        };
        if !matches!(s.stage, Stage::Established) {
            return false;
        }
        let ok = self.io.seal(&self.config, s, now, kind, None, body);
        self.after(session.0);
        ok
    }

    /// Closes a session (telling the peer, best effort). No event follows for it; outstanding
    /// requests are reported failed.
    pub fn close(&mut self, now: Instant, session: SessionId) {
        if let Some(s) = self.sessions.get_mut(&session.0) {
            if matches!(s.stage, Stage::Established) {
                self.io.seal(&self.config, s, now, inner::CLOSE, None, &[]);
            }
            self.remove(session.0, None);
        }
    }

    /// One datagram from `from`.
    pub fn handle_input(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.io.counters.frames_in += 1;
        if data.len() > self.config.max_frame {
            return self.io.counters.refuse(Refusal::Oversized);
        }
        let Some(&kind) = data.first() else {
            return self.io.counters.refuse(Refusal::NotSessionFrame);
        };
        match kind {
            wire::HANDSHAKE_INIT | wire::INIT_EARLY => self.on_init(now, from, data),
            wire::HANDSHAKE_RESP => self.on_response(now, from, data),
            wire::COOKIE_REPLY => self.on_cookie(now, data),
            wire::TRANSPORT => self.on_transport(now, from, data),
            k if wire::FRAME_TYPES.contains(&k) => self.io.counters.refuse(Refusal::UnknownType),
            _ => self.io.counters.refuse(Refusal::NotSessionFrame),
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((t, idx))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let due = self
                .sessions
                .get(&idx)
                .is_some_and(|s| s.scheduled == Some(t));
            if due {
                if let Some(s) = self.sessions.get_mut(&idx) {
                    s.scheduled = None;
                }
                self.on_session_timer(now, idx);
            }
        }
    }

    // ---- internals ----

    fn check_body(&self, body: &[u8]) -> Result<(), SendError> {
        let max = self.config.max_body();
        if body.len() > max {
            return Err(SendError::TooLarge {
                len: body.len(),
                max,
            });
        }
        Ok(())
    }

    fn fresh_index(&mut self) -> u32 {
        loop {
            let i: u32 = self.rng.random();
            if i != 0 && !self.sessions.contains_key(&i) {
                return i;
            }
        }
    }

    /// Files a session under its next deadline. Deadlines that move later (every received frame
    /// pushes the idle deadline back) keep their earlier heap entry, which then fires early,
    /// finds nothing due and refiles: one heap push per idle period instead of one per frame.
    fn reschedule(&mut self, idx: u32) {
        if let Some(s) = self.sessions.get_mut(&idx) {
            let next = s.next_deadline(&self.config);
            if let Some(t) = next
                && s.scheduled.is_none_or(|old| t < old)
            {
                s.scheduled = Some(t);
                self.timers.push(Reverse((t, idx)));
            }
        }
        // Entries of removed sessions, or superseded by earlier ones, pile up; rebuild the heap
        // when they dominate (amortized O(1) per push, and the heap stays bounded).
        if self.timers.len() > 4 * self.sessions.len() + 64 {
            self.timers.clear();
            for (idx, s) in &mut self.sessions {
                s.scheduled = s.next_deadline(&self.config);
                if let Some(t) = s.scheduled {
                    self.timers.push(Reverse((t, *idx)));
                }
            }
        }
    }

    /// After any change to a session: close it if it asked to, else refile its timer.
    fn after(&mut self, idx: u32) {
        let closing = self.sessions.get(&idx).and_then(|s| s.closing);
        match closing {
            Some(reason) => self.remove(idx, Some(reason)),
            None => self.reschedule(idx),
        }
    }

    /// Removes a session, failing its outstanding requests; `reason` produces a `Closed` event.
    fn remove(&mut self, idx: u32, reason: Option<CloseReason>) {
        let Some(s) = self.sessions.remove(&idx) else {
            return;
        };
        if let Stage::Unconfirmed(u) = &s.stage {
            self.pending.remove(&u.ephemeral);
        }
        let established = matches!(s.stage, Stage::Established);
        for txn in s.out.keys() {
            self.io.counters.transactions_failed += 1;
            self.io.event(Event::TransactionFailed {
                session: s.id,
                txn: *txn,
                error: TransactionError::SessionClosed,
            });
        }
        self.io.counters.sessions_closed += 1;
        if let Some(reason) = reason
            && established
        {
            self.io.event(Event::Closed {
                session: s.id,
                peer: s.peer.map(|p| p.id),
                reason,
            });
        }
    }

    fn on_init(&mut self, now: Instant, from: SocketAddr, frame: &[u8]) {
        let c = &self.config;
        if !c.accept {
            return self.io.counters.refuse(Refusal::NotAccepting);
        }
        let length_ok = match frame[0] {
            wire::INIT_EARLY => {
                (wire::EARLY_INIT_MIN..=wire::EARLY_INIT_MAX).contains(&frame.len())
            }
            _ => frame.len() == wire::INIT_LEN,
        };
        if !length_ok {
            return self.io.counters.refuse(Refusal::Malformed);
        }
        if frame[1] != wire::VERSION {
            return self.io.counters.refuse(Refusal::UnsupportedVersion);
        }
        if !self.local.mac1_ok(frame) {
            return self.io.counters.refuse(Refusal::BadMac1);
        }
        let (m1, m2) = wire::init_macs(frame.len());
        // A retransmitted initiation: answer from the cache, no crypto.
        let ephemeral: [u8; 32] = frame[wire::INIT_NOISE..wire::INIT_NOISE + 32]
            .try_into()
            .expect("32 bytes");
        if let Some(idx) = self.pending.get(&ephemeral)
            && let Some(s) = self.sessions.get_mut(idx)
            && let Stage::Unconfirmed(u) = &mut s.stage
        {
            u.answered_at = None;
            self.io.counters.handshake_duplicates += 1;
            self.io.send_copy(from, &u.response);
            return;
        }
        self.forget_early(now);
        if let Some(seen) = self.early_seen.get(&ephemeral) {
            // Its early data was acted on: a duplicate (our answer was lost) gets the same
            // answer while its session lives; anything else is a replay.
            let live = self
                .sessions
                .get(&seen.session)
                .is_some_and(|s| s.remote_idx == u32_at(frame, 2));
            if live {
                self.io.counters.handshake_duplicates += 1;
                let response = seen.response.clone();
                self.io.send_copy(from, &response);
            } else {
                self.io.counters.early_declined += 1;
                self.io.counters.refuse(Refusal::BadHandshake);
            }
            return;
        }
        let rng = &mut self.rng;
        self.cookies.maybe_rotate(now, || rng.random());
        let mac2 = &frame[m2..];
        let proven =
            mac2.iter().any(|&b| b != 0) && self.cookies.mac2_valid(&from, &frame[..m2], mac2);
        let ip = from.ip();
        if proven {
            if !self.proven_limit.take(now, &ip) {
                return self.io.counters.refuse(Refusal::RateLimited);
            }
        } else if !(self.source_limit.take(now, &ip) && self.global_limit.take(now, &ip)) {
            return self.send_cookie_reply(from, frame);
        }
        let c = &self.config;
        if self.sessions.len() >= c.max_sessions {
            return self.io.counters.refuse(Refusal::SessionsFull);
        }
        if self.pending.len() >= c.max_pending_handshakes {
            return self.io.counters.refuse(Refusal::PendingFull);
        }
        let (window, max_early) = (c.early_window, c.max_early_remembered);
        let idx = self.fresh_index();
        let mut resp = self.io.buf();
        resp.resize(wire::RESP_LEN, 0);
        resp[0] = wire::HANDSHAKE_RESP;
        resp[1] = wire::VERSION;
        resp[2..6].copy_from_slice(&idx.to_be_bytes());
        resp[6..10].copy_from_slice(&frame[2..6]);
        let msg2: &mut [u8; wire::NOISE2_LEN] =
            (&mut resp[wire::RESP_NOISE..]).try_into().expect("length");
        // Early data is acted on only if its clock is fresh and there is room to remember it.
        let ours = self.unix_ms(now);
        let window = window.as_millis() as u64;
        let room = self.early_seen.len() < max_early;
        let mut declined = false;
        let take_early = |early: &[u8]| {
            let theirs = early
                .get(..wire::EARLY_CLOCK)
                .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
            let fresh = matches!((ours, theirs), (Some(o), Some(t)) if o.abs_diff(t) <= window);
            declined = !(fresh && room);
            !declined
        };
        match self
            .local
            .respond(&frame[wire::INIT_NOISE..m1], msg2, take_early)
        {
            Ok(r) => {
                self.io.counters.handshakes_answered += 1;
                if declined {
                    self.io.counters.early_declined += 1;
                }
                if let Some(early) = r.early {
                    return self.established_early(
                        now,
                        from,
                        frame,
                        idx,
                        ephemeral,
                        resp,
                        r.transport,
                        r.peer,
                        &early,
                    );
                }
                let mut s = Session::new(
                    SessionId(idx),
                    Role::Responder,
                    from,
                    Stage::Unconfirmed(Box::new(Unconfirmed {
                        response: resp.clone(),
                        ephemeral,
                        deadline: now + self.config.confirm_timeout,
                        answered_at: Some(now),
                        identity: r.peer.identity,
                    })),
                    now,
                );
                s.remote_idx = u32_at(frame, 2);
                s.transport = Some(r.transport);
                s.peer = Some(PeerKey::of(&r.peer.identity));
                self.sessions.insert(idx, Box::new(s));
                self.pending.insert(ephemeral, idx);
                self.io.send(from, resp);
                self.reschedule(idx);
            }
            Err((HandshakeCryptoError::Binding(_), wrote)) => {
                self.io.counters.refuse(Refusal::BindingRefused);
                // Tell the initiator (the answer is authenticated and smaller than its message).
                if wrote {
                    self.io.send(from, resp);
                }
            }
            Err(_) => self.io.counters.refuse(Refusal::BadHandshake),
        }
    }

    /// A responder session whose initiation carried fresh early data: established at once (the
    /// early data proves the initiator as its first transport frame would), then the early
    /// requests are handled as if they had come in transport frames.
    #[allow(clippy::too_many_arguments)]
    fn established_early(
        &mut self,
        now: Instant,
        from: SocketAddr,
        frame: &[u8],
        idx: u32,
        ephemeral: [u8; 32],
        resp: Vec<u8>,
        transport: TransportKeys,
        peer: Binding,
        early: &[u8],
    ) {
        let c = &self.config;
        self.io.counters.early_taken += 1;
        self.io.counters.handshakes_confirmed += 1;
        let mut s = Session::new(
            SessionId(idx),
            Role::Responder,
            from,
            Stage::Established,
            now,
        );
        s.remote_idx = u32_at(frame, 2);
        s.transport = Some(transport);
        s.peer = Some(PeerKey::of(&peer.identity));
        self.early_seen.insert(
            ephemeral,
            EarlySeen {
                session: idx,
                response: resp.clone(),
            },
        );
        self.early_order
            .push_back((now + 2 * c.early_window, ephemeral));
        self.io.send(from, resp);
        self.io.event(Event::Connected {
            session: s.id,
            peer: Box::new(Peer {
                id: peer.identity.id(),
                identity: peer.identity,
                addr: from,
                role: Role::Responder,
            }),
        });
        // After the clock: (length, inner message) pairs; requests and messages only.
        let mut rest = &early[wire::EARLY_CLOCK.min(early.len())..];
        while !rest.is_empty() {
            let Some(len) = rest
                .get(..2)
                .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            else {
                self.io.counters.refuse(Refusal::MalformedPayload);
                break;
            };
            let Some(inner) = rest.get(2..2 + len) else {
                self.io.counters.refuse(Refusal::MalformedPayload);
                break;
            };
            rest = &rest[2 + len..];
            match inner.first() {
                Some(&(inner::REQUEST | inner::MESSAGE)) => {
                    handle_inner(&mut self.io, c, &mut s, now, inner)
                }
                _ => self.io.counters.refuse(Refusal::MalformedPayload),
            }
        }
        // The initiator may retransmit these requests only once our answer to its handshake
        // gets through, up to its handshake timeout from now: keep their answers that much
        // longer, or a retransmission after a slow handshake would be handled as new.
        if let Some(inbound) = s.inbound.as_mut() {
            for (t, _) in inbound.order.iter_mut() {
                *t += c.handshake_timeout;
            }
        }
        self.sessions.insert(idx, Box::new(s));
        self.after(idx);
    }

    /// Forgets early initiations whose clock could no longer pass.
    fn forget_early(&mut self, now: Instant) {
        while let Some(&(t, e)) = self.early_order.front() {
            if t > now {
                break;
            }
            self.early_order.pop_front();
            self.early_seen.remove(&e);
        }
    }

    fn send_cookie_reply(&mut self, from: SocketAddr, init: &[u8]) {
        let nonce: [u8; 24] = self.rng.random();
        let cookie = self.cookies.cookie(&from);
        let (m1, m2) = wire::init_macs(init.len());
        let sealed = seal_cookie(&self.local.mac_keys.cookie, &nonce, &init[m1..m2], &cookie);
        let mut b = self.io.buf();
        b.push(wire::COOKIE_REPLY);
        b.push(wire::VERSION);
        b.extend_from_slice(&init[2..6]);
        b.extend_from_slice(&nonce);
        b.extend_from_slice(&sealed);
        self.io.counters.cookies_sent += 1;
        self.io.send(from, b);
    }

    fn on_cookie(&mut self, now: Instant, frame: &[u8]) {
        if frame.len() != wire::COOKIE_LEN {
            return self.io.counters.refuse(Refusal::Malformed);
        }
        if frame[1] != wire::VERSION {
            return self.io.counters.refuse(Refusal::UnsupportedVersion);
        }
        let idx = u32_at(frame, 2);
        let Some(s) = self.sessions.get_mut(&idx) else {
            return self.io.counters.refuse(Refusal::UnknownSession);
        };
        let Stage::Initiating(init) = &mut s.stage else {
            return self.io.counters.refuse(Refusal::WrongStage);
        };
        let (m1, m2) = wire::init_macs(init.frame.len());
        let Some(cookie) = open_cookie(
            &init.keys.cookie,
            &frame[wire::COOKIE_NONCE..wire::COOKIE_SEALED],
            &init.frame[m1..m2],
            &frame[wire::COOKIE_SEALED..],
        ) else {
            return self.io.counters.refuse(Refusal::BadCookie);
        };
        self.io.counters.cookies_received += 1;
        if init.cookie.is_some_and(|(c, _)| c == cookie) {
            return; // a duplicate reply; the resend with it is already out
        }
        init.cookie = Some((cookie, now));
        let mac2 = mac(&cookie, &[&init.frame[..m2]]);
        init.frame[m2..].copy_from_slice(&mac2);
        // Resend at once with the cookie; the schedule continues as before.
        init.sends += 1;
        init.ambiguous = true;
        self.io.counters.handshake_retransmits += 1;
        let (socket, addr) = (s.socket, s.addr);
        let mut b = self.io.buf();
        b.extend_from_slice(&init.frame);
        self.io.send_via(socket, addr, b);
    }

    fn on_response(&mut self, now: Instant, from: SocketAddr, frame: &[u8]) {
        if frame.len() != wire::RESP_LEN {
            return self.io.counters.refuse(Refusal::Malformed);
        }
        if frame[1] != wire::VERSION {
            return self.io.counters.refuse(Refusal::UnsupportedVersion);
        }
        let idx = u32_at(frame, 6);
        let Some(s) = self.sessions.get_mut(&idx) else {
            return self.io.counters.refuse(Refusal::UnknownSession);
        };
        let Stage::Initiating(init) = &mut s.stage else {
            return self.io.counters.refuse(Refusal::WrongStage);
        };
        let (status, binding) = match self.local.finish(&mut init.hs, &frame[wire::RESP_NOISE..]) {
            Ok(r) => r,
            // Not from the holder of the expected key; keep waiting for the real answer.
            Err(_) => return self.io.counters.refuse(Refusal::BadHandshake),
        };
        let error = if status != wire::STATUS_OK && status != wire::STATUS_OK_EARLY {
            Some(HandshakeError::RefusedByPeer)
        } else {
            match &binding {
                Err(e) => {
                    self.io.counters.refuse(Refusal::BindingRefused);
                    Some(HandshakeError::Binding(*e))
                }
                Ok(b) if b.identity.id() != init.expected.id => {
                    self.io.counters.refuse(Refusal::IdentityMismatch);
                    Some(HandshakeError::IdentityMismatch {
                        expected: init.expected.id,
                        found: b.identity.id(),
                    })
                }
                Ok(_) => None,
            }
        };
        if let Some(error) = error {
            return self.fail_handshake(idx, error);
        }
        let binding = binding.expect("checked above");
        let Stage::Initiating(mut init) = std::mem::replace(&mut s.stage, Stage::Established)
        else {
            unreachable!("matched above");
        };
        let Some(transport) = TransportKeys::split(&mut init.hs, true) else {
            return self.fail_handshake(idx, HandshakeError::Binding(BindingError::Malformed));
        };
        if !init.ambiguous {
            s.rtt.sample(now.saturating_duration_since(init.first_sent));
        }
        s.transport = Some(transport);
        s.remote_idx = u32_at(frame, 2);
        s.addr = from;
        s.last_recv = now;
        let peer = Peer {
            id: binding.identity.id(),
            identity: binding.identity,
            addr: from,
            role: Role::Initiator,
        };
        s.peer = Some(PeerKey::of(&peer.identity));
        self.io.counters.handshakes_completed += 1;
        self.io.event(Event::Connected {
            session: s.id,
            peer: Box::new(peer),
        });
        let c = &self.config;
        if status == wire::STATUS_OK_EARLY {
            // The responder acted on the early requests (and established the session): they
            // were sent; their retransmission timers start now, with the RTT just measured.
            // Their time to give up counts from now, as for requests that waited for the
            // handshake; after a retransmitted initiation, an answer cannot be matched to one
            // send (Karn), so it gives no RTT sample.
            let rto = s.rto(c, 1);
            for txn in &init.early {
                if let Some(o) = s.out.get_mut(txn) {
                    if init.ambiguous {
                        o.first_sent = None;
                    }
                    o.deadline = Some(now + c.transaction_timeout);
                    o.next = Some(now + rto);
                }
            }
        } else {
            // Declined (or never sent): they go now, like any request made meanwhile.
            for txn in &init.early {
                if let Some(o) = s.out.get_mut(txn) {
                    o.sends = 0;
                    o.first_sent = None;
                }
            }
            // Key confirmation for the responder, retransmitted until answered like a
            // keepalive. (A responder that took early data needs none.)
            self.io.seal(c, s, now, inner::PING, None, &[]);
            self.io.counters.pings_sent += 1;
            s.ping = Some(Ping {
                attempts: 1,
                next: now + s.rto(c, 1),
            });
        }
        flush_queued(&mut self.io, c, s, now);
        self.after(idx);
    }

    fn fail_handshake(&mut self, idx: u32, error: HandshakeError) {
        self.io.counters.handshakes_failed += 1;
        self.io.event(Event::HandshakeFailed {
            session: SessionId(idx),
            error,
        });
        self.remove(idx, None);
    }

    fn on_transport(&mut self, now: Instant, from: SocketAddr, frame: &[u8]) {
        let c = &self.config;
        if frame.len() < wire::TRANSPORT_HEADER + wire::TAG + 1 {
            return self.io.counters.refuse(Refusal::Malformed);
        }
        let idx = u32_at(frame, 1);
        let field = u64_at(frame, 5);
        let (epoch, nonce) = wire::split_nonce_field(field);
        let Some(s) = self.sessions.get_mut(&idx) else {
            return self.io.counters.refuse(Refusal::UnknownSession);
        };
        let Some(keys) = s.transport.as_mut() else {
            return self.io.counters.refuse(Refusal::WrongStage);
        };
        if nonce >= c.nonce_limit {
            return self.io.counters.refuse(Refusal::NonceLimit);
        }
        // Cheap checks first: do we hold (or may we derive) the epoch's key, is it a replay.
        // The counter runs on across epochs, so one window covers them all.
        if let Err(e) = keys.check_epoch(now, epoch) {
            return self.io.counters.refuse(open_refusal(e));
        }
        match s.replay.check(nonce) {
            Ok(()) => {}
            Err(ReplayError::Replayed) => return self.io.counters.refuse(Refusal::Replayed),
            Err(ReplayError::TooOld) => return self.io.counters.refuse(Refusal::TooOld),
        }
        let mut plain = std::mem::take(&mut self.io.scratch);
        plain.resize(frame.len() - wire::TRANSPORT_HEADER - wire::TAG, 0);
        match keys.open(now, c, field, &frame[wire::TRANSPORT_HEADER..], &mut plain) {
            Ok((_, moved)) => {
                if moved {
                    self.io.counters.peer_rekeys += 1;
                }
            }
            Err(e) => {
                self.io.scratch = plain;
                return self.io.counters.refuse(open_refusal(e));
            }
        }
        s.replay.insert(nonce);
        s.last_recv = now;
        // Any authenticated frame shows the peer is alive.
        s.ping = None;
        if s.addr != from {
            // NAT rebinding or roaming: follow the authenticated source.
            s.addr = from;
            self.io.counters.address_changes += 1;
        }
        if matches!(s.stage, Stage::Unconfirmed(_)) {
            let Stage::Unconfirmed(u) = std::mem::replace(&mut s.stage, Stage::Established) else {
                unreachable!("matched above");
            };
            self.pending.remove(&u.ephemeral);
            if let Some(at) = u.answered_at {
                s.rtt.sample(now.saturating_duration_since(at));
            }
            self.io.counters.handshakes_confirmed += 1;
            let peer = Peer {
                id: s.peer.expect("responder sessions know their peer").id,
                identity: u.identity,
                addr: s.addr,
                role: s.role,
            };
            self.io.event(Event::Connected {
                session: s.id,
                peer: Box::new(peer),
            });
        }
        handle_inner(&mut self.io, c, s, now, &plain);
        self.io.scratch = plain;
        self.after(idx);
    }

    fn on_session_timer(&mut self, now: Instant, idx: u32) {
        let c = &self.config;
        let Some(s) = self.sessions.get_mut(&idx) else {
            return;
        };
        match &mut s.stage {
            Stage::Initiating(init) => {
                if now >= init.deadline {
                    let attempts = init.sends;
                    return self.fail_handshake(idx, HandshakeError::TimedOut { attempts });
                }
                if now >= init.next {
                    if let Some((_, at)) = init.cookie
                        && now.saturating_duration_since(at) >= c.cookie_rotation
                    {
                        // The cookie has expired; the responder would not accept it.
                        init.cookie = None;
                        let (_, m2) = wire::init_macs(init.frame.len());
                        init.frame[m2..].fill(0);
                    }
                    let rto = c.handshake_initial_rto * 2u32.saturating_pow(init.sends.min(16));
                    init.sends += 1;
                    init.ambiguous = true;
                    init.next = now + rto.min(c.handshake_max_rto);
                    self.io.counters.handshake_retransmits += 1;
                    let (socket, addr) = (s.socket, s.addr);
                    let mut b = self.io.buf();
                    b.extend_from_slice(&init.frame);
                    self.io.send_via(socket, addr, b);
                }
            }
            Stage::Unconfirmed(u) => {
                if now >= u.deadline {
                    self.io.counters.handshakes_unconfirmed += 1;
                    return self.remove(idx, None);
                }
            }
            Stage::Established => {
                if let Some(keys) = s.transport.as_mut() {
                    keys.expire(now);
                }
                if now >= s.last_recv + c.idle_timeout {
                    s.closing = Some(CloseReason::IdleTimeout);
                    return self.after(idx);
                }
                s.expire_inbound(now);
                // Keepalive ping, or its retransmission.
                let ping_due = match &s.ping {
                    Some(p) => (now >= p.next).then_some(p.attempts),
                    None => (s.role == Role::Initiator
                        && now >= s.last_send + c.keepalive_interval)
                        .then_some(0),
                };
                if let Some(attempts) = ping_due {
                    if attempts >= c.ping_attempts {
                        s.closing = Some(CloseReason::PeerUnresponsive);
                        return self.after(idx);
                    }
                    let next = now + s.rto(c, attempts + 1);
                    s.ping = Some(Ping {
                        attempts: attempts + 1,
                        next,
                    });
                    self.io.counters.pings_sent += 1;
                    self.io.seal(c, s, now, inner::PING, None, &[]);
                }
                // Requests due for retransmission or give-up.
                let due: Vec<TransactionId> = s
                    .out
                    .iter()
                    .filter(|(_, o)| o.next.is_some_and(|n| n <= now))
                    .map(|(id, _)| *id)
                    .collect();
                for txn in due {
                    let mut o = s.out.remove(&txn).expect("listed");
                    let expired = o.deadline.is_some_and(|d| now >= d);
                    if o.sends >= c.transaction_attempts || expired {
                        self.io.counters.transactions_failed += 1;
                        self.io.event(Event::TransactionFailed {
                            session: s.id,
                            txn,
                            error: TransactionError::TimedOut { attempts: o.sends },
                        });
                        continue;
                    }
                    self.io.counters.request_retransmits += 1;
                    send_request(&mut self.io, c, s, now, &txn, &mut o);
                    s.out.insert(txn, o);
                }
            }
        }
        self.after(idx);
    }
}

/// The refusal for a transport frame that did not open.
fn open_refusal(e: OpenError) -> Refusal {
    match e {
        OpenError::StaleEpoch => Refusal::StaleEpoch,
        OpenError::FutureEpoch => Refusal::FutureEpoch,
        OpenError::BadAuth => Refusal::BadAuth,
    }
}

/// Sends (or resends) a request and sets its next timer.
fn send_request(
    io: &mut Io,
    c: &Config,
    s: &mut Session,
    now: Instant,
    txn: &TransactionId,
    o: &mut OutTxn,
) {
    o.sends += 1;
    let first = *o.first_sent.get_or_insert(now);
    let deadline = *o.deadline.get_or_insert(first + c.transaction_timeout);
    // After the last send, wait one more RTO for its answer, then give up.
    o.next = Some((now + s.rto(c, o.sends)).min(deadline));
    if o.sends == 1 {
        io.counters.requests_sent += 1;
    }
    io.seal(c, s, now, inner::REQUEST, Some(txn), &o.body);
}

/// Sends what waited for the handshake.
fn flush_queued(io: &mut Io, c: &Config, s: &mut Session, now: Instant) {
    let txns: Vec<TransactionId> = s
        .out
        .iter()
        .filter(|(_, o)| o.sends == 0)
        .map(|(id, _)| *id)
        .collect();
    for txn in txns {
        let mut o = s.out.remove(&txn).expect("listed");
        send_request(io, c, s, now, &txn, &mut o);
        s.out.insert(txn, o);
    }
    if let Some(queued) = s.queued.take() {
        for body in *queued {
            io.seal(c, s, now, inner::MESSAGE, None, &body);
        }
    }
}

/// Acts on one decrypted inner message.
fn handle_inner(io: &mut Io, c: &Config, s: &mut Session, now: Instant, plain: &[u8]) {
    let Some((&kind, rest)) = plain.split_first() else {
        return io.counters.refuse(Refusal::MalformedPayload);
    };
    let txn_of = |rest: &[u8]| -> Option<(TransactionId, usize)> {
        let id: [u8; 12] = rest.get(..12)?.try_into().ok()?;
        Some((TransactionId(id), 12))
    };
    match kind {
        inner::PING if rest.is_empty() => {
            io.seal(c, s, now, inner::PONG, None, &[]);
        }
        inner::PONG if rest.is_empty() => {
            // `ping` was cleared on receipt; the RTT sample comes from the handshake and
            // transactions, where sends are matched one to one.
        }
        inner::REQUEST => {
            let Some((txn, n)) = txn_of(rest) else {
                return io.counters.refuse(Refusal::MalformedPayload);
            };
            let body = &rest[n..];
            s.expire_inbound(now);
            match s.inbound.as_ref().and_then(|i| i.map.get(&txn)) {
                Some(Some(answer)) => {
                    io.counters.duplicate_requests += 1;
                    io.counters.cached_responses_sent += 1;
                    let answer = answer.clone();
                    io.seal(c, s, now, inner::RESPONSE, Some(&txn), &answer);
                }
                Some(None) => io.counters.duplicate_requests += 1,
                None => {
                    if s.inbound.as_ref().map_or(0, |i| i.unanswered) >= c.max_unanswered {
                        return io.counters.refuse(Refusal::TooManyUnanswered);
                    }
                    let inbound = s.inbound.get_or_insert_with(Box::default);
                    if inbound.map.len() >= c.max_cached_responses {
                        inbound.evict_oldest();
                    }
                    inbound.map.insert(txn, None);
                    inbound.unanswered += 1;
                    inbound.order.push_back((now + c.response_cache_ttl, txn));
                    io.event(Event::Request {
                        session: s.id,
                        txn,
                        body: body.to_vec(),
                    });
                }
            }
        }
        inner::RESPONSE => {
            let Some((txn, n)) = txn_of(rest) else {
                return io.counters.refuse(Refusal::MalformedPayload);
            };
            match s.out.remove(&txn) {
                Some(o) => {
                    if o.sends == 1
                        && let Some(t) = o.first_sent
                    {
                        s.rtt.sample(now.saturating_duration_since(t));
                    }
                    io.event(Event::Response {
                        session: s.id,
                        txn,
                        body: rest[n..].to_vec(),
                    });
                }
                None => io.counters.late_responses += 1,
            }
        }
        inner::MESSAGE => io.event(Event::Message {
            session: s.id,
            body: rest.to_vec(),
        }),
        inner::CLOSE if rest.is_empty() => {
            s.closing = Some(CloseReason::ClosedByPeer);
        }
        _ => io.counters.refuse(Refusal::MalformedPayload),
    }
}
