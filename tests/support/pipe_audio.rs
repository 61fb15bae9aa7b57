//! Helpers shared by the pipe-audio tests: the binary, scratch directories, external tools.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The pipe-audio binary of this build.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pipe-audio")
}

/// A scratch directory removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("voxmesh-pa-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    /// A path inside, as a string.
    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs pipe-audio with `args`, returning its output.
pub fn pa(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs pipe-audio and insists it succeeds.
pub fn pa_ok(args: &[&str]) -> Output {
    let o = pa(args);
    assert!(
        o.status.success(),
        "pipe-audio {args:?} failed ({:?}): {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Runs any command and insists it succeeds.
pub fn sh_ok(cmd: &str, args: &[&str]) -> Output {
    let o = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Runs a shell pipeline and insists it succeeds.
pub fn pipeline_ok(script: &str) -> Output {
    let o = Command::new("bash")
        .args(["-o", "pipefail", "-c", script])
        .env("PA", bin())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Whether `tool` runs here; without it a test skips with a message, except under CI=true,
/// where it fails (CI must never pass by skipping).
pub fn have(tool: &str, probe: &[&str], test: &str) -> bool {
    let ok = Command::new(tool)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: {tool} is missing (scripts/setup installs it)"
        );
        eprintln!("{test}: skipped, {tool} is missing (run scripts/setup)");
    }
    ok
}

/// The analysis JSON of `file` (optionally against `reference`).
pub fn analyze(file: &str, reference: Option<&str>) -> serde_json::Value {
    let mut args = vec!["analyze", file, "--json"];
    if let Some(r) = reference {
        args.extend(["--reference", r]);
    }
    serde_json::from_slice(&pa_ok(&args).stdout).unwrap()
}

/// Samples of a WAV file as f64, read with hound (an implementation independent of ours),
/// mixed to mono.
pub fn wav_mono(path: &str) -> (u32, Vec<f64>) {
    let mut r = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let spec = r.spec();
    let ch = spec.channels as usize;
    let raw: Vec<f64> = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().map(|s| s.unwrap() as f64).collect(),
        hound::SampleFormat::Int => {
            let scale = (1u64 << (spec.bits_per_sample - 1)) as f64;
            r.samples::<i32>()
                .map(|s| s.unwrap() as f64 / scale)
                .collect()
        }
    };
    let mono = raw
        .chunks_exact(ch)
        .map(|f| f.iter().sum::<f64>() / ch as f64)
        .collect();
    (spec.sample_rate, mono)
}

/// Frames in a WAV file, by hound.
pub fn wav_frames(path: &str) -> u32 {
    hound::WavReader::open(Path::new(path)).unwrap().duration()
}
