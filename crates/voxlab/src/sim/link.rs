//! Links: one direction of a path, impaired by the lab's seeded [`Impairer`] (the same decisions
//! `voxlab netem` applies to real frames), plus the controls a test needs on top of it.

use std::time::{Duration, Instant};

use crate::netem::{Decision, Impairer, Spec};

/// Bytes around a datagram's payload that a real link carries and the lab's forwarder counts
/// against a `rate=` limit: Ethernet (14), IPv4 (20) and UDP (8) headers (the forwarder sees
/// Ethernet frames). Without them a simulated bottleneck carries ~40 % more of a voice call's
/// small packets than the lab's does.
pub const FRAMING: usize = 42;

/// Counts of one link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams that entered the link.
    pub sent: u64,
    /// Of those, lost (random loss, a cut link or a forced loss).
    pub lost: u64,
    /// Extra copies the link made.
    pub duplicated: u64,
}

/// What a link did with one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crossing {
    Lost,
    /// Arrives `after` from now; `twice`: a copy arrives right behind it.
    Arrives {
        after: Duration,
        twice: bool,
    },
}

/// One direction of a path.
#[derive(Debug)]
pub struct Link {
    impairer: Impairer,
    /// Nothing passes while set (a dead node, an unplugged cable).
    pub cut: bool,
    /// The next this many datagrams are lost, whatever the impairer says (a deterministic burst).
    pub lose_next: u32,
    pub stats: LinkStats,
}

impl Link {
    /// A link impaired as `spec` says, its random draws from `seed`.
    pub fn new(spec: Spec, seed: u64) -> Link {
        Link {
            impairer: Impairer::new(spec, seed),
            cut: false,
            lose_next: 0,
            stats: LinkStats::default(),
        }
    }

    pub fn spec(&self) -> &Spec {
        self.impairer.spec()
    }

    /// Replaces the impairment, keeping the random stream and the counts.
    pub fn set_spec(&mut self, spec: Spec, seed: u64) {
        self.impairer = Impairer::new(spec, seed);
    }

    /// A datagram of `len` bytes enters the link at `now`.
    pub fn cross(&mut self, now: Instant, len: usize) -> Crossing {
        self.stats.sent += 1;
        // The impairer draws for every datagram, so a cut or a forced loss does not shift the
        // decisions for the ones after it.
        let decision = self.impairer.decide_ip(now, len + FRAMING);
        if self.cut || self.lose_next > 0 {
            self.lose_next = self.lose_next.saturating_sub(1);
            self.stats.lost += 1;
            return Crossing::Lost;
        }
        match decision {
            Decision::Drop | Decision::Overflow => {
                self.stats.lost += 1;
                Crossing::Lost
            }
            Decision::DeliverAt { at, duplicate, .. } => {
                self.stats.duplicated += u64::from(duplicate);
                Crossing::Arrives {
                    after: at.saturating_duration_since(now),
                    twice: duplicate,
                }
            }
        }
    }
}

/// The two directions of a host's access link: `up` leaves the host, `down` reaches it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Path {
    pub up: Spec,
    pub down: Spec,
}

impl Path {
    /// No loss, no jitter, `one_way` each way.
    pub fn clean(one_way: Duration) -> Path {
        Path::symmetric(one_way, Duration::ZERO, 0.0)
    }

    /// The same impairment both ways: fixed `delay`, uniform extra delay in [0, `jitter`) (so
    /// datagrams may be reordered), and `loss`.
    pub fn symmetric(delay: Duration, jitter: Duration, loss: f64) -> Path {
        let s = Spec {
            delay,
            jitter,
            loss,
            ..Spec::default()
        };
        Path { up: s, down: s }
    }
}

/// A seed for the link `tag` of the world seeded `seed`: links draw their own streams, so adding a
/// host or a path never shifts the draws of another.
pub(crate) fn link_seed(seed: u64, tag: &[u8]) -> u64 {
    // FNV-1a over the tag, then a splitmix64 finaliser with the world's seed: stable across runs
    // and platforms (std's hasher is randomised per process).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tag {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
