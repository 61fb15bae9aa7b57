//! natprobe's simulated world: a thin layer over the one simulator (`voxlab::sim::World`), in
//! the style of quinn-proto's `Pair`: one client host whose sockets are the probe's, behind a
//! modelled NAT (`voxlab::sim::Nat`, RFC 4787 terms), STUN servers running the real
//! `BindingService`, and an impaired access link between the NAT and the internet.
//!
//! ```text
//!  client 10.0.0.2:50000+i  --LAN--  NAT 203.0.113.1  ==path (delay, jitter, loss)==  servers
//! ```
//!
//! Time is simulated and every random choice (loss, jitter, the NAT's random ports) comes from
//! the world's seed, so a seed always replays the same run. (The probe draws its STUN
//! transaction IDs from the OS; they change bytes on the wire, never the course of a run.)
//!
//! Servers run the real `BindingService` as an RFC 5780 server on two IPs × two ports, a plain
//! one-address server, one that advertises an alternate but answers CHANGE-REQUEST from the
//! socket asked, or a dead one; [`Sim::servers_fail_at`] kills them all mid-run.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use voxlab::sim::{Nat, NatConfig, Path, StunBehaviour, World};
use voxmesh::nat::{Probe, ProbeConfig, Report, Stage};
use voxmesh::supernode::BindingConfig;

/// The client's address behind a NAT.
pub const CLIENT_LAN: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
/// The NAT's WAN address, and the client's own address when it is not translated.
pub const WAN: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
/// The probe's socket `i` is bound to port `FIRST_PORT + i`.
pub const FIRST_PORT: u16 = 50000;
/// A run still going after this much simulated time is a hung probe.
const TIME_LIMIT: Duration = Duration::from_secs(600);

fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
}

/// The RFC 5780 server's primary address (A1:p1) ...
pub fn rfc5780_primary() -> SocketAddr {
    v4(198, 51, 100, 1, 3478)
}
/// ... and its alternate (A2:p2).
pub fn rfc5780_alternate() -> SocketAddr {
    v4(198, 51, 100, 2, 3479)
}
/// The RFC 5780 server's socket on the alternate IP and the primary port (A2:p1): what a user
/// who lists "the other address" of that server as a server of its own points at.
pub fn rfc5780_alt_ip() -> SocketAddr {
    v4(198, 51, 100, 2, 3478)
}
/// Two ordinary (one-address) STUN servers on different IPs ...
pub fn plain_a() -> SocketAddr {
    v4(198, 51, 100, 3, 3478)
}
pub fn plain_b() -> SocketAddr {
    v4(198, 51, 100, 4, 3478)
}
/// ... and a third on `plain_a`'s IP, another port.
pub fn plain_a_port2() -> SocketAddr {
    v4(198, 51, 100, 3, 3479)
}
/// A server that never answers.
pub fn dead() -> SocketAddr {
    v4(198, 51, 100, 9, 3478)
}

/// How a simulated STUN server behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// RFC 5780: two IPs × two ports, OTHER-ADDRESS advertised, CHANGE-REQUEST honoured.
    Rfc5780,
    /// Advertises an alternate address but answers every request from the socket it came in on.
    IgnoresChange,
    /// One address, no RFC 5780 (CHANGE-REQUEST answered with 420).
    Plain,
    /// Never answers.
    Dead,
}

#[derive(Clone, Copy, Debug)]
pub struct ServerSpec {
    pub kind: ServerKind,
    pub primary: SocketAddr,
}

impl ServerSpec {
    pub fn rfc5780() -> Self {
        ServerSpec {
            kind: ServerKind::Rfc5780,
            primary: rfc5780_primary(),
        }
    }

    pub fn ignores_change() -> Self {
        ServerSpec {
            kind: ServerKind::IgnoresChange,
            primary: rfc5780_primary(),
        }
    }

    pub fn plain(primary: SocketAddr) -> Self {
        ServerSpec {
            kind: ServerKind::Plain,
            primary,
        }
    }

    pub fn dead(primary: SocketAddr) -> Self {
        ServerSpec {
            kind: ServerKind::Dead,
            primary,
        }
    }
}

/// Datagram counts for one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Datagrams put on the internet path, outbound and inbound, and how many of them it lost.
    pub sent_up: u64,
    pub lost_up: u64,
    pub sent_down: u64,
    pub lost_down: u64,
    /// Datagrams that reached a dead server.
    pub to_dead_server: u64,
}

/// The simulated world with one client host (host 0) and the servers.
pub struct Sim {
    pub world: World,
    client_ip: IpAddr,
    /// Every stage the probe went through, with the simulated time it began.
    pub stages: Vec<(Duration, Stage)>,
}

const CLIENT: usize = 0;

impl Sim {
    pub fn new(nat: NatConfig, servers: &[ServerSpec], path: Path, seed: u64) -> Self {
        let mut world = World::new(seed);
        let client_ip = if nat.translate { CLIENT_LAN } else { WAN };
        let host = world.add_host(nat, client_ip, WAN, path);
        assert_eq!(host, CLIENT);
        for spec in servers {
            let two = matches!(spec.kind, ServerKind::Rfc5780 | ServerKind::IgnoresChange);
            let config = BindingConfig {
                primary: spec.primary,
                alternate: two.then(rfc5780_alternate),
                rfc5780: two,
                software: None,
            };
            let behaviour = match spec.kind {
                ServerKind::Rfc5780 | ServerKind::Plain => StunBehaviour::Normal,
                ServerKind::IgnoresChange => StunBehaviour::IgnoresChange,
                ServerKind::Dead => StunBehaviour::Dead,
            };
            world.add_stun_server(config, behaviour);
        }
        Sim {
            world,
            client_ip,
            stages: Vec::new(),
        }
    }

    /// The client's NAT.
    pub fn nat(&self) -> &Nat {
        &self.world.hosts[CLIENT].nat
    }

    pub fn stats(&self) -> Stats {
        let h = &self.world.hosts[CLIENT];
        Stats {
            sent_up: h.uplink.stats.sent,
            lost_up: h.uplink.stats.lost,
            sent_down: h.downlink.stats.sent,
            lost_down: h.downlink.stats.lost,
            to_dead_server: self.world.stats.to_dead_server,
        }
    }

    /// Makes every server stop answering at `at` (simulated time since the start).
    pub fn servers_fail_at(&mut self, at: Duration) {
        for s in self.world.stun_servers() {
            s.dead_from = Some(at);
        }
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.world.elapsed()
    }

    /// The client's socket `i`.
    pub fn local(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.client_ip, FIRST_PORT + i as u16)
    }

    /// Runs a probe to its report, driving it through its public API only.
    pub fn run(&mut self, config: ProbeConfig) -> Report {
        let n = Probe::sockets_needed(&config);
        let locals: Vec<SocketAddr> = (0..n).map(|i| self.local(i)).collect();
        let mut probe = Probe::new(config, locals.clone(), self.world.instant());
        let mut idle_spins = 0u32;
        loop {
            while let Some(t) = probe.poll_transmit() {
                self.world.send(CLIENT, locals[t.socket], t.to, t.data);
            }
            let now = self.world.elapsed();
            if self.stages.last().is_none_or(|(_, s)| *s != probe.stage()) {
                self.stages.push((now, probe.stage()));
            }
            if let Some(report) = probe.poll_report() {
                return report;
            }
            let timer = probe
                .poll_timeout()
                .map(|t| self.world.since_start(t).max(now));
            let event = self.world.next_event().map(|t| self.world.since_start(t));
            let at = match (timer, event) {
                (None, None) => {
                    panic!("probe stalled at {now:?}: no timer set and nothing in flight")
                }
                (Some(t), None) => t,
                (None, Some(e)) => e,
                (Some(t), Some(e)) => t.min(e),
            };
            assert!(
                at <= TIME_LIMIT,
                "probe still running after {TIME_LIMIT:?} of simulated time"
            );
            if at == now && event != Some(at) {
                // A timer that is due and stays due without anything happening is a busy loop.
                idle_spins += 1;
                assert!(
                    idle_spins < 10_000,
                    "probe busy-loops on a due timer at {at:?}"
                );
            } else {
                idle_spins = 0;
            }
            let instant: Instant = self.world.instant() + (at - now);
            self.world.advance_to(instant);
            if event == Some(at) {
                for d in self.world.deliver_due() {
                    let Some(socket) = locals.iter().position(|l| *l == d.to) else {
                        continue; // no socket on that port
                    };
                    probe.handle_input(instant, socket, d.from, &d.data);
                }
            } else {
                probe.handle_timeout(instant);
            }
        }
    }
}
