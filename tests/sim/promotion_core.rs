//! The promotion core (`voxmesh::roles`) on a simulated clock: eligibility, hysteresis, tenure,
//! jitter, grants (no stampede), refusals, the load ramp and the need computation.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use voxmesh::roles::{
    Config, DemoteReason, Event, GrantBook, GrantConfig, Input, Need, NeedInputs, Promoter,
    Reachability, Role, need,
};

const PUBLIC: Reachability = Reachability {
    reflexive: SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::new(198, 51, 100, 7),
        4000,
    )),
    host_is_reflexive: true,
    unsolicited_probe: true,
};

fn cfg() -> Config {
    Config {
        relay_min_uptime: Duration::from_secs(60),
        supernode_min_uptime: Duration::from_secs(120),
        min_tenure: Duration::from_secs(600),
        jitter: Duration::from_secs(20),
        ..Config::default()
    }
}

fn relay_need(deficit: u32) -> Need {
    Need {
        relays_wanted: 4,
        relays_have: 4 - deficit,
        supernodes_wanted: 3,
        supernodes_have: 3,
    }
}

/// Supernodes wanted (1 of 3), and `relays` relays where there are none.
fn supernode_need(relays: u32) -> Need {
    Need {
        relays_wanted: relays,
        relays_have: 0,
        supernodes_wanted: 3,
        supernodes_have: 1,
    }
}

/// A promoter fed `reach`, plenty of uplink and CPU, and `need`.
fn promoter(t0: Instant, cfg: Config, seed: u64, reach: Reachability, need: Need) -> Promoter {
    let mut p = Promoter::new(t0, cfg, seed);
    p.handle_input(t0, Input::Reachability(reach));
    p.handle_input(t0, Input::UplinkKbps(10_000));
    p.handle_input(t0, Input::CpuHeadroom(0.9));
    p.handle_input(t0, Input::Need(need));
    p
}

/// A promoter fed a public address, plenty of uplink and CPU, and `need`.
fn eligible(t0: Instant, cfg: Config, seed: u64, need: Need) -> Promoter {
    promoter(t0, cfg, seed, PUBLIC, need)
}

/// An [`eligible`] promoter run for `secs` from `t0`, every grant it asks for given: it, the
/// clock where it stopped, and its events.
fn granted(
    t0: Instant,
    cfg: Config,
    seed: u64,
    need: Need,
    secs: u64,
) -> (Promoter, Instant, Vec<(Instant, Event)>) {
    let mut p = eligible(t0, cfg, seed, need);
    let mut now = t0;
    let ev = run(&mut p, &mut now, t0 + Duration::from_secs(secs), |_, _| {
        true
    });
    (p, now, ev)
}

/// Runs the promoter's timers up to `until`, answering grant requests with `grant`; returns
/// the events with their times.
fn run(
    p: &mut Promoter,
    now: &mut Instant,
    until: Instant,
    mut grant: impl FnMut(Instant, Role) -> bool,
) -> Vec<(Instant, Event)> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        while let Some(e) = p.poll_event() {
            out.push((*now, e));
            if let Event::RequestGrant(role) = e {
                let granted = grant(*now, role);
                p.handle_input(*now, Input::Grant { role, granted });
            }
        }
        match p.poll_timeout() {
            Some(t) if t <= until => {
                *now = t.max(*now);
                p.handle_timeout(*now);
            }
            _ => break,
        }
    }
    *now = until;
    p.handle_timeout(until);
    while let Some(e) = p.poll_event() {
        out.push((until, e));
    }
    out
}

fn kinds(ev: &[(Instant, Event)]) -> Vec<Event> {
    ev.iter().map(|(_, e)| *e).collect()
}

#[test]
fn public_eligible_client_becomes_relay_after_uptime_and_jitter() {
    let t0 = Instant::now();
    let (p, _, ev) = granted(t0, cfg(), 1, relay_need(1), 100);
    let (at, first) = ev[0];
    assert_eq!(first, Event::RequestGrant(Role::Relay));
    let waited = at - t0;
    assert!(
        waited >= Duration::from_secs(60) && waited <= Duration::from_secs(80),
        "asked after {waited:?}: uptime 60 s plus jitter up to 20 s"
    );
    assert_eq!(kinds(&ev)[1], Event::BecomeRelay);
    assert!(p.holds(Role::Relay));
    assert!(
        !p.holds(Role::Supernode),
        "supernode uptime (120 s) not reached"
    );
}

#[test]
fn reachability_decides_eligibility() {
    // (name, host is reflexive, unsolicited probe arrived, promotes)
    let cases = [
        ("public", true, true, true),
        ("behind a NAT", false, true, false),
        ("filtering firewall", true, false, false),
        ("NAT and filter", false, false, false),
    ];
    for (name, host, probe, promotes) in cases {
        let t0 = Instant::now();
        let reach = Reachability {
            host_is_reflexive: host,
            unsolicited_probe: probe,
            ..PUBLIC
        };
        let mut p = promoter(t0, cfg(), 7, reach, relay_need(2));
        let mut now = t0;
        let ev = run(&mut p, &mut now, t0 + Duration::from_secs(3600), |_, _| {
            true
        });
        assert_eq!(p.holds(Role::Relay), promotes, "{name}: {ev:?}");
        if !promotes {
            assert!(ev.is_empty(), "{name}: never even asks: {ev:?}");
        }
    }
}

#[test]
fn refusals_are_honoured() {
    let t0 = Instant::now();
    let both = supernode_need(4);
    let no_relay = Config {
        allow_relay: false,
        ..cfg()
    };
    let (p, _, ev) = granted(t0, no_relay, 3, both, 3600);
    assert!(!p.holds(Role::Relay));
    assert!(
        p.holds(Role::Supernode),
        "--no-relay leaves the supernode role"
    );
    assert!(
        !ev.iter()
            .any(|(_, e)| *e == Event::RequestGrant(Role::Relay)),
        "{ev:?}"
    );

    let no_super = Config {
        allow_supernode: false,
        ..cfg()
    };
    let (p, _, _) = granted(t0, no_super, 3, both, 3600);
    assert!(p.holds(Role::Relay));
    assert!(!p.holds(Role::Supernode));

    // A cap below the promotion threshold is a refusal in effect.
    let capped = Config {
        max_relay_kbps: Some(500),
        ..cfg()
    };
    let (p, _, _) = granted(t0, capped, 3, both, 3600);
    assert!(!p.holds(Role::Relay));
    assert_eq!(p.relay_budget_kbps(), 500);
}

#[test]
fn no_stampede_grants_give_at_most_the_deficit() {
    let t0 = Instant::now();
    let deficit = 3;
    let mut book = GrantBook::new(GrantConfig::default());
    let mut promoters: Vec<Promoter> = (0..50)
        .map(|i| eligible(t0, cfg(), 1000 + i, relay_need(deficit)))
        .collect();
    let mut have = 4 - deficit;
    let mut held = 0;
    let mut now = t0;
    // One shared clock: step every promoter to the earliest timer of all, like a simulator.
    for _ in 0..100_000 {
        let mut asked = Vec::new();
        for (i, p) in promoters.iter_mut().enumerate() {
            while let Some(e) = p.poll_event() {
                match e {
                    Event::RequestGrant(role) => asked.push((i, role)),
                    Event::BecomeRelay => held += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        for (i, role) in asked {
            let need = relay_need(4 - have);
            let granted = book.request(now, &i, role, &need);
            promoters[i].handle_input(now, Input::Grant { role, granted });
            if promoters[i].holds(role) {
                have += 1;
                book.confirmed(&i, role);
                // Everyone learns the new need.
                let n = relay_need(4 - have);
                for p in promoters.iter_mut() {
                    p.handle_input(now, Input::Need(n));
                }
            }
        }
        let next = promoters.iter().filter_map(|p| p.poll_timeout()).min();
        match next {
            Some(t) if t <= t0 + Duration::from_secs(3600) => {
                now = t.max(now);
                for p in promoters.iter_mut() {
                    if p.poll_timeout().is_some_and(|x| x <= now) {
                        p.handle_timeout(now);
                    }
                }
            }
            _ => break,
        }
    }
    for p in promoters.iter_mut() {
        while let Some(e) = p.poll_event() {
            if e == Event::BecomeRelay {
                held += 1;
            }
        }
    }
    assert_eq!(held, deficit, "exactly the deficit promoted, not 50");
    assert_eq!(
        promoters.iter().filter(|p| p.holds(Role::Relay)).count(),
        deficit as usize
    );
}

#[test]
fn hysteresis_and_tenure_prevent_oscillation() {
    let t0 = Instant::now();
    let (mut p, mut now, _) = granted(t0, cfg(), 5, relay_need(1), 90);
    assert!(p.holds(Role::Relay));
    let promoted = now;

    // Between the thresholds: held roles stay held.
    p.handle_input(now, Input::UplinkKbps(700));
    let ev = run(
        &mut p,
        &mut now,
        promoted + Duration::from_secs(3600),
        |_, _| true,
    );
    assert!(
        ev.is_empty(),
        "700 kbit/s is above the demote threshold: {ev:?}"
    );

    // Below the demote threshold: soft, so only once the tenure has passed.
    let (mut p, mut now, _) = granted(t0, cfg(), 5, relay_need(1), 90);
    let since = t0 + Duration::from_secs(60); // no earlier than the uptime
    p.handle_input(now, Input::UplinkKbps(100));
    let ev = run(&mut p, &mut now, t0 + Duration::from_secs(3600), |_, _| {
        true
    });
    let demotes: Vec<_> = ev
        .iter()
        .filter(|(_, e)| matches!(e, Event::Demote { .. }))
        .collect();
    assert_eq!(demotes.len(), 1, "{ev:?}");
    let (at, e) = demotes[0];
    assert_eq!(
        *e,
        Event::Demote {
            role: Role::Relay,
            reason: DemoteReason::Bandwidth
        }
    );
    assert!(*at >= since + cfg().min_tenure, "tenure respected");

    // And a not-yet-relay between the thresholds does not promote.
    let mut p = eligible(t0, cfg(), 5, relay_need(1));
    p.handle_input(t0, Input::UplinkKbps(700));
    let mut now = t0;
    let ev = run(&mut p, &mut now, t0 + Duration::from_secs(3600), |_, _| {
        true
    });
    assert!(ev.is_empty(), "{ev:?}");
}

#[test]
fn hard_reasons_demote_at_once() {
    let t0 = Instant::now();
    let (mut p, now, _) = granted(t0, cfg(), 9, relay_need(1), 90);
    assert!(p.holds(Role::Relay));
    p.handle_input(
        now,
        Input::Reachability(Reachability {
            unsolicited_probe: false,
            ..PUBLIC
        }),
    );
    assert_eq!(
        p.poll_event(),
        Some(Event::Demote {
            role: Role::Relay,
            reason: DemoteReason::Unreachable
        })
    );
    // Shutdown gives up every role.
    let (mut p, now, _) = granted(t0, cfg(), 9, relay_need(1), 90);
    p.shutdown(now);
    assert_eq!(
        p.poll_event(),
        Some(Event::Demote {
            role: Role::Relay,
            reason: DemoteReason::Shutdown
        })
    );
    assert_eq!(p.poll_timeout(), None);
}

#[test]
fn same_seed_same_events_different_seed_different_jitter() {
    let t0 = Instant::now();
    let times = |seed| {
        let mut p = eligible(t0, cfg(), seed, relay_need(1));
        let mut now = t0;
        run(&mut p, &mut now, t0 + Duration::from_secs(200), |_, _| true)
            .into_iter()
            .map(|(t, e)| (t - t0, e))
            .collect::<Vec<_>>()
    };
    assert_eq!(times(42), times(42));
    let spread: std::collections::BTreeSet<_> = (0..20).map(|s| times(s)[0].0).collect();
    assert!(spread.len() > 10, "jitter spreads requests: {spread:?}");
}

#[test]
fn denied_grant_backs_off_then_retries() {
    let t0 = Instant::now();
    let mut p = eligible(t0, cfg(), 11, relay_need(1));
    let mut now = t0;
    let mut answers = vec![true, false];
    let ev = run(&mut p, &mut now, t0 + Duration::from_secs(300), |_, _| {
        answers.pop().unwrap()
    });
    let asks: Vec<_> = ev
        .iter()
        .filter(|(_, e)| *e == Event::RequestGrant(Role::Relay))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(asks.len(), 2, "{ev:?}");
    assert!(
        asks[1] - asks[0] >= cfg().jitter,
        "backed off a full jitter span"
    );
    assert!(p.holds(Role::Relay));
}

#[test]
fn load_ramp_grows_supernode_client_limit() {
    let t0 = Instant::now();
    let need = supernode_need(0);
    let c = Config {
        ramp: Duration::from_secs(100),
        ramp_start_clients: 50,
        supernode_max_clients: 1050,
        ..cfg()
    };
    let mut p = eligible(t0, c, 13, need);
    assert_eq!(p.supernode_client_limit(t0), 0);
    let mut now = t0;
    let ev = run(&mut p, &mut now, t0 + Duration::from_secs(200), |_, _| true);
    let (at, _) = ev
        .iter()
        .find(|(_, e)| *e == Event::BecomeSupernode)
        .expect("promoted");
    assert_eq!(p.supernode_client_limit(*at), 50);
    assert_eq!(p.supernode_client_limit(*at + Duration::from_secs(50)), 550);
    assert_eq!(
        p.supernode_client_limit(*at + Duration::from_secs(500)),
        1050
    );
}

#[test]
fn need_has_a_floor_of_three_supernodes_and_grows_with_clients_and_load() {
    let g = GrantConfig::default();
    // (registered clients, relays, relay capacity, relayed calls, supernodes wanted, relays wanted)
    let cases = [
        (20, 0, 0, 0, 3, 4),
        (600, 0, 0, 0, 3, 4),
        (601, 0, 0, 0, 4, 4),
        (100_000, 0, 0, 0, 500, 4),
        // 20 relayed calls want 6400 kbit/s; 4 relays of 1024 give 4096: 3 more.
        (20, 4, 4096, 20, 3, 7),
    ];
    for (clients, relays, cap, calls, sw, rw) in cases {
        let n = need(
            &g,
            &NeedInputs {
                registered_clients: clients,
                supernodes: 1,
                relays,
                relay_capacity_kbps: cap,
                relayed_calls: calls,
            },
        );
        assert_eq!(
            (n.supernodes_wanted, n.relays_wanted),
            (sw, rw),
            "{clients} clients, {calls} relayed calls"
        );
    }
}

#[test]
fn grant_book_rate_limits_and_expires() {
    let t0 = Instant::now();
    let g = GrantConfig::default();
    let mut book = GrantBook::new(g.clone());
    let need = relay_need(2);
    assert!(book.request(t0, &1u32, Role::Relay, &need));
    assert!(book.request(t0, &1u32, Role::Relay, &need), "idempotent");
    assert!(!book.request(t0, &2u32, Role::Relay, &need), "rate limited");
    let t1 = t0 + g.interval;
    assert!(book.request(t1, &2u32, Role::Relay, &need));
    assert!(
        !book.request(t1 + g.interval, &3u32, Role::Relay, &need),
        "deficit (2) outstanding"
    );
    // Unconfirmed grants expire and free their slots.
    assert!(book.request(t1 + g.ttl, &3u32, Role::Relay, &need));
}

// ---- the supernode's side, through the real supernode core and client agent ----

mod through_supernode {
    use std::net::SocketAddr;
    use std::time::Duration;

    use crate::support::mesh::World;
    use voxmesh::client::AgentEvent;
    use voxmesh::identity::UserId;
    use voxmesh::roles::{Role, probe};
    use voxmesh::signal::{RolesAnswer, RolesRequest};

    /// Asks `req` through client `c` and waits (bounded by the session's retransmissions) for
    /// the answer.
    fn ask(w: &mut World, c: usize, req: RolesRequest) -> RolesAnswer {
        let now = w.now;
        w.agent(c).roles(now, req);
        let mut got = None;
        let done = w.run_until(Duration::from_secs(10), |w| {
            for e in w.take_events(c) {
                if let AgentEvent::Roles(r) = e {
                    got = Some(r);
                }
            }
            got.is_some()
        });
        assert!(done, "no answer");
        got.unwrap().expect("answered")
    }

    /// A request for the relay role with the dial-back `proof`, as the user `id`.
    fn promote(proof: u64, id: UserId) -> RolesRequest {
        RolesRequest::Promote {
            role: Role::Relay,
            proof,
            id,
        }
    }

    /// Whether `ans` grants the role asked for.
    fn granted(ans: RolesAnswer) -> bool {
        match ans {
            RolesAnswer::Grant { granted, .. } => granted,
            other => panic!("not a grant: {other:?}"),
        }
    }

    /// Asks for a dial-back through client `c`: the address it will be sent to and how many
    /// supernodes probe it.
    fn dial_back(w: &mut World, c: usize) -> (SocketAddr, u8) {
        let RolesAnswer::DialBack { reflexive, probes } = ask(w, c, RolesRequest::DialBack) else {
            panic!("not a dial-back")
        };
        (reflexive, probes)
    }

    #[test]
    fn need_dial_back_and_grants() {
        let mut w = World::new();
        let (sn, key, addr) = w.add_supernode(&[]);
        let clients: Vec<usize> = (0..6)
            .map(|_| w.add_client(vec![(key, addr)], true))
            .collect();
        assert!(w.run_until(Duration::from_secs(20), |w| {
            w.sn(sn).status().clients == clients.len()
        }));
        let a = clients[0];
        let b = clients[1];
        let RolesAnswer::Need(n) = ask(&mut w, a, RolesRequest::Need) else {
            panic!("not a need")
        };
        assert_eq!(
            (n.supernodes_wanted, n.supernodes_have),
            (3, 1),
            "the floor of 3"
        );
        assert_eq!((n.relays_wanted, n.relays_have), (4, 0));

        // Dial-back: the probe goes to the session's source, from the driver's own socket.
        let (reflexive, probes) = dial_back(&mut w, a);
        assert_eq!(reflexive, w.addr(a));
        assert_eq!(probes, 1, "the only supernode probes alone");
        let (to, data) = w.sn_mut(sn).poll_probe().expect("a probe");
        assert_eq!(to, w.addr(a));
        let nonce = probe::decode(&data).expect("a probe datagram");
        assert!(w.sn_mut(sn).poll_probe().is_none(), "one probe per request");

        let id_a = w.fresh_identity().id();
        assert!(
            !granted(ask(&mut w, a, promote(nonce ^ 1, id_a))),
            "a wrong proof is refused"
        );
        assert!(granted(ask(&mut w, a, promote(nonce, id_a))));

        // Another eligible client at once: rate limited; after the interval, granted.
        let _ = ask(&mut w, b, RolesRequest::DialBack);
        let (_, data) = w.sn_mut(sn).poll_probe().expect("a probe");
        let nonce_b = probe::decode(&data).unwrap();
        let id_b = w.fresh_identity().id();
        assert!(!granted(ask(&mut w, b, promote(nonce_b, id_b))));
        w.run(Duration::from_secs(2));
        assert!(granted(ask(&mut w, b, promote(nonce_b, id_b))));
        // Without a proof from a dial-back, no grant.
        let c = clients[2];
        w.run(Duration::from_secs(2));
        let id_c = w.fresh_identity().id();
        assert!(!granted(ask(&mut w, c, promote(nonce, id_c))));
    }

    #[test]
    fn a_new_supernode_ramps_its_client_load() {
        let mut w = World::new();
        let (_, key0, addr0) = w.add_supernode(&[]);
        let id = w.fresh_identity();
        let (ramped, key, addr) = w.add_supernode_config(&id, &[(key0, addr0)], |c| {
            c.client_ramp = Some(voxmesh::roles::Ramp {
                start_clients: 2,
                max_clients: 4,
                over: Duration::from_secs(60),
            });
        });
        w.run(Duration::from_secs(5));
        // Three clients that try the new supernode first: two fit, the third moves on.
        let clients: Vec<usize> = (0..3)
            .map(|_| w.add_client(vec![(key, addr), (key0, addr0)], true))
            .collect();
        let registered = |w: &mut World, c: &[usize]| c.iter().all(|i| w.agent(*i).is_registered());
        assert!(w.run_until(Duration::from_secs(20), |w| registered(w, &clients)));
        assert_eq!(w.sn(ramped).status().clients, 2, "the ramp starts at 2");
        assert_eq!(
            w.sn(ramped).status().counters.refused.get("ramping up"),
            Some(&1)
        );
        // Half way through the ramp it takes a third.
        w.run(Duration::from_secs(30));
        let late = w.add_client(vec![(key, addr), (key0, addr0)], true);
        assert!(w.run_until(Duration::from_secs(20), |w| w.agent(late).is_registered()));
        assert_eq!(w.sn(ramped).status().clients, 3);
    }

    #[test]
    fn with_two_supernodes_the_dial_back_comes_from_both() {
        // Issue 13: a public address is proved by dial-back from two supernodes once two
        // exist. The client's supernode probes, and asks another member to probe too; the
        // proof is both nonces XORed, so one probe alone proves nothing.
        let mut w = World::new();
        let (sn0, key0, addr0) = w.add_supernode(&[]);
        let (sn1, _, _) = w.add_supernode(&[(key0, addr0)]);
        assert!(
            w.run_until(Duration::from_secs(20), |w| {
                w.sn(sn0).members().len() == 2 && w.sn(sn1).members().len() == 2
            }),
            "the two supernodes form a mesh"
        );
        let a = w.add_client(vec![(key0, addr0)], true);
        assert!(w.run_until(Duration::from_secs(20), |w| w.agent(a).is_registered()));
        let (reflexive, probes) = dial_back(&mut w, a);
        assert_eq!((reflexive, probes), (w.addr(a), 2), "two probes announced");
        let (to, data) = w
            .sn_mut(sn0)
            .poll_probe()
            .expect("the client's supernode probes");
        assert_eq!(to, w.addr(a));
        let n0 = probe::decode(&data).unwrap();
        // The member's probe follows the request to it: one round trip in the mesh.
        let mut second = None;
        assert!(
            w.run_until(Duration::from_secs(5), |w| {
                second = w.sn_mut(sn1).poll_probe();
                second.is_some()
            }),
            "the other supernode probes too"
        );
        let (to1, data1) = second.unwrap();
        assert_eq!(
            to1,
            w.addr(a),
            "the same address, from another vantage point"
        );
        let n1 = probe::decode(&data1).unwrap();
        assert_ne!(n0, n1);
        let id = w.fresh_identity().id();
        for one in [n0, n1] {
            assert!(
                !granted(ask(&mut w, a, promote(one, id))),
                "one probe alone proves nothing"
            );
        }
        assert!(granted(ask(&mut w, a, promote(n0 ^ n1, id))), "both probes");
    }
}
