//! The local identity: an Ed25519 key pair, the Noise static key derived from it, the binding
//! that ties the two, and the key file.
//!
//! # Key file
//!
//! One secret, the 32-byte Ed25519 seed, in a text file (mode 0600, directory 0700):
//!
//! ```text
//! # voxmesh identity: keep this file private.
//! # id vx1...
//! vxsecret1...
//! ```
//!
//! The key line is Bech32m, so a damaged file is detected by its checksum instead of silently
//! becoming another identity. Comment lines are ignored. The default location is
//! `$XDG_CONFIG_HOME/voxmesh/identity` (or `~/.config/voxmesh/identity`); `--identity PATH`
//! overrides it. Like OpenSSH, we refuse a key file that other users can read or write.
//!
//! # Noise static key
//!
//! The X25519 static key for Noise is derived from the seed (SHA-256 of a domain string and the
//! seed), so one file holds everything and the node key stays the same across restarts. The
//! derivation uses a different scalar from the Ed25519 one, so the two keys are never the same
//! key used for two algorithms. The Ed25519 key signs the Noise public key once, at load
//! ([`Binding`]); every handshake carries that signature so the peer can check that the Noise
//! key it just authenticated belongs to the identity it claims (DESIGN.md §4).

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use curve25519_dalek::MontgomeryPoint;
use ed25519_dalek::{Signature, Signer, SigningKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::id::{NodeKey, PublicKey, UserId};
use super::text;

/// Text prefix of the secret seed in a key file.
pub const SECRET_PREFIX: &str = "vxsecret";
/// File name under the config directory.
pub const KEY_FILE_NAME: &str = "identity";
/// Largest key file we read (a key line and comments).
const MAX_KEY_FILE: u64 = 4096;

const NOISE_STATIC_DOMAIN: &[u8] = b"voxmesh/v1/noise-static\0";
/// Signature context for the binding of a Noise static key to an identity.
pub const BINDING_DOMAIN: &[u8] = b"voxmesh/v1/noise-static-binding\0";

/// The signed statement "this Noise static key is mine": the identity's public key and its
/// Ed25519 signature over [`BINDING_DOMAIN`] and the Noise static public key.
///
/// Why a static binding and not a signature over each handshake hash: it costs the signer
/// nothing per handshake (a supernode answering thousands of handshakes signs nothing), and it is
/// as strong, because Noise IK already proves possession of the static key in every handshake;
/// what the binding adds is whose key it is. A stolen binding is useless without the Noise secret.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Binding {
    pub identity: PublicKey,
    pub signature: [u8; 64],
}

/// Bytes of a binding on the wire: version, Ed25519 key, signature.
pub const BINDING_LEN: usize = 1 + 32 + 64;
const BINDING_VERSION: u8 = 1;

/// Why a binding was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// Not [`BINDING_LEN`] bytes, or an unknown version: the peer runs other software.
    #[error("malformed identity binding")]
    Malformed,
    /// The identity key is not a valid Ed25519 point.
    #[error("identity key is not a valid Ed25519 key")]
    BadKey,
    /// The signature does not cover this Noise key under this identity: the peer's Noise key is
    /// not bound to the identity it claims.
    #[error("the Noise static key is not signed by the claimed identity")]
    BadSignature,
}

impl Binding {
    pub fn encode(&self) -> [u8; BINDING_LEN] {
        let mut out = [0u8; BINDING_LEN];
        out[0] = BINDING_VERSION;
        out[1..33].copy_from_slice(self.identity.as_bytes());
        out[33..].copy_from_slice(&self.signature);
        out
    }

    /// Parses a binding and checks that it covers `noise_static`.
    pub fn verify(bytes: &[u8], noise_static: &[u8]) -> Result<Binding, BindingError> {
        if bytes.len() != BINDING_LEN || bytes[0] != BINDING_VERSION || noise_static.len() != 32 {
            return Err(BindingError::Malformed);
        }
        let key: [u8; 32] = bytes[1..33].try_into().expect("32 bytes");
        let identity = PublicKey::from_bytes(&key).map_err(|_| BindingError::BadKey)?;
        let signature: [u8; 64] = bytes[33..].try_into().expect("64 bytes");
        let mut msg = [0u8; BINDING_DOMAIN.len() + 32];
        msg[..BINDING_DOMAIN.len()].copy_from_slice(BINDING_DOMAIN);
        msg[BINDING_DOMAIN.len()..].copy_from_slice(noise_static);
        identity
            .0
            .verify_strict(&msg, &Signature::from_bytes(&signature))
            .map_err(|_| BindingError::BadSignature)?;
        Ok(Binding {
            identity,
            signature,
        })
    }
}

/// The local identity: signing key, ID, Noise static key pair and binding.
pub struct Identity {
    signing: SigningKey,
    public: PublicKey,
    id: UserId,
    noise_secret: Zeroizing<[u8; 32]>,
    noise_public: [u8; 32],
    binding: Binding,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity::from_seed(&self.signing.to_bytes())
    }
}

impl Identity {
    /// A new identity from the operating system's random source.
    pub fn generate() -> Identity {
        let seed = Zeroizing::new(rand::random::<[u8; 32]>());
        Identity::from_seed(&seed)
    }

    /// The identity with this 32-byte Ed25519 seed (deterministic; tests use it).
    pub fn from_seed(seed: &[u8; 32]) -> Identity {
        let signing = SigningKey::from_bytes(seed);
        let public = PublicKey(signing.verifying_key());
        let mut h = Sha256::new();
        h.update(NOISE_STATIC_DOMAIN);
        h.update(seed);
        let noise_secret = Zeroizing::new(<[u8; 32]>::from(h.finalize()));
        let noise_public = MontgomeryPoint::mul_base_clamped(*noise_secret).to_bytes();
        let binding = Binding {
            identity: public,
            signature: sign_binding(&signing, &noise_public),
        };
        Identity {
            id: public.id(),
            signing,
            public,
            noise_secret,
            noise_public,
            binding,
        }
    }

    pub fn id(&self) -> UserId {
        self.id
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// What peers need to open a session to this node ([`NodeKey`]).
    pub fn node_key(&self) -> NodeKey {
        NodeKey {
            id: self.id,
            noise: self.noise_public,
        }
    }

    pub fn noise_public(&self) -> &[u8; 32] {
        &self.noise_public
    }

    pub(crate) fn noise_secret(&self) -> &[u8; 32] {
        &self.noise_secret
    }

    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    /// Signs `domain || message`. Every signature voxmesh makes has its own domain string, so
    /// a signature made for one purpose can never be presented as another.
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> [u8; 64] {
        let mut buf = Vec::with_capacity(domain.len() + message.len());
        buf.extend_from_slice(domain);
        buf.extend_from_slice(message);
        self.signing.sign(&buf).to_bytes()
    }

    /// This identity presenting `binding` instead of its own. Only for tests of the refusal
    /// path (a Noise key that is not bound to the identity it claims).
    #[cfg(feature = "testing")]
    pub fn with_binding_for_tests(mut self, binding: Binding) -> Identity {
        self.binding = binding;
        self
    }

    /// The text of a key file for this identity.
    pub fn key_file_text(&self) -> String {
        format!(
            "# voxmesh identity: keep this file private (mode 0600).\n# id {}\n{}\n",
            self.id,
            text::encode(SECRET_PREFIX, self.signing.as_bytes())
        )
    }

    /// Reads the key file at `path`.
    pub fn load(path: &Path) -> Result<Identity, KeyFileError> {
        let file = fs::File::open(path).map_err(|e| KeyFileError::Read {
            path: path.to_owned(),
            source: e,
        })?;
        Identity::read_open(&file, path)
    }

    /// Reads an open key file (`path` names it in errors): checks its type, mode and size, then
    /// parses it.
    pub(super) fn read_open(file: &fs::File, path: &Path) -> Result<Identity, KeyFileError> {
        let meta = file.metadata().map_err(|e| KeyFileError::Read {
            path: path.to_owned(),
            source: e,
        })?;
        if !meta.is_file() {
            return Err(KeyFileError::NotAFile {
                path: path.to_owned(),
            });
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
        if meta.len() > MAX_KEY_FILE {
            return Err(KeyFileError::Corrupt {
                path: path.to_owned(),
                reason: format!("{} bytes, larger than any key file", meta.len()),
            });
        }
        let mut text = String::new();
        io::Read::read_to_string(&mut &*file, &mut text).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => KeyFileError::Corrupt {
                path: path.to_owned(),
                reason: "not UTF-8 text".into(),
            },
            _ => KeyFileError::Read {
                path: path.to_owned(),
                source: e,
            },
        })?;
        Identity::parse_key_file(&text).map_err(|reason| KeyFileError::Corrupt {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses key file text; the error is a reason for [`KeyFileError::Corrupt`].
    pub fn parse_key_file(text: &str) -> Result<Identity, String> {
        let mut keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let line = keys.next().ok_or("no key line")?;
        if keys.next().is_some() {
            return Err("more than one key line".into());
        }
        let seed = Zeroizing::new(
            text::decode::<32>(SECRET_PREFIX, line).map_err(|e| format!("key line: {e}"))?,
        );
        Ok(Identity::from_seed(&seed))
    }

    /// Writes a new key file at `path` (mode 0600, parent directories 0700). Fails if the file
    /// exists: an identity is never overwritten.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyFileError> {
        let create = |e| KeyFileError::Create {
            path: path.to_owned(),
            source: e,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(create)?;
        }
        // Written whole under a private name, then linked into place: `link` fails if the
        // path exists, so a process racing us to create it reads either no file or a complete
        // one, never a half-written key. The name is private to this call (process ID and a
        // counter), so threads of one process racing each other do not share it either.
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = path.with_file_name(format!(
            ".{}.{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("key"),
            std::process::id(),
            CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = fs::remove_file(&tmp); // left by a crashed process that had our PID
        let written = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(self.key_file_text().as_bytes())?;
            f.sync_all()?;
            fs::hard_link(&tmp, path)
        })();
        let _ = fs::remove_file(&tmp);
        written.map_err(create)
    }

    /// Loads the key file at `path`, creating it with a new identity if it does not exist. The
    /// flag says whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Identity, bool), KeyFileError> {
        match Identity::load(path) {
            Err(KeyFileError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                let id = Identity::generate();
                match id.save_new(path) {
                    Ok(()) => Ok((id, true)),
                    // Another process created it first: use theirs.
                    Err(KeyFileError::Create { source, .. })
                        if source.kind() == io::ErrorKind::AlreadyExists =>
                    {
                        Identity::load(path).map(|i| (i, false))
                    }
                    Err(e) => Err(e),
                }
            }
            other => other.map(|i| (i, false)),
        }
    }
}

fn sign_binding(signing: &SigningKey, noise_public: &[u8; 32]) -> [u8; 64] {
    let mut msg = [0u8; BINDING_DOMAIN.len() + 32];
    msg[..BINDING_DOMAIN.len()].copy_from_slice(BINDING_DOMAIN);
    msg[BINDING_DOMAIN.len()..].copy_from_slice(noise_public);
    signing.sign(&msg).to_bytes()
}

/// The default key file path from the values of `XDG_CONFIG_HOME` and `HOME` (pure, so it can be
/// tested; [`default_key_path`] reads the environment). An empty or relative `XDG_CONFIG_HOME`
/// is ignored, as the XDG Base Directory specification says.
pub fn key_path_from(xdg_config_home: Option<&Path>, home: Option<&Path>) -> Option<PathBuf> {
    let base = match xdg_config_home.filter(|p| p.is_absolute()) {
        Some(x) => x.to_owned(),
        None => home.filter(|h| h.is_absolute())?.join(".config"),
    };
    Some(base.join("voxmesh").join(KEY_FILE_NAME))
}

/// `$XDG_CONFIG_HOME/voxmesh/identity`, else `~/.config/voxmesh/identity`.
pub fn default_key_path() -> Result<PathBuf, KeyFileError> {
    let xdg = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from);
    let home = std::env::var_os("HOME").map(PathBuf::from);
    key_path_from(xdg.as_deref(), home.as_deref()).ok_or(KeyFileError::NoConfigDir)
}

/// Why the key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Neither `XDG_CONFIG_HOME` nor `HOME` is set to an absolute path: pass `--identity PATH`.
    #[error("no config directory: set HOME or XDG_CONFIG_HOME, or pass --identity PATH")]
    NoConfigDir,
    /// The file exists but could not be read (permissions, I/O error).
    #[error("cannot read identity key file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// The path is a directory or another non-regular file.
    #[error("identity key path {} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    /// Others can read or write the file; fix with `chmod 600 PATH` (the key may have leaked:
    /// consider making a new identity).
    #[error(
        "identity key file {} has mode {mode:03o}, readable or writable by others: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    /// The file is not a valid key file (damaged or hand-edited); restore it from a backup. It
    /// is never overwritten automatically, since that would replace the identity.
    #[error("identity key file {} is corrupt ({reason}); restore it from a backup", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// The file or its directory could not be created.
    #[error("cannot create identity key file {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    /// Another process runs as this identity and holds its lock (see [`crate::identity::IdentityLock`]); `pid`
    /// is that process when it could be found. Two processes with one identity are one node
    /// twice: stop the other one, or give this one a key file of its own (`--identity PATH`).
    #[error(
        "identity key file {} is in use by {}: two processes must not share an identity; stop that process or give this one its own key file with --identity PATH",
        path.display(),
        match pid { Some(p) => format!("process {p}"), None => "another process".into() }
    )]
    InUse { path: PathBuf, pid: Option<u32> },
    /// The file system refused the lock itself (not because another process holds it).
    #[error("cannot lock identity key file {}: {source}", path.display())]
    Lock { path: PathBuf, source: io::Error },
}
