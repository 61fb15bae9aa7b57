//! Promotion for real (issue 13, acceptance 1 and the supernode half of 2): 20 `answer` clients
//! behind mixed NATs (4 public), one bootstrap `supernoded`, no `relayd`.
//! - The public clients prove their address by dial-back and become relays (the mesh wants 4 at
//!   least) and supernodes up to the floor of 3 (every record has 3 homes: the bootstrap and
//!   2 promoted clients); NATed clients never take a role.
//! - A call between two symmetric-NAT clients connects through a client relay (no relayd
//!   exists), with audio both ways.
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

use crate::support::calls::{CallLab, program, tmp};
use crate::support::common::Proc;
use voxlab::{BoxOpts, Lab, LabNat};

const SN: &str = "198.51.100.1:3478";
/// The acceptance bound for relays and supernodes to appear, from the clients' start.
const PROMOTION_LIMIT: Duration = Duration::from_secs(60);
/// Re-registration after the primary's death: SWIM declares it dead within probe period (1 s)
/// plus probe RTT (0.3 s) plus suspicion (3 s); the standby then tells the client at once, and
/// registering takes one round trip. 10 s is the acceptance bound, over twice that.
const FAILOVER_LIMIT: Duration = Duration::from_secs(10);

/// A graceful stop's clients are told by the mesh at once: one notice and one registration
/// round trip on a busy host, well under SWIM's detection time of a silent node (4.3 s).
const GRACEFUL_LIMIT: Duration = Duration::from_secs(2);

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

#[test]
fn public_clients_become_relays_and_supernodes_and_carry_calls_and_failover() {
    let test = "promotion";
    if !Lab::ready_or_skip(test) {
        return;
    }
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
    let dir = tmp("promotion");
    let mut sn = lab
        .command(
            &lab.server_ns(),
            program("supernoded", env!("CARGO_BIN_EXE_supernoded")),
        )
        .args(["--listen", SN, "--no-rfc5780", "--identity"])
        .arg(dir.join("sn.key"))
        .arg("--control")
        .arg(dir.join("sn.sock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn supernoded");
    let mut first = String::new();
    BufReader::new(sn.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&first).expect("supernoded's listening line");
    let node = v["node"].as_str().unwrap().to_string();
    let m = CallLab {
        lab,
        node,
        dir: dir.clone(),
        supernode: Some(Proc {
            child: sn,
            name: "supernoded",
        }),
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
        let mut c = m
            .program(ns, &program("answer", env!("CARGO_BIN_EXE_answer")))
            .arg("--identity")
            .arg(dir.join(format!("c{i}.key")))
            .args(knobs)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn answer");
        forward(i, &mut c, tx.clone());
        clients.push(Proc {
            child: c,
            name: "answer",
        });
    }
    let public: Vec<usize> = (0..hosts.len()).filter(|i| hosts[*i].1).collect();
    let mut seen = Vec::new();
    let promoted = wait_until(&rx, start + PROMOTION_LIMIT, &mut seen, |s| {
        let relays: std::collections::HashSet<usize> = roles_on(s, "relay").map(|e| e.0).collect();
        let supernodes = roles_on(s, "supernode").count();
        relays.len() == public.len() && supernodes >= 2
    });
    let took = start.elapsed();
    assert!(
        promoted,
        "within {PROMOTION_LIMIT:?}: 4 relays and 2 promoted supernodes: {seen:#?}"
    );
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
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let out = m
            .lab
            .command(&m.lab.server_ns(), env!("CARGO_BIN_EXE_supernoded"))
            .args(["status", "--json", "--control"])
            .arg(dir.join("sn.sock"))
            .output()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let members = v["members"].as_array().map_or(0, Vec::len);
        let relays = v["relays"].as_array().map_or(0, Vec::len);
        // Membership settles within a SWIM round of the join; bounded by `deadline`.
        if (members == 3 && relays == 4) || Instant::now() >= deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
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
    let relays: Vec<String> = roles_on(&seen, "relay")
        .map(|e| e.1["serves"].as_str().unwrap().to_string())
        .collect();
    let relay_ips: Vec<&str> = relays
        .iter()
        .map(|r| r.rsplit_once(':').unwrap().0)
        .collect();
    let relayed = ["local", "remote"]
        .iter()
        .map(|side| &c.connected[side])
        .find(|cand| cand["type"] == "relay")
        .unwrap_or_else(|| panic!("a relayed candidate: {}", c.connected));
    let relay_ip = relayed["addr"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .0;
    assert!(
        relay_ips.contains(&relay_ip),
        "the relay is a promoted client's ({relay_ips:?}): {}",
        c.connected
    );
    eprintln!("relayed call: {} via client relays {relays:?}", c.connected);

    // Clients registered through a promoted supernode (it first in their list, the bootstrap
    // second), each with its warm standby.
    let (host_of_sn, entry) = roles_on(&seen, "supernode")
        .map(|e| (e.0, e.1["serves"].as_str().unwrap().to_string()))
        .next()
        .unwrap();
    let mut moved = Vec::new();
    for k in 0..2 {
        let ns = m.host_ns(5, k);
        let mut c = m
            .program_via(
                &ns,
                &program("answer", env!("CARGO_BIN_EXE_answer")),
                &entry,
            )
            .args(["-s", &m.node, "--no-relay", "--no-supernode", "--identity"])
            .arg(dir.join(format!("moved{k}.key")))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn answer");
        let idx = 100 + k;
        forward(idx, &mut c, tx.clone());
        moved.push((
            idx,
            Proc {
                child: c,
                name: "answer",
            },
        ));
    }
    let ready = wait_until(
        &rx,
        Instant::now() + Duration::from_secs(20),
        &mut seen,
        |s| {
            moved.iter().all(|(idx, _)| {
                s.iter()
                    .any(|(i, v, _)| i == idx && v["event"] == "registered")
                    && s.iter().any(|(i, v, _)| {
                        i == idx && v["event"] == "standby" && !v["supernode"].is_null()
                    })
            })
        },
    );
    assert!(
        ready,
        "clients register through the promoted supernode with a standby: {seen:#?}"
    );
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
        moved.iter().all(|(idx, _)| {
            s[before..]
                .iter()
                .any(|(i, v, _)| i == idx && v["event"] == "registered" && v["failover"] == true)
        })
    });
    assert!(
        failed_over,
        "re-registered within {FAILOVER_LIMIT:?}: {:#?}",
        &seen[before..]
    );
    let worst = seen[before..]
        .iter()
        .filter(|(i, v, _)| *i >= 100 && v["event"] == "registered")
        .map(|e| e.2 - killed)
        .max()
        .unwrap();
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
    let mut moved2 = Vec::new();
    for k in 0..2 {
        let ns = m.host_ns(6, k + 1);
        let mut c = m
            .program_via(
                &ns,
                &program("answer", env!("CARGO_BIN_EXE_answer")),
                &entry2,
            )
            .args(["-s", &m.node, "--no-relay", "--no-supernode", "--identity"])
            .arg(dir.join(format!("moved2-{k}.key")))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn answer");
        let idx = 200 + k;
        forward(idx, &mut c, tx.clone());
        moved2.push((
            idx,
            Proc {
                child: c,
                name: "answer",
            },
        ));
    }
    let ready = wait_until(
        &rx,
        Instant::now() + Duration::from_secs(20),
        &mut seen,
        |s| {
            moved2.iter().all(|(idx, _)| {
                s.iter()
                    .any(|(i, v, _)| i == idx && v["event"] == "registered")
                    && s.iter().any(|(i, v, _)| {
                        i == idx && v["event"] == "standby" && !v["supernode"].is_null()
                    })
            })
        },
    );
    assert!(
        ready,
        "clients register through the second promoted supernode: {seen:#?}"
    );
    let before = seen.len();
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(clients[host2].child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let stopped = Instant::now();
    let redirected = wait_until(&rx, stopped + FAILOVER_LIMIT, &mut seen, |s| {
        let off = s[before..].iter().any(|(i, v, _)| {
            *i == host2 && v["event"] == "role" && v["role"] == "supernode" && v["state"] == "off"
        });
        off && moved2.iter().all(|(idx, _)| {
            s[before..]
                .iter()
                .any(|(i, v, _)| i == idx && v["event"] == "registered" && v["failover"] == true)
        })
    });
    assert!(
        redirected,
        "SIGTERM: role off and clients moved: {:#?}",
        &seen[before..]
    );
    let worst = seen[before..]
        .iter()
        .filter(|(i, v, _)| *i >= 200 && v["event"] == "registered")
        .map(|e| e.2 - stopped)
        .max()
        .unwrap();
    eprintln!("graceful: clients of the stopped supernode registered again after {worst:.1?}");
    // Told, not detected: faster than SWIM could declare a silent node dead (4.3 s).
    assert!(worst < GRACEFUL_LIMIT, "graceful move took {worst:?}");
    drop(moved2);
    eprintln!("whole promotion test: {:.1?}", start.elapsed());
    drop(moved);
    drop(clients);
    let _ = std::fs::remove_dir_all(&dir);
}
