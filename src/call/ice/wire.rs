//! Connectivity checks on the wire (RFC 8445 §7.2.2, §7.3) with our STUN codec
//! ([`crate::stun`]): building requests and responses, and the first, credential-free half of
//! validating what arrives (framing, FINGERPRINT, known attributes). Integrity is checked by the
//! agent, which knows which generation's password applies.

use std::net::SocketAddr;

use crate::stun::{Class, IntegrityCheck, Message, MessageBuilder, TransactionId, attr, method};

/// NOMINATION (draft-thatcher-ice-renomination, the attribute libwebrtc uses): a counter that
/// lets the controlling agent change its nomination without an ICE restart. The controlled
/// agent uses the nominated pair with the highest value (ties: the higher pair priority), so a
/// late retransmission of an older nomination never overrides a newer one. Comprehension-
/// optional (≥ 0x8000), so an agent that does not know it still sees plain USE-CANDIDATE.
pub const NOMINATION: u16 = 0xC001;

/// Comprehension-required attributes a check may carry (RFC 8445 §7.2.2 and RFC 8489).
const KNOWN_REQUIRED: &[u16] = &[
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::PRIORITY,
    attr::USE_CANDIDATE,
    attr::XOR_MAPPED_ADDRESS,
    attr::MAPPED_ADDRESS,
    attr::ERROR_CODE,
    attr::UNKNOWN_ATTRIBUTES,
];

/// Why an inbound STUN message was refused. Every refusal is counted
/// ([`super::IceCounters::refused`]) and the message dropped without an answer: answering an
/// unauthenticated message would send to an address nobody vouched for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum Refusal {
    /// Not a well-formed STUN message.
    #[error("malformed STUN message")]
    Malformed,
    /// RFC 8445 §7.2.2: connectivity checks carry FINGERPRINT.
    #[error("no FINGERPRINT")]
    NoFingerprint,
    #[error("FINGERPRINT does not match")]
    BadFingerprint,
    /// A comprehension-required attribute we do not know (RFC 8489 §6.3.1).
    #[error("unknown comprehension-required attribute")]
    UnknownAttribute,
    /// USERNAME missing or not of the form `ours:theirs`.
    #[error("USERNAME missing or malformed")]
    BadUsername,
    /// The USERNAME names a ufrag that is not ours (or no longer ours after a restart), or a
    /// remote ufrag other than the peer's.
    #[error("USERNAME does not match our credentials")]
    UnknownUfrag,
    /// No MESSAGE-INTEGRITY: a forged or unsigned message.
    #[error("no MESSAGE-INTEGRITY")]
    Unsigned,
    /// MESSAGE-INTEGRITY does not verify: wrong password, or tampered.
    #[error("MESSAGE-INTEGRITY does not verify")]
    BadIntegrity,
    /// RFC 8445 §7.3: a check request without PRIORITY or a role attribute.
    #[error("check without PRIORITY or ICE-CONTROLLING/ICE-CONTROLLED")]
    MissingIceAttribute,
    /// A response matching no transaction we have open.
    #[error("response to no open transaction")]
    UnknownTransaction,
    /// A success response without XOR-MAPPED-ADDRESS.
    #[error("success response without XOR-MAPPED-ADDRESS")]
    NoMappedAddress,
    /// A new peer-reflexive candidate would exceed the bound on remote candidates.
    #[error("too many remote candidates")]
    TooManyCandidates,
    /// Arrived on a route (socket or relay allocation) the agent does not know.
    #[error("unknown local route")]
    UnknownRoute,
}

/// The role attribute of a request (RFC 8445 §7.2.2, §16.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleAttr {
    Controlling(u64),
    Controlled(u64),
}

/// A parsed check request, not yet authenticated.
pub struct Request<'a> {
    pub msg: Message<'a>,
    /// USERNAME's first part: the recipient's (our) ufrag.
    pub local_ufrag: &'a str,
    /// USERNAME's second part: the sender's ufrag.
    pub remote_ufrag: &'a str,
    pub priority: u32,
    pub role: RoleAttr,
    pub use_candidate: bool,
    pub nomination: Option<u32>,
}

/// A parsed response, not yet authenticated.
pub struct Response<'a> {
    pub msg: Message<'a>,
    pub id: TransactionId,
    /// XOR-MAPPED-ADDRESS of a success response.
    pub mapped: Option<SocketAddr>,
    /// ERROR-CODE of an error response.
    pub error: Option<u16>,
}

/// What an inbound datagram is, as far as ICE is concerned.
pub enum Parsed<'a> {
    Request(Request<'a>),
    Response(Response<'a>),
    /// A Binding indication: a keepalive (RFC 8445 §11); nothing to do.
    Indication,
    /// Not a Binding message: not for the ICE agent.
    NotIce,
}

/// Parses and checks everything that needs no credentials.
pub fn parse(bytes: &[u8]) -> Result<Parsed<'_>, Refusal> {
    let msg = Message::parse(bytes).map_err(|_| Refusal::Malformed)?;
    if msg.method() != method::BINDING || msg.is_rfc3489() {
        return Ok(Parsed::NotIce);
    }
    if msg.class() == Class::Indication {
        return Ok(Parsed::Indication);
    }
    match msg.check_fingerprint() {
        IntegrityCheck::Valid => {}
        IntegrityCheck::Absent => return Err(Refusal::NoFingerprint),
        IntegrityCheck::Invalid => return Err(Refusal::BadFingerprint),
    }
    if msg.unknown_required(KNOWN_REQUIRED).next().is_some() {
        return Err(Refusal::UnknownAttribute);
    }
    match msg.class() {
        Class::Request => {
            let username = msg.text(attr::USERNAME).ok_or(Refusal::BadUsername)?;
            let (local_ufrag, remote_ufrag) =
                username.split_once(':').ok_or(Refusal::BadUsername)?;
            let priority = msg
                .u32_attr(attr::PRIORITY)
                .ok_or(Refusal::MissingIceAttribute)?;
            let tie = |t: u16| {
                msg.get(t)
                    .and_then(|a| <[u8; 8]>::try_from(a.value).ok())
                    .map(u64::from_be_bytes)
            };
            let role = match (tie(attr::ICE_CONTROLLING), tie(attr::ICE_CONTROLLED)) {
                (Some(t), None) => RoleAttr::Controlling(t),
                (None, Some(t)) => RoleAttr::Controlled(t),
                _ => return Err(Refusal::MissingIceAttribute),
            };
            Ok(Parsed::Request(Request {
                msg,
                local_ufrag,
                remote_ufrag,
                priority,
                role,
                use_candidate: msg.get(attr::USE_CANDIDATE).is_some(),
                nomination: msg.u32_attr(NOMINATION).map(|n| n & 0x00ff_ffff),
            }))
        }
        Class::Success => Ok(Parsed::Response(Response {
            msg,
            id: msg.transaction_id(),
            mapped: msg.xor_mapped_address(),
            error: None,
        })),
        Class::Error => Ok(Parsed::Response(Response {
            msg,
            id: msg.transaction_id(),
            mapped: None,
            error: Some(msg.error_code().map_or(0, |(c, _)| c)),
        })),
        Class::Indication => Ok(Parsed::Indication),
    }
}

/// Verifies MESSAGE-INTEGRITY with `key` (the password, as-is: short-term credentials, RFC
/// 8489 §9.1.1).
pub fn authenticate(msg: &Message<'_>, key: &str) -> Result<(), Refusal> {
    match msg.check_integrity(key.as_bytes()) {
        IntegrityCheck::Valid => Ok(()),
        IntegrityCheck::Absent => Err(Refusal::Unsigned),
        IntegrityCheck::Invalid => Err(Refusal::BadIntegrity),
    }
}

/// What goes into a check request.
pub struct CheckRequest<'a> {
    pub id: TransactionId,
    /// The peer's ufrag and password.
    pub remote_ufrag: &'a str,
    pub remote_pwd: &'a str,
    pub local_ufrag: &'a str,
    pub priority: u32,
    pub role: RoleAttr,
    /// USE-CANDIDATE with this NOMINATION value.
    pub nominate: Option<u32>,
}

/// Builds a Binding request for a check (RFC 8445 §7.2.2): USERNAME `theirs:ours`, PRIORITY,
/// the role with its tie-breaker, USE-CANDIDATE and NOMINATION when nominating, then
/// MESSAGE-INTEGRITY with the peer's password and FINGERPRINT.
pub fn check_request(c: &CheckRequest<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let mut b = MessageBuilder::new(&mut out, method::BINDING, Class::Request, c.id);
    let username = format!("{}:{}", c.remote_ufrag, c.local_ufrag);
    b.attr(attr::USERNAME, username.as_bytes());
    b.u32_attr(attr::PRIORITY, c.priority);
    match c.role {
        RoleAttr::Controlling(t) => b.attr(attr::ICE_CONTROLLING, &t.to_be_bytes()),
        RoleAttr::Controlled(t) => b.attr(attr::ICE_CONTROLLED, &t.to_be_bytes()),
    };
    if let Some(n) = c.nominate {
        b.attr(attr::USE_CANDIDATE, &[]);
        b.u32_attr(NOMINATION, n & 0x00ff_ffff);
    }
    b.message_integrity(c.remote_pwd.as_bytes());
    b.fingerprint();
    out
}

/// Builds the success response to a check (RFC 8445 §7.3.1): XOR-MAPPED-ADDRESS is where the
/// request came from, signed with our password.
pub fn success(raw_id: [u8; 16], mapped: SocketAddr, local_pwd: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let mut b = MessageBuilder::with_raw_id(&mut out, method::BINDING, Class::Success, raw_id);
    b.xor_address(attr::XOR_MAPPED_ADDRESS, mapped);
    b.message_integrity(local_pwd.as_bytes());
    b.fingerprint();
    out
}

/// Builds a 487 Role Conflict error response (RFC 8445 §7.3.1.1), signed.
pub fn role_conflict(raw_id: [u8; 16], local_pwd: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let mut b = MessageBuilder::with_raw_id(&mut out, method::BINDING, Class::Error, raw_id);
    b.error_code(487, "Role Conflict");
    b.message_integrity(local_pwd.as_bytes());
    b.fingerprint();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(nominate: Option<u32>) -> Vec<u8> {
        check_request(&CheckRequest {
            id: TransactionId([7; 12]),
            remote_ufrag: "BOBb",
            remote_pwd: "bobs-password-is-22-chars",
            local_ufrag: "ALIa",
            priority: 0x6e00_ffff,
            role: RoleAttr::Controlling(42),
            nominate,
        })
    }

    #[test]
    fn request_round_trips_and_authenticates() {
        let bytes = request(Some(3));
        let Ok(Parsed::Request(r)) = parse(&bytes) else {
            panic!("not a request")
        };
        assert_eq!((r.local_ufrag, r.remote_ufrag), ("BOBb", "ALIa"));
        assert_eq!(r.priority, 0x6e00_ffff);
        assert_eq!(r.role, RoleAttr::Controlling(42));
        assert!(r.use_candidate);
        assert_eq!(r.nomination, Some(3));
        assert_eq!(authenticate(&r.msg, "bobs-password-is-22-chars"), Ok(()));
        assert_eq!(
            authenticate(&r.msg, "wrong-password-22-chars!"),
            Err(Refusal::BadIntegrity)
        );
        let plain_bytes = request(None);
        let Ok(Parsed::Request(plain)) = parse(&plain_bytes) else {
            panic!()
        };
        assert!(!plain.use_candidate && plain.nomination.is_none());
    }

    #[test]
    fn responses_carry_the_mapped_address() {
        let to: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&crate::stun::MAGIC_COOKIE.to_be_bytes());
        let bytes = success(raw, to, "pw-pw-pw-pw-pw-pw-pw-pw");
        let Ok(Parsed::Response(r)) = parse(&bytes) else {
            panic!()
        };
        assert_eq!(r.mapped, Some(to));
        assert_eq!(r.error, None);
        assert_eq!(authenticate(&r.msg, "pw-pw-pw-pw-pw-pw-pw-pw"), Ok(()));
        let conflict = role_conflict(raw, "pw-pw-pw-pw-pw-pw-pw-pw");
        let Ok(Parsed::Response(e)) = parse(&conflict) else {
            panic!()
        };
        assert_eq!(e.error, Some(487));
    }

    #[test]
    fn unsigned_tampered_and_foreign_messages_are_refused() {
        // A tampered byte breaks FINGERPRINT before anything else is looked at.
        let mut bytes = request(None);
        bytes[30] ^= 1;
        assert!(matches!(parse(&bytes), Err(Refusal::BadFingerprint)));
        // No FINGERPRINT at all.
        let mut out = Vec::new();
        let mut b = MessageBuilder::new(
            &mut out,
            method::BINDING,
            Class::Request,
            TransactionId([1; 12]),
        );
        b.attr(attr::USERNAME, b"a:b");
        b.finish();
        assert!(matches!(parse(&out), Err(Refusal::NoFingerprint)));
        // Signed nowhere: parses, then fails authentication.
        let mut out = Vec::new();
        let mut b = MessageBuilder::new(
            &mut out,
            method::BINDING,
            Class::Request,
            TransactionId([1; 12]),
        );
        b.attr(attr::USERNAME, b"abcd:efgh");
        b.u32_attr(attr::PRIORITY, 1);
        b.attr(attr::ICE_CONTROLLED, &[0; 8]);
        b.fingerprint();
        let Ok(Parsed::Request(r)) = parse(&out) else {
            panic!()
        };
        assert_eq!(authenticate(&r.msg, "x"), Err(Refusal::Unsigned));
        // A TURN message is not ICE's business.
        let mut out = Vec::new();
        let b = MessageBuilder::new(
            &mut out,
            method::ALLOCATE,
            Class::Request,
            TransactionId([1; 12]),
        );
        b.fingerprint();
        assert!(matches!(parse(&out), Ok(Parsed::NotIce)));
        assert!(matches!(parse(b"\x80junk"), Err(Refusal::Malformed)));
    }
}
