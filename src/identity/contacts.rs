//! The local contacts file: aliases for user IDs.
//!
//! A plain line format, one contact a line, `#` starts a comment:
//!
//! ```text
//! # voxmesh contacts
//! mum   = vx1...
//! alice = vx1...   # from the conference
//! ```
//!
//! Why not TOML: the file has one shape (alias to ID), is often edited by hand or appended to by
//! `>>`, and a line format needs no dependency and gives errors with line numbers. Aliases follow
//! the rules of names ([`super::name::normalize_name`]) and are compared case-insensitively.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::id::{USER_ID_PREFIX, UserId};
use super::name::{NameError, normalize_name};
use super::text::TextError;

/// Largest contacts file read.
const MAX_CONTACTS_FILE: u64 = 1 << 20;

/// Aliases to IDs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contacts {
    by_alias: BTreeMap<String, UserId>,
}

/// What a user typed as the other party of a call: an ID, or a name to look up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An ID, typed directly or found through a contact alias.
    Id(UserId),
    /// A human name (normal form) for the directory to resolve.
    Name(String),
}

/// Why a contacts file, line or lookup was refused.
#[derive(Debug, thiserror::Error)]
pub enum ContactsError {
    /// The file could not be read or written.
    #[error("contacts file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line is not `ALIAS = ID`.
    #[error("line {line}: expected `ALIAS = ID`")]
    Syntax { line: usize },
    /// The alias is not a valid name.
    #[error("line {line}: bad alias: {source}")]
    Alias { line: usize, source: NameError },
    /// The ID has a typo (its checksum failed) or is not an ID.
    #[error("line {line}: bad ID: {source}")]
    Id { line: usize, source: TextError },
    /// The same alias appears twice.
    #[error("line {line}: alias {alias:?} is defined twice")]
    Duplicate { line: usize, alias: String },
    /// What was typed starts like an ID but is not a valid one: a typo.
    #[error("{input:?} looks like a user ID but is not valid: {source}")]
    BadId { input: String, source: TextError },
    /// Neither an ID, nor an alias, nor a valid name.
    #[error("{input:?} is not a user ID, a contact, or a valid name: {source}")]
    Unresolvable { input: String, source: NameError },
    /// The file is larger than any contacts file should be.
    #[error("contacts file {} is too large", path.display())]
    TooLarge { path: PathBuf },
}

impl Contacts {
    /// Parses the text of a contacts file.
    pub fn parse(text: &str) -> Result<Contacts, ContactsError> {
        let mut by_alias = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let (alias, id) = content
                .split_once('=')
                .ok_or(ContactsError::Syntax { line })?;
            let alias =
                normalize_name(alias).map_err(|source| ContactsError::Alias { line, source })?;
            let id: UserId = id
                .trim()
                .parse()
                .map_err(|source| ContactsError::Id { line, source })?;
            if by_alias.insert(alias.clone(), id).is_some() {
                return Err(ContactsError::Duplicate { line, alias });
            }
        }
        Ok(Contacts { by_alias })
    }

    /// Reads a contacts file; a missing file is an empty list.
    pub fn load(path: &Path) -> Result<Contacts, ContactsError> {
        let io = |source| ContactsError::Io {
            path: path.to_owned(),
            source,
        };
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Contacts::default()),
            Err(e) => return Err(io(e)),
            Ok(m) if m.len() > MAX_CONTACTS_FILE => {
                return Err(ContactsError::TooLarge {
                    path: path.to_owned(),
                });
            }
            Ok(_) => {}
        }
        Contacts::parse(&std::fs::read_to_string(path).map_err(io)?)
    }

    /// Writes the file (to a temporary file first, then renamed over the old one).
    pub fn save(&self, path: &Path) -> Result<(), ContactsError> {
        let io = |source| ContactsError::Io {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.to_text()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The file text (sorted by alias).
    pub fn to_text(&self) -> String {
        let mut s = String::from("# voxmesh contacts: ALIAS = ID\n");
        for (alias, id) in &self.by_alias {
            let _ = writeln!(s, "{alias} = {id}");
        }
        s
    }

    /// Adds or replaces an alias; returns the ID it had before.
    pub fn insert(&mut self, alias: &str, id: UserId) -> Result<Option<UserId>, NameError> {
        Ok(self.by_alias.insert(normalize_name(alias)?, id))
    }

    pub fn remove(&mut self, alias: &str) -> Option<UserId> {
        self.by_alias.remove(&alias.trim().to_ascii_lowercase())
    }

    pub fn get(&self, alias: &str) -> Option<UserId> {
        self.by_alias
            .get(&alias.trim().to_ascii_lowercase())
            .copied()
    }

    /// The alias of an ID, if it has one.
    pub fn alias_of(&self, id: &UserId) -> Option<&str> {
        self.by_alias
            .iter()
            .find(|(_, v)| *v == id)
            .map(|(k, _)| k.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &UserId)> {
        self.by_alias.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.by_alias.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_alias.is_empty()
    }

    /// Resolves what a user typed: an ID (a typo in it is an error, never a name lookup), else a
    /// contact alias, else a name for the directory.
    pub fn resolve(&self, input: &str) -> Result<Target, ContactsError> {
        let input = input.trim();
        let lower = input.to_ascii_lowercase();
        if lower.starts_with(USER_ID_PREFIX) && lower[USER_ID_PREFIX.len()..].starts_with('1') {
            return input
                .parse()
                .map(Target::Id)
                .map_err(|source| ContactsError::BadId {
                    input: input.to_string(),
                    source,
                });
        }
        if let Some(id) = self.get(input) {
            return Ok(Target::Id(id));
        }
        normalize_name(input)
            .map(Target::Name)
            .map_err(|source| ContactsError::Unresolvable {
                input: input.to_string(),
                source,
            })
    }
}
