//! Graceful shutdown: one sender, many listeners (the mini-redis pattern). Dropping the
//! [`ShutdownSignal`] also counts as a shutdown, so a panicking owner cannot leave tasks running.

use tokio::sync::watch;

/// Held by the owner; [`ShutdownSignal::trigger`] (or dropping it) tells every [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownSignal(watch::Sender<bool>);

/// Held by each task; [`Shutdown::wait`] completes once shutdown was asked for.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

impl ShutdownSignal {
    pub fn new() -> (ShutdownSignal, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownSignal(tx), Shutdown(rx))
    }

    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// A handle that never fires (for callers with no shutdown to wire up).
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        Shutdown(rx)
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    pub async fn wait(&mut self) {
        // An error means the sender is gone, which is a shutdown too.
        let _ = self.0.wait_for(|v| *v).await;
    }
}

/// SIGTERM and SIGINT (Ctrl-C), caught from the moment this is made.
///
/// Install it before announcing readiness (a start line, READY=1): whoever reads that may
/// signal at once, and a signal that arrives before any handler exists takes its default
/// action (exit, no drain). Make it once and poll it in the loop: a stream created afresh per
/// iteration would miss a signal delivered between two iterations.
pub struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Needs a tokio runtime.
    pub fn install() -> std::io::Result<ShutdownSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Completes on the next SIGTERM or SIGINT, naming it.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
