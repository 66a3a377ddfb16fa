//! A test's own device: the test fleet's master key and the device keys
//! derived from it, a connection that completes the handshake, frames to
//! send and the driver's answers expected back (CWP/1 §4: an error, and
//! the close after a fatal one). These fail the test when the driver does
//! not answer as expected.

use std::net::SocketAddr;
use std::time::Duration;

use controller_sim::client::Connection;
use cwp::{DeviceKey, ErrorCode, ErrorFrame, FrameType, MasterKey, Serial, ServerFrame, Welcome};

/// The master key of every test fleet (`CWP_MASTER_KEY` of its drivers).
pub const MASTER_KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// How long a device waits for the driver's answer, or for it to close:
/// generous, only there to fail instead of hanging.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// A device's key, derived from [`MASTER_KEY_HEX`] as the drivers derive it
/// (CWP/1 §2).
pub fn device_key(serial: &Serial) -> DeviceKey {
    DeviceKey::derive(
        &MasterKey::from_hex(MASTER_KEY_HEX).expect("MASTER_KEY_HEX is 64 hex digits"),
        serial,
    )
}

/// `CTRL-0042` and friends, which must be valid serials.
pub fn serial(name: &str) -> Serial {
    name.parse()
        .unwrap_or_else(|err| panic!("{name:?} is not a valid serial: {err:?}"))
}

/// Connects to `addr` and completes the handshake as `serial`.
pub async fn connect(addr: SocketAddr, serial: &Serial) -> (Connection, Welcome) {
    let mut connection = Connection::connect(addr).await.expect("connects");
    let welcome = connection
        .handshake(*serial, &device_key(serial), "fw-test")
        .await
        .expect("handshake succeeds");
    (connection, welcome)
}

/// `EVENT(event_id)` with a one-byte body.
pub fn event(event_id: u64) -> cwp::DeviceFrame {
    cwp::DeviceFrame::Event(cwp::Event {
        event_id,
        time_ms: 0,
        kind: 1,
        body: bytes::Bytes::from_static(b"x"),
    })
}

/// `EVENT(event_id)` carrying the device's `OK` result, output `done`, of
/// command `command_id` (kind 65535, CWP/1's command result).
pub fn ok_result(event_id: u64, command_id: cwp::CommandId) -> cwp::DeviceFrame {
    let result = cwp::CommandResult {
        command_id,
        status: cwp::CommandStatus::OK,
        data: "done".into(),
    };
    cwp::DeviceFrame::Event(cwp::Event {
        event_id,
        time_ms: 0,
        kind: cwp::Event::COMMAND_RESULT_KIND,
        body: result.encode(),
    })
}

/// The next `ERROR` from the driver (acks before it are skipped).
pub async fn expect_error(connection: &mut Connection) -> ErrorFrame {
    loop {
        match connection.recv_timeout(ANSWER_WAIT).await {
            Ok(ServerFrame::Error(error)) => return error,
            Ok(ServerFrame::Ack(_)) => {}
            other => panic!("expected ERROR, got {other:?}"),
        }
    }
}

/// The next frame is the fatal `ERROR` `code` about a `ref_type` frame, and
/// then the driver closes the connection (CWP/1 §4).
pub async fn expect_fatal(connection: &mut Connection, code: ErrorCode, ref_type: FrameType) {
    let error = expect_error(connection).await;
    assert_eq!((error.code, error.ref_type), (code, ref_type), "{error:?}");
    assert!(error.fatal, "{code} is fatal");
    assert!(
        connection.closed_within(ANSWER_WAIT).await,
        "the connection closes after {code}"
    );
}
