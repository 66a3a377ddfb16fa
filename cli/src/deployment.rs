//! The deployment's Redis as `drover` sees it: a connection (one Redis or
//! a cluster) and the key layout the bridge recorded in `cwp:layout`.

use std::time::Duration;

use anyhow::Context as _;
use drover_redis::{Connection, Target, Timeouts};
use drover_schema::{Layout, layout_fields};

/// How long connecting and one reply may take. Replies include `XREAD
/// BLOCK` for [`FOLLOW_BLOCK`], so the response timeout is longer.
pub const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(5),
    response: Duration::from_secs(15),
};

/// How long one blocking read of `--follow` waits for new entries.
pub const FOLLOW_BLOCK: Duration = Duration::from_secs(5);

/// A connection to the deployment and its layout.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// Where Redis is (for logs and pub/sub).
    pub target: Target,
    /// Commands.
    pub redis: Connection,
    /// Where the event path's keys are.
    pub layout: Layout,
}

impl Deployment {
    /// Connects and reads the layout. A deployment whose bridge never ran
    /// has no `cwp:layout`: it then has the layout a bridge would give it
    /// with one partition (and nothing stored yet).
    pub async fn open(target: Target) -> anyhow::Result<Self> {
        let mut redis = Connection::open(&target, TIMEOUTS)
            .with_context(|| format!("connecting to Redis at {}", target.describe()))?;
        let partitions: Option<String> = redis::cmd("HGET")
            .arg(drover_schema::LAYOUT)
            .arg(layout_fields::PARTITIONS)
            .query_async(&mut redis)
            .await
            .with_context(|| format!("reading {} from Redis at {}", drover_schema::LAYOUT, target.describe()))?;
        let partitions = match partitions {
            Some(text) => text
                .parse::<u32>()
                .with_context(|| format!("{} records {text:?} partitions", drover_schema::LAYOUT))?,
            None => 1,
        };
        let layout = Layout::for_deployment(target.is_cluster(), partitions)
            .with_context(|| format!("the layout recorded in {}", drover_schema::LAYOUT))?;
        Ok(Self { target, redis, layout })
    }

    /// `PUBLISH` on one Redis, `SPUBLISH` (the channel's shard) on a
    /// cluster; how many subscribers received the message.
    pub async fn publish(&mut self, channel: &str, message: &str) -> anyhow::Result<i64> {
        let command = if self.redis.is_cluster() { "SPUBLISH" } else { "PUBLISH" };
        redis::cmd(command)
            .arg(channel)
            .arg(message)
            .query_async(&mut self.redis)
            .await
            .with_context(|| format!("{command} {channel}"))
    }
}
