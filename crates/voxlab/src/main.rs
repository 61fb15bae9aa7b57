//! `voxlab`: helpers for the NAT lab (not a user-facing program).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "voxlab",
    version,
    about = "Lab helpers for voxmesh tests and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Forward frames between two interfaces with seeded delay, jitter, loss and reordering.
    Netem(voxlab::netem::NetemArgs),
    /// Load a STUN server with Binding requests, check every answer, print one JSON report.
    StunLoad(voxlab::stunload::StunLoadArgs),
    /// Load a TURN relay with allocations and ChannelData both ways, check every packet, print one JSON report.
    TurnLoad(voxlab::turnload::TurnLoadArgs),
    /// Load supernoded with real sessions (register, refresh, lookup, route, presence), check every answer, print one JSON report.
    SnLoad(voxlab::snload::SnLoadArgs),
    /// Simulate a population of clients on the real cores (churn, promotion, calls), print one
    /// JSON report (defaults: 30 simulated minutes, lognormal sessions with a 10 min median,
    /// one call per online user per simulated hour).
    Sim(voxlab::sim::pop::SimArgs),
    /// Build the lab, run natprobe behind every NAT type against supernoded, print the table,
    /// then place a direct and a relayed call.
    Demo,
    /// Decode a call's sent Opus packets offline from its media traces: clean, with the
    /// receiver's losses concealed, and with them rebuilt from FEC (bench-media's references).
    MediaRef(voxlab::mediaref::MediaRefArgs),
    /// Run the product's echo cancellation, noise suppression and gain control offline on a
    /// far-end and a microphone WAV (scripts/bench-echo).
    AudioProcess(voxlab::audioproc::AudioProcessArgs),
    /// Regenerate shell completions and man pages (or, with --check, list stale ones).
    GenDocs {
        /// Only report stale files; exit 1 if any.
        #[arg(long)]
        check: bool,
        /// Repository root.
        #[arg(default_value = ".")]
        root: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Netem(a) => voxlab::netem::run(a),
        Cmd::StunLoad(a) => voxlab::stunload::run(a),
        Cmd::TurnLoad(a) => voxlab::turnload::run(a),
        Cmd::SnLoad(a) => voxlab::snload::run(a),
        Cmd::Sim(a) => voxlab::sim::pop::run(a),
        Cmd::MediaRef(a) => voxlab::mediaref::run(a),
        Cmd::AudioProcess(a) => voxlab::audioproc::run(a),
        Cmd::GenDocs { check, root } => gen_docs(check, &root),
        Cmd::Demo => voxlab::demo::run().and_then(|ok| {
            if ok {
                Ok(())
            } else {
                anyhow::bail!("the demo found wrong answers")
            }
        }),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voxlab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn gen_docs(check: bool, root: &std::path::Path) -> anyhow::Result<()> {
    use voxmesh::cli::docs;
    if check {
        let stale = docs::stale(root)?;
        for f in &stale {
            println!("stale: {}", f.display());
        }
        anyhow::ensure!(
            stale.is_empty(),
            "{} generated files are stale: run voxlab gen-docs",
            stale.len()
        );
    } else {
        for f in docs::write_all(root)? {
            println!("wrote {}", f.display());
        }
    }
    Ok(())
}
