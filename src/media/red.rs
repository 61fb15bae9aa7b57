//! Redundant audio (RFC 2198): an Opus packet that also carries a copy of the one before it.
//!
//! ```text
//! 1 PPPPPPP  TTTTTTTT TTTTTTLL LLLLLLLL   block header: F=1, Opus's type, timestamp offset
//!                                         (14 bits), length (10 bits) of the copy
//! 0 PPPPPPP                               the primary's header: F=0, Opus's type
//! copy...    primary...                   the blocks, oldest first
//! ```
//!
//! Five bytes a packet besides the copy. The copy is the previous audio packet's Opus bytes,
//! not a re-encoding at a lower rate: a second encoder would double the encoding work, and the
//! decoder, whose prediction state follows the primary stream, would decode a packet of
//! another stream with a glitch. So one lost packet is rebuilt whole when the next one
//! arrives, where in-band FEC rebuilds a coarser version of it (measured on bench-media's
//! traces: 89 % of the gap between the clean decode and concealment recovered at 5 % random
//! loss, against 60 % for FEC; `MediaConfig::redundancy` says when it is sent).
//!
//! What this format version fixes beyond RFC 2198, so the receiver needs no sequence number for
//! the copy: at most one redundant block, and it is always the audio packet whose index is one
//! below the primary's (a sender that has no such packet, after DTX silence, sends plain Opus).
//! Both blocks carry Opus (type 111); anything else is refused as a bad payload.

use super::packet::PayloadType;

/// Bytes the RED framing adds to a packet with a copy.
pub const OVERHEAD: usize = 5;
/// Largest timestamp offset a block header holds (14 bits): 341 ms at 48 kHz.
pub const MAX_OFFSET: u32 = (1 << 14) - 1;
/// Largest block a block header holds (10 bits).
pub const MAX_BLOCK: usize = (1 << 10) - 1;

/// A parsed RED payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Red<'a> {
    /// The previous packet: its timestamp's offset below the primary's, and its Opus bytes.
    pub copy: Option<(u32, &'a [u8])>,
    pub primary: &'a [u8],
}

/// Writes a RED payload: `primary` with `copy` (offset, Opus bytes) before it. `None` when the
/// copy does not fit a block header (then send `primary` as plain Opus).
pub fn encode(copy: (u32, &[u8]), primary: &[u8]) -> Option<Vec<u8>> {
    let (offset, block) = copy;
    if offset > MAX_OFFSET || block.len() > MAX_BLOCK {
        return None;
    }
    let opus = PayloadType::Opus.code();
    let word = (offset << 10) | block.len() as u32;
    let mut out = Vec::with_capacity(OVERHEAD + block.len() + primary.len());
    out.push(0x80 | opus);
    out.extend_from_slice(&word.to_be_bytes()[1..]);
    out.push(opus);
    out.extend_from_slice(block);
    out.extend_from_slice(primary);
    Some(out)
}

/// Reads a RED payload, `None` if it is not one this version speaks (see the module comment).
pub fn parse(payload: &[u8]) -> Option<Red<'_>> {
    let opus = PayloadType::Opus.code();
    let first = *payload.first()?;
    if first & 0x7f != opus {
        return None;
    }
    if first & 0x80 == 0 {
        return Some(Red {
            copy: None,
            primary: &payload[1..],
        });
    }
    let h = payload.get(..OVERHEAD)?;
    if h[4] != opus {
        // A second redundant block (F set) or another type.
        return None;
    }
    let word = u32::from_be_bytes([0, h[1], h[2], h[3]]);
    let (offset, len) = (word >> 10, (word & 0x3ff) as usize);
    let rest = &payload[OVERHEAD..];
    if rest.len() < len || offset == 0 {
        return None;
    }
    let (copy, primary) = rest.split_at(len);
    Some(Red {
        copy: Some((offset, copy)),
        primary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer_layout() {
        let p = encode((960, b"abc"), b"xy").unwrap();
        // 960 << 10 | 3 = 0x0f0003.
        assert_eq!(
            p,
            [
                0x80 | 111,
                0x0f,
                0x00,
                0x03,
                111,
                b'a',
                b'b',
                b'c',
                b'x',
                b'y'
            ]
        );
        assert_eq!(
            parse(&p),
            Some(Red {
                copy: Some((960, &b"abc"[..])),
                primary: b"xy"
            })
        );
        assert_eq!(
            parse(&[111, 1, 2]),
            Some(Red {
                copy: None,
                primary: &[1, 2]
            })
        );
    }

    #[test]
    fn what_this_version_refuses() {
        assert_eq!(encode((MAX_OFFSET + 1, b"a"), b"b"), None);
        assert_eq!(encode((960, &[0; MAX_BLOCK + 1]), b"b"), None);
        assert!(encode((MAX_OFFSET, &[0; MAX_BLOCK]), b"b").is_some());
        let good = encode((960, b"abc"), b"xy").unwrap();
        for bad in [
            &[][..],
            &good[..4],
            // The copy longer than what follows.
            &good[..7],
            // Another block type, a second redundant block, no offset.
            &[0x80 | 101, 0x0f, 0x00, 0x03, 111, 1, 2, 3][..],
            &[0x80 | 111, 0x0f, 0x00, 0x03, 0x80 | 111, 1, 2, 3][..],
            &[0x80 | 111, 0x00, 0x00, 0x03, 111, 1, 2, 3][..],
            &[101, 1][..],
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
