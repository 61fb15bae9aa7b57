//! relayd's security acceptance tests, against the real binary. Each refusal is checked for its
//! exact error code and reason, for the Prometheus counter that records it, and for the relay
//! still serving a well-behaved client afterwards ([`assert_serving`]: allocate, permission,
//! data both ways through the relay).
//!
//! - authentication: unauthenticated requests (401), wrong passwords and unknown users (401),
//!   expired or forged time-limited credentials (401), stale nonces (438, with a one-second
//!   `--nonce-lifetime`), forged nonces and nonces minted for another source (401);
//! - request errors: 400, 420, 437, 440, 441, 442, 443; attributes appended after
//!   MESSAGE-INTEGRITY are ignored;
//! - peers: every block of both IANA special-purpose registries (first and last address, from
//!   `data/*.csv`) and the deprecated site-local fec0::/10, multicast and broadcast, the
//!   embedded-IPv4 forms of loopback and private addresses (IPv4-translated ::ffff:0:a.b.c.d
//!   included) — and, with
//!   `--allow-peer 0.0.0.0/0 --allow-peer ::/0`, still the relay itself: loopback, its listening,
//!   TCP and metrics ports, its relay range, another local service, its own interface addresses;
//!   while another live allocation's relayed address is a peer (delivered internally);
//! - quotas: `--user-quota`, `--source-quota`, `--total-quota` (486, the reason naming the
//!   quota), and a flood of hundreds of allocations from one source (source quota holds, 401s
//!   rate-limited, fds and RSS bounded, another source served); a burst of 100 first Allocates
//!   from one address all answered at once, each 401 of the documented size;
//! - in the lab: the same refusals and floods against relayd in a network namespace, while a
//!   client behind a NAT relays real traffic to a real peer; an address the relay's host gains
//!   while running is refused as its own (and allowed again once removed).
//!
//! Loopback relays never send data to a non-loopback peer: permissions for ordinary addresses
//! are created (that sends nothing) but data only goes to other allocations of the same relay.

use crate::support::common;
use crate::support::relayd as relayd_support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use relayd_support::*;
use voxlab::{BoxOpts, Lab, LabNat, in_netns};
use voxmesh::net::drivers::turn_client::{TurnRelay, TurnTransport};
use voxmesh::stun::{MessageBuilder, attr, long_term_key, method};
use voxmesh::turn::auth::{CHALLENGE_BURST, CHALLENGE_BYTES, CHALLENGE_RATE};
use voxmesh::turn::{TurnClientConfig, mint_rest_credential, rest_password};

/// A relay port range of its own for each test (tests run in parallel).
fn ports(k: u16) -> (u16, u16) {
    let lo = 43_000 + 64 * k;
    (lo, lo + 63)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const ERR: &str = "voxmesh_turn_errors_total";
const CHALLENGE: &str = r#"voxmesh_turn_auth_total{result="challenge"}"#;
const FAILURE: &str = r#"voxmesh_turn_auth_total{result="failure"}"#;
const STALE: &str = r#"voxmesh_turn_auth_total{result="stale_nonce"}"#;
const RATE_LIMITED: &str = r#"voxmesh_turn_auth_total{result="rate_limited"}"#;
const ALLOCATIONS: &str = "voxmesh_turn_allocations_active";

fn err(code: u16) -> String {
    format!("{ERR}{{code=\"{code}\"}}")
}

fn dropped(reason: &str) -> String {
    format!("voxmesh_turn_dropped_total{{reason=\"{reason}\"}}")
}

fn refused(reason: &str) -> String {
    format!("voxmesh_turn_peer_refused_total{{reason=\"{reason}\"}}")
}

// ---------------------------------------------------------------- authentication

#[test]
fn unauthenticated_requests_are_challenged_not_served() {
    let r = Relayd::start(ports(0), &[]);
    let raw = Raw::bind("127.0.0.1", r.udp);
    let a = raw.transact(&request(method::ALLOCATE, udp_transport));
    a.expect_error(401, "Unauthenticated");
    assert_eq!(a.text(attr::REALM).as_deref(), Some(REALM));
    let nonce = a.text(attr::NONCE).unwrap();
    assert_eq!(nonce.len(), 32, "nonce {nonce:?}");
    assert!(
        a.msg().integrity_offset().is_none(),
        "a challenge is not signed"
    );
    // USERNAME, REALM and NONCE without MESSAGE-INTEGRITY are no authentication at all.
    raw.transact(&request(method::ALLOCATE, |b| {
        udp_transport(b);
        b.attr(attr::USERNAME, b"alice")
            .attr(attr::REALM, REALM.as_bytes())
            .attr(attr::NONCE, nonce.as_bytes());
    }))
    .expect_error(401, "Unauthenticated");
    // MESSAGE-INTEGRITY (either kind) without a NONCE: 400.
    let key = long_term_key("alice", REALM, "secret");
    raw.transact(&request(method::ALLOCATE, |b| {
        udp_transport(b);
        b.attr(attr::USERNAME, b"alice")
            .attr(attr::REALM, REALM.as_bytes())
            .message_integrity(&key);
    }))
    .expect_error(400, "Missing USERNAME, REALM or NONCE");
    raw.transact(&request(method::ALLOCATE, |b| {
        udp_transport(b);
        b.attr(attr::REALM, REALM.as_bytes())
            .attr(attr::NONCE, nonce.as_bytes())
            .message_integrity_sha256(&key);
    }))
    .expect_error(400, "Missing USERNAME, REALM or NONCE");
    // Every other method is challenged the same way.
    let peer = sa("198.51.100.5:9");
    for m in [
        method::REFRESH,
        method::CREATE_PERMISSION,
        method::CHANNEL_BIND,
    ] {
        raw.transact(&request(m, |b| {
            b.u32_attr(attr::CHANNEL_NUMBER, 0x4000 << 16)
                .xor_address(attr::XOR_PEER_ADDRESS, peer);
        }))
        .expect_error(401, "Unauthenticated");
    }
    let m = r.wait_metric(CHALLENGE, 5.0);
    assert_eq!(
        (m.get(CHALLENGE), m.get(&err(401)), m.get(&err(400))),
        (5.0, 5.0, 2.0)
    );
    assert_eq!(
        (m.get(FAILURE), m.get(ALLOCATIONS)),
        (0.0, 0.0),
        "no allocation for anyone unauthenticated"
    );
    assert_serving(&r, "127.0.0.1");
}

#[test]
fn wrong_passwords_unknown_users_and_tampered_requests_are_refused() {
    let r = Relayd::start(ports(1), &[]);
    let mut raw = Raw::bind("127.0.0.1", r.udp);
    raw.learn_nonce();
    let realm = raw.realm.clone();
    let allocate = |creds: (&str, &str), realm: &str, nonce: &str| {
        signed_request(
            method::ALLOCATE,
            creds.0,
            creds.1,
            realm,
            nonce,
            udp_transport,
        )
    };
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "wrong password",
            allocate(("alice", "wrong"), &realm, &raw.nonce),
        ),
        (
            "unknown user",
            allocate(("mallory", "secret"), &realm, &raw.nonce),
        ),
        // The right password, keyed with another realm than the relay's.
        (
            "key from another realm",
            allocate(ALICE, "elsewhere", &raw.nonce),
        ),
        (
            "MESSAGE-INTEGRITY-SHA256 with a wrong key",
            request(method::ALLOCATE, |b| {
                udp_transport(b);
                b.attr(attr::USERNAME, b"alice")
                    .attr(attr::REALM, realm.as_bytes())
                    .attr(attr::NONCE, raw.nonce.as_bytes());
                b.message_integrity_sha256(&[7u8; 16]);
            }),
        ),
    ];
    // A correctly signed request altered in flight (LIFETIME 600 -> 3600), FINGERPRINT fixed.
    let mut tampered = signed_request(
        method::ALLOCATE,
        "alice",
        "secret",
        &realm,
        &raw.nonce,
        |b| {
            udp_transport(b);
            b.u32_attr(attr::LIFETIME, 600);
        },
    );
    let at = voxmesh::stun::Message::parse(&tampered)
        .unwrap()
        .get(attr::LIFETIME)
        .unwrap()
        .offset
        + 4;
    tampered[at..at + 4].copy_from_slice(&3600u32.to_be_bytes());
    refingerprint(&mut tampered);
    cases.push(("tampered after signing", tampered));
    for (what, msg) in &cases {
        let rep = raw.transact(msg);
        rep.expect_error(401, "Unauthenticated");
        assert!(
            rep.msg().integrity_offset().is_none(),
            "{what}: the refusal carries no MESSAGE-INTEGRITY"
        );
        assert!(
            rep.text(attr::NONCE).is_some(),
            "{what}: a fresh NONCE to retry with"
        );
    }
    let m = r.wait_metric(FAILURE, cases.len() as f64);
    assert_eq!(
        (m.get(FAILURE), m.get(&err(401)), m.get(ALLOCATIONS)),
        (5.0, 6.0, 0.0)
    );
    // The right password still works from the same socket.
    raw.allocate(ALICE, false);
    assert_serving(&r, "127.0.0.1");
}

#[test]
fn expired_and_forged_time_limited_credentials_are_refused() {
    let r = Relayd::start(ports(2), &[]);
    let mut raw = Raw::bind("127.0.0.1", r.udp);
    raw.learn_nonce();
    let now = unix_now();
    let expired = mint_rest_credential(SECRET.as_bytes(), "dave", now - 60);
    let other_secret = mint_rest_credential(b"south", "dave", now + 3600);
    let forged = (
        format!("{}:dave", now + 3600),
        "Zm9yZ2VkIHBhc3N3b3JkIGhlcmU=".to_string(),
    );
    let no_expiry = ("dave".to_string(), rest_password(SECRET.as_bytes(), "dave"));
    for (what, creds) in [
        ("expired", &expired),
        ("another secret", &other_secret),
        ("forged", &forged),
        ("no expiry", &no_expiry),
    ] {
        let rep = raw.transact(&raw.signed(method::ALLOCATE, as_pair(creds), udp_transport));
        rep.expect_error(401, "Unauthenticated");
        assert!(rep.msg().integrity_offset().is_none(), "{what}");
    }
    let m = r.wait_metric(FAILURE, 4.0);
    assert_eq!((m.get(FAILURE), m.get(ALLOCATIONS)), (4.0, 0.0));
    // A current credential from the same secret is accepted.
    let valid = mint_rest_credential(SECRET.as_bytes(), "dave", now + 3600);
    raw.allocate(as_pair(&valid), false);
    assert_serving(&r, "127.0.0.1");
}

#[test]
fn stale_forged_and_foreign_nonces_are_refused() {
    // One second instead of the default 600.
    let r = Relayd::start(ports(3), &["--nonce-lifetime", "1"]);
    let mut raw = Raw::bind("127.0.0.1", r.udp);
    raw.learn_nonce();
    let first = raw.nonce.clone();
    raw.transact(&raw.signed(method::ALLOCATE, ALICE, udp_transport))
        .expect_success();
    // Forged: the mint time kept, the MAC changed.
    let mut forged = raw.nonce.clone().into_bytes();
    forged[31] = if forged[31] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).unwrap();
    for bad in [
        forged.as_str(),
        "not-a-nonce",
        "ffffffffffffffff0000000000000000",
    ] {
        let msg = signed_request(method::REFRESH, "alice", "secret", &raw.realm, bad, |_| {});
        raw.transact(&msg).expect_error(401, "Unauthenticated");
    }
    // A nonce is bound to the client's address: another source cannot use it.
    let mut thief = Raw::bind("127.0.0.2", r.udp);
    (thief.realm, thief.nonce) = (raw.realm.clone(), first.clone());
    thief
        .transact(&thief.signed(method::ALLOCATE, BOB, udp_transport))
        .expect_error(401, "Unauthenticated");
    // Stale: keep refreshing with the first nonce until the relay calls it stale (bounded).
    let deadline = Instant::now() + WAIT;
    let stale = loop {
        let rep = raw.transact(&signed_request(
            method::REFRESH,
            "alice",
            "secret",
            &raw.realm,
            &first,
            |b| {
                b.u32_attr(attr::LIFETIME, 600);
            },
        ));
        match rep.error() {
            None => {}
            Some((438, _)) => break rep,
            Some(other) => panic!("expected success or 438, got {other:?}"),
        }
        assert!(Instant::now() < deadline, "the nonce never went stale");
        std::thread::sleep(Duration::from_millis(100));
    };
    stale.expect_error(438, "Stale Nonce");
    assert!(stale.msg().integrity_offset().is_none());
    raw.take_nonce(&stale);
    assert_ne!(raw.nonce, first, "a fresh nonce comes with the 438");
    let ok = raw.transact(&raw.signed(method::REFRESH, ALICE, |b| {
        b.u32_attr(attr::LIFETIME, 600);
    }));
    ok.expect_success();
    assert!(ok.signed_with(&long_term_key("alice", REALM, "secret")));
    let m = r.wait_metric(STALE, 1.0);
    assert!(m.get(&err(438)) >= 1.0);
    assert_eq!(m.get(FAILURE), 4.0, "three bad nonces and one foreign one");
    assert_eq!(m.get(ALLOCATIONS), 1.0);
    // The well-behaved client copes with one-second nonces (it retries after a 438).
    assert_serving(&r, "127.0.0.1");
}

// ---------------------------------------------------------------- request errors

#[test]
fn request_errors_carry_their_codes() {
    let r = Relayd::start(ports(4), &[]);
    let mut a = Raw::bind("127.0.0.1", r.udp);
    a.allocate(ALICE, false);
    let mut a6 = Raw::bind("::1", r.udp6);
    a6.allocate(ALICE, true);
    let mut b = Raw::bind("127.0.0.1", r.udp);
    b.learn_nonce();
    let alice_key = long_term_key("alice", REALM, "secret");
    let peer = sa("198.51.100.5:9");
    let v6_peer = sa("[2001:db8::5]:9");
    type Attrs = Box<dyn Fn(&mut MessageBuilder)>;
    // (who asks, credentials, method, attributes, error code, words of the reason)
    type Case = (
        usize,
        (&'static str, &'static str),
        u16,
        Attrs,
        u16,
        &'static str,
    );
    let none = || -> Attrs { Box::new(|_| {}) };
    let xor = |p: SocketAddr| -> Attrs {
        Box::new(move |b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, p);
        })
    };
    let chan = |n: u32, p: SocketAddr| -> Attrs {
        Box::new(move |b| {
            b.u32_attr(attr::CHANNEL_NUMBER, n << 16)
                .xor_address(attr::XOR_PEER_ADDRESS, p);
        })
    };
    let alloc = |f: fn(&mut MessageBuilder)| -> Attrs {
        Box::new(move |b| {
            udp_transport(b);
            f(b);
        })
    };
    // Who asks: the IPv4 allocation's 5-tuple, the IPv6 one's, or one without an allocation.
    const A: usize = 0;
    const A6: usize = 1;
    const NONE: usize = 2;
    use method::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH};
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        // 437: a second Allocate on a 5-tuple that has one; requests where there is none.
        (A, ALICE, ALLOCATE, alloc(|_| {}), 437, "Allocation Mismatch"),
        (NONE, ALICE, REFRESH, none(), 437, "Allocation Mismatch"),
        (NONE, ALICE, CREATE_PERMISSION, xor(peer), 437, "Allocation Mismatch"),
        (NONE, ALICE, CHANNEL_BIND, chan(0x4000, peer), 437, "Allocation Mismatch"),
        // 441: someone else's valid credentials on alice's allocation.
        (A, BOB, REFRESH, none(), 441, "Wrong Credentials"),
        (A, BOB, CREATE_PERMISSION, xor(peer), 441, "Wrong Credentials"),
        // 442: relaying over TCP is not offered.
        (NONE, ALICE, ALLOCATE, Box::new(|b| { b.u32_attr(attr::REQUESTED_TRANSPORT, 6 << 24); }), 442, "Unsupported Transport Protocol"),
        // 400: missing, malformed or contradictory attributes.
        (NONE, ALICE, ALLOCATE, none(), 400, "REQUESTED-TRANSPORT missing"),
        (NONE, ALICE, ALLOCATE, alloc(|b| { b.attr(attr::EVEN_PORT, &[0x80]).attr(attr::RESERVATION_TOKEN, &[1; 8]); }), 400, "RESERVATION-TOKEN"),
        (A, ALICE, CREATE_PERMISSION, none(), 400, "XOR-PEER-ADDRESS"),
        (A, ALICE, CREATE_PERMISSION, Box::new(|b| { b.attr(attr::XOR_PEER_ADDRESS, &[0, 9, 9]); }), 400, "XOR-PEER-ADDRESS"),
        (A, ALICE, CHANNEL_BIND, xor(peer), 400, "CHANNEL-NUMBER"),
        (A, ALICE, CHANNEL_BIND, chan(0x0000, peer), 400, "Channel number out of range"),
        (A, ALICE, CHANNEL_BIND, chan(0x3fff, peer), 400, "Channel number out of range"),
        (A, ALICE, CHANNEL_BIND, chan(0x8000, peer), 400, "Channel number out of range"),
        (A, ALICE, CHANNEL_BIND, chan(0xffff, peer), 400, "Channel number out of range"),
        // 440: an address family that does not exist, or a dual allocation.
        (NONE, ALICE, ALLOCATE, alloc(|b| { b.attr(attr::REQUESTED_ADDRESS_FAMILY, &[3, 0, 0, 0]); }), 440, "Address Family not Supported"),
        (NONE, ALICE, ALLOCATE, alloc(|b| { b.attr(attr::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]); }), 440, "Dual allocation"),
        // 443: a peer of the other family than the relayed address.
        (A, ALICE, CREATE_PERMISSION, xor(v6_peer), 443, "Peer Address Family Mismatch"),
        (A6, ALICE, CREATE_PERMISSION, xor(peer), 443, "Peer Address Family Mismatch"),
        (A6, ALICE, CHANNEL_BIND, chan(0x4000, peer), 443, "Peer Address Family Mismatch"),
    ];
    let mut who = [a, a6, b];
    let mut expected: BTreeMap<u16, f64> = BTreeMap::new();
    for (k, creds, m, attrs, code, reason) in &cases {
        let rep = who[*k].call(*m, *creds, attrs);
        rep.expect_error(*code, reason);
        // Refusals of authenticated requests are signed with the requester's key.
        assert!(
            rep.signed_with(&long_term_key(creds.0, REALM, creds.1)),
            "{code} {reason}: not signed"
        );
        *expected.entry(*code).or_default() += 1.0;
    }
    let [a, _, b] = &mut who;
    // 420: an unknown comprehension-required attribute; answered before authentication.
    let rep = b.transact(&b.signed(method::ALLOCATE, ALICE, |b| {
        udp_transport(b);
        b.u32_attr(0x0031, 1)
            .u32_attr(0x7f00, 2)
            .u32_attr(0xc001, 3);
    }));
    rep.expect_error(420, "Unknown Attribute");
    let unknown = rep
        .msg()
        .get(attr::UNKNOWN_ATTRIBUTES)
        .unwrap()
        .value
        .to_vec();
    assert_eq!(
        unknown,
        [0x00, 0x31, 0x7f, 0x00],
        "only the comprehension-required ones"
    );
    *expected.entry(420).or_default() += 1.0;
    // 400: a method TURN does not have.
    b.transact(&request(0x00a, |_| {}))
        .expect_error(400, "Unsupported method");
    *expected.entry(400).or_default() += 1.0;

    // An XOR-PEER-ADDRESS appended after MESSAGE-INTEGRITY (FINGERPRINT fixed up, as anyone on
    // the path could) is not signed, so it is ignored: were it used, this refused private
    // address would turn the success into a 403.
    let signed = a.signed(method::CREATE_PERMISSION, ALICE, |b| {
        b.xor_address(attr::XOR_PEER_ADDRESS, peer);
    });
    let extra = xor_peer_attribute(&signed[4..20], sa("10.0.0.1:9"));
    let rep = a.transact(&append_unsigned(&signed, &extra));
    rep.expect_success();
    assert!(rep.signed_with(&alice_key));

    let m = r.wait_for("every error", |m| {
        expected.iter().all(|(code, n)| m.get(&err(*code)) >= *n)
    });
    for (code, n) in &expected {
        assert_eq!(m.get(&err(*code)), *n, "errors_total for {code}");
    }
    assert_eq!(
        m.get(&err(403)),
        0.0,
        "the unsigned peer was never looked at"
    );
    assert_eq!(m.get(&dropped("unknown_attribute")), 1.0);
    assert_eq!(m.get(ALLOCATIONS), 2.0);
    assert_serving(&r, "127.0.0.1");
    assert_serving(&r, "::1");
}

// ---------------------------------------------------------------- peers

/// The rows of an IANA registry CSV: (block, name).
fn registry(csv: &str) -> Vec<(String, String)> {
    csv.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (block, rest) = l.split_once(',').unwrap();
            let name = rest
                .trim_start_matches('"')
                .split([',', '"'])
                .next()
                .unwrap();
            (block.to_string(), name.to_string())
        })
        .collect()
}

/// The first and last address of a CIDR block.
fn first_last(block: &str) -> (IpAddr, IpAddr) {
    let (a, l) = block.split_once('/').unwrap();
    let (ip, len): (IpAddr, u32) = (a.parse().unwrap(), l.parse().unwrap());
    match ip {
        IpAddr::V4(v4) => {
            let host = u32::MAX.checked_shr(len).unwrap_or(0);
            (ip, IpAddr::V4(Ipv4Addr::from(u32::from(v4) | host)))
        }
        IpAddr::V6(v6) => {
            let host = u128::MAX.checked_shr(len).unwrap_or(0);
            (ip, IpAddr::V6(Ipv6Addr::from(u128::from(v6) | host)))
        }
    }
}

/// The class of refusal the relay's own documentation promises for `ip` (written from the
/// rules, not from the implementation): the relay itself, multicast/broadcast, an IPv6 address
/// carrying a refused IPv4 one, or an ordinary special-purpose block.
fn promised_reason(ip: IpAddr) -> &'static str {
    let own = voxmesh::turn::peer_policy::local_addresses();
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if ip.is_loopback() || ip.is_unspecified() || own.contains(&ip) {
        return "the relay itself";
    }
    if ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return "multicast";
    }
    if let IpAddr::V6(v6) = ip {
        let s = v6.segments();
        let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..3] == [0x64, 0xff9b, 1];
        let compatible = s[..6] == [0; 6];
        let translated = s[..6] == [0, 0, 0, 0, 0xffff, 0];
        if nat64 || compatible || translated || s[0] == 0x2002 || (s[0] == 0x2001 && s[1] == 0) {
            return "embedded IPv4 address refused";
        }
    }
    "special-purpose"
}

#[test]
fn every_special_purpose_block_multicast_and_embedded_loopback_is_refused() {
    let r = Relayd::start_with(ports(5), &[], false);
    let mut v4 = Raw::bind("127.0.0.1", r.udp);
    v4.allocate(ALICE, false);
    let mut v6 = Raw::bind("::1", r.udp6);
    v6.allocate(BOB, true);
    let mut targets: Vec<(String, IpAddr)> = Vec::new();
    for csv in [
        include_str!("../../data/iana-ipv4-special-registry.csv"),
        include_str!("../../data/iana-ipv6-special-registry.csv"),
    ] {
        for (block, name) in registry(csv) {
            let (first, last) = first_last(&block);
            targets.push((format!("{block} ({name}), first"), first));
            targets.push((format!("{block} ({name}), last"), last));
        }
    }
    assert_eq!(targets.len(), 2 * (25 + 25), "both registries, every row");
    for (what, ip) in [
        ("multicast all-hosts", "224.0.0.1"),
        ("multicast SSDP", "239.255.255.250"),
        ("multicast SSM", "232.1.2.3"),
        ("multicast v6 link", "ff02::1"),
        ("multicast v6 site", "ff05::1:3"),
        ("multicast v6 global", "ff0e::1"),
        ("v4-mapped loopback", "::ffff:127.0.0.1"),
        ("v4-compatible loopback", "::127.0.0.1"),
        ("NAT64 loopback", "64:ff9b::7f00:1"),
        ("local NAT64 loopback", "64:ff9b:1:7f00:0:100::"),
        ("6to4 loopback", "2002:7f00:1::1"),
        ("Teredo with a loopback client", "2001:0:808:808::80ff:fffe"),
        ("Teredo with a loopback server", "2001:0:7f00:1::f7f7:f7f7"),
        ("IPv4-translated (SIIT) loopback", "::ffff:0:127.0.0.1"),
        ("IPv4-translated (SIIT) private", "::ffff:0:10.1.2.3"),
        ("deprecated site-local", "fec0::1"),
        (
            "deprecated site-local, last",
            "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ),
    ] {
        targets.push((what.to_string(), ip.parse().unwrap()));
    }
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for (what, ip) in &targets {
        let peer = SocketAddr::new(*ip, 3478);
        // IPv4-mapped addresses are IPv4 on the wire: they go to the IPv4 allocation.
        let as_v4 = match ip {
            IpAddr::V4(_) => true,
            IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
        };
        let (who, creds) = if as_v4 {
            (&mut v4, ALICE)
        } else {
            (&mut v6, BOB)
        };
        let rep = who.permit(creds, peer);
        let (code, reason) = rep
            .error()
            .unwrap_or_else(|| panic!("{what}: permission for {ip} granted"));
        let promised = promised_reason(*ip);
        assert_eq!(code, 403, "{what}: {ip} -> {code} {reason}");
        assert!(
            reason.starts_with("Forbidden") && reason.contains(promised),
            "{what}: {ip} -> {reason:?}, promised {promised:?}"
        );
        assert!(rep.signed_with(&long_term_key(creds.0, REALM, creds.1)));
        *reasons.entry(promised).or_default() += 1;
    }
    // A ChannelBind is held to the same rules.
    v4.bind_channel(ALICE, 0x4001, sa("10.1.2.3:9"))
        .expect_error(403, "special-purpose");
    v6.bind_channel(BOB, 0x4001, sa("[fe80::1]:9"))
        .expect_error(403, "special-purpose");
    // IPv4-mapped on an IPv6 relayed address: the family does not match.
    v6.permit(BOB, sa("[::ffff:127.0.0.1]:9"))
        .expect_error(443, "Peer Address Family Mismatch");
    let n = targets.len() + 2;
    let m = r.wait_metric(&err(403), n as f64);
    assert_eq!(m.get(&err(403)), n as f64);
    assert_eq!(
        m.sum("voxmesh_turn_peer_refused_total"),
        n as f64,
        "{reasons:?}"
    );
    assert!(m.get(&refused("multicast")) >= reasons["multicast"] as f64);
    assert!(m.get(&refused("own_host")) >= reasons["the relay itself"] as f64);
    assert!(
        reasons["embedded IPv4 address refused"] >= 12,
        "{reasons:?}"
    );
    // Ordinary public peers are accepted (permission only: nothing is ever sent to them), so
    // the table refuses what it should and no more. Then the allocations go.
    v4.permit(ALICE, sa("8.8.8.8:53")).expect_success();
    v6.permit(BOB, sa("[2001:4860:4860::8888]:53"))
        .expect_success();
    v4.refresh(ALICE, 0).expect_success();
    v6.refresh(BOB, 0).expect_success();
    assert_serving(&r, "127.0.0.1");
    assert_serving(&r, "::1");
}

#[test]
fn allow_peer_everything_still_refuses_the_relay_itself() {
    let r = Relayd::start_with(
        ports(6),
        &["--allow-peer", "0.0.0.0/0", "--allow-peer", "::/0"],
        false,
    );
    // Another service on the relay host.
    let decoy = UdpSocket::bind("127.0.0.1:0").unwrap();
    let decoy6 = UdpSocket::bind("[::1]:0").unwrap();
    let mut a = Raw::bind("127.0.0.1", r.udp);
    let ra = a.allocate(ALICE, false);
    let mut b = Raw::bind("127.0.0.2", r.udp);
    let rb = b.allocate(BOB, false);
    let mut a6 = Raw::bind("::1", r.udp6);
    let ra6 = a6.allocate(ALICE, true);
    let mut b6 = Raw::bind("::1", r.udp6);
    let rb6 = b6.allocate(BOB, true);
    let (lo, hi) = ports(6);
    let live = [ra.port(), rb.port(), ra6.port(), rb6.port()];
    let idle_relay_port = (lo..=hi).find(|p| !live.contains(p)).unwrap();
    let at = |ip: &str, port: u16| SocketAddr::new(ip.parse().unwrap(), port);
    let mut own4 = vec![
        ("UDP listener", r.udp),
        ("TCP listener", r.tcp),
        ("metrics", r.metrics),
        ("another local service", decoy.local_addr().unwrap()),
        ("an idle relay port", at("127.0.0.1", idle_relay_port)),
        ("loopback /8", at("127.0.0.2", 9)),
        ("unspecified", at("0.0.0.0", 9)),
        (
            "v4-mapped listener",
            SocketAddr::new("::ffff:127.0.0.1".parse().unwrap(), r.udp.port()),
        ),
    ];
    let mut own6 = vec![
        ("UDP listener v6", r.udp6),
        ("another local service v6", decoy6.local_addr().unwrap()),
        ("an idle relay port v6", at("::1", idle_relay_port)),
        ("unspecified v6", at("::", 9)),
    ];
    let own_addresses = voxmesh::turn::peer_policy::local_addresses();
    for ip in own_addresses.iter().filter(|ip| !ip.is_loopback()) {
        let peer = SocketAddr::new(*ip, r.udp.port());
        if ip.is_ipv4() {
            own4.push(("an interface address", peer))
        } else {
            own6.push(("an interface address", peer))
        }
    }
    for (what, peer) in &own4 {
        a.permit(ALICE, *peer)
            .expect_error(403, "Forbidden: the relay itself");
        let _ = what;
    }
    for (_, peer) in &own6 {
        a6.permit(ALICE, *peer)
            .expect_error(403, "Forbidden: the relay itself");
    }
    let embedded = [
        "64:ff9b::7f00:1",
        "64:ff9b:1:7f00:0:100::",
        "2002:7f00:1::1",
        "2001:0:808:808::80ff:fffe",
        "2001:0:7f00:1::f7f7:f7f7",
        "::127.0.0.1",
    ];
    for ip in embedded {
        a6.permit(ALICE, at(ip, r.udp.port()))
            .expect_error(403, "Forbidden: embedded IPv4 address refused");
    }
    let multicast = ["224.0.0.1", "239.1.2.3", "255.255.255.255"];
    for ip in multicast {
        a.permit(ALICE, at(ip, 9))
            .expect_error(403, "Forbidden: multicast");
    }
    for ip in ["ff02::1", "ff0e::1"] {
        a6.permit(ALICE, at(ip, 9))
            .expect_error(403, "Forbidden: multicast");
    }
    a6.permit(ALICE, at("64:ff9b::e000:1", 9))
        .expect_error(403, "Forbidden: embedded IPv4 address refused");
    a.bind_channel(ALICE, 0x4000, decoy.local_addr().unwrap())
        .expect_error(403, "the relay itself");
    let refusals = own4.len() + own6.len() + embedded.len() + multicast.len() + 3 + 1;

    // Another live allocation's relayed address is a peer: delivered inside the relay.
    a.permit(ALICE, rb).expect_success();
    b.permit(BOB, ra).expect_success();
    a6.permit(ALICE, rb6).expect_success();
    b6.permit(BOB, ra6).expect_success();
    a.send_indication(rb, b"to b, through the relay");
    assert_eq!(
        b.recv_data(WAIT),
        Some(Relayed::Data {
            peer: ra,
            data: b"to b, through the relay".to_vec()
        })
    );
    a6.send_indication(rb6, b"v6 too");
    assert_eq!(
        b6.recv_data(WAIT),
        Some(Relayed::Data {
            peer: ra6,
            data: b"v6 too".to_vec()
        })
    );
    b.bind_channel(BOB, 0x4000, ra).expect_success();
    b.send(&[0x40, 0x00, 0x00, 0x04, b'b', b'a', b'c', b'k']);
    assert_eq!(
        a.recv_data(WAIT),
        Some(Relayed::Data {
            peer: rb,
            data: b"back".to_vec()
        })
    );

    // That permission covers 127.0.0.1 (and ::1 for a6), yet data for the relay's other ports
    // goes nowhere. The payload is a Binding request: had the listener got it, its answer would
    // come back to `a` through the relayed socket.
    let binding = request(method::BINDING, |_| {});
    let mut sends = 0;
    for peer in [
        r.udp,
        r.metrics,
        r.tcp,
        decoy.local_addr().unwrap(),
        at("127.0.0.1", idle_relay_port),
    ] {
        a.send_indication(peer, &binding);
        sends += 1;
    }
    for peer in [r.udp6, decoy6.local_addr().unwrap()] {
        a6.send_indication(peer, &binding);
        sends += 1;
    }
    // A relayed address that is no longer live is the relay's own port again.
    b.refresh(BOB, 0).expect_success();
    a.send_indication(rb, b"to a released allocation");
    sends += 1;
    let m = r.wait_metric(&dropped("peer_refused"), sends as f64);
    assert_eq!(m.get(&dropped("peer_refused")), sends as f64);
    assert_eq!(m.get(&err(403)), refusals as f64);
    assert_eq!(
        m.get(&refused("own_host")) as usize,
        own4.len() + own6.len() + 1 + 6 + sends,
        "{:?}",
        m.0
    );
    decoy
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    decoy6
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 1500];
    assert!(
        decoy.recv_from(&mut buf).is_err(),
        "a local service received relayed data"
    );
    assert!(
        decoy6.recv_from(&mut buf).is_err(),
        "a local service received relayed data"
    );
    assert_eq!(
        a.recv_data(Duration::from_millis(300)),
        None,
        "the listener answered relayed data"
    );
    assert_eq!(a6.recv_data(Duration::from_millis(100)), None);
    assert_eq!(b.recv_data(Duration::from_millis(100)), None);
    assert_serving(&r, "127.0.0.1");
    assert_serving(&r, "::1");
}

// ---------------------------------------------------------------- quotas and floods

#[test]
fn user_quota_refuses_with_486_and_others_are_served() {
    let r = Relayd::start(ports(7), &["--user-quota", "2"]);
    let mut held: Vec<Raw> = (0..2).map(|_| Raw::bind("127.0.0.1", r.udp)).collect();
    for c in &mut held {
        c.allocate(ALICE, false);
    }
    let mut third = Raw::bind("127.0.0.1", r.udp);
    let rep = third.call(method::ALLOCATE, ALICE, udp_transport);
    rep.expect_error(486, "Allocation Quota Reached (per user)");
    assert!(rep.signed_with(&long_term_key("alice", REALM, "secret")));
    let m = r.wait_metric(&err(486), 1.0);
    assert_eq!(
        (
            m.get(&err(486)),
            m.get(&dropped("quota")),
            m.get(ALLOCATIONS)
        ),
        (1.0, 1.0, 2.0)
    );
    // Other users from the same address are served; alice again once one is released.
    Raw::bind("127.0.0.1", r.udp).allocate(BOB, false);
    held[0].refresh(ALICE, 0).expect_success();
    third.allocate(ALICE, false);
    assert_serving(&r, "127.0.0.1");
}

#[test]
fn source_quota_refuses_with_486_and_other_sources_are_served() {
    let r = Relayd::start(ports(8), &["--source-quota", "2"]);
    Raw::bind("127.0.0.1", r.udp).allocate(ALICE, false);
    Raw::bind("127.0.0.1", r.udp).allocate(BOB, false);
    for creds in [CAROL, as_pair(&rest_user("fresh"))] {
        Raw::bind("127.0.0.1", r.udp)
            .call(method::ALLOCATE, creds, udp_transport)
            .expect_error(486, "Allocation Quota Reached (per source)");
    }
    let m = r.wait_metric(&err(486), 2.0);
    assert_eq!((m.get(&dropped("quota")), m.get(ALLOCATIONS)), (2.0, 2.0));
    Raw::bind("127.0.0.2", r.udp).allocate(CAROL, false);
    assert_serving(&r, "127.0.0.3");
    assert_serving(&r, "::1");
}

#[test]
fn stream_connections_per_source_are_capped_by_the_source_quota() {
    use std::io::Read;
    let r = Relayd::start(ports(12), &["--source-quota", "2"]);
    let connect = || {
        let s = std::net::TcpStream::connect_timeout(&r.tcp, WAIT).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    };
    // Two silent connections hold the source's two places...
    let (first, _second) = (connect(), connect());
    // ... so a third is closed at once (EOF, or a reset), long before the 10 s prompt limit.
    let t0 = Instant::now();
    let mut third = connect();
    let mut byte = [0u8; 1];
    assert!(matches!(third.read(&mut byte), Ok(0) | Err(_)));
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        t0.elapsed()
    );
    r.wait_metric(&dropped("stream_limit"), 1.0);
    // Freeing a place lets the next one in: it is served (an unauthenticated Allocate is
    // challenged over the stream).
    drop(first);
    let m = r.wait_for("a place freed", |m| m.get(&dropped("stream_limit")) >= 1.0);
    assert_eq!(m.get(&dropped("stream_limit")), 1.0);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut s = connect();
        std::io::Write::write_all(&mut s, &request(method::ALLOCATE, udp_transport)).unwrap();
        let mut head = [0u8; 20];
        if s.read_exact(&mut head).is_ok() {
            assert_eq!(
                u16::from_be_bytes([head[0], head[1]]),
                0x0113,
                "an Allocate error response"
            );
            break;
        }
        // The relay may not have seen the close yet: retry, bounded.
        assert!(Instant::now() < deadline, "no place freed within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_serving(&r, "127.0.0.1");
}

#[test]
fn total_quota_refuses_with_486_while_live_allocations_keep_relaying() {
    let r = Relayd::start(ports(9), &["--total-quota", "3"]);
    let mut a = Raw::bind("127.0.0.1", r.udp);
    let ra = a.allocate(ALICE, false);
    let mut b = Raw::bind("127.0.0.2", r.udp);
    let rb = b.allocate(BOB, false);
    let mut c = Raw::bind("127.0.0.3", r.udp);
    c.allocate(CAROL, false);
    let late = rest_user("late");
    let mut d = Raw::bind("127.0.0.4", r.udp);
    d.call(method::ALLOCATE, as_pair(&late), udp_transport)
        .expect_error(486, "Allocation Quota Reached (total)");
    let m = r.wait_metric(&err(486), 1.0);
    assert_eq!((m.get(&dropped("quota")), m.get(ALLOCATIONS)), (1.0, 3.0));
    // The full relay still relays for the allocations it has.
    a.permit(ALICE, rb).expect_success();
    b.permit(BOB, ra).expect_success();
    a.send_indication(rb, b"full, still relaying");
    assert_eq!(
        b.recv_data(WAIT),
        Some(Relayed::Data {
            peer: ra,
            data: b"full, still relaying".to_vec()
        })
    );
    c.refresh(CAROL, 0).expect_success();
    d.allocate(as_pair(&late), false);
    for (who, creds) in [(&mut a, ALICE), (&mut b, BOB), (&mut d, as_pair(&late))] {
        who.refresh(creds, 0).expect_success();
    }
    assert_serving(&r, "127.0.0.5");
}

#[test]
fn an_allocation_flood_from_one_source_is_bounded() {
    const QUOTA: usize = 16;
    const AUTHENTICATED: usize = 300;
    const UNAUTHENTICATED: usize = 500;
    let r = Relayd::start(ports(10), &["--source-quota", &QUOTA.to_string()]);
    let (fds0, rss0) = (r.fds(), r.rss_kib());
    // Hundreds of Allocates, each with a time-limited username of its own and from a port of
    // its own, all signed with the one nonce (nonces are per source address).
    let mut first = Raw::bind("127.0.0.1", r.udp);
    first.learn_nonce();
    let (mut granted, mut refused) = (Vec::new(), 0);
    for _ in 0..AUTHENTICATED {
        let mut c = Raw::bind("127.0.0.1", r.udp);
        (c.realm, c.nonce) = (first.realm.clone(), first.nonce.clone());
        let creds = rest_user("flood");
        let rep = c.transact(&c.signed(method::ALLOCATE, as_pair(&creds), udp_transport));
        match rep.error() {
            None => granted.push(c),
            Some(_) => {
                rep.expect_error(486, "Allocation Quota Reached (per source)");
                refused += 1;
            }
        }
    }
    assert_eq!((granted.len(), refused), (QUOTA, AUTHENTICATED - QUOTA));
    drop(granted);

    // Unauthenticated Allocates back to back, half from one socket, half from fresh ports.
    let base = r.metrics();
    let one = Raw::bind("127.0.0.1", r.udp);
    let fresh: Vec<Raw> = (0..UNAUTHENTICATED / 2)
        .map(|_| Raw::bind("127.0.0.1", r.udp))
        .collect();
    let start = Instant::now();
    for i in 0..UNAUTHENTICATED {
        let who = if i % 2 == 0 { &one } else { &fresh[i / 2] };
        who.send(&request(method::ALLOCATE, udp_transport));
    }
    // The daemon has handled them all once challenge + rate_limited moved by that many.
    let deadline = Instant::now() + WAIT;
    let handled = |m: &Metrics| {
        (m.get(CHALLENGE) + m.get(RATE_LIMITED)) - (base.get(CHALLENGE) + base.get(RATE_LIMITED))
    };
    let m = loop {
        let m = r.metrics();
        if handled(&m) >= UNAUTHENTICATED as f64 {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "relayd handled only {} of {UNAUTHENTICATED}",
            handled(&m)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = start.elapsed().as_secs_f64();
    let mut answered = 0;
    for who in std::iter::once(&one).chain(&fresh) {
        while let Some(got) = who.recv(Duration::from_millis(if std::ptr::eq(who, &one) {
            300
        } else {
            5
        })) {
            Reply { bytes: got }.expect_error(401, "Unauthenticated");
            answered += 1;
        }
    }
    let limited = m.get(RATE_LIMITED) - base.get(RATE_LIMITED);
    eprintln!(
        "flood: {answered} of {UNAUTHENTICATED} unauthenticated Allocates answered in {elapsed:.2} s, {limited} rate-limited"
    );
    // CHALLENGE_BURST (128) per source address (one spent on the first nonce, and refilled
    // since), CHALLENGE_RATE (20) per second after that.
    let (burst, rate) = (CHALLENGE_BURST as usize, CHALLENGE_RATE);
    let allowed = burst + (rate * elapsed).ceil() as usize;
    assert!(
        answered <= allowed && answered >= burst - 1,
        "{answered} 401s (allowed {allowed})"
    );
    assert_eq!(
        limited as usize,
        UNAUTHENTICATED - answered,
        "every unanswered one was counted as rate-limited"
    );
    assert_eq!(m.get(ALLOCATIONS) as usize, QUOTA);
    assert_eq!(m.get("voxmesh_turn_relayed_sockets") as usize, QUOTA);
    // Bounded cost: one relayed socket per allocation, little memory.
    let (fds, rss) = (r.fds(), r.rss_kib());
    eprintln!("flood: fds {fds0} -> {fds}, RSS {rss0} -> {rss} KiB");
    assert!(fds <= fds0 + QUOTA + 2, "fds {fds0} -> {fds}");
    assert!(rss <= rss0 + 16 * 1024, "RSS {rss0} -> {rss} KiB");
    // Another source address is served normally, its 401 included.
    Raw::bind("127.0.0.2", r.udp).learn_nonce();
    assert_serving(&r, "127.0.0.2");
}

/// 100 clients behind one address start at the same instant: each first Allocate, sent once,
/// gets its 401 (none is left to a retransmission by the rate limiter), and the 401 is the
/// size the documented bound on reflected bytes is computed from.
#[test]
fn a_burst_of_100_first_allocates_from_one_address_is_answered_at_once() {
    let r = Relayd::start(ports(13), &[]);
    let clients: Vec<Raw> = (0..100).map(|_| Raw::bind("127.0.0.1", r.udp)).collect();
    let requests: Vec<Vec<u8>> = clients
        .iter()
        .map(|c| {
            let q = request(method::ALLOCATE, udp_transport);
            c.send(&q);
            q
        })
        .collect();
    for (i, (c, q)) in clients.iter().zip(&requests).enumerate() {
        let rep = c
            .reply_to(q, WAIT)
            .unwrap_or_else(|| panic!("client {i}: no answer to its only Allocate"));
        rep.expect_error(401, "Unauthenticated");
        assert_eq!(
            rep.bytes.len() as u64,
            CHALLENGE_BYTES,
            "the documented 401 size"
        );
    }
    let m = r.wait_metric(CHALLENGE, 100.0);
    assert_eq!((m.get(CHALLENGE), m.get(RATE_LIMITED)), (100.0, 0.0));
    assert_serving(&r, "127.0.0.1");
}

// ---------------------------------------------------------------- the lab

#[test]
fn refusals_and_floods_leave_real_relaying_intact_in_the_lab() {
    let test = "refusals_and_floods_leave_real_relaying_intact_in_the_lab";
    if !Lab::ready_or_skip(test) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let attacker = lab.add(1, &BoxOpts::new(LabNat::None)).unwrap();
    let good = lab.add(2, &BoxOpts::new(LabNat::FullCone)).unwrap();
    let peer = lab.add(3, &BoxOpts::new(LabNat::None)).unwrap();
    let relay = common::start_relayd(
        &lab,
        &[
            "--listen",
            "udp:198.51.100.1:3478",
            "--relay-ip",
            "198.51.100.1",
            "--relay-ports",
            "50000-50999",
            "--user",
            "alice:secret",
            "--user",
            "bob:hunter2",
            "--auth-secret",
            SECRET,
            "--realm",
            REALM,
            "--allow-peer",
            "198.51.100.0/24",
            "--metrics",
            "127.0.0.1:9479",
            "--source-quota",
            "4",
            "-q",
        ],
    );
    let srv = lab.server_ns();
    let connect = || in_netns(&srv, || TcpStream::connect("127.0.0.1:9479"));
    let server = sa("198.51.100.1:3478");
    let ans = &attacker.hosts[0].ns;
    let raw = || Raw::from_socket(lab.udp_socket(ans, sa("0.0.0.0:0")).unwrap(), server);

    // Authentication refusals.
    let mut a = raw();
    a.learn_nonce();
    a.transact(&a.signed(method::ALLOCATE, ("alice", "wrong"), udp_transport))
        .expect_error(401, "Unauthenticated");
    let ra = a.allocate(ALICE, false);
    assert_eq!(ra.ip().to_string(), "198.51.100.1");
    a.call(method::ALLOCATE, ALICE, udp_transport)
        .expect_error(437, "Allocation Mismatch");
    // The relay itself, inside the allowed block, and what no allow-list opens.
    for (peer, why) in [
        ("198.51.100.1:3478", "the relay itself"),
        ("198.51.100.1:9479", "the relay itself"),
        ("198.51.100.2:3478", "the relay itself"),
        ("127.0.0.1:9479", "the relay itself"),
        ("[::ffff:198.51.100.1]:3478", "the relay itself"),
        ("10.0.0.1:9", "special-purpose"),
        ("192.168.1.1:53", "special-purpose"),
        ("224.0.0.1:9", "multicast"),
    ] {
        a.permit(ALICE, sa(peer)).expect_error(403, why);
    }
    // A second allocation of the attacker's: its relayed address is a peer, which gives a
    // permission for the relay's IP, yet the listener behind that IP stays out of reach.
    let mut a2 = raw();
    let ra2 = a2.allocate(BOB, false);
    a.permit(ALICE, ra2).expect_success();
    a.send_indication(server, &request(method::BINDING, |_| {}));
    a.send_indication(sa("198.51.100.1:9479"), b"GET /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(
        a.recv_data(Duration::from_millis(300)),
        None,
        "the relay's own ports answered relayed data"
    );
    // Source quota (4): a and a2 hold two; two more, then 486.
    let mut extra = Vec::new();
    for i in 0..4 {
        let mut c = raw();
        let creds = rest_user("lab-flood");
        let rep = c.call(method::ALLOCATE, as_pair(&creds), udp_transport);
        if i < 2 {
            rep.expect_success();
            extra.push(c);
        } else {
            rep.expect_error(486, "Allocation Quota Reached (per source)");
        }
    }
    // Unauthenticated flood and garbage from the attacker's host: 110 more than the limiter's
    // burst.
    let flood = raw();
    for _ in 0..CHALLENGE_BURST as usize + 110 {
        flood.send(&request(method::ALLOCATE, udp_transport));
    }
    let valid = a.signed(method::CREATE_PERMISSION, ALICE, |b| {
        b.xor_address(attr::XOR_PEER_ADDRESS, ra2);
    });
    for i in 0..300usize {
        let mut m = valid.clone();
        let k = (i * 7919) % m.len();
        m[k] ^= 1 << (i % 8);
        m.truncate(m.len() - (i % 5));
        flood.send(&m);
        flood.send(&[0x00, 0x01, 0xff, 0xff]);
        flood.send(&[0x40, 0x00, 0x10, 0x00, 1, 2, 3]);
    }
    // A peer host sends to the attacker's relayed address without a permission: dropped.
    let pns = &peer.hosts[0].ns;
    let stray = lab.udp_socket(pns, sa("0.0.0.0:0")).unwrap();
    for _ in 0..20 {
        stray.send_to(b"unsolicited", ra).unwrap();
    }
    assert_eq!(
        a.recv_data(Duration::from_millis(300)),
        None,
        "unsolicited peer data reached the client"
    );

    // Meanwhile a client behind a NAT relays real traffic to a real peer, both ways.
    let peer_addr = sa(&format!("{}:7000", peer.hosts[0].ip4));
    let echo = common::udp_echo(&lab, pns, peer_addr, 400);
    let got = in_netns(&good.hosts[0].ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let cfg = TurnClientConfig::new(server, "bob", "hunter2");
            let mut relay = TurnRelay::allocate(cfg, TurnTransport::Udp, WAIT)
                .await
                .map_err(std::io::Error::other)?;
            relay
                .create_permission(peer_addr)
                .await
                .map_err(std::io::Error::other)?;
            // Lockstep, half by Send indication and half over a channel. UDP may lose a
            // datagram on a loaded machine: one is sent again after a second (bounded).
            let (mut got, mut resent) = (0, 0);
            for i in 0..100u32 {
                if i == 50 {
                    relay
                        .bind_channel(peer_addr)
                        .await
                        .map_err(std::io::Error::other)?;
                }
                let mut tries = 0;
                let (from, data) = loop {
                    relay
                        .send_to(peer_addr, &i.to_be_bytes())
                        .await
                        .map_err(std::io::Error::other)?;
                    match tokio::time::timeout(Duration::from_secs(1), relay.recv()).await {
                        Ok(got) => {
                            break got.ok_or_else(|| std::io::Error::other("relay closed"))?;
                        }
                        Err(_) if tries < 3 => (tries, resent) = (tries + 1, resent + 1),
                        Err(_) => return Err(std::io::Error::other(format!("no echo for {i}"))),
                    }
                };
                assert_eq!((from, data), (peer_addr, i.to_be_bytes().to_vec()));
                got += 1;
            }
            relay.release().await;
            Ok::<_, std::io::Error>((got, resent))
        })
    })
    .unwrap_or_else(|e| panic!("the well-behaved client in the lab: {e}"));
    let (got, resent) = got;
    assert_eq!(got, 100);
    if resent > 0 {
        eprintln!("{test}: {resent} datagrams sent again after a loss");
    }
    // The echo thread ends by itself (read timeout) after the test.
    drop(echo);

    let to_peer = r#"voxmesh_turn_packets_total{direction="to_peer"}"#;
    let to_client = r#"voxmesh_turn_packets_total{direction="to_client"}"#;
    let m = wait_until(connect, "the good client's traffic", |m| {
        m.get(to_peer) >= 100.0 && m.get(to_client) >= 100.0
    });
    let show = |k: &str| m.get(k);
    assert!(show(FAILURE) >= 1.0 && show(&err(437)) >= 1.0 && show(&err(486)) >= 1.0);
    assert_eq!(show(&err(403)), 8.0);
    assert!(
        show(RATE_LIMITED) >= 100.0,
        "unauthenticated flood not rate-limited: {}",
        show(RATE_LIMITED)
    );
    assert!(
        show(&dropped("malformed")) >= 300.0,
        "garbage counted: {}",
        show(&dropped("malformed"))
    );
    assert!(show(&dropped("no_permission")) >= 20.0);
    assert!(show(&dropped("peer_refused")) >= 2.0);
    let mut relay = relay;
    assert!(relay.child.try_wait().unwrap().is_none(), "relayd died");
}

/// The relay host itself is never a peer, and that includes addresses it gains while running:
/// the kernel's address notifications make relayd read its addresses again, so an address added
/// to the relay's host is refused from then on (permissions and data alike), and allowed again
/// once removed. SIGHUP re-reads them too.
#[test]
fn addresses_the_relay_host_gains_while_running_are_refused() {
    let test = "addresses_the_relay_host_gains_while_running_are_refused";
    if !Lab::ready_or_skip(test) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let client = lab.add(1, &BoxOpts::new(LabNat::None)).unwrap();
    let mut relay = common::start_relayd(
        &lab,
        &[
            "--listen",
            "udp:198.51.100.1:3478",
            "--relay-ip",
            "198.51.100.1",
            "--relay-ports",
            "50000-50999",
            "--user",
            "alice:secret",
            "--realm",
            REALM,
            "--allow-peer",
            "198.51.100.0/24",
            "--metrics",
            "127.0.0.1:9479",
            "-q",
        ],
    );
    let srv = lab.server_ns();
    let connect = || in_netns(&srv, || TcpStream::connect("127.0.0.1:9479"));
    let server = sa("198.51.100.1:3478");
    let ns = &client.hosts[0].ns;
    let mut a = Raw::from_socket(lab.udp_socket(ns, sa("0.0.0.0:0")).unwrap(), server);
    a.allocate(ALICE, false);
    // An address in the allowed block that nothing in the lab holds: an ordinary peer.
    let gained = sa("198.51.100.77:9");
    a.permit(ALICE, gained).expect_success();
    let ip = |verb: &str| {
        let st = lab
            .command(&srv, "ip")
            .args(["addr", verb, "198.51.100.77/32", "dev", "lo"])
            .status()
            .unwrap();
        assert!(st.success(), "ip addr {verb} in {srv}");
    };
    let until = |what: &str, want_refused: bool, a: &mut Raw| {
        let deadline = Instant::now() + WAIT;
        loop {
            let rep = a.permit(ALICE, gained);
            match rep.error() {
                Some((403, r)) if want_refused => {
                    assert!(r.contains("the relay itself"), "{r}");
                    return;
                }
                None if !want_refused => return,
                _ => {}
            }
            assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    ip("add");
    until("refused once the host holds it", true, &mut a);
    // The permission granted before still exists, but data to the host's own address is
    // dropped on the data path too.
    a.send_indication(gained, b"to the relay host");
    let own = refused("own_host");
    let m = wait_until(connect, "data to the gained address dropped", |m| {
        m.get(&own) >= 2.0
    });
    assert_eq!(
        m.get(&own),
        2.0,
        "one permission refused, one datagram dropped"
    );
    // SIGHUP re-reads them as well: still the host's own.
    // SAFETY: kill(2) on our own child's PID.
    assert_eq!(
        unsafe { libc::kill(relay.child.id() as i32, libc::SIGHUP) },
        0
    );
    a.permit(ALICE, gained)
        .expect_error(403, "the relay itself");
    ip("del");
    until("allowed again once the host gave it up", false, &mut a);
    assert!(relay.child.try_wait().unwrap().is_none(), "relayd died");
}
