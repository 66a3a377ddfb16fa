//! The admin HTTP endpoint (`DRIVER_ADMIN_LISTEN`): `/healthz` for
//! HAProxy's checks (503 while draining, so HAProxy stops sending new
//! devices) and `/metrics` in the Prometheus text format.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use drover_service::drain;
use tokio::net::TcpListener;

struct AdminState {
    /// Signalled when the driver drains: `/healthz` answers 503.
    draining: drain::Watch,
    registry: prometheus_client::registry::Registry,
}

/// Serves `/healthz` and `/metrics` until `stop` is signalled.
pub async fn serve(
    listener: TcpListener,
    registry: prometheus_client::registry::Registry,
    draining: drain::Watch,
    stop: drain::Watch,
) -> std::io::Result<()> {
    let state = Arc::new(AdminState { draining, registry });
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.signaled().await })
        .await
}

async fn healthz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    if state.draining.is_signaled() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "encoding failed\n".to_owned(),
        ),
    }
}
