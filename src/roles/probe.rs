//! The dial-back probe: a STUN Binding indication (RFC 8489 §3: 20-byte header, no attributes,
//! no answer expected) whose transaction ID carries the supernode's nonce and a tag. STUN so
//! that every demultiplexer (first byte 0..=3) already sorts it; an indication because nothing
//! answers it and it proves only that it arrived. Forging one gains nothing: the supernode
//! checks the echoed nonce against the one it sent.

/// Binding (0x001), class indication: type 0x0011.
const TYPE: [u8; 2] = [0x00, 0x11];
const COOKIE: [u8; 4] = 0x2112_A442u32.to_be_bytes();
/// The last 4 bytes of the transaction ID: this is a dial-back probe.
const TAG: [u8; 4] = *b"vxdb";

/// The probe carrying `nonce`.
pub fn encode(nonce: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    out.extend_from_slice(&TYPE);
    out.extend_from_slice(&[0, 0]); // no attributes
    out.extend_from_slice(&COOKIE);
    out.extend_from_slice(&nonce.to_be_bytes());
    out.extend_from_slice(&TAG);
    out
}

/// The nonce, if `datagram` is a dial-back probe.
pub fn decode(datagram: &[u8]) -> Option<u64> {
    if datagram.len() != 20
        || datagram[..2] != TYPE
        || datagram[2..4] != [0, 0]
        || datagram[4..8] != COOKIE
        || datagram[16..20] != TAG
    {
        return None;
    }
    Some(u64::from_be_bytes(datagram[8..16].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip_and_refusals() {
        let p = super::encode(0x0123_4567_89ab_cdef);
        assert_eq!(crate::demux::classify(&p), crate::demux::Kind::Stun);
        assert_eq!(super::decode(&p), Some(0x0123_4567_89ab_cdef));
        let mut other = p.clone();
        other[19] ^= 1;
        assert_eq!(super::decode(&other), None);
        assert_eq!(super::decode(&p[..19]), None);
    }
}
