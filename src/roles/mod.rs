//! Roles and promotion (DESIGN §7): when an ordinary client takes on the relay or supernode role,
//! and how the mesh says how many of each it wants. Sans-IO and deterministic given
//! `(seed, inputs)`: a simulator can drive thousands of these.
//!
//! # The client side: [`Promoter`]
//!
//! What goes in ([`Promoter::handle_input`], each with `now`; time only moves forward):
//! - [`Input::Reachability`]: the dial-back result. A public address is *proved*, never assumed:
//!   the host address equals the server-reflexive one **and** unsolicited probes from sources
//!   we never contacted reached us (from two supernodes once the mesh has two).
//! - [`Input::UplinkKbps`] (measured or declared spare uplink; capped by
//!   [`Config::max_relay_kbps`]) and [`Input::CpuHeadroom`] (0.0–1.0).
//! - [`Input::Need`]: how many relays and supernodes the mesh still wants (from a supernode).
//! - [`Input::Grant`]: a supernode's answer to [`Event::RequestGrant`].
//! - [`Promoter::shutdown`]: the process is leaving; every held role is given up.
//!
//! What comes out ([`Promoter::poll_event`], then [`Promoter::poll_timeout`]):
//! - [`Event::RequestGrant`]: eligible, the mesh wants the role, and the random jitter has passed:
//!   ask a supernode for a grant. Only a grant promotes: the supernode hands out at most the
//!   deficit at once ([`GrantBook`]), so a crowd of eligible clients does not stampede.
//! - [`Event::BecomeRelay`], [`Event::BecomeSupernode`]: granted; start the role now.
//! - [`Event::Demote`]: stop the role (redirect its clients first), with the reason.
//!
//! Stability: promotion and demotion use separate thresholds (hysteresis); a held role is kept
//! for at least [`Config::min_tenure`] unless the reason is hard (the user refused, the address
//! stopped being reachable, shutdown); a new supernode accepts clients gradually
//! ([`Promoter::supernode_client_limit`], the load ramp).
//!
//! # The supernode side: [`need`] and [`GrantBook`]
//!
//! [`need`] computes how many supernodes and relays the mesh wants; [`GrantBook`] hands out
//! grants: at most the deficit outstanding at once, at most one per [`GrantConfig::interval`].

mod defaults;
mod grant;
pub mod probe;
mod promoter;
pub(crate) mod rng;

pub use defaults::{Config, GrantConfig, Ramp};
pub use grant::{GrantBook, Need, NeedInputs, need};
pub use promoter::{Event, Input, Promoter, Reachability};

use serde::{Deserialize, Serialize};

/// A role a client can take on.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Relay,
    Supernode,
}

impl Role {
    /// The role's name as `answer`'s JSON events print it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Relay => "relay",
            Role::Supernode => "supernode",
        }
    }
}

/// Why a role was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoteReason {
    /// The user refused the role (`--no-relay`, `--no-supernode`).
    Refused,
    /// Dial-back no longer proves a public reachable address (or the address changed).
    Unreachable,
    /// Spare uplink fell below the demotion threshold.
    Bandwidth,
    /// CPU headroom fell below the demotion threshold.
    Cpu,
    /// The mesh has more of this role than it wants.
    Surplus,
    /// The process is shutting down.
    Shutdown,
}

impl DemoteReason {
    /// The reason as `answer`'s JSON events print it.
    pub fn name(self) -> &'static str {
        match self {
            DemoteReason::Refused => "refused",
            DemoteReason::Unreachable => "unreachable",
            DemoteReason::Bandwidth => "bandwidth",
            DemoteReason::Cpu => "cpu",
            DemoteReason::Surplus => "surplus",
            DemoteReason::Shutdown => "shutdown",
        }
    }

    /// Hard reasons act at once; soft ones wait out the minimum tenure (no oscillation).
    pub fn is_hard(self) -> bool {
        matches!(
            self,
            DemoteReason::Refused | DemoteReason::Unreachable | DemoteReason::Shutdown
        )
    }
}
