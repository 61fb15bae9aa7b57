//! `dial` on an identity an `answer` is online as: the call goes through the answer's control
//! socket (`KEYFILE.sock`, owner-only) instead of a second registration.
//! - by ID: the callee sees the caller's ID, both ends show one SAS, digits arrive, `dial`
//!   exits 0 and the answer never registers again;
//! - by name: the answer looks the name up and places the call;
//! - a `dial` stopped while the call rings cancels it at the callee (exit 11);
//! - without a running answer, the socket file is gone and a `dial` registers by itself.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::loopback::{answer, event, lines, run, supernode, tmp, wait_event};

/// A `dial` as alice to `who`.
fn dial_cmd(dir: &Path, node: &str, who: &str, args: &[&str]) -> Command {
    crate::support::loopback::dial_cmd(dir, node, "alice", who, args)
}

#[test]
fn dial_places_its_call_through_the_running_answer() {
    let dir = tmp("calls");
    let (_sn, node) = supernode(&dir);
    let (alice, alice_rx, alice_id) = answer(&dir, &node, "alice", &[]);
    let sock = dir.join("alice.key.sock");
    let mode = std::fs::metadata(&sock)
        .expect("the control socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "owner-only socket");
    let (_bob, bob_rx, bob_id) = answer(&dir, &node, "bob", &["--auto", "--name", "bob"]);
    wait_event(&bob_rx, "claimed", Duration::from_secs(10), &mut Vec::new()).expect("bob's name");

    // By ID, with digits: one SAS at both ends, the callee sees alice's ID.
    let (code, ev) = run(dial_cmd(
        &dir,
        &node,
        &bob_id,
        &["--duration", "1", "--dtmf", "42"],
    ));
    assert_eq!(code, 0, "{ev:#?}");
    for name in ["dialing", "ringing", "connected", "ended"] {
        assert!(event(&ev, name).is_some(), "{name}: {ev:#?}");
    }
    assert_eq!(event(&ev, "ended").unwrap()["reason"], "hangup");
    let mut bob_seen = Vec::new();
    let inc =
        wait_event(&bob_rx, "incoming", Duration::from_secs(10), &mut bob_seen).expect("bob rang");
    assert_eq!(inc["from"].as_str(), Some(alice_id.as_str()));
    let c = wait_event(&bob_rx, "connected", Duration::from_secs(10), &mut bob_seen)
        .expect("bob connected");
    assert_eq!(c["sas"], event(&ev, "connected").unwrap()["sas"]);
    wait_event(&bob_rx, "ended", Duration::from_secs(10), &mut bob_seen).expect("bob's call ended");
    let digits: String = bob_seen
        .iter()
        .filter(|e| e["event"] == "dtmf")
        .map(|e| e["digit"].as_str().unwrap())
        .collect();
    assert_eq!(digits, "42");

    // By name: the answer looks it up.
    let (code, ev) = run(dial_cmd(&dir, &node, "bob", &["--duration", "0.5"]));
    assert_eq!(code, 0, "{ev:#?}");
    assert!(event(&ev, "connected").is_some(), "{ev:#?}");

    // A dial stopped while the call rings cancels it at the callee.
    let (_carol, carol_rx, carol_id) = answer(&dir, &node, "carol", &[]);
    let mut d = dial_cmd(&dir, &node, &carol_id, &[])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let d_rx = lines(&mut d);
    wait_event(&d_rx, "ringing", Duration::from_secs(10), &mut Vec::new()).expect("carol rings");
    let pid = d.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // The bye rides the mesh's routed messages: a round trip on loopback, retransmitted on the
    // session's schedule; 10 s is far beyond it.
    let mut carol_seen = Vec::new();
    let end = wait_event(&carol_rx, "ended", Duration::from_secs(10), &mut carol_seen)
        .unwrap_or_else(|| panic!("carol's call ends: {carol_seen:?}"));
    assert_eq!(end["reason"], "cancelled");
    let status = d.wait().unwrap();
    assert!(status.code().is_some(), "dial exits by itself");

    // Alice never registered a second time: every call went through her answer.
    let mut alice_seen = Vec::new();
    while let Ok(v) = alice_rx.try_recv() {
        alice_seen.push(v);
    }
    assert!(
        alice_seen.iter().all(|e| e["event"] != "registered"),
        "{alice_seen:#?}"
    );
    assert!(
        alice_seen.iter().any(|e| e["event"] == "dialing"),
        "{alice_seen:#?}"
    );

    // Without the answer, the socket is gone and dial goes online by itself.
    let mut alice = alice;
    let pid = alice.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    alice.0.wait().unwrap();
    assert!(!sock.exists(), "the answer removes its socket");
    let (code, ev) = run(dial_cmd(&dir, &node, &bob_id, &["--duration", "0.5"]));
    assert_eq!(code, 0, "{ev:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}
