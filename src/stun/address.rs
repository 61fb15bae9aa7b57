//! Address attribute values (RFC 8489 §14.1 and §14.2).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const FAMILY_V4: u8 = 0x01;
const FAMILY_V6: u8 = 0x02;

/// Value length of an address attribute for `addr`'s family.
pub(crate) fn address_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 8,
        SocketAddr::V6(_) => 20,
    }
}

/// Writes a plain address value (MAPPED-ADDRESS, OTHER-ADDRESS, ...) into `out`, which must be
/// [`address_len`] bytes long.
pub(crate) fn encode_address(addr: &SocketAddr, out: &mut [u8]) {
    out[0] = 0;
    out[2..4].copy_from_slice(&addr.port().to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[1] = FAMILY_V4;
            out[4..8].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out[1] = FAMILY_V6;
            out[4..20].copy_from_slice(&ip.octets());
        }
    }
}

/// Writes an XOR-ed address value; `id` is bytes 4..20 of the header (cookie + transaction ID).
pub(crate) fn encode_xor_address(addr: &SocketAddr, id: &[u8], out: &mut [u8]) {
    encode_address(addr, out);
    out[2] ^= id[0];
    out[3] ^= id[1];
    let n = address_len(addr) - 4;
    for i in 0..n {
        out[4 + i] ^= id[i];
    }
}

/// Decodes a plain address value; `None` for a bad family or length.
pub fn decode_address(v: &[u8]) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]);
    match (v[1], v.len()) {
        (FAMILY_V4, 8) => {
            let ip = Ipv4Addr::new(v[4], v[5], v[6], v[7]);
            Some(SocketAddr::new(ip.into(), port))
        }
        (FAMILY_V6, 20) => {
            let octets: [u8; 16] = v[4..20].try_into().ok()?;
            Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port))
        }
        _ => None,
    }
}

/// Decodes an XOR-ed address value; `id` is bytes 4..20 of the header.
pub fn decode_xor_address(v: &[u8], id: &[u8]) -> Option<SocketAddr> {
    if v.len() != 8 && v.len() != 20 {
        return None;
    }
    let mut plain = [0u8; 20];
    let plain = &mut plain[..v.len()];
    plain.copy_from_slice(v);
    plain[2] ^= id[0];
    plain[3] ^= id[1];
    for i in 0..v.len() - 4 {
        plain[4 + i] ^= id[i];
    }
    decode_address(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_round_trip_v4_and_v6() {
        let id: [u8; 16] = core::array::from_fn(|i| (i as u8).wrapping_mul(17).wrapping_add(3));
        for a in [
            "192.0.2.1:32853",
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut buf = vec![0u8; address_len(&addr)];
            encode_xor_address(&addr, &id, &mut buf);
            assert_eq!(decode_xor_address(&buf, &id), Some(addr));
            encode_address(&addr, &mut buf);
            assert_eq!(decode_address(&buf), Some(addr));
        }
    }

    #[test]
    fn bad_family_or_length_is_none() {
        assert_eq!(decode_address(&[0, 3, 0, 1, 1, 2, 3, 4]), None);
        assert_eq!(decode_address(&[0, 1, 0, 1, 1, 2, 3]), None);
        assert_eq!(decode_address(&[0, 2, 0, 1, 1, 2, 3, 4]), None);
        assert_eq!(decode_xor_address(&[0, 1, 0], &[0; 16]), None);
    }
}
