//! What every end-to-end test needs: a fleet of real processes on loopback
//! (redis-server, vendor-bridge, drivers), device keys, and a few ways to
//! look into Redis. Everything is killed when the [`TestFleet`] drops.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use controller_sim::client::Connection;
use controller_sim::device::{Device, UploadJob};
use controller_sim::verify::{
    Expectation, ExpectedUpload, Tally, UploadTally, UploadVerdict, Verdict, read_stream, read_uploads,
};
use cwp::{DeviceKey, ErrorCode, ErrorFrame, FrameType, MasterKey, Serial, ServerFrame, Welcome};
use fleet::components::{BridgeProcess, DriverOptions, DriverProcess, Logs};
use fleet::redis::RedisServer;

mod haproxy_fleet;
#[allow(unused_imports)] // not every test binary runs a fleet behind HAProxy
pub use haproxy_fleet::*;

/// The master key of every test fleet.
pub const MASTER_KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// A device's key, derived like the drivers derive it.
pub fn device_key(serial: &Serial) -> DeviceKey {
    DeviceKey::derive(&MasterKey::from_hex(MASTER_KEY_HEX).unwrap(), serial)
}

/// `CTRL-0042` and friends.
pub fn serial(name: &str) -> Serial {
    name.parse().unwrap()
}

/// Where the fleet's processes log: nowhere, unless `DROVER_TEST_LOGS=1`
/// (then to the test's stderr).
pub fn logs() -> Logs {
    if std::env::var_os("DROVER_TEST_LOGS").is_some_and(|v| v == "1") {
        Logs::Inherit
    } else {
        Logs::Discard
    }
}

/// Redis, one vendor-bridge and `drivers` drivers.
pub struct TestFleet {
    pub redis: RedisServer,
    pub bridge: BridgeProcess,
    pub drivers: Vec<DriverProcess>,
    pub driver_options: DriverOptions,
}

impl TestFleet {
    /// Starts a fleet; `extra_env` goes to every driver.
    pub fn start(drivers: usize, extra_env: &[(&str, &str)]) -> Self {
        let redis = RedisServer::start().expect("redis-server starts");
        let bridge = BridgeProcess::start(&redis.url(), &logs(), &[]).expect("vendor-bridge starts");
        let driver_options = DriverOptions {
            bridge_url: bridge.url(),
            redis_url: redis.url(),
            master_key_hex: MASTER_KEY_HEX.to_owned(),
            proxy_protocol: false,
            extra_env: extra_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            logs: logs(),
        };
        let drivers = (0..drivers)
            .map(|_| DriverProcess::start(&driver_options).expect("driver starts"))
            .collect();
        Self {
            redis,
            bridge,
            drivers,
            driver_options,
        }
    }

    /// The first driver's CWP/1 address.
    pub fn addr(&self) -> SocketAddr {
        self.drivers[0].addr()
    }

    /// A Redis connection for assertions.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection")
    }

    /// Kills the bridge and starts it again on the same port.
    pub fn restart_bridge(&mut self) {
        let port = self.bridge.port();
        self.bridge.process().kill();
        self.bridge = BridgeProcess::start_on(port, &self.redis.url(), &logs(), &[]).expect("bridge restarts");
    }
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

/// Waits until `check` passes, polling every 20 ms, failing after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every `(serial, event_id)` in `cwp:events`, in stream order.
/// `PUBLISH channel message`, as an operator sends it; how many
/// subscribers received it.
pub async fn publish(redis: &mut redis::aio::MultiplexedConnection, channel: &str, message: &str) -> i64 {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(message)
        .query_async(redis)
        .await
        .unwrap()
}

pub async fn stored_events(redis: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut start = "-".to_owned();
    loop {
        let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg("cwp:events")
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(10_000)
            .query_async(redis)
            .await
            .unwrap();
        let Some(last) = page.ids.last() else { break };
        start = format!("({}", last.id);
        for entry in &page.ids {
            let serial: String = entry.get("serial").unwrap();
            let event_id: String = entry.get("event_id").unwrap();
            out.push((serial, event_id.parse().unwrap()));
        }
    }
    out
}

/// The exactly-once check of `devices` (each started `with_ack_log`)
/// against `cwp:events`: lost, duplicated and unexpected entries, counted.
pub async fn exactly_once_verdict(redis_url: &str, devices: &[Device]) -> Verdict {
    let mut tally = Tally::new(devices.iter().map(|device| Expectation {
        serial: *device.serial(),
        acked: device.ack_log().cloned().expect("devices keep an ack log"),
        highest_sent: device.highest_sent(),
    }));
    read_stream(redis_url, controller_sim::verify::EVENTS_STREAM, &mut tally)
        .await
        .expect("cwp:events is readable");
    tally.verdict()
}

/// Reads all of `cwp:events`, prints the verdict, and fails the test unless
/// every event the devices saw acknowledged is stored exactly once, none is
/// stored twice and none is stored that they never sent.
pub async fn assert_nothing_lost_or_duplicated(redis_url: &str, devices: &[Device]) -> Verdict {
    let verdict = exactly_once_verdict(redis_url, devices).await;
    eprintln!("{verdict}");
    assert!(verdict.passed(), "{verdict}");
    assert!(verdict.acked > 0, "the devices saw nothing acknowledged: {verdict}");
    verdict
}

/// Reads all of `cwp:uploads`, prints the verdict, and fails the test unless
/// every upload of `devices` (running `job`) that was reported complete is
/// recorded exactly once as sent, and nothing else of theirs is.
pub async fn assert_uploads_recorded_exactly_once(
    redis_url: &str,
    devices: &[Device],
    job: &UploadJob,
) -> UploadVerdict {
    let mut tally = UploadTally::new(devices.iter().filter_map(|device| ExpectedUpload::of(device, job)));
    read_uploads(redis_url, &mut tally)
        .await
        .expect("cwp:uploads is readable");
    let verdict = tally.verdict();
    eprintln!("{verdict}");
    assert!(verdict.passed(), "{verdict}");
    verdict
}

/// Raises this process's soft open-file limit to its hard limit, and fails
/// the test if that still leaves fewer than `needed` (a test holding
/// thousands of client sockets; the spawned processes raise their own).
pub fn raise_open_file_limit(needed: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    assert!(
        usize::try_from(hard).unwrap_or(usize::MAX) >= needed,
        "this test needs {needed} open files; the hard limit is {hard}"
    );
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

/// How long a device waits for the driver's answer, or for it to close.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

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

/// Runs one of Drover's binaries with `env` until it exits by itself (it
/// must, within a minute: a configuration error); returns its exit code and
/// everything it wrote.
pub fn run_to_exit(binary: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("output");
    let file = std::fs::File::create(&output).unwrap();
    let mut process = fleet::process::ChildGuard::spawn(
        binary,
        std::process::Command::new(fleet::binaries::binary(binary).unwrap())
            .envs(env.iter().copied())
            .env("LOG_FORMAT", "text")
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file),
    )
    .unwrap();
    let status = process.wait_timeout(Duration::from_secs(60)).expect("exits by itself");
    (status.code(), std::fs::read_to_string(&output).unwrap())
}

/// A multi-threaded runtime for a test body.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
