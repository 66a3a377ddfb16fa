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
    /// Durable commands queued for every device before the storm, and how
    /// fast they were enqueued.
    pub queued: Option<Enqueued>,
    /// With commands queued: how long until every one was answered.
    pub delivery: Option<Delivery>,
}

/// The delivery of every queued command after a storm (`--storm-queued`):
/// the devices hold their sessions and answer each command as it comes.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// Commands answered and settled.
    pub commands: u64,
    /// From the simulator's start to the last command settled.
    pub seconds: f64,
}

impl Delivery {
    /// Commands settled per second, over the whole delivery.
    pub fn rate(&self) -> f64 {
        self.commands as f64 / self.seconds
    }
}

/// Whether every queued command has been settled: no ledger is left (a
/// command leaves its ledger when its result is stored). The scan stops at
/// the first ledger found, so it costs Redis little while many remain.
fn all_settled(redis_url: &str) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = redis::Client::open(redis_url)?;
        let mut redis = client.get_multiplexed_async_connection().await?;
        let layout = drover_schema::Layout::SINGLE;
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(layout.ledger_pattern())
                .arg("COUNT")
                .arg(1_000)
                .query_async(&mut redis)
                .await?;
            if !keys.is_empty() {
                return Ok(false);
            }
            if next == 0 {
                return Ok(true);
            }
            cursor = next;
        }
    })
}

/// Durable commands queued before a storm (`--storm-queued`).
#[derive(Debug, Clone, Copy)]
pub struct Enqueued {
    /// Per device.
    pub per_device: u64,
    /// Enqueue script calls per second, pipelined.
    pub script_rate: f64,
    /// The same writes as plain commands (HINCRBY, HSET, PEXPIRE, XADD per
    /// command) per second, pipelined alike, to other keys: Redis's ceiling.
    pub raw_rate: f64,
}

/// Commands per pipeline when enqueueing: enough to keep Redis busy, few
/// enough for one reply buffer.
const ENQUEUE_PIPELINE: usize = 200;

/// Queues `per_device` durable commands for each storm device (serials as
/// the simulator names them) through the enqueue script, pipelined; then
/// the same writes as plain commands to other keys, for the ceiling.
fn enqueue_before(redis_url: &str, devices: u64, per_device: u64) -> anyhow::Result<Enqueued> {
    use anyhow::Context as _;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = redis::Client::open(redis_url)?;
        let mut redis = client.get_multiplexed_async_connection().await?;
        let layout = drover_schema::Layout::for_deployment(false, 1)?;
        let script = redis::Script::new(drover_schema::ledger::ENQUEUE_SCRIPT);
        script.prepare_invoke().load_async(&mut redis).await?;
        // As controller-sim names them: numbered from 1, at least six digits.
        let width = devices.to_string().len().max(6);
        let serials: Vec<cwp::Serial> = (1..=devices)
            .map(|number| format!("STORM-{number:0width$}").parse())
            .collect::<Result<_, _>>()
            .context("storm serials")?;
        // `{"delay_s":5}` in base64.
        let body = "eyJkZWxheV9zIjo1fQ==";
        let mut calls = Vec::new();
        for round in 0..per_device {
            for serial in &serials {
                calls.push((*serial, round));
            }
        }
        let started = Instant::now();
        for chunk in calls.chunks(ENQUEUE_PIPELINE) {
            let mut pipe = redis::pipe();
            for (serial, _) in chunk {
                let partition = layout.partition_of(serial);
                pipe.cmd("EVALSHA")
                    .arg(script.get_hash())
                    .arg(3)
                    .arg(layout.ledger(serial))
                    .arg(layout.command_outcomes(partition))
                    .arg(layout.ledger_due(partition))
                    .arg(serial.as_str())
                    .arg(uuid::Uuid::new_v4().hyphenated().to_string())
                    .arg("reboot")
                    .arg(body)
                    .arg(drover_schema::ledger::DEFAULT_TTL_MS)
                    .arg(drover_schema::ledger::DEFAULT_MAX_QUEUED)
                    .ignore();
            }
            pipe.query_async::<()>(&mut redis).await?;
        }
        let script_rate = calls.len() as f64 / started.elapsed().as_secs_f64();

        let entry = r#"{"name":"reboot","body_b64":"eyJkZWxheV9zIjo1fQ==","seq":1,"enqueued_ms":1,"expires_ms":2,"state":"QUEUED","attempts":0}"#;
        let started = Instant::now();
        for chunk in calls.chunks(ENQUEUE_PIPELINE) {
            let mut pipe = redis::pipe();
            for (serial, _) in chunk {
                let key = format!("bench:raw-ledger:{serial}");
                let id = uuid::Uuid::new_v4().hyphenated().to_string();
                pipe.cmd("HINCRBY").arg(&key).arg("seq").arg(1).ignore();
                pipe.cmd("HSET").arg(&key).arg(&id).arg(entry).ignore();
                pipe.cmd("PEXPIRE").arg(&key).arg(drover_schema::ledger::DEFAULT_TTL_MS).ignore();
                pipe.cmd("ZADD")
                    .arg("bench:raw-ledger-due")
                    .arg("LT")
                    .arg(drover_schema::ledger::DEFAULT_TTL_MS)
                    .arg(serial.as_str())
                    .ignore();
                pipe.cmd("XADD")
                    .arg("bench:raw-outcomes")
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(drover_schema::ledger::OUTCOMES_MAXLEN)
                    .arg("*")
                    .arg("serial")
                    .arg(serial.as_str())
                    .arg("id")
                    .arg(&id)
                    .arg("status")
                    .arg("QUEUED")
                    .ignore();
            }
            pipe.query_async::<()>(&mut redis).await?;
        }
        let raw_rate = calls.len() as f64 / started.elapsed().as_secs_f64();
        // The stand-in keys leave before the storm.
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("bench:raw-*")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut redis)
                .await?;
            if !keys.is_empty() {
                redis::cmd("UNLINK").arg(&keys).query_async::<()>(&mut redis).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(Enqueued {
            per_device,
            script_rate,
            raw_rate,
        })
    })
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

/// Runs one storm of `devices` devices per entry of `driver_counts`, each
/// device with `queued` durable commands in its ledger (0: empty ledgers).
pub fn run(ctx: &BenchContext, devices: u64, driver_counts: &[usize], queued: u64) -> anyhow::Result<StormResult> {
    let sim = binary("controller-sim")?;
    let mut runs = Vec::new();
    for &drivers in driver_counts {
        let (_, haproxy_processes) = Rig::size_for(devices);
        let mut rig = Rig::start(ctx, &format!("storm-{drivers}"), drivers, haproxy_processes)?;
        // HAProxy marks the drivers up after two health checks.
        std::thread::sleep(Duration::from_secs(3));
        let enqueued = if queued > 0 {
            eprintln!("storm: queueing {queued} durable commands for each of {devices} devices ...");
            Some(enqueue_before(&rig.fleet.redis_url, devices, queued)?)
        } else {
            None
        };
        // With commands queued the devices stay to answer them all.
        let (then, duration) = if queued > 0 { ("hold", "900s") } else { ("end", "120s") };
        let args: Vec<String> = [
            "--target",
            &rig.target(),
            "--scenario",
            "storm",
            "--storm-then",
            then,
            "--devices",
            &devices.to_string(),
            "--duration",
            duration,
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
        let mut delivery = None;
        let commands = devices * queued;
        let mut next_check = Instant::now();
        while storm.is_running() {
            timeline.push(TimelineSample {
                seconds: started.elapsed().as_secs_f64(),
                sessions: rig.sessions(),
            });
            if queued > 0 && Instant::now() >= next_check {
                if all_settled(&rig.fleet.redis_url)? {
                    delivery = Some(Delivery {
                        commands,
                        seconds: started.elapsed().as_secs_f64(),
                    });
                    break;
                }
                next_check = Instant::now() + Duration::from_millis(500);
            }
            std::thread::sleep(TIMELINE_INTERVAL);
        }
        // The devices said BYE as the simulator ended: the last sample shows the drop.
        timeline.push(TimelineSample {
            seconds: started.elapsed().as_secs_f64(),
            sessions: rig.sessions(),
        });
        let summary: SimSummary = if delivery.is_some() {
            storm.stop(Duration::from_secs(60))?
        } else {
            storm.finish(Duration::from_secs(60))?
        };
        let cpu = cpu_by_name(&meter.stop());
        drop(rig);
        runs.push(StormRun {
            drivers,
            haproxy_processes,
            sim: summary,
            cpu,
            command: format!("CWP_MASTER_KEY=… controller-sim {} --json", args.join(" ")),
            timeline,
            queued: enqueued,
            delivery,
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
            if let Some(queued) = run.queued {
                let delivered = match run.delivery {
                    Some(delivery) => format!(
                        "all {} were answered and settled {:.1} s after the first connect: **{} commands/s** delivered",
                        thousands(delivery.commands as f64),
                        delivery.seconds,
                        thousands(delivery.rate())
                    ),
                    None => "**not all were answered** before the simulator's end".to_owned(),
                };
                let _ = writeln!(
                    text,
                    "\nEvery device had {} durable commands queued (README, Durable commands): enqueued at {} commands/s \
                     (the enqueue script, pipelined {ENQUEUE_PIPELINE} deep) against {} commands/s for the same writes as plain \
                     commands, in the same run; {delivered} (the devices held their sessions and answered each command \
                     at once); {} commands received in all, command → result `ACK` p50 {}, p99 {}.",
                    queued.per_device,
                    thousands(queued.script_rate),
                    thousands(queued.raw_rate),
                    thousands(run.sim.commands_received as f64),
                    super::report::duration_us(run.sim.command_latency_us.p50 as f64),
                    super::report::duration_us(run.sim.command_latency_us.p99 as f64),
                );
            }
        }
        text
    }
}
