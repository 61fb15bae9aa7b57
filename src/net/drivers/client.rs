//! The tokio driver for [`crate::client::Agent`]: one UDP socket, timers, commands in, events out.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::client::{Agent, AgentEvent};
use crate::identity::{BootstrapEntry, NodeKey, UserId};
use crate::net::Shutdown;
use crate::signal::Target;

use super::streams::{StreamEvent, Streams};

/// What a program asks the running agent to do.
#[derive(Clone, Debug)]
pub enum AgentCommand {
    Lookup(Target),
    Watch(UserId),
    Claim(String),
    Route(UserId, Vec<u8>),
    /// Acknowledge a delivery (its number), with an optional reply for the sender.
    Acknowledge(u64, Option<Vec<u8>>),
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
    let mut streams = Streams::new();
    loop {
        while let Some(t) = agent.poll_transmit() {
            // A lost datagram is just loss: the session layer retransmits.
            if t.socket == crate::transmit::STREAM {
                streams.send(t.to, t.data);
            } else {
                let _ = socket.send_to(&t.data, t.to).await;
                agent.recycle(t.data);
            }
        }
        while let Some(addr) = agent.poll_stream_close() {
            streams.close(addr);
        }
        while let Some(addr) = agent.poll_stream_open() {
            streams.connect(addr);
        }
        while let Some(ev) = agent.poll_event() {
            if events.send(ev).await.is_err() {
                return Ok(agent);
            }
        }
        let sleep = crate::net::sleep_until(agent.poll_timeout());
        tokio::select! {
            _ = shutdown.wait() => {
                agent.close(Instant::now());
                while let Some(t) = agent.poll_transmit() {
                    if t.socket == crate::transmit::STREAM {
                        streams.send(t.to, t.data);
                    } else {
                        let _ = socket.send_to(&t.data, t.to).await;
                    }
                }
                streams.finish().await;
                return Ok(agent);
            }
            _ = sleep => agent.handle_timeout(Instant::now()),
            Some((from, ev)) = streams.incoming.recv() => match ev {
                StreamEvent::Frame(data) => agent.handle_input(Instant::now(), from, &data),
                StreamEvent::Connected(id) => if streams.is_current(from, id) {
                    agent.stream_connected(Instant::now(), from);
                },
                StreamEvent::Closed(id) => if streams.closed(from, id) {
                    agent.stream_closed(Instant::now(), from);
                },
            },
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    if crate::demux::classify(&buf[..n]) == crate::demux::Kind::Session {
                        agent.handle_input(Instant::now(), from, &buf[..n]);
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
                        AgentCommand::Route(to, p) => {
                            agent.route(now, to, p);
                        }
                        AgentCommand::Acknowledge(id, reply) => agent.acknowledge(now, id, reply),
                        AgentCommand::Relays => agent.relays(now),
                    }
                }
                None => commands_open = false,
            },
        }
    }
}

/// Resolves bootstrap entries (`KEY@HOST:PORT`) to addresses.
pub async fn resolve_bootstrap(
    entries: &[BootstrapEntry],
) -> io::Result<Vec<(NodeKey, SocketAddr)>> {
    let mut out = Vec::new();
    for e in entries {
        let addr = tokio::net::lookup_host((e.host.as_str(), e.port))
            .await?
            .next()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("'{}' has no address", e.host),
                )
            })?;
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

/// Reads the TCP hints file: supernode addresses an earlier run reached only over TCP, one
/// `HOST:PORT` per line ([`crate::client::AgentConfig::race_tcp_at_once`]); bad lines skipped.
pub fn read_tcp_hints(path: &Path) -> HashSet<SocketAddr> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Updates the TCP hints file with what a run learnt (`Agent::transports_learnt`): addresses
/// only TCP reached are added, those UDP answered are removed, the rest kept. Written
/// atomically; nothing is written when nothing changes.
pub fn update_tcp_hints(path: &Path, tcp: &[SocketAddr], udp: &[SocketAddr]) -> io::Result<()> {
    let old = read_tcp_hints(path);
    let mut new = old.clone();
    new.extend(tcp);
    for a in udp {
        new.remove(a);
    }
    if new == old {
        return Ok(());
    }
    let mut lines: Vec<String> = new.iter().map(|a| format!("{a}\n")).collect();
    lines.sort();
    write_atomically(path, &lines.concat())
}

/// Writes `text` to `path` through a private temporary name and a rename: several processes
/// may share one file, and a reader never sees half of it.
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

/// Writes the host cache atomically (temp file, then rename).
pub fn write_host_cache(path: &Path, nodes: &[(NodeKey, SocketAddr)]) -> io::Result<()> {
    let text: String = nodes.iter().map(|(k, a)| format!("{k}@{a}\n")).collect();
    write_atomically(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_hints_learn_tcp_and_forget_what_udp_answered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tcp-hints");
        let (a, b, c): (SocketAddr, SocketAddr, SocketAddr) = (
            "198.51.100.1:3478".parse().unwrap(),
            "198.51.100.2:3478".parse().unwrap(),
            "[2001:db8::1]:3478".parse().unwrap(),
        );
        assert!(read_tcp_hints(&path).is_empty(), "no file: no hints");
        update_tcp_hints(&path, &[a, c], &[]).unwrap();
        assert_eq!(read_tcp_hints(&path), HashSet::from([a, c]));
        // A later run: UDP answered a, TCP only reached b; c was not tried and stays.
        update_tcp_hints(&path, &[b], &[a]).unwrap();
        assert_eq!(read_tcp_hints(&path), HashSet::from([b, c]));
        // A damaged line is skipped, not fatal.
        std::fs::write(&path, format!("{b}\nnot an address\n")).unwrap();
        assert_eq!(read_tcp_hints(&path), HashSet::from([b]));
    }
}
