//! CWP/1 §2: one serial, one live session in the whole fleet. The newer
//! session wins; the older one is closed with `BYE SUPERSEDED`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cwp::{ByeReason, DeviceFrame, Event, ServerFrame};
use drover_testkit::device::{connect, serial};
use drover_testkit::fleet::{TestFleet, runtime};
use drover_testkit::wait::eventually;

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
    let rt = runtime();
    let serial = serial("CTRL-0042");
    let (mut old, old_session) = rt.block_on(async {
        let (mut old, _) = connect(fleet.drivers[0].addr(), &serial).await;
        event_is_acked(&mut old, 1).await;
        (old, registry(&fleet, "session").await)
    });
    // Everything Redis is asked from here on: the old session's end will
    // reach it as the bridge's script call naming that session.
    let monitor = fleet.redis.monitor().unwrap();
    rt.block_on(async {
        let (mut new, welcome) = connect(fleet.drivers[1].addr(), &serial).await;
        assert_eq!(welcome.last_event_id, 1);
        expect_superseded(&mut old).await;
        event_is_acked(&mut new, 2).await;
        assert_eq!(registry(&fleet, "driver").await, fleet.drivers[1].driver_id());

        // The old session's end must not mark the new one offline. It
        // reaches Redis as the bridge's script call naming the old session;
        // MONITOR shows the call, then the commands the script runs (a call
        // Redis refused, as a script it had not loaded yet, runs none).
        let old_session_argument = format!("\"{old_session}\"");
        eventually("the old session's end to reach Redis", WAIT, || async {
            let seen = monitor.text().unwrap();
            let lines: Vec<&str> = seen.lines().collect();
            lines.windows(2).any(|pair| {
                pair[0].contains("\"EVAL") && pair[0].contains(&old_session_argument) && pair[1].contains(" lua] ")
            })
        })
        .await;
        assert_eq!(registry(&fleet, "online").await, "1");
    });
}

/// A field of `CTRL-0042`'s entry in the device registry.
async fn registry(fleet: &TestFleet, field: &str) -> String {
    redis::cmd("HGET")
        .arg("cwp:device:CTRL-0042")
        .arg(field)
        .query_async(&mut fleet.redis().await)
        .await
        .unwrap()
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
