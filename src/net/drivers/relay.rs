//! The tokio driver for [`crate::turn::TurnServer`]: listeners (UDP, TCP, TLS), one relayed UDP
//! socket per allocation, timers, drain and credential reloads.
//!
//! Everything runs on one thread (a `LocalSet`): the core sits in a `RefCell` that each task
//! borrows for the synchronous part of its work and never across an `.await`, so no locks and no
//! channels sit on the per-packet path.
//!
//! The per-packet path, both ways:
//! - client → peer: the listener receives a batch (`recvmmsg`); ChannelData is parsed in place
//!   and its payload sent straight from the input buffer on the allocation's relayed socket;
//! - peer → client: a relayed socket's task receives into a buffer shared by all allocations,
//!   the core writes ChannelData (the one copy) into the listener's shared send batch, and a
//!   flusher task, woken after the ready relay tasks of this turn of the event loop have run,
//!   sends the whole batch with one `sendmmsg`: the syscall cost is shared across allocations.
//!
//! Per allocation the driver keeps a socket, a small task and no buffers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::net::batch::{BATCH, RecvBatch, SendBatch};
use crate::net::socket::{SAME_PORT_ATTEMPTS, SamePortError, bind_same_port, bind_tcp_std};
use crate::net::{Shutdown, bind_udp, bind_udp_std};
use crate::turn::server::{AllocId, ClientAction, ClientAddr, Event, PeerAction, Transport};
use crate::turn::{Credentials, TurnServer, channel};

/// One listening endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Udp(SocketAddr),
    Tcp(SocketAddr),
    Tls(SocketAddr),
    /// UDP and TCP on one port number, and TLS on the TCP port too when a certificate is
    /// given (told apart by the first byte, see [`TLS_HANDSHAKE`]). Port 0 picks one port for
    /// both.
    All(SocketAddr),
}

impl Listen {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Listen::Udp(a) | Listen::Tcp(a) | Listen::Tls(a) | Listen::All(a) => *a,
        }
    }
}

/// A bound listener, ready to serve.
pub enum BoundListener {
    Udp(UdpSocket),
    /// TCP; with an acceptor, a connection that opens with a TLS handshake record is TLS.
    Tcp(TcpListener, Option<tokio_rustls::TlsAcceptor>),
    Tls(TcpListener, tokio_rustls::TlsAcceptor),
}

impl BoundListener {
    /// What this listener serves, and where: a TCP listener that also takes TLS is both.
    pub fn endpoints(&self) -> io::Result<Vec<(Transport, SocketAddr)>> {
        Ok(match self {
            BoundListener::Udp(s) => vec![(Transport::Udp, s.local_addr()?)],
            BoundListener::Tcp(l, None) => vec![(Transport::Tcp, l.local_addr()?)],
            BoundListener::Tcp(l, Some(_)) => {
                let a = l.local_addr()?;
                vec![(Transport::Tcp, a), (Transport::Tls, a)]
            }
            BoundListener::Tls(l, _) => vec![(Transport::Tls, l.local_addr()?)],
        })
    }
}

/// The first byte of a TLS connection: a handshake record (RFC 8446 §5.1, content type 22).
/// A STUN message's first byte holds method bits M11–M7 and class bit C1 (RFC 8489 §5); every
/// method a TURN client sends (Binding 0x001, Allocate 0x003 to ChannelBind 0x009) is below
/// 0x080, so that byte is 0x00 or 0x01; ChannelData starts with 0x40–0x7F (RFC 8656 §12.4).
/// Neither can be mistaken for TLS, so one TCP port serves plain and TLS clients alike.
pub use crate::net::tls::TLS_HANDSHAKE;

/// Hooks the daemon gives the driver.
pub struct RelayOptions {
    /// How long to keep relaying after a shutdown request.
    pub drain: Duration,
    /// Called on SIGHUP (and by tests) to re-read credentials; `None` to keep them.
    pub reload: Option<Box<dyn Fn() -> Option<Credentials>>>,
    /// Reads the host's own addresses (the peer policy refuses them): called on SIGHUP and
    /// whenever the kernel reports an address added or removed ([`crate::net::addr_watch`]).
    pub own_addresses: Option<Box<dyn Fn() -> Vec<std::net::IpAddr>>>,
    /// Rewritten with the Prometheus text every second (the metrics endpoint serves it).
    pub metrics: Option<Arc<std::sync::Mutex<String>>>,
    /// Credentials replaced while running (supernode secrets rotating).
    pub updates: Option<mpsc::Receiver<Credentials>>,
    /// Where the live allocation count is published (the relay's load for supernodes).
    pub load: Option<Arc<std::sync::atomic::AtomicU32>>,
}

/// Largest stream message (STUN or ChannelData) accepted from a TCP/TLS client.
const MAX_STREAM_MESSAGE: usize = 65_536 + 4;
/// How long a stream client may take over one message, its first included (from its first
/// byte, or from the connection's start: trickling bytes does not extend it).
const STREAM_PROMPT: Duration = Duration::from_secs(10);
/// Messages queued for one stream client before peer data is dropped (backpressure).
const STREAM_QUEUE: usize = 256;
/// Full batches a relayed socket reads per wakeup before letting the other tasks run.
const RELAY_ROUNDS: usize = 4;

type StreamTx = mpsc::Sender<Vec<u8>>;

/// A UDP listener and the batch of datagrams waiting to go out of it.
struct UdpListener {
    local: SocketAddr,
    sock: Rc<UdpSocket>,
    batch: RefCell<SendBatch>,
}

/// An allocation's relayed socket and the task that reads it.
struct Relay {
    id: AllocId,
    sock: Rc<UdpSocket>,
    task: JoinHandle<()>,
}

struct Shared {
    core: RefCell<TurnServer>,
    /// UDP listeners, each with its pending send batch: a short list searched by local address
    /// (a relay has one or two, and the search runs for every datagram sent to a client).
    udp: Vec<UdpListener>,
    /// Stream clients by connection id.
    streams: RefCell<HashMap<u64, StreamTx>>,
    /// Open stream connections (TLS handshakes included) per source, and the caps: a
    /// connection holds a task and a descriptor before it has allocated anything, so the
    /// allocation quotas bound connections too.
    stream_sources: RefCell<HashMap<std::net::IpAddr, u32>>,
    stream_total: std::cell::Cell<usize>,
    stream_caps: (usize, u32),
    /// Relayed sockets, indexed by allocation index: the core reuses freed indexes, so this is
    /// as dense as its own slot table, and finding a socket costs no hashing on the per-packet
    /// path.
    relays: RefCell<Vec<Option<Relay>>>,
    /// Receive buffer shared by every relayed socket (used only synchronously).
    rx: RefCell<RecvBatch>,
    /// Scratch buffer for the core's output.
    out: RefCell<Vec<u8>>,
    flush: Notify,
    /// Wakes the timer task when the core may have an earlier deadline.
    timer: Notify,
    /// How long each batch of client datagrams took, from receipt to the last one handled
    /// (one clock read per batch, not per packet).
    batch_latency: RefCell<crate::net::prom::Histogram>,
}

impl Shared {
    /// Sends `out[..len]` to a client: UDP goes into its listener's batch (flushed soon),
    /// streams into the connection's queue.
    fn to_client(&self, to: ClientAddr, bytes: &[u8]) {
        match to.transport {
            Transport::Udp => {
                let Some(UdpListener { sock, batch, .. }) =
                    self.udp.iter().find(|l| l.local == to.local)
                else {
                    return;
                };
                let mut batch = batch.borrow_mut();
                if batch.is_full() {
                    batch.flush(&**sock);
                }
                if let Some(slot) = batch.slot() {
                    slot.extend_from_slice(bytes);
                    batch.commit(to.remote);
                }
                self.flush.notify_one();
            }
            Transport::Tcp | Transport::Tls => {
                if let Some(tx) = self.streams.borrow().get(&to.conn) {
                    // A full queue means a slow reader: drop rather than buffer without bound.
                    let _ = tx.try_send(bytes.to_vec());
                }
            }
        }
    }

    /// Acts on what the core said about a client message (`input` is that message).
    fn act(self: &Rc<Self>, now: Instant, mut action: ClientAction, input: &[u8]) {
        loop {
            match action {
                ClientAction::None => return,
                ClientAction::ToClient { to, len } => {
                    let out = self.out.borrow();
                    self.to_client(to, &out[..len]);
                    return;
                }
                ClientAction::ToPeer { id, peer, data } => {
                    let relays = self.relays.borrow();
                    if let Some(Some(Relay { id: rid, sock, .. })) = relays.get(id.index as usize)
                        && *rid == id
                    {
                        // Best effort, like any UDP forwarder: a full send buffer drops it.
                        let _ = sock.try_send_to(&input[data], peer);
                    }
                    return;
                }
                ClientAction::Bind { pending, id, addr } => {
                    let result = match bind_relay(addr) {
                        Ok(sock) => {
                            let sock = Rc::new(sock);
                            let task = tokio::task::spawn_local(relay_task(
                                self.clone(),
                                id,
                                sock.clone(),
                            ));
                            let mut relays = self.relays.borrow_mut();
                            let i = id.index as usize;
                            if relays.len() <= i {
                                relays.resize_with(i + 1, || None);
                            }
                            if let Some(old) = relays[i].replace(Relay { id, sock, task }) {
                                old.task.abort();
                            }
                            Ok(())
                        }
                        Err(e) => Err(e.kind()),
                    };
                    let mut out = self.out.borrow_mut();
                    action = self
                        .core
                        .borrow_mut()
                        .relay_bound(now, pending, result, &mut out);
                    drop(out);
                    self.timer.notify_one();
                }
            }
        }
    }

    /// Closes the relayed sockets of released allocations. During a drain, wakes the main loop
    /// when one was released: it may have been the last, and then the relay stops at once.
    fn reap(&self) {
        let mut core = self.core.borrow_mut();
        let draining = core.draining().is_some();
        while let Some(Event::Released {
            id,
            relay,
            username,
            client,
            since,
            to_peer_bytes,
            to_client_bytes,
        }) = core.poll_event()
        {
            // One line per allocation end, as coturn logs a session's end: who, from where,
            // how much each way, how long.
            tracing::info!(
                "allocation ended: user={username} client={}:{} relay={relay} to_peer_bytes={to_peer_bytes} to_client_bytes={to_client_bytes} duration={:.1}s",
                format!("{:?}", client.transport).to_lowercase(),
                client.remote,
                since.elapsed().as_secs_f64()
            );
            if draining {
                self.timer.notify_one();
            }
            let mut relays = self.relays.borrow_mut();
            if let Some(slot) = relays.get_mut(id.index as usize)
                && slot.as_ref().is_some_and(|r| r.id == id)
                && let Some(r) = slot.take()
            {
                r.task.abort();
            }
        }
    }
}

fn bind_relay(addr: SocketAddr) -> io::Result<UdpSocket> {
    let std = {
        let domain = if addr.is_ipv4() {
            socket2::Domain::IPV4
        } else {
            socket2::Domain::IPV6
        };
        let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        std::net::UdpSocket::from(s)
    };
    UdpSocket::from_std(std)
}

/// Serves until `shutdown` fires, then drains: returns once the last allocation is gone, or
/// after `options.drain` at the latest (at once when there is none).
pub async fn serve_relay(
    core: TurnServer,
    listeners: Vec<BoundListener>,
    options: RelayOptions,
    mut shutdown: Shutdown,
) -> io::Result<()> {
    let mut udp = Vec::new();
    let mut streams = Vec::new();
    for l in listeners {
        match l {
            BoundListener::Udp(s) => {
                let addr = s.local_addr()?;
                udp.push(UdpListener {
                    local: addr,
                    sock: Rc::new(s),
                    batch: RefCell::new(SendBatch::default()),
                });
            }
            other => streams.push(other),
        }
    }
    let stream_caps = (
        core.config().total_quota as usize,
        core.config().source_quota,
    );
    let shared = Rc::new(Shared {
        core: RefCell::new(core),
        udp,
        streams: RefCell::new(HashMap::new()),
        stream_sources: RefCell::new(HashMap::new()),
        stream_total: std::cell::Cell::new(0),
        stream_caps,
        relays: RefCell::new(Vec::new()),
        rx: RefCell::new(RecvBatch::default()),
        out: RefCell::new(Vec::with_capacity(2048)),
        flush: Notify::new(),
        timer: Notify::new(),
        batch_latency: RefCell::new(crate::net::prom::Histogram::default()),
    });
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let mut tasks = Vec::new();
            for UdpListener { local: addr, sock, .. } in &shared.udp {
                tasks.push(tokio::task::spawn_local(udp_listener(shared.clone(), *addr, sock.clone())));
            }
            let next_conn = Rc::new(RefCell::new(1u64));
            for l in streams {
                tasks.push(tokio::task::spawn_local(stream_listener(shared.clone(), l, next_conn.clone())));
            }
            tasks.push(tokio::task::spawn_local(flusher(shared.clone())));
            let metrics = options.metrics.clone();
            let reload = options.reload;
            let own_addresses = options.own_addresses;
            let mut addr_watch = match own_addresses {
                Some(_) => match crate::net::addr_watch::AddrWatch::new() {
                    Ok(w) => Some(w),
                    Err(e) => {
                        tracing::warn!("cannot watch the host's addresses (re-read on SIGHUP only): {e}");
                        None
                    }
                },
                None => None,
            };
            let reread_own = |shared: &Shared| {
                if let Some(f) = &own_addresses {
                    let own = f();
                    tracing::info!("the host's own addresses re-read: {}", own.len());
                    shared.core.borrow_mut().set_own_addresses(own);
                }
            };
            let load = options.load.clone();
            let mut updates = options.updates;
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                let deadline = shared.core.borrow().poll_timeout();
                let sleep = crate::net::sleep_until(deadline);
                let draining = shared.core.borrow().draining().is_some();
                tokio::select! {
                    _ = sleep => {}
                    _ = shared.timer.notified() => {}
                    _ = tick.tick(), if metrics.is_some() || load.is_some() => {}
                    Some(creds) = async { match updates.as_mut() { Some(u) => u.recv().await, None => std::future::pending().await } } => {
                        shared.core.borrow_mut().set_credentials(creds);
                    }
                    _ = shutdown.wait(), if !draining => {
                        let until = Instant::now() + options.drain;
                        tracing::info!("draining for {:?}", options.drain);
                        shared.core.borrow_mut().start_drain(until);
                    }
                    Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                        if let Some(creds) = reload.as_ref().and_then(|f| f()) {
                            tracing::info!("credentials reloaded");
                            shared.core.borrow_mut().set_credentials(creds);
                        }
                        reread_own(&shared);
                    }
                    r = async { match addr_watch.as_mut() { Some(w) => w.changed().await, None => std::future::pending().await } } => {
                        match r {
                            Ok(()) => reread_own(&shared),
                            Err(e) => {
                                tracing::warn!("lost the watch on the host's addresses (re-read on SIGHUP only): {e}");
                                addr_watch = None;
                            }
                        }
                    }
                }
                shared.core.borrow_mut().handle_timeout(Instant::now());
                shared.reap();
                if let Some(l) = &load {
                    l.store(shared.core.borrow().allocations() as u32, std::sync::atomic::Ordering::Relaxed);
                }
                if let Some(m) = &metrics
                    && let Ok(mut text) = m.lock()
                {
                    *text = render_metrics(&shared);
                }
                if shared.core.borrow().drained() {
                    break;
                }
            }
            for t in tasks {
                t.abort();
            }
            for r in shared.relays.borrow_mut().drain(..).flatten() {
                r.task.abort();
            }
            Ok(())
        })
        .await
}

/// Renders the core's counters and the driver's gauges as Prometheus text.
fn render_metrics(shared: &Shared) -> String {
    let core = shared.core.borrow();
    let c = core.counters();
    let mut s = crate::net::prom::Snapshot::default();
    s.build_info("relayd");
    s.level(
        "voxmesh_turn_allocations_active",
        "Live allocations.",
        core.allocations() as i64,
    );
    let sockets = shared.relays.borrow().iter().flatten().count() as i64;
    s.level(
        "voxmesh_turn_relayed_sockets",
        "Open relayed UDP sockets (one per allocation).",
        sockets,
    );
    s.count(
        "voxmesh_turn_allocations_total",
        "Allocations made since start.",
        c.allocations_total,
    );
    s.counter(
        "voxmesh_turn_packets_total",
        "Packets relayed, by direction (internal: between two allocations of this relay).",
        Some("direction"),
        [
            ("to_peer", c.to_peer_packets),
            ("to_client", c.to_client_packets),
            ("internal", c.internal_packets),
        ],
    );
    s.counter(
        "voxmesh_turn_bytes_total",
        "Payload bytes relayed, by direction.",
        Some("direction"),
        [
            ("to_peer", c.to_peer_bytes),
            ("to_client", c.to_client_bytes),
        ],
    );
    s.counter(
        "voxmesh_turn_auth_total",
        "Authentication outcomes other than success.",
        Some("result"),
        [
            ("challenge", c.auth_challenges),
            ("failure", c.auth_failures),
            ("stale_nonce", c.auth_stale_nonce),
            ("rate_limited", c.auth_rate_limited),
        ],
    );
    // Labelled by reason or code, sorted so scrapes compare line by line.
    fn sorted<K: Ord + Copy>(m: &std::collections::HashMap<K, u64>) -> Vec<(K, u64)> {
        let mut v: Vec<_> = m.iter().map(|(k, n)| (*k, *n)).collect();
        v.sort();
        v
    }
    s.counter(
        "voxmesh_turn_dropped_total",
        "Messages dropped without an answer, by reason.",
        Some("reason"),
        sorted(&c.drops),
    );
    s.counter(
        "voxmesh_turn_peer_refused_total",
        "Permissions or sends refused for the peer's address, by reason.",
        Some("reason"),
        sorted(&c.peer_refusals),
    );
    s.counter(
        "voxmesh_turn_errors_total",
        "Error responses sent, by STUN error code.",
        Some("code"),
        sorted(&c.errors),
    );
    s.histogram(
        "voxmesh_turn_udp_batch_seconds",
        "Time to handle one batch of client datagrams read together over UDP.",
        &shared.batch_latency.borrow(),
    );
    s.render()
}

/// Receives one batch from `sock`, which must have been reported readable. `Ok(true)` when the
/// batch came back short: the kernel queue was empty, so tokio's readiness is cleared now
/// rather than after one more `recvmmsg` that would only say `WouldBlock`. That is safe because
/// tokio registers sockets edge-triggered: a datagram arriving after this read raises a new
/// event. Under light load (one datagram per wakeup, voice traffic) it saves a system call per
/// wakeup.
fn recv_batch(sock: &UdpSocket, rx: &mut RecvBatch) -> io::Result<bool> {
    let mut short = false;
    let r = sock.try_io(Interest::READABLE, || {
        short = rx.try_recv(sock)? < BATCH;
        if short {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match r {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && short => Ok(true),
        Err(e) => Err(e),
    }
}

async fn udp_listener(shared: Rc<Shared>, local: SocketAddr, sock: Rc<UdpSocket>) {
    let mut rx = RecvBatch::default();
    loop {
        let received = match sock.readable().await {
            Ok(()) => recv_batch(&sock, &mut rx),
            Err(e) => Err(e),
        };
        match received {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => {
                tokio::task::yield_now().await;
                continue;
            }
        }
        let now = Instant::now();
        for d in rx.iter() {
            if d.truncated {
                // Larger than any message we take: counted like every other drop.
                shared.core.borrow_mut().count_drop("oversized");
                continue;
            }
            let from = ClientAddr {
                transport: Transport::Udp,
                remote: d.from,
                local,
                conn: 0,
            };
            let action = {
                let mut out = shared.out.borrow_mut();
                shared
                    .core
                    .borrow_mut()
                    .handle_client(now, from, d.data, &mut out)
            };
            shared.act(now, action, d.data);
        }
        shared.batch_latency.borrow_mut().observe(now.elapsed());
        shared.reap();
        flush_all(&shared);
    }
}

fn flush_all(shared: &Shared) {
    for UdpListener { sock, batch, .. } in &shared.udp {
        let mut b = batch.borrow_mut();
        if !b.is_empty() {
            b.flush(&**sock);
        }
    }
}

/// Flushes the UDP send batches once the relay tasks woken in this turn have run.
///
/// No yield is needed for that: the `LocalSet` runs the tasks it has on its thread in the order
/// they were woken, so when the first relay task of a turn notifies the flusher, the flusher
/// queues behind every relay task the I/O driver woke with it. (A `yield_now` here would cost
/// an extra zero-timeout `epoll_wait` per flush: deferred wakeups wait for the driver.)
async fn flusher(shared: Rc<Shared>) {
    loop {
        shared.flush.notified().await;
        flush_all(&shared);
    }
}

async fn relay_task(shared: Rc<Shared>, id: AllocId, sock: Rc<UdpSocket>) {
    loop {
        if sock.readable().await.is_err() {
            return;
        }
        let now = Instant::now();
        for _ in 0..RELAY_ROUNDS {
            let mut rx = shared.rx.borrow_mut();
            let Ok(drained) = recv_batch(&sock, &mut rx) else {
                break;
            };
            for d in rx.iter() {
                if d.truncated {
                    shared.core.borrow_mut().count_drop("oversized");
                    continue;
                }
                let mut out = shared.out.borrow_mut();
                let action = shared
                    .core
                    .borrow_mut()
                    .handle_peer(now, id, d.from, d.data, &mut out);
                if let PeerAction::ToClient { to, len } = action {
                    shared.to_client(to, &out[..len]);
                }
            }
            if drained {
                break;
            }
        }
    }
}

async fn stream_listener(shared: Rc<Shared>, listener: BoundListener, next_conn: Rc<RefCell<u64>>) {
    // `sniff`: a plain TCP listener that takes TLS too, decided per connection.
    let (tcp, tls, sniff) = match listener {
        BoundListener::Tcp(l, a) => {
            let sniff = a.is_some();
            (l, a, sniff)
        }
        BoundListener::Tls(l, a) => (l, Some(a), false),
        BoundListener::Udp(_) => return,
    };
    let Ok(local) = tcp.local_addr() else { return };
    loop {
        let Ok((stream, remote)) = tcp.accept().await else {
            tokio::task::yield_now().await;
            continue;
        };
        let Some(slot) = StreamSlot::take(&shared, remote.ip()) else {
            shared.core.borrow_mut().count_drop("stream_limit");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = {
            let mut n = next_conn.borrow_mut();
            *n += 1;
            *n
        };
        let mut client = ClientAddr {
            transport: Transport::Tcp,
            remote,
            local,
            conn,
        };
        let shared = shared.clone();
        let acceptor = tls.clone();
        tokio::task::spawn_local(async move {
            let _slot = slot;
            // The handshake, and on a shared port the first byte, count against the same
            // prompt limit as a first message.
            let deadline = tokio::time::Instant::now() + STREAM_PROMPT;
            let is_tls = match (&acceptor, sniff) {
                (None, _) => false,
                (Some(_), false) => true,
                (Some(_), true) => {
                    let mut first = [0u8; 1];
                    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
                        Ok(Ok(1)) => first[0] == TLS_HANDSHAKE,
                        _ => return,
                    }
                }
            };
            match acceptor.filter(|_| is_tls) {
                None => stream_conn(shared, client, stream).await,
                Some(acceptor) => {
                    client.transport = Transport::Tls;
                    let handshake =
                        tokio::time::timeout_at(deadline, acceptor.accept(stream)).await;
                    if let Ok(Ok(s)) = handshake {
                        stream_conn(shared, client, s).await;
                    }
                }
            }
        });
    }
}

/// A stream connection's place under the caps, given back when dropped.
struct StreamSlot {
    shared: Rc<Shared>,
    source: std::net::IpAddr,
}

impl StreamSlot {
    fn take(shared: &Rc<Shared>, ip: std::net::IpAddr) -> Option<StreamSlot> {
        let source = crate::turn::auth::source_key(ip);
        let mut sources = shared.stream_sources.borrow_mut();
        let total = shared.stream_total.get();
        let (max_total, max_source) = shared.stream_caps;
        let n = sources.entry(source).or_default();
        if total >= max_total || *n >= max_source {
            if *n == 0 {
                sources.remove(&source);
            }
            return None;
        }
        *n += 1;
        shared.stream_total.set(total + 1);
        Some(StreamSlot {
            shared: shared.clone(),
            source,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let total = &self.shared.stream_total;
        total.set(total.get() - 1);
        let mut sources = self.shared.stream_sources.borrow_mut();
        if let Some(n) = sources.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                sources.remove(&self.source);
            }
        }
    }
}

/// One TCP or TLS client: frames in, responses and peer data out.
async fn stream_conn<S>(shared: Rc<Shared>, client: ClientAddr, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rxq) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
    shared.streams.borrow_mut().insert(client.conn, tx);
    let writer = tokio::task::spawn_local(async move {
        while let Some(m) = rxq.recv().await {
            if wr.write_all(&m).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 4096];
    let mut have = 0;
    // A connection must send its first message promptly, finish every message it starts
    // promptly, and never go silent for longer than an allocation could live: a slow or silent
    // client cannot hold a task, a descriptor and up to 64 KiB of buffer for an hour.
    let idle = Duration::from_secs(3700);
    // When the message now being received began (the connection's start, for the first one);
    // `None` between messages.
    let mut started = Some(tokio::time::Instant::now());
    loop {
        let mut consumed = false;
        // Cut every complete frame out of the buffer.
        loop {
            let need = if have >= 1 && channel::is_channel_data(buf[0]) {
                channel::framed_len(&buf[..have])
            } else {
                crate::stun::framed_len(&buf[..have])
            };
            let Some(need) = need else {
                if have >= 4 {
                    // Neither STUN nor ChannelData: the stream is garbage; drop the client.
                    return close_stream(&shared, client, writer);
                }
                break;
            };
            if need > MAX_STREAM_MESSAGE {
                return close_stream(&shared, client, writer);
            }
            if need > buf.len() {
                buf.resize(need, 0);
            }
            if have < need {
                break;
            }
            let now = Instant::now();
            let msg = buf[..need].to_vec();
            let action = {
                let mut out = shared.out.borrow_mut();
                // A padded ChannelData frame: the core reads the length field, padding is ignored.
                shared
                    .core
                    .borrow_mut()
                    .handle_client(now, client, &msg, &mut out)
            };
            shared.act(now, action, &msg);
            buf.copy_within(need..have, 0);
            have -= need;
            consumed = true;
        }
        let now = tokio::time::Instant::now();
        if consumed || started.is_none() {
            started = (have > 0).then_some(now);
        }
        if have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let until = started.map_or(now + idle, |t| t + STREAM_PROMPT);
        let n = match tokio::time::timeout_at(until, rd.read(&mut buf[have..])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return close_stream(&shared, client, writer),
            Ok(Ok(n)) => n,
        };
        have += n;
    }
}

fn close_stream(shared: &Shared, client: ClientAddr, writer: JoinHandle<()>) {
    shared.streams.borrow_mut().remove(&client.conn);
    shared.core.borrow_mut().connection_closed(&client);
    shared.reap();
    writer.abort();
}

/// Binds the listeners of `spec`. `tls:` needs `tls`; [`Listen::All`] serves TLS too when it
/// is given. Errors name the address that could not be bound.
pub fn bind_listeners(
    spec: &[Listen],
    tls: Option<Arc<rustls::ServerConfig>>,
) -> io::Result<Vec<BoundListener>> {
    fn named(a: SocketAddr, what: &'static str) -> impl Fn(io::Error) -> io::Error {
        move |e| io::Error::new(e.kind(), format!("{what} {a}: {e}"))
    }
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut out = Vec::new();
    for l in spec {
        let a = l.addr();
        match l {
            Listen::Udp(a) => out.push(BoundListener::Udp(bind_udp(*a).map_err(named(*a, "udp"))?)),
            Listen::Tcp(a) => out.push(BoundListener::Tcp(
                bind_tcp(*a).map_err(named(*a, "tcp"))?,
                None,
            )),
            Listen::Tls(a) => {
                let acceptor = acceptor
                    .clone()
                    .ok_or_else(|| io::Error::other("a TLS listener needs --cert and --key"))?;
                out.push(BoundListener::Tls(
                    bind_tcp(*a).map_err(named(*a, "tls"))?,
                    acceptor,
                ))
            }
            Listen::All(_) => {
                let (udp, tcp) = bind_same_port(
                    a.port() == 0,
                    SAME_PORT_ATTEMPTS,
                    || bind_udp_std(a),
                    |u| {
                        let at =
                            SocketAddr::new(a.ip(), u.local_addr().map_err(|e| (a, e))?.port());
                        bind_tcp_std(at).map_err(|e| (at, e))
                    },
                )
                .map_err(|e| match e {
                    SamePortError::Udp(e) => named(a, "udp")(e),
                    SamePortError::Tcp { addr, source } => named(addr, "tcp")(source),
                })?;
                out.push(BoundListener::Udp(UdpSocket::from_std(udp)?));
                out.push(BoundListener::Tcp(
                    TcpListener::from_std(tcp)?,
                    acceptor.clone(),
                ));
            }
        }
    }
    Ok(out)
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_tcp_std(addr)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_cannot_be_mistaken_for_stun_or_channel_data() {
        use crate::stun::{Class, MessageBuilder, TransactionId, method};
        assert!(!crate::turn::channel::is_channel_data(TLS_HANDSHAKE));
        for m in [
            method::BINDING,
            method::ALLOCATE,
            method::REFRESH,
            method::SEND,
            method::DATA,
            method::CREATE_PERMISSION,
            method::CHANNEL_BIND,
        ] {
            for class in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                let mut msg = Vec::new();
                MessageBuilder::new(&mut msg, m, class, TransactionId::random()).finish();
                assert!(msg[0] <= 0x01, "method {m:#x}: first byte {:#x}", msg[0]);
                assert_ne!(msg[0], TLS_HANDSHAKE);
            }
        }
    }
}
