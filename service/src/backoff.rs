//! Jittered exponential backoff: the one way every Drover process waits
//! between attempts (a driver reconnecting to the bridge or to Redis, an
//! accept loop out of file descriptors, the bridge retrying a batch, a
//! simulated device reconnecting).
//!
//! Delays double from `first` up to `last`. With jitter (the default),
//! each delay is drawn uniformly from its upper half, `[d/2, d]` ("equal
//! jitter"): never much shorter than planned, and a fleet of processes
//! that failed together does not retry together.

use std::time::Duration;

/// A backoff schedule and how far along it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry (before jitter).
    first: Duration,
    /// The longest delay (before jitter).
    last: Duration,
    /// Whether delays are drawn from `[d/2, d]` rather than being `d`.
    jitter: bool,
    /// Retries since the last [`Backoff::reset`].
    attempts: u32,
}

impl Backoff {
    /// Delays from `first`, doubling up to `last`, with equal jitter.
    pub const fn new(first: Duration, last: Duration) -> Self {
        Self {
            first,
            last,
            jitter: true,
            attempts: 0,
        }
    }

    /// The same schedule without jitter (for a lone loop such as an accept
    /// loop, where nothing else retries in step with it).
    pub const fn without_jitter(self) -> Self {
        Self { jitter: false, ..self }
    }

    /// The delay before the next attempt, moving along the schedule.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        self.delay(self.attempts)
    }

    /// Back to the start of the schedule (after a success).
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    /// The delay before attempt `attempt` (1: the first retry), without
    /// moving along the schedule.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        if !self.jitter {
            return ceiling;
        }
        let half = ceiling / 2;
        half + random_up_to(ceiling - half)
    }

    /// The delay before jitter for attempt `attempt`: `first · 2^(attempt-1)`
    /// capped at `last`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.first.saturating_mul(1 << doublings).min(self.last)
    }
}

/// A uniformly random duration in `[0, up_to]`.
pub fn random_up_to(up_to: Duration) -> Duration {
    let nanos = u64::try_from(up_to.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_last_with_jitter_in_their_upper_half() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&delays[0]));
        assert!((Duration::from_millis(100)..=Duration::from_millis(200)).contains(&delays[1]));
        for delay in &delays[6..] {
            assert!(
                (Duration::from_millis(2500)..=Duration::from_secs(5)).contains(delay),
                "{delays:?}"
            );
        }
    }

    #[test]
    fn a_reset_starts_the_schedule_again() {
        let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_secs(1)).without_jitter();
        assert_eq!(backoff.next_delay(), Duration::from_millis(5));
        assert_eq!(backoff.next_delay(), Duration::from_millis(10));
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(5));
    }

    #[test]
    fn the_ceiling_never_overflows() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(backoff.ceiling(1), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(7), Duration::from_secs(5));
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(5));
        assert_eq!(random_up_to(Duration::ZERO), Duration::ZERO);
    }
}
