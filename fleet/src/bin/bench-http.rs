//! `bench-http`: the load generator of the HTTP events benchmark (`fleet
//! bench --only http-events`, issue 19). N concurrent clients, each a
//! device with its own serial on one HTTP/1.1 keep-alive connection, post R
//! signed NDJSON batches of K taxi-trip records in all, and every answer is
//! checked; see `fleet::bench::http_load`.
//!
//! Prints one JSON object: requests answered as expected, refused and
//! failed (with the first failures described), records acknowledged per
//! second, and the request latency's HDR percentiles (µs). Exits 1 if a
//! request failed.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use cwp::MasterKey;
use fleet::bench::http_load::{AnswerFormat, BodySize, LoadSpec, run};

/// Posts signed NDJSON event batches from concurrent clients and checks
/// every answer.
#[derive(Debug, Parser)]
#[command(name = "bench-http", version)]
struct Args {
    /// The server: HAProxy's HTTP frontend, the gateway, or the reference
    /// service (address:port).
    #[arg(long)]
    target: SocketAddr,
    /// The request target of every POST.
    #[arg(long, default_value = "/v1/events")]
    path: String,
    /// Concurrent clients (one connection and one serial each).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Requests in all, spread evenly over the clients.
    #[arg(long, default_value_t = 1024)]
    requests: u64,
    /// Records per request.
    #[arg(long, default_value_t = 1600, conflicts_with = "body_bytes")]
    records: u64,
    /// Instead of --records: as many records as fit in this many bytes.
    #[arg(long)]
    body_bytes: Option<usize>,
    /// How to read the answers: `drover` (the gateway) or `reference`
    /// (bench/baselines/tornado_ndjson.py).
    #[arg(long, value_enum, default_value = "drover")]
    answer: AnswerFormat,
    /// The fleet's master key, 64 hex digits; every device key derives
    /// from it.
    #[arg(long, env = "CWP_MASTER_KEY", hide_env_values = true)]
    master_key: String,
    /// Client i's serial is this prefix and i, six digits (from 1).
    #[arg(long, default_value = "HTTPB-")]
    serial_prefix: String,
    /// The first event id of each client's first request (ids increase
    /// across a client's requests).
    #[arg(long, default_value_t = 1)]
    first_event_id: u64,
    /// Count 413, 429 and 503 answers as refused, not failed.
    #[arg(long)]
    allow_refusals: bool,
    /// How long one request may take, answer included.
    #[arg(long, default_value = "120s", value_parser = drover_service::duration::parse_duration)]
    request_timeout: Duration,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let master_key = MasterKey::from_hex(&args.master_key).context("--master-key / CWP_MASTER_KEY")?;
    let spec = LoadSpec {
        target: args.target,
        path: args.path,
        clients: args.clients,
        requests: args.requests,
        body: args.body_bytes.map_or(BodySize::Records(args.records), BodySize::Bytes),
        shape: drover_http_ingest::taxi::Shape::Json,
        answer: args.answer,
        master_key,
        serial_prefix: args.serial_prefix,
        first_event_id: args.first_event_id,
        refusals_allowed: args.allow_refusals,
        request_timeout: args.request_timeout,
    };
    let report = run(&spec).await?;
    println!("{}", serde_json::to_string(&report)?);
    if report.requests_failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
