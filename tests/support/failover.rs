//! A relayed call whose relay dies, measured on the received audio: the helpers the relay
//! failover tests share (`relayd` relays in `tests/lab/relay_failover.rs`, promoted clients'
//! relays in `tests/lab/promotion.rs`).
//!
//! The gap is measured three ways, each bounded by [`MAX_GAP`] at both ends:
//! - the audio the receiver had to conceal (its jitter buffer's PLC and expand slots, 20 ms
//!   each, from `stats` before the kill and after the recovery): the audio that never arrived;
//! - the recordings: each end records the other's tone; the longest stretch (20 ms blocks) that
//!   is not the tone, away from the call's start and end. Opus PLC continues a steady tone for
//!   a while, so this reads short of the concealed audio: it is what a listener hears missing;
//! - the packet counters' longest stall (`stats` polled every 50 ms: up to that much long).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::calls::{CallLab, Live, read_wav, tone};
use voxmesh::call::phone::RELAYED_CONSENT_TIMEOUT;

/// Call set-up in the lab, bounded for a machine whose cores are busy.
pub const SETUP: Duration = Duration::from_secs(20);
/// A signalling exchange through the supernode (retransmitted by the session layer).
pub const SIGNAL: Duration = Duration::from_secs(10);
/// The promise: at most this much audio is missing when the relay dies.
pub const MAX_GAP: Duration = Duration::from_secs(1);
/// Block length of the recordings' analysis: one audio frame.
const BLOCK: usize = 960;
/// The caller's tone (heard by the callee) and the callee's.
const CALLER_HZ: f64 = 440.0;
const CALLEE_HZ: f64 = 660.0;
/// Polling step of the packet counters while the relay dies.
const STEP: Duration = Duration::from_millis(50);

/// Packets received so far by `p`'s call.
pub fn received(p: &mut Live) -> u64 {
    p.stats()["received"].as_u64().expect("stats.received")
}

/// Audio slots `p`'s jitter buffer concealed so far (20 ms each).
pub fn concealed(p: &mut Live) -> u64 {
    p.stats()["concealed"].as_u64().expect("stats.concealed")
}

/// Per 20 ms block of a recording, the share of its power that is the `hz` tone (0 when
/// silent): near 1 where the far end's tone came through.
fn tone_share_blocks(pcm: &[f32], hz: f64) -> Vec<f64> {
    pcm.chunks(BLOCK)
        .enumerate()
        .map(|(k, block)| {
            let total: f64 = block.iter().map(|&x| x as f64 * x as f64).sum();
            if total / (block.len() as f64) < 1e-5 {
                return 0.0;
            }
            let (mut c, mut s) = (0.0, 0.0);
            for (i, &x) in block.iter().enumerate() {
                let ph = 2.0 * std::f64::consts::PI * hz * (k * BLOCK + i) as f64 / 48_000.0;
                c += x as f64 * ph.cos();
                s += x as f64 * ph.sin();
            }
            2.0 * (c * c + s * s) / block.len() as f64 / total
        })
        .collect()
}

/// The longest run of blocks that are not the tone, between the first and the last second in
/// which it was heard well (the call's set-up and hang-up are not gaps); and how many blocks
/// were the tone at all.
pub fn longest_gap(path: &Path, hz: f64) -> (Duration, usize) {
    let shares = tone_share_blocks(&read_wav(path), hz);
    let good = |v: &f64| *v >= 0.5;
    let first = shares.iter().position(good).unwrap_or(0);
    let last = shares.iter().rposition(good).unwrap_or(0);
    let (mut best, mut run) = (0, 0);
    for v in &shares[first..=last.max(first)] {
        run = if good(v) { 0 } else { run + 1 };
        best = best.max(run);
    }
    let heard = shares.iter().filter(|v| good(v)).count();
    (Duration::from_millis(20 * best as u64), heard)
}

/// The IP of the relay carrying a path event's path (`connected` or `path`): our relayed
/// address, else the peer's.
pub fn relay_ip_of(ev: &serde_json::Value) -> Option<String> {
    for end in ["local", "remote"] {
        if ev[end]["type"] == "relay" {
            let addr: std::net::SocketAddr = ev[end]["addr"].as_str()?.parse().ok()?;
            return Some(addr.ip().to_string());
        }
    }
    None
}

/// The last path a party reported (its `connected`, or a later `path`).
pub fn current_path(p: &Live) -> serde_json::Value {
    p.seen
        .iter()
        .rev()
        .find(|e| e["event"] == "path" || e["event"] == "connected")
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// A party's path once it is direct, or as it is when the checks would have found one. A pair
/// that goes direct may still start on the relay: a callee that answers at once gets media
/// flowing as soon as any pair works (on busy cores the direct check can be answered after the
/// relay's); the agent keeps checking and moves to the direct pair as soon as it works, within
/// the check schedule (a pair fails only after its last retransmission, ~6 s).
pub fn direct_soon(p: &mut Live) -> serde_json::Value {
    let limit = voxmesh::call::phone::PhoneConfig::default()
        .ice
        .check_lifetime()
        + Duration::from_secs(2);
    let end = Instant::now() + limit;
    while current_path(p)["path"] != "direct" && Instant::now() < end {
        p.wait("path", end.saturating_duration_since(Instant::now()));
    }
    current_path(p)
}

/// Asserts that audio flows both ways for a 2 s window: each end receives at least `share` of
/// the 50 packets a second the other sends.
pub fn audio_flows(alice: &mut Live, bob: &mut Live, share: f64, when: &str) {
    let (a0, b0) = (received(alice), received(bob));
    let t0 = Instant::now();
    // The measurement window itself (not a synchronisation): media is sent every 20 ms.
    std::thread::sleep(Duration::from_secs(2));
    let want = (share * 50.0 * t0.elapsed().as_secs_f64()) as u64;
    let (a1, b1) = (received(alice), received(bob));
    assert!(
        a1 - a0 >= want && b1 - b0 >= want,
        "audio flows {when}: caller got {}, callee {} (want {want})",
        a1 - a0,
        b1 - b0
    );
}

/// A relayed call with tones both ways: the callee (`answer --auto`) in `callee_ns`, the
/// caller (`dial`, 60 s) in `caller_ns`, both recording. Waits until both are connected and
/// have ranked at least two relays with a standby, and audio flows through a relay; returns
/// (caller, callee, the IP of the relay carrying the call). `tag` names the log lines.
pub fn relayed_tone_call(
    m: &CallLab,
    caller_ns: &str,
    callee_ns: &str,
    tag: &str,
) -> (Live, Live, String) {
    let f = |n: &str| m.dir.join(n).to_str().unwrap().to_string();
    tone(&m.dir.join("a.wav"), CALLER_HZ, 60.0);
    tone(&m.dir.join("b.wav"), CALLEE_HZ, 60.0);
    let (mut bob, bob_id) = m.answer_live(
        callee_ns,
        "bob",
        &[
            "--auto",
            "--play",
            &f("b.wav"),
            "--record",
            &f("at-bob.wav"),
        ],
    );
    let mut alice = m.dial_live(
        caller_ns,
        "alice",
        &bob_id,
        &[
            "--play",
            &f("a.wav"),
            "--record",
            &f("at-alice.wav"),
            "--duration",
            "60",
        ],
    );
    for (p, who) in [(&mut alice, "caller"), (&mut bob, "callee")] {
        p.wait("connected", SETUP)
            .unwrap_or_else(|| panic!("the {who} connects: {:#?}", p.seen));
        let choice = p
            .seen("relay-choice")
            .unwrap_or_else(|| panic!("the {who} reports its relay choice: {:#?}", p.seen))
            .clone();
        eprintln!("{tag}: {who}'s relay choice: {choice}");
        assert!(
            choice["ranking"].as_array().map_or(0, |r| r.len()) >= 2,
            "the {who} measured two relays at least: {choice}"
        );
        assert!(choice["standby"].is_string(), "{who}: {choice}");
    }
    // Audio flows on the first relay for a while: consent has checked the standby pairs.
    audio_flows(&mut alice, &mut bob, 0.8, "before the kill");
    alice.drain();
    bob.drain();
    for (p, who) in [(&alice, "caller"), (&bob, "callee")] {
        // The callee's `connected` may come before its ICE selects (the caller's first media
        // is what connects it): its path is the last one reported by now.
        assert_eq!(
            current_path(p)["path"],
            "relayed",
            "symmetric ↔ symmetric goes through a relay ({who}): {:#?}",
            p.seen
        );
    }
    let before = current_path(&alice);
    let ip = relay_ip_of(&before)
        .unwrap_or_else(|| panic!("the caller's path goes through a relay: {before}"));
    (alice, bob, ip)
}

/// What the receivers missed while the call moved: concealed audio and the longest packet
/// stall at each end (caller, callee).
pub struct Stall {
    pub concealed: (Duration, Duration),
    pub stall: (Duration, Duration),
}

/// Runs `kill` (the death of the relay carrying the call) and watches the packet counters for
/// the consent timeout plus the move and a margin: the stall, if any, is over within it.
/// Also checks that neither end's call ended and that both report a move (a `path` event),
/// returned (caller's, callee's).
pub fn watch_failover(
    alice: &mut Live,
    bob: &mut Live,
    kill: impl FnOnce(),
) -> (Stall, [serde_json::Value; 2]) {
    alice.drain();
    bob.drain();
    let (seen_a, seen_b) = (alice.seen.len(), bob.seen.len());
    let (ca0, cb0) = (concealed(alice), concealed(bob));
    kill();
    let killed = Instant::now();
    let window = RELAYED_CONSENT_TIMEOUT + Duration::from_secs(3);
    let mut samples: Vec<(Duration, u64, u64)> = Vec::new();
    while killed.elapsed() < window {
        let (ra, rb) = (received(alice), received(bob));
        samples.push((killed.elapsed(), ra, rb));
        std::thread::sleep(STEP);
    }
    let stall = |pick: fn(&(Duration, u64, u64)) -> u64| {
        let (mut gap, mut since) = (Duration::ZERO, Duration::ZERO);
        for w in samples.windows(2) {
            if pick(&w[1]) > pick(&w[0]) {
                since = w[1].0;
            } else {
                gap = gap.max(w[1].0 - since);
            }
        }
        gap
    };
    let (ca1, cb1) = (concealed(alice), concealed(bob));
    let hid = |n: u64| Duration::from_millis(20 * n);
    alice.drain();
    bob.drain();
    let mut moves = Vec::new();
    for (p, from, who) in [(&*alice, seen_a, "caller"), (&*bob, seen_b, "callee")] {
        let after = &p.seen[from..];
        assert!(
            !after.iter().any(|e| e["event"] == "ended"),
            "the {who}'s call goes on: {after:#?}"
        );
        let moved = after
            .iter()
            .rev()
            .find(|e| e["event"] == "path")
            .unwrap_or_else(|| panic!("the {who} reports the move (a path event): {after:#?}"));
        moves.push(moved.clone());
    }
    let stall = Stall {
        concealed: (hid(ca1 - ca0), hid(cb1 - cb0)),
        stall: (stall(|s| s.1), stall(|s| s.2)),
    };
    (stall, [moves[0].clone(), moves[1].clone()])
}

/// Hangs up (the caller), waits for both ends to end, reads both recordings' longest gaps,
/// prints the three measures with `tag` and asserts each is at most [`MAX_GAP`].
pub fn hang_up_and_check_gaps(m: &CallLab, alice: &mut Live, bob: &mut Live, s: &Stall, tag: &str) {
    alice.control(serde_json::json!({"cmd": "hangup"}));
    let ea = alice
        .wait("ended", SIGNAL)
        .unwrap_or_else(|| panic!("the caller ends: {:#?}", alice.seen));
    assert_eq!(ea["reason"], "hangup", "{ea}");
    bob.wait("ended", SIGNAL)
        .unwrap_or_else(|| panic!("the callee sees the hang-up: {:#?}", bob.seen));
    assert_eq!(alice.exit(SIGNAL), Some(0), "dial exits 0 after a hang-up");
    // Both recordings are whole: dial's once it exited, answer's before its "ended".
    let (gap_b, heard_b) = longest_gap(&m.dir.join("at-bob.wav"), CALLER_HZ);
    let (gap_a, heard_a) = longest_gap(&m.dir.join("at-alice.wav"), CALLEE_HZ);
    let ms = |d: Duration| d.as_millis();
    eprintln!(
        "{tag}: audio concealed: caller {} ms, callee {} ms; gap in the recordings: caller {} \
         ms, callee {} ms; longest packet stall: caller {} ms, callee {} ms ({} ms polling)",
        ms(s.concealed.0),
        ms(s.concealed.1),
        ms(gap_a),
        ms(gap_b),
        ms(s.stall.0),
        ms(s.stall.1),
        ms(STEP)
    );
    // Several seconds of tone at each end (before and after the kill): the recordings are of
    // the call, and the gap is measured between heard audio.
    assert!(
        heard_a > 150 && heard_b > 150,
        "each end heard the other's tone: {heard_a} / {heard_b} blocks of 20 ms"
    );
    assert!(
        s.concealed.0 <= MAX_GAP && s.concealed.1 <= MAX_GAP,
        "audio concealed at most {MAX_GAP:?}: caller {:?}, callee {:?}",
        s.concealed.0,
        s.concealed.1
    );
    assert!(
        gap_a <= MAX_GAP && gap_b <= MAX_GAP,
        "audio gap at most {MAX_GAP:?}: caller heard {gap_a:?}, callee {gap_b:?}"
    );
    // The stall is read by polling: one polling step may be added to it.
    assert!(
        s.stall.0 <= MAX_GAP + STEP && s.stall.1 <= MAX_GAP + STEP,
        "no packet stall over {MAX_GAP:?}: caller {:?}, callee {:?}",
        s.stall.0,
        s.stall.1
    );
}
