//! Relay failover in the lab (issue 13, acceptance 2, the relay half): two `relayd` on the
//! lab's "internet", both registered with the supernode; a call between two symmetric-NAT
//! clients must go through a relay. Each end allocates on both relays, ranks them
//! (`relay-choice` event: the active relay and the standby) and keeps the standby's allocation
//! with its relayed candidate in ICE. The relay carrying the call is SIGKILLed mid-call: consent
//! on the relayed path (200 ms probes, 600 ms timeout) notices, ICE moves the call to the
//! standby relay's pair (a `path` event at both ends), with no signalling round trip, and the
//! call goes on.
//!
//! Measured on the received audio, three ways, each at most 1 s at both ends (see
//! `tests/support/failover.rs`): concealed audio, the recordings' longest gap, and the packet
//! counters' longest stall. The same measurement with promoted clients' relays is in
//! `promotion.rs`.
//!
//! A second test mutes both ends first (no media either way, as in DTX silence): consent alone
//! notices the dead relay, and both ends move within 1 s of the kill (by the `path` events'
//! wall clock).
//!
//! With one relay only, the call ends with `no-path` instead (`call_failure`).

use crate::support::calls::{CallLab, Live, RELAY};
use crate::support::common::{Proc, start_relayd};
use crate::support::failover::{
    MAX_GAP, SETUP, SIGNAL, audio_flows, current_path, hang_up_and_check_gaps, received,
    relay_ip_of, relayed_tone_call, watch_failover,
};
use crate::support::mesh_proc::rt;

use std::path::Path;
use std::time::{Duration, Instant};

use voxlab::{BoxOpts, Lab, LabNat};
use voxmesh::call::phone::RELAYED_CONSENT_TIMEOUT;
use voxmesh::net::drivers::supernode::query_status;

/// The second relay: on the lab server's other address (the first relay is on [`RELAY`]), so
/// the two relays' relayed addresses differ by IP.
const RELAY2: &str = "198.51.100.1:3479";

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

/// A relayed call in progress over two relays: both parties, the second relay, the lab, the IP
/// of the relay carrying the call. (Fields drop in this order: the parties first, the lock last.)
struct Failover {
    alice: Live,
    bob: Live,
    relay2: Option<Proc>,
    m: CallLab,
    ip: String,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// A `relayd` listening on `listen` (identity `KEY.key` in the lab's directory) that offers
/// itself through the lab's supernode.
fn start_relay(m: &CallLab, listen: &str, key: &str) -> Proc {
    let key = m.dir.join(format!("{key}.key"));
    start_relayd(
        &m.lab,
        &[
            "--listen",
            listen,
            "--supernode",
            &m.node,
            "--identity",
            key.to_str().unwrap(),
            "--allow-peer",
            "198.51.100.0/24",
        ],
    )
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
/// ranked both relays and that audio flows through a relay. `None` when the lab cannot run
/// here.
fn start(test: &str) -> Option<Failover> {
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
    let relay2 = Some(start_relay(&m, RELAY2, "relay2"));
    wait_relays(&m.dir.join("sn.sock"), 2);
    let (alice, bob, ip) =
        relayed_tone_call(&m, &m.host_ns(1, 0), &m.host_ns(2, 0), "relay_failover");
    Some(Failover {
        alice,
        bob,
        relay2,
        m,
        ip,
        _serial: serial,
    })
}

impl Failover {
    /// Waits (bounded: relayed consent's timeout plus a margin) until both ends report a path
    /// through the relay at `to`; returns when each moved, in ms after `killed_ms`.
    fn both_move(&mut self, to: &str, killed_ms: f64, what: &str) -> Vec<f64> {
        let mut moves = Vec::new();
        for (p, who) in [(&mut self.alice, "caller"), (&mut self.bob, "callee")] {
            let moved = p
                .wait("path", RELAYED_CONSENT_TIMEOUT + Duration::from_secs(3))
                .unwrap_or_else(|| panic!("the {who} moves {what}: {:#?}", p.seen));
            assert_eq!(
                relay_ip_of(&moved).as_deref(),
                Some(to),
                "the {who} moved {what} to the relay at {to}: {moved}"
            );
            let at = moved["at"]
                .as_f64()
                .expect("a path event carries the wall clock");
            moves.push(at - killed_ms);
        }
        eprintln!(
            "relay_failover: {what}: moved after: caller {:.0} ms, callee {:.0} ms",
            moves[0], moves[1]
        );
        moves
    }

    /// The caller hangs up; both ends end the call.
    fn hang_up(&mut self) {
        self.alice.control(serde_json::json!({"cmd": "hangup"}));
        assert!(
            self.alice.wait("ended", SIGNAL).is_some(),
            "{:#?}",
            self.alice.seen
        );
        // The callee's recording closes with its call, before the directory goes.
        assert!(
            self.bob.wait("ended", SIGNAL).is_some(),
            "{:#?}",
            self.bob.seen
        );
    }

    /// Stops the second relay and removes the lab's directory (the rest stops when dropped).
    fn finish(mut self) {
        drop(self.relay2.take());
        let _ = std::fs::remove_dir_all(&self.m.dir);
    }
}

/// Both ends' moves were within [`MAX_GAP`] of the kill.
fn assert_quick(moves: &[f64], what: &str) {
    assert!(
        moves.iter().all(|ms| *ms <= MAX_GAP.as_millis() as f64),
        "both ends move within {MAX_GAP:?} of the {what}: {moves:?} ms"
    );
}

#[test]
fn a_relayed_call_moves_to_the_standby_relay_within_1_s_when_its_relay_dies() {
    let Some(mut f) = start("relay_failover") else {
        return;
    };
    let mut ips = None;
    let (stall, moves) = watch_failover(&mut f.alice, &mut f.bob, || {
        ips = Some(kill_carrier(&mut f.m, &mut f.relay2, &f.ip));
    });
    let (killed_ip, survivor_ip) = ips.unwrap();
    for (moved, who) in moves.iter().zip(["caller", "callee"]) {
        assert_eq!(
            relay_ip_of(moved).as_deref(),
            Some(survivor_ip),
            "the {who}'s call moved to the standby relay: {moved}"
        );
        eprintln!("relay_failover: {who} moved: {moved}");
    }
    // Audio flows both ways on the standby.
    audio_flows(&mut f.alice, &mut f.bob, 0.8, "after the move");
    hang_up_and_check_gaps(
        &f.m,
        &mut f.alice,
        &mut f.bob,
        &stall,
        &format!("relay_failover: relay {killed_ip} killed"),
    );
    f.finish();
}

#[test]
fn a_silent_call_moves_to_the_standby_relay_within_1_s_too() {
    // Both ends muted (no media either way, as in DTX silence): only consent, on its own timer,
    // can notice the dead relay. The move is timed by the `path` events' wall clock.
    let Some(mut f) = start("relay_failover_silent") else {
        return;
    };
    for p in [&mut f.alice, &mut f.bob] {
        p.control(serde_json::json!({"cmd": "mute"}));
    }
    // Wait (bounded) until no media arrives at either end any more: the mutes took effect.
    let t0 = Instant::now();
    let mut last = (received(&mut f.alice), received(&mut f.bob));
    loop {
        // The measurement step: 200 ms is ten frames of a stream that still flows.
        std::thread::sleep(Duration::from_millis(200));
        let now = (received(&mut f.alice), received(&mut f.bob));
        if now == last {
            break;
        }
        last = now;
        assert!(t0.elapsed() < SIGNAL, "muting stops the media");
    }
    f.alice.drain();
    f.bob.drain();
    let (_, survivor_ip) = kill_carrier(&mut f.m, &mut f.relay2, &f.ip);
    let killed_ms = unix_ms();
    let what = format!("silent, relay {} killed", f.ip);
    let moves = f.both_move(survivor_ip, killed_ms, &what);
    assert_quick(&moves, "kill");
    // Unmuted, audio flows both ways on the standby.
    for p in [&mut f.alice, &mut f.bob] {
        p.control(serde_json::json!({"cmd": "unmute"}));
    }
    audio_flows(&mut f.alice, &mut f.bob, 0.6, "after the move");
    f.hang_up();
    f.finish();
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
    let Some(mut f) = start("relay_failover_twice") else {
        return;
    };
    let (killed_ip, survivor_ip) = kill_carrier(&mut f.m, &mut f.relay2, &f.ip);
    let _ = f.both_move(survivor_ip, unix_ms(), "after the first kill");
    // A third relay, on the dead one's IP (the survivor's would make it share a relay with
    // the path), another port.
    let relay3_addr = format!("{killed_ip}:3480");
    let relay3 = start_relay(&f.m, &relay3_addr, "relay3");
    // Each end drops the dead allocation when its transactions time out (the TURN client's
    // seven sends, about 13 s), asks for offers and allocates on the new relay: a `relay`
    // event naming it.
    let replenish = Duration::from_secs(30);
    for (p, who) in [(&mut f.alice, "caller"), (&mut f.bob, "callee")] {
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
    f.alice.drain();
    f.bob.drain();
    // The call may have moved onto the new relay by itself (its pair can rank higher): kill
    // whichever of the two carries it.
    let now_ip = relay_ip_of(&current_path(&f.alice)).expect("relayed");
    let mut relay3 = Some(relay3);
    let target = if now_ip == survivor_ip {
        kill_carrier(&mut f.m, &mut f.relay2, survivor_ip);
        killed_ip
    } else {
        assert_eq!(now_ip, killed_ip, "on the third relay");
        drop(relay3.take());
        survivor_ip
    };
    let moves = f.both_move(target, unix_ms(), "again, the second relay dead");
    assert_quick(&moves, "second kill");
    f.hang_up();
    drop(relay3);
    f.finish();
}
