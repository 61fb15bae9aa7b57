//! Flag definitions and the glue each binary runs. They live in the library so that help,
//! completions and man pages come from one definition (see [`commands`] and `voxlab gen-docs`).
//!
//! Exit codes shared by every program: 0 success, 1 a runtime failure, 2 bad usage (clap's
//! own), and [`EXIT_IDENTITY_IN_USE`] (10) in every program that runs as an identity. Programs
//! add their own from 3 to 9 and list them in `--help`.

#[cfg(feature = "calls")]
pub mod answer;
#[cfg(feature = "calls")]
pub mod call_audio;
#[cfg(feature = "calls")]
pub mod call_io;
#[cfg(feature = "calls")]
pub mod client;
pub mod config;
#[cfg(feature = "calls")]
pub mod dial;
#[cfg(feature = "calls")]
mod dial_call;
pub mod docs;
#[cfg(feature = "calls")]
pub mod local;
#[cfg(feature = "natprobe")]
pub mod natprobe;
#[cfg(feature = "devices")]
pub mod pipe_audio;
#[cfg(feature = "relay")]
pub mod relayd;
#[cfg(feature = "relay")]
pub mod relayd_tools;
#[cfg(feature = "supernode")]
pub mod supernoded;

use std::io::{self, Write};
use std::process::ExitCode;

/// Success.
pub const EXIT_OK: u8 = 0;
/// A runtime failure not covered by a more specific code.
pub const EXIT_FAILURE: u8 = 1;
/// Bad flags or arguments (clap's code).
pub const EXIT_USAGE: u8 = 2;

/// The identity key file is locked by another running process (see
/// [`crate::identity::IdentityLock`]): the same code in every program that locks its identity
/// (`supernoded`, `answer`, `relayd --supernode`), above the range programs use for their own.
pub const EXIT_IDENTITY_IN_USE: u8 = 10;

/// Whether `err` (or any cause) is an identity held by another process.
pub fn is_identity_in_use(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        matches!(
            c.downcast_ref::<crate::identity::KeyFileError>(),
            Some(crate::identity::KeyFileError::InUse { .. })
        )
    })
}

/// Arguments that parse but contradict each other, or miss something required: exit 2, like
/// clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A usage error as an `anyhow::Error`.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// Whether `err` (or any cause) is a [`UsageError`].
pub fn is_usage(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|c| c.downcast_ref::<UsageError>().is_some())
}

/// `-v`/`-q`, shared by every program. `RUST_LOG` overrides both.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct Verbosity {
    /// Log more on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

impl Verbosity {
    /// Installs the `tracing` subscriber on stderr.
    pub fn init(self) {
        let level = match (self.quiet, self.verbose) {
            (true, _) => "error",
            (false, 0) => "warn",
            (false, 1) => "info",
            (false, 2) => "debug",
            (false, _) => "trace",
        };
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(io::stderr)
            // Escape codes only for a terminal: a log file or journald gets plain text.
            .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
            .with_target(false)
            .try_init();
    }
}

/// Every user-facing program's command definition, for completions and man pages: those this
/// build has (the default features have them all).
pub fn commands() -> Vec<clap::Command> {
    vec![
        #[cfg(feature = "calls")]
        <answer::Args as clap::CommandFactory>::command(),
        #[cfg(feature = "calls")]
        <dial::Args as clap::CommandFactory>::command(),
        #[cfg(feature = "natprobe")]
        <natprobe::Args as clap::CommandFactory>::command(),
        #[cfg(feature = "relay")]
        relayd::command(),
        #[cfg(feature = "supernode")]
        supernoded::command(),
        #[cfg(feature = "devices")]
        <pipe_audio::Args as clap::CommandFactory>::command(),
    ]
}

/// Prints `err` and its causes once, prefixed with the program name, and returns `code`.
pub fn report_error(program: &str, err: &anyhow::Error, code: u8) -> ExitCode {
    let mut msg = format!("{program}: {err}");
    for cause in err.chain().skip(1) {
        msg.push_str(&format!(": {cause}"));
    }
    let _ = writeln!(io::stderr(), "{msg}");
    ExitCode::from(code)
}

/// Writes `text` to stdout. A closed pipe (`natprobe --json | head -c0`) is not an error: the
/// reader has what it wanted.
pub fn print_stdout(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// A tokio runtime on the current thread: every voxmesh program is I/O-bound and small.
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
