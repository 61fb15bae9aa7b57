//! Calls in the lab: `answer` and `dial` behind NAT boxes, a supernode and a relay on the
//! "internet" (the server namespace).
//! - full cone ↔ port-restricted cone: the call goes direct (hole punching), audio both ways;
//! - symmetric ↔ symmetric: no direct path exists, the call goes through the relay the
//!   supernode offers, audio both ways;
//! - a caller with only its relayed candidate (`--relay-only`) to a public callee: relayed.
//!
//! Audio check: each side plays its own tone (caller 440 Hz, callee 660 Hz) and records; the
//! other's recording must carry that tone, loud, and not its own.

use crate::support::calls::{CallLab, Dialled, tone, tone_share};

use std::time::Duration;

use voxlab::{BoxOpts, Lab, LabNat};

/// Runs one call from the host of box `from` to the host of box `to`; returns the caller's
/// connected event after checking audio went both ways and both ends show one SAS.
fn call(m: &CallLab, from: u32, to: u32, caller_flags: &[&str], tag: &str) -> serde_json::Value {
    let dir = m.dir.join(tag);
    std::fs::create_dir_all(&dir).unwrap();
    let f = |n: &str| dir.join(n).to_str().unwrap().to_string();
    tone(&dir.join("a.wav"), 440.0, 3.0);
    tone(&dir.join("b.wav"), 660.0, 6.0);
    let mut bob = m.answer(
        &m.host_ns(to, 0),
        &format!("{tag}-bob"),
        &[
            "--auto",
            "--play",
            &f("b.wav"),
            "--record",
            &f("at-bob.wav"),
        ],
    );
    let mut args = vec!["--play", &f("a.wav"), "--record", &f("at-alice.wav")]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    args.extend(caller_flags.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Dialled::run(m.dial(&m.host_ns(from, 0), &format!("{tag}-alice"), &bob.id, &args));
    let events = &d.events;
    assert_eq!(d.code, Some(0), "dial: {events:#?}");
    let connected = d
        .event("connected")
        .unwrap_or_else(|| panic!("the call connects: {events:#?}"))
        .clone();
    assert_eq!(d.event("ended").unwrap()["reason"], "hangup", "{events:#?}");
    // The callee hears the hang-up within its own signalling round trip.
    assert!(
        bob.wait("ended", Duration::from_secs(10)).is_some(),
        "the callee sees the end: {:#?}",
        bob.seen
    );
    let bob_connected = bob
        .seen("connected")
        .unwrap_or_else(|| panic!("the callee connects: {:#?}", bob.seen));
    assert_eq!(bob_connected["sas"], connected["sas"], "both show one SAS");
    drop(bob); // stops answer, which finishes its recording
    let (at_bob, rms_b) = tone_share(&dir.join("at-bob.wav"), 440.0);
    let (at_alice, rms_a) = tone_share(&dir.join("at-alice.wav"), 660.0);
    // Recordings start at the answer and include the path's set-up: most, not all, is tone.
    assert!(
        at_bob > 0.5 && rms_b > 0.05,
        "the callee heard 440 Hz: share {at_bob:.2}, rms {rms_b:.3}"
    );
    assert!(
        at_alice > 0.5 && rms_a > 0.05,
        "the caller heard 660 Hz: share {at_alice:.2}, rms {rms_a:.3}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    connected
}

#[test]
fn calls_go_direct_through_cone_nats_and_relayed_between_symmetric_ones() {
    let test = "calls_direct_and_relayed";
    if !Lab::ready_or_skip(test) {
        return;
    }
    let m = CallLab::new(
        &[
            (1, BoxOpts::new(LabNat::FullCone)),
            (2, BoxOpts::new(LabNat::PortRestrictedCone)),
            (3, BoxOpts::new(LabNat::Symmetric)),
            (4, BoxOpts::new(LabNat::Symmetric)),
            (5, BoxOpts::new(LabNat::None)),
        ],
        "call-lab",
    );
    let c = call(&m, 1, 2, &[], "cone");
    assert_eq!(c["path"], "direct", "full cone ↔ port-restricted: {c}");
    let c = call(&m, 3, 4, &[], "sym");
    assert_eq!(c["path"], "relayed", "symmetric ↔ symmetric: {c}");
    let c = call(&m, 1, 5, &["--relay-only"], "relay-only");
    assert_eq!(c["path"], "relayed", "--relay-only: {c}");
    assert_eq!(c["local"]["type"], "relay", "{c}");
    let _ = std::fs::remove_dir_all(&m.dir);
}

/// The README's first command: natprobe behind every NAT type, then a direct and a relayed
/// call, each row checked by the demo itself (exit 0 only when every row is as expected).
#[test]
fn the_demo_classifies_every_nat_and_places_a_direct_and_a_relayed_call() {
    let test = "demo";
    if !Lab::ready_or_skip(test) {
        return;
    }
    let out = std::process::Command::new(voxlab::exe())
        .arg("demo")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "voxlab demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |label: &str| {
        // The table's row comes after the events' heading of the same call.
        text.lines()
            .rfind(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no row {label:?}:\n{text}"))
            .to_string()
    };
    let direct = row("full cone -> port-restricted cone");
    assert!(
        direct.contains(" direct ") && direct.ends_with(" ok"),
        "{direct}"
    );
    let relayed = row("symmetric -> symmetric");
    assert!(
        relayed.contains(" relayed ") && relayed.ends_with(" ok"),
        "{relayed}"
    );
}
