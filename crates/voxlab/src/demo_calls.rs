//! The calls half of `voxlab demo`: a supernode and a relay on the lab's "internet", then real
//! calls with `dial` and `answer` between hosts behind NAT boxes — a pair that punches through
//! (direct) and a pair that cannot (relayed) — each playing a speech file. Prints each call's
//! events, path, setup time and how alike the callee's recording is to what was sent. Without
//! the lab (no root), one call on loopback.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

use super::Lab;
use crate::demo::{Killed, sibling};

/// What the demo says on the calls: spoken by espeak-ng when it is installed.
const SPEECH: &str = "Hello from voxmesh. This call goes peer to peer, encrypted end to end.";

/// Where programs of one call run: a lab namespace, or this host (loopback).
#[derive(Clone, Copy)]
pub enum Place<'a> {
    Ns(&'a Lab, &'a str),
    Here,
}

impl Place<'_> {
    fn command(&self, program: &Path) -> Command {
        match self {
            Place::Ns(lab, ns) => lab.command(ns, program),
            Place::Here => Command::new(program),
        }
    }
}

/// A supernode (and, in the lab, a relay) for the calls; the entry clients pass to `-s`.
pub struct Servers {
    pub node: String,
    _sn: Killed,
    _relay: Option<Killed>,
}

/// Reads one line of a child's stdout within `limit`.
fn first_line(child: &mut std::process::Child, limit: Duration) -> anyhow::Result<String> {
    let out = child.stdout.take().context("stdout not piped")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(limit)
        .context("no start line in time (see its stderr)")
}

/// Starts the supernode (and, at `relay_addr`, a relay offered through it).
pub fn start_servers(
    place: Place,
    dir: &Path,
    listen: &str,
    relay_addr: Option<&str>,
) -> anyhow::Result<Servers> {
    let mut sn = place
        .command(&sibling("supernoded")?)
        .args(["--listen", listen, "--no-rfc5780", "--identity"])
        .arg(dir.join("sn.key"))
        .arg("--control")
        .arg(dir.join("sn.sock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start supernoded")?;
    let line = first_line(&mut sn, Duration::from_secs(10))?;
    let sn = Killed(sn);
    let v: serde_json::Value = serde_json::from_str(&line).context("supernoded's start line")?;
    let node = v["node"]
        .as_str()
        .context("supernoded's start line names no node")?
        .to_string();
    let relay = match relay_addr {
        Some(addr) => {
            let mut r = place
                .command(&sibling("relayd")?)
                .args(["--listen", addr, "--supernode", &node, "--identity"])
                .arg(dir.join("relay.key"))
                .args(["--allow-peer", "198.51.100.0/24", "-q"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start relayd")?;
            let line = first_line(&mut r, Duration::from_secs(10))?;
            if !line.contains("listening") {
                bail!("relayd did not start: {line}");
            }
            Some(Killed(r))
        }
        None => None,
    };
    Ok(Servers {
        node,
        _sn: sn,
        _relay: relay,
    })
}

/// The speech file the callers play (48 kHz mono WAV): espeak-ng's voice, or a chirp when
/// espeak-ng is missing.
pub fn speech(dir: &Path) -> anyhow::Result<(PathBuf, &'static str)> {
    let out = dir.join("speech.wav");
    let raw = dir.join("speech-22k.wav");
    let spoken = Command::new("espeak-ng")
        .arg("-w")
        .arg(&raw)
        .arg(SPEECH)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if spoken {
        let ok = Command::new(sibling("pipe-audio")?)
            .arg("convert")
            .arg(&raw)
            .arg(&out)
            .args(["-r", "48000", "-q"])
            .status()
            .context("cannot run pipe-audio convert")?
            .success();
        if !ok {
            bail!("pipe-audio convert failed on espeak-ng's output");
        }
        return Ok((out, "speech (espeak-ng)"));
    }
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&out, spec)?;
    let n = 48_000 * 3;
    let mut phase = 0.0f64;
    for i in 0..n {
        let f = 200.0 * 15f64.powf(i as f64 / n as f64);
        phase += 2.0 * std::f64::consts::PI * f / 48_000.0;
        w.write_sample((0.3 * phase.sin() * 32767.0) as i16)?;
    }
    w.finalize()?;
    Ok((out, "a chirp (espeak-ng not installed)"))
}

/// One call's outcome, for the table.
pub struct CallResult {
    pub label: String,
    pub path: String,
    pub candidates: String,
    pub ringing_ms: f64,
    pub connected_ms: f64,
    pub similarity: Option<f64>,
    pub sas_match: bool,
    pub events: Vec<String>,
}

/// Places one call from `caller` to `callee` (each with its own identity in `dir`): the callee
/// answers at once and records, the caller plays `speech` and hangs up when it ends.
pub fn place_call(
    caller: Place,
    callee: Place,
    node: &str,
    dir: &Path,
    label: &str,
    speech: &Path,
) -> anyhow::Result<CallResult> {
    let tag: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let heard = dir.join(format!("heard-{tag}.wav"));
    let mut bob = callee
        .command(&sibling("answer")?)
        .args(["-s", node, "--auto", "--identity"])
        .arg(dir.join(format!("bob-{tag}.key")))
        .arg("--record")
        .arg(&heard)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start answer")?;
    let rx = crate::events::json_lines(&mut bob);
    let bob = Killed(bob);
    let bob_seen = std::cell::RefCell::new(Vec::new());
    let wait = |name: &str, limit: Duration| {
        crate::events::wait_event(&rx, name, limit, &mut bob_seen.borrow_mut())
    };
    let reg = wait("registered", Duration::from_secs(20))
        .context("the callee did not register within 20 s")?;
    let bob_id = reg["user"]
        .as_str()
        .context("no user in registered")?
        .to_string();
    let dial = caller
        .command(&sibling("dial")?)
        .args(["-s", node, "--identity"])
        .arg(dir.join(format!("alice-{tag}.key")))
        .arg(&bob_id)
        .arg("--play")
        .arg(speech)
        .stderr(Stdio::null())
        .output()
        .context("cannot run dial")?;
    let lines: Vec<String> = String::from_utf8_lossy(&dial.stdout)
        .lines()
        .map(String::from)
        .collect();
    let events: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let find = |name: &str| events.iter().find(|e| e["event"] == name);
    let Some(connected) = find("connected") else {
        bail!(
            "the call did not connect (dial exit {:?}):\n{}",
            dial.status.code(),
            lines.join("\n")
        );
    };
    // The callee's recording is complete once it reports the end of the call.
    let bob_connected = wait("connected", Duration::from_secs(5));
    wait("ended", Duration::from_secs(10));
    drop(bob);
    // Kept with the recordings (VOXLAB_KEEP): the callee's events, its stats among them.
    let events_of_bob: Vec<String> = bob_seen.borrow().iter().map(|v| v.to_string()).collect();
    let _ = std::fs::write(
        dir.join(format!("bob-events-{tag}.jsonl")),
        events_of_bob.join("\n"),
    );
    let similarity = Command::new(sibling("pipe-audio")?)
        .arg("analyze")
        .arg(&heard)
        .arg("--reference")
        .arg(speech)
        .arg("--json")
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v["reference"]["similarity"].as_f64());
    let ms = |e: Option<&serde_json::Value>| e.and_then(|e| e["ms"].as_f64()).unwrap_or(f64::NAN);
    Ok(CallResult {
        label: label.to_string(),
        path: connected["path"].as_str().unwrap_or("?").to_string(),
        candidates: format!(
            "{} -> {}",
            connected["local"]["type"].as_str().unwrap_or("?"),
            connected["remote"]["type"].as_str().unwrap_or("?")
        ),
        ringing_ms: ms(find("ringing")),
        connected_ms: ms(Some(connected)),
        similarity,
        sas_match: bob_connected.is_some_and(|b| b["sas"] == connected["sas"]),
        events: lines,
    })
}

/// Prints the calls' table; returns whether every call went the way expected (`want`: the
/// path per call, in order).
pub fn report(results: &[CallResult], want: &[&str]) -> bool {
    for r in results {
        println!("\n{}: dial's events", r.label);
        for l in &r.events {
            println!("  {l}");
        }
    }
    println!(
        "\n{:<34} {:<8} {:<16} {:>9} {:>11} {:>10} {:>4}",
        "call", "path", "candidates", "ringing", "connected", "similarity", "SAS"
    );
    let mut ok = true;
    for (r, w) in results.iter().zip(want) {
        let good = r.path == *w && r.sas_match;
        ok &= good;
        println!(
            "{:<34} {:<8} {:<16} {:>7.0}ms {:>9.0}ms {:>10} {:>4} {}",
            r.label,
            r.path,
            r.candidates,
            r.ringing_ms,
            r.connected_ms,
            r.similarity.map_or("-".into(), |s| format!("{s:.2}")),
            if r.sas_match { "same" } else { "DIFF" },
            if good { "ok" } else { "UNEXPECTED" }
        );
    }
    println!(
        "\n(ringing and connected: ms since dial started, its own registration included; \
         similarity: the callee's recording against the file played, 1 = identical, \
         from `pipe-audio analyze --reference`)"
    );
    ok
}

/// Without the lab: one call on loopback between two processes of this host.
pub fn on_loopback() -> anyhow::Result<bool> {
    let dir = tempfile_dir()?;
    let servers = start_servers(Place::Here, &dir, "127.0.0.1:0", None)?;
    let (speech, what) = speech(&dir)?;
    println!("A supernode on loopback; alice calls bob and plays {what} ...");
    let r = place_call(
        Place::Here,
        Place::Here,
        &servers.node,
        &dir,
        "loopback call",
        &speech,
    )?;
    let ok = report(&[r], &["direct"]);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ok)
}

/// A fresh scratch directory for one demo run.
pub fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("voxlab-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    Ok(d)
}
