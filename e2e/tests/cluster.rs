//! Drover on a Redis Cluster (three masters on loopback, started by the
//! test kit with `redis-cli --cluster create`): events exactly once over
//! partitioned streams, commands and results as sharded pub/sub
//! (`SPUBLISH`, `SSUBSCRIBE`), a session superseded across drivers, an
//! upload recorded once, the layout enforced; then a slot migration and a
//! master's failover under load, with nothing acknowledged lost and nothing
//! stored twice.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use cwp::{CommandId, ServerFrame};
use drover_redis::{Delivery, Subscriber, Timeouts};
use drover_schema::Layout;
use drover_testkit::cluster_fleet::ClusterFleet;
use drover_testkit::device::{connect, ok_result, serial};
use drover_testkit::fleet::runtime;
use drover_testkit::inspect::stored_events;
use drover_testkit::redis_cluster::RedisCluster;
use drover_testkit::sim::{controller_sim, sim_summary, verified};

const WAIT: Duration = Duration::from_secs(15);

const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(5),
    response: Duration::from_secs(5),
};

/// Runs `controller-sim` against `fleet`'s first driver, verifying in the
/// cluster that every acknowledged event is stored exactly once.
fn simulate(fleet: &ClusterFleet, devices: u32, rate: u32, duration: &str) -> std::process::Child {
    controller_sim(&fleet.addr().to_string())
        .args(["--devices", &devices.to_string(), "--rate", &rate.to_string()])
        .args(["--duration", duration])
        .args(["--verify-redis-cluster", &fleet.cluster.seeds()])
        .spawn()
        .unwrap()
}

#[test]
fn events_of_many_devices_are_stored_exactly_once_each_in_its_serials_partition() {
    let fleet = ClusterFleet::start(RedisCluster::start(3, 0).unwrap(), 6, 1, &[], &[]);
    let summary = verified(sim_summary(simulate(&fleet, 60, 2000, "3s")), "controller-sim");
    eprintln!("{summary}");

    let layout = Layout::partitioned(6).unwrap();
    runtime().block_on(async {
        let mut redis = fleet.redis();
        let recorded: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(drover_schema::LAYOUT)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(recorded["partitions"], "6");
        assert_eq!(recorded["streams"], layout.event_streams().join(","));

        // Every partition holds events, and only its own serials'.
        let mut per_partition = vec![0u64; 6];
        for stream in layout.event_streams() {
            let index = layout.event_streams().iter().position(|s| *s == stream).unwrap();
            let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&stream)
                .arg("-")
                .arg("+")
                .query_async(&mut redis)
                .await
                .unwrap();
            for entry in &entries.ids {
                let text: String = entry.get("serial").unwrap();
                let partition = layout.partition_of(&serial(&text));
                assert_eq!(usize::from(partition.index()), index, "{text} is in {stream}");
            }
            per_partition[index] = entries.ids.len() as u64;
        }
        assert!(per_partition.iter().all(|&n| n > 0), "{per_partition:?}");
        // The partitions are spread over the three masters.
        let masters: std::collections::HashSet<usize> = layout
            .event_streams()
            .iter()
            .map(|stream| fleet.cluster.master_of(stream).unwrap())
            .collect();
        assert_eq!(masters.len(), 3, "six partitions on three masters");
        // The registry entry of a device is in its partition, and current.
        let device = serial("SIM-000001");
        let entry: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(layout.device(&device))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(entry["driver"], fleet.drivers[0].driver_id());
        let stored = stored_events(&mut redis).await;
        assert_eq!(stored.len() as u64, per_partition.iter().sum::<u64>());
    });
}

#[test]
fn a_command_sent_with_spublish_reaches_its_device_and_the_result_arrives_by_ssubscribe() {
    let fleet = ClusterFleet::start(RedisCluster::start(3, 0).unwrap(), 3, 1, &[], &[]);
    runtime().block_on(async {
        let mut results = Subscriber::connect(&fleet.target(), TIMEOUTS).await.unwrap();
        results
            .subscribe(vec!["cwp:cmd-result:CTRL-0042".to_owned()])
            .await
            .unwrap();
        let (mut device, _) = connect(fleet.addr(), &serial("CTRL-0042")).await;
        let mut redis = fleet.redis();

        let receivers: i64 = redis::cmd("SPUBLISH")
            .arg("cwp:cmd:CTRL-0042")
            .arg(r#"{"id":"11111111-1111-1111-1111-111111111111","name":"reboot"}"#)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(receivers, 1, "SPUBLISH counts the online device");
        let command = match device.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::Command(command) => command,
            other => panic!("expected COMMAND, got {other:?}"),
        };
        assert_eq!(command.command_id, CommandId([0x11; 16]));

        device.send(&ok_result(1, command.command_id)).await.unwrap();
        let notice = tokio::time::timeout(WAIT, results.next()).await.unwrap().unwrap();
        let Delivery::Message { channel, payload } = notice else {
            panic!("expected the result, got {notice:?}")
        };
        assert_eq!(channel, "cwp:cmd-result:CTRL-0042");
        let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(json["id"], "11111111-1111-1111-1111-111111111111");
        assert_eq!(json["status"], "OK");
        assert_eq!(json["data"], "done");

        // The control: offline, nobody receives it.
        drop(device);
        drover_testkit::wait::eventually("the session to end", WAIT, || async {
            let receivers: i64 = redis::cmd("SPUBLISH")
                .arg("cwp:cmd:CTRL-0042")
                .arg(r#"{"name":"ping"}"#)
                .query_async(&mut fleet.redis())
                .await
                .unwrap();
            receivers == 0
        })
        .await;
    });
}

#[test]
fn a_session_opened_on_another_driver_supersedes_the_first() {
    let fleet = ClusterFleet::start(RedisCluster::start(3, 0).unwrap(), 3, 2, &[], &[]);
    runtime().block_on(async {
        let device = serial("CTRL-0042");
        let (mut first, _) = connect(fleet.drivers[0].addr(), &device).await;
        let (_second, _) = connect(fleet.drivers[1].addr(), &device).await;
        match first.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::Bye(bye) => assert_eq!(bye.reason, cwp::ByeReason::SUPERSEDED),
            other => panic!("expected BYE SUPERSEDED, got {other:?}"),
        }
        let layout = Layout::partitioned(3).unwrap();
        let entry: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(layout.device(&device))
            .query_async(&mut fleet.redis())
            .await
            .unwrap();
        assert_eq!(entry["driver"], fleet.drivers[1].driver_id());
        assert_eq!(entry["online"], "1");
        let members = |driver: &str| {
            let key = layout.driver_devices(driver);
            let mut redis = fleet.redis();
            async move {
                let members: Vec<String> = redis::cmd("SMEMBERS").arg(key).query_async(&mut redis).await.unwrap();
                members
            }
        };
        assert_eq!(members(fleet.drivers[1].driver_id()).await, ["CTRL-0042"]);
        assert!(members(fleet.drivers[0].driver_id()).await.is_empty());
    });
}

/// A bridge configured with another number of partitions than the cluster
/// records stores nothing: a device cannot even open its session. The
/// control is the same device on the fleet's own bridge.
#[test]
fn a_bridge_with_another_number_of_partitions_stores_nothing() {
    let fleet = ClusterFleet::start(RedisCluster::start(3, 0).unwrap(), 3, 1, &[], &[]);
    runtime().block_on(async {
        // The fleet's bridge recorded three partitions (its first check).
        let (_device, _) = connect(fleet.addr(), &serial("CTRL-0001")).await;
    });
    let mut env = fleet.bridge_env.clone();
    env.retain(|(name, _)| *name != "REDIS_EVENT_PARTITIONS");
    env.push(("REDIS_EVENT_PARTITIONS", "4".to_owned()));
    let other = drover_testkit::components::BridgeProcess::start(
        "redis://unused.invalid:1",
        &drover_testkit::fleet::logs(),
        &env,
    )
    .unwrap();
    let mut options = fleet.driver_options.clone();
    options.bridge_url = other.url();
    let driver = drover_testkit::components::DriverProcess::start(&options).unwrap();
    runtime().block_on(async {
        let mut device = controller_sim::client::Connection::connect(driver.addr())
            .await
            .unwrap();
        let refused = device
            .handshake(
                serial("CTRL-0002"),
                &drover_testkit::device::device_key(&serial("CTRL-0002")),
                "fw",
            )
            .await;
        assert!(
            refused.is_err(),
            "no session opens through a bridge with another layout"
        );
        let stored = stored_events(&mut fleet.redis()).await;
        assert!(stored.is_empty());
        let layout: String = redis::cmd("HGET")
            .arg(drover_schema::LAYOUT)
            .arg("partitions")
            .query_async(&mut fleet.redis())
            .await
            .unwrap();
        assert_eq!(layout, "3", "the record is not overwritten");
    });
}

/// `redis-cli` against node `port`.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A serial whose command channel's slot is at most `highest`.
fn serial_with_channel_slot_at_most(highest: u16) -> cwp::Serial {
    (0..)
        .map(|n| serial(&format!("MOVE-{n}")))
        .find(|s| drover_schema::layout::slot(drover_schema::COMMANDS.name(s).as_bytes()) <= highest)
        .unwrap()
}

/// `redis-cli --cluster reshard` moves the slots of one partition's stream,
/// high-water marks and registry entries (with their keys) to another
/// master while devices send events: the scripts meet `ASK` and `TRYAGAIN`
/// mid-migration and the bridge retries; nothing acknowledged is lost,
/// nothing stored twice. A device whose command channel moved with the
/// slots still gets its commands: its driver subscribes the channel again
/// on the new owner when the old one drops it.
#[test]
fn a_slot_migration_during_traffic_loses_and_duplicates_nothing_and_commands_follow_the_slots() {
    let fleet = ClusterFleet::start(RedisCluster::start(3, 0).unwrap(), 3, 1, &[], &[]);
    let layout = Layout::partitioned(3).unwrap();
    let moving = layout.event_streams()[0].clone();
    let slot = drover_schema::layout::slot(moving.as_bytes());
    let from = fleet.cluster.master_of(&moving).unwrap();
    let to = (from + 1) % 3;
    let node_id = |index: usize| {
        redis_cli(fleet.cluster.nodes()[index].port(), &["CLUSTER", "MYID"])
            .trim()
            .to_owned()
    };
    let watched = serial_with_channel_slot_at_most(slot);

    let rt = runtime();
    let (mut device, _) = rt.block_on(connect(fleet.addr(), &watched));
    let sim = simulate(&fleet, 60, 1500, "8s");
    std::thread::sleep(Duration::from_secs(2));
    // Every slot from the lowest of `from` up to the partition's: redis-cli
    // moves a source's slots lowest first.
    let moved = redis_cli(
        fleet.cluster.nodes()[from].port(),
        &[
            "--cluster",
            "reshard",
            &format!("127.0.0.1:{}", fleet.cluster.nodes()[from].port()),
            "--cluster-from",
            &node_id(from),
            "--cluster-to",
            &node_id(to),
            "--cluster-slots",
            &(u32::from(slot) + 1 - u32::from(slot) / 5462 * 5462).to_string(),
            "--cluster-yes",
        ],
    );
    assert!(moved.contains("Moving slot"), "{moved}");
    assert_eq!(
        fleet.cluster.master_of(&moving).unwrap(),
        to,
        "the partition's slot moved"
    );
    let summary = verified(sim_summary(sim), "controller-sim");
    eprintln!("{summary}");
    assert!(drover_testkit::sim::count(&summary, "events_acked") > 0);

    // The command channel moved too, and its device still gets commands.
    assert_eq!(
        fleet
            .cluster
            .master_of(&drover_schema::COMMANDS.name(&watched))
            .unwrap(),
        to
    );
    rt.block_on(async {
        let channel = drover_schema::COMMANDS.name(&watched);
        drover_testkit::wait::eventually("the moved channel to be subscribed again", WAIT, || async {
            let receivers: i64 = redis::cmd("SPUBLISH")
                .arg(&channel)
                .arg(r#"{"name":"after-the-move"}"#)
                .query_async(&mut fleet.redis())
                .await
                .unwrap();
            receivers == 1
        })
        .await;
        loop {
            match device.recv_timeout(WAIT).await.unwrap() {
                ServerFrame::Command(command) => {
                    assert_eq!(command.name.as_str(), "after-the-move");
                    break;
                }
                ServerFrame::Ping(_) => {}
                other => panic!("expected the command, got {other:?}"),
            }
        }
    });
}

/// Redis replication is asynchronous: a master can acknowledge a write its
/// replica never received, and a failover then loses it. With
/// `BRIDGE_WAIT_REPLICAS=1` the bridge acknowledges a batch only once a
/// replica has it (`WAIT`). Both runs below stop partition 0's replica
/// (`SIGSTOP`) and cut its replication link while devices send, kill its
/// master, let the replica go on and be promoted, then start the old master again (it rejoins as the new
/// master's replica, so that writes can be confirmed again). With `WAIT`,
/// nothing acknowledged is lost; without it (the control), events
/// acknowledged while the replica was stopped are.
fn failover_with_a_lagging_replica(wait_replicas: u32) -> serde_json::Value {
    let cluster = RedisCluster::start_with(3, 1, &["--cluster-replica-validity-factor", "0"]).unwrap();
    let bridge_env = [
        ("BRIDGE_WAIT_REPLICAS", wait_replicas.to_string()),
        ("BRIDGE_WAIT_TIMEOUT", "500ms".to_owned()),
    ];
    let mut fleet = ClusterFleet::start(cluster, 3, 1, &bridge_env, &[]);
    let layout = Layout::partitioned(3).unwrap();
    let stream = layout.event_streams()[0].clone();
    let master = fleet.cluster.master_of(&stream).unwrap();
    let replica = fleet.cluster.replicas_of(master)[0];

    let sim = controller_sim(&fleet.addr().to_string())
        .args([
            "--devices",
            "60",
            "--rate",
            "600",
            "--event-size",
            "4096",
            "--duration",
            "25s",
        ])
        .args(["--verify-redis-cluster", &fleet.cluster.seeds()])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let replica_pid = nix::unistd::Pid::from_raw(fleet.cluster.nodes()[replica].pid() as i32);
    let signal = |signal| nix::sys::signal::kill(replica_pid, signal).unwrap();
    signal(nix::sys::signal::Signal::SIGSTOP);
    // Cut the replication link too: what the master wrote into it so far
    // stays in the stopped replica's socket buffer; what it acknowledges
    // from now on never reaches the replica.
    redis_cli(
        fleet.cluster.nodes()[master].port(),
        &["CLIENT", "KILL", "TYPE", "replica"],
    );
    std::thread::sleep(Duration::from_secs(3));
    fleet.cluster.node_mut(master).stop();
    signal(nix::sys::signal::Signal::SIGCONT);
    drover_testkit::wait::wait_until("the replica to be promoted", Duration::from_secs(30), || {
        fleet.cluster.master_of(&stream).is_ok_and(|index| index == replica)
    })
    .unwrap();
    fleet.cluster.node_mut(master).start_again().unwrap();
    fleet.cluster.wait_until_ok(Duration::from_secs(30)).unwrap();
    // Its summary whatever the verdict (controller-sim exits 3 when it
    // finds acknowledged events missing).
    let output = sim.wait_with_output().unwrap();
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn with_wait_for_a_replica_a_failover_under_load_loses_nothing_acknowledged() {
    let summary = verified(failover_with_a_lagging_replica(1), "controller-sim");
    eprintln!("{summary}");
    // Acknowledgements resume once the old master is the new one's replica.
    assert!(drover_testkit::sim::count(&summary, "events_acked") > 1000, "{summary}");
}

#[test]
fn without_wait_a_failover_loses_events_the_old_master_acknowledged_the_control() {
    let summary = failover_with_a_lagging_replica(0);
    eprintln!("{summary}");
    let lost = summary["verification"]["missing"].as_u64().unwrap_or(0);
    assert!(
        lost > 0,
        "the control: acknowledged events are lost without WAIT: {summary}"
    );
}

/// Uploads on a cluster: each completed upload is recorded once in
/// `cwp:uploads`, its marker in the stream's slot (the record script's two
/// keys share a slot, or the cluster would refuse it with `CROSSSLOT`).
#[test]
fn uploads_complete_and_are_recorded_once_each_on_a_cluster() {
    let fleet = ClusterFleet::start(RedisCluster::start(3, 0).unwrap(), 3, 1, &[], &[]);
    let summary = sim_summary(
        controller_sim(&fleet.addr().to_string())
            .args(["--devices", "3", "--serial-prefix", "UPL-", "--scenario", "upload"])
            .args(["--upload-bytes", "300000", "--duration", "60s"])
            .spawn()
            .unwrap(),
    );
    assert_eq!(summary["uploads"]["completed"], 3, "{summary}");
    let layout = Layout::partitioned(3).unwrap();
    runtime().block_on(async {
        let mut redis = fleet.redis();
        let records: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(drover_schema::UPLOADS)
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await
            .unwrap();
        let mut serials: Vec<String> = Vec::new();
        for record in &records.ids {
            let text: String = record.get(drover_schema::upload_fields::SERIAL).unwrap();
            let upload_id: String = record.get(drover_schema::upload_fields::UPLOAD_ID).unwrap();
            let size: u64 = record.get(drover_schema::upload_fields::SIZE).unwrap();
            assert_eq!(size, 300_000);
            let marker = layout.upload_recorded(&serial(&text), &upload_id);
            assert_eq!(
                fleet.cluster.master_of(&marker).unwrap(),
                fleet.cluster.master_of(drover_schema::UPLOADS).unwrap()
            );
            let exists: bool = redis::cmd("EXISTS").arg(&marker).query_async(&mut redis).await.unwrap();
            assert!(exists, "{marker}");
            serials.push(text);
        }
        serials.sort();
        assert_eq!(
            serials,
            ["UPL-000001", "UPL-000002", "UPL-000003"],
            "one record per upload"
        );
    });
}
