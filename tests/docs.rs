//! Test tier `docs`: generated files (completions, man pages) are current, the architecture
//! rules hold, and the README's examples run as written.
//!
//! One test binary; each file under `tests/docs/` is a module named after the test binary it
//! used to be, and `tests/support/` holds the helpers every tier shares.

#[path = "docs/docs_current.rs"]
mod docs_current;

#[path = "docs/readme_examples.rs"]
mod readme_examples;
