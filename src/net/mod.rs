//! Networking: socket set-up, batched UDP I/O, the metrics endpoint and shutdown plumbing.
//! Only this module (and the binaries) touch tokio's networking and clocks.

pub mod agent;
pub mod batch;
pub mod frames;
mod metrics;
mod probe;
pub mod relay;
pub mod relay_link;
mod shutdown;
mod socket;
pub mod supernode;
pub mod turn_client;

pub use metrics::serve_metrics;
pub use probe::{ProbeError, local_ip_for, run_probe};
pub use shutdown::{Shutdown, ShutdownSignal, signal_shutdown};
pub use socket::{bind_udp, bind_udp_std};
