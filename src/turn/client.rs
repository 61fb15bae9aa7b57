//! The TURN client (RFC 8656 §6-§12) as a sans-IO state machine.
//!
//! It speaks to one server over whatever the driver gives it: the client's single UDP socket
//! (DESIGN §3: the driver demultiplexes by first byte and hands STUN and ChannelData from the
//! server here), or a TCP/TLS stream (the driver cuts frames with [`crate::stun::framed_len`] and
//! [`super::channel::framed_len`]). It authenticates with long-term credentials (a 401 teaches
//! it the realm and nonce; a 438 refreshes the nonce), keeps the allocation, its permissions and
//! its channels alive (refreshing before they expire), and turns application data into
//! ChannelData (when a channel is bound) or Send indications.
//!
//! Driving: call the operations ([`TurnClient::allocate`], [`TurnClient::create_permission`],
//! [`TurnClient::bind_channel`], [`TurnClient::send_to`], [`TurnClient::release`]), then send what
//! [`TurnClient::poll_transmit`] returns to the server; feed the server's messages to
//! [`TurnClient::handle_input`]; call [`TurnClient::handle_timeout`] at
//! [`TurnClient::poll_timeout`]; read [`TurnClient::poll_event`].

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use super::channel;
use crate::stun::timers::RttEstimator;
use crate::stun::{
    Class, IntegrityCheck, Message, MessageBuilder, TransactionId, attr, long_term_key, method,
};
use crate::transmit::Transmit;

/// How the client is configured.
#[derive(Clone, Debug)]
pub struct TurnClientConfig {
    pub server: SocketAddr,
    pub username: String,
    pub password: String,
    /// The transport carries a byte stream (TCP/TLS): no retransmission, padded ChannelData.
    pub stream: bool,
    /// Ask for an IPv6 relayed address.
    pub ipv6_relay: bool,
    /// Requested allocation lifetime.
    pub lifetime: Duration,
    pub software: Option<String>,
}

impl TurnClientConfig {
    pub fn new(server: SocketAddr, username: &str, password: &str) -> TurnClientConfig {
        TurnClientConfig {
            server,
            username: username.into(),
            password: password.into(),
            stream: false,
            ipv6_relay: false,
            lifetime: Duration::from_secs(600),
            software: None,
        }
    }
}

/// Operations the client performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Allocate,
    Refresh,
    CreatePermission,
    ChannelBind,
}

/// What the client tells its user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TurnEvent {
    Allocated {
        relayed: SocketAddr,
        mapped: Option<SocketAddr>,
        lifetime: Duration,
    },
    PermissionCreated(IpAddr),
    ChannelBound {
        peer: SocketAddr,
        channel: u16,
    },
    Refreshed {
        lifetime: Duration,
    },
    Released,
    /// An operation failed: the server's error (code, reason), or `code` 0 for a timeout.
    Failed {
        op: Op,
        code: u16,
        reason: String,
    },
    /// The server said to use another server (300 ALTERNATE-SERVER).
    TryAlternate(SocketAddr),
}

/// Data relayed from a peer: `message[data]` is the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub peer: SocketAddr,
    pub data: Range<usize>,
}

/// Why data could not be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no allocation yet")]
    NotAllocated,
    #[error("no permission for this peer (create one first)")]
    NoPermission,
    #[error("data too large for one message")]
    TooLarge,
}

#[derive(Clone, Debug)]
struct Txn {
    op: Op,
    bytes: Vec<u8>,
    sent: Instant,
    first_sent: Instant,
    tries: u32,
    next: Instant,
    /// The peer of a permission or channel request.
    peer: Option<SocketAddr>,
    channel: Option<u16>,
    /// Requested lifetime of a Refresh.
    lifetime: Option<Duration>,
    /// Already retried once after a 401/438 (never loop on bad credentials).
    reauthed: bool,
}

/// UDP retransmission: RFC 8489 §6.2.1 with a shorter first RTO (a relay is needed when a call
/// is being set up, and 500 ms per loss is a long pause there), still doubling, 7 sends.
const INITIAL_RTO: Duration = Duration::from_millis(250);
const RTO_FLOOR: Duration = Duration::from_millis(100);
const MAX_TRIES: u32 = 7;
/// Over a stream the transport retransmits; a request unanswered this long has failed.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// Permissions last 300 s and channels 600 s on the server (RFC 8656): refresh with a margin.
const PERMISSION_REFRESH: Duration = Duration::from_secs(240);
const CHANNEL_REFRESH: Duration = Duration::from_secs(540);
const MAX_DATA: usize = 65_000;

/// The TURN client state machine.
#[derive(Debug)]
pub struct TurnClient {
    config: TurnClientConfig,
    realm: Option<String>,
    nonce: Option<String>,
    key: Option<[u8; 16]>,
    relayed: Option<SocketAddr>,
    expires: Option<Instant>,
    refresh_at: Option<Instant>,
    /// peer IP -> when to refresh its permission (`None` while pending).
    permissions: HashMap<IpAddr, Option<Instant>>,
    /// peer -> (channel, refresh time; `None` while pending)
    channels: HashMap<SocketAddr, (u16, Option<Instant>)>,
    next_channel: u16,
    txns: HashMap<TransactionId, Txn>,
    rtt: RttEstimator,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<TurnEvent>,
    released: bool,
}

impl TurnClient {
    pub fn new(config: TurnClientConfig) -> TurnClient {
        TurnClient {
            config,
            realm: None,
            nonce: None,
            key: None,
            relayed: None,
            expires: None,
            refresh_at: None,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            next_channel: *channel::CHANNELS.start(),
            txns: HashMap::new(),
            rtt: RttEstimator::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            released: false,
        }
    }

    pub fn server(&self) -> SocketAddr {
        self.config.server
    }

    /// The relayed address, once allocated.
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.relayed
    }

    /// The smallest round trip measured to the server (first-try transactions over UDP only:
    /// none over a stream, where a retransmission is invisible).
    pub fn min_rtt(&self) -> Option<Duration> {
        self.rtt.min_rtt()
    }

    /// The channel bound to `peer`, if any (bound or being bound).
    pub fn channel_of(&self, peer: SocketAddr) -> Option<u16> {
        self.channels.get(&peer).map(|(c, _)| *c)
    }

    pub fn has_permission(&self, ip: IpAddr) -> bool {
        self.permissions.get(&ip).is_some_and(|r| r.is_some())
    }

    /// Asks for an allocation.
    pub fn allocate(&mut self, now: Instant) {
        self.request(now, Op::Allocate, None, None, None);
    }

    /// Installs (or refreshes) a permission for `peer`'s IP.
    pub fn create_permission(&mut self, now: Instant, peer: SocketAddr) {
        self.permissions.entry(peer.ip()).or_insert(None);
        self.request(now, Op::CreatePermission, Some(peer), None, None);
    }

    /// Binds a channel to `peer` (also installing its permission); returns the channel number.
    pub fn bind_channel(&mut self, now: Instant, peer: SocketAddr) -> u16 {
        let number = match self.channels.get(&peer) {
            Some((c, _)) => *c,
            None => {
                let c = self.next_channel;
                self.next_channel = if c == *channel::CHANNELS.end() {
                    *channel::CHANNELS.start()
                } else {
                    c + 1
                };
                self.channels.insert(peer, (c, None));
                c
            }
        };
        self.permissions.entry(peer.ip()).or_insert(None);
        self.request(now, Op::ChannelBind, Some(peer), Some(number), None);
        number
    }

    /// Ends the allocation (Refresh with lifetime 0).
    pub fn release(&mut self, now: Instant) {
        if self.relayed.is_some() {
            self.released = true;
            self.request(now, Op::Refresh, None, None, Some(Duration::ZERO));
        }
    }

    /// Queues `data` for `peer`: ChannelData on a bound channel, else a Send indication.
    pub fn send_to(&mut self, peer: SocketAddr, data: &[u8]) -> Result<(), SendError> {
        if self.relayed.is_none() {
            return Err(SendError::NotAllocated);
        }
        if data.len() > MAX_DATA {
            return Err(SendError::TooLarge);
        }
        if !self.permissions.contains_key(&peer.ip()) {
            return Err(SendError::NoPermission);
        }
        let mut out = Vec::with_capacity(data.len() + 40);
        match self.channels.get(&peer) {
            Some((c, Some(_))) => channel::encode(&mut out, *c, data, self.config.stream),
            _ => {
                let mut b = MessageBuilder::new(
                    &mut out,
                    method::SEND,
                    Class::Indication,
                    TransactionId::random(),
                );
                b.xor_address(attr::XOR_PEER_ADDRESS, peer);
                b.attr(attr::DATA, data);
                b.fingerprint();
            }
        }
        self.transmits.push_back(out);
        Ok(())
    }

    /// The next message for the server (always addressed to it: one allocation, one server).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let data = self.transmits.pop_front()?;
        Some(Transmit::new(self.config.server, data))
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<TurnEvent> {
        self.events.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.txns.values().map(|t| t.next).min();
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        consider(self.refresh_at);
        self.permissions.values().for_each(|t| consider(*t));
        self.channels.values().for_each(|(_, t)| consider(*t));
        next
    }

    /// Retransmits, gives up, and refreshes what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<TransactionId> = self
            .txns
            .iter()
            .filter(|(_, t)| t.next <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let t = self.txns.get_mut(&id).expect("listed");
            let give_up = if self.config.stream {
                now >= t.first_sent + STREAM_TIMEOUT
            } else {
                t.tries >= MAX_TRIES
            };
            if give_up {
                let t = self.txns.remove(&id).expect("listed");
                self.fail(t.op, t.peer, 0, "no answer from the TURN server".into());
                continue;
            }
            if self.config.stream {
                t.next = t.first_sent + STREAM_TIMEOUT;
                continue;
            }
            t.tries += 1;
            t.sent = now;
            let rto = self.rtt.rto(RTO_FLOOR, INITIAL_RTO) * (1 << (t.tries - 1).min(6));
            t.next = now + rto;
            self.transmits.push_back(t.bytes.clone());
        }
        if self.refresh_at.is_some_and(|t| t <= now) && !self.released {
            self.refresh_at = None;
            self.request(now, Op::Refresh, None, None, Some(self.config.lifetime));
        }
        let perms: Vec<IpAddr> = self
            .permissions
            .iter()
            .filter(|(_, t)| t.is_some_and(|t| t <= now))
            .map(|(ip, _)| *ip)
            .collect();
        for ip in perms {
            self.permissions.insert(ip, None);
            self.request(
                now,
                Op::CreatePermission,
                Some(SocketAddr::new(ip, 0)),
                None,
                None,
            );
        }
        let chans: Vec<(SocketAddr, u16)> = self
            .channels
            .iter()
            .filter(|(_, (_, t))| t.is_some_and(|t| t <= now))
            .map(|(p, (c, _))| (*p, *c))
            .collect();
        for (peer, c) in chans {
            self.channels.insert(peer, (c, None));
            self.request(now, Op::ChannelBind, Some(peer), Some(c), None);
        }
    }

    /// Handles a message from the server. Returns relayed peer data (a Data indication or
    /// ChannelData) for the application.
    pub fn handle_input(&mut self, now: Instant, message: &[u8]) -> Option<Received> {
        if message
            .first()
            .is_some_and(|b| channel::is_channel_data(*b))
        {
            let cd = channel::parse(message).ok()?;
            let peer = self
                .channels
                .iter()
                .find(|(_, (c, _))| *c == cd.channel)
                .map(|(p, _)| *p)?;
            return Some(Received {
                peer,
                data: cd.data,
            });
        }
        let msg = Message::parse(message).ok()?;
        if msg.check_fingerprint() == IntegrityCheck::Invalid {
            return None;
        }
        match (msg.method(), msg.class()) {
            (method::DATA, Class::Indication) => {
                let peer = msg.xor_address(attr::XOR_PEER_ADDRESS)?;
                let d = msg.get(attr::DATA)?;
                Some(Received {
                    peer,
                    data: d.offset + 4..d.offset + 4 + d.value.len(),
                })
            }
            (_, Class::Success | Class::Error) => {
                self.on_response(now, &msg);
                None
            }
            _ => None,
        }
    }

    fn on_response(&mut self, now: Instant, msg: &Message<'_>) {
        let id = msg.transaction_id();
        let Some(t) = self.txns.get(&id) else { return };
        // Responses to authenticated requests must carry valid integrity (RFC 8489 §9.2.5).
        if let Some(key) = self.key
            && msg.integrity_offset().is_some()
            && msg.check_integrity(&key) != IntegrityCheck::Valid
        {
            return;
        }
        let t = t.clone();
        self.txns.remove(&id);
        if t.tries == 1 && !self.config.stream {
            self.rtt.sample(now.saturating_duration_since(t.sent));
        }
        if msg.class() == Class::Error {
            let (code, reason) = msg.error_code().unwrap_or((0, "malformed error"));
            match code {
                401 | 438 if !t.reauthed => {
                    // Learn realm and nonce, then retry with credentials.
                    if let (Some(realm), Some(nonce)) =
                        (msg.text(attr::REALM), msg.text(attr::NONCE))
                    {
                        self.realm = Some(realm.into());
                        self.nonce = Some(nonce.into());
                        self.key = Some(long_term_key(
                            &self.config.username,
                            realm,
                            &self.config.password,
                        ));
                        let retry = self.request_inner(now, t.op, t.peer, t.channel, t.lifetime);
                        if let Some(r) = self.txns.get_mut(&retry) {
                            r.reauthed = code == 401;
                        }
                        return;
                    }
                    self.fail(t.op, t.peer, code, reason.into());
                }
                300 => match msg.address(attr::ALTERNATE_SERVER) {
                    Some(alt) => self.events.push_back(TurnEvent::TryAlternate(alt)),
                    None => self.fail(t.op, t.peer, code, reason.into()),
                },
                _ => self.fail(t.op, t.peer, code, reason.into()),
            }
            return;
        }
        match t.op {
            Op::Allocate => {
                let Some(relayed) = msg.xor_address(attr::XOR_RELAYED_ADDRESS) else {
                    return self.fail(
                        Op::Allocate,
                        None,
                        0,
                        "success without XOR-RELAYED-ADDRESS".into(),
                    );
                };
                let lifetime =
                    Duration::from_secs(msg.u32_attr(attr::LIFETIME).unwrap_or(600) as u64);
                self.relayed = Some(relayed);
                self.expires = Some(now + lifetime);
                self.refresh_at = Some(now + lifetime / 2);
                self.events.push_back(TurnEvent::Allocated {
                    relayed,
                    mapped: msg.xor_mapped_address(),
                    lifetime,
                });
            }
            Op::Refresh => {
                let lifetime =
                    Duration::from_secs(msg.u32_attr(attr::LIFETIME).unwrap_or(0) as u64);
                if lifetime.is_zero() {
                    self.relayed = None;
                    self.refresh_at = None;
                    self.permissions.clear();
                    self.channels.clear();
                    self.events.push_back(TurnEvent::Released);
                } else {
                    self.expires = Some(now + lifetime);
                    self.refresh_at = Some(now + lifetime / 2);
                    self.events.push_back(TurnEvent::Refreshed { lifetime });
                }
            }
            Op::CreatePermission => {
                if let Some(p) = t.peer {
                    self.permissions
                        .insert(p.ip(), Some(now + PERMISSION_REFRESH));
                    self.events.push_back(TurnEvent::PermissionCreated(p.ip()));
                }
            }
            Op::ChannelBind => {
                if let (Some(p), Some(c)) = (t.peer, t.channel) {
                    self.channels.insert(p, (c, Some(now + CHANNEL_REFRESH)));
                    self.permissions
                        .insert(p.ip(), Some(now + PERMISSION_REFRESH));
                    self.events.push_back(TurnEvent::ChannelBound {
                        peer: p,
                        channel: c,
                    });
                }
            }
        }
    }

    fn fail(&mut self, op: Op, peer: Option<SocketAddr>, code: u16, reason: String) {
        match (op, peer) {
            (Op::CreatePermission, Some(p)) => {
                self.permissions.remove(&p.ip());
            }
            (Op::ChannelBind, Some(p)) => {
                self.channels.remove(&p);
            }
            _ => {}
        }
        self.events
            .push_back(TurnEvent::Failed { op, code, reason });
    }

    fn request(
        &mut self,
        now: Instant,
        op: Op,
        peer: Option<SocketAddr>,
        channel: Option<u16>,
        lifetime: Option<Duration>,
    ) {
        self.request_inner(now, op, peer, channel, lifetime);
    }

    fn request_inner(
        &mut self,
        now: Instant,
        op: Op,
        peer: Option<SocketAddr>,
        channel: Option<u16>,
        lifetime: Option<Duration>,
    ) -> TransactionId {
        let id = TransactionId::random();
        let m = match op {
            Op::Allocate => method::ALLOCATE,
            Op::Refresh => method::REFRESH,
            Op::CreatePermission => method::CREATE_PERMISSION,
            Op::ChannelBind => method::CHANNEL_BIND,
        };
        let mut bytes = Vec::with_capacity(160);
        let mut b = MessageBuilder::new(&mut bytes, m, Class::Request, id);
        match op {
            Op::Allocate => {
                b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24);
                b.u32_attr(attr::LIFETIME, self.config.lifetime.as_secs() as u32);
                if self.config.ipv6_relay {
                    b.attr(attr::REQUESTED_ADDRESS_FAMILY, &[0x02, 0, 0, 0]);
                }
            }
            Op::Refresh => {
                b.u32_attr(
                    attr::LIFETIME,
                    lifetime.unwrap_or(self.config.lifetime).as_secs() as u32,
                );
            }
            Op::CreatePermission => {
                b.xor_address(attr::XOR_PEER_ADDRESS, peer.expect("permission has a peer"));
            }
            Op::ChannelBind => {
                b.attr(
                    attr::CHANNEL_NUMBER,
                    &[
                        (channel.unwrap_or(0) >> 8) as u8,
                        channel.unwrap_or(0) as u8,
                        0,
                        0,
                    ],
                );
                b.xor_address(attr::XOR_PEER_ADDRESS, peer.expect("channel has a peer"));
            }
        }
        if let Some(s) = &self.config.software {
            b.attr(attr::SOFTWARE, s.as_bytes());
        }
        if let (Some(realm), Some(nonce), Some(key)) = (&self.realm, &self.nonce, self.key) {
            b.attr(attr::USERNAME, self.config.username.as_bytes());
            b.attr(attr::REALM, realm.as_bytes());
            b.attr(attr::NONCE, nonce.as_bytes());
            b.message_integrity(&key);
        }
        b.fingerprint();
        let rto = if self.config.stream {
            STREAM_TIMEOUT
        } else {
            self.rtt.rto(RTO_FLOOR, INITIAL_RTO)
        };
        self.transmits.push_back(bytes.clone());
        self.txns.insert(
            id,
            Txn {
                op,
                bytes,
                sent: now,
                first_sent: now,
                tries: 1,
                next: now + rto,
                peer,
                channel,
                lifetime,
                reauthed: false,
            },
        );
        id
    }
}
