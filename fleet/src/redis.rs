//! A private `redis-server` on a free loopback port, configured the way
//! Drover needs it to be in production: append-only file on, fsynced on
//! every write (`appendfsync always`), so that a stored event is on disk.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::process::{ChildGuard, find_on_path, free_port, wait_for_port};

/// How to install what is missing, printed with the error.
pub const INSTALL_HINT: &str = "redis-server is not installed: `apt-get install redis-server` (Debian/Ubuntu) or `brew install redis`";

/// A running private Redis.
#[derive(Debug)]
pub struct RedisServer {
    process: ChildGuard,
    port: u16,
    dir: PathBuf,
    _tempdir: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// Starts Redis in a fresh temporary directory.
    pub fn start() -> anyhow::Result<Self> {
        let tempdir = tempfile::Builder::new().prefix("drover-redis-").tempdir()?;
        let dir = tempdir.path().to_owned();
        let mut server = Self::start_in(&dir, free_port()?)?;
        server._tempdir = Some(tempdir);
        Ok(server)
    }

    /// Starts Redis with its data in `dir` (kept after it stops) on `port`.
    pub fn start_in(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let binary = find_on_path("redis-server").context(INSTALL_HINT)?;
        std::fs::create_dir_all(dir)?;
        let process = ChildGuard::spawn(
            format!("redis-server :{port}"),
            Command::new(binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(dir)
                .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
                .args(["--maxclients", "10000", "--logfile", "redis.log"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        )?;
        wait_for_port(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_secs(10))?;
        Ok(Self {
            process,
            port,
            dir: dir.to_owned(),
            _tempdir: None,
        })
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Kills Redis (SIGKILL) and starts it again on the same port with the
    /// same data: what a crash and a supervisor restart look like.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        let restarted = Self::start_in(&self.dir, self.port)?;
        self.process = restarted.process;
        Ok(())
    }

    /// Stops Redis without restarting it.
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts Redis again after [`RedisServer::stop`].
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.restart()
    }
}
