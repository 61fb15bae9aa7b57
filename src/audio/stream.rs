//! Sources and sinks of audio: WAV, Ogg Opus and raw PCM, on files or the standard streams.
//! This is the I/O around the sans-IO codecs. Output to a file goes to a temporary file beside
//! it, renamed into place only when complete, so a failure never leaves a half-written file
//! under the wanted name.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::error::{Error, Result};
use super::opusfile::{EncodeSettings, OPUS_RATE, OggOpusReader, OggOpusWriter};
use super::pcm::{self, CALL_SAMPLE, Conform, SampleFormat, Spec};
use super::resample::Rounding;
use super::wav;

/// A container (or the lack of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// RIFF WAVE: 8/16/24/32-bit integer or 32-bit float PCM.
    Wav,
    /// Ogg Opus (RFC 7845).
    #[value(alias = "opus", alias = "oga")]
    Ogg,
    /// Headerless PCM; the call format (48 kHz, mono, s16le) unless told otherwise.
    #[value(alias = "pcm")]
    Raw,
}

impl FileFormat {
    /// The format a file name's extension implies.
    pub fn from_path(path: &Path) -> Option<FileFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "wav" | "wave" => Some(FileFormat::Wav),
            "opus" | "ogg" | "oga" => Some(FileFormat::Ogg),
            "raw" | "pcm" | "s16" | "sln" => Some(FileFormat::Raw),
            _ => None,
        }
    }

    /// The format the first bytes of a stream show: `None` if they match no header.
    pub fn sniff(head: &[u8]) -> Option<FileFormat> {
        if head.starts_with(b"RIFF") || head.starts_with(b"RIFX") || head.starts_with(b"RF64") {
            Some(FileFormat::Wav)
        } else if head.starts_with(b"OggS") {
            Some(FileFormat::Ogg)
        } else {
            None
        }
    }
}

/// Whether `path` names the standard stream.
pub fn is_std(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// What the user said about a stream's format (each `None`: work it out).
#[derive(Clone, Copy, Debug, Default)]
pub struct Hints {
    /// Container.
    pub format: Option<FileFormat>,
    /// Rate.
    pub rate: Option<u32>,
    /// Channels.
    pub channels: Option<u16>,
    /// Sample encoding (WAV and raw).
    pub sample: Option<SampleFormat>,
}

/// Where audio comes from. [`Source::read`] appends interleaved frames.
pub trait Source: Send {
    /// Rate and channels.
    fn spec(&self) -> Spec;
    /// The sample encoding stored, if the container has one (not Ogg Opus).
    fn sample_format(&self) -> Option<SampleFormat>;
    /// The container.
    fn format(&self) -> FileFormat;
    /// Frames in the stream, when the header says.
    fn len_frames(&self) -> Option<u64>;
    /// Appends about `max` frames (a hint: some sources return more) to `out`; returns frames
    /// appended, 0 at the end.
    fn read(&mut self, out: &mut Vec<f32>, max: usize) -> Result<usize>;
    /// Asks a source that can produce any rate (Ogg Opus decodes at 48 kHz inside) to produce
    /// `rate` directly, saving a second resampling; call before the first read. Returns whether
    /// the source's spec changed.
    fn prefer_rate(&mut self, rate: u32) -> bool {
        let _ = rate;
        false
    }
}

/// Opens `path` (`-`: stdin) for reading, working the format out from `hints`, then the file
/// name, then the first bytes; headerless input is raw PCM (call format unless hinted).
pub fn open_source(path: &Path, hints: Hints) -> Result<Box<dyn Source>> {
    let name = path.to_path_buf();
    let mut reader: Box<dyn Read + Send> = if is_std(path) {
        Box::new(io::stdin())
    } else {
        Box::new(File::open(path).map_err(|e| Error::io(path, e))?)
    };
    let mut format = hints.format.or_else(|| FileFormat::from_path(path));
    let mut head = Vec::new();
    if format.is_none() {
        // Read up to 4 bytes to look at, then put them back in front.
        let mut b = [0u8; 4];
        let n = read_full(&mut reader, &mut b).map_err(|e| Error::io(&name, e))?;
        head.extend_from_slice(&b[..n]);
        format = Some(FileFormat::sniff(&head).unwrap_or(FileFormat::Raw));
    }
    let reader: Box<dyn Read + Send> = Box::new(io::Cursor::new(head).chain(reader));
    match format.unwrap() {
        FileFormat::Wav => open_wav(reader, name),
        FileFormat::Ogg => Ok(Box::new(OggSource::new(reader, name, hints.rate)?)),
        FileFormat::Raw => {
            let spec = Spec {
                rate: hints.rate.unwrap_or(pcm::CALL_RATE),
                channels: hints.channels.unwrap_or(pcm::CALL_CHANNELS),
            }
            .validate()?;
            Ok(Box::new(PcmSource {
                reader,
                path: name,
                spec,
                sample: hints.sample.unwrap_or(CALL_SAMPLE),
                remaining: None,
                carry: Vec::new(),
                buf: Vec::new(),
                container: FileFormat::Raw,
            }))
        }
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn open_wav(mut reader: Box<dyn Read + Send>, path: PathBuf) -> Result<Box<dyn Source>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    let header = loop {
        if let Some(h) = wav::parse(&buf)? {
            break h;
        }
        let n = reader.read(&mut chunk).map_err(|e| Error::io(&path, e))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                Error::Truncated("empty input where a WAV file was expected".into())
            } else {
                Error::Truncated("the WAV header is cut short".into())
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf.split_off(header.data_offset);
    Ok(Box::new(PcmSource {
        reader: Box::new(io::Cursor::new(rest).chain(reader)),
        path,
        spec: header.spec,
        sample: header.format,
        remaining: header.data_len,
        carry: Vec::new(),
        buf: Vec::new(),
        container: FileFormat::Wav,
    }))
}

/// WAV data or raw PCM.
struct PcmSource {
    reader: Box<dyn Read + Send>,
    path: PathBuf,
    spec: Spec,
    sample: SampleFormat,
    /// Bytes of sample data left, if the header said.
    remaining: Option<u64>,
    /// Bytes of an incomplete frame from the last read.
    carry: Vec<u8>,
    buf: Vec<u8>,
    container: FileFormat,
}

impl Source for PcmSource {
    fn spec(&self) -> Spec {
        self.spec
    }
    fn sample_format(&self) -> Option<SampleFormat> {
        Some(self.sample)
    }
    fn format(&self) -> FileFormat {
        self.container
    }
    fn len_frames(&self) -> Option<u64> {
        let frame = (self.spec.channels as usize * self.sample.bytes()) as u64;
        self.remaining.map(|r| r / frame)
    }

    fn read(&mut self, out: &mut Vec<f32>, max: usize) -> Result<usize> {
        let frame = self.spec.channels as usize * self.sample.bytes();
        loop {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            buf.append(&mut self.carry);
            let have = buf.len();
            let mut want = (max.max(1) * frame).max(have + 1);
            if let Some(r) = self.remaining {
                want = want.min(have + r as usize);
            }
            let mut n = 0;
            if want > have {
                buf.resize(want, 0);
                n = read_full(&mut self.reader, &mut buf[have..])
                    .map_err(|e| Error::io(&self.path, e))?;
                buf.truncate(have + n);
                if let Some(r) = &mut self.remaining {
                    *r -= n as u64;
                }
            }
            let whole = buf.len() / frame * frame;
            if whole > 0 {
                self.carry = buf.split_off(whole);
                let before = out.len();
                pcm::decode(self.sample, &buf, out);
                self.buf = buf;
                return Ok((out.len() - before) / self.spec.channels as usize);
            }
            if n == 0 {
                // End of the data: of the file, or of the WAV data chunk.
                if let Some(r) = self.remaining.filter(|&r| r > 0) {
                    return Err(Error::Truncated(format!(
                        "the WAV data ends {} bytes before its header says",
                        r + buf.len() as u64
                    )));
                }
                // A streamed WAV of odd length ends with its pad byte.
                let pad = self.container == FileFormat::Wav && buf.len() == 1;
                if !buf.is_empty() && self.remaining.is_none() && !pad {
                    return Err(Error::Truncated(format!(
                        "the input ends inside a frame ({} stray bytes)",
                        buf.len()
                    )));
                }
                return Ok(0);
            }
            self.carry = buf;
        }
    }
}

/// Ogg Opus, decoded at 48 kHz and resampled to the rate asked for (by default the rate the
/// header records as the original, as `opusdec` does).
struct OggSource {
    reader: Box<dyn Read + Send>,
    path: PathBuf,
    dec: OggOpusReader,
    spec: Spec,
    conform: Conform,
    pcm48: Vec<f32>,
    /// Converted PCM; `ready[taken..]` is still to be handed out (an offset rather than
    /// draining from the front, which would move the rest on every read).
    ready: Vec<f32>,
    taken: usize,
    eof: bool,
    chunk: Vec<u8>,
}

impl OggSource {
    fn new(reader: Box<dyn Read + Send>, path: PathBuf, rate: Option<u32>) -> Result<OggSource> {
        let mut s = OggSource {
            reader,
            path,
            dec: OggOpusReader::new(),
            spec: Spec::CALL,
            conform: Conform::new(Spec::CALL, Spec::CALL),
            pcm48: Vec::new(),
            ready: Vec::new(),
            taken: 0,
            eof: false,
            chunk: vec![0; 16 * 1024],
        };
        while !s.dec.ready() {
            if !s.fill()? {
                s.dec.finish()?;
                return Err(Error::Truncated(
                    "the Ogg Opus headers are cut short".into(),
                ));
            }
        }
        let head = s.dec.head().expect("ready means the header was read");
        let original = Some(head.input_rate).filter(|r| pcm::RATE_RANGE.contains(r));
        let native = Spec {
            rate: OPUS_RATE,
            channels: head.channels as u16,
        };
        s.spec = Spec {
            rate: rate.or(original).unwrap_or(OPUS_RATE),
            channels: native.channels,
        }
        .validate()?;
        // Back from 48 kHz, fractional frames round down (as opusdec does).
        s.conform = Conform::new(native, s.spec).with_rounding(Rounding::Down);
        Ok(s)
    }

    /// Reads and decodes one chunk of the file; false at end of file.
    fn fill(&mut self) -> Result<bool> {
        let n = loop {
            match self.reader.read(&mut self.chunk) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(&self.path, e)),
            }
        };
        if n == 0 {
            return Ok(false);
        }
        self.dec.push(&self.chunk[..n]);
        self.dec.decode(&mut self.pcm48)?;
        Ok(true)
    }
}

impl Source for OggSource {
    fn spec(&self) -> Spec {
        self.spec
    }
    fn sample_format(&self) -> Option<SampleFormat> {
        None
    }
    fn format(&self) -> FileFormat {
        FileFormat::Ogg
    }
    fn len_frames(&self) -> Option<u64> {
        None
    }

    fn read(&mut self, out: &mut Vec<f32>, max: usize) -> Result<usize> {
        let ch = self.spec.channels as usize;
        if self.taken == self.ready.len() {
            self.ready.clear();
            self.taken = 0;
        }
        while self.ready.len() - self.taken < max * ch && !self.eof {
            // PCM decoded earlier (with the headers, say) goes first.
            if self.conform.is_identity() && self.ready.is_empty() {
                std::mem::swap(&mut self.ready, &mut self.pcm48);
            } else {
                self.conform.process(&self.pcm48, &mut self.ready);
                self.pcm48.clear();
            }
            if !self.fill()? {
                self.dec.finish()?;
                self.conform.process(&self.pcm48, &mut self.ready);
                self.pcm48.clear();
                self.conform.flush(&mut self.ready);
                self.eof = true;
            }
        }
        if out.is_empty() && self.taken == 0 {
            // Hand the whole buffer over rather than copy it (a read may return more than
            // `max` frames: it is a hint).
            std::mem::swap(out, &mut self.ready);
            return Ok(out.len() / ch);
        }
        let n = (self.ready.len() - self.taken).min(max * ch);
        out.extend_from_slice(&self.ready[self.taken..self.taken + n]);
        self.taken += n;
        Ok(n / ch)
    }

    fn prefer_rate(&mut self, rate: u32) -> bool {
        if rate == self.spec.rate || self.ready.len() > self.taken || self.eof {
            return false;
        }
        let native = Spec {
            rate: OPUS_RATE,
            channels: self.spec.channels,
        };
        self.spec.rate = rate;
        self.conform = Conform::new(native, self.spec).with_rounding(Rounding::Down);
        true
    }
}

/// Where audio goes. Call [`Sink::finish`] at the end; dropping a sink unfinished discards a
/// file output (and leaves a stream output as it is).
pub trait Sink: Send {
    /// Rate and channels it takes.
    fn spec(&self) -> Spec;
    /// Writes interleaved frames.
    fn write(&mut self, frames: &[f32]) -> Result<()>;
    /// Pushes buffered bytes out (for live streams).
    fn flush(&mut self) -> Result<()>;
    /// Completes the output (sizes, last page, rename into place).
    fn finish(self: Box<Self>) -> Result<()>;
}

/// A file being written under a temporary name, or stdout.
pub struct Output {
    path: PathBuf,
    /// The temporary file and its name, for a regular-file output.
    temp: Option<PathBuf>,
    file: Option<BufWriter<File>>,
    stdout: Option<BufWriter<io::Stdout>>,
}

impl Output {
    /// Opens `path` (`-`: stdout). A regular file is written as `.NAME.partial-PID` beside it;
    /// a device or FIFO is written in place.
    pub fn create(path: &Path) -> Result<Output> {
        if is_std(path) {
            return Ok(Output {
                path: path.into(),
                temp: None,
                file: None,
                stdout: Some(BufWriter::with_capacity(64 * 1024, io::stdout())),
            });
        }
        let special = std::fs::metadata(path).is_ok_and(|m| !m.is_file());
        if special {
            let f = File::options()
                .write(true)
                .open(path)
                .map_err(|e| Error::io(path, e))?;
            return Ok(Output {
                path: path.into(),
                temp: None,
                file: Some(BufWriter::with_capacity(64 * 1024, f)),
                stdout: None,
            });
        }
        let name = path
            .file_name()
            .ok_or_else(|| Error::io(path, io::Error::other("not a file name")))?;
        let temp = path.with_file_name(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let f = File::create(&temp).map_err(|e| Error::io(path, e))?;
        Ok(Output {
            path: path.into(),
            temp: Some(temp),
            file: Some(BufWriter::with_capacity(64 * 1024, f)),
            stdout: None,
        })
    }

    /// Whether the output can seek back (to patch a WAV header).
    pub fn seekable(&self) -> bool {
        self.temp.is_some()
    }

    fn writer(&mut self) -> &mut dyn Write {
        match (&mut self.file, &mut self.stdout) {
            (Some(f), _) => f,
            (_, Some(s)) => s,
            _ => unreachable!("an output is a file or stdout"),
        }
    }

    /// Writes bytes.
    pub fn write_all(&mut self, b: &[u8]) -> Result<()> {
        let r = self.writer().write_all(b);
        r.map_err(|e| Error::io(&self.path, e))
    }

    /// Flushes buffered bytes.
    pub fn flush(&mut self) -> Result<()> {
        let r = self.writer().flush();
        r.map_err(|e| Error::io(&self.path, e))
    }

    /// Overwrites bytes at `offset` (seekable outputs only).
    pub fn patch(&mut self, offset: u64, b: &[u8]) -> Result<()> {
        let f = self.file.as_mut().expect("patch needs a file");
        let r = f
            .seek(SeekFrom::Start(offset))
            .and_then(|_| f.write_all(b))
            .and_then(|_| f.seek(SeekFrom::End(0)).map(|_| ()));
        r.map_err(|e| Error::io(&self.path, e))
    }

    /// Flushes and moves the file into place.
    pub fn commit(mut self) -> Result<()> {
        self.flush()?;
        if let Some(f) = self.file.take() {
            // No fsync: the rename already keeps a failed run from leaving a partial file, and
            // like sox and opusdec we leave durability against power loss to the file system.
            f.into_inner()
                .map_err(|e| Error::io(&self.path, e.into_error()))?;
        }
        if let Some(t) = self.temp.take() {
            std::fs::rename(&t, &self.path).map_err(|e| Error::io(&self.path, e))?;
        }
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if let Some(t) = self.temp.take() {
            self.file.take();
            let _ = std::fs::remove_file(t);
        }
    }
}

/// How to write: the container, spec and encoding, and Opus settings.
#[derive(Clone, Copy, Debug)]
pub struct SinkSpec {
    /// Container.
    pub format: FileFormat,
    /// Rate and channels of the audio handed to the sink (for Ogg: the rate recorded as the
    /// original; the sink resamples to 48 kHz itself).
    pub spec: Spec,
    /// Encoding (WAV and raw).
    pub sample: SampleFormat,
    /// Opus settings (Ogg).
    pub opus: EncodeSettings,
}

impl SinkSpec {
    /// Works out the output format for `path` from `hints`, the file name, and the input
    /// (`from`, `from_sample`): raw output defaults to the call format, WAV and Ogg keep the
    /// input's rate and channels (Ogg: at most 2).
    pub fn resolve(
        path: &Path,
        hints: Hints,
        from: Spec,
        from_sample: Option<SampleFormat>,
        opus: EncodeSettings,
    ) -> Result<SinkSpec> {
        let format = match hints.format.or_else(|| FileFormat::from_path(path)) {
            Some(f) => f,
            None if is_std(path) => FileFormat::Raw,
            None => {
                return Err(Error::Unsupported(format!(
                    "cannot tell the format of '{}' from its name (use .wav, .opus, .raw or --format)",
                    path.display()
                )));
            }
        };
        let (rate, channels, sample) = match format {
            FileFormat::Raw => (pcm::CALL_RATE, pcm::CALL_CHANNELS, CALL_SAMPLE),
            FileFormat::Wav => (
                from.rate,
                from.channels,
                from_sample
                    .filter(|s| *s != SampleFormat::U8)
                    .unwrap_or(CALL_SAMPLE),
            ),
            FileFormat::Ogg => (from.rate, from.channels, SampleFormat::F32),
        };
        let spec = Spec {
            rate: hints.rate.unwrap_or(rate),
            channels: hints.channels.unwrap_or(channels),
        }
        .validate()?;
        if format == FileFormat::Ogg && spec.channels > 2 {
            return Err(Error::Unsupported(format!(
                "Ogg Opus output with {} channels (only 1 or 2: add --channels 2)",
                spec.channels
            )));
        }
        let mut opus = opus;
        if let Some(s) = from_sample {
            opus.lsb_depth = match s {
                SampleFormat::U8 => 8,
                SampleFormat::S16 => 16,
                _ => 24,
            };
        }
        Ok(SinkSpec {
            format,
            spec,
            sample: hints.sample.unwrap_or(sample),
            opus,
        })
    }
}

/// Opens a sink writing `spec` to `path` (`-`: stdout).
pub fn open_sink(path: &Path, spec: SinkSpec) -> Result<Box<dyn Sink>> {
    let mut out = Output::create(path)?;
    match spec.format {
        FileFormat::Wav | FileFormat::Raw => {
            let wav = spec.format == FileFormat::Wav;
            if wav {
                out.write_all(&wav::build(spec.spec, spec.sample, None))?;
            }
            Ok(Box::new(PcmSink {
                out,
                spec,
                wav,
                bytes: 0,
                buf: Vec::new(),
            }))
        }
        FileFormat::Ogg => {
            let mut buf = Vec::new();
            let w = OggOpusWriter::new(spec.spec.channels, spec.spec.rate, spec.opus, &mut buf)?;
            out.write_all(&buf)?;
            buf.clear();
            let native = Spec {
                rate: OPUS_RATE,
                channels: spec.spec.channels,
            };
            Ok(Box::new(OggSink {
                out,
                spec: spec.spec,
                writer: Some(w),
                // To 48 kHz, fractional frames round up (as opusenc does), so that decoding back
                // to the original rate, rounding down, gives the original length.
                conform: Conform::new(spec.spec, native).with_rounding(Rounding::Up),
                pcm48: Vec::new(),
                buf,
            }))
        }
    }
}

struct PcmSink {
    out: Output,
    spec: SinkSpec,
    wav: bool,
    bytes: u64,
    buf: Vec<u8>,
}

impl Sink for PcmSink {
    fn spec(&self) -> Spec {
        self.spec.spec
    }
    fn write(&mut self, frames: &[f32]) -> Result<()> {
        self.buf.clear();
        pcm::encode(self.spec.sample, frames, &mut self.buf);
        self.bytes += self.buf.len() as u64;
        self.out.write_all(&self.buf)
    }
    fn flush(&mut self) -> Result<()> {
        self.out.flush()
    }
    fn finish(mut self: Box<Self>) -> Result<()> {
        if self.wav {
            if self.bytes & 1 == 1 {
                self.out.write_all(&[0])?;
            }
            if self.out.seekable() {
                let h = wav::build(self.spec.spec, self.spec.sample, Some(self.bytes));
                self.out.patch(0, &h)?;
            }
        }
        self.out.commit()
    }
}

struct OggSink {
    out: Output,
    spec: Spec,
    writer: Option<OggOpusWriter>,
    conform: Conform,
    pcm48: Vec<f32>,
    buf: Vec<u8>,
}

impl OggSink {
    fn encode(&mut self) -> Result<()> {
        let w = self.writer.as_mut().expect("writer lives until finish");
        w.push(&self.pcm48, &mut self.buf)?;
        self.pcm48.clear();
        if !self.buf.is_empty() {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

impl Sink for OggSink {
    fn spec(&self) -> Spec {
        self.spec
    }
    fn write(&mut self, frames: &[f32]) -> Result<()> {
        if self.conform.is_identity() {
            self.pcm48.extend_from_slice(frames);
        } else {
            self.conform.process(frames, &mut self.pcm48);
        }
        self.encode()
    }
    fn flush(&mut self) -> Result<()> {
        self.out.flush()
    }
    fn finish(mut self: Box<Self>) -> Result<()> {
        self.conform.flush(&mut self.pcm48);
        self.encode()?;
        let w = self.writer.take().expect("finish runs once");
        w.finish(&mut self.buf)?;
        self.out.write_all(&self.buf)?;
        self.out.commit()
    }
}

/// A sink held to real time (`--realtime`): frames are written in 20 ms blocks, each when its
/// time on the audio clock comes, and flushed at once; [`Sink::finish`] returns when the last
/// frame's time has passed. For pipes to programs that expect live audio.
pub struct Paced {
    inner: Box<dyn Sink>,
    pacer: super::pace::Pacer,
    pos: u64,
    block: usize,
    /// Frames short of a whole block, written with the next call or at the end.
    pending: Vec<f32>,
    /// Blocks that went out more than a block late (the source could not keep up).
    late: u64,
}

impl Paced {
    /// Paces `inner`.
    pub fn new(inner: Box<dyn Sink>) -> Paced {
        let spec = inner.spec();
        Paced {
            pacer: super::pace::Pacer::new(
                spec.rate,
                super::pace::PaceMode::Always,
                std::time::Duration::ZERO,
            ),
            block: (spec.rate as usize / 50).max(1),
            pos: 0,
            pending: Vec::new(),
            late: 0,
            inner,
        }
    }

    /// Lateness of the blocks so far, and how many were more than a block late.
    pub fn report(&self) -> (super::pace::Lateness, u64) {
        (self.pacer.lateness(), self.late)
    }

    /// Finishes like [`Sink::finish`], returning the pacing report.
    pub fn finish_with_report(mut self) -> Result<(super::pace::Lateness, u64)> {
        let rest = std::mem::take(&mut self.pending);
        self.block_out(&rest)?;
        if let Some(end) = self.pacer.end(self.pos) {
            sleep_until(end);
        }
        let report = self.report();
        self.inner.finish()?;
        Ok(report)
    }
}

fn sleep_until(t: std::time::Instant) {
    let now = std::time::Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

impl Sink for Paced {
    fn spec(&self) -> Spec {
        self.inner.spec()
    }
    fn write(&mut self, frames: &[f32]) -> Result<()> {
        let whole = self.block * self.inner.spec().channels as usize;
        let mut pending = std::mem::take(&mut self.pending);
        pending.extend_from_slice(frames);
        let mut blocks = pending.chunks_exact(whole);
        for b in blocks.by_ref() {
            self.block_out(b)?;
        }
        self.pending = blocks.remainder().to_vec();
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        self.inner.flush()
    }
    fn finish(self: Box<Self>) -> Result<()> {
        self.finish_with_report().map(|_| ())
    }
}

impl Paced {
    /// Writes one block when its time comes.
    fn block_out(&mut self, b: &[f32]) -> Result<()> {
        use std::time::{Duration, Instant};
        if b.is_empty() {
            return Ok(());
        }
        if let Some(at) = self.pacer.due(Instant::now(), self.pos) {
            sleep_until(at);
        }
        let now = Instant::now();
        self.pacer.record(now, self.pos);
        let spec = self.inner.spec();
        let block_time = Duration::from_secs_f64(self.block as f64 / spec.rate as f64);
        if self
            .pacer
            .time_of(self.pos)
            .is_some_and(|at| now > at + block_time)
        {
            self.late += 1;
        }
        self.inner.write(b)?;
        self.inner.flush()?;
        self.pos += (b.len() / spec.channels as usize) as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_from_names_and_bytes() {
        assert_eq!(
            FileFormat::from_path(Path::new("a.WAV")),
            Some(FileFormat::Wav)
        );
        assert_eq!(
            FileFormat::from_path(Path::new("a.opus")),
            Some(FileFormat::Ogg)
        );
        assert_eq!(
            FileFormat::from_path(Path::new("a.s16")),
            Some(FileFormat::Raw)
        );
        assert_eq!(FileFormat::from_path(Path::new("a.mp3")), None);
        assert_eq!(FileFormat::sniff(b"OggS\0"), Some(FileFormat::Ogg));
        assert_eq!(FileFormat::sniff(b"RIFF"), Some(FileFormat::Wav));
        assert_eq!(FileFormat::sniff(b"\x01\x02"), None);
    }

    #[test]
    fn raw_output_defaults_to_the_call_format_and_wav_keeps_the_input() {
        let cd = Spec {
            rate: 44_100,
            channels: 2,
        };
        let s = SinkSpec::resolve(
            Path::new("-"),
            Hints::default(),
            cd,
            Some(SampleFormat::S24),
            EncodeSettings::default(),
        )
        .unwrap();
        assert_eq!(
            (s.format, s.spec, s.sample),
            (FileFormat::Raw, Spec::CALL, SampleFormat::S16)
        );
        let s = SinkSpec::resolve(
            Path::new("x.wav"),
            Hints::default(),
            cd,
            Some(SampleFormat::S24),
            EncodeSettings::default(),
        )
        .unwrap();
        assert_eq!((s.spec, s.sample), (cd, SampleFormat::S24));
        let six = Spec {
            rate: 48_000,
            channels: 6,
        };
        let e = SinkSpec::resolve(
            Path::new("x.opus"),
            Hints::default(),
            six,
            None,
            EncodeSettings::default(),
        );
        assert!(matches!(e, Err(Error::Unsupported(_))));
        let e = SinkSpec::resolve(
            Path::new("x.mp3"),
            Hints::default(),
            six,
            None,
            EncodeSettings::default(),
        );
        assert!(matches!(e, Err(Error::Unsupported(_))));
    }
}
