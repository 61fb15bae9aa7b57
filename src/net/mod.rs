//! Networking: socket set-up, batched UDP I/O, the metrics endpoint and shutdown plumbing.
//! Only this module (and the binaries) touch tokio's networking and clocks.

pub mod addr_watch;
pub mod agent;
pub mod batch;
#[cfg(feature = "calls")]
pub mod call;
pub mod frames;
mod metrics;
mod notify;
#[cfg(feature = "natprobe")]
mod probe;
pub mod prom;
#[cfg(feature = "relay")]
pub mod relay;
pub mod relay_link;
mod shutdown;
mod socket;
#[cfg(feature = "supernode")]
pub mod supernode;
pub mod turn_client;

pub use metrics::serve_metrics;
pub use notify::{notify, sd_notify};
#[cfg(feature = "natprobe")]
pub use probe::{ProbeError, local_ip_for, run_probe};
pub use shutdown::{Shutdown, ShutdownSignal, ShutdownSignals};
pub use socket::{bind_udp, bind_udp_std};

/// Sleeps until a sans-IO core's next deadline (`poll_timeout`), or forever when it has none:
/// the timer arm of every driver's `select!`.
pub(crate) async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
