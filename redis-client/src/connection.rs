//! Commands and scripts, on one Redis or a cluster: [`Connection`].

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, ErrorKind, IntoConnectionInfo as _, Pipeline, ProtocolVersion, RedisError, RedisFuture, Value};

use crate::config::Target;

/// How long connecting and each reply may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Dialling one node.
    pub connect: Duration,
    /// One reply.
    pub response: Duration,
}

/// A connection to the deployment's Redis: commands are multiplexed (many
/// callers share it, their commands pipelined), and a lost connection is
/// dialled again on the next call. Cheap to clone; clones share it.
///
/// A call fails at once while Redis (or the slot's master) is away, rather
/// than waiting through a schedule of reconnections: every caller in Drover
/// retries on its own terms (drivers, the bridge's appliers, health checks).
#[derive(Clone)]
pub enum Connection {
    /// One Redis.
    Single(MendingConnection),
    /// A Redis Cluster.
    Cluster {
        /// Routes each command to its slot's master.
        connection: ClusterConnection,
        /// The seed nodes' URLs (their credentials open connections to
        /// single nodes).
        seeds: Arc<[String]>,
    },
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(single) => single.fmt(f),
            Self::Cluster { .. } => f.write_str("Connection::Cluster"),
        }
    }
}

/// How many times a cluster command is retried within one call after a
/// redirection (`MOVED`, `ASK`, `TRYAGAIN` during a slot migration) or a
/// node lost (during a failover): enough to follow a topology change, few
/// enough that a call on a cluster that is down fails within seconds.
const CLUSTER_RETRIES: u32 = 4;

impl Connection {
    /// A connection to `target`, dialled on first use (Redis need not be up
    /// yet). Always RESP2: on RESP3, redis-rs dials a dropped single
    /// connection again in the background, and a caller that must see every
    /// reconnection as a failed call (the bridge's durability gate) would
    /// not.
    pub fn open(target: &Target, timeouts: Timeouts) -> Result<Self, RedisError> {
        match target {
            Target::Single(url) => {
                let info = url.as_str().into_connection_info()?;
                let resp2 = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP2);
                let client = redis::Client::open(info.set_redis_settings(resp2))?;
                Ok(Self::Single(MendingConnection::new(client, timeouts)?))
            }
            Target::Cluster(nodes) => {
                let client = ClusterClientBuilder::new(nodes.clone())
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(50)
                    .max_retry_wait(1000)
                    .build()?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(timeouts.connect)
                    .set_response_timeout(timeouts.response);
                Ok(Self::Cluster {
                    connection: client.get_pending_async_connection_with_config(config),
                    seeds: nodes.clone().into(),
                })
            }
        }
    }

    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster { .. })
    }

    /// The nodes a command may be sent to: the one Redis, or every node of
    /// the cluster (`CLUSTER NODES`, asked of any node), with whether the
    /// cluster holds it healthy.
    pub async fn nodes(&mut self) -> Result<Vec<Node>, RedisError> {
        match self {
            Self::Single(_) => Ok(vec![Node {
                address: "redis".to_owned(),
                master: true,
                healthy: true,
            }]),
            Self::Cluster { connection, .. } => {
                let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(connection).await?;
                Ok(Node::parse_cluster_nodes(&text))
            }
        }
    }

    /// Runs `cmd` on `node` (one of [`Connection::nodes`]). On a cluster,
    /// over a connection of its own to that node (the cluster connection
    /// holds none to replicas), with the seed nodes' credentials.
    pub async fn on_node(&mut self, node: &Node, cmd: &Cmd) -> Result<Value, RedisError> {
        let answer = match self {
            Self::Single(single) => single.req_packed_command(cmd).await,
            Self::Cluster { seeds, .. } => {
                let Some(seed) = seeds.first() else {
                    return Err(RedisError::from((ErrorKind::Client, "no seed node")));
                };
                let (host, port) = node
                    .address
                    .rsplit_once(':')
                    .and_then(|(host, port)| Some((host.to_owned(), port.parse::<u16>().ok()?)))
                    .ok_or_else(|| RedisError::from((ErrorKind::Client, "not a node address", node.address.clone())))?;
                let info = seed
                    .as_str()
                    .into_connection_info()?
                    .set_addr(redis::ConnectionAddr::Tcp(host, port));
                let client = redis::Client::open(info)?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(Duration::from_secs(5)));
                let mut connection = client.get_multiplexed_async_connection_with_config(&config).await?;
                connection.req_packed_command(cmd).await
            }
        };
        // An error reply is an error, as from `query_async`.
        answer?.extract_error()
    }

    /// Runs `cmd` (which names no key, e.g. `WAIT`) on the master that owns
    /// `key`'s slot, over the same connection as the commands on that key.
    pub async fn on_master_of(&mut self, key: &str, cmd: &Cmd) -> Result<Value, RedisError> {
        let answer = match self {
            Self::Single(single) => single.req_packed_command(cmd).await,
            Self::Cluster { connection, .. } => {
                let slot = drover_schema::layout::slot(key.as_bytes());
                let route = Route::new(slot, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                connection.route_command(cmd.clone(), routing).await
            }
        };
        answer?.extract_error()
    }
}

/// A node of the deployment's Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// `HOST:PORT` (`redis` for the one Redis).
    pub address: String,
    /// Whether it is a master (the one Redis is).
    pub master: bool,
    /// Whether the cluster holds it reachable: not flagged `fail`, `fail?`
    /// (suspected), `handshake` or `noaddr`, and its link connected.
    pub healthy: bool,
}

impl Node {
    /// The nodes of a `CLUSTER NODES` answer: per line, `id HOST:PORT@BUS
    /// flags master ping pong epoch link slots...`.
    pub fn parse_cluster_nodes(text: &str) -> Vec<Self> {
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let address = fields.get(1)?.split(['@', ',']).next()?;
                let flags: Vec<&str> = fields.get(2)?.split(',').collect();
                let link = *fields.get(7)?;
                let unhealthy = flags
                    .iter()
                    .any(|flag| matches!(*flag, "fail" | "fail?" | "handshake" | "noaddr"));
                Some(Self {
                    address: address.to_owned(),
                    master: flags.contains(&"master"),
                    healthy: !unhealthy && link == "connected",
                })
            })
            .collect()
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(single) => single.req_packed_command(cmd),
            Self::Cluster { connection, .. } => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(single) => single.req_packed_commands(cmd, offset, count),
            Self::Cluster { connection, .. } => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(single) => single.get_db(),
            Self::Cluster { connection, .. } => connection.get_db(),
        }
    }
}

/// One Redis: redis-rs's [`ConnectionManager`], which pipelines concurrent
/// calls over one socket and dials again after an I/O error or a dropped
/// connection, and a fresh manager in the two cases that leave a manager
/// broken for good:
///
/// - a reply that never came within the response timeout: the manager keeps
///   the connection, and behind a peer that vanished without a reset every
///   later call would time out too;
/// - a refused login (`WRONGPASS`, or a full Redis answering `AUTH` with an
///   error) while dialling: the manager keeps that failed dial and answers
///   every later call with it, so the caller would stay locked out after
///   the ACL is fixed.
#[derive(Clone)]
pub struct MendingConnection {
    shared: Arc<Shared>,
}

/// What the clones of a [`MendingConnection`] share.
struct Shared {
    /// Where a new manager dials.
    client: redis::Client,
    timeouts: Timeouts,
    /// The manager in use; replaced whole, never changed in place.
    current: RwLock<Current>,
}

#[derive(Clone)]
struct Current {
    /// Counts replacements, so that of many calls failing on one manager
    /// only the first replaces it.
    generation: u64,
    manager: ConnectionManager,
}

impl std::fmt::Debug for MendingConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MendingConnection")
            .field("replacements", &self.current().generation)
            .finish()
    }
}

impl MendingConnection {
    fn new(client: redis::Client, timeouts: Timeouts) -> Result<Self, RedisError> {
        let manager = Self::new_manager(&client, timeouts)?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                timeouts,
                current: RwLock::new(Current { generation: 0, manager }),
            }),
        })
    }

    /// A manager that dials on first use.
    fn new_manager(client: &redis::Client, timeouts: Timeouts) -> Result<ConnectionManager, RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeouts.connect))
            .set_response_timeout(Some(timeouts.response))
            .set_number_of_retries(0);
        ConnectionManager::new_lazy_with_config(client.clone(), config)
    }

    fn current(&self) -> Current {
        self.shared
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces manager `generation` if `result` shows it cannot recover by
    /// itself (see [`MendingConnection`]).
    fn mend<T>(&self, generation: u64, result: &Result<T, RedisError>) {
        let Err(err) = result else { return };
        if !(err.is_timeout() || err.kind() == ErrorKind::AuthenticationFailed) {
            return;
        }
        let mut current = self.shared.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.generation != generation {
            return; // another call replaced it already
        }
        // Only fails for settings this type never makes.
        if let Ok(manager) = Self::new_manager(&self.shared.client, self.shared.timeouts) {
            *current = Current {
                generation: generation + 1,
                manager,
            };
        }
    }
}

impl ConnectionLike for MendingConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let Current {
                generation,
                mut manager,
            } = self.current();
            let result = manager.req_packed_command(cmd).await;
            self.mend(generation, &result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let Current {
                generation,
                mut manager,
            } = self.current();
            let result = manager.req_packed_commands(cmd, offset, count).await;
            self.mend(generation, &result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.current().manager.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_are_read_with_their_health() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host-a slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master,fail - 1426238316232 1426238315228 3 disconnected 10923-16383
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
";
        let nodes = Node::parse_cluster_nodes(text);
        assert_eq!(
            nodes,
            [
                Node {
                    address: "127.0.0.1:30004".to_owned(),
                    master: false,
                    healthy: true
                },
                Node {
                    address: "127.0.0.1:30002".to_owned(),
                    master: true,
                    healthy: true
                },
                Node {
                    address: "127.0.0.1:30003".to_owned(),
                    master: true,
                    healthy: false
                },
                Node {
                    address: "127.0.0.1:30001".to_owned(),
                    master: true,
                    healthy: true
                },
            ]
        );
    }
}
