//! The echo baseline: a core that only sends frames back, run on the supernode's own driver, so
//! `scripts/bench-supernode` can set the directory's cost against the transport's.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::net::UnixListener;
use tokio::sync::mpsc;
use voxmesh::net::Shutdown;
use voxmesh::net::drivers::supernode::{NodeSockets, run_core};
use voxmesh::transmit::Transmit;

/// A core that sends every frame back where it came from, unchanged: with [`run_echo`], the
/// cost of moving a frame through the supernode's driver and nothing else.
#[derive(Default)]
pub struct Echo {
    out: std::collections::VecDeque<Transmit>,
    /// Buffers of sent frames, reused so an echo allocates no more than the supernode does.
    pool: Vec<Vec<u8>>,
    /// Frames echoed so far.
    pub echoed: u64,
}

impl voxmesh::net::drivers::supernode::Core for Echo {
    fn handle_input(&mut self, _now: Instant, from: SocketAddr, data: &[u8]) {
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(data);
        self.echoed += 1;
        self.out.push_back(Transmit::new(from, buf));
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }
    fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < 64 {
            self.pool.push(buf);
        }
    }
    fn status(&self, _users: bool) -> String {
        serde_json::json!({ "echoed": self.echoed }).to_string()
    }
    fn members(&self) -> Vec<(voxmesh::identity::NodeKey, SocketAddr)> {
        Vec::new()
    }
    fn leave(&mut self, _now: Instant) {}
    fn metrics(&self, s: &mut voxmesh::net::prom::Snapshot) {
        s.count("voxmesh_echo_frames_total", "Frames echoed.", self.echoed);
    }
}

/// Runs [`Echo`] on the supernode's driver until `shutdown`: frames arrive on `frames` from the
/// STUN service's socket threads exactly as they would for the supernode, and leave through
/// `sockets` the same way. For benchmarks (`voxlab sn-load echo-server`).
pub async fn run_echo(
    frames_tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    frames: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    sockets: NodeSockets,
    control: Option<UnixListener>,
    shutdown: Shutdown,
) -> io::Result<()> {
    run_core(
        Echo::default(),
        frames_tx,
        frames,
        sockets,
        control,
        shutdown,
    )
    .await
}
