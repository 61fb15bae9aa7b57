//! Every setting, timer and bound of the media core, and how they relate.
//!
//! - Reports go out every [`MediaConfig::report_interval`] (1 s): often enough that FEC follows
//!   a change in loss within a couple of seconds, rare enough to cost nothing (45 bytes a
//!   second). RFC 3550 §6.2's 5 s minimum is for large sessions; a call has two members.
//! - DTMF (RFC 4733 §2.5.1): an update every [`DtmfConfig::update_interval`] (50 ms, the RFC's
//!   suggestion), the end packet [`DtmfConfig::end_repeats`] times (3, §2.5.1.4)
//!   [`DtmfConfig::end_spacing`] apart; the next digit starts [`DtmfConfig::gap`] after the last
//!   end packet. A receiver that hears nothing of an event for [`DtmfConfig::receive_timeout`]
//!   (several update intervals) closes it, so a digit whose end packets were all lost still
//!   arrives once.
//! - Playout: see [`PlayoutConfig`]; its `max_delay` bounds what any jitter can make it buffer,
//!   and `capacity` (packets) bounds memory whatever the peer sends.

use std::time::Duration;

use super::codec::{FrameDuration, OpusSettings};

/// Configuration of a [`MediaSession`](super::MediaSession).
#[derive(Clone, Debug, PartialEq)]
pub struct MediaConfig {
    /// This end's stream id (RTP's SSRC). The call core picks it at random; it lets a driver
    /// tell calls apart on one socket.
    pub stream: u32,
    pub opus: OpusSettings,
    pub playout: PlayoutConfig,
    pub report_interval: Duration,
    /// Set the encoder's expected loss (and so its FEC) from the peer's receiver reports.
    pub auto_loss: bool,
    pub dtmf: DtmfConfig,
    /// Most sealed datagrams waiting for [`poll_transmit`](super::MediaSession::poll_transmit);
    /// beyond that the oldest is dropped (and counted): a driver that stopped polling must not
    /// grow memory, and stale audio is worthless anyway.
    pub send_queue: usize,
    /// Keep a [`TraceRecord`](super::TraceRecord) of every audio packet sent and received,
    /// for [`poll_trace`](super::MediaSession::poll_trace): what the call-quality bench
    /// decodes offline to compare against. Off in normal calls.
    pub trace: bool,
    /// Adapt the send rate (Opus bitrate, then frame length) to the loss the peer reports
    /// ([`super::rate`]); `opus.bitrate` and `opus.frame` are then the most it sends.
    pub adapt_rate: bool,
    /// While the peer reports random loss and the path has the rate (the conditions under
    /// which in-band FEC would get more bitrate), send each audio packet with a copy of the
    /// one before (RFC 2198, see `red`) instead of in-band FEC: a lost packet is then rebuilt
    /// whole. It doubles the Opus payload rate (64 kbit/s at the default 32) where FEC's boost
    /// raised it by half. Needs `adapt_rate`.
    pub redundancy: bool,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            stream: 0,
            opus: OpusSettings::default(),
            playout: PlayoutConfig::default(),
            report_interval: Duration::from_secs(1),
            auto_loss: true,
            dtmf: DtmfConfig::default(),
            send_queue: 64,
            trace: false,
            adapt_rate: true,
            redundancy: true,
        }
    }
}

/// The jitter buffer's settings.
///
/// The buffer plays each packet a fixed time after its timestamp (the playout offset) and adapts
/// that offset: its target is the [`quantile`](Self::quantile) of the transit times (arrival
/// minus timestamp) of the last [`window`](Self::window) audio packets, plus one packet's worth
/// when packets carry FEC (a lost packet can only be rebuilt once the next one is in). So the
/// delay follows the measured jitter: a steady link gets almost no buffering, a jittery one as
/// much as its packets' delay spread needs, never more than [`max_delay`](Self::max_delay)
/// over the fastest packet.
#[derive(Clone, Debug, PartialEq)]
pub struct PlayoutConfig {
    /// Audio handed out per [`pop_frame`](super::MediaSession::pop_frame).
    pub frame: FrameDuration,
    /// Packets whose transit times make the delay estimate (100: 2 s of 20 ms packets).
    pub window: usize,
    /// The share of packets that should arrive in time (0.95: one in twenty may be late and is
    /// concealed like a lost one; more costs delay for every packet).
    pub quantile: f64,
    /// Upper bound on buffering over the fastest packet's transit.
    pub max_delay: Duration,
    /// Most packets held (64: 1.3 s of 20 ms packets, above `max_delay`).
    pub capacity: usize,
}

impl Default for PlayoutConfig {
    fn default() -> Self {
        PlayoutConfig {
            frame: FrameDuration::Ms20,
            window: 100,
            quantile: 0.95,
            max_delay: Duration::from_millis(400),
            capacity: 64,
        }
    }
}

/// RFC 4733 sending and receiving.
#[derive(Clone, Debug, PartialEq)]
pub struct DtmfConfig {
    pub update_interval: Duration,
    pub end_repeats: u8,
    pub end_spacing: Duration,
    pub gap: Duration,
    pub receive_timeout: Duration,
    /// Tone power for the volume field, -dBm0 (RFC 4733 §2.3.4), 0..=63.
    pub volume: u8,
}

impl Default for DtmfConfig {
    fn default() -> Self {
        DtmfConfig {
            update_interval: Duration::from_millis(50),
            end_repeats: 3,
            end_spacing: Duration::from_millis(20),
            gap: Duration::from_millis(60),
            receive_timeout: Duration::from_millis(300),
            volume: 10,
        }
    }
}

impl MediaConfig {
    /// Checks the relations the core relies on; the message names the setting.
    pub fn validate(&self) -> Result<(), &'static str> {
        let p = &self.playout;
        let d = &self.dtmf;
        let checks = [
            (p.window >= 1, "playout.window must be at least 1"),
            (
                (0.0..=1.0).contains(&p.quantile),
                "playout.quantile must be within 0..=1",
            ),
            (
                p.capacity >= 4,
                "playout.capacity must be at least 4 packets",
            ),
            (
                p.max_delay >= Duration::from_millis(20),
                "playout.max_delay must be at least 20 ms",
            ),
            (
                !self.report_interval.is_zero(),
                "report_interval must be positive",
            ),
            (self.send_queue >= 1, "send_queue must be at least 1"),
            (
                !d.update_interval.is_zero() && !d.end_spacing.is_zero(),
                "dtmf intervals must be positive",
            ),
            (d.end_repeats >= 1, "dtmf.end_repeats must be at least 1"),
            (
                d.receive_timeout > d.update_interval,
                "dtmf.receive_timeout must exceed dtmf.update_interval",
            ),
            (d.volume <= 63, "dtmf.volume must be within 0..=63"),
            (
                (500..=512_000).contains(&self.opus.bitrate),
                "opus.bitrate must be within 500..=512000 bit/s",
            ),
            (self.opus.complexity <= 10, "opus.complexity must be 0..=10"),
            (
                self.opus.loss_percent <= 100,
                "opus.loss_percent must be 0..=100",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err(why),
            None => Ok(()),
        }
    }
}
