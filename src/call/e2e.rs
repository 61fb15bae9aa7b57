//! End-to-end keys for a call's media: a Noise handshake between the two users' identity-bound
//! static keys, with fresh ephemerals per call, carried in the call messages (invite, ringing,
//! confirm). Relays and supernodes carry it but learn nothing from it.
//!
//! # Why Noise XX
//!
//! `Noise_XX_25519_ChaChaPoly_BLAKE2s`. Each side's static key is its identity's Noise key and the
//! handshake payload is its [`Binding`] (the identity's signature over that key), exactly as in
//! the client–supernode sessions, so the keys are bound to the two user IDs and each side checks
//! the other is who the call is with. XX, because the caller does not know the callee's Noise key
//! in advance (a call placed by ID goes out before any lookup; directory entries do not carry
//! Noise keys), which rules out IK and KK. XX's three messages cost nothing extra here: message 1
//! rides the invite, 2 the ringing, 3 a confirm sent as soon as the ringing arrives, and the callee
//! rings for seconds, so both sides hold keys long before anyone picks up. The `ee`, `es`, `se`
//! DHs with fresh ephemerals give forward secrecy: stolen identity keys open no past call.
//!
//! The prologue binds the handshake to the call ID and both user IDs, so a handshake message
//! moved from another call fails.
//!
//! # Keys and SAS
//!
//! Noise's split gives one key per direction ([`MediaKeys`]); the media layer seals with them.
//! The short authentication string ([`MediaKeys::sas`]) is 20 bits of a hash of the handshake
//! transcript, shown as four z-base-32 characters (as ZRTP does): two users reading the same four
//! characters to each other rule out a key substitution, even by someone holding a signing key.

use snow::{Builder, HandshakeState};
use zeroize::Zeroizing;

use super::message::CallId;
use crate::identity::{BINDING_LEN, Binding, BindingError, Identity, UserId};

const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
const PROLOGUE_DOMAIN: &[u8] = b"voxmesh/v1/call-e2e\0";
const SAS_DOMAIN: &[u8] = b"voxmesh/v1/call-sas\0";
/// z-base-32 (RFC 6189 §5.1.6 uses base32 for ZRTP's SAS too): no easily confused characters.
const ZBASE32: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";

/// Why the key exchange failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum E2eError {
    /// A handshake message does not decrypt or parse: tampered, or from another call.
    #[error("the key exchange message does not decrypt")]
    Decrypt,
    /// The peer's Noise key is not bound to an identity.
    #[error("the peer's key is not bound to its identity: {0}")]
    Binding(#[from] BindingError),
    /// The peer's key is bound to another user than the one the call is with: a key
    /// substitution.
    #[error("the peer's key belongs to {found}, not {expected}")]
    WrongPeer { expected: UserId, found: UserId },
    /// A message out of order (for example a second message 2).
    #[error("key exchange message out of order")]
    OutOfOrder,
}

/// The media keys of a call, one per direction, and the short authentication string.
pub struct MediaKeys {
    pub send: Zeroizing<[u8; 32]>,
    pub recv: Zeroizing<[u8; 32]>,
    /// Four z-base-32 characters, the same at both ends.
    pub sas: String,
}

impl std::fmt::Debug for MediaKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaKeys")
            .field("sas", &self.sas)
            .finish_non_exhaustive()
    }
}

/// One side of a call's key exchange.
pub struct Handshake {
    hs: HandshakeState,
    initiator: bool,
    peer: UserId,
}

fn builder<'a>(identity: &'a Identity, prologue: &'a [u8]) -> Builder<'a> {
    Builder::new(NOISE_PARAMS.parse().expect("valid Noise protocol name"))
        .prologue(prologue)
        .expect("prologue set once")
        .local_private_key(identity.noise_secret())
        .expect("key set once")
}

fn prologue(call: &CallId, caller: &UserId, callee: &UserId) -> Vec<u8> {
    let mut p = PROLOGUE_DOMAIN.to_vec();
    p.extend_from_slice(&call.0);
    p.extend_from_slice(caller.as_bytes());
    p.extend_from_slice(callee.as_bytes());
    p
}

impl Handshake {
    /// The caller starts: returns its state and message 1 (for the invite).
    pub fn initiate(
        identity: &Identity,
        call: &CallId,
        callee: &UserId,
    ) -> Result<(Handshake, Vec<u8>), E2eError> {
        let p = prologue(call, &identity.id(), callee);
        let mut hs = builder(identity, &p)
            .build_initiator()
            .map_err(|_| E2eError::Decrypt)?;
        let mut msg = vec![0u8; 64];
        let n = hs
            .write_message(&[], &mut msg)
            .map_err(|_| E2eError::Decrypt)?;
        msg.truncate(n);
        Ok((
            Handshake {
                hs,
                initiator: true,
                peer: *callee,
            },
            msg,
        ))
    }

    /// The callee reads message 1 and writes message 2 (for the ringing).
    pub fn respond(
        identity: &Identity,
        call: &CallId,
        caller: &UserId,
        msg1: &[u8],
    ) -> Result<(Handshake, Vec<u8>), E2eError> {
        let p = prologue(call, caller, &identity.id());
        let mut hs = builder(identity, &p)
            .build_responder()
            .map_err(|_| E2eError::Decrypt)?;
        let mut scratch = [0u8; 64];
        hs.read_message(msg1, &mut scratch)
            .map_err(|_| E2eError::Decrypt)?;
        let mut msg = vec![0u8; 256];
        let n = hs
            .write_message(&identity.binding().encode(), &mut msg)
            .map_err(|_| E2eError::Decrypt)?;
        msg.truncate(n);
        Ok((
            Handshake {
                hs,
                initiator: false,
                peer: *caller,
            },
            msg,
        ))
    }

    /// The caller reads message 2 (checking the callee's binding) and writes message 3 (for the
    /// confirm); the handshake is complete.
    pub fn finish_initiator(
        mut self,
        identity: &Identity,
        msg2: &[u8],
    ) -> Result<(Vec<u8>, MediaKeys), E2eError> {
        if !self.initiator {
            return Err(E2eError::OutOfOrder);
        }
        let mut payload = [0u8; 256];
        let n = self
            .hs
            .read_message(msg2, &mut payload)
            .map_err(|_| E2eError::Decrypt)?;
        self.check_peer(&payload[..n])?;
        let mut msg = vec![0u8; 256];
        let n = self
            .hs
            .write_message(&identity.binding().encode(), &mut msg)
            .map_err(|_| E2eError::Decrypt)?;
        msg.truncate(n);
        Ok((msg, self.keys()))
    }

    /// The callee reads message 3 (checking the caller's binding); the handshake is complete.
    pub fn finish_responder(mut self, msg3: &[u8]) -> Result<MediaKeys, E2eError> {
        if self.initiator {
            return Err(E2eError::OutOfOrder);
        }
        let mut payload = [0u8; 256];
        let n = self
            .hs
            .read_message(msg3, &mut payload)
            .map_err(|_| E2eError::Decrypt)?;
        self.check_peer(&payload[..n])?;
        Ok(self.keys())
    }

    fn check_peer(&self, payload: &[u8]) -> Result<(), E2eError> {
        if payload.len() != BINDING_LEN {
            return Err(E2eError::Binding(BindingError::Malformed));
        }
        let rs = self.hs.get_remote_static().ok_or(E2eError::Decrypt)?;
        let binding = Binding::verify(payload, rs)?;
        let found = binding.identity.id();
        if found != self.peer {
            return Err(E2eError::WrongPeer {
                expected: self.peer,
                found,
            });
        }
        Ok(())
    }

    fn keys(mut self) -> MediaKeys {
        let h = self.hs.get_handshake_hash().to_vec();
        let (k1, k2) = self.hs.dangerously_get_raw_split();
        let (send, recv) = if self.initiator { (k1, k2) } else { (k2, k1) };
        MediaKeys {
            send: Zeroizing::new(send),
            recv: Zeroizing::new(recv),
            sas: sas(&h),
        }
    }
}

/// Four z-base-32 characters from the first 20 bits of a hash of the handshake transcript.
fn sas(handshake_hash: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(SAS_DOMAIN);
    h.update(handshake_hash);
    let d = h.finalize();
    let bits = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) >> 12;
    (0..4)
        .map(|i| ZBASE32[((bits >> (15 - 5 * i)) & 31) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(n: u8) -> Identity {
        Identity::from_seed(&[n; 32])
    }

    #[test]
    fn both_ends_get_matching_keys_and_sas() {
        let (alice, bob) = (ident(1), ident(2));
        let call = CallId([9; 16]);
        let (a, m1) = Handshake::initiate(&alice, &call, &bob.id()).unwrap();
        let (b, m2) = Handshake::respond(&bob, &call, &alice.id(), &m1).unwrap();
        let (m3, ka) = a.finish_initiator(&alice, &m2).unwrap();
        let kb = b.finish_responder(&m3).unwrap();
        assert_eq!(*ka.send, *kb.recv);
        assert_eq!(*ka.recv, *kb.send);
        assert_ne!(*ka.send, *ka.recv);
        assert_eq!(ka.sas, kb.sas);
        assert_eq!(ka.sas.len(), 4);
        // Fresh ephemerals: the same two users get other keys on the next call.
        let (a2, m1) = Handshake::initiate(&alice, &call, &bob.id()).unwrap();
        let (_, m2) = Handshake::respond(&bob, &call, &alice.id(), &m1).unwrap();
        let (_, ka2) = a2.finish_initiator(&alice, &m2).unwrap();
        assert_ne!(*ka.send, *ka2.send);
    }

    #[test]
    fn a_substituted_key_or_another_calls_message_is_refused() {
        let (alice, bob, mallory) = (ident(1), ident(2), ident(3));
        let call = CallId([9; 16]);
        // Mallory answers an invite meant for Bob with her own (validly bound) key.
        // Plainly (her prologue names her, not Bob): the caller cannot decrypt her message 2.
        let (a, m1) = Handshake::initiate(&alice, &call, &bob.id()).unwrap();
        let (_, m2) = Handshake::respond(&mallory, &call, &alice.id(), &m1).unwrap();
        assert_eq!(
            a.finish_initiator(&alice, &m2).unwrap_err(),
            E2eError::Decrypt
        );
        let (a, m1) = Handshake::initiate(&alice, &call, &bob.id()).unwrap();
        let p = prologue(&call, &alice.id(), &bob.id());
        // Mallory builds a responder with Bob's prologue but her own key.
        let mut hs = builder(&mallory, &p).build_responder().unwrap();
        let mut s = [0u8; 64];
        hs.read_message(&m1, &mut s).unwrap();
        let mut m2 = vec![0u8; 256];
        let n = hs
            .write_message(&mallory.binding().encode(), &mut m2)
            .unwrap();
        m2.truncate(n);
        assert!(matches!(
            a.finish_initiator(&alice, &m2),
            Err(E2eError::WrongPeer { .. })
        ));
        // Message 1 of another call: the responder's message 2 fails at the caller.
        let (a, _) = Handshake::initiate(&alice, &call, &bob.id()).unwrap();
        let (_, other_m1) = Handshake::initiate(&alice, &CallId([8; 16]), &bob.id()).unwrap();
        let (_, m2) = Handshake::respond(&bob, &call, &alice.id(), &other_m1).unwrap();
        assert_eq!(
            a.finish_initiator(&alice, &m2).unwrap_err(),
            E2eError::Decrypt
        );
    }

    #[test]
    fn sas_is_four_zbase32_characters() {
        let s = sas(&[0u8; 32]);
        assert_eq!(s.len(), 4);
        assert!(s.bytes().all(|c| ZBASE32.contains(&c)));
        assert_ne!(sas(&[0u8; 32]), sas(&[1u8; 32]));
    }
}
