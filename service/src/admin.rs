//! The admin HTTP endpoint every Drover server has (the driver's
//! `DRIVER_ADMIN_LISTEN`, the bridge's `BRIDGE_METRICS_LISTEN`):
//! `/metrics`, a Prometheus registry in the text format, and `/healthz`,
//! the process's own answer to "should I get traffic?" (200 or 503 with
//! one word). Read-only and unauthenticated: each server says where it
//! listens.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// One unit of a gauge for as long as it lives (an upload's write buffer
/// in `upload_buffers`, the driver's and the gateway's): the count cannot
/// drift, whatever path drops it.
#[derive(Debug)]
pub struct GaugeHold(Gauge);

impl GaugeHold {
    /// Adds one to `gauge` until dropped.
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for GaugeHold {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What `/healthz` answers now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// 200 when true, 503 when false.
    pub healthy: bool,
    /// The body, one word (`ok`, `draining`, `SERVING`, ...).
    pub word: &'static str,
}

struct AdminState<H> {
    registry: Registry,
    health: H,
}

/// Serves `/healthz` for a server that is healthy until it drains (`200
/// ok`, then `503 draining`, so that HAProxy sends it nothing new: the
/// driver, the HTTP gateway) and `/metrics`, until `stop` is signalled.
pub async fn serve_until_drained(
    listener: TcpListener,
    registry: Registry,
    draining: crate::drain::Watch,
    stop: crate::drain::Watch,
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
    serve(listener, registry, health, async move { stop.signaled().await }).await
}

/// Serves `/healthz` (asking `health` at each request) and `/metrics`
/// (encoding `registry` at each request) on `listener` until `stop`
/// resolves.
pub async fn serve<H>(
    listener: TcpListener,
    registry: Registry,
    health: H,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    H: Fn() -> Health + Send + Sync + 'static,
{
    let state = Arc::new(AdminState { registry, health });
    let app = Router::new()
        .route("/healthz", get(healthz::<H>))
        .route("/metrics", get(metrics::<H>))
        .with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(stop).await
}

async fn healthz<H: Fn() -> Health>(State(state): State<Arc<AdminState<H>>>) -> impl IntoResponse {
    let Health { healthy, word } = (state.health)();
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, format!("{word}\n"))
}

async fn metrics<H>(State(state): State<Arc<AdminState<H>>>) -> impl IntoResponse {
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

/// How long `--health` waits for the connection and for the answer: less
/// than a container health check's timeout (docker-compose.yml: 3 s).
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `BINARY --health`, a container's health check: `GET /healthz` on the
/// admin address in `variable` (e.g. `DRIVER_ADMIN_LISTEN`), as HAProxy
/// asks it; the exit code is 0 only on `200` (a draining server answers
/// 503), else 1 (2: the variable is invalid). It reads that one variable,
/// not the whole configuration: it runs every few seconds beside the server
/// and must not fail for anything else.
pub fn health_check(binary: &str, variables: &'static [crate::env::Variable], variable: &str) -> i32 {
    let mut reader = crate::env::EnvReader::new(variables);
    let listen = reader.parse::<std::net::SocketAddr>(variable);
    let (Ok(()), Some(listen)) = (reader.finish(), listen) else {
        eprintln!("{binary} --health: {variable} is not an address (see --help)");
        return 2;
    };
    let address = crate::env::probe_address(listen);
    match healthz_status_line(address) {
        Ok(status_line) if status_line.split_whitespace().nth(1) == Some("200") => {
            println!("http://{address}/healthz: {status_line}");
            0
        }
        Ok(status_line) => {
            eprintln!("{binary} --health: http://{address}/healthz: {status_line}");
            1
        }
        Err(err) => {
            eprintln!("{binary} --health: http://{address}/healthz: {err:#}");
            1
        }
    }
}

/// The status line of `GET /healthz` at `address`.
fn healthz_status_line(address: std::net::SocketAddr) -> anyhow::Result<String> {
    use std::io::{BufRead as _, Read as _, Write as _};

    use anyhow::Context as _;

    let mut stream = std::net::TcpStream::connect_timeout(&address, HEALTH_TIMEOUT).context("connecting")?;
    stream.set_read_timeout(Some(HEALTH_TIMEOUT))?;
    stream.set_write_timeout(Some(HEALTH_TIMEOUT))?;
    let request = format!("GET /healthz HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).context("sending the request")?;
    let mut status_line = String::new();
    std::io::BufReader::new(stream.take(512))
        .read_line(&mut status_line)
        .context("reading the answer")?;
    match status_line.trim_end() {
        "" => anyhow::bail!("no answer"),
        line => Ok(line.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// `GET path` over HTTP/1.0: the status line and the body.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }

    #[tokio::test]
    async fn healthz_says_what_the_server_says_and_metrics_encode_the_registry() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut registry = Registry::default();
        let requests = Counter::<u64>::default();
        requests.inc_by(7);
        registry.register("drover_test_requests", "Requests", requests);
        let healthy = Arc::new(AtomicBool::new(true));
        let health = {
            let healthy = Arc::clone(&healthy);
            move || {
                if healthy.load(Ordering::Relaxed) {
                    Health {
                        healthy: true,
                        word: "ok",
                    }
                } else {
                    Health {
                        healthy: false,
                        word: "draining",
                    }
                }
            }
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, registry, health, async {
            let _ = stopped.await;
        }));

        let (status, body) = get(addr, "/healthz").await;
        assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.0 200 OK", "ok\n"));
        healthy.store(false, Ordering::Relaxed);
        let (status, body) = get(addr, "/healthz").await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.0 503 Service Unavailable", "draining\n")
        );
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, "HTTP/1.0 200 OK");
        assert!(body.contains("\ndrover_test_requests_total 7\n"), "{body}");

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
