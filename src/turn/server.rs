//! The TURN server (RFC 8656) as a sans-IO state machine.
//!
//! # Driving it
//!
//! - A datagram (or a framed stream message) from a client: [`TurnServer::handle_client`]. The
//!   result says what to send: a response or relayed data to a client (bytes in the caller's
//!   `out` buffer), data for a peer (a range of the *input*: the payload is sent from the
//!   relayed socket without being copied), or a relayed socket to bind first.
//! - A datagram that arrived on a relayed socket: [`TurnServer::handle_peer`]; its ChannelData
//!   or Data indication is written to `out` (the one copy on that path).
//! - After a [`ClientAction::Bind`]: [`TurnServer::relay_bound`] with the outcome.
//! - Timers: [`TurnServer::poll_timeout`] / [`TurnServer::handle_timeout`]; then drain
//!   [`TurnServer::poll_event`] for relayed sockets to close.
//!
//! Nothing here reads a clock or touches a socket. Every table is bounded: allocations by the
//! quotas, permissions and channels per allocation by [`TurnConfig`], nonces are stateless, the
//! 401 limiter and the port pool have fixed caps.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::time::{Duration, Instant};

use super::auth::{CredentialError, Credentials, Key, NonceCheck, Nonces, RateLimiter, source_key};
use super::channel;
use super::peer_policy::{PeerPolicy, Refusal, canonical};
use super::ports::PortPool;
use crate::stun::{Class, IntegrityCheck, Message, MessageBuilder, attr, method};

/// How a client reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// Streams pad ChannelData to 4 bytes (RFC 8656 §12.5).
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// A client's 5-tuple (RFC 8656 §2), plus the connection for streams (one allocation per
/// connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddr {
    pub transport: Transport,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// 0 for UDP; the driver's connection id for TCP/TLS.
    pub conn: u64,
}

/// Handle to an allocation (index + generation, so a stale handle never hits a newer one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AllocId {
    pub index: u32,
    pub generation: u32,
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct TurnConfig {
    pub software: Option<String>,
    /// Addresses to relay from, at most one per family.
    pub relay_ips: Vec<IpAddr>,
    /// For a relay behind 1:1 NAT: the public address to report for each relay IP.
    pub external_ips: Vec<(IpAddr, IpAddr)>,
    pub ports: RangeInclusive<u16>,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub permission_lifetime: Duration,
    pub channel_lifetime: Duration,
    pub nonce_lifetime: Duration,
    /// Concurrent allocations per username (default 64). A voice client needs one allocation
    /// per call (two with a separate RTCP port), so 64 is tens of calls' headroom for one
    /// account on several devices, while a leaked credential can hold no more than 64 of the
    /// 16,384 relay ports of the default range (1/256): exhausting the relay takes 256 of them.
    pub user_quota: u32,
    /// Concurrent allocations per client IPv4 address or IPv6 /64 (default 64; also the cap on
    /// open TCP/TLS connections from one). Usernames cost nothing to mint with a shared secret,
    /// so this is the quota that binds one host: 64 leaves room for an office or household of
    /// callers behind one NAT address, and one host still holds at most 1/256 of the default
    /// relay port range.
    pub source_quota: u32,
    /// Concurrent allocations in total (default 100,000; one relayed socket each).
    pub total_quota: u32,
    pub max_permissions: usize,
    pub max_channels: usize,
    /// Bytes per second per allocation, both directions together; `None` for no cap.
    pub bandwidth: Option<u64>,
    /// 401 responses per second and burst, per source IP (default [`CHALLENGE_RATE`] and
    /// [`CHALLENGE_BURST`]; see [`MAX_CHALLENGE_BYTES_PER_SECOND`] for what that bounds).
    ///
    /// [`CHALLENGE_RATE`]: super::auth::CHALLENGE_RATE
    /// [`CHALLENGE_BURST`]: super::auth::CHALLENGE_BURST
    /// [`MAX_CHALLENGE_BYTES_PER_SECOND`]: super::auth::MAX_CHALLENGE_BYTES_PER_SECOND
    pub auth_rate: (f64, f64),
    /// Where to send new allocations while draining (300 ALTERNATE-SERVER); 486 without.
    pub alternate_server: Option<SocketAddr>,
    pub policy: PeerPolicy,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            software: Some(format!("voxmesh relayd {}", env!("CARGO_PKG_VERSION"))),
            relay_ips: Vec::new(),
            external_ips: Vec::new(),
            ports: 49152..=65535,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(600),
            user_quota: 64,
            source_quota: 64,
            total_quota: 100_000,
            max_permissions: 64,
            max_channels: 64,
            bandwidth: None,
            auth_rate: (super::auth::CHALLENGE_RATE, super::auth::CHALLENGE_BURST),
            alternate_server: None,
            policy: PeerPolicy::default(),
        }
    }
}

/// After a channel binding expires, its number and peer stay reserved this long (RFC 8656
/// §12: "the channel cannot be rebound with a different transport address ... for 5 minutes").
const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);
/// Relay port attempts before 508 Insufficient Capacity.
const BIND_ATTEMPTS: u32 = 8;
/// Bound on in-flight binds (they complete synchronously in the driver; this is a guard).
const MAX_PENDING: usize = 1024;

/// What to do with a client message.
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAction {
    /// Nothing to send (dropped and counted, or consumed).
    None,
    /// Send `out[..len]` to `to` (a response, or data relayed to another client of this relay).
    ToClient { to: ClientAddr, len: usize },
    /// Send `input[data]` from allocation `id`'s relayed socket to `peer`.
    ToPeer {
        id: AllocId,
        peer: SocketAddr,
        data: Range<usize>,
    },
    /// Bind a UDP socket on `addr` for allocation `id`, then call [`TurnServer::relay_bound`].
    Bind {
        pending: u64,
        id: AllocId,
        addr: SocketAddr,
    },
}

/// What to do with data from a peer.
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAction {
    Drop,
    ToClient { to: ClientAddr, len: usize },
}

/// Something for the driver to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Close the relayed socket of this allocation. The rest is for the driver's log line
    /// (coturn logs the same at the end of a session).
    Released {
        id: AllocId,
        relay: SocketAddr,
        username: Box<str>,
        client: ClientAddr,
        /// When the allocation was made.
        since: Instant,
        /// Payload bytes relayed client -> peer and peer -> client.
        to_peer_bytes: u64,
        to_client_bytes: u64,
    },
}

/// Sizes of the server's tables: see [`TurnServer::table_sizes`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableSizes {
    pub slots: usize,
    pub by_client: usize,
    pub by_public: usize,
    pub per_user: usize,
    pub per_source: usize,
    pub pending: usize,
    pub timers: usize,
    pub rate_limiter: usize,
    pub ports_in_use: usize,
    pub reservations: usize,
    /// Summed over live allocations.
    pub permissions: usize,
    pub channels: usize,
    pub events: usize,
}

/// Counters, rendered as Prometheus text by the driver.
#[derive(Clone, Debug, Default)]
pub struct TurnCounters {
    pub allocations_total: u64,
    pub refreshes: u64,
    pub permissions: u64,
    pub channel_binds: u64,
    pub expired: u64,
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
    pub internal_packets: u64,
    pub auth_challenges: u64,
    pub auth_failures: u64,
    pub auth_stale_nonce: u64,
    pub auth_rate_limited: u64,
    pub errors: HashMap<u16, u64>,
    pub drops: HashMap<&'static str, u64>,
    pub peer_refusals: HashMap<&'static str, u64>,
}

impl TurnCounters {
    fn drop(&mut self, why: &'static str) {
        *self.drops.entry(why).or_default() += 1;
    }
}

#[derive(Clone, Debug)]
struct ChannelBinding {
    number: u16,
    peer: SocketAddr,
    expires: Instant,
}

#[derive(Debug)]
struct Allocation {
    generation: u32,
    client: ClientAddr,
    /// The relayed socket's local address.
    relay: SocketAddr,
    /// The relayed address as reported (after `--external-ip`).
    public: SocketAddr,
    username: Box<str>,
    key: Key,
    expires: Instant,
    permissions: Vec<(IpAddr, Instant)>,
    channels: Vec<ChannelBinding>,
    /// Token bucket for the bandwidth cap: (tokens, last refill).
    bucket: (f64, Instant),
    /// The Allocate transaction, to answer its retransmissions with success.
    allocate_txid: [u8; 16],
    /// When the sweeper's timer entry for this allocation fires (see `schedule`).
    deadline: Option<Instant>,
    bound: bool,
    since: Instant,
    to_peer_bytes: u64,
    to_client_bytes: u64,
}

#[derive(Debug)]
struct PendingAllocate {
    index: u32,
    client: ClientAddr,
    raw_id: [u8; 16],
    username: Box<str>,
    key: Key,
    lifetime: Duration,
    ip: IpAddr,
    even: bool,
    reserve_next: bool,
    /// A port redeemed from a reservation token (no retry on another port).
    reserved: bool,
    /// The address the driver is binding.
    addr: SocketAddr,
    attempts: u32,
    sha256: bool,
}

/// The TURN server. See the module docs for the driving loop.
pub struct TurnServer {
    config: TurnConfig,
    creds: Credentials,
    nonces: Nonces,
    limiter: RateLimiter,
    epoch: Instant,
    unix_at_epoch: u64,
    slots: Vec<Option<Allocation>>,
    gens: Vec<u32>,
    free: Vec<u32>,
    by_client: HashMap<ClientAddr, u32>,
    by_public: HashMap<SocketAddr, u32>,
    per_user: HashMap<Box<str>, u32>,
    per_source: HashMap<IpAddr, u32>,
    live: usize,
    ports: PortPool,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    pending: HashMap<u64, PendingAllocate>,
    next_pending: u64,
    events: VecDeque<Event>,
    drain_until: Option<Instant>,
    /// The drain period is over and every allocation was released.
    drained: bool,
    reservation_timer: Option<Instant>,
    rng: u64,
    counters: TurnCounters,
}

/// The outcome of authenticating a request.
enum Auth {
    Ok {
        username: Box<str>,
        key: Key,
        sha256: bool,
    },
    /// Already answered (401/438/400), or dropped by the rate limiter.
    Answered(ClientAction),
}

impl TurnServer {
    /// A server with `creds`, whose clock starts at `now` (`unix_now` in Unix seconds, for
    /// time-limited credentials). `seed` keys the nonces and picks ports; use random bytes.
    pub fn new(
        config: TurnConfig,
        creds: Credentials,
        now: Instant,
        unix_now: u64,
        seed: [u8; 32],
    ) -> TurnServer {
        let rng = u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")) | 1;
        let (rate, burst) = config.auth_rate;
        TurnServer {
            nonces: Nonces::new(seed, now, config.nonce_lifetime),
            limiter: RateLimiter::new(rate, burst, 16_384),
            ports: PortPool::new(config.ports.clone(), (rng >> 16) as u16),
            config,
            creds,
            epoch: now,
            unix_at_epoch: unix_now,
            slots: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            by_client: HashMap::new(),
            by_public: HashMap::new(),
            per_user: HashMap::new(),
            per_source: HashMap::new(),
            live: 0,
            timers: BinaryHeap::new(),
            pending: HashMap::new(),
            next_pending: 1,
            events: VecDeque::new(),
            drain_until: None,
            drained: false,
            reservation_timer: None,
            rng,
            counters: TurnCounters::default(),
        }
    }

    /// Replaces the credentials (users file or secrets reloaded). Live allocations keep the key
    /// they were created with.
    pub fn set_credentials(&mut self, creds: Credentials) {
        self.creds = creds;
    }

    /// Replaces the host's own addresses the peer policy refuses ([`PeerPolicy::own`]): the
    /// driver re-reads them when the host's addresses change and on SIGHUP.
    pub fn set_own_addresses(&mut self, own: Vec<IpAddr>) {
        self.config.policy.own = own;
    }

    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    pub fn config(&self) -> &TurnConfig {
        &self.config
    }

    pub fn counters(&self) -> &TurnCounters {
        &self.counters
    }

    /// Live allocations.
    pub fn allocations(&self) -> usize {
        self.live
    }

    /// Counts an input the driver dropped before the core saw it (a truncated datagram, say),
    /// so that every input shows up in [`TurnServer::counters`].
    pub fn count_drop(&mut self, why: &'static str) {
        self.counters.drop(why);
    }

    /// How big every table is now (for tests and fuzzers that check they stay bounded).
    pub fn table_sizes(&self) -> TableSizes {
        let live = self.slots.iter().flatten();
        TableSizes {
            slots: self.slots.len(),
            by_client: self.by_client.len(),
            by_public: self.by_public.len(),
            per_user: self.per_user.len(),
            per_source: self.per_source.len(),
            pending: self.pending.len(),
            timers: self.timers.len(),
            rate_limiter: self.limiter.len(),
            ports_in_use: self.ports.in_use(),
            reservations: self.ports.reservations(),
            permissions: live.clone().map(|a| a.permissions.len()).sum(),
            channels: live.map(|a| a.channels.len()).sum(),
            events: self.events.len(),
        }
    }

    /// Stop taking new allocations; keep relaying until `until`, capping refreshes to it, or
    /// until the last allocation is gone, whichever comes first. Call
    /// [`TurnServer::handle_timeout`] after it (and after any input that may have released an
    /// allocation), then ask [`TurnServer::drained`].
    pub fn start_drain(&mut self, until: Instant) {
        self.drain_until = Some(until);
    }

    pub fn draining(&self) -> Option<Instant> {
        self.drain_until
    }

    /// The drain is over (its time ran out, or no allocation was left): nothing is relayed any
    /// more; the driver may exit. Updated by [`TurnServer::handle_timeout`].
    pub fn drained(&self) -> bool {
        self.drained
    }

    /// The client of a live allocation.
    pub fn client_of(&self, id: AllocId) -> Option<ClientAddr> {
        self.get(id).map(|a| a.client)
    }

    /// The relayed address of a live allocation.
    pub fn relay_of(&self, id: AllocId) -> Option<SocketAddr> {
        self.get(id).map(|a| a.relay)
    }

    /// Forgets every allocation of a closed stream connection (TCP/TLS): RFC 8656 §7 ties the
    /// allocation's life to the connection.
    pub fn connection_closed(&mut self, client: &ClientAddr) {
        if let Some(&i) = self.by_client.get(client) {
            self.free_allocation(i);
        }
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next instant something expires.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let heap = self.timers.peek().map(|Reverse((t, _, _))| *t);
        let drain = self.drain_until.filter(|_| !self.drained);
        match (heap, drain) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires allocations, permissions, channels and reservations due by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((t, i, generation))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(a) = self.slots.get(i as usize).and_then(|s| s.as_ref()) else {
                continue;
            };
            if a.generation != generation || a.deadline != Some(t) {
                continue; // superseded by a later schedule
            }
            if a.expires <= now {
                self.counters.expired += 1;
                self.free_allocation(i);
            } else {
                self.sweep(i, now);
            }
        }
        let next = self.ports.expire(now);
        self.schedule_reservations(next);
        if let Some(until) = self.drain_until.filter(|_| !self.drained) {
            if until <= now {
                let live: Vec<u32> = self.by_client.values().copied().collect();
                for i in live {
                    self.free_allocation(i);
                }
                self.drained = true;
            } else if self.live == 0 && self.pending.is_empty() {
                // Nothing left to relay for, and no new allocation will come: waiting out the
                // period would only delay a restart.
                self.drained = true;
            }
        }
    }

    fn get(&self, id: AllocId) -> Option<&Allocation> {
        self.slots
            .get(id.index as usize)?
            .as_ref()
            .filter(|a| a.generation == id.generation && a.bound)
    }

    fn unix_now(&self, now: Instant) -> u64 {
        self.unix_at_epoch + now.saturating_duration_since(self.epoch).as_secs()
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: tokens need unpredictability only against off-path guessing of a 30 s
        // reservation, and the generator is seeded from the OS by the driver.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    // ---------------------------------------------------------------- client side

    /// Handles one message from a client. `out` receives any bytes to send to a client.
    pub fn handle_client(
        &mut self,
        now: Instant,
        from: ClientAddr,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> ClientAction {
        if data.first().is_some_and(|b| channel::is_channel_data(*b)) {
            return self.client_channel_data(now, from, data, out);
        }
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(_) => {
                self.counters.drop("malformed");
                return ClientAction::None;
            }
        };
        if msg.is_rfc3489() || msg.check_fingerprint() == IntegrityCheck::Invalid {
            self.counters.drop("malformed");
            return ClientAction::None;
        }
        match (msg.method(), msg.class()) {
            (method::SEND, Class::Indication) => self.send_indication(now, from, &msg, out),
            (method::BINDING, Class::Request) => self.binding(from, &msg, out),
            (_, Class::Request) => self.request(now, from, &msg, out),
            (method::BINDING, Class::Indication) => {
                // A keepalive (RFC 8489 §6.3.2): nothing to do, but every input is counted.
                self.counters.drop("keepalive");
                ClientAction::None
            }
            _ => {
                self.counters.drop("unexpected_class");
                ClientAction::None
            }
        }
    }

    fn binding(&mut self, from: ClientAddr, msg: &Message<'_>, out: &mut Vec<u8>) -> ClientAction {
        let mut b = MessageBuilder::with_raw_id(out, method::BINDING, Class::Success, msg.raw_id());
        b.xor_address(attr::XOR_MAPPED_ADDRESS, from.remote);
        if let Some(s) = &self.config.software {
            b.attr(attr::SOFTWARE, s.as_bytes());
        }
        let len = b.fingerprint();
        ClientAction::ToClient { to: from, len }
    }

    fn request(
        &mut self,
        now: Instant,
        from: ClientAddr,
        msg: &Message<'_>,
        out: &mut Vec<u8>,
    ) -> ClientAction {
        const KNOWN: &[u16] = &[
            attr::USERNAME,
            attr::REALM,
            attr::NONCE,
            attr::MESSAGE_INTEGRITY,
            attr::MESSAGE_INTEGRITY_SHA256,
            attr::PASSWORD_ALGORITHM,
            attr::USERHASH,
            attr::LIFETIME,
            attr::REQUESTED_TRANSPORT,
            attr::REQUESTED_ADDRESS_FAMILY,
            attr::EVEN_PORT,
            attr::RESERVATION_TOKEN,
            attr::DONT_FRAGMENT,
            attr::XOR_PEER_ADDRESS,
            attr::CHANNEL_NUMBER,
            attr::DATA,
        ];
        let method = msg.method();
        if !matches!(
            method,
            method::ALLOCATE | method::REFRESH | method::CREATE_PERMISSION | method::CHANNEL_BIND
        ) {
            return self.error(from, msg, 400, "Unsupported method", None, out);
        }
        let mut unknown: Vec<u16> = msg.unknown_required(KNOWN).collect();
        unknown.dedup();
        if !unknown.is_empty() {
            self.counters.drop("unknown_attribute");
            let len = {
                let mut b = MessageBuilder::with_raw_id(out, method, Class::Error, msg.raw_id());
                b.error_code(420, "Unknown Attribute");
                b.unknown_attributes(&unknown);
                b.fingerprint()
            };
            *self.counters.errors.entry(420).or_default() += 1;
            return ClientAction::ToClient { to: from, len };
        }
        let (username, key, sha256) = match self.authenticate(now, from, msg, out) {
            Auth::Ok {
                username,
                key,
                sha256,
            } => (username, key, sha256),
            Auth::Answered(a) => return a,
        };
        let sign = Some((key, sha256));
        // Requests for an existing allocation must come from its owner (RFC 8656 §5).
        let existing = self.by_client.get(&from).copied();
        if let Some(i) = existing
            && method != method::ALLOCATE
        {
            let a = self.slots[i as usize].as_ref().expect("indexed");
            if *a.username != *username {
                return self.error(from, msg, 441, "Wrong Credentials", sign, out);
            }
        }
        match method {
            method::ALLOCATE => self.allocate(now, from, msg, username, key, sha256, existing, out),
            method::REFRESH => self.refresh(now, from, msg, existing, sign, out),
            method::CREATE_PERMISSION => {
                self.create_permission(now, from, msg, existing, sign, out)
            }
            _ => self.channel_bind(now, from, msg, existing, sign, out),
        }
    }

    /// RFC 8489 §9.2.4: the long-term credential mechanism, server side.
    fn authenticate(
        &mut self,
        now: Instant,
        from: ClientAddr,
        msg: &Message<'_>,
        out: &mut Vec<u8>,
    ) -> Auth {
        let has_mi = msg.integrity_offset().is_some() || msg.integrity_sha256_offset().is_some();
        if !has_mi {
            return self.challenge(now, from, msg, 401, "Unauthenticated", out);
        }
        let (Some(username), Some(_realm), Some(nonce)) = (
            msg.text(attr::USERNAME),
            msg.text(attr::REALM),
            msg.text(attr::NONCE),
        ) else {
            return Auth::Answered(self.error(
                from,
                msg,
                400,
                "Missing USERNAME, REALM or NONCE",
                None,
                out,
            ));
        };
        match self.nonces.check(nonce, now, from.remote) {
            NonceCheck::Valid => {}
            NonceCheck::Stale => {
                self.counters.auth_stale_nonce += 1;
                return self.challenge(now, from, msg, 438, "Stale Nonce", out);
            }
            NonceCheck::Invalid => {
                self.counters.auth_failures += 1;
                return self.challenge(now, from, msg, 401, "Unauthenticated", out);
            }
        }
        // A live allocation's owner is checked against the key it was created with; anyone
        // else against the credentials as they are now.
        let keys: Vec<Key> = match self.by_client.get(&from) {
            Some(&i)
                if *self.slots[i as usize].as_ref().expect("indexed").username == *username =>
            {
                vec![self.slots[i as usize].as_ref().expect("indexed").key]
            }
            _ => match self.creds.keys(username, self.unix_now(now)) {
                Ok(k) => k,
                Err(CredentialError::Expired | CredentialError::UnknownUser) => {
                    self.counters.auth_failures += 1;
                    return self.challenge(now, from, msg, 401, "Unauthenticated", out);
                }
            },
        };
        let sha256 = msg.integrity_sha256_offset().is_some();
        for key in keys {
            let ok = if sha256 {
                msg.check_integrity_sha256(&key) == IntegrityCheck::Valid
            } else {
                msg.check_integrity(&key) == IntegrityCheck::Valid
            };
            if ok {
                return Auth::Ok {
                    username: username.into(),
                    key,
                    sha256,
                };
            }
        }
        self.counters.auth_failures += 1;
        self.challenge(now, from, msg, 401, "Unauthenticated", out)
    }

    /// A 401 or 438 with REALM and a fresh NONCE, unless this source already got too many.
    fn challenge(
        &mut self,
        now: Instant,
        from: ClientAddr,
        msg: &Message<'_>,
        code: u16,
        reason: &str,
        out: &mut Vec<u8>,
    ) -> Auth {
        // Stream clients completed a TCP handshake, so their address is real: no reflection.
        if from.transport == Transport::Udp && !self.limiter.allow(now, from.remote.ip()) {
            self.counters.auth_rate_limited += 1;
            return Auth::Answered(ClientAction::None);
        }
        self.counters.auth_challenges += 1;
        *self.counters.errors.entry(code).or_default() += 1;
        let nonce = self.nonces.mint(now, from.remote);
        let mut b = MessageBuilder::with_raw_id(out, msg.method(), Class::Error, msg.raw_id());
        b.error_code(code, reason);
        b.attr(attr::REALM, self.creds.realm.as_bytes());
        b.attr(attr::NONCE, nonce.as_bytes());
        if let Some(s) = &self.config.software {
            b.attr(attr::SOFTWARE, s.as_bytes());
        }
        let len = b.fingerprint();
        Auth::Answered(ClientAction::ToClient { to: from, len })
    }

    /// An error response; signed when the request authenticated (`sign`).
    fn error(
        &mut self,
        to: ClientAddr,
        msg: &Message<'_>,
        code: u16,
        reason: &str,
        sign: Option<(Key, bool)>,
        out: &mut Vec<u8>,
    ) -> ClientAction {
        *self.counters.errors.entry(code).or_default() += 1;
        let mut b = MessageBuilder::with_raw_id(out, msg.method(), Class::Error, msg.raw_id());
        b.error_code(code, reason);
        if code == 300
            && let Some(alt) = self.config.alternate_server
        {
            b.address(attr::ALTERNATE_SERVER, alt);
        }
        if let Some(s) = &self.config.software {
            b.attr(attr::SOFTWARE, s.as_bytes());
        }
        let len = finish(b, sign);
        ClientAction::ToClient { to, len }
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate(
        &mut self,
        now: Instant,
        from: ClientAddr,
        msg: &Message<'_>,
        username: Box<str>,
        key: Key,
        sha256: bool,
        existing: Option<u32>,
        out: &mut Vec<u8>,
    ) -> ClientAction {
        let sign = Some((key, sha256));
        if let Some(i) = existing {
            let a = self.slots[i as usize].as_ref().expect("indexed");
            if a.allocate_txid == msg.raw_id() && a.bound {
                // A retransmission of the request that created it: answer it again.
                let lifetime = a.expires.saturating_duration_since(now);
                let public = a.public;
                return self.allocate_success(
                    from,
                    msg.raw_id(),
                    public,
                    lifetime,
                    None,
                    (key, sha256),
                    out,
                );
            }
            return self.error(from, msg, 437, "Allocation Mismatch", sign, out);
        }
        match msg.u32_attr(attr::REQUESTED_TRANSPORT) {
            None => return self.error(from, msg, 400, "REQUESTED-TRANSPORT missing", sign, out),
            Some(v) if (v >> 24) != 17 => {
                return self.error(from, msg, 442, "Unsupported Transport Protocol", sign, out);
            }
            _ => {}
        }
        let token = msg.get(attr::RESERVATION_TOKEN).map(|a| a.value);
        let even = msg.get(attr::EVEN_PORT).map(|a| a.value);
        let family = msg.get(attr::REQUESTED_ADDRESS_FAMILY).map(|a| a.value);
        if token.is_some() && (even.is_some() || family.is_some()) {
            return self.error(
                from,
                msg,
                400,
                "RESERVATION-TOKEN with EVEN-PORT or a family",
                sign,
                out,
            );
        }
        if msg.get(attr::ADDITIONAL_ADDRESS_FAMILY).is_some() {
            return self.error(from, msg, 440, "Dual allocation not supported", sign, out);
        }
        let want_v4 = match family {
            None => true,
            Some([0x01, ..]) => true,
            Some([0x02, ..]) => false,
            Some(_) => {
                return self.error(from, msg, 440, "Address Family not Supported", sign, out);
            }
        };
        if self.drain_until.is_some() {
            return match self.config.alternate_server {
                Some(_) => self.error(from, msg, 300, "Try Alternate", sign, out),
                None => self.error(
                    from,
                    msg,
                    486,
                    "Allocation Quota Reached (draining)",
                    sign,
                    out,
                ),
            };
        }
        let user_n = self.per_user.get(&username).copied().unwrap_or(0);
        let source_n = self
            .per_source
            .get(&source_key(from.remote.ip()))
            .copied()
            .unwrap_or(0);
        // The reason phrase names the quota (RFC 8489 §14.8 leaves the phrase to the server):
        // a client over its own quota can release an allocation, one over the relay's cannot.
        let hit = if user_n >= self.config.user_quota {
            Some("Allocation Quota Reached (per user)")
        } else if source_n >= self.config.source_quota {
            Some("Allocation Quota Reached (per source)")
        } else if self.live >= self.config.total_quota as usize || self.pending.len() >= MAX_PENDING
        {
            Some("Allocation Quota Reached (total)")
        } else {
            None
        };
        if let Some(reason) = hit {
            self.counters.drop("quota");
            return self.error(from, msg, 486, reason, sign, out);
        }
        let lifetime = self.desired_lifetime(now, msg.u32_attr(attr::LIFETIME));

        let (addr, reserved) = match token {
            Some(t) => {
                let t = u64::from_be_bytes(t.try_into().unwrap_or([0; 8]));
                match self.ports.redeem(now, t) {
                    Some(a) => (a, true),
                    None => {
                        return self.error(
                            from,
                            msg,
                            508,
                            "Insufficient Capacity (unknown or expired token)",
                            sign,
                            out,
                        );
                    }
                }
            }
            None => {
                let Some(ip) = self
                    .config
                    .relay_ips
                    .iter()
                    .copied()
                    .find(|ip| ip.is_ipv4() == want_v4)
                else {
                    return self.error(from, msg, 440, "Address Family not Supported", sign, out);
                };
                let even = even.is_some();
                let pair = even
                    && msg
                        .get(attr::EVEN_PORT)
                        .is_some_and(|a| a.value.first().is_some_and(|b| b & 0x80 != 0));
                match self.ports.pick(now, ip, even, pair) {
                    Some(a) => (a, false),
                    None => return self.error(from, msg, 508, "Insufficient Capacity", sign, out),
                }
            }
        };
        let reserve_next = !reserved
            && msg
                .get(attr::EVEN_PORT)
                .is_some_and(|a| a.value.first().is_some_and(|b| b & 0x80 != 0));
        self.ports.take(addr);
        let index = self.reserve_slot();
        let pending = self.next_pending;
        self.next_pending += 1;
        self.pending.insert(
            pending,
            PendingAllocate {
                index,
                client: from,
                raw_id: msg.raw_id(),
                username,
                key,
                lifetime,
                ip: addr.ip(),
                even: even.is_some(),
                reserve_next,
                reserved,
                addr,
                attempts: 1,
                sha256,
            },
        );
        ClientAction::Bind {
            pending,
            id: AllocId {
                index,
                generation: self.gens[index as usize],
            },
            addr,
        }
    }

    /// RFC 8656 §7.2/§7.3: max(default, min(requested, max)); during a drain, no longer than
    /// the drain has left.
    fn desired_lifetime(&self, now: Instant, requested: Option<u32>) -> Duration {
        let d = match requested {
            Some(s) => Duration::from_secs(s as u64)
                .min(self.config.max_lifetime)
                .max(self.config.default_lifetime),
            None => self.config.default_lifetime,
        };
        match self.drain_until {
            Some(until) => d.min(until.saturating_duration_since(now)),
            None => d,
        }
    }

    fn reserve_slot(&mut self) -> u32 {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.gens.push(0);
                (self.slots.len() - 1) as u32
            }
        }
    }

    /// The driver's answer to [`ClientAction::Bind`]: `Ok` once the relayed socket is bound.
    /// On failure another port is tried (another `Bind`), up to a limit, then 508.
    pub fn relay_bound(
        &mut self,
        now: Instant,
        pending: u64,
        result: Result<(), std::io::ErrorKind>,
        out: &mut Vec<u8>,
    ) -> ClientAction {
        let Some(mut p) = self.pending.remove(&pending) else {
            return ClientAction::None;
        };
        if result.is_ok() {
            return self.finish_allocate(now, p, out);
        }
        self.ports.release(p.addr);
        self.ports.mark_busy(now, p.addr);
        let next = if p.reserved || p.attempts >= BIND_ATTEMPTS {
            None
        } else {
            self.ports.pick(now, p.ip, p.even, p.reserve_next)
        };
        let Some(addr) = next else {
            self.free.push(p.index);
            let sign = Some((p.key, p.sha256));
            return self.raw_error(
                p.client,
                p.raw_id,
                method::ALLOCATE,
                508,
                "Insufficient Capacity",
                sign,
                out,
            );
        };
        self.ports.take(addr);
        p.attempts += 1;
        p.addr = addr;
        let id = AllocId {
            index: p.index,
            generation: self.gens[p.index as usize],
        };
        let np = self.next_pending;
        self.next_pending += 1;
        self.pending.insert(np, p);
        ClientAction::Bind {
            pending: np,
            id,
            addr,
        }
    }

    fn finish_allocate(
        &mut self,
        now: Instant,
        p: PendingAllocate,
        out: &mut Vec<u8>,
    ) -> ClientAction {
        let generation = self.gens[p.index as usize];
        let public = SocketAddr::new(self.external(p.addr.ip()), p.addr.port());
        let token = if p.reserve_next {
            let t = self.random();
            self.ports
                .reserve(now, SocketAddr::new(p.addr.ip(), p.addr.port() + 1), t);
            let next = self.ports.expire(now);
            self.schedule_reservations(next);
            Some(t)
        } else {
            None
        };
        let expires = now + p.lifetime;
        let a = Allocation {
            generation,
            client: p.client,
            relay: p.addr,
            public,
            username: p.username.clone(),
            key: p.key,
            expires,
            permissions: Vec::new(),
            channels: Vec::new(),
            bucket: (self.config.bandwidth.unwrap_or(0) as f64, now),
            allocate_txid: p.raw_id,
            deadline: Some(expires),
            bound: true,
            since: now,
            to_peer_bytes: 0,
            to_client_bytes: 0,
        };
        self.slots[p.index as usize] = Some(a);
        self.by_client.insert(p.client, p.index);
        self.by_public.insert(public, p.index);
        if public != p.addr {
            self.by_public.insert(p.addr, p.index);
        }
        *self.per_user.entry(p.username).or_default() += 1;
        *self
            .per_source
            .entry(source_key(p.client.remote.ip()))
            .or_default() += 1;
        self.live += 1;
        self.counters.allocations_total += 1;
        self.push_timer(expires, p.index, generation);
        self.allocate_success(
            p.client,
            p.raw_id,
            public,
            p.lifetime,
            token,
            (p.key, p.sha256),
            out,
        )
    }

    /// Reservations ride on one timer entry with index `u32::MAX` (never a slot).
    fn schedule_reservations(&mut self, next: Option<Instant>) {
        if next != self.reservation_timer {
            self.reservation_timer = next;
            if let Some(t) = next {
                self.push_timer(t, u32::MAX, 0);
            }
        }
    }

    /// The address clients see for relay IP `ip` (`--external-ip`).
    fn external(&self, ip: IpAddr) -> IpAddr {
        self.config
            .external_ips
            .iter()
            .find(|(internal, _)| *internal == ip)
            .map_or(ip, |(_, ext)| *ext)
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate_success(
        &mut self,
        to: ClientAddr,
        raw_id: [u8; 16],
        relayed: SocketAddr,
        lifetime: Duration,
        token: Option<u64>,
        sign: (Key, bool),
        out: &mut Vec<u8>,
    ) -> ClientAction {
        let mut b = MessageBuilder::with_raw_id(out, method::ALLOCATE, Class::Success, raw_id);
        b.xor_address(attr::XOR_RELAYED_ADDRESS, relayed);
        b.u32_attr(attr::LIFETIME, lifetime.as_secs() as u32);
        if let Some(t) = token {
            b.attr(attr::RESERVATION_TOKEN, &t.to_be_bytes());
        }
        b.xor_address(attr::XOR_MAPPED_ADDRESS, to.remote);
        if let Some(s) = &self.config.software {
            b.attr(attr::SOFTWARE, s.as_bytes());
        }
        let len = finish(b, Some(sign));
        ClientAction::ToClient { to, len }
    }

    #[allow(clippy::too_many_arguments)]
    fn raw_error(
        &mut self,
        to: ClientAddr,
        raw_id: [u8; 16],
        method: u16,
        code: u16,
        reason: &str,
        sign: Option<(Key, bool)>,
        out: &mut Vec<u8>,
    ) -> ClientAction {
        *self.counters.errors.entry(code).or_default() += 1;
        let mut b = MessageBuilder::with_raw_id(out, method, Class::Error, raw_id);
        b.error_code(code, reason);
        let len = finish(b, sign);
        ClientAction::ToClient { to, len }
    }

    fn refresh(
        &mut self,
        now: Instant,
        from: ClientAddr,
        msg: &Message<'_>,
        existing: Option<u32>,
        sign: Option<(Key, bool)>,
        out: &mut Vec<u8>,
    ) -> ClientAction {
        let Some(i) = existing else {
            return self.error(from, msg, 437, "Allocation Mismatch", sign, out);
        };
        let relay_v4 = self.slots[i as usize]
            .as_ref()
            .expect("indexed")
            .relay
            .is_ipv4();
        if let Some(f) = msg.get(attr::REQUESTED_ADDRESS_FAMILY).map(|a| a.value)
            && (f.first() == Some(&0x01)) != relay_v4
        {
            return self.error(from, msg, 443, "Peer Address Family Mismatch", sign, out);
        }
        let requested = msg.u32_attr(attr::LIFETIME);
        let lifetime = if requested == Some(0) {
            self.free_allocation(i);
            Duration::ZERO
        } else {
            let d = self.desired_lifetime(now, requested);
            let a = self.slots[i as usize].as_mut().expect("indexed");
            a.expires = now + d;
            self.schedule(i, now);
            d
        };
        self.counters.refreshes += 1;
        let mut b = MessageBuilder::with_raw_id(out, method::REFRESH, Class::Success, msg.raw_id());
        b.u32_attr(attr::LIFETIME, lifetime.as_secs() as u32);
        if let Some(s) = &self.config.software {
            b.attr(attr::SOFTWARE, s.as_bytes());
        }
        let len = finish(b, sign);
        ClientAction::ToClient { to: from, len }
    }

    /// Why a peer address is not acceptable for an allocation.
    fn check_peer(
        &mut self,
        relay: SocketAddr,
        peer: SocketAddr,
    ) -> Result<(), (u16, &'static str)> {
        let peer_ip = canonical(peer.ip());
        if peer_ip.is_ipv4() != relay.is_ipv4() {
            return Err((443, "Peer Address Family Mismatch"));
        }
        // Another allocation on this relay: allowed, delivered internally.
        if self
            .by_public
            .contains_key(&SocketAddr::new(peer_ip, peer.port()))
        {
            return Ok(());
        }
        if let Err(why) = self.config.policy.check(peer) {
            *self.counters.peer_refusals.entry(why.label()).or_default() += 1;
            return Err((403, refusal_reason(&why)));
        }
        Ok(())
    }

    fn create_permission(
        &mut self,
        now: Instant,
        from: ClientAddr,
        msg: &Message<'_>,
        existing: Option<u32>,
        sign: Option<(Key, bool)>,
        out: &mut Vec<u8>,
    ) -> ClientAction {
        let Some(i) = existing else {
            return self.error(from, msg, 437, "Allocation Mismatch", sign, out);
        };
        let id = &msg.as_bytes()[4..20];
        // Only attributes the integrity check covered count (RFC 8489 §14.5): an
        // XOR-PEER-ADDRESS appended after MESSAGE-INTEGRITY by anyone on the path is ignored.
        let signed_end = [msg.integrity_offset(), msg.integrity_sha256_offset()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(usize::MAX);
        let peers: Vec<Option<SocketAddr>> = msg
            .attributes()
            .filter(|a| a.typ == attr::XOR_PEER_ADDRESS && a.offset < signed_end)
            .map(|a| crate::stun::decode_xor_address(a.value, id))
            .collect();
        if peers.is_empty() || peers.iter().any(Option::is_none) {
            return self.error(from, msg, 400, "Bad or missing XOR-PEER-ADDRESS", sign, out);
        }
        let relay = self.slots[i as usize].as_ref().expect("indexed").relay;
        for p in peers.iter().flatten() {
            if let Err((code, why)) = self.check_peer(relay, *p) {
                return self.error(from, msg, code, why, sign, out);
            }
        }
        let lifetime = self.config.permission_lifetime;
        let max = self.config.max_permissions;
        let a = self.slots[i as usize].as_mut().expect("indexed");
        for p in peers.iter().flatten() {
            let ip = canonical(p.ip());
            if !upsert_permission(&mut a.permissions, ip, now + lifetime, max) {
                return self.error(from, msg, 508, "Too many permissions", sign, out);
            }
        }
        self.counters.permissions += 1;
        self.schedule(i, now);
        self.plain_success(from, msg, sign, out)
    }

    fn plain_success(
        &mut self,
        to: ClientAddr,
        msg: &Message<'_>,
        sign: Option<(Key, bool)>,
        out: &mut Vec<u8>,
    ) -> ClientAction {
        let mut b = MessageBuilder::with_raw_id(out, msg.method(), Class::Success, msg.raw_id());
        if let Some(s) = &self.config.software {
            b.attr(attr::SOFTWARE, s.as_bytes());
        }
        let len = finish(b, sign);
        ClientAction::ToClient { to, len }
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        from: ClientAddr,
        msg: &Message<'_>,
        existing: Option<u32>,
        sign: Option<(Key, bool)>,
        out: &mut Vec<u8>,
    ) -> ClientAction {
        let Some(i) = existing else {
            return self.error(from, msg, 437, "Allocation Mismatch", sign, out);
        };
        let number = msg
            .get(attr::CHANNEL_NUMBER)
            .and_then(|a| a.value.get(..2))
            .map(|v| u16::from_be_bytes([v[0], v[1]]));
        let peer = msg.xor_address(attr::XOR_PEER_ADDRESS);
        let (Some(number), Some(peer)) = (number, peer) else {
            return self.error(
                from,
                msg,
                400,
                "Bad or missing CHANNEL-NUMBER or XOR-PEER-ADDRESS",
                sign,
                out,
            );
        };
        if !channel::ACCEPTED.contains(&number) {
            return self.error(from, msg, 400, "Channel number out of range", sign, out);
        }
        let peer = SocketAddr::new(canonical(peer.ip()), peer.port());
        let relay = self.slots[i as usize].as_ref().expect("indexed").relay;
        if let Err((code, why)) = self.check_peer(relay, peer) {
            return self.error(from, msg, code, why, sign, out);
        }
        let (chan_life, perm_life, max) = (
            self.config.channel_lifetime,
            self.config.permission_lifetime,
            self.config.max_channels,
        );
        let max_perms = self.config.max_permissions;
        let a = self.slots[i as usize].as_mut().expect("indexed");
        // A number or a peer bound (or cooling down) to something else cannot be rebound.
        let occupied = |c: &ChannelBinding| now < c.expires + CHANNEL_COOLDOWN;
        if a.channels
            .iter()
            .any(|c| occupied(c) && (c.number == number) != (c.peer == peer))
        {
            return self.error(
                from,
                msg,
                400,
                "Channel or peer already bound to another",
                sign,
                out,
            );
        }
        if let Some(c) = a.channels.iter_mut().find(|c| c.number == number) {
            c.expires = now + chan_life;
        } else if a.channels.len() < max {
            a.channels.push(ChannelBinding {
                number,
                peer,
                expires: now + chan_life,
            });
        } else {
            return self.error(from, msg, 508, "Too many channels", sign, out);
        }
        if !upsert_permission(&mut a.permissions, peer.ip(), now + perm_life, max_perms) {
            return self.error(from, msg, 508, "Too many permissions", sign, out);
        }
        self.counters.channel_binds += 1;
        self.schedule(i, now);
        self.plain_success(from, msg, sign, out)
    }

    fn send_indication(
        &mut self,
        now: Instant,
        from: ClientAddr,
        msg: &Message<'_>,
        out: &mut Vec<u8>,
    ) -> ClientAction {
        let Some(&i) = self.by_client.get(&from) else {
            self.counters.drop("no_allocation");
            return ClientAction::None;
        };
        let (Some(peer), Some(data)) =
            (msg.xor_address(attr::XOR_PEER_ADDRESS), msg.get(attr::DATA))
        else {
            self.counters.drop("malformed");
            return ClientAction::None;
        };
        let range = data.offset + 4..data.offset + 4 + data.value.len();
        let peer = SocketAddr::new(canonical(peer.ip()), peer.port());
        self.route(now, i, peer, range, msg.as_bytes(), out)
    }

    /// Sends data from allocation `i` toward `peer`: out of the relayed socket, or straight to
    /// another allocation of this relay when `peer` is one.
    fn route(
        &mut self,
        now: Instant,
        i: u32,
        peer: SocketAddr,
        range: Range<usize>,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> ClientAction {
        match self.check_to_peer(now, i, peer, range) {
            ClientAction::ToPeer { id, peer, data } => match self.allocation_at(peer) {
                Some(j) => self.internal(now, i, j, &input[data], out),
                None => ClientAction::ToPeer { id, peer, data },
            },
            other => other,
        }
    }

    /// The allocation whose relayed (or reported) address is `peer`, if any. Only the relay's
    /// own addresses can be one, so every other peer (nearly all data) skips the table lookup:
    /// this runs for every packet a client sends.
    fn allocation_at(&self, peer: SocketAddr) -> Option<u32> {
        let ip = peer.ip();
        let ours = self.config.relay_ips.contains(&ip)
            || self.config.external_ips.iter().any(|(_, e)| *e == ip);
        if ours {
            self.by_public.get(&peer).copied()
        } else {
            None
        }
    }

    fn client_channel_data(
        &mut self,
        now: Instant,
        from: ClientAddr,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> ClientAction {
        let Ok(cd) = channel::parse(data) else {
            self.counters.drop("malformed");
            return ClientAction::None;
        };
        let Some(&i) = self.by_client.get(&from) else {
            self.counters.drop("no_allocation");
            return ClientAction::None;
        };
        let a = self.slots[i as usize].as_ref().expect("indexed");
        let Some(peer) = a
            .channels
            .iter()
            .find(|c| c.number == cd.channel && now < c.expires)
            .map(|c| c.peer)
        else {
            self.counters.drop("no_channel");
            return ClientAction::None;
        };
        self.route(now, i, peer, cd.data, data, out)
    }

    /// Checks permission, own-host and bandwidth for data from allocation `i` to `peer`.
    fn check_to_peer(
        &mut self,
        now: Instant,
        i: u32,
        peer: SocketAddr,
        data: Range<usize>,
    ) -> ClientAction {
        let internal = self.allocation_at(peer).is_some();
        let own = !internal && {
            let ip = peer.ip();
            ip.is_loopback()
                || ip.is_unspecified()
                || self.config.policy.own.contains(&ip)
                || self.config.relay_ips.contains(&ip)
        };
        let cap = self.config.bandwidth;
        let a = self.slots[i as usize].as_mut().expect("indexed");
        if !a
            .permissions
            .iter()
            .any(|(ip, t)| *ip == peer.ip() && now < *t)
        {
            self.counters.drop("no_permission");
            return ClientAction::None;
        }
        if own {
            // A permission for the relay's IP (held by some allocation) covers every port; only
            // live relayed ports are peers.
            *self.counters.peer_refusals.entry("own_host").or_default() += 1;
            self.counters.drop("peer_refused");
            return ClientAction::None;
        }
        if !spend(&mut a.bucket, cap, now, data.len()) {
            self.counters.drop("bandwidth");
            return ClientAction::None;
        }
        self.counters.to_peer_packets += 1;
        self.counters.to_peer_bytes += data.len() as u64;
        a.to_peer_bytes += data.len() as u64;
        ClientAction::ToPeer {
            id: AllocId {
                index: i,
                generation: a.generation,
            },
            peer,
            data,
        }
    }

    /// Data from allocation `i`'s client to allocation `j`'s relayed address.
    fn internal(
        &mut self,
        now: Instant,
        i: u32,
        j: u32,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> ClientAction {
        let from = self.slots[i as usize].as_ref().expect("indexed").public;
        let Some(b) = self.slots[j as usize].as_ref() else {
            return ClientAction::None;
        };
        let id = AllocId {
            index: j,
            generation: b.generation,
        };
        self.counters.internal_packets += 1;
        match self.handle_peer(now, id, from, data, out) {
            PeerAction::ToClient { to, len } => ClientAction::ToClient { to, len },
            PeerAction::Drop => ClientAction::None,
        }
    }

    // ---------------------------------------------------------------- peer side

    /// Handles data that arrived on allocation `id`'s relayed socket from `peer`: ChannelData
    /// when a channel is bound to the peer, else a Data indication, written to `out`.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        id: AllocId,
        peer: SocketAddr,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> PeerAction {
        let cap = self.config.bandwidth;
        let Some(a) = self
            .slots
            .get_mut(id.index as usize)
            .and_then(|s| s.as_mut())
            .filter(|a| a.generation == id.generation && a.bound)
        else {
            self.counters.drop("no_allocation");
            return PeerAction::Drop;
        };
        let peer = SocketAddr::new(canonical(peer.ip()), peer.port());
        if !a
            .permissions
            .iter()
            .any(|(ip, t)| *ip == peer.ip() && now < *t)
        {
            self.counters.drop("no_permission");
            return PeerAction::Drop;
        }
        if !spend(&mut a.bucket, cap, now, data.len()) {
            self.counters.drop("bandwidth");
            return PeerAction::Drop;
        }
        let stream = a.client.transport.is_stream();
        out.clear();
        match a
            .channels
            .iter()
            .find(|c| c.peer == peer && now < c.expires)
        {
            Some(c) => channel::encode(out, c.number, data, stream),
            None => {
                let txid = crate::stun::TransactionId::random();
                let mut b = MessageBuilder::new(out, method::DATA, Class::Indication, txid);
                b.xor_address(attr::XOR_PEER_ADDRESS, peer);
                b.attr(attr::DATA, data);
                b.finish();
            }
        }
        self.counters.to_client_packets += 1;
        self.counters.to_client_bytes += data.len() as u64;
        a.to_client_bytes += data.len() as u64;
        PeerAction::ToClient {
            to: a.client,
            len: out.len(),
        }
    }

    // ---------------------------------------------------------------- timers and teardown

    /// Makes sure the sweeper visits allocation `i` by its next deadline (its expiry, or the
    /// earliest permission or channel change). At most one live timer entry per allocation: an
    /// entry is pushed only when the deadline moves earlier; a later deadline is picked up when
    /// the current entry fires. Superseded entries, and those of released allocations, are
    /// purged by [`TurnServer::push_timer`].
    fn schedule(&mut self, i: u32, now: Instant) {
        let a = self.slots[i as usize].as_mut().expect("indexed");
        let mut d = a.expires;
        for (_, t) in &a.permissions {
            d = d.min(*t);
        }
        for c in &a.channels {
            d = d.min(if c.expires > now {
                c.expires
            } else {
                c.expires + CHANNEL_COOLDOWN
            });
        }
        if a.deadline.is_none_or(|cur| d < cur) {
            a.deadline = Some(d);
            let generation = a.generation;
            self.push_timer(d, i, generation);
        }
    }

    /// Pushes a timer entry (`i == u32::MAX` for reservations). Entries that no longer match
    /// their allocation's deadline (superseded, or the allocation released: allocate and
    /// release in a loop leaves one behind per round, each living up to the maximum lifetime)
    /// are skipped when they fire, but until then they take memory: once they outnumber the
    /// live entries, they are purged. Amortised O(1) per push; the heap never holds more than
    /// 2 × (total quota + 1) + 65 entries.
    fn push_timer(&mut self, t: Instant, i: u32, generation: u32) {
        self.timers.push(Reverse((t, i, generation)));
        if self.timers.len() > 2 * (self.live + 1) + 64 {
            let (slots, reservation) = (&self.slots, self.reservation_timer);
            self.timers
                .retain(|Reverse((t, i, g))| match slots.get(*i as usize) {
                    _ if *i == u32::MAX => reservation == Some(*t),
                    Some(Some(a)) => a.generation == *g && a.deadline == Some(*t),
                    _ => false,
                });
        }
    }

    /// Drops expired permissions and channels (channels after their cooldown), then
    /// reschedules.
    fn sweep(&mut self, i: u32, now: Instant) {
        let a = self.slots[i as usize].as_mut().expect("indexed");
        a.permissions.retain(|(_, t)| *t > now);
        a.channels.retain(|c| c.expires + CHANNEL_COOLDOWN > now);
        a.deadline = None;
        self.schedule(i, now);
    }

    fn free_allocation(&mut self, i: u32) {
        let Some(a) = self.slots[i as usize].take() else {
            return;
        };
        self.by_client.remove(&a.client);
        self.by_public.remove(&a.public);
        self.by_public.remove(&a.relay);
        if let Some(n) = self.per_user.get_mut(&a.username) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&a.username);
            }
        }
        let ip = source_key(a.client.remote.ip());
        if let Some(n) = self.per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
        self.ports.release(a.relay);
        self.live -= 1;
        self.gens[i as usize] = self.gens[i as usize].wrapping_add(1);
        self.free.push(i);
        self.events.push_back(Event::Released {
            id: AllocId {
                index: i,
                generation: a.generation,
            },
            relay: a.relay,
            username: a.username,
            client: a.client,
            since: a.since,
            to_peer_bytes: a.to_peer_bytes,
            to_client_bytes: a.to_client_bytes,
        });
    }
}

/// Installs or refreshes a permission; `false` when the table is full.
fn upsert_permission(
    perms: &mut Vec<(IpAddr, Instant)>,
    ip: IpAddr,
    until: Instant,
    max: usize,
) -> bool {
    if let Some((_, t)) = perms.iter_mut().find(|(pip, _)| *pip == ip) {
        *t = until;
        true
    } else if perms.len() < max {
        perms.push((ip, until));
        true
    } else {
        false
    }
}

/// The bandwidth token bucket: one second of burst. `true` when `bytes` may pass.
fn spend(bucket: &mut (f64, Instant), cap: Option<u64>, now: Instant, bytes: usize) -> bool {
    let Some(rate) = cap else { return true };
    let rate = rate as f64;
    let (tokens, at) = bucket;
    *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(rate);
    *at = now;
    if *tokens >= bytes as f64 {
        *tokens -= bytes as f64;
        true
    } else {
        false
    }
}

fn refusal_reason(r: &Refusal) -> &'static str {
    match r {
        Refusal::SpecialPurpose(_) => "Forbidden: special-purpose peer address",
        Refusal::Multicast => "Forbidden: multicast peer address",
        Refusal::OwnHost => "Forbidden: the relay itself",
        Refusal::Embedded(..) => "Forbidden: embedded IPv4 address refused",
    }
}

/// Appends the integrity attributes a response needs and finishes it.
fn finish(mut b: MessageBuilder<'_>, sign: Option<(Key, bool)>) -> usize {
    match sign {
        Some((key, true)) => {
            b.message_integrity_sha256(&key);
        }
        Some((key, false)) => {
            b.message_integrity(&key);
        }
        None => {}
    }
    b.fingerprint()
}
