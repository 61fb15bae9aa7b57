//! Calls on loopback, one supernode: how calls end and what `dial` exits with.
//! - a call to an ID nobody registered: `unknown-user`, exit 4;
//! - a call the callee rejects (on its control stream): `rejected`, exit 6;
//! - a call to a callee already in a call (`--max-calls 1`): `busy`, exit 7;
//! - a normal call: both ends show one SAS, DTMF digits arrive, the callee sees `remote-hangup`;
//! - a call nobody picks up: `no-answer` after `--ring-timeout`, exit 8 (the callee: `cancelled`);
//! - SIGINT or SIGTERM to `dial` while it rings: `cancelled`, exit 11, at both ends;
//! - a call to a user who registered and then left: `offline`, exit 3.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::loopback::{Kill, ended, lines, run, supernode, tmp};

/// Waits (at most `limit`) for the event `name` on `rx`.
fn wait_event(
    rx: &mpsc::Receiver<serde_json::Value>,
    name: &str,
    limit: Duration,
) -> Option<serde_json::Value> {
    crate::support::loopback::wait_event(rx, name, limit, &mut Vec::new())
}

/// An `answer` with `args`, its control stream on stdin; returns it, its events and its ID.
fn answer(
    dir: &std::path::Path,
    node: &str,
    name: &str,
    args: &[&str],
) -> (Kill, mpsc::Receiver<serde_json::Value>, String) {
    let mut a = vec!["--control", "-"];
    a.extend_from_slice(args);
    crate::support::loopback::answer(dir, node, name, &a)
}

/// A `dial` as alice to `who`, run to its end.
fn dial(
    dir: &std::path::Path,
    node: &str,
    who: &str,
    args: &[&str],
) -> (i32, Vec<serde_json::Value>) {
    run(crate::support::loopback::dial_cmd(
        dir, node, "alice", who, args,
    ))
}

#[test]
fn calls_end_with_the_documented_reason_and_exit_status() {
    let dir = tmp("ends");
    let (_sn, node) = supernode(&dir);

    // Nobody registered this ID (a fresh key's).
    let nobody = voxmesh::identity::Identity::from_seed(&[7; 32])
        .id()
        .to_string();
    let (code, ev) = dial(&dir, &node, &nobody, &[]);
    assert_eq!((code, ended(&ev).as_str()), (4, "unknown-user"), "{ev:#?}");

    // Rejected on the callee's control stream.
    let (mut bob, bob_rx, bob_id) = answer(&dir, &node, "bob", &[]);
    let dial_t = {
        let (dir, node, id) = (dir.clone(), node.clone(), bob_id.clone());
        std::thread::spawn(move || dial(&dir, &node, &id, &[]))
    };
    // The invite reaches the callee in one routed round trip; the caller's ring timeout (60 s)
    // bounds the wait from above.
    wait_event(&bob_rx, "incoming", Duration::from_secs(20)).expect("bob's phone rings");
    writeln!(
        bob.0.stdin.as_mut().unwrap(),
        r#"{{"cmd":"reject","reason":"not now"}}"#
    )
    .unwrap();
    let (code, ev) = dial_t.join().unwrap();
    assert_eq!((code, ended(&ev).as_str()), (6, "rejected"), "{ev:#?}");
    drop(bob);

    // Busy: carol is in a call with bob (bob takes one at a time).
    let (_bob, bob_rx, bob_id) = answer(&dir, &node, "bob2", &["--auto"]);
    let carol = {
        let (dir, node, id) = (dir.clone(), node.clone(), bob_id.clone());
        std::thread::spawn(move || {
            Command::new(env!("CARGO_BIN_EXE_dial"))
                .args(["-s", &node, "--duration", "30", "--identity"])
                .arg(dir.join("carol.key"))
                .arg(&id)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
    }
    .join()
    .unwrap();
    let carol = Kill(carol);
    wait_event(&bob_rx, "connected", Duration::from_secs(20)).expect("carol's call is up");
    let (code, ev) = dial(&dir, &node, &bob_id, &[]);
    assert_eq!((code, ended(&ev).as_str()), (7, "busy"), "{ev:#?}");
    drop(carol);

    // A call that connects: one SAS at both ends, digits arrive, the callee sees the hang-up.
    let (_dave, dave_rx, dave_id) = answer(&dir, &node, "dave", &["--auto"]);
    let (code, ev) = dial(&dir, &node, &dave_id, &["--duration", "1", "--dtmf", "42"]);
    assert_eq!((code, ended(&ev).as_str()), (0, "hangup"), "{ev:#?}");
    let sas = ev
        .iter()
        .find(|e| e["event"] == "connected")
        .expect("connected")["sas"]
        .clone();
    let c = wait_event(&dave_rx, "connected", Duration::from_secs(10)).expect("dave connects");
    assert_eq!(c["sas"], sas);
    let mut digits = String::new();
    let end = Instant::now() + Duration::from_secs(10);
    let mut reason = String::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        let Ok(v) = dave_rx.recv_timeout(left) else {
            break;
        };
        if v["event"] == "dtmf" {
            digits.push_str(v["digit"].as_str().unwrap());
        }
        if v["event"] == "ended" {
            reason = v["reason"].as_str().unwrap().to_string();
            break;
        }
    }
    assert_eq!(digits, "42");
    assert_eq!(reason, "remote-hangup");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `dial` as `me` to `who` with `args`, still running: the child and its events.
fn dial_spawn(
    dir: &std::path::Path,
    node: &str,
    me: &str,
    who: &str,
    args: &[&str],
) -> (Kill, mpsc::Receiver<serde_json::Value>) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dial"))
        .args(["-s", node, "--identity"])
        .arg(dir.join(format!("{me}.key")))
        .arg(who)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let rx = lines(&mut c);
    (Kill(c), rx)
}

/// The events left on `rx` once the process exited (its stdout closes; the reader thread
/// drains it within moments).
fn rest(rx: &mpsc::Receiver<serde_json::Value>) -> Vec<serde_json::Value> {
    let mut v = Vec::new();
    while let Ok(e) = rx.recv_timeout(Duration::from_secs(5)) {
        v.push(e);
    }
    v
}

/// Waits (bounded) for `child` to exit; its status code (-1 for a signal).
fn exit_within(child: &mut Child, limit: Duration) -> Option<i32> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The `ended` event's reason among the events still to come on `rx` (bounded by `limit`).
fn ended_within(rx: &mpsc::Receiver<serde_json::Value>, limit: Duration) -> String {
    wait_event(rx, "ended", limit)
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[test]
fn unanswered_cancelled_and_offline_calls_end_with_their_exit_status() {
    let dir = tmp("noanswer");
    let (_sn, node) = supernode(&dir);
    // Signalling on loopback takes milliseconds; the bounds below are the session layer's
    // retransmission budget (a few seconds), so a loaded machine still fits.
    let signal = Duration::from_secs(10);

    // No answer: bob rings (no --auto, nothing on his control stream) until the caller's
    // --ring-timeout passes; the caller sends a cancel as it gives up.
    let (_bob, bob_rx, bob_id) = answer(&dir, &node, "bob", &[]);
    let ring = 2.0;
    let t0 = Instant::now();
    let (mut d, rx) = dial_spawn(&dir, &node, "alice", &bob_id, &["--ring-timeout", "2"]);
    wait_event(&bob_rx, "incoming", signal).expect("bob's phone rings");
    let code = exit_within(&mut d.0, signal + Duration::from_secs_f64(ring));
    let rang = t0.elapsed();
    let events = rest(&rx);
    assert_eq!(
        (code, ended(&events).as_str()),
        (Some(8), "no-answer"),
        "{events:#?}"
    );
    // It gave up after the ring timeout, not before (the timer starts when the invite goes out,
    // after the process started).
    assert!(
        rang >= Duration::from_secs_f64(ring),
        "gave up after {rang:?}"
    );
    assert_eq!(
        ended_within(&bob_rx, signal),
        "cancelled",
        "bob stops ringing"
    );

    // Cancel: SIGINT, then SIGTERM, to a dial that rings; both ends say cancelled.
    for (n, sig) in [libc::SIGINT, libc::SIGTERM].into_iter().enumerate() {
        let (mut d, rx) = dial_spawn(&dir, &node, &format!("carol{n}"), &bob_id, &[]);
        let ringing = wait_event(&rx, "ringing", signal);
        assert!(ringing.is_some(), "the caller hears ringing (signal {sig})");
        wait_event(&bob_rx, "incoming", signal).expect("bob's phone rings");
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(d.0.id() as i32, sig) }, 0);
        let code = exit_within(&mut d.0, signal);
        let events = rest(&rx);
        assert_eq!(
            (code, ended(&events).as_str()),
            (Some(11), "cancelled"),
            "signal {sig}: {events:#?}"
        );
        assert_eq!(
            ended_within(&bob_rx, signal),
            "cancelled",
            "bob hears the cancel (signal {sig})"
        );
    }

    // Offline: erin registers, then stops (SIGTERM: she says goodbye to her supernode).
    let (mut erin, erin_rx, erin_id) = answer(&dir, &node, "erin", &[]);
    drop(erin_rx);
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(erin.0.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(
        exit_within(&mut erin.0, signal),
        Some(0),
        "answer stops on SIGTERM"
    );
    let (code, ev) = dial(&dir, &node, &erin_id, &[]);
    assert_eq!((code, ended(&ev).as_str()), (3, "offline"), "{ev:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}
