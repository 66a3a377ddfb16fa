//! Drover's HTTP gateway (docs/HTTP.md): devices and integrations post
//! NDJSON event batches, signed with their CWP/1 key, and get an answer
//! once every valid line is durable in the same exactly-once event streams
//! as CWP/1 events. The rules (signatures, tokens, the NDJSON parser) are
//! `drover-http-ingest`'s, pure; the bridge client, the event stream, the
//! key store and the failure limits are `drover-edge`'s, shared with the
//! driver. This crate adds the sockets, Redis and the answers.
//!
//! A request's path through it:
//!
//! - [`listener`] accepts (bounded), reads HAProxy's PROXY header when
//!   enabled and serves HTTP/1.1 with hyper, headers under a deadline.
//! - [`service`] routes and answers; [`auth`] checks the credentials
//!   (signature or bearer token, revocation, failure limits, the nonce
//!   remembered in Redis); [`body`] streams the body through the limits,
//!   gzip, the digest and the parser; [`store`] submits the valid records
//!   to the bridge in batches and waits until they are durable;
//!   [`answer`] is every answer and error code.
//! - [`uploads`] serves tus 1.0 uploads ([`tus`]: its headers, pure) on
//!   the upload store shared with the drivers (`drover-upload-store`).
//! - [`metrics`] (`/metrics` on the admin port), [`title`] (`ps`),
//!   [`config`] (every environment variable, parsed once); [`run`] builds
//!   it all and stops it in one order.

pub mod answer;
pub mod auth;
pub mod body;
pub mod config;
pub mod listener;
pub mod metrics;
pub mod service;
pub mod store;
pub mod title;
pub mod tus;
pub mod uploads;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use drover_edge::{AuthLimits, BridgeClient, KeyStore, batch_stream, bridge};
use drover_http_ingest::BatchLimits;
use drover_redis::{Connection, Timeouts};
use drover_service::drain;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;

use crate::auth::{Authenticator, NonceStore};
use crate::body::{BodyLimits, InflightBudget};
use crate::listener::ListenerSettings;
use crate::metrics::Metrics;
use crate::service::Gateway;
use crate::uploads::{UploadLimits, Uploads};
use drover_upload_store::UploadStore;

/// Redis timeouts for the nonce check: a request waits at most this long
/// for Redis before it is answered 503.
const REDIS_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(2),
    response: Duration::from_secs(2),
};

/// How long, once told to stop, requests in progress may take to finish.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// The sockets the gateway serves on, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// Clients' requests.
    pub clients: TcpListener,
    /// `/healthz` and `/metrics` for operators.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds `HTTP_LISTEN` and `HTTP_ADMIN_LISTEN`.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            clients: TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("binding HTTP_LISTEN {}", config.listen))?,
            admin: TcpListener::bind(config.admin_listen)
                .await
                .with_context(|| format!("binding HTTP_ADMIN_LISTEN {}", config.admin_listen))?,
        })
    }
}

/// Runs the gateway until `shutdown` resolves, then stops it: no new
/// connections, requests in progress finish (within [`STOP_GRACE`]), the
/// event stream stores what it holds.
pub async fn run(
    config: Config,
    listeners: Listeners,
    title: Option<process_title::ProcessTitle>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let keys =
        Arc::new(KeyStore::new(config.master_key.clone(), config.keys_file.clone()).context("loading CWP_KEYS_FILE")?);
    let mut prometheus = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut prometheus));
    let tasks = TaskTracker::new();
    let (draining, draining_watch) = drain::channel();
    let (stream_stop, stream_watch) = drain::channel();
    let (background, background_watch) = drain::channel();

    let bridge = BridgeClient::new(
        bridge::channel(&config.bridge_url, config.bridge_tls.as_ref())?,
        config.bridge_token.as_ref(),
        config.gateway_id.clone(),
        uuid::Uuid::new_v4().simple().to_string(),
        &tasks,
        &background_watch,
    );
    let store = UploadStore::new(config.upload_dir.clone());
    store
        .prepare()
        .with_context(|| format!("preparing UPLOAD_DIR {}", config.upload_dir.display()))?;
    let uploads = Uploads::new(
        store.clone(),
        UploadLimits {
            max_bytes: config.upload_max_bytes,
            max_bytes_per_serial: config.upload_max_bytes_per_serial,
            min_free_bytes: config.upload_min_free_bytes,
            max_open: config.upload_max_open,
            buffer_bytes: config.upload_buffer_bytes,
            expire_after: config.upload_expire_after,
            idle_timeout: config.upload_idle_timeout,
        },
        bridge.clone(),
    );
    tasks.spawn(drover_upload_store::expiry::expire_periodically(
        store,
        config.upload_expire_after,
        background_watch.clone(),
    ));
    let (events, stream) = batch_stream(bridge, metrics.stream.clone(), stream_watch);
    tasks.spawn(stream.run());
    let redis = Connection::open(&config.redis, REDIS_TIMEOUTS).context("REDIS_URL")?;

    let gateway = Arc::new(Gateway {
        auth: Authenticator {
            keys: Arc::clone(&keys),
            limits: AuthLimits::new(config.auth_failures, config.auth_failure_window),
            failure_window: config.auth_failure_window,
            nonces: NonceStore {
                redis,
                layout: config.layout,
            },
            bearer_requires_tls: config.bearer_requires_tls,
        },
        events,
        body_limits: BodyLimits {
            max_bytes: config.max_body_bytes,
            timeout: config.body_timeout,
        },
        batch_limits: BatchLimits::default(),
        budget: InflightBudget::new(config.max_inflight_bytes),
        store_timeout: config.store_timeout,
        metrics: Arc::clone(&metrics),
        tasks: tasks.clone(),
        uploads,
    });
    info!(
        gateway_id = %config.gateway_id,
        listen = %listeners.clients.local_addr()?,
        admin = %listeners.admin.local_addr()?,
        listed_keys = keys.listed_keys(),
        master_key = config.master_key.is_some(),
        proxy_protocol = config.proxy_protocol,
        redis = %config.redis.describe(),
        bridge = %config.bridge_url,
        "http-gateway ready"
    );

    tasks.spawn(admin_task(
        listeners.admin,
        prometheus,
        draining_watch.clone(),
        background_watch.clone(),
    ));
    tasks.spawn(reload_keys_on_hangup(keys, background_watch.clone()));
    if let Some(title) = title {
        tasks.spawn(title::refresh(
            config.listen.port(),
            Arc::clone(&metrics),
            title,
            draining_watch.clone(),
            background_watch,
        ));
    }
    let connections = TaskTracker::new();
    let accept = tokio::spawn(listener::run(
        listeners.clients,
        ListenerSettings {
            max_connections: config.max_connections,
            proxy_protocol: config.proxy_protocol,
            header_timeout: config.header_timeout,
        },
        Arc::clone(&gateway),
        connections.clone(),
        draining_watch,
    ));

    shutdown.await;

    // 1. No new connections; /healthz answers 503; each connection
    //    finishes its request in progress and closes.
    draining.signal();
    if let Err(err) = accept.await {
        warn!(error = %err, "the accept loop failed");
    }
    connections.close();
    if tokio::time::timeout(STOP_GRACE, connections.wait()).await.is_err() {
        warn!(
            remaining = connections.len(),
            "stop grace over: closing connections with requests in progress"
        );
    }
    // 2. The event stream stores what it holds (within its own grace).
    drop(gateway);
    stream_stop.drain().await;
    // 3. The rest.
    background.drain().await;
    tasks.close();
    tasks.wait().await;
    drop(draining);
    info!("http-gateway stopped");
    Ok(())
}

async fn admin_task(
    listener: TcpListener,
    registry: prometheus_client::registry::Registry,
    draining: drain::Watch,
    stop: drain::Watch,
) {
    if let Err(err) = drover_service::admin::serve_until_drained(listener, registry, draining, stop).await {
        tracing::error!(error = %err, "the admin server failed: /healthz and /metrics are down");
    }
}

/// `CWP_KEYS_FILE` again on SIGHUP, as the driver does: a revoked serial's
/// next request is refused (tokens included, their key being gone).
async fn reload_keys_on_hangup(keys: Arc<KeyStore>, stop: drain::Watch) {
    let Ok(mut hangups) = drover_service::shutdown::hangups() else {
        warn!("cannot listen for SIGHUP; CWP_KEYS_FILE will not be reloaded");
        return;
    };
    loop {
        tokio::select! {
            () = stop.signaled() => return,
            hangup = hangups.recv() => if hangup.is_none() {
                return;
            },
        }
        match keys.reload() {
            Ok(reloaded) => info!(
                keys = reloaded.keys,
                revoked = reloaded.revoked,
                "reloaded CWP_KEYS_FILE"
            ),
            Err(err) => tracing::error!(error = %err, "CWP_KEYS_FILE not reloaded; the previous keys stay in force"),
        }
    }
}
