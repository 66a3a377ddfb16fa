//! Fleets behind HAProxy ([`LocalFleet`], as `fleet up` runs them), the
//! simulator binary driving them, and what the tests read from their
//! processes.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use fleet::local::{FleetSpec, LocalFleet};
use fleet::process::free_port;

use super::MASTER_KEY_HEX;

/// `drivers` drivers behind one HAProxy process on free ports, with the
/// test master key; override fields with `FleetSpec { .., ..fleet_spec() }`.
pub fn fleet_spec(drivers: usize, state_dir: &Path) -> FleetSpec {
    FleetSpec {
        drivers,
        fleet_port: free_port().unwrap(),
        stats_port: free_port().unwrap(),
        haproxy_processes: 1,
        redis_url: None,
        master_key_hex: MASTER_KEY_HEX.to_owned(),
        state_dir: state_dir.to_owned(),
        log_files: true,
        driver_env: Vec::new(),
        haproxy_open_files: 20_000,
    }
}

/// Environment pairs as [`FleetSpec::driver_env`] takes them.
pub fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// A metric summed over the fleet's drivers (absent counts as 0).
pub fn drivers_total(fleet: &LocalFleet, metric: &str) -> f64 {
    fleet.drivers.iter().map(|d| d.metric(metric).unwrap_or(0.0)).sum()
}

/// `controller-sim` against `target` with the test master key and `--json`;
/// the caller adds the scenario's arguments and spawns it.
pub fn controller_sim(target: &str) -> Command {
    let mut command = Command::new(fleet::binaries::binary("controller-sim").unwrap());
    command
        .args(["--target", target, "--json"])
        .env("CWP_MASTER_KEY", MASTER_KEY_HEX)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

/// Waits for a simulator, asserts it succeeded, returns its JSON summary.
pub fn sim_summary(sim: Child) -> serde_json::Value {
    let output = sim.wait_with_output().unwrap();
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "controller-sim's summary is not JSON ({err}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    assert!(output.status.success(), "controller-sim failed: {summary}");
    summary
}

/// Ends a simulator started with `--verify-redis` (SIGTERM: it stops,
/// waits for its acks and checks Redis) and asserts its exactly-once
/// verdict: nothing lost, duplicated or unexpected.
pub fn stop_and_verify(sim: Child, name: &str) -> serde_json::Value {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(sim.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    verified(sim_summary(sim), name)
}

/// Asserts the exactly-once verdict of a simulator's summary.
pub fn verified(summary: serde_json::Value, name: &str) -> serde_json::Value {
    eprintln!("{name}: {summary}");
    let verification = &summary["verification"];
    assert_eq!(verification["passed"], true, "{name}: {summary}");
    for problem in ["missing", "duplicated", "unexpected"] {
        assert_eq!(verification[problem], 0, "{name}: {problem}: {summary}");
    }
    summary
}

/// A count from a simulator's summary.
pub fn count(summary: &serde_json::Value, field: &str) -> u64 {
    summary[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {summary}"))
}

/// A process's resident memory, KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// A process's open file descriptors.
pub fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64
}
