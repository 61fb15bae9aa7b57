//! The calls of one user, as a sans-IO state machine: placing and taking calls, ringing, accept,
//! reject, busy, cancel, bye, hold, glare and call waiting, with the end-to-end key exchange
//! and candidate exchange riding the call messages ([`super::message`]).
//!
//! # How it is driven
//!
//! The client driver routes what [`Phone::poll_signal`] gives through the directory agent
//! (`route`), feeds back each route's outcome ([`Phone::handle_route_result`]: the callee's
//! ringing rides the end-to-end delivery acknowledgement, so an invite's outcome usually carries
//! it), and hands every delivered payload to [`Phone::handle_signal`], whose return value is the
//! reply to put on that delivery's acknowledgement. The user's side calls [`Phone::dial`],
//! [`Phone::accept`], [`Phone::reject`], [`Phone::hangup`], [`Phone::hold`], [`Phone::resume`]
//! and [`Phone::add_local_candidate`]. Then drain [`Phone::poll_signal`] and
//! [`Phone::poll_event`], and call [`Phone::handle_timeout`] at [`Phone::poll_timeout`]. Time
//! only moves forward.
//!
//! # Replays and duplicates
//!
//! Every message is signed, addressed to us and short-lived ([`super::message::verify`]). An
//! invite's call ID is remembered for as long as an invite could still verify
//! ([`PhoneConfig::replay_window`]), so a replayed invite rings nobody; a duplicate (the caller
//! retrying after a lost acknowledgement) gets the same ringing back. Within a call, each
//! message must carry a sequence number above the last one from that peer.
//!
//! # Privacy
//!
//! A caller who is not in the callee's contacts gets none of the callee's addresses before the
//! callee accepts: the ringing carries only relayed candidates, and host and server-reflexive
//! ones follow the accept. Contacts get everything at ringing, for the fastest setup.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::e2e::{Handshake, MediaKeys};
use super::ice::{
    self, ChangeReason, Credentials, IceAgent, IceConfig, Inbound, LocalCandidate, PathInfo, Route,
    Timing, Transmit,
};
use super::message::{
    self, Body, CALL_VERSION, CallId, Candidate, MediaParams, Offer, Signal, SignalError,
};
use crate::identity::{Identity, UnixClock, UserId};

/// Settings of the call layer. Every timer of it lives here, with how they relate.
#[derive(Clone, Debug)]
pub struct PhoneConfig {
    /// Calls at once; beyond it, callers get busy.
    pub max_calls: usize,
    /// How long a call may ring before the caller gives up ("no answer"). The callee stops
    /// ringing [`PhoneConfig::ring_grace`] later, so the caller's cancel normally ends it first.
    pub ring_timeout: Duration,
    pub ring_grace: Duration,
    /// How long the caller waits for a ringing after its invite was delivered before it calls
    /// the callee unresponsive (the ringing normally rides the delivery's acknowledgement).
    pub invite_timeout: Duration,
    /// Sends of a message whose routing failed for a passing reason (no answer from the mesh);
    /// "unknown user" and "offline" are final.
    pub signal_attempts: u32,
    /// How long an ended call is remembered, to answer its duplicates.
    pub linger: Duration,
    /// How long an invite's call ID is remembered: as long as an invite can verify (its
    /// lifetime plus the allowed clock skew into the future).
    pub replay_window: Duration,
    /// Most call IDs remembered; beyond it, new invites are refused as busy.
    pub max_remembered: usize,
    /// Users whose calls get all our candidates at ringing.
    pub contacts: HashSet<UserId>,
    pub media: MediaParams,
    /// The ICE agents' timers ([`PhoneConfig::ice_timing`] by default).
    pub ice: Timing,
    /// How long an answered call may go without a working path (never found one, or lost it
    /// and found none) before it ends with "no path". Longer than the consent timeout plus an
    /// ICE restart's round trips, shorter than a user's patience. An answered call whose key
    /// exchange has not completed this long after the answer ends the same way (its messages
    /// are retransmitted by the routing layer meanwhile).
    pub path_timeout: Duration,
    /// How long a lost path waits for ICE to find another on its own (a standby pair, a
    /// renomination after a NAT rebinding) before the phone restarts ICE.
    pub restart_after: Duration,
    /// The same for an answered call that has not had a path yet: its first checks are still
    /// under way (a check is retransmitted after 250 ms, then 500 ms, and a relay's permission
    /// may need a retransmission too), and a restart would throw their progress away. At 5 %
    /// loss and 25 ms each way the lab's calls connected up to 0.9 s after the answer; at
    /// `restart_after` (1 s) the slowest of them restarted ICE and one ran out of time.
    pub first_path_restart: Duration,
}

impl PhoneConfig {
    /// ICE timers for calls: RFC 8445 pacing and retransmission as the agent's defaults, and
    /// consent checked every second (±20 %), every 200 ms once one goes unanswered, lost after
    /// 3 s of silence. RFC 7675's 5 s / 30 s would leave a call whose relay died silent for
    /// half a minute; 3 s lets a dead path be replaced (standby pair, ICE restart) well within
    /// the 10 s a user waits. Traffic: one ~100-byte check and answer per second each way.
    ///
    /// Relayed pairs are checked faster: every 200 ms (±20 %), every 100 ms once one goes
    /// unanswered, and while a standby pair avoiding their relays is held (a standby relay
    /// allocation, see [`crate::call::endpoint`]) lost after [`RELAYED_CONSENT_TIMEOUT`]
    /// (600 ms). A relay that dies is then noticed 0.36–0.6 s later and the call moves to the
    /// standby relay's pair (which consent keeps checked at the same pace) within 1 s of the
    /// death, DTX or not: consent runs on its own timer. On a path whose round trip exceeds
    /// 180 ms the agent stretches the timeout to 240 ms plus two round trips, so a long path
    /// is not declared dead between two answers. A false alarm needs every probe of 0.6 s lost
    /// (4 or more), and costs a move to the standby. With no such standby the ordinary 3 s
    /// applies: a fast verdict would only disconnect the call sooner. Traffic: ~100 bytes each
    /// way per 200 ms, 4 kbit/s, a tenth of the call's media, on relayed calls only.
    pub fn ice_timing() -> Timing {
        Timing {
            consent_interval: Duration::from_secs(1),
            consent_retry: Duration::from_millis(200),
            consent_timeout: Duration::from_secs(3),
            relayed_consent_interval: Duration::from_millis(200),
            relayed_consent_retry: Duration::from_millis(100),
            relayed_consent_timeout: RELAYED_CONSENT_TIMEOUT,
            ..Timing::default()
        }
    }
}

impl Default for PhoneConfig {
    fn default() -> Self {
        PhoneConfig {
            max_calls: 1,
            ring_timeout: Duration::from_secs(60),
            ring_grace: Duration::from_secs(5),
            invite_timeout: Duration::from_secs(10),
            signal_attempts: 3,
            linger: Duration::from_secs(30),
            replay_window: Duration::from_secs(message::SIGNAL_LIFETIME + 120),
            max_remembered: 4096,
            contacts: HashSet::new(),
            media: MediaParams::default(),
            ice: PhoneConfig::ice_timing(),
            // A relay dying under a relayed-only call with no standby relay: consent lapses
            // within 3 s, the restart gets 5 s (signalling round trips and a check or two take
            // well under 1 s), so the call ends within 8 s of the death, inside the 10 s a user
            // is promised. (With a standby relay the call moves to it instead, within 1 s.)
            path_timeout: Duration::from_secs(5),
            restart_after: Duration::from_secs(1),
            // Then the restart has `path_timeout`: a call that never connects ends 7.5 s after
            // the answer.
            first_path_restart: Duration::from_millis(2500),
        }
    }
}

/// How long a relayed path goes unanswered before consent is lost (see
/// [`PhoneConfig::ice_timing`]).
pub const RELAYED_CONSENT_TIMEOUT: Duration = Duration::from_millis(600);

/// The reason a `Bye` carries when a user hung up (any other reason is a failure).
const HANGUP: &str = "hangup";

/// Why a call ended. The CLI maps each to an exit status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// We hung up an answered call.
    HungUp,
    /// The peer hung up an answered call.
    PeerHungUp,
    /// The callee declined.
    Rejected(String),
    /// The callee is in as many calls as it takes.
    Busy,
    /// Nobody picked up within the ring timeout.
    NoAnswer,
    /// The directory knows no such user.
    UnknownUser,
    /// The user is not online.
    Offline,
    /// The call could not be signalled, or no media path works.
    NoPath(String),
    /// We cancelled before an answer (caller), or the caller cancelled (callee).
    Cancelled,
    /// We declined an incoming call.
    Declined,
    /// The call was replaced by the peer's simultaneous call to us (glare).
    Replaced(CallId),
}

impl EndReason {
    /// A short stable name for events.
    pub fn code(&self) -> &'static str {
        match self {
            EndReason::HungUp => "hangup",
            EndReason::PeerHungUp => "remote-hangup",
            EndReason::Rejected(_) => "rejected",
            EndReason::Busy => "busy",
            EndReason::NoAnswer => "no-answer",
            EndReason::UnknownUser => "unknown-user",
            EndReason::Offline => "offline",
            EndReason::NoPath(_) => "no-path",
            EndReason::Cancelled => "cancelled",
            EndReason::Declined => "declined",
            EndReason::Replaced(_) => "replaced",
        }
    }
}

/// What the phone reports.
#[derive(Debug)]
pub enum PhoneEvent {
    /// A call is ringing here: accept or reject it.
    Incoming {
        call: CallId,
        from: UserId,
    },
    /// Our call rings at the callee.
    Ringing {
        call: CallId,
    },
    /// The call's media keys are agreed (both sides hold the same; compare `keys.sas`).
    Keys {
        call: CallId,
        keys: MediaKeys,
    },
    /// The call's path: the first one found (`reason` None), or a change.
    Path {
        call: CallId,
        path: PathInfo,
        reason: Option<ChangeReason>,
    },
    /// The call has no working path at the moment (ICE looks for another).
    PathLost {
        call: CallId,
    },
    /// Checks through the relay allocation `relayed` go to `peer`'s IP: install a TURN
    /// permission (see `ice::Event::RelayPermission` for why it names a port).
    RelayPermission {
        relayed: std::net::SocketAddr,
        peer: std::net::SocketAddr,
    },
    /// We restarted ICE on `call` (our mapping may have changed): gather server-reflexive
    /// candidates again and add them.
    Restarted {
        call: CallId,
    },
    /// The call was answered (at the caller: the callee accepted; at the callee: we did).
    Answered {
        call: CallId,
    },
    /// The peer put the call on hold, or resumed it.
    Held {
        call: CallId,
        held: bool,
    },
    Ended {
        call: CallId,
        reason: EndReason,
    },
}

/// A call message to route to a user. `tag` comes back with the route's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub to: UserId,
    pub payload: Vec<u8>,
    pub tag: u64,
}

/// How routing a message failed (the supernode's code and reason).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteError {
    pub code: u16,
    pub reason: String,
}

/// Refusals, by reason (for logs, status and tests).
#[derive(Clone, Debug, Default)]
pub struct PhoneCounters {
    pub refused: HashMap<&'static str, u64>,
}

impl PhoneCounters {
    fn refuse(&mut self, why: &'static str) {
        *self.refused.entry(why).or_default() += 1;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Caller: invite sent, no ringing yet.
    Inviting,
    /// Ringing (either side).
    Ringing,
    /// Answered.
    Active,
    /// Over; kept until `linger` passes.
    Ended,
}

struct Call {
    id: CallId,
    peer: UserId,
    outgoing: bool,
    stage: Stage,
    /// The key exchange in progress (caller: after the invite; callee: after the ringing).
    handshake: Option<Handshake>,
    keys_done: bool,
    /// The peer holds the call's keys too: it sent the confirmation (callee), or acknowledged
    /// ours (caller). Audio before that is audio the peer cannot decrypt.
    peer_keyed: bool,
    /// The call's connectivity: controlling at the caller.
    ice: IceAgent,
    /// Our candidates the ICE agent accepted and the peer has not had.
    pending: Vec<Candidate>,
    /// Sequence numbers of the peer's latest messages in this call (duplicates are dropped;
    /// messages may arrive out of order, since each is routed on its own).
    peer_seqs: VecDeque<u64>,
    /// The peer has our opening message (caller: the invite's delivery was acknowledged;
    /// callee: the ringing is made), so candidates found later can be trickled: sent before,
    /// they could overtake it and reach a peer that does not know the call yet.
    opened: bool,
    /// Callee: our ringing reply, returned again for a duplicate invite.
    ringing_reply: Option<Vec<u8>>,
    /// Caller: our invite as signed, sent again when the call is answered before its ringing
    /// (which holds the keys) arrived.
    invite: Option<Vec<u8>>,
    /// Whether the peer may have all our candidates (a contact, or the call is answered).
    reveal_all: bool,
    /// When the current stage times out.
    deadline: Option<Instant>,
    /// Since when an answered call has had no path (None: it has one).
    pathless_since: Option<Instant>,
    /// Whether the phone already restarted ICE for the current loss of path.
    restarted: bool,
    /// Whether the call has had a path (its agent selected a pair) at any time.
    had_path: bool,
    /// When the call was answered (None: not yet). An answered call whose key exchange has
    /// not completed within `path_timeout` of it ends: it could never carry media.
    answered_at: Option<Instant>,
    held: bool,
}

impl Call {
    /// Adds a gathered candidate to the ICE agent if the peer may learn it now; what the agent
    /// accepts waits in `pending` for signalling.
    fn offer(&mut self, now: Instant, lc: LocalCandidate) {
        let hidden = !self.reveal_all && !matches!(lc, LocalCandidate::Relayed(_));
        if !hidden && let Some(c) = self.ice.add_local_candidate(now, lc) {
            self.pending.push(c);
        }
    }

    /// Drains `pending` (marking it signalled).
    fn take_pending(&mut self) -> Vec<Candidate> {
        std::mem::take(&mut self.pending)
    }
}

/// Sequence numbers remembered per call for duplicate detection.
const PEER_SEQS: usize = 128;

struct InFlight {
    call: CallId,
    to: UserId,
    payload: Vec<u8>,
    name: &'static str,
    attempts: u32,
}

/// The calls of one user.
pub struct Phone {
    identity: Identity,
    config: PhoneConfig,
    clock: UnixClock,
    rng: StdRng,
    seq: u64,
    next_tag: u64,
    calls: HashMap<CallId, Call>,
    /// Call IDs of invites seen, with when they may be forgotten.
    remembered: HashMap<CallId, Instant>,
    /// Everything gathered on the call socket (shared by all calls).
    gathered: Vec<LocalCandidate>,
    in_flight: HashMap<u64, InFlight>,
    signals: VecDeque<Outgoing>,
    events: VecDeque<PhoneEvent>,
    counters: PhoneCounters,
}

impl Phone {
    pub fn new(
        identity: Identity,
        config: PhoneConfig,
        now: Instant,
        unix_now: u64,
        seed: [u8; 32],
    ) -> Phone {
        Phone {
            identity,
            config,
            clock: UnixClock::new(now, unix_now),
            rng: StdRng::from_seed(seed),
            // Sequence numbers must grow across restarts: start from the clock.
            seq: unix_now * 1000,
            next_tag: 1,
            calls: HashMap::new(),
            remembered: HashMap::new(),
            gathered: Vec::new(),
            in_flight: HashMap::new(),
            signals: VecDeque::new(),
            events: VecDeque::new(),
            counters: PhoneCounters::default(),
        }
    }

    pub fn id(&self) -> UserId {
        self.identity.id()
    }

    pub fn counters(&self) -> &PhoneCounters {
        &self.counters
    }

    /// Calls not yet ended.
    /// Whether call messages are still on their way (queued, or routed and not yet
    /// acknowledged): a program about to exit keeps its endpoint running a moment for them,
    /// or a lost hang-up would never be sent again.
    pub fn signals_pending(&self) -> bool {
        !self.signals.is_empty() || !self.in_flight.is_empty()
    }

    pub fn live_calls(&self) -> usize {
        self.calls
            .values()
            .filter(|c| c.stage != Stage::Ended)
            .count()
    }

    /// Our ICE credentials for `call`.
    pub fn local_credentials(&self, call: &CallId) -> Option<&Credentials> {
        self.calls.get(call).map(|c| c.ice.local_credentials())
    }

    /// The call's ICE agent (its selected path, counters).
    pub fn ice(&self, call: &CallId) -> Option<&IceAgent> {
        self.calls.get(call).map(|c| &c.ice)
    }

    /// The peer of `call`, and whether we placed it.
    pub fn peer(&self, call: &CallId) -> Option<(UserId, bool)> {
        self.calls.get(call).map(|c| (c.peer, c.outgoing))
    }

    /// Whether `call` exists and has not ended.
    pub fn is_live(&self, call: &CallId) -> bool {
        self.calls
            .get(call)
            .is_some_and(|c| c.stage != Stage::Ended)
    }

    /// Whether `call` is answered and not over (media may flow), and not on hold.
    pub fn is_talking(&self, call: &CallId) -> bool {
        self.calls
            .get(call)
            .is_some_and(|c| c.stage == Stage::Active && !c.held)
    }

    /// Whether the peer holds the call's keys (see [`Phone::is_talking`]'s callers): the callee
    /// confirmed the key exchange, or acknowledged the caller's confirmation.
    pub fn peer_keyed(&self, call: &CallId) -> bool {
        self.calls.get(call).is_some_and(|c| c.peer_keyed)
    }

    /// Whether the peer may learn our direct (host, server-reflexive) addresses yet.
    pub fn reveals_all(&self, call: &CallId) -> bool {
        self.calls.get(call).is_some_and(|c| c.reveal_all)
    }

    // ------------------------------------------------------------------ outputs

    #[must_use]
    pub fn poll_signal(&mut self) -> Option<Outgoing> {
        self.signals.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<PhoneEvent> {
        self.events.pop_front()
    }

    /// The next datagram for the network (checks and consent of every call's ICE agent):
    /// send it from the socket, or through the relay allocation, as its route says.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.calls
            .values_mut()
            .filter(|c| c.stage != Stage::Ended)
            .find_map(|c| c.ice.poll_transmit())
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let calls = self.calls.values().flat_map(|c| {
            [
                c.deadline,
                c.pathless_since
                    .filter(|_| c.stage == Stage::Active)
                    .map(|t| {
                        t + if c.restarted {
                            self.config.path_timeout
                        } else {
                            self.restart_wait(c)
                        }
                    }),
                c.answered_at
                    .filter(|_| c.stage == Stage::Active && !c.keys_done)
                    .map(|t| t + self.config.path_timeout),
                // An ended call's agent is idle: nothing of it is sent any more.
                c.ice.poll_timeout().filter(|_| c.stage != Stage::Ended),
            ]
        });
        let memory = self.remembered.values().copied().map(Some);
        calls.chain(memory).flatten().min()
    }

    // ------------------------------------------------------------------ user actions

    /// Calls `to`; returns the new call's ID.
    pub fn dial(&mut self, now: Instant, to: UserId) -> Result<CallId, String> {
        if to == self.identity.id() {
            return Err("cannot call yourself".into());
        }
        let id = CallId(self.rng.random());
        let (hs, noise) =
            Handshake::initiate(&self.identity, &id, &to).map_err(|e| e.to_string())?;
        let mut call = self.new_call(id, to, true, Some(hs))?;
        call.deadline = Some(now + self.config.ring_timeout);
        for lc in self.gathered.clone() {
            call.offer(now, lc);
        }
        let body = Body::Invite(Offer {
            noise,
            credentials: call.ice.local_credentials().clone(),
            candidates: call.take_pending(),
            media: self.config.media,
        });
        self.remembered.insert(id, now + self.config.replay_window);
        self.calls.insert(id, call);
        self.send(now, id, body);
        Ok(id)
    }

    /// A call record with a fresh ICE agent.
    fn new_call(
        &mut self,
        id: CallId,
        peer: UserId,
        outgoing: bool,
        handshake: Option<Handshake>,
    ) -> Result<Call, String> {
        let ice = IceAgent::new(IceConfig {
            controlling: outgoing,
            seed: self.rng.random(),
            timing: self.config.ice.clone(),
        })
        .map_err(|e| format!("ICE settings: {e}"))?;
        Ok(Call {
            id,
            peer,
            outgoing,
            stage: if outgoing {
                Stage::Inviting
            } else {
                Stage::Ringing
            },
            handshake,
            keys_done: false,
            peer_keyed: false,
            ice,
            pending: Vec::new(),
            peer_seqs: VecDeque::new(),
            opened: !outgoing,
            ringing_reply: None,
            invite: None,
            // The callee learns everything of ours: we chose to call it. A callee reveals its
            // addresses at once only to a contact.
            reveal_all: outgoing || self.config.contacts.contains(&peer),
            deadline: None,
            pathless_since: None,
            restarted: false,
            had_path: false,
            answered_at: None,
            held: false,
        })
    }

    /// Answers a ringing incoming call.
    pub fn accept(&mut self, now: Instant, call: CallId) -> Result<(), String> {
        let c = self.calls.get_mut(&call).ok_or("no such call")?;
        if c.outgoing || c.stage != Stage::Ringing {
            return Err("the call is not ringing here".into());
        }
        c.stage = Stage::Active;
        c.deadline = None;
        c.answered_at = Some(now);
        c.reveal_all = true;
        if c.ice.selected().is_none() {
            c.pathless_since = Some(now);
        }
        // What privacy held back until now.
        for lc in self.gathered.clone() {
            c.offer(now, lc);
        }
        self.send(now, call, Body::Accept);
        self.trickle(now, call);
        self.events.push_back(PhoneEvent::Answered { call });
        self.pump_ice(now);
        Ok(())
    }

    /// Declines a ringing incoming call.
    pub fn reject(&mut self, now: Instant, call: CallId, reason: &str) -> Result<(), String> {
        let c = self.calls.get(&call).ok_or("no such call")?;
        if c.outgoing || c.stage != Stage::Ringing {
            return Err("the call is not ringing here".into());
        }
        self.send(
            now,
            call,
            Body::Reject {
                reason: reason.into(),
            },
        );
        self.end(now, call, EndReason::Declined);
        Ok(())
    }

    /// Hangs up (cancels a call not yet answered).
    pub fn hangup(&mut self, now: Instant, call: CallId) -> Result<(), String> {
        let c = self.calls.get(&call).ok_or("no such call")?;
        match (c.stage, c.outgoing) {
            (Stage::Ended, _) => return Err("the call has ended".into()),
            (Stage::Active, _) => {
                self.send(
                    now,
                    call,
                    Body::Bye {
                        reason: HANGUP.into(),
                    },
                );
                self.end(now, call, EndReason::HungUp);
            }
            (_, true) => {
                self.send(now, call, Body::Cancel);
                self.end(now, call, EndReason::Cancelled);
            }
            (_, false) => {
                self.send(
                    now,
                    call,
                    Body::Reject {
                        reason: "declined".into(),
                    },
                );
                self.end(now, call, EndReason::Declined);
            }
        }
        Ok(())
    }

    /// Ends an answered call for a reason of ours (no media path, for example), telling the peer.
    pub fn fail(&mut self, now: Instant, call: CallId, why: &str) {
        if self
            .calls
            .get(&call)
            .is_some_and(|c| c.stage != Stage::Ended)
        {
            self.send(now, call, Body::Bye { reason: why.into() });
            self.end(now, call, EndReason::NoPath(why.into()));
        }
    }

    pub fn hold(&mut self, now: Instant, call: CallId) -> Result<(), String> {
        self.set_hold(now, call, true)
    }

    pub fn resume(&mut self, now: Instant, call: CallId) -> Result<(), String> {
        self.set_hold(now, call, false)
    }

    fn set_hold(&mut self, now: Instant, call: CallId, hold: bool) -> Result<(), String> {
        let c = self.calls.get(&call).ok_or("no such call")?;
        if c.stage != Stage::Active {
            return Err("the call is not answered".into());
        }
        self.send(now, call, if hold { Body::Hold } else { Body::Resume });
        Ok(())
    }

    /// Restarts ICE on `call` (new credentials; media stays on the current path until a new one
    /// is selected) and tells the peer.
    pub fn restart(&mut self, now: Instant, call: CallId) -> Result<(), String> {
        let c = self.calls.get_mut(&call).ok_or("no such call")?;
        let credentials = c.ice.restart(now);
        c.restarted = true;
        let candidates = c.ice.local_candidates();
        c.pending.clear();
        self.send(
            now,
            call,
            Body::Restart {
                ice: 0,
                credentials,
                candidates,
            },
        );
        self.events.push_back(PhoneEvent::Restarted { call });
        self.pump_ice(now);
        Ok(())
    }

    /// A candidate of ours, gathered on the call socket (host addresses, the supernode's view of
    /// it, a relay allocation): shared by every call, added to each call's ICE agent when its
    /// peer may learn it, and trickled.
    pub fn add_local_candidate(&mut self, now: Instant, lc: LocalCandidate) {
        if self.gathered.contains(&lc) {
            return;
        }
        self.gathered.push(lc);
        let ids: Vec<CallId> = self
            .calls
            .values()
            .filter(|c| c.stage != Stage::Ended)
            .map(|c| c.id)
            .collect();
        for id in ids {
            if let Some(c) = self.calls.get_mut(&id) {
                c.offer(now, lc);
            }
            self.trickle(now, id);
        }
        self.pump_ice(now);
    }

    /// A candidate of ours went away (a relay allocation ended).
    pub fn remove_local_candidate(&mut self, now: Instant, addr: std::net::SocketAddr) {
        self.gathered.retain(|g| match g {
            LocalCandidate::Host(a) | LocalCandidate::Relayed(a) => *a != addr,
            LocalCandidate::ServerReflexive { addr: a, .. } => *a != addr,
        });
        for c in self.calls.values_mut() {
            c.ice.remove_local_candidate(now, addr);
        }
        self.pump_ice(now);
    }

    // ------------------------------------------------------------------ inputs

    /// A datagram from `from` that arrived along `route` (our socket, or relayed to us by the
    /// TURN client). Returns whether a call took it (false: not ICE traffic of any call).
    pub fn handle_input(
        &mut self,
        now: Instant,
        route: Route,
        from: std::net::SocketAddr,
        bytes: &[u8],
    ) -> bool {
        let owner = self
            .calls
            .values()
            .find(|c| c.stage != Stage::Ended && c.ice.claims(bytes))
            .map(|c| c.id);
        let Some(id) = owner else {
            return false;
        };
        let c = self.calls.get_mut(&id).expect("found");
        let taken = !matches!(c.ice.handle_input(now, route, from, bytes), Inbound::NotIce);
        self.pump_ice(now);
        taken
    }

    /// A payload delivered to us by the directory from `from` (the routing layer's claim; the
    /// signature decides). Returns the reply to put on the delivery's acknowledgement.
    pub fn handle_signal(&mut self, now: Instant, from: UserId, payload: &[u8]) -> Option<Vec<u8>> {
        let v = match message::verify(payload, &self.identity.id(), self.clock.at(now)) {
            Ok(v) => v,
            Err(e) => {
                self.counters.refuse(match e {
                    SignalError::Misdirected(_) => "misdirected",
                    SignalError::Version(_) => "version",
                    SignalError::Record(_) => "bad record",
                });
                tracing::debug!("call message refused: {e}");
                return None;
            }
        };
        if v.from != from {
            // A routed payload whose signer is not who the mesh says sent it: a relay of someone
            // else's message. The signer is what counts; note it.
            self.counters.refuse("sender mismatch");
            return None;
        }
        let call = v.signal.call;
        if let Body::Invite(offer) = v.signal.body {
            return self.on_invite(now, from, v.seq, call, offer);
        }
        let Some(c) = self.calls.get_mut(&call) else {
            self.counters.refuse("unknown call");
            return None;
        };
        if c.peer != from {
            self.counters.refuse("not the peer");
            return None;
        }
        if c.peer_seqs.contains(&v.seq) {
            self.counters.refuse("duplicate");
            return None;
        }
        if c.peer_seqs.len() == PEER_SEQS {
            c.peer_seqs.pop_front();
        }
        c.peer_seqs.push_back(v.seq);
        self.on_call_message(now, call, v.signal.body);
        None
    }

    /// The outcome of routing message `tag`: delivered (with the reply that rode the
    /// acknowledgement, if any), or failed.
    pub fn handle_route_result(
        &mut self,
        now: Instant,
        tag: u64,
        result: Result<Option<Vec<u8>>, RouteError>,
    ) {
        let Some(f) = self.in_flight.remove(&tag) else {
            return;
        };
        match result {
            Ok(reply) => {
                if let Some(reply) = reply {
                    self.handle_signal(now, f.to, &reply);
                }
                if f.name == "confirm"
                    && let Some(c) = self.calls.get_mut(&f.call)
                {
                    c.peer_keyed = true;
                }
                if f.name == "invite"
                    && let Some(c) = self.calls.get_mut(&f.call)
                    && c.stage != Stage::Ended
                {
                    c.opened = true;
                    if c.stage == Stage::Inviting {
                        // Delivered; the ringing should have ridden the acknowledgement.
                        let limit = now + self.config.invite_timeout;
                        c.deadline = Some(c.deadline.map_or(limit, |d| d.min(limit)));
                    }
                    self.trickle(now, f.call);
                }
            }
            Err(e) => {
                let ended = self
                    .calls
                    .get(&f.call)
                    .is_none_or(|c| c.stage == Stage::Ended);
                let answered = self
                    .calls
                    .get(&f.call)
                    .is_some_and(|c| c.stage == Stage::Active);
                let final_reason = match e.code {
                    // During a call, a peer the directory no longer knows or lists as online
                    // (it went away with its supernode, or quit without its bye arriving) is a
                    // lost connection, not a wrong number: no path (exit 9), not offline (3).
                    404 | 410 if answered => Some(EndReason::NoPath(format!(
                        "the peer is unreachable: {} {}",
                        e.code, e.reason
                    ))),
                    404 => Some(EndReason::UnknownUser),
                    410 => Some(EndReason::Offline),
                    400 | 403 => Some(EndReason::NoPath(format!("{} {}", e.code, e.reason))),
                    _ => None,
                };
                match final_reason {
                    Some(reason) if !ended => self.end(now, f.call, reason),
                    Some(_) => {}
                    None if f.attempts < self.config.signal_attempts => {
                        // A passing failure (no answer through the mesh): send it again.
                        let tag = self.next_tag();
                        self.signals.push_back(Outgoing {
                            to: f.to,
                            payload: f.payload.clone(),
                            tag,
                        });
                        self.in_flight.insert(
                            tag,
                            InFlight {
                                attempts: f.attempts + 1,
                                ..f
                            },
                        );
                    }
                    None if !ended => self.end(
                        now,
                        f.call,
                        EndReason::NoPath(format!("cannot signal: {} {}", e.code, e.reason)),
                    ),
                    None => {}
                }
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.remembered.retain(|_, t| *t > now);
        for c in self.calls.values_mut() {
            if c.stage != Stage::Ended && c.ice.poll_timeout().is_some_and(|t| t <= now) {
                c.ice.handle_timeout(now);
            }
        }
        self.pump_ice(now);
        // Answered calls without a path: restart ICE once, then give up.
        let pathless: Vec<(CallId, Instant, bool, Duration)> = self
            .calls
            .values()
            .filter(|c| c.stage == Stage::Active)
            .filter_map(|c| {
                let wait = self.restart_wait(c);
                c.pathless_since.map(|t| (c.id, t, c.restarted, wait))
            })
            .collect();
        for (id, since, restarted, wait) in pathless {
            if !restarted && now >= since + wait {
                let _ = self.restart(now, id);
            } else if restarted && now >= since + self.config.path_timeout {
                self.fail(now, id, "no network path to the peer");
            }
        }
        // Answered calls whose key exchange never completed (its messages kept being lost):
        // they cannot carry media, so they end rather than hang.
        let keyless: Vec<CallId> = self
            .calls
            .values()
            .filter(|c| c.stage == Stage::Active && !c.keys_done)
            .filter(|c| {
                c.answered_at
                    .is_some_and(|t| now >= t + self.config.path_timeout)
            })
            .map(|c| c.id)
            .collect();
        for id in keyless {
            self.fail(now, id, "the key exchange did not complete");
        }
        let due: Vec<(CallId, Stage, bool)> = self
            .calls
            .values()
            .filter(|c| c.deadline.is_some_and(|d| d <= now))
            .map(|c| (c.id, c.stage, c.outgoing))
            .collect();
        for (id, stage, outgoing) in due {
            match (stage, outgoing) {
                (Stage::Ended, _) => {
                    self.calls.remove(&id);
                }
                (Stage::Inviting | Stage::Ringing, true) => {
                    self.send(now, id, Body::Cancel);
                    self.end(now, id, EndReason::NoAnswer);
                }
                (Stage::Ringing, false) => {
                    self.send(
                        now,
                        id,
                        Body::Reject {
                            reason: "no answer".into(),
                        },
                    );
                    self.end(now, id, EndReason::NoAnswer);
                }
                _ => {
                    if let Some(c) = self.calls.get_mut(&id) {
                        c.deadline = None;
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------------ internals

    fn on_invite(
        &mut self,
        now: Instant,
        from: UserId,
        seq: u64,
        call: CallId,
        offer: Offer,
    ) -> Option<Vec<u8>> {
        if let Some(c) = self.calls.get(&call) {
            // The caller sent the invite again (its acknowledgement was lost): the same answer.
            if c.peer == from && !c.outgoing && c.stage != Stage::Ended {
                self.counters.refuse("duplicate");
                return c.ringing_reply.clone();
            }
            self.counters.refuse("replay");
            return None;
        }
        if self.remembered.contains_key(&call) {
            self.counters.refuse("replay");
            return None;
        }
        if self.remembered.len() >= self.config.max_remembered {
            self.counters.refuse("too many calls");
            return self.reply(now, call, from, Body::Busy);
        }
        self.remembered
            .insert(call, now + self.config.replay_window);
        // Glare: we are calling them while they call us. Both ends keep the call with the lower
        // ID; the side whose own call loses takes the peer's call as the answer to its dial.
        let ours: Option<CallId> = self
            .calls
            .values()
            .find(|c| {
                c.outgoing && c.peer == from && matches!(c.stage, Stage::Inviting | Stage::Ringing)
            })
            .map(|c| c.id);
        if let Some(ours) = ours {
            if ours < call {
                self.counters.refuse("glare");
                return self.reply(
                    now,
                    call,
                    from,
                    Body::Reject {
                        reason: "glare".into(),
                    },
                );
            }
            // Theirs wins: drop ours quietly (they drop our invite the same way).
            self.end(now, ours, EndReason::Replaced(call));
        } else if self.live_calls() >= self.config.max_calls {
            return self.reply(now, call, from, Body::Busy);
        }
        let (hs, noise) = match Handshake::respond(&self.identity, &call, &from, &offer.noise) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("invite refused: {e}");
                self.counters.refuse("key exchange");
                return None;
            }
        };
        let mut c = match self.new_call(call, from, false, Some(hs)) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot take a call: {e}");
                return None;
            }
        };
        c.peer_seqs.push_back(seq);
        c.deadline = Some(now + self.config.ring_timeout + self.config.ring_grace);
        for lc in self.gathered.clone() {
            c.offer(now, lc);
        }
        Self::take_offer(now, &mut c, &offer);
        let local = c.ice.local_credentials().clone();
        let candidates = c.take_pending();
        self.calls.insert(call, c);
        self.events.push_back(PhoneEvent::Incoming { call, from });
        let ringing = Body::Ringing(Offer {
            noise,
            credentials: local,
            candidates,
            media: self.config.media,
        });
        let reply = self.signed(now, call, from, ringing)?;
        if let Some(c) = self.calls.get_mut(&call) {
            c.ringing_reply = Some(reply.clone());
        }
        if ours.is_some() {
            // We were dialling them: this call is the answer to our dial.
            let _ = self.accept(now, call);
        }
        self.pump_ice(now);
        Some(reply)
    }

    fn on_call_message(&mut self, now: Instant, call: CallId, body: Body) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        let (stage, outgoing) = (c.stage, c.outgoing);
        if stage == Stage::Ended {
            self.counters.refuse("ended call");
            return;
        }
        match body {
            // The ringing rides the invite's delivery acknowledgement, the accept is a message
            // of its own: when that acknowledgement is lost (the invite is sent again and the
            // duplicate answered with the same ringing), the accept can come first. The call
            // is answered then, but its keys, and the callee's ICE credentials and first
            // candidates, are in the ringing: take them, without ringing any more.
            Body::Ringing(offer)
                if outgoing
                    && (stage == Stage::Inviting
                        || (stage == Stage::Active && c.handshake.is_some())) =>
            {
                let late = stage == Stage::Active;
                if !late {
                    c.stage = Stage::Ringing;
                    c.deadline = c.deadline.map(|_| now + self.config.ring_timeout);
                }
                let hs = c
                    .handshake
                    .take()
                    .expect("caller keeps its handshake until ringing");
                match hs.finish_initiator(&self.identity, &offer.noise) {
                    Ok((msg3, keys)) => {
                        c.keys_done = true;
                        Self::take_offer(now, c, &offer);
                        if !late {
                            self.events.push_back(PhoneEvent::Ringing { call });
                        }
                        self.events.push_back(PhoneEvent::Keys { call, keys });
                        self.send(now, call, Body::Confirm { noise: msg3 });
                    }
                    Err(e) => {
                        self.counters.refuse("key exchange");
                        self.send(now, call, Body::Cancel);
                        self.end(now, call, EndReason::NoPath(format!("key exchange: {e}")));
                    }
                }
            }
            Body::Confirm { noise } if !outgoing && !c.keys_done => {
                let Some(hs) = c.handshake.take() else { return };
                match hs.finish_responder(&noise) {
                    Ok(keys) => {
                        c.keys_done = true;
                        c.peer_keyed = true;
                        self.events.push_back(PhoneEvent::Keys { call, keys });
                    }
                    Err(e) => {
                        self.counters.refuse("key exchange");
                        self.send(
                            now,
                            call,
                            Body::Reject {
                                reason: "key exchange failed".into(),
                            },
                        );
                        self.end(now, call, EndReason::NoPath(format!("key exchange: {e}")));
                    }
                }
            }
            Body::Accept if outgoing && matches!(stage, Stage::Inviting | Stage::Ringing) => {
                c.stage = Stage::Active;
                c.deadline = None;
                c.answered_at = Some(now);
                if c.ice.selected().is_none() {
                    c.pathless_since = Some(now);
                }
                // Answered before the ringing came: the ringing (keys, the callee's ICE
                // credentials and first candidates) was lost on its way, or is late. Ask again:
                // the callee answers a duplicate invite with the same ringing. The routing
                // layer's own retransmissions did not always bring it: in the lab's matrix at
                // 5 % loss a caller sometimes got the accept and never the ringing (its route
                // acknowledged, the reply gone), and the answered call ended without keys.
                let again = c
                    .invite
                    .clone()
                    .filter(|_| c.handshake.is_some())
                    .map(|p| (c.peer, p));
                self.events.push_back(PhoneEvent::Answered { call });
                if let Some((to, payload)) = again {
                    tracing::debug!("call {call}: answered before its ringing; inviting again");
                    self.queue(call, to, payload, "invite");
                }
            }
            Body::Reject { reason } if outgoing => {
                let r = if reason == "glare" {
                    // Our call lost the glare tie-break: the peer's call (already ringing here)
                    // replaces it; nothing to report but the replacement.
                    return;
                } else if reason == "no answer" {
                    EndReason::NoAnswer
                } else {
                    EndReason::Rejected(reason)
                };
                self.end(now, call, r);
            }
            Body::Busy if outgoing => self.end(now, call, EndReason::Busy),
            Body::Cancel if !outgoing => self.end(now, call, EndReason::Cancelled),
            // The peer hung up, or gave up on the path (its `fail`): the latter is a network
            // failure at this end too, and must read as one (no-path, exit 9), not as a hang-up.
            Body::Bye { reason } if reason != HANGUP => {
                self.end(now, call, EndReason::NoPath(format!("the peer: {reason}")))
            }
            Body::Bye { .. } => self.end(now, call, EndReason::PeerHungUp),
            Body::Reject { .. } if !outgoing => self.end(now, call, EndReason::PeerHungUp),
            Body::Hold | Body::Resume if stage == Stage::Active => {
                let held = matches!(body, Body::Hold);
                c.held = held;
                self.events.push_back(PhoneEvent::Held { call, held });
            }
            Body::Candidates { candidates, .. } => {
                for cand in candidates {
                    if c.ice.add_remote_candidate(now, cand).is_err() {
                        self.counters.refuse("bad candidate");
                    }
                }
            }
            Body::Restart {
                credentials,
                candidates: theirs,
                ..
            } => {
                match c.ice.set_remote_credentials(now, credentials) {
                    Ok(Some(ours)) => {
                        // The peer restarted: so did we; tell it our new credentials.
                        let mine = c.ice.local_candidates();
                        c.pending.clear();
                        c.restarted = true;
                        for cand in theirs {
                            let _ = c.ice.add_remote_candidate(now, cand);
                        }
                        self.send(
                            now,
                            call,
                            Body::Restart {
                                ice: 0,
                                credentials: ours,
                                candidates: mine,
                            },
                        );
                        self.events.push_back(PhoneEvent::Restarted { call });
                    }
                    Ok(None) => {
                        for cand in theirs {
                            let _ = c.ice.add_remote_candidate(now, cand);
                        }
                    }
                    Err(_) => self.counters.refuse("bad credentials"),
                }
            }
            other => {
                tracing::debug!("call {call}: unexpected {} here", other.name());
                self.counters.refuse("out of order");
            }
        }
    }

    /// How long `c`, answered and without a path, waits before restarting ICE.
    fn restart_wait(&self, c: &Call) -> Duration {
        if c.had_path {
            self.config.restart_after
        } else {
            self.config.first_path_restart
        }
    }

    fn end(&mut self, now: Instant, call: CallId, reason: EndReason) {
        if let Some(c) = self.calls.get_mut(&call)
            && c.stage != Stage::Ended
        {
            c.stage = Stage::Ended;
            c.handshake = None;
            c.pathless_since = None;
            c.deadline = Some(now + self.config.linger);
            self.events.push_back(PhoneEvent::Ended { call, reason });
        }
    }

    /// The peer's opening (invite or ringing): its ICE credentials and first candidates.
    fn take_offer(now: Instant, c: &mut Call, offer: &Offer) {
        if c.ice
            .set_remote_credentials(now, offer.credentials.clone())
            .is_err()
        {
            tracing::debug!("call {}: the peer's ICE credentials are malformed", c.id);
        }
        for cand in &offer.candidates {
            let _ = c.ice.add_remote_candidate(now, *cand);
        }
    }

    /// Turns what the calls' ICE agents report into call events and path timers.
    fn pump_ice(&mut self, now: Instant) {
        for c in self.calls.values_mut() {
            while let Some(ev) = c.ice.poll_event() {
                let call = c.id;
                match ev {
                    ice::Event::Connected(path) => {
                        c.pathless_since = None;
                        c.restarted = false;
                        c.had_path = true;
                        self.events.push_back(PhoneEvent::Path {
                            call,
                            path,
                            reason: None,
                        });
                    }
                    ice::Event::PathChanged { to, reason, .. } => {
                        c.pathless_since = None;
                        c.restarted = false;
                        c.had_path = true;
                        self.events.push_back(PhoneEvent::Path {
                            call,
                            path: to,
                            reason: Some(reason),
                        });
                    }
                    ice::Event::Disconnected | ice::Event::Failed => {
                        if c.stage == Stage::Active && c.pathless_since.is_none() {
                            c.pathless_since = Some(now);
                        }
                        self.events.push_back(PhoneEvent::PathLost { call });
                    }
                    ice::Event::RelayPermission { relayed, peer } => {
                        self.events
                            .push_back(PhoneEvent::RelayPermission { relayed, peer });
                    }
                    ice::Event::ConsentLost { .. }
                    | ice::Event::MappingChanged { .. }
                    | ice::Event::RoleChanged { .. } => {
                        tracing::debug!("call {call}: {ev:?}");
                    }
                }
            }
        }
    }

    /// Sends the peer our candidates it has not had, once it knows the call.
    fn trickle(&mut self, now: Instant, call: CallId) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if !c.opened || c.pending.is_empty() {
            return;
        }
        let fresh = c.take_pending();
        self.send(
            now,
            call,
            Body::Candidates {
                ice: 0,
                candidates: fresh,
            },
        );
    }

    fn next_tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    /// Signs a message of `call` to `to`.
    fn signed(&mut self, now: Instant, call: CallId, to: UserId, body: Body) -> Option<Vec<u8>> {
        self.seq += 1;
        let signal = Signal {
            version: CALL_VERSION,
            call,
            to,
            body,
        };
        match message::sign(&self.identity, self.seq, self.clock.at(now), &signal) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!("cannot sign a call message: {e}");
                None
            }
        }
    }

    /// A message returned as the reply on a delivery's acknowledgement.
    fn reply(&mut self, now: Instant, call: CallId, to: UserId, body: Body) -> Option<Vec<u8>> {
        self.signed(now, call, to, body)
    }

    /// Queues a message of `call` for routing to its peer.
    fn send(&mut self, now: Instant, call: CallId, body: Body) {
        let Some(to) = self.calls.get(&call).map(|c| c.peer) else {
            return;
        };
        let name = body.name();
        let Some(payload) = self.signed(now, call, to, body) else {
            return;
        };
        if name == "invite"
            && let Some(c) = self.calls.get_mut(&call)
        {
            c.invite = Some(payload.clone());
        }
        self.queue(call, to, payload, name);
    }

    /// Queues `payload` (a signed message of `call`, named `name`) for routing to `to`.
    fn queue(&mut self, call: CallId, to: UserId, payload: Vec<u8>, name: &'static str) {
        let tag = self.next_tag();
        self.signals.push_back(Outgoing {
            to,
            payload: payload.clone(),
            tag,
        });
        self.in_flight.insert(
            tag,
            InFlight {
                call,
                to,
                payload,
                name,
                attempts: 1,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::message::CandidateKind;
    use std::net::SocketAddr;

    const T0: u64 = 1_800_000_000;

    fn ident(n: u8) -> Identity {
        Identity::from_seed(&[n; 32])
    }

    /// Two or more phones and an in-memory router: messages are delivered in order, each
    /// acknowledgement carrying the callee's reply. `down` users are offline (410).
    struct Net {
        now: Instant,
        phones: Vec<Phone>,
        events: Vec<Vec<PhoneEvent>>,
        offline: HashSet<UserId>,
        /// Routes that fail once with 504 before going through.
        flaky: u32,
        /// Routes delivered whose reply is then lost (acknowledged without it).
        lose_replies: u32,
        /// Every payload routed, for capture checks.
        wire: Vec<(UserId, UserId, Vec<u8>)>,
        /// Each phone's socket address, if it has one: datagrams to it are delivered at once.
        hosts: Vec<Option<SocketAddr>>,
        /// Datagrams are dropped (a network that broke).
        cut: bool,
    }

    impl Net {
        fn new(n: u8, config: impl Fn(usize) -> PhoneConfig) -> Net {
            let now = Instant::now();
            let phones = (0..n)
                .map(|i| Phone::new(ident(i + 1), config(i as usize), now, T0, [i + 1; 32]))
                .collect();
            Net {
                now,
                phones,
                events: (0..n).map(|_| Vec::new()).collect(),
                offline: HashSet::new(),
                flaky: 0,
                lose_replies: 0,
                wire: Vec::new(),
                hosts: vec![None; n as usize],
                cut: false,
            }
        }

        /// Gives every phone a socket (a host candidate) on one shared network.
        fn with_sockets(mut self) -> Net {
            for i in 0..self.phones.len() {
                let addr = SocketAddr::from(([10, 9, 0, i as u8 + 1], 4000));
                self.hosts[i] = Some(addr);
                self.phones[i].add_local_candidate(self.now, LocalCandidate::Host(addr));
            }
            self
        }

        fn id(&self, i: usize) -> UserId {
            self.phones[i].id()
        }

        fn index(&self, id: UserId) -> Option<usize> {
            self.phones.iter().position(|p| p.id() == id)
        }

        /// Routes every queued message until nothing moves.
        fn settle(&mut self) {
            for _ in 0..1000 {
                let mut moved = false;
                for i in 0..self.phones.len() {
                    while let Some(out) = self.phones[i].poll_signal() {
                        moved = true;
                        let from = self.id(i);
                        self.wire.push((from, out.to, out.payload.clone()));
                        let now = self.now;
                        let result = if self.flaky > 0 {
                            self.flaky -= 1;
                            Err(RouteError {
                                code: 504,
                                reason: "no answer".into(),
                            })
                        } else {
                            match self.index(out.to) {
                                None => Err(RouteError {
                                    code: 404,
                                    reason: "unknown user".into(),
                                }),
                                Some(_) if self.offline.contains(&out.to) => Err(RouteError {
                                    code: 410,
                                    reason: "user offline".into(),
                                }),
                                Some(j) => {
                                    let reply =
                                        self.phones[j].handle_signal(now, from, &out.payload);
                                    if let Some(r) = &reply {
                                        self.wire.push((out.to, from, r.clone()));
                                    }
                                    if self.lose_replies > 0 {
                                        self.lose_replies -= 1;
                                        Ok(None)
                                    } else {
                                        Ok(reply)
                                    }
                                }
                            }
                        };
                        self.phones[i].handle_route_result(now, out.tag, result);
                    }
                    while let Some(ev) = self.phones[i].poll_event() {
                        moved = true;
                        self.events[i].push(ev);
                    }
                    while let Some(t) = self.phones[i].poll_transmit() {
                        moved = true;
                        let j = self.hosts.iter().position(|h| *h == Some(t.to));
                        if let (Some(j), false) = (j, self.cut) {
                            let now = self.now;
                            let from = t.route.local();
                            let to = Route::Direct(t.to);
                            self.phones[j].handle_input(now, to, from, &t.data);
                        }
                    }
                }
                if !moved {
                    return;
                }
            }
            panic!("signalling did not settle");
        }

        fn advance(&mut self, d: Duration) {
            let end = self.now + d;
            loop {
                let next = self.phones.iter().filter_map(|p| p.poll_timeout()).min();
                match next {
                    Some(t) if t <= end => {
                        self.now = self.now.max(t);
                        let now = self.now;
                        for p in &mut self.phones {
                            p.handle_timeout(now);
                        }
                        self.settle();
                    }
                    _ => break,
                }
            }
            self.now = end;
        }

        fn take(&mut self, i: usize) -> Vec<PhoneEvent> {
            std::mem::take(&mut self.events[i])
        }
    }

    fn ended(evs: &[PhoneEvent]) -> Option<EndReason> {
        evs.iter().find_map(|e| match e {
            PhoneEvent::Ended { reason, .. } => Some(reason.clone()),
            _ => None,
        })
    }

    fn sas(evs: &[PhoneEvent]) -> Option<String> {
        evs.iter().find_map(|e| match e {
            PhoneEvent::Keys { keys, .. } => Some(keys.sas.clone()),
            _ => None,
        })
    }

    fn incoming(evs: &[PhoneEvent]) -> Option<CallId> {
        evs.iter().find_map(|e| match e {
            PhoneEvent::Incoming { call, .. } => Some(*call),
            _ => None,
        })
    }

    #[test]
    fn a_call_rings_connects_with_matching_keys_and_ends() {
        let mut n = Net::new(2, |_| PhoneConfig::default());
        let (now, bob) = (n.now, n.id(1));
        let call = n.phones[0].dial(now, bob).unwrap();
        n.settle();
        let (a, b) = (n.take(0), n.take(1));
        assert!(
            matches!(a[0], PhoneEvent::Ringing { call: c } if c == call),
            "{a:?}"
        );
        assert_eq!(incoming(&b), Some(call));
        // Both hold keys while it rings, and they agree.
        let (sa, sb) = (sas(&a).unwrap(), sas(&b).unwrap());
        assert_eq!(sa, sb);
        n.phones[1].accept(now, call).unwrap();
        n.settle();
        assert!(
            n.take(0)
                .iter()
                .any(|e| matches!(e, PhoneEvent::Answered { .. }))
        );
        n.phones[0].hangup(now, call).unwrap();
        // The bye is on its way until its delivery is acknowledged: a program about to exit
        // waits for that.
        assert!(n.phones[0].signals_pending());
        n.settle();
        assert!(!n.phones[0].signals_pending());
        assert_eq!(ended(&n.take(0)), Some(EndReason::HungUp));
        assert_eq!(ended(&n.take(1)), Some(EndReason::PeerHungUp));
        assert_eq!(n.phones[0].live_calls() + n.phones[1].live_calls(), 0);
        // Ended calls are forgotten after the linger time.
        n.advance(PhoneConfig::default().linger + Duration::from_secs(1));
        assert!(n.phones[0].calls.is_empty() && n.phones[1].calls.is_empty());
    }

    /// Neither end counts the peer as holding the keys until it shows it does: the callee
    /// when the caller's confirmation arrives, the caller when the callee acknowledges it
    /// (audio before that is audio the peer cannot decrypt).
    #[test]
    fn each_end_knows_when_the_peer_holds_the_keys() {
        let mut n = Net::new(2, |_| PhoneConfig::default());
        let (now, alice, bob) = (n.now, n.id(0), n.id(1));
        let call = n.phones[0].dial(now, bob).unwrap();
        let invite = n.phones[0].poll_signal().unwrap();
        let ringing = n.phones[1].handle_signal(now, alice, &invite.payload);
        n.phones[0].handle_route_result(now, invite.tag, Ok(ringing));
        let confirm = n.phones[0].poll_signal().unwrap();
        assert!(!n.phones[0].peer_keyed(&call) && !n.phones[1].peer_keyed(&call));
        let ack = n.phones[1].handle_signal(now, alice, &confirm.payload);
        assert!(n.phones[1].peer_keyed(&call) && !n.phones[0].peer_keyed(&call));
        n.phones[0].handle_route_result(now, confirm.tag, Ok(ack));
        assert!(n.phones[0].peer_keyed(&call));
    }

    #[test]
    fn reject_busy_cancel_no_answer_unknown_and_offline() {
        let mut n = Net::new(4, |_| PhoneConfig::default());
        let now = n.now;
        let (bob, carol, dave) = (n.id(1), n.id(2), n.id(3));
        // Reject.
        let c = n.phones[0].dial(now, bob).unwrap();
        n.settle();
        n.phones[1].reject(now, c, "not now").unwrap();
        n.settle();
        assert_eq!(
            ended(&n.take(0)),
            Some(EndReason::Rejected("not now".into()))
        );
        assert_eq!(ended(&n.take(1)), Some(EndReason::Declined));
        // Busy: Carol is in a call with Bob; Alice calls Carol.
        let c1 = n.phones[1].dial(now, carol).unwrap();
        n.settle();
        n.phones[2].accept(now, c1).unwrap();
        n.settle();
        n.take(1);
        n.take(2);
        n.phones[0].dial(now, carol).unwrap();
        n.settle();
        assert_eq!(ended(&n.take(0)), Some(EndReason::Busy));
        assert!(incoming(&n.take(2)).is_none(), "no ringing while busy");
        // Cancel.
        let c = n.phones[0].dial(now, dave).unwrap();
        n.settle();
        n.phones[0].hangup(now, c).unwrap();
        n.settle();
        assert_eq!(ended(&n.take(0)), Some(EndReason::Cancelled));
        assert_eq!(ended(&n.take(3)), Some(EndReason::Cancelled));
        // No answer: the caller gives up after the ring timeout; the callee stops ringing.
        n.phones[0].dial(now, dave).unwrap();
        n.settle();
        n.advance(PhoneConfig::default().ring_timeout + Duration::from_millis(1));
        assert_eq!(ended(&n.take(0)), Some(EndReason::NoAnswer));
        assert_eq!(ended(&n.take(3)), Some(EndReason::Cancelled));
        // Unknown and offline users.
        n.phones[0].dial(now, ident(99).id()).unwrap();
        n.settle();
        assert_eq!(ended(&n.take(0)), Some(EndReason::UnknownUser));
        n.offline.insert(dave);
        n.phones[0].dial(now, dave).unwrap();
        n.settle();
        assert_eq!(ended(&n.take(0)), Some(EndReason::Offline));
    }

    #[test]
    fn a_passing_routing_failure_is_retried() {
        let mut n = Net::new(2, |_| PhoneConfig::default());
        n.flaky = 2;
        let now = n.now;
        let bob = n.id(1);
        let call = n.phones[0].dial(now, bob).unwrap();
        n.settle();
        assert!(
            n.take(0)
                .iter()
                .any(|e| matches!(e, PhoneEvent::Ringing { call: c } if *c == call))
        );
        // More failures than attempts: the call ends with no path.
        n.flaky = 10;
        let bob = n.id(1);
        n.phones[0].hangup(now, call).unwrap();
        n.settle();
        n.take(0);
        n.flaky = 10;
        let _ = n.phones[0].dial(now, bob).unwrap();
        n.settle();
        assert!(matches!(ended(&n.take(0)), Some(EndReason::NoPath(_))));
    }

    #[test]
    fn replayed_forged_and_misdirected_invites_ring_nobody() {
        let mut n = Net::new(3, |_| PhoneConfig::default());
        let now = n.now;
        let bob = n.id(1);
        let call = n.phones[0].dial(now, bob).unwrap();
        n.settle();
        let invite = n.wire[0].2.clone();
        n.phones[1].hangup(now, call).unwrap();
        n.settle();
        n.take(1);
        // Replayed after the call ended: refused, no ringing.
        let alice = n.id(0);
        assert!(n.phones[1].handle_signal(now, alice, &invite).is_none());
        assert!(incoming(&n.take(1)).is_none());
        assert_eq!(n.phones[1].counters().refused.get("replay"), Some(&1));
        // To Carol (it names Bob): refused.
        assert!(n.phones[2].handle_signal(now, alice, &invite).is_none());
        assert_eq!(n.phones[2].counters().refused.get("misdirected"), Some(&1));
        // Tampered: refused.
        let mut bad = invite.clone();
        let k = bad.len() / 2;
        bad[k] ^= 1;
        let fresh = Phone::new(ident(2), PhoneConfig::default(), now, T0, [9; 32]);
        let mut fresh = fresh;
        assert!(fresh.handle_signal(now, alice, &bad).is_none());
        assert_eq!(fresh.counters().refused.get("bad record"), Some(&1));
        // Replayed to a restarted callee after it expired: refused as expired.
        let later = now + Duration::from_secs(message::SIGNAL_LIFETIME + 1);
        assert!(fresh.handle_signal(later, alice, &invite).is_none());
        assert_eq!(fresh.counters().refused.get("bad record"), Some(&2));
        // A message signed by Alice but routed as from Carol is refused.
        assert!(fresh.handle_signal(now, n.id(2), &invite).is_none());
        assert_eq!(fresh.counters().refused.get("sender mismatch"), Some(&1));
    }

    #[test]
    fn a_duplicate_invite_gets_the_same_ringing() {
        let mut n = Net::new(2, |_| PhoneConfig::default());
        let now = n.now;
        let (alice, bob) = (n.id(0), n.id(1));
        n.phones[0].dial(now, bob).unwrap();
        let out = n.phones[0].poll_signal().unwrap();
        let r1 = n.phones[1].handle_signal(now, alice, &out.payload).unwrap();
        let r2 = n.phones[1].handle_signal(now, alice, &out.payload).unwrap();
        assert_eq!(r1, r2);
        assert_eq!(n.phones[1].live_calls(), 1);
    }

    /// The ringing (on the invite's delivery acknowledgement) arrives after the accept, as when
    /// that acknowledgement was lost and the invite resent: the caller still completes the key
    /// exchange, and both ends hold one SAS.
    #[test]
    fn a_ringing_that_comes_after_the_accept_still_gives_the_keys() {
        let mut n = Net::new(2, |_| PhoneConfig::default());
        let now = n.now;
        let (alice, bob) = (n.id(0), n.id(1));
        let call = n.phones[0].dial(now, bob).unwrap();
        let invite = n.phones[0].poll_signal().unwrap();
        let ringing = n.phones[1]
            .handle_signal(now, alice, &invite.payload)
            .unwrap();
        n.phones[1].accept(now, call).unwrap();
        // The accept goes through; the invite's acknowledgement (with the ringing) is late.
        let accept = n.phones[1].poll_signal().unwrap();
        assert!(
            n.phones[0]
                .handle_signal(now, bob, &accept.payload)
                .is_none()
        );
        n.phones[1].handle_route_result(now, accept.tag, Ok(None));
        n.phones[0].handle_route_result(now, invite.tag, Ok(Some(ringing)));
        n.settle();
        let (a, b) = (n.take(0), n.take(1));
        assert!(a.iter().any(|e| matches!(e, PhoneEvent::Answered { .. })));
        assert!(
            !a.iter().any(|e| matches!(e, PhoneEvent::Ringing { .. })),
            "no ringing once answered: {a:?}"
        );
        let (sa, sb) = (sas(&a), sas(&b));
        assert!(sa.is_some() && sa == sb, "{sa:?} {sb:?}");
        // Keyed, the call has no key deadline: it outlives the path timeout (no path is
        // needed here, none was ever looked for).
        assert!(ended(&a).is_none() && ended(&b).is_none());
    }

    /// Alice dials Bob, whose phone rings; the ringing it answered with is lost. The call, and
    /// the invite as sent.
    fn rung_without_ringing(n: &mut Net) -> (CallId, Outgoing) {
        let (now, alice, bob) = (n.now, n.id(0), n.id(1));
        let call = n.phones[0].dial(now, bob).unwrap();
        let invite = n.phones[0].poll_signal().unwrap();
        let _lost = n.phones[1]
            .handle_signal(now, alice, &invite.payload)
            .unwrap();
        (call, invite)
    }

    /// The ringing is lost for good (the invite's acknowledgement carried it and will not come
    /// again) and the accept arrives: the caller invites again, the callee answers the duplicate
    /// with the same ringing, and the call gets its keys (one SAS at both ends) instead of
    /// ending for want of them at the path timeout.
    #[test]
    fn an_accept_before_the_ringing_asks_for_it_again() {
        let cfg = PhoneConfig::default();
        let mut n = Net::new(2, |_| PhoneConfig::default()).with_sockets();
        let now = n.now;
        let alice = n.id(0);
        let (call, invite) = rung_without_ringing(&mut n);
        n.phones[0].handle_route_result(now, invite.tag, Ok(None));
        n.phones[1].accept(now, call).unwrap();
        n.settle();
        let again = n
            .wire
            .iter()
            .filter(|(from, _, p)| *from == alice && *p == invite.payload)
            .count();
        assert_eq!(again, 1, "the invite sent again once");
        n.advance(cfg.path_timeout + Duration::from_millis(200));
        let (a, b) = (n.take(0), n.take(1));
        let (sa, sb) = (sas(&a), sas(&b));
        assert!(sa.is_some() && sa == sb, "{sa:?} {sb:?}: {a:?}");
        assert!(ended(&a).is_none() && ended(&b).is_none(), "{a:?} {b:?}");
    }

    /// When the ringing never arrives, the answered call cannot carry media: both ends give
    /// up after the path timeout instead of hanging.
    #[test]
    fn an_answered_call_without_keys_ends_after_the_path_timeout() {
        let cfg = PhoneConfig::default();
        // With sockets on one network, so that a path is found and only the keys are missing.
        let mut n = Net::new(2, |_| PhoneConfig::default()).with_sockets();
        let now = n.now;
        let bob = n.id(1);
        let (call, _) = rung_without_ringing(&mut n);
        n.phones[1].accept(now, call).unwrap();
        let accept = n.phones[1].poll_signal().unwrap();
        assert!(
            n.phones[0]
                .handle_signal(now, bob, &accept.payload)
                .is_none()
        );
        n.phones[1].handle_route_result(now, accept.tag, Ok(None));
        // The invite the answered caller sends again gets its ringing lost too.
        n.lose_replies = u32::MAX;
        n.settle();
        assert!(ended(&n.take(0)).is_none());
        n.advance(cfg.path_timeout - Duration::from_millis(100));
        assert!(ended(&n.take(0)).is_none(), "not before the path timeout");
        n.advance(Duration::from_millis(200));
        let (a, b) = (n.take(0), n.take(1));
        assert!(
            matches!(ended(&a), Some(EndReason::NoPath(ref w)) if w.contains("key exchange")),
            "{a:?}"
        );
        assert!(matches!(ended(&b), Some(EndReason::NoPath(_))), "{b:?}");
    }

    #[test]
    fn glare_leaves_one_answered_call() {
        let mut n = Net::new(2, |_| PhoneConfig::default());
        let now = n.now;
        let (alice, bob) = (n.id(0), n.id(1));
        let ca = n.phones[0].dial(now, bob).unwrap();
        let cb = n.phones[1].dial(now, alice).unwrap();
        // Both invites cross before either is delivered.
        let oa = n.phones[0].poll_signal().unwrap();
        let ob = n.phones[1].poll_signal().unwrap();
        let ra = n.phones[1].handle_signal(now, alice, &oa.payload);
        let rb = n.phones[0].handle_signal(now, bob, &ob.payload);
        n.phones[0].handle_route_result(now, oa.tag, Ok(ra));
        n.phones[1].handle_route_result(now, ob.tag, Ok(rb));
        n.settle();
        let winner = ca.min(cb);
        let loser = ca.max(cb);
        for i in 0..2 {
            let evs = n.take(i);
            assert!(
                evs.iter()
                    .any(|e| matches!(e, PhoneEvent::Answered { call } if *call == winner)),
                "phone {i}: {evs:?}"
            );
            assert_eq!(n.phones[i].live_calls(), 1, "phone {i}");
            assert!(
                n.phones[i]
                    .calls
                    .get(&loser)
                    .is_none_or(|c| c.stage == Stage::Ended),
                "phone {i}"
            );
        }
    }

    #[test]
    fn call_waiting_rings_a_second_call_when_allowed() {
        let mut n = Net::new(3, |i| PhoneConfig {
            max_calls: if i == 2 { 2 } else { 1 },
            ..PhoneConfig::default()
        });
        let now = n.now;
        let carol = n.id(2);
        let c1 = n.phones[0].dial(now, carol).unwrap();
        n.settle();
        n.phones[2].accept(now, c1).unwrap();
        n.settle();
        n.take(2);
        let c2 = n.phones[1].dial(now, carol).unwrap();
        n.settle();
        assert_eq!(incoming(&n.take(2)), Some(c2), "the second call rings");
        assert_eq!(n.phones[2].live_calls(), 2);
    }

    /// The candidates Bob's messages carried to Alice, in order, by kind.
    fn revealed(n: &Net, from: UserId, to: UserId) -> Vec<(usize, CandidateKind)> {
        let mut out = Vec::new();
        for (i, (f, t, payload)) in n.wire.iter().enumerate() {
            if *f != from || *t != to {
                continue;
            }
            let v = message::verify(payload, t, T0).unwrap();
            let list = match v.signal.body {
                Body::Ringing(o) | Body::Invite(o) => o.candidates,
                Body::Candidates { candidates, .. } => candidates,
                _ => continue,
            };
            out.extend(list.iter().map(|c| (i, c.kind)));
        }
        out
    }

    #[test]
    fn a_stranger_learns_no_callee_address_before_accept_a_contact_at_once() {
        for contact in [false, true] {
            let mut n = Net::new(2, |i| {
                let mut c = PhoneConfig::default();
                if i == 1 && contact {
                    c.contacts.insert(ident(1).id());
                }
                c
            });
            let now = n.now;
            let (alice, bob) = (n.id(0), n.id(1));
            let host: std::net::SocketAddr = "10.0.0.2:5000".parse().unwrap();
            for c in [
                LocalCandidate::Host(host),
                LocalCandidate::ServerReflexive {
                    addr: "203.0.113.7:6000".parse().unwrap(),
                    base: host,
                },
            ] {
                n.phones[1].add_local_candidate(now, c);
            }
            let call = n.phones[0].dial(now, bob).unwrap();
            n.settle();
            // Relayed candidate found while ringing.
            n.phones[1].add_local_candidate(
                now,
                LocalCandidate::Relayed("198.51.100.1:50000".parse().unwrap()),
            );
            n.settle();
            let before = revealed(&n, bob, alice);
            // The accept is sent by handle_signal's caller order: everything up to here is
            // before the accept.
            let direct_before = before
                .iter()
                .filter(|(_, k)| *k != CandidateKind::Relayed)
                .count();
            assert_eq!(
                direct_before,
                if contact { 2 } else { 0 },
                "contact={contact}: {before:?}"
            );
            assert!(before.iter().any(|(_, k)| *k == CandidateKind::Relayed));
            n.phones[1].accept(now, call).unwrap();
            n.settle();
            let after = revealed(&n, bob, alice);
            assert_eq!(
                after
                    .iter()
                    .filter(|(_, k)| *k != CandidateKind::Relayed)
                    .count(),
                2,
                "after accept every candidate is known: {after:?}"
            );
        }
    }

    #[test]
    fn an_answered_call_whose_peer_went_offline_ends_with_no_path() {
        let mut n = Net::new(2, |_| PhoneConfig::default()).with_sockets();
        let (now, bob) = (n.now, n.id(1));
        let call = n.phones[0].dial(now, bob).unwrap();
        n.settle();
        n.phones[1].accept(now, call).unwrap();
        n.settle();
        n.advance(Duration::from_secs(1));
        let _ = (n.take(0), n.take(1));
        // Bob's registration is gone (his supernode died, or he quit and his bye was lost):
        // the restart's signalling comes back 410.
        n.offline.insert(bob);
        let now = n.now;
        n.phones[0].restart(now, call).unwrap();
        n.settle();
        let r = ended(&n.take(0));
        assert!(
            matches!(&r, Some(EndReason::NoPath(why)) if why.contains("410")),
            "{r:?}"
        );
    }

    #[test]
    fn a_peer_giving_up_on_the_path_ends_the_call_as_no_path_not_as_a_hang_up() {
        for give_up in [true, false] {
            let mut n = Net::new(2, |_| PhoneConfig::default()).with_sockets();
            let (now, bob) = (n.now, n.id(1));
            let call = n.phones[0].dial(now, bob).unwrap();
            n.settle();
            n.phones[1].accept(now, call).unwrap();
            n.settle();
            n.advance(Duration::from_secs(1));
            let _ = (n.take(0), n.take(1));
            let now = n.now;
            if give_up {
                n.phones[0].fail(now, call, "no network path to the peer");
            } else {
                n.phones[0].hangup(now, call).unwrap();
            }
            n.settle();
            let (mine, theirs) = (ended(&n.take(0)), ended(&n.take(1)));
            if give_up {
                assert!(matches!(mine, Some(EndReason::NoPath(_))), "{mine:?}");
                assert!(
                    matches!(&theirs, Some(EndReason::NoPath(why)) if why.contains("no network path")),
                    "the peer's bye names the failure: {theirs:?}"
                );
            } else {
                assert_eq!(
                    (mine, theirs),
                    (Some(EndReason::HungUp), Some(EndReason::PeerHungUp))
                );
            }
        }
    }

    /// An answered call whose first checks have not found a path yet gives them
    /// `first_path_restart` before restarting ICE (a call that lost its path waits only
    /// `restart_after`), then `path_timeout`, and ends with no-path.
    #[test]
    fn a_call_that_never_had_a_path_restarts_late_then_ends() {
        let mut n = Net::new(2, |_| PhoneConfig::default()).with_sockets();
        n.cut = true;
        let (now, bob) = (n.now, n.id(1));
        let call = n.phones[0].dial(now, bob).unwrap();
        n.settle();
        n.phones[1].accept(now, call).unwrap();
        n.settle();
        let cfg = PhoneConfig::default();
        assert!(cfg.first_path_restart > cfg.restart_after);
        let restarted = |evs: &[PhoneEvent]| {
            evs.iter()
                .any(|e| matches!(e, PhoneEvent::Restarted { .. }))
        };
        n.advance(cfg.first_path_restart - Duration::from_millis(100));
        for i in 0..2 {
            let evs = n.take(i);
            assert!(!restarted(&evs), "phone {i} restarted early: {evs:?}");
            assert!(ended(&evs).is_none(), "{evs:?}");
        }
        n.advance(Duration::from_millis(200));
        assert!(restarted(&n.take(0)), "the caller restarts ICE");
        n.advance(cfg.path_timeout);
        let evs = n.take(0);
        assert!(matches!(ended(&evs), Some(EndReason::NoPath(_))), "{evs:?}");
    }

    #[test]
    fn an_answered_call_finds_its_path_and_ends_when_the_network_breaks() {
        let mut n = Net::new(2, |_| PhoneConfig::default()).with_sockets();
        let (now, bob) = (n.now, n.id(1));
        let call = n.phones[0].dial(now, bob).unwrap();
        n.settle();
        n.phones[1].accept(now, call).unwrap();
        n.settle();
        // Checks are paced (Ta): give them the agent's own schedule.
        n.advance(Duration::from_secs(1));
        for i in 0..2 {
            let evs = n.take(i);
            assert!(
                evs.iter()
                    .any(|e| matches!(e, PhoneEvent::Path { call: c, .. } if *c == call)),
                "phone {i} has a path: {evs:?}"
            );
        }
        // The network breaks: consent lapses, ICE restarts once, then the call ends, within
        // the 10 s a user is promised (issue 11) wherever in the consent cycle it broke.
        n.cut = true;
        let cfg = PhoneConfig::default();
        assert!(cfg.ice.consent_timeout + cfg.path_timeout < Duration::from_secs(10));
        n.advance(Duration::from_secs(10));
        // The first phone to give up ends with no-path and says bye over the signalling
        // (which still works); the other hears the bye, and ends with no-path too (a network
        // failure, not a hang-up), if it did not give up on its own first.
        let reasons: Vec<EndReason> = (0..2)
            .map(|i| {
                let evs = n.take(i);
                assert!(
                    evs.iter().any(|e| matches!(e, PhoneEvent::PathLost { .. })),
                    "{evs:?}"
                );
                assert!(
                    evs.iter()
                        .any(|e| matches!(e, PhoneEvent::Restarted { .. })),
                    "{evs:?}"
                );
                ended(&evs).unwrap_or_else(|| panic!("phone {i} ended: {evs:?}"))
            })
            .collect();
        assert!(
            reasons.iter().all(|r| matches!(r, EndReason::NoPath(_))),
            "{reasons:?}"
        );
    }
}
