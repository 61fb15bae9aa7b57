//! `pipe-audio`: audio in and out of devices, files and pipes, in real time where it matters.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args as ClapArgs, Parser, Subcommand};

use super::{EXIT_FAILURE, EXIT_OK, Verbosity, print_stdout, report_error};
use crate::audio::device::{self, DeviceOptions};
use crate::audio::stream::{Paced, is_std};
use crate::audio::{
    Analyzer, Application, EncodeSettings, ErrorKind, FileFormat, Generator, Hints, PaceMode,
    SPILL_AFTER, SampleFormat, Signal, Sink, SinkSpec, Source, Spec, Spool, compare_samples,
    compare_whole, open_sink, open_source,
};

/// A sound device is missing, cannot be opened, or failed.
pub const EXIT_DEVICE: u8 = 3;
/// A format, encoding, rate or channel layout that is not supported.
pub const EXIT_UNSUPPORTED: u8 = 4;
/// The input is truncated or corrupt.
pub const EXIT_BAD_INPUT: u8 = 5;
/// A file could not be read or written.
pub const EXIT_IO: u8 = 6;

const EXIT_CODES: &str = "\
Exit status:
  0  done (also when the reader of our output goes away, or on Ctrl-C/SIGTERM during
     capture or play: the output is completed first)
  1  any other failure
  2  bad flags or arguments
  3  audio device missing, unusable or failed (see `pipe-audio devices`)
  4  unsupported format, encoding, rate or channel count
  5  input truncated or corrupt
  6  a file could not be read or written
A failed command never leaves a half-written file under the output name.

Formats: WAV (u8, s16, s24, s32, f32), Ogg Opus (.opus, .ogg), raw PCM (.raw, .pcm, or any
stream without a header). Raw means the call format, 48 kHz mono s16le, unless --rate,
--channels or --sample say otherwise; `-` is stdin or stdout.

Examples:
  pipe-audio gen dtmf 123# -o digits.wav
  pipe-audio convert song.wav song.opus --bitrate 32
  pipe-audio convert song.opus - | dial bob              (raw call-format PCM on stdout)
  pipe-audio capture --duration 10 -o memo.wav
  pipe-audio gen sweep --duration 5 | pipe-audio play
  pipe-audio analyze received.wav --reference sent.wav --json";

/// Audio in and out of devices, files and pipes.
#[derive(Parser, Debug)]
#[command(
    name = "pipe-audio",
    version,
    about = "Audio in and out of devices, files and pipes, in real time",
    long_about = "Audio in and out of devices, files and pipes, in real time.\n\n\
        Moves audio between sound devices, files (WAV, Ogg Opus) and pipes (raw PCM), \
        converting rate, channels and encoding on the way; generates test signals and \
        analyses recordings (level, silence, DTMF, delay against a reference). Devices that do \
        not keep time themselves (ALSA's null and file devices), and pipes with --realtime, are \
        held to real time by the audio clock.",
    after_long_help = EXIT_CODES
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub verbosity: Verbosity,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List capture and playback devices with their default formats.
    Devices(DevicesArgs),
    /// Record from a device to a file or stdout.
    Capture(CaptureArgs),
    /// Play a file or stdin on a device.
    Play(PlayArgs),
    /// Convert between WAV, Ogg Opus and raw PCM, rates and channel layouts.
    Convert(ConvertArgs),
    /// Generate a test signal: tone, dtmf, silence, sweep or clicks.
    Gen(GenArgs),
    /// Measure a recording: length, level, silence, DTMF digits, delay to a reference.
    Analyze(AnalyzeArgs),
    /// Time a bare libopus encode/decode loop over a WAV file (for scripts/bench-pipe-audio).
    #[command(hide = true)]
    BenchCodec(BenchArgs),
}

/// `devices`.
#[derive(ClapArgs, Debug)]
pub struct DevicesArgs {
    /// Print one JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Describes a stream's format; each flag overrides what the file name or header says.
#[derive(ClapArgs, Debug, Clone, Default)]
pub struct FormatOpts {
    /// Container: wav, ogg (Ogg Opus) or raw [default: from the file name, else raw].
    #[arg(short = 'f', long, value_enum)]
    pub format: Option<FileFormat>,
    /// Sample rate in Hz [default: the input's; raw: 48000].
    #[arg(short = 'r', long, value_name = "HZ")]
    pub rate: Option<u32>,
    /// Channels [default: the input's; raw: 1].
    #[arg(short = 'c', long, value_name = "N")]
    pub channels: Option<u16>,
    /// Sample encoding for WAV and raw, as sox's -e and -b together [default: the input's;
    /// raw: s16].
    #[arg(short = 'e', short_alias = 's', long, value_enum)]
    pub sample: Option<SampleFormat>,
}

impl FormatOpts {
    fn hints(&self) -> Hints {
        Hints {
            format: self.format,
            rate: self.rate,
            channels: self.channels,
            sample: self.sample,
        }
    }
}

/// Describes the input of `convert` (raw input needs it; headers say it otherwise).
#[derive(ClapArgs, Debug, Clone, Default)]
pub struct InFormatOpts {
    /// Input container [default: from the file name, else the header, else raw].
    #[arg(long, value_enum)]
    pub in_format: Option<FileFormat>,
    /// Raw input's rate in Hz [default: 48000]; for Ogg input, the rate to decode to.
    #[arg(long, value_name = "HZ")]
    pub in_rate: Option<u32>,
    /// Raw input's channels [default: 1].
    #[arg(long, value_name = "N")]
    pub in_channels: Option<u16>,
    /// Raw input's sample encoding [default: s16].
    #[arg(long, value_enum)]
    pub in_sample: Option<SampleFormat>,
}

/// Opus encoder settings (Ogg output).
#[derive(ClapArgs, Debug, Clone)]
pub struct OpusOpts {
    /// Opus bitrate in kb/s [default: 64 mono, 96 stereo, as opusenc].
    #[arg(long, value_name = "KBPS")]
    pub bitrate: Option<f64>,
    /// Opus application.
    #[arg(long, value_enum, default_value_t = Application::Audio)]
    pub application: Application,
    /// Opus complexity, 0 (fastest) to 10 (best).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=10))]
    pub complexity: u8,
    /// Opus frame length in ms: 10, 20, 40 or 60.
    #[arg(long, value_name = "MS", default_value_t = 20)]
    pub frame_ms: u32,
}

impl OpusOpts {
    fn settings(&self, live: bool) -> EncodeSettings {
        EncodeSettings {
            bitrate: self.bitrate.map(|k| (k * 1000.0).round() as u32),
            application: self.application,
            complexity: self.complexity,
            frame_ms: self.frame_ms,
            // A live stream's reader should not wait a second for each page.
            page_ms: if live { 100 } else { 1000 },
            ..EncodeSettings::default()
        }
    }
}

/// Device flags.
#[derive(ClapArgs, Debug, Clone)]
pub struct DeviceOpts {
    /// Device name from `pipe-audio devices` (ALSA PCM name such as null, default, hw:0,0)
    /// [default: the system default].
    #[arg(short = 'd', long, value_name = "NAME")]
    pub device: Option<String>,
    /// Hold the device to real time: auto (only if it runs ahead of real time, as ALSA's null
    /// and file devices do), always, or never.
    #[arg(long, value_enum, default_value_t = PaceMode::Auto)]
    pub pace: PaceMode,
    /// Audio buffered between the device and the file side, in ms.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub buffer_ms: u64,
    /// Device period (callback size) to ask for, in ms.
    #[arg(long, value_name = "MS", default_value_t = 10)]
    pub period_ms: u64,
    /// At the end, print a JSON report on stderr: timing, pacing lateness, underruns, overruns.
    #[arg(long)]
    pub stats: bool,
}

impl DeviceOpts {
    fn options(&self) -> DeviceOptions {
        DeviceOptions {
            device: self.device.clone(),
            pace: self.pace,
            buffer: Duration::from_millis(self.buffer_ms.max(20)),
            period: Duration::from_millis(self.period_ms.clamp(1, 200)),
        }
    }
}

/// `capture`.
#[derive(ClapArgs, Debug)]
pub struct CaptureArgs {
    /// Output file, or - for stdout.
    #[arg(short = 'o', long, value_name = "FILE", default_value = "-")]
    pub output: PathBuf,
    /// Stop after this many seconds (exactly that many samples) [default: until Ctrl-C].
    #[arg(long, value_name = "SECONDS", value_parser = positive_secs)]
    pub duration: Option<f64>,
    #[command(flatten)]
    pub device: DeviceOpts,
    #[command(flatten)]
    pub out: FormatOpts,
    #[command(flatten)]
    pub opus: OpusOpts,
}

/// `play`.
#[derive(ClapArgs, Debug)]
pub struct PlayArgs {
    /// Input file, or - for stdin.
    #[arg(value_name = "FILE", default_value = "-")]
    pub input: PathBuf,
    #[command(flatten)]
    pub device: DeviceOpts,
    #[command(flatten)]
    pub input_format: FormatOpts,
}

/// `convert`.
#[derive(ClapArgs, Debug)]
pub struct ConvertArgs {
    /// Input file, or - for stdin.
    #[arg(value_name = "IN")]
    pub input: PathBuf,
    /// Output file, or - for stdout.
    #[arg(value_name = "OUT")]
    pub output: PathBuf,
    /// Write the output in real time (for pipes into programs that expect live audio).
    #[arg(long)]
    pub realtime: bool,
    /// With --realtime, print a JSON pacing report on stderr at the end.
    #[arg(long, requires = "realtime")]
    pub stats: bool,
    #[command(flatten)]
    pub out: FormatOpts,
    #[command(flatten)]
    pub input_format: InFormatOpts,
    #[command(flatten)]
    pub opus: OpusOpts,
}

/// `gen`.
#[derive(ClapArgs, Debug)]
pub struct GenArgs {
    #[command(subcommand)]
    pub signal: GenSignal,
}

/// The signals `gen` makes.
#[derive(Subcommand, Debug)]
pub enum GenSignal {
    /// A sine tone.
    Tone {
        /// Frequency in Hz.
        #[arg(long, default_value_t = 1000.0)]
        freq: f64,
        #[command(flatten)]
        common: GenCommon,
    },
    /// DTMF digits (0-9, *, #, A-D), each a tone then a gap.
    Dtmf {
        /// The digits.
        digits: String,
        /// Tone length in ms.
        #[arg(long, value_name = "MS", default_value_t = 100.0)]
        tone_ms: f64,
        /// Gap after each tone in ms.
        #[arg(long, value_name = "MS", default_value_t = 100.0)]
        gap_ms: f64,
        #[command(flatten)]
        common: GenCommon,
    },
    /// Digital silence.
    Silence {
        #[command(flatten)]
        common: GenCommon,
    },
    /// An exponential sine sweep.
    Sweep {
        /// Start frequency in Hz.
        #[arg(long, default_value_t = 20.0)]
        from: f64,
        /// End frequency in Hz.
        #[arg(long, default_value_t = 20_000.0)]
        to: f64,
        #[command(flatten)]
        common: GenCommon,
    },
    /// One-sample clicks at a fixed interval (for measuring delay), the first at time 0.
    Clicks {
        /// Seconds between clicks.
        #[arg(long, default_value_t = 0.5)]
        interval: f64,
        #[command(flatten)]
        common: GenCommon,
    },
}

/// Flags every `gen` signal takes.
#[derive(ClapArgs, Debug, Clone)]
pub struct GenCommon {
    /// Length in seconds (dtmf: from the digits).
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0, value_parser = nonneg_secs)]
    pub duration: f64,
    /// Peak amplitude, 0 to 1 (dtmf: the sum of both tones).
    #[arg(long, default_value_t = 0.5)]
    pub amplitude: f64,
    /// Output file, or - for stdout.
    #[arg(short = 'o', long, value_name = "FILE", default_value = "-")]
    pub output: PathBuf,
    /// Write the output in real time.
    #[arg(long)]
    pub realtime: bool,
    #[command(flatten)]
    pub out: FormatOpts,
    #[command(flatten)]
    pub opus: OpusOpts,
}

/// `analyze`.
#[derive(ClapArgs, Debug)]
pub struct AnalyzeArgs {
    /// The recording, or - for stdin.
    #[arg(value_name = "FILE")]
    pub input: PathBuf,
    /// A reference recording: report the delay to it and how alike they are.
    #[arg(long, value_name = "FILE")]
    pub reference: Option<PathBuf>,
    /// Search the delay only within this many seconds either way [default: anywhere].
    #[arg(long, value_name = "SECONDS", value_parser = positive_secs)]
    pub max_delay: Option<f64>,
    /// Blocks of 10 ms quieter than this (dBFS RMS) count as silence.
    #[arg(long, value_name = "DBFS", default_value_t = -50.0, allow_negative_numbers = true)]
    pub silence_db: f64,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Search the delay the old way, both signals in memory and one FFT over both (gigabytes
    /// for long recordings); for scripts/bench-analyze.
    #[arg(long, hide = true)]
    pub whole_fft: bool,
    /// Samples of each signal kept in memory before the rest goes to a temporary file (tests
    /// use small values to reach the file path quickly).
    #[arg(long, hide = true, value_name = "N", default_value_t = SPILL_AFTER)]
    pub spill_after: usize,
    #[command(flatten)]
    pub input_format: FormatOpts,
}

/// `bench-codec` (hidden).
#[derive(ClapArgs, Debug)]
pub struct BenchArgs {
    /// A 48 kHz WAV file.
    pub input: PathBuf,
    /// Encode/decode repetitions; the fastest is reported.
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    #[command(flatten)]
    pub opus: OpusOpts,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err("expected seconds between 0 and 86400".into()),
    }
}

fn nonneg_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err("expected seconds between 0 and 86400".into()),
    }
}

/// Set by SIGINT/SIGTERM: capture and play finish their output and stop.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn catch_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Runs the program; the binary's `main` is this and nothing else.
pub fn main() -> ExitCode {
    let args = Args::parse();
    args.verbosity.init();
    match run(args) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => {
            let kind = e
                .chain()
                .find_map(|c| c.downcast_ref::<crate::audio::Error>())
                .map(|a| a.kind());
            let code = match kind {
                Some(ErrorKind::BrokenPipe) => return ExitCode::from(EXIT_OK),
                Some(ErrorKind::Device) => EXIT_DEVICE,
                Some(ErrorKind::Unsupported) => EXIT_UNSUPPORTED,
                Some(ErrorKind::BadInput) => EXIT_BAD_INPUT,
                Some(ErrorKind::Io) => EXIT_IO,
                None => EXIT_FAILURE,
            };
            report_error("pipe-audio", &e, code)
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Devices(a) => devices(a),
        Command::Capture(a) => capture(a),
        Command::Play(a) => play(a),
        Command::Convert(a) => convert(a),
        Command::Gen(a) => generate(a),
        Command::Analyze(a) => analyze(a),
        Command::BenchCodec(a) => bench_codec(a),
    }
}

fn devices(a: DevicesArgs) -> anyhow::Result<()> {
    let list = device::list()?;
    let text = if a.json {
        serde_json::to_string_pretty(&list)? + "\n"
    } else {
        let fmt = |f: Option<device::Format>| {
            f.map_or("-".to_string(), |f| {
                format!("{} Hz {}ch {}", f.rate, f.channels, f.sample)
            })
        };
        let mut s = format!(
            "{:<24} {:<8} {:<22} {:<22} {}\n",
            "NAME", "DIR", "CAPTURE DEFAULT", "PLAYBACK DEFAULT", "DESCRIPTION"
        );
        for d in &list {
            let dir = match (d.capture, d.playback) {
                (true, true) => "both",
                (true, false) => "capture",
                (false, true) => "playback",
                _ => "?",
            };
            let desc = d.description.lines().next().unwrap_or("");
            s.push_str(&format!(
                "{:<24} {:<8} {:<22} {:<22} {}\n",
                d.name,
                dir,
                fmt(d.default_capture),
                fmt(d.default_playback),
                desc
            ));
        }
        s
    };
    print_stdout(&text).context("cannot write the list")?;
    Ok(())
}

fn print_stats<T: serde::Serialize>(report: &T) {
    if let Ok(s) = serde_json::to_string(report) {
        eprintln!("{s}");
    }
}

fn capture(a: CaptureArgs) -> anyhow::Result<()> {
    catch_signals();
    let hints = a.out.hints();
    let from = Spec::CALL;
    let spec = SinkSpec::resolve(&a.output, hints, from, None, a.opus.settings(true))?;
    let frames = a
        .duration
        .map(|d| (d * spec.spec.rate as f64).round() as u64);
    let report = (|| -> anyhow::Result<device::StreamReport> {
        let mut sink = open_sink(&a.output, spec)?;
        let report = device::capture(sink.as_mut(), frames, &a.device.options(), &STOP)?;
        sink.finish()?;
        Ok(report)
    })()
    .map_err(|e| incomplete(e, &a.output))?;
    if report.overruns > 0 {
        tracing::warn!(
            "{} overruns: audio was dropped because the output was too slow",
            report.overruns
        );
    }
    if a.device.stats {
        print_stats(&report);
    }
    Ok(())
}

fn play(a: PlayArgs) -> anyhow::Result<()> {
    catch_signals();
    let mut source = open_source(&a.input, a.input_format.hints())?;
    // Ogg Opus is 48 kHz inside: decode straight to it, the rate devices usually run at.
    source.prefer_rate(crate::audio::OPUS_RATE);
    let report = device::play(source.as_mut(), &a.device.options(), &STOP)?;
    if report.underruns > 0 {
        tracing::warn!(
            "{} underruns: the input could not keep up, silence was played",
            report.underruns
        );
    }
    if a.device.stats {
        print_stats(&report);
    }
    Ok(())
}

/// A progress bar on a terminal, nothing otherwise. It starts hidden and [`show_progress`]
/// reveals it once a conversion has run for half a second, so short ones draw nothing.
fn progress(len: Option<u64>, enabled: bool) -> Option<indicatif::ProgressBar> {
    if !enabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let hidden = indicatif::ProgressDrawTarget::hidden();
    let bar = match len {
        Some(n) => indicatif::ProgressBar::with_draw_target(Some(n), hidden),
        None => indicatif::ProgressBar::with_draw_target(None, hidden),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {wide_bar} {percent:>3}% {elapsed} (eta {eta}) {msg}",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}

/// Moves `bar` to `position`, making it visible once it has existed for half a second.
fn show_progress(bar: &indicatif::ProgressBar, position: u64) {
    bar.set_position(position);
    if bar.is_hidden() && bar.elapsed() > Duration::from_millis(500) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    }
}

/// Copies `source` to `sink` through `conform`, showing progress.
fn pump(
    source: &mut dyn Source,
    sink: &mut dyn Sink,
    bar: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<u64> {
    let mut conform = crate::audio::Conform::new(source.spec(), sink.spec());
    let chunk = 8192;
    let (mut raw, mut conv) = (Vec::with_capacity(chunk * 2), Vec::new());
    let mut frames = 0u64;
    loop {
        raw.clear();
        let n = source.read(&mut raw, chunk)?;
        if n == 0 {
            conv.clear();
            conform.flush(&mut conv);
            sink.write(&conv)?;
            return Ok(frames);
        }
        frames += n as u64;
        if conform.is_identity() {
            sink.write(&raw)?;
        } else {
            conv.clear();
            conform.process(&raw, &mut conv);
            sink.write(&conv)?;
        }
        if let Some(b) = bar {
            show_progress(b, frames);
        }
    }
}

fn finish_sink(sink: Box<dyn Sink>, paced: Option<Paced>, stats: bool) -> anyhow::Result<()> {
    match paced {
        Some(p) => {
            let (lateness, late) = p.finish_with_report()?;
            if late > 0 {
                tracing::warn!("{late} blocks went out more than a block late (underruns)");
            }
            if stats {
                print_stats(&serde_json::json!({ "lateness": lateness, "underruns": late }));
            }
        }
        None => sink.finish()?,
    }
    Ok(())
}

fn convert(a: ConvertArgs) -> anyhow::Result<()> {
    let inh = Hints {
        format: a.input_format.in_format,
        rate: a.input_format.in_rate,
        channels: a.input_format.in_channels,
        sample: a.input_format.in_sample,
    };
    let mut source = open_source(&a.input, inh)?;
    let spec = SinkSpec::resolve(
        &a.output,
        a.out.hints(),
        source.spec(),
        source.sample_format(),
        a.opus.settings(a.realtime),
    )?;
    // Ogg Opus decodes straight to the output's rate rather than via the original rate.
    source.prefer_rate(spec.spec.rate);
    let result = (|| -> anyhow::Result<()> {
        let sink = open_sink(&a.output, spec)?;
        let bar = progress(source.len_frames(), !a.realtime);
        if a.realtime {
            let mut p = Paced::new(sink);
            pump(source.as_mut(), &mut p, bar.as_ref())?;
            finish_sink(Box::new(NoSink), Some(p), a.stats)?;
        } else {
            let mut sink = sink;
            pump(source.as_mut(), sink.as_mut(), bar.as_ref())?;
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            sink.finish()?;
        }
        Ok(())
    })();
    result.map_err(|e| incomplete(e, &a.output))
}

/// Says what became of the output when a command fails after starting it.
fn incomplete(e: anyhow::Error, output: &Path) -> anyhow::Error {
    let broken = e
        .chain()
        .find_map(|c| c.downcast_ref::<crate::audio::Error>())
        .is_some_and(|a| a.kind() == ErrorKind::BrokenPipe);
    if broken {
        e
    } else if is_std(output) {
        e.context("stdout holds an incomplete stream")
    } else {
        e.context(format!("{} was not written", output.display()))
    }
}

/// Stands in for the sink a [`Paced`] has taken over (which finishes through the `Paced`).
struct NoSink;

impl Sink for NoSink {
    fn spec(&self) -> Spec {
        Spec::CALL
    }
    fn write(&mut self, _: &[f32]) -> crate::audio::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> crate::audio::Result<()> {
        Ok(())
    }
    fn finish(self: Box<Self>) -> crate::audio::Result<()> {
        Ok(())
    }
}

fn generate(a: GenArgs) -> anyhow::Result<()> {
    let (signal, c) = match a.signal {
        GenSignal::Tone { freq, common } => (Signal::Tone { freq }, common),
        GenSignal::Dtmf {
            digits,
            tone_ms,
            gap_ms,
            common,
        } => (
            Signal::Dtmf {
                digits,
                on: tone_ms / 1000.0,
                off: gap_ms / 1000.0,
            },
            common,
        ),
        GenSignal::Silence { common } => (Signal::Silence, common),
        GenSignal::Sweep { from, to, common } => (Signal::Sweep { from, to }, common),
        GenSignal::Clicks { interval, common } => (Signal::Clicks { interval }, common),
    };
    // A generated signal is made at the output's rate: raw defaults to the call format, files
    // to 48 kHz mono.
    let base = Spec {
        rate: c.out.rate.unwrap_or(crate::audio::CALL_RATE),
        channels: c.out.channels.unwrap_or(1),
    };
    let mut hints = c.out.hints();
    hints.rate = Some(base.rate);
    hints.channels = Some(base.channels);
    let spec = SinkSpec::resolve(
        &c.output,
        hints,
        base,
        Some(c.out.sample.unwrap_or(SampleFormat::S16)),
        c.opus.settings(c.realtime),
    )?;
    let mut g = Generator::new(signal, spec.spec.rate, c.amplitude, c.duration)?;
    let result = (|| -> anyhow::Result<()> {
        let sink = open_sink(&c.output, spec)?;
        let mut sink: Box<dyn Sink> = sink;
        let mut paced = c
            .realtime
            .then(|| Paced::new(std::mem::replace(&mut sink, Box::new(NoSink))));
        let bar = progress(Some(g.frames()), !c.realtime);
        let ch = spec.spec.channels;
        let (mut mono, mut frames) = (Vec::new(), Vec::new());
        let mut done = 0u64;
        loop {
            mono.clear();
            let n = g.fill(&mut mono, 4800);
            if n == 0 {
                break;
            }
            frames.clear();
            crate::audio::mix(&mono, 1, ch, &mut frames);
            match &mut paced {
                Some(p) => p.write(&frames)?,
                None => sink.write(&frames)?,
            }
            done += n as u64;
            if let Some(b) = &bar {
                show_progress(b, done);
            }
        }
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        finish_sink(sink, paced, false)
    })();
    result.map_err(|e| incomplete(e, &c.output))
}

fn analyze(a: AnalyzeArgs) -> anyhow::Result<()> {
    let mut source = open_source(&a.input, a.input_format.hints())?;
    let spec = source.spec();
    let mut an = Analyzer::new(spec, a.silence_db);
    // The mono mixes wait in spools (memory, then a temporary file) for the delay search,
    // which reads them back in blocks.
    let spill = if a.whole_fft {
        usize::MAX
    } else {
        a.spill_after
    };
    let mut recording = a.reference.is_some().then(|| Spool::new(spill));
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if source.read(&mut buf, 16_384)? == 0 {
            break;
        }
        an.push(&buf);
        if let Some(r) = &mut recording {
            r.push(an.last_mono()).map_err(spool_error)?;
        }
    }
    let comparison = match (&a.reference, recording) {
        (Some(r), Some(mut recording)) => {
            let mut rs = open_source(r, Hints::default())
                .with_context(|| format!("reference {}", r.display()))?;
            rs.prefer_rate(spec.rate);
            let want = Spec {
                rate: spec.rate,
                channels: 1,
            };
            let mut conform = crate::audio::Conform::new(rs.spec(), want);
            let (mut raw, mut mono) = (Vec::new(), Vec::new());
            let mut reference = Spool::new(spill);
            loop {
                raw.clear();
                mono.clear();
                let n = rs.read(&mut raw, 16_384)?;
                if n == 0 {
                    conform.flush(&mut mono);
                    reference.push(&mono).map_err(spool_error)?;
                    break;
                }
                conform.process(&raw, &mut mono);
                reference.push(&mono).map_err(spool_error)?;
            }
            let max_lag = a.max_delay.map(|s| (s * spec.rate as f64).round() as usize);
            Some(match (recording.in_memory(), reference.in_memory()) {
                (Some(x), Some(y)) if a.whole_fft => compare_whole(x, y, spec.rate, max_lag),
                _ => compare_samples(&mut recording, &mut reference, spec.rate, max_lag)
                    .map_err(spool_error)?,
            })
        }
        _ => None,
    };
    let report = an.finish(comparison);
    let text = if a.json {
        serde_json::to_string(&report)? + "\n"
    } else {
        let db = |v: Option<f64>| v.map_or("-inf".to_string(), |d| format!("{d:.1}"));
        let mut s = format!(
            "Length:    {} samples, {:.3} s ({} Hz, {} ch)\n\
             Level:     RMS {} dBFS, peak {} dBFS\n\
             Silence:   {:.1}% (blocks below {} dBFS)\n\
             DTMF:      {}\n",
            report.samples,
            report.seconds,
            report.rate,
            report.channels,
            db(report.rms_dbfs),
            db(report.peak_dbfs),
            report.silence_ratio * 100.0,
            report.silence_threshold_dbfs,
            if report.dtmf.is_empty() {
                "none"
            } else {
                &report.dtmf
            }
        );
        if let Some(c) = &report.reference {
            s.push_str(&format!(
                "Delay:     {} samples ({:.4} s) after the reference\n\
                 Similar:   {:.4} (SNR {} dB)\n",
                c.delay_samples,
                c.delay_seconds,
                c.similarity,
                c.snr_db.map_or("-".into(), |v| format!("{v:.1}"))
            ));
        }
        s
    };
    print_stdout(&text).context("cannot write the analysis")?;
    Ok(())
}

/// A failure of the temporary file that holds a long recording for the delay search.
fn spool_error(e: std::io::Error) -> anyhow::Error {
    let tmp = std::env::temp_dir();
    anyhow::Error::new(crate::audio::Error::io(tmp, e))
        .context("cannot keep the audio for the delay search")
}

/// The cost floor for Ogg Opus conversion: libopus alone, on PCM already in memory.
fn bench_codec(a: BenchArgs) -> anyhow::Result<()> {
    let mut source = open_source(&a.input, Hints::default())?;
    let spec = source.spec();
    anyhow::ensure!(
        spec.rate == crate::audio::OPUS_RATE && spec.channels <= 2,
        "bench-codec needs 48 kHz mono or stereo input"
    );
    let mut pcm = Vec::new();
    while source.read(&mut pcm, 65_536)? > 0 {}
    let ch = spec.channels as usize;
    let frames = pcm.len() / ch;
    let settings = a.opus.settings(false);
    let frame = (48 * settings.frame_ms) as usize;
    let channels = if ch == 1 {
        opus::Channels::Mono
    } else {
        opus::Channels::Stereo
    };
    let app = match settings.application {
        Application::Audio => opus::Application::Audio,
        Application::Voip => opus::Application::Voip,
        Application::Lowdelay => opus::Application::LowDelay,
    };
    let bitrate = settings
        .bitrate
        .unwrap_or(if ch == 1 { 64_000 } else { 96_000 });
    let (mut best_enc, mut best_dec) = (f64::MAX, f64::MAX);
    let mut bytes = 0usize;
    for _ in 0..a.repeat.max(1) {
        let mut enc = opus::Encoder::new(48_000, channels, app)?;
        enc.set_bitrate(opus::Bitrate::Bits(bitrate as i32))?;
        enc.set_complexity(settings.complexity as i32)?;
        enc.set_vbr(true)?;
        enc.set_lsb_depth(16)?;
        let mut packets = Vec::with_capacity(frames / frame + 1);
        let mut out = vec![0u8; 4000];
        let mut last = vec![0.0f32; frame * ch];
        let t = Instant::now();
        let mut chunks = pcm.chunks_exact(frame * ch);
        for f in chunks.by_ref() {
            let n = enc.encode_float(f, &mut out)?;
            packets.push(out[..n].to_vec());
        }
        let rest = chunks.remainder();
        last[..rest.len()].copy_from_slice(rest);
        let n = enc.encode_float(&last, &mut out)?;
        packets.push(out[..n].to_vec());
        best_enc = best_enc.min(t.elapsed().as_secs_f64());
        bytes = packets.iter().map(|p| p.len()).sum();
        let mut dec = opus::Decoder::new(48_000, channels)?;
        let mut buf = vec![0.0f32; 5760 * ch];
        let t = Instant::now();
        let mut total = 0usize;
        for p in &packets {
            total += dec.decode_float(p, &mut buf, false)?;
        }
        best_dec = best_dec.min(t.elapsed().as_secs_f64());
        anyhow::ensure!(total >= frames, "decoded fewer samples than encoded");
    }
    let seconds = frames as f64 / 48_000.0;
    let report = serde_json::json!({
        "libopus": crate::audio::libopus_version(),
        "audio_seconds": seconds,
        "encode_seconds": best_enc,
        "decode_seconds": best_dec,
        "encode_x_realtime": seconds / best_enc,
        "decode_x_realtime": seconds / best_dec,
        "kbps": bytes as f64 * 8.0 / seconds / 1000.0,
    });
    print_stdout(&(report.to_string() + "\n")).context("cannot write the report")?;
    Ok(())
}
