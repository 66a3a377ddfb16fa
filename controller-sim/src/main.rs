//! `controller-sim`: runs a fleet of simulated controllers against HAProxy
//! or a driver and reports what they measured. See `--help`.
//!
//! - `cli`: options and environment → a validated `Config`.
//! - `scenario`: what the devices do (`Behaviour`s).
//! - `report`: the progress line and the summary.
//! - here: the run itself: spawn one task per device, wait out the
//!   duration, let the devices finish, verify, print.

mod cli;
mod report;
mod scenario;

use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use controller_sim::device::{Control, Device, Endpoint, Stats};
use controller_sim::verify::{EVENTS_STREAM, Tally, read_stream};
use cwp::DeviceKey;
use tokio::time::{Instant, MissedTickBehavior};

use crate::cli::{Args, Config};
use crate::report::{RunFacts, Sample, Summary, Verification, progress_line};
use crate::scenario::Scenario;

/// How often the progress line is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// File descriptors besides the devices' sockets.
const SPARE_FDS: u64 = 64;

/// Exit statuses (documented in `--help`).
const EXIT_NOTHING_CONNECTED: u8 = 1;
const EXIT_BAD_CONFIG: u8 = 2;
const EXIT_VERIFY_FAILED: u8 = 3;

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let config = match Config::from_args(args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("controller-sim: {err}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    raise_fd_limit(config.devices + SPARE_FDS);

    // One thread by default: the simulator shares a small machine with the
    // driver, the bridge and Redis, and a single-threaded runtime spends no
    // CPU on work stealing or cross-thread wake-ups. More cores: more
    // processes (disjoint --first-serial), or --threads.
    let runtime = if config.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads)
            .enable_all()
            .build()
    };
    let outcome = runtime
        .context("cannot start the tokio runtime")
        .and_then(|runtime| runtime.block_on(run(config)));
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("controller-sim: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Each device holds a socket: lift the soft limit on open files to the
/// hard one, and warn if even that is too low.
fn raise_fd_limit(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < needed && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
        tracing::warn!(soft, hard, "cannot raise the open files limit");
    }
    let limit = getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(soft, _)| soft);
    if limit < needed {
        tracing::warn!(
            limit,
            needed,
            "too few file descriptors for every device; raise `ulimit -n`"
        );
    }
}

async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let stats = Arc::new(Stats::new());
    let control = Arc::new(Control::new());
    let plan = config.scenario.plan(&config);
    let started = stats.started();

    let mut devices = Vec::with_capacity(usize::try_from(config.devices).unwrap_or(0));
    for index in 0..config.devices {
        let serial = config.serials.serial(index).context("serial names were validated")?;
        let key = DeviceKey::derive(&config.master_key, &serial);
        let mut device = Device::new(serial, key);
        if config.verify_redis.is_some() {
            device = device.with_ack_log();
        }
        let endpoint = Endpoint {
            target: config.target,
            source: source_of(&config, index),
        };
        let start_delay = ramp_delay(index, config.connect_rate);
        let behaviour = plan.behaviour(index);
        let (stats, control) = (Arc::clone(&stats), Arc::clone(&control));
        devices.push(tokio::spawn(async move {
            device.run(endpoint, start_delay, &behaviour, &stats, &control).await;
            device
        }));
    }

    // The run: wait out the duration, drawing the progress line.
    watch_duration(&config, &stats, started).await;
    let run = started.elapsed();
    let connected_at_end = stats.connected();
    let acked_in_run = stats.acked();

    // The end: no new events; the acks of what was sent, within the grace.
    control.finish();
    if std::io::stderr().is_terminal() {
        eprint!(
            "\r\x1b[Kfinishing: waiting up to {:?} for outstanding acks",
            config.grace
        );
    }
    let hurry = {
        let control = Arc::clone(&control);
        let grace = config.grace;
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            control.abort();
        })
    };
    let mut finished = Vec::with_capacity(devices.len());
    for device in devices {
        finished.push(device.await.context("a device task panicked")?);
    }
    hurry.abort();
    clear_progress_line();

    let events_unacked = finished.iter().map(|device| device.unacked() as u64).sum();
    let facts = RunFacts {
        scenario: config.scenario.name(),
        target: config.target.to_string(),
        devices: config.devices,
        run,
        connected_at_end,
        acked_in_run,
        events_unacked,
    };
    let mut summary = Summary::new(facts, stats.snapshot());

    if let Some(url) = &config.verify_redis {
        let mut tally = Tally::new(
            finished
                .iter_mut()
                .filter_map(|device| Some((*device.serial(), device.take_ack_log()?))),
        );
        summary.verification = Some(match read_stream(url, EVENTS_STREAM, &mut tally).await {
            Ok(()) => Verification::checked(&tally.verdict()),
            Err(err) => Verification::failed(err),
        });
    }

    if config.json {
        println!("{}", summary.to_json());
    } else {
        println!("{summary}");
    }
    Ok(if summary.devices_connected == 0 {
        ExitCode::from(EXIT_NOTHING_CONNECTED)
    } else if summary.verification.as_ref().is_some_and(|v| !v.passed()) {
        ExitCode::from(EXIT_VERIFY_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

/// Device `index`'s local address: the sources in turn.
fn source_of(config: &Config, index: u64) -> Option<std::net::IpAddr> {
    let count = config.sources.len() as u64;
    (count > 0).then(|| config.sources[usize::try_from(index % count).unwrap_or(0)])
}

/// When device `index` first connects, so that the fleet's handshakes
/// arrive at `connect_rate` per second (0: all at once).
fn ramp_delay(index: u64, connect_rate: f64) -> Duration {
    if connect_rate > 0.0 {
        Duration::try_from_secs_f64(index as f64 / connect_rate).unwrap_or(Duration::MAX)
    } else {
        Duration::ZERO
    }
}

/// Waits until the run's duration is over, every upload is done (scenario
/// upload) or Ctrl-C; redraws the progress line on stderr when it is a
/// terminal.
async fn watch_duration(config: &Config, stats: &Stats, started: Instant) {
    let end = started + config.duration;
    let live = std::io::stderr().is_terminal();
    let mut ticks = tokio::time::interval_at(started + PROGRESS_INTERVAL, PROGRESS_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut before = Sample::default();
    let mut before_at = started;
    let ctrl_c = tokio::signal::ctrl_c();
    let uploaded = async {
        match config.scenario {
            Scenario::Upload => stats.uploads_completed_at_least(config.devices).await,
            Scenario::Events => std::future::pending().await,
        }
    };
    tokio::pin!(ctrl_c, uploaded);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(end) => return,
            _ = &mut ctrl_c => return,
            () = &mut uploaded => return,
            now = ticks.tick(), if live => {
                let sample = Sample {
                    connected: stats.connected(),
                    sent: stats.sent(),
                    acked: stats.acked(),
                    errors: stats.errors(),
                };
                let line = progress_line(now - started, config.devices, sample, before, now - before_at);
                eprint!("\r{line}\x1b[K");
                let _ = std::io::stderr().flush();
                (before, before_at) = (sample, now);
            }
        }
    }
}

fn clear_progress_line() {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[K");
    }
}
