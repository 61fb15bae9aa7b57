//! Shared by `tests/lab/mesh_lab.rs` (network namespaces, clients behind every NAT type) and
//! `tests/loopback/mesh_loopback.rs` (plain processes on 127.0.0.0/8): 5 real `supernoded` processes and
//! 200 client agents. Every client looks up every other; presence reaches a watcher; then
//! supernodes are SIGKILLed one at a time down to two, and each time within 10 s every client is
//! registered again, every record sits on min(3, live) homes, lookups succeed, and a client that
//! died with its supernode is served as its last known entry, marked stale — not "unknown".
//!
//! The two tests differ only in how a supernode is started (the `Command` and the listen
//! address) and where a client's agent runs ([`Place`]); the scenario is [`run_scenario`].
//! Every wait is bounded polling; supernodes are killed and client agents stopped on drop, so a
//! failing assertion leaves nothing running.
//!
//! (`tests/support/mesh.rs` is something else: the in-process simulated mesh with attackers.)

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use voxlab::in_netns;
use voxmesh::client::{Agent, AgentConfig, AgentEvent};
use voxmesh::identity::{BootstrapEntry, Identity, NodeKey, UserId};
use voxmesh::net::ShutdownSignal;
use voxmesh::net::drivers::client::{AgentCommand, run_agent};
use voxmesh::net::drivers::supernode::query_status;
use voxmesh::signal::Target;

pub const SUPERNODES: usize = 5;
pub const CLIENTS: usize = 200;

/// A running `supernoded`: SIGKILLed and reaped when dropped.
pub struct Sn {
    child: Child,
    pub key: NodeKey,
    pub addr: SocketAddr,
    pub control: PathBuf,
}

impl Sn {
    /// SIGKILL (no goodbye to the mesh or to clients) and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sn {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts supernode `n` (1-based) with `cmd` as the program (plain, or run inside a namespace),
/// listening on `listen` (port 0: the kernel picks; the bound address is read from the start
/// line). Its key, host cache and control socket live in `dir`.
pub fn start_supernode(
    mut cmd: Command,
    listen: SocketAddr,
    dir: &Path,
    n: usize,
    bootstrap: Option<&str>,
) -> Sn {
    let control = dir.join(format!("sn{n}.sock"));
    cmd.args(["--listen", &listen.to_string()])
        .arg("--identity")
        .arg(dir.join(format!("sn{n}.key")))
        .arg("--control")
        .arg(&control)
        .arg("--host-cache")
        .arg(dir.join(format!("sn{n}.hosts")));
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn supernoded");
    // One JSON line once every socket is bound: that is readiness, and it names the node.
    let mut line = String::new();
    let read = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    let parsed = read
        .ok()
        .and_then(|_| serde_json::from_str::<serde_json::Value>(&line).ok())
        .and_then(|v| v["node"].as_str()?.parse::<BootstrapEntry>().ok());
    let Some(entry) = parsed else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("supernoded {n} did not start: {line:?}");
    };
    let addr: SocketAddr = format!("{}:{}", entry.host, entry.port).parse().unwrap();
    assert_eq!(addr.ip(), listen.ip(), "supernoded {n} advertises {addr}");
    if listen.port() != 0 {
        assert_eq!(addr.port(), listen.port());
    }
    Sn {
        child,
        key: entry.key,
        addr,
        control,
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The supernode's status over its control socket (`users`: with the IDs it homes). The
/// socket lives in the host's filesystem: reachable from any namespace.
pub fn status(sn: &Sn, users: bool) -> Option<serde_json::Value> {
    rt().block_on(query_status(&sn.control, users)).ok()
}

/// Waits (bounded) until every supernode lists all of them as members.
pub fn wait_mesh(sns: &[Sn]) -> Duration {
    let t0 = Instant::now();
    while !sns.iter().all(|s| {
        status(s, false)
            .is_some_and(|v| v["members"].as_array().map(|m| m.len()) == Some(sns.len()))
    }) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the mesh did not form"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    t0.elapsed()
}

/// How many cookies each supernode sent instead of doing a handshake (a per-source or global
/// handshake limit was hit), from the session counters in its status.
pub fn cookies_sent(sns: &[Sn]) -> Vec<Option<u64>> {
    sns.iter()
        .map(|s| {
            let v = status(s, false)?;
            v["session"]["cookies_sent"].as_u64()
        })
        .collect()
}

/// Where a client's agent runs.
#[derive(Clone, Debug)]
pub enum Place {
    /// Inside network namespace `ns` (every socket, TCP fallback included, is created there),
    /// bound to the wildcard address.
    Netns(String),
    /// In the test's own namespace, bound to this address.
    Bound(SocketAddr),
}

impl Place {
    pub fn label(&self) -> String {
        match self {
            Place::Netns(ns) => ns.clone(),
            Place::Bound(a) => a.ip().to_string(),
        }
    }
}

/// One client: an agent on its own thread (inside its namespace, if it has one), talked to over
/// channels. Dropping it stops the agent.
pub struct Client {
    pub id: UserId,
    pub label: String,
    pub commands: mpsc::Sender<AgentCommand>,
    pub events: std::sync::mpsc::Receiver<AgentEvent>,
    pub stop: ShutdownSignal,
    /// Fired to make the client vanish: its agent is dropped mid-flight, sending nothing more
    /// (no polite close), as a SIGKILLed process would.
    vanish: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The supernode of the latest registration.
    pub registered: Option<UserId>,
    /// The client's warm standby, as its latest `Standby` event said.
    pub standby: Option<UserId>,
    pub seen: Vec<AgentEvent>,
}

impl Client {
    pub fn start(place: Place, supernodes: Vec<(NodeKey, SocketAddr)>, seed: u8) -> Client {
        let identity = Identity::generate();
        let id = identity.id();
        let label = place.label();
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let (ev_tx, ev_rx) = std::sync::mpsc::channel();
        let (stop, shutdown) = ShutdownSignal::new();
        let (vanish, vanished) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let err_tx = ev_tx.clone();
            let bind: SocketAddr = match &place {
                Place::Netns(_) => "0.0.0.0:0".parse().unwrap(),
                Place::Bound(a) => *a,
            };
            let run = move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let socket = tokio::net::UdpSocket::bind(bind).await?;
                    let mut cfg = AgentConfig::new(supernodes);
                    cfg.refresh_interval = Duration::from_secs(5);
                    let unix = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    let agent = Agent::new(identity, cfg, Instant::now(), unix, [seed; 32]);
                    let (tx, mut rx) = mpsc::channel(1024);
                    let forward = tokio::spawn(async move {
                        while let Some(ev) = rx.recv().await {
                            if ev_tx.send(ev).is_err() {
                                return;
                            }
                        }
                    });
                    tokio::select! {
                        _ = run_agent(agent, socket, cmd_rx, tx, shutdown) => {}
                        _ = vanished => {}
                    }
                    forward.abort();
                    Ok::<_, std::io::Error>(())
                })
            };
            let result = match &place {
                Place::Netns(ns) => in_netns(ns, run),
                Place::Bound(_) => run(),
            };
            if let Err(e) = result {
                let _ = err_tx.send(AgentEvent::Error {
                    message: format!("client on {place:?} did not run: {e}"),
                });
            }
        });
        Client {
            id,
            label,
            commands: cmd_tx,
            events: ev_rx,
            stop,
            vanish: Some(vanish),
            thread: Some(thread),
            registered: None,
            standby: None,
            seen: Vec::new(),
        }
    }

    /// Notes what an event says about the client's supernodes.
    fn note(&mut self, ev: &AgentEvent) {
        match ev {
            AgentEvent::Registered { supernode, .. } => self.registered = Some(*supernode),
            AgentEvent::Standby { supernode } => self.standby = *supernode,
            _ => {}
        }
    }

    pub fn drain(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            self.note(&ev);
            self.seen.push(ev);
        }
    }

    /// The client disappears without a word (as if SIGKILLed): its supernode only learns of
    /// it from the session's idle timeout.
    pub fn vanish(&mut self) {
        if let Some(v) = self.vanish.take() {
            let _ = v.send(());
        }
        self.kill();
    }

    /// Stops the agent and waits for its thread.
    pub fn kill(&mut self) {
        self.stop.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a client at each place; client `i` tries the supernodes rotated by `i`.
pub fn start_clients(sns: &[Sn], places: &[Place]) -> Vec<Client> {
    let keys: Vec<(NodeKey, SocketAddr)> = sns.iter().map(|s| (s.key, s.addr)).collect();
    places
        .iter()
        .enumerate()
        .map(|(i, place)| {
            let mut list = keys.clone();
            list.rotate_left(i % keys.len());
            Client::start(place.clone(), list, (i % 250) as u8)
        })
        .collect()
}

/// Waits (bounded) until `cond` holds, draining client events meanwhile.
pub fn wait_until(
    clients: &mut [Client],
    limit: Duration,
    mut cond: impl FnMut(&mut [Client]) -> bool,
) -> Duration {
    let t0 = Instant::now();
    loop {
        for c in clients.iter_mut() {
            c.drain();
        }
        if cond(clients) {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "condition not met within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Has `c` look up each of `targets`; returns the entries (None: not found / failed).
pub fn lookups(
    c: &mut Client,
    targets: &[UserId],
) -> HashMap<UserId, Option<voxmesh::signal::Entry>> {
    let mut got = HashMap::new();
    for chunk in targets.chunks(24) {
        for t in chunk {
            c.commands
                .blocking_send(AgentCommand::Lookup(Target::Id(*t)))
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let want: HashSet<UserId> = chunk.iter().copied().collect();
        while Instant::now() < deadline && !want.iter().all(|t| got.contains_key(t)) {
            if let Ok(ev) = c.events.recv_timeout(Duration::from_millis(100)) {
                match ev {
                    AgentEvent::Lookup {
                        target: Target::Id(u),
                        result,
                    } => {
                        got.insert(u, result.ok().flatten());
                    }
                    other => {
                        c.note(&other);
                        c.seen.push(other);
                    }
                }
            }
        }
    }
    got
}

/// Waits (bounded, 60 s) until every client is registered; prints failovers and errors seen.
pub fn register_all(clients: &mut [Client]) -> Duration {
    let took = wait_until(clients, Duration::from_secs(60), |cs| {
        cs.iter().all(|c| c.registered.is_some())
    });
    let failovers: usize = clients
        .iter()
        .map(|c| {
            c.seen
                .iter()
                .filter(|e| matches!(e, AgentEvent::Registered { failover: true, .. }))
                .count()
        })
        .sum();
    let errors: Vec<String> = clients
        .iter()
        .flat_map(|c| {
            c.seen.iter().filter_map(|e| match e {
                AgentEvent::Error { message } => Some(message.clone()),
                _ => None,
            })
        })
        .take(10)
        .collect();
    eprintln!("DIAG failovers {failovers}, errors {errors:?}");
    took
}

/// Every client looks up every other; every answer must be an online entry.
pub fn full_matrix(clients: &mut [Client]) -> Duration {
    let t0 = Instant::now();
    let ids: Vec<UserId> = clients.iter().map(|c| c.id).collect();
    let mut failures = 0;
    for i in 0..clients.len() {
        let others: Vec<UserId> = ids.iter().copied().filter(|u| *u != ids[i]).collect();
        let got = lookups(&mut clients[i], &others);
        let bad: Vec<(usize, String)> = others
            .iter()
            .filter(|u| {
                !got.get(u)
                    .is_some_and(|e| e.as_ref().is_some_and(|e| e.online))
            })
            .map(|u| {
                let k = ids.iter().position(|x| x == u).unwrap();
                (
                    k,
                    format!(
                        "{:?}",
                        got.get(u).map(|e| e.as_ref().map(|e| (e.online, e.stale)))
                    ),
                )
            })
            .collect();
        if !bad.is_empty() && failures < 50 {
            eprintln!(
                "client {i} ({}) failed {} lookups, e.g. {:?}",
                clients[i].label,
                bad.len(),
                &bad[..bad.len().min(5)]
            );
        }
        failures += bad.len();
    }
    assert_eq!(failures, 0, "failed lookups in the full matrix");
    t0.elapsed()
}

/// Client 0 watches the `watched` clients, which then leave politely; the offline presence of
/// each must reach client 0 within 10 s. Returns how long that took.
///
/// A watch is not acknowledged to the client once it reached the watched users' homes, so the
/// watcher then looks the watched users up: its supernode forwards the lookup to a home on the
/// same peer session, after the watch, so once the answer is back at least one home (every home
/// pushes the change) holds the watch. `settle` is an extra wait after that (zero: none).
pub fn presence(clients: &mut [Client], watched: &[usize], settle: Duration) -> Duration {
    let ids: Vec<UserId> = clients.iter().map(|c| c.id).collect();
    let targets: Vec<UserId> = watched.iter().map(|w| ids[*w]).collect();
    for t in &targets {
        clients[0]
            .commands
            .blocking_send(AgentCommand::Watch(*t))
            .unwrap();
    }
    let got = lookups(&mut clients[0], &targets);
    assert!(
        targets.iter().all(|t| got
            .get(t)
            .is_some_and(|e| e.as_ref().is_some_and(|e| e.online))),
        "the watched clients are online before they leave: {got:?}"
    );
    if !settle.is_zero() {
        std::thread::sleep(settle);
    }
    for w in watched {
        clients[*w].stop.trigger(); // polite: sessions close, the supernode publishes at once
    }
    let t = Instant::now();
    let offline = |c: &Client, u: UserId| {
        c.seen
            .iter()
            .any(|e| matches!(e, AgentEvent::Presence { user, online: false, .. } if *user == u))
    };
    wait_until(clients, Duration::from_secs(10), |cs| {
        if t.elapsed() > Duration::from_secs(9) {
            for w in watched {
                if !offline(&cs[0], ids[*w]) {
                    eprintln!("DIAG no offline presence for client {w} ({})", cs[*w].label);
                }
            }
        }
        watched.iter().all(|w| offline(&cs[0], ids[*w]))
    });
    t.elapsed()
}

/// The order in which supernodes die so that standbys die first: the first victim is the
/// supernode most clients keep as their standby; each next one is the supernode most of the
/// previous victim's standby clients were registered through (they had to replace their standby
/// before their primary died: the path that once left clients stranded). `n` victims.
pub fn standbys_first(
    sns: &[Sn],
    clients: &[Client],
    gone: &HashSet<usize>,
    n: usize,
) -> Vec<usize> {
    let index = |id: UserId| sns.iter().position(|s| s.key.id == id);
    let live: Vec<&Client> = clients
        .iter()
        .enumerate()
        .filter(|(i, _)| !gone.contains(i))
        .map(|(_, c)| c)
        .collect();
    let most = |ids: Vec<UserId>, not: &[usize]| -> Option<usize> {
        let mut count: HashMap<usize, usize> = HashMap::new();
        for i in ids
            .into_iter()
            .filter_map(index)
            .filter(|i| !not.contains(i))
        {
            *count.entry(i).or_default() += 1;
        }
        count
            .into_iter()
            .max_by_key(|(i, c)| (*c, usize::MAX - i))
            .map(|(i, _)| i)
    };
    let mut order: Vec<usize> = Vec::new();
    let first = most(live.iter().filter_map(|c| c.standby).collect(), &order).unwrap_or(0);
    order.push(first);
    while order.len() < n {
        let prev = sns[*order.last().unwrap()].key.id;
        let next = most(
            live.iter()
                .filter(|c| c.standby == Some(prev))
                .filter_map(|c| c.registered)
                .collect(),
            &order,
        )
        .or_else(|| (0..sns.len()).find(|i| !order.contains(i)))
        .unwrap();
        order.push(next);
    }
    order
}

/// SIGKILLs supernodes in an order where standbys die first ([`standbys_first`]), down to two.
/// Each time a client registered through the victim vanishes with it (no goodbye); within 10 s
/// every other client is registered again through a live supernode, then (within 10 s more)
/// every record — the departed clients' too — is homed on min(3, live) supernodes, sampled
/// lookups all succeed, and the lost client's entry is still served, marked stale. `gone`:
/// clients already stopped.
pub fn kill_down_to_two(sns: &mut [Sn], clients: &mut [Client], gone: &mut HashSet<usize>) {
    let ids: Vec<UserId> = clients.iter().map(|c| c.id).collect();
    let mut alive: Vec<usize> = (0..sns.len()).collect();
    for c in clients.iter_mut() {
        c.drain();
    }
    let victims = standbys_first(sns, clients, gone, sns.len() - 2);
    let standbys: usize = clients.iter().filter(|c| c.standby.is_some()).count();
    eprintln!("KILL ORDER {victims:?} ({standbys} clients reported a standby)");
    for victim in victims {
        let victim_id = sns[victim].key.id;
        // One client registered through the victim dies with it: its entry must stay findable,
        // marked stale.
        let lost = (0..clients.len())
            .find(|i| !gone.contains(i) && clients[*i].registered == Some(victim_id))
            .expect("the victim has clients");
        sns[victim].kill();
        clients[lost].vanish();
        gone.insert(lost);
        alive.retain(|s| *s != victim);
        let t = Instant::now();
        let live_ids: HashSet<UserId> = alive.iter().map(|s| sns[*s].key.id).collect();
        let took = wait_until(clients, Duration::from_secs(10), |cs| {
            if t.elapsed() > Duration::from_millis(9900) {
                for (i, c) in cs.iter().enumerate().filter(|(i, _)| !gone.contains(i)) {
                    if !c.registered.is_some_and(|r| live_ids.contains(&r)) {
                        let errs: Vec<&AgentEvent> = c.seen.iter().rev().take(4).collect();
                        eprintln!(
                            "DIAG client {i} ({}) registered {:?}; recent {errs:?}",
                            c.label, c.registered
                        );
                    }
                }
            }
            cs.iter()
                .enumerate()
                .filter(|(i, _)| !gone.contains(i))
                .all(|(_, c)| c.registered.is_some_and(|r| live_ids.contains(&r)))
        });
        eprintln!(
            "FAILOVER after killing supernode {victim}: all clients registered again in {took:?}"
        );
        // Every record on min(3, live) homes (the departed clients' entries too).
        let want = alive.len().min(3);
        let t2 = Instant::now();
        loop {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for s in &alive {
                let v = status(&sns[*s], true).expect("status");
                for u in v["users"].as_array().unwrap() {
                    *counts.entry(u.as_str().unwrap().to_string()).or_default() += 1;
                }
            }
            let ok = ids
                .iter()
                .all(|u| counts.get(&u.to_string()).copied().unwrap_or(0) == want);
            if ok {
                break;
            }
            assert!(
                t2.elapsed() < Duration::from_secs(10),
                "records not on {want} homes"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "HOMES every record on {want} homes {:?} after the kill",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(20));
        // Every lookup succeeds (a sample matrix: every client looks up 12 others, and the lost
        // client is looked up by a few).
        let asker = (0..clients.len()).find(|i| !gone.contains(i)).unwrap();
        let mut bad = 0;
        for i in (0..clients.len()).filter(|i| !gone.contains(i)) {
            let targets: Vec<UserId> = (1..=12)
                .map(|k| ids[(i + k * 17) % ids.len()])
                .filter(|u| *u != ids[i])
                .collect();
            let got = lookups(&mut clients[i], &targets);
            bad += targets
                .iter()
                .filter(|u| got.get(u).is_none_or(|e| e.is_none()))
                .count();
        }
        assert_eq!(bad, 0, "lookups failed after killing supernode {victim}");
        let got = lookups(&mut clients[asker], &[ids[lost]]);
        let e = got
            .get(&ids[lost])
            .cloned()
            .flatten()
            .expect("the lost client's entry is still served");
        assert!(e.stale, "marked stale, not unknown");
        eprintln!("GAP: the lost client's entry is served stale");
    }
}

/// The whole scenario once the supernodes run: the mesh forms, a client at each of `places`
/// registers, the full lookup matrix, presence for the `watched` clients (watcher: client 0;
/// `settle`: see [`presence`]), then the kills down to two.
pub fn run_scenario(mut sns: Vec<Sn>, places: &[Place], watched: &[usize], settle: Duration) {
    assert_eq!(sns.len(), SUPERNODES);
    assert_eq!(places.len(), CLIENTS);
    assert!(!watched.contains(&0), "client 0 is the watcher");
    // The mesh settles: everyone sees everyone.
    eprintln!("MESH formed in {:?}", wait_mesh(&sns));

    let mut clients = start_clients(&sns, places);
    let took = register_all(&mut clients);
    eprintln!("REGISTERED {} clients in {took:?}", clients.len());
    eprintln!(
        "DIAG cookies sent (handshake rate limits hit) per supernode {:?}",
        cookies_sent(&sns)
    );

    let took = full_matrix(&mut clients);
    eprintln!(
        "LOOKUPS {}x{} all answered in {took:?}",
        clients.len(),
        clients.len() - 1
    );

    let took = presence(&mut clients, watched, settle);
    eprintln!("PRESENCE offline reached the watcher in {took:?}");
    let mut gone: HashSet<usize> = watched.iter().copied().collect();

    kill_down_to_two(&mut sns, &mut clients, &mut gone);
    // Clients stop before the remaining supernodes are killed.
    drop(clients);
    drop(sns);
}
