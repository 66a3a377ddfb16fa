//! Quiet sessions park (`DRIVER_PARK_AFTER`; driver/src/park.rs): no task,
//! no I/O registration, until the device or an operator needs them. Parking
//! must not be visible on the wire: a parked device's heartbeats, events,
//! commands and goodbyes are answered exactly as a running one's, with its
//! seal's sequence numbers carried across.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use controller_sim::client::Connection;
use cwp::{ByeReason, CommandId, DeviceFrame, ErrorCode, Ping, ServerFrame};
use drover_testkit::components::DriverProcess;
use drover_testkit::device::{connect, event, expect_error, serial};
use drover_testkit::fleet::{TestFleet, runtime};
use drover_testkit::inspect::{publish, stored_events};
use drover_testkit::wait::{eventually, throughout};

const WAIT: Duration = Duration::from_secs(10);
const PARKED: &str = "drover_driver_sessions_parked";

/// Waits until the driver holds exactly `parked` sessions parked.
async fn until_parked(driver: &DriverProcess, parked: f64) {
    eventually(&format!("{parked} sessions parked"), WAIT, || async {
        driver.metric(PARKED).unwrap() == parked
    })
    .await;
}

/// The driver ends the session: `BYE reason`, then it closes the
/// connection (CWP/1 §3).
async fn expect_bye_and_close(device: &mut Connection, reason: ByeReason) {
    match device.recv_timeout(WAIT).await.unwrap() {
        ServerFrame::Bye(bye) => assert_eq!(bye.reason, reason),
        other => panic!("expected BYE {reason}, got {other:?}"),
    }
    assert!(
        device.closed_within(WAIT).await,
        "the driver closes the connection after BYE {reason}"
    );
}

#[test]
fn a_parked_device_is_answered_as_if_its_session_had_never_stopped() {
    let fleet = TestFleet::start(1, &[("DRIVER_PARK_AFTER", "200ms")]);
    let driver = &fleet.drivers[0];
    runtime().block_on(async {
        let (mut device, _) = connect(fleet.addr(), &serial("PARK-1")).await;
        // Nothing in flight after WELCOME: the session parks at once.
        until_parked(driver, 1.0).await;

        // Its socket wakes it: a heartbeat, answered under the next
        // sequence numbers (a wrong one would fail the device's check).
        device.send(&DeviceFrame::Ping(Ping { token: 7 })).await.unwrap();
        match device.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::Pong(pong) => assert_eq!(pong.token, 7),
            other => panic!("expected PONG, got {other:?}"),
        }
        // A heartbeat says the device is quiet: parked again at once.
        until_parked(driver, 1.0).await;

        // An event wakes it too, and is acknowledged once it is stored.
        device.send(&event(1)).await.unwrap();
        assert!(matches!(device.recv_timeout(WAIT).await.unwrap(), ServerFrame::Ack(ack) if ack.event_id == 1));
        // Quiet for DRIVER_PARK_AFTER: the idle sweep parks it.
        until_parked(driver, 1.0).await;

        // Its mailbox wakes it: an operator's command.
        let mut redis = fleet.redis().await;
        let receivers = publish(
            &mut redis,
            "cwp:cmd:PARK-1",
            r#"{"id":"22222222-2222-2222-2222-222222222222","name":"reboot"}"#,
        )
        .await;
        assert_eq!(receivers, 1, "a parked device is online");
        match device.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::Command(command) => assert_eq!(command.command_id, CommandId([0x22; 16])),
            other => panic!("expected COMMAND, got {other:?}"),
        }
        until_parked(driver, 1.0).await;

        // The rules' state was carried across: ids must still increase on
        // this connection (CWP/1 §3), so an old id is out of order.
        device.send(&event(1)).await.unwrap();
        let error = expect_error(&mut device).await;
        assert_eq!(error.code, ErrorCode::OUT_OF_ORDER);
        device.send(&event(2)).await.unwrap();
        assert!(matches!(device.recv_timeout(WAIT).await.unwrap(), ServerFrame::Ack(ack) if ack.event_id == 2));
        assert_eq!(
            stored_events(&mut redis).await,
            vec![("PARK-1".to_owned(), 1), ("PARK-1".to_owned(), 2)]
        );
        assert_eq!(driver.metric("drover_driver_sessions").unwrap(), 1.0);
    });
}

#[test]
fn a_parked_session_is_closed_for_idleness_supersede_and_drain() {
    let mut fleet = TestFleet::start(1, &[("DRIVER_PARK_AFTER", "100ms"), ("DRIVER_IDLE_TIMEOUT", "2s")]);
    runtime().block_on(async {
        let (mut idle, _) = connect(fleet.addr(), &serial("PARK-IDLE")).await;
        let (mut older, _) = connect(fleet.addr(), &serial("PARK-TWICE")).await;
        until_parked(&fleet.drivers[0], 2.0).await;

        // Superseded while parked: the newer session wins.
        let (newer, _) = connect(fleet.addr(), &serial("PARK-TWICE")).await;
        expect_bye_and_close(&mut older, ByeReason::SUPERSEDED).await;

        // Silent past the idle timeout while parked.
        expect_bye_and_close(&mut idle, ByeReason::IDLE).await;
        drop(newer);
        until_parked(&fleet.drivers[0], 0.0).await;

        // Drained while parked.
        let (mut draining, _) = connect(fleet.addr(), &serial("PARK-DRAIN")).await;
        until_parked(&fleet.drivers[0], 1.0).await;
        fleet.drivers[0]
            .process()
            .signal(nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        expect_bye_and_close(&mut draining, ByeReason::DRAINING).await;
    });
}

#[test]
fn with_parking_off_sessions_stay_running() {
    let fleet = TestFleet::start(1, &[("DRIVER_PARK_AFTER", "0s")]);
    let driver = &fleet.drivers[0];
    runtime().block_on(async {
        let (mut device, _) = connect(fleet.addr(), &serial("NEVER-PARKED")).await;
        device.send(&DeviceFrame::Ping(Ping { token: 3 })).await.unwrap();
        assert!(matches!(device.recv_timeout(WAIT).await.unwrap(), ServerFrame::Pong(_)));
        // Parking would show at once after the PONG, or after the default
        // DRIVER_PARK_AFTER of silence (1 s), found by the idle sweep within
        // a tenth of that: 2 s without a parked session covers both.
        throughout("no session parked", Duration::from_secs(2), || async {
            driver.metric(PARKED).unwrap() == 0.0
        })
        .await;
        assert_eq!(driver.metric(PARKED).unwrap(), 0.0);
        assert_eq!(driver.metric("drover_driver_sessions").unwrap(), 1.0);
    });
}
