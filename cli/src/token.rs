//! `drover token SERIAL`: a bearer token for a device's HTTP requests
//! (docs/HTTP.md, "Bearer tokens"), asked of the gateways exactly as a
//! device asks: `POST /v1/token` signed with the device's key, derived
//! here from the master key. The token is the gateway's answer, so a
//! gateway that refuses the device (a revoked serial, a clock out of
//! step) refuses the operator too.

use std::time::Duration;

use anyhow::Context as _;
use cwp::DeviceKey;
use drover_http_ingest::signature::{self, CONTENT_SHA256_HEADER};
use drover_http_ingest::{BodySha256, RequestNonce};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::args::TokenArgs;
use crate::exit::Exit;
use crate::output;

/// The token endpoint.
const PATH: &str = "/v1/token";

/// How long the whole exchange may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The most of an answer read: a token answer is a few hundred bytes.
const MAX_ANSWER: u64 = 64 * 1024;

/// `drover token`.
pub async fn run(args: &TokenArgs, json: bool) -> anyhow::Result<Exit> {
    let serial = crate::parse_serial(&args.serial)?;
    let key = DeviceKey::derive(&crate::config::master_key()?, &serial);
    let address = crate::config::gateway_address()?;
    let now_ms = drover_service::clock::unix_ms();
    let nonce = RequestNonce::from_bytes(uuid::Uuid::new_v4().into_bytes());
    let headers = signature::sign(&key, &serial, "POST", PATH, now_ms, &nonce, &BodySha256::of(b""))
        .expect("POST /v1/token is a well-formed request line");
    let request = format!(
        "POST {PATH} HTTP/1.1\r\nHost: {address}\r\nAuthorization: {}\r\n{CONTENT_SHA256_HEADER}: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        headers.authorization, headers.content_sha256
    );
    let (status, body) = tokio::time::timeout(TIMEOUT, exchange(&address, request.as_bytes()))
        .await
        .with_context(|| format!("no answer from the gateway at {address} within {TIMEOUT:?}"))??;
    let answer: serde_json::Value = serde_json::from_slice(&body)
        .with_context(|| format!("the gateway answered {status} with a body that is not JSON"))?;
    if status != 200 {
        let code = answer["code"].as_str().unwrap_or("?");
        let message = answer["message"].as_str().unwrap_or_default();
        if json {
            output::line(&answer.to_string())?;
        }
        eprintln!("drover: the gateway refused ({status} {code}): {message}");
        return Ok(Exit::Refused);
    }
    let token = answer["token"].as_str().context("the gateway's answer has no token")?;
    if json {
        output::line(
            &serde_json::json!({ "serial": serial.as_str(), "token": token, "expires_in": answer["expires_in"] })
                .to_string(),
        )?;
    } else {
        output::line(token)?;
    }
    Ok(Exit::Success)
}

/// One HTTP/1.1 exchange on a new connection: the status and the body.
async fn exchange(address: &str, request: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to the gateway at {address} (HTTP_GATEWAY_URL)"))?;
    stream.write_all(request).await.context("sending the request")?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER)
        .read_to_end(&mut raw)
        .await
        .context("reading the answer")?;
    let end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .context("the gateway's answer is not HTTP")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .context("the gateway's answer has no status")?;
    let chunked = head
        .lines()
        .any(|line| line.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let body = raw[end + 4..].to_vec();
    Ok((status, if chunked { dechunk(&body)? } else { body }))
}

/// A chunked body's bytes.
fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|window| window == b"\r\n")
            .context("a malformed chunked answer")?;
        let size_text = std::str::from_utf8(&body[..line_end])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or_default().trim(), 16)
            .context("a malformed chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        anyhow::ensure!(body.len() >= size, "a chunked answer cut short");
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or_default();
    }
}
