//! The agent against itself, in memory: API edge cases, restarts, forgeries.

use super::*;
use crate::call::ice::types::ChangeReason;
use crate::call::ice::wire::{CheckRequest, RoleAttr};

fn agent(controlling: bool, seed: u8) -> IceAgent {
    agent_timed(controlling, seed, &Timing::default())
}

fn agent_timed(controlling: bool, seed: u8, timing: &Timing) -> IceAgent {
    IceAgent::new(IceConfig {
        controlling,
        seed: [seed; 32],
        timing: timing.clone(),
    })
    .unwrap()
}

/// Signals between `a` and `b`: each learns the other's credentials, and `a` the candidates
/// `cb` and `b` the candidates `ca`.
fn introduce(
    now: Instant,
    a: &mut IceAgent,
    b: &mut IceAgent,
    ca: Vec<Candidate>,
    cb: Vec<Candidate>,
) {
    a.set_remote_credentials(now, b.local_credentials().clone())
        .unwrap();
    b.set_remote_credentials(now, a.local_credentials().clone())
        .unwrap();
    for c in cb {
        a.add_remote_candidate(now, c).unwrap();
    }
    for c in ca {
        b.add_remote_candidate(now, c).unwrap();
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Moves every transmit between two agents on the same LAN (no delay) until both are
/// quiet, then advances the clock to the next timer; `steps` rounds.
fn exchange(a: &mut IceAgent, b: &mut IceAgent, now: &mut Instant, steps: usize) {
    pump(a, b, now, steps, None, |t| Some(Route::Direct(t.to)));
}

/// Moves every transmit between two agents (no delay) until both are quiet, then advances
/// the clock to the next timer, not past `until`; `steps` rounds at most, and none from
/// `until` on. `link` is the route a transmit arrives on at the peer; `None`: it is lost.
fn pump(
    a: &mut IceAgent,
    b: &mut IceAgent,
    now: &mut Instant,
    steps: usize,
    until: Option<Instant>,
    link: impl Fn(&Transmit) -> Option<Route>,
) {
    for _ in 0..steps {
        if until.is_some_and(|u| *now >= u) {
            break;
        }
        loop {
            let mut moved = false;
            for dir in 0..2 {
                let (from, to) = if dir == 0 {
                    (&mut *a, &mut *b)
                } else {
                    (&mut *b, &mut *a)
                };
                while let Some(t) = from.poll_transmit() {
                    moved = true;
                    if let Some(route) = link(&t) {
                        let _ = to.handle_input(*now, route, t.route.local(), &t.data);
                    }
                }
            }
            if !moved {
                break;
            }
        }
        let next = [a.poll_timeout(), b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next else { break };
        *now = next.max(*now);
        if let Some(u) = until {
            *now = (*now).min(u);
        }
        a.handle_timeout(*now);
        b.handle_timeout(*now);
    }
}

#[test]
fn remote_candidates_are_validated_and_bounded() {
    let mut a = agent(true, 1);
    let now = Instant::now();
    let cand = |a: &str| Candidate {
        kind: CandidateKind::Host,
        addr: addr(a),
        priority: priority(CandidateKind::Host, 65535),
        foundation: 1,
    };
    for bad in [
        "0.0.0.0:5",
        "224.0.0.1:5",
        "255.255.255.255:5",
        "192.0.2.1:0",
        "[::]:5",
    ] {
        assert_eq!(
            a.add_remote_candidate(now, cand(bad)),
            Err(CandidateError::BadAddress),
            "{bad}"
        );
    }
    let max = Timing::default().max_remote_candidates;
    for i in 0..max {
        a.add_remote_candidate(now, cand(&format!("192.0.2.{}:9", i + 1)))
            .unwrap();
    }
    // A duplicate is fine; one more is not.
    a.add_remote_candidate(now, cand("192.0.2.1:9")).unwrap();
    assert_eq!(
        a.add_remote_candidate(now, cand("198.51.100.1:9")),
        Err(CandidateError::TooMany)
    );
}

#[test]
fn local_candidates_that_add_nothing_are_not_signalled() {
    let mut a = agent(true, 2);
    let now = Instant::now();
    let host = addr("192.0.2.1:4000");
    // A server-reflexive candidate needs its base, and must differ from it.
    let srflx = LocalCandidate::ServerReflexive {
        addr: addr("203.0.113.9:4000"),
        base: host,
    };
    assert_eq!(a.add_local_candidate(now, srflx), None);
    let h = a
        .add_local_candidate(now, LocalCandidate::Host(host))
        .unwrap();
    assert_eq!(h.kind, CandidateKind::Host);
    assert_eq!(a.add_local_candidate(now, LocalCandidate::Host(host)), None);
    let same = LocalCandidate::ServerReflexive {
        addr: host,
        base: host,
    };
    assert_eq!(a.add_local_candidate(now, same), None);
    let s = a.add_local_candidate(now, srflx).unwrap();
    assert!(s.priority < h.priority);
    assert_eq!(a.local_candidates().len(), 2);
}

#[test]
fn credentials_are_checked_and_a_change_restarts() {
    let mut a = agent(false, 3);
    let now = Instant::now();
    let bad = Credentials {
        ufrag: "ab".into(),
        pwd: "short".into(),
    };
    assert_eq!(a.set_remote_credentials(now, bad), Err(BadCredentials));
    let mut rng = StdRng::seed_from_u64(9);
    let first = Credentials::random(&mut rng);
    let ours = a.local_credentials().clone();
    assert_eq!(a.set_remote_credentials(now, first.clone()), Ok(None));
    assert_eq!(a.set_remote_credentials(now, first), Ok(None), "same again");
    let second = Credentials::random(&mut rng);
    let restarted = a.set_remote_credentials(now, second).unwrap();
    let new = restarted.expect("the peer restarted, so did we");
    assert_ne!(new, ours);
    assert_eq!(a.local_credentials(), &new);
}

#[test]
fn requests_are_answered_before_the_peers_credentials_arrive() {
    let mut now = Instant::now();
    let (mut a, mut b) = (agent(true, 4), agent(false, 5));
    let (ha, hb) = (addr("192.0.2.1:1000"), addr("192.0.2.2:2000"));
    let ca = a
        .add_local_candidate(now, LocalCandidate::Host(ha))
        .unwrap();
    let _ = b
        .add_local_candidate(now, LocalCandidate::Host(hb))
        .unwrap();
    // B knows A (credentials and candidate); A knows nothing of B yet, as if signalling
    // were still in flight. A answers B's checks (it knows its own password) but cannot
    // check back.
    b.set_remote_credentials(now, a.local_credentials().clone())
        .unwrap();
    b.add_remote_candidate(now, ca).unwrap();
    exchange(&mut a, &mut b, &mut now, 5);
    assert!(a.counters().requests_answered >= 1);
    assert_eq!(a.counters().checks_sent, 0);
    assert!(b.counters().responses_received >= 1);
    assert!(a.selected().is_none() && b.selected().is_none());
    // B's credentials arrive; the check A owed goes out.
    a.set_remote_credentials(now, b.local_credentials().clone())
        .unwrap();
    exchange(&mut a, &mut b, &mut now, 20);
    // A learned B as peer-reflexive from B's check, answered it, checked back, nominated.
    assert_eq!(a.counters().prflx_learned, 1);
    let (pa, pb) = (a.selected().unwrap(), b.selected().unwrap());
    assert_eq!((pa.remote, pb.remote), (hb, ha));
    assert_eq!(pa.remote_kind, CandidateKind::PeerReflexive);
    assert!(!pa.relayed && !pb.relayed);
    let connected = |x: &mut IceAgent| {
        std::iter::from_fn(|| x.poll_event()).any(|e| matches!(e, Event::Connected(_)))
    };
    assert!(connected(&mut a) && connected(&mut b));
    // B's host candidate is signalled at last: the same path, now named host, and the
    // application is told (a connected event naming it peer-reflexive was the last word).
    let cb = b.local_candidates()[0];
    a.add_remote_candidate(now, cb).unwrap();
    let pa = a.selected().unwrap();
    assert_eq!((pa.remote, pa.remote_kind), (hb, CandidateKind::Host));
    let renamed: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
    assert!(
        matches!(&renamed[..], [Event::PathChanged { from, to, reason: ChangeReason::Renamed }]
            if from.remote_kind == CandidateKind::PeerReflexive && to.remote_kind == CandidateKind::Host
                && from.remote == to.remote),
        "{renamed:?}"
    );
    // Signalled again: nothing to rename, nothing said.
    a.add_remote_candidate(now, cb).unwrap();
    assert!(a.poll_event().is_none());
}

/// Two agents on one LAN, connected.
fn connected_pair(now: &mut Instant, timing: Timing) -> (IceAgent, IceAgent) {
    let (mut a, mut b) = (
        agent_timed(true, 10, &timing),
        agent_timed(false, 11, &timing),
    );
    let ca = a
        .add_local_candidate(*now, LocalCandidate::Host(addr("192.0.2.1:1000")))
        .unwrap();
    let cb = b
        .add_local_candidate(*now, LocalCandidate::Host(addr("192.0.2.2:2000")))
        .unwrap();
    introduce(*now, &mut a, &mut b, vec![ca], vec![cb]);
    exchange(&mut a, &mut b, now, 20);
    assert!(a.selected().is_some() && b.selected().is_some());
    while a.poll_event().is_some() || b.poll_event().is_some() {}
    (a, b)
}

#[test]
fn media_stays_on_the_old_path_until_a_restart_selects_a_new_one() {
    let mut now = Instant::now();
    let (mut a, mut b) = connected_pair(&mut now, Timing::fast_consent());
    let before = a.selected().unwrap();
    // Two restarts before the peer hears of either: the old path keeps its consent on the
    // credentials of its own session.
    let _ = a.restart(now);
    let second = a.restart(now);
    let end = now + Duration::from_secs(3);
    while now < end {
        exchange(&mut a, &mut b, &mut now, 1);
    }
    assert_eq!(a.selected(), Some(before));
    let events: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::ConsentLost { .. })),
        "{events:?}"
    );
    // The peer learns our new credentials, restarts too, and answers with its own.
    let theirs = b
        .set_remote_credentials(now, second)
        .unwrap()
        .expect("the peer restarts");
    for c in b.local_candidates() {
        // Candidates are signalled again with the new credentials.
        a.add_remote_candidate(now, c).unwrap();
    }
    a.set_remote_credentials(now, theirs).unwrap();
    for c in a.local_candidates() {
        b.add_remote_candidate(now, c).unwrap();
    }
    exchange(&mut a, &mut b, &mut now, 20);
    let events: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::PathChanged {
                reason: ChangeReason::Restart,
                ..
            }
        )),
        "{events:?}"
    );
    assert_eq!(a.selected().unwrap().remote, before.remote);
    assert!(a.prev.is_none(), "the old session is over");
}

#[test]
fn nothing_unauthenticated_is_ever_answered() {
    // An agent with a socket and credentials but no peer: any transmit would be an answer.
    let mut a = agent(false, 6);
    let now = Instant::now();
    let host = addr("192.0.2.1:1000");
    let _ = a.add_local_candidate(now, LocalCandidate::Host(host));
    let ufrag = a.local_credentials().ufrag.clone();
    let mut rng = StdRng::seed_from_u64(77);
    let from = addr("198.51.100.66:9");
    let mut refused = 0;
    for i in 0..2000 {
        let tid = TransactionId(rng.random());
        let pwd = if i % 3 == 0 {
            "guess-guess-guess-guess"
        } else {
            "other"
        };
        let mut bytes = wire::check_request(&CheckRequest {
            id: tid,
            remote_ufrag: &ufrag,
            remote_pwd: pwd,
            local_ufrag: "evil",
            priority: rng.random(),
            role: RoleAttr::Controlling(rng.random()),
            nominate: Some(1),
        });
        // Flip a few random bytes in some of them.
        for _ in 0..(i % 4) {
            let k = rng.random_range(0..bytes.len());
            bytes[k] ^= rng.random::<u8>() | 1;
        }
        match a.handle_input(now, Route::Direct(host), from, &bytes) {
            Inbound::Refused(_) => refused += 1,
            Inbound::NotIce => {}
            Inbound::Consumed => panic!("accepted a forgery: {bytes:?}"),
        }
        assert!(a.poll_transmit().is_none(), "answered a forgery");
    }
    assert!(refused > 1500, "{refused}");
    assert_eq!(a.counters().refused_total(), refused);
    assert_eq!(a.counters().requests_answered, 0);
}

/// Like [`exchange`] between agents that have relayed candidates only: a transmit from our
/// allocation `t.route` to the peer's relayed address `t.to` arrives on the peer's
/// allocation. Packets touching a relay IP in `dead` are lost. Runs until `until` (the rounds
/// bounded far above what any test's span needs).
fn exchange_relayed(
    a: &mut IceAgent,
    b: &mut IceAgent,
    now: &mut Instant,
    until: Instant,
    dead: &[IpAddr],
) {
    pump(a, b, now, 1_000_000, Some(until), |t| {
        let lost = dead.contains(&t.route.local().ip()) || dead.contains(&t.to.ip());
        (!lost).then_some(Route::Relay(t.to))
    });
}

/// Two agents with `timing` (seeds `seed`, `seed + 1`), each allocated on every relay in
/// `relays` (in that order of rank) and told of the other's.
fn relayed_pair(
    now: Instant,
    timing: &Timing,
    seed: u8,
    relays: &[IpAddr],
) -> (IceAgent, IceAgent) {
    let (mut a, mut b) = (
        agent_timed(true, seed, timing),
        agent_timed(false, seed + 1, timing),
    );
    let mut ca = Vec::new();
    let mut cb = Vec::new();
    for ip in relays {
        ca.push(
            a.add_local_candidate(now, LocalCandidate::Relayed(SocketAddr::new(*ip, 50_000)))
                .unwrap(),
        );
        cb.push(
            b.add_local_candidate(now, LocalCandidate::Relayed(SocketAddr::new(*ip, 60_000)))
                .unwrap(),
        );
    }
    introduce(now, &mut a, &mut b, ca, cb);
    (a, b)
}

#[test]
fn a_dead_relay_moves_the_call_to_the_standby_relay_within_the_relayed_consent_timeout() {
    let timing = crate::call::phone::PhoneConfig::ice_timing();
    let mut now = Instant::now();
    // Relays X and Y; each end allocated on both, X ranked first.
    let (x, y): (IpAddr, IpAddr) = (
        "203.0.113.1".parse().unwrap(),
        "203.0.113.2".parse().unwrap(),
    );
    let (mut a, mut b) = relayed_pair(now, &timing, 20, &[x, y]);
    let until = now + Duration::from_secs(3);
    exchange_relayed(&mut a, &mut b, &mut now, until, &[]);
    let relays_of = |p: PathInfo| [p.route.local().ip(), p.remote.ip()];
    for (ag, who) in [(&a, "caller"), (&b, "callee")] {
        let sel = ag.selected().unwrap_or_else(|| panic!("{who} connects"));
        assert_eq!(
            relays_of(sel),
            [x, x],
            "{who}: the first-ranked relay carries the call"
        );
        let standby = ag.info(ag.standby.expect("a standby pair"));
        assert_eq!(
            relays_of(standby),
            [y, y],
            "{who}: the standby shares no relay with it"
        );
        assert!(
            ag.fallback,
            "{who}: so relayed pairs use the fast consent timeout"
        );
    }
    while a.poll_event().is_some() || b.poll_event().is_some() {}

    // X dies. Each end's last answer through X came at most one probe interval before, so
    // both have moved by the relayed consent timeout after the death.
    let died = now;
    let until = died + crate::call::phone::RELAYED_CONSENT_TIMEOUT + Duration::from_millis(1);
    exchange_relayed(&mut a, &mut b, &mut now, until, &[x]);
    for (ag, who) in [(&mut a, "caller"), (&mut b, "callee")] {
        let sel = ag
            .selected()
            .unwrap_or_else(|| panic!("{who} keeps a path"));
        assert_eq!(
            relays_of(sel),
            [y, y],
            "{who}: the call is on the standby relay"
        );
        let events: Vec<Event> = std::iter::from_fn(|| ag.poll_event()).collect();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::PathChanged { .. })),
            "{who}: the move is reported: {events:?}"
        );
        assert!(
            !events.iter().any(|e| matches!(e, Event::Disconnected)),
            "{who}: never without a path: {events:?}"
        );
    }
}

#[test]
fn with_one_relay_consent_keeps_the_ordinary_timeout() {
    // Nowhere to move to: a fast verdict would only disconnect sooner.
    let timing = crate::call::phone::PhoneConfig::ice_timing();
    let mut now = Instant::now();
    let x: IpAddr = "203.0.113.1".parse().unwrap();
    let (mut a, mut b) = relayed_pair(now, &timing, 30, &[x]);
    let until = now + Duration::from_secs(3);
    exchange_relayed(&mut a, &mut b, &mut now, until, &[]);
    assert!(a.selected().is_some() && !a.fallback);
    while a.poll_event().is_some() || b.poll_event().is_some() {}
    let died = now;
    // Past the fast timeout: still holding on.
    let until = died + crate::call::phone::RELAYED_CONSENT_TIMEOUT + Duration::from_millis(100);
    exchange_relayed(&mut a, &mut b, &mut now, until, &[x]);
    assert!(a.selected().is_some(), "not dropped on the fast timeout");
    // Past the ordinary one: disconnected.
    let until = died + timing.consent_timeout + Duration::from_millis(1);
    exchange_relayed(&mut a, &mut b, &mut now, until, &[x]);
    let events: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
    assert!(
        events.iter().any(|e| matches!(e, Event::Disconnected)),
        "{events:?}"
    );
}
