//! The load generator of the HTTP events benchmark (`bench-http`, run by
//! `fleet bench --only http-events`): `clients` concurrent clients, each a
//! device with its own serial and one HTTP/1.1 keep-alive connection, post
//! `requests` NDJSON batches of `records` taxi-trip events
//! ([`drover_http_ingest::taxi`]) in all, each request signed
//! `CWP1-HMAC-SHA256` with the device key derived from the master key
//! (docs/HTTP.md), and every answer is checked.
//!
//! The same load runs against the gateway ([`AnswerFormat::Drover`]) and
//! against issue 19's reference service, `bench/baselines/tornado_ndjson.py`
//! ([`AnswerFormat::Reference`], which ignores the signature). Each client's
//! event ids increase across its requests (request `j` carries the ids
//! after request `j − 1`'s), so the gateway stores every record once; as all
//! clients send the same sequence of bodies under different serials, the
//! bodies are generated once, before the clock starts, and shared.
//!
//! Figures: records acknowledged per second (from the first request sent to
//! the last answer received), request latency (send → whole answer read,
//! HDR histogram, µs), and the requests refused or failed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use controller_sim::device::LatencyReport;
use cwp::{DeviceKey, MasterKey, Serial};
use drover_http_ingest::signature::sign;
use drover_http_ingest::taxi::{self, Shape};
use drover_http_ingest::{BodySha256, RequestNonce};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

/// Which service answers, and so how an answer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnswerFormat {
    /// Drover's `http-gateway`: `{"status":"ok","stats":{..., "records":
    /// {"valid","duplicate","invalid","total"}},"last_event_id",...}`.
    Drover,
    /// The reference service: `{"result":{"status":"ok","stats":{"bytes",
    /// "records":{"valid","invalid","total"}}}}`.
    Reference,
}

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The server (HAProxy's HTTP frontend, or the service itself).
    pub target: SocketAddr,
    /// The request target of every `POST`.
    pub path: String,
    /// Concurrent clients, one connection and one serial each.
    pub clients: usize,
    /// Requests in all, spread evenly over the clients.
    pub requests: u64,
    /// How many records a body holds.
    pub body: BodySize,
    /// How the records carry their trips.
    pub shape: Shape,
    /// How to read the answers.
    pub answer: AnswerFormat,
    /// Every device key derives from it (CWP/1 §2).
    pub master_key: MasterKey,
    /// Client `i`'s serial is this prefix and `i + 1`, six digits.
    pub serial_prefix: String,
    /// The first event id of each client's first request.
    pub first_event_id: u64,
    /// Count `413`, `429` and `503` answers as refused instead of failed
    /// (the memory phase, where the gateway may shed load).
    pub refusals_allowed: bool,
    /// How long one request may take, answer included.
    pub request_timeout: Duration,
}

/// The size of every request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodySize {
    /// Exactly this many records.
    Records(u64),
    /// As many records as fit in this many bytes.
    Bytes(usize),
}

/// The outcome, as `bench-http` prints it (JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// The answer format the run checked.
    pub answer: Option<AnswerFormat>,
    /// Clients (connections).
    pub clients: usize,
    /// Requests sent.
    pub requests: u64,
    /// Records in each request's body.
    pub records_per_request: u64,
    /// Bytes of each request's body.
    pub body_bytes: u64,
    /// Requests answered as the check expects.
    pub requests_ok: u64,
    /// Requests answered `413`, `429` or `503` (only when refusals are
    /// allowed; otherwise they are failures).
    pub requests_refused: u64,
    /// Requests failed: a wrong answer, an error status, a broken
    /// connection or a timeout.
    pub requests_failed: u64,
    /// The first failures, described (at most [`KEPT_FAILURES`]).
    pub failures: Vec<String>,
    /// Records acknowledged (`valid` + `duplicate`).
    pub records_acked: u64,
    /// Of those, records the server reported as duplicates.
    pub records_duplicate: u64,
    /// Seconds from the first request sent to the last answer read.
    pub seconds: f64,
    /// Records acknowledged per second over `seconds`.
    pub records_per_s: f64,
    /// Body bytes acknowledged per second, MiB.
    pub mib_per_s: f64,
    /// Request latency, send → whole answer read, µs (answered requests).
    pub latency_us: LatencyReport,
}

/// Failures kept in the report with their description.
pub const KEPT_FAILURES: usize = 10;

/// One request's body, ready to send.
#[derive(Debug, Clone)]
pub struct PreparedBody {
    /// The NDJSON bytes.
    pub bytes: Bytes,
    /// Its SHA-256 (`X-Content-SHA256`), computed before the clock starts.
    pub sha256: BodySha256,
    /// Lines in it.
    pub records: u64,
    /// The id of its last line.
    pub last_event_id: u64,
}

impl PreparedBody {
    /// The body of `size` records from `first_event_id` on.
    pub fn new(shape: Shape, first_event_id: u64, size: BodySize) -> Self {
        let bytes = match size {
            BodySize::Records(records) => taxi::batch_from(shape, first_event_id, records),
            BodySize::Bytes(limit) => {
                // Every line is longer than 100 bytes: enough lines, then
                // cut after the last one that fits.
                let lines = (limit / 100 + 1) as u64;
                let all = taxi::batch_from(shape, first_event_id, lines);
                let cut = all[..limit.min(all.len())]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |at| at + 1);
                all.slice(..cut)
            }
        };
        let records = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
        Self {
            sha256: BodySha256::of(&bytes),
            records,
            last_event_id: first_event_id + records.saturating_sub(1),
            bytes,
        }
    }
}

/// What an accepted answer acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// Records newly stored.
    pub valid: u64,
    /// Records the server already had.
    pub duplicate: u64,
}

/// How an answer is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The batch was acknowledged whole.
    Acked(Acked),
    /// The server shed the request (`413`, `429`, `503`).
    Refused(u16),
    /// Anything else, described.
    Failed(String),
}

/// Judges one answer to `sent`: status 200, the format's `status` `ok`,
/// every record acknowledged (`valid` + `duplicate` = records sent, none
/// invalid), the byte count and (Drover) the last event id as sent.
pub fn check_answer(format: AnswerFormat, status: u16, body: &[u8], sent: &PreparedBody) -> Verdict {
    if matches!(status, 413 | 429 | 503) {
        return Verdict::Refused(status);
    }
    let text = String::from_utf8_lossy(body);
    let shown: String = text.chars().take(300).collect();
    if status != 200 {
        return Verdict::Failed(format!("status {status}: {shown}"));
    }
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(err) => return Verdict::Failed(format!("answer is not JSON ({err}): {shown}")),
    };
    let root = match format {
        AnswerFormat::Drover => &value,
        AnswerFormat::Reference => &value["result"],
    };
    let number = |pointer: &str| root.pointer(pointer).and_then(serde_json::Value::as_u64);
    let mut problems = Vec::new();
    if root["status"] != "ok" {
        problems.push(format!("status {}", root["status"]));
    }
    let valid = number("/stats/records/valid");
    let duplicate = match format {
        AnswerFormat::Drover => number("/stats/records/duplicate"),
        AnswerFormat::Reference => Some(0), // it has no such notion
    };
    let (Some(valid), Some(duplicate)) = (valid, duplicate) else {
        return Verdict::Failed(format!("no record counts: {shown}"));
    };
    if valid + duplicate != sent.records {
        problems.push(format!(
            "valid {valid} + duplicate {duplicate} != {} sent",
            sent.records
        ));
    }
    if number("/stats/records/invalid") != Some(0) {
        problems.push(format!(
            "invalid {}",
            root.pointer("/stats/records/invalid")
                .unwrap_or(&serde_json::Value::Null)
        ));
    }
    if number("/stats/records/total") != Some(sent.records) {
        problems.push(format!(
            "total {:?} != {}",
            number("/stats/records/total"),
            sent.records
        ));
    }
    if number("/stats/bytes") != Some(sent.bytes.len() as u64) {
        problems.push(format!("bytes {:?} != {}", number("/stats/bytes"), sent.bytes.len()));
    }
    if format == AnswerFormat::Drover && number("/last_event_id") != Some(sent.last_event_id) {
        problems.push(format!(
            "last_event_id {:?} != {}",
            number("/last_event_id"),
            sent.last_event_id
        ));
    }
    if problems.is_empty() {
        Verdict::Acked(Acked { valid, duplicate })
    } else {
        Verdict::Failed(format!("{}: {shown}", problems.join(", ")))
    }
}

/// Client `index`'s serial.
pub fn serial(prefix: &str, index: usize) -> anyhow::Result<Serial> {
    let text = format!("{prefix}{:06}", index + 1);
    text.parse().map_err(|err| anyhow::anyhow!("serial {text:?}: {err:?}"))
}

/// Requests client `index` of `clients` sends, of `total`.
pub fn requests_of(index: usize, clients: usize, total: u64) -> u64 {
    let clients = clients.max(1) as u64;
    total / clients + u64::from((index as u64) < total % clients)
}

/// What one client saw.
#[derive(Debug, Default)]
struct ClientTally {
    ok: u64,
    refused: u64,
    failed: u64,
    failures: Vec<String>,
    acked: u64,
    duplicate: u64,
    acked_bytes: u64,
    latency: Vec<u64>,
}

/// Runs the load; fails only if it cannot start (a failed request is
/// counted in the report, for the caller to judge).
pub async fn run(spec: &LoadSpec) -> anyhow::Result<LoadReport> {
    if spec.clients == 0 || spec.requests == 0 {
        bail!("nothing to send: {} clients, {} requests", spec.clients, spec.requests);
    }
    let per_client = requests_of(0, spec.clients, spec.requests);
    // Request j of every client: the ids after request j − 1's.
    let mut bodies = Vec::with_capacity(per_client as usize);
    let mut next_id = spec.first_event_id.max(1);
    for _ in 0..per_client {
        let body = PreparedBody::new(spec.shape, next_id, spec.body);
        if body.records == 0 {
            bail!("a body of {:?} holds no record", spec.body);
        }
        next_id = body.last_event_id + 1;
        bodies.push(body);
    }
    let bodies = std::sync::Arc::new(bodies);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(spec.clients);
    for index in 0..spec.clients {
        let serial = serial(&spec.serial_prefix, index)?;
        let key = DeviceKey::derive(&spec.master_key, &serial);
        let count = requests_of(index, spec.clients, spec.requests) as usize;
        let (spec, bodies) = (spec.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            client(&spec, &serial, &key, &bodies[..count]).await
        }));
    }
    let mut tally = ClientTally::default();
    for task in tasks {
        let one = task.await.context("a client task panicked")?;
        tally.ok += one.ok;
        tally.refused += one.refused;
        tally.failed += one.failed;
        tally.acked += one.acked;
        tally.duplicate += one.duplicate;
        tally.acked_bytes += one.acked_bytes;
        tally.latency.extend(one.latency);
        for failure in one.failures {
            if tally.failures.len() < KEPT_FAILURES {
                tally.failures.push(failure);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).context("histogram bounds")?;
    for us in &tally.latency {
        histogram.saturating_record((*us).max(1));
    }
    let first = &bodies[0];
    Ok(LoadReport {
        answer: Some(spec.answer),
        clients: spec.clients,
        requests: spec.requests,
        records_per_request: first.records,
        body_bytes: first.bytes.len() as u64,
        requests_ok: tally.ok,
        requests_refused: tally.refused,
        requests_failed: tally.failed,
        failures: tally.failures,
        records_acked: tally.acked,
        records_duplicate: tally.duplicate,
        seconds,
        records_per_s: tally.acked as f64 / seconds.max(1e-9),
        mib_per_s: tally.acked_bytes as f64 / seconds.max(1e-9) / (1024.0 * 1024.0),
        latency_us: LatencyReport::of(&histogram),
    })
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(target: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(target)
        .await
        .with_context(|| format!("connecting to {target}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    // The connection's state machine runs beside the client; it ends when
    // the sender is dropped or the server closes.
    tokio::spawn(connection);
    Ok(sender)
}

/// One device: its requests in order on one keep-alive connection
/// (reconnecting after a broken one; a failed request is not resent).
async fn client(spec: &LoadSpec, serial: &Serial, key: &DeviceKey, bodies: &[PreparedBody]) -> ClientTally {
    let mut tally = ClientTally::default();
    let mut sender: Option<Sender> = None;
    let fail = |tally: &mut ClientTally, what: String| {
        tally.failed += 1;
        if tally.failures.len() < KEPT_FAILURES {
            tally.failures.push(format!("{serial}: {what}"));
        }
    };
    for body in bodies {
        let mut conn = match sender.take() {
            Some(conn) if !conn.is_closed() => conn,
            _ => match connect(spec.target).await {
                Ok(conn) => conn,
                Err(err) => {
                    fail(&mut tally, format!("{err:#}"));
                    continue;
                }
            },
        };
        let request = match build_request(spec, serial, key, body) {
            Ok(request) => request,
            Err(err) => {
                fail(&mut tally, format!("{err:#}"));
                continue;
            }
        };
        let sent_at = Instant::now();
        let exchange = async {
            conn.ready().await.context("connection not ready")?;
            let response = conn.send_request(request).await.context("sending the request")?;
            let status = response.status();
            let answer = response
                .into_body()
                .collect()
                .await
                .context("reading the answer")?
                .to_bytes();
            anyhow::Ok((status, answer))
        };
        let outcome = tokio::time::timeout(spec.request_timeout, exchange).await;
        let latency_us = u64::try_from(sent_at.elapsed().as_micros()).unwrap_or(u64::MAX);
        match outcome {
            Err(_) => fail(&mut tally, format!("no answer within {:?}", spec.request_timeout)),
            Ok(Err(err)) => fail(&mut tally, format!("{err:#}")),
            Ok(Ok((status, answer))) => {
                tally.latency.push(latency_us);
                match check_answer(spec.answer, status.as_u16(), &answer, body) {
                    Verdict::Acked(acked) => {
                        tally.ok += 1;
                        tally.acked += acked.valid + acked.duplicate;
                        tally.duplicate += acked.duplicate;
                        tally.acked_bytes += body.bytes.len() as u64;
                    }
                    Verdict::Refused(_) if spec.refusals_allowed => tally.refused += 1,
                    Verdict::Refused(code) => fail(&mut tally, format!("refused with {code}")),
                    Verdict::Failed(what) => fail(&mut tally, what),
                }
                // Keep-alive; a server that closed after its answer gets a
                // new connection for the next request.
                if !conn.is_closed() {
                    sender = Some(conn);
                }
            }
        }
    }
    tally
}

fn build_request(
    spec: &LoadSpec,
    serial: &Serial,
    key: &DeviceKey,
    body: &PreparedBody,
) -> anyhow::Result<hyper::Request<Full<Bytes>>> {
    // Signed when sent: the timestamp must be within ±300 s of the
    // server's clock when it arrives.
    let ts_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_millis(),
    )?;
    let nonce = RequestNonce::from_bytes(rand::random::<[u8; 16]>());
    let headers = sign(key, serial, "POST", &spec.path, ts_ms, &nonce, &body.sha256)
        .map_err(|err| anyhow::anyhow!("signing {}: {err:?}", spec.path))?;
    hyper::Request::builder()
        .method("POST")
        .uri(&spec.path)
        .header(hyper::header::HOST, spec.target.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/x-ndjson")
        .header(hyper::header::AUTHORIZATION, headers.authorization)
        .header("x-content-sha256", headers.content_sha256)
        .body(Full::new(body.bytes.clone()))
        .context("building the request")
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_http_ingest::ndjson::{BatchLimits, parse};

    fn body(records: u64) -> PreparedBody {
        PreparedBody::new(Shape::Json, 1601, BodySize::Records(records))
    }

    #[test]
    fn bodies_are_valid_batches_shaped_like_the_reference() {
        let sent = body(1600);
        let batch = parse(sent.bytes.clone(), &BatchLimits::default());
        assert_eq!(batch.stats.valid, 1600, "{:?}", batch.errors);
        assert_eq!(sent.records, 1600);
        assert_eq!(batch.records.first().map(|r| r.event_id), Some(1601));
        assert_eq!(batch.records.last().map(|r| r.event_id), Some(sent.last_event_id));
        assert_eq!(sent.last_event_id, 3200);
        assert_eq!(sent.sha256, BodySha256::of(&sent.bytes));
        // Issue 19: ~150 bytes a line, four fields of a trip in `body`.
        let per_line = sent.bytes.len() as f64 / 1600.0;
        assert!((130.0..190.0).contains(&per_line), "{per_line} bytes a line");
        let first: serde_json::Value =
            serde_json::from_slice(sent.bytes.split(|&b| b == b'\n').next().unwrap()).unwrap();
        let trip: serde_json::Value = serde_json::from_str(first["body"].as_str().unwrap()).unwrap();
        assert_eq!(trip.as_object().map(|o| o.len()), Some(4), "{trip}");
    }

    #[test]
    fn a_body_sized_in_bytes_is_whole_lines_within_the_limit() {
        let limit = 16 * 1024 * 1024 - 4096;
        let sent = PreparedBody::new(Shape::Json, 1, BodySize::Bytes(limit));
        assert!(
            sent.bytes.len() <= limit && sent.bytes.len() > limit - 400,
            "{}",
            sent.bytes.len()
        );
        assert!(sent.bytes.ends_with(b"\n"));
        let batch = parse(sent.bytes.clone(), &BatchLimits::default());
        assert_eq!(batch.stats.valid, sent.records);
        assert!(batch.errors.is_empty());
    }

    #[test]
    fn requests_are_spread_evenly_over_the_clients() {
        let spread: Vec<u64> = (0..16).map(|i| requests_of(i, 16, 1024)).collect();
        assert!(spread.iter().all(|&n| n == 64));
        let spread: Vec<u64> = (0..3).map(|i| requests_of(i, 3, 10)).collect();
        assert_eq!(spread, [4, 3, 3]);
        assert_eq!(serial("HTTPB-", 0).unwrap().to_string(), "HTTPB-000001");
    }

    fn drover_answer(valid: u64, duplicate: u64, invalid: u64, bytes: usize, last: u64) -> Vec<u8> {
        serde_json::json!({
            "status": "ok",
            "stats": {"bytes": bytes, "records": {"valid": valid, "duplicate": duplicate, "invalid": invalid,
                      "total": valid + duplicate + invalid}},
            "last_event_id": last,
            "errors": [],
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_drover_answer_must_acknowledge_every_record_sent() {
        let sent = body(10);
        let n = sent.bytes.len();
        let ok = drover_answer(10, 0, 0, n, 1610);
        assert_eq!(
            check_answer(AnswerFormat::Drover, 200, &ok, &sent),
            Verdict::Acked(Acked {
                valid: 10,
                duplicate: 0
            })
        );
        // A resent batch: acknowledged, as duplicates.
        let resent = drover_answer(4, 6, 0, n, 1610);
        assert_eq!(
            check_answer(AnswerFormat::Drover, 200, &resent, &sent),
            Verdict::Acked(Acked { valid: 4, duplicate: 6 })
        );
        // The controls: each of these is a failure.
        for (what, answer) in [
            ("a record missing", drover_answer(9, 0, 0, n, 1610)),
            ("a record invalid", drover_answer(9, 0, 1, n, 1610)),
            ("the wrong byte count", drover_answer(10, 0, 0, n - 1, 1610)),
            ("the wrong last id", drover_answer(10, 0, 0, n, 1609)),
            ("not ok", br#"{"status":"error","code":"x","message":"y"}"#.to_vec()),
            ("not JSON", b"OK".to_vec()),
        ] {
            assert!(
                matches!(
                    check_answer(AnswerFormat::Drover, 200, &answer, &sent),
                    Verdict::Failed(_)
                ),
                "{what}"
            );
        }
        assert!(matches!(
            check_answer(AnswerFormat::Drover, 401, br#"{"status":"error"}"#, &sent),
            Verdict::Failed(text) if text.starts_with("status 401")
        ));
        assert_eq!(
            check_answer(AnswerFormat::Drover, 503, b"{}", &sent),
            Verdict::Refused(503)
        );
        // The reference's format is not the gateway's.
        let reference = reference_answer(10, 0, n);
        assert!(matches!(
            check_answer(AnswerFormat::Drover, 200, &reference, &sent),
            Verdict::Failed(_)
        ));
    }

    fn reference_answer(valid: u64, invalid: u64, bytes: usize) -> Vec<u8> {
        serde_json::json!({"result": {"status": "ok", "stats": {"bytes": bytes,
            "records": {"valid": valid, "invalid": invalid, "total": valid + invalid}}}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_reference_answer_is_read_in_its_own_format() {
        let sent = body(10);
        let n = sent.bytes.len();
        assert_eq!(
            check_answer(AnswerFormat::Reference, 200, &reference_answer(10, 0, n), &sent),
            Verdict::Acked(Acked {
                valid: 10,
                duplicate: 0
            })
        );
        assert!(matches!(
            check_answer(AnswerFormat::Reference, 200, &reference_answer(9, 1, n), &sent),
            Verdict::Failed(_)
        ));
        assert!(matches!(
            check_answer(AnswerFormat::Reference, 200, &drover_answer(10, 0, 0, n, 1610), &sent),
            Verdict::Failed(_)
        ));
    }
}
