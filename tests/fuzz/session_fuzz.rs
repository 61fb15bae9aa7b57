//! A deterministic, seeded mutation fuzzer for the session endpoint.
//!
//! Seeds are real frames recorded from a clean exchange: initiations (with and without mac2),
//! handshake answers, cookie replies, and transport frames carrying pings, pongs, requests,
//! responses and messages, sealed in several key epochs. Every endpoint rekeys every 16 frames,
//! so the legitimate session moves through hundreds of epochs during the run. Each case takes a
//! seed and applies one to four mutations (bit flips, byte replacement, truncation, extension,
//! splices from other seeds, a new type byte, a live session index written into the index
//! field, a new nonce, an epoch near the live ones, zeroed ranges, oversizing), then
//! hands it to the server or the client endpoint from the legitimate peer's address or an
//! attacker's. One case in five instead sends a mutated *inner* message through a real,
//! authenticated session (content a malicious but authenticated peer could send).
//!
//! For every case:
//! - `handle_input` does not panic;
//! - the case is counted exactly once: either refused (one refusal, under its reason) or
//!   accepted (a duplicate initiation answered from the cache, a cookie, a valid inner message);
//! - nothing sent to the attacker's address is larger than what it sent (no amplification);
//! - every so often, and at the end, the legitimate session still answers requests and a new
//!   client can still connect;
//! - the run crossed many epochs, and frames of erased and of too-distant epochs were refused.
//!
//! `VOXMESH_FUZZ_CASES` sets the number of cases (default 20,000: a few seconds in a debug
//! build), `VOXMESH_FUZZ_SEED` the seed, `VOXMESH_FUZZ_REPORT` a file for the JSON summary
//! (`scripts/fuzz-session` runs a million cases in release).

use crate::env_u64;
use crate::support::session as session_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use session_support::*;
use voxmesh::identity::NodeKey;
use voxmesh::session::defaults::MAX_EPOCH_SKIP;
use voxmesh::session::wire::{self, inner};
use voxmesh::session::{Config, Counters, Event, RateLimits, Refusal, SessionId};

const DEFAULT_CASES: u64 = 20_000;
const DEFAULT_SEED: u64 = 0x5e55_1011_f022;
const SERVER: &str = "198.51.100.1:7000";
const CLIENT: &str = "203.0.113.5:40000";
/// Behind the same NAT as `CLIENT`, so its handshake needs a cookie (seeding cookie frames).
const CLIENT2: &str = "203.0.113.5:40001";
/// Frames per key: small, so that seeds span epochs and the run crosses hundreds of them.
const REKEY_MESSAGES: u64 = 16;

struct World {
    sim: Sim,
    server: usize,
    client: usize,
    session: SessionId,
    seeds: Vec<Vec<u8>>,
    /// Session indices in use on either side (mutations write them into index fields).
    live: Vec<u32>,
    /// The server's key: an attacker knows it, and can give a mutated initiation a valid mac1.
    server_key: NodeKey,
}

/// A clean exchange, recorded: the seeds, and the endpoints to fuzz.
fn world(seed: u64) -> World {
    let mut sim = Sim::new(seed);
    let cfg = Config {
        rate: RateLimits {
            // The second client, at the first one's IP, has to use a cookie, so cookie replies
            // and initiations with mac2 are among the seeds.
            source_burst: 1.0,
            source_rate: 0.01,
            ..RateLimits::default()
        },
        rekey_messages: REKEY_MESSAGES,
        ..Config::default()
    };
    let client_cfg = Config {
        rekey_messages: REKEY_MESSAGES,
        ..Config::client()
    };
    let server = sim.add(cfg, &identity(1), SERVER);
    let client = sim.add(client_cfg.clone(), &identity(2), CLIENT);
    let client2 = sim.add(client_cfg, &identity(3), CLIENT2);
    sim.nodes[server].auto_answer = Some(echo);
    sim.world.record = true;
    let session = sim.connect(client, server);
    let s2 = sim.connect(client2, server);
    let now = sim.now;
    sim.nodes[client]
        .ep
        .request(now, session, b"seed request")
        .unwrap();
    // Enough messages each way that the seeds hold frames of several epochs.
    let srv = sim.connected_sessions(server)[0];
    for _ in 0..3 * REKEY_MESSAGES {
        sim.nodes[client]
            .ep
            .send(now, session, b"seed message")
            .unwrap();
        sim.nodes[server].ep.send(now, srv, b"seed push").unwrap();
    }
    sim.nodes[client2].ep.request(now, s2, &[7; 300]).unwrap();
    sim.run_for(Duration::from_secs(25));
    let seeds: Vec<Vec<u8>> = sim.world.sent.iter().map(|p| p.data.clone()).collect();
    sim.world.record = false;
    sim.world.sent.clear();
    let kinds: std::collections::BTreeSet<u8> = seeds.iter().map(|s| s[0]).collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        vec![
            wire::HANDSHAKE_INIT,
            wire::HANDSHAKE_RESP,
            wire::COOKIE_REPLY,
            wire::TRANSPORT
        ]
    );
    let live = sim
        .nodes
        .iter()
        .flat_map(|n| n.events.iter())
        .filter_map(|e| match e {
            Event::Connected { session, .. } => Some(session.0),
            _ => None,
        })
        .collect();
    let server_key = sim.nodes[server].ep.node_key();
    World {
        sim,
        server,
        client,
        session,
        seeds,
        live,
        server_key,
    }
}

/// mac1 as anyone who knows the responder's key computes it (see `session::cookie`).
fn mac1(key: &NodeKey, msg: &[u8]) -> [u8; 16] {
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

fn mutate(
    rng: &mut SmallRng,
    seeds: &[Vec<u8>],
    live: &[u32],
    epochs: &[u16],
    max_frame: usize,
) -> Vec<u8> {
    let mut b = seeds[rng.random_range(0..seeds.len())].clone();
    for _ in 0..rng.random_range(1..=4) {
        let len = b.len();
        match rng.random_range(0..13) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                b[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                b[i] = rng.random();
            }
            2 => b.truncate(rng.random_range(0..=len)),
            3 => {
                let n = rng.random_range(1..64);
                b.extend((0..n).map(|_| rng.random::<u8>()));
            }
            4 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                let at = rng.random_range(0..=len.min(other.len()));
                b.truncate(at);
                b.extend_from_slice(&other[at.min(other.len())..]);
            }
            5 if len > 0 => b[0] = rng.random_range(0..16),
            6 if len >= 10 && !live.is_empty() => {
                // A live index where each frame type keeps it.
                let idx = live[rng.random_range(0..live.len())].to_be_bytes();
                let at = match b[0] {
                    wire::TRANSPORT => 1,
                    wire::HANDSHAKE_RESP => 6,
                    _ => 2,
                };
                b[at..at + 4].copy_from_slice(&idx);
            }
            7 if len >= 13 => {
                let n: u64 = match rng.random_range(0..3) {
                    0 => rng.random(),
                    1 => rng.random_range(0..5000),
                    _ => u64::MAX - rng.random_range(0..70_000),
                };
                b[5..13].copy_from_slice(&n.to_be_bytes());
            }
            8 if len > 0 => {
                let i = rng.random_range(0..len);
                let j = rng.random_range(i..=len);
                b[i..j].fill(0);
            }
            9 => b.resize(max_frame + rng.random_range(1..100), 0x41),
            12 if len >= 13 && !epochs.is_empty() => {
                // An epoch around a live one: the previous, current, next few, just beyond the
                // skip limit, or long gone; the counter is kept.
                let base = epochs[rng.random_range(0..epochs.len())];
                let offset = rng.random_range(-3..=i32::from(MAX_EPOCH_SKIP) + 2);
                let epoch = base.wrapping_add_signed(offset as i16);
                let (_, counter) = wire::split_nonce_field(u64::from_be_bytes(
                    b[5..13].try_into().expect("8 bytes"),
                ));
                b[5..13].copy_from_slice(&wire::nonce_field(epoch, counter).to_be_bytes());
            }
            10 => {
                b = (0..rng.random_range(0..300))
                    .map(|_| rng.random())
                    .collect()
            }
            _ if len > 1 => {
                let i = rng.random_range(0..len);
                let j = rng.random_range(i..=len);
                let chunk = b[i..j].to_vec();
                b.splice(i..i, chunk);
            }
            _ => {}
        }
    }
    b
}

fn mutate_inner(rng: &mut SmallRng) -> Vec<u8> {
    let kind = match rng.random_range(0..10) {
        0 => rng.random(),
        k => [
            inner::PING,
            inner::PONG,
            inner::REQUEST,
            inner::RESPONSE,
            inner::MESSAGE,
            inner::CLOSE,
            inner::REQUEST,
            inner::RESPONSE,
            9,
        ][k - 1],
    };
    let n = match rng.random_range(0..4) {
        0 => 0,
        1 => rng.random_range(1..13),
        2 => 12,
        _ => rng.random_range(13..1100),
    };
    let mut v = vec![kind];
    v.extend((0..n).map(|_| rng.random::<u8>()));
    v
}

#[derive(Default)]
struct Tally {
    cases: u64,
    outer: u64,
    inner: u64,
    skipped_close: u64,
    accepted: BTreeMap<&'static str, u64>,
    refused: BTreeMap<&'static str, u64>,
    max_reply_ratio: f64,
    health_checks: u64,
}

fn refusal_delta(before: &Counters, after: &Counters) -> Vec<Refusal> {
    Refusal::ALL
        .iter()
        .copied()
        .filter(|r| after.refused(*r) != before.refused(*r))
        .collect()
}

fn accepted_kind(before: &Counters, after: &Counters) -> &'static str {
    if after.handshake_duplicates > before.handshake_duplicates {
        "handshake_duplicate"
    } else if after.handshakes_answered > before.handshakes_answered {
        "handshake_answered"
    } else if after.cookies_sent > before.cookies_sent {
        "cookie_sent"
    } else if after.cookies_received > before.cookies_received {
        "cookie_received"
    } else {
        "other"
    }
}

/// The epochs the legitimate session's keys are at, on both sides.
fn live_epochs(w: &World) -> Vec<u16> {
    let mut v = Vec::new();
    if let Some(k) = w.sim.nodes[w.client].ep.key_epochs(w.session) {
        v.extend([k.send, k.recv]);
    }
    for s in w.sim.connected_sessions(w.server) {
        if let Some(k) = w.sim.nodes[w.server].ep.key_epochs(s) {
            v.extend([k.send, k.recv]);
        }
    }
    v
}

fn health_check(w: &mut World) {
    let now = w.sim.now;
    let client = w.client;
    let is_answer =
        |e: &Event| matches!(e, Event::Response { body, .. } if body == b"re:still alive?");
    let before = w.sim.count(client, is_answer);
    w.sim.nodes[client]
        .ep
        .request(now, w.session, b"still alive?")
        .unwrap();
    let ok = w.sim.drive_until(Duration::from_secs(10), |sim| {
        sim.count(client, is_answer) > before
    });
    assert!(ok, "the legitimate session stopped answering");
}

#[test]
fn fuzz_session_endpoint() {
    let cases = env_u64("VOXMESH_FUZZ_CASES", DEFAULT_CASES);
    let seed = env_u64("VOXMESH_FUZZ_SEED", DEFAULT_SEED);
    let started = std::time::Instant::now();
    let mut w = world(seed);
    let mut rng = SmallRng::seed_from_u64(seed);
    let max_frame = Config::default().max_frame;
    let mut t = Tally::default();
    let check_every = (cases / 10).max(1);
    for case in 0..cases {
        t.cases += 1;
        // Keep the real sessions alive: time moves 1 ms per case. Event logs are bounded.
        if case % 100 == 99 {
            w.sim.run_for(Duration::from_millis(100));
            w.sim.world.sink.clear();
            for n in &mut w.sim.nodes {
                n.events.clear();
            }
        }
        if case % check_every == check_every - 1 {
            health_check(&mut w);
            t.health_checks += 1;
        }
        let target = if rng.random_bool(0.5) {
            w.server
        } else {
            w.client
        };
        let now = w.sim.now;
        if rng.random_range(0..5) == 0 {
            // Malformed content from an authenticated peer.
            let plain = mutate_inner(&mut rng);
            if plain == [inner::CLOSE] {
                t.skipped_close += 1;
                continue;
            }
            t.inner += 1;
            let server = w.server;
            let client = w.client;
            assert!(
                w.sim.nodes[client]
                    .ep
                    .send_raw_inner_for_fuzzing(now, w.session, &plain)
            );
            let frame = w.sim.nodes[client].ep.poll_transmit().unwrap();
            let before = w.sim.nodes[server].ep.counters().clone();
            let r = catch_unwind(AssertUnwindSafe(|| {
                w.sim.deliver(server, addr(CLIENT), &frame.data)
            }));
            if let Err(p) = r {
                eprintln!("PANIC on inner case {case} (seed {seed}): {plain:02x?}");
                resume_unwind(p);
            }
            let after = w.sim.nodes[server].ep.counters().clone();
            let refused = refusal_delta(&before, &after);
            assert!(refused.len() <= 1, "case {case}: {refused:?}");
            match refused.first() {
                Some(r) => *t.refused.entry(r.name()).or_default() += 1,
                None => *t.accepted.entry("inner_message").or_default() += 1,
            }
            continue;
        }
        t.outer += 1;
        let epochs = live_epochs(&w);
        let mut frame = mutate(&mut rng, &w.seeds, &w.live, &epochs, max_frame);
        if frame.len() == wire::INIT_LEN && frame[0] == wire::HANDSHAKE_INIT && rng.random_bool(0.5)
        {
            // Past mac1, into the rate limits and the Noise layer.
            let m = mac1(&w.server_key, &frame[..wire::INIT_MAC1]);
            frame[wire::INIT_MAC1..wire::INIT_MAC2].copy_from_slice(&m);
        }
        // Mostly an attacker at a random (spoofed) address, so that per-source limits do not
        // hide the deeper paths; sometimes the legitimate peer's address.
        let attacker = rng.random_bool(0.7);
        let from: SocketAddr = if attacker {
            if rng.random_bool(0.8) {
                SocketAddr::from((rng.random::<[u8; 4]>(), rng.random::<u16>()))
            } else {
                SocketAddr::from((rng.random::<[u16; 8]>(), rng.random::<u16>()))
            }
        } else if target == w.server {
            addr(CLIENT)
        } else {
            addr(SERVER)
        };
        let before = w.sim.nodes[target].ep.counters().clone();
        let r = catch_unwind(AssertUnwindSafe(|| {
            let now = w.sim.now;
            w.sim.nodes[target].ep.handle_input(now, from, &frame);
        }));
        if let Err(p) = r {
            eprintln!("PANIC on case {case} (seed {seed}): {frame:02x?}");
            resume_unwind(p);
        }
        // What it sends in answer: never more to the attacker than the attacker sent.
        let target_addr = w.sim.nodes[target].addr;
        while let Some(tx) = w.sim.nodes[target].ep.poll_transmit() {
            if attacker && tx.to == from {
                let ratio = tx.data.len() as f64 / frame.len().max(1) as f64;
                t.max_reply_ratio = t.max_reply_ratio.max(ratio);
                assert!(
                    tx.data.len() <= frame.len(),
                    "case {case}: {} bytes answered with {}",
                    frame.len(),
                    tx.data.len()
                );
            }
            w.sim.inject(target_addr, tx.to, tx.data);
        }
        w.sim.drain(target);
        let after = w.sim.nodes[target].ep.counters().clone();
        assert_eq!(after.frames_in, before.frames_in + 1);
        let refused = refusal_delta(&before, &after);
        assert!(refused.len() <= 1, "case {case}: two refusals {refused:?}");
        assert!(
            after.refused_total() <= before.refused_total() + 1,
            "case {case}"
        );
        match refused.first() {
            Some(r) => *t.refused.entry(r.name()).or_default() += 1,
            None => {
                *t.accepted
                    .entry(accepted_kind(&before, &after))
                    .or_default() += 1
            }
        }
    }
    health_check(&mut w);
    t.health_checks += 1;
    // A new client can still connect.
    let fresh = w
        .sim
        .add(Config::client(), &identity(9), "203.0.113.77:5000");
    let s = w.sim.connect(fresh, w.server);
    assert!(w.sim.nodes[fresh].ep.is_established(s));

    let secs = started.elapsed().as_secs_f64();
    let server_counters = w.sim.nodes[w.server].ep.counters().clone();
    // The run crossed epochs (the client's inner cases alone seal thousands of frames), and
    // the epoch field was exercised: stale and too-distant epochs were refused.
    let client_epochs = w.sim.nodes[w.client].ep.key_epochs(w.session).unwrap();
    if cases >= DEFAULT_CASES {
        assert!(client_epochs.send >= 100, "{client_epochs:?}");
        for r in ["stale_epoch", "future_epoch"] {
            assert!(t.refused.get(r).is_some_and(|n| *n > 0), "no {r} refusal");
        }
    }
    let json = serde_json::json!({
        "cases": t.cases,
        "seed": seed,
        "seconds": (secs * 100.0).round() / 100.0,
        "cases_per_second": (t.cases as f64 / secs).round(),
        "outer_frames": t.outer,
        "inner_messages": t.inner,
        "skipped_valid_close": t.skipped_close,
        "refused": t.refused,
        "accepted": t.accepted,
        "max_reply_to_attacker_ratio": (t.max_reply_ratio * 1000.0).round() / 1000.0,
        "health_checks_passed": t.health_checks,
        "server_sessions_at_end": w.sim.nodes[w.server].ep.session_count(),
        "server_handshakes_answered": server_counters.handshakes_answered,
        "client_send_epochs": client_epochs.send,
        "server_peer_rekeys": server_counters.peer_rekeys,
        "panics": 0,
    });
    let text = serde_json::to_string_pretty(&json).unwrap();
    eprintln!("{text}");
    if let Ok(path) = std::env::var("VOXMESH_FUZZ_REPORT") {
        std::fs::write(path, text + "\n").unwrap();
    }
}
