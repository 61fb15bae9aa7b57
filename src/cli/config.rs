//! Daemon flags from three places, in this order of precedence: the command line, the
//! environment (`PREFIX_FLAG_NAME`, so systemd's `EnvironmentFile=` works), and a TOML file
//! (`--config FILE`, keys named like the long flags). Secrets can so stay out of `ps`.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// Flags whose variable holds one value even though the flag repeats: a password or a secret
/// may contain the comma that separates the values of every other repeatable flag.
const NO_DELIMITER: &[&str] = &["user", "auth_secret"];

/// The variable that carries `--long` for `prefix`, e.g. `RELAYD_AUTH_SECRET`.
pub fn env_name(prefix: &str, long: &str) -> String {
    format!("{prefix}_{}", long.to_uppercase().replace('-', "_"))
}

/// Gives every long flag of `cmd` (not its subcommands, nor help and version) its variable;
/// repeatable ones split theirs at commas.
pub fn with_env(mut cmd: Command, prefix: &str) -> Command {
    let ids: Vec<(String, String, bool)> = cmd
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            let repeat = matches!(a.get_action(), ArgAction::Append);
            Some((a.get_id().to_string(), long.to_string(), repeat))
        })
        .filter(|(_, long, _)| long != "help" && long != "version")
        .collect();
    for (id, long, repeat) in ids {
        let var = env_name(prefix, &long);
        let delimit = repeat && !NO_DELIMITER.contains(&id.as_str());
        cmd = cmd.mut_arg(id, move |a| {
            let a = a.env(var);
            if delimit { a.value_delimiter(',') } else { a }
        });
    }
    cmd
}

/// Parses the process's arguments with `cmd`; when `--config` (or its variable) names a file,
/// every key of it whose flag was given neither on the command line nor in the environment
/// becomes that flag. Help, version and bad flags exit as clap does; an unreadable or bad file
/// exits 2 with a message naming it.
pub fn parse(cmd: Command) -> ArgMatches {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let name = cmd.get_name().to_string();
    let first = cmd.clone().get_matches_from(&argv);
    let Some(path) = first.get_one::<std::path::PathBuf>("config").cloned() else {
        return first;
    };
    let extra = match file_args(&cmd, &first, &path) {
        Ok(extra) => extra,
        Err(e) => {
            eprintln!("{name}: config {}: {e}", path.display());
            std::process::exit(super::EXIT_USAGE.into());
        }
    };
    // The file's flags go first, before any subcommand, so they set the program's own flags.
    let mut full = vec![argv.first().cloned().unwrap_or_else(|| name.clone().into())];
    full.extend(extra.into_iter().map(OsString::from));
    full.extend(argv.into_iter().skip(1));
    cmd.try_get_matches_from(full).unwrap_or_else(|e| {
        eprintln!("{name}: config {}: {}", path.display(), e.kind());
        e.exit()
    })
}

/// The flags the file at `path` adds: one `--key=value` per value, for keys not already set by
/// the command line or the environment.
pub fn file_args(cmd: &Command, given: &ArgMatches, path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
            .ok_or_else(|| format!("unknown key '{key}' (keys are the long flags' names)"))?;
        let id = arg.get_id().as_str();
        let set = |id: &str| {
            matches!(
                given.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        // Set above the file, directly or through a flag it excludes (-q over verbose = 2).
        let excluded = cmd.get_arguments().any(|other| {
            set(other.get_id().as_str())
                && (cmd.get_arg_conflicts_with(arg).contains(&other)
                    || cmd.get_arg_conflicts_with(other).contains(&arg))
        });
        if set(id) || excluded {
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items.iter().collect(),
            v => vec![v],
        };
        for v in values {
            if arg.get_action().takes_values() {
                let s = match v {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(_)
                    | toml::Value::Float(_)
                    | toml::Value::Boolean(_)
                    | toml::Value::Datetime(_) => v.to_string(),
                    _ => return Err(format!("'{key}': expected a value or a list of values")),
                };
                out.push(format!("--{long}={s}"));
            } else {
                // A switch: true turns it on; a count (verbose) takes a number.
                let n = match v {
                    toml::Value::Boolean(b) => u8::from(*b),
                    toml::Value::Integer(n) if matches!(arg.get_action(), ArgAction::Count) => {
                        u8::try_from(*n).map_err(|_| format!("'{key}': out of range"))?
                    }
                    _ => return Err(format!("'{key}': expected true or false")),
                };
                out.extend((0..n).map(|_| format!("--{long}")));
            }
        }
    }
    Ok(out)
}

/// The first directory systemd names in `var` (`STATE_DIRECTORY`, `RUNTIME_DIRECTORY`; a list
/// separated by colons when the unit names several).
pub fn systemd_dir(var: &str) -> Option<std::path::PathBuf> {
    let v = std::env::var_os(var)?;
    let first = v.to_str()?.split(':').next()?.to_string();
    (!first.is_empty()).then(|| first.into())
}

/// The help text shared by both daemons on where flags come from.
pub fn help(prefix: &str) -> String {
    format!(
        "Configuration:
  Every flag can also be given in the environment as {prefix}_<FLAG> (e.g. {ex}; a repeatable
  flag takes a comma-separated list) and in a TOML file named by --config or {prefix}_CONFIG,
  keyed by the long flag names (listen = [\"0.0.0.0:3478\"], metrics = \"127.0.0.1:9479\",
  verbose = 1).
  Precedence: command line > environment > file. Secrets never need the command line: put them
  in the environment (systemd EnvironmentFile=), the config file, or a secrets file.
  An unreadable or bad config file exits 2.

Logging:
  On stderr; -v/-q choose the level, RUST_LOG (e.g. RUST_LOG=debug,
  RUST_LOG=voxmesh::net=trace) overrides both.
  Colour only when stderr is a terminal.",
        ex = env_name(prefix, "listen"),
    )
}
