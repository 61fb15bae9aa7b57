//! `dial USER`: place one call and see it through, printing its events.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use super::call_audio;
use super::call_io::{self, Events, event_json, exit_code, start_endpoint};
use super::dial::{Args, EXIT_UNKNOWN, EXIT_UNREACHABLE};
use super::local::{self, DialRequest};
use super::{is_identity_in_use, runtime, usage};
use crate::call::endpoint::EndpointEvent;
use crate::call::message::CallId;
use crate::call::phone::PhoneConfig;
use crate::client::{AgentConfig, AgentEvent};
use crate::identity::{Check, Timestamp, verify_record};
use crate::net::ShutdownSignals;
use crate::net::drivers::call::{CallAudio, CallCommand, DriverEvent};
use crate::signal::{Registration, Target};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// How long a hang-up may take to be delivered before dial exits anyway.
const BYE_GRACE: Duration = Duration::from_secs(3);

pub fn run(args: Args) -> anyhow::Result<u8> {
    let stdout_audio = args
        .record
        .as_deref()
        .is_some_and(crate::audio::stream::is_std);
    if stdout_audio && args.events.is_none() {
        return Err(usage(
            "--record - puts audio on stdout: give --events FILE for the events",
        ));
    }
    if let Some(d) = &args.dtmf
        && let Some(bad) = d.chars().find(|c| !"0123456789*#ABCDabcd".contains(*c))
    {
        return Err(usage(format!("--dtmf: '{bad}' is not a keypad digit")));
    }
    if !(args.ring_timeout.is_finite() && args.ring_timeout > 0.0) {
        return Err(usage("--ring-timeout: give a positive number of seconds"));
    }
    let rt = runtime().context("cannot start the runtime")?;
    rt.block_on(run_call(args))
}

async fn run_call(args: Args) -> anyhow::Result<u8> {
    // A call registers this identity: it must be the only process online as it. When an
    // `answer` is online as it, the call goes through that answer (its control socket).
    let (identity, _lock) = match args.directory.load_identity_locked() {
        Ok(x) => x,
        Err(e) if is_identity_in_use(&e) => {
            let sock = local::socket_path(&args.directory.identity_path()?);
            match UnixStream::connect(&sock).await {
                Ok(s) => return through_answer(args, s).await,
                Err(c) => {
                    tracing::debug!("no control socket at {}: {c}", sock.display());
                    return Err(e);
                }
            }
        }
        Err(e) => return Err(e),
    };
    let target = args.directory.target(&args.user)?;
    let mut signals = ShutdownSignals::install().context("cannot install signal handlers")?;
    let mut events = Events::open(args.events.as_deref())?;
    if let Some(p) = &args.media.media_trace {
        events.trace_to(p)?;
    }
    let mut control = match &args.control {
        Some(p) => Some(call_io::read_control(p.clone())?),
        None => None,
    };
    // Without files, on a terminal: the microphone and speaker.
    let devices = args.play.is_none() && args.record.is_none() && call_audio::use_devices();
    let capture = match &args.play {
        Some(p) => Some(call_io::play_file(p)?),
        None => None,
    };
    let (playback, recorder) = match &args.record {
        Some(p) => {
            let (tx, t) = call_io::record_file(p)?;
            (Some(tx), Some(t))
        }
        None => (None, None),
    };
    let audio = if devices {
        call_audio::devices()?
    } else {
        CallAudio { capture, playback }
    };
    let delay = if devices {
        call_audio::DEVICE_DELAY_MS
    } else {
        0
    };
    let mut audio = Some(call_audio::process(
        audio,
        args.processing.switches(devices),
        delay,
    )?);
    let mut agent = AgentConfig::new(Vec::new());
    // A warm standby with a second supernode (when the mesh has one): if ours dies mid-call,
    // the mesh warns us through it and we re-register in about 5 s instead of the ~13 s it
    // takes to notice a dead session alone, so a hang-up soon after still reaches the peer.
    // It costs one handshake, made after the registration and the invite are out.
    agent.standby = true;
    let t0 = Instant::now();
    let mut running = start_endpoint(
        &args.directory,
        identity,
        agent,
        PhoneConfig {
            ring_timeout: Duration::from_secs_f64(args.ring_timeout),
            ..PhoneConfig::default()
        },
        args.media.endpoint_config(),
        args.clock_ppm,
        // First, so that the invite (or the lookup) rides in the handshake.
        Some(match &target {
            Target::Id(id) => CallCommand::Dial(*id),
            Target::Name(_) => CallCommand::Lookup(target.clone()),
        }),
    )
    .await?;
    let cmd = running.commands.clone();
    let mut call: Option<CallId> = None;
    let mut answered = false;
    let mut registered = false;
    let mut last_error: Option<String> = None;
    let no_supernode = tokio::time::sleep(Duration::from_secs(args.timeout));
    tokio::pin!(no_supernode);
    let hangup_at = tokio::time::sleep(Duration::from_secs(86400 * 365));
    tokio::pin!(hangup_at);
    let mut hangup_armed = false;
    let mut quitting: Option<tokio::time::Instant> = None;
    let give_up = tokio::time::sleep(Duration::from_secs(86400 * 365));
    tokio::pin!(give_up);
    let code = loop {
        tokio::select! {
            name = signals.recv(), if quitting.is_none() => {
                tracing::info!("{name}: hanging up");
                match call {
                    Some(c) => {
                        cmd.send(CallCommand::Hangup(c)).await.ok();
                        let at = tokio::time::Instant::now() + BYE_GRACE;
                        quitting = Some(at);
                        give_up.as_mut().reset(at);
                    }
                    None => break call_io::EXIT_CANCELLED,
                }
            }
            _ = &mut give_up => {
                eprintln!("dial: the hang-up was not confirmed within {} s", BYE_GRACE.as_secs());
                break if answered { 0 } else { call_io::EXIT_CANCELLED };
            }
            _ = &mut no_supernode, if !registered => {
                match &last_error {
                    Some(e) => eprintln!("dial: no supernode answered within {} s ({e})", args.timeout),
                    None => eprintln!("dial: no supernode answered within {} s", args.timeout),
                }
                break EXIT_UNREACHABLE;
            }
            _ = &mut hangup_at, if hangup_armed => {
                hangup_armed = false;
                if let Some(c) = call {
                    cmd.send(CallCommand::Hangup(c)).await.ok();
                }
            }
            c = call_io::recv_control(&mut control) => match c {
                None => control = None,
                Some(Err(e)) => { events.emit(json!({"event": "error", "message": e})); }
                Some(Ok(c)) => {
                    let Some(id) = call else {
                        events.emit(json!({"event": "error", "message": "no call yet"}));
                        continue;
                    };
                    let command = match call_io::control_command(c, id) {
                        Ok(command) => command,
                        Err(e) => {
                            events.emit(json!({"event": "error", "message": e}));
                            continue;
                        }
                    };
                    cmd.send(command).await.ok();
                }
            },
            ev = running.events.recv() => {
                let Some(ev) = ev else { break 1 };
                match &ev {
                    DriverEvent::Endpoint(EndpointEvent::Agent(AgentEvent::Registered { .. })) => registered = true,
                    DriverEvent::Endpoint(EndpointEvent::Agent(AgentEvent::Error { message })) => {
                        last_error = Some(message.clone());
                    }
                    DriverEvent::Endpoint(EndpointEvent::Agent(AgentEvent::Lookup { result, .. })) => {
                        match result {
                            Ok(Some(entry)) => {
                                match verify_record::<Registration>(&entry.record, &Check::at(Timestamp::now())) {
                                    Ok(r) => { cmd.send(CallCommand::Dial(r.id)).await.ok(); }
                                    Err(e) => {
                                        eprintln!("dial: the directory entry for {} does not verify: {e}", args.user);
                                        break 1;
                                    }
                                }
                            }
                            Ok(None) => {
                                eprintln!("dial: no such user: {}", args.user);
                                break EXIT_UNKNOWN;
                            }
                            Err(e) => {
                                eprintln!("dial: lookup failed: {e}");
                                break EXIT_UNREACHABLE;
                            }
                        }
                    }
                    DriverEvent::DialFailed(e) => {
                        eprintln!("dial: {e}");
                        break 1;
                    }
                    DriverEvent::Dialed(c) => {
                        call = Some(*c);
                        if let Some(a) = audio.take() {
                            cmd.send(CallCommand::Audio(*c, a)).await.ok();
                        }
                    }
                    DriverEvent::Endpoint(EndpointEvent::Answered { .. }) => answered = true,
                    DriverEvent::Endpoint(EndpointEvent::Connected { call: c, .. }) => {
                        if let Some(d) = &args.dtmf {
                            cmd.send(CallCommand::Dtmf(*c, d.clone())).await.ok();
                        }
                        if let Some(secs) = args.duration {
                            hangup_at.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs_f64(secs.max(0.0)));
                            hangup_armed = true;
                        }
                    }
                    DriverEvent::CaptureEnded(c) if args.duration.is_none() => {
                        cmd.send(CallCommand::Hangup(*c)).await.ok();
                    }
                    _ => {}
                }
                if let Some(v) = event_json(&ev, Some(t0)) {
                    events.emit(v);
                }
                if let DriverEvent::Endpoint(EndpointEvent::Ended { call: c, reason }) = &ev
                    && Some(*c) == call
                {
                    break exit_code(reason);
                }
            }
        }
    };
    running.stop.trigger();
    if let Ok(Ok(Ok(ep))) = tokio::time::timeout(BYE_GRACE, running.task).await {
        call_io::keep_transports(&args.directory, &ep);
    }
    drop(audio);
    if let Some(t) = recorder {
        // The recorder finishes the file once the driver (its sender) is gone.
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    Ok(code)
}

/// Places the call through the `answer` running as this identity, on its control socket
/// `stream` (see [`local`]): sends the request, prints the call's events (their `ms` taken on
/// our own clock, since this dial started), forwards control lines, hangs up on a signal.
async fn through_answer(args: Args, stream: UnixStream) -> anyhow::Result<u8> {
    let t0 = Instant::now();
    let file = |p: &Option<std::path::PathBuf>, flag: &str| -> anyhow::Result<_> {
        match p {
            Some(p) if crate::audio::stream::is_std(p) => Err(usage(format!(
                "{flag} -: an answer runs as this identity and the call goes through it, which \
                 takes files only; give dial its own --identity to use a pipe"
            ))),
            Some(p) => Ok(Some(std::path::absolute(p)?)),
            None => Ok(None),
        }
    };
    let mut req = DialRequest {
        cmd: "dial".into(),
        play: file(&args.play, "--play")?,
        record: file(&args.record, "--record")?,
        hangup_at_end: args.duration.is_none(),
        ..DialRequest::default()
    };
    let p = &args.processing;
    if p.aec || p.ns || p.agc {
        eprintln!(
            "dial: --aec, --ns and --agc are ignored: the call goes through the running answer, whose audio is files"
        );
    }
    if args.media.relay_only {
        eprintln!(
            "dial: --relay-only is ignored: the call goes through the running answer, with its settings"
        );
    }
    match args.directory.target(&args.user)? {
        Target::Id(id) => req.user = Some(id.to_string()),
        Target::Name(n) => req.name = Some(n),
    }
    let mut signals = ShutdownSignals::install().context("cannot install signal handlers")?;
    let mut events = Events::open(args.events.as_deref())?;
    let mut control = match &args.control {
        Some(p) => Some(call_io::read_control(p.clone())?),
        None => None,
    };
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd).lines();
    wr.write_all(format!("{}\n", serde_json::to_string(&req)?).as_bytes())
        .await
        .context("the running answer closed its control socket")?;
    let hangup_at = tokio::time::sleep(Duration::from_secs(86400 * 365));
    tokio::pin!(hangup_at);
    let mut hangup_armed = false;
    let mut placed = false;
    let mut quitting = false;
    let hangup = format!("{}\n", json!({"cmd": "hangup"}));
    loop {
        tokio::select! {
            name = signals.recv(), if !quitting => {
                tracing::info!("{name}: hanging up");
                quitting = true;
                if !placed {
                    // Closing the connection hangs the call up once the answer places it.
                    return Ok(call_io::EXIT_CANCELLED);
                }
                wr.write_all(hangup.as_bytes()).await.ok();
            }
            _ = &mut hangup_at, if hangup_armed => {
                hangup_armed = false;
                wr.write_all(hangup.as_bytes()).await.ok();
            }
            c = call_io::recv_control(&mut control) => match c {
                None => control = None,
                Some(Err(e)) => { events.emit(json!({"event": "error", "message": e})); }
                Some(Ok(c)) => {
                    let line = format!("{}\n", serde_json::to_string(&c)?);
                    wr.write_all(line.as_bytes()).await.ok();
                }
            },
            line = lines.next_line() => {
                let Ok(Some(line)) = line else {
                    eprintln!("dial: the running answer closed the call's connection");
                    return Ok(1);
                };
                let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
                if v.get("ms").is_some_and(|m| !m.is_null()) {
                    v["ms"] = json!((t0.elapsed().as_secs_f64() * 10_000.0).round() / 10.0);
                }
                match v["event"].as_str() {
                    Some("dialing") => placed = true,
                    Some("connected") => {
                        if let Some(d) = &args.dtmf {
                            let l = format!("{}\n", json!({"cmd": "dtmf", "digits": d}));
                            wr.write_all(l.as_bytes()).await.ok();
                        }
                        if let Some(secs) = args.duration {
                            hangup_at.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs_f64(secs.max(0.0)));
                            hangup_armed = true;
                        }
                    }
                    _ => {}
                }
                let exit = v["exit"].as_u64();
                let ended = v["event"] == "ended";
                if v["event"] == "error" && exit.is_some() {
                    eprintln!("dial: {}", v["message"].as_str().unwrap_or("the call failed"));
                }
                events.emit(v);
                if ended || exit.is_some() {
                    return Ok(exit.unwrap_or(1).min(255) as u8);
                }
            }
        }
    }
}
