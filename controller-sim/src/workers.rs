//! `--procs N`: the parent re-executes this binary N times as workers,
//! each with a disjoint range of serials and an even share of the devices,
//! the rates and the source addresses, then merges what they measured.
//!
//! The conversation, one line at a time: a worker prepares its devices and
//! prints `"ready"` on its stdout; once all are ready the parent writes
//! `go` to every worker's stdin, so that they start together (a storm is
//! one storm); workers print their counters every second (the parent draws
//! one progress line) and their whole report at the end. On Ctrl-C or
//! SIGTERM the parent writes `stop` (twice: abort). Workers run in their
//! own process group (a terminal's Ctrl-C reaches only the parent) and die
//! with it (`PR_SET_PDEATHSIG`, and end of stdin).

use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use crate::cli::Config;
use crate::merge::{WorkerMessage, WorkerReport, merge};
use crate::report::{RunFacts, Sample, Summary, Verification, progress_line};
use crate::{print_summary, protocol_name, shutdown_signal};

/// How long workers may take to prepare their devices.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// One worker's part of the run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Share {
    /// Its devices.
    pub(crate) devices: u64,
    /// The number of its first serial.
    pub(crate) first_serial: u64,
    /// The fleet-wide index of its first device.
    pub(crate) offset: u64,
    /// Its share of --rate, --connect-rate and --churn.
    pub(crate) rate: f64,
    pub(crate) connect_rate: f64,
    pub(crate) churn: f64,
    /// Its source addresses: every `procs`-th one when there are enough
    /// for each worker to have its own, else all of them.
    pub(crate) sources: Vec<IpAddr>,
}

/// Splits the run between `config.procs` workers: devices as evenly as
/// possible, rates in proportion.
pub(crate) fn shares(config: &Config) -> Vec<Share> {
    let procs = config.procs.max(1) as u64;
    let (base, extra) = (config.devices / procs, config.devices % procs);
    let mut offset = 0;
    (0..procs)
        .map(|index| {
            let devices = base + u64::from(index < extra);
            let fraction = devices as f64 / config.devices.max(1) as f64;
            let sources = if config.sources.len() as u64 >= procs {
                config
                    .sources
                    .iter()
                    .skip(usize::try_from(index).unwrap_or(0))
                    .step_by(usize::try_from(procs).unwrap_or(1))
                    .copied()
                    .collect()
            } else {
                config.sources.clone()
            };
            let share = Share {
                devices,
                first_serial: config.serials.first() + offset,
                offset: config.device_offset + offset,
                rate: config.rate * fraction,
                connect_rate: config.connect_rate * fraction,
                churn: config.churn * fraction,
                sources,
            };
            offset += devices;
            share
        })
        .collect()
}

impl Share {
    /// The options that make a copy of the parent's command line this
    /// worker's (the last of a repeated option wins).
    fn args(&self, config: &Config) -> Vec<String> {
        let mut args = vec![
            "--worker".to_owned(),
            "--procs=1".to_owned(),
            format!("--devices={}", self.devices),
            format!("--first-serial={}", self.first_serial),
            format!("--serial-prefix={}", config.serials.prefix()),
            format!("--serial-width={}", config.serials.width()),
            format!("--device-offset={}", self.offset),
            format!("--rate={}", self.rate),
            format!("--connect-rate={}", self.connect_rate),
            format!("--churn={}", self.churn),
        ];
        if !self.sources.is_empty() {
            let sources: Vec<String> = self.sources.iter().map(ToString::to_string).collect();
            args.push(format!("--source-ips={}", sources.join(",")));
        }
        args
    }
}

/// A running worker.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Worker {
    /// Writes one line to the worker; a worker that has gone is ignored
    /// (its end is noticed on its stdout).
    async fn tell(&mut self, line: &str) {
        if let Some(stdin) = &mut self.stdin {
            let sent = async {
                stdin.write_all(line.as_bytes()).await?;
                stdin.write_all(b"\n").await?;
                stdin.flush().await
            };
            if sent.await.is_err() {
                self.stdin = None;
            }
        }
    }
}

/// What the parent hears from worker `index`.
enum Heard {
    Message(usize, WorkerMessage),
    /// Its stdout closed (it ended).
    Ended(usize),
}

/// Runs the workers and prints the merged summary.
pub(crate) async fn run_parent(config: Config) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating controller-sim itself")?;
    let parent_args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let shares = shares(&config);
    let (heard_tx, mut heard) = mpsc::channel(4 * shares.len() + 16);
    let mut workers = Vec::with_capacity(shares.len());
    for (index, share) in shares.iter().enumerate() {
        let mut command = Command::new(&exe);
        command
            .args(&parent_args)
            .args(share.args(&config))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting worker {}", index + 1))?;
        let stdout = child.stdout.take().context("the worker's stdout is piped")?;
        let stdin = child.stdin.take();
        let heard_tx = heard_tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str(&line) {
                    Ok(message) => {
                        if heard_tx.send(Heard::Message(index, message)).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => tracing::warn!(worker = index + 1, %error, line, "unreadable line from a worker"),
                }
            }
            let _ = heard_tx.send(Heard::Ended(index)).await;
        });
        workers.push(Worker { child, stdin });
    }
    drop(heard_tx);

    // Everyone ready, then go together.
    let mut ready = 0;
    let deadline = Instant::now() + READY_TIMEOUT;
    while ready < workers.len() {
        match tokio::time::timeout_at(deadline, heard.recv()).await {
            Ok(Some(Heard::Message(_, WorkerMessage::Ready))) => ready += 1,
            Ok(Some(Heard::Message(..))) => {}
            Ok(Some(Heard::Ended(index))) => {
                let status = workers[index].child.wait().await.ok();
                bail!("worker {} ended before it was ready ({status:?})", index + 1);
            }
            Ok(None) => bail!("every worker ended before the run"),
            Err(_) => bail!("workers not ready after {READY_TIMEOUT:?}"),
        }
    }
    for worker in &mut workers {
        worker.tell("go").await;
    }

    let started = Instant::now();
    let live = std::io::stderr().is_terminal();
    let mut samples = vec![Sample::default(); workers.len()];
    let mut reports: Vec<Option<WorkerReport>> = vec![None; workers.len()];
    let mut ticks = tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut before, mut before_at) = (Sample::default(), started);
    let mut stops = 0;
    let signal = shutdown_signal();
    tokio::pin!(signal);
    while reports.iter().any(Option::is_none) {
        tokio::select! {
            heard = heard.recv() => match heard {
                Some(Heard::Message(index, WorkerMessage::Progress(sample))) => samples[index] = sample,
                Some(Heard::Message(index, WorkerMessage::Report(report))) => reports[index] = Some(*report),
                Some(Heard::Message(_, WorkerMessage::Ready)) => {}
                Some(Heard::Ended(index)) => {
                    if reports[index].is_none() {
                        let status = workers[index].child.wait().await.ok();
                        bail!("worker {} ended without a report ({status:?})", index + 1);
                    }
                }
                None => break,
            },
            () = &mut signal => {
                stops += 1;
                for worker in &mut workers {
                    worker.tell("stop").await;
                }
                if stops == 1 && live {
                    eprint!("\r\x1b[Kfinishing: waiting for the workers (Ctrl-C again: at once)");
                }
                // Listen for the next one.
                signal.set(shutdown_signal());
            }
            now = ticks.tick(), if live && stops == 0 => {
                let sample = samples.iter().fold(Sample::default(), |sum, s| sum.add(*s));
                let line = progress_line(now - started, config.devices, sample, before, now - before_at);
                eprint!("\r{line}  [{} processes]\x1b[K", workers.len());
                let _ = std::io::stderr().flush();
                (before, before_at) = (sample, now);
            }
        }
    }
    if live {
        eprint!("\r\x1b[K");
    }
    for worker in &mut workers {
        worker.stdin = None;
        let _ = worker.child.wait().await;
    }

    let reports: Vec<WorkerReport> = reports.into_iter().flatten().collect();
    anyhow::ensure!(reports.len() == workers.len(), "a worker sent no report");
    let merged = merge(&reports)?;
    let facts = RunFacts {
        scenario: config.scenario.name(),
        protocol: protocol_name(config.protocol),
        target: config.targets_text(),
        devices: config.devices,
        procs: workers.len(),
        run: merged.run,
        connected_at_end: merged.connected_at_end,
        acked_in_run: merged.acked_in_run,
        events_unacked: merged.events_unacked,
    };
    let mut summary = Summary::new(facts, merged.stats);
    summary.verification = merged.verification.map(|verdict| match verdict {
        Ok(verdict) => Verification::checked(&verdict),
        Err(error) => Verification::failed(error),
    });
    Ok(print_summary(&config, &summary))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::Args;

    fn config(line: &str) -> Config {
        let key = "00".repeat(32);
        let mut args = vec!["controller-sim", "--master-key", &key];
        args.extend(line.split_whitespace());
        Config::from_args(Args::try_parse_from(args).unwrap()).unwrap()
    }

    #[test]
    fn shares_are_disjoint_and_cover_every_device() {
        let config = config(
            "--devices 100003 --procs 7 --rate 7000 --connect-rate 700 --first-serial 11 --source-ips 127.0.0.2-127.0.0.15",
        );
        let shares = shares(&config);
        assert_eq!(shares.len(), 7);
        let devices: Vec<u64> = shares.iter().map(|s| s.devices).collect();
        assert_eq!(devices, [14_287, 14_286, 14_286, 14_286, 14_286, 14_286, 14_286]);
        let mut next = 11;
        let mut offset = 0;
        for share in &shares {
            assert_eq!(share.first_serial, next, "serial ranges follow each other");
            assert_eq!(share.offset, offset);
            next += share.devices;
            offset += share.devices;
            assert_eq!(share.sources.len(), 2, "14 addresses, 2 each");
        }
        let rate: f64 = shares.iter().map(|s| s.rate).sum();
        let connect_rate: f64 = shares.iter().map(|s| s.connect_rate).sum();
        assert!((rate - 7000.0).abs() < 1e-6 && (connect_rate - 700.0).abs() < 1e-6);
        // Each address is used by exactly one worker.
        let mut sources: Vec<IpAddr> = shares.iter().flat_map(|s| s.sources.clone()).collect();
        sources.sort_unstable();
        sources.dedup();
        assert_eq!(sources.len(), 14);
        // Fewer addresses than workers: all share them.
        let few = super::shares(&self::config("--devices 10 --procs 3 --source-ips 127.0.0.2"));
        assert!(few.iter().all(|s| s.sources.len() == 1));
    }

    #[test]
    fn a_worker_command_line_is_the_parent_s_with_its_share_last() {
        let parent = config("--devices 30 --procs 3 --rate 300 --serial-prefix P- --scenario mixed");
        let share = &shares(&parent)[2];
        let mut line: Vec<String> = [
            "controller-sim",
            "--master-key",
            &"00".repeat(32),
            "--devices",
            "30",
            "--procs",
            "3",
            "--rate",
            "300",
            "--serial-prefix",
            "P-",
            "--scenario",
            "mixed",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        line.extend(share.args(&parent));
        let worker = Config::from_args(Args::try_parse_from(line).unwrap()).unwrap();
        assert!(worker.worker);
        assert_eq!((worker.procs, worker.devices, worker.device_offset), (1, 10, 20));
        assert_eq!(worker.serials.name(0), "P-000021");
        assert!((worker.rate - 100.0).abs() < 1e-9);
    }
}
