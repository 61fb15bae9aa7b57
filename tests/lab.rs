//! Test tier `lab`: The network-namespace NAT lab: these need root and `scripts/lab`; without root they skip
//! (and under `CI=true` they fail), see `voxlab::Lab::ready_or_skip`.
//!
//! One test binary; each file under `tests/lab/` is a module named after the test binary it
//! used to be, and `tests/support/` holds the helpers every tier shares.

mod support;

#[path = "lab/call_failure.rs"]
mod call_failure;
#[path = "lab/call_lab.rs"]
mod call_lab;
#[path = "lab/call_matrix.rs"]
mod call_matrix;
#[path = "lab/call_security.rs"]
mod call_security;
#[path = "lab/call_tcp.rs"]
mod call_tcp;
#[path = "lab/lab_selftest.rs"]
mod lab_selftest;
#[path = "lab/mesh_lab.rs"]
mod mesh_lab;
#[path = "lab/natprobe_lab.rs"]
mod natprobe_lab;
#[path = "lab/netem.rs"]
mod netem;
#[path = "lab/promotion.rs"]
mod promotion;
#[path = "lab/relay_failover.rs"]
mod relay_failover;
#[path = "lab/relayd_lab.rs"]
mod relayd_lab;
