//! Shared helpers for integration tests that run real programs in the lab.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use voxlab::Lab;

/// A process that is killed (and reaped) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ports the lab servers use.
pub const SUPERNODE_PORT: u16 = 3478;
pub const SUPERNODE_ALT_PORT: u16 = 3479;
pub const COTURN_PORT: u16 = 3480;
pub const COTURN_ALT_PORT: u16 = 3481;

/// `supernoded` in the lab's server namespace on both addresses and families (RFC 5780), STUN
/// only (no identity, so parallel tests never contend for one).
pub fn start_supernoded(lab: &Lab) -> Proc {
    let mut child = lab
        .command(&lab.server_ns(), env!("CARGO_BIN_EXE_supernoded"))
        .args([
            "--stun-only",
            "--listen",
            &format!("198.51.100.1:{SUPERNODE_PORT}"),
            "--alt-addr",
            &format!("198.51.100.2:{SUPERNODE_ALT_PORT}"),
            "--listen",
            &format!("[2001:db8::1]:{SUPERNODE_PORT}"),
            "--alt-addr",
            &format!("[2001:db8::2]:{SUPERNODE_ALT_PORT}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn supernoded");
    // It prints one JSON line once every socket is bound: that is readiness.
    let line = first_line(&mut child);
    if !line.contains("\"listening\"") {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
        panic!("supernoded did not start: {line}{err}");
    }
    // Its log is not needed once it runs; drained so a full pipe never blocks it.
    let mut stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    Proc {
        child,
        name: "supernoded",
    }
}

/// Spawns `cmd` (a `supernoded` given its addresses) as a mesh member, its identity `sn.key`
/// and control socket `sn.sock` in `dir`; waits for its listening line and returns it with its
/// `KEY@ADDR` entry, for `-s`.
pub fn spawn_supernode(mut cmd: Command, dir: &Path) -> (Child, String) {
    let mut sn = cmd
        .args(["--no-rfc5780", "--identity"])
        .arg(dir.join("sn.key"))
        .arg("--control")
        .arg(dir.join("sn.sock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn supernoded");
    let first = first_line(&mut sn);
    let v: serde_json::Value = serde_json::from_str(&first).expect("supernoded's listening line");
    (sn, v["node"].as_str().unwrap().to_string())
}

/// The first line `child` (its stdout piped) prints: a daemon's readiness line.
pub fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

/// coturn's major.minor version, e.g. (4, 6).
pub fn coturn_version() -> Option<(u32, u32)> {
    let out = Command::new("turnserver").arg("--version").output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let v = text
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

/// Whether coturn is installed; under CI=true its absence fails the test.
pub fn coturn_or_skip(test: &str) -> bool {
    if coturn_version().is_some() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: coturn (turnserver) missing under CI=true"
    );
    eprintln!("SKIPPED {test}: coturn is not installed");
    false
}

/// coturn as an RFC 5780 STUN server in the server namespace: two listening addresses, the
/// alternate port, STUN only, logging off. 4.7 and later need `--rfc5780`; 4.6 refuses it.
pub fn start_coturn(lab: &Lab) -> Proc {
    let mut args: Vec<String> = [
        "-n",
        "--stun-only",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "--log-file",
        "/dev/null",
        "--no-stdout-log",
        "--simple-log",
        "-m",
        "1",
        "-L",
        "198.51.100.1",
        "-L",
        "198.51.100.2",
        "-L",
        "2001:db8::1",
        "-L",
        "2001:db8::2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        "-p".into(),
        COTURN_PORT.to_string(),
        "--alt-listening-port".into(),
        COTURN_ALT_PORT.to_string(),
    ]);
    if coturn_version().is_some_and(|v| v >= (4, 7)) {
        args.push("--rfc5780".into());
    }
    // Its own output goes to a file, shown if it never answers (it once did not, twice, in a
    // CI run with other test binaries beside it; the log said nothing then).
    let out = std::env::temp_dir().join(format!(
        "vx-coturn-{}-{}.log",
        std::process::id(),
        COTURN_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let log = std::fs::File::create(&out).expect("coturn's output file");
    let child = lab
        .command(&lab.server_ns(), "turnserver")
        .args(&args)
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .spawn()
        .expect("spawn turnserver");
    let mut proc = Proc {
        child,
        name: "turnserver",
    };
    // Ready when it answers a Binding request on each listening address.
    for addr in [
        format!("198.51.100.1:{COTURN_PORT}"),
        format!("198.51.100.2:{COTURN_ALT_PORT}"),
        format!("[2001:db8::1]:{COTURN_PORT}"),
    ] {
        if !stun_answers(lab, &lab.server_ns(), addr.parse().unwrap()) {
            let status = proc.child.try_wait();
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "coturn did not answer at {addr} within 30 s (process: {status:?}; lab {}, namespaces {:?}); its output:\n{}",
                lab.id(),
                lab_namespaces(lab.id()),
                tail.join("\n")
            );
        }
    }
    let _ = std::fs::remove_file(&out);
    proc
}

static COTURN_RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The network namespaces of lab `id` that exist now (`ip netns list`), for a failure message.
fn lab_namespaces(id: &str) -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with(id))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (bounded) until a STUN server at `addr` answers a Binding request sent from `ns`.
pub fn wait_stun(lab: &Lab, ns: &str, addr: SocketAddr) {
    assert!(
        stun_answers(lab, ns, addr),
        "no STUN server answered at {addr}"
    );
}

/// Whether a STUN server at `addr` answers a Binding request sent from `ns` within 30 s.
fn stun_answers(lab: &Lab, ns: &str, addr: SocketAddr) -> bool {
    use voxmesh::stun::{Class, Message, MessageBuilder, TransactionId, method};
    let any: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .unwrap();
    let sock = lab.udp_socket(ns, any).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // A process start has no protocol timer to derive a bound from: this one is generous, as a
    // loaded machine (CI beside other work) can take seconds to start coturn's threads.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = Vec::new();
    while Instant::now() < deadline {
        let txid = TransactionId::random();
        MessageBuilder::new(&mut buf, method::BINDING, Class::Request, txid).fingerprint();
        let _ = sock.send_to(&buf, addr);
        let mut rx = [0u8; 1500];
        if let Ok((n, _)) = sock.recv_from(&mut rx)
            && Message::parse(&rx[..n]).is_ok_and(|m| m.transaction_id() == txid)
        {
            return true;
        }
    }
    false
}

/// Runs `natprobe --json` in `ns` and returns its JSON report and exit code.
pub fn natprobe(lab: &Lab, ns: &str, args: &[&str]) -> (serde_json::Value, i32) {
    let out = lab
        .command(ns, env!("CARGO_BIN_EXE_natprobe"))
        .arg("--json")
        .args(args)
        .output()
        .expect("run natprobe");
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "natprobe printed no JSON ({e}): stdout {text:?} stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(text.trim().lines().count(), 1, "exactly one JSON object");
    (json, out.status.code().unwrap_or(-1))
}

/// `relayd` in the lab's server namespace with `args`; waits for its "listening" line.
pub fn start_relayd(lab: &Lab, args: &[&str]) -> Proc {
    let mut child = lab
        .command(&lab.server_ns(), env!("CARGO_BIN_EXE_relayd"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn relayd");
    let line = first_line(&mut child);
    assert!(
        line.contains("\"listening\""),
        "relayd did not start: {line:?}"
    );
    Proc {
        child,
        name: "relayd",
    }
}

/// A self-signed certificate for `name`: (cert PEM, key PEM, cert DER).
pub fn test_cert(name: &str) -> (String, String, Vec<u8>) {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    (
        c.cert.pem(),
        c.key_pair.serialize_pem(),
        c.cert.der().to_vec(),
    )
}

/// A UDP echo server in namespace `ns` on `addr`, running on a thread until the process ends
/// or `count` datagrams were echoed.
pub fn udp_echo(
    lab: &Lab,
    ns: &str,
    addr: SocketAddr,
    count: usize,
) -> std::thread::JoinHandle<usize> {
    let sock = lab.udp_socket(ns, addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while n < count {
            let Ok((len, from)) = sock.recv_from(&mut buf) else {
                break;
            };
            let _ = sock.send_to(&buf[..len], from);
            n += 1;
        }
        n
    })
}
