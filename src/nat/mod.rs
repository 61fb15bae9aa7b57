//! NAT behaviour discovery: the probe state machine ([`Probe`]), its timing ([`Timing`]) and
//! what it reports ([`Report`]), in RFC 4787 / RFC 5780 terms.
//!
//! The probe is sans-IO: it says what to send ([`Probe::poll_transmit`]) and when to wake it
//! ([`Probe::poll_timeout`]), and takes what arrives ([`Probe::handle_input`]). `natprobe`
//! drives it over UDP sockets; the same machine runs anywhere datagrams can be carried.
//!
//! # Example: a probe against the STUN server core, with no sockets at all
//!
//! A host on a public address (no NAT) probes a server with two addresses (RFC 5780); the
//! "network" is this loop, delivering each datagram to whoever owns its destination, and time
//! jumps to the next timer when nothing is in flight.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//! use std::time::Instant;
//! use voxmesh::nat::{Behavior, NatKind, Probe, ProbeConfig, Timing};
//! use voxmesh::supernode::{BindingConfig, BindingCounters, BindingService, Via};
//!
//! let server = BindingService::new(
//!     BindingConfig {
//!         primary: "192.0.2.1:3478".parse().unwrap(),
//!         alternate: Some("192.0.2.2:3479".parse().unwrap()),
//!         rfc5780: true,
//!         software: None,
//!     },
//!     Arc::new(BindingCounters::default()),
//! );
//! let config = ProbeConfig {
//!     servers: vec!["192.0.2.1:3478".parse().unwrap()],
//!     lifetime: false,
//!     timing: Timing::default(),
//! };
//! // The probe's sockets: their local addresses are also what the server sees (no NAT).
//! let locals: Vec<SocketAddr> = (0..Probe::sockets_needed(&config))
//!     .map(|i| SocketAddr::from(([203, 0, 113, 5], 40000 + i as u16)))
//!     .collect();
//! let mut now = Instant::now();
//! let mut probe = Probe::new(config, locals.clone(), now);
//! let mut out = Vec::new();
//! let report = loop {
//!     if let Some(report) = probe.poll_report() {
//!         break report;
//!     }
//!     let Some(t) = probe.poll_transmit() else {
//!         now = probe.poll_timeout().expect("a probe that is not done has a timer");
//!         probe.handle_timeout(now);
//!         continue;
//!     };
//!     let from = locals[t.socket];
//!     let via = Via::ALL.into_iter().find(|v| server.config().local(*v) == t.to);
//!     if let Some(via) = via {
//!         // To the server; its reply may come from another of its addresses (CHANGE-REQUEST).
//!         if let Some(reply) = server.handle(via, from, &t.data, &mut out) {
//!             if let Some(socket) = locals.iter().position(|l| *l == reply.to) {
//!                 let source = server.config().local(reply.via);
//!                 probe.handle_input(now, socket, source, &out[..reply.len]);
//!             }
//!         }
//!     } else if let Some(socket) = locals.iter().position(|l| *l == t.to) {
//!         probe.handle_input(now, socket, from, &t.data); // the hairpinning test: to ourselves
//!     }
//! };
//! assert_eq!(report.nat, Some(NatKind::None));
//! assert_eq!(report.mapping, Some(Behavior::EndpointIndependent));
//! assert_eq!(report.filtering, Some(Behavior::EndpointIndependent));
//! assert_eq!(report.mapped_address, Some(locals[0]));
//! assert_eq!(report.hairpinning, Some(true));
//! ```

mod defaults;
mod probe;
mod report;

pub use defaults::{
    MIN_DISCOVERY_INTERVAL, Timing, answer_rate_lower_bound, lifetime_schedule,
    silence_is_conclusive,
};
pub use probe::{Probe, ProbeConfig, Stage, Transmit};
pub use report::{Behavior, Evidence, NatKind, Report, ServerReport, classify};
