//! `answer`: the resident client. Stays registered with the directory, watches presence, and
//! prints what happens as JSON lines on stdout. (Taking calls arrives with the call layer.)

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use serde_json::json;

use super::client::{DirectoryArgs, start_agent};
use super::{
    EXIT_FAILURE, EXIT_IDENTITY_IN_USE, EXIT_USAGE, Verbosity, is_identity_in_use, is_usage,
    report_error, runtime,
};
use crate::agent::{AgentConfig, AgentEvent};
use crate::net::agent::{AgentCommand, write_host_cache};
use crate::net::signal_shutdown;
use crate::signal::Target;

const EXIT_CODES: &str = "\
Events (one JSON object per line on stdout):
  {\"event\":\"registered\",\"supernode\":\"vx1...\",\"addr\":\"HOST:PORT\",\"failover\":false,\"user\":\"vx1...\"}
  {\"event\":\"standby\",\"supernode\":\"vx1...\"}     (a warm standby is ready; null: lost it)
  {\"event\":\"presence\",\"user\":\"vx1...\",\"online\":true,\"last_seen\":1790000000,\"stale\":false}
  {\"event\":\"claimed\",\"name\":\"alice\"}
  {\"event\":\"message\",\"from\":\"vx1...\",\"payload\":\"<base64>\"}
  {\"event\":\"error\",\"message\":\"...\"}

Exit status:
  0   stopped by SIGTERM or SIGINT
  1   runtime failure
  2   bad flags or arguments (also: no supernode given or cached)
  10  the identity is in use: another process holds its key file (the message names the file
      and that process); every process needs its own --identity

The identity's key file stays locked while answer runs, so a second answer (or supernoded)
cannot run as the same user; `dial --lookup` can, since it only reads the key.

Examples:
  answer --supernode vxk1...@198.51.100.1:3478 --name alice --watch bob
  answer -s vxk1...@sn1.example.org:3478 -s vxk1...@sn2.example.org:3478 | jq -c 'select(.event==\"presence\")'";

/// Stay online: registered with the directory, watching presence, printing JSON-lines events.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "answer",
    version,
    about = "Stay online in the voxmesh directory and report events as JSON lines",
    long_about = "Stay online in the voxmesh directory and report events as JSON lines.\n\n\
        Registers this identity through a supernode (keeping a warm standby session with a \
        second one, so losing the supernode costs seconds), claims --name if given, watches the \
        presence of each --watch user (an ID, a contact alias or a name), and prints every event \
        on stdout, one JSON object per line. Supernodes learnt from the mesh are kept in the host \
        cache for the next start.",
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

fn emit(v: serde_json::Value) -> bool {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}").and_then(|_| out.flush()).is_ok()
}

fn event_json(ev: &AgentEvent, me: &str) -> Option<serde_json::Value> {
    use base64::Engine as _;
    Some(match ev {
        AgentEvent::Registered {
            supernode,
            addr,
            failover,
        } => {
            json!({"event": "registered", "user": me, "supernode": supernode.to_string(), "addr": addr, "failover": failover})
        }
        AgentEvent::Presence {
            user,
            online,
            last_seen,
            stale,
        } => {
            json!({"event": "presence", "user": user.to_string(), "online": online, "last_seen": last_seen, "stale": stale})
        }
        AgentEvent::Standby { supernode } => {
            json!({"event": "standby", "supernode": supernode.map(|s| s.to_string())})
        }
        AgentEvent::Claimed { name } => json!({"event": "claimed", "name": name}),
        AgentEvent::Delivered { from, payload, .. } => json!({
            "event": "message", "from": from.to_string(),
            "payload": base64::engine::general_purpose::STANDARD.encode(payload)
        }),
        AgentEvent::Error { message } => json!({"event": "error", "message": message}),
        AgentEvent::Routed { .. } | AgentEvent::Lookup { .. } | AgentEvent::Relays(_) => {
            return None;
        }
    })
}

fn run(args: Args) -> anyhow::Result<()> {
    let rt = runtime().context("cannot start the runtime")?;
    rt.block_on(async move {
        // Held until this block ends, i.e. for as long as we are online as this identity.
        let (identity, _lock) = args.directory.load_identity_locked()?;
        let me = identity.id().to_string();
        // Resolve --watch targets before going online, so typos fail fast.
        let targets: Vec<Target> = args.watch.iter().map(|w| args.directory.target(w)).collect::<anyhow::Result<_>>()?;
        let mut running = start_agent(&args.directory, identity, AgentConfig::new(Vec::new())).await?;
        if let Some(name) = &args.name {
            running.commands.send(AgentCommand::Claim(name.clone())).await.ok();
        }
        for t in &targets {
            match t {
                Target::Id(id) => {
                    running.commands.send(AgentCommand::Watch(*id)).await.ok();
                }
                // A name is resolved first; its holder is watched when the lookup answers.
                Target::Name(_) => {
                    running.commands.send(AgentCommand::Lookup(t.clone())).await.ok();
                }
            }
        }
        let cache = args.directory.host_cache_path().ok();
        loop {
            tokio::select! {
                name = signal_shutdown() => {
                    tracing::info!("{name}: going offline");
                    break;
                }
                ev = running.events.recv() => {
                    let Some(ev) = ev else { break };
                    if let AgentEvent::Delivered { id, .. } = &ev {
                        running.commands.send(AgentCommand::Acknowledge(*id, None)).await.ok();
                    }
                    if let AgentEvent::Lookup { target: Target::Name(n), result } = &ev {
                        match result {
                            Ok(Some(entry)) => {
                                if let Ok(rec) = crate::identity::verify_record::<crate::signal::Registration>(&entry.record, &crate::identity::Check::at(crate::identity::Timestamp::now())) {
                                    running.commands.send(AgentCommand::Watch(rec.id)).await.ok();
                                }
                            }
                            _ => {
                                emit(json!({"event": "error", "message": format!("cannot watch '{n}': no such name")}));
                            }
                        }
                    }
                    if let Some(v) = event_json(&ev, &me)
                        && !emit(v)
                    {
                        break; // stdout closed: nobody is listening any more
                    }
                }
            }
        }
        running.stop.trigger();
        if let Ok(Ok(agent)) = running.task.await
            && let Some(path) = cache
        {
            let _ = write_host_cache(&path, agent.known_supernodes());
        }
        Ok(())
    })
}
