//! `supernoded`: the supernode service: STUN with RFC 5780 behaviour discovery, and the
//! directory (registration, presence, lookup, names, routing, relay credentials) as a member of
//! the supernode mesh. `supernoded status` asks a running daemon for its state.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use super::{
    EXIT_FAILURE, EXIT_IDENTITY_IN_USE, EXIT_USAGE, Verbosity, is_identity_in_use, is_usage,
    print_stdout, report_error, runtime, usage,
};
use crate::identity::{BootstrapEntry, Identity, default_key_path};
use crate::net::drivers::client::{read_host_cache, resolve_bootstrap};
use crate::net::drivers::stun_server::StunServer;
use crate::net::drivers::supernode::{NodeSockets, StreamService, query_status, run_supernode};
use crate::net::{ShutdownSignal, ShutdownSignals, serve_metrics};
use crate::supernode::{BindingConfig, NodeConfig, Supernode};

/// A socket could not be bound (address in use, not local, no permission).
pub const EXIT_BIND: u8 = 4;

const EXIT_CODES: &str = "\
Exit status:
  0   stopped cleanly (SIGTERM or SIGINT; SIGHUP is logged and ignored: restart to apply
      changed flags or config)
  1   runtime failure
  2   bad flags or arguments (also contradictory ones, e.g. --alt-addr without a listener of its family)
  4   cannot bind a listening socket, or read or use the --cert and --key files
  10  the identity is in use: another process holds the key file (the message names the file
      and that process); give each supernode its own --identity

The key file stays locked while supernoded runs (an advisory flock, released when the process
ends however it ends), so two supernodes can never share a node key.

On start it prints one JSON line on stdout naming what it listens on and the entry others
bootstrap from, e.g.
  {\"event\":\"listening\",\"node\":\"vxk1...@198.51.100.1:3478\",\"stun\":[{\"primary\":\"198.51.100.1:3478\",\"alternate\":\"198.51.100.2:3479\"}],\"metrics\":null}
so scripts started with port 0 learn the ports.

Examples:
  supernoded --listen 198.51.100.1:3478 --alt-addr 198.51.100.2
  supernoded --listen 198.51.100.3:3478 --bootstrap vxk1...@198.51.100.1:3478
  supernoded status --json";

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
        On the same port, unless --stun-only: the directory. Clients register over an \
        authenticated, encrypted session (Noise, keys bound to their Ed25519 identities; TCP \
        on the same port for networks that block UDP); every user's signed record lives on 3 \
        home supernodes chosen by rendezvous hashing; lookups are one hop; presence changes are \
        pushed to watchers; signalling messages are routed between clients; relays that named \
        this supernode (relayd --supernode) are offered to clients with credentials minted for \
        them. Supernodes form a flat mesh (SWIM membership): join through --bootstrap or the \
        host cache. On first start the key is created and the KEY@HOST:PORT others bootstrap \
        from is printed in the \"node\" field of the start line.\n\n\
        Amplification: responses are at most a few dozen bytes longer than the request; PADDING \
        is echoed only up to the request's size (RFC 5780 suggests the MTU), and RESPONSE-PORT \
        only reaches the requester's own address. --no-rfc5780 turns all of RFC 5780 off.",
    after_long_help = EXIT_CODES
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// UDP address to serve on (STUN and the directory); repeat for IPv4 and IPv6.
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

    /// Another supernode to join the mesh through, as KEY@HOST:PORT; repeatable.
    #[arg(long = "bootstrap", value_name = "KEY@HOST:PORT")]
    pub bootstrap: Vec<BootstrapEntry>,

    /// This supernode's key file (created on first start, mode 0600; default:
    /// $STATE_DIRECTORY/supernode.key under systemd, else supernode.key in the voxmesh config
    /// directory, ~/.config/voxmesh).
    #[arg(long, value_name = "PATH")]
    pub identity: Option<PathBuf>,

    /// The address other nodes reach us at (default: the first --listen address).
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<SocketAddr>,

    /// Control socket for `supernoded status` (default: $RUNTIME_DIRECTORY/supernoded.sock
    /// under systemd, else $XDG_RUNTIME_DIR/voxmesh/supernoded.sock, else
    /// /tmp/voxmesh-UID/supernoded.sock).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Host cache of mesh members (read at start, rewritten while running; default:
    /// supernode-hosts beside the key file).
    #[arg(long = "host-cache", value_name = "PATH")]
    pub host_cache: Option<PathBuf>,

    /// Read flags from this TOML file (keys are the long flag names; see Configuration below).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Serve STUN only: no identity, no mesh, no directory.
    #[arg(long = "stun-only")]
    pub stun_only: bool,

    /// Certificate chain (PEM, leaf first) for TLS on the directory's TCP port, which serves
    /// plain and TLS streams alike (told apart by the first byte) for clients whose network
    /// passes only TLS. Default: a self-signed certificate made at start; clients take any
    /// certificate, since the session inside authenticates this supernode's key (TLS is only a
    /// disguise here), so give one only to look like an ordinary web server.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,

    /// Private key (PEM) for --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,

    /// No TLS on the TCP port: plain streams only.
    #[arg(long = "no-tls", conflicts_with = "cert")]
    pub no_tls: bool,

    /// Benchmarks only: close a session after this many seconds without a frame (default 65).
    /// `scripts/bench-supernode` raises it so that a million clients that registered and went
    /// quiet stay registered while it measures memory.
    #[arg(long = "session-idle-timeout", value_name = "SECS", hide = true)]
    pub session_idle_timeout: Option<u64>,

    /// Benchmarks only: most sessions in any state (default 100000).
    #[arg(long = "max-sessions", value_name = "N", hide = true)]
    pub max_sessions: Option<usize>,

    #[command(flatten)]
    pub verbosity: Verbosity,
}

/// Subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Show the running daemon's members, users, relays and load.
    Status(StatusArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Include the IDs of the users homed on this supernode.
    #[arg(long)]
    pub users: bool,
    /// The daemon's control socket (default: the daemon's --control, from the command line,
    /// SUPERNODED_CONTROL or --config; else the daemon's default, and failing that
    /// /run/supernoded/supernoded.sock, where the systemd unit puts it).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
}

/// Where the control socket lives by default.
pub fn default_control_path() -> PathBuf {
    if let Some(dir) = super::config::systemd_dir("RUNTIME_DIRECTORY") {
        return dir.join("supernoded.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("voxmesh/supernoded.sock"),
        // SAFETY: getuid has no preconditions.
        None => std::env::temp_dir().join(format!("voxmesh-{}/supernoded.sock", unsafe {
            libc::getuid()
        })),
    }
}

/// The SOFTWARE attribute we send (RFC 8489 §14.14).
pub fn software() -> String {
    format!("voxmesh supernoded {}", env!("CARGO_PKG_VERSION"))
}

/// Where the systemd unit's socket is (RuntimeDirectory=supernoded): `supernoded status` from
/// a shell has no $RUNTIME_DIRECTORY, so it looks there when the usual place has no socket.
const SYSTEMD_CONTROL: &str = "/run/supernoded/supernoded.sock";

/// The command with its environment variables and configuration help: what `main` parses and
/// what the generated docs describe.
pub fn command() -> clap::Command {
    let cmd = super::config::with_env(Args::command(), "SUPERNODED");
    cmd.after_long_help(format!(
        "{EXIT_CODES}\n\n{}",
        super::config::help("SUPERNODED")
    ))
}

/// Runs the program.
pub fn main() -> ExitCode {
    let matches = super::config::parse(command());
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    args.verbosity.init();
    let result = match &args.command {
        Some(Command::Status(s)) => {
            let mut s = s.clone();
            s.control = s.control.or_else(|| args.control.clone()).or_else(|| {
                let usual = default_control_path();
                let systemd = PathBuf::from(SYSTEMD_CONTROL);
                (!usual.exists() && systemd.exists()).then_some(systemd)
            });
            status(s)
        }
        None => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = if is_usage(&e) {
                EXIT_USAGE
            } else if is_identity_in_use(&e) {
                EXIT_IDENTITY_IN_USE
            } else if e.chain().any(|c| {
                c.downcast_ref::<crate::net::drivers::stun_server::StunServerError>()
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

fn status(args: StatusArgs) -> anyhow::Result<()> {
    let path = args.control.unwrap_or_else(default_control_path);
    let rt = runtime().context("cannot start the runtime")?;
    let v = rt
        .block_on(query_status(&path, args.users))
        .with_context(|| {
            format!(
                "cannot ask the supernode at {} (is it running? see --control)",
                path.display()
            )
        })?;
    if args.json {
        print_stdout(&format!("{v}\n"))?;
        return Ok(());
    }
    let mut out = String::new();
    let text = |x: &serde_json::Value| {
        x.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| x.to_string())
    };
    out += &format!(
        "supernode {}\nkey       {}\naddress   {}\n",
        text(&v["id"]),
        text(&v["key"]),
        text(&v["addr"])
    );
    let members = v["members"].as_array().cloned().unwrap_or_default();
    out += &format!("members   {}\n", members.len());
    for m in &members {
        out += &format!("  {} {}\n", text(&m["id"]), text(&m["addr"]));
    }
    out += &format!(
        "clients   {} registered here, {} standby\nusers     {} homed here, {} names\nsessions  {}\n",
        v["clients"], v["standby_clients"], v["homed_users"], v["names"], v["sessions"]
    );
    let relays = v["relays"].as_array().cloned().unwrap_or_default();
    out += &format!("relays    {}\n", relays.len());
    for r in &relays {
        out += &format!("  {} load {}\n", text(&r["id"]), r["load"]);
    }
    print_stdout(&out)?;
    Ok(())
}

/// The TLS configuration for the stream port: --cert and --key, else a self-signed
/// certificate (see --cert), or none with --no-tls.
fn stream_tls(args: &Args) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    use crate::net::drivers::stun_server::StunServerError;
    use crate::net::tls::{self_signed, tls_config};
    if args.no_tls {
        return Ok(None);
    }
    let (cert, key) = match (&args.cert, &args.key) {
        (Some(c), Some(k)) => {
            let read = |p: &PathBuf, what: &str| {
                std::fs::read(p).map_err(|e| {
                    StunServerError::Certificate(format!(
                        "cannot read --{what} {}: {e}",
                        p.display()
                    ))
                })
            };
            (read(c, "cert")?, read(k, "key")?)
        }
        _ => {
            let (c, k) = self_signed("voxmesh.invalid").context("cannot make a TLS certificate")?;
            (c.into_bytes(), k.into_bytes())
        }
    };
    let cfg = tls_config(&cert, &key)
        .map_err(|e| StunServerError::Certificate(format!("bad certificate or key: {e}")))?;
    Ok(Some(cfg))
}

fn run(args: Args) -> anyhow::Result<()> {
    let configs = binding_configs(&args)?;
    let rt = runtime().context("cannot start the runtime")?;
    rt.block_on(async move {
        let (mut server, mut tcp_std) = StunServer::bind_with_tcp(configs, !args.stun_only)?;
        let (signal, shutdown) = ShutdownSignal::new();
        let mut metrics_addr = None;
        let mut node_metrics = None;
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(addr) = args.metrics {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| crate::net::drivers::stun_server::StunServerError::BindMetrics { addr, source })?;
            metrics_addr = listener.local_addr().ok();
            let counters = server.counters();
            let node = Arc::new(std::sync::Mutex::new(String::new()));
            node_metrics = Some(node.clone());
            // STUN counters are atomics, read at each scrape; the node's families are rebuilt
            // once a second by its own task (it owns the core).
            let render = Arc::new(move || {
                let mut s = crate::net::prom::Snapshot::default();
                s.build_info("supernoded");
                counters.collect(&mut s);
                let mut text = s.render();
                text.push_str(&node.lock().map(|t| t.clone()).unwrap_or_default());
                text
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
        let mut node_entry = None;
        let mut node_task = None;
        // The identity's lock, held until this block ends: for as long as we run as the node.
        let mut _identity_lock = None;
        if !args.stun_only {
            let bound = server.configs();
            let advertise = match args.advertise {
                Some(a) => a,
                None => bound
                    .iter()
                    .map(|c| c.primary)
                    .find(|a| !a.ip().is_unspecified())
                    .ok_or_else(|| usage("listening on a wildcard address: give --advertise ADDR (the address others reach this supernode at)"))?,
            };
            let key_path = match &args.identity {
                Some(p) => p.clone(),
                None => match super::config::systemd_dir("STATE_DIRECTORY") {
                    Some(dir) => dir.join("supernode.key"),
                    None => default_key_path()?.with_file_name("supernode.key"),
                },
            };
            // Every key file error names the file already: no context needed.
            let (identity, created, lock) = Identity::load_or_create_locked(&key_path)?;
            _identity_lock = Some(lock);
            if created {
                tracing::info!("created supernode identity {} in {}", identity.id(), key_path.display());
            }
            let host_cache = args.host_cache.clone().or_else(|| key_path.parent().map(|d| d.join("supernode-hosts")));
            let mut entries = args.bootstrap.clone();
            if let Some(p) = &host_cache {
                for e in read_host_cache(p) {
                    if !entries.iter().any(|x| x.key.id == e.key.id) {
                        entries.push(e);
                    }
                }
            }
            let bootstrap = resolve_bootstrap(&entries).await.context("cannot resolve a bootstrap entry")?;
            let unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let mut config = NodeConfig::new(advertise);
            if let Some(secs) = args.session_idle_timeout {
                config.session.idle_timeout = Duration::from_secs(secs);
            }
            if let Some(n) = args.max_sessions {
                config.session.max_sessions = n;
            }
            let core = Supernode::new(&identity, config, &bootstrap, Instant::now(), unix, rand::random());
            node_entry = Some(format!("{}@{advertise}", core.node_key()));
            let (frames_tx, frames_rx) = tokio::sync::mpsc::channel(8192);
            let frames_tx_tcp = frames_tx.clone();
            server.set_frame_sink(frames_tx);
            let mut sockets = NodeSockets::default();
            for s in server.primary_sockets() {
                match s.local_addr() {
                    Ok(a) if a.is_ipv4() && sockets.v4.is_none() => sockets.v4 = Some(s),
                    Ok(a) if a.is_ipv6() && sockets.v6.is_none() => sockets.v6 = Some(s),
                    _ => {}
                }
            }
            let control_path = args.control.clone().unwrap_or_else(default_control_path);
            if let Some(dir) = control_path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::remove_file(&control_path);
            let control = tokio::net::UnixListener::bind(&control_path)
                .map_err(|e| crate::net::drivers::stun_server::StunServerError::Bind { addr: advertise, source: e })
                .with_context(|| format!("control socket {}", control_path.display()))?;
            // The same address over TCP, for clients whose network blocks UDP.
            let mut tcp = StreamService { tls: stream_tls(&args)?, ..Default::default() };
            for (l, c) in tcp_std.drain(..).zip(&bound) {
                let l = l
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpListener::from_std(l))
                    .map_err(|source| crate::net::drivers::stun_server::StunServerError::BindTcp { addr: c.primary, source })?;
                tcp.listeners.push(l);
            }
            node_task = Some(tokio::spawn(run_supernode(
                core,
                frames_tx_tcp,
                frames_rx,
                sockets,
                tcp,
                Some(control),
                host_cache,
                node_metrics,
                shutdown.clone(),
            )));
        }
        // SIGHUP (systemd's ExecReload) must not kill us, which is its default action: there is
        // nothing to re-read, so say so. Installed before the start line, as readers may signal
        // as soon as they see it.
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot install the SIGHUP handler")?;
        let mut signals = ShutdownSignals::install().context("cannot install signal handlers")?;
        let mut stop = shutdown.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.wait() => return,
                    r = hup.recv() => match r {
                        Some(()) => tracing::info!("SIGHUP: nothing to reload (flags and the config file apply at start)"),
                        None => return,
                    },
                }
            }
        });
        let line = serde_json::json!({"event": "listening", "node": node_entry, "stun": stun, "metrics": metrics_addr});
        print_stdout(&format!("{line}\n"))?;
        crate::net::notify("READY=1");
        let mut run = tokio::spawn(server.run(shutdown));
        let result = tokio::select! {
            name = signals.recv() => {
                tracing::info!("{name}: shutting down");
                crate::net::notify("STOPPING=1");
                signal.trigger();
                (&mut run).await
            }
            r = &mut run => r,
        };
        signal.trigger();
        if let Some(t) = node_task {
            let _ = t.await;
        }
        while tasks.join_next().await.is_some() {}
        result.context("the STUN service panicked")?.context("the STUN service failed")?;
        Ok(())
    })
}
