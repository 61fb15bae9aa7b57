//! `voxlab sn-load`: load for `supernoded` that speaks the real protocol, from many client
//! identities on many loopback source addresses, and checks every answer.
//!
//! # Modes
//!
//! - `crypto`: the pure cryptographic cost of a new session, with no state machine around it:
//!   [`ResponderCrypto::respond`] (mac1, Noise IK both messages, the initiator's identity
//!   binding) plus the Ed25519 check of a registration record, in a loop over distinct
//!   pre-made initiations. Run it pinned to the server's core: it is the ceiling that "new
//!   sessions per second" is set against.
//! - `echo-server`: the STUN service's socket thread, the frame channel and supernoded's driver
//!   loop ([`crate::echo::run_echo`]) around a core that sends every frame back: what
//!   moving a frame through the daemon costs with no directory behind it.
//! - `run`: against one supernode (and the echo server), in one process: register clients, then
//!   measure new sessions, refreshes, lookups, echoes and routing, each for a fixed window, and
//!   routing again at half its measured maximum for latency. One JSON report.
//! - `million`: registers N distinct users over the wire as fast as the pair of cores allows,
//!   then leaves them registered (the sessions just go quiet), for a memory measurement. Given
//!   several supernodes (a mesh), user k registers on supernode k mod n, so each holds a
//!   share of the sessions while every home holds the records.
//! - `presence`: against several supernodes: watchers on one, watched users on another,
//!   toggled offline (polite close) and online (new session, registration) under background
//!   lookups; the time from the change to the watcher's event.
//!
//! # How clients are driven
//!
//! Every simulated client is its own [`Endpoint`] with its own [`Identity`], so the supernode
//! sees distinct users, each with its own session, handshake and signed registration. Clients
//! share UDP sockets (one socket per source address, many addresses in 127.0.0.0/8); frames
//! coming back are handed to the right endpoint by the session index every server frame
//! carries (handshake answer, cookie reply, transport). One thread, non-blocking sockets,
//! `sendmmsg`/`recvmmsg` and an epoll set polled without sleeping, like `stun-load`: it is meant
//! to own a core (`taskset -c 1`), and it reports its own CPU time next to the server's so a
//! reader can tell which side saturated.
//!
//! # What counts as valid
//!
//! - registration: the handshake completes with the identity the node key names (the endpoint
//!   checks it), and the answer is `Registered` with the record's own expiry;
//! - refresh: `Ok`;
//! - lookup: an `Entry` whose record is byte for byte the one the target registered, online,
//!   not stale, via the supernode, no name;
//! - route: the receiving client gets `Deliver` from the sender with exactly the payload sent
//!   (and acknowledges it), and the sender then gets `Routed`;
//! - echo: the same bytes back, from the echo server, on the socket that sent them;
//! - presence: a `Presence` event for the watched user with the state it was just given.
//!
//! Everything else is counted as invalid (or, for datagrams that match nothing, unmatched).
//!
//! # Measuring
//!
//! Each measured phase runs a warm-up and then a fixed window; what is sent and answered inside
//! the window is counted. Closed loop (`--window`): a fixed number of requests in flight, so the
//! server's queue stays bounded and throughput is what the slower side allows. Open loop (a
//! rate): requests due at `k / rate`, for latency at a chosen load. CPU time of this process and
//! of the server processes (`--server-pid`, read from `/proc/PID/stat`) is taken at the edges of
//! each window.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Serialize;

use super::poller::Poller;
use voxmesh::identity::{BootstrapEntry, Identity, NodeKey, RecordPolicy, Timestamp, UserId};
use voxmesh::identity::{Check, sign_record, verify_record};
use voxmesh::net::batch::{RecvBatch, SendBatch};
use voxmesh::session::crypto::{ResponderCrypto, initiation_frame};
use voxmesh::session::{self, Endpoint, Event, SessionId, TransactionId, wire};
use voxmesh::signal::{self, Entry, Message, Registration, Request, Response, Target};

// ---------------------------------------------------------------------------------- flags

/// Flags of `voxlab sn-load`.
#[derive(Debug, Clone, clap::Args)]
pub struct SnLoadArgs {
    #[command(subcommand)]
    pub mode: Mode,
}

/// What to do.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Mode {
    /// The bare crypto of a new session (responder handshake and record check), in a loop.
    Crypto(CryptoArgs),
    /// An echo server on supernoded's own driver (STUN socket thread, channel, driver loop).
    EchoServer(EchoServerArgs),
    /// New sessions, refreshes, lookups, echoes and routing against one supernode.
    Run(RunArgs),
    /// Register N distinct users over the wire and leave them registered.
    Million(MillionArgs),
    /// Presence propagation across supernodes under background load.
    Presence(PresenceArgs),
}

/// Flags of `sn-load crypto`.
#[derive(Debug, Clone, clap::Args)]
pub struct CryptoArgs {
    /// How long to loop.
    #[arg(long, value_name = "DUR", default_value = "2s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Distinct initiators (initiations and records are made once, then reused in turn).
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub initiators: usize,
}

/// Flags of `sn-load echo-server`.
#[derive(Debug, Clone, clap::Args)]
pub struct EchoServerArgs {
    /// UDP address to serve on (loopback).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

/// Where the load comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// Source addresses (one socket each): --source-base and the next N-1, all in 127.0.0.0/8.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub sources: u32,
    /// First source address.
    #[arg(long, value_name = "IP", default_value = "127.64.0.1")]
    pub source_base: Ipv4Addr,
    /// Server processes whose CPU time to read at the edges of each window (repeatable).
    #[arg(long = "server-pid", value_name = "PID")]
    pub server_pid: Vec<u32>,
}

/// Flags of `sn-load run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The supernode, as its node entry KEY@HOST:PORT (loopback).
    #[arg(long, value_name = "KEY@ADDR")]
    pub node: BootstrapEntry,
    /// The echo server (`sn-load echo-server`), for the echo phase.
    #[arg(long, value_name = "ADDR")]
    pub echo: Option<SocketAddr>,
    /// The echo server's process, for its CPU time.
    #[arg(long, value_name = "PID")]
    pub echo_pid: Option<u32>,
    /// Phases to run, in order: register, refresh, lookup, echo, route (route also runs at
    /// half its measured rate for latency).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "register,refresh,lookup,echo,route"
    )]
    pub phases: Vec<Phase>,
    /// Registered clients kept for the refresh, lookup and route phases.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub clients: usize,
    /// Requests in flight in the closed-loop phases.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub window: usize,
    /// Registrations (handshake and register) in flight in the register phase.
    #[arg(long, value_name = "N", default_value_t = 96)]
    pub register_window: usize,
    /// Identities made before the register phase (more are made on the fly if it runs out).
    #[arg(long, value_name = "N", default_value_t = 24_000)]
    pub register_pool: usize,
    /// Warm-up before each measured window.
    #[arg(long, value_name = "DUR", default_value = "500ms", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Length of each measured window.
    #[arg(long, value_name = "DUR", default_value = "3s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Share of the measured maximum routing rate offered in the latency run.
    #[arg(long, value_name = "F", default_value_t = 0.5)]
    pub route_load: f64,
    #[command(flatten)]
    pub sources: SourceArgs,
}

/// A measured phase of `sn-load run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Register,
    Refresh,
    Lookup,
    Echo,
    Route,
}

/// Flags of `sn-load million`.
#[derive(Debug, Clone, clap::Args)]
pub struct MillionArgs {
    /// The supernode, as KEY@HOST:PORT; repeat for several (user k registers on the k mod n-th).
    #[arg(long = "node", value_name = "KEY@ADDR", required = true)]
    pub nodes: Vec<BootstrapEntry>,
    /// Users to register.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub count: u64,
    /// Registrations in flight.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub window: usize,
    /// Give up after this long.
    #[arg(long, value_name = "DUR", default_value = "900s", value_parser = parse_duration)]
    pub limit: Duration,
    #[command(flatten)]
    pub sources: SourceArgs,
}

/// Flags of `sn-load presence`.
#[derive(Debug, Clone, clap::Args)]
pub struct PresenceArgs {
    /// The supernodes, as KEY@HOST:PORT (repeat; at least 2).
    #[arg(long = "node", value_name = "KEY@ADDR", required = true)]
    pub nodes: Vec<BootstrapEntry>,
    /// Watched users (each with one watcher on another supernode).
    #[arg(long, value_name = "N", default_value_t = 40)]
    pub users: usize,
    /// Pause between a change being seen and the user's next change.
    #[arg(long, value_name = "DUR", default_value = "50ms", value_parser = parse_duration)]
    pub pause: Duration,
    /// A change not seen by its watcher after this long counts as missed.
    #[arg(long, value_name = "DUR", default_value = "3s", value_parser = parse_duration)]
    pub give_up: Duration,
    /// Clients making background lookups (spread over the supernodes).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub bg_clients: usize,
    /// Background lookups per second (open loop, any user on any supernode).
    #[arg(long, value_name = "N", default_value_t = 4000)]
    pub bg_rate: u64,
    /// Wait after the watches before toggling (the watch reaches the user's homes).
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Warm-up of the background load before the window.
    #[arg(long, value_name = "DUR", default_value = "500ms", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Length of the measured window.
    #[arg(long, value_name = "DUR", default_value = "8s", value_parser = parse_duration)]
    pub duration: Duration,
    #[command(flatten)]
    pub sources: SourceArgs,
}

/// Longest accepted duration flag.
const MAX_DURATION: Duration = Duration::from_secs(3600);

fn parse_duration(s: &str) -> Result<Duration, String> {
    super::poller::parse_duration_at_most(s, MAX_DURATION)
}

/// Runs `voxlab sn-load` and prints its report as one JSON line.
pub fn run(args: SnLoadArgs) -> anyhow::Result<()> {
    let json = match args.mode {
        Mode::Crypto(a) => serde_json::to_string(&crypto(&a)?)?,
        Mode::EchoServer(a) => return echo_server(&a),
        Mode::Run(a) => serde_json::to_string(&run_phases(&a)?)?,
        Mode::Million(a) => serde_json::to_string(&million(&a)?)?,
        Mode::Presence(a) => serde_json::to_string(&presence(&a)?)?,
    };
    println!("{json}");
    Ok(())
}

// ---------------------------------------------------------------------------------- reports

/// Percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub samples: usize,
}

impl Latency {
    fn of(mut ns: Vec<u64>) -> Latency {
        if ns.is_empty() {
            return Latency::default();
        }
        ns.sort_unstable();
        let at = |p: f64| ns[((ns.len() - 1) as f64 * p).round() as usize] as f64 / 1e3;
        Latency {
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
            samples: ns.len(),
        }
    }
}

/// One measured window.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PhaseReport {
    /// Requests (or registrations, or echoes) sent inside the window.
    pub offered: u64,
    /// Of those the open-loop schedule called for, how many found no free client to go out
    /// from (the generator fell behind).
    pub behind: u64,
    /// Answers received inside the window.
    pub answered: u64,
    pub valid: u64,
    pub invalid: u64,
    /// Requests that got no answer (the session layer gave up) or handshakes that failed,
    /// inside the window.
    pub failed: u64,
    pub window_s: f64,
    /// Valid answers per second of the window.
    pub valid_per_s: f64,
    /// Open-loop rate asked for, if any.
    pub offered_rate: Option<f64>,
    /// Request to valid answer.
    pub latency_us: Latency,
    /// This process's CPU time in the window, and as a share of one core (near 1 always: the
    /// loop never sleeps).
    pub gen_cpu_s: f64,
    pub gen_util: f64,
    /// Share of the window the generator spent working rather than polling empty sockets:
    /// near 1 means the generator, not the server, set the pace.
    pub gen_busy: f64,
    /// The server processes' CPU time in the window (their sum), and as a share of one core.
    pub server_cpu_s: Option<f64>,
    pub server_util: Option<f64>,
    /// Valid answers per second of server CPU: the per-core rate.
    pub valid_per_server_cpu_s: Option<f64>,
    /// Session-layer retransmissions by the clients in the window (requests and handshakes).
    pub retransmits: u64,
    /// Cookie replies the clients received (the supernode asked for proof of address).
    pub cookies: u64,
}

/// What `sn-load crypto` measured. Times are this thread's CPU time (so a busy machine that
/// takes the core away now and then does not inflate them); `wall_*` are elapsed time.
#[derive(Debug, Clone, Serialize)]
pub struct CryptoReport {
    /// [`ResponderCrypto::respond`], per call.
    pub respond_us: f64,
    /// The registration record's check (`verify_record`, signature included), per call.
    pub record_check_us: f64,
    /// Both, per new session.
    pub session_us: f64,
    /// One core's ceiling: new sessions per CPU second if nothing but this crypto ran.
    pub sessions_per_s: f64,
    pub wall_session_us: f64,
    /// CPU time over elapsed time: below 1 when something else shared the core.
    pub cpu_share: f64,
    pub iterations: u64,
    pub initiators: usize,
}

/// What `sn-load run` measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub node: String,
    pub clients: usize,
    pub sources: usize,
    pub window: usize,
    pub phases: HashMap<String, PhaseReport>,
    /// Datagrams that matched no session, echo or server (should be 0).
    pub unmatched: u64,
    /// Datagrams the kernel refused to send (full send buffer): the session layer retransmits.
    pub send_dropped: u64,
    /// Every answer in every phase (warm-up included) was valid.
    pub all_valid: bool,
    /// Invalid answers seen outside the windows (warm-ups, drains, setup).
    pub invalid_outside_windows: u64,
}

/// What `sn-load million` did.
#[derive(Debug, Clone, Serialize)]
pub struct MillionReport {
    pub requested: u64,
    pub registered: u64,
    /// Users registered on each supernode, in `--node` order.
    pub registered_per_node: Vec<u64>,
    pub failed: u64,
    pub invalid: u64,
    pub seconds: f64,
    pub per_s: f64,
    pub gen_cpu_s: f64,
    pub server_cpu_s: Option<f64>,
    pub cookies: u64,
    pub retransmits: u64,
    pub sources: usize,
}

/// What `sn-load presence` measured.
#[derive(Debug, Clone, Serialize)]
pub struct PresenceReport {
    pub nodes: usize,
    pub users: usize,
    /// Changes made inside the window.
    pub changes: u64,
    /// Of those, seen by their watcher (with the right state).
    pub seen: u64,
    /// Not seen within `--give-up`.
    pub missed: u64,
    /// Presence events for a user the watcher does not watch, or registrations (going online)
    /// that failed.
    pub invalid: u64,
    /// Events reporting the state from before the user's latest change, after that change was
    /// made (or even seen): pushes from the user's several homes overtaking one another on
    /// their way to the watcher's supernode, which passes on every change of state it hears.
    pub out_of_order: u64,
    /// A second event for the same change.
    pub duplicate: u64,
    /// Change to watcher's event, both directions.
    pub latency_us: Latency,
    pub offline_latency_us: Latency,
    pub online_latency_us: Latency,
    /// The background lookups during the window.
    pub background: PhaseReport,
    pub window_s: f64,
}

// ---------------------------------------------------------------------------------- crypto

fn crypto(args: &CryptoArgs) -> anyhow::Result<CryptoReport> {
    ensure!(args.initiators >= 1, "--initiators must be at least 1");
    let node = Identity::generate();
    let key = node.node_key();
    let now = Timestamp::now();
    let made: Vec<(Vec<u8>, Vec<u8>, UserId)> = (0..args.initiators)
        .map(|i| {
            let id = Identity::generate();
            let frame = initiation_frame(&id, &key, i as u32 + 1);
            let record = registration_record(&id, 1, node.id(), now);
            (frame, record, id.id())
        })
        .collect();
    let responder = ResponderCrypto::new(&node);
    let mut out = [0u8; wire::NOISE2_LEN];
    // Alternate short runs of each so both see the same machine conditions.
    let (mut respond_ns, mut check_ns, mut n_respond, mut n_check) = (0u128, 0u128, 0u64, 0u64);
    let (start, cpu_start) = (Instant::now(), thread_cpu_ns());
    let end = start + args.duration;
    let mut i = 0;
    while Instant::now() < end {
        let t = thread_cpu_ns();
        for _ in 0..32 {
            let (frame, _, id) = &made[i % made.len()];
            let got = responder
                .respond(frame, &mut out)
                .context("a valid initiation was refused")?;
            ensure!(got == *id, "respond returned the wrong initiator");
            i += 1;
        }
        respond_ns += thread_cpu_ns() - t;
        n_respond += 32;
        let t = thread_cpu_ns();
        for k in 0..32 {
            let (_, record, id) = &made[(i + k) % made.len()];
            check_record(record, id, now).context("a valid record was refused")?;
        }
        check_ns += thread_cpu_ns() - t;
        n_check += 32;
    }
    let wall = start.elapsed().as_nanos() as f64;
    let cpu = (thread_cpu_ns() - cpu_start) as f64;
    let respond_us = respond_ns as f64 / n_respond as f64 / 1e3;
    let record_check_us = check_ns as f64 / n_check as f64 / 1e3;
    let session_us = respond_us + record_check_us;
    Ok(CryptoReport {
        respond_us,
        record_check_us,
        session_us,
        sessions_per_s: 1e6 / session_us,
        wall_session_us: wall / n_respond as f64 / 1e3,
        cpu_share: cpu / wall,
        iterations: n_respond,
        initiators: args.initiators,
    })
}

/// This thread's CPU time in nanoseconds.
fn thread_cpu_ns() -> u128 {
    // SAFETY: `ts` is a valid out-parameter.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// The supernode's check of a registration record (as `register` does it).
fn check_record(record: &[u8], id: &UserId, now: Timestamp) -> anyhow::Result<()> {
    let check = Check {
        now,
        expected_signer: Some(id),
        newer_than: None,
        policy: RecordPolicy::default(),
    };
    verify_record::<Registration>(record, &check)?;
    Ok(())
}

/// Lifetime of the registration records the generator signs.
const RECORD_LIFETIME: u64 = 24 * 3600;

fn registration_record(id: &Identity, seq: u64, node: UserId, now: Timestamp) -> Vec<u8> {
    let payload = Registration {
        supernode: node,
        addrs: Vec::new(),
    };
    sign_record(id, seq, now, now.plus(RECORD_LIFETIME), &payload).expect("a small record signs")
}

// ---------------------------------------------------------------------------------- echo server

fn echo_server(args: &EchoServerArgs) -> anyhow::Result<()> {
    use crate::echo::run_echo;
    use voxmesh::net::drivers::stun_server::StunServer;
    use voxmesh::net::drivers::supernode::NodeSockets;
    use voxmesh::net::{ShutdownSignal, ShutdownSignals};
    use voxmesh::supernode::BindingConfig;
    ensure!(
        args.listen.ip().is_loopback(),
        "--listen {} is not a loopback address",
        args.listen
    );
    // The same runtime supernoded builds.
    let rt = voxmesh::cli::runtime().context("cannot start the runtime")?;
    rt.block_on(async move {
        let config = BindingConfig {
            primary: args.listen,
            alternate: None,
            rfc5780: false,
            software: None,
        };
        let mut server = StunServer::bind(vec![config])?;
        let (signal, shutdown) = ShutdownSignal::new();
        // As supernoded wires it: same channel bound, same sockets.
        let (frames_tx, frames_rx) = tokio::sync::mpsc::channel(8192);
        server.set_frame_sink(frames_tx.clone());
        let sockets = NodeSockets {
            v4: server.primary_sockets().into_iter().next(),
            ..NodeSockets::default()
        };
        let addr = server.configs()[0].primary;
        let echo = tokio::spawn(run_echo(
            frames_tx,
            frames_rx,
            sockets,
            None,
            shutdown.clone(),
        ));
        let mut signals = ShutdownSignals::install()?;
        println!(
            "{}",
            serde_json::json!({"event": "listening", "echo": addr})
        );
        let mut stun = tokio::spawn(server.run(shutdown));
        tokio::select! {
            _ = signals.recv() => {}
            _ = &mut stun => {}
        }
        signal.trigger();
        let _ = echo.await;
        let _ = stun.await;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------- the engine

/// CPU seconds (user + system, all threads) of a process, from `/proc/PID/stat`.
fn proc_cpu(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After "(comm) ", field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / hz.max(1) as f64)
}

/// This process's CPU seconds (getrusage: finer than clock ticks).
fn self_cpu() -> f64 {
    // SAFETY: `ru` is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU snapshots at a window's edges.
#[derive(Clone)]
struct CpuMark {
    at: Instant,
    own: f64,
    servers: Option<f64>,
}

impl CpuMark {
    fn take(pids: &[u32]) -> CpuMark {
        let servers = if pids.is_empty() {
            None
        } else {
            pids.iter()
                .map(|p| proc_cpu(&p.to_string()))
                .sum::<Option<f64>>()
        };
        CpuMark {
            at: Instant::now(),
            own: self_cpu(),
            servers,
        }
    }
}

/// One socket (one source address) and the clients whose sessions use it.
struct Sock {
    sock: UdpSocket,
    tx: SendBatch,
    /// Our session index (which every server frame names) -> client slot.
    demux: HashMap<u32, usize>,
}

/// A simulated client.
struct Client {
    ep: Endpoint,
    sock: usize,
    /// Index of its supernode in [`Engine::nodes`].
    node: usize,
    sid: Option<SessionId>,
    user: UserId,
    /// Its identity's seed, to sign a new record when it registers again (a supernode refuses
    /// a replayed one, as it should).
    seed: [u8; 32],
    /// The sequence number of `record`.
    seq: u64,
    record: Vec<u8>,
    expires_at: u64,
    /// When its current handshake (or registration) began.
    since: Instant,
    /// Registered and usable for requests.
    ready: bool,
    /// Requests of the workload outstanding on it.
    busy: u32,
    /// The deadline it is filed under in the timer heap.
    scheduled: Option<Instant>,
}

/// A client not yet attached: its identity and signed record.
struct Made {
    identity: Identity,
    seed: [u8; 32],
    record: Vec<u8>,
    expires_at: u64,
}

fn make_user(node: UserId) -> Made {
    let seed = rand::random::<[u8; 32]>();
    let identity = Identity::from_seed(&seed);
    let now = Timestamp::now();
    let record = registration_record(&identity, 1, node, now);
    Made {
        identity,
        seed,
        record,
        expires_at: now.plus(RECORD_LIFETIME).0,
    }
}

/// Datagram-level counts.
#[derive(Default)]
struct NetStats {
    unmatched: u64,
    send_dropped: u64,
}

/// Receive rounds taken from one readable socket before looking at the others.
const DRAIN_ROUNDS: usize = 4;
/// Echo frames: session-frame type byte (so the STUN thread hands them to the driver), then an
/// index no session uses, the sequence number, the run's salt and filler; the length of a
/// lookup request frame (header 13, kind and transaction 13, request 23, tag 16).
const ECHO_LEN: usize = 65;

/// Sockets, clients, timers: everything below the workloads.
struct Engine {
    socks: Vec<Sock>,
    poller: Poller,
    rx: RecvBatch,
    nodes: Vec<(NodeKey, SocketAddr)>,
    echo: Option<SocketAddr>,
    clients: Vec<Option<Client>>,
    free: Vec<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    events: VecDeque<(usize, Event)>,
    /// Echoed frames that came back: (sequence number, valid, arrival).
    echoed: Vec<(u64, bool, Instant)>,
    echo_salt: [u8; 8],
    config: session::Config,
    next_sock: usize,
    seeds: u64,
    stats: NetStats,
    /// Session-layer counters of clients that are gone, so totals survive them.
    gone_retransmits: u64,
    gone_cookies: u64,
    /// Time spent in loop turns that found nothing to do (no datagram, no event, nothing
    /// sent).
    idle: Duration,
    /// Work seen in the current turn.
    worked: bool,
}

impl Engine {
    fn new(
        src: &SourceArgs,
        nodes: Vec<(NodeKey, SocketAddr)>,
        echo: Option<SocketAddr>,
    ) -> anyhow::Result<Engine> {
        for (_, a) in &nodes {
            ensure!(
                a.ip().is_loopback() && a.is_ipv4(),
                "{a} is not an IPv4 loopback address; this generator stays on loopback"
            );
        }
        if let Some(a) = echo {
            ensure!(a.ip().is_loopback(), "--echo {a} is not a loopback address");
        }
        ensure!(
            (1..=16_384).contains(&src.sources),
            "--sources must be 1..=16384"
        );
        raise_fd_limit(src.sources as u64 + 64);
        let base = u32::from(src.source_base);
        let mut socks = Vec::new();
        for i in 0..src.sources {
            let ip = Ipv4Addr::from(base.wrapping_add(i));
            ensure!(
                ip.is_loopback(),
                "source {ip} is outside 127.0.0.0/8; lower --source-base or --sources"
            );
            let bind = SocketAddr::new(IpAddr::V4(ip), 0);
            let sock =
                voxmesh::net::bind_udp_std(bind).with_context(|| format!("binding {bind}"))?;
            socks.push(Sock {
                sock,
                tx: SendBatch::default(),
                demux: HashMap::new(),
            });
        }
        let poller = Poller::new(socks.iter().map(|s| s.sock.as_raw_fd()), socks.len())?;
        let mut config = session::Config::client();
        // Clients never answer handshakes: no rate-limit tables.
        config.rate.buckets = 1;
        Ok(Engine {
            socks,
            poller,
            rx: RecvBatch::default(),
            nodes,
            echo,
            clients: Vec::new(),
            free: Vec::new(),
            timers: BinaryHeap::new(),
            events: VecDeque::new(),
            echoed: Vec::new(),
            echo_salt: rand::random(),
            config,
            next_sock: 0,
            seeds: rand::random(),
            stats: NetStats::default(),
            gone_retransmits: 0,
            gone_cookies: 0,
            idle: Duration::ZERO,
            worked: false,
        })
    }

    fn client(&mut self, slot: usize) -> Option<&mut Client> {
        self.clients.get_mut(slot).and_then(|c| c.as_mut())
    }

    /// Adds a client for `made` on supernode `node` and starts its handshake.
    fn add(&mut self, now: Instant, made: Made, node: usize) -> usize {
        self.seeds = self.seeds.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.seeds.to_le_bytes());
        let ep = Endpoint::new(self.config.clone(), &made.identity, now, seed);
        let sock = self.next_sock % self.socks.len();
        self.next_sock += 1;
        let c = Client {
            ep,
            sock,
            node,
            sid: None,
            user: made.identity.id(),
            seed: made.seed,
            seq: 1,
            record: made.record,
            expires_at: made.expires_at,
            since: now,
            ready: false,
            busy: 0,
            scheduled: None,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.clients[s] = Some(c);
                s
            }
            None => {
                self.clients.push(Some(c));
                self.clients.len() - 1
            }
        };
        self.connect(now, slot);
        slot
    }

    /// Opens a (new) session for the client to its supernode.
    fn connect(&mut self, now: Instant, slot: usize) {
        let (key, addr) = {
            let c = self.clients[slot].as_ref().expect("live slot");
            self.nodes[c.node]
        };
        loop {
            let c = self.clients[slot].as_mut().expect("live slot");
            if let Some(old) = c.sid.take() {
                self.socks[c.sock].demux.remove(&old.0);
            }
            let Ok(sid) = c.ep.connect(now, addr, &key) else {
                return;
            };
            // Indices are random per endpoint; two clients sharing a socket may draw the same
            // one. Then this client draws again.
            let demux = &mut self.socks[c.sock].demux;
            if demux.contains_key(&sid.0) {
                c.ep.close(now, sid);
                while c.ep.poll_transmit().is_some() {}
                continue;
            }
            demux.insert(sid.0, slot);
            c.sid = Some(sid);
            c.since = now;
            c.ready = false;
            break;
        }
        self.service(slot);
    }

    /// Drops a client (without closing its session: the supernode keeps it until idle).
    fn drop_client(&mut self, slot: usize) {
        if let Some(c) = self.clients.get_mut(slot).and_then(|c| c.take()) {
            if let Some(sid) = c.sid {
                self.socks[c.sock].demux.remove(&sid.0);
            }
            let k = c.ep.counters();
            self.gone_retransmits += k.request_retransmits + k.handshake_retransmits;
            self.gone_cookies += k.cookies_received;
            self.free.push(slot);
        }
    }

    /// Closes the client's session politely (the supernode hears at once).
    fn close(&mut self, now: Instant, slot: usize) {
        let Some(c) = self.clients[slot].as_mut() else {
            return;
        };
        if let Some(sid) = c.sid.take() {
            c.ep.close(now, sid);
            self.socks[c.sock].demux.remove(&sid.0);
        }
        c.ready = false;
        self.service(slot);
    }

    /// Sends a request from the client; `None` if its session refused it.
    fn request(&mut self, now: Instant, slot: usize, req: &Request) -> Option<TransactionId> {
        let c = self.clients[slot].as_mut()?;
        let sid = c.sid?;
        let txn = c.ep.request(now, sid, &signal::encode(req)).ok();
        self.service(slot);
        txn
    }

    fn respond(&mut self, now: Instant, slot: usize, txn: TransactionId, resp: &Response) {
        if let Some(c) = self.clients[slot].as_mut()
            && let Some(sid) = c.sid
        {
            let _ = c.ep.respond(now, sid, txn, &signal::encode(resp));
            self.service(slot);
        }
    }

    /// Moves the client's transmits into its socket's batch and its events into the queue, and
    /// files its next timer.
    fn service(&mut self, slot: usize) {
        let Some(c) = self.clients[slot].as_mut() else {
            return;
        };
        let s = &mut self.socks[c.sock];
        while let Some(t) = c.ep.poll_transmit() {
            if s.tx.is_full() {
                let done = s.tx.flush(&s.sock);
                self.stats.send_dropped += done.dropped as u64;
            }
            let b = s.tx.slot().expect("flushed when full");
            b.extend_from_slice(&t.data);
            s.tx.commit(t.to);
            c.ep.recycle(t.data);
        }
        while let Some(ev) = c.ep.poll_event() {
            self.events.push_back((slot, ev));
        }
        if let Some(t) = c.ep.poll_timeout()
            && c.scheduled.is_none_or(|old| t < old)
        {
            c.scheduled = Some(t);
            self.timers.push(Reverse((t, slot)));
        }
    }

    /// Sends every queued datagram.
    fn flush(&mut self) {
        for s in &mut self.socks {
            if !s.tx.is_empty() {
                self.worked = true;
                let done = s.tx.flush(&s.sock);
                self.stats.send_dropped += done.dropped as u64;
            }
        }
    }

    /// Receives what is waiting and hands it to the clients (or the echo ledger).
    fn poll_net(&mut self, now: Instant) {
        let ready: Vec<usize> = self.poller.ready().collect();
        for i in ready {
            for _ in 0..DRAIN_ROUNDS {
                let n = match self.rx.try_recv(&self.socks[i].sock) {
                    Ok(n) => n,
                    Err(_) => break,
                };
                self.worked = true;
                // Slots are looked up first, so the batch is not borrowed while clients run.
                let mut todo: Vec<(usize, usize)> = Vec::with_capacity(n);
                for (k, d) in self.rx.iter().enumerate() {
                    if Some(d.from) == self.echo {
                        let v = check_echo(d.data, &self.echo_salt, i, self.socks.len());
                        match v {
                            Some((seq, ok)) => self.echoed.push((seq, ok, now)),
                            None => self.stats.unmatched += 1,
                        }
                        continue;
                    }
                    if d.truncated || !self.nodes.iter().any(|(_, a)| *a == d.from) {
                        self.stats.unmatched += 1;
                        continue;
                    }
                    match frame_index(d.data).and_then(|x| self.socks[i].demux.get(&x)) {
                        Some(&slot) => todo.push((k, slot)),
                        None => self.stats.unmatched += 1,
                    }
                }
                for (k, slot) in todo {
                    let d = self.rx.iter().nth(k).expect("index from this batch");
                    let (from, data) = (d.from, d.data);
                    if let Some(c) = self.clients[slot].as_mut() {
                        c.ep.handle_input(now, from, data);
                    }
                    self.service(slot);
                }
                if n < voxmesh::net::batch::BATCH {
                    break;
                }
            }
        }
    }

    /// Runs the clients' due timers.
    fn run_timers(&mut self, now: Instant) {
        while let Some(&Reverse((t, slot))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.client(slot) else { continue };
            if c.scheduled != Some(t) {
                continue;
            }
            c.scheduled = None;
            c.ep.handle_timeout(now);
            self.service(slot);
        }
    }

    /// Session-layer retransmissions and cookies of every client so far.
    fn session_totals(&self) -> (u64, u64) {
        let (mut r, mut k) = (self.gone_retransmits, self.gone_cookies);
        for c in self.clients.iter().flatten() {
            let x = c.ep.counters();
            r += x.request_retransmits + x.handshake_retransmits;
            k += x.cookies_received;
        }
        (r, k)
    }

    /// Sends echo frame `seq` from the socket it belongs to.
    fn send_echo(&mut self, seq: u64) {
        let Some(to) = self.echo else { return };
        let i = (seq % self.socks.len() as u64) as usize;
        let s = &mut self.socks[i];
        if s.tx.is_full() {
            let done = s.tx.flush(&s.sock);
            self.stats.send_dropped += done.dropped as u64;
        }
        let b = s.tx.slot().expect("flushed when full");
        echo_frame(b, seq, &self.echo_salt);
        s.tx.commit(to);
    }
}

/// Our session index in a frame from a server: every frame type a client receives names it.
fn frame_index(data: &[u8]) -> Option<u32> {
    let at = match *data.first()? {
        wire::HANDSHAKE_RESP => 6,
        wire::COOKIE_REPLY => 2,
        wire::TRANSPORT => 1,
        _ => return None,
    };
    Some(u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn echo_frame(buf: &mut Vec<u8>, seq: u64, salt: &[u8; 8]) {
    buf.push(wire::TRANSPORT);
    buf.extend_from_slice(&u32::MAX.to_be_bytes());
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(salt);
    let fill = seq as u8;
    while buf.len() < ECHO_LEN {
        buf.push(fill.wrapping_add(buf.len() as u8));
    }
}

/// Judges an echoed datagram that arrived on socket `sock`: its sequence number and whether it
/// is exactly what was sent, on the right socket. `None` when it is no echo of ours.
fn check_echo(data: &[u8], salt: &[u8; 8], sock: usize, socks: usize) -> Option<(u64, bool)> {
    if data.len() < 21 || &data[13..21] != salt {
        return None;
    }
    let seq = u64::from_be_bytes(data[5..13].try_into().ok()?);
    let mut want = Vec::with_capacity(ECHO_LEN);
    echo_frame(&mut want, seq, salt);
    let ok = data == want.as_slice() && (seq % socks as u64) as usize == sock;
    Some((seq, ok))
}

fn raise_fd_limit(want: u64) {
    // SAFETY: `r` is a valid in/out parameter for both calls.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < want {
            r.rlim_cur = want.min(r.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// What a workload does with the engine's output, turn by turn.
trait Workload {
    /// An event from client `slot`'s endpoint.
    fn event(&mut self, e: &mut Engine, now: Instant, slot: usize, ev: Event);
    /// Every loop turn: issue what is due, look at echoes, check deadlines.
    fn tick(&mut self, e: &mut Engine, now: Instant);
    /// Whether to stop.
    fn finished(&self, now: Instant) -> bool;
}

/// Runs the engine and `w` until `w` is finished.
fn drive(e: &mut Engine, w: &mut impl Workload) {
    let mut last = Instant::now();
    loop {
        let now = Instant::now();
        if !e.worked {
            e.idle += now.duration_since(last);
        }
        e.worked = !e.events.is_empty();
        last = now;
        e.poll_net(now);
        e.run_timers(now);
        while let Some((slot, ev)) = e.events.pop_front() {
            w.event(e, now, slot, ev);
        }
        w.tick(e, now);
        while let Some((slot, ev)) = e.events.pop_front() {
            w.event(e, now, slot, ev);
        }
        e.flush();
        if w.finished(now) {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------- metering

/// Counts for one phase: warm-up, then the window, then a drain.
struct Meter {
    start: Instant,
    end: Instant,
    r: PhaseReport,
    lat: Vec<u64>,
    /// Invalid answers outside the window.
    invalid_outside: u64,
    cpu0: Option<CpuMark>,
    cpu1: Option<CpuMark>,
    retx0: (u64, u64),
    idle0: Duration,
}

impl Meter {
    fn new(now: Instant, warmup: Duration, window: Duration) -> Meter {
        Meter {
            start: now + warmup,
            end: now + warmup + window,
            r: PhaseReport::default(),
            lat: Vec::new(),
            invalid_outside: 0,
            cpu0: None,
            cpu1: None,
            retx0: (0, 0),
            idle0: Duration::ZERO,
        }
    }

    fn inside(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }

    fn sent(&mut self, t: Instant) {
        if self.inside(t) {
            self.r.offered += 1;
        }
    }

    fn answered(&mut self, sent: Instant, now: Instant, valid: bool) {
        if !self.inside(now) {
            if !valid {
                self.invalid_outside += 1;
            }
            return;
        }
        self.r.answered += 1;
        if valid {
            self.r.valid += 1;
            self.lat
                .push(now.saturating_duration_since(sent).as_nanos() as u64);
        } else {
            self.r.invalid += 1;
        }
    }

    fn failed(&mut self, now: Instant) {
        if self.inside(now) {
            self.r.failed += 1;
        }
    }

    /// Takes the CPU marks at the window's edges (call every turn).
    fn mark(&mut self, e: &Engine, now: Instant, pids: &[u32]) {
        if self.cpu0.is_none() && now >= self.start {
            self.cpu0 = Some(CpuMark::take(pids));
            self.retx0 = e.session_totals();
            self.idle0 = e.idle;
        }
        if self.cpu1.is_none() && now >= self.end {
            self.cpu1 = Some(CpuMark::take(pids));
            let idle = e.idle.saturating_sub(self.idle0).as_secs_f64();
            let secs = now.duration_since(self.start).as_secs_f64().max(1e-9);
            self.r.gen_busy = (1.0 - idle / secs).max(0.0);
            let (r, k) = e.session_totals();
            self.r.retransmits = r.saturating_sub(self.retx0.0);
            self.r.cookies = k.saturating_sub(self.retx0.1);
        }
    }

    fn report(mut self) -> (PhaseReport, u64) {
        let (Some(a), Some(b)) = (self.cpu0, self.cpu1) else {
            return (self.r, self.invalid_outside);
        };
        let secs = b.at.duration_since(a.at).as_secs_f64();
        let r = &mut self.r;
        r.window_s = secs;
        r.valid_per_s = r.valid as f64 / secs;
        r.latency_us = Latency::of(std::mem::take(&mut self.lat));
        r.gen_cpu_s = b.own - a.own;
        r.gen_util = r.gen_cpu_s / secs;
        if let (Some(x), Some(y)) = (a.servers, b.servers) {
            let cpu = y - x;
            r.server_cpu_s = Some(cpu);
            r.server_util = Some(cpu / secs);
            r.valid_per_server_cpu_s = (cpu > 0.0).then(|| r.valid as f64 / cpu);
        }
        (self.r, self.invalid_outside)
    }
}

// ---------------------------------------------------------------------------------- setup

/// Registers `made` users (user i on supernode `node_of(i)`), `window` at a time; returns
/// their slots once all are registered.
struct Setup {
    todo: VecDeque<(Made, usize)>,
    window: usize,
    open: usize,
    pending: HashMap<TransactionId, usize>,
    slots: Vec<usize>,
    failed: u64,
    invalid: u64,
    deadline: Instant,
}

impl Workload for Setup {
    fn event(&mut self, e: &mut Engine, now: Instant, slot: usize, ev: Event) {
        match ev {
            Event::Connected { .. } => {
                let Some(c) = e.client(slot) else { return };
                let req = Request::CRegister {
                    record: c.record.clone(),
                };
                if let Some(t) = e.request(now, slot, &req) {
                    self.pending.insert(t, slot);
                }
            }
            Event::Response { txn, body, .. } => {
                let Some(slot) = self.pending.remove(&txn) else {
                    return;
                };
                let c = e.client(slot).expect("pending clients are live");
                if registered_ok(&body, c.expires_at) {
                    c.ready = true;
                    self.slots.push(slot);
                } else {
                    self.invalid += 1;
                }
                self.open -= 1;
            }
            Event::HandshakeFailed { .. } | Event::TransactionFailed { .. } => {
                self.failed += 1;
                self.open = self.open.saturating_sub(1);
            }
            _ => {}
        }
    }

    fn tick(&mut self, e: &mut Engine, now: Instant) {
        while self.open < self.window {
            let Some((made, node)) = self.todo.pop_front() else {
                break;
            };
            e.add(now, made, node);
            self.open += 1;
        }
    }

    fn finished(&self, now: Instant) -> bool {
        (self.todo.is_empty() && self.open == 0) || now >= self.deadline
    }
}

fn registered_ok(body: &[u8], expires_at: u64) -> bool {
    matches!(signal::decode::<Response>(body), Ok(Response::Registered { expires_at: e }) if e == expires_at)
}

/// Registers `n` clients, user i on `node_of(i)`; fails unless every one registers.
fn setup_clients(
    e: &mut Engine,
    n: usize,
    node_of: impl Fn(usize) -> usize,
) -> anyhow::Result<Vec<usize>> {
    let todo = (0..n)
        .map(|i| {
            let node = node_of(i);
            (make_user(e.nodes[node].0.id), node)
        })
        .collect();
    let mut s = Setup {
        todo,
        window: 256,
        open: 0,
        pending: HashMap::new(),
        slots: Vec::new(),
        failed: 0,
        invalid: 0,
        deadline: Instant::now() + Duration::from_secs(120),
    };
    drive(e, &mut s);
    ensure!(
        s.slots.len() == n && s.invalid == 0,
        "setting up clients: {} of {n} registered, {} failed, {} invalid answers",
        s.slots.len(),
        s.failed,
        s.invalid
    );
    Ok(s.slots)
}

// ---------------------------------------------------------------------------------- new sessions

/// New sessions: handshake and registration, `window` at a time, each with a fresh identity;
/// a registered client is then dropped (its session goes quiet on the supernode).
struct NewSessions {
    meter: Meter,
    /// Identities made ahead, for the engine's first supernode.
    pool: Vec<Made>,
    window: usize,
    open: usize,
    pending: HashMap<TransactionId, usize>,
    made_late: u64,
    pids: Vec<u32>,
    /// Stop starting new ones at this instant; finished when none is open (or at the deadline).
    stop: Instant,
    deadline: Instant,
    /// Count without a window (the million mode).
    total: Option<u64>,
    started: u64,
    done: u64,
    /// Of `done`, how many on each of the engine's supernodes.
    done_per_node: Vec<u64>,
    failed: u64,
    invalid: u64,
    progress: Option<(Instant, u64)>,
}

impl NewSessions {
    fn new(now: Instant, warmup: Duration, window: Duration, sessions: usize) -> NewSessions {
        let meter = Meter::new(now, warmup, window);
        let stop = meter.end;
        NewSessions {
            meter,
            pool: Vec::new(),
            window: sessions,
            open: 0,
            pending: HashMap::new(),
            made_late: 0,
            pids: Vec::new(),
            stop,
            deadline: stop + Duration::from_secs(5),
            total: None,
            started: 0,
            done: 0,
            done_per_node: Vec::new(),
            failed: 0,
            invalid: 0,
            progress: None,
        }
    }
}

impl Workload for NewSessions {
    fn event(&mut self, e: &mut Engine, now: Instant, slot: usize, ev: Event) {
        match ev {
            Event::Connected { .. } => {
                let Some(c) = e.client(slot) else { return };
                let req = Request::CRegister {
                    record: c.record.clone(),
                };
                match e.request(now, slot, &req) {
                    Some(t) => {
                        self.pending.insert(t, slot);
                    }
                    None => {
                        self.failed += 1;
                        self.open -= 1;
                        e.drop_client(slot);
                    }
                }
            }
            Event::Response { txn, body, .. } => {
                let Some(slot) = self.pending.remove(&txn) else {
                    return;
                };
                let c = e.client(slot).expect("pending clients are live");
                let ok = registered_ok(&body, c.expires_at);
                let (since, node) = (c.since, c.node);
                self.meter.answered(since, now, ok);
                if ok {
                    self.done += 1;
                    if self.done_per_node.len() <= node {
                        self.done_per_node.resize(node + 1, 0);
                    }
                    self.done_per_node[node] += 1;
                } else {
                    self.invalid += 1;
                }
                self.open -= 1;
                e.drop_client(slot);
            }
            Event::HandshakeFailed { .. } | Event::TransactionFailed { .. } => {
                self.pending.retain(|_, s| *s != slot);
                self.meter.failed(now);
                self.failed += 1;
                self.open = self.open.saturating_sub(1);
                e.drop_client(slot);
            }
            _ => {}
        }
    }

    fn tick(&mut self, e: &mut Engine, now: Instant) {
        self.meter.mark(e, now, &self.pids);
        if now >= self.stop {
            return;
        }
        while self.open < self.window && self.total.is_none_or(|t| self.started < t) {
            // Round robin over the supernodes; the record names the one it registers on.
            let node = (self.started % e.nodes.len() as u64) as usize;
            let pooled = if node == 0 { self.pool.pop() } else { None };
            let made = match pooled {
                Some(m) => m,
                None => {
                    self.made_late += u64::from(node == 0);
                    make_user(e.nodes[node].0.id)
                }
            };
            self.meter.sent(now);
            e.add(now, made, node);
            self.open += 1;
            self.started += 1;
        }
        if let Some((at, last)) = self.progress
            && now.duration_since(at) >= Duration::from_secs(10)
        {
            let rate = (self.done - last) as f64 / now.duration_since(at).as_secs_f64();
            eprintln!(
                "sn-load: {} registered, {} failed, {rate:.0}/s",
                self.done, self.failed
            );
            self.progress = Some((now, self.done));
        }
    }

    fn finished(&self, now: Instant) -> bool {
        let all = self.total.is_some_and(|t| self.started >= t);
        ((now >= self.stop || all) && self.open == 0) || now >= self.deadline
    }
}

// ---------------------------------------------------------------------------------- requests

/// What a workload request was, for judging its answer.
#[derive(Clone, Copy)]
enum Asked {
    Refresh,
    /// A lookup of the user at this slot.
    Lookup(usize),
    /// A route with this payload sequence number.
    Route(u64),
}

struct Outstanding {
    slot: usize,
    sent: Instant,
    asked: Asked,
}

/// How requests are paced.
#[derive(Clone, Copy)]
enum Pace {
    /// This many in flight.
    Closed(usize),
    /// This many per second, evenly spaced.
    Open(f64),
}

/// Refreshes, lookups or routes from the registered clients, paced, each answer judged.
struct Requests {
    meter: Meter,
    kind: Phase,
    pace: Pace,
    /// Clients that send (for routes: the senders; receiver of sender k is `receivers[k]`).
    senders: Vec<usize>,
    receivers: Vec<usize>,
    /// Everything the lookups may ask for.
    targets: Vec<usize>,
    next_sender: usize,
    next_target: usize,
    in_flight: usize,
    issued: u64,
    begun: Instant,
    stop: Instant,
    deadline: Instant,
    out: HashMap<TransactionId, Outstanding>,
    /// Route payloads delivered but not yet acknowledged to their sender: seq -> delivered.
    routes: HashMap<u64, bool>,
    route_salt: [u8; 8],
    next_route: u64,
    pids: Vec<u32>,
    /// Echo: send time by sequence number.
    echo_sent: HashMap<u64, Instant>,
    next_echo: u64,
}

/// Most requests one client has outstanding (the session allows 64; the supernode answers 64).
const PER_CLIENT: u32 = 8;

impl Requests {
    #[allow(clippy::too_many_arguments)]
    fn new(
        now: Instant,
        kind: Phase,
        pace: Pace,
        warmup: Duration,
        window: Duration,
        clients: &[usize],
        pids: Vec<u32>,
    ) -> Requests {
        let meter = Meter::new(now, warmup, window);
        let (senders, receivers) = if kind == Phase::Route {
            let half = clients.len() / 2;
            (clients[..half].to_vec(), clients[half..half * 2].to_vec())
        } else {
            (clients.to_vec(), Vec::new())
        };
        Requests {
            stop: meter.end,
            deadline: meter.end + Duration::from_secs(3),
            meter,
            kind,
            pace,
            senders,
            receivers,
            targets: clients.to_vec(),
            next_sender: 0,
            next_target: 0,
            in_flight: 0,
            issued: 0,
            begun: now,
            out: HashMap::new(),
            routes: HashMap::new(),
            route_salt: rand::random(),
            next_route: 0,
            pids,
            echo_sent: HashMap::new(),
            next_echo: 0,
        }
    }

    /// Sends one request from the next client with room; false if none has room.
    fn issue(&mut self, e: &mut Engine, now: Instant) -> bool {
        if self.kind == Phase::Echo {
            let seq = self.next_echo;
            self.next_echo += 1;
            e.send_echo(seq);
            self.echo_sent.insert(seq, now);
            self.meter.sent(now);
            self.in_flight += 1;
            return true;
        }
        for _ in 0..self.senders.len() {
            let k = self.next_sender % self.senders.len();
            self.next_sender += 1;
            let slot = self.senders[k];
            let Some(c) = e.client(slot) else { continue };
            if !c.ready || c.busy >= PER_CLIENT {
                continue;
            }
            let (req, asked) = match self.kind {
                Phase::Refresh => (Request::CRefresh, Asked::Refresh),
                Phase::Lookup => {
                    let t = self.targets[self.next_target % self.targets.len()];
                    self.next_target += 1;
                    let user = e.client(t).map(|c| c.user).unwrap_or(UserId([0; 20]));
                    (Request::CLookup(Target::Id(user)), Asked::Lookup(t))
                }
                Phase::Route => {
                    let to = self.receivers[k];
                    let Some(user) = e.client(to).map(|c| c.user) else {
                        continue;
                    };
                    let seq = self.next_route;
                    self.next_route += 1;
                    let payload = route_payload(&self.route_salt, seq);
                    self.routes.insert(seq, false);
                    (Request::CRoute { to: user, payload }, Asked::Route(seq))
                }
                Phase::Register | Phase::Echo => unreachable!("not a request phase"),
            };
            let Some(txn) = e.request(now, slot, &req) else {
                continue;
            };
            if let Some(c) = e.client(slot) {
                c.busy += 1;
            }
            self.out.insert(
                txn,
                Outstanding {
                    slot,
                    sent: now,
                    asked,
                },
            );
            self.meter.sent(now);
            self.in_flight += 1;
            return true;
        }
        false
    }

    fn judge(&mut self, e: &mut Engine, o: &Outstanding, body: &[u8]) -> bool {
        let Ok(resp) = signal::decode::<Response>(body) else {
            return false;
        };
        match (o.asked, resp) {
            (Asked::Refresh, Response::Ok) => true,
            (Asked::Lookup(t), Response::Entry(entry)) => {
                let Some(c) = e.clients.get(t).and_then(|c| c.as_ref()) else {
                    return false;
                };
                entry_ok(&entry, c, e.nodes[c.node].0.id)
            }
            (Asked::Route(seq), Response::Routed) => self.routes.remove(&seq) == Some(true),
            _ => false,
        }
    }
}

fn entry_ok(e: &Entry, target: &Client, node: UserId) -> bool {
    *e.record == *target.record && e.online && !e.stale && e.via == node && e.name.is_none()
}

fn route_payload(salt: &[u8; 8], seq: u64) -> Vec<u8> {
    let mut p = salt.to_vec();
    p.extend_from_slice(&seq.to_be_bytes());
    p
}

impl Workload for Requests {
    fn event(&mut self, e: &mut Engine, now: Instant, slot: usize, ev: Event) {
        match ev {
            Event::Response { txn, body, .. } => {
                let Some(o) = self.out.remove(&txn) else {
                    return;
                };
                let ok = self.judge(e, &o, &body);
                self.meter.answered(o.sent, now, ok);
                self.in_flight -= 1;
                if let Some(c) = e.client(o.slot) {
                    c.busy -= 1;
                }
            }
            Event::TransactionFailed { txn, .. } => {
                if let Some(o) = self.out.remove(&txn) {
                    self.meter.failed(now);
                    self.in_flight -= 1;
                    if let Some(c) = e.client(o.slot) {
                        c.busy -= 1;
                    }
                }
            }
            // The supernode delivers a routed payload to the receiving client.
            Event::Request { txn, body, .. } => {
                let ok = match signal::decode::<Message>(&body) {
                    Ok(Message::Deliver { from, payload }) => {
                        self.delivery_ok(e, slot, from, &payload)
                    }
                    _ => false,
                };
                let resp = if ok {
                    Response::Ok
                } else {
                    self.meter.invalid_outside += 1;
                    Response::Error {
                        code: 400,
                        reason: "unexpected delivery".into(),
                    }
                };
                e.respond(now, slot, txn, &resp);
            }
            Event::Closed { .. } | Event::HandshakeFailed { .. } => {
                if let Some(c) = e.client(slot) {
                    c.ready = false;
                }
                self.meter.failed(now);
            }
            _ => {}
        }
    }

    fn tick(&mut self, e: &mut Engine, now: Instant) {
        self.meter.mark(e, now, &self.pids);
        for (seq, ok, at) in std::mem::take(&mut e.echoed) {
            match self.echo_sent.remove(&seq) {
                Some(sent) => {
                    self.meter.answered(sent, at, ok);
                    self.in_flight -= 1;
                }
                None => e.stats.unmatched += 1,
            }
        }
        if now >= self.stop {
            return;
        }
        match self.pace {
            Pace::Closed(w) => while self.in_flight < w && self.issue(e, now) {},
            Pace::Open(rate) => {
                let due = (now.duration_since(self.begun).as_secs_f64() * rate) as u64 + 1;
                while self.issued < due {
                    self.issued += 1;
                    if !self.issue(e, now) && self.meter.inside(now) {
                        self.meter.r.behind += 1;
                    }
                }
            }
        }
    }

    fn finished(&self, now: Instant) -> bool {
        (now >= self.stop && self.in_flight == 0) || now >= self.deadline
    }
}

impl Requests {
    /// A delivery to client `slot`: from the sender paired with it, with a payload in flight.
    fn delivery_ok(&mut self, e: &mut Engine, slot: usize, from: UserId, payload: &[u8]) -> bool {
        if payload.len() != 16 || payload[..8] != self.route_salt {
            return false;
        }
        let seq = u64::from_be_bytes(payload[8..].try_into().expect("8 bytes"));
        let Some(k) = self.receivers.iter().position(|r| *r == slot) else {
            return false;
        };
        let sender = e.client(self.senders[k]).map(|c| c.user);
        match self.routes.get_mut(&seq) {
            Some(seen) if !*seen && sender == Some(from) => {
                *seen = true;
                true
            }
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------- run

fn node_of(entry: &BootstrapEntry) -> anyhow::Result<(NodeKey, SocketAddr)> {
    let ip: IpAddr = entry
        .host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .with_context(|| format!("{}: give the node's IP address", entry.host))?;
    Ok((entry.key, SocketAddr::new(ip, entry.port)))
}

fn run_phases(args: &RunArgs) -> anyhow::Result<RunReport> {
    ensure!(
        args.clients >= 2 && args.window >= 1,
        "--clients must be at least 2"
    );
    let node = node_of(&args.node)?;
    let mut e = Engine::new(&args.sources, vec![node], args.echo)?;
    let pids = args.sources.server_pid.clone();
    let clients = setup_clients(&mut e, args.clients, |_| 0)?;
    let mut phases = HashMap::new();
    let mut outside = 0;
    let mut invalid_total = 0;
    let mut keep = |name: &str, (r, o): (PhaseReport, u64)| {
        outside += o;
        invalid_total += r.invalid + o;
        phases.insert(name.to_string(), r);
    };
    for phase in &args.phases {
        let now = Instant::now();
        match phase {
            Phase::Register => {
                let pool = (0..args.register_pool)
                    .map(|_| make_user(node.0.id))
                    .collect();
                // Making the pool took a while: the phase starts now.
                let mut w = NewSessions::new(
                    Instant::now(),
                    args.warmup,
                    args.duration,
                    args.register_window,
                );
                w.pids = pids.clone();
                w.pool = pool;
                drive(&mut e, &mut w);
                if w.made_late > 0 {
                    eprintln!(
                        "sn-load: the identity pool ran out; {} made during the phase",
                        w.made_late
                    );
                }
                keep("register", w.meter.report());
            }
            Phase::Echo => {
                let Some(pid) = args.echo_pid else {
                    bail!("the echo phase needs --echo and --echo-pid");
                };
                ensure!(args.echo.is_some(), "the echo phase needs --echo");
                let mut w = Requests::new(
                    now,
                    Phase::Echo,
                    Pace::Closed(args.window),
                    args.warmup,
                    args.duration,
                    &clients,
                    vec![pid],
                );
                drive(&mut e, &mut w);
                keep("echo", w.meter.report());
            }
            kind => {
                let mut w = Requests::new(
                    now,
                    *kind,
                    Pace::Closed(args.window),
                    args.warmup,
                    args.duration,
                    &clients,
                    pids.clone(),
                );
                drive(&mut e, &mut w);
                let (r, o) = w.meter.report();
                let max = r.valid_per_s;
                let name = format!("{kind:?}").to_lowercase();
                keep(&name, (r, o));
                if *kind == Phase::Route {
                    let rate = (max * args.route_load).max(1.0);
                    let mut w = Requests::new(
                        Instant::now(),
                        Phase::Route,
                        Pace::Open(rate),
                        args.warmup,
                        args.duration,
                        &clients,
                        pids.clone(),
                    );
                    drive(&mut e, &mut w);
                    let (mut r, o) = w.meter.report();
                    r.offered_rate = Some(rate);
                    keep("route_at_load", (r, o));
                }
            }
        }
    }
    Ok(RunReport {
        node: args.node.to_string(),
        clients: args.clients,
        sources: e.socks.len(),
        window: args.window,
        all_valid: invalid_total == 0 && e.stats.unmatched == 0,
        invalid_outside_windows: outside,
        phases,
        unmatched: e.stats.unmatched,
        send_dropped: e.stats.send_dropped,
    })
}

// ---------------------------------------------------------------------------------- million

fn million(args: &MillionArgs) -> anyhow::Result<MillionReport> {
    let nodes: Vec<(NodeKey, SocketAddr)> =
        args.nodes.iter().map(node_of).collect::<Result<_, _>>()?;
    let n = nodes.len();
    let mut e = Engine::new(&args.sources, nodes, None)?;
    let t0 = Instant::now();
    let cpu0 = CpuMark::take(&args.sources.server_pid);
    let mut w = NewSessions::new(t0, Duration::ZERO, args.limit, args.window);
    w.total = Some(args.count);
    w.progress = Some((t0, 0));
    drive(&mut e, &mut w);
    let cpu1 = CpuMark::take(&args.sources.server_pid);
    let seconds = t0.elapsed().as_secs_f64();
    let (retransmits, cookies) = e.session_totals();
    Ok(MillionReport {
        requested: args.count,
        registered: w.done,
        registered_per_node: (0..n)
            .map(|k| w.done_per_node.get(k).copied().unwrap_or(0))
            .collect(),
        failed: w.failed,
        invalid: w.invalid,
        seconds,
        per_s: w.done as f64 / seconds,
        gen_cpu_s: cpu1.own - cpu0.own,
        server_cpu_s: cpu0.servers.zip(cpu1.servers).map(|(a, b)| b - a),
        cookies,
        retransmits,
        sources: e.socks.len(),
    })
}

// ---------------------------------------------------------------------------------- presence

/// A watched user's toggling.
struct Watched {
    slot: usize,
    /// The state the user was last given, and when (None: waiting to change again).
    changed: Option<(bool, Instant)>,
    /// Whether the user is online now (as last set).
    online: bool,
    /// When to make the next change.
    next: Instant,
    /// Waiting for the new session before registering (going online).
    connecting: bool,
}

struct Presence {
    users: Vec<Watched>,
    by_slot: HashMap<usize, usize>,
    by_watcher: HashMap<usize, usize>,
    register: HashMap<TransactionId, usize>,
    bg: Requests,
    window: (Instant, Instant),
    pause: Duration,
    give_up: Duration,
    changes: u64,
    seen: u64,
    missed: u64,
    invalid: u64,
    out_of_order: u64,
    duplicate: u64,
    lat: Vec<(bool, u64)>,
}

impl Workload for Presence {
    fn event(&mut self, e: &mut Engine, now: Instant, slot: usize, ev: Event) {
        if let Some(&k) = self.by_slot.get(&slot) {
            match ev {
                Event::Connected { .. } => {
                    self.users[k].connecting = false;
                    let Some(node) = e.client(slot).map(|c| c.node) else {
                        return;
                    };
                    let node_id = e.nodes[node].0.id;
                    let Some(c) = e.client(slot) else { return };
                    // A new registration is a new signed record, as the agent makes it.
                    let signed = Timestamp::now();
                    c.seq += 1;
                    c.record =
                        registration_record(&Identity::from_seed(&c.seed), c.seq, node_id, signed);
                    c.expires_at = signed.plus(RECORD_LIFETIME).0;
                    let req = Request::CRegister {
                        record: c.record.clone(),
                    };
                    // Going online: the change is the registration.
                    if let Some(t) = e.request(now, slot, &req) {
                        self.register.insert(t, k);
                        let u = &mut self.users[k];
                        u.changed = Some((true, now));
                        u.online = true;
                        if self.window.0 <= now && now < self.window.1 {
                            self.changes += 1;
                        }
                    }
                }
                Event::Response { txn, body, .. } => {
                    if let Some(k) = self.register.remove(&txn) {
                        let c = e.client(self.users[k].slot).expect("live");
                        if registered_ok(&body, c.expires_at) {
                            c.ready = true;
                        } else {
                            self.invalid += 1;
                        }
                    }
                }
                Event::HandshakeFailed { .. } | Event::TransactionFailed { .. } => {
                    self.invalid += 1;
                }
                _ => {}
            }
            return;
        }
        if let Some(&k) = self.by_watcher.get(&slot) {
            if let Event::Message { body, .. } = &ev
                && let Ok(Message::Presence { user, online, .. }) = signal::decode::<Message>(body)
            {
                let u = &mut self.users[k];
                let watched = e.client(u.slot).map(|c| c.user);
                if watched != Some(user) {
                    self.invalid += 1;
                    return;
                }
                match u.changed {
                    Some((state, at)) if state == online => {
                        if self.window.0 <= at && at < self.window.1 {
                            self.seen += 1;
                            self.lat.push((
                                online,
                                now.saturating_duration_since(at).as_nanos() as u64,
                            ));
                        }
                        u.changed = None;
                        u.next = now + self.pause;
                    }
                    Some(_) => self.out_of_order += 1,
                    None if online == u.online => self.duplicate += 1,
                    None => self.out_of_order += 1,
                }
            }
            return;
        }
        self.bg.event(e, now, slot, ev);
    }

    fn tick(&mut self, e: &mut Engine, now: Instant) {
        self.bg.tick(e, now);
        if now >= self.window.1 {
            return;
        }
        for k in 0..self.users.len() {
            let u = &mut self.users[k];
            if let Some((_, at)) = u.changed
                && now.duration_since(at) >= self.give_up
            {
                if self.window.0 <= at && at < self.window.1 {
                    self.missed += 1;
                }
                u.changed = None;
                u.next = now + self.pause;
            }
            if u.changed.is_some() || u.connecting || now < u.next {
                continue;
            }
            let slot = u.slot;
            if u.online {
                // Going offline: the change is the polite close.
                u.online = false;
                u.changed = Some((false, now));
                if self.window.0 <= now && now < self.window.1 {
                    self.changes += 1;
                }
                e.close(now, slot);
            } else {
                u.connecting = true;
                e.connect(now, slot);
            }
        }
    }

    fn finished(&self, now: Instant) -> bool {
        let quiet = self.users.iter().all(|u| u.changed.is_none());
        (now >= self.window.1 && (quiet || now >= self.window.1 + self.give_up))
            && self.bg.finished(now)
    }
}

/// A workload that only waits (the engine keeps answering).
struct Wait(Instant);

impl Workload for Wait {
    fn event(&mut self, _: &mut Engine, _: Instant, _: usize, _: Event) {}
    fn tick(&mut self, _: &mut Engine, _: Instant) {}
    fn finished(&self, now: Instant) -> bool {
        now >= self.0
    }
}

/// Sends one request from each (client, request) and waits for every answer to be `Ok`.
struct AskAll {
    todo: Vec<(usize, Request)>,
    pending: HashMap<TransactionId, ()>,
    bad: u64,
    deadline: Instant,
}

impl Workload for AskAll {
    fn event(&mut self, _: &mut Engine, _: Instant, _: usize, ev: Event) {
        match ev {
            Event::Response { txn, body, .. }
                if self.pending.remove(&txn).is_some()
                    && !matches!(signal::decode::<Response>(&body), Ok(Response::Ok)) =>
            {
                self.bad += 1;
            }
            Event::TransactionFailed { txn, .. } if self.pending.remove(&txn).is_some() => {
                self.bad += 1;
            }
            _ => {}
        }
    }
    fn tick(&mut self, e: &mut Engine, now: Instant) {
        for (slot, req) in std::mem::take(&mut self.todo) {
            match e.request(now, slot, &req) {
                Some(t) => {
                    self.pending.insert(t, ());
                }
                None => self.bad += 1,
            }
        }
    }
    fn finished(&self, now: Instant) -> bool {
        (self.todo.is_empty() && self.pending.is_empty()) || now >= self.deadline
    }
}

fn presence(args: &PresenceArgs) -> anyhow::Result<PresenceReport> {
    let n = args.nodes.len();
    ensure!(n >= 2, "presence needs at least two supernodes");
    ensure!(args.users >= 1, "--users must be at least 1");
    let nodes: Vec<(NodeKey, SocketAddr)> =
        args.nodes.iter().map(node_of).collect::<Result<_, _>>()?;
    let mut e = Engine::new(&args.sources, nodes.clone(), None)?;
    // Watched user k on supernode k % n, its watcher on the next one: always another supernode.
    let watched = setup_clients(&mut e, args.users, |k| k % n)?;
    let watchers = setup_clients(&mut e, args.users, |k| (k + 1) % n)?;
    let bg = setup_clients(&mut e, args.bg_clients.max(1), |k| k % n)?;
    let mut ask = AskAll {
        todo: watched
            .iter()
            .zip(&watchers)
            .map(|(u, w)| {
                let user = e.client(*u).expect("live").user;
                (*w, Request::CWatch(user))
            })
            .collect(),
        pending: HashMap::new(),
        bad: 0,
        deadline: Instant::now() + Duration::from_secs(30),
    };
    drive(&mut e, &mut ask);
    ensure!(ask.bad == 0, "{} watches were refused", ask.bad);
    drive(&mut e, &mut Wait(Instant::now() + args.settle));

    let now = Instant::now();
    // Background: lookups of any registered user from clients on every supernode (so most
    // cross supernodes), each judged against the supernode its target registered on.
    let mut bgw = Requests::new(
        now,
        Phase::Lookup,
        Pace::Open(args.bg_rate as f64),
        args.warmup,
        args.duration,
        &bg,
        args.sources.server_pid.clone(),
    );
    bgw.targets = bg.clone();
    let start = now + args.warmup;
    let end = start + args.duration;
    let mut p = Presence {
        users: watched
            .iter()
            .zip(&watchers)
            .enumerate()
            .map(|(k, (&slot, _))| Watched {
                slot,
                changed: None,
                online: true,
                // Spread the first changes over the warm-up.
                next: now + args.warmup.mul_f64(k as f64 / args.users as f64),
                connecting: false,
            })
            .collect(),
        by_slot: watched.iter().enumerate().map(|(k, s)| (*s, k)).collect(),
        by_watcher: watchers.iter().enumerate().map(|(k, s)| (*s, k)).collect(),
        register: HashMap::new(),
        bg: bgw,
        window: (start, end),
        pause: args.pause,
        give_up: args.give_up,
        changes: 0,
        seen: 0,
        missed: 0,
        invalid: 0,
        out_of_order: 0,
        duplicate: 0,
        lat: Vec::new(),
    };
    drive(&mut e, &mut p);
    let (background, _) = std::mem::replace(
        &mut p.bg.meter,
        Meter::new(Instant::now(), Duration::ZERO, Duration::ZERO),
    )
    .report();
    let all: Vec<u64> = p.lat.iter().map(|(_, ns)| *ns).collect();
    let off: Vec<u64> = p
        .lat
        .iter()
        .filter(|(o, _)| !o)
        .map(|(_, ns)| *ns)
        .collect();
    let on: Vec<u64> = p
        .lat
        .iter()
        .filter(|(o, _)| *o)
        .map(|(_, ns)| *ns)
        .collect();
    Ok(PresenceReport {
        nodes: n,
        users: args.users,
        changes: p.changes,
        seen: p.seen,
        missed: p.missed,
        invalid: p.invalid,
        out_of_order: p.out_of_order,
        duplicate: p.duplicate,
        latency_us: Latency::of(all),
        offline_latency_us: Latency::of(off),
        online_latency_us: Latency::of(on),
        background,
        window_s: args.duration.as_secs_f64(),
    })
}
