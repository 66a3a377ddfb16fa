//! The test fleet on a Redis Cluster: a private [`RedisCluster`], one
//! vendor-bridge storing into `partitions` event streams, and drivers whose
//! command channels are sharded (`REDIS_CLUSTER_NODES` for all of them).
//! Like [`crate::fleet::TestFleet`], everything is killed on drop.

use std::net::SocketAddr;

use drover_redis::{Connection, Target, Timeouts};

use crate::components::{BridgeProcess, DriverOptions, DriverProcess};
use crate::device::MASTER_KEY_HEX;
use crate::fleet::logs;
use crate::redis_cluster::RedisCluster;

/// A Redis Cluster, a bridge and drivers.
#[derive(Debug)]
pub struct ClusterFleet {
    /// The cluster.
    pub cluster: RedisCluster,
    /// The vendor-bridge.
    pub bridge: BridgeProcess,
    /// The drivers, in start order.
    pub drivers: Vec<DriverProcess>,
    /// What every driver was started with, to start one more.
    pub driver_options: DriverOptions,
    /// What the bridge was started with (its cluster variables and
    /// `bridge_env`), to start it again.
    pub bridge_env: Vec<(&'static str, String)>,
}

impl ClusterFleet {
    /// A bridge with `partitions` event streams (and `bridge_env`) and
    /// `drivers` drivers (with `driver_env`) on `cluster`.
    pub fn start(
        cluster: RedisCluster,
        partitions: u32,
        drivers: usize,
        bridge_env: &[(&'static str, String)],
        driver_env: &[(&str, &str)],
    ) -> Self {
        let seeds = cluster.seeds();
        let mut env = vec![
            ("REDIS_CLUSTER_NODES", seeds.clone()),
            ("REDIS_EVENT_PARTITIONS", partitions.to_string()),
        ];
        env.extend_from_slice(bridge_env);
        // REDIS_URL is not read when REDIS_CLUSTER_NODES is set.
        let bridge = BridgeProcess::start("redis://unused.invalid:1", &logs(), &env).expect("vendor-bridge starts");
        let mut extra_env: Vec<(String, String)> = vec![("REDIS_CLUSTER_NODES".to_owned(), seeds)];
        extra_env.extend(driver_env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let driver_options = DriverOptions {
            bridge_url: bridge.url(),
            redis_url: "redis://unused.invalid:1".to_owned(),
            master_key_hex: MASTER_KEY_HEX.to_owned(),
            proxy_protocol: false,
            extra_env,
            logs: logs(),
        };
        let drivers = (0..drivers)
            .map(|_| DriverProcess::start(&driver_options).expect("driver starts"))
            .collect();
        Self {
            cluster,
            bridge,
            drivers,
            driver_options,
            bridge_env: env,
        }
    }

    /// The cluster, as the components reach it.
    pub fn target(&self) -> Target {
        self.cluster.target()
    }

    /// The first driver's CWP/1 address.
    pub fn addr(&self) -> SocketAddr {
        self.drivers[0].addr()
    }

    /// A cluster connection for assertions.
    pub fn redis(&self) -> Connection {
        Connection::open(
            &self.target(),
            Timeouts {
                connect: std::time::Duration::from_secs(5),
                response: std::time::Duration::from_secs(30),
            },
        )
        .expect("a cluster connection")
    }
}
