//! Looking into Redis from a test: what the fleet stored (`cwp:events`,
//! `cwp:uploads`) read back and checked against what the devices
//! themselves saw acknowledged, and an operator's `PUBLISH`. These fail
//! the test when Redis cannot be read or the check does not pass.

use controller_sim::device::{Device, UploadJob};
use std::time::Duration;

use controller_sim::verify::{Expectation, ExpectedUpload, Tally, UploadTally, UploadVerdict, Verdict, read_uploads};
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

/// `PUBLISH channel message`, as an operator sends it; how many
/// subscribers received it.
pub async fn publish(redis: &mut MultiplexedConnection, channel: &str, message: &str) -> i64 {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(message)
        .query_async(redis)
        .await
        .expect("PUBLISH")
}

/// Entries per `XRANGE` page: a page of the largest events the tests
/// send (16 KiB bodies) is then 8 MiB, which arrives well within
/// [`PAGE_WAIT`]. (Pages of 10,000 such events, 160 MiB, outlasted the
/// Redis client's default response timeout of 500 ms on a loaded machine.)
const PAGE: usize = 500;

/// How long one page of `cwp:events` may take to arrive: generous, only
/// there to fail instead of hanging.
const PAGE_WAIT: Duration = Duration::from_secs(30);

/// Hands every entry of `cwp:events` to `visit`, in stream order, a page at
/// a time.
async fn each_event(redis: &mut MultiplexedConnection, mut visit: impl FnMut(&redis::streams::StreamId)) {
    let mut start = "-".to_owned();
    loop {
        let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(controller_sim::verify::EVENTS_STREAM)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(redis)
            .await
            .expect("XRANGE cwp:events");
        page.ids.iter().for_each(&mut visit);
        match page.ids.last() {
            Some(last) if page.ids.len() == PAGE => start = format!("({}", last.id),
            _ => return,
        }
    }
}

/// Every `(serial, event_id)` in `cwp:events`, in stream order.
pub async fn stored_events(redis: &mut MultiplexedConnection) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    each_event(redis, |entry| {
        let serial: String = entry.get("serial").expect("every entry has a serial");
        let event_id: String = entry.get("event_id").expect("every entry has an event_id");
        out.push((serial, event_id.parse().expect("event ids are decimal u64")));
    })
    .await;
    out
}

/// The exactly-once check of `devices` (each started `with_ack_log`)
/// against `cwp:events`: lost, duplicated and unexpected entries, counted.
pub async fn exactly_once_verdict(redis_url: &str, devices: &[Device]) -> Verdict {
    let mut tally = Tally::new(devices.iter().map(|device| Expectation {
        serial: *device.serial(),
        acked: device.ack_log().cloned().expect("devices keep an ack log"),
        highest_sent: device.highest_sent(),
    }));
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(PAGE_WAIT));
    let mut redis = redis::Client::open(redis_url)
        .expect("a valid Redis URL")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("cwp:events is readable");
    each_event(&mut redis, |entry| {
        match (entry.get::<Vec<u8>>("serial"), entry.get::<Vec<u8>>("event_id")) {
            (Some(serial), Some(event_id)) => tally.observe(&serial, &event_id),
            _ => tally.observe_malformed(),
        }
    })
    .await;
    tally.verdict()
}

/// Reads all of `cwp:events`, prints the verdict, and fails the test unless
/// every event the devices saw acknowledged is stored exactly once, none is
/// stored twice and none is stored that they never sent.
pub async fn assert_nothing_lost_or_duplicated(redis_url: &str, devices: &[Device]) -> Verdict {
    let verdict = exactly_once_verdict(redis_url, devices).await;
    eprintln!("{verdict}");
    assert!(verdict.passed(), "{verdict}");
    assert!(verdict.acked > 0, "the devices saw nothing acknowledged: {verdict}");
    verdict
}

/// Reads all of `cwp:uploads`, prints the verdict, and fails the test unless
/// every upload of `devices` (running `job`) that was reported complete is
/// recorded exactly once as sent, and nothing else of theirs is.
pub async fn assert_uploads_recorded_exactly_once(
    redis_url: &str,
    devices: &[Device],
    job: &UploadJob,
) -> UploadVerdict {
    let mut tally = UploadTally::new(devices.iter().filter_map(|device| ExpectedUpload::of(device, job)));
    read_uploads(redis_url, &mut tally)
        .await
        .expect("cwp:uploads is readable");
    let verdict = tally.verdict();
    eprintln!("{verdict}");
    assert!(verdict.passed(), "{verdict}");
    verdict
}
