//! A private Redis Cluster on loopback: `masters` nodes, each with
//! `replicas` replicas, every node a [`RedisServer`] configured as in
//! production (append-only, fsynced on every write) plus
//! `--cluster-enabled yes`, joined with `redis-cli --cluster create` as an
//! operator would. The cluster bus of each node gets a free port of its own
//! (`--cluster-port`), so nothing assumes the port + 10000 convention.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::net::free_port;
use crate::process::find_on_path;
use crate::redis::RedisServer;
use crate::wait::wait_until;

/// How long a node may be unreachable before the others fail it over (the
/// production default is 15 s; tests want failovers in a few seconds).
pub const NODE_TIMEOUT_MS: u32 = 2000;

/// A running private Redis Cluster.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    masters: usize,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// `masters` masters with `replicas` replicas each, slots split evenly.
    pub fn start(masters: usize, replicas: usize) -> anyhow::Result<Self> {
        Self::start_with(masters, replicas, &[])
    }

    /// [`RedisCluster::start`] with `extra_args` for every node (after the
    /// defaults, so they win).
    pub fn start_with(masters: usize, replicas: usize, extra_args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("drover-cluster-").tempdir()?;
        let count = masters * (1 + replicas);
        let mut nodes = Vec::with_capacity(count);
        for index in 0..count {
            nodes.push(start_node(&dir.path().join(format!("node-{index}")), extra_args)?);
        }
        let cluster = Self {
            nodes,
            masters,
            _dir: dir,
        };
        cluster.create(replicas)?;
        Ok(cluster)
    }

    /// `redis-cli --cluster create` over every node, then waits until every
    /// node says the cluster is ok and knows every other node.
    fn create(&self, replicas: usize) -> anyhow::Result<()> {
        let cli = find_on_path("redis-cli").context("redis-cli is not installed (it comes with redis-tools)")?;
        let output = Command::new(cli)
            .arg("--cluster")
            .arg("create")
            .args(self.nodes.iter().map(|node| format!("127.0.0.1:{}", node.port())))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .context("running redis-cli --cluster create")?;
        if !output.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        self.wait_until_ok(Duration::from_secs(30))
    }

    /// Waits until every running node reports `cluster_state:ok` and sees
    /// as many nodes as the cluster has.
    pub fn wait_until_ok(&self, timeout: Duration) -> anyhow::Result<()> {
        let expected = self.nodes.len();
        wait_until(
            "the Redis Cluster to be ok on every node, every replica in sync",
            timeout,
            || {
                self.nodes.iter().all(|node| {
                    let ok = cluster_info(node.port()).is_some_and(|info| {
                        info.contains("cluster_state:ok") && info.contains(&format!("cluster_known_nodes:{expected}"))
                    });
                    // A replica still waiting for its first copy of its
                    // master's data (diskless sync starts after 5 s) would
                    // make WAIT time out.
                    let in_sync = redis_cli(node.port(), &["INFO", "replication"])
                        .is_some_and(|info| info.contains("role:master") || info.contains("master_link_status:up"));
                    ok && in_sync
                })
            },
        )?;
        Ok(())
    }

    /// The seed nodes, as `REDIS_CLUSTER_NODES` takes them: every master.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .take(self.masters)
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The cluster as a [`drover_redis::Target`].
    pub fn target(&self) -> drover_redis::Target {
        drover_redis::Target::cluster(&self.seeds()).expect("the seeds are valid URLs")
    }

    /// Every node, in start order (`redis-cli --cluster create` makes the
    /// first `masters` the masters).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Node `index`, to stop, signal or restart.
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    /// The index of the node that is master of `key`'s slot now.
    pub fn master_of(&self, key: &str) -> anyhow::Result<usize> {
        let slot = drover_schema::layout::slot(key.as_bytes());
        for (index, node) in self.nodes.iter().enumerate() {
            let Some(text) = cluster_nodes(node.port()) else {
                continue;
            };
            for line in text.lines().filter(|line| line.contains("myself")) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let is_master = fields.get(2).is_some_and(|flags| flags.contains("master"));
                let owns = fields.iter().skip(8).any(|range| {
                    let (low, high) = range.split_once('-').unwrap_or((range, range));
                    matches!((low.parse::<u16>(), high.parse::<u16>()), (Ok(low), Ok(high)) if (low..=high).contains(&slot))
                });
                if is_master && owns {
                    return Ok(index);
                }
            }
        }
        bail!("no node is master of slot {slot} ({key})")
    }

    /// The indexes of `master`'s replicas, by asking each node whom it
    /// replicates.
    pub fn replicas_of(&self, master: usize) -> Vec<usize> {
        let Some(master_id) = node_id(self.nodes[master].port()) else {
            return Vec::new();
        };
        (0..self.nodes.len())
            .filter(|&index| {
                cluster_nodes(self.nodes[index].port()).is_some_and(|text| {
                    text.lines()
                        .filter(|line| line.contains("myself"))
                        .any(|line| line.split_whitespace().nth(3) == Some(master_id.as_str()))
                })
            })
            .collect()
    }
}

fn start_node(dir: &Path, extra_args: &[&str]) -> anyhow::Result<RedisServer> {
    let bus = free_port()?.to_string();
    let timeout = NODE_TIMEOUT_MS.to_string();
    let mut args = vec![
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-port",
        &bus,
        "--cluster-node-timeout",
        &timeout,
    ];
    args.extend_from_slice(extra_args);
    RedisServer::start_in_with(dir, free_port()?, &args)
}

fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

fn cluster_info(port: u16) -> Option<String> {
    redis_cli(port, &["CLUSTER", "INFO"])
}

fn cluster_nodes(port: u16) -> Option<String> {
    redis_cli(port, &["CLUSTER", "NODES"])
}

fn node_id(port: u16) -> Option<String> {
    redis_cli(port, &["CLUSTER", "MYID"]).map(|id| id.trim().to_owned())
}
