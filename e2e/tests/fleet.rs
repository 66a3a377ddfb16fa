//! The fleet behind one address: HAProxy spreading devices over drivers,
//! the real device addresses reaching the drivers (PROXY v2), a driver
//! killed or restarted under load without losing or duplicating an event,
//! and the process titles `ps` shows.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use controller_sim::client::Connection;
use drover_testkit::device::{device_key, serial};
use drover_testkit::fleet::runtime;
use drover_testkit::haproxy_fleet::{drivers_total, env, fleet_spec};
use drover_testkit::local::{FleetSpec, LocalFleet};
use drover_testkit::sim::{controller_sim, sim_summary, verified};
use drover_testkit::wait::wait_until;

fn spec(
    drivers: usize,
    haproxy_processes: usize,
    state_dir: &std::path::Path,
    driver_env: &[(&str, &str)],
) -> FleetSpec {
    FleetSpec {
        haproxy_processes,
        driver_env: env(driver_env),
        ..fleet_spec(drivers, state_dir)
    }
}

fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    String::from_utf8_lossy(&raw).trim_end_matches('\0').replace('\0', " ")
}

fn sessions(fleet: &LocalFleet) -> Vec<f64> {
    fleet
        .drivers
        .iter()
        .map(|d| d.metric("drover_driver_sessions").unwrap())
        .collect()
}

#[test]
fn a_thousand_devices_spread_over_four_drivers_which_see_their_real_addresses() {
    let state = tempfile::tempdir().unwrap();
    // Two HAProxy processes share the fleet port (SO_REUSEPORT).
    let mut fleet = LocalFleet::start(spec(4, 2, state.path(), &[])).unwrap();
    let rt = runtime();
    let connections = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..1000u32 {
            let addr = fleet.haproxy.addr();
            tasks.push(tokio::spawn(async move {
                // Devices come from 127.0.0.2 ... 127.0.0.9, as from many hosts.
                let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8));
                let serial = serial(&format!("FLEET-{i:04}"));
                let mut connection = Connection::connect_from(addr, source).await.unwrap();
                connection.handshake(serial, &device_key(&serial), "fw").await.unwrap();
                (serial, connection)
            }));
        }
        let mut connections = Vec::new();
        for task in tasks {
            connections.push(task.await.unwrap());
        }
        connections
    });

    let per_driver = sessions(&fleet);
    assert_eq!(per_driver.iter().sum::<f64>(), 1000.0, "{per_driver:?}");
    for (i, n) in per_driver.iter().enumerate() {
        assert!(
            (150.0..=350.0).contains(n),
            "driver-{} holds {n} of 1000 devices: {per_driver:?}",
            i + 1
        );
    }

    rt.block_on(async {
        let mut redis = redis::Client::open(fleet.redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        // Every device, not a sample: each driver sees each of its devices'
        // own address (from the PROXY v2 header), never HAProxy's.
        for (serial, connection) in &connections {
            let peer: String = redis::cmd("HGET")
                .arg(format!("cwp:device:{serial}"))
                .arg("peer")
                .query_async(&mut redis)
                .await
                .unwrap();
            assert_eq!(
                peer,
                connection.local_addr().unwrap().to_string(),
                "{serial}'s real address"
            );
        }
    });

    // ps shows each driver's port, device count and some serials.
    let version = env!("CARGO_PKG_VERSION");
    for (i, driver) in fleet.drivers.iter_mut().enumerate() {
        let port = driver.addr().port();
        let expected = format!("driver v{version} port: {port} controllers: {}", per_driver[i]);
        let pid = driver.process().pid();
        wait_until("the title to refresh", Duration::from_secs(5), || {
            cmdline(pid).starts_with(&expected)
        })
        .unwrap_or_else(|_| panic!("driver-{} title is {:?}, expected {expected:?}", i + 1, cmdline(pid)));
        let title = cmdline(pid);
        assert!(title.contains("[FLEET-"), "{title}");
        // Started after the title was claimed (which needs a single
        // thread): jemalloc purges freed pages on threads of its own.
        let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .collect();
        assert!(
            threads.iter().any(|name| name.trim() == "jemalloc_bg_thd"),
            "jemalloc's purging thread runs: {threads:?}"
        );
        assert!(title.contains(" more] events: 0"), "{title}");
    }
    drop(connections);
}

/// Runs `controller-sim` against the fleet with verification.
fn simulate(fleet: &LocalFleet, devices: u32, rate: u32, duration: &str) -> std::process::Child {
    controller_sim(&fleet.haproxy.addr().to_string())
        .args(["--devices", &devices.to_string(), "--rate", &rate.to_string()])
        .args(["--duration", duration, "--source-ips", "127.0.0.10-127.0.0.20"])
        .args(["--verify-redis", &fleet.redis_url])
        .spawn()
        .unwrap()
}

fn verdict(sim: std::process::Child) -> serde_json::Value {
    verified(sim_summary(sim), "controller-sim")
}

fn wait_for_events(fleet: &LocalFleet, at_least: f64) {
    wait_until(
        &format!("{at_least} events acknowledged"),
        Duration::from_secs(30),
        || drivers_total(fleet, "drover_driver_events_acked_total") >= at_least,
    )
    .unwrap_or_else(|err| {
        let acked = drivers_total(fleet, "drover_driver_events_acked_total");
        panic!("events are not flowing: {acked} acked ({err})")
    });
}

#[test]
fn killing_a_driver_loses_and_duplicates_nothing() {
    let state = tempfile::tempdir().unwrap();
    let mut fleet = LocalFleet::start(spec(4, 1, state.path(), &[])).unwrap();
    let sim = simulate(&fleet, 200, 2000, "12s");
    wait_for_events(&fleet, 2000.0);
    fleet.drivers[1].process().kill(); // kill -9
    let summary = verdict(sim);
    assert!(summary["events_acked"].as_u64().unwrap() > 10_000, "{summary}");
    assert!(
        summary["reconnects"].as_u64().unwrap() >= 1,
        "devices of the dead driver reconnected: {summary}"
    );
}

#[test]
fn a_rolling_restart_under_load_loses_and_duplicates_nothing() {
    let state = tempfile::tempdir().unwrap();
    let mut fleet = LocalFleet::start(spec(3, 1, state.path(), &[("DRIVER_DRAIN_PERIOD", "3s")])).unwrap();
    let sim = simulate(&fleet, 150, 1500, "25s");
    wait_for_events(&fleet, 1500.0);
    for i in 0..fleet.drivers.len() {
        fleet.restart_driver(i, Duration::from_secs(30)).unwrap();
        // HAProxy sees it healthy and every device is back in session
        // before the next one goes.
        let name = format!("driver-{}", i + 1);
        wait_until(&format!("HAProxy to see {name} up"), Duration::from_secs(20), || {
            fleet.haproxy.server_status(&name).is_ok_and(|status| status == "UP")
        })
        .unwrap();
        wait_until(
            &format!("every device back after restarting {name}"),
            Duration::from_secs(20),
            || sessions(&fleet).iter().sum::<f64>() == 150.0,
        )
        .unwrap();
    }
    // Devices end up spread over the new drivers.
    let per_driver = sessions(&fleet);
    assert!(
        per_driver.iter().all(|&n| n >= 10.0),
        "devices spread over the new drivers: {per_driver:?}"
    );
    let summary = verdict(sim);
    assert!(summary["events_acked"].as_u64().unwrap() > 10_000, "{summary}");
}

/// The local fleet's bridge asks every caller for the token in the state
/// directory (readable by its owner only), on loopback too: its drivers
/// present it and stream; a driver started the same way but without it is
/// refused (the control).
#[test]
fn the_local_bridge_refuses_a_driver_without_the_fleets_token() {
    use std::os::unix::fs::PermissionsExt as _;

    let state = tempfile::tempdir().unwrap();
    let fleet = LocalFleet::start(spec(1, 1, state.path(), &[])).unwrap();
    let token = state.path().join("bridge.token");
    let mode = std::fs::metadata(&token).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "bridge.token is private");
    let streaming = |driver: &drover_testkit::components::DriverProcess, result: &str| {
        driver
            .metrics()
            .is_ok_and(|text| text.contains(&format!("drover_driver_bridge_connects_total{{result=\"{result}\"}}")))
    };
    wait_until("the fleet's driver to stream", Duration::from_secs(10), || {
        streaming(&fleet.drivers[0], "ok")
    })
    .unwrap();

    let mut options = fleet.driver_options.clone();
    options.proxy_protocol = false;
    options.extra_env.retain(|(name, _)| name != "VENDOR_BRIDGE_TOKEN_FILE");
    let stranger = drover_testkit::components::DriverProcess::start(&options).unwrap();
    wait_until(
        "the driver without the token to be refused",
        Duration::from_secs(10),
        || streaming(&stranger, "failed"),
    )
    .unwrap();
    assert!(!streaming(&stranger, "ok"), "a driver without the token never streams");
}

/// `fleet up --redis-cluster`, the binary as a user runs it: a private
/// 3-master cluster with 6 event streams, drivers on it, and a welcome that
/// shows the cluster's commands. Devices through its HAProxy are stored
/// exactly once in the partitioned streams, an HTTP device's batch through
/// its HTTP port too; Ctrl-C stops everything.
#[test]
fn fleet_up_on_a_private_redis_cluster_stores_every_event_once() {
    use std::io::BufRead as _;

    let state = tempfile::tempdir().unwrap();
    let port = drover_testkit::net::free_port().unwrap();
    let stats = drover_testkit::net::free_port().unwrap();
    let http = drover_testkit::net::free_port().unwrap();
    let fleet_binary = drover_testkit::binaries::binary("fleet").unwrap();
    let mut up = drover_testkit::process::ChildGuard::spawn(
        "fleet up",
        std::process::Command::new(fleet_binary)
            .args([
                "up",
                "--no-build",
                "--drivers",
                "2",
                "--redis-cluster",
                "3",
                "--partitions",
                "6",
            ])
            .args(["--fleet-port", &port.to_string(), "--stats-port", &stats.to_string()])
            .args(["--http-port", &http.to_string()])
            .arg("--state-dir")
            .arg(state.path())
            .env_remove("REDIS_URL")
            .env("CWP_MASTER_KEY", drover_testkit::device::MASTER_KEY_HEX)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null()),
    )
    .unwrap();
    let stdout = up.take_stdout().unwrap();
    let mut welcome = String::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        welcome.push_str(&line);
        welcome.push('\n');
        if line.starts_with("Ctrl-C stops everything") {
            break;
        }
    }
    assert!(welcome.contains("a Redis Cluster of 3 masters"), "{welcome}");
    assert!(welcome.contains("6 event stream(s)"), "{welcome}");
    assert!(welcome.contains("SPUBLISH cwp:cmd:SIM-000001"), "{welcome}");
    assert!(welcome.contains("redis-cli -c"), "{welcome}");
    assert!(
        welcome.contains(&format!("http://127.0.0.1:{http}/v1/events")),
        "{welcome}"
    );
    let seeds = welcome
        .lines()
        .find_map(|line| line.trim().strip_prefix("redis"))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the welcome names the cluster's seed nodes")
        .to_owned();

    let summary = verified(
        sim_summary(
            controller_sim(&format!("127.0.0.1:{port}"))
                .args(["--devices", "50", "--rate", "1000", "--duration", "3s"])
                .args(["--verify-redis-cluster", &seeds])
                .spawn()
                .unwrap(),
        ),
        "controller-sim",
    );
    assert!(summary["events_acked"].as_u64().unwrap() > 1000, "{summary}");
    runtime().block_on(async {
        let target = drover_redis::Target::cluster(&seeds).unwrap();
        let mut redis = drover_redis::Connection::open(
            &target,
            drover_redis::Timeouts {
                connect: Duration::from_secs(5),
                response: Duration::from_secs(5),
            },
        )
        .unwrap();
        let streams: String = redis::cmd("HGET")
            .arg(drover_schema::LAYOUT)
            .arg(drover_schema::layout_fields::STREAMS)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(streams.split(',').count(), 6, "{streams}");

        // An HTTP device through the same HAProxy's HTTP port: its nonce
        // remembered in its partition of the cluster, its events stored.
        let request = drover_testkit::ingest::HttpRequest::signed_events(
            &serial("HTTP-UP"),
            "/v1/events",
            b"{\"event_id\":1,\"time_ms\":0,\"kind\":1,\"body\":\"over http\"}\n".to_vec(),
        );
        let frontend = drover_testkit::net::loopback(http);
        let answer = drover_testkit::ingest::send(frontend, &request).await.unwrap();
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        assert_eq!(answer.json()["stats"]["records"]["valid"], 1);
        let replay = drover_testkit::ingest::send(frontend, &request).await.unwrap();
        assert_eq!(replay.code(), "replayed");
    });

    up.signal(nix::sys::signal::Signal::SIGINT).unwrap();
    up.wait_timeout(Duration::from_secs(60))
        .expect("fleet up stops on Ctrl-C");
}
