//! The tokio driver for [`crate::client::relay::RelayLink`]: its own UDP socket, timers, and
//! the relay's load in; the supernode secrets out whenever they change.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::client::relay::RelayLink;
use crate::identity::UserId;
use crate::net::Shutdown;

/// Secrets per supernode, current first.
pub type SupernodeSecrets = Vec<(UserId, Vec<Vec<u8>>)>;

/// Runs the link until `shutdown`. `load` is read for each load report; every change of the
/// accepted secrets is published on `secrets`; supernodes arriving on `more` are authorised
/// too (a relay hosted by a client learns of supernodes that join later).
pub async fn run_relay_link(
    mut link: RelayLink,
    socket: UdpSocket,
    load: Arc<AtomicU32>,
    secrets: watch::Sender<SupernodeSecrets>,
    mut more: Option<tokio::sync::mpsc::Receiver<(crate::identity::NodeKey, SocketAddr)>>,
    mut shutdown: Shutdown,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        link.set_load(load.load(Relaxed));
        if link.take_changed() {
            let _ = secrets.send(link.secrets(Instant::now()));
        }
        while let Some(t) = link.poll_transmit() {
            let _ = socket.send_to(&t.data, t.to).await;
        }
        let sleep = crate::net::sleep_until(link.poll_timeout());
        tokio::select! {
            _ = shutdown.wait() => {
                link.close(Instant::now());
                while let Some(t) = link.poll_transmit() {
                    let _ = socket.send_to(&t.data, t.to).await;
                }
                return;
            }
            _ = sleep => link.handle_timeout(Instant::now()),
            m = async { more.as_mut()?.recv().await }, if more.is_some() => match m {
                Some((key, addr)) => link.add_supernode(Instant::now(), key, addr),
                None => more = None,
            },
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = r
                    && crate::demux::classify(&buf[..n]) == crate::demux::Kind::Session
                {
                    link.handle_input(Instant::now(), from, &buf[..n]);
                }
            }
        }
    }
}

/// A socket address for the link: the same IP as the relay, any port.
pub fn link_bind_addr(relay_ip: Option<std::net::IpAddr>) -> SocketAddr {
    match relay_ip {
        Some(ip) => SocketAddr::new(ip, 0),
        None => ([0, 0, 0, 0], 0).into(),
    }
}
