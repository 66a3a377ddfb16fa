//! Operational faults the fleet recovers from (issue 8):
//!
//! - HAProxy reloaded under connection churn (`systemctl reload haproxy`:
//!   SIGUSR2 to its master): no session is cut, new devices keep getting
//!   in, every acknowledged event is stored exactly once.
//! - HAProxy crashed and restarted under churn: every device reconnects
//!   and nothing is lost.
//! - A driver's Redis pub/sub connection cut (`CLIENT KILL TYPE pubsub`):
//!   the driver resubscribes every session's command channel and commands
//!   flow again; the test prints how long the gap was.

#![allow(clippy::unwrap_used)]

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cwp::ServerFrame;
use drover_testkit::device::{connect, serial};
use drover_testkit::fleet::{TestFleet, runtime};
use drover_testkit::haproxy_fleet::{drivers_total, fleet_spec};
use drover_testkit::local::LocalFleet;
use drover_testkit::sim::{controller_sim, count, stop_and_verify};
use drover_testkit::wait::{eventually, wait_until};

/// Upper bound on any wait: only there to fail instead of hanging.
const DEADLINE: Duration = Duration::from_secs(30);

/// `controller-sim` through HAProxy with verification against Redis. It
/// runs until SIGTERM (or a long `--duration`), then waits for acks and
/// checks every acked event is stored once.
fn simulate(fleet: &LocalFleet, args: &[&str]) -> Child {
    controller_sim(&fleet.haproxy.addr().to_string())
        .args(["--duration", "120s", "--grace", "15s"])
        .args(["--verify-redis", &fleet.redis_url])
        .args(args)
        .spawn()
        .unwrap()
}

/// Waits until the drivers have acknowledged `more` events beyond now.
fn events_flow(fleet: &LocalFleet, more: f64, what: &str) {
    let start = drivers_total(fleet, "drover_driver_events_acked_total");
    wait_until(what, DEADLINE, || {
        drivers_total(fleet, "drover_driver_events_acked_total") >= start + more
    })
    .unwrap();
}

/// 150 devices sending 600 events/s, and 150 more that drop their session
/// and reconnect 30 times a second in all.
fn load(fleet: &LocalFleet) -> (Child, Child) {
    let events = simulate(
        fleet,
        &[
            "--serial-prefix",
            "EVENTS-",
            "--devices",
            "150",
            "--rate",
            "600",
            "--source-ips",
            "127.0.0.10-127.0.0.14",
        ],
    );
    let churn = simulate(
        fleet,
        &[
            "--scenario",
            "churn",
            "--serial-prefix",
            "CHURN-",
            "--devices",
            "150",
            "--churn",
            "30",
            "--source-ips",
            "127.0.0.15-127.0.0.19",
        ],
    );
    wait_until("every device to connect", DEADLINE, || {
        drivers_total(fleet, "drover_driver_sessions") >= 290.0
    })
    .unwrap();
    events_flow(fleet, 1200.0, "events to flow");
    (events, churn)
}

#[test]
fn reloading_haproxy_under_connection_churn_cuts_no_session_and_loses_nothing() {
    let state = tempfile::tempdir().unwrap();
    let mut fleet = LocalFleet::start(fleet_spec(2, state.path())).unwrap();
    let (events, churn) = load(&fleet);
    let first_workers = fleet.haproxy.pids();
    let churned_before = drivers_total(&fleet, "drover_driver_connections_accepted_total");

    for reload in 1..=3 {
        fleet.haproxy.reload().unwrap();
        // New devices get in through the new worker, old ones keep sending.
        let accepted = drivers_total(&fleet, "drover_driver_connections_accepted_total");
        wait_until("churned devices to connect after the reload", DEADLINE, || {
            drivers_total(&fleet, "drover_driver_connections_accepted_total") >= accepted + 30.0
        })
        .unwrap();
        events_flow(&fleet, 600.0, "events to flow after the reload");
        eprintln!("reload {reload}: HAProxy workers {:?}", fleet.haproxy.pids());
    }
    assert!(
        fleet.haproxy.pids().iter().any(|pid| !first_workers.contains(pid)),
        "a new worker serves after the reloads: {:?} then {:?}",
        first_workers,
        fleet.haproxy.pids()
    );
    assert!(drivers_total(&fleet, "drover_driver_connections_accepted_total") > churned_before + 90.0);

    let events = stop_and_verify(events, "events");
    let churn = stop_and_verify(churn, "churn");
    assert_eq!(
        count(&events, "reconnects"),
        0,
        "a reload leaves every session on the old worker: {events}"
    );
    assert!(count(&events, "events_acked") > 3000, "{events}");
    assert!(count(&churn, "reconnects") >= 90, "{churn}");
    eprintln!(
        "reload under churn: events acked {} (stored once: {}), churn reconnects {}, churn handshake failures {}, connect failures {}",
        count(&events, "events_acked"),
        events["verification"]["stored_once"],
        count(&churn, "reconnects"),
        count(&churn, "handshake_failures"),
        count(&churn, "connect_failures"),
    );
}

#[test]
fn haproxy_crashing_and_restarting_under_connection_churn_loses_nothing() {
    let state = tempfile::tempdir().unwrap();
    let mut fleet = LocalFleet::start(fleet_spec(2, state.path())).unwrap();
    let (events, churn) = load(&fleet);

    // kill -9 and start again, like a supervisor would: every session is cut.
    fleet.haproxy.restart().unwrap();
    wait_until("every device to reconnect", DEADLINE, || {
        drivers_total(&fleet, "drover_driver_sessions") >= 290.0
    })
    .unwrap();
    events_flow(&fleet, 1200.0, "events to flow after the restart");

    let events = stop_and_verify(events, "events");
    let churn = stop_and_verify(churn, "churn");
    assert!(
        count(&events, "reconnects") >= 150,
        "every device of the event run reconnected: {events}"
    );
    assert!(count(&events, "events_acked") > 2000, "{events}");
    assert!(count(&churn, "reconnects") >= 150, "{churn}");
}

/// `PUBSUB NUMSUB channel` for one channel.
async fn subscribers(redis: &mut redis::aio::MultiplexedConnection, channel: &str) -> i64 {
    let (_, count): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(redis)
        .await
        .unwrap();
    count
}

/// How many `cwp:cmd:*` channels have a subscriber.
async fn command_channels(redis: &mut redis::aio::MultiplexedConnection) -> usize {
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg("cwp:cmd:*")
        .query_async(redis)
        .await
        .unwrap();
    channels.len()
}

#[test]
fn a_cut_pubsub_connection_is_resubscribed_and_commands_flow_again() {
    const IDLE: usize = 1000;
    const CUTS: u32 = 5;
    let fleet = TestFleet::start(1, &[]);
    // A driver's worth of sessions, so that resubscribing has work to do.
    let mut idle = controller_sim(&fleet.addr().to_string())
        .args(["--scenario", "idle", "--serial-prefix", "IDLE-"])
        .args(["--devices", &IDLE.to_string(), "--duration", "120s"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let rt = runtime();
    rt.block_on(async {
        let mut redis = fleet.redis().await;
        let (mut device, _) = connect(fleet.addr(), &serial("CTRL-0042")).await;
        // Every session established, not only subscribed: a serial's
        // channel is subscribed from the start of its handshake, and a
        // handshake that fails under load (the simulator then reconnects
        // after its backoff) is not what this test cuts under.
        eventually("every session to be established and subscribed", DEADLINE, || {
            let mut redis = redis.clone();
            let sessions = fleet.drivers[0].metric("drover_driver_sessions").unwrap_or(0.0);
            async move { sessions == (IDLE + 1) as f64 && command_channels(&mut redis).await == IDLE + 1 }
        })
        .await;

        let mut device_gaps = Vec::new();
        let mut all_gaps = Vec::new();
        for cut in 1..=CUTS {
            let killed: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query_async(&mut redis)
                .await
                .unwrap();
            let cut_at = Instant::now();
            assert_eq!(killed, 1, "the driver's one pub/sub connection");
            eventually(
                &format!("the device's channel resubscribed after cut {cut}"),
                DEADLINE,
                || {
                    let mut redis = redis.clone();
                    async move { subscribers(&mut redis, "cwp:cmd:CTRL-0042").await == 1 }
                },
            )
            .await;
            let device_back = cut_at.elapsed();
            eventually(&format!("every channel resubscribed after cut {cut}"), DEADLINE, || {
                let mut redis = redis.clone();
                async move { command_channels(&mut redis).await == IDLE + 1 }
            })
            .await;
            let all_back = cut_at.elapsed();
            eprintln!(
                "cut {cut}: the device's channel back after {device_back:?}, all {} channels after {all_back:?}",
                IDLE + 1
            );
            device_gaps.push(device_back);
            all_gaps.push(all_back);

            // Commands flow again.
            let message = format!(r#"{{"name":"after-cut-{cut}"}}"#);
            let receivers: i64 = redis::cmd("PUBLISH")
                .arg("cwp:cmd:CTRL-0042")
                .arg(&message)
                .query_async(&mut redis)
                .await
                .unwrap();
            assert_eq!(receivers, 1);
            match device.recv_timeout(DEADLINE).await.unwrap() {
                ServerFrame::Command(command) => assert_eq!(command.name.as_str(), format!("after-cut-{cut}")),
                other => panic!("expected COMMAND, got {other:?}"),
            }
        }
        eprintln!(
            "resubscribe time over {CUTS} cuts with {} sessions (to within the {:?} the test polls at): the device's channel max {:?}, every channel max {:?}",
            IDLE + 1,
            drover_testkit::wait::POLL,
            device_gaps.iter().max().unwrap(),
            all_gaps.iter().max().unwrap()
        );
    });
    assert_eq!(
        fleet.drivers[0]
            .metric("drover_driver_pubsub_reconnects_total")
            .unwrap(),
        f64::from(CUTS),
        "every reconnect is counted"
    );
    idle.kill().unwrap();
    idle.wait().unwrap();
}
