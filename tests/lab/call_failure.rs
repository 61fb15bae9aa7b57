//! Calls that lose part of the network mid-call, in the lab (issue 11, acceptance 4). The ends of
//! calls that need no NAT (unknown user, offline, rejected, busy, no answer, cancel) are in
//! `tests/loopback/call_loopback.rs`.
//! - a relayed-only call (symmetric ↔ symmetric) whose only relay is killed ends at both ends
//!   with `no-path` (exit 9 for `dial`) within 10 s of the kill; with a second relay the call
//!   moves to it instead (`relay_failover`);
//! - a direct call survives the relay's death and the death of the callee's supernode, or of
//!   the caller's (a mesh of two): audio keeps flowing, the party re-registers through the
//!   other supernode, and the hang-up afterwards still reaches the callee; a hang-up while the
//!   caller's supernode is dead (its bye has no route) still ends the callee, with `no-path`,
//!   once consent lapses;
//! - a NAT rebinding mid-call (the caller's symmetric NAT forgets its mappings, so the caller
//!   comes back from a new port) recovers within 2 s (plus the 200 ms resolution of the stall
//!   detection): the caller's next consent check (every 1 s ± 20 %) sees the new mapping and
//!   renominates; audio continues, the call does not end (the call is first seen on its direct
//!   path: on busy cores it may start on the relay and move there);
//! - `long_calls` (ignored; `scripts/check-long-call`): 15-minute relayed and direct calls.
//!
//! "Audio flows" is read from each end's `stats` (packets received), asked on the control
//! stream: both ends play a tone without pauses (no DTX), 50 packets a second each way.
//! Every wait is derived from the phone's timers ([`PhoneConfig`]) plus a margin; the figures
//! measured are printed (`--nocapture` shows them).

use crate::support::calls::{CallLab, Live, tone};
use crate::support::failover::direct_soon;
use crate::support::mesh_proc::{self, Sn};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use voxlab::{BoxOpts, Lab, LabNat};
use voxmesh::call::phone::PhoneConfig;

/// Audio packets a second (20 ms frames).
const PPS: f64 = 50.0;
/// Call set-up in the lab (registration, invite, ICE, a relay allocation) takes well under a
/// second; this bounds it on a machine whose cores are busy.
const SETUP: Duration = Duration::from_secs(20);
/// A signalling exchange through the supernodes (retransmitted by the session layer).
const SIGNAL: Duration = Duration::from_secs(10);

/// A tone for each end, long enough for every scenario below (they hang up themselves).
fn tones(m: &CallLab) -> (String, String) {
    let (a, b) = (m.dir.join("a.wav"), m.dir.join("b.wav"));
    tone(&a, 440.0, 120.0);
    tone(&b, 660.0, 120.0);
    (
        a.to_str().unwrap().to_string(),
        b.to_str().unwrap().to_string(),
    )
}

/// Packets received so far by `p`'s call.
fn received(p: &mut Live) -> u64 {
    p.stats()["received"].as_u64().expect("stats.received")
}

/// Checks that audio reaches both ends over `window` (at least 80 % of the packets sent; the
/// jitter buffer and the stats' own timing explain the rest), and that neither end reports the
/// call ending or losing its path meanwhile.
fn flows(a: &mut Live, b: &mut Live, window: Duration, what: &str) {
    let (a0, b0) = (received(a), received(b));
    let t0 = Instant::now();
    // The measurement window itself (not a synchronisation): media is sent every 20 ms.
    std::thread::sleep(window);
    let (a1, b1) = (received(a), received(b));
    let want = (0.8 * PPS * t0.elapsed().as_secs_f64()) as u64;
    assert!(
        a1 - a0 >= want && b1 - b0 >= want,
        "{what}: audio flows both ways: caller got {}, callee got {} packets in {:?} (want {want})",
        a1 - a0,
        b1 - b0,
        t0.elapsed()
    );
    for p in [a, b] {
        p.drain();
        let bad: Vec<_> = p
            .seen
            .iter()
            .filter(|e| e["event"] == "ended" || e["event"] == "path-lost")
            .collect();
        assert!(bad.is_empty(), "{what}: {} {bad:?}", p.proc.name);
    }
}

/// Places a call from box `from` to `callee` (started `--auto`), the caller with `caller_args`
/// (`--play FILE` and more) and hanging up after `secs` (unless told earlier); returns
/// (caller, callee) once both are connected.
fn call(
    m: &CallLab,
    from: u32,
    caller_args: &[&str],
    callee: Live,
    callee_id: &str,
    tag: &str,
    secs: f64,
) -> (Live, Live) {
    let secs = secs.to_string();
    let mut args = vec!["--duration", &secs];
    args.extend_from_slice(caller_args);
    let mut alice = m.dial_live(
        &m.host_ns(from, 0),
        &format!("{tag}-alice"),
        callee_id,
        &args,
    );
    let mut bob = callee;
    alice
        .wait("connected", SETUP)
        .unwrap_or_else(|| panic!("{tag}: the caller connects: {:#?}", alice.seen));
    bob.wait("connected", SETUP)
        .unwrap_or_else(|| panic!("{tag}: the callee connects: {:#?}", bob.seen));
    (alice, bob)
}

/// Waits for `ended` at `p` (bounded); when it came, measured from `since`.
fn ended_after(p: &mut Live, since: Instant, limit: Duration) -> (serde_json::Value, Duration) {
    let e = p.wait("ended", limit).unwrap_or_else(|| {
        panic!(
            "{} ends within {limit:?} of the kill: {:#?}",
            p.proc.name, p.seen
        )
    });
    (e, since.elapsed())
}

#[test]
fn a_relayed_call_ends_with_no_path_within_10_s_when_its_relay_dies() {
    let test = "call_failure_relay_dies";
    if !Lab::ready_or_skip(test) {
        return;
    }
    let mut m = CallLab::new(
        &[
            (1, BoxOpts::new(LabNat::Symmetric)),
            (2, BoxOpts::new(LabNat::Symmetric)),
        ],
        "call-fail-relay",
    );
    let (a, b) = tones(&m);
    let (bob, bob_id) = m.answer_live(&m.host_ns(2, 0), "bob", &["--auto", "--play", &b]);
    let (mut alice, mut bob) = call(&m, 1, &["--play", &a], bob, &bob_id, "relay", 300.0);
    assert_eq!(
        alice.seen("connected").unwrap()["path"],
        "relayed",
        "symmetric ↔ symmetric goes through the relay: {:#?}",
        alice.seen
    );
    flows(
        &mut alice,
        &mut bob,
        Duration::from_secs(2),
        "before the kill",
    );

    // SIGKILL: the relay says goodbye to nobody.
    drop(m.relay.take());
    let killed = Instant::now();
    // Consent notices the dead path (on the ordinary timeout: with one relay in the lab there
    // is no standby relay to move to, see `relay_failover` for two), ICE restarts once, then
    // the call ends with no path: the phone's own budget, plus a margin so a slow end is
    // measured rather than cut off.
    let cfg = PhoneConfig::default();
    let budget =
        cfg.ice.consent_timeout + cfg.restart_after + cfg.path_timeout + Duration::from_secs(10);
    let (ea, ta) = ended_after(&mut alice, killed, budget);
    let (eb, tb) = ended_after(&mut bob, killed, budget);
    eprintln!(
        "call_failure: relay killed → ended: caller {:.2} s ({}), callee {:.2} s ({})",
        ta.as_secs_f64(),
        ea["reason"],
        tb.as_secs_f64(),
        eb["reason"]
    );
    assert_eq!(ea["reason"], "no-path", "caller: {ea}");
    assert_eq!(eb["reason"], "no-path", "callee: {eb}");
    assert!(
        ta < Duration::from_secs(10) && tb < Duration::from_secs(10),
        "both ends end within 10 s of the kill: caller {ta:?}, callee {tb:?}"
    );
    assert_eq!(alice.exit(SIGNAL), Some(9), "dial exits 9 (no path)");
    let _ = std::fs::remove_dir_all(&m.dir);
}

/// Waits (bounded) until both supernodes list both as members.
fn wait_mesh(controls: &[std::path::PathBuf]) {
    let t0 = Instant::now();
    let rt = mesh_proc::rt();
    // SWIM joins in a round trip or two; 20 s bounds it on a busy machine.
    while !controls.iter().all(|c| {
        rt.block_on(voxmesh::net::drivers::supernode::query_status(c, false))
            .ok()
            .is_some_and(|v| v["members"].as_array().map(|m| m.len()) == Some(controls.len()))
    }) {
        assert!(t0.elapsed() < SETUP, "the mesh of two did not form");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_direct_call_survives_the_relay_and_the_callees_supernode_dying() {
    if !Lab::ready_or_skip("call_failure_direct_survives_callee_sn") {
        return;
    }
    survives(false, false);
}

#[test]
fn a_direct_call_survives_the_callers_supernode_dying() {
    if !Lab::ready_or_skip("call_failure_direct_survives_caller_sn") {
        return;
    }
    survives(true, false);
}

#[test]
fn a_hang_up_while_the_callers_supernode_is_dead_still_ends_the_call_at_both_ends() {
    if !Lab::ready_or_skip("call_failure_hang_up_in_failover") {
        return;
    }
    survives(true, true);
}

/// A direct call between two supernodes' users: the relay is killed (unless `callers`), then
/// the supernode of the callee (or, with `callers`, of the caller: a `dial`, which keeps no
/// standby session); the call goes on, the party re-registers, and the hang-up reaches the
/// callee. With `at_once`, the caller hangs up right after its supernode died, before it could
/// re-register: its bye has no route, and the callee must still end (once consent lapses).
fn survives(callers: bool, at_once: bool) {
    let mut m = CallLab::new(
        &[
            (1, BoxOpts::new(LabNat::FullCone)),
            (2, BoxOpts::new(LabNat::PortRestrictedCone)),
        ],
        match (callers, at_once) {
            (true, true) => "call-fail-direct-caller-gap",
            (true, false) => "call-fail-direct-caller",
            _ => "call-fail-direct-callee",
        },
    );
    // A second supernode in a mesh with the first; the party whose supernode dies registers
    // there, the other on the first.
    let listen: SocketAddr = "198.51.100.1:4102".parse().unwrap();
    let mut sn2: Sn = mesh_proc::start_supernode(
        m.lab
            .command(&m.lab.server_ns(), env!("CARGO_BIN_EXE_supernoded")),
        listen,
        &m.dir,
        2,
        Some(&m.node),
    );
    wait_mesh(&[m.dir.join("sn.sock"), sn2.control.clone()]);
    let sn2_id = sn2.key.id.to_string();
    let sn2_entry = format!("{}@{}", sn2.key, sn2.addr);
    let (a, b) = tones(&m);
    let sn_of = |callee: bool| {
        if callee != callers {
            &sn2_entry
        } else {
            &m.node
        }
    };
    let mut cmd = m
        .lab
        .command(&m.host_ns(2, 0), env!("CARGO_BIN_EXE_answer"));
    cmd.args(["-s", sn_of(true), "--identity"])
        .arg(m.dir.join("bob.key"))
        .arg("--host-cache")
        .arg(m.dir.join("bob.hosts"))
        .args(["--control", "-", "--auto", "--play", &b])
        .stderr(std::process::Stdio::inherit());
    let mut bob = Live::spawn(cmd, "answer");
    let reg = bob
        .wait("registered", SETUP)
        .unwrap_or_else(|| panic!("bob registers: {:#?}", bob.seen));
    let bob_id = reg["user"].as_str().unwrap().to_string();
    let mut cmd = m.lab.command(&m.host_ns(1, 0), env!("CARGO_BIN_EXE_dial"));
    cmd.args(["-s", sn_of(false), "--identity"])
        .arg(m.dir.join("alice.key"))
        .arg("--host-cache")
        .arg(m.dir.join("alice.hosts"))
        .arg(&bob_id)
        .args(["--control", "-", "--play", &a, "--duration", "300"]) // hung up below
        .stderr(std::process::Stdio::inherit());
    let mut alice = Live::spawn(cmd, "dial");
    alice
        .wait("connected", SETUP)
        .unwrap_or_else(|| panic!("the caller connects: {:#?}", alice.seen));
    bob.wait("connected", SETUP)
        .unwrap_or_else(|| panic!("the callee connects: {:#?}", bob.seen));
    let on_sn2 = |p: &Live| p.seen("registered").unwrap()["supernode"] == sn2_id;
    assert!(
        on_sn2(if callers { &alice } else { &bob }),
        "the party to lose its supernode is on sn2: {:#?} {:#?}",
        alice.seen,
        bob.seen
    );
    let c = direct_soon(&mut alice);
    assert_eq!(c["path"], "direct", "full cone ↔ port-restricted: {c}");
    flows(
        &mut alice,
        &mut bob,
        Duration::from_secs(2),
        "before the kills",
    );

    // A path that depended on the relay or the supernode would lose consent within
    // consent_timeout and end (or change) soon after restart_after: watch that long, and a
    // margin.
    let cfg = PhoneConfig::default();
    let watch = cfg.ice.consent_timeout + cfg.restart_after + Duration::from_secs(1);
    if !callers {
        drop(m.relay.take());
        flows(&mut alice, &mut bob, watch, "after the relay died");
    }

    // The party's supernode dies (SIGKILL): media does not touch it; the party re-registers
    // through the other one (learnt from the mesh).
    sn2.kill();
    let killed = Instant::now();
    if at_once {
        alice.control(serde_json::json!({"cmd": "hangup"}));
        let (ea, _) = ended_after(&mut alice, killed, SIGNAL);
        assert_eq!(ea["reason"], "hangup", "{ea}");
        assert_eq!(alice.exit(SIGNAL), Some(0), "dial exits");
        // The bye cannot arrive; the callee notices the caller gone as a dead path: consent
        // lapses, one ICE restart (whose signalling finds the caller offline), the end.
        let budget = cfg.ice.consent_timeout + cfg.restart_after + cfg.path_timeout;
        let (eb, tb) = ended_after(&mut bob, killed, budget + SIGNAL);
        eprintln!(
            "call_failure: hang-up with the caller's supernode dead: the callee ended {:.2} s later ({}: {})",
            tb.as_secs_f64(),
            eb["reason"],
            eb["detail"]
        );
        assert!(
            eb["reason"] == "remote-hangup" || eb["reason"] == "no-path",
            "the callee ends as a hang-up or a lost path, not as anything else: {eb}"
        );
        assert!(tb <= budget + Duration::from_secs(2), "{tb:?}");
        return;
    }
    flows(&mut alice, &mut bob, watch, "after a supernode died");
    let party = if callers { &mut alice } else { &mut bob };
    // The re-registration may have come while audio was being watched (then it is in `seen`).
    let again = |e: &serde_json::Value| e["event"] == "registered" && e["failover"] == true;
    let rereg = match party.seen.iter().find(|e| again(e)) {
        Some(e) => e.clone(),
        None => party
            .wait("registered", SETUP)
            .unwrap_or_else(|| panic!("the party registers again: {:#?}", party.seen)),
    };
    assert!(again(&rereg), "{rereg}");
    assert_ne!(rereg["supernode"], sn2_id, "{rereg}");
    eprintln!(
        "call_failure: {} re-registered (within {:.2} s of its supernode's death): {rereg}",
        party.proc.name,
        killed.elapsed().as_secs_f64()
    );
    flows(
        &mut alice,
        &mut bob,
        Duration::from_secs(2),
        "after the party re-registered",
    );

    // The hang-up still reaches the callee (bye routed through the surviving supernode).
    alice.control(serde_json::json!({"cmd": "hangup"}));
    let hung = Instant::now();
    let (ea, _) = ended_after(&mut alice, hung, SIGNAL);
    assert_eq!(ea["reason"], "hangup", "{ea}");
    let (eb, tb) = ended_after(&mut bob, hung, SIGNAL);
    assert_eq!(eb["reason"], "remote-hangup", "bob hears the bye: {eb}");
    eprintln!(
        "call_failure: bye reached bob {:.0} ms after the hang-up",
        tb.as_secs_f64() * 1000.0
    );
    assert_eq!(alice.exit(SIGNAL), Some(0));
    let _ = std::fs::remove_dir_all(&m.dir);
}

/// Polls `p`'s received-packet counter every `step` for `window`; returns (time since
/// `since`, count) samples.
fn poll_received(
    a: &mut Live,
    b: &mut Live,
    since: Instant,
    window: Duration,
) -> Vec<(Duration, u64, u64)> {
    let mut v = Vec::new();
    while since.elapsed() < window {
        let (ra, rb) = (received(a), received(b));
        v.push((since.elapsed(), ra, rb));
        std::thread::sleep(Duration::from_millis(50));
    }
    v
}

/// From samples (time, count), the longest time the count did not grow.
fn longest_gap_in(samples: &[(Duration, u64)]) -> Duration {
    let (mut gap, mut since) = (
        Duration::ZERO,
        samples.first().map(|s| s.0).unwrap_or_default(),
    );
    for w in samples.windows(2) {
        if w[1].1 > w[0].1 {
            since = w[1].0;
        } else {
            gap = gap.max(w[1].0 - since);
        }
    }
    gap
}

/// From samples (time, count), the end of the last stall: the time of the last sample whose
/// count did not grow over the preceding `stall` (zero when the count never stalled).
fn last_stall_end(samples: &[(Duration, u64)], stall: Duration) -> Duration {
    let mut end = Duration::ZERO;
    for (i, &(t, n)) in samples.iter().enumerate() {
        let earlier = samples[..i].iter().rev().find(|(t0, _)| t - *t0 >= stall);
        if let Some(&(_, n0)) = earlier
            && n == n0
        {
            end = t;
        }
    }
    end
}

#[test]
fn a_nat_rebinding_mid_call_recovers_within_2_s() {
    let test = "call_failure_rebinding";
    if !Lab::ready_or_skip(test) {
        return;
    }
    // The caller behind a symmetric NAT: its new mapping after the flush gets a new random
    // port, so the callee sees the caller move (a true rebinding, not only a filter reset).
    let m = CallLab::new(
        &[
            (1, BoxOpts::new(LabNat::Symmetric)),
            (2, BoxOpts::new(LabNat::FullCone)),
        ],
        "call-fail-rebind",
    );
    let (a, b) = tones(&m);
    let (bob, bob_id) = m.answer_live(&m.host_ns(2, 0), "bob", &["--auto", "--play", &b]);
    let (mut alice, mut bob) = call(&m, 1, &["--play", &a], bob, &bob_id, "rebind", 300.0);
    // Symmetric ↔ full cone goes direct (perhaps after starting on the relay).
    let c = direct_soon(&mut alice);
    assert_eq!(c["path"], "direct", "symmetric ↔ full cone: {c}");
    flows(
        &mut alice,
        &mut bob,
        Duration::from_secs(2),
        "before the rebinding",
    );

    m.lab.reset(1).unwrap();
    let flushed = Instant::now();
    let cfg = PhoneConfig::default();
    // Watch long enough to see the slowest recovery the phone allows (consent lost, then an ICE
    // restart) and the flow after it.
    let window = cfg.ice.consent_timeout + cfg.restart_after + Duration::from_secs(4);
    let samples = poll_received(&mut alice, &mut bob, flushed, window);
    // A 20 ms packet stream whose counter does not move for 200 ms (10 packets) has stopped (the stats
    // sampling itself takes a few ms; the jitter buffer does not delay the counter).
    let stall = Duration::from_millis(200);
    let at_a: Vec<_> = samples.iter().map(|s| (s.0, s.1)).collect();
    let at_b: Vec<_> = samples.iter().map(|s| (s.0, s.2)).collect();
    let (ra, rb) = (last_stall_end(&at_a, stall), last_stall_end(&at_b, stall));
    let (ga, gb) = (longest_gap_in(&at_a), longest_gap_in(&at_b));
    alice.drain();
    bob.drain();
    let paths: Vec<_> = alice
        .seen
        .iter()
        .chain(bob.seen.iter())
        .filter(|e| e["event"] == "path" || e["event"] == "path-lost")
        .collect();
    eprintln!(
        "call_failure: NAT rebinding → media flowing again: at the caller {:.2} s (longest gap {:.0} ms), at the callee {:.2} s (longest gap {:.0} ms); {paths:?}",
        ra.as_secs_f64(),
        ga.as_secs_f64() * 1000.0,
        rb.as_secs_f64(),
        gb.as_secs_f64() * 1000.0
    );
    // Flowing at the end of the window (the stall, if any, ended).
    flows(
        &mut alice,
        &mut bob,
        Duration::from_secs(2),
        "after the rebinding",
    );
    // 2 s, plus one stall detection interval: a stall is only seen as over at the next sample
    // that grew after it.
    let limit = Duration::from_secs(2) + stall;
    assert!(
        ra <= limit && rb <= limit,
        "media flows again within {limit:?} of the rebinding: caller {ra:?}, callee {rb:?}"
    );
    assert!(
        ga <= limit && gb <= limit,
        "no gap in the media longer than {limit:?}: caller {ga:?}, callee {gb:?}"
    );
    alice.control(serde_json::json!({"cmd": "hangup"}));
    let (ea, _) = ended_after(&mut alice, Instant::now(), SIGNAL);
    assert_eq!(ea["reason"], "hangup", "{ea}");
    let _ = std::fs::remove_dir_all(&m.dir);
}

/// One long call's record: per-second `stats` samples at both ends (time since connected,
/// received at the caller, at the callee, lost at the callee).
struct Long {
    samples: Vec<(f64, u64, u64, u64)>,
    ended: Vec<serde_json::Value>,
}

/// Holds a call for `secs`, sampling both ends' stats every second; `mute` (from, to) in
/// seconds mutes the caller meanwhile.
fn hold_call(alice: &mut Live, bob: &mut Live, secs: f64, mute: Option<(f64, f64)>) -> Long {
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let (mut muted, mut unmuted) = (false, false);
    while t0.elapsed().as_secs_f64() < secs {
        let t = t0.elapsed().as_secs_f64();
        if let Some((from, to)) = mute {
            if t >= from && !muted {
                alice.control(serde_json::json!({"cmd": "mute"}));
                muted = true;
            }
            if t >= to && !unmuted {
                alice.control(serde_json::json!({"cmd": "unmute"}));
                unmuted = true;
            }
        }
        let sa = alice.stats();
        let sb = bob.stats();
        samples.push((
            t,
            sa["received"].as_u64().unwrap_or(0),
            sb["received"].as_u64().unwrap_or(0),
            sb["lost"].as_u64().unwrap_or(0),
        ));
        std::thread::sleep(Duration::from_secs(1));
    }
    alice.drain();
    bob.drain();
    let ended = alice
        .seen
        .iter()
        .chain(bob.seen.iter())
        .filter(|e| e["event"] == "ended")
        .cloned()
        .collect();
    Long { samples, ended }
}

/// The longest time (s) over which `pick`'s counter did not grow, among samples in [from, to).
fn longest_gap(l: &Long, pick: impl Fn(&(f64, u64, u64, u64)) -> u64, from: f64, to: f64) -> f64 {
    let s: Vec<_> = l
        .samples
        .iter()
        .filter(|x| x.0 >= from && x.0 < to)
        .collect();
    let (mut gap, mut since) = (0.0f64, s.first().map(|x| x.0).unwrap_or(0.0));
    for w in s.windows(2) {
        if pick(w[1]) > pick(w[0]) {
            since = w[1].0;
        } else {
            gap = gap.max(w[1].0 - since);
        }
    }
    gap
}

/// Packets received by the counter `pick` between times `from` and `to` (nearest samples).
fn between(
    l: &Long,
    pick: impl Fn(&(f64, u64, u64, u64)) -> u64,
    from: f64,
    to: f64,
) -> (u64, f64) {
    let a = l.samples.iter().find(|x| x.0 >= from).unwrap();
    let b = l.samples.iter().rev().find(|x| x.0 <= to).unwrap();
    (pick(b).saturating_sub(pick(a)), b.0 - a.0)
}

/// `scripts/check-long-call`: a relayed call (symmetric ↔ symmetric) and a direct one (full
/// cone ↔ port-restricted) held for `VOXMESH_LONG_CALL_SECS` (900 by default: past the TURN
/// permission lifetime, 300 s, and the allocation's, 600 s), side by side; the direct call's
/// caller is muted for the middle third. Prints one JSON line (`long-call: {...}`). Not in the
/// suite (minutes long).
/// A tone in 3 s bursts with 3 s of digital silence between (what DTX stops sending in).
fn bursts(path: &std::path::Path, hz: f64, secs: f64) {
    let mut w = hound::WavWriter::create(path, crate::support::calls::MONO_48K).unwrap();
    for i in 0..(48_000.0 * secs) as usize {
        let on = (i / (3 * 48_000)) % 2 == 0;
        let v = (2.0 * std::f64::consts::PI * hz * i as f64 / 48_000.0).sin();
        w.write_sample(if on { (0.3 * v * 32767.0) as i16 } else { 0 })
            .unwrap();
    }
    w.finalize().unwrap();
}

#[test]
#[ignore = "minutes long: run by scripts/check-long-call"]
fn long_calls() {
    let test = "call_failure_long_calls";
    if !Lab::ready_or_skip(test) {
        return;
    }
    let secs: f64 = std::env::var("VOXMESH_LONG_CALL_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(900.0);
    // With DTX (`--dtx` at both ends), the callee talks in 3 s bursts with 3 s of silence
    // between: in silence it sends a packet only every 400 ms, and the caller's longest gap
    // (at most 2 s, below) shows the path stayed open and audio resumed after each pause.
    let dtx = std::env::var("VOXMESH_LONG_CALL_DTX").is_ok_and(|v| v == "1");
    let extra: &'static [&'static str] = if dtx { &["--dtx"] } else { &[] };
    let run = |nat_a: LabNat, nat_b: LabNat, tag: &'static str, mute: bool| {
        std::thread::spawn(move || {
            let m = CallLab::new(
                &[(1, BoxOpts::new(nat_a)), (2, BoxOpts::new(nat_b))],
                &format!("call-long-{tag}"),
            );
            let (a, b) = (m.dir.join("a.wav"), m.dir.join("b.wav"));
            tone(&a, 440.0, secs + 60.0);
            if dtx {
                bursts(&b, 660.0, secs + 60.0);
            } else {
                tone(&b, 660.0, secs + 60.0);
            }
            let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
            let mut args = vec!["--auto", "--play", b];
            args.extend_from_slice(extra);
            let (bob, bob_id) = m.answer_live(&m.host_ns(2, 0), "bob", &args);
            let mut caller_args = vec!["--play", a];
            caller_args.extend_from_slice(extra);
            let (mut alice, mut bob) = call(&m, 1, &caller_args, bob, &bob_id, tag, secs + 120.0);
            let path = alice.seen("connected").unwrap()["path"].clone();
            let window = mute.then_some((secs / 3.0, 2.0 * secs / 3.0));
            let l = hold_call(&mut alice, &mut bob, secs, window);
            alice.control(serde_json::json!({"cmd": "hangup"}));
            let _ = alice.wait("ended", SIGNAL);
            let last = l.samples.last().unwrap();
            let end = last.0;
            let at_caller = |x: &(f64, u64, u64, u64)| x.1;
            let at_callee = |x: &(f64, u64, u64, u64)| x.2;
            let mut v = serde_json::json!({
                "path": path,
                "held_s": (end * 10.0).round() / 10.0,
                "received_by_caller": last.1,
                "received_by_callee": last.2,
                "lost_at_callee": last.3,
                "longest_gap_at_caller_s": longest_gap(&l, at_caller, 0.0, end + 1.0),
                "ended_early": l.ended,
            });
            match window {
                None => {
                    let (n, dt) = between(&l, at_callee, 0.0, end + 1.0);
                    v["longest_gap_at_callee_s"] =
                        longest_gap(&l, at_callee, 0.0, end + 1.0).into();
                    v["callee_share_of_expected"] =
                        ((n as f64 / (PPS * dt) * 1000.0).round() / 1000.0).into();
                }
                Some((from, to)) => {
                    // After the mute: from one sampling interval after the unmute to the end.
                    let (n, dt) = between(&l, at_callee, to + 1.0, end + 1.0);
                    let lost_before = l.samples.iter().find(|x| x.0 >= to + 1.0).unwrap().3;
                    // When the callee heard the caller again (to the sampling interval).
                    let muted_count = l.samples.iter().rev().find(|x| x.0 < to).unwrap().2;
                    let resumed = l
                        .samples
                        .iter()
                        .find(|x| x.0 >= to && x.2 > muted_count)
                        .map(|x| ((x.0 - to) * 100.0).round() / 100.0);
                    v["muted_s"] = [from, to].into();
                    v["after_mute"] = serde_json::json!({
                        "seconds": (dt * 10.0).round() / 10.0,
                        "received_by_callee": n,
                        "share_of_expected": (n as f64 / (PPS * dt) * 1000.0).round() / 1000.0,
                        "lost_at_callee": last.3 - lost_before,
                        "resumed_within_s": resumed,
                        "longest_gap_at_callee_s": longest_gap(&l, at_callee, to + 1.0, end + 1.0),
                    });
                }
            }
            let _ = std::fs::remove_dir_all(&m.dir);
            v
        })
    };
    let relayed = run(LabNat::Symmetric, LabNat::Symmetric, "relayed", false);
    let direct = run(LabNat::FullCone, LabNat::PortRestrictedCone, "direct", true);
    let (r, d) = (relayed.join().unwrap(), direct.join().unwrap());
    let out = serde_json::json!({"seconds": secs, "dtx": dtx, "relayed": r, "direct_muted": d});
    println!("long-call: {out}");
    // The acceptance: both calls stay up and lose no audio (after the mute, for the direct one).
    assert_eq!(r["path"], "relayed", "{out}");
    assert_eq!(d["path"], "direct", "{out}");
    assert!(r["ended_early"].as_array().unwrap().is_empty(), "{out}");
    assert!(d["ended_early"].as_array().unwrap().is_empty(), "{out}");
    assert!(
        r["longest_gap_at_callee_s"].as_f64().unwrap() <= 2.0,
        "{out}"
    );
    assert!(
        r["longest_gap_at_caller_s"].as_f64().unwrap() <= 2.0,
        "{out}"
    );
    assert!(
        d["longest_gap_at_caller_s"].as_f64().unwrap() <= 2.0,
        "{out}"
    );
    assert!(
        d["after_mute"]["longest_gap_at_callee_s"].as_f64().unwrap() <= 2.0,
        "{out}"
    );
    assert_eq!(d["after_mute"]["lost_at_callee"], 0, "{out}");
    // Sampled every second: audio is back by the first sample after the unmute.
    assert!(
        d["after_mute"]["resumed_within_s"].as_f64().unwrap() <= 2.0,
        "{out}"
    );
}

/// Clock drift (issue 12, acceptance 3): a direct call whose caller's audio clock runs
/// `VOXMESH_DRIFT_PPM` (default 100) ppm fast for `VOXMESH_DRIFT_SECS` (default 600), tones
/// both ways, beside a control call without drift in the same run (each in its own lab). Both
/// ends absorb it (the callee hears a fast sender, the caller plays out fast against a sender
/// on time): each end estimates the drift, its buffering stays level, and after the estimate
/// settles (two minutes) it accelerates or conceals no more often than the control call, whose
/// glitches are the machine's scheduling (uncorrected, 100 ppm adds a frame every 200 s).
/// Prints `drift: {...}`. Not in the suite (minutes long): run by scripts/check-drift.
#[test]
#[ignore = "minutes long: run by scripts/check-drift"]
fn clock_drift() {
    let test = "call_failure_clock_drift";
    if !Lab::ready_or_skip(test) {
        return;
    }
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (secs, ppm) = (
        env("VOXMESH_DRIFT_SECS", 600.0),
        env("VOXMESH_DRIFT_PPM", 100.0),
    );
    let drifting = std::thread::spawn(move || drift_call(secs, ppm, "drift"));
    let control = std::thread::spawn(move || drift_call(secs, 0.0, "nodrift"));
    let (d, c) = (drifting.join().unwrap(), control.join().unwrap());
    let out = serde_json::json!({"seconds": secs, "ppm": ppm, "drifting": d, "control": c});
    println!("drift: {out}");
    for who in ["caller", "callee"] {
        let (e, k) = (&d[who], &c[who]);
        // A fast sender seen by the callee, a fast playout by the caller: opposite signs.
        let sign = if who == "callee" { 1.0 } else { -1.0 };
        let est = e["drift_ppm"].as_f64().unwrap();
        assert!((est - sign * ppm).abs() < 0.3 * ppm, "{who}: {out}");
        assert_eq!(k["drift_ppm"].as_f64(), Some(0.0), "{who}: control: {out}");
        assert!(
            e["buffer_moved_ms"].as_f64().unwrap().abs() < 10.0,
            "{who}: {out}"
        );
        let glitches = e["glitches_after_settling"].as_f64().unwrap();
        let control = k["glitches_after_settling"].as_f64().unwrap();
        assert!(glitches <= control + 1.0, "{who}: {out}");
    }
}

/// One drift-check call (`ppm` on the caller's audio clock) for `secs`: each end's drift
/// estimate, buffering and glitches (accelerated or concealed frames beyond network losses)
/// after the estimate settles.
fn drift_call(secs: f64, ppm: f64, tag: &str) -> serde_json::Value {
    let m = CallLab::new(
        &[
            (1, BoxOpts::new(LabNat::FullCone)),
            (2, BoxOpts::new(LabNat::PortRestrictedCone)),
        ],
        &format!("call-{tag}"),
    );
    let (a, b) = (m.dir.join("a.wav"), m.dir.join("b.wav"));
    tone(&a, 440.0, secs + 60.0);
    tone(&b, 660.0, secs + 60.0);
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    // Both ends play out (recording what they hear): without a sink nothing pulls frames from
    // the jitter buffer.
    let (at_a, at_b) = (m.dir.join("at-alice.wav"), m.dir.join("at-bob.wav"));
    let (at_a, at_b) = (at_a.to_str().unwrap(), at_b.to_str().unwrap());
    let (bob, bob_id) = m.answer_live(
        &m.host_ns(2, 0),
        "bob",
        &["--auto", "--play", b, "--record", at_b],
    );
    let ppm_arg = ppm.to_string();
    let (mut alice, mut bob) = call(
        &m,
        1,
        &["--play", a, "--record", at_a, "--clock-ppm", &ppm_arg],
        bob,
        &bob_id,
        tag,
        secs + 120.0,
    );
    let t0 = Instant::now();
    // (t, caller's stats, callee's stats) every 5 s.
    let mut samples: Vec<(f64, serde_json::Value, serde_json::Value)> = Vec::new();
    while t0.elapsed().as_secs_f64() < secs {
        samples.push((t0.elapsed().as_secs_f64(), alice.stats(), bob.stats()));
        std::thread::sleep(Duration::from_secs(5));
    }
    alice.control(serde_json::json!({"cmd": "hangup"}));
    let _ = alice.wait("ended", SIGNAL);
    // The estimate needs 20 s of buckets and then holds a minute of them (shorter runs, for
    // trying the check out, settle after a third).
    let settle = f64::min(120.0, secs / 3.0);
    let end = |pick: fn(&(f64, serde_json::Value, serde_json::Value)) -> &serde_json::Value| {
        let after: Vec<_> = samples.iter().filter(|s| s.0 >= settle).collect();
        let first = pick(after[0]);
        let last = pick(after[after.len() - 1]);
        let n = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
        let buffer: Vec<f64> = after.iter().map(|s| n(pick(s), "buffer_ms")).collect();
        // Level: the mean buffering of the last minute less that of the first minute after
        // settling (a growing delay shows here; single samples move by a frame).
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let k = 12.min(buffer.len());
        let diff = |key: &str| n(last, key) - n(first, key);
        serde_json::json!({
            "drift_ppm": n(last, "drift_ppm"),
            "glitches_after_settling": diff("accelerated") + diff("concealed") - diff("lost"),
            "accelerated_after_settling": diff("accelerated"),
            "concealed_after_settling": diff("concealed"),
            "buffer_ms_min": buffer.iter().cloned().fold(f64::MAX, f64::min),
            "buffer_ms_max": buffer.iter().cloned().fold(f64::MIN, f64::max),
            "buffer_moved_ms": ((mean(&buffer[buffer.len() - k..]) - mean(&buffer[..k])) * 10.0)
                .round() / 10.0,
        })
    };
    let out = serde_json::json!({"caller": end(|s| &s.1), "callee": end(|s| &s.2)});
    let _ = std::fs::remove_dir_all(&m.dir);
    out
}
