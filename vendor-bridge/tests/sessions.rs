//! The device registry (`cwp:device:{serial}`): `OpenSession` installs a
//! session, returns the serial's high-water mark and supersedes a previous
//! live session fleet-wide; `CloseSession` ends only the current session; a
//! driver's new process instance marks its predecessor's devices offline.
//! `OpenSessions` and `CloseSessions` do the same for many sessions in one
//! call, each on its own.
#![allow(clippy::unwrap_used)]

mod support;

use drover_proto::bridge::vendor_bridge_client::VendorBridgeClient;
use drover_proto::bridge::{
    CloseSessionRequest, CloseSessionsRequest, OpenSessionReply, OpenSessionRequest, OpenSessionsRequest,
    close_session_outcome, open_session_outcome,
};
use support::{Bridge, DriverStream, counts, event, hget, members, next_message};
use tonic::Code;
use tonic::transport::Channel;

fn opening(serial: &str, session: u8, driver: &str, instance: &str) -> OpenSessionRequest {
    OpenSessionRequest {
        serial: serial.to_owned(),
        session_id: vec![session; 16],
        driver_id: driver.to_owned(),
        peer: "192.0.2.7:40000".to_owned(),
        firmware: "fw-1.2".to_owned(),
        connected_ms: 1_700_000_000_000,
        instance_id: instance.to_owned(),
    }
}

fn closing(serial: &str, session: u8, driver: &str) -> CloseSessionRequest {
    CloseSessionRequest {
        serial: serial.to_owned(),
        session_id: vec![session; 16],
        driver_id: driver.to_owned(),
        last_seen_ms: 1_700_000_555_000,
    }
}

async fn open(
    client: &mut VendorBridgeClient<Channel>,
    serial: &str,
    session: u8,
    driver: &str,
    instance: &str,
) -> OpenSessionReply {
    client
        .open_session(opening(serial, session, driver, instance))
        .await
        .expect("OpenSession succeeds")
        .into_inner()
}

async fn close(client: &mut VendorBridgeClient<Channel>, serial: &str, session: u8, driver: &str) -> bool {
    client
        .close_session(closing(serial, session, driver))
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

#[tokio::test]
async fn open_sessions_installs_each_session_as_open_session_would_and_refuses_only_the_bad_ones() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;
    let mut stream = DriverStream::open(&mut client, "drv-a", "inst-a").await.unwrap();
    assert_eq!(counts(&stream.store(1, vec![event("B-2", 7, 1, b"")]).await), (1, 1, 0));
    let mut driver_a = bridge.subscribe("cwp:driver:drv-a").await;

    let sessions = vec![
        opening("B-1", 0x01, "drv-a", "inst-a"),
        opening("B-2", 0x02, "drv-a", "inst-a"),
        opening("../etc", 0x03, "drv-a", "inst-a"),
        // The same serial again, later in the same call: supersedes the first.
        opening("B-1", 0x04, "drv-a", "inst-a"),
    ];
    let outcomes = client
        .open_sessions(OpenSessionsRequest { sessions })
        .await
        .expect("OpenSessions succeeds")
        .into_inner()
        .outcomes;
    let outcomes: Vec<_> = outcomes.into_iter().map(|outcome| outcome.outcome.unwrap()).collect();
    let opened = |index: usize| match &outcomes[index] {
        open_session_outcome::Outcome::Opened(opened) => (opened.last_event_id, opened.superseded_other),
        open_session_outcome::Outcome::Error(error) => panic!("session {index} refused: {error:?}"),
    };
    assert_eq!(opened(0), (0, false));
    assert_eq!(opened(1), (7, false), "WELCOME's last_event_id, as OpenSession");
    match &outcomes[2] {
        open_session_outcome::Outcome::Error(error) => {
            assert_eq!(error.code, Code::InvalidArgument as i32);
            assert!(error.message.contains("../etc"), "{}", error.message);
        }
        open_session_outcome::Outcome::Opened(_) => panic!("an invalid serial was installed"),
    }
    assert_eq!(opened(3), (0, true), "in order: the second B-1 supersedes the first");

    let notice: serde_json::Value = serde_json::from_str(&next_message(&mut driver_a).await).unwrap();
    assert_eq!(notice["session"], "01010101010101010101010101010101");
    assert_eq!(
        hget(&mut redis, "cwp:device:B-1", "session").await.as_deref(),
        Some("04040404040404040404040404040404")
    );
    let mut installed = members(&mut redis, "cwp:driver-devices:drv-a").await;
    installed.sort();
    assert_eq!(installed, ["B-1", "B-2"]);

    let sessions = vec![
        closing("B-1", 0x01, "drv-a"),
        closing("B-1", 0x04, "drv-a"),
        closing("B-2", 0x02, "drv-a"),
        CloseSessionRequest {
            session_id: vec![2; 15],
            ..closing("B-2", 0x02, "drv-a")
        },
    ];
    let outcomes = client
        .close_sessions(CloseSessionsRequest { sessions })
        .await
        .expect("CloseSessions succeeds")
        .into_inner()
        .outcomes;
    let outcomes: Vec<_> = outcomes
        .into_iter()
        .map(|outcome| match outcome.outcome.unwrap() {
            close_session_outcome::Outcome::Closed(closed) => Ok(closed.was_current),
            close_session_outcome::Outcome::Error(error) => Err(error.code),
        })
        .collect();
    assert_eq!(
        outcomes,
        [Ok(false), Ok(true), Ok(true), Err(Code::InvalidArgument as i32)],
        "the superseded session's close changes nothing; a 15-byte session id is refused alone"
    );
    assert_eq!(hget(&mut redis, "cwp:device:B-1", "online").await.as_deref(), Some("0"));
    assert_eq!(hget(&mut redis, "cwp:device:B-2", "online").await.as_deref(), Some("0"));
}

#[tokio::test]
async fn a_batch_of_no_sessions_or_too_many_is_refused_whole() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let err = client
        .open_sessions(OpenSessionsRequest { sessions: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let sessions = (0..1001)
        .map(|n| opening(&format!("MANY-{n}"), 1, "drv-a", "inst-a"))
        .collect();
    let err = client
        .open_sessions(OpenSessionsRequest { sessions })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("1-1000"), "{}", err.message());
    let sessions = (0..1001).map(|n| closing(&format!("MANY-{n}"), 1, "drv-a")).collect();
    let err = client
        .close_sessions(CloseSessionsRequest { sessions })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut redis = bridge.redis().await;
    assert!(members(&mut redis, "cwp:driver-devices:drv-a").await.is_empty());
}
