//! One process per identity, with the real programs on loopback: a second `supernoded`,
//! `answer` or `relayd --supernode` on a key file that a running process holds exits 10, naming
//! the file and the holder's PID, and starts nothing; a lookup-only `dial` runs beside an
//! `answer` of the same identity without disturbing its registration; and the lock dies with
//! its holder, even by SIGKILL, so a restart on the same key works.
//!
//! Every wait is bounded: a refused process exits as soon as it has tried the lock (no protocol
//! timer is involved, so `EXIT_TIMEOUT` is only a safety net), and a registration is awaited for
//! the 10 s other loopback tests allow.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use voxmesh::cli::EXIT_IDENTITY_IN_USE;

/// A refused process has nothing to wait for; this only bounds a hang.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Handshake and registration with a supernode on loopback, as the other loopback tests allow.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// A running program: SIGKILLed and reaped when dropped. Its stdout lines arrive on `lines`.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to release anything itself; the kernel drops its lock.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The next stdout line whose "event" is `event`, within `limit`.
    fn event(&self, event: &str, limit: Duration) -> Option<serde_json::Value> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            let v: serde_json::Value = serde_json::from_str(&line).ok()?;
            if v["event"] == event {
                return Some(v);
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(program: &str, args: &[String]) -> Proc {
    let mut child = Command::new(program)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Proc { child, lines }
}

/// Runs a program that should exit by itself; kills it after `EXIT_TIMEOUT`.
fn run_bounded(program: &str, args: &[String]) -> Output {
    let child = Command::new(program)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(EXIT_TIMEOUT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: our own unreaped child, so the PID cannot have been reused.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{program} {args:?} did not exit within {EXIT_TIMEOUT:?}");
        }
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn supernoded_args(dir: &Path, key: &Path, name: &str) -> Vec<String> {
    let mut a = strings(&["--listen", "127.0.0.1:0", "-q", "--identity"]);
    a.push(path(key));
    a.extend(["--control".into(), path(&dir.join(format!("{name}.sock")))]);
    a.extend([
        "--host-cache".into(),
        path(&dir.join(format!("{name}.hosts"))),
    ]);
    a
}

/// A supernode (with a key of its own) for clients to register with; returns it and its entry.
fn supernode(dir: &Path) -> (Proc, String) {
    let sn = spawn(
        env!("CARGO_BIN_EXE_supernoded"),
        &supernoded_args(dir, &dir.join("sn.key"), "sn"),
    );
    let line = sn
        .event("listening", EXIT_TIMEOUT)
        .expect("supernoded started");
    let entry = line["node"].as_str().expect("node entry").to_string();
    (sn, entry)
}

/// The refusal: exit 10, one line on stderr naming the program, the key file and the holder's
/// PID, nothing on stdout (no start line: nothing was started).
#[track_caller]
fn assert_refused(out: &Output, program: &str, key: &Path, holder: u32) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(EXIT_IDENTITY_IN_USE)),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let want = format!(
        "{program}: identity key file {} is in use by process {holder}: ",
        key.display()
    );
    assert!(
        err.starts_with(&want),
        "{err}\nwanted it to start with {want}"
    );
    assert!(err.contains("--identity"), "says what to do: {err}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_second_supernoded_on_a_held_identity_exits_10_and_a_restart_after_sigkill_works() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("shared.key");
    let mut first = spawn(
        env!("CARGO_BIN_EXE_supernoded"),
        &supernoded_args(dir.path(), &key, "first"),
    );
    let node = first
        .event("listening", EXIT_TIMEOUT)
        .expect("first started")["node"]
        .clone();
    let out = run_bounded(
        env!("CARGO_BIN_EXE_supernoded"),
        &supernoded_args(dir.path(), &key, "second"),
    );
    assert_refused(&out, "supernoded", &key, first.pid());
    // SIGKILL, then the same key again: the lock went with the process.
    first.kill();
    let third = spawn(
        env!("CARGO_BIN_EXE_supernoded"),
        &supernoded_args(dir.path(), &key, "third"),
    );
    let again = third
        .event("listening", EXIT_TIMEOUT)
        .expect("restart started");
    let key_of = |v: &serde_json::Value| v.as_str().unwrap().split('@').next().unwrap().to_string();
    assert_eq!(key_of(&again["node"]), key_of(&node), "the same node key");
}

fn answer_args(dir: &Path, key: &Path, entry: &str, name: &str) -> Vec<String> {
    let mut a = strings(&[
        "--supernode",
        entry,
        "--bind",
        "127.0.0.1:0",
        "-q",
        "--identity",
    ]);
    a.push(path(key));
    a.extend([
        "--host-cache".into(),
        path(&dir.join(format!("{name}.hosts"))),
    ]);
    a.extend(["--contacts".into(), path(&dir.join("no-contacts"))]);
    a
}

fn dial_args(dir: &Path, key: &Path, entry: &str, user: &str) -> Vec<String> {
    let mut a = strings(&[
        "--lookup",
        user,
        "--supernode",
        entry,
        "--bind",
        "127.0.0.1:0",
    ]);
    a.extend(strings(&["-q", "--timeout", "10", "--identity"]));
    a.push(path(key));
    a.extend(["--host-cache".into(), path(&dir.join("dial.hosts"))]);
    a.extend(["--contacts".into(), path(&dir.join("no-contacts"))]);
    a
}

/// `answer` holds its identity; a second `answer` on it is refused; `dial --lookup` on the same
/// identity is not (it only reads the key) and leaves the registration alone; after a SIGKILL,
/// `answer` registers again on the same key.
#[test]
fn a_second_answer_on_a_held_identity_exits_10_but_dial_runs_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_sn, entry) = supernode(dir.path());
    let key = dir.path().join("alice.key");
    let mut first = spawn(
        env!("CARGO_BIN_EXE_answer"),
        &answer_args(dir.path(), &key, &entry, "first"),
    );
    let registered = first
        .event("registered", REGISTER_TIMEOUT)
        .expect("answer registered");
    let me = registered["user"].as_str().unwrap().to_string();

    let out = run_bounded(
        env!("CARGO_BIN_EXE_answer"),
        &answer_args(dir.path(), &key, &entry, "second"),
    );
    assert_refused(&out, "answer", &key, first.pid());

    // dial on the same identity: not locked out, finds its own user online...
    let out = run_bounded(
        env!("CARGO_BIN_EXE_dial"),
        &dial_args(dir.path(), &key, &entry, &me),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(
        (v["id"].as_str(), &v["online"]),
        (Some(me.as_str()), &true.into())
    );
    // ...and once it is gone, the registration it ran beside is still there, as another user
    // sees it.
    let out = run_bounded(
        env!("CARGO_BIN_EXE_dial"),
        &dial_args(dir.path(), &dir.path().join("bob.key"), &entry, &me),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    first.kill();
    let third = spawn(
        env!("CARGO_BIN_EXE_answer"),
        &answer_args(dir.path(), &key, &entry, "third"),
    );
    let again = third
        .event("registered", REGISTER_TIMEOUT)
        .expect("answer registered again after SIGKILL");
    assert_eq!(again["user"].as_str(), Some(me.as_str()));
}

fn relayd_args(key: &Path, entry: &str) -> Vec<String> {
    let mut a = strings(&["--listen", "udp:127.0.0.1:0", "--relay-ip", "127.0.0.1"]);
    a.extend(strings(&[
        "--supernode",
        entry,
        "--drain",
        "0",
        "-q",
        "--identity",
    ]));
    a.push(path(key));
    a
}

/// relayd's key (used for its sessions with supernodes) is locked the same way.
#[test]
fn a_second_relayd_on_a_held_relay_key_exits_10_and_a_restart_after_sigkill_works() {
    let dir = tempfile::tempdir().unwrap();
    let (_sn, entry) = supernode(dir.path());
    let key = dir.path().join("relay.key");
    let mut first = spawn(env!("CARGO_BIN_EXE_relayd"), &relayd_args(&key, &entry));
    let line = first
        .event("listening", EXIT_TIMEOUT)
        .expect("relayd started");
    let out = run_bounded(env!("CARGO_BIN_EXE_relayd"), &relayd_args(&key, &entry));
    assert_refused(&out, "relayd", &key, first.pid());
    first.kill();
    let third = spawn(env!("CARGO_BIN_EXE_relayd"), &relayd_args(&key, &entry));
    let again = third
        .event("listening", EXIT_TIMEOUT)
        .expect("restart started");
    assert_eq!(again["relay"], line["relay"], "the same relay ID");
}
