//! CWP/1 §3 Events end to end: device → driver → gRPC → vendor-bridge →
//! Redis → ACK, with every acknowledgement checked against what Redis holds.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use controller_sim::client::{ClientError, Connection};
use cwp::{DeviceFrame, Event, ServerFrame};
use drover_testkit::device::{connect, serial};
use drover_testkit::fleet::{TestFleet, runtime};
use drover_testkit::inspect::stored_events;

fn event(event_id: u64) -> DeviceFrame {
    DeviceFrame::Event(Event {
        event_id,
        time_ms: 1_767_225_600_000 + event_id,
        kind: 7,
        body: Bytes::from(format!("{{\"n\":{event_id}}}")),
    })
}

/// Reads frames until an ACK covering `event_id` arrives; returns that ACK's id.
async fn await_ack(connection: &mut Connection, event_id: u64) -> u64 {
    loop {
        match connection.recv_timeout(Duration::from_secs(20)).await {
            Ok(ServerFrame::Ack(ack)) if ack.event_id >= event_id => return ack.event_id,
            Ok(ServerFrame::Ack(_)) => {}
            other => panic!("waiting for ACK {event_id}, got {other:?}"),
        }
    }
}

/// Sends `ids` respecting the window, and waits for the ACK of the last one.
async fn send_acked(connection: &mut Connection, ids: std::ops::RangeInclusive<u64>, window: usize) {
    let ids: Vec<u64> = ids.collect();
    for chunk in ids.chunks(window) {
        let frames: Vec<DeviceFrame> = chunk.iter().map(|&id| event(id)).collect();
        connection.send_all(&frames).await.unwrap();
        await_ack(connection, *chunk.last().unwrap()).await;
    }
}

#[test]
fn ten_thousand_events_from_ten_devices_are_all_acknowledged_and_stored_exactly_once() {
    let fleet = TestFleet::start(1, &[]);
    runtime().block_on(async {
        let devices = (0..10).map(|i| {
            let addr = fleet.addr();
            tokio::spawn(async move {
                let serial = serial(&format!("CTRL-{i:04}"));
                let (mut connection, welcome) = connect(addr, &serial).await;
                send_acked(&mut connection, 1..=1000, usize::from(welcome.event_window)).await;
            })
        });
        for device in devices.collect::<Vec<_>>() {
            device.await.unwrap();
        }
        let stored = stored_events(&mut fleet.redis().await).await;
        assert_eq!(stored.len(), 10_000);
        let unique: HashSet<_> = stored.iter().collect();
        assert_eq!(unique.len(), 10_000, "no event is stored twice");
        for i in 0..10 {
            let serial = format!("CTRL-{i:04}");
            let ids: Vec<u64> = stored.iter().filter(|(s, _)| *s == serial).map(|(_, id)| *id).collect();
            assert_eq!(
                ids,
                (1..=1000).collect::<Vec<_>>(),
                "{serial}'s events are stored in id order"
            );
        }
    });
}

/// The oldest entry of `cwp:events`.
async fn first_stored(fleet: &TestFleet) -> redis::streams::StreamId {
    let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("cwp:events")
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut fleet.redis().await)
        .await
        .unwrap();
    page.ids.into_iter().next().expect("an event is stored")
}

#[test]
fn stored_fields_are_exactly_what_the_device_sent() {
    let fleet = TestFleet::start(1, &[]);
    runtime().block_on(async {
        let (mut connection, _) = connect(fleet.addr(), &serial("CTRL-0042")).await;
        let body = Bytes::from_static(b"\x00\xff binary \x01");
        connection
            .send(&DeviceFrame::Event(Event {
                event_id: 42,
                time_ms: 1_767_225_600_000,
                kind: 7,
                body: body.clone(),
            }))
            .await
            .unwrap();
        assert_eq!(await_ack(&mut connection, 42).await, 42);
        let entry = &first_stored(&fleet).await;
        let field = |name: &str| -> Vec<u8> { entry.get(name).unwrap() };
        assert_eq!(field("serial"), b"CTRL-0042");
        assert_eq!(field("event_id"), b"42");
        assert_eq!(field("time_ms"), b"1767225600000");
        assert_eq!(field("kind"), b"7");
        assert_eq!(field("body"), body.to_vec());
        assert_eq!(field("driver"), fleet.drivers[0].driver_id().as_bytes());
        assert!(String::from_utf8(field("received_ms")).unwrap().parse::<u64>().unwrap() > 0);
    });
}

/// DRIVER_MAX_PAYLOAD may be as large as one message to the bridge allows
/// (`drover_edge::batch_limits::MAX_EVENT_BODY_BYTES`, about 14.8 MiB); an
/// event that large crosses gRPC and Redis and is acknowledged. One byte
/// more is a configuration error (driver/tests/cli.rs).
#[test]
fn an_event_as_large_as_the_largest_payload_limit_is_stored_and_acknowledged() {
    let largest = drover_edge::batch_limits::MAX_EVENT_BODY_BYTES;
    let fleet = TestFleet::start(1, &[("DRIVER_MAX_PAYLOAD", &largest.to_string())]);
    runtime().block_on(async {
        let (mut connection, welcome) = connect(fleet.addr(), &serial("CTRL-0042")).await;
        assert_eq!(welcome.max_payload as usize, largest);
        // The sealed EVENT payload: its 18 bytes of fields, the body, the
        // 8-byte tag.
        let body: Bytes = (0..largest - 18 - cwp::seal::TAG_LEN)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into();
        connection
            .send(&DeviceFrame::Event(Event {
                event_id: 1,
                time_ms: 0,
                kind: 7,
                body: body.clone(),
            }))
            .await
            .unwrap();
        assert_eq!(await_ack(&mut connection, 1).await, 1);
        let stored: Vec<u8> = first_stored(&fleet).await.get("body").unwrap();
        assert!(
            stored == body.to_vec(),
            "the stored body is the body sent ({} bytes)",
            stored.len()
        );
    });
}

#[test]
fn a_resend_after_reconnecting_is_acknowledged_again_and_stored_once() {
    let fleet = TestFleet::start(1, &[]);
    runtime().block_on(async {
        let serial = serial("CTRL-0042");
        let (mut first, _) = connect(fleet.addr(), &serial).await;
        send_acked(&mut first, 1..=5, 256).await;
        drop(first);

        // The ack of 3..=5 "was lost": the device resends them.
        let (mut second, welcome) = connect(fleet.addr(), &serial).await;
        assert_eq!(welcome.last_event_id, 5);
        for id in 3..=5 {
            second.send(&event(id)).await.unwrap();
            assert_eq!(await_ack(&mut second, id).await, 5, "a duplicate is acknowledged again");
        }
        second.send(&event(6)).await.unwrap();
        assert_eq!(await_ack(&mut second, 6).await, 6);

        let stored = stored_events(&mut fleet.redis().await).await;
        let ids: Vec<u64> = stored.iter().map(|(_, id)| *id).collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5, 6]);
    });
}

#[test]
fn with_the_bridge_down_nothing_is_acknowledged_and_afterwards_everything_is_stored_once() {
    let mut fleet = TestFleet::start(1, &[]);
    let rt = runtime();
    let serial = serial("CTRL-0042");
    let (mut connection, _) = rt.block_on(async {
        let (mut connection, welcome) = connect(fleet.addr(), &serial).await;
        send_acked(&mut connection, 1..=100, usize::from(welcome.event_window)).await;
        (connection, welcome)
    });

    fleet.bridge.process().kill();
    rt.block_on(async {
        let frames: Vec<DeviceFrame> = (101..=150).map(event).collect();
        connection.send_all(&frames).await.unwrap();
        // Nothing can be stored, so nothing may be acknowledged.
        match connection.recv_timeout(Duration::from_secs(2)).await {
            Err(ClientError::Timeout) => {}
            other => panic!("no ACK may arrive while the bridge is down, got {other:?}"),
        }
    });

    fleet.restart_bridge();
    rt.block_on(async {
        assert_eq!(await_ack(&mut connection, 150).await, 150);
        let stored = stored_events(&mut fleet.redis().await).await;
        let ids: Vec<u64> = stored.iter().map(|(_, id)| *id).collect();
        assert_eq!(ids, (1..=150).collect::<Vec<_>>(), "every event stored once, in order");
    });
}
