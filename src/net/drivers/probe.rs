//! The tokio driver for [`crate::nat::Probe`]: opens its sockets, moves datagrams and timers.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::nat::{Probe, ProbeConfig, Report, Stage};

/// Why a probe could not run (the network's answers, or their absence, are never an error).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The configuration names no server: give at least one (`--server HOST[:PORT]`).
    #[error("no STUN server to probe: give at least one")]
    NoServers,
    /// `--server` addresses must share one address family: the probe uses one local address.
    #[error("servers mix IPv4 and IPv6 ({0} and {1}); probe one family at a time")]
    MixedFamilies(SocketAddr, SocketAddr),
    /// No route to the server, or no local address of its family.
    #[error("no local route to {server}")]
    NoRoute {
        server: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot open UDP sockets on {ip}")]
    Bind {
        ip: IpAddr,
        #[source]
        source: io::Error,
    },
}

/// The local address the system would use to reach `server` (no packet is sent).
pub fn local_ip_for(server: SocketAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(any)?;
    s.connect(server)?;
    Ok(s.local_addr()?.ip())
}

/// Runs a probe to completion. `on_stage` hears every stage change (for a progress display).
pub async fn run_probe(
    config: ProbeConfig,
    mut on_stage: impl FnMut(Stage),
) -> Result<Report, ProbeError> {
    let Some(&first) = config.servers.first() else {
        return Err(ProbeError::NoServers);
    };
    if let Some(other) = config
        .servers
        .iter()
        .find(|s| s.is_ipv4() != first.is_ipv4())
    {
        return Err(ProbeError::MixedFamilies(first, *other));
    }
    let ip = local_ip_for(first).map_err(|source| ProbeError::NoRoute {
        server: first,
        source,
    })?;
    let n = Probe::sockets_needed(&config);
    let mut sockets = Vec::with_capacity(n);
    let mut locals = Vec::with_capacity(n);
    for _ in 0..n {
        let s = UdpSocket::bind(SocketAddr::new(ip, 0))
            .await
            .map_err(|source| ProbeError::Bind { ip, source })?;
        locals.push(
            s.local_addr()
                .map_err(|source| ProbeError::Bind { ip, source })?,
        );
        sockets.push(Arc::new(s));
    }

    // One receive task per socket, all feeding one queue.
    let (tx, mut rx) = mpsc::channel::<(usize, SocketAddr, Vec<u8>)>(1024);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, s) in sockets.iter().enumerate() {
        let (s, tx) = (s.clone(), tx.clone());
        tasks.spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                match s.recv_from(&mut buf).await {
                    Ok((len, from)) => {
                        if tx.send((i, from, buf[..len].to_vec())).await.is_err() {
                            return;
                        }
                    }
                    // ICMP errors from earlier sends surface here; they are not fatal.
                    Err(_) => tokio::task::yield_now().await,
                }
            }
        });
    }
    drop(tx);

    let mut probe = Probe::new(config, locals, Instant::now());
    let mut stage = probe.stage();
    on_stage(stage);
    loop {
        while let Some(t) = probe.poll_transmit() {
            // A send error (no route, EPERM from a firewall) is just a lost packet here.
            let _ = sockets[t.socket].send_to(&t.data, t.to).await;
        }
        if let Some(report) = probe.poll_report() {
            tasks.abort_all();
            on_stage(Stage::Done);
            return Ok(report);
        }
        if probe.stage() != stage {
            stage = probe.stage();
            on_stage(stage);
        }
        let deadline = probe.poll_timeout();
        // Datagrams already received go in before a due timer: on a busy host an answer that
        // arrived in time must not be judged missing because its timer was polled first.
        tokio::select! {
            biased;
            got = rx.recv() => match got {
                Some((i, from, data)) => probe.handle_input(Instant::now(), i, from, &data),
                None => probe.handle_timeout(Instant::now()),
            },
            _ = crate::net::sleep_until(deadline) => probe.handle_timeout(Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::Timing;

    /// `run_probe` indexed `servers[0]` and panicked on an empty list.
    #[test]
    fn run_probe_with_no_servers_returns_an_error_instead_of_panicking() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = ProbeConfig {
            servers: Vec::new(),
            lifetime: false,
            timing: Timing::default(),
        };
        let r = rt.block_on(run_probe(config, |_| {}));
        assert!(matches!(r, Err(ProbeError::NoServers)), "{r:?}");
    }
}
