//! `answer`: the resident client. Stays registered with the directory, takes calls, watches
//! presence, and prints what happens as JSON lines.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use serde_json::json;

use super::call_audio;
use super::call_io::{self, Events, event_json, start_endpoint};
use super::client::DirectoryArgs;
use super::local::{self, DialRequest, Local};
use super::{
    EXIT_FAILURE, EXIT_IDENTITY_IN_USE, EXIT_USAGE, Verbosity, is_identity_in_use, is_usage,
    report_error, runtime,
};
use crate::audio::stream::is_std;
use crate::call::endpoint::EndpointEvent;
use crate::call::message::CallId;
use crate::call::phone::PhoneConfig;
use crate::client::{AgentConfig, AgentEvent};
use crate::identity::{Check, Timestamp, verify_record};
use crate::net::ShutdownSignals;
use crate::net::drivers::call::{CallAudio, CallCommand, DriverEvent};
use crate::net::drivers::client::write_host_cache;
use crate::signal::{Registration, Target};

/// A role taken or given up (the driver's notice; a plain record without the roles driver).
#[cfg(all(feature = "relay", feature = "supernode"))]
use crate::net::drivers::roles::RoleNotice;
#[cfg(not(all(feature = "relay", feature = "supernode")))]
#[derive(Debug)]
pub struct RoleNotice {
    pub role: crate::roles::Role,
    pub on: bool,
    pub reason: Option<crate::roles::DemoteReason>,
    pub serves: Option<String>,
}

const EXIT_CODES: &str = "\
Events (one JSON object per line on stdout, or --events FILE):
  {\"event\":\"registered\",\"supernode\":\"vx1...\",\"addr\":\"HOST:PORT\",\"failover\":false,\"user\":\"vx1...\"}
  {\"event\":\"standby\",\"supernode\":\"vx1...\"}     (a warm standby is ready; null: lost it)
  {\"event\":\"presence\",\"user\":\"vx1...\",\"online\":true,\"last_seen\":1790000000,\"stale\":false}
  {\"event\":\"claimed\",\"name\":\"alice\"}
  {\"event\":\"incoming\",\"call\":\"...\",\"from\":\"vx1...\",\"at\":1790000000000.0}   (at: Unix ms)
  {\"event\":\"accepting\",\"call\":\"...\",\"ms\":2000.1,\"at\":...}   (ms: since it rang)
  {\"event\":\"connected\",\"call\":\"...\",\"sas\":\"k3xo\",\"path\":\"direct\",...}   (as dial prints)
  {\"event\":\"dtmf\",\"call\":\"...\",\"digit\":\"5\"}  {\"event\":\"stats\",...}
  {\"event\":\"ended\",\"call\":\"...\",\"reason\":\"remote-hangup\",\"exit\":0}
  {\"event\":\"error\",\"message\":\"...\"}
  {\"event\":\"role\",\"role\":\"relay\",\"state\":\"on\",\"reason\":null,\"serves\":\"HOST:PORT\"}
  {\"event\":\"role\",\"role\":\"supernode\",\"state\":\"off\",\"reason\":\"shutdown\",\"serves\":null}
      (serves: the relay's address, or the supernode's KEY@HOST:PORT entry; reasons: refused,
      unreachable, bandwidth, cpu, surplus, shutdown)

Roles: a client whose address is public (proved by dial-back probes from ports it never
contacted: from two supernodes once two exist, from the only one before) and that has spare uplink (--uplink-kbps, at least 1024 kbit/s for
the relay role) becomes a relay after 5 minutes of stable uptime, and a supernode after 15
minutes with at least 50 % CPU idle, when the mesh wants more of them (3 supernodes at least,
so every record has 3 homes; 4 relays at least) and a supernode grants it. It keeps a role
30 minutes at least unless refused, unreachable or stopping; on SIGTERM a supernode role
leaves the mesh, whose members tell its clients to register elsewhere. --no-relay,
--no-supernode and --max-relay-kbps refuse or cap. The roles run under their own identities,
KEYFILE-relay.key and KEYFILE-supernode.key next to the key file.

Control (--control FILE or -, one JSON object per line; \"call\" may be left out when one call
is up or ringing):
  {\"cmd\":\"accept\"} {\"cmd\":\"reject\",\"reason\":\"...\"} {\"cmd\":\"hangup\"} {\"cmd\":\"dtmf\",\"digits\":\"1\"}
  {\"cmd\":\"mute\"} {\"cmd\":\"unmute\"} {\"cmd\":\"hold\"} {\"cmd\":\"resume\"} {\"cmd\":\"stats\"}

Calls: without --auto, --answer-after or --exec a call rings until accepted on --control (or
the caller gives up). Beyond --max-calls calls at once, callers get busy. --exec CMD runs CMD
(with sh -c) per call, accepted at once, with the caller's audio on its stdin and its stdout
sent to the caller, both raw PCM 48 kHz mono s16le; its environment has VOXMESH_CALL,
VOXMESH_PEER (the caller's verified ID) and VOXMESH_USER. The call ends when CMD exits.

Microphone and speaker: on a terminal, without --play, --record or --exec and with one call at
a time, a call talks through the default sound devices, with echo cancellation, noise
suppression and gain control on (--no-audio-processing turns them off; --aec, --ns, --agc pick
some). File, pipe and --exec audio is sent as it is unless --aec, --ns or --agc ask for
processing (the audio received, as it goes to --record or CMD, is the echo reference).

Local control socket: while online, answer listens on KEYFILE.sock next to its key file
(a Unix socket, mode 0600, peers of another uid refused, removed on exit). A `dial` of the same
identity places its call through it instead of registering a second time: it sends
{\"cmd\":\"dial\",\"user\":\"vx1...\"} (or \"name\"; optional \"play\"/\"record\" file paths,
\"hangup_at_end\") and then control lines as on --control; it gets the call's events (also
printed here) and the connection closes after \"ended\" (closing it hangs the call up).

Exit status:
  0   stopped by SIGTERM or SIGINT
  1   runtime failure
  2   bad flags or arguments (also: no supernode given or cached)
  10  the identity is in use: another process holds its key file (the message names the file
      and that process); every process needs its own --identity

Examples:
  answer --supernode vxk1...@198.51.100.1:3478 --name alice --auto --play greeting.wav --record msg.wav
  answer -s vxk1...@sn.example.org:3478 --exec 'sox -t raw -r 48000 -e signed -b 16 -c 1 - out.wav'
  answer -s vxk1...@sn1.example.org:3478 | jq -c 'select(.event==\"presence\")'";

/// Stay online: take calls, watch presence, print JSON-lines events.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "answer",
    version,
    about = "Stay online in the voxmesh directory, take calls, report events as JSON lines",
    long_about = "Stay online in the voxmesh directory, take calls, report events as JSON lines.\n\n\
        Registers this identity through a supernode (keeping a warm standby session with a \
        second one, so losing the supernode costs seconds), claims --name if given, watches the \
        presence of each --watch user (an ID, a contact alias or a name), takes calls (peer to \
        peer, relayed only when no direct path works, encrypted end to end), and prints every \
        event on stdout, one JSON object per line. Supernodes learnt from the mesh are kept in \
        the host cache for the next start.",
    after_long_help = EXIT_CODES
)]
pub struct Args {
    #[command(flatten)]
    pub directory: DirectoryArgs,

    /// Claim this human name (first come, first served).
    #[arg(long)]
    pub name: Option<String>,

    /// Watch this user's presence (ID, contact alias or name); repeat for several.
    #[arg(long = "watch", value_name = "USER")]
    pub watch: Vec<String>,

    /// Accept every call at once.
    #[arg(long)]
    pub auto: bool,

    /// Accept every call after it rang this many seconds.
    #[arg(long = "answer-after", value_name = "SECONDS")]
    pub answer_after: Option<f64>,

    /// Play this to every caller (a file, or - for raw PCM on stdin: first call only).
    #[arg(long, value_name = "FILE|-")]
    pub play: Option<PathBuf>,

    /// Record what callers say (a file, or - for raw PCM on stdout). With --max-calls above 1,
    /// each call gets its own file: the call ID goes before the extension.
    #[arg(long, value_name = "FILE|-")]
    pub record: Option<PathBuf>,

    /// Run CMD per call with the call's audio on its stdin/stdout (see below).
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,

    /// Calls at once; beyond, callers get busy.
    #[arg(long = "max-calls", value_name = "N", default_value_t = 1)]
    pub max_calls: usize,

    /// Hang up each call this many seconds after it connects.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,

    /// Write events here instead of stdout (needed when stdout carries audio).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,

    #[command(flatten)]
    pub media: super::call_io::CallMediaArgs,

    #[command(flatten)]
    pub processing: super::call_audio::ProcessingArgs,

    /// Read control commands (JSON lines) from this file, or - for stdin.
    #[arg(long, value_name = "FILE|-")]
    pub control: Option<PathBuf>,

    #[command(flatten)]
    pub roles: RoleArgs,

    #[command(flatten)]
    pub verbosity: Verbosity,
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    args.verbosity.init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report_error(
            "answer",
            &e,
            if is_usage(&e) {
                EXIT_USAGE
            } else if is_identity_in_use(&e) {
                EXIT_IDENTITY_IN_USE
            } else {
                EXIT_FAILURE
            },
        ),
    }
}

/// Promotion: whether and how this client may become a relay or a supernode.
#[derive(clap::Args, Debug, Clone)]
pub struct RoleArgs {
    /// Never become a relay for other users' calls.
    #[arg(long = "no-relay")]
    pub no_relay: bool,

    /// Never become a supernode (a directory node of the mesh).
    #[arg(long = "no-supernode")]
    pub no_supernode: bool,

    /// Relay at most this many kbit/s (each relayed allocation is capped to it; below 1024 the
    /// relay role is never taken).
    #[arg(long = "max-relay-kbps", value_name = "N")]
    pub max_relay_kbps: Option<u32>,

    /// Spare uplink this host offers, in kbit/s (declared, not measured).
    #[arg(long = "uplink-kbps", value_name = "N", default_value_t = 2048)]
    pub uplink_kbps: u32,

    /// Test and operator knob: promote after this many seconds of stable uptime instead of
    /// 5 min (relay) and 15 min (supernode); the jitter becomes a quarter of it.
    #[arg(long = "promote-after", value_name = "SECONDS", hide = true)]
    pub promote_after: Option<f64>,

    /// Test knob: take this CPU headroom (0-1) as measured instead of reading /proc/stat.
    #[arg(long = "cpu-headroom", value_name = "FRACTION", hide = true)]
    pub cpu_headroom: Option<f32>,

    /// Test knob: the hosted relay may relay to this block (as relayd's --allow-peer).
    #[arg(long = "relay-allow-peer", value_name = "CIDR", hide = true)]
    pub relay_allow_peer: Vec<String>,
}

/// A call's audio from the flags, or from --exec.
struct Resident {
    /// A call's recorder finishes its file (and renames it into place) once the call's
    /// playback sender is gone, which the driver drops before it reports the end.
    recorders: HashMap<CallId, std::thread::JoinHandle<()>>,
    children: HashMap<CallId, std::process::Child>,
    stdin_used: bool,
}

impl Resident {
    fn audio_for(
        &mut self,
        args: &Args,
        call: CallId,
        peer: &str,
        me: &str,
    ) -> anyhow::Result<CallAudio> {
        let switches = args.processing.switches(false);
        if let Some(cmd) = &args.exec {
            let (audio, child) = call_io::exec_for_call(cmd, call, peer, me)?;
            self.children.insert(call, child);
            return call_audio::process(audio, switches, 0);
        }
        // Without files, one call at a time, on a terminal: the microphone and speaker.
        if args.play.is_none()
            && args.record.is_none()
            && args.max_calls == 1
            && call_audio::use_devices()
        {
            return call_audio::process(
                call_audio::devices()?,
                args.processing.switches(true),
                call_audio::DEVICE_DELAY_MS,
            );
        }
        let capture = match &args.play {
            Some(p) if is_std(p) && self.stdin_used => None,
            Some(p) => {
                self.stdin_used |= is_std(p);
                Some(call_io::play_file(p)?)
            }
            None => None,
        };
        let playback = match &args.record {
            Some(p) => {
                let path = if args.max_calls > 1 && !is_std(p) {
                    let stem = p
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let ext = p
                        .extension()
                        .map(|e| format!(".{}", e.to_string_lossy()))
                        .unwrap_or_default();
                    p.with_file_name(format!("{stem}-{call}{ext}"))
                } else {
                    p.clone()
                };
                let (tx, t) = call_io::record_file(&path)?;
                self.recorders.insert(call, t);
                Some(tx)
            }
            None => None,
        };
        call_audio::process(CallAudio { capture, playback }, switches, 0)
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.max_calls == 0 {
        return Err(super::usage("--max-calls must be at least 1"));
    }
    if args.record.as_deref().is_some_and(is_std) && args.events.is_none() {
        return Err(super::usage(
            "--record - puts audio on stdout: give --events FILE for the events",
        ));
    }
    if args.exec.is_some() && (args.play.is_some() || args.record.is_some()) {
        return Err(super::usage(
            "--exec carries the call's audio: leave out --play and --record",
        ));
    }
    let rt = runtime().context("cannot start the runtime")?;
    rt.block_on(async move {
        // Held until this block ends, i.e. for as long as we are online as this identity.
        let (identity, _lock) = args.directory.load_identity_locked()?;
        let me = identity.id().to_string();
        let mut signals = ShutdownSignals::install().context("cannot install signal handlers")?;
        // Resolve --watch targets before going online, so typos fail fast.
        let targets: Vec<Target> = args.watch.iter().map(|w| args.directory.target(w)).collect::<anyhow::Result<_>>()?;
        let mut events = Events::open(args.events.as_deref())?;
        if let Some(p) = &args.media.media_trace {
            events.trace_to(p)?;
        }
        let mut control = match &args.control {
            Some(p) => Some(call_io::read_control(p.clone())?),
            None => None,
        };
        let phone = PhoneConfig { max_calls: args.max_calls, ..PhoneConfig::default() };
        let mut running = start_endpoint(&args.directory, identity, AgentConfig::new(Vec::new()), phone, args.media.endpoint_config(), 0.0, None).await?;
        let cmd = running.commands.clone();
        if let Some(name) = &args.name {
            cmd.send(CallCommand::Claim(name.clone())).await.ok();
        }
        for t in &targets {
            match t {
                Target::Id(id) => { cmd.send(CallCommand::Watch(*id)).await.ok(); }
                // A name is resolved first; its holder is watched when the lookup answers.
                Target::Name(_) => { cmd.send(CallCommand::Lookup(t.clone())).await.ok(); }
            }
        }
        let cache = args.directory.host_cache_path().ok();
        let (roles_stop, mut role_rx, roles_task, _role_locks) = start_roles(&args).await?;
        let mut resident = Resident { recorders: HashMap::new(), children: HashMap::new(), stdin_used: false };
        // Calls not ended, with when they rang.
        let mut calls: HashMap<CallId, Instant> = HashMap::new();
        // Timed actions: (when, call, accept (true) or hang up).
        let mut timers: Vec<(tokio::time::Instant, CallId, bool)> = Vec::new();
        let mut reap = tokio::time::interval(std::time::Duration::from_millis(200));
        // The local control socket: `dial` on this identity calls through us (see `local`).
        // Without it (a path too long for a socket, a read-only directory) calls still come
        // in; only a local `dial` cannot go through us.
        let sock = local::socket_path(&args.directory.identity_path()?);
        let (_listening, mut local_rx) = match local::listen(&sock) {
            Ok((l, rx)) => (Some(l), Some(rx)),
            Err(e) => {
                tracing::warn!("no local control socket: {e:#}");
                (None, None)
            }
        };
        let mut locals = Locals::default();
        loop {
            let next = timers.iter().map(|t| t.0).min();
            tokio::select! {
                name = signals.recv() => {
                    tracing::info!("{name}: going offline");
                    break;
                }
                _ = sleep_opt(next) => {
                    let now = tokio::time::Instant::now();
                    for (_, call, accept) in timers.iter().filter(|t| t.0 <= now) {
                        let c = if *accept {
                            events.emit(accepting(*call, calls.get(call).copied()));
                            CallCommand::Accept(*call)
                        } else {
                            CallCommand::Hangup(*call)
                        };
                        cmd.send(c).await.ok();
                    }
                    timers.retain(|t| t.0 > now);
                }
                // --exec: a call ends when its command exits.
                _ = reap.tick(), if !resident.children.is_empty() => {
                    let done: Vec<CallId> = resident.children.iter_mut()
                        .filter_map(|(c, ch)| ch.try_wait().ok().flatten().map(|_| *c))
                        .collect();
                    for c in done {
                        resident.children.remove(&c);
                        cmd.send(CallCommand::Hangup(c)).await.ok();
                    }
                }
                c = call_io::recv_control(&mut control) => match c {
                    None => control = None,
                    Some(Err(e)) => { events.emit(json!({"event": "error", "message": e})); }
                    Some(Ok(c)) => {
                        let id = match &c.call {
                            Some(s) => calls.keys().find(|k| k.to_string() == *s).copied(),
                            None if calls.len() == 1 => calls.keys().next().copied(),
                            None => None,
                        };
                        let Some(id) = id else {
                            events.emit(json!({"event": "error", "message": "which call? give \"call\""}));
                            continue;
                        };
                        let command = match call_io::control_command(c, id) {
                            Ok(command) => command,
                            Err(e) => {
                                events.emit(json!({"event": "error", "message": e}));
                                continue;
                            }
                        };
                        if let CallCommand::Accept(c) = &command {
                            events.emit(accepting(*c, calls.get(c).copied()));
                        }
                        cmd.send(command).await.ok();
                    }
                },
                Some(n) = role_rx.recv() => {
                    events.emit(role_json(&n));
                }
                l = recv_local(&mut local_rx) => match l {
                    None => local_rx = None,
                    Some(l) => {
                        for c in locals.on_local(l) {
                            cmd.send(c).await.ok();
                        }
                    }
                },
                ev = running.events.recv() => {
                    let Some(ev) = ev else { break };
                    let since = match &ev {
                        DriverEvent::Endpoint(EndpointEvent::Connected { call, .. }) => calls.get(call).copied(),
                        _ => None,
                    };
                    match &ev {
                        DriverEvent::Endpoint(EndpointEvent::Incoming { call, from }) => {
                            calls.insert(*call, Instant::now());
                            match resident.audio_for(&args, *call, &from.to_string(), &me) {
                                Ok(a) => { cmd.send(CallCommand::Audio(*call, a)).await.ok(); }
                                Err(e) => { events.emit(json!({"event": "error", "message": format!("{e:#}")})); }
                            }
                            if args.auto || args.exec.is_some() {
                                events.emit(accepting(*call, calls.get(call).copied()));
                                cmd.send(CallCommand::Accept(*call)).await.ok();
                            } else if let Some(s) = args.answer_after {
                                timers.push((tokio::time::Instant::now() + std::time::Duration::from_secs_f64(s.max(0.0)), *call, true));
                            }
                        }
                        DriverEvent::Endpoint(EndpointEvent::Connected { call, .. }) => {
                            if let Some(s) = args.duration {
                                timers.push((tokio::time::Instant::now() + std::time::Duration::from_secs_f64(s.max(0.0)), *call, false));
                            }
                        }
                        DriverEvent::Endpoint(EndpointEvent::Ended { call, .. }) => {
                            calls.remove(call);
                            timers.retain(|t| t.1 != *call);
                            if let Some(mut ch) = resident.children.remove(call) {
                                let _ = ch.kill();
                                let _ = ch.wait();
                            }
                            // The recording is whole before "ended" is out: a script that
                            // reads the file on that line finds it complete.
                            if let Some(t) = resident.recorders.remove(call) {
                                let _ = tokio::task::spawn_blocking(move || t.join()).await;
                            }
                        }
                        DriverEvent::Endpoint(EndpointEvent::Agent(AgentEvent::Lookup { target: Target::Name(n), result })) if locals.wants_name(n) => {
                            if let Some(c) = locals.on_lookup(n, result) {
                                cmd.send(c).await.ok();
                            }
                        }
                        DriverEvent::Endpoint(EndpointEvent::Agent(AgentEvent::Lookup { target: Target::Name(n), result })) => {
                            match result {
                                Ok(Some(entry)) => {
                                    if let Ok(rec) = crate::identity::verify_record::<crate::signal::Registration>(&entry.record, &crate::identity::Check::at(crate::identity::Timestamp::now())) {
                                        cmd.send(CallCommand::Watch(rec.id)).await.ok();
                                    }
                                }
                                _ => {
                                    events.emit(json!({"event": "error", "message": format!("cannot watch '{n}': no such name")}));
                                }
                            }
                        }
                        _ => {}
                    }
                    for c in locals.on_event(&ev, &mut resident) {
                        cmd.send(c).await.ok();
                    }
                    let line = match &ev {
                        DriverEvent::Endpoint(EndpointEvent::Agent(AgentEvent::Registered { supernode, addr, failover })) => {
                            Some(json!({"event": "registered", "user": me, "supernode": supernode.to_string(), "addr": addr, "failover": failover}))
                        }
                        DriverEvent::Endpoint(EndpointEvent::Agent(AgentEvent::Standby { supernode })) => {
                            Some(json!({"event": "standby", "supernode": supernode.map(|s| s.to_string())}))
                        }
                        other => event_json(other, since),
                    };
                    if let Some(v) = line
                        && !events.emit(v)
                    {
                        break; // nobody is listening any more
                    }
                }
            }
        }
        // Roles first: a supernode role leaves the mesh (its clients are told to move) while
        // our own registration still stands.
        roles_stop.trigger();
        if let Some(t) = roles_task {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(8), t).await;
        }
        while let Ok(n) = role_rx.try_recv() {
            events.emit(role_json(&n));
        }
        running.stop.trigger();
        if let Ok(Ok(ep)) = running.task.await {
            if let Some(path) = cache {
                let _ = write_host_cache(&path, ep.agent().known_supernodes());
            }
            call_io::keep_transports(&args.directory, &ep);
        }
        for (_, mut ch) in resident.children.drain() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
        for (_, t) in resident.recorders.drain() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        Ok(())
    })
}

/// Role notices, as the driver sends them.
type RoleRx = tokio::sync::mpsc::Receiver<RoleNotice>;

/// Starts promotion (unless both roles are refused or this build has neither): the role
/// identities (locked), the driver task, and the channel its notices arrive on.
async fn start_roles(
    args: &Args,
) -> anyhow::Result<(
    crate::net::ShutdownSignal,
    RoleRx,
    Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    Vec<crate::identity::IdentityLock>,
)> {
    let (stop, shutdown) = crate::net::ShutdownSignal::new();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let r = &args.roles;
    if r.no_relay && r.no_supernode {
        return Ok((stop, rx, None, Vec::new()));
    }
    #[cfg(all(feature = "relay", feature = "supernode"))]
    {
        use crate::net::drivers::roles::{RolesSetup, run_roles};
        let key = args.directory.identity_path()?;
        let stem = key
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "identity".into());
        let role_key = |role: &str| key.with_file_name(format!("{stem}-{role}.key"));
        let (relay_identity, _, relay_lock) =
            crate::identity::Identity::load_or_create_locked(&role_key("relay"))?;
        let (supernode_identity, _, sn_lock) =
            crate::identity::Identity::load_or_create_locked(&role_key("supernode"))?;
        let mut config = crate::roles::Config {
            allow_relay: !r.no_relay,
            allow_supernode: !r.no_supernode,
            max_relay_kbps: r.max_relay_kbps,
            ..crate::roles::Config::default()
        };
        let mut poll_every = std::time::Duration::from_secs(30);
        if let Some(s) = r.promote_after {
            let after = std::time::Duration::from_secs_f64(s.max(0.0));
            config = config.with_promote_after(after);
            poll_every = (after / 4).clamp(
                std::time::Duration::from_millis(500),
                std::time::Duration::from_secs(30),
            );
        }
        let relay_allow_peer = r
            .relay_allow_peer
            .iter()
            .map(|p| {
                crate::turn::parse_allow_peer(p)
                    .map_err(|e| super::usage(format!("--relay-allow-peer '{p}': {e}")))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let setup = RolesSetup {
            config,
            relay_identity,
            supernode_identity,
            supernodes: args.directory.supernodes().await?,
            bind: args.directory.bind.ip(),
            uplink_kbps: r.uplink_kbps,
            cpu_headroom: r.cpu_headroom,
            poll_every,
            relay_allow_peer,
            seed: rand::random(),
        };
        let task = tokio::spawn(run_roles(setup, tx, shutdown));
        Ok((stop, rx, Some(task), vec![relay_lock, sn_lock]))
    }
    #[cfg(not(all(feature = "relay", feature = "supernode")))]
    {
        drop((tx, shutdown));
        tracing::info!("this build hosts no relay or supernode role");
        Ok((stop, rx, None, Vec::new()))
    }
}

/// The `role` event line.
fn role_json(n: &RoleNotice) -> serde_json::Value {
    json!({
        "event": "role",
        "role": n.role.name(),
        "state": if n.on { "on" } else { "off" },
        "reason": n.reason.map(|r| r.name()),
        "serves": n.serves,
    })
}

/// The line saying a call is being accepted now (`ms`: since it rang; `at`: wall clock).
fn accepting(call: CallId, rang: Option<Instant>) -> serde_json::Value {
    let ms = rang.map(|t| (t.elapsed().as_secs_f64() * 10_000.0).round() / 10.0);
    json!({"event": "accepting", "call": call.to_string(), "ms": ms, "at": call_io::unix_ms()})
}

async fn recv_local(rx: &mut Option<tokio::sync::mpsc::Receiver<Local>>) -> Option<Local> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// A local `dial`'s connection (see [`local`]).
struct Conn {
    req: DialRequest,
    events: tokio::sync::mpsc::UnboundedSender<serde_json::Value>,
    since: Instant,
    call: Option<CallId>,
    /// The dial went away before its call was placed: hang up once it is.
    closed: bool,
}

/// Calls placed for local `dial`s through the control socket.
#[derive(Default)]
struct Locals {
    conns: HashMap<u64, Conn>,
    /// Connections whose `Dial` command awaits its `Dialed` answer, in command order.
    placing: std::collections::VecDeque<u64>,
    /// Connections waiting for a name's lookup.
    lookups: Vec<(String, u64)>,
    calls: HashMap<CallId, u64>,
}

impl Locals {
    fn fail(&mut self, conn: u64, message: String, exit: u8) {
        if let Some(c) = self.conns.remove(&conn) {
            let _ = c
                .events
                .send(json!({"event": "error", "message": message, "exit": exit}));
        }
    }

    /// What the answer's loop must do for a connection's news.
    fn on_local(&mut self, l: Local) -> Vec<CallCommand> {
        match l {
            Local::Dial { conn, req, events } => {
                let to = req.user.clone();
                let name = req.name.clone();
                self.conns.insert(
                    conn,
                    Conn {
                        req,
                        events,
                        since: Instant::now(),
                        call: None,
                        closed: false,
                    },
                );
                match (to, name) {
                    (Some(id), _) => match id.parse() {
                        Ok(id) => {
                            self.placing.push_back(conn);
                            vec![CallCommand::Dial(id)]
                        }
                        Err(e) => {
                            self.fail(conn, format!("bad user ID {id}: {e}"), super::EXIT_USAGE);
                            vec![]
                        }
                    },
                    (None, Some(n)) => {
                        self.lookups.push((n.clone(), conn));
                        vec![CallCommand::Lookup(Target::Name(n))]
                    }
                    (None, None) => vec![],
                }
            }
            Local::Control { conn, control } => {
                let Some(c) = self.conns.get(&conn) else {
                    return vec![];
                };
                let Some(call) = c.call else {
                    let _ = c
                        .events
                        .send(json!({"event": "error", "message": "no call yet"}));
                    return vec![];
                };
                match call_io::control_command(control, call) {
                    Ok(cmd) => vec![cmd],
                    Err(e) => {
                        let _ = c.events.send(json!({"event": "error", "message": e}));
                        vec![]
                    }
                }
            }
            Local::Closed { conn } => match self.conns.get_mut(&conn) {
                Some(c) => match c.call {
                    Some(call) => vec![CallCommand::Hangup(call)],
                    None => {
                        c.closed = true;
                        vec![]
                    }
                },
                None => vec![],
            },
        }
    }

    fn wants_name(&self, name: &str) -> bool {
        self.lookups.iter().any(|(n, _)| n == name)
    }

    fn on_lookup(
        &mut self,
        name: &str,
        result: &Result<Option<crate::signal::Entry>, String>,
    ) -> Option<CallCommand> {
        let i = self.lookups.iter().position(|(n, _)| n == name)?;
        let (_, conn) = self.lookups.remove(i);
        match result {
            Ok(Some(entry)) => {
                match verify_record::<Registration>(&entry.record, &Check::at(Timestamp::now())) {
                    Ok(r) => {
                        self.placing.push_back(conn);
                        Some(CallCommand::Dial(r.id))
                    }
                    Err(e) => {
                        self.fail(
                            conn,
                            format!("the directory entry for {name} does not verify: {e}"),
                            super::EXIT_FAILURE,
                        );
                        None
                    }
                }
            }
            Ok(None) => {
                self.fail(
                    conn,
                    format!("no such user: {name}"),
                    super::dial::EXIT_UNKNOWN,
                );
                None
            }
            Err(e) => {
                self.fail(
                    conn,
                    format!("lookup failed: {e}"),
                    super::dial::EXIT_UNREACHABLE,
                );
                None
            }
        }
    }

    /// Routes a driver event to the local call it belongs to, if any.
    fn on_event(&mut self, ev: &DriverEvent, resident: &mut Resident) -> Vec<CallCommand> {
        let mut out = Vec::new();
        match ev {
            DriverEvent::Dialed(call) => {
                let Some(conn) = self.placing.pop_front() else {
                    return out;
                };
                let Some(c) = self.conns.get_mut(&conn) else {
                    return out;
                };
                c.call = Some(*call);
                self.calls.insert(*call, conn);
                let capture = match &c.req.play {
                    Some(p) => match call_io::play_file(p) {
                        Ok(rx) => Some(rx),
                        Err(e) => {
                            let _ = c
                                .events
                                .send(json!({"event": "error", "message": format!("{e:#}")}));
                            None
                        }
                    },
                    None => None,
                };
                let playback = match &c.req.record {
                    Some(p) => match call_io::record_file(p) {
                        Ok((tx, t)) => {
                            resident.recorders.insert(*call, t);
                            Some(tx)
                        }
                        Err(e) => {
                            let _ = c
                                .events
                                .send(json!({"event": "error", "message": format!("{e:#}")}));
                            None
                        }
                    },
                    None => None,
                };
                out.push(CallCommand::Audio(*call, CallAudio { capture, playback }));
                if c.closed {
                    out.push(CallCommand::Hangup(*call));
                }
            }
            DriverEvent::DialFailed(e) => {
                if let Some(conn) = self.placing.pop_front() {
                    self.fail(conn, format!("cannot dial: {e}"), super::EXIT_FAILURE);
                }
                return out;
            }
            DriverEvent::CaptureEnded(call) => {
                if let Some(c) = self.calls.get(call).and_then(|k| self.conns.get(k))
                    && c.req.hangup_at_end
                {
                    out.push(CallCommand::Hangup(*call));
                }
            }
            _ => {}
        }
        let Some(call) = call_io::call_of(ev) else {
            return out;
        };
        let Some(conn) = self.calls.get(&call).copied() else {
            return out;
        };
        if let Some(c) = self.conns.get(&conn)
            && let Some(v) = event_json(ev, Some(c.since))
        {
            let _ = c.events.send(v);
        }
        if let DriverEvent::Endpoint(EndpointEvent::Ended { .. }) = ev {
            // Dropping the sender closes the connection once the last line is out.
            self.calls.remove(&call);
            self.conns.remove(&conn);
        }
        out
    }
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
