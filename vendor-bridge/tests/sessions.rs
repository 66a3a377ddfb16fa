//! The device registry (`cwp:device:{serial}`): `OpenSession` installs a
//! session, returns the serial's high-water mark and supersedes a previous
//! live session fleet-wide; `CloseSession` ends only the current session; a
//! driver's new process instance marks its predecessor's devices offline.
#![allow(clippy::unwrap_used)]

mod support;

use drover_proto::bridge::vendor_bridge_client::VendorBridgeClient;
use drover_proto::bridge::{CloseSessionRequest, OpenSessionReply, OpenSessionRequest};
use support::{Bridge, DriverStream, counts, event, hget, members, next_message};
use tonic::Code;
use tonic::transport::Channel;

async fn open(
    client: &mut VendorBridgeClient<Channel>,
    serial: &str,
    session: u8,
    driver: &str,
    instance: &str,
) -> OpenSessionReply {
    client
        .open_session(OpenSessionRequest {
            serial: serial.to_owned(),
            session_id: vec![session; 16],
            driver_id: driver.to_owned(),
            peer: "192.0.2.7:40000".to_owned(),
            firmware: "fw-1.2".to_owned(),
            connected_ms: 1_700_000_000_000,
            instance_id: instance.to_owned(),
        })
        .await
        .expect("OpenSession succeeds")
        .into_inner()
}

async fn close(client: &mut VendorBridgeClient<Channel>, serial: &str, session: u8, driver: &str) -> bool {
    client
        .close_session(CloseSessionRequest {
            serial: serial.to_owned(),
            session_id: vec![session; 16],
            driver_id: driver.to_owned(),
            last_seen_ms: 1_700_000_555_000,
        })
        .await
        .expect("CloseSession succeeds")
        .into_inner()
        .was_current
}

#[tokio::test]
async fn open_session_registers_the_session_and_returns_the_last_stored_event_id() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;

    let fresh = open(&mut client, "NEW-1", 0xAA, "drv-a", "inst-1").await;
    assert_eq!((fresh.last_event_id, fresh.superseded_other), (0, false));

    let mut stream = DriverStream::open(&mut client, "drv-a", "inst-1").await.unwrap();
    let big = u64::MAX - 5;
    assert_eq!(
        counts(
            &stream
                .store(1, vec![event("NEW-1", 41, 1, b""), event("NEW-1", big, 1, b"")])
                .await
        ),
        (1, 2, 0)
    );
    let again = open(&mut client, "NEW-1", 0xAA, "drv-a", "inst-1").await;
    assert_eq!(
        (again.last_event_id, again.superseded_other),
        (big, false),
        "same session: nothing to supersede"
    );

    let device = "cwp:device:NEW-1";
    for (field, value) in [
        ("online", "1"),
        ("driver", "drv-a"),
        ("instance", "inst-1"),
        ("session", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
        ("peer", "192.0.2.7:40000"),
        ("firmware", "fw-1.2"),
        ("connected_ms", "1700000000000"),
    ] {
        assert_eq!(hget(&mut redis, device, field).await.as_deref(), Some(value), "{field}");
    }
    assert_eq!(members(&mut redis, "cwp:driver-devices:drv-a").await, ["NEW-1"]);
}

#[tokio::test]
async fn a_new_session_supersedes_the_live_one_on_its_drivers_channel() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;
    let mut driver_a = bridge.subscribe("cwp:driver:drv-a").await;

    assert!(
        !open(&mut client, "CTRL-9", 0x01, "drv-a", "inst-a")
            .await
            .superseded_other
    );
    // The device reconnects through the load balancer to another driver.
    assert!(
        open(&mut client, "CTRL-9", 0x02, "drv-b", "inst-b")
            .await
            .superseded_other
    );

    let notice: serde_json::Value = serde_json::from_str(&next_message(&mut driver_a).await).unwrap();
    assert_eq!(
        notice,
        serde_json::json!({"type": "supersede", "serial": "CTRL-9", "session": "01010101010101010101010101010101"})
    );
    assert_eq!(
        hget(&mut redis, "cwp:device:CTRL-9", "driver").await.as_deref(),
        Some("drv-b")
    );
    assert!(members(&mut redis, "cwp:driver-devices:drv-a").await.is_empty());
    assert_eq!(members(&mut redis, "cwp:driver-devices:drv-b").await, ["CTRL-9"]);

    // Superseded on the same driver: the driver's own channel, set kept.
    let mut driver_b = bridge.subscribe("cwp:driver:drv-b").await;
    assert!(
        open(&mut client, "CTRL-9", 0x03, "drv-b", "inst-b")
            .await
            .superseded_other
    );
    let notice: serde_json::Value = serde_json::from_str(&next_message(&mut driver_b).await).unwrap();
    assert_eq!(notice["session"], "02020202020202020202020202020202");
    assert_eq!(members(&mut redis, "cwp:driver-devices:drv-b").await, ["CTRL-9"]);
}

#[tokio::test]
async fn an_offline_session_is_not_superseded() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    open(&mut client, "CTRL-3", 0x01, "drv-a", "inst-a").await;
    assert!(close(&mut client, "CTRL-3", 0x01, "drv-a").await);
    assert!(
        !open(&mut client, "CTRL-3", 0x02, "drv-b", "inst-b")
            .await
            .superseded_other
    );
}

#[tokio::test]
async fn close_session_ends_only_the_current_session() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;
    open(&mut client, "CTRL-5", 0x01, "drv-a", "inst-a").await;
    open(&mut client, "CTRL-5", 0x02, "drv-b", "inst-b").await;

    // The superseded session's close arrives late: the registry keeps the new one.
    assert!(!close(&mut client, "CTRL-5", 0x01, "drv-a").await);
    assert_eq!(
        hget(&mut redis, "cwp:device:CTRL-5", "online").await.as_deref(),
        Some("1")
    );
    assert_eq!(members(&mut redis, "cwp:driver-devices:drv-b").await, ["CTRL-5"]);

    assert!(close(&mut client, "CTRL-5", 0x02, "drv-b").await);
    assert_eq!(
        hget(&mut redis, "cwp:device:CTRL-5", "online").await.as_deref(),
        Some("0")
    );
    assert_eq!(
        hget(&mut redis, "cwp:device:CTRL-5", "last_seen_ms").await.as_deref(),
        Some("1700000555000")
    );
    assert!(members(&mut redis, "cwp:driver-devices:drv-b").await.is_empty());
}

#[tokio::test]
async fn a_restarted_driver_marks_only_its_previous_instances_devices_offline() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;

    // drv-a's first process: two devices and its stream.
    DriverStream::open(&mut client, "drv-a", "old").await.unwrap();
    open(&mut client, "OLD-1", 0x01, "drv-a", "old").await;
    open(&mut client, "OLD-2", 0x02, "drv-a", "old").await;
    // Another driver's device, which must not be touched.
    open(&mut client, "OTHER", 0x03, "drv-b", "b-1").await;

    // drv-a restarts; its new process registers a device before its stream says hello.
    open(&mut client, "NEW-1", 0x04, "drv-a", "new").await;
    DriverStream::open(&mut client, "drv-a", "new").await.unwrap();

    for (serial, online) in [("OLD-1", "0"), ("OLD-2", "0"), ("NEW-1", "1"), ("OTHER", "1")] {
        let device = format!("cwp:device:{serial}");
        assert_eq!(
            hget(&mut redis, &device, "online").await.as_deref(),
            Some(online),
            "{serial}"
        );
    }
    assert_eq!(members(&mut redis, "cwp:driver-devices:drv-a").await, ["NEW-1"]);
    assert_eq!(members(&mut redis, "cwp:driver-devices:drv-b").await, ["OTHER"]);
    let marker: String = redis::cmd("GET")
        .arg("cwp:driver-instance:drv-a")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(marker, "new");

    // The same instance reconnecting its stream changes nothing.
    open(&mut client, "NEW-2", 0x05, "drv-a", "new").await;
    DriverStream::open(&mut client, "drv-a", "new").await.unwrap();
    assert_eq!(
        members(&mut redis, "cwp:driver-devices:drv-a").await,
        ["NEW-1", "NEW-2"]
    );
}

#[tokio::test]
async fn a_session_request_with_an_invalid_serial_is_refused() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let err = client
        .open_session(OpenSessionRequest {
            serial: "../etc".to_owned(),
            session_id: vec![1; 16],
            driver_id: "drv-a".to_owned(),
            instance_id: "i".to_owned(),
            ..OpenSessionRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .close_session(CloseSessionRequest {
            serial: "CTRL-1".to_owned(),
            session_id: vec![1; 15],
            driver_id: "drv-a".to_owned(),
            last_seen_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "a session id is 16 bytes");
}
