//! Who becomes a supernode, and who stops being one: the decision behind a small trait so that
//! the product's promotion logic can replace the stand-in below without touching the simulator.
//!
//! STAND-IN: [`StandIn`] is not the product's promoter. It is the simplest policy with the
//! properties issue 13 asks for (public and eligible only, a target of one supernode per
//! `clients_per_supernode` online clients, hysteresis, random jitter, a ramp, a minimum tenure),
//! so that the rest of the simulation (real supernode, client and relay-link cores) can be
//! measured while the real promoter is written.

use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

/// A client the policy may promote.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    /// The simulator's handle for it.
    pub client: u32,
    /// How long it has been online.
    pub uptime: Duration,
    /// Its uplink, kbit/s.
    pub up_kbps: u32,
}

/// A supernode the policy may demote.
#[derive(Clone, Copy, Debug)]
pub struct Serving {
    pub client: u32,
    /// How long it has been a supernode.
    pub tenure: Duration,
    /// Clients registered through it.
    pub clients: usize,
}

/// What the mesh looks like to the policy at one tick.
pub struct View<'a> {
    pub online: usize,
    /// Public clients that are not supernodes yet, in a stable order.
    pub candidates: &'a [Candidate],
    pub supernodes: &'a [Serving],
}

/// One decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Promote(u32),
    Demote(u32),
}

/// Promotion and demotion, ticked by the simulator (every [`Policy::period`]).
pub trait Policy {
    fn period(&self) -> Duration;
    /// The shortest time a promoted node serves before the policy may demote it (departures of
    /// the user are not the policy's to prevent).
    fn min_tenure(&self) -> Duration;
    fn tick(&mut self, view: &View<'_>, rng: &mut StdRng) -> Vec<Action>;
}

/// The stand-in policy (see the module documentation).
#[derive(Clone, Debug)]
pub struct StandIn {
    pub clients_per_supernode: usize,
    /// Never fewer supernodes than this (3 homes per record need 3).
    pub floor: usize,
    /// Eligibility: uptime and uplink.
    pub min_uptime: Duration,
    pub min_up_kbps: u32,
    /// Demote only above `need * (1 + hysteresis)`.
    pub hysteresis: f64,
    pub min_tenure: Duration,
    pub period: Duration,
}

impl StandIn {
    fn need(&self, online: usize) -> usize {
        online.div_ceil(self.clients_per_supernode).max(self.floor)
    }
}

impl Policy for StandIn {
    fn period(&self) -> Duration {
        self.period
    }

    fn min_tenure(&self) -> Duration {
        self.min_tenure
    }

    fn tick(&mut self, view: &View<'_>, rng: &mut StdRng) -> Vec<Action> {
        let need = self.need(view.online);
        let have = view.supernodes.len();
        let mut out = Vec::new();
        if have < need {
            // Ramp with jitter: each eligible candidate volunteers with a probability that
            // covers the deficit about twice over, so a crowd does not all step up at once
            // and a short deficit still closes within a tick or two.
            let eligible: Vec<&Candidate> = view
                .candidates
                .iter()
                .filter(|c| c.uptime >= self.min_uptime && c.up_kbps >= self.min_up_kbps)
                .collect();
            let deficit = need - have;
            let p = (2.0 * deficit as f64 / eligible.len().max(1) as f64).min(1.0);
            for c in eligible {
                if out.len() >= deficit {
                    break;
                }
                if rng.random::<f64>() < p {
                    out.push(Action::Promote(c.client));
                }
            }
        } else if have as f64 > need as f64 * (1.0 + self.hysteresis) {
            // The least loaded that served their minimum tenure step down, a few at a time.
            let excess = have - need;
            let mut served: Vec<&Serving> = view
                .supernodes
                .iter()
                .filter(|s| s.tenure >= self.min_tenure)
                .collect();
            served.sort_by_key(|s| (s.clients, s.client));
            for s in served.into_iter().take(excess.div_ceil(4)) {
                out.push(Action::Demote(s.client));
            }
        }
        out
    }
}
