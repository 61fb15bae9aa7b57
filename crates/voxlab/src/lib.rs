//! The NAT lab: network namespaces, veth links and nftables NATs built by `scripts/lab`, plus
//! the pieces tests and benchmarks need in-process (entering a namespace, the path impairment
//! forwarder, load generators). Nothing here runs in production paths.

pub mod demo;
mod harness;
pub mod netem;
mod poller;
pub mod snload;
pub mod stunload;
pub mod turnload;

pub use harness::{
    BoxInfo, BoxOpts, FilterState, HostInfo, Lab, LabNat, SERVER4, SERVER6, in_netns,
};
