//! Ogg Opus files (RFC 7845) on top of [`super::ogg`]: the identification and comment headers,
//! pre-skip, granule positions, and end trimming, so that a file holds exactly the samples that
//! went in and any conforming decoder (`opusdec`, browsers, ffmpeg) gives them back.
//!
//! Timing in RFC 7845 §4: granule positions count 48 kHz samples from the start of the decoder
//! output, including the first `pre_skip` samples, which a decoder discards (they are the
//! encoder's lookahead). The last page's granule position marks the end: samples the last
//! packet decodes beyond it are padding and are dropped (end trimming, §4.4).

use super::error::{Error, Result};
use super::ogg::{Assembler, Demuxer, Muxer, Page};

/// Opus always runs at 48 kHz inside; granule positions count in it.
pub const OPUS_RATE: u32 = 48_000;
/// Longest packet the decoder can produce, per channel (120 ms).
const MAX_PACKET_SAMPLES: usize = 5_760;
/// Largest encoded packet we ask the encoder for (RFC 6716 caps a frame at 1275 bytes; 3 frames
/// of 20 ms in a 60 ms packet plus framing).
const MAX_PACKET_BYTES: usize = 4_000;

/// The Opus application mode (what the encoder optimises for).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Application {
    /// Music and general audio; `opusenc` always uses this.
    Audio,
    /// Speech: what calls use.
    Voip,
    /// Lowest delay (no speech mode).
    Lowdelay,
}

/// How to encode.
#[derive(Clone, Copy, Debug)]
pub struct EncodeSettings {
    /// Target bits per second; `None` for `opusenc`'s default (64 kb/s mono, 96 kb/s stereo).
    pub bitrate: Option<u32>,
    /// Encoder application.
    pub application: Application,
    /// 0 (fastest) to 10 (best).
    pub complexity: u8,
    /// Frame length in milliseconds: 10, 20, 40 or 60.
    pub frame_ms: u32,
    /// Significant bits of the input (16 for 16-bit sources), a hint for the encoder.
    pub lsb_depth: u8,
    /// Longest span of audio on one Ogg page, milliseconds (latency of a live stream).
    pub page_ms: u32,
}

impl Default for EncodeSettings {
    fn default() -> EncodeSettings {
        EncodeSettings {
            bitrate: None,
            application: Application::Audio,
            complexity: 10,
            frame_ms: 20,
            lsb_depth: 24,
            page_ms: 1000,
        }
    }
}

/// The identification header (RFC 7845 §5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpusHead {
    /// Output channels.
    pub channels: u8,
    /// 48 kHz samples to discard from the decoder's output.
    pub pre_skip: u16,
    /// The rate of the original input (informational; 0 if unknown).
    pub input_rate: u32,
    /// Output gain, Q7.8 dB.
    pub gain: i16,
    /// Channel mapping family (0: mono or stereo).
    pub mapping_family: u8,
}

impl OpusHead {
    /// The 19-byte header for mapping family 0.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(19);
        b.extend_from_slice(b"OpusHead");
        b.push(1);
        b.push(self.channels);
        b.extend_from_slice(&self.pre_skip.to_le_bytes());
        b.extend_from_slice(&self.input_rate.to_le_bytes());
        b.extend_from_slice(&self.gain.to_le_bytes());
        b.push(0);
        b
    }

    /// Parses and checks the header.
    pub fn parse(b: &[u8]) -> Result<OpusHead> {
        if b.len() < 19 || &b[..8] != b"OpusHead" {
            return Err(Error::Corrupt(
                "Ogg Opus identification header missing".into(),
            ));
        }
        if b[8] >> 4 != 0 {
            return Err(Error::Unsupported(format!("Ogg Opus version {}", b[8])));
        }
        let head = OpusHead {
            channels: b[9],
            pre_skip: u16::from_le_bytes([b[10], b[11]]),
            input_rate: u32::from_le_bytes(b[12..16].try_into().unwrap()),
            gain: i16::from_le_bytes([b[16], b[17]]),
            mapping_family: b[18],
        };
        if head.channels == 0 {
            return Err(Error::Corrupt("Ogg Opus header with 0 channels".into()));
        }
        if head.mapping_family != 0 || head.channels > 2 {
            return Err(Error::Unsupported(format!(
                "Ogg Opus channel mapping family {} with {} channels (only mono and stereo)",
                head.mapping_family, head.channels
            )));
        }
        Ok(head)
    }
}

fn opus_tags(vendor: &str) -> Vec<u8> {
    let comment = format!("ENCODER=voxmesh pipe-audio {}", env!("CARGO_PKG_VERSION"));
    let mut b = Vec::new();
    b.extend_from_slice(b"OpusTags");
    b.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    b.extend_from_slice(vendor.as_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&(comment.len() as u32).to_le_bytes());
    b.extend_from_slice(comment.as_bytes());
    b
}

/// The version of the libopus linked into this build (the bundled one).
pub fn libopus_version() -> &'static str {
    opus::version()
}

/// Encodes 48 kHz interleaved PCM into Ogg Opus bytes.
///
/// [`OggOpusWriter::new`] writes the two header pages; [`OggOpusWriter::push`] takes PCM in
/// any amounts; [`OggOpusWriter::finish`] pads the last frame and writes the last page, whose
/// granule position trims the padding away.
pub struct OggOpusWriter {
    enc: opus::Encoder,
    mux: Muxer,
    channels: usize,
    pre_skip: u64,
    /// Samples per channel in one frame.
    frame: usize,
    /// PCM not yet encoded (less than a frame).
    pending: Vec<f32>,
    /// Input samples (all channels) taken so far.
    input: u64,
    /// Samples per channel encoded so far, padding included.
    encoded: u64,
    packets_per_page: usize,
    packet: Vec<u8>,
}

impl OggOpusWriter {
    /// A writer for `channels` (1 or 2) channels of 48 kHz PCM; `input_rate` is recorded in the
    /// header as the original rate. Header pages are appended to `out`.
    pub fn new(
        channels: u16,
        input_rate: u32,
        settings: EncodeSettings,
        out: &mut Vec<u8>,
    ) -> Result<OggOpusWriter> {
        let ch = match channels {
            1 => opus::Channels::Mono,
            2 => opus::Channels::Stereo,
            n => {
                return Err(Error::Unsupported(format!(
                    "Ogg Opus output with {n} channels (only 1 or 2: use --channels)"
                )));
            }
        };
        if ![10, 20, 40, 60].contains(&settings.frame_ms) {
            return Err(Error::Unsupported(format!(
                "Opus frames of {} ms (10, 20, 40 or 60)",
                settings.frame_ms
            )));
        }
        let app = match settings.application {
            Application::Audio => opus::Application::Audio,
            Application::Voip => opus::Application::Voip,
            Application::Lowdelay => opus::Application::LowDelay,
        };
        let mut enc = opus::Encoder::new(OPUS_RATE, ch, app)?;
        let bitrate = settings
            .bitrate
            .unwrap_or(if channels == 1 { 64_000 } else { 96_000 });
        enc.set_bitrate(opus::Bitrate::Bits(bitrate as i32))?;
        enc.set_complexity(settings.complexity.min(10) as i32)?;
        enc.set_vbr(true)?;
        enc.set_lsb_depth(settings.lsb_depth.clamp(8, 24) as i32)?;
        let pre_skip = enc.get_lookahead()? as u64;
        let head = OpusHead {
            channels: channels as u8,
            pre_skip: pre_skip as u16,
            input_rate,
            gain: 0,
            mapping_family: 0,
        };
        let mut mux = Muxer::new(rand::random());
        // RFC 7845 §3: the identification header alone on the first page, the comment header
        // on its own page(s), audio from a fresh page on.
        mux.push(&head.to_bytes(), 0, out);
        mux.flush(false, out);
        mux.push(&opus_tags(libopus_version()), 0, out);
        mux.flush(false, out);
        let frame = (OPUS_RATE / 1000 * settings.frame_ms) as usize;
        Ok(OggOpusWriter {
            enc,
            mux,
            channels: channels as usize,
            pre_skip,
            frame,
            pending: Vec::with_capacity(frame * channels as usize),
            input: 0,
            encoded: 0,
            packets_per_page: (settings.page_ms / settings.frame_ms).max(1) as usize,
            packet: vec![0; MAX_PACKET_BYTES],
        })
    }

    /// The pre-skip written in the header (the encoder's lookahead, 48 kHz samples).
    pub fn pre_skip(&self) -> u64 {
        self.pre_skip
    }

    /// Encodes `pcm` (interleaved, 48 kHz); finished pages are appended to `out`.
    pub fn push(&mut self, mut pcm: &[f32], out: &mut Vec<u8>) -> Result<()> {
        self.input += pcm.len() as u64;
        let want = self.frame * self.channels;
        if !self.pending.is_empty() {
            let take = (want - self.pending.len()).min(pcm.len());
            self.pending.extend_from_slice(&pcm[..take]);
            pcm = &pcm[take..];
            if self.pending.len() < want {
                return Ok(());
            }
            let frame = std::mem::take(&mut self.pending);
            self.encode(&frame, out)?;
            self.pending = frame;
            self.pending.clear();
        }
        let mut frames = pcm.chunks_exact(want);
        for f in frames.by_ref() {
            self.encode(f, out)?;
        }
        self.pending.extend_from_slice(frames.remainder());
        Ok(())
    }

    /// Pads and encodes the rest, and writes the last page. The stream then decodes to exactly
    /// the samples pushed.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<()> {
        // The decoder must get input + pre-skip samples out; pad with silence to whole frames.
        let end = self.input / self.channels as u64 + self.pre_skip;
        let want = self.frame * self.channels;
        while self.encoded < end {
            let mut f = std::mem::take(&mut self.pending);
            f.resize(want, 0.0);
            self.encode_last(&f, end, out)?;
            self.pending.clear();
        }
        // The last packet is still pending (encode_last never flushes it), so the end-of-stream
        // page carries it and the trimming granule position.
        self.mux.flush(true, out);
        Ok(())
    }

    fn encode(&mut self, frame: &[f32], out: &mut Vec<u8>) -> Result<()> {
        let n = self.enc.encode_float(frame, &mut self.packet)?;
        self.encoded += self.frame as u64;
        self.mux.push(&self.packet[..n], self.encoded, out);
        if self.mux.pending_packets() >= self.packets_per_page {
            self.mux.flush(false, out);
        }
        Ok(())
    }

    fn encode_last(&mut self, frame: &[f32], end: u64, out: &mut Vec<u8>) -> Result<()> {
        let n = self.enc.encode_float(frame, &mut self.packet)?;
        self.encoded += self.frame as u64;
        let granule = self.encoded.min(end);
        self.mux.push(&self.packet[..n], granule, out);
        if self.encoded < end && self.mux.pending_packets() >= self.packets_per_page {
            self.mux.flush(false, out);
        }
        Ok(())
    }
}

enum Stage {
    /// Waiting for the identification header.
    Head,
    /// Waiting for the comment header (which may span pages).
    Tags,
    Audio,
    /// The end-of-stream page was decoded.
    Done,
}

/// Decodes Ogg Opus bytes into 48 kHz interleaved PCM, honouring pre-skip, end trimming and the
/// header's output gain. Pages of other logical streams are ignored.
pub struct OggOpusReader {
    demux: Demuxer,
    asm: Assembler,
    serial: Option<u32>,
    head: Option<OpusHead>,
    stage: Stage,
    dec: Option<opus::Decoder>,
    gain: f32,
    /// Samples per channel decoded so far, pre-skip included.
    decoded: u64,
    buf: Vec<f32>,
    packets: Vec<Vec<u8>>,
}

impl Default for OggOpusReader {
    fn default() -> Self {
        OggOpusReader::new()
    }
}

impl OggOpusReader {
    /// A reader at the start of a stream.
    pub fn new() -> OggOpusReader {
        OggOpusReader {
            demux: Demuxer::new(),
            asm: Assembler::new(),
            serial: None,
            head: None,
            stage: Stage::Head,
            dec: None,
            gain: 1.0,
            decoded: 0,
            buf: vec![0.0; MAX_PACKET_SAMPLES * 2],
            packets: Vec::new(),
        }
    }

    /// The identification header, once read.
    pub fn head(&self) -> Option<OpusHead> {
        self.head
    }

    /// Whether the headers are read (so [`OggOpusReader::head`] is known).
    pub fn ready(&self) -> bool {
        matches!(self.stage, Stage::Audio | Stage::Done)
    }

    /// Whether the last page was read.
    pub fn done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// Adds bytes of the file.
    pub fn push(&mut self, data: &[u8]) {
        self.demux.push(data);
    }

    /// Decodes every whole page held, appending PCM to `out`.
    pub fn decode(&mut self, out: &mut Vec<f32>) -> Result<()> {
        while let Some(page) = self.demux.next_page()? {
            self.page(page, out)?;
        }
        Ok(())
    }

    /// Call at end of input: errors if the stream was cut short.
    pub fn finish(&self) -> Result<()> {
        if self.demux.pending() > 0 {
            return Err(Error::Truncated("the last Ogg page is cut short".into()));
        }
        match self.stage {
            Stage::Done => Ok(()),
            Stage::Head => Err(Error::Truncated("no Ogg Opus header (empty input?)".into())),
            _ => Err(Error::Truncated(
                "the Ogg Opus stream ends without its end-of-stream page".into(),
            )),
        }
    }

    fn page(&mut self, page: Page, out: &mut Vec<f32>) -> Result<()> {
        match self.serial {
            None => {
                if !page.bos {
                    return Err(Error::Corrupt(
                        "Ogg stream does not start with a header page".into(),
                    ));
                }
                let first = first_packet(&page);
                if !first.starts_with(b"OpusHead") {
                    if first.starts_with(b"\x01vorbis") || first.starts_with(b"\x7fFLAC") {
                        return Err(Error::Unsupported(
                            "Ogg streams other than Opus (Vorbis, FLAC)".into(),
                        ));
                    }
                    // Another multiplexed stream (a skeleton, say): look at the next one.
                    return Ok(());
                }
                self.serial = Some(page.serial);
            }
            Some(s) if s != page.serial => {
                if page.bos && matches!(self.stage, Stage::Done) {
                    return Err(Error::Unsupported("chained Ogg streams".into()));
                }
                return Ok(());
            }
            Some(_) => {}
        }
        if matches!(self.stage, Stage::Done) {
            return Err(Error::Corrupt(
                "Ogg pages after the end-of-stream page".into(),
            ));
        }
        let mut packets = std::mem::take(&mut self.packets);
        packets.clear();
        self.asm.page(&page, &mut packets)?;
        for p in &packets {
            match self.stage {
                Stage::Head => {
                    let head = OpusHead::parse(p)?;
                    let ch = if head.channels == 1 {
                        opus::Channels::Mono
                    } else {
                        opus::Channels::Stereo
                    };
                    self.dec = Some(opus::Decoder::new(OPUS_RATE, ch)?);
                    self.gain = 10f32.powf(head.gain as f32 / (20.0 * 256.0));
                    self.head = Some(head);
                    self.stage = Stage::Tags;
                }
                Stage::Tags => {
                    if !p.starts_with(b"OpusTags") {
                        return Err(Error::Corrupt("Ogg Opus comment header missing".into()));
                    }
                    self.stage = Stage::Audio;
                }
                Stage::Audio => self.audio(p, &page, out)?,
                Stage::Done => {}
            }
        }
        self.packets = packets;
        if page.eos {
            if self.asm.is_open() {
                return Err(Error::Corrupt("Ogg stream ends inside a packet".into()));
            }
            if !matches!(self.stage, Stage::Audio) {
                return Err(Error::Corrupt(
                    "Ogg Opus stream ends inside its headers".into(),
                ));
            }
            self.stage = Stage::Done;
        }
        Ok(())
    }

    fn audio(&mut self, packet: &[u8], page: &Page, out: &mut Vec<f32>) -> Result<()> {
        let head = self.head.expect("headers before audio");
        let ch = head.channels as usize;
        let dec = self.dec.as_mut().expect("decoder made with the header");
        let n = dec
            .decode_float(packet, &mut self.buf, false)
            .map_err(|e| Error::Corrupt(format!("undecodable Opus packet: {e}")))?;
        let (from, to) = (self.decoded, self.decoded + n as u64);
        self.decoded = to;
        // Samples before pre-skip are the encoder's lookahead; on the last page, samples past
        // its granule position are padding (RFC 7845 §4.4).
        let start = from.max(head.pre_skip as u64);
        let end = if page.eos && page.granule >= 0 {
            to.min(page.granule as u64)
        } else {
            to
        };
        if end > start {
            let (a, b) = ((start - from) as usize * ch, (end - from) as usize * ch);
            if self.gain == 1.0 {
                out.extend_from_slice(&self.buf[a..b]);
            } else {
                out.extend(self.buf[a..b].iter().map(|x| x * self.gain));
            }
        }
        Ok(())
    }
}

fn first_packet(page: &Page) -> &[u8] {
    let len: usize = page
        .lacing
        .iter()
        .position(|&l| l < 255)
        .map_or(page.body.len(), |i| {
            page.lacing[..=i].iter().map(|&l| l as usize).sum()
        });
    &page.body[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(pcm: &[f32], channels: u16, chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w =
            OggOpusWriter::new(channels, 48_000, EncodeSettings::default(), &mut out).unwrap();
        for c in pcm.chunks(chunk) {
            w.push(c, &mut out).unwrap();
        }
        w.finish(&mut out).unwrap();
        out
    }

    fn decode(bytes: &[u8], chunk: usize) -> (OpusHead, Vec<f32>) {
        let mut r = OggOpusReader::new();
        let mut pcm = Vec::new();
        for c in bytes.chunks(chunk) {
            r.push(c);
            r.decode(&mut pcm).unwrap();
        }
        r.finish().unwrap();
        (r.head().unwrap(), pcm)
    }

    fn tone(n: usize) -> Vec<f32> {
        (0..n).map(|i| 0.3 * (i as f32 * 0.0571).sin()).collect()
    }

    #[test]
    fn every_length_comes_back_exactly() {
        for n in [0usize, 1, 311, 312, 959, 960, 961, 48_000, 48_001] {
            let bytes = encode(&tone(n), 1, 1000);
            let (head, pcm) = decode(&bytes, 4096);
            assert_eq!(pcm.len(), n, "length {n}");
            assert_eq!(head.input_rate, 48_000);
            assert!(head.pre_skip > 0);
        }
        let stereo: Vec<f32> = tone(2 * 4_801);
        let (head, pcm) = decode(&encode(&stereo, 2, 77), 1);
        assert_eq!((head.channels, pcm.len()), (2, stereo.len()));
    }

    #[test]
    fn the_round_trip_is_aligned_and_close() {
        let x = tone(48_000);
        let (_, y) = decode(&encode(&x, 1, 960), 65_536);
        // Best lag by brute force over a few samples each way: must be 0.
        let score = |lag: isize| -> f64 {
            (2000..46_000)
                .map(|i| x[i] as f64 * y[(i as isize + lag) as usize] as f64)
                .sum()
        };
        let best = (-3..=3)
            .max_by(|&a, &b| score(a).total_cmp(&score(b)))
            .unwrap();
        assert_eq!(best, 0);
        let err: f64 = (2000..46_000)
            .map(|i| (x[i] - y[i]) as f64)
            .map(|d| d * d)
            .sum();
        let sig: f64 = (2000..46_000).map(|i| (x[i] as f64).powi(2)).sum();
        assert!(10.0 * (sig / err).log10() > 20.0);
    }

    #[test]
    fn a_cut_stream_is_truncated_and_a_damaged_one_corrupt() {
        let bytes = encode(&tone(48_000), 1, 960);
        let mut r = OggOpusReader::new();
        r.push(&bytes[..bytes.len() - 10]);
        let mut pcm = Vec::new();
        r.decode(&mut pcm).unwrap();
        assert!(matches!(r.finish(), Err(Error::Truncated(_))));
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n / 2] ^= 0x40;
        let mut r = OggOpusReader::new();
        r.push(&bad);
        assert!(matches!(r.decode(&mut pcm), Err(Error::Corrupt(_))));
    }

    #[test]
    fn headers_round_trip_and_multichannel_is_refused() {
        let h = OpusHead {
            channels: 2,
            pre_skip: 312,
            input_rate: 44_100,
            gain: -256,
            mapping_family: 0,
        };
        assert_eq!(OpusHead::parse(&h.to_bytes()).unwrap(), h);
        let mut b = h.to_bytes();
        b[18] = 1;
        assert!(matches!(OpusHead::parse(&b), Err(Error::Unsupported(_))));
    }
}
