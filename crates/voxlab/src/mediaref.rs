//! `voxlab media-ref`: the offline references of the call-quality bench. From the media traces
//! of a real call (`dial --media-trace` at the sender, `answer --media-trace` at the receiver)
//! it decodes the very Opus packets the sender sent, with the product's own libopus, three ways:
//! - `clean.wav`: every packet (what the codec gives on a perfect network);
//! - `plc.wav`: the packets the network lost concealed by the decoder (the anchor);
//! - `fec.wav`: a lost packet rebuilt from the next packet's in-band FEC when that one arrived,
//!   else concealed (the ceiling of this codec setting);
//! - `red.wav`: a lost packet decoded whole when the next one arrived, as if that had carried
//!   a full copy of it (RFC 2198-style redundancy at twice the payload rate, which the product
//!   does not send): how much of the gap redundancy beyond FEC could close.
//!
//! "Lost" is lost by the network: never received. A packet that arrived after its playout slot
//! (`late`) counts as received here, so the call's own jitter-buffer misses show against it.
//!
//! `replay.wav` attributes that gap: the receiver's media session run again offline on the same
//! packets, each given at the time it arrived in the call and each frame pulled at the time
//! it was played. It should sound like the call's recording; its playout statistics (printed)
//! say which decisions (expand, accelerate, late packets, skips) made the difference, and a
//! change to the jitter buffer can be tried on recorded calls without a lab.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use std::time::{Duration, Instant};

use voxmesh::media::codec::{Decoder, Encoder, has_fec, packet_samples};
use voxmesh::media::{
    FrameKind, MediaConfig, MediaKeys, MediaSession, OpusSettings, PayloadType, PlayoutStats, Role,
};

#[derive(Args, Debug)]
pub struct MediaRefArgs {
    /// The sender's media trace (its `--media-trace` file).
    #[arg(long)]
    pub sent: PathBuf,
    /// The receiver's media trace.
    #[arg(long)]
    pub received: PathBuf,
    /// Where to write clean.wav, plc.wav and fec.wav.
    #[arg(long)]
    pub out_dir: PathBuf,
}

/// Sent packets: (48 kHz timestamp, Opus bytes).
type Packets = Vec<(i64, Vec<u8>)>;

/// The sent packets of the trace's first call (its ID), in timestamp order, and the
/// timestamps of those sent with a copy of the packet before (RED).
fn sent_packets(path: &Path) -> anyhow::Result<(String, Packets, HashSet<i64>)> {
    let mut call = None;
    let mut out = Vec::new();
    let mut red = HashSet::new();
    for line in lines(path)? {
        let v: serde_json::Value = serde_json::from_str(&line)?;
        if v["dir"] != "sent" {
            continue;
        }
        let c = v["call"].as_str().unwrap_or_default().to_string();
        if *call.get_or_insert_with(|| c.clone()) != c {
            continue;
        }
        let ts = v["ts"].as_i64().context("a sent record without ts")?;
        let hex = v["opus"].as_str().context("a sent record without opus")?;
        out.push((ts, unhex(hex)?));
        if v["red"].as_bool() == Some(true) {
            red.insert(ts);
        }
    }
    out.sort_by_key(|(ts, _)| *ts);
    let call = call.with_context(|| format!("no sent packet in {}", path.display()))?;
    Ok((call, out, red))
}

/// What the receiver's trace holds for one call.
#[derive(Default)]
struct Received {
    /// Timestamps of the packets that arrived (late ones included).
    got: HashSet<i64>,
    late: u64,
    /// (timestamp, arrival in Unix ms), in arrival order.
    arrivals: Vec<(i64, f64)>,
    /// When each frame was played, Unix ms.
    played: Vec<f64>,
}

/// The receiver's side of `call`.
fn received(path: &Path, call: &str) -> anyhow::Result<Received> {
    let mut r = Received::default();
    for line in lines(path)? {
        let v: serde_json::Value = serde_json::from_str(&line)?;
        if v["call"] != call {
            continue;
        }
        let at = v["unix_ms"].as_f64();
        if v["dir"] == "played" {
            r.played.extend(at);
            continue;
        }
        if v["dir"] != "received" {
            continue;
        }
        let ts = v["ts"].as_i64().context("a received record without ts")?;
        r.got.insert(ts);
        r.late += v["late"].as_bool().unwrap_or(false) as u64;
        r.arrivals.extend(at.map(|a| (ts, a)));
    }
    Ok(r)
}

/// The receiver's session run again on the call's packets at their arrival times, pulled at
/// the call's playout times: its audio and playout statistics.
fn replay(
    packets: &Packets,
    red: &HashSet<i64>,
    r: &Received,
) -> anyhow::Result<(Vec<f32>, PlayoutStats, Vec<String>)> {
    let keys = MediaKeys::new([1; 32], [2; 32]);
    let (mut sealer, _) = keys.for_role(Role::Initiator, 1)?;
    let t0 = Instant::now();
    let base = r
        .arrivals
        .iter()
        .map(|a| a.1)
        .chain(r.played.iter().copied())
        .fold(f64::INFINITY, f64::min);
    let at = |ms: f64| t0 + Duration::from_secs_f64((ms - base).max(0.0) / 1000.0);
    let mut rx = MediaSession::new(t0, &keys, Role::Responder, MediaConfig::default())?;
    // Sealed in sending order, so the indexes are the call's; the lost ones are never given.
    let mut sealed = std::collections::HashMap::new();
    let mut before: Option<&(i64, Vec<u8>)> = None;
    for packet @ (ts, p) in packets {
        // As the call sent it: with a copy of the packet before, or alone.
        let with_copy = before
            .filter(|_| red.contains(ts))
            .and_then(|(b_ts, b)| voxmesh::media::red::encode(((ts - b_ts) as u32, b), p));
        let d = match with_copy {
            Some(r) => sealer.seal(PayloadType::Red, false, *ts as u32, &r),
            None => sealer.seal(PayloadType::Opus, false, *ts as u32, p),
        }
        .context("seal")?;
        sealed.insert(*ts, d);
        before = Some(packet);
    }
    let mut pcm = Vec::new();
    // Frames not decoded from their own packet, and accelerations: where the replay's sound
    // departs from the clean decode.
    let mut notes = Vec::new();
    let mut accelerated = 0;
    let mut arrivals = r.arrivals.iter().peekable();
    for &p in &r.played {
        while let Some((ts, a)) = arrivals.next_if(|x| x.1 <= p) {
            if let Some(d) = sealed.get(ts) {
                rx.handle_input(at(*a), d);
            }
        }
        let f = rx.pop_frame(at(p));
        let playout = rx.stats().playout;
        if f.kind != FrameKind::Normal || playout.accelerate > accelerated {
            let accel = if playout.accelerate > accelerated {
                " accelerate"
            } else {
                ""
            };
            notes.push(format!("{} {:?}{accel}", pcm.len() / 960, f.kind));
            accelerated = playout.accelerate;
        }
        pcm.extend(f.pcm);
    }
    Ok((pcm, rx.stats().playout, notes))
}

fn lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(std::io::BufReader::new(f)
        .lines()
        .collect::<Result<_, _>>()?)
}

fn unhex(s: &str) -> anyhow::Result<Vec<u8>> {
    if s.len() % 2 != 0 {
        bail!("odd hex length");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("bad hex"))
        .collect()
}

fn write_wav(path: &Path, pcm: &[f32]) -> anyhow::Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)?;
    for &x in pcm {
        w.write_sample((x.clamp(-1.0, 1.0) * 32767.0) as i16)?;
    }
    w.finalize()?;
    Ok(())
}

/// How a lost packet is filled.
#[derive(Clone, Copy, PartialEq)]
enum Fill {
    /// Never lost (the clean decode).
    None,
    Conceal,
    Fec,
    /// The lost packet itself, when the next one arrived (a redundant copy in it).
    Red,
}

/// Decodes `packets` in order; the ones not in `got` are filled as `fill` says. Timestamp gaps
/// between packets (frames not sent) become silence.
fn decode(packets: &[(i64, Vec<u8>)], got: &HashSet<i64>, fill: Fill) -> anyhow::Result<Vec<f32>> {
    let mut dec = Decoder::new()?;
    let mut out = Vec::new();
    let first = packets.first().map_or(0, |p| p.0);
    for (i, (ts, p)) in packets.iter().enumerate() {
        let start = (ts - first) as usize;
        if out.len() < start {
            out.resize(start, 0.0);
        }
        let samples = packet_samples(p).context("a sent packet that is not Opus")? as usize;
        let lost = fill != Fill::None && !got.contains(ts);
        if !lost {
            dec.decode(p, &mut out)?;
            continue;
        }
        let next = packets
            .get(i + 1)
            .filter(|(nts, _)| *nts == ts + samples as i64 && got.contains(nts));
        match (fill, next) {
            (Fill::Fec, Some((_, np))) if has_fec(np) => dec.recover(np, samples, &mut out)?,
            (Fill::Red, Some(_)) => dec.decode(p, &mut out)?,
            _ => dec.conceal(samples, &mut out)?,
        };
    }
    Ok(out)
}

pub fn run(a: MediaRefArgs) -> anyhow::Result<()> {
    let (call, packets, red) = sent_packets(&a.sent)?;
    let r = received(&a.received, &call)?;
    let got = &r.got;
    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("cannot create {}", a.out_dir.display()))?;
    let lost = packets.iter().filter(|(ts, _)| !got.contains(ts)).count();
    for (name, fill) in [
        ("clean.wav", Fill::None),
        ("plc.wav", Fill::Conceal),
        ("fec.wav", Fill::Fec),
        ("red.wav", Fill::Red),
    ] {
        write_wav(&a.out_dir.join(name), &decode(&packets, got, fill)?)?;
    }
    let replayed = if r.played.is_empty() {
        None
    } else {
        let (pcm, stats, notes) = replay(&packets, &red, &r)?;
        write_wav(&a.out_dir.join("replay.wav"), &pcm)?;
        Some((stats, notes))
    };
    let with_fec = packets.iter().filter(|(_, p)| has_fec(p)).count();
    // The codec's own delay: a sound decoded from the packets sits this many samples later
    // than it was in the sender's input (the delay bench takes it off to find the input time).
    let lookahead = Encoder::new(OpusSettings::default())?.lookahead()?;
    println!(
        "{}",
        serde_json::json!({
            "call": call,
            "sent": packets.len(),
            "sent_with_copy": red.len(),
            "lost": lost,
            "late": r.late,
            "loss_percent": 100.0 * lost as f64 / packets.len().max(1) as f64,
            "with_fec": with_fec,
            "lookahead_samples": lookahead,
            "replay_playout": replayed.as_ref().map(|r| &r.0),
            "replay_notes": replayed.as_ref().map(|r| &r.1),
        })
    );
    Ok(())
}
