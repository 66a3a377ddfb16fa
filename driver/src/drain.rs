//! Graceful drain on SIGTERM: stop accepting, tell every device to come
//! back later (at a time spread over `DRIVER_DRAIN_PERIOD`, so that the
//! fleet absorbs them without a reconnect storm), flush acknowledgements,
//! and wait for every connection to end.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::Driver;
use crate::config::Config;
use crate::connection::spread_ms;
use crate::registry::CloseRequest;

/// The close request for one draining session, with its own reconnect delay.
pub fn close_request(config: &Config) -> CloseRequest {
    CloseRequest::Draining {
        reconnect_after_ms: spread_ms(config.drain_period),
    }
}

/// Asks every session to leave and waits until every connection is gone or
/// `grace` has passed. The listener must already be closed.
pub async fn drain(driver: &Arc<Driver>, connections: &TaskTracker, grace: Duration) {
    driver.draining.store(true, Ordering::Release);
    connections.close();
    let sessions = driver.registry.len();
    info!(sessions, drain_period = ?driver.config.drain_period, "draining: devices are told to reconnect elsewhere");
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        // Connections still in their handshake register late; ask again
        // until nothing is left.
        for session in driver.registry.all() {
            session.request_close(close_request(&driver.config));
        }
        tokio::select! {
            () = connections.wait() => break,
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        if tokio::time::Instant::now() > deadline {
            warn!(
                remaining = connections.len(),
                "drain grace period over; closing the remaining connections"
            );
            break;
        }
    }
}
