//! `dial`: look a user up in the directory (placing calls arrives with the call layer).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde_json::json;

use super::client::{DirectoryArgs, start_agent};
use super::{EXIT_FAILURE, EXIT_USAGE, Verbosity, is_usage, print_stdout, report_error, runtime};
use crate::agent::{AgentConfig, AgentEvent};
use crate::identity::{Check, Timestamp, verify_record};
use crate::net::agent::AgentCommand;
use crate::signal::{Entry, Registration, Target};

/// The user is in the directory but offline (or its entry is stale).
pub const EXIT_OFFLINE: u8 = 3;
/// No such user or name.
pub const EXIT_UNKNOWN: u8 = 4;
/// No supernode answered.
pub const EXIT_UNREACHABLE: u8 = 5;

const EXIT_CODES: &str = "\
Output of --lookup (one JSON object on stdout):
  {\"id\":\"vx1...\",\"name\":\"alice\",\"online\":true,\"last_seen\":1790000000,\"stale\":false,\"supernode\":\"vx1...\"}

Exit status:
  0  the user is online
  1  runtime failure
  2  bad flags or arguments
  3  the user is known but offline (or its supernode just died: \"stale\": true)
  4  no such user or name
  5  no supernode answered

dial does not lock its identity (answer and supernoded do, and exit 10 when another process
holds it): a lookup only reads the key and never registers, so it runs beside an answer of the
same identity.

Examples:
  dial --supernode vxk1...@198.51.100.1:3478 --lookup alice
  dial -s vxk1...@sn.example.org:3478 --lookup vx1wedzd8kmzcu4m0lxn7e0wz5rke9u8eef2khqwu | jq .online";

/// Look a user up in the voxmesh directory.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "dial",
    version,
    about = "Look a user up in the voxmesh directory",
    long_about = "Look a user up in the voxmesh directory.\n\n\
        With --lookup, prints the user's directory record (ID, name, online, last seen) as one \
        JSON object and exits 0 if the user is online, non-zero otherwise. USER is an ID \
        (vx1...), a contact alias, or a name. Placing calls arrives with the call layer.",
    after_long_help = EXIT_CODES
)]
pub struct Args {
    /// Print the directory record of USER and exit.
    #[arg(long, required = true)]
    pub lookup: bool,

    /// Who: an ID (vx1...), a contact alias or a name.
    #[arg(value_name = "USER")]
    pub user: String,

    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub timeout: u64,

    #[command(flatten)]
    pub directory: DirectoryArgs,

    #[command(flatten)]
    pub verbosity: Verbosity,
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    args.verbosity.init();
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => report_error(
            "dial",
            &e,
            if is_usage(&e) {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            },
        ),
    }
}

/// The JSON form of an entry.
pub fn entry_json(entry: &Entry) -> serde_json::Value {
    let id = verify_record::<Registration>(&entry.record, &Check::at(Timestamp::now()))
        .map(|r| r.id.to_string())
        .unwrap_or_default();
    json!({
        "id": id,
        "name": entry.name,
        "online": entry.online && !entry.stale,
        "last_seen": entry.last_seen,
        "stale": entry.stale,
        "supernode": entry.via.to_string(),
    })
}

fn run(args: Args) -> anyhow::Result<u8> {
    let rt = runtime().context("cannot start the runtime")?;
    rt.block_on(async move {
        let target = args.directory.target(&args.user)?;
        // Not locked: a lookup-only agent never registers, so an `answer` running as this
        // identity keeps its registration (the supernode drops a registration only with the
        // session that made it).
        let identity = args.directory.load_identity()?;
        let mut config = AgentConfig::new(Vec::new());
        config.register = false;
        config.standby = false;
        let mut running = start_agent(&args.directory, identity, config).await?;
        running.commands.send(AgentCommand::Lookup(target.clone())).await.ok();
        let deadline = tokio::time::sleep(Duration::from_secs(args.timeout));
        tokio::pin!(deadline);
        // Why no supernode answered (a wrong key in the entry, an unreachable address), for the
        // message when we give up.
        let mut last_error: Option<String> = None;
        let code = loop {
            tokio::select! {
                _ = &mut deadline => {
                    match &last_error {
                        Some(e) => eprintln!("dial: no supernode answered within {} s ({e})", args.timeout),
                        None => eprintln!("dial: no supernode answered within {} s", args.timeout),
                    }
                    break EXIT_UNREACHABLE;
                }
                ev = running.events.recv() => match ev {
                    Some(AgentEvent::Lookup { result, .. }) => match result {
                        Ok(Some(entry)) => {
                            print_stdout(&format!("{}\n", entry_json(&entry)))?;
                            break if entry.online && !entry.stale { 0 } else { EXIT_OFFLINE };
                        }
                        Ok(None) => {
                            let what = match &target { Target::Id(id) => id.to_string(), Target::Name(n) => n.clone() };
                            eprintln!("dial: no such user: {what}");
                            break EXIT_UNKNOWN;
                        }
                        Err(e) => {
                            match &last_error {
                                Some(why) => eprintln!("dial: lookup failed: {e} ({why})"),
                                None => eprintln!("dial: lookup failed: {e}"),
                            }
                            break EXIT_UNREACHABLE;
                        }
                    },
                    Some(AgentEvent::Error { message }) => {
                        tracing::debug!("{message}");
                        last_error = Some(message);
                    }
                    Some(_) => {}
                    None => break EXIT_UNREACHABLE,
                }
            }
        };
        running.stop.trigger();
        Ok(code)
    })
}
