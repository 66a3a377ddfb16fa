//! Measuring processes from the outside: CPU time and resident memory from
//! `/proc`, the kernel's socket memory, and the simulator's JSON summary
//! (the simulator runs under a [`ChildGuard`], so that a failing benchmark
//! leaves none behind).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use drover_testkit::process::{ChildGuard, children, rss_kib};
use nix::sys::signal::Signal;
use serde::Deserialize;

/// CPU seconds (user + system, all threads) a process has used so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the last ')' (comm may contain spaces): state is field 3,
    // utime field 14, stime field 15.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields.get(11).context("no utime")?.parse::<f64>()? + fields.get(12).context("no stime")?.parse::<f64>()?;
    Ok(ticks / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |ticks| ticks as f64)
}

/// Resident memory of a process and all its descendants, KiB.
pub fn tree_rss_kib(pid: u32) -> u64 {
    rss_kib(pid).unwrap_or(0) + children(pid).into_iter().map(tree_rss_kib).sum::<u64>()
}

/// The kernel's TCP sockets, from `/proc/net/sockstat` and `/proc/meminfo`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KernelSockets {
    /// TCP sockets in use (`TCP: inuse`).
    pub tcp_inuse: u64,
    /// Pages of socket buffers (`TCP: mem`), all TCP sockets.
    pub tcp_mem_pages: u64,
    /// Kernel slab memory (`Slab:` of `/proc/meminfo`), KiB: socket
    /// structures, their files, inodes, dentries and epoll entries live
    /// there.
    pub slab_kib: u64,
}

impl KernelSockets {
    /// Reads the current figures.
    pub fn now() -> anyhow::Result<Self> {
        let sockstat = std::fs::read_to_string("/proc/net/sockstat").context("reading /proc/net/sockstat")?;
        let tcp = sockstat
            .lines()
            .find_map(|line| line.strip_prefix("TCP:"))
            .context("no TCP line in /proc/net/sockstat")?;
        let field = |name: &str| -> Option<u64> {
            let mut words = tcp.split_whitespace();
            while let Some(word) = words.next() {
                if word == name {
                    return words.next()?.parse().ok();
                }
            }
            None
        };
        let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
        let slab_kib = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("Slab:"))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .context("no Slab in /proc/meminfo")?;
        Ok(Self {
            tcp_inuse: field("inuse").context("no TCP inuse")?,
            tcp_mem_pages: field("mem").context("no TCP mem")?,
            slab_kib,
        })
    }

    /// Kernel memory per TCP socket added since `before`, KiB: slab and
    /// buffer pages added, over sockets added.
    pub fn per_socket_kib_since(&self, before: &Self) -> Option<f64> {
        let sockets = self.tcp_inuse.checked_sub(before.tcp_inuse).filter(|&n| n > 0)?;
        let slab = self.slab_kib as f64 - before.slab_kib as f64;
        let buffers = (self.tcp_mem_pages as f64 - before.tcp_mem_pages as f64) * page_kib();
        Some((slab + buffers) / sockets as f64)
    }
}

/// The page size, KiB.
pub fn page_kib() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4.0, |bytes| bytes as f64 / 1024.0)
}

/// Established TCP connections whose local port is one of `ports` (IPv4,
/// from `/proc/net/tcp`): what a server that exposes no counter holds.
pub fn established_on(ports: &[u16]) -> anyhow::Result<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    let mut count = 0;
    for line in table.lines().skip(1) {
        let mut fields = line.split_whitespace();
        let (Some(local), Some(_remote), Some(state)) = (fields.nth(1), fields.next(), fields.next()) else {
            continue;
        };
        // 01: TCP_ESTABLISHED.
        if state != "01" {
            continue;
        }
        let port = local
            .rsplit_once(':')
            .and_then(|(_, port)| u16::from_str_radix(port, 16).ok());
        if port.is_some_and(|port| ports.contains(&port)) {
            count += 1;
        }
    }
    Ok(count)
}

/// The CPU a set of processes used over a phase.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    start: Vec<(String, u32, f64)>,
}

impl CpuMeter {
    /// Starts measuring the named processes.
    pub fn start(processes: &[(&str, u32)]) -> Self {
        Self {
            start: processes
                .iter()
                .map(|(name, pid)| ((*name).to_owned(), *pid, cpu_seconds(*pid).unwrap_or(0.0)))
                .collect(),
        }
    }

    /// CPU seconds each process used since `start`.
    pub fn stop(&self) -> Vec<(String, f64)> {
        self.start
            .iter()
            .map(|(name, pid, before)| (name.clone(), cpu_seconds(*pid).map_or(0.0, |now| now - before)))
            .collect()
    }
}

/// Latency percentiles from the simulator, microseconds.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SimLatency {
    /// Samples.
    #[serde(default)]
    pub samples: u64,
    /// Median.
    #[serde(default)]
    pub p50: u64,
    /// 99th percentile.
    #[serde(default)]
    pub p99: u64,
    /// 99.9th percentile.
    #[serde(default)]
    pub p999: u64,
    /// Worst.
    #[serde(default)]
    pub max: u64,
}

/// The parts of `controller-sim --json` the runner uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SimSummary {
    /// Devices that completed a handshake at least once.
    #[serde(default)]
    pub devices_connected: u64,
    /// Devices connected when the run ended.
    #[serde(default)]
    pub connected_at_end: u64,
    /// Handshakes per second while connecting.
    #[serde(default)]
    pub handshake_rate: f64,
    /// Handshake latency.
    #[serde(default)]
    pub handshake_latency_us: SimLatency,
    /// Events acknowledged.
    #[serde(default)]
    pub events_acked: u64,
    /// Acknowledged events per second over the run.
    #[serde(default)]
    pub acked_per_s: f64,
    /// Send → covering ACK.
    #[serde(default)]
    pub ack_latency_us: SimLatency,
    /// `ERROR` frames by code name.
    #[serde(default)]
    pub errors: std::collections::BTreeMap<String, u64>,
    /// TCP connections that could not be opened.
    #[serde(default)]
    pub connect_failures: u64,
    /// Handshakes refused, cut or timed out.
    #[serde(default)]
    pub handshake_failures: u64,
    /// Sessions lost without the device asking.
    #[serde(default)]
    pub disconnects: u64,
    /// Handshakes completed, reconnections included.
    #[serde(default)]
    pub handshakes: u64,
    /// Heartbeats sent.
    #[serde(default)]
    pub pings_sent: u64,
    /// Commands received by the devices.
    #[serde(default)]
    pub commands_received: u64,
    /// `COMMAND` received → `ACK` of its result, as the devices saw it.
    #[serde(default)]
    pub command_latency_us: SimLatency,
    /// Everything, for fields this struct does not name.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl SimSummary {
    /// A report's ack columns: acknowledged/s, p50, p99, p99.9.
    pub fn ack_cells(&self) -> [String; 4] {
        let latency = &self.ack_latency_us;
        [
            super::report::thousands(self.acked_per_s),
            super::report::duration_us(latency.p50 as f64),
            super::report::duration_us(latency.p99 as f64),
            super::report::duration_us(latency.p999 as f64),
        ]
    }

    /// A report's errors column: `none`, or `CODE n, ...`.
    pub fn errors_cell(&self) -> String {
        if self.errors.is_empty() {
            return "none".to_owned();
        }
        let errors: Vec<String> = self.errors.iter().map(|(code, n)| format!("{code} {n}")).collect();
        errors.join(", ")
    }
}

/// Runs `controller-sim` with `args` (plus `--json`) and parses its summary.
pub fn run_sim(binary: &Path, master_key_hex: &str, args: &[String]) -> anyhow::Result<SimSummary> {
    let output = Command::new(binary)
        .args(args)
        .arg("--json")
        .env("CWP_MASTER_KEY", master_key_hex)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running controller-sim")?;
    if output.stdout.is_empty() {
        bail!("controller-sim printed no summary (exit {:?})", output.status.code());
    }
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("controller-sim's summary: {}", String::from_utf8_lossy(&output.stdout)))
}

/// A `controller-sim` running in the background, for device sets measured
/// from the outside while they hold their sessions; killed (with its
/// workers) if dropped before [`SimProcess::finish`].
#[derive(Debug)]
pub struct SimProcess {
    guard: ChildGuard,
    /// Where its JSON summary goes.
    summary: PathBuf,
}

impl SimProcess {
    /// Starts `binary` (`controller-sim` or another tool that prints one
    /// JSON object) with `args`; its stdout goes to `summary`.
    pub fn start(binary: &Path, master_key_hex: &str, args: &[String], summary: PathBuf) -> anyhow::Result<Self> {
        let out = std::fs::File::create(&summary).with_context(|| format!("creating {}", summary.display()))?;
        let mut command = Command::new(binary);
        command
            .args(args)
            .env("CWP_MASTER_KEY", master_key_hex)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::inherit());
        let guard = ChildGuard::spawn(format!("{}", binary.display()), &mut command)?;
        Ok(Self { guard, summary })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.guard.is_running()
    }

    /// Ends the run now (SIGINT: the devices finish and say `BYE`) and
    /// reads the summary; at most `timeout`.
    pub fn stop<T: serde::de::DeserializeOwned>(self, timeout: Duration) -> anyhow::Result<T> {
        self.guard.signal(Signal::SIGINT)?;
        self.finish(timeout)
    }

    /// Waits up to `timeout` for it to end by itself and reads the summary.
    pub fn finish<T: serde::de::DeserializeOwned>(mut self, timeout: Duration) -> anyhow::Result<T> {
        let status = self.guard.wait_timeout(timeout)?;
        let text =
            std::fs::read_to_string(&self.summary).with_context(|| format!("reading {}", self.summary.display()))?;
        serde_json::from_str(text.trim())
            .with_context(|| format!("{} exited {status}; its summary: {text:?}", self.guard.name()))
    }
}
