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
use super::probe::{SimLatency, SimProcess, SimSummary, run_sim};
use super::report::{Table, duration_us, thousands};
use super::rig::Rig;

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

/// The result.
#[derive(Debug, Clone)]
pub struct FilesResult {
    /// The file's size.
    pub file_bytes: u64,
    /// The devices' view of the transfers.
    pub transfers: SimFiles,
    /// Targets the rollout recorded `done`.
    pub done: u64,
    /// From `drover rollout start` to the last device's verified copy.
    pub seconds: f64,
    /// Each driver's RSS before the rollout and at its peak during it, KiB.
    pub rss: Vec<(u64, u64)>,
    /// The events devices' ack latency alone, and during the rollout.
    pub ack_alone: SimLatency,
    /// During the rollout.
    pub ack_during: SimLatency,
    /// The codec sealing and verifying the same chunks on one core, MB/s.
    pub codec_mb_s: f64,
    /// nginx, the same file to as many clients.
    pub nginx: Nginx,
    /// Command lines: file devices, events devices.
    pub commands: (String, String),
}

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
    let redis_url = rig.fleet.redis_url.clone();
    let operator = |args: &[&str]| -> anyhow::Result<String> {
        let output = Command::new(&drover)
            .args(args)
            .env("REDIS_URL", &redis_url)
            .env("FILES_DIR", &files_dir)
            .env_remove("REDIS_CLUSTER_NODES")
            .output()
            .context("running drover")?;
        if !output.status.success() {
            bail!("drover {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let sha = operator(&["files", "add", &source.display().to_string()])?;

    eprintln!("files: the codec on one core ...");
    let codec_mb_s = codec_rate(&source, file_bytes, if ctx.quick { 200_000_000 } else { 2_000_000_000 })?;
    eprintln!("files: nginx, {DEVICES} clients ...");
    let nginx = nginx_rate(ctx, &source, file_bytes)?;

    let target = rig.target();
    let events_args = |seconds: u64| -> Vec<String> {
        [
            "--target",
            &target,
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
        ]
        .iter()
        .map(ToString::to_string)
        .collect()
    };
    let seconds = ctx.phase_seconds();
    eprintln!("files: {EVENT_DEVICES} devices, {EVENT_RATE} events/s alone for {seconds} s ...");
    let alone = run_sim(&sim, MASTER_KEY_HEX, &events_args(seconds))?;

    let files_args: Vec<String> = [
        "--target",
        &target,
        "--scenario",
        "files",
        "--devices",
        &DEVICES.to_string(),
        "--duration",
        "3600s",
        "--serial-prefix",
        "FILEB-",
        "--json",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let mut receivers = SimProcess::start(&sim, MASTER_KEY_HEX, &files_args, ctx.work_dir.join("files-sim.json"))?;
    rig.wait_for_sessions(DEVICES, &mut receivers, Duration::from_secs(60))
        .context("connecting the file devices")?;
    let mut during_args = events_args(3600);
    during_args.push("--json".to_owned());
    let mut senders = SimProcess::start(
        &sim,
        MASTER_KEY_HEX,
        &during_args,
        ctx.work_dir.join("files-events.json"),
    )?;
    rig.wait_for_sessions(DEVICES + EVENT_DEVICES, &mut senders, Duration::from_secs(60))
        .context("connecting the events devices")?;
    std::thread::sleep(Duration::from_secs(2));

    let serials: String = (1..=DEVICES).map(|i| format!("FILEB-{i:06}\n")).collect();
    let serials_file = ctx.work_dir.join("files-serials.txt");
    std::fs::write(&serials_file, serials)?;
    let before = rig.driver_rss();
    let mut peak = before.clone();
    eprintln!("files: rolling {file_bytes} bytes out to {DEVICES} devices ...");
    let started = Instant::now();
    let id = operator(&[
        "rollout",
        "start",
        "--file",
        &sha,
        "--serials-file",
        &serials_file.display().to_string(),
        "--max-active",
        &DEVICES.to_string(),
    ])?;
    while receivers.is_running() {
        if started.elapsed() > ROLLOUT_TIMEOUT {
            bail!("the rollout took more than {ROLLOUT_TIMEOUT:?}");
        }
        for (peak, now) in peak.iter_mut().zip(rig.driver_rss()) {
            *peak = (*peak).max(now);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let receivers: SimSummary = receivers.finish(Duration::from_secs(30))?;
    let during: SimSummary = senders.stop(Duration::from_secs(60))?;
    let transfers: SimFiles = receivers
        .other
        .get("files")
        .cloned()
        .map(serde_json::from_value)
        .transpose()?
        .unwrap_or_default();
    let status: serde_json::Value = serde_json::from_str(&operator(&["--json", "rollout", "status", &id])?)?;
    let done = status["done"].as_str().and_then(|n| n.parse().ok()).unwrap_or(0);
    rig.stop();
    Ok(FilesResult {
        file_bytes,
        transfers,
        done,
        seconds: elapsed,
        rss: before.into_iter().zip(peak).collect(),
        ack_alone: alone.ack_latency_us,
        ack_during: during.ack_latency_us,
        codec_mb_s,
        nginx,
        commands: (
            format!("CWP_MASTER_KEY=… controller-sim {}", files_args.join(" ")),
            format!("CWP_MASTER_KEY=… controller-sim {}", events_args(seconds).join(" ")),
        ),
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

impl FilesResult {
    /// All devices' bytes over the time to the last device, MB/s.
    pub fn aggregate_mb_s(&self) -> f64 {
        (self.transfers.verified * self.file_bytes) as f64 / 1e6 / self.seconds
    }

    /// The largest RSS growth of a driver, KiB.
    pub fn rss_growth_kib(&self) -> u64 {
        self.rss
            .iter()
            .map(|(before, peak)| peak.saturating_sub(*before))
            .max()
            .unwrap_or(0)
    }

    /// The section for docs/BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let mb = self.file_bytes as f64 / 1e6;
        let aggregate = self.aggregate_mb_s();
        let codec_ratio = aggregate / self.codec_mb_s;
        let ack_ratio = self.ack_during.p99 as f64 / self.ack_alone.p99.max(1) as f64;
        let growth = self.rss_growth_kib();
        let met = |ok: bool| if ok { "met" } else { "**not met**" };
        let mut text = String::new();
        let _ = writeln!(
            text,
            "**A {mb:.0} MB file to {DEVICES} devices at once** through HAProxy and {DRIVERS} drivers: {} of {DEVICES} verified by the devices, {} recorded `done`, {} digest mismatches, {} chunks beyond a window; the last device verified its copy **{:.1} s** after `drover rollout start`: **{aggregate:.0} MB/s** in all.\n",
            self.transfers.verified,
            self.done,
            self.transfers.mismatches,
            self.transfers.window_violations,
            self.seconds,
        );
        let mut table = Table::new(&["", "figure", "target"]);
        table.row(vec![
            "aggregate, MB/s (all devices' bytes / time to the last)".to_owned(),
            format!("{aggregate:.0}"),
            String::new(),
        ]);
        table.row(vec![
            "per device, MB/s: min / median / max".to_owned(),
            format!(
                "{:.1} / {:.1} / {:.1}",
                self.transfers.min_mb_s, self.transfers.median_mb_s, self.transfers.max_mb_s
            ),
            String::new(),
        ]);
        table.row(vec![
            "the codec sealing + verifying the same chunks, one core, MB/s".to_owned(),
            format!("{:.0} (ratio {codec_ratio:.2})", self.codec_mb_s),
            format!("≥ {TARGET_CODEC_RATIO} × : {}", met(codec_ratio >= TARGET_CODEC_RATIO)),
        ]);
        table.row(vec![
            format!("nginx, the same file to {DEVICES} `curl`s over HTTP, MB/s"),
            format!(
                "{:.0} ({} complete in {:.1} s; per client {:.1} / {:.1} / {:.1})",
                (self.nginx.complete * self.file_bytes) as f64 / 1e6 / self.nginx.seconds,
                self.nginx.complete,
                self.nginx.seconds,
                self.nginx.spread.0,
                self.nginx.spread.1,
                self.nginx.spread.2
            ),
            String::new(),
        ]);
        let rss: Vec<String> = self
            .rss
            .iter()
            .map(|(before, peak)| format!("{:.1} → {:.1}", *before as f64 / 1024.0, *peak as f64 / 1024.0))
            .collect();
        table.row(vec![
            "drivers' RSS before → peak during, MiB".to_owned(),
            rss.join(", "),
            format!(
                "growth ≤ 32 MiB: {} ({:.1} MiB)",
                met(growth <= TARGET_RSS_GROWTH_KIB),
                growth as f64 / 1024.0
            ),
        ]);
        table.row(vec![
            format!("{EVENT_DEVICES} other devices' ack p99, alone → during the rollout"),
            format!(
                "{} → {} (× {ack_ratio:.2})",
                duration_us(self.ack_alone.p99 as f64),
                duration_us(self.ack_during.p99 as f64)
            ),
            format!("within 2×: {}", met(ack_ratio <= TARGET_ACK_RATIO)),
        ]);
        table.row(vec![
            "the same, p50".to_owned(),
            format!(
                "{} → {} ({} and {} samples)",
                duration_us(self.ack_alone.p50 as f64),
                duration_us(self.ack_during.p50 as f64),
                thousands(self.ack_alone.samples as f64),
                thousands(self.ack_during.samples as f64)
            ),
            String::new(),
        ]);
        text.push_str(&table.render());
        let _ = writeln!(
            text,
            "\nFile devices: `{}`  \nEvents devices (alone; the same with `--duration 3600s`, stopped when the last file is verified, during the rollout): `{}`",
            self.commands.0, self.commands.1
        );
        text
    }
}
