//! The real STUN driver on loopback: `StunServer` in-process with plain std UDP sockets as clients,
//! and the `supernoded` binary (startup line, metrics endpoint, SIGTERM, exit codes).
//!
//! Everything stays on 127.0.0.0/8 and ::1: 127.0.0.1 is the primary address and 127.0.0.2 the
//! alternate (both are loopback on Linux without configuration). Every wait is bounded by a
//! receive timeout or a deadline; nothing sleeps to synchronise. Where a test needs to know that
//! the server has processed an unanswered datagram, it sends an answered one after it from the
//! same socket to the same socket and waits for that answer: one socket's datagrams are
//! processed in order.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use voxmesh::net::ShutdownSignal;
use voxmesh::net::batch::MAX_DATAGRAM;
use voxmesh::net::drivers::stun_server::StunServer;
use voxmesh::stun::{
    ChangeRequest, Class, IntegrityCheck, Message, MessageBuilder, TransactionId, attr, method,
};
use voxmesh::supernode::{BindingConfig, BindingCounters, Via};

const RECV_TIMEOUT: Duration = Duration::from_secs(3);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// In CI a test that cannot run fails; elsewhere it says why and skips (DESIGN.md §8).
fn skip_or_fail(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why} (CI=true, so this is a failure, not a skip)");
    }
    // Straight to the stderr handle: the harness captures eprintln!.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// A `StunServer` running on its own thread and runtime; stopped (and joined) on drop.
struct Server {
    configs: Vec<BindingConfig>,
    counters: Arc<BindingCounters>,
    signal: Option<ShutdownSignal>,
    /// Where the server thread reports how `run` ended.
    done: mpsc::Receiver<std::thread::Result<std::io::Result<()>>>,
}

impl Server {
    fn start(configs: Vec<BindingConfig>) -> Server {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let server = {
            let _runtime = rt.enter(); // its sockets register with this runtime
            StunServer::bind(configs).expect("binding loopback addresses works")
        };
        let configs = server.configs();
        let counters = server.counters();
        let (signal, shutdown) = ShutdownSignal::new();
        let (tx, done) = mpsc::channel();
        thread::spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rt.block_on(server.run(shutdown))
            }));
            let _ = tx.send(r);
        });
        Server {
            configs,
            counters,
            signal: Some(signal),
            done,
        }
    }

    fn config(&self) -> &BindingConfig {
        &self.configs[0]
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.signal.take() {
            s.trigger();
        }
        let r = self.done.recv_timeout(EXIT_TIMEOUT);
        if !thread::panicking() {
            r.expect("the server stops within the timeout after shutdown")
                .expect("server thread panicked")
                .expect("server failed");
        }
    }
}

fn rfc5780_config() -> BindingConfig {
    BindingConfig {
        primary: addr("127.0.0.1:0"),
        alternate: Some(addr("127.0.0.2:0")),
        rfc5780: true,
        software: Some("voxmesh loopback test".into()),
    }
}

fn client(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
    s.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    s
}

/// A Binding request with a fresh transaction ID, filled by `f`, with FINGERPRINT.
fn request(f: impl FnOnce(&mut MessageBuilder)) -> (TransactionId, Vec<u8>) {
    let txid = TransactionId::random();
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, method::BINDING, Class::Request, txid);
    f(&mut b);
    let len = b.fingerprint();
    buf.truncate(len);
    (txid, buf)
}

/// The next datagram on `sock` (bounded by its read timeout).
fn recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 4096];
    let (n, from) = sock.recv_from(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no datagram on {:?} within {RECV_TIMEOUT:?}: {e}",
            sock.local_addr()
        )
    });
    buf.truncate(n);
    (buf, from)
}

/// Sends `req` and returns the next datagram, which must answer it.
fn exchange(
    sock: &UdpSocket,
    to: SocketAddr,
    txid: TransactionId,
    req: &[u8],
) -> (Vec<u8>, SocketAddr) {
    sock.send_to(req, to).unwrap();
    let (bytes, from) = recv(sock);
    let m = Message::parse(&bytes).expect("the reply parses");
    assert_eq!(
        m.transaction_id(),
        txid,
        "the next datagram answers this request"
    );
    (bytes, from)
}

#[test]
fn four_sockets_each_answer_from_their_own_address() {
    let server = Server::start(vec![rfc5780_config()]);
    let c = server.config().clone();
    let alt = c.alternate.unwrap();
    assert_eq!(c.primary.ip(), addr("127.0.0.1:0").ip());
    assert_eq!(alt.ip(), addr("127.0.0.2:0").ip());
    assert_ne!(c.primary.port(), 0);
    assert_ne!(alt.port(), 0);
    assert_ne!(c.primary.port(), alt.port());

    let sock = client("127.0.0.1");
    let me = sock.local_addr().unwrap();
    for (via, to) in c.sockets() {
        let (txid, req) = request(|_| {});
        let (bytes, from) = exchange(&sock, to, txid, &req);
        assert_eq!(from, to, "answered from the socket it was sent to");
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.class(), Class::Success);
        assert_eq!(m.xor_mapped_address(), Some(me));
        assert_eq!(m.address(attr::RESPONSE_ORIGIN), Some(to));
        // OTHER-ADDRESS names the socket opposite the one asked (RFC 5780 §7.4).
        let opposite = Via {
            alt_ip: !via.alt_ip,
            alt_port: !via.alt_port,
        };
        assert_eq!(m.address(attr::OTHER_ADDRESS), Some(c.local(opposite)));
        assert_eq!(m.text(attr::SOFTWARE), Some("voxmesh loopback test"));
        assert_eq!(m.check_fingerprint(), IntegrityCheck::Valid);
    }
}

#[test]
fn change_request_answers_come_from_the_changed_address() {
    let server = Server::start(vec![rfc5780_config()]);
    let c = server.config().clone();
    let (p, a) = (c.primary, c.alternate.unwrap());
    let sock = client("127.0.0.1");
    for (ip, port, want) in [
        (false, false, p),
        (true, false, SocketAddr::new(a.ip(), p.port())),
        (false, true, SocketAddr::new(p.ip(), a.port())),
        (true, true, a),
    ] {
        let (txid, req) = request(|b| {
            b.change_request(ChangeRequest { ip, port });
        });
        let (bytes, from) = exchange(&sock, p, txid, &req);
        assert_eq!(from, want, "change ip={ip} port={port}");
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.address(attr::RESPONSE_ORIGIN), Some(want));
        assert_eq!(m.xor_mapped_address(), Some(sock.local_addr().unwrap()));
    }
    // From the alternate socket, "change both" comes back from the primary.
    let (txid, req) = request(|b| {
        b.change_request(ChangeRequest {
            ip: true,
            port: true,
        });
    });
    let (_, from) = exchange(&sock, a, txid, &req);
    assert_eq!(from, p);
    let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(n(&server.counters.requests), 5);
    assert_eq!(n(&server.counters.change_ip), 3);
    assert_eq!(n(&server.counters.change_port), 3);
}

#[test]
fn response_port_answers_arrive_at_the_other_socket() {
    let server = Server::start(vec![rfc5780_config()]);
    let p = server.config().primary;
    let a = client("127.0.0.1");
    let b = client("127.0.0.1");
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let (txid, req) = request(|m| {
        m.response_port(b_addr.port());
    });
    a.send_to(&req, p).unwrap();
    let (bytes, from) = recv(&b);
    assert_eq!(from, p);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.transaction_id(), txid);
    // The mapped address is A's, the sender's, not B's.
    assert_eq!(m.xor_mapped_address(), Some(a_addr));
    // Nothing reached A: the next datagram A sees answers its next request.
    let (txid2, req2) = request(|_| {});
    exchange(&a, p, txid2, &req2);
}

#[test]
fn datagrams_the_server_drops_are_counted_by_reason() {
    let server = Server::start(vec![rfc5780_config()]);
    let p = server.config().primary;
    let sock = client("127.0.0.1");
    sock.send_to(&[0x80; 40], p).unwrap(); // RTP-like: not STUN
    let (_, mut bad) = request(|_| {});
    let n = bad.len();
    bad[n - 1] ^= 1;
    sock.send_to(&bad, p).unwrap(); // bad FINGERPRINT
    // Bigger than the driver's buffer: arrives truncated, dropped as malformed.
    let (_, big) = request(|b| {
        b.attr(attr::PADDING, &vec![0; MAX_DATAGRAM + 100]);
    });
    sock.send_to(&big, p).unwrap();
    // An indication: counted, not answered.
    let mut ind = Vec::new();
    let len = MessageBuilder::new(
        &mut ind,
        method::BINDING,
        Class::Indication,
        TransactionId::random(),
    )
    .fingerprint();
    sock.send_to(&ind[..len], p).unwrap();
    // Then one that is answered, which proves the others were processed.
    let (txid, req) = request(|_| {});
    exchange(&sock, p, txid, &req);
    let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let c = &server.counters;
    assert_eq!(n(&c.drop_not_stun), 1);
    assert_eq!(n(&c.drop_bad_fingerprint), 1);
    assert_eq!(n(&c.drop_malformed), 1);
    assert_eq!(n(&c.indications), 1);
    assert_eq!(n(&c.requests), 1);
    assert_eq!(n(&c.drop_send_failed), 0);
}

#[test]
fn ipv6_loopback_without_an_alternate() {
    if UdpSocket::bind("[::1]:0").is_err() {
        skip_or_fail("no IPv6 loopback (::1) here");
        return;
    }
    let server = Server::start(vec![BindingConfig {
        primary: addr("[::1]:0"),
        alternate: None,
        rfc5780: true,
        software: None,
    }]);
    let p = server.config().primary;
    assert_ne!(p.port(), 0);
    let sock = client("::1");
    let (txid, req) = request(|_| {});
    let (bytes, from) = exchange(&sock, p, txid, &req);
    assert_eq!(from, p);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.xor_mapped_address(), Some(sock.local_addr().unwrap()));
    assert_eq!(m.address(attr::RESPONSE_ORIGIN), Some(p));
    assert_eq!(m.address(attr::OTHER_ADDRESS), None);
    // No alternate: CHANGE-REQUEST is refused.
    let (txid, req) = request(|b| {
        b.change_request(ChangeRequest {
            ip: true,
            port: false,
        });
    });
    let (bytes, from) = exchange(&sock, p, txid, &req);
    assert_eq!(from, p);
    assert_eq!(
        Message::parse(&bytes).unwrap().error_code(),
        Some((420, "No alternate address"))
    );
}

#[test]
fn ipv4_and_ipv6_services_side_by_side() {
    if UdpSocket::bind("[::1]:0").is_err() {
        skip_or_fail("no IPv6 loopback (::1) here");
        return;
    }
    let server = Server::start(vec![
        rfc5780_config(),
        BindingConfig {
            primary: addr("[::1]:0"),
            alternate: None,
            rfc5780: true,
            software: None,
        },
    ]);
    for (c, ip) in [
        (&server.configs[0], "127.0.0.1"),
        (&server.configs[1], "::1"),
    ] {
        let sock = client(ip);
        let (txid, req) = request(|_| {});
        let (bytes, from) = exchange(&sock, c.primary, txid, &req);
        assert_eq!(from, c.primary);
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.xor_mapped_address(), Some(sock.local_addr().unwrap()));
    }
    let n = server
        .counters
        .requests
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(n, 2, "one counter set for both services");
}

// ---- the supernoded binary ----

fn supernoded() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_supernoded"));
    c.env_remove("RUST_LOG").stdin(Stdio::null());
    c
}

/// Runs a command that should exit by itself, within `EXIT_TIMEOUT`.
fn run_bounded(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(EXIT_TIMEOUT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: `pid` is our unreaped child, so it cannot have been reused.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("supernoded did not exit within {EXIT_TIMEOUT:?}");
        }
    }
}

/// A running `supernoded` and what its startup line said.
struct Daemon {
    child: Option<Child>,
    line: serde_json::Value,
    stderr: mpsc::Receiver<String>,
    /// Its key file and control socket: every process its own identity.
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(args: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let mut child = supernoded()
            .args(args)
            .arg("--identity")
            .arg(dir.path().join("sn.key"))
            .arg("--control")
            .arg(dir.path().join("sn.sock"))
            .arg("--host-cache")
            .arg(dir.path().join("sn.hosts"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (line_tx, line_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut first = String::new();
            let mut r = BufReader::new(stdout);
            let _ = r.read_line(&mut first);
            let _ = line_tx.send(first);
            // Keep draining until the pipe closes, so the daemon can never block on stdout.
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
        let (err_tx, err_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            let _ = err_tx.send(s);
        });
        let first = match line_rx.recv_timeout(EXIT_TIMEOUT) {
            Ok(l) if !l.is_empty() => l,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let err = err_rx.recv_timeout(EXIT_TIMEOUT).unwrap_or_default();
                panic!("supernoded printed no startup line; stderr: {err}");
            }
        };
        let line: serde_json::Value =
            serde_json::from_str(&first).expect("the startup line is JSON");
        Daemon {
            child: Some(child),
            line,
            stderr: err_rx,
            _dir: dir,
        }
    }

    fn stun(&self, i: usize) -> (SocketAddr, Option<SocketAddr>) {
        let s = &self.line["stun"][i];
        let p = s["primary"].as_str().unwrap().parse().unwrap();
        let a = s["alternate"].as_str().map(|a| a.parse().unwrap());
        (p, a)
    }

    fn metrics(&self) -> SocketAddr {
        self.line["metrics"].as_str().unwrap().parse().unwrap()
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns the status and the time taken.
    fn terminate(mut self) -> (std::process::ExitStatus, Duration, String) {
        let mut child = self.child.take().unwrap();
        let started = Instant::now();
        // SAFETY: our own unreaped child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let (tx, rx) = mpsc::channel();
        let pid = child.id();
        thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = match rx.recv_timeout(EXIT_TIMEOUT) {
            Ok(s) => s.unwrap(),
            Err(_) => {
                // SAFETY: still our unreaped child.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                panic!("supernoded ignored SIGTERM for {EXIT_TIMEOUT:?}");
            }
        };
        let took = started.elapsed();
        let err = self.stderr.recv_timeout(EXIT_TIMEOUT).unwrap_or_default();
        (status, took, err)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `GET /metrics` with bounded reads; returns the whole HTTP response.
fn scrape(at: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&at, RECV_TIMEOUT).unwrap();
    s.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(RECV_TIMEOUT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
}

#[test]
fn supernoded_serves_metrics_that_count_what_was_sent_and_stops_on_sigterm() {
    let d = Daemon::start(&[
        "--listen",
        "127.0.0.1:0",
        "--alt-addr",
        "127.0.0.2",
        "--metrics",
        "127.0.0.1:0",
    ]);
    assert_eq!(d.line["event"], "listening");
    let (p, a) = d.stun(0);
    let a = a.expect("an alternate");
    assert_eq!(p.ip(), addr("127.0.0.1:0").ip());
    assert_eq!(a.ip(), addr("127.0.0.2:0").ip());

    let sock = client("127.0.0.1");
    let me = sock.local_addr().unwrap();
    for _ in 0..5 {
        let (txid, req) = request(|_| {});
        let (bytes, _) = exchange(&sock, p, txid, &req);
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.xor_mapped_address(), Some(me));
        assert_eq!(m.address(attr::OTHER_ADDRESS), Some(a));
        assert!(
            m.text(attr::SOFTWARE)
                .unwrap()
                .starts_with("voxmesh supernoded ")
        );
    }
    for _ in 0..2 {
        let (txid, req) = request(|b| {
            b.change_request(ChangeRequest {
                ip: true,
                port: false,
            });
        });
        let (_, from) = exchange(&sock, p, txid, &req);
        assert_eq!(from, SocketAddr::new(a.ip(), p.port()));
    }
    // One RFC 3489 request, one unknown attribute (420), one garbage datagram.
    let mut classic = Vec::new();
    let len = MessageBuilder::with_raw_id(&mut classic, method::BINDING, Class::Request, [7; 16])
        .finish();
    sock.send_to(&classic[..len], p).unwrap();
    let (bytes, _) = recv(&sock);
    assert!(Message::parse(&bytes).unwrap().is_rfc3489());
    let (txid, req) = request(|b| {
        b.u32_attr(0x7ffe, 0);
    });
    let (bytes, _) = exchange(&sock, p, txid, &req);
    assert_eq!(Message::parse(&bytes).unwrap().error_code().unwrap().0, 420);
    sock.send_to(b"hello, not STUN", p).unwrap();
    let (txid, req) = request(|_| {});
    exchange(&sock, p, txid, &req);

    let http = scrape(d.metrics());
    assert!(http.starts_with("HTTP/1.1 200 OK\r\n"), "{http}");
    assert!(
        http.contains("Content-Type: text/plain; version=0.0.4"),
        "{http}"
    );
    let body = http.split("\r\n\r\n").nth(1).unwrap();
    assert_eq!(
        metric(body, "voxmesh_stun_requests_total{kind=\"rfc8489\"}"),
        5 + 2 + 1
    );
    assert_eq!(
        metric(body, "voxmesh_stun_requests_total{kind=\"rfc3489\"}"),
        1
    );
    assert_eq!(
        metric(body, "voxmesh_stun_requests_total{kind=\"change_ip\"}"),
        2
    );
    assert_eq!(
        metric(body, "voxmesh_stun_requests_total{kind=\"change_port\"}"),
        0
    );
    assert_eq!(metric(body, "voxmesh_stun_errors_total{code=\"420\"}"), 1);
    assert_eq!(metric(body, "voxmesh_stun_errors_total{code=\"400\"}"), 0);
    assert_eq!(
        metric(body, "voxmesh_stun_dropped_total{reason=\"not_stun\"}"),
        1
    );
    assert_eq!(
        metric(body, "voxmesh_stun_dropped_total{reason=\"send_failed\"}"),
        0
    );
    assert!(body.contains("# TYPE voxmesh_stun_requests_total counter"));

    let (status, took, stderr) = d.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM is a clean stop; stderr: {stderr}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?} to stop");
    // The sockets are closed: binding the primary port again works.
    UdpSocket::bind(p).expect("the port was released");
}

#[test]
fn supernoded_with_ipv6_and_ipv4_listeners() {
    if UdpSocket::bind("[::1]:0").is_err() {
        skip_or_fail("no IPv6 loopback (::1) here");
        return;
    }
    let d = Daemon::start(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "[::1]:0",
        "--no-software",
    ]);
    let (p4, a4) = d.stun(0);
    let (p6, a6) = d.stun(1);
    assert!(p4.is_ipv4() && p6.is_ipv6());
    assert_eq!((a4, a6), (None, None));
    for (p, ip) in [(p4, "127.0.0.1"), (p6, "::1")] {
        let sock = client(ip);
        let (txid, req) = request(|_| {});
        let (bytes, from) = exchange(&sock, p, txid, &req);
        assert_eq!(from, p);
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.xor_mapped_address(), Some(sock.local_addr().unwrap()));
        assert_eq!(m.get(attr::SOFTWARE), None, "--no-software");
    }
    let (status, _, stderr) = d.terminate();
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn supernoded_bad_flags_exit_2() {
    for args in [
        &["--no-such-flag"][..],
        &["--listen", "not-an-address"],
        &["--metrics", "localhost"],
        &["--listen"],
    ] {
        let out = run_bounded(supernoded().args(args));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
    }
}

/// IPv4 addresses from the documentation ranges that are on no interface here (binding them
/// fails with EADDRNOTAVAIL, so no packet can ever be sent from them). Some machines do carry
/// one of them (this one had 192.0.2.2 on eth0), hence the check.
fn non_local_v4(n: usize) -> Vec<String> {
    [
        "192.0.2.1",
        "192.0.2.201",
        "203.0.113.201",
        "198.51.100.201",
        "203.0.113.202",
    ]
    .into_iter()
    .filter(|ip| {
        UdpSocket::bind((*ip, 0)).is_err_and(|e| e.kind() == std::io::ErrorKind::AddrNotAvailable)
    })
    .take(n)
    .map(str::to_owned)
    .collect()
}

#[test]
fn supernoded_cannot_bind_a_non_local_address_exits_4() {
    let ips = non_local_v4(3);
    if ips.len() < 3 {
        skip_or_fail("no three non-local documentation addresses to try binding");
        return;
    }
    let listen = format!("{}:3478", ips[0]);
    let out = run_bounded(supernoded().args(["--listen", &listen]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert_eq!(
        err.trim_end(),
        format!(
            "supernoded: cannot bind UDP {listen}: Cannot assign requested address (os error 99)"
        ),
        "one line naming what failed and why, once"
    );
    assert!(out.stdout.is_empty(), "no startup line");

    // The same for an alternate that is not local.
    let out = run_bounded(supernoded().args(["--listen", "127.0.0.1:0", "--alt-addr", &ips[1]]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains(&format!("supernoded: cannot bind UDP {}:", ips[1])),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no startup line");

    // And for the metrics listener.
    let metrics = format!("{}:9478", ips[2]);
    let out = run_bounded(supernoded().args(["--listen", "127.0.0.1:0", "--metrics", &metrics]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains(&format!(
            "supernoded: cannot bind the metrics listener on TCP {metrics}: "
        )),
        "{err}"
    );
}

#[test]
fn supernoded_alt_addr_without_a_listener_of_its_family_is_refused() {
    let out = run_bounded(supernoded().args(["--listen", "127.0.0.1:0", "--alt-addr", "::1"]));
    let err = String::from_utf8_lossy(&out.stderr);
    // Contradictory arguments found after parsing are usage errors, like clap's: exit 2.
    assert!(
        matches!(out.status.code(), Some(2)),
        "{:?}: {err}",
        out.status
    );
    assert!(
        err.contains("supernoded: --alt-addr ::1 has no --listen address of the same family"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    // Both listeners given but a second alternate for one family: also refused clearly.
    let out = run_bounded(supernoded().args([
        "--listen",
        "127.0.0.1:0",
        "--alt-addr",
        "127.0.0.2",
        "--alt-addr",
        "127.0.0.3",
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(2)), "{err}");
    assert!(err.contains("more than one --alt-addr"), "{err}");
}
