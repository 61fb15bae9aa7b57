//! Two media sessions joined by a simulated network, quinn-proto `Pair` style: simulated time
//! that jumps from event to event, the lab's seeded impairer (`voxlab::netem`) on each
//! direction, and two audio sides capturing and playing in 20 ms ticks on their own phases.
//! Nothing sleeps; a seed replays the same run.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use voxlab::netem::{Decision, DelayLine, Impairer, Spec};
use voxmesh::media::{
    Event, Frame, FrameKind, MediaConfig, MediaKeys, MediaSession, MediaStats, Role,
};

pub const RATE: usize = 48_000;
pub const TICK: Duration = Duration::from_millis(20);
pub const FRAME: usize = 960;

pub fn keys() -> MediaKeys {
    MediaKeys::new([0x11; 32], [0x22; 32])
}

/// One direction of the path.
pub struct Link {
    impairer: Impairer,
    line: DelayLine,
    /// Probability a delivered datagram arrives twice (the second copy 1 ms later).
    pub duplicate: f64,
    rng: StdRng,
    /// Every datagram put on the link, in order (what a relay on the path would see).
    pub captured: Vec<Vec<u8>>,
    pub delivered: u64,
    pub duplicated: u64,
    /// When each extra copy is due.
    duplicate_due: Vec<Instant>,
    pub dropped: u64,
    /// Indices into `captured` of the datagrams the link dropped.
    pub dropped_idx: Vec<usize>,
    /// Drop everything while set (an outage).
    pub down: bool,
}

impl Link {
    pub fn new(spec: Spec, seed: u64) -> Link {
        Link {
            line: DelayLine::new(spec.delay_line_limit()),
            impairer: Impairer::new(spec, seed),
            duplicate: 0.0,
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            captured: Vec::new(),
            delivered: 0,
            duplicated: 0,
            duplicate_due: Vec::new(),
            dropped: 0,
            dropped_idx: Vec::new(),
            down: false,
        }
    }

    /// Extra copies delivered by `now`.
    pub fn duplicates_delivered(&self, now: Instant) -> u64 {
        self.duplicate_due.iter().filter(|&&t| t <= now).count() as u64
    }

    fn send(&mut self, now: Instant, datagram: Vec<u8>) {
        self.captured.push(datagram.clone());
        // The impairer judges Ethernet frames: wrap the datagram in an IPv4 one so loss and
        // reordering apply (its length only matters for rate limits, which we do not use).
        let mut frame = vec![0u8; 14];
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        frame.extend_from_slice(&datagram);
        let dup: f64 = self.rng.random();
        if self.down {
            self.dropped += 1;
            self.dropped_idx.push(self.captured.len() - 1);
            return;
        }
        match self.impairer.decide(now, &frame) {
            Decision::Drop | Decision::Overflow => {
                self.dropped += 1;
                self.dropped_idx.push(self.captured.len() - 1);
            }
            Decision::DeliverAt { at, .. } => {
                if dup < self.duplicate {
                    self.duplicated += 1;
                    let due = at + Duration::from_millis(1);
                    self.duplicate_due.push(due);
                    let _ = self.line.push(due, datagram.clone());
                }
                let _ = self.line.push(at, datagram);
            }
        }
    }
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
    pub t0: Instant,
    pub now: Instant,
    pub a: Side,
    pub b: Side,
    pub ab: Link,
    pub ba: Link,
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
        let t0 = Instant::now();
        ca.stream = 0xa11ce;
        cb.stream = 0xb0b;
        let a = MediaSession::new(t0, &keys(), Role::Initiator, ca).unwrap();
        let b = MediaSession::new(t0, &keys(), Role::Responder, cb).unwrap();
        let ms = Duration::from_millis;
        Pair {
            t0,
            now: t0,
            // Capture and playout ticks on different phases, as two sound cards would be.
            a: Side::new(a, t0, ms(20), ms(7)),
            b: Side::new(b, t0, ms(23), ms(13)),
            ab: Link::new(ab, seed),
            ba: Link::new(ba, seed.wrapping_add(1)),
        }
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
                self.ab.line.next_due(),
                self.ba.line.next_due(),
                self.a.session.poll_timeout(),
                self.b.session.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap()
            .max(self.now);
            if next > end {
                self.now = end;
                break;
            }
            self.now = next;
            self.step();
        }
    }

    fn step(&mut self) {
        let now = self.now;
        while let Some(d) = self.ab.line.pop_due(now) {
            self.ab.delivered += 1;
            self.b.session.handle_input(now, &d);
        }
        while let Some(d) = self.ba.line.pop_due(now) {
            self.ba.delivered += 1;
            self.a.session.handle_input(now, &d);
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
            self.ab.send(now, d);
        }
        while let Some(d) = self.b.session.poll_transmit() {
            self.ba.send(now, d);
        }
    }
}

/// Lost audio packets of A→B that FEC could rebuild: the next audio packet arrived and carries
/// FEC (opened with the test's own copy of the keys). Only packets with timestamps before
/// `before` count (later ones may not have been played when the run stopped).
pub fn recoverable(link: &Link, before: u32) -> usize {
    use voxmesh::media::codec::has_fec;
    let (_, mut opener) = keys().for_role(Role::Responder, 0).unwrap();
    let mut audio = Vec::new(); // (captured index, has FEC)
    for (i, d) in link.captured.iter().enumerate() {
        let o = opener.open(d).expect("every captured packet opens");
        if o.header.payload_type == voxmesh::media::PayloadType::Opus && o.header.timestamp < before
        {
            audio.push((i, has_fec(&o.payload)));
        }
    }
    let lost: std::collections::HashSet<usize> = link.dropped_idx.iter().copied().collect();
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
