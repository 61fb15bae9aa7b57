//! Ogg pages (RFC 3533), sans-IO: a muxer that turns packets into pages and a demuxer that turns
//! bytes back into pages and pages into packets. Only what one logical stream needs; the Opus
//! mapping on top (RFC 7845) is in `opusfile`.

use super::error::{Error, Result};

const CAPTURE: &[u8; 4] = b"OggS";
const HEADER_LEN: usize = 27;
/// Header flag: the page's first segment continues a packet from the previous page.
const FLAG_CONTINUED: u8 = 0x01;
/// Header flag: first page of a logical stream.
const FLAG_BOS: u8 = 0x02;
/// Header flag: last page of a logical stream.
const FLAG_EOS: u8 = 0x04;

/// Ogg's CRC-32: polynomial 0x04c11db7, not reflected, initial value 0, no final XOR (so not the
/// zip CRC that `crc32fast` computes).
fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut r = (i as u32) << 24;
            for _ in 0..8 {
                r = if r & 0x8000_0000 != 0 {
                    (r << 1) ^ 0x04c1_1db7
                } else {
                    r << 1
                };
            }
            *e = r;
        }
        t
    });
    data.iter().fold(0u32, |crc, &b| {
        (crc << 8) ^ table[((crc >> 24) as u8 ^ b) as usize]
    })
}

/// Builds the pages of one logical stream.
///
/// [`Muxer::push`] adds a packet and the granule position at its end; pages come out when they
/// fill up (255 segments) or when [`Muxer::flush`] is called. The first page is marked
/// beginning-of-stream; `flush(true, ..)` marks the last one end-of-stream.
pub struct Muxer {
    serial: u32,
    seq: u32,
    lacing: Vec<u8>,
    body: Vec<u8>,
    /// Granule position of the last packet completed on the pending page, -1 if none.
    granule: i64,
    /// The pending page starts with the rest of a packet begun on the previous page.
    continued: bool,
    /// No page has been written yet.
    first: bool,
    packets: usize,
}

impl Muxer {
    /// A muxer for the logical stream `serial`.
    pub fn new(serial: u32) -> Muxer {
        Muxer {
            serial,
            seq: 0,
            lacing: Vec::with_capacity(255),
            body: Vec::new(),
            granule: -1,
            continued: false,
            first: true,
            packets: 0,
        }
    }

    /// Packets completed on the pending page.
    pub fn pending_packets(&self) -> usize {
        self.packets
    }

    /// Adds `packet`, which ends at `granule`. Full pages are appended to `out`.
    pub fn push(&mut self, packet: &[u8], granule: u64, out: &mut Vec<u8>) {
        let mut rest = packet;
        loop {
            if self.lacing.len() == 255 {
                self.emit(false, true, out);
            }
            let seg = rest.len().min(255);
            self.lacing.push(seg as u8);
            self.body.extend_from_slice(&rest[..seg]);
            rest = &rest[seg..];
            // A segment shorter than 255 ends the packet (a zero-length one if need be).
            if seg < 255 {
                break;
            }
        }
        self.granule = granule as i64;
        self.packets += 1;
    }

    /// Writes the pending page, if any (with `eos`, always one: an empty page may end a stream).
    pub fn flush(&mut self, eos: bool, out: &mut Vec<u8>) {
        if !self.lacing.is_empty() || eos {
            self.emit(eos, false, out);
        }
    }

    fn emit(&mut self, eos: bool, mid_packet: bool, out: &mut Vec<u8>) {
        let start = out.len();
        let mut flags = 0;
        if self.continued {
            flags |= FLAG_CONTINUED;
        }
        if self.first {
            flags |= FLAG_BOS;
        }
        if eos {
            flags |= FLAG_EOS;
        }
        out.extend_from_slice(CAPTURE);
        out.push(0);
        out.push(flags);
        out.extend_from_slice(&self.granule.to_le_bytes());
        out.extend_from_slice(&self.serial.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.push(self.lacing.len() as u8);
        out.extend_from_slice(&self.lacing);
        out.extend_from_slice(&self.body);
        let crc = crc32(&out[start..]);
        out[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
        self.seq = self.seq.wrapping_add(1);
        self.lacing.clear();
        self.body.clear();
        self.granule = -1;
        self.first = false;
        self.continued = mid_packet;
        self.packets = 0;
    }
}

/// One page, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Logical stream.
    pub serial: u32,
    /// Page sequence number within the stream.
    pub seq: u32,
    /// Granule position at the end of the last packet completed here; -1 if none completes.
    pub granule: i64,
    /// First page of its stream.
    pub bos: bool,
    /// Last page of its stream.
    pub eos: bool,
    /// Starts with the rest of a packet begun on the previous page.
    pub continued: bool,
    /// Segment lengths.
    pub lacing: Vec<u8>,
    /// Segment data.
    pub body: Vec<u8>,
}

/// Splits bytes into pages, checking each page's CRC.
#[derive(Default)]
pub struct Demuxer {
    buf: Vec<u8>,
    pos: usize,
}

impl Demuxer {
    /// An empty demuxer.
    pub fn new() -> Demuxer {
        Demuxer::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 1 << 16 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes held that do not yet make a page.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next whole page, `Ok(None)` if more bytes are needed.
    pub fn next_page(&mut self) -> Result<Option<Page>> {
        let b = &self.buf[self.pos..];
        if b.len() < HEADER_LEN {
            if !CAPTURE.starts_with(&b[..b.len().min(4)]) {
                return Err(Error::Corrupt(
                    "not an Ogg stream (no page capture pattern)".into(),
                ));
            }
            return Ok(None);
        }
        if &b[..4] != CAPTURE {
            return Err(Error::Corrupt("Ogg page capture pattern missing".into()));
        }
        if b[4] != 0 {
            return Err(Error::Unsupported(format!("Ogg version {}", b[4])));
        }
        let nseg = b[26] as usize;
        if b.len() < HEADER_LEN + nseg {
            return Ok(None);
        }
        let lacing = &b[HEADER_LEN..HEADER_LEN + nseg];
        let body_len: usize = lacing.iter().map(|&l| l as usize).sum();
        let total = HEADER_LEN + nseg + body_len;
        if b.len() < total {
            return Ok(None);
        }
        let stored = u32::from_le_bytes(b[22..26].try_into().unwrap());
        let mut page_bytes = b[..total].to_vec();
        page_bytes[22..26].fill(0);
        let seq = u32::from_le_bytes(b[18..22].try_into().unwrap());
        if crc32(&page_bytes) != stored {
            return Err(Error::Corrupt(format!("Ogg page {seq} fails its checksum")));
        }
        let flags = b[5];
        let page = Page {
            serial: u32::from_le_bytes(b[14..18].try_into().unwrap()),
            seq,
            granule: i64::from_le_bytes(b[6..14].try_into().unwrap()),
            bos: flags & FLAG_BOS != 0,
            eos: flags & FLAG_EOS != 0,
            continued: flags & FLAG_CONTINUED != 0,
            lacing: lacing.to_vec(),
            body: b[HEADER_LEN + nseg..total].to_vec(),
        };
        self.pos += total;
        Ok(Some(page))
    }
}

/// Reassembles the packets of one logical stream from its pages, in order.
#[derive(Default)]
pub struct Assembler {
    partial: Vec<u8>,
    /// A packet is in progress (its last segment was 255 long).
    open: bool,
    next_seq: Option<u32>,
}

impl Assembler {
    /// A fresh assembler.
    pub fn new() -> Assembler {
        Assembler::default()
    }

    /// The packets completed on `page` (appended to `out`). Errors on a missing page.
    pub fn page(&mut self, page: &Page, out: &mut Vec<Vec<u8>>) -> Result<()> {
        if let Some(want) = self.next_seq
            && page.seq != want
        {
            return Err(Error::Corrupt(format!(
                "Ogg page {want} is missing (found page {} next)",
                page.seq
            )));
        }
        self.next_seq = Some(page.seq.wrapping_add(1));
        if page.continued != self.open {
            return Err(Error::Corrupt(format!(
                "Ogg page {} {} a packet continued from the previous page",
                page.seq,
                if page.continued { "claims" } else { "lacks" }
            )));
        }
        let mut at = 0;
        for &l in &page.lacing {
            self.partial
                .extend_from_slice(&page.body[at..at + l as usize]);
            at += l as usize;
            if l < 255 {
                out.push(std::mem::take(&mut self.partial));
                self.open = false;
            } else {
                self.open = true;
            }
        }
        Ok(())
    }

    /// Whether a packet was left unfinished (a stream cut short).
    pub fn is_open(&self) -> bool {
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(bytes: &[u8]) -> Vec<Page> {
        let mut d = Demuxer::new();
        d.push(bytes);
        let mut v = Vec::new();
        while let Some(p) = d.next_page().unwrap() {
            v.push(p);
        }
        assert_eq!(d.pending(), 0);
        v
    }

    #[test]
    fn crc_matches_the_ogg_reference_value() {
        // The CRC-32/POSIX check value without its final inversion (0x765e7680 ^ !0).
        assert_eq!(crc32(b"123456789"), 0x89a1_897f);
    }

    #[test]
    fn packets_of_every_awkward_size_survive() {
        let sizes = [0usize, 1, 254, 255, 256, 510, 65_025, 200_000, 3];
        let packets: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|b| (b * 7 + i) as u8).collect())
            .collect();
        let mut m = Muxer::new(0x1234);
        let mut bytes = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            m.push(p, (i as u64 + 1) * 960, &mut bytes);
        }
        m.flush(true, &mut bytes);
        let pages = pages(&bytes);
        assert!(pages[0].bos && !pages[1..].iter().any(|p| p.bos));
        assert!(pages.last().unwrap().eos);
        assert!(pages.iter().all(|p| p.serial == 0x1234));
        // A page on which no packet ends carries granule -1.
        assert!(pages.iter().any(|p| p.granule == -1));
        assert_eq!(pages.last().unwrap().granule, 9 * 960);
        let mut a = Assembler::new();
        let mut got = Vec::new();
        for p in &pages {
            a.page(p, &mut got).unwrap();
        }
        assert!(!a.is_open());
        assert_eq!(got, packets);
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum_and_a_lost_page_is_noticed() {
        let mut m = Muxer::new(7);
        let mut bytes = Vec::new();
        for i in 0..3 {
            m.push(&[i; 100], 960, &mut bytes);
            m.flush(false, &mut bytes);
        }
        let mut bad = bytes.clone();
        bad[40] ^= 1;
        let mut d = Demuxer::new();
        d.push(&bad);
        assert!(matches!(d.next_page(), Err(Error::Corrupt(_))));
        let all = pages(&bytes);
        let mut a = Assembler::new();
        let mut out = Vec::new();
        a.page(&all[0], &mut out).unwrap();
        assert!(matches!(a.page(&all[2], &mut out), Err(Error::Corrupt(_))));
    }

    #[test]
    fn pages_arrive_byte_by_byte() {
        let mut m = Muxer::new(1);
        let mut bytes = Vec::new();
        m.push(b"hello", 1, &mut bytes);
        m.flush(true, &mut bytes);
        let mut d = Demuxer::new();
        let mut n = 0;
        for b in &bytes {
            d.push(&[*b]);
            while d.next_page().unwrap().is_some() {
                n += 1;
            }
        }
        assert_eq!(n, 1);
    }
}
