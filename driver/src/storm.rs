//! Connect storms: the driver's handshakes under way, and a wait for
//! them to pass.
//!
//! When thousands of devices reconnect at once, authenticating and
//! registering them is the driver's first job. Work that can wait a few
//! seconds (durable commands, file offers) waits for the storm to pass
//! ([`StormWatch::passed`]), at most [`MAX_STORM_WAIT`].

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// More handshakes at once than this (from accept to `WELCOME`) is a
/// connect storm: devices waiting to be authenticated and registered come
/// before commands for devices already connected,
/// so fetches wait for the storm to pass (at most [`MAX_STORM_WAIT`]). A
/// queued command delivered during a storm costs the bridge and Redis a
/// `TakeCommands`, its `SENT` outcome and then its result: in a storm of
/// 10,000 devices with 10 commands each, that work made the storm take
/// five times as long.
pub const STORM_HANDSHAKES: i64 = 16;

/// The longest a fetch waits for a connect storm to pass: a storm that
/// goes on longer shares the driver with deliveries again.
pub const MAX_STORM_WAIT: Duration = Duration::from_secs(5);

/// Whether a connect storm is under way: the driver's handshakes from
/// accept to `WELCOME` (or their failure), against [`STORM_HANDSHAKES`].
/// Waiting fetches are told when it passes (no polling).
#[derive(Debug)]
pub struct StormWatch {
    handshakes: AtomicI64,
    under_way: watch::Sender<bool>,
}

impl Default for StormWatch {
    fn default() -> Self {
        Self {
            handshakes: AtomicI64::new(0),
            under_way: watch::Sender::new(false),
        }
    }
}

/// One handshake under way; dropped when it ends, however it ends.
#[derive(Debug)]
pub struct Handshaking(Arc<StormWatch>);

impl StormWatch {
    /// Counts a handshake until the returned guard is dropped.
    pub fn handshake(self: &Arc<Self>) -> Handshaking {
        let now = self.handshakes.fetch_add(1, Ordering::Relaxed) + 1;
        if now > STORM_HANDSHAKES {
            self.under_way.send_if_modified(|storm| !std::mem::replace(storm, true));
        }
        Handshaking(self.clone())
    }

    /// Returns when no storm is under way, or after [`MAX_STORM_WAIT`].
    pub async fn passed(&self) {
        let mut storm = self.under_way.subscribe();
        let _ = tokio::time::timeout(MAX_STORM_WAIT, storm.wait_for(|under_way| !*under_way)).await;
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        let now = self.0.handshakes.fetch_sub(1, Ordering::Relaxed) - 1;
        if now <= STORM_HANDSHAKES {
            self.0
                .under_way
                .send_if_modified(|storm| std::mem::replace(storm, false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deliveries_wait_for_a_connect_storm_to_pass() {
        let watch = Arc::new(StormWatch::default());
        // Up to the threshold is no storm: a fetch goes at once.
        let few: Vec<Handshaking> = (0..STORM_HANDSHAKES).map(|_| watch.handshake()).collect();
        let started = tokio::time::Instant::now();
        watch.passed().await;
        assert_eq!(started.elapsed(), Duration::ZERO);

        // One more is a storm: the fetch waits until enough handshakes end.
        let one_more = watch.handshake();
        let waiting = tokio::spawn({
            let watch = watch.clone();
            async move { watch.passed().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "a fetch waits while the storm lasts");
        drop(one_more);
        tokio::time::timeout(Duration::from_millis(1), waiting)
            .await
            .expect("the storm's end lets it go")
            .unwrap();
        drop(few);
    }

    #[tokio::test(start_paused = true)]
    async fn a_storm_that_goes_on_delays_a_delivery_five_seconds_at_most() {
        let watch = Arc::new(StormWatch::default());
        let _storm: Vec<Handshaking> = (0..=STORM_HANDSHAKES).map(|_| watch.handshake()).collect();
        let started = tokio::time::Instant::now();
        watch.passed().await;
        assert_eq!(started.elapsed(), MAX_STORM_WAIT);
    }
}
