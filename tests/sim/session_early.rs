//! Early data (0-RTT): requests in the handshake's first message are answered a round trip
//! sooner when the responder takes them, and go after the handshake when it does not; a
//! replayed initiation never gets its requests acted on twice.

use crate::support::session as session_support;

use std::time::Duration;

use session_support::*;
use voxmesh::session::wire;
use voxmesh::session::{Config, Event, SessionId, TransactionId};

const SERVER: &str = "198.51.100.1:7000";
const CLIENT: &str = "203.0.113.5:40000";
const ATTACKER: &str = "192.0.2.66:4444";
/// 1 Dec 2026, in unix ms: any wall clock will do, as long as both ends agree.
const WALL: u64 = 1_796_083_200_000;

/// A server answering requests with `echo`, and a client; both know the wall clock (the
/// client's `skew_ms` off) unless `None`.
fn pair(seed: u64, client_wall: Option<i64>, server_wall: bool) -> (Sim, usize, usize) {
    let mut sim = Sim::new(seed);
    sim.world.record = true;
    let server = sim.add(Config::default(), &identity(1), SERVER);
    sim.nodes[server].auto_answer = Some(echo);
    let client = sim.add(Config::client(), &identity(2), CLIENT);
    let now = sim.now;
    if server_wall {
        sim.nodes[server].ep.set_wall_clock(now, WALL);
    }
    if let Some(skew) = client_wall {
        sim.nodes[client]
            .ep
            .set_wall_clock(now, WALL.saturating_add_signed(skew));
    }
    (sim, server, client)
}

/// Connects with `bodies` as early requests; returns the session and transactions.
fn connect_early(
    sim: &mut Sim,
    client: usize,
    server: usize,
    bodies: &[&[u8]],
) -> (SessionId, Vec<TransactionId>) {
    let key = sim.nodes[server].ep.node_key();
    let to = sim.nodes[server].addr;
    let now = sim.now;
    let bodies: Vec<Vec<u8>> = bodies.iter().map(|b| b.to_vec()).collect();
    sim.nodes[client]
        .ep
        .connect_early(now, to, &key, 0, &bodies)
        .unwrap()
}

/// Time until both answers are in, with early data or without.
fn two_answers_after(sim: &mut Sim, client: usize) -> Duration {
    let t0 = sim.elapsed();
    assert!(
        sim.drive_until(Duration::from_secs(10), |sim| sim.responses(client).len()
            == 2)
    );
    sim.elapsed() - t0
}

#[test]
fn early_requests_are_answered_in_one_round_trip() {
    let (mut sim, server, client) = pair(41, Some(0), true);
    let (_, txns) = connect_early(&mut sim, client, server, &[b"register", b"invite"]);
    assert_eq!(txns.len(), 2);
    let took = two_answers_after(&mut sim, client);
    // One round trip (20 ms each way) where the handshake and then the requests took two.
    assert!(took <= 2 * LATENCY + Duration::from_millis(5), "{took:?}");
    assert_eq!(
        sim.responses(client),
        vec![b"re:register".to_vec(), b"re:invite".to_vec()]
    );
    assert_eq!(
        sim.requests(server),
        vec![b"register".to_vec(), b"invite".to_vec()]
    );
    let s = sim.nodes[server].ep.counters();
    assert_eq!((s.early_taken, s.early_declined), (1, 0));
    assert_eq!(sim.nodes[client].ep.counters().early_sent, 1);
    // The frame on the wire is the early kind, and the session works on as any other.
    assert!(sim.world.sent.iter().any(|p| p.data[0] == wire::INIT_EARLY));
    let session = sim.connected_sessions(client)[0];
    let now = sim.now;
    sim.nodes[client]
        .ep
        .request(now, session, b"later")
        .unwrap();
    assert!(
        sim.drive_until(Duration::from_secs(2), |sim| sim.responses(client).len()
            == 3)
    );

    // Without early data: two round trips.
    let (mut sim, server, client) = pair(41, None, true);
    connect_early(&mut sim, client, server, &[b"register", b"invite"]);
    let took = two_answers_after(&mut sim, client);
    assert!(took >= 4 * LATENCY, "{took:?}");
    assert_eq!(sim.nodes[client].ep.counters().early_sent, 0);
}

/// A responder that cannot check freshness (no wall clock, or the initiator's clock off by
/// more than the window) declines the early data; the requests go after the handshake, each
/// handled once.
#[test]
fn declined_early_data_is_sent_after_the_handshake() {
    for (client_skew, server_wall) in [
        (Some(0), false),
        (Some(-60_000), true),
        (Some(45_000), true),
    ] {
        let (mut sim, server, client) = pair(42, client_skew, server_wall);
        connect_early(&mut sim, client, server, &[b"register", b"invite"]);
        let took = two_answers_after(&mut sim, client);
        assert!(
            took >= 4 * LATENCY,
            "{client_skew:?} {server_wall}: {took:?}"
        );
        assert_eq!(
            sim.requests(server),
            vec![b"register".to_vec(), b"invite".to_vec()]
        );
        let s = sim.nodes[server].ep.counters();
        assert_eq!(
            (s.early_taken, s.early_declined),
            (0, 1),
            "{client_skew:?} {server_wall}"
        );
    }
    // Within the window is fresh.
    let (mut sim, server, client) = pair(42, Some(20_000), true);
    connect_early(&mut sim, client, server, &[b"register"]);
    assert!(
        sim.drive_until(Duration::from_secs(2), |sim| sim.responses(client).len()
            == 1)
    );
    assert_eq!(sim.nodes[server].ep.counters().early_taken, 1);
}

/// A recorded early initiation, replayed: while its session lives, from anywhere, it gets the
/// same answer and nothing more; once its clock is stale, the early data is declined and the
/// handshake is never confirmed. The application sees each request once.
#[test]
fn a_replayed_early_initiation_is_never_acted_on_twice() {
    let (mut sim, server, client) = pair(43, Some(0), true);
    connect_early(&mut sim, client, server, &[b"pay 10"]);
    assert!(
        sim.drive_until(Duration::from_secs(2), |sim| sim.responses(client).len()
            == 1)
    );
    let init = sim.first_sent(wire::INIT_EARLY);
    sim.inject(addr(ATTACKER), addr(SERVER), init.clone());
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.nodes[server].ep.counters().handshake_duplicates, 1);
    // Past twice the window: forgotten, and the clock in it too old to pass.
    sim.run_for(Duration::from_secs(61));
    sim.inject(addr(ATTACKER), addr(SERVER), init);
    sim.run_for(Duration::from_secs(25));
    assert_eq!(sim.requests(server), vec![b"pay 10".to_vec()]);
    let s = sim.nodes[server].ep.counters();
    assert_eq!((s.early_taken, s.early_declined), (1, 1));
    assert_eq!(s.handshakes_unconfirmed, 1);
    assert_eq!(sim.connected_sessions(server).len(), 1);
}

/// Over a lossy path (the initiation, its answer or the answers lost, duplicated, reordered),
/// every early request is resolved (answered, or failed after the transaction's attempts like
/// any request), and none is handled twice: a retransmission after a slow handshake finds the
/// answer kept.
#[test]
fn early_requests_over_a_lossy_path_are_each_handled_at_most_once() {
    let mut all_answered = 0;
    for seed in 0..20 {
        let (mut sim, server, client) = pair(100 + seed, Some(0), true);
        sim.set_default_link(lossy(0.3));
        connect_early(&mut sim, client, server, &[b"a", b"b", b"c"]);
        let resolved = |sim: &Sim| {
            sim.count(client, |e| {
                matches!(e, Event::Response { .. } | Event::TransactionFailed { .. })
            })
        };
        assert!(
            sim.drive_until(Duration::from_secs(40), |sim| resolved(sim) == 3),
            "seed {seed}: {:?}",
            sim.nodes[client].events
        );
        let mut got = sim.requests(server);
        got.sort();
        got.dedup();
        assert_eq!(
            got.len(),
            sim.requests(server).len(),
            "seed {seed}: handled twice"
        );
        for a in sim.responses(client) {
            assert!(got.contains(&a[3..].to_vec()), "seed {seed}");
        }
        all_answered += usize::from(sim.responses(client).len() == 3);
    }
    assert!(all_answered >= 15, "{all_answered} of 20");
}

/// Requests beyond one datagram's room wait for the handshake, in order behind those that fit.
#[test]
fn requests_that_do_not_fit_follow_the_handshake_in_order() {
    let (mut sim, server, client) = pair(44, Some(0), true);
    let big = vec![7u8; 950];
    connect_early(&mut sim, client, server, &[b"first", &big, b"third"]);
    let init = sim.first_sent(wire::INIT_EARLY);
    assert!(init.len() <= wire::EARLY_INIT_MAX);
    assert!(
        sim.drive_until(Duration::from_secs(2), |sim| sim.responses(client).len()
            == 3)
    );
    // The server may see "third" only after the big one.
    let got = sim.requests(server);
    assert_eq!(got.len(), 3);
    let pos = |b: &[u8]| got.iter().position(|x| x == b).unwrap();
    assert!(
        pos(b"first") < pos(&big) && pos(&big) < pos(b"third"),
        "{:?}",
        got.iter().map(|g| g.len()).collect::<Vec<_>>()
    );
}
