//! Receiver reports: RTCP's receiver-report block (RFC 3550 §6.4.1) and its LSR/DLSR round
//! trip, in a compact payload of our own, sealed like media under [`PayloadType::Report`].
//!
//! ```text
//! offset size  field
//!  0     1     flags: bit 0 = bytes 1..13 are valid (audio has been received),
//!                     bit 1 = bytes 17..25 are valid (a report of the peer has been received)
//!  1     1     fraction lost since the previous report, ×256 (RFC 3550 §6.4.1)
//!  2     3     cumulative packets lost, 24-bit two's complement (negative with duplicates)
//!  5     4     extended highest sequence number received
//!  9     4     interarrival jitter, 48 kHz timestamp units (RFC 3550 §6.4.1, A.8)
//! 13     4     sent at: the sender's report clock, 1/65536 s since its session began
//! 17     4     LSR: the "sent at" of the last report received from the peer
//! 21     4     DLSR: time between receiving that report and sending this one, 1/65536 s
//! 25     4     audio packets sent (RFC 3550's sender packet count)
//! 29     4     audio payload octets sent
//!                                                                              = 33 bytes
//! ```
//!
//! Round-trip time: the sender of the report the LSR echoes computes `arrival - LSR - DLSR`
//! on its own clock (RFC 3550 §6.4.1), so the two clocks need not agree. The report clock is
//! RFC 3550's "middle 32 bits of NTP" in spirit: 16.16 fixed-point seconds, wrapping after 18
//! hours; only differences are used.
//!
//! [`PayloadType::Report`]: super::packet::PayloadType::Report

use std::time::Duration;

use serde::Serialize;

use super::codec::RATE;

/// Payload length.
pub const REPORT_LEN: usize = 33;
const HAS_RECEPTION: u8 = 0x01;
const HAS_ECHO: u8 = 0x02;

/// The receiver-report block: how our audio fared at the peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reception {
    pub fraction_lost: u8,
    pub cumulative_lost: i32,
    pub highest_seq: u32,
    pub jitter: u32,
}

/// One report, as on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub reception: Option<Reception>,
    pub sent_at: u32,
    /// (LSR, DLSR).
    pub echo: Option<(u32, u32)>,
    pub packets_sent: u32,
    pub octets_sent: u32,
}

impl Report {
    pub fn encode(&self) -> [u8; REPORT_LEN] {
        let mut b = [0u8; REPORT_LEN];
        let r = self.reception.unwrap_or_default();
        b[0] = if self.reception.is_some() {
            HAS_RECEPTION
        } else {
            0
        } | if self.echo.is_some() { HAS_ECHO } else { 0 };
        b[1] = r.fraction_lost;
        let lost = r.cumulative_lost.clamp(-(1 << 23), (1 << 23) - 1) as u32;
        b[2..5].copy_from_slice(&lost.to_be_bytes()[1..]);
        b[5..9].copy_from_slice(&r.highest_seq.to_be_bytes());
        b[9..13].copy_from_slice(&r.jitter.to_be_bytes());
        b[13..17].copy_from_slice(&self.sent_at.to_be_bytes());
        let (lsr, dlsr) = self.echo.unwrap_or_default();
        b[17..21].copy_from_slice(&lsr.to_be_bytes());
        b[21..25].copy_from_slice(&dlsr.to_be_bytes());
        b[25..29].copy_from_slice(&self.packets_sent.to_be_bytes());
        b[29..33].copy_from_slice(&self.octets_sent.to_be_bytes());
        b
    }

    /// Parses a payload; `None` if its length or flags are not version 1's.
    pub fn parse(b: &[u8]) -> Option<Report> {
        let b: &[u8; REPORT_LEN] = b.try_into().ok()?;
        if b[0] & !(HAS_RECEPTION | HAS_ECHO) != 0 {
            return None;
        }
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        // Sign-extend the 24-bit count.
        let lost = (u32::from_be_bytes([b[2], b[3], b[4], 0]) as i32) >> 8;
        Some(Report {
            reception: (b[0] & HAS_RECEPTION != 0).then(|| Reception {
                fraction_lost: b[1],
                cumulative_lost: lost,
                highest_seq: u32_at(5),
                jitter: u32_at(9),
            }),
            sent_at: u32_at(13),
            echo: (b[0] & HAS_ECHO != 0).then(|| (u32_at(17), u32_at(21))),
            packets_sent: u32_at(25),
            octets_sent: u32_at(29),
        })
    }
}

/// The report clock: 1/65536 s units of `d`, wrapping.
pub fn report_clock(d: Duration) -> u32 {
    ((d.as_nanos() << 16) / 1_000_000_000) as u32
}

/// A report-clock difference as a duration.
pub fn from_report_clock(units: u32) -> Duration {
    Duration::from_nanos(((u128::from(units) * 1_000_000_000) >> 16) as u64)
}

/// The round trip a report's echo shows, received at `arrival` on our report clock. `None` when
/// the result would be negative (a clock step, or a forged... though reports authenticate).
pub fn round_trip(arrival: u32, lsr: u32, dlsr: u32) -> Option<Duration> {
    let rtt = arrival.wrapping_sub(lsr).wrapping_sub(dlsr);
    (rtt < 1 << 31).then(|| from_report_clock(rtt))
}

/// Reception statistics of the peer's audio (RFC 3550 Appendix A.1, A.3, A.8).
#[derive(Clone, Debug, Default)]
pub struct ReceptionStats {
    base_seq: Option<u64>,
    max_seq: u64,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Jitter in timestamp units (RFC 3550 keeps it scaled by 16 in integers; a float is
    /// clearer and the same estimator: J += (|D| - J) / 16).
    jitter: f64,
    last_transit: Option<i64>,
    reordered: u64,
    last_fraction: u8,
}

impl ReceptionStats {
    /// Accounts one authenticated audio packet: extended sequence number, unwrapped timestamp,
    /// arrival on our clock in timestamp units.
    pub fn on_packet(&mut self, seq: u64, ts: i64, arrival: i64) {
        match self.base_seq {
            None => {
                self.base_seq = Some(seq);
                self.max_seq = seq;
            }
            Some(base) => {
                if seq > self.max_seq {
                    self.max_seq = seq;
                } else {
                    self.reordered += 1;
                }
                if seq < base {
                    self.base_seq = Some(seq);
                }
            }
        }
        self.received += 1;
        // RFC 3550 §6.4.1: D(i-1,i) = (Rj - Ri) - (Sj - Si), in arrival order.
        let transit = arrival - ts;
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    /// Packets expected: highest minus first sequence number, plus one.
    pub fn expected(&self) -> u64 {
        self.base_seq.map_or(0, |b| self.max_seq - b + 1)
    }

    /// Cumulative loss (negative when duplicates outnumber losses, RFC 3550 A.3).
    pub fn lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    pub fn jitter(&self) -> Duration {
        Duration::from_secs_f64(self.jitter / f64::from(RATE))
    }

    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    /// The fraction lost in the last report interval, 0..=1.
    pub fn last_fraction(&self) -> f64 {
        f64::from(self.last_fraction) / 256.0
    }

    /// The block for a report, closing the interval. `None` before any audio arrived.
    pub fn report(&mut self) -> Option<Reception> {
        self.base_seq?;
        let expected = self.expected();
        let expected_interval = expected - self.expected_prior;
        let received_interval = self.received - self.received_prior;
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        self.last_fraction = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        Some(Reception {
            fraction_lost: self.last_fraction,
            cumulative_lost: self.lost().clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
            highest_seq: self.max_seq as u32,
            jitter: self.jitter.round() as u32,
        })
    }
}

/// What the peer said about our audio, and the round trip.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PeerReport {
    /// Loss in the peer's last interval, 0..=1.
    pub fraction_lost: f64,
    pub cumulative_lost: i64,
    pub jitter_ms: f64,
    /// The latest round-trip time, if the report echoed one of ours.
    pub rtt_ms: Option<f64>,
    /// Audio packets the peer says it has sent.
    pub packets_sent: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer_and_round_trip() {
        let r = Report {
            reception: Some(Reception {
                fraction_lost: 25,
                cumulative_lost: -3,
                highest_seq: 0x0001_0203,
                jitter: 480,
            }),
            sent_at: 0x0001_8000,
            echo: Some((0x11, 0x22)),
            packets_sent: 7,
            octets_sent: 0x0102,
        };
        let b = r.encode();
        assert_eq!(
            b,
            [
                3, 25, 0xff, 0xff, 0xfd, 0, 1, 2, 3, 0, 0, 1, 0xe0, 0, 1, 0x80, 0, 0, 0, 0, 0x11,
                0, 0, 0, 0x22, 0, 0, 0, 7, 0, 0, 1, 2
            ]
        );
        assert_eq!(Report::parse(&b), Some(r));
        let empty = Report::default();
        assert_eq!(Report::parse(&empty.encode()), Some(empty));
        assert_eq!(Report::parse(&b[..32]), None);
        let mut bad = b;
        bad[0] = 4;
        assert_eq!(Report::parse(&bad), None);
    }

    #[test]
    fn clock_and_rtt() {
        assert_eq!(report_clock(Duration::from_millis(1500)), 0x0001_8000);
        let rtt = round_trip(0x0002_0000, 0x0001_0000, 0x0000_8000).unwrap();
        assert_eq!(rtt, Duration::from_millis(500));
        assert_eq!(round_trip(0x10, 0x20, 0), None);
        // Across the wrap.
        let rtt = round_trip(0x0000_4000, 0xffff_c000, 0).unwrap();
        assert_eq!(rtt, Duration::from_millis(500));
    }

    #[test]
    fn loss_fraction_and_jitter() {
        let mut s = ReceptionStats::default();
        // 100 packets, every 10th missing, perfectly timed: 10 % loss, no jitter.
        for i in 0..100u64 {
            if i % 10 != 3 {
                s.on_packet(i, i as i64 * 960, i as i64 * 960 + 5000);
            }
        }
        let r = s.report().unwrap();
        assert_eq!(u32::from(r.fraction_lost), (10u32 << 8) / 100);
        assert_eq!((r.cumulative_lost, r.highest_seq, r.jitter), (10, 99, 0));
        // Alternating ±480 samples of delay: |D| = 960 every packet, J converges to 960.
        for i in 100..400u64 {
            let wobble = if i % 2 == 0 { 480 } else { -480 };
            s.on_packet(i, i as i64 * 960, i as i64 * 960 + 5000 + wobble);
        }
        let r = s.report().unwrap();
        assert_eq!(r.fraction_lost, 0);
        assert!((r.jitter as i64 - 960).abs() <= 2, "{}", r.jitter);
    }
}
