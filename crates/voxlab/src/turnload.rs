//! `voxlab turn-load`: a TURN relay load generator that plays both ends, the clients and their
//! peers, and checks every packet that comes out of the relay.
//!
//! It creates `--allocations` allocations on one TURN server over UDP, one client socket each
//! (every allocation needs its own 5-tuple), binds channel 0x4000 of each to one of a few peer
//! sockets (`--peer-sockets`, opened in `--peer-netns` so the relayed traffic really leaves the
//! server's host: relays refuse their own host as a peer), checks that one packet passes each
//! way, and then sends fixed-size ChannelData (`--size`, header included) from the clients
//! toward the peers and plain UDP from the peers toward the relayed addresses, at
//! `--rate` packets per second per allocation and direction or as fast as it can (`--rate 0`).
//! With `--path direct` the same sockets and schedule run without a relay: the path's own
//! latency, to subtract from the relayed one.
//!
//! Every packet carries a run salt, its allocation, direction and sequence number, its send
//! time and a filler pattern. A packet counts as *valid* only if it arrives on the socket it was
//! meant for, from the address it must come from (the allocation's relayed address at the peer;
//! the server, as ChannelData on the bound channel with the right length, at the client), with
//! its payload intact, and for the first time. The result is one JSON object (see [`Report`]).
//!
//! With `--server-pid` it also reads the server's CPU time (utime + stime of the whole process,
//! every thread, from `/proc/PID/stat`) over the measured window, and its resident memory
//! (`VmRSS`) before the first allocation and after the last one was set up and carried its check
//! packets: the memory an allocation costs.
//!
//! # Layout
//!
//! - [`TurnLoadArgs`]: the flags.
//! - [`Setup`]: the sans-IO allocation handshakes (Allocate, 401/438 and retry, ChannelBind,
//!   release), with a nonce cache per source address as RFC 8489 §9.2.3 allows.
//! - [`stamp`]/[`read_stamp`] and [`Flow`]: the packet format and the per-direction ledger.
//! - [`run`]: the I/O driver: one thread, non-blocking sockets, `sendmmsg`/`recvmmsg` batches and
//!   an `epoll` set polled without sleeping (it is meant to own a core, like `voxlab stun-load`).
//!
//! # Pacing
//!
//! At a fixed rate, packet `k` of a direction is due at `k / (rate × allocations)` seconds and
//! comes from allocation `k mod allocations`: each allocation sends evenly spaced packets and
//! the allocations are staggered, as independent calls are. A packet goes out as soon as the
//! loop sees it due; `behind` counts those it never got to (then the run measured the
//! generator). With `--rate 0` the loop alternates one `sendmmsg` batch per direction with
//! draining what arrived.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Serialize;

use super::poller::Poller;
use voxmesh::net::batch::{BATCH, RecvBatch, SendBatch};
use voxmesh::stun::{
    Class, IntegrityCheck, Message, MessageBuilder, TransactionId, attr, long_term_key, method,
};
use voxmesh::turn::channel;

/// Which way packets go through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    Both,
    ToPeer,
    ToClient,
}

/// Through the TURN server, or straight between the same sockets (the path's own cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    Relay,
    Direct,
}

/// Flags of `voxlab turn-load`.
#[derive(Debug, Clone, clap::Args)]
pub struct TurnLoadArgs {
    /// TURN server (UDP); lab (198.51.100.0/24) or loopback addresses only.
    #[arg(long, value_name = "ADDR")]
    pub server: Option<SocketAddr>,

    /// Long-term credentials.
    #[arg(long, value_name = "USER:PASSWORD", default_value = "bench:bench")]
    pub credentials: String,

    /// Allocations to create, one client socket each.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub allocations: usize,

    /// Address the client sockets bind to; repeat to spread them over several (in turn).
    #[arg(long = "client-ip", value_name = "IP", required = true)]
    pub client_ips: Vec<Ipv4Addr>,

    /// Address the peer sockets bind to.
    #[arg(long = "peer-ip", value_name = "IP")]
    pub peer_ip: Ipv4Addr,

    /// Network namespace to open the peer sockets in (default: the generator's own).
    #[arg(long = "peer-netns", value_name = "NAME")]
    pub peer_netns: Option<String>,

    /// Peer sockets; allocations are spread over them in contiguous blocks.
    #[arg(long = "peer-sockets", value_name = "N", default_value_t = 16)]
    pub peer_sockets: usize,

    /// Through the relay, or straight between the same sockets (baseline of the path).
    #[arg(long, value_enum, default_value = "relay")]
    pub path: PathKind,

    /// Which directions carry load (the check packets always go both ways).
    #[arg(long, value_enum, default_value = "both")]
    pub direction: Direction,

    /// Packets per second per allocation and direction, evenly spaced; 0 for as fast as possible.
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub rate: u64,

    /// Bytes of each ChannelData message, its 4-byte header included.
    #[arg(long, value_name = "BYTES", default_value_t = 120)]
    pub size: usize,

    /// How long to send (us, ms or s); 0 sets up, checks and measures memory only.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,

    /// How long to wait for packets after the last one was sent; missing ones are then lost.
    #[arg(long, value_name = "DUR", default_value = "500ms", value_parser = parse_duration)]
    pub grace: Duration,

    /// The server's process: CPU over the measured window and memory per allocation.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,

    /// Allocation handshakes in flight at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub window: usize,

    /// Give up setting up allocations after this long.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
    pub setup_timeout: Duration,
}

/// Largest `--allocations` (one socket each; the server needs one relayed socket each too).
const MAX_ALLOCATIONS: usize = 20_000;
/// Largest `--peer-sockets`.
const MAX_PEERS: usize = 1024;
/// Longest `--duration`, `--grace` and `--setup-timeout`.
const MAX_DURATION: Duration = Duration::from_secs(600);
/// Packets per direction the ledger tracks (5 bytes each); sending stops there.
const MAX_PACKETS: u64 = 20_000_000;
/// The channel every allocation binds (each allocation has its own channel space).
pub const CHANNEL: u16 = 0x4000;
/// Requested allocation lifetime.
const LIFETIME_S: u32 = 600;
/// Handshake retransmission: a fixed timeout (the lab has no real RTT to learn) and a bound.
const RTO: Duration = Duration::from_secs(1);
const MAX_TRIES: u8 = 4;
/// Re-authentications (401/438 with a new nonce) allowed per request.
const MAX_REAUTH: u8 = 3;
/// How long the check packets may take.
const CHECK_WAIT: Duration = Duration::from_secs(2);
/// How long releasing the allocations at the end may take.
const RELEASE_WAIT: Duration = Duration::from_secs(2);
/// Receive batches taken from one readable socket before looking at the others and the clock.
const DRAIN_ROUNDS: usize = 4;
/// Most packets sent per direction between two looks at the receive side.
const ROUND: u64 = BATCH as u64;
/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 1024;

fn parse_duration(s: &str) -> Result<Duration, String> {
    super::poller::parse_duration_at_most(s, MAX_DURATION)
}

/// Lab and loopback only: TEST-NET-2, where `scripts/lab` lives, or 127.0.0.0/8.
fn lab_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.octets()[..3] == [198, 51, 100],
        IpAddr::V6(_) => false,
    }
}

// ------------------------------------------------------------------------------- packets

/// Bytes of the stamp at the start of every payload; the rest is filler.
pub const STAMP: usize = 24;
/// Tag bits: the packet went peer → client; it is a check packet, not load.
const TO_CLIENT: u64 = 1 << 63;
const CHECK: u64 = 1 << 62;
const SEQ_MASK: u64 = CHECK - 1;

/// What a payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub alloc: u32,
    pub to_client: bool,
    pub check: bool,
    pub seq: u64,
    pub sent_ns: u64,
}

fn filler(salt: [u8; 4], alloc: u32, tag: u64, j: usize) -> u8 {
    salt[j & 3] ^ (alloc as u8) ^ (tag as u8) ^ (j as u8).wrapping_mul(31)
}

/// Writes a payload of `out.len()` bytes (at least [`STAMP`]).
pub fn stamp(out: &mut [u8], salt: [u8; 4], s: Stamp) {
    let tag = s.seq | if s.to_client { TO_CLIENT } else { 0 } | if s.check { CHECK } else { 0 };
    out[0..4].copy_from_slice(&salt);
    out[4..8].copy_from_slice(&s.alloc.to_be_bytes());
    out[8..16].copy_from_slice(&tag.to_be_bytes());
    out[16..24].copy_from_slice(&s.sent_ns.to_be_bytes());
    for (j, b) in out[STAMP..].iter_mut().enumerate() {
        *b = filler(salt, s.alloc, tag, j);
    }
}

/// Reads a payload written by [`stamp`] with this `salt`; `None` if it is not one, or damaged.
pub fn read_stamp(data: &[u8], salt: [u8; 4]) -> Option<Stamp> {
    if data.len() < STAMP || data[0..4] != salt {
        return None;
    }
    let alloc = u32::from_be_bytes(data[4..8].try_into().ok()?);
    let tag = u64::from_be_bytes(data[8..16].try_into().ok()?);
    let sent_ns = u64::from_be_bytes(data[16..24].try_into().ok()?);
    if !data[STAMP..]
        .iter()
        .enumerate()
        .all(|(j, b)| *b == filler(salt, alloc, tag, j))
    {
        return None;
    }
    Some(Stamp {
        alloc,
        to_client: tag & TO_CLIENT != 0,
        check: tag & CHECK != 0,
        seq: tag & SEQ_MASK,
        sent_ns,
    })
}

// ------------------------------------------------------------------------------- ledger

const SENT: u8 = 0;
const GOT: u8 = 1;
const REFUSED: u8 = 2;

/// How the ledger judged one arriving packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    /// It arrived where or from where it should not have, or twice, or was never sent.
    Invalid,
    Duplicate,
}

/// The ledger of one direction: what left when, and what came back.
#[derive(Debug, Default)]
pub struct Flow {
    /// Per sequence number: [`SENT`], [`GOT`] or [`REFUSED`].
    state: Vec<u8>,
    /// Latencies of valid packets in ns (saturating at about 4.3 s).
    latencies: Vec<u32>,
    refused: u64,
    /// Sent packets that arrived (valid or not).
    arrived: u64,
    valid: u64,
    invalid: u64,
    duplicate: u64,
}

impl Flow {
    /// Packets attempted so far; the next sequence number.
    pub fn attempted(&self) -> u64 {
        self.state.len() as u64
    }

    /// Takes the next sequence number; `None` once `MAX_PACKETS` were sent.
    pub fn take_seq(&mut self) -> Option<u64> {
        if self.attempted() >= MAX_PACKETS {
            return None;
        }
        self.state.push(SENT);
        Some(self.attempted() - 1)
    }

    /// The kernel refused packet `seq`: it never left, so it cannot be lost.
    pub fn refuse(&mut self, seq: u64) {
        if let Some(s) = self.state.get_mut(seq as usize)
            && *s == SENT
        {
            *s = REFUSED;
            self.refused += 1;
        }
    }

    /// Packet `seq` arrived after `latency_ns`; `right_place` says whether the socket, source
    /// and framing were the ones it had to have.
    pub fn arrived(&mut self, seq: u64, latency_ns: u64, right_place: bool) -> Verdict {
        let Some(s) = self.state.get_mut(seq as usize) else {
            self.invalid += 1;
            return Verdict::Invalid;
        };
        match *s {
            GOT => {
                self.duplicate += 1;
                Verdict::Duplicate
            }
            REFUSED => {
                self.invalid += 1;
                Verdict::Invalid
            }
            _ => {
                *s = GOT;
                self.arrived += 1;
                if right_place {
                    self.valid += 1;
                    self.latencies.push(latency_ns.min(u32::MAX as u64) as u32);
                    Verdict::Valid
                } else {
                    self.invalid += 1;
                    Verdict::Invalid
                }
            }
        }
    }

    fn sent(&self) -> u64 {
        self.attempted() - self.refused
    }

    fn done(&self) -> bool {
        self.arrived == self.sent()
    }

    fn report(&mut self, offered: u64) -> FlowReport {
        let sent = self.sent();
        let lost = sent.saturating_sub(self.arrived);
        FlowReport {
            offered,
            sent,
            send_failed: self.refused,
            behind: offered.saturating_sub(self.attempted()),
            valid: self.valid,
            invalid: self.invalid,
            duplicate: self.duplicate,
            lost,
            loss_fraction: if sent > 0 {
                lost as f64 / sent as f64
            } else {
                0.0
            },
            latency_us: latency(&mut self.latencies),
        }
    }
}

fn latency(ns: &mut [u32]) -> Latency {
    ns.sort_unstable();
    let pct = |p: f64| -> f64 {
        if ns.is_empty() {
            return 0.0;
        }
        ns[((ns.len() - 1) as f64 * p).round() as usize] as f64 / 1e3
    };
    Latency {
        p50: pct(0.50),
        p99: pct(0.99),
        max: ns.last().map_or(0.0, |&l| l as f64 / 1e3),
    }
}

// ------------------------------------------------------------------------------- setup

/// Where one allocation's handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Idle,
    Allocating,
    Binding,
    Ready,
    /// The server's error code, or 0 for no answer.
    Failed(u16),
    Releasing,
    Released,
}

/// What the driver does after a handshake step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing (not ours, stale, or dropped as invalid).
    Ignore,
    /// Send [`Setup::request`] of this allocation (a new request).
    Send,
    /// The allocation is ready (or released).
    Done,
    /// The allocation failed.
    Failed,
}

#[derive(Debug)]
struct Handshake {
    stage: Stage,
    /// Counts this allocation's requests; part of the transaction ID.
    txn: u32,
    tries: u8,
    reauths: u8,
    /// The request in flight, kept for retransmission.
    bytes: Vec<u8>,
    /// Whether that request carried MESSAGE-INTEGRITY (then the answer must too).
    signed: bool,
    source: IpAddr,
    /// The nonce the server last gave this allocation (servers may keep one per 5-tuple).
    nonce: Option<String>,
    peer: SocketAddr,
    relayed: Option<SocketAddr>,
}

/// Counters of the setup phase.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SetupReport {
    pub seconds: f64,
    pub requests: u64,
    pub retransmits: u64,
    /// 401 and 438 answers (nonce learnt, request repeated).
    pub challenges: u64,
    /// Responses that failed a check (integrity, fingerprint, missing attributes).
    pub invalid_responses: u64,
    pub failed: u64,
    /// Error codes that failed an allocation (0: no answer).
    pub errors: BTreeMap<u16, u64>,
}

/// The allocation handshakes of a run, sans IO. Transaction IDs are `salt || allocation ||
/// request counter`, so a response finds its allocation without a table and a stale or foreign
/// one matches nothing.
pub struct Setup {
    salt: [u8; 4],
    user: String,
    password: String,
    realm: Option<String>,
    key: Option<[u8; 16]>,
    /// The last nonce the server gave each source address (RFC 8489 §9.2.3: a client may reuse
    /// it; a server that wants one per 5-tuple answers 401/438 and we learn the new one).
    nonces: HashMap<IpAddr, String>,
    /// Source addresses with an unsigned request out and no nonce yet: further allocations from
    /// them wait, so that one 401 teaches all of them (a server may rate-limit its 401s).
    probing: HashSet<IpAddr>,
    hs: Vec<Handshake>,
    pub report: SetupReport,
}

impl Setup {
    /// `ends[a]` is allocation `a`'s (client source address, peer address).
    pub fn new(salt: [u8; 4], user: &str, password: &str, ends: &[(IpAddr, SocketAddr)]) -> Setup {
        Setup {
            salt,
            user: user.into(),
            password: password.into(),
            realm: None,
            key: None,
            nonces: HashMap::new(),
            probing: HashSet::new(),
            hs: ends
                .iter()
                .map(|&(source, peer)| Handshake {
                    stage: Stage::Idle,
                    txn: 0,
                    tries: 0,
                    reauths: 0,
                    bytes: Vec::new(),
                    signed: false,
                    source,
                    nonce: None,
                    peer,
                    relayed: None,
                })
                .collect(),
            report: SetupReport::default(),
        }
    }

    pub fn stage(&self, a: usize) -> Stage {
        self.hs[a].stage
    }

    pub fn relayed(&self, a: usize) -> Option<SocketAddr> {
        self.hs[a].relayed
    }

    /// The request in flight for allocation `a` and its counter (to match its timer).
    pub fn request(&self, a: usize) -> (&[u8], u32) {
        (&self.hs[a].bytes, self.hs[a].txn)
    }

    fn txid(&self, a: usize, txn: u32) -> TransactionId {
        let mut id = [0u8; 12];
        id[..4].copy_from_slice(&self.salt);
        id[4..8].copy_from_slice(&(a as u32).to_be_bytes());
        id[8..].copy_from_slice(&txn.to_be_bytes());
        TransactionId(id)
    }

    /// Whether allocation `a` may start now: its source address has a nonce, or nobody is
    /// asking for one.
    pub fn can_begin(&self, a: usize) -> bool {
        let s = self.hs[a].source;
        self.nonces.contains_key(&s) || !self.probing.contains(&s)
    }

    /// Starts allocation `a`: an Allocate to send.
    pub fn begin(&mut self, a: usize) -> Step {
        self.hs[a].reauths = 0;
        self.build(a, Stage::Allocating)
    }

    /// Starts releasing a ready allocation `a` (Refresh with LIFETIME 0).
    pub fn release(&mut self, a: usize) -> Step {
        if self.hs[a].stage != Stage::Ready {
            return Step::Ignore;
        }
        self.hs[a].reauths = 0;
        self.build(a, Stage::Releasing)
    }

    /// Writes the request for `stage` into allocation `a`'s buffer, with a new transaction ID.
    fn build(&mut self, a: usize, stage: Stage) -> Step {
        let txid = self.txid(a, self.hs[a].txn.wrapping_add(1));
        let h = &mut self.hs[a];
        h.txn = h.txn.wrapping_add(1);
        h.tries = 1;
        h.stage = stage;
        let m = match stage {
            Stage::Allocating => method::ALLOCATE,
            Stage::Binding => method::CHANNEL_BIND,
            _ => method::REFRESH,
        };
        let mut b = MessageBuilder::new(&mut h.bytes, m, Class::Request, txid);
        match stage {
            Stage::Allocating => {
                b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24);
                b.u32_attr(attr::LIFETIME, LIFETIME_S);
            }
            Stage::Binding => {
                b.attr(
                    attr::CHANNEL_NUMBER,
                    &[(CHANNEL >> 8) as u8, CHANNEL as u8, 0, 0],
                );
                b.xor_address(attr::XOR_PEER_ADDRESS, h.peer);
            }
            _ => {
                b.u32_attr(attr::LIFETIME, 0);
            }
        }
        h.signed = false;
        let nonce = h.nonce.as_ref().or_else(|| self.nonces.get(&h.source));
        if let (Some(realm), Some(key), Some(nonce)) = (&self.realm, &self.key, nonce) {
            b.attr(attr::USERNAME, self.user.as_bytes());
            b.attr(attr::REALM, realm.as_bytes());
            b.attr(attr::NONCE, nonce.as_bytes());
            b.message_integrity(key);
            h.signed = true;
        } else {
            self.probing.insert(h.source);
        }
        b.fingerprint();
        self.report.requests += 1;
        Step::Send
    }

    /// The timer of request `txn` of allocation `a` fired: `true` to send it again, else it
    /// was answered already or has now failed (see [`Setup::stage`]).
    pub fn timeout(&mut self, a: usize, txn: u32) -> bool {
        let h = &mut self.hs[a];
        if h.txn != txn
            || !matches!(
                h.stage,
                Stage::Allocating | Stage::Binding | Stage::Releasing
            )
        {
            return false;
        }
        if h.tries >= MAX_TRIES {
            self.fail(a, 0);
            return false;
        }
        h.tries += 1;
        self.report.retransmits += 1;
        true
    }

    fn fail(&mut self, a: usize, code: u16) {
        let h = &mut self.hs[a];
        self.probing.remove(&h.source);
        // A release that fails leaves the allocation to expire; it was ready all the same.
        h.stage = if h.stage == Stage::Releasing {
            Stage::Ready
        } else {
            Stage::Failed(code)
        };
        if h.stage != Stage::Ready {
            self.report.failed += 1;
            *self.report.errors.entry(code).or_default() += 1;
        }
    }

    /// A datagram from the server arrived on allocation `a`'s socket.
    pub fn response(&mut self, a: usize, data: &[u8]) -> Step {
        let Ok(msg) = Message::parse(data) else {
            return Step::Ignore;
        };
        let h = &self.hs[a];
        if msg.transaction_id() != self.txid(a, h.txn)
            || !matches!(
                h.stage,
                Stage::Allocating | Stage::Binding | Stage::Releasing
            )
        {
            return Step::Ignore;
        }
        if msg.check_fingerprint() == IntegrityCheck::Invalid {
            self.report.invalid_responses += 1;
            return Step::Ignore;
        }
        let stage = h.stage;
        let want = match stage {
            Stage::Allocating => method::ALLOCATE,
            Stage::Binding => method::CHANNEL_BIND,
            _ => method::REFRESH,
        };
        if msg.method() != want {
            self.report.invalid_responses += 1;
            return Step::Ignore;
        }
        match msg.class() {
            Class::Success => {
                // An authenticated request's answer must be signed with the same key.
                let signed_ok = match self.key {
                    Some(key) if h.signed => msg.check_integrity(&key) == IntegrityCheck::Valid,
                    _ => true,
                };
                if !signed_ok {
                    self.report.invalid_responses += 1;
                    return Step::Ignore;
                }
                match stage {
                    Stage::Allocating => {
                        let Some(relayed) = msg.xor_address(attr::XOR_RELAYED_ADDRESS) else {
                            self.report.invalid_responses += 1;
                            return Step::Ignore;
                        };
                        self.hs[a].relayed = Some(relayed);
                        self.hs[a].reauths = 0;
                        self.build(a, Stage::Binding)
                    }
                    Stage::Binding => {
                        self.hs[a].stage = Stage::Ready;
                        Step::Done
                    }
                    _ => {
                        self.hs[a].stage = Stage::Released;
                        Step::Done
                    }
                }
            }
            Class::Error => {
                let code = msg.error_code().map_or(0, |(c, _)| c);
                if matches!(code, 401 | 438)
                    && let (Some(realm), Some(nonce)) =
                        (msg.text(attr::REALM), msg.text(attr::NONCE))
                {
                    self.report.challenges += 1;
                    if self.hs[a].reauths >= MAX_REAUTH {
                        self.fail(a, code);
                        return Step::Failed;
                    }
                    if self.realm.as_deref() != Some(realm) {
                        self.key = Some(long_term_key(&self.user, realm, &self.password));
                        self.realm = Some(realm.into());
                    }
                    self.nonces.insert(self.hs[a].source, nonce.into());
                    self.hs[a].nonce = Some(nonce.into());
                    self.probing.remove(&self.hs[a].source);
                    self.hs[a].reauths += 1;
                    return self.build(a, stage);
                }
                self.fail(a, code);
                if self.hs[a].stage == Stage::Ready {
                    Step::Done
                } else {
                    Step::Failed
                }
            }
            _ => Step::Ignore,
        }
    }
}

// ------------------------------------------------------------------------------- report

/// What one run observed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub server: Option<SocketAddr>,
    pub path: PathKind,
    pub direction: Direction,
    pub allocations_requested: usize,
    /// Allocations set up (allocated and channel bound).
    pub allocations: usize,
    pub setup: SetupReport,
    /// Allocations whose check packet arrived intact, per direction and both ways.
    pub checked_to_peer: usize,
    pub checked_to_client: usize,
    pub checked_both: usize,
    /// Packets per second per allocation and direction; `null` for as fast as possible.
    pub rate_per_allocation: Option<u64>,
    pub size: usize,
    /// From the first scheduled packet to the last.
    pub send_seconds: f64,
    /// From the first scheduled packet until everything arrived or the grace period ended: the
    /// window the server's CPU time is read over.
    pub window_seconds: f64,
    pub to_peer: FlowReport,
    pub to_client: FlowReport,
    /// Valid packets, both directions.
    pub relayed: u64,
    pub relayed_per_s: f64,
    /// Latency of valid packets, both directions together.
    pub latency_us: Latency,
    /// Datagrams that were not ours at all (wrong salt, damaged, unexpected framing).
    pub unmatched: u64,
    pub released: usize,
    pub server_process: Option<ServerReport>,
    pub client_sockets: usize,
    pub peer_sockets: usize,
}

/// One direction's counts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FlowReport {
    /// Packets the schedule called for (with `--rate 0`: those the loop tried to send).
    pub offered: u64,
    /// Packets the kernel accepted.
    pub sent: u64,
    /// Packets the kernel refused (our send buffer full, or an error).
    pub send_failed: u64,
    /// Packets the schedule called for that the loop never got to: the generator was too slow.
    pub behind: u64,
    /// Packets that arrived intact, where and from where they had to, once.
    pub valid: u64,
    /// Packets that arrived but failed a check (socket, source, framing).
    pub invalid: u64,
    /// Second and later copies.
    pub duplicate: u64,
    /// Sent and never arrived within the grace period.
    pub lost: u64,
    pub loss_fraction: f64,
    pub latency_us: Latency,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// The server process, as `/proc` saw it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServerReport {
    pub pid: u32,
    /// utime + stime of the whole process over the window.
    pub cpu_s: f64,
    /// `cpu_s` over the window: the share of one CPU the server used.
    pub cpu_utilisation: f64,
    pub relayed_per_cpu_s: Option<f64>,
    /// Every thread's CPU over the window (threads that ended during it are in `cpu_s` only).
    pub threads: Vec<ThreadCpu>,
    /// VmRSS before the first allocation, after setup and check packets, and at the end.
    pub rss_idle_kib: u64,
    pub rss_loaded_kib: u64,
    pub rss_end_kib: u64,
    /// (loaded − idle) / allocations.
    pub rss_per_allocation_bytes: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ThreadCpu {
    pub tid: u32,
    pub name: String,
    pub cpu_s: f64,
}

// ------------------------------------------------------------------------------- /proc

/// Clock ticks of utime + stime in a `/proc/.../stat` line (fields 14 and 15).
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

struct Watch {
    pid: u32,
    hz: f64,
}

impl Watch {
    fn new(pid: u32) -> anyhow::Result<Watch> {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        ensure!(hz > 0, "sysconf(_SC_CLK_TCK) failed");
        let w = Watch { pid, hz: hz as f64 };
        w.ticks()
            .with_context(|| format!("cannot read /proc/{pid}/stat (is --server-pid right?)"))?;
        Ok(w)
    }

    fn ticks(&self) -> anyhow::Result<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        stat_ticks(&s).context("unexpected /proc stat format")
    }

    fn threads(&self) -> BTreeMap<u32, (String, u64)> {
        let mut out = BTreeMap::new();
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return out;
        };
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let name = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if let Some(t) = stat_ticks(&stat) {
                out.insert(tid, (name.trim().to_string(), t));
            }
        }
        out
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc status")
    }
}

// ------------------------------------------------------------------------------- driver

/// The sockets and addresses of a run, and what is known about each allocation.
struct Rig {
    clients: Vec<UdpSocket>,
    client_addr: Vec<SocketAddr>,
    peers: Vec<UdpSocket>,
    peer_addr: Vec<SocketAddr>,
    /// Peer socket of each allocation.
    peer_of: Vec<usize>,
    /// Where each allocation's packets to the client go from a peer (its relayed address, or
    /// the client itself on the direct path); `None` until known.
    toward_client: Vec<Option<SocketAddr>>,
    server: Option<SocketAddr>,
    path: PathKind,
    salt: [u8; 4],
    size: usize,
    start: Instant,
}

impl Rig {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Where allocation `a`'s client sends: the server, or its peer on the direct path.
    fn toward_peer(&self, a: usize) -> SocketAddr {
        match self.path {
            PathKind::Relay => self.server.expect("relay path has a server"),
            PathKind::Direct => self.peer_addr[self.peer_of[a]],
        }
    }

    /// The client's datagram (ChannelData) for `s` into `out`.
    fn client_packet(&self, out: &mut Vec<u8>, s: Stamp) {
        out.clear();
        out.resize(self.size, 0);
        channel::write_header(out, CHANNEL, self.size - channel::HEADER);
        stamp(&mut out[channel::HEADER..], self.salt, s);
    }

    /// The peer's datagram for `s` into `out`: the bare payload through a relay (the server adds
    /// the ChannelData header), the framed one on the direct path (same size at the client).
    fn peer_packet(&self, out: &mut Vec<u8>, s: Stamp) {
        match self.path {
            PathKind::Relay => {
                out.clear();
                out.resize(self.size - channel::HEADER, 0);
                stamp(out, self.salt, s);
            }
            PathKind::Direct => self.client_packet(out, s),
        }
    }

    /// Judges a datagram that reached peer socket `p` from `from`: the stamp if it is ours,
    /// and whether it came from where it had to.
    fn at_peer(&self, p: usize, from: SocketAddr, data: &[u8]) -> Option<(Stamp, bool)> {
        let payload = match self.path {
            PathKind::Relay => data,
            PathKind::Direct => data.get(channel::HEADER..)?,
        };
        let s = read_stamp(payload, self.salt)?;
        let a = s.alloc as usize;
        let expected = match self.path {
            PathKind::Relay => self.toward_client.get(a).copied().flatten(),
            PathKind::Direct => self.client_addr.get(a).copied(),
        };
        let ok = !s.to_client
            && expected == Some(from)
            && self.peer_of.get(a) == Some(&p)
            && payload.len() == self.size - channel::HEADER;
        Some((s, ok))
    }

    /// Judges a datagram that reached client socket `a` from `from`.
    fn at_client(&self, a: usize, from: SocketAddr, data: &[u8]) -> Option<(Stamp, bool)> {
        let cd = channel::parse(data).ok()?;
        let s = read_stamp(&data[cd.data.clone()], self.salt)?;
        let expected = match self.path {
            PathKind::Relay => self.server,
            PathKind::Direct => Some(self.peer_addr[self.peer_of[a]]),
        };
        let ok = s.to_client
            && s.alloc as usize == a
            && expected == Some(from)
            && cd.channel == CHANNEL
            && data.len() == self.size
            && cd.data.len() == self.size - channel::HEADER;
        Some((s, ok))
    }
}

/// Runs the generator and prints its [`Report`] as one JSON line.
pub fn run(args: TurnLoadArgs) -> anyhow::Result<()> {
    let report = generate(&args)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Raises the open-file limit to the hard limit: one socket per allocation.
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a stack struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Runs the generator and returns its report.
pub fn generate(args: &TurnLoadArgs) -> anyhow::Result<Report> {
    ensure!(
        (1..=MAX_ALLOCATIONS).contains(&args.allocations),
        "--allocations must be 1..={MAX_ALLOCATIONS}"
    );
    ensure!(
        (1..=MAX_PEERS).contains(&args.peer_sockets),
        "--peer-sockets must be 1..={MAX_PEERS}"
    );
    ensure!(args.window >= 1, "--window must be at least 1");
    ensure!(
        (channel::HEADER + STAMP..=1400).contains(&args.size),
        "--size must be {}..=1400 bytes",
        channel::HEADER + STAMP
    );
    ensure!(
        args.path == PathKind::Direct || args.server.is_some(),
        "--server is needed unless --path direct"
    );
    let (user, password) = args
        .credentials
        .split_once(':')
        .context("--credentials: expected USER:PASSWORD")?;
    if let Some(s) = args.server
        && !lab_address(s.ip())
    {
        bail!(
            "--server {s} is outside the lab (198.51.100.0/24) and loopback; this generator stays there"
        );
    }
    for ip in args.client_ips.iter().chain([&args.peer_ip]) {
        if !lab_address(IpAddr::V4(*ip)) {
            bail!("{ip} is outside the lab (198.51.100.0/24) and loopback");
        }
    }
    raise_nofile();
    let watch = args.server_pid.map(Watch::new).transpose()?;
    let rss_idle = watch.as_ref().map(Watch::rss_kib).transpose()?;

    let n = args.allocations;
    let mut clients = Vec::with_capacity(n);
    let mut client_addr = Vec::with_capacity(n);
    for i in 0..n {
        let bind = SocketAddr::new(IpAddr::V4(args.client_ips[i % args.client_ips.len()]), 0);
        let sock = voxmesh::net::bind_udp_std(bind)
            .with_context(|| format!("binding client socket {i} on {bind}"))?;
        client_addr.push(sock.local_addr()?);
        clients.push(sock);
    }
    let bind_peers = || -> std::io::Result<Vec<UdpSocket>> {
        (0..args.peer_sockets)
            .map(|_| voxmesh::net::bind_udp_std(SocketAddr::new(IpAddr::V4(args.peer_ip), 0)))
            .collect()
    };
    let peers = match &args.peer_netns {
        Some(ns) => crate::in_netns(ns, bind_peers)
            .with_context(|| format!("opening peer sockets in namespace {ns}"))?,
        None => bind_peers().context("opening peer sockets")?,
    };
    let peer_addr: Vec<SocketAddr> = peers
        .iter()
        .map(UdpSocket::local_addr)
        .collect::<Result<_, _>>()?;
    let peer_of: Vec<usize> = (0..n).map(|a| a * args.peer_sockets / n).collect();
    let mut poller = Poller::new(
        clients.iter().chain(peers.iter()).map(|s| s.as_raw_fd()),
        EVENTS,
    )?;
    let salt: [u8; 4] = rand::random();
    let mut rig = Rig {
        clients,
        client_addr,
        peers,
        peer_addr,
        peer_of,
        toward_client: vec![None; n],
        server: args.server,
        path: args.path,
        salt,
        size: args.size,
        start: Instant::now(),
    };

    // Setup: allocate and bind a channel for every allocation (none on the direct path).
    let ends: Vec<(IpAddr, SocketAddr)> = (0..n)
        .map(|a| (rig.client_addr[a].ip(), rig.peer_addr[rig.peer_of[a]]))
        .collect();
    let mut setup = Setup::new(salt, user, password, &ends);
    let setup_started = Instant::now();
    let mut rx = RecvBatch::default();
    let ready: Vec<usize> = match args.path {
        PathKind::Relay => {
            run_setup(&mut rig, &mut setup, &mut poller, &mut rx, args, false)?;
            (0..n).filter(|&a| setup.stage(a) == Stage::Ready).collect()
        }
        PathKind::Direct => {
            rig.toward_client = rig.client_addr.iter().copied().map(Some).collect();
            (0..n).collect()
        }
    };
    for &a in &ready {
        if args.path == PathKind::Relay {
            rig.toward_client[a] = setup.relayed(a);
        }
    }
    setup.report.seconds = setup_started.elapsed().as_secs_f64();

    // One check packet each way per allocation: the data path works, and both servers have
    // touched each allocation's data path before memory is read.
    let (to_peer_ok, to_client_ok) = check_paths(&mut rig, &ready, &mut poller, &mut rx)?;
    let checked_both = ready
        .iter()
        .filter(|&&a| to_peer_ok[a] && to_client_ok[a])
        .count();
    let rss_loaded = watch.as_ref().map(Watch::rss_kib).transpose()?;

    // The measured window.
    let mut up = Flow::default();
    let mut down = Flow::default();
    let mut unmatched = 0u64;
    let cpu0 = watch.as_ref().map(|w| (w.ticks(), w.threads()));
    let t0 = Instant::now();
    let (offered_up, offered_down, send_window) = if args.duration.is_zero() || ready.is_empty() {
        (0, 0, Duration::ZERO)
    } else {
        traffic(
            &mut rig,
            &ready,
            &mut poller,
            &mut rx,
            args,
            &mut up,
            &mut down,
            &mut unmatched,
        )?
    };
    let window = t0.elapsed();
    let cpu1 = watch.as_ref().map(|w| (w.ticks(), w.threads()));
    let rss_end = watch.as_ref().map(Watch::rss_kib).transpose()?;

    // Release what we allocated (best effort: the benchmark restarts servers anyway).
    let released = if args.path == PathKind::Relay {
        run_setup(&mut rig, &mut setup, &mut poller, &mut rx, args, true)?;
        (0..n)
            .filter(|&a| setup.stage(a) == Stage::Released)
            .count()
    } else {
        0
    };

    let to_peer = up.report(offered_up);
    let to_client = down.report(offered_down);
    let relayed = to_peer.valid + to_client.valid;
    let mut all: Vec<u32> = up
        .latencies
        .iter()
        .chain(down.latencies.iter())
        .copied()
        .collect();
    let secs = send_window.as_secs_f64();
    let server_process = match (watch, cpu0, cpu1) {
        (Some(w), Some((Ok(c0), th0)), Some((Ok(c1), th1))) => {
            let cpu_s = (c1.saturating_sub(c0)) as f64 / w.hz;
            let threads = th1
                .iter()
                .map(|(tid, (name, t))| ThreadCpu {
                    tid: *tid,
                    name: name.clone(),
                    cpu_s: t.saturating_sub(th0.get(tid).map_or(0, |x| x.1)) as f64 / w.hz,
                })
                .collect();
            let (idle, loaded) = (rss_idle.unwrap_or(0), rss_loaded.unwrap_or(0));
            Some(ServerReport {
                pid: w.pid,
                cpu_s,
                cpu_utilisation: if window.is_zero() {
                    0.0
                } else {
                    cpu_s / window.as_secs_f64()
                },
                relayed_per_cpu_s: (cpu_s > 0.0).then(|| relayed as f64 / cpu_s),
                threads,
                rss_idle_kib: idle,
                rss_loaded_kib: loaded,
                rss_end_kib: rss_end.unwrap_or(0),
                rss_per_allocation_bytes: (!ready.is_empty())
                    .then(|| (loaded as f64 - idle as f64) * 1024.0 / ready.len() as f64),
            })
        }
        _ => None,
    };
    Ok(Report {
        server: args.server,
        path: args.path,
        direction: args.direction,
        allocations_requested: n,
        allocations: ready.len(),
        setup: setup.report.clone(),
        checked_to_peer: ready.iter().filter(|&&a| to_peer_ok[a]).count(),
        checked_to_client: ready.iter().filter(|&&a| to_client_ok[a]).count(),
        checked_both,
        rate_per_allocation: (args.rate > 0).then_some(args.rate),
        size: args.size,
        send_seconds: secs,
        window_seconds: window.as_secs_f64(),
        to_peer,
        to_client,
        relayed,
        relayed_per_s: if secs > 0.0 {
            relayed as f64 / secs
        } else {
            0.0
        },
        latency_us: latency(&mut all),
        unmatched,
        released,
        server_process,
        client_sockets: rig.clients.len(),
        peer_sockets: rig.peers.len(),
    })
}

/// Drives the handshakes (or, with `release`, the releases) until all are done, at most
/// `--window` at a time, retransmitting on timeout.
fn run_setup(
    rig: &mut Rig,
    setup: &mut Setup,
    poller: &mut Poller,
    rx: &mut RecvBatch,
    args: &TurnLoadArgs,
    release: bool,
) -> anyhow::Result<()> {
    let server = rig.server.expect("relay path has a server");
    let n = rig.clients.len();
    let deadline = Instant::now()
        + if release {
            RELEASE_WAIT
        } else {
            args.setup_timeout
        };
    let mut timers: VecDeque<(Instant, usize, u32)> = VecDeque::new();
    let mut next = 0usize;
    let mut in_flight = 0usize;
    let send =
        |rig: &Rig, setup: &Setup, timers: &mut VecDeque<(Instant, usize, u32)>, a: usize| {
            let (bytes, txn) = setup.request(a);
            // A refused send is retransmitted on its timer like a lost one.
            let _ = rig.clients[a].send_to(bytes, server);
            timers.push_back((Instant::now() + RTO, a, txn));
        };
    let settled = |s: Stage| !matches!(s, Stage::Allocating | Stage::Binding | Stage::Releasing);
    loop {
        while in_flight < args.window && next < n && (release || setup.can_begin(next)) {
            let a = next;
            next += 1;
            let step = if release {
                setup.release(a)
            } else {
                setup.begin(a)
            };
            if step == Step::Send {
                send(rig, setup, &mut timers, a);
                in_flight += 1;
            }
        }
        let now = Instant::now();
        while let Some(&(t, a, txn)) = timers.front() {
            if t > now {
                break;
            }
            timers.pop_front();
            let was = setup.stage(a);
            if setup.timeout(a, txn) {
                send(rig, setup, &mut timers, a);
            } else if !settled(was) && settled(setup.stage(a)) {
                in_flight -= 1;
            }
        }
        for i in poller.ready() {
            if i >= n {
                // A peer socket during setup: nothing should arrive; drain and ignore.
                let _ = rx.try_recv(&rig.peers[i - n]);
                continue;
            }
            for _ in 0..DRAIN_ROUNDS {
                if rx.try_recv(&rig.clients[i]).is_err() {
                    break;
                }
                for d in rx.iter() {
                    if d.from != server {
                        continue;
                    }
                    let was = setup.stage(i);
                    match setup.response(i, d.data) {
                        Step::Send => send(rig, setup, &mut timers, i),
                        Step::Done | Step::Failed if !settled(was) => in_flight -= 1,
                        _ => {}
                    }
                }
                if rx.len() < BATCH {
                    break;
                }
            }
        }
        if (next == n && in_flight == 0) || Instant::now() >= deadline {
            break;
        }
    }
    if !release {
        // Whatever is still pending at the deadline has failed.
        for a in 0..n {
            if !settled(setup.stage(a)) || setup.stage(a) == Stage::Idle {
                setup.fail(a, 0);
            }
        }
    }
    Ok(())
}

/// Sends one check packet each way per ready allocation and waits for them.
fn check_paths(
    rig: &mut Rig,
    ready: &[usize],
    poller: &mut Poller,
    rx: &mut RecvBatch,
) -> anyhow::Result<(Vec<bool>, Vec<bool>)> {
    let n = rig.clients.len();
    let mut to_peer = vec![false; n];
    let mut to_client = vec![false; n];
    let mut buf = Vec::with_capacity(2048);
    for &a in ready {
        let mut s = Stamp {
            alloc: a as u32,
            to_client: false,
            check: true,
            seq: 0,
            sent_ns: rig.now_ns(),
        };
        rig.client_packet(&mut buf, s);
        let _ = rig.clients[a].send_to(&buf, rig.toward_peer(a));
        s.to_client = true;
        rig.peer_packet(&mut buf, s);
        if let Some(to) = rig.toward_client[a] {
            let _ = rig.peers[rig.peer_of[a]].send_to(&buf, to);
        }
        // Keep the queues short: drain as we go.
        if a % 64 == 63 {
            drain_checks(rig, poller, rx, &mut to_peer, &mut to_client);
        }
    }
    let deadline = Instant::now() + CHECK_WAIT;
    let want = ready.len();
    while Instant::now() < deadline {
        drain_checks(rig, poller, rx, &mut to_peer, &mut to_client);
        if to_peer.iter().filter(|x| **x).count() == want
            && to_client.iter().filter(|x| **x).count() == want
        {
            break;
        }
    }
    Ok((to_peer, to_client))
}

fn drain_checks(
    rig: &Rig,
    poller: &mut Poller,
    rx: &mut RecvBatch,
    to_peer: &mut [bool],
    to_client: &mut [bool],
) {
    let n = rig.clients.len();
    for i in poller.ready() {
        let (sock, is_peer) = if i < n {
            (&rig.clients[i], false)
        } else {
            (&rig.peers[i - n], true)
        };
        if rx.try_recv(sock).is_err() {
            continue;
        }
        for d in rx.iter() {
            let judged = if is_peer {
                rig.at_peer(i - n, d.from, d.data)
            } else {
                rig.at_client(i, d.from, d.data)
            };
            if let Some((s, true)) = judged
                && s.check
            {
                if is_peer {
                    to_peer[s.alloc as usize] = true;
                } else {
                    to_client[s.alloc as usize] = true;
                }
            }
        }
    }
}

/// Requests the schedule calls for by `elapsed`: packet `k` is due at `k / rate` (the first at
/// once), `total` in all.
fn due_by(rate: u64, elapsed: Duration, total: u64) -> u64 {
    let n = rate as u128 * elapsed.as_nanos() / 1_000_000_000 + 1;
    n.min(total as u128) as u64
}

/// Packets in a whole schedule: `rate × duration`, capped.
fn schedule_len(rate: u64, duration: Duration) -> u64 {
    let n = rate as u128 * duration.as_nanos() / 1_000_000_000;
    n.min(MAX_PACKETS as u128) as u64
}

/// The measured window: sends on schedule (or flat out), receives and judges everything, and
/// returns (offered to peers, offered to clients, send window).
#[allow(clippy::too_many_arguments)]
fn traffic(
    rig: &mut Rig,
    ready: &[usize],
    poller: &mut Poller,
    rx: &mut RecvBatch,
    args: &TurnLoadArgs,
    up: &mut Flow,
    down: &mut Flow,
    unmatched: &mut u64,
) -> anyhow::Result<(u64, u64, Duration)> {
    let m = ready.len() as u64;
    let rate = (args.rate > 0).then(|| args.rate * m);
    let total = rate.map_or(MAX_PACKETS, |r| schedule_len(r, args.duration));
    let (do_up, do_down) = match args.direction {
        Direction::Both => (true, true),
        Direction::ToPeer => (true, false),
        Direction::ToClient => (false, true),
    };
    let mut tx = SendBatch::default();
    let mut buf = Vec::with_capacity(2048);
    let start = Instant::now();
    let mut deadline: Option<Instant> = None;
    let mut send_window = args.duration;
    let (mut offered_up, mut offered_down) = (0u64, 0u64);
    // Flat out: which allocation's socket sends the next upward batch, and where the next
    // downward batch starts.
    let (mut up_cursor, mut down_cursor) = (0usize, 0usize);
    loop {
        let now = Instant::now();
        let elapsed = now - start;
        if deadline.is_none() {
            let full =
                (!do_up || up.attempted() >= total) && (!do_down || down.attempted() >= total);
            if elapsed >= args.duration || full {
                send_window = elapsed.min(args.duration);
                if rate.is_some() {
                    offered_up = if do_up { total } else { 0 };
                    offered_down = if do_down { total } else { 0 };
                } else {
                    offered_up = up.attempted();
                    offered_down = down.attempted();
                }
                deadline = Some(now + args.grace);
            } else {
                match rate {
                    Some(r) => {
                        if do_up {
                            let due = due_by(r, elapsed, total)
                                .saturating_sub(up.attempted())
                                .min(ROUND);
                            send_up_paced(rig, ready, up, &mut buf, due);
                        }
                        if do_down {
                            let due = due_by(r, elapsed, total)
                                .saturating_sub(down.attempted())
                                .min(ROUND);
                            send_down(rig, ready, down, &mut tx, due, |seq| (seq % m) as usize);
                        }
                    }
                    None => {
                        if do_up {
                            let a = ready[up_cursor % ready.len()];
                            up_cursor += 1;
                            send_up_batch(rig, a, up, &mut tx);
                        }
                        if do_down {
                            // One full batch from one peer socket, like the upward one, to
                            // the next few allocations that share that socket, in turn.
                            let first = down_cursor;
                            let p = rig.peer_of[ready[first % ready.len()]];
                            let mut k = 1;
                            while k < BATCH.min(ready.len())
                                && rig.peer_of[ready[(first + k) % ready.len()]] == p
                            {
                                k += 1;
                            }
                            down_cursor += k;
                            let base = down.attempted();
                            send_down(rig, ready, down, &mut tx, BATCH as u64, |seq| {
                                (first + (seq - base) as usize % k) % ready.len()
                            });
                        }
                    }
                }
            }
        }
        receive(rig, poller, rx, up, down, unmatched);
        if let Some(d) = deadline
            && ((up.done() && down.done()) || Instant::now() >= d)
        {
            break;
        }
    }
    Ok((offered_up, offered_down, send_window))
}

/// Sends `due` client → peer packets on schedule: packet `k` from allocation `ready[k mod m]`,
/// one datagram per socket (each allocation has its own).
fn send_up_paced(rig: &Rig, ready: &[usize], up: &mut Flow, buf: &mut Vec<u8>, due: u64) {
    let m = ready.len() as u64;
    for _ in 0..due {
        let Some(seq) = up.take_seq() else { return };
        let a = ready[(seq % m) as usize];
        rig.client_packet(
            buf,
            Stamp {
                alloc: a as u32,
                to_client: false,
                check: false,
                seq,
                sent_ns: rig.now_ns(),
            },
        );
        if rig.clients[a].send_to(buf, rig.toward_peer(a)).is_err() {
            up.refuse(seq);
        }
    }
}

/// Sends one full batch of client → peer packets from allocation `a`'s socket.
fn send_up_batch(rig: &Rig, a: usize, up: &mut Flow, tx: &mut SendBatch) {
    let first = up.attempted();
    let to = rig.toward_peer(a);
    let now_ns = rig.now_ns();
    for _ in 0..BATCH {
        let Some(seq) = up.take_seq() else { break };
        let slot = tx.slot().expect("at most BATCH per flush");
        rig.client_packet(
            slot,
            Stamp {
                alloc: a as u32,
                to_client: false,
                check: false,
                seq,
                sent_ns: now_ns,
            },
        );
        tx.commit(to);
    }
    let n = tx.len() as u64;
    let done = tx.flush(&rig.clients[a]);
    // A full send buffer drops the tail of the batch.
    for seq in first + n - done.dropped as u64..first + n {
        up.refuse(seq);
    }
}

/// Sends `count` peer → client packets, packet `seq` for allocation `ready[index(seq)]`,
/// batched per peer socket.
fn send_down(
    rig: &Rig,
    ready: &[usize],
    down: &mut Flow,
    tx: &mut SendBatch,
    count: u64,
    index: impl Fn(u64) -> usize,
) {
    let mut batch_peer = usize::MAX;
    let mut first = down.attempted();
    let flush = |tx: &mut SendBatch, p: usize, first: u64, down: &mut Flow| {
        if tx.is_empty() {
            return;
        }
        let n = tx.len() as u64;
        let done = tx.flush(&rig.peers[p]);
        for seq in first + n - done.dropped as u64..first + n {
            down.refuse(seq);
        }
    };
    for _ in 0..count {
        let seq = down.attempted();
        let a = ready[index(seq)];
        let p = rig.peer_of[a];
        if p != batch_peer || tx.is_full() {
            flush(tx, batch_peer, first, down);
            batch_peer = p;
            first = seq;
        }
        let Some(seq) = down.take_seq() else { break };
        let Some(to) = rig.toward_client[a] else {
            down.refuse(seq);
            continue;
        };
        let slot = tx.slot().expect("flushed when full");
        rig.peer_packet(
            slot,
            Stamp {
                alloc: a as u32,
                to_client: true,
                check: false,
                seq,
                sent_ns: rig.now_ns(),
            },
        );
        tx.commit(to);
    }
    flush(tx, batch_peer, first, down);
}

/// Takes whatever arrived on any socket and books it.
fn receive(
    rig: &Rig,
    poller: &mut Poller,
    rx: &mut RecvBatch,
    up: &mut Flow,
    down: &mut Flow,
    unmatched: &mut u64,
) {
    let n = rig.clients.len();
    for i in poller.ready() {
        let (sock, is_peer) = if i < n {
            (&rig.clients[i], false)
        } else {
            (&rig.peers[i - n], true)
        };
        for _ in 0..DRAIN_ROUNDS {
            if rx.try_recv(sock).is_err() {
                break;
            }
            let at = rig.now_ns();
            for d in rx.iter() {
                let judged = if is_peer {
                    rig.at_peer(i - n, d.from, d.data)
                } else {
                    rig.at_client(i, d.from, d.data)
                };
                match judged {
                    // Late check packets are not load.
                    Some((s, _)) if s.check => {}
                    Some((s, ok)) => {
                        // A packet of the wrong direction on this side is booked against the
                        // direction it claims, as misdelivered.
                        let flow = if s.to_client { &mut *down } else { &mut *up };
                        let right_side = s.to_client != is_peer;
                        flow.arrived(s.seq, at.saturating_sub(s.sent_ns), ok && right_side);
                    }
                    None if !is_peer && d.data.first().is_some_and(|b| *b < 4) => {
                        // A late STUN answer (a retransmitted handshake): not load.
                    }
                    None => *unmatched += 1,
                }
            }
            if rx.len() < BATCH {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: [u8; 4] = [1, 2, 3, 4];

    #[test]
    fn stamps_round_trip_and_catch_damage() {
        let s = Stamp {
            alloc: 77,
            to_client: true,
            check: false,
            seq: 123_456,
            sent_ns: 99,
        };
        let mut buf = vec![0u8; 116];
        stamp(&mut buf, SALT, s);
        assert_eq!(read_stamp(&buf, SALT), Some(s));
        assert_eq!(read_stamp(&buf, [9; 4]), None, "another run's salt");
        for at in [5, 30, 115] {
            let mut bad = buf.clone();
            bad[at] ^= 0x10;
            assert_ne!(read_stamp(&bad, SALT), Some(s), "byte {at} flipped");
        }
        assert_eq!(read_stamp(&buf[..20], SALT), None);
    }

    #[test]
    fn the_ledger_books_each_packet_once() {
        let mut f = Flow::default();
        for _ in 0..5 {
            f.take_seq();
        }
        assert_eq!(f.arrived(0, 1_000, true), Verdict::Valid);
        assert_eq!(f.arrived(0, 1_000, true), Verdict::Duplicate);
        assert_eq!(
            f.arrived(1, 1_000, false),
            Verdict::Invalid,
            "wrong socket or source"
        );
        assert_eq!(f.arrived(9, 1_000, true), Verdict::Invalid, "never sent");
        f.refuse(4);
        assert_eq!(
            f.arrived(4, 1_000, true),
            Verdict::Invalid,
            "refused, so it never left"
        );
        let r = f.report(6);
        assert_eq!(
            (
                r.sent,
                r.send_failed,
                r.valid,
                r.invalid,
                r.duplicate,
                r.lost,
                r.behind
            ),
            (4, 1, 1, 3, 1, 2, 1)
        );
        assert_eq!(r.latency_us.p50, 1.0);
    }

    #[test]
    fn schedule_is_rate_times_time() {
        assert_eq!(due_by(50_000, Duration::ZERO, 100), 1);
        assert_eq!(due_by(50_000, Duration::from_micros(20), 100), 2);
        assert_eq!(due_by(50_000, Duration::from_secs(1), 100), 100);
        assert_eq!(schedule_len(50_000, Duration::from_secs(10)), 500_000);
    }

    fn peer() -> SocketAddr {
        "198.51.100.152:40000".parse().unwrap()
    }

    fn ends(n: usize) -> Vec<(IpAddr, SocketAddr)> {
        vec![(IpAddr::from([198, 51, 100, 151]), peer()); n]
    }

    /// The server's side of one exchange: an answer to `req` of `class`, signed with `key`.
    fn answer(
        req: &[u8],
        class: Class,
        extra: impl FnOnce(&mut MessageBuilder<'_>),
        key: Option<&[u8]>,
    ) -> Vec<u8> {
        let msg = Message::parse(req).unwrap();
        let mut out = Vec::new();
        let mut b = MessageBuilder::with_raw_id(&mut out, msg.method(), class, msg.raw_id());
        extra(&mut b);
        if let Some(k) = key {
            b.message_integrity(k);
        }
        b.fingerprint();
        out
    }

    fn challenge(req: &[u8], code: u16, nonce: &str) -> Vec<u8> {
        answer(
            req,
            Class::Error,
            |b| {
                b.error_code(code, "Unauthenticated");
                b.attr(attr::REALM, b"lab");
                b.attr(attr::NONCE, nonce.as_bytes());
            },
            None,
        )
    }

    #[test]
    fn a_handshake_learns_the_nonce_allocates_and_binds() {
        let mut s = Setup::new(SALT, "bench", "pw", &ends(2));
        let key = long_term_key("bench", "lab", "pw");
        let relayed: SocketAddr = "198.51.100.1:50000".parse().unwrap();
        assert_eq!(s.begin(0), Step::Send);
        assert!(!s.can_begin(1), "one unsigned request per source at a time");
        let first = s.request(0).0.to_vec();
        assert!(
            Message::parse(&first).unwrap().integrity_offset().is_none(),
            "no nonce yet"
        );
        assert_eq!(s.response(0, &challenge(&first, 401, "n1")), Step::Send);
        let signed = s.request(0).0.to_vec();
        assert_eq!(
            Message::parse(&signed).unwrap().check_integrity(&key),
            IntegrityCheck::Valid
        );
        // An unsigned success to a signed request is not trusted.
        let unsigned = answer(
            &signed,
            Class::Success,
            |b| {
                b.xor_address(attr::XOR_RELAYED_ADDRESS, relayed);
            },
            None,
        );
        assert_eq!(s.response(0, &unsigned), Step::Ignore);
        let ok = answer(
            &signed,
            Class::Success,
            |b| {
                b.xor_address(attr::XOR_RELAYED_ADDRESS, relayed);
            },
            Some(&key),
        );
        assert_eq!(s.response(0, &ok), Step::Send, "next: ChannelBind");
        assert_eq!(s.relayed(0), Some(relayed));
        let bind = s.request(0).0.to_vec();
        let m = Message::parse(&bind).unwrap();
        assert_eq!(
            (m.method(), m.xor_address(attr::XOR_PEER_ADDRESS)),
            (method::CHANNEL_BIND, Some(peer()))
        );
        assert_eq!(
            s.response(0, &answer(&bind, Class::Success, |_| {}, Some(&key))),
            Step::Done
        );
        assert_eq!(s.stage(0), Stage::Ready);
        // The second allocation from the same source waited for the nonce, then reuses it.
        assert!(s.can_begin(1));
        assert_eq!(s.begin(1), Step::Send);
        assert!(
            Message::parse(s.request(1).0)
                .unwrap()
                .integrity_offset()
                .is_some()
        );
        assert_eq!(s.report.challenges, 1);
    }

    #[test]
    fn stale_foreign_and_repeated_failures() {
        let mut s = Setup::new(SALT, "bench", "pw", &ends(1));
        s.begin(0);
        let req = s.request(0).0.to_vec();
        // Another run's transaction: ignored.
        let mut other = Setup::new([9; 4], "bench", "pw", &ends(1));
        other.begin(0);
        assert_eq!(
            s.response(0, &challenge(other.request(0).0, 401, "x")),
            Step::Ignore
        );
        // Endless challenges end in failure, not a loop.
        let mut step = s.response(0, &challenge(&req, 401, "a"));
        for _ in 0..MAX_REAUTH {
            let r = s.request(0).0.to_vec();
            step = s.response(0, &challenge(&r, 438, "b"));
        }
        assert_eq!(step, Step::Failed);
        assert_eq!(s.stage(0), Stage::Failed(438));
        // Retransmission is bounded too.
        let mut s = Setup::new(SALT, "bench", "pw", &ends(1));
        s.begin(0);
        let txn = s.request(0).1;
        let sends = (0..10).take_while(|_| s.timeout(0, txn)).count();
        assert_eq!(sends as u8, MAX_TRIES - 1);
        assert_eq!(s.stage(0), Stage::Failed(0));
    }

    #[test]
    fn proc_stat_fields() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 1000 10";
        assert_eq!(stat_ticks(line), Some(300));
    }

    #[test]
    fn only_lab_addresses() {
        assert!(lab_address("198.51.100.7".parse().unwrap()));
        assert!(lab_address("127.0.0.1".parse().unwrap()));
        assert!(!lab_address("192.0.2.1".parse().unwrap()));
        assert!(!lab_address("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
    }
}
