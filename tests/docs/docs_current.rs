//! Completions and man pages are generated from the clap definitions; this fails when someone
//! changes a flag without regenerating them (`cargo run -p voxlab -- gen-docs`).

use std::path::Path;

#[test]
fn completions_and_man_pages_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let stale = voxmesh::cli::docs::stale(root).unwrap();
    assert!(
        stale.is_empty(),
        "stale generated files {stale:?}: run `cargo run -p voxlab -- gen-docs`"
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

/// Every `NAME(1)` a page mentions (SUBCOMMANDS sections, cross-references) is a page we ship.
#[test]
fn every_man_page_another_page_names_exists() {
    let pages = voxmesh::cli::docs::generate().unwrap();
    let names: Vec<String> = pages
        .iter()
        .filter_map(|(p, _)| {
            let p = p.display().to_string();
            p.strip_prefix("man/")?.strip_suffix(".1").map(String::from)
        })
        .collect();
    let mut named = 0;
    for (path, data) in pages.iter().filter(|(p, _)| p.starts_with("man")) {
        // Roff writes hyphens as `\-`.
        let text = String::from_utf8_lossy(data).replace("\\-", "-");
        for (at, _) in text.match_indices("(1)") {
            let before = &text[..at];
            let start = before
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .map_or(0, |i| i + 1);
            let name = &before[start..];
            if name.is_empty() {
                continue;
            }
            named += 1;
            assert!(
                names.iter().any(|n| n == name),
                "{} names {name}(1), which is not generated",
                path.display()
            );
        }
    }
    assert!(
        named >= 10,
        "only {named} page references found: is the scan broken?"
    );
    for sub in [
        "pipe-audio-analyze",
        "pipe-audio-gen-tone",
        "supernoded-status",
    ] {
        assert!(names.iter().any(|n| n == sub), "no {sub}.1");
    }
    for (path, data) in pages.iter().filter(|(p, _)| p.starts_with("man")) {
        let text = String::from_utf8_lossy(data);
        for section in [".SH \"EXIT STATUS\"", ".SH ENVIRONMENT", ".SH FILES"] {
            assert!(text.contains(section), "{} lacks {section}", path.display());
        }
    }
}
