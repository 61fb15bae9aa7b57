//! Shell completions and man pages, generated from the same clap definitions as `--help`.
//! `voxlab gen-docs` writes them into the repository; a test fails when they are stale.
//!
//! Every program gets a page, and so does every subcommand (`pipe-audio-analyze.1`, named in
//! the parent's SUBCOMMANDS section). Pages carry EXIT STATUS (from the "Exit status:"
//! paragraph of `--help`, inherited by subcommands), ENVIRONMENT (`RUST_LOG`, every flag's
//! environment variable, and what `extras` adds) and FILES (every option that takes a path,
//! and what `extras` adds); the rest of `--help`'s epilogue becomes NOTES.

use std::io;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// Every generated file as (path relative to the repository root, contents).
pub fn generate() -> io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    for mut cmd in super::commands() {
        let name = cmd.get_name().to_string();
        // `help` as a subcommand is for the terminal; a man page per subcommand covers it.
        // (Taken before the completions build `cmd`, which adds it.)
        let mut man_cmd = without_help_subcommand(cmd.clone());
        for (shell, file) in [
            (Shell::Bash, format!("{name}.bash")),
            (Shell::Zsh, format!("_{name}")),
            (Shell::Fish, format!("{name}.fish")),
        ] {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, name.clone(), &mut buf);
            out.push((Path::new("completions").join(file), buf));
        }
        man_cmd.build();
        man_pages(&man_cmd, &name, None, &mut out)?;
    }
    Ok(out)
}

fn without_help_subcommand(cmd: clap::Command) -> clap::Command {
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    subs.into_iter()
        .fold(cmd.disable_help_subcommand(true), |c, name| {
            c.mut_subcommand(name, without_help_subcommand)
        })
}

/// The page of `cmd` and of each visible subcommand, recursively. `exit` is the parent's
/// exit status paragraph, for subcommands that have none of their own.
fn man_pages(
    cmd: &clap::Command,
    program: &str,
    exit: Option<&str>,
    out: &mut Vec<(PathBuf, Vec<u8>)>,
) -> io::Result<()> {
    let epilogue = cmd
        .get_after_long_help()
        .or(cmd.get_after_help())
        .map(|s| s.to_string())
        .unwrap_or_default();
    let mut own_exit = None;
    let mut notes = Vec::new();
    for para in epilogue.split("\n\n").filter(|p| !p.trim().is_empty()) {
        match para.strip_prefix("Exit status:") {
            Some(rest) => own_exit = Some(rest.trim_start_matches('\n').to_string()),
            None => notes.push(para.to_string()),
        }
    }
    let exit = own_exit.as_deref().or(exit);
    let man = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut page)?;
    }
    if cmd.get_subcommands().any(|c| !c.is_hide_set()) {
        man.render_subcommands_section(&mut page)?;
    }
    let mut roff = String::new();
    roff.push_str(".SH \"EXIT STATUS\"\n");
    match exit {
        Some(text) => preformatted(&mut roff, text),
        None => roff.push_str("0 on success, 1 on failure, 2 for bad flags or arguments.\n"),
    }
    let (env, files) = extras(program);
    roff.push_str(".SH ENVIRONMENT\n");
    entry(
        &mut roff,
        "RUST_LOG",
        "Log filter (tracing's EnvFilter syntax, e.g. debug or voxmesh=trace); overrides -v and -q.",
    );
    for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        if let (Some(var), Some(long)) = (a.get_env(), a.get_long()) {
            entry(
                &mut roff,
                &var.to_string_lossy(),
                &format!("The default of --{long} (a flag given on the command line wins)."),
            );
        }
    }
    for (k, v) in env {
        entry(&mut roff, k, v);
    }
    roff.push_str(".SH FILES\n");
    let mut any_file = false;
    for a in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        let takes_path = a.get_value_names().is_some_and(|v| {
            v.iter()
                .any(|n| matches!(n.as_str(), "PATH" | "FILE" | "IN" | "OUT" | "DIR"))
        });
        let name = a.get_long().map(|l| format!("--{l}")).unwrap_or_else(|| {
            a.get_value_names()
                .and_then(|v| v.first().map(|n| n.to_string()))
                .unwrap_or_else(|| a.get_id().to_string())
        });
        if takes_path {
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            entry(&mut roff, &name, &help);
            any_file = true;
        }
    }
    for (k, v) in files {
        entry(&mut roff, k, v);
        any_file = true;
    }
    if !any_file {
        roff.push_str(&text_line(&format!(
            "{} reads and writes no files of its own.",
            cmd.get_display_name().unwrap_or(cmd.get_name())
        )));
    }
    if !notes.is_empty() {
        roff.push_str(".SH NOTES\n");
        for n in &notes {
            preformatted(&mut roff, n);
        }
    }
    page.extend_from_slice(roff.as_bytes());
    if cmd.get_version().is_some() {
        man.render_version_section(&mut page)?;
    }
    let file = format!("{}.1", cmd.get_display_name().unwrap_or(cmd.get_name()));
    out.push((Path::new("man").join(file), page));
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        man_pages(sub, program, exit, out)?;
    }
    Ok(())
}

/// Environment variables and files a program uses beyond its flags: (name, meaning).
type Entries = &'static [(&'static str, &'static str)];

fn extras(program: &str) -> (Entries, Entries) {
    type Entry = (&'static str, &'static str);
    const XDG: Entry = (
        "XDG_CONFIG_HOME",
        "Where the identity, host cache and contacts live by default ($XDG_CONFIG_HOME/voxmesh).",
    );
    const HOME: Entry = ("HOME", "Used as ~/.config when XDG_CONFIG_HOME is unset.");
    const KEY: Entry = (
        "$XDG_CONFIG_HOME/voxmesh/identity",
        "The identity key (mode 0600), created on first use; ~/.config/voxmesh/identity when XDG_CONFIG_HOME is unset. Locked while a process runs as it.",
    );
    const IDENTITY_ENV: Entries = &[XDG, HOME];
    const IDENTITY_FILES: Entries = &[
        KEY,
        (
            "$XDG_CONFIG_HOME/voxmesh/hosts, $XDG_CONFIG_HOME/voxmesh/contacts",
            "Supernodes learnt from the mesh, and aliases for IDs, next to the identity.",
        ),
        (
            "$XDG_CONFIG_HOME/voxmesh/tcp-hints",
            "Supernodes an earlier run reached only over TCP (UDP blocked), next to the identity: the next run races TCP to them at once instead of after 150 ms. Dropped for a supernode once UDP answers again.",
        ),
    ];
    match program {
        "pipe-audio" => (
            &[(
                "TMPDIR",
                "Where analyze keeps recordings too long to hold in memory for the delay search (default /tmp).",
            )],
            &[(
                "$TMPDIR/pipe-audio-PID-N.f32",
                "analyze --reference: the mono mix of a long recording or reference, unlinked as soon as it is created, so nothing is left behind.",
            )],
        ),
        "dial" | "answer" => (IDENTITY_ENV, IDENTITY_FILES),
        "supernoded" => (
            &[
                (
                    "STATE_DIRECTORY",
                    "Set by systemd (StateDirectory=): the key and host cache live there by default.",
                ),
                (
                    "RUNTIME_DIRECTORY",
                    "Set by systemd (RuntimeDirectory=): the control socket lives there by default.",
                ),
                XDG,
                HOME,
                (
                    "XDG_RUNTIME_DIR",
                    "Where the control socket lives by default outside systemd ($XDG_RUNTIME_DIR/voxmesh/supernoded.sock).",
                ),
            ],
            &[
                (
                    "$STATE_DIRECTORY/supernode.key",
                    "The supernode's key (mode 0600), created on first start; $XDG_CONFIG_HOME/voxmesh/supernode.key (~/.config/voxmesh) outside systemd.",
                ),
                (
                    "$STATE_DIRECTORY/supernode-hosts",
                    "The host cache of mesh members, beside the key file (--host-cache overrides).",
                ),
                (
                    "$RUNTIME_DIRECTORY/supernoded.sock",
                    "The control socket supernoded status talks to; $XDG_RUNTIME_DIR/voxmesh/supernoded.sock outside systemd, /tmp/voxmesh-UID/supernoded.sock when neither is set.",
                ),
            ],
        ),
        _ => (&[], &[]),
    }
}

/// Escapes text for roff: backslashes, hyphens (which roff would hyphenate or render as a
/// dash), and a leading dot or quote (which would start a request).
fn escape(s: &str) -> String {
    let e = s.replace('\\', "\\e").replace('-', "\\-");
    if e.starts_with('.') || e.starts_with('\'') {
        format!("\\&{e}")
    } else {
        e
    }
}

fn text_line(s: &str) -> String {
    format!("{}\n", escape(s))
}

/// A tagged paragraph: the name in bold, the meaning below.
fn entry(roff: &mut String, name: &str, text: &str) {
    roff.push_str(".TP\n");
    roff.push_str(&format!("\\fB{}\\fR\n", escape(name)));
    roff.push_str(&text_line(text));
}

/// Text kept as laid out in `--help` (tables of codes, examples).
fn preformatted(roff: &mut String, text: &str) {
    roff.push_str(".PP\n.nf\n");
    for line in text.lines() {
        roff.push_str(&text_line(line));
    }
    roff.push_str(".fi\n");
}

/// Writes every generated file under `root`.
pub fn write_all(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (rel, data) in generate()? {
        let path = root.join(&rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, data)?;
        written.push(rel);
    }
    Ok(written)
}

/// Files under `root` that differ from what would be generated now.
pub fn stale(root: &Path) -> io::Result<Vec<PathBuf>> {
    Ok(generate()?
        .into_iter()
        .filter(|(rel, data)| std::fs::read(root.join(rel)).ok().as_deref() != Some(&data[..]))
        .map(|(rel, _)| rel)
        .collect())
}
