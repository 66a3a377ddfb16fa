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
//!   driver-2, never restarted, has lived through every fault: it is the
//!   whole-run leak check. Bounds are those a leaking driver-2 would
//!   exceed in this run, with room for what is not a leak:
//!   - open file descriptors other than device connections may grow by 1.
//!     Each fault happens twice between the samples, so a driver that
//!     leaks a descriptor each time one happens (a connection to Redis or
//!     the bridge not closed on reconnecting) ends with 2 more. They are
//!     the fewest seen in a second of samples, so that a connection open
//!     for a moment (HAProxy's health check) does not count.
//!   - RSS may grow by 4 MiB, plus 8 KiB per device session gained
//!     (devices move between drivers when one dies; a session costs up to
//!     4 KiB). Events carry 2 KiB bodies, and driver-2 handles at least
//!     6,000 of them between the samples (asserted): a driver that kept
//!     what it handled would grow by 12 MiB or more, past the bound.
//!   - Redis's keys other than the event stream (which grows by design:
//!     nothing consumes it here), about 850 KiB for 2,000 devices, may grow
//!     by 10% + 256 KiB: the fleet keeps a fixed set of keys per device and
//!     per driver, and something kept per event (30 bytes for each of the
//!     16,000 or so stored between the samples) or per reconnection would
//!     exceed it. Redis's memory besides the data (clients, buffers) may
//!     grow by 100% + 8 MiB, its number of keys by 16 and its clients by 16.

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
/// Bytes of each event's body: large enough that a driver holding on to
/// the events it handled shows in its RSS within the run (see the module
/// documentation).
const EVENT_BYTES: usize = 2048;
/// Events driver-2 must handle between the samples for the RSS bound to
/// catch such a driver: 6,000 × 2 KiB = 12 MiB, more than the bound
/// allows beyond what the sessions need.
const EVENTS_BETWEEN_SAMPLES: f64 = 6000.0;
/// RSS growth allowed besides the sessions': the allocator's slack.
const RSS_SLACK_KIB: u64 = 4 * 1024;
/// RSS allowed per device session gained between the samples.
const RSS_PER_SESSION_KIB: u64 = 8;
/// Growth allowed of the descriptors other than device connections.
const OTHER_FDS_SLACK: u64 = 1;
/// Growth allowed of Redis's keys other than the event stream, beyond 10%.
const REDIS_KEYS_SLACK: u64 = 256 * 1024;
/// Samples of a process's resources, [`SAMPLE_EVERY`] apart: a second of
/// them. The fewest counts.
const SAMPLES: usize = 10;
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const ROUNDS: u32 = 3;
/// Events acknowledged between recovering from one fault and the next
/// fault: 2.5 s of the devices' load, which with the recoveries spreads
/// the 18 faults over about a minute.
const EVENTS_BETWEEN_FAULTS: f64 = 1000.0;
/// Upper bound on any recovery: only there to fail instead of hanging.
const DEADLINE: Duration = Duration::from_secs(60);

/// What one process holds: each figure the fewest seen in [`SAMPLES`]
/// samples, so that what lasts a moment does not count and a leak, which
/// lasts, does.
#[derive(Debug, Clone, Copy)]
struct ProcessSample {
    rss_kib: u64,
    /// Open file descriptors other than device connections.
    other_fds: u64,
    /// Device connections open (drivers; 0 for the bridge).
    connections: u64,
}

/// What Redis holds.
#[derive(Debug, Clone, Copy)]
struct RedisSample {
    used_memory: u64,
    /// Memory of every key but the event stream (`MEMORY USAGE`, exact):
    /// what the fleet keeps per device and per driver.
    other_keys: u64,
    /// Memory Redis uses besides the data (`used_memory_overhead`: clients,
    /// buffers, dictionaries).
    overhead: u64,
    keys: u64,
    clients: u64,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    drivers: [ProcessSample; 2],
    bridge: ProcessSample,
    redis: RedisSample,
    /// Events driver-2 (never restarted) has acknowledged so far.
    driver_2_acked: f64,
}

/// Samples process `pid`; `connections` reads its device connections
/// (after the descriptors, so that the request it makes is closed by the
/// next sample).
fn process_sample(pid: u32, connections: impl Fn() -> u64) -> ProcessSample {
    let mut fewest: Option<ProcessSample> = None;
    for i in 0..SAMPLES {
        if i > 0 {
            std::thread::sleep(SAMPLE_EVERY);
        }
        let (rss_kib, fds) = (rss_kib(pid).unwrap(), open_fds(pid).unwrap());
        let connections = connections();
        let this = ProcessSample {
            rss_kib,
            other_fds: fds.saturating_sub(connections),
            connections,
        };
        fewest = Some(fewest.map_or(this, |fewest| ProcessSample {
            rss_kib: fewest.rss_kib.min(this.rss_kib),
            other_fds: fewest.other_fds.min(this.other_fds),
            connections: this.connections,
        }));
    }
    fewest.expect("SAMPLES > 0")
}

fn info_field(info: &str, field: &str) -> u64 {
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in INFO"))
}

/// The memory of every key but `cwp:events`, summed. (`used_memory` less
/// the stream's `MEMORY USAGE` is no measure of it: with 2 KiB events the
/// stream's figure exceeds all of `used_memory`.)
fn other_keys_bytes(redis: &mut redis::Connection) -> u64 {
    let mut total = 0;
    let mut cursor = 0_u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query(redis)
            .unwrap();
        let mut usage = redis::pipe();
        for key in keys.iter().filter(|key| *key != "cwp:events") {
            // SAMPLES 0: every element counted, not an estimate.
            usage.cmd("MEMORY").arg("USAGE").arg(key).arg("SAMPLES").arg(0);
        }
        let usages: Vec<Option<u64>> = usage.query(redis).unwrap();
        total += usages.into_iter().flatten().sum::<u64>();
        if next == 0 {
            return total;
        }
        cursor = next;
    }
}

fn redis_sample(url: &str) -> RedisSample {
    let mut redis = redis::Client::open(url).unwrap().get_connection().unwrap();
    let memory: String = redis::cmd("INFO").arg("memory").query(&mut redis).unwrap();
    let clients: String = redis::cmd("INFO").arg("clients").query(&mut redis).unwrap();
    let keys: u64 = redis::cmd("DBSIZE").query(&mut redis).unwrap();
    RedisSample {
        used_memory: info_field(&memory, "used_memory"),
        other_keys: other_keys_bytes(&mut redis),
        overhead: info_field(&memory, "used_memory_overhead"),
        keys,
        clients: info_field(&clients, "connected_clients"),
    }
}

fn sample(fleet: &mut LocalFleet) -> Sample {
    let drivers = [0, 1].map(|i| {
        let pid = fleet.drivers[i].process().pid();
        let driver = &fleet.drivers[i];
        process_sample(pid, || driver.metric("drover_driver_connections").unwrap() as u64)
    });
    Sample {
        drivers,
        bridge: process_sample(fleet.bridge.process().pid(), || 0),
        redis: redis_sample(&fleet.redis_url),
        driver_2_acked: fleet.drivers[1].metric("drover_driver_events_acked_total").unwrap(),
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

/// The bounds of the module documentation.
fn assert_process_flat(name: &str, before: ProcessSample, after: ProcessSample) {
    let gained = after.connections.saturating_sub(before.connections);
    let rss_bound = before.rss_kib + RSS_SLACK_KIB + RSS_PER_SESSION_KIB * gained;
    assert!(
        after.rss_kib <= rss_bound,
        "{name}: RSS grew from {:.1} MiB to {:.1} MiB with {gained} sessions gained (bound {:.1} MiB)",
        mib(before.rss_kib),
        mib(after.rss_kib),
        mib(rss_bound)
    );
    assert!(
        after.other_fds <= before.other_fds + OTHER_FDS_SLACK,
        "{name}: descriptors other than device connections grew from {} to {}",
        before.other_fds,
        after.other_fds
    );
}

fn print_sample(when: &str, s: &Sample) {
    for (i, d) in s.drivers.iter().enumerate() {
        eprintln!(
            "{when}: driver-{}: RSS {:.1} MiB, {} fds besides {} device connections",
            i + 1,
            mib(d.rss_kib),
            d.other_fds,
            d.connections
        );
    }
    eprintln!(
        "{when}: vendor-bridge: RSS {:.1} MiB, {} fds",
        mib(s.bridge.rss_kib),
        s.bridge.other_fds
    );
    eprintln!("{when}: driver-2 acknowledged {} events", s.driver_2_acked);
    eprintln!(
        "{when}: redis: used_memory {:.1} MiB, overhead {:.1} MiB; keys other than cwp:events {} KiB; {} keys, {} clients",
        s.redis.used_memory as f64 / 1048576.0,
        s.redis.overhead as f64 / 1048576.0,
        s.redis.other_keys / 1024,
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
        .args(["--event-size", &EVENT_BYTES.to_string()])
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

    let handled = end.driver_2_acked - warm.driver_2_acked;
    assert!(
        handled >= EVENTS_BETWEEN_SAMPLES,
        "driver-2 handled {handled} events between the samples, too few for its RSS bound to catch a leak"
    );
    assert_process_flat("driver-1", warm.drivers[0], end.drivers[0]);
    assert_process_flat("driver-2", warm.drivers[1], end.drivers[1]);
    assert_process_flat("vendor-bridge", warm.bridge, end.bridge);
    let (warm_redis, end_redis) = (warm.redis, end.redis);
    let keys_bound = warm_redis.other_keys + warm_redis.other_keys / 10 + REDIS_KEYS_SLACK;
    assert!(
        end_redis.other_keys <= keys_bound,
        "Redis keys other than cwp:events grew from {} to {} bytes (bound {keys_bound})",
        warm_redis.other_keys,
        end_redis.other_keys
    );
    let overhead_bound = 2 * warm_redis.overhead + 8 * 1048576;
    assert!(
        end_redis.overhead <= overhead_bound,
        "Redis's memory besides the data grew from {} to {} bytes (bound {overhead_bound})",
        warm_redis.overhead,
        end_redis.overhead
    );
    assert!(end.redis.keys <= warm.redis.keys + 16, "{warm:?} {end:?}");
    assert!(end.redis.clients <= warm.redis.clients + 16, "{warm:?} {end:?}");
}
