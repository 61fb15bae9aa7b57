//! Calls between real `dial` and `answer` processes in the lab: a supernode and a relay on the
//! "internet" (the server namespace), parties on hosts behind NAT boxes. Shared by every lab
//! test that places calls (paths, the NAT matrix, failures, security) and by nothing else.
//!
//! Audio checks use a known signal: each side plays its own, and the far end's recording must
//! carry it (delay-compensated normalised correlation, [`best_correlation`]).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::common::{Proc, start_relayd};
use voxlab::{BoxOpts, Lab};

/// The supernode's address in the server namespace.
pub const SN: &str = "198.51.100.1:3478";
/// The relay's address in the server namespace.
pub const RELAY: &str = "198.51.100.2:3478";

pub const MONO_48K: hound::WavSpec = hound::WavSpec {
    channels: 1,
    sample_rate: 48_000,
    bits_per_sample: 16,
    sample_format: hound::SampleFormat::Int,
};

/// A fresh scratch directory for `tag` (per process).
pub fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vx-calls-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A WAV file of `secs` seconds of a `hz` tone at -10 dBFS.
pub fn tone(path: &Path, hz: f64, secs: f64) {
    let n = (48_000.0 * secs) as usize;
    let mut w = hound::WavWriter::create(path, MONO_48K).unwrap();
    for i in 0..n {
        let v =
            (0.3 * (2.0 * std::f64::consts::PI * hz * i as f64 / 48_000.0).sin() * 32767.0) as i16;
        w.write_sample(v).unwrap();
    }
    w.finalize().unwrap();
}

/// Samples of a 16-bit mono WAV file, scaled to [-1, 1).
pub fn read_wav(path: &Path) -> Vec<f32> {
    let mut r = hound::WavReader::open(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    r.samples::<i16>()
        .map(|s| s.unwrap() as f32 / 32768.0)
        .collect()
}

/// Power of `hz` in a recorded WAV (16-bit mono 48 kHz) relative to its total power (near 1
/// when the recording is that tone), and the recording's RMS.
pub fn tone_share(path: &Path, hz: f64) -> (f64, f64) {
    let pcm = read_wav(path);
    let total: f64 = pcm.iter().map(|&x| (x as f64) * (x as f64)).sum();
    // Goertzel-style projection on the tone.
    let (mut c, mut s) = (0.0, 0.0);
    for (i, &x) in pcm.iter().enumerate() {
        let ph = 2.0 * std::f64::consts::PI * hz * i as f64 / 48_000.0;
        c += x as f64 * ph.cos();
        s += x as f64 * ph.sin();
    }
    let tone_power = 2.0 * (c * c + s * s) / pcm.len().max(1) as f64;
    let rms = (total / pcm.len().max(1) as f64).sqrt();
    (tone_power / total.max(1e-12), rms)
}

/// The best normalised correlation of `probe` (a stretch of the sent signal) against any
/// position of `got` (the far end's recording), and that position: near 1 when the recording
/// holds the probe, whatever the path's delay.
pub fn best_correlation(probe: &[f32], got: &[f32]) -> (f64, usize) {
    let n = probe.len();
    if n == 0 || got.len() < n {
        return (0.0, 0);
    }
    let pe: f64 = probe.iter().map(|&x| x as f64 * x as f64).sum();
    let mut ge: f64 = got[..n].iter().map(|&x| x as f64 * x as f64).sum();
    let mut best = (f64::MIN, 0);
    for lag in 0..=got.len() - n {
        if lag > 0 {
            let (out, inn) = (got[lag - 1] as f64, got[lag + n - 1] as f64);
            ge = (ge - out * out + inn * inn).max(0.0);
        }
        let dot: f64 = probe
            .iter()
            .zip(&got[lag..lag + n])
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum();
        let c = dot / (pe * ge).sqrt().max(1e-12);
        if c > best.0 {
            best = (c, lag);
        }
    }
    best
}

/// Lines of a child's stdout as JSON values, on a channel (lines that are not JSON are dropped).
pub fn json_lines(child: &mut Child) -> mpsc::Receiver<serde_json::Value> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let Ok(v) = serde_json::from_str(&l) else {
                continue;
            };
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits (at most `limit`) for an event named `name` on `rx`; every event seen, that one
/// included, is appended to `seen`.
pub fn wait_event(
    rx: &mpsc::Receiver<serde_json::Value>,
    name: &str,
    limit: Duration,
    seen: &mut Vec<serde_json::Value>,
) -> Option<serde_json::Value> {
    let end = Instant::now() + limit;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        let Ok(v) = rx.recv_timeout(left) else {
            return None;
        };
        seen.push(v.clone());
        if v["event"] == name {
            return Some(v);
        }
    }
    None
}

/// A lab with NAT boxes, a supernode and a relay that offers itself through it.
pub struct CallLab {
    pub lab: Lab,
    /// The supernode's bootstrap entry (`KEY@ADDR`), for `-s`.
    pub node: String,
    pub dir: PathBuf,
    pub supernode: Option<Proc>,
    pub relay: Option<Proc>,
}

impl CallLab {
    /// A lab with `boxes` (index, options), `supernoded` on [`SN`] and `relayd` on [`RELAY`].
    pub fn new(boxes: &[(u32, BoxOpts)], tag: &str) -> CallLab {
        let mut lab = Lab::new().unwrap();
        for (i, opts) in boxes {
            lab.add(*i, opts).unwrap();
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
        let v: serde_json::Value =
            serde_json::from_str(&first).expect("supernoded's listening line");
        let node = v["node"].as_str().unwrap().to_string();
        let relay_key = dir.join("relay.key");
        let relay = start_relayd(
            &lab,
            &[
                "--listen",
                RELAY,
                "--supernode",
                &node,
                "--identity",
                relay_key.to_str().unwrap(),
                "--allow-peer",
                "198.51.100.0/24",
            ],
        );
        CallLab {
            lab,
            node,
            dir,
            supernode: Some(Proc {
                child: sn,
                name: "supernoded",
            }),
            relay: Some(relay),
        }
    }

    /// The namespace of host `host` (0-based) behind box `index`.
    pub fn host_ns(&self, index: u32, host: usize) -> String {
        self.lab
            .boxes()
            .iter()
            .find(|b| b.index == index)
            .unwrap_or_else(|| panic!("no box {index}"))
            .hosts[host]
            .ns
            .clone()
    }

    /// A program of ours in namespace `ns`, pointed at the supernode.
    pub fn program(&self, ns: &str, program: &str) -> Command {
        let mut c = self.lab.command(ns, program);
        c.args(["-s", &self.node]);
        c
    }

    /// Starts `answer` in `ns` with its own identity (`NAME.key` in the lab's directory) and
    /// `args`, and waits for its registration.
    pub fn answer(&self, ns: &str, name: &str, args: &[&str]) -> Answerer {
        let mut child = self
            .program(ns, env!("CARGO_BIN_EXE_answer"))
            .arg("--identity")
            .arg(self.dir.join(format!("{name}.key")))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn answer");
        let rx = json_lines(&mut child);
        let mut seen = Vec::new();
        // Registration: a handshake and a request, each retransmitted on the session's schedule.
        let reg = wait_event(&rx, "registered", Duration::from_secs(20), &mut seen)
            .unwrap_or_else(|| panic!("{name} registers: {seen:?}"));
        Answerer {
            id: reg["user"].as_str().unwrap().to_string(),
            proc: Proc {
                child,
                name: "answer",
            },
            rx,
            seen,
        }
    }

    /// A `dial` from `ns` as `name` (its own identity) to `user`, with `args`; not started.
    pub fn dial(&self, ns: &str, name: &str, user: &str, args: &[&str]) -> Command {
        let mut c = self.program(ns, env!("CARGO_BIN_EXE_dial"));
        c.arg("--identity")
            .arg(self.dir.join(format!("{name}.key")))
            .arg(user)
            .args(args)
            .stderr(Stdio::inherit());
        c
    }
}

/// A running `answer` and what it printed so far.
pub struct Answerer {
    pub id: String,
    pub proc: Proc,
    pub rx: mpsc::Receiver<serde_json::Value>,
    pub seen: Vec<serde_json::Value>,
}

impl Answerer {
    /// Waits for its next `name` event (bounded by `limit`).
    pub fn wait(&mut self, name: &str, limit: Duration) -> Option<serde_json::Value> {
        wait_event(&self.rx, name, limit, &mut self.seen)
    }

    /// The first `name` event seen so far.
    pub fn seen(&self, name: &str) -> Option<&serde_json::Value> {
        self.seen.iter().find(|e| e["event"] == name)
    }
}

/// Events of a finished `dial` (its stdout) and its exit status.
pub struct Dialled {
    pub code: Option<i32>,
    pub events: Vec<serde_json::Value>,
}

impl Dialled {
    pub fn run(mut cmd: Command) -> Dialled {
        let out = cmd.output().expect("run dial");
        Dialled {
            code: out.status.code(),
            events: String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect(),
        }
    }

    pub fn event(&self, name: &str) -> Option<&serde_json::Value> {
        self.events.iter().find(|e| e["event"] == name)
    }
}

/// A running party (`dial`, or `answer` started with `--control -`): its events as they come,
/// and its control stream on stdin.
pub struct Live {
    pub proc: Proc,
    pub rx: mpsc::Receiver<serde_json::Value>,
    pub seen: Vec<serde_json::Value>,
}

impl Live {
    /// Starts `cmd` with stdin (control) and stdout (events) piped.
    pub fn spawn(mut cmd: Command, name: &'static str) -> Live {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let rx = json_lines(&mut child);
        Live {
            proc: Proc { child, name },
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for its next `name` event (bounded by `limit`).
    pub fn wait(&mut self, name: &str, limit: Duration) -> Option<serde_json::Value> {
        wait_event(&self.rx, name, limit, &mut self.seen)
    }

    /// The first `name` event seen so far.
    pub fn seen(&self, name: &str) -> Option<&serde_json::Value> {
        self.seen.iter().find(|e| e["event"] == name)
    }

    /// Takes whatever events arrived by now (without waiting) into `seen`.
    pub fn drain(&mut self) {
        while let Ok(v) = self.rx.try_recv() {
            self.seen.push(v);
        }
    }

    /// Sends one control command (a JSON object) on its stdin.
    pub fn control(&mut self, cmd: serde_json::Value) {
        use std::io::Write;
        let stdin = self.proc.child.stdin.as_mut().expect("control on stdin");
        writeln!(stdin, "{cmd}").expect("write a control command");
        stdin.flush().unwrap();
    }

    /// Asks for the call's statistics and waits for them (the answer is immediate: a local
    /// command, so one second is plenty even on a busy machine).
    pub fn stats(&mut self) -> serde_json::Value {
        self.control(serde_json::json!({"cmd": "stats"}));
        self.wait("stats", Duration::from_secs(2))
            .unwrap_or_else(|| panic!("{} answers stats: {:#?}", self.proc.name, self.seen))
    }

    /// Waits (at most `limit`) for the process to exit; its status code.
    pub fn exit(&mut self, limit: Duration) -> Option<i32> {
        let end = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.proc.child.try_wait() {
                return s.code();
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. libc::SIGINT) to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.proc.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.proc.child.id());
    }
}

impl CallLab {
    /// Starts `answer` in `ns` as `name` with its control stream on stdin, and waits for its
    /// registration; returns it and its user ID.
    pub fn answer_live(&self, ns: &str, name: &str, args: &[&str]) -> (Live, String) {
        let mut cmd = self.program(ns, env!("CARGO_BIN_EXE_answer"));
        cmd.arg("--identity")
            .arg(self.dir.join(format!("{name}.key")))
            .args(["--control", "-"])
            .args(args)
            .stderr(Stdio::inherit());
        let mut a = Live::spawn(cmd, "answer");
        // Registration: a handshake and a request, each retransmitted on the session's schedule.
        let reg = a
            .wait("registered", Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{name} registers: {:#?}", a.seen));
        let id = reg["user"].as_str().unwrap().to_string();
        (a, id)
    }

    /// Starts a `dial` from `ns` as `name` to `user` with its control stream on stdin.
    pub fn dial_live(&self, ns: &str, name: &str, user: &str, args: &[&str]) -> Live {
        let mut cmd = self.dial(ns, name, user, args);
        cmd.args(["--control", "-"]);
        Live::spawn(cmd, "dial")
    }
}
