//! Commands: the operator's round trip at fleet scale. Devices connected
//! through HAProxy run `controller-sim --scenario commands` (they answer
//! every `COMMAND` at once with a result event); `bench-commands` plays
//! the main application: it publishes commands with ids at a steady rate
//! to devices picked at random (`PUBLISH cwp:cmd:{serial}`) and times each
//! until its notice arrives on `cwp:cmd-result:{serial}` (`PSUBSCRIBE`).
//!
//! The path measured: Redis pub/sub → the device's driver → HAProxy →
//! device → `EVENT(kind 0xFFFF)` → driver → gRPC → vendor-bridge → Redis
//! (stored, fsynced, published by the same script) → the subscriber.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use drover_testkit::binaries::binary;
use serde::Deserialize;

use super::BenchContext;
use super::events::MASTER_KEY_HEX;
use super::probe::{CpuMeter, SimLatency, SimProcess, SimSummary};
use super::report::{Table, duration_us, thousands};
use super::rig::{Rig, cpu_by_name};

/// Target: p99 below this, µs.
const TARGET_P99_US: u64 = 10_000;

/// `bench-commands`' summary.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OperatorReport {
    /// Commands published.
    pub published: u64,
    /// `PUBLISH` answered 1.
    pub delivered: u64,
    /// `PUBLISH` answered 0.
    pub not_delivered: u64,
    /// Result notices by status.
    pub results: BTreeMap<String, u64>,
    /// Delivered commands with no notice within the grace.
    pub without_result: u64,
    /// Commands per second achieved.
    pub rate: f64,
    /// `PUBLISH` → notice, µs.
    pub round_trip_us: SimLatency,
}

/// The result.
#[derive(Debug, Clone)]
pub struct CommandsResult {
    /// Devices connected.
    pub devices: u64,
    /// Drivers.
    pub drivers: usize,
    /// HAProxy processes.
    pub haproxy_processes: usize,
    /// Commands per second asked for.
    pub rate: f64,
    /// The operator's view.
    pub operator: OperatorReport,
    /// The devices' view.
    pub devices_view: SimSummary,
    /// CPU seconds per kind of process while commands flowed.
    pub cpu: Vec<(String, f64)>,
    /// Seconds commands flowed.
    pub seconds: u64,
    /// Command lines: devices, operator.
    pub commands: (String, String),
}

/// Runs the benchmark: `devices` devices, `rate` commands per second.
pub fn run(ctx: &BenchContext, devices: u64, rate: f64) -> anyhow::Result<CommandsResult> {
    let sim = binary("controller-sim")?;
    let operator = binary("bench-commands")?;
    let (drivers, haproxy_processes) = Rig::size_for(devices);
    // A fleet, not one driver: commands reach devices on every driver.
    let drivers = drivers.max(2);
    let mut rig = Rig::start(ctx, "commands", drivers, haproxy_processes)?;
    std::thread::sleep(Duration::from_secs(3));
    let sim_args: Vec<String> = [
        "--target",
        &rig.target(),
        "--scenario",
        "commands",
        "--devices",
        &devices.to_string(),
        "--connect-rate",
        "5000",
        "--duration",
        "3600s",
        "--grace",
        "5s",
        "--source-ips",
        "127.0.0.2-127.0.0.9",
        "--serial-prefix",
        "CMD-",
        "--json",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let mut devices_sim = SimProcess::start(&sim, MASTER_KEY_HEX, &sim_args, ctx.work_dir.join("commands-sim.json"))?;
    rig.wait_for_sessions(devices, &mut devices_sim, Duration::from_secs(60))
        .context("connecting the devices")?;
    std::thread::sleep(Duration::from_secs(2));

    let seconds = ctx.phase_seconds();
    let redis_url = rig.fleet.redis_url.clone();
    let operator_args: Vec<String> = [
        "--redis",
        &redis_url,
        "--serial-prefix",
        "CMD-",
        "--first-serial",
        "1",
        "--devices",
        &devices.to_string(),
        "--serial-width",
        "6",
        "--rate",
        &format!("{rate}"),
        "--duration",
        &format!("{seconds}s"),
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    eprintln!("commands: {rate} commands/s to {devices} devices for {seconds} s ...");
    let meter = CpuMeter::start(&rig.processes());
    let output = Command::new(&operator)
        .args(&operator_args)
        .output()
        .context("running bench-commands")?;
    let cpu = cpu_by_name(&meter.stop());
    let report: OperatorReport = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "bench-commands' summary: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    let devices_view: SimSummary = devices_sim.stop(Duration::from_secs(60))?;
    drop(rig);
    Ok(CommandsResult {
        devices,
        drivers,
        haproxy_processes,
        rate,
        operator: report,
        devices_view,
        cpu,
        seconds,
        commands: (
            format!("CWP_MASTER_KEY=… controller-sim {}", sim_args.join(" ")),
            format!("bench-commands {}", operator_args.join(" ")).replace(&redis_url, "redis://…"),
        ),
    })
}

impl CommandsResult {
    /// The section for docs/BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let o = &self.operator;
        let rt = &o.round_trip_us;
        let mut text = String::new();
        let _ = writeln!(
            text,
            "**{} commands/s to {} connected devices** ({} drivers, {} HAProxy processes), {} s: round trip `PUBLISH` → result notice p50 **{}**, p99 **{}** (target < 10 ms: {}).\n",
            thousands(o.rate),
            thousands(self.devices as f64),
            self.drivers,
            self.haproxy_processes,
            self.seconds,
            duration_us(rt.p50 as f64),
            duration_us(rt.p99 as f64),
            if rt.samples > 0 && rt.p99 < TARGET_P99_US {
                "met"
            } else {
                "**not met**"
            }
        );
        let mut table = Table::new(&["", "samples", "p50", "p99", "p99.9", "max"]);
        table.row(latency_row("operator: `PUBLISH` → notice on `cwp:cmd-result:*`", rt));
        table.row(latency_row(
            "device: `COMMAND` received → `ACK` of its result",
            &self.devices_view.command_latency_us,
        ));
        text.push_str(&table.render());
        let results: Vec<String> = o.results.iter().map(|(status, n)| format!("{status} {n}")).collect();
        let cpu: Vec<String> = self
            .cpu
            .iter()
            .map(|(name, secs)| format!("{name} {:.0}%", 100.0 * secs / self.seconds.max(1) as f64))
            .collect();
        let _ = writeln!(
            text,
            "\n{} published ({} asked for {} s); `PUBLISH` replies: {} × 1 (delivered), {} × 0; results: {}; {} delivered without a result. Devices received {} commands. CPU while commands flowed (of one core): {}.",
            thousands(o.published as f64),
            thousands(self.rate * self.seconds as f64),
            self.seconds,
            thousands(o.delivered as f64),
            o.not_delivered,
            if results.is_empty() {
                "none".to_owned()
            } else {
                results.join(", ")
            },
            o.without_result,
            thousands(self.devices_view.commands_received as f64),
            cpu.join(", ")
        );
        let _ = writeln!(
            text,
            "\nDevices: `{}`  \nOperator: `{}`",
            self.commands.0, self.commands.1
        );
        text
    }
}

/// One row of the latency table.
fn latency_row(label: &str, latency: &SimLatency) -> Vec<String> {
    vec![
        label.to_owned(),
        thousands(latency.samples as f64),
        duration_us(latency.p50 as f64),
        duration_us(latency.p99 as f64),
        duration_us(latency.p999 as f64),
        duration_us(latency.max as f64),
    ]
}
