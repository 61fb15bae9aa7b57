//! Opus for calls: 48 kHz mono, VoIP application (RFC 6716, libopus via the `opus` crate).
//!
//! [`Encoder`] takes one frame of PCM at a time and says when a frame is DTX silence that need
//! not be sent; [`Decoder`] decodes, conceals (PLC) and recovers a lost frame from the next
//! packet's in-band FEC (LBRR). [`has_fec`] tells from the bits whether a packet carries FEC,
//! so the jitter buffer counts a recovery only when one really happened.

use std::time::Duration;

/// The media clock and sample rate.
pub const RATE: u32 = 48_000;
/// Samples per millisecond at [`RATE`].
pub const SAMPLES_PER_MS: u32 = RATE / 1000;
/// The largest Opus packet we produce: the encoder fits its output to this, so a sealed
/// packet (plus IP, UDP and TURN ChannelData headers) stays under a 1280-byte IPv6 MTU.
pub const MAX_PACKET: usize = 1150;
/// The longest audio one Opus packet can carry (RFC 6716 §3.2.5).
pub const MAX_PACKET_SAMPLES: u32 = 120 * SAMPLES_PER_MS;

/// Audio per packet. Longer frames cost less header overhead per second (the call-quality work
/// lengthens them on narrow links) and add delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FrameDuration {
    Ms10,
    #[default]
    Ms20,
    Ms40,
    Ms60,
}

impl FrameDuration {
    pub const fn millis(self) -> u32 {
        match self {
            FrameDuration::Ms10 => 10,
            FrameDuration::Ms20 => 20,
            FrameDuration::Ms40 => 40,
            FrameDuration::Ms60 => 60,
        }
    }

    /// Samples per frame at 48 kHz.
    pub const fn samples(self) -> usize {
        (self.millis() * SAMPLES_PER_MS) as usize
    }

    pub const fn duration(self) -> Duration {
        Duration::from_millis(self.millis() as u64)
    }

    /// The duration of `ms` milliseconds, if it is one Opus offers for calls.
    pub fn from_millis(ms: u32) -> Option<FrameDuration> {
        match ms {
            10 => Some(FrameDuration::Ms10),
            20 => Some(FrameDuration::Ms20),
            40 => Some(FrameDuration::Ms40),
            60 => Some(FrameDuration::Ms60),
            _ => None,
        }
    }
}

/// Variable bitrate. Unconstrained VBR sounds best but its packet lengths follow the speech, and
/// lengths are visible to a relay (RFC 6562 shows phrases can be guessed from them);
/// constrained VBR narrows that, constant bitrate closes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Vbr {
    #[default]
    Unconstrained,
    Constrained,
    Constant,
}

/// Encoder settings. Every one can change mid-call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpusSettings {
    pub frame: FrameDuration,
    /// Target bitrate, bit/s (libopus accepts 500..=512000).
    pub bitrate: u32,
    /// 0..=10; CPU against quality.
    pub complexity: u8,
    /// In-band FEC (LBRR): each packet also carries a coarse copy of the previous frame. libopus
    /// adds it only in SILK/hybrid mode and only when `loss_percent` > 0, scaled to it.
    pub fec: bool,
    /// Expected packet loss, percent: what FEC is sized for. Receiver reports update it.
    pub loss_percent: u8,
    /// Discontinuous transmission: in silence, a packet only every 400 ms.
    pub dtx: bool,
    pub vbr: Vbr,
}

impl Default for OpusSettings {
    fn default() -> Self {
        OpusSettings {
            frame: FrameDuration::Ms20,
            bitrate: 32_000,
            complexity: 9,
            fec: true,
            // What FEC is sized for until the first receiver report arrives (after a second).
            loss_percent: 5,
            dtx: false,
            vbr: Vbr::Unconstrained,
        }
    }
}

/// A codec failure (libopus refused a setting or a packet).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// libopus returned an error. For a setting: the value is out of range (see
    /// [`OpusSettings`]); for decoding: the packet is corrupt.
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
    /// The PCM given to the encoder is not exactly one frame.
    #[error("opus: encoder wants {want} samples per frame, got {got}")]
    FrameLength { want: usize, got: usize },
}

/// What one frame encoded to.
#[derive(Debug, PartialEq, Eq)]
pub enum Encoded<'a> {
    /// A packet to send.
    Packet(&'a [u8]),
    /// A DTX frame: silence the decoder fills with comfort noise, not sent. libopus marks these
    /// as packets of at most 2 bytes (a TOC byte alone); WebRTC skips them likewise.
    Dtx,
}

/// Opus encoder for one call direction.
pub struct Encoder {
    enc: opus::Encoder,
    settings: OpusSettings,
    out: Vec<u8>,
}

impl Encoder {
    pub fn new(settings: OpusSettings) -> Result<Encoder, CodecError> {
        let mut enc = opus::Encoder::new(RATE, opus::Channels::Mono, opus::Application::Voip)?;
        // Speech is what a call carries: bias the mode decision towards SILK/hybrid, the modes
        // that have in-band FEC.
        enc.set_signal(opus::Signal::Voice)?;
        let mut e = Encoder {
            enc,
            settings,
            out: vec![0; MAX_PACKET],
        };
        e.apply(settings)?;
        Ok(e)
    }

    /// The current settings.
    pub fn settings(&self) -> &OpusSettings {
        &self.settings
    }

    /// Applies new settings (a handful of cheap ctl calls; the frame length takes effect with
    /// the next frame).
    pub fn apply(&mut self, s: OpusSettings) -> Result<(), CodecError> {
        let e = &mut self.enc;
        e.set_bitrate(opus::Bitrate::Bits(s.bitrate.min(512_000) as i32))?;
        e.set_complexity(i32::from(s.complexity.min(10)))?;
        e.set_inband_fec(s.fec)?;
        e.set_packet_loss_perc(i32::from(s.loss_percent.min(100)))?;
        e.set_dtx(s.dtx)?;
        e.set_vbr(s.vbr != Vbr::Constant)?;
        e.set_vbr_constraint(s.vbr == Vbr::Constrained)?;
        self.settings = s;
        Ok(())
    }

    /// Encodes exactly one frame ([`OpusSettings::frame`] samples).
    pub fn encode(&mut self, pcm: &[f32]) -> Result<Encoded<'_>, CodecError> {
        let want = self.settings.frame.samples();
        if pcm.len() != want {
            return Err(CodecError::FrameLength {
                want,
                got: pcm.len(),
            });
        }
        let n = self.enc.encode_float(pcm, &mut self.out)?;
        Ok(if n <= 2 {
            Encoded::Dtx
        } else {
            Encoded::Packet(&self.out[..n])
        })
    }

    /// The encoder's algorithmic delay, samples (6.5 ms in VoIP mode).
    pub fn lookahead(&mut self) -> Result<u32, CodecError> {
        Ok(self.enc.get_lookahead()?.max(0) as u32)
    }
}

/// Opus decoder for one call direction. Every method appends to `out` and returns how many
/// samples it appended.
pub struct Decoder {
    dec: opus::Decoder,
    scratch: Vec<f32>,
}

impl Decoder {
    pub fn new() -> Result<Decoder, CodecError> {
        Ok(Decoder {
            dec: opus::Decoder::new(RATE, opus::Channels::Mono)?,
            scratch: vec![0.0; MAX_PACKET_SAMPLES as usize],
        })
    }

    /// Decodes a packet.
    pub fn decode(&mut self, packet: &[u8], out: &mut Vec<f32>) -> Result<usize, CodecError> {
        let n = self.dec.decode_float(packet, &mut self.scratch, false)?;
        out.extend_from_slice(&self.scratch[..n]);
        Ok(n)
    }

    /// Recovers the `samples` before `next` from `next`'s in-band FEC (libopus conceals the
    /// part its LBRR does not cover, or all of it when `next` has none).
    pub fn recover(
        &mut self,
        next: &[u8],
        samples: usize,
        out: &mut Vec<f32>,
    ) -> Result<usize, CodecError> {
        let samples = samples.min(self.scratch.len());
        let n = self
            .dec
            .decode_float(next, &mut self.scratch[..samples], true)?;
        out.extend_from_slice(&self.scratch[..n]);
        Ok(n)
    }

    /// Packet loss concealment for `samples` (a multiple of 2.5 ms): continues the last sound,
    /// fading out, or comfort noise after DTX.
    pub fn conceal(&mut self, samples: usize, out: &mut Vec<f32>) -> Result<usize, CodecError> {
        let samples = samples.min(self.scratch.len());
        let n = self
            .dec
            .decode_float(&[], &mut self.scratch[..samples], false)?;
        out.extend_from_slice(&self.scratch[..n]);
        Ok(n)
    }
}

/// Samples (48 kHz) a packet decodes to, if it is a well-formed Opus packet of at most 120 ms.
pub fn packet_samples(packet: &[u8]) -> Option<u32> {
    if packet.is_empty() {
        return None;
    }
    let n = opus::packet::get_nb_samples(packet, RATE).ok()?;
    (n > 0 && n as u32 <= MAX_PACKET_SAMPLES).then_some(n as u32)
}

/// What the first bits of a SILK or hybrid Opus packet say (RFC 6716 §4.2.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SilkFlags {
    /// The encoder's voice activity detector flagged one of its SILK frames (first channel).
    pub voice: bool,
    /// It carries in-band FEC (LBRR) for the frame before it.
    pub fec: bool,
}

/// The VAD and LBRR flags of `packet`'s first Opus frame (all false for CELT-only packets).
///
/// A SILK or hybrid frame begins with one VAD flag per SILK frame and then the LBRR flag, per
/// channel; they are the range coder's first symbols and are coded with probability one half,
/// so they are the top bits of the frame's first byte. CELT-only packets (TOC configurations
/// 16-31) never carry FEC. Only the first frame matters: its LBRR is what
/// `decode(.., fec = true)` uses.
pub fn silk_flags(packet: &[u8]) -> SilkFlags {
    let Some(&toc) = packet.first() else {
        return SilkFlags::default();
    };
    let config = toc >> 3;
    if config >= 16 {
        return SilkFlags::default();
    }
    // SILK frames per Opus frame: 10 and 20 ms frames hold one, 40 ms two, 60 ms three.
    // Hybrid (12..=15) has only 10 and 20 ms frames.
    let silk_frames = if config < 12 {
        match config % 4 {
            2 => 2,
            3 => 3,
            _ => 1,
        }
    } else {
        1
    };
    let channels = if toc & 0x04 != 0 { 2 } else { 1 };
    let Ok(parsed) = opus::packet::parse(packet) else {
        return SilkFlags::default();
    };
    let Some(&first) = parsed.frames.first().and_then(|f| f.first()) else {
        return SilkFlags::default();
    };
    let vad_bits = !(0xffu8 >> silk_frames);
    SilkFlags {
        voice: first & vad_bits != 0,
        fec: (0..channels).any(|ch| first & (0x80 >> ((ch + 1) * (silk_frames + 1) - 1)) != 0),
    }
}

/// Whether `packet` carries in-band FEC (LBRR) for the frame before it (see [`silk_flags`]).
pub fn has_fec(packet: &[u8]) -> bool {
    silk_flags(packet).fec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep(n: usize) -> Vec<f32> {
        // A voiced-ish test signal: a 150 Hz pulse train shaped by a slowly moving resonance.
        (0..n)
            .map(|i| {
                let t = i as f32 / RATE as f32;
                let f = 300.0 + 1500.0 * (0.5 + 0.5 * (std::f32::consts::TAU * 0.7 * t).sin());
                0.3 * (std::f32::consts::TAU * f * t).sin()
                    + 0.2 * (std::f32::consts::TAU * 150.0 * t).sin()
            })
            .collect()
    }

    #[test]
    fn frames_dtx_and_fec_flag() {
        let mut enc = Encoder::new(OpusSettings {
            loss_percent: 10,
            dtx: true,
            bitrate: 24_000,
            ..OpusSettings::default()
        })
        .unwrap();
        let x = sweep(960 * 50);
        let mut with_fec = 0;
        for f in x.chunks(960) {
            if let Encoded::Packet(p) = enc.encode(f).unwrap() {
                assert_eq!(packet_samples(p), Some(960));
                with_fec += usize::from(has_fec(p));
            }
        }
        assert!(with_fec > 40, "{with_fec} of 50 packets with FEC");
        // Silence under DTX: after a short hangover, frames are DTX, with a refresh now and then.
        let mut sent = 0;
        for _ in 0..100 {
            if let Encoded::Packet(_) = enc.encode(&[0.0; 960]).unwrap() {
                sent += 1;
            }
        }
        assert!((2..30).contains(&sent), "{sent} of 100 silent frames sent");
        assert!(enc.encode(&[0.0; 480]).is_err());
        // No FEC when no loss is expected.
        enc.apply(OpusSettings {
            loss_percent: 0,
            dtx: false,
            ..*enc.settings()
        })
        .unwrap();
        let mut fec = 0;
        for f in x.chunks(960) {
            if let Encoded::Packet(p) = enc.encode(f).unwrap() {
                fec += usize::from(has_fec(p));
            }
        }
        assert!(fec <= 2, "{fec}");
    }

    #[test]
    fn fec_flag_on_crafted_tocs() {
        // config 1 (SILK NB 20 ms), code 0, mono: LBRR flag is bit 6 of the first payload byte.
        assert!(has_fec(&[0x08, 0b0100_0000, 0, 0]));
        assert!(!has_fec(&[0x08, 0b1000_0000, 0, 0]));
        assert_eq!(
            silk_flags(&[0x08, 0b1000_0000, 0, 0]),
            SilkFlags {
                voice: true,
                fec: false
            }
        );
        assert!(!silk_flags(&[0x08, 0b0100_0000, 0, 0]).voice);
        // config 2 (SILK 40 ms): two VAD bits then LBRR at bit 5.
        assert!(has_fec(&[0x10, 0b0010_0000, 0, 0]));
        assert!(silk_flags(&[0x10, 0b0100_0000, 0, 0]).voice);
        assert!(!silk_flags(&[0x10, 0b0010_0000, 0, 0]).voice);
        // CELT-only never.
        assert!(!has_fec(&[0xf8, 0xff, 0xff]));
        assert!(!has_fec(&[]));
        assert_eq!(packet_samples(&[0x08, 0, 0]), Some(960));
        assert_eq!(packet_samples(&[]), None);
    }
}
