//! The HTTP gateway's use of the event stream, against a real
//! vendor-bridge and Redis: each submission is a batch of its own, and its
//! answer counts its events only, however many others wait beside it.
//!
//! Needs `target/debug/vendor-bridge` (`cargo build -p vendor-bridge`)
//! and `redis-server` on PATH.

use std::time::Duration;

use drover_edge::{BatchStream, BridgeClient, StreamMetrics, batch_stream, bridge};
use drover_proto::bridge::Event;
use drover_service::drain;
use drover_testkit::components::{BridgeProcess, Logs};
use drover_testkit::inspect::stored_events;
use drover_testkit::net::free_port;
use drover_testkit::redis::RedisServer;
use drover_testkit::wait::within;
use tokio_util::task::TaskTracker;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Events `ids` of `serial`, as one request would carry them.
fn request(serial: &str, ids: std::ops::RangeInclusive<u64>) -> Vec<Event> {
    ids.map(|event_id| Event {
        serial: serial.to_owned(),
        event_id,
        time_ms: 1_700_000_000_000 + event_id,
        kind: 1,
        body: bytes::Bytes::from(format!("reading {event_id}")),
        received_ms: 1_700_000_000_000,
    })
    .collect()
}

/// A stream to the bridge at `url`, its tasks, and the signal that stops it.
fn stream_to(url: &str) -> (BatchStream, TaskTracker, drain::Signal) {
    let tasks = TaskTracker::new();
    let (stop, watch) = drain::channel();
    let client = BridgeClient::new(
        bridge::channel(url, None).expect("a valid URL"),
        None,
        "gateway-test".to_owned(),
        "instance-1".to_owned(),
        &tasks,
        &watch,
    );
    let (events, stream) = batch_stream(client, StreamMetrics::default(), watch);
    tasks.spawn(stream.run());
    (events, tasks, stop)
}

#[tokio::test]
async fn each_submission_is_answered_with_its_own_counts() {
    let redis = RedisServer::start().expect("redis-server");
    let bridge = BridgeProcess::start(&redis.url(), &Logs::Inherit, &[]).expect("vendor-bridge");
    let (events, tasks, stop) = stream_to(&bridge.url());

    // Twenty requests at once, request n carrying n + 1 events of its own
    // serial: more than the stream keeps in flight (8), so most of them
    // wait unsent beside each other, where a merging source would join
    // them. Each answer must still count its own request only.
    let answers = (0..20u64).map(|n| events.store(request(&format!("GW-{n}"), 1..=n + 1)));
    let answers = within("twenty requests stored", TIMEOUT, futures::future::join_all(answers)).await;
    for (n, answer) in (0..20u32).zip(answers) {
        let durable = answer.expect("stored");
        assert_eq!((durable.stored, durable.duplicates), (n + 1, 0), "request {n}");
    }

    // The control: a resent request overlapping what is stored is answered
    // with its duplicates, so the counts do say what this batch did.
    let durable = within("a resend stored", TIMEOUT, events.store(request("GW-3", 2..=6)))
        .await
        .expect("stored");
    assert_eq!((durable.stored, durable.duplicates), (2, 3));

    let mut redis_conn = redis::Client::open(redis.url())
        .expect("redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let stored = stored_events(&mut redis_conn).await;
    assert_eq!(stored.len(), (1..=20).sum::<usize>() + 2, "every event once");

    stop.signal();
    tasks.close();
    within("the stream stops", TIMEOUT, tasks.wait()).await;
}

#[tokio::test]
async fn a_batch_waits_out_a_bridge_outage_and_is_stored_once_it_returns() {
    let redis = RedisServer::start().expect("redis-server");
    let port = free_port().expect("a free port");
    let (events, tasks, stop) = stream_to(&format!("http://127.0.0.1:{port}"));

    let answer = events.submit(request("GW-1", 1..=3));
    let bridge = BridgeProcess::start_on(port, &redis.url(), &Logs::Inherit, &[]).expect("vendor-bridge");
    let durable = within("stored once the bridge is up", TIMEOUT, answer)
        .await
        .expect("stored");
    assert_eq!((durable.stored, durable.duplicates), (3, 0));

    stop.signal();
    tasks.close();
    within("the stream stops", TIMEOUT, tasks.wait()).await;
    drop(bridge);
}

#[tokio::test]
async fn a_batch_not_stored_before_the_stream_stops_is_not_stored_not_lost_silently() {
    // No bridge at all: the batch can only be abandoned, after the grace.
    let port = free_port().expect("a free port");
    let (events, tasks, stop) = stream_to(&format!("http://127.0.0.1:{port}"));
    let answer = events.submit(request("GW-1", 1..=3));
    stop.signal();
    let grace = drover_edge::stream::STOP_GRACE + TIMEOUT;
    assert!(
        within("the answer", grace, answer).await.is_err(),
        "abandoned at the end of the grace, never reported durable"
    );
    tasks.close();
    within("the stream stops", TIMEOUT, tasks.wait()).await;

    // And once stopped, a submission is answered at once, not left waiting.
    assert_eq!(
        within("the answer", TIMEOUT, events.store(request("GW-1", 1..=3))).await,
        Err(drover_edge::NotStored)
    );
}
