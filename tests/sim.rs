//! Test tier `sim`: The sans-IO cores in one process on simulated, seeded networks and clocks (no sockets).
//!
//! One test binary; each file under `tests/sim/` is a module named after the test binary it
//! used to be, and `tests/support/` holds the helpers every tier shares.

mod support;

#[path = "sim/agent_race.rs"]
mod agent_race;
#[path = "sim/binding_service.rs"]
mod binding_service;
#[path = "sim/ice_sim.rs"]
mod ice_sim;
#[path = "sim/media_pair.rs"]
mod media_pair;
#[path = "sim/mesh_scale.rs"]
mod mesh_scale;
#[path = "sim/mesh_sim.rs"]
mod mesh_sim;
#[path = "sim/pop_sim.rs"]
mod pop_sim;
#[path = "sim/probe_sim.rs"]
mod probe_sim;
#[path = "sim/promotion_core.rs"]
mod promotion_core;
#[path = "sim/session_early.rs"]
mod session_early;
#[path = "sim/session_pair.rs"]
mod session_pair;
#[path = "sim/session_security.rs"]
mod session_security;
#[path = "sim/turn_core.rs"]
mod turn_core;
