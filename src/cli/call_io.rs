//! What `dial` and `answer` share for calls: starting the endpoint on its socket, the events as
//! JSON lines, audio from files/pipes/commands into a call and out of it, control commands, and
//! the exit status of an ended call.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::Context;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::client::DirectoryArgs;
use crate::audio::{self, Conform, Hints, SinkSpec, Spec};
use crate::call::endpoint::{Endpoint, EndpointConfig, EndpointEvent};
use crate::call::ice::{CandidateKind, PathInfo};
use crate::call::message::CallId;
use crate::call::phone::{EndReason, Phone, PhoneConfig};
use crate::client::{Agent, AgentConfig, AgentEvent};
use crate::identity::{Contacts, Identity};
use crate::media::TraceRecord;
use crate::net::drivers::call::{
    CallAudio, CallCommand, DriverEvent, FRAME, host_addresses, run_endpoint,
};
use crate::net::drivers::client::{read_tcp_hints, update_tcp_hints};
use crate::net::{Shutdown, ShutdownSignal};

/// Exit statuses of a call (dial; answer --exec children see the reason in the event).
pub const EXIT_REJECTED: u8 = 6;
pub const EXIT_BUSY: u8 = 7;
pub const EXIT_NO_ANSWER: u8 = 8;
pub const EXIT_NO_PATH: u8 = 9;
pub const EXIT_CANCELLED: u8 = 11;

/// The exit status for a call that ended with `reason` (offline 3, unknown 4: the lookup's).
pub fn exit_code(reason: &EndReason) -> u8 {
    match reason {
        EndReason::HungUp | EndReason::PeerHungUp | EndReason::Replaced(_) => 0,
        EndReason::Rejected(_) | EndReason::Declined => EXIT_REJECTED,
        EndReason::Busy => EXIT_BUSY,
        EndReason::NoAnswer => EXIT_NO_ANSWER,
        EndReason::UnknownUser => super::dial::EXIT_UNKNOWN,
        EndReason::Offline => super::dial::EXIT_OFFLINE,
        EndReason::NoPath(_) => EXIT_NO_PATH,
        EndReason::Cancelled => EXIT_CANCELLED,
    }
}

/// A running endpoint.
pub struct RunningCall {
    pub commands: mpsc::Sender<CallCommand>,
    pub events: mpsc::Receiver<DriverEvent>,
    pub stop: ShutdownSignal,
    pub task: tokio::task::JoinHandle<std::io::Result<Endpoint>>,
}

/// Starts an endpoint for `identity`: the agent registers (no standby for a one-call `dial`),
/// the phone knows the contacts, the socket is bound to `--bind`. `clock_ppm` makes the audio
/// clock (capture and playout) run that much fast (a test knob: clock drift between two ends
/// on one machine); 0 normally.
pub async fn start_endpoint(
    args: &DirectoryArgs,
    identity: Identity,
    mut agent_config: AgentConfig,
    mut phone: PhoneConfig,
    config: EndpointConfig,
    clock_ppm: f64,
    first: Option<CallCommand>,
) -> anyhow::Result<RunningCall> {
    agent_config.supernodes = args.supernodes().await?;
    // The registration (and a fresh dial's invite, `first`) in the handshake: see
    // `AgentConfig::early_data`.
    agent_config.early_data = true;
    if let Ok(p) = args.tcp_hints_path() {
        agent_config.race_tcp_at_once = read_tcp_hints(&p);
    }
    let socket = tokio::net::UdpSocket::bind(args.bind)
        .await
        .with_context(|| format!("cannot bind UDP {}", args.bind))?;
    let bound = socket.local_addr()?;
    let unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    // Record sequence numbers from the millisecond clock (see `AgentConfig::first_seq`).
    agent_config.first_seq = Some(unix.as_millis() as u64);
    let unix = unix.as_secs();
    if let Some(p) = args.contacts_path()
        && p.exists()
    {
        let c = Contacts::load(&p).with_context(|| format!("contacts {}", p.display()))?;
        phone.contacts.extend(c.iter().map(|(_, id)| *id));
    }
    let now = Instant::now();
    let agent = Agent::new(identity.clone(), agent_config, now, unix, rand::random());
    let phone = Phone::new(identity, phone, now, unix, rand::random());
    let ep = Endpoint::new(agent, phone, config, host_addresses(bound));
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    let (stop, shutdown): (ShutdownSignal, Shutdown) = ShutdownSignal::new();
    let tick = crate::net::drivers::call::audio_tick(clock_ppm);
    let task = tokio::spawn(run_endpoint(
        ep, socket, cmd_rx, ev_tx, shutdown, tick, first,
    ));
    Ok(RunningCall {
        commands: cmd_tx,
        events: ev_rx,
        stop,
        task,
    })
}

/// Keeps what the run learnt about reaching supernodes over UDP or only TCP, for the next
/// run's start ([`AgentConfig::race_tcp_at_once`]). Best effort: a read-only home costs only
/// the next run's head start.
pub fn keep_transports(args: &DirectoryArgs, ep: &Endpoint) {
    if let Ok(p) = args.tcp_hints_path() {
        let (tcp, udp) = ep.agent().transports_learnt();
        if let Err(e) = update_tcp_hints(&p, &tcp, &udp) {
            tracing::debug!("cannot update {}: {e}", p.display());
        }
    }
}

/// The path and media flags `dial` and `answer` share.
#[derive(Clone, Debug, clap::Args)]
pub struct CallMediaArgs {
    /// Offer the peer no address of ours, only a relay's: the call goes through the relay
    /// (privacy; or to use the relay path on purpose).
    #[arg(long = "relay-only")]
    pub relay_only: bool,

    /// Write every audio packet sent (its Opus bytes, when) and received (timestamp, arrival,
    /// late or not), and when each frame went to playout, to this file as JSON lines: what
    /// scripts/bench-media decodes offline and scripts/bench-delay times.
    #[arg(long = "media-trace", value_name = "FILE")]
    pub media_trace: Option<PathBuf>,

    /// Discontinuous transmission: in silence (and while muted) send a packet only every
    /// 400 ms; the far end plays comfort noise. Saves bandwidth; consent checks and keepalives
    /// keep the path open meanwhile.
    #[arg(long)]
    pub dtx: bool,

    /// Never send redundant audio. By default, while the far end reports random loss on a
    /// path with room, each packet also carries the one before (RFC 2198), so a lost packet
    /// plays whole: twice the audio payload (64 kbit/s instead of 32). Without it, the sender
    /// codes Opus's in-band FEC instead (coarser, at 48 kbit/s).
    #[arg(long = "no-redundancy")]
    pub no_redundancy: bool,
}

impl CallMediaArgs {
    /// The endpoint settings the flags choose.
    pub fn endpoint_config(&self) -> EndpointConfig {
        let mut c = EndpointConfig {
            relay_only: self.relay_only,
            ..EndpointConfig::default()
        };
        c.media.trace = self.media_trace.is_some();
        c.media.opus.dtx = self.dtx;
        c.media.redundancy = !self.no_redundancy;
        c
    }
}

/// Where events go: stdout, or a file when stdout carries audio. Media trace lines (`"event":
/// "trace"`, only with `--media-trace`) go to their own file instead.
pub struct Events {
    out: Box<dyn Write + Send>,
    trace: Option<std::io::BufWriter<std::fs::File>>,
}

impl Events {
    pub fn open(path: Option<&Path>) -> anyhow::Result<Events> {
        let out: Box<dyn Write + Send> = match path {
            None => Box::new(std::io::stdout()),
            Some(p) if audio::stream::is_std(p) => Box::new(std::io::stdout()),
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("cannot open the events file {}", p.display()))?,
            ),
        };
        Ok(Events { out, trace: None })
    }

    /// Sends media trace lines to `path` (created or truncated).
    pub fn trace_to(&mut self, path: &Path) -> anyhow::Result<()> {
        let f = std::fs::File::create(path)
            .with_context(|| format!("cannot create the media trace {}", path.display()))?;
        self.trace = Some(std::io::BufWriter::new(f));
        Ok(())
    }

    /// Writes one event line; false when nobody reads any more.
    pub fn emit(&mut self, v: Value) -> bool {
        if v["event"] == "trace" {
            // Buffered: 100 lines a second per call; flushed when the program ends.
            if let Some(t) = &mut self.trace {
                let _ = writeln!(t, "{v}");
            }
            return true;
        }
        writeln!(self.out, "{v}")
            .and_then(|_| self.out.flush())
            .is_ok()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        if let Some(t) = &mut self.trace {
            let _ = t.flush();
        }
    }
}

/// Lower-case hex of `bytes` (media trace payloads).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn kind(k: CandidateKind) -> &'static str {
    match k {
        CandidateKind::Host => "host",
        CandidateKind::ServerReflexive => "srflx",
        CandidateKind::PeerReflexive => "prflx",
        CandidateKind::Relayed => "relay",
    }
}

/// A path as JSON: direct or relayed, both ends' candidate types, addresses, round trip.
pub fn path_json(p: &PathInfo) -> Value {
    json!({
        "path": if p.relayed { "relayed" } else { "direct" },
        "local": {"type": kind(p.local_kind), "addr": p.route.local().to_string(), "mapped": p.mapped.map(|m| m.to_string())},
        "remote": {"type": kind(p.remote_kind), "addr": p.remote.to_string()},
        "rtt_ms": p.rtt.map(|r| r.as_secs_f64() * 1000.0),
    })
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

/// The JSON line for a driver event (`since`: when the call was placed or rang, for setup
/// times), or None for what is not reported.
pub fn event_json(ev: &DriverEvent, since: Option<Instant>) -> Option<Value> {
    let ms = || since.map(|t| (t.elapsed().as_secs_f64() * 1000.0 * 10.0).round() / 10.0);
    let v = Some(match ev {
        DriverEvent::Endpoint(e) => match e {
            EndpointEvent::Agent(a) => match a {
                AgentEvent::Registered {
                    supernode,
                    addr,
                    failover,
                } => {
                    json!({"event": "registered", "supernode": supernode.to_string(), "addr": addr, "failover": failover})
                }
                AgentEvent::Presence {
                    user,
                    online,
                    last_seen,
                    stale,
                } => {
                    json!({"event": "presence", "user": user.to_string(), "online": online, "last_seen": last_seen, "stale": stale})
                }
                AgentEvent::Claimed { name } => json!({"event": "claimed", "name": name}),
                AgentEvent::Error { message } => json!({"event": "error", "message": message}),
                _ => return None,
            },
            EndpointEvent::Incoming { call, from } => {
                json!({"event": "incoming", "call": call.to_string(), "from": from.to_string(), "at": unix_ms()})
            }
            EndpointEvent::Ringing { call } => {
                json!({"event": "ringing", "call": call.to_string(), "ms": ms()})
            }
            EndpointEvent::Answered { call } => {
                json!({"event": "answered", "call": call.to_string(), "ms": ms()})
            }
            EndpointEvent::Connected { call, path, sas } => merge(
                json!({"event": "connected", "call": call.to_string(), "sas": sas, "ms": ms()}),
                path.as_ref().map(path_json).unwrap_or(Value::Null),
            ),
            EndpointEvent::Path { call, path, reason } => merge(
                json!({"event": "path", "call": call.to_string(), "reason": reason.map(|r| format!("{r:?}").to_lowercase()), "ms": ms()}),
                path_json(path),
            ),
            EndpointEvent::PathLost { call } => {
                json!({"event": "path-lost", "call": call.to_string()})
            }
            EndpointEvent::Held { call, held } => {
                json!({"event": if *held { "held" } else { "resumed" }, "call": call.to_string()})
            }
            EndpointEvent::Dtmf { call, digit } => {
                json!({"event": "dtmf", "call": call.to_string(), "digit": digit.digit.to_string(), "duration_ms": digit.duration_ms})
            }
            EndpointEvent::Report { .. } => return None,
            EndpointEvent::Stats { call, stats: s } => {
                let q = crate::media::Quality::of(s);
                let r1 = |x: f64| (x * 10.0).round() / 10.0;
                json!({
                    "event": "stats", "call": call.to_string(),
                    "sent": s.sent.audio_packets, "received": s.received.audio_packets,
                    "lost": s.received.lost, "jitter_ms": s.received.jitter_ms,
                    "rtt_ms": s.rtt_ms, "dropped": s.drops.total(), "forged": s.drops.forged,
                    "replayed": s.drops.duplicate + s.drops.too_old,
                    "concealed": s.playout.plc + s.playout.expand, "bitrate": s.bitrate,
                    "buffer_ms": r1(s.playout.delay_ms),
                    "drift_ppm": s.playout.drift_ppm.round(),
                    "accelerated": s.playout.accelerate,
                    "expanded": s.playout.expand, "fec_recovered": s.playout.fec,
                    "red_sent": s.sent.red_packets, "red_recovered": s.playout.red_filled,
                    "loss_percent": r1(q.loss_percent),
                    "unrecovered_percent": r1(q.unrecovered_percent),
                    "concealed_percent": r1(q.concealed_percent),
                    "delay_ms": r1(q.delay_ms),
                    "r_factor": r1(q.r_factor),
                    "mos": (q.mos * 100.0).round() / 100.0,
                })
            }
            EndpointEvent::Trace { call, record } => match record {
                TraceRecord::Sent { ts, opus, red, at } => {
                    json!({"event": "trace", "call": call.to_string(), "dir": "sent", "ts": ts, "opus": hex(opus), "red": red, "unix_ms": unix_ms_of(*at)})
                }
                TraceRecord::Received {
                    ts,
                    at_ms,
                    late,
                    at,
                } => {
                    json!({"event": "trace", "call": call.to_string(), "dir": "received", "ts": ts, "at_ms": at_ms, "late": late, "unix_ms": unix_ms_of(*at)})
                }
                TraceRecord::Played { samples, at } => {
                    json!({"event": "trace", "call": call.to_string(), "dir": "played", "samples": samples, "unix_ms": unix_ms_of(*at)})
                }
            },
            EndpointEvent::Relay { relayed, server } => {
                json!({"event": "relay", "relayed": relayed.to_string(), "server": server.to_string()})
            }
            EndpointEvent::RelayChoice { ranking } => {
                // Milliseconds to the microsecond, as measured.
                let ms = |d: std::time::Duration| d.as_micros() as f64 / 1000.0;
                let ranked: Vec<Value> = ranking
                    .iter()
                    .map(|s| json!({"relay": s.m.relay.to_string(), "server": s.m.server.to_string(), "rtt_ms": ms(s.m.rtt), "far_rtt_ms": s.m.far_rtt.map(ms), "load": s.m.load, "score": (s.score_ms * 1000.0).round() / 1000.0}))
                    .collect();
                json!({"event": "relay-choice", "active": ranked.first().map(|r| r["relay"].clone()), "standby": ranked.get(1).map(|r| r["relay"].clone()), "ranking": ranked})
            }
            EndpointEvent::Ended { call, reason } => {
                let detail = match reason {
                    EndReason::Rejected(s) | EndReason::NoPath(s) => Some(s.clone()),
                    EndReason::Replaced(c) => Some(c.to_string()),
                    _ => None,
                };
                json!({"event": "ended", "call": call.to_string(), "reason": reason.code(), "detail": detail, "exit": exit_code(reason)})
            }
        },
        DriverEvent::DialFailed(e) => {
            json!({"event": "error", "message": format!("cannot dial: {e}")})
        }
        DriverEvent::Refused(e) => json!({"event": "error", "message": e}),
        DriverEvent::CaptureEnded(call) => json!({"event": "play-ended", "call": call.to_string()}),
        DriverEvent::Dialed(call) => {
            json!({"event": "dialing", "call": call.to_string(), "ms": ms()})
        }
    });
    // Set-up moments also carry the wall clock, so that times taken by two processes (the
    // callee's accept, the caller's first media) can be compared on one host.
    v.map(|mut v| {
        if v.get("ms").is_some() {
            v["at"] = json!(unix_ms());
        }
        v
    })
}

/// The call an event is about, if any.
pub fn call_of(ev: &DriverEvent) -> Option<CallId> {
    Some(match ev {
        DriverEvent::Endpoint(e) => match e {
            EndpointEvent::Incoming { call, .. }
            | EndpointEvent::Ringing { call }
            | EndpointEvent::Answered { call }
            | EndpointEvent::Connected { call, .. }
            | EndpointEvent::Path { call, .. }
            | EndpointEvent::PathLost { call }
            | EndpointEvent::Held { call, .. }
            | EndpointEvent::Dtmf { call, .. }
            | EndpointEvent::Report { call, .. }
            | EndpointEvent::Stats { call, .. }
            | EndpointEvent::Trace { call, .. }
            | EndpointEvent::Ended { call, .. } => *call,
            EndpointEvent::Agent(_)
            | EndpointEvent::Relay { .. }
            | EndpointEvent::RelayChoice { .. } => return None,
        },
        DriverEvent::CaptureEnded(call) | DriverEvent::Dialed(call) => *call,
        DriverEvent::DialFailed(_) | DriverEvent::Refused(_) => return None,
    })
}

/// The wall-clock time of `at`, in ms since the epoch (0.01 ms steps): trace records of two
/// processes on one machine compare on it.
fn unix_ms_of(at: Instant) -> f64 {
    let ago = Instant::now().saturating_duration_since(at).as_secs_f64() * 1000.0;
    ((unix_ms() - ago) * 100.0).round() / 100.0
}

/// The wall clock in Unix milliseconds (0.1 ms steps).
pub fn unix_ms() -> f64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// The call format: 48 kHz mono.
fn call_spec() -> Spec {
    Spec {
        rate: audio::CALL_RATE,
        channels: audio::CALL_CHANNELS,
    }
}

/// Reads `path` (`-`: stdin) on a thread, converted to 20 ms call frames; the channel's small
/// capacity lets the driver's tick pace it.
pub fn play_file(path: &Path) -> anyhow::Result<mpsc::Receiver<Vec<f32>>> {
    let mut src = audio::open_source(path, Hints::default())
        .with_context(|| format!("cannot play {}", path.display()))?;
    src.prefer_rate(audio::CALL_RATE);
    let mut conform = Conform::new(src.spec(), call_spec());
    let (tx, rx) = mpsc::channel(3);
    std::thread::spawn(move || {
        let (mut raw, mut out) = (Vec::new(), Vec::new());
        loop {
            raw.clear();
            let n = match src.read(&mut raw, FRAME) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!("play: {e}");
                    0
                }
            };
            if n == 0 {
                conform.flush(&mut out);
            } else {
                conform.process(&raw, &mut out);
            }
            while out.len() >= FRAME || (n == 0 && !out.is_empty()) {
                let mut frame: Vec<f32> = out.drain(..FRAME.min(out.len())).collect();
                frame.resize(FRAME, 0.0);
                if tx.blocking_send(frame).is_err() {
                    return;
                }
            }
            if n == 0 {
                return;
            }
        }
    });
    Ok(rx)
}

/// Frames (20 ms) of call audio a recording may fall behind by.
const RECORD_BACKLOG: usize = 1500;

/// Writes call audio to `path` (`-`: stdout, raw PCM) on a thread, finished when the channel
/// closes. Returns the channel and the thread (join it to be sure the file is complete).
pub fn record_file(
    path: &Path,
) -> anyhow::Result<(mpsc::Sender<Vec<f32>>, std::thread::JoinHandle<()>)> {
    let spec = SinkSpec::resolve(
        path,
        Hints::default(),
        call_spec(),
        Some(audio::CALL_SAMPLE),
        audio::EncodeSettings::default(),
    )?;
    let mut sink = audio::open_sink(path, spec)
        .with_context(|| format!("cannot record to {}", path.display()))?;
    // The call's playout does not wait for the file: what the writer has not taken yet waits
    // here. Half a minute (5.8 MB) rides out a stalled disk (writeback under a build's load
    // can block a write for seconds); only a longer stall loses audio, and the driver counts it.
    let (tx, mut rx) = mpsc::channel::<Vec<f32>>(RECORD_BACKLOG);
    let name = path.display().to_string();
    let t = std::thread::spawn(move || {
        while let Some(frame) = rx.blocking_recv() {
            if let Err(e) = sink.write(&frame).and_then(|_| sink.flush()) {
                tracing::warn!("record {name}: {e}");
                return;
            }
        }
        if let Err(e) = sink.finish() {
            tracing::warn!("record {name}: {e}");
        }
    });
    Ok((tx, t))
}

/// Runs `cmd` (through `sh -c`) for a call, with the call's audio on its stdin (what the peer
/// says) and its stdout (what we say) as raw PCM, 48 kHz mono s16le, like inetd hands a socket
/// to a program; the call is described in its environment.
pub fn exec_for_call(
    cmd: &str,
    call: CallId,
    peer: &str,
    me: &str,
) -> anyhow::Result<(CallAudio, std::process::Child)> {
    use std::process::{Command, Stdio};
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("VOXMESH_CALL", call.to_string())
        .env("VOXMESH_PEER", peer)
        .env("VOXMESH_USER", me)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run '{cmd}'"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let (cap_tx, cap_rx) = mpsc::channel(3);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut bytes = vec![0u8; FRAME * 2];
        loop {
            if stdout.read_exact(&mut bytes).is_err() {
                return;
            }
            let mut frame = Vec::with_capacity(FRAME);
            audio::decode_samples(audio::SampleFormat::S16, &bytes, &mut frame);
            if cap_tx.blocking_send(frame).is_err() {
                return;
            }
        }
    });
    let (play_tx, mut play_rx) = mpsc::channel::<Vec<f32>>(50);
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        while let Some(frame) = play_rx.blocking_recv() {
            bytes.clear();
            audio::encode_samples(audio::SampleFormat::S16, &frame, &mut bytes);
            if stdin.write_all(&bytes).is_err() {
                return;
            }
        }
    });
    Ok((
        CallAudio {
            capture: Some(cap_rx),
            playback: Some(play_tx),
        },
        child,
    ))
}

/// A control command, one JSON object per line: `{"cmd":"hangup"}`, `{"cmd":"dtmf","digits":"12#"}`,
/// `mute`, `unmute`, `hold`, `resume`, `accept`, `reject`, `stats` (with `"call"` where several
/// calls may be up), `dial` with `"user"`.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct Control {
    pub cmd: String,
    #[serde(default)]
    pub call: Option<String>,
    #[serde(default)]
    pub digits: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Reads control lines from `path` (`-`: stdin) on a thread; bad lines are reported and
/// skipped.
pub fn read_control(path: PathBuf) -> anyhow::Result<mpsc::Receiver<Result<Control, String>>> {
    let reader: Box<dyn BufRead + Send> = if audio::stream::is_std(&path) {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&path)
                .with_context(|| format!("cannot open the control file {}", path.display()))?,
        ))
    };
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if line.trim().is_empty() {
                continue;
            }
            let c = serde_json::from_str::<Control>(&line)
                .map_err(|e| format!("bad control line '{line}': {e}"));
            if tx.blocking_send(c).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// The call command a control line asks for, on call `id`.
pub fn control_command(c: Control, id: CallId) -> Result<CallCommand, String> {
    Ok(match c.cmd.as_str() {
        "accept" => CallCommand::Accept(id),
        "reject" => CallCommand::Reject(id, c.reason.unwrap_or_else(|| "declined".into())),
        "hangup" => CallCommand::Hangup(id),
        "dtmf" => CallCommand::Dtmf(id, c.digits.unwrap_or_default()),
        "mute" => CallCommand::Mute(id, true),
        "unmute" => CallCommand::Mute(id, false),
        "hold" => CallCommand::Hold(id, true),
        "resume" => CallCommand::Hold(id, false),
        "stats" => CallCommand::Stats(id),
        other => return Err(format!("unknown command '{other}'")),
    })
}

/// The next control line, or never when there is no control stream.
pub async fn recv_control(
    control: &mut Option<mpsc::Receiver<Result<Control, String>>>,
) -> Option<Result<Control, String>> {
    match control {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
