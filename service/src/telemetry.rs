//! Logs and error reporting.
//!
//! Logs go to stderr through `tracing`, filtered by `RUST_LOG` (default
//! `info`), as text or as one JSON object per line. With a Sentry DSN, every
//! `error!` event and every panic becomes a Sentry event carrying the
//! process's tags (service, driver id, port), and `info!`/`warn!` events
//! become its breadcrumbs. An `error!` inside a device's connection adds
//! `tags.serial = ...` to name the device.

use anyhow::Context as _;
use sentry::integrations::tracing::{BreadcrumbLayer, ErrorLayer};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, fmt};

/// How the process reports.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// `driver` or `vendor-bridge`; the Sentry release is `{service}@{version}`.
    pub service: &'static str,
    /// The service's version.
    pub version: &'static str,
    /// One JSON object per log line instead of text.
    pub json_logs: bool,
    /// Where Sentry events go; `None` disables Sentry.
    pub sentry_dsn: Option<String>,
    /// Sentry's `environment` (e.g. `production`).
    pub sentry_environment: Option<String>,
    /// Tags on every Sentry event of this process.
    pub tags: Vec<(&'static str, String)>,
}

/// Keeps Sentry alive; dropping it flushes pending events (up to 2 s).
#[must_use = "dropping the guard shuts Sentry down"]
pub struct Telemetry {
    sentry: Option<sentry::ClientInitGuard>,
}

impl Telemetry {
    /// Whether errors are being sent to Sentry.
    pub fn sentry_enabled(&self) -> bool {
        self.sentry.as_ref().is_some_and(|guard| guard.is_enabled())
    }
}

/// Installs logging and, if configured, Sentry. Call once, early in `main`
/// and before the async runtime starts threads, so that every thread
/// inherits the tags.
pub fn init(config: TelemetryConfig) -> anyhow::Result<Telemetry> {
    let sentry = match &config.sentry_dsn {
        Some(dsn) => {
            let dsn = dsn.parse().context("SENTRY_DSN is not a valid DSN")?;
            let mut options = sentry::ClientOptions::new();
            options.dsn = Some(dsn);
            options.release = Some(format!("{}@{}", config.service, config.version).into());
            options.environment = config.sentry_environment.clone().map(Into::into);
            options.attach_stacktrace = true;
            let guard = sentry::init(options);
            sentry::configure_scope(|scope| {
                scope.set_tag("service", config.service);
                for (key, value) in &config.tags {
                    scope.set_tag(key, value);
                }
            });
            Some(guard)
        }
        None => None,
    };

    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    let (text, json) = if config.json_logs {
        (
            None,
            Some(fmt::layer().json().with_writer(std::io::stderr).with_filter(filter)),
        )
    } else {
        (
            Some(fmt::layer().with_writer(std::io::stderr).with_filter(filter)),
            None,
        )
    };
    let sentry_layers = sentry.is_some().then(|| {
        ErrorLayer::new()
            .with_filter(LevelFilter::ERROR)
            .and_then(BreadcrumbLayer::new().with_filter(LevelFilter::INFO))
    });
    tracing_subscriber::registry()
        .with(text)
        .with(json)
        .with(sentry_layers)
        .try_init()
        .context("a tracing subscriber is already installed")?;
    Ok(Telemetry { sentry })
}
