//! CWP/1 §2: one serial, one live session in the whole fleet. The newer
//! session wins; the older one is closed with `BYE SUPERSEDED`.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use cwp::{ByeReason, DeviceFrame, Event, ServerFrame};
use support::*;

const WAIT: Duration = Duration::from_secs(10);

async fn expect_superseded(connection: &mut controller_sim::client::Connection) {
    loop {
        match connection.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::Bye(bye) => {
                assert_eq!(bye.reason, ByeReason::SUPERSEDED);
                break;
            }
            ServerFrame::Ack(_) => {}
            other => panic!("expected BYE SUPERSEDED, got {other:?}"),
        }
    }
    assert!(connection.closed_within(WAIT).await, "the old connection is closed");
}

async fn event_is_acked(connection: &mut controller_sim::client::Connection, event_id: u64) {
    connection
        .send(&DeviceFrame::Event(Event {
            event_id,
            time_ms: 0,
            kind: 1,
            body: "x".into(),
        }))
        .await
        .unwrap();
    assert!(matches!(connection.recv_timeout(WAIT).await.unwrap(), ServerFrame::Ack(ack) if ack.event_id == event_id));
}

#[test]
fn a_new_session_on_another_driver_supersedes_the_old_one() {
    let fleet = TestFleet::start(2, &[]);
    runtime().block_on(async {
        let serial = serial("CTRL-0042");
        let (mut old, _) = connect(fleet.drivers[0].addr(), &serial).await;
        event_is_acked(&mut old, 1).await;

        let (mut new, welcome) = connect(fleet.drivers[1].addr(), &serial).await;
        assert_eq!(welcome.last_event_id, 1);
        expect_superseded(&mut old).await;
        event_is_acked(&mut new, 2).await;

        let mut redis = fleet.redis().await;
        let driver: String = redis::cmd("HGET")
            .arg("cwp:device:CTRL-0042")
            .arg("driver")
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(driver, fleet.drivers[1].driver_id());
        // The old session's end must not mark the new one offline.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let online: String = redis::cmd("HGET")
            .arg("cwp:device:CTRL-0042")
            .arg("online")
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(online, "1");
    });
}

#[test]
fn a_new_session_on_the_same_driver_supersedes_the_old_one() {
    let fleet = TestFleet::start(1, &[]);
    runtime().block_on(async {
        let serial = serial("CTRL-0042");
        let (mut old, _) = connect(fleet.addr(), &serial).await;
        let (mut new, _) = connect(fleet.addr(), &serial).await;
        expect_superseded(&mut old).await;
        event_is_acked(&mut new, 1).await;
        // Commands go to the new session.
        let mut redis = fleet.redis().await;
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg("cwp:cmd:CTRL-0042")
            .arg(r#"{"name":"still-here"}"#)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(receivers, 1);
        assert!(
            matches!(new.recv_timeout(WAIT).await.unwrap(), ServerFrame::Command(c) if c.name.as_str() == "still-here")
        );
    });
}
