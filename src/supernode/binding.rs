//! The supernode's STUN binding service (RFC 8489 §6.3, RFC 5780 §6.1, RFC 3489 §9.2) as a
//! sans-IO core: one request in, at most one response out, no state kept between packets.
//!
//! # RFC 5780 and amplification
//!
//! A STUN server answers unauthenticated UDP, so any response larger than its request is an
//! amplification an attacker with a spoofed source can exploit. What we send, and why:
//!
//! - A plain Binding response is XOR-MAPPED-ADDRESS + SOFTWARE + FINGERPRINT: 68 bytes for an IPv4
//!   client against a 20-byte minimal request. RFC 8489 makes the first two at most a SHOULD;
//!   `software: None` trims the response to 40 bytes.
//! - RFC 5780 adds RESPONSE-ORIGIN and OTHER-ADDRESS (24 more bytes over IPv4). It also lets a
//!   request move the response to another of our addresses (CHANGE-REQUEST) or another port of the
//!   requester's IP (RESPONSE-PORT). Neither reaches a third address, so neither widens the
//!   reflection beyond the spoofed source itself.
//! - PADDING: RFC 5780 §6.1 says the server SHOULD pad its response to the MTU. We pad only up to
//!   the size of the request instead, so padding never makes a response longer than its request;
//!   a client testing fragmentation pads its request to the size it wants back. A padded response
//!   is the request's size rounded down to 4 bytes; when the request leaves no room (it is shorter
//!   than the unpadded response plus a PADDING header) the response carries no PADDING at all.
//!   PADDING with RESPONSE-PORT is refused with 400, as RFC 5780 §6.1 requires.
//!
//! In all, no response is more than 80 bytes plus the SOFTWARE attribute (4 bytes plus its value
//! rounded up to 4: 28 bytes for the default) longer than the request that caused it. The worst
//! case is a minimal 20-byte RFC 8489 request from an IPv6 client with RFC 5780 on:
//! XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN and OTHER-ADDRESS of 24 bytes each, and FINGERPRINT. Error
//! responses and RFC 3489 responses stay below that (the fuzz tests check every case).
//!
//! Operators who want none of RFC 5780 turn it off (`rfc5780: false`): CHANGE-REQUEST,
//! RESPONSE-PORT and PADDING are then answered with 420 like any unknown attribute.
//!
//! RFC 3489 requests (no magic cookie) get MAPPED-ADDRESS, SOURCE-ADDRESS and CHANGED-ADDRESS and
//! no attribute they would not understand. Their RESPONSE-ADDRESS, which would let anyone aim our
//! responses at a third party, is refused with 420.
//!
//! # Example: answer a Binding request, no socket needed
//!
//! `supernoded` feeds every datagram of its STUN sockets to [`BindingService::handle`]; so can
//! any program that owns a UDP socket.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//! use voxmesh::stun::{Class, Message, MessageBuilder, TransactionId, method};
//! use voxmesh::supernode::{BindingConfig, BindingCounters, BindingService, Via};
//!
//! let service = BindingService::new(
//!     BindingConfig {
//!         primary: "192.0.2.1:3478".parse().unwrap(),
//!         alternate: None,
//!         rfc5780: false,
//!         software: None,
//!     },
//!     Arc::new(BindingCounters::default()),
//! );
//! // A client behind a NAT: the request arrives from its public mapping.
//! let client: SocketAddr = "203.0.113.5:61000".parse().unwrap();
//! let mut request = Vec::new();
//! let txid = TransactionId::random();
//! MessageBuilder::new(&mut request, method::BINDING, Class::Request, txid).fingerprint();
//!
//! let mut out = Vec::new();
//! let reply = service.handle(Via::PRIMARY, client, &request, &mut out).expect("an answer");
//! assert_eq!((reply.via, reply.to), (Via::PRIMARY, client));
//! let response = Message::parse(&out[..reply.len]).unwrap();
//! assert_eq!(response.class(), Class::Success);
//! assert_eq!(response.transaction_id(), txid);
//! assert_eq!(response.xor_mapped_address(), Some(client));
//! // Not STUN at all: dropped, and counted.
//! assert!(service.handle(Via::PRIMARY, client, b"hello", &mut out).is_none());
//! assert_eq!(service.counters().drop_not_stun.load(std::sync::atomic::Ordering::Relaxed), 1);
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::stun::{self, Class, IntegrityCheck, Message, MessageBuilder, attr, method};

/// One of the service's (up to) four sockets: primary or alternate IP × primary or alternate
/// port (RFC 5780 §4.1).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Via {
    pub alt_ip: bool,
    pub alt_port: bool,
}

impl Via {
    pub const PRIMARY: Via = Via {
        alt_ip: false,
        alt_port: false,
    };

    /// All four combinations, primary first; index with [`Via::index`].
    pub const ALL: [Via; 4] = [
        Via::PRIMARY,
        Via {
            alt_ip: false,
            alt_port: true,
        },
        Via {
            alt_ip: true,
            alt_port: false,
        },
        Via {
            alt_ip: true,
            alt_port: true,
        },
    ];

    pub fn index(self) -> usize {
        (self.alt_ip as usize) * 2 + self.alt_port as usize
    }
}

/// Where the service listens.
#[derive(Clone, Debug)]
pub struct BindingConfig {
    /// The primary address and port.
    pub primary: SocketAddr,
    /// The alternate address and port (RFC 5780 OTHER-ADDRESS); `None` for a one-address server.
    pub alternate: Option<SocketAddr>,
    /// Serve RFC 5780 (CHANGE-REQUEST, RESPONSE-PORT, PADDING, RESPONSE-ORIGIN, OTHER-ADDRESS).
    pub rfc5780: bool,
    /// SOFTWARE attribute value; `None` omits it.
    pub software: Option<String>,
}

impl BindingConfig {
    /// The local address of socket `via` (the primary one when there is no alternate).
    pub fn local(&self, via: Via) -> SocketAddr {
        let Some(alt) = self.alternate else {
            return self.primary;
        };
        let ip = if via.alt_ip {
            alt.ip()
        } else {
            self.primary.ip()
        };
        let port = if via.alt_port {
            alt.port()
        } else {
            self.primary.port()
        };
        SocketAddr::new(ip, port)
    }

    /// The sockets this configuration needs.
    pub fn sockets(&self) -> Vec<(Via, SocketAddr)> {
        match self.alternate {
            None => vec![(Via::PRIMARY, self.primary)],
            Some(_) => Via::ALL.iter().map(|v| (*v, self.local(*v))).collect(),
        }
    }

    fn change_supported(&self) -> bool {
        self.rfc5780 && self.alternate.is_some()
    }
}

/// Counters for the metrics endpoint. Shared by every socket's task, hence atomics.
#[derive(Default, Debug)]
pub struct BindingCounters {
    pub requests: AtomicU64,
    pub requests_rfc3489: AtomicU64,
    pub change_ip: AtomicU64,
    pub change_port: AtomicU64,
    pub response_port: AtomicU64,
    pub padding: AtomicU64,
    pub indications: AtomicU64,
    pub errors_400: AtomicU64,
    pub errors_420: AtomicU64,
    pub drop_not_stun: AtomicU64,
    pub drop_malformed: AtomicU64,
    pub drop_bad_fingerprint: AtomicU64,
    pub drop_not_request: AtomicU64,
    pub drop_send_failed: AtomicU64,
}

impl BindingCounters {
    /// Prometheus text exposition of the counters.
    pub fn render(&self, out: &mut String) {
        let mut s = crate::net::prom::Snapshot::default();
        self.collect(&mut s);
        out.push_str(&s.render());
    }

    /// The counters as metric families.
    pub fn collect(&self, s: &mut crate::net::prom::Snapshot) {
        let g = |c: &AtomicU64| c.load(Relaxed);
        s.counter(
            "voxmesh_stun_requests_total",
            "Binding requests answered: rfc8489 and rfc3489 split them by version; the other \
             kinds count those that used a feature.",
            Some("kind"),
            [
                // `requests` counts both versions; the label promises RFC 8489 ones only.
                (
                    "rfc8489",
                    g(&self.requests).saturating_sub(g(&self.requests_rfc3489)),
                ),
                ("rfc3489", g(&self.requests_rfc3489)),
                ("change_ip", g(&self.change_ip)),
                ("change_port", g(&self.change_port)),
                ("response_port", g(&self.response_port)),
                ("padding", g(&self.padding)),
            ],
        );
        s.count(
            "voxmesh_stun_indications_total",
            "Binding indications (keepalives) received.",
            g(&self.indications),
        );
        s.counter(
            "voxmesh_stun_errors_total",
            "Error responses sent, by code.",
            Some("code"),
            [("400", g(&self.errors_400)), ("420", g(&self.errors_420))],
        );
        s.counter(
            "voxmesh_stun_dropped_total",
            "Datagrams dropped without a response, by reason.",
            Some("reason"),
            [
                ("not_stun", g(&self.drop_not_stun)),
                ("malformed", g(&self.drop_malformed)),
                ("bad_fingerprint", g(&self.drop_bad_fingerprint)),
                ("not_request", g(&self.drop_not_request)),
                ("send_failed", g(&self.drop_send_failed)),
            ],
        );
    }
}

/// A response to send: from socket `via` to `to`; the bytes are in the caller's buffer.
#[must_use]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Reply {
    pub via: Via,
    pub to: SocketAddr,
    pub len: usize,
}

/// Attributes a Binding request may carry that we understand (RFC 8489 and the ICE/auth ones a
/// client may add; authentication is not required for Binding, so they are accepted and unused).
const KNOWN_BASE: &[u16] = &[
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::USERHASH,
    attr::PASSWORD_ALGORITHM,
    attr::REALM,
    attr::NONCE,
    attr::PRIORITY,
    attr::USE_CANDIDATE,
];
const KNOWN_RFC5780: &[u16] = &[
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::USERHASH,
    attr::PASSWORD_ALGORITHM,
    attr::REALM,
    attr::NONCE,
    attr::PRIORITY,
    attr::USE_CANDIDATE,
    attr::CHANGE_REQUEST,
    attr::RESPONSE_PORT,
    attr::PADDING,
];

/// The binding service. Stateless: `&self` everywhere, so every socket task can share one.
#[derive(Debug)]
pub struct BindingService {
    config: BindingConfig,
    counters: Arc<BindingCounters>,
}

impl BindingService {
    /// A service for `config`, counting into `counters` (shared when one daemon runs several
    /// services, e.g. one per address family).
    pub fn new(config: BindingConfig, counters: Arc<BindingCounters>) -> Self {
        BindingService { config, counters }
    }

    pub fn config(&self) -> &BindingConfig {
        &self.config
    }

    pub fn counters(&self) -> &BindingCounters {
        &self.counters
    }

    /// Handles one datagram that arrived on socket `via` from `from`. Writes any response into
    /// `out` (cleared first) and says where to send it. Work is bounded by the parser's attribute
    /// limit; nothing here can panic on any input (see the fuzz tests).
    pub fn handle(
        &self,
        via: Via,
        from: SocketAddr,
        packet: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<Reply> {
        let c = &self.counters;
        let msg = match Message::parse(packet) {
            Ok(m) => m,
            Err(stun::ParseError::NotStun | stun::ParseError::TooShort) => {
                c.drop_not_stun.fetch_add(1, Relaxed);
                return None;
            }
            Err(_) => {
                c.drop_malformed.fetch_add(1, Relaxed);
                return None;
            }
        };
        if msg.check_fingerprint() == IntegrityCheck::Invalid {
            c.drop_bad_fingerprint.fetch_add(1, Relaxed);
            return None;
        }
        match (msg.method(), msg.class()) {
            (method::BINDING, Class::Request) => {}
            (method::BINDING, Class::Indication) => {
                c.indications.fetch_add(1, Relaxed);
                return None;
            }
            (_, Class::Request) => {
                // A request for a method this port does not serve (e.g. TURN Allocate).
                return Some(self.error(via, from, &msg, 400, "Unsupported method", &[], out));
            }
            _ => {
                c.drop_not_request.fetch_add(1, Relaxed);
                return None;
            }
        }
        let rfc3489 = msg.is_rfc3489();
        let rfc5780 = self.config.rfc5780;
        let known = if rfc5780 { KNOWN_RFC5780 } else { KNOWN_BASE };
        let mut unknown = [0u16; stun::MAX_ATTRIBUTES];
        let mut n_unknown = 0;
        for t in msg.unknown_required(known) {
            if !unknown[..n_unknown].contains(&t) {
                unknown[n_unknown] = t;
                n_unknown += 1;
            }
        }
        if n_unknown > 0 {
            return Some(self.error(
                via,
                from,
                &msg,
                420,
                "Unknown attribute",
                &unknown[..n_unknown],
                out,
            ));
        }

        let change = msg.change_request().unwrap_or_default();
        if (change.ip || change.port) && !self.config.change_supported() {
            // RFC 5780 §6.1: no alternate address means CHANGE-REQUEST is not understood.
            return Some(self.error(
                via,
                from,
                &msg,
                420,
                "No alternate address",
                &[attr::CHANGE_REQUEST],
                out,
            ));
        }
        let response_port = msg.response_port();
        let padding = msg.get(attr::PADDING);
        if msg.get(attr::CHANGE_REQUEST).is_some() && msg.change_request().is_none() {
            return Some(self.error(via, from, &msg, 400, "Malformed CHANGE-REQUEST", &[], out));
        }
        if msg.get(attr::RESPONSE_PORT).is_some() && response_port.is_none_or(|p| p == 0) {
            return Some(self.error(via, from, &msg, 400, "Malformed RESPONSE-PORT", &[], out));
        }
        if padding.is_some() && response_port.is_some() {
            return Some(self.error(via, from, &msg, 400, "PADDING with RESPONSE-PORT", &[], out));
        }

        let send_via = Via {
            alt_ip: via.alt_ip ^ change.ip,
            alt_port: via.alt_port ^ change.port,
        };
        let to = match response_port {
            Some(p) => SocketAddr::new(from.ip(), p),
            None => from,
        };
        let origin = self.config.local(send_via);
        // OTHER-ADDRESS (RFC 5780 §7.4) names where a CHANGE-REQUEST(ip+port) answer would come
        // from: the socket opposite the one asked, in both address and port.
        let opposite = Via {
            alt_ip: !via.alt_ip,
            alt_port: !via.alt_port,
        };
        let other =
            (rfc5780 && self.config.alternate.is_some()).then(|| self.config.local(opposite));

        let mut b = MessageBuilder::with_raw_id(out, method::BINDING, Class::Success, msg.raw_id());
        if rfc3489 {
            b.address(attr::MAPPED_ADDRESS, from);
            if !origin.ip().is_unspecified() {
                b.address(attr::SOURCE_ADDRESS, origin);
            }
            if let Some(other) = other {
                b.address(attr::CHANGED_ADDRESS, other);
            }
        } else {
            b.xor_address(attr::XOR_MAPPED_ADDRESS, from);
            if rfc5780 && !origin.ip().is_unspecified() {
                b.address(attr::RESPONSE_ORIGIN, origin);
            }
            if let Some(other) = other {
                b.address(attr::OTHER_ADDRESS, other);
            }
            if let Some(software) = &self.config.software {
                b.attr(attr::SOFTWARE, software.as_bytes());
            }
        }
        if padding.is_some() {
            // Pad up to the request's size, never beyond (see the module docs). The attribute
            // and FINGERPRINT headers count against the budget.
            let budget = packet
                .len()
                .saturating_sub(b.len() + 4 + if rfc3489 { 0 } else { 8 });
            // An empty PADDING would only add its 4-byte header; leave it out instead.
            if budget >= 4 {
                b.attr_with(attr::PADDING, budget & !3, |_| {});
            }
            c.padding.fetch_add(1, Relaxed);
        }
        let len = if rfc3489 { b.finish() } else { b.fingerprint() };

        c.requests.fetch_add(1, Relaxed);
        if rfc3489 {
            c.requests_rfc3489.fetch_add(1, Relaxed);
        }
        if change.ip {
            c.change_ip.fetch_add(1, Relaxed);
        }
        if change.port {
            c.change_port.fetch_add(1, Relaxed);
        }
        if response_port.is_some() {
            c.response_port.fetch_add(1, Relaxed);
        }
        Some(Reply {
            via: send_via,
            to,
            len,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn error(
        &self,
        via: Via,
        to: SocketAddr,
        req: &Message<'_>,
        code: u16,
        reason: &str,
        unknown: &[u16],
        out: &mut Vec<u8>,
    ) -> Reply {
        let mut b = MessageBuilder::with_raw_id(out, req.method(), Class::Error, req.raw_id());
        b.error_code(code, reason);
        if !unknown.is_empty() {
            b.unknown_attributes(unknown);
        }
        let len = if req.is_rfc3489() {
            b.finish()
        } else {
            b.fingerprint()
        };
        match code {
            420 => self.counters.errors_420.fetch_add(1, Relaxed),
            _ => self.counters.errors_400.fetch_add(1, Relaxed),
        };
        Reply { via, to, len }
    }
}
