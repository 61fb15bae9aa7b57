//! The handshake's cryptography, apart from any state machine: Noise IK via `snow`, the identity
//! binding in the handshake payloads, and the MACs of the initiation frame.
//!
//! # Why Noise IK
//!
//! `Noise_IK_25519_ChaChaPoly_BLAKE2s`: the initiator already knows the responder's static key
//! (a client from its bootstrap entry or host cache, a supernode from the membership list), and
//! IK is the pattern for exactly that. It costs one round trip: the initiator's first message
//! already authenticates it (the `ss` DH) and carries its binding encrypted, and after the answer
//! both sides hold transport keys. Its first message is encrypted to the responder, so an
//! initiator given the wrong key gets nowhere (and is dropped by mac1 before any DH), and a
//! passive observer never learns who is connecting.
//!
//! XX would not need the responder's key in advance, but costs three messages (1.5 round trips
//! before the initiator may send), sends the responder's identity to anyone who asks, and leaves
//! the responder holding state and doing DH work for an initiator that has proven nothing yet. It
//! would also make the bootstrap key a check after the fact rather than the thing that makes
//! interception impossible. IK's known weaknesses are handled elsewhere: its first message can be
//! replayed (the responder keeps a replayed handshake pending until the initiator's first
//! transport frame confirms the keys, so a replay establishes nothing and replaces nothing), and
//! that message lacks forward secrecy if the responder's static key is later stolen (it carries
//! only the initiator's binding, which is public anyway).
//!
//! BLAKE2s and ChaCha20-Poly1305 are WireGuard's choices: fast in software on every CPU we run on.
//!
//! # Binding
//!
//! The payload of each handshake message is the sender's [`Binding`]: its Ed25519 key and the
//! signature over its Noise static key. The receiver checks it against the static key the
//! handshake just authenticated (`rs`), so a Noise key that the claimed identity did not sign is
//! refused. The responder's message 2 starts with a status byte, so an initiator whose binding
//! was refused learns it at once instead of timing out.
//!
//! # Cost
//!
//! A responder handshake is: mac1 (one HMAC), `es` and `ss` (two X25519), one Ed25519
//! verification, a fresh ephemeral (one base-point multiplication), `ee` and `se` (two X25519).
//! [`ResponderCrypto::respond`] does exactly that and nothing else, so a benchmark can set "new
//! sessions per second through the [`Endpoint`](super::Endpoint)" against this crypto limit. The
//! static key's public half is computed once, not per handshake (a resolver that caches it).

use std::time::Instant;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use curve25519_dalek::MontgomeryPoint;
use snow::params::{DHChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{Builder, HandshakeState};
use zeroize::Zeroizing;

use super::cookie::{MacKeys, mac, mac_eq};
use super::defaults::{Config, MAX_EPOCH_SKIP};
use super::wire::{self, INIT_LEN, INIT_MAC1, INIT_NOISE, NOISE1_LEN, NOISE2_LEN};

use crate::identity::{BINDING_LEN, Binding, BindingError, Identity, UserId};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Hashed into every handshake, so that a handshake for another protocol or version fails.
pub const PROLOGUE: &[u8] = b"voxmesh/v1/session";

/// A `snow` resolver that knows our static key pair, so building a handshake state does not
/// recompute the static public key (a base-point multiplication per handshake otherwise), and
/// whose X25519 refuses low-order peer keys (an all-zero shared secret), as WireGuard does.
struct Resolver {
    static_secret: Zeroizing<[u8; 32]>,
    static_public: [u8; 32],
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        DefaultResolver.resolve_rng()
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(X25519 {
                secret: Zeroizing::new([0; 32]),
                public: [0; 32],
                known: (*self.static_secret, self.static_public),
            })),
            _ => None,
        }
    }

    fn resolve_hash(&self, choice: &snow::params::HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &snow::params::CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

struct X25519 {
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
    known: ([u8; 32], [u8; 32]),
}

impl Drop for X25519 {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.known.0);
    }
}

impl Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }
    fn pub_len(&self) -> usize {
        32
    }
    fn priv_len(&self) -> usize {
        32
    }
    fn set(&mut self, privkey: &[u8]) {
        self.secret.copy_from_slice(&privkey[..32]);
        self.public = if *self.secret == self.known.0 {
            self.known.1
        } else {
            MontgomeryPoint::mul_base_clamped(*self.secret).to_bytes()
        };
    }
    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        rng.try_fill_bytes(&mut self.secret[..])?;
        self.public = MontgomeryPoint::mul_base_clamped(*self.secret).to_bytes();
        Ok(())
    }
    fn pubkey(&self) -> &[u8] {
        &self.public
    }
    fn privkey(&self) -> &[u8] {
        &self.secret[..]
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let peer: [u8; 32] = pubkey
            .get(..32)
            .and_then(|p| p.try_into().ok())
            .ok_or(snow::Error::Dh)?;
        let shared = MontgomeryPoint(peer).mul_clamped(*self.secret).to_bytes();
        if shared == [0; 32] {
            return Err(snow::Error::Dh);
        }
        out[..32].copy_from_slice(&shared);
        Ok(())
    }
}

/// What went wrong in a handshake's cryptography.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeCryptoError {
    /// Not a handshake frame of the right length and version.
    #[error("malformed handshake frame")]
    Malformed,
    /// mac1 does not match our key: not meant for us, or the sender has a wrong key for us.
    #[error("bad mac1 (the sender does not know our key)")]
    BadMac1,
    /// The Noise message does not decrypt: tampered, or made for another key or handshake.
    #[error("handshake message does not decrypt")]
    Decrypt,
    /// The peer's Noise static key is not bound to the identity it claims.
    #[error("identity binding refused: {0}")]
    Binding(#[from] BindingError),
}

/// Our side's precomputed handshake material.
pub(crate) struct Local {
    params: NoiseParams,
    static_secret: Zeroizing<[u8; 32]>,
    static_public: [u8; 32],
    binding: [u8; BINDING_LEN],
    pub mac_keys: MacKeys,
}

impl Local {
    pub fn new(identity: &Identity) -> Local {
        Local {
            params: NOISE_PARAMS.parse().expect("valid Noise protocol name"),
            static_secret: Zeroizing::new(*identity.noise_secret()),
            static_public: *identity.noise_public(),
            binding: identity.binding().encode(),
            mac_keys: MacKeys::for_static(identity.noise_public()),
        }
    }

    fn builder(&self) -> Builder<'_> {
        let resolver = Resolver {
            static_secret: self.static_secret.clone(),
            static_public: self.static_public,
        };
        Builder::with_resolver(self.params.clone(), Box::new(resolver))
            .prologue(PROLOGUE)
            .expect("prologue set once")
            .local_private_key(&self.static_secret[..])
            .expect("key set once")
    }

    /// Starts an initiator handshake to `remote_static` and writes message 1 (whose length is
    /// [`NOISE1_LEN`] plus `early`'s): its payload is our binding, then the early data.
    pub fn initiate(
        &self,
        remote_static: &[u8; 32],
        early: &[u8],
        msg1: &mut [u8],
    ) -> Result<HandshakeState, snow::Error> {
        let mut hs = self
            .builder()
            .remote_public_key(remote_static)?
            .build_initiator()?;
        let payload = [&self.binding[..], early].concat();
        let n = hs.write_message(&payload, msg1)?;
        debug_assert_eq!(n, NOISE1_LEN + early.len());
        Ok(hs)
    }

    /// Reads message 2 into `hs`; returns the responder's status byte and binding.
    pub fn finish(
        &self,
        hs: &mut HandshakeState,
        msg2: &[u8],
    ) -> Result<(u8, Result<Binding, BindingError>), HandshakeCryptoError> {
        let mut payload = [0u8; wire::RESP_PAYLOAD_LEN];
        let n = hs
            .read_message(msg2, &mut payload)
            .map_err(|_| HandshakeCryptoError::Decrypt)?;
        if n != payload.len() {
            return Err(HandshakeCryptoError::Malformed);
        }
        let rs = hs
            .get_remote_static()
            .ok_or(HandshakeCryptoError::Malformed)?;
        Ok((payload[0], Binding::verify(&payload[1..], rs)))
    }

    /// Checks mac1 of an initiation frame of either kind (its last 32 bytes are the MACs; the
    /// caller has checked the length its type allows).
    pub fn mac1_ok(&self, frame: &[u8]) -> bool {
        if frame.len() < INIT_LEN {
            return false;
        }
        let (m1, m2) = wire::init_macs(frame.len());
        mac_eq(&mac(&self.mac_keys.mac1, &[&frame[..m1]]), &frame[m1..m2])
    }

    /// The responder's cryptography for message 1 (Noise read, binding check, Noise write with
    /// status). On a refused binding, message 2 is still written (with a refusal status) and the
    /// error returned alongside it. Early data (message 1's payload after the binding) is
    /// offered to `take_early` once the binding holds; if it takes it, message 2 says so
    /// ([`wire::STATUS_OK_EARLY`]) and [`Responded::early`] carries it.
    pub fn respond(
        &self,
        msg1: &[u8],
        msg2: &mut [u8; NOISE2_LEN],
        take_early: impl FnOnce(&[u8]) -> bool,
    ) -> Result<Responded, (HandshakeCryptoError, bool)> {
        let mut hs = self
            .builder()
            .build_responder()
            .map_err(|_| (HandshakeCryptoError::Decrypt, false))?;
        // On the stack: a handshake is the one thing a stranger can make us do at a rate.
        let mut buf = [0u8; wire::EARLY_INIT_MAX];
        let Some(payload) = msg1
            .len()
            .checked_sub(NOISE1_LEN - BINDING_LEN)
            .and_then(|len| buf.get_mut(..len))
        else {
            return Err((HandshakeCryptoError::Malformed, false));
        };
        let len = payload.len();
        let n = hs
            .read_message(msg1, payload)
            .map_err(|_| (HandshakeCryptoError::Decrypt, false))?;
        if n != len || n < BINDING_LEN {
            return Err((
                HandshakeCryptoError::Binding(BindingError::Malformed),
                false,
            ));
        }
        let rs = hs
            .get_remote_static()
            .ok_or((HandshakeCryptoError::Malformed, false))?;
        let binding = Binding::verify(&payload[..BINDING_LEN], rs);
        let early = &payload[BINDING_LEN..];
        let took = binding.is_ok() && !early.is_empty() && take_early(early);
        let mut out = [0u8; wire::RESP_PAYLOAD_LEN];
        out[0] = match (&binding, took) {
            (Ok(_), true) => wire::STATUS_OK_EARLY,
            (Ok(_), false) => wire::STATUS_OK,
            (Err(_), _) => wire::STATUS_BINDING_REFUSED,
        };
        out[1..].copy_from_slice(&self.binding);
        let wrote = hs.write_message(&out, msg2).is_ok();
        let peer = binding.map_err(|e| (HandshakeCryptoError::Binding(e), wrote))?;
        if !wrote {
            return Err((HandshakeCryptoError::Decrypt, false));
        }
        let transport =
            TransportKeys::split(&mut hs, false).ok_or((HandshakeCryptoError::Malformed, false))?;
        let early = took.then(|| payload[BINDING_LEN..].to_vec());
        Ok(Responded {
            transport,
            peer,
            early,
        })
    }
}

pub(crate) struct Responded {
    pub transport: TransportKeys,
    pub peer: Binding,
    /// The early data, when `take_early` took it.
    pub early: Option<Vec<u8>>,
}

/// A session's transport keys: Noise's `Split()` gives one ChaCha20-Poly1305 key each way, and
/// each way then changes its key every epoch (see "Rekeying" below).
///
/// Frames are encrypted exactly as Noise's transport messages (ChaChaPoly: a 96-bit nonce of
/// four zero bytes and the 64-bit nonce little-endian, no associated data, the tag after the
/// ciphertext). The 64-bit nonce is the frame's whole epoch-and-counter field
/// ([`wire::nonce_field`]), unique per direction for the life of the session. Holding bare
/// keys costs 32 bytes each (96 bytes in all with the epoch state); `snow`'s stateless
/// transport state costs over 200 (two boxed ciphers, the pattern, the remote key), which at a
/// supernode's hundreds of thousands of sessions is real memory.
///
/// # Rekeying
///
/// Each direction's key changes by Noise's `REKEY()` (Noise §4.2, §11.3: the old key encrypts
/// 32 zero bytes under nonce 2^64 - 1; the first 32 bytes of the result are the new key), so both
/// ends derive every epoch's key from the handshake's, with no message and no round trip, and no
/// epoch's key reveals an earlier one. The sender moves to the next epoch on its own schedule
/// ([`Config::rekey_interval`], [`Config::rekey_messages`]) and says which epoch sealed a frame
/// in its header; the receiver follows when a frame of a later epoch authenticates, and keeps
/// the previous epoch's key for [`Config::rekey_overlap`] so that frames reordered around the
/// switch still open. A key that is replaced or expires is erased (the cipher zeroizes its key
/// when dropped, and a replaced key is dropped where it lies), so after the overlap no key that
/// could open an older epoch's frames is left: such a frame is refused as
/// [`Refusal::StaleEpoch`](super::Refusal). (As everywhere in Rust, a key passing through a
/// temporary while it is derived may leave a copy on the stack until that is reused.)
///
/// Why derive instead of a new handshake inside the session (WireGuard's way): a handshake
/// would add DH work and a round trip per session per interval — a supernode with 100,000
/// sessions would run over 800 handshakes a second just to rekey — and a state machine for
/// handshakes crossing on a live session. What derivation gives up is post-compromise
/// security: whoever steals a current key can follow the derivation forward, until the session
/// ends; sessions are re-established after every failover, restart or idle period anyway.
pub(crate) struct TransportKeys {
    send: ChaCha20Poly1305,
    /// The key of the latest epoch received.
    recv: ChaCha20Poly1305,
    send_epoch: u16,
    recv_epoch: u16,
    /// Frames sealed with the current send key.
    sent_in_epoch: u32,
    /// When the send key must change; set by the first frame sealed with it.
    rekey_at: Option<Instant>,
    /// The previous receive epoch's key, during the overlap. Boxed: a session holds one for a
    /// few seconds per interval, so inline room for it (48 bytes) would mostly be wasted.
    previous: Option<Box<Previous>>,
}

/// A receive key kept after the peer moved on, and until when.
struct Previous {
    key: ChaCha20Poly1305,
    until: Instant,
}

/// Which keys a session holds: for tests and diagnostics (a rekey is invisible otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyEpochs {
    /// The epoch our next frame is sealed in.
    pub send: u16,
    /// The latest epoch received from the peer.
    pub recv: u16,
    /// The previous receive epoch, while its key is still held (the overlap).
    pub previous: Option<u16>,
}

/// Why a transport frame was not opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// Sealed in an epoch whose key is gone (older than the overlap allows).
    StaleEpoch,
    /// Sealed in an epoch further ahead than [`MAX_EPOCH_SKIP`].
    FutureEpoch,
    /// Does not authenticate under the key of its epoch.
    BadAuth,
}

/// Noise's `REKEY(k)` for ChaChaPoly (Noise §4.2): `ENCRYPT(k, 2^64 - 1, "", zeros(32))`, first
/// 32 bytes. Nonce 2^64 - 1 is never used for a frame, so this output never appears on the wire.
fn next_key(k: &ChaCha20Poly1305) -> ChaCha20Poly1305 {
    let mut buf = Zeroizing::new([0u8; 32]);
    let _tag = k
        .encrypt_in_place_detached(&TransportKeys::nonce(u64::MAX), &[], &mut buf[..])
        .expect("32 bytes are within ChaCha20-Poly1305's message limit");
    ChaCha20Poly1305::new(Key::from_slice(&buf[..]))
}

impl TransportKeys {
    /// The keys of a finished handshake, for our side of it. `None` if it is not finished.
    pub fn split(hs: &mut HandshakeState, initiator: bool) -> Option<TransportKeys> {
        if !hs.is_handshake_finished() {
            return None;
        }
        // The initiator sends with the first key, the responder with the second (Noise §5.3).
        let (k1, k2) = hs.dangerously_get_raw_split();
        let (k1, k2) = (Zeroizing::new(k1), Zeroizing::new(k2));
        let (send, recv) = if initiator { (k1, k2) } else { (k2, k1) };
        Some(TransportKeys {
            send: ChaCha20Poly1305::new(Key::from_slice(&send[..])),
            recv: ChaCha20Poly1305::new(Key::from_slice(&recv[..])),
            send_epoch: 0,
            recv_epoch: 0,
            sent_in_epoch: 0,
            rekey_at: None,
            previous: None,
        })
    }

    fn nonce(n: u64) -> Nonce {
        let mut b = [0u8; 12];
        b[4..].copy_from_slice(&n.to_le_bytes());
        b.into()
    }

    pub fn epochs(&self) -> KeyEpochs {
        KeyEpochs {
            send: self.send_epoch,
            recv: self.recv_epoch,
            previous: self
                .previous
                .as_ref()
                .map(|_| self.recv_epoch.wrapping_sub(1)),
        }
    }

    /// When [`TransportKeys::expire`] has a key to erase.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.previous.as_ref().map(|p| p.until)
    }

    /// Erases the previous epoch's receive key once its overlap is over.
    pub fn expire(&mut self, now: Instant) {
        if self.previous.as_ref().is_some_and(|p| now >= p.until) {
            self.previous = None;
        }
    }

    /// Moves the send side to the next epoch if its key has served its time or its frames.
    /// Returns whether it did.
    fn rekey_if_due(&mut self, now: Instant, c: &Config) -> bool {
        let due = *self.rekey_at.get_or_insert(now + c.rekey_interval);
        if now < due && u64::from(self.sent_in_epoch) < c.rekey_messages {
            return false;
        }
        self.send = next_key(&self.send);
        self.send_epoch = self.send_epoch.wrapping_add(1);
        self.sent_in_epoch = 0;
        self.rekey_at = Some(now + c.rekey_interval);
        true
    }

    /// Encrypts `plain` as the frame with counter `counter` into `out` (ciphertext, then tag),
    /// first moving to the next epoch if due. Returns the header's epoch-and-counter field, the
    /// length written, and whether the epoch changed. `None` if `out` is too short or the
    /// counter does not fit its field.
    pub fn seal(
        &mut self,
        now: Instant,
        c: &Config,
        counter: u64,
        plain: &[u8],
        out: &mut [u8],
    ) -> Option<(u64, usize, bool)> {
        let len = plain.len() + wire::TAG;
        if counter > wire::COUNTER_MAX || out.len() < len {
            return None;
        }
        let rekeyed = self.rekey_if_due(now, c);
        let field = wire::nonce_field(self.send_epoch, counter);
        out[..plain.len()].copy_from_slice(plain);
        let tag = self
            .send
            .encrypt_in_place_detached(&Self::nonce(field), &[], &mut out[..plain.len()])
            .ok()?;
        out[plain.len()..len].copy_from_slice(&tag);
        self.sent_in_epoch = self.sent_in_epoch.saturating_add(1);
        Some((field, len, rekeyed))
    }

    /// Whether a frame of `epoch` could be opened now, before any work on it: the current or
    /// (during the overlap) the previous epoch, or up to [`MAX_EPOCH_SKIP`] ahead.
    pub fn check_epoch(&self, now: Instant, epoch: u16) -> Result<(), OpenError> {
        match epoch.wrapping_sub(self.recv_epoch) as i16 {
            0 => Ok(()),
            -1 if self.previous_held(now) => Ok(()),
            d if d < 0 => Err(OpenError::StaleEpoch),
            d if d as u16 <= MAX_EPOCH_SKIP => Ok(()),
            _ => Err(OpenError::FutureEpoch),
        }
    }

    fn previous_held(&self, now: Instant) -> bool {
        self.previous.as_ref().is_some_and(|p| now < p.until)
    }

    /// Decrypts `sealed` (ciphertext and tag) of the frame whose header field is `field` into
    /// `out`; returns the plaintext length and whether the peer moved to a later epoch. A later
    /// epoch's key is derived, tried, and kept only if the frame authenticates (so forged
    /// frames cannot move us), the key before it then kept for `Config::rekey_overlap`.
    pub fn open(
        &mut self,
        now: Instant,
        c: &Config,
        field: u64,
        sealed: &[u8],
        out: &mut [u8],
    ) -> Result<(usize, bool), OpenError> {
        let (epoch, _) = wire::split_nonce_field(field);
        self.check_epoch(now, epoch)?;
        let len = sealed
            .len()
            .checked_sub(wire::TAG)
            .ok_or(OpenError::BadAuth)?;
        if field == u64::MAX || out.len() < len {
            return Err(OpenError::BadAuth);
        }
        let decrypt = |key: &ChaCha20Poly1305, out: &mut [u8]| {
            out[..len].copy_from_slice(&sealed[..len]);
            let tag = Tag::from_slice(&sealed[len..]);
            key.decrypt_in_place_detached(&Self::nonce(field), &[], &mut out[..len], tag)
                .is_ok()
        };
        let ahead = epoch.wrapping_sub(self.recv_epoch);
        let known = match ahead {
            0 => Some(&self.recv),
            u16::MAX => self.previous.as_ref().map(|p| &p.key),
            _ => None,
        };
        if let Some(key) = known {
            return if decrypt(key, out) {
                Ok((len, false))
            } else {
                Err(OpenError::BadAuth)
            };
        }
        // A later epoch: derive its key, and the one before it, from the current one.
        let mut before: Option<ChaCha20Poly1305> = None;
        let mut key = next_key(&self.recv);
        for _ in 1..ahead {
            let next = next_key(&key);
            before = Some(key);
            key = next;
        }
        if !decrypt(&key, out) {
            return Err(OpenError::BadAuth);
        }
        // Authenticated: the peer has moved on. Keep its previous epoch's key for the overlap:
        // our current one, or the derived `before` when it skipped an epoch. Whatever that
        // replaces is dropped, and so erased.
        let previous = match before {
            Some(b) => {
                self.recv = key;
                b
            }
            None => std::mem::replace(&mut self.recv, key),
        };
        self.previous = Some(Box::new(Previous {
            key: previous,
            until: now + c.rekey_overlap,
        }));
        self.recv_epoch = epoch;
        Ok((len, true))
    }
}

/// Builds a complete initiation frame from `identity` to `responder` (with mac1, no mac2), for
/// benchmarks and flood tests that need many distinct, valid initiations without an endpoint.
#[cfg(feature = "testing")]
pub fn initiation_frame(
    identity: &Identity,
    responder: &crate::identity::NodeKey,
    sender_index: u32,
) -> Vec<u8> {
    let local = Local::new(identity);
    let mut frame = vec![0u8; INIT_LEN];
    frame[0] = wire::HANDSHAKE_INIT;
    frame[1] = wire::VERSION;
    frame[2..6].copy_from_slice(&sender_index.to_be_bytes());
    local
        .initiate(&responder.noise, &[], &mut frame[INIT_NOISE..INIT_MAC1])
        .expect("initiation with a 32-byte key cannot fail");
    let keys = MacKeys::for_static(&responder.noise);
    let m1 = mac(&keys.mac1, &[&frame[..INIT_MAC1]]);
    frame[INIT_MAC1..wire::INIT_MAC2].copy_from_slice(&m1);
    frame
}

/// The pure cryptographic cost of one responder handshake, with no state machine around it: what
/// a benchmark sets the endpoint's handshake rate against.
pub struct ResponderCrypto {
    local: Local,
}

impl ResponderCrypto {
    pub fn new(identity: &Identity) -> ResponderCrypto {
        ResponderCrypto {
            local: Local::new(identity),
        }
    }

    /// Does the cryptographic work of answering `init_frame` (a whole initiation frame): mac1,
    /// Noise IK message 1 (two DH), the binding's Ed25519 verification, message 2 (ephemeral and
    /// two DH), the transport split. Writes message 2 into `out` and returns the initiator's ID.
    pub fn respond(
        &self,
        init_frame: &[u8],
        out: &mut [u8; NOISE2_LEN],
    ) -> Result<UserId, HandshakeCryptoError> {
        if init_frame.len() != INIT_LEN {
            return Err(HandshakeCryptoError::Malformed);
        }
        if !self.local.mac1_ok(init_frame) {
            return Err(HandshakeCryptoError::BadMac1);
        }
        self.local
            .respond(&init_frame[INIT_NOISE..INIT_MAC1], out, |_| false)
            .map(|r| r.peer.identity.id())
            .map_err(|(e, _)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snow::params::CipherChoice;

    /// Two ends of one direction, both at `epoch` (the keys are arbitrary: any key can be the
    /// one an epoch starts from).
    fn pair_at(epoch: u16) -> (TransportKeys, TransportKeys) {
        let keys = |send: u8, recv: u8| TransportKeys {
            send: ChaCha20Poly1305::new(Key::from_slice(&[send; 32])),
            recv: ChaCha20Poly1305::new(Key::from_slice(&[recv; 32])),
            send_epoch: epoch,
            recv_epoch: epoch,
            sent_in_epoch: 0,
            rekey_at: None,
            previous: None,
        };
        (keys(1, 2), keys(2, 1))
    }

    /// The 16-bit epoch wraps after 65,535: a key per frame across the wrap, each frame opened
    /// in turn, and one frame of epoch 65,535 reordered after epoch 0's.
    #[test]
    fn epochs_wrap_around() {
        let c = Config {
            rekey_messages: 1,
            ..Config::default()
        };
        let (mut a, mut b) = pair_at(u16::MAX - 10);
        let now = Instant::now();
        let (mut out, mut plain) = ([0u8; 64], [0u8; 64]);
        let mut held = None;
        for n in 1000..1030u64 {
            let (field, len, rekeyed) = a.seal(now, &c, n, &n.to_be_bytes(), &mut out).unwrap();
            let (epoch, counter) = wire::split_nonce_field(field);
            assert_eq!(counter, n);
            assert_eq!(
                rekeyed,
                n > 1000,
                "a new key for every frame after the first"
            );
            assert_eq!(epoch, (u16::MAX - 10).wrapping_add((n - 1000) as u16));
            if epoch == u16::MAX {
                held = Some((field, out[..len].to_vec()));
                continue;
            }
            let (got, _) = b.open(now, &c, field, &out[..len], &mut plain).unwrap();
            assert_eq!(&plain[..got], &n.to_be_bytes());
            if epoch == 0
                && let Some((f, sealed)) = held.take()
            {
                assert_eq!(b.epochs().previous, Some(u16::MAX));
                assert!(b.open(now, &c, f, &sealed, &mut plain).is_ok());
            }
        }
        assert!(held.is_none());
        assert_eq!(b.epochs().recv, 18);
    }

    /// Our REKEY is Noise's: the key `snow` derives with `Cipher::rekey` (Noise §4.2) seals the
    /// same bytes as ours, for a few generations.
    #[test]
    fn rekey_matches_noise_rekey_in_snow() {
        let key = [7u8; 32];
        let mut theirs = DefaultResolver
            .resolve_cipher(&CipherChoice::ChaChaPoly)
            .unwrap();
        theirs.set(&key);
        let mut ours = ChaCha20Poly1305::new(Key::from_slice(&key));
        let plain = b"voxmesh epoch test";
        for generation in 0..4 {
            let mut a = [0u8; 18 + 16];
            theirs.encrypt(42, &[], plain, &mut a);
            let mut b = *plain;
            let tag = ours
                .encrypt_in_place_detached(&TransportKeys::nonce(42), &[], &mut b)
                .unwrap();
            assert_eq!(&a[..18], &b[..], "generation {generation}");
            assert_eq!(&a[18..], &tag[..], "generation {generation}");
            theirs.rekey();
            ours = next_key(&ours);
        }
    }
}
