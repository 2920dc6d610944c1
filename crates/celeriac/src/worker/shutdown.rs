//! Stopping a worker: its [`Phase`], the [`ShutdownHandle`] that moves it on (warm, then
//! cold), and the listener that turns SIGINT/SIGTERM into those requests.

use std::sync::Arc;

use tokio::sync::watch;

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Consuming and running tasks.
    Running,
    /// Not consuming; letting running tasks finish.
    Warm,
    /// Abandoning running tasks.
    Cold,
}

/// Asks a running worker to stop. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    tx: Arc<watch::Sender<Phase>>,
}

impl ShutdownHandle {
    /// A handle for a worker that has not been asked to stop.
    pub(super) fn new() -> Self {
        let (tx, _) = watch::channel(Phase::Running);
        Self { tx: Arc::new(tx) }
    }

    /// Follows the phase, for the loops that stop on it.
    pub(super) fn subscribe(&self) -> watch::Receiver<Phase> {
        self.tx.subscribe()
    }

    /// Warm shutdown: stop consuming, return unstarted messages, let running tasks finish.
    pub fn warm(&self) {
        self.tx.send_if_modified(|p| {
            let change = *p == Phase::Running;
            if change {
                *p = Phase::Warm;
            }
            change
        });
    }

    /// Cold shutdown: stop now; late-ack messages of running tasks go back to the queue.
    pub fn cold(&self) {
        self.tx.send_if_modified(|p| {
            let change = *p != Phase::Cold;
            *p = Phase::Cold;
            change
        });
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.tx.borrow()
    }
}

/// Turns SIGINT/SIGTERM into shutdown requests: the first is warm, the second cold. The
/// handlers are installed before this returns, so a signal sent after it is never the
/// default action (death by signal).
pub(super) fn spawn_signal_listener(handle: ShutdownHandle) -> tokio::task::JoinHandle<()> {
    #[cfg(unix)]
    let streams = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    };
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tracing::{error, warn};
            let (Ok(mut int), Ok(mut term)) = streams else {
                error!("cannot install signal handlers; stop the worker another way");
                return;
            };
            let mut count = 0;
            loop {
                let name = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                };
                count += 1;
                if count == 1 {
                    warn!(
                        "{name} received: warm shutdown (a second signal forces a cold shutdown)"
                    );
                    handle.warm();
                } else {
                    warn!("{name} received again: cold shutdown");
                    handle.cold();
                    return;
                }
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_ok() {
                handle.warm();
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                handle.cold();
            }
        }
    })
}
