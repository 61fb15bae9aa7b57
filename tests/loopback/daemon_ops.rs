//! What an operator relies on, against the real binaries on loopback:
//! - `relayd --config relayd.toml` and `RELAYD_AUTH_SECRET=… relayd …` serve TURN: our client
//!   allocates and coturn's `turnutils_uclient` relays through them without loss; precedence is
//!   flag > environment > file; an unknown key is a usage error (exit 2);
//! - readiness: with `NOTIFY_SOCKET` (a path or an abstract '@' name) both daemons send READY=1
//!   once serving and STOPPING=1 on SIGTERM;
//! - `$STATE_DIRECTORY` and `$RUNTIME_DIRECTORY` place supernoded's key and control socket, and
//!   `supernoded status --json` finds the socket and prints plain JSON objects;
//! - logs carry no escape codes when stderr is not a terminal; relayd logs one line per
//!   allocation end;
//! - `systemd-analyze verify` accepts both units in contrib/systemd.
//!
//! Loopback only: the only data relayed goes between allocations of the same relay.

use crate::support::common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use voxmesh::net::drivers::turn_client::{TurnRelay, TurnTransport};
use voxmesh::turn::{TurnClientConfig, mint_rest_credential};

/// How long any one step may take (a start, an allocation, a notification).
const WAIT: Duration = Duration::from_secs(10);
const SECRET: &str = "north";

/// A daemon child, killed when dropped; its first stdout line and its stderr lines (read by a
/// thread as they come).
struct Daemon {
    child: Child,
    line: serde_json::Value,
    stderr: std::sync::mpsc::Receiver<String>,
    /// Lines already taken from `stderr` by [`Daemon::wait_log`].
    seen: Vec<String>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let err = child.stderr.take().unwrap();
        let (etx, erx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = etx.send(l);
            }
        });
        let line = rx.recv_timeout(WAIT).unwrap_or_default();
        let line = match serde_json::from_str(line.trim()) {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log: Vec<String> = erx.iter().collect();
                panic!("did not start: {line:?}; stderr: {}", log.join("\n"));
            }
        };
        Daemon {
            child,
            line,
            stderr: erx,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a log line containing `needle`, and returns it.
    fn wait_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.stderr.recv_timeout(left).unwrap_or_else(|_| {
                panic!("no log line with {needle:?} in {WAIT:?}: {:?}", self.seen)
            });
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// (transport, address) of each listener in relayd's start line.
    fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.line["listen"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["transport"].as_str().unwrap().to_string(),
                    l["address"].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect()
    }

    fn addr(&self, transport: &str) -> SocketAddr {
        self.listeners()
            .into_iter()
            .find(|(t, _)| t == transport)
            .unwrap_or_else(|| panic!("no {transport} listener: {}", self.line))
            .1
    }

    fn term(&self) {
        // SAFETY: kill(2) on our own child's PID.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) },
            0
        );
    }

    /// SIGTERM, then the exit status and everything it logged.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        self.term();
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "still running after {WAIT:?}");
            std::thread::sleep(Duration::from_millis(5));
        };
        // The pipe closes at exit: the rest of the log is there.
        let mut log = std::mem::take(&mut self.seen);
        log.extend(self.stderr.iter());
        (status, log.join("\n") + "\n")
    }
}

fn relayd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_relayd"));
    // The test's own environment must not leak flags in.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RELAYD_") {
            c.env_remove(k);
        }
    }
    c
}

fn supernoded() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_supernoded"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SUPERNODED_") {
            c.env_remove(k);
        }
    }
    c
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One allocation over UDP with (user, password), released again.
fn allocate_and_release(server: SocketAddr, user: &str, password: &str) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let cfg = TurnClientConfig::new(server, user, password);
            let relay = TurnRelay::allocate(cfg, TurnTransport::Udp, WAIT)
                .await
                .unwrap_or_else(|e| panic!("allocate at {server} as {user}: {e}"));
            assert_eq!(relay.relayed().ip().to_string(), "127.0.0.1");
            relay.release().await;
        });
}

/// Two allocations as (user, password); the first sends `data` to the second's relayed
/// address (delivered inside the relay), which must receive it; then both are released.
fn exchange(server: SocketAddr, user: &str, password: &str, data: &[u8]) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let alloc = || {
                TurnRelay::allocate(
                    TurnClientConfig::new(server, user, password),
                    TurnTransport::Udp,
                    WAIT,
                )
            };
            let a = alloc().await.expect("allocate a");
            let mut b = alloc().await.expect("allocate b");
            b.create_permission(a.relayed())
                .await
                .expect("permission b");
            a.create_permission(b.relayed())
                .await
                .expect("permission a");
            a.send_to(b.relayed(), data).await.expect("send");
            let (from, got) = tokio::time::timeout(WAIT, b.recv())
                .await
                .expect("nothing relayed in time")
                .expect("b closed");
            assert_eq!((from, &got[..]), (a.relayed(), data));
            a.release().await;
            b.release().await;
        });
}

/// coturn's `turnutils_uclient` over UDP, client to client (-y: the peers are allocations of
/// the same relay), with `auth` (-u/-w or -W): every message arrives.
fn uclient(port: u16, auth: &[&str]) {
    // uclient starts each client 1-6 s after connecting and sends 50 messages 5 ms apart; it
    // exits once everything arrived: 60 s is a bound, not an expectation.
    let out = Command::new("timeout")
        .args(["60", "turnutils_uclient", "-y", "-m", "2", "-n", "50"])
        .args(["-z", "5"])
        .args(auth)
        .args(["-p", &port.to_string(), "127.0.0.1"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let totals = text
        .lines()
        .rev()
        .find(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))
        .unwrap_or_else(|| panic!("uclient printed no totals:\n{text}"));
    let count = |key: &str| -> u64 {
        let rest = &totals[totals.find(key).unwrap_or_else(|| panic!("{totals}")) + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{totals}"))
    };
    // Each of the 2 x 2 clients (-y pairs them) sends its 50.
    let (sent, got) = (count("tot_send_msgs="), count("tot_recv_msgs="));
    assert!(sent >= 100 && got == sent, "{totals}\n{text}");
    assert!(text.contains("Total lost packets 0 "), "loss:\n{text}");
}

#[test]
fn relayd_serves_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("relayd.toml");
    std::fs::write(
        &conf,
        format!(
            "# the interop suite's loopback configuration, as a file\n\
             listen = [\"127.0.0.1:0\"]\n\
             relay-ip = [\"127.0.0.1\"]\n\
             user = [\"alice:secret\"]\n\
             auth_secret = [\"{SECRET}\"]\n\
             user-quota = 8\n\
             drain = 1\n\
             verbose = 1\n"
        ),
    )
    .unwrap();
    let mut cmd = relayd();
    cmd.arg("--config").arg(&conf);
    let d = Daemon::start(cmd);
    let udp = d.addr("udp");
    assert_eq!(d.addr("tcp").port(), udp.port(), "{}", d.line);
    allocate_and_release(udp, "alice", "secret");
    let (user, pass) = mint_rest_credential(SECRET.as_bytes(), "bob", unix_now() + 600);
    allocate_and_release(udp, &user, &pass);
    exchange(udp, "alice", "secret", b"twelve bytes");
    if common::coturn_or_skip("relayd_serves_from_a_config_file") {
        uclient(udp.port(), &["-u", "alice", "-w", "secret"]);
    }
    let (status, log) = d.stop();
    assert!(status.success(), "{status}: {log}");
    // verbose = 1 from the file: one info line per allocation end, naming user and client.
    let ended: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("allocation ended"))
        .collect();
    assert!(
        ended.iter().any(
            |l| l.contains("user=alice client=udp:127.0.0.1:") && l.contains("to_peer_bytes=0")
        ),
        "{log}"
    );
    assert!(
        ended.iter().any(|l| l.contains(&format!("user={user} "))),
        "{log}"
    );
    // The exchange: 12 bytes out of one allocation and into the other, each counted once.
    assert!(
        ended
            .iter()
            .any(|l| l.contains("to_peer_bytes=12 to_client_bytes=0 ")),
        "{log}"
    );
    assert!(
        ended
            .iter()
            .any(|l| l.contains("to_peer_bytes=0 to_client_bytes=12 ")),
        "{log}"
    );
    // stderr is a pipe: no colour escape codes.
    assert!(
        !log.contains('\x1b'),
        "escape codes in a piped log: {log:?}"
    );
}

#[test]
fn relayd_takes_its_secret_and_flags_from_the_environment() {
    let mut cmd = relayd();
    cmd.env("RELAYD_AUTH_SECRET", SECRET)
        .env("RELAYD_LISTEN", "udp:127.0.0.1:0,tcp:127.0.0.1:0")
        .env("RELAYD_RELAY_IP", "127.0.0.1")
        .env("RELAYD_DRAIN", "1")
        .arg("-q");
    let d = Daemon::start(cmd);
    let kinds: Vec<String> = d.listeners().into_iter().map(|(t, _)| t).collect();
    assert_eq!(kinds, ["udp", "tcp"], "{}", d.line);
    let udp = d.addr("udp");
    let (user, pass) = mint_rest_credential(SECRET.as_bytes(), "carol", unix_now() + 600);
    allocate_and_release(udp, &user, &pass);
    if common::coturn_or_skip("relayd_takes_its_secret_and_flags_from_the_environment") {
        uclient(udp.port(), &["-W", SECRET]);
    }
    let (status, log) = d.stop();
    assert!(status.success(), "{status}: {log}");
}

#[test]
fn flags_beat_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("relayd.toml");
    std::fs::write(
        &conf,
        "listen = [\"udp:127.0.0.1:0\"]\nrelay-ip = [\"127.0.0.1\"]\nuser = [\"a:b\"]\nverbose = 2\n",
    )
    .unwrap();
    let kinds = |d: &Daemon| -> Vec<String> { d.listeners().into_iter().map(|(t, _)| t).collect() };
    // The file alone.
    let mut cmd = relayd();
    cmd.arg("--config").arg(&conf);
    let d = Daemon::start(cmd);
    assert_eq!(kinds(&d), ["udp"]);
    drop(d);
    // The environment over the file (and -q over the file's verbose, which it excludes).
    let mut cmd = relayd();
    cmd.env("RELAYD_CONFIG", &conf)
        .env("RELAYD_LISTEN", "tcp:127.0.0.1:0")
        .arg("-q");
    let d = Daemon::start(cmd);
    assert_eq!(kinds(&d), ["tcp"]);
    let (status, log) = d.stop();
    assert!(
        status.success() && log.trim().is_empty(),
        "{status}: {log:?}"
    );
    // The command line over both.
    let mut cmd = relayd();
    cmd.env("RELAYD_CONFIG", &conf)
        .env("RELAYD_LISTEN", "tcp:127.0.0.1:0")
        .args(["--listen", "udp:127.0.0.1:0", "--listen", "tcp:127.0.0.1:0"]);
    let d = Daemon::start(cmd);
    assert_eq!(kinds(&d), ["udp", "tcp"]);
}

#[test]
fn a_bad_config_file_is_a_usage_error_naming_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, says) in [
        (
            "listen = [\"127.0.0.1:0\"]\nlisten-port = 3478\n",
            "listen-port",
        ),
        ("user-quota = \"many\"\n", "many"),
        ("listen = [\n", "relayd.toml"),
    ] {
        let conf = dir.path().join("relayd.toml");
        std::fs::write(&conf, text).unwrap();
        let out = relayd().arg("--config").arg(&conf).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(
            err.contains("relayd.toml") && err.contains(says),
            "{text}: {err}"
        );
    }
    let out = relayd()
        .args(["--config", "/nonexistent/relayd.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Waits (bounded) for the next datagram on `sock`.
fn recv_notify(sock: &UnixDatagram) -> String {
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("no notification in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The daemon's start line is out before READY=1 (the listeners are bound), and SIGTERM gives
/// STOPPING=1 then a clean exit.
fn ready_and_stopping(mut cmd: Command, sock: &UnixDatagram, addr: &str) {
    cmd.env("NOTIFY_SOCKET", addr);
    let d = Daemon::start(cmd);
    assert_eq!(recv_notify(sock), "READY=1");
    d.term();
    assert_eq!(recv_notify(sock), "STOPPING=1");
    let (status, log) = d.stop();
    assert!(status.success(), "{status}: {log}");
}

#[test]
fn both_daemons_notify_readiness_on_a_path_and_an_abstract_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let mut r = relayd();
    r.args([
        "--listen",
        "127.0.0.1:0",
        "--relay-ip",
        "127.0.0.1",
        "--user",
        "a:b",
        "-q",
    ]);
    ready_and_stopping(r, &sock, path.to_str().unwrap());
    let mut s = supernoded();
    s.args(["--stun-only", "--listen", "127.0.0.1:0", "-q"]);
    ready_and_stopping(s, &sock, path.to_str().unwrap());

    // Linux's abstract namespace: '@' in $NOTIFY_SOCKET stands for the leading NUL.
    use std::os::linux::net::SocketAddrExt;
    let name = format!("voxmesh-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let abs = UnixDatagram::bind_addr(&addr).unwrap();
    let mut r = relayd();
    r.args([
        "--listen",
        "127.0.0.1:0",
        "--relay-ip",
        "127.0.0.1",
        "--user",
        "a:b",
        "-q",
    ]);
    ready_and_stopping(r, &abs, &format!("@{name}"));
}

#[test]
fn supernoded_follows_systemds_directories_and_status_prints_json() {
    let state = tempfile::tempdir().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let mut cmd = supernoded();
    cmd.env("STATE_DIRECTORY", state.path())
        .env("RUNTIME_DIRECTORY", runtime.path())
        .args(["--listen", "127.0.0.1:0", "-v"]);
    let mut d = Daemon::start(cmd);
    assert!(state.path().join("supernode.key").is_file());
    let sock = runtime.path().join("supernoded.sock");
    assert!(sock.exists(), "no control socket in $RUNTIME_DIRECTORY");
    // systemctl reload sends SIGHUP: supernoded logs it and keeps serving.
    // SAFETY: kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) }, 0);
    d.wait_log("SIGHUP: nothing to reload");
    let out = supernoded()
        .env("RUNTIME_DIRECTORY", runtime.path())
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Objects all the way down: no Debug strings, no tuples.
    assert!(v.is_object(), "{v}");
    assert!(
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m.is_object()),
        "{v}"
    );
    assert!(
        v["relays"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.is_object()),
        "{v}"
    );
    assert!(v["session"]["refused"].is_object(), "{v}");
    fn no_debug(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => !s.contains(" { ") && !s.contains("(["),
            serde_json::Value::Array(a) => a.iter().all(no_debug),
            serde_json::Value::Object(o) => o.values().all(no_debug),
            _ => true,
        }
    }
    assert!(no_debug(&v), "{v}");
    let (status, log) = d.stop();
    assert!(status.success(), "{status}: {log}");
}

/// `systemd-analyze verify` on both units, with ExecStart pointing at the built binaries (it
/// checks that the command exists) and MANPATH at the repository's man pages (it checks
/// Documentation=man:...). Warnings fail the test too: systemd ignores a bad line with a
/// warning and still exits 0.
#[test]
fn systemd_units_verify() {
    let test = "systemd_units_verify";
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: systemd-analyze missing under CI=true"
        );
        eprintln!("SKIPPED {test}: systemd-analyze is not installed");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let man1 = dir.path().join("man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    let mut units = Vec::new();
    for (name, bin) in [
        ("relayd", env!("CARGO_BIN_EXE_relayd")),
        ("supernoded", env!("CARGO_BIN_EXE_supernoded")),
    ] {
        std::fs::copy(
            root.join(format!("man/{name}.1")),
            man1.join(format!("{name}.1")),
        )
        .unwrap();
        let text =
            std::fs::read_to_string(root.join(format!("contrib/systemd/{name}.service"))).unwrap();
        let exec = format!("ExecStart=/usr/local/bin/{name} ");
        assert!(text.contains(&exec), "{name}.service: {exec}");
        for want in [
            "Type=notify",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "RestartPreventExitStatus=2",
            "StateDirectory=",
            "RuntimeDirectory=",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "NoNewPrivileges=yes",
        ] {
            assert!(text.contains(want), "{name}.service lacks {want}");
        }
        let unit = dir.path().join(format!("{name}.service"));
        std::fs::write(&unit, text.replace(&exec, &format!("ExecStart={bin} "))).unwrap();
        units.push(unit);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}

/// relayd's stop timeout must outlast its drain: TimeoutStopSec > the --drain default.
#[test]
fn relayd_unit_waits_longer_than_the_drain() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("contrib/systemd/relayd.service")).unwrap();
    let stop: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec")
        .parse()
        .unwrap();
    let help = relayd().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let drain: u64 = help
        .split("--drain <SECONDS>")
        .nth(1)
        .and_then(|s| s.split("[default: ").nth(1))
        .and_then(|s| s.split(']').next())
        .expect("--drain default in --help")
        .parse()
        .unwrap();
    assert!(stop > drain, "TimeoutStopSec={stop} vs --drain {drain}");
}

/// `GET /metrics` over plain HTTP/1.1: the body.
fn scrape(addr: SocketAddr) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(&addr, WAIT).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Parses Prometheus text with the reference Python client's parser: every sample as
/// (sample name, labels, value), by family name with its type. `None` when the parser is not
/// installed (a failure under CI=true: scripts/setup installs it).
fn parse_prometheus(text: &str) -> Option<serde_json::Value> {
    let script = "import json, sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        out = {}\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   out[f.name] = {'type': f.type, 'help': f.documentation,\n\
        \x20       'samples': [[s.name, s.labels, s.value] for s in f.samples]}\n\
        print(json.dumps(out))\n";
    let probe = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3 prometheus_client missing under CI=true (run scripts/setup)"
        );
        eprintln!("SKIPPED the text-format parse: python3 prometheus_client is missing");
        return None;
    }
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// The value of `sample` (with exactly `labels`) in a parsed exposition.
fn sample(
    parsed: &serde_json::Value,
    family: &str,
    sample: &str,
    labels: serde_json::Value,
) -> f64 {
    parsed[family]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family} in {parsed}"))
        .iter()
        .find(|s| s[0] == sample && s[1] == labels)
        .unwrap_or_else(|| panic!("no {sample} {labels} in {}", parsed[family]))[2]
        .as_f64()
        .unwrap()
}

/// Polls `/metrics` (rebuilt once a second by the daemons) until `ready` holds, for at most
/// [`WAIT`].
fn scrape_until(addr: SocketAddr, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = scrape(addr);
        if ready(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never got there:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn line_value(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn supernoded_metrics_carry_the_directory_and_parse() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = supernoded();
    cmd.args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "-q"])
        .arg("--identity")
        .arg(dir.path().join("sn.key"))
        .arg("--control")
        .arg(dir.path().join("sn.sock"));
    let d = Daemon::start(cmd);
    let entry = d.line["node"].as_str().unwrap().to_string();
    let metrics: SocketAddr = d.line["metrics"].as_str().unwrap().parse().unwrap();
    // A real client registers (answer), another looks it up (dial --lookup).
    let mut answer = Command::new(env!("CARGO_BIN_EXE_answer"))
        .args(["--supernode", &entry, "--bind", "127.0.0.1:0", "-q"])
        .arg("--identity")
        .arg(dir.path().join("answer.key"))
        .arg("--host-cache")
        .arg(dir.path().join("answer.hosts"))
        .arg("--contacts")
        .arg(dir.path().join("no-contacts"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = BufReader::new(answer.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let registered: serde_json::Value = loop {
        let l = rx.recv_timeout(WAIT).expect("answer did not register");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        if v["event"] == "registered" {
            break v;
        }
    };
    let id = registered["user"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no id in {registered}"));
    let out = Command::new(env!("CARGO_BIN_EXE_dial"))
        .args([
            "--lookup",
            &id,
            "--supernode",
            &entry,
            "--bind",
            "127.0.0.1:0",
            "-q",
        ])
        .args(["--timeout", "10", "--identity"])
        .arg(dir.path().join("dial.key"))
        .arg("--host-cache")
        .arg(dir.path().join("dial.hosts"))
        .arg("--contacts")
        .arg(dir.path().join("no-contacts"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = scrape_until(metrics, |t| {
        line_value(t, "voxmesh_supernode_lookups_total").is_some_and(|n| n >= 1.0)
    });
    let _ = answer.kill();
    let _ = answer.wait();
    for family in [
        "voxmesh_build_info",
        "voxmesh_supernode_registrations_total",
        "voxmesh_supernode_lookups_total",
        "voxmesh_supernode_routed_total",
        "voxmesh_supernode_members",
        "voxmesh_supernode_frame_seconds",
        "voxmesh_stun_requests_total",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family}:\n{text}"
        );
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family}:\n{text}"
        );
    }
    assert!(line_value(&text, "voxmesh_supernode_registrations_total").unwrap() >= 1.0);
    assert_eq!(line_value(&text, "voxmesh_supernode_members"), Some(1.0));
    let Some(p) = parse_prometheus(&text) else {
        return;
    };
    assert_eq!(p["voxmesh_supernode_frame_seconds"]["type"], "histogram");
    // Every frame of the registration and the lookup was timed.
    let frames = sample(
        &p,
        "voxmesh_supernode_frame_seconds",
        "voxmesh_supernode_frame_seconds_count",
        serde_json::json!({}),
    );
    assert!(frames >= 2.0, "{frames}");
    let inf = sample(
        &p,
        "voxmesh_supernode_frame_seconds",
        "voxmesh_supernode_frame_seconds_bucket",
        serde_json::json!({"le": "+Inf"}),
    );
    assert_eq!(inf, frames);
    assert_eq!(p["voxmesh_supernode_lookups"]["type"], "counter");
    assert_eq!(
        sample(
            &p,
            "voxmesh_build_info",
            "voxmesh_build_info",
            serde_json::json!({"program": "supernoded", "version": env!("CARGO_PKG_VERSION")})
        ),
        1.0
    );
    let (status, log) = d.stop();
    assert!(status.success(), "{status}: {log}");
}

#[test]
fn relayd_metrics_parse_with_build_info_and_a_latency_histogram() {
    let mut cmd = relayd();
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--relay-ip",
        "127.0.0.1",
        "--user",
        "alice:secret",
    ])
    .args(["--metrics", "127.0.0.1:0", "--drain", "1", "-q"]);
    let d = Daemon::start(cmd);
    let metrics: SocketAddr = d.line["metrics"].as_str().unwrap().parse().unwrap();
    allocate_and_release(d.addr("udp"), "alice", "secret");
    let text = scrape_until(metrics, |t| {
        line_value(t, "voxmesh_turn_allocations_total").is_some_and(|n| n >= 1.0)
    });
    for family in [
        "voxmesh_build_info",
        "voxmesh_turn_allocations_total",
        "voxmesh_turn_udp_batch_seconds",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family}:\n{text}"
        );
    }
    let Some(p) = parse_prometheus(&text) else {
        return;
    };
    assert_eq!(p["voxmesh_turn_udp_batch_seconds"]["type"], "histogram");
    // 401, Allocate, Refresh(0) at least: each a batch of one or more datagrams.
    let batches = sample(
        &p,
        "voxmesh_turn_udp_batch_seconds",
        "voxmesh_turn_udp_batch_seconds_count",
        serde_json::json!({}),
    );
    assert!(batches >= 1.0, "{batches}");
    assert_eq!(
        sample(
            &p,
            "voxmesh_build_info",
            "voxmesh_build_info",
            serde_json::json!({"program": "relayd", "version": env!("CARGO_PKG_VERSION")})
        ),
        1.0
    );
    // The live gauge and the running total are separate families (a gauge named like the
    // counter's family would merge into it in a text-format parser).
    assert_eq!(p["voxmesh_turn_allocations"]["type"], "counter");
    assert_eq!(p["voxmesh_turn_allocations_active"]["type"], "gauge");
}

/// relayd on loopback with the shared secret (and nothing else), UDP and TCP on one port.
fn relayd_with_secret(extra: &[&str]) -> Daemon {
    let mut cmd = relayd();
    cmd.env("RELAYD_AUTH_SECRET", SECRET)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--relay-ip",
            "127.0.0.1",
            "--drain",
            "1",
            "-q",
        ])
        .args(extra);
    Daemon::start(cmd)
}

#[test]
fn mint_credential_prints_one_the_relay_accepts() {
    let d = relayd_with_secret(&[]);
    let out = relayd()
        .env("RELAYD_AUTH_SECRET", SECRET)
        .args(["mint-credential", "--name", "dave", "--ttl", "120"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expires = v["expires"].as_u64().unwrap();
    let now = unix_now();
    assert!((now + 110..=now + 130).contains(&expires), "{v}");
    assert_eq!(v["username"], format!("{expires}:dave"));
    assert_eq!(v["ttl"], 120);
    allocate_and_release(
        d.addr("udp"),
        v["username"].as_str().unwrap(),
        v["password"].as_str().unwrap(),
    );
    // A different secret mints a credential the relay refuses.
    let out = relayd()
        .env("RELAYD_AUTH_SECRET", "south")
        .args(["mint-credential", "--name", "eve"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let refused = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(TurnRelay::allocate(
            TurnClientConfig::new(
                d.addr("udp"),
                v["username"].as_str().unwrap(),
                v["password"].as_str().unwrap(),
            ),
            TurnTransport::Udp,
            WAIT,
        ));
    assert!(
        refused.is_err(),
        "a credential from another secret was accepted"
    );
    // No secret anywhere: a usage error.
    let out = relayd().arg("mint-credential").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_allocates_permits_and_echoes_through_a_relay() {
    let d = relayd_with_secret(&["--user", "alice:secret"]);
    let addr = d.addr("udp").to_string();
    for transport in ["udp", "tcp"] {
        let out = relayd()
            .env("RELAYD_AUTH_SECRET", SECRET)
            .args(["check", &addr, "--transport", transport, "--count", "4"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{transport}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (v["sent"].as_u64(), v["echoed"].as_u64()),
            (Some(4), Some(4)),
            "{v}"
        );
        assert_eq!(v["ok"], true);
        let relayed = v["relayed"].as_array().unwrap();
        assert_ne!(relayed[0], relayed[1]);
        assert!(v["rtt_ms"]["max"].as_f64().unwrap() >= v["rtt_ms"]["min"].as_f64().unwrap());
    }
    // Long-term credentials instead of the secret.
    let out = relayd()
        .args(["check", &addr, "--user", "alice:secret", "--count", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A wrong secret: the allocation step fails, exit 1, and the message names it.
    let out = relayd()
        .env("RELAYD_AUTH_SECRET", "south")
        .args(["check", &addr, "--timeout", "2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("allocate") && err.contains("401"), "{err}");
}

/// A self-signed certificate for `name`: (cert PEM, key PEM, cert DER).
fn certificate(name: &str) -> (String, String, Vec<u8>) {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    (
        c.cert.pem(),
        c.key_pair.serialize_pem(),
        c.cert.der().to_vec(),
    )
}

/// An allocation over TLS that trusts only `der`: whether it succeeds.
fn tls_allocates(server: SocketAddr, der: &[u8]) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(der.to_vec()))
        .unwrap();
    let transport = TurnTransport::Tls {
        server_name: "localhost".into(),
        roots: std::sync::Arc::new(roots),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            match TurnRelay::allocate(
                TurnClientConfig::new(server, "alice", "secret"),
                transport,
                WAIT,
            )
            .await
            {
                Ok(r) => {
                    r.release().await;
                    true
                }
                Err(_) => false,
            }
        })
}

#[test]
fn sighup_reloads_the_tls_certificate_and_a_bad_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (pem1, key1, der1) = certificate("localhost");
    let (pem2, key2, der2) = certificate("localhost");
    std::fs::write(&cert_path, &pem1).unwrap();
    std::fs::write(&key_path, &key1).unwrap();
    let mut cmd = relayd();
    cmd.args(["--listen", "tls:127.0.0.1:0", "--relay-ip", "127.0.0.1"])
        .args(["--user", "alice:secret", "--drain", "1", "-v"])
        .arg("--cert")
        .arg(&cert_path)
        .arg("--key")
        .arg(&key_path);
    let mut d = Daemon::start(cmd);
    let tls = d.addr("tls");
    assert!(tls_allocates(tls, &der1));
    assert!(
        !tls_allocates(tls, &der2),
        "trusted a certificate never served"
    );
    let hup = |d: &Daemon| {
        // SAFETY: kill(2) on our own child's PID.
        assert_eq!(unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) }, 0);
    };
    // A renewed certificate: once relayd logs the reload, new handshakes present it.
    std::fs::write(&cert_path, &pem2).unwrap();
    std::fs::write(&key_path, &key2).unwrap();
    hup(&d);
    d.wait_log("TLS certificate reloaded");
    assert!(
        tls_allocates(tls, &der2),
        "the new certificate is not served"
    );
    assert!(
        !tls_allocates(tls, &der1),
        "still serving the old certificate"
    );
    // A key that does not match the certificate: the reload fails and the current one stays.
    std::fs::write(&key_path, &key1).unwrap();
    hup(&d);
    let failed = d.wait_log("TLS certificate reload");
    assert!(failed.contains("failed, keeping the old one"), "{failed}");
    assert!(
        tls_allocates(tls, &der2),
        "a bad reload replaced the certificate"
    );
    let (status, log) = d.stop();
    assert!(status.success(), "{status}: {log}");
    assert_eq!(log.matches("TLS certificate reloaded").count(), 1, "{log}");
}

/// The certificate a TLS handshake with `server` presents, taking any (the voxmesh client's
/// camouflage configuration); `None` when the handshake fails.
fn tls_certificate(server: SocketAddr) -> Option<Vec<u8>> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let config = voxmesh::net::tls::camouflage_client().unwrap();
            let connector = tokio_rustls::TlsConnector::from(config);
            let tcp = tokio::net::TcpStream::connect(server).await.ok()?;
            let name = rustls_pki_types::ServerName::from(server.ip());
            let s = tokio::time::timeout(WAIT, connector.connect(name, tcp))
                .await
                .ok()?
                .ok()?;
            let certs = s.get_ref().1.peer_certificates()?;
            Some(certs.first()?.to_vec())
        })
}

/// A bare --listen address serves TLS on its TCP port with a certificate relayd made itself
/// (what voxmesh clients on TLS-only networks race to); --no-tls turns that off.
#[test]
fn relayd_serves_tls_on_bare_listeners_unless_no_tls() {
    for no_tls in [false, true] {
        let mut cmd = relayd();
        cmd.args(["--listen", "127.0.0.1:0", "--relay-ip", "127.0.0.1"])
            .args(["--user", "alice:secret", "-q"]);
        if no_tls {
            cmd.arg("--no-tls");
        }
        let d = Daemon::start(cmd);
        let tcp = d.addr("tcp");
        let tls = d.listeners().into_iter().find(|(t, _)| t == "tls");
        let cert = tls_certificate(tcp);
        if no_tls {
            assert!(tls.is_none(), "{}", d.line);
            assert!(cert.is_none(), "a TLS handshake with --no-tls");
        } else {
            assert_eq!(tls.map(|(_, a)| a), Some(tcp), "{}", d.line);
            assert!(cert.is_some(), "no TLS on the bare listener");
        }
    }
}

/// supernoded serves TLS on its TCP port beside plain streams: with --cert and --key that
/// certificate, else one it made; --no-tls none; an unreadable --cert exits 4.
#[test]
fn supernoded_serves_tls_on_its_tcp_port() {
    let dir = tempfile::tempdir().unwrap();
    let (pem, key, der) = certificate("localhost");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, &pem).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    for (i, mode) in ["given", "made", "none"].into_iter().enumerate() {
        let mut cmd = supernoded();
        cmd.args(["--listen", "127.0.0.1:0", "-q"])
            .arg("--identity")
            .arg(dir.path().join(format!("sn{i}.key")))
            .arg("--control")
            .arg(dir.path().join(format!("sn{i}.sock")));
        match mode {
            "given" => {
                cmd.arg("--cert")
                    .arg(&cert_path)
                    .arg("--key")
                    .arg(&key_path);
            }
            "none" => {
                cmd.arg("--no-tls");
            }
            _ => {}
        }
        let d = Daemon::start(cmd);
        let addr: SocketAddr = d.line["stun"][0]["primary"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let cert = tls_certificate(addr);
        match mode {
            "given" => assert_eq!(cert.as_deref(), Some(&der[..])),
            "made" => assert!(cert.is_some_and(|c| c != der), "no TLS by default"),
            _ => assert!(cert.is_none(), "a TLS handshake with --no-tls"),
        }
    }
    let out = supernoded()
        .args(["--listen", "127.0.0.1:0", "-q", "--key"])
        .arg(&key_path)
        .arg("--cert")
        .arg(dir.path().join("missing.pem"))
        .arg("--identity")
        .arg(dir.path().join("sn9.key"))
        .arg("--control")
        .arg(dir.path().join("sn9.sock"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("--cert") && err.contains("missing.pem"),
        "{err}"
    );
}
