//! Streams: the TCP side of the client's transports, to supernodes ([`Framing::Session`]) and to
//! relays ([`Framing::Turn`]), for networks that block UDP. Each stream races TLS beside plain
//! TCP when plain TCP is refused or goes unanswered, for networks whose firewall passes only TLS
//! (see [`stream_task`] and [`crate::net::tls`]).

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;

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

/// TCP streams to supernodes (and relays) that UDP does not reach: one per address, opened on
/// first use (or ahead of it, empty: [`Streams::connect`]), each racing TLS beside plain TCP
/// when plain TCP is refused or unanswered (see [`stream_task`]).
pub(crate) struct Streams {
    framing: Framing,
    /// The TLS client our streams race with (`None`: plain TCP only).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Addresses a TLS stream won the race to: later streams there start with TLS alone.
    tls_won: Arc<Mutex<HashSet<SocketAddr>>>,
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
        let tls = match crate::net::tls::camouflage_client() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("streams race plain TCP only: no TLS client ({e})");
                None
            }
        };
        Streams {
            framing,
            tls,
            tls_won: Arc::default(),
            writers: std::collections::HashMap::new(),
            next_id: 0,
            tasks: Vec::new(),
            incoming_tx,
            incoming,
        }
    }

    /// Streams of plain TCP only: no TLS races.
    #[cfg(test)]
    fn plain_only(mut self) -> Streams {
        self.tls = None;
        self
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
        let tls = self.tls.clone().map(|config| TlsRace {
            config,
            won: self.tls_won.clone(),
        });
        self.tasks.push(tokio::spawn(stream_task(
            to,
            id,
            self.framing,
            rx,
            self.incoming_tx.clone(),
            tls,
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

/// How long a stream's connection (and a TLS one's handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The least a plain connection that took frames gets to answer before TLS races it
/// ([`stream_task`]); otherwise twice its connect time, a round trip for the answer plus as
/// much again for the far end's work and queues. Only a firewall that swallows what it does not
/// like needs this timer (one that resets is answered at once), and on a lossy path plain TCP's
/// own retransmission (200 ms at least on Linux, plus a round trip) would often outlast a
/// shorter wait and start TLS connections for nothing.
const TLS_AFTER_MIN: Duration = Duration::from_millis(600);

/// Frames kept for a connection that is not up yet, until one connection has answered.
const BACKLOG: usize = 64;

/// What a stream races TLS with.
struct TlsRace {
    config: Arc<rustls::ClientConfig>,
    won: Arc<Mutex<HashSet<SocketAddr>>>,
}

/// The two ways a stream connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leg {
    Plain,
    Tls,
}

/// What a connection reports to its stream.
enum LegEvent {
    /// Connected (a TLS one: handshake done), after `took`.
    Up(Duration),
    Frame(Vec<u8>),
    /// Ended: refused, reset, timed out or closed.
    Down,
}

/// A connection under way.
struct Running {
    task: tokio::task::JoinHandle<()>,
    /// Its frames, queued until it is up.
    tx: mpsc::Sender<Vec<u8>>,
    up: bool,
}

/// One stream to `to`: plain TCP first; TLS beside it (same address: our supernodes and relays
/// tell the two apart by the first byte) when plain TCP ends after taking frames without
/// answering them (a firewall's reset, most likely), or has not answered them within twice its
/// connect time ([`TLS_AFTER_MIN`] at least). The first connection to deliver a frame wins and
/// the other is closed; until then every frame goes to both (the session layer and TURN answer
/// a duplicate from either as a retransmission, and act on it once). A firewall that passes
/// only TLS resets or swallows the plain one; once TLS has won to an address, later streams
/// there use TLS alone. An empty connection made ahead of use that ends proves nothing about
/// the network: the stream just ends.
async fn stream_task(
    to: SocketAddr,
    id: StreamId,
    framing: Framing,
    mut out: mpsc::Receiver<Vec<u8>>,
    incoming: mpsc::Sender<(SocketAddr, StreamEvent)>,
    tls: Option<TlsRace>,
) {
    let (legs_tx, mut legs) = mpsc::channel::<(Leg, LegEvent)>(64);
    let tls_first = tls
        .as_ref()
        .is_some_and(|t| t.won.lock().is_ok_and(|w| w.contains(&to)));
    let start = |leg: Leg, backlog: &[Vec<u8>]| {
        let (tx, rx) = mpsc::channel(BACKLOG);
        for m in backlog {
            let _ = tx.try_send(m.clone());
        }
        let config = tls
            .as_ref()
            .map(|t| t.config.clone())
            .filter(|_| leg == Leg::Tls);
        let task = tokio::spawn(connection(to, leg, config, framing, rx, legs_tx.clone()));
        Running {
            task,
            tx,
            up: false,
        }
    };
    let mut plain = (!tls_first).then(|| start(Leg::Plain, &[]));
    let mut secure = tls_first.then(|| start(Leg::Tls, &[]));
    // Until a connection has answered: the frames sent, for a TLS one started later.
    let mut winner: Option<Leg> = None;
    let mut backlog: Vec<Vec<u8>> = Vec::new();
    let mut reported = false;
    let mut plain_took = CONNECT_TIMEOUT;
    // When TLS joins the race unless plain TCP has answered by then.
    let mut tls_at: Option<Instant> = None;
    let can_race = tls.is_some() && !tls_first;
    let patience = |took: Duration| Instant::now() + (took * 2).max(TLS_AFTER_MIN);
    let ended = loop {
        let timer = async {
            match tls_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = out.recv() => {
                let Some(m) = m else { break false };
                for r in [&plain, &secure].into_iter().flatten() {
                    let _ = r.tx.try_send(m.clone());
                }
                if winner.is_none() {
                    if backlog.len() < BACKLOG {
                        backlog.push(m);
                    }
                    let plain_up = plain.as_ref().is_some_and(|p| p.up);
                    if can_race && secure.is_none() && tls_at.is_none() && plain_up {
                        tls_at = Some(patience(plain_took));
                    }
                }
            }
            () = timer => {
                tls_at = None;
                if secure.is_none() {
                    secure = Some(start(Leg::Tls, &backlog));
                }
            }
            Some((leg, ev)) = legs.recv() => match ev {
                LegEvent::Up(took) => {
                    let slot = if leg == Leg::Plain { &mut plain } else { &mut secure };
                    if let Some(r) = slot.as_mut() {
                        r.up = true;
                    }
                    if leg == Leg::Plain {
                        plain_took = took;
                        if can_race && !backlog.is_empty() && secure.is_none() {
                            tls_at = Some(patience(took));
                        }
                    }
                    if !reported {
                        reported = true;
                        let _ = incoming.send((to, StreamEvent::Connected(id))).await;
                    }
                }
                LegEvent::Frame(f) => {
                    if winner.is_none() {
                        winner = Some(leg);
                        backlog = Vec::new();
                        tls_at = None;
                        let loser = if leg == Leg::Plain { secure.take() } else { plain.take() };
                        if let Some(l) = loser {
                            l.task.abort();
                        }
                        if leg == Leg::Tls
                            && let Some(t) = &tls
                            && let Ok(mut won) = t.won.lock()
                        {
                            won.insert(to);
                        }
                    }
                    if winner == Some(leg)
                        && incoming.send((to, StreamEvent::Frame(f))).await.is_err()
                    {
                        break false;
                    }
                }
                // The loser's end, reported before its abort took: it was closed already.
                LegEvent::Down if winner.is_some_and(|w| w != leg) => {}
                LegEvent::Down => {
                    if leg == Leg::Plain { plain = None } else { secure = None }
                    if winner.is_some() {
                        break true;
                    }
                    if leg == Leg::Plain && can_race && secure.is_none() && !backlog.is_empty() {
                        tls_at = None;
                        secure = Some(start(Leg::Tls, &backlog));
                    }
                    if plain.is_none() && secure.is_none() {
                        break true;
                    }
                }
            },
        }
    };
    for r in [plain, secure].into_iter().flatten() {
        if ended {
            r.task.abort();
        } else {
            // Closed by our side: what is queued (a goodbye) is written first.
            drop(r.tx);
            let _ = r.task.await;
        }
    }
    if ended {
        let _ = incoming.send((to, StreamEvent::Closed(id))).await;
    }
}

/// One connection of a stream: connects (with `tls`, a TLS handshake on top), then moves frames
/// both ways until either side ends.
async fn connection(
    to: SocketAddr,
    leg: Leg,
    tls: Option<Arc<rustls::ClientConfig>>,
    framing: Framing,
    out: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<(Leg, LegEvent)>,
) {
    let began = Instant::now();
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(to)).await;
    if let Ok(Ok(tcp)) = connected {
        let _ = tcp.set_nodelay(true);
        match tls {
            None => {
                let _ = events.send((leg, LegEvent::Up(began.elapsed()))).await;
                carry(tcp, leg, framing, out, &events).await;
            }
            Some(config) => {
                let name = rustls_pki_types::ServerName::from(to.ip());
                let connector = tokio_rustls::TlsConnector::from(config);
                let left = CONNECT_TIMEOUT.saturating_sub(began.elapsed());
                if let Ok(Ok(s)) = tokio::time::timeout(left, connector.connect(name, tcp)).await {
                    let _ = events.send((leg, LegEvent::Up(began.elapsed()))).await;
                    carry(s, leg, framing, out, &events).await;
                }
            }
        }
    }
    let _ = events.send((leg, LegEvent::Down)).await;
}

/// Moves frames over an open connection until either side ends.
async fn carry<S: AsyncRead + AsyncWrite + Send + 'static>(
    stream: S,
    leg: Leg,
    framing: Framing,
    mut out: mpsc::Receiver<Vec<u8>>,
    events: &mpsc::Sender<(Leg, LegEvent)>,
) {
    use crate::net::frames::{read_frame, write_frame};
    let (mut rd, mut wr) = tokio::io::split(stream);
    let frames = events.clone();
    let mut reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut turn = TurnReader::default();
        loop {
            let m = match framing {
                Framing::Session => match read_frame(&mut rd, &mut buf).await {
                    Ok(Some(())) => buf.clone(),
                    _ => return,
                },
                Framing::Turn => match turn.next(&mut rd).await {
                    Ok(Some(m)) => m,
                    _ => return,
                },
            };
            if frames.send((leg, LegEvent::Frame(m))).await.is_err() {
                return;
            }
        }
    });
    loop {
        tokio::select! {
            // The far end closed the stream (or died): report at once.
            _ = &mut reader => return,
            m = out.recv() => {
                let Some(m) = m else { break };
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
        }
    }
    reader.abort();
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut streams = Streams::new().plain_only();
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

    /// What the echo server does with a plain connection's frames.
    #[derive(Clone, Copy, PartialEq)]
    enum Plain {
        Echo,
        /// Reset at the first frame, as a firewall that passes only TLS may.
        Reset,
        /// Swallow them, as another such firewall may.
        Swallow,
    }

    /// A server on one port for plain and TLS streams (told apart by the first byte) that
    /// echoes session frames over TLS, and over plain TCP as `plain` says. Counts connections
    /// by kind.
    struct EchoServer {
        addr: SocketAddr,
        plain: Arc<std::sync::atomic::AtomicUsize>,
        tls: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl EchoServer {
        async fn start(plain_does: Plain) -> EchoServer {
            use crate::net::frames::{read_frame, write_frame};
            use std::sync::atomic::Ordering;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (cert, key) = crate::net::tls::self_signed("test.invalid").unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(
                crate::net::tls::tls_config(cert.as_bytes(), key.as_bytes()).unwrap(),
            );
            let (plain, tls) = (Arc::default(), Arc::default());
            let counts: (
                Arc<std::sync::atomic::AtomicUsize>,
                Arc<std::sync::atomic::AtomicUsize>,
            ) = (Arc::clone(&plain), Arc::clone(&tls));
            tokio::spawn(async move {
                loop {
                    let (s, _) = listener.accept().await.unwrap();
                    let (acceptor, counts) = (acceptor.clone(), counts.clone());
                    tokio::spawn(async move {
                        let mut first = [0u8; 1];
                        if s.peek(&mut first).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut buf = Vec::new();
                        if first[0] == crate::net::tls::TLS_HANDSHAKE {
                            counts.1.fetch_add(1, Ordering::SeqCst);
                            let Ok(mut s) = acceptor.accept(s).await else {
                                return;
                            };
                            while let Ok(Some(())) = read_frame(&mut s, &mut buf).await {
                                let _ = write_frame(&mut s, &buf).await;
                            }
                        } else {
                            counts.0.fetch_add(1, Ordering::SeqCst);
                            let mut s = s;
                            while let Ok(Some(())) = read_frame(&mut s, &mut buf).await {
                                match plain_does {
                                    Plain::Echo => {
                                        let _ = write_frame(&mut s, &buf).await;
                                    }
                                    // Linger 0: the close sends a reset.
                                    Plain::Reset => {
                                        let _ = s.set_zero_linger();
                                        return;
                                    }
                                    Plain::Swallow => {}
                                }
                            }
                        }
                    });
                }
            });
            EchoServer { addr, plain, tls }
        }

        fn counts(&self) -> (usize, usize) {
            use std::sync::atomic::Ordering;
            (
                self.plain.load(Ordering::SeqCst),
                self.tls.load(Ordering::SeqCst),
            )
        }
    }

    /// The next frame the streams deliver (skipping connection reports).
    async fn next_frame(streams: &mut Streams) -> Vec<u8> {
        loop {
            match within(streams.incoming.recv())
                .await
                .expect("streams report")
                .1
            {
                StreamEvent::Frame(f) => return f,
                StreamEvent::Connected(_) => {}
                StreamEvent::Closed(id) => panic!("stream {id} closed"),
            }
        }
    }

    #[cfg(feature = "supernode")]
    #[tokio::test]
    async fn tls_wins_where_plain_tcp_is_reset_and_is_used_first_after() {
        let server = EchoServer::start(Plain::Reset).await;
        let mut streams = Streams::new();
        streams.send(server.addr, b"hello".to_vec());
        assert_eq!(
            next_frame(&mut streams).await,
            b"hello",
            "answered over TLS"
        );
        assert_eq!(server.counts(), (1, 1));
        // The stream carries on over TLS.
        streams.send(server.addr, b"more".to_vec());
        assert_eq!(next_frame(&mut streams).await, b"more");
        // A new stream to that address starts with TLS alone.
        streams.close(server.addr);
        streams.send(server.addr, b"again".to_vec());
        assert_eq!(next_frame(&mut streams).await, b"again");
        assert_eq!(server.counts(), (1, 2), "no second plain attempt");
    }

    #[cfg(feature = "supernode")]
    #[tokio::test]
    async fn plain_tcp_that_answers_makes_no_tls_connection() {
        let server = EchoServer::start(Plain::Echo).await;
        let mut streams = Streams::new();
        streams.send(server.addr, b"hello".to_vec());
        assert_eq!(next_frame(&mut streams).await, b"hello");
        streams.send(server.addr, b"more".to_vec());
        assert_eq!(next_frame(&mut streams).await, b"more");
        // Well past TLS_AFTER_MIN: the race was settled by plain TCP's answer.
        tokio::time::sleep(TLS_AFTER_MIN * 2).await;
        assert_eq!(server.counts(), (1, 0));
    }

    /// What is queued when the streams finish (a goodbye) reaches the far end.
    #[tokio::test]
    async fn a_goodbye_queued_at_the_end_is_written() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let mut streams = Streams::new();
        streams.send(to, b"hello".to_vec());
        let (mut far, _) = within(listener.accept()).await.unwrap();
        let mut buf = Vec::new();
        let got = within(crate::net::frames::read_frame(&mut far, &mut buf)).await;
        assert!(matches!(got, Ok(Some(()))) && buf == b"hello", "{got:?}");
        streams.send(to, b"bye".to_vec());
        within(streams.finish()).await;
        let got = within(crate::net::frames::read_frame(&mut far, &mut buf)).await;
        assert!(
            matches!(got, Ok(Some(()))) && buf == b"bye",
            "{got:?} {buf:?}"
        );
    }

    #[cfg(feature = "supernode")]
    #[tokio::test]
    async fn tls_wins_where_plain_tcp_goes_unanswered() {
        let server = EchoServer::start(Plain::Swallow).await;
        let mut streams = Streams::new();
        let t0 = Instant::now();
        streams.send(server.addr, b"hello".to_vec());
        assert_eq!(
            next_frame(&mut streams).await,
            b"hello",
            "answered over TLS"
        );
        assert!(t0.elapsed() >= TLS_AFTER_MIN, "TLS raced before its time");
        assert_eq!(server.counts(), (1, 1));
    }
}
