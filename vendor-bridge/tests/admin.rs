//! The bridge's admin endpoint (`BRIDGE_METRICS_LISTEN`): `/metrics` counts
//! what the bridge stored and shows its health and Redis's durability;
//! `/healthz` answers 200 while `grpc.health.v1` says SERVING and 503 while
//! it says NOT_SERVING (Redis stopped), like the gRPC health service.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use drover_testkit::wait::eventually;
use support::{Bridge, DEADLINE, DriverStream, event};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use vendor_bridge::Stats;

/// The admin endpoint of `stats`, served on a free loopback port until the
/// returned sender is dropped.
async fn serve_admin(stats: &Arc<Stats>) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let registry = vendor_bridge::metrics::registry(Arc::clone(stats), vendor_bridge::config::DEFAULT_MAX_QUEUED_BYTES);
    tokio::spawn(vendor_bridge::admin::serve(
        listener,
        Arc::clone(stats),
        registry,
        async {
            let _ = stopped.await;
        },
    ));
    (addr, stop)
}

async fn get(addr: SocketAddr, path: &'static str) -> (u16, String) {
    tokio::task::spawn_blocking(move || drover_testkit::http::get(addr, path).unwrap())
        .await
        .unwrap()
}

/// The value of one series in a scrape.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_stored_events_and_healthz_follows_redis() {
    let mut bridge = Bridge::start().await;
    let (admin, _stop) = serve_admin(&bridge.stats).await;
    eventually("/healthz to answer 200 SERVING", DEADLINE, || async {
        get(admin, "/healthz").await == (200, "SERVING\n".to_owned())
    })
    .await;

    let mut client = bridge.client().await;
    let mut stream = DriverStream::open(&mut client, "driver-a", "instance-1").await.unwrap();
    stream
        .store(1, vec![event("CTRL-1", 1, 1, b"a"), event("CTRL-1", 2, 1, b"b")])
        .await;
    stream.store(2, vec![event("CTRL-1", 2, 1, b"b")]).await;
    let (status, metrics) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    for (series, value) in [
        ("drover_bridge_health_serving", 1.0),
        ("drover_bridge_durability{state=\"fsynced\"}", 1.0),
        ("drover_bridge_driver_streams", 1.0),
        ("drover_bridge_events_stored_total", 2.0),
        ("drover_bridge_events_duplicate_total", 1.0),
        ("drover_bridge_batches_total", 2.0),
        ("drover_bridge_redis_errors_total", 0.0),
    ] {
        assert_eq!(sample(&metrics, series), Some(value), "{series} in\n{metrics}");
    }

    tokio::task::block_in_place(|| bridge.redis.stop());
    eventually("/healthz to answer 503 NOT_SERVING", DEADLINE, || async {
        get(admin, "/healthz").await == (503, "NOT_SERVING\n".to_owned())
    })
    .await;
    let (_, metrics) = get(admin, "/metrics").await;
    assert_eq!(sample(&metrics, "drover_bridge_health_serving"), Some(0.0), "{metrics}");
    assert_eq!(
        sample(&metrics, "drover_bridge_durability{state=\"unchecked\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "drover_bridge_redis_errors_total").unwrap() >= 1.0,
        "the failed PINGs count: {metrics}"
    );

    tokio::task::block_in_place(|| bridge.redis.start_again()).unwrap();
    eventually("/healthz to answer 200 again", DEADLINE, || async {
        get(admin, "/healthz").await.0 == 200
    })
    .await;
}
