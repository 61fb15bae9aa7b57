//! User IDs, public keys, node keys and bootstrap entries, with their text forms.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::text::{self, TextError};

/// Bytes in a [`UserId`].
pub const USER_ID_LEN: usize = 20;
/// Text prefix of a [`UserId`].
pub const USER_ID_PREFIX: &str = "vx";
/// Text prefix of a [`PublicKey`].
pub const PUBLIC_KEY_PREFIX: &str = "vxpk";
/// Text prefix of a [`NodeKey`].
pub const NODE_KEY_PREFIX: &str = "vxk";

/// Hash input prefix for user IDs (domain separation from every other SHA-256 we compute).
const USER_ID_DOMAIN: &[u8] = b"voxmesh/v1/user-id\0";

/// A user's (or a supernode's) ID: the first 160 bits of SHA-256 over the Ed25519 public key.
///
/// Why SHA-256: it is already in the crate (STUN integrity), hardware-accelerated on current CPUs
/// and needs no argument. Why 160 bits: IDs are not chosen, they follow from keys, so the attack
/// that matters is finding a key whose ID equals someone else's (a second preimage): 2^160 work,
/// or 2^128 against a billion IDs at once. A birthday collision (2^80) only gives an attacker two
/// keys of its own that share an ID, which harms nobody but itself. 160 bits print as 32
/// characters (41 with prefix and checksum), short enough to read out or paste into a chat.
///
/// The text form is `vx1` + Bech32m (see [`super::text`]), 41 characters, for example
/// `vx1wedzd8kmzcu4m0lxn7e0wz5rke9u8eef2khqwu`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserId(pub [u8; USER_ID_LEN]);

impl UserId {
    /// The ID of an Ed25519 public key.
    pub fn of(key: &PublicKey) -> UserId {
        let mut h = Sha256::new();
        h.update(USER_ID_DOMAIN);
        h.update(key.0.as_bytes());
        let digest = h.finalize();
        let mut id = [0u8; USER_ID_LEN];
        id.copy_from_slice(&digest[..USER_ID_LEN]);
        UserId(id)
    }

    pub fn as_bytes(&self) -> &[u8; USER_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&text::encode(USER_ID_PREFIX, &self.0))
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({self})")
    }
}

impl FromStr for UserId {
    type Err = TextError;
    fn from_str(s: &str) -> Result<Self, TextError> {
        text::decode(USER_ID_PREFIX, s).map(UserId)
    }
}

/// An Ed25519 public (verifying) key. Text form: `vxpk1` + Bech32m.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub(crate) VerifyingKey);

impl PublicKey {
    /// Parses 32 bytes; refuses encodings that are not points on the curve.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, KeyError> {
        VerifyingKey::from_bytes(bytes)
            .map(PublicKey)
            .map_err(|_| KeyError::NotOnCurve)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    pub fn id(&self) -> UserId {
        UserId::of(self)
    }

    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }
}

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&text::encode(PUBLIC_KEY_PREFIX, self.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let bytes = text::decode::<32>(PUBLIC_KEY_PREFIX, s)?;
        PublicKey::from_bytes(&bytes)
    }
}

/// Why a key in text or binary form was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text is not a well-formed key of the expected kind (see the inner error).
    #[error(transparent)]
    Text(#[from] TextError),
    /// 32 bytes that are not an Ed25519 point: the key is corrupt.
    #[error("not a valid Ed25519 public key (not a curve point)")]
    NotOnCurve,
}

/// What an initiator must know about a node to open a session to it with Noise IK: the node's
/// ID (pinning its Ed25519 identity) and its Noise static public key (IK needs the responder's
/// static key before the first message). The handshake checks both: the responder must hold the
/// Noise key, and its binding must name a key whose ID is `id`.
///
/// Text form: `vxk1` + Bech32m over the 20-byte ID and the 32-byte Noise key (94 characters). The
/// bootstrap entry `KEY@HOST:PORT` ([`BootstrapEntry`]) uses it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeKey {
    pub id: UserId,
    pub noise: [u8; 32],
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut b = [0u8; USER_ID_LEN + 32];
        b[..USER_ID_LEN].copy_from_slice(&self.id.0);
        b[USER_ID_LEN..].copy_from_slice(&self.noise);
        f.write_str(&text::encode(NODE_KEY_PREFIX, &b))
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({self})")
    }
}

impl FromStr for NodeKey {
    type Err = TextError;
    fn from_str(s: &str) -> Result<Self, TextError> {
        let b = text::decode::<{ USER_ID_LEN + 32 }>(NODE_KEY_PREFIX, s)?;
        let mut id = [0u8; USER_ID_LEN];
        id.copy_from_slice(&b[..USER_ID_LEN]);
        let mut noise = [0u8; 32];
        noise.copy_from_slice(&b[USER_ID_LEN..]);
        Ok(NodeKey {
            id: UserId(id),
            noise,
        })
    }
}

/// A bootstrap entry, `KEY@HOST:PORT`: how a client reaches a supernode it has never talked to,
/// with the key that makes the first contact impossible to intercept. `HOST` is a name or an IP
/// address (IPv6 in brackets); resolving names is the driver's job.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BootstrapEntry {
    pub key: NodeKey,
    pub host: String,
    pub port: u16,
}

/// Why a bootstrap entry was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BootstrapError {
    /// No `@`: an entry is `KEY@HOST:PORT`, with the key `supernoded` prints.
    #[error("expected KEY@HOST:PORT (no '@' found)")]
    NoAt,
    /// The key part is not a node key (`vxk1...`), or has a typo.
    #[error("bad key: {0}")]
    Key(#[from] TextError),
    /// The address part is not `HOST:PORT` / `[IPV6]:PORT`.
    #[error("bad address {0:?}: expected HOST:PORT or [IPV6]:PORT")]
    Address(String),
}

impl FromStr for BootstrapEntry {
    type Err = BootstrapError;
    fn from_str(s: &str) -> Result<Self, BootstrapError> {
        let s = s.trim();
        let (key, addr) = s.split_once('@').ok_or(BootstrapError::NoAt)?;
        let key: NodeKey = key.parse()?;
        let bad = || BootstrapError::Address(addr.to_string());
        let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
            let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
            h.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            (h, p)
        } else {
            let (h, p) = addr.rsplit_once(':').ok_or_else(bad)?;
            if h.is_empty() || h.contains(':') || h.contains(char::is_whitespace) {
                return Err(bad());
            }
            (h, p)
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(bad());
        }
        Ok(BootstrapEntry {
            key,
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for BootstrapEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}@[{}]:{}", self.key, self.host, self.port)
        } else {
            write!(f, "{}@{}:{}", self.key, self.host, self.port)
        }
    }
}
