//! End-to-end sealing of media packets: ChaCha20-Poly1305 with per-direction keys, the header as
//! associated data, a packet index per payload type as the nonce, and the session layer's replay
//! window.
//!
//! # Keys
//!
//! Two 32-byte keys come from outside, one per direction (the call core derives them from the
//! Noise handshake between the two users' identities, fresh ephemerals per call), with the
//! [`Role`] this end played in that handshake. Separate keys per direction mean a packet
//! reflected back to its sender (by a relay, say) fails authentication, and the two senders'
//! nonce spaces can never meet. A key pair must never be given to two sessions: the nonces
//! restart at zero with every [`Sealer`].
//!
//! # Nonces: derived, not carried
//!
//! The 96-bit nonce is the payload type's code, three zero bytes, and the packet's 64-bit index,
//! big-endian. The index is not sent: its low 16 bits are the header's sequence number, and the
//! receiver restores the rest by taking the index nearest to the highest one it has
//! authenticated (SRTP's rollover-counter estimate, RFC 3711 §3.3.1). That saves the 8 bytes an
//! explicit counter would cost on every packet (3.2 kbit/s at 50 packets/s, against about 25
//! kbit/s of Opus), and it is still an explicit counter in the sense that matters: the sender
//! counts in 64 bits and never reuses an index under a key, and the receiver checks the index
//! against its replay window before decrypting. The estimate only goes wrong after 32768
//! consecutive packets of one type are lost (11 minutes of audio at 20 ms), long after consent
//! freshness (RFC 7675, 30 s) has declared the path dead; forged packets cannot move it, since
//! only authenticated indices count. DTMF and reports have index spaces of their own, and the
//! nonce carries the payload type's code: Opus and RED packets share the audio space (one
//! counter), the others never meet it.
//!
//! The header is the associated data: a changed marker, type, sequence, timestamp or stream id
//! fails authentication just like a changed payload.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use zeroize::Zeroizing;

use super::packet::{HEADER_LEN, Header, HeaderError, PayloadType, estimate_index};
use crate::session::{ReplayError, ReplayWindow};

/// Length of the AEAD tag after the ciphertext.
pub const TAG_LEN: usize = 16;
/// Header and tag: what sealing adds to a payload.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// This end's role in the handshake that produced the [`MediaKeys`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

/// The two directions' keys of one call.
#[derive(Clone)]
pub struct MediaKeys {
    /// The key the initiator seals with (and the responder opens with).
    pub initiator_to_responder: Zeroizing<[u8; 32]>,
    /// The key the responder seals with.
    pub responder_to_initiator: Zeroizing<[u8; 32]>,
}

impl MediaKeys {
    pub fn new(initiator_to_responder: [u8; 32], responder_to_initiator: [u8; 32]) -> MediaKeys {
        MediaKeys {
            initiator_to_responder: Zeroizing::new(initiator_to_responder),
            responder_to_initiator: Zeroizing::new(responder_to_initiator),
        }
    }

    /// (send key, receive key) for `role`.
    fn split(&self, role: Role) -> (&[u8; 32], &[u8; 32]) {
        match role {
            Role::Initiator => (&*self.initiator_to_responder, &*self.responder_to_initiator),
            Role::Responder => (&*self.responder_to_initiator, &*self.initiator_to_responder),
        }
    }

    /// The sealer and opener for `role`. Refused when both keys are equal, which would let a
    /// reflected packet authenticate.
    pub fn for_role(&self, role: Role, stream: u32) -> Result<(Sealer, Opener), KeyError> {
        let (send, recv) = self.split(role);
        if send == recv {
            return Err(KeyError::SameKeyBothWays);
        }
        Ok((Sealer::new(send, stream), Opener::new(recv)))
    }
}

impl std::fmt::Debug for MediaKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MediaKeys(..)")
    }
}

/// Keys that cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Both directions have the same key: reflected packets would be accepted. The call core
    /// must derive one key per direction (Noise's `Split()` gives two).
    #[error("media keys: the same key for both directions (derive one per direction)")]
    SameKeyBothWays,
}

fn nonce(pt: PayloadType, index: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[0] = pt.code();
    n[4..].copy_from_slice(&index.to_be_bytes());
    n.into()
}

/// Seals outgoing packets: one index counter per payload type.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    stream: u32,
    next: [u64; PayloadType::SPACES],
}

impl Sealer {
    fn new(key: &[u8; 32], stream: u32) -> Sealer {
        Sealer {
            cipher: ChaCha20Poly1305::new(&(*key).into()),
            stream,
            next: [0; PayloadType::SPACES],
        }
    }

    /// The stream id this sealer writes.
    pub fn stream(&self) -> u32 {
        self.stream
    }

    /// How many packets of `pt` have been sealed.
    pub fn sealed(&self, pt: PayloadType) -> u64 {
        self.next[pt.space()]
    }

    /// Seals `payload` into a datagram. `None` only if the type's 2^64 indices are used up.
    pub fn seal(
        &mut self,
        pt: PayloadType,
        marker: bool,
        timestamp: u32,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        let index = self.next[pt.space()];
        self.next[pt.space()] = index.checked_add(1)?;
        let header = Header {
            marker,
            payload_type: pt,
            sequence: index as u16,
            timestamp,
            stream: self.stream,
        }
        .encode();
        let mut out = Vec::with_capacity(OVERHEAD + payload.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(payload);
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce(pt, index), &header, &mut out[HEADER_LEN..])
            .ok()?;
        out.extend_from_slice(&tag);
        Some(out)
    }
}

/// Why a datagram was not opened. Each is counted by the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// Too short, or not our header (version, padding, extension, CSRCs).
    Malformed,
    /// A payload type we do not speak.
    UnknownType,
    /// Another stream id than the one this call's peer uses.
    WrongStream,
    /// Its index was already received: a network duplicate or a replay (indistinguishable).
    Duplicate,
    /// Older than the replay window.
    TooOld,
    /// Does not authenticate: tampered, forged, reflected, or sealed under another key.
    Forged,
}

/// An authenticated packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    pub header: Header,
    /// The restored 64-bit packet index (in its payload type's space).
    pub index: u64,
    pub payload: Vec<u8>,
}

/// Opens incoming packets: per payload type, the highest authenticated index (for the estimate)
/// and a replay window.
pub struct Opener {
    cipher: ChaCha20Poly1305,
    /// The peer's stream id, latched from the first packet that authenticated.
    stream: Option<u32>,
    highest: [Option<u64>; PayloadType::SPACES],
    windows: [ReplayWindow; PayloadType::SPACES],
}

impl Opener {
    fn new(key: &[u8; 32]) -> Opener {
        Opener {
            cipher: ChaCha20Poly1305::new(&(*key).into()),
            stream: None,
            highest: [None; PayloadType::SPACES],
            windows: Default::default(),
        }
    }

    /// The peer's stream id, once known.
    pub fn stream(&self) -> Option<u32> {
        self.stream
    }

    /// The highest authenticated index of `pt`.
    pub fn highest(&self, pt: PayloadType) -> Option<u64> {
        self.highest[pt.space()]
    }

    /// Checks, authenticates and decrypts `datagram`. Cheap checks (header, stream, replay
    /// window) come before the AEAD, and only an authenticated packet changes any state.
    pub fn open(&mut self, datagram: &[u8]) -> Result<Opened, OpenError> {
        let header = Header::parse(datagram).map_err(|e| match e {
            HeaderError::Malformed => OpenError::Malformed,
            HeaderError::UnknownType(_) => OpenError::UnknownType,
        })?;
        if datagram.len() < OVERHEAD {
            return Err(OpenError::Malformed);
        }
        if self.stream.is_some_and(|s| s != header.stream) {
            return Err(OpenError::WrongStream);
        }
        let t = header.payload_type.space();
        let index = estimate_index(self.highest[t], header.sequence);
        self.windows[t].check(index).map_err(|e| match e {
            ReplayError::Replayed => OpenError::Duplicate,
            ReplayError::TooOld => OpenError::TooOld,
        })?;
        let (aad, rest) = datagram.split_at(HEADER_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut payload = ciphertext.to_vec();
        self.cipher
            .decrypt_in_place_detached(
                &nonce(header.payload_type, index),
                aad,
                &mut payload,
                Tag::from_slice(tag),
            )
            .map_err(|_| OpenError::Forged)?;
        self.windows[t].insert(index);
        self.highest[t] = Some(self.highest[t].map_or(index, |h| h.max(index)));
        self.stream = Some(header.stream);
        Ok(Opened {
            header,
            index,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Sealer, Opener, Sealer, Opener) {
        let keys = MediaKeys::new([1; 32], [2; 32]);
        let (si, oi) = keys.for_role(Role::Initiator, 0xaaaa).unwrap();
        let (sr, or) = keys.for_role(Role::Responder, 0xbbbb).unwrap();
        (si, or, sr, oi)
    }

    #[test]
    fn round_trip_each_type_and_direction() {
        let (mut a, mut to_b, mut b, mut to_a) = pair();
        for pt in PayloadType::ALL {
            let index = a.sealed(pt);
            let d = a.seal(pt, true, 960, b"hello").unwrap();
            assert_eq!(d.len(), OVERHEAD + 5);
            let o = to_b.open(&d).unwrap();
            assert_eq!((o.payload.as_slice(), o.index), (&b"hello"[..], index));
            assert_eq!(o.header.stream, 0xaaaa);
            let d = b.seal(pt, false, 0, b"").unwrap();
            assert_eq!(to_a.open(&d).unwrap().payload, b"");
        }
    }

    #[test]
    fn reflection_tamper_replay_and_same_keys() {
        let (mut a, mut to_b, _, mut to_a) = pair();
        let d = a.seal(PayloadType::Opus, false, 0, b"voice").unwrap();
        // Reflected to its sender: the other direction's key.
        assert_eq!(to_a.open(&d), Err(OpenError::Forged));
        // Any flipped bit, header or body.
        for i in 0..d.len() {
            let mut t = d.clone();
            t[i] ^= 0x01;
            let r = to_b.open(&t);
            assert!(r.is_err(), "byte {i} flip accepted");
        }
        assert!(to_b.open(&d).is_ok(), "state moved by forgeries");
        assert_eq!(to_b.open(&d), Err(OpenError::Duplicate));
        let same = MediaKeys::new([3; 32], [3; 32]);
        assert!(matches!(
            same.for_role(Role::Initiator, 1),
            Err(KeyError::SameKeyBothWays)
        ));
    }

    #[test]
    fn sequence_rollover_is_followed() {
        let (mut a, mut to_b, _, _) = pair();
        // 70 000 packets cross the 16-bit boundary; every 7th arrives, so the receiver sees
        // gaps as well as the wrap.
        let mut last = 0;
        for i in 0..70_000u64 {
            let d = a.seal(PayloadType::Report, false, 0, b"r").unwrap();
            if i % 7 == 0 {
                last = to_b.open(&d).unwrap().index;
                assert_eq!(last, i);
            }
        }
        assert!(last > 0x1_0000);
    }
}
