//! Supernodes and clients (agents) in one process on a simulated network and clock: the mesh
//! forms, clients register, look each other up, watch presence, route messages, claim names,
//! and fail over when supernodes die. Deterministic except for key generation.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::mesh::{self as mesh_support, LATENCY, UNIX0, World};
use voxmesh::client::{AgentConfig, AgentEvent};
use voxmesh::identity::{NodeKey, UserId};
use voxmesh::session;
use voxmesh::signal::{Pager, PagerStep, Request, Response, Target};

/// The shared mesh world (`tests/support/mesh.rs`), with every client answering a delivery with
/// "re:" + payload.
fn mesh(n: usize) -> (World, Vec<(NodeKey, SocketAddr)>) {
    let (mut w, sns) = mesh_support::mesh(n);
    w.reply_to_deliveries = true;
    (w, sns)
}

/// A client with its own configuration and a fresh identity.
fn add_client_with(w: &mut World, cfg: AgentConfig) -> usize {
    let id = w.fresh_identity();
    w.add_client_config(id, cfg)
}

/// Runs in steps of 50 ms until `cond` holds (returning how long that took), for at most
/// `limit`; after every step, checks that client `c` is never stranded (registered, or
/// connecting, or with a retry scheduled).
fn run_recovering(
    w: &mut World,
    c: usize,
    limit: Duration,
    mut cond: impl FnMut(&mut World) -> bool,
) -> Option<Duration> {
    let step = Duration::from_millis(50);
    let t0 = w.now;
    while w.now - t0 < limit {
        w.run(step);
        assert!(w.agent(c).is_recovering(), "client {c} stranded");
        if cond(w) {
            return Some(w.now - t0);
        }
    }
    None
}

fn lookup(
    w: &mut World,
    client: usize,
    user: UserId,
) -> Result<Option<voxmesh::signal::Entry>, String> {
    let now = w.now;
    w.agent(client).lookup(now, Target::Id(user));
    w.run(Duration::from_millis(500));
    w.take_events(client)
        .into_iter()
        .find_map(|e| match e {
            AgentEvent::Lookup {
                target: Target::Id(u),
                result,
            } if u == user => Some(result),
            _ => None,
        })
        .unwrap_or_else(|| Err("no lookup answer".into()))
}

#[test]
fn clients_register_look_up_and_route() {
    let (mut w, sns) = mesh(5);
    let clients: Vec<usize> = (0..30)
        .map(|i| {
            let mut list = sns.clone();
            list.rotate_left(i % 5);
            w.add_client(list, true)
        })
        .collect();
    w.run(Duration::from_secs(3));
    let ids: Vec<UserId> = clients.iter().map(|c| w.agent(*c).id()).collect();
    for c in &clients {
        assert!(w.agent(*c).is_registered(), "client {c} registered");
        assert!(
            w.agent(*c).standby_node().is_some(),
            "client {c} has a standby"
        );
    }
    // Every record sits on exactly 3 homes.
    for id in &ids {
        let copies = (0..5)
            .filter(|s| w.sn(*s).homed_users().contains(id))
            .count();
        assert_eq!(copies, 3, "replicas of {id}");
    }
    // Lookups of everyone from one client.
    for (k, id) in ids.iter().enumerate() {
        let e = lookup(&mut w, clients[0], *id)
            .unwrap()
            .unwrap_or_else(|| panic!("{k} not found"));
        assert!(e.online && !e.stale);
        assert_eq!(Some(e.via), w.agent(clients[k]).primary().map(|p| p.0));
    }
    // Routing with acknowledgement.
    let now = w.now;
    w.agent(clients[1]).route(now, ids[2], b"INVITE".to_vec());
    w.run(Duration::from_millis(500));
    let ev1 = w.take_events(clients[1]);
    // Acknowledged end to end, with the recipient's reply riding the acknowledgement.
    assert!(
        ev1.iter().any(
            |e| matches!(e, AgentEvent::Routed { to, result: Ok(Some(r)), .. }
            if *to == ids[2] && r == b"re:INVITE")
        ),
        "{ev1:?}"
    );
    let ev2 = w.take_events(clients[2]);
    assert!(
        ev2.iter()
            .any(|e| matches!(e, AgentEvent::Delivered { from, payload, .. }
            if *from == ids[1] && payload == b"INVITE")),
        "{ev2:?}"
    );
    // An unknown user: a clear failure.
    let stranger = UserId([9; 20]);
    w.agent(clients[1]).route(now, stranger, b"x".to_vec());
    w.run(Duration::from_millis(500));
    let ev = w.take_events(clients[1]);
    assert!(
        matches!(ev.as_slice(), [AgentEvent::Routed { result: Err(e), .. }] if e.starts_with("404")),
        "{ev:?}"
    );
    assert_eq!(lookup(&mut w, clients[1], stranger), Ok(None));
}

/// Steps client `c`'s world 1 ms at a time until its `Routed` outcome (at most `limit`):
/// when it registered and when the outcome came (both since the start), and whether it was
/// delivered.
fn until_routed(
    w: &mut World,
    c: usize,
    limit: Duration,
) -> (Option<Duration>, Option<(Duration, bool)>) {
    let t0 = w.now;
    let mut reg = None;
    while w.now - t0 < limit {
        w.run(Duration::from_millis(1));
        for e in w.take_events(c) {
            match e {
                AgentEvent::Registered { .. } if reg.is_none() => reg = Some(w.now - t0),
                AgentEvent::Routed { result, .. } => {
                    return (reg, Some((w.now - t0, result.is_ok())));
                }
                _ => {}
            }
        }
    }
    (reg, None)
}

/// A fresh client's routed message (a fresh `dial`'s invite) goes out in the same flight as its
/// registration, right after the session handshake, instead of a round trip later; one that
/// overtakes a lost registration is refused by the supernode and sent again once registered.
#[test]
fn a_fresh_clients_routed_message_rides_behind_its_registration() {
    let (mut w, sns) = mesh(3);
    let b = w.add_client(sns.clone(), true);
    w.run(Duration::from_secs(2));
    let to = w.agent(b).id();
    // How long a registered client's routed message takes, end to end.
    let a0 = w.add_client(sns.clone(), true);
    w.run(Duration::from_secs(2));
    assert!(w.agent(a0).is_registered());
    w.take_events(a0);
    let now = w.now;
    w.agent(a0).route(now, to, b"INVITE".to_vec());
    let (_, routed) = until_routed(&mut w, a0, Duration::from_secs(2));
    let (chain, ok) = routed.expect("routed");
    assert!(ok);

    // A fresh client routes at once: the outcome comes less than one such chain after its
    // registration is confirmed (sent after it, it would take the whole chain again), i.e.
    // the two requests shared the flight. LATENCY is 2 ms each way: the saving is 4 ms.
    let a = w.add_client(sns.clone(), true);
    let now = w.now;
    w.agent(a).route(now, to, b"INVITE".to_vec());
    let (reg, routed) = until_routed(&mut w, a, Duration::from_secs(2));
    let (reg, (t, ok)) = (reg.expect("registered"), routed.expect("routed"));
    assert!(ok, "delivered");
    assert!(
        t < reg + chain - 2 * LATENCY + Duration::from_millis(1),
        "registered at {reg:?}, routed at {t:?}: the chain alone takes {chain:?}"
    );

    // The registration is lost (the first datagram after the handshake, which takes one round
    // trip: 2 x LATENCY), the routed message overtakes it: refused, sent again, delivered.
    let c = w.add_client(sns.clone(), true);
    let now = w.now;
    w.agent(c).route(now, to, b"INVITE".to_vec());
    w.run(LATENCY + LATENCY / 2);
    let dropped = w.dropped();
    w.lose_next(c, 0, 1);
    let (reg, routed) = until_routed(&mut w, c, Duration::from_secs(5));
    assert_eq!(w.dropped(), dropped + 1, "the registration was lost");
    assert!(reg.is_some(), "registered after all");
    let (_, ok) = routed.expect("routed");
    assert!(ok, "delivered after the registration");
}

#[test]
fn presence_reaches_watchers() {
    let (mut w, sns) = mesh(5);
    let a = w.add_client(sns.clone(), true);
    let mut rot = sns.clone();
    rot.rotate_left(2);
    let b = w.add_client(rot, true);
    w.run(Duration::from_secs(2));
    let b_id = w.agent(b).id();
    let now = w.now;
    w.agent(a).watch(now, b_id);
    w.run(Duration::from_secs(1));
    w.take_events(a);
    // B vanishes without a word: its supernode notices at the session idle timeout.
    w.kill(b);
    w.run(Duration::from_secs(12));
    let ev = w.take_events(a);
    assert!(
        ev.iter().any(
            |e| matches!(e, AgentEvent::Presence { user, online: false, .. } if *user == b_id)
        ),
        "A hears B go offline: {ev:?}"
    );
    let e = lookup(&mut w, a, b_id).unwrap().unwrap();
    assert!(!e.online);
}

#[test]
fn killing_supernodes_down_to_two_keeps_everyone_reachable() {
    let (mut w, sns) = mesh(5);
    let clients: Vec<usize> = (0..25)
        .map(|i| {
            let mut list = sns.clone();
            list.rotate_left(i % 5);
            w.add_client(list, true)
        })
        .collect();
    w.run(Duration::from_secs(3));
    let ids: Vec<UserId> = clients.iter().map(|c| w.agent(*c).id()).collect();
    let mut alive: Vec<usize> = (0..5).collect();
    let mut gone_clients: Vec<usize> = Vec::new();
    for victim in [0usize, 3, 1] {
        // Clients registered through the victim.
        let victim_id = w.sn(victim).id();
        let orphans: Vec<usize> = clients
            .iter()
            .copied()
            .filter(|c| {
                !gone_clients.contains(c) && w.agent(*c).primary().map(|p| p.0) == Some(victim_id)
            })
            .collect();
        assert!(!orphans.is_empty(), "the victim had clients");
        // One orphan dies with its supernode and never registers again: it stands for the gap
        // before re-registration, which the others close within seconds.
        let lost = orphans[0];
        gone_clients.push(lost);
        w.kill(victim);
        w.kill(lost);
        alive.retain(|s| *s != victim);
        // Within 10 s everyone else is registered again, through a live supernode.
        w.run(Duration::from_secs(10));
        for c in clients.iter().filter(|c| !gone_clients.contains(c)) {
            assert!(
                w.agent(*c).is_registered(),
                "client {c} registered again after killing {victim}"
            );
            assert_ne!(w.agent(*c).primary().map(|p| p.0), Some(victim_id));
        }
        // Every record on min(3, live) homes; every lookup succeeds; the lost client's entry is
        // the last known one, marked stale, not "unknown".
        for id in &ids {
            let copies = alive
                .iter()
                .filter(|s| w.sn(**s).homed_users().contains(id))
                .count();
            assert_eq!(
                copies,
                alive.len().min(3),
                "replicas of {id} with {} alive",
                alive.len()
            );
        }
        let asker = *clients.iter().find(|c| !gone_clients.contains(c)).unwrap();
        for (k, id) in ids.iter().enumerate() {
            let e = lookup(&mut w, asker, *id).unwrap().expect("found");
            if gone_clients.contains(&clients[k]) {
                assert!(e.stale, "the lost client's entry is marked stale");
            } else {
                assert!(e.online && !e.stale, "fresh entry after re-registration");
            }
        }
    }
}

#[test]
fn two_simultaneous_claims_one_winner() {
    let (mut w, sns) = mesh(5);
    let a = w.add_client(sns.clone(), true);
    let mut rot = sns.clone();
    rot.rotate_left(3);
    let b = w.add_client(rot, true);
    w.run(Duration::from_secs(2));
    let now = w.now;
    w.agent(a).claim(now, "alice").unwrap();
    w.agent(b).claim(now, "alice").unwrap();
    w.run(Duration::from_secs(1));
    let ea = w.take_events(a);
    let eb = w.take_events(b);
    let won_a = ea.iter().any(|e| matches!(e, AgentEvent::Claimed { .. }));
    let won_b = eb.iter().any(|e| matches!(e, AgentEvent::Claimed { .. }));
    assert!(won_a ^ won_b, "exactly one wins: {ea:?} {eb:?}");
    let winner = if won_a {
        w.agent(a).id()
    } else {
        w.agent(b).id()
    };
    // Everyone resolves the name to the winner.
    let now = w.now;
    w.agent(b).lookup(now, Target::Name("alice".into()));
    w.run(Duration::from_millis(500));
    let ev = w.take_events(b);
    let found = ev.iter().find_map(|e| match e {
        AgentEvent::Lookup {
            result: Ok(Some(entry)),
            ..
        } => Some(entry.clone()),
        _ => None,
    });
    let entry = found.expect("name resolves");
    assert_eq!(entry.name.as_deref(), Some("alice"));
    let rec = voxmesh::identity::verify_record::<voxmesh::signal::Registration>(
        &entry.record,
        &voxmesh::identity::Check::at(voxmesh::identity::Timestamp(UNIX0)),
    )
    .unwrap();
    assert_eq!(rec.id, winner);
}

// ---------------------------------------------------------------------------------- failover
//
// Each test gives the client session timers far longer than the test runs (keepalives, refresh,
// idle timeout), so that only the path under test can explain what the client does: a notice
// from a supernode, or a failed request. The supernodes' SWIM declares a dead member down within
// about `probe_period + suspect_to_down` (1 s + 3 s by default); waits are that plus margins.

/// How long the mesh may take to declare a dead supernode down and a notice to reach a client,
/// with margin: SWIM's probe period and suspicion timeout (1 s + 3 s), one probe round trip
/// more, and a few retransmissions of the notice.
const DETECT: Duration = Duration::from_secs(8);

/// A client whose own liveness checks never fire during a test.
fn patient_client(w: &mut World, sns: &[(NodeKey, SocketAddr)]) -> usize {
    let mut cfg = AgentConfig::new(sns.to_vec());
    cfg.session = session::Config {
        accept: false,
        keepalive_interval: Duration::from_secs(600),
        idle_timeout: Duration::from_secs(1800),
        ..session::Config::default()
    };
    cfg.refresh_interval = Duration::from_secs(600);
    let c = add_client_with(w, cfg);
    let t = run_recovering(w, c, Duration::from_secs(5), |w| {
        let a = w.agent(c);
        a.is_registered() && a.standby_node().is_some()
    });
    assert!(t.is_some(), "registered with a standby");
    // The standby session is up and both supernodes were told about each other.
    w.run(Duration::from_millis(200));
    c
}

#[test]
fn standby_dead_before_the_primary_is_replaced_then_the_primary_fails_over() {
    let (mut w, sns) = mesh(5);
    let c = patient_client(&mut w, &sns);
    let p = w.agent(c).primary().unwrap().0;
    let s = w.agent(c).standby_node().unwrap();
    w.kill(w.sn_index(s));
    // The primary hears from SWIM that the standby is dead and tells the client, which opens
    // another standby, not on a dead node.
    let took = run_recovering(&mut w, c, DETECT, |w| {
        w.agent(c).standby_node().is_some_and(|n| n != s)
    });
    assert!(took.is_some(), "a new standby after the old one died");
    assert!(w.agent(c).is_demoted(&s), "the dead standby is demoted");
    let s2 = w.agent(c).standby_node().unwrap();
    assert!(s2 != p && s2 != s);
    // Let the new standby learn who the primary is, then kill the primary: the new standby
    // tells the client, which registers through it.
    w.run(Duration::from_millis(500));
    w.take_events(c);
    w.kill(w.sn_index(p));
    let took = run_recovering(&mut w, c, DETECT, |w| {
        w.agent(c).primary().map(|x| x.0) == Some(s2)
    });
    assert!(took.is_some(), "registered through the new standby");
    let ev = w.take_events(c);
    assert!(
        ev.iter()
            .any(|e| matches!(e, AgentEvent::Registered { supernode, failover: true, .. } if *supernode == s2)),
        "{ev:?}"
    );
}

#[test]
fn a_failover_registration_that_fails_fails_over_again() {
    // The standby is alive for the mesh, but nothing it sends reaches the client (a one-way path
    // failure): its notice is lost and the failover registration on it gets no answer. The
    // client must not stay stuck (the old latch): it demotes the standby and registers through
    // a third supernode.
    // Keepalives never fire (so the idle standby session stays up); the refresh, every 2 s, is
    // what tells the client its primary is gone.
    let (mut w, sns) = mesh(5);
    let mut cfg = AgentConfig::new(sns.to_vec());
    cfg.session = session::Config {
        accept: false,
        keepalive_interval: Duration::from_secs(600),
        idle_timeout: Duration::from_secs(1800),
        ..session::Config::default()
    };
    cfg.refresh_interval = Duration::from_secs(2);
    let timeout = cfg.session.transaction_timeout;
    let c = add_client_with(&mut w, cfg);
    assert!(
        run_recovering(&mut w, c, Duration::from_secs(5), |w| w
            .agent(c)
            .standby_node()
            .is_some())
        .is_some()
    );
    w.run(Duration::from_millis(200));
    let p = w.agent(c).primary().unwrap().0;
    let s = w.agent(c).standby_node().unwrap();
    let si = w.sn_index(s);
    w.cut(si, c);
    w.kill(w.sn_index(p));
    // The client notices the primary's death by itself (a refresh unanswered: 2 s + the
    // transaction timeout), registers on the standby (no answer: one more transaction
    // timeout), then on a third supernode (a handshake and a registration); margin 5 s.
    let limit = Duration::from_secs(2) + timeout * 2 + Duration::from_secs(5);
    let took = run_recovering(&mut w, c, limit, |w| {
        w.agent(c).primary().is_some_and(|(n, _)| n != p && n != s)
    });
    assert!(took.is_some(), "registered through a third supernode");
    assert!(
        w.agent(c).is_demoted(&s),
        "the unanswering standby is demoted"
    );
    assert!(w.dropped() > 0, "the fault dropped the standby's traffic");
    let ev = w.take_events(c);
    assert!(
        ev.iter()
            .any(|e| matches!(e, AgentEvent::Error { message } if message.starts_with("registration failed"))),
        "the failed failover registration is reported: {ev:?}"
    );
}

#[test]
fn a_lost_primary_lost_notice_is_sent_again() {
    let (mut w, sns) = mesh(5);
    let c = patient_client(&mut w, &sns);
    let p = w.agent(c).primary().unwrap().0;
    let s = w.agent(c).standby_node().unwrap();
    // The standby's session is idle (it is the responder: it sends no keepalives), so the next
    // two datagrams from it to the client are its notice and the notice's first retransmission.
    w.lose_next(w.sn_index(s), c, 2);
    w.kill(w.sn_index(p));
    let took = run_recovering(&mut w, c, DETECT, |w| {
        w.agent(c).primary().map(|x| x.0) == Some(s)
    });
    assert!(
        took.is_some(),
        "registered through the standby after a retransmitted notice"
    );
    assert_eq!(w.dropped(), 2, "both lost notices were sent");
}

#[test]
fn every_standby_candidate_dead_but_one() {
    let (mut w, sns) = mesh(5);
    let c = patient_client(&mut w, &sns);
    let p = w.agent(c).primary().unwrap().0;
    // Every supernode but the primary and one other dies at once; the standby is among them.
    let s = w.agent(c).standby_node().unwrap();
    let survivor = sns
        .iter()
        .map(|(k, _)| k.id)
        .find(|id| *id != p && *id != s)
        .unwrap();
    for (k, _) in &sns {
        if k.id != p && k.id != survivor {
            w.kill(w.sn_index(k.id));
        }
    }
    // The mesh declares the three dead one by one (SWIM probes one member per period), so the
    // list the client fetches when told its standby died may still name the other two: each
    // costs one standby patience before the client demotes it and asks again.
    let patience = AgentConfig::new(Vec::new()).standby_patience;
    let limit = DETECT + patience * 2;
    let took = run_recovering(&mut w, c, limit, |w| {
        w.agent(c).standby_node() == Some(survivor)
    });
    assert!(
        took.is_some(),
        "the one live candidate becomes the standby: {:?}",
        w.take_events(c)
    );
    w.run(Duration::from_millis(500));
    w.kill(w.sn_index(p));
    let took = run_recovering(&mut w, c, DETECT, |w| {
        w.agent(c).primary().map(|x| x.0) == Some(survivor)
    });
    assert!(took.is_some(), "registered through the last live supernode");
}

/// Regression: a member list longer than one frame (about 19 supernodes) went unanswered, and a
/// client took the silence for a dead primary. Now the list arrives in pages that each fit, the
/// whole-list request is refused out loud, and the client keeps its primary.
#[test]
fn a_member_list_longer_than_a_frame_arrives_in_pages() {
    let n = 25;
    let (mut w, sns) = mesh(n);
    let c = w.add_client(vec![sns[0]], true);
    let learnt = w.run_until(Duration::from_secs(5), |w| {
        w.agent(c).is_registered() && w.agent(c).known_supernodes().len() == n
    });
    assert!(learnt, "the client learnt {} of {n} supernodes", {
        w.agent(c).known_supernodes().len()
    });
    // Three refresh periods (the list is asked again every third, by digest): no failover.
    w.run(Duration::from_secs(10));
    assert_eq!(w.agent(c).primary().map(|p| p.0), Some(sns[0].0.id));
    assert!(
        w.agent(c).standby_node().is_some(),
        "a standby from the list"
    );

    // By hand: the whole list is refused with a reason; the pages carry everyone, each fits.
    let id = w.fresh_identity();
    let raw = w.add_attacker(id, false);
    let s = w.attacker_connect(raw, &sns[1].0, sns[1].1);
    match w.ask(raw, s, &Request::CMembers) {
        Response::Error { code: 413, .. } => {}
        other => panic!("whole list: {other:?}"),
    }
    let max = session::Config::default().max_body();
    let mut pager = Pager::new(None);
    let mut req = pager.first();
    let mut pages = 0;
    let list = loop {
        pages += 1;
        assert!(pages <= n, "paging does not end");
        let body = w
            .ask_raw(raw, s, &voxmesh::signal::encode(&req))
            .expect("a page");
        assert!(body.len() <= max, "a page of {} bytes", body.len());
        let page: Response = voxmesh::signal::decode(&body).unwrap();
        match pager.on_page(page).expect("a page") {
            PagerStep::Ask(r) => req = r,
            PagerStep::Done(list, _) => break list.expect("a first fetch has a list"),
        }
    };
    assert!(pages >= 2, "25 members need more than one page");
    let mut want: Vec<UserId> = sns.iter().map(|(k, _)| k.id).collect();
    want.sort();
    let got: Vec<UserId> = list.iter().map(|m| m.key.id).collect();
    assert_eq!(got, want);
}
