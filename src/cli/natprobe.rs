//! `natprobe`: what kind of NAT is between this host and the internet, and what that means for
//! calls.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use super::{
    EXIT_OK, EXIT_USAGE, UsageError, Verbosity, is_usage, print_stdout, report_error, runtime,
};
use crate::nat::{MIN_DISCOVERY_INTERVAL, NatKind, ProbeConfig, Report, Stage, Timing};
use crate::net::{ProbeError, run_probe};

/// UDP is blocked: no server answered.
pub const EXIT_UDP_BLOCKED: u8 = 3;
/// A local problem: no route, no socket, a name that does not resolve.
pub const EXIT_LOCAL: u8 = 4;

/// The port STUN servers listen on unless told otherwise (RFC 8489 §18.1).
pub const DEFAULT_STUN_PORT: u16 = 3478;

const EXIT_CODES: &str = "\
Exit status:
  0  the probe ran (some properties may still be undecided: see \"undecided\")
  2  bad flags or arguments (also servers of mixed address families)
  3  UDP is blocked: no server answered (the JSON still says \"nat\": \"udp-blocked\")
  4  local error: a server name did not resolve, no route, or no socket

Examples:
  natprobe --server stun.example.org
  natprobe --server 198.51.100.1:3478 --json | jq .nat
  natprobe --server a.example.org --server b.example.org --lifetime";

/// Diagnose the NAT between this host and the internet (RFC 4787 / RFC 5780 terms).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "natprobe",
    version,
    about = "Diagnose the NAT between this host and the internet",
    long_about = "Diagnose the NAT between this host and the internet.\n\n\
        Runs RFC 5780 behaviour discovery against the first server that supports it (one with \
        two addresses, such as voxmesh's supernoded or coturn): mapping and filtering behaviour \
        in RFC 4787 terms, the classic NAT name, hairpinning and, with --lifetime, how long an \
        idle binding lives. With only ordinary STUN servers it infers mapping behaviour from two \
        of them and leaves filtering undecided. It measures the round trip to every server given, \
        and says in one line what the result means for calls.\n\n\
        Anything the evidence cannot decide (heavy loss, a server without RFC 5780) is reported \
        as null, never guessed.",
    after_long_help = EXIT_CODES
)]
pub struct Args {
    /// STUN server as HOST[:PORT] (default port 3478); repeat for several, in order of preference.
    #[arg(short, long = "server", value_name = "HOST[:PORT]", required = true)]
    pub servers: Vec<String>,

    /// Print exactly one JSON object on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,

    /// Also measure how long an idle UDP binding lives (takes about that long).
    #[arg(long)]
    pub lifetime: bool,

    /// Longest binding lifetime to search for, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 120.0, value_parser = positive_secs)]
    pub lifetime_max: f64,

    /// Seconds after which UDP counts as blocked when no server has answered (0.62 to 3). Each
    /// server gets 33 requests spread over them: enough that a server reachable through 50% loss
    /// each way goes unheard less than once in 10,000 probes.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.5, value_parser = budget_secs)]
    pub blocked_after: f64,

    /// Resolve server names to IPv4 addresses only.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Resolve server names to IPv6 addresses only.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,

    #[command(flatten)]
    pub verbosity: Verbosity,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err("expected seconds between 0 and 3600".into()),
    }
}

/// The longest `--blocked-after`: UDP blocked is said within 3 s.
const MAX_BLOCKED_AFTER: f64 = 3.0;

fn budget_secs(s: &str) -> Result<f64, String> {
    let t = Timing::default();
    let min = t.min_blocked_budget().as_secs_f64();
    match s.parse::<f64>() {
        Ok(v) if (min..=MAX_BLOCKED_AFTER).contains(&v) => Ok(v),
        _ => Err(format!(
            "expected seconds between {min} and {MAX_BLOCKED_AFTER} (a server that never answers \
             gets {} requests, at most one per {} ms, each waited on for {} ms)",
            t.blocked_probes(),
            MIN_DISCOVERY_INTERVAL.as_millis(),
            t.answer_wait.as_millis()
        )),
    }
}

/// Runs the program; the binary's `main` is this and nothing else.
pub fn main() -> ExitCode {
    let args = Args::parse();
    args.verbosity.init();
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let usage = is_usage(&e)
                || e.chain().any(|c| {
                    matches!(
                        c.downcast_ref::<ProbeError>(),
                        Some(ProbeError::MixedFamilies(..) | ProbeError::NoServers)
                    )
                });
            report_error("natprobe", &e, if usage { EXIT_USAGE } else { EXIT_LOCAL })
        }
    }
}

fn run(args: Args) -> anyhow::Result<u8> {
    let rt = runtime().context("cannot start the runtime")?;
    rt.block_on(async {
        let servers = resolve_all(&args).await?;
        let mut timing = Timing {
            lifetime_max: Duration::from_secs_f64(args.lifetime_max),
            blocked_budget: Duration::from_secs_f64(args.blocked_after),
            ..Timing::default()
        };
        timing.stagger = timing.stagger.min(timing.blocked_budget / 4);
        let config = ProbeConfig {
            servers,
            lifetime: args.lifetime,
            timing,
        };
        let progress = Progress::new(args.lifetime && std::io::stderr().is_terminal());
        let report = run_probe(config, |stage| progress.show(stage))
            .await
            .map_err(|e: ProbeError| anyhow::Error::new(e))?;
        progress.finish();
        let text = if args.json {
            serde_json::to_string(&report).context("cannot encode the report")? + "\n"
        } else {
            summary(&report)
        };
        print_stdout(&text).context("cannot write the report")?;
        Ok(if report.nat == Some(NatKind::UdpBlocked) {
            EXIT_UDP_BLOCKED
        } else {
            EXIT_OK
        })
    })
}

async fn resolve_all(args: &Args) -> anyhow::Result<Vec<SocketAddr>> {
    let mut want_v4 = match (args.ipv4, args.ipv6) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let mut out = Vec::new();
    for spec in &args.servers {
        let addr = resolve(spec, want_v4).await?;
        // Every server after the first is resolved in the first one's family.
        want_v4 = Some(addr.is_ipv4());
        out.push(addr);
    }
    Ok(out)
}

/// Resolves HOST[:PORT], `[V6]:PORT`, or a bare address, preferring `want_v4`'s family.
pub async fn resolve(spec: &str, want_v4: Option<bool>) -> anyhow::Result<SocketAddr> {
    let bare = spec.trim_start_matches('[').trim_end_matches(']');
    let literal = spec.parse::<SocketAddr>().ok().or_else(|| {
        bare.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, DEFAULT_STUN_PORT))
    });
    if let Some(a) = literal {
        if want_v4.is_some_and(|v4| v4 != a.is_ipv4()) {
            let fam = if a.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(UsageError(format!(
                "server {spec} is {fam}, but the probe uses the other family (from -4/-6 or the first server)"
            ))
            .into());
        }
        return Ok(a);
    }
    let (host, port) = match spec.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            let Some(port) = p.parse::<u16>().ok().filter(|p| *p != 0) else {
                return Err(UsageError(format!("bad port in server '{spec}'")).into());
            };
            (h, port)
        }
        _ => (spec, DEFAULT_STUN_PORT),
    };
    if host.is_empty() {
        return Err(UsageError(format!("empty host name in server '{spec}'")).into());
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve server '{host}'"))?
        .collect();
    addrs
        .iter()
        .find(|a| want_v4.is_none_or(|v4| a.is_ipv4() == v4))
        .copied()
        .with_context(|| {
            let fam = if want_v4 == Some(true) {
                "IPv4"
            } else {
                "IPv6"
            };
            format!("server '{host}' has no {fam} address")
        })
}

/// A spinner for the lifetime search when stderr is a terminal; nothing otherwise.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(enabled: bool) -> Progress {
        Progress(enabled.then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        }))
    }

    fn show(&self, stage: Stage) {
        let Some(bar) = &self.0 else { return };
        bar.set_message(match stage {
            Stage::Discovery => "contacting servers".to_string(),
            Stage::Behaviour => "testing mapping, filtering and hairpinning".to_string(),
            Stage::Lifetime(at) => format!(
                "binding lifetime: probing a binding idle for {:.1} s",
                at.as_secs_f64()
            ),
            Stage::Done => "done".to_string(),
        });
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// The human-readable summary.
pub fn summary(r: &Report) -> String {
    let mut s = String::new();
    let or = |v: Option<&str>| v.unwrap_or("undecided").to_string();
    let nat = match r.nat {
        Some(k) => k.as_str().replace('-', " "),
        None => "undecided".into(),
    };
    let _ = writeln!(s, "NAT:              {nat}");
    let _ = writeln!(s, "Mapping:          {}", or(r.mapping.map(|b| b.as_str())));
    let _ = writeln!(
        s,
        "Filtering:        {}",
        or(r.filtering.map(|b| b.as_str()))
    );
    if let Some(m) = r.mapped_address {
        let preserved = match r.port_preserved {
            Some(true) => "port preserved",
            _ => "port changed",
        };
        let local = r
            .local_address
            .map(|l| format!("; local {l}"))
            .unwrap_or_default();
        let _ = writeln!(s, "Mapped address:   {m} ({preserved}{local})");
    }
    let hp = match r.hairpinning {
        Some(true) => "yes",
        Some(false) => "no",
        None => "undecided",
    };
    let _ = writeln!(s, "Hairpinning:      {hp}");
    if let (Some(l), Some([lo, hi])) = (r.lifetime_s, r.lifetime_range_s) {
        let _ = writeln!(
            s,
            "Binding lifetime: about {l:.1} s (survived {lo:.1} s, gone by {hi:.1} s)"
        );
    }
    for (i, srv) in r.servers.iter().enumerate() {
        let label = if i == 0 { "Servers:" } else { "" };
        let rtt = srv
            .rtt_ms
            .map_or("no answer".to_string(), |ms| format!("rtt {ms:.1} ms"));
        let rfc = match (srv.rfc5780, srv.other_address) {
            (Some(true), Some(o)) => format!(", RFC 5780 (alternate {o})"),
            _ => String::new(),
        };
        let _ = writeln!(s, "{label:<18}{}  {rtt}{rfc}", srv.address);
    }
    if let Some(loss) = r.loss {
        let _ = writeln!(s, "Loss observed:    {:.0}%", loss * 100.0);
    }
    for u in &r.undecided {
        let _ = writeln!(s, "Undecided:        {u}");
    }
    let _ = writeln!(s, "For calls:        {}", r.advice);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_after_range_is_what_help_says() {
        // --help says "0.62 to 3": the shortest window that fits the requests the 1e-4 bound
        // needs (see `nat::Timing`), the longest the 3 s promise allows.
        assert!(budget_secs("0.62").is_ok() && budget_secs("3").is_ok());
        let short = budget_secs("0.61").unwrap_err();
        assert!(short.contains("33 requests"), "{short}");
        assert!(budget_secs("3.01").is_err() && budget_secs("x").is_err());
    }
}
