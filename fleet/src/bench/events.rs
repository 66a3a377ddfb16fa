//! Events end to end (device → driver → gRPC → vendor-bridge → Redis with
//! `appendfsync always` → `ACK`): the most a fleet of simulated devices gets
//! acknowledged per second, the ack latency at fractions of that, and, in the
//! same run on the same Redis, the ceiling: `redis-benchmark` pipelining the
//! same `XADD`s.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use drover_schema::event_fields;
use drover_testkit::binaries::binary;
use drover_testkit::components::{BridgeProcess, DriverOptions, DriverProcess, Logs};
use drover_testkit::net::free_port;
use drover_testkit::process::find_on_path;
use drover_testkit::redis::RedisServer;

use super::BenchContext;
use super::probe::{CpuMeter, SimSummary, run_sim};
use super::report::{Table, thousands};

/// The benchmark's fixed key (the simulated fleet's master key).
pub const MASTER_KEY_HEX: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

/// Bytes of body per event: a small JSON reading.
const EVENT_SIZE: usize = 64;

/// One measured phase.
#[derive(Debug, Clone)]
pub struct Phase {
    /// What it was.
    pub label: String,
    /// Events per second offered by the simulator.
    pub offered: f64,
    /// What the simulator measured.
    pub summary: SimSummary,
    /// CPU seconds per process over the phase.
    pub cpu: Vec<(String, f64)>,
    /// Length of the phase, seconds.
    pub seconds: f64,
}

/// The whole result.
#[derive(Debug, Clone)]
pub struct EventsResult {
    /// Devices connected.
    pub devices: u64,
    /// Phases, saturation first.
    pub phases: Vec<Phase>,
    /// `redis-benchmark` XADD requests per second.
    pub ceiling: f64,
    /// The ceiling's command line.
    pub ceiling_command: String,
    /// redis-server's CPU per `XADD` of the ceiling, microseconds.
    pub redis_us_per_xadd: f64,
}

/// A fleet for the benchmark: Redis, bridge, one driver (devices connect
/// directly; HAProxy is not part of the measured path).
struct Rig {
    redis: RedisServer,
    bridge: BridgeProcess,
    driver: DriverProcess,
}

impl Rig {
    fn start(ctx: &BenchContext, name: &str, devices: u64) -> anyhow::Result<Self> {
        let redis = RedisServer::start_in(&ctx.work_dir.join(format!("{name}-redis")), free_port()?)?;
        let bridge = BridgeProcess::start(
            &redis.url(),
            &Logs::File(ctx.log_dir.join(format!("{name}-bridge.log"))),
            &[],
        )?;
        let driver = DriverProcess::start(&DriverOptions {
            bridge_url: bridge.url(),
            redis_url: redis.url(),
            master_key_hex: MASTER_KEY_HEX.to_owned(),
            proxy_protocol: false,
            extra_env: vec![
                ("RUST_LOG".to_owned(), "warn".to_owned()),
                // Room for every device's full window: at saturation devices
                // wait for ACKs (closed loop) instead of meeting BUSY.
                (
                    "DRIVER_MAX_PENDING_EVENTS".to_owned(),
                    (devices * 256).max(100_000).to_string(),
                ),
            ],
            logs: Logs::File(ctx.log_dir.join(format!("{name}-driver.log"))),
        })?;
        Ok(Self { redis, bridge, driver })
    }

    fn processes(&mut self) -> Vec<(&'static str, u32)> {
        vec![
            ("redis-server", self.redis.pid()),
            ("vendor-bridge", self.bridge.process().pid()),
            ("driver", self.driver.process().pid()),
        ]
    }
}

fn sim_args(driver: std::net::SocketAddr, devices: u64, rate: f64, seconds: u64) -> Vec<String> {
    [
        "--target".to_owned(),
        driver.to_string(),
        "--devices".to_owned(),
        devices.to_string(),
        "--rate".to_owned(),
        format!("{rate:.0}"),
        "--event-size".to_owned(),
        EVENT_SIZE.to_string(),
        "--duration".to_owned(),
        format!("{seconds}s"),
        // Controllers buffer readings and write them in small bursts.
        "--burst-interval".to_owned(),
        "50ms".to_owned(),
        "--source-ips".to_owned(),
        "127.0.0.2-127.0.0.9".to_owned(),
        "--serial-prefix".to_owned(),
        "EVB-".to_owned(),
        // Devices join at a steady pace: this is not the connect-storm test.
        "--connect-rate".to_owned(),
        "2000".to_owned(),
    ]
    .into()
}

fn phase(ctx: &BenchContext, rig: &mut Rig, label: &str, devices: u64, rate: f64) -> anyhow::Result<Phase> {
    let sim = binary("controller-sim")?;
    let seconds = ctx.phase_seconds();
    let _consumer = Consumer::start(rig.redis.port(), drover_schema::Layout::SINGLE.event_streams());
    let meter = CpuMeter::start(&rig.processes());
    let started = std::time::Instant::now();
    let summary = run_sim(
        &sim,
        MASTER_KEY_HEX,
        &sim_args(rig.driver.addr(), devices, rate, seconds),
    )?;
    let cpu = meter.stop();
    Ok(Phase {
        label: label.to_owned(),
        offered: rate,
        summary,
        cpu,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Stands in for the main application, which consumes the event streams
/// and trims what it has processed: every half second each stream is cut to
/// its newest ~100,000 entries (on a cluster, `redis-cli -c` follows the
/// redirection to the stream's master). Without it the stream would grow by millions of
/// entries per phase, and Redis would spend the run forking and rewriting
/// its append-only file for a dataset no deployment keeps.
pub(crate) struct Consumer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Consumer {
    pub(crate) fn start(port: u16, streams: Vec<String>) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                for stream in &streams {
                    let _ = Command::new("redis-cli")
                        .args(["-c", "-p", &port.to_string(), "XTRIM", stream, "MAXLEN", "~", "100000"])
                        .stdout(std::process::Stdio::null())
                        .status();
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The stream entry a ceiling appends: the fields the bridge writes for an
/// event, with values of the sizes the benchmark's events have.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CeilingEntry<'a> {
    /// The device's serial.
    pub serial: &'a str,
    /// Bytes of the event's body.
    pub body_len: usize,
    /// The server that received it (the entry's `driver` field).
    pub driver: &'a str,
}

/// The events benchmark's entries: `controller-sim`'s 64-byte bodies.
const EVENTS_ENTRY: CeilingEntry<'static> = CeilingEntry {
    serial: "EVB-000001",
    body_len: EVENT_SIZE,
    driver: "driver-1",
};

/// What the ceiling measured.
#[derive(Debug, Clone)]
pub(crate) struct Ceiling {
    /// `XADD`s per second.
    pub rate: f64,
    /// Its command line.
    pub command: String,
    /// redis-server's CPU (all threads, from `/proc`) per `XADD`,
    /// microseconds: what one stored entry costs Redis without our script.
    pub redis_us_per_xadd: f64,
}

/// `redis-benchmark` appending the same entries as the bridge, pipelined
/// deeply so that each fsync covers many of them.
pub(crate) fn ceiling(redis: &RedisServer, quick: bool, entry: &CeilingEntry<'_>) -> anyhow::Result<Ceiling> {
    let tool =
        find_on_path("redis-benchmark").context("redis-benchmark is not installed (it comes with redis-server)")?;
    let body = "x".repeat(entry.body_len);
    let requests: u32 = if quick { 200_000 } else { 2_000_000 };
    let requests_arg = requests.to_string();
    let port = redis.port().to_string();
    let args = [
        "-p",
        &port,
        "-c",
        "16",
        "-P",
        "500",
        "-n",
        &requests_arg,
        "-r",
        "1000000000",
        "--csv",
        "XADD",
        "cwp:ceiling",
        "*",
        event_fields::SERIAL,
        entry.serial,
        event_fields::EVENT_ID,
        "__rand_int__",
        event_fields::TIME_MS,
        "1767225600000",
        event_fields::KIND,
        "7",
        event_fields::BODY,
        &body,
        event_fields::DRIVER,
        entry.driver,
        event_fields::RECEIVED_MS,
        "1767225600000",
    ];
    let _consumer = Consumer::start(redis.port(), vec!["cwp:ceiling".to_owned()]);
    let meter = CpuMeter::start(&[("redis-server", redis.pid())]);
    let output = Command::new(&tool)
        .args(args)
        .output()
        .context("running redis-benchmark")?;
    let redis_seconds = meter.stop().first().map_or(0.0, |(_, seconds)| *seconds);
    let text = String::from_utf8_lossy(&output.stdout);
    let rps = text
        .lines()
        .last()
        .and_then(|line| line.split("\",\"").nth(1))
        .and_then(|value| value.trim_matches('"').parse::<f64>().ok())
        .with_context(|| format!("redis-benchmark printed no rate: {text}"))?;
    let placeholder = format!("<{} bytes>", entry.body_len);
    let shown: Vec<&str> = args
        .iter()
        .map(|a| if *a == body.as_str() { placeholder.as_str() } else { a })
        .collect();
    Ok(Ceiling {
        rate: rps,
        command: format!("redis-benchmark {}", shown.join(" ")),
        redis_us_per_xadd: redis_seconds * 1e6 / f64::from(requests),
    })
}

/// Has Redis rewrite its append-only file now (`BGREWRITEAOF`) and waits
/// until it is done: the saturated phase grows the file by about the
/// `auto-aof-rewrite-min-size` that starts a rewrite by itself, and one
/// starting in the middle of a fixed-rate phase would be the whole of its
/// tail (measured apart, `bench/aof_rewrite_tail.sh`).
fn rewrite_append_only_file(redis: &RedisServer) -> anyhow::Result<()> {
    let mut connection = redis::Client::open(redis.url())?
        .get_connection()
        .context("connecting to the benchmark's Redis")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    // A rewrite Redis started by itself must end before another can start.
    wait_while_rewriting(&mut connection, deadline, "Redis's own rewrite")?;
    let _: String = redis::cmd("BGREWRITEAOF")
        .query(&mut connection)
        .context("BGREWRITEAOF")?;
    wait_while_rewriting(&mut connection, deadline, "BGREWRITEAOF")
}

/// Polls `INFO persistence` until no rewrite of the append-only file runs
/// or waits to run.
fn wait_while_rewriting(connection: &mut redis::Connection, deadline: Instant, what: &str) -> anyhow::Result<()> {
    loop {
        let info: String = redis::cmd("INFO").arg("persistence").query(connection)?;
        let rewriting = info
            .lines()
            .any(|line| matches!(line.trim(), "aof_rewrite_in_progress:1" | "aof_rewrite_scheduled:1"));
        if !rewriting {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{what} did not end in 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the benchmark with `devices` devices.
pub fn run(ctx: &BenchContext, devices: u64) -> anyhow::Result<EventsResult> {
    let mut rig = Rig::start(ctx, &format!("events-{devices}"), devices)?;
    // Saturation: offer far more than the fleet can take; what it
    // acknowledges per second is its capacity.
    let saturated = phase(
        ctx,
        &mut rig,
        "saturated (offered far above capacity)",
        devices,
        400_000.0,
    )?;
    let capacity = saturated.summary.acked_per_s;
    if capacity <= 0.0 {
        bail!("no event was acknowledged: {:?}", saturated.summary);
    }
    let mut phases = vec![saturated];
    rewrite_append_only_file(&rig.redis)?;
    for (fraction, label) in [
        (0.25, "25% of capacity"),
        (0.5, "50% of capacity"),
        (0.9, "90% of capacity"),
    ] {
        phases.push(phase(ctx, &mut rig, label, devices, capacity * fraction)?);
    }
    if capacity >= 50_000.0 {
        phases.push(phase(ctx, &mut rig, "50,000 events/s", devices, 50_000.0)?);
    }
    let ceiling = ceiling(&rig.redis, ctx.quick, &EVENTS_ENTRY)?;
    Ok(EventsResult {
        devices,
        phases,
        ceiling: ceiling.rate,
        ceiling_command: ceiling.command,
        redis_us_per_xadd: ceiling.redis_us_per_xadd,
    })
}

/// Target: Redis's CPU per stored event at most this multiple of its CPU
/// per raw `XADD` of the same entry.
pub const REDIS_CPU_TARGET: f64 = 1.2;

impl Phase {
    /// redis-server's CPU (all threads) per acknowledged event over the
    /// phase, microseconds.
    pub fn redis_us_per_event(&self) -> Option<f64> {
        let seconds = self
            .cpu
            .iter()
            .find(|(name, _)| name == "redis-server")
            .map(|(_, seconds)| *seconds)?;
        Some(seconds * 1e6 / self.summary.events_acked.max(1) as f64)
    }
}

impl EventsResult {
    /// Redis's CPU per stored event against its CPU per raw `XADD`, at the
    /// highest load the fleet takes steadily: the 90% phase (saturation
    /// adds the reconnections of refused devices, each a session opened and
    /// closed in Redis).
    pub fn redis_cpu_ratio(&self) -> Option<(f64, f64)> {
        let steady = self.phases.iter().find(|phase| phase.label.starts_with("90%"))?;
        let per_event = steady.redis_us_per_event()?;
        Some((per_event, per_event / self.redis_us_per_xadd.max(f64::MIN_POSITIVE)))
    }

    /// The section for docs/BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let capacity = self.phases.first().map_or(0.0, |p| p.summary.acked_per_s);
        let mut text = String::new();
        let _ = writeln!(
            text,
            "**{} devices**: capacity **{} events/s** acknowledged end to end; Redis ceiling (same `XADD`s, pipelined) {} /s in the same run: **{:.0}%** of it.\n",
            thousands(self.devices as f64),
            thousands(capacity),
            thousands(self.ceiling),
            100.0 * capacity / self.ceiling.max(1.0)
        );
        let mut table = Table::new(&[
            "phase",
            "offered /s",
            "acknowledged /s",
            "ack p50",
            "ack p99",
            "ack p99.9",
            "errors",
            "Redis CPU per event (× an `XADD`)",
        ]);
        for phase in &self.phases {
            let s = &phase.summary;
            let mut row = vec![phase.label.clone(), thousands(phase.offered)];
            row.extend(s.ack_cells());
            row.push(s.errors_cell());
            row.push(phase.redis_us_per_event().map_or_else(
                || "–".to_owned(),
                |us| {
                    format!(
                        "{us:.2} µs ({:.2}×)",
                        us / self.redis_us_per_xadd.max(f64::MIN_POSITIVE)
                    )
                },
            ));
            table.row(row);
        }
        text.push_str(&table.render());
        if let Some(saturated) = self.phases.first() {
            let events = saturated.summary.events_acked.max(1) as f64;
            let per_event: Vec<String> = saturated
                .cpu
                .iter()
                .map(|(name, seconds)| format!("{name} {:.1} µs", seconds * 1e6 / events))
                .collect();
            let _ = writeln!(
                text,
                "\nCPU per acknowledged event at capacity (from `/proc`, all threads): {}; the simulator's own share is the rest of the 2 cores.",
                per_event.join(", ")
            );
            if let Some((per_event, ratio)) = self.redis_cpu_ratio() {
                let _ = writeln!(
                    text,
                    "\nRedis per stored event at 90% of capacity: **{per_event:.2} µs** of CPU through the bridge's script against **{:.2} µs** per `XADD` of the ceiling in the same run: **{ratio:.2}×** (target ≤ {REDIS_CPU_TARGET}×; every phase in the table's last column).",
                    self.redis_us_per_xadd,
                );
            }
            if !saturated.summary.errors.is_empty() {
                let _ = writeln!(
                    text,
                    "\nErrors while saturated are the protocol's back-pressure at work: `BUSY` refuses events beyond a device's window or the driver's pending cap; acks then take longer than the simulator's `BUSY` back-off, so a device that hears no ack for a whole back-off resends its in-flight events, and those the driver had in fact accepted are refused with `OUT_OF_ORDER`; the device then resends on a new connection, where they are acknowledged without being stored twice."
                );
            }
        }
        let _ = writeln!(text, "\nCeiling: `{}`", self.ceiling_command);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(label: &str, events_acked: u64, redis_seconds: f64) -> Phase {
        Phase {
            label: label.to_owned(),
            offered: 1_000.0,
            summary: SimSummary {
                events_acked,
                acked_per_s: events_acked as f64 / 20.0,
                ..SimSummary::default()
            },
            cpu: vec![("redis-server".to_owned(), redis_seconds), ("driver".to_owned(), 9.0)],
            seconds: 20.0,
        }
    }

    #[test]
    fn redis_cpu_per_event_is_set_against_the_ceilings_xadd_at_the_steady_phase() {
        let result = EventsResult {
            devices: 1_000,
            phases: vec![
                phase("saturated (offered far above capacity)", 1_000_000, 5.0),
                phase("90% of capacity", 2_000_000, 6.0),
            ],
            ceiling: 300_000.0,
            ceiling_command: "redis-benchmark".to_owned(),
            redis_us_per_xadd: 2.0,
        };
        // 6 s of Redis for 2,000,000 events: 3 µs each, 1.5 times an XADD's
        // 2 µs; saturation (5 µs, 2.5×) is in the table, not the headline.
        assert_eq!(result.redis_cpu_ratio(), Some((3.0, 1.5)));
        let text = result.markdown();
        assert!(text.contains("5.00 µs (2.50×)"), "{text}");
        assert!(text.contains("**3.00 µs** of CPU"), "{text}");
        assert!(text.contains("**1.50×** (target ≤ 1.2×"), "{text}");
    }
}
