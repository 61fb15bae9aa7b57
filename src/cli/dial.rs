//! `dial`: call a user, or look one up in the directory (`--lookup`). The call itself is in
//! `dial_call`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde_json::json;

use super::client::{DirectoryArgs, start_agent};
use super::{
    EXIT_FAILURE, EXIT_IDENTITY_IN_USE, EXIT_USAGE, Verbosity, is_identity_in_use, is_usage,
    print_stdout, report_error, runtime,
};
use crate::client::{AgentConfig, AgentEvent};
use crate::identity::{Check, Timestamp, verify_record};
use crate::net::drivers::client::AgentCommand;
use crate::signal::{Entry, Registration, Target};

/// The user is in the directory but offline (or its entry is stale).
pub const EXIT_OFFLINE: u8 = 3;
/// No such user or name.
pub const EXIT_UNKNOWN: u8 = 4;
/// No supernode answered.
pub const EXIT_UNREACHABLE: u8 = 5;

const EXIT_CODES: &str = "\
Events (one JSON object per line, on stdout or --events FILE):
  {\"event\":\"dialing\",\"call\":\"...\",\"ms\":0.4}
  {\"event\":\"ringing\",\"call\":\"...\",\"ms\":61.2}          (ms: since dial started)
  {\"event\":\"answered\",\"call\":\"...\",\"ms\":2071.0}   (set-up events also carry \"at\": Unix ms)
  {\"event\":\"connected\",\"call\":\"...\",\"sas\":\"k3xo\",\"path\":\"direct\",
   \"local\":{\"type\":\"srflx\",\"addr\":\"...\"},\"remote\":{\"type\":\"host\",\"addr\":\"...\"},\"rtt_ms\":50.1}
  {\"event\":\"path\",...}  {\"event\":\"dtmf\",\"digit\":\"5\"}
  {\"event\":\"stats\",\"loss_percent\":4.8,\"unrecovered_percent\":0.6,\"concealed_percent\":0.9,
   \"jitter_ms\":6.1,\"rtt_ms\":101.2,\"buffer_ms\":22.5,\"bitrate\":48000,\"mos\":4.23,...}
   (loss before and after FEC; mos: an ITU-T G.107 E-model estimate, narrowband scale, 4.41 best)
  {\"event\":\"ended\",\"call\":\"...\",\"reason\":\"remote-hangup\",\"exit\":0}
Compare the sas (short authentication string) with the other side: equal strings rule out a
key substitution by anyone in between.

Control (--control FILE or -, one JSON object per line):
  {\"cmd\":\"hangup\"} {\"cmd\":\"dtmf\",\"digits\":\"12#\"} {\"cmd\":\"mute\"} {\"cmd\":\"unmute\"}
  {\"cmd\":\"hold\"} {\"cmd\":\"resume\"} {\"cmd\":\"stats\"}

Output of --lookup (one JSON object on stdout):
  {\"id\":\"vx1...\",\"name\":\"alice\",\"online\":true,\"last_seen\":1790000000,\"stale\":false,\"supernode\":\"vx1...\"}

Exit status:
  0   the call ended normally (either side hung up); --lookup: the user is online
  1   runtime failure
  2   bad flags or arguments
  3   the user is offline (or its supernode just died: \"stale\": true)
  4   no such user or name
  5   no supernode answered
  6   the callee rejected the call
  7   the callee is busy
  8   no answer (the call rang for --ring-timeout seconds, 60 by default)
  9   no network path to the callee (or the path broke and none was found)
  10  the identity is in use by a process that takes no calls for us (no answer's control
      socket next to the key file)
  11  cancelled (SIGINT or SIGTERM before the callee answered)

Through a running answer: when an `answer` is online as this identity, dial places the call
through it (its control socket, KEYFILE.sock next to the key file, owner-only) instead of
registering a second time; events and exit codes are the same, --play/--record take files
only, and the answer's --relay-only setting applies. Socket protocol (JSON lines): dial sends
{\"cmd\":\"dial\",\"user\":\"vx1...\"} (or \"name\"; optional \"play\", \"record\" paths),
then control commands; the answer sends the call's events and closes after \"ended\".

Audio: --play and --record take WAV (.wav), Ogg Opus (.opus, .ogg) or raw PCM (anything else;
`-` is raw 48 kHz mono s16le on stdin/stdout). Playback is paced in real time; when it ends the
call is hung up, unless --duration says how long to stay.

Microphone and speaker: on a terminal, without --play and --record, the call talks through the
default sound devices, with echo cancellation, noise suppression and gain control on
(--no-audio-processing turns them off; --aec, --ns, --agc pick some). File and pipe audio is
sent as it is unless --aec, --ns or --agc ask for processing (the audio received, as it goes
to --record, is the echo reference).

Examples:
  dial -s vxk1...@198.51.100.1:3478 bob --play hello.wav --record reply.wav
  pipe-audio capture | dial -s vxk1...@sn.example.org:3478 bob --play - --events calls.jsonl
  dial -s vxk1...@sn.example.org:3478 --lookup alice | jq .online";

/// Call a user (or look one up) in the voxmesh directory.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "dial",
    version,
    about = "Call a user peer to peer, or look one up in the voxmesh directory",
    long_about = "Call a user peer to peer, or look one up in the voxmesh directory.\n\n\
        Registers this identity through a supernode, signals the callee end to end (signed, \
        with a Noise key exchange), finds a path (direct through the NATs, else through a \
        relay the supernode offers), and sends and receives Opus audio encrypted end to end. \
        Events are JSON lines. USER is an ID (vx1...), a contact alias or a name.\n\n\
        With --lookup, prints the user's directory record instead and exits 0 if the user is \
        online.",
    after_long_help = EXIT_CODES
)]
pub struct Args {
    /// Print the directory record of USER and exit.
    #[arg(long)]
    pub lookup: bool,

    /// Who: an ID (vx1...), a contact alias or a name.
    #[arg(value_name = "USER")]
    pub user: String,

    /// Audio to send: a file, or - for raw PCM on stdin.
    #[arg(long, value_name = "FILE|-")]
    pub play: Option<PathBuf>,

    /// Where to write the audio received: a file, or - for raw PCM on stdout.
    #[arg(long, value_name = "FILE|-")]
    pub record: Option<PathBuf>,

    /// Hang up this many seconds after the call connects.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,

    /// Send these keypad digits (0-9, *, #, A-D) once the call connects.
    #[arg(long, value_name = "DIGITS")]
    pub dtmf: Option<String>,

    /// Write events here instead of stdout (needed when stdout carries audio).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,

    #[command(flatten)]
    pub media: super::call_io::CallMediaArgs,

    #[command(flatten)]
    pub processing: super::call_audio::ProcessingArgs,

    /// Test knob: run this end's audio clock (capture and playout ticks) this many ppm fast,
    /// to measure clock drift between two ends that share one machine's clock.
    #[arg(
        long = "clock-ppm",
        value_name = "PPM",
        default_value_t = 0.0,
        hide = true,
        allow_negative_numbers = true
    )]
    pub clock_ppm: f64,

    /// Read control commands (JSON lines) from this file, or - for stdin.
    #[arg(long, value_name = "FILE|-")]
    pub control: Option<PathBuf>,

    /// Give up ringing ("no answer", exit 8) after this many seconds.
    #[arg(long = "ring-timeout", value_name = "SECONDS", default_value_t = 60.0)]
    pub ring_timeout: f64,

    /// Give up when no supernode answers (or a --lookup gets no answer) within this many
    /// seconds.
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
            } else if is_identity_in_use(&e) {
                EXIT_IDENTITY_IN_USE
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
    if !args.lookup {
        return super::dial_call::run(args);
    }
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
