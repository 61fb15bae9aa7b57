//! NAT behaviour discovery (RFC 5780 §4) as a sans-IO state machine.
//!
//! # Driving it
//!
//! Create a [`Probe`] with the local addresses of [`Probe::sockets_needed`] UDP sockets (all
//! bound to the same local IP, socket 0 first). Then loop:
//!
//! 1. send everything [`Probe::poll_transmit`] returns;
//! 2. wait for a datagram on any socket or for [`Probe::poll_timeout`], whichever is first;
//! 3. feed it with [`Probe::handle_input`] or [`Probe::handle_timeout`];
//!
//! until [`Probe::poll_report`] returns the report. Time only moves forward; nothing here reads a
//! clock or touches a socket, so tests drive it with a simulated clock and a simulated NAT.
//!
//! # The plan, and why in this order
//!
//! 1. **Discovery.** Binding requests to the first server, then the others (see
//!    [`Timing::stagger`]); RTT to each. The first server (in the order given) that advertises an
//!    alternate address becomes the primary. A server that has not answered gets requests at a
//!    fixed short interval, as many as it takes for their all being lost to be improbable under
//!    a worst-case loss; if no server answers any, UDP is blocked (see [`Timing`] for the
//!    numbers: 33 requests within 1.5 s).
//! 2. **Filtering and hairpinning**, in rounds from the main socket, which so far has contacted
//!    only the primary address A1:p1: CHANGE-REQUEST(ip+port) (answered from A2:p2: endpoint-
//!    independent filtering), CHANGE-REQUEST(port) (from A1:p2: address-dependent at most), a
//!    control request, and a request from a second socket to our own mapped address
//!    (hairpinning). No packet goes to A2 before these are decided: some NATs keep address-
//!    dependent filter state for the whole box, and one packet to A2 from any socket would let
//!    A2's answers in everywhere, making a restricted cone look like a full cone. (NATs that keep
//!    it per mapping are read correctly by the same order.) Nor does any go to A1:p2 (a server
//!    listed at the primary's IP and alternate port): an address-and-port-dependent filter would
//!    then let the CHANGE-REQUEST(port) answers in, making a port-restricted cone look restricted.
//! 3. **Mapping**: the main socket asks A2:p1 and A2:p2 (RFC 5780 §4.3 tests II and III).
//! 4. **Lifetime** (optional): sockets bound at one instant are each probed at increasing delays,
//!    by requests from another socket whose RESPONSE-PORT points the answer at the probed
//!    socket's mapping (RFC 5780 §4.6), tried until one is answered or their silence is
//!    conclusive next to control requests; the lifetime lies between the last delay the binding
//!    survived and the first it did not.
//!
//! Every "no" (a filter, no hairpinning, an expired binding, an unreachable server) is decided by
//! one rule, [`silence_is_conclusive`]; see [`Timing`] for how it bounds wrong answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::defaults::{Timing, answer_rate_lower_bound, lifetime_schedule, silence_is_conclusive};
use super::report::{Behavior, Evidence, NatKind, Report, ServerReport, classify};
use crate::stun::timers::RttEstimator;
use crate::stun::{
    ChangeRequest, Class, IntegrityCheck, Message, MessageBuilder, TransactionId, method,
};

/// What to probe.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// STUN servers, in order of preference. All of one address family.
    pub servers: Vec<SocketAddr>,
    /// Measure the binding lifetime too.
    pub lifetime: bool,
    pub timing: Timing,
}

pub use crate::transmit::Transmit;

/// What the probe is doing, for a progress display.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stage {
    Discovery,
    Behaviour,
    /// Probing the binding lifetime at this delay.
    Lifetime(Duration),
    Done,
}

const MAIN: usize = 0;
const HAIRPIN: usize = 1;
const LIFETIME_Y: usize = 2;
const LIFETIME_X0: usize = 3;
/// Lifetime probe points left undecided (an outage, or loss too heavy to tell) before the search
/// gives up.
const MAX_OUTAGES: u32 = 3;
/// Transactions older than this are forgotten (bounded memory whatever the server does).
const TXN_MAX_AGE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ask {
    Discover {
        server: usize,
    },
    Control {
        round: usize,
    },
    ChangeBoth,
    ChangePort,
    Hairpin,
    MapAlt {
        alt_port: bool,
    },
    LifetimeBind {
        i: usize,
    },
    LifetimeProbe {
        i: usize,
    },
    /// A plain request from the prober next to each lifetime probe: its answer shows the server
    /// and path were up, so a missing probe answer means the binding, not an outage.
    LifetimeControl {
        i: usize,
        try_: usize,
    },
}

#[derive(Clone, Copy, Debug)]
struct Txn {
    ask: Ask,
    sent: Instant,
}

#[derive(Clone, Debug)]
struct Server {
    addr: SocketAddr,
    /// When we began contacting it; `None` while waiting.
    started: Option<Instant>,
    /// Held back until filtering is decided because it shares the primary's alternate IP, or is
    /// the primary's IP on the alternate port.
    deferred: bool,
    next_send: Option<Instant>,
    requests: u32,
    responses: u32,
    /// When each request went out while it had not answered yet (at most
    /// [`Timing::blocked_probes`]): the evidence that it is unreachable.
    unanswered: Vec<Instant>,
    rtts: Vec<Duration>,
    mapped: Option<SocketAddr>,
    other: Option<SocketAddr>,
    done: bool,
}

impl Server {
    /// When the silence of a server that never answered becomes conclusive: the moment its
    /// last needed request has waited [`Timing::answer_wait`]. `None` until all are sent.
    fn silent_by(&self, t: &Timing) -> Option<Instant> {
        if self.responses > 0 {
            return None;
        }
        let n = t.blocked_probes() as usize;
        self.unanswered.get(n - 1).map(|&sent| sent + t.answer_wait)
    }
}

/// A yes/no test answered by a response arriving (yes) or by conclusive silence (no).
#[derive(Clone, Debug, PartialEq)]
enum Question {
    NotAsked,
    Asking { first_round: usize },
    Yes,
    No,
    Undecided(String),
}

impl Question {
    fn pending(&self) -> bool {
        matches!(self, Question::NotAsked | Question::Asking { .. })
    }
}

#[derive(Clone, Copy, Debug)]
struct Round {
    sent: Instant,
    control_ok: bool,
}

#[derive(Debug)]
struct Behaviour {
    primary: usize,
    a1: SocketAddr,
    a2: Option<SocketAddr>,
    m1: SocketAddr,
    rtt: RttEstimator,
    rounds: Vec<Round>,
    next_round: Instant,
    change_both: Question,
    change_port: Question,
    hairpin: Question,
    /// Round at which the mapping tests started (after filtering was decided).
    mapping_from: Option<usize>,
    map_ii: Option<SocketAddr>,
    map_iii: Option<SocketAddr>,
    mapping_gave_up: bool,
    /// A packet went to A2's IP before the filtering tests ended (see module docs).
    tainted: bool,
    /// A packet went to A1:p2 before the filtering tests ended (see module docs).
    port_tainted: bool,
}

#[derive(Clone, Debug)]
struct LifetimeSocket {
    at: Duration,
    mapped_port: Option<u16>,
    /// Last packet exchanged on this binding before probing (the binding's refresh time).
    last_seen: Option<Instant>,
    bind_attempts: u32,
    next_bind: Option<Instant>,
    /// The tries of this point's probe, each sent with a control.
    tries: Vec<Round>,
    next_probe: Option<Instant>,
    /// Survived (true) or expired (false) at `at`.
    outcome: Option<bool>,
    /// For an expiry: how long after `last_seen` the binding was known to be gone, i.e. when
    /// the last counted try's answer was due. Later than `at` by the tries a conclusive silence
    /// took; the reported range ends here so that it still holds the lifetime.
    expired_by: Option<Duration>,
    /// Never got a binding (its requests all went unanswered), or its probes' silence stayed
    /// inconclusive (too few controls answered): says nothing about lifetime.
    excluded: bool,
}

#[derive(Debug)]
struct Lifetime {
    sockets: Vec<LifetimeSocket>,
    done: bool,
    unsupported: bool,
    /// Probe points left undecided: a server or path outage, or loss too heavy to tell.
    outages: u32,
}

/// NAT behaviour discovery. See the module docs for the driving loop and the plan.
#[derive(Debug)]
pub struct Probe {
    config: ProbeConfig,
    start: Instant,
    locals: Vec<SocketAddr>,
    servers: Vec<Server>,
    txns: HashMap<TransactionId, Txn>,
    behaviour: Option<Behaviour>,
    behaviour_done: bool,
    lifetime: Option<Lifetime>,
    transmits: Vec<Transmit>,
    report: Option<Report>,
    report_taken: bool,
    undecided: Vec<String>,
}

impl Probe {
    /// Sockets the driver must open for `config`: main, hairpin sender, and one per lifetime
    /// probe point plus their prober.
    pub fn sockets_needed(config: &ProbeConfig) -> usize {
        if config.lifetime {
            LIFETIME_X0 + lifetime_schedule(config.timing.lifetime_max).len()
        } else {
            LIFETIME_Y
        }
    }

    /// Starts probing. `locals` are the bound addresses of the sockets, socket 0 first.
    pub fn new(config: ProbeConfig, locals: Vec<SocketAddr>, now: Instant) -> Probe {
        assert!(!config.servers.is_empty(), "at least one server");
        assert!(
            locals.len() >= Self::sockets_needed(&config),
            "not enough sockets"
        );
        let servers = config
            .servers
            .iter()
            .map(|&addr| Server {
                addr,
                started: None,
                deferred: false,
                next_send: None,
                requests: 0,
                responses: 0,
                unanswered: Vec::new(),
                rtts: Vec::new(),
                mapped: None,
                other: None,
                done: false,
            })
            .collect();
        let mut probe = Probe {
            config,
            start: now,
            locals,
            servers,
            txns: HashMap::new(),
            behaviour: None,
            behaviour_done: false,
            lifetime: None,
            transmits: Vec::new(),
            report: None,
            report_taken: false,
            undecided: Vec::new(),
        };
        probe.start_server(0, now);
        probe.drive(now);
        probe
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.transmits.is_empty() {
            None
        } else {
            Some(self.transmits.remove(0))
        }
    }

    /// The finished report, once (then `None`).
    #[must_use]
    pub fn poll_report(&mut self) -> Option<Report> {
        if self.report_taken {
            return None;
        }
        let r = self.report.take();
        self.report_taken = r.is_some();
        r
    }

    pub fn is_done(&self) -> bool {
        self.report.is_some() || self.report_taken
    }

    pub fn stage(&self) -> Stage {
        if self.is_done() {
            Stage::Done
        } else if let Some(l) = &self.lifetime {
            let at = l
                .sockets
                .iter()
                .find(|s| s.outcome.is_none())
                .map_or(Duration::ZERO, |s| s.at);
            Stage::Lifetime(at)
        } else if self.behaviour.is_some() {
            Stage::Behaviour
        } else {
            Stage::Discovery
        }
    }

    /// When [`Probe::handle_timeout`] must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_done() {
            return None;
        }
        let t = &self.config.timing;
        let mut next: Option<Instant> = None;
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        for s in &self.servers {
            if s.done {
                continue;
            }
            at(s.next_send);
            if s.responses == 0 {
                at(s.silent_by(t));
            } else {
                at(s.started.map(|start| start + t.blocked_budget));
            }
        }
        if self.servers[0].started.is_some()
            && self
                .servers
                .iter()
                .any(|s| s.started.is_none() && !s.deferred)
        {
            at(Some(self.start + t.stagger));
        }
        if let (Some(b), false) = (&self.behaviour, self.behaviour_done) {
            at(Some(b.next_round));
        }
        if let (Some(l), Some(b)) = (&self.lifetime, &self.behaviour) {
            let settle = b.rtt.rto(t.rto_floor, t.answer_wait) * t.settle_rtos;
            for s in &l.sockets {
                at(s.next_bind);
                at(s.next_probe);
                if s.outcome.is_none() && !s.excluded && s.next_probe.is_none() {
                    // All tries sent: the last one settling decides the point. (While tries
                    // are still going out, each send re-judges the point.)
                    at(s.tries.last().map(|r| r.sent + settle));
                }
            }
        }
        next
    }

    /// Advances timers to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.drive(now);
    }

    /// Feeds a datagram that arrived on socket `socket` from `from`.
    pub fn handle_input(&mut self, now: Instant, socket: usize, from: SocketAddr, data: &[u8]) {
        let Ok(msg) = Message::parse(data) else {
            return;
        };
        if msg.check_fingerprint() == IntegrityCheck::Invalid || msg.method() != method::BINDING {
            return;
        }
        let txid = msg.transaction_id();
        match msg.class() {
            Class::Request => {
                // Our own hairpin request, turned around by the NAT.
                if socket == MAIN
                    && let Some(t) = self.txns.get(&txid)
                    && t.ask == Ask::Hairpin
                    && let Some(b) = &mut self.behaviour
                    && b.hairpin.pending()
                {
                    b.hairpin = Question::Yes;
                }
            }
            Class::Success | Class::Error => {
                let Some(txn) = self.txns.get(&txid).copied() else {
                    return;
                };
                self.on_response(now, txn, socket, from, &msg);
            }
            Class::Indication => {}
        }
        self.drive(now);
    }

    fn on_response(
        &mut self,
        now: Instant,
        txn: Txn,
        socket: usize,
        from: SocketAddr,
        msg: &Message<'_>,
    ) {
        let ok = msg.class() == Class::Success;
        let rtt = now.saturating_duration_since(txn.sent);
        let mapped = msg.reflexive_address();
        match txn.ask {
            Ask::Discover { server } => {
                if socket != MAIN || from != self.servers[server].addr {
                    return;
                }
                let s = &mut self.servers[server];
                s.responses += 1;
                s.rtts.push(rtt);
                if ok {
                    s.mapped = s.mapped.or(mapped);
                    // RFC 5780 §7.4: OTHER-ADDRESS is where CHANGE-REQUEST(ip+port) answers come
                    // from, so it differs from the address asked in IP and port. A server that
                    // names its configured alternate whichever socket is asked (when the user
                    // lists that alternate as the server) would have the tests compare an
                    // address with itself and misread the NAT: treat it as having none.
                    let addr = s.addr;
                    let other = msg
                        .other_address()
                        .filter(|o| o.ip() != addr.ip() && o.port() != addr.port());
                    s.other = s.other.or(other);
                }
                if s.responses >= self.config.timing.rtt_samples {
                    s.done = true;
                    s.next_send = None;
                } else {
                    // Next sample right away: ping-pong, one outstanding at a time.
                    s.next_send = Some(now);
                }
                self.txns.remove(&msg.transaction_id());
            }
            Ask::Control { round } => {
                let Some(b) = &mut self.behaviour else { return };
                if socket != MAIN || from != b.a1 {
                    return;
                }
                b.rtt.sample(rtt);
                if let Some(r) = b.rounds.get_mut(round) {
                    r.control_ok = true;
                }
                self.servers[b.primary].rtts.push(rtt);
                self.servers[b.primary].responses += 1;
                self.txns.remove(&msg.transaction_id());
            }
            Ask::ChangeBoth | Ask::ChangePort => {
                let Some(b) = &mut self.behaviour else { return };
                if socket != MAIN {
                    return;
                }
                let both = txn.ask == Ask::ChangeBoth;
                let q = if both {
                    &mut b.change_both
                } else {
                    &mut b.change_port
                };
                if !q.pending() {
                    return;
                }
                let expected = if both {
                    from.ip() != b.a1.ip() && from.port() != b.a1.port()
                } else {
                    from.ip() == b.a1.ip() && from.port() != b.a1.port()
                };
                *q = if !ok {
                    Question::Undecided("the server refused CHANGE-REQUEST".into())
                } else if !expected {
                    Question::Undecided(format!(
                        "the server ignored CHANGE-REQUEST (answered from {from})"
                    ))
                } else {
                    Question::Yes
                };
            }
            Ask::MapAlt { alt_port } => {
                let Some(b) = &mut self.behaviour else { return };
                if socket != MAIN || !ok {
                    return;
                }
                if alt_port {
                    b.map_iii = b.map_iii.or(mapped);
                } else {
                    b.map_ii = b.map_ii.or(mapped);
                }
            }
            Ask::Hairpin => {}
            Ask::LifetimeBind { i } => {
                let Some(l) = &mut self.lifetime else { return };
                if socket != LIFETIME_X0 + i {
                    return;
                }
                let s = &mut l.sockets[i];
                if s.mapped_port.is_none() && ok {
                    s.mapped_port = mapped.map(|m| m.port());
                    s.last_seen = Some(now);
                    s.next_bind = None;
                    s.next_probe = Some(now + s.at);
                }
            }
            Ask::LifetimeControl { i, try_ } => {
                if let Some(l) = &mut self.lifetime
                    && socket == LIFETIME_Y
                    && ok
                    && let Some(r) = l.sockets[i].tries.get_mut(try_)
                {
                    r.control_ok = true;
                }
            }
            Ask::LifetimeProbe { i } => {
                let Some(l) = &mut self.lifetime else { return };
                if !ok {
                    // RESPONSE-PORT not supported (420) or refused: nothing to measure with.
                    l.unsupported = true;
                    return;
                }
                if socket == LIFETIME_X0 + i && l.sockets[i].outcome.is_none() {
                    l.sockets[i].outcome = Some(true);
                    l.sockets[i].next_probe = None;
                }
            }
        }
    }

    /// Runs every due timer and every decision that the current evidence allows.
    fn drive(&mut self, now: Instant) {
        if self.is_done() {
            return;
        }
        self.txns
            .retain(|_, t| now.saturating_duration_since(t.sent) < TXN_MAX_AGE);
        self.drive_discovery(now);
        if self.behaviour.is_none() {
            self.choose_primary(now);
        }
        if self.behaviour.is_some() && !self.behaviour_done {
            self.drive_behaviour(now);
        }
        if self.behaviour_done && self.config.lifetime && self.lifetime.is_none() {
            self.start_lifetime(now);
        }
        if self.lifetime.is_some() {
            self.drive_lifetime(now);
        }
        self.maybe_finish(now);
    }

    fn start_server(&mut self, i: usize, now: Instant) {
        let s = &mut self.servers[i];
        if s.started.is_none() {
            s.started = Some(now);
            s.deferred = false;
            s.next_send = Some(now);
        }
    }

    fn filtering_settled(&self) -> bool {
        self.behaviour
            .as_ref()
            .is_some_and(|b| !b.change_both.pending() && !b.change_port.pending())
    }

    fn drive_discovery(&mut self, now: Instant) {
        let t = self.config.timing.clone();
        // The other servers join once the first answered (we then know which of them would
        // touch its alternate address or port) or after the stagger.
        let first_answered = self.servers[0].responses > 0;
        if first_answered || now >= self.start + t.stagger {
            let first = &self.servers[0];
            let a2_ip = first.other.map(|o| o.ip());
            let a1_p2 = first
                .other
                .map(|o| SocketAddr::new(first.addr.ip(), o.port()));
            let filtering_open = !self.filtering_settled();
            for i in 1..self.servers.len() {
                if self.servers[i].started.is_some() {
                    continue;
                }
                let addr = self.servers[i].addr;
                let touches_alt = Some(addr.ip()) == a2_ip || Some(addr) == a1_p2;
                if touches_alt && filtering_open {
                    self.servers[i].deferred = true;
                } else {
                    self.start_server(i, now);
                }
            }
        }
        let needed = t.blocked_probes() as usize;
        for i in 0..self.servers.len() {
            let s = &self.servers[i];
            let Some(started) = s.started else { continue };
            if s.done {
                continue;
            }
            // Unreachable: its requests' silence is conclusive under the worst-case loss (see
            // `defaults`). Sampling an answering server ends with the window.
            let finished = if s.responses == 0 {
                let waited = s.unanswered.iter();
                let due = waited.filter(|&&sent| sent + t.answer_wait <= now).count();
                silence_is_conclusive(due as u32, t.worst_answer_rate(), t.false_negative)
            } else {
                now >= started + t.blocked_budget
            };
            if finished {
                self.servers[i].done = true;
                self.servers[i].next_send = None;
                continue;
            }
            if s.next_send.is_some_and(|at| at <= now) {
                let to = s.addr;
                self.send(now, MAIN, to, Ask::Discover { server: i }, |_| {});
                let s = &mut self.servers[i];
                s.requests += 1;
                s.next_send = if s.responses == 0 {
                    // Silent so far: a fixed short interval, and no more than the rule needs.
                    s.unanswered.push(now);
                    (s.unanswered.len() < needed).then(|| now + t.discovery_interval())
                } else {
                    // Sampling an answering server: retransmit at its RTO.
                    let mut est = RttEstimator::default();
                    s.rtts.iter().for_each(|r| est.sample(*r));
                    Some(now + est.rto(t.rto_floor, t.answer_wait))
                };
            }
        }
    }

    fn choose_primary(&mut self, now: Instant) {
        // The first server, in the order given, that answered with an alternate address, once
        // every server before it has answered without one or given up.
        let mut chosen = None;
        for (i, s) in self.servers.iter().enumerate() {
            if s.mapped.is_some() && s.other.is_some() {
                chosen = Some(i);
                break;
            }
            if !(s.done || s.mapped.is_some()) {
                return; // still waiting to hear whether this one supports RFC 5780
            }
        }
        let fallback = chosen.is_none();
        let primary = match chosen {
            Some(i) => i,
            None => {
                // No RFC 5780 server: wait until every server is settled, then use the first
                // that answered for hairpinning and lifetime.
                if !self.servers.iter().all(|s| s.done) {
                    return;
                }
                match self.servers.iter().position(|s| s.mapped.is_some()) {
                    Some(i) => i,
                    None => return,
                }
            }
        };
        let s = &self.servers[primary];
        let (Some(m1), a1) = (s.mapped, s.addr) else {
            return;
        };
        let a2 = if fallback { None } else { s.other };
        // Did anything already go to A2's address (a server listed twice, a slow first server)?
        let tainted = a2.is_some_and(|a2| {
            self.servers
                .iter()
                .any(|o| o.started.is_some() && o.addr.ip() == a2.ip())
        });
        // Or to A1:p2?
        let port_tainted = a2.is_some_and(|a2| {
            let a1_p2 = SocketAddr::new(a1.ip(), a2.port());
            self.servers
                .iter()
                .any(|o| o.started.is_some() && o.addr == a1_p2)
        });
        let mut rtt = RttEstimator::default();
        s.rtts.iter().for_each(|r| rtt.sample(*r));
        let (change_both, change_port) = if a2.is_some() {
            (Question::NotAsked, Question::NotAsked)
        } else {
            let why = "no server with an alternate address (RFC 5780): filtering not tested";
            (
                Question::Undecided(why.into()),
                Question::Undecided(why.into()),
            )
        };
        self.behaviour = Some(Behaviour {
            primary,
            a1,
            a2,
            m1,
            rtt,
            rounds: Vec::new(),
            next_round: now,
            change_both,
            change_port,
            hairpin: Question::NotAsked,
            mapping_from: None,
            map_ii: None,
            map_iii: None,
            mapping_gave_up: false,
            tainted,
            port_tainted,
        });
    }

    fn drive_behaviour(&mut self, now: Instant) {
        let t = self.config.timing.clone();
        let b = self.behaviour.as_mut().expect("behaviour started");
        let rto = b.rtt.rto(t.rto_floor, t.answer_wait);
        let settle = rto * t.settle_rtos;

        // 1. Decide what the evidence so far allows (answers arrive any time; silence becomes
        //    conclusive as rounds settle).
        let settled = b
            .rounds
            .iter()
            .take_while(|r| r.sent + settle <= now)
            .count();
        let max = t.max_rounds as usize;
        let judge = |q: &mut Question, rounds: &[Round]| {
            if let Question::Asking { first_round } = *q {
                // A question is asked in at most `max` rounds; judge those that have settled.
                let end = settled.min(first_round + max);
                let window = &rounds[first_round.min(end)..end];
                let controls = window.iter().filter(|r| r.control_ok).count() as u32;
                let rate = answer_rate_lower_bound(window.len() as u32, controls);
                if silence_is_conclusive(window.len() as u32, rate, t.false_negative) {
                    *q = Question::No;
                } else if window.len() >= max {
                    *q = Question::Undecided(format!(
                        "no conclusive answer after {max} rounds ({controls} of them with a control answer)"
                    ));
                }
            }
        };
        judge(&mut b.change_both, &b.rounds);
        judge(&mut b.change_port, &b.rounds);
        judge(&mut b.hairpin, &b.rounds);
        let filtering_done = !b.change_both.pending() && !b.change_port.pending();
        if filtering_done && b.a2.is_some() && b.mapping_from.is_none() {
            // Only now may packets go to A2 (see the module docs); start on the next round, now.
            b.mapping_from = Some(b.rounds.len());
            b.next_round = now;
        }
        let mapping_pending = match (b.a2, b.mapping_from) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(_), Some(from)) => {
                let answered = b.map_ii == Some(b.m1)
                    || b.map_iii == Some(b.m1)
                    || (b.map_ii.is_some() && b.map_iii.is_some());
                if !answered && b.rounds.len() - from >= max {
                    b.mapping_gave_up = true;
                }
                !answered && !b.mapping_gave_up
            }
        };
        if !mapping_pending && filtering_done && !b.hairpin.pending() {
            self.behaviour_done = true;
            // Servers that share A2's address can now be contacted.
            for i in 0..self.servers.len() {
                if self.servers[i].deferred {
                    self.start_server(i, now);
                }
            }
            return;
        }
        if now < b.next_round {
            return;
        }

        // 2. Send the next round: a control request and every question still open.
        let round = b.rounds.len();
        b.rounds.push(Round {
            sent: now,
            control_ok: false,
        });
        // One RTT apart: rounds are separate transactions, so they pipeline (see `defaults`).
        b.next_round = now + b.rtt.srtt().unwrap_or(rto).max(t.rto_floor);
        for q in [&mut b.change_both, &mut b.change_port, &mut b.hairpin] {
            if *q == Question::NotAsked {
                *q = Question::Asking { first_round: round };
            }
        }
        let asking = |q: &Question| matches!(q, Question::Asking { first_round } if round - first_round < max);
        let (ask_both, ask_port, ask_hairpin) = (
            asking(&b.change_both),
            asking(&b.change_port),
            asking(&b.hairpin),
        );
        let (ask_ii, ask_iii) = match b.mapping_from {
            Some(_) if mapping_pending => (b.map_ii.is_none(), b.map_iii.is_none()),
            _ => (false, false),
        };
        let (a1, a2, m1, primary) = (b.a1, b.a2, b.m1, b.primary);
        self.send(now, MAIN, a1, Ask::Control { round }, |_| {});
        self.servers[primary].requests += 1;
        if ask_both {
            self.send(now, MAIN, a1, Ask::ChangeBoth, |m| {
                m.change_request(ChangeRequest {
                    ip: true,
                    port: true,
                });
            });
        }
        if ask_port {
            self.send(now, MAIN, a1, Ask::ChangePort, |m| {
                m.change_request(ChangeRequest {
                    ip: false,
                    port: true,
                });
            });
        }
        if ask_hairpin {
            self.send(now, HAIRPIN, m1, Ask::Hairpin, |_| {});
        }
        if let Some(a2) = a2 {
            if ask_ii {
                let to = SocketAddr::new(a2.ip(), a1.port());
                self.send(now, MAIN, to, Ask::MapAlt { alt_port: false }, |_| {});
            }
            if ask_iii {
                self.send(now, MAIN, a2, Ask::MapAlt { alt_port: true }, |_| {});
            }
        }
    }

    fn start_lifetime(&mut self, now: Instant) {
        let b = self.behaviour.as_ref().expect("behaviour done");
        let translated = self.locals[MAIN] != b.m1;
        let open = b.change_both == Question::Yes;
        if !translated && open {
            self.undecided
                .push("lifetime: no NAT and no filter, so no binding to expire".into());
            self.lifetime = Some(Lifetime {
                sockets: Vec::new(),
                done: true,
                unsupported: false,
                outages: 0,
            });
            return;
        }
        let sockets = lifetime_schedule(self.config.timing.lifetime_max)
            .into_iter()
            .map(|at| LifetimeSocket {
                at,
                mapped_port: None,
                last_seen: None,
                bind_attempts: 0,
                next_bind: Some(now),
                tries: Vec::new(),
                next_probe: None,
                outcome: None,
                expired_by: None,
                excluded: false,
            })
            .collect();
        self.lifetime = Some(Lifetime {
            sockets,
            done: false,
            unsupported: false,
            outages: 0,
        });
    }

    fn drive_lifetime(&mut self, now: Instant) {
        let t = self.config.timing.clone();
        let Some(b) = &self.behaviour else { return };
        let (a1, rto) = (b.a1, b.rtt.rto(t.rto_floor, t.answer_wait));
        let srtt = b.rtt.srtt().unwrap_or(rto);
        let try_interval = (srtt / 4).max(t.rto_floor);
        let Some(l) = &mut self.lifetime else { return };
        if l.done {
            return;
        }
        if l.unsupported {
            l.done = true;
            self.undecided
                .push("lifetime: the server does not support RESPONSE-PORT".into());
            return;
        }
        // Binds out of attempts and probes whose silence is decided are settled first, so that
        // the stop rule below sees every outcome known by now: checked before, it waited for
        // some later timer to notice, and waited forever when none was left (an expiry at the
        // last point of the schedule).
        let settle = rto * t.settle_rtos;
        for s in &mut l.sockets {
            if s.next_bind.is_some_and(|at| at <= now) && s.bind_attempts >= t.max_rounds {
                s.next_bind = None;
                s.excluded = true;
            }
            if s.outcome.is_some() || s.excluded || s.tries.is_empty() {
                continue;
            }
            // The same rule as every "no" (see `defaults`): the tries whose answers are overdue,
            // judged against the controls answered with them.
            let settled = s
                .tries
                .iter()
                .take_while(|r| r.sent + settle <= now)
                .count();
            let window = &s.tries[..settled.min(t.max_rounds as usize)];
            let controls = window.iter().filter(|r| r.control_ok).count() as u32;
            let q = answer_rate_lower_bound(window.len() as u32, controls);
            if silence_is_conclusive(window.len() as u32, q, t.false_negative) {
                s.outcome = Some(false);
                s.next_probe = None;
                // Gone by the time the last counted try's answer would have come back.
                let answer_due = window[window.len() - 1].sent + srtt;
                s.expired_by = s
                    .last_seen
                    .map(|seen| answer_due.saturating_duration_since(seen));
            } else if window.len() >= t.max_rounds as usize {
                // Too few controls answered to tell an expiry from loss: an outage.
                s.next_probe = None;
                s.excluded = true;
                l.outages += 1;
            }
        }
        // Stop at two consecutive expiries after the last survival, or when no socket is left
        // to hear from (the schedule ended, or the rest never got a binding).
        let outcomes: Vec<Option<bool>> = l
            .sockets
            .iter()
            .filter(|s| !s.excluded)
            .map(|s| s.outcome)
            .collect();
        let last_yes = outcomes.iter().rposition(|o| *o == Some(true));
        let after = last_yes.map_or(0, |i| i + 1);
        let expired_after = outcomes[after..]
            .iter()
            .take_while(|o| **o == Some(false))
            .count();
        if expired_after >= 2 || outcomes.iter().all(|o| o.is_some()) || l.outages >= MAX_OUTAGES {
            l.done = true;
            return;
        }
        let mut sends = Vec::new();
        for (i, s) in l.sockets.iter_mut().enumerate() {
            if s.next_bind.is_some_and(|at| at <= now) {
                s.bind_attempts += 1;
                s.next_bind = Some(now + rto);
                sends.push((LIFETIME_X0 + i, Ask::LifetimeBind { i }, None));
            }
            if s.next_probe.is_some_and(|at| at <= now) && s.outcome.is_none() && !s.excluded {
                let try_ = s.tries.len();
                s.tries.push(Round {
                    sent: now,
                    control_ok: false,
                });
                // Tries are separate transactions, so they need not wait for each other: a
                // quarter SRTT apart keeps the many a "no" may need within a short span.
                let more = s.tries.len() < t.max_rounds as usize;
                s.next_probe = more.then(|| now + try_interval);
                sends.push((LIFETIME_Y, Ask::LifetimeProbe { i }, s.mapped_port));
                sends.push((LIFETIME_Y, Ask::LifetimeControl { i, try_ }, None));
            }
        }
        for (socket, ask, port) in sends {
            self.send(now, socket, a1, ask, |m| {
                if let Some(p) = port {
                    m.response_port(p);
                }
            });
        }
    }

    fn maybe_finish(&mut self, now: Instant) {
        if self.report.is_some() || !self.servers.iter().all(|s| s.done) {
            return;
        }
        // Every server has answered enough or given up. Without a mapped address there is
        // nothing more to test (this includes UDP blocked).
        let testing = self.behaviour.is_some() && !self.behaviour_done;
        let timing_lifetime = self.config.lifetime
            && self.behaviour.is_some()
            && !self.lifetime.as_ref().is_some_and(|l| l.done);
        if !testing && !timing_lifetime {
            self.report = Some(self.build_report(now));
        }
    }

    fn send(
        &mut self,
        now: Instant,
        socket: usize,
        to: SocketAddr,
        ask: Ask,
        attrs: impl FnOnce(&mut MessageBuilder<'_>),
    ) {
        let txid = TransactionId::random();
        let mut data = Vec::with_capacity(64);
        let mut m = MessageBuilder::new(&mut data, method::BINDING, Class::Request, txid);
        attrs(&mut m);
        m.fingerprint();
        self.txns.insert(txid, Txn { ask, sent: now });
        self.transmits.push(Transmit { socket, to, data });
    }

    fn build_report(&mut self, now: Instant) -> Report {
        let mut undecided = std::mem::take(&mut self.undecided);
        let servers: Vec<ServerReport> = self
            .servers
            .iter()
            .map(|s| {
                let mut r = s.rtts.clone();
                r.sort();
                ServerReport {
                    address: s.addr,
                    rtt_ms: r.get(r.len() / 2).map(|d| d.as_secs_f64() * 1e3),
                    requests: s.requests,
                    responses: s.responses,
                    rfc5780: (s.responses > 0).then_some(s.other.is_some()),
                    other_address: s.other,
                    mapped_address: s.mapped,
                }
            })
            .collect();
        let reachable = self.servers.iter().any(|s| s.responses > 0);
        let local = self.locals[MAIN];
        let mut ev = Evidence {
            reachable,
            ..Evidence::default()
        };
        let mut report_hairpin = None;
        let mut m1 = None;
        let mut loss = None;
        let mut rfc5780_server = None;
        if let Some(b) = &self.behaviour {
            m1 = Some(b.m1);
            ev.translated = (!local.ip().is_unspecified()).then(|| local != b.m1);
            if b.a2.is_some() {
                rfc5780_server = Some(b.a1);
            }
            // Filtering.
            ev.filtering = match (&b.change_both, &b.change_port) {
                (Question::Yes, _) if b.tainted => {
                    undecided.push(
                        "filtering: the alternate address was contacted before the test, so endpoint-independent cannot be told from address-dependent"
                            .into(),
                    );
                    None
                }
                (Question::No, Question::Yes) if b.port_tainted => {
                    undecided.push(
                        "filtering: the alternate port was contacted before the test, so address-dependent cannot be told from address-and-port-dependent"
                            .into(),
                    );
                    None
                }
                (Question::Yes, Question::Yes) => Some(Behavior::EndpointIndependent),
                (Question::No, Question::Yes) => Some(Behavior::AddressDependent),
                (Question::No, Question::No) => Some(Behavior::AddressAndPortDependent),
                (Question::Yes, Question::No) => {
                    undecided.push("filtering: inconsistent answers (likely heavy loss)".into());
                    None
                }
                (Question::Undecided(why), _) | (_, Question::Undecided(why)) => {
                    undecided.push(format!("filtering: {why}"));
                    None
                }
                (Question::Yes, _) => Some(Behavior::EndpointIndependent),
                _ => None,
            };
            // Mapping.
            if b.a2.is_some() {
                match (b.map_ii, b.map_iii) {
                    (Some(ii), _) if ii == b.m1 => ev.mapping = Some(Behavior::EndpointIndependent),
                    (None, Some(iii)) if iii == b.m1 => {
                        ev.mapping = Some(Behavior::EndpointIndependent)
                    }
                    (Some(ii), Some(iii)) if ii == iii => {
                        ev.mapping = Some(Behavior::AddressDependent)
                    }
                    (Some(_), Some(_)) => ev.mapping = Some(Behavior::AddressAndPortDependent),
                    (Some(_), None) | (None, Some(_)) => {
                        ev.mapping_dependent = true;
                        undecided.push("mapping: depends on the destination, but whether on its port too could not be decided".into());
                    }
                    (None, None) => {
                        undecided.push("mapping: the alternate address never answered".into())
                    }
                }
            } else {
                let (m, dependent) = mapping_from_servers(&self.servers);
                ev.mapping = m;
                ev.mapping_dependent = dependent;
                if m.is_none() {
                    undecided.push(if dependent {
                        "mapping: differs between servers, but how could not be decided without RFC 5780".into()
                    } else {
                        "mapping: needs an RFC 5780 server or two servers on different addresses".into()
                    });
                }
            }
            if ev.translated == Some(false) {
                // Without translation the mapping is the local address for every destination.
                ev.mapping = Some(Behavior::EndpointIndependent);
            }
            report_hairpin = match &b.hairpin {
                Question::Yes => Some(true),
                Question::No => Some(false),
                Question::Undecided(why) => {
                    undecided.push(format!("hairpinning: {why}"));
                    None
                }
                _ => None,
            };
            let settled: Vec<&Round> = b
                .rounds
                .iter()
                .filter(|r| {
                    r.sent
                        + b.rtt
                            .rto(self.config.timing.rto_floor, self.config.timing.answer_wait)
                        <= now
                })
                .collect();
            if !settled.is_empty() {
                let lost = settled.iter().filter(|r| !r.control_ok).count();
                loss = Some(lost as f64 / settled.len() as f64);
            }
        } else if reachable {
            undecided.push("no server reported a mapped address".into());
        }
        let (lifetime_s, lifetime_range_s) = self.lifetime_result(&mut undecided);
        let nat = classify(ev);
        Report {
            nat,
            mapping: ev.mapping,
            filtering: ev.filtering,
            mapped_address: m1,
            local_address: (!local.ip().is_unspecified()).then_some(local),
            port_preserved: m1.map(|m| m.port() == local.port()),
            hairpinning: report_hairpin,
            lifetime_s,
            lifetime_range_s,
            servers,
            rfc5780_server,
            loss,
            undecided,
            advice: NatKind::advice(nat),
            duration_ms: now.saturating_duration_since(self.start).as_secs_f64() * 1e3,
        }
    }

    fn lifetime_result(&self, undecided: &mut Vec<String>) -> (Option<f64>, Option<[f64; 2]>) {
        let Some(l) = &self.lifetime else {
            return (None, None);
        };
        if l.sockets.is_empty() || l.unsupported {
            return (None, None);
        }
        let probed: Vec<&LifetimeSocket> = l.sockets.iter().filter(|s| !s.excluded).collect();
        let last_yes = probed.iter().rposition(|s| s.outcome == Some(true));
        let first_no_after = probed[last_yes.map_or(0, |i| i + 1)..]
            .iter()
            .find(|s| s.outcome == Some(false));
        if first_no_after.is_none() && l.outages >= MAX_OUTAGES {
            undecided.push("lifetime: the server stopped answering during the search".into());
            return (None, None);
        }
        match (last_yes, first_no_after) {
            (Some(y), Some(n)) => {
                let lo = probed[y].at.as_secs_f64();
                let hi = n.expired_by.unwrap_or(n.at).as_secs_f64();
                (Some((lo + hi) / 2.0), Some([lo, hi]))
            }
            (None, Some(n)) => {
                let hi = n.expired_by.unwrap_or(n.at).as_secs_f64();
                (Some(hi / 2.0), Some([0.0, hi]))
            }
            (Some(y), None) => {
                undecided.push(format!(
                    "lifetime: longer than {:.1} s (the search limit)",
                    probed[y].at.as_secs_f64()
                ));
                (None, None)
            }
            (None, None) => {
                undecided.push("lifetime: no probe was answered".into());
                (None, None)
            }
        }
    }
}

/// Mapping behaviour from ordinary servers' answers to one socket: equal mappings for two
/// server IPs prove endpoint independence; a differing mapping for the same IP and another port
/// proves port dependence; a differing one for another IP proves only "not independent".
fn mapping_from_servers(servers: &[Server]) -> (Option<Behavior>, bool) {
    let seen: Vec<(SocketAddr, SocketAddr)> = servers
        .iter()
        .filter_map(|s| Some((s.addr, s.mapped?)))
        .collect();
    let mut eim = false;
    let mut port_dep = false;
    let mut addr_dep = false;
    let mut same_ip_equal = false;
    for (i, (sa, ma)) in seen.iter().enumerate() {
        for (sb, mb) in &seen[i + 1..] {
            let same_ip = sa.ip() == sb.ip();
            match (same_ip, ma == mb) {
                (false, true) => eim = true,
                (false, false) => addr_dep = true,
                (true, false) => port_dep = true,
                (true, true) => same_ip_equal = true,
            }
        }
    }
    if port_dep {
        (Some(Behavior::AddressAndPortDependent), true)
    } else if addr_dep && same_ip_equal {
        (Some(Behavior::AddressDependent), true)
    } else if addr_dep {
        (None, true)
    } else if eim {
        (Some(Behavior::EndpointIndependent), false)
    } else {
        (None, false)
    }
}
