//! The soak of issue 8: 2,000 devices sending events through HAProxy to
//! two drivers for about a minute while every operational fault happens in
//! turn, three times over:
//!
//! 1. redis-server killed (-9) and restarted on its append-only file,
//! 2. the vendor-bridge killed (-9) and restarted,
//! 3. driver-1 killed (-9) and restarted,
//! 4. the vendor-bridge frozen (SIGSTOP) until the drivers hold a second's
//!    worth of events awaiting storage, then thawed (SIGCONT),
//! 5. HAProxy reloaded (SIGUSR2 to its master, as `systemctl reload` does),
//! 6. the drivers' Redis pub/sub connections cut (`CLIENT KILL TYPE pubsub`).
//!
//! After each fault the test waits until every device is back in session
//! and events are acknowledged again, and the next fault comes once the
//! devices have carried a share of the load, spreading the 18 faults over
//! about a minute. Must hold:
//!
//! - every acknowledged event is stored exactly once (controller-sim's
//!   checker, the same as everywhere);
//! - resources are flat after warm-up. The first round is the warm-up;
//!   the same figures are taken after it and after the last round, at the
//!   same point of the round, so a process restarted in every round
//!   (driver-1, the bridge, Redis) has lived as long at both samples, and
//!   driver-2, never restarted, has lived through every fault. Bounds are
//!   deliberately generous (this is a leak detector, not a benchmark):
//!   RSS may grow by 25% + 16 MiB (+ 32 KiB per device session gained, as
//!   devices move between drivers when one dies); open file descriptors
//!   other than device connections by 32; Redis's memory other than the
//!   event stream (which grows by design: nothing consumes it here) by
//!   100% + 8 MiB, its keys by 16 and its clients by 16.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use drover_testkit::components::{BridgeProcess, DriverProcess, Logs};
use drover_testkit::haproxy_fleet::{drivers_total, fleet_spec};
use drover_testkit::local::LocalFleet;
use drover_testkit::process::{open_fds, rss_kib};
use drover_testkit::sim::{controller_sim, stop_and_verify};
use drover_testkit::wait::wait_until;
use nix::sys::signal::Signal;

const DEVICES: usize = 2000;
/// Events per second from all devices together: modest, for 2 cores.
const RATE: u32 = 400;
const ROUNDS: u32 = 3;
/// Events acknowledged between recovering from one fault and the next
/// fault: 2.5 s of the devices' load, which with the recoveries spreads
/// the 18 faults over about a minute.
const EVENTS_BETWEEN_FAULTS: f64 = 1000.0;
/// Upper bound on any recovery: only there to fail instead of hanging.
const DEADLINE: Duration = Duration::from_secs(60);

/// What one process holds.
#[derive(Debug, Clone, Copy)]
struct ProcessSample {
    rss_kib: u64,
    fds: u64,
    /// Device connections open (drivers; 0 for the bridge).
    connections: u64,
}

/// What Redis holds.
#[derive(Debug, Clone, Copy)]
struct RedisSample {
    used_memory: u64,
    events_stream: u64,
    keys: u64,
    clients: u64,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    drivers: [ProcessSample; 2],
    bridge: ProcessSample,
    redis: RedisSample,
}

fn process_sample(pid: u32, connections: u64) -> ProcessSample {
    ProcessSample {
        rss_kib: rss_kib(pid).unwrap(),
        fds: open_fds(pid).unwrap(),
        connections,
    }
}

fn info_field(info: &str, field: &str) -> u64 {
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in INFO"))
}

fn redis_sample(url: &str) -> RedisSample {
    let mut redis = redis::Client::open(url).unwrap().get_connection().unwrap();
    let memory: String = redis::cmd("INFO").arg("memory").query(&mut redis).unwrap();
    let clients: String = redis::cmd("INFO").arg("clients").query(&mut redis).unwrap();
    // SAMPLES 0: every entry counted, not an estimate.
    let events_stream: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg("cwp:events")
        .arg("SAMPLES")
        .arg(0)
        .query(&mut redis)
        .unwrap();
    let keys: u64 = redis::cmd("DBSIZE").query(&mut redis).unwrap();
    RedisSample {
        used_memory: info_field(&memory, "used_memory"),
        events_stream: events_stream.unwrap_or(0),
        keys,
        clients: info_field(&clients, "connected_clients"),
    }
}

fn sample(fleet: &mut LocalFleet) -> Sample {
    let connections = |driver: &DriverProcess| driver.metric("drover_driver_connections").unwrap() as u64;
    let drivers = [0, 1].map(|i| {
        let open = connections(&fleet.drivers[i]);
        process_sample(fleet.drivers[i].process().pid(), open)
    });
    Sample {
        drivers,
        bridge: process_sample(fleet.bridge.process().pid(), 0),
        redis: redis_sample(&fleet.redis_url),
    }
}

/// Every device in session again, and events acknowledged again.
fn recovered(fleet: &LocalFleet, after: &str) {
    wait_until(&format!("every device back after {after}"), DEADLINE, || {
        drivers_total(fleet, "drover_driver_sessions") >= DEVICES as f64
    })
    .unwrap();
    let acked = drivers_total(fleet, "drover_driver_events_acked_total");
    wait_until(&format!("events acknowledged after {after}"), DEADLINE, || {
        drivers_total(fleet, "drover_driver_events_acked_total") >= acked + f64::from(RATE)
    })
    .unwrap();
}

fn logs(state: &std::path::Path, name: &str) -> Logs {
    Logs::File(state.join("logs").join(format!("{name}.log")))
}

/// Waits for the next fault's turn, once the devices have carried
/// [`EVENTS_BETWEEN_FAULTS`] more events since the fleet recovered from the
/// last one (no driver restarts meanwhile, so the drivers' counters only
/// grow).
fn next_turn(fleet: &LocalFleet) {
    let acked = drivers_total(fleet, "drover_driver_events_acked_total");
    wait_until("the next fault's turn", DEADLINE, || {
        drivers_total(fleet, "drover_driver_events_acked_total") >= acked + EVENTS_BETWEEN_FAULTS
    })
    .unwrap();
}

/// One round of every fault, each followed by recovery.
fn round(fleet: &mut LocalFleet, state: &std::path::Path) {
    fleet.redis.as_mut().unwrap().restart().unwrap();
    recovered(fleet, "redis-server kill -9 and restart");
    next_turn(fleet);

    let port = fleet.bridge.port();
    fleet.bridge.process().kill();
    fleet.bridge = BridgeProcess::start_on(port, &fleet.redis_url, &logs(state, "vendor-bridge"), &[]).unwrap();
    recovered(fleet, "vendor-bridge kill -9 and restart");
    next_turn(fleet);

    let (port, admin_port) = (fleet.drivers[0].addr().port(), fleet.drivers[0].admin_addr().port());
    fleet.drivers[0].process().kill();
    let mut options = fleet.driver_options.clone();
    options.logs = logs(state, "driver-1");
    fleet.drivers[0] = DriverProcess::start_on(port, admin_port, &options).unwrap();
    recovered(fleet, "driver-1 kill -9 and restart");
    next_turn(fleet);

    fleet.bridge.process().signal(Signal::SIGSTOP).unwrap();
    wait_until("the drivers to hold a second's worth of events", DEADLINE, || {
        drivers_total(fleet, "drover_driver_events_pending") >= f64::from(RATE)
    })
    .unwrap();
    fleet.bridge.process().signal(Signal::SIGCONT).unwrap();
    recovered(fleet, "vendor-bridge SIGSTOP and SIGCONT");
    next_turn(fleet);

    fleet.haproxy.reload().unwrap();
    recovered(fleet, "HAProxy reload");
    next_turn(fleet);

    let mut redis = redis::Client::open(fleet.redis_url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut redis)
        .unwrap();
    assert_eq!(killed, 2, "one pub/sub connection per driver");
    recovered(fleet, "pub/sub connections cut");
    next_turn(fleet);
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn assert_process_flat(name: &str, before: ProcessSample, after: ProcessSample) {
    let gained = after.connections.saturating_sub(before.connections);
    let rss_bound = before.rss_kib + before.rss_kib / 4 + 16 * 1024 + 32 * gained;
    assert!(
        after.rss_kib <= rss_bound,
        "{name}: RSS grew from {:.1} MiB to {:.1} MiB (bound {:.1} MiB)",
        mib(before.rss_kib),
        mib(after.rss_kib),
        mib(rss_bound)
    );
    let other_fds = |s: ProcessSample| s.fds.saturating_sub(s.connections);
    assert!(
        other_fds(after) <= other_fds(before) + 32,
        "{name}: descriptors other than device connections grew from {} to {}",
        other_fds(before),
        other_fds(after)
    );
}

fn print_sample(when: &str, s: &Sample) {
    for (i, d) in s.drivers.iter().enumerate() {
        eprintln!(
            "{when}: driver-{}: RSS {:.1} MiB, {} fds, {} device connections",
            i + 1,
            mib(d.rss_kib),
            d.fds,
            d.connections
        );
    }
    eprintln!(
        "{when}: vendor-bridge: RSS {:.1} MiB, {} fds",
        mib(s.bridge.rss_kib),
        s.bridge.fds
    );
    eprintln!(
        "{when}: redis: used_memory {:.1} MiB, of which cwp:events {:.1} MiB, other {:.1} MiB; {} keys, {} clients",
        s.redis.used_memory as f64 / 1048576.0,
        s.redis.events_stream as f64 / 1048576.0,
        s.redis.used_memory.saturating_sub(s.redis.events_stream) as f64 / 1048576.0,
        s.redis.keys,
        s.redis.clients
    );
}

#[test]
fn two_thousand_devices_through_every_fault_in_turn_lose_nothing_and_leak_nothing() {
    let state = tempfile::tempdir().unwrap();
    let mut fleet = LocalFleet::start(fleet_spec(2, state.path())).unwrap();

    // Runs until SIGTERM (--duration is only a backstop), then waits for
    // outstanding acks and verifies.
    let sim = controller_sim(&fleet.haproxy.addr().to_string())
        .args(["--devices", &DEVICES.to_string(), "--rate", &RATE.to_string()])
        .args(["--connect-rate", "500", "--duration", "300s", "--grace", "20s"])
        .args(["--source-ips", "127.0.0.10-127.0.0.20"])
        .args(["--verify-redis", &fleet.redis_url])
        .spawn()
        .unwrap();
    recovered(&fleet, "connecting");

    let started = Instant::now();
    round(&mut fleet, state.path());
    let warm = sample(&mut fleet);
    print_sample("after warm-up", &warm);
    for _ in 1..ROUNDS {
        round(&mut fleet, state.path());
    }
    let end = sample(&mut fleet);
    print_sample("at the end", &end);
    eprintln!(
        "HAProxy processes serving devices at the end (old workers keep theirs after a reload): {}",
        fleet.haproxy.pids().len()
    );
    eprintln!("soak: {ROUNDS} rounds of 6 faults in {:.0?}", started.elapsed());

    let summary = stop_and_verify(sim, "soak");
    let verification = &summary["verification"];
    assert!(verification["acked"].as_u64().unwrap() > 5000, "{summary}");

    assert_process_flat("driver-1", warm.drivers[0], end.drivers[0]);
    assert_process_flat("driver-2", warm.drivers[1], end.drivers[1]);
    assert_process_flat("vendor-bridge", warm.bridge, end.bridge);
    let other = |r: RedisSample| r.used_memory.saturating_sub(r.events_stream);
    let bound = 2 * other(warm.redis) + 8 * 1048576;
    assert!(
        other(end.redis) <= bound,
        "Redis memory other than cwp:events grew from {} to {} bytes (bound {bound})",
        other(warm.redis),
        other(end.redis)
    );
    assert!(end.redis.keys <= warm.redis.keys + 16, "{warm:?} {end:?}");
    assert!(end.redis.clients <= warm.redis.clients + 16, "{warm:?} {end:?}");
}
