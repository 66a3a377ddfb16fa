//! CWP/1 §4 Errors: every code the spec defines, provoked against a real
//! driver and checked on the wire (code, fatality, `ref_type`), and for the
//! fatal ones, that the connection is then closed.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::{BufMut as _, BytesMut};
use controller_sim::client::{ClientError, Connection};
use cwp::{DeviceFrame, ErrorCode, FrameType, ServerFrame};
use drover_testkit::device::{connect, device_key, event, expect_error, expect_fatal, serial};
use drover_testkit::fleet::{TestFleet, runtime};
use drover_testkit::inspect::stored_events;

const WAIT: Duration = Duration::from_secs(10);

/// A frame with a correct CRC around an arbitrary type and payload.
fn raw_frame(frame_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = BytesMut::new();
    frame.put_slice(&[0x43, 0x57, 0x01, frame_type]);
    frame.put_u32(payload.len() as u32);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[..8]), payload);
    frame.put_u32(crc);
    frame.put_slice(payload);
    frame.to_vec()
}

async fn raw(fleet: &TestFleet, bytes: &[u8]) -> Connection {
    let mut connection = Connection::connect(fleet.addr()).await.unwrap();
    connection.send_raw(bytes).await.unwrap();
    connection
}

#[test]
fn framing_errors_before_the_handshake() {
    let fleet = TestFleet::start(1, &[]);
    runtime().block_on(async {
        // 1 BAD_MAGIC
        let mut c = raw(&fleet, b"GET / HTTP/1.1\r\n\r\n").await;
        expect_fatal(&mut c, ErrorCode::BAD_MAGIC, FrameType(0)).await;

        // 2 BAD_VERSION
        let mut c = raw(&fleet, &[0x43, 0x57, 0x02, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]).await;
        expect_fatal(&mut c, ErrorCode::BAD_VERSION, FrameType(0)).await;

        // 3 BAD_CRC: a HELLO whose crc is off by one bit
        let mut hello = raw_frame(0x01, b"\x09CTRL-0042\x02fw0123456789abcdef");
        hello[11] ^= 1;
        let mut c = raw(&fleet, &hello).await;
        expect_fatal(&mut c, ErrorCode::BAD_CRC, FrameType::HELLO).await;

        // 4 FRAME_TOO_LARGE, from the 12 header bytes alone
        let mut c = raw(&fleet, &[0x43, 0x57, 0x01, 0x03, 0x00, 0x01, 0x00, 0x01, 0, 0, 0, 0]).await;
        expect_fatal(&mut c, ErrorCode::FRAME_TOO_LARGE, FrameType::EVENT).await;

        // 5 UNKNOWN_TYPE: 0x07 is not defined; 0x81 travels the other way
        let mut c = raw(&fleet, &raw_frame(0x07, b"")).await;
        expect_fatal(&mut c, ErrorCode::UNKNOWN_TYPE, FrameType(0x07)).await;
        let mut c = raw(&fleet, &raw_frame(0x81, &[0; 16])).await;
        expect_fatal(&mut c, ErrorCode::UNKNOWN_TYPE, FrameType::CHALLENGE).await;

        // 6 MALFORMED: a serial with a space
        let mut c = raw(&fleet, &raw_frame(0x01, b"\x07CTRL 42\x02fw0123456789abcdef")).await;
        expect_fatal(&mut c, ErrorCode::MALFORMED, FrameType::HELLO).await;

        // 7 UNEXPECTED: an EVENT before the handshake
        let mut c = Connection::connect(fleet.addr()).await.unwrap();
        c.send(&event(1)).await.unwrap();
        expect_fatal(&mut c, ErrorCode::UNEXPECTED, FrameType::EVENT).await;
    });
}

#[test]
fn a_silent_connection_times_out() {
    // 12 TIMEOUT
    let fleet = TestFleet::start(1, &[("DRIVER_HANDSHAKE_TIMEOUT", "500ms")]);
    runtime().block_on(async {
        let mut c = Connection::connect(fleet.addr()).await.unwrap();
        expect_fatal(&mut c, ErrorCode::TIMEOUT, FrameType(0)).await;
    });
}

#[test]
fn a_handshake_without_the_event_store_is_internal() {
    // 13 INTERNAL: the session cannot be registered, nothing was stored.
    let mut fleet = TestFleet::start(1, &[]);
    fleet.bridge.process().kill();
    runtime().block_on(async {
        let serial = serial("CTRL-0042");
        let mut c = Connection::connect(fleet.addr()).await.unwrap();
        let err = c.handshake(serial, &device_key(&serial), "fw").await.unwrap_err();
        let ClientError::Refused(error) = err else {
            panic!("expected a refusal, got {err:?}")
        };
        assert_eq!(error.code, ErrorCode::INTERNAL);
        assert!(error.fatal);
        assert!(c.closed_within(WAIT).await);
    });
}

#[test]
fn errors_inside_a_sealed_session() {
    let fleet = TestFleet::start(1, &[]);
    runtime().block_on(async {
        // 9 OUT_OF_ORDER is not fatal: the session goes on.
        let (mut c, _) = connect(fleet.addr(), &serial("CTRL-0001")).await;
        c.send_all(&[event(5), event(5)]).await.unwrap();
        let error = expect_error(&mut c).await;
        assert_eq!(error.code, ErrorCode::OUT_OF_ORDER);
        assert!(!error.fatal);
        assert_eq!(error.ref_type, FrameType::EVENT);
        assert_eq!(error.message.as_str(), "event id 5 <= 5");
        c.send(&event(6)).await.unwrap();
        loop {
            match c.recv_timeout(WAIT).await.unwrap() {
                ServerFrame::Ack(ack) if ack.event_id == 6 => break,
                ServerFrame::Ack(_) => {}
                other => panic!("expected ACK 6, got {other:?}"),
            }
        }

        // 14 BAD_TAG: a sealed frame whose last byte changed, crc recomputed.
        let (mut c, _) = connect(fleet.addr(), &serial("CTRL-0002")).await;
        let mut wire = BytesMut::new();
        c.codec_mut().encode(&event(1), &mut wire);
        let last = wire.len() - 1;
        wire[last] ^= 1;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&wire[..8]), &wire[12..]);
        wire[8..12].copy_from_slice(&crc.to_be_bytes());
        c.send_raw(&wire).await.unwrap();
        expect_fatal(&mut c, ErrorCode::BAD_TAG, FrameType::EVENT).await;

        // 7 UNEXPECTED after the handshake: a second HELLO.
        let (mut c, _) = connect(fleet.addr(), &serial("CTRL-0003")).await;
        c.send(&DeviceFrame::Hello(cwp::Hello {
            serial: serial("CTRL-0003"),
            firmware: cwp::Str8::new("fw").unwrap(),
            nonce: cwp::Nonce([0; 16]),
        }))
        .await
        .unwrap();
        expect_fatal(&mut c, ErrorCode::UNEXPECTED, FrameType::HELLO).await;
    });
}

#[test]
fn busy_when_the_event_window_is_full_and_nothing_is_lost() {
    // 10 BUSY is not fatal: the device keeps the event and retries.
    let mut fleet = TestFleet::start(1, &[("DRIVER_EVENT_WINDOW", "2")]);
    let rt = runtime();
    let (mut c, welcome) = rt.block_on(connect(fleet.addr(), &serial("CTRL-0042")));
    assert_eq!(welcome.event_window, 2);
    fleet.bridge.process().kill();
    rt.block_on(async {
        c.send_all(&[event(1), event(2), event(3), event(4)]).await.unwrap();
        for refused in [3, 4] {
            let error = expect_error(&mut c).await;
            assert_eq!(error.code, ErrorCode::BUSY, "event {refused}");
            assert!(!error.fatal);
            assert_eq!(error.ref_type, FrameType::EVENT);
        }
    });
    fleet.restart_bridge();
    rt.block_on(async {
        // 1 and 2 are stored now; 3 and 4 were refused and must not be covered
        // by any ACK until the device sends them again.
        match c.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::Ack(ack) => assert_eq!(ack.event_id, 2),
            other => panic!("expected ACK 2, got {other:?}"),
        }
        c.send_all(&[event(3), event(4)]).await.unwrap();
        loop {
            match c.recv_timeout(WAIT).await.unwrap() {
                ServerFrame::Ack(ack) if ack.event_id == 4 => break,
                ServerFrame::Ack(ack) => assert!(ack.event_id < 4),
                other => panic!("expected ACK 4, got {other:?}"),
            }
        }
        let ids: Vec<u64> = stored_events(&mut fleet.redis().await)
            .await
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        assert_eq!(ids, vec![1, 2, 3, 4]);
    });
}

#[test]
fn after_a_busy_refusal_later_events_wait_for_the_refused_one() {
    let mut fleet = TestFleet::start(1, &[("DRIVER_EVENT_WINDOW", "1")]);
    let rt = runtime();
    let (mut c, _) = rt.block_on(connect(fleet.addr(), &serial("CTRL-0042")));
    fleet.bridge.process().kill();
    rt.block_on(async {
        c.send_all(&[event(1), event(2)]).await.unwrap();
        assert_eq!(
            expect_error(&mut c).await.code,
            ErrorCode::BUSY,
            "2 is refused: window full"
        );
    });
    fleet.restart_bridge();
    rt.block_on(async {
        assert!(matches!(c.recv_timeout(WAIT).await.unwrap(), ServerFrame::Ack(a) if a.event_id == 1));
        // Skipping the refused event 2 is refused too, or ACK(3) would cover 2.
        c.send(&event(3)).await.unwrap();
        let error = expect_error(&mut c).await;
        assert_eq!(error.code, ErrorCode::BUSY);
        c.send(&event(2)).await.unwrap();
        assert!(matches!(c.recv_timeout(WAIT).await.unwrap(), ServerFrame::Ack(a) if a.event_id == 2));
    });
}

#[test]
fn silence_ends_a_session_with_bye_idle_and_bye_is_answered() {
    let fleet = TestFleet::start(1, &[("DRIVER_IDLE_TIMEOUT", "500ms")]);
    runtime().block_on(async {
        let (mut c, _) = connect(fleet.addr(), &serial("CTRL-0001")).await;
        match c.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::Bye(bye) => assert_eq!(bye.reason, cwp::ByeReason::IDLE),
            other => panic!("expected BYE IDLE, got {other:?}"),
        }
        assert!(c.closed_within(WAIT).await);

        // A device's BYE: pending acks first, then the server's BYE.
        let (mut c, _) = connect(fleet.addr(), &serial("CTRL-0002")).await;
        c.send_all(&[
            event(1),
            DeviceFrame::Bye(cwp::DeviceBye {
                reason: cwp::ByeReason::NORMAL,
            }),
        ])
        .await
        .unwrap();
        assert!(matches!(c.recv_timeout(WAIT).await.unwrap(), ServerFrame::Ack(a) if a.event_id == 1));
        assert!(
            matches!(c.recv_timeout(WAIT).await.unwrap(), ServerFrame::Bye(b) if b.reason == cwp::ByeReason::NORMAL)
        );
        assert!(c.closed_within(WAIT).await);
    });
}
