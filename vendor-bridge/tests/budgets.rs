//! The bridge's byte budgets: streams that send faster than Redis stores
//! (here Redis is frozen with `SIGSTOP`) make the bridge stop reading once
//! a stream holds `BRIDGE_MAX_STREAM_BYTES` of unanswered batches, or all
//! streams `BRIDGE_MAX_QUEUED_BYTES`; HTTP/2 flow control holds the
//! drivers back. Nothing is dropped: once Redis goes on, every batch is
//! answered, in order, and every event is stored once.
//!
//! The control: a bridge with the default budgets (32 MiB, 256 MiB) under
//! the same load reads every batch, far past the small budgets, so the
//! measurement would catch a bridge that ignored them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use drover_testkit::redis::RedisServer;
use drover_testkit::wait::eventually;
use support::{Bridge, DEADLINE, DriverStream, event, stored_events};

/// One event's body: each batch is one event of this size (a little more
/// on the wire).
const BODY: usize = 64 << 10;
/// Batches each stream sends while Redis is frozen: 1.5 MiB, more than a
/// stream's budget here.
const BATCHES: u64 = 24;
const STREAM_BUDGET: u64 = 1 << 20;
const ALL_BUDGET: u64 = 3 << 19;

/// Redis stopped (`SIGSTOP`) until dropped (`SIGCONT`).
struct Frozen(u32);

impl Frozen {
    fn freeze(redis: &RedisServer) -> Self {
        signal(redis.pid(), "-STOP");
        Self(redis.pid())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill").arg(signal).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// Sends [`BATCHES`] batches of one [`BODY`]-byte event of `serial`, ids
/// from 2 on (id 1 was the warm-up).
async fn flood(stream: &DriverStream, serial: &str) {
    let body = vec![b'x'; BODY];
    for id in 2..BATCHES + 2 {
        stream.send(id, vec![event(serial, id, 1, &body)]).await;
    }
}

/// A stream of `driver` whose first batch (event 1 of `serial`) is stored.
async fn warm_stream(bridge: &Bridge, driver: &str, serial: &str) -> DriverStream {
    let mut client = bridge.client().await;
    let mut stream = DriverStream::open(&mut client, driver, "inst-1").await.unwrap();
    assert_eq!(stream.store(1, vec![event(serial, 1, 1, b"warm")]).await.stored, 1);
    stream
}

/// Every batch of `stream` answered in order, each of its events stored or
/// known as a duplicate (a call that timed out while Redis was frozen is
/// stored once and then found stored when retried).
async fn assert_all_answered(stream: &mut DriverStream) {
    for id in 2..BATCHES + 2 {
        let durable = stream.durable().await;
        assert_eq!(durable.batch_id, id, "answers come in order");
        assert_eq!(durable.stored + durable.duplicates, 1);
    }
}

async fn bridge_with_budgets(stream: u64, all: u64) -> Bridge {
    Bridge::start_with(RedisServer::start().unwrap(), |config| {
        config.max_stream_bytes = stream;
        config.max_queued_bytes = all;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_faster_than_redis_are_held_within_the_byte_budgets_and_lose_nothing() {
    let bridge = bridge_with_budgets(STREAM_BUDGET, ALL_BUDGET).await;
    let mut a = warm_stream(&bridge, "drv-a", "CTRL-A").await;
    let mut b = warm_stream(&bridge, "drv-b", "CTRL-B").await;
    let stats = bridge.stats.clone();
    // A batch's bytes on the wire, rounded up as the budgets count them.
    let batch = (BODY + 1024) as u64;

    let frozen = Frozen::freeze(&bridge.redis);
    // One stream: its reader stops at its own budget.
    flood(&a, "CTRL-A").await;
    eventually("stream a's reader to wait for room", DEADLINE, || async {
        stats.snapshot().streams_over_budget == 1
    })
    .await;
    let held = stats.snapshot();
    assert!(
        held.queued_bytes <= STREAM_BUDGET && held.queued_bytes > STREAM_BUDGET - 2 * batch,
        "{held:?}"
    );
    // Both: their readers stop at the budget of all streams, below the sum
    // of theirs.
    flood(&b, "CTRL-B").await;
    eventually("both readers to wait for room", DEADLINE, || async {
        stats.snapshot().streams_over_budget == 2
    })
    .await;
    let held = stats.snapshot();
    eprintln!(
        "held {} bytes, at most {} (budgets: {STREAM_BUDGET} per stream, {ALL_BUDGET} in all; sent {})",
        held.queued_bytes,
        held.queued_bytes_peak,
        2 * BATCHES * BODY as u64
    );
    assert!(
        held.queued_bytes <= ALL_BUDGET && held.queued_bytes > ALL_BUDGET - 2 * batch,
        "{held:?}"
    );
    assert!(held.queued_bytes_peak <= ALL_BUDGET, "{held:?}");

    drop(frozen);
    assert_all_answered(&mut a).await;
    assert_all_answered(&mut b).await;
    let mut redis = bridge.redis().await;
    let mut expected: Vec<(String, String)> = Vec::new();
    for serial in ["CTRL-A", "CTRL-B"] {
        expected.extend((1..BATCHES + 2).map(|id| (serial.to_owned(), id.to_string())));
    }
    let mut stored = stored_events(&mut redis).await;
    stored.sort();
    expected.sort();
    assert_eq!(stored, expected, "every event stored once");
    assert_eq!(stats.snapshot().queued_bytes, 0, "every reservation given back");
    assert!(stats.snapshot().queued_bytes_peak <= ALL_BUDGET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_with_the_default_budgets_the_same_stream_is_read_whole() {
    let bridge = Bridge::start().await;
    let mut a = warm_stream(&bridge, "drv-a", "CTRL-A").await;
    let stats = bridge.stats.clone();
    let frozen = Frozen::freeze(&bridge.redis);
    flood(&a, "CTRL-A").await;
    eventually("the bridge to read every batch", DEADLINE, || async {
        stats.snapshot().queued_bytes >= BATCHES * BODY as u64
    })
    .await;
    assert_eq!(stats.snapshot().streams_over_budget, 0);
    assert!(stats.snapshot().queued_bytes_peak > ALL_BUDGET);
    drop(frozen);
    assert_all_answered(&mut a).await;
}
