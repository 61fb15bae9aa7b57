//! Test tier `fuzz`: Deterministic, seeded mutation fuzzers (the `scripts/fuzz-*` run them longer, in release).
//!
//! One test binary; each file under `tests/fuzz/` is a module named after the test binary it
//! used to be, and `tests/support/` holds the helpers every tier shares.

mod support;

#[path = "fuzz/fuzz_signal.rs"]
mod fuzz_signal;
#[path = "fuzz/fuzz_stun.rs"]
mod fuzz_stun;
#[path = "fuzz/fuzz_turn.rs"]
mod fuzz_turn;
#[path = "fuzz/media_fuzz.rs"]
mod media_fuzz;
#[path = "fuzz/session_fuzz.rs"]
mod session_fuzz;

/// A count or seed from the environment (`VOXMESH_FUZZ_CASES`, `VOXMESH_FUZZ_SEED`; `_`
/// separators allowed), else `default`.
fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}
