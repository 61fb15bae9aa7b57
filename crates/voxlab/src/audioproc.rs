//! `voxlab audio-process`: the product's capture-side audio processing (echo cancellation,
//! noise suppression, gain control) run offline on two WAV files, as a call would feed it:
//! each 20 ms the far end's frame goes to playout (render), then the microphone's frame is
//! cleaned (capture). What `scripts/bench-echo` measures the engines with.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use voxmesh::audio::processing::{Engine, ProcessingConfig, Processor};

#[derive(Args, Debug)]
pub struct AudioProcessArgs {
    /// The far end's audio (what the speaker plays): WAV, 48 kHz mono.
    #[arg(long)]
    pub far: PathBuf,
    /// The microphone's audio: WAV, 48 kHz mono.
    #[arg(long)]
    pub mic: PathBuf,
    /// Where to write the processed microphone audio (32-bit float WAV).
    #[arg(long)]
    pub out: PathBuf,
    /// Echo cancellation.
    #[arg(long)]
    pub aec: bool,
    /// Noise suppression.
    #[arg(long)]
    pub ns: bool,
    /// Automatic gain control.
    #[arg(long)]
    pub agc: bool,
    /// The library (aec3: what calls use).
    #[arg(long, value_enum, default_value_t = EngineArg::Aec3)]
    pub engine: EngineArg,
    /// The speaker-to-microphone delay to report to the canceller, ms.
    #[arg(long = "delay-ms", default_value_t = 0)]
    pub delay_ms: u32,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EngineArg {
    Webrtc,
    Speex,
    Rnnoise,
    Aec3,
}

fn read(path: &Path) -> anyhow::Result<Vec<f32>> {
    let mut r = hound::WavReader::open(path).with_context(|| format!("{}", path.display()))?;
    let spec = r.spec();
    if spec.sample_rate != 48_000 || spec.channels != 1 {
        bail!("{}: want 48 kHz mono", path.display());
    }
    Ok(match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().collect::<Result<_, _>>()?,
        hound::SampleFormat::Int => {
            let scale = (1u64 << (spec.bits_per_sample - 1)) as f32;
            r.samples::<i32>()
                .map(|s| s.map(|v| v as f32 / scale))
                .collect::<Result<_, _>>()?
        }
    })
}

pub fn run(a: AudioProcessArgs) -> anyhow::Result<()> {
    let far = read(&a.far)?;
    let mut mic = read(&a.mic)?;
    let config = ProcessingConfig {
        aec: a.aec,
        ns: a.ns,
        agc: a.agc,
        engine: match a.engine {
            EngineArg::Webrtc => Engine::Webrtc,
            EngineArg::Speex => Engine::Speex,
            EngineArg::Rnnoise => Engine::Rnnoise,
            EngineArg::Aec3 => Engine::Aec3,
        },
        delay_ms: a.delay_ms,
    };
    let mut p = Processor::new(config)?;
    const FRAME: usize = 960;
    mic.resize(mic.len().div_ceil(FRAME) * FRAME, 0.0);
    let silence = [0.0f32; FRAME];
    for (i, frame) in mic.chunks_exact_mut(FRAME).enumerate() {
        let f = far.get(i * FRAME..(i + 1) * FRAME).unwrap_or(&silence);
        p.render(f)?;
        p.capture(frame)?;
    }
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(&a.out, spec)?;
    for s in &mic {
        w.write_sample(*s)?;
    }
    w.finalize()?;
    println!(
        "{}",
        serde_json::json!({"erle_estimate_db": p.erle_estimate(), "samples": mic.len()})
    );
    Ok(())
}
