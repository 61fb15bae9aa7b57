//! The receive side's jitter buffer: packets in, 20 ms frames of PCM out, on the audio side's
//! clock.
//!
//! # Model
//!
//! Time is in samples at 48 kHz on both clocks: the sender's (RTP timestamps, unwrapped to 64
//! bits) and ours (`now`, counted from the session's start). A packet's *transit* is its arrival
//! on our clock minus its timestamp: the network delay plus a constant clock offset nobody needs
//! to know. The buffer decodes slot after slot in timestamp order; `next_ts` is the next one.
//! When the audio side pulls a frame at `now`, the *playout offset* is `now - next_ts`, and the
//! packet for `next_ts` is in time exactly when its transit is at most that offset. (While a
//! clock drift is corrected, up to a frame of decoded audio waits ahead of the slot, and the
//! offset counts it: see the end of this comment.)
//!
//! The offset's target is the configured quantile of recent transits (plus one packet when
//! packets carry FEC, see [`PlayoutConfig`]). A stream is assumed to carry FEC until packets
//! after voiced ones show it does not (the encoder codes FEC only after voiced frames); the
//! room playout started with is then given back with one accelerate in a pause, once a second
//! of packets has shown the jitter. Each slot is then one of (NetEQ's vocabulary):
//!
//! - **normal**: its packet is here; decode it.
//! - **accelerate**: its packet and the next are here but the offset is more than a packet over
//!   target: decode both and play them shortened by half a frame to a frame, cut where the
//!   audio repeats (whole pitch periods in voiced speech) and crossfaded, so the waveform stays
//!   continuous; in a pause (giving back room for FEC, below) the slot's audio is dropped whole.
//! - **expand**: its packet is missing and the offset is under target (or nothing at all is
//!   buffered): it may still come, so conceal one packet's length without advancing. The
//!   offset grows; a late packet is then played, not lost.
//! - **FEC / PLC**: its packet is missing, a later one is here and we are on or behind target:
//!   the slot is lost. If the very next packet is here and carries FEC, rebuild the slot from
//!   it; otherwise decoder PLC. Missing slots further behind than the target are skipped, not
//!   concealed one by one, so an outage does not leave a permanent delay behind.
//! - **comfort noise**: the missing stretch is DTX silence (the next packet's sequence number
//!   follows the last one played, so nothing was lost): the decoder's comfort noise, and the
//!   cheapest place to move the offset either way.
//!
//! With nothing buffered at all (late, lost or DTX, cannot tell yet) the buffer expands up to
//! its delay bound (`max_delay` over the fastest transit), then lets the timeline move on with
//! PLC. Which it was shows when the next packet comes: a sequence number that follows the last
//! one played relabels the waiting as comfort noise; a skip over the gap relabels it as PLC.
//! So the statistics say what each concealed slot stood for, after the fact.
//!
//! Skips and accelerations consume whole packets, so decoding stays on the sender's frame grid
//! (a pull lands anywhere within a frame of the target; that is not lateness); what an
//! accelerate cuts short of a frame waits decoded in the FIFO, which the offset counts. In speech the
//! offset only grows by expanding when a packet is missing; it is re-anchored to the target in
//! silence, which is why two talkspurts may play at delays a frame apart.
//!
//! Late packets (their slot already played or concealed) are dropped and counted; so are
//! duplicates. The buffer holds at most `capacity` packets: when full, the oldest goes. If the
//! audio side stalls so that the offset passes the delay bound with packets waiting, the stale
//! ones are dropped at once rather than played late or fast.
//!
//! Clock drift between the sender's clock and our playout is absorbed between the FIFO and the
//! frames handed out: [`Drift`] estimates it over a minute and reads the decoded audio at a
//! ratio within ±0.1 %, so a drifting call needs no periodic accelerate or expand. Read at a
//! ratio, packets no longer start on our frames: up to a frame of decoded audio is left over
//! between pulls, and the amount sweeps the whole frame once per frame's worth of drift (200 s
//! at 100 ppm). So the offset counts that audio (the slot plays after it), and the target
//! leaves one packet more while a drift is corrected: a packet is decoded up to a frame before
//! its slot plays and must be here by then. Measured on the decoded slot alone, the offset
//! swung by a frame over that period, and so did the delay the statistics reported.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Serialize;

use super::codec::{Decoder, RATE, SilkFlags, packet_samples, silk_flags};
use super::config::PlayoutConfig;
use super::drift::Drift;

/// Concealment granularity: Opus decodes in multiples of 2.5 ms.
const GRAIN: i64 = 120;
/// Packets after voiced ones without FEC after which a stream is taken not to code it.
const FEC_UNKNOWN: usize = 5;
/// How far behind the playout a new packet (the highest sequence number yet) must be for its
/// timestamp to say the sender's timeline moved, not that the packet waited in a queue: a
/// minute, twice the consent timeout after which a silent path is declared dead.
const TIMELINE_JUMP: i64 = 60 * RATE as i64;
/// Such packets in a row after which playout restarts on the sender's new timeline.
const JUMPS_TO_RESTART: u32 = 3;

/// How the audio of a frame was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    /// Playout has not started (nothing received yet): digital silence.
    Idle,
    /// Decoded from its own packet.
    Normal,
    /// Rebuilt from the next packet's in-band FEC.
    Fec,
    /// Decoder concealment of a lost packet.
    Plc,
    /// Decoder concealment while waiting for a late packet (playout delay grows).
    Expand,
    /// Decoder comfort noise in DTX silence.
    ComfortNoise,
}

/// One frame of playout: mono 48 kHz PCM.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub pcm: Vec<f32>,
    /// How the newest audio in this frame was made.
    pub kind: FrameKind,
}

/// Why a packet was not buffered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its slot was already played or concealed.
    Late,
    /// A packet for its timestamp is already buffered.
    Duplicate,
    /// Not a valid Opus packet.
    Undecodable,
}

/// What the buffer did, in slots (packets' worth of audio).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PlayoutStats {
    pub normal: u64,
    pub fec: u64,
    /// Slots whose packet was lost and filled by the copy the next packet carried (RED); they
    /// play as normal slots.
    pub red_filled: u64,
    pub plc: u64,
    pub expand: u64,
    pub comfort_noise: u64,
    pub accelerate: u64,
    /// Frames handed out before playout started.
    pub idle_frames: u64,
    /// Audio skipped over in gaps, ms.
    pub skipped_ms: f64,
    /// Packets dropped because the buffer was full.
    pub overflow: u64,
    /// Packets that failed to decode after being buffered.
    pub decode_errors: u64,
    /// Times playout restarted because the sender's timestamps jumped back by over a minute.
    pub restarts: u64,
    /// Target buffering over the fastest recent packet, ms.
    pub target_delay_ms: f64,
    /// Buffering over the fastest recent packet at the last frame, ms.
    pub delay_ms: f64,
    /// The clock drift being absorbed: how much faster (positive) the sender's clock runs
    /// than our playout, ppm (0 within the dead band).
    pub drift_ppm: f64,
    /// The peer's packet length (of the last packet played), ms.
    pub packet_ms: f64,
}

struct Buffered {
    seq: u64,
    payload: Vec<u8>,
    dur: i64,
    fec: bool,
    /// The encoder flagged it voiced (VAD).
    voice: bool,
}

impl Buffered {
    fn new(seq: u64, payload: Vec<u8>, dur: i64, flags: SilkFlags) -> Buffered {
        Buffered {
            seq,
            payload,
            dur,
            fec: flags.fec,
            voice: flags.voice,
        }
    }
}

/// The jitter buffer and the decoder behind it.
pub struct JitterBuffer {
    cfg: PlayoutConfig,
    decoder: Decoder,
    /// By unwrapped timestamp.
    packets: BTreeMap<i64, Buffered>,
    /// The next slot to decode; `None` until playout starts.
    next_ts: Option<i64>,
    /// Sequence number of the last packet decoded, to tell DTX silence from loss.
    last_seq: Option<u64>,
    /// Length of the last packet, the unit of concealment.
    last_dur: i64,
    /// Packets in the transit window that carried FEC: while any did, the target leaves room
    /// for one (a per-packet flag would make the target jump at every pause in speech, where
    /// the encoder codes no FEC).
    fec_in_window: usize,
    /// The room for FEC the target leaves now (samples), and how much room it stopped leaving
    /// that playout has not given back yet: once the loss that needed it has left the window
    /// (or the stream shows it codes no FEC), that packet of delay is shed with one accelerate
    /// in a pause. (The general accelerate rule keeps a hysteresis of 10 ms over a packet, so
    /// it would shed it only when the offset sat in the upper half of the frame.)
    fec_room: i64,
    fec_room_owed: i64,
    /// Packets since the last one with FEC that followed a voiced packet yet carried none:
    /// the evidence that the peer codes no FEC (it codes it only after voiced frames, so
    /// packets after silence prove nothing).
    fec_absent: usize,
    /// Sequence number of the last packet received and whether the encoder flagged it voiced.
    last_voiced: Option<(u64, bool)>,
    /// The highest sequence number received, and the one whose arrival last showed a short
    /// gap (a loss, or a packet overtaken): room for FEC is left only while that is recent.
    highest_seq: Option<u64>,
    last_gap: Option<u64>,
    /// Highest unwrapped timestamp seen, the reference for unwrapping.
    ts_ref: Option<i64>,
    /// (transit, carried FEC) of the last `window` packets.
    transits: VecDeque<(i64, bool)>,
    fifo: VecDeque<f32>,
    scratch: Vec<f32>,
    last_kind: FrameKind,
    /// Expand slots since the last packet played: relabelled comfort noise if the next packet
    /// shows the gap was DTX silence (or loss concealment if it shows a loss).
    expand_run: u64,
    /// Concealed slots since the last packet played, with nothing buffered and the delay bound
    /// reached: relabelled comfort noise if the gap turns out to be silence.
    waiting_run: u64,
    /// Clock drift between the sender and our playout, absorbed by reading the decoded audio
    /// a little faster or slower (see [`Drift`]).
    drift: Drift,
    /// New packets in a row whose timestamps were [`TIMELINE_JUMP`] behind the playout.
    jumps: u32,
    stats: PlayoutStats,
}

impl JitterBuffer {
    pub fn new(cfg: PlayoutConfig, decoder: Decoder) -> JitterBuffer {
        let last_dur = cfg.frame.samples() as i64;
        JitterBuffer {
            transits: VecDeque::with_capacity(cfg.window),
            cfg,
            decoder,
            packets: BTreeMap::new(),
            next_ts: None,
            last_seq: None,
            last_dur,
            fec_in_window: 0,
            fec_room: 0,
            fec_room_owed: 0,
            fec_absent: 0,
            last_voiced: None,
            highest_seq: None,
            last_gap: None,
            ts_ref: None,
            fifo: VecDeque::new(),
            scratch: Vec::new(),
            last_kind: FrameKind::Idle,
            expand_run: 0,
            waiting_run: 0,
            drift: Drift::default(),
            jumps: 0,
            stats: PlayoutStats::default(),
        }
    }

    /// Unwraps a 32-bit timestamp to the value nearest the highest seen.
    pub fn unwrap_ts(&mut self, ts: u32) -> i64 {
        let ext = match self.ts_ref {
            None => i64::from(ts),
            Some(r) => r + i64::from(ts.wrapping_sub(r as u32) as i32),
        };
        self.ts_ref = Some(self.ts_ref.map_or(ext, |r| r.max(ext)));
        ext
    }

    /// Buffers an authenticated Opus packet with extended sequence number `seq` and unwrapped
    /// timestamp `ts` (from [`unwrap_ts`](Self::unwrap_ts)) that arrived at `arrival` (samples
    /// on our clock).
    /// `copy`: it carries a copy of the packet before it (RED), which like FEC is worth waiting
    /// a packet for, so it counts as FEC for the room the target leaves.
    pub fn insert(
        &mut self,
        arrival: i64,
        seq: u64,
        ts: i64,
        payload: Vec<u8>,
        copy: bool,
    ) -> Result<(), Refused> {
        let dur = i64::from(packet_samples(&payload).ok_or(Refused::Undecodable)?);
        if self.timeline_moved(seq, ts) {
            self.restart(ts);
        }
        let flags = silk_flags(&payload);
        let fec = flags.fec || copy;
        if fec {
            self.fec_absent = 0;
        } else if self.last_voiced == Some((seq.wrapping_sub(1), true)) {
            self.fec_absent += 1;
        }
        self.last_voiced = Some((seq, flags.voice));
        // A gap FEC could have filled: one or two packets (FEC rebuilds only the packet just
        // before one that came; an outage is no reason to buffer more).
        if self
            .highest_seq
            .is_some_and(|h| seq > h + 1 && seq <= h + 3)
        {
            self.last_gap = Some(seq);
        }
        self.highest_seq = Some(self.highest_seq.map_or(seq, |h| h.max(seq)));
        // Late packets count too: they are exactly the ones telling the delay to grow.
        if self.transits.len() == self.cfg.window
            && let Some((_, old_fec)) = self.transits.pop_front()
        {
            self.fec_in_window -= usize::from(old_fec);
        }
        self.transits.push_back((arrival - ts, fec));
        self.fec_in_window += usize::from(fec);
        self.drift.on_packet(ts, arrival);
        if self.next_ts.is_some_and(|n| ts < n) {
            return Err(Refused::Late);
        }
        if self.packets.contains_key(&ts) {
            return Err(Refused::Duplicate);
        }
        if self.next_ts.is_none() {
            // Before playout, the room the target leaves for FEC is the peer's packet length.
            self.last_dur = dur;
        }
        self.store(ts, Buffered::new(seq, payload, dur, flags));
        Ok(())
    }

    /// Whether packet `seq` at `ts` is the last of [`JUMPS_TO_RESTART`] new packets in a row far
    /// behind the playout. The peer's timestamps are authenticated, yet a sender may jump its
    /// timeline (or did once, far ahead, and playout followed it there): without a restart
    /// every packet after that would be dropped as late for good.
    fn timeline_moved(&mut self, seq: u64, ts: i64) -> bool {
        let new = self.highest_seq.is_none_or(|h| seq > h);
        if new && self.next_ts.is_some_and(|n| n - ts > TIMELINE_JUMP) {
            self.jumps += 1;
        } else if new {
            self.jumps = 0;
        }
        self.jumps >= JUMPS_TO_RESTART
    }

    /// Forgets the stream's timeline and estimates, as if `ts` were its first packet; the
    /// statistics carry on.
    fn restart(&mut self, ts: i64) {
        self.packets.clear();
        self.next_ts = None;
        self.last_seq = None;
        self.transits.clear();
        self.fec_in_window = 0;
        (self.fec_room, self.fec_room_owed) = (0, 0);
        (self.expand_run, self.waiting_run) = (0, 0);
        self.fifo.clear();
        self.drift = Drift::default();
        self.ts_ref = Some(ts);
        self.jumps = 0;
        self.stats.restarts += 1;
    }

    /// Buffers the copy of packet `seq` (timestamp `ts`) that a RED packet carried, if its slot
    /// is still to come and empty: `Ok` when it filled the slot. It says nothing about the
    /// network (it came with a later packet), so it feeds no delay, drift or loss estimate.
    pub fn insert_copy(&mut self, seq: u64, ts: i64, payload: Vec<u8>) -> Result<(), Refused> {
        let dur = i64::from(packet_samples(&payload).ok_or(Refused::Undecodable)?);
        if self.next_ts.is_some_and(|n| ts < n) {
            return Err(Refused::Late);
        }
        if self.packets.contains_key(&ts) {
            return Err(Refused::Duplicate);
        }
        let flags = silk_flags(&payload);
        self.store(ts, Buffered::new(seq, payload, dur, flags));
        self.stats.red_filled += 1;
        Ok(())
    }

    fn store(&mut self, ts: i64, packet: Buffered) {
        self.packets.insert(ts, packet);
        if self.packets.len() > self.cfg.capacity
            && let Some((old_ts, old)) = self.packets.pop_first()
        {
            self.stats.overflow += 1;
            let past = old_ts + old.dur;
            self.next_ts = Some(self.next_ts.map_or(past, |n| n.max(past)));
            self.last_seq = Some(old.seq);
        }
    }

    /// The room the target leaves for FEC, samples: a packet's, while a loss within the window
    /// shows FEC may be needed and the stream may carry it. On a clean path the room would
    /// only add a packet of delay; the first loss costs one expand to make it (and FEC then
    /// rebuilds that loss from the next packet).
    fn fec_margin(&self) -> i64 {
        let loss_recent = self
            .last_gap
            .zip(self.highest_seq)
            .is_some_and(|(g, h)| h - g < self.cfg.window as u64);
        // A stream's first packet carries no FEC (nothing came before it to protect), nor does
        // one after silence: until a few after voiced ones have come without, assume the peer
        // codes it.
        if loss_recent && (self.fec_in_window > 0 || self.fec_absent < FEC_UNKNOWN) {
            self.last_dur
        } else {
            0
        }
    }

    /// (target offset, fastest transit) over the window, samples.
    fn target(&self) -> Option<(i64, i64)> {
        if self.transits.is_empty() {
            return None;
        }
        let mut t: Vec<i64> = self.transits.iter().map(|&(t, _)| t).collect();
        t.sort_unstable();
        let q = t[((t.len() - 1) as f64 * self.cfg.quantile).round() as usize];
        let min = t[0];
        let mut margin = self.fec_margin();
        if self.drift.correction() != 0.0 {
            // Read at a ratio, up to a frame of decoded audio is left over between pulls, so a
            // packet is decoded up to a frame before its slot plays. It must be here by then;
            // otherwise the leftover's sweep across the frame (once per frame's worth of
            // drift) brings a missed decode, an expand, each time round.
            margin += self.last_dur;
        }
        Some(((q + margin).min(min + self.max_delay()), min))
    }

    fn max_delay(&self) -> i64 {
        samples_of(self.cfg.max_delay)
    }

    /// Drops the packets that end before `desired` and moves the next slot up to it (on the
    /// frame grid, never past a packet still buffered); returns the new next slot.
    fn drop_stale(&mut self, n: i64, desired: i64) -> i64 {
        let mut dropped = 0;
        while let Some(e) = self.packets.first_entry() {
            if *e.key() + e.get().dur > desired {
                break;
            }
            let p = e.remove();
            self.last_seq = Some(p.seq);
            dropped += p.dur;
        }
        let unit = self.last_dur.max(GRAIN);
        let mut to = n + ((desired - n).max(0) / unit) * unit;
        if let Some((&t, _)) = self.packets.first_key_value() {
            to = to.min(t);
        }
        let to = to.max(n);
        self.skipped((to - n).max(dropped));
        self.next_ts = Some(to);
        to
    }

    /// Accounts `samples` of the timeline skipped. What was concealed while waiting (expand)
    /// stood in for the audio now skipped: it was loss concealment after all.
    fn skipped(&mut self, samples: i64) {
        self.stats.skipped_ms += samples as f64 * 1000.0 / f64::from(RATE);
        let slots = (samples + self.last_dur - 1) / self.last_dur.max(1);
        let run = self.expand_run.min(slots.max(0) as u64);
        self.expand_run -= run;
        self.stats.expand -= run;
        self.stats.plc += run;
    }

    /// The next frame of playout at `now` (samples on our clock).
    pub fn pop(&mut self, now: i64) -> Frame {
        let want = self.cfg.frame.samples();
        let need = self.drift.needs(want);
        let mut first: Option<FrameKind> = None;
        // Each step yields audio or consumes a packet, so this ends; the bound is a backstop.
        for _ in 0..4 * self.cfg.capacity + 16 {
            if self.fifo.len() >= need {
                break;
            }
            let before = self.fifo.len();
            match self.step(now) {
                None => break,
                Some(k) if self.fifo.len() > before => {
                    first.get_or_insert(k);
                }
                Some(_) => {}
            }
        }
        self.stats.drift_ppm = self.drift.correction() * 1e6;
        if self.fifo.len() < need {
            // Not started: silence, and the decoder stays untouched.
            self.stats.idle_frames += 1;
            let mut pcm: Vec<f32> = self.fifo.drain(..).collect();
            pcm.resize(want, 0.0);
            return Frame {
                pcm,
                kind: FrameKind::Idle,
            };
        }
        if let Some(k) = first {
            self.last_kind = k;
        }
        let pcm = self.drift.take(now, &mut self.fifo, want);
        if let Some((target, min)) = self.target() {
            let ms = |s: i64| s as f64 * 1000.0 / f64::from(RATE);
            self.stats.target_delay_ms = ms(target - min);
            self.stats.packet_ms = ms(self.last_dur);
            if let Some(n) = self.next_ts {
                // The next pull's first sample is the leftover's: it plays after that.
                let ahead = self.fifo.len() as i64;
                self.stats.delay_ms = ms(now - n + ahead - min).max(0.0);
            }
        }
        Frame {
            pcm,
            kind: self.last_kind,
        }
    }

    /// The statistics so far.
    pub fn stats(&self) -> &PlayoutStats {
        &self.stats
    }

    /// Decides and produces one slot. `None`: playout has not started.
    fn step(&mut self, now: i64) -> Option<FrameKind> {
        let (target, min) = self.target()?;
        let room = self.fec_margin();
        if self.next_ts.is_some() {
            // Room the target stopped leaving is owed back; room it leaves again cancels that.
            self.fec_room_owed = (self.fec_room_owed + self.fec_room - room).max(0);
        }
        self.fec_room = room;
        let bound = min + self.max_delay();
        // Decoded audio not yet played (drift correction leaves up to a frame): the slot being
        // decided plays after it.
        let ahead = self.fifo.len() as i64;
        let mut n = match self.next_ts {
            Some(n) => n,
            None => {
                let (&first, _) = self.packets.first_key_value()?;
                if now - first < target {
                    return None;
                }
                self.next_ts = Some(first);
                first
            }
        };
        let next_seq = self.packets.first_key_value().map(|(_, p)| p.seq);
        if !self.packets.contains_key(&n) && self.last_seq.is_some_and(|s| next_seq == Some(s + 1))
        {
            // The next packet follows the last one played: what was concealed while waiting
            // was DTX silence (or a hold), not a stall or a loss.
            let run = std::mem::take(&mut self.expand_run);
            self.stats.expand -= run;
            let waited = std::mem::take(&mut self.waiting_run);
            self.stats.plc -= waited;
            self.stats.comfort_noise += run + waited;
        }
        if now - n + ahead > bound && !self.packets.is_empty() {
            // Far behind (the audio side stalled, or the peer's clock jumped): the audio up to
            // the target is stale; drop it instead of playing it late or fast.
            n = self.drop_stale(n, now + ahead - target);
        }
        let offset = now - n + ahead;
        if let Some(p) = self.packets.remove(&n) {
            self.expand_run = 0;
            self.waiting_run = 0;
            self.next_ts = Some(n + p.dur);
            self.last_seq = Some(p.seq);
            self.last_dur = p.dur;
            self.scratch.clear();
            let ok = self.decode_into_scratch(&p.payload);
            if !ok {
                self.conceal(p.dur);
                self.stats.plc += 1;
                return Some(FrameKind::Plc);
            }
            // Over target by more than a packet and a hysteresis, or by a packet of FEC room
            // no longer needed: drop this packet's audio (its slot's offset stays on target).
            // The room is given back only once a second of packets (or a full window) has
            // come, so that a target still learning the jitter can grow into it instead (then
            // nothing is owed).
            let settled = self.transits.len() == self.cfg.window
                || self.transits.len() as i64 * self.last_dur >= i64::from(RATE);
            // And only in a pause (an unvoiced packet), where dropping audio is not heard.
            let shed =
                settled && !p.voice && self.fec_room_owed >= p.dur && offset >= target + p.dur;
            if offset < target + p.dur {
                // Less than a packet over target: the room is gone already (the target grew
                // into it), and none is owed any more.
                self.fec_room_owed = 0;
            }
            let accelerate = (offset > target + p.dur + GRAIN * 4 || shed)
                && self.packets.contains_key(&(n + p.dur));
            if accelerate {
                self.stats.accelerate += 1;
                if shed {
                    // A pause: its audio goes whole (nothing audible to keep continuous), and
                    // the slot grid moves by exactly the room owed.
                    self.fec_room_owed -= p.dur;
                    return Some(FrameKind::Normal);
                }
                return Some(self.accelerate_into(n + p.dur));
            }
            self.fifo.extend(self.scratch.drain(..));
            self.stats.normal += 1;
            return Some(FrameKind::Normal);
        }
        let Some((later_ts, later_seq, later_fec, later_dur)) = self
            .packets
            .first_key_value()
            .map(|(&t, p)| (t, p.seq, p.fec, p.dur))
        else {
            // Nothing buffered: late, lost or silent, cannot tell yet. Wait (conceal without
            // advancing) while within the delay bound; past it, let the timeline move on.
            self.conceal(self.last_dur);
            if offset < bound {
                self.stats.expand += 1;
                self.expand_run += 1;
                return Some(FrameKind::Expand);
            }
            self.next_ts = Some(n + self.last_dur);
            self.stats.plc += 1;
            self.waiting_run += 1;
            return Some(FrameKind::Plc);
        };
        let silent = self.last_seq.is_some_and(|s| later_seq == s + 1);
        if offset < target {
            self.conceal(self.last_dur);
            return Some(if silent {
                self.stats.comfort_noise += 1;
                FrameKind::ComfortNoise
            } else {
                self.stats.expand += 1;
                self.expand_run += 1;
                FrameKind::Expand
            });
        }
        let fec = !silent && later_fec;
        // Skip what is behind target, keeping the slot FEC can rebuild.
        let end = if fec { later_ts - later_dur } else { later_ts };
        let desired = now + ahead - target;
        if desired > n && end > n {
            // Whole packets only, so what follows stays on the sender's frame grid (a pull
            // lands anywhere within a frame of the target; that is not lateness).
            let unit = self.last_dur.max(GRAIN);
            let jump = ((desired.min(end) - n) / unit) * unit;
            if jump > 0 {
                n += jump;
                self.skipped(jump);
            }
        }
        let gap = ((later_ts - n) / GRAIN) * GRAIN;
        if gap <= 0 {
            // Skipped up to the packet (or its timestamp is off the 2.5 ms grid): play it next.
            self.next_ts = Some(later_ts);
            return Some(FrameKind::Normal);
        }
        let d = gap.min(self.last_dur.max(GRAIN));
        self.next_ts = Some(n + d);
        if fec && n + d == later_ts {
            self.scratch.clear();
            let next = &self.packets[&later_ts].payload;
            match self.decoder.recover(next, d as usize, &mut self.scratch) {
                Ok(_) => {
                    self.fifo.extend(self.scratch.drain(..));
                    self.stats.fec += 1;
                    return Some(FrameKind::Fec);
                }
                Err(_) => self.stats.decode_errors += 1,
            }
        }
        self.conceal(d);
        Some(if silent {
            self.stats.comfort_noise += 1;
            FrameKind::ComfortNoise
        } else {
            self.stats.plc += 1;
            FrameKind::Plc
        })
    }

    /// Accelerates in speech: the slot just decoded (in `scratch`) and the packet at `next`
    /// (here, or there would be no accelerate) play shortened by about a frame, cut where the
    /// audio repeats best ([`shorten`]). Dropping the slot's audio whole left a step and a
    /// phase jump in the waveform, a click in voiced speech. What is cut short of a frame
    /// stays decoded ahead in the FIFO, which the offset counts, so the next decision sees it.
    fn accelerate_into(&mut self, next: i64) -> FrameKind {
        let p = self
            .packets
            .remove(&next)
            .expect("accelerate needs the next packet");
        self.next_ts = Some(next + p.dur);
        self.last_seq = Some(p.seq);
        self.last_dur = p.dur;
        let first = std::mem::take(&mut self.scratch);
        let ok = self.decode_into_scratch(&p.payload);
        if !ok {
            self.scratch = first;
            self.conceal(p.dur);
            self.stats.plc += 1;
            return FrameKind::Plc;
        }
        self.fifo.extend(shorten(&first, &self.scratch));
        // The first slot's buffer serves as scratch again.
        self.scratch = first;
        self.scratch.clear();
        self.stats.normal += 1;
        FrameKind::Normal
    }

    fn decode_into_scratch(&mut self, payload: &[u8]) -> bool {
        match self.decoder.decode(payload, &mut self.scratch) {
            Ok(_) => true,
            Err(_) => {
                self.stats.decode_errors += 1;
                false
            }
        }
    }

    fn conceal(&mut self, samples: i64) {
        self.scratch.clear();
        let samples = samples.max(GRAIN) as usize;
        if self.decoder.conceal(samples, &mut self.scratch).is_err() {
            self.stats.decode_errors += 1;
            self.scratch.clear();
        }
        // Whatever the decoder did, the slot's length is what the timeline needs.
        self.scratch.resize(samples, 0.0);
        self.fifo.extend(self.scratch.drain(..));
    }
}

/// Crossfade of an accelerate's cut: 5 ms, about one pitch period of a low voice.
const CUT_FADE: usize = 240;

/// Two consecutive stretches of decoded audio joined with between half of `a`'s length and
/// all of it taken out (WSOLA's idea, as NetEQ's accelerate): the cut starts a quarter into
/// `a` and skips the lag whose following 5 ms best match the 5 ms before it, preferring the
/// longest lag among near-best peaks of the match; in voiced speech that is a whole number of
/// pitch periods, so the waveform goes on in phase. The 5 ms at the cut are crossfaded.
fn shorten(a: &[f32], b: &[f32]) -> Vec<f32> {
    let x: Vec<f32> = a.iter().chain(b).copied().collect();
    let l = a.len();
    let w = CUT_FADE.min(l / 4);
    if w == 0 || b.len() < w {
        return b.to_vec();
    }
    let s = l / 4;
    let head = &x[s..s + w];
    let energy = |v: &[f32]| v.iter().map(|&y| f64::from(y) * f64::from(y)).sum::<f64>();
    let e0 = energy(head);
    let lags = (l / 2).max(1)..=l.min(x.len() - s - w);
    let score = |r: usize| {
        let tail = &x[s + r..s + r + w];
        let dot: f64 = head
            .iter()
            .zip(tail)
            .map(|(&p, &q)| f64::from(p) * f64::from(q))
            .sum();
        let norm = (e0 * energy(tail)).sqrt();
        if norm > 0.0 { dot / norm } else { 0.0 }
    };
    let scores: Vec<(usize, f64)> = lags.map(|r| (r, score(r))).collect();
    let best = scores.iter().map(|&(_, c)| c).fold(f64::MIN, f64::max);
    // The longest lag at a peak of the match (a whole number of periods, not a sample or
    // two beside one) that is nearly as good as the best.
    let peak = |i: usize| {
        let c = scores[i].1;
        (i == 0 || scores[i - 1].1 <= c) && scores.get(i + 1).is_none_or(|n| n.1 <= c)
    };
    let lag = (0..scores.len())
        .rev()
        .find(|&i| scores[i].1 >= best - 0.05 && peak(i))
        .map_or(l, |i| scores[i].0);
    let mut out = Vec::with_capacity(x.len() - lag);
    out.extend_from_slice(&x[..s]);
    for i in 0..w {
        let g = (i as f32 + 0.5) / w as f32;
        out.push(x[s + i] * (1.0 - g) + x[s + lag + i] * g);
    }
    out.extend_from_slice(&x[s + lag + w..]);
    out
}

/// Samples of `d` at 48 kHz.
pub fn samples_of(d: Duration) -> i64 {
    (d.as_nanos() * u128::from(RATE) / 1_000_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::OpusSettings;
    use crate::media::codec::{Encoded, Encoder};

    /// One 20 ms Opus packet of a steady 440 Hz tone (sent again and again by the tests).
    fn tone_packet() -> Vec<u8> {
        let mut enc = Encoder::new(OpusSettings::default()).unwrap();
        let tone: Vec<f32> = (0..960).map(|i| (i as f32 * 0.0575).sin() * 0.3).collect();
        match enc.encode(&tone).unwrap() {
            Encoded::Packet(p) => p.to_vec(),
            Encoded::Dtx => panic!("a tone is not silence"),
        }
    }

    /// One packet an hour ahead (a sender's bug, or a peer meddling with its own audio) takes
    /// playout there; the stream's packets that follow are then an hour late, and after three
    /// of them playout restarts on their timeline instead of dropping them all.
    #[test]
    fn a_timeline_jump_restarts_playout() {
        let p = tone_packet();
        let mut jb = JitterBuffer::new(PlayoutConfig::default(), Decoder::new().unwrap());
        let hour = 3600 * i64::from(RATE);
        let (mut kinds, mut late) = (Vec::new(), Vec::new());
        for k in 0..200i64 {
            let ts = if k == 50 { k * 960 + hour } else { k * 960 };
            let r = jb.insert(k * 960 + 48, k as u64, ts, p.clone(), false);
            if r.is_err() {
                late.push(k);
            }
            kinds.push(jb.pop(k * 960 + 480).kind);
        }
        // Dropped: the two before the third restarts playout.
        assert_eq!(late, [51, 52]);
        assert_eq!(jb.stats().restarts, 1);
        assert!(
            kinds[60..].iter().all(|k| *k == FrameKind::Normal),
            "{:?}",
            &kinds[45..80]
        );
        // Packets that waited in a queue through an outage are late, not a new timeline.
        let mut jb = JitterBuffer::new(PlayoutConfig::default(), Decoder::new().unwrap());
        for k in 0..50i64 {
            jb.insert(k * 960 + 48, k as u64, k * 960, p.clone(), false)
                .unwrap();
            let _ = jb.pop(k * 960 + 480);
        }
        for k in 50..500i64 {
            let _ = jb.pop(k * 960 + 480);
        }
        for k in 50..60i64 {
            let r = jb.insert(500 * 960, k as u64, k * 960, p.clone(), false);
            assert_eq!(r, Err(Refused::Late));
        }
        assert_eq!(jb.stats().restarts, 0);
    }

    /// Ten minutes of a steady tone from a sender whose clock is `ppm` off ours, each packet
    /// arriving 20 ms after it was sent. Returns (accelerates, expands and concealments after
    /// the first minute, mean buffering of minute 10 less that of minute 3 in ms).
    fn drifting(ppm: f64) -> (u64, u64, f64) {
        let payload = tone_packet();
        let mut jb = JitterBuffer::new(PlayoutConfig::default(), Decoder::new().unwrap());
        let (mut seq, mut sent_at) = (0u64, 0.0f64);
        let mut minute_one = PlayoutStats::default();
        let mean = |d: &[f64]| d.iter().sum::<f64>() / d.len() as f64;
        let (mut third, mut tenth) = (Vec::new(), Vec::new());
        for pop in 0..30_000i64 {
            let now = pop * 960;
            // The sender's 20 ms are 960 / (1 + ppm) of our samples.
            while sent_at + 960.0 <= now as f64 {
                let ts = seq as i64 * 960;
                jb.insert(sent_at as i64 + 960, seq, ts, payload.clone(), false)
                    .unwrap();
                seq += 1;
                sent_at += 960.0 / (1.0 + ppm * 1e-6);
            }
            let _ = jb.pop(now);
            let s = jb.stats();
            match pop / 3000 {
                1 if pop == 3000 => minute_one = s.clone(),
                2 => third.push(s.delay_ms),
                9 => tenth.push(s.delay_ms),
                _ => {}
            }
        }
        let s = jb.stats();
        (
            s.accelerate - minute_one.accelerate,
            s.expand + s.plc - minute_one.expand - minute_one.plc,
            mean(&tenth) - mean(&third),
        )
    }

    /// Twenty minutes of a tone from a sender `ppm` off our clock whose packets take 10 ms
    /// plus up to 4 ms of seeded jitter. Returns (accelerates, expands and concealments after
    /// the estimate settled at two minutes, the spread of the reported buffering since then in
    /// ms).
    fn drifting_with_jitter(ppm: f64) -> (u64, u64, f64) {
        let payload = tone_packet();
        let mut jb = JitterBuffer::new(PlayoutConfig::default(), Decoder::new().unwrap());
        let (mut seq, mut sent_at, mut seed) = (0u64, 0.0f64, 11u64);
        let mut settled = PlayoutStats::default();
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        for pop in 0..60_000i64 {
            let now = pop * 960;
            while sent_at + 960.0 <= now as f64 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let jitter = (seed >> 33) as i64 % 192;
                let ts = seq as i64 * 960;
                let _ = jb.insert(
                    sent_at as i64 + 480 + jitter,
                    seq,
                    ts,
                    payload.clone(),
                    false,
                );
                seq += 1;
                sent_at += 960.0 / (1.0 + ppm * 1e-6);
            }
            let _ = jb.pop(now);
            if pop == 6_000 {
                settled = jb.stats().clone();
            }
            if pop > 6_000 {
                lo = lo.min(jb.stats().delay_ms);
                hi = hi.max(jb.stats().delay_ms);
            }
        }
        let s = jb.stats();
        (
            s.accelerate - settled.accelerate,
            s.expand + s.plc - settled.expand - settled.plc,
            hi - lo,
        )
    }

    /// With jitter, a corrected drift moves where each packet's audio starts within our
    /// frames (the read ratio leaves up to a frame decoded ahead), so a packet is needed up
    /// to a frame before its slot: without room for that, it was missed every 200 s (a 20 ms
    /// concealment), and the reported buffering swung by a frame over the same period.
    #[test]
    fn a_corrected_drift_under_jitter_glitches_no_more_than_no_drift() {
        let (acc0, con0, spread0) = drifting_with_jitter(0.0);
        for ppm in [100.0, -100.0] {
            let (acc, con, spread) = drifting_with_jitter(ppm);
            assert!(
                acc + con <= acc0 + con0,
                "{ppm} ppm: {acc} accelerated, {con} concealed; without drift {acc0}, {con0}"
            );
            assert!(
                spread < spread0 + 5.0,
                "{ppm} ppm: the buffering moved over {spread:.1} ms; without drift {spread0:.1}"
            );
        }
    }

    /// A sender 100 ppm fast or slow: no periodic accelerate or expand (a 20 ms glitch every
    /// 200 s uncorrected), and the buffering does not grow or shrink over the call.
    #[test]
    fn clock_drift_is_absorbed_without_glitches_or_a_growing_delay() {
        for ppm in [100.0, -100.0] {
            let (accelerated, concealed, grew_ms) = drifting(ppm);
            assert_eq!((accelerated, concealed), (0, 0), "{ppm} ppm");
            assert!(
                grew_ms.abs() < 5.0,
                "{ppm} ppm: the delay moved {grew_ms:.1} ms"
            );
        }
    }
}

#[cfg(test)]
mod playout_tests {
    use std::f32::consts::TAU;

    use super::*;
    use crate::media::OpusSettings;
    use crate::media::codec::{Encoded, Encoder, has_fec};

    /// `n` packets of a steady 20 ms frame: a tone, or silence (still sent: no DTX), coded
    /// with in-band FEC or without.
    fn packets(n: usize, loud: bool, fec: bool) -> Vec<Vec<u8>> {
        packets_where(n, |_| loud, fec)
    }

    /// `n` packets of 20 ms, packet k a tone if `loud(k)`, else silence.
    fn packets_where(n: usize, loud: impl Fn(usize) -> bool, fec: bool) -> Vec<Vec<u8>> {
        let mut enc = Encoder::new(OpusSettings {
            loss_percent: if fec { 10 } else { 0 },
            fec,
            ..OpusSettings::default()
        })
        .unwrap();
        (0..n)
            .map(|k| {
                let amp = if loud(k) { 1.0 } else { 0.0 };
                // Voiced-ish (a moving resonance over 150 Hz), so the encoder codes FEC.
                let pcm: Vec<f32> = (k * 960..(k + 1) * 960)
                    .map(|i| {
                        let t = i as f32 / RATE as f32;
                        let f = 300.0 + 1500.0 * (0.5 + 0.5 * (TAU * 0.7 * t).sin());
                        amp * (0.3 * (TAU * f * t).sin() + 0.2 * (TAU * 150.0 * t).sin())
                    })
                    .collect();
                match enc.encode(&pcm).unwrap() {
                    Encoded::Packet(p) => p.to_vec(),
                    Encoded::Dtx => panic!("DTX is off"),
                }
            })
            .collect()
    }

    /// Plays `payloads` (packet k sent at k frames, 1 ms on the way, the `lost` ones never
    /// arriving), one pull a frame at `phase`, up to two frames before the end. Returns the
    /// statistics and, per pull, how long the next slot's packet had been waiting (samples;
    /// negative: not here yet), which is a packet's worth more when the buffer keeps room.
    fn play(payloads: &[Vec<u8>], lost: &[usize], phase: i64) -> (PlayoutStats, Vec<i64>) {
        play_red(payloads, lost, phase, false)
    }

    /// [`play`], and with `red` each packet after the first carries a copy of the one before.
    fn play_red(
        payloads: &[Vec<u8>],
        lost: &[usize],
        phase: i64,
        red: bool,
    ) -> (PlayoutStats, Vec<i64>) {
        let mut jb = JitterBuffer::new(PlayoutConfig::default(), Decoder::new().unwrap());
        let (mut next, mut waits) = (0, Vec::new());
        for pull in 0..payloads.len() as i64 - 2 {
            let now = pull * 960 + phase;
            while next < payloads.len() && next as i64 * 960 + 48 <= now {
                let k = next as i64;
                let copy = red && k > 0;
                if !lost.contains(&next) {
                    jb.insert(
                        k * 960 + 48,
                        k as u64,
                        k * 960,
                        payloads[next].clone(),
                        copy,
                    )
                    .unwrap();
                    if copy {
                        let _ =
                            jb.insert_copy(k as u64 - 1, (k - 1) * 960, payloads[next - 1].clone());
                    }
                }
                next += 1;
            }
            let _ = jb.pop(now);
            waits.push(now - jb.next_ts.unwrap_or(0) - 48);
        }
        (jb.stats().clone(), waits)
    }

    /// A clean stream plays with no room for FEC (a packet of delay for nothing); the first
    /// loss makes the room with one expand, FEC rebuilds that loss and the next from the
    /// packets after them, and nothing is concealed.
    #[test]
    fn room_for_fec_is_made_by_the_first_loss_and_used_from_then_on() {
        let p = packets(80, true, true);
        let with_fec = p.iter().filter(|x| has_fec(x)).count();
        assert!(
            !has_fec(&p[0]) && with_fec > 60,
            "{with_fec} of 80 with FEC"
        );
        for phase in [96, 480, 900] {
            let (s, waits) = play(&p, &[], phase);
            assert_eq!((s.expand, s.plc, s.accelerate), (0, 0, 0), "{s:?}");
            assert!(
                waits[5..].iter().all(|&w| w < 0),
                "phase {phase}: {waits:?}"
            );
            let (s, waits) = play(&p, &[20, 50], phase);
            assert_eq!((s.fec, s.plc, s.expand), (2, 0, 1), "phase {phase}: {s:?}");
            assert!(
                waits[25..].iter().all(|&w| w >= 0),
                "phase {phase}: {waits:?}"
            );
        }
    }

    /// A stream without FEC whose packets carry copies of the ones before (RED): the first
    /// loss makes the same room FEC gets, and each lost packet plays whole from its copy.
    #[test]
    fn copies_fill_lost_slots_in_time() {
        let p = packets(80, true, false);
        assert!(p.iter().all(|x| !has_fec(x)));
        for phase in [96, 480, 900] {
            let (s, waits) = play_red(&p, &[20, 50], phase, true);
            assert_eq!(
                (s.red_filled, s.fec, s.plc, s.expand),
                (2, 0, 0, 1),
                "phase {phase}: {s:?}"
            );
            assert_eq!(s.normal, 77, "phase {phase}: {s:?}");
            assert!(
                waits[25..].iter().all(|&w| w >= 0),
                "phase {phase}: {waits:?}"
            );
            // Without copies the same losses are concealed, and no room is kept for them.
            let (s, _) = play_red(&p, &[20, 50], phase, false);
            assert_eq!((s.red_filled, s.plc), (0, 2), "phase {phase}: {s:?}");
        }
        // A copy whose slot has played, or whose packet came, changes nothing.
        let mut jb = JitterBuffer::new(PlayoutConfig::default(), Decoder::new().unwrap());
        jb.insert(48, 0, 0, p[0].clone(), false).unwrap();
        jb.insert(1008, 1, 960, p[1].clone(), true).unwrap();
        assert_eq!(jb.insert_copy(0, 0, p[0].clone()), Err(Refused::Duplicate));
        let _ = jb.pop(2000);
        assert_eq!(jb.insert_copy(0, 0, p[0].clone()), Err(Refused::Late));
        assert_eq!(jb.insert_copy(0, 0, vec![]), Err(Refused::Undecodable));
        assert_eq!(jb.stats().red_filled, 0);
    }

    /// Once the loss that made room for FEC has left the window, the room is given back with
    /// one accelerate in a pause, at whatever phase playout runs (kept, it cost a clean stream
    /// a packet of delay; the general accelerate rule sheds it only in the upper half of a
    /// frame).
    #[test]
    fn room_for_fec_is_given_back_in_a_pause_once_the_loss_is_past() {
        // Talk spurts of 600 ms with pauses of 200 ms; one loss, at 0.4 s.
        let p = packets_where(300, |k| k % 40 < 30, true);
        for phase in [0, 96, 400, 480, 600, 912] {
            let (s, waits) = play(&p, &[20], phase);
            assert_eq!(
                (s.fec, s.plc, s.expand, s.accelerate),
                (1, 0, 1, 1),
                "phase {phase}: {s:?}"
            );
            assert!(
                waits[30..100].iter().all(|&w| w >= 0),
                "phase {phase}: {waits:?}"
            );
            // After the window (100 packets) and the pause that follows it.
            assert!(
                waits[165..].iter().all(|&w| w < 0),
                "phase {phase}: {waits:?}"
            );
        }
    }

    /// A steady tone whose packets stall for 60 ms once (a delay spike: the buffer expands
    /// while nothing is there, then holds 60 ms too many) is brought back to its target by
    /// accelerating in the tone itself, and the played waveform stays continuous: no step
    /// bigger than a few times the tone's own largest (a whole frame dropped at a random phase
    /// jumps by up to twice its amplitude), and no dip in its level where the cut was made.
    #[test]
    fn accelerating_in_speech_keeps_the_waveform_continuous() {
        let mut enc = Encoder::new(OpusSettings::default()).unwrap();
        let hz = 330.0f32;
        let amp = 0.3f32;
        let payloads: Vec<Vec<u8>> = (0..150)
            .map(|k| {
                let pcm: Vec<f32> = (k * 960..(k + 1) * 960)
                    .map(|i| amp * (TAU * hz * i as f32 / RATE as f32).sin())
                    .collect();
                match enc.encode(&pcm).unwrap() {
                    Encoded::Packet(p) => p.to_vec(),
                    Encoded::Dtx => panic!("DTX is off"),
                }
            })
            .collect();
        // Packets 50-52 arrive together, with packet 53; everything else 1 ms after sending.
        let arrival = |k: i64| {
            if (50..53).contains(&k) {
                53 * 960 + 48
            } else {
                k * 960 + 48
            }
        };
        let mut jb = JitterBuffer::new(PlayoutConfig::default(), Decoder::new().unwrap());
        let (mut next, mut played, mut accelerated_at) = (0i64, Vec::new(), Vec::new());
        for pull in 0..145i64 {
            let now = pull * 960 + 480;
            while next < 150 && arrival(next) <= now {
                jb.insert(
                    arrival(next),
                    next as u64,
                    next * 960,
                    payloads[next as usize].clone(),
                    false,
                )
                .unwrap();
                next += 1;
            }
            let before = jb.stats().accelerate;
            played.extend(jb.pop(now).pcm);
            if jb.stats().accelerate > before {
                accelerated_at.push(pull);
            }
        }
        let s = jb.stats().clone();
        assert!(s.expand >= 2 && s.accelerate >= 1, "{s:?}");
        assert!(
            s.delay_ms <= s.target_delay_ms + 20.0,
            "back on target: {s:?}"
        );
        // From the start of the tone on (the first pulls are silence, then the decoder's
        // onset), up to the end.
        let start = played.iter().position(|&x| x.abs() > amp / 2.0).unwrap() + 960;
        let steepest = (TAU * hz / RATE as f32) * amp;
        let (worst, at) = played[start..]
            .windows(2)
            .enumerate()
            .map(|(i, w)| ((w[1] - w[0]).abs(), i + start))
            .fold((0.0f32, 0), |m, x| if x.0 > m.0 { x } else { m });
        // And no dip where the cut was crossfaded (the decoder's own concealment of the stall
        // fades the tone out, which is before): every 5 ms from the pull after the stall on
        // keeps most of the tone's level (0.21).
        let quietest = played[54 * 960..]
            .chunks_exact(240)
            .map(|c| (c.iter().map(|x| x * x).sum::<f32>() / c.len() as f32).sqrt())
            .fold(f32::MAX, f32::min);
        assert!(quietest > 0.15, "a 5 ms stretch at RMS {quietest}");
        assert!(
            worst < 3.0 * steepest,
            "a step of {worst:.3} at sample {at} (pull {}; the tone's steepest {steepest:.3}); accelerated at pulls {accelerated_at:?}",
            at / 960
        );
    }

    /// On a periodic signal the cut takes out the longest whole number of periods that fits
    /// in a frame (here 6 of 145.45 samples: 873), so the output goes on in phase.
    #[test]
    fn a_cut_takes_whole_periods() {
        let period = 48_000.0 / 330.0;
        let x: Vec<f32> = (0..1920).map(|i| (TAU * i as f32 / period).sin()).collect();
        let out = shorten(&x[..960], &x[960..]);
        let cut = 1920 - out.len();
        assert!((872..=874).contains(&cut), "{cut}");
        // Continuing the sine from where the cut left it: the tail is x shifted by the cut.
        let err = out[400..]
            .iter()
            .zip(&x[400 + cut..])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 0.03, "{err}");
    }
}
