//! Looking into Redis from a test: what the fleet stored (`cwp:events`,
//! `cwp:uploads`) read back and checked against what the devices
//! themselves saw acknowledged, and an operator's `PUBLISH`. These fail
//! the test when Redis cannot be read or the check does not pass.

use controller_sim::device::{Device, UploadJob};
use controller_sim::verify::{
    Expectation, ExpectedUpload, Tally, UploadTally, UploadVerdict, Verdict, read_stream, read_uploads,
};
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

/// Every `(serial, event_id)` in `cwp:events`, in stream order.
pub async fn stored_events(redis: &mut MultiplexedConnection) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg("cwp:events")
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(10_000)
            .query_async(redis)
            .await
            .expect("XRANGE cwp:events");
        let Some(last) = page.ids.last() else { break };
        start = format!("({}", last.id);
        for entry in &page.ids {
            let serial: String = entry.get("serial").expect("every entry has a serial");
            let event_id: String = entry.get("event_id").expect("every entry has an event_id");
            out.push((serial, event_id.parse().expect("event ids are decimal u64")));
        }
    }
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
    read_stream(redis_url, controller_sim::verify::EVENTS_STREAM, &mut tally)
        .await
        .expect("cwp:events is readable");
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
