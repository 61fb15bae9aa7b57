//! Helpers shared by the test tiers (each tier's binary declares `mod support;`). Every tier
//! uses only some of them, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod calls;
pub mod common;
pub mod failover;
pub mod loopback;
pub mod media;
pub mod mesh;
pub mod mesh_proc;
pub mod pipe_audio;
pub mod probe;
pub mod relayd;
pub mod session;
pub mod stun;
