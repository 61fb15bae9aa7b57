//! Two media sessions joined by the one simulated network (`voxlab::sim::World`), quinn-proto
//! `Pair` style: two public hosts, the internet path each way impaired by the lab's seeded
//! impairer, and two audio sides capturing and playing in 20 ms ticks on their own phases.
//! Simulated time jumps from event to event; nothing sleeps; a seed replays the same run.

#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use voxlab::netem::Spec;
use voxlab::sim::{Fate, Link, World};
use voxmesh::media::{
    Event, Frame, FrameKind, MediaConfig, MediaKeys, MediaSession, MediaStats, Role,
};

pub const RATE: usize = 48_000;
pub const TICK: Duration = Duration::from_millis(20);
pub const FRAME: usize = 960;

pub fn keys() -> MediaKeys {
    MediaKeys::new([0x11; 32], [0x22; 32])
}

/// The direction A→B (A is host 0) ...
pub const AB: usize = 0;
/// ... and B→A.
pub const BA: usize = 1;

fn host_addr(host: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, host as u8 + 1], 5004))
}

/// One end: a session, what it captures, what it played.
pub struct Side {
    pub session: MediaSession,
    /// PCM to send, 20 ms per tick; silence after it runs out.
    pub source: Vec<f32>,
    sent: usize,
    /// Stop capturing (the session's clock jumps on resume via `skip_audio`).
    pub capture: bool,
    /// Pull playout frames (false: the audio side stalls).
    pub pull: bool,
    pub played: Vec<f32>,
    pub kinds: Vec<FrameKind>,
    pub events: Vec<Event>,
    capture_at: Instant,
    pop_at: Instant,
}

impl Side {
    fn new(
        session: MediaSession,
        t0: Instant,
        capture_phase: Duration,
        pop_phase: Duration,
    ) -> Side {
        Side {
            session,
            source: Vec::new(),
            sent: 0,
            capture: true,
            pull: true,
            played: Vec::new(),
            kinds: Vec::new(),
            events: Vec::new(),
            capture_at: t0 + capture_phase,
            pop_at: t0 + pop_phase,
        }
    }

    pub fn stats(&self) -> MediaStats {
        self.session.stats()
    }

    pub fn digits(&self) -> String {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Dtmf(d) => Some(d.digit),
                _ => None,
            })
            .collect()
    }

    pub fn count(&self, kind: FrameKind) -> usize {
        self.kinds.iter().filter(|&&k| k == kind).count()
    }
}

/// Two sessions (A initiator, B responder) and the path between them.
pub struct Pair {
    pub world: World,
    pub t0: Instant,
    /// The world's clock, as an instant.
    pub now: Instant,
    pub a: Side,
    pub b: Side,
    /// Datagrams that reached the other side, per direction ([`AB`], [`BA`]), copies included ...
    pub delivered: [u64; 2],
    /// ... and of those, extra copies of a datagram delivered before.
    pub duplicates_delivered: [u64; 2],
    seen: [HashSet<Vec<u8>>; 2],
}

impl Pair {
    pub fn new(seed: u64, ab: Spec, ba: Spec) -> Pair {
        Pair::with_configs(seed, ab, ba, MediaConfig::default(), MediaConfig::default())
    }

    pub fn with_configs(
        seed: u64,
        ab: Spec,
        ba: Spec,
        mut ca: MediaConfig,
        mut cb: MediaConfig,
    ) -> Pair {
        let mut world = World::new(seed);
        for host in [AB, BA] {
            world.add_public(host_addr(host).ip());
        }
        world.set_path(host_addr(AB), host_addr(BA), ab);
        world.set_path(host_addr(BA), host_addr(AB), ba);
        let t0 = world.instant();
        ca.stream = 0xa11ce;
        cb.stream = 0xb0b;
        let a = MediaSession::new(t0, &keys(), Role::Initiator, ca).unwrap();
        let b = MediaSession::new(t0, &keys(), Role::Responder, cb).unwrap();
        let ms = Duration::from_millis;
        Pair {
            world,
            t0,
            now: t0,
            // Capture and playout ticks on different phases, as two sound cards would be.
            a: Side::new(a, t0, ms(20), ms(7)),
            b: Side::new(b, t0, ms(23), ms(13)),
            delivered: [0; 2],
            duplicates_delivered: [0; 2],
            seen: [HashSet::new(), HashSet::new()],
        }
    }

    /// The path from `from` ([`AB`] or [`BA`]): its `cut` switch and its counts.
    pub fn link(&mut self, from: usize) -> &mut Link {
        self.world.path(host_addr(from), host_addr(1 - from))
    }

    /// Makes the path from `from` deliver a datagram twice with probability `p`.
    pub fn set_duplicate(&mut self, from: usize, p: f64) {
        let spec = Spec {
            duplicate: p,
            ..*self.link(from).spec()
        };
        self.world
            .set_path(host_addr(from), host_addr(1 - from), spec);
    }

    /// Every datagram put on the path from `from`, in order (what a relay on it would see).
    pub fn captured(&self, from: usize) -> Vec<Vec<u8>> {
        self.world
            .sent
            .iter()
            .filter(|s| s.host == Some(from))
            .map(|s| s.data.clone())
            .collect()
    }

    /// Indices into [`Pair::captured`] of the datagrams the path lost.
    pub fn dropped_idx(&self, from: usize) -> Vec<usize> {
        self.world
            .sent
            .iter()
            .filter(|s| s.host == Some(from))
            .enumerate()
            .filter(|(_, s)| s.fate == Fate::Lost)
            .map(|(i, _)| i)
            .collect()
    }

    /// Runs the simulation for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            let next = [
                Some(self.a.capture_at),
                Some(self.b.capture_at),
                Some(self.a.pop_at),
                Some(self.b.pop_at),
                self.world.next_event(),
                self.a.session.poll_timeout(),
                self.b.session.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap()
            .max(self.now);
            if next > end {
                self.advance(end);
                break;
            }
            self.advance(next);
            self.step();
        }
    }

    fn advance(&mut self, t: Instant) {
        self.world.advance_to(t);
        self.now = self.world.instant();
    }

    fn step(&mut self) {
        let now = self.now;
        for d in self.world.deliver_due() {
            let dir = 1 - d.host;
            self.delivered[dir] += 1;
            if !self.seen[dir].insert(d.data.clone()) {
                self.duplicates_delivered[dir] += 1;
            }
            let side = if d.host == BA {
                &mut self.b
            } else {
                &mut self.a
            };
            side.session.handle_input(now, &d.data);
        }
        for side in [&mut self.a, &mut self.b] {
            if side.session.poll_timeout().is_some_and(|t| t <= now) {
                side.session.handle_timeout(now);
            }
            if side.capture_at <= now {
                side.capture_at += TICK;
                if side.capture {
                    let mut frame = [0.0f32; FRAME];
                    let from = side.sent.min(side.source.len());
                    let n = (side.source.len() - from).min(FRAME);
                    frame[..n].copy_from_slice(&side.source[from..from + n]);
                    side.sent += FRAME;
                    side.session.send_audio(now, &frame).unwrap();
                }
            }
            if side.pop_at <= now {
                side.pop_at += TICK;
                if side.pull {
                    let Frame { pcm, kind } = side.session.pop_frame(now);
                    assert_eq!(pcm.len(), FRAME);
                    side.played.extend_from_slice(&pcm);
                    side.kinds.push(kind);
                }
            }
            while let Some(e) = side.session.poll_event() {
                side.events.push(e);
            }
        }
        while let Some(d) = self.a.session.poll_transmit() {
            self.world.send(AB, host_addr(AB), host_addr(BA), d);
        }
        while let Some(d) = self.b.session.poll_transmit() {
            self.world.send(BA, host_addr(BA), host_addr(AB), d);
        }
    }
}

/// Lost audio packets of A→B that FEC or RED could rebuild: the next audio packet arrived and
/// carries FEC or a copy of it (opened with the test's own copy of the keys). Only packets with timestamps before
/// `before` count (later ones may not have been played when the run stopped).
pub fn recoverable(p: &Pair, before: u32) -> usize {
    use voxmesh::media::PayloadType;
    use voxmesh::media::codec::has_fec;
    let (_, mut opener) = keys().for_role(Role::Responder, 0).unwrap();
    // (captured index, can rebuild the packet before: in-band FEC, or a RED copy of it)
    let mut audio = Vec::new();
    for (i, d) in p.captured(AB).iter().enumerate() {
        let o = opener.open(d).expect("every captured packet opens");
        if o.header.timestamp >= before {
            continue;
        }
        match o.header.payload_type {
            PayloadType::Opus => audio.push((i, has_fec(&o.payload))),
            PayloadType::Red => {
                let r = voxmesh::media::red::parse(&o.payload).expect("a RED packet parses");
                audio.push((i, r.copy.is_some() || has_fec(r.primary)));
            }
            _ => {}
        }
    }
    let lost: HashSet<usize> = p.dropped_idx(AB).into_iter().collect();
    // Playout starts with the first packet that arrives; nothing before it is ever played.
    let first = audio.iter().position(|a| !lost.contains(&a.0)).unwrap_or(0);
    audio[first..]
        .windows(2)
        .filter(|w| lost.contains(&w[0].0) && !lost.contains(&w[1].0) && w[1].1)
        .count()
}

/// What libopus itself makes of `x` with `settings`, switching to `then` at a sample offset:
/// the reference a lossless call must reproduce exactly (encoding is deterministic).
pub fn offline(
    x: &[f32],
    settings: voxmesh::media::OpusSettings,
    then: Option<(usize, voxmesh::media::OpusSettings)>,
) -> Vec<f32> {
    use voxmesh::media::codec::{Decoder, Encoded, Encoder};
    let mut enc = Encoder::new(settings).unwrap();
    let mut dec = Decoder::new().unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        if let Some((when, s)) = then
            && at == when
        {
            enc.apply(s).unwrap();
        }
        let n = enc.settings().frame.samples();
        let Some(frame) = x.get(at..at + n) else {
            break;
        };
        match enc.encode(frame).unwrap() {
            Encoded::Packet(p) => {
                let p = p.to_vec();
                dec.decode(&p, &mut out).unwrap();
            }
            Encoded::Dtx => out.extend(std::iter::repeat_n(0.0, n)),
        }
        at += n;
    }
    out
}

/// A link spec from the lab's syntax (`delay=30ms,jitter=10ms,loss=0.1`).
pub fn spec(s: &str) -> Spec {
    s.parse().unwrap()
}

/// The project's sweep test signal: 200 Hz to 3.4 kHz, exponential, at half scale.
pub fn sweep(seconds: f64) -> Vec<f32> {
    use voxmesh::audio::{Generator, Signal};
    let mut g = Generator::new(
        Signal::Sweep {
            from: 200.0,
            to: 3400.0,
        },
        RATE as u32,
        0.5,
        seconds,
    )
    .unwrap();
    let mut x = Vec::new();
    while g.fill(&mut x, 4800) > 0 {}
    x
}

/// Speech-like: the sweep cut into 250 ms syllables (150 ms raised-sine bursts, 100 ms gaps).
/// Opus's SILK layer codes in-band FEC only for frames its voice activity detector finds
/// active, and a long steady sweep soon looks like stationary noise to it; syllables do not.
pub fn syllables(seconds: f64) -> Vec<f32> {
    let mut x = sweep(seconds);
    for (i, v) in x.iter_mut().enumerate() {
        let t = (i % 12_000) as f32 / 12_000.0;
        *v *= if t < 0.6 {
            (std::f32::consts::PI * t / 0.6).sin()
        } else {
            0.0
        };
    }
    x
}

/// Normalised correlation of `played` against `reference` over the reference's `regions`
/// (sample ranges), `played` lagging by `lag` samples.
pub fn region_similarity(
    played: &[f32],
    reference: &[f32],
    lag: i64,
    regions: &[std::ops::Range<usize>],
) -> f64 {
    let (mut xy, mut xx, mut yy) = (0.0f64, 0.0f64, 0.0f64);
    for r in regions {
        for i in r.clone() {
            let j = i as i64 + lag;
            let (Some(&y), true) = (reference.get(i), j >= 0) else {
                continue;
            };
            let x = played.get(j as usize).copied().unwrap_or(0.0);
            xy += f64::from(x) * f64::from(y);
            xx += f64::from(x) * f64::from(x);
            yy += f64::from(y) * f64::from(y);
        }
    }
    if xx > 0.0 && yy > 0.0 {
        xy / (xx * yy).sqrt()
    } else {
        0.0
    }
}

/// Delay-compensated similarity of what `side` played against `reference`.
pub fn similarity(played: &[f32], reference: &[f32]) -> (f64, f64) {
    let c = voxmesh::audio::compare(played, reference, RATE as u32, Some(RATE));
    (c.similarity, c.delay_seconds)
}

/// The lag (samples) of `played` behind `reference`.
pub fn lag(played: &[f32], reference: &[f32]) -> i64 {
    voxmesh::audio::compare(played, reference, RATE as u32, Some(RATE)).delay_samples
}
