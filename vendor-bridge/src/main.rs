//! `vendor-bridge`: see the library's documentation and `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use drover_service::drain;
use drover_service::env::{self, CliAction, EnvReader};
use drover_service::telemetry::{self, TelemetryConfig};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tracing::{error, info};
use vendor_bridge::config::{self, LogFormat};
use vendor_bridge::{Config, Stats};

fn main() -> ExitCode {
    env::load_dotenv();
    let action = env::handle_cli("vendor-bridge", config::SUMMARY, config::VARIABLES);
    if let CliAction::Exit(code) = action {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if action == CliAction::Health {
        return health();
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("vendor-bridge: {err}");
            return ExitCode::from(2);
        }
    };
    let telemetry_config = TelemetryConfig {
        service: "vendor-bridge",
        version: env!("CARGO_PKG_VERSION"),
        json_logs: config.log_format == LogFormat::Json,
        sentry_dsn: config.sentry_dsn.clone(),
        sentry_environment: config.sentry_environment.clone(),
        tags: vec![("port", config.listen.port().to_string())],
    };
    if action == CliAction::SentryTest {
        return match telemetry::self_test(telemetry_config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("vendor-bridge --sentry-test: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    // Before any thread exists (Sentry's transport starts one).
    let title = match process_title::ProcessTitle::init() {
        Ok(title) => Some(title),
        Err(err) => {
            eprintln!("vendor-bridge: process title unavailable: {err}");
            None
        }
    };
    // Telemetry comes before the runtime so every worker thread inherits it.
    let telemetry = match telemetry::init(telemetry_config) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("vendor-bridge: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = run(config, title);
    if let Err(err) = &result {
        error!("vendor-bridge failed: {err:#}");
    }
    // Flushes Sentry before the process exits.
    drop(telemetry);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn run(config: Config, title: Option<process_title::ProcessTitle>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vendor-bridge")
        .on_thread_start(telemetry::share_process_hub)
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on BRIDGE_LISTEN={}", config.listen))?;
        let admin_listener = tokio::net::TcpListener::bind(config.metrics_listen)
            .await
            .with_context(|| format!("listening on BRIDGE_METRICS_LISTEN={}", config.metrics_listen))?;
        let stats = Arc::new(Stats::new());
        let admin = spawn_admin(admin_listener, &config, Arc::clone(&stats));
        let shutdown = async {
            let signal = drover_service::shutdown::terminate().await;
            info!(signal, "received");
        };
        let result = vendor_bridge::serve(config, listener, stats, title, shutdown).await;
        // Metrics stay readable through the drain; they stop last.
        admin.stop().await;
        result
    })
}

/// How long `--health` waits for its answer: less than a container health
/// check's timeout (docker-compose.yml: 3 s).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// `vendor-bridge --health`, the container's health check: asks the bridge
/// listening on `BRIDGE_LISTEN` for its `grpc.health.v1.Health/Check`
/// (the whole server, `""`), which is SERVING only while Redis answers; 0
/// only on SERVING, else 1 (2: the variables are invalid, or TLS is on).
/// It reads only the variables it needs: it runs every few seconds beside
/// the bridge and must not fail for anything else.
fn health() -> ExitCode {
    let mut variables = EnvReader::new(config::VARIABLES);
    let listen = variables.parse::<SocketAddr>("BRIDGE_LISTEN");
    let tls = variables.parse_optional::<PathBuf>("BRIDGE_TLS_CERT");
    let (Ok(()), Some(listen)) = (variables.finish(), listen) else {
        eprintln!("vendor-bridge --health: BRIDGE_LISTEN or BRIDGE_TLS_CERT is invalid (see --help)");
        return ExitCode::from(2);
    };
    if tls.is_some() {
        // A TLS client here would need a certificate the server trusts.
        eprintln!(
            "vendor-bridge --health: BRIDGE_TLS_CERT is set; --health asks over plaintext gRPC only \
             (check the health with a gRPC client that has a client certificate)"
        );
        return ExitCode::from(2);
    }
    let address = env::probe_address(listen);
    match serving_status(address) {
        Ok(ServingStatus::Serving) => {
            println!("grpc.health.v1 at {address}: SERVING");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!(
                "vendor-bridge --health: grpc.health.v1 at {address}: {}",
                status.as_str_name()
            );
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("vendor-bridge --health: grpc.health.v1 at {address}: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The bridge's overall health status, as its health service reports it.
fn serving_status(address: SocketAddr) -> anyhow::Result<ServingStatus> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let check = async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
                .connect_timeout(HEALTH_TIMEOUT)
                .connect()
                .await
                .context("connecting")?;
            let response = HealthClient::new(channel)
                .check(HealthCheckRequest { service: String::new() })
                .await
                .context("Health/Check")?;
            anyhow::Ok(response.into_inner().status())
        };
        tokio::time::timeout(HEALTH_TIMEOUT, check)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {HEALTH_TIMEOUT:?}")))
    })
}

/// The admin endpoint's task and what stops it.
struct AdminTask {
    stop: drain::Signal,
    task: tokio::task::JoinHandle<()>,
}

impl AdminTask {
    async fn stop(self) {
        self.stop.signal();
        let _ = self.task.await;
    }
}

fn spawn_admin(listener: tokio::net::TcpListener, config: &Config, stats: Arc<Stats>) -> AdminTask {
    let local = listener.local_addr().ok();
    if !config.metrics_listen.ip().is_loopback() {
        info!(
            listen = %config.metrics_listen,
            "BRIDGE_METRICS_LISTEN is not loopback: /metrics and /healthz (read-only, no authentication) are open to whoever reaches it"
        );
    }
    let registry = vendor_bridge::metrics::registry(Arc::clone(&stats), config.max_queued_bytes);
    let (stop, stopped) = drain::channel();
    let task = tokio::spawn(async move {
        info!(local = ?local, "serving /metrics and /healthz");
        let stopped = async move { stopped.signaled().await };
        if let Err(err) = vendor_bridge::admin::serve(listener, stats, registry, stopped).await {
            error!(error = %err, "the admin server failed: /metrics and /healthz are down");
        }
    });
    AdminTask { stop, task }
}
