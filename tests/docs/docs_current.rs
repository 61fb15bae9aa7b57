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

/// The layering the module map in `src/lib.rs` promises, checked on the source text: a core is
/// sans-IO (no tokio, sockets, threads, audio devices, CLI, lab or driver), and a driver never
/// reaches into the CLI. A new top-level module must be placed on one side or the other here.
#[test]
fn cores_are_sans_io_and_drivers_do_not_use_the_cli() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let cores = [
        "client",
        "supernode",
        "session",
        "stun",
        "turn",
        "nat",
        "mesh",
        "call",
        "media",
        "identity",
        "signal",
        "directory",
        "demux",
        "transmit",
        "roles",
    ];
    let others = ["audio", "bin", "cli", "lab", "lib", "net"];
    let core_forbidden = [
        "tokio",
        "UdpSocket",
        "TcpListener",
        "TcpStream",
        "UnixDatagram",
        "socket2",
        "std::thread",
        "thread::spawn",
        "audio::device",
        "audio::stream",
        "cpal",
        "crate::cli",
        "voxmesh::cli",
        "crate::lab",
        "voxlab",
        "net::drivers",
    ];
    let driver_forbidden = ["crate::cli", "voxmesh::cli", "crate::lab", "voxlab"];

    let mut found = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let forbidden: &[&str] = if cores.contains(&name.as_str()) {
            &core_forbidden
        } else if name == "net" {
            &driver_forbidden
        } else {
            assert!(
                others.contains(&name.as_str()),
                "src/{name}: a new top-level module; say in this test whether it is a core"
            );
            continue;
        };
        for file in rust_files(&path) {
            let text = strip_comments(&std::fs::read_to_string(&file).unwrap());
            for (n, line) in text.lines().enumerate() {
                for word in forbidden {
                    if contains_word(line, word) {
                        let rel = file.strip_prefix(&src).unwrap().display();
                        found.push(format!("src/{rel}:{}: {word}", n + 1));
                    }
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "layering broken (cores are sans-IO; drivers do not use the CLI):\n{}",
        found.join("\n")
    );
}

fn rust_files(path: &Path) -> Vec<std::path::PathBuf> {
    if path.is_file() {
        return if path.extension().is_some_and(|e| e == "rs") {
            vec![path.to_owned()]
        } else {
            Vec::new()
        };
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).unwrap() {
        out.extend(rust_files(&entry.unwrap().path()));
    }
    out.sort();
    out
}

/// The text with `//` and `/* */` comments blanked (doc comments name drivers and RFCs freely),
/// line numbers kept. Strings are kept: a forbidden name inside one is rare enough to rename.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let (mut in_str, mut block) = (false, 0usize);
    while let Some(c) = chars.next() {
        if block > 0 {
            if c == '*' && chars.peek() == Some(&'/') {
                chars.next();
                block -= 1;
            } else if c == '/' && chars.peek() == Some(&'*') {
                chars.next();
                block += 1;
            } else if c == '\n' {
                out.push('\n');
            }
            continue;
        }
        if in_str {
            out.push(c);
            if c == '\\' {
                out.extend(chars.next());
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        match (c, chars.peek()) {
            // The character literal '"' (or '\"') does not open a string.
            ('\'', Some('"' | '\\')) => {
                out.push(c);
                for c in chars.by_ref() {
                    out.push(c);
                    if c == '\'' {
                        break;
                    }
                }
            }
            ('"', _) => {
                in_str = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            ('/', Some('*')) => {
                chars.next();
                block = 1;
            }
            _ => out.push(c),
        }
    }
    out
}

/// Whether `word` occurs in `line` not as part of a longer identifier.
fn contains_word(line: &str, word: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    line.match_indices(word).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// `scripts/test` runs the lab tier by area (`cargo test --test lab -- AREA::`): an area that
/// `tests/lab.rs` has but the script does not name would never run in CI, and one named twice
/// would run twice.
#[test]
fn scripts_test_runs_every_lab_area_once() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tier = std::fs::read_to_string(root.join("tests/lab.rs")).unwrap();
    let areas: Vec<&str> = tier
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mod "))
        .map(|m| m.trim_end_matches(';'))
        .filter(|m| *m != "support")
        .collect();
    assert!(areas.len() >= 10, "lab areas found: {areas:?}");
    let script = std::fs::read_to_string(root.join("scripts/test")).unwrap();
    // The areas named in the script's lab lines: `for area in A B ...` and `-- A:: B::`.
    let mut named: Vec<String> = Vec::new();
    for line in script
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
    {
        if let Some(list) = line.strip_prefix("for area in ") {
            let list = list.split(';').next().unwrap_or("");
            named.extend(list.split_whitespace().map(str::to_string));
        } else if line.contains("--test lab") {
            named.extend(
                line.split_whitespace()
                    .filter_map(|w| w.strip_suffix("::"))
                    .map(str::to_string),
            );
        }
    }
    for a in &areas {
        let n = named.iter().filter(|x| x == a).count();
        assert_eq!(n, 1, "lab area {a} is named {n} times in scripts/test");
    }
    for n in &named {
        assert!(
            areas.contains(&n.as_str()),
            "scripts/test names {n}, not a lab area"
        );
    }
}
