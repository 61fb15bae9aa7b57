//! The driver for [`BindingService`]: binds the sockets, moves batches of datagrams between
//! them and the core, stops on shutdown.
//!
//! # One thread per socket, not a tokio task
//!
//! Each socket is served by its own OS thread blocked in `recvmmsg` (`MSG_WAITFORONE`): it sleeps
//! until a datagram arrives, takes whatever else is queued, answers the lot with one `sendmmsg`,
//! and sleeps again. That is two system calls per wakeup. Through tokio the same work costs an
//! `epoll_wait`, a runtime turn and a task poll on top, and at the loads a STUN server mostly
//! sees (requests spread out, one or two per wakeup) the wakeup is nearly all of the cost.
//! The binding service keeps no state between packets, so the threads share nothing but
//! counters.
//!
//! Shutdown: every socket has a short receive timeout (`STOP_POLL`) after which its thread
//! looks at the stop flag, so a stop takes effect within that time without any wakeup channel
//! into a blocked `recvmmsg`.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::demux;
use crate::net::batch::{RecvBatch, SendBatch};
use crate::net::{Shutdown, bind_udp_std};
use crate::supernode::{BindingConfig, BindingCounters, BindingService, Via};

/// How often an idle socket thread looks at the stop flag: the longest a shutdown waits.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Why the STUN service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StunServerError {
    /// Another process holds the port, the address is not local, or binding needs privileges.
    // The cause is not repeated here: it is the error's `source`, and error reports print the
    // chain (`supernoded: cannot bind UDP ADDR: Cannot assign requested address`).
    #[error("cannot bind UDP {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The directory's TCP listener (same address and port as the UDP socket) could not be bound.
    #[error("cannot bind TCP {addr}")]
    BindTcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The metrics listener could not be bound.
    #[error("cannot bind the metrics listener on TCP {addr}")]
    BindMetrics {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// RFC 5780 needs two distinct addresses and two distinct ports.
    #[error("alternate {alt} must differ from {primary} in both address and port")]
    AlternateNotDistinct {
        primary: SocketAddr,
        alt: SocketAddr,
    },
    /// Primary and alternate must be the same family.
    #[error("alternate {alt} is not the same address family as {primary}")]
    FamilyMismatch {
        primary: SocketAddr,
        alt: SocketAddr,
    },
    /// The alternate needs concrete addresses to report in OTHER-ADDRESS.
    #[error("RFC 5780 needs specific addresses, not a wildcard: {0}")]
    Wildcard(SocketAddr),
    /// The TLS certificate or key for the stream port cannot be read or used.
    #[error("{0}")]
    Certificate(String),
}

struct Bound {
    service: Arc<BindingService>,
    /// Indexed by [`Via::index`]; one entry when there is no alternate.
    sockets: Vec<Arc<UdpSocket>>,
}

/// Where voxmesh frames (first byte 4..=15, DESIGN §3) that reach a primary socket go: the
/// supernode core shares the STUN port, so clients need one address for both.
pub type FrameSink = tokio::sync::mpsc::Sender<(SocketAddr, Vec<u8>)>;

/// A bound, ready-to-run STUN server: one [`BindingService`] per configured primary address.
pub struct StunServer {
    bound: Vec<Bound>,
    counters: Arc<BindingCounters>,
    frames: Option<FrameSink>,
}

/// Attempts at finding free alternate ports when the caller asked for port 0.
const PORT_ATTEMPTS: usize = 20;

impl StunServer {
    /// [`StunServer::bind`], and with `tcp` a TCP listener on each primary address and port
    /// too, for the directory's streams. Port 0 lets the UDP bind pick the number, which TCP
    /// must then share ([`crate::net::socket::bind_same_port`] retries when another process holds it for TCP).
    pub fn bind_with_tcp(
        configs: Vec<BindingConfig>,
        tcp: bool,
    ) -> Result<(StunServer, Vec<std::net::TcpListener>), StunServerError> {
        use crate::net::socket::{SAME_PORT_ATTEMPTS, SamePortError, bind_same_port, bind_tcp_std};
        if !tcp {
            return Ok((StunServer::bind(configs)?, Vec::new()));
        }
        let picked = configs.iter().any(|c| c.primary.port() == 0);
        let bound = bind_same_port(
            picked,
            SAME_PORT_ATTEMPTS,
            || StunServer::bind(configs.clone()),
            |server| {
                server
                    .configs()
                    .iter()
                    .map(|c| bind_tcp_std(c.primary).map_err(|e| (c.primary, e)))
                    .collect()
            },
        );
        match bound {
            Ok(pair) => Ok(pair),
            Err(SamePortError::Udp(e)) => Err(e),
            Err(SamePortError::Tcp { addr, source }) => {
                Err(StunServerError::BindTcp { addr, source })
            }
        }
    }

    /// Binds every socket the configurations need. Port 0 (primary or alternate) picks free
    /// ports, so tests can run many servers side by side. Call it within a tokio runtime (its
    /// sockets register with that runtime's reactor).
    pub fn bind(configs: Vec<BindingConfig>) -> Result<StunServer, StunServerError> {
        let counters = Arc::new(BindingCounters::default());
        let mut bound = Vec::new();
        for config in configs {
            let (config, sockets) = bind_one(config)?;
            bound.push(Bound {
                service: Arc::new(BindingService::new(config, counters.clone())),
                sockets,
            });
        }
        Ok(StunServer {
            bound,
            counters,
            frames: None,
        })
    }

    /// Hands voxmesh frames arriving on the primary sockets to `sink` instead of dropping them.
    pub fn set_frame_sink(&mut self, sink: FrameSink) {
        self.frames = Some(sink);
    }

    /// The primary socket of each configured address (frames to clients leave from these).
    pub fn primary_sockets(&self) -> Vec<Arc<UdpSocket>> {
        self.bound.iter().map(|b| b.sockets[0].clone()).collect()
    }

    /// The configurations as bound (ports resolved).
    pub fn configs(&self) -> Vec<BindingConfig> {
        self.bound
            .iter()
            .map(|b| b.service.config().clone())
            .collect()
    }

    pub fn counters(&self) -> Arc<BindingCounters> {
        self.counters.clone()
    }

    /// Serves until `shutdown`, then returns once every socket thread has stopped. The first
    /// socket error stops the others too and is returned.
    pub async fn run(self, mut shutdown: Shutdown) -> io::Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let sockets: usize = self.bound.iter().map(|b| b.sockets.len()).sum();
        // Each thread sends exactly one result, so this capacity never fills.
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(sockets.max(1));
        let mut threads = Vec::new();
        let mut result = Ok(());
        'spawn: for b in &self.bound {
            for (i, sock) in b.sockets.iter().enumerate() {
                let via = if b.sockets.len() == 1 {
                    Via::PRIMARY
                } else {
                    Via::ALL[i]
                };
                // Linux keeps 15 bytes of a thread name: enough for the port.
                let name = match sock.local_addr() {
                    Ok(a) => format!("stun {}", a.port()),
                    Err(_) => "stun".into(),
                };
                let (service, sock, all) = (b.service.clone(), sock.clone(), b.sockets.clone());
                let (flag, done) = (stop.clone(), done_tx.clone());
                let frames = self.frames.clone().filter(|_| via == Via::PRIMARY);
                let spawned = std::thread::Builder::new().name(name).spawn(move || {
                    let _ = done.try_send(serve_socket(
                        &service,
                        via,
                        &sock,
                        &all,
                        &flag,
                        frames.as_ref(),
                    ));
                });
                match spawned {
                    Ok(t) => threads.push(t),
                    Err(e) => {
                        // Stop the threads already running; their results are collected below.
                        result = Err(e);
                        stop.store(true, Relaxed);
                        break 'spawn;
                    }
                }
            }
        }
        // Every thread holds a sender: the channel closes when the last one has finished.
        drop(done_tx);
        loop {
            tokio::select! {
                _ = shutdown.wait(), if !stop.load(Relaxed) => stop.store(true, Relaxed),
                r = done_rx.recv() => match r {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        if result.is_ok() {
                            result = Err(e);
                        }
                        stop.store(true, Relaxed);
                    }
                    None => break,
                },
            }
        }
        for t in threads {
            // Every thread has finished (the channel closed), so joining does not block.
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
        result
    }
}

/// A service socket: blocking, with [`STOP_POLL`] as its receive timeout (sends never block:
/// [`SendBatch::flush`] asks for `MSG_DONTWAIT`).
fn bind_service_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = bind_udp_std(addr)?;
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(STOP_POLL))?;
    Ok(sock)
}

fn bind_one(
    mut config: BindingConfig,
) -> Result<(BindingConfig, Vec<Arc<UdpSocket>>), StunServerError> {
    let bind = |addr: SocketAddr| {
        bind_service_socket(addr).map_err(|source| StunServerError::Bind { addr, source })
    };
    let Some(alt) = config.alternate else {
        let sock = bind(config.primary)?;
        config.primary = sock.local_addr().map_err(|source| StunServerError::Bind {
            addr: config.primary,
            source,
        })?;
        return Ok((config, vec![Arc::new(sock)]));
    };
    let primary = config.primary;
    if primary.is_ipv4() != alt.is_ipv4() {
        return Err(StunServerError::FamilyMismatch { primary, alt });
    }
    if primary.ip().is_unspecified() || alt.ip().is_unspecified() {
        return Err(StunServerError::Wildcard(
            if primary.ip().is_unspecified() {
                primary
            } else {
                alt
            },
        ));
    }
    let distinct = |p1: u16, p2: u16| primary.ip() != alt.ip() && (p1 != p2 || p1 == 0);
    if !distinct(primary.port(), alt.port()) {
        return Err(StunServerError::AlternateNotDistinct { primary, alt });
    }
    let mut last_err = None;
    for _ in 0..PORT_ATTEMPTS {
        // Bind A1:p1 and A1:p2 first (resolving port 0), then A2 on the same two ports.
        let s0 = bind(primary)?;
        let p1 = s0.local_addr().map_or(primary.port(), |a| a.port());
        let s1 = bind(SocketAddr::new(primary.ip(), alt.port()))?;
        let p2 = s1.local_addr().map_or(alt.port(), |a| a.port());
        let s2 = bind(SocketAddr::new(alt.ip(), p1));
        let s3 = bind(SocketAddr::new(alt.ip(), p2));
        match (s2, s3) {
            (Ok(s2), Ok(s3)) => {
                config.primary = SocketAddr::new(primary.ip(), p1);
                config.alternate = Some(SocketAddr::new(alt.ip(), p2));
                let socks = [s0, s1, s2, s3].into_iter().map(Arc::new).collect();
                return Ok((config, socks));
            }
            (Err(e), _) | (_, Err(e)) => {
                // Only a port we picked ourselves may have collided; a fixed port is final.
                if primary.port() != 0 && alt.port() != 0 {
                    return Err(e);
                }
                last_err = Some(e);
            }
        }
    }
    Err(last_err.expect("at least one attempt"))
}

/// One socket's thread: receive a batch, answer it, repeat until `stop`.
fn serve_socket(
    service: &BindingService,
    via: Via,
    sock: &UdpSocket,
    all: &[Arc<UdpSocket>],
    stop: &AtomicBool,
    frames: Option<&FrameSink>,
) -> io::Result<()> {
    let mut rx = RecvBatch::default();
    let mut tx: Vec<SendBatch> = (0..all.len()).map(|_| SendBatch::default()).collect();
    let mut scratch = Vec::with_capacity(crate::net::batch::MAX_DATAGRAM);
    let counters = service.counters();
    while !stop.load(Relaxed) {
        match rx.recv_wait(sock) {
            Ok(_) => {}
            // The receive timeout: time to look at `stop`.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            // ICMP errors surface on the next receive; they say nothing about this socket.
            Err(e) if is_transient(&e) => continue,
            Err(e) => return Err(e),
        }
        for d in rx.iter() {
            if d.truncated {
                counters.drop_malformed.fetch_add(1, Relaxed);
                continue;
            }
            if let Some(sink) = frames
                && demux::classify(d.data) == demux::Kind::Session
            {
                // A full queue means the supernode core is behind: drop, like a full socket.
                if sink.try_send((d.from, d.data.to_vec())).is_err() {
                    counters.drop_send_failed.fetch_add(1, Relaxed);
                }
                continue;
            }
            let Some(reply) = service.handle(via, d.from, d.data, &mut scratch) else {
                continue;
            };
            let out = if all.len() == 1 { 0 } else { reply.via.index() };
            if tx[out].is_full() {
                flush(&mut tx[out], &all[out], counters);
            }
            let slot = tx[out].slot().expect("flushed above");
            slot.extend_from_slice(&scratch[..reply.len]);
            tx[out].commit(reply.to);
        }
        for (batch, s) in tx.iter_mut().zip(all) {
            if !batch.is_empty() {
                flush(batch, s, counters);
            }
        }
    }
    Ok(())
}

fn flush(batch: &mut SendBatch, sock: &UdpSocket, counters: &BindingCounters) {
    let done = batch.flush(sock);
    if done.dropped > 0 {
        counters
            .drop_send_failed
            .fetch_add(done.dropped as u64, Relaxed);
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EINTR
                | libc::ENOBUFS
        )
    )
}
