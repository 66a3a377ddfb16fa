//! Graceful shutdown as a value, after linkerd2-proxy's `drain` crate.
//!
//! [`channel`] gives a [`Signal`], held by whoever decides when to stop,
//! and a [`Watch`], cloned into every task that must stop then. A task
//! waits for [`Watch::signaled`] beside its work and, once it has wound
//! down, drops its watch; [`Signal::drain`] tells every watch and then
//! waits until all of them are dropped, so the one who stops knows when
//! the stopping is over. A task that keeps no watch (a connection's, of
//! which there are a hundred thousand) is awaited through a
//! [`tokio_util::task::TaskTracker`] instead; both are awaited in the
//! shutdown order of each binary's `run`.

use std::time::Duration;

use tokio::sync::watch;

/// Creates a drain: the signal and its first watch.
pub fn channel() -> (Signal, Watch) {
    let (tx, rx) = watch::channel(false);
    (Signal { tx }, Watch { rx })
}

/// The stopping side of a drain.
#[derive(Debug)]
pub struct Signal {
    tx: watch::Sender<bool>,
}

/// The stopped side of a drain: cheap to clone, one per task.
#[derive(Debug, Clone)]
pub struct Watch {
    rx: watch::Receiver<bool>,
}

impl Signal {
    /// Tells every watch to stop, without waiting for them.
    pub fn signal(&self) {
        self.tx.send_replace(true);
    }

    /// Whether the drain has been signalled.
    pub fn is_signaled(&self) -> bool {
        *self.tx.borrow()
    }

    /// A new watch of this drain (signalled already if the drain is).
    pub fn watch(&self) -> Watch {
        Watch {
            rx: self.tx.subscribe(),
        }
    }

    /// Tells every watch to stop and waits until every one is dropped.
    pub async fn drain(self) {
        self.signal();
        self.tx.closed().await;
    }

    /// [`Signal::drain`] for at most `grace`; whether every watch was
    /// dropped in time.
    pub async fn drain_within(self, grace: Duration) -> bool {
        self.signal();
        tokio::time::timeout(grace, self.tx.closed()).await.is_ok()
    }
}

impl Watch {
    /// Resolves once the drain is signalled (at once if it already is, or
    /// if its signal is gone: nobody is left to say "go on"). Cancel-safe.
    pub async fn signaled(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|signaled| *signaled).await;
    }

    /// Whether the drain is signalled now.
    pub fn is_signaled(&self) -> bool {
        *self.rx.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_tells_every_watch_and_waits_for_each_to_be_released() {
        let (signal, watch) = channel();
        let late = signal.watch();
        assert!(!watch.is_signaled());
        let (released_tx, mut released) = tokio::sync::mpsc::channel::<&str>(2);
        for (name, watch) in [("first", watch), ("late", late)] {
            let released_tx = released_tx.clone();
            tokio::spawn(async move {
                watch.signaled().await;
                // Winding down happens while the watch is still held.
                released_tx.send(name).await.unwrap();
                drop(watch);
            });
        }
        drop(released_tx);
        signal.drain().await;
        let mut names = vec![released.recv().await.unwrap(), released.recv().await.unwrap()];
        names.sort_unstable();
        assert_eq!(names, ["first", "late"], "both wound down before the drain returned");
    }

    #[tokio::test]
    async fn a_watch_made_after_the_signal_is_signalled_already() {
        let (signal, _watch) = channel();
        signal.signal();
        let watch = signal.watch();
        assert!(watch.is_signaled());
        watch.signaled().await;
    }

    #[tokio::test]
    async fn a_watch_whose_signal_is_gone_counts_as_signalled() {
        let (signal, watch) = channel();
        drop(signal);
        watch.signaled().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_with_a_grace_gives_up_on_a_watch_still_held() {
        let (signal, watch) = channel();
        assert!(!signal.drain_within(Duration::from_secs(5)).await);
        drop(watch);
        let (signal, watch) = channel();
        drop(watch);
        assert!(signal.drain_within(Duration::from_secs(5)).await);
    }
}
