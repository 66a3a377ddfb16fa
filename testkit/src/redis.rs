//! A private `redis-server` on a free loopback port, configured the way
//! Drover needs it to be in production: append-only file on, fsynced on
//! every write (`appendfsync always`), so that a stored event is on disk.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::net::{free_port, loopback};
use crate::process::{ChildGuard, find_on_path};
use crate::wait::{wait_for_port, wait_until};

/// How to install what is missing, printed with the error.
pub const INSTALL_HINT: &str =
    "redis-server is not installed: `apt-get install redis-server` (Debian/Ubuntu) or `brew install redis`";

/// A running private Redis.
#[derive(Debug)]
pub struct RedisServer {
    process: ChildGuard,
    port: u16,
    dir: PathBuf,
    /// Given after the defaults, so they override them; kept for restarts.
    extra_args: Vec<String>,
    _tempdir: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// Starts Redis in a fresh temporary directory.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with_args(&[])
    }

    /// Starts Redis in a fresh temporary directory with `extra_args` after
    /// the defaults, e.g. `["--appendfsync", "everysec"]` to run it with the
    /// weaker durability a misconfigured production Redis would have. A
    /// restart keeps them.
    pub fn start_with_args(extra_args: &[&str]) -> anyhow::Result<Self> {
        let tempdir = tempfile::Builder::new().prefix("drover-redis-").tempdir()?;
        let dir = tempdir.path().to_owned();
        let extra_args: Vec<String> = extra_args.iter().map(|&arg| arg.to_owned()).collect();
        let mut server = Self::start_in_with_args(&dir, free_port()?, extra_args)?;
        server._tempdir = Some(tempdir);
        Ok(server)
    }

    /// Starts Redis with its data in `dir` (kept after it stops) on `port`.
    pub fn start_in(dir: &Path, port: u16) -> anyhow::Result<Self> {
        Self::start_in_with_args(dir, port, Vec::new())
    }

    /// [`RedisServer::start_in`] with `extra_args` after the defaults (see
    /// [`RedisServer::start_with_args`]).
    pub fn start_in_with(dir: &Path, port: u16, extra_args: &[&str]) -> anyhow::Result<Self> {
        let extra_args = extra_args.iter().map(|&arg| arg.to_owned()).collect();
        Self::start_in_with_args(dir, port, extra_args)
    }

    fn start_in_with_args(dir: &Path, port: u16, extra_args: Vec<String>) -> anyhow::Result<Self> {
        let binary = find_on_path("redis-server").context(INSTALL_HINT)?;
        std::fs::create_dir_all(dir)?;
        let process = ChildGuard::spawn(
            format!("redis-server :{port}"),
            Command::new(binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(dir)
                .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
                // Rewrite the append-only file only once it has grown by a
                // gigabyte: see README, "Durability".
                .args(["--auto-aof-rewrite-min-size", "1gb"])
                .args(["--maxclients", "10000", "--logfile", "redis.log"])
                // Redis applies its arguments in order: later ones win.
                .args(&extra_args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        )?;
        wait_for_port(loopback(port), Duration::from_secs(10))?;
        // Accepting connections is not serving: a Redis that restarts on
        // its append-only file answers LOADING until it has read it.
        let client = redis::Client::open(format!("redis://{}", loopback(port)))?;
        // Any answer but LOADING will do: with ACL users (`user default
        // off`) it is NOAUTH.
        wait_until("Redis to load its data", Duration::from_secs(30), || {
            match client
                .get_connection()
                .and_then(|mut connection| redis::cmd("PING").query::<String>(&mut connection))
            {
                Ok(_) => true,
                Err(err) => err.code().is_some_and(|code| code != "LOADING"),
            }
        })?;
        Ok(Self {
            process,
            port,
            dir: dir.to_owned(),
            extra_args,
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
        let restarted = Self::start_in_with_args(&self.dir, self.port, self.extra_args.clone())?;
        self.process = restarted.process;
        Ok(())
    }

    /// Stops Redis without restarting it.
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Stops Redis gracefully (SIGTERM: it finishes writing its files).
    pub fn shutdown(&mut self) {
        self.process.stop(Duration::from_secs(10));
    }

    /// Starts Redis again after [`RedisServer::stop`].
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.restart()
    }

    /// Starts recording every command this Redis receives from now on
    /// (`redis-cli monitor`); returns once the recording runs.
    pub fn monitor(&self) -> anyhow::Result<Monitor> {
        let binary = find_on_path("redis-cli").context(CLI_INSTALL_HINT)?;
        let log = tempfile::Builder::new().prefix("drover-redis-monitor-").tempfile()?;
        let process = ChildGuard::spawn(
            format!("redis-cli monitor :{}", self.port),
            Command::new(binary)
                .args(["-p", &self.port.to_string(), "monitor"])
                .stdin(Stdio::null())
                .stdout(log.reopen()?)
                .stderr(Stdio::null()),
        )?;
        let monitor = Monitor {
            process,
            log,
            port: self.port,
        };
        // redis-cli prints OK once Redis has switched the connection to
        // monitoring: from then on nothing is missed.
        wait_until("redis-cli monitor to start", Duration::from_secs(10), || {
            monitor.text().is_ok_and(|text| text.starts_with("OK"))
        })?;
        Ok(monitor)
    }
}

/// How to install `redis-cli`, printed with the error.
pub const CLI_INSTALL_HINT: &str =
    "redis-cli is not installed: `apt-get install redis-tools` (Debian/Ubuntu) or `brew install redis`";

/// Every command a Redis received since [`RedisServer::monitor`], one line
/// each as `MONITOR` prints it: every argument quoted, bytes that are not
/// printable escaped (`"EVALSHA" "…" "0" "CTRL-0042" …`). Stops recording
/// when dropped.
#[derive(Debug)]
pub struct Monitor {
    process: ChildGuard,
    log: tempfile::NamedTempFile,
    /// The Redis watched.
    port: u16,
}

impl Monitor {
    /// What was recorded so far.
    pub fn text(&self) -> anyhow::Result<String> {
        let bytes = std::fs::read(self.log.path()).context("reading the MONITOR log")?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Stops recording once every command Redis ran before this call is
    /// in the log; returns everything recorded. Redis feeds a monitor in
    /// the order it runs commands, but asynchronously: the lines of a
    /// command whose reply was already read may still be on their way to
    /// `redis-cli`. So a marker (`ECHO`) goes last, and the log is read
    /// once the marker is in it (its line is in the text returned).
    pub fn stop(mut self) -> anyhow::Result<String> {
        let marker = format!("drover-monitor-end-{}-{}", std::process::id(), self.port);
        echo(self.port, &marker)?;
        wait_until("the MONITOR log to catch up", Duration::from_secs(10), || {
            self.text().is_ok_and(|text| text.contains(&marker))
        })?;
        self.process.kill();
        self.text()
    }
}

/// `ECHO text` on a connection of its own; waits for the answer.
fn echo(port: u16, text: &str) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let mut connection = std::net::TcpStream::connect(loopback(port)).context("connecting to Redis")?;
    connection.set_read_timeout(Some(Duration::from_secs(10)))?;
    let command = format!("*2\r\n$4\r\nECHO\r\n${}\r\n{text}\r\n", text.len());
    connection.write_all(command.as_bytes()).context("sending ECHO")?;
    let mut answer = [0; 1];
    connection.read_exact(&mut answer).context("reading ECHO's answer")?;
    anyhow::ensure!(answer[0] == b'$', "Redis answered ECHO with {:?}", answer[0] as char);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A command answered just before `stop` is in what `stop` returns,
    /// every time: the monitor's feed can lag behind the command's reply,
    /// and stopping at once once lost a line (vendor-bridge's
    /// `a_batch_stored_again_…` in a CI run).
    #[test]
    fn a_monitor_stopped_right_after_a_command_holds_it() {
        let redis = RedisServer::start().unwrap();
        for round in 0..20 {
            let monitor = redis.monitor().unwrap();
            echo(redis.port, &format!("round-{round}")).unwrap();
            let seen = monitor.stop().unwrap();
            assert!(seen.contains(&format!("\"round-{round}\"")), "round {round}: {seen}");
        }
    }
}
