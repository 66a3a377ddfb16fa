//! Mutual TLS between drivers and the vendor-bridge (README, Security), with
//! certificates minted here: a fleet CA, the bridge's certificate for
//! 127.0.0.1 and localhost, a driver's client certificate. With TLS on both
//! ends a device's events are stored and acknowledged; a driver without TLS,
//! with a certificate from another CA, with an expired certificate, or that
//! does not trust the bridge's CA, gets nothing stored and says why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use controller_sim::client::ClientError;
use cwp::{DeviceFrame, ErrorCode, Event, ServerFrame};
use drover_testkit::components::{BridgeProcess, DriverOptions, DriverProcess, Logs};
use drover_testkit::device::{MASTER_KEY_HEX, connect, device_key, serial};
use drover_testkit::fleet::{logs, run_to_exit, runtime};
use drover_testkit::inspect::stored_events;
use drover_testkit::pki::{Authority, ExtendedKeyUsagePurpose};
use drover_testkit::redis::RedisServer;
use drover_testkit::wait::eventually;

const WAIT: Duration = Duration::from_secs(20);

/// Every file the tests use, in one temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn mint() -> Self {
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        let fleet_ca = Authority::new("drover test fleet CA");
        let other_ca = Authority::new("some other CA");
        pki.write("ca.pem", &fleet_ca.pem);
        pki.write("other-ca.pem", &other_ca.pem);
        pki.write_pair(
            "bridge",
            fleet_ca.sign(&["127.0.0.1", "localhost"], ExtendedKeyUsagePurpose::ServerAuth, false),
        );
        pki.write_pair(
            "driver",
            fleet_ca.sign(&["driver-1"], ExtendedKeyUsagePurpose::ClientAuth, false),
        );
        pki.write_pair(
            "stranger",
            other_ca.sign(&["driver-1"], ExtendedKeyUsagePurpose::ClientAuth, false),
        );
        pki.write_pair(
            "expired",
            fleet_ca.sign(&["driver-1"], ExtendedKeyUsagePurpose::ClientAuth, true),
        );
        pki
    }

    fn write(&self, name: &str, pem: &str) {
        std::fs::write(self.path(name), pem).unwrap();
    }

    fn write_pair(&self, name: &str, (cert, key): (String, String)) {
        self.write(&format!("{name}.pem"), &cert);
        self.write(&format!("{name}.key"), &key);
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }

    /// The bridge's variables for mutual TLS.
    fn bridge_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("BRIDGE_TLS_CERT", self.path("bridge.pem")),
            ("BRIDGE_TLS_KEY", self.path("bridge.key")),
            ("BRIDGE_TLS_CLIENT_CA", self.path("ca.pem")),
        ]
    }

    /// A driver's variables: trusting `ca`, presenting the certificate
    /// `identity` (`driver`, `stranger`, `expired`) if any.
    fn driver_env(&self, ca: &str, identity: Option<&str>) -> Vec<(String, String)> {
        let mut env = vec![("VENDOR_BRIDGE_CA".to_owned(), self.path(ca))];
        if let Some(name) = identity {
            // Every test certificate names driver-1: the bridge lets a
            // client act only as a driver its certificate names.
            env.push(("DRIVER_ID".to_owned(), "driver-1".to_owned()));
            env.push((
                "VENDOR_BRIDGE_CLIENT_CERT".to_owned(),
                self.path(&format!("{name}.pem")),
            ));
            env.push(("VENDOR_BRIDGE_CLIENT_KEY".to_owned(), self.path(&format!("{name}.key"))));
        }
        env
    }
}

/// Redis and a bridge that serves mutual TLS only.
struct TlsBridge {
    redis: RedisServer,
    bridge: BridgeProcess,
    pki: Pki,
}

impl TlsBridge {
    fn start() -> Self {
        let pki = Pki::mint();
        let redis = RedisServer::start().unwrap();
        let bridge = BridgeProcess::start(&redis.url(), &logs(), &pki.bridge_env()).unwrap();
        Self { redis, bridge, pki }
    }

    fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.bridge.port())
    }

    /// Starts a driver for `bridge_url` with `env`, logging to a file.
    fn driver(&self, bridge_url: String, env: Vec<(String, String)>) -> (DriverProcess, PathBuf) {
        let log = self.pki.dir.path().join(format!("driver-{}.log", log_number()));
        let options = DriverOptions {
            bridge_url,
            redis_url: self.redis.url(),
            master_key_hex: MASTER_KEY_HEX.to_owned(),
            proxy_protocol: false,
            extra_env: env,
            logs: Logs::File(log.clone()),
        };
        (DriverProcess::start(&options).expect("driver starts"), log)
    }
}

/// Distinct log file names within one test.
fn log_number() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A driver's log, without the colours of its text format.
fn log_text(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An SGR sequence: ESC [ digits/semicolons m.
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}

async fn event_count(redis: &RedisServer) -> u64 {
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("XLEN")
        .arg("cwp:events")
        .query_async(&mut connection)
        .await
        .unwrap()
}

#[test]
fn with_mutual_tls_a_devices_events_are_stored_and_acknowledged() {
    let fleet = TlsBridge::start();
    let (driver, log) = fleet.driver(fleet.https_url(), fleet.pki.driver_env("ca.pem", Some("driver")));
    runtime().block_on(async {
        let serial = serial("CTRL-0042");
        let (mut device, welcome) = connect(driver.addr(), &serial).await;
        assert_eq!(welcome.last_event_id, 0);
        for event_id in 1..=3 {
            device
                .send(&DeviceFrame::Event(Event {
                    event_id,
                    time_ms: 0,
                    kind: 1,
                    body: "over TLS".into(),
                }))
                .await
                .unwrap();
            let frame = device.recv_timeout(WAIT).await.unwrap();
            assert!(
                matches!(frame, ServerFrame::Ack(ref ack) if ack.event_id == event_id),
                "expected ACK {event_id}, got {frame:?}; driver log:\n{}",
                log_text(&log)
            );
        }
        let mut redis = redis::Client::open(fleet.redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        assert_eq!(
            stored_events(&mut redis).await,
            (1..=3).map(|id| ("CTRL-0042".to_owned(), id)).collect::<Vec<_>>()
        );
    });
    assert!(
        log_text(&log).contains("bridge_tls=true"),
        "the driver says it uses TLS:\n{}",
        log_text(&log)
    );
}

/// A device of a driver the bridge refuses (or that refuses the bridge)
/// cannot complete its handshake: the driver cannot register the session
/// and answers `ERROR INTERNAL` (fatal, CWP/1 §4), so nothing of the device
/// is ever stored. The driver's log says why.
fn assert_refused(fleet: &TlsBridge, bridge_url: String, env: Vec<(String, String)>, cause: &[&str]) {
    let (driver, log) = fleet.driver(bridge_url, env);
    runtime().block_on(async {
        let mut device = controller_sim::client::Connection::connect(driver.addr())
            .await
            .unwrap();
        let serial = serial("CTRL-0042");
        match device.handshake(serial, &device_key(&serial), "fw-test").await {
            Err(ClientError::Refused(error)) => {
                assert_eq!((error.code, error.fatal), (ErrorCode::INTERNAL, true), "{error:?}");
            }
            other => panic!(
                "the handshake must be refused with INTERNAL without the bridge, got {other:?}; driver log:\n{}",
                log_text(&log)
            ),
        }
        assert!(device.closed_within(WAIT).await, "the connection closes after INTERNAL");
        eventually("the driver to report the refused event stream", WAIT, || async {
            driver
                .metrics()
                .is_ok_and(|text| text.contains("drover_driver_bridge_connects_total{result=\"failed\"}"))
        })
        .await;
        assert_eq!(event_count(&fleet.redis).await, 0, "nothing is stored");
    });
    let text = log_text(&log);
    eprintln!("driver log:\n{text}");
    assert!(
        text.contains("vendor-bridge unavailable") && cause.iter().any(|c| text.contains(c)),
        "the driver's log names the failure and one of {cause:?}:\n{text}"
    );
}

#[test]
fn a_driver_without_tls_is_refused() {
    let fleet = TlsBridge::start();
    let plaintext = format!("http://127.0.0.1:{}", fleet.bridge.port());
    assert_refused(&fleet, plaintext, Vec::new(), &["transport error"]);
}

#[test]
fn a_driver_with_a_certificate_from_another_ca_is_refused() {
    let fleet = TlsBridge::start();
    let env = fleet.pki.driver_env("ca.pem", Some("stranger"));
    assert_refused(&fleet, fleet.https_url(), env, &["transport error"]);
}

#[test]
fn a_driver_with_an_expired_certificate_is_refused() {
    let fleet = TlsBridge::start();
    let env = fleet.pki.driver_env("ca.pem", Some("expired"));
    assert_refused(&fleet, fleet.https_url(), env, &["transport error"]);
}

#[test]
fn a_driver_without_a_client_certificate_is_refused() {
    let fleet = TlsBridge::start();
    let env = fleet.pki.driver_env("ca.pem", None);
    assert_refused(&fleet, fleet.https_url(), env, &["transport error"]);
}

/// The fleet's own certificate, presented by a driver that claims another
/// driver's id: the bridge refuses the stream (a stolen certificate cannot
/// resume another driver's sessions). The success test above, with the id
/// the certificate names, is the control.
#[test]
fn a_driver_acting_as_an_id_its_certificate_does_not_name_is_refused() {
    let fleet = TlsBridge::start();
    let mut env = fleet.pki.driver_env("ca.pem", Some("driver"));
    env.push(("DRIVER_ID".to_owned(), "driver-2".to_owned()));
    assert_refused(
        &fleet,
        fleet.https_url(),
        env,
        &["not a name of the client certificate"],
    );
}

#[test]
fn a_driver_that_does_not_trust_the_bridges_ca_refuses_it() {
    let fleet = TlsBridge::start();
    let env = fleet.pki.driver_env("other-ca.pem", Some("driver"));
    assert_refused(&fleet, fleet.https_url(), env, &["UnknownIssuer"]);
}

#[test]
fn unreadable_or_invalid_pem_files_stop_the_start_with_the_variable_named() {
    let pki = Pki::mint();
    let not_pem = pki.path("not-pem.txt");
    pki.write("not-pem.txt", "this is not a certificate\n");

    let (code, output) = run_to_exit(
        "vendor-bridge",
        &[
            ("BRIDGE_LISTEN", "127.0.0.1:0"),
            ("BRIDGE_TLS_CERT", "/nonexistent/bridge.pem"),
            ("BRIDGE_TLS_KEY", &pki.path("bridge.key")),
        ],
    );
    assert_ne!(code, Some(0));
    assert!(
        output.contains("BRIDGE_TLS_CERT=/nonexistent/bridge.pem: cannot read the file"),
        "{output}"
    );

    let (code, output) = run_to_exit(
        "vendor-bridge",
        &[
            ("BRIDGE_LISTEN", "127.0.0.1:0"),
            ("BRIDGE_TLS_CERT", &pki.path("bridge.pem")),
            ("BRIDGE_TLS_KEY", &pki.path("bridge.pem")),
        ],
    );
    assert_ne!(code, Some(0));
    assert!(output.contains("no PRIVATE KEY block found"), "{output}");

    let (code, output) = run_to_exit(
        "driver",
        &[
            ("DRIVER_LISTEN", "127.0.0.1:0"),
            ("DRIVER_ADMIN_LISTEN", "127.0.0.1:0"),
            ("CWP_MASTER_KEY", MASTER_KEY_HEX),
            ("VENDOR_BRIDGE_URL", "https://127.0.0.1:1"),
            ("VENDOR_BRIDGE_CA", &not_pem),
        ],
    );
    assert_ne!(code, Some(0));
    assert!(
        output.contains(&format!("VENDOR_BRIDGE_CA={not_pem}: no CERTIFICATE block found")),
        "{output}"
    );
}

#[test]
fn tls_variables_with_a_plaintext_url_are_a_configuration_error() {
    let pki = Pki::mint();
    let (code, output) = run_to_exit(
        "driver",
        &[
            ("CWP_MASTER_KEY", MASTER_KEY_HEX),
            ("VENDOR_BRIDGE_URL", "http://127.0.0.1:1"),
            ("VENDOR_BRIDGE_CA", &pki.path("ca.pem")),
        ],
    );
    assert_eq!(code, Some(2), "{output}");
    assert!(
        output.contains("VENDOR_BRIDGE_CA is set but VENDOR_BRIDGE_URL is not https://"),
        "{output}"
    );

    let (code, output) = run_to_exit(
        "driver",
        &[
            ("CWP_MASTER_KEY", MASTER_KEY_HEX),
            ("VENDOR_BRIDGE_URL", "https://127.0.0.1:1"),
        ],
    );
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("VENDOR_BRIDGE_CA is not set"), "{output}");
}
