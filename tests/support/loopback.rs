//! Calls on loopback: one `supernoded` on 127.0.0.1 and `answer`/`dial` processes around it,
//! each with its own identity file in a per-test directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub use super::calls::{json_lines as lines, wait_event};
use super::common::spawn_supernode;

/// A child process killed (and reaped) when dropped, so a failing test leaves nothing behind.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh directory for one test's identity files and sockets.
pub fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vx-loop-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A supernode on an ephemeral loopback port; returns it and its `KEY@ADDR` entry for `-s`.
pub fn supernode(dir: &Path) -> (Kill, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_supernoded"));
    cmd.args(["--listen", "127.0.0.1:0"]);
    let (child, node) = spawn_supernode(cmd, dir);
    (Kill(child), node)
}

/// An `answer` as `name` (identity `NAME.key` in `dir`) with `args`, its stdin piped (for
/// `--control -`); returns it, its events and its ID once it registered.
pub fn answer(
    dir: &Path,
    node: &str,
    name: &str,
    args: &[&str],
) -> (Kill, mpsc::Receiver<serde_json::Value>, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_answer"))
        .args(["-s", node, "--identity"])
        .arg(dir.join(format!("{name}.key")))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let rx = lines(&mut c);
    let reg = wait_event(&rx, "registered", Duration::from_secs(10), &mut Vec::new())
        .expect("answer registers");
    let id = reg["user"].as_str().unwrap().to_string();
    (Kill(c), rx, id)
}

/// A `dial` as `me` to `who` with `args`, not started yet.
pub fn dial_cmd(dir: &Path, node: &str, me: &str, who: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dial"));
    c.args(["-s", node, "--identity"])
        .arg(dir.join(format!("{me}.key")))
        .arg(who)
        .args(args)
        .stderr(Stdio::inherit());
    c
}

/// Runs `c` to its end: its exit status (-1 for a signal) and its events.
pub fn run(mut c: Command) -> (i32, Vec<serde_json::Value>) {
    let out = c.output().unwrap();
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out.status.code().unwrap_or(-1), events)
}

/// The first event named `name`.
pub fn event<'a>(events: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    events.iter().find(|e| e["event"] == name)
}

/// The `ended` event's reason, or "" when there is none.
pub fn ended(events: &[serde_json::Value]) -> String {
    event(events, "ended")
        .and_then(|e| e["reason"].as_str())
        .unwrap_or_default()
        .to_string()
}
