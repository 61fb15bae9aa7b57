//! `dial USER`: place one call and see it through, printing its events.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use super::call_io::{self, Events, endpoint_config, event_json, exit_code, start_endpoint};
use super::dial::{Args, EXIT_UNKNOWN, EXIT_UNREACHABLE};
use super::{runtime, usage};
use crate::call::endpoint::EndpointEvent;
use crate::call::message::CallId;
use crate::call::phone::PhoneConfig;
use crate::client::{AgentConfig, AgentEvent};
use crate::identity::{Check, Timestamp, verify_record};
use crate::net::ShutdownSignals;
use crate::net::drivers::call::{CallAudio, CallCommand, DriverEvent};
use crate::signal::{Registration, Target};

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
    // A call registers this identity: it must be the only process online as it.
    let (identity, _lock) = args.directory.load_identity_locked()?;
    let target = args.directory.target(&args.user)?;
    let mut signals = ShutdownSignals::install().context("cannot install signal handlers")?;
    let mut events = Events::open(args.events.as_deref())?;
    let mut control = match &args.control {
        Some(p) => Some(call_io::read_control(p.clone())?),
        None => None,
    };
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
    let mut audio = Some(CallAudio { capture, playback });
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
        endpoint_config(args.relay_only),
    )
    .await?;
    let cmd = running.commands.clone();
    match &target {
        Target::Id(id) => {
            cmd.send(CallCommand::Dial(*id)).await.ok();
        }
        Target::Name(_) => {
            cmd.send(CallCommand::Lookup(target.clone())).await.ok();
        }
    }
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
    let _ = tokio::time::timeout(BYE_GRACE, running.task).await;
    drop(audio);
    if let Some(t) = recorder {
        // The recorder finishes the file once the driver (its sender) is gone.
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    Ok(code)
}
