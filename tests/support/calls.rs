//! Calls between real `dial` and `answer` processes in the lab: a supernode and a relay on the
//! "internet" (the server namespace), parties on hosts behind NAT boxes. Shared by every lab
//! test that places calls (paths, the NAT matrix, failures, security) and by nothing else.
//!
//! Audio checks use a known signal: each side plays its own, and the far end's recording must
//! carry it (delay-compensated normalised correlation, [`best_correlation`]).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::common::{Proc, spawn_supernode, start_relayd};
use voxlab::{BoxOpts, Lab};

/// The supernode's address in the server namespace.
pub const SN: &str = "198.51.100.1:3478";
/// The relay's address in the server namespace.
pub const RELAY: &str = "198.51.100.2:3478";
/// The supernode's IPv6 address in a dual-stack lab.
pub const SN6: &str = "[2001:db8::1]:3478";
/// The relay's IPv6 address in a dual-stack lab.
pub const RELAY6: &str = "[2001:db8::2]:3478";

pub const MONO_48K: hound::WavSpec = hound::WavSpec {
    channels: 1,
    sample_rate: 48_000,
    bits_per_sample: 16,
    sample_format: hound::SampleFormat::Int,
};

/// The program `name` to run: the one this build made, or with `VX_CALL_BINS=DIR` set, DIR's
/// (to measure another build's `dial`, `answer` and `supernoded` in the same lab, as a baseline).
pub fn program(name: &str, built: &str) -> String {
    match std::env::var_os("VX_CALL_BINS") {
        Some(dir) => Path::new(&dir).join(name).to_string_lossy().into_owned(),
        None => built.to_string(),
    }
}

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

/// Per 100 ms block of a recorded WAV, the share of the block's power that is the `hz` tone
/// (near 1 where the recording is that tone; a loud block of anything else is near 0, a silent
/// one 0).
pub fn tone_blocks(path: &Path, hz: f64) -> Vec<f64> {
    let pcm = read_wav(path);
    pcm.chunks(4800)
        .enumerate()
        .map(|(k, block)| {
            let total: f64 = block.iter().map(|&x| x as f64 * x as f64).sum();
            let (mut c, mut s) = (0.0, 0.0);
            for (i, &x) in block.iter().enumerate() {
                let ph = 2.0 * std::f64::consts::PI * hz * (k * 4800 + i) as f64 / 48_000.0;
                c += x as f64 * ph.cos();
                s += x as f64 * ph.sin();
            }
            // Silence (below -50 dBFS) is not the tone.
            if total / (block.len() as f64) < 1e-5 {
                return 0.0;
            }
            2.0 * (c * c + s * s) / block.len() as f64 / total
        })
        .collect()
}

/// The longest run of consecutive values at or above `min`.
pub fn longest_run(values: &[f64], min: f64) -> usize {
    let (mut best, mut run) = (0, 0);
    for &v in values {
        run = if v >= min { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
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

/// A linear frequency sweep from `f0` to `f1` Hz over `secs` seconds at -10 dBFS, written to
/// `path` (16-bit mono 48 kHz WAV); returns its samples. Unlike a steady tone it matches itself
/// at one delay only, and Opus (VoIP mode) keeps its waveform, so [`recovered`] can find it.
pub fn sweep(path: &Path, f0: f64, f1: f64, secs: f64) -> Vec<f32> {
    let n = (48_000.0 * secs) as usize;
    let k = (f1 - f0) / secs;
    let mut w = hound::WavWriter::create(path, MONO_48K).unwrap();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = i as f64 / 48_000.0;
        let v = (0.3 * (2.0 * std::f64::consts::PI * (f0 * t + 0.5 * k * t * t)).sin() * 32767.0)
            as i16;
        w.write_sample(v).unwrap();
        out.push(v as f32 / 32768.0);
    }
    w.finalize().unwrap();
    out
}

/// Where `probe` sits in `got` and how well it matches there: [`best_correlation`]'s answer,
/// found fast enough for a debug build (the direct search over seconds of audio takes it tens
/// of seconds, and even the FFT's generic code is compiled unoptimised into the test): the
/// delay is searched through the FFT on both signals decimated by 8 (box-filtered, fine for
/// content below 1.5 kHz), then refined at full rate around it.
pub fn locate(probe: &[f32], got: &[f32]) -> (f64, usize) {
    const D: usize = 8;
    let n = probe.len();
    if n < D || got.len() < n {
        return (0.0, 0);
    }
    let dec = |x: &[f32]| -> Vec<f32> {
        x.chunks_exact(D)
            .map(|c| c.iter().sum::<f32>() / D as f32)
            .collect()
    };
    let coarse = fft_best_lag(&dec(probe), &dec(got));
    let from = (coarse * D).saturating_sub(2 * D);
    let to = (coarse * D + 2 * D + n).min(got.len());
    if to < from + n {
        return (0.0, 0);
    }
    let (c, lag) = best_correlation(probe, &got[from..to]);
    (c, from + lag)
}

/// The position in `got` where `probe` correlates best (normalised), through the FFT.
/// Positions where `got` holds less than a thousandth of the probe's energy do not count:
/// rounding could make a near-silent window look like a match.
fn fft_best_lag(probe: &[f32], got: &[f32]) -> usize {
    use realfft::RealFftPlanner;
    use realfft::num_complex::Complex;
    let n = probe.len();
    if n == 0 || got.len() < n {
        return 0;
    }
    let size = (got.len() + n).next_power_of_two();
    let mut planner = RealFftPlanner::<f64>::new();
    let fwd = planner.plan_fft_forward(size);
    let inv = planner.plan_fft_inverse(size);
    let spectrum = |x: &[f32]| -> Vec<Complex<f64>> {
        let mut t = fwd.make_input_vec();
        for (d, v) in t.iter_mut().zip(x) {
            *d = *v as f64;
        }
        let mut out = fwd.make_output_vec();
        fwd.process(&mut t, &mut out).expect("forward FFT");
        out
    };
    let (g, p) = (spectrum(got), spectrum(probe));
    let mut prod: Vec<Complex<f64>> = g.iter().zip(&p).map(|(a, b)| a * b.conj()).collect();
    // DC and Nyquist of a real signal's spectrum are real; rounding must not say otherwise.
    prod[0].im = 0.0;
    let last = prod.len() - 1;
    prod[last].im = 0.0;
    let mut dots = inv.make_output_vec();
    inv.process(&mut prod, &mut dots).expect("inverse FFT");
    let pe: f64 = probe.iter().map(|&x| x as f64 * x as f64).sum();
    let mut energy = Vec::with_capacity(got.len() + 1);
    energy.push(0.0f64);
    for &x in got {
        energy.push(energy.last().unwrap() + x as f64 * x as f64);
    }
    let mut best = (f64::MIN, 0);
    for lag in 0..=got.len() - n {
        let ge = energy[lag + n] - energy[lag];
        if ge < pe * 1e-3 {
            continue;
        }
        let c = dots[lag] / (pe * ge).sqrt();
        if c > best.0 {
            best = (c, lag);
        }
    }
    best.1
}

/// How well `got` (a far end's recording) carries the middle `window_s` seconds of `sent`: the
/// delay-compensated normalised correlation of that probe ([`locate`]), and where it sits.
pub fn recovered(sent: &[f32], got: &[f32], window_s: f64) -> (f64, usize) {
    let n = ((48_000.0 * window_s) as usize).min(sent.len());
    let start = (sent.len() - n) / 2;
    locate(&sent[start..start + n], got)
}

/// The correlation of each `seg_s`-second segment of `sent` (leaving out `edge_s` at both
/// ends, where the two sides' start and hang-up differ) with `got`, each delay-compensated on
/// its own within `slack_s` of where the middle second of `sent` sits: a jitter buffer
/// changes the delay while it plays (a concealed or stretched frame), which one long probe
/// would count as a mismatch.
pub fn segment_correlations(
    sent: &[f32],
    got: &[f32],
    seg_s: f64,
    edge_s: f64,
    slack_s: f64,
) -> Vec<f64> {
    let seg = (48_000.0 * seg_s) as usize;
    let edge = (48_000.0 * edge_s) as usize;
    let slack = (48_000.0 * slack_s) as usize;
    let mid = 48_000.min(sent.len());
    let mid_start = (sent.len() - mid) / 2;
    let (_, at) = locate(&sent[mid_start..mid_start + mid], got);
    let offset = at as i64 - mid_start as i64;
    let mut out = Vec::new();
    let mut start = edge;
    while start + seg + edge <= sent.len() {
        let expect = start as i64 + offset;
        let from = (expect - slack as i64).max(0) as usize;
        let to = ((expect + (seg + slack) as i64).max(0) as usize).min(got.len());
        let c = if to >= from + seg {
            locate(&sent[start..start + seg], &got[from..to]).0
        } else {
            0.0
        };
        out.push(c);
        start += seg;
    }
    out
}

pub use voxlab::events::{json_lines, wait_event};

/// The bootstrap `supernoded` in the lab's server namespace on `listen`, its files in `dir`
/// ([`spawn_supernode`]); returns it, once listening, with its `KEY@ADDR` entry.
pub fn bootstrap_supernode(lab: &Lab, dir: &Path, listen: &[&str]) -> (Proc, String) {
    let mut sn = lab.command(
        &lab.server_ns(),
        program("supernoded", env!("CARGO_BIN_EXE_supernoded")),
    );
    for addr in listen {
        sn.args(["--listen", addr]);
    }
    let (child, node) = spawn_supernode(sn, dir);
    let proc = Proc {
        child,
        name: "supernoded",
    };
    (proc, node)
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
        CallLab::build(boxes, tag, false)
    }

    /// As [`CallLab::new`], with the supernode and the relay also on IPv6 ([`SN6`], [`RELAY6`]):
    /// a party whose call socket is IPv6 (`--bind [::]:0`) reaches them with
    /// [`CallLab::node6`].
    pub fn dual_stack(boxes: &[(u32, BoxOpts)], tag: &str) -> CallLab {
        CallLab::build(boxes, tag, true)
    }

    fn build(boxes: &[(u32, BoxOpts)], tag: &str, v6: bool) -> CallLab {
        let mut lab = Lab::new().unwrap();
        for (i, opts) in boxes {
            lab.add(*i, opts).unwrap();
        }
        let dir = tmp(tag);
        let listen: &[&str] = if v6 { &[SN, SN6] } else { &[SN] };
        let (sn, node) = bootstrap_supernode(&lab, &dir, listen);
        let relay_key = dir.join("relay.key");
        let mut args = vec![
            "--listen",
            RELAY,
            "--supernode",
            &node,
            "--identity",
            relay_key.to_str().unwrap(),
            "--allow-peer",
            "198.51.100.0/24",
        ];
        if v6 {
            args.extend(["--listen", RELAY6, "--allow-peer", "2001:db8::/32"]);
        }
        let relay = start_relayd(&lab, &args);
        CallLab {
            lab,
            node,
            dir,
            supernode: Some(sn),
            relay: Some(relay),
        }
    }

    /// The supernode's entry on IPv6 (a [`CallLab::dual_stack`] lab), for `-s`.
    pub fn node6(&self) -> String {
        let key = self.node.split('@').next().unwrap();
        format!("{key}@{SN6}")
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
        self.program_via(ns, program, &self.node)
    }

    /// A program of ours in namespace `ns`, pointed at the supernode entry `node`.
    pub fn program_via(&self, ns: &str, program: &str, node: &str) -> Command {
        let mut c = self.lab.command(ns, program);
        c.args(["-s", node]);
        c
    }

    /// Starts `answer` in `ns` with its own identity (`NAME.key` in the lab's directory) and
    /// `args`, and waits for its registration.
    pub fn answer(&self, ns: &str, name: &str, args: &[&str]) -> Answerer {
        self.answer_via(ns, name, &self.node, args)
    }

    /// [`CallLab::answer`] through the supernode entry `node` (e.g. [`CallLab::node6`]).
    pub fn answer_via(&self, ns: &str, name: &str, node: &str, args: &[&str]) -> Answerer {
        let mut child = self
            .program_via(ns, &program("answer", env!("CARGO_BIN_EXE_answer")), node)
            .arg("--identity")
            .arg(self.dir.join(format!("{name}.key")))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(self.log_of(name))
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
        self.dial_via(ns, name, &self.node, user, args)
    }

    /// [`CallLab::dial`] through the supernode entry `node`.
    pub fn dial_via(&self, ns: &str, name: &str, node: &str, user: &str, args: &[&str]) -> Command {
        let mut c = self.program_via(ns, &program("dial", env!("CARGO_BIN_EXE_dial")), node);
        c.arg("--identity")
            .arg(self.dir.join(format!("{name}.key")))
            .arg(user)
            .args(args)
            .stderr(self.log_of(name));
        c
    }

    /// Where a program's log goes: the test's stderr, or with `VOXMESH_CALL_LOGS` set (a
    /// debugging aid, e.g. with `RUST_LOG=voxmesh=debug`) `NAME.log` in the lab's directory.
    fn log_of(&self, name: &str) -> Stdio {
        if std::env::var_os("VOXMESH_CALL_LOGS").is_none() {
            return Stdio::inherit();
        }
        match std::fs::File::create(self.dir.join(format!("{name}.log"))) {
            Ok(f) => f.into(),
            Err(_) => Stdio::inherit(),
        }
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

/// What [`CallLab::tone_call`] saw: the caller's events and the callee's `connected` event.
pub struct ToneCall {
    pub dial: Dialled,
    pub connected: serde_json::Value,
    pub callee_connected: serde_json::Value,
    /// Everything the callee printed during the call.
    pub callee_events: Vec<serde_json::Value>,
    /// [`tone_share`] of the whole recordings: (callee heard 440 Hz, caller heard 660 Hz).
    pub shares: [(f64, f64); 2],
}

/// The path a party's call settled on first: its `connected` event's, or, when media arrived
/// before its own checks picked a pair (`connected` then has no path), the first `path` event's.
pub fn first_path(events: &[serde_json::Value]) -> Option<serde_json::Value> {
    let connected = events.iter().find(|e| e["event"] == "connected")?;
    if !connected["path"].is_null() {
        return Some(connected.clone());
    }
    events
        .iter()
        .find(|e| e["event"] == "path" && !e["path"].is_null())
        .cloned()
}

impl CallLab {
    /// One call from host 0 of box `from` to host 0 of box `to` (`answer --auto`), each side
    /// playing its own tone (caller 440 Hz for 3 s, callee 660 Hz) and recording the other.
    /// Checks that it connects at both ends with one SAS, ends by the caller's hang-up, and that
    /// each recording carries the far end's tone, loud; returns what it saw for path checks.
    pub fn tone_call(&self, from: u32, to: u32, caller_flags: &[&str], tag: &str) -> ToneCall {
        let dir = self.dir.join(tag);
        std::fs::create_dir_all(&dir).unwrap();
        let f = |n: &str| dir.join(n).to_str().unwrap().to_string();
        tone(&dir.join("a.wav"), 440.0, 3.0);
        tone(&dir.join("b.wav"), 660.0, 6.0);
        let mut bob = self.answer(
            &self.host_ns(to, 0),
            &format!("{tag}-bob"),
            &[
                "--auto",
                "--play",
                &f("b.wav"),
                "--record",
                &f("at-bob.wav"),
            ],
        );
        let mut args: Vec<String> = ["--play", &f("a.wav"), "--record", &f("at-alice.wav")]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(caller_flags.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let d = Dialled::run(self.dial(
            &self.host_ns(from, 0),
            &format!("{tag}-alice"),
            &bob.id,
            &args,
        ));
        let events = &d.events;
        assert_eq!(d.code, Some(0), "{tag}: dial: {events:#?}");
        let connected = d
            .event("connected")
            .unwrap_or_else(|| panic!("{tag}: the call connects: {events:#?}"))
            .clone();
        assert_eq!(
            d.event("ended").unwrap()["reason"],
            "hangup",
            "{tag}: {events:#?}"
        );
        // The callee hears the hang-up within its own signalling round trip.
        assert!(
            bob.wait("ended", Duration::from_secs(10)).is_some(),
            "{tag}: the callee sees the end: {:#?}",
            bob.seen
        );
        let callee_connected = bob
            .seen("connected")
            .unwrap_or_else(|| panic!("{tag}: the callee connects: {:#?}", bob.seen))
            .clone();
        assert_eq!(
            callee_connected["sas"], connected["sas"],
            "{tag}: both show one SAS"
        );
        let callee_events = std::mem::take(&mut bob.seen);
        drop(bob); // stops answer, which finishes its recording
        // Each far end's recording must hold one second of the tone sent to it, unbroken:
        // ten 100 ms blocks in a row that are that tone (a path change mid-call may glitch
        // once, which a whole-recording tone share counts against the call; audio that does
        // not flow, or flows broken, holds no such second).
        for (hz, got, who) in [
            (440.0, "at-bob.wav", "the callee heard the caller"),
            (660.0, "at-alice.wav", "the caller heard the callee"),
        ] {
            let blocks = tone_blocks(&dir.join(got), hz);
            let run = longest_run(&blocks, 0.9);
            assert!(
                run >= 10,
                "{tag}: {who}: longest clean run {run} blocks of 100 ms, shares {blocks:.2?}: \
                 {events:#?}"
            );
        }
        let shares = [
            tone_share(&dir.join("at-bob.wav"), 440.0),
            tone_share(&dir.join("at-alice.wav"), 660.0),
        ];
        let _ = std::fs::remove_dir_all(&dir);
        ToneCall {
            dial: d,
            connected,
            callee_connected,
            callee_events,
            shares,
        }
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
