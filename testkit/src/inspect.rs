//! Looking into Redis from a test: what the fleet stored (its event
//! streams, `cwp:uploads`; on one Redis or a cluster) read back and checked against what the devices
//! themselves saw acknowledged, and an operator's `PUBLISH`. These fail
//! the test when Redis cannot be read or the check does not pass.

use controller_sim::device::{Device, UploadJob};
use controller_sim::verify::{
    Expectation, ExpectedUpload, Tally, UploadTally, UploadVerdict, Verdict, event_streams, field, read_entries,
    read_events, read_uploads,
};
use drover_redis::Target;
use drover_schema::event_fields;
use redis::aio::{ConnectionLike, MultiplexedConnection};

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

/// Every `(serial, event_id)` the deployment stored (every event stream of
/// its layout), in stream order, stream by stream.
pub async fn stored_events(redis: &mut impl ConnectionLike) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for stream in event_streams(redis).await.expect("cwp:layout is readable") {
        read_entries(redis, &stream, |fields| {
            let text = |name| {
                String::from_utf8(field(fields, name).expect("every entry has the field").to_vec()).expect("UTF-8")
            };
            out.push((
                text(event_fields::SERIAL),
                text(event_fields::EVENT_ID).parse().expect("event ids are decimal u64"),
            ));
        })
        .await
        .expect("the event streams are readable");
    }
    out
}

/// The exactly-once check of `devices` (each started `with_ack_log`)
/// against what the deployment at `redis` stored: lost, duplicated and
/// unexpected entries, counted.
pub async fn exactly_once_verdict(redis: impl Into<Target>, devices: &[Device]) -> Verdict {
    let mut tally = Tally::new(devices.iter().map(|device| Expectation {
        serial: *device.serial(),
        acked: device.ack_log().cloned().expect("devices keep an ack log"),
        highest_sent: device.highest_sent(),
    }));
    read_events(&redis.into(), &mut tally)
        .await
        .expect("the event streams are readable");
    tally.verdict()
}

/// Reads all of `cwp:events`, prints the verdict, and fails the test unless
/// every event the devices saw acknowledged is stored exactly once, none is
/// stored twice and none is stored that they never sent.
pub async fn assert_nothing_lost_or_duplicated(redis: impl Into<Target>, devices: &[Device]) -> Verdict {
    let verdict = exactly_once_verdict(redis, devices).await;
    eprintln!("{verdict}");
    assert!(verdict.passed(), "{verdict}");
    assert!(verdict.acked > 0, "the devices saw nothing acknowledged: {verdict}");
    verdict
}

/// Reads all of `cwp:uploads`, prints the verdict, and fails the test unless
/// every upload of `devices` (running `job`) that was reported complete is
/// recorded exactly once as sent, and nothing else of theirs is.
pub async fn assert_uploads_recorded_exactly_once(
    redis: impl Into<Target>,
    devices: &[Device],
    job: &UploadJob,
) -> UploadVerdict {
    let mut tally = UploadTally::new(devices.iter().filter_map(|device| ExpectedUpload::of(device, job)));
    read_uploads(&redis.into(), &mut tally)
        .await
        .expect("cwp:uploads is readable");
    let verdict = tally.verdict();
    eprintln!("{verdict}");
    assert!(verdict.passed(), "{verdict}");
    verdict
}
