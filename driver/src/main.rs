//! The `driver` binary: configuration, logging and Sentry, then
//! [`driver::run`] until SIGTERM or SIGINT.

use anyhow::Context as _;
use driver::Config;
use drover_service::env::{self, CliAction};
use drover_service::shutdown;
use drover_service::telemetry::{self, TelemetryConfig};

/// jemalloc, not glibc's malloc: an idle device's few long-lived
/// allocations sit among the short ones of every heartbeat, and glibc's
/// per-thread arenas kept about twice the live heap resident (measured:
/// 1.25 KiB per parked device with glibc, 0.67 KiB with jemalloc). Its
/// background thread, started once the process title is claimed (which
/// needs a single-threaded process), purges what a connect burst freed even
/// when the driver then sits idle.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const SUMMARY: &str = "Drover driver: serves CWP/1 controllers, streams their events to the vendor-bridge \
and delivers operators' commands from Redis.";

fn main() -> anyhow::Result<()> {
    env::load_dotenv();
    let action = env::handle_cli("driver", SUMMARY, driver::config::VARIABLES);
    if let CliAction::Exit(code) = action {
        std::process::exit(code);
    }
    if action == CliAction::Health {
        std::process::exit(drover_service::admin::health_check(
            "driver",
            driver::config::VARIABLES,
            "DRIVER_ADMIN_LISTEN",
        ));
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("driver: {err}");
            std::process::exit(2);
        }
    };
    let telemetry_config = TelemetryConfig {
        service: "driver",
        version: env!("CARGO_PKG_VERSION"),
        json_logs: config.json_logs,
        sentry_dsn: config.sentry_dsn.clone(),
        sentry_environment: config.sentry_environment.clone(),
        tags: vec![
            ("driver", config.driver_id.clone()),
            ("port", config.listen.port().to_string()),
        ],
    };
    if action == CliAction::SentryTest {
        if let Err(err) = telemetry::self_test(telemetry_config) {
            eprintln!("driver --sentry-test: {err:#}");
            std::process::exit(1);
        }
        return Ok(());
    }
    raise_open_file_limit();
    // Before any thread exists (Sentry's transport starts one).
    let title = match process_title::ProcessTitle::init() {
        Ok(title) => Some(title),
        Err(err) => {
            eprintln!("driver: process title unavailable: {err}");
            None
        }
    };
    // Only now: jemalloc's purging thread would make the title's claim fail.
    if let Err(err) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("driver: jemalloc's background purging unavailable ({err}): an idle driver keeps freed pages longer");
    }
    let _telemetry = telemetry::init(telemetry_config)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(telemetry::share_process_hub)
        .build()
        .context("starting the async runtime")?
        .block_on(async {
            let listeners = driver::Listeners::bind(&config).await?;
            driver::run(config, listeners, title, async {
                let signal = shutdown::terminate().await;
                tracing::info!(signal, "shutting down");
            })
            .await
        })
}

/// Every device costs a file descriptor: use the hard limit, not the soft one.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
