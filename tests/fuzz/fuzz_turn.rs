//! A deterministic, seeded mutation fuzzer for the TURN server: the sans-IO core in process (fast,
//! the bulk of the cases), the real `relayd` over loopback UDP, and relayd's TCP framing.
//!
//! Seeds are valid TURN messages from clients that hold live allocations, permissions and
//! channels, so mutated messages reach deep code: Allocate with and without authentication (MI
//! and MI-SHA256, EVEN-PORT, RESERVATION-TOKEN, IPv6), Refresh, CreatePermission (allowed,
//! refused, internal peers), ChannelBind, Send indications, ChannelData, Data indications,
//! Binding. Each case applies one to four mutations (bit flips, boundary bytes, truncation,
//! extension, lying lengths, repeated/oversized/spliced/removed/swapped/retyped attributes,
//! another peer address, another channel number), then usually repairs the framing (length,
//! MESSAGE-INTEGRITY re-signed with the client's key, FINGERPRINT) so it passes the checks and
//! exercises the logic behind them. Some cases come from peers, on relayed addresses, instead.
//! Time moves on in small steps with occasional jumps (permissions, channels, nonces and
//! allocations expire) and the clients re-establish themselves periodically.
//!
//! For every case (`fuzz_turn_server_core`):
//! - no panic;
//! - every output parses: responses as STUN with a valid FINGERPRINT that echo the request's
//!   method and transaction ID and carry a known error code; relayed data as ChannelData
//!   (exact length, padded on streams) or a Data indication; data for a peer is a range of the
//!   input and goes to a peer the policy allows, from a live allocation, never to the relay
//!   itself; relayed sockets are bound only on the relay addresses and ports;
//! - the counters account for the case: it is answered, or exactly one drop counter (a named
//!   reason, or the 401 rate limiter) moves by exactly one;
//! - every table stays within its bound (allocations, permissions, channels, timers, ports,
//!   the rate limiter), and unauthenticated answers amplify by a bounded number of bytes.
//!
//! `VOXMESH_FUZZ_CASES` sets the number of core cases (default 100,000: a few seconds in a debug
//! build), `VOXMESH_FUZZ_SEED` the seed, `VOXMESH_FUZZ_REPORT` a file for the JSON summary
//! (`scripts/fuzz-turn` runs a million cases in release). `VOXMESH_FUZZ_DAEMON_CASES` (default
//! 3,000) sets the datagrams sent to the real daemon by `fuzz_relayd_over_loopback`, and
//! `VOXMESH_FUZZ_DAEMON_REPORT` a file for its summary. A failing case prints its number, the
//! seed and its bytes.

use crate::env_u64;
use crate::support::relayd as relayd_support;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::ops::RangeInclusive;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use relayd_support::*;
use voxmesh::stun::{
    Class, FINGERPRINT_XOR, HEADER_LEN, IntegrityCheck, Message, MessageBuilder, TransactionId,
    attr, long_term_key, method,
};
use voxmesh::turn::server::{ClientAction, ClientAddr, Event, PeerAction, TableSizes, Transport};
use voxmesh::turn::{
    AllocId, Credentials, PeerPolicy, TurnConfig, TurnServer, channel, mint_rest_credential,
};

const DEFAULT_CASES: u64 = 100_000;
const DEFAULT_DAEMON_CASES: u64 = 3_000;
const DEFAULT_SEED: u64 = 0x7e55_7a17_0000_0001;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

// ---------------------------------------------------------------- the core's world

const LISTEN: &str = "203.0.113.10:3478";
const RELAY_V4: &str = "203.0.113.10";
const RELAY_V6: &str = "2001:db8:ffff::10";
/// A small range, so that port exhaustion (508) is reachable too.
const PORTS: RangeInclusive<u16> = 50000..=50047;
const REALM_CORE: &str = "voxmesh.fuzz";
const SECRET_CORE: &[u8] = b"fuzz-secret";
const UNIX_EPOCH_AT_START: u64 = 2_000_000_000;
/// Peers the policy allows (the lab's blocks) and refuses.
const ALLOWED: [&str; 4] = [
    "198.51.100.30:5000",
    "198.51.100.31:7",
    "[2001:db8::30]:5000",
    "[::ffff:198.51.100.30]:5000",
];
const REFUSED: [&str; 9] = [
    "10.0.0.1:1",
    "127.0.0.1:3478",
    "203.0.113.10:3478",
    "[::ffff:127.0.0.1]:1",
    "[64:ff9b::7f00:1]:1",
    "224.0.0.1:9",
    "[fe80::1]:1",
    "[2001:db8:ffff::10]:3478",
    "0.0.0.0:0",
];
/// Error codes the server may send.
const CODES: [u16; 14] = [
    300, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 486, 500, 508,
];

fn core_config() -> TurnConfig {
    TurnConfig {
        relay_ips: vec![RELAY_V4.parse().unwrap(), RELAY_V6.parse().unwrap()],
        ports: PORTS,
        user_quota: 4,
        source_quota: 4,
        total_quota: 12,
        max_permissions: 6,
        max_channels: 6,
        bandwidth: Some(200_000),
        auth_rate: (50.0, 100.0),
        policy: PeerPolicy {
            allow: vec![
                "198.51.100.0/24".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            own: vec![RELAY_V4.parse().unwrap(), RELAY_V6.parse().unwrap()],
        },
        ..TurnConfig::default()
    }
}

fn core_credentials() -> Credentials {
    let mut c = Credentials::new(REALM_CORE);
    c.add_user("alice", "secret");
    c.add_user("bob", "hunter2");
    c.add_user("carol", "pw3");
    c.add_secret(SECRET_CORE);
    c
}

/// A client of the fuzzed core, with what it needs to build and re-sign its messages.
struct Client {
    addr: ClientAddr,
    user: String,
    key: [u8; 16],
    v6: bool,
    nonce: Option<String>,
    seeds: Vec<Vec<u8>>,
}

fn clients() -> Vec<Client> {
    let udp = |remote: &str| ClientAddr {
        transport: Transport::Udp,
        remote: sa(remote),
        local: sa(LISTEN),
        conn: 0,
    };
    let (rest_user, rest_pass) =
        mint_rest_credential(SECRET_CORE, "fuzz", UNIX_EPOCH_AT_START + 1_000_000);
    let tcp = ClientAddr {
        transport: Transport::Tcp,
        remote: sa("198.51.100.22:5000"),
        local: sa(LISTEN),
        conn: 7,
    };
    [
        (udp("198.51.100.20:4000"), "alice", "secret", false),
        (udp("198.51.100.20:4001"), "bob", "hunter2", false),
        (
            udp("198.51.100.21:4000"),
            rest_user.as_str(),
            rest_pass.as_str(),
            false,
        ),
        (tcp, "carol", "pw3", false),
        (udp("[2001:db8::20]:4000"), "bob", "hunter2", true),
        (udp("198.51.100.23:4000"), "alice", "secret", true),
        (udp("198.51.100.99:4000"), "mallory", "guess", false),
    ]
    .into_iter()
    .map(|(addr, user, pass, v6)| Client {
        addr,
        user: user.into(),
        key: long_term_key(user, REALM_CORE, pass),
        v6,
        nonce: None,
        seeds: Vec::new(),
    })
    .collect()
}

// ---------------------------------------------------------------- mutations

/// Attribute spans `(start, end)` as far as the bytes make sense.
fn spans(m: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = HEADER_LEN;
    while pos + 4 <= m.len() && out.len() < 128 {
        let vlen = u16::from_be_bytes([m[pos + 2], m[pos + 3]]) as usize;
        let end = (pos + 4 + ((vlen + 3) & !3)).min(m.len());
        out.push((pos, end));
        pos = end;
    }
    out
}

fn insert(m: &mut Vec<u8>, at: usize, what: &[u8]) {
    let tail = m.split_off(at.min(m.len()));
    m.extend_from_slice(what);
    m.extend_from_slice(&tail);
}

fn push_attr(out: &mut Vec<u8>, typ: u16, value: &[u8]) {
    out.extend_from_slice(&typ.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (4 - value.len() % 4) % 4, 0);
}

const TYPES: &[u16] = &[
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::REALM,
    attr::NONCE,
    attr::LIFETIME,
    attr::REQUESTED_TRANSPORT,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::ADDITIONAL_ADDRESS_FAMILY,
    attr::EVEN_PORT,
    attr::RESERVATION_TOKEN,
    attr::DONT_FRAGMENT,
    attr::XOR_PEER_ADDRESS,
    attr::CHANNEL_NUMBER,
    attr::DATA,
    attr::FINGERPRINT,
    attr::SOFTWARE,
    attr::PASSWORD_ALGORITHM,
    attr::USERHASH,
    attr::ERROR_CODE,
    0x0000,
    0x0031,
    0x7fff,
    0x8000,
    0xffff,
];

/// An address worth trying as a peer.
fn interesting_peer(rng: &mut SmallRng, relays: &[SocketAddr]) -> SocketAddr {
    match rng.random_range(0..4) {
        0 if !relays.is_empty() => relays[rng.random_range(0..relays.len())],
        1 => sa(ALLOWED[rng.random_range(0..ALLOWED.len())]),
        2 => sa(REFUSED[rng.random_range(0..REFUSED.len())]),
        _ => {
            let ip: IpAddr = if rng.random_bool(0.5) {
                IpAddr::from(rng.random::<[u8; 4]>())
            } else {
                IpAddr::from(rng.random::<[u8; 16]>())
            };
            SocketAddr::new(ip, rng.random())
        }
    }
}

/// The bytes of one XOR-address attribute of type `typ` for a message with `raw_id`.
fn xor_attribute(typ: u16, raw_id: &[u8], peer: SocketAddr) -> Vec<u8> {
    let mut buf = Vec::new();
    let id: [u8; 16] = raw_id.try_into().unwrap_or([0; 16]);
    let mut b = MessageBuilder::with_raw_id(&mut buf, method::SEND, Class::Indication, id);
    b.xor_address(typ, peer);
    let len = b.finish();
    buf[HEADER_LEN..len].to_vec()
}

const MUTATIONS: usize = 15;
const MAX_MESSAGE: usize = HEADER_LEN + 0xffff;

fn mutate(
    m: &mut Vec<u8>,
    rng: &mut SmallRng,
    seeds: &[Vec<u8>],
    relays: &[SocketAddr],
    tally: &mut [u64; MUTATIONS],
) {
    let which = rng.random_range(0..MUTATIONS);
    tally[which] += 1;
    let sp = spans(m);
    match which {
        0 => {
            for _ in 0..rng.random_range(1..=8) {
                if !m.is_empty() {
                    let i = rng.random_range(0..m.len());
                    m[i] ^= 1 << rng.random_range(0..8);
                }
            }
        }
        1 => {
            for _ in 0..rng.random_range(1..=4) {
                if !m.is_empty() {
                    let i = rng.random_range(0..m.len());
                    m[i] = [0x00, 0xff, 0x7f, 0x80, 0x01, 0x40, 0x4f, 0x50, rng.random()]
                        [rng.random_range(0..9)];
                }
            }
        }
        2 => m.truncate(rng.random_range(0..=m.len())),
        3 => {
            if rng.random_bool(0.5) {
                let mut v = vec![0u8; rng.random_range(1..=64)];
                rng.fill(&mut v[..]);
                m.extend_from_slice(&v);
            } else {
                let mut v = vec![0u8; rng.random_range(0..=40)];
                rng.fill(&mut v[..]);
                let mut a = Vec::new();
                push_attr(&mut a, TYPES[rng.random_range(0..TYPES.len())], &v);
                let at = sp
                    .get(rng.random_range(0..sp.len().max(1)))
                    .map_or(m.len(), |s| s.0);
                insert(m, at, &a);
            }
        }
        // Lying header length (or ChannelData length).
        4 => {
            if m.len() >= 4 {
                let v: u16 = [
                    0,
                    4,
                    0xffff,
                    (m.len() as u16).wrapping_sub(20),
                    (m.len() as u16).wrapping_sub(4),
                    rng.random(),
                ][rng.random_range(0..6)];
                m[2..4].copy_from_slice(&v.to_be_bytes());
            }
        }
        // Lying attribute length.
        5 => {
            if let Some(&(s, e)) = sp.get(rng.random_range(0..sp.len().max(1))) {
                let v: u16 =
                    [0, 1, 3, 20, 0xffff, (e - s) as u16, rng.random()][rng.random_range(0..7)];
                m[s + 2..s + 4].copy_from_slice(&v.to_be_bytes());
            }
        }
        // Repeated attribute, up to past the parser's limit.
        6 => {
            if let Some(&(s, e)) = sp.get(rng.random_range(0..sp.len().max(1))) {
                let one = m[s..e].to_vec();
                let k = [1usize, 2, 47, 60][rng.random_range(0..4)];
                let copies: Vec<u8> = std::iter::repeat_n(one, k).flatten().collect();
                insert(m, e, &copies);
            }
        }
        // Oversized attribute.
        7 => {
            let room = MAX_MESSAGE.saturating_sub(m.len() + 8);
            let cap = if rng.random_bool(0.95) { 3000 } else { room };
            let len = rng.random_range(0..=room.min(cap));
            let mut a = Vec::with_capacity(len + 8);
            push_attr(
                &mut a,
                TYPES[rng.random_range(0..TYPES.len())],
                &vec![rng.random::<u8>(); len],
            );
            let at = sp.first().map_or(m.len(), |s| s.0);
            insert(m, at, &a);
        }
        // Splice an attribute from another seed.
        8 => {
            let other = &seeds[rng.random_range(0..seeds.len())];
            let osp = spans(other);
            if let Some(&(s, e)) = osp.get(rng.random_range(0..osp.len().max(1))) {
                let at = sp
                    .get(rng.random_range(0..sp.len().max(1)))
                    .map_or(m.len(), |s| s.0);
                insert(m, at, &other[s..e]);
            }
        }
        9 => {
            if let Some(&(s, e)) = sp.get(rng.random_range(0..sp.len().max(1))) {
                m.drain(s..e);
            }
        }
        // Retype: another method or class (a Refresh becomes a ChannelBind, ...).
        10 => {
            if m.len() >= 2 {
                let methods = [
                    method::BINDING,
                    method::ALLOCATE,
                    method::REFRESH,
                    method::SEND,
                    method::DATA,
                    method::CREATE_PERMISSION,
                    method::CHANNEL_BIND,
                    0x00a,
                    0xfff,
                ];
                let classes = [
                    Class::Request,
                    Class::Indication,
                    Class::Success,
                    Class::Error,
                ];
                let t = voxmesh::stun::message_type(
                    methods[rng.random_range(0..methods.len())],
                    classes[rng.random_range(0..4)],
                );
                let t = if rng.random_bool(0.9) {
                    t
                } else {
                    rng.random()
                };
                m[..2].copy_from_slice(&t.to_be_bytes());
            }
        }
        11 => {
            if sp.len() >= 2 {
                let (i, j) = (rng.random_range(0..sp.len()), rng.random_range(0..sp.len()));
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
        // Another peer: replace or add an XOR-PEER-ADDRESS.
        12 => {
            if m.len() >= HEADER_LEN {
                let peer = interesting_peer(rng, relays);
                let a = xor_attribute(attr::XOR_PEER_ADDRESS, &m[4..20], peer);
                match sp
                    .iter()
                    .find(|(s, _)| m[*s..*s + 2] == attr::XOR_PEER_ADDRESS.to_be_bytes())
                {
                    Some(&(s, e)) if rng.random_bool(0.7) => {
                        m.splice(s..e, a);
                    }
                    _ => {
                        let at = sp.first().map_or(m.len(), |s| s.0);
                        insert(m, at, &a);
                    }
                }
            }
        }
        // Another channel number (in ChannelData or CHANNEL-NUMBER).
        13 => {
            let n: u16 = [
                0x4000,
                0x4001,
                0x4fff,
                0x5000,
                0x7fff,
                0x8000,
                0x3fff,
                rng.random(),
            ][rng.random_range(0..8)];
            if m.first()
                .is_some_and(|b| channel::is_channel_data(*b) || rng.random_bool(0.1))
                && m.len() >= 2
            {
                m[..2].copy_from_slice(&n.to_be_bytes());
            } else if let Some(&(s, _)) = sp
                .iter()
                .find(|(s, e)| e - s >= 8 && m[*s..*s + 2] == attr::CHANNEL_NUMBER.to_be_bytes())
            {
                m[s + 4..s + 6].copy_from_slice(&n.to_be_bytes());
            }
        }
        // Another attribute value: empty, short, u32 extremes.
        _ => {
            if let Some(&(s, e)) = sp.get(rng.random_range(0..sp.len().max(1))) {
                let typ = u16::from_be_bytes([m[s], m[s + 1]]);
                let v: Vec<u8> = match rng.random_range(0..4) {
                    0 => vec![],
                    1 => vec![0xff; rng.random_range(1..=3)],
                    2 => 0u32.to_be_bytes().to_vec(),
                    _ => u32::MAX.to_be_bytes().to_vec(),
                };
                let mut a = Vec::new();
                push_attr(&mut a, typ, &v);
                m.splice(s..e, a);
            }
        }
    }
    if m.len() > MAX_MESSAGE + 64 {
        m.truncate(MAX_MESSAGE);
    }
}

/// Makes the framing right again: the header length, MESSAGE-INTEGRITY(-SHA256) re-signed with
/// `key` (when `key` is given), a trailing FINGERPRINT recomputed; ChannelData length fixed.
fn repair(m: &mut [u8], key: Option<&[u8]>) {
    if m.first().is_some_and(|b| channel::is_channel_data(*b)) {
        if m.len() >= 4 && m.len() - 4 <= 0xffff {
            let n = (m.len() - 4) as u16;
            m[2..4].copy_from_slice(&n.to_be_bytes());
        }
        return;
    }
    if m.len() < HEADER_LEN || m.len() - HEADER_LEN > 0xffff {
        return;
    }
    let set_len = |m: &mut [u8], end: usize| {
        m[2..4].copy_from_slice(&((end - HEADER_LEN) as u16).to_be_bytes())
    };
    if let Some(key) = key {
        for (s, e) in spans(m) {
            let typ = u16::from_be_bytes([m[s], m[s + 1]]);
            let vlen = u16::from_be_bytes([m[s + 2], m[s + 3]]) as usize;
            if typ == attr::MESSAGE_INTEGRITY && vlen == 20 && e == s + 24 {
                set_len(m, e);
                let mac = hmac_sha1(key, &m[..s]);
                m[s + 4..e].copy_from_slice(&mac);
            } else if typ == attr::MESSAGE_INTEGRITY_SHA256 && vlen == 32 && e == s + 36 {
                set_len(m, e);
                let mac = hmac_sha256(key, &m[..s]);
                m[s + 4..e].copy_from_slice(&mac);
            }
        }
    }
    let n = m.len();
    set_len(m, n);
    if n >= HEADER_LEN + 8 && m[n - 8..n - 4] == [0x80, 0x28, 0x00, 0x04] {
        let crc = crc32fast::hash(&m[..n - 8]) ^ FINGERPRINT_XOR;
        m[n - 4..].copy_from_slice(&crc.to_be_bytes());
    }
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    use hmac::{KeyInit, Mac};
    let mut mac = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::{KeyInit, Mac};
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().into()
}

// ---------------------------------------------------------------- seeds

fn build(m: u16, class: Class, fp: bool, f: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, m, class, TransactionId::random());
    f(&mut b);
    let len = if fp { b.fingerprint() } else { b.finish() };
    buf.truncate(len);
    buf
}

/// Every seed message of client `c`, signed with its current nonce; `relays` are the live
/// relayed addresses (internal peers).
fn seeds_for(c: &Client, relays: &[SocketAddr], rng: &mut SmallRng) -> Vec<Vec<u8>> {
    let nonce = c.nonce.clone().unwrap_or_else(|| "0".repeat(32));
    let key = c.key;
    let signed = |m: u16, sha256: bool, f: &dyn Fn(&mut MessageBuilder)| {
        build(m, Class::Request, true, |b| {
            f(b);
            b.attr(attr::USERNAME, c.user.as_bytes())
                .attr(attr::REALM, REALM_CORE.as_bytes())
                .attr(attr::NONCE, nonce.as_bytes());
            if sha256 {
                b.message_integrity_sha256(&key);
            } else {
                b.message_integrity(&key);
            }
        })
    };
    let fam = |b: &mut MessageBuilder| {
        b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24);
        if c.v6 {
            b.attr(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        }
    };
    let p = if c.v6 { sa(ALLOWED[2]) } else { sa(ALLOWED[0]) };
    let internal = relays
        .iter()
        .copied()
        .find(|r| r.is_ipv6() == c.v6)
        .unwrap_or(p);
    let refused = sa(REFUSED[rng.random_range(0..REFUSED.len())]);
    let token: [u8; 8] = rng.random();
    let payload: Vec<u8> = (0..rng.random_range(0..200)).map(|i| i as u8).collect();
    let mut s = vec![
        build(method::BINDING, Class::Request, true, |_| {}),
        build(method::BINDING, Class::Indication, true, |_| {}),
        build(method::ALLOCATE, Class::Request, true, |b| fam(b)),
        signed(method::ALLOCATE, false, &|b| {
            fam(b);
            b.u32_attr(attr::LIFETIME, 3600)
                .attr(attr::DONT_FRAGMENT, &[]);
        }),
        signed(method::ALLOCATE, true, &fam),
        signed(method::ALLOCATE, false, &|b| {
            b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
                .attr(attr::EVEN_PORT, &[0x80]);
        }),
        signed(method::ALLOCATE, false, &|b| {
            b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24)
                .attr(attr::RESERVATION_TOKEN, &token);
        }),
        signed(method::REFRESH, false, &|b| {
            b.u32_attr(attr::LIFETIME, 600);
        }),
        signed(method::REFRESH, false, &|b| {
            b.u32_attr(attr::LIFETIME, 0);
        }),
        signed(method::CREATE_PERMISSION, false, &|b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, p);
        }),
        signed(method::CREATE_PERMISSION, true, &|b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, p)
                .xor_address(attr::XOR_PEER_ADDRESS, internal);
        }),
        signed(method::CREATE_PERMISSION, false, &|b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, refused);
        }),
        signed(method::CHANNEL_BIND, false, &|b| {
            b.u32_attr(attr::CHANNEL_NUMBER, 0x4000 << 16)
                .xor_address(attr::XOR_PEER_ADDRESS, p);
        }),
        signed(method::CHANNEL_BIND, false, &|b| {
            b.u32_attr(attr::CHANNEL_NUMBER, 0x4001 << 16)
                .xor_address(attr::XOR_PEER_ADDRESS, internal);
        }),
        build(method::SEND, Class::Indication, false, |b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, p)
                .attr(attr::DATA, &payload);
        }),
        build(method::SEND, Class::Indication, true, |b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, internal)
                .attr(attr::DATA, b"internal");
        }),
        build(method::DATA, Class::Indication, false, |b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, p)
                .attr(attr::DATA, b"wrong way");
        }),
        build(method::ALLOCATE, Class::Success, true, |b| {
            b.xor_address(attr::XOR_RELAYED_ADDRESS, p);
        }),
    ];
    let mut cd = Vec::new();
    channel::encode(&mut cd, 0x4000, &payload, c.addr.transport.is_stream());
    s.push(cd);
    let mut cd = Vec::new();
    channel::encode(
        &mut cd,
        0x4001,
        b"over a channel to another allocation",
        false,
    );
    s.push(cd);
    s
}

// ---------------------------------------------------------------- the core harness

#[derive(Default)]
struct Stats {
    cases: u64,
    client_cases: u64,
    peer_cases: u64,
    setup_inputs: u64,
    answered: BTreeMap<String, u64>,
    dropped: BTreeMap<String, u64>,
    mutations: [u64; MUTATIONS],
    repaired: u64,
    binds: u64,
    bind_failures_injected: u64,
    allocations_created: u64,
    max_tables: TableSizes,
    max_unauth_amplification: i64,
    time_jumps: u64,
}

struct Harness {
    rng: SmallRng,
    now: Instant,
    server: TurnServer,
    config: TurnConfig,
    clients: Vec<Client>,
    /// Live allocations: id -> (client, relayed address).
    live: HashMap<AllocId, (ClientAddr, SocketAddr)>,
    /// The drop counters as of the last case.
    prev_drops: HashMap<&'static str, u64>,
    prev_rate_limited: u64,
    out: Vec<u8>,
    stats: Stats,
}

/// What one input led to.
enum Outcome {
    Answered(String),
    Dropped(String),
}

impl Harness {
    fn new(seed: u64) -> Harness {
        let now = Instant::now();
        let config = core_config();
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        Harness {
            rng: SmallRng::seed_from_u64(seed),
            now,
            server: TurnServer::new(
                config.clone(),
                core_credentials(),
                now,
                UNIX_EPOCH_AT_START,
                key,
            ),
            config,
            clients: clients(),
            live: HashMap::new(),
            prev_drops: HashMap::new(),
            prev_rate_limited: 0,
            out: Vec::with_capacity(2048),
            stats: Stats::default(),
        }
    }

    fn relays(&self) -> Vec<SocketAddr> {
        self.live.values().map(|(_, r)| *r).collect()
    }

    /// The one drop counter (or the rate limiter) that moved since the last case, if exactly one
    /// moved by exactly one; then remembers the counters as they are now.
    fn drop_delta(&mut self) -> Result<Option<String>, String> {
        let c = self.server.counters();
        let mut moved = Vec::new();
        for (why, n) in &c.drops {
            let before = self.prev_drops.get(why).copied().unwrap_or(0);
            if *n != before {
                moved.push((why.to_string(), n - before));
            }
        }
        if c.auth_rate_limited != self.prev_rate_limited {
            moved.push((
                "auth_rate_limited".into(),
                c.auth_rate_limited - self.prev_rate_limited,
            ));
        }
        self.prev_drops = c.drops.clone();
        self.prev_rate_limited = c.auth_rate_limited;
        match moved.as_slice() {
            [] => Ok(None),
            [(why, 1)] => Ok(Some(why.clone())),
            _ => Err(format!("drop counters moved: {moved:?}")),
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        while self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now);
        }
        self.reap();
    }

    fn reap(&mut self) {
        while let Some(Event::Released { id, relay, .. }) = self.server.poll_event() {
            let gone = self.live.remove(&id);
            assert!(
                gone.is_some_and(|(_, r)| r == relay),
                "released {id:?} at {relay} was not live as such"
            );
        }
    }

    /// Feeds one client message through the core and checks every promise.
    fn client_input(&mut self, from: ClientAddr, input: &[u8]) -> Outcome {
        let mut action = self
            .server
            .handle_client(self.now, from, input, &mut self.out);
        let mut bound = None;
        let outcome = loop {
            match action {
                ClientAction::None => {
                    let why = self.drop_delta().unwrap_or_else(|e| panic!("{e}"));
                    break Outcome::Dropped(
                        why.unwrap_or_else(|| panic!("dropped without a counter")),
                    );
                }
                ClientAction::Bind { pending, id, addr } => {
                    self.stats.binds += 1;
                    assert!(
                        self.config.relay_ips.contains(&addr.ip()) && PORTS.contains(&addr.port()),
                        "bind on {addr}"
                    );
                    let result = if self.rng.random_bool(0.05) {
                        self.stats.bind_failures_injected += 1;
                        Err(std::io::ErrorKind::AddrInUse)
                    } else {
                        Ok(())
                    };
                    bound = Some(id);
                    action = self
                        .server
                        .relay_bound(self.now, pending, result, &mut self.out);
                }
                ClientAction::ToClient { to, len } => {
                    let kind = self.check_to_client(from, to, input, len);
                    self.drop_delta().unwrap_or_else(|e| panic!("{e}"));
                    break Outcome::Answered(kind);
                }
                ClientAction::ToPeer { id, peer, data } => {
                    assert!(
                        data.start <= data.end && data.end <= input.len(),
                        "data {data:?} outside a {}-byte input",
                        input.len()
                    );
                    assert!(
                        self.server.relay_of(id).is_some(),
                        "data from a dead allocation"
                    );
                    assert_eq!(
                        self.server.client_of(id),
                        Some(from),
                        "data from someone else's allocation"
                    );
                    assert!(
                        self.config.policy.check(peer).is_ok(),
                        "data for a refused peer {peer}"
                    );
                    let ip = peer.ip();
                    assert!(
                        !ip.is_loopback()
                            && !ip.is_unspecified()
                            && !self.config.relay_ips.contains(&ip),
                        "data for the relay itself: {peer}"
                    );
                    assert!(
                        !self.live.values().any(|(_, r)| *r == peer),
                        "a live relayed address must be served internally"
                    );
                    self.drop_delta().unwrap_or_else(|e| panic!("{e}"));
                    break Outcome::Answered("to_peer".into());
                }
            }
        };
        if let Some(id) = bound
            && let Some(relay) = self.server.relay_of(id)
            && !self.live.contains_key(&id)
        {
            let client = self.server.client_of(id).unwrap();
            assert_eq!(client, from, "an allocation for the requester");
            self.live.insert(id, (client, relay));
            self.stats.allocations_created += 1;
        }
        self.reap();
        outcome
    }

    /// Checks a message the core wants sent to a client; returns its kind.
    fn check_to_client(
        &mut self,
        from: ClientAddr,
        to: ClientAddr,
        input: &[u8],
        len: usize,
    ) -> String {
        let bytes = &self.out[..len];
        assert_eq!(len, self.out.len(), "the output is exactly the message");
        if to != from {
            assert!(
                self.live.values().any(|(c, _)| *c == to),
                "output for {to:?}, who has no allocation"
            );
        }
        if bytes.first().is_some_and(|b| channel::is_channel_data(*b)) {
            let cd = channel::parse(bytes).unwrap_or_else(|e| panic!("bad ChannelData out: {e}"));
            let want = if to.transport.is_stream() {
                4 + cd.data.len().div_ceil(4) * 4
            } else {
                4 + cd.data.len()
            };
            assert_eq!(len, want, "ChannelData length");
            return "channel_data".into();
        }
        let m =
            Message::parse(bytes).unwrap_or_else(|e| panic!("output does not parse as STUN: {e}"));
        match m.class() {
            Class::Indication => {
                assert_eq!(
                    m.method(),
                    method::DATA,
                    "only Data indications go to clients"
                );
                let peer = m
                    .xor_address(attr::XOR_PEER_ADDRESS)
                    .expect("XOR-PEER-ADDRESS");
                assert!(
                    self.live.values().any(|(_, r)| *r == peer),
                    "internal data from {peer}, not a live allocation"
                );
                assert!(m.get(attr::DATA).is_some());
                assert_ne!(m.check_fingerprint(), IntegrityCheck::Invalid);
                "data_indication".into()
            }
            Class::Success | Class::Error => {
                assert_eq!(to, from, "responses go to the requester");
                assert_eq!(
                    m.check_fingerprint(),
                    IntegrityCheck::Valid,
                    "responses carry FINGERPRINT"
                );
                assert_eq!(&bytes[4..20], &input[4..20], "the transaction ID is echoed");
                let req = Message::parse(input).expect("a response answers a parsed request");
                assert_eq!(m.method(), req.method());
                let signed =
                    m.integrity_offset().is_some() || m.integrity_sha256_offset().is_some();
                if !signed {
                    self.stats.max_unauth_amplification = self
                        .stats
                        .max_unauth_amplification
                        .max(len as i64 - input.len() as i64);
                }
                if m.class() == Class::Success {
                    assert!(
                        signed || m.method() == method::BINDING,
                        "successes are signed"
                    );
                    return format!("success_{}", method_name(m.method()));
                }
                let (code, _) = m.error_code().expect("ERROR-CODE");
                assert!(CODES.contains(&code), "unexpected error code {code}");
                if matches!(code, 401 | 438) {
                    assert!(
                        !signed && m.text(attr::NONCE).is_some() && m.text(attr::REALM).is_some()
                    );
                }
                format!("error_{code}")
            }
            Class::Request => panic!("the server sent a request"),
        }
    }

    /// Feeds data from `peer` on allocation `id`'s relayed socket.
    fn peer_input(&mut self, id: AllocId, peer: SocketAddr, data: &[u8]) -> Outcome {
        let owner = self.server.client_of(id);
        match self
            .server
            .handle_peer(self.now, id, peer, data, &mut self.out)
        {
            PeerAction::Drop => {
                let why = self.drop_delta().unwrap_or_else(|e| panic!("{e}"));
                Outcome::Dropped(
                    why.unwrap_or_else(|| panic!("peer data dropped without a counter")),
                )
            }
            PeerAction::ToClient { to, len } => {
                assert_eq!(Some(to), owner, "peer data goes to the allocation's client");
                let bytes = &self.out[..len];
                let canonical = match peer.ip() {
                    IpAddr::V6(v6) => v6
                        .to_ipv4_mapped()
                        .map_or(peer, |v4| SocketAddr::new(v4.into(), peer.port())),
                    _ => peer,
                };
                let kind = match parse_relayed(bytes) {
                    Some(Relayed::Channel { data: d, .. }) => {
                        assert_eq!(d, data);
                        "peer_channel_data"
                    }
                    Some(Relayed::Data { peer: p, data: d }) => {
                        assert_eq!((p, &d[..]), (canonical, data));
                        "peer_data_indication"
                    }
                    None => {
                        panic!("peer data relayed as neither ChannelData nor a Data indication")
                    }
                };
                self.drop_delta().unwrap_or_else(|e| panic!("{e}"));
                Outcome::Answered(kind.into())
            }
        }
    }

    /// Gets every client a nonce, an allocation, a permission and a channel if it can, and
    /// rebuilds its seeds.
    fn establish(&mut self) {
        for i in 0..self.clients.len() {
            let from = self.clients[i].addr;
            let probe = build(method::ALLOCATE, Class::Request, true, |b| {
                b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24);
            });
            self.stats.setup_inputs += 1;
            if let Outcome::Answered(k) = self.client_input(from, &probe)
                && k == "error_401"
            {
                let m = Message::parse(&self.out).unwrap();
                self.clients[i].nonce = m.text(attr::NONCE).map(str::to_string);
            }
            let relays = self.relays();
            let has = self.live.values().any(|(c, _)| *c == from);
            let seeds = seeds_for(&self.clients[i], &relays, &mut self.rng);
            // seeds: [3] signed Allocate, [9] CreatePermission, [10] two peers, [12] ChannelBind
            let steps: &[usize] = if has {
                &[7, 9, 10, 12, 13]
            } else {
                &[3, 9, 10, 12, 13]
            };
            for &k in steps {
                self.stats.setup_inputs += 1;
                let _ = self.client_input(from, &seeds[k]);
            }
            self.clients[i].seeds = seeds_for(&self.clients[i], &self.relays(), &mut self.rng);
        }
    }

    fn check_tables(&mut self) {
        let t = self.server.table_sizes();
        let live = self.server.allocations();
        let c = &self.config;
        assert_eq!(
            live,
            self.live.len(),
            "the harness and the core agree on live allocations"
        );
        assert!(live <= c.total_quota as usize);
        assert_eq!(t.by_client, live);
        assert_eq!(t.by_public, live);
        assert!(t.per_user <= live && t.per_source <= live);
        assert_eq!(t.pending, 0, "binds complete synchronously");
        assert!(t.slots <= c.total_quota as usize + 1, "{t:?}");
        assert!(t.permissions <= live * c.max_permissions, "{t:?}");
        assert!(t.channels <= live * c.max_channels, "{t:?}");
        let span = (PORTS.end() - PORTS.start() + 1) as usize;
        assert!(t.ports_in_use <= span && t.reservations <= span, "{t:?}");
        assert!(t.rate_limiter <= 16_384);
        assert_eq!(t.events, 0);
        // One live timer entry per allocation and one for reservations; superseded entries and
        // those of released allocations are purged once they outnumber the live ones.
        let bound = 2 * (c.total_quota as usize + 1) + 65;
        assert!(
            t.timers <= bound,
            "timer heap grew to {} (bound {bound}) for {live} allocations",
            t.timers
        );
        let m = &mut self.stats.max_tables;
        for (mx, v) in [
            (&mut m.slots, t.slots),
            (&mut m.by_client, t.by_client),
            (&mut m.by_public, t.by_public),
            (&mut m.per_user, t.per_user),
            (&mut m.per_source, t.per_source),
            (&mut m.pending, t.pending),
            (&mut m.timers, t.timers),
            (&mut m.rate_limiter, t.rate_limiter),
            (&mut m.ports_in_use, t.ports_in_use),
            (&mut m.reservations, t.reservations),
            (&mut m.permissions, t.permissions),
            (&mut m.channels, t.channels),
        ] {
            *mx = (*mx).max(v);
        }
    }

    /// One fuzz case.
    fn case(&mut self) -> Vec<u8> {
        let step = Duration::from_millis(self.rng.random_range(0..30));
        self.advance(step);
        if self.rng.random_ratio(1, 3000) {
            self.stats.time_jumps += 1;
            let jump = Duration::from_secs(self.rng.random_range(30..=700));
            self.advance(jump);
        }
        let outcome = if self.rng.random_bool(0.15) && !self.live.is_empty() {
            // From a peer, onto a relayed address (sometimes of a dead allocation).
            self.stats.peer_cases += 1;
            let ids: Vec<AllocId> = self.live.keys().copied().collect();
            let mut id = ids[self.rng.random_range(0..ids.len())];
            if self.rng.random_bool(0.05) {
                id.generation = id.generation.wrapping_add(1);
            }
            let relays = self.relays();
            let peer = interesting_peer(&mut self.rng, &relays);
            let peer = if self.rng.random_bool(0.5) {
                sa(ALLOWED[self.rng.random_range(0..ALLOWED.len())])
            } else {
                peer
            };
            let c = &self.clients[self.rng.random_range(0..self.clients.len())];
            let mut data = c
                .seeds
                .get(self.rng.random_range(0..c.seeds.len().max(1)))
                .cloned()
                .unwrap_or_default();
            let mut tally = [0; MUTATIONS];
            if self.rng.random_bool(0.5) {
                mutate(&mut data, &mut self.rng, &c.seeds, &relays, &mut tally);
            }
            data.truncate(3000);
            let o = self.peer_input(id, peer, &data);
            self.stats.cases += 1;
            (o, data)
        } else {
            self.stats.client_cases += 1;
            let owner = self.rng.random_range(0..self.clients.len());
            let c = &self.clients[owner];
            let mut m = c.seeds[self.rng.random_range(0..c.seeds.len())].clone();
            let key = c.key;
            let all = c.seeds.clone();
            let relays = self.relays();
            // One mutation half of the time, up to four.
            let rounds = [1, 1, 1, 1, 2, 2, 3, 4][self.rng.random_range(0..8)];
            for _ in 0..rounds {
                mutate(
                    &mut m,
                    &mut self.rng,
                    &all,
                    &relays,
                    &mut self.stats.mutations,
                );
            }
            if self.rng.random_bool(0.7) {
                self.stats.repaired += 1;
                repair(&mut m, Some(&key));
            }
            // Mostly from the seed's own client; sometimes from another (cross-talk).
            let mut from = if self.rng.random_bool(0.85) {
                c.addr
            } else {
                self.clients[self.rng.random_range(0..self.clients.len())].addr
            };
            // Other ports (or connections) of the same host: more allocations per user and
            // per source, up to the quotas.
            if self.rng.random_bool(0.3) {
                let k = self.rng.random_range(0..6u16);
                from.remote.set_port(from.remote.port() + 100 + k);
                from.conn += u64::from(k) * from.transport.is_stream() as u64;
            }
            let o = self.client_input(from, &m);
            self.stats.cases += 1;
            (o, m)
        };
        match outcome.0 {
            Outcome::Answered(k) => *self.stats.answered.entry(k).or_default() += 1,
            Outcome::Dropped(k) => *self.stats.dropped.entry(k).or_default() += 1,
        }
        outcome.1
    }
}

fn method_name(m: u16) -> &'static str {
    match m {
        method::BINDING => "binding",
        method::ALLOCATE => "allocate",
        method::REFRESH => "refresh",
        method::CREATE_PERMISSION => "create_permission",
        method::CHANNEL_BIND => "channel_bind",
        _ => "other",
    }
}

fn json_map(m: &BTreeMap<String, u64>) -> serde_json::Value {
    serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), (*v).into())).collect())
}

#[test]
fn fuzz_turn_server_core() {
    let cases = env_u64("VOXMESH_FUZZ_CASES", DEFAULT_CASES);
    let seed = env_u64("VOXMESH_FUZZ_SEED", DEFAULT_SEED);
    let started = Instant::now();
    let mut h = Harness::new(seed);
    h.establish();
    assert!(
        h.live.len() >= 5,
        "the fuzz starts from live allocations: {}",
        h.live.len()
    );
    let mut last = Vec::new();
    for n in 0..cases {
        if n % 512 == 0 {
            h.establish();
        }
        let r = catch_unwind(AssertUnwindSafe(|| {
            last = h.case();
            if n % 64 == 0 {
                h.check_tables();
            }
        }));
        if let Err(e) = r {
            eprintln!(
                "fuzz_turn: case {n} failed (seed {seed:#x}); input {} bytes: {last:02x?}",
                last.len()
            );
            resume_unwind(e);
        }
    }
    h.check_tables();
    let s = &h.stats;
    let answered: u64 = s.answered.values().sum();
    let dropped: u64 = s.dropped.values().sum();
    assert_eq!(
        answered + dropped,
        s.cases,
        "every case answered or dropped by a named reason"
    );
    // The fuzz reached the deep paths, not only the parser.
    for kind in [
        "to_peer",
        "channel_data",
        "data_indication",
        "peer_channel_data",
        "peer_data_indication",
        "success_allocate",
        "success_create_permission",
        "success_channel_bind",
        "error_403",
        "error_437",
        "error_438",
        "error_441",
        "error_486",
    ] {
        if cases >= 50_000 {
            assert!(
                s.answered.get(kind).copied().unwrap_or(0) > 0,
                "no case reached {kind}: {:?}",
                s.answered
            );
        }
    }
    // A 401 is the biggest unauthenticated answer: REALM, NONCE, SOFTWARE, FINGERPRINT.
    assert!(
        s.max_unauth_amplification <= 120,
        "unauthenticated answer {} bytes longer than its request",
        s.max_unauth_amplification
    );
    let seconds = started.elapsed().as_secs_f64();
    let t = &s.max_tables;
    let report = serde_json::json!({
        "target": "turn_server_core",
        "cases": s.cases,
        "seed": seed,
        "seconds": (seconds * 100.0).round() / 100.0,
        "client_cases": s.client_cases,
        "peer_cases": s.peer_cases,
        "setup_inputs": s.setup_inputs,
        "answered_total": answered,
        "dropped_total": dropped,
        "answered": json_map(&s.answered),
        "dropped": json_map(&s.dropped),
        "repaired": s.repaired,
        "mutations": s.mutations.to_vec(),
        "binds": s.binds,
        "bind_failures_injected": s.bind_failures_injected,
        "allocations_created": s.allocations_created,
        "time_jumps": s.time_jumps,
        "max_unauth_amplification_bytes": s.max_unauth_amplification,
        "max_tables": {
            "slots": t.slots, "timers": t.timers, "permissions": t.permissions, "channels": t.channels,
            "ports_in_use": t.ports_in_use, "reservations": t.reservations, "rate_limiter": t.rate_limiter,
            "per_user": t.per_user, "per_source": t.per_source,
        },
    });
    eprintln!("{report}");
    if let Ok(path) = std::env::var("VOXMESH_FUZZ_REPORT") {
        std::fs::write(path, format!("{report}\n")).unwrap();
    }
}

// ---------------------------------------------------------------- the real daemon

/// A relay port range for each daemon test (other test files use 43000..).
fn ports(k: u16) -> (u16, u16) {
    let lo = 47_000 + 64 * k;
    (lo, lo + 63)
}

/// Mutated datagrams to the real relayd over loopback UDP, from a client with a live
/// allocation, a permission and a channel to a second client's relayed address. Messages are
/// not re-signed here (only length and FINGERPRINT are repaired): the only permission that can
/// exist is the one for 127.0.0.1, so nothing the relay does can reach beyond loopback — data
/// to its own ports is refused and data to the second allocation is delivered internally.
///
/// Every input is accounted for: answered to the sender, delivered to the second client, or
/// counted by a drop counter (420 and 486 both answer and count, hence the subtraction).
#[test]
fn fuzz_relayd_over_loopback() {
    let cases = env_u64("VOXMESH_FUZZ_DAEMON_CASES", DEFAULT_DAEMON_CASES) as usize;
    let seed = env_u64("VOXMESH_FUZZ_SEED", DEFAULT_SEED);
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xdae);
    let started = Instant::now();
    let mut r = Relayd::start_with(ports(0), &[], false);
    let mut a = Raw::bind("127.0.0.1", r.udp);
    let ra = a.allocate(ALICE, false);
    let mut b = Raw::bind("127.0.0.1", r.udp);
    let rb = b.allocate(BOB, false);
    a.permit(ALICE, rb).expect_success();
    a.bind_channel(ALICE, 0x4000, rb).expect_success();
    b.permit(BOB, ra).expect_success();
    let seeds = {
        let s = |m: u16, f: &dyn Fn(&mut MessageBuilder)| a.signed(m, ALICE, f);
        vec![
            build(method::BINDING, Class::Request, true, |_| {}),
            build(method::BINDING, Class::Indication, true, |_| {}),
            build(method::ALLOCATE, Class::Request, true, |b| {
                b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24);
            }),
            s(method::ALLOCATE, &udp_transport),
            s(method::REFRESH, &|b| {
                b.u32_attr(attr::LIFETIME, 600);
            }),
            s(method::CREATE_PERMISSION, &|b| {
                b.xor_address(attr::XOR_PEER_ADDRESS, rb);
            }),
            s(method::CHANNEL_BIND, &|b| {
                b.u32_attr(attr::CHANNEL_NUMBER, 0x4000 << 16)
                    .xor_address(attr::XOR_PEER_ADDRESS, rb);
            }),
            build(method::SEND, Class::Indication, true, |b| {
                b.xor_address(attr::XOR_PEER_ADDRESS, rb)
                    .attr(attr::DATA, b"send indication");
            }),
            build(method::SEND, Class::Indication, false, |b| {
                b.xor_address(attr::XOR_PEER_ADDRESS, r.udp)
                    .attr(attr::DATA, b"to the listener");
            }),
            build(method::DATA, Class::Indication, false, |b| {
                b.xor_address(attr::XOR_PEER_ADDRESS, rb)
                    .attr(attr::DATA, b"wrong way");
            }),
            {
                let mut cd = Vec::new();
                channel::encode(&mut cd, 0x4000, b"channel data to b", false);
                cd
            },
        ]
    };
    let base = r.metrics();
    let (mut to_a, mut to_b) = (0u64, 0u64);
    let mut answered: BTreeMap<String, u64> = BTreeMap::new();
    let mut tally = [0u64; MUTATIONS];
    let mut oversized = 0;
    let drain = |who: &Raw, quiet: Duration, answered: &mut BTreeMap<String, u64>| -> u64 {
        let mut n = 0;
        while let Some(got) = who.recv(quiet) {
            n += 1;
            let kind = if let Some(rel) = parse_relayed(&got) {
                match rel {
                    Relayed::Channel { .. } => "channel_data".to_string(),
                    Relayed::Data { peer, .. } => {
                        assert!(peer == ra || peer == rb, "data from {peer}");
                        "data_indication".to_string()
                    }
                }
            } else {
                let m = Message::parse(&got).unwrap_or_else(|e| {
                    panic!("relayd sent something unparseable ({e}): {got:02x?}")
                });
                assert_eq!(m.check_fingerprint(), IntegrityCheck::Valid);
                match m.error_code() {
                    Some((code, _)) => {
                        assert!(CODES.contains(&code), "error {code}");
                        format!("error_{code}")
                    }
                    None => format!("{:?}_{}", m.class(), method_name(m.method())).to_lowercase(),
                }
            };
            *answered.entry(kind).or_default() += 1;
        }
        n
    };
    for n in 0..cases {
        let mut m = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(1..=4) {
            mutate(&mut m, &mut rng, &seeds, &[rb], &mut tally);
        }
        if rng.random_bool(0.6) {
            repair(&mut m, None);
        }
        if m.len() > voxmesh::net::batch::MAX_DATAGRAM {
            oversized += 1;
        }
        if m.len() > 65_000 {
            m.truncate(65_000);
        }
        a.send(&m);
        // Pace: let the relay answer every few datagrams so no socket buffer overflows.
        if n % 16 == 15 {
            to_a += drain(&a, Duration::from_millis(5), &mut answered);
            to_b += drain(&b, Duration::from_millis(1), &mut answered);
        }
    }
    // Wait until every input shows up in the counters or as a delivered message.
    let accounted = |m: &Metrics, delivered: u64| -> f64 {
        let d = |k: &str| m.get(k) - base.get(k);
        let drops = m.sum("voxmesh_turn_dropped_total") - base.sum("voxmesh_turn_dropped_total");
        delivered as f64 + drops + d(r#"voxmesh_turn_auth_total{result="rate_limited"}"#)
            - d(r#"voxmesh_turn_dropped_total{reason="quota"}"#)
            - d(r#"voxmesh_turn_dropped_total{reason="unknown_attribute"}"#)
    };
    let deadline = Instant::now() + WAIT;
    let m = loop {
        to_a += drain(&a, Duration::from_millis(50), &mut answered);
        to_b += drain(&b, Duration::from_millis(5), &mut answered);
        let m = r.metrics();
        if accounted(&m, to_a + to_b) >= cases as f64 || Instant::now() >= deadline {
            break m;
        }
    };
    let total = accounted(&m, to_a + to_b);
    let dropped: BTreeMap<String, u64> =
        m.0.iter()
            .filter_map(|(k, v)| {
                let reason = k
                    .strip_prefix("voxmesh_turn_dropped_total{reason=\"")?
                    .strip_suffix("\"}")?;
                let before = base.0.get(k).copied().unwrap_or(0.0);
                Some((reason.to_string(), (v - before) as u64))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
    let rate_limited = m.get(r#"voxmesh_turn_auth_total{result="rate_limited"}"#)
        - base.get(r#"voxmesh_turn_auth_total{result="rate_limited"}"#);
    let report = serde_json::json!({
        "target": "relayd_udp_loopback",
        "cases": cases,
        "seed": seed,
        "seconds": (started.elapsed().as_secs_f64() * 100.0).round() / 100.0,
        "answered_to_sender": to_a,
        "delivered_to_second_client": to_b,
        "answered": json_map(&answered),
        "dropped": json_map(&dropped),
        "rate_limited_401": rate_limited,
        "oversized_sent": oversized,
    });
    eprintln!("{report}");
    if let Ok(path) = std::env::var("VOXMESH_FUZZ_DAEMON_REPORT") {
        std::fs::write(path, format!("{report}\n")).unwrap();
    }
    assert_eq!(total, cases as f64, "inputs unaccounted for: {report}");
    assert!(
        dropped.get("oversized").copied().unwrap_or(0) >= oversized,
        "oversized datagrams are counted"
    );
    assert!(r.alive(), "relayd died");
    // Unharmed: the fuzzed client's allocation still works, the second client still gets its
    // data, and anyone else is served.
    a.refresh(ALICE, 600).expect_success();
    a.send_indication(rb, b"still relaying");
    assert_eq!(
        b.recv_data(WAIT),
        Some(Relayed::Data {
            peer: ra,
            data: b"still relaying".to_vec()
        })
    );
    assert_serving(&r, "127.0.0.2");
}

/// Reads until the peer closes the connection (EOF or reset); `false` if it stays open until
/// `deadline`.
fn closed_before(s: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// [`closed_before`] within [`WAIT`].
fn closed_by_peer(s: &mut TcpStream) -> bool {
    closed_before(s, Instant::now() + WAIT)
}

/// One framed message over TCP and its answer.
fn tcp_transact(s: &mut TcpStream, msg: &[u8]) -> Reply {
    s.write_all(msg).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = [0u8; 20];
    s.read_exact(&mut head).unwrap();
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).unwrap();
    let mut bytes = head.to_vec();
    bytes.extend_from_slice(&rest);
    Reply { bytes }
}

/// TCP framing: garbage, oversized frames and mutated frames close the connection (and free its
/// allocation); so do a silent connection and one that trickles a message byte by byte, once
/// the ten seconds a message may take are up. The daemon keeps serving everyone else.
#[test]
fn tcp_garbage_and_oversized_frames_close_the_connection() {
    let mut r = Relayd::start(ports(1), &[]);
    let fds0 = r.fds();
    let tcp = r.tcp;
    let connect = || {
        let s = TcpStream::connect_timeout(&tcp, WAIT).unwrap();
        s.set_nodelay(true).unwrap();
        s
    };
    // Slow clients, checked at the end: one says nothing, one trickles a 1000-byte message
    // at a byte every second.
    let slow_start = Instant::now();
    let mut silent = connect();
    let mut trickle = connect();
    let mut writer = trickle.try_clone().unwrap();
    let trickler = std::thread::spawn(move || {
        let header = [
            0x00, 0x01, 0x03, 0xe8, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        for b in header.iter().cycle().take(30) {
            if writer.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    // Neither STUN nor ChannelData.
    let mut s = connect();
    s.write_all(&[0xff; 64]).unwrap();
    assert!(closed_by_peer(&mut s), "garbage: still open");
    // A STUN header announcing more than the largest message relayd takes.
    let mut s = connect();
    s.write_all(&[
        0x00, 0x01, 0xff, 0xfc, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ])
    .unwrap();
    assert!(closed_by_peer(&mut s), "oversized STUN frame: still open");
    // A valid Binding, then a ChannelData frame whose number no channel has, then garbage.
    let mut s = connect();
    let rep = tcp_transact(&mut s, &request(method::BINDING, |_| {}));
    assert!(rep.is_success());
    s.write_all(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0])
        .unwrap();
    s.write_all(&[0xc0, 0, 0, 0]).unwrap();
    assert!(
        closed_by_peer(&mut s),
        "garbage after valid frames: still open"
    );
    // A half frame, then our side closes: relayd copes.
    let mut s = connect();
    s.write_all(&[0x40, 0x00, 0xff, 0xff, 1, 2, 3]).unwrap();
    drop(s);
    // An allocation over TCP dies with its connection when the stream turns to garbage.
    let mut s = connect();
    let challenge = tcp_transact(&mut s, &request(method::ALLOCATE, udp_transport));
    challenge.expect_error(401, "Unauthenticated");
    let (realm, nonce) = (
        challenge.text(attr::REALM).unwrap(),
        challenge.text(attr::NONCE).unwrap(),
    );
    let ok = tcp_transact(
        &mut s,
        &signed_request(
            method::ALLOCATE,
            "carol",
            "pw3",
            &realm,
            &nonce,
            udp_transport,
        ),
    );
    ok.expect_success();
    r.wait_metric("voxmesh_turn_allocations_active", 1.0);
    // Mutated frames from valid seeds until the stream desynchronises and relayd hangs up.
    let mut rng = SmallRng::seed_from_u64(env_u64("VOXMESH_FUZZ_SEED", DEFAULT_SEED) ^ 0x7c9);
    let seeds = vec![
        request(method::BINDING, |_| {}),
        signed_request(method::REFRESH, "carol", "pw3", &realm, &nonce, |b| {
            b.u32_attr(attr::LIFETIME, 600);
        }),
    ];
    let mut tally = [0u64; MUTATIONS];
    let mut closed = false;
    for _ in 0..2000 {
        let mut m = seeds[rng.random_range(0..seeds.len())].clone();
        mutate(&mut m, &mut rng, &seeds, &[], &mut tally);
        if s.write_all(&m).is_err() {
            closed = true;
            break;
        }
    }
    if !closed {
        s.write_all(&[0xee; 8]).ok();
    }
    assert!(
        closed || closed_by_peer(&mut s),
        "mutated frames: still open"
    );
    r.wait_for("the TCP allocation released", |m| {
        m.get("voxmesh_turn_allocations_active") == 0.0
    });
    assert!(r.alive());
    // Unharmed: UDP and TCP both still answer, and the relay serves.
    let mut s = connect();
    assert!(tcp_transact(&mut s, &request(method::BINDING, |_| {})).is_success());
    drop(s);
    assert!(
        Raw::bind("127.0.0.1", r.udp)
            .transact(&request(method::BINDING, |_| {}))
            .is_success()
    );
    assert_serving(&r, "127.0.0.1");
    // The slow ones are gone ten seconds after they connected, not an hour.
    let until = slow_start + Duration::from_secs(16);
    for (what, s) in [("silent", &mut silent), ("trickling", &mut trickle)] {
        assert!(
            closed_before(s, until),
            "{what} connection still open after {:?}",
            slow_start.elapsed()
        );
        assert!(
            slow_start.elapsed() >= Duration::from_secs(9),
            "{what} closed too early"
        );
    }
    trickler.join().unwrap();
    // Every connection's descriptor is closed again (bounded wait).
    let deadline = Instant::now() + WAIT;
    while r.fds() > fds0 + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(r.fds() <= fds0 + 1, "fds {fds0} -> {}", r.fds());
}
