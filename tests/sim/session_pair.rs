//! Session endpoints in a deterministic in-memory network: handshakes under loss, transactions,
//! replay protection, keepalives, failure detection, roaming, standby sessions.

use crate::support::session as session_support;

use std::time::Duration;

use session_support::*;
use voxlab::netem::Spec;
use voxmesh::session::{
    CloseReason, Config, Event, HandshakeError, Refusal, SendError, TransactionError,
};

const SERVER: &str = "198.51.100.1:7000";
const SERVER2: &str = "198.51.100.2:7000";
const CLIENT: &str = "203.0.113.5:40000";

fn pair(seed: u64) -> (Sim, usize, usize) {
    let mut sim = Sim::new(seed);
    let server = sim.add(Config::default(), &identity(1), SERVER);
    let client = sim.add(Config::client(), &identity(2), CLIENT);
    sim.nodes[server].auto_answer = Some(echo);
    (sim, client, server)
}

#[test]
fn handshake_and_request_round_trip() {
    let (mut sim, client, server) = pair(1);
    let s = sim.connect(client, server);
    // One round trip of 40 ms.
    assert!(
        sim.elapsed() <= Duration::from_millis(45),
        "{:?}",
        sim.elapsed()
    );
    let peer = sim.nodes[client].ep.peer(s).unwrap().clone();
    assert_eq!(peer.id, identity(1).id());
    let now = sim.now;
    sim.nodes[client].ep.request(now, s, b"hello").unwrap();
    assert!(sim.drive_until(Duration::from_secs(5), |sim| {
        !sim.responses(client).is_empty()
    }));
    assert_eq!(sim.responses(client), vec![b"re:hello".to_vec()]);
    // The server learned who the client is from the handshake.
    let srv = sim.connected_sessions(server);
    assert_eq!(srv.len(), 1);
    assert_eq!(
        sim.nodes[server].ep.peer(srv[0]).unwrap().id,
        identity(2).id()
    );
    assert_eq!(sim.nodes[server].ep.counters().refused_total(), 0);
    assert_eq!(sim.nodes[client].ep.counters().refused_total(), 0);
    assert!(sim.nodes[client].ep.rtt(s).unwrap() >= Duration::from_millis(40));
}

#[test]
fn requests_and_messages_sent_before_the_handshake_wait_for_it() {
    let (mut sim, client, server) = pair(2);
    let key = sim.nodes[server].ep.node_key();
    let now = sim.now;
    let s = sim.nodes[client]
        .ep
        .connect(now, addr(SERVER), &key)
        .unwrap();
    sim.nodes[client].ep.request(now, s, b"early").unwrap();
    sim.nodes[client].ep.send(now, s, b"datagram").unwrap();
    assert!(sim.drive_until(Duration::from_secs(5), |sim| {
        !sim.responses(client).is_empty()
    }));
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.responses(client), vec![b"re:early".to_vec()]);
    assert_eq!(
        sim.count(
            server,
            |e| matches!(e, Event::Message { body, .. } if body == b"datagram")
        ),
        1
    );
}

/// 30 % loss each way (51 % of round trips fail), with duplication and reordering: every seed
/// completes the handshake and every request gets exactly one answer, each request reaching the
/// server application exactly once.
#[test]
fn handshake_and_transactions_survive_thirty_percent_loss() {
    let mut handshake_times = Vec::new();
    for seed in 0..25 {
        let (mut sim, client, server) = pair(100 + seed);
        sim.set_default_link(lossy(0.30));
        let s = sim.connect(client, server);
        handshake_times.push(sim.elapsed());
        let now = sim.now;
        let mut txns = Vec::new();
        for i in 0..10u8 {
            txns.push(sim.nodes[client].ep.request(now, s, &[i]).unwrap());
        }
        let done = sim.drive_until(Duration::from_secs(30), |sim| {
            sim.count(client, |e| {
                matches!(e, Event::Response { .. } | Event::TransactionFailed { .. })
            }) == 10
        });
        assert!(done, "seed {seed}");
        let failed = sim.count(client, |e| matches!(e, Event::TransactionFailed { .. }));
        // 7 sends at 51 % round-trip loss: 0.9 % per request may fail.
        assert!(failed <= 1, "seed {seed}: {failed} failed");
        let got = sim.responses(client);
        let mut want: Vec<Vec<u8>> = (0..10u8)
            .map(|i| echo(&[i]))
            .filter(|b| got.contains(b))
            .collect();
        let mut got_sorted = got.clone();
        got_sorted.sort();
        want.sort();
        assert_eq!(got_sorted, want, "seed {seed}: one response per request");
        // Dedupe at the server: each request reached the application at most once.
        let reqs = sim.count(server, |e| matches!(e, Event::Request { .. }));
        assert!(reqs <= 10, "seed {seed}: {reqs} requests delivered");
        let c = sim.nodes[client].ep.counters();
        assert!(
            c.request_retransmits > 0,
            "seed {seed}: loss caused retransmissions"
        );
    }
    handshake_times.sort();
    // Most handshakes complete in the first few attempts.
    assert!(
        handshake_times[12] < Duration::from_secs(4),
        "{handshake_times:?}"
    );
}

#[test]
fn duplicate_requests_are_answered_from_the_cache() {
    let (mut sim, client, server) = pair(3);
    let s = sim.connect(client, server);
    // Answers from the server are lost for a while: the client retransmits, and the server
    // answers the duplicates from its cache without asking the application again.
    sim.cut(addr(SERVER), addr(CLIENT));
    let now = sim.now;
    sim.nodes[client].ep.request(now, s, b"once").unwrap();
    sim.run_for(Duration::from_millis(900));
    sim.reset_links();
    assert!(sim.drive_until(Duration::from_secs(10), |sim| {
        !sim.responses(client).is_empty()
    }));
    assert_eq!(sim.count(server, |e| matches!(e, Event::Request { .. })), 1);
    let c = sim.nodes[server].ep.counters();
    assert!(c.duplicate_requests >= 2, "{c:?}");
    assert!(c.cached_responses_sent >= 1, "{c:?}");
    assert_eq!(sim.responses(client), vec![b"re:once".to_vec()]);
}

#[test]
fn unanswered_request_gives_up_after_bounded_attempts() {
    let (mut sim, client, server) = pair(4);
    sim.nodes[server].auto_answer = None;
    let s = sim.connect(client, server);
    let now = sim.now;
    let txn = sim.nodes[client].ep.request(now, s, b"ignored").unwrap();
    let start = sim.now;
    assert!(sim.drive_until(Duration::from_secs(30), |sim| {
        sim.count(client, |e| matches!(e, Event::TransactionFailed { .. })) > 0
    }));
    let took = sim.now - start;
    let cfg = Config::default();
    assert!(took <= cfg.transaction_timeout, "{took:?}");
    let failed = sim.nodes[client]
        .events
        .iter()
        .find_map(|e| match e {
            Event::TransactionFailed { txn: t, error, .. } if *t == txn => Some(error.clone()),
            _ => None,
        })
        .unwrap();
    assert!(matches!(failed, TransactionError::TimedOut { attempts } if attempts >= 5));
    // The server application saw it once, however often it was sent.
    assert_eq!(sim.count(server, |e| matches!(e, Event::Request { .. })), 1);
    // A late answer is counted and ignored.
    let srv = sim.connected_sessions(server)[0];
    let req_txn = sim.nodes[server]
        .events
        .iter()
        .find_map(|e| match e {
            Event::Request { txn, .. } => Some(*txn),
            _ => None,
        })
        .unwrap();
    let now = sim.now;
    sim.nodes[server]
        .ep
        .respond(now, srv, req_txn, b"late")
        .unwrap();
    sim.run_for(Duration::from_millis(200));
    assert_eq!(sim.nodes[client].ep.counters().late_responses, 1);
    assert!(sim.responses(client).is_empty());
}

#[test]
fn request_limits() {
    let (mut sim, client, server) = pair(5);
    sim.nodes[server].auto_answer = None;
    let s = sim.connect(client, server);
    let now = sim.now;
    let max = Config::default().max_body();
    assert!(matches!(
        sim.nodes[client].ep.request(now, s, &vec![0; max + 1]),
        Err(SendError::TooLarge { .. })
    ));
    sim.nodes[client].ep.request(now, s, &vec![0; max]).unwrap();
    for _ in 1..Config::default().max_in_flight {
        sim.nodes[client].ep.request(now, s, b"x").unwrap();
    }
    assert_eq!(
        sim.nodes[client].ep.request(now, s, b"x"),
        Err(SendError::TooManyInFlight)
    );
    sim.run_for(Duration::from_millis(100));
    // Every frame fits the configured datagram size.
    assert!(sim.nodes[server].ep.counters().refused(Refusal::Oversized) == 0);
    assert_eq!(
        sim.count(server, |e| matches!(e, Event::Request { .. })),
        Config::default().max_unanswered
    );
}

#[test]
fn keepalives_hold_an_idle_session() {
    let (mut sim, client, server) = pair(6);
    let s = sim.connect(client, server);
    let pings0 = sim.nodes[client].ep.counters().pings_sent;
    sim.run_for(Duration::from_secs(300));
    let pings = sim.nodes[client].ep.counters().pings_sent - pings0;
    // One every 20 s.
    assert!((14..=16).contains(&pings), "{pings}");
    assert!(sim.nodes[client].ep.is_established(s));
    assert_eq!(sim.count(client, |e| matches!(e, Event::Closed { .. })), 0);
    assert_eq!(sim.count(server, |e| matches!(e, Event::Closed { .. })), 0);
    // The client's outbound traffic never paused longer than the keepalive interval (what holds
    // a NAT binding): checked through the server's idle timer, which never fired.
    assert_eq!(sim.nodes[server].ep.session_count(), 1);
}

#[test]
fn lost_peer_is_detected_by_both_sides() {
    let (mut sim, client, server) = pair(7);
    let s = sim.connect(client, server);
    sim.cut_between(client, server);
    let start = sim.now;
    assert!(sim.drive_until(Duration::from_secs(60), |sim| {
        sim.count(client, |e| matches!(e, Event::Closed { .. })) > 0
    }));
    let took = sim.now - start;
    // The keepalive interval, then a few RTO-paced pings.
    assert!(took < Duration::from_secs(20 + 4), "{took:?}");
    assert!(sim.nodes[client].events.iter().any(|e| matches!(
        e,
        Event::Closed {
            session,
            peer: Some(_),
            reason: CloseReason::PeerUnresponsive
        } if *session == s
    )));
    assert!(sim.drive_until(Duration::from_secs(120), |sim| {
        sim.count(server, |e| matches!(e, Event::Closed { .. })) > 0
    }));
    assert!(sim.nodes[server].events.iter().any(|e| matches!(
        e,
        Event::Closed {
            reason: CloseReason::IdleTimeout,
            ..
        }
    )));
    assert_eq!(sim.nodes[server].ep.session_count(), 0);
    assert_eq!(sim.nodes[client].ep.session_count(), 0);
}

#[test]
fn a_request_fails_fast_when_the_supernode_dies_and_the_standby_takes_over() {
    let mut sim = Sim::new(8);
    let primary = sim.add(Config::default(), &identity(1), SERVER);
    let standby = sim.add(Config::default(), &identity(3), SERVER2);
    let client = sim.add(Config::client(), &identity(2), CLIENT);
    sim.nodes[primary].auto_answer = Some(echo);
    sim.nodes[standby].auto_answer = Some(echo);
    let a = sim.connect(client, primary);
    let b = sim.connect(client, standby);
    sim.run_for(Duration::from_secs(30));
    // The primary dies.
    sim.cut_between(client, primary);
    let now = sim.now;
    sim.nodes[client].ep.request(now, a, b"register").unwrap();
    let start = sim.now;
    assert!(sim.drive_until(Duration::from_secs(30), |sim| {
        sim.count(client, |e| matches!(e, Event::TransactionFailed { .. })) > 0
    }));
    let lost = sim.now - start;
    // Seconds (RTT-derived retransmissions), not a keepalive period.
    assert!(lost <= Config::default().transaction_timeout, "{lost:?}");
    let now = sim.now;
    sim.nodes[client].ep.request(now, b, b"register").unwrap();
    assert!(sim.drive_until(Duration::from_secs(2), |sim| {
        !sim.responses(client).is_empty()
    }));
    let total = sim.now - start;
    assert!(total < Duration::from_secs(6), "{total:?}");
}

#[test]
fn close_is_reported_to_the_peer() {
    let (mut sim, client, server) = pair(9);
    let s = sim.connect(client, server);
    sim.run_for(Duration::from_millis(100));
    let now = sim.now;
    sim.nodes[client].ep.close(now, s);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.nodes[client].ep.session_count(), 0);
    assert!(sim.nodes[server].events.iter().any(|e| matches!(
        e,
        Event::Closed {
            reason: CloseReason::ClosedByPeer,
            ..
        }
    )));
    assert_eq!(sim.nodes[server].ep.session_count(), 0);
    let now = sim.now;
    assert_eq!(
        sim.nodes[client].ep.request(now, s, b"x"),
        Err(SendError::UnknownSession)
    );
}

#[test]
fn session_follows_a_nat_rebinding() {
    let (mut sim, client, server) = pair(10);
    let s = sim.connect(client, server);
    sim.run_for(Duration::from_millis(100));
    // The client's NAT maps it to a new port.
    sim.nodes[client].addr = addr("203.0.113.5:40999");
    let now = sim.now;
    sim.nodes[client].ep.request(now, s, b"after").unwrap();
    assert!(sim.drive_until(Duration::from_secs(5), |sim| {
        !sim.responses(client).is_empty()
    }));
    assert_eq!(sim.nodes[server].ep.counters().address_changes, 1);
    let srv = sim.connected_sessions(server)[0];
    assert_eq!(
        sim.nodes[server].ep.peer(srv).unwrap().addr,
        addr("203.0.113.5:40999")
    );
}

#[test]
fn nonce_exhaustion_closes_the_session_instead_of_reusing_a_nonce() {
    let mut sim = Sim::new(11);
    let cfg = Config {
        nonce_limit: 6,
        ..Config::default()
    };
    let server = sim.add(cfg.clone(), &identity(1), SERVER);
    let client = sim.add(
        Config {
            accept: false,
            ..cfg
        },
        &identity(2),
        CLIENT,
    );
    sim.nodes[server].auto_answer = Some(echo);
    let s = sim.connect(client, server);
    for i in 0..10u8 {
        let now = sim.now;
        let _ = sim.nodes[client].ep.send(now, s, &[i]);
        sim.run_for(Duration::from_millis(10));
    }
    assert!(sim.nodes[client].events.iter().any(|e| matches!(
        e,
        Event::Closed {
            session,
            peer: Some(_),
            reason: CloseReason::NonceExhausted
        } if *session == s
    )));
    // The confirmation ping used nonce 0; messages 1..=5 arrived; nothing beyond the limit.
    assert_eq!(sim.count(server, |e| matches!(e, Event::Message { .. })), 5);
}

#[test]
fn handshake_timer_follows_the_documented_schedule() {
    let mut sim = Sim::new(12);
    let client = sim.add(Config::client(), &identity(2), CLIENT);
    sim.world.record = true;
    let key = identity(1).node_key();
    let now = sim.now;
    let s = sim.nodes[client]
        .ep
        .connect(now, addr(SERVER), &key)
        .unwrap();
    sim.run_for(Duration::from_secs(25));
    assert_eq!(sim.world.sent.len(), 12, "12 sends in 20 s");
    assert!(sim.nodes[client].events.contains(&Event::HandshakeFailed {
        session: s,
        error: HandshakeError::TimedOut { attempts: 12 }
    }));
    // All 12 were the same initiation (so a responder can answer duplicates from its cache).
    assert!(sim.world.sent.windows(2).all(|w| w[0].data == w[1].data));
}

#[test]
fn both_sides_measure_the_round_trip() {
    let (mut sim, client, server) = pair(13);
    let s = sim.connect(client, server);
    sim.run_for(Duration::from_millis(100));
    let srv = sim.connected_sessions(server)[0];
    let (c, r) = (
        sim.nodes[client].ep.rtt(s).unwrap(),
        sim.nodes[server].ep.rtt(srv).unwrap(),
    );
    // 20 ms each way.
    assert_eq!(c, Duration::from_millis(40));
    assert_eq!(r, Duration::from_millis(40));
}

/// Keys change often here (every 2 s, or 64 frames) so that a minute crosses about 30 epochs
/// each way; the overlap is 500 ms, far beyond the link's 80 ms of reordering.
fn rekeying(accept: bool) -> Config {
    Config {
        accept,
        rekey_interval: Duration::from_secs(2),
        rekey_messages: 64,
        rekey_overlap: Duration::from_millis(500),
        ..Config::default()
    }
}

/// A minute of traffic both ways (messages every 50 ms each way, a request every 250 ms) over
/// a path with 10 % loss, duplicates and 30 % of frames reordered by up to 80 ms: both sides
/// move through about 30 send epochs and follow the other's, every request is answered, every
/// second of traffic arrives in both directions, no frame fails to authenticate or arrives
/// under an erased key, and no duplicate is delivered twice (the replay window holds across
/// epochs).
#[test]
fn traffic_continues_across_rekeys_in_both_directions_under_loss_and_reordering() {
    let mut sim = Sim::new(41);
    let server = sim.add(rekeying(true), &identity(1), SERVER);
    let client = sim.add(rekeying(false), &identity(2), CLIENT);
    sim.nodes[server].auto_answer = Some(echo);
    // 30 % of the datagrams overtake the others, which get up to 80 ms of jitter.
    sim.set_default_link(Spec {
        loss: 0.10,
        duplicate: 0.05,
        reorder: 0.30,
        jitter: Duration::from_millis(80),
        ..clean()
    });
    let s = sim.connect(client, server);
    sim.run_for(Duration::from_millis(100));
    let srv = sim.connected_sessions(server)[0];
    const TICKS: u32 = 1200; // 50 ms each: one minute
    let mut requests = 0;
    for tick in 0..TICKS {
        let now = sim.now;
        let body = tick.to_be_bytes();
        sim.nodes[client].ep.send(now, s, &body).unwrap();
        sim.nodes[server].ep.send(now, srv, &body).unwrap();
        if tick % 5 == 0 {
            sim.nodes[client].ep.request(now, s, &body).unwrap();
            requests += 1;
        }
        sim.run_for(Duration::from_millis(50));
    }
    // Let the last requests finish (their retransmissions end within the transaction timeout).
    let done = sim.drive_until(Duration::from_secs(10), |sim| {
        sim.count(client, |e| {
            matches!(e, Event::Response { .. } | Event::TransactionFailed { .. })
        }) == requests
    });
    assert!(done);
    assert_eq!(
        sim.count(client, |e| matches!(e, Event::Response { .. })),
        requests,
        "every request answered"
    );
    let ticks = |node: usize| -> Vec<u32> {
        sim.nodes[node]
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Message { body, .. } => Some(u32::from_be_bytes(body[..].try_into().ok()?)),
                _ => None,
            })
            .collect()
    };
    for (node, name) in [(server, "client to server"), (client, "server to client")] {
        let mut got = ticks(node);
        let n = got.len();
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), n, "{name}: a duplicate was delivered twice");
        assert!(
            n as f64 >= 0.85 * TICKS as f64,
            "{name}: only {n} of {TICKS}"
        );
        // Every second (20 ticks) of traffic arrived: nothing stalled at any of the rekeys.
        for second in 0..TICKS / 20 {
            let arrived = got.iter().filter(|t| **t / 20 == second).count();
            assert!(arrived >= 10, "{name}: second {second}: {arrived} of 20");
        }
    }
    let (ce, se) = (
        sim.nodes[client].ep.key_epochs(s).unwrap(),
        sim.nodes[server].ep.key_epochs(srv).unwrap(),
    );
    assert!(ce.send >= 25 && se.send >= 25, "{ce:?} {se:?}");
    // Each side has followed the other's latest epoch (or is one behind, if the newest frames
    // are still in flight or lost).
    assert!(
        se.send - ce.recv <= 1 && ce.send - se.recv <= 1,
        "{ce:?} {se:?}"
    );
    for node in [client, server] {
        let c = sim.nodes[node].ep.counters();
        assert!(c.rekeys >= 25 && c.peer_rekeys >= 25, "{c:?}");
        for r in [Refusal::BadAuth, Refusal::StaleEpoch, Refusal::FutureEpoch] {
            assert_eq!(c.refused(r), 0, "{r:?}: {c:?}");
        }
        // Duplicates happened, and were refused as replays, in every epoch alike.
        assert!(c.refused(Refusal::Replayed) > 0, "{c:?}");
    }
    assert!(sim.nodes[client].ep.is_established(s));
}

/// An idle session rekeys too: its keepalive (every 20 s) is the first frame after each
/// interval, so each ping and pong goes out under a new key.
#[test]
fn an_idle_session_rekeys_at_its_keepalives() {
    let mut sim = Sim::new(42);
    let server = sim.add(rekeying(true), &identity(1), SERVER);
    let client = sim.add(rekeying(false), &identity(2), CLIENT);
    let s = sim.connect(client, server);
    // 10 s past the 10th keepalive, so its pong is back.
    sim.run_for(Duration::from_secs(210));
    let srv = sim.connected_sessions(server)[0];
    let (ce, se) = (
        sim.nodes[client].ep.key_epochs(s).unwrap(),
        sim.nodes[server].ep.key_epochs(srv).unwrap(),
    );
    // 10 keepalive rounds (every 20 s), each one epoch on each side.
    assert_eq!((ce.send, se.send), (10, 10), "{ce:?} {se:?}");
    assert_eq!((se.recv, ce.recv), (ce.send, se.send), "{ce:?} {se:?}");
    // The overlap ended long ago: only the current receive key is held.
    assert_eq!((ce.previous, se.previous), (None, None));
    assert_eq!(sim.nodes[server].ep.counters().refused_total(), 0);
}
