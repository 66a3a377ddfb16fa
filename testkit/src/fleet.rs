//! The test fleet: real processes on loopback (redis-server, the
//! vendor-bridge, drivers, HTTP gateways on demand, no HAProxy), killed when the [`TestFleet`]
//! drops; and what else a test body needs around it (a runtime, the
//! processes' logs, the open-file limit, a binary run to its exit). These
//! fail the test when a process does not start.
//!
//! A fleet behind HAProxy, as `fleet up` runs it, is
//! [`crate::haproxy_fleet`].

use std::net::SocketAddr;
use std::time::Duration;

use crate::components::{BridgeProcess, DriverOptions, DriverProcess, GatewayOptions, GatewayProcess, Logs};
use crate::device::MASTER_KEY_HEX;
use crate::process::ChildGuard;
use crate::redis::RedisServer;

/// Where the fleet's processes log: nowhere, unless `DROVER_TEST_LOGS=1`
/// (then to the test's stderr).
pub fn logs() -> Logs {
    if std::env::var_os("DROVER_TEST_LOGS").is_some_and(|v| v == "1") {
        Logs::Inherit
    } else {
        Logs::Discard
    }
}

/// Redis, one vendor-bridge and any number of drivers, each on free
/// loopback ports, the drivers with [`MASTER_KEY_HEX`] and without PROXY
/// headers (devices connect to them directly).
#[derive(Debug)]
pub struct TestFleet {
    /// The private Redis (append-only, fsync always).
    pub redis: RedisServer,
    /// The vendor-bridge, storing into `redis`.
    pub bridge: BridgeProcess,
    /// The drivers, in start order.
    pub drivers: Vec<DriverProcess>,
    /// What every driver was started with, to start one more.
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
            .expect("a valid Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection")
    }

    /// Starts an HTTP gateway (`http-gateway`) on free ports, storing
    /// through this fleet's bridge, its nonces in this fleet's Redis, with
    /// the test master key; `extra_env` added.
    pub fn start_gateway(&self, extra_env: &[(&str, &str)]) -> GatewayProcess {
        GatewayProcess::start(&GatewayOptions {
            bridge_url: self.bridge.url(),
            redis_url: self.redis.url(),
            master_key_hex: MASTER_KEY_HEX.to_owned(),
            proxy_protocol: false,
            extra_env: extra_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            logs: logs(),
        })
        .expect("http-gateway starts")
    }

    /// Kills the bridge and starts it again on the same port.
    pub fn restart_bridge(&mut self) {
        let port = self.bridge.port();
        self.bridge.process().kill();
        self.bridge = BridgeProcess::start_on(port, &self.redis.url(), &logs(), &[]).expect("bridge restarts");
    }
}

/// A multi-threaded runtime for a test body.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Raises this process's soft open-file limit to its hard limit, and fails
/// the test if that still leaves fewer than `needed` (a test holding
/// thousands of client sockets; the spawned processes raise their own).
pub fn raise_open_file_limit(needed: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit(RLIMIT_NOFILE)");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raising the soft open-file limit to the hard one");
    }
    assert!(
        usize::try_from(hard).unwrap_or(usize::MAX) >= needed,
        "this test needs {needed} open files; the hard limit is {hard}"
    );
}

/// Runs one of Drover's binaries with `env` until it exits by itself (it
/// must, within a minute: a configuration error); returns its exit code and
/// everything it wrote.
pub fn run_to_exit(binary: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = dir.path().join("output");
    let file = std::fs::File::create(&output).expect("creating the output file");
    let mut process = ChildGuard::spawn(
        binary,
        std::process::Command::new(crate::binaries::binary(binary).expect("the binary is built"))
            .envs(env.iter().copied())
            .env("LOG_FORMAT", "text")
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().expect("duplicating the output file"))
            .stderr(file),
    )
    .expect("the binary starts");
    let status = process.wait_timeout(Duration::from_secs(60)).expect("exits by itself");
    (
        status.code(),
        std::fs::read_to_string(&output).expect("reading the output"),
    )
}
