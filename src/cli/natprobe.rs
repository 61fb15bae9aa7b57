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
use crate::net::drivers::probe::{ProbeError, run_probe};

/// UDP is blocked: no server answered.
pub const EXIT_UDP_BLOCKED: u8 = 3;
/// A local problem: no route, no socket, a name that does not resolve.
pub const EXIT_LOCAL: u8 = 4;

/// The port STUN servers listen on unless told otherwise (RFC 8489 §18.1).
pub const DEFAULT_STUN_PORT: u16 = 3478;

const EXIT_CODES: &str = "\
Exit status:
  0  the probe ran in at least one family (some properties may still be undecided: see
     \"undecided\")
  2  bad flags or arguments (also -4/-6 with a server address of the other family)
  3  UDP is blocked in every family probed: no server answered (the JSON still says
     \"nat\": \"udp-blocked\")
  4  local error in every family: a server name did not resolve, no route, or no socket

JSON (--json): one object. Its top-level fields are the report of the primary family (the
family of the first server's first address): nat, mapping, filtering, mapped_address,
local_address, port_preserved, hairpinning, lifetime_s, lifetime_range_s, servers[] (address,
rtt_ms, rfc5780, other_address, ...), rfc5780_server, loss, undecided[], advice, duration_ms.
Beside them:
  \"family\"   \"ipv4\" or \"ipv6\": which family the top-level fields describe
  \"ipv4\"     the IPv4 report (the same fields), or null when IPv4 was not probed
  \"ipv6\"     the IPv6 report, or null when IPv6 was not probed
  \"errors\"   {\"ipv4\": MESSAGE, \"ipv6\": MESSAGE} for a family whose servers resolved but
             which could not be probed (no route, no socket); empty otherwise
Both families are probed, at the same time, when the servers given include addresses of
both (literals of both kinds, or a name with A and AAAA records); -4 or -6 keeps to one.

Examples:
  natprobe --server stun.example.org
  natprobe -s vxk1...@198.51.100.1:3478 --json | jq .nat
  natprobe -s 198.51.100.1 -s 2001:db8::1 --json | jq '.ipv4.nat, .ipv6.nat'
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
    /// STUN server as HOST or HOST:PORT (default port 3478), or a supernode as KEY@HOST:PORT (what
    /// `supernoded` prints; the key is checked but not used: STUN answers are not signed);
    /// repeat for several, in order of preference. IPv4 and IPv6 servers are probed side by side.
    #[arg(
        short = 's',
        long = "server",
        visible_alias = "supernode",
        value_name = "[KEY@]HOST[:PORT]",
        required = true
    )]
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

    /// Probe IPv4 only (server names resolve to IPv4 addresses only).
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Probe IPv6 only (server names resolve to IPv6 addresses only).
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

/// The servers of each family, in the order given, and which family came first.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub v4: Vec<SocketAddr>,
    pub v6: Vec<SocketAddr>,
    /// The family of the first server's first address: the one the top level reports.
    pub primary_v4: bool,
}

/// One family's outcome.
type Outcome = Option<Result<Report, ProbeError>>;

fn run(args: Args) -> anyhow::Result<u8> {
    let rt = runtime().context("cannot start the runtime")?;
    rt.block_on(async {
        let plan = plan(&args).await?;
        let mut timing = Timing {
            lifetime_max: Duration::from_secs_f64(args.lifetime_max),
            blocked_budget: Duration::from_secs_f64(args.blocked_after),
            ..Timing::default()
        };
        timing.stagger = timing.stagger.min(timing.blocked_budget / 4);
        let config = |servers: &[SocketAddr]| ProbeConfig {
            servers: servers.to_vec(),
            lifetime: args.lifetime,
            timing: timing.clone(),
        };
        let progress = Progress::new(args.lifetime && std::io::stderr().is_terminal());
        // Each family has its own sockets and local address: the two run side by side.
        let family = |cfg: Option<ProbeConfig>| {
            let progress = &progress;
            async move {
                match cfg {
                    Some(c) => Some(run_probe(c, |stage| progress.show(stage)).await),
                    None => None,
                }
            }
        };
        let c4 = (!plan.v4.is_empty()).then(|| config(&plan.v4));
        let c6 = (!plan.v6.is_empty()).then(|| config(&plan.v6));
        let (v4, v6): (Outcome, Outcome) = tokio::join!(family(c4), family(c6));
        progress.finish();
        let out = Outcomes::new(v4, v6, plan.primary_v4)?;
        let text = if args.json {
            serde_json::to_string(&out.json()?).context("cannot encode the report")? + "\n"
        } else {
            out.summary()
        };
        print_stdout(&text).context("cannot write the report")?;
        Ok(out.exit_code())
    })
}

/// The reports of both families, ready to print.
struct Outcomes {
    v4: Option<Report>,
    v6: Option<Report>,
    errors: Vec<(&'static str, String)>,
    primary_v4: bool,
}

impl Outcomes {
    /// Fails when no family could be probed at all (the primary family's error).
    fn new(v4: Outcome, v6: Outcome, primary_v4: bool) -> anyhow::Result<Outcomes> {
        let mut errors = Vec::new();
        let mut first_err = None;
        let mut keep = |name: &'static str, o: Outcome, primary: bool| match o {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                errors.push((name, chain_text(&e)));
                if primary || first_err.is_none() {
                    first_err = Some(e);
                }
                None
            }
            None => None,
        };
        let r4 = keep("ipv4", v4, primary_v4);
        let r6 = keep("ipv6", v6, !primary_v4);
        if r4.is_none() && r6.is_none() {
            return Err(first_err.unwrap_or(ProbeError::NoServers).into());
        }
        // The primary family is the first server's, unless only the other could be probed.
        let primary_v4 = if primary_v4 {
            r4.is_some()
        } else {
            r6.is_none()
        };
        Ok(Outcomes {
            v4: r4,
            v6: r6,
            errors,
            primary_v4,
        })
    }

    fn primary(&self) -> &Report {
        let r = if self.primary_v4 { &self.v4 } else { &self.v6 };
        r.as_ref().expect("the primary family has a report")
    }

    fn json(&self) -> anyhow::Result<serde_json::Value> {
        let mut top = serde_json::to_value(self.primary())?;
        let obj = top.as_object_mut().expect("a report is an object");
        obj.insert(
            "family".into(),
            (if self.primary_v4 { "ipv4" } else { "ipv6" }).into(),
        );
        obj.insert("ipv4".into(), serde_json::to_value(&self.v4)?);
        obj.insert("ipv6".into(), serde_json::to_value(&self.v6)?);
        let errors: serde_json::Map<String, serde_json::Value> = self
            .errors
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone().into()))
            .collect();
        obj.insert("errors".into(), errors.into());
        Ok(top)
    }

    fn summary(&self) -> String {
        let both =
            (self.v4.is_some() as usize + self.v6.is_some() as usize + self.errors.len()) > 1;
        if !both {
            return summary(self.primary());
        }
        let mut s = String::new();
        for (name, r) in [("IPv4", &self.v4), ("IPv6", &self.v6)] {
            let key = name.to_ascii_lowercase();
            if let Some(r) = r {
                let _ = writeln!(s, "{name}:");
                for line in summary(r).lines() {
                    let _ = writeln!(s, "  {line}");
                }
            } else if let Some((_, e)) = self.errors.iter().find(|(k, _)| *k == key) {
                let _ = writeln!(s, "{name}:  not probed: {e}");
            }
        }
        s
    }

    /// 3 when UDP is blocked in every family probed, else 0.
    fn exit_code(&self) -> u8 {
        let blocked = |r: &Option<Report>| {
            r.as_ref()
                .is_none_or(|r| r.nat == Some(NatKind::UdpBlocked))
        };
        if blocked(&self.v4) && blocked(&self.v6) {
            EXIT_UDP_BLOCKED
        } else {
            EXIT_OK
        }
    }
}

/// An error and its causes on one line, as `report_error` prints them.
fn chain_text(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

/// Resolves every `--server` into the families to probe.
pub async fn plan(args: &Args) -> anyhow::Result<Plan> {
    let only_v4 = match (args.ipv4, args.ipv6) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let mut plan = Plan::default();
    for (i, spec) in args.servers.iter().enumerate() {
        let addrs = resolve(spec, only_v4).await?;
        if i == 0 {
            plan.primary_v4 = addrs[0].is_ipv4();
        }
        // One address per family per server: the first the resolver gives.
        if let Some(a) = addrs.iter().find(|a| a.is_ipv4()) {
            plan.v4.push(*a);
        }
        if let Some(a) = addrs.iter().find(|a| a.is_ipv6()) {
            plan.v6.push(*a);
        }
    }
    Ok(plan)
}

/// Resolves `[KEY@]HOST[:PORT]`, `[V6]:PORT` or a bare address to its addresses (at least
/// one), keeping to one family if `only_v4` says so.
pub async fn resolve(spec: &str, only_v4: Option<bool>) -> anyhow::Result<Vec<SocketAddr>> {
    // KEY@HOST:PORT, as dial, answer and relayd take a supernode: the key is checked (a typo
    // should not pass silently) and dropped, since plain STUN cannot use it.
    let spec = match spec.split_once('@') {
        Some((_, rest)) => {
            spec.parse::<crate::identity::BootstrapEntry>()
                .map_err(|e| UsageError(format!("bad server '{spec}': {e}")))?;
            rest
        }
        None => spec,
    };
    let fam = |v4: bool| if v4 { "IPv4" } else { "IPv6" };
    let bare = spec.trim_start_matches('[').trim_end_matches(']');
    let literal = spec.parse::<SocketAddr>().ok().or_else(|| {
        bare.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, DEFAULT_STUN_PORT))
    });
    if let Some(a) = literal {
        if only_v4.is_some_and(|v4| v4 != a.is_ipv4()) {
            return Err(UsageError(format!(
                "server {spec} is {}, but -4/-6 asks for {}",
                fam(a.is_ipv4()),
                fam(!a.is_ipv4())
            ))
            .into());
        }
        return Ok(vec![a]);
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
        .filter(|a| only_v4.is_none_or(|v4| a.is_ipv4() == v4))
        .collect();
    if addrs.is_empty() {
        anyhow::bail!(
            "server '{host}' has no {} address",
            fam(only_v4.unwrap_or(true))
        );
    }
    Ok(addrs)
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
