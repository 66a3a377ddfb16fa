//! The `http-gateway` binary: configuration, logging and Sentry, then
//! [`http_gateway::run`] until SIGTERM or SIGINT.

use anyhow::Context as _;
use drover_service::env::{self, CliAction};
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
        std::process::exit(drover_service::admin::health_check(
            "http-gateway",
            http_gateway::config::VARIABLES,
            "HTTP_ADMIN_LISTEN",
        ));
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
