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
    Netem(voxmesh::lab::netem::NetemArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Netem(a) => voxmesh::lab::netem::run(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voxlab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
