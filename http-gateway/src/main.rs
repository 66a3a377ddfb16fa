//! The `http-gateway` binary: configuration, logging and Sentry, then
//! [`http_gateway::run`] until SIGTERM or SIGINT.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context as _;
use drover_service::env::{self, CliAction, EnvReader};
use drover_service::shutdown;
use drover_service::telemetry::{self, TelemetryConfig};
use http_gateway::Config;

const SUMMARY: &str = "Drover HTTP gateway: devices and integrations post signed NDJSON event batches \
(docs/HTTP.md), stored through the vendor-bridge exactly once, answered once durable.";

fn main() -> anyhow::Result<()> {
    env::load_dotenv();
    let action = env::handle_cli("http-gateway", SUMMARY, http_gateway::config::VARIABLES);
    if let CliAction::Exit(code) = action {
        std::process::exit(code);
    }
    if action == CliAction::Health {
        std::process::exit(health());
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("http-gateway: {err}");
            std::process::exit(2);
        }
    };
    let telemetry_config = TelemetryConfig {
        service: "http-gateway",
        version: env!("CARGO_PKG_VERSION"),
        json_logs: config.json_logs,
        sentry_dsn: config.sentry_dsn.clone(),
        sentry_environment: config.sentry_environment.clone(),
        tags: vec![
            ("gateway", config.gateway_id.clone()),
            ("port", config.listen.port().to_string()),
        ],
    };
    if action == CliAction::SentryTest {
        if let Err(err) = telemetry::self_test(telemetry_config) {
            eprintln!("http-gateway --sentry-test: {err:#}");
            std::process::exit(1);
        }
        return Ok(());
    }
    // Before any thread exists (Sentry's transport starts one).
    let title = match process_title::ProcessTitle::init() {
        Ok(title) => Some(title),
        Err(err) => {
            eprintln!("http-gateway: process title unavailable: {err}");
            None
        }
    };
    let _telemetry = telemetry::init(telemetry_config)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(telemetry::share_process_hub)
        .build()
        .context("starting the async runtime")?
        .block_on(async {
            let listeners = http_gateway::Listeners::bind(&config).await?;
            http_gateway::run(config, listeners, title, async {
                let signal = shutdown::terminate().await;
                tracing::info!(signal, "shutting down");
            })
            .await
        })
}

/// How long `--health` waits for the connection and for the answer: less
/// than a container health check's timeout (docker-compose.yml: 3 s).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// `http-gateway --health`, the container's health check: `GET /healthz`
/// on `HTTP_ADMIN_LISTEN`; 0 only on `200` (a draining gateway answers
/// 503), else 1 (2: the variable is invalid). It reads that one variable,
/// not the whole configuration.
fn health() -> i32 {
    let mut variables = EnvReader::new(http_gateway::config::VARIABLES);
    let listen = variables.parse::<SocketAddr>("HTTP_ADMIN_LISTEN");
    let (Ok(()), Some(listen)) = (variables.finish(), listen) else {
        eprintln!("http-gateway --health: HTTP_ADMIN_LISTEN is not an address (see --help)");
        return 2;
    };
    let address = env::probe_address(listen);
    match healthz(address) {
        Ok(status_line) if status_line.split_whitespace().nth(1) == Some("200") => {
            println!("http://{address}/healthz: {status_line}");
            0
        }
        Ok(status_line) => {
            eprintln!("http-gateway --health: http://{address}/healthz: {status_line}");
            1
        }
        Err(err) => {
            eprintln!("http-gateway --health: http://{address}/healthz: {err:#}");
            1
        }
    }
}

/// The status line of `GET /healthz` at `address`.
fn healthz(address: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, HEALTH_TIMEOUT).context("connecting")?;
    stream.set_read_timeout(Some(HEALTH_TIMEOUT))?;
    stream.set_write_timeout(Some(HEALTH_TIMEOUT))?;
    let request = format!("GET /healthz HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).context("sending the request")?;
    let mut status_line = String::new();
    BufReader::new(stream.take(512))
        .read_line(&mut status_line)
        .context("reading the answer")?;
    match status_line.trim_end() {
        "" => anyhow::bail!("no answer"),
        line => Ok(line.to_owned()),
    }
}
