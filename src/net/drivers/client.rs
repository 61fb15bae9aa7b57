//! The tokio driver for [`crate::client::Agent`]: one UDP socket, timers, commands in, events out.

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
            if agent.uses_stream(t.to) {
                streams.send(t.to, t.data);
            } else {
                let _ = socket.send_to(&t.data, t.to).await;
                agent.recycle(t.data);
            }
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
                    if agent.uses_stream(t.to) {
                        streams.send(t.to, t.data);
                    } else {
                        let _ = socket.send_to(&t.data, t.to).await;
                    }
                }
                streams.finish().await;
                return Ok(agent);
            }
            _ = sleep => agent.handle_timeout(Instant::now()),
            Some((from, data)) = streams.incoming.recv() => match data {
                Some(data) => agent.handle_datagram(Instant::now(), from, &data),
                None => {
                    streams.writers.remove(&from);
                    agent.stream_closed(Instant::now(), from);
                }
            },
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    if crate::demux::classify(&buf[..n]) == crate::demux::Kind::Session {
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

/// TCP streams to supernodes that UDP does not reach: one per address, opened on first use.
pub(crate) struct Streams {
    pub(crate) writers: std::collections::HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Frames from every stream; `None` when a stream ended.
    incoming_tx: mpsc::Sender<(SocketAddr, Option<Vec<u8>>)>,
    pub(crate) incoming: mpsc::Receiver<(SocketAddr, Option<Vec<u8>>)>,
}

impl Streams {
    pub(crate) fn new() -> Streams {
        let (incoming_tx, incoming) = mpsc::channel(256);
        Streams {
            writers: std::collections::HashMap::new(),
            tasks: Vec::new(),
            incoming_tx,
            incoming,
        }
    }

    /// Queues a frame for `to`, connecting first if needed. A broken stream is dropped; the
    /// session layer's retransmission then opens a new one.
    pub(crate) fn send(&mut self, to: SocketAddr, data: Vec<u8>) {
        if let Some(w) = self.writers.get(&to)
            && w.try_send(data.clone()).is_ok()
        {
            return;
        }
        let (tx, rx) = mpsc::channel(64);
        let _ = tx.try_send(data);
        self.writers.insert(to, tx);
        self.tasks.retain(|t| !t.is_finished());
        self.tasks
            .push(tokio::spawn(stream_task(to, rx, self.incoming_tx.clone())));
    }

    /// Lets every stream write what is queued (a goodbye), then closes them (bounded).
    pub(crate) async fn finish(&mut self) {
        self.writers.clear();
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), t).await;
        }
    }
}

async fn stream_task(
    to: SocketAddr,
    mut out: mpsc::Receiver<Vec<u8>>,
    incoming: mpsc::Sender<(SocketAddr, Option<Vec<u8>>)>,
) {
    use crate::net::frames::{read_frame, write_frame};
    let Ok(Ok(stream)) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(to),
    )
    .await
    else {
        let _ = incoming.send((to, None)).await;
        return;
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let done = incoming.clone();
    let mut reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Ok(Some(())) = read_frame(&mut rd, &mut buf).await {
            if incoming.send((to, Some(buf.clone()))).await.is_err() {
                return;
            }
        }
    });
    loop {
        tokio::select! {
            // The supernode closed the stream (or died): tell the agent at once.
            _ = &mut reader => break,
            m = out.recv() => match m {
                Some(m) => {
                    if write_frame(&mut wr, &m).await.is_err() {
                        break;
                    }
                }
                None => {
                    reader.abort();
                    return;
                }
            },
        }
    }
    reader.abort();
    let _ = done.send((to, None)).await;
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

/// Writes the host cache atomically (temp file, then rename).
pub fn write_host_cache(path: &Path, nodes: &[(NodeKey, SocketAddr)]) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text: String = nodes.iter().map(|(k, a)| format!("{k}@{a}\n")).collect();
    // A private temporary name: several processes may share one cache file.
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}
