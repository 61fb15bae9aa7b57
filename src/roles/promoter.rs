//! The client's promotion state machine. See the module docs of [`super`] for what goes in and
//! what comes out.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::rng::SplitMix;
use super::{Config, DemoteReason, Need, Role};

/// The dial-back result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reachability {
    /// The server-reflexive address a supernode saw.
    pub reflexive: SocketAddr,
    /// The socket's host address equals the reflexive one (no NAT between us and the mesh).
    pub host_is_reflexive: bool,
    /// A probe from a source we never sent to reached us (no filtering firewall either).
    pub unsolicited_probe: bool,
}

impl Reachability {
    /// A public, reachable address, proved both ways.
    pub fn is_public(&self) -> bool {
        self.host_is_reflexive && self.unsolicited_probe
    }
}

/// One measurement or message from the mesh.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Input {
    Reachability(Reachability),
    /// Spare uplink, measured or declared (kbit/s).
    UplinkKbps(u32),
    /// Idle CPU fraction, 0.0–1.0.
    CpuHeadroom(f32),
    /// What the mesh wants (from a supernode).
    Need(Need),
    /// A supernode's answer to [`Event::RequestGrant`].
    Grant {
        role: Role,
        granted: bool,
    },
    /// A supernode asks a holder of `role` to retire (the mesh has too many): honoured once
    /// the minimum tenure has passed.
    Retire(Role),
}

/// What the driver must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Event {
    /// Ask a supernode whether the mesh wants us in `role`; answer with [`Input::Grant`].
    RequestGrant(Role),
    BecomeRelay,
    BecomeSupernode,
    /// Stop `role`: redirect its clients and allocations first.
    Demote {
        role: Role,
        reason: DemoteReason,
    },
}

#[derive(Clone, Debug, Default)]
struct RoleState {
    /// When the role was taken; `None` when not held.
    held_since: Option<Instant>,
    /// The jittered moment to ask for a grant.
    apply_at: Option<Instant>,
    /// A grant was asked for; given up at this moment.
    pending_until: Option<Instant>,
    /// A soft demotion waiting for the tenure to end.
    soft_demote: Option<DemoteReason>,
}

/// Decides when this client takes on and gives up the relay and supernode roles.
///
/// Call order: [`Promoter::handle_input`] or [`Promoter::handle_timeout`], then drain
/// [`Promoter::poll_event`], then sleep until [`Promoter::poll_timeout`]. Time only moves forward.
#[derive(Debug)]
pub struct Promoter {
    cfg: Config,
    rng: SplitMix,
    /// When the current address became stable (start, or the last reflexive address change).
    stable_since: Instant,
    reach: Option<Reachability>,
    uplink_kbps: Option<u32>,
    cpu: Option<f32>,
    need: Option<Need>,
    roles: [RoleState; 2],
    events: VecDeque<Event>,
    shut: bool,
    /// The latest `now` seen: timers already passed are not reported again.
    last_now: Instant,
}

const ROLES: [Role; 2] = [Role::Relay, Role::Supernode];

fn idx(role: Role) -> usize {
    usize::from(role == Role::Supernode)
}

impl Promoter {
    /// A promoter started at `now`; `seed` drives the jitter (same seed and inputs, same events).
    pub fn new(now: Instant, cfg: Config, seed: u64) -> Self {
        Promoter {
            cfg,
            rng: SplitMix::new(seed),
            stable_since: now,
            reach: None,
            uplink_kbps: None,
            cpu: None,
            need: None,
            roles: Default::default(),
            events: VecDeque::new(),
            shut: false,
            last_now: now,
        }
    }

    // ---- getters ----

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn holds(&self, role: Role) -> bool {
        self.roles[idx(role)].held_since.is_some()
    }

    /// The relay bandwidth to advertise: the spare uplink capped by `--max-relay-kbps`.
    pub fn relay_budget_kbps(&self) -> u32 {
        let spare = self.uplink_kbps.unwrap_or(0);
        self.cfg.max_relay_kbps.map_or(spare, |cap| spare.min(cap))
    }

    /// The load ramp: how many clients this supernode accepts now (0 when not one). Starts at
    /// `ramp_start_clients` and grows linearly to `supernode_max_clients` over `ramp`.
    pub fn supernode_client_limit(&self, now: Instant) -> u32 {
        let Some(since) = self.roles[idx(Role::Supernode)].held_since else {
            return 0;
        };
        let (lo, hi) = (self.cfg.ramp_start_clients, self.cfg.supernode_max_clients);
        if self.cfg.ramp.is_zero() || hi <= lo {
            return hi.max(lo);
        }
        let f = now.saturating_duration_since(since).as_secs_f64() / self.cfg.ramp.as_secs_f64();
        let grown = (f64::from(hi - lo) * f.min(1.0)) as u32;
        lo + grown
    }

    // ---- inputs ----

    /// Feeds one measurement or message.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Reachability(r) => {
                if self.reach.is_some_and(|old| old.reflexive != r.reflexive) {
                    self.stable_since = now;
                }
                self.reach = Some(r);
            }
            Input::UplinkKbps(k) => self.uplink_kbps = Some(k),
            Input::CpuHeadroom(c) => self.cpu = Some(c.clamp(0.0, 1.0)),
            Input::Need(n) => self.need = Some(n),
            Input::Grant { role, granted } => self.granted(now, role, granted),
            Input::Retire(role) => {
                let st = &mut self.roles[idx(role)];
                if st.held_since.is_some() && st.soft_demote.is_none() {
                    st.soft_demote = Some(DemoteReason::Surplus);
                }
            }
        }
        self.evaluate(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.evaluate(now);
    }

    /// Gives up every held role (reason `Shutdown`) and stops promoting.
    pub fn shutdown(&mut self, _now: Instant) {
        self.shut = true;
        for role in ROLES {
            self.demote(role, DemoteReason::Shutdown);
            let st = &mut self.roles[idx(role)];
            st.apply_at = None;
            st.pending_until = None;
        }
    }

    // ---- outputs ----

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next moment [`Promoter::handle_timeout`] has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.shut {
            return None;
        }
        let mut t: Option<Instant> = None;
        let mut add = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for role in ROLES {
            let st = &self.roles[idx(role)];
            add(st.apply_at);
            add(st.pending_until);
            if let (Some(since), Some(_)) = (st.held_since, st.soft_demote) {
                add(Some(since + self.cfg.min_tenure));
            }
            if st.held_since.is_none() && st.apply_at.is_none() && st.pending_until.is_none() {
                // Waiting only for uptime: wake when it is reached.
                let ready = self.stable_since + self.min_uptime(role);
                if ready > self.last_now {
                    add(Some(ready));
                }
            }
        }
        t
    }

    // ---- internals ----

    fn min_uptime(&self, role: Role) -> Duration {
        match role {
            Role::Relay => self.cfg.relay_min_uptime,
            Role::Supernode => self.cfg.supernode_min_uptime,
        }
    }

    /// Whether `role` passes its thresholds: the promotion ones when not held, the lower
    /// demotion ones when held (hysteresis). Uptime is checked by the caller (promotion only).
    fn check(&self, role: Role, held: bool) -> Result<(), DemoteReason> {
        let allowed = match role {
            Role::Relay => self.cfg.allow_relay,
            Role::Supernode => self.cfg.allow_supernode,
        };
        if !allowed {
            return Err(DemoteReason::Refused);
        }
        if !self.reach.is_some_and(|r| r.is_public()) {
            return Err(DemoteReason::Unreachable);
        }
        let pick = |promote, demote| if held { demote } else { promote };
        match role {
            Role::Relay => {
                let floor = pick(self.cfg.relay_promote_kbps, self.cfg.relay_demote_kbps);
                if self.relay_budget_kbps() < floor {
                    return Err(DemoteReason::Bandwidth);
                }
            }
            Role::Supernode => {
                let floor = pick(
                    self.cfg.supernode_promote_kbps,
                    self.cfg.supernode_demote_kbps,
                );
                if self.uplink_kbps.unwrap_or(0) < floor {
                    return Err(DemoteReason::Bandwidth);
                }
                let cpu = if held {
                    self.cfg.supernode_demote_cpu
                } else {
                    self.cfg.supernode_promote_cpu
                };
                if self.cpu.unwrap_or(0.0) < cpu {
                    return Err(DemoteReason::Cpu);
                }
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        if self.shut {
            return;
        }
        for role in ROLES {
            let i = idx(role);
            if let Some(since) = self.roles[i].held_since {
                match self.check(role, true) {
                    Err(r) if r.is_hard() => self.demote(role, r),
                    Err(r) => {
                        self.roles[i].soft_demote.get_or_insert(r);
                    }
                    // Measurements recovered: a pending soft demotion is off, unless the mesh
                    // asked us to retire.
                    Ok(()) => {
                        if self.roles[i].soft_demote != Some(DemoteReason::Surplus) {
                            self.roles[i].soft_demote = None;
                        }
                    }
                }
                if let Some(r) = self.roles[i].soft_demote
                    && now >= since + self.cfg.min_tenure
                {
                    self.demote(role, r);
                }
                continue;
            }
            let st = &self.roles[i];
            if st.pending_until.is_some_and(|t| now >= t) {
                // No answer: the supernode may be gone; try again after a fresh jitter.
                self.roles[i].pending_until = None;
            }
            let eligible = self.check(role, false).is_ok()
                && now >= self.stable_since + self.min_uptime(role)
                && self.need.is_some_and(|n| n.deficit(role) > 0);
            let st = &mut self.roles[i];
            if !eligible {
                st.apply_at = None;
                continue;
            }
            if st.pending_until.is_some() {
                continue;
            }
            match st.apply_at {
                None => {
                    let wait = self.rng.below_ms(self.cfg.jitter.as_millis() as u64);
                    self.roles[i].apply_at = Some(now + Duration::from_millis(wait));
                    // A zero wait acts now.
                    if wait == 0 {
                        self.ask(now, role);
                    }
                }
                Some(t) if now >= t => self.ask(now, role),
                Some(_) => {}
            }
        }
    }

    fn ask(&mut self, now: Instant, role: Role) {
        let st = &mut self.roles[idx(role)];
        st.apply_at = None;
        st.pending_until = Some(now + self.cfg.grant_timeout);
        self.events.push_back(Event::RequestGrant(role));
    }

    fn granted(&mut self, now: Instant, role: Role, granted: bool) {
        let i = idx(role);
        if self.shut || self.roles[i].pending_until.is_none() || self.roles[i].held_since.is_some()
        {
            return; // Not asked, or a duplicate answer.
        }
        self.roles[i].pending_until = None;
        if !granted {
            // Denied: wait a full jitter span plus a random share before asking again, so the
            // losers of one round spread out over the next.
            let wait = self.cfg.jitter.as_millis() as u64
                + self.rng.below_ms(self.cfg.jitter.as_millis() as u64);
            self.roles[i].apply_at = Some(now + Duration::from_millis(wait.max(1)));
            return;
        }
        // Measurements may have changed while the grant was in flight.
        if self.check(role, false).is_err() {
            return;
        }
        self.roles[i].held_since = Some(now);
        self.roles[i].soft_demote = None;
        self.events.push_back(match role {
            Role::Relay => Event::BecomeRelay,
            Role::Supernode => Event::BecomeSupernode,
        });
    }

    fn demote(&mut self, role: Role, reason: DemoteReason) {
        let st = &mut self.roles[idx(role)];
        if st.held_since.take().is_some() {
            st.soft_demote = None;
            self.events.push_back(Event::Demote { role, reason });
        }
    }
}
