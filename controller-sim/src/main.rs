//! `controller-sim`: runs a fleet of simulated controllers against HAProxy
//! or a driver and reports what they measured. See `--help`.
//!
//! - `cli`: options and environment → a validated `Config`.
//! - `scenario`: what the devices do (`Behaviour`s).
//! - `report`: the progress line and the summary.
//! - `workers` (`--procs N`): the parent runs N copies of itself as
//!   workers, each with a share of the devices, and `merge`s what they
//!   measured into one summary.
//! - here: the run itself (of a single process or of one worker): spawn
//!   one task per device, wait out the duration, let the devices finish,
//!   verify, print (or report to the parent).

mod cli;
mod merge;
mod report;
mod scenario;
mod workers;

use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser as _;
use controller_sim::device::{Behaviour, Control, Device, Endpoint, Stats};
use controller_sim::mqtt::{MqttBehaviour, MqttDevice};
use controller_sim::verify::{Expectation, Tally, read_events};
use cwp::DeviceKey;
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};

use crate::cli::Scenario;
use crate::cli::{Args, Config, Protocol, SPARE_FDS, StormThen};
use crate::merge::{WireHistograms, WorkerMessage, WorkerReport};
use crate::report::{RunFacts, Sample, Summary, Verification, progress_line};

/// How often the progress line is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// How often a storm checks whether every device has connected.
const STORM_POLL: Duration = Duration::from_millis(10);

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
    if config.worker {
        // A worker never outlives its parent (its stdin closing is the
        // other sign; this one also covers a parent killed with SIGKILL).
        let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    }
    let parent = config.procs > 1 && !config.worker;
    if !parent {
        raise_fd_limit(config.devices + SPARE_FDS);
    }

    // One thread by default: the simulator shares a small machine with the
    // driver, the bridge and Redis, and a single-threaded runtime spends no
    // CPU on work stealing or cross-thread wake-ups. More cores: --procs,
    // or --threads.
    let runtime = if config.threads == 1 || parent {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads)
            .enable_all()
            .build()
    };
    let outcome = runtime.context("cannot start the tokio runtime").and_then(|runtime| {
        if parent {
            runtime.block_on(workers::run_parent(config))
        } else {
            runtime.block_on(run(config))
        }
    });
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("controller-sim: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Each device holds a socket: lift the soft limit on open files to the
/// hard one (the configuration checked that it is enough).
fn raise_fd_limit(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < needed && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
        tracing::warn!(soft, hard, "cannot raise the open files limit");
    }
}

/// Unix time in µs.
pub(crate) fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// One simulated device, ready to run.
enum SimDevice {
    Cwp(Box<Device>, Arc<Behaviour>),
    Mqtt(MqttDevice),
}

/// How a worker hears from its parent: `go` starts the run, `stop` ends
/// it early (a second `stop` aborts the finish), end of input (the parent
/// is gone) aborts.
struct ParentLink {
    /// Told when the parent says `stop` (or vanished).
    stop: Arc<Notify>,
}

impl ParentLink {
    /// Says `ready`, waits for `go`, then keeps listening.
    async fn start(control: Arc<Control>) -> anyhow::Result<Self> {
        send_to_parent(&WorkerMessage::Ready);
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        match lines.next_line().await.context("reading the parent's go")? {
            Some(line) if line.trim() == "go" => {}
            other => anyhow::bail!("expected go from the parent, got {other:?}"),
        }
        let stop = Arc::new(Notify::new());
        let told = Arc::clone(&stop);
        tokio::spawn(async move {
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) if line.trim() == "stop" => told.notify_one(),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => {
                        control.abort();
                        told.notify_one();
                        return;
                    }
                }
            }
        });
        Ok(Self { stop })
    }
}

/// One line to the parent.
fn send_to_parent(message: &WorkerMessage) {
    match serde_json::to_string(message) {
        Ok(line) => println!("{line}"),
        Err(error) => tracing::error!(%error, "cannot encode a message to the parent"),
    }
}

/// Waits until something says the run should end: a signal, or the
/// parent's `stop`.
async fn told_to_stop(parent: Option<&ParentLink>) {
    match parent {
        Some(parent) => parent.stop.notified().await,
        None => shutdown_signal().await,
    }
}

async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let control = Arc::new(Control::new());
    let plan = config.scenario.plan(&config);
    let mqtt = MqttBehaviour {
        keep_alive: config.mqtt_keep_alive,
        ..MqttBehaviour::default()
    };

    // Identities and keys first, before the clock starts.
    let mut prepared = Vec::with_capacity(usize::try_from(config.devices).unwrap_or(0));
    for index in 0..config.devices {
        let serial = config.serials.serial(index).context("serial names were validated")?;
        prepared.push(match config.protocol {
            Protocol::Cwp => {
                let key = DeviceKey::derive(&config.master_key, &serial);
                let mut device = Device::new(serial, key);
                if config.verify_redis.is_some() {
                    device = device.with_ack_log();
                }
                SimDevice::Cwp(Box::new(device), plan.behaviour(index))
            }
            Protocol::Mqtt => SimDevice::Mqtt(MqttDevice::new(serial.as_str().to_owned())),
        });
    }
    let parent = match config.worker {
        true => Some(ParentLink::start(Arc::clone(&control)).await?),
        false => None,
    };

    let stats = Arc::new(Stats::new());
    let started_unix_us = unix_us();
    let started = stats.started();
    let mqtt = Arc::new(mqtt);
    let mut devices = Vec::with_capacity(prepared.len());
    for (index, device) in (0..).zip(prepared) {
        let endpoint = Endpoint {
            target: config.target_of(index),
            source: source_of(&config, index),
        };
        let start_delay = ramp_delay(index, config.connect_rate);
        let (stats, control) = (Arc::clone(&stats), Arc::clone(&control));
        devices.push(match device {
            SimDevice::Cwp(mut device, behaviour) => tokio::spawn(async move {
                device.run(endpoint, start_delay, &behaviour, &stats, &control).await;
                Some(*device)
            }),
            SimDevice::Mqtt(mut device) => {
                let mqtt = Arc::clone(&mqtt);
                tokio::spawn(async move {
                    device.run(endpoint, start_delay, &mqtt, &stats, &control).await;
                    None
                })
            }
        });
    }

    // The run: wait out the duration, drawing the progress line.
    watch_duration(&config, &stats, started, parent.as_ref()).await;
    let run = started.elapsed();
    let connected_at_end = stats.connected();
    let acked_in_run = stats.acked();

    // The end: no new events; the acks of what was sent, within the grace.
    control.finish();
    if std::io::stderr().is_terminal() && !config.worker {
        eprint!(
            "\r\x1b[Kfinishing: waiting up to {:?} for outstanding acks",
            config.grace
        );
    }
    let hurry = {
        let control = Arc::clone(&control);
        let grace = config.grace;
        let stop = parent.as_ref().map(|parent| Arc::clone(&parent.stop));
        tokio::spawn(async move {
            let told = async {
                match &stop {
                    Some(stop) => stop.notified().await,
                    None => shutdown_signal().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                () = told => {}
            }
            control.abort();
        })
    };
    let mut finished = Vec::with_capacity(devices.len());
    for device in devices {
        if let Some(device) = device.await.context("a device task panicked")? {
            finished.push(device);
        }
    }
    hurry.abort();
    clear_progress_line(&config);

    let events_unacked = finished.iter().map(|device| device.unacked() as u64).sum();
    let verdict = match &config.verify_redis {
        Some(target) => {
            let mut tally = Tally::new(finished.iter_mut().filter_map(Expectation::of));
            Some(match read_events(target, &mut tally).await {
                Ok(()) => Ok(tally.verdict()),
                Err(err) => Err(err.to_string()),
            })
        }
        None => None,
    };

    if config.worker {
        let report = WorkerReport {
            started_unix_us,
            devices: config.devices,
            run,
            connected_at_end,
            acked_in_run,
            events_unacked,
            stats: stats.snapshot(),
            histograms: WireHistograms::encode(&stats.histograms())?,
            verification: verdict,
        };
        send_to_parent(&WorkerMessage::Report(Box::new(report)));
        return Ok(ExitCode::SUCCESS);
    }

    let facts = RunFacts {
        scenario: config.scenario.name(),
        protocol: protocol_name(config.protocol),
        target: config.targets_text(),
        devices: config.devices,
        procs: 1,
        run,
        connected_at_end,
        acked_in_run,
        events_unacked,
    };
    let mut summary = Summary::new(facts, stats.snapshot());
    summary.verification = verdict.map(|verdict| match verdict {
        Ok(verdict) => Verification::checked(&verdict),
        Err(error) => Verification::failed(error),
    });
    Ok(print_summary(&config, &summary))
}

/// `cwp` or `mqtt`, for the summary.
pub(crate) fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Cwp => "cwp",
        Protocol::Mqtt => "mqtt",
    }
}

/// Prints the summary; the exit status it calls for.
pub(crate) fn print_summary(config: &Config, summary: &Summary) -> ExitCode {
    if config.json {
        println!("{}", summary.to_json());
    } else {
        println!("{summary}");
    }
    if summary.devices_connected == 0 {
        ExitCode::from(EXIT_NOTHING_CONNECTED)
    } else if summary.verification.as_ref().is_some_and(|v| !v.passed()) {
        ExitCode::from(EXIT_VERIFY_FAILED)
    } else {
        ExitCode::SUCCESS
    }
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
/// upload), every device has connected (a storm that ends then), or it is
/// told to stop; redraws the progress line on stderr when it is a
/// terminal, or reports progress to the parent.
async fn watch_duration(config: &Config, stats: &Stats, started: Instant, parent: Option<&ParentLink>) {
    let end = started + config.duration;
    let live = std::io::stderr().is_terminal() || parent.is_some();
    let mut ticks = tokio::time::interval_at(started + PROGRESS_INTERVAL, PROGRESS_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut before = Sample::default();
    let mut before_at = started;
    let stop = told_to_stop(parent);
    let uploaded = async {
        match config.scenario {
            Scenario::Upload => stats.uploads_completed_at_least(config.devices).await,
            // Every device holds a verified file: the rollout reached them all.
            Scenario::Files => {
                while stats.files_verified() < config.devices {
                    tokio::time::sleep(STORM_POLL).await;
                }
            }
            _ => std::future::pending().await,
        }
    };
    let stormed = async {
        if config.scenario != Scenario::Storm || config.storm_then == StormThen::Hold {
            return std::future::pending().await;
        }
        while stats.devices_connected() < config.devices {
            tokio::time::sleep(STORM_POLL).await;
        }
    };
    tokio::pin!(stop, uploaded, stormed);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(end) => return,
            () = &mut stop => return,
            () = &mut uploaded => return,
            () = &mut stormed => return,
            now = ticks.tick(), if live => {
                let sample = Sample::of(stats);
                if parent.is_some() {
                    send_to_parent(&WorkerMessage::Progress(sample));
                } else {
                    let line = progress_line(now - started, config.devices, sample, before, now - before_at);
                    eprint!("\r{line}\x1b[K");
                    let _ = std::io::stderr().flush();
                }
                (before, before_at) = (sample, now);
            }
        }
    }
}

fn clear_progress_line(config: &Config) {
    if std::io::stderr().is_terminal() && !config.worker {
        eprint!("\r\x1b[K");
    }
}
