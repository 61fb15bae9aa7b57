//! `voxlab netem` on real namespaces: loss, delay and ordering as seen by plain UDP sockets.
//!
//! Topology, all built here and torn down by [`Lab`]'s `Drop`, even on panic:
//!
//! ```text
//!  ns h1                 ns mid                      ns h2
//!  eth0 10.99.0.1/24 --- a  [voxlab netem]  b --- eth0 10.99.0.2/24
//! ```
//!
//! "up" is h1 -> h2. Sockets are created inside a namespace by a short-lived thread that joins it
//! with `setns`; a socket stays in the namespace it was created in, so the test thread can use it
//! afterwards. All traffic is 10.99.0.0/24 inside these namespaces.
//!
//! Needs root, `ip` and `ethtool`; skips with a message otherwise, but fails when `CI=true` so CI
//! cannot pass by skipping (DESIGN.md §8).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const H1: &str = "10.99.0.1";
const H2: &str = "10.99.0.2";

/// Tests run one lab at a time: the RTT test measures timing, and two cores shared with a 5000-
/// datagram flood would make it noisy.
static LAB_LOCK: Mutex<()> = Mutex::new(());

/// Whether the lab can run here. Prints why not and returns false, or panics when `CI=true`.
fn lab_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("not running as root".to_owned())
    } else {
        ["ip", "ethtool"]
            .into_iter()
            .find(|bin| Command::new(bin).arg("-V").output().is_err())
            .map(|bin| format!("no `{bin}` binary"))
    };
    let Some(why) = why else { return true };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("netem lab test cannot run: {why} (CI=true, so this is a failure, not a skip)");
    }
    // Written to the stderr handle, not with eprintln!, which the test harness captures and
    // hides for tests that pass: a skip must be visible.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: netem lab test needs root, ip and ethtool: {why}"
    );
    false
}

/// Runs a command to completion, panicking with its output if it fails.
fn cmd(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The three namespaces and the netem process; dropping it kills netem and deletes them.
struct Lab {
    h1: String,
    mid: String,
    h2: String,
    /// Namespaces actually created, so a half-built lab is still cleaned up.
    created: Vec<String>,
    netem: Option<Child>,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let prefix = format!("vxt{}{tag}", std::process::id());
        let mut lab = Lab {
            h1: format!("{prefix}h1"),
            mid: format!("{prefix}mid"),
            h2: format!("{prefix}h2"),
            created: Vec::new(),
            netem: None,
        };
        for ns in [lab.h1.clone(), lab.mid.clone(), lab.h2.clone()] {
            cmd(&["ip", "netns", "add", &ns]);
            lab.created.push(ns);
        }
        let (h1, mid, h2) = (lab.h1.as_str(), lab.mid.as_str(), lab.h2.as_str());
        // Created directly inside the namespaces, so names cannot clash between runs.
        cmd(&[
            "ip", "-n", h1, "link", "add", "eth0", "type", "veth", "peer", "name", "a", "netns",
            mid,
        ]);
        cmd(&[
            "ip", "-n", h2, "link", "add", "eth0", "type", "veth", "peer", "name", "b", "netns",
            mid,
        ]);
        cmd(&[
            "ip",
            "-n",
            h1,
            "addr",
            "add",
            &format!("{H1}/24"),
            "dev",
            "eth0",
        ]);
        cmd(&[
            "ip",
            "-n",
            h2,
            "addr",
            "add",
            &format!("{H2}/24"),
            "dev",
            "eth0",
        ]);
        for (ns, dev) in [(h1, "eth0"), (mid, "a"), (mid, "b"), (h2, "eth0")] {
            // With offloads on, veths hand over 64 KiB GSO frames and packets whose checksum is
            // left to the "hardware"; forwarded through a packet socket, those arrive broken.
            cmd(&[
                "ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso",
                "off", "gro", "off",
            ]);
            cmd(&["ip", "-n", ns, "link", "set", "dev", dev, "up"]);
        }
        lab
    }

    /// Starts netem in `mid` with the given per-direction specs.
    fn start_netem(&mut self, up: &str, down: &str) {
        assert!(self.netem.is_none(), "netem already running");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.mid, &voxlab::exe(), "netem"])
            .args(["--a", "a", "--b", "b", "--up", up, "--down", down])
            .args(["--seed", "1", "--stats-json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning voxlab netem");
        self.netem = Some(child);
    }

    /// Panics with netem's stderr if it has exited (it should run until told to stop).
    fn assert_netem_running(&mut self) {
        let child = self.netem.as_mut().expect("netem not started");
        if let Some(status) = child.try_wait().expect("polling netem") {
            let mut err = String::new();
            let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            panic!("voxlab netem exited early with {status}: {err}");
        }
    }

    /// Stops netem with SIGTERM and returns its JSON counters.
    fn stop_netem(&mut self) -> serde_json::Value {
        let mut child = self.netem.take().expect("netem not started");
        // `ip netns exec` execs the command, so this pid is voxlab itself.
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(s) = child.try_wait().expect("waiting for netem") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("voxlab netem ignored SIGTERM for 5 s");
            }
            thread::sleep(Duration::from_millis(10));
        };
        let (mut out, mut err) = (String::new(), String::new());
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(status.success(), "voxlab netem exited with {status}: {err}");
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("stats {out:?}: {e}"))
    }

    /// A UDP socket bound to `addr` inside namespace `ns`.
    fn udp(&self, ns: &str, addr: &str) -> UdpSocket {
        let path = format!("/var/run/netns/{ns}");
        let addr = addr.to_owned();
        // The thread joins the namespace and ends; the socket keeps the namespace it was made in.
        thread::spawn(move || {
            let f = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: f is an open namespace file; only this short-lived thread changes namespace.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            UdpSocket::bind(&addr).unwrap_or_else(|e| panic!("bind {addr} in {path}: {e}"))
        })
        .join()
        .expect("socket thread panicked")
    }

    /// Waits until a datagram from `tx` reaches `rx` through netem (ARP resolved, netem reading),
    /// then discards stray probes. Panics after 10 s.
    fn wait_ready(&mut self, tx: &UdpSocket, rx: &UdpSocket) {
        let to = rx.local_addr().unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 64];
        'probing: for _ in 0..100 {
            self.assert_netem_running();
            tx.send_to(PROBE, to).unwrap();
            while let Ok(n) = rx.recv(&mut buf) {
                if &buf[..n] == PROBE {
                    break 'probing;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no probe got through netem within 10 s"
            );
        }
        // Later copies of the probe may still be in flight; let the delay line empty.
        thread::sleep(Duration::from_millis(200));
        rx.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        for _ in 0..1000 {
            if rx.recv(&mut buf).is_err() {
                break;
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.netem.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.created.drain(..) {
            let ok = Command::new("ip").args(["netns", "del", &ns]).status();
            if !ok.is_ok_and(|s| s.success()) {
                eprintln!("warning: could not delete namespace {ns}");
            }
        }
    }
}

const PROBE: &[u8] = b"voxlab-netem-probe";
const DATA: u8 = b'D';

fn datagram(seq: u32) -> [u8; 5] {
    let s = seq.to_be_bytes();
    [DATA, s[0], s[1], s[2], s[3]]
}

fn parse_seq(b: &[u8]) -> Option<u32> {
    match b {
        [DATA, a, b, c, d] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// Sends `count` numbered datagrams from `tx` to `rx` in small paced batches while a thread
/// drains `rx`, and returns the sequence numbers in arrival order.
fn blast(tx: &UdpSocket, rx: UdpSocket, count: u32) -> Vec<u32> {
    let to: SocketAddr = rx.local_addr().unwrap();
    // Room for every datagram of the run (~1 KiB of buffer each), so a receiver thread that waits
    // for a CPU loses nothing: the only loss the test can see is netem's. FORCE, as root, passes
    // the rmem_max cap (the lab needs root anyway).
    let bytes: libc::c_int = 8 << 20;
    // SAFETY: setsockopt(2) on an open socket with a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&rx),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    let done = Arc::new(AtomicBool::new(false));
    let receiver = thread::spawn({
        let done = done.clone();
        move || {
            rx.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut seqs = Vec::new();
            let mut buf = [0u8; 64];
            // Ends on a quiet 300 ms after the sender finished, or at the deadline.
            while Instant::now() < deadline {
                match rx.recv(&mut buf) {
                    Ok(n) => seqs.extend(parse_seq(&buf[..n])),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        if done.load(Ordering::SeqCst) {
                            break;
                        }
                    }
                    Err(e) => panic!("recv: {e}"),
                }
            }
            seqs
        }
    });
    // 25 datagrams every 2 ms (~12 kpps).
    for batch in (0..count).collect::<Vec<_>>().chunks(25) {
        for &seq in batch {
            tx.send_to(&datagram(seq), to).unwrap();
        }
        thread::sleep(Duration::from_millis(2));
    }
    done.store(true, Ordering::SeqCst);
    receiver.join().expect("receiver panicked")
}

#[test]
fn loss_of_20_percent_delivers_80_percent() {
    if !lab_available() {
        return;
    }
    let _serial = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new("l");
    lab.start_netem("loss=0.2", "loss=0.2");
    let tx = lab.udp(&lab.h1, &format!("{H1}:0"));
    let rx = lab.udp(&lab.h2, &format!("{H2}:7001"));
    lab.wait_ready(&tx, &rx);

    const N: u32 = 5000;
    let mut seqs = blast(&tx, rx, N);
    seqs.sort_unstable();
    seqs.dedup();
    let fraction = seqs.len() as f64 / f64::from(N);
    let stats = lab.stop_netem();
    eprintln!(
        "delivered {} of {N} ({fraction:.4}); netem: {stats}",
        seqs.len()
    );
    assert!(
        (fraction - 0.8).abs() <= 0.03,
        "delivered fraction {fraction}"
    );
    assert_eq!(stats["up"]["dropped_limit"], 0);
    assert_eq!(stats["up"]["tx_errors"], 0);
}

#[test]
fn one_way_delay_of_50ms_shows_in_rtt() {
    if !lab_available() {
        return;
    }
    let _serial = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new("d");
    lab.start_netem("delay=50ms", "");
    let client = lab.udp(&lab.h1, &format!("{H1}:0"));
    let server = lab.udp(&lab.h2, &format!("{H2}:7002"));
    let server_addr = server.local_addr().unwrap();

    // h2 echoes everything back until told to stop (or 60 s pass).
    let stop = Arc::new(AtomicBool::new(false));
    let echo = thread::spawn({
        let stop = stop.clone();
        move || {
            server
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                if let Ok((n, from)) = server.recv_from(&mut buf) {
                    let _ = server.send_to(&buf[..n], from);
                }
            }
        }
    });

    // Ready once an echo comes back: netem is forwarding and ARP is resolved both ways.
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    let ready = (0..30).any(|_| {
        lab.assert_netem_running();
        client.send_to(PROBE, server_addr).unwrap();
        matches!(client.recv(&mut buf), Ok(n) if &buf[..n] == PROBE)
    });
    assert!(ready, "no echo through netem within ~9 s");
    // Let late echoes of earlier probes arrive and be discarded, so they are not mistaken
    // for samples.
    thread::sleep(Duration::from_millis(300));
    client
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    for _ in 0..100 {
        if client.recv(&mut buf).is_err() {
            break;
        }
    }

    client
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut rtts = Vec::new();
    for seq in 0..10 {
        let sent = Instant::now();
        client.send_to(&datagram(seq), server_addr).unwrap();
        let rtt = loop {
            assert!(sent.elapsed() < Duration::from_secs(2), "echo {seq} lost");
            if let Ok(n) = client.recv(&mut buf) {
                if parse_seq(&buf[..n]) == Some(seq) {
                    break sent.elapsed();
                }
            }
        };
        rtts.push(rtt);
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    echo.join().expect("echo thread panicked");
    let stats = lab.stop_netem();
    eprintln!("rtts: {rtts:?}; netem: {stats}");
    // The delay is never shorter than configured, in any sample; a sample can be longer when the
    // forwarder waits for a CPU (the suite shares two cores), so the typical RTT is judged by
    // the median.
    for rtt in &rtts {
        assert!(*rtt >= Duration::from_millis(50), "rtt {rtt:?} below 50 ms");
    }
    let mut sorted = rtts.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    assert!(
        median <= Duration::from_millis(80),
        "median rtt {median:?} above 80 ms: {rtts:?}"
    );
}

#[test]
fn frames_keep_their_order_without_jitter() {
    if !lab_available() {
        return;
    }
    let _serial = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new("o");
    const N: u32 = 2000;

    lab.start_netem("delay=5ms", "delay=5ms");
    let tx = lab.udp(&lab.h1, &format!("{H1}:0"));
    let rx = lab.udp(&lab.h2, &format!("{H2}:7003"));
    lab.wait_ready(&tx, &rx);
    let seqs = blast(&tx, rx, N);
    let stats = lab.stop_netem();
    eprintln!(
        "fixed delay: received {} of {N}; netem: {stats}",
        seqs.len()
    );
    let out_of_order = seqs.windows(2).filter(|w| w[0] >= w[1]).count();
    assert_eq!(out_of_order, 0, "fixed delay must not reorder");
    assert_eq!(
        seqs.len(),
        N as usize,
        "nothing should be lost without loss configured"
    );

    // Contrast, so the check above is not vacuous: the same traffic with jitter does reorder.
    lab.start_netem("delay=5ms,jitter=20ms", "delay=5ms");
    let rx = lab.udp(&lab.h2, &format!("{H2}:7004"));
    lab.wait_ready(&tx, &rx);
    let seqs = blast(&tx, rx, N);
    let stats = lab.stop_netem();
    let out_of_order = seqs.windows(2).filter(|w| w[0] >= w[1]).count();
    eprintln!(
        "jitter: received {} of {N}, {out_of_order} out of order; netem: {stats}",
        seqs.len()
    );
    assert!(
        out_of_order > 0,
        "jitter of 20 ms should reorder paced datagrams"
    );
}
