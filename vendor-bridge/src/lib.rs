//! The vendor-bridge: the gRPC server between the driver fleet and Redis
//! (contract: `proto/drover/bridge/v1/bridge.proto`; Redis keys:
//! [`drover_schema`] and docs/ARCHITECTURE.md).
//!
//! Layout, in the order a request flows through it:
//!
//! - `listener`: the bounded accept loop feeding tonic; `tls`: optional
//!   (mutual) TLS on top of it.
//! - [`service`]: the `VendorBridge` gRPC service; checks every request
//!   (serials through [`cwp::Serial`]), maps Redis failures to `UNAVAILABLE`.
//! - `stream`: one `StreamEvents` stream after its `hello`: a reader task
//!   checks batches ([`batch`]) into a bounded queue, an applier task stores
//!   them in order, several waiting batches per script call, retrying until
//!   Redis takes them, and answers each with `BatchDurable`.
//! - [`store`]: all Redis work, one atomic Lua script per operation
//!   (`src/scripts/*.lua`), every key and channel named by
//!   [`drover_schema`].
//! - `health` + [`durability`]: `grpc.health.v1` from a periodic `PING`, and
//!   the check that Redis fsyncs before it answers.
//! - [`stats`]: counters, shown by [`title`] as the process title; [`config`]:
//!   the environment.
//!
//! [`serve`] ties them together and runs until its shutdown future resolves.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use drover_proto::bridge::vendor_bridge_server::VendorBridgeServer;
use drover_service::drain;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tonic_health::ServingStatus;
use tracing::{info, warn};

pub mod batch;
pub mod config;
pub mod durability;
mod health;
mod listener;
pub mod service;
pub mod stats;
pub mod store;
mod stream;
pub mod title;
mod tls;

pub use config::Config;
pub use stats::{Stats, StatsSnapshot};

use crate::service::Bridge;
use crate::store::Store;
use crate::stream::Lifecycle;

/// The largest message a driver may send (a batch): 16 MiB.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;
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
    let store = Store::new(&config.redis_url).context("setting up the Redis client")?;
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
    let (reporter, health_service) = tonic_health::server::health_reporter();
    health::set(&reporter, ServingStatus::NotServing).await;
    tasks.spawn(health::watch_redis(store.clone(), reporter, draining_watch.clone()));
    if let Some(title) = title {
        tasks.spawn(title::refresh(
            title,
            config.listen.port(),
            stats.clone(),
            draining_watch.clone(),
        ));
    }

    let local = listener.local_addr().context("reading the listening address")?;
    let bridge = VendorBridgeServer::new(Bridge::new(store, stats, lifecycle.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE);
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
        redis = %drover_service::env::redact_password(&config.redis_url),
        tls = config.tls.is_some(),
        client_certificates = config.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some()),
        "vendor-bridge serving"
    );

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
