//! Test tier `docs`: Generated files (completions, man pages) are current.
//!
//! One test binary; each file under `tests/docs/` is a module named after the test binary it
//! used to be, and `tests/support/` holds the helpers every tier shares.

#[path = "docs/docs_current.rs"]
mod docs_current;
