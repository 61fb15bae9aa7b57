//! Zero-copy STUN parsing.

use std::net::SocketAddr;

use super::{
    ChangeRequest, Class, HEADER_LEN, MAGIC_COOKIE, MAX_ATTRIBUTES, TransactionId, attr,
    decode_address, decode_xor_address, split_message_type,
};

/// Why a datagram is not a STUN message we accept. Each is counted and the datagram dropped;
/// nothing here is worth answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than a STUN header")]
    TooShort,
    #[error("first two bits are not zero: not STUN")]
    NotStun,
    #[error("length field is not a multiple of 4")]
    UnalignedLength,
    #[error("length field disagrees with the datagram size")]
    LengthMismatch,
    #[error("an attribute runs past the end of the message")]
    TruncatedAttribute,
    #[error("more than {MAX_ATTRIBUTES} attributes")]
    TooManyAttributes,
    #[error("FINGERPRINT is not the last attribute")]
    FingerprintNotLast,
}

/// One attribute: its type and its value without padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attribute<'a> {
    pub typ: u16,
    pub value: &'a [u8],
    /// Offset of the attribute header from the start of the message.
    pub offset: usize,
}

/// A validated view of a STUN message. Construction checks every bound once; accessors then
/// decode attributes lazily and return `None` for absent or malformed values.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    bytes: &'a [u8],
    /// End of the attributes covered by integrity rules: RFC 8489 §14.5 says attributes after
    /// MESSAGE-INTEGRITY (other than MESSAGE-INTEGRITY-SHA256 and FINGERPRINT) are ignored.
    scope_end: usize,
    integrity: Option<usize>,
    integrity_sha256: Option<usize>,
    fingerprint: Option<usize>,
}

impl<'a> Message<'a> {
    /// Validates `bytes` as exactly one STUN message (a whole UDP datagram, or a frame cut with
    /// [`super::framed_len`]).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        if bytes.len() < HEADER_LEN {
            return Err(ParseError::TooShort);
        }
        if bytes[0] & 0xc0 != 0 {
            return Err(ParseError::NotStun);
        }
        let len = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
        if len % 4 != 0 {
            return Err(ParseError::UnalignedLength);
        }
        if HEADER_LEN + len != bytes.len() {
            return Err(ParseError::LengthMismatch);
        }
        let mut msg = Message {
            bytes,
            scope_end: bytes.len(),
            integrity: None,
            integrity_sha256: None,
            fingerprint: None,
        };
        let mut pos = HEADER_LEN;
        let mut count = 0;
        while pos < bytes.len() {
            count += 1;
            if count > MAX_ATTRIBUTES {
                return Err(ParseError::TooManyAttributes);
            }
            if msg.fingerprint.is_some() {
                return Err(ParseError::FingerprintNotLast);
            }
            if pos + 4 > bytes.len() {
                return Err(ParseError::TruncatedAttribute);
            }
            let typ = u16::from_be_bytes([bytes[pos], bytes[pos + 1]]);
            let vlen = u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]) as usize;
            let next = pos + 4 + padded(vlen);
            if next > bytes.len() {
                return Err(ParseError::TruncatedAttribute);
            }
            // The first integrity attribute closes the scope. MESSAGE-INTEGRITY-SHA256 may still
            // follow MESSAGE-INTEGRITY, but what lies between them is ignored (RFC 8489 §14.5),
            // and so is a MESSAGE-INTEGRITY after MESSAGE-INTEGRITY-SHA256 (§14.6).
            let scope_open = msg.integrity.is_none() && msg.integrity_sha256.is_none();
            match typ {
                attr::MESSAGE_INTEGRITY if scope_open => {
                    msg.integrity = Some(pos);
                    msg.scope_end = next;
                }
                attr::MESSAGE_INTEGRITY_SHA256 if msg.integrity_sha256.is_none() => {
                    msg.integrity_sha256 = Some(pos);
                    if scope_open {
                        msg.scope_end = next;
                    }
                }
                attr::FINGERPRINT => msg.fingerprint = Some(pos),
                _ => {}
            }
            pos = next;
        }
        Ok(msg)
    }

    /// The whole message.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The 14-bit message type.
    pub fn message_type(&self) -> u16 {
        u16::from_be_bytes([self.bytes[0], self.bytes[1]])
    }

    pub fn method(&self) -> u16 {
        split_message_type(self.message_type()).0
    }

    pub fn class(&self) -> Class {
        split_message_type(self.message_type()).1
    }

    /// Whether the magic cookie is absent: an RFC 3489 ("classic STUN") message.
    pub fn is_rfc3489(&self) -> bool {
        u32::from_be_bytes([self.bytes[4], self.bytes[5], self.bytes[6], self.bytes[7]])
            != MAGIC_COOKIE
    }

    pub fn transaction_id(&self) -> TransactionId {
        let mut id = [0u8; 12];
        id.copy_from_slice(&self.bytes[8..20]);
        TransactionId(id)
    }

    /// Bytes 4..20: the cookie and transaction ID, or RFC 3489's 128-bit transaction ID. A
    /// response copies these verbatim.
    pub fn raw_id(&self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.bytes[4..20]);
        id
    }

    /// All attributes in order, including any after MESSAGE-INTEGRITY.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            bytes: self.bytes,
            pos: HEADER_LEN,
            end: self.bytes.len(),
        }
    }

    /// Attributes that count: those up to and including the first integrity attribute, then
    /// MESSAGE-INTEGRITY-SHA256 and FINGERPRINT (RFC 8489 §14.5 and §14.6).
    fn effective(&self) -> impl Iterator<Item = Attribute<'a>> + 'a {
        let scope_end = self.scope_end;
        let (sha256, fp) = (self.integrity_sha256, self.fingerprint);
        self.attributes().filter(move |a| {
            a.offset < scope_end || Some(a.offset) == sha256 || Some(a.offset) == fp
        })
    }

    /// The first attribute of type `typ` within the effective scope.
    pub fn get(&self, typ: u16) -> Option<Attribute<'a>> {
        self.effective().find(|a| a.typ == typ)
    }

    /// Comprehension-required attribute types not in `known` (for a 420 response).
    pub fn unknown_required<'k>(&self, known: &'k [u16]) -> impl Iterator<Item = u16> + 'k
    where
        'a: 'k,
    {
        self.effective()
            .map(|a| a.typ)
            .filter(move |t| attr::is_comprehension_required(*t) && !known.contains(t))
    }

    pub fn xor_address(&self, typ: u16) -> Option<SocketAddr> {
        decode_xor_address(self.get(typ)?.value, &self.bytes[4..20])
    }

    pub fn address(&self, typ: u16) -> Option<SocketAddr> {
        decode_address(self.get(typ)?.value)
    }

    pub fn xor_mapped_address(&self) -> Option<SocketAddr> {
        self.xor_address(attr::XOR_MAPPED_ADDRESS)
    }

    /// The reflexive address: XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from servers that predate
    /// RFC 5389 (RFC 8489 §14.1 asks clients to accept both).
    pub fn reflexive_address(&self) -> Option<SocketAddr> {
        self.xor_mapped_address()
            .or_else(|| self.address(attr::MAPPED_ADDRESS))
    }

    /// OTHER-ADDRESS, or CHANGED-ADDRESS from RFC 3489 servers.
    pub fn other_address(&self) -> Option<SocketAddr> {
        self.address(attr::OTHER_ADDRESS)
            .or_else(|| self.address(attr::CHANGED_ADDRESS))
    }

    /// RESPONSE-ORIGIN, or SOURCE-ADDRESS from RFC 3489 servers.
    pub fn response_origin(&self) -> Option<SocketAddr> {
        self.address(attr::RESPONSE_ORIGIN)
            .or_else(|| self.address(attr::SOURCE_ADDRESS))
    }

    pub fn u32_attr(&self, typ: u16) -> Option<u32> {
        let v = self.get(typ)?.value;
        Some(u32::from_be_bytes(v.try_into().ok()?))
    }

    pub fn change_request(&self) -> Option<ChangeRequest> {
        self.u32_attr(super::attr::CHANGE_REQUEST)
            .map(ChangeRequest::from_bits)
    }

    /// RESPONSE-PORT (RFC 5780 §7.5): a 16-bit port followed by 16 bits of padding.
    pub fn response_port(&self) -> Option<u16> {
        let v = self.get(attr::RESPONSE_PORT)?.value;
        (v.len() == 4).then(|| u16::from_be_bytes([v[0], v[1]]))
    }

    /// ERROR-CODE (RFC 8489 §14.8) as (code, reason).
    pub fn error_code(&self) -> Option<(u16, &'a str)> {
        let v = self.get(attr::ERROR_CODE)?.value;
        if v.len() < 4 {
            return None;
        }
        let class = (v[2] & 0x07) as u16;
        let number = v[3] as u16;
        if !(3..=6).contains(&class) || number > 99 {
            return None;
        }
        let reason = std::str::from_utf8(&v[4..]).unwrap_or("");
        Some((class * 100 + number, reason))
    }

    /// A UTF-8 text attribute (SOFTWARE, USERNAME, REALM, NONCE).
    pub fn text(&self, typ: u16) -> Option<&'a str> {
        std::str::from_utf8(self.get(typ)?.value).ok()
    }

    /// Offset of MESSAGE-INTEGRITY, if present.
    pub fn integrity_offset(&self) -> Option<usize> {
        self.integrity
    }

    /// Offset of MESSAGE-INTEGRITY-SHA256, if present.
    pub fn integrity_sha256_offset(&self) -> Option<usize> {
        self.integrity_sha256
    }

    /// Offset of FINGERPRINT, if present.
    pub fn fingerprint_offset(&self) -> Option<usize> {
        self.fingerprint
    }
}

/// Iterator over the attributes of a validated message.
pub struct Attributes<'a> {
    bytes: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Attribute<'a>;

    fn next(&mut self) -> Option<Attribute<'a>> {
        if self.pos + 4 > self.end {
            return None;
        }
        let b = self.bytes;
        let typ = u16::from_be_bytes([b[self.pos], b[self.pos + 1]]);
        let vlen = u16::from_be_bytes([b[self.pos + 2], b[self.pos + 3]]) as usize;
        let start = self.pos + 4;
        // Bounds were proven by `Message::parse`; `get` keeps this safe for any input anyway.
        let value = b.get(start..start + vlen)?;
        let attr = Attribute {
            typ,
            value,
            offset: self.pos,
        };
        self.pos = start + padded(vlen);
        Some(attr)
    }
}

/// Attribute values are padded to a multiple of 4 bytes (RFC 8489 §14).
pub(crate) fn padded(len: usize) -> usize {
    (len + 3) & !3
}
