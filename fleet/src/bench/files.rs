//! Files to devices (issue 18, README "Rollouts"): one file rolled out to
//! 100 devices at once through HAProxy and 4 drivers, while 100 other
//! devices send 1,000 events/s; beside it, in the same run, the limit of
//! the work (the codec sealing and verifying the same chunks on one core:
//! every chunk is sealed per device, so no `sendfile`) and what users would
//! otherwise run (nginx serving the same file to as many HTTP clients).
//!
//! Phases, in order: the codec alone (in this process, on one core);
//! nginx (the fleet idle); the events devices alone (the baseline of their
//! ack latency); the rollout with the events devices (`controller-sim
//! --scenario files` ends when every device holds a verified copy).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::BytesMut;
use drover_testkit::binaries::binary;
use drover_testkit::net::free_port;
use drover_testkit::process::{ChildGuard, find_on_path};
use serde::Deserialize;

use super::BenchContext;
use super::events::MASTER_KEY_HEX;
use super::probe::{CpuMeter, SimLatency, SimProcess, SimSummary, cpu_seconds, run_sim};
use super::report::{Table, duration_us};
use super::rig::{Rig, cpu_by_name};

/// Devices receiving the file.
pub const DEVICES: u64 = 100;
/// Drivers behind HAProxy.
pub const DRIVERS: usize = 4;
/// Devices sending events meanwhile, and their events per second in all.
const EVENT_DEVICES: u64 = 100;
const EVENT_RATE: u64 = 1_000;
/// Targets (issue 18).
const TARGET_CODEC_RATIO: f64 = 0.6;
const TARGET_RSS_GROWTH_KIB: u64 = 32 * 1024;
const TARGET_ACK_RATIO: f64 = 2.0;
/// Longest a rollout may take before the run is called failed.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(1800);

/// What `controller-sim --scenario files` reports (its `files` object).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SimFiles {
    /// Files verified.
    #[serde(default)]
    pub verified: u64,
    /// Digest mismatches.
    #[serde(default)]
    pub mismatches: u64,
    /// Chunks beyond a window.
    #[serde(default)]
    pub window_violations: u64,
    /// Per device, first offer to last byte, MB/s.
    #[serde(default)]
    pub min_mb_s: f64,
    /// Median of the same.
    #[serde(default)]
    pub median_mb_s: f64,
    /// Best of the same.
    #[serde(default)]
    pub max_mb_s: f64,
}

/// nginx serving the same file.
#[derive(Debug, Clone, Default)]
pub struct Nginx {
    /// From the first request to the last byte of the last, seconds.
    pub seconds: f64,
    /// Clients that got the whole file.
    pub complete: u64,
    /// Per client MB/s: min, median, max.
    pub spread: (f64, f64, f64),
}

/// One rollout to the [`DEVICES`] with the events devices sending.
#[derive(Debug, Clone, Default)]
pub struct RolloutPhase {
    /// `--max-bytes-per-s`, 0 for none.
    pub max_bytes_per_s: u64,
    /// The devices' view of the transfers.
    pub transfers: SimFiles,
    /// Targets the rollout recorded `done`.
    pub done: u64,
    /// From `drover rollout start` to the last device's verified copy.
    pub seconds: f64,
    /// Each driver's RSS before the rollout and at its peak during it, KiB.
    pub rss: Vec<(u64, u64)>,
    /// The events devices' ack latency meanwhile.
    pub ack: SimLatency,
    /// The file devices' own ack latency, of the events they send while
    /// they receive the file.
    pub own_ack: SimLatency,
    /// CPU seconds by process name over the rollout (the file devices'
    /// simulator as `controller-sim`).
    pub cpu: Vec<(String, f64)>,
}

/// The result.
#[derive(Debug, Clone)]
pub struct FilesResult {
    /// The file's size.
    pub file_bytes: u64,
    /// The rollout at full speed, then with a limit per driver.
    pub phases: Vec<RolloutPhase>,
    /// The events devices' ack latency alone, before the rollouts and
    /// after them: a 20 s phase can hold a stall of its own (the lower p99
    /// of the two is the baseline).
    pub ack_alone: [SimLatency; 2],
    /// The drivers' CPU seconds per second serving the events devices
    /// alone (what each rollout's figure is reduced by, over its time).
    pub driver_cpu_alone: f64,
    /// The codec sealing and verifying the same chunks on one core, MB/s.
    pub codec_mb_s: f64,
    /// nginx, the same file to as many clients.
    pub nginx: Nginx,
    /// Command lines: file devices, events devices.
    pub commands: (String, String),
}

/// Events per second the file devices send in all while they receive.
const FILE_DEVICE_EVENT_RATE: u64 = DEVICES;

/// The limit of the second rollout, per driver: with [`DRIVERS`] drivers,
/// 100 MB/s in all, a third of what the first reaches on the reference
/// machine (docs/BENCHMARKS.md).
const LIMITED_BYTES_PER_S: u64 = 25_000_000;

/// Runs the benchmark.
pub fn run(ctx: &BenchContext) -> anyhow::Result<FilesResult> {
    let file_bytes: u64 = if ctx.quick { 10_000_000 } else { 100_000_000 };
    let sim = binary("controller-sim")?;
    let drover = binary("drover")?;
    let source = ctx.work_dir.join("files-source").join("firmware.bin");
    write_firmware(&source, file_bytes)?;
    let files_dir = ctx.work_dir.join("files-store");
    let mut rig = Rig::start_with(
        ctx,
        "files",
        DRIVERS,
        1,
        &[("FILES_DIR", files_dir.display().to_string())],
    )?;
    std::thread::sleep(Duration::from_secs(3));
    let operator = Operator {
        drover,
        redis_url: rig.fleet.redis_url.clone(),
        files_dir,
    };
    let sha = operator.run(&["files", "add", &source.display().to_string()])?;

    eprintln!("files: the codec on one core ...");
    let codec_mb_s = codec_rate(&source, file_bytes, if ctx.quick { 200_000_000 } else { 2_000_000_000 })?;
    eprintln!("files: nginx, {DEVICES} clients ...");
    let nginx = nginx_rate(ctx, &source, file_bytes)?;

    let target = rig.target();
    let seconds = ctx.phase_seconds();
    eprintln!("files: {EVENT_DEVICES} devices, {EVENT_RATE} events/s alone for {seconds} s ...");
    let meter = CpuMeter::start(&rig.processes());
    let started = Instant::now();
    let alone = run_sim(&sim, MASTER_KEY_HEX, &events_args(&target, seconds))?;
    let driver_cpu_alone = cpu_by_name(&meter.stop())
        .iter()
        .filter(|(name, _)| name == "driver")
        .map(|(_, seconds)| seconds)
        .sum::<f64>()
        / started.elapsed().as_secs_f64();

    let mut phases = Vec::new();
    for (prefix, limit) in [("FILEA-", 0), ("FILEL-", LIMITED_BYTES_PER_S)] {
        phases.push(rollout_phase(ctx, &mut rig, &sim, &operator, &sha, prefix, limit)?);
    }
    eprintln!("files: {EVENT_DEVICES} devices, {EVENT_RATE} events/s alone again for {seconds} s ...");
    let alone_after = run_sim(&sim, MASTER_KEY_HEX, &events_args(&target, seconds))?;
    rig.stop();
    Ok(FilesResult {
        file_bytes,
        phases,
        ack_alone: [alone.ack_latency_us, alone_after.ack_latency_us],
        driver_cpu_alone,
        codec_mb_s,
        nginx,
        commands: (
            format!(
                "CWP_MASTER_KEY=… nice -n 19 controller-sim {}",
                files_args(&target, "FILEA-").join(" ")
            ),
            format!(
                "CWP_MASTER_KEY=… controller-sim {}",
                events_args(&target, seconds).join(" ")
            ),
        ),
    })
}

/// `drover` as an operator runs it against the rig.
struct Operator {
    drover: std::path::PathBuf,
    redis_url: String,
    files_dir: std::path::PathBuf,
}

impl Operator {
    /// `drover ARGS`: its standard output.
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(&self.drover)
            .args(args)
            .env("REDIS_URL", &self.redis_url)
            .env("FILES_DIR", &self.files_dir)
            .env_remove("REDIS_CLUSTER_NODES")
            .output()
            .context("running drover")?;
        if !output.status.success() {
            bail!("drover {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(ToString::to_string).collect()
}

/// The events devices for `seconds`.
fn events_args(target: &str, seconds: u64) -> Vec<String> {
    strings(&[
        "--target",
        target,
        "--scenario",
        "events",
        "--devices",
        &EVENT_DEVICES.to_string(),
        "--rate",
        &EVENT_RATE.to_string(),
        "--duration",
        &format!("{seconds}s"),
        "--serial-prefix",
        "EVB-",
    ])
}

/// The file devices: they end when every one holds a verified copy. Two
/// threads: each device hashes every byte twice (its frames' tags and the
/// file's digest), and on one thread the simulator, not the drivers,
/// would be what limits the rollout. Each sends an event a second while
/// it receives: how promptly a device receiving a file is acknowledged.
fn files_args(target: &str, prefix: &str) -> Vec<String> {
    strings(&[
        "--target",
        target,
        "--scenario",
        "files",
        "--threads",
        "2",
        "--file-events",
        "--rate",
        &FILE_DEVICE_EVENT_RATE.to_string(),
        "--devices",
        &DEVICES.to_string(),
        "--duration",
        "3600s",
        "--serial-prefix",
        prefix,
        "--json",
    ])
}

/// Connects the file devices (serials `prefix…`) and the events devices,
/// rolls the file out to the former and measures until the last is
/// verified.
fn rollout_phase(
    ctx: &BenchContext,
    rig: &mut Rig,
    sim: &Path,
    operator: &Operator,
    sha: &str,
    prefix: &str,
    max_bytes_per_s: u64,
) -> anyhow::Result<RolloutPhase> {
    let target = rig.target();
    let summary = ctx.work_dir.join(format!("files-sim-{prefix}json"));
    // The file devices' hashing runs at nice 19: a real device's CPU is on
    // another machine, and this one's should not be what the other
    // devices' ACKs wait for (as the hostile benchmark's attacker).
    let nice = find_on_path("nice").context("nice is not on PATH (coreutils)")?;
    let mut niced = strings(&["-n", "19", &sim.display().to_string()]);
    niced.extend(files_args(&target, prefix));
    let mut receivers = SimProcess::start(&nice, MASTER_KEY_HEX, &niced, summary)?;
    rig.wait_for_sessions(DEVICES, &mut receivers, Duration::from_secs(60))
        .context("connecting the file devices")?;
    let mut during_args = events_args(&target, 3600);
    during_args.push("--json".to_owned());
    let summary = ctx.work_dir.join(format!("files-events-{prefix}json"));
    let mut senders = SimProcess::start(sim, MASTER_KEY_HEX, &during_args, summary)?;
    rig.wait_for_sessions(DEVICES + EVENT_DEVICES, &mut senders, Duration::from_secs(60))
        .context("connecting the events devices")?;
    std::thread::sleep(Duration::from_secs(2));

    let serials: String = (1..=DEVICES).map(|i| format!("{prefix}{i:06}\n")).collect();
    let serials_file = ctx.work_dir.join(format!("files-serials-{prefix}txt"));
    std::fs::write(&serials_file, serials)?;
    let before = rig.driver_rss();
    let mut peak = before.clone();
    let meter = CpuMeter::start(&rig.processes());
    let sim_pid = receivers.pid();
    let sim_cpu_before = cpu_seconds(sim_pid).unwrap_or(0.0);
    let mut sim_cpu = sim_cpu_before;
    eprintln!("files: rolling the file out to {DEVICES} devices (max_bytes_per_s {max_bytes_per_s}) ...");
    let started = Instant::now();
    let id = operator.run(&[
        "rollout",
        "start",
        "--file",
        sha,
        "--serials-file",
        &serials_file.display().to_string(),
        "--max-active",
        &DEVICES.to_string(),
        "--max-bytes-per-s",
        &max_bytes_per_s.to_string(),
    ])?;
    while receivers.is_running() {
        if started.elapsed() > ROLLOUT_TIMEOUT {
            bail!("the rollout took more than {ROLLOUT_TIMEOUT:?}");
        }
        for (peak, now) in peak.iter_mut().zip(rig.driver_rss()) {
            *peak = (*peak).max(now);
        }
        // Read while it runs: once it has exited, its CPU is gone.
        if let Ok(now) = cpu_seconds(sim_pid) {
            sim_cpu = now;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut cpu = cpu_by_name(&meter.stop());
    cpu.push(("controller-sim (file devices)".to_owned(), sim_cpu - sim_cpu_before));
    let receivers: SimSummary = receivers.finish(Duration::from_secs(30))?;
    let during: SimSummary = senders.stop(Duration::from_secs(60))?;
    let transfers: SimFiles = receivers
        .other
        .get("files")
        .cloned()
        .map(serde_json::from_value)
        .transpose()?
        .unwrap_or_default();
    let status: serde_json::Value = serde_json::from_str(&operator.run(&["--json", "rollout", "status", &id])?)?;
    Ok(RolloutPhase {
        max_bytes_per_s,
        transfers,
        done: status["done"].as_str().and_then(|n| n.parse().ok()).unwrap_or(0),
        seconds,
        rss: before.into_iter().zip(peak).collect(),
        ack: during.ack_latency_us,
        own_ack: receivers.ack_latency_us,
        cpu,
    })
}

/// `size` bytes that do not compress (a xorshift stream), as firmware.
fn write_firmware(path: &Path, size: u64) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = size;
    while left > 0 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        let take = usize::try_from(left.min(8)).unwrap_or(8);
        out.write_all(&bytes[..take])?;
        left -= take as u64;
    }
    out.flush()?;
    Ok(())
}

/// The codec's rate on this thread: `FILE_CHUNK`s of the file, as the
/// driver cuts them (the default max_payload less the tag), sealed by a
/// server codec and verified by a device codec, until `bytes` went
/// through. MB/s of chunk data.
pub fn codec_rate(source: &Path, file_bytes: u64, bytes: u64) -> anyhow::Result<f64> {
    use cwp::{DeviceCodec, FileChunk, ServerCodec, ServerFrame, Welcome};
    let data = std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
    let key = cwp::SessionKey::from_bytes([7; 32]);
    let mut server = ServerCodec::new();
    let mut device = DeviceCodec::new();
    server.start_sealing(&key);
    device.start_sealing(&key);
    let mut wire = BytesMut::new();
    server.encode(
        &ServerFrame::Welcome(Welcome {
            session: cwp::SessionId([1; 16]),
            heartbeat_s: 30,
            max_payload: cwp::DEFAULT_MAX_PAYLOAD,
            event_window: 64,
            last_event_id: 0,
            server: cwp::Str8::truncating("bench"),
        }),
        &mut wire,
    );
    device.decode(&mut wire)?.context("the WELCOME decodes")?;
    server.set_max_payload(cwp::DEFAULT_MAX_PAYLOAD);
    device.set_max_payload(cwp::DEFAULT_MAX_PAYLOAD);
    let chunk = cwp::DEFAULT_MAX_PAYLOAD as usize - cwp::TAG_LEN;
    let started = Instant::now();
    let mut moved = 0u64;
    let mut offset = 0usize;
    while moved < bytes {
        if offset as u64 >= file_bytes {
            offset = 0;
        }
        let end = (offset + chunk).min(data.len());
        let frame = ServerFrame::FileChunk(FileChunk {
            data: bytes::Bytes::copy_from_slice(&data[offset..end]),
        });
        server.encode(&frame, &mut wire);
        match device.decode(&mut wire)? {
            Some(cwp::ServerFrame::FileChunk(received)) => moved += received.data.len() as u64,
            other => bail!("the codec answered {other:?}"),
        }
        offset = end;
    }
    Ok(moved as f64 / 1e6 / started.elapsed().as_secs_f64())
}

/// nginx on loopback serving `source`, fetched by [`DEVICES`] `curl`s at
/// once.
fn nginx_rate(ctx: &BenchContext, source: &Path, file_bytes: u64) -> anyhow::Result<Nginx> {
    let nginx = find_on_path("nginx").context("nginx is not on PATH (apt-get install nginx-light)")?;
    let curl = find_on_path("curl").context("curl is not on PATH")?;
    let dir = ctx.work_dir.join("nginx");
    let root = dir.join("www");
    std::fs::create_dir_all(&root)?;
    std::fs::hard_link(source, root.join("firmware.bin"))
        .or_else(|_| std::fs::copy(source, root.join("firmware.bin")).map(|_| ()))?;
    let port = free_port()?;
    let config = dir.join("nginx.conf");
    std::fs::write(
        &config,
        format!(
            "daemon off;\nworker_processes auto;\npid {dir}/nginx.pid;\nerror_log {log}/nginx-error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
             server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
            dir = dir.display(),
            log = ctx.log_dir.display(),
            root = root.display(),
        ),
    )?;
    let _server = ChildGuard::spawn("nginx", Command::new(nginx).arg("-c").arg(&config).arg("-p").arg(&dir))?;
    let url = format!("http://127.0.0.1:{port}/firmware.bin");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nginx did not listen on {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let clients: Vec<std::process::Child> = (0..DEVICES)
        .map(|_| {
            Command::new(&curl)
                .args(["-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", &url])
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()
        .context("starting curl")?;
    let mut rates = Vec::new();
    let mut complete = 0;
    for client in clients {
        let output = client.wait_with_output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let mut fields = text.split_whitespace();
        let size: u64 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
        let seconds: f64 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(f64::NAN);
        if size == file_bytes {
            complete += 1;
            rates.push(size as f64 / 1e6 / seconds);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    rates.sort_by(f64::total_cmp);
    let spread = match (rates.first(), rates.last()) {
        (Some(min), Some(max)) => (*min, rates[rates.len() / 2], *max),
        _ => (0.0, 0.0, 0.0),
    };
    Ok(Nginx {
        seconds,
        complete,
        spread,
    })
}

impl RolloutPhase {
    /// All devices' bytes over the time to the last device, MB/s.
    pub fn aggregate_mb_s(&self, file_bytes: u64) -> f64 {
        (self.transfers.verified * file_bytes) as f64 / 1e6 / self.seconds
    }

    /// The largest RSS growth of a driver, KiB.
    pub fn rss_growth_kib(&self) -> u64 {
        self.rss
            .iter()
            .map(|(before, peak)| peak.saturating_sub(*before))
            .max()
            .unwrap_or(0)
    }

    /// CPU seconds of processes named `name`.
    fn cpu_of(&self, name: &str) -> f64 {
        self.cpu.iter().filter(|(n, _)| n == name).map(|(_, s)| s).sum()
    }
}

impl FilesResult {
    /// The events devices alone, the run with the lower ack p99 (the
    /// stricter baseline).
    pub fn ack_baseline(&self) -> &SimLatency {
        self.ack_alone
            .iter()
            .min_by_key(|alone| alone.p99)
            .unwrap_or(&self.ack_alone[0])
    }

    /// The section for docs/BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let mb = self.file_bytes as f64 / 1e6;
        let met = |ok: bool| if ok { "met" } else { "**not met**" };
        let mut text = String::new();
        let Some(full) = self.phases.first() else {
            return text;
        };
        let aggregate = full.aggregate_mb_s(self.file_bytes);
        let codec_ratio = aggregate / self.codec_mb_s;
        let _ = writeln!(
            text,
            "**A {mb:.0} MB file to {DEVICES} devices at once** through HAProxy and {DRIVERS} drivers: {} of {DEVICES} verified by the devices, {} recorded `done`, {} digest mismatches, {} chunks beyond a window; the last device verified its copy **{:.1} s** after `drover rollout start`: **{aggregate:.0} MB/s** in all, {codec_ratio:.2} × the one-core codec rate (target ≥ {TARGET_CODEC_RATIO}: {}).\n",
            full.transfers.verified,
            full.done,
            full.transfers.mismatches,
            full.transfers.window_violations,
            full.seconds,
            met(codec_ratio >= TARGET_CODEC_RATIO),
        );
        let mut header = vec!["".to_owned()];
        for phase in &self.phases {
            header.push(if phase.max_bytes_per_s == 0 {
                "the rollout at full speed".to_owned()
            } else {
                format!(
                    "with `--max-bytes-per-s {}` ({} MB/s per driver)",
                    phase.max_bytes_per_s,
                    phase.max_bytes_per_s / 1_000_000
                )
            });
        }
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        let mut table = Table::new(&header);
        let row = |label: &str, cell: &dyn Fn(&RolloutPhase) -> String| {
            let mut cells = vec![label.to_owned()];
            cells.extend(self.phases.iter().map(cell));
            cells
        };
        table.row(row("verified / recorded `done`", &|p| {
            format!("{} / {}", p.transfers.verified, p.done)
        }));
        table.row(row("time to the last device", &|p| format!("{:.1} s", p.seconds)));
        table.row(row("aggregate, MB/s (all devices' bytes / that time)", &|p| {
            format!("{:.0}", p.aggregate_mb_s(self.file_bytes))
        }));
        table.row(row("per device, MB/s: min / median / max", &|p| {
            format!(
                "{:.1} / {:.1} / {:.1}",
                p.transfers.min_mb_s, p.transfers.median_mb_s, p.transfers.max_mb_s
            )
        }));
        table.row(row("drivers' RSS before → peak, MiB", &|p| {
            let rss: Vec<String> = p
                .rss
                .iter()
                .map(|(before, peak)| format!("{:.1} → {:.1}", *before as f64 / 1024.0, *peak as f64 / 1024.0))
                .collect();
            rss.join(", ")
        }));
        table.row(row("largest driver RSS growth (target ≤ 32 MiB)", &|p| {
            let growth = p.rss_growth_kib();
            format!(
                "{:.1} MiB: {}",
                growth as f64 / 1024.0,
                met(growth <= TARGET_RSS_GROWTH_KIB)
            )
        }));
        let alone = self.ack_baseline();
        table.row(row(
            &format!(
                "{EVENT_DEVICES} other devices' ack p99 (alone: {} before the rollouts, {} after, the lower is the baseline; target within 2×)",
                duration_us(self.ack_alone[0].p99 as f64),
                duration_us(self.ack_alone[1].p99 as f64),
            ),
            &|p| {
                let ratio = p.ack.p99 as f64 / alone.p99.max(1) as f64;
                format!(
                    "{} (× {ratio:.2}): {}",
                    duration_us(p.ack.p99 as f64),
                    met(ratio <= TARGET_ACK_RATIO)
                )
            },
        ));
        table.row(row(
            &format!("the same, p50 (alone: {})", duration_us(alone.p50 as f64)),
            &|p| duration_us(p.ack.p50 as f64),
        ));
        table.row(row(
            "the file devices' own ack p50 / p99 (an event a second each, while they receive)",
            &|p| {
                format!(
                    "{} / {}",
                    duration_us(p.own_ack.p50 as f64),
                    duration_us(p.own_ack.p99 as f64)
                )
            },
        ));
        table.row(row(
            "CPU seconds: drivers / HAProxy / the file devices' simulator",
            &|p| {
                format!(
                    "{:.0} / {:.0} / {:.0}",
                    p.cpu_of("driver"),
                    p.cpu_of("haproxy"),
                    p.cpu_of("controller-sim (file devices)")
                )
            },
        ));
        table.row(row(
            &format!(
                "MB sent per driver CPU second (less the events' {:.2} CPU s/s alone over the same time)",
                self.driver_cpu_alone
            ),
            &|p| {
                let transfer_cpu = p.cpu_of("driver") - self.driver_cpu_alone * p.seconds;
                format!(
                    "{:.0}",
                    (p.transfers.verified * self.file_bytes) as f64 / 1e6 / transfer_cpu.max(f64::EPSILON)
                )
            },
        ));
        text.push_str(&table.render());
        let _ = writeln!(
            text,
            "\nBeside it: the codec sealing + verifying the same chunks on one core: **{:.0} MB/s**; nginx serving the same file to {DEVICES} `curl`s over HTTP: **{:.0} MB/s** in all ({} complete in {:.1} s; per client {:.1} / {:.1} / {:.1} MB/s min / median / max).",
            self.codec_mb_s,
            (self.nginx.complete * self.file_bytes) as f64 / 1e6 / self.nginx.seconds,
            self.nginx.complete,
            self.nginx.seconds,
            self.nginx.spread.0,
            self.nginx.spread.1,
            self.nginx.spread.2
        );
        let _ = writeln!(
            text,
            "\nFile devices (`FILEL-` for the limited rollout): `{}`  \nEvents devices (alone; the same with `--duration 3600s` during each rollout, connected before it starts and stopped when its last file is verified): `{}`",
            self.commands.0, self.commands.1
        );
        text
    }
}
