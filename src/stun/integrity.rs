//! FINGERPRINT and MESSAGE-INTEGRITY(-SHA256) (RFC 8489 §14.5-§14.7, §9.2).

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;

use super::{FINGERPRINT_XOR, HEADER_LEN, Message};

/// Outcome of checking an optional integrity attribute.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IntegrityCheck {
    Absent,
    Valid,
    Invalid,
}

/// The long-term credential key: MD5(username ":" realm ":" password) (RFC 8489 §9.2.2).
/// The password is used as given: SASLprep/OpaqueString of ASCII is the identity.
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

pub(crate) fn crc32_fingerprint(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes) ^ FINGERPRINT_XOR
}

pub(crate) fn hmac_sha1(key: &[u8], bytes: &[u8]) -> [u8; 20] {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(bytes);
    mac.finalize().into_bytes().into()
}

pub(crate) fn hmac_sha256(key: &[u8], bytes: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(bytes);
    mac.finalize().into_bytes().into()
}

/// The header with its length field rewritten to end at `end` (as the sender saw it when it
/// computed the attribute that ends there).
fn header_ending_at(bytes: &[u8], end: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h.copy_from_slice(&bytes[..HEADER_LEN]);
    h[2..4].copy_from_slice(&((end - HEADER_LEN) as u16).to_be_bytes());
    h
}

impl Message<'_> {
    /// Checks FINGERPRINT; `Absent` when the message has none.
    pub fn check_fingerprint(&self) -> IntegrityCheck {
        let Some(off) = self.fingerprint_offset() else {
            return IntegrityCheck::Absent;
        };
        let bytes = self.as_bytes();
        let Some(v) = bytes.get(off + 4..off + 8) else {
            return IntegrityCheck::Invalid;
        };
        let mut h = crc32fast::Hasher::new();
        h.update(&header_ending_at(bytes, off + 8));
        h.update(&bytes[HEADER_LEN..off]);
        let want = h.finalize() ^ FINGERPRINT_XOR;
        if v == want.to_be_bytes() && u16::from_be_bytes([bytes[off + 2], bytes[off + 3]]) == 4 {
            IntegrityCheck::Valid
        } else {
            IntegrityCheck::Invalid
        }
    }

    /// Checks MESSAGE-INTEGRITY (HMAC-SHA1) with `key`.
    pub fn check_integrity(&self, key: &[u8]) -> IntegrityCheck {
        let Some(off) = self.integrity_offset() else {
            return IntegrityCheck::Absent;
        };
        let bytes = self.as_bytes();
        let Some(v) = bytes.get(off + 4..off + 24) else {
            return IntegrityCheck::Invalid;
        };
        // Exactly 20 bytes (RFC 8489 §14.5): a longer attribute whose first 20 bytes are a valid
        // HMAC of the same prefix must not pass.
        if u16::from_be_bytes([bytes[off + 2], bytes[off + 3]]) != 20 {
            return IntegrityCheck::Invalid;
        }
        let mut mac =
            <Hmac<Sha1> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(&header_ending_at(bytes, off + 24));
        mac.update(&bytes[HEADER_LEN..off]);
        verdict(mac.verify_slice(v).is_ok())
    }

    /// Checks MESSAGE-INTEGRITY-SHA256 with `key`. RFC 8489 allows truncation to 16..32 bytes
    /// in multiples of 4.
    pub fn check_integrity_sha256(&self, key: &[u8]) -> IntegrityCheck {
        let Some(off) = self.integrity_sha256_offset() else {
            return IntegrityCheck::Absent;
        };
        let bytes = self.as_bytes();
        let len = u16::from_be_bytes([bytes[off + 2], bytes[off + 3]]) as usize;
        if !(16..=32).contains(&len) || len % 4 != 0 {
            return IntegrityCheck::Invalid;
        }
        let v = &bytes[off + 4..off + 4 + len];
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(&header_ending_at(bytes, off + 4 + len));
        mac.update(&bytes[HEADER_LEN..off]);
        verdict(mac.verify_truncated_left(v).is_ok())
    }
}

fn verdict(ok: bool) -> IntegrityCheck {
    if ok {
        IntegrityCheck::Valid
    } else {
        IntegrityCheck::Invalid
    }
}
