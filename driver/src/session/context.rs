//! What every established session shares ([`Sessions`]: the registry,
//! admission, subscriptions, the bridge, uploads, the park, where tasks
//! run), and how an ended session is unregistered everywhere ([`end`]).

use std::sync::Arc;
use std::time::Duration;

use drover_edge::bridge::BridgeClient;
use drover_service::drain;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::park::Park;
use crate::admission::Admission;
use crate::commands::{CommandReports, DurableCommands, Subscriptions};
use crate::files::FileService;
use crate::metrics::Metrics;
use crate::registry::{CloseRequest, Registry, SessionHandle};
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
    /// Durable commands, fetched when a session opens.
    pub durable: DurableCommands,
    /// Uploads.
    pub uploads: UploadService,
    /// Rollouts' files.
    pub files: FileService,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Where quiet sessions wait without a task.
    pub park: Park,
    /// The runtime sessions run on (handshakes run on their own thread).
    pub runtime: tokio::runtime::Handle,
    /// The transfers' thread: a session runs there while it sends a file
    /// (at `DRIVER_TRANSFER_NICE`), and comes back when the transfer ends.
    pub transfers: tokio::runtime::Handle,
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

/// Unregisters an ended session everywhere: the registry, its command
/// subscription, the bridge's registry; commands that did not go out are
/// reported as undelivered.
pub fn end(sessions: &Sessions, session: &Arc<SessionHandle>, last_heard_ms: u64) {
    sessions.metrics.sessions.dec();
    sessions.registry.remove(session);
    sessions.subscriptions.sync(session.serial);
    let durable = sessions.durable.session_ended(&session.session_id);
    sessions.files.session_ended(&session.session_id);
    for command in session.take_commands() {
        if durable.contains(&command.command_id) {
            // It stays in the ledger for the next session.
            continue;
        }
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
