//! Operators' commands, exactly as an operator sends them with `redis-cli`:
//! `PUBLISH cwp:cmd:{serial} '{...}'`, the `COMMAND` frame on the device,
//! the result on `cwp:cmd-result:{serial}`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use controller_sim::client::{ClientError, Connection};
use cwp::{CommandId, DeviceFrame, Event, ServerFrame};
use drover_testkit::device::{connect, ok_result, serial};
use drover_testkit::fleet::{TestFleet, runtime};
use drover_testkit::inspect::{publish, stored_events};
use drover_testkit::wait::eventually;
use futures::StreamExt as _;

const WAIT: Duration = Duration::from_secs(10);

async fn subscribe(fleet: &TestFleet, channel: &str) -> redis::aio::PubSubStream {
    let mut pubsub = redis::Client::open(fleet.redis.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub.subscribe(channel).await.unwrap();
    pubsub.into_on_message()
}

async fn next_json(messages: &mut redis::aio::PubSubStream) -> serde_json::Value {
    let message = tokio::time::timeout(WAIT, messages.next())
        .await
        .expect("a message within the deadline")
        .expect("the subscription is open");
    serde_json::from_slice(message.get_payload_bytes()).expect("the message is JSON")
}

async fn recv_command(connection: &mut Connection) -> cwp::Command {
    match connection.recv_timeout(WAIT).await.unwrap() {
        ServerFrame::Command(command) => command,
        other => panic!("expected COMMAND, got {other:?}"),
    }
}

#[test]
fn a_command_reaches_the_device_and_its_result_reaches_the_operator() {
    let fleet = TestFleet::start(1, &[]);
    runtime().block_on(async {
        let mut results = subscribe(&fleet, "cwp:cmd-result:CTRL-0042").await;
        let (mut device, _) = connect(fleet.addr(), &serial("CTRL-0042")).await;
        let mut redis = fleet.redis().await;

        let receivers = publish(
            &mut redis,
            "cwp:cmd:CTRL-0042",
            r#"{"id":"11111111-1111-1111-1111-111111111111","name":"reboot","body":"{\"delay_s\":5}"}"#,
        )
        .await;
        assert_eq!(receivers, 1, "PUBLISH counts the online device");

        let command = recv_command(&mut device).await;
        assert_eq!(command.command_id, CommandId([0x11; 16]));
        assert_eq!(command.name.as_str(), "reboot");
        assert_eq!(&command.body[..], br#"{"delay_s":5}"#);

        device.send(&ok_result(1, command.command_id)).await.unwrap();
        assert!(matches!(device.recv_timeout(WAIT).await.unwrap(), ServerFrame::Ack(ack) if ack.event_id == 1));

        let published = next_json(&mut results).await;
        assert_eq!(published["id"], "11111111-1111-1111-1111-111111111111");
        assert_eq!(published["serial"], "CTRL-0042");
        assert_eq!(published["status"], "OK");
        assert_eq!(published["data"], "done");

        let stored = stored_events(&mut redis).await;
        assert_eq!(
            stored,
            vec![("CTRL-0042".to_owned(), 1)],
            "a result is stored like any event"
        );
    });
}

#[test]
fn publish_counts_zero_receivers_when_the_device_is_offline() {
    let fleet = TestFleet::start(1, &[]);
    runtime().block_on(async {
        let mut redis = fleet.redis().await;
        assert_eq!(
            publish(&mut redis, "cwp:cmd:CTRL-0042", r#"{"name":"reboot"}"#).await,
            0
        );

        let (device, _) = connect(fleet.addr(), &serial("CTRL-0042")).await;
        assert_eq!(publish(&mut redis, "cwp:cmd:CTRL-0042", r#"{"name":"ping"}"#).await, 1);
        drop(device);
        eventually("the driver to unsubscribe", WAIT, || {
            let mut redis = redis.clone();
            async move { publish(&mut redis, "cwp:cmd:CTRL-0042", r#"{"name":"ping"}"#).await == 0 }
        })
        .await;
    });
}

#[test]
fn a_malformed_command_is_rejected_where_the_operator_sees_it() {
    let fleet = TestFleet::start(1, &[]);
    runtime().block_on(async {
        let mut results = subscribe(&fleet, "cwp:cmd-result:CTRL-0042").await;
        let (mut device, _) = connect(fleet.addr(), &serial("CTRL-0042")).await;
        let mut redis = fleet.redis().await;

        assert_eq!(publish(&mut redis, "cwp:cmd:CTRL-0042", r#"{"nam":"reboot"}"#).await, 1);
        let rejection = next_json(&mut results).await;
        assert_eq!(rejection["status"], "REJECTED");
        assert_eq!(rejection["serial"], "CTRL-0042");
        assert!(
            rejection["data"].as_str().unwrap().contains("unknown field `nam`"),
            "{rejection}"
        );

        let log: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg("cwp:cmd-rejected")
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await
            .unwrap();
        let entry = &log.ids[0];
        assert_eq!(entry.get::<String>("serial").unwrap(), "CTRL-0042");
        assert_eq!(entry.get::<String>("message").unwrap(), r#"{"nam":"reboot"}"#);

        match device.recv_timeout(Duration::from_millis(300)).await {
            Err(ClientError::Timeout) => {}
            other => panic!("the device must not receive a rejected command, got {other:?}"),
        }
    });
}

#[test]
fn commands_flow_again_after_redis_restarts() {
    let mut fleet = TestFleet::start(1, &[]);
    let rt = runtime();
    let (mut device, _) = rt.block_on(connect(fleet.addr(), &serial("CTRL-0042")));
    fleet.redis.restart().unwrap();
    rt.block_on(async {
        let redis = fleet.redis().await;
        eventually(
            "the driver to resubscribe after the restart",
            Duration::from_secs(20),
            || {
                let mut redis = redis.clone();
                async move { publish(&mut redis, "cwp:cmd:CTRL-0042", r#"{"name":"after-restart"}"#).await == 1 }
            },
        )
        .await;
        let command = recv_command(&mut device).await;
        assert_eq!(command.name.as_str(), "after-restart");
        // The session's events still flow too (the bridge reconnects to Redis).
        device
            .send(&DeviceFrame::Event(Event {
                event_id: 1,
                time_ms: 0,
                kind: 1,
                body: "x".into(),
            }))
            .await
            .unwrap();
        loop {
            match device.recv_timeout(Duration::from_secs(20)).await.unwrap() {
                ServerFrame::Ack(ack) if ack.event_id == 1 => break,
                ServerFrame::Command(_) => {}
                other => panic!("expected ACK 1, got {other:?}"),
            }
        }
    });
}
