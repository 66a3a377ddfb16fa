//! Established sessions: what happens after `WELCOME`, CWP/1 §3.
//!
//! - [`established`]: the session loop, carrying out what
//!   [`cwp::ServerSession`]'s rules decide for each frame;
//! - [`registry`]: the live sessions and each one's mailbox, the only way
//!   the rest of the driver (pipeline, commands, supersede, drain) reaches
//!   a session;
//! - [`park`]: quiet sessions held with no task until they are needed;
//! - [`idle`]: the sweep that parks quiet sessions and closes silent ones.
//!
//! [`Sessions`] is everything established sessions share; each session's
//! task holds it (one pointer) and nothing of the handshake.

pub mod established;
pub mod idle;
pub mod park;
pub mod registry;

use std::sync::Arc;
use std::time::Duration;

use cwp::ServerSession;
use drover_service::drain;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use self::established::SessionState;
use self::park::Park;
use self::registry::{CloseRequest, Registry, SessionHandle};
use crate::admission::Admission;
use crate::bridge::BridgeClient;
use crate::commands::{CommandReports, Subscriptions};
use crate::connection::Connection;
use crate::metrics::Metrics;
use crate::upload::UploadService;

/// What `WELCOME` announces and the session loop applies.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// This driver's id (`WELCOME.server`).
    pub driver_id: String,
    /// `DRIVER_HEARTBEAT_S`.
    pub heartbeat_s: u16,
    /// `DRIVER_MAX_PAYLOAD`.
    pub max_payload: u32,
    /// `DRIVER_EVENT_WINDOW`.
    pub event_window: u16,
    /// `DRIVER_IDLE_TIMEOUT`.
    pub idle_timeout: Duration,
    /// `DRIVER_PARK_AFTER`; `None`: sessions never park.
    pub park_after: Option<Duration>,
    /// `DRIVER_DRAIN_PERIOD`: draining devices are told to come back at a
    /// time spread over it.
    pub drain_period: Duration,
}

/// Everything established sessions share.
#[derive(Debug)]
pub struct Sessions {
    /// What sessions announce and apply.
    pub settings: SessionSettings,
    /// The live sessions.
    pub registry: Arc<Registry>,
    /// Room for events awaiting storage.
    pub admission: Admission,
    /// Command-channel subscriptions.
    pub subscriptions: Subscriptions,
    /// Unary calls to the bridge (closing sessions).
    pub bridge: BridgeClient,
    /// Commands that will not reach their device.
    pub reports: CommandReports,
    /// Uploads.
    pub uploads: UploadService,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Where quiet sessions wait without a task.
    pub park: Park,
    /// The runtime sessions run on (handshakes run on their own thread).
    pub runtime: tokio::runtime::Handle,
    /// Every session's task, parked sessions included: the drain waits
    /// for them.
    pub connections: TaskTracker,
    /// Short tasks sessions leave behind (closing a session with the
    /// bridge): awaited at shutdown.
    pub tasks: TaskTracker,
    /// Signalled when the driver drains: sessions leave at once.
    pub draining: drain::Watch,
}

impl Sessions {
    /// The close request for one draining session, with its own reconnect
    /// delay, spread over `DRIVER_DRAIN_PERIOD` so that the fleet absorbs
    /// the devices without a reconnect storm.
    pub fn drain_request(&self) -> CloseRequest {
        CloseRequest::Draining {
            reconnect_after_ms: spread_ms(self.settings.drain_period),
        }
    }
}

/// A freshly authenticated session: it parks right away (nothing is in
/// flight yet, and a session gets a task only when its device has
/// something to say), or, if the device already sent more, parking is off
/// or the driver is draining (the session then leaves at once), runs in a
/// task of its own on the sessions' runtime, tracked by
/// [`Sessions::connections`] and holding `permit`.
pub fn start(
    sessions: &Arc<Sessions>,
    connection: Connection,
    session: Arc<SessionHandle>,
    permit: OwnedSemaphorePermit,
) {
    let state = SessionState {
        rules: ServerSession::new(session.durable_event_id(), sessions.settings.event_window),
        last_heard_ms: drover_service::clock::unix_ms(),
    };
    if sessions.settings.park_after.is_some() && connection.is_idle() && !sessions.draining.is_signaled() {
        park::park_or_end(sessions, connection, session, permit, state);
        return;
    }
    // Registered with the sessions' runtime before its task is spawned, so
    // that the task holds one connection, not a detached one and the
    // attached one.
    match connection.register_with(&sessions.runtime) {
        Ok(connection) => {
            let task = established::run(sessions.clone(), connection, session, permit, state);
            sessions.connections.spawn_on(task, &sessions.runtime);
        }
        Err(err) => {
            warn!(serial = %session.serial, error = %err, "cannot hand the connection to the sessions' runtime");
            end(sessions, &session, state.last_heard_ms);
            sessions.metrics.connections.dec();
        }
    }
}

/// Unregisters an ended session everywhere: the registry, its command
/// subscription, the bridge's registry; commands that did not go out are
/// reported as undelivered.
pub fn end(sessions: &Sessions, session: &Arc<SessionHandle>, last_heard_ms: u64) {
    sessions.metrics.sessions.dec();
    sessions.registry.remove(session);
    sessions.subscriptions.sync(session.serial);
    for command in session.take_commands() {
        sessions.reports.undelivered(session.serial, command.command_id);
    }
    let bridge = sessions.bridge.clone();
    let serial = session.serial;
    let session_id = session.session_id;
    let close = async move {
        if let Err(status) = bridge.close_session(&serial, &session_id, last_heard_ms).await {
            debug!(%serial, code = ?status.code(), "could not mark the session closed");
        }
    };
    // On the sessions' runtime, even when the session ends on the
    // handshake thread, which stops earlier.
    sessions.tasks.spawn_on(close, &sessions.runtime);
}

/// A random delay in `[0, period]`, in milliseconds, for `BYE DRAINING`.
pub fn spread_ms(period: Duration) -> u32 {
    let delay = drover_service::backoff::random_up_to(period);
    u32::try_from(delay.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_delays_are_spread_over_the_period() {
        let period = Duration::from_secs(30);
        for _ in 0..100 {
            assert!(spread_ms(period) <= 30_000);
        }
        assert_eq!(spread_ms(Duration::ZERO), 0);
    }
}
