//! The admin HTTP endpoint (`BRIDGE_METRICS_LISTEN`): `/metrics` in the
//! Prometheus text format ([`crate::metrics`]) and `/healthz`, the
//! `grpc.health.v1` status for tools that speak only HTTP (200 `SERVING`,
//! 503 `NOT_SERVING`). Read-only and unauthenticated, like the drivers'
//! admin endpoint ([`drover_service::admin`] serves both): it listens on
//! loopback unless the operator says otherwise.

use std::future::Future;
use std::sync::Arc;

use drover_service::admin::Health;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::stats::Stats;

/// Serves `/healthz` and `/metrics` on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    stats: Arc<Stats>,
    registry: Registry,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let health = move || {
        if stats.snapshot().serving {
            Health {
                healthy: true,
                word: "SERVING",
            }
        } else {
            Health {
                healthy: false,
                word: "NOT_SERVING",
            }
        }
    };
    drover_service::admin::serve(listener, registry, health, stop).await
}
