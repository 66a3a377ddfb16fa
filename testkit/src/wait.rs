//! Waiting for something to happen, always on the thing itself and always
//! with a deadline, never on a guessed duration: a condition that holds
//! early ends the wait early, and one that never holds fails with what was
//! awaited instead of hanging.
//!
//! - [`eventually`] polls an asynchronous check, [`within`] awaits a
//!   future; both fail the test (panic) at the deadline. For test bodies
//!   on a tokio runtime. [`throughout`] is their negative: a check that
//!   must keep holding for a bounded period, for what must not happen.
//! - [`wait_until`] polls a check from a plain thread and returns
//!   [`TimedOut`] at the deadline, for the harness itself (which reports
//!   errors to `fleet up` and the benchmarks) and for synchronous tests
//!   (`.unwrap()`); [`wait_for_port`] is the readiness of a server.
//!
//! The timeout is always the caller's: it says how long the thing may
//! take on a loaded machine, which only the caller knows.

use std::future::Future;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How often a condition is checked: often enough that a wait ends within
/// a few milliseconds of the condition holding, rarely enough not to load
/// the processes being watched.
pub const POLL: Duration = Duration::from_millis(10);

/// A condition did not hold in time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for {what}")]
pub struct TimedOut {
    /// What was awaited, as the caller described it.
    pub what: String,
    /// How long it was given.
    pub timeout: Duration,
}

/// Polls `ready` every [`POLL`] from this thread until it returns true;
/// [`TimedOut`] if it has not after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<(), TimedOut> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            return Err(TimedOut {
                what: what.to_owned(),
                timeout,
            });
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> Result<(), TimedOut> {
    wait_until(&format!("{addr} to accept connections"), timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    })
}

/// Polls `check` every [`POLL`] until it returns true; fails the test if
/// it has not after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Checks every [`POLL`] that `check` holds, for all of `period`; fails
/// the test at the first check that does not. For what must *not* happen,
/// where there is no event to wait for: the caller says why `period` is
/// long enough for it to have happened if it were going to.
pub async fn throughout<F, Fut>(what: &str, period: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + period;
    loop {
        assert!(check().await, "{what} stopped holding within {period:?}");
        if tokio::time::Instant::now() >= end {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Awaits `future`; fails the test if it has not completed after
/// `timeout`.
pub async fn within<T>(what: &str, timeout: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(timeout, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {timeout:?} waiting for {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_as_soon_as_the_condition_holds() {
        let mut checks = 0;
        wait_until("the third check", Duration::from_secs(10), || {
            checks += 1;
            checks == 3
        })
        .expect("holds at the third check");
        assert_eq!(checks, 3);
    }

    #[test]
    fn wait_until_says_what_it_waited_for() {
        let err = wait_until("nothing", Duration::from_millis(30), || false).unwrap_err();
        assert_eq!(err.to_string(), "timed out after 30ms waiting for nothing");
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 30ms waiting for a future that never ends")]
    async fn within_fails_the_test_at_the_deadline() {
        within(
            "a future that never ends",
            Duration::from_millis(30),
            std::future::pending::<()>(),
        )
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "the count stays below 3 stopped holding")]
    async fn throughout_fails_at_the_first_check_that_does_not_hold() {
        let mut checks = 0;
        throughout("the count stays below 3", Duration::from_secs(10), || {
            checks += 1;
            let holds = checks < 3;
            async move { holds }
        })
        .await;
    }

    #[tokio::test]
    async fn eventually_polls_until_the_check_holds() {
        let mut checks = 0;
        eventually("the second check", Duration::from_secs(10), || {
            checks += 1;
            let done = checks == 2;
            async move { done }
        })
        .await;
        assert_eq!(checks, 2);
    }
}
