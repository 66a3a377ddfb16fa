//! "Acknowledged" means on disk, or the bridge does not acknowledge
//! (README, Durability): while Redis is not verified to fsync every write
//! (`appendonly yes`, `appendfsync always`, `no-appendfsync-on-rewrite no`),
//! a strict bridge (the default) holds every stream's batches unanswered,
//! refuses every unary call that writes with `UNAVAILABLE` naming the
//! setting, and reports health `NOT_SERVING`; it goes on by itself once
//! Redis is fixed, answering the held batches exactly once. A `CONFIG SET`
//! at run time is noticed within the check period; a reconnection at once.
//! `BRIDGE_DURABILITY=relaxed` stores anyway (the control: the same weak
//! Redis, the same calls, accepted).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use drover_proto::bridge::OpenSessionRequest;
use drover_proto::bridge::vendor_bridge_client::VendorBridgeClient;
use drover_testkit::redis::RedisServer;
use drover_testkit::wait::{eventually, within};
use support::calls::{As, every_unary_call};
use support::{Bridge, DEADLINE, DriverStream, contents, counts, event, hget, stored_events, xlen};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use vendor_bridge::config::DurabilityPolicy;
use vendor_bridge::durability::CHECK_PERIOD;
use vendor_bridge::stats::DurabilityStatus;

const DRIVER: As<'static> = As {
    driver_id: "drv-a",
    token: None,
};

/// How late after a `CONFIG SET` the bridge may notice it: the check
/// period, and a second for the check itself on a busy machine.
const NOTICE: Duration = CHECK_PERIOD.saturating_add(Duration::from_secs(1));

async fn set_config(bridge: &Bridge, name: &str, value: &str) {
    let mut redis = bridge.redis().await;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
}

async fn wait_for_durability(bridge: &Bridge, wanted: DurabilityStatus) {
    let stats = bridge.stats.clone();
    eventually(&format!("durability {wanted:?}"), DEADLINE, || async {
        stats.snapshot().durability == wanted
    })
    .await;
}

async fn health(bridge: &Bridge) -> ServingStatus {
    let mut health = HealthClient::new(bridge.channel().await);
    health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status()
}

/// Every unary call that writes is `UNAVAILABLE`, its message naming
/// `setting`.
async fn assert_every_write_refused(client: &mut VendorBridgeClient<Channel>, setting: &str) {
    for (call, outcome) in every_unary_call(client, "CTRL-9", DRIVER).await {
        let status = outcome.expect_err(call);
        assert_eq!(status.code(), Code::Unavailable, "{call}: {status:?}");
        assert!(status.message().contains(setting), "{call} names {setting}: {status:?}");
    }
}

async fn assert_every_write_accepted(client: &mut VendorBridgeClient<Channel>) {
    for (call, outcome) in every_unary_call(client, "CTRL-9", DRIVER).await {
        outcome.unwrap_or_else(|status| panic!("{call}: {status:?}"));
    }
}

/// A stream of `drv-a` whose first batch (event 1 of CTRL-1) is stored and
/// answered.
async fn stream_with_one_batch_stored(client: &mut VendorBridgeClient<Channel>) -> DriverStream {
    let mut stream = DriverStream::open(client, "drv-a", "inst-1").await.unwrap();
    assert_eq!(
        counts(&stream.store(1, vec![event("CTRL-1", 1, 1, b"")]).await),
        (1, 1, 0)
    );
    stream
}

/// Waits until the stream's applier holds its batches for want of
/// durability; then nothing of them is stored or answered.
async fn wait_until_held(bridge: &Bridge) {
    let stats = bridge.stats.clone();
    eventually("the stream to hold its batches", DEADLINE, || async {
        stats.snapshot().streams_awaiting_durability == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_appendfsync_everysec_nothing_is_acknowledged_until_redis_fsyncs_every_write() {
    let redis = RedisServer::start_with_args(&["--appendfsync", "everysec"]).unwrap();
    let bridge = Bridge::start_on(redis).await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;
    wait_for_durability(&bridge, DurabilityStatus::WeakRefusing).await;
    assert_eq!(health(&bridge).await, ServingStatus::NotServing);
    assert_every_write_refused(&mut client, "appendfsync is everysec (needs always)").await;

    // The stream opens; its batch is read and held, neither stored nor
    // answered.
    let mut stream = DriverStream::open(&mut client, "drv-a", "inst-1").await.unwrap();
    stream
        .send(1, (1..=3).map(|id| event("CTRL-1", id, 1, b"held")).collect())
        .await;
    wait_until_held(&bridge).await;
    assert_eq!(xlen(&mut redis, "cwp:events").await, 0);
    assert!(!stream.has_answer_ready(), "a batch was answered on a weak Redis");

    // Fixed: the held batch is stored and answered once (answers come in
    // order: the next one is batch 2's), and every call works again.
    set_config(&bridge, "appendfsync", "always").await;
    assert_eq!(counts(&stream.durable().await), (1, 3, 0));
    assert_eq!(
        counts(&stream.store(2, vec![event("CTRL-1", 4, 1, b"after")]).await),
        (2, 1, 0)
    );
    assert_eq!(
        stored_events(&mut redis).await,
        (1..=4)
            .map(|id| ("CTRL-1".to_owned(), id.to_string()))
            .collect::<Vec<_>>()
    );
    assert_eq!(bridge.stats.snapshot().durability, DurabilityStatus::Fsynced);
    assert_every_write_accepted(&mut client).await;
    let health = within("health SERVING", DEADLINE, async {
        loop {
            if health(&bridge).await == ServingStatus::Serving {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    health.await;
}

#[tokio::test]
async fn with_durability_relaxed_a_weak_redis_is_used_and_said_to_be_weak() {
    let redis = RedisServer::start_with_args(&["--appendfsync", "everysec"]).unwrap();
    let bridge = Bridge::start_with(redis, |config| config.durability = DurabilityPolicy::Relaxed).await;
    let mut client = bridge.client().await;
    wait_for_durability(&bridge, DurabilityStatus::WeakAccepted).await;
    stream_with_one_batch_stored(&mut client).await;
    assert_every_write_accepted(&mut client).await;
    assert_eq!(health(&bridge).await, ServingStatus::Serving);
}

#[tokio::test]
async fn fsync_skipped_during_rewrites_or_settings_redis_will_not_tell_are_refused_too() {
    let redis = RedisServer::start_with_args(&["--no-appendfsync-on-rewrite", "yes"]).unwrap();
    let bridge = Bridge::start_on(redis).await;
    let mut client = bridge.client().await;
    wait_for_durability(&bridge, DurabilityStatus::WeakRefusing).await;
    assert_every_write_refused(&mut client, "no-appendfsync-on-rewrite is yes (needs no)").await;

    let redis = RedisServer::start_with_args(&["--rename-command", "CONFIG", ""]).unwrap();
    let bridge = Bridge::start_on(redis).await;
    let mut client = bridge.client().await;
    wait_for_durability(&bridge, DurabilityStatus::WeakRefusing).await;
    assert_every_write_refused(&mut client, "+config|get").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weaker_setting_at_run_time_stops_acknowledgements_within_the_check_period_and_the_right_one_resumes_them() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;
    let mut stream = stream_with_one_batch_stored(&mut client).await;

    let flipped = Instant::now();
    set_config(&bridge, "appendfsync", "everysec").await;
    wait_for_durability(&bridge, DurabilityStatus::WeakRefusing).await;
    let noticed = flipped.elapsed();
    assert!(noticed <= NOTICE, "noticed after {noticed:?}");
    eprintln!("appendfsync everysec noticed after {noticed:?}");

    stream.send(2, vec![event("CTRL-1", 2, 1, b"")]).await;
    wait_until_held(&bridge).await;
    assert!(!stream.has_answer_ready());
    assert_eq!(xlen(&mut redis, "cwp:events").await, 1);
    assert_every_write_refused(&mut client, "appendfsync is everysec").await;
    assert_eq!(health(&bridge).await, ServingStatus::NotServing);

    let fixed = Instant::now();
    set_config(&bridge, "appendfsync", "always").await;
    assert_eq!(counts(&stream.durable().await), (2, 1, 0));
    let resumed = fixed.elapsed();
    assert!(resumed <= NOTICE, "resumed after {resumed:?}");
    eprintln!("appendfsync always noticed after {resumed:?}");
    assert_eq!(xlen(&mut redis, "cwp:events").await, 2);
}

/// A connection to Redis lost (here: killed by `CLIENT KILL`, as a Redis
/// restart would) closes the gate until the reconnected Redis is checked:
/// a batch sent right after a weaker `CONFIG SET` and the kill is held,
/// not stored on the new connection. Without that check, the applier's
/// retry 50 ms later would store and answer it long before the periodic
/// check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lost_connection_nothing_is_stored_before_redis_is_checked_again() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;
    let mut stream = stream_with_one_batch_stored(&mut client).await;

    set_config(&bridge, "appendfsync", "everysec").await;
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    stream.send(2, vec![event("CTRL-1", 2, 1, b"")]).await;
    wait_for_durability(&bridge, DurabilityStatus::WeakRefusing).await;
    wait_until_held(&bridge).await;
    assert!(
        !stream.has_answer_ready(),
        "stored on a reconnected Redis before it was checked"
    );
    assert_eq!(xlen(&mut redis, "cwp:events").await, 1);

    set_config(&bridge, "appendfsync", "always").await;
    assert_eq!(counts(&stream.durable().await), (2, 1, 0));
}

/// The restart cleanup of a stream's `hello` (a driver's new instance marks
/// its previous instance's devices offline) writes too: on a weak Redis the
/// stream opens, the cleanup waits, and it runs as soon as Redis is fixed,
/// before any batch of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drivers_restart_cleanup_waits_for_durability_too() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;
    DriverStream::open(&mut client, "drv-a", "old").await.unwrap();
    client
        .open_session(OpenSessionRequest {
            serial: "OLD-1".to_owned(),
            session_id: vec![1; 16],
            driver_id: "drv-a".to_owned(),
            instance_id: "old".to_owned(),
            ..OpenSessionRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(
        hget(&mut redis, "cwp:device:OLD-1", "online").await.as_deref(),
        Some("1")
    );

    set_config(&bridge, "appendfsync", "everysec").await;
    wait_for_durability(&bridge, DurabilityStatus::WeakRefusing).await;
    let before = contents(&mut redis).await;
    let _new = DriverStream::open(&mut client, "drv-a", "new").await.unwrap();
    wait_until_held(&bridge).await;
    assert_eq!(contents(&mut redis).await, before, "written on a weak Redis");

    set_config(&bridge, "appendfsync", "always").await;
    within("the previous instance's device to go offline", DEADLINE, async {
        while hget(&mut redis, "cwp:device:OLD-1", "online").await.as_deref() != Some("0") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
