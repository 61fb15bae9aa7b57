//! Handshake MACs, stateless cookies and rate limiting: WireGuard's scheme (its paper §5.3,
//! "Cookie MACs"), with HMAC-SHA256 in place of keyed BLAKE2s.
//!
//! - **mac1** = MAC(H("mac1" ‖ responder's Noise static key), initiation up to mac1). Anyone who
//!   knows the responder's key can make it, so it proves nothing about the sender, but it lets
//!   the responder drop, at the price of one hash, every initiation not meant for it: scanners,
//!   garbage, and initiators that were given the wrong key (a stale bootstrap entry).
//! - **cookie** = MAC(secret, source IP ‖ port), the secret random and replaced every
//!   [`Config::cookie_rotation`](super::Config::cookie_rotation); the responder keeps no state
//!   per cookie. Under load it answers an initiation with a cookie reply instead of doing the
//!   Diffie-Hellman work; only a sender that receives at its source address can read it.
//! - **mac2** = MAC(cookie, initiation up to mac2): the initiator's proof that it owns its
//!   source address. The cookie reply is sealed (XChaCha20-Poly1305, key derived from the
//!   responder's static key, the initiation's mac1 as associated data), so nobody can feed an
//!   initiator a false cookie for a handshake they did not see.
//!
//! Rate limits are token buckets: one global bucket for handshakes from unproven sources, and
//! two fixed tables of per-source buckets (unproven and proven), indexed by a keyed hash of the
//! source IP (IPv6: its /64, since one host has the whole prefix). The proven table is separate
//! so that a flood spoofing a victim's address cannot use up the victim's own budget: the victim
//! gets a cookie and spends from a bucket the spoofer cannot reach.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{AeadInPlace, KeyInit as _};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::wire::MAC;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 over the concatenation of `parts`, truncated to 16 bytes.
pub(crate) fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC] {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    let full = m.finalize().into_bytes();
    full[..MAC].try_into().expect("16 bytes")
}

/// Constant-time comparison of two MACs.
pub(crate) fn mac_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Keys derived from one Noise static public key.
#[derive(Clone)]
pub(crate) struct MacKeys {
    pub mac1: [u8; 32],
    pub cookie: [u8; 32],
}

impl MacKeys {
    pub fn for_static(noise_public: &[u8; 32]) -> MacKeys {
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut h = Sha256::new();
            h.update(label);
            h.update(noise_public);
            h.finalize().into()
        };
        MacKeys {
            mac1: derive(b"voxmesh/v1/mac1\0"),
            cookie: derive(b"voxmesh/v1/cookie\0"),
        }
    }
}

/// Seals `cookie` for the initiator whose initiation carried `mac1`.
pub(crate) fn seal_cookie(
    key: &[u8; 32],
    nonce: &[u8; 24],
    mac1: &[u8],
    cookie: &[u8; MAC],
) -> [u8; MAC + 16] {
    let aead = XChaCha20Poly1305::new(key.into());
    let mut buf = *cookie;
    let tag = aead
        .encrypt_in_place_detached(XNonce::from_slice(nonce), mac1, &mut buf)
        .expect("16 bytes always encrypt");
    let mut out = [0u8; MAC + 16];
    out[..MAC].copy_from_slice(&buf);
    out[MAC..].copy_from_slice(&tag);
    out
}

/// Opens a sealed cookie; `None` if it was not made for the initiation that carried `mac1`.
pub(crate) fn open_cookie(
    key: &[u8; 32],
    nonce: &[u8],
    mac1: &[u8],
    sealed: &[u8],
) -> Option<[u8; MAC]> {
    let aead = XChaCha20Poly1305::new(key.into());
    let mut buf: [u8; MAC] = sealed[..MAC].try_into().ok()?;
    let tag = chacha20poly1305::Tag::from_slice(&sealed[MAC..MAC + 16]);
    aead.decrypt_in_place_detached(XNonce::from_slice(nonce), mac1, &mut buf, tag)
        .ok()?;
    Some(buf)
}

fn addr_bytes(addr: &SocketAddr, out: &mut [u8; 18]) -> usize {
    let port = addr.port().to_be_bytes();
    match addr.ip() {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            out[4..6].copy_from_slice(&port);
            6
        }
        IpAddr::V6(v6) => {
            out[..16].copy_from_slice(&v6.octets());
            out[16..18].copy_from_slice(&port);
            18
        }
    }
}

/// The responder's rotating cookie secret.
pub(crate) struct CookieJar {
    current: [u8; 32],
    previous: [u8; 32],
    born: Instant,
    rotation: Duration,
}

impl CookieJar {
    pub fn new(now: Instant, rotation: Duration, secret: [u8; 32]) -> CookieJar {
        CookieJar {
            current: secret,
            previous: secret,
            born: now,
            rotation,
        }
    }

    /// Rotates when due; `fresh` supplies the new secret.
    pub fn maybe_rotate(&mut self, now: Instant, fresh: impl FnOnce() -> [u8; 32]) {
        if now.saturating_duration_since(self.born) >= self.rotation {
            self.previous = self.current;
            self.current = fresh();
            self.born = now;
        }
    }

    fn cookie_with(secret: &[u8; 32], from: &SocketAddr) -> [u8; MAC] {
        let mut a = [0u8; 18];
        let n = addr_bytes(from, &mut a);
        mac(secret, &[&a[..n]])
    }

    /// The cookie for a source address.
    pub fn cookie(&self, from: &SocketAddr) -> [u8; MAC] {
        Self::cookie_with(&self.current, from)
    }

    /// Whether `mac2` over `msg` was made with a cookie we issued to `from` (current or previous
    /// secret).
    pub fn mac2_valid(&self, from: &SocketAddr, msg: &[u8], mac2: &[u8]) -> bool {
        [&self.current, &self.previous].into_iter().any(|secret| {
            let cookie = Self::cookie_with(secret, from);
            mac_eq(&mac(&cookie, &[msg]), mac2)
        })
    }
}

/// A token bucket.
#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

/// A token bucket per key (global: one slot), keys hashed into a fixed table.
pub(crate) struct RateLimiter {
    slots: Vec<Bucket>,
    rate: f64,
    burst: f64,
    hash_key: [u8; 16],
}

impl RateLimiter {
    pub fn new(slots: usize, rate: f64, burst: f64, hash_key: [u8; 16]) -> RateLimiter {
        RateLimiter {
            slots: vec![Bucket::default(); slots.max(1)],
            rate: rate.max(0.0),
            burst: burst.max(1.0),
            hash_key,
        }
    }

    fn slot(&self, ip: &IpAddr) -> usize {
        if self.slots.len() == 1 {
            return 0;
        }
        let mut buf = [0u8; 8];
        let bytes: &[u8] = match ip {
            IpAddr::V4(v4) => {
                buf[..4].copy_from_slice(&v4.octets());
                &buf[..4]
            }
            // One host owns a whole /64.
            IpAddr::V6(v6) => {
                buf.copy_from_slice(&v6.octets()[..8]);
                &buf
            }
        };
        // SipHash would do too; HMAC is already here and costs well under a microsecond.
        let h = mac(&self.hash_key, &[bytes]);
        (u64::from_le_bytes(h[..8].try_into().expect("8 bytes")) % self.slots.len() as u64) as usize
    }

    /// Takes one token for `ip` (any IP for the global limiter); false when the bucket is empty.
    pub fn take(&mut self, now: Instant, ip: &IpAddr) -> bool {
        let i = self.slot(ip);
        let (rate, burst) = (self.rate, self.burst);
        let b = &mut self.slots[i];
        let level = match b.last {
            None => burst,
            Some(last) => {
                (b.tokens + now.saturating_duration_since(last).as_secs_f64() * rate).min(burst)
            }
        };
        if b.last.is_none_or(|l| now > l) {
            b.last = Some(now);
        }
        if level >= 1.0 {
            b.tokens = level - 1.0;
            true
        } else {
            b.tokens = level;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut r = RateLimiter::new(16, 10.0, 5.0, [1; 16]);
        let n = (0..20).filter(|_| r.take(t0, &ip)).count();
        assert_eq!(n, 5);
        // 10 per second: one token every 100 ms.
        assert!(!r.take(t0 + Duration::from_millis(50), &ip));
        assert!(r.take(t0 + Duration::from_millis(101), &ip));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let mut big = RateLimiter::new(1 << 16, 10.0, 5.0, [1; 16]);
        for _ in 0..5 {
            assert!(big.take(t0, &ip));
        }
        assert!(big.take(t0, &other), "another source has its own bucket");
    }

    #[test]
    fn cookie_seal_binds_mac1() {
        let key = [7u8; 32];
        let nonce = [3u8; 24];
        let cookie = [9u8; MAC];
        let sealed = seal_cookie(&key, &nonce, b"mac1-of-init-one", &cookie);
        assert_eq!(
            open_cookie(&key, &nonce, b"mac1-of-init-one", &sealed),
            Some(cookie)
        );
        assert_eq!(
            open_cookie(&key, &nonce, b"mac1-of-init-two", &sealed),
            None
        );
        assert_eq!(
            open_cookie(&[8; 32], &nonce, b"mac1-of-init-one", &sealed),
            None
        );
    }

    #[test]
    fn mac2_accepts_previous_secret_and_binds_address() {
        let t0 = Instant::now();
        let mut jar = CookieJar::new(t0, Duration::from_secs(120), [1; 32]);
        let a: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        let b: SocketAddr = "198.51.100.7:4001".parse().unwrap();
        let msg = b"initiation";
        let m2 = mac(&jar.cookie(&a), &[msg]);
        assert!(jar.mac2_valid(&a, msg, &m2));
        assert!(!jar.mac2_valid(&b, msg, &m2));
        jar.maybe_rotate(t0 + Duration::from_secs(121), || [2; 32]);
        assert!(jar.mac2_valid(&a, msg, &m2), "previous secret still valid");
        jar.maybe_rotate(t0 + Duration::from_secs(242), || [3; 32]);
        assert!(
            !jar.mac2_valid(&a, msg, &m2),
            "two rotations later it is not"
        );
    }
}
