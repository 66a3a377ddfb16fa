//! The PROXY protocol v2 header HAProxy puts in front of every connection
//! (`send-proxy-v2`), so that a server logs, registers and rate-limits the
//! client's real address instead of HAProxy's. The driver
//! (`DRIVER_PROXY_PROTOCOL`) and the HTTP gateway (`HTTP_PROXY_PROTOCOL`)
//! read it the same way; when enabled it is required, because accepting
//! connections without it would let anyone claim any address.
//!
//! With `send-proxy-v2-ssl` HAProxy also says whether the client's own
//! connection was TLS (the `PP2_TYPE_SSL` TLV with its `PP2_CLIENT_SSL`
//! bit): the gateway accepts bearer tokens only on such connections.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use ppp::v2::{Addresses, Command, Header, ParseError, Type};
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Largest header accepted: the 16-byte preamble plus addresses and the
/// TLVs HAProxy may add; far below the format's 64 KiB maximum.
const MAX_HEADER: usize = 1024;

/// `PP2_CLIENT_SSL`: the first byte of a `PP2_TYPE_SSL` TLV has this bit
/// set when the client connected over TLS (the PROXY protocol, §2.2.5).
const PP2_CLIENT_SSL: u8 = 0x01;

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

/// What the header says of the client's connection.
#[derive(Debug)]
pub struct ProxyHeader {
    /// The client's address (the socket's peer for a `LOCAL` header, e.g.
    /// HAProxy's own health check).
    pub source: SocketAddr,
    /// Whether the client's connection to HAProxy was TLS (only HAProxy's
    /// `send-proxy-v2-ssl` says so; false otherwise).
    pub client_tls: bool,
    /// Bytes read past the header: the start of the client's data.
    pub rest: BytesMut,
}

/// Reads the header from `stream`, whose socket peer is `peer`, within
/// `timeout`.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<ProxyHeader, ProxyError> {
    tokio::time::timeout(timeout, read(stream, peer))
        .await
        .map_err(|_| ProxyError::Timeout(timeout))?
}

async fn read<S: AsyncRead + Unpin>(stream: &mut S, peer: SocketAddr) -> Result<ProxyHeader, ProxyError> {
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
                let client_tls = header.tlvs().any(|tlv| {
                    tlv.is_ok_and(|tlv| {
                        tlv.kind == Type::SSL as u8
                            && tlv.value.first().is_some_and(|client| client & PP2_CLIENT_SSL != 0)
                    })
                });
                let rest = buf.split_off(consumed);
                return Ok(ProxyHeader {
                    source,
                    client_tls,
                    rest,
                });
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

#[cfg(test)]
mod tests {
    use ppp::v2::{Builder, Protocol, Version};

    use super::*;

    fn header(tlv: Option<&[u8]>) -> Vec<u8> {
        let addresses = Addresses::IPv4(ppp::v2::IPv4::new([192, 0, 2, 7], [10, 0, 0, 1], 40_000, 8080));
        let mut builder = Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses);
        if let Some(value) = tlv {
            builder = builder.write_tlv(Type::SSL, value).unwrap();
        }
        builder.build().unwrap()
    }

    async fn parse(mut bytes: Vec<u8>) -> ProxyHeader {
        bytes.extend_from_slice(b"POST /");
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        read_header(&mut &bytes[..], peer, Duration::from_secs(1))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_client_address_and_its_tls_come_from_the_header() {
        let plain = parse(header(None)).await;
        assert_eq!(plain.source, "192.0.2.7:40000".parse().unwrap());
        assert!(!plain.client_tls);
        assert_eq!(&plain.rest[..], b"POST /");
        // PP2_TYPE_SSL: client flags, then a 32-bit verify result.
        assert!(parse(header(Some(&[PP2_CLIENT_SSL, 0, 0, 0, 0]))).await.client_tls);
        // Control: the TLV without the client bit is not TLS.
        assert!(!parse(header(Some(&[0, 0, 0, 0, 0]))).await.client_tls);
    }

    #[tokio::test]
    async fn a_connection_without_the_header_is_refused() {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut bytes: &[u8] = b"POST /v1/events HTTP/1.1\r\n\r\n";
        assert!(matches!(
            read_header(&mut bytes, peer, Duration::from_secs(1)).await,
            Err(ProxyError::Invalid(_))
        ));
    }
}
