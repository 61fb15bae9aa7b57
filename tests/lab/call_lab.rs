//! Calls in the lab: `answer` and `dial` behind NAT boxes, a supernode and a relay on the
//! "internet" (the server namespace).
//! - full cone ↔ port-restricted cone: the call goes direct (hole punching), audio both ways;
//! - symmetric ↔ symmetric: no direct path exists, the call goes through the relay the
//!   supernode offers, audio both ways;
//! - a caller with only its relayed candidate (`--relay-only`) to a public callee: relayed.
//!
//! Audio check: each side plays its own tone (caller 440 Hz, callee 660 Hz) and records; the
//! other's recording must carry that tone, loud, and not its own.

use crate::support::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Proc, start_relayd};
use voxlab::{BoxOpts, Lab, LabNat};

const SN: &str = "198.51.100.1:3478";

const MONO_48K: hound::WavSpec = hound::WavSpec {
    channels: 1,
    sample_rate: 48_000,
    bits_per_sample: 16,
    sample_format: hound::SampleFormat::Int,
};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vx-calllab-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A WAV file of `secs` seconds of a `hz` tone at -10 dBFS.
fn tone(path: &Path, hz: f64, secs: f64) {
    let n = (48_000.0 * secs) as usize;
    let mut w = hound::WavWriter::create(path, MONO_48K).unwrap();
    for i in 0..n {
        let v =
            (0.3 * (2.0 * std::f64::consts::PI * hz * i as f64 / 48_000.0).sin() * 32767.0) as i16;
        w.write_sample(v).unwrap();
    }
    w.finalize().unwrap();
}

/// Power of `hz` in a recorded WAV (16-bit mono 48 kHz), relative to the signal's total power:
/// near 1 when the recording is that tone.
fn tone_share(path: &Path, hz: f64) -> (f64, f64) {
    let bytes = std::fs::read(path).unwrap();
    let pcm: Vec<f64> = bytes[44..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f64 / 32768.0)
        .collect();
    let total: f64 = pcm.iter().map(|x| x * x).sum();
    // Goertzel-style projection on the tone.
    let (mut c, mut s) = (0.0, 0.0);
    for (i, x) in pcm.iter().enumerate() {
        let ph = 2.0 * std::f64::consts::PI * hz * i as f64 / 48_000.0;
        c += x * ph.cos();
        s += x * ph.sin();
    }
    let tone_power = 2.0 * (c * c + s * s) / pcm.len().max(1) as f64;
    let rms = (total / pcm.len().max(1) as f64).sqrt();
    (tone_power / total.max(1e-12), rms)
}

/// Lines of a child's stdout, on a channel.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a JSON event line with `event` == `name` (bounded), returning it; the lines before
/// it are appended to `seen`.
fn wait_event(
    rx: &mpsc::Receiver<String>,
    name: &str,
    limit: Duration,
    seen: &mut Vec<serde_json::Value>,
) -> Option<serde_json::Value> {
    let end = std::time::Instant::now() + limit;
    while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
        let Ok(l) = rx.recv_timeout(left) else {
            return None;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) else {
            continue;
        };
        seen.push(v.clone());
        if v["event"] == name {
            return Some(v);
        }
    }
    None
}

struct Mesh {
    lab: Lab,
    node: String,
    _sn: Proc,
    _relay: Proc,
}

fn mesh(boxes: &[(u32, LabNat)], tag: &str) -> Mesh {
    let mut lab = Lab::new().unwrap();
    for (i, nat) in boxes {
        lab.add(*i, &BoxOpts::new(*nat)).unwrap();
    }
    let dir = tmp(tag);
    let mut sn = lab
        .command(&lab.server_ns(), env!("CARGO_BIN_EXE_supernoded"))
        .args(["--listen", SN, "--no-rfc5780", "--identity"])
        .arg(dir.join("sn.key"))
        .arg("--control")
        .arg(dir.join("sn.sock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn supernoded");
    let mut first = String::new();
    BufReader::new(sn.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&first).expect("supernoded's listening line");
    let node = v["node"].as_str().unwrap().to_string();
    let relay_key = dir.join("relay.key");
    let relay = start_relayd(
        &lab,
        &[
            "--listen",
            "198.51.100.2:3478",
            "--supernode",
            &node,
            "--identity",
            relay_key.to_str().unwrap(),
            "--allow-peer",
            "198.51.100.0/24",
        ],
    );
    Mesh {
        lab,
        node,
        _sn: Proc {
            child: sn,
            name: "supernoded",
        },
        _relay: relay,
    }
}

/// Runs one call from the host of box `from` to the host of box `to`; returns (caller's
/// connected event, callee's connected event) after checking audio went both ways.
fn call(m: &Mesh, from: u32, to: u32, caller_flags: &[&str], tag: &str) -> serde_json::Value {
    let dir = tmp(tag);
    let ns = |i: u32| {
        m.lab.boxes().iter().find(|b| b.index == i).unwrap().hosts[0]
            .ns
            .clone()
    };
    tone(&dir.join("a.wav"), 440.0, 3.0);
    tone(&dir.join("b.wav"), 660.0, 6.0);
    let mut bob = m
        .lab
        .command(&ns(to), env!("CARGO_BIN_EXE_answer"))
        .args(["-s", &m.node, "--auto", "--identity"])
        .arg(dir.join("bob.key"))
        .arg("--play")
        .arg(dir.join("b.wav"))
        .arg("--record")
        .arg(dir.join("at-bob.wav"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let bob_rx = lines(&mut bob);
    let mut bob_seen = Vec::new();
    // Registration: a handshake and a request, each retransmitted on the session's schedule.
    let reg = wait_event(
        &bob_rx,
        "registered",
        Duration::from_secs(20),
        &mut bob_seen,
    )
    .unwrap_or_else(|| panic!("the callee registers: {bob_seen:?}"));
    let bob_id = reg["user"].as_str().unwrap().to_string();
    let bob = Proc {
        child: bob,
        name: "answer",
    };
    let out = m
        .lab
        .command(&ns(from), env!("CARGO_BIN_EXE_dial"))
        .args(["-s", &m.node, "--identity"])
        .arg(dir.join("alice.key"))
        .arg(&bob_id)
        .arg("--play")
        .arg(dir.join("a.wav"))
        .arg("--record")
        .arg(dir.join("at-alice.wav"))
        .args(caller_flags)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(out.status.code(), Some(0), "dial: {events:#?}");
    let connected = events
        .iter()
        .find(|e| e["event"] == "connected")
        .unwrap_or_else(|| panic!("the call connects: {events:#?}"))
        .clone();
    let ended = events.iter().find(|e| e["event"] == "ended").unwrap();
    assert_eq!(ended["reason"], "hangup", "{events:#?}");
    // The callee hears the hang-up within its own signalling round trip.
    let bob_ended = wait_event(&bob_rx, "ended", Duration::from_secs(10), &mut bob_seen);
    assert!(
        bob_ended.is_some(),
        "the callee sees the end: {bob_seen:#?}"
    );
    let bob_connected = bob_seen
        .iter()
        .find(|e| e["event"] == "connected")
        .unwrap_or_else(|| panic!("the callee connects: {bob_seen:#?}"));
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
    let m = mesh(
        &[
            (1, LabNat::FullCone),
            (2, LabNat::PortRestrictedCone),
            (3, LabNat::Symmetric),
            (4, LabNat::Symmetric),
            (5, LabNat::None),
        ],
        "mesh",
    );
    let c = call(&m, 1, 2, &[], "cone");
    assert_eq!(c["path"], "direct", "full cone ↔ port-restricted: {c}");
    let c = call(&m, 3, 4, &[], "sym");
    assert_eq!(c["path"], "relayed", "symmetric ↔ symmetric: {c}");
    let c = call(&m, 1, 5, &["--relay-only"], "relay-only");
    assert_eq!(c["path"], "relayed", "--relay-only: {c}");
    assert_eq!(c["local"]["type"], "relay", "{c}");
}
