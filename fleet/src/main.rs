//! `fleet`: run a whole Drover fleet locally, generate HAProxy's
//! configuration, run the benchmarks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use fleet::lbconfig::{LbConfig, maxconn_for_open_files};
use fleet::local::{FleetSpec, LocalFleet};
use fleet::process::find_on_path;

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
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Benchmarks to run (comma-separated): events.
    #[arg(long, value_delimiter = ',', default_value = "events")]
    only: Vec<String>,
    /// Devices for the events benchmark (comma-separated for several runs).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    devices: Vec<u64>,
    /// Short phases, to check the runner itself.
    #[arg(long)]
    quick: bool,
    /// The file to update.
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    out: PathBuf,
    /// Do not build the binaries first.
    #[arg(long)]
    no_build: bool,
}

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
    /// HAProxy processes sharing the fleet port (more when one process's
    /// open-file limit is the bottleneck: ~9,900 devices each here).
    #[arg(long, default_value_t = 1)]
    haproxy_processes: usize,
    /// Use this Redis instead of a private one.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
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
    /// Write here instead of standard output, then check it with `haproxy -c`.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Commands::Up(args) => up(args),
        Commands::LbConfig(args) => lb_config(args),
        Commands::Bench(args) => bench(args),
    }
}

fn lb_config(args: LbConfigArgs) -> anyhow::Result<()> {
    let backends = match &args.host_pattern {
        Some(pattern) => LbConfig::named_backends(args.drivers, pattern, args.driver_port, args.admin_port),
        None => LbConfig::local_backends(args.drivers, &args.host, args.driver_port, args.admin_port),
    };
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
        command,
    };
    match args.output {
        None => print!("{}", config.render()),
        Some(path) => {
            std::fs::write(&path, config.render()).with_context(|| format!("writing {}", path.display()))?;
            if find_on_path("haproxy").is_some() {
                fleet::haproxy::check(&path)?;
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
        missing.push(fleet::redis::INSTALL_HINT);
    }
    if find_on_path("haproxy").is_none() {
        missing.push(fleet::haproxy::INSTALL_HINT);
    }
    missing
}

/// Builds the fleet's binaries in the profile `fleet` itself was built in.
fn build_binaries() -> anyhow::Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if !workspace.join("Cargo.toml").is_file() || find_on_path("cargo").is_none() {
        return Ok(()); // an installed fleet: the binaries sit next to it
    }
    let release = fleet::binaries::bin_dir()?.ends_with("release");
    eprintln!("building driver, vendor-bridge and controller-sim ...");
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
        master_key_hex: key.clone(),
        state_dir: state_dir.clone(),
        log_files: true,
        driver_env: Vec::new(),
        haproxy_open_files: open_files,
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
    let redis_port = fleet
        .redis_url
        .rsplit(':')
        .next()
        .unwrap_or("6379")
        .trim_end_matches('/');
    let bin = fleet::binaries::bin_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let drivers: Vec<String> = fleet
        .drivers
        .iter()
        .map(|d| format!("{} (metrics http://{}/metrics)", d.addr(), d.admin_addr()))
        .collect();
    println!(
        r#"
Drover fleet is up.

  devices connect to   127.0.0.1:{port}   (HAProxy, {procs} process(es), leastconn over {n} drivers)
  master key           {key}   (CWP_MASTER_KEY; kept in {state}/master.key)
  redis                {redis}
  vendor-bridge        {bridge}
  drivers              {drivers}
  HAProxy stats        http://127.0.0.1:{stats}/stats   (Prometheus: /metrics)
  logs                 {state}/logs/

Try it (in another terminal):

  # 100 simulated controllers, 1,000 events/s for a minute
  CWP_MASTER_KEY={key} {bin}/controller-sim --target 127.0.0.1:{port} --devices 100 --rate 1000 --duration 60s

  # watch command results, then send a command to one of them
  redis-cli -p {redis_port} SUBSCRIBE 'cwp:cmd-result:SIM-000001'
  redis-cli -p {redis_port} PUBLISH cwp:cmd:SIM-000001 '{{"name":"reboot","body":"{{\"delay_s\":5}}"}}'

  # the newest events
  redis-cli -p {redis_port} XREVRANGE cwp:events + - COUNT 5

Ctrl-C stops everything (drivers drain first).
"#,
        port = args.fleet_port,
        procs = args.haproxy_processes.max(1),
        n = fleet.drivers.len(),
        state = state_dir.display(),
        redis = fleet.redis_url,
        bridge = fleet.bridge.url(),
        drivers = drivers.join("\n                       "),
        stats = args.stats_port,
    );
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use fleet::bench::{BenchContext, events, machine::Machine, report};
    if !args.no_build {
        build_binaries()?;
    }
    let work = tempfile::Builder::new().prefix("drover-bench-").tempdir()?;
    let command = std::env::args()
        .skip(1)
        .fold("cargo run --release -p fleet --".to_owned(), |line, arg| {
            format!("{line} {arg}")
        });
    let ctx = BenchContext {
        work_dir: work.path().to_owned(),
        quick: args.quick,
        command: command.clone(),
    };
    let machine = Machine::current();
    eprintln!("benchmarking on {}", machine.describe());
    for name in &args.only {
        match name.as_str() {
            "events" => {
                let mut body = format!(
                    "## Events end to end\n\nDevice → driver → gRPC stream → vendor-bridge → Redis (`appendonly yes`, `appendfsync always`) → `ACK`; devices connect straight to one driver (HAProxy is not on the measured path). `controller-sim` devices send 64-byte events in bursts every 50 ms and keep each until its `ACK`; latency is from send to the covering `ACK`.\n\nCommand: `{command}`  \nMachine: {}\n\n",
                    machine.describe()
                );
                for devices in &args.devices {
                    eprintln!("events: {devices} devices ...");
                    let result = events::run(&ctx, *devices)?;
                    body.push_str(&result.markdown());
                    body.push('\n');
                }
                report::write_section(&args.out, "events", &body)?;
            }
            other => bail!("unknown benchmark {other:?}"),
        }
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
