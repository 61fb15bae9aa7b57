//! The TURN server and client state machines against each other, in memory, on a simulated
//! clock: every allocation, permission, channel, auth and policy rule, deterministically.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use voxmesh::turn::server::{ClientAction, ClientAddr, Event, PeerAction, Transport};
use voxmesh::turn::{
    Credentials, PeerPolicy, TurnClient, TurnClientConfig, TurnConfig, TurnEvent, TurnServer,
    mint_rest_credential,
};

const LISTEN: &str = "203.0.113.10:3478";
const RELAY_V4: &str = "203.0.113.10";
const RELAY_V6: &str = "2001:db8:ffff::10";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

struct World {
    now: Instant,
    server: TurnServer,
    /// What peers received: (from relayed address, to peer, data).
    at_peers: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    released: Vec<SocketAddr>,
}

fn config() -> TurnConfig {
    TurnConfig {
        relay_ips: vec![RELAY_V4.parse().unwrap(), RELAY_V6.parse().unwrap()],
        ports: 50000..=50999,
        user_quota: 3,
        source_quota: 5,
        total_quota: 100,
        auth_rate: (2.0, 5.0),
        policy: PeerPolicy {
            allow: vec![
                "198.51.100.0/24".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            own: vec![RELAY_V4.parse().unwrap()],
        },
        ..TurnConfig::default()
    }
}

fn creds() -> Credentials {
    let mut c = Credentials::new("voxmesh.test");
    c.add_user("alice", "secret");
    c.add_user("bob", "hunter2");
    c.add_secret(b"current");
    c.add_secret(b"previous");
    c
}

impl World {
    fn new(config: TurnConfig) -> World {
        let now = Instant::now();
        World {
            now,
            server: TurnServer::new(config, creds(), now, 1_000_000, [9; 32]),
            at_peers: Vec::new(),
            released: Vec::new(),
        }
    }

    fn client_addr(remote: &str) -> ClientAddr {
        ClientAddr {
            transport: Transport::Udp,
            remote: addr(remote),
            local: addr(LISTEN),
            conn: 0,
        }
    }

    /// Moves every queued client message through the server until both sides are idle.
    fn pump(&mut self, client: &mut TurnClient, from: ClientAddr) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut got = Vec::new();
        let mut out = Vec::new();
        while let Some(t) = client.poll_transmit() {
            let mut action = self.server.handle_client(self.now, from, &t.data, &mut out);
            loop {
                match action {
                    ClientAction::Bind { pending, .. } => {
                        action = self.server.relay_bound(self.now, pending, Ok(()), &mut out);
                        continue;
                    }
                    ClientAction::ToClient { to, len } => {
                        assert_eq!(to, from, "replies go to the requester");
                        if let Some(r) = client.handle_input(self.now, &out[..len]) {
                            got.push((r.peer, out[..len][r.data].to_vec()));
                        }
                    }
                    ClientAction::ToPeer { id, peer, data } => {
                        let relay = self.server.relay_of(id).unwrap();
                        self.at_peers.push((relay, peer, t.data[data].to_vec()));
                    }
                    ClientAction::None => {}
                }
                break;
            }
        }
        while let Some(Event::Released { relay, .. }) = self.server.poll_event() {
            self.released.push(relay);
        }
        got
    }

    fn advance(&mut self, d: Duration, clients: &mut [(&mut TurnClient, ClientAddr)]) {
        let end = self.now + d;
        loop {
            let mut next = self.server.poll_timeout();
            for (c, _) in clients.iter() {
                if let Some(t) = c.poll_timeout() {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
            match next {
                Some(t) if t <= end => {
                    self.now = t.max(self.now);
                    self.server.handle_timeout(self.now);
                    for (c, from) in clients.iter_mut() {
                        c.handle_timeout(self.now);
                        self.pump(c, *from);
                    }
                }
                _ => break,
            }
        }
        self.now = end;
        self.server.handle_timeout(end);
        while let Some(Event::Released { relay, .. }) = self.server.poll_event() {
            self.released.push(relay);
        }
    }

    /// A peer sends `data` to allocation `relayed` from `peer`; returns what the client got.
    fn deliver_from_peer(
        &mut self,
        client: &mut TurnClient,
        relayed: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
    ) -> Option<(SocketAddr, Vec<u8>)> {
        let id = (0..64u32)
            .flat_map(|index| {
                (0..4u32).map(move |generation| voxmesh::turn::AllocId { index, generation })
            })
            .find(|id| self.server.relay_of(*id) == Some(relayed))?;
        let mut out = Vec::new();
        match self.server.handle_peer(self.now, id, peer, data, &mut out) {
            PeerAction::ToClient { len, .. } => {
                let r = client.handle_input(self.now, &out[..len])?;
                Some((r.peer, out[..len][r.data].to_vec()))
            }
            PeerAction::Drop => None,
        }
    }
}

fn events(c: &mut TurnClient) -> Vec<TurnEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn allocated(
    w: &mut World,
    user: &str,
    pass: &str,
    from: &str,
) -> (TurnClient, ClientAddr, SocketAddr) {
    let mut c = TurnClient::new(TurnClientConfig::new(addr(LISTEN), user, pass));
    let from = World::client_addr(from);
    c.allocate(w.now);
    w.pump(&mut c, from);
    let ev = events(&mut c);
    let relayed = match ev.as_slice() {
        [
            TurnEvent::Allocated {
                relayed, mapped, ..
            },
        ] => {
            assert_eq!(*mapped, Some(from.remote));
            *relayed
        }
        other => panic!("expected one Allocated event, got {other:?}"),
    };
    (c, from, relayed)
}

#[test]
fn allocate_after_a_401_challenge_and_relay_both_ways() {
    let mut w = World::new(config());
    let (mut c, from, relayed) = allocated(&mut w, "alice", "secret", "198.51.100.20:4000");
    assert_eq!(relayed.ip().to_string(), RELAY_V4);
    assert!((50000..=50999).contains(&relayed.port()));
    let peer = addr("198.51.100.30:5000");

    c.create_permission(w.now, peer);
    w.pump(&mut c, from);
    assert_eq!(
        events(&mut c),
        vec![TurnEvent::PermissionCreated(peer.ip())]
    );

    // Send indication out, Data indication back.
    c.send_to(peer, b"hello peer").unwrap();
    w.pump(&mut c, from);
    assert_eq!(
        w.at_peers.pop(),
        Some((relayed, peer, b"hello peer".to_vec()))
    );
    assert_eq!(
        w.deliver_from_peer(&mut c, relayed, peer, b"hi client"),
        Some((peer, b"hi client".to_vec()))
    );

    // A channel: ChannelData both ways.
    let ch = c.bind_channel(w.now, peer);
    w.pump(&mut c, from);
    assert_eq!(
        events(&mut c),
        vec![TurnEvent::ChannelBound { peer, channel: ch }]
    );
    c.send_to(peer, b"over the channel").unwrap();
    w.pump(&mut c, from);
    assert_eq!(
        w.at_peers.pop(),
        Some((relayed, peer, b"over the channel".to_vec()))
    );
    let back = w.deliver_from_peer(&mut c, relayed, peer, b"channel back");
    assert_eq!(back, Some((peer, b"channel back".to_vec())));

    // No permission for another peer: the peer's data is dropped.
    assert_eq!(
        w.deliver_from_peer(&mut c, relayed, addr("198.51.100.99:1"), b"x"),
        None
    );
    assert_eq!(w.server.counters().drops.get("no_permission"), Some(&1));

    // Release: lifetime 0.
    c.release(w.now);
    w.pump(&mut c, from);
    assert_eq!(events(&mut c), vec![TurnEvent::Released]);
    assert_eq!(w.released, vec![relayed]);
    assert_eq!(w.server.allocations(), 0);
}

#[test]
fn wrong_password_and_unknown_user_fail_without_looping() {
    let mut w = World::new(config());
    for (user, pass) in [("alice", "wrong"), ("mallory", "x")] {
        let mut c = TurnClient::new(TurnClientConfig::new(addr(LISTEN), user, pass));
        c.allocate(w.now);
        w.pump(&mut c, World::client_addr("198.51.100.21:4000"));
        let ev = events(&mut c);
        assert!(
            matches!(ev.as_slice(), [TurnEvent::Failed { code: 401, .. }]),
            "{user}: {ev:?}"
        );
    }
    assert_eq!(w.server.allocations(), 0);
    assert!(w.server.counters().auth_failures >= 2);
}

#[test]
fn time_limited_credentials_rotate_and_expire() {
    let mut w = World::new(config());
    let unix = 1_000_000;
    for (i, secret) in [&b"current"[..], b"previous"].into_iter().enumerate() {
        let (user, pass) = mint_rest_credential(secret, "carol", unix + 3600);
        let (mut c, from, _) =
            allocated(&mut w, &user, &pass, &format!("198.51.100.{}:4000", 10 + i));
        c.release(w.now);
        w.pump(&mut c, from);
    }
    let (user, pass) = mint_rest_credential(b"current", "carol", unix - 1);
    let mut c = TurnClient::new(TurnClientConfig::new(addr(LISTEN), &user, &pass));
    c.allocate(w.now);
    w.pump(&mut c, World::client_addr("198.51.100.12:4001"));
    assert!(
        matches!(
            events(&mut c).as_slice(),
            [TurnEvent::Failed { code: 401, .. }]
        ),
        "expired credential"
    );
    let (user, pass) = mint_rest_credential(b"unknown secret", "carol", unix + 3600);
    let mut c = TurnClient::new(TurnClientConfig::new(addr(LISTEN), &user, &pass));
    c.allocate(w.now);
    w.pump(&mut c, World::client_addr("198.51.100.13:4002"));
    assert!(
        matches!(
            events(&mut c).as_slice(),
            [TurnEvent::Failed { code: 401, .. }]
        ),
        "a secret the relay does not hold"
    );
}

#[test]
fn stale_nonce_is_refreshed_transparently() {
    let mut w = World::new(config());
    let (mut c, from, relayed) = allocated(&mut w, "alice", "secret", "198.51.100.23:4000");
    // The client refreshes every 300 s with the nonce it learnt at the start; by the third
    // refresh (900 s) that nonce is past its 600 s lifetime.
    w.advance(Duration::from_secs(1000), &mut [(&mut c, from)]);
    let ev = events(&mut c);
    assert!(
        ev.contains(&TurnEvent::Refreshed {
            lifetime: Duration::from_secs(600)
        }),
        "{ev:?}"
    );
    assert!(
        w.server.counters().auth_stale_nonce >= 1,
        "the refresh met a stale nonce and retried"
    );
    assert_eq!(
        w.server.relay_of(voxmesh::turn::AllocId {
            index: 0,
            generation: 0
        }),
        Some(relayed)
    );
}

#[test]
fn allocations_permissions_and_channels_expire() {
    let mut w = World::new(config());
    let (mut c, from, relayed) = allocated(&mut w, "alice", "secret", "198.51.100.24:4000");
    let peer = addr("198.51.100.31:5000");
    c.create_permission(w.now, peer);
    w.pump(&mut c, from);
    events(&mut c);
    // The client refreshes nothing if we never let it run: drive the server alone.
    let mut idle = TurnClient::new(TurnClientConfig::new(addr(LISTEN), "x", "y"));
    w.advance(
        Duration::from_secs(301),
        &mut [(&mut idle, World::client_addr("198.51.100.99:1"))],
    );
    assert_eq!(
        w.deliver_from_peer(&mut c, relayed, peer, b"late"),
        None,
        "permission expired after 300 s"
    );
    w.advance(
        Duration::from_secs(300),
        &mut [(&mut idle, World::client_addr("198.51.100.99:1"))],
    );
    assert_eq!(w.server.allocations(), 0, "allocation expired after 600 s");
    assert_eq!(w.released, vec![relayed]);
    assert_eq!(w.server.counters().expired, 1);
}

#[test]
fn peers_in_special_ranges_and_the_relay_itself_are_refused() {
    let mut w = World::new(config());
    let (mut c, from, _) = allocated(&mut w, "alice", "secret", "198.51.100.25:4000");
    let refused_v4 = [
        "10.0.0.1:1",
        "127.0.0.1:1",
        "192.168.1.1:1",
        "169.254.0.1:1",
        "224.0.0.1:1",
        "[::ffff:127.0.0.1]:1",
        "203.0.113.10:3478",
        "203.0.113.10:9478",
    ];
    for p in refused_v4 {
        c.create_permission(w.now, addr(p));
        w.pump(&mut c, from);
        let ev = events(&mut c);
        assert!(
            matches!(ev.as_slice(), [TurnEvent::Failed { code: 403, .. }]),
            "{p}: {ev:?}"
        );
    }
    c.create_permission(w.now, addr("[2001:db8::1]:1"));
    w.pump(&mut c, from);
    assert!(
        matches!(
            events(&mut c).as_slice(),
            [TurnEvent::Failed { code: 443, .. }]
        ),
        "family mismatch"
    );

    // An IPv6 allocation: NAT64 and mapped loopback refused, lab IPv6 allowed.
    let mut cfg = TurnClientConfig::new(addr(LISTEN), "bob", "hunter2");
    cfg.ipv6_relay = true;
    let mut c6 = TurnClient::new(cfg);
    let from6 = World::client_addr("198.51.100.26:4000");
    c6.allocate(w.now);
    w.pump(&mut c6, from6);
    assert!(
        matches!(events(&mut c6).as_slice(), [TurnEvent::Allocated { relayed, .. }] if relayed.is_ipv6())
    );
    for p in [
        "[64:ff9b::7f00:1]:1",
        "[fe80::1]:1",
        "[fd00::1]:1",
        "[2002:a00:1::1]:1",
    ] {
        c6.create_permission(w.now, addr(p));
        w.pump(&mut c6, from6);
        let ev = events(&mut c6);
        assert!(
            matches!(ev.as_slice(), [TurnEvent::Failed { code: 403, .. }]),
            "{p}: {ev:?}"
        );
    }
    c6.create_permission(w.now, addr("[2001:db8::5]:1"));
    w.pump(&mut c6, from6);
    assert_eq!(
        events(&mut c6),
        vec![TurnEvent::PermissionCreated("2001:db8::5".parse().unwrap())]
    );
    assert!(w.server.counters().peer_refusals.values().sum::<u64>() >= 12);
}

#[test]
fn two_clients_on_one_relay_talk_through_it_internally() {
    let mut w = World::new(config());
    let (mut a, from_a, relay_a) = allocated(&mut w, "alice", "secret", "198.51.100.40:4000");
    let (mut b, from_b, relay_b) = allocated(&mut w, "bob", "hunter2", "198.51.100.41:4000");
    // Each allows the other's relayed address (on the relay's own IP: allowed because live).
    a.bind_channel(w.now, relay_b);
    w.pump(&mut a, from_a);
    b.create_permission(w.now, relay_a);
    w.pump(&mut b, from_b);
    assert!(
        events(&mut a)
            .iter()
            .any(|e| matches!(e, TurnEvent::ChannelBound { .. }))
    );
    assert!(
        events(&mut b)
            .iter()
            .any(|e| matches!(e, TurnEvent::PermissionCreated(_)))
    );
    a.send_to(relay_b, b"internal").unwrap();
    // A's ChannelData reaches B as a Data indication from A's relayed address, never a socket.
    let mut out = Vec::new();
    let msg = a.poll_transmit().unwrap().data;
    match w.server.handle_client(w.now, from_a, &msg, &mut out) {
        ClientAction::ToClient { to, len } => {
            assert_eq!(to, from_b);
            let r = b.handle_input(w.now, &out[..len]).unwrap();
            assert_eq!((r.peer, &out[..len][r.data]), (relay_a, &b"internal"[..]));
        }
        other => panic!("expected internal delivery, got {other:?}"),
    }
    // The relay's other ports on the same IP stay refused even with a permission for that IP.
    a.send_to(addr("203.0.113.10:3478"), b"to the listener")
        .unwrap();
    w.pump(&mut a, from_a);
    assert!(
        w.at_peers.is_empty(),
        "nothing may reach the relay's own listener"
    );
    assert_eq!(w.server.counters().drops.get("peer_refused"), Some(&1));
}

#[test]
fn quotas_and_allocation_floods() {
    let mut w = World::new(config());
    // user quota 3
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(allocated(
            &mut w,
            "alice",
            "secret",
            &format!("198.51.100.50:{}", 4000 + i),
        ));
    }
    let mut c = TurnClient::new(TurnClientConfig::new(addr(LISTEN), "alice", "secret"));
    c.allocate(w.now);
    w.pump(&mut c, World::client_addr("198.51.100.50:4999"));
    assert!(
        matches!(
            events(&mut c).as_slice(),
            [TurnEvent::Failed { code: 486, .. }]
        ),
        "user quota"
    );
    // source quota 5: a flood from one IP with fresh usernames is capped...
    let mut ok = 0;
    for i in 0..20 {
        let (user, pass) = mint_rest_credential(b"current", &format!("flood{i}"), 2_000_000);
        let mut c = TurnClient::new(TurnClientConfig::new(addr(LISTEN), &user, &pass));
        c.allocate(w.now);
        w.pump(
            &mut c,
            World::client_addr(&format!("198.51.100.51:{}", 4000 + i)),
        );
        if matches!(events(&mut c).as_slice(), [TurnEvent::Allocated { .. }]) {
            ok += 1;
        }
    }
    assert_eq!(ok, 5, "per-source quota");
    // ...and others are still served.
    allocated(&mut w, "bob", "hunter2", "198.51.100.52:4000");
}

#[test]
fn unauthenticated_floods_are_rate_limited_per_source() {
    let mut w = World::new(config());
    let mut answered = 0;
    for i in 0..50 {
        let mut c = TurnClient::new(TurnClientConfig::new(addr(LISTEN), "alice", "secret"));
        c.allocate(w.now);
        let msg = c.poll_transmit().unwrap().data;
        let mut out = Vec::new();
        if let ClientAction::ToClient { .. } = w.server.handle_client(
            w.now,
            World::client_addr(&format!("198.51.100.60:{}", 1000 + i)),
            &msg,
            &mut out,
        ) {
            answered += 1;
        }
    }
    assert_eq!(answered, 5, "burst of 5 401s, then silence");
    assert_eq!(w.server.counters().auth_rate_limited, 45);
    allocated(&mut w, "alice", "secret", "198.51.100.61:4000");
}

/// The reason phrase of a 486 names the quota that was hit, so a client (or its operator)
/// knows whether releasing one of its own allocations would help.
#[test]
fn quota_refusals_name_the_quota() {
    let failed = |w: &mut World, user: &str, pass: &str, from: &str| -> (u16, String) {
        let mut c = TurnClient::new(TurnClientConfig::new(addr(LISTEN), user, pass));
        c.allocate(w.now);
        w.pump(&mut c, World::client_addr(from));
        match events(&mut c).as_slice() {
            [TurnEvent::Failed { code, reason, .. }] => (*code, reason.clone()),
            other => panic!("expected a refusal, got {other:?}"),
        }
    };
    let user_hit = (486, "Allocation Quota Reached (per user)".to_string());
    let source_hit = (486, "Allocation Quota Reached (per source)".to_string());
    let total_hit = (486, "Allocation Quota Reached (total)".to_string());

    // The test's limiter (burst 5) would silence the sixth challenge from one address.
    let config = || TurnConfig {
        auth_rate: TurnConfig::default().auth_rate,
        ..config()
    };
    // Per user (3): alice from three addresses, then a fourth.
    let mut w = World::new(config());
    for i in 0..3 {
        allocated(
            &mut w,
            "alice",
            "secret",
            &format!("198.51.100.40:{}", 4000 + i),
        );
    }
    assert_eq!(
        failed(&mut w, "alice", "secret", "198.51.100.41:4000"),
        user_hit
    );

    // Per source (5): fresh time-limited users from one address.
    let mut w = World::new(config());
    let rest = |i: u32| mint_rest_credential(b"current", &format!("q{i}"), 2_000_000);
    for i in 0..5 {
        let (u, p) = rest(i);
        allocated(&mut w, &u, &p, &format!("198.51.100.42:{}", 4000 + i));
    }
    let (u, p) = rest(5);
    assert_eq!(failed(&mut w, &u, &p, "198.51.100.42:4999"), source_hit);

    // In total (2): two users from two addresses, then a third from a third.
    let mut cfg = config();
    cfg.total_quota = 2;
    let mut w = World::new(cfg);
    allocated(&mut w, "alice", "secret", "198.51.100.43:4000");
    allocated(&mut w, "bob", "hunter2", "198.51.100.44:4000");
    let (u, p) = rest(9);
    assert_eq!(failed(&mut w, &u, &p, "198.51.100.45:4000"), total_hit);
    assert_eq!(w.server.counters().drops.get("quota"), Some(&1));
    assert_eq!(w.server.counters().errors.get(&486), Some(&1));
}

/// Every allocation starts with one 401 (its first Allocate has no credentials): with the
/// default limiter, 100 clients behind one address connecting at the same instant all get
/// their challenge at once, and none has to wait for a retransmission.
#[test]
fn a_burst_of_100_first_allocates_from_one_address_is_answered() {
    let mut cfg = config();
    cfg.auth_rate = TurnConfig::default().auth_rate;
    let mut w = World::new(cfg);
    let mut out = Vec::new();
    let mut answered = 0;
    for i in 0..100 {
        let mut c = TurnClient::new(TurnClientConfig::new(addr(LISTEN), "alice", "secret"));
        c.allocate(w.now);
        let msg = c.poll_transmit().unwrap().data;
        let from = World::client_addr(&format!("198.51.100.62:{}", 10_000 + i));
        if let ClientAction::ToClient { to, len } =
            w.server.handle_client(w.now, from, &msg, &mut out)
        {
            assert_eq!(to, from);
            assert!(c.handle_input(w.now, &out[..len]).is_none());
            // The client took the challenge: its next message is the signed Allocate, not a
            // retransmission of the first.
            let next = c.poll_transmit().expect("a signed Allocate").data;
            assert_ne!(next, msg);
            answered += 1;
        }
    }
    assert_eq!(answered, 100);
    assert_eq!(w.server.counters().auth_rate_limited, 0);
}

/// What one spoofed source can make the relay send toward the address it forges: bare 20-byte
/// Allocates, 1,000 a second for 10 s. The 401s total at most the burst plus the refill, and no
/// one-second window carries more than (burst + rate) × the 401's size; after the burst the
/// sustained figure is the documented MAX_CHALLENGE_BYTES_PER_SECOND (2,480 B/s).
#[test]
fn a_spoofed_source_draws_a_bounded_number_of_401_bytes_per_second() {
    use voxmesh::stun::{Class, MessageBuilder, TransactionId, method};
    use voxmesh::turn::auth::{
        CHALLENGE_BURST, CHALLENGE_BYTES, CHALLENGE_RATE, MAX_CHALLENGE_BYTES_PER_SECOND,
    };
    // The default realm and SOFTWARE, as a relayd started without --realm answers.
    let cfg = TurnConfig {
        relay_ips: vec![RELAY_V4.parse().unwrap()],
        ..TurnConfig::default()
    };
    let mut w = World::new(cfg);
    w.server.set_credentials(Credentials::new("voxmesh"));
    let victim = World::client_addr("198.51.100.63:53");
    let mut req = Vec::new();
    MessageBuilder::new(
        &mut req,
        method::ALLOCATE,
        Class::Request,
        TransactionId::random(),
    )
    .finish();
    assert_eq!(req.len(), 20, "the smallest request that draws a 401");
    let start = w.now;
    let mut per_second = vec![0u64; 10];
    let mut out = Vec::new();
    for ms in 0..10_000u64 {
        let now = start + Duration::from_millis(ms);
        if let ClientAction::ToClient { len, .. } =
            w.server.handle_client(now, victim, &req, &mut out)
        {
            assert_eq!(len as u64, CHALLENGE_BYTES, "the documented 401 size");
            per_second[(ms / 1000) as usize] += len as u64;
        }
    }
    let (rate, burst) = (CHALLENGE_RATE as u64, CHALLENGE_BURST as u64);
    assert_eq!(MAX_CHALLENGE_BYTES_PER_SECOND, 2_480);
    assert_eq!(rate * CHALLENGE_BYTES, MAX_CHALLENGE_BYTES_PER_SECOND);
    let total: u64 = per_second.iter().sum();
    assert!(
        total <= (burst + 10 * rate) * CHALLENGE_BYTES,
        "{total} bytes in 10 s: {per_second:?}"
    );
    assert!(
        per_second[0] <= (burst + rate) * CHALLENGE_BYTES,
        "first second {per_second:?}"
    );
    assert!(
        per_second[0] >= burst * CHALLENGE_BYTES,
        "the burst is served: {per_second:?}"
    );
    for (s, bytes) in per_second.iter().enumerate().skip(1) {
        // The refill lands within the second, give or take one response at the edges.
        assert!(
            bytes.abs_diff(MAX_CHALLENGE_BYTES_PER_SECOND) <= CHALLENGE_BYTES,
            "second {s}: {bytes} bytes ({per_second:?})"
        );
    }
}

#[test]
fn a_drain_with_nothing_live_is_over_at_once() {
    let mut w = World::new(config());
    w.server.start_drain(w.now + Duration::from_secs(30));
    w.server.handle_timeout(w.now);
    assert!(w.server.drained(), "nothing to wait for");
}

#[test]
fn a_drain_ends_when_the_last_allocation_does() {
    let mut w = World::new(config());
    let (mut a, from_a, _) = allocated(&mut w, "alice", "secret", "198.51.100.72:4000");
    let (mut b, from_b, _) = allocated(&mut w, "bob", "hunter2", "198.51.100.73:4000");
    w.server.start_drain(w.now + Duration::from_secs(30));
    w.server.handle_timeout(w.now);
    assert!(!w.server.drained());
    w.advance(Duration::from_secs(1), &mut []);
    a.release(w.now);
    w.pump(&mut a, from_a);
    w.server.handle_timeout(w.now);
    assert!(!w.server.drained(), "one allocation is still live");
    b.release(w.now);
    w.pump(&mut b, from_b);
    w.server.handle_timeout(w.now);
    assert!(w.server.drained(), "the last one is gone: 29 s early");
    assert_eq!(w.server.allocations(), 0);
}

#[test]
fn drain_refuses_new_allocations_and_caps_refreshes() {
    let mut cfg = config();
    cfg.alternate_server = Some(addr("198.51.100.200:3478"));
    let mut w = World::new(cfg);
    let (mut c, from, _) = allocated(&mut w, "alice", "secret", "198.51.100.70:4000");
    w.server.start_drain(w.now + Duration::from_secs(30));
    let mut n = TurnClient::new(TurnClientConfig::new(addr(LISTEN), "bob", "hunter2"));
    n.allocate(w.now);
    w.pump(&mut n, World::client_addr("198.51.100.71:4000"));
    assert_eq!(
        events(&mut n),
        vec![TurnEvent::TryAlternate(addr("198.51.100.200:3478"))]
    );
    w.advance(Duration::from_secs(1), &mut []);
    c.handle_timeout(w.now);
    // Force a refresh now.
    let mut cfg = TurnClientConfig::new(addr(LISTEN), "alice", "secret");
    cfg.lifetime = Duration::from_secs(3600);
    let _ = cfg;
    c.release(w.now);
    w.pump(&mut c, from);
    assert_eq!(events(&mut c), vec![TurnEvent::Released]);
    w.advance(Duration::from_secs(30), &mut []);
    assert_eq!(w.server.allocations(), 0);
}

#[test]
fn bandwidth_cap_drops_excess() {
    let mut cfg = config();
    cfg.bandwidth = Some(1000);
    let mut w = World::new(cfg);
    let (mut c, from, relayed) = allocated(&mut w, "alice", "secret", "198.51.100.80:4000");
    let peer = addr("198.51.100.81:5000");
    c.create_permission(w.now, peer);
    w.pump(&mut c, from);
    for _ in 0..20 {
        c.send_to(peer, &[0u8; 100]).unwrap();
    }
    w.pump(&mut c, from);
    assert_eq!(w.at_peers.len(), 10, "1000 bytes of burst");
    assert_eq!(w.server.counters().drops.get("bandwidth"), Some(&10));
    let _ = relayed;
}

#[test]
fn channel_rebinding_rules() {
    let mut w = World::new(config());
    let (mut c, from, _) = allocated(&mut w, "alice", "secret", "198.51.100.90:4000");
    let p1 = addr("198.51.100.91:5000");
    let p2 = addr("198.51.100.92:5000");
    let ch = c.bind_channel(w.now, p1);
    w.pump(&mut c, from);
    events(&mut c);
    // Same channel, different peer: refused (raw request, since our client never does this).
    let mut raw = TurnClient::new(TurnClientConfig::new(addr(LISTEN), "alice", "secret"));
    let _ = (&mut raw, ch, p2);
    let again = c.bind_channel(w.now, p1);
    assert_eq!(again, ch, "a peer keeps its channel");
    w.pump(&mut c, from);
    assert_eq!(
        events(&mut c),
        vec![TurnEvent::ChannelBound {
            peer: p1,
            channel: ch
        }]
    );
    assert_eq!(w.server.counters().channel_binds, 2);
    let _: IpAddr = p2.ip();
}
