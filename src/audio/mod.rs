//! Audio in and out: devices (cpal), files (WAV, Ogg Opus), pipes (raw PCM), in real time when
//! the consumer needs it. `pipe-audio` is a thin program over this module, and `dial`/`answer`
//! use it for their own playing and recording.
//!
//! Inside, audio is interleaved `f32`. The module has three layers, and a build has as many of
//! them as its features ask for:
//!
//! - **Pure** (always): sans-IO codecs and signal processing, no C library, no device.
//!   - `pcm`: sample encodings, the call format, channel mixing, [`Conform`] (mix + resample).
//!   - `resample`: polyphase windowed-sinc resampling.
//!   - [`wav`], `ogg`: WAV headers, the Ogg muxer and demuxer.
//!   - `signal`, `dtmf`, `analyze`, `xcorr`, `fft`: test signals, DTMF, analysis, blocked
//!     cross-correlation (and the whole-signal one it replaced); `spool`: a signal kept for it.
//!   - `pace`: holding audio to real time.
//! - **Codec** (feature `calls`, libopus): `opusfile`, the Ogg Opus mapping (RFC 7845), and
//!   [`stream`], sources and sinks on files and pipes in every format (`dial` and `answer` play
//!   and record through it).
//! - **Devices** (feature `devices`, cpal, and the system's WebRTC audio processing and
//!   speexdsp): [`device`], playback and capture (`pipe-audio`); [`processing`], echo
//!   cancellation, noise suppression and gain control for microphone-and-speaker calls.

// Pure.
mod analyze;
mod dtmf;
mod error;
mod fft;
mod ogg;
mod pace;
mod pcm;
mod resample;
mod signal;
mod spool;
pub mod wav;
mod xcorr;

// Codec.
#[cfg(feature = "calls")]
mod opusfile;
#[cfg(feature = "calls")]
pub mod stream;

// Devices.
#[cfg(feature = "devices")]
pub mod device;
#[cfg(feature = "devices")]
pub mod processing;

pub use analyze::{Analysis, Analyzer, Comparison, compare, compare_samples, compare_whole};
pub use dtmf::{DtmfDetector, DtmfEvent};
pub use error::{Error, ErrorKind, Result};
pub use ogg::{Assembler, Demuxer, Muxer, Page};
pub use pace::{Lateness, PaceMode, Pacer};
pub use pcm::{
    CALL_CHANNELS, CALL_RATE, CALL_SAMPLE, Conform, SampleFormat, Spec, decode as decode_samples,
    encode as encode_samples, mix,
};
pub use resample::{Resampler, Rounding};
pub use signal::{Generator, Signal};
pub use spool::{SPILL_AFTER, Spool};
pub use xcorr::{MAX_BLOCK, Samples, best_lag};

#[cfg(feature = "calls")]
pub use opusfile::{
    Application, EncodeSettings, OPUS_RATE, OggOpusReader, OggOpusWriter, OpusHead, libopus_version,
};
#[cfg(feature = "calls")]
pub use stream::{FileFormat, Hints, Sink, SinkSpec, Source, open_sink, open_source};
