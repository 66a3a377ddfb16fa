//! Drover's own processes, started the way an operator would start them:
//! the real binaries, configured by environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::binaries::binary;
use crate::net::{free_port, loopback};
use crate::process::ChildGuard;
use crate::wait::{wait_for_port, wait_until};

/// How long a component may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a component's logs go.
#[derive(Debug, Clone, Default)]
pub enum Logs {
    /// Inherit the parent's stderr (tests: shown on failure).
    #[default]
    Inherit,
    /// Append to a file.
    File(PathBuf),
    /// Discard.
    Discard,
}

impl Logs {
    /// Where to look for what a component printed, for an error message.
    pub fn describe(&self) -> String {
        match self {
            Self::Inherit => "its output is above".to_owned(),
            Self::File(path) => format!("its log is {}", path.display()),
            Self::Discard => "its output was discarded".to_owned(),
        }
    }

    /// The `Stdio` for a child's output.
    pub fn stdio(&self) -> anyhow::Result<Stdio> {
        Ok(match self {
            Self::Inherit => Stdio::inherit(),
            Self::Discard => Stdio::null(),
            Self::File(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening log file {}", path.display()))?,
            ),
        })
    }
}

/// A running vendor-bridge.
#[derive(Debug)]
pub struct BridgeProcess {
    process: ChildGuard,
    port: u16,
    /// `BRIDGE_METRICS_LISTEN`'s port: never the default, which every
    /// bridge of a test run would share.
    metrics_port: u16,
}

impl BridgeProcess {
    /// Starts the vendor-bridge on a free port, storing into `redis_url`.
    pub fn start(redis_url: &str, logs: &Logs, extra_env: &[(&str, String)]) -> anyhow::Result<Self> {
        let port = free_port()?;
        Self::start_on(port, redis_url, logs, extra_env)
    }

    /// Starts the vendor-bridge on `port` (e.g. again after a kill), its
    /// metrics on another free port.
    pub fn start_on(port: u16, redis_url: &str, logs: &Logs, extra_env: &[(&str, String)]) -> anyhow::Result<Self> {
        let metrics_port = free_port()?;
        let mut command = Command::new(binary("vendor-bridge")?);
        command
            .env("BRIDGE_LISTEN", loopback(port).to_string())
            .env("BRIDGE_METRICS_LISTEN", loopback(metrics_port).to_string())
            .env("REDIS_URL", redis_url)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .envs(extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(logs.stdio()?)
            .stderr(logs.stdio()?);
        let process = ChildGuard::spawn(format!("vendor-bridge :{port}"), &mut command)?;
        wait_for_port(loopback(port), READY_TIMEOUT)?;
        if crate::binaries::bridge_serves_metrics() {
            wait_for_port(loopback(metrics_port), READY_TIMEOUT)?;
        }
        Ok(Self {
            process,
            port,
            metrics_port,
        })
    }

    /// `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its gRPC port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its `/metrics` and `/healthz` address (`BRIDGE_METRICS_LISTEN`).
    pub fn metrics_addr(&self) -> SocketAddr {
        loopback(self.metrics_port)
    }

    /// The process.
    pub fn process(&mut self) -> &mut ChildGuard {
        &mut self.process
    }
}

/// How to start a driver.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// The vendor-bridge.
    pub bridge_url: String,
    /// Redis for commands.
    pub redis_url: String,
    /// `CWP_MASTER_KEY`, 64 hex digits.
    pub master_key_hex: String,
    /// Expect PROXY v2 headers (behind HAProxy).
    pub proxy_protocol: bool,
    /// More variables, e.g. `DRIVER_HEARTBEAT_S`.
    pub extra_env: Vec<(String, String)>,
    /// Where its logs go.
    pub logs: Logs,
}

/// A running driver.
#[derive(Debug)]
pub struct DriverProcess {
    process: ChildGuard,
    port: u16,
    admin_port: u16,
    driver_id: String,
}

impl DriverProcess {
    /// Starts a driver on free ports and waits until `/healthz` answers.
    pub fn start(options: &DriverOptions) -> anyhow::Result<Self> {
        Self::start_on(free_port()?, free_port()?, options)
    }

    /// Starts a driver on the given ports.
    pub fn start_on(port: u16, admin_port: u16, options: &DriverOptions) -> anyhow::Result<Self> {
        let driver_id = format!("driver-{port}");
        let mut command = Command::new(binary("driver")?);
        command
            .env("DRIVER_LISTEN", loopback(port).to_string())
            .env("DRIVER_ADMIN_LISTEN", loopback(admin_port).to_string())
            .env("DRIVER_ID", &driver_id)
            .env("VENDOR_BRIDGE_URL", &options.bridge_url)
            .env("REDIS_URL", &options.redis_url)
            .env("CWP_MASTER_KEY", &options.master_key_hex)
            .env("DRIVER_PROXY_PROTOCOL", options.proxy_protocol.to_string())
            .env(
                "UPLOAD_DIR",
                std::env::temp_dir().join(format!("drover-uploads-{port}")),
            )
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .envs(options.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(options.logs.stdio()?)
            .stderr(options.logs.stdio()?);
        let process = ChildGuard::spawn(format!("driver :{port}"), &mut command)?;
        let mut driver = Self {
            process,
            port,
            admin_port,
            driver_id,
        };
        driver.wait_ready()?;
        Ok(driver)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        wait_healthy("driver", self.port, self.admin_port)
    }

    /// The CWP/1 address.
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// The admin (healthz, metrics) address.
    pub fn admin_addr(&self) -> SocketAddr {
        loopback(self.admin_port)
    }

    /// Its `DRIVER_ID`.
    pub fn driver_id(&self) -> &str {
        &self.driver_id
    }

    /// The process.
    pub fn process(&mut self) -> &mut ChildGuard {
        &mut self.process
    }

    /// `/metrics` as text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = crate::http::get(self.admin_addr(), "/metrics")?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        Ok(body)
    }

    /// The value of one un-labelled metric (or the sum over its labels).
    pub fn metric(&self, name: &str) -> anyhow::Result<f64> {
        Ok(metric_sum(&self.metrics()?, name, ""))
    }
}

/// How to start an HTTP gateway.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// The vendor-bridge.
    pub bridge_url: String,
    /// Redis for the nonces.
    pub redis_url: String,
    /// `CWP_MASTER_KEY`, 64 hex digits.
    pub master_key_hex: String,
    /// Expect PROXY v2 headers (behind HAProxy).
    pub proxy_protocol: bool,
    /// More variables, e.g. `HTTP_MAX_BODY_BYTES`.
    pub extra_env: Vec<(String, String)>,
    /// Where its logs go.
    pub logs: Logs,
}

/// A running `http-gateway`.
#[derive(Debug)]
pub struct GatewayProcess {
    process: ChildGuard,
    port: u16,
    admin_port: u16,
}

impl GatewayProcess {
    /// Starts a gateway on free ports and waits until `/healthz` answers.
    pub fn start(options: &GatewayOptions) -> anyhow::Result<Self> {
        Self::start_on(free_port()?, free_port()?, options)
    }

    /// Starts a gateway on the given ports.
    pub fn start_on(port: u16, admin_port: u16, options: &GatewayOptions) -> anyhow::Result<Self> {
        let mut command = Command::new(binary("http-gateway")?);
        command
            .env("HTTP_LISTEN", loopback(port).to_string())
            .env("HTTP_ADMIN_LISTEN", loopback(admin_port).to_string())
            .env("HTTP_GATEWAY_ID", format!("http-{port}"))
            .env("VENDOR_BRIDGE_URL", &options.bridge_url)
            .env("REDIS_URL", &options.redis_url)
            .env("CWP_MASTER_KEY", &options.master_key_hex)
            .env("HTTP_PROXY_PROTOCOL", options.proxy_protocol.to_string())
            .env(
                "UPLOAD_DIR",
                std::env::temp_dir().join(format!("drover-uploads-http-{port}")),
            )
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .envs(options.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(options.logs.stdio()?)
            .stderr(options.logs.stdio()?);
        let process = ChildGuard::spawn(format!("http-gateway :{port}"), &mut command)?;
        wait_healthy("http-gateway", port, admin_port)?;
        Ok(Self {
            process,
            port,
            admin_port,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }

    /// `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The admin (healthz, metrics) address.
    pub fn admin_addr(&self) -> SocketAddr {
        loopback(self.admin_port)
    }

    /// The process.
    pub fn process(&mut self) -> &mut ChildGuard {
        &mut self.process
    }

    /// The value of one un-labelled metric (or the sum over its labels
    /// whose line contains `labels`, e.g. `outcome="replayed"`).
    pub fn metric(&self, name: &str, labels: &str) -> anyhow::Result<f64> {
        let (status, text) = crate::http::get(self.admin_addr(), "/metrics")?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        Ok(metric_sum(&text, name, labels))
    }
}

/// Waits until a server listens on `port` and `admin_port` and its
/// `/healthz` answers 200.
fn wait_healthy(what: &str, port: u16, admin_port: u16) -> anyhow::Result<()> {
    wait_for_port(loopback(admin_port), READY_TIMEOUT)?;
    wait_for_port(loopback(port), READY_TIMEOUT)?;
    let admin = loopback(admin_port);
    wait_until(&format!("{what} /healthz to answer 200"), READY_TIMEOUT, || {
        crate::http::get(admin, "/healthz").is_ok_and(|(status, _)| status == 200)
    })?;
    Ok(())
}

/// The sum of metric `name`'s samples in Prometheus text whose line
/// contains `labels` (`""`: all of them).
fn metric_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.split([' ', '{']).next() == Some(name))
        .filter(|line| line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
