//! The tokio driver for [`crate::call::endpoint::Endpoint`]: the call socket, the supernode
//! streams (when UDP does not reach one), the relay stream (TURN over TCP, when UDP does not
//! reach the relay), timers, the 20 ms audio clock, commands in and events
//! out.
//!
//! Audio is attached per call as two channels of 20 ms frames (48 kHz mono `f32`): the driver
//! takes one captured frame per tick and gives one played frame per tick, so a file source is
//! paced in real time by the tick and a slow sink loses frames (counted) rather than stalling the
//! network side.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::streams::{Framing, StreamEvent, Streams};
use crate::call::endpoint::{Endpoint, EndpointEvent};
use crate::call::message::CallId;
use crate::identity::UserId;
use crate::net::Shutdown;
use crate::signal::Target;

/// Samples in one 20 ms frame at 48 kHz.
pub const FRAME: usize = 960;
const TICK: Duration = Duration::from_millis(20);

/// The audio clock's tick: 20 ms, or `ppm` shorter (a clock that fast; negative: slow). A test
/// knob: two ends on one machine share its clock, so drift between sound cards is made here.
pub fn audio_tick(ppm: f64) -> Duration {
    TICK.div_f64(1.0 + ppm.clamp(-10_000.0, 10_000.0) * 1e-6)
}

/// A call's audio: frames to send (closed: the source ended) and frames played.
pub struct CallAudio {
    pub capture: Option<mpsc::Receiver<Vec<f32>>>,
    pub playback: Option<mpsc::Sender<Vec<f32>>>,
}

/// What a program asks the running endpoint.
pub enum CallCommand {
    Dial(UserId),
    Accept(CallId),
    Reject(CallId, String),
    Hangup(CallId),
    Hold(CallId, bool),
    Mute(CallId, bool),
    Dtmf(CallId, String),
    Audio(CallId, CallAudio),
    Lookup(Target),
    Watch(UserId),
    Claim(String),
    /// Emit a `Stats` event for the call now.
    Stats(CallId),
}

/// What the running endpoint reports.
#[derive(Debug)]
pub enum DriverEvent {
    Endpoint(EndpointEvent),
    /// `Dial` could not place the call.
    DialFailed(String),
    /// A command about a call failed (no such call, not ringing, ...).
    Refused(String),
    /// The call's capture source ended (a file played to its end).
    CaptureEnded(CallId),
    /// `Dial` placed this call.
    Dialed(CallId),
}

struct Attached {
    audio: CallAudio,
    muted: bool,
    /// Playback frames the sink could not take.
    dropped: u64,
}

/// Runs `endpoint` on `socket` until `shutdown` fires or the command channel closes. `first`
/// is carried out before anything else: a fresh `dial`'s call, so that its invite is queued
/// before the agent's first handshake and rides in it (`AgentConfig::early_data`).
pub async fn run_endpoint(
    mut ep: Endpoint,
    socket: UdpSocket,
    mut commands: mpsc::Receiver<CallCommand>,
    events: mpsc::Sender<DriverEvent>,
    mut shutdown: Shutdown,
    tick_every: Duration,
    first: Option<CallCommand>,
) -> io::Result<Endpoint> {
    let mut buf = vec![0u8; 2048];
    let mut streams = Streams::new();
    let mut relay_streams = Streams::with(Framing::Turn);
    let mut audio: HashMap<CallId, Attached> = HashMap::new();
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut commands_open = true;
    if let Some(c) = first
        && let Some(ev) = on_command(&mut ep, &mut audio, &mut tick, c)
    {
        let _ = events.send(ev).await;
    }
    loop {
        flush(&mut ep, &socket, &mut streams, &mut relay_streams).await;
        while let Some(ev) = ep.poll_event() {
            if let EndpointEvent::Ended { call, .. } = &ev
                && let Some(a) = audio.remove(call)
                && a.dropped > 0
            {
                tracing::warn!(
                    "call {call}: {} ms of received audio were dropped: its sink fell behind",
                    a.dropped * TICK.as_millis() as u64
                );
            }
            if events.send(DriverEvent::Endpoint(ev)).await.is_err() {
                return Ok(ep);
            }
        }
        let sleep = crate::net::sleep_until(ep.poll_timeout());
        tokio::select! {
            _ = shutdown.wait() => {
                drain(&mut ep, &socket, &mut streams, &mut relay_streams).await;
                ep.close(Instant::now());
                flush(&mut ep, &socket, &mut streams, &mut relay_streams).await;
                streams.finish().await;
                relay_streams.finish().await;
                return Ok(ep);
            }
            _ = sleep => ep.handle_timeout(Instant::now()),
            at = tick.tick(), if !audio.is_empty() => {
                // Playout runs on the audio clock: each frame at its scheduled tick, however
                // late this task woke for it (a busy machine, a burst of catch-up ticks), as a
                // sound card consumes its buffer at its own pace. Deciding on the wake-up time
                // instead made the jitter buffer see a late wake as a late packet (expand) and
                // the catch-up as a surplus (accelerate): two glitches per stall.
                let now = Instant::now();
                let scheduled = at.into_std().min(now);
                let mut ended = Vec::new();
                for (call, a) in audio.iter_mut() {
                    if !ep.is_talking(call) {
                        // The peer may be heard before we can talk (see `Endpoint::hears`).
                        if ep.hears(call) {
                            play(&mut ep, scheduled, *call, a);
                        }
                        continue;
                    }
                    let Some(rx) = &mut a.audio.capture else {
                        // Nothing to say: silence (DTX sends little of it), so the peer hears
                        // the call is up and its playout runs.
                        if a.muted {
                            ep.skip_audio(*call, TICK);
                        } else {
                            ep.send_audio(now, *call, &SILENCE);
                        }
                        play(&mut ep, scheduled, *call, a);
                        continue;
                    };
                    {
                        match rx.try_recv() {
                            Ok(frame) if !a.muted => ep.send_audio(now, *call, &frame),
                            Ok(_) => ep.skip_audio(*call, TICK),
                            Err(mpsc::error::TryRecvError::Empty) => ep.skip_audio(*call, TICK),
                            Err(mpsc::error::TryRecvError::Disconnected) => {
                                a.audio.capture = None;
                                ended.push(*call);
                            }
                        }
                    }
                    play(&mut ep, scheduled, *call, a);
                }
                for call in ended {
                    let _ = events.send(DriverEvent::CaptureEnded(call)).await;
                }
            }
            Some((from, data)) = streams.incoming.recv() => {
                on_stream(&mut ep, &mut streams, from, data);
            }
            Some((from, data)) = relay_streams.incoming.recv() => {
                on_relay_stream(&mut ep, &mut relay_streams, from, data);
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => ep.handle_input(Instant::now(), from, &buf[..n]),
                // An ICMP error for an earlier send (a peer's closed port): nothing to do.
                Err(_) => tokio::task::yield_now().await,
            },
            cmd = commands.recv(), if commands_open => match cmd {
                Some(c) => {
                    // Answers to commands (a call placed, a refusal) go out with the events.
                    if let Some(ev) = on_command(&mut ep, &mut audio, &mut tick, c) {
                        let _ = events.send(ev).await;
                    }
                }
                None => commands_open = false,
            },
        }
    }
}

/// Carries out one command; what it answers (a call placed, a refusal), if anything.
fn on_command(
    ep: &mut Endpoint,
    audio: &mut HashMap<CallId, Attached>,
    tick: &mut tokio::time::Interval,
    c: CallCommand,
) -> Option<DriverEvent> {
    let now = Instant::now();
    let refused = |e: String| DriverEvent::Refused(e);
    let r: Result<(), DriverEvent> = match c {
        CallCommand::Dial(to) => match ep.dial(now, to) {
            Ok(call) => Err(DriverEvent::Dialed(call)),
            Err(e) => Err(DriverEvent::DialFailed(e)),
        },
        CallCommand::Accept(c) => ep.accept(now, c).map_err(refused),
        CallCommand::Reject(c, why) => ep.reject(now, c, &why).map_err(refused),
        CallCommand::Hangup(c) => ep.hangup(now, c).map_err(refused),
        CallCommand::Hold(c, h) => ep.hold(now, c, h).map_err(refused),
        CallCommand::Mute(c, m) => {
            if let Some(a) = audio.get_mut(&c) {
                a.muted = m;
            }
            Ok(())
        }
        CallCommand::Dtmf(c, digits) => digits
            .chars()
            .try_for_each(|d| ep.send_dtmf(now, c, d))
            .map_err(refused),
        // Audio for a call that ended meanwhile is dropped at once, which closes
        // its recording (kept, it would hold the file open forever).
        CallCommand::Audio(c, a) => {
            if ep.is_live(&c) {
                if audio.is_empty() {
                    // The clock was idle without audio: start it now, not with
                    // a burst of every tick missed since the endpoint started.
                    tick.reset_immediately();
                }
                audio.insert(
                    c,
                    Attached {
                        audio: a,
                        muted: false,
                        dropped: 0,
                    },
                );
            }
            Ok(())
        }
        CallCommand::Lookup(t) => {
            ep.lookup(now, t);
            Ok(())
        }
        CallCommand::Watch(u) => {
            ep.watch(now, u);
            Ok(())
        }
        CallCommand::Claim(n) => ep.claim(now, &n).map_err(refused),
        CallCommand::Stats(call) => match ep.media_stats(&call) {
            Some(s) => Err(DriverEvent::Endpoint(EndpointEvent::Stats {
                call,
                stats: Box::new(s),
            })),
            None => Ok(()),
        },
    };
    r.err()
}

const SILENCE: [f32; FRAME] = [0.0; FRAME];

/// How long a stopping endpoint keeps running for call messages still in flight. A program
/// exits right after its call ends (`dial` after a hang-up): the bye has been sent once, and
/// only the running session retransmits it when that one is lost. Two seconds cover several
/// of the session's retransmissions on a lossy path; `dial` waits three for the whole stop.
const DRAIN: Duration = Duration::from_secs(2);

/// Runs the endpoint's network side (no audio, no commands) until no call message is in
/// flight or [`DRAIN`] has passed.
async fn drain(
    ep: &mut Endpoint,
    socket: &UdpSocket,
    streams: &mut Streams,
    relay_streams: &mut Streams,
) {
    let until = Instant::now() + DRAIN;
    let mut buf = vec![0u8; 2048];
    loop {
        flush(ep, socket, streams, relay_streams).await;
        // Events of an endpoint being stopped have no reader any more.
        while ep.poll_event().is_some() {}
        if !ep.signals_pending() || Instant::now() >= until {
            return;
        }
        let wake = ep.poll_timeout().map_or(until, |t| t.min(until));
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => ep.handle_timeout(Instant::now()),
            Some((from, data)) = streams.incoming.recv() => {
                on_stream(ep, streams, from, data);
            }
            Some((from, data)) = relay_streams.incoming.recv() => {
                on_relay_stream(ep, relay_streams, from, data);
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => ep.handle_input(Instant::now(), from, &buf[..n]),
                Err(_) => tokio::task::yield_now().await,
            },
        }
    }
}

/// What a supernode stream brought: a frame for the endpoint, its connection, or its end.
fn on_stream(ep: &mut Endpoint, streams: &mut Streams, from: SocketAddr, ev: StreamEvent) {
    match ev {
        StreamEvent::Frame(data) => ep.handle_input(Instant::now(), from, &data),
        StreamEvent::Connected(id) => {
            if streams.is_current(from, id) {
                ep.stream_connected(Instant::now(), from);
            }
        }
        StreamEvent::Closed(id) => {
            if streams.closed(from, id) {
                ep.stream_closed(Instant::now(), from);
            }
        }
    }
}

/// What the relay stream (TURN over TCP) brought: its bytes for the endpoint, or its end.
fn on_relay_stream(ep: &mut Endpoint, streams: &mut Streams, from: SocketAddr, ev: StreamEvent) {
    match ev {
        StreamEvent::Frame(data) => ep.handle_stream(Instant::now(), from, &data),
        StreamEvent::Connected(_) => {}
        StreamEvent::Closed(id) => {
            if streams.closed(from, id) {
                ep.relay_stream_closed(Instant::now(), from);
            }
        }
    }
}

/// Hands the call's next played frame to its sink; a sink that cannot keep up loses it.
fn play(ep: &mut Endpoint, now: Instant, call: CallId, a: &mut Attached) {
    if let Some(tx) = &a.audio.playback
        && let Some(frame) = ep.pop_frame(now, call)
        && tx.try_send(frame.pcm).is_err()
    {
        a.dropped += 1;
    }
}

/// Sends everything the endpoint queued: the agent's frames (on a stream for a TCP-framed
/// supernode), then the call socket's datagrams and the relay stream's messages; then closes
/// the streams nothing uses any more.
async fn flush(
    ep: &mut Endpoint,
    socket: &UdpSocket,
    streams: &mut Streams,
    relay_streams: &mut Streams,
) {
    use crate::transmit::STREAM;
    while let Some(t) = ep.poll_agent_transmit() {
        if t.socket == STREAM {
            streams.send(t.to, t.data);
        } else {
            // A lost datagram is just loss: the session layer retransmits.
            let _ = socket.send_to(&t.data, t.to).await;
            ep.recycle(t.data);
        }
    }
    while let Some(d) = ep.poll_transmit() {
        if d.socket == STREAM {
            relay_streams.send(d.to, d.data);
        } else {
            let _ = socket.send_to(&d.data, d.to).await;
        }
    }
    while let Some(addr) = ep.poll_stream_close() {
        streams.close(addr);
    }
    while let Some(addr) = ep.poll_stream_open() {
        streams.connect(addr);
    }
    while let Some(addr) = ep.poll_relay_stream_close() {
        relay_streams.close(addr);
    }
}

/// The addresses a socket bound to `bound` can be reached at on this host: `bound` itself, or
/// for an unspecified address every interface address of its family (loopback included: ICE
/// pairs it only with a peer's loopback, on the same host).
pub fn host_addresses(bound: SocketAddr) -> Vec<SocketAddr> {
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let mut out: Vec<SocketAddr> = crate::turn::peer_policy::local_addresses()
        .into_iter()
        .filter(|ip| ip.is_ipv4() == bound.is_ipv4())
        .filter(|ip| match ip {
            std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            std::net::IpAddr::V4(_) => true,
        })
        .map(|ip| SocketAddr::new(ip, bound.port()))
        .collect();
    out.sort();
    out.dedup();
    out
}
