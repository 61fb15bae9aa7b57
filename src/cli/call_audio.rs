//! Microphone-and-speaker calls: the sound devices as a call's audio, and the capture-side
//! processing (echo cancellation, noise suppression, gain control) between the call and its
//! audio. A terminal `dial` or `answer` without files talks through the default devices with
//! all three on; file and pipe audio is left as it is unless asked for (`--aec`, `--ns`,
//! `--agc`): a file has no echo to remove, and processing would change a recording meant to be
//! exact.

use crate::net::drivers::call::CallAudio;

/// The processing flags `dial` and `answer` share.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ProcessingArgs {
    /// Cancel the speaker's echo in the audio sent (on by default with the microphone and
    /// speaker; for file or pipe audio, the far end's audio as it goes to --record is the
    /// echo reference).
    #[arg(long)]
    pub aec: bool,

    /// Suppress background noise in the audio sent (on by default with the microphone).
    #[arg(long)]
    pub ns: bool,

    /// Automatic gain control of the audio sent (on by default with the microphone).
    #[arg(long)]
    pub agc: bool,

    /// No echo cancellation, noise suppression or gain control, not even with the microphone
    /// and speaker.
    #[arg(long = "no-audio-processing", conflicts_with_all = ["aec", "ns", "agc"])]
    pub no_audio_processing: bool,
}

/// What to run: the switches given, else everything for devices and nothing for files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switches {
    pub aec: bool,
    pub ns: bool,
    pub agc: bool,
}

impl ProcessingArgs {
    pub fn switches(&self, devices: bool) -> Switches {
        let asked = self.aec || self.ns || self.agc;
        if self.no_audio_processing {
            Switches {
                aec: false,
                ns: false,
                agc: false,
            }
        } else if asked || !devices {
            Switches {
                aec: self.aec,
                ns: self.ns,
                agc: self.agc,
            }
        } else {
            Switches {
                aec: true,
                ns: true,
                agc: true,
            }
        }
    }
}

/// Whether a call with neither --play nor --record talks through the sound devices: only when
/// a person sits at a terminal (stdin and stdout both terminals: a script's or a test's `dial`
/// without files stays silent, as before), and only in builds with devices.
pub fn use_devices() -> bool {
    use std::io::IsTerminal;
    cfg!(feature = "devices") && std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// Puts the processor between the call and `audio`: what the call hands to playout is the
/// echo reference, and what is captured is cleaned before the call encodes it. `delay_ms`:
/// how long the speaker's sound takes to come back in the captured audio, as far as known
/// ([`DEVICE_DELAY_MS`] for the devices, 0 for files and pipes).
pub fn process(audio: CallAudio, s: Switches, delay_ms: u32) -> anyhow::Result<CallAudio> {
    if !(s.aec || s.ns || s.agc) {
        return Ok(audio);
    }
    imp::process(audio, s, delay_ms)
}

/// Audio kept ahead of the speaker. pipe-audio's 200 ms suits files; a call wants little, as
/// it is delay on the call (and the shorter the echo's delay, the sooner the canceller finds
/// it). Two call frames and a bit.
const DEVICE_BUFFER_MS: u32 = 50;

/// The speaker-to-microphone delay the canceller is told for the devices: the playback
/// buffer, the sound card's own periods (about four of 10 ms), the capture period.
pub const DEVICE_DELAY_MS: u32 = DEVICE_BUFFER_MS + 50;

/// The default microphone and speaker as a call's audio.
pub fn devices() -> anyhow::Result<CallAudio> {
    imp::devices()
}

#[cfg(not(feature = "devices"))]
mod imp {
    use super::*;

    pub fn process(_: CallAudio, _: Switches, _: u32) -> anyhow::Result<CallAudio> {
        anyhow::bail!("--aec, --ns and --agc need a build with the devices feature")
    }

    pub fn devices() -> anyhow::Result<CallAudio> {
        anyhow::bail!("this build has no sound devices (feature devices)")
    }
}

#[cfg(feature = "devices")]
mod imp {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};

    use tokio::sync::mpsc;

    use super::*;
    use crate::audio::device::{self, DeviceOptions};
    use crate::audio::processing::{Engine, ProcessingConfig, Processor};
    use crate::audio::{self, FileFormat, SampleFormat, Sink, Source, Spec};
    use crate::net::drivers::call::FRAME;

    pub fn process(audio: CallAudio, s: Switches, delay_ms: u32) -> anyhow::Result<CallAudio> {
        let p = Processor::new(ProcessingConfig {
            aec: s.aec,
            ns: s.ns,
            agc: s.agc,
            engine: Engine::Aec3,
            delay_ms,
        })?;
        tracing::info!(?s, "audio processing on");
        let p = Arc::new(Mutex::new(p));
        let playback = audio.playback.map(|out| {
            let (tx, mut rx) = mpsc::channel::<Vec<f32>>(50);
            let p = p.clone();
            std::thread::spawn(move || {
                while let Some(frame) = rx.blocking_recv() {
                    if let Err(e) = p.lock().expect("processor").render(&frame) {
                        tracing::warn!("echo reference: {e}");
                    }
                    if out.blocking_send(frame).is_err() {
                        return;
                    }
                }
            });
            tx
        });
        let capture = audio.capture.map(|mut input| {
            let (tx, rx) = mpsc::channel::<Vec<f32>>(3);
            std::thread::spawn(move || {
                while let Some(mut frame) = input.blocking_recv() {
                    if let Err(e) = p.lock().expect("processor").capture(&mut frame) {
                        tracing::warn!("audio processing: {e}");
                    }
                    if tx.blocking_send(frame).is_err() {
                        return;
                    }
                }
            });
            rx
        });
        Ok(CallAudio { capture, playback })
    }

    fn call_spec() -> Spec {
        Spec {
            rate: audio::CALL_RATE,
            channels: audio::CALL_CHANNELS,
        }
    }

    /// The call's playout as a device source: a frame at a time, ended when the call ends.
    struct FromCall(mpsc::Receiver<Vec<f32>>);

    impl Source for FromCall {
        fn spec(&self) -> Spec {
            call_spec()
        }
        fn sample_format(&self) -> Option<SampleFormat> {
            None
        }
        fn format(&self) -> FileFormat {
            FileFormat::Raw
        }
        fn len_frames(&self) -> Option<u64> {
            None
        }
        fn read(&mut self, out: &mut Vec<f32>, _max: usize) -> audio::Result<usize> {
            Ok(match self.0.blocking_recv() {
                Some(f) => {
                    out.extend_from_slice(&f);
                    f.len()
                }
                None => 0,
            })
        }
    }

    /// The microphone as the call's capture: whole 20 ms frames.
    struct ToCall {
        tx: mpsc::Sender<Vec<f32>>,
        buf: Vec<f32>,
    }

    impl Sink for ToCall {
        fn spec(&self) -> Spec {
            call_spec()
        }
        fn write(&mut self, frames: &[f32]) -> audio::Result<()> {
            self.buf.extend_from_slice(frames);
            while self.buf.len() >= FRAME {
                let frame: Vec<f32> = self.buf.drain(..FRAME).collect();
                if self.tx.blocking_send(frame).is_err() {
                    return Err(audio::Error::Device("the call ended".into()));
                }
            }
            Ok(())
        }
        fn flush(&mut self) -> audio::Result<()> {
            Ok(())
        }
        fn finish(self: Box<Self>) -> audio::Result<()> {
            Ok(())
        }
    }

    fn options() -> DeviceOptions {
        DeviceOptions {
            buffer: std::time::Duration::from_millis(DEVICE_BUFFER_MS.into()),
            ..DeviceOptions::default()
        }
    }

    pub fn devices() -> anyhow::Result<CallAudio> {
        let (cap_tx, cap_rx) = mpsc::channel(3);
        let (play_tx, play_rx) = mpsc::channel(50);
        std::thread::spawn(move || {
            let mut sink = ToCall {
                tx: cap_tx,
                buf: Vec::new(),
            };
            let stop = AtomicBool::new(false);
            if let Err(e) = device::capture(&mut sink, None, &options(), &stop) {
                tracing::warn!("microphone: {e}");
            }
        });
        std::thread::spawn(move || {
            let mut source = FromCall(play_rx);
            let stop = AtomicBool::new(false);
            if let Err(e) = device::play(&mut source, &options(), &stop) {
                tracing::warn!("speaker: {e}");
            }
        });
        Ok(CallAudio {
            capture: Some(cap_rx),
            playback: Some(play_tx),
        })
    }
}
