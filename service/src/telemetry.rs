//! Logs and error reporting.
//!
//! Logs go to stderr through `tracing`, filtered by `RUST_LOG` (default
//! `info`), as text or as one JSON object per line. With a Sentry DSN, every
//! `error!` event and every panic becomes a Sentry event carrying the
//! process's tags (service, driver id, port), and `info!`/`warn!` events
//! become its breadcrumbs. An `error!` inside a device's connection adds
//! `tags.serial = ...` to name the device.
//!
//! Every thread of the async runtime reports through the process's one
//! Sentry hub ([`share_process_hub`]), so an error carries the breadcrumbs
//! of the whole process, not only of the thread it happened on.
//! [`self_test`] is the operator's `--sentry-test`.

use std::cell::RefCell;
use std::time::Duration;

use anyhow::{Context as _, bail};
use sentry::integrations::tracing::{BreadcrumbLayer, ErrorLayer};
use tracing::Level;
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, fmt};

/// The variable that filters the logs (`RUST_LOG=info,driver=debug`); it
/// does not filter what reaches Sentry.
pub const LOG_FILTER_VARIABLE: &str = "RUST_LOG";

/// How long `--sentry-test` waits for its events to leave the process.
const SELF_TEST_FLUSH: Duration = Duration::from_secs(10);

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
    init_with(config, false)
}

/// [`init`], with Sentry's own diagnostics (`[sentry] ...` on stderr) when
/// `sentry_debug`.
fn init_with(config: TelemetryConfig, sentry_debug: bool) -> anyhow::Result<Telemetry> {
    let sentry = match &config.sentry_dsn {
        Some(dsn) => {
            let dsn = dsn.parse().context("SENTRY_DSN is not a valid DSN")?;
            let mut options = sentry::ClientOptions::new();
            options.dsn = Some(dsn);
            options.release = Some(format!("{}@{}", config.service, config.version).into());
            options.environment = config.sentry_environment.clone().map(Into::into);
            options.attach_stacktrace = true;
            options.debug = sentry_debug;
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
        .with_env_var(LOG_FILTER_VARIABLE)
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
    // Errors become events; info and warnings their breadcrumbs. Errors are
    // kept out of the breadcrumbs: each is an event of its own already.
    let sentry_layers = sentry.is_some().then(|| {
        BreadcrumbLayer::new()
            .with_filter(filter_fn(|metadata| {
                matches!(*metadata.level(), Level::INFO | Level::WARN)
            }))
            .and_then(ErrorLayer::new().with_filter(LevelFilter::ERROR))
    });
    tracing_subscriber::registry()
        .with(text)
        .with(json)
        .with(sentry_layers)
        .try_init()
        .context("a tracing subscriber is already installed")?;
    Ok(Telemetry { sentry })
}

thread_local! {
    /// This thread's switch to the process's hub, undone when the thread
    /// ends.
    static PROCESS_HUB_SWITCH: RefCell<Option<sentry::HubSwitchGuard>> = const { RefCell::new(None) };
}

/// Makes the calling thread report to Sentry through the process's main
/// hub. Without it, a thread works on a copy of the main hub taken the
/// first time it logs, and an error on one runtime thread would miss the
/// breadcrumbs left on the others (the main thread's "driver ready", an
/// earlier warning handled by another worker). Meant for tokio's
/// `Builder::on_thread_start`; harmless without Sentry.
pub fn share_process_hub() {
    PROCESS_HUB_SWITCH.with(|switch| {
        switch
            .borrow_mut()
            .get_or_insert_with(|| sentry::HubSwitchGuard::new(sentry::Hub::main()));
    });
}

/// `--sentry-test`: installs telemetry like [`init`], then sends what a real
/// failure would send: an `info!` line (a breadcrumb), one `error!` event
/// and one panic (on a thread of its own, caught), all with the process's
/// tags; waits until they have left the process, prints their event ids on
/// stdout and returns. Sentry's own diagnostics, including the server's
/// answers, go to stderr. Fails without a DSN, or when the events cannot be
/// sent in time.
pub fn self_test(config: TelemetryConfig) -> anyhow::Result<()> {
    let Some(dsn) = &config.sentry_dsn else {
        bail!("SENTRY_DSN is not set: there is nowhere to send test events (set it in the environment or .env)");
    };
    let dsn: sentry::types::Dsn = dsn.parse().context("SENTRY_DSN is not a valid DSN")?;
    let service = config.service;
    let release = format!("{service}@{}", config.version);
    let tags = std::iter::once(format!("service={service}"))
        .chain(config.tags.iter().map(|(key, value)| format!("{key}={value}")))
        .collect::<Vec<_>>()
        .join(" ");

    let telemetry = init_with(config, true)?;
    tracing::info!(%release, "Sentry self-test started: this line is the test events' breadcrumb");
    tracing::error!(
        tags.self_test = true,
        "Sentry self-test: a test error event; nothing is wrong"
    );
    let error_event = sentry::last_event_id().context("the test error was not captured")?;
    let panic_event = std::thread::Builder::new()
        .name("sentry-self-test".to_owned())
        .spawn(|| {
            // The panic hook reports the panic before it unwinds to here.
            let caught = std::panic::catch_unwind(|| {
                panic!("Sentry self-test: a test panic; nothing is wrong");
            });
            debug_assert!(caught.is_err());
            sentry::last_event_id()
        })
        .context("starting the self-test thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the self-test thread failed"))?
        .context("the test panic was not captured")?;

    let flushed = sentry::Hub::main()
        .client()
        .is_some_and(|client| client.flush(Some(SELF_TEST_FLUSH)));
    drop(telemetry);
    if !flushed {
        bail!(
            "the test events did not leave the process within {SELF_TEST_FLUSH:?}; is {} reachable?",
            dsn.envelope_api_url()
        );
    }
    println!(
        "{service} --sentry-test: sent to {} (project {}), release {release}, tags {tags}\n  \
         error event {}\n  panic event {}\n\
         Each carries the breadcrumb \"Sentry self-test started\". The [sentry] lines on stderr show the server's answers.",
        dsn.envelope_api_url(),
        dsn.project_id(),
        error_event.simple(),
        panic_event.simple(),
    );
    Ok(())
}
