//! The whole fleet as the benchmarks of connections use it (idle, storm,
//! commands): [`LocalFleet`] — Redis, the vendor-bridge, N drivers, K
//! HAProxy processes on one port — with the benchmark's master key, quiet
//! logs, and ways to watch it from the outside.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use drover_testkit::local::{FleetSpec, LocalFleet};
use drover_testkit::net::free_port;
use drover_testkit::process::rss_kib;

use super::BenchContext;
use super::events::MASTER_KEY_HEX;
use super::probe::SimProcess;

/// Devices per driver the benchmarks plan for: each driver may hold
/// 20,000 open files, and HAProxy's `leastconn` per process keeps the
/// drivers within a few percent of each other, not exactly even.
pub const DEVICES_PER_DRIVER: u64 = 15_000;
/// Devices per HAProxy process: 9,900 at most with 20,000 open files (two
/// per device); `SO_REUSEPORT` hashes new connections over the processes,
/// so each gets its share give or take a few percent.
pub const DEVICES_PER_HAPROXY: u64 = 8_500;

/// A running fleet; everything stops when it is dropped.
#[derive(Debug)]
pub struct Rig {
    /// The fleet.
    pub fleet: LocalFleet,
}

impl Rig {
    /// Starts Redis, the bridge, `drivers` drivers and `haproxy_processes`
    /// HAProxy processes, with their logs in the bench's work directory.
    pub fn start(ctx: &BenchContext, name: &str, drivers: usize, haproxy_processes: usize) -> anyhow::Result<Self> {
        Self::start_with(ctx, name, drivers, haproxy_processes, &[])
    }

    /// [`Rig::start`] with more variables for the drivers.
    pub fn start_with(
        ctx: &BenchContext,
        name: &str,
        drivers: usize,
        haproxy_processes: usize,
        driver_env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        // One line per session at info would be the drivers' main work.
        let mut env = vec![("RUST_LOG".to_owned(), "warn".to_owned())];
        env.extend(driver_env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let open_files = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(_, hard)| hard)
            .unwrap_or(20_000);
        let fleet = LocalFleet::start(FleetSpec {
            drivers,
            fleet_port: free_port()?,
            stats_port: free_port()?,
            haproxy_processes,
            redis_url: None,
            redis_cluster: None,
            event_partitions: 1,
            master_key_hex: MASTER_KEY_HEX.to_owned(),
            state_dir: ctx.work_dir.join(name),
            log_files: true,
            driver_env: env,
            haproxy_open_files: open_files,
            gateways: 0,
            http_port: 0,
        })
        .with_context(|| format!("starting the fleet for {name}"))?;
        Ok(Self { fleet })
    }

    /// Drivers and HAProxy processes for `devices` devices.
    pub fn size_for(devices: u64) -> (usize, usize) {
        let drivers = devices.div_ceil(DEVICES_PER_DRIVER).max(1);
        let haproxy = devices.div_ceil(DEVICES_PER_HAPROXY).max(1);
        (
            usize::try_from(drivers).unwrap_or(usize::MAX),
            usize::try_from(haproxy).unwrap_or(usize::MAX),
        )
    }

    /// Where devices connect.
    pub fn target(&self) -> String {
        self.fleet.haproxy.addr().to_string()
    }

    /// Authenticated sessions the drivers hold now.
    pub fn sessions(&self) -> f64 {
        self.fleet
            .drivers
            .iter()
            .map(|driver| driver.metric("drover_driver_sessions").unwrap_or(0.0))
            .sum()
    }

    /// Sessions per driver.
    pub fn sessions_per_driver(&self) -> Vec<f64> {
        self.fleet
            .drivers
            .iter()
            .map(|driver| driver.metric("drover_driver_sessions").unwrap_or(0.0))
            .collect()
    }

    /// Waits until the drivers hold `devices` sessions; fails if the
    /// simulator ends first, or if the count stops growing for `stall`.
    /// Returns how long it took.
    pub fn wait_for_sessions(&self, devices: u64, sim: &mut SimProcess, stall: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let (mut best, mut best_at) = (0.0, Instant::now());
        loop {
            let sessions = self.sessions();
            if sessions >= devices as f64 {
                return Ok(started.elapsed());
            }
            if sessions > best {
                (best, best_at) = (sessions, Instant::now());
            }
            if !sim.is_running() {
                bail!("the simulator ended with {sessions} of {devices} sessions established");
            }
            if best_at.elapsed() > stall {
                bail!("stuck at {sessions} of {devices} sessions for {stall:?}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Resident memory of each driver, KiB.
    pub fn driver_rss(&mut self) -> Vec<u64> {
        self.fleet
            .drivers
            .iter_mut()
            .map(|driver| rss_kib(driver.process().pid()).unwrap_or(0))
            .collect()
    }

    /// Resident memory of each HAProxy process, KiB.
    pub fn haproxy_rss(&self) -> Vec<u64> {
        self.fleet
            .haproxy
            .pids()
            .into_iter()
            .map(|pid| rss_kib(pid).unwrap_or(0))
            .collect()
    }

    /// Every process of the fleet, named, for CPU meters.
    pub fn processes(&mut self) -> Vec<(&'static str, u32)> {
        let mut processes = Vec::new();
        if let Some(redis) = &self.fleet.redis {
            processes.push(("redis-server", redis.pid()));
        }
        processes.push(("vendor-bridge", self.fleet.bridge.process().pid()));
        for driver in &mut self.fleet.drivers {
            processes.push(("driver", driver.process().pid()));
        }
        for pid in self.fleet.haproxy.pids() {
            processes.push(("haproxy", pid));
        }
        processes
    }

    /// Stops everything in order (drivers drain first).
    pub fn stop(mut self) {
        self.fleet.stop(Duration::from_secs(30));
    }
}

/// CPU seconds per process name, added over processes of the same name.
pub fn cpu_by_name(cpu: &[(String, f64)]) -> Vec<(String, f64)> {
    let mut totals: Vec<(String, f64)> = Vec::new();
    for (name, seconds) in cpu {
        match totals.iter_mut().find(|(n, _)| n == name) {
            Some((_, total)) => *total += seconds,
            None => totals.push((name.clone(), *seconds)),
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_is_sized_for_the_open_file_limit() {
        assert_eq!(Rig::size_for(100_000), (7, 12));
        assert_eq!(Rig::size_for(10_000), (1, 2));
        assert_eq!(Rig::size_for(1), (1, 1));
    }

    #[test]
    fn cpu_adds_up_by_process_name() {
        let cpu = [
            ("driver".to_owned(), 1.0),
            ("haproxy".to_owned(), 0.5),
            ("driver".to_owned(), 2.0),
        ];
        assert_eq!(
            cpu_by_name(&cpu),
            [("driver".to_owned(), 3.0), ("haproxy".to_owned(), 0.5)]
        );
    }
}
