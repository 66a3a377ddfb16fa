//! The PROXY protocol v2 header HAProxy puts in front of every connection
//! (`send-proxy-v2`), so that the driver logs and registers the device's
//! real address instead of HAProxy's. Enabled by `DRIVER_PROXY_PROTOCOL`;
//! when enabled it is required, because accepting connections without it
//! would let anyone claim any address.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use ppp::v2::{Addresses, Command, Header, ParseError};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// Largest header accepted: the 16-byte preamble plus addresses and the
/// TLVs HAProxy may add; far below the format's 64 KiB maximum.
const MAX_HEADER: usize = 1024;

/// A connection that did not start with a valid PROXY v2 header.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The socket failed or closed first.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a PROXY v2 header.
    #[error("invalid PROXY v2 header: {0}")]
    Invalid(String),
    /// It took too long.
    #[error("no PROXY v2 header within {0:?}")]
    Timeout(Duration),
}

/// Reads the header; returns the device's address (the socket's peer for a
/// `LOCAL` header, e.g. a health check) and any bytes read past it.
pub async fn read_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<(SocketAddr, BytesMut), ProxyError> {
    tokio::time::timeout(timeout, read(stream, peer))
        .await
        .map_err(|_| ProxyError::Timeout(timeout))?
}

async fn read(stream: &mut TcpStream, peer: SocketAddr) -> Result<(SocketAddr, BytesMut), ProxyError> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        match Header::try_from(&buf[..]) {
            Ok(header) => {
                let consumed = header.header.len();
                let source = match (header.command, header.addresses) {
                    (Command::Local, _) => peer,
                    (Command::Proxy, Addresses::IPv4(a)) => SocketAddr::from((a.source_address, a.source_port)),
                    (Command::Proxy, Addresses::IPv6(a)) => SocketAddr::from((a.source_address, a.source_port)),
                    (Command::Proxy, other) => {
                        return Err(ProxyError::Invalid(format!("unsupported address family {other:?}")));
                    }
                };
                let rest = buf.split_off(consumed);
                return Ok((source, rest));
            }
            Err(ParseError::Incomplete(_) | ParseError::Partial(_, _)) => {}
            Err(err) => return Err(ProxyError::Invalid(err.to_string())),
        }
        if buf.len() >= MAX_HEADER {
            return Err(ProxyError::Invalid(format!("header longer than {MAX_HEADER} bytes")));
        }
        buf.reserve(256);
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(ProxyError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}
