//! The accept loop under the gRPC server: at most [`MAX_CONNECTIONS`] open
//! connections (a semaphore permit travels with each one and is given back
//! when hyper drops it), `TCP_NODELAY` on every socket (answers are small
//! and must not wait for Nagle), and a failing `accept` (out of file
//! descriptors) backs off instead of spinning.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

/// Connections open at once; drivers hold one each, probes come and go.
pub(crate) const MAX_CONNECTIONS: usize = 1024;
/// Backoff after a failed `accept`, doubling up to the last.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_LAST: Duration = Duration::from_secs(1);

/// An accepted connection holding its place under [`MAX_CONNECTIONS`].
#[derive(Debug)]
pub(crate) struct Connection {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

/// The accepted connections of `listener`, for tonic's
/// `serve_with_incoming_shutdown`.
pub(crate) fn incoming(listener: TcpListener) -> impl Stream<Item = io::Result<Connection>> {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    futures::stream::unfold((listener, permits), |(listener, permits)| async move {
        // The semaphore is never closed.
        let permit = Arc::clone(&permits).acquire_owned().await.ok()?;
        let mut backoff = ACCEPT_BACKOFF_FIRST;
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    if let Err(err) = stream.set_nodelay(true) {
                        debug!(%peer, error = %err, "cannot set TCP_NODELAY");
                    }
                    debug!(%peer, "connection accepted");
                    let connection = Connection {
                        stream,
                        _permit: permit,
                    };
                    return Some((Ok(connection), (listener, permits)));
                }
                Err(err) => {
                    warn!(error = %err, "accept failed; backing off {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_LAST);
                }
            }
        }
    })
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
