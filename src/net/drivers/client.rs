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

/// How a stream cuts its bytes into messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Session frames: a 2-byte big-endian length before each ([`crate::net::frames`]).
    Session,
    /// TURN over TCP (RFC 8656 §12): STUN messages and ChannelData (padded to 4 bytes) back to
    /// back, each message's length read from its own header. Only calls (to a relay) use it.
    #[cfg_attr(not(feature = "calls"), allow(dead_code))]
    Turn,
}

/// One stream's number among those a [`Streams`] opened: a stream that ended may report it
/// after a new one to the same address took its place.
pub(crate) type StreamId = u64;

/// What a stream reports.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    /// Its TCP connection is up.
    Connected(StreamId),
    Frame(Vec<u8>),
    /// It ended (refused, reset, closed by the far end): hand it to [`Streams::closed`].
    Closed(StreamId),
}

/// TCP streams to supernodes that UDP does not reach: one per address, opened on first use
/// (or ahead of it, empty: [`Streams::connect`]).
pub(crate) struct Streams {
    framing: Framing,
    writers: std::collections::HashMap<SocketAddr, (StreamId, mpsc::Sender<Vec<u8>>)>,
    next_id: StreamId,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// What every stream reports.
    incoming_tx: mpsc::Sender<(SocketAddr, StreamEvent)>,
    pub(crate) incoming: mpsc::Receiver<(SocketAddr, StreamEvent)>,
}

impl Streams {
    pub(crate) fn new() -> Streams {
        Streams::with(Framing::Session)
    }

    pub(crate) fn with(framing: Framing) -> Streams {
        let (incoming_tx, incoming) = mpsc::channel(256);
        Streams {
            framing,
            writers: std::collections::HashMap::new(),
            next_id: 0,
            tasks: Vec::new(),
            incoming_tx,
            incoming,
        }
    }

    /// Queues a frame for `to`, connecting first if needed. A broken stream is dropped; the
    /// session layer's retransmission then opens a new one.
    pub(crate) fn send(&mut self, to: SocketAddr, data: Vec<u8>) {
        let data = match self.writers.get(&to) {
            None => data,
            Some((_, w)) => match w.try_send(data) {
                Ok(()) => return,
                // The stream is backed up (or still connecting): this frame is lost, as a
                // datagram would be. A second connection would not help, and for TURN it
                // would carry no allocation.
                Err(mpsc::error::TrySendError::Full(_)) => return,
                Err(mpsc::error::TrySendError::Closed(data)) => data,
            },
        };
        self.open(to, Some(data));
    }

    /// Connects to `to` with nothing to send yet, unless a stream to it is open.
    pub(crate) fn connect(&mut self, to: SocketAddr) {
        if self.writers.get(&to).is_none_or(|(_, w)| w.is_closed()) {
            self.open(to, None);
        }
    }

    /// Opens a stream to `to` (replacing a closed one), with `data` as its first frame.
    fn open(&mut self, to: SocketAddr, data: Option<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(64);
        if let Some(data) = data {
            let _ = tx.try_send(data);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.writers.insert(to, (id, tx));
        self.tasks.retain(|t| !t.is_finished());
        self.tasks.push(tokio::spawn(stream_task(
            to,
            id,
            self.framing,
            rx,
            self.incoming_tx.clone(),
        )));
    }

    /// Whether stream `id` is the one open to `to` (a stream's report may come after a newer
    /// one replaced it).
    pub(crate) fn is_current(&self, to: SocketAddr, id: StreamId) -> bool {
        self.writers.get(&to).is_some_and(|(i, _)| *i == id)
    }

    /// Stream `id` to `to` ended: forgets it, and says whether the core should hear of it.
    /// Not when a newer stream to `to` took its place meanwhile (the core sent again, found
    /// the old one closed and opened another): forgetting that one would cut it off, and the
    /// core would count a failure of the stream it is using.
    pub(crate) fn closed(&mut self, to: SocketAddr, id: StreamId) -> bool {
        let current = self.is_current(to, id);
        if current {
            self.writers.remove(&to);
        }
        current
    }

    /// Closes the stream to `to` (nothing uses it any more): its task ends once what is
    /// queued is written, and its end is not reported.
    pub(crate) fn close(&mut self, to: SocketAddr) {
        self.writers.remove(&to);
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
    id: StreamId,
    framing: Framing,
    mut out: mpsc::Receiver<Vec<u8>>,
    incoming: mpsc::Sender<(SocketAddr, StreamEvent)>,
) {
    use crate::net::frames::{read_frame, write_frame};
    let Ok(Ok(stream)) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(to),
    )
    .await
    else {
        let _ = incoming.send((to, StreamEvent::Closed(id))).await;
        return;
    };
    let _ = stream.set_nodelay(true);
    let _ = incoming.send((to, StreamEvent::Connected(id))).await;
    let (mut rd, mut wr) = stream.into_split();
    let done = incoming.clone();
    let mut reader = tokio::spawn(async move {
        match framing {
            Framing::Session => {
                let mut buf = Vec::new();
                while let Ok(Some(())) = read_frame(&mut rd, &mut buf).await {
                    if incoming
                        .send((to, StreamEvent::Frame(buf.clone())))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            Framing::Turn => {
                let mut reader = TurnReader::default();
                while let Ok(Some(m)) = reader.next(&mut rd).await {
                    if incoming.send((to, StreamEvent::Frame(m))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    loop {
        tokio::select! {
            // The supernode closed the stream (or died): tell the agent at once.
            _ = &mut reader => break,
            m = out.recv() => match m {
                Some(m) => {
                    let w = match framing {
                        Framing::Session => write_frame(&mut wr, &m).await,
                        // TURN messages carry their own length (and ChannelData its padding,
                        // added by the TURN client in stream mode).
                        Framing::Turn => tokio::io::AsyncWriteExt::write_all(&mut wr, &m).await,
                    };
                    if w.is_err() {
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
    let _ = done.send((to, StreamEvent::Closed(id))).await;
}

/// Cuts a TURN-over-TCP byte stream into messages: a STUN message (20-byte header plus its
/// length) or a ChannelData message (4-byte header plus its length; the padding to 4 bytes is
/// read and dropped).
#[derive(Default)]
struct TurnReader {
    buf: Vec<u8>,
}

/// Largest message taken from a TURN stream (a relayed datagram is at most 64 KiB).
const MAX_TURN_MESSAGE: usize = 70_000;

impl TurnReader {
    async fn next<R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
    ) -> io::Result<Option<Vec<u8>>> {
        use crate::turn::channel;
        let mut chunk = [0u8; 4096];
        loop {
            let framed = if self
                .buf
                .first()
                .is_some_and(|b| channel::is_channel_data(*b))
            {
                channel::framed_len(&self.buf).map(|f| {
                    let len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
                    (f, channel::HEADER + len)
                })
            } else if self.buf.len() >= 4 {
                match crate::stun::framed_len(&self.buf) {
                    Some(f) => Some((f, f)),
                    None => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "not a TURN message",
                        ));
                    }
                }
            } else {
                None
            };
            if let Some((frame, message)) = framed {
                if frame > MAX_TURN_MESSAGE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "oversized TURN message",
                    ));
                }
                if self.buf.len() >= frame {
                    let m = self.buf[..message].to_vec();
                    self.buf.drain(..frame);
                    return Ok(Some(m));
                }
            }
            let n = tokio::io::AsyncReadExt::read(rd, &mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
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

    /// A stream's end, reported after the core already sent again on a new stream to the same
    /// address, neither cuts that stream off nor reaches the core.
    async fn within<F: std::future::Future>(f: F) -> F::Output {
        let limit = std::time::Duration::from_secs(5);
        tokio::time::timeout(limit, f).await.expect("in time")
    }

    #[tokio::test]
    async fn a_stale_close_spares_the_stream_that_replaced_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let mut streams = Streams::new();
        streams.connect(to);
        // The far end takes the first connection and drops it.
        drop(within(listener.accept()).await.unwrap());
        let ev = |e: Option<(SocketAddr, StreamEvent)>| e.expect("streams report").1;
        let first = match ev(within(streams.incoming.recv()).await) {
            StreamEvent::Connected(id) => id,
            e => panic!("{e:?}"),
        };
        let stale = ev(within(streams.incoming.recv()).await);
        assert!(
            matches!(stale, StreamEvent::Closed(id) if id == first),
            "{stale:?}"
        );
        // Its task is over: the core's next frame opens a second stream.
        within(async {
            while !streams.writers[&to].1.is_closed() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        streams.send(to, b"hello".to_vec());
        let (mut second, _) = within(listener.accept()).await.unwrap();
        // Only now is the first stream's end handled.
        assert!(!streams.closed(to, first), "a stale close reaches the core");
        let mut buf = Vec::new();
        let got = within(crate::net::frames::read_frame(&mut second, &mut buf)).await;
        assert!(matches!(got, Ok(Some(()))), "{got:?}");
        assert_eq!(buf, b"hello");
        match ev(within(streams.incoming.recv()).await) {
            StreamEvent::Connected(id) => {
                assert!(id != first && streams.is_current(to, id));
                // The second stream lives on: another frame goes down it.
                streams.send(to, b"again".to_vec());
                let got = within(crate::net::frames::read_frame(&mut second, &mut buf)).await;
                assert!(matches!(got, Ok(Some(()))), "{got:?}");
                assert_eq!(buf, b"again");
                drop(second);
                let end = ev(within(streams.incoming.recv()).await);
                assert!(matches!(end, StreamEvent::Closed(i) if i == id), "{end:?}");
                assert!(
                    streams.closed(to, id),
                    "the current stream's end is the core's"
                );
            }
            e => panic!("{e:?}"),
        }
    }
}
