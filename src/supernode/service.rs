//! The tokio driver for [`BindingService`]: binds the sockets, moves batches of datagrams
//! between them and the core, stops on shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::net::UdpSocket;

use super::{BindingConfig, BindingCounters, BindingService, Via};
use crate::net::batch::{RecvBatch, SendBatch};
use crate::net::{Shutdown, bind_udp};

/// Why the STUN service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StunServerError {
    /// Another process holds the port, the address is not local, or binding needs privileges.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The metrics listener could not be bound.
    #[error("cannot bind the metrics listener on TCP {addr}: {source}")]
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
}

struct Bound {
    service: Arc<BindingService>,
    /// Indexed by [`Via::index`]; one entry when there is no alternate.
    sockets: Vec<Arc<UdpSocket>>,
}

/// A bound, ready-to-run STUN server: one [`BindingService`] per configured primary address.
pub struct StunServer {
    bound: Vec<Bound>,
    counters: Arc<BindingCounters>,
}

/// Attempts at finding free alternate ports when the caller asked for port 0.
const PORT_ATTEMPTS: usize = 20;

impl StunServer {
    /// Binds every socket the configurations need. Port 0 (primary or alternate) picks free
    /// ports, so tests can run many servers side by side.
    pub async fn bind(configs: Vec<BindingConfig>) -> Result<StunServer, StunServerError> {
        let counters = Arc::new(BindingCounters::default());
        let mut bound = Vec::new();
        for config in configs {
            let (config, sockets) = bind_one(config)?;
            bound.push(Bound {
                service: Arc::new(BindingService::new(config, counters.clone())),
                sockets,
            });
        }
        Ok(StunServer { bound, counters })
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

    /// Serves until `shutdown`, then returns once every socket task has stopped.
    pub async fn run(self, shutdown: Shutdown) -> io::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for b in &self.bound {
            for (i, sock) in b.sockets.iter().enumerate() {
                let via = if b.sockets.len() == 1 {
                    Via::PRIMARY
                } else {
                    Via::ALL[i]
                };
                tasks.spawn(serve_socket(
                    b.service.clone(),
                    via,
                    sock.clone(),
                    b.sockets.clone(),
                    shutdown.clone(),
                ));
            }
        }
        let mut result = Ok(());
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    result = Err(e);
                    tasks.abort_all();
                }
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {}
            }
        }
        result
    }
}

fn bind_one(
    mut config: BindingConfig,
) -> Result<(BindingConfig, Vec<Arc<UdpSocket>>), StunServerError> {
    let bind =
        |addr: SocketAddr| bind_udp(addr).map_err(|source| StunServerError::Bind { addr, source });
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
        let p1 = s0.local_addr().map(|a| a.port()).unwrap_or(primary.port());
        let s1 = bind(SocketAddr::new(primary.ip(), alt.port()))?;
        let p2 = s1.local_addr().map(|a| a.port()).unwrap_or(alt.port());
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

async fn serve_socket(
    service: Arc<BindingService>,
    via: Via,
    sock: Arc<UdpSocket>,
    all: Vec<Arc<UdpSocket>>,
    mut shutdown: Shutdown,
) -> io::Result<()> {
    let mut rx = RecvBatch::default();
    let mut tx: Vec<SendBatch> = (0..all.len()).map(|_| SendBatch::default()).collect();
    let mut scratch = Vec::with_capacity(crate::net::batch::MAX_DATAGRAM);
    let counters = service.counters();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait() => return Ok(()),
            r = rx.recv(&sock) => match r {
                Ok(_) => {}
                // ICMP errors surface on the next receive; they say nothing about this socket.
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e),
            },
        }
        for d in rx.iter() {
            if d.truncated {
                counters.drop_malformed.fetch_add(1, Relaxed);
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
        for (batch, s) in tx.iter_mut().zip(&all) {
            if !batch.is_empty() {
                flush(batch, s, counters);
            }
        }
    }
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
