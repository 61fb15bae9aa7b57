//! TURN authentication: long-term credentials (RFC 8489 §9.2) from a users file, time-limited
//! credentials minted from shared secrets (coturn's `use-auth-secret`, the "TURN REST API"),
//! stateless nonces, and a rate limiter for 401 responses.
//!
//! Time-limited credentials: the username is `EXPIRY:USER` (EXPIRY in Unix seconds) and the
//! password `base64(HMAC-SHA1(secret, username))`. A relay may hold several secrets: the first
//! is current, the others are still accepted, so a secret can be rotated without a flag day. The
//! mesh (DESIGN §5) gives each (relay, supernode) pair its own secret; a supernode's ID then
//! travels in the USER part.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::Sha256;

use crate::stun::long_term_key;

/// A long-term credential key: MD5(username ":" realm ":" password).
pub type Key = [u8; 16];

/// The credentials a relay accepts. Cheap to replace as a whole on reload.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub realm: String,
    /// Users from the users file: name -> key.
    users: HashMap<String, Key>,
    /// Shared secrets for time-limited credentials, current first.
    secrets: Vec<Vec<u8>>,
    /// Secrets this relay gave each supernode it authorised (by the supernode's ID text),
    /// current first: credentials `EXPIRY:SUPERNODE:USER` are checked against these only.
    supernodes: HashMap<String, Vec<Vec<u8>>>,
}

/// Why a username has no key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("unknown user")]
    UnknownUser,
    #[error("time-limited credential expired")]
    Expired,
}

/// A users file line that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("users file line {line}: expected 'user:password' or 'user:0x<32 hex digits of key>'")]
pub struct UsersFileError {
    pub line: usize,
}

impl Credentials {
    pub fn new(realm: &str) -> Credentials {
        Credentials {
            realm: realm.to_string(),
            ..Credentials::default()
        }
    }

    /// Adds a user with a plain password.
    pub fn add_user(&mut self, user: &str, password: &str) {
        let key = long_term_key(user, &self.realm, password);
        self.users.insert(user.to_string(), key);
    }

    /// Adds a shared secret for time-limited credentials (the first added is current).
    pub fn add_secret(&mut self, secret: &[u8]) {
        self.secrets.push(secret.to_vec());
    }

    pub fn has_secrets(&self) -> bool {
        !self.secrets.is_empty() || !self.supernodes.is_empty()
    }

    /// Sets the secrets a supernode may mint credentials with (current first); an empty list
    /// revokes it.
    pub fn set_supernode_secrets(&mut self, supernode: &str, secrets: Vec<Vec<u8>>) {
        if secrets.is_empty() {
            self.supernodes.remove(supernode);
        } else {
            self.supernodes.insert(supernode.to_string(), secrets);
        }
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Loads `user:password` lines (coturn's format; `user:0x<hex>` gives the key directly).
    /// Blank lines and `#` comments are skipped.
    pub fn add_users_file(&mut self, text: &str) -> Result<(), UsersFileError> {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = UsersFileError { line: i + 1 };
            let (user, pass) = line.split_once(':').ok_or(err.clone())?;
            if user.is_empty() {
                return Err(err);
            }
            match pass.strip_prefix("0x") {
                Some(hex) if hex.len() == 32 => {
                    let mut key = [0u8; 16];
                    for (k, pair) in key.iter_mut().zip(hex.as_bytes().chunks(2)) {
                        let s = std::str::from_utf8(pair).map_err(|_| err.clone())?;
                        *k = u8::from_str_radix(s, 16).map_err(|_| err.clone())?;
                    }
                    self.users.insert(user.to_string(), key);
                }
                _ => self.add_user(user, pass),
            }
        }
        Ok(())
    }

    /// The keys `username` may be using (several while secrets rotate), at Unix time `unix_now`.
    pub fn keys(&self, username: &str, unix_now: u64) -> Result<Vec<Key>, CredentialError> {
        if let Some(k) = self.users.get(username) {
            return Ok(vec![*k]);
        }
        // Minted by a supernode: `EXPIRY:SUPERNODE:USER`, checked against the secrets this relay
        // gave that supernode and nothing else. A supernode the relay never authorised (or has
        // revoked) mints nothing that works here.
        let mut parts = username.splitn(3, ':');
        let (_, minter, rest) = (parts.next(), parts.next(), parts.next());
        let secrets = match (minter, rest) {
            (Some(m), Some(_)) if m.starts_with(crate::identity::USER_ID_PREFIX) => {
                self.supernodes.get(m).ok_or(CredentialError::UnknownUser)?
            }
            _ => &self.secrets,
        };
        if secrets.is_empty() {
            return Err(CredentialError::UnknownUser);
        }
        let expiry = rest_expiry(username).ok_or(CredentialError::UnknownUser)?;
        if expiry < unix_now {
            return Err(CredentialError::Expired);
        }
        Ok(secrets
            .iter()
            .map(|s| long_term_key(username, &self.realm, &rest_password(s, username)))
            .collect())
    }
}

/// The expiry of a time-limited username `EXPIRY:USER` (or a bare `EXPIRY`).
pub fn rest_expiry(username: &str) -> Option<u64> {
    username.split(':').next()?.parse().ok()
}

/// The password for time-limited `username`: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(secret).expect("any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Mints a time-limited credential for `user` valid until Unix time `expiry`: (username,
/// password).
pub fn mint_rest_credential(secret: &[u8], user: &str, expiry: u64) -> (String, String) {
    let username = format!("{expiry}:{user}");
    let password = rest_password(secret, &username);
    (username, password)
}

/// Stateless nonces: the mint time and a MAC over it and the client's IP. Nothing is stored per
/// client, so a flood of unauthenticated requests costs no memory. Stale after `lifetime` (the
/// client then gets 438 and retries with a fresh one).
#[derive(Clone)]
pub struct Nonces {
    key: [u8; 32],
    epoch: Instant,
    lifetime: Duration,
}

/// What a nonce check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    Stale,
    Invalid,
}

impl Nonces {
    pub fn new(key: [u8; 32], epoch: Instant, lifetime: Duration) -> Nonces {
        Nonces {
            key,
            epoch,
            lifetime,
        }
    }

    fn mac(&self, t: u64, ip: IpAddr) -> u64 {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("any key length");
        mac.update(&t.to_be_bytes());
        match ip {
            IpAddr::V4(v4) => mac.update(&v4.octets()),
            IpAddr::V6(v6) => mac.update(&v6.octets()),
        }
        let out = mac.finalize().into_bytes();
        u64::from_be_bytes(out[..8].try_into().expect("8 bytes"))
    }

    /// A nonce for `client` minted at `now`: 32 hex characters.
    pub fn mint(&self, now: Instant, client: SocketAddr) -> String {
        let t = now.saturating_duration_since(self.epoch).as_millis() as u64;
        format!("{t:016x}{:016x}", self.mac(t, client.ip()))
    }

    pub fn check(&self, nonce: &str, now: Instant, client: SocketAddr) -> NonceCheck {
        if nonce.len() != 32 {
            return NonceCheck::Invalid;
        }
        let (Ok(t), Ok(mac)) = (
            u64::from_str_radix(&nonce[..16], 16),
            u64::from_str_radix(&nonce[16..], 16),
        ) else {
            return NonceCheck::Invalid;
        };
        if self.mac(t, client.ip()) != mac {
            return NonceCheck::Invalid;
        }
        let minted = self.epoch + Duration::from_millis(t);
        if minted > now + Duration::from_secs(1) {
            return NonceCheck::Invalid;
        }
        if now.saturating_duration_since(minted) > self.lifetime {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }
}

/// The unit quotas and rate limits count per: an IPv4 address, or an IPv6 /64 (one host
/// commonly holds a whole /64, so per-address keys would let it take any number of slots).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
        v4 => v4,
    }
}

/// 401/438 challenges per second one source ([`source_key`]) earns, over UDP.
pub const CHALLENGE_RATE: f64 = 20.0;
/// Challenges one source may draw at once. Every allocation starts with one challenge (its
/// first Allocate carries no credentials), so this is how many clients behind one address may
/// connect at the same instant without a retransmission: 128 is twice the default source quota
/// (64 allocations, each allowed one retry); `turnutils_uclient -y -m 50`, 65 first Allocates
/// within about a second, connects at full speed (the old burst of 40 held three of them
/// back for a retransmission).
pub const CHALLENGE_BURST: f64 = 128.0;
/// The size of a 401 with the default realm (`voxmesh`) and SOFTWARE: header 20, ERROR-CODE
/// 24, REALM 12, NONCE 36 (32 characters), SOFTWARE 24, FINGERPRINT 8. Each 4 bytes of a
/// longer realm add 4. A bare 20-byte Allocate draws one: 6.2 times its size.
pub const CHALLENGE_BYTES: u64 = 124;
/// The most a spoofed source can make the relay send to the address it forges, in 401 bytes
/// per second, sustained: [`CHALLENGE_RATE`] × [`CHALLENGE_BYTES`] = 2,480 B/s. On top of that,
/// once, the burst: 128 × 124 = 15,872 bytes, so no one-second window holds more than
/// (128 + 20) × 124 = 18,352 bytes. (TCP and TLS clients are not limited: their handshake
/// proves the address.)
pub const MAX_CHALLENGE_BYTES_PER_SECOND: u64 = CHALLENGE_RATE as u64 * CHALLENGE_BYTES;

/// A token bucket per source ([`source_key`]), in a bounded table: used to rate-limit 401
/// responses so a flood of unauthenticated requests cannot turn the relay into a reflector
/// (see [`MAX_CHALLENGE_BYTES_PER_SECOND`]).
/// When the table is full of live buckets (a flood from many spoofed sources), newcomers share
/// one overflow bucket: they still get challenges, at the rate of one source.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    max_entries: usize,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    pub fn new(per_sec: f64, burst: f64, max_entries: usize) -> RateLimiter {
        RateLimiter {
            per_sec,
            burst,
            max_entries,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `ip`; `false` when it has none left.
    pub fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        let mut ip = source_key(ip);
        if self.buckets.len() >= self.max_entries && !self.buckets.contains_key(&ip) {
            // Forget buckets that have refilled (they behave like new ones anyway); if that
            // frees nothing, the table is under attack from many sources: the newcomer
            // shares the overflow bucket (keyed by the unspecified address, never a source).
            let (rate, burst) = (self.per_sec, self.burst);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
            if self.buckets.len() >= self.max_entries {
                ip = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
            }
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_sec)
            .min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_and_keys() {
        let mut c = Credentials::new("voxmesh.test");
        c.add_users_file("# comment\nalice:secret\n\nbob:0x00112233445566778899aabbccddeeff\n")
            .unwrap();
        assert_eq!(
            c.keys("alice", 0).unwrap(),
            vec![long_term_key("alice", "voxmesh.test", "secret")]
        );
        assert_eq!(c.keys("bob", 0).unwrap()[0][..2], [0x00, 0x11]);
        assert_eq!(c.keys("carol", 0), Err(CredentialError::UnknownUser));
        assert_eq!(
            c.add_users_file("nocolon\n"),
            Err(UsersFileError { line: 1 })
        );
        assert_eq!(
            c.add_users_file("ok:x\n:nouser\n"),
            Err(UsersFileError { line: 2 })
        );
    }

    #[test]
    fn time_limited_credentials_with_rotation() {
        let mut c = Credentials::new("r");
        c.add_secret(b"new");
        c.add_secret(b"old");
        let (user, pass) = mint_rest_credential(b"old", "alice", 1000);
        assert_eq!(user, "1000:alice");
        let keys = c.keys(&user, 999).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(
            keys.contains(&long_term_key(&user, "r", &pass)),
            "the previous secret still works"
        );
        assert_eq!(c.keys(&user, 1001), Err(CredentialError::Expired));
        assert_eq!(
            c.keys("alice", 0),
            Err(CredentialError::UnknownUser),
            "no expiry, no key"
        );
        // coturn's documented example: secret "north", username "1433895918:voxmesh".
        assert_eq!(rest_password(b"north", "1433895918:voxmesh").len(), 28);
    }

    #[test]
    fn supernode_minted_credentials_use_only_that_supernodes_secrets() {
        let mut c = Credentials::new("r");
        c.add_secret(b"global");
        let sn = "vx1wedzd8kmzcu4m0lxn7e0wz5rke9u8eef2khqwu";
        let other = "vx1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        c.set_supernode_secrets(sn, vec![b"for-sn".to_vec(), b"old".to_vec()]);
        let user = format!("2000:{sn}:alice");
        let keys = c.keys(&user, 1000).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&long_term_key(&user, "r", &rest_password(b"for-sn", &user))));
        assert!(
            !keys.contains(&long_term_key(&user, "r", &rest_password(b"global", &user))),
            "the global secret does not mint for a supernode"
        );
        assert_eq!(
            c.keys(&format!("2000:{other}:alice"), 1000),
            Err(CredentialError::UnknownUser),
            "an unauthorised supernode"
        );
        assert_eq!(c.keys(&user, 2001), Err(CredentialError::Expired));
        c.set_supernode_secrets(sn, Vec::new());
        assert_eq!(
            c.keys(&user, 1000),
            Err(CredentialError::UnknownUser),
            "revoked"
        );
        assert!(
            c.keys("2000:alice", 1000).is_ok(),
            "plain time-limited credentials still work"
        );
    }

    #[test]
    fn nonces_expire_and_bind_to_the_client() {
        let t0 = Instant::now();
        let n = Nonces::new([7; 32], t0, Duration::from_secs(600));
        let a: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        let b: SocketAddr = "198.51.100.8:4000".parse().unwrap();
        let nonce = n.mint(t0, a);
        assert_eq!(
            n.check(&nonce, t0 + Duration::from_secs(10), a),
            NonceCheck::Valid
        );
        assert_eq!(
            n.check(&nonce, t0, b),
            NonceCheck::Invalid,
            "another client's nonce"
        );
        assert_eq!(
            n.check(&nonce, t0 + Duration::from_secs(601), a),
            NonceCheck::Stale
        );
        let forged = format!("{:016x}{}", 5u64, &nonce[16..]);
        assert_eq!(n.check(&forged, t0, a), NonceCheck::Invalid);
        assert_eq!(n.check("short", t0, a), NonceCheck::Invalid);
    }

    #[test]
    fn rate_limiter_is_per_source_and_bounded() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10.0, 5.0, 3);
        let ip = |n: u8| IpAddr::from([198, 51, 100, n]);
        assert!((0..5).all(|_| r.allow(t0, ip(1))));
        assert!(!r.allow(t0, ip(1)), "burst spent");
        assert!(r.allow(t0, ip(2)), "other sources unaffected");
        assert!(r.allow(t0 + Duration::from_millis(200), ip(1)), "refills");
        r.allow(t0, ip(3));
        assert_eq!(r.len(), 3);
        // The table is full of active sources: newcomers share one overflow bucket, so they
        // are still challenged, but together at one source's rate.
        assert!(
            (4..9).all(|n| r.allow(t0, ip(n))),
            "overflow bucket's burst"
        );
        assert!(!r.allow(t0, ip(9)), "overflow bucket spent");
        assert!(!r.allow(t0, ip(4)), "shared, not per newcomer");
        assert_eq!(r.len(), 4, "the table stays bounded");
        assert!(
            r.allow(t0 + Duration::from_secs(10), ip(10)),
            "after refill, old entries go"
        );
    }

    #[test]
    fn sources_are_ipv4_addresses_or_ipv6_slash_64s() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert_eq!(source_key(mapped), IpAddr::from([198, 51, 100, 7]));
        let mut r = RateLimiter::new(10.0, 2.0, 100);
        assert!(r.allow(Instant::now(), a) && r.allow(Instant::now(), b));
        assert!(!r.allow(Instant::now(), a), "one /64, one bucket");
    }
}
