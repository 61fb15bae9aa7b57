//! `relayd mint-credential` and `relayd check`: operator tools that run instead of the relay,
//! reading the same secrets (flags, `RELAYD_*` variables, `--config`) as the relay would.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use super::relayd::Args;
use super::{EXIT_FAILURE, EXIT_USAGE, is_usage, print_stdout, report_error, runtime, usage};
use crate::net::drivers::turn_client::{TurnRelay, TurnTransport};
use crate::turn::{TurnClientConfig, mint_rest_credential};

/// `relayd mint-credential`.
#[derive(clap::Args, Debug, Clone)]
#[command(
    about = "Print a time-limited TURN credential minted from the shared secret",
    long_about = "Print a time-limited TURN credential minted from the shared secret.\n\n\
        The secret is the relay's own: the first --auth-secret (or RELAYD_AUTH_SECRET, or \
        auth-secret in the --config file), else the first line of --auth-secret-file. The \
        credential is coturn's use-auth-secret (TURN REST) scheme: username EXPIRY:NAME, \
        password base64(HMAC-SHA1(secret, username)); any relay sharing the secret accepts it \
        until EXPIRY (Unix seconds).\n\n\
        Prints one JSON object: {\"username\":...,\"password\":...,\"ttl\":...,\"expires\":...}.\n\n\
        Exit status: 0 printed; 2 no secret configured, or bad flags.",
    after_help = "Example:\n  RELAYD_AUTH_SECRET_FILE=/etc/voxmesh/secrets relayd mint-credential --name alice --ttl 3600"
)]
pub struct MintArgs {
    /// The user part of the username (it is not checked against anything).
    #[arg(long, default_value = "voxmesh")]
    pub name: String,
    /// Seconds the credential stays valid.
    #[arg(long, value_name = "SECONDS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub ttl: u64,
}

/// `relayd check`.
#[derive(clap::Args, Debug, Clone)]
#[command(
    about = "Test a deployed relay end to end: allocate, permit, echo",
    long_about = "Test a deployed relay end to end, as coturn's turnutils_uclient would.\n\n\
        Makes two allocations on the relay at HOST:PORT, gives each a permission for the \
        other's relayed address, then sends --count probes from the first through the relay \
        to the second, which echoes each back the same way: the relay's own relayed addresses \
        act as the peer, so nothing but the relay is contacted. Prints one JSON object with \
        the relayed and mapped addresses, probes sent and echoed, and round-trip times.\n\n\
        Credentials: --user USER:PASSWORD, else one minted from the relay's shared secret \
        (--auth-secret, RELAYD_AUTH_SECRET, --auth-secret-file or the --config file).\n\n\
        Exit status: 0 every probe came back; 1 a step failed or a probe was lost (the output \
        names the step); 2 bad flags, or no credentials.",
    after_help = "Examples:\n  RELAYD_AUTH_SECRET=... relayd check relay.example.org:3478\n  relayd check 198.51.100.1:3478 --user alice:secret --transport tcp"
)]
pub struct CheckArgs {
    /// The relay, as HOST:PORT.
    #[arg(value_name = "HOST:PORT")]
    pub server: String,
    /// Long-term credentials to use instead of minting from the secret.
    #[arg(long, value_name = "USER:PASSWORD")]
    pub user: Option<String>,
    /// Transport to the relay.
    #[arg(long, value_parser = ["udp", "tcp"], default_value = "udp")]
    pub transport: String,
    /// Probes to echo.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub count: u32,
    /// Seconds any one step may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub timeout: u64,
}

/// The relay's current shared secret, from wherever its flags came from.
fn secret(args: &Args) -> anyhow::Result<Vec<u8>> {
    if let Some(s) = args.auth_secret.first() {
        return Ok(s.as_bytes().to_vec());
    }
    if let Some(path) = &args.auth_secret_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read secrets file {}", path.display()))?;
        if let Some(line) = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
        {
            return Ok(line.as_bytes().to_vec());
        }
        return Err(usage(format!(
            "secrets file {} holds no secret",
            path.display()
        )));
    }
    Err(usage(
        "no shared secret: give --auth-secret, RELAYD_AUTH_SECRET, --auth-secret-file or a --config file naming one",
    ))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `relayd mint-credential`.
pub fn mint(args: &Args, m: &MintArgs) -> anyhow::Result<()> {
    let expires = unix_now() + m.ttl;
    let (username, password) = mint_rest_credential(&secret(args)?, &m.name, expires);
    let v = serde_json::json!({"username": username, "password": password, "ttl": m.ttl, "expires": expires});
    print_stdout(&format!("{v}\n"))?;
    Ok(())
}

/// `relayd check`: its own exit codes (see [`CheckArgs`]).
pub fn check(args: &Args, c: &CheckArgs) -> ExitCode {
    match check_inner(args, c) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_FAILURE),
        Err(e) => {
            let code = if is_usage(&e) {
                EXIT_USAGE
            } else {
                EXIT_FAILURE
            };
            report_error("relayd check", &e, code)
        }
    }
}

fn check_inner(args: &Args, c: &CheckArgs) -> anyhow::Result<bool> {
    let (user, password) = match &c.user {
        Some(u) => {
            let (n, p) = u
                .split_once(':')
                .ok_or_else(|| usage(format!("--user '{u}': expected USER:PASSWORD")))?;
            (n.to_string(), p.to_string())
        }
        None => mint_rest_credential(&secret(args)?, "relayd-check", unix_now() + 600),
    };
    let step = Duration::from_secs(c.timeout);
    let rt = runtime().context("cannot start the runtime")?;
    rt.block_on(async {
        let server: SocketAddr = tokio::net::lookup_host(&c.server)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| usage(format!("cannot resolve '{}' (expected HOST:PORT)", c.server)))?;
        let transport = match c.transport.as_str() {
            "tcp" => TurnTransport::Tcp,
            _ => TurnTransport::Udp,
        };
        let alloc = |what: &'static str| {
            let cfg = TurnClientConfig::new(server, &user, &password);
            let transport = transport.clone();
            async move {
                TurnRelay::allocate(cfg, transport, step)
                    .await
                    .with_context(|| format!("allocate ({what})"))
            }
        };
        let a = alloc("first").await?;
        let mut b = alloc("second").await?;
        a.create_permission(b.relayed())
            .await
            .context("create permission (first to second)")?;
        b.create_permission(a.relayed())
            .await
            .context("create permission (second to first)")?;
        let mut a = a;
        let mut rtts = Vec::new();
        for i in 0..c.count {
            let probe = format!("relayd check {i} {}", rand::random::<u64>()).into_bytes();
            let t0 = Instant::now();
            a.send_to(b.relayed(), &probe).await.context("send")?;
            // The second allocation echoes what it gets from the first; anything else (a
            // stray datagram from another peer) is ignored until the step's time is up.
            let deadline = tokio::time::Instant::now() + step;
            let echoed = async {
                while let Some((from, data)) = b.recv().await {
                    if from == a.relayed() && data == probe {
                        b.send_to(a.relayed(), &data).await.ok()?;
                        break;
                    }
                }
                while let Some((from, data)) = a.recv().await {
                    if from == b.relayed() && data == probe {
                        return Some(());
                    }
                }
                None
            };
            if let Ok(Some(())) = tokio::time::timeout_at(deadline, echoed).await {
                // Milliseconds, to the microsecond.
                rtts.push((t0.elapsed().as_secs_f64() * 1e6).round() / 1000.0);
            }
        }
        let (ra, rb, mapped) = (a.relayed(), b.relayed(), a.mapped());
        a.release().await;
        b.release().await;
        rtts.sort_by(f64::total_cmp);
        let ok = rtts.len() == c.count as usize;
        let rtt = (!rtts.is_empty()).then(|| {
            serde_json::json!({"min": rtts[0], "median": rtts[rtts.len() / 2], "max": rtts[rtts.len() - 1]})
        });
        let v = serde_json::json!({
            "server": server, "transport": c.transport, "relayed": [ra, rb], "mapped": mapped,
            "sent": c.count, "echoed": rtts.len(), "rtt_ms": rtt, "ok": ok,
        });
        print_stdout(&format!("{v}\n"))?;
        Ok(ok)
    })
}
