//! The supernode mesh on loopback: the scenario of `tests/lab/mesh_lab.rs` (5 `supernoded` daemons,
//! 200 clients, the full lookup matrix, presence, SIGKILLs down to two supernodes with
//! re-registration, min(3, live) homes and a stale entry for a client lost with its supernode)
//! without network namespaces, so it runs anywhere without root. Supernodes listen on
//! 127.0.0.1 with ports the kernel picks; each client binds its own loopback address, so the
//! supernodes' per-source handshake limits see 200 distinct sources, as they would on a real
//! network. Traffic stays on 127.0.0.0/8. Shared with the lab test: `tests/support/mesh_proc.rs`.

use crate::support::mesh_proc as mesh_proc_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use mesh_proc_support::{CLIENTS, Place, SUPERNODES, Sn, run_scenario, start_supernode};

fn supernode(dir: &std::path::Path, n: usize, bootstrap: Option<&str>) -> Sn {
    let cmd = Command::new(env!("CARGO_BIN_EXE_supernoded"));
    start_supernode(cmd, "127.0.0.1:0".parse().unwrap(), dir, n, bootstrap)
}

/// Client `i`'s address: 127.0.1.1 to 127.0.1.200 (one source address per client; Linux routes
/// all of 127.0.0.0/8 to the loopback interface).
fn client_addr(i: usize) -> SocketAddr {
    let host = u32::from(Ipv4Addr::new(127, 0, 1, 1)) + i as u32;
    SocketAddr::new(Ipv4Addr::from(host).into(), 0)
}

#[test]
fn five_supernodes_two_hundred_clients_and_failures_on_loopback() {
    let dir = tempfile::Builder::new()
        .prefix("vx-meshloop-")
        .tempdir()
        .unwrap();
    let first = supernode(dir.path(), 1, None);
    let boot = format!("{}@{}", first.key, first.addr);
    let mut sns = vec![first];
    for n in 2..=SUPERNODES {
        sns.push(supernode(dir.path(), n, Some(&boot)));
    }
    let places: Vec<Place> = (0..CLIENTS).map(|i| Place::Bound(client_addr(i))).collect();
    // Client 0 watches two others, which then leave politely.
    run_scenario(sns, &places, &[CLIENTS - 1, 3], Duration::ZERO);
}
