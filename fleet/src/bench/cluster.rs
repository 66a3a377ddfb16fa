//! One Redis against a Redis Cluster, in one run: the events a single
//! driver gets acknowledged per second, Redis's CPU per stored event, and
//! the ack latency at a fixed rate, with one Redis (the single layout), with
//! a 3-master cluster holding 1, 3 and 12 event partitions, and with a
//! replica per master, without and with `BRIDGE_WAIT_REPLICAS=1` (the cost
//! of `WAIT`).
//!
//! On a 2-core machine no speed-up can show: every Redis shares the same two
//! cores with the driver, the bridge and the simulator. What the run shows
//! is what the cluster costs per event (Redis CPU summed over every node),
//! that partitions spread the work over the masters, and what `WAIT` adds.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Instant;

use anyhow::bail;
use drover_schema::Layout;
use drover_testkit::binaries::binary;
use drover_testkit::components::{BridgeProcess, DriverOptions, DriverProcess, Logs};
use drover_testkit::net::free_port;
use drover_testkit::redis::RedisServer;
use drover_testkit::redis_cluster::RedisCluster;

use super::BenchContext;
use super::events::{Consumer, MASTER_KEY_HEX};
use super::probe::{CpuMeter, SimSummary, run_sim};
use super::report::{Table, duration_us, thousands};

/// Devices of every configuration.
const DEVICES: u64 = 1000;
/// The fixed rate at which latency is compared (a quarter or so of one
/// Redis's capacity here).
const FIXED_RATE: f64 = 10_000.0;

/// One configuration of Redis.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// What the table calls it.
    pub label: &'static str,
    /// `None`: one Redis; `Some((masters, replicas))`: a cluster.
    pub cluster: Option<(usize, usize)>,
    /// `REDIS_EVENT_PARTITIONS`.
    pub partitions: u32,
    /// `BRIDGE_WAIT_REPLICAS`.
    pub wait_replicas: u32,
}

/// The configurations, in the order they run.
pub const SHAPES: [Shape; 6] = [
    Shape {
        label: "one Redis",
        cluster: None,
        partitions: 1,
        wait_replicas: 0,
    },
    Shape {
        label: "cluster, 3 masters, P = 1",
        cluster: Some((3, 0)),
        partitions: 1,
        wait_replicas: 0,
    },
    Shape {
        label: "cluster, 3 masters, P = 3",
        cluster: Some((3, 0)),
        partitions: 3,
        wait_replicas: 0,
    },
    Shape {
        label: "cluster, 3 masters, P = 12",
        cluster: Some((3, 0)),
        partitions: 12,
        wait_replicas: 0,
    },
    Shape {
        label: "cluster, 3 masters + 3 replicas, P = 3",
        cluster: Some((3, 1)),
        partitions: 3,
        wait_replicas: 0,
    },
    Shape {
        label: "the same, `BRIDGE_WAIT_REPLICAS=1`",
        cluster: Some((3, 1)),
        partitions: 3,
        wait_replicas: 1,
    },
];

/// What one configuration measured.
#[derive(Debug, Clone)]
pub struct ShapeResult {
    /// The configuration.
    pub shape: Shape,
    /// Offered far above capacity.
    pub saturated: SimSummary,
    /// CPU seconds per process over the saturated phase: every Redis node
    /// (`redis master` / `redis replica`), the bridge, the driver.
    pub cpu: Vec<(String, f64)>,
    /// At [`FIXED_RATE`].
    pub fixed: SimSummary,
    /// Events stored per master at the end (how the partitions spread).
    pub per_master: Vec<u64>,
}

/// Rounds of every configuration: interleaving them spreads the noise of
/// a shared machine over all of them alike.
const ROUNDS: usize = 2;

/// The whole result.
#[derive(Debug, Clone)]
pub struct ClusterResult {
    /// Round by round, one per [`SHAPES`] entry each.
    pub rounds: Vec<Vec<ShapeResult>>,
}

/// Redis as one configuration runs it.
enum Redis {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    fn start(ctx: &BenchContext, shape: &Shape, name: &str) -> anyhow::Result<Self> {
        Ok(match shape.cluster {
            None => Self::Single(RedisServer::start_in(&ctx.work_dir.join(name), free_port()?)?),
            Some((masters, replicas)) => Self::Cluster(RedisCluster::start(masters, replicas)?),
        })
    }

    /// `(role, pid, port)` of every node.
    fn nodes(&self) -> Vec<(&'static str, u32, u16)> {
        match self {
            Self::Single(redis) => vec![("redis master", redis.pid(), redis.port())],
            Self::Cluster(cluster) => cluster
                .nodes()
                .iter()
                .enumerate()
                .map(|(index, node)| {
                    // `redis-cli --cluster create` makes the first nodes the masters.
                    let role = if index < masters_hint(cluster) {
                        "redis master"
                    } else {
                        "redis replica"
                    };
                    (role, node.pid(), node.port())
                })
                .collect(),
        }
    }

    fn bridge_env(&self, shape: &Shape) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("REDIS_EVENT_PARTITIONS", shape.partitions.to_string()),
            ("BRIDGE_WAIT_REPLICAS", shape.wait_replicas.to_string()),
            ("RUST_LOG", "warn".to_owned()),
        ];
        if let Self::Cluster(cluster) = self {
            env.push(("REDIS_CLUSTER_NODES", cluster.seeds()));
        }
        env
    }

    fn url(&self) -> String {
        match self {
            Self::Single(redis) => redis.url(),
            Self::Cluster(cluster) => cluster.seeds(),
        }
    }
}

/// The number of masters of `cluster` (its first node is a master).
fn masters_hint(cluster: &RedisCluster) -> usize {
    let replicas_each = cluster.replicas_of(0).len();
    cluster.nodes().len() / (1 + replicas_each)
}

fn sim_args(driver: std::net::SocketAddr, rate: f64, seconds: u64) -> Vec<String> {
    [
        "--target",
        &driver.to_string(),
        "--devices",
        &DEVICES.to_string(),
        "--rate",
        &format!("{rate:.0}"),
        "--event-size",
        "64",
        "--duration",
        &format!("{seconds}s"),
        "--burst-interval",
        "50ms",
        "--source-ips",
        "127.0.0.2-127.0.0.9",
        "--serial-prefix",
        "CLB-",
        "--connect-rate",
        "2000",
    ]
    .map(str::to_owned)
    .into()
}

fn run_shape(ctx: &BenchContext, index: usize, shape: Shape) -> anyhow::Result<ShapeResult> {
    let name = format!("cluster-{index}");
    let redis = Redis::start(ctx, &shape, &name)?;
    let logs = |what: &str| Logs::File(ctx.log_dir.join(format!("{name}-{what}.log")));
    let mut bridge = BridgeProcess::start(&redis.url(), &logs("bridge"), &redis.bridge_env(&shape))?;
    let mut extra_env = vec![
        ("RUST_LOG".to_owned(), "warn".to_owned()),
        ("DRIVER_MAX_PENDING_EVENTS".to_owned(), (DEVICES * 256).to_string()),
    ];
    if let Redis::Cluster(cluster) = &redis {
        extra_env.push(("REDIS_CLUSTER_NODES".to_owned(), cluster.seeds()));
    }
    let mut driver = DriverProcess::start(&DriverOptions {
        bridge_url: bridge.url(),
        redis_url: redis.url(),
        master_key_hex: MASTER_KEY_HEX.to_owned(),
        proxy_protocol: false,
        extra_env,
        logs: logs("driver"),
    })?;
    let layout = Layout::for_deployment(shape.cluster.is_some(), shape.partitions)?;
    let nodes = redis.nodes();
    let _consumer = Consumer::start(nodes[0].2, layout.event_streams());

    let sim = binary("controller-sim")?;
    let seconds = ctx.phase_seconds();
    let mut processes: Vec<(&str, u32)> = nodes.iter().map(|(role, pid, _)| (*role, *pid)).collect();
    processes.push(("vendor-bridge", bridge.process().pid()));
    processes.push(("driver", driver.process().pid()));
    let meter = CpuMeter::start(&processes);
    let saturated = run_sim(&sim, MASTER_KEY_HEX, &sim_args(driver.addr(), 400_000.0, seconds))?;
    let cpu = meter.stop();
    if saturated.events_acked == 0 {
        bail!("{}: no event was acknowledged: {saturated:?}", shape.label);
    }
    let fixed = run_sim(&sim, MASTER_KEY_HEX, &sim_args(driver.addr(), FIXED_RATE, seconds))?;

    // Events per master: each stream's entries on the master that holds it.
    let masters: Vec<u16> = nodes
        .iter()
        .filter(|(role, _, _)| *role == "redis master")
        .map(|(_, _, port)| *port)
        .collect();
    let mut per_master = vec![0u64; masters.len()];
    for stream in layout.event_streams() {
        let port = match &redis {
            Redis::Single(server) => server.port(),
            Redis::Cluster(cluster) => cluster.nodes()[cluster.master_of(&stream)?].port(),
        };
        if let Some(index) = masters.iter().position(|p| *p == port) {
            per_master[index] += entries_added(port, &stream);
        }
    }
    Ok(ShapeResult {
        shape,
        saturated,
        cpu,
        fixed,
        per_master,
    })
}

/// Entries ever added to `stream` on the node at `port` (`XINFO STREAM`'s
/// `entries-added` survives trimming).
fn entries_added(port: u16, stream: &str) -> u64 {
    let info = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(["XINFO", "STREAM", stream])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut lines = info.lines();
    while let Some(line) = lines.next() {
        if line == "entries-added" {
            return lines.next().and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        }
    }
    0
}

/// Runs every configuration.
pub fn run(ctx: &BenchContext) -> anyhow::Result<ClusterResult> {
    let started = Instant::now();
    let mut rounds = Vec::new();
    for round in 1..=ROUNDS {
        let mut shapes = Vec::new();
        for (index, shape) in SHAPES.into_iter().enumerate() {
            eprintln!(
                "cluster bench, round {round}: {} ({:.0} s in)",
                shape.label,
                started.elapsed().as_secs_f64()
            );
            shapes.push(run_shape(ctx, index + 10 * round, shape)?);
        }
        rounds.push(shapes);
    }
    Ok(ClusterResult { rounds })
}

impl ShapeResult {
    fn cpu_per_event_us(&self, role: &str) -> f64 {
        let seconds: f64 = self.cpu.iter().filter(|(name, _)| name == role).map(|(_, s)| s).sum();
        seconds * 1e6 / self.saturated.events_acked.max(1) as f64
    }
}

impl ClusterResult {
    /// The section for docs/BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let mut text = String::new();
        let mut table = Table::new(&[
            "Redis",
            "round",
            "events/s (saturated)",
            "Redis CPU per event: masters",
            "replicas",
            "bridge",
            "driver",
            "events per master",
            &format!("at {} /s: ack p50", thousands(FIXED_RATE)),
            "p99",
            "p99.9",
        ]);
        let shapes = self.rounds.first().map_or(0, Vec::len);
        let ordered = (0..shapes).flat_map(|shape| {
            self.rounds
                .iter()
                .enumerate()
                .map(move |(round, results)| (round, &results[shape]))
        });
        for (round, result) in ordered {
            let replicas = if result.shape.cluster.is_some_and(|(_, r)| r > 0) {
                format!("{:.1} µs", result.cpu_per_event_us("redis replica"))
            } else {
                "—".to_owned()
            };
            let latency = &result.fixed.ack_latency_us;
            table.row(vec![
                result.shape.label.to_owned(),
                (round + 1).to_string(),
                format!("**{}**", thousands(result.saturated.acked_per_s)),
                format!("{:.1} µs", result.cpu_per_event_us("redis master")),
                replicas,
                format!("{:.1} µs", result.cpu_per_event_us("vendor-bridge")),
                format!("{:.1} µs", result.cpu_per_event_us("driver")),
                result
                    .per_master
                    .iter()
                    .map(|n| thousands(*n as f64))
                    .collect::<Vec<_>>()
                    .join(" / "),
                duration_us(latency.p50 as f64),
                duration_us(latency.p99 as f64),
                duration_us(latency.p999 as f64),
            ]);
        }
        text.push_str(&table.render());
        let mean = |shape: usize| {
            self.rounds
                .iter()
                .map(|results| results[shape].saturated.acked_per_s)
                .sum::<f64>()
                / self.rounds.len().max(1) as f64
        };
        let single = mean(0);
        let _ = writeln!(
            text,
            "\n{} devices on one driver, 64-byte events, every Redis node with `appendfsync always`; {} rounds, each running every configuration in turn; CPU per acknowledged event from `/proc` over the saturated phase (every node of a role summed); \"events per master\": entries added to the streams each master holds. Events/s relative to one Redis (mean of the rounds): {}.",
            thousands(DEVICES as f64),
            self.rounds.len(),
            SHAPES
                .iter()
                .enumerate()
                .skip(1)
                .map(|(index, shape)| format!("{} {:.2}×", shape.label, mean(index) / single.max(1.0)))
                .collect::<Vec<_>>()
                .join("; ")
        );
        text
    }
}
