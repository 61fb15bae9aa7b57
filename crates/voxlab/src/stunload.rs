//! `voxlab stun-load`: a STUN Binding load generator that checks every answer.
//!
//! It offers Binding requests (RFC 8489, with FINGERPRINT) to one server at a fixed rate or as
//! fast as it can, from many sockets spread over several loopback source addresses (so the
//! server sees many clients), and matches each response to its request by transaction ID. A
//! response counts as *valid* only if it is a Binding success, its FINGERPRINT checks, it arrived
//! from the server on the socket that sent the request, and its XOR-MAPPED-ADDRESS is exactly that
//! socket's address. The result is one JSON object on stdout (see [`Report`]).
//!
//! # Layout
//!
//! - [`StunLoadArgs`]: the flags.
//! - [`Ledger`]: the sans-IO part: hands out transaction IDs, remembers when each request left,
//!   judges each datagram that comes back, and folds everything into a [`Report`].
//! - [`generate`]: the I/O driver: one thread, non-blocking sockets, `sendmmsg`/`recvmmsg`
//!   batches and an `epoll` set polled without sleeping.
//!
//! # Pacing and why the loop spins
//!
//! At a fixed rate request `k` is due at `k / rate` seconds and goes out as soon as the loop sees
//! it due, so arrivals at the server are evenly spaced, not bunched into ticks: a server cannot
//! look good merely because the generator hands it ready-made batches. Evenly spaced arrivals
//! are the hardest case for a batching server. The loop never sleeps (it is meant to own a core,
//! `taskset -c 1`): sleeping would quantise the schedule to the timer slack. When the schedule
//! gets ahead of the loop (the generator is too slow), `behind` in the report says by how much;
//! a run with `behind > 0` measured the generator, not the server.
//!
//! With `--rate 0` the loop sends one batch from one socket at a time, draining responses between
//! batches, as fast as the kernel takes them: an open-loop overload whose `answered_per_s` is
//! the server's capacity and whose `lost` is what the server (or the kernel queue in front of
//! it) dropped.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Serialize;

use super::poller::Poller;
use voxmesh::net::batch::{BATCH, RecvBatch, SendBatch};
use voxmesh::stun::{Class, IntegrityCheck, Message, MessageBuilder, TransactionId, method};

/// Flags of `voxlab stun-load`.
#[derive(Debug, Clone, clap::Args)]
pub struct StunLoadArgs {
    /// STUN server to load (loopback only).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3478")]
    pub server: SocketAddr,

    /// Offered load in requests per second, evenly spaced; 0 sends as fast as possible.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    pub rate: u64,

    /// How long to send (us, ms or s).
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Stop sending after this many requests even if the duration has not passed.
    #[arg(long, value_name = "N", default_value_t = 10_000_000)]
    pub count: u64,

    /// Client sockets; requests go out of them in turn, a batch at a time.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub sockets: usize,

    /// Source addresses the sockets are spread over: --source-base and the next N-1.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub sources: u8,

    /// First source address (must be in 127.0.0.0/8).
    #[arg(long, value_name = "IP", default_value = "127.0.0.10")]
    pub source_base: Ipv4Addr,

    /// How long to wait for responses after the last request; unanswered ones are then lost.
    #[arg(long, value_name = "DUR", default_value = "500ms", value_parser = parse_duration)]
    pub grace: Duration,
}

/// Largest `--count`: the ledger keeps 8 bytes per request (80 MB at this bound).
const MAX_COUNT: u64 = 10_000_000;
/// Largest `--sockets` (each has a 4 MB receive buffer at most, and one epoll slot).
const MAX_SOCKETS: usize = 1024;
/// Longest `--duration` and `--grace`.
const MAX_DURATION: Duration = Duration::from_secs(600);
/// Receive batches taken from one readable socket before looking at the others and the clock.
const DRAIN_ROUNDS: usize = 4;
/// Most requests sent between two looks at the receive side: one socket's batch. Bigger rounds
/// make `--rate 0` arrive in bursts that overflow a server's receive queue before it is busy, and
/// leave responses waiting in ours.
const ROUND: u64 = BATCH as u64;

fn parse_duration(s: &str) -> Result<Duration, String> {
    super::poller::parse_duration_at_most(s, MAX_DURATION)
}

/// What one run observed. Counts are requests; rates are per second of the send window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub server: SocketAddr,
    /// Requested rate; `null` for "as fast as possible".
    pub offered_rate: Option<u64>,
    /// Requests the schedule called for during the send window (the rate times the window,
    /// capped by `--count`; with `--rate 0`, those the loop tried to send).
    pub offered: u64,
    /// Requests the kernel accepted.
    pub sent: u64,
    /// Requests the kernel refused (our send buffer full, or an error).
    pub send_failed: u64,
    /// Requests the schedule called for that the loop never got to: the generator was too slow.
    pub behind: u64,
    /// Requests with at least one matching response (valid or not).
    pub answered: u64,
    /// Requests whose response passed every check.
    pub valid: u64,
    /// Requests whose response failed a check (class, FINGERPRINT, XOR-MAPPED-ADDRESS, socket).
    pub invalid: u64,
    /// Sent requests with no response after the grace period.
    pub lost: u64,
    /// Datagrams matching no request we sent (foreign, corrupt, or a transaction ID we never
    /// used).
    pub unmatched: u64,
    /// Second and later responses to one request.
    pub duplicate: u64,
    /// Length of the send window in seconds (from the first due request to the last).
    pub send_seconds: f64,
    pub sent_per_s: f64,
    pub answered_per_s: f64,
    pub valid_per_s: f64,
    /// Request-to-response time of valid answers, in microseconds.
    pub latency_us: Latency,
    /// Mean size of a valid response in bytes (servers differ in the attributes they add).
    pub response_bytes: f64,
    pub sockets: usize,
    pub sources: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// How the ledger judged one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Invalid,
    Unmatched,
    Duplicate,
}

/// Transaction IDs are `salt (4 bytes) || sequence number (8 bytes)`: the sequence number indexes
/// the ledger directly, and the per-run random salt keeps a stray datagram from an earlier run
/// (or anyone else) from matching.
const SEQ_AT: usize = 4;
/// Set in a ledger entry once its request was answered; the rest of the entry is the send time.
const ANSWERED: u64 = 1 << 63;
/// Set in a ledger entry whose request the kernel refused: it never left, so it is not lost.
const REFUSED: u64 = 1 << 62;
const FLAGS: u64 = ANSWERED | REFUSED;

/// The sans-IO bookkeeping: which requests left when, from which socket, and what came back.
///
/// Call [`Ledger::request`] for each request in sequence order, [`Ledger::response`] for each
/// datagram received, and [`Ledger::report`] once at the end. Times are nanoseconds since the
/// start of the run, supplied by the caller.
pub struct Ledger {
    salt: [u8; 4],
    sockets: usize,
    /// Send time in ns (plus [`ANSWERED`] or [`REFUSED`]), indexed by sequence number.
    sent_at: Vec<u64>,
    /// Latencies of valid answers in ns, for the percentiles.
    latencies: Vec<u64>,
    /// Bytes of valid responses, for their mean size.
    valid_bytes: u64,
    refused: u64,
    answered: u64,
    valid: u64,
    invalid: u64,
    unmatched: u64,
    duplicate: u64,
}

impl Ledger {
    pub fn new(sockets: usize, salt: [u8; 4]) -> Self {
        Ledger {
            salt,
            sockets,
            sent_at: Vec::new(),
            latencies: Vec::new(),
            valid_bytes: 0,
            refused: 0,
            answered: 0,
            valid: 0,
            invalid: 0,
            unmatched: 0,
            duplicate: 0,
        }
    }

    /// The socket request `seq` goes out of: consecutive requests share a socket for a whole
    /// batch, so a burst fills whole `sendmmsg` batches.
    pub fn socket_of(&self, seq: u64) -> usize {
        ((seq / BATCH as u64) % self.sockets as u64) as usize
    }

    /// The transaction ID of request `seq`.
    pub fn txid(&self, seq: u64) -> TransactionId {
        let mut id = [0u8; 12];
        id[..SEQ_AT].copy_from_slice(&self.salt);
        id[SEQ_AT..].copy_from_slice(&seq.to_be_bytes());
        TransactionId(id)
    }

    /// Requests recorded so far (sent or refused); the next sequence number.
    pub fn attempted(&self) -> u64 {
        self.sent_at.len() as u64
    }

    /// Requests the kernel accepted.
    pub fn sent(&self) -> u64 {
        self.attempted() - self.refused
    }

    /// Records that the next request leaves at `now_ns`; returns its sequence number.
    pub fn request(&mut self, now_ns: u64) -> u64 {
        self.sent_at.push(now_ns & !FLAGS);
        self.attempted() - 1
    }

    /// Marks request `seq` as refused by the kernel: it never left, so it cannot be lost, and a
    /// response to it is not a match.
    pub fn refuse(&mut self, seq: u64) {
        if let Some(e) = self.sent_at.get_mut(seq as usize)
            && *e & FLAGS == 0
        {
            *e |= REFUSED;
            self.refused += 1;
        }
    }

    /// Judges a datagram that arrived at `now_ns` from `from` on socket `socket`, whose own
    /// address is `local`; `server` is where requests went.
    pub fn response(
        &mut self,
        now_ns: u64,
        socket: usize,
        local: SocketAddr,
        server: SocketAddr,
        from: SocketAddr,
        data: &[u8],
    ) -> Verdict {
        let Ok(msg) = Message::parse(data) else {
            return self.count(Verdict::Unmatched);
        };
        let id = msg.transaction_id().0;
        let seq = u64::from_be_bytes(id[SEQ_AT..].try_into().expect("8 bytes"));
        if msg.is_rfc3489() || id[..SEQ_AT] != self.salt || seq >= self.attempted() {
            return self.count(Verdict::Unmatched);
        }
        let entry = &mut self.sent_at[seq as usize];
        if *entry & REFUSED != 0 {
            return self.count(Verdict::Unmatched);
        }
        if *entry & ANSWERED != 0 {
            return self.count(Verdict::Duplicate);
        }
        let sent_ns = *entry;
        *entry |= ANSWERED;
        self.answered += 1;
        let ok = from == server
            && socket == self.socket_of(seq)
            && msg.method() == method::BINDING
            && msg.class() == Class::Success
            && msg.check_fingerprint() == IntegrityCheck::Valid
            && msg.xor_mapped_address() == Some(local);
        if !ok {
            return self.count(Verdict::Invalid);
        }
        self.latencies.push(now_ns.saturating_sub(sent_ns));
        self.valid_bytes += data.len() as u64;
        self.count(Verdict::Valid)
    }

    fn count(&mut self, v: Verdict) -> Verdict {
        match v {
            Verdict::Valid => self.valid += 1,
            Verdict::Invalid => self.invalid += 1,
            Verdict::Unmatched => self.unmatched += 1,
            Verdict::Duplicate => self.duplicate += 1,
        }
        v
    }

    /// Every request that left has been answered: nothing more to wait for.
    pub fn all_answered(&self) -> bool {
        self.answered == self.sent()
    }

    /// Folds the run into a report.
    pub fn report(mut self, run: RunFacts) -> Report {
        self.latencies.sort_unstable();
        let pct = |p: f64| -> f64 {
            if self.latencies.is_empty() {
                return 0.0;
            }
            let i = ((self.latencies.len() - 1) as f64 * p).round() as usize;
            self.latencies[i] as f64 / 1e3
        };
        let secs = run.send_window.as_secs_f64();
        let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let sent = self.sent();
        Report {
            server: run.server,
            offered_rate: run.rate,
            offered: run.offered,
            sent,
            send_failed: self.refused,
            behind: run.offered.saturating_sub(self.attempted()),
            answered: self.answered,
            valid: self.valid,
            invalid: self.invalid,
            lost: sent - self.answered,
            unmatched: self.unmatched,
            duplicate: self.duplicate,
            send_seconds: secs,
            sent_per_s: per_s(sent),
            answered_per_s: per_s(self.answered),
            valid_per_s: per_s(self.valid),
            latency_us: Latency {
                p50: pct(0.50),
                p99: pct(0.99),
                max: self.latencies.last().map_or(0.0, |&l| l as f64 / 1e3),
            },
            response_bytes: if self.valid > 0 {
                self.valid_bytes as f64 / self.valid as f64
            } else {
                0.0
            },
            sockets: run.sockets,
            sources: run.sources,
        }
    }
}

/// What the driver knows that the ledger does not.
pub struct RunFacts {
    pub server: SocketAddr,
    pub rate: Option<u64>,
    pub offered: u64,
    pub send_window: Duration,
    pub sockets: usize,
    pub sources: Vec<Ipv4Addr>,
}

/// Requests the schedule calls for by `elapsed`: request `k` is due at `k / rate` (the first at
/// once), and there are `total` in all.
fn due_by(rate: u64, elapsed: Duration, total: u64) -> u64 {
    let n = rate as u128 * elapsed.as_nanos() / 1_000_000_000 + 1;
    n.min(total as u128) as u64
}

/// Requests in a whole schedule: `rate × duration`, capped by `count`.
fn schedule_len(rate: u64, duration: Duration, count: u64) -> u64 {
    let n = rate as u128 * duration.as_nanos() / 1_000_000_000;
    n.min(count as u128) as u64
}

/// One client socket and its address as the server should report it.
struct Client {
    sock: UdpSocket,
    local: SocketAddr,
    tx: SendBatch,
}

/// Runs the generator and prints its [`Report`] as one JSON line.
pub fn run(args: StunLoadArgs) -> anyhow::Result<()> {
    let report = generate(&args)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Runs the generator and returns its report.
pub fn generate(args: &StunLoadArgs) -> anyhow::Result<Report> {
    let server = args.server;
    if !server.ip().is_loopback() {
        bail!("--server {server} is not a loopback address; this generator stays on loopback");
    }
    ensure!(
        server.is_ipv4(),
        "--server must be IPv4 (the sources are 127.x addresses)"
    );
    ensure!(
        (1..=MAX_SOCKETS).contains(&args.sockets),
        "--sockets must be 1..={MAX_SOCKETS}"
    );
    ensure!(args.sources >= 1, "--sources must be at least 1");
    ensure!(
        (1..=MAX_COUNT).contains(&args.count),
        "--count must be 1..={MAX_COUNT}"
    );
    let base = u32::from(args.source_base);
    let sources: Vec<Ipv4Addr> = (0..args.sources as u32)
        .map(|i| Ipv4Addr::from(base.wrapping_add(i)))
        .collect();
    if let Some(bad) = sources.iter().find(|a| !a.is_loopback()) {
        bail!("source {bad} is outside 127.0.0.0/8; lower --source-base or --sources");
    }

    let mut clients = Vec::with_capacity(args.sockets);
    for i in 0..args.sockets {
        let bind = SocketAddr::new(IpAddr::V4(sources[i % sources.len()]), 0);
        let sock = voxmesh::net::bind_udp_std(bind).with_context(|| format!("binding {bind}"))?;
        let local = sock.local_addr()?;
        clients.push(Client {
            sock,
            local,
            tx: SendBatch::default(),
        });
    }
    let mut poller = Poller::new(clients.iter().map(|c| c.sock.as_raw_fd()), clients.len())?;
    let mut rx = RecvBatch::default();
    let mut ledger = Ledger::new(clients.len(), rand::random());
    let rate = (args.rate > 0).then_some(args.rate);

    let mut offered = 0u64;
    let total = rate.map_or(args.count, |r| schedule_len(r, args.duration, args.count));
    let start = Instant::now();
    let send_end = start + args.duration;
    let mut send_window = args.duration;
    let mut deadline = None;
    loop {
        let now = Instant::now();
        let elapsed = now - start;
        if deadline.is_none() {
            if now >= send_end || offered >= total {
                send_window = elapsed.min(args.duration);
                if rate.is_some() {
                    // Every scheduled request was due before the end, even if the loop never
                    // got to it (then `behind` says so).
                    offered = total;
                }
                deadline = Some(now + args.grace);
            } else {
                let target = match rate {
                    Some(r) => due_by(r, elapsed, total),
                    None => (offered + ROUND).min(total),
                };
                let due = target.saturating_sub(offered).min(ROUND);
                send(&mut clients, &mut ledger, server, due, elapsed);
                offered += due;
            }
        }
        for i in poller.ready() {
            let c = &clients[i];
            for _ in 0..DRAIN_ROUNDS {
                match rx.try_recv(&c.sock) {
                    Ok(n) => {
                        let at = start.elapsed().as_nanos() as u64;
                        for d in rx.iter() {
                            ledger.response(at, i, c.local, server, d.from, d.data);
                        }
                        if n < BATCH {
                            break;
                        }
                    }
                    // WouldBlock, or an ICMP error from a server that went away: move on.
                    Err(_) => break,
                }
            }
        }
        if let Some(d) = deadline
            && (ledger.all_answered() || Instant::now() >= d)
        {
            break;
        }
    }
    Ok(ledger.report(RunFacts {
        server,
        rate,
        offered,
        send_window,
        sockets: clients.len(),
        sources,
    }))
}

/// Sends the next `due` requests, batch by batch, each from the socket the ledger assigns.
fn send(
    clients: &mut [Client],
    ledger: &mut Ledger,
    server: SocketAddr,
    due: u64,
    elapsed: Duration,
) {
    let mut left = due;
    while left > 0 {
        let first = ledger.attempted();
        let c = &mut clients[ledger.socket_of(first)];
        // Stay within this socket's share: the rest of its batch of sequence numbers.
        let room = BATCH as u64 - first % BATCH as u64;
        let n = left.min(room);
        let now_ns = elapsed.as_nanos() as u64;
        for _ in 0..n {
            let seq = ledger.request(now_ns);
            let buf = c.tx.slot().expect("at most BATCH per flush");
            let _ = MessageBuilder::new(buf, method::BINDING, Class::Request, ledger.txid(seq))
                .fingerprint();
            c.tx.commit(server);
        }
        let done = c.tx.flush(&c.sock);
        // A full send buffer drops the tail of the batch. (A datagram refused in the middle is
        // booked the same way; on loopback that takes a pending ICMP error, i.e. no server.)
        for seq in first + n - done.dropped as u64..first + n {
            ledger.refuse(seq);
        }
        left -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "127.0.0.1:3478";

    fn server() -> SocketAddr {
        SERVER.parse().unwrap()
    }

    fn local() -> SocketAddr {
        "127.0.0.10:40000".parse().unwrap()
    }

    /// A Binding success for `seq` reporting `mapped`, as a correct server would send it.
    fn answer(ledger: &Ledger, seq: u64, class: Class, mapped: SocketAddr) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut b = MessageBuilder::new(&mut buf, method::BINDING, class, ledger.txid(seq));
        b.xor_address(voxmesh::stun::attr::XOR_MAPPED_ADDRESS, mapped);
        let _ = b.fingerprint();
        buf
    }

    #[test]
    fn a_correct_answer_is_valid_once_then_duplicate() {
        let mut l = Ledger::new(4, [1, 2, 3, 4]);
        let seq = l.request(1_000);
        let r = answer(&l, seq, Class::Success, local());
        let sock = l.socket_of(seq);
        assert_eq!(
            l.response(5_000, sock, local(), server(), server(), &r),
            Verdict::Valid
        );
        assert_eq!(
            l.response(6_000, sock, local(), server(), server(), &r),
            Verdict::Duplicate
        );
        let rep = l.report(facts(1));
        assert_eq!(
            (rep.answered, rep.valid, rep.lost, rep.duplicate),
            (1, 1, 0, 1)
        );
        assert_eq!(rep.latency_us.p50, 4.0);
    }

    /// Makes a reply to request `seq`: its bytes, the socket it arrives on, and its source.
    type MakeReply = Box<dyn Fn(&Ledger, u64) -> (Vec<u8>, usize, SocketAddr)>;

    #[test]
    fn wrong_answers_are_invalid() {
        let other: SocketAddr = "127.0.0.11:40000".parse().unwrap();
        let cases: Vec<(&str, MakeReply)> = vec![
            (
                "wrong mapped address",
                Box::new(move |l, s| {
                    (
                        answer(l, s, Class::Success, other),
                        l.socket_of(s),
                        server(),
                    )
                }),
            ),
            (
                "error class",
                Box::new(move |l, s| {
                    (
                        answer(l, s, Class::Error, local()),
                        l.socket_of(s),
                        server(),
                    )
                }),
            ),
            (
                "bad fingerprint",
                Box::new(move |l, s| {
                    let mut r = answer(l, s, Class::Success, local());
                    let n = r.len();
                    r[n - 1] ^= 1;
                    (r, l.socket_of(s), server())
                }),
            ),
            (
                "from someone else",
                Box::new(move |l, s| {
                    (answer(l, s, Class::Success, local()), l.socket_of(s), other)
                }),
            ),
            (
                "on another socket",
                Box::new(move |l, s| {
                    (
                        answer(l, s, Class::Success, local()),
                        l.socket_of(s) + 1,
                        server(),
                    )
                }),
            ),
        ];
        for (name, make) in cases {
            let mut l = Ledger::new(4, [9; 4]);
            let seq = l.request(0);
            let (r, sock, from) = make(&l, seq);
            assert_eq!(
                l.response(10, sock, local(), server(), from, &r),
                Verdict::Invalid,
                "{name}"
            );
            let rep = l.report(facts(1));
            assert_eq!((rep.answered, rep.invalid, rep.lost), (1, 1, 0), "{name}");
        }
    }

    #[test]
    fn foreign_or_unsent_ids_are_unmatched() {
        let mut l = Ledger::new(4, [7; 4]);
        let seq = l.request(0);
        let stranger = Ledger::new(4, [8; 4]);
        let foreign = answer(&stranger, seq, Class::Success, local());
        let unsent = answer(&l, seq + 1, Class::Success, local());
        for r in [&foreign, &unsent, &vec![0u8; 3]] {
            assert_eq!(
                l.response(1, 0, local(), server(), server(), r),
                Verdict::Unmatched
            );
        }
        let rep = l.report(facts(1));
        assert_eq!((rep.answered, rep.unmatched, rep.lost), (0, 3, 1));
    }

    #[test]
    fn refused_sends_are_neither_sent_nor_lost() {
        let mut l = Ledger::new(1, [0; 4]);
        for _ in 0..5 {
            l.request(0);
        }
        l.refuse(3);
        l.refuse(4);
        l.refuse(4);
        assert_eq!(l.sent(), 3);
        let late = answer(&l, 4, Class::Success, local());
        assert_eq!(
            l.response(1, 0, local(), server(), server(), &late),
            Verdict::Unmatched
        );
        let rep = l.report(facts(6));
        assert_eq!(
            (rep.sent, rep.send_failed, rep.behind, rep.lost),
            (3, 2, 1, 3)
        );
    }

    #[test]
    fn schedule_is_rate_times_time_capped_by_count() {
        assert_eq!(due_by(20_000, Duration::ZERO, 100), 1);
        assert_eq!(due_by(20_000, Duration::from_micros(49), 100), 1);
        assert_eq!(due_by(20_000, Duration::from_micros(50), 100), 2);
        assert_eq!(due_by(20_000, Duration::from_millis(1), 100), 21);
        assert_eq!(due_by(20_000, Duration::from_secs(1), 100), 100);
        assert_eq!(schedule_len(20_000, Duration::from_millis(1), 100), 20);
        assert_eq!(schedule_len(20_000, Duration::from_secs(1), 100), 100);
    }

    #[test]
    fn consecutive_requests_fill_a_socket_batch() {
        let l = Ledger::new(3, [0; 4]);
        let b = BATCH as u64;
        assert_eq!(l.socket_of(0), 0);
        assert_eq!(l.socket_of(b - 1), 0);
        assert_eq!(l.socket_of(b), 1);
        assert_eq!(l.socket_of(3 * b), 0);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("1000s").is_err());
    }

    #[test]
    fn every_answer_from_a_real_server_is_valid() {
        use voxmesh::net::ShutdownSignal;
        use voxmesh::net::drivers::stun_server::StunServer;
        use voxmesh::supernode::BindingConfig;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = BindingConfig {
            primary: "127.0.0.1:0".parse().unwrap(),
            alternate: None,
            rfc5780: false,
            software: Some("test".into()),
        };
        let server = {
            let _runtime = rt.enter();
            StunServer::bind(vec![config]).unwrap()
        };
        let addr = server.configs()[0].primary;
        let (signal, shutdown) = ShutdownSignal::new();
        let serving = std::thread::spawn(move || rt.block_on(server.run(shutdown)));
        let report = generate(&StunLoadArgs {
            server: addr,
            rate: 5_000,
            duration: Duration::from_millis(200),
            count: 100_000,
            sockets: 4,
            sources: 2,
            source_base: Ipv4Addr::new(127, 0, 0, 10),
            grace: Duration::from_secs(2),
        })
        .unwrap();
        signal.trigger();
        serving.join().unwrap().unwrap();
        assert_eq!(report.offered, 1_000);
        assert_eq!(report.sent + report.send_failed + report.behind, 1_000);
        assert_eq!(report.valid, report.sent, "{report:?}");
        assert_eq!((report.invalid, report.unmatched, report.lost), (0, 0, 0));
    }

    fn facts(offered: u64) -> RunFacts {
        RunFacts {
            server: server(),
            rate: Some(1),
            offered,
            send_window: Duration::from_secs(1),
            sockets: 4,
            sources: vec![Ipv4Addr::new(127, 0, 0, 10)],
        }
    }
}
