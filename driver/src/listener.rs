//! The accept loop: a bounded number of connections (a semaphore), each in
//! its own task; transient accept errors (such as running out of file
//! descriptors) back off instead of spinning or exiting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::Driver;
use crate::connection::{self, Connection};
use crate::handshakes::HandshakeSlot;
use crate::proxy;

/// Accepts connections until `stop` is cancelled; the listener is dropped
/// (closed) when this returns.
pub async fn accept_loop(
    driver: Arc<Driver>,
    listener: TcpListener,
    connections: TaskTracker,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(driver.config.max_connections));
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(error = %err, retry_in = ?backoff, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(5);
        driver.metrics.connections_accepted.inc();
        let _ = stream.set_nodelay(true);
        // CWP/1 §2: the handshake deadline runs from accept, PROXY header
        // included, so that a slow header does not buy a second deadline.
        let slot = driver
            .handshake_slots
            .take(tokio::time::Instant::now() + driver.config.handshake_timeout);
        connections.spawn(accepted(
            driver.clone(),
            stream,
            peer,
            permit,
            slot,
            connections.clone(),
        ));
    }
}

/// One accepted connection until its handshake ends: the PROXY header if
/// required, then the handshake; an established session goes on in a task
/// of its own, tracked by `connections` and holding `permit`.
async fn accepted(
    driver: Arc<Driver>,
    mut stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    slot: HandshakeSlot,
    connections: TaskTracker,
) {
    let (peer, initial) = if driver.config.proxy_protocol {
        let remaining = slot.deadline.saturating_duration_since(tokio::time::Instant::now());
        let header = tokio::select! {
            header = Box::pin(proxy::read_header(&mut stream, peer, remaining)) => header,
            () = slot.evicted() => {
                // Not speaking CWP/1 yet: nothing to answer.
                driver.metrics.handshake("evicted");
                return;
            }
        };
        match header {
            Ok(found) => found,
            Err(err) => {
                debug!(%peer, error = %err, "refusing connection without a valid PROXY header");
                return;
            }
        }
    } else {
        (peer, BytesMut::new())
    };
    let connection = Connection::new(stream, peer, initial);
    connection::serve(driver, connection, slot, permit, &connections).await;
}
