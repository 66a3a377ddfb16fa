//! CWP/1 §2 Session, against a real driver: who gets in and who does not.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::BytesMut;
use controller_sim::client::{ClientError, Connection};
use cwp::{
    Auth, AuthMac, DeviceCodec, DeviceFrame, DeviceHandshake, ErrorCode, FrameType, Hello, Nonce, ServerFrame, Str8,
};
use drover_testkit::components::DriverProcess;
use drover_testkit::device::{connect, device_key, serial};
use drover_testkit::fleet::{TestFleet, runtime};

const CLOSE: Duration = Duration::from_secs(5);

#[test]
fn a_device_with_the_right_key_is_welcomed_with_the_drivers_limits() {
    let fleet = TestFleet::start(1, &[]);
    runtime().block_on(async {
        let (_connection, welcome) = connect(fleet.addr(), &serial("CTRL-0042")).await;
        assert_eq!(welcome.heartbeat_s, 30);
        assert_eq!(welcome.max_payload, 65_536);
        assert_eq!(welcome.event_window, 256);
        assert_eq!(welcome.last_event_id, 0, "nothing stored yet");
        assert_eq!(welcome.server.as_str(), fleet.drivers[0].driver_id());

        let mut redis = fleet.redis().await;
        let online: String = redis::cmd("HGET")
            .arg("cwp:device:CTRL-0042")
            .arg("online")
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(online, "1", "the registry knows the device is online");
    });
}

/// Sends HELLO and reads the CHALLENGE; returns the device's nonce and the server's.
async fn hello(connection: &mut Connection, serial: &cwp::Serial, nonce_d: Nonce) -> Nonce {
    connection
        .send(&DeviceFrame::Hello(Hello {
            serial: *serial,
            firmware: Str8::new("fw").unwrap(),
            nonce: nonce_d,
        }))
        .await
        .unwrap();
    match connection.recv_timeout(CLOSE).await.unwrap() {
        ServerFrame::Challenge(challenge) => challenge.nonce,
        other => panic!("expected CHALLENGE, got {other:?}"),
    }
}

fn assert_unauthorized(frame: ServerFrame) {
    let ServerFrame::Error(error) = frame else {
        panic!("expected ERROR, got {frame:?}")
    };
    assert_eq!(error.code, ErrorCode::UNAUTHORIZED);
    assert!(error.fatal);
    assert_eq!(error.ref_type, FrameType::AUTH);
}

#[test]
fn a_wrong_mac_is_unauthorized_and_the_connection_closes() {
    let fleet = TestFleet::start(1, &[]);
    runtime().block_on(async {
        let serial = serial("CTRL-0042");
        let mut connection = Connection::connect(fleet.addr()).await.unwrap();
        hello(&mut connection, &serial, Nonce([1; 16])).await;
        connection
            .send(&DeviceFrame::Auth(Auth { mac: AuthMac([0; 32]) }))
            .await
            .unwrap();
        // Unsealed, as every ERROR before WELCOME.
        assert_unauthorized(connection.recv_timeout(CLOSE).await.unwrap());
        assert!(connection.closed_within(CLOSE).await);
    });
}

#[test]
fn an_unknown_serial_is_unauthorized() {
    let mut fleet = TestFleet::start(0, &[]);
    let keys = tempfile::NamedTempFile::new().unwrap();
    let known = serial("LISTED-1");
    std::fs::write(keys.path(), format!("LISTED-1 {}\n", hex_key(&device_key(&known)))).unwrap();
    let mut options = fleet.driver_options.clone();
    options.master_key_hex = String::new();
    options
        .extra_env
        .push(("CWP_KEYS_FILE".to_owned(), keys.path().display().to_string()));
    fleet.drivers.push(DriverProcess::start(&options).unwrap());
    runtime().block_on(async {
        // Listed: welcome.
        connect(fleet.addr(), &known).await;
        // Not listed, and no master key to derive one from.
        let mut connection = Connection::connect(fleet.addr()).await.unwrap();
        let err = connection
            .handshake(serial("CTRL-0042"), &device_key(&serial("CTRL-0042")), "fw")
            .await
            .unwrap_err();
        let ClientError::Refused(error) = err else {
            panic!("expected a refusal, got {err:?}")
        };
        assert_eq!(error.code, ErrorCode::UNAUTHORIZED);
        assert!(connection.closed_within(CLOSE).await);
    });
}

fn hex_key(key: &cwp::DeviceKey) -> String {
    key.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn an_auth_replayed_on_a_new_connection_is_unauthorized() {
    let fleet = TestFleet::start(1, &[]);
    runtime().block_on(async {
        let serial = serial("CTRL-0042");
        let nonce_d = Nonce([9; 16]);
        // A genuine handshake, recorded by an eavesdropper.
        let mut genuine = Connection::connect(fleet.addr()).await.unwrap();
        let nonce_s = hello(&mut genuine, &serial, nonce_d).await;
        let (device, _) = DeviceHandshake::start(serial, Str8::new("fw").unwrap(), device_key(&serial), nonce_d);
        let (auth, _) = device.answer(&cwp::Challenge { nonce: nonce_s });
        let mut recorded = BytesMut::new();
        DeviceCodec::new().encode(&auth, &mut recorded);

        // The replay: same HELLO, a fresh CHALLENGE, the old AUTH.
        let mut replay = Connection::connect(fleet.addr()).await.unwrap();
        let fresh = hello(&mut replay, &serial, nonce_d).await;
        assert_ne!(fresh, nonce_s, "every connection gets a fresh nonce");
        replay.send_raw(&recorded).await.unwrap();
        assert_unauthorized(replay.recv_timeout(CLOSE).await.unwrap());
        assert!(replay.closed_within(CLOSE).await);
    });
}

/// A driver with a keys file beside the master key; the file is returned
/// for the test to rewrite.
fn fleet_with_keys_file(lines: &str) -> (TestFleet, tempfile::NamedTempFile) {
    let mut fleet = TestFleet::start(0, &[]);
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), lines).unwrap();
    let mut options = fleet.driver_options.clone();
    options
        .extra_env
        .push(("CWP_KEYS_FILE".to_owned(), keys.path().display().to_string()));
    fleet.drivers.push(DriverProcess::start(&options).unwrap());
    (fleet, keys)
}

/// Rewrites the keys file and has the driver reload it (SIGHUP); waits
/// until the driver counts the reload.
async fn reload_keys(fleet: &mut TestFleet, keys: &tempfile::NamedTempFile, lines: &str) {
    let reloads = |driver: &DriverProcess| {
        driver
            .metrics()
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix("drover_driver_keys_reloads_total{result=\"ok\"} "))
            .map_or(0.0, |value| value.parse::<f64>().unwrap())
    };
    let before = reloads(&fleet.drivers[0]);
    std::fs::write(keys.path(), lines).unwrap();
    fleet.drivers[0]
        .process()
        .signal(nix::sys::signal::Signal::SIGHUP)
        .unwrap();
    let driver = &fleet.drivers[0];
    drover_testkit::wait::eventually("the keys file reloaded", CLOSE, || async { reloads(driver) > before }).await;
}

#[test]
fn a_revoked_serial_loses_its_session_and_its_hello_is_unauthorized_even_with_a_master_key() {
    let revoked = serial("CTRL-REVOKED");
    let kept = serial("CTRL-KEPT");
    let (mut fleet, keys) = fleet_with_keys_file("# nothing listed: the master key applies\n");
    runtime().block_on(async {
        let (mut victim, _) = connect(fleet.addr(), &revoked).await;
        let (mut bystander, _) = connect(fleet.addr(), &kept).await;

        reload_keys(&mut fleet, &keys, "CTRL-REVOKED -\n").await;
        // The live session ends with a sealed, fatal UNAUTHORIZED.
        let frame = victim.recv_timeout(CLOSE * 2).await.unwrap();
        let ServerFrame::Error(error) = frame else {
            panic!("expected ERROR UNAUTHORIZED, got {frame:?}")
        };
        assert_eq!((error.code, error.fatal), (ErrorCode::UNAUTHORIZED, true));
        assert!(victim.closed_within(CLOSE).await);

        // A new HELLO is refused at once, before any CHALLENGE, although the
        // master key would derive a key for the serial.
        let mut again = Connection::connect(fleet.addr()).await.unwrap();
        again
            .send(&DeviceFrame::Hello(Hello {
                serial: revoked,
                firmware: Str8::new("fw").unwrap(),
                nonce: Nonce([3; 16]),
            }))
            .await
            .unwrap();
        let ServerFrame::Error(error) = again.recv_timeout(CLOSE).await.unwrap() else {
            panic!("expected ERROR UNAUTHORIZED")
        };
        assert_eq!(
            (error.code, error.ref_type, error.fatal),
            (ErrorCode::UNAUTHORIZED, FrameType::HELLO, true)
        );
        assert!(again.closed_within(CLOSE).await);

        // Another serial's session goes on.
        bystander
            .send(&DeviceFrame::Ping(cwp::Ping { token: 7 }))
            .await
            .unwrap();
        assert!(matches!(
            bystander.recv_timeout(CLOSE).await.unwrap(),
            ServerFrame::Pong(pong) if pong.token == 7
        ));

        // Revocation lifted: the device is welcome again.
        reload_keys(&mut fleet, &keys, "").await;
        let mut connection = Connection::connect(fleet.addr()).await.unwrap();
        connection
            .handshake(revoked, &device_key(&revoked), "fw")
            .await
            .unwrap();
    });
}

#[test]
fn a_key_changed_in_the_keys_file_closes_the_sessions_made_with_the_old_one() {
    let device = serial("LISTED-1");
    let old = device_key(&device);
    let new = cwp::DeviceKey::from_bytes([0x42; 32]);
    let (mut fleet, keys) = fleet_with_keys_file(&format!("LISTED-1 {}\n", hex_key(&old)));
    runtime().block_on(async {
        let (mut session, _) = connect(fleet.addr(), &device).await;
        reload_keys(&mut fleet, &keys, &format!("LISTED-1 {}\n", hex_key(&new))).await;
        let ServerFrame::Error(error) = session.recv_timeout(CLOSE * 2).await.unwrap() else {
            panic!("expected ERROR UNAUTHORIZED")
        };
        assert_eq!(error.code, ErrorCode::UNAUTHORIZED);
        assert!(session.closed_within(CLOSE).await);
        // The new key is welcome; the old one is not.
        let mut with_new = Connection::connect(fleet.addr()).await.unwrap();
        with_new.handshake(device, &new, "fw").await.unwrap();
        let mut with_old = Connection::connect(fleet.addr()).await.unwrap();
        let err = with_old.handshake(device, &old, "fw").await.unwrap_err();
        assert!(matches!(err, ClientError::Refused(error) if error.code == ErrorCode::UNAUTHORIZED));
    });
}
