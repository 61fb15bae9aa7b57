//! Completions and man pages are generated from the clap definitions; this fails when someone
//! changes a flag without regenerating them (`cargo run --bin voxlab -- gen-docs`).

use std::path::Path;

#[test]
fn completions_and_man_pages_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let stale = voxmesh::cli::docs::stale(root).unwrap();
    assert!(
        stale.is_empty(),
        "stale generated files {stale:?}: run `cargo run --bin voxlab -- gen-docs`"
    );
}

#[test]
fn every_program_has_completions_for_three_shells_and_a_man_page() {
    let files: Vec<String> = voxmesh::cli::docs::generate()
        .unwrap()
        .into_iter()
        .map(|(p, data)| {
            assert!(!data.is_empty(), "{} is empty", p.display());
            p.display().to_string()
        })
        .collect();
    for cmd in voxmesh::cli::commands() {
        let n = cmd.get_name();
        for f in [
            format!("completions/{n}.bash"),
            format!("completions/_{n}"),
            format!("completions/{n}.fish"),
            format!("man/{n}.1"),
        ] {
            assert!(files.contains(&f), "missing {f}");
        }
    }
}
