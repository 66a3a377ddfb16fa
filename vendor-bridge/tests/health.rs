//! What the bridge tells operators about Redis: `grpc.health.v1` follows a
//! periodic `PING` (SERVING while Redis answers, NOT_SERVING while it does
//! not), and the durability check says whether an acknowledged batch is on
//! disk.
#![allow(clippy::unwrap_used)]

mod support;

use drover_testkit::redis::RedisServer;
use drover_testkit::wait::within;
use support::{Bridge, DEADLINE};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use vendor_bridge::durability::{self, Durability, Settings};
use vendor_bridge::store::Store;

/// Follows `Watch` until it reports `wanted`.
async fn wait_for_status(updates: &mut tonic::Streaming<HealthCheckResponse>, wanted: ServingStatus) {
    within(&format!("health {wanted:?}"), DEADLINE, async {
        loop {
            let update = updates.message().await.unwrap().expect("the watch stays open");
            if update.status() == wanted {
                return;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_only_while_redis_answers() {
    let mut bridge = Bridge::start().await;
    let mut health = HealthClient::new(bridge.channel().await);
    let watch = |service: &str| HealthCheckRequest {
        service: service.to_owned(),
    };
    let mut overall = health.watch(watch("")).await.unwrap().into_inner();
    let mut bridge_service = health
        .watch(watch("drover.bridge.v1.VendorBridge"))
        .await
        .unwrap()
        .into_inner();
    wait_for_status(&mut overall, ServingStatus::Serving).await;
    wait_for_status(&mut bridge_service, ServingStatus::Serving).await;

    tokio::task::block_in_place(|| bridge.redis.stop());
    wait_for_status(&mut overall, ServingStatus::NotServing).await;
    wait_for_status(&mut bridge_service, ServingStatus::NotServing).await;

    tokio::task::block_in_place(|| bridge.redis.start_again()).unwrap();
    wait_for_status(&mut overall, ServingStatus::Serving).await;
}

#[tokio::test]
async fn redis_with_appendfsync_always_makes_acks_durable() {
    let redis = RedisServer::start().unwrap();
    let store = Store::for_redis(&redis.url()).unwrap();
    assert_eq!(durability::check(&store).await.unwrap(), Durability::Fsynced);
}

#[tokio::test]
async fn redis_with_appendfsync_everysec_is_reported_weak() {
    let redis = RedisServer::start_with_args(&["--appendfsync", "everysec"]).unwrap();
    let store = Store::for_redis(&redis.url()).unwrap();
    assert_eq!(
        durability::check(&store).await.unwrap(),
        Durability::Weak(Settings {
            node: "redis".to_owned(),
            appendonly: "yes".to_owned(),
            appendfsync: "everysec".to_owned(),
            no_appendfsync_on_rewrite: "no".to_owned(),
        })
    );
}

#[tokio::test]
async fn redis_refusing_config_leaves_durability_unverified() {
    let redis = RedisServer::start_with_args(&["--rename-command", "CONFIG", ""]).unwrap();
    let store = Store::for_redis(&redis.url()).unwrap();
    assert!(matches!(
        durability::check(&store).await.unwrap(),
        Durability::Unverified { .. }
    ));
}
