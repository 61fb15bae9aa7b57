//! Calls in the lab: `answer` and `dial` behind NAT boxes, a supernode and a relay on the
//! "internet" (the server namespace).
//! - full cone ↔ port-restricted cone: the call goes direct (hole punching), audio both ways;
//! - symmetric ↔ symmetric: no direct path exists, the call goes through the relay the
//!   supernode offers, audio both ways;
//! - a caller with only its relayed candidate (`--relay-only`) to a public callee: relayed;
//! - 10 % loss on the caller's link: both ends send RFC 2198 copies and play losses from them.
//!
//! Audio check: each side plays its own tone (caller 440 Hz, callee 660 Hz) and records; the
//! other's recording must carry that tone, loud, and not its own.

use crate::support::calls::{CallLab, Dialled, tone};

use voxlab::{BoxOpts, Lab, LabNat};

/// A tone call (`CallLab::tone_call`: both ends connect with one SAS, hang up cleanly and hear
/// an unbroken second of the other's tone), and most of each whole recording is that tone.
fn call(m: &CallLab, from: u32, to: u32, caller_flags: &[&str], tag: &str) -> serde_json::Value {
    let c = m.tone_call(from, to, caller_flags, tag);
    let [(at_bob, rms_b), (at_alice, rms_a)] = c.shares;
    // Recordings start at the answer and include the path's set-up: most, not all, is tone.
    assert!(
        at_bob > 0.5 && rms_b > 0.05,
        "{tag}: the callee heard 440 Hz: share {at_bob:.2}, rms {rms_b:.3}"
    );
    assert!(
        at_alice > 0.5 && rms_a > 0.05,
        "{tag}: the caller heard 660 Hz: share {at_alice:.2}, rms {rms_a:.3}"
    );
    c.connected
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

/// Random loss turns redundancy on in a real call: with 10 % loss each way on the caller's
/// link, each end learns the loss from the other's reports, sends its packets with copies of
/// the ones before (RFC 2198) from then on, and plays lost packets whole from the copies it
/// receives. (The media core's tests show how much it recovers; `scripts/bench-media` how
/// it sounds.)
#[test]
fn lossy_calls_send_redundancy_and_play_losses_from_it() {
    let test = "calls_redundancy";
    if !Lab::ready_or_skip(test) {
        return;
    }
    let m = CallLab::new(
        &[
            (1, BoxOpts::new(LabNat::FullCone).impair("loss=10%", 7)),
            (2, BoxOpts::new(LabNat::FullCone)),
        ],
        "call-red",
    );
    // Six seconds of tone each way, no audio check: 10 % loss is too much for the tone
    // call's unbroken second in the first second, before the reports turn the copies on.
    let dir = m.dir.join("red");
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("a.wav"), dir.join("b.wav"));
    tone(&a, 440.0, 6.0);
    tone(&b, 660.0, 8.0);
    let mut bob = m.answer(
        &m.host_ns(2, 0),
        "red-bob",
        &["--auto", "--play", b.to_str().unwrap()],
    );
    let d = Dialled::run(m.dial(
        &m.host_ns(1, 0),
        "red-alice",
        &bob.id,
        &["--play", a.to_str().unwrap()],
    ));
    assert_eq!(d.code, Some(0), "dial: {:#?}", d.events);
    assert!(
        bob.wait("ended", std::time::Duration::from_secs(10))
            .is_some(),
        "the callee sees the end: {:#?}",
        bob.seen
    );
    let last_stats = |events: &[serde_json::Value]| {
        events
            .iter()
            .rev()
            .find(|e| e["event"] == "stats")
            .cloned()
            .unwrap_or_default()
    };
    for (who, s) in [
        ("caller", last_stats(&d.events)),
        ("callee", last_stats(&bob.seen)),
    ] {
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        // About 300 packets each way; the first report of loss (1 s) turns the copies on.
        assert!(n("red_sent") >= 100, "{who} sent few copies: {s}");
        assert!(n("lost") >= 1, "{who}: the lab lost nothing: {s}");
        assert!(
            n("red_recovered") >= 1,
            "{who} played no loss from a copy: {s}"
        );
    }
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
