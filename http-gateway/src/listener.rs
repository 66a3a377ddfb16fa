//! Accepting clients: a bounded accept loop (`HTTP_MAX_CONNECTIONS`), the
//! PROXY v2 header when behind HAProxy (`HTTP_PROXY_PROTOCOL`), then
//! HTTP/1.1 on the connection (hyper) until the client leaves or the
//! gateway stops.
//!
//! Slow clients: the PROXY header and each request's headers must arrive
//! within `HTTP_HEADER_TIMEOUT` (hyper closes a connection whose headers
//! do not), headers are at most [`MAX_HEADER_BYTES`] (hyper answers 431),
//! and a body within `HTTP_BODY_TIMEOUT` ([`crate::body`], 408).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use drover_service::{drain, proxy};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::service::{Client, Gateway};

/// The most bytes of request line and headers hyper buffers (its minimum
/// is 8 KiB); beyond it hyper answers 431 and closes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// How long an accept error backs off (file descriptors exhausted, ...).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How the listener serves connections.
#[derive(Debug, Clone, Copy)]
pub struct ListenerSettings {
    /// Concurrent connections.
    pub max_connections: usize,
    /// Whether each connection starts with a PROXY v2 header.
    pub proxy_protocol: bool,
    /// Deadline for the PROXY header and for each request's headers.
    pub header_timeout: Duration,
}

/// Accepts connections until `stop`; each runs on `connections`, which the
/// caller awaits after stopping (each finishes its request in progress).
pub async fn run(
    listener: TcpListener,
    settings: ListenerSettings,
    gateway: Arc<Gateway>,
    connections: TaskTracker,
    stop: drain::Watch,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    loop {
        let permit = tokio::select! {
            () = stop.signaled() => return,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            () = stop.signaled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(error = %err, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let gateway = Arc::clone(&gateway);
        let stop = stop.clone();
        connections.spawn(async move {
            gateway.metrics.connections.inc();
            serve(stream, peer, settings, Arc::clone(&gateway), stop).await;
            gateway.metrics.connections.dec();
            drop(permit);
        });
    }
}

/// One connection, from its PROXY header to its last request.
async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    settings: ListenerSettings,
    gateway: Arc<Gateway>,
    stop: drain::Watch,
) {
    let (client, initial) = if settings.proxy_protocol {
        match proxy::read_header(&mut stream, peer, settings.header_timeout).await {
            Ok(header) => (
                Client {
                    address: header.source,
                    tls: header.client_tls,
                },
                header.rest,
            ),
            Err(err) => {
                debug!(%peer, error = %err, "refusing connection without a valid PROXY header");
                return;
            }
        }
    } else {
        (
            Client {
                address: peer,
                tls: false,
            },
            BytesMut::new(),
        )
    };
    let service = service_fn(move |request| {
        let gateway = Arc::clone(&gateway);
        async move { Ok::<_, std::convert::Infallible>(gateway.handle(client, request).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
        .keep_alive(true)
        .serve_connection(TokioIo::new(Prefixed { initial, stream }), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.signaled() => {
            // Finish the request in progress, take no other.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        debug!(client = %client.address, error = %err, "connection ended with an error");
    }
}

/// A socket whose first bytes were already read (past the PROXY header).
struct Prefixed {
    initial: BytesMut,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.initial.is_empty() {
            let n = self.initial.len().min(buf.remaining());
            buf.put_slice(&self.initial[..n]);
            self.initial.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
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
}
