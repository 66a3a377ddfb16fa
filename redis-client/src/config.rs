//! The Redis a component uses, from the environment: `REDIS_URL` (one
//! Redis) or `REDIS_CLUSTER_NODES` (a cluster's seed nodes), and for the
//! bridge `REDIS_EVENT_PARTITIONS`. Each binary lists these variables in
//! its own table (with its own help for `REDIS_URL`); the two below are the
//! same for all.

use drover_schema::Layout;
use drover_service::env::{EnvReader, Variable, redact_password};
use redis::IntoConnectionInfo as _;

/// `REDIS_CLUSTER_NODES`: a cluster instead of `REDIS_URL`.
pub const CLUSTER_NODES: Variable = Variable {
    name: "REDIS_CLUSTER_NODES",
    default: None,
    help: "a Redis Cluster instead of REDIS_URL: comma-separated seed nodes redis://[USER:PASSWORD@]HOST:PORT (any few masters or replicas; the rest is discovered); commands and results then travel as sharded pub/sub (SPUBLISH, SSUBSCRIBE)",
};

/// `REDIS_EVENT_PARTITIONS`: the number of event streams.
pub const EVENT_PARTITIONS: Variable = Variable {
    name: "REDIS_EVENT_PARTITIONS",
    default: Some("1"),
    help: "event streams (partitions) the events are spread over by serial, 1-1024, fixed for a deployment (recorded in cwp:layout; a bridge with another number stores nothing); on a cluster put a multiple of the masters",
};

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One Redis, by URL.
    Single(String),
    /// A Redis Cluster, by seed nodes' URLs.
    Cluster(Vec<String>),
}

impl Target {
    /// Reads `REDIS_CLUSTER_NODES` and, without it, `REDIS_URL` (both must
    /// be in the reader's table); each URL is checked to parse. Problems go
    /// to `env`.
    pub fn read(env: &mut EnvReader) -> Option<Self> {
        if let Some(nodes) = env.raw(CLUSTER_NODES.name) {
            return env.parse_with(CLUSTER_NODES.name, |_| Self::cluster(&nodes));
        }
        env.parse_with("REDIS_URL", |url| check_url(url).map(|()| Self::Single(url.to_owned())))
    }

    /// A cluster from a comma-separated list of seed URLs.
    pub fn cluster(nodes: &str) -> Result<Self, InvalidTarget> {
        let nodes: Vec<String> = nodes
            .split(',')
            .map(str::trim)
            .filter(|node| !node.is_empty())
            .map(str::to_owned)
            .collect();
        if nodes.is_empty() {
            return Err(InvalidTarget::NoSeedNode);
        }
        for node in &nodes {
            check_url(node).map_err(|why| InvalidTarget::BadSeedNode {
                node: redact_password(node),
                why,
            })?;
        }
        Ok(Self::Cluster(nodes))
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// For logs: the URL(s), passwords replaced.
    pub fn describe(&self) -> String {
        match self {
            Self::Single(url) => redact_password(url),
            Self::Cluster(nodes) => format!(
                "cluster {}",
                nodes.iter().map(|n| redact_password(n)).collect::<Vec<_>>().join(",")
            ),
        }
    }
}

impl From<&str> for Target {
    /// One Redis at this URL.
    fn from(url: &str) -> Self {
        Self::Single(url.to_owned())
    }
}

impl From<String> for Target {
    /// One Redis at this URL.
    fn from(url: String) -> Self {
        Self::Single(url)
    }
}

impl From<&String> for Target {
    /// One Redis at this URL.
    fn from(url: &String) -> Self {
        Self::Single(url.clone())
    }
}

fn check_url(url: &str) -> Result<(), NotARedisUrl> {
    url.into_connection_info()
        .map(|_| ())
        .map_err(|err| NotARedisUrl(err.to_string()))
}

/// A URL that redis-rs cannot connect to, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Redis URL: {0}")]
pub struct NotARedisUrl(pub String);

/// A `REDIS_CLUSTER_NODES` list that names no cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTarget {
    /// The list is empty.
    #[error("no seed node: expected redis://HOST:PORT[,redis://HOST:PORT...]")]
    NoSeedNode,
    /// A seed is no Redis URL (named without its password).
    #[error("{node}: {why}")]
    BadSeedNode {
        /// The seed, its password redacted.
        node: String,
        /// Why.
        why: NotARedisUrl,
    },
}

/// The deployment's key layout: `REDIS_EVENT_PARTITIONS` partitions on
/// `target` (see [`Layout::for_deployment`]). Problems go to `env`.
pub fn read_layout(env: &mut EnvReader, target: Option<&Target>) -> Option<Layout> {
    let partitions = env.parse::<u32>(EVENT_PARTITIONS.name)?;
    let cluster = target.is_some_and(Target::is_cluster);
    match Layout::for_deployment(cluster, partitions) {
        Ok(layout) => Some(layout),
        Err(err) => {
            env.problem(format!("{}: {err}", EVENT_PARTITIONS.name));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_is_its_seed_nodes() {
        let target = Target::cluster(" redis://127.0.0.1:7000, redis://u:secret@127.0.0.1:7001 ,").unwrap();
        assert_eq!(
            target,
            Target::Cluster(vec![
                "redis://127.0.0.1:7000".to_owned(),
                "redis://u:secret@127.0.0.1:7001".to_owned()
            ])
        );
        assert!(target.is_cluster());
        assert!(!target.describe().contains("secret"), "{}", target.describe());
    }

    #[test]
    fn a_bad_seed_node_is_named_without_its_password() {
        let err = Target::cluster("redis://127.0.0.1:7000,http://u:secret@x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a Redis URL"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        assert!(Target::cluster(" , ").unwrap_err().to_string().contains("no seed node"));
    }
}
