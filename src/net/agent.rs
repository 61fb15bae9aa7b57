//! The tokio driver for [`crate::agent::Agent`]: one UDP socket, timers, commands in, events out.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::Shutdown;
use crate::agent::{Agent, AgentEvent};
use crate::identity::{BootstrapEntry, NodeKey, UserId};
use crate::signal::Target;

/// What a program asks the running agent to do.
#[derive(Clone, Debug)]
pub enum AgentCommand {
    Lookup(Target),
    Watch(UserId),
    Claim(String),
    Route(UserId, Vec<u8>),
    Relays,
}

/// Runs `agent` on `socket` until `shutdown` fires or the command channel closes.
pub async fn run_agent(
    mut agent: Agent,
    socket: UdpSocket,
    mut commands: mpsc::Receiver<AgentCommand>,
    events: mpsc::Sender<AgentEvent>,
    mut shutdown: Shutdown,
) -> io::Result<Agent> {
    let mut buf = vec![0u8; 2048];
    let mut commands_open = true;
    loop {
        while let Some(t) = agent.poll_transmit() {
            // A lost datagram is just loss: the session layer retransmits.
            let _ = socket.send_to(&t.data, t.to).await;
            agent.recycle(t.data);
        }
        while let Some(ev) = agent.poll_event() {
            if events.send(ev).await.is_err() {
                return Ok(agent);
            }
        }
        let deadline = agent.poll_timeout().map(tokio::time::Instant::from_std);
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.wait() => {
                agent.close(Instant::now());
                while let Some(t) = agent.poll_transmit() {
                    let _ = socket.send_to(&t.data, t.to).await;
                }
                return Ok(agent);
            }
            _ = sleep => agent.handle_timeout(Instant::now()),
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    if crate::session::is_session_frame(&buf[..n]) {
                        agent.handle_datagram(Instant::now(), from, &buf[..n]);
                    }
                }
                Err(_) => tokio::task::yield_now().await,
            },
            cmd = commands.recv(), if commands_open => match cmd {
                Some(c) => {
                    let now = Instant::now();
                    match c {
                        AgentCommand::Lookup(t) => agent.lookup(now, t),
                        AgentCommand::Watch(u) => agent.watch(now, u),
                        AgentCommand::Claim(n) => {
                            if let Err(e) = agent.claim(now, &n) {
                                let _ = events.send(AgentEvent::Error { message: format!("cannot claim '{n}': {e}") }).await;
                            }
                        }
                        AgentCommand::Route(to, p) => agent.route(now, to, p),
                        AgentCommand::Relays => agent.relays(now),
                    }
                }
                None => commands_open = false,
            },
        }
    }
}

/// Resolves bootstrap entries (`KEY@HOST:PORT`) to addresses.
pub async fn resolve_bootstrap(entries: &[BootstrapEntry]) -> io::Result<Vec<(NodeKey, SocketAddr)>> {
    let mut out = Vec::new();
    for e in entries {
        let addr = tokio::net::lookup_host((e.host.as_str(), e.port))
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("'{}' has no address", e.host)))?;
        out.push((e.key, addr));
    }
    Ok(out)
}

/// Reads a host cache file: one `KEY@HOST:PORT` per line; bad lines are skipped.
pub fn read_host_cache(path: &Path) -> Vec<BootstrapEntry> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Writes the host cache atomically (temp file, then rename).
pub fn write_host_cache(path: &Path, nodes: &[(NodeKey, SocketAddr)]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text: String = nodes.iter().map(|(k, a)| format!("{k}@{a}\n")).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}
