//! `controller-sim`, the binary, against real drivers: every scenario
//! connects real CWP/1 devices, does what it says, reports it in its JSON
//! summary, and (where events flow) verifies against Redis that every
//! acknowledged event is stored exactly once, also when the devices run in
//! several worker processes. The MQTT peer mode against a real Mosquitto.
//! And the vendor-bridge's process title, counted against what the devices
//! were told was stored.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Child;
use std::time::Duration;

use drover_testkit::fleet::{TestFleet, runtime};
use drover_testkit::inspect::publish;
use drover_testkit::process::find_on_path;
use drover_testkit::sim::{controller_sim, count, sim_summary, verified};
use drover_testkit::wait::{eventually, wait_until, within};
use futures::StreamExt as _;

/// Starts `controller-sim` against `target` with `args` (plus `--json`).
fn sim(target: &str, args: &[&str]) -> Child {
    controller_sim(target)
        .args(["--grace", "5s"])
        .args(args)
        .spawn()
        .unwrap()
}

fn no_errors(summary: &serde_json::Value) {
    assert_eq!(summary["errors"], serde_json::json!({}), "{summary}");
    assert_eq!(count(summary, "connect_failures"), 0, "{summary}");
    assert_eq!(count(summary, "handshake_failures"), 0, "{summary}");
}

#[test]
fn idle_devices_hold_their_sessions_with_heartbeats() {
    // With a 1 s heartbeat the driver closes a session silent for 3 s
    // (DRIVER_IDLE_TIMEOUT's default, three heartbeats): in a 5 s run every
    // device that did not heartbeat would be closed (BYE IDLE) and would
    // reconnect, so no session lost and none reconnected is the promise.
    let fleet = TestFleet::start(1, &[("DRIVER_HEARTBEAT_S", "1")]);
    let run = sim(
        &fleet.addr().to_string(),
        &["--scenario", "idle", "--devices", "200", "--duration", "5s"],
    );
    let summary = sim_summary(run);
    no_errors(&summary);
    assert_eq!(summary["scenario"], "idle");
    assert_eq!(count(&summary, "devices_connected"), 200, "{summary}");
    assert_eq!(count(&summary, "connected_at_end"), 200, "{summary}");
    assert_eq!(count(&summary, "disconnects"), 0, "no session was lost: {summary}");
    assert_eq!(
        count(&summary, "reconnects"),
        0,
        "no device had to reconnect: {summary}"
    );
    assert_eq!(count(&summary, "events_sent"), 0, "{summary}");
    assert!(
        count(&summary, "pings_sent") >= 200,
        "the devices sent heartbeats: {summary}"
    );
}

#[test]
fn a_storm_connects_every_device_at_once_and_reports_the_handshake_rate() {
    let fleet = TestFleet::start(1, &[]);
    let run = sim(
        &fleet.addr().to_string(),
        &["--scenario", "storm", "--devices", "1000", "--duration", "30s"],
    );
    let summary = sim_summary(run);
    no_errors(&summary);
    assert_eq!(count(&summary, "handshakes"), 1000, "{summary}");
    assert!(summary["handshake_rate"].as_f64().unwrap() > 0.0, "{summary}");
    assert!(count(&summary["handshake_latency_us"], "p99") > 0, "{summary}");
    // "end": the run is over once the last device is in, well before --duration.
    assert!(summary["run_s"].as_f64().unwrap() < 30.0, "{summary}");
}

/// The churn scenario's devices are idle (they send no events; resending
/// after a reconnect is `controller-sim/tests/device.rs`'s, losing and
/// duplicating nothing across reconnects `faults.rs`'s and `fleet.rs`'s):
/// what it checks is the churn itself: sessions dropped and reconnected,
/// with no connect or handshake failure and no `ERROR`. The check against
/// Redis shows nothing was stored for them.
#[test]
fn churning_devices_drop_their_connections_and_reconnect_without_failures() {
    let fleet = TestFleet::start(2, &[]);
    let targets = format!("{},{}", fleet.drivers[0].addr(), fleet.drivers[1].addr());
    let run = sim(
        &targets,
        &[
            "--scenario",
            "churn",
            "--devices",
            "100",
            "--churn",
            "40",
            "--duration",
            "4s",
            "--verify-redis",
            &fleet.redis.url(),
        ],
    );
    let summary = verified(sim_summary(run), "churn");
    no_errors(&summary);
    assert_eq!(
        count(&summary, "events_sent"),
        0,
        "churning devices are idle: {summary}"
    );
    assert!(count(&summary, "churn_drops") >= 40, "{summary}");
    assert!(count(&summary, "reconnects") >= 40, "{summary}");
}

#[test]
fn a_mixed_fleet_over_two_worker_processes_stores_every_acked_event_once() {
    let fleet = TestFleet::start(1, &[]);
    let run = sim(
        &fleet.addr().to_string(),
        &[
            "--scenario",
            "mixed",
            "--devices",
            "300",
            "--procs",
            "2",
            "--rate",
            "600",
            "--upload-bytes",
            "65536",
            "--duration",
            "4s",
            "--source-ips",
            "127.0.0.2-127.0.0.5",
            "--verify-redis",
            &fleet.redis.url(),
        ],
    );
    let summary = verified(sim_summary(run), "mixed");
    no_errors(&summary);
    assert_eq!(count(&summary, "procs"), 2, "{summary}");
    assert_eq!(count(&summary, "devices_connected"), 300, "{summary}");
    // 9 in 100 devices send events, 1 in 100 uploads.
    assert!(count(&summary, "events_acked") > 0, "{summary}");
    assert_eq!(summary["uploads"]["completed"], 3, "{summary}");
}

#[test]
fn devices_answer_the_commands_an_operator_publishes() {
    let fleet = TestFleet::start(1, &[]);
    let run = sim(
        &fleet.addr().to_string(),
        &[
            "--scenario",
            "commands",
            "--devices",
            "20",
            "--serial-prefix",
            "CMD-",
            "--command-delay",
            "50ms",
            // Longer than the waits below can take (5 s for the
            // subscriptions, 5 s for the results): the run's summary must
            // include every answer's ACK, however loaded the machine.
            "--duration",
            "20s",
        ],
    );
    let rt = runtime();
    rt.block_on(async {
        let mut redis = fleet.redis().await;
        let mut results = redis::Client::open(fleet.redis.url())
            .unwrap()
            .get_async_pubsub()
            .await
            .unwrap();
        results.psubscribe("cwp:cmd-result:*").await.unwrap();
        let channels: Vec<String> = (1..=20).map(|i| format!("cwp:cmd:CMD-{i:06}")).collect();
        // Every device is in session: its command channel has a subscriber.
        eventually(
            "every device's command channel to be subscribed",
            Duration::from_secs(5),
            || {
                let (mut redis, channels) = (redis.clone(), channels.clone());
                async move {
                    for channel in channels {
                        let (_, subscribers): (String, i64) = redis::cmd("PUBSUB")
                            .arg("NUMSUB")
                            .arg(channel)
                            .query_async(&mut redis)
                            .await
                            .unwrap();
                        if subscribers == 0 {
                            return false;
                        }
                    }
                    true
                }
            },
        )
        .await;
        for channel in &channels {
            // No id: the driver gives each command a UUID.
            let command = serde_json::json!({"name": "reboot"});
            assert_eq!(publish(&mut redis, channel, &command.to_string()).await, 1, "{channel}");
        }
        let mut answered = std::collections::BTreeSet::new();
        let mut messages = results.on_message();
        within("every device's result", Duration::from_secs(30), async {
            while answered.len() < 20 {
                let message = messages.next().await.expect("the subscription stays open");
                let notice: serde_json::Value =
                    serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
                assert!(notice["id"].is_string(), "{notice}");
                answered.insert(notice["serial"].as_str().unwrap().to_owned());
            }
        })
        .await;
        assert_eq!(answered.len(), 20, "every device answered: {answered:?}");
    });
    let summary = sim_summary(run);
    no_errors(&summary);
    assert!(count(&summary, "commands_answered") >= 20, "{summary}");
    assert!(
        count(&summary["command_latency_us"], "p50") >= 50_000,
        "the result waits for --command-delay: {summary}"
    );
}

#[test]
fn the_mqtt_peer_mode_holds_keep_alive_clients_on_mosquitto() {
    if find_on_path("mosquitto").is_none() {
        eprintln!("mosquitto is not installed: skipped (CI installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = drover_testkit::mosquitto::Mosquitto::start(dir.path(), 1).unwrap();
    let run = sim(
        &broker.targets(),
        &[
            "--protocol",
            "mqtt",
            "--scenario",
            "idle",
            "--devices",
            "100",
            "--mqtt-keep-alive",
            "1s",
            "--duration",
            "3s",
        ],
    );
    let summary = sim_summary(run);
    no_errors(&summary);
    assert_eq!(summary["protocol"], "mqtt");
    assert_eq!(count(&summary, "devices_connected"), 100, "{summary}");
    // Held: Mosquitto drops a client silent for 1.5 keep-alives (1.5 s), so
    // in a 3 s run a client that did not ping would have been dropped and
    // would have reconnected.
    assert_eq!(count(&summary, "connected_at_end"), 100, "{summary}");
    assert_eq!(count(&summary, "disconnects"), 0, "no client was dropped: {summary}");
    assert_eq!(count(&summary, "reconnects"), 0, "{summary}");
    assert!(count(&summary, "pings_sent") >= 100, "{summary}");
}

/// The vendor-bridge shows its state in `ps` (`/proc/PID/cmdline`): its
/// port, the drivers streaming to it and the events it stored.
#[test]
fn the_bridge_title_shows_its_port_drivers_and_stored_events() {
    let mut fleet = TestFleet::start(2, &[]);
    let targets = format!("{},{}", fleet.drivers[0].addr(), fleet.drivers[1].addr());
    let run = sim(
        &targets,
        &[
            "--devices",
            "20",
            "--rate",
            "400",
            "--duration",
            "2s",
            "--verify-redis",
            &fleet.redis.url(),
        ],
    );
    let summary = sim_summary(run);
    let acked = count(&summary, "events_acked");
    assert!(acked > 0, "{summary}");
    let port = fleet.bridge.port();
    let pid = fleet.bridge.process().pid();
    let expected = format!("vendor-bridge v0.1.0 port: {port} drivers: 2 events: {acked}");
    let title = || {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        String::from_utf8_lossy(&raw).trim_end_matches('\0').replace('\0', " ")
    };
    wait_until("the bridge's title", Duration::from_secs(5), || title() == expected)
        .unwrap_or_else(|_| panic!("title {:?}, expected {expected:?}", title()));
}
