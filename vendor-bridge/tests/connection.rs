//! The bridge's Redis connection mends itself: a connection Redis dropped
//! is dialled again, and so is a login Redis refused, so that fixing the
//! bridge's ACL user is enough to let it back in (no restart). Each call
//! dials at most once, so every step is one call; nothing waits on time.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::time::Duration;

use drover_testkit::redis::RedisServer;
use redis::aio::MultiplexedConnection;
use vendor_bridge::store::Store;

const DEADLINE: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {DEADLINE:?} waiting for {what}"))
}

async fn admin(redis: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn run(admin: &mut MultiplexedConnection, command: &[&str]) {
    let mut cmd = redis::cmd(command[0]);
    for arg in &command[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async::<redis::Value>(admin).await.unwrap();
}

#[tokio::test]
async fn a_bridge_refused_by_redis_gets_in_once_its_user_is_fixed() {
    let redis = RedisServer::start().unwrap();
    let mut admin = admin(&redis).await;
    run(
        &mut admin,
        &["ACL", "SETUSER", "drover-bridge", "on", ">old", "~*", "&*", "+@all"],
    )
    .await;
    let store = Store::for_redis(&format!("redis://drover-bridge:new@127.0.0.1:{}", redis.port())).unwrap();

    for attempt in 1..=2 {
        let refused = within("PING", store.ping()).await.unwrap_err();
        assert!(refused.is_refused_by_acl(), "attempt {attempt}: {refused}");
    }
    run(&mut admin, &["ACL", "SETUSER", "drover-bridge", ">new"]).await;
    within("PING", store.ping()).await.unwrap();
}

#[tokio::test]
async fn a_connection_redis_dropped_is_replaced() {
    let redis = RedisServer::start().unwrap();
    let mut admin = admin(&redis).await;
    let store = Store::for_redis(&redis.url()).unwrap();
    within("PING", store.ping()).await.unwrap();

    // Every client but the admin's: the bridge's connection is gone.
    run(&mut admin, &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]).await;
    // The call that finds it gone fails (and dials again); the next one
    // gets through.
    let _ = within("PING", store.ping()).await;
    within("PING", store.ping()).await.unwrap();
}
