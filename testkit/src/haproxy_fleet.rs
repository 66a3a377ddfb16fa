//! The test fleet behind HAProxy: a [`LocalFleet`] (Redis, the
//! vendor-bridge, drivers behind PROXY v2 and HAProxy in front, as `fleet
//! up` runs it) on free ports with the test master key, and what tests
//! read from its drivers.

use std::path::Path;

use crate::device::MASTER_KEY_HEX;
use crate::local::{FleetSpec, LocalFleet};
use crate::net::free_port;

/// `drivers` drivers behind one HAProxy process on free ports, with the
/// test master key and logs in `state_dir/logs`; override fields with
/// `FleetSpec { .., ..fleet_spec() }`.
pub fn fleet_spec(drivers: usize, state_dir: &Path) -> FleetSpec {
    FleetSpec {
        drivers,
        fleet_port: free_port().expect("a free port for the fleet"),
        stats_port: free_port().expect("a free port for HAProxy's stats"),
        haproxy_processes: 1,
        redis_url: None,
        redis_cluster: None,
        event_partitions: 1,
        master_key_hex: MASTER_KEY_HEX.to_owned(),
        state_dir: state_dir.to_owned(),
        log_files: true,
        driver_env: Vec::new(),
        haproxy_open_files: 20_000,
        gateways: 0,
        http_port: 0,
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
