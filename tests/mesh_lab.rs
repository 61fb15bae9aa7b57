//! The supernode mesh for real: 5 `supernoded` daemons and 200 clients, in the lab, clients
//! behind every NAT type (UDP-blocked ones over the TCP fallback). Every client can look up every
//! other; presence reaches watchers; after the mesh settles, supernodes are SIGKILLed one at a
//! time down to two, and each time within 10 s every client is registered again, every lookup
//! succeeds, every record sits on min(3, live) homes, and a client caught in the gap (it died
//! with its supernode) is served as its last known entry, marked stale — not "unknown".

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Proc;
use tokio::sync::mpsc;
use voxmesh::agent::{Agent, AgentConfig, AgentEvent};
use voxmesh::identity::{Identity, NodeKey, UserId};
use voxmesh::lab::{BoxOpts, Lab, LabNat, in_netns};
use voxmesh::net::ShutdownSignal;
use voxmesh::net::agent::{AgentCommand, run_agent};
use voxmesh::net::supernode::query_status;
use voxmesh::signal::Target;

const SUPERNODES: usize = 5;
const PER_BOX: u32 = 10;
const CLIENTS: usize = 200;

struct Sn {
    proc: Proc,
    key: NodeKey,
    addr: SocketAddr,
    control: PathBuf,
}

/// One client: an agent on its own thread inside its namespace (so even its TCP fallback
/// sockets are created there), talked to over channels.
struct Client {
    id: UserId,
    commands: mpsc::Sender<AgentCommand>,
    events: std::sync::mpsc::Receiver<AgentEvent>,
    stop: ShutdownSignal,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Latest registration: (supernode, when).
    registered: Option<UserId>,
    seen: Vec<AgentEvent>,
}

impl Client {
    fn start(ns: String, supernodes: Vec<(NodeKey, SocketAddr)>, seed: u8) -> Client {
        let identity = Identity::generate();
        let id = identity.id();
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let (ev_tx, ev_rx) = std::sync::mpsc::channel();
        let (stop, shutdown) = ShutdownSignal::new();
        let thread = std::thread::spawn(move || {
            let _ = in_netns(&ns, move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
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
                    let _ = run_agent(agent, socket, cmd_rx, tx, shutdown).await;
                    forward.abort();
                    Ok::<_, std::io::Error>(())
                })
            });
        });
        Client {
            id,
            commands: cmd_tx,
            events: ev_rx,
            stop,
            thread: Some(thread),
            registered: None,
            seen: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Ok(ev) = self.events.try_recv() {
            if let AgentEvent::Registered { supernode, .. } = &ev {
                self.registered = Some(*supernode);
            }
            self.seen.push(ev);
        }
    }

    fn kill(&mut self) {
        // Not a polite close: the thread's runtime is dropped with the thread's end, but we stop
        // it without closing sessions by aborting the process-less way: drop the command channel
        // after stopping nothing — simply never drive it again.
        self.stop.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn start_supernode(lab: &Lab, dir: &std::path::Path, n: usize, bootstrap: Option<&str>) -> Sn {
    use std::io::{BufRead, BufReader};
    let port = 4100 + n as u16;
    let control = dir.join(format!("sn{n}.sock"));
    let mut cmd = lab.command(&lab.server_ns(), env!("CARGO_BIN_EXE_supernoded"));
    cmd.args(["--listen", &format!("198.51.100.1:{port}")])
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
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let entry: voxmesh::identity::BootstrapEntry = v["node"].as_str().unwrap().parse().unwrap();
    Sn {
        proc: Proc {
            child,
            name: "supernoded",
        },
        key: entry.key,
        addr: format!("198.51.100.1:{port}").parse().unwrap(),
        control,
    }
}

fn status(sn: &Sn, users: bool) -> Option<serde_json::Value> {
    // The control socket lives in the host's filesystem: reachable from any namespace.
    rt().block_on(query_status(&sn.control, users)).ok()
}

/// Waits (bounded) until `cond` holds, draining client events meanwhile.
fn wait_until(
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

/// Has `asker` look up each of `targets`; returns the entries (None: not found / failed).
fn lookups(c: &mut Client, targets: &[UserId]) -> HashMap<UserId, Option<voxmesh::signal::Entry>> {
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
                    AgentEvent::Registered { supernode, .. } => c.registered = Some(supernode),
                    other => c.seen.push(other),
                }
            }
        }
    }
    got
}

#[test]
fn five_supernodes_two_hundred_clients_and_failures() {
    let test = "five_supernodes_two_hundred_clients";
    if !Lab::ready_or_skip(test) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let kinds = [
        LabNat::None,
        LabNat::FullCone,
        LabNat::RestrictedCone,
        LabNat::PortRestrictedCone,
        LabNat::Symmetric,
        LabNat::UdpBlocked,
    ];
    let mut hosts: Vec<String> = Vec::new();
    for (k, nat) in kinds.iter().enumerate() {
        let opts = if *nat == LabNat::None {
            BoxOpts::new(*nat)
        } else {
            BoxOpts::new(*nat).hosts(PER_BOX)
        };
        let info = lab.add(k as u32 + 1, &opts).unwrap();
        hosts.extend(info.hosts.iter().map(|h| h.ns.clone()));
    }
    let dir = std::env::temp_dir().join(format!("vx-meshlab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = start_supernode(&lab, &dir, 1, None);
    let boot = format!("{}@{}", first.key, first.addr);
    let mut sns = vec![first];
    for n in 2..=SUPERNODES {
        sns.push(start_supernode(&lab, &dir, n, Some(&boot)));
    }
    // The mesh settles: everyone sees everyone.
    let t0 = Instant::now();
    while !sns.iter().all(|s| {
        status(s, false)
            .is_some_and(|v| v["members"].as_array().map(|m| m.len()) == Some(SUPERNODES))
    }) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the mesh did not form"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("MESH formed in {:?}", t0.elapsed());

    // 200 clients: behind every NAT type (one public host, 10 per NAT box) and the rest on the
    // server's own network.
    let keys: Vec<(NodeKey, SocketAddr)> = sns.iter().map(|s| (s.key, s.addr)).collect();
    let mut namespaces: Vec<String> = hosts.clone();
    while namespaces.len() < CLIENTS {
        namespaces.push(lab.server_ns());
    }
    assert_eq!(namespaces.len(), 200);
    let mut clients: Vec<Client> = namespaces
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let mut list = keys.clone();
            list.rotate_left(i % SUPERNODES);
            Client::start(ns.clone(), list, (i % 250) as u8)
        })
        .collect();
    let took = wait_until(&mut clients, Duration::from_secs(60), |cs| {
        cs.iter().all(|c| c.registered.is_some())
    });
    eprintln!("REGISTERED 200 clients in {took:?}");
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
    let ids: Vec<UserId> = clients.iter().map(|c| c.id).collect();

    // Every client looks up every other.
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
                namespaces[i],
                bad.len(),
                &bad[..bad.len().min(5)]
            );
        }
        failures += bad.len();
    }
    assert_eq!(failures, 0, "failed lookups in the full matrix");
    eprintln!("LOOKUPS 200x199 all answered");

    // Presence: client 0 watches the UDP-blocked client and a NATed one; they leave politely.
    let watched = [hosts.len() - 1, 3];
    for w in watched {
        clients[0]
            .commands
            .blocking_send(AgentCommand::Watch(ids[w]))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    for w in watched {
        clients[w].stop.trigger(); // polite: sessions close, the supernode publishes at once
    }
    let t = Instant::now();
    wait_until(&mut clients, Duration::from_secs(10), |cs| {
        for w in watched {
            let got = cs[0].seen.iter().any(|e| matches!(e, AgentEvent::Presence { user, online: false, .. } if *user == ids[w]));
            if !got && t.elapsed() > Duration::from_secs(9) {
                eprintln!(
                    "DIAG no offline presence for client {w} ({})",
                    namespaces[w]
                );
            }
        }
        watched.iter().all(|w| cs[0].seen.iter().any(|e| matches!(e, AgentEvent::Presence { user, online: false, .. } if *user == ids[*w])))
    });
    eprintln!("PRESENCE offline reached the watcher in {:?}", t.elapsed());
    let mut gone: HashSet<usize> = watched.iter().copied().collect();

    // Kill supernodes one at a time down to two.
    let mut alive: Vec<usize> = (0..SUPERNODES).collect();
    for victim in [0usize, 2, 4] {
        let victim_id = sns[victim].key.id;
        // One client registered through the victim dies with it: its entry must stay findable,
        // marked stale.
        let lost = (0..clients.len())
            .find(|i| !gone.contains(i) && clients[*i].registered == Some(victim_id))
            .expect("the victim has clients");
        let _ = sns[victim].proc.child.kill();
        let _ = sns[victim].proc.child.wait();
        clients[lost].kill();
        gone.insert(lost);
        alive.retain(|s| *s != victim);
        let t = Instant::now();
        let live_ids: HashSet<UserId> = alive.iter().map(|s| sns[*s].key.id).collect();
        let took = wait_until(&mut clients, Duration::from_secs(10), |cs| {
            if t.elapsed() > Duration::from_millis(9900) {
                for (i, c) in cs.iter().enumerate().filter(|(i, _)| !gone.contains(i)) {
                    if !c.registered.is_some_and(|r| live_ids.contains(&r)) {
                        let errs: Vec<&AgentEvent> = c.seen.iter().rev().take(4).collect();
                        eprintln!(
                            "DIAG client {i} ({}) registered {:?}; recent {errs:?}",
                            namespaces[i], c.registered
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
        let t2 = Instant::now();
        loop {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for s in &alive {
                let v = status(&sns[*s], true).expect("status");
                for u in v["users"].as_array().unwrap() {
                    *counts.entry(u.as_str().unwrap().to_string()).or_default() += 1;
                }
            }
            let want = alive.len().min(3);
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
    for c in clients.iter_mut() {
        c.kill();
    }
    drop(sns);
    let _ = std::fs::remove_dir_all(&dir);
}
