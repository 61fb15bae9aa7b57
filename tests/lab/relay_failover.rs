//! Relay failover in the lab (issue 13, acceptance 2, the relay half): two `relayd` on the
//! lab's "internet", both registered with the supernode; a call between two symmetric-NAT
//! clients must go through a relay. Each end allocates on both relays, ranks them
//! (`relay-choice` event: the active relay and the standby) and keeps the standby's allocation
//! with its relayed candidate in ICE. The relay carrying the call is SIGKILLed mid-call: consent
//! on the relayed path (200 ms probes, 600 ms timeout) notices, ICE moves the call to the
//! standby relay's pair (a `path` event at both ends), with no signalling round trip, and the
//! call goes on.
//!
//! Measured on the received audio, three ways, each at most 1 s at both ends:
//! - the audio the receiver had to conceal (its jitter buffer's PLC and expand slots, 20 ms
//!   each, from `stats` before the kill and after the recovery): the audio that never arrived;
//! - the recordings: each end records the other's tone; the longest stretch (20 ms blocks) that
//!   is not the tone, away from the call's start and end. Opus PLC continues a steady tone for
//!   a while, so this reads short of the concealed audio: it is what a listener hears missing;
//! - the packet counters' longest stall (`stats` polled every 50 ms: up to that much long).
//!
//! A second test mutes both ends first (no media either way, as in DTX silence): consent alone
//! notices the dead relay, and both ends move within 1 s of the kill (by the `path` events'
//! wall clock).
//!
//! With one relay only, the call ends with `no-path` instead (`call_failure`).

use crate::support::calls::{CallLab, Live, RELAY, read_wav, tone};
use crate::support::common::{Proc, start_relayd};
use crate::support::mesh_proc::rt;

use std::path::Path;
use std::time::{Duration, Instant};

use voxlab::{BoxOpts, Lab, LabNat};
use voxmesh::call::phone::RELAYED_CONSENT_TIMEOUT;
use voxmesh::net::drivers::supernode::query_status;

/// The second relay: on the lab server's other address (the first relay is on [`RELAY`]), so
/// the two relays' relayed addresses differ by IP.
const RELAY2: &str = "198.51.100.1:3479";
/// Call set-up in the lab, bounded for a machine whose cores are busy.
const SETUP: Duration = Duration::from_secs(20);
/// A signalling exchange through the supernode (retransmitted by the session layer).
const SIGNAL: Duration = Duration::from_secs(10);
/// The promise: at most this much audio is missing when the relay dies.
const MAX_GAP: Duration = Duration::from_secs(1);
/// Block length of the recordings' analysis: one audio frame.
const BLOCK: usize = 960;

/// Packets received so far by `p`'s call.
fn received(p: &mut Live) -> u64 {
    p.stats()["received"].as_u64().expect("stats.received")
}

/// Audio slots `p`'s jitter buffer concealed so far (20 ms each).
fn concealed(p: &mut Live) -> u64 {
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
fn longest_gap(path: &Path, hz: f64) -> (Duration, usize) {
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
fn relay_ip_of(ev: &serde_json::Value) -> Option<String> {
    for end in ["local", "remote"] {
        if ev[end]["type"] == "relay" {
            let addr: std::net::SocketAddr = ev[end]["addr"].as_str()?.parse().ok()?;
            return Some(addr.ip().to_string());
        }
    }
    None
}

/// The last path a party reported (its `connected`, or a later `path`).
fn current_path(p: &Live) -> serde_json::Value {
    p.seen
        .iter()
        .rev()
        .find(|e| e["event"] == "path" || e["event"] == "connected")
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// Waits (bounded) until the supernode lists `n` relays.
fn wait_relays(control: &Path, n: usize) {
    let t0 = Instant::now();
    loop {
        let v = rt().block_on(query_status(control, false)).ok();
        let have = v
            .as_ref()
            .and_then(|v| v["relays"].as_array().map(|r| r.len()));
        if have == Some(n) {
            return;
        }
        assert!(
            t0.elapsed() < SETUP,
            "the supernode lists {n} relays within {SETUP:?}: {v:?}"
        );
        // Polling a status: each relay's hello is one handshake and one request away.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The tests of this area run one at a time: each measures sub-second timings with two NAT
/// labs and five processes of its own, which two shared cores cannot run three times over
/// without starving the media (as `scripts/test` runs the lab areas one at a time).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A relayed call in progress over two relays: the lab, the second relay, both parties.
struct Failover {
    _serial: std::sync::MutexGuard<'static, ()>,
    m: CallLab,
    relay2: Option<Proc>,
    alice: Live,
    bob: Live,
}

/// SIGKILLs the relay at `ip` (the one carrying the call; it says goodbye to nobody): the
/// lab's first relay or `relay2`. Returns its IP and the survivor's.
fn kill_carrier(
    m: &mut CallLab,
    relay2: &mut Option<Proc>,
    ip: &str,
) -> (&'static str, &'static str) {
    let relay1_ip = RELAY.split(':').next().unwrap();
    let relay2_ip = RELAY2.split(':').next().unwrap();
    if ip == relay1_ip {
        drop(m.relay.take());
        (relay1_ip, relay2_ip)
    } else {
        assert_eq!(ip, relay2_ip, "the path's relay is one of ours");
        drop(relay2.take());
        (relay2_ip, relay1_ip)
    }
}

/// Sets up the lab (two relays), places a call between two symmetric-NAT parties, checks both
/// ranked both relays and that audio flows through a relay; returns it, and the IP of the
/// relay carrying the call. `None` when the lab cannot run here.
fn start(test: &str) -> Option<(Failover, String)> {
    if !Lab::ready_or_skip(test) {
        return None;
    }
    // A test that failed holding the lock poisons it; the next one still runs.
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = CallLab::new(
        &[
            (1, BoxOpts::new(LabNat::Symmetric)),
            (2, BoxOpts::new(LabNat::Symmetric)),
        ],
        test,
    );
    let key2 = m.dir.join("relay2.key");
    let relay2: Option<Proc> = Some(start_relayd(
        &m.lab,
        &[
            "--listen",
            RELAY2,
            "--supernode",
            &m.node,
            "--identity",
            key2.to_str().unwrap(),
            "--allow-peer",
            "198.51.100.0/24",
        ],
    ));
    wait_relays(&m.dir.join("sn.sock"), 2);

    let f = |n: &str| m.dir.join(n).to_str().unwrap().to_string();
    tone(&m.dir.join("a.wav"), 440.0, 60.0);
    tone(&m.dir.join("b.wav"), 660.0, 60.0);
    let (mut bob, bob_id) = m.answer_live(
        &m.host_ns(2, 0),
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
        &m.host_ns(1, 0),
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
        eprintln!("relay_failover: {who}'s relay choice: {choice}");
        assert_eq!(
            choice["ranking"].as_array().map(|r| r.len()),
            Some(2),
            "the {who} measured both relays: {choice}"
        );
        assert!(choice["standby"].is_string(), "{who}: {choice}");
    }
    // Audio flows on the first relay for a while: consent has checked the standby pairs.
    let t0 = Instant::now();
    let (a0, b0) = (received(&mut alice), received(&mut bob));
    // The measurement window itself (not a synchronisation): media is sent every 20 ms.
    std::thread::sleep(Duration::from_secs(2));
    let want = (0.8 * 50.0 * t0.elapsed().as_secs_f64()) as u64;
    let (a1, b1) = (received(&mut alice), received(&mut bob));
    assert!(
        a1 - a0 >= want && b1 - b0 >= want,
        "audio flows before the kill: caller got {}, callee {} (want {want})",
        a1 - a0,
        b1 - b0
    );
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
    Some((
        Failover {
            _serial: serial,
            m,
            relay2,
            alice,
            bob,
        },
        ip,
    ))
}

#[test]
fn a_relayed_call_moves_to_the_standby_relay_within_1_s_when_its_relay_dies() {
    let Some((f, ip)) = start("relay_failover") else {
        return;
    };
    let Failover {
        _serial,
        mut m,
        mut relay2,
        mut alice,
        mut bob,
    } = f;
    let (seen_a, seen_b) = (alice.seen.len(), bob.seen.len());
    let (ca0, cb0) = (concealed(&mut alice), concealed(&mut bob));

    let (killed_ip, survivor_ip) = kill_carrier(&mut m, &mut relay2, &ip);
    let killed = Instant::now();
    // Watch the packet counters for the consent timeout plus the move and a margin: the
    // stall, if any, is over within it.
    let window = RELAYED_CONSENT_TIMEOUT + Duration::from_secs(3);
    let mut samples: Vec<(Duration, u64, u64)> = Vec::new();
    while killed.elapsed() < window {
        let (ra, rb) = (received(&mut alice), received(&mut bob));
        samples.push((killed.elapsed(), ra, rb));
        std::thread::sleep(Duration::from_millis(50));
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
    let (stall_a, stall_b) = (stall(|s| s.1), stall(|s| s.2));
    let (ca1, cb1) = (concealed(&mut alice), concealed(&mut bob));
    let hid = |n: u64| Duration::from_millis(20 * n);
    let (hid_a, hid_b) = (hid(ca1 - ca0), hid(cb1 - cb0));
    alice.drain();
    bob.drain();
    for (p, from, who) in [(&alice, seen_a, "caller"), (&bob, seen_b, "callee")] {
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
        assert_eq!(
            relay_ip_of(moved).as_deref(),
            Some(survivor_ip),
            "the {who}'s call moved to the standby relay: {moved}"
        );
        eprintln!("relay_failover: {who} moved: {moved}");
    }
    // Audio flows both ways on the standby.
    let (a0, b0) = (received(&mut alice), received(&mut bob));
    let t1 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let want = (0.8 * 50.0 * t1.elapsed().as_secs_f64()) as u64;
    let (a1, b1) = (received(&mut alice), received(&mut bob));
    assert!(
        a1 - a0 >= want && b1 - b0 >= want,
        "audio flows after the move: caller got {}, callee {} (want {want})",
        a1 - a0,
        b1 - b0
    );

    alice.control(serde_json::json!({"cmd": "hangup"}));
    let ea = alice
        .wait("ended", SIGNAL)
        .unwrap_or_else(|| panic!("the caller ends: {:#?}", alice.seen));
    assert_eq!(ea["reason"], "hangup", "{ea}");
    bob.wait("ended", SIGNAL)
        .unwrap_or_else(|| panic!("the callee sees the hang-up: {:#?}", bob.seen));
    assert_eq!(alice.exit(SIGNAL), Some(0), "dial exits 0 after a hang-up");
    // Both recordings are whole: dial's once it exited, answer's before its "ended".
    let (gap_b, heard_b) = longest_gap(&m.dir.join("at-bob.wav"), 440.0);
    let (gap_a, heard_a) = longest_gap(&m.dir.join("at-alice.wav"), 660.0);
    eprintln!(
        "relay_failover: relay {killed_ip} killed → audio concealed: caller {} ms, callee {} ms; \
         gap in the recordings: caller {} ms, callee {} ms; longest packet stall: caller {} ms, \
         callee {} ms (50 ms polling)",
        hid_a.as_millis(),
        hid_b.as_millis(),
        gap_a.as_millis(),
        gap_b.as_millis(),
        stall_a.as_millis(),
        stall_b.as_millis()
    );
    // Several seconds of tone at each end (before and after the kill): the recordings are of
    // the call, and the gap is measured between heard audio.
    assert!(
        heard_a > 150 && heard_b > 150,
        "each end heard the other's tone: {heard_a} / {heard_b} blocks of 20 ms"
    );
    assert!(
        hid_a <= MAX_GAP && hid_b <= MAX_GAP,
        "audio concealed at most {MAX_GAP:?}: caller {hid_a:?}, callee {hid_b:?}"
    );
    assert!(
        gap_a <= MAX_GAP && gap_b <= MAX_GAP,
        "audio gap at most {MAX_GAP:?}: caller heard {gap_a:?}, callee {gap_b:?}"
    );
    // The stall is read by polling: one polling step may be added to it.
    let step = Duration::from_millis(50);
    assert!(
        stall_a <= MAX_GAP + step && stall_b <= MAX_GAP + step,
        "no packet stall over {MAX_GAP:?}: caller {stall_a:?}, callee {stall_b:?}"
    );
    drop(relay2);
    let _ = std::fs::remove_dir_all(&m.dir);
}

#[test]
fn a_silent_call_moves_to_the_standby_relay_within_1_s_too() {
    // Both ends muted (no media either way, as in DTX silence): only consent, on its own timer,
    // can notice the dead relay. The move is timed by the `path` events' wall clock.
    let Some((f, ip)) = start("relay_failover_silent") else {
        return;
    };
    let Failover {
        _serial,
        mut m,
        mut relay2,
        mut alice,
        mut bob,
    } = f;
    for p in [&mut alice, &mut bob] {
        p.control(serde_json::json!({"cmd": "mute"}));
    }
    // Wait (bounded) until no media arrives at either end any more: the mutes took effect.
    let t0 = Instant::now();
    let mut last = (received(&mut alice), received(&mut bob));
    loop {
        // The measurement step: 200 ms is ten frames of a stream that still flows.
        std::thread::sleep(Duration::from_millis(200));
        let now = (received(&mut alice), received(&mut bob));
        if now == last {
            break;
        }
        last = now;
        assert!(t0.elapsed() < SIGNAL, "muting stops the media");
    }
    alice.drain();
    bob.drain();
    let (seen_a, seen_b) = (alice.seen.len(), bob.seen.len());
    let (_, survivor_ip) = kill_carrier(&mut m, &mut relay2, &ip);
    let killed_ms = unix_ms();
    let limit = RELAYED_CONSENT_TIMEOUT + Duration::from_secs(3);
    let mut moves = Vec::new();
    for (p, from, who) in [(&mut alice, seen_a, "caller"), (&mut bob, seen_b, "callee")] {
        let moved = p
            .wait("path", limit)
            .unwrap_or_else(|| panic!("the silent {who} moves: {:#?}", &p.seen[from..]));
        assert_eq!(
            relay_ip_of(&moved).as_deref(),
            Some(survivor_ip),
            "the {who} moved to the standby relay: {moved}"
        );
        let at = moved["at"]
            .as_f64()
            .expect("a path event carries the wall clock");
        moves.push(at - killed_ms);
    }
    eprintln!(
        "relay_failover: silent call, relay {ip} killed → moved after: caller {:.0} ms, callee \
         {:.0} ms",
        moves[0], moves[1]
    );
    assert!(
        moves.iter().all(|ms| *ms <= MAX_GAP.as_millis() as f64),
        "both ends move within {MAX_GAP:?} of the kill: {moves:?} ms"
    );
    // Unmuted, audio flows both ways on the standby.
    for p in [&mut alice, &mut bob] {
        p.control(serde_json::json!({"cmd": "unmute"}));
    }
    let (a0, b0) = (received(&mut alice), received(&mut bob));
    let t1 = Instant::now();
    // The measurement window itself (not a synchronisation): media is sent every 20 ms.
    std::thread::sleep(Duration::from_secs(2));
    let want = (0.6 * 50.0 * t1.elapsed().as_secs_f64()) as u64;
    let (a1, b1) = (received(&mut alice), received(&mut bob));
    assert!(
        a1 - a0 >= want && b1 - b0 >= want,
        "audio flows after the move: caller got {}, callee {} (want {want})",
        a1 - a0,
        b1 - b0
    );
    alice.control(serde_json::json!({"cmd": "hangup"}));
    assert!(alice.wait("ended", SIGNAL).is_some(), "{:#?}", alice.seen);
    // The callee's recording closes with its call, before the directory goes.
    assert!(bob.wait("ended", SIGNAL).is_some(), "{:#?}", bob.seen);
    drop(relay2);
    let _ = std::fs::remove_dir_all(&m.dir);
}

/// The wall clock in Unix milliseconds, as the events' `at`.
fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

#[test]
fn after_a_move_a_new_standby_is_found_and_a_second_relay_death_is_survived_too() {
    // The network heals: the dead relay's allocation stops answering (its TURN transactions
    // time out), it is dropped, and a third relay that appeared meanwhile becomes the new
    // standby (offers asked again, its candidate trickled); its relay then dies too, and the
    // call moves again within 1 s.
    let Some((f, ip)) = start("relay_failover_twice") else {
        return;
    };
    let Failover {
        _serial,
        mut m,
        mut relay2,
        mut alice,
        mut bob,
    } = f;
    let (killed_ip, survivor_ip) = kill_carrier(&mut m, &mut relay2, &ip);
    for (p, who) in [(&mut alice, "caller"), (&mut bob, "callee")] {
        let moved = p
            .wait("path", RELAYED_CONSENT_TIMEOUT + Duration::from_secs(3))
            .unwrap_or_else(|| panic!("the {who} moves: {:#?}", p.seen));
        assert_eq!(
            relay_ip_of(&moved).as_deref(),
            Some(survivor_ip),
            "{who}: {moved}"
        );
    }
    // A third relay, on the dead one's IP (the survivor's would make it share a relay with
    // the path), another port.
    let relay3_addr = format!("{killed_ip}:3480");
    let key3 = m.dir.join("relay3.key");
    let relay3 = start_relayd(
        &m.lab,
        &[
            "--listen",
            &relay3_addr,
            "--supernode",
            &m.node,
            "--identity",
            key3.to_str().unwrap(),
            "--allow-peer",
            "198.51.100.0/24",
        ],
    );
    // Each end drops the dead allocation when its transactions time out (the TURN client's
    // seven sends, about 13 s), asks for offers and allocates on the new relay: a `relay`
    // event naming it.
    let replenish = Duration::from_secs(30);
    for (p, who) in [(&mut alice, "caller"), (&mut bob, "callee")] {
        let t0 = Instant::now();
        loop {
            let left = replenish.saturating_sub(t0.elapsed());
            let ev = p
                .wait("relay", left)
                .unwrap_or_else(|| panic!("the {who} gets a new standby relay: {:#?}", p.seen));
            if ev["server"] == relay3_addr.as_str() {
                eprintln!(
                    "relay_failover: {who}'s new standby after {:?}: {ev}",
                    t0.elapsed()
                );
                break;
            }
        }
    }
    // Consent has checked the new standby pairs (the peer learned the candidate by
    // signalling, a round trip): the measurement of the second move starts here.
    std::thread::sleep(Duration::from_secs(2));
    alice.drain();
    bob.drain();
    // The call may have moved onto the new relay by itself (its pair can rank higher): kill
    // whichever of the two carries it.
    let now_ip = relay_ip_of(&current_path(&alice)).expect("relayed");
    let mut relay3 = Some(relay3);
    let target = if now_ip == survivor_ip {
        kill_carrier(&mut m, &mut relay2, survivor_ip);
        killed_ip
    } else {
        assert_eq!(now_ip, killed_ip, "on the third relay");
        drop(relay3.take());
        survivor_ip
    };
    let killed_ms = unix_ms();
    let mut moves = Vec::new();
    for (p, who) in [(&mut alice, "caller"), (&mut bob, "callee")] {
        let moved = p
            .wait("path", RELAYED_CONSENT_TIMEOUT + Duration::from_secs(3))
            .unwrap_or_else(|| panic!("the {who} moves again: {:#?}", p.seen));
        assert_eq!(
            relay_ip_of(&moved).as_deref(),
            Some(target),
            "the {who} moved to the remaining relay: {moved}"
        );
        moves.push(moved["at"].as_f64().expect("wall clock") - killed_ms);
    }
    eprintln!(
        "relay_failover: second relay death → moved after: caller {:.0} ms, callee {:.0} ms",
        moves[0], moves[1]
    );
    assert!(
        moves.iter().all(|ms| *ms <= MAX_GAP.as_millis() as f64),
        "both ends move within {MAX_GAP:?} of the second kill: {moves:?} ms"
    );
    alice.control(serde_json::json!({"cmd": "hangup"}));
    assert!(alice.wait("ended", SIGNAL).is_some(), "{:#?}", alice.seen);
    assert!(bob.wait("ended", SIGNAL).is_some(), "{:#?}", bob.seen);
    drop(relay3);
    let _ = std::fs::remove_dir_all(&m.dir);
}
