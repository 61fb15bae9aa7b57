//! The tokio driver for [`crate::roles::Promoter`]: it measures (dial-back, CPU headroom, the
//! declared uplink), asks the mesh what it needs and for grants, and hosts the roles it is
//! granted in this process with the same cores and drivers the daemons run: the relay
//! ([`super::relay::serve_relay`] with its supernode link, as `relayd`) and the supernode
//! ([`super::stun_server`] with [`super::supernode::run_supernode`], as `supernoded`, joining
//! the mesh through the supernodes the client knows).
//!
//! Its own UDP socket carries a session to a supernode (under the role identity, not the
//! user's: the user's own registration is untouched) and receives the dial-back probes; a NAT
//! or firewall in front of the host drops those, so only a public host is ever granted a role.
//! Each hosted role runs on its own thread with its own runtime (the relay driver is
//! single-threaded by design), and stops through its own shutdown signal.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::relay::{Listen, RelayOptions, bind_listeners, serve_relay};
use super::relay_link::{SupernodeSecrets, link_bind_addr, run_relay_link};
use super::stun_server::StunServer;
use super::supernode::{NodeSockets, StreamService, run_supernode};
use crate::client::relay::{RelayLink, RelayLinkConfig};
use crate::client::{Agent, AgentConfig, AgentEvent};
use crate::identity::{Identity, NodeKey};
use crate::net::{Shutdown, ShutdownSignal};
use crate::roles::{Config, DemoteReason, Event, Input, Promoter, Reachability, Role, probe};
use crate::signal::{RolesAnswer, RolesRequest};
use crate::supernode::{BindingConfig, NodeConfig, Supernode};
use crate::turn::server::Transport;
use crate::turn::{Credentials, IpNet, PeerPolicy, TurnConfig, TurnServer};

/// What the driver needs.
pub struct RolesSetup {
    pub config: Config,
    /// The relay role's identity (also the one its promotion session runs as).
    pub relay_identity: Identity,
    /// The supernode role's identity (its node key in the mesh).
    pub supernode_identity: Identity,
    /// Supernodes to ask (bootstrap entries and the host cache).
    pub supernodes: Vec<(NodeKey, SocketAddr)>,
    /// The local address to bind (the client's `--bind`; port ignored).
    pub bind: IpAddr,
    /// Spare uplink (kbit/s), declared: measuring it would cost the bandwidth it measures.
    pub uplink_kbps: u32,
    /// Fixed CPU headroom (a test and operator knob); `None`: measured from /proc/stat.
    pub cpu_headroom: Option<f32>,
    /// How often the mesh's need is asked, and the dial-back repeated (10 times as often).
    pub poll_every: Duration,
    /// Peers the hosted relay may relay to despite being special-purpose addresses (a lab).
    pub relay_allow_peer: Vec<IpNet>,
    /// Seed of the promotion jitter.
    pub seed: u64,
}

/// A role taken or given up, for the program to report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleNotice {
    pub role: Role,
    pub on: bool,
    /// Why it was given up; `None` when taken.
    pub reason: Option<DemoteReason>,
    /// Where the role serves: the relay's UDP address, or the supernode's `KEY@ADDR` entry.
    pub serves: Option<String>,
}

/// How long a dial-back probe may take to arrive after the supernode's answer: one-way delay
/// plus scheduling on a busy host; a probe later than that counts as not received.
const PROBE_WAIT: Duration = Duration::from_secs(3);
/// How long a stopping role gets to redirect its clients and say goodbye.
const ROLE_STOP: Duration = Duration::from_secs(3);

/// A hosted role: its thread and its stop signal; for the relay, where supernodes that
/// joined later go (its link authorises them too).
struct Hosted {
    stop: ShutdownSignal,
    thread: std::thread::JoinHandle<()>,
    more: Option<mpsc::Sender<(NodeKey, SocketAddr)>>,
}

impl Hosted {
    /// Stops the role and waits (bounded) for its thread.
    async fn stop(self) {
        self.stop.trigger();
        let t = self.thread;
        let _ =
            tokio::time::timeout(ROLE_STOP, tokio::task::spawn_blocking(move || t.join())).await;
    }
}

/// Runs promotion until `shutdown`; every role taken or given up is sent on `notices`. On
/// shutdown every hosted role is stopped gracefully (the supernode leaves the mesh, whose
/// members then tell its clients to register elsewhere).
pub async fn run_roles(
    setup: RolesSetup,
    notices: mpsc::Sender<RoleNotice>,
    mut shutdown: Shutdown,
) -> io::Result<()> {
    let socket = UdpSocket::bind(SocketAddr::new(setup.bind, 0)).await?;
    let local = socket.local_addr()?;
    let unix = unix_now();
    let mut cfg = AgentConfig::new(setup.supernodes.clone());
    cfg.register = false;
    cfg.standby = false;
    let mut agent = Agent::new(
        setup.relay_identity.clone(),
        cfg,
        Instant::now(),
        unix,
        rand::random(),
    );
    let mut promoter = Promoter::new(Instant::now(), setup.config.clone(), setup.seed);
    promoter.handle_input(Instant::now(), Input::UplinkKbps(setup.uplink_kbps));
    let mut cpu = CpuMeter::default();
    let mut buf = vec![0u8; 2048];
    // Dial-back: the probes' nonces since the last request (one per supernode probing: two
    // once the mesh has two), and the answer we wait on them for (how many, until when).
    let mut probes_seen: Vec<u64> = Vec::new();
    let mut waiting: Option<(SocketAddr, bool, u8, Instant)> = None;
    let mut proof: Option<u64> = None;
    // The address the last dial-back saw us at (a public host's own).
    let mut reflexive_ip: Option<IpAddr> = None;
    let mut relay: Option<Hosted> = None;
    let mut supernode: Option<Hosted> = None;
    let mut poll = tokio::time::interval(setup.poll_every);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut polls: u64 = 0;
    loop {
        // Agent first (requests the promoter asked for), then the promoter's events.
        while let Some(ev) = agent.poll_event() {
            let now = Instant::now();
            match ev {
                AgentEvent::Roles(Ok(RolesAnswer::Need(n))) => {
                    promoter.handle_input(now, Input::Need(n))
                }
                AgentEvent::Roles(Ok(RolesAnswer::Grant {
                    role,
                    granted,
                    need,
                })) => {
                    promoter.handle_input(now, Input::Need(need));
                    promoter.handle_input(now, Input::Grant { role, granted });
                }
                AgentEvent::Roles(Ok(RolesAnswer::DialBack { reflexive, probes })) => {
                    let host = is_host_address(local, reflexive);
                    reflexive_ip = Some(reflexive.ip());
                    waiting = Some((reflexive, host, probes, now + PROBE_WAIT));
                    proved(&mut waiting, &probes_seen, &mut proof, &mut promoter, now);
                }
                AgentEvent::Roles(Err(e)) => tracing::debug!("promotion request failed: {e}"),
                _ => {}
            }
        }
        while let Some(ev) = promoter.poll_event() {
            let now = Instant::now();
            match ev {
                Event::RequestGrant(role) => {
                    let id = match role {
                        Role::Relay => setup.relay_identity.id(),
                        Role::Supernode => setup.supernode_identity.id(),
                    };
                    let proof = proof.unwrap_or(0);
                    agent.roles(now, RolesRequest::Promote { role, proof, id });
                }
                Event::BecomeRelay => {
                    let ip = promoted_ip(local, reflexive_ip);
                    match start_relay(&setup, ip, agent.known_supernodes().to_vec()) {
                        Ok((h, addr)) => {
                            relay = Some(h);
                            notify(&notices, Role::Relay, None, Some(addr.to_string())).await;
                        }
                        Err(e) => tracing::warn!("cannot start the relay role: {e}"),
                    }
                }
                Event::BecomeSupernode => {
                    let ip = promoted_ip(local, reflexive_ip);
                    let known = agent.known_supernodes().to_vec();
                    let ramp = setup.config.ramp();
                    match start_supernode(&setup.supernode_identity, ip, known, ramp) {
                        Ok((h, entry)) => {
                            supernode = Some(h);
                            notify(&notices, Role::Supernode, None, Some(entry)).await;
                        }
                        Err(e) => tracing::warn!("cannot start the supernode role: {e}"),
                    }
                }
                Event::Demote { role, reason } => {
                    let hosted = match role {
                        Role::Relay => relay.take(),
                        Role::Supernode => supernode.take(),
                    };
                    if let Some(h) = hosted {
                        h.stop().await;
                    }
                    notify(&notices, role, Some(reason), None).await;
                }
            }
        }
        while let Some(t) = agent.poll_transmit() {
            if t.socket == crate::transmit::UDP {
                let _ = socket.send_to(&t.data, t.to).await;
                agent.recycle(t.data);
            }
        }
        let wake = [
            agent.poll_timeout(),
            promoter.poll_timeout(),
            waiting.map(|w| w.3),
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = crate::net::sleep_until(wake) => {
                let now = Instant::now();
                agent.handle_timeout(now);
                promoter.handle_timeout(now);
                if let Some((reflexive, host, _, until)) = waiting
                    && now >= until
                {
                    waiting = None;
                    proof = None;
                    // No probe at all: not reachable. Some but not all: inconclusive (the
                    // helping supernode may have died unnoticed yet): no proof to promote
                    // with, but a held role is not dropped for it; the next dial-back decides.
                    if probes_seen.is_empty() {
                        promoter.handle_input(now, reach(reflexive, host, false));
                    }
                }
            }
            _ = poll.tick() => {
                let now = Instant::now();
                let headroom = setup.cpu_headroom.or_else(|| cpu.sample());
                if let Some(h) = headroom {
                    promoter.handle_input(now, Input::CpuHeadroom(h));
                }
                agent.roles(now, RolesRequest::Need);
                // Reachability is checked at start and then every tenth poll: an address
                // change (a laptop moving to a NAT) demotes within that.
                if polls % 10 == 0 {
                    probes_seen.clear();
                    agent.roles(now, RolesRequest::DialBack);
                    agent.members(now);
                }
                // The hosted relay authorises every supernode the mesh lists, also those that
                // joined after it started (their clients need relay offers too).
                if let Some(h) = &relay
                    && let Some(more) = &h.more
                {
                    for (key, addr) in agent.known_supernodes() {
                        let _ = more.try_send((*key, *addr));
                    }
                }
                polls += 1;
            }
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else {
                    tokio::task::yield_now().await;
                    continue;
                };
                let now = Instant::now();
                let data = &buf[..n];
                match crate::demux::classify(data) {
                    crate::demux::Kind::Session => agent.handle_input(now, from, data),
                    crate::demux::Kind::Stun => {
                        // At most the two a dial-back brings (and a few strays).
                        if let Some(nonce) = probe::decode(data)
                            && probes_seen.len() < 8
                        {
                            probes_seen.push(nonce);
                            proved(&mut waiting, &probes_seen, &mut proof, &mut promoter, now);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let now = Instant::now();
    promoter.shutdown(now);
    // Every role is told to stop at once, then waited for: a relay draining its allocations
    // must not delay the supernode's goodbye, which is what moves its clients.
    let mut stopping = Vec::new();
    while let Some(ev) = promoter.poll_event() {
        if let Event::Demote { role, reason } = ev {
            let hosted = match role {
                Role::Relay => relay.take(),
                Role::Supernode => supernode.take(),
            };
            if let Some(h) = &hosted {
                h.stop.trigger();
            }
            stopping.push((role, reason, hosted));
        }
    }
    for (role, reason, hosted) in stopping {
        if let Some(h) = hosted {
            h.stop().await;
        }
        notify(&notices, role, Some(reason), None).await;
    }
    agent.close(now);
    while let Some(t) = agent.poll_transmit() {
        let _ = socket.send_to(&t.data, t.to).await;
    }
    Ok(())
}

/// Once every probe the dial-back answer announced has come: the proof (their nonces XORed,
/// in any order) and a reachable address.
fn proved(
    waiting: &mut Option<(SocketAddr, bool, u8, Instant)>,
    seen: &[u64],
    proof: &mut Option<u64>,
    promoter: &mut Promoter,
    now: Instant,
) {
    let Some((reflexive, host, probes, _)) = *waiting else {
        return;
    };
    let n = usize::from(probes.max(1));
    if seen.len() < n {
        return;
    }
    *waiting = None;
    // The last `n`: a stray from the previous dial-back, if any, came first.
    *proof = Some(seen[seen.len() - n..].iter().fold(0, |a, x| a ^ x));
    promoter.handle_input(now, reach(reflexive, host, true));
}

fn reach(reflexive: SocketAddr, host: bool, probe: bool) -> Input {
    Input::Reachability(Reachability {
        reflexive,
        host_is_reflexive: host,
        unsolicited_probe: probe,
    })
}

/// The IP a hosted role serves on: the socket's own when bound to one, else the reflexive one
/// (a public host's reflexive address is one of its own: the dial-back proved it).
fn promoted_ip(local: SocketAddr, reflexive: Option<IpAddr>) -> IpAddr {
    if !local.ip().is_unspecified() {
        return local.ip();
    }
    reflexive.unwrap_or_else(|| {
        crate::net::drivers::call::host_addresses(local)
            .into_iter()
            .map(|a| a.ip())
            .find(|ip| !ip.is_loopback())
            .unwrap_or(local.ip())
    })
}

/// Whether `reflexive` is this socket's own address: no NAT between it and the supernode.
fn is_host_address(local: SocketAddr, reflexive: SocketAddr) -> bool {
    local.port() == reflexive.port()
        && crate::net::drivers::call::host_addresses(local)
            .iter()
            .any(|a| a.ip() == reflexive.ip())
}

async fn notify(
    notices: &mpsc::Sender<RoleNotice>,
    role: Role,
    reason: Option<DemoteReason>,
    serves: Option<String>,
) {
    let _ = notices
        .send(RoleNotice {
            role,
            on: reason.is_none(),
            reason,
            serves,
        })
        .await;
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Starts the relay role on `ip` (UDP, a port the system picks) with its supernode link to
/// `supernodes`, as `relayd` runs it. Returns once its listener is bound.
fn start_relay(
    setup: &RolesSetup,
    ip: IpAddr,
    supernodes: Vec<(NodeKey, SocketAddr)>,
) -> io::Result<(Hosted, SocketAddr)> {
    let (more_tx, more_rx) = mpsc::channel(64);
    let identity = setup.relay_identity.clone();
    let allow = setup.relay_allow_peer.clone();
    // `--max-relay-kbps` caps each allocation's rate (bytes/s both ways) at the role's budget.
    let bandwidth = setup.config.max_relay_kbps.map(|k| u64::from(k) * 1000 / 8);
    let (mut hosted, addr) = spawn_role("relay", move |shutdown| async move {
        // UDP, and TCP and TLS on the same port for callers whose network blocks UDP, as
        // relayd's bare listeners serve them.
        let listeners = bind_listeners(&[Listen::All(SocketAddr::new(ip, 0))], Some(self_tls()?))?;
        let mut served = Vec::new();
        for l in &listeners {
            served.extend(l.endpoints()?);
        }
        let of = |t: Transport| -> Vec<SocketAddr> {
            served
                .iter()
                .filter(|(k, _)| *k == t)
                .map(|(_, a)| *a)
                .collect()
        };
        let Some(&addr) = of(Transport::Udp).first() else {
            return Err(io::Error::other("no relay listener"));
        };
        let config = TurnConfig {
            relay_ips: vec![ip],
            bandwidth,
            policy: PeerPolicy {
                allow,
                own: vec![ip],
            },
            ..TurnConfig::default()
        };
        let core = TurnServer::new(
            config,
            Credentials::new("voxmesh"),
            Instant::now(),
            unix_now(),
            rand::random(),
        );
        let mut link_cfg = RelayLinkConfig::new(supernodes);
        link_cfg.udp = vec![addr];
        link_cfg.tcp = of(Transport::Tcp);
        link_cfg.tls = of(Transport::Tls);
        let link = RelayLink::new(&identity, link_cfg, Instant::now(), rand::random());
        let link_socket = UdpSocket::bind(link_bind_addr(Some(ip))).await?;
        let (secrets_tx, mut secrets_rx) = watch::channel(SupernodeSecrets::new());
        let load = Arc::new(AtomicU32::new(0));
        let link_task = tokio::spawn(run_relay_link(
            link,
            link_socket,
            load.clone(),
            secrets_tx,
            Some(more_rx),
            shutdown.clone(),
        ));
        let (upd_tx, upd_rx) = mpsc::channel(4);
        tokio::spawn(async move {
            while secrets_rx.changed().await.is_ok() {
                let mut c = Credentials::new("voxmesh");
                for (id, s) in secrets_rx.borrow_and_update().iter() {
                    c.set_supernode_secrets(&id.to_string(), s.clone());
                }
                if upd_tx.send(c).await.is_err() {
                    return;
                }
            }
        });
        let options = RelayOptions {
            drain: Duration::from_secs(2),
            reload: None,
            own_addresses: None,
            metrics: None,
            updates: Some(upd_rx),
            load: Some(load),
        };
        Ok((addr, async move {
            if let Err(e) = serve_relay(core, listeners, options, shutdown).await {
                tracing::warn!("the relay role failed: {e}");
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), link_task).await;
        }))
    })?;
    hosted.more = Some(more_tx);
    Ok((hosted, addr))
}

/// Starts the supernode role on `ip` (a port the system picks) joining the mesh through
/// `bootstrap`, as `supernoded` runs it. Returns its `KEY@ADDR` entry once bound.
fn start_supernode(
    identity: &Identity,
    ip: IpAddr,
    bootstrap: Vec<(NodeKey, SocketAddr)>,
    ramp: crate::roles::Ramp,
) -> io::Result<(Hosted, String)> {
    let identity = identity.clone();
    spawn_role("supernode", move |shutdown| async move {
        let config = BindingConfig {
            primary: SocketAddr::new(ip, 0),
            alternate: None,
            rfc5780: false,
            software: None,
        };
        let (mut server, tcp) = StunServer::bind_with_tcp(vec![config], true)
            .map_err(|e| io::Error::other(e.to_string()))?;
        // Streams (plain and TLS) on the same port, for clients whose network blocks UDP.
        let mut streams = StreamService {
            tls: Some(self_tls()?),
            ..Default::default()
        };
        for l in tcp {
            l.set_nonblocking(true)?;
            streams
                .listeners
                .push(tokio::net::TcpListener::from_std(l)?);
        }
        let Some(addr) = server.configs().first().map(|c| c.primary) else {
            return Err(io::Error::other("no supernode socket"));
        };
        let mut node_config = NodeConfig::new(addr);
        node_config.client_ramp = Some(ramp);
        let core = Supernode::new(
            &identity,
            node_config,
            &bootstrap,
            Instant::now(),
            unix_now(),
            rand::random(),
        );
        let entry = format!("{}@{addr}", core.node_key());
        let (frames_tx, frames_rx) = mpsc::channel(8192);
        server.set_frame_sink(frames_tx.clone());
        let mut sockets = NodeSockets::default();
        for s in server.primary_sockets() {
            match s.local_addr() {
                Ok(a) if a.is_ipv4() => sockets.v4 = Some(s),
                Ok(_) => sockets.v6 = Some(s),
                Err(_) => {}
            }
        }
        let node = tokio::spawn(run_supernode(
            core,
            frames_tx,
            frames_rx,
            sockets,
            streams,
            None,
            None,
            None,
            shutdown.clone(),
        ));
        Ok((entry, async move {
            if let Err(e) = server.run(shutdown).await {
                tracing::warn!("the supernode role's STUN service failed: {e}");
            }
            let _ = node.await;
        }))
    })
}

/// The TLS a hosted role serves its streams with: a certificate made for it (clients take any;
/// see [`crate::net::tls`]).
fn self_tls() -> io::Result<Arc<rustls::ServerConfig>> {
    let (cert, key) = crate::net::tls::self_signed("voxmesh.invalid")?;
    crate::net::tls::tls_config(cert.as_bytes(), key.as_bytes())
}

/// Runs a hosted role on a thread of its own with its own runtime. `setup` binds the role's
/// sockets and builds its cores, and gives what the role serves (reported to the caller) and
/// the future that runs it until `shutdown`. Returns once set up, or with why it was not.
fn spawn_role<T, S, R>(
    role: &'static str,
    setup: impl FnOnce(Shutdown) -> S + Send + 'static,
) -> io::Result<(Hosted, T)>
where
    T: Send + 'static,
    S: Future<Output = io::Result<(T, R)>>,
    R: Future<Output = ()>,
{
    let (stop, shutdown) = ShutdownSignal::new();
    let (tx, rx) = std::sync::mpsc::channel::<io::Result<T>>();
    let thread = std::thread::Builder::new()
        .name(format!("{role}-role"))
        .spawn(move || {
            let rt = match role_runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                match setup(shutdown).await {
                    Ok((serves, run)) => {
                        let _ = tx.send(Ok(serves));
                        run.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })?;
    match rx.recv_timeout(ROLE_STOP) {
        Ok(Ok(serves)) => Ok((
            Hosted {
                stop,
                thread,
                more: None,
            },
            serves,
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::other(format!("the {role} role did not start"))),
    }
}

/// A hosted role's own single-threaded runtime, as the daemons use.
fn role_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Idle CPU fraction between two reads of /proc/stat's first line.
#[derive(Default)]
struct CpuMeter {
    last: Option<(u64, u64)>,
}

impl CpuMeter {
    /// The idle fraction since the last call (`None` on the first, or without /proc).
    fn sample(&mut self) -> Option<f32> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let line = text.lines().next()?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = v.iter().take(8).sum();
        // idle + iowait
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        let prev = self.last.replace((total, idle));
        let (t0, i0) = prev?;
        let dt = total.saturating_sub(t0);
        (dt > 0).then(|| idle.saturating_sub(i0) as f32 / dt as f32)
    }
}
