//! The NAT lab: network namespaces, veth links and nftables NATs built by `scripts/lab`, plus
//! the pieces tests and benchmarks need in-process (entering a namespace, the path impairment
//! forwarder, load generators, the echo baseline), and the one discrete-event network simulator
//! the simulated tests run on ([`sim`]). Nothing here runs in production paths: this crate is
//! not part of the installed product (`cargo install voxmesh` does not build it).

pub mod audioproc;
pub mod capture;
pub mod demo;
pub mod demo_calls;
pub mod echo;
pub mod events;
mod harness;
pub mod mediaref;
pub mod netem;
mod poller;
pub mod sim;
pub mod snload;
pub mod stunload;
pub mod turnload;

pub use harness::{
    BoxInfo, BoxOpts, FilterState, HostInfo, Lab, LabNat, SERVER4, SERVER6, in_netns,
};

/// The path of the `voxlab` executable for tests that run it in a namespace: `$VOXLAB` if set,
/// else `voxlab` next to the running test's directory (`target/<profile>/voxlab`, built by
/// `cargo build --workspace --bins`, which `scripts/test` runs first). Panics if it is missing.
pub fn exe() -> String {
    if let Some(p) = std::env::var_os("VOXLAB") {
        return p.to_string_lossy().into_owned();
    }
    let me = std::env::current_exe().expect("cannot find the test executable");
    // target/<profile>/deps/<test> -> target/<profile>/voxlab
    let p = me
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("voxlab"))
        .expect("test executable outside target/");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p.to_string_lossy().into_owned()
}
