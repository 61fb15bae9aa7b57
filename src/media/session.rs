//! [`MediaSession`]: one call's media, both directions, as a sans-IO state machine.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::codec::{CodecError, Decoder, Encoded, Encoder, FrameDuration, OpusSettings, RATE, Vbr};
use super::config::MediaConfig;
use super::dtmf::{DtmfDigit, DtmfError, DtmfReceiver, DtmfSender, EventPayload, Outgoing};
use super::jitter::{Frame, JitterBuffer, PlayoutStats, Refused, samples_of};
use super::packet::PayloadType;
use super::rate::{self, RateControl};
use super::red;
use super::report::{PeerReport, ReceptionStats, Report, report_clock, round_trip};
use super::seal::{KeyError, MediaKeys, OpenError, Opener, Role, Sealer};

/// Why a session could not be made or an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The keys cannot be used (see [`KeyError`]).
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// A setting is out of range; the message names it.
    #[error("media config: {0}")]
    Config(&'static str),
    /// libopus refused a setting or failed to encode.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Something the application should know.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The peer pressed a digit (each digit once).
    Dtmf(DtmfDigit),
    /// The peer's receiver report arrived: how our audio fares there, and the round trip.
    Report(PeerReport),
}

/// What we sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SendStats {
    pub audio_packets: u64,
    /// Opus payload bytes (before sealing), copies not included.
    pub audio_bytes: u64,
    /// Audio packets that carried a copy of the one before (RED), and the copies' bytes with
    /// the RED framing.
    pub red_packets: u64,
    pub red_bytes: u64,
    /// Frames not sent because they were DTX silence.
    pub dtx_frames: u64,
    pub dtmf_packets: u64,
    pub reports: u64,
    /// Datagrams dropped because the driver did not poll them in time.
    pub queue_overflow: u64,
}

/// What we received and used.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReceiveStats {
    /// Datagrams that authenticated and were used (every other input is in [`Drops`]).
    pub accepted: u64,
    /// Audio packets that authenticated, late ones included (they arrived, just too late).
    pub audio_packets: u64,
    pub audio_bytes: u64,
    pub dtmf_packets: u64,
    pub reports: u64,
    /// Audio packets the peer sent as far as we can tell (RFC 3550 A.3).
    pub expected: u64,
    /// Audio packets lost on the way (cumulative; late ones count as received).
    pub lost: i64,
    /// Loss in the last report interval, 0..=1.
    pub fraction_lost: f64,
    /// RFC 3550 interarrival jitter.
    pub jitter_ms: f64,
    /// Audio packets that arrived after a later one.
    pub reordered: u64,
}

/// Inputs dropped, by reason. Each datagram given to
/// [`handle_input`](MediaSession::handle_input) is counted once: here or in
/// [`ReceiveStats::accepted`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Drops {
    /// Not our header, or too short.
    pub malformed: u64,
    /// A payload type we do not speak.
    pub unknown_type: u64,
    /// Another stream id than the peer's.
    pub wrong_stream: u64,
    /// Index seen before: a network duplicate or a replay.
    pub duplicate: u64,
    /// Older than the replay window.
    pub too_old: u64,
    /// Failed authentication: tampered, forged, reflected or under another key.
    pub forged: u64,
    /// Authenticated but its payload is invalid (not Opus, not a keypad event, not a report).
    pub bad_payload: u64,
    /// Audio that came after its slot was played or concealed, or a second copy of a slot.
    pub late: u64,
}

impl Drops {
    pub fn total(&self) -> u64 {
        self.malformed
            + self.unknown_type
            + self.wrong_stream
            + self.duplicate
            + self.too_old
            + self.forged
            + self.bad_payload
            + self.late
    }
}

/// A snapshot of everything measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MediaStats {
    pub sent: SendStats,
    pub received: ReceiveStats,
    pub drops: Drops,
    pub playout: PlayoutStats,
    /// Latest round trip from the report echo.
    pub rtt_ms: Option<f64>,
    /// The peer's latest report.
    pub peer: Option<PeerReport>,
    /// The encoder's current bitrate and expected loss.
    pub bitrate: u32,
    pub loss_percent: u8,
}

/// One call's media, both directions: Opus encoding and decoding, end-to-end sealing, the
/// jitter buffer, receiver reports and DTMF. Sans-IO: it never reads a clock, touches a socket
/// or spawns anything; time comes in as `now` on every call and must not go backwards.
///
/// Inputs:
/// - [`handle_input`](Self::handle_input): a datagram from the peer (the driver's demultiplexer
///   sends it here when its first byte is 128-191).
/// - [`send_audio`](Self::send_audio): captured PCM (48 kHz mono), any amount; every whole
///   frame is encoded, sealed and queued. [`skip_audio`](Self::skip_audio) for time not sent.
/// - [`send_dtmf`](Self::send_dtmf): a digit to send as RFC 4733 events.
/// - [`handle_timeout`](Self::handle_timeout): when [`poll_timeout`](Self::poll_timeout) says.
///
/// Outputs, to drain after each input, in any order:
/// - [`poll_transmit`](Self::poll_transmit): sealed datagrams for the peer.
/// - [`poll_event`](Self::poll_event): digits received, the peer's reports.
/// - [`poll_timeout`](Self::poll_timeout): when to call `handle_timeout` next.
///
/// Playout: [`pop_frame`](Self::pop_frame), pulled by the audio side every frame (20 ms).
///
/// Settings: [`set_opus`](Self::set_opus) and its shorthands change the encoder mid-call.
pub struct MediaSession {
    config: MediaConfig,
    /// Our clock's zero: the media (48 kHz) and report clocks count from here.
    epoch: Instant,
    sealer: Sealer,
    opener: Opener,
    encoder: Encoder,
    /// Captured PCM short of a frame.
    pending: Vec<f32>,
    /// Timestamp of the next frame to encode (48 kHz, unwrapped).
    send_ts: i64,
    /// The next audio packet starts a talkspurt (marker bit).
    talkspurt: bool,
    /// The last audio packet sent, while the next frame follows it: (its timestamp, its Opus
    /// bytes), what a RED packet carries a copy of.
    last_packet: Option<(i64, Vec<u8>)>,
    /// Send RED now: the peer reports random loss on a path with room (see `on_report`).
    red: bool,
    jitter: JitterBuffer,
    reception: ReceptionStats,
    dtmf_tx: DtmfSender,
    dtmf_rx: DtmfReceiver,
    dtmf_out: Vec<Outgoing>,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    next_report: Instant,
    /// The peer's last report: its clock reading and when it arrived (for LSR/DLSR).
    peer_clock: Option<(u32, Instant)>,
    peer: Option<PeerReport>,
    rtt: Option<Duration>,
    /// Smoothed loss the peer reports, 0..=1, what FEC is sized for.
    loss_estimate: f64,
    /// A report has shown loss (other than a rate cut's): until then `loss_estimate` is only
    /// the configuration's guess, which must not raise the rate.
    loss_seen: bool,
    sent: SendStats,
    received: ReceiveStats,
    drops: Drops,
    /// Audio packets sent and received, when [`MediaConfig::trace`] is on.
    trace: VecDeque<TraceRecord>,
    rate: RateControl,
    /// When the last receiver report came, and our send counters then (packets, Opus bytes):
    /// what we sent in the interval the next report describes.
    sent_mark: (Instant, u64, u64),
}

/// One audio packet in the media trace ([`MediaConfig::trace`]): the call-quality bench
/// decodes the sent Opus packets offline with the receiver's loss pattern, to compare the
/// call's sound with what plain concealment or FEC alone would give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceRecord {
    /// We sent this Opus packet at `at`; `ts` is its 48 kHz timestamp, counted from the first
    /// frame; `red`: with a copy of the packet before (RED).
    Sent {
        ts: i64,
        opus: Vec<u8>,
        red: bool,
        at: Instant,
    },
    /// An authenticated audio packet with timestamp `ts` arrived `at_ms` after the session
    /// started, at `at` (`late`: after its slot was played, so it was not heard).
    Received {
        ts: i64,
        at_ms: u64,
        late: bool,
        at: Instant,
    },
    /// A frame of `samples` was handed to playout for the instant `at` (the audio clock's tick
    /// it was pulled for, which the driver may run a little behind). With the sent packets' times this
    /// gives the pipeline's delay: a sound's place in the recording (every played frame, in
    /// order) says which played frame carried it, hence when it was played.
    Played { samples: usize, at: Instant },
}

impl MediaSession {
    /// A session starting at `now`, with this call's keys and our `role` in the handshake that
    /// made them.
    pub fn new(
        now: Instant,
        keys: &MediaKeys,
        role: Role,
        config: MediaConfig,
    ) -> Result<MediaSession, MediaError> {
        config.validate().map_err(MediaError::Config)?;
        let (sealer, opener) = keys.for_role(role, config.stream)?;
        let encoder = Encoder::new(config.opus)?;
        let jitter = JitterBuffer::new(config.playout.clone(), Decoder::new()?);
        Ok(MediaSession {
            epoch: now,
            sealer,
            opener,
            encoder,
            pending: Vec::with_capacity(FrameDuration::Ms60.samples()),
            send_ts: 0,
            talkspurt: true,
            last_packet: None,
            red: false,
            jitter,
            reception: ReceptionStats::default(),
            dtmf_tx: DtmfSender::new(config.dtmf.clone()),
            dtmf_rx: DtmfReceiver::new(&config.dtmf),
            dtmf_out: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_report: now + config.report_interval,
            peer_clock: None,
            peer: None,
            rtt: None,
            // Until the first report, what the configuration expects.
            loss_estimate: f64::from(config.opus.loss_percent) / 100.0,
            loss_seen: false,
            sent: SendStats::default(),
            received: ReceiveStats::default(),
            drops: Drops::default(),
            trace: VecDeque::new(),
            rate: RateControl::new(config.opus.bitrate, config.opus.frame),
            sent_mark: (now, 0, 0),
            config,
        })
    }

    // ----- inputs -------------------------------------------------------------------------

    /// A datagram from the peer. Never fails: what is not usable is dropped and counted in
    /// [`Drops`].
    pub fn handle_input(&mut self, now: Instant, datagram: &[u8]) {
        let opened = match self.opener.open(datagram) {
            Ok(o) => o,
            Err(e) => {
                let d = &mut self.drops;
                *match e {
                    OpenError::Malformed => &mut d.malformed,
                    OpenError::UnknownType => &mut d.unknown_type,
                    OpenError::WrongStream => &mut d.wrong_stream,
                    OpenError::Duplicate => &mut d.duplicate,
                    OpenError::TooOld => &mut d.too_old,
                    OpenError::Forged => &mut d.forged,
                } += 1;
                return;
            }
        };
        let h = opened.header;
        match h.payload_type {
            PayloadType::Opus => {
                self.on_audio(now, opened.index, h.timestamp, opened.payload, false);
            }
            PayloadType::Red => {
                let Some(r) = red::parse(&opened.payload) else {
                    self.drops.bad_payload += 1;
                    return;
                };
                let copy = r.copy.map(|(offset, c)| (offset, c.to_vec()));
                let primary = r.primary.to_vec();
                if self.on_audio(now, opened.index, h.timestamp, primary, copy.is_some())
                    && let Some((offset, c)) = copy
                {
                    let ts = self.jitter.unwrap_ts(h.timestamp.wrapping_sub(offset));
                    // Late or already here is the common case (the packet was not lost); an
                    // undecodable copy is the sender's bug, not worth a drop of the packet.
                    if let Some(seq) = opened.index.checked_sub(1) {
                        let _ = self.jitter.insert_copy(seq, ts, c);
                    }
                }
            }
            PayloadType::Dtmf => match EventPayload::parse(&opened.payload) {
                Some(p) => {
                    self.dtmf_rx.on_packet(now, h.timestamp, p);
                    while let Some(d) = self.dtmf_rx.poll() {
                        self.events.push_back(Event::Dtmf(d));
                    }
                    self.received.dtmf_packets += 1;
                    self.accept();
                }
                None => self.drops.bad_payload += 1,
            },
            PayloadType::Report => match Report::parse(&opened.payload) {
                Some(r) => {
                    self.on_report(now, r);
                    self.received.reports += 1;
                    self.accept();
                }
                None => self.drops.bad_payload += 1,
            },
        }
    }

    fn accept(&mut self) {
        self.received.accepted += 1;
    }

    /// An authenticated Opus packet (alone or a RED packet's primary) with index `index`;
    /// `copy`: it came with a copy of the one before. False when its payload was not Opus.
    fn on_audio(
        &mut self,
        now: Instant,
        index: u64,
        timestamp: u32,
        payload: Vec<u8>,
        copy: bool,
    ) -> bool {
        let arrival = self.clock(now);
        let ts = self.jitter.unwrap_ts(timestamp);
        let len = payload.len() as u64;
        let mut late = false;
        match self.jitter.insert(arrival, index, ts, payload, copy) {
            Ok(()) => self.accept(),
            Err(Refused::Undecodable) => {
                self.drops.bad_payload += 1;
                return false;
            }
            Err(Refused::Late | Refused::Duplicate) => {
                self.drops.late += 1;
                late = true;
            }
        }
        if self.config.trace {
            let at_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
            self.trace.push_back(TraceRecord::Received {
                ts,
                at_ms,
                late,
                at: now,
            });
        }
        // Late packets still arrived: they count for loss and jitter.
        self.reception.on_packet(index, ts, arrival);
        self.received.audio_packets += 1;
        self.received.audio_bytes += len;
        true
    }

    /// Captured audio: 48 kHz mono, any number of samples. Every whole frame is encoded, and
    /// sealed and queued unless it is DTX silence. (`now` is unused today; the call-quality
    /// work's send-side rate control will want the capture time.)
    pub fn send_audio(&mut self, now: Instant, pcm: &[f32]) -> Result<(), MediaError> {
        self.pending.extend_from_slice(pcm);
        let mut at = 0;
        let result = loop {
            // Read each time: a new frame duration applies from the next frame.
            let frame = self.encoder.settings().frame.samples();
            if self.pending.len() - at < frame {
                break Ok(());
            }
            if let Err(e) = self.encode(now, at, frame) {
                break Err(e);
            }
            at += frame;
        };
        self.pending.drain(..at);
        result
    }

    /// Encodes `pending[at..at + len]` and queues the packet.
    fn encode(&mut self, now: Instant, at: usize, len: usize) -> Result<(), MediaError> {
        let frame_ts = self.send_ts;
        let ts = frame_ts as u32;
        self.send_ts += len as i64;
        match self.encoder.encode(&self.pending[at..at + len])? {
            Encoded::Dtx => {
                self.sent.dtx_frames += 1;
                self.talkspurt = true;
                self.last_packet = None;
            }
            Encoded::Packet(p) => {
                let marker = std::mem::take(&mut self.talkspurt);
                self.sent.audio_packets += 1;
                self.sent.audio_bytes += p.len() as u64;
                let red =
                    self.last_packet
                        .as_ref()
                        .filter(|_| self.red)
                        .and_then(|(last_ts, last)| {
                            red::encode(((frame_ts - last_ts) as u32, last), p)
                        });
                if self.config.trace {
                    self.trace.push_back(TraceRecord::Sent {
                        ts: frame_ts,
                        opus: p.to_vec(),
                        red: red.is_some(),
                        at: now,
                    });
                }
                let sealed = match &red {
                    Some(r) => {
                        self.sent.red_packets += 1;
                        self.sent.red_bytes += (r.len() - p.len()) as u64;
                        self.sealer.seal(PayloadType::Red, marker, ts, r)
                    }
                    None => self.sealer.seal(PayloadType::Opus, marker, ts, p),
                };
                if self.config.redundancy {
                    let mut buf = self.last_packet.take().map(|l| l.1).unwrap_or_default();
                    buf.clear();
                    buf.extend_from_slice(p);
                    self.last_packet = Some((frame_ts, buf));
                }
                if let Some(d) = sealed {
                    self.queue(d);
                }
            }
        }
        Ok(())
    }

    /// Advances the media clock over `duration` of audio that will not be sent (hold, or mute
    /// without DTX), so the peer's playout stays in step (RFC 3550 §5.1: the timestamp follows
    /// the sampling clock even when nothing is sent). Drops any partial frame.
    pub fn skip_audio(&mut self, duration: Duration) {
        self.pending.clear();
        self.last_packet = None;
        self.send_ts += samples_of(duration);
        self.talkspurt = true;
    }

    /// Queues `digit` (0-9, *, #, A-D) held for `duration`; its first packet goes at once if no
    /// other digit is sounding.
    pub fn send_dtmf(
        &mut self,
        now: Instant,
        digit: char,
        duration: Duration,
    ) -> Result<(), DtmfError> {
        self.dtmf_tx.push(digit, duration)?;
        self.run_dtmf(now);
        Ok(())
    }

    fn run_dtmf(&mut self, now: Instant) {
        let mut out = std::mem::take(&mut self.dtmf_out);
        self.dtmf_tx.poll(now, self.send_ts, &mut out);
        for (marker, ts, payload) in out.drain(..) {
            if let Some(d) = self.sealer.seal(PayloadType::Dtmf, marker, ts, &payload) {
                self.sent.dtmf_packets += 1;
                self.queue(d);
            }
        }
        self.dtmf_out = out;
    }

    /// Runs the timers due at `now`: receiver reports, DTMF updates and retransmissions, the
    /// timeout of a received digit whose end never came.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_report {
            self.send_report(now);
            self.next_report += self.config.report_interval;
            if self.next_report <= now {
                // Called late (a stalled driver): no burst of catch-up reports.
                self.next_report = now + self.config.report_interval;
            }
        }
        self.run_dtmf(now);
        self.dtmf_rx.handle_timeout(now);
        while let Some(d) = self.dtmf_rx.poll() {
            self.events.push_back(Event::Dtmf(d));
        }
    }

    fn send_report(&mut self, now: Instant) {
        let clock = report_clock(now.saturating_duration_since(self.epoch));
        let report = Report {
            reception: self.reception.report(),
            sent_at: clock,
            echo: self
                .peer_clock
                .map(|(theirs, at)| (theirs, report_clock(now.saturating_duration_since(at)))),
            packets_sent: self.sent.audio_packets as u32,
            octets_sent: self.sent.audio_bytes as u32,
        };
        let ts = self.send_ts as u32;
        if let Some(d) = self
            .sealer
            .seal(PayloadType::Report, false, ts, &report.encode())
        {
            self.sent.reports += 1;
            self.queue(d);
        }
    }

    fn on_report(&mut self, now: Instant, r: Report) {
        let arrival = report_clock(now.saturating_duration_since(self.epoch));
        self.peer_clock = Some((r.sent_at, now));
        if let Some((lsr, dlsr)) = r.echo
            && let Some(rtt) = round_trip(arrival, lsr, dlsr)
        {
            self.rtt = Some(rtt);
        }
        let Some(rx) = r.reception else {
            return;
        };
        let peer = PeerReport {
            fraction_lost: f64::from(rx.fraction_lost) / 256.0,
            cumulative_lost: i64::from(rx.cumulative_lost),
            jitter_ms: f64::from(rx.jitter) * 1000.0 / f64::from(RATE),
            rtt_ms: self.rtt.map(ms),
            packets_sent: r.packets_sent,
        };
        let fraction = f64::from(rx.fraction_lost) / 256.0;
        let mut want = *self.encoder.settings();
        if self.config.adapt_rate {
            let (t, packets, bytes) = self.sent_mark;
            let secs = now.saturating_duration_since(t).as_secs_f64();
            let wire_bytes = (self.wire_payload() - bytes)
                + (self.sent.audio_packets - packets) * u64::from(rate::WIRE_OVERHEAD);
            let sent_bps = if secs > 0.0 {
                wire_bytes as f64 * 8.0 / secs
            } else {
                0.0
            };
            let c = self.rate.on_report(now, fraction, sent_bps, self.rtt);
            want.bitrate = c.bitrate;
            want.frame = c.frame;
            // Through a narrow link, unconstrained VBR's loud passages run ~20 % over the
            // average the controller measures, fill a short queue, and tail drops follow (the
            // lab's 32 kbit/s bench: 90-byte packets every 40 ms took the whole link, a report
            // on top overflowed it about once a second). Constrained VBR keeps each frame near
            // the target; constant bitrate, if configured, stays.
            if self.rate.overflowed() && self.config.opus.vbr == Vbr::Unconstrained {
                want.vbr = Vbr::Constrained;
            }
        }
        // Loss a rate cut answers (a queue overflowing) is not what FEC is for: sized to it,
        // FEC would eat the little rate left and narrow the audio band. Only other loss counts.
        let random = if self.config.adapt_rate && self.rate.cut_recently(now) {
            0.0
        } else {
            fraction
        };
        // Loss comes in bursts and one clean second says little: follow a rise at once, let a
        // fall pull the estimate down slowly (a fifth per report), so FEC is not switched off
        // between two lossy seconds.
        self.loss_estimate = if random >= self.loss_estimate {
            random
        } else {
            0.8 * self.loss_estimate + 0.2 * random
        };
        if self.config.auto_loss {
            want.loss_percent = (self.loss_estimate * 100.0).round() as u8;
        }
        self.loss_seen |= random > 0.0;
        // Redundancy is paid for on top of the bitrate: only under measured loss (not the
        // configured guess), on a path that never overflowed and at the controller's full rate.
        // Not under heavy loss: before the round trip is known that may be a queue overflowing
        // (a call's first report through a narrow link), and more rate would lose more.
        let room_for_redundancy = self.config.adapt_rate
            && self.loss_seen
            && (rate::FEC_BOOST_LOSS..rate::SEVERE_LOSS).contains(&self.loss_estimate)
            && fraction < rate::SEVERE_LOSS
            && !self.rate.overflowed()
            && want.bitrate >= self.config.opus.bitrate;
        // RED rebuilds a lost packet whole from the next one, which is all in-band FEC could
        // do, and better: FEC is then off and its bits go to the speech.
        self.red = room_for_redundancy && self.config.redundancy;
        want.fec = self.config.opus.fec && !self.red;
        if room_for_redundancy && want.fec {
            // In-band FEC is paid for out of the bitrate: pay it on top.
            let boosted = f64::from(self.config.opus.bitrate) * rate::FEC_BOOST;
            want.bitrate = (boosted as u32).min(512_000);
        }
        self.sent_mark = (now, self.sent.audio_packets, self.wire_payload());
        if want != *self.encoder.settings() {
            // Loss 0..=100, a bitrate the controller keeps within libopus's range and a frame
            // duration libopus takes: always accepted.
            let _ = self.encoder.apply(want);
        }
        self.peer = Some(peer.clone());
        self.events.push_back(Event::Report(peer));
    }

    /// Payload bytes sent in audio packets: Opus, and the copies RED added.
    fn wire_payload(&self) -> u64 {
        self.sent.audio_bytes + self.sent.red_bytes
    }

    fn queue(&mut self, datagram: Vec<u8>) {
        if self.transmits.len() >= self.config.send_queue {
            self.transmits.pop_front();
            self.sent.queue_overflow += 1;
        }
        self.transmits.push_back(datagram);
    }

    fn clock(&self, now: Instant) -> i64 {
        samples_of(now.saturating_duration_since(self.epoch))
    }

    // ----- outputs ------------------------------------------------------------------------

    /// The next sealed datagram for the peer.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The round trip of the path the media takes, measured outside the media (ICE's checks):
    /// the rate controller's unloaded baseline.
    pub fn note_path_rtt(&mut self, rtt: Duration) {
        self.rate.note_rtt(rtt);
    }

    /// The next media trace record (only with [`MediaConfig::trace`]).
    #[must_use]
    pub fn poll_trace(&mut self) -> Option<TraceRecord> {
        self.trace.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next run.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            Some(self.next_report),
            self.dtmf_tx.next_due(),
            self.dtmf_rx.next_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next frame of playout (one [`PlayoutConfig::frame`], 20 ms by default), pulled by the
    /// audio side on its own clock.
    ///
    /// [`PlayoutConfig::frame`]: super::PlayoutConfig::frame
    #[must_use]
    pub fn pop_frame(&mut self, now: Instant) -> Frame {
        let frame = self.jitter.pop(self.clock(now));
        if self.config.trace {
            self.trace.push_back(TraceRecord::Played {
                samples: frame.pcm.len(),
                at: now,
            });
        }
        frame
    }

    // ----- settings and state -------------------------------------------------------------

    /// The encoder's settings.
    pub fn opus(&self) -> &OpusSettings {
        self.encoder.settings()
    }

    /// Changes the encoder's settings (a new frame duration applies from the next frame).
    pub fn set_opus(&mut self, settings: OpusSettings) -> Result<(), MediaError> {
        let mut c = self.config.clone();
        c.opus = settings;
        c.validate().map_err(MediaError::Config)?;
        self.encoder.apply(settings)?;
        self.config.opus = settings;
        // The new settings are the most the rate controller may send.
        self.rate = RateControl::new(settings.bitrate, settings.frame);
        Ok(())
    }

    /// Target bitrate, bit/s.
    pub fn set_bitrate(&mut self, bitrate: u32) -> Result<(), MediaError> {
        self.set_opus(OpusSettings {
            bitrate,
            ..*self.opus()
        })
    }

    /// Discontinuous transmission on or off.
    pub fn set_dtx(&mut self, dtx: bool) -> Result<(), MediaError> {
        self.set_opus(OpusSettings {
            dtx,
            ..*self.opus()
        })
    }

    /// The loss FEC is sized for, percent (reports overwrite it while `auto_loss` is on).
    pub fn set_loss_percent(&mut self, loss_percent: u8) -> Result<(), MediaError> {
        self.set_opus(OpusSettings {
            loss_percent,
            ..*self.opus()
        })
    }

    /// Our stream id; the peer's once a packet of it authenticated.
    pub fn streams(&self) -> (u32, Option<u32>) {
        (self.sealer.stream(), self.opener.stream())
    }

    /// Whether any datagram from the peer authenticated yet.
    pub fn heard_peer(&self) -> bool {
        self.received.accepted > 0
    }

    /// Everything measured so far.
    pub fn stats(&self) -> MediaStats {
        let r = &self.reception;
        MediaStats {
            sent: self.sent.clone(),
            received: ReceiveStats {
                expected: r.expected(),
                lost: r.lost(),
                fraction_lost: r.last_fraction(),
                jitter_ms: ms(r.jitter()),
                reordered: r.reordered(),
                ..self.received.clone()
            },
            drops: self.drops.clone(),
            playout: self.jitter.stats().clone(),
            rtt_ms: self.rtt.map(ms),
            peer: self.peer.clone(),
            bitrate: self.opus().bitrate,
            loss_percent: self.opus().loss_percent,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::codec::FrameDuration;
    use crate::media::packet::Header;

    fn session(frame: FrameDuration) -> MediaSession {
        let keys = MediaKeys::new([1; 32], [2; 32]);
        let mut c = MediaConfig::default();
        c.opus.frame = frame;
        MediaSession::new(Instant::now(), &keys, Role::Initiator, c).unwrap()
    }

    #[test]
    fn partial_frames_and_a_shorter_frame_mid_way() {
        let now = Instant::now();
        let mut s = session(FrameDuration::Ms60);
        s.send_audio(now, &[0.1; 1000]).unwrap();
        assert!(s.poll_transmit().is_none());
        s.set_opus(OpusSettings {
            frame: FrameDuration::Ms10,
            ..*s.opus()
        })
        .unwrap();
        s.send_audio(now, &[]).unwrap();
        let ts: Vec<u32> = std::iter::from_fn(|| s.poll_transmit())
            .map(|d| Header::parse(&d).unwrap().timestamp)
            .collect();
        assert_eq!(ts, [0, 480]);
        // 40 samples wait; 440 more make the next frame.
        s.send_audio(now, &[0.1; 440]).unwrap();
        let d = s.poll_transmit().unwrap();
        assert_eq!(Header::parse(&d).unwrap().timestamp, 960);
    }

    /// The trace says when each packet left and arrived and when each frame went to playout:
    /// what the delay bench (`scripts/bench-delay`) measures the pipeline with.
    #[test]
    fn the_trace_times_sending_arrival_and_playout() {
        let c = MediaConfig {
            trace: true,
            ..MediaConfig::default()
        };
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0, c);
        let t1 = t0 + Duration::from_millis(20);
        a.send_audio(t1, &[0.2; 960]).unwrap();
        let d = a.poll_transmit().unwrap();
        let t2 = t1 + Duration::from_millis(7);
        b.handle_input(t2, &d);
        let t3 = t2 + Duration::from_millis(40);
        let frame = b.pop_frame(t3);
        assert!(
            matches!(a.poll_trace(), Some(TraceRecord::Sent { ts: 0, at, .. }) if at == t1),
            "sent at t1"
        );
        assert_eq!(
            b.poll_trace(),
            Some(TraceRecord::Received {
                ts: 0,
                at_ms: 27,
                late: false,
                at: t2
            })
        );
        assert_eq!(
            b.poll_trace(),
            Some(TraceRecord::Played {
                samples: frame.pcm.len(),
                at: t3
            })
        );
        assert_eq!(frame.pcm.len(), 960);
    }

    /// The two ends of one call, both with `c`.
    fn pair(t0: Instant, c: MediaConfig) -> (MediaSession, MediaSession) {
        let keys = MediaKeys::new([1; 32], [2; 32]);
        let a = MediaSession::new(t0, &keys, Role::Initiator, c.clone()).unwrap();
        let b = MediaSession::new(t0, &keys, Role::Responder, c).unwrap();
        (a, b)
    }

    /// One second of a call from `a` to `b`, every `drop_every`th packet lost (0: none), then
    /// `b`'s receiver report delivered to `a`.
    fn second(a: &mut MediaSession, b: &mut MediaSession, t0: Instant, s: u64, drop_every: u64) {
        let pcm: Vec<f32> = (0..960).map(|i| (i as f32 * 0.07).sin() * 0.3).collect();
        for k in 0..50 {
            let now = t0 + Duration::from_millis(s * 1000 + k * 20);
            a.send_audio(now, &pcm).unwrap();
            while let Some(d) = a.poll_transmit() {
                if drop_every == 0 || k % drop_every != drop_every - 1 {
                    b.handle_input(now, &d);
                }
            }
        }
        let now = t0 + Duration::from_secs(s + 1);
        b.handle_timeout(now);
        while let Some(d) = b.poll_transmit() {
            a.handle_input(now, &d);
        }
    }

    /// FEC is paid for out of the bitrate: without redundancy, measured random loss raises the
    /// rate by half for it, the configured loss guess alone does not, and clean reports bring
    /// it back.
    #[test]
    fn measured_random_loss_raises_the_rate_for_fec_and_clean_reports_restore_it() {
        let t0 = Instant::now();
        let c = MediaConfig {
            redundancy: false,
            ..MediaConfig::default()
        };
        let (mut a, mut b) = pair(t0, c);
        second(&mut a, &mut b, t0, 0, 0);
        assert_eq!(a.stats().peer.map(|p| p.fraction_lost), Some(0.0));
        assert_eq!(
            a.opus().bitrate,
            32_000,
            "the configured 5 % is only a guess"
        );
        for s in 1..3 {
            second(&mut a, &mut b, t0, s, 10);
        }
        assert!(a.stats().peer.unwrap().fraction_lost > 0.05);
        assert_eq!(a.opus().bitrate, 48_000);
        assert_eq!(a.stats().sent.red_packets, 0);
        for s in 3..15 {
            second(&mut a, &mut b, t0, s, 0);
        }
        assert_eq!(a.opus().bitrate, 32_000);
    }

    /// With redundancy (the default), the same measured loss switches in-band FEC off and
    /// sends each packet with a copy of the one before at the configured rate; the receiver
    /// plays every lost packet whole from its copy; clean reports switch back to FEC.
    #[test]
    fn measured_random_loss_sends_copies_and_they_fill_the_losses() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0, MediaConfig::default());
        second(&mut a, &mut b, t0, 0, 0);
        assert!(a.opus().fec && a.stats().sent.red_packets == 0);
        let pcm: Vec<f32> = (0..960).map(|i| (i as f32 * 0.07).sin() * 0.3).collect();
        let mut red_seconds = Vec::new();
        for s in 1..6u64 {
            let before = (a.stats().sent.red_packets, b.stats().playout.clone());
            // One second, every 10th packet lost, b playing a frame 10 ms after each arrival.
            for k in 0..50 {
                let now = t0 + Duration::from_millis(s * 1000 + k * 20);
                a.send_audio(now, &pcm).unwrap();
                while let Some(d) = a.poll_transmit() {
                    if k % 10 != 9 {
                        b.handle_input(now, &d);
                    }
                }
                let _ = b.pop_frame(now + Duration::from_millis(10));
            }
            let now = t0 + Duration::from_secs(s + 1);
            b.handle_timeout(now);
            while let Some(d) = b.poll_transmit() {
                a.handle_input(now, &d);
            }
            let p = b.stats().playout;
            red_seconds.push((
                a.stats().sent.red_packets - before.0,
                p.red_filled - before.1.red_filled,
                p.plc - before.1.plc,
            ));
        }
        // The first lossy second's report turns RED on; from then every packet carries a copy
        // and every loss plays from one (the first loss after the switch costs an expand to
        // make room, as FEC's does).
        assert_eq!(red_seconds[0].0, 0, "{red_seconds:?}");
        for &(sent, filled, plc) in &red_seconds[2..] {
            assert_eq!((sent, filled, plc), (50, 5, 0), "{red_seconds:?}");
        }
        assert!(!a.opus().fec, "FEC stays off while copies are sent");
        assert_eq!(a.opus().bitrate, 32_000);
        assert_eq!(b.stats().drops.bad_payload, 0);
        for s in 6..18 {
            second(&mut a, &mut b, t0, s, 0);
        }
        let sent = a.stats().sent.red_packets;
        second(&mut a, &mut b, t0, 18, 0);
        assert_eq!(
            a.stats().sent.red_packets,
            sent,
            "clean reports stop the copies"
        );
        assert!(a.opus().fec);
    }

    /// A call's first report through a narrow link: heavy loss, no round trip yet to show a
    /// queue. That is no loss to spend more rate on.
    #[test]
    fn heavy_loss_does_not_raise_the_rate() {
        let t0 = Instant::now();
        let (mut a, mut b) = pair(t0, MediaConfig::default());
        second(&mut a, &mut b, t0, 0, 2);
        assert!(a.stats().peer.unwrap().fraction_lost > 0.4);
        assert!(a.opus().bitrate <= 32_000, "{}", a.opus().bitrate);
    }

    #[test]
    fn bad_settings_and_keys_are_refused() {
        let keys = MediaKeys::new([1; 32], [1; 32]);
        let now = Instant::now();
        assert!(matches!(
            MediaSession::new(now, &keys, Role::Initiator, MediaConfig::default()),
            Err(MediaError::Keys(_))
        ));
        let keys = MediaKeys::new([1; 32], [2; 32]);
        let mut c = MediaConfig::default();
        c.playout.quantile = 1.5;
        assert!(matches!(
            MediaSession::new(now, &keys, Role::Initiator, c),
            Err(MediaError::Config(_))
        ));
        let mut s = session(FrameDuration::Ms20);
        assert!(s.set_loss_percent(101).is_err());
        assert!(s.set_dtx(true).is_ok());
        assert!(s.opus().dtx);
    }
}
