//! Honest devices under a slowloris attack (issue 8): the ack latency of
//! 100 `controller-sim` devices on one driver, first alone, then while
//! 10,000 connections that never send a byte are held open against the
//! same driver (each opened again as soon as the driver closes it at its
//! handshake deadline or evicts it). The driver runs with its defaults
//! (`DRIVER_HANDSHAKE_TIMEOUT`, `DRIVER_MAX_HANDSHAKES`). The target: p99
//! under attack within 2× the unloaded p99.
//!
//! A p99 of 1–3 ms over a 20 s phase moves by tenths of a millisecond from
//! run to run, so the phases alternate over [`ROUNDS`] rounds and the
//! ratio is of the medians. The attacking thread runs at the lowest CPU
//! priority (nice 19): a real attacker's CPU is on another machine, and
//! this one's should not be what the honest devices wait for; the honest
//! devices' simulator keeps the normal priority.
//!
//! Each round also aims the same attack at `bench-stand-in`, a minimal
//! server on the same machine that only accepts, waits out the deadline,
//! answers and closes, while the honest devices keep talking to the
//! driver: what the attack costs them on this machine when the driver
//! is not its target. The attacker's sockets, the kernel's work on them
//! and whatever serves them share the 2 cores with the honest devices.

use std::fmt::Write as _;
use std::io::{BufRead as _, ErrorKind, Read as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use drover_testkit::binaries::binary;
use drover_testkit::components::{BridgeProcess, DriverOptions, DriverProcess, Logs};
use drover_testkit::net::free_port;
use drover_testkit::redis::RedisServer;

use super::BenchContext;
use super::events::MASTER_KEY_HEX;
use super::probe::{SimSummary, run_sim};
use super::report::{Table, thousands};

/// The limit: p99 under attack over p99 unloaded.
const TARGET_RATIO: f64 = 2.0;
/// Events per second, all honest devices together.
const RATE: u64 = 1_000;
/// Rounds of the three phases (unloaded, attack on the driver, attack on
/// the stand-in).
const ROUNDS: usize = 3;

/// Where the attack was aimed during a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// No attack.
    None,
    /// The driver the honest devices use.
    OnDriver,
    /// `bench-stand-in`, beside it.
    OnStandIn,
}

/// One measured phase.
#[derive(Debug, Clone)]
pub struct HostilePhase {
    /// What it was.
    pub label: String,
    /// Where the attack was aimed.
    pub attack: Attack,
    /// Attack connections open when the phase ended.
    pub attackers_open: u64,
    /// What the simulator measured.
    pub summary: SimSummary,
}

/// The result.
#[derive(Debug, Clone)]
pub struct HostileResult {
    /// Honest devices.
    pub devices: u64,
    /// Attack connections held.
    pub attackers: usize,
    /// Unloaded, attack on the driver, attack on the stand-in, [`ROUNDS`]
    /// times.
    pub phases: Vec<HostilePhase>,
    /// Attack connections opened in all (the driver closed all but the
    /// last `attackers`).
    pub attack_connections: u64,
    /// The driver's `handshakes_total` by result after the attack.
    pub handshakes: Vec<(String, f64)>,
    /// The simulator's command line.
    pub command: String,
}

/// Connections that never send, held open: a thread opens `count`, then
/// sweeps them every half second and opens a new one for each the driver
/// has closed.
struct Slowloris {
    stop: Arc<AtomicBool>,
    open: Arc<AtomicU64>,
    opened: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Slowloris {
    fn start(target: SocketAddr, count: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicU64::new(0));
        let opened = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, open, opened) = (stop.clone(), open.clone(), opened.clone());
            std::thread::spawn(move || {
                // Best effort: at the normal priority the figures are
                // only more pessimistic.
                let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19);
                let connect = || {
                    let stream = TcpStream::connect(target).ok()?;
                    stream.set_nonblocking(true).ok()?;
                    opened.fetch_add(1, Ordering::Relaxed);
                    Some(stream)
                };
                let mut streams: Vec<Option<TcpStream>> = Vec::with_capacity(count);
                let mut scratch = [0_u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    streams.resize_with(count, || None);
                    for slot in &mut streams {
                        let alive = match slot {
                            Some(stream) => loop {
                                match stream.read(&mut scratch) {
                                    // The driver's ERROR: read on to its close.
                                    Ok(n) if n > 0 => {}
                                    Err(err) if err.kind() == ErrorKind::WouldBlock => break true,
                                    _ => break false,
                                }
                            },
                            None => false,
                        };
                        if !alive {
                            *slot = connect();
                        }
                    }
                    open.store(streams.iter().flatten().count() as u64, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(500));
                }
            })
        };
        Self {
            stop,
            open,
            opened,
            thread: Some(thread),
        }
    }

    fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }
}

impl Drop for Slowloris {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The control's target, `bench-stand-in`, in a process of its own (one
/// process holding both ends of 10,000 connections would pass the
/// open-file limit). Stops when dropped: its standard input closes.
#[derive(Debug)]
pub struct StandIn {
    addr: SocketAddr,
    child: std::process::Child,
}

impl StandIn {
    /// Starts `bench-stand-in` holding each connection for `deadline`.
    pub fn start(deadline: Duration) -> anyhow::Result<Self> {
        let mut child = std::process::Command::new(binary("bench-stand-in")?)
            .arg("--deadline")
            .arg(format!("{}ms", deadline.as_millis()))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting bench-stand-in")?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("bench-stand-in's output")?;
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading bench-stand-in's address")?;
        let addr = line
            .trim()
            .parse()
            .with_context(|| format!("bench-stand-in printed {line:?}, not an address"))?;
        Ok(Self { addr, child })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes its standard input and waits for it to exit.
    pub fn stop(mut self) -> std::io::Result<std::process::ExitStatus> {
        self.close_and_wait()
    }

    fn close_and_wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        drop(self.child.stdin.take());
        self.child.wait()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        // After stop() the child is already reaped: wait() returns at once.
        let _ = self.close_and_wait();
    }
}

/// Opens the attack on `target` and waits until most of it is open.
fn open_attack(target: SocketAddr, attackers: usize) -> anyhow::Result<Slowloris> {
    let attack = Slowloris::start(target, attackers);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while attack.open() < attackers as u64 * 9 / 10 {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "only {} of {attackers} attack connections open after 60 s",
            attack.open()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(attack)
}

fn sim_args(driver: SocketAddr, devices: u64, seconds: u64) -> Vec<String> {
    [
        "--target".to_owned(),
        driver.to_string(),
        "--devices".to_owned(),
        devices.to_string(),
        "--rate".to_owned(),
        RATE.to_string(),
        "--event-size".to_owned(),
        "64".to_owned(),
        "--duration".to_owned(),
        format!("{seconds}s"),
        "--burst-interval".to_owned(),
        "50ms".to_owned(),
        "--source-ips".to_owned(),
        "127.0.0.2-127.0.0.9".to_owned(),
        "--serial-prefix".to_owned(),
        "HONEST-".to_owned(),
    ]
    .into()
}

/// Runs the benchmark: `devices` honest devices, `attackers` slow
/// connections.
pub fn run(ctx: &BenchContext, devices: u64, attackers: usize) -> anyhow::Result<HostileResult> {
    let sim = binary("controller-sim")?;
    let redis = RedisServer::start_in(&ctx.work_dir.join("hostile-redis"), free_port()?)?;
    let bridge = BridgeProcess::start(&redis.url(), &Logs::File(ctx.log_dir.join("hostile-bridge.log")), &[])?;
    let driver = DriverProcess::start(&DriverOptions {
        bridge_url: bridge.url(),
        redis_url: redis.url(),
        master_key_hex: MASTER_KEY_HEX.to_owned(),
        proxy_protocol: false,
        extra_env: vec![("RUST_LOG".to_owned(), "warn".to_owned())],
        logs: Logs::File(ctx.log_dir.join("hostile-driver.log")),
    })?;
    let seconds = ctx.phase_seconds();
    let args = sim_args(driver.addr(), devices, seconds);

    // The driver's default handshake deadline (CWP/1 §2).
    let stand_in = StandIn::start(Duration::from_secs(10))?;
    let mut phases = Vec::with_capacity(3 * ROUNDS);
    let mut attack_connections = 0;
    for round in 1..=ROUNDS {
        phases.push(HostilePhase {
            label: format!("unloaded, round {round}"),
            attack: Attack::None,
            attackers_open: 0,
            summary: run_sim(&sim, MASTER_KEY_HEX, &args)?,
        });
        for (attack_kind, target, label) in [
            (Attack::OnDriver, driver.addr(), "attack on the driver"),
            (Attack::OnStandIn, stand_in.addr(), "same attack on the stand-in"),
        ] {
            let attack = open_attack(target, attackers)?;
            let summary = run_sim(&sim, MASTER_KEY_HEX, &args)?;
            phases.push(HostilePhase {
                label: format!("{label}, round {round}"),
                attack: attack_kind,
                attackers_open: attack.open(),
                summary,
            });
            if attack_kind == Attack::OnDriver {
                attack_connections += attack.opened.load(Ordering::Relaxed);
            }
            drop(attack);
            // The target closes the attack's connections as they hang up.
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    stand_in.stop().context("stopping bench-stand-in")?;

    let metrics = driver.metrics()?;
    let handshakes = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("drover_driver_handshakes_total{result=\""))
        .filter_map(|rest| {
            let (result, value) = rest.split_once("\"} ")?;
            Some((result.to_owned(), value.parse().ok()?))
        })
        .collect();
    let command = format!(
        "controller-sim {} ({ROUNDS} rounds: alone, beside the attack on the driver, beside the attack on the stand-in)",
        args.join(" ")
    );
    Ok(HostileResult {
        devices,
        attackers,
        phases,
        attack_connections,
        handshakes,
        command,
    })
}

impl HostileResult {
    /// The median p99 with the attack on the driver over the median p99
    /// unloaded: the target's figure.
    pub fn ratio(&self) -> f64 {
        self.ratio_of(Attack::OnDriver)
    }

    /// The same with the attack on the stand-in: what the attack costs on
    /// this machine without the driver as its target.
    pub fn control_ratio(&self) -> f64 {
        self.ratio_of(Attack::OnStandIn)
    }

    fn ratio_of(&self, attack: Attack) -> f64 {
        let median_p99 = |attack: Attack| {
            let mut p99s: Vec<u64> = self
                .phases
                .iter()
                .filter(|phase| phase.attack == attack)
                .map(|phase| phase.summary.ack_latency_us.p99)
                .collect();
            p99s.sort_unstable();
            p99s.get(p99s.len() / 2).copied()
        };
        match (median_p99(Attack::None), median_p99(attack)) {
            (Some(unloaded), Some(attacked)) => attacked as f64 / unloaded.max(1) as f64,
            _ => f64::NAN,
        }
    }

    /// The section for docs/BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let mut text = String::new();
        let ratio = self.ratio();
        let _ = writeln!(
            text,
            "**{} honest devices** beside **{} slow connections**: median ack p99 with the attack on their driver **{ratio:.2}×** the median unloaded p99, over {ROUNDS} rounds (target ≤ {TARGET_RATIO}×: {}). The same attack aimed at a minimal stand-in server on the same machine instead: **{:.2}×**.\n",
            thousands(self.devices as f64),
            thousands(self.attackers as f64),
            if ratio <= TARGET_RATIO { "met" } else { "**not met**" },
            self.control_ratio()
        );
        let mut table = Table::new(&[
            "phase",
            "slow connections open",
            "acknowledged /s",
            "ack p50",
            "ack p99",
            "ack p99.9",
            "errors",
        ]);
        for phase in &self.phases {
            let s = &phase.summary;
            let mut row = vec![phase.label.clone(), thousands(phase.attackers_open as f64)];
            row.extend(s.ack_cells());
            row.push(s.errors_cell());
            table.row(row);
        }
        text.push_str(&table.render());
        let handshakes: Vec<String> = self
            .handshakes
            .iter()
            .map(|(result, n)| format!("{result} {}", thousands(*n)))
            .collect();
        let _ = writeln!(
            text,
            "\nThe attacks on the driver opened {} connections in all (each reopened once the driver closed it); the driver's handshakes by result: {}. The stand-in (`bench-stand-in`) accepts, waits 10 s (the driver's handshake deadline), writes 8 bytes and closes, on a single-threaded runtime.\n\nDevices: `{}`",
            thousands(self.attack_connections as f64),
            handshakes.join(", "),
            self.command
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(attack: Attack, p99_us: u64) -> HostilePhase {
        let mut summary = SimSummary::default();
        summary.ack_latency_us.p99 = p99_us;
        HostilePhase {
            label: String::new(),
            attack,
            attackers_open: if attack == Attack::None { 0 } else { 10_000 },
            summary,
        }
    }

    fn result(phases: Vec<HostilePhase>) -> HostileResult {
        HostileResult {
            devices: 100,
            attackers: 10_000,
            phases,
            attack_connections: 0,
            handshakes: Vec::new(),
            command: String::new(),
        }
    }

    #[test]
    fn the_ratio_is_of_the_median_p99s_so_one_noisy_round_does_not_decide_it() {
        let rounds = result(vec![
            phase(Attack::None, 1_400),
            phase(Attack::OnDriver, 5_700),
            phase(Attack::OnStandIn, 3_000),
            phase(Attack::None, 40_000),
            phase(Attack::OnDriver, 2_300),
            phase(Attack::OnStandIn, 2_600),
            phase(Attack::None, 1_500),
            phase(Attack::OnDriver, 2_200),
            phase(Attack::OnStandIn, 9_000),
        ]);
        assert!((rounds.ratio() - 2_300.0 / 1_500.0).abs() < 1e-9);
        assert!((rounds.control_ratio() - 3_000.0 / 1_500.0).abs() < 1e-9);
    }

    #[test]
    fn without_both_kinds_of_phase_there_is_no_ratio() {
        let unloaded_only = result(vec![phase(Attack::None, 1_400)]);
        assert!(unloaded_only.ratio().is_nan());
        assert!(unloaded_only.control_ratio().is_nan());
    }
}
