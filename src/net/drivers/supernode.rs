//! The tokio driver for [`crate::supernode::Supernode`]: voxmesh frames that arrived on the STUN
//! service's primary sockets come in over a channel; frames go out on those same sockets (one
//! socket per family: what clients and other supernodes know us by); timers; a local control
//! socket for `supernoded status`; the host cache file.
//!
//! With the `testing` feature, `run_core` runs the same driver around another `Core` (the lab's
//! echo core: the transport's own cost, which `scripts/bench-supernode` sets the directory's cost
//! against).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot};

use super::client::write_host_cache;
use crate::net::Shutdown;
use crate::session::Transmit;
use crate::supernode::Supernode;

/// The sockets frames leave from.
#[derive(Clone, Default)]
pub struct NodeSockets {
    pub v4: Option<Arc<std::net::UdpSocket>>,
    pub v6: Option<Arc<std::net::UdpSocket>>,
}

impl NodeSockets {
    /// Sends without blocking (the sockets are shared with the STUN threads, which block in
    /// receive): a full send buffer drops the datagram, which the session layer retransmits.
    fn send(&self, to: SocketAddr, data: &[u8]) {
        let sock = if to.is_ipv4() { &self.v4 } else { &self.v6 };
        let Some(s) = sock else { return };
        let addr = socket2::SockAddr::from(to);
        // SAFETY: valid buffer and address for the duration of the call.
        unsafe {
            libc::sendto(
                s.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_DONTWAIT,
                addr.as_ptr().cast(),
                addr.len(),
            );
        }
    }
}

/// A question for the node loop from the control socket.
enum Control {
    Status {
        users: bool,
        reply: oneshot::Sender<String>,
    },
}

/// TCP connections from clients whose UDP is blocked, by the client's TCP address.
type StreamWriters = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

/// Most TCP clients served at once (each holds a connection and two small tasks).
const MAX_STREAMS: usize = 10_000;

/// How long a new connection has to show its first byte, and a TLS one to finish its
/// handshake, before it is closed: a slot is not held for a client that says nothing.
const STREAM_PROMPT: Duration = Duration::from_secs(10);

/// The supernode's stream service, on the TCP side of its UDP addresses: for clients whose
/// network blocks UDP, and with `tls` also for those whose network passes only TLS (told apart
/// per connection by its first byte, [`crate::net::tls::TLS_HANDSHAKE`]).
#[derive(Default)]
pub struct StreamService {
    pub listeners: Vec<TcpListener>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

mod core_trait {
    use super::*;

    /// What the driver loop needs from the core it drives: the supernode (or, for benchmarks, another
    /// core; public with the `testing` feature).
    pub trait Core {
        fn handle_input(&mut self, now: Instant, from: SocketAddr, data: &[u8]);
        fn handle_timeout(&mut self, now: Instant);
        fn poll_timeout(&mut self) -> Option<Instant>;
        fn poll_transmit(&mut self) -> Option<Transmit>;
        fn recycle(&mut self, buf: Vec<u8>);
        /// The answer to `supernoded status` (with the homed users' IDs if `users`).
        fn status(&self, users: bool) -> String;
        /// The mesh members for the host cache.
        fn members(&self) -> Vec<(crate::identity::NodeKey, SocketAddr)>;
        /// Shutting down: say goodbye.
        fn leave(&mut self, now: Instant);
        /// The core's counters and gauges for `/metrics`.
        fn metrics(&self, s: &mut crate::net::prom::Snapshot);
        /// A dial-back probe to send from a socket no client contacted (promotion).
        fn poll_probe(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
            None
        }
    }
}

#[cfg(not(feature = "testing"))]
use core_trait::Core;
#[cfg(feature = "testing")]
pub use core_trait::Core;

impl Core for Supernode {
    fn handle_input(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        Supernode::handle_input(self, now, from, data);
    }
    fn handle_timeout(&mut self, now: Instant) {
        Supernode::handle_timeout(self, now);
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        Supernode::poll_timeout(self)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        Supernode::poll_transmit(self)
    }
    fn recycle(&mut self, buf: Vec<u8>) {
        Supernode::recycle(self, buf);
    }
    fn status(&self, users: bool) -> String {
        let mut v = serde_json::to_value(Supernode::status(self)).unwrap_or_default();
        if users {
            v["users"] = serde_json::json!(
                self.homed_users()
                    .iter()
                    .map(|u| u.to_string())
                    .collect::<Vec<_>>()
            );
        }
        // Plain objects for scripts: members and relays by field name, the session layer's
        // counters by name with its refusals by reason.
        v["members"] = Supernode::members(self)
            .iter()
            .map(|m| serde_json::json!({"id": m.key.id.to_string(), "addr": m.addr}))
            .collect();
        if let Some(relays) = v["relays"].as_array_mut() {
            for r in relays {
                *r = serde_json::json!({"id": r[0], "load": r[1]});
            }
        }
        let mut session = serde_json::Map::new();
        let mut refused = serde_json::Map::new();
        for (k, n) in self.session_counters().iter() {
            match k.strip_prefix("refused_") {
                Some(why) => refused.insert(why.to_string(), n.into()),
                None => session.insert(k, n.into()),
            };
        }
        session.insert("refused".into(), refused.into());
        v["session"] = session.into();
        // The same counters by name (`refused_<reason>` for refusals), for scripts and tests.
        v["session_counters"] = self
            .session_counters()
            .iter()
            .map(|(k, n)| (k, serde_json::json!(n)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        v.to_string()
    }
    fn members(&self) -> Vec<(crate::identity::NodeKey, SocketAddr)> {
        Supernode::members(self)
            .into_iter()
            .map(|m| (m.key, m.addr))
            .collect()
    }
    fn leave(&mut self, now: Instant) {
        Supernode::leave(self, now);
    }
    fn poll_probe(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        Supernode::poll_probe(self)
    }
    fn metrics(&self, s: &mut crate::net::prom::Snapshot) {
        let st = Supernode::status(self);
        let c = &st.counters;
        s.level(
            "voxmesh_supernode_members",
            "Live mesh members, this supernode included.",
            st.members.len() as i64,
        );
        s.gauge(
            "voxmesh_supernode_clients",
            "Clients registered here, by state (standby: registered but not reachable now).",
            Some("state"),
            [
                ("active", st.clients as i64),
                ("standby", st.standby_clients as i64),
            ],
        );
        s.level(
            "voxmesh_supernode_homed_users",
            "Users whose signed records this supernode holds as one of their homes.",
            st.homed_users as i64,
        );
        s.level(
            "voxmesh_supernode_names",
            "Names claimed in this supernode's directory share.",
            st.names as i64,
        );
        s.level(
            "voxmesh_supernode_sessions",
            "Open sessions (clients, members and relays).",
            st.sessions as i64,
        );
        s.level(
            "voxmesh_supernode_relays",
            "Relays that authorised this supernode to hand out their credentials.",
            st.relays.len() as i64,
        );
        s.count(
            "voxmesh_supernode_registrations_total",
            "Registrations accepted.",
            c.registrations,
        );
        s.count(
            "voxmesh_supernode_refreshes_total",
            "Registration refreshes accepted.",
            c.refreshes,
        );
        s.count(
            "voxmesh_supernode_lookups_total",
            "Lookups answered.",
            c.lookups,
        );
        s.count(
            "voxmesh_supernode_routed_total",
            "Signalling messages routed between clients.",
            c.routed,
        );
        s.count(
            "voxmesh_supernode_presence_pushes_total",
            "Presence changes pushed to watchers.",
            c.presence_pushes,
        );
        s.count(
            "voxmesh_supernode_claims_total",
            "Name claims accepted.",
            c.claims,
        );
        s.count(
            "voxmesh_supernode_relay_offers_total",
            "Relay offers (with minted credentials) handed to clients.",
            c.relay_offers,
        );
        let mut refused: Vec<_> = c.refused.iter().map(|(k, n)| (k.clone(), *n)).collect();
        refused.sort();
        s.counter(
            "voxmesh_supernode_refused_total",
            "Directory requests refused, by reason.",
            Some("reason"),
            refused,
        );
        let (mut refusals, mut other) = (Vec::new(), Vec::new());
        for (k, n) in self.session_counters().iter() {
            match k.strip_prefix("refused_") {
                Some(why) => refusals.push((why.to_string(), n)),
                None => other.push((k, n)),
            }
        }
        s.counter(
            "voxmesh_session_refused_total",
            "Session-layer frames refused, by reason.",
            Some("reason"),
            refusals,
        );
        s.counter(
            "voxmesh_session_events_total",
            "Session-layer events (frames, handshakes, cookies, transactions) by kind.",
            Some("event"),
            other,
        );
    }
}

/// Runs the supernode until `shutdown`, then announces its departure to the mesh. Frames from
/// UDP arrive on `frames`; `tcp` (listeners on the same addresses as UDP) takes clients whose
/// UDP is blocked, feeding the same channel through `frames_tx`.
#[allow(clippy::too_many_arguments)]
pub async fn run_supernode(
    core: Supernode,
    frames_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    frames: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    sockets: NodeSockets,
    tcp: StreamService,
    control: Option<UnixListener>,
    host_cache: Option<PathBuf>,
    metrics: Option<Arc<Mutex<String>>>,
    shutdown: Shutdown,
) -> io::Result<()> {
    drive(
        core, frames_tx, frames, sockets, tcp, control, host_cache, metrics, shutdown,
    )
    .await
}

/// Runs any [`Core`] on the supernode's driver until `shutdown`: frames arrive on `frames`
/// from the STUN service's socket threads exactly as they would for the supernode, and leave
/// through `sockets` the same way. For benchmarks (`voxlab sn-load echo-server` runs an echo
/// core on it: the transport's own cost).
#[cfg(feature = "testing")]
pub async fn run_core(
    core: impl Core,
    frames_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    frames: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    sockets: NodeSockets,
    control: Option<UnixListener>,
    shutdown: Shutdown,
) -> io::Result<()> {
    drive(
        core,
        frames_tx,
        frames,
        sockets,
        StreamService::default(),
        control,
        None,
        None,
        shutdown,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    mut core: impl Core,
    frames_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    mut frames: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    sockets: NodeSockets,
    tcp: StreamService,
    control: Option<UnixListener>,
    host_cache: Option<PathBuf>,
    metrics: Option<Arc<Mutex<String>>>,
    mut shutdown: Shutdown,
) -> io::Result<()> {
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Control>(16);
    let ctl_task = control.map(|l| tokio::spawn(serve_control(l, ctl_tx)));
    let writers: StreamWriters = Arc::new(Mutex::new(HashMap::new()));
    let acceptor = tcp.tls.map(tokio_rustls::TlsAcceptor::from);
    let tcp_tasks: Vec<_> = tcp
        .listeners
        .into_iter()
        .map(|l| {
            let (frames, writers) = (frames_tx.clone(), writers.clone());
            tokio::spawn(serve_tcp(l, acceptor.clone(), frames, writers))
        })
        .collect();
    drop(frames_tx);
    let mut save = tokio::time::interval(Duration::from_secs(30));
    // The metrics text is rebuilt once a second here, where the core lives; a scrape copies it.
    let mut refresh = tokio::time::interval(Duration::from_secs(1));
    let mut latency = crate::net::prom::Histogram::default();
    // Dial-back probes leave from sockets of their own (per family, opened on first use): a
    // source port no client ever sent to, so only a host without NAT or filter receives them.
    let mut probe_sockets: HashMap<bool, std::net::UdpSocket> = HashMap::new();
    loop {
        while let Some((to, data)) = core.poll_probe() {
            let sock = match probe_sockets.entry(to.is_ipv4()) {
                std::collections::hash_map::Entry::Occupied(e) => Some(e.into_mut()),
                std::collections::hash_map::Entry::Vacant(e) => {
                    probe_socket(&sockets, to.is_ipv4()).map(|s| e.insert(s))
                }
            };
            if let Some(s) = sock {
                let _ = s.send_to(&data, to);
            }
        }
        while let Some(t) = core.poll_transmit() {
            let stream = writers.lock().ok().and_then(|w| w.get(&t.to).cloned());
            match stream {
                // A full queue drops the frame: the session layer retransmits.
                Some(w) => {
                    let _ = w.try_send(t.data);
                }
                None => {
                    sockets.send(t.to, &t.data);
                    core.recycle(t.data);
                }
            }
        }
        let sleep = crate::net::sleep_until(core.poll_timeout());
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = sleep => core.handle_timeout(Instant::now()),
            f = frames.recv() => match f {
                Some((from, data)) => {
                    let now = Instant::now();
                    core.handle_input(now, from, &data);
                    latency.observe(now.elapsed());
                }
                None => break,
            },
            Some(c) = ctl_rx.recv() => match c {
                Control::Status { users, reply } => {
                    let _ = reply.send(core.status(users));
                }
            },
            _ = refresh.tick(), if metrics.is_some() => {
                let mut s = crate::net::prom::Snapshot::default();
                core.metrics(&mut s);
                s.histogram(
                    "voxmesh_supernode_frame_seconds",
                    "Time the supernode core took over one incoming frame (registrations, \
                     lookups and routing included).",
                    &latency,
                );
                if let Some(m) = &metrics
                    && let Ok(mut text) = m.lock()
                {
                    *text = s.render();
                }
            }
            _ = save.tick() => {
                if let Some(p) = &host_cache {
                    let _ = write_host_cache(p, &core.members());
                }
            }
        }
    }
    core.leave(Instant::now());
    while let Some(t) = core.poll_transmit() {
        sockets.send(t.to, &t.data);
    }
    if let Some(t) = ctl_task {
        t.abort();
    }
    for t in tcp_tasks {
        t.abort();
    }
    Ok(())
}

/// A non-blocking socket on the supernode's own address of that family (the same interface the
/// client reaches), on a port the system picks.
fn probe_socket(sockets: &NodeSockets, v4: bool) -> Option<std::net::UdpSocket> {
    let main = if v4 { &sockets.v4 } else { &sockets.v6 };
    let ip = main.as_ref()?.local_addr().ok()?.ip();
    let s = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).ok()?;
    s.set_nonblocking(true).ok()?;
    Some(s)
}

async fn serve_tcp(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    frames: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    writers: StreamWriters,
) {
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            tokio::task::yield_now().await;
            continue;
        };
        let (tx, rx) = mpsc::channel::<Vec<u8>>(256);
        {
            let Ok(mut w) = writers.lock() else { return };
            if w.len() >= MAX_STREAMS {
                continue; // dropping `stream` closes it
            }
            w.insert(remote, tx);
        }
        let _ = stream.set_nodelay(true);
        let (frames, writers, tls) = (frames.clone(), writers.clone(), tls.clone());
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + STREAM_PROMPT;
            let mut first = [0u8; 1];
            let is_tls = match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
                Ok(Ok(1)) => first[0] == crate::net::tls::TLS_HANDSHAKE,
                _ => false,
            };
            match tls.filter(|_| is_tls) {
                None => serve_stream(stream, remote, rx, &frames).await,
                Some(acceptor) => {
                    if let Ok(Ok(s)) =
                        tokio::time::timeout_at(deadline, acceptor.accept(stream)).await
                    {
                        serve_stream(s, remote, rx, &frames).await;
                    }
                }
            }
            if let Ok(mut w) = writers.lock() {
                w.remove(&remote);
            }
        });
    }
}

/// One client's stream, plain or TLS: frames in to the node, frames out from `out`, until
/// either side ends or it falls silent.
async fn serve_stream<S>(
    stream: S,
    remote: SocketAddr,
    mut out: mpsc::Receiver<Vec<u8>>,
    frames: &mpsc::Sender<(SocketAddr, Vec<u8>)>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    use crate::net::frames::{read_frame, write_frame};
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        while let Some(m) = out.recv().await {
            if write_frame(&mut wr, &m).await.is_err() {
                return;
            }
        }
    });
    let mut buf = Vec::new();
    // The session layer closes idle sessions; a stream silent for longer is dead.
    while let Ok(Ok(Some(()))) =
        tokio::time::timeout(Duration::from_secs(120), read_frame(&mut rd, &mut buf)).await
    {
        if frames.send((remote, buf.clone())).await.is_err() {
            break;
        }
    }
    writer.abort();
}

async fn serve_control(listener: UnixListener, tx: mpsc::Sender<Control>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            let read = tokio::time::timeout(
                Duration::from_secs(5),
                BufReader::new(rd).read_line(&mut line),
            )
            .await;
            if !matches!(read, Ok(Ok(_))) {
                return;
            }
            let users = line.trim() == "status users";
            if !line.trim().starts_with("status") {
                let _ = wr.write_all(b"{\"error\":\"unknown command\"}\n").await;
                return;
            }
            let (reply, rx) = oneshot::channel();
            if tx.send(Control::Status { users, reply }).await.is_err() {
                return;
            }
            if let Ok(Ok(text)) = tokio::time::timeout(Duration::from_secs(5), rx).await {
                let _ = wr.write_all(text.as_bytes()).await;
                let _ = wr.write_all(b"\n").await;
            }
        });
    }
}

/// Asks a running supernode for its status over its control socket.
pub async fn query_status(path: &std::path::Path, users: bool) -> io::Result<serde_json::Value> {
    let mut s = tokio::net::UnixStream::connect(path).await?;
    s.write_all(if users {
        b"status users\n"
    } else {
        b"status\n"
    })
    .await?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        BufReader::new(&mut s).read_line(&mut line),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the supernode did not answer"))??;
    serde_json::from_str(line.trim()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
