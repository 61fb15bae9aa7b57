//! Test tier `core`: In-process tests without sockets or a network: codecs against vectors and a reference
//! implementation, identities, records and key files.
//!
//! One test binary; each file under `tests/core/` is a module named after the test binary it
//! used to be, and `tests/support/` holds the helpers every tier shares.

mod support;

#[path = "core/identity_keys.rs"]
mod identity_keys;
#[path = "core/identity_records.rs"]
mod identity_records;
#[path = "core/stun_codec_crosscheck.rs"]
mod stun_codec_crosscheck;
#[path = "core/stun_vectors.rs"]
mod stun_vectors;
