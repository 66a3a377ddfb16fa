//! HAProxy processes for a local fleet: the generated configuration checked
//! with `haproxy -c`, then one or more processes in the foreground. Several
//! processes share the fleet port through SO_REUSEPORT (HAProxy's default
//! on Linux), each with its own file-descriptor budget.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::components::Logs;
use crate::lbconfig::LbConfig;
use crate::process::{ChildGuard, find_on_path, wait_for_port};

/// How to install what is missing, printed with the error.
pub const INSTALL_HINT: &str =
    "haproxy is not installed: `apt-get install haproxy` (Debian/Ubuntu, 2.6 or newer) or `brew install haproxy`";

/// The `haproxy` executable.
pub fn executable() -> anyhow::Result<PathBuf> {
    find_on_path("haproxy").context(INSTALL_HINT)
}

/// Runs `haproxy -c` on a configuration file.
pub fn check(config: &Path) -> anyhow::Result<()> {
    let output = Command::new(executable()?)
        .arg("-c")
        .arg("-f")
        .arg(config)
        .output()
        .context("running haproxy -c")?;
    if !output.status.success() {
        bail!(
            "haproxy -c rejected {}:\n{}{}",
            config.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Running HAProxy processes sharing one configuration.
#[derive(Debug)]
pub struct Haproxy {
    processes: Vec<ChildGuard>,
    config_path: PathBuf,
    fleet_port: u16,
    stats_port: u16,
}

impl Haproxy {
    /// Writes `config` into `dir`, checks it, and starts `processes`
    /// HAProxy processes on it; waits until the fleet port accepts.
    pub fn start(config: &LbConfig, processes: usize, dir: &Path, logs: &Logs) -> anyhow::Result<Self> {
        let config_path = dir.join("haproxy.cfg");
        std::fs::write(&config_path, config.render()).with_context(|| format!("writing {}", config_path.display()))?;
        check(&config_path)?;
        let mut haproxy = Self {
            processes: Vec::new(),
            config_path,
            fleet_port: config.fleet_port,
            stats_port: config.stats_port,
        };
        for i in 0..processes.max(1) {
            let mut command = Command::new(executable()?);
            command
                .arg("-db")
                .arg("-f")
                .arg(&haproxy.config_path)
                .stdin(Stdio::null())
                .stdout(logs.stdio()?)
                .stderr(logs.stdio()?);
            haproxy.processes.push(ChildGuard::spawn(
                format!("haproxy #{} :{}", i + 1, config.fleet_port),
                &mut command,
            )?);
        }
        wait_for_port(
            SocketAddr::from((Ipv4Addr::LOCALHOST, config.fleet_port)),
            Duration::from_secs(10),
        )?;
        Ok(haproxy)
    }

    /// Where devices connect (on loopback).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.fleet_port))
    }

    /// The stats page and Prometheus endpoint.
    pub fn stats_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.stats_port))
    }

    /// The configuration file in use.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Stops every process.
    pub fn stop(&mut self) {
        for process in &mut self.processes {
            process.stop(Duration::from_secs(5));
        }
    }

    /// The processes' ids.
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(ChildGuard::pid).collect()
    }
}
