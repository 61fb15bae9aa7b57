//! `relayd`: the TURN relay service.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};

use super::{
    EXIT_FAILURE, EXIT_IDENTITY_IN_USE, EXIT_USAGE, Verbosity, is_identity_in_use, is_usage,
    print_stdout, report_error, runtime, usage,
};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::client::relay::{RelayLink, RelayLinkConfig};
use crate::identity::{BootstrapEntry, Identity, IdentityLock, KeyFileError, default_key_path};
use crate::net::drivers::client::resolve_bootstrap;
use crate::net::drivers::relay::{
    BoundListener, Listen, RelayOptions, bind_listeners, serve_relay,
};
use crate::net::drivers::relay_link::{SupernodeSecrets, link_bind_addr, run_relay_link};
use crate::net::tls::{ReloadableCert, tls_config, tls_config_reloadable};
use crate::net::{ShutdownSignal, serve_metrics};
use crate::turn::peer_policy::local_addresses;
use crate::turn::server::Transport;
use crate::turn::{Credentials, IpNet, PeerPolicy, TurnConfig, TurnServer, parse_allow_peer};

/// A socket could not be bound, or a certificate, key or users file could not be used.
pub const EXIT_SETUP: u8 = 4;

const EXIT_CODES: &str = "\
Exit status:
  0  stopped cleanly (SIGTERM/SIGINT, once drained)
  1  runtime failure
  2  bad flags or arguments (also: no credentials configured)
  4  cannot bind a socket, or read the certificate, key, users or secrets file
  10 the identity is in use (with --supernode): another process holds the --identity key file
     (the message names the file and that process); give each relay its own --identity

Signals:
  SIGTERM, SIGINT  drain: new allocations get 300 ALTERNATE-SERVER (with --alternate-server) or
                   486; refreshes are capped to the drain time left; live allocations keep
                   relaying until they end or --drain seconds pass; then exit 0 (at once when
                   no allocation is live)
  SIGHUP           re-read --users and --auth-secret-file (the previous secrets stay accepted),
                   the --cert and --key files (new TLS handshakes get the new certificate; on
                   any error the old one stays), and the host's own addresses (also re-read
                   whenever one is added or removed)

Subcommands (their own exit status: see `relayd help SUBCOMMAND`):
  relayd mint-credential --name alice    a time-limited credential from the shared secret
  relayd check relay.example.org:3478    allocate, permit and echo through a deployed relay

On start it prints one JSON line on stdout naming its listeners, e.g.
  {\"event\":\"listening\",\"listen\":[{\"transport\":\"udp\",\"address\":\"198.51.100.1:3478\"},{\"transport\":\"tcp\",\"address\":\"198.51.100.1:3478\"}],\"relay_ips\":[\"198.51.100.1\"],\"metrics\":null,\"relay\":null}
  (\"relay\" is this relay's ID when --supernode is given)

Examples:
  relayd --listen 198.51.100.1:3478 --users /etc/voxmesh/users   (UDP and TCP on port 3478)
  relayd --listen 198.51.100.1:3478 --listen tls:198.51.100.1:5349 --cert c.pem --key k.pem ...
                 (UDP, TCP and TLS on 3478, and TLS on the usual TURNS port 5349 as well)
  relayd --listen 203.0.113.5:3478 --auth-secret-file /etc/voxmesh/secrets --metrics 127.0.0.1:9479
  relayd --listen udp:10.0.0.5:3478 --external-ip 203.0.113.5 --relay-ports 50000-59999 ...
  relayd --listen udp:198.51.100.1:3478 --supernode vxn1...@198.51.100.9:3478   (the supernode mints credentials)";

/// TURN relay (RFC 8656) over UDP, TCP and TLS: leaner than coturn, safe by default.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "relayd",
    version,
    about = "TURN relay (RFC 8656) over UDP, TCP and TLS, safe by default",
    long_about = "TURN relay (RFC 8656) over UDP, TCP and TLS, safe by default.\n\n\
        Clients authenticate with long-term credentials (--users, --user) or time-limited ones \
        minted from a shared secret (--auth-secret, --auth-secret-file: coturn's use-auth-secret \
        scheme, username EXPIRY:USER, password base64(HMAC-SHA1(secret, username))). Peers in \
        every block of the IANA special-purpose registries (private, loopback, link-local, \
        documentation, NAT64, 6to4, Teredo, ...) and the deprecated site-local fec0::/10 are refused \
        unless --allow-peer opens them; \
        multicast, broadcast and the relay's own host are never peers, except its own live \
        relayed addresses, which are delivered internally; an IPv6 address that embeds an IPv4 \
        one (::ffff:a.b.c.d, ::a.b.c.d, ::ffff:0:a.b.c.d, NAT64, 6to4, Teredo) is refused \
        whenever that IPv4 address would be. Quotas per user, per source and in total (486 \
        names the one hit), a bandwidth cap per allocation, and a rate limit on 401 responses \
        bound what one client can take: a source gets 20 challenges a second after a burst of \
        128, so a spoofed source can draw at most 20 x 124 = 2,480 bytes a second of 401s \
        toward the address it forges (plus the burst, 15,872 bytes, once).",
    after_long_help = EXIT_CODES
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Listen on ADDR for every transport, or on TRANSPORT:ADDR for one (repeatable).
    ///
    /// A bare ADDR serves UDP and TCP on the same port number, and TLS on that same port too (a
    /// connection opening with a TLS handshake record, byte 0x16, is TLS: TURN messages start
    /// with 0x00 or 0x01, ChannelData with 0x40-0x7F), with --cert and --key or else a
    /// self-signed certificate (see --no-tls). Port 0 picks one free port for both UDP and TCP.
    /// A udp:, tcp: or tls: prefix restricts the listener to that transport (tls: on its own
    /// port, e.g. the usual TURNS port 5349, needs --cert and --key).
    #[arg(short, long = "listen", value_name = "[udp|tcp|tls:]ADDR", default_values = ["0.0.0.0:3478"])]
    pub listen: Vec<String>,

    /// Certificate chain (PEM) for TLS listeners.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// Private key (PEM) for TLS listeners.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// No TLS on bare-ADDR listeners when no --cert is given. Without this flag they serve TLS
    /// with a certificate made at start: voxmesh clients on networks that pass only TLS take
    /// any certificate (TURN's message integrity authenticates the relay to them), while
    /// standard TURN clients that verify certificates need --cert.
    #[arg(long = "no-tls", conflicts_with = "cert")]
    pub no_tls: bool,

    /// Address to relay from (one per family); defaults to the listening addresses.
    #[arg(long = "relay-ip", value_name = "IP")]
    pub relay_ip: Vec<IpAddr>,

    /// Public address to report for a relay behind 1:1 NAT: PUBLIC or PUBLIC/PRIVATE.
    #[arg(long = "external-ip", value_name = "IP[/IP]")]
    pub external_ip: Vec<String>,

    /// UDP port range for relayed addresses.
    #[arg(
        long = "relay-ports",
        value_name = "LO-HI",
        default_value = "49152-65535"
    )]
    pub relay_ports: String,

    /// Authentication realm.
    #[arg(long, default_value = "voxmesh")]
    pub realm: String,

    /// Users file: `user:password` lines (or `user:0x<hex key>`), re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,

    /// A user as USER:PASSWORD (repeatable; for tests and small setups).
    #[arg(long = "user", value_name = "USER:PASSWORD")]
    pub user: Vec<String>,

    /// Shared secret for time-limited credentials; repeat to accept previous secrets.
    #[arg(long = "auth-secret", value_name = "SECRET")]
    pub auth_secret: Vec<String>,

    /// File of shared secrets, one per line, current first; re-read on SIGHUP.
    #[arg(long = "auth-secret-file", value_name = "FILE")]
    pub auth_secret_file: Option<PathBuf>,

    /// Allow peers in this block even if it is special-purpose (repeatable). A bare address is
    /// a block of one; a block with host bits set (10.1.2.3/8) is refused as ambiguous.
    #[arg(long = "allow-peer", value_name = "CIDR", value_parser = parse_allow_peer)]
    pub allow_peer: Vec<IpNet>,

    /// Concurrent allocations per username.
    ///
    /// 64: a call needs one allocation (two with a separate RTCP port), so one account has
    /// room for tens of calls across its devices, while a leaked credential holds at most 64
    /// of the 16,384 relay ports of the default range (1/256 of the relay).
    #[arg(long = "user-quota", default_value_t = 64)]
    pub user_quota: u32,

    /// Concurrent allocations, and TCP/TLS connections, per client IPv4 address or IPv6 /64.
    ///
    /// 64: room for an office or household of callers behind one NAT address; and since
    /// usernames cost nothing to mint with a shared secret, this is the quota that binds one
    /// host, which then holds at most 1/256 of the default relay port range.
    #[arg(long = "source-quota", default_value_t = 64)]
    pub source_quota: u32,

    /// Concurrent allocations, and TCP/TLS connections, in total.
    #[arg(long = "total-quota", default_value_t = 100_000)]
    pub total_quota: u32,

    /// Bandwidth cap per allocation in bytes per second (both directions); 0 for none.
    #[arg(long = "max-bps", default_value_t = 0)]
    pub max_bps: u64,

    /// While draining, send new allocations here (300 ALTERNATE-SERVER).
    #[arg(long = "alternate-server", value_name = "ADDR")]
    pub alternate_server: Option<SocketAddr>,

    /// Seconds a nonce stays valid; an older one gets 438 Stale Nonce, with a fresh nonce to
    /// retry with.
    #[arg(
        long = "nonce-lifetime",
        value_name = "SECONDS",
        default_value_t = 600,
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub nonce_lifetime: u64,

    /// At most this many seconds of relaying for live allocations after SIGTERM (relayd exits
    /// as soon as the last one ends, at once when there is none).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub drain: u64,

    /// Serve Prometheus metrics over HTTP on this address.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Authorise this supernode to hand out credentials for this relay, as KEY@HOST:PORT
    /// (repeatable). relayd opens a session to it, gives it a secret of its own (rotated
    /// hourly) and reports its load; clients then find the relay through the supernode.
    #[arg(long = "supernode", value_name = "KEY@HOST:PORT")]
    pub supernode: Vec<BootstrapEntry>,

    /// This relay's key file for --supernode sessions (created on first start, mode 0600;
    /// default: $STATE_DIRECTORY/relay.key under systemd, else relay.key in the voxmesh config
    /// directory, ~/.config/voxmesh).
    #[arg(long, value_name = "PATH")]
    pub identity: Option<PathBuf>,

    /// Read flags from this TOML file (keys are the long flag names; see Configuration below).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub verbosity: Verbosity,
}

/// Tools for operators, run instead of the relay.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    MintCredential(super::relayd_tools::MintArgs),
    Check(super::relayd_tools::CheckArgs),
}

/// A file or socket the service needs could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(String);

/// The command with its environment variables and configuration help: what `main` parses and
/// what the generated docs describe.
pub fn command() -> clap::Command {
    let cmd = super::config::with_env(Args::command(), "RELAYD");
    cmd.after_long_help(format!("{EXIT_CODES}\n\n{}", super::config::help("RELAYD")))
}

pub fn main() -> ExitCode {
    let matches = super::config::parse(command());
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    args.verbosity.init();
    let result = match args.command.clone() {
        Some(Command::MintCredential(m)) => super::relayd_tools::mint(&args, &m),
        Some(Command::Check(c)) => {
            return super::relayd_tools::check(&args, &c);
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
            } else if e.chain().any(|c| c.downcast_ref::<SetupError>().is_some()) {
                EXIT_SETUP
            } else {
                EXIT_FAILURE
            };
            report_error("relayd", &e, code)
        }
    }
}

fn setup(msg: impl Into<String>) -> anyhow::Error {
    SetupError(msg.into()).into()
}

/// Parses `[udp|tcp|tls:]ADDR`: a bare ADDR serves every transport on one port.
pub fn parse_listen(s: &str) -> anyhow::Result<Listen> {
    let (kind, addr) = match s.split_once(':') {
        Some((k @ ("udp" | "tcp" | "tls"), rest)) => (k, rest),
        _ => ("all", s),
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| usage(format!("--listen '{s}': expected [udp|tcp|tls:]IP:PORT")))?;
    Ok(match kind {
        "udp" => Listen::Udp(addr),
        "tcp" => Listen::Tcp(addr),
        "tls" => Listen::Tls(addr),
        _ => Listen::All(addr),
    })
}

/// Reads every credential source the flags name.
pub fn load_credentials(args: &Args) -> anyhow::Result<Credentials> {
    let mut c = Credentials::new(&args.realm);
    for u in &args.user {
        let (name, pass) = u
            .split_once(':')
            .ok_or_else(|| usage(format!("--user '{u}': expected USER:PASSWORD")))?;
        c.add_user(name, pass);
    }
    if let Some(path) = &args.users {
        let text = std::fs::read_to_string(path)
            .map_err(|e| setup(format!("cannot read users file {}: {e}", path.display())))?;
        c.add_users_file(&text)
            .map_err(|e| setup(format!("{}: {e}", path.display())))?;
    }
    for s in &args.auth_secret {
        c.add_secret(s.as_bytes());
    }
    if let Some(path) = &args.auth_secret_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| setup(format!("cannot read secrets file {}: {e}", path.display())))?;
        let mut any = false;
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            c.add_secret(line.as_bytes());
            any = true;
        }
        if !any {
            return Err(setup(format!(
                "secrets file {} holds no secret",
                path.display()
            )));
        }
    }
    if c.user_count() == 0 && !c.has_secrets() && args.supernode.is_empty() {
        return Err(usage(
            "no credentials: give --users, --user, --auth-secret, --auth-secret-file or --supernode (relayd never relays for anonymous clients)",
        ));
    }
    Ok(c)
}

/// Builds the core's configuration from the flags.
pub fn turn_config(args: &Args, listen: &[Listen]) -> anyhow::Result<TurnConfig> {
    let (lo, hi) = args
        .relay_ports
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
        .filter(|(a, b)| a <= b && *a > 0)
        .ok_or_else(|| {
            usage(format!(
                "--relay-ports '{}': expected LO-HI, e.g. 49152-65535",
                args.relay_ports
            ))
        })?;
    let mut relay_ips = args.relay_ip.clone();
    if relay_ips.is_empty() {
        for l in listen {
            let a = l.addr();
            if !a.ip().is_unspecified() && !relay_ips.iter().any(|r| r.is_ipv4() == a.is_ipv4()) {
                relay_ips.push(a.ip());
            }
        }
    }
    if relay_ips.is_empty() {
        return Err(usage(
            "no relay address: listen on a specific IP or give --relay-ip",
        ));
    }
    let mut external_ips = Vec::new();
    for e in &args.external_ip {
        let (public, private) = match e.split_once('/') {
            Some((p, i)) => (p, Some(i)),
            None => (e.as_str(), None),
        };
        let public: IpAddr = public
            .parse()
            .map_err(|_| usage(format!("--external-ip '{e}': not an IP")))?;
        let private: IpAddr = match private {
            Some(p) => p
                .parse()
                .map_err(|_| usage(format!("--external-ip '{e}': not an IP")))?,
            None => *relay_ips
                .iter()
                .find(|r| r.is_ipv4() == public.is_ipv4())
                .ok_or_else(|| {
                    usage(format!(
                        "--external-ip {public}: no relay address of its family"
                    ))
                })?,
        };
        external_ips.push((private, public));
    }
    let own = own_addresses(&relay_ips, &external_ips);
    Ok(TurnConfig {
        relay_ips,
        external_ips,
        ports: lo..=hi,
        user_quota: args.user_quota,
        source_quota: args.source_quota,
        total_quota: args.total_quota,
        bandwidth: (args.max_bps > 0).then_some(args.max_bps),
        alternate_server: args.alternate_server,
        nonce_lifetime: Duration::from_secs(args.nonce_lifetime),
        policy: PeerPolicy {
            allow: args.allow_peer.clone(),
            own,
        },
        ..TurnConfig::default()
    })
}

/// The addresses the peer policy treats as the relay host itself: every interface's, the relay
/// addresses and the public ones reported for them.
fn own_addresses(relay_ips: &[IpAddr], external_ips: &[(IpAddr, IpAddr)]) -> Vec<IpAddr> {
    let mut own = local_addresses();
    own.extend(relay_ips.iter().copied());
    own.extend(external_ips.iter().map(|(_, e)| *e));
    own
}

/// Raises the open-file limit to the hard limit: one relayed socket per allocation.
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a stack struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let listen: Vec<Listen> = args
        .listen
        .iter()
        .map(|s| parse_listen(s))
        .collect::<anyhow::Result<_>>()?;
    let creds = load_credentials(&args)?;
    let config = turn_config(&args, &listen)?;
    let mut reloadable = None;
    let tls = match (&args.cert, &args.key) {
        (Some(c), Some(k)) => {
            let cert = std::fs::read(c)
                .map_err(|e| setup(format!("cannot read --cert {}: {e}", c.display())))?;
            let key = std::fs::read(k)
                .map_err(|e| setup(format!("cannot read --key {}: {e}", k.display())))?;
            let current = Arc::new(
                ReloadableCert::new(&cert, &key)
                    .map_err(|e| setup(format!("bad certificate or key: {e}")))?,
            );
            reloadable = Some((current.clone(), c.clone(), k.clone()));
            Some(tls_config_reloadable(current).map_err(|e| setup(format!("TLS: {e}")))?)
        }
        (None, None) => None,
        _ => return Err(usage("--cert and --key go together")),
    };
    if listen.iter().any(|l| matches!(l, Listen::Tls(_))) && tls.is_none() {
        return Err(usage("a tls: listener needs --cert and --key"));
    }
    let tls = match tls {
        None if !args.no_tls => {
            let (c, k) = crate::net::tls::self_signed("voxmesh.invalid")
                .map_err(|e| setup(format!("cannot make a TLS certificate: {e}")))?;
            Some(tls_config(c.as_bytes(), k.as_bytes()).map_err(|e| setup(format!("TLS: {e}")))?)
        }
        tls => tls,
    };
    raise_nofile();
    let rt = runtime().context("cannot start the runtime")?;
    rt.block_on(async move {
        let listeners = bind_listeners(&listen, tls.clone())
            .map_err(|e| setup(format!("cannot bind a listener: {e}")))?;
        let mut described = Vec::new();
        for l in &listeners {
            for (t, a) in l.endpoints()? {
                described.push(serde_json::json!({"transport": format!("{t:?}").to_lowercase(), "address": a}));
            }
        }
        let seed: [u8; 32] = rand::random();
        let unix = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let relay_ips = config.relay_ips.clone();
        let external_ips = config.external_ips.clone();
        let advertised = advertised_addrs(&listeners, &config)?;
        let base_creds = creds.clone();
        let core = TurnServer::new(config, creds, Instant::now(), unix, seed);
        let (signal, shutdown) = ShutdownSignal::new();
        let mut metrics_addr = None;
        let mut metrics_text = None;
        if let Some(addr) = args.metrics {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| setup(format!("cannot bind the metrics listener on {addr}: {e}")))?;
            metrics_addr = listener.local_addr().ok();
            let text = Arc::new(std::sync::Mutex::new(String::new()));
            let src = text.clone();
            let render = Arc::new(move || src.lock().map(|s| s.clone()).unwrap_or_default());
            tokio::spawn(serve_metrics(listener, render, shutdown.clone()));
            metrics_text = Some(text);
        }
        // The identity's lock is held until this block ends: for as long as we relay.
        let (link, _identity_lock) = match args.supernode.is_empty() {
            true => (None, None),
            false => {
                let (link, lock) = relay_link(&args, &advertised).await?;
                (Some(link), Some(lock))
            }
        };
        let relay_id = link.as_ref().map(|l| l.id().to_string());
        // Signal handlers go in before the "listening" line: whoever reads it may signal at
        // once, and an unhandled SIGTERM or SIGHUP would kill the process without a drain.
        use tokio::signal::unix::{SignalKind, signal as handle};
        let handlers = || -> std::io::Result<_> {
            Ok((crate::net::ShutdownSignals::install()?, handle(SignalKind::hangup())?))
        };
        let (mut signals, _hup) = handlers().context("cannot install signal handlers")?;
        let line = serde_json::json!({"event": "listening", "listen": described, "relay_ips": relay_ips, "metrics": metrics_addr, "relay": relay_id});
        print_stdout(&format!("{line}\n"))?;
        crate::net::notify("READY=1");
        // Credentials = the flags' (re-read on SIGHUP) + the secrets given to supernodes
        // (replaced whenever the link rotates them).
        let base = Arc::new(std::sync::Mutex::new(base_creds));
        let (secrets_tx, secrets_rx) = watch::channel(SupernodeSecrets::new());
        let load = Arc::new(AtomicU32::new(0));
        let mut updates = None;
        let mut link_task = None;
        if let Some(link) = link {
            let bind = link_bind_addr(relay_ips.first().copied());
            let socket = UdpSocket::bind(bind)
                .await
                .map_err(|e| setup(format!("cannot bind the supernode link socket on {bind}: {e}")))?;
            link_task = Some(tokio::spawn(run_relay_link(link, socket, load.clone(), secrets_tx, None, shutdown.clone())));
            let (tx, rx) = mpsc::channel(4);
            updates = Some(rx);
            let (base, mut secrets_rx) = (base.clone(), secrets_rx.clone());
            tokio::spawn(async move {
                while secrets_rx.changed().await.is_ok() {
                    let merged = merge(&base.lock().expect("credentials lock"), &secrets_rx.borrow_and_update());
                    if tx.send(merged).await.is_err() {
                        return;
                    }
                }
            });
        }
        let reload_args = args.clone();
        let (own_relay, own_external) = (relay_ips.clone(), external_ips);
        let options = RelayOptions {
            drain: Duration::from_secs(args.drain),
            reload: Some(Box::new(move || {
                if let Some((current, c, k)) = &reloadable {
                    reload_cert(current, c, k);
                }
                match load_credentials(&reload_args) {
                Ok(c) => {
                    let merged = merge(&c, &secrets_rx.borrow());
                    *base.lock().expect("credentials lock") = c;
                    Some(merged)
                }
                Err(e) => {
                    tracing::warn!("credential reload failed, keeping the old ones: {e:#}");
                    None
                }
            }})),
            own_addresses: Some(Box::new(move || own_addresses(&own_relay, &own_external))),
            metrics: metrics_text,
            updates,
            load: Some(load),
        };
        let relay = serve_relay(core, listeners, options, shutdown);
        tokio::pin!(relay);
        let mut stopping = false;
        loop {
            tokio::select! {
                r = &mut relay => {
                    r.context("the relay failed")?;
                    // The drain may end at once (nothing to drain): let the supernode link
                    // send its goodbyes before the runtime goes, so the relay leaves the
                    // offers now rather than when the supernodes time it out.
                    if let Some(t) = link_task.take() {
                        let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
                    }
                    break;
                }
                name = signals.recv(), if !stopping => {
                    tracing::info!("{name}: draining (for at most {} s)", args.drain);
                    crate::net::notify("STOPPING=1");
                    signal.trigger();
                    stopping = true;
                }
            }
        }
        Ok(())
    })
}

/// SIGHUP: the certificate and key files again (a renewed certificate). On any error the old
/// certificate stays: a half-written file must not take TLS down.
fn reload_cert(current: &ReloadableCert, cert: &std::path::Path, key: &std::path::Path) {
    let loaded = std::fs::read(cert)
        .and_then(|c| Ok((c, std::fs::read(key)?)))
        .and_then(|(c, k)| current.load(&c, &k));
    match loaded {
        Ok(()) => tracing::info!("TLS certificate reloaded from {}", cert.display()),
        Err(e) => tracing::warn!(
            "TLS certificate reload from {} and {} failed, keeping the old one: {e}",
            cert.display(),
            key.display()
        ),
    }
}

/// The flags' credentials plus the secrets this relay gave each supernode.
fn merge(base: &Credentials, secrets: &SupernodeSecrets) -> Credentials {
    let mut c = base.clone();
    for (id, s) in secrets {
        c.set_supernode_secrets(&id.to_string(), s.clone());
    }
    c
}

/// The addresses clients reach the listeners at, per transport: a wildcard listener is named by
/// the relay address of its family, and a private address by its --external-ip.
struct Advertised {
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
    tls: Vec<SocketAddr>,
}

fn advertised_addrs(
    listeners: &[BoundListener],
    config: &TurnConfig,
) -> anyhow::Result<Advertised> {
    let mut out = Advertised {
        udp: Vec::new(),
        tcp: Vec::new(),
        tls: Vec::new(),
    };
    for (t, mut a) in listeners
        .iter()
        .map(BoundListener::endpoints)
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .flatten()
    {
        if a.ip().is_unspecified() {
            match config.relay_ips.iter().find(|r| r.is_ipv4() == a.is_ipv4()) {
                Some(ip) => a.set_ip(*ip),
                None => continue,
            }
        }
        if let Some((_, public)) = config
            .external_ips
            .iter()
            .find(|(private, _)| *private == a.ip())
        {
            a.set_ip(*public);
        }
        match t {
            Transport::Udp => out.udp.push(a),
            Transport::Tcp => out.tcp.push(a),
            Transport::Tls => out.tls.push(a),
        }
    }
    Ok(out)
}

/// The link to the --supernode entries, with this relay's identity (locked: the lock must live
/// as long as the link).
async fn relay_link(
    args: &Args,
    advertised: &Advertised,
) -> anyhow::Result<(RelayLink, IdentityLock)> {
    let key_path = match &args.identity {
        Some(p) => p.clone(),
        None => match super::config::systemd_dir("STATE_DIRECTORY") {
            Some(dir) => dir.join("relay.key"),
            None => default_key_path()
                .map_err(|e| usage(format!("{e}")))?
                .with_file_name("relay.key"),
        },
    };
    let (identity, created, lock) = Identity::load_or_create_locked(&key_path).map_err(|e| {
        match e {
            // Its own exit code; the message already names the file.
            e @ KeyFileError::InUse { .. } => anyhow::Error::new(e),
            e => setup(format!("identity {}: {e}", key_path.display())),
        }
    })?;
    if created {
        tracing::info!(
            "created relay identity {} in {}",
            identity.id(),
            key_path.display()
        );
    }
    let supernodes = resolve_bootstrap(&args.supernode)
        .await
        .map_err(|e| usage(format!("cannot resolve a --supernode entry: {e}")))?;
    let mut config = RelayLinkConfig::new(supernodes);
    config.udp = advertised.udp.clone();
    config.tcp = advertised.tcp.clone();
    config.tls = advertised.tls.clone();
    config.realm = args.realm.clone();
    let unix_seed: [u8; 32] = rand::random();
    Ok((
        RelayLink::new(&identity, config, Instant::now(), unix_seed),
        lock,
    ))
}
