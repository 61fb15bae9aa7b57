//! Audio in and out: devices (cpal), files (WAV, Ogg Opus), pipes (raw PCM), in real time when
//! the consumer needs it. `pipe-audio` is a thin program over this module, and `dial`/`answer`
//! use it for their own playing and recording.
//!
//! Inside, audio is interleaved `f32`. The codecs and signal processing are sans-IO and pure
//! (WAV headers, the Ogg muxer and demuxer, the Ogg Opus mapping, the resampler, the DTMF
//! detector, the pacer, the analyzer); [`stream`] puts files and the standard streams around
//! them and [`device`] puts sound devices around them.
//!
//! - `pcm`: sample encodings, the call format, channel mixing, [`Conform`] (mix + resample).
//! - `resample`: polyphase windowed-sinc resampling.
//! - `wav`, `ogg`, `opusfile`: containers and the Ogg Opus mapping (RFC 7845).
//! - `signal`, `dtmf`, `analyze`, `xcorr`, `fft`: test signals, DTMF, analysis, blocked
//!   cross-correlation (and the whole-signal one it replaced); `spool`: a signal kept for it.
//! - `pace`: holding audio to real time.
//! - [`stream`]: sources and sinks on files and pipes; [`device`]: playback and capture.

mod analyze;
pub mod device;
mod dtmf;
mod error;
mod fft;
mod ogg;
mod opusfile;
mod pace;
mod pcm;
mod resample;
mod signal;
mod spool;
pub mod stream;
mod wav;
mod xcorr;

pub use analyze::{Analysis, Analyzer, Comparison, compare, compare_samples, compare_whole};
pub use dtmf::{DtmfDetector, DtmfEvent};
pub use error::{Error, ErrorKind, Result};
pub use ogg::{Assembler, Demuxer, Muxer, Page};
pub use opusfile::{
    Application, EncodeSettings, OPUS_RATE, OggOpusReader, OggOpusWriter, OpusHead, libopus_version,
};
pub use pace::{Lateness, PaceMode, Pacer};
pub use pcm::{
    CALL_CHANNELS, CALL_RATE, CALL_SAMPLE, Conform, SampleFormat, Spec, decode as decode_samples,
    encode as encode_samples, mix,
};
pub use resample::{Resampler, Rounding};
pub use signal::{Generator, Signal};
pub use spool::{SPILL_AFTER, Spool};
pub use stream::{FileFormat, Hints, Sink, SinkSpec, Source, open_sink, open_source};
pub use xcorr::{MAX_BLOCK, Samples, best_lag};
