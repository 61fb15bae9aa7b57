//! `supernoded`: the supernode service. For now: STUN with RFC 5780 behaviour discovery.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use super::{
    EXIT_FAILURE, EXIT_USAGE, Verbosity, is_usage, print_stdout, report_error, runtime, usage,
};
use crate::net::{ShutdownSignal, serve_metrics, signal_shutdown};
use crate::supernode::{BindingConfig, StunServer};

/// A socket could not be bound (address in use, not local, no permission).
pub const EXIT_BIND: u8 = 4;

const EXIT_CODES: &str = "\
Exit status:
  0  stopped cleanly (SIGTERM or SIGINT)
  1  runtime failure
  2  bad flags or arguments (also contradictory ones, e.g. --alt-addr without a listener of its family)
  4  cannot bind a listening socket

On start it prints one JSON line on stdout naming what it listens on, e.g.
  {\"event\":\"listening\",\"stun\":[{\"primary\":\"198.51.100.1:3478\",\"alternate\":\"198.51.100.2:3479\"}],\"metrics\":null}
so scripts started with port 0 learn the ports.

Examples:
  supernoded --listen 198.51.100.1:3478 --alt-addr 198.51.100.2
  supernoded --listen 0.0.0.0:3478 --metrics 127.0.0.1:9478";

/// The supernode service: STUN for clients (with RFC 5780 NAT behaviour discovery).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "supernoded",
    version,
    about = "The voxmesh supernode service (STUN with RFC 5780 behaviour discovery)",
    long_about = "The voxmesh supernode service.\n\n\
        Serves STUN Binding requests (RFC 8489) so clients learn their public address, and, given \
        a second address with --alt-addr, RFC 5780 NAT behaviour discovery: OTHER-ADDRESS, \
        RESPONSE-ORIGIN, CHANGE-REQUEST, RESPONSE-PORT and PADDING, served from two addresses \
        times two ports. Classic RFC 3489 clients are answered too.\n\n\
        Amplification: responses are at most a few dozen bytes longer than the request; PADDING \
        is echoed only up to the request's size (RFC 5780 suggests the MTU), and RESPONSE-PORT \
        only reaches the requester's own address. --no-rfc5780 turns all of RFC 5780 off.",
    after_long_help = EXIT_CODES
)]
pub struct Args {
    /// UDP address to serve STUN on; repeat for IPv4 and IPv6.
    #[arg(
        short,
        long = "listen",
        value_name = "ADDR",
        default_value = "0.0.0.0:3478"
    )]
    pub listen: Vec<SocketAddr>,

    /// Alternate address for RFC 5780, as IP or IP:PORT (port defaults to the listen port + 1);
    /// pairs with the --listen address of its family.
    #[arg(long = "alt-addr", value_name = "ADDR")]
    pub alt_addr: Vec<String>,

    /// Serve plain STUN only: no CHANGE-REQUEST, RESPONSE-PORT, PADDING or OTHER-ADDRESS.
    #[arg(long)]
    pub no_rfc5780: bool,

    /// Leave the SOFTWARE attribute out of responses (saves 28 bytes each).
    #[arg(long)]
    pub no_software: bool,

    /// Serve Prometheus metrics over HTTP on this address.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    #[command(flatten)]
    pub verbosity: Verbosity,
}

/// The SOFTWARE attribute we send (RFC 8489 §14.14).
pub fn software() -> String {
    format!("voxmesh supernoded {}", env!("CARGO_PKG_VERSION"))
}

/// Runs the program.
pub fn main() -> ExitCode {
    let args = Args::parse();
    args.verbosity.init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = if is_usage(&e) {
                EXIT_USAGE
            } else if e.chain().any(|c| {
                c.downcast_ref::<crate::supernode::StunServerError>()
                    .is_some()
            }) {
                EXIT_BIND
            } else {
                EXIT_FAILURE
            };
            report_error("supernoded", &e, code)
        }
    }
}

/// Pairs each --listen with the --alt-addr of its family.
pub fn binding_configs(args: &Args) -> anyhow::Result<Vec<BindingConfig>> {
    let mut alts: Vec<(IpAddr, Option<u16>)> = Vec::new();
    for a in &args.alt_addr {
        if let Ok(sa) = a.parse::<SocketAddr>() {
            alts.push((sa.ip(), Some(sa.port())));
        } else if let Ok(ip) = a
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            alts.push((ip, None));
        } else {
            return Err(usage(format!(
                "--alt-addr '{a}' is not an IP address or IP:PORT"
            )));
        }
    }
    let mut configs = Vec::new();
    for primary in &args.listen {
        let mut mine = alts
            .iter()
            .filter(|(ip, _)| ip.is_ipv4() == primary.is_ipv4());
        let alt = mine.next();
        if mine.next().is_some() {
            return Err(usage(format!(
                "more than one --alt-addr for the {primary} listener"
            )));
        }
        let alternate = alt.map(|(ip, port)| {
            let port = port.unwrap_or(if primary.port() == 0 {
                0
            } else {
                primary.port().wrapping_add(1)
            });
            SocketAddr::new(*ip, port)
        });
        configs.push(BindingConfig {
            primary: *primary,
            alternate,
            rfc5780: !args.no_rfc5780,
            software: (!args.no_software).then(software),
        });
    }
    for (ip, _) in &alts {
        if !args.listen.iter().any(|l| l.is_ipv4() == ip.is_ipv4()) {
            return Err(usage(format!(
                "--alt-addr {ip} has no --listen address of the same family"
            )));
        }
    }
    Ok(configs)
}

fn run(args: Args) -> anyhow::Result<()> {
    let configs = binding_configs(&args)?;
    let rt = runtime().context("cannot start the runtime")?;
    rt.block_on(async move {
        let server = StunServer::bind(configs).await?;
        let (signal, shutdown) = ShutdownSignal::new();
        let mut metrics_addr = None;
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(addr) = args.metrics {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| crate::supernode::StunServerError::BindMetrics {
                    addr,
                    source,
                })?;
            metrics_addr = listener.local_addr().ok();
            let counters = server.counters();
            let render = Arc::new(move || {
                let mut s = String::new();
                counters.render(&mut s);
                s
            });
            tasks.spawn(serve_metrics(listener, render, shutdown.clone()));
        }
        let stun: Vec<serde_json::Value> = server
            .configs()
            .iter()
            .map(|c| serde_json::json!({"primary": c.primary, "alternate": c.alternate}))
            .collect();
        for c in server.configs() {
            match c.alternate {
                Some(alt) => tracing::info!("STUN on {} with RFC 5780 alternate {alt}", c.primary),
                None => tracing::info!("STUN on {}", c.primary),
            }
        }
        let line = serde_json::json!({"event": "listening", "stun": stun, "metrics": metrics_addr});
        print_stdout(&format!("{line}\n"))?;
        let mut run = tokio::spawn(server.run(shutdown));
        let result = tokio::select! {
            name = signal_shutdown() => {
                tracing::info!("{name}: shutting down");
                signal.trigger();
                (&mut run).await
            }
            r = &mut run => r,
        };
        signal.trigger();
        while tasks.join_next().await.is_some() {}
        result
            .context("the STUN service panicked")?
            .context("the STUN service failed")?;
        Ok(())
    })
}
