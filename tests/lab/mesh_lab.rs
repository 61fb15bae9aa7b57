//! The supernode mesh for real: 5 `supernoded` daemons and 200 clients, in the lab, clients
//! behind every NAT type (UDP-blocked ones over the TCP fallback). Every client can look up every
//! other; presence reaches watchers; after the mesh settles, supernodes are SIGKILLed one at a
//! time down to two, and each time within 10 s every client is registered again, every lookup
//! succeeds, every record sits on min(3, live) homes, and a client caught in the gap (it died
//! with its supernode) is served as its last known entry, marked stale — not "unknown".
//! The same scenario without namespaces: `tests/loopback/mesh_loopback.rs`; shared with it:
//! `tests/support/mesh_proc.rs`.

use crate::support::mesh_proc as mesh_proc_support;

use std::net::SocketAddr;
use std::time::Duration;

use mesh_proc_support::{CLIENTS, Place, SUPERNODES, run_scenario, start_supernode};
use voxlab::{BoxOpts, Lab, LabNat};

const PER_BOX: u32 = 10;

fn supernode(
    lab: &Lab,
    dir: &std::path::Path,
    n: usize,
    bootstrap: Option<&str>,
) -> mesh_proc_support::Sn {
    let listen: SocketAddr = format!("198.51.100.1:{}", 4100 + n as u16).parse().unwrap();
    let cmd = lab.command(&lab.server_ns(), env!("CARGO_BIN_EXE_supernoded"));
    start_supernode(cmd, listen, dir, n, bootstrap)
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
    let dir = tempfile::Builder::new()
        .prefix("vx-meshlab-")
        .tempdir()
        .unwrap();
    let first = supernode(&lab, dir.path(), 1, None);
    let boot = format!("{}@{}", first.key, first.addr);
    let mut sns = vec![first];
    for n in 2..=SUPERNODES {
        sns.push(supernode(&lab, dir.path(), n, Some(&boot)));
    }

    // 200 clients: behind every NAT type (one public host, 10 per NAT box) and the rest on the
    // server's own network.
    let mut places: Vec<Place> = hosts.iter().cloned().map(Place::Netns).collect();
    while places.len() < CLIENTS {
        places.push(Place::Netns(lab.server_ns()));
    }
    // Presence: client 0 watches the UDP-blocked client and a NATed one; they leave politely.
    let watched = [hosts.len() - 1, 3];
    run_scenario(sns, &places, &watched, Duration::from_millis(500));
}
