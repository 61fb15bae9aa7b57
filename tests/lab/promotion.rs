//! Promotion for real (issue 13, acceptance 1 and the supernode half of 2): 20 `answer` clients
//! behind mixed NATs (4 public), one bootstrap `supernoded`, no `relayd`.
//! - The public clients prove their address by dial-back and become relays (the mesh wants 4 at
//!   least) and supernodes up to the floor of 3 (every record has 3 homes: the bootstrap and
//!   2 promoted clients); NATed clients never take a role.
//! - A call between two symmetric-NAT clients connects through a client relay (no relayd
//!   exists), with audio both ways; so does a call from a host whose network blocks UDP (the
//!   client relay serves TCP and TLS beside UDP).
//! - SIGKILL of the client hosting a promoted supernode: the clients registered through it
//!   register again within 10 s, and a lookup of one of them succeeds.
//! - SIGTERM of the client hosting the other one: its role goes off (leaving the mesh) and its
//!   clients are told to move, registering elsewhere within 2 s (no failure detection).
//!
//! Test knobs (hidden `answer` flags): `--promote-after 3` (uptime 3 s, jitter up to 0.75 s
//! instead of 5/15 min and 60 s), `--cpu-headroom 0.9` (the machine's idle share varies with
//! whatever else runs; the threshold logic is tested in `tests/sim/promotion_core.rs`) and
//! `--relay-allow-peer 198.51.100.0/24` (TEST-NET-2 peers, as the lab's relayd gets).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::calls::{CallLab, SN, bootstrap_supernode, program, tmp};
use crate::support::common::Proc;
use crate::support::failover::{
    audio_flows, hang_up_and_check_gaps, relay_ip_of, relayed_tone_call, watch_failover,
};
use voxlab::{BoxOpts, Lab, LabNat};

/// The acceptance bound for relays and supernodes to appear, from the clients' start.
const PROMOTION_LIMIT: Duration = Duration::from_secs(60);
/// Re-registration after the primary's death: SWIM declares it dead within probe period (1 s)
/// plus probe RTT (0.3 s) plus suspicion (3 s); the standby then tells the client at once, and
/// registering takes one round trip. 10 s is the acceptance bound, over twice that.
const FAILOVER_LIMIT: Duration = Duration::from_secs(10);

/// A graceful stop's clients are told by the mesh at once: one notice and one registration
/// round trip on a busy host, well under SWIM's detection time of a silent node (4.3 s).
const GRACEFUL_LIMIT: Duration = Duration::from_secs(2);

/// The lab box whose host blocks UDP (it runs no client of the 20; calls only).
const BLOCKED_BOX: u32 = 10;

/// Every client's events, merged: (client index, event).
type Events = mpsc::Receiver<(usize, serde_json::Value)>;

fn forward(
    i: usize,
    child: &mut std::process::Child,
    tx: mpsc::Sender<(usize, serde_json::Value)>,
) {
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if let Ok(v) = serde_json::from_str(&line)
                && tx.send((i, v)).is_err()
            {
                return;
            }
        }
    });
}

/// Waits (at most until `deadline`) for events until `done` holds; every event goes to `seen`.
fn wait_until(
    rx: &Events,
    deadline: Instant,
    seen: &mut Vec<(usize, serde_json::Value, Instant)>,
    mut done: impl FnMut(&[(usize, serde_json::Value, Instant)]) -> bool,
) -> bool {
    loop {
        if done(seen) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, v)) => seen.push((i, v, Instant::now())),
            Err(_) => return done(seen),
        }
    }
}

fn roles_on<'a>(
    seen: &'a [(usize, serde_json::Value, Instant)],
    role: &'a str,
) -> impl Iterator<Item = &'a (usize, serde_json::Value, Instant)> + 'a {
    seen.iter()
        .filter(move |(_, v, _)| v["event"] == "role" && v["role"] == role && v["state"] == "on")
}

/// Whether every client in `clients` registered again after a failover among `events`.
fn all_registered_again(
    events: &[(usize, serde_json::Value, Instant)],
    mut clients: impl Iterator<Item = usize>,
) -> bool {
    clients.all(|idx| {
        events
            .iter()
            .any(|(i, v, _)| *i == idx && v["event"] == "registered" && v["failover"] == true)
    })
}

/// How long after `since` the last registration among `events` of a client numbered from
/// `first` came.
fn latest_registration(
    events: &[(usize, serde_json::Value, Instant)],
    first: usize,
    since: Instant,
) -> Duration {
    events
        .iter()
        .filter(|(i, v, _)| *i >= first && v["event"] == "registered")
        .map(|e| e.2 - since)
        .max()
        .unwrap()
}

/// The tests of this area run one at a time: each runs 20 clients and a supernode in a lab of
/// its own, which two shared cores cannot run twice over and still time sub-second moves.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The promotion lab, running: 20 `answer` clients (index = position in `hosts`), the
/// bootstrap supernode, and every client's events so far.
struct Promoted {
    _serial: std::sync::MutexGuard<'static, ()>,
    m: CallLab,
    dir: std::path::PathBuf,
    /// Each client's namespace and whether it is public.
    hosts: Vec<(String, bool)>,
    clients: Vec<Proc>,
    /// The public clients' indexes.
    public: Vec<usize>,
    tx: mpsc::Sender<(usize, serde_json::Value)>,
    rx: Events,
    seen: Vec<(usize, serde_json::Value, Instant)>,
    /// When the clients were started.
    start: Instant,
}

/// Builds the lab, starts the bootstrap and the 20 clients, and waits (bounded by
/// [`PROMOTION_LIMIT`]) until `promoted` holds of their events; asserts it does. `None` when
/// the lab cannot run here.
fn promoted_lab(
    test: &str,
    promoted: impl FnMut(&[(usize, serde_json::Value, Instant)]) -> bool,
) -> Option<Promoted> {
    if !Lab::ready_or_skip(test) {
        return None;
    }
    // A test that failed holding the lock poisons it; the next one still runs.
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new().unwrap();
    // Boxes 1-4: public hosts; then 16 hosts behind every NAT kind that can host a client.
    let layout = [
        (1, LabNat::None, 1),
        (2, LabNat::None, 1),
        (3, LabNat::None, 1),
        (4, LabNat::None, 1),
        (5, LabNat::FullCone, 4),
        (6, LabNat::RestrictedCone, 4),
        (7, LabNat::PortRestrictedCone, 4),
        (8, LabNat::Symmetric, 2),
        (9, LabNat::Symmetric, 2),
    ];
    let mut hosts: Vec<(String, bool)> = Vec::new();
    for (index, nat, n) in layout {
        let opts = if n > 1 {
            BoxOpts::new(nat).hosts(n)
        } else {
            BoxOpts::new(nat)
        };
        let info = lab.add(index, &opts).unwrap();
        hosts.extend(
            info.hosts
                .iter()
                .map(|h| (h.ns.clone(), nat == LabNat::None)),
        );
    }
    assert_eq!(hosts.len(), 20);
    // Box 10: a host whose network blocks UDP, for calls only (not one of the 20 clients).
    lab.add(BLOCKED_BOX, &BoxOpts::new(LabNat::UdpBlocked))
        .unwrap();
    let dir = tmp(test);
    let (sn, node) = bootstrap_supernode(&lab, &dir, &[SN]);
    let m = CallLab {
        lab,
        node,
        dir: dir.clone(),
        supernode: Some(sn),
        relay: None,
    };

    let (tx, rx) = mpsc::channel();
    let knobs = [
        "--promote-after",
        "3",
        "--cpu-headroom",
        "0.9",
        "--relay-allow-peer",
        "198.51.100.0/24",
    ];
    let start = Instant::now();
    let mut clients: Vec<Proc> = Vec::new();
    for (i, (ns, _)) in hosts.iter().enumerate() {
        clients.push(spawn_answer(&m, ns, &m.node, &knobs, i, &tx));
    }
    let public: Vec<usize> = (0..hosts.len()).filter(|i| hosts[*i].1).collect();
    let mut seen = Vec::new();
    let ok = wait_until(&rx, start + PROMOTION_LIMIT, &mut seen, promoted);
    assert!(ok, "promoted within {PROMOTION_LIMIT:?}: {seen:#?}");
    Some(Promoted {
        _serial: serial,
        m,
        dir,
        hosts,
        clients,
        public,
        tx,
        rx,
        seen,
        start,
    })
}

/// Starts `answer` in `ns` pointed at the supernode entry `via`, with its own identity
/// (`c{i}.key`) and `args`; its events go to `tx` as client `i`'s.
fn spawn_answer(
    m: &CallLab,
    ns: &str,
    via: &str,
    args: &[&str],
    i: usize,
    tx: &mpsc::Sender<(usize, serde_json::Value)>,
) -> Proc {
    let mut c = m
        .program_via(ns, &program("answer", env!("CARGO_BIN_EXE_answer")), via)
        .args(args)
        .arg("--identity")
        .arg(m.dir.join(format!("c{i}.key")))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn answer");
    forward(i, &mut c, tx.clone());
    Proc {
        child: c,
        name: "answer",
    }
}

/// Starts a client on hosts `host` and `host + 1` behind box `index` that registers through the promoted supernode `entry` (the
/// bootstrap second), as clients `first` and `first + 1`, and waits (20 s: a registration and
/// a standby's, on a busy host) until each registered with its warm standby.
fn clients_via(
    m: &CallLab,
    entry: &str,
    (index, host): (u32, usize),
    first: usize,
    tx: &mpsc::Sender<(usize, serde_json::Value)>,
    rx: &Events,
    seen: &mut Vec<(usize, serde_json::Value, Instant)>,
) -> Vec<(usize, Proc)> {
    let args = ["-s", &m.node, "--no-relay", "--no-supernode"];
    let clients: Vec<(usize, Proc)> = (0..2)
        .map(|k| {
            let ns = m.host_ns(index, host + k);
            (first + k, spawn_answer(m, &ns, entry, &args, first + k, tx))
        })
        .collect();
    let ready = wait_until(rx, Instant::now() + Duration::from_secs(20), seen, |s| {
        clients.iter().all(|(idx, _)| {
            s.iter()
                .any(|(i, v, _)| i == idx && v["event"] == "registered")
                && s.iter().any(|(i, v, _)| {
                    i == idx && v["event"] == "standby" && !v["supernode"].is_null()
                })
        })
    });
    assert!(
        ready,
        "clients register through the promoted supernode {entry} with a standby: {seen:#?}"
    );
    clients
}

/// Polls the bootstrap's status (bounded: 10 s, membership and relay hellos settle within a
/// SWIM round of the joins) until `done` holds of it; returns the last status.
fn bootstrap_status(m: &CallLab, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = m
            .lab
            .command(&m.lab.server_ns(), env!("CARGO_BIN_EXE_supernoded"))
            .args(["status", "--json", "--control"])
            .arg(m.dir.join("sn.sock"))
            .output()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        if done(&v) || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The relays' served addresses by client index, from their `role` events.
fn relays_of(seen: &[(usize, serde_json::Value, Instant)]) -> Vec<(usize, String)> {
    roles_on(seen, "relay")
        .map(|e| (e.0, e.1["serves"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn public_clients_become_relays_and_supernodes_and_carry_calls_and_failover() {
    // All public clients relay, and the supernodes reached the floor.
    let Some(p) = promoted_lab("promotion", |s| {
        let relays: std::collections::HashSet<usize> = roles_on(s, "relay").map(|e| e.0).collect();
        relays.len() == 4 && roles_on(s, "supernode").count() >= 2
    }) else {
        return;
    };
    let Promoted {
        _serial,
        m,
        dir,
        hosts,
        clients,
        public,
        tx,
        rx,
        mut seen,
        start,
    } = p;
    assert_eq!(public.len(), 4);
    let took = start.elapsed();
    let last = |role| roles_on(&seen, role).map(|e| e.2 - start).max().unwrap();
    eprintln!(
        "promotion: 4 relays by {:.1} s, supernodes at the floor of 3 (bootstrap + 2) by {:.1} s, \
         all by {took:.1?}",
        last("relay").as_secs_f64(),
        last("supernode").as_secs_f64()
    );
    let sn_hosts: Vec<usize> = roles_on(&seen, "supernode").map(|e| e.0).collect();
    assert_eq!(sn_hosts.len(), 2, "no more than the floor needs: {seen:#?}");
    for (i, v, _) in &seen {
        if v["event"] == "role" {
            assert!(hosts[*i].1, "client {i} behind a NAT took a role: {v}");
        }
    }

    // The bootstrap sees it too: 3 live members, 4 relays (the roles' hellos and joins).
    let status = bootstrap_status(&m, |v| {
        v["members"].as_array().map_or(0, Vec::len) == 3
            && v["relays"].as_array().map_or(0, Vec::len) == 4
    });
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    assert_eq!(
        status["relays"].as_array().map(Vec::len),
        Some(4),
        "{status}"
    );

    // A call between two symmetric-NAT hosts: only a relay connects them, and only clients relay.
    let c = m.tone_call(8, 9, &[], "sym");
    assert_eq!(
        c.connected["path"], "relayed",
        "symmetric ↔ symmetric: {}",
        c.connected
    );
    // Audio both ways: `tone_call` checked an unbroken second of each far end's tone.
    eprintln!(
        "relayed call's tone shares (callee, caller): {:?}",
        c.shares
    );
    let relays: Vec<String> = relays_of(&seen).into_iter().map(|r| r.1).collect();
    let relay_ips: Vec<&str> = relays
        .iter()
        .map(|r| r.rsplit_once(':').unwrap().0)
        .collect();
    let relay_ip =
        relay_ip_of(&c.connected).unwrap_or_else(|| panic!("a relayed candidate: {}", c.connected));
    assert!(
        relay_ips.contains(&relay_ip.as_str()),
        "the relay is a promoted client's ({relay_ips:?}): {}",
        c.connected
    );
    eprintln!("relayed call: {} via client relays {relays:?}", c.connected);

    // A caller whose network blocks UDP: it reaches the bootstrap over TCP, and a client relay
    // over TCP too (promoted relays serve TCP and TLS on their port, as relayd does).
    let b = m.tone_call(BLOCKED_BOX, 9, &[], "blocked");
    assert_eq!(
        b.connected["path"], "relayed",
        "UDP-blocked caller: {}",
        b.connected
    );
    assert_eq!(b.connected["local"]["type"], "relay", "{}", b.connected);
    let ip = relay_ip_of(&b.connected).expect("a relayed candidate");
    assert!(
        relay_ips.contains(&ip.as_str()),
        "the UDP-blocked caller's relay is a promoted client's ({relay_ips:?}): {}",
        b.connected
    );

    // Clients registered through a promoted supernode (it first in their list, the bootstrap
    // second), each with its warm standby.
    let (host_of_sn, entry) = roles_on(&seen, "supernode")
        .map(|e| (e.0, e.1["serves"].as_str().unwrap().to_string()))
        .next()
        .unwrap();
    let moved = clients_via(&m, &entry, (5, 0), 100, &tx, &rx, &mut seen);
    let users: Vec<String> = moved
        .iter()
        .map(|(idx, _)| {
            seen.iter()
                .find(|(i, v, _)| i == idx && v["event"] == "registered")
                .unwrap()
                .1["user"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let before = seen.len();
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(clients[host_of_sn].child.id() as i32, libc::SIGKILL) };
    assert_eq!(rc, 0);
    let killed = Instant::now();
    let failed_over = wait_until(&rx, killed + FAILOVER_LIMIT, &mut seen, |s| {
        all_registered_again(&s[before..], moved.iter().map(|m| m.0))
    });
    assert!(
        failed_over,
        "re-registered within {FAILOVER_LIMIT:?}: {:#?}",
        &seen[before..]
    );
    let worst = latest_registration(&seen[before..], 100, killed);
    eprintln!("failover: clients of the killed supernode registered again after {worst:.1?}");
    // Presence recovered: a lookup of one of them (through the bootstrap) finds it online.
    let out = m
        .program(
            &m.host_ns(6, 0),
            &program("dial", env!("CARGO_BIN_EXE_dial")),
        )
        .arg("--identity")
        .arg(dir.join("looker.key"))
        .args(["--lookup", &users[0]])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "lookup of {}: {text}", users[0]);
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["online"], true, "{v}");

    // Graceful: SIGTERM to the client hosting the other promoted supernode. Its role leaves the
    // mesh first, whose members tell its clients at once: no failure detection to wait for.
    let (host2, entry2) = roles_on(&seen, "supernode")
        .map(|e| (e.0, e.1["serves"].as_str().unwrap().to_string()))
        .find(|(h, _)| *h != host_of_sn)
        .unwrap();
    let moved2 = clients_via(&m, &entry2, (6, 1), 200, &tx, &rx, &mut seen);
    let before = seen.len();
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(clients[host2].child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let stopped = Instant::now();
    let redirected = wait_until(&rx, stopped + FAILOVER_LIMIT, &mut seen, |s| {
        let off = s[before..].iter().any(|(i, v, _)| {
            *i == host2 && v["event"] == "role" && v["role"] == "supernode" && v["state"] == "off"
        });
        off && all_registered_again(&s[before..], moved2.iter().map(|m| m.0))
    });
    assert!(
        redirected,
        "SIGTERM: role off and clients moved: {:#?}",
        &seen[before..]
    );
    let worst = latest_registration(&seen[before..], 200, stopped);
    eprintln!("graceful: clients of the stopped supernode registered again after {worst:.1?}");
    // Told, not detected: faster than SWIM could declare a silent node dead (4.3 s).
    assert!(worst < GRACEFUL_LIMIT, "graceful move took {worst:?}");
    drop(moved2);
    eprintln!("whole promotion test: {:.1?}", start.elapsed());
    drop(moved);
    drop(clients);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_call_on_a_client_relay_moves_to_another_client_relay_within_1_s_when_its_host_dies() {
    // Acceptance 2, the relay half, with client relays: a relayed call between the two
    // symmetric NATs ranks the promoted clients' relays and keeps a standby on a second one;
    // SIGKILL of the `answer` whose relay carries the call (it says goodbye to nobody).
    // Consent on the relayed path (200 ms probes, 600 ms timeout) notices and ICE moves the
    // call to the standby pair: the gap is measured as `relay_failover` measures it.
    let test = "promotion_relay_failover";
    let Some(p) = promoted_lab(test, |s| {
        let relays: std::collections::HashSet<usize> = roles_on(s, "relay").map(|e| e.0).collect();
        relays.len() == 4
    }) else {
        return;
    };
    let Promoted {
        _serial,
        m,
        dir,
        mut clients,
        rx,
        mut seen,
        start,
        ..
    } = p;
    let relays = relays_of(&seen);
    eprintln!(
        "{test}: 4 client relays by {:.1?}: {relays:?}",
        start.elapsed()
    );
    // The bootstrap offers them: each relay role's hello reached it.
    let status = bootstrap_status(&m, |v| v["relays"].as_array().map_or(0, Vec::len) == 4);
    assert_eq!(
        status["relays"].as_array().map(Vec::len),
        Some(4),
        "{status}"
    );
    let ip_of = |serves: &str| serves.rsplit_once(':').unwrap().0.to_string();
    let (mut alice, mut bob, ip) = relayed_tone_call(&m, &m.host_ns(8, 1), &m.host_ns(9, 1), test);
    let carrier = relays
        .iter()
        .find(|(_, serves)| ip_of(serves) == ip)
        .unwrap_or_else(|| panic!("the call's relay {ip} is a promoted client's: {relays:?}"))
        .0;
    eprintln!(
        "{test}: killing client {carrier} at {:.1?}",
        start.elapsed()
    );
    let (stall, moves) = watch_failover(&mut alice, &mut bob, || {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(clients[carrier].child.id() as i32, libc::SIGKILL) };
        assert_eq!(rc, 0);
    });
    for (moved, who) in moves.iter().zip(["caller", "callee"]) {
        let now = relay_ip_of(moved)
            .unwrap_or_else(|| panic!("the {who} stays relayed (symmetric NATs): {moved}"));
        assert!(
            now != ip && relays.iter().any(|(_, serves)| ip_of(serves) == now),
            "the {who}'s call moved from {ip} to another client's relay ({relays:?}): {moved}"
        );
        eprintln!("{test}: {who} moved: {moved}");
    }
    audio_flows(&mut alice, &mut bob, 0.8, "after the move");
    hang_up_and_check_gaps(
        &m,
        &mut alice,
        &mut bob,
        &stall,
        &format!("{test}: client {carrier}'s relay {ip} killed"),
    );
    // No role went off meanwhile: the dial-backs repeated every 10 polls (7.5 s here), from
    // two supernodes once a second one was promoted, kept proving every relay reachable.
    let now = Instant::now();
    while let Ok((i, v)) = rx.try_recv() {
        seen.push((i, v, now));
    }
    let sns: Vec<(usize, Duration)> = roles_on(&seen, "supernode")
        .map(|e| (e.0, e.2 - start))
        .collect();
    let off: Vec<_> = seen
        .iter()
        .filter(|(i, v, _)| *i != carrier && v["event"] == "role" && v["state"] == "off")
        .collect();
    assert!(off.is_empty(), "no surviving role went off: {off:#?}");
    eprintln!(
        "{test}: promoted supernodes (client, when) {sns:.1?}, no role lost; whole test {:.1?}",
        start.elapsed()
    );
    // Reap the killed one; the others stop with the lab.
    drop(clients.remove(carrier));
    drop(clients);
    drop(m);
    let _ = std::fs::remove_dir_all(&dir);
}
