//! The Drover driver: a CWP/1 server for controllers.
//!
//! Layout, following one device's data through it:
//!
//! - [`listener`] accepts connections (bounded) on the [`handshake_thread`],
//!   apart from established sessions; [`handshakes`] caps those
//!   not yet authenticated and gives each its deadline, [`proxy`] reads
//!   HAProxy's PROXY v2 header when enabled, and [`connection`] runs each
//!   one: handshake (failed ones limited by [`auth_limits`], keys from
//!   [`keys`], the session registered with the bridge through [`bridge`],
//!   whose [`batcher`] sends registrations made together in one call),
//!   then the session loop, whose per-frame rules (event order, window and
//!   `BUSY`, acks, what ends a session) are [`session`]'s, free of I/O.
//! - [`pipeline`] batches every session's events onto one gRPC stream to
//!   the vendor-bridge and turns its durable confirmations into `ACK`s.
//! - [`commands`] holds the one Redis pub/sub connection: operators'
//!   commands to sessions, and supersede notices from the bridge.
//! - [`upload`] receives uploads (`UPLOAD_BEGIN` … `UPLOAD_END`) into one
//!   write buffer per uploading connection, stores them under `UPLOAD_DIR`
//!   and records completed ones through [`bridge`]; a background task
//!   expires abandoned partial uploads.
//! - [`registry`] is the table of live sessions and their mailboxes, the
//!   only way other tasks reach a connection; [`idle`] parks the sessions
//!   whose devices went quiet ([`park`]: no task until they are needed),
//!   and closes those silent for the idle timeout.
//! - [`drain`] ends everything gracefully on SIGTERM; [`admin`] serves
//!   `/healthz` and `/metrics` ([`metrics`]); [`title`] keeps the process
//!   title (`ps`) current.
//! - [`config`] is every environment variable, parsed once.

pub mod admin;
pub mod auth_limits;
pub mod batcher;
pub mod bridge;
pub mod commands;
pub mod config;
pub mod connection;
pub mod drain;
pub mod handshake_thread;
pub mod handshakes;
pub mod idle;
pub mod keys;
pub mod listener;
pub mod metrics;
pub mod park;
pub mod pipeline;
pub mod proxy;
pub mod registry;
pub mod session;
pub mod title;
pub mod upload;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;

use crate::auth_limits::AuthLimits;
use crate::bridge::BridgeClient;
use crate::commands::{CommandRouter, Subscriptions};
use crate::handshakes::HandshakeSlots;
use crate::keys::KeyStore;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::registry::Registry;
use crate::upload::UploadStore;

/// What every connection task shares.
#[derive(Debug)]
pub struct Driver {
    /// The configuration.
    pub config: Config,
    /// Device keys.
    pub keys: KeyStore,
    /// Live sessions.
    pub registry: Arc<Registry>,
    /// Events to the bridge.
    pub pipeline: Pipeline,
    /// Unary calls to the bridge.
    pub bridge: BridgeClient,
    /// Command-channel subscriptions.
    pub subscriptions: Subscriptions,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Upload storage under `UPLOAD_DIR`.
    pub uploads: UploadStore,
    /// `UPLOAD_MAX_OPEN` slots: an upload in progress holds one (and its
    /// write buffer).
    pub upload_slots: Arc<tokio::sync::Semaphore>,
    /// `DRIVER_MAX_HANDSHAKES` slots for connections not yet authenticated.
    pub handshake_slots: Arc<HandshakeSlots>,
    /// Failed authentications per address and per serial.
    pub auth_limits: AuthLimits,
    /// Set on SIGTERM: `/healthz` answers 503 and new sessions leave at once.
    pub draining: AtomicBool,
    /// The runtime established sessions run on (handshakes run on the
    /// [`handshake_thread`]).
    pub sessions: tokio::runtime::Handle,
    /// Where quiet sessions wait without a task ([`park`]).
    pub park: park::Park,
}

/// The sockets the driver serves on, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// CWP/1 connections.
    pub devices: TcpListener,
    /// `/healthz` and `/metrics`.
    pub admin: TcpListener,
}

/// Connections the kernel may hold completed for the driver to accept.
/// `TcpListener::bind` left 128 here (`ss -tln`); a connect storm (every
/// device of a driver reconnecting after a restart) overflows that at
/// once, and the kernel then drops the handshakes' final `ACK`s: devices
/// wait out SYN retransmissions (1, 3, 7 … seconds), and a silent client
/// can even believe itself connected to a driver that never accepted it.
/// Linux caps the value at `net.core.somaxconn` (4096 by default).
const DEVICE_BACKLOG: u32 = 4096;

/// The device listener, with [`DEVICE_BACKLOG`].
fn bind_devices(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted driver rebinds its port
    // while the old connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(DEVICE_BACKLOG)
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            devices: bind_devices(config.listen).with_context(|| format!("binding DRIVER_LISTEN {}", config.listen))?,
            admin: TcpListener::bind(config.admin_listen)
                .await
                .with_context(|| format!("binding DRIVER_ADMIN_LISTEN {}", config.admin_listen))?,
        })
    }
}

/// Runs the driver until `shutdown` resolves, then drains and returns.
/// `title`, when given, is kept showing the driver's state.
pub async fn run(
    config: Config,
    listeners: Listeners,
    title: Option<process_title::ProcessTitle>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let keys = KeyStore::new(config.master_key.clone(), config.keys_file.clone()).context("loading CWP_KEYS_FILE")?;
    let mut prometheus = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut prometheus));
    let instance_id = uuid::Uuid::new_v4().simple().to_string();
    let bridge = BridgeClient::new(
        bridge::channel(&config.bridge_url, config.bridge_tls.as_ref())?,
        config.driver_id.clone(),
        instance_id,
    );
    let uploads = UploadStore::new(config.upload_dir.clone());
    uploads
        .prepare()
        .with_context(|| format!("preparing UPLOAD_DIR {}", config.upload_dir.display()))?;
    let registry = Arc::new(Registry::default());
    let (pipeline, pipeline_task) = pipeline::pipeline(bridge.clone(), metrics.clone(), config.max_pending_events);

    commands::check_access(&config.redis_url, &config.driver_id).await?;
    let stop_commands = CancellationToken::new();
    let (subscriptions, commands_task) = commands::spawn(
        CommandRouter {
            redis_url: config.redis_url.clone(),
            driver_id: config.driver_id.clone(),
            registry: registry.clone(),
            bridge: bridge.clone(),
            metrics: metrics.clone(),
            max_payload: config.max_payload,
        },
        stop_commands.clone(),
    )
    .context("REDIS_URL")?;

    let upload_slots = Arc::new(tokio::sync::Semaphore::new(config.upload_max_open));
    let handshake_slots = HandshakeSlots::new(config.max_handshakes, metrics.handshakes_in_progress.clone());
    let auth_limits = AuthLimits::new(
        config.auth_failures_per_address,
        config.auth_failures_per_serial,
        config.auth_failure_window,
    );
    let connections = TaskTracker::new();
    let (park, park_inbox) = park::park(connections.clone());
    let driver = Arc::new(Driver {
        config,
        keys,
        registry,
        pipeline,
        bridge,
        subscriptions,
        metrics,
        upload_slots,
        uploads,
        handshake_slots,
        auth_limits,
        draining: AtomicBool::new(false),
        sessions: tokio::runtime::Handle::current(),
        park,
    });
    info!(
        driver_id = %driver.config.driver_id,
        listen = %listeners.devices.local_addr()?,
        admin = %listeners.admin.local_addr()?,
        listed_keys = driver.keys.listed(),
        master_key = driver.config.master_key.is_some(),
        bridge_tls = driver.config.bridge_tls.is_some(),
        bridge_client_certificate = driver.config.bridge_tls.as_ref().is_some_and(|tls| tls.client_identity.is_some()),
        "driver ready"
    );

    let stop_pipeline = CancellationToken::new();
    let abandon_pipeline = CancellationToken::new();
    let pipeline = tokio::spawn(pipeline_task(stop_pipeline.clone()).run(abandon_pipeline.clone()));

    let stop_admin = CancellationToken::new();
    let admin = tokio::spawn(admin::serve(
        listeners.admin,
        driver.clone(),
        prometheus,
        stop_admin.clone(),
    ));
    let reload = tokio::spawn(reload_keys_on_hangup(driver.clone()));
    let stop_expiry = CancellationToken::new();
    let expiry = tokio::spawn(upload::expire_periodically(
        driver.uploads.clone(),
        driver.config.upload_expire_after,
        stop_expiry.clone(),
    ));
    let stop_idle = CancellationToken::new();
    let idle = tokio::spawn(idle::sweep_quiet_sessions(
        driver.registry.clone(),
        driver.config.idle_timeout,
        driver.config.park_after,
        stop_idle.clone(),
    ));
    let stop_park = CancellationToken::new();
    let park = tokio::spawn(park::run(driver.clone(), park_inbox, stop_park.clone()));
    let stop_title = CancellationToken::new();
    let title = title.map(|title| tokio::spawn(title::refresh(driver.clone(), title, stop_title.clone())));

    let stop_accepting = CancellationToken::new();
    let handshake_thread = handshake_thread::HandshakeThread::start()?;
    // Registered with the handshake thread's runtime, where it is accepted on.
    let device_listener = {
        let _runtime = handshake_thread.handle().enter();
        listeners
            .devices
            .into_std()
            .and_then(TcpListener::from_std)
            .context("moving the device listener to the handshake thread")?
    };
    let accept = handshake_thread.handle().spawn(listener::accept_loop(
        driver.clone(),
        device_listener,
        connections.clone(),
        stop_accepting.clone(),
    ));

    shutdown.await;
    driver.draining.store(true, std::sync::atomic::Ordering::Release);
    stop_accepting.cancel();
    let _ = accept.await;
    drain::drain(
        &driver,
        &connections,
        driver.config.drain_period.max(Duration::from_secs(5)) + Duration::from_secs(15),
    )
    .await;
    handshake_thread.stop().await;
    stop_park.cancel();
    match park.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::error!(error = %err, "the park failed"),
        Err(err) => tracing::error!(error = %err, "the park's task failed"),
    }

    stop_pipeline.cancel();
    let mut pipeline = pipeline;
    if tokio::time::timeout(Duration::from_secs(10), &mut pipeline)
        .await
        .is_err()
    {
        warn!("event pipeline did not finish in time");
        abandon_pipeline.cancel();
        let _ = pipeline.await;
    }
    stop_commands.cancel();
    let _ = commands_task.await;
    reload.abort();
    stop_expiry.cancel();
    let _ = expiry.await;
    stop_idle.cancel();
    let _ = idle.await;
    stop_title.cancel();
    if let Some(title) = title {
        let _ = title.await;
    }
    stop_admin.cancel();
    let _ = admin.await;
    info!("driver stopped");
    Ok(())
}

async fn reload_keys_on_hangup(driver: Arc<Driver>) {
    let Ok(mut hangups) = drover_service::shutdown::hangups() else {
        warn!("cannot listen for SIGHUP; CWP_KEYS_FILE will not be reloaded");
        return;
    };
    while hangups.recv().await.is_some() {
        match driver.keys.reload() {
            Ok(count) => info!(keys = count, "reloaded CWP_KEYS_FILE"),
            // An operator's mistake that leaves devices with stale keys: alert.
            Err(err) => tracing::error!(error = %err, "CWP_KEYS_FILE not reloaded; the previous keys stay in force"),
        }
    }
}
