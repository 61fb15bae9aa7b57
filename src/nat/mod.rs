//! NAT behaviour discovery: the probe state machine ([`Probe`]), its timing ([`Timing`]) and
//! what it reports ([`Report`]), in RFC 4787 / RFC 5780 terms.

mod defaults;
mod probe;
mod report;

pub use defaults::{
    MIN_DISCOVERY_INTERVAL, Timing, answer_rate_lower_bound, lifetime_schedule,
    silence_is_conclusive,
};
pub use probe::{Probe, ProbeConfig, Stage, Transmit};
pub use report::{Behavior, Evidence, NatKind, Report, ServerReport, classify};
