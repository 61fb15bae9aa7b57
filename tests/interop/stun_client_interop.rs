//! Interop with a real RFC 3489 client: `stun` from Debian's `stun-client` package (the Vovida
//! client, 0.97), run against `supernoded` with an alternate address, all on loopback.
//!
//! The client runs RFC 3489's classic NAT test (§10.1): test I to the primary address, test II
//! asking for a change of IP and port... (this client: IP only), test III asking for a change of
//! port, test I again to CHANGED-ADDRESS's IP, and a hairpin test to its own mapped address. On
//! loopback there is no NAT, so it must report "Open" with the mapped address equal to its local
//! one. Its exit status is a bit set (client.cxx): 0x00 for Open, |0x01 when the mapped port
//! equals the local port, |0x10 when hairpinning failed; so 1 here.
//!
//! Needs the `stun` binary (`apt-get install -y stun-client`): skips with a message when it is
//! missing, and fails instead when `CI=true`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

fn stun_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("stun"))
        .find(|p| p.is_file())
}

/// Runs `cmd` to completion within `LIMIT`, killing it otherwise.
fn run_bounded(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: `pid` is our unreaped child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within {LIMIT:?}");
        }
    }
}

/// Kills the daemon if the test fails before stopping it.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every `KEY = VALUE` value for `key` in the client's verbose output, in order.
fn values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix(" = "))
        .map(str::trim)
        .collect()
}

#[test]
fn debian_stun_client_gets_its_mapped_address_and_finds_no_nat() {
    let Some(stun) = stun_binary() else {
        let why = "the `stun` binary is missing (apt-get install -y stun-client)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{why} (CI=true, so this is a failure, not a skip)");
        }
        let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
        return;
    };

    let mut daemon = Command::new(env!("CARGO_BIN_EXE_supernoded"))
        .args([
            "--stun-only",
            "--listen",
            "127.0.0.1:0",
            "--alt-addr",
            "127.0.0.2",
            "--metrics",
            "127.0.0.1:0",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = daemon.stdout.take().unwrap();
    let mut guard = KillOnDrop(Some(daemon));
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        let _ = std::io::copy(&mut r, &mut std::io::sink());
    });
    let line = rx.recv_timeout(LIMIT).unwrap_or_default();
    let Ok(line) = serde_json::from_str::<serde_json::Value>(&line) else {
        panic!("supernoded printed no startup line: {line:?}");
    };
    let primary: SocketAddr = line["stun"][0]["primary"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let alternate: SocketAddr = line["stun"][0]["alternate"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let metrics: SocketAddr = line["metrics"].as_str().unwrap().parse().unwrap();

    // The client picks two random consecutive local ports; retry the rare collision.
    let mut out = None;
    for _ in 0..3 {
        let o = run_bounded(Command::new(&stun).arg(primary.to_string()).arg("-v"));
        let text = String::from_utf8_lossy(&o.stderr).into_owned();
        if o.status.code() == Some(255) && text.contains("problem opening port") {
            continue;
        }
        out = Some(o);
        break;
    }
    let out = out.expect("the stun client could open its ports");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let verbose = String::from_utf8_lossy(&out.stderr);
    let ctx = format!("stdout:\n{stdout}\nstderr:\n{verbose}");

    assert!(
        stdout.contains("Primary: Open"),
        "no NAT on loopback\n{ctx}"
    );
    assert!(stdout.contains("Return value is 0x000001"), "{ctx}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "Open, port preserved, hairpin works\n{ctx}"
    );

    // Test I's mapped address is the client's own first socket.
    let opened: Vec<u16> = verbose
        .lines()
        .filter_map(|l| {
            l.strip_prefix("Opened port ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(opened.len(), 2, "{ctx}");
    let mapped = values(&verbose, "MappedAddress");
    assert!(!mapped.is_empty(), "{ctx}");
    assert_eq!(mapped[0], format!("127.0.0.1:{}", opened[0]), "{ctx}");
    for m in &mapped {
        let port: u16 = m
            .strip_prefix("127.0.0.1:")
            .expect("mapped on 127.0.0.1")
            .parse()
            .unwrap();
        assert!(
            opened.contains(&port),
            "{m} is one of the client's sockets\n{ctx}"
        );
    }
    // Our answers came from the addresses CHANGE-REQUEST asked for, and said so.
    let sources = values(&verbose, "SourceAddress");
    let changed_ip = SocketAddr::new(alternate.ip(), primary.port()).to_string();
    let changed_port = SocketAddr::new(primary.ip(), alternate.port()).to_string();
    assert!(sources.contains(&primary.to_string().as_str()), "{ctx}");
    assert!(
        sources.contains(&changed_ip.as_str()),
        "test II from the alternate IP\n{ctx}"
    );
    assert!(
        sources.contains(&changed_port.as_str()),
        "test III from the alternate port\n{ctx}"
    );
    // CHANGED-ADDRESS names the socket opposite the one that answered (RFC 5780 §7.4), so the
    // primary's answers name the alternate, and every one names one of our four sockets.
    let ours = [
        primary,
        alternate,
        SocketAddr::new(alternate.ip(), primary.port()),
        SocketAddr::new(primary.ip(), alternate.port()),
    ]
    .map(|a| a.to_string());
    let changed = values(&verbose, "ChangedAddress");
    assert!(changed.contains(&alternate.to_string().as_str()), "{ctx}");
    for c in changed {
        assert!(
            ours.iter().any(|o| o == c),
            "{c} is not one of our sockets\n{ctx}"
        );
    }
    for (key, want) in [
        ("test I", "1"),
        ("test II", "1"),
        ("test III", "1"),
        ("test I(2)", "1"),
        ("is nat ", "0"),
        ("mapped IP same", "1"),
        ("hairpin", "1"),
        ("preserver port", "1"),
    ] {
        assert_eq!(values(&verbose, key), [want], "{key}\n{ctx}");
    }

    // The daemon counted the classic requests, including both kinds of change.
    let mut s = TcpStream::connect_timeout(&metrics, LIMIT).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut http = String::new();
    s.read_to_string(&mut http).unwrap();
    let get = |name: &str| -> u64 {
        http.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {http}"))
    };
    assert!(
        get("voxmesh_stun_requests_total{kind=\"rfc3489\"}") >= 4,
        "{http}"
    );
    assert_eq!(
        get("voxmesh_stun_requests_total{kind=\"rfc8489\"}"),
        0,
        "{http}"
    );
    assert!(
        get("voxmesh_stun_requests_total{kind=\"change_ip\"}") >= 1,
        "{http}"
    );
    assert!(
        get("voxmesh_stun_requests_total{kind=\"change_port\"}") >= 1,
        "{http}"
    );
    // The hairpin test sends a request to the client itself; nothing reaches us unanswered.
    assert_eq!(get("voxmesh_stun_errors_total{code=\"420\"}"), 0, "{http}");

    let mut daemon = guard.0.take().unwrap();
    let pid = daemon.id();
    // SAFETY: our own unreaped child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(daemon.wait());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(status) => assert_eq!(status.unwrap().code(), Some(0)),
        Err(_) => {
            // SAFETY: still our unreaped child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("supernoded ignored SIGTERM");
        }
    }
}
