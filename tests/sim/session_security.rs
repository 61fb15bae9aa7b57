//! The session layer under attack: identity bindings, wrong keys, replays, handshake floods,
//! malformed frames, full tables. Each attack is refused with a reason, counted, and leaves the
//! service working for legitimate peers.

use crate::support::session as session_support;

use std::net::SocketAddr;
use std::time::Duration;

use session_support::*;
use voxmesh::identity::{Binding, NodeKey};
use voxmesh::session::crypto::{HandshakeCryptoError, ResponderCrypto, initiation_frame};
use voxmesh::session::wire;
use voxmesh::session::{Config, Event, HandshakeError, RateLimits, Refusal};

const SERVER: &str = "198.51.100.1:7000";
const CLIENT: &str = "203.0.113.5:40000";
const ATTACKER: &str = "192.0.2.66:4444";

fn server_sim(seed: u64, config: Config) -> (Sim, usize) {
    let mut sim = Sim::new(seed);
    let server = sim.add(config, &identity(1), SERVER);
    sim.nodes[server].auto_answer = Some(echo);
    (sim, server)
}

fn failed_with(sim: &Sim, node: usize) -> Option<HandshakeError> {
    sim.nodes[node].events.iter().find_map(|e| match e {
        Event::HandshakeFailed { error, .. } => Some(error.clone()),
        _ => None,
    })
}

fn start(sim: &mut Sim, client: usize, key: &NodeKey) {
    let now = sim.now;
    sim.nodes[client]
        .ep
        .connect(now, addr(SERVER), key)
        .unwrap();
}

#[test]
fn a_noise_key_not_bound_to_the_claimed_identity_is_refused() {
    let victim = identity(7);
    let mallory = identity(8);
    // Mallory presents the victim's real binding (a valid signature, but over the victim's Noise
    // key, not Mallory's), and then a binding naming the victim signed with Mallory's key.
    let stolen = *victim.binding();
    let forged = Binding {
        identity: *victim.public(),
        signature: mallory.binding().signature,
    };
    for (i, binding) in [stolen, forged].into_iter().enumerate() {
        let (mut sim, server) = server_sim(20 + i as u64, Config::default());
        let liar = mallory.clone().with_binding_for_tests(binding);
        let client = sim.add(Config::client(), &liar, CLIENT);
        let key = sim.nodes[server].ep.node_key();
        start(&mut sim, client, &key);
        sim.run_for(Duration::from_secs(2));
        assert_eq!(
            failed_with(&sim, client),
            Some(HandshakeError::RefusedByPeer)
        );
        let c = sim.nodes[server].ep.counters();
        assert_eq!(c.refused(Refusal::BindingRefused), 1, "{c:?}");
        assert_eq!(sim.nodes[server].ep.session_count(), 0);
        assert!(sim.connected_sessions(server).is_empty());
    }
}

#[test]
fn a_responder_whose_noise_key_is_not_bound_is_refused_by_the_client() {
    let mut sim = Sim::new(22);
    let real = identity(1);
    let liar = real.clone().with_binding_for_tests(*identity(9).binding());
    let server = sim.add(Config::default(), &liar, SERVER);
    let client = sim.add(Config::client(), &identity(2), CLIENT);
    let key = sim.nodes[server].ep.node_key();
    start(&mut sim, client, &key);
    sim.run_for(Duration::from_secs(2));
    assert!(matches!(
        failed_with(&sim, client),
        Some(HandshakeError::Binding(_))
    ));
    assert_eq!(
        sim.nodes[client]
            .ep
            .counters()
            .refused(Refusal::BindingRefused),
        1
    );
    assert_eq!(sim.nodes[client].ep.session_count(), 0);
}

#[test]
fn a_node_key_naming_another_identity_fails_the_handshake() {
    let (mut sim, server) = server_sim(23, Config::default());
    let client = sim.add(Config::client(), &identity(2), CLIENT);
    let mut key = sim.nodes[server].ep.node_key();
    key.id = identity(5).id();
    start(&mut sim, client, &key);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(
        failed_with(&sim, client),
        Some(HandshakeError::IdentityMismatch {
            expected: identity(5).id(),
            found: identity(1).id()
        })
    );
}

/// The client expects key A, the server holds key B: every initiation is dropped by mac1 before
/// any crypto, and the client gives up cleanly with a reason that points at the key.
#[test]
fn an_unknown_responder_key_fails_cleanly() {
    let (mut sim, server) = server_sim(24, Config::default());
    let client = sim.add(Config::client(), &identity(2), CLIENT);
    let key_a = identity(40).node_key();
    start(&mut sim, client, &key_a);
    sim.run_for(Duration::from_secs(25));
    let err = failed_with(&sim, client).unwrap();
    assert_eq!(err, HandshakeError::TimedOut { attempts: 12 });
    assert!(err.to_string().contains("bootstrap entry"));
    let c = sim.nodes[server].ep.counters();
    assert_eq!(c.refused(Refusal::BadMac1), 12);
    assert_eq!(c.handshakes_answered, 0);
    assert_eq!(sim.nodes[server].ep.session_count(), 0);
}

/// One source sends many distinct, valid initiations (it knows the server's key, so mac1 is
/// right). After its burst, the server stops doing DH work for it and sends cookies instead; a
/// legitimate client elsewhere connects as usual.
#[test]
fn a_handshake_flood_from_one_source_gets_cookies_and_the_client_gets_through() {
    let (mut sim, server) = server_sim(25, Config::default());
    let key = sim.nodes[server].ep.node_key();
    let attacker = identity(66);
    let floods: Vec<Vec<u8>> = (0..150u32)
        .map(|i| initiation_frame(&attacker, &key, i + 1))
        .collect();
    let client = sim.add(Config::client(), &identity(2), CLIENT);
    // 150 initiations over 1.5 s, the client connecting in the middle of it.
    for (i, f) in floods.iter().enumerate() {
        sim.inject(addr(ATTACKER), addr(SERVER), f.clone());
        sim.run_for(Duration::from_millis(10));
        if i == 75 {
            start(&mut sim, client, &key);
        }
    }
    sim.run_for(Duration::from_secs(1));
    let c = sim.nodes[server].ep.counters().clone();
    let rl = RateLimits::default();
    // The burst, plus the rate over 1.5 s, plus the client.
    let max_work = (rl.source_burst + rl.source_rate * 1.6) as u64 + 1;
    assert!(c.handshakes_answered <= max_work, "{c:?}");
    assert!(c.cookies_sent >= 150 - max_work, "{c:?}");
    // The attacker's inbox: cookie replies (62 bytes) and handshake answers, all smaller than
    // what it sent.
    let to_attacker: Vec<_> = sim
        .world
        .sink
        .iter()
        .filter(|p| p.to == addr(ATTACKER))
        .collect();
    assert!(to_attacker.iter().all(|p| p.data.len() < wire::INIT_LEN));
    assert!(
        to_attacker
            .iter()
            .filter(|p| p.data[0] == wire::COOKIE_REPLY)
            .count()
            >= 100
    );
    // The client connected, without needing a cookie.
    assert!(
        sim.nodes[client]
            .events
            .iter()
            .any(|e| matches!(e, Event::Connected { .. }))
    );
    assert_eq!(sim.nodes[client].ep.counters().cookies_received, 0);
    // The attacker's handshakes never got confirmed: they expire.
    sim.run_for(Duration::from_secs(25));
    assert_eq!(sim.nodes[server].ep.pending_count(), 0);
    assert_eq!(sim.nodes[server].ep.session_count(), 1);
}

/// A flood from many (spoofed) sources exhausts the global budget: every new initiator must
/// prove its address with a cookie. The legitimate client does (one extra round trip); the
/// spoofer cannot, since the cookies go to the addresses it forged.
#[test]
fn a_spoofed_flood_puts_the_server_under_load_and_the_client_proves_its_address() {
    let cfg = Config {
        rate: RateLimits {
            global_rate: 20.0,
            global_burst: 10.0,
            ..RateLimits::default()
        },
        ..Config::default()
    };
    let (mut sim, server) = server_sim(26, cfg);
    let key = sim.nodes[server].ep.node_key();
    let attacker = identity(66);
    let floods: Vec<Vec<u8>> = (0..120u32)
        .map(|i| initiation_frame(&attacker, &key, i + 1))
        .collect();
    let client = sim.add(Config::client(), &identity(2), CLIENT);
    for (i, f) in floods.iter().enumerate() {
        let spoofed: SocketAddr = format!("192.0.2.{}:{}", i % 250 + 1, 1000 + i)
            .parse()
            .unwrap();
        sim.inject(spoofed, addr(SERVER), f.clone());
        if i % 4 == 0 {
            sim.run_for(Duration::from_millis(5));
        }
        if i == 60 {
            start(&mut sim, client, &key);
        }
    }
    assert!(sim.drive_until(Duration::from_secs(5), |sim| {
        sim.nodes[client]
            .events
            .iter()
            .any(|e| matches!(e, Event::Connected { .. }))
    }));
    let cc = sim.nodes[client].ep.counters();
    assert_eq!(cc.cookies_received, 1, "{cc:?}");
    let c = sim.nodes[server].ep.counters();
    assert!(c.cookies_sent >= 60, "{c:?}");
    // Global burst + rate over the flood, and the client.
    assert!(c.handshakes_answered <= 10 + 20 + 1, "{c:?}");
}

/// A source that does prove its address (it reads its cookies) is still limited to the proven
/// rate; the excess is refused as rate-limited.
#[test]
fn a_source_that_proves_its_address_is_still_rate_limited() {
    let cfg = Config {
        rate: RateLimits {
            source_burst: 2.0,
            source_rate: 1.0,
            proven_burst: 3.0,
            proven_rate: 1.0,
            ..RateLimits::default()
        },
        ..Config::default()
    };
    let (mut sim, server) = server_sim(27, cfg);
    // Many clients behind one address: each a real endpoint that handles cookies.
    let mut clients = Vec::new();
    for i in 0..12u8 {
        let c = sim.add(
            Config::client(),
            &identity(100 + i),
            &format!("203.0.113.9:{}", 5000 + i as u16),
        );
        clients.push(c);
    }
    let key = sim.nodes[server].ep.node_key();
    for &c in &clients {
        let now = sim.now;
        sim.nodes[c].ep.connect(now, addr(SERVER), &key).unwrap();
    }
    sim.run_for(Duration::from_secs(1));
    let c = sim.nodes[server].ep.counters();
    assert!(c.refused(Refusal::RateLimited) > 0, "{c:?}");
    assert!(c.handshakes_answered <= 2 + 3 + 2, "{c:?}");
    // Over time (retransmissions at 1/s each) every client gets in.
    assert!(sim.drive_until(Duration::from_secs(20), |sim| {
        clients.iter().all(|&c| {
            sim.nodes[c]
                .events
                .iter()
                .any(|e| matches!(e, Event::Connected { .. }))
        })
    }));
}

#[test]
fn duplicate_initiations_are_answered_without_crypto() {
    let (mut sim, server) = server_sim(28, Config::default());
    let key = sim.nodes[server].ep.node_key();
    let init = initiation_frame(&identity(2), &key, 77);
    for _ in 0..5 {
        sim.deliver(server, addr(CLIENT), &init);
    }
    let c = sim.nodes[server].ep.counters();
    assert_eq!(c.handshakes_answered, 1);
    assert_eq!(c.handshake_duplicates, 4);
    sim.run_for(Duration::from_millis(100));
    let resp: Vec<_> = sim
        .world
        .sink
        .iter()
        .filter(|p| p.data[0] == wire::HANDSHAKE_RESP)
        .collect();
    assert_eq!(resp.len(), 5);
    assert!(resp.windows(2).all(|w| w[0].data == w[1].data));
    // Never confirmed (this "client" cannot finish): forgotten after the confirm timeout.
    sim.run_for(Duration::from_secs(21));
    assert_eq!(sim.nodes[server].ep.session_count(), 0);
    assert_eq!(sim.nodes[server].ep.counters().handshakes_unconfirmed, 1);
}

/// A recorded initiation replayed after the real session was established creates nothing: the
/// replay's handshake is never confirmed (the attacker has no keys), and the real session is
/// untouched.
#[test]
fn a_replayed_initiation_establishes_nothing() {
    let (mut sim, server) = server_sim(29, Config::default());
    sim.world.record = true;
    let client = sim.add(Config::client(), &identity(2), CLIENT);
    let s = sim.connect(client, server);
    let init = sim.first_sent(wire::HANDSHAKE_INIT);
    sim.run_for(Duration::from_secs(1));
    sim.inject(addr(ATTACKER), addr(SERVER), init);
    sim.run_for(Duration::from_secs(25));
    let c = sim.nodes[server].ep.counters();
    assert_eq!(c.handshakes_answered, 2);
    assert_eq!(c.handshakes_confirmed, 1);
    assert_eq!(c.handshakes_unconfirmed, 1);
    assert_eq!(sim.connected_sessions(server).len(), 1);
    let now = sim.now;
    sim.nodes[client].ep.request(now, s, b"still here").unwrap();
    assert!(sim.drive_until(Duration::from_secs(2), |sim| {
        sim.count(client, |e| matches!(e, Event::Response { .. })) == 1
    }));
}

/// Transport frames captured on the wire: a replay is refused, frames reordered within the window
/// are accepted, frames older than the window are refused.
#[test]
fn replay_window_refuses_replays_and_accepts_reordering() {
    let (mut sim, server) = server_sim(30, Config::default());
    let client = sim.add(Config::client(), &identity(2), CLIENT);
    let s = sim.connect(client, server);
    sim.run_for(Duration::from_millis(100));
    // Capture the client's next frames instead of delivering them.
    sim.cut(addr(CLIENT), addr(SERVER));
    sim.world.record = true;
    sim.world.sent.clear();
    for i in 0..700u32 {
        let now = sim.now;
        sim.nodes[client].ep.send(now, s, &i.to_be_bytes()).unwrap();
        sim.drain(client);
    }
    let frames: Vec<Vec<u8>> = sim
        .world
        .sent
        .iter()
        .filter(|p| p.src == addr(CLIENT))
        .map(|p| p.data.clone())
        .collect();
    assert_eq!(frames.len(), 700);
    let refused = |sim: &Sim, r| sim.nodes[server].ep.counters().refused(r);
    let messages = |sim: &Sim| sim.count(server, |e| matches!(e, Event::Message { .. }));
    // The indices below straddle the window's edge.
    const {
        assert!(
            699 - 200 < voxmesh::session::REPLAY_WINDOW
                && 699 - 10 >= voxmesh::session::REPLAY_WINDOW
        )
    };
    // Newest first, then a few older ones: reordering within the window is fine.
    sim.deliver(server, addr(CLIENT), &frames[699]);
    sim.deliver(server, addr(CLIENT), &frames[600]);
    sim.deliver(server, addr(CLIENT), &frames[200]);
    assert_eq!(messages(&sim), 3);
    // A replay.
    sim.deliver(server, addr(CLIENT), &frames[600]);
    assert_eq!(refused(&sim, Refusal::Replayed), 1);
    // Older than the window (699 - 10 >= 512 nonces back, the window).
    sim.deliver(server, addr(CLIENT), &frames[10]);
    assert_eq!(refused(&sim, Refusal::TooOld), 1);
    assert_eq!(messages(&sim), 3);
    // A forged frame with a fresh nonce does not authenticate, and does not move the window.
    let mut forged = frames[699].clone();
    forged[5..13].copy_from_slice(&1_000_000u64.to_be_bytes());
    sim.deliver(server, addr(CLIENT), &forged);
    assert_eq!(refused(&sim, Refusal::BadAuth), 1);
    sim.deliver(server, addr(CLIENT), &frames[500]);
    assert_eq!(messages(&sim), 4);
}

#[test]
fn malformed_frames_are_refused_with_a_reason() {
    let (mut sim, server) = server_sim(31, Config::default());
    let client = sim.add(Config::client(), &identity(2), CLIENT);
    let s = sim.connect(client, server);
    sim.run_for(Duration::from_millis(100));
    let srv = sim.connected_sessions(server)[0];
    let key = sim.nodes[server].ep.node_key();
    let good_init = initiation_frame(&identity(3), &key, 5);
    let mut bad_version = good_init.clone();
    bad_version[1] = 9;
    let mut bad_mac1 = good_init.clone();
    bad_mac1[wire::INIT_MAC1] ^= 1;
    // Tampered Noise bytes with mac1 recomputed (anyone who knows the key can), so that the
    // tampering reaches the Noise layer.
    let mut noise_tampered = good_init.clone();
    noise_tampered[wire::INIT_NOISE + 40] ^= 1;
    let m1 = voxmesh_mac1(&key, &noise_tampered[..wire::INIT_MAC1]);
    noise_tampered[wire::INIT_MAC1..wire::INIT_MAC2].copy_from_slice(&m1);
    let transport_for = |idx: u32, nonce: u64, len: usize| {
        let mut f = vec![wire::TRANSPORT];
        f.extend_from_slice(&idx.to_be_bytes());
        f.extend_from_slice(&nonce.to_be_bytes());
        f.resize(wire::TRANSPORT_HEADER + len, 0xab);
        f
    };
    let cases: Vec<(&str, Vec<u8>, Refusal)> = vec![
        ("empty", vec![], Refusal::NotSessionFrame),
        ("stun", vec![0, 1, 0, 0], Refusal::NotSessionFrame),
        ("rtp", vec![0x80; 40], Refusal::NotSessionFrame),
        ("reserved type", vec![9; 50], Refusal::UnknownType),
        ("oversized", vec![wire::TRANSPORT; 1500], Refusal::Oversized),
        ("short init", good_init[..100].to_vec(), Refusal::Malformed),
        (
            "long init",
            [&good_init[..], &[0]].concat(),
            Refusal::Malformed,
        ),
        ("init version", bad_version, Refusal::UnsupportedVersion),
        ("init mac1", bad_mac1, Refusal::BadMac1),
        ("init tampered", noise_tampered, Refusal::BadHandshake),
        (
            "response for nobody",
            vec![wire::HANDSHAKE_RESP; wire::RESP_LEN],
            Refusal::UnsupportedVersion,
        ),
        (
            "response unknown session",
            {
                let mut f = vec![0u8; wire::RESP_LEN];
                f[0] = wire::HANDSHAKE_RESP;
                f[1] = wire::VERSION;
                f
            },
            Refusal::UnknownSession,
        ),
        (
            "response to established",
            {
                let mut f = vec![0u8; wire::RESP_LEN];
                f[0] = wire::HANDSHAKE_RESP;
                f[1] = wire::VERSION;
                f[6..10].copy_from_slice(&srv.0.to_be_bytes());
                f
            },
            Refusal::WrongStage,
        ),
        (
            "short cookie",
            vec![wire::COOKIE_REPLY, 1, 0],
            Refusal::Malformed,
        ),
        (
            "cookie unknown session",
            {
                let mut f = vec![0u8; wire::COOKIE_LEN];
                f[0] = wire::COOKIE_REPLY;
                f[1] = wire::VERSION;
                f
            },
            Refusal::UnknownSession,
        ),
        (
            "short transport",
            transport_for(srv.0, 1, 3),
            Refusal::Malformed,
        ),
        (
            "transport unknown",
            transport_for(12345, 1, 40),
            Refusal::UnknownSession,
        ),
        (
            "transport garbage",
            transport_for(srv.0, 77, 40),
            Refusal::BadAuth,
        ),
        (
            "transport nonce limit",
            transport_for(srv.0, u64::MAX, 40),
            Refusal::NonceLimit,
        ),
    ];
    for (name, frame, want) in cases {
        let before = sim.nodes[server].ep.counters().clone();
        sim.deliver(server, addr(ATTACKER), &frame);
        let after = sim.nodes[server].ep.counters();
        assert_eq!(
            after.refused(want),
            before.refused(want) + 1,
            "{name}: {after:?}"
        );
        assert_eq!(
            after.refused_total(),
            before.refused_total() + 1,
            "{name}: exactly one refusal"
        );
    }
    // Still serving.
    let now = sim.now;
    sim.nodes[client].ep.request(now, s, b"ok?").unwrap();
    assert!(sim.drive_until(Duration::from_secs(2), |sim| {
        sim.count(client, |e| matches!(e, Event::Response { .. })) == 1
    }));
}

/// mac1 as an attacker computes it (it knows the responder's public key): the scheme's public
/// definition, re-derived here so the test does not depend on crate internals.
fn voxmesh_mac1(key: &NodeKey, msg: &[u8]) -> [u8; 16] {
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"voxmesh/v1/mac1\0");
    h.update(key.noise);
    let k: [u8; 32] = h.finalize().into();
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&k).unwrap();
    m.update(msg);
    m.finalize().into_bytes()[..16].try_into().unwrap()
}

#[test]
fn tables_are_bounded() {
    let cfg = Config {
        max_sessions: 3,
        max_pending_handshakes: 2,
        ..Config::default()
    };
    let (mut sim, server) = server_sim(32, cfg);
    let key = sim.nodes[server].ep.node_key();
    for i in 0..4u32 {
        let f = initiation_frame(&identity(50 + i as u8), &key, i + 1);
        sim.deliver(server, format!("192.0.2.{}:1", i + 1).parse().unwrap(), &f);
    }
    let c = sim.nodes[server].ep.counters();
    assert_eq!(c.handshakes_answered, 2);
    assert_eq!(c.refused(Refusal::PendingFull), 2);
    assert_eq!(sim.nodes[server].ep.pending_count(), 2);
    sim.run_for(Duration::from_secs(21));
    // Pending ones expired; now fill the session table with real clients.
    let mut clients = Vec::new();
    for i in 0..4u8 {
        let c = sim.add(
            Config::client(),
            &identity(60 + i),
            &format!("203.0.113.{}:5000", i + 1),
        );
        let now = sim.now;
        sim.nodes[c].ep.connect(now, addr(SERVER), &key).unwrap();
        clients.push(c);
        sim.run_for(Duration::from_millis(200));
    }
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.nodes[server].ep.session_count(), 3);
    assert!(
        sim.nodes[server]
            .ep
            .counters()
            .refused(Refusal::SessionsFull)
            >= 1
    );
}

#[test]
fn a_client_refuses_initiations() {
    let mut sim = Sim::new(33);
    let client = sim.add(Config::client(), &identity(2), CLIENT);
    let key = sim.nodes[client].ep.node_key();
    let f = initiation_frame(&identity(3), &key, 1);
    sim.deliver(client, addr(ATTACKER), &f);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        sim.nodes[client]
            .ep
            .counters()
            .refused(Refusal::NotAccepting),
        1
    );
    assert!(sim.world.sink.is_empty(), "no answer at all");
}

#[test]
fn pure_responder_crypto_does_the_handshake_work() {
    let server = identity(1);
    let crypto = ResponderCrypto::new(&server);
    let init = initiation_frame(&identity(2), &server.node_key(), 9);
    let mut out = [0u8; wire::NOISE2_LEN];
    assert_eq!(crypto.respond(&init, &mut out), Ok(identity(2).id()));
    let wrong = initiation_frame(&identity(2), &identity(3).node_key(), 9);
    assert_eq!(
        crypto.respond(&wrong, &mut out),
        Err(HandshakeCryptoError::BadMac1)
    );
    assert_eq!(
        crypto.respond(&init[..10], &mut out),
        Err(HandshakeCryptoError::Malformed)
    );
}

/// The epoch and counter in a captured transport frame's header.
fn epoch_and_counter(frame: &[u8]) -> (u16, u64) {
    wire::split_nonce_field(u64::from_be_bytes(frame[5..13].try_into().unwrap()))
}

/// Frames reordered around a key change, lost epochs, replays across epochs, erased keys and
/// forged epochs, on captured frames delivered by hand: the sender (rekeying every 10 frames)
/// sealed 40 messages in epochs 0 to 4; the receiver sees them out of order.
#[test]
fn rekey_reordering_replays_and_erased_keys() {
    use voxmesh::session::KeyEpochs;
    let overlap = Duration::from_millis(500);
    let cfg = Config {
        rekey_messages: 10,
        rekey_overlap: overlap,
        ..Config::default()
    };
    let (mut sim, server) = server_sim(32, cfg.clone());
    let client = sim.add(
        Config {
            accept: false,
            ..cfg
        },
        &identity(2),
        CLIENT,
    );
    let s = sim.connect(client, server);
    sim.run_for(Duration::from_millis(100));
    let srv = sim.connected_sessions(server)[0];
    // Capture the client's next frames instead of delivering them.
    sim.cut(addr(CLIENT), addr(SERVER));
    sim.world.record = true;
    sim.world.sent.clear();
    for i in 0..40u32 {
        let now = sim.now;
        sim.nodes[client].ep.send(now, s, &i.to_be_bytes()).unwrap();
        sim.drain(client);
    }
    let frames: Vec<Vec<u8>> = sim
        .world
        .sent
        .iter()
        .filter(|p| p.src == addr(CLIENT))
        .map(|p| p.data.clone())
        .collect();
    assert_eq!(frames.len(), 40);
    // By epoch: the confirmation ping was frame 0 of epoch 0, so epoch 0 holds counters 1..=9
    // here, epochs 1 to 3 ten frames each, epoch 4 the last one. The header says so.
    let of_epoch = |e: u16| -> Vec<Vec<u8>> {
        frames
            .iter()
            .filter(|f| epoch_and_counter(f).0 == e)
            .cloned()
            .collect()
    };
    let sizes: Vec<usize> = (0..=4).map(|e| of_epoch(e).len()).collect();
    assert_eq!(sizes, vec![9, 10, 10, 10, 1]);
    let counters: Vec<u64> = frames.iter().map(|f| epoch_and_counter(f).1).collect();
    assert_eq!(
        counters,
        (1..=40).collect::<Vec<u64>>(),
        "the counter runs on across epochs"
    );
    let (e0, e1, e2, e3, e4) = (
        of_epoch(0),
        of_epoch(1),
        of_epoch(2),
        of_epoch(3),
        of_epoch(4),
    );
    let refused = |sim: &Sim, r| sim.nodes[server].ep.counters().refused(r);
    let messages = |sim: &Sim| sim.count(server, |e| matches!(e, Event::Message { .. }));
    let epochs = |sim: &Sim| sim.nodes[server].ep.key_epochs(srv).unwrap();
    let deliver = |sim: &mut Sim, f: &[u8]| sim.deliver(server, addr(CLIENT), f);

    // The first frame of epoch 1 overtakes the end of epoch 0: the receiver moves to epoch 1
    // and still opens epoch 0's late frames (one of which is lost for now).
    deliver(&mut sim, &e1[0]);
    assert_eq!(
        epochs(&sim),
        KeyEpochs {
            send: 0,
            recv: 1,
            previous: Some(0)
        }
    );
    for (i, f) in e0.iter().enumerate().rev() {
        if i != 4 {
            deliver(&mut sim, f);
        }
    }
    assert_eq!(messages(&sim), 9);
    // Replays in either epoch are refused: one window covers both.
    deliver(&mut sim, &e1[0]);
    deliver(&mut sim, &e0[2]);
    assert_eq!(refused(&sim, Refusal::Replayed), 2);
    assert_eq!(messages(&sim), 9);

    // The overlap ends with no traffic at all: the timer erases epoch 0's key.
    sim.run_for(overlap + Duration::from_millis(1));
    assert_eq!(epochs(&sim).previous, None);
    // A frame sealed under the erased key — never delivered, inside the replay window — is
    // refused and counted, and so is a replay of one that was delivered.
    deliver(&mut sim, &e0[4]);
    deliver(&mut sim, &e0[2]);
    assert_eq!(refused(&sim, Refusal::StaleEpoch), 2);
    assert_eq!(messages(&sim), 9);

    // Epoch 2 is lost entirely (but for one frame that is late): the receiver derives two
    // epochs ahead from epoch 3's first frame, then opens the late epoch 2 frame as the
    // previous one; epoch 1's key is gone.
    for f in &e1[1..9] {
        deliver(&mut sim, f);
    }
    deliver(&mut sim, &e3[0]);
    assert_eq!(
        epochs(&sim),
        KeyEpochs {
            send: 0,
            recv: 3,
            previous: Some(2)
        }
    );
    deliver(&mut sim, &e2[5]);
    assert_eq!(messages(&sim), 9 + 8 + 1 + 1);
    deliver(&mut sim, &e1[9]);
    assert_eq!(refused(&sim, Refusal::StaleEpoch), 3);

    // Forged epochs: a real frame relabelled with the next epoch does not authenticate and does
    // not move the receiver; one beyond the skip limit is refused before any work.
    let mut relabelled = e3[1].clone();
    let (_, n) = epoch_and_counter(&relabelled);
    relabelled[5..13].copy_from_slice(&wire::nonce_field(4, n).to_be_bytes());
    deliver(&mut sim, &relabelled);
    assert_eq!(refused(&sim, Refusal::BadAuth), 1);
    assert_eq!(epochs(&sim).recv, 3);
    let mut far = e3[1].clone();
    let ahead = 3 + voxmesh::session::defaults::MAX_EPOCH_SKIP + 1;
    far[5..13].copy_from_slice(&wire::nonce_field(ahead, n).to_be_bytes());
    deliver(&mut sim, &far);
    assert_eq!(refused(&sim, Refusal::FutureEpoch), 1);
    // The genuine frame still opens, and so does the next epoch.
    deliver(&mut sim, &e3[1]);
    deliver(&mut sim, &e4[0]);
    assert_eq!(epochs(&sim).recv, 4);
    assert_eq!(messages(&sim), 21);

    // And the session carries on in both directions.
    sim.reset_links();
    let now = sim.now;
    sim.nodes[client]
        .ep
        .request(now, s, b"still here?")
        .unwrap();
    assert!(sim.drive_until(Duration::from_secs(5), |sim| {
        sim.count(client, |e| matches!(e, Event::Response { .. })) == 1
    }));
}
