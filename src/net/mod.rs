//! Networking: the tokio drivers ([`drivers`]) and the plumbing they share: socket set-up,
//! batched UDP I/O, the metrics endpoint, readiness notification and shutdown. Only this module
//! (and the binaries) touch tokio's networking and clocks.

pub mod addr_watch;
pub mod batch;
pub mod drivers;
pub mod frames;
mod metrics;
mod notify;
pub mod prom;
mod shutdown;
pub mod socket;
pub mod tls;

pub use metrics::serve_metrics;
pub use notify::{notify, sd_notify};
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
