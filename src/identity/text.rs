//! The copy-pasteable text form of IDs and keys: Bech32m (BIP-173 with BIP-350's constant).
//!
//! Why Bech32m rather than plain base32 plus a CRC: its 6-character BCH checksum is designed for
//! exactly this job (people copying strings by hand or by half-selecting them) and is analysed:
//! every error of up to 4 substituted characters is detected in strings up to 89 characters, and
//! any other error slips through with probability about 1 in 10^9. Its alphabet leaves out
//! `1`, `b`, `i` and `o` (easily confused), a string is all lower or all upper case (readers accept
//! either, never mixed), and a human-readable prefix (`vx`, `vxpk`, `vxk`, `vxsecret`) says what
//! kind of thing the string is, so a key pasted where an ID belongs is refused by its prefix, not
//! by luck. BIP-350 fixed Bech32's one weakness (insertions or deletions of `q` next to a final
//! `p` went undetected), which is why the `m` variant.

/// Why a string is not a valid text form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// Upper and lower case letters are mixed; a copy was probably edited by hand.
    #[error("mixed upper and lower case")]
    MixedCase,
    /// No `1` separates the prefix from the data; the string is cut or is not a voxmesh text form.
    #[error("no '1' separator: not a voxmesh ID or key")]
    NoSeparator,
    /// The prefix names another kind of thing (for example a key where an ID was expected).
    #[error("prefix '{found}' where '{expected}' was expected")]
    WrongPrefix {
        expected: &'static str,
        found: String,
    },
    /// A character outside the Bech32 alphabet (`1`, `b`, `i` and `o` never occur in the data).
    #[error("character {ch:?} at position {pos} is not in the alphabet")]
    BadChar { pos: usize, ch: char },
    /// The checksum does not match: a character was mistyped, dropped or swapped.
    #[error("checksum mismatch: the text was mistyped or truncated")]
    BadChecksum,
    /// The data has the wrong length for this kind of thing.
    #[error("wrong length: {found} characters of data, {expected} expected")]
    BadLength { expected: usize, found: usize },
}

const CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
/// BIP-350's checksum constant.
const BECH32M_CONST: u32 = 0x2bc8_30a3;
const CHECKSUM_LEN: usize = 6;

fn polymod(values: impl Iterator<Item = u8>) -> u32 {
    const GEN: [u32; 5] = [
        0x3b6a_57b2,
        0x2650_8e6d,
        0x1ea1_19fa,
        0x3d42_33dd,
        0x2a14_62b3,
    ];
    let mut chk: u32 = 1;
    for v in values {
        let top = chk >> 25;
        chk = ((chk & 0x01ff_ffff) << 5) ^ v as u32;
        for (i, g) in GEN.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                chk ^= g;
            }
        }
    }
    chk
}

fn hrp_expand(hrp: &str) -> impl Iterator<Item = u8> + '_ {
    hrp.bytes()
        .map(|b| b >> 5)
        .chain(std::iter::once(0))
        .chain(hrp.bytes().map(|b| b & 31))
}

fn to_groups(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity((data.len() * 8).div_ceil(5));
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in data {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(((acc >> bits) & 31) as u8);
        }
    }
    if bits > 0 {
        out.push(((acc << (5 - bits)) & 31) as u8);
    }
    out
}

/// Encodes `data` under the lower-case prefix `hrp`.
pub fn encode(hrp: &str, data: &[u8]) -> String {
    let groups = to_groups(data);
    let chk = polymod(
        hrp_expand(hrp)
            .chain(groups.iter().copied())
            .chain([0; CHECKSUM_LEN]),
    ) ^ BECH32M_CONST;
    let mut s = String::with_capacity(hrp.len() + 1 + groups.len() + CHECKSUM_LEN);
    s.push_str(hrp);
    s.push('1');
    for g in groups {
        s.push(CHARSET[g as usize] as char);
    }
    for i in 0..CHECKSUM_LEN {
        s.push(CHARSET[((chk >> (5 * (5 - i))) & 31) as usize] as char);
    }
    s
}

/// Decodes a string of `N` data bytes under prefix `hrp`. Surrounding whitespace is ignored and
/// either case is accepted.
pub fn decode<const N: usize>(hrp: &'static str, text: &str) -> Result<[u8; N], TextError> {
    let text = text.trim();
    let has_lower = text.bytes().any(|b| b.is_ascii_lowercase());
    let has_upper = text.bytes().any(|b| b.is_ascii_uppercase());
    if has_lower && has_upper {
        return Err(TextError::MixedCase);
    }
    let Some(sep) = text.rfind('1') else {
        return Err(TextError::NoSeparator);
    };
    let (prefix, rest) = (&text[..sep], &text[sep + 1..]);
    if !prefix.eq_ignore_ascii_case(hrp) {
        return Err(TextError::WrongPrefix {
            expected: hrp,
            found: prefix.to_ascii_lowercase(),
        });
    }
    let want = (N * 8).div_ceil(5);
    let mut groups = Vec::with_capacity(rest.len());
    for (i, ch) in rest.char_indices() {
        let lower = ch.to_ascii_lowercase();
        match CHARSET.iter().position(|&c| c as char == lower) {
            Some(v) => groups.push(v as u8),
            None => {
                return Err(TextError::BadChar {
                    pos: sep + 1 + i,
                    ch,
                });
            }
        }
    }
    if groups.len() < CHECKSUM_LEN
        || polymod(hrp_expand(hrp).chain(groups.iter().copied())) != BECH32M_CONST
    {
        // A length error usually shows up as a checksum error too; name the length when the
        // checksum would be right for a string of another size.
        return Err(
            if groups.len() != want + CHECKSUM_LEN && groups.len() >= CHECKSUM_LEN {
                TextError::BadLength {
                    expected: want,
                    found: groups.len().saturating_sub(CHECKSUM_LEN),
                }
            } else {
                TextError::BadChecksum
            },
        );
    }
    let data = &groups[..groups.len() - CHECKSUM_LEN];
    if data.len() != want {
        return Err(TextError::BadLength {
            expected: want,
            found: data.len(),
        });
    }
    let mut out = [0u8; N];
    let (mut acc, mut bits, mut n) = (0u32, 0u32, 0usize);
    for &g in data {
        acc = (acc << 5) | g as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out[n] = (acc >> bits) as u8;
            n += 1;
        }
    }
    // Padding bits must be zero, or two strings would decode to the same bytes.
    if acc & ((1 << bits) - 1) != 0 {
        return Err(TextError::BadChecksum);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bip350_valid_vectors_have_valid_checksums() {
        // BIP-350 test vectors (Bech32m), checked with the checksum alone.
        for v in [
            "a1lqfn3a",
            "an83characterlonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11sg7hg6",
            "abcdef1l7aum6echk45nj3s0wdvt2fg8x9yrzpqzd3ryx",
            "split1checkupstagehandshakeupstreamerranterredcaperredlc445v",
            "?1v759aa",
        ] {
            let sep = v.rfind('1').unwrap();
            let hrp = &v[..sep];
            let groups: Vec<u8> = v[sep + 1..]
                .bytes()
                .map(|c| CHARSET.iter().position(|&x| x == c).unwrap() as u8)
                .collect();
            assert_eq!(
                polymod(hrp_expand(hrp).chain(groups.iter().copied())),
                BECH32M_CONST,
                "{v}"
            );
        }
    }

    #[test]
    fn round_trip_and_case() {
        let data: [u8; 20] = std::array::from_fn(|i| (i * 37) as u8);
        let s = encode("vx", &data);
        assert_eq!(s.len(), 3 + 32 + 6);
        assert_eq!(decode::<20>("vx", &s), Ok(data));
        assert_eq!(decode::<20>("vx", &s.to_uppercase()), Ok(data));
        assert_eq!(decode::<20>("vx", &format!("  {s}\n")), Ok(data));
        let mut mixed = s.clone();
        mixed.replace_range(5..6, &s[5..6].to_uppercase());
        if mixed != s {
            assert_eq!(decode::<20>("vx", &mixed), Err(TextError::MixedCase));
        }
    }

    #[test]
    fn every_single_substitution_is_detected() {
        let data: [u8; 32] = std::array::from_fn(|i| (i * 91 + 7) as u8);
        let s = encode("vxpk", &data);
        for pos in 5..s.len() {
            for &c in CHARSET {
                if s.as_bytes()[pos] == c {
                    continue;
                }
                let mut t = s.clone().into_bytes();
                t[pos] = c;
                let t = String::from_utf8(t).unwrap();
                assert!(decode::<32>("vxpk", &t).is_err(), "{t}");
            }
        }
    }

    #[test]
    fn every_adjacent_swap_and_deletion_is_detected() {
        let data: [u8; 20] = std::array::from_fn(|i| (i * 13 + 200) as u8);
        let s = encode("vx", &data);
        let b = s.as_bytes();
        for pos in 3..s.len() {
            let mut del = b.to_vec();
            del.remove(pos);
            assert!(decode::<20>("vx", std::str::from_utf8(&del).unwrap()).is_err());
            if pos + 1 < s.len() && b[pos] != b[pos + 1] {
                let mut sw = b.to_vec();
                sw.swap(pos, pos + 1);
                assert!(decode::<20>("vx", std::str::from_utf8(&sw).unwrap()).is_err());
            }
        }
    }

    #[test]
    fn wrong_prefix_and_bad_characters_are_named() {
        let s = encode("vxpk", &[1; 32]);
        assert!(matches!(
            decode::<20>("vx", &s),
            Err(TextError::WrongPrefix { .. })
        ));
        assert_eq!(decode::<20>("vx", "nothing"), Err(TextError::NoSeparator));
        let id = encode("vx", &[9; 20]);
        let bad = format!("{}b{}", &id[..5], &id[6..]);
        assert!(matches!(
            decode::<20>("vx", &bad),
            Err(TextError::BadChar { ch: 'b', pos: 5 })
        ));
        let short = encode("vx", &[9; 19]);
        assert!(matches!(
            decode::<20>("vx", &short),
            Err(TextError::BadLength { .. })
        ));
    }
}
