//! The admin HTTP endpoint (`DRIVER_ADMIN_LISTEN`): `/healthz` for
//! HAProxy's checks (503 while draining, so HAProxy stops sending new
//! devices) and `/metrics` in the Prometheus text format
//! ([`drover_service::admin`] serves both).

use drover_service::admin::Health;
use drover_service::drain;
use tokio::net::TcpListener;

/// Serves `/healthz` and `/metrics` until `stop` is signalled.
pub async fn serve(
    listener: TcpListener,
    registry: prometheus_client::registry::Registry,
    draining: drain::Watch,
    stop: drain::Watch,
) -> std::io::Result<()> {
    let health = move || {
        if draining.is_signaled() {
            Health {
                healthy: false,
                word: "draining",
            }
        } else {
            Health {
                healthy: true,
                word: "ok",
            }
        }
    };
    drover_service::admin::serve(listener, registry, health, async move { stop.signaled().await }).await
}
