//! The admin HTTP endpoint (`DRIVER_ADMIN_LISTEN`): `/healthz` for
//! HAProxy's checks (503 while draining, so HAProxy stops sending new
//! devices) and `/metrics` in the Prometheus text format.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Driver;

struct AdminState {
    driver: Arc<Driver>,
    registry: prometheus_client::registry::Registry,
}

/// Serves until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    driver: Arc<Driver>,
    registry: prometheus_client::registry::Registry,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let state = Arc::new(AdminState { driver, registry });
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

async fn healthz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    if state.driver.draining.load(Ordering::Acquire) {
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
