//! Sweeps the sessions the device has gone quiet on: after
//! `DRIVER_PARK_AFTER` they are asked to park ([`super::park`]); after the
//! idle timeout (CWP/1: nothing heard for it, by default three
//! heartbeats) they are closed with `BYE IDLE`, parked or not.
//!
//! One task sweeps every session a few times per timeout, instead of a
//! timer in each session: an idle device's task is smaller by the timer
//! (112 bytes, and its entry in tokio's timer wheel), and reading a frame
//! stores a time instead of moving a timer. A session closes between one
//! timeout and one timeout plus a sweep period after it was last heard,
//! and parks between `DRIVER_PARK_AFTER` and that plus a sweep period.
//!
//! With parking on, the sweeps come a tenth of `DRIVER_PARK_AFTER` apart,
//! not a whole one: every session that went quiet since the last sweep
//! parks at once, and a second's worth of them (a thousand, after a
//! thousand commands) took the sessions' runtime for tens of
//! milliseconds, delaying every other device's acks behind them.

use std::sync::Arc;
use std::time::Duration;

use drover_service::drain;

use crate::registry::{CloseRequest, Registry, monotonic_ms};

/// How often sessions are checked: a tenth of the idle timeout, or of the
/// park delay if that is shorter, within 10 ms – 1 s.
pub fn sweep_period(idle_timeout: Duration, park_after: Option<Duration>) -> Duration {
    let shortest = park_after.map_or(idle_timeout, |park| park.min(idle_timeout));
    (shortest / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Asks every session unheard for `idle_timeout` to close, and every
/// running one unheard for `park_after`, with no event awaiting storage,
/// to park, until `stop` is signalled.
pub async fn sweep_quiet_sessions(
    registry: Arc<Registry>,
    idle_timeout: Duration,
    park_after: Option<Duration>,
    stop: drain::Watch,
) {
    let mut sweeps = tokio::time::interval(sweep_period(idle_timeout, park_after));
    sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.signaled() => return,
            _ = sweeps.tick() => {}
        }
        let now_ms = monotonic_ms();
        let quiet = registry.quiet(
            now_ms.checked_sub(millis(idle_timeout)),
            park_after.and_then(|after| now_ms.checked_sub(millis(after))),
        );
        for session in quiet.idle {
            session.request_close(CloseRequest::Idle);
        }
        for session in quiet.to_park {
            session.request_park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_come_a_tenth_of_the_timeout_apart_within_bounds() {
        assert_eq!(sweep_period(Duration::from_secs(90), None), Duration::from_secs(1));
        assert_eq!(sweep_period(Duration::from_secs(5), None), Duration::from_millis(500));
        assert_eq!(sweep_period(Duration::from_millis(50), None), Duration::from_millis(10));
    }

    #[test]
    fn a_shorter_park_delay_sets_the_sweep_period() {
        let timeout = Duration::from_secs(90);
        assert_eq!(
            sweep_period(timeout, Some(Duration::from_secs(1))),
            Duration::from_millis(100)
        );
        assert_eq!(
            sweep_period(timeout, Some(Duration::from_millis(50))),
            Duration::from_millis(10)
        );
        assert_eq!(
            sweep_period(Duration::from_secs(5), Some(Duration::from_secs(60))),
            Duration::from_millis(500)
        );
    }
}
