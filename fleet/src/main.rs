//! `fleet`: run a whole Drover fleet locally, generate HAProxy's
//! configuration, run the benchmarks. The processes come from
//! `drover-testkit` (the same harness the end-to-end tests run on).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use drover_testkit::lbconfig::{HttpFrontend, LbConfig, maxconn_for_open_files};
use drover_testkit::local::{FleetSpec, LocalFleet};
use drover_testkit::process::find_on_path;

#[derive(Debug, Parser)]
#[command(version, about = "Run a Drover fleet locally, and the tools around it")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Start Redis, the vendor-bridge, N drivers and HAProxy; stop on Ctrl-C.
    Up(UpArgs),
    /// Print the HAProxy configuration for N drivers (lb-config/haproxy.cfg).
    LbConfig(LbConfigArgs),
    /// Run the benchmark suite and write docs/BENCHMARKS.md.
    Bench(BenchArgs),
    /// Draw the benchmarks' charts again from the series a run kept.
    BenchCharts(BenchChartsArgs),
}

#[derive(Debug, clap::Args)]
struct BenchChartsArgs {
    /// The series `fleet bench` kept (results.json in its charts directory).
    #[arg(default_value = "docs/charts/results.json")]
    results: PathBuf,
    /// Where the SVG files go (default: beside RESULTS).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also rewrite this document's charts section (<!-- bench:charts -->).
    #[arg(long)]
    doc: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
#[command(after_help = BENCH_HELP)]
struct BenchArgs {
    /// Benchmarks to run, comma-separated: events, idle, storm, commands,
    /// uploads, hostile, cluster, files, http-events, http-uploads. Default:
    /// the standard suite (all but uploads, hostile, cluster, files,
    /// http-events and http-uploads).
    #[arg(long, value_delimiter = ',', default_value = "events,idle,storm,commands")]
    only: Vec<String>,
    /// Devices for the events benchmark (comma-separated for several runs).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    devices: Vec<u64>,
    /// Devices the idle benchmark connects and holds (and as many MQTT
    /// clients on Mosquitto); comma-separated for several runs, one point
    /// each on the memory chart (the burst pattern is measured after the
    /// last).
    #[arg(long, value_delimiter = ',', default_value = "100000")]
    idle_devices: Vec<u64>,
    /// Devices of the connect storm.
    #[arg(long, default_value_t = 10_000)]
    storm_devices: u64,
    /// Drivers behind HAProxy in the storms, one storm each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    storm_drivers: Vec<usize>,
    /// Durable commands queued for every storm device before it connects
    /// (0: empty ledgers).
    #[arg(long, default_value_t = 0)]
    storm_queued: u64,
    /// Devices answering commands in the commands benchmark.
    #[arg(long, default_value_t = 10_000)]
    command_devices: u64,
    /// Commands per second the commands benchmark publishes.
    #[arg(long, default_value_t = 1000.0)]
    command_rate: f64,
    /// Short phases, to check the runner itself.
    #[arg(long)]
    quick: bool,
    /// The file to update.
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    out: PathBuf,
    /// Where the charts (SVG) and the series they are drawn from
    /// (results.json) go; default: charts/ beside --out.
    #[arg(long)]
    charts: Option<PathBuf>,
    /// Do not build the binaries first.
    #[arg(long)]
    no_build: bool,
}

const BENCH_HELP: &str = "\
Each benchmark brings up its own processes (Redis, vendor-bridge, drivers,
HAProxy, Mosquitto, controller-sim) on loopback, measures, stops them, and
replaces its own section of --out (<!-- bench:NAME --> markers), with the
command, the machine, the date and the commit. A benchmark that fails is
reported and the others still run; the exit status is then 1.

Charts: events, idle and storm also keep their series in
CHARTS/results.json (replacing that benchmark's part of it) and draw
CHARTS/ack-latency.svg, idle-memory.svg and connect-storm.svg, shown in the
charts section of --out; `fleet bench-charts` draws them again.

Needs redis-server, haproxy and (idle) mosquitto on PATH, and an open-file
limit of at least 20,000 (ulimit -Hn). Run it on a quiet machine: every
figure shares the cores with whatever else runs.

Another build under this harness: DROVER_BIN_DIR=DIR takes every binary
(driver, vendor-bridge, controller-sim, bench-*) from DIR instead of beside
this executable; link this build's controller-sim and bench-* into DIR so
that only the servers differ. DROVER_BRIDGE_METRICS=off: that vendor-bridge
predates BRIDGE_METRICS_LISTEN (commit 5cd4280 and earlier). Use --no-build,
and --out/--charts elsewhere: the sections name this commit.";
#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Number of drivers.
    #[arg(long, default_value_t = 4)]
    drivers: usize,
    /// The port devices connect to.
    #[arg(long, env = "FLEET_PORT", default_value_t = 7000)]
    fleet_port: u16,
    /// HAProxy's stats page and Prometheus endpoint.
    #[arg(long, default_value_t = 8404)]
    stats_port: u16,
    /// HTTP gateways (`http-gateway`, docs/HTTP.md) behind HAProxy's HTTP
    /// frontend on --http-port; 0: none.
    #[arg(long, default_value_t = 1)]
    gateways: usize,
    /// The port HTTP clients connect to.
    #[arg(long, env = "HTTP_PORT", default_value_t = 8080)]
    http_port: u16,
    /// HAProxy processes sharing the fleet port (more when one process's
    /// open-file limit is the bottleneck: ~9,900 devices each here).
    #[arg(long, default_value_t = 1)]
    haproxy_processes: usize,
    /// Use this Redis instead of a private one.
    #[arg(long, env = "REDIS_URL", conflicts_with = "redis_cluster")]
    redis_url: Option<String>,
    /// Start a private Redis Cluster of this many masters instead of one
    /// Redis (a fresh cluster every time).
    #[arg(long, value_name = "MASTERS")]
    redis_cluster: Option<usize>,
    /// Replicas of each master of --redis-cluster.
    #[arg(long, default_value_t = 0, requires = "redis_cluster")]
    redis_replicas: usize,
    /// Event streams (REDIS_EVENT_PARTITIONS); with --redis-cluster, by
    /// default one per master.
    #[arg(long)]
    partitions: Option<u32>,
    /// The fleet's master key (64 hex digits); generated and kept in the
    /// state directory if not given.
    #[arg(long, env = "CWP_MASTER_KEY", hide_env_values = true)]
    master_key: Option<String>,
    /// Where logs, Redis data, uploads and the HAProxy config go.
    #[arg(long, default_value = ".fleet")]
    state_dir: PathBuf,
    /// Do not build the binaries first.
    #[arg(long)]
    no_build: bool,
}

#[derive(Debug, clap::Args)]
struct LbConfigArgs {
    /// Number of drivers.
    #[arg(long, default_value_t = 3)]
    drivers: usize,
    /// Drivers on separate hosts named by this pattern (`{i}` = 1..N), all
    /// on `--driver-port` (docker-compose). Without it: all on `--host`,
    /// ports counting up from `--driver-port`.
    #[arg(long)]
    host_pattern: Option<String>,
    /// Host of the drivers when they share one.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The (first) driver's CWP/1 port.
    #[arg(long, default_value_t = 5001)]
    driver_port: u16,
    /// The (first) driver's admin port (health checks).
    #[arg(long, default_value_t = 9101)]
    admin_port: u16,
    /// The port devices connect to.
    #[arg(long, default_value_t = 7000)]
    fleet_port: u16,
    /// Address the fleet port is bound on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: String,
    /// Connections per HAProxy process; default: what the open-file limit
    /// allows (two descriptors per device).
    #[arg(long)]
    maxconn: Option<u32>,
    /// The open-file limit HAProxy will run with.
    #[arg(long, default_value_t = 20_000)]
    open_files: u64,
    /// HAProxy threads.
    #[arg(long, default_value_t = 2)]
    threads: u16,
    /// The drivers' DRIVER_HEARTBEAT_S, to size the idle timeouts.
    #[arg(long, default_value_t = 30)]
    heartbeat_s: u16,
    /// Stats page and Prometheus endpoint port.
    #[arg(long, default_value_t = 8404)]
    stats_port: u16,
    /// Address the stats port is bound on.
    #[arg(long, default_value = "0.0.0.0")]
    stats_bind: String,
    /// Re-resolve driver names with this DNS server (docker: 127.0.0.11:53).
    #[arg(long)]
    resolver: Option<String>,
    /// HTTP gateways (`http-gateway`) behind an HTTP frontend on
    /// `--http-port`; 0: no HTTP frontend.
    #[arg(long, default_value_t = 0)]
    gateways: usize,
    /// Gateways on separate hosts named by this pattern (`{i}` = 1..N), all
    /// on `--gateway-port`. Without it: all on `--host`, ports counting up.
    #[arg(long)]
    gateway_host_pattern: Option<String>,
    /// The (first) gateway's HTTP_LISTEN port.
    #[arg(long, default_value_t = 8081)]
    gateway_port: u16,
    /// The (first) gateway's HTTP_ADMIN_LISTEN port (health checks).
    #[arg(long, default_value_t = 9181)]
    gateway_admin_port: u16,
    /// The port HTTP clients connect to (`HTTP_PORT`).
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// Write here instead of standard output, then check it with `haproxy -c`.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Commands::Up(args) => up(args),
        Commands::LbConfig(args) => lb_config(args),
        Commands::Bench(args) => bench(args),
        Commands::BenchCharts(args) => bench_charts(args),
    }
}

fn lb_config(args: LbConfigArgs) -> anyhow::Result<()> {
    let backends = match &args.host_pattern {
        Some(pattern) => LbConfig::named_backends(args.drivers, pattern, args.driver_port, args.admin_port),
        None => LbConfig::local_backends(args.drivers, &args.host, args.driver_port, args.admin_port),
    };
    let http = (args.gateways > 0).then(|| {
        let backends = match &args.gateway_host_pattern {
            Some(pattern) => {
                LbConfig::named_backends(args.gateways, pattern, args.gateway_port, args.gateway_admin_port)
            }
            None => LbConfig::local_backends(args.gateways, &args.host, args.gateway_port, args.gateway_admin_port),
        };
        HttpFrontend {
            port: args.http_port,
            gateways: backends
                .into_iter()
                .map(|backend| backend.renamed("http-gateway"))
                .collect(),
        }
    });
    let command = std::env::args()
        .skip(1)
        .fold("fleet".to_owned(), |line, arg| format!("{line} {arg}"));
    let config = LbConfig {
        bind: args.bind,
        fleet_port: args.fleet_port,
        maxconn: args.maxconn.unwrap_or_else(|| maxconn_for_open_files(args.open_files)),
        threads: args.threads,
        heartbeat_s: args.heartbeat_s,
        stats_bind: args.stats_bind,
        stats_port: args.stats_port,
        backends,
        resolver: args.resolver,
        http,
        command,
    };
    match args.output {
        None => print!("{}", config.render()),
        Some(path) => {
            std::fs::write(&path, config.render()).with_context(|| format!("writing {}", path.display()))?;
            if find_on_path("haproxy").is_some() {
                drover_testkit::haproxy::check(&path)?;
                eprintln!("wrote {} (haproxy -c: valid)", path.display());
            } else {
                eprintln!("wrote {} (haproxy not installed: not checked)", path.display());
            }
        }
    }
    Ok(())
}

/// Every missing prerequisite, with how to install it.
fn missing_prerequisites(args: &UpArgs) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if args.redis_url.is_none() && find_on_path("redis-server").is_none() {
        missing.push(drover_testkit::redis::INSTALL_HINT);
    }
    if find_on_path("haproxy").is_none() {
        missing.push(drover_testkit::haproxy::INSTALL_HINT);
    }
    missing
}

/// Builds the fleet's binaries in the profile `fleet` itself was built in:
/// the servers, the simulator, and this package's benchmark tools
/// (`cargo run` built only `fleet` itself).
fn build_binaries() -> anyhow::Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if !workspace.join("Cargo.toml").is_file() || find_on_path("cargo").is_none() {
        return Ok(()); // an installed fleet: the binaries sit next to it
    }
    let release = drover_testkit::binaries::bin_dir()?.ends_with("release");
    eprintln!("building driver, vendor-bridge, http-gateway, controller-sim, drover and the benchmark tools ...");
    let mut cargo = Command::new("cargo");
    cargo.current_dir(&workspace).args([
        "build",
        "-q",
        "-p",
        "driver",
        "-p",
        "vendor-bridge",
        "-p",
        "controller-sim",
        "-p",
        "fleet",
        // `drover`: the files benchmark adds its file and starts its rollout as an operator does.
        "-p",
        "drover-cli",
        "-p",
        "http-gateway",
    ]);
    if release {
        cargo.arg("--release");
    }
    let status = cargo.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    Ok(())
}

fn master_key(args: &UpArgs) -> anyhow::Result<String> {
    if let Some(key) = &args.master_key {
        cwp_key_check(key)?;
        return Ok(key.trim().to_owned());
    }
    let path = args.state_dir.join("master.key");
    if let Ok(key) = std::fs::read_to_string(&path) {
        return Ok(key.trim().to_owned());
    }
    let key = hex::encode(rand::random::<[u8; 32]>());
    std::fs::create_dir_all(&args.state_dir)?;
    std::fs::write(&path, format!("{key}\n")).with_context(|| format!("writing {}", path.display()))?;
    Ok(key)
}

fn cwp_key_check(key: &str) -> anyhow::Result<()> {
    let bytes = hex::decode(key.trim()).context("CWP_MASTER_KEY is not hex")?;
    anyhow::ensure!(bytes.len() == 32, "CWP_MASTER_KEY must be 64 hex digits");
    Ok(())
}

fn up(args: UpArgs) -> anyhow::Result<()> {
    let missing = missing_prerequisites(&args);
    if !missing.is_empty() {
        for hint in &missing {
            eprintln!("fleet: {hint}");
        }
        bail!("missing prerequisites");
    }
    if !args.no_build {
        build_binaries()?;
    }
    let key = master_key(&args)?;
    let open_files = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(20_000);
    let state_dir = std::path::absolute(&args.state_dir)?;
    eprintln!(
        "starting {} drivers behind HAProxy on port {} ...",
        args.drivers, args.fleet_port
    );
    let mut fleet = LocalFleet::start(FleetSpec {
        drivers: args.drivers,
        fleet_port: args.fleet_port,
        stats_port: args.stats_port,
        haproxy_processes: args.haproxy_processes,
        redis_url: args.redis_url.clone(),
        redis_cluster: args.redis_cluster.map(|masters| (masters, args.redis_replicas)),
        event_partitions: args
            .partitions
            .unwrap_or_else(|| args.redis_cluster.map_or(1, |masters| masters as u32)),
        master_key_hex: key.clone(),
        state_dir: state_dir.clone(),
        log_files: true,
        driver_env: Vec::new(),
        haproxy_open_files: open_files,
        gateways: args.gateways,
        http_port: args.http_port,
    })?;

    let (stop_tx, stop_rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .context("installing the Ctrl-C handler")?;

    print_welcome(&fleet, &args, &key, &state_dir);
    let _ = stop_rx.recv();
    eprintln!("\nstopping: drivers drain first ...");
    fleet.stop(Duration::from_secs(60));
    eprintln!("fleet stopped");
    Ok(())
}

fn print_welcome(fleet: &LocalFleet, args: &UpArgs, key: &str, state_dir: &Path) {
    let first_port = fleet
        .redis_url
        .split(',')
        .next()
        .and_then(|url| url.rsplit(':').next())
        .unwrap_or("6379")
        .trim_end_matches('/')
        .to_owned();
    let bin = drover_testkit::binaries::bin_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let drivers: Vec<String> = fleet
        .drivers
        .iter()
        .map(|d| format!("{} (metrics http://{}/metrics)", d.addr(), d.admin_addr()))
        .collect();
    // The first of controller-sim's default serials (SIM- and six digits).
    let first_device = cwp::Serial::from_bytes(b"SIM-000001").expect("SIM-000001 is a valid serial");
    let cluster = fleet.cluster.is_some();
    let layout = drover_schema::Layout::for_deployment(
        cluster,
        args.partitions
            .unwrap_or_else(|| args.redis_cluster.map_or(1, |masters| masters as u32)),
    )
    .unwrap_or(drover_schema::Layout::SINGLE);
    // On a cluster: -c follows redirections, and pub/sub is sharded.
    let (cli, subscribe, publish, verify) = if cluster {
        (
            format!("redis-cli -c -p {first_port}"),
            "SSUBSCRIBE",
            "SPUBLISH",
            format!("--verify-redis-cluster {}", fleet.redis_url),
        )
    } else {
        (
            format!("redis-cli -p {first_port}"),
            "SUBSCRIBE",
            "PUBLISH",
            format!("--verify-redis {}", fleet.redis_url),
        )
    };
    let device_key = layout.device(&first_device);
    let events = layout.events(layout.partition_of(&first_device));
    println!(
        r#"
Drover fleet is up.

  devices connect to   127.0.0.1:{port}   (HAProxy, {procs} process(es), leastconn over {n} drivers)
  master key           {key}   (CWP_MASTER_KEY; kept in {state}/master.key)
  redis                {redis}   ({shape})
  vendor-bridge        {bridge}   (asks for the token in {state}/bridge.token; metrics http://{bridge_metrics}/metrics)
  drivers              {drivers}
  HTTP devices         http://127.0.0.1:{http_port}/v1/events   (HAProxy, leastconn over {g} http-gateway(s); docs/HTTP.md){gateways}
  HAProxy stats        http://127.0.0.1:{stats}/stats   (Prometheus: /metrics)
  logs                 {state}/logs/

Try it (in another terminal):

  # 100 simulated controllers, 1,000 events/s for a minute, then check that
  # every acknowledged event is stored once
  CWP_MASTER_KEY={key} {bin}/controller-sim --target 127.0.0.1:{port} --devices 100 --rate 1000 --duration 60s {verify}

  # watch command results, then send a command to one of them
  {cli} {subscribe} '{results}'
  {cli} {publish} {commands} '{{"name":"reboot","body":"{{\"delay_s\":5}}"}}'

  # the device's registry entry, and the newest events of its stream
  {cli} HGETALL '{device_key}'
  {cli} XREVRANGE '{events}' + - COUNT 5

Ctrl-C stops everything (drivers drain first).
"#,
        port = args.fleet_port,
        procs = args.haproxy_processes.max(1),
        n = fleet.drivers.len(),
        state = state_dir.display(),
        redis = fleet.redis_url,
        shape = if cluster {
            format!(
                "a Redis Cluster of {} masters, {} replica(s) each, {} event stream(s)",
                args.redis_cluster.unwrap_or(0),
                args.redis_replicas,
                layout.partition_count()
            )
        } else {
            format!("one Redis, {} event stream(s)", layout.partition_count())
        },
        bridge = fleet.bridge.url(),
        bridge_metrics = fleet.bridge.metrics_addr(),
        drivers = drivers.join("\n                       "),
        stats = args.stats_port,
        http_port = args.http_port,
        g = fleet.gateways.len(),
        gateways = fleet
            .gateways
            .iter()
            .map(|g| format!(
                "\n                       {} (metrics http://{}/metrics)",
                g.addr(),
                g.admin_addr()
            ))
            .collect::<String>(),
        results = drover_schema::COMMAND_RESULTS.name(&first_device),
        commands = drover_schema::COMMANDS.name(&first_device),
    );
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use fleet::bench::{BenchContext, machine::Machine, report};
    if !args.no_build {
        build_binaries()?;
    }
    let work = tempfile::Builder::new().prefix("drover-bench-").tempdir()?;
    let log_dir = std::env::temp_dir().join("drover-bench-logs");
    let _ = std::fs::remove_dir_all(&log_dir);
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    eprintln!("process logs: {}", log_dir.display());
    let command = std::env::args()
        .skip(1)
        .fold("cargo run --release -p fleet --".to_owned(), |line, arg| {
            format!("{line} {arg}")
        });
    let ctx = BenchContext {
        work_dir: work.path().to_owned(),
        log_dir: log_dir.clone(),
        quick: args.quick,
        command: command.clone(),
    };
    let machine = Machine::current();
    eprintln!("benchmarking on {}", machine.describe());
    let charts_dir = args.charts.clone().unwrap_or_else(|| {
        args.out
            .parent()
            .map_or_else(|| PathBuf::from("charts"), |dir| dir.join("charts"))
    });
    let results = charts_dir.join(fleet::bench::charts::RESULTS_FILE);
    let mut chart_data = fleet::bench::charts::ChartData::load(&results)?;
    let measured_on = machine.describe();
    report::write_section(&args.out, "suite", &suite_section(&args, &command, &machine))?;
    let mut failed = Vec::new();
    for name in &args.only {
        // Taken before the benchmark loads the machine itself (the header
        // is written after it ran).
        let load_before = Machine::load_average();
        let header = |title: &str, what: &str| {
            format!(
                "## {title}\n\n{what}\n\nCommand: `{command}`  \nMachine: {}  \nLoad average (1 min) when it started: {}\n\n",
                machine.describe(),
                load_before.map_or_else(|| "unknown".to_owned(), |load| format!("{load:.2}"))
            )
        };
        eprintln!("== {name} ==");
        // Taken before the benchmark loads the machine itself.
        let provenance = fleet::bench::charts::Provenance {
            command: command.clone(),
            machine: measured_on.clone(),
            load_average: Machine::load_average(),
        };
        let outcome = match name.as_str() {
            "events" => bench_events(&ctx, &args, header(EVENTS_TITLE, EVENTS_WHAT)).map(|(body, runs)| {
                chart_data.set_events(provenance, &runs);
                body
            }),
            "idle" => bench_idle(&ctx, &args, header("Idle connections", IDLE_WHAT)).map(|(body, runs)| {
                chart_data.set_idle(provenance, &runs);
                body
            }),
            "storm" => fleet::bench::storm::run(&ctx, args.storm_devices, &args.storm_drivers, args.storm_queued).map(
                |result| {
                    chart_data.set_storm(provenance, &result);
                    header("Connect storm", STORM_WHAT) + &result.markdown()
                },
            ),
            "commands" => fleet::bench::commands::run(&ctx, args.command_devices, args.command_rate)
                .map(|result| header("Commands", COMMANDS_WHAT) + &result.markdown()),
            "hostile" => fleet::bench::hostile::run(&ctx, HOSTILE_DEVICES, HOSTILE_CONNECTIONS)
                .map(|result| header("Honest devices under a slowloris attack", HOSTILE_WHAT) + &result.markdown()),
            "cluster" => fleet::bench::cluster::run(&ctx)
                .map(|result| header("Redis Cluster", CLUSTER_WHAT) + &result.markdown()),
            "files" => {
                fleet::bench::files::run(&ctx).map(|result| header("Files to devices", FILES_WHAT) + &result.markdown())
            }
            "http-events" => fleet::bench::http_events::run(&ctx)
                .map(|result| header("HTTP events end to end", HTTP_EVENTS_WHAT) + &result.markdown()),
            "uploads" => fleet::bench::uploads::run(&ctx)
                .map(|table| header("Uploads, rerun by the suite", UPLOADS_WHAT) + &table),
            "http-uploads" => fleet::bench::uploads::run_http(&ctx)
                .map(|table| header("Uploads over HTTP (tus), rerun by the suite", HTTP_UPLOADS_WHAT) + &table),
            other => Err(anyhow::anyhow!(
                "unknown benchmark {other:?} (events, idle, storm, commands, uploads, hostile, cluster, files, http-events, http-uploads)"
            )),
        };
        match outcome {
            Ok(body) => {
                report::write_section(&args.out, name, &body)?;
                eprintln!("{name}: written to {}", args.out.display());
                if matches!(name.as_str(), "events" | "idle" | "storm") {
                    std::fs::create_dir_all(&charts_dir)
                        .with_context(|| format!("creating {}", charts_dir.display()))?;
                    chart_data.save(&results)?;
                    write_charts(&chart_data, &charts_dir, &results, Some(&args.out))?;
                }
            }
            Err(err) => {
                eprintln!("{name} failed: {err:#}");
                failed.push(name.clone());
            }
        }
    }
    if !failed.is_empty() {
        bail!("benchmarks failed: {}", failed.join(", "));
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

const EVENTS_TITLE: &str = "Events end to end";
const EVENTS_WHAT: &str = "Device → driver → gRPC stream → vendor-bridge → Redis (`appendonly yes`, `appendfsync always`) → `ACK`; devices connect straight to one driver (HAProxy is not on the measured path). `controller-sim` devices send 64-byte events in bursts every 50 ms and keep each until its `ACK`; latency is from send to the covering `ACK`. The saturated phase writes about a gigabyte of append-only file in 20 s, enough to start Redis's own rewrite (at every `auto-aof-rewrite-min-size`, 1 GB) in the phase after it; the runner has Redis rewrite the file right after saturation (`BGREWRITEAOF`, waited for), so that the phases at a fixed rate measure the steady state. What one rewrite costs the tail is measured apart: `bench/aof_rewrite_tail.sh` (\"What a rewrite of the append-only file costs\" in docs/BENCHMARKS.md).";
const IDLE_WHAT: &str = "The most authenticated devices held at once with heartbeats, and what an idle device costs: resident memory the drivers (and, separately, HAProxy) gained per device, beside the kernel's own memory per TCP socket measured over the same span (the limit: no server can hold a connection for less), and beside Mosquitto holding the same number of idle MQTT 3.1.1 clients with keep-alives (the peer an operator would otherwise pick).";
const STORM_WHAT: &str = "Every device connects at once through HAProxy and completes the CWP/1 handshake (HMAC challenge–response, the bridge's session script in Redis, the command subscription, `WELCOME`).";
const COMMANDS_WHAT: &str = "An operator publishes commands (JSON with an id) at a steady rate to devices picked at random among those connected (`PUBLISH cwp:cmd:{serial}`); each device answers at once with a result event; the operator times each command from its `PUBLISH` to the notice on `cwp:cmd-result:{serial}` (`PSUBSCRIBE cwp:cmd-result:*`).";
/// Honest devices of the hostile benchmark (issue 8).
const HOSTILE_DEVICES: u64 = 100;
/// Slow connections held against them.
const HOSTILE_CONNECTIONS: usize = 10_000;
const HOSTILE_WHAT: &str = "100 `controller-sim` devices send 1,000 events/s in all to one driver (defaults for `DRIVER_HANDSHAKE_TIMEOUT` and `DRIVER_MAX_HANDSHAKES`), alone, then while 10,000 connections that never send a byte are held open against the same driver, each reopened as soon as the driver closes it, then (the control) while the same attack is aimed at a minimal stand-in server on the same machine; three rounds of the three phases. Latency is from send to the covering `ACK`. The attacking thread runs at nice 19, standing in for an attacker whose CPU is on another machine; the honest devices' simulator runs at the normal priority. Target (issue 8): p99 under attack within 2× the unloaded p99 (medians over the rounds).";
const CLUSTER_WHAT: &str = "The same events path (device → driver → gRPC → vendor-bridge → Redis → `ACK`, 1,000 devices on one driver) with one Redis, then with a 3-master Redis Cluster holding 1, 3 and 12 event partitions (`REDIS_EVENT_PARTITIONS`), then with a replica per master, without and with `BRIDGE_WAIT_REPLICAS=1`, all in one run: events acknowledged per second when offered far more, Redis's CPU per stored event, and ack latency at a fixed rate. Every Redis node, the bridge, the driver and the simulator share this machine's 2 cores, so no speed-up can show here: the run shows what the cluster and `WAIT` cost per event, and how the partitions spread the events over the masters (docs/CAPACITY.md turns these figures into a plan).";
const FILES_WHAT: &str = "A rollout (README \"Rollouts\") of one file to 100 `controller-sim` devices at once (`--max-active 100`), through HAProxy and 4 drivers, while 100 other devices send 1,000 events/s in all through the same HAProxy. Each device accepts with a 256 KiB window, acknowledges every half window, hashes what it receives and verifies the SHA-256 at the end; a device's rate is from its offer to its last byte. Beside it in the same run: the codec sealing (server) and verifying (device) the same chunks (the default max_payload less the tag) on one core, in one thread of the runner (the limit of the work: every chunk is sealed per device, so no `sendfile`), and nginx (`sendfile on`) serving the same file over plain HTTP on loopback to 100 `curl`s at once (moving the bytes without per-device sealing). Then the same rollout to 100 new devices with `--max-bytes-per-s` (each driver's cap on the rollout's chunks). CPU seconds are those of each kind of process over the rollout. Every process (4 drivers, HAProxy, Redis, the bridge, both simulators) shares the machine's cores; the drivers seal chunks on their transfers' thread at `DRIVER_TRANSFER_NICE` (default 19), and the file devices' simulator runs on 2 threads at nice 19 (a real device's CPU is on another machine; the events devices' keeps the normal priority). Each file device also sends an event a second while it receives (`--file-events`): its own ack latency is that of a device whose connection carries chunks. The events devices run alone for 20 s before the rollouts and again after them; the lower of the two p99s is the baseline. Targets (issue 18): aggregate ≥ 0.6 × the one-core codec rate, each driver's RSS growth ≤ 32 MiB, the other devices' ack p99 within 2× of the same devices without the rollout, every transfer verified.";
const HTTP_UPLOADS_WHAT: &str = "Issue 20: tus 1.0 uploads (`POST`, then `PATCH` with the body) through HAProxy (`mode http`) to one `http-gateway`, which writes each 256 KiB at once and makes it durable by a group commit (one `fdatasync` in flight, at most 4 MiB behind; every byte durable before the answer), keeps the SHA-256, and records each completed upload through the vendor-bridge in Redis (`appendfsync always`). 100 concurrent uploads of 40 MB (curl, one serial and bearer token each) against min(loopback TCP with the same connections and bytes, 256 KiB write + `fdatasync` on the same disk in the uploads' shape: 100 streams of 40 MB at once) measured right before; the gateway's peak RSS; one 1 GiB upload beside the naive stream-to-disk web app (`bench/baselines/naive_http_upload.py`, Flask) and an existing tus server (`tuspyserver`; `rustus` when installed) with the same clients.";
const HTTP_EVENTS_WHAT: &str = "Issue 19: devices post signed NDJSON event batches (`POST /v1/events`, `CWP1-HMAC-SHA256`) through HAProxy (`mode http`) to `http-gateway`, which stores them through the vendor-bridge into Redis (`appendonly yes`, `appendfsync always`) and answers once every record is durable. `bench-http` runs 16 concurrent clients on HTTP/1.1 keep-alive, 1,024 requests of 1,600 taxi-trip records (four fields of a trip in `body`, ~160 bytes a line); latency is from sending a request to reading its whole answer. Beside it in the same run: the Redis `XADD` ceiling for the same entries, the reference Python service users know (`bench/baselines/tornado_ndjson.py`: Tornado, one process, `json.loads` per line, rows appended with the csv module, flushed but not fsynced) under the same load from the same generator, and the gateway's resident memory while 100 clients post a 16 MiB body each at once.";
const UPLOADS_WHAT: &str = "`bench/uploads.sh` (see **Uploads** above for what it measures).";

fn bench_events(
    ctx: &fleet::bench::BenchContext,
    args: &BenchArgs,
    header: String,
) -> anyhow::Result<(String, Vec<fleet::bench::events::EventsResult>)> {
    let mut body = header;
    let mut runs = Vec::new();
    for devices in &args.devices {
        eprintln!("events: {devices} devices ...");
        let result = fleet::bench::events::run(ctx, *devices)?;
        body.push_str(&result.markdown());
        body.push('\n');
        runs.push(result);
    }
    Ok((body, runs))
}

fn bench_idle(
    ctx: &fleet::bench::BenchContext,
    args: &BenchArgs,
    header: String,
) -> anyhow::Result<(String, Vec<fleet::bench::idle::IdleResult>)> {
    let mut body = header;
    let mut runs = Vec::new();
    for (index, devices) in args.idle_devices.iter().enumerate() {
        eprintln!("idle: {devices} devices ...");
        let last = index + 1 == args.idle_devices.len();
        let result = fleet::bench::idle::run(ctx, *devices, last)?;
        body.push_str(&result.markdown());
        body.push('\n');
        runs.push(result);
    }
    Ok((body, runs))
}

/// Draws the charts of `data` into `dir` and, with `doc`, rewrites the
/// document's charts section to show them.
fn write_charts(
    data: &fleet::bench::charts::ChartData,
    dir: &Path,
    results: &Path,
    doc: Option<&Path>,
) -> anyhow::Result<()> {
    let charts = data.render_all(dir)?;
    for chart in &charts {
        eprintln!("chart: {}", chart.path.display());
    }
    if let Some(doc) = doc
        && !charts.is_empty()
    {
        let section = fleet::bench::charts::markdown(doc, &charts, results);
        fleet::bench::report::write_section(doc, "charts", &section)?;
    }
    Ok(())
}

fn bench_charts(args: BenchChartsArgs) -> anyhow::Result<()> {
    let data = fleet::bench::charts::ChartData::load(&args.results)?;
    anyhow::ensure!(
        data != fleet::bench::charts::ChartData::default(),
        "{} holds no series (or does not exist): run `fleet bench` first",
        args.results.display()
    );
    let dir = args.out.clone().unwrap_or_else(|| {
        args.results
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_owned)
    });
    write_charts(&data, &dir, &args.results, args.doc.as_deref())
}

/// The suite's own section: how to reproduce it and what it covers.
fn suite_section(args: &BenchArgs, command: &str, machine: &fleet::bench::machine::Machine) -> String {
    format!(
        "## The benchmark suite\n\nOne command brings up the local fleet, runs the standard suite and rewrites the sections below (events at {} devices, {} idle devices beside Mosquitto and the kernel, a storm of {} devices, commands at {} devices):\n\n```sh\ncargo run --release -p fleet -- bench\n```\n\nEvents, idle and storm also draw their charts (see **Charts**) into `docs/charts/` (`--charts DIR`) and keep the series in `docs/charts/results.json`, from which `cargo run -p fleet -- bench-charts --doc docs/BENCHMARKS.md` draws them again without measuring. `--idle-devices` takes several counts (`2000,5000,10000`): one point each on the memory chart.\n\nLast run: `{command}` on {}.\n\n{}",
        args.devices
            .iter()
            .map(|d| fleet::bench::report::thousands(*d as f64))
            .collect::<Vec<_>>()
            .join(" and "),
        args.idle_devices
            .iter()
            .map(|d| fleet::bench::report::thousands(*d as f64))
            .collect::<Vec<_>>()
            .join(" and "),
        fleet::bench::report::thousands(args.storm_devices as f64),
        fleet::bench::report::thousands(args.command_devices as f64),
        machine.describe(),
        fleet::bench::uploads::reference()
    )
}
