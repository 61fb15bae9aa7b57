//! The tokio driver for [`crate::turn::TurnClient`]: a relay allocation over UDP, TCP or TLS,
//! with async operations. (The call layer drives the same core on its single UDP socket; this
//! driver is for programs that want a relay on a socket of its own.)

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};

use crate::turn::channel;
use crate::turn::client::{Op, TurnClient, TurnClientConfig, TurnEvent};

/// How to reach the TURN server.
#[derive(Clone)]
pub enum TurnTransport {
    Udp,
    Tcp,
    /// TLS, verifying the server against `roots` for `server_name`.
    Tls {
        server_name: String,
        roots: Arc<rustls::RootCertStore>,
    },
}

/// Why a relay operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot reach the TURN server: {0}")]
    Connect(#[source] io::Error),
    #[error("TLS with the TURN server failed: {0}")]
    Tls(#[source] io::Error),
    /// The server answered with an error (code 0: no answer at all).
    #[error("{op:?} failed: {code} {reason}")]
    Refused { op: Op, code: u16, reason: String },
    #[error("the server redirected us to {0} (300 ALTERNATE-SERVER)")]
    Alternate(SocketAddr),
    #[error("the relay connection closed")]
    Closed,
    #[error("{0}")]
    Send(#[from] crate::turn::SendError),
}

enum Cmd {
    Permission(SocketAddr, oneshot::Sender<Result<(), RelayError>>),
    Channel(SocketAddr, oneshot::Sender<Result<u16, RelayError>>),
    Send(SocketAddr, Vec<u8>, oneshot::Sender<Result<(), RelayError>>),
    Release(oneshot::Sender<()>),
}

/// A live allocation on a TURN server.
pub struct TurnRelay {
    relayed: SocketAddr,
    mapped: Option<SocketAddr>,
    cmd: mpsc::Sender<Cmd>,
    data: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
}

enum Conn {
    Udp(UdpSocket),
    Stream(Box<dyn AsyncReadWrite>),
}

trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

impl TurnRelay {
    /// Connects, authenticates and allocates; fails after `timeout`.
    pub async fn allocate(
        mut config: TurnClientConfig,
        transport: TurnTransport,
        timeout: Duration,
    ) -> Result<TurnRelay, RelayError> {
        let server = config.server;
        let conn = match &transport {
            TurnTransport::Udp => {
                let any: SocketAddr = if server.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let s = UdpSocket::bind(any).await.map_err(RelayError::Connect)?;
                s.connect(server).await.map_err(RelayError::Connect)?;
                Conn::Udp(s)
            }
            TurnTransport::Tcp => {
                config.stream = true;
                let s = tokio::time::timeout(timeout, TcpStream::connect(server))
                    .await
                    .map_err(|_| RelayError::Connect(io::ErrorKind::TimedOut.into()))?
                    .map_err(RelayError::Connect)?;
                let _ = s.set_nodelay(true);
                Conn::Stream(Box::new(s))
            }
            TurnTransport::Tls { server_name, roots } => {
                config.stream = true;
                let s = tokio::time::timeout(timeout, TcpStream::connect(server))
                    .await
                    .map_err(|_| RelayError::Connect(io::ErrorKind::TimedOut.into()))?
                    .map_err(RelayError::Connect)?;
                let _ = s.set_nodelay(true);
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| RelayError::Tls(io::Error::other(e)))?
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth();
                let name = rustls_pki_types::ServerName::try_from(server_name.clone())
                    .map_err(|e| RelayError::Tls(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
                let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
                let s = tokio::time::timeout(timeout, connector.connect(name, s))
                    .await
                    .map_err(|_| RelayError::Tls(io::ErrorKind::TimedOut.into()))?
                    .map_err(RelayError::Tls)?;
                Conn::Stream(Box::new(s))
            }
        };
        let mut core = TurnClient::new(config);
        core.allocate(Instant::now());
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (data_tx, data_rx) = mpsc::channel(1024);
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(run(core, conn, cmd_rx, data_tx, ready_tx));
        let (relayed, mapped) = tokio::time::timeout(timeout, ready_rx)
            .await
            .map_err(|_| RelayError::Refused {
                op: Op::Allocate,
                code: 0,
                reason: "timed out".into(),
            })?
            .map_err(|_| RelayError::Closed)??;
        Ok(TurnRelay {
            relayed,
            mapped,
            cmd: cmd_tx,
            data: data_rx,
        })
    }

    /// The relayed transport address peers send to.
    pub fn relayed(&self) -> SocketAddr {
        self.relayed
    }

    /// Our address as the server saw it.
    pub fn mapped(&self) -> Option<SocketAddr> {
        self.mapped
    }

    pub async fn create_permission(&self, peer: SocketAddr) -> Result<(), RelayError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Permission(peer, tx))
            .await
            .map_err(|_| RelayError::Closed)?;
        rx.await.map_err(|_| RelayError::Closed)?
    }

    pub async fn bind_channel(&self, peer: SocketAddr) -> Result<u16, RelayError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Channel(peer, tx))
            .await
            .map_err(|_| RelayError::Closed)?;
        rx.await.map_err(|_| RelayError::Closed)?
    }

    /// Sends `data` to `peer` through the relay.
    pub async fn send_to(&self, peer: SocketAddr, data: &[u8]) -> Result<(), RelayError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Send(peer, data.to_vec(), tx))
            .await
            .map_err(|_| RelayError::Closed)?;
        rx.await.map_err(|_| RelayError::Closed)?
    }

    /// The next datagram a peer sent us; `None` once the relay is gone.
    pub async fn recv(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.data.recv().await
    }

    /// Deletes the allocation (Refresh with lifetime 0) and waits for the answer (bounded).
    pub async fn release(self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Release(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }
}

type Ready = oneshot::Sender<Result<(SocketAddr, Option<SocketAddr>), RelayError>>;

enum Waiter {
    Permission(std::net::IpAddr, oneshot::Sender<Result<(), RelayError>>),
    Channel(SocketAddr, oneshot::Sender<Result<u16, RelayError>>),
    Release(oneshot::Sender<()>),
}

async fn run(
    mut core: TurnClient,
    mut conn: Conn,
    mut cmds: mpsc::Receiver<Cmd>,
    data: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    ready: Ready,
) {
    let mut ready = Some(ready);
    let mut waiters: Vec<Waiter> = Vec::new();
    let mut buf = vec![0u8; 70_000];
    let mut have = 0usize;
    loop {
        // Send what the core wants sent.
        // (The socket is connected to the core's one server, where every transmit goes.)
        while let Some(t) = core.poll_transmit() {
            let r = match &mut conn {
                Conn::Udp(s) => s.send(&t.data).await.map(|_| ()),
                Conn::Stream(s) => s.write_all(&t.data).await,
            };
            if r.is_err() && matches!(conn, Conn::Stream(_)) {
                return;
            }
        }
        // Tell waiters what happened.
        while let Some(ev) = core.poll_event() {
            match ev {
                TurnEvent::Allocated {
                    relayed, mapped, ..
                } => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ok((relayed, mapped)));
                    }
                }
                TurnEvent::PermissionCreated(ip) => resolve(
                    &mut waiters,
                    |w| matches!(w, Waiter::Permission(i, _) if *i == ip),
                    |w| {
                        if let Waiter::Permission(_, tx) = w {
                            let _ = tx.send(Ok(()));
                        }
                    },
                ),
                TurnEvent::ChannelBound { peer, channel } => resolve(
                    &mut waiters,
                    |w| matches!(w, Waiter::Channel(p, _) if *p == peer),
                    |w| {
                        if let Waiter::Channel(_, tx) = w {
                            let _ = tx.send(Ok(channel));
                        }
                    },
                ),
                TurnEvent::Released => resolve(
                    &mut waiters,
                    |w| matches!(w, Waiter::Release(_)),
                    |w| {
                        if let Waiter::Release(tx) = w {
                            let _ = tx.send(());
                        }
                    },
                ),
                TurnEvent::TryAlternate(alt) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(RelayError::Alternate(alt)));
                    }
                }
                TurnEvent::Failed { op, code, reason } => {
                    let err = || RelayError::Refused {
                        op,
                        code,
                        reason: reason.clone(),
                    };
                    match op {
                        Op::Allocate => {
                            if let Some(r) = ready.take() {
                                let _ = r.send(Err(err()));
                            }
                        }
                        Op::CreatePermission => resolve_first(
                            &mut waiters,
                            |w| matches!(w, Waiter::Permission(..)),
                            |w| {
                                if let Waiter::Permission(_, tx) = w {
                                    let _ = tx.send(Err(err()));
                                }
                            },
                        ),
                        Op::ChannelBind => resolve_first(
                            &mut waiters,
                            |w| matches!(w, Waiter::Channel(..)),
                            |w| {
                                if let Waiter::Channel(_, tx) = w {
                                    let _ = tx.send(Err(err()));
                                }
                            },
                        ),
                        Op::Refresh => {}
                    }
                }
                TurnEvent::Refreshed { .. } => {}
            }
        }
        let sleep = crate::net::sleep_until(core.poll_timeout());
        tokio::select! {
            _ = sleep => core.handle_timeout(Instant::now()),
            cmd = cmds.recv() => match cmd {
                None => {
                    core.release(Instant::now());
                    // One best-effort send of the release, then stop.
                    if let Some(t) = core.poll_transmit() {
                        let _ = match &mut conn {
                            Conn::Udp(s) => s.send(&t.data).await.map(|_| ()),
                            Conn::Stream(s) => s.write_all(&t.data).await,
                        };
                    }
                    return;
                }
                Some(Cmd::Permission(peer, tx)) => {
                    core.create_permission(Instant::now(), peer);
                    waiters.push(Waiter::Permission(peer.ip(), tx));
                }
                Some(Cmd::Channel(peer, tx)) => {
                    core.bind_channel(Instant::now(), peer);
                    waiters.push(Waiter::Channel(peer, tx));
                }
                Some(Cmd::Send(peer, payload, tx)) => {
                    let _ = tx.send(core.send_to(peer, &payload).map_err(RelayError::from));
                }
                Some(Cmd::Release(tx)) => {
                    core.release(Instant::now());
                    waiters.push(Waiter::Release(tx));
                }
            },
            got = read_message(&mut conn, &mut buf, &mut have) => match got {
                Ok(Some(len)) => {
                    let now = Instant::now();
                    if let Some(r) = core.handle_input(now, &buf[..len]) {
                        let payload = buf[r.data.clone()].to_vec();
                        // A slow reader loses data rather than stalling the relay's control.
                        let _ = data.try_send((r.peer, payload));
                    }
                    if let Conn::Stream(_) = conn {
                        let frame = frame_len(&buf[..have]).unwrap_or(len);
                        buf.copy_within(frame..have, 0);
                        have -= frame;
                    }
                }
                Ok(None) => {}
                Err(_) => return,
            },
        }
    }
}

fn resolve(waiters: &mut Vec<Waiter>, matches: impl Fn(&Waiter) -> bool, done: impl Fn(Waiter)) {
    let mut i = 0;
    while i < waiters.len() {
        if matches(&waiters[i]) {
            done(waiters.remove(i));
        } else {
            i += 1;
        }
    }
}

fn resolve_first(
    waiters: &mut Vec<Waiter>,
    matches: impl Fn(&Waiter) -> bool,
    done: impl Fn(Waiter),
) {
    if let Some(i) = waiters.iter().position(matches) {
        done(waiters.remove(i));
    }
}

fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.first().is_some_and(|b| channel::is_channel_data(*b)) {
        channel::framed_len(buf)
    } else {
        crate::stun::framed_len(buf)
    }
}

/// Reads one message: a datagram, or one complete frame of the stream (left at the start of
/// `buf`; the caller consumes it). `Ok(None)` when a stream needs more bytes.
async fn read_message(
    conn: &mut Conn,
    buf: &mut [u8],
    have: &mut usize,
) -> io::Result<Option<usize>> {
    match conn {
        Conn::Udp(s) => {
            let n = s.recv(buf).await?;
            Ok(Some(n))
        }
        Conn::Stream(s) => {
            if let Some(need) = frame_len(&buf[..*have])
                && need <= *have
            {
                let len = if channel::is_channel_data(buf[0]) {
                    channel::HEADER + u16::from_be_bytes([buf[2], buf[3]]) as usize
                } else {
                    need
                };
                return Ok(Some(len));
            }
            if *have == buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "oversized frame",
                ));
            }
            let n = s.read(&mut buf[*have..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            *have += n;
            Ok(None)
        }
    }
}
