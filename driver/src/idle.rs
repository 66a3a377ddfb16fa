//! Closes sessions the device has gone quiet on (CWP/1: nothing heard for
//! the idle timeout, by default three heartbeats) with `BYE IDLE`.
//!
//! One task sweeps every session a few times per timeout, instead of a
//! timer in each session: an idle device's task is smaller by the timer
//! (112 bytes, and its entry in tokio's timer wheel), and reading a frame
//! stores a time instead of moving a timer. A session closes between one
//! timeout and one timeout plus a sweep period after it was last heard.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::registry::{CloseRequest, Registry, monotonic_ms};

/// How often sessions are checked: a tenth of the timeout, within
/// 10 ms – 1 s.
pub fn sweep_period(idle_timeout: Duration) -> Duration {
    (idle_timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Asks every session unheard for `idle_timeout` to close, until `stop`.
pub async fn close_idle_sessions(registry: Arc<Registry>, idle_timeout: Duration, stop: CancellationToken) {
    let timeout_ms = u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX);
    let mut sweeps = tokio::time::interval(sweep_period(idle_timeout));
    sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = sweeps.tick() => {}
        }
        let Some(cutoff_ms) = monotonic_ms().checked_sub(timeout_ms) else {
            continue;
        };
        for session in registry.unheard_since(cutoff_ms) {
            session.request_close(CloseRequest::Idle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_come_a_tenth_of_the_timeout_apart_within_bounds() {
        assert_eq!(sweep_period(Duration::from_secs(90)), Duration::from_secs(1));
        assert_eq!(sweep_period(Duration::from_secs(5)), Duration::from_millis(500));
        assert_eq!(sweep_period(Duration::from_millis(50)), Duration::from_millis(10));
    }
}
