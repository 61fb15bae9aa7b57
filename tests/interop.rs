//! Test tier `interop`: Against reference implementations (coturn, stun-client, opusenc/opusdec); each test skips
//! when its tool is missing, as before.
//!
//! One test binary; each file under `tests/interop/` is a module named after the test binary it
//! used to be, and `tests/support/` holds the helpers every tier shares.

mod support;

#[path = "interop/echo_cancellation.rs"]
mod echo_cancellation;
#[path = "interop/natdiscovery_interop.rs"]
mod natdiscovery_interop;
#[path = "interop/pipe_audio_interop.rs"]
mod pipe_audio_interop;
#[path = "interop/relayd_interop.rs"]
mod relayd_interop;
#[path = "interop/stun_client_interop.rs"]
mod stun_client_interop;
