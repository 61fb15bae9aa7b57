//! A deterministic, seeded mutation fuzzer for the STUN parser and the binding service.
//!
//! Seeds are real messages: the RFC 5769 and RFC 8489 B.1 vectors, Binding requests with
//! CHANGE-REQUEST, RESPONSE-PORT and PADDING, RFC 3489 requests, error and success responses,
//! indications and TURN requests. Each case takes one seed and applies one to four mutations: bit
//! flips, byte replacement, truncation, extension, a lying header length, lying attribute lengths,
//! repeated attributes, oversized attributes, attribute count blow-up, splices from other seeds,
//! removed, swapped or retyped attributes, a dropped magic cookie. Then, half of the time, the
//! header length and FINGERPRINT are made right again so the case gets past the framing checks
//! and into the service logic.
//!
//! The generator is a seeded `SmallRng` (cheap even in a debug build): a seed reproduces a run for
//! a given `rand` version.
//!
//! For every case:
//! - `Message::parse` does not panic, and neither does any accessor on an accepted message;
//! - `BindingService::handle` does not panic (four service configurations take turns);
//! - the case is either answered or counted, in exactly one of the answered/unanswered counters;
//! - every reply parses with our parser and, for RFC 8489 requests, with `stun_codec` (which also
//!   checks its FINGERPRINT), echoes the transaction ID, reports the source address, and carries
//!   the error code its counter says;
//! - the amplification guarantee of `supernode::binding`'s module docs holds exactly: no reply is
//!   more than 80 bytes plus the SOFTWARE attribute longer than its request, and a reply carrying
//!   PADDING is never longer than its request.
//!
//! `VOXMESH_FUZZ_CASES` sets the number of cases (default 100,000; a debug build runs them in a
//! few seconds), `VOXMESH_FUZZ_SEED` the seed, and `VOXMESH_FUZZ_REPORT` a file to write the JSON
//! summary to (`scripts/fuzz-stun` uses it). A failing case prints its number, seed and bytes.

use crate::env_u64;
use crate::support::stun as stun_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use stun_support::codec;
use voxmesh::cli::supernoded::software;
use voxmesh::stun::{
    self, ChangeRequest, Class, FINGERPRINT_XOR, HEADER_LEN, MAX_ATTRIBUTES, Message,
    MessageBuilder, ParseError, TransactionId, attr, decode_address, decode_xor_address,
    framed_len, long_term_key, method,
};
use voxmesh::supernode::{BindingConfig, BindingCounters, BindingService, Via};

const DEFAULT_CASES: u64 = 100_000;
const DEFAULT_SEED: u64 = 0x5eed_0005_7a17;
/// `supernode::binding` module docs: "no response is more than 80 bytes plus the SOFTWARE
/// attribute longer than the request that caused it".
const AMPLIFICATION_BOUND: usize = 80;

// ---- seeds ----

fn build(m: u16, class: Class, fp: bool, f: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, m, class, TransactionId::random());
    f(&mut b);
    let len = if fp { b.fingerprint() } else { b.finish() };
    buf.truncate(len);
    buf
}

fn classic(f: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
    let mut buf = Vec::new();
    let id: [u8; 16] = std::array::from_fn(|i| i as u8 * 13 + 1);
    let mut b = MessageBuilder::with_raw_id(&mut buf, method::BINDING, Class::Request, id);
    f(&mut b);
    let len = b.finish();
    buf.truncate(len);
    buf
}

fn seeds() -> Vec<Vec<u8>> {
    use stun_support::*;
    let req = |f: fn(&mut MessageBuilder)| build(method::BINDING, Class::Request, true, f);
    let cr = |ip, port| ChangeRequest { ip, port };
    let mut s = vec![
        RFC5769_REQUEST.to_vec(),
        RFC5769_RESPONSE_V4.to_vec(),
        RFC5769_RESPONSE_V6.to_vec(),
        RFC5769_LONG_TERM_REQUEST.to_vec(),
        rfc8489_b1_erratum_6268(),
        rfc8489_b1_as_published(),
        req(|_| {}),
        build(method::BINDING, Class::Request, false, |_| {}),
        req(|b| {
            b.change_request(ChangeRequest {
                ip: true,
                port: false,
            });
        }),
        req(|b| {
            b.change_request(ChangeRequest {
                ip: false,
                port: true,
            });
        }),
        req(|b| {
            b.change_request(ChangeRequest {
                ip: true,
                port: true,
            });
        }),
        req(|b| {
            b.response_port(4000);
        }),
        req(|b| {
            b.change_request(ChangeRequest {
                ip: true,
                port: true,
            })
            .response_port(4001);
        }),
        req(|b| {
            b.attr(attr::PADDING, &[0; 13]);
        }),
        req(|b| {
            b.attr(attr::PADDING, &[0; 200]);
        }),
        req(|b| {
            b.attr(attr::PADDING, &[0; 1200]);
        }),
        req(|b| {
            b.response_port(4002).attr(attr::PADDING, &[0; 100]);
        }),
        req(|b| {
            b.attr(attr::USERNAME, b"evtj:h6vY")
                .u32_attr(attr::PRIORITY, 0x6e00_01ff)
                .attr(attr::ICE_CONTROLLING, &[1; 8])
                .attr(attr::USE_CANDIDATE, &[])
                .message_integrity(b"VOkJxbRl1RmTxUk/WvJxBt");
        }),
        req(|b| {
            b.attr(attr::USERNAME, b"user")
                .attr(attr::REALM, b"example.org")
                .attr(attr::NONCE, b"nonce")
                .message_integrity(&long_term_key("user", "example.org", "pw"))
                .message_integrity_sha256(&[7; 32]);
        }),
        req(|b| {
            b.u32_attr(0x7777, 1).u32_attr(0x8777, 2);
        }),
        req(|b| {
            b.address(attr::RESPONSE_ADDRESS, "198.51.100.9:53".parse().unwrap());
        }),
        classic(|_| {}),
        classic(|b| {
            b.change_request(cr(true, true));
        }),
        classic(|b| {
            b.change_request(cr(false, true))
                .attr(attr::PADDING, &[0; 64]);
        }),
        classic(|b| {
            b.address(attr::RESPONSE_ADDRESS, "198.51.100.9:53".parse().unwrap());
        }),
        build(method::BINDING, Class::Indication, true, |_| {}),
        build(method::BINDING, Class::Success, true, |b| {
            b.xor_address(attr::XOR_MAPPED_ADDRESS, "[2001:db8::5]:9".parse().unwrap())
                .address(attr::RESPONSE_ORIGIN, "192.0.2.1:3478".parse().unwrap())
                .address(attr::OTHER_ADDRESS, "192.0.2.2:3479".parse().unwrap())
                .attr(attr::SOFTWARE, b"voxmesh");
        }),
        build(method::BINDING, Class::Error, true, |b| {
            b.error_code(420, "Unknown attribute")
                .unknown_attributes(&[0x7777, 0x0030, 0x0031]);
        }),
        build(method::BINDING, Class::Error, true, |b| {
            b.error_code(400, "Bad Request");
        }),
        build(method::ALLOCATE, Class::Request, true, |b| {
            b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
                .attr(attr::DONT_FRAGMENT, &[]);
        }),
        build(method::SEND, Class::Indication, false, |b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, "203.0.113.5:7".parse().unwrap())
                .attr(attr::DATA, b"hello");
        }),
    ];
    let mut header_only = s[6][..HEADER_LEN].to_vec();
    header_only[3] = 0;
    s.push(header_only);
    s
}

// ---- mutations ----

/// Attribute spans `(start, end)` found by walking the bytes as far as they make sense.
fn spans(m: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = HEADER_LEN;
    while pos + 4 <= m.len() && out.len() < 256 {
        let vlen = u16::from_be_bytes([m[pos + 2], m[pos + 3]]) as usize;
        let end = (pos + 4 + ((vlen + 3) & !3)).min(m.len());
        out.push((pos, end));
        pos = end;
    }
    out
}

/// Sets the header length to match the bytes, when it can be expressed.
fn fix_length(m: &mut [u8]) {
    if m.len() >= HEADER_LEN && m.len() - HEADER_LEN <= 0xffff {
        let len = (m.len() - HEADER_LEN) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
    }
}

/// Recomputes a trailing FINGERPRINT, or appends one.
fn refresh_fingerprint(m: &mut Vec<u8>, append: bool) {
    if m.len() < HEADER_LEN {
        return;
    }
    let n = m.len();
    let has = n >= HEADER_LEN + 8 && m[n - 8..n - 4] == [0x80, 0x28, 0x00, 0x04];
    if !has {
        if !append {
            return;
        }
        m.extend_from_slice(&[0x80, 0x28, 0x00, 0x04, 0, 0, 0, 0]);
    }
    fix_length(m);
    let n = m.len();
    let crc = crc32fast::hash(&m[..n - 8]) ^ FINGERPRINT_XOR;
    m[n - 4..].copy_from_slice(&crc.to_be_bytes());
}

const INTERESTING_TYPES: &[u16] = &[
    attr::MAPPED_ADDRESS,
    attr::RESPONSE_ADDRESS,
    attr::CHANGE_REQUEST,
    attr::SOURCE_ADDRESS,
    attr::CHANGED_ADDRESS,
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::ERROR_CODE,
    attr::UNKNOWN_ATTRIBUTES,
    attr::REALM,
    attr::NONCE,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::PASSWORD_ALGORITHM,
    attr::USERHASH,
    attr::XOR_MAPPED_ADDRESS,
    attr::PRIORITY,
    attr::USE_CANDIDATE,
    attr::PADDING,
    attr::RESPONSE_PORT,
    attr::SOFTWARE,
    attr::FINGERPRINT,
    attr::RESPONSE_ORIGIN,
    attr::OTHER_ADDRESS,
    0x0000,
    0x7fff,
    0x8000,
    0xffff,
];

fn random_type(rng: &mut SmallRng) -> u16 {
    if rng.random_bool(0.7) {
        INTERESTING_TYPES[rng.random_range(0..INTERESTING_TYPES.len())]
    } else {
        rng.random()
    }
}

fn interesting_u16(rng: &mut SmallRng, near: usize) -> u16 {
    let near = near.min(0xffff) as i64;
    match rng.random_range(0..8) {
        0 => 0,
        1 => 0xffff,
        2 => (near + rng.random_range(-8..=8)).clamp(0, 0xffff) as u16,
        3 => (near & !3) as u16,
        4 => 4,
        5 => 20,
        _ => rng.random(),
    }
}

/// `m[at..at] = what`, without `Vec::splice`'s iterator machinery (slow in debug builds).
fn insert(m: &mut Vec<u8>, at: usize, what: &[u8]) {
    let tail = m.split_off(at.min(m.len()));
    m.extend_from_slice(what);
    m.extend_from_slice(&tail);
}

fn push_attr(out: &mut Vec<u8>, typ: u16, value: &[u8]) {
    out.extend_from_slice(&typ.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + ((4 - value.len() % 4) % 4), 0);
}

/// Where to insert new attributes: an attribute boundary, usually before a trailing
/// FINGERPRINT so the message stays plausible.
fn insertion_point(m: &[u8], rng: &mut SmallRng) -> usize {
    let sp = spans(m);
    if sp.is_empty() || rng.random_bool(0.2) {
        return m.len().max(HEADER_LEN.min(m.len()));
    }
    if rng.random_bool(0.6) {
        sp.last().map(|s| s.0).unwrap_or(m.len())
    } else {
        sp[rng.random_range(0..sp.len())].0
    }
}

const MAX_MESSAGE: usize = HEADER_LEN + 0xffff;

fn mutate(m: &mut Vec<u8>, rng: &mut SmallRng, all: &[Vec<u8>], tally: &mut [u64; 14]) {
    let which = rng.random_range(0..14);
    tally[which] += 1;
    match which {
        // Bit flips.
        0 => {
            for _ in 0..rng.random_range(1..=8) {
                if !m.is_empty() {
                    let i = rng.random_range(0..m.len());
                    m[i] ^= 1 << rng.random_range(0..8);
                }
            }
        }
        // Byte replacement, biased to boundary values.
        1 => {
            for _ in 0..rng.random_range(1..=4) {
                if !m.is_empty() {
                    let i = rng.random_range(0..m.len());
                    m[i] = *[0x00, 0xff, 0x7f, 0x80, 0x01, 0x20, 0x21, rng.random()]
                        .get(rng.random_range(0..8))
                        .unwrap();
                }
            }
        }
        // Truncation.
        2 => {
            let n = rng.random_range(0..=m.len());
            m.truncate(n);
        }
        // Extension: random bytes or a well-formed extra attribute.
        3 => {
            if rng.random_bool(0.5) {
                let n = rng.random_range(1..=64);
                let mut bytes = vec![0u8; n];
                rng.fill(&mut bytes[..]);
                m.extend_from_slice(&bytes);
            } else {
                let mut v = vec![0u8; rng.random_range(0..=40)];
                rng.fill(&mut v[..]);
                let at = insertion_point(m, rng);
                let mut a = Vec::new();
                push_attr(&mut a, random_type(rng), &v);
                insert(m, at, &a);
            }
        }
        // Lying header length.
        4 => {
            if m.len() >= 4 {
                let v = interesting_u16(rng, m.len().saturating_sub(HEADER_LEN));
                m[2..4].copy_from_slice(&v.to_be_bytes());
            }
        }
        // Lying attribute length.
        5 => {
            let sp = spans(m);
            if !sp.is_empty() {
                let (start, end) = sp[rng.random_range(0..sp.len())];
                let v = interesting_u16(rng, end - start - 4);
                m[start + 2..start + 4].copy_from_slice(&v.to_be_bytes());
            }
        }
        // Repeated attribute.
        6 => {
            let sp = spans(m);
            if !sp.is_empty() {
                let (start, end) = sp[rng.random_range(0..sp.len())];
                let one = m[start..end].to_vec();
                let k = *[1usize, 2, 3, 47, 48, 60]
                    .get(rng.random_range(0..6))
                    .unwrap();
                let mut copies = Vec::with_capacity(one.len() * k);
                for _ in 0..k {
                    copies.extend_from_slice(&one);
                }
                insert(m, end, &copies);
            }
        }
        // Oversized attribute.
        7 => {
            let room = MAX_MESSAGE.saturating_sub(m.len() + 4);
            if room > 0 {
                let cap = if rng.random_bool(0.9) { 3000 } else { room };
                let len = rng.random_range(0..=room.min(cap));
                let at = insertion_point(m, rng);
                let fill = rng.random::<u8>();
                let mut a = Vec::with_capacity(len + 8);
                push_attr(&mut a, random_type(rng), &vec![fill; len]);
                insert(m, at, &a);
            }
        }
        // Attribute count blow-up, around the parser's limit.
        8 => {
            let n = *[
                MAX_ATTRIBUTES - 1,
                MAX_ATTRIBUTES,
                MAX_ATTRIBUTES + 1,
                100,
                1000,
            ]
            .get(rng.random_range(0..5))
            .unwrap();
            let at = insertion_point(m, rng);
            let mut a = Vec::with_capacity(n * 8);
            let (t1, t2) = (random_type(rng), random_type(rng));
            let pattern: u32 = rng.random();
            for i in 0..n {
                // Cheap variety: two types and value lengths 0..=4, from one random word.
                let t = if pattern >> (i % 32) & 1 == 0 { t1 } else { t2 };
                push_attr(
                    &mut a,
                    t,
                    &(i as u32).to_be_bytes()[..(i + pattern as usize) % 5],
                );
            }
            insert(m, at, &a);
        }
        // Splice an attribute from another seed.
        9 => {
            let other = &all[rng.random_range(0..all.len())];
            let sp = spans(other);
            if !sp.is_empty() {
                let (s, e) = sp[rng.random_range(0..sp.len())];
                let at = insertion_point(m, rng);
                insert(m, at, &other[s..e]);
            }
        }
        // Remove an attribute.
        10 => {
            let sp = spans(m);
            if !sp.is_empty() {
                let (s, e) = sp[rng.random_range(0..sp.len())];
                m.drain(s..e);
            }
        }
        // Retype the message (class, method, the two top bits).
        11 => {
            if m.len() >= 2 {
                let t: u16 = match rng.random_range(0..4) {
                    0 => stun::message_type(method::BINDING, Class::Request),
                    1 => stun::message_type(method::BINDING, Class::Indication),
                    2 => stun::message_type(rng.random_range(0..0x1000), Class::Request),
                    _ => rng.random(),
                };
                m[..2].copy_from_slice(&t.to_be_bytes());
            }
        }
        // Drop the magic cookie: an RFC 3489 message.
        12 => {
            if m.len() >= 8 {
                let c: u32 = rng.random();
                m[4..8].copy_from_slice(&c.to_be_bytes());
            }
        }
        // Swap two attributes (moves FINGERPRINT or MESSAGE-INTEGRITY around).
        _ => {
            let sp = spans(m);
            if sp.len() >= 2 {
                let i = rng.random_range(0..sp.len());
                let j = rng.random_range(0..sp.len());
                let (a, b) = (sp[i.min(j)], sp[i.max(j)]);
                if a != b {
                    let mut out = m[..a.0].to_vec();
                    out.extend_from_slice(&m[b.0..b.1]);
                    out.extend_from_slice(&m[a.1..b.0]);
                    out.extend_from_slice(&m[a.0..a.1]);
                    out.extend_from_slice(&m[b.1..]);
                    *m = out;
                }
            }
        }
    }
    if m.len() > MAX_MESSAGE + 64 {
        m.truncate(MAX_MESSAGE + rng.random_range(0..64));
    }
}

// ---- checks ----

/// Every accessor on an accepted message, with sanity checks on what they return.
fn exercise(m: &Message<'_>, bytes: &[u8]) {
    assert_eq!(m.as_bytes(), bytes);
    assert_eq!(framed_len(bytes), Some(bytes.len()));
    let _ = (m.message_type(), m.method(), m.class(), m.is_rfc3489());
    let _ = (m.transaction_id(), m.raw_id());
    let mut n = 0;
    for a in m.attributes() {
        n += 1;
        assert!(a.offset >= HEADER_LEN && a.offset + 4 + a.value.len() <= bytes.len());
        let _ = decode_address(a.value);
        let _ = decode_xor_address(a.value, &bytes[4..20]);
        let _ = (m.get(a.typ), m.xor_address(a.typ), m.address(a.typ));
        let _ = (m.u32_attr(a.typ), m.text(a.typ));
    }
    assert!(n <= MAX_ATTRIBUTES, "{n} attributes accepted");
    for t in INTERESTING_TYPES {
        if let Some(a) = m.get(*t) {
            assert_eq!(a.typ, *t);
        }
    }
    let _ = m
        .unknown_required(&[attr::USERNAME, attr::PRIORITY])
        .count();
    let _ = (m.xor_mapped_address(), m.reflexive_address());
    let _ = (m.other_address(), m.response_origin());
    let _ = (m.change_request(), m.response_port());
    if let Some((code, _)) = m.error_code() {
        assert!((300..=699).contains(&code));
    }
    let fp = m.fingerprint_offset();
    if let Some(off) = fp {
        assert!(off + 4 <= bytes.len());
        assert_eq!(
            m.attributes().last().map(|a| a.offset),
            Some(off),
            "FINGERPRINT is last"
        );
    }
    let _ = (m.integrity_offset(), m.integrity_sha256_offset());
    let _ = m.check_fingerprint();
    let _ = m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBt");
    let _ = m.check_integrity(&[]);
    let _ = m.check_integrity_sha256(&[1; 32]);
    let _ = m.check_integrity_sha256(&[]);
}

/// The counters of one service, in a fixed order: the eight outcomes (exactly one per case), then
/// the per-feature ones.
fn outcome_counts(c: &BindingCounters) -> [u64; 14] {
    [
        c.requests.load(Relaxed),
        c.errors_400.load(Relaxed),
        c.errors_420.load(Relaxed),
        c.indications.load(Relaxed),
        c.drop_not_stun.load(Relaxed),
        c.drop_malformed.load(Relaxed),
        c.drop_bad_fingerprint.load(Relaxed),
        c.drop_not_request.load(Relaxed),
        c.drop_send_failed.load(Relaxed),
        c.requests_rfc3489.load(Relaxed),
        c.change_ip.load(Relaxed),
        c.change_port.load(Relaxed),
        c.response_port.load(Relaxed),
        c.padding.load(Relaxed),
    ]
}

const OUTCOMES: [&str; 8] = [
    "success",
    "error_400",
    "error_420",
    "indication",
    "not_stun",
    "malformed",
    "bad_fingerprint",
    "not_request",
];

#[derive(Default)]
struct Stats {
    outcomes: [u64; 8],
    parse_rejected: BTreeMap<&'static str, u64>,
    accepted: u64,
    codec_checked: u64,
    padded_replies: u64,
    max_amplification: i64,
    rfc3489_replies: u64,
    mutations: [u64; 14],
}

fn parse_error_name(e: ParseError) -> &'static str {
    match e {
        ParseError::TooShort => "too_short",
        ParseError::NotStun => "not_stun",
        ParseError::UnalignedLength => "unaligned_length",
        ParseError::LengthMismatch => "length_mismatch",
        ParseError::TruncatedAttribute => "truncated_attribute",
        ParseError::TooManyAttributes => "too_many_attributes",
        ParseError::FingerprintNotLast => "fingerprint_not_last",
    }
}

struct Svc {
    service: BindingService,
    sw_attr: usize,
    v6: bool,
}

fn services() -> Vec<Svc> {
    let sw = software();
    let sw_attr = 4 + sw.len().div_ceil(4) * 4;
    let mk = |p: &str, a: Option<&str>, rfc5780: bool, software: Option<String>| {
        let attr_len = if software.is_some() { sw_attr } else { 0 };
        let cfg = BindingConfig {
            primary: p.parse().unwrap(),
            alternate: a.map(|a| a.parse().unwrap()),
            rfc5780,
            software,
        };
        Svc {
            v6: cfg.primary.is_ipv6(),
            service: BindingService::new(cfg, Arc::new(BindingCounters::default())),
            sw_attr: attr_len,
        }
    };
    vec![
        mk(
            "192.0.2.1:3478",
            Some("192.0.2.2:3479"),
            true,
            Some(sw.clone()),
        ),
        mk("192.0.2.1:3478", None, true, None),
        mk(
            "192.0.2.1:3478",
            Some("192.0.2.2:3479"),
            false,
            Some(sw.clone()),
        ),
        mk(
            "[2001:db8::1]:3478",
            Some("[2001:db8::2]:3479"),
            true,
            Some(sw),
        ),
    ]
}

fn random_from(rng: &mut SmallRng, v6: bool) -> SocketAddr {
    let ip: IpAddr = match (v6, rng.random_range(0..3)) {
        (false, 0) => Ipv4Addr::LOCALHOST.into(),
        (false, _) => Ipv4Addr::from(rng.random::<u32>()).into(),
        (true, 0) => Ipv6Addr::LOCALHOST.into(),
        (true, _) => Ipv6Addr::from(rng.random::<u128>()).into(),
    };
    SocketAddr::new(ip, rng.random())
}

/// One case through the parser and one service; panics on any broken promise.
fn check_case(
    svc: &Svc,
    via: Via,
    from: SocketAddr,
    packet: &[u8],
    out: &mut Vec<u8>,
    st: &mut Stats,
) {
    let parsed = Message::parse(packet);
    match &parsed {
        Ok(m) => {
            st.accepted += 1;
            exercise(m, packet);
        }
        Err(e) => *st.parse_rejected.entry(parse_error_name(*e)).or_default() += 1,
    }

    let s = &svc.service;
    let before = outcome_counts(s.counters());
    let reply = s.handle(via, from, packet, out);
    let after = outcome_counts(s.counters());
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();

    // Exactly one outcome counter moved, by one; nothing is ever "send failed" in the core.
    assert_eq!(
        delta[..8].iter().sum::<u64>(),
        1,
        "one outcome per case: {delta:?}"
    );
    assert_eq!(delta[8], 0);
    let outcome = delta[..8].iter().position(|d| *d == 1).unwrap();
    st.outcomes[outcome] += 1;
    // Per-feature counters move only for answered successes.
    assert!(delta[9..].iter().all(|d| *d <= 1));
    if outcome != 0 {
        assert!(delta[9..].iter().all(|d| *d == 0), "{delta:?}");
    }
    assert_eq!(
        reply.is_some(),
        outcome <= 2,
        "answered iff success or error: {delta:?}"
    );

    let Ok(req) = parsed else {
        assert!(
            matches!(outcome, 4 | 5),
            "unparseable input is dropped as not STUN/malformed"
        );
        let e = parsed.unwrap_err();
        let not_stun = matches!(e, ParseError::TooShort | ParseError::NotStun);
        assert_eq!(
            outcome == 4,
            not_stun,
            "{e:?} counted as {}",
            OUTCOMES[outcome]
        );
        return;
    };
    let Some(reply) = reply else {
        return;
    };
    assert_eq!(reply.len, out.len());
    let bytes = &out[..reply.len];
    let r = Message::parse(bytes).unwrap_or_else(|e| panic!("our reply does not parse: {e}"));
    assert_eq!(r.raw_id(), req.raw_id(), "the ID is echoed");
    assert_eq!(r.method(), req.method());
    assert_eq!(r.is_rfc3489(), req.is_rfc3489());
    let amplification = reply.len as i64 - packet.len() as i64;
    st.max_amplification = st.max_amplification.max(amplification);
    assert!(
        reply.len <= packet.len() + AMPLIFICATION_BOUND + svc.sw_attr,
        "reply {} bytes for a {}-byte request",
        reply.len,
        packet.len()
    );
    if r.get(attr::PADDING).is_some() {
        st.padded_replies += 1;
        assert!(
            reply.len <= packet.len(),
            "padding made the reply longer than the request"
        );
    }
    if req.is_rfc3489() {
        st.rfc3489_replies += 1;
        assert_eq!(r.check_fingerprint(), stun::IntegrityCheck::Absent);
        assert_eq!(r.get(attr::XOR_MAPPED_ADDRESS), None);
    } else {
        assert_eq!(r.check_fingerprint(), stun::IntegrityCheck::Valid);
        // stun_codec 0.4 cannot check FINGERPRINT for methods above 0x00f (see stun_support).
        let (id, class, method) = if r.method() <= 0x00f {
            let m = codec::decode::<codec::Attr>(bytes);
            let m = m.unwrap_or_else(|e| panic!("stun_codec rejects our reply {bytes:02x?}: {e}"));
            (*m.transaction_id().as_bytes(), m.class(), m.method())
        } else {
            let m = codec::decode::<codec::AttrNoFingerprint>(bytes);
            let m = m.unwrap_or_else(|e| panic!("stun_codec rejects our reply {bytes:02x?}: {e}"));
            (*m.transaction_id().as_bytes(), m.class(), m.method())
        };
        assert_eq!(id, req.transaction_id().0);
        assert_eq!(method.as_u16(), r.method());
        let want = if outcome == 0 {
            stun_codec::MessageClass::SuccessResponse
        } else {
            stun_codec::MessageClass::ErrorResponse
        };
        assert_eq!(class, want);
        st.codec_checked += 1;
    }
    match outcome {
        0 => {
            assert_eq!(r.class(), Class::Success);
            assert_eq!(r.method(), method::BINDING);
            assert_eq!(r.reflexive_address(), Some(from));
            let change = req.change_request().unwrap_or_default();
            assert_eq!(
                reply.via,
                Via {
                    alt_ip: via.alt_ip ^ change.ip,
                    alt_port: via.alt_port ^ change.port,
                }
            );
            let to = req
                .response_port()
                .map_or(from, |p| SocketAddr::new(from.ip(), p));
            assert_eq!(reply.to, to);
        }
        _ => {
            assert_eq!(r.class(), Class::Error);
            let code = if outcome == 1 { 400 } else { 420 };
            assert_eq!(r.error_code().map(|e| e.0), Some(code));
            assert_eq!(reply.to, from, "errors go back to the source");
            assert_eq!(reply.via, via, "from the socket the request came in on");
            assert_eq!(r.get(attr::UNKNOWN_ATTRIBUTES).is_some(), code == 420);
        }
    }
}

#[test]
fn fuzz_parser_and_binding_service() {
    let cases = env_u64("VOXMESH_FUZZ_CASES", DEFAULT_CASES);
    let seed = env_u64("VOXMESH_FUZZ_SEED", DEFAULT_SEED);
    let mut rng = SmallRng::seed_from_u64(seed);
    let seeds = seeds();
    let svcs = services();
    let mut st = Stats::default();
    let mut out = Vec::with_capacity(4096);
    let started = Instant::now();

    for case in 0..cases {
        let mut m = seeds[rng.random_range(0..seeds.len())].clone();
        if case % 16 != 0 {
            for _ in 0..rng.random_range(1..=4) {
                mutate(&mut m, &mut rng, &seeds, &mut st.mutations);
            }
            if rng.random_bool(0.5) {
                fix_length(&mut m);
                refresh_fingerprint(&mut m, rng.random_bool(0.3));
            }
        }
        let i = rng.random_range(0..svcs.len());
        let svc = &svcs[i];
        let via = if svc.service.config().alternate.is_some() {
            Via::ALL[rng.random_range(0..4)]
        } else {
            Via::PRIMARY
        };
        let from = random_from(&mut rng, svc.v6);
        let r = catch_unwind(AssertUnwindSafe(|| {
            check_case(svc, via, from, &m, &mut out, &mut st)
        }));
        if let Err(panic) = r {
            let _ = writeln!(
                std::io::stderr(),
                "fuzz case {case} (VOXMESH_FUZZ_SEED={seed}) failed: service {i}, via {via:?}, \
                 from {from}, {} bytes:\n{m:02x?}",
                m.len()
            );
            resume_unwind(panic);
        }
    }
    let seconds = started.elapsed().as_secs_f64();

    // The counters of all services add up to the cases, outcome by outcome.
    let mut totals = [0u64; 14];
    for s in &svcs {
        for (t, c) in totals.iter_mut().zip(outcome_counts(s.service.counters())) {
            *t += c;
        }
    }
    assert_eq!(totals[..8], st.outcomes[..]);
    assert_eq!(totals[..8].iter().sum::<u64>(), cases);
    assert_eq!(totals[8], 0);

    let answered = st.outcomes[0] + st.outcomes[1] + st.outcomes[2];
    let report = serde_json::json!({
        "cases": cases,
        "seed": seed,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "answered": {
            "total": answered,
            "success": st.outcomes[0],
            "error": st.outcomes[1] + st.outcomes[2],
            "rfc3489": st.rfc3489_replies,
            "padded": st.padded_replies,
            "checked_by_stun_codec": st.codec_checked,
        },
        "errors": { "400": st.outcomes[1], "420": st.outcomes[2] },
        "unanswered": { "indication": st.outcomes[3] },
        "dropped": {
            "not_stun": st.outcomes[4],
            "malformed": st.outcomes[5],
            "bad_fingerprint": st.outcomes[6],
            "not_request": st.outcomes[7],
        },
        "features": {
            "change_ip": totals[10],
            "change_port": totals[11],
            "response_port": totals[12],
            "padding": totals[13],
        },
        "parser": { "accepted": st.accepted, "rejected": st.parse_rejected },
        "max_amplification_bytes": st.max_amplification,
        "mutations": st.mutations,
    });
    let line = report.to_string();
    let _ = writeln!(std::io::stderr(), "{line}");
    if let Ok(path) = std::env::var("VOXMESH_FUZZ_REPORT") {
        std::fs::write(&path, format!("{line}\n")).expect("write the fuzz report");
    }
    // The fuzzer must actually reach every outcome, or it is not testing the service.
    for (name, n) in OUTCOMES.iter().zip(st.outcomes) {
        assert!(n > 0 || cases < 10_000, "no case ended as {name}");
    }
}
