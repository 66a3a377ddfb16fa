//! The accept loop: a bounded number of connections (a semaphore,
//! `DRIVER_MAX_CONNECTIONS`), each in its own task; transient accept errors
//! (such as running out of file descriptors) back off instead of spinning
//! or exiting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use drover_service::backoff::Backoff;
use drover_service::drain;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::connection::Connection;
use crate::handshake::slots::HandshakeSlot;
use crate::handshake::{self, Handshakes};
use drover_service::proxy;

/// Waits after a failed accept: nothing else retries in step with this
/// loop, so no jitter.
const ACCEPT_RETRY: Backoff = Backoff::new(Duration::from_millis(5), Duration::from_secs(1)).without_jitter();

/// Accepts connections, at most `max_connections` open at once, until
/// `stop` is signalled; the listener is dropped (closed) when this returns.
pub async fn accept_loop(
    handshakes: Arc<Handshakes>,
    listener: TcpListener,
    max_connections: usize,
    stop: drain::Watch,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut backoff = ACCEPT_RETRY;
    loop {
        let permit = tokio::select! {
            () = stop.signaled() => return,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            () = stop.signaled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    let retry_in = backoff.next_delay();
                    warn!(error = %err, ?retry_in, "accept failed");
                    tokio::time::sleep(retry_in).await;
                    continue;
                }
            },
        };
        backoff.reset();
        handshakes.sessions.metrics.connections_accepted.inc();
        let _ = stream.set_nodelay(true);
        // CWP/1 §2: the handshake deadline runs from accept, PROXY header
        // included, so that a slow header does not buy a second deadline.
        let slot = handshakes.slots.take(tokio::time::Instant::now() + handshakes.timeout);
        let connection = accepted(handshakes.clone(), stream, peer, permit, slot);
        handshakes.sessions.connections.spawn(connection);
    }
}

/// One accepted connection until its handshake ends: the PROXY header if
/// required, then the handshake; an established session goes on in a task
/// of its own, holding `permit`.
async fn accepted(
    handshakes: Arc<Handshakes>,
    mut stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    slot: HandshakeSlot,
) {
    let (peer, initial) = if handshakes.proxy_protocol {
        let remaining = slot.deadline.saturating_duration_since(tokio::time::Instant::now());
        let header = tokio::select! {
            header = Box::pin(proxy::read_header(&mut stream, peer, remaining)) => header,
            () = slot.evicted() => {
                // Not speaking CWP/1 yet: nothing to answer.
                handshakes.sessions.metrics.handshake("evicted");
                return;
            }
        };
        match header {
            Ok(found) => (found.source, found.rest),
            Err(err) => {
                debug!(%peer, error = %err, "refusing connection without a valid PROXY header");
                return;
            }
        }
    } else {
        (peer, BytesMut::new())
    };
    let connection = Connection::new(stream, peer, initial);
    handshake::serve(handshakes, connection, slot, permit).await;
}
