//! HTTP events end to end (issue 19): signed NDJSON batches → HAProxy
//! (`mode http`) → `http-gateway` → gRPC → vendor-bridge → Redis with
//! `appendfsync always` → the gateway's answer, once every record is
//! durable. `bench-http` ([`super::http_load`]) plays the devices: 16
//! concurrent clients on HTTP/1.1 keep-alive post 1,024 requests of 1,600
//! taxi-trip records, every answer checked.
//!
//! Beside it, in the same run:
//!
//! - the ceiling: `redis-benchmark` pipelining the same `XADD`s (the
//!   events benchmark's, [`super::events::ceiling`], with the entries'
//!   sizes) into the same Redis; target ≥ 0.7 of it;
//! - the reference users know, `bench/baselines/tornado_ndjson.py` (one
//!   process, `json.loads` per line, rows appended to a file, flushed, not
//!   fsynced) under the same load from the same generator: the speed-up;
//! - the gateway's resident memory while 100 clients post a 16 MiB body
//!   each at once, beside the bound the gateway promises.
//!
//! The reference runs first: without an `http-gateway` binary the benchmark
//! fails with a clear message, after measuring it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use drover_testkit::binaries::{bin_dir, binary};
use drover_testkit::components::{BridgeProcess, GatewayOptions, GatewayProcess, Logs};
use drover_testkit::haproxy::Haproxy;
use drover_testkit::lbconfig::{HttpFrontend, LbConfig};
use drover_testkit::net::{free_port, loopback};
use drover_testkit::process::{ChildGuard, rss_kib};
use drover_testkit::redis::RedisServer;
use drover_testkit::wait::{wait_for_port, wait_until};

use super::BenchContext;
use super::events::{CeilingEntry, Consumer, MASTER_KEY_HEX, ceiling};
use super::http_load::{AnswerFormat, LoadReport};
use super::probe::{CpuMeter, SimProcess};
use super::report::{Table, duration_us, thousands};
use super::rig::cpu_by_name;

/// The load of issue 19: clients, requests, records per request.
pub const CLIENTS: usize = 16;
/// Requests in all.
pub const REQUESTS: u64 = 1024;
/// Records per request.
pub const RECORDS: u64 = 1600;
/// The memory phase: this many clients at once, one body of
/// [`MEMORY_BODY_BYTES`] each.
pub const MEMORY_CLIENTS: usize = 100;
/// `HTTP_MAX_BODY_BYTES`'s default, 16 MiB: the largest body a gateway
/// takes by default.
pub const MEMORY_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Gateways behind HAProxy.
pub const GATEWAYS: usize = 1;
/// Target: end to end at least this fraction of the `XADD` ceiling.
pub const TARGET_OF_CEILING: f64 = 0.7;
/// Where the reference's interpreter is: Debian's python3-tornado is
/// installed for the system Python, and `python3` on PATH may be another.
pub const PYTHON: &str = "/usr/bin/python3";
/// The reference service, from the workspace root.
pub const REFERENCE: &str = "bench/baselines/tornado_ndjson.py";
/// How long one phase may take before the benchmark gives up on it.
const PHASE_TIMEOUT: Duration = Duration::from_secs(900);

/// One load run, seen from the generator and from `/proc`.
#[derive(Debug, Clone)]
pub struct LoadRun {
    /// `bench-http`'s report.
    pub report: LoadReport,
    /// CPU seconds per kind of server process over the run.
    pub cpu: Vec<(String, f64)>,
    /// The command line (without the key).
    pub command: String,
}

/// The memory phase.
#[derive(Debug, Clone)]
pub struct MemoryRun {
    /// The generator's report (refusals allowed).
    pub report: LoadReport,
    /// Each gateway's resident memory before, KiB.
    pub rss_before_kib: Vec<u64>,
    /// Each gateway's largest resident memory during the phase, KiB.
    pub rss_peak_kib: Vec<u64>,
    /// The bound the gateway promises, KiB, and how it follows from its
    /// configuration.
    pub bound: Option<(u64, String)>,
}

/// The whole result.
#[derive(Debug, Clone)]
pub struct HttpEventsResult {
    /// Gateways behind HAProxy.
    pub gateways: usize,
    /// Through HAProxy to the gateway(s).
    pub gateway: LoadRun,
    /// `redis-benchmark` XADDs per second.
    pub ceiling: f64,
    /// The ceiling's command line.
    pub ceiling_command: String,
    /// The reference service under the same load.
    pub reference: LoadRun,
    /// 100 concurrent 16 MiB bodies.
    pub memory: MemoryRun,
    /// Mean bytes of an event's body as stored (the ceiling's entries).
    pub body_len: usize,
    /// Parsing alone, one core, the load's lines.
    pub parse: ParseRates,
}

/// Records per second parsed on one core from the same body (one request
/// of the load), in the same run: Drover's parser (every rule, records
/// built) and the reference's `json.loads` per line.
#[derive(Debug, Clone, Copy)]
pub struct ParseRates {
    /// `drover_http_ingest::ndjson::parse`.
    pub drover: f64,
    /// Python's `json.loads`, per line.
    pub json_loads: f64,
}

/// Rounds of the parse measurement; the best of them counts (the least
/// disturbed by the rest of the machine).
const PARSE_ROUNDS: usize = 5;
/// Bodies parsed per round.
const PARSE_BODIES: usize = 50;

/// The Python side: the best of the rounds, records/s.
const JSON_LOADS_TIMER: &str = "
import json, sys, time
lines = [line for line in open(sys.argv[1], 'rb').read().split(b'\\n') if line.strip()]
rounds, bodies = int(sys.argv[2]), int(sys.argv[3])
best = 0.0
for _ in range(rounds):
    started = time.perf_counter()
    for _ in range(bodies):
        for line in lines:
            json.loads(line)
    best = max(best, bodies * len(lines) / (time.perf_counter() - started))
print(best)
";

/// Parses one request's body on this thread and with `json.loads`.
fn parse_rates(ctx: &BenchContext) -> anyhow::Result<ParseRates> {
    let body = drover_http_ingest::taxi::batch(drover_http_ingest::taxi::Shape::Json, RECORDS);
    let limits = drover_http_ingest::BatchLimits::default();
    let mut drover: f64 = 0.0;
    for _ in 0..PARSE_ROUNDS {
        let started = std::time::Instant::now();
        let mut records = 0;
        for _ in 0..PARSE_BODIES {
            records += drover_http_ingest::ndjson::parse(body.clone(), &limits).records.len();
        }
        drover = drover.max(records as f64 / started.elapsed().as_secs_f64());
    }
    let path = ctx.work_dir.join("http-events-body.ndjson");
    std::fs::write(&path, &body).with_context(|| format!("writing {}", path.display()))?;
    let output = Command::new(PYTHON)
        .args(["-c", JSON_LOADS_TIMER])
        .arg(&path)
        .args([PARSE_ROUNDS.to_string(), PARSE_BODIES.to_string()])
        .output()
        .with_context(|| format!("running {PYTHON}"))?;
    anyhow::ensure!(
        output.status.success(),
        "the json.loads timer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json_loads = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("the json.loads timer's rate")?;
    Ok(ParseRates { drover, json_loads })
}

/// Requests of the main load in a quick run.
fn requests(ctx: &BenchContext) -> u64 {
    if ctx.quick { REQUESTS / 8 } else { REQUESTS }
}

/// The workspace's reference service, found from the source tree or beside
/// the binaries (`DROVER_BIN_DIR/../../bench/...` is the same tree).
pub fn reference_script() -> anyhow::Result<PathBuf> {
    let candidates = [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(REFERENCE),
        bin_dir()?.join("../..").join(REFERENCE),
    ];
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .with_context(|| format!("{REFERENCE} not found (looked in {candidates:?})"))
}

/// Whether `/usr/bin/python3` can import tornado; the error says how to
/// install it.
pub fn check_tornado() -> anyhow::Result<()> {
    let status = Command::new(PYTHON)
        .args(["-c", "import tornado"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {PYTHON}"))?;
    if !status.success() {
        bail!("{PYTHON} cannot import tornado: `apt-get install python3-tornado`");
    }
    Ok(())
}

/// The reference service on a free loopback port; stops when dropped.
#[derive(Debug)]
pub struct ReferenceService {
    process: ChildGuard,
    addr: SocketAddr,
}

impl ReferenceService {
    /// Starts it, appending rows to `rows`, and waits until it listens.
    pub fn start(rows: &Path, logs: &Logs) -> anyhow::Result<Self> {
        check_tornado()?;
        let script = reference_script()?;
        let addr = loopback(free_port()?);
        let mut command = Command::new(PYTHON);
        command
            .arg(&script)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--out")
            .arg(rows)
            .stdin(Stdio::null())
            .stdout(logs.stdio()?)
            .stderr(logs.stdio()?);
        let process = ChildGuard::spawn(format!("tornado_ndjson :{}", addr.port()), &mut command)?;
        wait_for_port(addr, Duration::from_secs(20)).context("the reference service did not listen")?;
        Ok(Self { process, addr })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// `HTTP_MAX_INFLIGHT_BYTES`'s default (128 MiB), set explicitly so that
/// the bound below follows from what the gateway ran with.
pub const MAX_INFLIGHT_BYTES: u64 = 128 * 1024 * 1024;

/// The gateways behind HAProxy's HTTP frontend, as `fleet lb-config
/// --gateways N` writes it (the drivers' frontend has no drivers here).
fn lb_config(http_port: u16, gateways: &[GatewayProcess]) -> anyhow::Result<LbConfig> {
    Ok(LbConfig {
        bind: "127.0.0.1".to_owned(),
        fleet_port: free_port()?,
        maxconn: 4096,
        threads: 1,
        heartbeat_s: 30,
        stats_bind: "127.0.0.1".to_owned(),
        stats_port: free_port()?,
        backends: Vec::new(),
        resolver: None,
        http: Some(HttpFrontend::local(http_port, gateways)),
        command: "fleet bench --only http-events".to_owned(),
    })
}

/// `bench-http`'s arguments for the main load (`serial_prefix` keeps the
/// runs' devices apart).
fn load_args(target: SocketAddr, answer: AnswerFormat, requests: u64, serial_prefix: &str) -> Vec<String> {
    [
        "--target",
        &target.to_string(),
        "--clients",
        &CLIENTS.to_string(),
        "--requests",
        &requests.to_string(),
        "--records",
        &RECORDS.to_string(),
        "--answer",
        match answer {
            AnswerFormat::Drover => "drover",
            AnswerFormat::Reference => "reference",
        },
        "--serial-prefix",
        serial_prefix,
    ]
    .iter()
    .map(ToString::to_string)
    .collect()
}

/// Runs `bench-http` with `args`, metering `processes`.
fn load(ctx: &BenchContext, name: &str, args: &[String], processes: &[(&str, u32)]) -> anyhow::Result<LoadRun> {
    let generator = binary("bench-http")?;
    let meter = CpuMeter::start(processes);
    let run = SimProcess::start(
        &generator,
        MASTER_KEY_HEX,
        args,
        ctx.work_dir.join(format!("{name}-bench-http.json")),
    )?;
    let report: LoadReport = run
        .finish(PHASE_TIMEOUT)
        .with_context(|| format!("{name}: bench-http"))?;
    let cpu = cpu_by_name(&meter.stop());
    if report.requests_failed > 0 || report.requests_ok == 0 {
        bail!(
            "{name}: {} of {} requests failed: {}",
            report.requests_failed,
            report.requests,
            report.failures.join("; ")
        );
    }
    Ok(LoadRun {
        report,
        cpu,
        command: format!("bench-http {}", args.join(" ")),
    })
}

/// The reference under the same load.
fn reference_run(ctx: &BenchContext) -> anyhow::Result<LoadRun> {
    let logs = Logs::File(ctx.log_dir.join("http-events-tornado.log"));
    let service = ReferenceService::start(&ctx.work_dir.join("http-events-rows.csv"), &logs)?;
    let args = load_args(service.addr(), AnswerFormat::Reference, requests(ctx), "HTTPR-");
    load(ctx, "reference", &args, &[("python (tornado)", service.pid())])
}

/// Mean bytes of a stored body in the load's records.
fn mean_body_len() -> usize {
    let batch = drover_http_ingest::ndjson::parse(
        drover_http_ingest::taxi::batch(drover_http_ingest::taxi::Shape::Json, RECORDS),
        &drover_http_ingest::BatchLimits::default(),
    );
    let total: usize = batch.records.iter().map(|record| record.body.len()).sum();
    total / batch.records.len().max(1)
}

/// Samples the gateways' resident memory until stopped; keeps the peaks.
struct RssWatch {
    stop: Arc<AtomicBool>,
    peaks: Arc<Vec<AtomicU64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start(pids: Vec<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks: Arc<Vec<AtomicU64>> = Arc::new(pids.iter().map(|_| AtomicU64::new(0)).collect());
        let (flag, seen) = (stop.clone(), peaks.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                for (pid, peak) in pids.iter().zip(seen.iter()) {
                    peak.fetch_max(rss_kib(*pid).unwrap_or(0), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop,
            peaks,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peaks.iter().map(|peak| peak.load(Ordering::Relaxed)).collect()
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs the benchmark.
pub fn run(ctx: &BenchContext) -> anyhow::Result<HttpEventsResult> {
    eprintln!("http-events: the reference (Tornado) ...");
    let reference = reference_run(ctx).context("the reference service")?;
    eprintln!(
        "http-events: the reference acknowledged {} records/s",
        thousands(reference.report.records_per_s)
    );
    // Checked before starting anything else, so that the message is the
    // first thing said.
    binary("http-gateway").with_context(|| {
        format!(
            "the http-gateway binary is missing, so only the reference was measured ({} records/s, p50 {}, p99 {})",
            thousands(reference.report.records_per_s),
            duration_us(reference.report.latency_us.p50 as f64),
            duration_us(reference.report.latency_us.p99 as f64)
        )
    })?;

    let logs = |name: &str| Logs::File(ctx.log_dir.join(format!("http-events-{name}.log")));
    let redis = RedisServer::start_in(&ctx.work_dir.join("http-events-redis"), free_port()?)?;
    let mut bridge = BridgeProcess::start(&redis.url(), &logs("bridge"), &[])?;
    let mut gateways = Vec::new();
    for index in 0..GATEWAYS {
        gateways.push(GatewayProcess::start(&GatewayOptions {
            bridge_url: bridge.url(),
            redis_url: redis.url(),
            master_key_hex: MASTER_KEY_HEX.to_owned(),
            proxy_protocol: true,
            extra_env: vec![
                ("HTTP_MAX_INFLIGHT_BYTES".to_owned(), MAX_INFLIGHT_BYTES.to_string()),
                ("RUST_LOG".to_owned(), "warn".to_owned()),
            ],
            logs: logs(&format!("gateway-{}", index + 1)),
        })?);
    }
    let http_port = free_port()?;
    let haproxy = Haproxy::start(
        &lb_config(http_port, &gateways)?,
        1,
        &ctx.work_dir.join("http-events-haproxy"),
        &logs("haproxy"),
    )?;
    let frontend = loopback(http_port);
    wait_until("HAProxy to see the gateways up", Duration::from_secs(20), || {
        // An unsigned request reaches a gateway (401) once HAProxy has one up (503 before).
        drover_testkit::http::get(frontend, "/v1/events").is_ok_and(|(status, _)| status == 401 || status == 405)
    })?;

    let mut processes: Vec<(&str, u32)> =
        vec![("redis-server", redis.pid()), ("vendor-bridge", bridge.process().pid())];
    let gateway_pids: Vec<u32> = gateways.iter_mut().map(|g| g.process().pid()).collect();
    for pid in &gateway_pids {
        processes.push(("http-gateway", *pid));
    }
    for pid in haproxy.pids() {
        processes.push(("haproxy", pid));
    }

    eprintln!("http-events: through HAProxy to {GATEWAYS} gateway(s) ...");
    let streams = drover_schema::Layout::SINGLE.event_streams();
    let gateway = {
        let _consumer = Consumer::start(redis.port(), streams.clone());
        let args = load_args(frontend, AnswerFormat::Drover, requests(ctx), "HTTPB-");
        load(ctx, "gateway", &args, &processes)?
    };

    eprintln!("http-events: the XADD ceiling ...");
    let body_len = mean_body_len();
    let ceiling = ceiling(
        &redis,
        ctx.quick,
        &CeilingEntry {
            serial: "HTTPB-000001",
            body_len,
            driver: "http-gateway-1",
        },
    )?;

    eprintln!("http-events: {MEMORY_CLIENTS} concurrent {MEMORY_BODY_BYTES}-byte bodies ...");
    let memory = {
        let _consumer = Consumer::start(redis.port(), streams);
        let pids = gateway_pids.clone();
        let rss_before_kib: Vec<u64> = pids.iter().map(|pid| rss_kib(*pid).unwrap_or(0)).collect();
        let watch = RssWatch::start(pids);
        let args: Vec<String> = [
            "--target",
            &frontend.to_string(),
            "--clients",
            &MEMORY_CLIENTS.to_string(),
            "--requests",
            &MEMORY_CLIENTS.to_string(),
            "--body-bytes",
            &MEMORY_BODY_BYTES.to_string(),
            "--serial-prefix",
            "HTTPM-",
            "--allow-refusals",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let generator = binary("bench-http")?;
        let run = SimProcess::start(
            &generator,
            MASTER_KEY_HEX,
            &args,
            ctx.work_dir.join("memory-bench-http.json"),
        )?;
        // Refusals and even broken requests are the gateway's answer to
        // more than it takes: reported, not a failure of the benchmark.
        let report: anyhow::Result<LoadReport> = run.finish(PHASE_TIMEOUT);
        let rss_peak_kib = watch.stop();
        let bound = rss_before_kib
            .iter()
            .map(|before| before + 4 * MAX_INFLIGHT_BYTES / 1024)
            .max()
            .unwrap_or(0);
        MemoryRun {
            report: report.context("memory: bench-http")?,
            rss_before_kib,
            rss_peak_kib,
            bound: Some((
                bound,
                format!(
                    "idle + `HTTP_MAX_INFLIGHT_BYTES` ({} MiB) of bodies + at most 3× that of their parsed form",
                    MAX_INFLIGHT_BYTES / (1024 * 1024)
                ),
            )),
        }
    };
    drop(haproxy);
    drop(gateways);

    eprintln!("http-events: parsing alone, one core ...");
    let parse = parse_rates(ctx)?;
    Ok(HttpEventsResult {
        parse,
        gateways: GATEWAYS,
        gateway,
        ceiling: ceiling.rate,
        ceiling_command: ceiling.command,
        reference,
        memory,
        body_len,
    })
}

/// `name 1.2 µs, ...`: CPU per acknowledged record.
fn cpu_per_record(run: &LoadRun) -> String {
    let records = run.report.records_acked.max(1) as f64;
    run.cpu
        .iter()
        .map(|(name, seconds)| format!("{name} {:.2} µs", seconds * 1e6 / records))
        .collect::<Vec<_>>()
        .join(", ")
}

impl HttpEventsResult {
    /// End to end as a fraction of the ceiling.
    pub fn of_ceiling(&self) -> f64 {
        self.gateway.report.records_per_s / self.ceiling.max(1.0)
    }

    /// The gateway's speed-up over the reference.
    pub fn speed_up(&self) -> f64 {
        self.gateway.report.records_per_s / self.reference.report.records_per_s.max(1e-9)
    }

    /// The section for docs/BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let g = &self.gateway.report;
        let mut text = String::new();
        let _ = writeln!(
            text,
            "**{} records/s** acknowledged end to end ({} requests of {} records, {:.1} MiB/s of NDJSON) through HAProxy to {} gateway(s); the Redis ceiling (same `XADD`s, pipelined) {} /s in the same run: **{:.0}%** of it (target ≥ {:.0}%). The reference service under the same load: {} records/s, so **{:.1}×** faster.\n",
            thousands(g.records_per_s),
            thousands(g.requests as f64),
            thousands(g.records_per_request as f64),
            g.mib_per_s,
            self.gateways,
            thousands(self.ceiling),
            100.0 * self.of_ceiling(),
            100.0 * TARGET_OF_CEILING,
            thousands(self.reference.report.records_per_s),
            self.speed_up(),
        );
        let mut table = Table::new(&[
            "server",
            "records/s acknowledged",
            "MiB/s",
            "wall time",
            "request p50",
            "request p99",
            "max",
            "requests ok / failed",
            "durable when answered",
        ]);
        for (name, run, durable) in [
            (
                "Drover: HAProxy → http-gateway → bridge → Redis",
                &self.gateway,
                "yes (fsynced)",
            ),
            (
                "reference: Tornado, `json.loads`, csv rows",
                &self.reference,
                "no (flushed, not fsynced)",
            ),
        ] {
            let r = &run.report;
            table.row(vec![
                name.to_owned(),
                thousands(r.records_per_s),
                format!("{:.1}", r.mib_per_s),
                format!("{:.1} s", r.seconds),
                duration_us(r.latency_us.p50 as f64),
                duration_us(r.latency_us.p99 as f64),
                duration_us(r.latency_us.max as f64),
                format!("{} / {}", r.requests_ok, r.requests_failed),
                durable.to_owned(),
            ]);
        }
        text.push_str(&table.render());
        let _ = writeln!(
            text,
            "\nCPU per acknowledged record (from `/proc`, all threads): Drover: {}; reference: {}. The generator's own share is the rest of the cores.",
            cpu_per_record(&self.gateway),
            cpu_per_record(&self.reference)
        );
        let _ = writeln!(
            text,
            "\nParsing alone, one core, one request's {RECORDS} lines {PARSE_BODIES} times (best of {PARSE_ROUNDS} rounds): Drover's parser (every rule checked, records built) {} records/s, the reference's `json.loads` per line {} records/s: **{:.1}×** (target ≥ 10×).",
            thousands(self.parse.drover),
            thousands(self.parse.json_loads),
            self.parse.drover / self.parse.json_loads.max(1e-9)
        );
        let m = &self.memory;
        let growth: Vec<String> = m
            .rss_before_kib
            .iter()
            .zip(&m.rss_peak_kib)
            .map(|(before, peak)| format!("{:.0} → {:.0} MiB", *before as f64 / 1024.0, *peak as f64 / 1024.0))
            .collect();
        let _ = writeln!(
            text,
            "\nMemory: {} clients each posting one {:.1} MiB body ({} records) at once: {} acknowledged, {} refused (413/429/503), {} failed{}; the gateway's resident memory {}{}.",
            m.report.clients,
            m.report.body_bytes as f64 / (1024.0 * 1024.0),
            thousands(m.report.records_per_request as f64),
            m.report.requests_ok,
            m.report.requests_refused,
            m.report.requests_failed,
            match m.report.failures.first() {
                Some(first) => format!(" (the first: `{first}`)"),
                None => String::new(),
            },
            growth.join(", "),
            match &m.bound {
                Some((kib, why)) => format!(
                    " (peak), within the promised bound of {:.0} MiB ({why}): {}",
                    *kib as f64 / 1024.0,
                    if m.rss_peak_kib.iter().all(|peak| peak <= kib) {
                        "**yes**"
                    } else {
                        "**NO**"
                    }
                ),
                None => " (peak)".to_owned(),
            }
        );
        let _ = writeln!(
            text,
            "\nLoad: `{}` (16 clients, each a device with its own serial on one keep-alive connection, every request signed with its key; event ids increase across a client's requests; every answer checked: status 200, `valid` + `duplicate` = records sent, none invalid). The reference: `{}` against `{PYTHON} {REFERENCE}`.  \nCeiling: `{}` (bodies of {} bytes, the records' mean).",
            self.gateway.command, self.reference.command, self.ceiling_command, self.body_len
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_appends_bodies_of_the_records_size() {
        let len = mean_body_len();
        assert!((60..120).contains(&len), "{len}");
    }
}
