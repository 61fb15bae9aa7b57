//! The agent's public types: routes and transmits, candidates in, paths and events out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::candidate::CandidateKind;
use super::defaults::Timing;
use super::wire::Refusal;

/// Where a packet leaves from or arrived on: our own socket, or a TURN allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// Our socket bound to this address (a host candidate): send from it directly.
    Direct(SocketAddr),
    /// The TURN allocation with this relayed address: send through the TURN client
    /// (`TurnClient::send_to`, ChannelData or a Send indication).
    Relay(SocketAddr),
}

impl Route {
    /// The local address: the socket's, or the relayed address.
    pub fn local(self) -> SocketAddr {
        match self {
            Route::Direct(a) | Route::Relay(a) => a,
        }
    }

    pub fn is_relay(self) -> bool {
        matches!(self, Route::Relay(_))
    }
}

/// A datagram to send: `data` to `to` along `route`.
#[must_use]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub route: Route,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// A local candidate, as gathering found it (gathering happens outside the agent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalCandidate {
    /// The call's socket, bound to this address.
    Host(SocketAddr),
    /// The supernode's STUN answer: `addr` is how it saw the socket bound to `base`.
    ServerReflexive { addr: SocketAddr, base: SocketAddr },
    /// A relayed address the TURN client allocated.
    Relayed(SocketAddr),
}

/// How an agent starts.
#[derive(Clone, Debug)]
pub struct IceConfig {
    /// The caller controls (RFC 8445 §6.1.1): it nominates the pair both sides use.
    pub controlling: bool,
    /// Seeds every random choice (credentials, tie-breaker, transaction IDs, consent jitter).
    /// Give it fresh random bytes; tests give a fixed seed and replay exactly.
    pub seed: [u8; 32],
    pub timing: Timing,
}

/// A path: a valid pair, as the application sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathInfo {
    /// Send media along this route ...
    pub route: Route,
    /// ... to this address.
    pub remote: SocketAddr,
    /// What our end of the path is, as the peer sees it: host (no NAT between), srflx (the
    /// address the supernode saw), prflx (a mapping only the peer saw), or relay.
    pub local_kind: CandidateKind,
    pub remote_kind: CandidateKind,
    /// Our address as the peer sees it (XOR-MAPPED-ADDRESS of the last answer).
    pub mapped: Option<SocketAddr>,
    /// Either end is a relay.
    pub relayed: bool,
    /// Round trip of the last unambiguous check on this path.
    pub rtt: Option<Duration>,
}

/// Why the selected path changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeReason {
    /// A better pair works (e.g. a direct pair after starting on the relay).
    Better,
    /// The controlling peer nominated another pair.
    PeerNominated,
    /// The old path lost consent (RFC 7675) or its local candidate went away.
    ConsentLost,
    /// An ICE restart produced a new path.
    Restart,
    /// The same path, its remote candidate now known by its signalled type: it was learnt
    /// peer-reflexive from a check that came before the candidate (RFC 8838 §11).
    Renamed,
}

/// What the agent tells the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A path is selected; media may flow on it.
    Connected(PathInfo),
    /// The selected path changed.
    PathChanged {
        from: PathInfo,
        to: PathInfo,
        reason: ChangeReason,
    },
    /// A path we kept consent on got no answer for `consent_timeout` (or its local candidate
    /// was removed): the path is dead. `selected` says whether media was on it; a
    /// [`Event::PathChanged`] or [`Event::Disconnected`] follows if so.
    ConsentLost { path: PathInfo, selected: bool },
    /// No path works any more; checks continue on every pair (new candidates or an ICE restart
    /// may recover).
    Disconnected,
    /// Every pair failed after both sides said their candidates are complete.
    Failed,
    /// The peer sees our socket at a new address (our NAT rebound the mapping). If we are
    /// controlling the agent renominates on its own; either side may also restart ICE.
    MappingChanged {
        local: SocketAddr,
        from: SocketAddr,
        to: SocketAddr,
    },
    /// Checks through the relay allocation `relayed` will go to `peer`'s IP: install a TURN
    /// permission for it (`TurnClient::create_permission`) before they are sent. A permission
    /// covers the IP (RFC 8656 §9); the port goes along so that a relay can tell a peer on its
    /// own IP (the far end's allocation on the same relay, which it delivers internally) from
    /// its other services there, which it refuses.
    RelayPermission {
        relayed: SocketAddr,
        peer: SocketAddr,
    },
    /// A role conflict (RFC 8445 §7.3.1.1) switched our role.
    RoleChanged { controlling: bool },
}

/// What became of an inbound datagram.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A check or answer for this agent, handled.
    Consumed,
    /// Not a STUN Binding message: give it to someone else (media, TURN, signalling).
    NotIce,
    /// Dropped and counted.
    Refused(Refusal),
}

/// Why a remote candidate is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CandidateError {
    /// Unspecified, multicast or broadcast address, or port 0: never a peer.
    #[error("not a unicast address and port")]
    BadAddress,
    /// The bound on remote candidates is reached.
    #[error("too many remote candidates")]
    TooMany,
}

/// Credentials that break the rules of RFC 8839 §5.4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ICE credentials must be ice-chars, ufrag 4..=256 and password 22..=256 long")]
pub struct BadCredentials;

/// What the agent did, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IceCounters {
    /// New checks (not retransmissions), ordinary and triggered.
    pub checks_sent: u64,
    pub triggered_checks: u64,
    pub retransmits: u64,
    pub consent_checks: u64,
    /// Authenticated check requests answered.
    pub requests_answered: u64,
    /// Authenticated responses to our checks.
    pub responses_received: u64,
    /// Duplicate or late answers to transactions already finished (ignored).
    pub late_responses: u64,
    pub prflx_learned: u64,
    pub role_conflicts: u64,
    /// Answers from another address or route than the check went to (RFC 8445 §7.2.5.2.1).
    pub non_symmetric: u64,
    /// Refused inbound messages, by reason.
    pub refused: BTreeMap<Refusal, u64>,
}

impl IceCounters {
    /// All refusals together.
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }
}
