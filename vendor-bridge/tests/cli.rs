//! `vendor-bridge --health`, the container's health check: a real probe
//! process asks a real bridge, which is SERVING only while its Redis
//! answers. (A bridge whose Redis refused every connection used to pass a
//! check that only opened its port.)
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::process::{Command, Output};

use drover_testkit::redis::RedisServer;
use drover_testkit::wait::within;
use support::{Bridge, DEADLINE};

/// `vendor-bridge --health` with `BRIDGE_LISTEN=listen` and nothing else.
fn probe(listen: &str, extra: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vendor-bridge"))
        .arg("--health")
        .env_clear()
        .env("BRIDGE_LISTEN", listen)
        .envs(extra.iter().copied())
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs the probe against `addr` (given as the wildcard address of its
/// port, as in a container) until it exits with `wanted`; fails after the
/// harness's deadline.
async fn wait_for_probe(addr: SocketAddr, wanted: i32) -> String {
    let listen = format!("0.0.0.0:{}", addr.port());
    within(&format!("vendor-bridge --health to exit {wanted}"), DEADLINE, async {
        loop {
            let listen = listen.clone();
            let output = tokio::task::spawn_blocking(move || probe(&listen, &[])).await.unwrap();
            if output.status.code() == Some(wanted) {
                return text(&output);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_ok_only_while_the_bridge_serves_with_redis() {
    // As in docker-compose: the VendorBridge calls need a token, the
    // health service none (and the probe has none).
    let mut bridge = Bridge::start_with(RedisServer::start().unwrap(), |config| {
        config.token = Some(drover_proto::auth::BearerToken::new("a-token-the-probe-does-not-have").unwrap());
    })
    .await;
    let serving = wait_for_probe(bridge.addr, 0).await;
    assert!(serving.contains("SERVING"), "{serving}");

    // The port still accepts connections, but nothing can be stored.
    tokio::task::block_in_place(|| bridge.redis.stop());
    let not_serving = wait_for_probe(bridge.addr, 1).await;
    assert!(not_serving.contains("NOT_SERVING"), "{not_serving}");

    tokio::task::block_in_place(|| bridge.redis.start_again()).unwrap();
    wait_for_probe(bridge.addr, 0).await;

    let addr = bridge.addr;
    drop(bridge);
    let gone = wait_for_probe(addr, 1).await;
    assert!(gone.contains(&format!("127.0.0.1:{}", addr.port())), "{gone}");
}

#[test]
fn health_refuses_what_it_cannot_check() {
    let invalid = probe("nowhere", &[]);
    assert_eq!(invalid.status.code(), Some(2), "{}", text(&invalid));
    assert!(text(&invalid).contains("BRIDGE_LISTEN"));

    let tls = probe("127.0.0.1:1", &[("BRIDGE_TLS_CERT", "/etc/bridge.pem")]);
    assert_eq!(tls.status.code(), Some(2), "{}", text(&tls));
    assert!(text(&tls).contains("TLS"));
}
