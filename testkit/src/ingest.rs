//! A device's HTTP requests to the gateway (docs/HTTP.md), written byte by
//! byte on a socket so that a test controls everything the gateway sees:
//! the framing (a length or chunks), the headers, a body cut short or sent
//! slowly. [`signed`] signs as a device does, with the `drover-http-ingest`
//! implementation (the Python client of docs/HTTP.md is tested apart).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use cwp::Serial;
use drover_http_ingest::signature::{self, CONTENT_SHA256_HEADER};
use drover_http_ingest::{BodySha256, RequestNonce};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::device::device_key;

/// How the body travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`.
    Length,
    /// `Transfer-Encoding: chunked`, in chunks of this many bytes.
    Chunked(usize),
}

/// One request.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// `POST`, `GET`, ...
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers besides `Host`, the framing and `Connection: close`.
    pub headers: Vec<(String, String)>,
    /// The body as sent.
    pub body: Vec<u8>,
    /// How.
    pub framing: Framing,
}

impl HttpRequest {
    /// `POST path` with an NDJSON body, signed by `serial` (test master
    /// key) now with a fresh nonce.
    pub fn signed_events(serial: &Serial, path: &str, body: Vec<u8>) -> Self {
        let mut headers = signed(serial, "POST", path, &body, unix_ms());
        headers.push(("Content-Type".to_owned(), "application/x-ndjson".to_owned()));
        Self {
            method: "POST".to_owned(),
            path: path.to_owned(),
            headers,
            body,
            framing: Framing::Length,
        }
    }

    /// Replaces (or adds) a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Removes a header.
    pub fn without_header(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// Sends the body in chunks of `size` bytes.
    pub fn chunked(mut self, size: usize) -> Self {
        self.framing = Framing::Chunked(size);
        self
    }
}

/// The answer.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    /// The status code.
    pub status: u16,
    /// The headers, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (panics if it is not: a test failure).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "the answer is not JSON ({err}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `code` of a JSON error.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// The test's clock, Unix ms.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

/// The `Authorization` and `X-Content-SHA256` headers of a request by
/// `serial` (its key from the test master key) at `ts_ms`, with a fresh
/// nonce; `body` as sent.
pub fn signed(serial: &Serial, method: &str, path: &str, body: &[u8], ts_ms: u64) -> Vec<(String, String)> {
    signed_with(&device_key(serial), serial, method, path, body, ts_ms)
}

/// [`signed`] with any key (a wrong one, for the refusals).
pub fn signed_with(
    key: &cwp::DeviceKey,
    serial: &Serial,
    method: &str,
    path: &str,
    body: &[u8],
    ts_ms: u64,
) -> Vec<(String, String)> {
    let nonce = RequestNonce::from_bytes(rand_bytes());
    let headers = signature::sign(key, serial, method, path, ts_ms, &nonce, &BodySha256::of(body))
        .expect("a signable method and path");
    vec![
        ("Authorization".to_owned(), headers.authorization),
        (CONTENT_SHA256_HEADER.to_owned(), headers.content_sha256),
    ]
}

/// A fresh nonce's bytes (random: a v4 UUID's).
fn rand_bytes() -> [u8; 16] {
    uuid::Uuid::new_v4().into_bytes()
}

/// How long a request may take before the test fails instead of hanging.
const ANSWER_WAIT: Duration = Duration::from_secs(60);

/// Sends `request` to `addr` on a new connection and reads the answer.
pub async fn send(addr: SocketAddr, request: &HttpRequest) -> anyhow::Result<HttpAnswer> {
    let mut stream = TcpStream::connect(addr).await.context("connecting to the gateway")?;
    write_request(&mut stream, addr, request).await?;
    read_answer(&mut stream).await
}

/// [`send`] from `source` (a 127.0.0.x address: as from another host).
pub async fn send_from(
    addr: SocketAddr,
    source: std::net::IpAddr,
    request: &HttpRequest,
) -> anyhow::Result<HttpAnswer> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(source, 0))
        .with_context(|| format!("binding {source}"))?;
    let mut stream = socket.connect(addr).await.context("connecting to the gateway")?;
    write_request(&mut stream, addr, request).await?;
    read_answer(&mut stream).await
}

/// Writes the whole request.
pub async fn write_request(stream: &mut TcpStream, addr: SocketAddr, request: &HttpRequest) -> anyhow::Result<()> {
    write_request_declaring(stream, addr, request, request.body.len()).await
}

/// Writes the request with `Content-Length: declared` (with
/// [`Framing::Length`]) whatever the body's length: a body shorter than
/// declared leaves the gateway waiting for the rest (a slow client).
pub async fn write_request_declaring(
    stream: &mut TcpStream,
    addr: SocketAddr,
    request: &HttpRequest,
    declared: usize,
) -> anyhow::Result<()> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n",
        request.method, request.path
    );
    for (name, value) in &request.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    match request.framing {
        Framing::Length => head.push_str(&format!("Content-Length: {declared}\r\n\r\n")),
        Framing::Chunked(_) => head.push_str("Transfer-Encoding: chunked\r\n\r\n"),
    }
    stream.write_all(head.as_bytes()).await?;
    match request.framing {
        Framing::Length => stream.write_all(&request.body).await?,
        Framing::Chunked(size) => {
            for chunk in request.body.chunks(size.max(1)) {
                stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
                stream.write_all(chunk).await?;
                stream.write_all(b"\r\n").await?;
            }
            stream.write_all(b"0\r\n\r\n").await?;
        }
    }
    stream.flush().await?;
    Ok(())
}

/// Reads an answer to its end (the gateway closes: `Connection: close`).
pub async fn read_answer(stream: &mut TcpStream) -> anyhow::Result<HttpAnswer> {
    let mut raw = Vec::new();
    tokio::time::timeout(ANSWER_WAIT, stream.read_to_end(&mut raw))
        .await
        .context("no answer in time")?
        .context("reading the answer")?;
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .with_context(|| format!("no end of the HTTP header in {:?}", String::from_utf8_lossy(&raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .context("malformed status line")?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok(HttpAnswer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}
