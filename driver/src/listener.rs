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
        connections.spawn(accepted(driver.clone(), stream, peer, permit));
    }
}

/// One accepted connection, for its whole life: the PROXY header if
/// required, then the device's session. Every idle device costs this
/// task's size, so the short-lived PROXY read is boxed and the session
/// future is built in place.
async fn accepted(driver: Arc<Driver>, mut stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
    let _permit = permit;
    let (peer, initial) = if driver.config.proxy_protocol {
        match Box::pin(proxy::read_header(&mut stream, peer, driver.config.handshake_timeout)).await {
            Ok(found) => found,
            Err(err) => {
                debug!(%peer, error = %err, "refusing connection without a valid PROXY header");
                return;
            }
        }
    } else {
        (peer, BytesMut::new())
    };
    connection::serve(driver, Connection::new(stream, peer, initial)).await;
}
