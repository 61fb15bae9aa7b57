//! Sound devices through cpal (ALSA on Linux): listing, playback and capture, with pacing for
//! devices that do not keep time themselves (ALSA's `null` and `file` take data as fast as it
//! comes) and counts of underruns and overruns.
//!
//! Threads: cpal calls our callback on its own thread; a ring buffer under a mutex joins it to
//! the caller's thread, which reads the source or writes the sink. The callback holds the lock
//! only to copy samples, never while it waits for the audio clock.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, Sample, SizedSample};
use serde::Serialize;

use super::error::{Error, Result};
use super::pace::{Lateness, PaceMode, Pacer};
use super::pcm::{Conform, Spec};
use super::stream::{Sink, Source};

/// One device as listed by `pipe-audio devices`.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceInfo {
    /// The name to pass to `--device` (ALSA's PCM name: `default`, `null`, `hw:CARD=x,DEV=0`).
    pub name: String,
    /// What the system calls it.
    pub description: String,
    /// Whether it can record.
    pub capture: bool,
    /// Whether it can play.
    pub playback: bool,
    /// Its default recording format, when it can record and could be asked.
    pub default_capture: Option<Format>,
    /// Its default playback format, when it can play and could be asked.
    pub default_playback: Option<Format>,
}

/// A device stream format.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Format {
    /// Frames per second.
    pub rate: u32,
    /// Channels.
    pub channels: u16,
    /// cpal's sample format name (`f32`, `i16`, ...).
    pub sample: &'static str,
}

fn format_of(c: &cpal::SupportedStreamConfig) -> Format {
    Format {
        rate: c.sample_rate(),
        channels: c.channels(),
        sample: sample_name(c.sample_format()),
    }
}

fn sample_name(f: cpal::SampleFormat) -> &'static str {
    use cpal::SampleFormat as S;
    match f {
        S::F32 => "f32",
        S::F64 => "f64",
        S::I8 => "i8",
        S::I16 => "i16",
        S::I32 => "i32",
        S::I64 => "i64",
        S::U8 => "u8",
        S::U16 => "u16",
        S::U32 => "u32",
        S::U64 => "u64",
        _ => "other",
    }
}

fn host() -> Result<cpal::Host> {
    Ok(cpal::default_host())
}

fn pcm_name(d: &cpal::Device) -> String {
    d.id()
        .map(|id| id.id().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Every device the sound system knows, with default formats where a device answers.
pub fn list() -> Result<Vec<DeviceInfo>> {
    let host = host()?;
    let devices = host
        .devices()
        .map_err(|e| Error::Device(format!("cannot list devices: {e}")))?;
    let mut out = Vec::new();
    for d in devices {
        let name = pcm_name(&d);
        let description = d
            .description()
            .map(|x| x.name().to_string())
            .unwrap_or_default();
        let (capture, playback) = (d.supports_input(), d.supports_output());
        let default_capture = capture
            .then(|| d.default_input_config().ok().as_ref().map(format_of))
            .flatten();
        let default_playback = playback
            .then(|| d.default_output_config().ok().as_ref().map(format_of))
            .flatten();
        out.push(DeviceInfo {
            name,
            description,
            capture,
            playback,
            default_capture,
            default_playback,
        });
    }
    Ok(out)
}

/// Finds a device by PCM name (exact) or description (case-insensitive); `None`: the default.
fn find(name: Option<&str>, output: bool) -> Result<cpal::Device> {
    let host = host()?;
    let dir = if output { "playback" } else { "capture" };
    let Some(name) = name else {
        let d = if output {
            host.default_output_device()
        } else {
            host.default_input_device()
        };
        return d.ok_or_else(|| Error::Device(format!("no default {dir} device")));
    };
    let devices: Vec<cpal::Device> = host
        .devices()
        .map_err(|e| Error::Device(format!("cannot list devices: {e}")))?
        .collect();
    let by_name = devices
        .iter()
        .position(|d| pcm_name(d) == name)
        .or_else(|| {
            devices.iter().position(|d| {
                d.description()
                    .is_ok_and(|x| x.name().eq_ignore_ascii_case(name))
            })
        });
    match by_name {
        Some(i) => Ok(devices[i].clone()),
        None => {
            let names: Vec<String> = devices
                .iter()
                .filter(|d| {
                    if output {
                        d.supports_output()
                    } else {
                        d.supports_input()
                    }
                })
                .map(pcm_name)
                .collect();
            Err(Error::Device(format!(
                "no {dir} device named '{name}' (available: {}; see `pipe-audio devices`)",
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            )))
        }
    }
}

/// Sample formats we drive devices in, best first.
const FORMATS: [cpal::SampleFormat; 3] = [
    cpal::SampleFormat::F32,
    cpal::SampleFormat::I16,
    cpal::SampleFormat::I32,
];

/// The stream config closest to `want`: its exact rate and channels if the device offers them,
/// otherwise the device default; in the best sample format we handle.
fn choose(
    d: &cpal::Device,
    want: Spec,
    output: bool,
) -> Result<(cpal::SupportedStreamConfig, Spec)> {
    let ranges: Vec<cpal::SupportedStreamConfigRange> = if output {
        d.supported_output_configs().map(|c| c.collect())
    } else {
        d.supported_input_configs().map(|c| c.collect())
    }
    .map_err(|e| Error::Device(format!("cannot query '{}': {e}", pcm_name(d))))?;
    let pick = |rate: u32, channels: u16| {
        FORMATS.iter().find_map(|f| {
            ranges
                .iter()
                .find(|r| {
                    r.sample_format() == *f && r.channels() == channels && r.contains_rate(rate)
                })
                .map(|r| r.with_sample_rate(rate))
        })
    };
    if let Some(c) = pick(want.rate, want.channels) {
        return Ok((c, want));
    }
    let def = if output {
        d.default_output_config()
    } else {
        d.default_input_config()
    }
    .map_err(|e| Error::Device(format!("cannot open '{}': {e}", pcm_name(d))))?;
    let spec = Spec {
        rate: def.sample_rate(),
        channels: def.channels(),
    };
    let c = pick(spec.rate, spec.channels).ok_or_else(|| {
        Error::Device(format!(
            "'{}' offers no f32, i16 or i32 format at {} Hz",
            pcm_name(d),
            spec.rate
        ))
    })?;
    Ok((c, spec))
}

/// How to run a device stream.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// Device name (`None`: the system default).
    pub device: Option<String>,
    /// Pacing.
    pub pace: PaceMode,
    /// Audio buffered between the file side and the device (playback prefill; capture backlog
    /// before overruns).
    pub buffer: Duration,
    /// Device period asked for (cpal callback size).
    pub period: Duration,
}

impl Default for DeviceOptions {
    fn default() -> DeviceOptions {
        DeviceOptions {
            device: None,
            pace: PaceMode::Auto,
            buffer: Duration::from_millis(200),
            period: Duration::from_millis(10),
        }
    }
}

/// What happened during a device stream (`--stats`).
#[derive(Clone, Debug, Serialize)]
pub struct StreamReport {
    /// Device name.
    pub device: String,
    /// `playback` or `capture`.
    pub direction: &'static str,
    /// Device rate.
    pub rate: u32,
    /// Device channels.
    pub channels: u16,
    /// Device sample format.
    pub sample: &'static str,
    /// Device period, frames.
    pub period_frames: u32,
    /// Frames of audio played or recorded (the file side's count).
    pub frames: u64,
    /// Their length, seconds.
    pub audio_seconds: f64,
    /// From the first callback to the end, seconds.
    pub wall_seconds: f64,
    /// Whether the pacer held the device to real time.
    pub paced: bool,
    /// Lateness of paced device callbacks.
    pub lateness: Lateness,
    /// Playback: callbacks that found too little audio buffered (silence was played).
    pub underruns: u64,
    /// Capture: callbacks whose audio had no room in the buffer (it was dropped).
    pub overruns: u64,
}

struct Shared<T> {
    state: Mutex<T>,
    cond: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, T> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Waits in a device callback until `at`, or until the stream is closing (so that dropping a
/// stream never waits for a callback's sleep).
fn pause<T>(shared: &Shared<T>, at: Instant, closing: impl Fn(&T) -> bool) {
    let mut st = shared.lock();
    loop {
        let now = Instant::now();
        if now >= at || closing(&st) {
            return;
        }
        st = shared
            .cond
            .wait_timeout(st, at - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Tells the callbacks to stop waiting, then drops the stream.
fn close<T>(shared: &Shared<T>, stream: cpal::Stream, set: impl FnOnce(&mut T)) {
    set(&mut shared.lock());
    shared.cond.notify_all();
    drop(stream);
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

struct PlayState {
    buf: VecDeque<f32>,
    eof: bool,
    /// Device frames handed over (audio and silence).
    pos: u64,
    /// The device frame at which the audio ended, once every sample was handed over.
    drained: Option<u64>,
    underruns: u64,
    pacer: Pacer,
    first: Option<Instant>,
    error: Option<String>,
    /// The stream is being dropped: callbacks must not wait.
    closing: bool,
}

/// Plays `source` on a device until it ends (or `stop` is set); returns what happened.
pub fn play(
    source: &mut dyn Source,
    opts: &DeviceOptions,
    stop: &AtomicBool,
) -> Result<StreamReport> {
    let device = find(opts.device.as_deref(), true)?;
    let name = pcm_name(&device);
    let (supported, dev_spec) = choose(&device, source.spec(), true)?;
    let period = ((dev_spec.rate as f64 * opts.period.as_secs_f64()).round() as u32).max(16);
    let lead = lead_for(opts, period, dev_spec.rate);
    let shared = Arc::new(Shared {
        state: Mutex::new(PlayState {
            buf: VecDeque::new(),
            eof: false,
            pos: 0,
            drained: None,
            underruns: 0,
            pacer: Pacer::new(dev_spec.rate, opts.pace, lead),
            first: None,
            error: None,
            closing: false,
        }),
        cond: Condvar::new(),
    });
    let mut conform = Conform::new(source.spec(), dev_spec);
    let ch = dev_spec.channels as usize;
    let target = (dev_spec.rate as f64 * opts.buffer.as_secs_f64()) as usize * ch;
    let chunk = (source.spec().rate as usize / 100).max(64);
    let (mut raw, mut conv) = (Vec::new(), Vec::new());
    let mut frames = 0u64;
    // Reads one chunk into the ring; false at the end of the source.
    let mut feed = |shared: &Shared<PlayState>| -> Result<bool> {
        raw.clear();
        conv.clear();
        let n = source.read(&mut raw, chunk)?;
        frames += n as u64;
        if n == 0 {
            conform.flush(&mut conv);
        } else {
            conform.process(&raw, &mut conv);
        }
        let mut st = shared.lock();
        st.buf.extend(conv.iter().copied());
        if n == 0 {
            st.eof = true;
        }
        shared.cond.notify_all();
        Ok(n > 0)
    };
    // Prefill, so the device does not start on an empty buffer.
    let mut more = true;
    while more && shared.lock().buf.len() < target {
        more = feed(&shared)?;
    }
    let config = cpal::StreamConfig {
        channels: dev_spec.channels,
        sample_rate: dev_spec.rate,
        buffer_size: cpal::BufferSize::Fixed(period),
    };
    let stream = build_play(&device, &supported, config, shared.clone())?;
    stream
        .play()
        .map_err(|e| Error::Device(format!("cannot start '{name}': {e}")))?;
    let period_frames = stream.buffer_size().unwrap_or(period);
    while more {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        {
            let mut st = shared.lock();
            while st.buf.len() >= target && st.error.is_none() && !stop.load(Ordering::Relaxed) {
                st = shared
                    .cond
                    .wait_timeout(st, Duration::from_millis(50))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if let Some(e) = st.error.take() {
                return Err(Error::Device(format!("'{name}' failed: {e}")));
            }
        }
        more = feed(&shared)?;
    }
    // Wait until every sample went to the device, then until it has been heard.
    let end = loop {
        let st = shared.lock();
        if let Some(e) = &st.error {
            return Err(Error::Device(format!("'{name}' failed: {e}")));
        }
        if stop.load(Ordering::Relaxed) {
            break Instant::now();
        }
        if let Some(d) = st.drained {
            let latency =
                Duration::from_secs_f64(2.0 * period_frames as f64 / dev_spec.rate as f64);
            break if st.pacer.is_pacing() {
                st.pacer.end(d).unwrap_or_else(Instant::now)
            } else {
                Instant::now() + latency
            };
        }
        drop(
            shared
                .cond
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner()),
        );
    };
    sleep_until(end);
    close(&shared, stream, |st| st.closing = true);
    let st = shared.lock();
    Ok(StreamReport {
        device: name,
        direction: "playback",
        rate: dev_spec.rate,
        channels: dev_spec.channels,
        sample: sample_name(supported.sample_format()),
        period_frames,
        frames,
        audio_seconds: frames as f64 / source.spec().rate as f64,
        wall_seconds: st
            .first
            .map_or(0.0, |f| end.saturating_duration_since(f).as_secs_f64()),
        paced: st.pacer.is_pacing(),
        lateness: st.pacer.lateness(),
        underruns: st.underruns,
        overruns: 0,
    })
}

/// How far a device may run ahead before auto pacing decides it does not keep time: its buffer
/// (cpal double-buffers: two periods) plus our own, with a floor of 100 ms.
fn lead_for(opts: &DeviceOptions, period: u32, rate: u32) -> Duration {
    let dev = Duration::from_secs_f64(4.0 * period as f64 / rate as f64);
    (dev + opts.buffer / 2).max(Duration::from_millis(100))
}

fn build_play(
    d: &cpal::Device,
    c: &cpal::SupportedStreamConfig,
    config: cpal::StreamConfig,
    shared: Arc<Shared<PlayState>>,
) -> Result<cpal::Stream> {
    let format = c.sample_format();
    with_device_period_fallback(config, |config| match format {
        cpal::SampleFormat::F32 => play_stream::<f32>(d, config, shared.clone()),
        cpal::SampleFormat::I16 => play_stream::<i16>(d, config, shared.clone()),
        _ => play_stream::<i32>(d, config, shared.clone()),
    })
    .map_err(|e| Error::Device(format!("cannot open '{}' for playback: {e}", pcm_name(d))))
}

/// Opens a stream with our period, and if the device refuses it (some hardware does), with
/// the period the device chooses.
fn with_device_period_fallback(
    config: cpal::StreamConfig,
    mut open: impl FnMut(cpal::StreamConfig) -> std::result::Result<cpal::Stream, cpal::Error>,
) -> std::result::Result<cpal::Stream, cpal::Error> {
    open(config).or_else(|_| {
        open(cpal::StreamConfig {
            buffer_size: cpal::BufferSize::Default,
            ..config
        })
    })
}

fn play_stream<T>(
    d: &cpal::Device,
    config: cpal::StreamConfig,
    shared: Arc<Shared<PlayState>>,
) -> std::result::Result<cpal::Stream, cpal::Error>
where
    T: SizedSample + FromSample<f32>,
{
    let ch = config.channels as usize;
    let err_shared = shared.clone();
    d.build_output_stream::<T, _, _>(
        config,
        move |data: &mut [T], _| {
            let frames = (data.len() / ch) as u64;
            let due = {
                let mut st = shared.lock();
                let now = Instant::now();
                st.first.get_or_insert(now);
                let pos = st.pos;
                st.pacer.due(now, pos)
            };
            if let Some(at) = due {
                pause(&shared, at, |st| st.closing);
            }
            let mut st = shared.lock();
            if st.closing {
                data.fill(T::EQUILIBRIUM);
                return;
            }
            let pos = st.pos;
            st.pacer.record(Instant::now(), pos);
            let n = st.buf.len().min(data.len()) / ch * ch;
            for (d, s) in data.iter_mut().zip(st.buf.drain(..n)) {
                *d = T::from_sample(s);
            }
            for d in &mut data[n..] {
                *d = T::EQUILIBRIUM;
            }
            if n < data.len() {
                if st.eof {
                    if st.drained.is_none() {
                        st.drained = Some(pos + (n / ch) as u64);
                    }
                } else {
                    st.underruns += 1;
                }
            }
            st.pos += frames;
            shared.cond.notify_all();
        },
        move |e| {
            err_shared.lock().error.get_or_insert(e.to_string());
            err_shared.cond.notify_all();
        },
        None,
    )
}

struct CaptureState {
    buf: VecDeque<f32>,
    cap: usize,
    pos: u64,
    overruns: u64,
    pacer: Pacer,
    first: Option<Instant>,
    error: Option<String>,
    /// The stream is being dropped: callbacks must not wait.
    closing: bool,
}

/// Records from a device into `sink` for `frames` frames of the sink's rate (`None`: until
/// `stop` is set); returns what happened.
pub fn capture(
    sink: &mut dyn Sink,
    frames: Option<u64>,
    opts: &DeviceOptions,
    stop: &AtomicBool,
) -> Result<StreamReport> {
    let device = find(opts.device.as_deref(), false)?;
    let name = pcm_name(&device);
    let (supported, dev_spec) = choose(&device, sink.spec(), false)?;
    let period = ((dev_spec.rate as f64 * opts.period.as_secs_f64()).round() as u32).max(16);
    let ch = dev_spec.channels as usize;
    let shared = Arc::new(Shared {
        state: Mutex::new(CaptureState {
            buf: VecDeque::new(),
            cap: ((dev_spec.rate as f64 * opts.buffer.as_secs_f64()) as usize)
                .max(period as usize * 4)
                * ch,
            pos: 0,
            overruns: 0,
            pacer: Pacer::new(
                dev_spec.rate,
                opts.pace,
                lead_for(opts, period, dev_spec.rate),
            ),
            first: None,
            error: None,
            closing: false,
        }),
        cond: Condvar::new(),
    });
    let config = cpal::StreamConfig {
        channels: dev_spec.channels,
        sample_rate: dev_spec.rate,
        buffer_size: cpal::BufferSize::Fixed(period),
    };
    let stream = build_capture(&device, &supported, config, shared.clone())?;
    stream
        .play()
        .map_err(|e| Error::Device(format!("cannot start '{name}': {e}")))?;
    let period_frames = stream.buffer_size().unwrap_or(period);
    let out_ch = sink.spec().channels as usize;
    let mut conform = Conform::new(dev_spec, sink.spec());
    let (mut raw, mut conv) = (Vec::new(), Vec::new());
    let mut written = 0u64;
    let result = loop {
        if frames.is_some_and(|f| written >= f) {
            break Ok(());
        }
        raw.clear();
        {
            let mut st = shared.lock();
            while st.buf.is_empty() && st.error.is_none() && !stop.load(Ordering::Relaxed) {
                st = shared
                    .cond
                    .wait_timeout(st, Duration::from_millis(50))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if let Some(e) = st.error.take() {
                break Err(Error::Device(format!("'{name}' failed: {e}")));
            }
            raw.extend(st.buf.drain(..));
        }
        let stopping = stop.load(Ordering::Relaxed);
        conv.clear();
        conform.process(&raw, &mut conv);
        if stopping {
            conform.flush(&mut conv);
        }
        let mut n = conv.len() / out_ch;
        if let Some(f) = frames {
            n = n.min((f - written) as usize);
        }
        if let Err(e) = sink.write(&conv[..n * out_ch]).and_then(|_| sink.flush()) {
            break Err(e);
        }
        written += n as u64;
        if stopping {
            break Ok(());
        }
    };
    let end = Instant::now();
    close(&shared, stream, |st| st.closing = true);
    result?;
    let st = shared.lock();
    Ok(StreamReport {
        device: name,
        direction: "capture",
        rate: dev_spec.rate,
        channels: dev_spec.channels,
        sample: sample_name(supported.sample_format()),
        period_frames,
        frames: written,
        audio_seconds: written as f64 / sink.spec().rate as f64,
        wall_seconds: st
            .first
            .map_or(0.0, |f| end.saturating_duration_since(f).as_secs_f64()),
        paced: st.pacer.is_pacing(),
        lateness: st.pacer.lateness(),
        underruns: 0,
        overruns: st.overruns,
    })
}

fn build_capture(
    d: &cpal::Device,
    c: &cpal::SupportedStreamConfig,
    config: cpal::StreamConfig,
    shared: Arc<Shared<CaptureState>>,
) -> Result<cpal::Stream> {
    let format = c.sample_format();
    with_device_period_fallback(config, |config| match format {
        cpal::SampleFormat::F32 => capture_stream::<f32>(d, config, shared.clone()),
        cpal::SampleFormat::I16 => capture_stream::<i16>(d, config, shared.clone()),
        _ => capture_stream::<i32>(d, config, shared.clone()),
    })
    .map_err(|e| Error::Device(format!("cannot open '{}' for capture: {e}", pcm_name(d))))
}

fn capture_stream<T>(
    d: &cpal::Device,
    config: cpal::StreamConfig,
    shared: Arc<Shared<CaptureState>>,
) -> std::result::Result<cpal::Stream, cpal::Error>
where
    T: SizedSample,
    f32: FromSample<T>,
{
    let ch = config.channels as usize;
    let err_shared = shared.clone();
    d.build_input_stream::<T, _, _>(
        config,
        move |data: &[T], _| {
            let frames = (data.len() / ch) as u64;
            // A block of audio exists only once its last frame has been recorded.
            let due = {
                let mut st = shared.lock();
                let now = Instant::now();
                st.first.get_or_insert(now);
                let end = st.pos + frames;
                st.pacer.due(now, end)
            };
            if let Some(at) = due {
                pause(&shared, at, |st| st.closing);
            }
            let mut st = shared.lock();
            if st.closing {
                // Whatever arrives while the stream is dropped is nobody's audio.
                return;
            }
            let end = st.pos + frames;
            st.pacer.record(Instant::now(), end);
            if st.buf.len() + data.len() > st.cap {
                st.overruns += 1;
            } else {
                st.buf.extend(data.iter().map(|&s| f32::from_sample(s)));
            }
            st.pos = end;
            shared.cond.notify_all();
        },
        move |e| {
            err_shared.lock().error.get_or_insert(e.to_string());
            err_shared.cond.notify_all();
        },
        None,
    )
}
