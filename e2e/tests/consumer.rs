//! The example consumer of the README ("Consuming events"),
//! `examples/consumer.py`, run as the main application would run it: one
//! consumer group per event stream, on one Redis and on a Redis Cluster with
//! six partitions. It must hand the application every stored event once,
//! leave the streams trimmed, and hand over what a dead consumer read and
//! never acknowledged.
//!
//! Needs `/usr/bin/python3` with the `redis` module (Debian's
//! `python3-redis`, which `.ci/run` installs); without it the tests say so
//! and pass.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;

use drover_schema::Layout;
use drover_testkit::cluster_fleet::ClusterFleet;
use drover_testkit::device::serial;
use drover_testkit::fleet::{TestFleet, runtime};
use drover_testkit::inspect::stored_events;
use drover_testkit::redis_cluster::RedisCluster;
use drover_testkit::sim::{controller_sim, sim_summary, verified};

const PYTHON: &str = "/usr/bin/python3";

fn python_with_redis() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import redis.cluster"])
        .status()
        .is_ok_and(|status| status.success());
    if !ok {
        eprintln!("SKIPPED: {PYTHON} with the redis module is needed (apt-get install python3-redis)");
    }
    ok
}

fn consumer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/consumer.py")
}

/// Runs the consumer until it has seen no event for two seconds; returns the
/// events it printed, as (serial, event id, stream).
fn consume(redis: &[&str], extra: &[&str]) -> Vec<(String, u64, String)> {
    let output = Command::new(PYTHON)
        .arg(consumer_script())
        .args(redis)
        .args(["--until-idle", "2"])
        .args(extra)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "the consumer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("the consumer prints UTF-8")
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).expect("one JSON object per line");
            (
                event["serial"].as_str().expect("serial").to_owned(),
                event["event_id"].as_u64().expect("event_id"),
                event["stream"].as_str().expect("stream").to_owned(),
            )
        })
        .collect()
}

/// Whether `consumed` holds every stored event exactly once, and nothing
/// else; if not, what is wrong.
fn once_each(consumed: &[(String, u64, String)], stored: &[(String, u64)]) -> Result<(), String> {
    let mut seen = HashSet::new();
    for (serial, event_id, _) in consumed {
        if !seen.insert((serial.clone(), *event_id)) {
            return Err(format!("{serial} {event_id} handed over twice"));
        }
    }
    let stored: HashSet<(String, u64)> = stored.iter().cloned().collect();
    let missing = stored.difference(&seen).count();
    let unexpected = seen.difference(&stored).count();
    if missing + unexpected > 0 {
        return Err(format!(
            "{} events handed over, {} stored: {missing} never handed over, {unexpected} not stored",
            seen.len(),
            stored.len()
        ));
    }
    Ok(())
}

fn assert_once_each(consumed: &[(String, u64, String)], stored: &[(String, u64)]) {
    if let Err(problem) = once_each(consumed, stored) {
        panic!("{problem}");
    }
}

fn stream_lengths(redis: &mut impl redis::ConnectionLike, streams: &[String]) -> Vec<u64> {
    streams
        .iter()
        .map(|stream| redis::cmd("XLEN").arg(stream).query(redis).expect("XLEN"))
        .collect()
}

#[test]
fn on_one_redis_the_example_consumer_hands_over_every_event_once_and_trims_the_stream() {
    if !python_with_redis() {
        return;
    }
    let fleet = TestFleet::start(1, &[]);
    verified(
        sim_summary(
            controller_sim(&fleet.addr().to_string())
                .args(["--devices", "20", "--rate", "1000", "--duration", "2s"])
                .args(["--verify-redis", &fleet.redis.url()])
                .spawn()
                .unwrap(),
        ),
        "controller-sim",
    );
    let stored = runtime().block_on(async { stored_events(&mut fleet.redis().await).await });
    assert!(stored.len() > 1000, "{} events stored", stored.len());

    let url = fleet.redis.url();
    let consumed = consume(&["--redis-url", &url], &[]);
    assert_once_each(&consumed, &stored);

    let mut redis = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    let streams = Layout::SINGLE.event_streams();
    assert_eq!(
        stream_lengths(&mut redis, &streams),
        vec![0],
        "everything acknowledged is trimmed"
    );
    assert!(
        consume(&["--redis-url", &url], &[]).is_empty(),
        "nothing is handed over twice"
    );
}

#[test]
fn on_a_cluster_the_example_consumer_reads_every_partition_and_takes_over_a_dead_consumers_entries() {
    if !python_with_redis() {
        return;
    }
    let fleet = ClusterFleet::start(RedisCluster::start(3, 0).unwrap(), 6, 1, &[], &[]);
    let seeds = fleet.cluster.seeds();
    verified(
        sim_summary(
            controller_sim(&fleet.addr().to_string())
                .args(["--devices", "60", "--rate", "2000", "--duration", "2s"])
                .args(["--verify-redis-cluster", &seeds])
                .spawn()
                .unwrap(),
        ),
        "controller-sim",
    );
    let stored = runtime().block_on(async { stored_events(&mut fleet.redis()).await });
    let layout = Layout::partitioned(6).unwrap();
    let streams = layout.event_streams();
    // The consumer takes host:port seeds.
    let nodes: Vec<String> = fleet
        .cluster
        .nodes()
        .iter()
        .map(|node| format!("127.0.0.1:{}", node.port()))
        .collect();
    let nodes = nodes.join(",");
    let redis = ["--cluster-nodes", nodes.as_str()];

    // The control: a consumer of one partition only misses the other five's
    // events, and the check above says so.
    // (Without acknowledging: a group that trims would drop what the main
    // group has not read yet; the example trims for one group.)
    let partial = consume(&redis, &["--partitions", "0", "--group", "one-partition", "--no-ack"]);
    assert!(!partial.is_empty());
    assert!(partial.iter().all(|(_, _, stream)| *stream == streams[0]));
    assert!(
        partial.len() < stored.len(),
        "one partition of six holds only some events"
    );
    let missed = once_each(&partial, &stored).expect_err("the check notices events never handed over");
    assert!(missed.contains("never handed over"), "{missed}");

    // A consumer that reads and dies before XACK (here: never acks) leaves
    // its entries pending; the next one takes them over, and every event
    // reaches the application at least once, here exactly once.
    let died = consume(&redis, &["--consumer", "dies", "--no-ack"]);
    assert_once_each(&died, &stored);
    let survivor = consume(&redis, &["--consumer", "survivor", "--claim-idle-ms", "0"]);
    assert_once_each(&survivor, &stored);
    let per_stream: HashMap<&str, usize> = survivor.iter().fold(HashMap::new(), |mut counts, (_, _, stream)| {
        *counts.entry(stream.as_str()).or_default() += 1;
        counts
    });
    assert_eq!(per_stream.len(), 6, "every partition holds events: {per_stream:?}");
    for (serial_text, _, stream) in &survivor {
        let partition = layout.partition_of(&serial(serial_text));
        assert_eq!(*stream, streams[usize::from(partition.index())], "{serial_text}");
    }
    assert!(
        consume(&redis, &["--consumer", "survivor"]).is_empty(),
        "nothing is handed over twice"
    );
    // Trimmed up to what the group acknowledged: every stream is empty.
    for stream in &streams {
        let master = &fleet.cluster.nodes()[fleet.cluster.master_of(stream).unwrap()];
        let mut connection = redis::Client::open(master.url()).unwrap().get_connection().unwrap();
        assert_eq!(
            stream_lengths(&mut connection, std::slice::from_ref(stream)),
            vec![0],
            "{stream}"
        );
    }
}
