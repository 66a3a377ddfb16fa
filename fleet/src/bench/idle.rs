//! Idle connections: the most authenticated devices the fleet holds at
//! once with heartbeats, and what each costs.
//!
//! One run, in order:
//!
//! 1. Drover: the fleet sized for the devices (drivers and HAProxy
//!    processes within 20,000 open files each), then `controller-sim
//!    --scenario idle` over several worker processes and source addresses
//!    connects every device through HAProxy at a steady rate; once the
//!    drivers report every session, the devices are held for more than a
//!    heartbeat period (every session has exchanged `PING`/`PONG`), then
//!    measured: driver and HAProxy resident memory over their idle
//!    baseline, per device.
//! 2. The limit: the kernel's own memory per TCP socket over the same
//!    span (slab, which holds the socket structures, files and epoll
//!    entries, plus socket buffer pages), from `/proc/meminfo` and
//!    `/proc/net/sockstat`: what any server pays per connection before its
//!    first byte of user-space state.
//! 3. The peer: as many Mosquitto brokers as drivers, the same number of
//!    idle devices as MQTT 3.1.1 clients with keep-alives
//!    (`controller-sim --protocol mqtt`), held as long, measured the same
//!    way.
//! 4. A second pattern, the one a new user meets first: [`BURST_DEVICES`]
//!    devices on one driver, connected at [`BURST_RATE`] handshakes/s,
//!    measured 2 s and 30 s after the last one (transients of the
//!    handshakes still held, then gone), and Mosquitto with as many
//!    clients on one broker, measured the same way.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use drover_testkit::binaries::binary;
use drover_testkit::mosquitto::Mosquitto;
use drover_testkit::process::rss_kib;

use super::BenchContext;
use super::events::MASTER_KEY_HEX;
use super::probe::{KernelSockets, SimProcess, SimSummary, established_on, tree_rss_kib};
use super::report::{Table, thousands};
use super::rig::{DEVICES_PER_DRIVER, Rig};

/// Devices per simulator worker process (each within 20,000 open files).
const DEVICES_PER_SIM_PROCESS: u64 = 15_000;
/// Handshakes per second while the devices connect (the storm benchmark
/// measures how fast they can). With 100,000 devices the 2 cores also run
/// 7 drivers, 12 HAProxy and 7 simulator processes: at 5,000/s the
/// handshakes outrun the CPU, time out and are retried, and the ramp
/// collapses; 1,500/s connects 100,000 in about 70 s.
const CONNECT_RATE: u64 = 1_500;
/// The simulator's source addresses: 40 of them, ~28,000 ports each.
const SOURCE_IPS: &str = "127.0.0.2-127.0.0.41";
/// No progress for this long while connecting: give up.
const STALL: Duration = Duration::from_secs(90);
/// The burst pattern: devices on one driver...
pub const BURST_DEVICES: u64 = 10_000;
/// ...connected at this many handshakes per second...
pub const BURST_RATE: u64 = 500;
/// ...measured this long after the last one (and 2 s after it).
pub const BURST_SETTLE: Duration = Duration::from_secs(30);

/// One side's memory: resident sizes before and after the devices.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// RSS of each process before the devices connected, KiB.
    pub before: Vec<u64>,
    /// RSS of each process while they were held, KiB.
    pub after: Vec<u64>,
}

impl Memory {
    /// Resident memory added, KiB, per `count`.
    pub fn kib_per(&self, count: u64) -> f64 {
        let added = self.after.iter().sum::<u64>() as f64 - self.before.iter().sum::<u64>() as f64;
        added / count.max(1) as f64
    }
}

/// The measurement of one server (Drover or the peer).
#[derive(Debug, Clone)]
pub struct Held {
    /// Connections the server held when measured.
    pub held: u64,
    /// From the simulator's start to the last connection.
    pub connect_time: Duration,
    /// The server's processes.
    pub memory: Memory,
    /// The kernel, over the same span.
    pub kernel_before: KernelSockets,
    /// The kernel while the connections were held.
    pub kernel_after: KernelSockets,
    /// The simulator's resident memory (all its processes) while holding.
    pub sim_rss_kib: u64,
    /// What the simulator measured.
    pub sim: SimSummary,
    /// The simulator's command line.
    pub command: String,
}

/// The whole result.
#[derive(Debug, Clone)]
pub struct IdleResult {
    /// Devices simulated.
    pub devices: u64,
    /// Drivers, HAProxy processes, simulator processes.
    pub drivers: usize,
    /// HAProxy processes.
    pub haproxy_processes: usize,
    /// Simulator worker processes.
    pub sim_procs: u64,
    /// Drover.
    pub drover: Held,
    /// Sessions per driver when measured.
    pub sessions_per_driver: Vec<f64>,
    /// HAProxy's processes, measured with the drivers.
    pub haproxy: Memory,
    /// Mosquitto brokers.
    pub brokers: usize,
    /// Mosquitto, if it could be measured (why not, otherwise).
    pub mosquitto: Result<Held, String>,
    /// `mosquitto -h`'s version line.
    pub mosquitto_version: String,
    /// How long the devices were held before measuring.
    pub hold: Duration,
    /// The burst pattern, if it could be measured (why not, otherwise);
    /// `None` when this run was not asked to (a run of several device
    /// counts measures it once).
    pub burst: Option<Result<Burst, String>>,
}

/// The burst pattern: per connection, bytes added 2 s and
/// [`BURST_SETTLE`] after the last handshake.
#[derive(Debug, Clone)]
pub struct Burst {
    /// The driver: (2 s after, settled).
    pub driver: (f64, f64),
    /// Mosquitto: (2 s after, settled).
    pub mosquitto: Result<(f64, f64), String>,
    /// The simulator's command line.
    pub command: String,
}

fn sim_args(target: &str, devices: u64, procs: u64, prefix: &str, connect_rate: u64) -> Vec<String> {
    [
        "--target",
        target,
        "--scenario",
        "idle",
        "--devices",
        &devices.to_string(),
        "--procs",
        &procs.to_string(),
        "--connect-rate",
        &connect_rate.to_string(),
        "--duration",
        "3600s",
        "--grace",
        "5s",
        "--source-ips",
        SOURCE_IPS,
        "--serial-prefix",
        prefix,
        "--json",
    ]
    .iter()
    .map(ToString::to_string)
    .collect()
}

fn command_line(args: &[String]) -> String {
    format!("CWP_MASTER_KEY=… controller-sim {}", args.join(" "))
}

/// Runs the benchmark with `devices` devices, and the burst pattern if
/// `with_burst`.
pub fn run(ctx: &BenchContext, devices: u64, with_burst: bool) -> anyhow::Result<IdleResult> {
    let sim = binary("controller-sim")?;
    let (drivers, haproxy_processes) = Rig::size_for(devices);
    let procs = devices.div_ceil(DEVICES_PER_SIM_PROCESS).max(1);
    let hold = if ctx.quick {
        Duration::from_secs(5)
    } else {
        // Longer than the 30 s heartbeat: every session has been pinged.
        Duration::from_secs(45)
    };

    // Drover.
    let mut rig = Rig::start(ctx, "idle", drivers, haproxy_processes)?;
    std::thread::sleep(Duration::from_secs(3));
    let kernel_before = KernelSockets::now()?;
    let mut memory = Memory {
        before: rig.driver_rss(),
        ..Memory::default()
    };
    let mut haproxy = Memory {
        before: rig.haproxy_rss(),
        ..Memory::default()
    };
    let args = sim_args(&rig.target(), devices, procs, "IDLE-", CONNECT_RATE);
    let mut devices_sim = SimProcess::start(&sim, MASTER_KEY_HEX, &args, ctx.work_dir.join("idle-sim.json"))?;
    let connect_time = rig
        .wait_for_sessions(devices, &mut devices_sim, STALL)
        .context("connecting the idle devices")?;
    eprintln!("idle: {devices} sessions in {connect_time:?}; holding them {hold:?}");
    std::thread::sleep(hold);
    let held = rig.sessions() as u64;
    let sessions_per_driver = rig.sessions_per_driver();
    memory.after = rig.driver_rss();
    haproxy.after = rig.haproxy_rss();
    let kernel_after = KernelSockets::now()?;
    let sim_rss_kib = tree_rss_kib(devices_sim.pid());
    let summary: SimSummary = devices_sim.stop(Duration::from_secs(120))?;
    drop(rig);
    let drover = Held {
        held,
        connect_time,
        memory,
        kernel_before,
        kernel_after,
        sim_rss_kib,
        sim: summary,
        command: command_line(&args),
    };

    // The peer, with as many brokers as there were drivers.
    let mosquitto = peer(ctx, &sim, devices, drivers, procs, hold).map_err(|err| format!("{err:#}"));
    let burst = with_burst.then(|| burst(ctx, &sim).map_err(|err| format!("{err:#}")));
    Ok(IdleResult {
        devices,
        drivers,
        haproxy_processes,
        sim_procs: procs,
        drover,
        sessions_per_driver,
        haproxy,
        brokers: drivers,
        mosquitto,
        mosquitto_version: Mosquitto::version(),
        hold,
        burst,
    })
}

/// Bytes added per connection: `after` over `before`, KiB, over `count`.
fn bytes_per(before: u64, after: u64, count: u64) -> f64 {
    (after as f64 - before as f64) * 1024.0 / count.max(1) as f64
}

/// The burst pattern against one driver, then one Mosquitto broker.
fn burst(ctx: &BenchContext, sim: &std::path::Path) -> anyhow::Result<Burst> {
    let settle = if ctx.quick {
        Duration::from_secs(5)
    } else {
        BURST_SETTLE
    };
    let (_, haproxy_processes) = Rig::size_for(BURST_DEVICES);
    let mut rig = Rig::start(ctx, "idle-burst", 1, haproxy_processes)?;
    std::thread::sleep(Duration::from_secs(3));
    let before = rig.driver_rss()[0];
    let args = sim_args(&rig.target(), BURST_DEVICES, 1, "BURST-", BURST_RATE);
    let mut devices = SimProcess::start(sim, MASTER_KEY_HEX, &args, ctx.work_dir.join("idle-burst.json"))?;
    rig.wait_for_sessions(BURST_DEVICES, &mut devices, STALL)
        .context("connecting the burst's devices")?;
    std::thread::sleep(Duration::from_secs(2));
    let early = rig.driver_rss()[0];
    std::thread::sleep(settle - Duration::from_secs(2));
    let settled = rig.driver_rss()[0];
    let held = rig.sessions() as u64;
    let _: SimSummary = devices.stop(Duration::from_secs(120))?;
    drop(rig);
    let driver = (bytes_per(before, early, held), bytes_per(before, settled, held));
    eprintln!(
        "idle burst: driver {:.0} B per device 2 s after, {:.0} B after {settle:?}",
        driver.0, driver.1
    );

    let mosquitto = (|| -> anyhow::Result<(f64, f64)> {
        let mosquitto = Mosquitto::start(&ctx.work_dir.join("mosquitto-burst"), 1)?;
        std::thread::sleep(Duration::from_secs(2));
        let pid = mosquitto.pids()[0];
        let before = rss_kib(pid)?;
        let mut args = sim_args(&mosquitto.targets(), BURST_DEVICES, 1, "MQTT-BURST-", BURST_RATE);
        args.extend(["--protocol", "mqtt", "--mqtt-keep-alive", "30s"].map(str::to_owned));
        let mut clients = SimProcess::start(sim, MASTER_KEY_HEX, &args, ctx.work_dir.join("idle-burst-mqtt.json"))?;
        let ports = mosquitto.ports();
        let started = std::time::Instant::now();
        while established_on(&ports)? < BURST_DEVICES {
            anyhow::ensure!(clients.is_running(), "the MQTT simulator ended early");
            anyhow::ensure!(started.elapsed() < STALL * 2, "Mosquitto did not take every client");
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(2));
        let early = rss_kib(pid)?;
        std::thread::sleep(settle - Duration::from_secs(2));
        let settled = rss_kib(pid)?;
        let held = established_on(&ports)?;
        let _: SimSummary = clients.stop(Duration::from_secs(120))?;
        Ok((bytes_per(before, early, held), bytes_per(before, settled, held)))
    })()
    .map_err(|err| format!("{err:#}"));
    Ok(Burst {
        driver,
        mosquitto,
        command: command_line(&args),
    })
}

fn peer(
    ctx: &BenchContext,
    sim: &std::path::Path,
    devices: u64,
    brokers: usize,
    procs: u64,
    hold: Duration,
) -> anyhow::Result<Held> {
    let mosquitto = Mosquitto::start(&ctx.work_dir.join("mosquitto"), brokers)?;
    std::thread::sleep(Duration::from_secs(2));
    let kernel_before = KernelSockets::now()?;
    let rss = |mosquitto: &Mosquitto| -> Vec<u64> {
        mosquitto
            .pids()
            .into_iter()
            .map(|pid| rss_kib(pid).unwrap_or(0))
            .collect()
    };
    let mut memory = Memory {
        before: rss(&mosquitto),
        ..Memory::default()
    };
    let mut args = sim_args(&mosquitto.targets(), devices, procs, "MQTT-", CONNECT_RATE);
    args.extend(["--protocol", "mqtt", "--mqtt-keep-alive", "30s"].map(str::to_owned));
    let mut clients = SimProcess::start(sim, MASTER_KEY_HEX, &args, ctx.work_dir.join("idle-mqtt.json"))?;
    let ports = mosquitto.ports();
    let started = std::time::Instant::now();
    let (mut best, mut best_at) = (0, std::time::Instant::now());
    loop {
        let held = established_on(&ports)?;
        if held >= devices {
            break;
        }
        if held > best {
            (best, best_at) = (held, std::time::Instant::now());
        }
        anyhow::ensure!(
            clients.is_running(),
            "the MQTT simulator ended with {held} of {devices} connections"
        );
        anyhow::ensure!(
            best_at.elapsed() < STALL,
            "Mosquitto stuck at {held} of {devices} connections"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let connect_time = started.elapsed();
    eprintln!("idle: {devices} MQTT clients on {brokers} Mosquitto brokers in {connect_time:?}; holding them {hold:?}");
    std::thread::sleep(hold);
    let held = established_on(&ports)?;
    memory.after = rss(&mosquitto);
    let kernel_after = KernelSockets::now()?;
    let sim_rss_kib = tree_rss_kib(clients.pid());
    let summary: SimSummary = clients.stop(Duration::from_secs(120))?;
    Ok(Held {
        held,
        connect_time,
        memory,
        kernel_before,
        kernel_after,
        sim_rss_kib,
        sim: summary,
        command: command_line(&args),
    })
}

/// `1.23 KiB`.
fn kib(value: f64) -> String {
    format!("{value:.2} KiB")
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

impl IdleResult {
    /// The section for docs/BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let d = &self.drover;
        let driver_per_device = d.memory.kib_per(d.held);
        let haproxy_per_device = self.haproxy.kib_per(d.held);
        let kernel = d.kernel_after.per_socket_kib_since(&d.kernel_before);
        let sockets = d.kernel_after.tcp_inuse.saturating_sub(d.kernel_before.tcp_inuse);
        let mut text = String::new();
        let _ = writeln!(
            text,
            "**{} authenticated devices held at once** ({} wanted) by {} drivers behind {} HAProxy processes on one port, from {} simulator processes over 40 source addresses; connected at {} handshakes/s in {:.1} s, then held {} s (heartbeat 30 s: every session pinged).\n",
            thousands(d.held as f64),
            thousands(self.devices as f64),
            self.drivers,
            self.haproxy_processes,
            self.sim_procs,
            thousands(CONNECT_RATE as f64),
            d.connect_time.as_secs_f64(),
            self.hold.as_secs()
        );
        let mut table = Table::new(&[
            "per idle connection",
            "Drover driver",
            "HAProxy",
            "Mosquitto (peer)",
            "kernel (limit)",
        ]);
        let (peer_cell, peer_kernel) = match &self.mosquitto {
            Ok(peer) => (
                format!(
                    "{} ({} clients on {} brokers)",
                    kib(peer.memory.kib_per(peer.held)),
                    thousands(peer.held as f64),
                    self.brokers
                ),
                peer.kernel_after.per_socket_kib_since(&peer.kernel_before),
            ),
            Err(err) => (format!("not measured: {err}"), None),
        };
        table.row(vec![
            "user-space memory (RSS added / connections)".to_owned(),
            format!("**{}**", kib(driver_per_device)),
            format!("{} (two sockets per device)", kib(haproxy_per_device)),
            peer_cell,
            "—".to_owned(),
        ]);
        table.row(vec![
            "kernel memory per TCP socket (slab + buffers added / sockets added)".to_owned(),
            "—".to_owned(),
            "—".to_owned(),
            peer_kernel.map_or_else(|| "—".to_owned(), kib),
            kernel.map_or_else(
                || "—".to_owned(),
                |k| {
                    format!(
                        "**{}** ({} sockets: device, HAProxy ×2, driver)",
                        kib(k),
                        thousands(sockets as f64)
                    )
                },
            ),
        ]);
        text.push_str(&table.render());
        let peer_per_connection = self.mosquitto.as_ref().ok().map(|p| p.memory.kib_per(p.held));
        let _ = writeln!(
            text,
            "\nTargets: ≥ 100,000 concurrent idle devices: {}; ≤ 2 KiB of driver memory per idle device: {} (1 KiB stretch: {}); less than Mosquitto per connection: {}.",
            met(d.held >= 100_000),
            met(driver_per_device <= 2.0),
            met(driver_per_device <= 1.0),
            match peer_per_connection {
                Some(peer) => met(driver_per_device < peer),
                None => "not measured",
            }
        );
        let rss: Vec<String> = d
            .memory
            .before
            .iter()
            .zip(&d.memory.after)
            .zip(&self.sessions_per_driver)
            .map(|((before, after), sessions)| {
                format!(
                    "{:.1} → {:.1} MiB ({} sessions)",
                    *before as f64 / 1024.0,
                    *after as f64 / 1024.0,
                    thousands(*sessions)
                )
            })
            .collect();
        let _ = writeln!(text, "\nDriver RSS, idle → holding: {}.", rss.join("; "));
        let s = &d.sim;
        let _ = writeln!(
            text,
            "\nSimulator: {} devices connected, {} handshakes, {} connect failures, {} handshake failures, {} disconnects, {} heartbeats sent, errors {}; handshake p50 {} µs, p99 {} µs; its own RSS {:.2} KiB per device (all {} processes, baseline included).",
            thousands(s.devices_connected as f64),
            thousands(s.handshakes as f64),
            s.connect_failures,
            s.handshake_failures,
            s.disconnects,
            thousands(s.pings_sent as f64),
            if s.errors.is_empty() {
                "none".to_owned()
            } else {
                format!("{:?}", s.errors)
            },
            s.handshake_latency_us.p50,
            s.handshake_latency_us.p99,
            d.sim_rss_kib as f64 / self.devices.max(1) as f64,
            self.sim_procs
        );
        if let Ok(peer) = &self.mosquitto {
            let s = &peer.sim;
            let _ = writeln!(
                text,
                "\nPeer: {}, {} brokers (one process each; each inherits the 20,000 open-file limit, like a driver), `max_connections -1`, anonymous, no persistence; clients CONNECT (clean session, keep-alive 30 s) and send `PINGREQ` every 30 s. {} of {} clients connected in {:.1} s, {} disconnects; RSS {}.",
                self.mosquitto_version,
                self.brokers,
                thousands(s.devices_connected as f64),
                thousands(self.devices as f64),
                peer.connect_time.as_secs_f64(),
                s.disconnects,
                peer.memory
                    .before
                    .iter()
                    .zip(&peer.memory.after)
                    .map(|(b, a)| format!("{:.1} → {:.1} MiB", *b as f64 / 1024.0, *a as f64 / 1024.0))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        match &self.burst {
            None => {}
            Some(Ok(burst)) => {
                let (peer_early, peer_settled) = match &burst.mosquitto {
                    Ok((early, settled)) => (format!("{early:.0} B"), format!("{settled:.0} B")),
                    Err(err) => (format!("not measured: {err}"), "—".to_owned()),
                };
                let _ = writeln!(
                    text,
                    "\n**The burst pattern**: {} devices on one driver (behind HAProxy), connected at {} handshakes/s; driver memory added per device, beside Mosquitto with as many clients on one broker connected the same way:\n",
                    thousands(BURST_DEVICES as f64),
                    BURST_RATE
                );
                let mut table = Table::new(&["per idle connection", "Drover driver", "Mosquitto (peer)"]);
                table.row(vec![
                    "2 s after the last handshake".to_owned(),
                    format!("{:.0} B", burst.driver.0),
                    peer_early,
                ]);
                table.row(vec![
                    format!("{} s after the last handshake", BURST_SETTLE.as_secs()),
                    format!("**{:.0} B**", burst.driver.1),
                    peer_settled,
                ]);
                text.push_str(&table.render());
                let _ = writeln!(
                    text,
                    "\nBelow Mosquitto in this pattern too: {}.  \nDevices: `{}`",
                    match &burst.mosquitto {
                        Ok((_, peer)) => met(burst.driver.1 < *peer),
                        Err(_) => "not measured",
                    },
                    burst.command
                );
            }
            Some(Err(err)) => {
                let _ = writeln!(text, "\nThe burst pattern was not measured: {err}");
            }
        }
        let _ = writeln!(
            text,
            "\nDevices: `{}`  \nPeer: `{}`",
            d.command,
            self.mosquitto.as_ref().map_or("—", |p| p.command.as_str())
        );
        let _ = writeln!(
            text,
            "\nSizing: {} devices per driver and per simulator process at most (20,000 open files each), {} per HAProxy process (two descriptors per device).",
            thousands(DEVICES_PER_DRIVER as f64),
            thousands(super::rig::DEVICES_PER_HAPROXY as f64)
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_per_connection_is_added_rss_over_connections() {
        let memory = Memory {
            before: vec![10_000, 10_000],
            after: vec![12_000, 13_000],
        };
        assert_eq!(memory.kib_per(2_500), 2.0);
        assert_eq!(memory.kib_per(0), 5_000.0);
    }
}
