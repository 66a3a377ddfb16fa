//! Test support: a mounted power-cut filesystem in temporary directories,
//! and a `redis-server` on it that is killed on drop.
//!
//! Needs root (mounting FUSE), /dev/fuse and `redis-server` on PATH.

#![allow(dead_code, missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use drover_powercut::{Mount, PowerCutFs};
use tempfile::TempDir;

/// A power-cut filesystem mounted over a temporary "disk".
pub struct Rig {
    /// Declared first: dropped (unmounted) before the directories go.
    mount: Option<Mount>,
    mountpoint: TempDir,
    disk: TempDir,
}

impl Rig {
    pub fn new() -> Rig {
        let disk = tempfile::tempdir().expect("a temporary backing directory");
        let mountpoint = tempfile::tempdir().expect("a temporary mount point");
        let mount = PowerCutFs::mount(disk.path(), mountpoint.path())
            .expect("mounting needs root and /dev/fuse (the tests run as root, as CI does)");
        Rig {
            mount: Some(mount),
            mountpoint,
            disk,
        }
    }

    pub fn mount(&self) -> &Mount {
        self.mount.as_ref().expect("mounted")
    }

    /// A path on the mounted filesystem.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.mountpoint.path().join(name)
    }

    /// A path in the backing directory: what is on the "disk".
    pub fn on_disk(&self, name: &str) -> std::path::PathBuf {
        self.disk.path().join(name)
    }

    /// Unmounts and mounts again: the reboot after a cut.
    pub fn remount(&mut self) {
        let mount = self.mount.take().expect("mounted");
        self.mount = Some(mount.remount().expect("remounting"));
    }
}

/// The appendfsync policy a Redis runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    Always,
    EverySec,
}

/// A `redis-server` with its append-only file in a directory, on a free
/// loopback port; killed (SIGKILL) on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
    /// Its log lines, for a failing test's message.
    log: mpsc::Receiver<String>,
}

/// How long Redis may take to start (it loads the append-only file first).
const START_DEADLINE: Duration = Duration::from_secs(30);

impl Redis {
    /// Starts Redis on `dir` and waits until it accepts connections.
    pub fn start(dir: &Path, fsync: Fsync) -> Redis {
        // The port is free when chosen but another test may take it before
        // Redis binds it: then Redis exits, and we try another.
        let mut failures = Vec::new();
        for _ in 0..5 {
            match Self::try_start(dir, fsync, free_port()) {
                Ok(redis) => return redis,
                Err(log) => failures.push(log),
            }
        }
        panic!("redis-server did not start; its logs: {failures:#?}");
    }

    fn try_start(dir: &Path, fsync: Fsync, port: u16) -> Result<Redis, Vec<String>> {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .args(["--appendonly", "yes"])
            .args([
                "--appendfsync",
                match fsync {
                    Fsync::Always => "always",
                    Fsync::EverySec => "everysec",
                },
            ])
            // No RDB snapshots: what survives is what the append-only file
            // kept, nothing else.
            .args(["--save", ""])
            .args(["--daemonize", "no", "--logfile", ""])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, log) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + START_DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match log.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.contains("Ready to accept connections");
                    seen.push(line);
                    if ready {
                        return Ok(Redis { child, port, log });
                    }
                }
                // Exited (its stdout closed) or too slow.
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(seen);
                }
            }
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Connection {
        connect(&self.url())
    }

    /// `kill -9`, and waits until it is gone.
    pub fn kill9(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        // std's kill is SIGKILL on Unix: no shutdown, no last flush.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The log lines printed so far.
    pub fn log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// A connection to the Redis at `url`.
pub fn connect(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("connecting to the test's redis-server")
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
