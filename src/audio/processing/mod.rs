//! Echo cancellation, noise suppression and gain control for microphone-and-speaker calls.
//!
//! A loudspeaker's sound reaches the microphone: without cancellation the far end hears itself
//! a moment later. A [`Processor`] is told what went to the speaker ([`render`], the far end's
//! audio as the call hands it to playout) and cleans what the microphone captured
//! ([`capture`]) before it is encoded. Sans-IO: no device, no clock; the caller feeds both
//! directions in the order they happen (render before the capture that holds its echo).
//!
//! Engines (feature `devices`):
//! - [`Engine::Aec3`] (what calls use): WebRTC's current canceller, AEC3, through the pure-Rust
//!   `aec3` port (it estimates the speaker-to-microphone delay itself, 200 ms and more), then
//!   the system library's noise suppressor and adaptive digital AGC.
//! - [`Engine::Webrtc`]: WebRTC's audio processing module as Debian ships it
//!   (webrtc-audio-processing 0.3): the older AEC (extended filter, delay-agnostic mode), its
//!   noise suppressor and AGC.
//! - [`Engine::Speex`]: speexdsp's MDF canceller with the preprocessor's residual echo
//!   suppression, denoiser and AGC.
//! - [`Engine::Rnnoise`]: the 0.3 library's canceller and AGC with RNNoise (`nnnoiseless`,
//!   pure Rust) as the noise suppressor; only in a build with feature `audio-compare`.
//!
//! The others are kept to measure against: `scripts/bench-echo` runs them all on simulated
//! rooms and noises. AEC3 meets both echo targets (ERLE >= 25 dB after 2 s; near-end speech
//! in double talk within 0.3 PESQ of the echo-free case); the 0.3 library's AEC meets the
//! first but attenuates the near end whenever the far end talks (double talk 0.6 PESQ under
//! echo-free) and loses an echo delayed 200 ms unless told; speexdsp converges too slowly
//! for the first. The 0.3 library's noise suppressor scored best in three of four noises.
//!
//! Frames are the call's format, 48 kHz mono; every engine works in 10 ms, so [`capture`] takes
//! whole multiples of 10 ms (the call's frames are 20 ms) and [`render`] buffers any length.
//!
//! [`render`]: Processor::render
//! [`capture`]: Processor::capture

mod aec3;
#[cfg(feature = "audio-compare")]
mod rnnoise;
mod speex;
mod webrtc;

/// Samples per 10 ms at the call rate: the engines' unit.
pub const CHUNK: usize = 480;

/// Which processing to run on the captured audio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessingConfig {
    /// Acoustic echo cancellation (needs the far end's audio through [`Processor::render`]).
    pub aec: bool,
    /// Noise suppression.
    pub ns: bool,
    /// Automatic gain control (digital: the microphone's own volume is not touched).
    pub agc: bool,
    /// The library doing it.
    pub engine: Engine,
    /// The speaker-to-microphone delay as far as it is known (the devices' buffering), ms:
    /// AEC3's starting point (it estimates the delay itself). The 0.3 library's
    /// delay-agnostic mode needs it more: measured on a simulated room, an unreported 100 ms
    /// costs it 13 dB of ERLE and an unreported 200 ms all but 5 dB
    /// (`scripts/bench-echo --bulk-delay-ms`). speexdsp ignores it (its filter must span the
    /// delay).
    pub delay_ms: u32,
}

impl ProcessingConfig {
    /// Everything on (what a microphone-and-speaker call wants).
    pub fn all() -> ProcessingConfig {
        ProcessingConfig {
            aec: true,
            ns: true,
            agc: true,
            engine: Engine::Aec3,
            delay_ms: 0,
        }
    }

    /// Everything off.
    pub fn none() -> ProcessingConfig {
        ProcessingConfig {
            aec: false,
            ns: false,
            agc: false,
            engine: Engine::Aec3,
            delay_ms: 0,
        }
    }

    /// True when nothing is switched on (no processor is needed).
    pub fn is_off(&self) -> bool {
        !(self.aec || self.ns || self.agc)
    }
}

/// The library behind a [`Processor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// WebRTC's audio processing module (0.3).
    Webrtc,
    /// speexdsp.
    Speex,
    /// WebRTC's echo canceller and gain control, RNNoise (`nnnoiseless`) for the noise.
    Rnnoise,
    /// WebRTC's AEC3 (the pure-Rust `aec3` port) for the echo, then the system library's
    /// noise suppressor and gain control.
    Aec3,
}

/// Why a [`Processor`] could not be made or refused a frame.
#[derive(Debug, thiserror::Error)]
pub enum ProcessingError {
    /// The library refused the configuration or could not allocate its state.
    #[error("audio processing ({0:?}): the library could not be set up")]
    Setup(Engine),
    /// The engine is not in this build (RNNoise needs feature `audio-compare`).
    #[error("audio processing ({0:?}): not in this build (cargo feature `audio-compare`)")]
    NotBuilt(Engine),
    /// A capture frame was not a whole number of 10 ms chunks (480 samples at 48 kHz).
    #[error("audio processing: {0} samples is not a whole number of 10 ms chunks")]
    FrameSize(usize),
    /// The library failed on a frame (its error code). Not expected for the call's frames.
    #[error("audio processing ({engine:?}): error {code}")]
    Library {
        /// Which library.
        engine: Engine,
        /// Its error code.
        code: i32,
    },
}

/// Capture-side audio processing for one call.
pub struct Processor {
    engine: Inner,
    /// Rendered samples not yet a whole chunk.
    pending: Vec<f32>,
    /// What it runs (reported in logs).
    config: ProcessingConfig,
}

enum Inner {
    Webrtc(webrtc::Apm),
    Speex(Box<speex::Mdf>),
    /// WebRTC without its noise suppressor, then RNNoise when noise suppression is on.
    #[cfg(feature = "audio-compare")]
    Rnnoise(webrtc::Apm, Option<Box<rnnoise::Rnn>>),
    /// AEC3 when echo cancellation is on, then WebRTC without its canceller.
    Aec3(Option<Box<aec3::Aec3>>, webrtc::Apm),
}

impl Processor {
    pub fn new(config: ProcessingConfig) -> Result<Processor, ProcessingError> {
        let engine = match config.engine {
            Engine::Webrtc => Inner::Webrtc(webrtc::Apm::new(config)?),
            Engine::Speex => Inner::Speex(Box::new(speex::Mdf::new(config)?)),
            #[cfg(feature = "audio-compare")]
            Engine::Rnnoise => Inner::Rnnoise(
                webrtc::Apm::new(ProcessingConfig {
                    ns: false,
                    ..config
                })?,
                config.ns.then(|| Box::new(rnnoise::Rnn::new())),
            ),
            #[cfg(not(feature = "audio-compare"))]
            Engine::Rnnoise => return Err(ProcessingError::NotBuilt(Engine::Rnnoise)),
            Engine::Aec3 => Inner::Aec3(
                match config.aec {
                    true => Some(Box::new(aec3::Aec3::new(config)?)),
                    false => None,
                },
                webrtc::Apm::new(ProcessingConfig {
                    aec: false,
                    ..config
                })?,
            ),
        };
        Ok(Processor {
            engine,
            pending: Vec::with_capacity(CHUNK),
            config,
        })
    }

    /// What it runs.
    pub fn config(&self) -> ProcessingConfig {
        self.config
    }

    /// The far end's audio as it goes to the speaker (any length; whole chunks are handed on).
    pub fn render(&mut self, played: &[f32]) -> Result<(), ProcessingError> {
        let mut rest = played;
        while !rest.is_empty() {
            let take = (CHUNK - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == CHUNK {
                match &mut self.engine {
                    Inner::Webrtc(a) => a.render(&self.pending)?,
                    #[cfg(feature = "audio-compare")]
                    Inner::Rnnoise(a, _) => a.render(&self.pending)?,
                    Inner::Speex(s) => s.render(&self.pending),
                    Inner::Aec3(a, _) => {
                        if let Some(a) = a {
                            a.render(&self.pending)?;
                        }
                    }
                }
                self.pending.clear();
            }
        }
        Ok(())
    }

    /// Cleans the microphone's `captured` audio in place (whole 10 ms chunks).
    pub fn capture(&mut self, captured: &mut [f32]) -> Result<(), ProcessingError> {
        if captured.len() % CHUNK != 0 {
            return Err(ProcessingError::FrameSize(captured.len()));
        }
        for chunk in captured.chunks_exact_mut(CHUNK) {
            match &mut self.engine {
                Inner::Webrtc(a) => a.capture(chunk)?,
                Inner::Speex(s) => s.capture(chunk),
                Inner::Aec3(a, apm) => {
                    if let Some(a) = a {
                        a.capture(chunk)?;
                    }
                    apm.capture(chunk)?;
                }
                #[cfg(feature = "audio-compare")]
                Inner::Rnnoise(a, rnn) => {
                    a.capture(chunk)?;
                    if let Some(r) = rnn {
                        r.process(chunk);
                    }
                }
            }
        }
        Ok(())
    }

    /// The engine's own running estimate of its echo return loss enhancement, dB (WebRTC only;
    /// for logs: the benchmark measures the real one).
    pub fn erle_estimate(&self) -> Option<f32> {
        match &self.engine {
            Inner::Webrtc(a) => a.erle(),
            #[cfg(feature = "audio-compare")]
            Inner::Rnnoise(a, _) => a.erle(),
            Inner::Speex(_) | Inner::Aec3(..) => None,
        }
    }
}
