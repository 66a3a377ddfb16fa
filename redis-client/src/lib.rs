//! How every Drover component reaches Redis.
//!
//! A deployment runs on one Redis (`REDIS_URL`) or on a Redis Cluster
//! (`REDIS_CLUSTER_NODES`, seed nodes); [`Target`] is that choice, read
//! once from the environment ([`config`]). Everything else hides it:
//!
//! - [`Connection`] ([`connection`]): commands and scripts. On one Redis, a
//!   multiplexed connection that mends itself; on a cluster, redis-rs's
//!   cluster connection, which routes each command (a script by its first
//!   key) to the master of its slot, follows `MOVED`/`ASK` and refreshes
//!   the slot map after a failover. [`Connection::nodes`], [`Connection::on_node`] and
//!   [`Connection::on_master_of`] are for the few commands that must reach
//!   particular nodes (`CONFIG GET` on each; `WAIT` where a write ran).
//! - [`Subscriber`] ([`subscriber`]): pub/sub for the drivers and the
//!   operator CLI. Classic `SUBSCRIBE` on one Redis; sharded `SSUBSCRIBE`
//!   on a cluster (RESP3 pushes; one connection per shard, never per
//!   channel), with the channels a slot migration took away reported so
//!   that the caller subscribes them again.
//!
//! What the keys are called on either is [`drover_schema::Layout`]'s
//! business; [`config::read_layout`] reads `REDIS_EVENT_PARTITIONS`.

pub mod config;
pub mod connection;
pub mod subscriber;

pub use crate::config::Target;
pub use crate::connection::{Connection, Node, Timeouts};
pub use crate::subscriber::{Delivery, Subscriber};

/// Whether Redis refused the credentials (`WRONGPASS`, `NOAUTH`: none given
/// while the default user is off) or a command (`NOPERM`): a configuration
/// problem that retrying will not fix.
pub fn is_refused_by_acl(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
}
