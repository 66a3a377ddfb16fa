//! The vendor-bridge: the gRPC server between the driver fleet and Redis
//! (contract: `proto/drover/bridge/v1/bridge.proto`; Redis keys:
//! [`drover_schema`] and docs/ARCHITECTURE.md).
//!
//! Layout, in the order a request flows through it:
//!
//! - `listener`: the bounded accept loop feeding tonic; `tls`: optional
//!   (mutual) TLS on top of it; the bearer token ([`drover_proto::auth`]),
//!   when configured, checked by an interceptor before any `VendorBridge`
//!   call (not `grpc.health.v1`).
//! - [`service`]: the `VendorBridge` gRPC service; checks every request
//!   (serials through [`cwp::Serial`], driver ids against the client
//!   certificate: `identity`), admits writes only while the
//!   [`durability::DurabilityGate`] is open, maps Redis failures to
//!   `UNAVAILABLE`.
//! - `stream`: one `StreamEvents` stream after its `hello`: a reader task
//!   checks batches ([`batch`]) into a queue bounded in batches and in bytes
//!   (`budget`), an applier task stores them in order, several waiting
//!   batches per script call, retrying until Redis takes them (and holding
//!   them while the gate is closed), and answers each with `BatchDurable`.
//! - [`store`]: all Redis work, one atomic Lua script per operation
//!   (`src/scripts/*.lua`), every key and channel named by
//!   [`drover_schema`]; [`rollouts`]: the drivers' side of rollouts
//!   (claiming a transfer, reporting it), with the schema's scripts.
//! - `health` + [`durability`]: `grpc.health.v1` from a periodic `PING`, and
//!   the checks that Redis fsyncs before it answers, which open and close
//!   the gate.
//! - [`stats`]: counters, shown by [`title`] as the process title and by
//!   [`metrics`] at `/metrics` on the [`admin`] endpoint
//!   (`BRIDGE_METRICS_LISTEN`, with `/healthz`); [`config`]: the
//!   environment.
//!
//! [`serve`] ties the gRPC side together and runs until its shutdown future
//! resolves; the binary runs the [`admin`] endpoint beside it, from before
//! the server starts until after it has stopped.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use drover_proto::auth::RequireToken;
use drover_proto::bridge::vendor_bridge_server::VendorBridgeServer;
use drover_service::drain;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tonic::service::Interceptor as _;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;
use tracing::{info, warn};

pub mod admin;
pub mod batch;
mod budget;
pub mod config;
pub mod durability;
mod health;
mod identity;
mod listener;
pub mod metrics;
pub mod rollouts;
pub mod service;
pub mod stats;
pub mod store;
mod stream;
pub mod sweep;
pub mod title;
mod tls;

pub use config::Config;
pub use stats::{Stats, StatsSnapshot};

use crate::budget::QueueBudget;
use crate::durability::{DurabilityGate, DurabilityPolicy};
use crate::service::{Bridge, BridgeParts};
use crate::store::Store;
use crate::stream::Lifecycle;
/// HTTP/2 flow-control windows: large enough that a driver can keep several
/// batches in flight on its one stream without waiting for window updates.
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 8 << 20;
/// HTTP/2 pings find dead drivers whose TCP connection stays silent.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// Serves `VendorBridge` and `grpc.health.v1.Health` on `listener` until
/// `shutdown` resolves, then drains: no new connections or batches, the
/// batches already received are stored and answered within
/// `config.shutdown_grace`, streams end with `UNAVAILABLE` (the drivers
/// reconnect elsewhere). Redis need not be up at start. `title`, when
/// given, is kept showing the bridge's state.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    stats: Arc<Stats>,
    title: Option<process_title::ProcessTitle>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // First, so that a bad certificate stops the start with a clear error.
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        server = server
            .tls_config(tls::server_config(tls)?)
            .context("setting up TLS from BRIDGE_TLS_CERT / BRIDGE_TLS_KEY / BRIDGE_TLS_CLIENT_CA")?;
    }
    for retired in &config.retired_set {
        warn!(
            variable = retired.name,
            "{} is set but ignored: {}", retired.name, retired.why
        );
    }
    let store = Store::new(&config.redis, config.layout, config.replica_wait).context("setting up the Redis client")?;
    // Signalled in this order at shutdown (below): draining, then, when
    // the grace is over, abandon; every task is tracked and awaited.
    let (draining, draining_watch) = drain::channel();
    let (abandon, abandon_watch) = drain::channel();
    let tasks = TaskTracker::new();
    let lifecycle = Lifecycle {
        draining: draining_watch.clone(),
        abandon: abandon_watch,
        tasks: tasks.clone(),
    };
    let gate = Arc::new(DurabilityGate::new(config.durability));
    if config.durability == DurabilityPolicy::Relaxed {
        warn!(
            "BRIDGE_DURABILITY=relaxed: if Redis does not fsync every write, the bridge stores and acknowledges \
             anyway, and a crash of the Redis host can lose acknowledged events"
        );
    }
    let (reporter, health_service) = tonic_health::server::health_reporter();
    health::set(&reporter, ServingStatus::NotServing).await;
    let watcher = health::Watcher {
        store: store.clone(),
        gate: Arc::clone(&gate),
        stats: Arc::clone(&stats),
        reporter,
    };
    tasks.spawn(watcher.run(draining_watch.clone(), lifecycle.abandon.clone()));
    tasks.spawn(sweep::run(store.clone(), Arc::clone(&stats), draining_watch.clone()));
    if let Some(title) = title {
        tasks.spawn(title::refresh(
            title,
            config.listen.port(),
            stats.clone(),
            draining_watch.clone(),
        ));
    }

    let local = listener.local_addr().context("reading the listening address")?;
    let mutual_tls = config.mutual_tls();
    let parts = BridgeParts {
        budget: QueueBudget::new(config.max_stream_bytes, config.max_queued_bytes, Arc::clone(&stats)),
        stats,
        lifecycle: lifecycle.clone(),
        gate,
        mutual_tls,
    };
    let bridge =
        VendorBridgeServer::new(Bridge::new(store, parts)).max_decoding_message_size(drover_proto::MAX_MESSAGE_BYTES);
    // The token, if any, is checked before the service sees the call (what
    // `VendorBridgeServer::with_interceptor` does, on the server configured
    // above).
    let mut require_token = config.token.clone().map(RequireToken::new);
    let bridge = InterceptedService::new(bridge, move |request| match &mut require_token {
        Some(require) => require.call(request),
        None => Ok(request),
    });
    let server = server
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE))
        .add_service(health_service)
        .add_service(bridge)
        .serve_with_incoming_shutdown(listener::incoming(listener), async move {
            draining_watch.signaled().await;
        });
    info!(
        %local,
        redis = %config.redis.describe(),
        partitions = config.layout.partition_count(),
        wait_replicas = config.replica_wait.replicas,
        tls = config.tls.is_some(),
        client_certificates = mutual_tls,
        token = config.token.is_some(),
        durability = ?config.durability,
        max_stream_bytes = config.max_stream_bytes,
        max_queued_bytes = config.max_queued_bytes,
        "vendor-bridge serving"
    );
    if config.token.is_none() && !mutual_tls {
        // `Config` refuses anything else than loopback in this case.
        info!(
            %local,
            "no BRIDGE_TOKEN and no mutual TLS: listening on loopback only, every process of this host may call the bridge"
        );
    }

    let mut server = std::pin::pin!(server);
    let result = tokio::select! {
        result = &mut server => Some(result),
        () = shutdown => None,
    };
    // The shutdown order, in one place:
    // 1. Draining: health NOT_SERVING, no new connections or streams; each
    //    stream stops reading and stores and answers what it has read.
    // 2. The server and its streams finish within the grace period...
    // 3. ...after which what is not stored is abandoned (never answered:
    //    the drivers send it again elsewhere).
    // 4. Every task is awaited.
    let result = match result {
        Some(result) => result,
        None => {
            info!(grace = ?config.shutdown_grace, "shutting down: storing and answering the batches already received");
            draining.signal();
            match tokio::time::timeout(config.shutdown_grace, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    warn!("shutdown grace period over: abandoning what is not stored yet (the drivers will resend it)");
                    Ok(())
                }
            }
        }
    };
    draining.signal();
    abandon.signal();
    tasks.close();
    tasks.wait().await;
    info!("vendor-bridge stopped");
    result.context("the gRPC server failed")
}
