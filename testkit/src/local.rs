//! A whole fleet on one machine: Redis (private unless a URL is given; or
//! a private Redis Cluster), the vendor-bridge, N drivers and M HTTP
//! gateways behind PROXY v2, and HAProxy in front on the fleet port (and
//! the HTTP port). Used by `fleet up`, the benchmark runner and the tests
//! ([`crate::haproxy_fleet`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::components::{BridgeProcess, DriverOptions, DriverProcess, GatewayOptions, GatewayProcess, Logs};
use crate::haproxy::Haproxy;
use crate::lbconfig::{Backend, HttpFrontend, LbConfig, maxconn_for_open_files};
use crate::net::free_port;
use crate::redis::RedisServer;
use crate::redis_cluster::RedisCluster;
use drover_redis::Target;

/// What to start.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Number of drivers.
    pub drivers: usize,
    /// The port devices connect to.
    pub fleet_port: u16,
    /// HAProxy's stats page and Prometheus endpoint.
    pub stats_port: u16,
    /// HAProxy processes sharing the fleet port.
    pub haproxy_processes: usize,
    /// Use this Redis instead of starting a private one.
    pub redis_url: Option<String>,
    /// Start a private Redis Cluster instead (masters, replicas of each).
    pub redis_cluster: Option<(usize, usize)>,
    /// `REDIS_EVENT_PARTITIONS` for the bridge.
    pub event_partitions: u32,
    /// `CWP_MASTER_KEY` for every driver.
    pub master_key_hex: String,
    /// Where logs, the HAProxy config, Redis data and uploads go.
    pub state_dir: PathBuf,
    /// Log files in `state_dir` (true) or discarded (false).
    pub log_files: bool,
    /// More variables for every driver.
    pub driver_env: Vec<(String, String)>,
    /// Open files each HAProxy process may use; sizes its maxconn.
    pub haproxy_open_files: u64,
    /// HTTP gateways (`http-gateway`) behind HAProxy's HTTP frontend on
    /// `http_port`; 0: none, and no HTTP frontend.
    pub gateways: usize,
    /// The port HTTP clients connect to.
    pub http_port: u16,
}

/// A running local fleet. Dropping it kills everything; [`LocalFleet::stop`]
/// stops it gracefully.
#[derive(Debug)]
pub struct LocalFleet {
    /// The private Redis, if one was started.
    pub redis: Option<RedisServer>,
    /// The private Redis Cluster, if one was started.
    pub cluster: Option<RedisCluster>,
    /// Redis (or the cluster), as the components reach it.
    pub redis_target: Target,
    /// Redis's URL; a cluster's seed nodes, comma-separated.
    pub redis_url: String,
    /// The vendor-bridge.
    pub bridge: BridgeProcess,
    /// The drivers, in HAProxy's order (`driver-1` first).
    pub drivers: Vec<DriverProcess>,
    /// The HTTP gateways, in HAProxy's order (`gateway-1` first).
    pub gateways: Vec<GatewayProcess>,
    /// HAProxy.
    pub haproxy: Haproxy,
    /// The options every driver was started with.
    pub driver_options: DriverOptions,
    spec: FleetSpec,
}

impl FleetSpec {
    fn logs(&self, name: &str) -> Logs {
        if self.log_files {
            Logs::File(self.state_dir.join("logs").join(format!("{name}.log")))
        } else {
            Logs::Discard
        }
    }
}

impl LocalFleet {
    /// Starts every component and waits until each is ready.
    pub fn start(spec: FleetSpec) -> anyhow::Result<Self> {
        std::fs::create_dir_all(spec.state_dir.join("logs"))
            .with_context(|| format!("creating {}", spec.state_dir.display()))?;
        let (redis, cluster, redis_url) = match (&spec.redis_url, spec.redis_cluster) {
            (Some(url), _) => (None, None, url.clone()),
            (None, Some((masters, replicas))) => {
                let cluster = RedisCluster::start(masters, replicas)?;
                let seeds = cluster.seeds();
                (None, Some(cluster), seeds)
            }
            (None, None) => {
                let server = RedisServer::start_in(&spec.state_dir.join("redis"), free_port()?)?;
                let url = server.url();
                (Some(server), None, url)
            }
        };
        let redis_target = match &cluster {
            Some(cluster) => cluster.target(),
            None => Target::Single(redis_url.clone()),
        };
        // The bridge asks its callers for a token even on loopback: any
        // process of this host could otherwise store events as a driver.
        let token_file = bridge_token_file(&spec.state_dir)?.display().to_string();
        let mut bridge_env = vec![
            ("BRIDGE_TOKEN_FILE", token_file.clone()),
            ("REDIS_EVENT_PARTITIONS", spec.event_partitions.to_string()),
        ];
        let mut driver_env = vec![
            (
                "UPLOAD_DIR".to_owned(),
                spec.state_dir.join("uploads").display().to_string(),
            ),
            ("VENDOR_BRIDGE_TOKEN_FILE".to_owned(), token_file),
        ];
        if cluster.is_some() {
            bridge_env.push(("REDIS_CLUSTER_NODES", redis_url.clone()));
            driver_env.push(("REDIS_CLUSTER_NODES".to_owned(), redis_url.clone()));
        }
        let bridge = BridgeProcess::start(&redis_url, &spec.logs("vendor-bridge"), &bridge_env)?;
        driver_env.extend(spec.driver_env.iter().cloned());
        let mut driver_options = DriverOptions {
            bridge_url: bridge.url(),
            redis_url: redis_url.clone(),
            master_key_hex: spec.master_key_hex.clone(),
            proxy_protocol: true,
            extra_env: driver_env,
            logs: Logs::Discard,
        };
        let mut drivers = Vec::with_capacity(spec.drivers);
        for i in 1..=spec.drivers {
            driver_options.logs = spec.logs(&format!("driver-{i}"));
            drivers.push(DriverProcess::start(&driver_options).with_context(|| format!("starting driver-{i}"))?);
        }
        let mut gateways = Vec::with_capacity(spec.gateways);
        for i in 1..=spec.gateways {
            let options = GatewayOptions {
                bridge_url: bridge.url(),
                redis_url: redis_url.clone(),
                master_key_hex: spec.master_key_hex.clone(),
                proxy_protocol: true,
                extra_env: driver_options.extra_env.clone(),
                logs: spec.logs(&format!("gateway-{i}")),
            };
            gateways.push(GatewayProcess::start(&options).with_context(|| format!("starting gateway-{i}"))?);
        }
        let haproxy = Haproxy::start(
            &Self::lb_config(&spec, &drivers, &gateways),
            spec.haproxy_processes,
            &spec.state_dir,
            &spec.logs("haproxy"),
        )?;
        Ok(Self {
            redis,
            cluster,
            redis_target,
            redis_url,
            bridge,
            drivers,
            gateways,
            haproxy,
            driver_options,
            spec,
        })
    }

    fn lb_config(spec: &FleetSpec, drivers: &[DriverProcess], gateways: &[GatewayProcess]) -> LbConfig {
        let http = (!gateways.is_empty()).then(|| HttpFrontend::local(spec.http_port, gateways));
        LbConfig {
            bind: "127.0.0.1".to_owned(),
            fleet_port: spec.fleet_port,
            maxconn: maxconn_for_open_files(spec.haproxy_open_files),
            threads: 2,
            heartbeat_s: 30,
            stats_bind: "127.0.0.1".to_owned(),
            stats_port: spec.stats_port,
            backends: drivers
                .iter()
                .enumerate()
                .map(|(i, d)| Backend {
                    name: format!("driver-{}", i + 1),
                    host: "127.0.0.1".to_owned(),
                    port: d.addr().port(),
                    admin_port: d.admin_addr().port(),
                })
                .collect(),
            resolver: None,
            http,
            command: format!("fleet up --drivers {} --gateways {}", drivers.len(), gateways.len()),
        }
    }

    /// Restarts driver `index` on the same ports: SIGTERM, wait for its
    /// drain to finish, start it again and wait until it is healthy.
    pub fn restart_driver(&mut self, index: usize, drain_timeout: Duration) -> anyhow::Result<()> {
        let old = &mut self.drivers[index];
        let (port, admin_port) = (old.addr().port(), old.admin_addr().port());
        old.process().stop(drain_timeout);
        let mut options = self.driver_options.clone();
        options.logs = self.spec.logs(&format!("driver-{}", index + 1));
        self.drivers[index] = DriverProcess::start_on(port, admin_port, &options)?;
        Ok(())
    }

    /// Stops everything in order: drivers and gateways drain first (devices
    /// are told to reconnect later, acks and answers are flushed), then HAProxy, the
    /// bridge and Redis.
    pub fn stop(&mut self, drain_timeout: Duration) {
        for driver in &mut self.drivers {
            let _ = driver.process().signal(nix::sys::signal::Signal::SIGTERM);
        }
        for gateway in &mut self.gateways {
            let _ = gateway.process().signal(nix::sys::signal::Signal::SIGTERM);
        }
        for driver in &mut self.drivers {
            driver.process().stop(drain_timeout);
        }
        for gateway in &mut self.gateways {
            gateway.process().stop(drain_timeout);
        }
        self.haproxy.stop();
        self.bridge.process().stop(Duration::from_secs(10));
        if let Some(redis) = &mut self.redis {
            redis.shutdown();
        }
        if let Some(cluster) = &mut self.cluster {
            for node in 0..cluster.nodes().len() {
                cluster.node_mut(node).shutdown();
            }
        }
    }
}

/// `bridge.token` in the state directory: the token the local bridge asks
/// for and the drivers present, readable by its owner only. Created with
/// 32 random bytes (hex) on the first start, kept for the next.
fn bridge_token_file(state_dir: &Path) -> anyhow::Result<PathBuf> {
    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::OpenOptionsExt as _;

    let path = state_dir.join("bridge.token");
    if path.exists() {
        return Ok(path);
    }
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut random))
        .context("reading /dev/urandom")?;
    let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(token.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
