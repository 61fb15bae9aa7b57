//! Shell completions and man pages, generated from the same clap definitions as `--help`.
//! `voxlab gen-docs` writes them into the repository; a test fails when they are stale.

use std::io;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// Every generated file as (path relative to the repository root, contents).
pub fn generate() -> io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    for mut cmd in super::commands() {
        let name = cmd.get_name().to_string();
        for (shell, file) in [
            (Shell::Bash, format!("{name}.bash")),
            (Shell::Zsh, format!("_{name}")),
            (Shell::Fish, format!("{name}.fish")),
        ] {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, name.clone(), &mut buf);
            out.push((Path::new("completions").join(file), buf));
        }
        let mut man = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut man)?;
        out.push((Path::new("man").join(format!("{name}.1")), man));
    }
    Ok(out)
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
