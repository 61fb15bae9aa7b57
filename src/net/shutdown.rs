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

/// Completes on SIGTERM or SIGINT (Ctrl-C), naming the signal.
pub async fn signal_shutdown() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default action (exit) still applies; wait forever here.
        std::future::pending::<()>().await;
        unreachable!()
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
