//! Building STUN messages into a caller-owned buffer (reused across packets, so the steady
//! state allocates nothing).

use std::net::SocketAddr;

use super::address::{address_len, encode_address, encode_xor_address};
use super::integrity::{crc32_fingerprint, hmac_sha1, hmac_sha256};
use super::parse::padded;
use super::{Class, HEADER_LEN, MAGIC_COOKIE, TransactionId, attr, message_type};

/// Writes one message. Attributes are appended in call order; the header length is kept current
/// after every attribute, which is what the integrity attributes need.
pub struct MessageBuilder<'b> {
    buf: &'b mut Vec<u8>,
    id: [u8; 16],
}

impl<'b> MessageBuilder<'b> {
    /// Starts a new RFC 8489 message (magic cookie + `txid`) in `buf`, clearing it first.
    pub fn new(buf: &'b mut Vec<u8>, method: u16, class: Class, txid: TransactionId) -> Self {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        id[4..].copy_from_slice(&txid.0);
        Self::with_raw_id(buf, method, class, id)
    }

    /// Starts a message whose bytes 4..20 are `raw_id` verbatim: how a response echoes the
    /// request's ID, including RFC 3489 requests that have no magic cookie.
    pub fn with_raw_id(buf: &'b mut Vec<u8>, method: u16, class: Class, raw_id: [u8; 16]) -> Self {
        buf.clear();
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&raw_id);
        MessageBuilder { buf, id: raw_id }
    }

    /// Appends an attribute of `len` value bytes, filled by `fill`, plus zero padding.
    pub fn attr_with(&mut self, typ: u16, len: usize, fill: impl FnOnce(&mut [u8])) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf.extend_from_slice(&(len as u16).to_be_bytes());
        self.buf.resize(start + 4 + padded(len), 0);
        fill(&mut self.buf[start + 4..start + 4 + len]);
        self.set_length();
        self
    }

    pub fn attr(&mut self, typ: u16, value: &[u8]) -> &mut Self {
        self.attr_with(typ, value.len(), |out| out.copy_from_slice(value))
    }

    pub fn u32_attr(&mut self, typ: u16, value: u32) -> &mut Self {
        self.attr(typ, &value.to_be_bytes())
    }

    pub fn address(&mut self, typ: u16, addr: SocketAddr) -> &mut Self {
        self.attr_with(typ, address_len(&addr), |out| encode_address(&addr, out))
    }

    pub fn xor_address(&mut self, typ: u16, addr: SocketAddr) -> &mut Self {
        let id = self.id;
        self.attr_with(typ, address_len(&addr), |out| {
            encode_xor_address(&addr, &id, out)
        })
    }

    /// ERROR-CODE (RFC 8489 §14.8). The reason is cut to the 763 bytes the RFC allows, on a
    /// character boundary so that it stays UTF-8.
    pub fn error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut end = reason.len().min(763);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let reason = &reason.as_bytes()[..end];
        self.attr_with(attr::ERROR_CODE, 4 + reason.len(), |out| {
            out[0] = 0;
            out[1] = 0;
            out[2] = (code / 100) as u8;
            out[3] = (code % 100) as u8;
            out[4..].copy_from_slice(reason);
        })
    }

    /// UNKNOWN-ATTRIBUTES (RFC 8489 §14.9).
    pub fn unknown_attributes(&mut self, types: &[u16]) -> &mut Self {
        self.attr_with(attr::UNKNOWN_ATTRIBUTES, 2 * types.len(), |out| {
            for (chunk, t) in out.chunks_exact_mut(2).zip(types) {
                chunk.copy_from_slice(&t.to_be_bytes());
            }
        })
    }

    /// CHANGE-REQUEST (RFC 5780 §7.2).
    pub fn change_request(&mut self, change: super::ChangeRequest) -> &mut Self {
        self.u32_attr(attr::CHANGE_REQUEST, change.to_bits())
    }

    /// RESPONSE-PORT (RFC 5780 §7.5).
    pub fn response_port(&mut self, port: u16) -> &mut Self {
        self.attr_with(attr::RESPONSE_PORT, 4, |out| {
            out[..2].copy_from_slice(&port.to_be_bytes());
        })
    }

    /// MESSAGE-INTEGRITY over everything so far (RFC 8489 §14.5).
    pub fn message_integrity(&mut self, key: &[u8]) -> &mut Self {
        let covered = self.buf.len();
        self.attr_with(attr::MESSAGE_INTEGRITY, 20, |_| {});
        let mac = hmac_sha1(key, &self.buf[..covered]);
        self.buf[covered + 4..covered + 24].copy_from_slice(&mac);
        self
    }

    /// MESSAGE-INTEGRITY-SHA256 over everything so far (RFC 8489 §14.6), full 32 bytes.
    pub fn message_integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        let covered = self.buf.len();
        self.attr_with(attr::MESSAGE_INTEGRITY_SHA256, 32, |_| {});
        let mac = hmac_sha256(key, &self.buf[..covered]);
        self.buf[covered + 4..covered + 36].copy_from_slice(&mac);
        self
    }

    /// Appends FINGERPRINT (RFC 8489 §14.7) and finishes the message.
    pub fn fingerprint(mut self) -> usize {
        let covered = self.buf.len();
        self.attr_with(attr::FINGERPRINT, 4, |_| {});
        let crc = crc32_fingerprint(&self.buf[..covered]);
        self.buf[covered + 4..covered + 8].copy_from_slice(&crc.to_be_bytes());
        self.buf.len()
    }

    /// Finishes the message without FINGERPRINT; returns its length.
    pub fn finish(self) -> usize {
        self.buf.len()
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.len() == HEADER_LEN
    }

    fn set_length(&mut self) {
        let len = (self.buf.len() - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }
}
