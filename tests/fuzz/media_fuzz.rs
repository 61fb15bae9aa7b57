//! A deterministic, seeded mutation fuzzer for the media session's receive side.
//!
//! The peer of a call is authenticated, not trusted: whatever it seals reaches the RED parser,
//! the Opus packet parser, the jitter buffer, the decoder, the DTMF receiver and the report
//! parser. Seeds are real payloads recorded from a sending session: Opus packets, RED packets
//! (its reports of loss turned redundancy on), DTMF events and receiver reports. Each case takes
//! a seed's payload and applies one to three mutations (bit flips, byte replacement, truncation,
//! extension, splices from other seeds, a RED block header rewritten), then seals it under a
//! payload type (usually the seed's, sometimes another) with a timestamp near the stream's
//! (sometimes anywhere) and hands it to the receiving session. One case in five instead mutates
//! a sealed datagram (what anyone on the path could send): it must be refused.
//!
//! For every case:
//! - `handle_input` does not panic;
//! - the datagram is counted exactly once: accepted, or dropped under one reason;
//! - an outer mutation is never accepted;
//! - a frame pulled every few cases is 20 ms of finite samples.
//!
//! At the end the session still plays a clean stream. `VOXMESH_FUZZ_CASES` sets the number of
//! cases (default 20,000: a few seconds in a debug build), `VOXMESH_FUZZ_SEED` the seed,
//! `VOXMESH_FUZZ_REPORT` a file for the JSON summary (`scripts/fuzz-media` runs a million cases
//! in release). What it found first: one packet with a timestamp hours ahead took playout there
//! and every packet after it was dropped as late, for good (the jitter buffer now restarts on
//! the sender's timeline).

use crate::env_u64;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use voxmesh::media::seal::Sealer;
use voxmesh::media::{FrameKind, Header, MediaConfig, MediaKeys, MediaSession, PayloadType, Role};

const DEFAULT_CASES: u64 = 20_000;
const DEFAULT_SEED: u64 = 0x3ed1_a000_f022;
const STREAM: u32 = 0x5eed;

fn keys() -> MediaKeys {
    MediaKeys::new([7; 32], [9; 32])
}

fn speech(k: u64) -> Vec<f32> {
    (0..960)
        .map(|i| {
            let t = (k * 960 + i) as f32 / 48_000.0;
            let f = 200.0 + 900.0 * (0.5 + 0.5 * (6.0 * t).sin());
            0.3 * (std::f32::consts::TAU * f * t).sin() * (0.6 + 0.4 * (11.0 * t).sin())
        })
        .collect()
}

/// Three seconds of a call at 10 % loss, the sender's datagrams opened: (type, timestamp,
/// payload) of every packet, RED ones among them once the first report turned it on.
fn seeds() -> Vec<(PayloadType, u32, Vec<u8>)> {
    let t0 = Instant::now();
    let cfg = MediaConfig {
        stream: STREAM,
        ..MediaConfig::default()
    };
    let mut a = MediaSession::new(t0, &keys(), Role::Initiator, cfg.clone()).unwrap();
    let mut b = MediaSession::new(t0, &keys(), Role::Responder, cfg).unwrap();
    let (_, mut opener) = keys().for_role(Role::Responder, 1).unwrap();
    let mut seeds = Vec::new();
    for k in 0..150u64 {
        let now = t0 + Duration::from_millis(k * 20);
        a.send_audio(now, &speech(k)).unwrap();
        if k % 40 == 5 {
            a.send_dtmf(now, '7', Duration::from_millis(100)).unwrap();
        }
        a.handle_timeout(now);
        while let Some(d) = a.poll_transmit() {
            let o = opener.open(&d).expect("the sender's own packet opens");
            seeds.push((o.header.payload_type, o.header.timestamp, o.payload));
            if k % 10 != 3 {
                b.handle_input(now, &d);
            }
        }
        b.handle_timeout(now);
        while let Some(d) = b.poll_transmit() {
            a.handle_input(now, &d);
        }
    }
    seeds
}

fn mutate(rng: &mut SmallRng, p: &mut Vec<u8>, seeds: &[(PayloadType, u32, Vec<u8>)]) {
    for _ in 0..rng.random_range(1..=3) {
        match rng.random_range(0..7) {
            0 if !p.is_empty() => {
                let i = rng.random_range(0..p.len());
                p[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !p.is_empty() => {
                let i = rng.random_range(0..p.len());
                p[i] = rng.random();
            }
            2 => p.truncate(rng.random_range(0..=p.len())),
            3 => {
                let n = rng.random_range(1..64);
                p.extend((0..n).map(|_| rng.random::<u8>()));
            }
            4 => {
                let other = &seeds[rng.random_range(0..seeds.len())].2;
                let at = rng.random_range(0..=p.len());
                let from = rng.random_range(0..=other.len());
                p.truncate(at);
                p.extend_from_slice(&other[from..]);
            }
            5 if p.len() >= 5 => {
                // A RED block header: another offset and length, the F bit either way.
                p[0] = (p[0] & 0x7f) | (rng.random::<u8>() & 0x80);
                p[1..4].copy_from_slice(&rng.random::<[u8; 3]>());
            }
            _ => {
                let i = rng.random_range(0..=p.len());
                p.insert(i, rng.random());
            }
        }
    }
}

fn counted(s: &MediaSession) -> u64 {
    let st = s.stats();
    st.received.accepted + st.drops.total()
}

#[test]
fn fuzz_media_receiver() {
    let cases = env_u64("VOXMESH_FUZZ_CASES", DEFAULT_CASES);
    let seed = env_u64("VOXMESH_FUZZ_SEED", DEFAULT_SEED);
    let mut rng = SmallRng::seed_from_u64(seed);
    let seeds = seeds();
    let red = seeds.iter().filter(|s| s.0 == PayloadType::Red).count();
    assert!(
        red > 50,
        "only {red} RED seeds: the fuzzer would not reach the RED parser"
    );

    let t0 = Instant::now();
    let (mut sealer, _): (Sealer, _) = keys().for_role(Role::Initiator, STREAM).unwrap();
    let cfg = MediaConfig {
        stream: 2,
        ..MediaConfig::default()
    };
    let mut rx = MediaSession::new(t0, &keys(), Role::Responder, cfg).unwrap();
    let mut frames = 0u64;
    let started = Instant::now();
    for case in 0..cases {
        // 5 ms of call time a case: the playout clock moves as it would.
        let now = t0 + Duration::from_micros(case * 5_000);
        let clock = (case * 240) as u32;
        let (pt, _, payload) = &seeds[rng.random_range(0..seeds.len())];
        let mut p = payload.clone();
        mutate(&mut rng, &mut p, &seeds);
        let pt = if rng.random_ratio(1, 10) {
            PayloadType::ALL[rng.random_range(0..PayloadType::ALL.len())]
        } else {
            *pt
        };
        let ts = if rng.random_ratio(1, 20) {
            rng.random()
        } else {
            clock.wrapping_add_signed(rng.random_range(-4800..4800))
        };
        let mut d = sealer.seal(pt, rng.random(), ts, &p).unwrap();
        let outer = rng.random_ratio(1, 5);
        if outer {
            let i = rng.random_range(0..d.len());
            d[i] ^= 1 << rng.random_range(0..8);
        }
        let before = counted(&rx);
        let accepted_before = rx.stats().received.accepted;
        let r = catch_unwind(AssertUnwindSafe(|| {
            rx.handle_input(now, &d);
            assert_eq!(counted(&rx), before + 1, "counted once");
            if outer {
                assert_eq!(
                    rx.stats().received.accepted,
                    accepted_before,
                    "a datagram changed on the way was accepted"
                );
            }
            if case % 4 == 0 {
                let f = rx.pop_frame(now);
                assert_eq!(f.pcm.len(), 960);
                assert!(f.pcm.iter().all(|x| x.is_finite()));
            }
        }));
        if let Err(panic) = r {
            let h = Header::parse(&d);
            let _ = writeln!(
                std::io::stderr(),
                "fuzz case {case} (VOXMESH_FUZZ_SEED={seed}) failed: {h:?}, payload {p:02x?}"
            );
            resume_unwind(panic);
        }
        frames += u64::from(case % 4 == 0);
    }
    let st = rx.stats();
    // The mutations reached past authentication, and the outer ones were caught by it.
    assert!(
        st.drops.bad_payload > 0 && st.drops.forged > 0,
        "{:?}",
        st.drops
    );
    assert!(st.playout.red_filled > 0, "no RED copy ever filled a slot");

    // A clean stream after all that still plays: three seconds of the sender's own packets.
    let end = cases * 5_000;
    let mut tx = MediaSession::new(t0, &keys(), Role::Initiator, MediaConfig::default()).unwrap();
    let mut sealed = Vec::new();
    for k in 0..150u64 {
        tx.send_audio(t0, &speech(k)).unwrap();
        sealed.extend(std::iter::from_fn(|| tx.poll_transmit()));
    }
    // Re-sealed under the fuzzer's sealer (the receiver latched its stream id), with
    // timestamps that follow the call's clock.
    let (_, mut opener) = keys().for_role(Role::Responder, 1).unwrap();
    let base = (end / 1_000 * 48) as u32;
    let mut kinds = Vec::new();
    for (k, d) in sealed.iter().enumerate() {
        let o = opener.open(d).unwrap();
        let now = t0 + Duration::from_micros(end + k as u64 * 20_000);
        let ts = base.wrapping_add(k as u32 * 960);
        let d = sealer
            .seal(o.header.payload_type, false, ts, &o.payload)
            .unwrap();
        rx.handle_input(now, &d);
        kinds.push(rx.pop_frame(now).kind);
    }
    // The first two seconds find the stream again (the fuzzed one left its own delay, slots
    // and timeline, which a peer may mangle for its own audio); the last plays every packet.
    assert!(
        kinds[100..].iter().all(|k| *k == FrameKind::Normal),
        "a clean stream after the fuzzing: {kinds:?}"
    );
    let st = rx.stats();
    let line = serde_json::json!({
        "cases": cases, "seed": seed, "seconds": started.elapsed().as_secs_f64(),
        "frames_pulled": frames, "accepted": st.received.accepted, "drops": st.drops,
        "red_filled": st.playout.red_filled, "restarts": st.playout.restarts,
        "decode_errors": st.playout.decode_errors, "dtmf_packets": st.received.dtmf_packets,
        "reports": st.received.reports,
    })
    .to_string();
    let _ = writeln!(std::io::stderr(), "{line}");
    if let Ok(path) = std::env::var("VOXMESH_FUZZ_REPORT") {
        std::fs::write(&path, format!("{line}\n")).expect("write the fuzz report");
    }
}
