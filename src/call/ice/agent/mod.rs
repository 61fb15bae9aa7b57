//! The ICE agent: candidates in, checks out, a selected path and its changes as events.
//!
//! - this file: the agent's state, its inputs and outputs, candidates and pairs;
//! - [`checks`]: connectivity checks and consent on the wire: requests, answers, pacing,
//!   retransmission, the timers;
//! - [`select`]: which pair carries the call: nomination, selection, the standby.

mod checks;
mod select;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::candidate::{
    Candidate, CandidateKind, Credentials, foundation, local_preference, pair_priority_for,
    priority,
};
use super::defaults::{MAX_FINISHED, MAX_TXNS, Timing, TimingError};
use super::types::{
    BadCredentials, CandidateError, ChangeReason, Event, IceConfig, IceCounters, Inbound,
    LocalCandidate, PathInfo, Route, Transmit,
};
use super::wire::{self, Parsed, Refusal};
use crate::stun::TransactionId;
use crate::stun::timers::RttEstimator;

/// One set of credentials: ours and the peer's, for one ICE session (between restarts).
#[derive(Clone, Debug)]
struct Session {
    id: u32,
    local: Credentials,
    remote: Option<Credentials>,
}

#[derive(Clone, Copy, Debug)]
struct Local {
    cand: Candidate,
    route: Route,
}

#[derive(Clone, Copy, Debug)]
struct Remote {
    cand: Candidate,
    sess: u32,
}

/// RFC 8445 §6.1.2.6 states, without Frozen: with one stream and one component every
/// foundation's first pair starts Waiting anyway, and the Frozen machinery exists to order
/// several streams and components. A pair that fails is kept (as str0m removes it, we could
/// too) so that a later check from the peer can revive it as a triggered check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting,
    InProgress,
    Succeeded,
    Failed,
}

#[derive(Clone, Debug)]
struct Pair {
    route: Route,
    /// Priority of our candidate (host or relayed) this pair sends from.
    local_priority: u32,
    /// Once valid: the priority of the local candidate the peer sees (RFC 8445 §7.2.5.3.2:
    /// the valid pair's local candidate is the one whose address is the mapped address), so
    /// both agents rank a working path alike.
    valid_local_priority: Option<u32>,
    remote: SocketAddr,
    remote_kind: CandidateKind,
    remote_priority: u32,
    sess: u32,
    priority: u64,
    state: State,
    validated: Option<Instant>,
    /// Last authenticated answer: consent (RFC 7675) runs from here.
    last_response: Option<Instant>,
    /// XOR-MAPPED-ADDRESS of the last answer.
    mapped: Option<SocketAddr>,
    /// The highest NOMINATION this pair carries (controlling: confirmed by an answered
    /// USE-CANDIDATE check; controlled: received on it while valid).
    nominated: Option<u32>,
    /// Controlled: USE-CANDIDATE arrived before the pair was valid (RFC 8445 §7.3.1.5).
    pending_nomination: Option<u32>,
    /// Next consent check, while the pair is selected or standby.
    consent_next: Option<Instant>,
    rtt: Option<Duration>,
}

impl Pair {
    fn reprioritize(&mut self, controlling: bool) {
        let local = self.valid_local_priority.unwrap_or(self.local_priority);
        self.priority = pair_priority_for(controlling, local, self.remote_priority);
    }

    pub(super) fn relayed(&self) -> bool {
        self.route.is_relay()
            || self.remote_kind == CandidateKind::Relayed
            || self.remote_priority >> 24 == 0
    }

    /// Whether this pair and `other` go through a relay in common (by relayed IP).
    fn shares_relay(&self, other: &Pair) -> bool {
        let theirs = other.relay_ips();
        self.relay_ips()
            .iter()
            .flatten()
            .any(|ip| theirs.iter().flatten().any(|o| o == ip))
    }

    /// The relays this pair goes through, by relayed IP: ours, the peer's.
    fn relay_ips(&self) -> [Option<IpAddr>; 2] {
        let ours = match self.route {
            Route::Relay(a) => Some(a.ip()),
            Route::Direct(_) => None,
        };
        let theirs = (self.remote_kind == CandidateKind::Relayed
            || self.remote_priority >> 24 == 0)
            .then(|| self.remote.ip());
        [ours, theirs]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxnKind {
    /// A connectivity check; USE-CANDIDATE with this NOMINATION when `Some`.
    Check(Option<u32>),
    /// A consent freshness check (RFC 7675): never retransmitted.
    Consent,
}

#[derive(Clone, Debug)]
struct Txn {
    id: TransactionId,
    pair: u32,
    kind: TxnKind,
    sess: u32,
    /// Our role when it was sent (a 487 answer only counts if it still holds).
    controlling: bool,
    bytes: Vec<u8>,
    sent: Instant,
    sends: u32,
    /// Checks: the next retransmission, or the give-up time after the last send. Consent:
    /// when it counts as missed. `None`: only waiting for a late answer until `expires`.
    next: Option<Instant>,
    expires: Instant,
}

/// The ICE agent (RFC 8445) for one call: one stream, one component, trickle ICE (RFC 8838),
/// consent freshness (RFC 7675), ICE restart, renomination.
///
/// # Driving it
///
/// Inputs (each takes `now`; time only moves forward):
/// - [`IceAgent::add_local_candidate`] as gathering finds them; signal what it returns.
/// - [`IceAgent::set_remote_credentials`] and [`IceAgent::add_remote_candidate`] from
///   signalling, in any order, at any time.
/// - [`IceAgent::handle_input`] for every STUN datagram that arrived on the call's socket (or
///   through its TURN allocation) from someone other than the supernode or the TURN server.
/// - [`IceAgent::handle_timeout`] when [`IceAgent::poll_timeout`] says.
///
/// After any input, drain [`IceAgent::poll_transmit`] (send each, directly or through the TURN
/// client as its [`Route`] says) and [`IceAgent::poll_event`], then sleep until
/// [`IceAgent::poll_timeout`]. Media goes on [`IceAgent::selected`].
#[derive(Debug)]
pub struct IceAgent {
    timing: Timing,
    rng: StdRng,
    controlling: bool,
    tie_breaker: u64,
    sess: Session,
    /// The session before an ICE restart, kept while media still uses its pair.
    prev: Option<Session>,
    /// Host and relayed candidates: the ones checks leave from.
    locals: Vec<Local>,
    /// Server-reflexive candidates: signalled, never paired (a check leaves from their base,
    /// so their pairs would duplicate the host's, RFC 8445 §6.1.2.4).
    reflexive: Vec<Candidate>,
    remotes: Vec<Remote>,
    pairs: BTreeMap<u32, Pair>,
    next_pair: u32,
    txns: Vec<Txn>,
    /// Transactions recently finished (answered, superseded, timed out): a late or duplicate
    /// answer to one of them is expected on a lossy path and ignored, not refused.
    finished: VecDeque<TransactionId>,
    /// Triggered checks (RFC 8445 §6.1.4.1), with the nomination to send if any.
    triggered: VecDeque<(u32, Option<u32>)>,
    /// The next paced check may leave at this time.
    pace_ready: Option<Instant>,
    rtt: RttEstimator,
    /// The highest NOMINATION used (controlling) or seen; starts at 1.
    nomination: u32,
    /// Controlling: the pair an explicit nomination is in flight for.
    nominating: Option<u32>,
    selected: Option<u32>,
    /// The selected path, when its pair was removed (its local candidate went away): the
    /// `from` of the next path change.
    lost: Option<PathInfo>,
    standby: Option<u32>,
    /// The standby shares no relay with the selected pair: a dead relay has somewhere to go,
    /// so relayed pairs lose consent on the fast relayed timeout (else on the ordinary one).
    fallback: bool,
    checks_started: Option<Instant>,
    permissions: BTreeSet<(SocketAddr, IpAddr)>,
    next_foundation: u32,
    local_ended: bool,
    remote_ended: bool,
    failed: bool,
    last_now: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    counters: IceCounters,
}

impl IceAgent {
    /// A new agent with fresh local credentials (see [`IceAgent::local_credentials`]).
    pub fn new(config: IceConfig) -> Result<IceAgent, TimingError> {
        config.timing.validate()?;
        let mut rng = StdRng::from_seed(config.seed);
        let tie_breaker = rng.random();
        let local = Credentials::random(&mut rng);
        Ok(IceAgent {
            timing: config.timing,
            rng,
            controlling: config.controlling,
            tie_breaker,
            sess: Session {
                id: 0,
                local,
                remote: None,
            },
            prev: None,
            locals: Vec::new(),
            reflexive: Vec::new(),
            remotes: Vec::new(),
            pairs: BTreeMap::new(),
            next_pair: 0,
            txns: Vec::new(),
            finished: VecDeque::new(),
            triggered: VecDeque::new(),
            pace_ready: None,
            rtt: RttEstimator::default(),
            nomination: 1,
            nominating: None,
            selected: None,
            lost: None,
            standby: None,
            fallback: false,
            checks_started: None,
            permissions: BTreeSet::new(),
            next_foundation: 1,
            local_ended: false,
            remote_ended: false,
            failed: false,
            last_now: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: IceCounters::default(),
        })
    }

    // ------------------------------------------------------------------ getters

    /// Our credentials for the current ICE session: signal them to the peer.
    pub fn local_credentials(&self) -> &Credentials {
        &self.sess.local
    }

    pub fn controlling(&self) -> bool {
        self.controlling
    }

    /// The path media should use now, if any.
    pub fn selected(&self) -> Option<PathInfo> {
        self.selected.map(|p| self.info(p))
    }

    /// The pair kept fresh as a fallback (of the other kind than the selected one if any).
    pub fn standby(&self) -> Option<PathInfo> {
        self.standby.map(|p| self.info(p))
    }

    /// Every local candidate to signal (host, server-reflexive, relayed), e.g. again after a
    /// restart.
    pub fn local_candidates(&self) -> Vec<Candidate> {
        let mut v: Vec<Candidate> = self.locals.iter().map(|l| l.cand).collect();
        v.extend(self.reflexive.iter().copied());
        v
    }

    /// Remote candidates of the current session, signalled and peer-reflexive: the only
    /// addresses checks go to.
    pub fn remote_candidates(&self) -> impl Iterator<Item = &Candidate> + '_ {
        let g = self.sess.id;
        self.remotes
            .iter()
            .filter(move |r| r.sess == g)
            .map(|r| &r.cand)
    }

    pub fn counters(&self) -> &IceCounters {
        &self.counters
    }

    // ------------------------------------------------------------------ inputs

    /// Adds a local candidate. Returns it as it must be signalled, or `None` when it adds
    /// nothing (a duplicate, a server-reflexive address equal to its base, an unknown base).
    #[must_use]
    pub fn add_local_candidate(&mut self, now: Instant, c: LocalCandidate) -> Option<Candidate> {
        let known = |a: SocketAddr, s: &Self| {
            s.locals.iter().any(|l| l.cand.addr == a) || s.reflexive.iter().any(|r| r.addr == a)
        };
        let cand = match c {
            LocalCandidate::Host(addr) | LocalCandidate::Relayed(addr) => {
                if known(addr, self) || !usable_address(addr) {
                    return None;
                }
                let (kind, route) = match c {
                    LocalCandidate::Host(_) => (CandidateKind::Host, Route::Direct(addr)),
                    _ => (CandidateKind::Relayed, Route::Relay(addr)),
                };
                let cand = self.local_candidate(kind, addr, addr.ip());
                self.locals.push(Local { cand, route });
                let ids: Vec<usize> = (0..self.remotes.len()).collect();
                for r in ids {
                    self.pair_up(route, cand.priority, r);
                }
                cand
            }
            LocalCandidate::ServerReflexive { addr, base } => {
                let has_base = self.locals.iter().any(|l| l.route == Route::Direct(base));
                if !has_base || addr == base || known(addr, self) || !usable_address(addr) {
                    return None;
                }
                let cand = self.local_candidate(CandidateKind::ServerReflexive, addr, base.ip());
                self.reflexive.push(cand);
                cand
            }
        };
        self.drive(now);
        Some(cand)
    }

    /// Removes a local candidate (its socket closed, its TURN allocation failed or expired).
    /// Its pairs fail; a path on it is lost like one without consent.
    pub fn remove_local_candidate(&mut self, now: Instant, addr: SocketAddr) {
        self.reflexive.retain(|r| r.addr != addr);
        let Some(i) = self.locals.iter().position(|l| l.cand.addr == addr) else {
            return;
        };
        let route = self.locals.remove(i).route;
        let gone: Vec<u32> = self
            .pairs
            .iter()
            .filter(|(_, p)| p.route == route)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if Some(id) == self.selected || Some(id) == self.standby {
                let info = self.info(id);
                let selected = Some(id) == self.selected;
                self.events.push_back(Event::ConsentLost {
                    path: info,
                    selected,
                });
                if selected {
                    self.lost = Some(info);
                }
            }
            self.remove_pair(id);
        }
        self.drive(now);
    }

    /// Sets the peer's credentials from signalling. Returns `Some(ours)` when they differ from
    /// the ones we had: the peer restarted ICE, so we restarted too (RFC 8445 §9) and these
    /// new credentials of ours must be signalled back.
    pub fn set_remote_credentials(
        &mut self,
        now: Instant,
        creds: Credentials,
    ) -> Result<Option<Credentials>, BadCredentials> {
        if !creds.is_valid() {
            return Err(BadCredentials);
        }
        let restarted = match &self.sess.remote {
            Some(c) if *c == creds => return Ok(None),
            Some(_) => Some(self.restart(now)),
            None => None,
        };
        self.sess.remote = Some(creds);
        self.drive(now);
        Ok(restarted)
    }

    /// Adds a remote candidate from signalling (trickled, in any order).
    pub fn add_remote_candidate(
        &mut self,
        now: Instant,
        cand: Candidate,
    ) -> Result<(), CandidateError> {
        if !usable_address(cand.addr) {
            return Err(CandidateError::BadAddress);
        }
        let g = self.sess.id;
        if let Some(i) = self
            .remotes
            .iter()
            .position(|r| r.sess == g && r.cand.addr == cand.addr)
        {
            // A peer-reflexive candidate later signalled takes the signalled identity
            // (RFC 8445 §7.3.1.3 note); anything else is a duplicate.
            if self.remotes[i].cand.kind == CandidateKind::PeerReflexive
                && cand.kind != CandidateKind::PeerReflexive
            {
                let renamed = self
                    .selected
                    .filter(|id| self.pairs[id].sess == g && self.pairs[id].remote == cand.addr);
                let from = renamed.map(|id| self.info(id));
                self.remotes[i].cand = cand;
                let controlling = self.controlling;
                for p in self.pairs.values_mut() {
                    if p.sess == g && p.remote == cand.addr {
                        p.remote_kind = cand.kind;
                        p.remote_priority = cand.priority;
                        p.reprioritize(controlling);
                    }
                }
                // Media's path is the same; what the application shows of it changed.
                if let (Some(id), Some(from)) = (renamed, from) {
                    let to = self.info(id);
                    self.events.push_back(Event::PathChanged {
                        from,
                        to,
                        reason: ChangeReason::Renamed,
                    });
                }
            }
            return Ok(());
        }
        if self.remotes.iter().filter(|r| r.sess == g).count() >= self.timing.max_remote_candidates
        {
            return Err(CandidateError::TooMany);
        }
        self.remotes.push(Remote { cand, sess: g });
        let r = self.remotes.len() - 1;
        let locals: Vec<(Route, u32)> = self
            .locals
            .iter()
            .map(|l| (l.route, l.cand.priority))
            .collect();
        for (route, prio) in locals {
            self.pair_up(route, prio, r);
        }
        self.drive(now);
        Ok(())
    }

    /// Gathering is over: together with [`IceAgent::end_of_remote_candidates`] this lets the
    /// agent report [`Event::Failed`] once every pair has failed.
    pub fn end_of_local_candidates(&mut self, now: Instant) {
        self.local_ended = true;
        self.drive(now);
    }

    /// The peer signalled that its candidates are complete (RFC 8838 end-of-candidates).
    pub fn end_of_remote_candidates(&mut self, now: Instant) {
        self.remote_ended = true;
        self.drive(now);
    }

    /// Restarts ICE (RFC 8445 §9): new credentials (returned, to signal with our candidates),
    /// new checks once the peer's new credentials arrive. Media stays on the current path,
    /// kept alive with the old credentials, until a pair of the new session is selected.
    #[must_use]
    pub fn restart(&mut self, now: Instant) -> Credentials {
        let local = Credentials::random(&mut self.rng);
        let id = self.sess.id + 1;
        let old = std::mem::replace(
            &mut self.sess,
            Session {
                id,
                local: local.clone(),
                remote: None,
            },
        );
        // Only the selected pair survives, on the credentials of its session (the one just
        // ended, or an older one if no restart has selected a pair yet); everything else goes.
        let keep = self.selected;
        let keep_sess = keep.map(|k| self.pairs[&k].sess);
        self.prev = match keep_sess {
            Some(s) if s == old.id => Some(old),
            Some(s) => self.prev.take().filter(|p| p.id == s),
            None => None,
        };
        let prev_id = self.prev.as_ref().map(|g| g.id);
        let gone: Vec<u32> = self
            .pairs
            .keys()
            .copied()
            .filter(|id| Some(*id) != keep)
            .collect();
        for id in gone {
            self.remove_pair(id);
        }
        let keep_remote = keep.map(|k| self.pairs[&k].remote);
        self.remotes
            .retain(|r| Some(r.sess) == prev_id && Some(r.cand.addr) == keep_remote);
        self.triggered.clear();
        self.standby = None;
        self.nominating = None;
        // A nomination in the new session must outrank every nomination of the old one.
        self.nomination += 1;
        self.checks_started = None;
        self.remote_ended = false;
        self.failed = false;
        self.drive(now);
        local
    }

    /// Sends a consent check on the selected path now, e.g. when the call core sees inbound
    /// media stop unexpectedly: the answer (or its absence) tells sooner than the next
    /// scheduled check.
    pub fn check_path_now(&mut self, now: Instant) {
        if let Some(p) = self.selected {
            self.send_consent(now, p);
        }
        self.drive(now);
    }

    /// Whether `bytes` is ICE traffic of this agent, for a caller that runs several agents on
    /// one socket: a check whose USERNAME names our ufrag (of this or the previous session), or
    /// an answer to one of our transactions. Checks nothing cryptographic ([`Self::handle_input`]
    /// does); an agent that claims nothing leaves the datagram to the others uncounted.
    pub fn claims(&self, bytes: &[u8]) -> bool {
        match wire::parse(bytes) {
            Ok(Parsed::Request(req)) => {
                req.local_ufrag == self.sess.local.ufrag
                    || self
                        .prev
                        .as_ref()
                        .is_some_and(|p| req.local_ufrag == p.local.ufrag)
            }
            Ok(Parsed::Response(resp)) => {
                self.txns.iter().any(|t| t.id == resp.id) || self.finished.contains(&resp.id)
            }
            _ => false,
        }
    }

    /// Handles a STUN datagram that arrived along `route` from `from`.
    pub fn handle_input(
        &mut self,
        now: Instant,
        route: Route,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Inbound {
        self.last_now = Some(now);
        let parsed = wire::parse(bytes);
        if matches!(parsed, Ok(Parsed::NotIce)) {
            return Inbound::NotIce;
        }
        if !self.locals.iter().any(|l| l.route == route) {
            return self.refuse(Refusal::UnknownRoute);
        }
        let result = match parsed {
            Err(r) => Err(r),
            Ok(Parsed::NotIce) => return Inbound::NotIce,
            Ok(Parsed::Indication) => Ok(()),
            Ok(Parsed::Request(req)) => self.on_request(now, route, from, req),
            Ok(Parsed::Response(resp)) => self.on_response(now, route, from, resp),
        };
        match result {
            Ok(()) => {
                self.evaluate(now);
                self.drive(now);
                Inbound::Consumed
            }
            Err(r) => self.refuse(r),
        }
    }

    /// Runs the timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.drive(now);
    }

    // ------------------------------------------------------------------ outputs

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`IceAgent::handle_timeout`] must run next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        let pace = self.pace_ready;
        for t in &self.txns {
            match (t.next, t.kind) {
                (Some(n), TxnKind::Check(_)) if t.sends < self.timing.check_sends => {
                    at(pace.map_or(n, |p| n.max(p)))
                }
                (Some(n), _) => at(n),
                (None, _) => {}
            }
            at(t.expires);
        }
        if self.paced_work_waiting() {
            if let Some(p) = pace {
                at(p);
            }
        }
        for p in [self.selected, self.standby].into_iter().flatten() {
            let pair = &self.pairs[&p];
            if let Some(t) = pair.consent_next {
                at(t);
            }
            if let Some(t) = pair.last_response {
                at(t + self.consent_timeout_of(pair));
            }
        }
        if let Some(t) = self.grace_end() {
            at(t);
        }
        next
    }

    // ------------------------------------------------------------------ internals

    /// How long `p` may go unanswered before it loses consent: relayed pairs use the fast
    /// relayed timers only while a standby with no relay in common is held ([`Timing`]).
    fn consent_timeout_of(&self, p: &Pair) -> Duration {
        self.timing
            .consent_timeout_for(p.relayed() && self.fallback, p.rtt)
    }

    fn refuse(&mut self, r: Refusal) -> Inbound {
        *self.counters.refused.entry(r).or_default() += 1;
        Inbound::Refused(r)
    }

    fn local_candidate(
        &mut self,
        kind: CandidateKind,
        addr: SocketAddr,
        base: IpAddr,
    ) -> Candidate {
        let same = |c: &Candidate| c.kind == kind && c.addr.is_ipv4() == addr.is_ipv4();
        let nth = self.locals.iter().filter(|l| same(&l.cand)).count()
            + self.reflexive.iter().filter(|c| same(c)).count();
        Candidate {
            kind,
            addr,
            priority: priority(kind, local_preference(addr.ip(), nth)),
            foundation: foundation(kind, base, None),
        }
    }

    fn creds(&self, sess: u32) -> Option<&Session> {
        if self.sess.id == sess {
            Some(&self.sess)
        } else {
            self.prev.as_ref().filter(|g| g.id == sess)
        }
    }

    /// Forms the pair of local `route` and remote `r` (RFC 8445 §6.1.2), if compatible and
    /// within bounds. Returns its id.
    fn pair_up(&mut self, route: Route, local_priority: u32, r: usize) -> Option<u32> {
        let remote = self.remotes[r];
        if remote.sess != self.sess.id || !compatible(route.local(), remote.cand.addr) {
            return None;
        }
        if let Some((id, _)) = self.pairs.iter().find(|(_, p)| {
            p.sess == remote.sess && p.route == route && p.remote == remote.cand.addr
        }) {
            return Some(*id);
        }
        let priority = pair_priority_for(self.controlling, local_priority, remote.cand.priority);
        if self.pairs.len() >= self.timing.max_pairs {
            // RFC 8445 §6.1.2.5: keep the highest-priority pairs; drop the lowest that is not
            // working or being checked.
            let victim = self
                .pairs
                .iter()
                .filter(|(id, p)| {
                    matches!(p.state, State::Waiting | State::Failed)
                        && Some(**id) != self.selected
                        && Some(**id) != self.standby
                })
                .min_by_key(|(_, p)| p.priority)
                .map(|(id, p)| (*id, p.priority));
            match victim {
                Some((id, p)) if p < priority => self.remove_pair(id),
                _ => return None,
            }
        }
        let id = self.next_pair;
        self.next_pair += 1;
        self.pairs.insert(
            id,
            Pair {
                route,
                local_priority,
                valid_local_priority: None,
                remote: remote.cand.addr,
                remote_kind: remote.cand.kind,
                remote_priority: remote.cand.priority,
                sess: remote.sess,
                priority,
                state: State::Waiting,
                validated: None,
                last_response: None,
                mapped: None,
                nominated: None,
                pending_nomination: None,
                consent_next: None,
                rtt: None,
            },
        );
        if let Route::Relay(relayed) = route
            && self.permissions.insert((relayed, remote.cand.addr.ip()))
        {
            self.events.push_back(Event::RelayPermission {
                relayed,
                peer: remote.cand.addr,
            });
        }
        Some(id)
    }

    fn remove_pair(&mut self, id: u32) {
        self.pairs.remove(&id);
        self.txns.retain(|t| t.pair != id);
        self.triggered.retain(|(p, _)| *p != id);
        if self.selected == Some(id) {
            self.selected = None;
        }
        if self.standby == Some(id) {
            self.standby = None;
        }
        if self.nominating == Some(id) {
            self.nominating = None;
        }
    }
}

/// A consent interval with RFC 7675 §5.1's randomisation.
fn jittered(rng: &mut StdRng, t: &Timing, relayed: bool) -> Duration {
    let j = t.consent_jitter;
    let f = if j > 0.0 {
        rng.random_range(1.0 - j..1.0 + j)
    } else {
        1.0
    };
    t.consent(relayed).0.mul_f64(f)
}

/// Addresses that can be a peer at all: unicast, a real port.
fn usable_address(a: SocketAddr) -> bool {
    let ip = a.ip();
    a.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && !matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

/// Whether a local and a remote address can form a pair: same family, and loopback or
/// IPv6 link-local only with their own kind (such a pair could never work, RFC 8445 §6.1.2.2).
fn compatible(local: SocketAddr, remote: SocketAddr) -> bool {
    let link_local = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    };
    local.is_ipv4() == remote.is_ipv4()
        && local.ip().is_loopback() == remote.ip().is_loopback()
        && link_local(local.ip()) == link_local(remote.ip())
}
