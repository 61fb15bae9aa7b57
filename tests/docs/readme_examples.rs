//! The README's shell examples run as written.
//!
//! - The "Quick start on loopback" block runs whole, as one script: a supernode, an `answer` and
//!   a `dial` on 127.0.0.1. As root it runs in a network namespace of its own (`unshare --net`,
//!   only loopback inside), so its fixed port cannot meet another test's.
//! - Every other example line whose programs all need no network (`pipe-audio`, `jq`) runs in a
//!   scratch directory holding the files the examples name. ALSA's default device is the `null`
//!   device there (a `.asoundrc` in `$HOME`), so capture and playback work on machines without
//!   a sound card.
//! - Lines that name a server (natprobe, supernoded, relayd, dial, answer) are listed as skipped:
//!   they need a server on the lab's or the internet's addresses, and the lab tests run them.
//!   `scripts/test` and `scripts/demo` are what CI runs; they are not run from inside the suite.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A fenced `sh` block with the section it sits in.
struct Block {
    section: String,
    text: String,
}

fn sh_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut section = String::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            Some(text) if line.trim_start().starts_with("```") => {
                blocks.push(Block {
                    section: section.clone(),
                    text: std::mem::take(text),
                });
                current = None;
            }
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
            None if line.trim_start() == "```sh" => current = Some(String::new()),
            None if line.starts_with("## ") => section = line[3..].to_string(),
            None => {}
        }
    }
    assert!(current.is_none(), "an unclosed ``` block in the README");
    blocks
}

/// The block's commands, one per line, backslash continuations joined.
fn commands(block: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut acc = String::new();
    for line in block.lines() {
        match line.trim_end().strip_suffix('\\') {
            Some(head) => acc.push_str(head),
            None => {
                acc.push_str(line);
                let cmd = std::mem::take(&mut acc);
                if !cmd.trim().is_empty() && !cmd.trim_start().starts_with('#') {
                    out.push(cmd.trim().to_string());
                }
            }
        }
    }
    out
}

/// The first word of each stage of a pipeline (quotes respected, trailing comment dropped).
fn programs(cmd: &str) -> Vec<String> {
    let mut stages = vec![String::new()];
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for c in cmd.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '\'' | '"') => quote = Some(c),
            (None, '#') if prev.is_whitespace() => break,
            (None, '|') => {
                stages.push(String::new());
                prev = c;
                continue;
            }
            _ => {}
        }
        stages.last_mut().unwrap().push(c);
        prev = c;
    }
    stages
        .iter()
        .filter_map(|s| s.split_whitespace().next().map(String::from))
        .collect()
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_pipe-audio"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `bash -c script` in `dir` with our binaries first on PATH and `$HOME` = `dir`; bounded.
fn run(script: &str, dir: &Path, own_netns: bool, limit: Duration) -> (bool, String, String) {
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = if own_netns {
        let mut c = Command::new("unshare");
        c.args(["--net", "bash", "-c"])
            .arg("ip link set lo up && exec bash -c \"$0\"")
            .arg(script);
        c
    } else {
        let mut c = Command::new("bash");
        c.arg("-c").arg(script);
        c
    };
    let mut child = cmd
        .current_dir(dir)
        .env("PATH", path)
        .env("HOME", dir)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    // Drain both pipes on threads so a chatty command cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() >= end {
            // The whole group: the script's background daemons too.
            // SAFETY: kill(2) on a process group we created.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (t_out.join().unwrap(), t_err.join().unwrap());
    let ok = status.is_some_and(|s| s.success());
    let err = if status.is_none() {
        format!("timed out after {limit:?}\n{err}")
    } else {
        err
    };
    (ok, out, err)
}

use std::os::unix::process::CommandExt;

/// 16-bit mono 48 kHz WAV of a 1.5 s chirp (200 Hz to 4 kHz) at -10 dBFS.
fn chirp(path: &Path) {
    let n = 72_000usize;
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    let mut phase = 0.0f64;
    for i in 0..n {
        let f = 200.0 * (20.0f64).powf(i as f64 / n as f64);
        phase += 2.0 * std::f64::consts::PI * f / 48_000.0;
        w.write_sample((0.3 * phase.sin() * 32767.0) as i16)
            .unwrap();
    }
    w.finalize().unwrap();
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn readme_examples_run_as_written() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let blocks = sh_blocks(&readme);
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    std::fs::write(dir.join(".asoundrc"), "pcm.!default { type null }\n").unwrap();
    for f in ["talk.wav", "song.wav", "sent.wav", "got.wav"] {
        chirp(&dir.join(f));
    }

    let (mut ran, mut skipped, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    let mut scripts = Vec::new();
    let mut quick_start = 0;
    for b in &blocks {
        if b.section.starts_with("Quick start") {
            quick_start += 1;
            let qs = tempfile::tempdir().unwrap();
            let script = format!("set -euo pipefail\n{}", b.text);
            let (ok, out, err) = run(&script, qs.path(), is_root(), Duration::from_secs(60));
            assert!(ok, "the quick start failed:\n{out}\n{err}");
            let events: Vec<serde_json::Value> = out
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let find = |name: &str| events.iter().find(|e| e["event"] == name);
            let connected = find("connected").unwrap_or_else(|| panic!("no call: {out}"));
            assert_eq!(connected["path"], "direct", "{out}");
            assert_eq!(find("ended").unwrap()["reason"], "hangup", "{out}");
            // The last line is the level of what alice heard: bob's tone at -10 dBFS peak.
            let level: f64 = out.lines().last().unwrap().trim().parse().unwrap();
            assert!(
                level > -20.0,
                "alice heard too little ({level} dBFS):\n{out}"
            );
            assert!(qs.path().join("at-bob.wav").exists());
            ran.push("quick start".to_string());
            continue;
        }
        for cmd in commands(&b.text) {
            let progs = programs(&cmd);
            if progs.iter().any(|p| p.starts_with("scripts/")) {
                scripts.push(cmd);
                continue;
            }
            if !progs.iter().all(|p| p == "pipe-audio" || p == "jq") {
                skipped.push(cmd);
                continue;
            }
            let script = format!("set -o pipefail\n{cmd}");
            let (ok, out, err) = run(&script, dir, false, Duration::from_secs(60));
            if !ok {
                failed.push(format!("{cmd}\n  stdout: {out}\n  stderr: {err}"));
            }
            ran.push(cmd);
        }
    }
    eprintln!("ran {} examples: {ran:#?}", ran.len());
    eprintln!("skipped (they name a server): {skipped:#?}");
    eprintln!("not run here (the suite and the demo, which CI runs itself): {scripts:?}");
    assert!(
        failed.is_empty(),
        "README examples failed:\n{}",
        failed.join("\n")
    );
    assert_eq!(quick_start, 1, "one quick-start block");
    // The pipe-audio section's examples are the bulk; an extraction bug would run none.
    assert!(ran.len() >= 6, "only {} examples ran: {ran:?}", ran.len());
}

#[test]
fn pipelines_split_into_programs() {
    assert_eq!(
        programs("pipe-audio gen dtmf 1234# | pipe-audio play -d null --stats"),
        ["pipe-audio", "pipe-audio"]
    );
    assert_eq!(
        programs("answer --exec 'pipe-audio play | x'   # each call"),
        ["answer"]
    );
    assert_eq!(
        programs("natprobe --json | jq .nat # comment | dial"),
        ["natprobe", "jq"]
    );
    assert_eq!(
        commands("a \\\n  b\n# c\n\nd\n"),
        ["a   b".to_string(), "d".to_string()]
    );
}
