//! DTMF as RFC 4733 telephone events: digits travel as sealed events, not as tones, so they
//! survive the codec, loss and concealment, and arrive exactly once.
//!
//! Payload (RFC 4733 §2.3), 4 bytes:
//!
//! ```text
//! byte 0     event: 0-9 the digits, 10 '*', 11 '#', 12-15 'A'-'D' (§3.2)
//! byte 1     E (bit 7, end of event) | R (bit 6, reserved, 0) | volume (bits 5-0, -dBm0)
//! bytes 2-3  duration so far, 48 kHz timestamp units, big-endian
//! ```
//!
//! The packet's timestamp is the event's start and names the event: every packet of one event
//! carries the same timestamp (§2.5.1.1), the first has the marker bit, updates follow every
//! 50 ms with the growing duration (§2.5.1.2), and the end packet goes three times (§2.5.1.4).
//! The sender gives each event a timestamp beyond the previous event's end, so a receiver tells
//! events apart by timestamp alone and reports each once: at its first end packet, or, if every
//! end packet was lost, when a later event starts or nothing more is heard of it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::codec::RATE;
use super::config::DtmfConfig;
use super::jitter::samples_of;

/// Payload length.
pub const EVENT_LEN: usize = 4;
/// The longest digit we send: the 16-bit duration field holds 1.36 s at 48 kHz, and longer
/// events would need RFC 4733 §2.5.1.3's segments, which no keypad needs.
pub const MAX_DIGIT: Duration = Duration::from_millis(1300);
/// The shortest: ITU-T Q.24's minimum tone length.
pub const MIN_DIGIT: Duration = Duration::from_millis(40);

/// The RFC 4733 event code of a keypad character.
pub fn event_code(digit: char) -> Option<u8> {
    Some(match digit.to_ascii_uppercase() {
        c @ '0'..='9' => c as u8 - b'0',
        '*' => 10,
        '#' => 11,
        c @ 'A'..='D' => c as u8 - b'A' + 12,
        _ => return None,
    })
}

/// The keypad character of an event code (0-15).
pub fn event_digit(code: u8) -> Option<char> {
    Some(match code {
        0..=9 => (b'0' + code) as char,
        10 => '*',
        11 => '#',
        12..=15 => (b'A' + code - 12) as char,
        _ => return None,
    })
}

/// One event packet's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventPayload {
    pub code: u8,
    pub end: bool,
    pub volume: u8,
    pub duration: u16,
}

impl EventPayload {
    pub fn encode(&self) -> [u8; EVENT_LEN] {
        let d = self.duration.to_be_bytes();
        [
            self.code,
            (u8::from(self.end) << 7) | (self.volume & 0x3f),
            d[0],
            d[1],
        ]
    }

    /// Parses a payload of a keypad event; `None` for other lengths or events (flash, tones).
    pub fn parse(b: &[u8]) -> Option<EventPayload> {
        let b: &[u8; EVENT_LEN] = b.try_into().ok()?;
        event_digit(b[0])?;
        Some(EventPayload {
            code: b[0],
            end: b[1] & 0x80 != 0,
            volume: b[1] & 0x3f,
            duration: u16::from_be_bytes([b[2], b[3]]),
        })
    }
}

/// A digit could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    /// Not one of 0-9, *, #, A-D.
    #[error("'{0}' is not a DTMF digit (0-9, *, #, A-D)")]
    NotADigit(char),
    /// Outside 40 ms..=1.3 s.
    #[error("DTMF digit of {0:?}: must be between 40 ms and 1.3 s")]
    Duration(Duration),
    /// More than 64 digits waiting (`QUEUE`).
    #[error("too many DTMF digits queued (at most {QUEUE})")]
    QueueFull,
}

/// Most digits waiting to be sent.
pub const QUEUE: usize = 64;

/// A packet to seal: (marker, timestamp, payload).
pub type Outgoing = (bool, u32, [u8; EVENT_LEN]);

struct Tone {
    code: u8,
    /// Event timestamp (unwrapped, our media clock).
    ts: i64,
    /// Total length, samples and time.
    total: u32,
    len: Duration,
    started: Instant,
    /// Packets sent so far (updates, then ends).
    updates: u32,
    ends: u8,
    next: Instant,
}

/// Sends queued digits on their schedule.
pub struct DtmfSender {
    cfg: DtmfConfig,
    queue: VecDeque<(u8, Duration)>,
    tone: Option<Tone>,
    /// When the next digit may start (after the previous one's gap).
    free_at: Option<Instant>,
    /// First timestamp the next event may use.
    free_ts: i64,
}

impl DtmfSender {
    pub fn new(cfg: DtmfConfig) -> DtmfSender {
        DtmfSender {
            cfg,
            queue: VecDeque::new(),
            tone: None,
            free_at: None,
            free_ts: 0,
        }
    }

    /// Queues `digit` for `duration`.
    pub fn push(&mut self, digit: char, duration: Duration) -> Result<(), DtmfError> {
        let code = event_code(digit).ok_or(DtmfError::NotADigit(digit))?;
        if !(MIN_DIGIT..=MAX_DIGIT).contains(&duration) {
            return Err(DtmfError::Duration(duration));
        }
        if self.queue.len() >= QUEUE {
            return Err(DtmfError::QueueFull);
        }
        self.queue.push_back((code, duration));
        Ok(())
    }

    /// When [`poll`](Self::poll) next has something to send.
    pub fn next_due(&self) -> Option<Instant> {
        match &self.tone {
            Some(t) => Some(t.next),
            None if !self.queue.is_empty() => self.free_at,
            None => None,
        }
    }

    /// Appends the packets due at `now` to `out`; `media_ts` is the audio timestamp now
    /// (events start no earlier than the audio they accompany).
    pub fn poll(&mut self, now: Instant, media_ts: i64, out: &mut Vec<Outgoing>) {
        loop {
            if self.tone.is_none() {
                if self.free_at.is_some_and(|t| now < t) {
                    return;
                }
                let Some((code, len)) = self.queue.pop_front() else {
                    return;
                };
                self.tone = Some(Tone {
                    code,
                    ts: media_ts.max(self.free_ts),
                    total: samples_of(len) as u32,
                    len,
                    started: now,
                    updates: 0,
                    ends: 0,
                    next: now,
                });
            }
            let cfg = &self.cfg;
            let tone = self.tone.as_mut().expect("set above");
            if now < tone.next {
                return;
            }
            // Update k goes out at k intervals and covers the event up to k + 1 intervals; the
            // first always goes at once (it carries the marker), the end at the tone's end.
            let interval = samples_of(cfg.update_interval) as u32;
            let k = tone.updates;
            let (end, duration) = if k == 0 || (k + 1).saturating_mul(interval) < tone.total {
                tone.updates += 1;
                tone.next = if (k + 2).saturating_mul(interval) < tone.total {
                    tone.started + cfg.update_interval * (k + 1)
                } else {
                    tone.started + tone.len
                };
                (false, (k + 1).saturating_mul(interval).min(tone.total))
            } else {
                tone.ends += 1;
                tone.next = tone.started + tone.len + cfg.end_spacing * u32::from(tone.ends);
                (true, tone.total)
            };
            let first = tone.updates + u32::from(tone.ends) == 1;
            let payload = EventPayload {
                code: tone.code,
                end,
                volume: cfg.volume,
                duration: duration.min(u32::from(u16::MAX)) as u16,
            };
            out.push((first, tone.ts as u32, payload.encode()));
            if end && tone.ends >= cfg.end_repeats {
                let after = tone.next - cfg.end_spacing + cfg.gap;
                self.free_ts = tone.ts + i64::from(tone.total) + samples_of(cfg.gap);
                self.free_at = Some(after);
                self.tone = None;
            }
        }
    }
}

/// A digit received.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DtmfDigit {
    pub digit: char,
    /// How long the sender held it (the last duration heard).
    pub duration_ms: f64,
}

struct Heard {
    ts: i64,
    code: u8,
    duration: u16,
    last: Instant,
}

/// Turns event packets into digits, each exactly once.
pub struct DtmfReceiver {
    timeout: Duration,
    current: Option<Heard>,
    /// The newest event already reported: packets of it or older are redundant.
    done_ts: Option<i64>,
    ts_ref: Option<i64>,
    digits: VecDeque<DtmfDigit>,
}

impl DtmfReceiver {
    pub fn new(cfg: &DtmfConfig) -> DtmfReceiver {
        DtmfReceiver {
            timeout: cfg.receive_timeout,
            current: None,
            done_ts: None,
            ts_ref: None,
            digits: VecDeque::new(),
        }
    }

    /// Takes an authenticated event packet.
    pub fn on_packet(&mut self, now: Instant, ts: u32, p: EventPayload) {
        let ts = match self.ts_ref {
            None => i64::from(ts),
            Some(r) => r + i64::from(ts.wrapping_sub(r as u32) as i32),
        };
        self.ts_ref = Some(self.ts_ref.map_or(ts, |r| r.max(ts)));
        if self.done_ts.is_some_and(|d| ts <= d) {
            return;
        }
        match &mut self.current {
            Some(h) if h.ts == ts => {
                h.duration = h.duration.max(p.duration);
                h.last = now;
            }
            Some(h) if h.ts > ts => return,
            _ => {
                self.finish();
                self.current = Some(Heard {
                    ts,
                    code: p.code,
                    duration: p.duration,
                    last: now,
                });
            }
        }
        if p.end {
            self.finish();
        }
    }

    fn finish(&mut self) {
        if let Some(h) = self.current.take() {
            self.done_ts = Some(h.ts);
            self.digits.push_back(DtmfDigit {
                digit: event_digit(h.code).expect("parsed events are keypad events"),
                duration_ms: f64::from(h.duration) * 1000.0 / f64::from(RATE),
            });
        }
    }

    /// When an unfinished event times out.
    pub fn next_due(&self) -> Option<Instant> {
        self.current.as_ref().map(|h| h.last + self.timeout)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_due().is_some_and(|t| now >= t) {
            self.finish();
        }
    }

    /// The next digit received.
    pub fn poll(&mut self) -> Option<DtmfDigit> {
        self.digits.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_known_answer() {
        for (c, code) in [
            ('0', 0),
            ('9', 9),
            ('*', 10),
            ('#', 11),
            ('A', 12),
            ('d', 15),
        ] {
            assert_eq!(event_code(c), Some(code));
            assert_eq!(event_digit(code), Some(c.to_ascii_uppercase()));
        }
        assert_eq!(event_code('E'), None);
        assert_eq!(event_digit(16), None);
        let p = EventPayload {
            code: 11,
            end: true,
            volume: 10,
            duration: 4800,
        };
        assert_eq!(p.encode(), [11, 0x8a, 0x12, 0xc0]);
        assert_eq!(EventPayload::parse(&p.encode()), Some(p));
        assert_eq!(EventPayload::parse(&[16, 0, 0, 0]), None);
        assert_eq!(EventPayload::parse(&[1, 0, 0]), None);
    }

    #[test]
    fn schedule_of_one_digit_and_redundancy() {
        let cfg = DtmfConfig::default();
        let mut tx = DtmfSender::new(cfg.clone());
        tx.push('5', Duration::from_millis(120)).unwrap();
        tx.push('#', Duration::from_millis(60)).unwrap();
        assert!(tx.push('x', Duration::from_millis(60)).is_err());
        assert!(tx.push('1', Duration::from_millis(5)).is_err());
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut times = Vec::new();
        let mut now = t0;
        for _ in 0..100 {
            let before = out.len();
            tx.poll(now, 0, &mut out);
            for _ in before..out.len() {
                times.push((now - t0).as_millis());
            }
            match tx.next_due() {
                Some(t) => now = t,
                None => break,
            }
        }
        // '5': updates at 0, 50, 100 ms (durations 50, 100 ms), end at 120, 140, 160 ms.
        // '#': starts 60 ms after the last end packet, at 220 ms: update at 220 ms (50 ms), ends
        // at 280, 300, 320.
        assert_eq!(times, [0, 50, 120, 140, 160, 220, 280, 300, 320]);
        let durs: Vec<u16> = out
            .iter()
            .map(|o| EventPayload::parse(&o.2).unwrap().duration)
            .collect();
        assert_eq!(durs, [2400, 4800, 5760, 5760, 5760, 2400, 2880, 2880, 2880]);
        let markers: Vec<bool> = out.iter().map(|o| o.0).collect();
        assert_eq!(
            markers,
            [true, false, false, false, false, true, false, false, false]
        );
        // The second event's timestamp is past the first's end.
        assert!(out[5].1 > out[0].1 + 5760);

        // Received with duplicates and the first end packet lost: each digit exactly once.
        let mut rx = DtmfReceiver::new(&cfg);
        for (i, o) in out.iter().enumerate() {
            if i == 2 {
                continue;
            }
            for _ in 0..2 {
                rx.on_packet(t0, o.1, EventPayload::parse(&o.2).unwrap());
            }
        }
        let got: Vec<char> = std::iter::from_fn(|| rx.poll()).map(|d| d.digit).collect();
        assert_eq!(got, ['5', '#']);
    }

    #[test]
    fn lost_end_packets_time_out_once() {
        let cfg = DtmfConfig::default();
        let mut rx = DtmfReceiver::new(&cfg);
        let t0 = Instant::now();
        let start = EventPayload {
            code: 7,
            end: false,
            volume: 10,
            duration: 2400,
        };
        rx.on_packet(t0, 1000, start);
        assert_eq!(rx.poll(), None);
        let due = rx.next_due().unwrap();
        rx.handle_timeout(due);
        assert_eq!(rx.poll().map(|d| d.digit), Some('7'));
        // A straggler of the same event after the timeout is redundant.
        rx.on_packet(due, 1000, EventPayload { end: true, ..start });
        assert_eq!(rx.poll(), None);
    }
}
