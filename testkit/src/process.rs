//! Child processes owned by a test or the fleet runner: started with piped
//! or inherited output, killed (and reaped) when their [`ChildGuard`] is
//! dropped, so that neither a test failure nor Ctrl-C leaves a process
//! behind. Also: finding programs on `PATH`, and what `/proc` says of a
//! process (its children, whether it lives, its memory and descriptors).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A child process that is killed when the guard is dropped.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
}

impl ChildGuard {
    /// Starts `command`, naming it `name` in errors.
    ///
    /// The child gets a process group of its own, so that a Ctrl-C in the
    /// terminal reaches only the fleet runner, which then stops every
    /// component in order (drivers drain first).
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> anyhow::Result<Self> {
        let name = name.into();
        let child = command
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        Ok(Self {
            name,
            child: Some(child),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its stdout, when it was piped and not taken yet: to read what it
    /// prints while it runs (`drover events --follow`).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut()?.stdout.take()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Sends `signal` (e.g. `Signal::SIGTERM`) to the process.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.pid()).context("pid fits in i32")?;
        kill(Pid::from_raw(pid), signal).with_context(|| format!("sending {signal} to {}", self.name))
    }

    /// Asks the process to stop (SIGTERM) and waits up to `grace` for it,
    /// then kills it.
    pub fn stop(&mut self, grace: Duration) {
        if self.child.is_none() {
            return;
        }
        if self.signal(Signal::SIGTERM).is_ok() && self.wait_timeout(grace).is_ok() {
            return;
        }
        self.kill();
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; returns its
    /// exit status, or kills it and fails.
    pub fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("process already reaped")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(crate::wait::POLL);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Finds an executable on `PATH`.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The children of `pid` (`/proc/PID/task/*/children`, all its threads');
/// empty once it is gone.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|child| child.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// A process's resident memory, KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// A process's open file descriptors (entries of `/proc/PID/fd`).
pub fn open_fds(pid: u32) -> anyhow::Result<u64> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).with_context(|| format!("reading /proc/{pid}/fd"))?;
    Ok(entries.count() as u64)
}
