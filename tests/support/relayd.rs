//! Shared by `tests/loopback/relayd_security.rs` and `tests/fuzz/fuzz_turn.rs`: the real `relayd` binary on
//! loopback, a raw TURN client whose every attribute the test chooses (missing or wrong
//! MESSAGE-INTEGRITY, forged nonces, attributes after the integrity check, ...), a synchronous
//! driver for the `TurnClient` core (the well-behaved client that must keep being served), and
//! the Prometheus endpoint.
//!
//! Network rule for every user of this module: traffic goes to loopback only. A relay on
//! loopback may be asked for permissions to any address (CreatePermission sends nothing to the
//! peer), but data is only ever sent to loopback peers: in practice another allocation's relayed
//! address on the same relay, which the relay delivers internally.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use voxmesh::stun::{
    Class, IntegrityCheck, Message, MessageBuilder, TransactionId, attr, long_term_key, method,
};
use voxmesh::turn::{TurnClient, TurnClientConfig, TurnEvent, channel, mint_rest_credential};

/// The shared secret for time-limited credentials.
pub const SECRET: &str = "north";
pub const REALM: &str = "voxmesh";
/// Long-term users every test relay knows.
pub const ALICE: (&str, &str) = ("alice", "secret");
pub const BOB: (&str, &str) = ("bob", "hunter2");
pub const CAROL: (&str, &str) = ("carol", "pw3");
/// How long any single wait in these tests may last.
pub const WAIT: Duration = Duration::from_secs(5);

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A time-limited credential from [`SECRET`], valid for an hour, with a user name never used
/// before in this process.
pub fn rest_user(tag: &str) -> (String, String) {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    mint_rest_credential(SECRET.as_bytes(), &format!("{tag}{n}"), unix_now() + 3600)
}

// ---------------------------------------------------------------- the daemon

/// A `relayd` child process, killed when dropped.
pub struct Relayd {
    pub child: Child,
    /// The UDP listener on 127.0.0.1.
    pub udp: SocketAddr,
    /// The UDP listener on ::1.
    pub udp6: SocketAddr,
    /// The TCP listener on 127.0.0.1.
    pub tcp: SocketAddr,
    pub metrics: SocketAddr,
    /// Ordinary peers the relay accepts (TEST-NET-2 and 2001:db8::/32 allowed), for
    /// permissions that are never sent to; `None` when started without those blocks.
    pub ordinary: Option<(SocketAddr, SocketAddr)>,
}

impl Relayd {
    /// `relayd` on loopback: UDP and TCP on 127.0.0.1, UDP on ::1 (all on ports the kernel
    /// picks, read back from the "listening" line), relaying from 127.0.0.1 and ::1 on `ports`,
    /// metrics on 127.0.0.1, users alice, bob and carol plus time-limited credentials from
    /// [`SECRET`], `--allow-peer 198.51.100.0/24 --allow-peer 2001:db8::/32`; then `extra`.
    pub fn start(ports: (u16, u16), extra: &[&str]) -> Relayd {
        Relayd::start_with(ports, extra, true)
    }

    /// Like [`Relayd::start`], with the two documentation blocks allowed or not.
    pub fn start_with(ports: (u16, u16), extra: &[&str], allow_lab: bool) -> Relayd {
        let range = format!("{}-{}", ports.0, ports.1);
        let mut args: Vec<String> = [
            "--listen",
            "udp:127.0.0.1:0",
            "--listen",
            "tcp:127.0.0.1:0",
            "--listen",
            "udp:[::1]:0",
            "--relay-ip",
            "127.0.0.1",
            "--relay-ip",
            "::1",
            "--relay-ports",
            &range,
            "--metrics",
            "127.0.0.1:0",
            "--auth-secret",
            SECRET,
            "--realm",
            REALM,
            "-q",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (u, p) in [ALICE, BOB, CAROL] {
            args.extend(["--user".to_string(), format!("{u}:{p}")]);
        }
        if allow_lab {
            args.extend(
                [
                    "--allow-peer",
                    "198.51.100.0/24",
                    "--allow-peer",
                    "2001:db8::/32",
                ]
                .map(String::from),
            );
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_relayd"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn relayd");
        // The "listening" line is readiness; read it on a thread so a hung start cannot hang us.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("relayd printed no listening line within 20 s ({args:?})");
            }
        };
        let json: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| {
            let _ = child.kill();
            panic!("relayd did not start ({e}): {line:?} with {args:?}")
        });
        assert_eq!(json["event"], "listening", "{line}");
        let find = |transport: &str, v6: bool| -> SocketAddr {
            json["listen"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|l| l["transport"] == transport)
                .map(|l| {
                    l["address"]
                        .as_str()
                        .unwrap()
                        .parse::<SocketAddr>()
                        .unwrap()
                })
                .find(|a| a.is_ipv6() == v6)
                .unwrap_or_else(|| panic!("no {transport} listener in {line}"))
        };
        let r = Relayd {
            udp: find("udp", false),
            udp6: find("udp", true),
            tcp: find("tcp", false),
            metrics: json["metrics"]
                .as_str()
                .expect("metrics address")
                .parse()
                .unwrap(),
            ordinary: allow_lab.then(|| {
                (
                    "198.51.100.77:9".parse().unwrap(),
                    "[2001:db8::77]:9".parse().unwrap(),
                )
            }),
            child,
        };
        // The listening line reports the bound ports, not the 0 we asked for.
        assert!(
            r.udp.port() != 0 && r.udp6.port() != 0 && r.tcp.port() != 0 && r.metrics.port() != 0,
            "{line}"
        );
        r
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn metrics(&self) -> Metrics {
        let addr = self.metrics;
        fetch_metrics(|| TcpStream::connect_timeout(&addr, WAIT)).unwrap()
    }

    /// Polls the metrics (they are rendered once a second) until `key` reaches `at_least`.
    #[track_caller]
    pub fn wait_metric(&self, key: &str, at_least: f64) -> Metrics {
        let addr = self.metrics;
        wait_metric(|| TcpStream::connect_timeout(&addr, WAIT), key, at_least)
    }

    /// Polls the metrics until `done` holds for a scrape (bounded).
    #[track_caller]
    pub fn wait_for(&self, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
        let addr = self.metrics;
        wait_until(|| TcpStream::connect_timeout(&addr, WAIT), what, done)
    }

    /// Open file descriptors of the daemon (`/proc/PID/fd`).
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// Resident set size in KiB (`VmRSS` in `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Relayd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- metrics

/// One scrape of the Prometheus text: series (name with labels) -> value.
#[derive(Clone, Debug, Default)]
pub struct Metrics(pub HashMap<String, f64>);

impl Metrics {
    /// A series' value; 0 when absent (counters appear on first use).
    pub fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// The sum of every series whose text starts with `prefix` (all labels of a counter).
    pub fn sum(&self, prefix: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }
}

/// Scrapes the endpoint over a connection from `connect`.
pub fn fetch_metrics(connect: impl Fn() -> io::Result<TcpStream>) -> io::Result<Metrics> {
    let mut s = connect()?;
    s.set_read_timeout(Some(WAIT))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: relayd\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other("no HTTP body"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(io::Error::other(format!("metrics answered {head:?}")));
    }
    let mut out = HashMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (k, v) = line
            .rsplit_once(' ')
            .ok_or_else(|| io::Error::other(format!("bad line {line:?}")))?;
        out.insert(
            k.to_string(),
            v.parse()
                .map_err(|_| io::Error::other(format!("bad value {line:?}")))?,
        );
    }
    Ok(Metrics(out))
}

/// Polls (bounded) until `key` reaches `at_least`; returns that scrape.
#[track_caller]
pub fn wait_metric(
    connect: impl Fn() -> io::Result<TcpStream>,
    key: &str,
    at_least: f64,
) -> Metrics {
    wait_until(connect, &format!("{key} >= {at_least}"), |m| {
        m.get(key) >= at_least
    })
}

/// Polls (bounded by [`WAIT`]; the daemon renders its metrics once a second) until `done`
/// holds for a scrape, and returns that scrape.
#[track_caller]
pub fn wait_until(
    connect: impl Fn() -> io::Result<TcpStream>,
    what: &str,
    done: impl Fn(&Metrics) -> bool,
) -> Metrics {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = fetch_metrics(&connect).expect("scrape metrics");
        if done(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {what}: {:?}",
            m.0
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------- raw messages

/// An unauthenticated request (or indication) with FINGERPRINT.
pub fn request(m: u16, f: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
    message(m, Class::Request, f)
}

pub fn message(m: u16, class: Class, f: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, m, class, TransactionId::random());
    f(&mut b);
    let len = b.fingerprint();
    buf.truncate(len);
    buf
}

/// A request signed with the long-term key of `user`/`pass` in `realm`, carrying `nonce`.
pub fn signed_request(
    m: u16,
    user: &str,
    pass: &str,
    realm: &str,
    nonce: &str,
    f: impl FnOnce(&mut MessageBuilder),
) -> Vec<u8> {
    let key = long_term_key(user, realm, pass);
    request(m, |b| {
        f(b);
        b.attr(attr::USERNAME, user.as_bytes())
            .attr(attr::REALM, realm.as_bytes())
            .attr(attr::NONCE, nonce.as_bytes())
            .message_integrity(&key);
    })
}

/// Recomputes a trailing FINGERPRINT after the message was altered (and fixes the length).
pub fn refingerprint(m: &mut [u8]) {
    let n = m.len();
    m[2..4].copy_from_slice(&((n - 20) as u16).to_be_bytes());
    assert_eq!(
        &m[n - 8..n - 4],
        &[0x80, 0x28, 0, 4],
        "the message ends in FINGERPRINT"
    );
    let crc = crc32fast::hash(&m[..n - 8]) ^ voxmesh::stun::FINGERPRINT_XOR;
    m[n - 4..].copy_from_slice(&crc.to_be_bytes());
}

/// `signed` with `extra` (whole attributes) appended after its MESSAGE-INTEGRITY, before a new
/// FINGERPRINT: what someone on the path could add without knowing the key.
pub fn append_unsigned(signed: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut m = signed[..signed.len() - 8].to_vec();
    m.extend_from_slice(extra);
    m.extend_from_slice(&[0x80, 0x28, 0, 4, 0, 0, 0, 0]);
    refingerprint(&mut m);
    m
}

/// The bytes of one XOR-PEER-ADDRESS attribute for a message with transaction ID `raw_id`
/// (bytes 4..20 of that message).
pub fn xor_peer_attribute(raw_id: &[u8], peer: SocketAddr) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::with_raw_id(
        &mut buf,
        method::SEND,
        Class::Indication,
        raw_id.try_into().unwrap(),
    );
    b.xor_address(attr::XOR_PEER_ADDRESS, peer);
    let len = b.finish();
    buf[20..len].to_vec()
}

/// REQUESTED-TRANSPORT: UDP.
pub fn udp_transport(b: &mut MessageBuilder) {
    b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24);
}

/// REQUESTED-ADDRESS-FAMILY: IPv6.
pub fn family_v6(b: &mut MessageBuilder) {
    b.attr(attr::REQUESTED_ADDRESS_FAMILY, &[0x02, 0, 0, 0]);
}

/// A message from the relay, parsed on demand.
#[derive(Clone, Debug)]
pub struct Reply {
    pub bytes: Vec<u8>,
}

impl Reply {
    pub fn msg(&self) -> Message<'_> {
        Message::parse(&self.bytes).expect("the relay sends well-formed STUN")
    }

    pub fn is_success(&self) -> bool {
        self.msg().class() == Class::Success
    }

    /// ERROR-CODE as (code, reason).
    pub fn error(&self) -> Option<(u16, String)> {
        let m = self.msg();
        (m.class() == Class::Error)
            .then(|| m.error_code().map(|(c, r)| (c, r.to_string())))
            .flatten()
    }

    pub fn text(&self, a: u16) -> Option<String> {
        self.msg().text(a).map(str::to_string)
    }

    pub fn xor(&self, a: u16) -> Option<SocketAddr> {
        self.msg().xor_address(a)
    }

    /// Whether MESSAGE-INTEGRITY is present and valid for `key`.
    pub fn signed_with(&self, key: &[u8]) -> bool {
        self.msg().check_integrity(key) == IntegrityCheck::Valid
    }

    #[track_caller]
    pub fn expect_success(&self) -> &Self {
        assert!(
            self.is_success(),
            "expected success, got {:?}",
            self.error()
        );
        self
    }

    /// Asserts an error response with `code` whose reason contains `reason`.
    #[track_caller]
    pub fn expect_error(&self, code: u16, reason: &str) -> &Self {
        match self.error() {
            Some((c, r)) => assert!(
                c == code && r.contains(reason),
                "expected {code} '{reason}', got {c} '{r}'"
            ),
            None => panic!(
                "expected error {code} '{reason}', got {:?}",
                self.msg().class()
            ),
        }
        self
    }
}

// ---------------------------------------------------------------- the raw client

/// A client socket that sends hand-built messages.
pub struct Raw {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    pub realm: String,
    pub nonce: String,
}

impl Raw {
    /// A socket on `ip` (any port) talking to `server`.
    pub fn bind(ip: &str, server: SocketAddr) -> Raw {
        let any: SocketAddr = if ip.contains(':') {
            format!("[{ip}]:0")
        } else {
            format!("{ip}:0")
        }
        .parse()
        .unwrap();
        Raw::from_socket(UdpSocket::bind(any).unwrap(), server)
    }

    pub fn from_socket(sock: UdpSocket, server: SocketAddr) -> Raw {
        Raw {
            sock,
            server,
            realm: String::new(),
            nonce: String::new(),
        }
    }

    pub fn local(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    pub fn send(&self, bytes: &[u8]) {
        self.sock.send_to(bytes, self.server).unwrap();
    }

    /// The next datagram from the server within `wait`.
    pub fn recv(&self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 70_000];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) if from == self.server => return Some(buf[..n].to_vec()),
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
    }

    /// The response to `request` (matched by transaction ID) within `wait`; other messages
    /// (relayed data) are skipped.
    pub fn reply_to(&self, request: &[u8], wait: Duration) -> Option<Reply> {
        let deadline = Instant::now() + wait;
        loop {
            let got = self.recv(deadline.saturating_duration_since(Instant::now()))?;
            if got.len() >= 20 && got[4..20] == request[4..20] {
                return Some(Reply { bytes: got });
            }
        }
    }

    /// Sends `request` and returns its response; panics when none comes within [`WAIT`].
    #[track_caller]
    pub fn transact(&self, request: &[u8]) -> Reply {
        self.send(request);
        self.reply_to(request, WAIT)
            .expect("no response from relayd")
    }

    /// Learns REALM and NONCE from the 401 answering an unauthenticated Allocate.
    #[track_caller]
    pub fn learn_nonce(&mut self) -> Reply {
        let r = self.transact(&request(method::ALLOCATE, udp_transport));
        r.expect_error(401, "Unauthenticated");
        self.take_nonce(&r);
        r
    }

    /// Remembers the REALM and NONCE of a 401 or 438.
    pub fn take_nonce(&mut self, r: &Reply) {
        self.realm = r.text(attr::REALM).expect("REALM in challenge");
        self.nonce = r.text(attr::NONCE).expect("NONCE in challenge");
    }

    /// A request signed as `user` with the learnt realm and nonce.
    pub fn signed(
        &self,
        m: u16,
        (user, pass): (&str, &str),
        f: impl FnOnce(&mut MessageBuilder),
    ) -> Vec<u8> {
        signed_request(m, user, pass, &self.realm, &self.nonce, f)
    }

    /// A signed request; learns a nonce first if needed, and retries once after a 438.
    #[track_caller]
    pub fn call(&mut self, m: u16, creds: (&str, &str), f: impl Fn(&mut MessageBuilder)) -> Reply {
        if self.nonce.is_empty() {
            self.learn_nonce();
        }
        let r = self.transact(&self.signed(m, creds, &f));
        if r.error().is_some_and(|(c, _)| c == 438) {
            self.take_nonce(&r);
            return self.transact(&self.signed(m, creds, &f));
        }
        r
    }

    /// Allocates (IPv6 when `v6`) and returns the relayed address; panics on refusal.
    #[track_caller]
    pub fn allocate(&mut self, creds: (&str, &str), v6: bool) -> SocketAddr {
        let r = self.call(method::ALLOCATE, creds, |b| {
            udp_transport(b);
            if v6 {
                family_v6(b);
            }
        });
        r.expect_success();
        assert!(
            r.signed_with(&long_term_key(creds.0, &self.realm, creds.1)),
            "success responses are signed"
        );
        r.xor(attr::XOR_RELAYED_ADDRESS)
            .expect("XOR-RELAYED-ADDRESS")
    }

    /// CreatePermission for `peer`.
    #[track_caller]
    pub fn permit(&mut self, creds: (&str, &str), peer: SocketAddr) -> Reply {
        self.call(method::CREATE_PERMISSION, creds, |b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
    }

    /// ChannelBind `number` to `peer`.
    #[track_caller]
    pub fn bind_channel(&mut self, creds: (&str, &str), number: u16, peer: SocketAddr) -> Reply {
        self.call(method::CHANNEL_BIND, creds, |b| {
            b.u32_attr(attr::CHANNEL_NUMBER, (number as u32) << 16);
            b.xor_address(attr::XOR_PEER_ADDRESS, peer);
        })
    }

    /// Refresh with `lifetime` seconds (0 releases the allocation).
    #[track_caller]
    pub fn refresh(&mut self, creds: (&str, &str), lifetime: u32) -> Reply {
        self.call(method::REFRESH, creds, |b| {
            b.u32_attr(attr::LIFETIME, lifetime);
        })
    }

    /// A Send indication carrying `data` for `peer`.
    pub fn send_indication(&self, peer: SocketAddr, data: &[u8]) {
        self.send(&message(method::SEND, Class::Indication, |b| {
            b.xor_address(attr::XOR_PEER_ADDRESS, peer);
            b.attr(attr::DATA, data);
        }));
    }

    /// The next relayed data within `wait`: a Data indication (peer, data) or ChannelData
    /// (channel, data).
    pub fn recv_data(&self, wait: Duration) -> Option<Relayed> {
        let deadline = Instant::now() + wait;
        loop {
            let got = self.recv(deadline.saturating_duration_since(Instant::now()))?;
            if let Some(r) = parse_relayed(&got) {
                return Some(r);
            }
        }
    }
}

/// Data the relay delivered to a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Relayed {
    Data { peer: SocketAddr, data: Vec<u8> },
    Channel { number: u16, data: Vec<u8> },
}

/// A Data indication or ChannelData message; `None` for anything else.
pub fn parse_relayed(bytes: &[u8]) -> Option<Relayed> {
    if bytes.first().is_some_and(|b| channel::is_channel_data(*b)) {
        let cd = channel::parse(bytes).ok()?;
        return Some(Relayed::Channel {
            number: cd.channel,
            data: bytes[cd.data].to_vec(),
        });
    }
    let m = Message::parse(bytes).ok()?;
    if (m.method(), m.class()) != (method::DATA, Class::Indication) {
        return None;
    }
    Some(Relayed::Data {
        peer: m.xor_address(attr::XOR_PEER_ADDRESS)?,
        data: m.get(attr::DATA)?.value.to_vec(),
    })
}

// ---------------------------------------------------------------- the well-behaved client

/// Our `TurnClient` core on a plain blocking socket: the client that must keep being served.
pub struct Good {
    pub core: TurnClient,
    pub sock: UdpSocket,
    pub server: SocketAddr,
    /// Data received while waiting for something else.
    pub inbox: Vec<(SocketAddr, Vec<u8>)>,
}

impl Good {
    pub fn new(ip: &str, server: SocketAddr, (user, pass): (&str, &str), v6: bool) -> Good {
        let raw = Raw::bind(ip, server);
        let mut cfg = TurnClientConfig::new(server, user, pass);
        cfg.ipv6_relay = v6;
        Good {
            core: TurnClient::new(cfg),
            sock: raw.sock,
            server,
            inbox: Vec::new(),
        }
    }

    fn flush(&mut self) {
        while let Some(t) = self.core.poll_transmit() {
            self.sock.send_to(&t.data, t.to).unwrap();
        }
    }

    /// One round: send what is queued, wait up to `wait` (or the core's next timer) for one
    /// datagram, feed it in, run timers.
    fn pump(&mut self, wait: Duration) {
        self.flush();
        let now = Instant::now();
        let until = self
            .core
            .poll_timeout()
            .map_or(now + wait, |t| t.min(now + wait));
        let left = until
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        self.sock.set_read_timeout(Some(left)).unwrap();
        let mut buf = vec![0u8; 70_000];
        if let Ok((n, from)) = self.sock.recv_from(&mut buf)
            && from == self.server
            && let Some(r) = self.core.handle_input(Instant::now(), &buf[..n])
        {
            self.inbox.push((r.peer, buf[r.data].to_vec()));
        }
        let now = Instant::now();
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
        }
        self.flush();
    }

    /// Runs until an event satisfies `want` (bounded by [`WAIT`]); a failure it did not want
    /// panics with the server's reason.
    #[track_caller]
    pub fn until(&mut self, what: &str, want: impl Fn(&TurnEvent) -> bool) -> TurnEvent {
        let deadline = Instant::now() + WAIT;
        loop {
            while let Some(e) = self.core.poll_event() {
                if want(&e) {
                    return e;
                }
                if let TurnEvent::Failed { .. } = e {
                    panic!("{what}: {e:?}");
                }
            }
            assert!(Instant::now() < deadline, "{what}: nothing within {WAIT:?}");
            self.pump(Duration::from_millis(50));
        }
    }

    #[track_caller]
    pub fn allocate(&mut self) -> SocketAddr {
        self.core.allocate(Instant::now());
        match self.until("allocate", |e| matches!(e, TurnEvent::Allocated { .. })) {
            TurnEvent::Allocated { relayed, .. } => relayed,
            _ => unreachable!(),
        }
    }

    #[track_caller]
    pub fn permit(&mut self, peer: SocketAddr) {
        self.core.create_permission(Instant::now(), peer);
        self.until("permission", |e| {
            *e == TurnEvent::PermissionCreated(peer.ip())
        });
    }

    #[track_caller]
    pub fn bind(&mut self, peer: SocketAddr) -> u16 {
        let n = self.core.bind_channel(Instant::now(), peer);
        self.until(
            "channel",
            |e| matches!(e, TurnEvent::ChannelBound { peer: p, .. } if *p == peer),
        );
        n
    }

    #[track_caller]
    pub fn release(&mut self) {
        self.core.release(Instant::now());
        self.until("release", |e| *e == TurnEvent::Released);
    }

    pub fn send(&mut self, peer: SocketAddr, data: &[u8]) {
        self.core.send_to(peer, data).unwrap();
        self.flush();
    }

    /// The next relayed datagram (bounded by [`WAIT`]).
    #[track_caller]
    pub fn recv(&mut self) -> (SocketAddr, Vec<u8>) {
        let deadline = Instant::now() + WAIT;
        while self.inbox.is_empty() {
            assert!(Instant::now() < deadline, "no relayed data within {WAIT:?}");
            self.pump(Duration::from_millis(50));
        }
        self.inbox.remove(0)
    }
}

/// What follows every refusal: a well-behaved client from `ip` (fresh time-limited credentials)
/// still allocates, creates a permission for an ordinary peer (198.51.100.77 or 2001:db8::77
/// when the relay allows them; never sent to), and relays data both ways with a second client through the relay — the
/// second client's relayed address is on this relay, so the relay delivers internally and
/// nothing leaves the host. Both allocations are released again.
#[track_caller]
pub fn assert_serving(r: &Relayd, ip: &str) {
    let v6 = ip.contains(':');
    let server = if v6 { r.udp6 } else { r.udp };
    let mut a = Good::new(ip, server, as_pair(&rest_user("witness-a")), v6);
    let mut b = Good::new(ip, server, as_pair(&rest_user("witness-b")), v6);
    let (ra, rb) = (a.allocate(), b.allocate());
    if let Some((v4_peer, v6_peer)) = r.ordinary {
        a.permit(if v6 { v6_peer } else { v4_peer });
    }
    a.permit(rb);
    b.permit(ra);
    a.send(rb, b"ping through the relay");
    assert_eq!(b.recv(), (ra, b"ping through the relay".to_vec()));
    b.bind(ra);
    b.send(ra, b"pong over a channel");
    assert_eq!(a.recv(), (rb, b"pong over a channel".to_vec()));
    a.release();
    b.release();
}

/// `(String, String)` credentials as the `(&str, &str)` the helpers take.
pub fn as_pair(c: &(String, String)) -> (&str, &str) {
    (&c.0, &c.1)
}
