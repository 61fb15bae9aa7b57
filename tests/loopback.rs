//! Test tier `loopback`: The real programs and drivers on loopback (127.0.0.0/8 only).
//!
//! One test binary; each file under `tests/loopback/` is a module named after the test binary it
//! used to be, and `tests/support/` holds the helpers every tier shares.

mod support;

#[path = "loopback/call_loopback.rs"]
mod call_loopback;
#[path = "loopback/daemon_ops.rs"]
mod daemon_ops;
#[path = "loopback/dial_through_answer.rs"]
mod dial_through_answer;
#[path = "loopback/identity_lock.rs"]
mod identity_lock;
#[path = "loopback/mesh_loopback.rs"]
mod mesh_loopback;
#[path = "loopback/mesh_security.rs"]
mod mesh_security;
#[path = "loopback/natprobe_loopback.rs"]
mod natprobe_loopback;
#[path = "loopback/pipe_audio_cli.rs"]
mod pipe_audio_cli;
#[path = "loopback/relay_directory.rs"]
mod relay_directory;
#[path = "loopback/relayd_lifecycle.rs"]
mod relayd_lifecycle;
#[path = "loopback/relayd_reload.rs"]
mod relayd_reload;
#[path = "loopback/relayd_security.rs"]
mod relayd_security;
#[path = "loopback/stun_server_loopback.rs"]
mod stun_server_loopback;
