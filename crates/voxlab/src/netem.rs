//! Path impairment forwarder: a transparent Ethernet wire with seeded delay, jitter, loss,
//! reordering and rate limiting, one impairment per direction.
//!
//! `tc netem` is not available in the lab (DESIGN.md §8), so impairment lives **on the path**:
//! `voxlab netem` runs in a middle namespace holding two veth ends, reads every frame arriving on
//! one and writes it out of the other. Every program on either side — ours, coturn, anything —
//! sees the same impaired network without knowing about it.
//!
//! # Layout
//!
//! - [`Spec`]: one direction's impairment, parsed from `delay=75ms,jitter=10ms,loss=0.2,...`.
//! - [`Impairer`]: the sans-IO decision for each frame (drop, or deliver at some instant). It takes
//!   `now` and never reads a clock, so tests drive it with synthetic instants.
//! - [`DelayLine`]: frames waiting for their delivery instant; FIFO among equal instants.
//! - [`run`]: the I/O driver — two `AF_PACKET` sockets and a single-threaded `ppoll` loop.
//!
//! Reproducibility: each direction has its own RNG seeded from `--seed`, and the impairer draws
//! the same number of random values for every frame, so the same seed and the same frame
//! sequence give the same decisions.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Flags of `voxlab netem`.
#[derive(Debug, Clone, clap::Args)]
pub struct NetemArgs {
    /// Interface A: frames received here go out of B ("up" direction).
    #[arg(long, value_name = "IF")]
    pub a: String,

    /// Interface B: frames received here go out of A ("down" direction).
    #[arg(long, value_name = "IF")]
    pub b: String,

    /// Impairment for frames from A to B.
    ///
    /// Comma-separated key=value pairs, all optional: delay=DUR (fixed one-way delay),
    /// jitter=DUR (uniform extra delay in [0, jitter]; reorders frames by itself),
    /// loss=P (drop probability), burst=N (losses in bursts of N frames on average, a
    /// Gilbert-Elliott channel whose average loss is P), reorder=P (probability a frame skips
    /// the delay and overtakes queued frames), duplicate=P (probability a frame is delivered
    /// twice), rate=RATE (bottleneck, e.g. 10mbit), limit=N (max frames queued: at the
    /// bottleneck with rate, else in the delay line; more are dropped). DUR takes us, ms or s;
    /// P is 0..1 or a percentage like 20%.
    /// Loss and reorder never touch ARP or IPv6 neighbour discovery.
    #[arg(long, value_name = "SPEC", verbatim_doc_comment)]
    pub up: Option<Spec>,

    /// Impairment for frames from B to A (same syntax as --up).
    #[arg(long, value_name = "SPEC")]
    pub down: Option<Spec>,

    /// Seed of the per-direction random generators; same seed and traffic give the same run.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,

    /// On exit print the counters as one JSON line on stdout instead of text on stderr.
    #[arg(long)]
    pub stats_json: bool,
}

// ---------------------------------------------------------------------------------------------
// Spec
// ---------------------------------------------------------------------------------------------

/// One direction's impairment. The default impairs nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spec {
    /// Fixed one-way delay added to every frame.
    pub delay: Duration,
    /// Upper bound of a uniform random extra delay. Frames with different draws can swap order,
    /// as on a real path with variable queueing.
    pub jitter: Duration,
    /// Probability that an IP frame is dropped (the long-run average, with `burst`).
    pub loss: f64,
    /// Mean length of a loss burst, in frames: losses come in bursts (a Gilbert–Elliott
    /// channel: a good state that loses nothing and a bad one that loses everything, whose
    /// mean stay is `burst` frames, entered often enough that `loss` is the average). `None`:
    /// independent losses.
    pub burst: Option<f64>,
    /// Probability that a (not dropped) IP frame skips the delay line and overtakes queued frames.
    pub reorder: f64,
    /// Probability that a (not dropped) IP frame is delivered twice, the copy right after it
    /// (a retransmitting link layer or a routing loop; replay defences must absorb it).
    pub duplicate: f64,
    /// Bottleneck rate in bits per second; `None` means unlimited.
    pub rate_bps: Option<u64>,
    /// Most frames waiting: with `rate`, in the bottleneck's queue (tail drop, like a router);
    /// without, in the delay line. `None` means unbounded. Unbounded is the default because a
    /// default limit (tc netem's 1000) silently drops at high delay × rate.
    pub limit: Option<usize>,
}

impl Spec {
    /// The delay line's bound: `limit` unless the bottleneck's queue has it.
    pub fn delay_line_limit(&self) -> Option<usize> {
        if self.rate_bps.is_some() {
            None
        } else {
            self.limit
        }
    }
}

/// Why a SPEC string was rejected. The message names the offending item; fix the flag value.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    /// An item was not `key=value`.
    #[error("expected key=value, got {0:?}")]
    NotKeyValue(String),
    /// A key other than delay, jitter, loss, burst, reorder, duplicate, rate, limit.
    #[error(
        "unknown key {0:?} (expected delay, jitter, loss, burst, reorder, duplicate, rate or limit)"
    )]
    UnknownKey(String),
    /// The same key twice; which one was meant is ambiguous.
    #[error("key {0:?} given twice")]
    Duplicate(String),
    /// A value that does not parse for its key.
    #[error("bad value {value:?} for {key}: {why}")]
    BadValue {
        /// The key whose value is wrong.
        key: String,
        /// The value as given.
        value: String,
        /// What was expected.
        why: &'static str,
    },
}

impl FromStr for Spec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut spec = Spec::default();
        let mut seen: Vec<&str> = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| SpecError::NotKeyValue(item.to_owned()))?;
            let (key, value) = (key.trim(), value.trim());
            if seen.contains(&key) {
                return Err(SpecError::Duplicate(key.to_owned()));
            }
            seen.push(key);
            let bad = |why| SpecError::BadValue {
                key: key.to_owned(),
                value: value.to_owned(),
                why,
            };
            match key {
                "delay" => spec.delay = parse_duration(value).ok_or_else(|| bad(DUR_HELP))?,
                "jitter" => spec.jitter = parse_duration(value).ok_or_else(|| bad(DUR_HELP))?,
                "loss" => spec.loss = parse_probability(value).ok_or_else(|| bad(P_HELP))?,
                "burst" => {
                    let n: f64 = value.parse().map_err(|_| bad(BURST_HELP))?;
                    if !(n >= 1.0 && n.is_finite()) {
                        return Err(bad(BURST_HELP));
                    }
                    spec.burst = Some(n);
                }
                "reorder" => spec.reorder = parse_probability(value).ok_or_else(|| bad(P_HELP))?,
                "duplicate" => {
                    spec.duplicate = parse_probability(value).ok_or_else(|| bad(P_HELP))?
                }
                "rate" => spec.rate_bps = Some(parse_rate(value).ok_or_else(|| bad(RATE_HELP))?),
                "limit" => {
                    let n: usize = value.parse().map_err(|_| bad("a frame count"))?;
                    spec.limit = Some(n);
                }
                _ => return Err(SpecError::UnknownKey(key.to_owned())),
            }
        }
        Ok(spec)
    }
}

const DUR_HELP: &str = "a duration like 75ms, 500us or 1.5s, at most 3600s";
const P_HELP: &str = "a probability in 0..1 or a percentage like 20%";
const BURST_HELP: &str = "a mean burst length in frames, 1 or more (with loss= as the average)";
const RATE_HELP: &str = "a positive rate like 10mbit, 800kbit, 1gbit or bits per second";

/// Splits `"12.5ms"` into `(12.5, "ms")`.
fn split_number(s: &str) -> Option<(f64, &str)> {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let n: f64 = s[..end].parse().ok()?;
    n.is_finite().then_some((n, &s[end..]))
}

/// Longest delay or jitter: far beyond any path worth emulating, and small enough that
/// `now + delay + jitter` can never overflow an `Instant`.
const MAX_DELAY: Duration = Duration::from_secs(3600);

fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = split_number(s)?;
    let scale = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        // A bare 0 is unambiguous; any other bare number is not (ms? s?).
        "" if n == 0.0 => 0.0,
        _ => return None,
    };
    // `try_`: a number too large for a Duration is a bad value, not a panic.
    Duration::try_from_secs_f64(n * scale)
        .ok()
        .filter(|d| *d <= MAX_DELAY)
}

fn parse_probability(s: &str) -> Option<f64> {
    let p = match s.strip_suffix('%') {
        Some(pct) => pct.parse::<f64>().ok()? / 100.0,
        None => s.parse::<f64>().ok()?,
    };
    (0.0..=1.0).contains(&p).then_some(p)
}

/// tc-style rates with SI multiples: `bit`, `kbit`, `mbit`, `gbit`, or a bare number of bit/s.
/// (tc's `bps` means *bytes* per second, a classic trap, so it is deliberately not accepted.)
fn parse_rate(s: &str) -> Option<u64> {
    let (n, unit) = split_number(s)?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => return None,
    };
    let bps = (n * scale).round();
    (bps >= 1.0 && bps < u64::MAX as f64).then_some(bps as u64)
}

impl fmt::Display for Spec {
    /// The canonical SPEC form, which parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = Vec::new();
        if !self.delay.is_zero() {
            items.push(format!("delay={}", fmt_duration(self.delay)));
        }
        if !self.jitter.is_zero() {
            items.push(format!("jitter={}", fmt_duration(self.jitter)));
        }
        if self.loss > 0.0 {
            items.push(format!("loss={}", self.loss));
        }
        if let Some(b) = self.burst {
            items.push(format!("burst={b}"));
        }
        if self.reorder > 0.0 {
            items.push(format!("reorder={}", self.reorder));
        }
        if self.duplicate > 0.0 {
            items.push(format!("duplicate={}", self.duplicate));
        }
        if let Some(r) = self.rate_bps {
            items.push(format!("rate={}", fmt_rate(r)));
        }
        if let Some(l) = self.limit {
            items.push(format!("limit={l}"));
        }
        if items.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&items.join(","))
        }
    }
}

/// A duration in the largest of s, ms, us that shows it exactly (to the microsecond).
fn fmt_duration(d: Duration) -> String {
    let us = d.as_micros();
    match us {
        _ if us % 1_000_000 == 0 => format!("{}s", us / 1_000_000),
        _ if us % 1_000 == 0 => format!("{}ms", us / 1_000),
        _ => format!("{us}us"),
    }
}

/// A rate in the largest of gbit, mbit, kbit, bit that shows it exactly.
fn fmt_rate(bps: u64) -> String {
    [
        (1_000_000_000, "gbit"),
        (1_000_000, "mbit"),
        (1_000, "kbit"),
    ]
    .into_iter()
    .find(|(scale, _)| bps % scale == 0)
    .map_or_else(
        || format!("{bps}bit"),
        |(scale, unit)| format!("{}{unit}", bps / scale),
    )
}

// ---------------------------------------------------------------------------------------------
// Frame classification
// ---------------------------------------------------------------------------------------------

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const IPPROTO_ICMPV6: u8 = 58;

/// What kind of frame this is, as far as impairment cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// IPv4 or IPv6 traffic other than neighbour discovery: loss and reorder apply.
    Ip,
    /// ARP or ICMPv6 neighbour discovery (types 133–137, RFC 4861 §4): delayed, never dropped.
    AddressResolution,
    /// Anything else (LLDP, truncated frames, ...): delayed, never dropped.
    Other,
}

impl FrameKind {
    /// Classifies an Ethernet frame (destination, source, ethertype, payload), looking through up
    /// to two VLAN tags.
    pub fn of(frame: &[u8]) -> FrameKind {
        let mut off = 12;
        let mut ethertype = read_u16(frame, off);
        for _ in 0..2 {
            if matches!(ethertype, Some(ETHERTYPE_VLAN | ETHERTYPE_QINQ)) {
                off += 4;
                ethertype = read_u16(frame, off);
            }
        }
        let payload = frame.get(off + 2..).unwrap_or(&[]);
        match ethertype {
            Some(ETHERTYPE_ARP) => FrameKind::AddressResolution,
            Some(ETHERTYPE_IPV4) => FrameKind::Ip,
            Some(ETHERTYPE_IPV6) => {
                // ND messages carry no extension headers in practice (RFC 4861 needs none and
                // nodes send them bare), so the next-header field of the fixed header is enough.
                let icmp_type = payload.get(40);
                if payload.get(6) == Some(&IPPROTO_ICMPV6)
                    && icmp_type.is_some_and(|t| (133..=137).contains(t))
                {
                    FrameKind::AddressResolution
                } else {
                    FrameKind::Ip
                }
            }
            _ => FrameKind::Other,
        }
    }
}

fn read_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]))
}

// ---------------------------------------------------------------------------------------------
// Impairer (sans-IO)
// ---------------------------------------------------------------------------------------------

/// What to do with one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// Drop it (random loss).
    Drop,
    /// Drop it: the bottleneck's queue (`rate` with `limit`) is full. A dropped frame takes no
    /// time on the link.
    Overflow,
    /// Deliver it at `at`. `reordered` is true when it skipped the delay line.
    DeliverAt {
        /// When to transmit it on the other interface.
        at: Instant,
        /// It skipped the fixed delay and jitter, overtaking frames already queued.
        reordered: bool,
        /// Deliver a second copy right after it.
        duplicate: bool,
    },
}

/// One direction's seeded impairment decisions. Call [`Impairer::decide`] once per frame, in
/// arrival order, with non-decreasing `now`; it reads no clock and does no I/O.
#[derive(Debug)]
pub struct Impairer {
    spec: Spec,
    rng: StdRng,
    /// When the emulated bottleneck finishes sending the last accepted frame (`rate` only). The
    /// bottleneck sits before the delay line, so a backlog there delays every later frame.
    link_free_at: Option<Instant>,
    /// In the bursty channel's bad state (`burst` only).
    in_burst: bool,
    /// When each frame waiting for the bottleneck leaves it (`rate` only): its queue, which
    /// `limit` bounds.
    backlog: VecDeque<Instant>,
}

impl Impairer {
    /// An impairer for `spec` whose random draws come from `seed`.
    pub fn new(spec: Spec, seed: u64) -> Self {
        Impairer {
            spec,
            rng: StdRng::seed_from_u64(seed),
            link_free_at: None,
            in_burst: false,
            backlog: VecDeque::new(),
        }
    }

    /// Whether an IP frame is lost, given a uniform draw `u`. With `burst`, a two-state
    /// channel: the bad state (everything lost) is left with probability 1/burst per frame, so
    /// bursts last `burst` frames on average, and entered with p = loss·r/(1 − loss), so the
    /// long-run share of frames in it (p/(p + r)) is `loss`.
    fn lost(&mut self, u: f64) -> bool {
        let Some(burst) = self.spec.burst else {
            return u < self.spec.loss;
        };
        let loss = self.spec.loss;
        if loss <= 0.0 {
            return false;
        }
        let r = 1.0 / burst;
        let p = if loss >= 1.0 {
            1.0
        } else {
            (loss * r / (1.0 - loss)).min(1.0)
        };
        self.in_burst = if self.in_burst { u >= r } else { u < p };
        self.in_burst
    }

    /// The spec this impairer applies.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// Decides the fate of `frame`, received at `now`.
    pub fn decide(&mut self, now: Instant, frame: &[u8]) -> Decision {
        self.decide_kind(now, FrameKind::of(frame), frame.len())
    }

    /// Decides the fate of an IP datagram of `len` bytes received at `now`: what a simulated
    /// network (`crate::sim`), which carries datagrams rather than frames, asks.
    pub fn decide_ip(&mut self, now: Instant, len: usize) -> Decision {
        self.decide_kind(now, FrameKind::Ip, len)
    }

    fn decide_kind(&mut self, now: Instant, kind: FrameKind, len: usize) -> Decision {
        // Draw the same four values for every frame, used or not, so the random stream position
        // depends only on how many frames came by, not on their kinds or on the spec.
        let u_loss: f64 = self.rng.random();
        let u_reorder: f64 = self.rng.random();
        let u_jitter: f64 = self.rng.random();
        let u_duplicate: f64 = self.rng.random();

        // Loss, reorder and duplication apply to IP traffic only. Dropping ARP or neighbour
        // discovery would not model the path: the host just retries resolution after about a
        // second, so a loss rate would turn into rare second-long stalls instead of the packet
        // loss under test. Those frames are still delayed, since resolution crosses the same path.
        let impairable = kind == FrameKind::Ip;
        let duplicate = impairable && u_duplicate < self.spec.duplicate;
        if impairable && self.lost(u_loss) {
            return Decision::Drop;
        }

        // The bottleneck: the frame leaves it once it and everything before it are serialized.
        // With a limit, a frame finding the queue full is dropped there, as a router's tail
        // drop does, without taking link time (so an overload does not leave a phantom backlog).
        let sent = match self.spec.rate_bps {
            Some(bps) => {
                while self.backlog.front().is_some_and(|&t| t <= now) {
                    self.backlog.pop_front();
                }
                if self.spec.limit.is_some_and(|l| self.backlog.len() >= l) {
                    return Decision::Overflow;
                }
                let start = self.link_free_at.map_or(now, |t| t.max(now));
                let bits = len as u128 * 8;
                let nanos = (bits * 1_000_000_000).div_ceil(u128::from(bps));
                let done = start + Duration::from_nanos(nanos.try_into().unwrap_or(u64::MAX));
                self.link_free_at = Some(done);
                self.backlog.push_back(done);
                done
            }
            None => now,
        };

        if impairable && u_reorder < self.spec.reorder {
            return Decision::DeliverAt {
                at: sent,
                reordered: true,
                duplicate,
            };
        }
        let at = sent + self.spec.delay + self.spec.jitter.mul_f64(u_jitter);
        Decision::DeliverAt {
            at,
            reordered: false,
            duplicate,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Delay line (sans-IO)
// ---------------------------------------------------------------------------------------------

/// A frame waiting in the delay line.
#[derive(Debug)]
struct Scheduled {
    at: Instant,
    /// Arrival order, so frames due at the same instant leave in the order they came.
    seq: u64,
    frame: Vec<u8>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The delay line was at its `limit`; the frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("delay line full")]
pub struct QueueFull;

/// Frames scheduled for future delivery: a min-heap on (delivery instant, arrival order).
#[derive(Debug, Default)]
pub struct DelayLine {
    heap: BinaryHeap<Reverse<Scheduled>>,
    next_seq: u64,
    limit: Option<usize>,
}

impl DelayLine {
    /// An empty line holding at most `limit` frames (`None`: unbounded).
    pub fn new(limit: Option<usize>) -> Self {
        DelayLine {
            limit,
            ..DelayLine::default()
        }
    }

    /// Queues `frame` for delivery at `at`, unless the line is full.
    pub fn push(&mut self, at: Instant, frame: Vec<u8>) -> Result<(), QueueFull> {
        if self.limit.is_some_and(|l| self.heap.len() >= l) {
            return Err(QueueFull);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse(Scheduled { at, seq, frame }));
        Ok(())
    }

    /// When the next frame is due, if any is queued.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(s)| s.at)
    }

    /// Removes and returns the earliest frame if it is due at `now`.
    #[must_use]
    pub fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.next_due()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(s)| s.frame)
    }

    /// How many frames are queued.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------------------------

/// Counters of one direction, printed on exit.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DirectionStats {
    /// Frames written to the outgoing interface.
    pub forwarded: u64,
    /// Frames dropped by random loss.
    pub dropped_loss: u64,
    /// Frames dropped because the delay line was at its limit.
    pub dropped_limit: u64,
    /// Frames that skipped the delay line (the `reorder` probability).
    pub reordered: u64,
    /// Extra copies queued by `duplicate`.
    pub duplicated: u64,
    /// Frames the kernel refused to send (interface down, no buffer space, too big).
    pub tx_errors: u64,
    /// Frames larger than the 64 KiB receive buffer, dropped (offloads left on?).
    pub truncated: u64,
    /// Frames still in the delay line at exit, never sent.
    pub queued_at_exit: u64,
}

/// The one-line JSON printed with `--stats-json`.
#[derive(Debug, Serialize)]
struct Stats<'a> {
    up: &'a DirectionStats,
    down: &'a DirectionStats,
}

// ---------------------------------------------------------------------------------------------
// I/O driver
// ---------------------------------------------------------------------------------------------

/// Receive buffer size: the largest frame a veth can hand over with GSO/GRO still on. The lab
/// turns offloads off, but a bigger buffer costs nothing and turns a misconfiguration into a
/// counted `truncated` frame rather than a silently cut one.
const FRAME_BUF: usize = 65536;

/// Longest `ppoll` sleep with nothing queued: how quickly a signal that raced the loop's check
/// is noticed.
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// Frames read from one socket per loop turn, so one busy direction cannot starve the other or
/// postpone due transmissions for long.
const RX_BATCH: usize = 64;

/// Requested receive buffer per packet socket, so bursts survive while we transmit.
const SOCKET_RCVBUF: libc::c_int = 4 << 20;

/// Set by the SIGTERM/SIGINT handler; the loop exits when it sees it.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: anything else is not async-signal-safe.
    STOP.store(true, AtomicOrdering::SeqCst);
}

fn install_signal_handlers() -> anyhow::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only
        // stores to an atomic. No SA_RESTART, so a signal interrupts ppoll with EINTR at once.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error()).context("installing signal handlers");
            }
        }
    }
    Ok(())
}

/// An `AF_PACKET` raw socket bound to one interface, in promiscuous mode.
struct PacketSocket {
    fd: OwnedFd,
    name: String,
    ifindex: libc::c_int,
}

impl PacketSocket {
    fn open(name: &str) -> anyhow::Result<Self> {
        let cname =
            CString::new(name).with_context(|| format!("interface name {name:?} contains NUL"))?;
        // SAFETY: cname is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            bail!(
                "interface {name:?} not found in this network namespace \
                 (run voxlab netem inside the namespace that holds both interfaces)"
            );
        }
        let ifindex = ifindex as libc::c_int;

        // Protocol 0: the socket receives nothing until bound. Opening it with ETH_P_ALL would
        // briefly capture frames from every interface before bind() narrows it to ours.
        // SAFETY: plain syscall; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                bail!(
                    "cannot open a packet socket for interface {name:?}: {e} \
                     (voxlab netem needs root or CAP_NET_RAW)"
                );
            }
            return Err(e).with_context(|| format!("opening a packet socket for {name:?}"));
        }
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sock = PacketSocket {
            fd,
            name: name.to_owned(),
            ifindex,
        };

        // Do not read back our own transmissions (Linux 4.20+). Without it, every frame we send
        // on B would be read on B and sent back to A, looping forever; `recv` also filters
        // PACKET_OUTGOING, which covers older kernels.
        if let Err(e) = sock.setsockopt(libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, &1) {
            tracing::warn!(
                "PACKET_IGNORE_OUTGOING unavailable on {name}: {e}; filtering by packet type"
            );
        }
        // A bigger buffer absorbs bursts; FORCE (root) may exceed rmem_max, plain may not.
        if sock
            .setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &SOCKET_RCVBUF)
            .is_err()
        {
            let _ = sock.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, &SOCKET_RCVBUF);
        }

        let sll = sock.sockaddr(ETH_P_ALL_BE);
        // SAFETY: sll is a valid sockaddr_ll and the length matches it.
        let rc = unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("binding a packet socket to {name:?}"));
        }

        // A wire forwards frames for every MAC address, not only the veth's own.
        // SAFETY: zeroed packet_mreq is valid; the fields we need are set below.
        let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mreq.mr_ifindex = ifindex;
        mreq.mr_type = PACKET_MR_PROMISC as libc::c_ushort;
        sock.setsockopt(libc::SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq)
            .with_context(|| format!("setting {name:?} promiscuous"))?;
        Ok(sock)
    }

    fn setsockopt<T>(&self, level: libc::c_int, opt: libc::c_int, val: &T) -> io::Result<()> {
        // SAFETY: val points to a live T and the length is its size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                opt,
                (val as *const T).cast(),
                size_of::<T>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn sockaddr(&self, protocol_be: u16) -> libc::sockaddr_ll {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as libc::c_ushort;
        sll.sll_protocol = protocol_be;
        sll.sll_ifindex = self.ifindex;
        sll
    }

    /// Reads one frame without blocking. `Ok(None)`: nothing (more) to read now.
    fn recv<'b>(
        &self,
        buf: &'b mut [u8],
        stats: &mut DirectionStats,
    ) -> io::Result<Option<&'b [u8]>> {
        loop {
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // MSG_TRUNC makes a packet socket return the frame's real length, so an oversized
            // frame is detected rather than forwarded cut short.
            // SAFETY: buf and from are valid for the lengths passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) => Ok(None),
                    Some(libc::EINTR) => continue,
                    // The interface went down (sk_err is reported once); nothing to read.
                    Some(libc::ENETDOWN) => {
                        tracing::warn!("{} went down", self.name);
                        Ok(None)
                    }
                    _ => Err(e),
                };
            }
            if from.sll_pkttype == PACKET_OUTGOING {
                continue; // our own transmission, on kernels without PACKET_IGNORE_OUTGOING
            }
            let n = n as usize;
            if n > buf.len() {
                stats.truncated += 1;
                continue;
            }
            return Ok(Some(&buf[..n]));
        }
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        // The ethertype as sll_protocol gives the kernel the right skb->protocol on older
        // kernels that do not parse it from the frame. Both are already in network order.
        let proto_be = frame
            .get(12..14)
            .map_or(0, |b| u16::from_ne_bytes([b[0], b[1]]));
        let sll = self.sockaddr(proto_be);
        loop {
            // SAFETY: frame and sll are valid for the lengths passed.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }
}

// Constants of <linux/if_packet.h>, spelled out so we do not depend on which libc module
// re-exports them.
const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_MR_PROMISC: libc::c_int = 1;
const PACKET_OUTGOING: libc::c_uchar = 4;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// ETH_P_ALL in network byte order, as sockaddr_ll wants it.
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();

/// One forwarding direction: frames read from socket `rx` are impaired and sent on `tx`.
struct Direction {
    name: &'static str,
    rx: usize,
    tx: usize,
    impairer: Impairer,
    line: DelayLine,
    stats: DirectionStats,
}

impl Direction {
    fn new(name: &'static str, rx: usize, tx: usize, spec: Spec, seed: u64) -> Self {
        Direction {
            name,
            rx,
            tx,
            line: DelayLine::new(spec.delay_line_limit()),
            impairer: Impairer::new(spec, seed),
            stats: DirectionStats::default(),
        }
    }

    /// Impairs and queues one received frame.
    fn accept(&mut self, now: Instant, frame: &[u8]) {
        match self.impairer.decide(now, frame) {
            Decision::Drop => self.stats.dropped_loss += 1,
            Decision::Overflow => self.stats.dropped_limit += 1,
            Decision::DeliverAt {
                at,
                reordered,
                duplicate,
            } => {
                let copies = if duplicate { 2 } else { 1 };
                for copy in 0..copies {
                    match self.line.push(at, frame.to_vec()) {
                        Ok(()) if copy == 0 => self.stats.reordered += u64::from(reordered),
                        Ok(()) => self.stats.duplicated += 1,
                        Err(QueueFull) => self.stats.dropped_limit += 1,
                    }
                }
            }
        }
    }

    /// Sends every frame due at `now`.
    fn transmit_due(&mut self, now: Instant, sockets: &[PacketSocket; 2]) {
        let tx = &sockets[self.tx];
        while let Some(frame) = self.line.pop_due(now) {
            match tx.send(&frame) {
                Ok(()) => self.stats.forwarded += 1,
                Err(e) => {
                    // Interface down, ENOBUFS, EMSGSIZE: a wire drops the frame and carries on.
                    tracing::debug!("sending on {}: {e}", tx.name);
                    self.stats.tx_errors += 1;
                }
            }
        }
    }
}

/// Seed of the "down" direction's RNG, derived from `--seed` so the two directions draw
/// independent streams (the constant is the 64-bit golden ratio, a common seed mixer).
const DOWN_SEED_MIX: u64 = 0x9e37_79b9_7f4a_7c15;

/// Runs the forwarder until SIGTERM or SIGINT, then prints the counters.
pub fn run(args: NetemArgs) -> anyhow::Result<()> {
    let up_spec = args.up.unwrap_or_default();
    let down_spec = args.down.unwrap_or_default();
    if args.a == args.b {
        bail!(
            "--a and --b are both {:?}; a wire needs two interfaces",
            args.a
        );
    }
    let sockets = [PacketSocket::open(&args.a)?, PacketSocket::open(&args.b)?];
    install_signal_handlers()?;

    let mut dirs = [
        Direction::new("up", 0, 1, up_spec, args.seed),
        Direction::new("down", 1, 0, down_spec, args.seed ^ DOWN_SEED_MIX),
    ];
    eprintln!(
        "voxlab netem: {a} -> {b}: {up}; {b} -> {a}: {down}; seed {seed}",
        a = args.a,
        b = args.b,
        up = dirs[0].impairer.spec(),
        down = dirs[1].impairer.spec(),
        seed = args.seed,
    );

    let mut buf = vec![0u8; FRAME_BUF];
    while !STOP.load(AtomicOrdering::SeqCst) {
        let now = Instant::now();
        for d in &mut dirs {
            d.transmit_due(now, &sockets);
        }

        let next_due = dirs.iter().filter_map(|d| d.line.next_due()).min();
        let wait = next_due.map_or(IDLE_WAIT, |t| {
            t.saturating_duration_since(now).min(IDLE_WAIT)
        });
        let mut pfds = sockets.each_ref().map(|s| libc::pollfd {
            fd: s.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        // ppoll rather than poll: its timeout has nanosecond resolution, so delays are not
        // rounded up to whole milliseconds.
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: pfds and ts are valid for the duration of the call; no signal mask change.
        let rc = unsafe {
            libc::ppoll(
                pfds.as_mut_ptr(),
                pfds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue; // a signal: the loop condition decides
            }
            return Err(e).context("ppoll on the packet sockets");
        }

        for d in &mut dirs {
            if pfds[d.rx].revents == 0 {
                continue;
            }
            let rx = &sockets[d.rx];
            for _ in 0..RX_BATCH {
                let frame = rx
                    .recv(&mut buf, &mut d.stats)
                    .with_context(|| format!("reading from {}", rx.name))?;
                let Some(frame) = frame else { break };
                d.accept(Instant::now(), frame);
            }
        }
    }

    for d in &mut dirs {
        d.stats.queued_at_exit = d.line.len() as u64;
    }
    let [up, down] = &dirs;
    if args.stats_json {
        let line = serde_json::to_string(&Stats {
            up: &up.stats,
            down: &down.stats,
        })?;
        println!("{line}");
    } else {
        for (d, from, to) in [(up, &args.a, &args.b), (down, &args.b, &args.a)] {
            let s = &d.stats;
            eprintln!(
                "voxlab netem: {name} ({from} -> {to}): forwarded {}, dropped by loss {}, \
                 dropped by limit {}, reordered {}, duplicated {}, tx errors {}, truncated {}, \
                 queued at exit {}",
                s.forwarded,
                s.dropped_loss,
                s.dropped_limit,
                s.reordered,
                s.duplicated,
                s.tx_errors,
                s.truncated,
                s.queued_at_exit,
                name = d.name,
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 12] = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = MAC.to_vec();
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// A minimal IPv4/UDP-ish frame (only the ethertype matters to the impairer).
    fn ipv4() -> Vec<u8> {
        eth(ETHERTYPE_IPV4, &[0x45; 28])
    }

    fn arp() -> Vec<u8> {
        eth(ETHERTYPE_ARP, &[0; 28])
    }

    /// An IPv6 frame carrying ICMPv6 of the given type.
    fn icmpv6(icmp_type: u8) -> Vec<u8> {
        let mut ip = vec![0u8; 48];
        ip[0] = 0x60;
        ip[6] = IPPROTO_ICMPV6;
        ip[40] = icmp_type;
        eth(ETHERTYPE_IPV6, &ip)
    }

    fn spec(s: &str) -> Spec {
        s.parse().unwrap()
    }

    fn at(d: Decision) -> Option<Instant> {
        match d {
            Decision::Drop | Decision::Overflow => None,
            Decision::DeliverAt { at, .. } => Some(at),
        }
    }

    #[test]
    fn spec_parsing() {
        let ms = Duration::from_millis;
        let cases: &[(&str, Result<Spec, SpecError>)] = &[
            ("", Ok(Spec::default())),
            (
                "delay=75ms,jitter=10ms,loss=0.2,reorder=0.05",
                Ok(Spec {
                    delay: ms(75),
                    jitter: ms(10),
                    loss: 0.2,
                    reorder: 0.05,
                    ..Spec::default()
                }),
            ),
            (
                " delay = 1.5s , loss=20% ",
                Ok(Spec {
                    delay: ms(1500),
                    loss: 0.2,
                    ..Spec::default()
                }),
            ),
            (
                "delay=500us,rate=10mbit,limit=50",
                Ok(Spec {
                    delay: Duration::from_micros(500),
                    rate_bps: Some(10_000_000),
                    limit: Some(50),
                    ..Spec::default()
                }),
            ),
            ("delay=0", Ok(Spec::default())),
            (
                "rate=64000",
                Ok(Spec {
                    rate_bps: Some(64_000),
                    ..Spec::default()
                }),
            ),
            (
                "delay=75",
                Err(SpecError::BadValue {
                    key: "delay".into(),
                    value: "75".into(),
                    why: DUR_HELP,
                }),
            ),
            (
                "loss=1.5",
                Err(SpecError::BadValue {
                    key: "loss".into(),
                    value: "1.5".into(),
                    why: P_HELP,
                }),
            ),
            (
                "rate=1mbps",
                Err(SpecError::BadValue {
                    key: "rate".into(),
                    value: "1mbps".into(),
                    why: RATE_HELP,
                }),
            ),
            (
                "limit=-1",
                Err(SpecError::BadValue {
                    key: "limit".into(),
                    value: "-1".into(),
                    why: "a frame count",
                }),
            ),
            ("delay", Err(SpecError::NotKeyValue("delay".into()))),
            ("latency=5ms", Err(SpecError::UnknownKey("latency".into()))),
            (
                "loss=0.1,loss=0.2",
                Err(SpecError::Duplicate("loss".into())),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&input.parse::<Spec>(), want, "input {input:?}");
        }
    }

    /// `delay=99999999999999999999999s` panicked in `Duration::from_secs_f64` (overflow); a
    /// delay that parses but would overflow `Instant` arithmetic later is refused too.
    #[test]
    fn overflowing_duration_is_a_bad_value_not_a_panic() {
        for (key, value) in [
            ("delay", "99999999999999999999999s"),
            ("jitter", "99999999999999999999999s"),
            ("delay", "1e400s"),
            ("delay", "3600.001s"),
            ("jitter", "18446744073709551616s"),
        ] {
            let input = format!("{key}={value}");
            assert_eq!(
                input.parse::<Spec>(),
                Err(SpecError::BadValue {
                    key: key.into(),
                    value: value.into(),
                    why: DUR_HELP,
                }),
                "input {input:?}"
            );
        }
        assert_eq!(
            "delay=3600s".parse::<Spec>().map(|s| s.delay),
            Ok(MAX_DELAY)
        );
    }

    #[test]
    fn spec_display_round_trips() {
        for s in [
            "",
            "delay=75ms,jitter=10ms,loss=0.2,reorder=0.05,duplicate=0.01,rate=10mbit,limit=7",
        ] {
            let parsed = spec(s);
            assert_eq!(spec(&parsed.to_string().replace("none", "")), parsed);
        }
    }

    #[test]
    fn classification() {
        let mut vlan_arp = MAC.to_vec();
        vlan_arp.extend_from_slice(&[0x81, 0x00, 0x00, 0x05, 0x08, 0x06]);
        let cases: &[(&str, Vec<u8>, FrameKind)] = &[
            ("ipv4", ipv4(), FrameKind::Ip),
            ("arp", arp(), FrameKind::AddressResolution),
            ("vlan-tagged arp", vlan_arp, FrameKind::AddressResolution),
            (
                "router solicitation",
                icmpv6(133),
                FrameKind::AddressResolution,
            ),
            (
                "neighbour solicitation",
                icmpv6(135),
                FrameKind::AddressResolution,
            ),
            ("redirect", icmpv6(137), FrameKind::AddressResolution),
            ("echo request", icmpv6(128), FrameKind::Ip),
            ("mld report", icmpv6(143), FrameKind::Ip),
            (
                "truncated ipv6",
                eth(ETHERTYPE_IPV6, &[0x60, 0, 0]),
                FrameKind::Ip,
            ),
            ("lldp", eth(0x88cc, &[0; 20]), FrameKind::Other),
            ("runt", vec![0; 6], FrameKind::Other),
        ];
        for (name, frame, want) in cases {
            assert_eq!(FrameKind::of(frame), *want, "{name}");
        }
    }

    #[test]
    fn same_seed_same_decisions() {
        let s = spec("delay=10ms,jitter=20ms,loss=0.3,reorder=0.1");
        let t0 = Instant::now();
        let run = |seed| {
            let mut imp = Impairer::new(s, seed);
            (0..1000)
                .map(|i| imp.decide(t0 + Duration::from_millis(i), &ipv4()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn loss_rate_over_100k_frames() {
        let mut imp = Impairer::new(spec("loss=0.2"), 42);
        let now = Instant::now();
        let n = 100_000;
        let lost = (0..n)
            .filter(|_| imp.decide(now, &ipv4()) == Decision::Drop)
            .count();
        // Binomial sd = sqrt(n p (1-p)) ≈ 126 frames; allow about 4 sd.
        let rate = lost as f64 / n as f64;
        assert!((rate - 0.2).abs() < 0.005, "loss rate {rate}");
    }

    /// A bottleneck with a queue limit drops what finds the queue full (tail drop), and a
    /// dropped frame takes no link time: once the overload ends the queue is gone at once.
    #[test]
    fn a_full_bottleneck_queue_drops_without_a_phantom_backlog() {
        // 1000-byte frames at 80 kbit/s: 100 ms each; a queue of 3.
        let mut imp = Impairer::new(spec("rate=80kbit,limit=3"), 1);
        let t0 = Instant::now();
        let frame = {
            let mut f = ipv4();
            f.resize(1000, 0);
            f
        };
        let ds: Vec<Decision> = (0..10).map(|_| imp.decide(t0, &frame)).collect();
        assert_eq!(ds.iter().filter(|d| **d == Decision::Overflow).count(), 7);
        // 300 ms later the three queued frames have left: a new one goes straight out.
        let later = t0 + Duration::from_millis(300);
        assert_eq!(
            at(imp.decide(later, &frame)),
            Some(later + Duration::from_millis(100))
        );
    }

    /// Gilbert–Elliott: the average is the loss asked for, and losses come in runs of the
    /// mean burst length (independent 5% loss would give runs of 1.05).
    #[test]
    fn bursty_loss_keeps_its_average_and_burst_length() {
        let mut imp = Impairer::new(spec("loss=5%,burst=3"), 42);
        let now = Instant::now();
        let n = 200_000;
        let drops: Vec<bool> = (0..n)
            .map(|_| imp.decide(now, &ipv4()) == Decision::Drop)
            .collect();
        let lost = drops.iter().filter(|d| **d).count();
        let runs = drops.windows(2).filter(|w| w[1] && !w[0]).count();
        let rate = lost as f64 / n as f64;
        let mean_run = lost as f64 / runs as f64;
        assert!((rate - 0.05).abs() < 0.005, "loss rate {rate}");
        assert!((mean_run - 3.0).abs() < 0.2, "mean burst {mean_run}");
        assert_eq!(
            "loss=5%,burst=3".parse::<Spec>().unwrap().to_string(),
            "loss=0.05,burst=3"
        );
        assert!("loss=5%,burst=0.5".parse::<Spec>().is_err());
    }

    #[test]
    fn delay_and_jitter_bounds() {
        let mut imp = Impairer::new(spec("delay=50ms,jitter=10ms"), 1);
        let now = Instant::now();
        let (mut min, mut max) = (Duration::MAX, Duration::ZERO);
        for _ in 0..10_000 {
            let d = at(imp.decide(now, &ipv4())).unwrap() - now;
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(60),
                "{d:?}"
            );
            min = min.min(d);
            max = max.max(d);
        }
        // The draws cover the range, not just one end of it.
        assert!(min < Duration::from_millis(51) && max > Duration::from_millis(59));
    }

    #[test]
    fn reorder_skips_the_delay() {
        let mut imp = Impairer::new(spec("delay=50ms,reorder=0.25"), 3);
        let now = Instant::now();
        let mut skipped = 0;
        for _ in 0..10_000 {
            match imp.decide(now, &ipv4()) {
                Decision::DeliverAt {
                    at,
                    reordered: true,
                    ..
                } => {
                    assert_eq!(at, now);
                    skipped += 1;
                }
                Decision::DeliverAt {
                    at,
                    reordered: false,
                    ..
                } => {
                    assert_eq!(at, now + Duration::from_millis(50));
                }
                Decision::Drop | Decision::Overflow => panic!("no loss configured"),
            }
        }
        assert!((2200..2800).contains(&skipped), "{skipped}");
    }

    #[test]
    fn duplicate_rate_over_10k_frames() {
        let mut imp = Impairer::new(spec("delay=5ms,duplicate=0.1"), 9);
        let now = Instant::now();
        let twice = (0..10_000)
            .filter(|_| {
                matches!(
                    imp.decide(now, &ipv4()),
                    Decision::DeliverAt {
                        duplicate: true,
                        ..
                    }
                )
            })
            .count();
        // Binomial sd = 30 frames; allow about 4 sd.
        assert!((880..1120).contains(&twice), "{twice}");
    }

    #[test]
    fn address_resolution_is_never_dropped_or_reordered_but_is_delayed() {
        let mut imp = Impairer::new(spec("delay=30ms,loss=1,reorder=1,duplicate=1"), 5);
        let now = Instant::now();
        for frame in [arp(), icmpv6(135), icmpv6(136), eth(0x88cc, &[0; 20])] {
            for _ in 0..100 {
                assert_eq!(
                    imp.decide(now, &frame),
                    Decision::DeliverAt {
                        at: now + Duration::from_millis(30),
                        reordered: false,
                        duplicate: false,
                    }
                );
            }
        }
        // IP traffic, including ICMPv6 outside neighbour discovery, is dropped.
        assert_eq!(imp.decide(now, &ipv4()), Decision::Drop);
        assert_eq!(imp.decide(now, &icmpv6(128)), Decision::Drop);
    }

    #[test]
    fn rate_serializes_frames_back_to_back() {
        // 1 Mbit/s: a 125-byte frame takes exactly 1 ms on the wire.
        let mut imp = Impairer::new(spec("rate=1mbit,delay=10ms"), 0);
        let now = Instant::now();
        let frame = eth(ETHERTYPE_IPV4, &[0; 111]);
        assert_eq!(frame.len(), 125);
        for i in 1..=5u64 {
            let want = now + Duration::from_millis(10 + i);
            assert_eq!(at(imp.decide(now, &frame)), Some(want));
        }
        // After the link has drained, a frame only waits for its own serialization.
        let later = now + Duration::from_secs(1);
        assert_eq!(
            at(imp.decide(later, &frame)),
            Some(later + Duration::from_millis(11))
        );
    }

    #[test]
    fn delay_line_orders_by_time_then_arrival() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut line = DelayLine::new(None);
        for (i, t) in [5u64, 1, 5, 3, 5, 1].into_iter().enumerate() {
            line.push(t0 + ms(t), vec![i as u8]).unwrap();
        }
        assert_eq!(line.next_due(), Some(t0 + ms(1)));
        assert_eq!(line.pop_due(t0), None, "nothing due before 1 ms");
        let mut out = Vec::new();
        while let Some(f) = line.pop_due(t0 + ms(10)) {
            out.push(f[0]);
        }
        // Equal instants (1 ms: frames 1, 5; 5 ms: frames 0, 2, 4) leave in arrival order.
        assert_eq!(out, [1, 5, 3, 0, 2, 4]);
        assert!(line.is_empty());
    }

    #[test]
    fn delay_line_limit() {
        let now = Instant::now();
        let mut line = DelayLine::new(Some(2));
        assert_eq!(line.push(now, vec![0]), Ok(()));
        assert_eq!(line.push(now, vec![1]), Ok(()));
        assert_eq!(line.push(now, vec![2]), Err(QueueFull));
        assert_eq!(line.pop_due(now), Some(vec![0]));
        assert_eq!(line.push(now, vec![3]), Ok(()));
        assert_eq!(line.len(), 2);
    }

    #[test]
    fn direction_counts() {
        let mut d = Direction::new("up", 0, 1, spec("loss=0.5,reorder=0.5,limit=10"), 9);
        let now = Instant::now();
        for _ in 0..1000 {
            d.accept(now, &ipv4());
        }
        let s = &d.stats;
        assert_eq!(s.dropped_loss + s.dropped_limit + d.line.len() as u64, 1000);
        assert_eq!(d.line.len(), 10);
        assert!(s.reordered <= 10 && s.reordered > 0);
    }
}
