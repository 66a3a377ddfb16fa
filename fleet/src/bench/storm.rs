//! Connect storm: every device connects at once through HAProxy (a power
//! cut ends, a cell tower comes back) and authenticates; the figure is
//! handshakes completed per second, from the first connect to the last
//! device's `WELCOME` (`controller-sim --scenario storm`). A handshake is
//! the whole CWP/1 §2 exchange: TCP through HAProxy, PROXY v2, `HELLO`,
//! `CHALLENGE`, `AUTH` (HMAC-SHA256 both ways), the bridge's session
//! script in Redis (fsynced; registrations batched by the driver), the command subscription, `WELCOME`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use drover_testkit::binaries::binary;

use super::BenchContext;
use super::events::MASTER_KEY_HEX;
use super::probe::{CpuMeter, SimProcess, SimSummary};
use super::report::{Table, thousands};
use super::rig::{Rig, cpu_by_name};

/// The target.
const TARGET_RATE: f64 = 5_000.0;

/// One storm.
#[derive(Debug, Clone)]
pub struct StormRun {
    /// Drivers behind HAProxy.
    pub drivers: usize,
    /// HAProxy processes.
    pub haproxy_processes: usize,
    /// What the simulator measured.
    pub sim: SimSummary,
    /// CPU seconds per kind of process during the storm.
    pub cpu: Vec<(String, f64)>,
    /// The simulator's command line.
    pub command: String,
    /// Sessions the drivers held over the storm, sampled every
    /// [`TIMELINE_INTERVAL`] from the simulator's start.
    pub timeline: Vec<TimelineSample>,
}

/// Sessions held at one moment of a storm.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TimelineSample {
    /// Since the simulator started, seconds.
    pub seconds: f64,
    /// Authenticated sessions all drivers held (`drover_driver_sessions`).
    pub sessions: f64,
}

/// How often the storm's timeline is sampled: a storm of 10,000 devices
/// lasts a few seconds, and each sample is one `/metrics` request per
/// driver, little beside the storm's own work.
pub const TIMELINE_INTERVAL: Duration = Duration::from_millis(100);

/// Every storm of the run.
#[derive(Debug, Clone)]
pub struct StormResult {
    /// Devices per storm.
    pub devices: u64,
    /// One per driver count.
    pub runs: Vec<StormRun>,
}

/// Runs one storm of `devices` devices per entry of `driver_counts`.
pub fn run(ctx: &BenchContext, devices: u64, driver_counts: &[usize]) -> anyhow::Result<StormResult> {
    let sim = binary("controller-sim")?;
    let mut runs = Vec::new();
    for &drivers in driver_counts {
        let (_, haproxy_processes) = Rig::size_for(devices);
        let mut rig = Rig::start(ctx, &format!("storm-{drivers}"), drivers, haproxy_processes)?;
        // HAProxy marks the drivers up after two health checks.
        std::thread::sleep(Duration::from_secs(3));
        let args: Vec<String> = [
            "--target",
            &rig.target(),
            "--scenario",
            "storm",
            "--storm-then",
            "end",
            "--devices",
            &devices.to_string(),
            "--duration",
            "120s",
            "--grace",
            "2s",
            "--source-ips",
            "127.0.0.2-127.0.0.9",
            "--serial-prefix",
            "STORM-",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        eprintln!("storm: {devices} devices at once, {drivers} driver(s) ...");
        let meter = CpuMeter::start(&rig.processes());
        let mut sim_args = args.clone();
        sim_args.push("--json".to_owned());
        let started = Instant::now();
        let mut storm = SimProcess::start(
            &sim,
            MASTER_KEY_HEX,
            &sim_args,
            ctx.work_dir.join(format!("storm-{drivers}.json")),
        )?;
        let mut timeline = Vec::new();
        while storm.is_running() {
            timeline.push(TimelineSample {
                seconds: started.elapsed().as_secs_f64(),
                sessions: rig.sessions(),
            });
            std::thread::sleep(TIMELINE_INTERVAL);
        }
        // The devices said BYE as the simulator ended: the last sample shows the drop.
        timeline.push(TimelineSample {
            seconds: started.elapsed().as_secs_f64(),
            sessions: rig.sessions(),
        });
        let summary: SimSummary = storm.finish(Duration::from_secs(60))?;
        let cpu = cpu_by_name(&meter.stop());
        drop(rig);
        runs.push(StormRun {
            drivers,
            haproxy_processes,
            sim: summary,
            cpu,
            command: format!("CWP_MASTER_KEY=… controller-sim {} --json", args.join(" ")),
            timeline,
        });
    }
    Ok(StormResult { devices, runs })
}

impl StormResult {
    /// The section for docs/BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let mut text = String::new();
        let best = self.runs.iter().map(|r| r.sim.handshake_rate).fold(0.0, f64::max);
        let _ = writeln!(
            text,
            "**{} devices connecting at once** through HAProxy: up to **{} handshakes/s** (target ≥ {}: {}).\n",
            thousands(self.devices as f64),
            thousands(best),
            thousands(TARGET_RATE),
            if best >= TARGET_RATE { "met" } else { "**not met**" }
        );
        let mut table = Table::new(&[
            "drivers",
            "HAProxy processes",
            "devices connected",
            "handshakes/s",
            "handshake p50",
            "p99",
            "p99.9",
            "failures",
            "CPU s (storm)",
        ]);
        for run in &self.runs {
            let s = &run.sim;
            let failures = format!(
                "{} connect, {} handshake{}",
                s.connect_failures,
                s.handshake_failures,
                if s.errors.is_empty() {
                    String::new()
                } else {
                    format!(", errors {:?}", s.errors)
                }
            );
            let cpu: Vec<String> = run.cpu.iter().map(|(name, secs)| format!("{name} {secs:.2}")).collect();
            table.row(vec![
                run.drivers.to_string(),
                run.haproxy_processes.to_string(),
                thousands(s.devices_connected as f64),
                format!("**{}**", thousands(s.handshake_rate)),
                super::report::duration_us(s.handshake_latency_us.p50 as f64),
                super::report::duration_us(s.handshake_latency_us.p99 as f64),
                super::report::duration_us(s.handshake_latency_us.p999 as f64),
                failures,
                cpu.join(", "),
            ]);
        }
        text.push_str(&table.render());
        let _ = writeln!(
            text,
            "\nHandshakes/s: devices / time from the start to the last device's first `WELCOME`; latency: TCP connect → `WELCOME` per device. The simulator (one process, single-threaded) shares the 2 cores with everything it measures."
        );
        for run in &self.runs {
            let _ = writeln!(text, "\n{} driver(s): `{}`", run.drivers, run.command);
        }
        text
    }
}
