//! HAProxy processes for a local fleet: the generated configuration checked
//! with `haproxy -c`, then one or more HAProxy instances in the foreground.
//! Several instances share the fleet port through SO_REUSEPORT (HAProxy's
//! default on Linux), each with its own file-descriptor budget.
//!
//! Each instance runs in master-worker mode (`-W -db`), as the official
//! Docker image and the distributions' systemd units run it: a master
//! process supervises the worker that serves devices. A reload
//! ([`Haproxy::reload`]) is what `systemctl reload haproxy` or
//! `docker kill -s HUP` does: a signal to the master, which checks the
//! configuration, starts a new worker on the fleet port and tells the old
//! one to stop accepting; the old worker keeps serving the devices it holds
//! until they leave. A restart ([`Haproxy::restart`]) is a crash and a
//! supervisor starting it again: every device connection is cut.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::sys::signal::Signal;

use crate::components::Logs;
use crate::lbconfig::LbConfig;
use crate::net::loopback;
use crate::process::{ChildGuard, children, find_on_path, is_alive};
use crate::wait::{wait_for_port, wait_until};

/// How long a new worker may take to appear after a reload.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Running HAProxy instances (each a master and its workers) sharing one
/// configuration.
#[derive(Debug)]
pub struct Haproxy {
    masters: Vec<ChildGuard>,
    config_path: PathBuf,
    fleet_port: u16,
    stats_port: u16,
    logs: Logs,
}

impl Haproxy {
    /// Writes `config` into `dir`, checks it, and starts `processes`
    /// HAProxy instances on it; waits until the fleet port accepts.
    pub fn start(config: &LbConfig, processes: usize, dir: &Path, logs: &Logs) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let config_path = dir.join("haproxy.cfg");
        std::fs::write(&config_path, config.render()).with_context(|| format!("writing {}", config_path.display()))?;
        check(&config_path)?;
        let mut haproxy = Self {
            masters: Vec::new(),
            config_path,
            fleet_port: config.fleet_port,
            stats_port: config.stats_port,
            logs: logs.clone(),
        };
        for _ in 0..processes.max(1) {
            haproxy.masters.push(haproxy.spawn_master()?);
        }
        haproxy.wait_serving()?;
        Ok(haproxy)
    }

    fn spawn_master(&self) -> anyhow::Result<ChildGuard> {
        let mut command = Command::new(executable()?);
        command
            .arg("-W")
            .arg("-db")
            .arg("-f")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(self.logs.stdio()?)
            .stderr(self.logs.stdio()?);
        ChildGuard::spawn(
            format!("haproxy #{} :{}", self.masters.len() + 1, self.fleet_port),
            &mut command,
        )
    }

    fn wait_serving(&mut self) -> anyhow::Result<()> {
        for master in &mut self.masters {
            let pid = master.pid();
            let mut exited = false;
            wait_until("HAProxy's worker to start", RELOAD_TIMEOUT, || {
                exited = !master.is_running();
                exited || !children(pid).is_empty()
            })?;
            if exited {
                bail!(
                    "{} exited before it served (its alert says why: a port in use, …; {})",
                    master.name(),
                    self.logs.describe()
                );
            }
        }
        wait_for_port(self.addr(), RELOAD_TIMEOUT)?;
        Ok(())
    }

    /// Reloads every instance the way operators do (`systemctl reload
    /// haproxy`: SIGUSR2 to the master) and waits until each runs a new
    /// worker. Devices already connected stay on the old worker, which
    /// exits once they have all left.
    pub fn reload(&mut self) -> anyhow::Result<()> {
        // A configuration HAProxy rejects would leave the old worker in
        // charge; say so instead.
        check(&self.config_path)?;
        for master in &self.masters {
            let pid = master.pid();
            let before = children(pid);
            master.signal(Signal::SIGUSR2)?;
            wait_until("HAProxy's new worker after a reload", RELOAD_TIMEOUT, || {
                children(pid).iter().any(|child| !before.contains(child))
            })?;
        }
        wait_for_port(self.addr(), RELOAD_TIMEOUT)?;
        Ok(())
    }

    /// Kills every instance (SIGKILL to the master; its workers exit with
    /// it) and starts them again on the same configuration: what a crash
    /// and a supervisor's restart look like. Every device connection is
    /// cut.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let count = self.masters.len();
        for master in &mut self.masters {
            let workers = children(master.pid());
            master.kill();
            // The port is free again only once the workers are gone.
            wait_until("HAProxy's workers to exit with their master", RELOAD_TIMEOUT, || {
                workers.iter().all(|&worker| !is_alive(worker))
            })?;
        }
        self.masters.clear();
        for _ in 0..count {
            let master = self.spawn_master()?;
            self.masters.push(master);
        }
        self.wait_serving()
    }

    /// Where devices connect (on loopback).
    pub fn addr(&self) -> SocketAddr {
        loopback(self.fleet_port)
    }

    /// The stats page and Prometheus endpoint.
    pub fn stats_addr(&self) -> SocketAddr {
        loopback(self.stats_port)
    }

    /// The configuration file in use.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Stops every instance (SIGTERM to the master stops its workers).
    pub fn stop(&mut self) {
        for master in &mut self.masters {
            master.stop(Duration::from_secs(5));
        }
    }

    /// The ids of the processes serving devices: every instance's workers,
    /// including old ones still serving their devices after a reload.
    pub fn pids(&self) -> Vec<u32> {
        self.masters.iter().flat_map(|master| children(master.pid())).collect()
    }

    /// The state HAProxy's health checks give `server` (`driver-1`, …) of
    /// the `drivers` backend, as its stats page shows it: `UP`, `DOWN`,
    /// `DOWN 1/2` for a restarted driver halfway through its checks, ….
    pub fn server_status(&self, server: &str) -> anyhow::Result<String> {
        let (code, csv) = crate::http::get(self.stats_addr(), "/stats;csv")?;
        anyhow::ensure!(code == 200, "HAProxy's stats page answered {code}");
        let mut lines = csv.lines();
        let header = lines
            .next()
            .and_then(|line| line.strip_prefix("# "))
            .context("no header on the stats page")?;
        let column = header
            .split(',')
            .position(|name| name == "status")
            .context("no status column on the stats page")?;
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&"drivers") && fields.get(1) == Some(&server))
            .and_then(|fields| fields.get(column).map(|status| (*status).to_owned()))
            .with_context(|| format!("no server {server} in the drivers backend"))
    }

    /// The masters' process ids.
    pub fn master_pids(&self) -> Vec<u32> {
        self.masters.iter().map(ChildGuard::pid).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener};

    use super::*;
    use crate::net::free_port;

    fn config(fleet_port: u16) -> anyhow::Result<LbConfig> {
        Ok(LbConfig {
            bind: "127.0.0.1".into(),
            fleet_port,
            maxconn: 100,
            threads: 1,
            heartbeat_s: 30,
            stats_bind: "127.0.0.1".into(),
            stats_port: free_port()?,
            backends: LbConfig::local_backends(1, "127.0.0.1", free_port()?, free_port()?),
            resolver: None,
            http: None,
            command: "haproxy's tests".into(),
        })
    }

    #[test]
    fn a_master_that_cannot_bind_the_fleet_port_is_an_error_at_once_not_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let err = Haproxy::start(
            &config(taken.local_addr().unwrap().port()).unwrap(),
            1,
            dir.path(),
            &Logs::Discard,
        )
        .expect_err("the fleet port is taken");
        assert!(err.to_string().contains("exited before it served"), "{err:#}");

        // The control: the same configuration on a free port serves.
        let mut haproxy =
            Haproxy::start(&config(free_port().unwrap()).unwrap(), 1, dir.path(), &Logs::Discard).unwrap();
        assert_eq!(haproxy.pids().len(), 1);
        haproxy.stop();
    }
}
