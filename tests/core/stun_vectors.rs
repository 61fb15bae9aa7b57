//! The RFC 5769 test vectors and RFC 8489 Appendix B.1 against our zero-copy parser and builder.
//!
//! The vector bytes are in `stun_support/mod.rs`, transcribed from the RFC text. A typo there
//! would fail FINGERPRINT or MESSAGE-INTEGRITY here, which is how the transcription is checked.
//!
//! RFC 8489 B.1 as published does not verify, and that is the RFC's error, not ours: its length
//! field says 156 bytes of attributes where there are 136, and its HMAC-SHA256 was computed over
//! that wrong length with the SHA-256 password key although the message carries no
//! PASSWORD-ALGORITHM (which would mean MD5). Erratum 6268 corrects it (adds PASSWORD-ALGORITHM
//! SHA-256, length 0x90, new HMAC); the corrected vector verifies. Both facts are pinned below.

use crate::support::stun as stun_support;

use std::net::SocketAddr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use stun_support::*;
use voxmesh::stun::{
    Class, IntegrityCheck, Message, MessageBuilder, ParseError, TransactionId, attr,
    decode_address, decode_xor_address, long_term_key, method,
};

/// The RFC 8489 §9.2.2 long-term key for PASSWORD-ALGORITHM SHA-256:
/// SHA-256(username ":" realm ":" password).
fn sha256_long_term_key(username: &str, realm: &str, password: &str) -> [u8; 32] {
    Sha256::digest(format!("{username}:{realm}:{password}").as_bytes()).into()
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Flips one bit at `at` and returns the copy.
fn flipped(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v[at] ^= 0x01;
    v
}

#[test]
fn rfc5769_sample_request_parses_and_verifies_with_the_password() {
    let m = Message::parse(RFC5769_REQUEST).expect("RFC 5769 §2.1 parses");
    assert_eq!(m.class(), Class::Request);
    assert_eq!(m.method(), method::BINDING);
    assert_eq!(m.message_type(), 0x0001);
    assert!(!m.is_rfc3489());
    assert_eq!(m.transaction_id(), TransactionId(RFC5769_TXID));
    assert_eq!(m.text(attr::SOFTWARE), Some(RFC5769_CLIENT_SOFTWARE));
    assert_eq!(m.text(attr::USERNAME), Some(RFC5769_USERNAME));
    assert_eq!(m.u32_attr(attr::PRIORITY), Some(0x6e00_01ff));
    assert_eq!(
        m.get(attr::ICE_CONTROLLED).map(|a| a.value),
        Some(&[0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36][..])
    );
    let types: Vec<u16> = m.attributes().map(|a| a.typ).collect();
    assert_eq!(
        types,
        [
            attr::SOFTWARE,
            attr::PRIORITY,
            attr::ICE_CONTROLLED,
            attr::USERNAME,
            attr::MESSAGE_INTEGRITY,
            attr::FINGERPRINT
        ]
    );
    assert_eq!(m.integrity_offset(), Some(20 + 20 + 8 + 12 + 16));
    assert_eq!(m.fingerprint_offset(), Some(RFC5769_REQUEST.len() - 8));

    assert_eq!(m.check_fingerprint(), IntegrityCheck::Valid);
    // Short-term credentials: the key is the password itself (RFC 8489 §9.1.1).
    assert_eq!(
        m.check_integrity(RFC5769_PASSWORD.as_bytes()),
        IntegrityCheck::Valid
    );
    assert_eq!(
        m.check_integrity(b"VOkJxbRl1RmTxUk/WvJxBT"),
        IntegrityCheck::Invalid
    );
    assert_eq!(m.check_integrity(b""), IntegrityCheck::Invalid);
    assert_eq!(
        m.check_integrity_sha256(RFC5769_PASSWORD.as_bytes()),
        IntegrityCheck::Absent
    );
}

#[test]
fn rfc5769_ipv4_response_decodes_the_documented_address() {
    let m = Message::parse(RFC5769_RESPONSE_V4).expect("RFC 5769 §2.2 parses");
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.method(), method::BINDING);
    assert_eq!(m.transaction_id(), TransactionId(RFC5769_TXID));
    let want: SocketAddr = RFC5769_MAPPED_V4.parse().unwrap();
    assert_eq!(m.xor_mapped_address(), Some(want));
    assert_eq!(m.reflexive_address(), Some(want));
    // The same value decoded by hand from the attribute and header bytes.
    let v = m.get(attr::XOR_MAPPED_ADDRESS).unwrap().value;
    assert_eq!(
        decode_xor_address(v, &RFC5769_RESPONSE_V4[4..20]),
        Some(want)
    );
    // Read without the XOR it is garbage, not the address.
    assert_ne!(decode_address(v), Some(want));
    assert_eq!(m.text(attr::SOFTWARE), Some(RFC5769_SERVER_SOFTWARE));
    assert_eq!(m.address(attr::MAPPED_ADDRESS), None);

    assert_eq!(m.check_fingerprint(), IntegrityCheck::Valid);
    assert_eq!(
        m.check_integrity(RFC5769_PASSWORD.as_bytes()),
        IntegrityCheck::Valid
    );
    assert_eq!(m.check_integrity(b"wrong"), IntegrityCheck::Invalid);
}

#[test]
fn rfc5769_ipv6_response_decodes_the_documented_address() {
    let m = Message::parse(RFC5769_RESPONSE_V6).expect("RFC 5769 §2.3 parses");
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.transaction_id(), TransactionId(RFC5769_TXID));
    let want: SocketAddr = RFC5769_MAPPED_V6.parse().unwrap();
    assert_eq!(m.xor_mapped_address(), Some(want));
    assert_eq!(m.reflexive_address(), Some(want));
    assert_eq!(m.text(attr::SOFTWARE), Some(RFC5769_SERVER_SOFTWARE));

    assert_eq!(m.check_fingerprint(), IntegrityCheck::Valid);
    assert_eq!(
        m.check_integrity(RFC5769_PASSWORD.as_bytes()),
        IntegrityCheck::Valid
    );
    assert_eq!(
        m.check_integrity(RFC5769_USERNAME.as_bytes()),
        IntegrityCheck::Invalid
    );
}

#[test]
fn rfc5769_long_term_request_verifies_with_the_long_term_key() {
    let m = Message::parse(RFC5769_LONG_TERM_REQUEST).expect("RFC 5769 §2.4 parses");
    assert_eq!(m.class(), Class::Request);
    assert_eq!(m.method(), method::BINDING);
    assert_eq!(m.text(attr::USERNAME), Some(LONG_TERM_USERNAME));
    assert_eq!(m.text(attr::NONCE), Some(RFC5769_LONG_TERM_NONCE));
    assert_eq!(m.text(attr::REALM), Some(LONG_TERM_REALM));
    assert_eq!(m.check_fingerprint(), IntegrityCheck::Absent);

    let key = long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
    assert_eq!(m.check_integrity(&key), IntegrityCheck::Valid);
    // The password before SASLprep is a different key.
    let raw = long_term_key(
        LONG_TERM_USERNAME,
        LONG_TERM_REALM,
        "The\u{00AD}M\u{00AA}tr\u{2168}",
    );
    assert_eq!(m.check_integrity(&raw), IntegrityCheck::Invalid);
    // So are the password alone (short-term) and another realm.
    assert_eq!(
        m.check_integrity(LONG_TERM_PASSWORD.as_bytes()),
        IntegrityCheck::Invalid
    );
    let other_realm = long_term_key(LONG_TERM_USERNAME, "example.com", LONG_TERM_PASSWORD);
    assert_eq!(m.check_integrity(&other_realm), IntegrityCheck::Invalid);
}

#[test]
fn our_builder_reproduces_the_rfc5769_long_term_request_byte_for_byte() {
    // Its padding is zeros, as our builder writes it (the other vectors pad with spaces).
    let mut buf = Vec::new();
    let txid: [u8; 12] = RFC5769_LONG_TERM_REQUEST[8..20].try_into().unwrap();
    let mut b = MessageBuilder::new(
        &mut buf,
        method::BINDING,
        Class::Request,
        TransactionId(txid),
    );
    b.attr(attr::USERNAME, LONG_TERM_USERNAME.as_bytes())
        .attr(attr::NONCE, RFC5769_LONG_TERM_NONCE.as_bytes())
        .attr(attr::REALM, LONG_TERM_REALM.as_bytes())
        .message_integrity(&long_term_key(
            LONG_TERM_USERNAME,
            LONG_TERM_REALM,
            LONG_TERM_PASSWORD,
        ));
    let len = b.finish();
    assert_eq!(&buf[..len], RFC5769_LONG_TERM_REQUEST);
}

#[test]
fn any_flipped_bit_breaks_fingerprint_or_integrity() {
    // Every bit of the vectors is covered by FINGERPRINT, and everything before
    // MESSAGE-INTEGRITY by it too, so a flip anywhere is caught (or breaks the framing).
    let key = RFC5769_PASSWORD.as_bytes();
    for vector in [RFC5769_REQUEST, RFC5769_RESPONSE_V4, RFC5769_RESPONSE_V6] {
        for at in 0..vector.len() {
            let bad = flipped(vector, at);
            let Ok(m) = Message::parse(&bad) else {
                continue;
            };
            let fp = m.check_fingerprint();
            let mi = m.check_integrity(key);
            assert!(
                fp != IntegrityCheck::Valid || mi != IntegrityCheck::Valid,
                "flip at {at} went unnoticed (fingerprint {fp:?}, integrity {mi:?})"
            );
            if at < m.integrity_offset().unwrap_or(0) + 24 && at >= 4 {
                assert_ne!(mi, IntegrityCheck::Valid, "flip at {at} kept MI valid");
            }
        }
    }
    let key = long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
    for at in 4..RFC5769_LONG_TERM_REQUEST.len() {
        let bad = flipped(RFC5769_LONG_TERM_REQUEST, at);
        if let Ok(m) = Message::parse(&bad) {
            assert_ne!(
                m.check_integrity(&key),
                IntegrityCheck::Valid,
                "flip at {at}"
            );
        }
    }
}

#[test]
fn rfc8489_b1_as_published_does_not_verify_because_of_the_rfc_erratum() {
    let published = rfc8489_b1_as_published();
    // 20 + 136 bytes, but the header claims 156 bytes of attributes.
    assert_eq!(published.len(), 20 + 136);
    assert_eq!(u16::from_be_bytes([published[2], published[3]]), 0x9c);
    assert_eq!(
        Message::parse(&published).unwrap_err(),
        ParseError::LengthMismatch
    );

    // With the length field corrected the framing is fine, but the MAC verifies under neither
    // the MD5 key (the default when PASSWORD-ALGORITHM is absent) nor the SHA-256 key.
    let mut fixed = published.clone();
    fixed[2..4].copy_from_slice(&136u16.to_be_bytes());
    let m = Message::parse(&fixed).expect("framing is fine once the length is right");
    let md5 = long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
    let sha = sha256_long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
    assert_eq!(m.check_integrity_sha256(&md5), IntegrityCheck::Invalid);
    assert_eq!(m.check_integrity_sha256(&sha), IntegrityCheck::Invalid);

    // Why: the published HMAC is HMAC-SHA256 under the SHA-256 key over the header *with the
    // wrong length 0x9c* and the attributes before it. That is what erratum 6268 fixes.
    let mac_at = published.len() - 36;
    let recomputed = hmac_sha256(&sha, &published[..mac_at]);
    assert_eq!(&recomputed[..], &published[mac_at + 4..]);
}

#[test]
fn rfc8489_b1_erratum_6268_verifies_with_the_sha256_key() {
    let v = rfc8489_b1_erratum_6268();
    let m = Message::parse(&v).expect("corrected B.1 parses");
    assert_eq!(m.class(), Class::Request);
    assert_eq!(m.method(), method::BINDING);
    assert_eq!(m.transaction_id(), TransactionId(rfc8489_b1_txid()));

    // USERHASH = SHA-256(username ":" realm) (RFC 8489 §14.4).
    let userhash: [u8; 32] =
        Sha256::digest(format!("{LONG_TERM_USERNAME}:{LONG_TERM_REALM}").as_bytes()).into();
    assert_eq!(m.get(attr::USERHASH).unwrap().value, &userhash[..]);
    assert_eq!(m.text(attr::NONCE), Some(RFC8489_B1_NONCE));
    assert_eq!(m.text(attr::REALM), Some(LONG_TERM_REALM));
    assert_eq!(m.u32_attr(attr::PASSWORD_ALGORITHM), Some(0x0002_0000));
    assert_eq!(m.integrity_sha256_offset(), Some(v.len() - 36));
    assert_eq!(m.check_integrity(b"anything"), IntegrityCheck::Absent);
    assert_eq!(m.check_fingerprint(), IntegrityCheck::Absent);

    let sha = sha256_long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
    assert_eq!(m.check_integrity_sha256(&sha), IntegrityCheck::Valid);
    // Wrong keys: the MD5 key, another password, the raw password.
    let md5 = long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
    assert_eq!(m.check_integrity_sha256(&md5), IntegrityCheck::Invalid);
    let other = sha256_long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, "TheMatrix");
    assert_eq!(m.check_integrity_sha256(&other), IntegrityCheck::Invalid);
    assert_eq!(
        m.check_integrity_sha256(LONG_TERM_PASSWORD.as_bytes()),
        IntegrityCheck::Invalid
    );
}

#[test]
fn our_builder_reproduces_the_corrected_b1_vector_byte_for_byte() {
    let mut buf = Vec::new();
    let userhash: [u8; 32] =
        Sha256::digest(format!("{LONG_TERM_USERNAME}:{LONG_TERM_REALM}").as_bytes()).into();
    let key = sha256_long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
    let mut b = MessageBuilder::new(
        &mut buf,
        method::BINDING,
        Class::Request,
        TransactionId(rfc8489_b1_txid()),
    );
    b.attr(attr::USERHASH, &userhash)
        .attr(attr::NONCE, RFC8489_B1_NONCE.as_bytes())
        .attr(attr::REALM, LONG_TERM_REALM.as_bytes())
        .u32_attr(attr::PASSWORD_ALGORITHM, 0x0002_0000)
        .message_integrity_sha256(&key);
    let len = b.finish();
    assert_eq!(&buf[..len], &rfc8489_b1_erratum_6268()[..]);
}

#[test]
fn truncated_message_integrity_sha256_verifies_as_rfc8489_allows() {
    // RFC 8489 §14.6: the value may be truncated to 16..=32 bytes in steps of 4. Build the
    // corrected B.1 body with a 16-byte MAC computed the way §14.6 says (length field counting
    // the truncated attribute).
    let key = sha256_long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
    let full = rfc8489_b1_erratum_6268();
    let body_end = full.len() - 36;
    for truncated in [16usize, 20, 24, 28, 32] {
        let mut m = full[..body_end].to_vec();
        let len = (body_end + 4 + truncated - 20) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        let mac = hmac_sha256(&key, &m);
        m.extend_from_slice(&attr::MESSAGE_INTEGRITY_SHA256.to_be_bytes());
        m.extend_from_slice(&(truncated as u16).to_be_bytes());
        m.extend_from_slice(&mac[..truncated]);
        let parsed = Message::parse(&m).unwrap();
        assert_eq!(
            parsed.check_integrity_sha256(&key),
            IntegrityCheck::Valid,
            "{truncated} bytes"
        );
        let wrong = sha256_long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, "x");
        assert_eq!(
            parsed.check_integrity_sha256(&wrong),
            IntegrityCheck::Invalid
        );
    }
    // 12 bytes is below the minimum: invalid whatever the key.
    let mut m = full[..body_end].to_vec();
    let len = (body_end + 4 + 12 - 20) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    let mac = hmac_sha256(&key, &m);
    m.extend_from_slice(&attr::MESSAGE_INTEGRITY_SHA256.to_be_bytes());
    m.extend_from_slice(&12u16.to_be_bytes());
    m.extend_from_slice(&mac[..12]);
    assert_eq!(
        Message::parse(&m).unwrap().check_integrity_sha256(&key),
        IntegrityCheck::Invalid
    );
}

#[test]
fn message_integrity_of_the_wrong_length_is_invalid() {
    // RFC 8489 §14.5: MESSAGE-INTEGRITY is exactly 20 bytes. Stretch the RFC 5769 §2.4 one to
    // 24 (its first 20 bytes still the right HMAC over the same prefix) and it must not verify.
    let key = long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD);
    let mut m = RFC5769_LONG_TERM_REQUEST.to_vec();
    let off = m.len() - 24;
    m[off + 3] = 24;
    m.extend_from_slice(&[0; 4]);
    let len = (m.len() - 20) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    let parsed = Message::parse(&m).expect("framing is fine");
    assert_eq!(parsed.integrity_offset(), Some(off));
    assert_eq!(parsed.check_integrity(&key), IntegrityCheck::Invalid);
    // And shortened to 16 bytes.
    let mut m = RFC5769_LONG_TERM_REQUEST.to_vec();
    m[off + 3] = 16;
    m.truncate(m.len() - 4);
    let len = (m.len() - 20) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    let parsed = Message::parse(&m).expect("framing is fine");
    assert_eq!(parsed.check_integrity(&key), IntegrityCheck::Invalid);
}

#[test]
fn attributes_after_message_integrity_are_ignored_up_to_sha256_and_fingerprint() {
    // RFC 8489 §14.5: "With the exception of the MESSAGE-INTEGRITY-SHA256 and FINGERPRINT
    // attributes, which appear after MESSAGE-INTEGRITY, agents MUST ignore all other attributes
    // that follow MESSAGE-INTEGRITY." §14.6 says the same after MESSAGE-INTEGRITY-SHA256.
    let forged: SocketAddr = "198.51.100.66:6666".parse().unwrap();
    let real: SocketAddr = "192.0.2.1:32853".parse().unwrap();
    let (k1, k2) = (b"short-term".as_slice(), [9u8; 32]);
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(
        &mut buf,
        method::BINDING,
        Class::Success,
        TransactionId([1; 12]),
    );
    b.xor_address(attr::XOR_MAPPED_ADDRESS, real)
        .message_integrity(k1)
        .xor_address(attr::XOR_MAPPED_ADDRESS, forged)
        .attr(attr::SOFTWARE, b"interposed")
        .message_integrity_sha256(&k2);
    let len = b.fingerprint();
    let m = Message::parse(&buf[..len]).unwrap();
    assert_eq!(m.xor_mapped_address(), Some(real));
    assert_eq!(
        m.text(attr::SOFTWARE),
        None,
        "between MI and MI-SHA256: ignored"
    );
    assert_eq!(m.check_integrity(k1), IntegrityCheck::Valid);
    assert_eq!(m.check_integrity_sha256(&k2), IntegrityCheck::Valid);
    assert_eq!(m.check_fingerprint(), IntegrityCheck::Valid);
    assert!(m.get(attr::MESSAGE_INTEGRITY_SHA256).is_some());
    assert!(m.get(attr::FINGERPRINT).is_some());
    // No attribute that must be ignored counts as unknown either.
    let mut b = MessageBuilder::new(
        &mut buf,
        method::BINDING,
        Class::Request,
        TransactionId([1; 12]),
    );
    b.message_integrity(k1)
        .u32_attr(0x7777, 0)
        .message_integrity_sha256(&k2);
    let len = b.fingerprint();
    let m = Message::parse(&buf[..len]).unwrap();
    assert_eq!(
        m.unknown_required(&[]).collect::<Vec<_>>(),
        [attr::MESSAGE_INTEGRITY, attr::MESSAGE_INTEGRITY_SHA256]
    );

    // MESSAGE-INTEGRITY after MESSAGE-INTEGRITY-SHA256 is one of the ignored ones.
    let mut b = MessageBuilder::new(
        &mut buf,
        method::BINDING,
        Class::Success,
        TransactionId([1; 12]),
    );
    b.xor_address(attr::XOR_MAPPED_ADDRESS, real)
        .message_integrity_sha256(&k2)
        .message_integrity(k1);
    let len = b.fingerprint();
    let m = Message::parse(&buf[..len]).unwrap();
    assert_eq!(m.check_integrity_sha256(&k2), IntegrityCheck::Valid);
    assert_eq!(m.check_integrity(k1), IntegrityCheck::Absent);
    assert_eq!(m.get(attr::MESSAGE_INTEGRITY), None);
}
