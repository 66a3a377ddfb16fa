//! Measuring processes from the outside: CPU time and resident memory from
//! `/proc`, and the simulator's JSON summary.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
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

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
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
    /// Everything, for fields this struct does not name.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
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

/// Starts `controller-sim` in the background (for long-lived device sets
/// measured from the outside); its summary can be read with
/// [`finish_sim`].
pub fn spawn_sim(binary: &Path, master_key_hex: &str, args: &[String]) -> anyhow::Result<std::process::Child> {
    Command::new(binary)
        .args(args)
        .arg("--json")
        .env("CWP_MASTER_KEY", master_key_hex)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting controller-sim")
}

/// Waits for a simulator started with [`spawn_sim`] and parses its summary.
pub fn finish_sim(child: std::process::Child) -> anyhow::Result<SimSummary> {
    let output = child.wait_with_output()?;
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("controller-sim's summary: {}", String::from_utf8_lossy(&output.stdout)))
}
