//! Pub/sub on one Redis or a cluster: [`Subscriber`].
//!
//! On one Redis, classic `SUBSCRIBE` on one connection. On a cluster,
//! sharded `SSUBSCRIBE`: a channel lives on the shard that owns its name's
//! slot, so the cluster connection holds one connection per node (never one
//! per channel) and sends each `SSUBSCRIBE` to its channel's node, one
//! channel per command (a command's channels must share a slot), many in
//! flight at once.
//!
//! A cluster can take channels away: when a slot migrates, its old owner
//! unsubscribes the slot's channels (`sunsubscribe` without being asked),
//! and after a node is lost the connection's view of the slots may be stale
//! until a command fails. The subscriber reports both ([`Delivery::Dropped`],
//! [`Delivery::Disconnected`]) and the caller subscribes again what it still
//! needs: the new `SSUBSCRIBE` finds the slot's current owner.

use futures::StreamExt as _;
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisError, Value};
use tokio::sync::mpsc;

use crate::config::Target;
use crate::connection::Timeouts;

/// Channels subscribed at once on a cluster (one command each).
const CLUSTER_SUBSCRIBES_IN_FLIGHT: usize = 64;
/// Channels per `SUBSCRIBE`/`UNSUBSCRIBE` on one Redis.
const CHANNELS_PER_CALL: usize = 512;

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A message published on a subscribed channel.
    Message {
        /// The channel.
        channel: String,
        /// What was published.
        payload: Vec<u8>,
    },
    /// The cluster unsubscribed this channel by itself (its slot migrated):
    /// subscribe it again if it is still wanted.
    Dropped(String),
    /// The connection to one of the cluster's nodes was lost: messages may
    /// have been missed, and subscriptions on that node may be gone until
    /// they are made again (on the slot's new owner after a failover).
    Disconnected,
}

/// A pub/sub connection. [`Subscriber::next`] is cancel-safe: a caller may
/// `select!` it against its own work and subscribe between messages.
pub enum Subscriber {
    /// One Redis.
    Single {
        /// Sends (un)subscriptions.
        sink: PubSubSink,
        /// Receives messages.
        stream: PubSubStream,
    },
    /// A cluster.
    Cluster {
        /// Routes each `SSUBSCRIBE` to its channel's node.
        connection: ClusterConnection,
        /// Every node's pushes: messages, confirmations, disconnections.
        pushes: mpsc::UnboundedReceiver<PushInfo>,
    },
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single { .. } => "Subscriber::Single",
            Self::Cluster { .. } => "Subscriber::Cluster",
        })
    }
}

impl Subscriber {
    /// Connects to `target` (on a cluster: to the seed nodes, learning the
    /// others from them).
    pub async fn connect(target: &Target, timeouts: Timeouts) -> Result<Self, RedisError> {
        match target {
            Target::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let pubsub = tokio::time::timeout(timeouts.connect, client.get_async_pubsub())
                    .await
                    .map_err(|_| RedisError::from((redis::ErrorKind::Io, "timed out connecting to Redis")))??;
                let (sink, stream) = pubsub.split();
                Ok(Self::Single { sink, stream })
            }
            Target::Cluster(nodes) => {
                let (tx, pushes) = mpsc::unbounded_channel();
                let client = ClusterClientBuilder::new(nodes.clone())
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .retries(4)
                    .min_retry_wait(50)
                    .max_retry_wait(1000)
                    .build()?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(timeouts.connect)
                    .set_response_timeout(timeouts.response)
                    .set_push_sender(tx);
                let connection = client.get_async_connection_with_config(config).await?;
                Ok(Self::Cluster { connection, pushes })
            }
        }
    }

    /// Subscribes `channels` (their order does not matter). On error some
    /// may be subscribed and some not: subscribe them all again.
    pub async fn subscribe(&mut self, channels: Vec<String>) -> Result<(), RedisError> {
        match self {
            Self::Single { sink, .. } => {
                for chunk in channels.chunks(CHANNELS_PER_CALL) {
                    sink.subscribe(chunk).await?;
                }
                Ok(())
            }
            Self::Cluster { connection, .. } => {
                for_each_channel(connection, channels, |mut connection, channel| async move {
                    connection.ssubscribe(channel).await
                })
                .await
            }
        }
    }

    /// Unsubscribes `channels`.
    pub async fn unsubscribe(&mut self, channels: Vec<String>) -> Result<(), RedisError> {
        match self {
            Self::Single { sink, .. } => {
                for chunk in channels.chunks(CHANNELS_PER_CALL) {
                    sink.unsubscribe(chunk).await?;
                }
                Ok(())
            }
            Self::Cluster { connection, .. } => {
                for_each_channel(connection, channels, |mut connection, channel| async move {
                    connection.sunsubscribe(channel).await
                })
                .await
            }
        }
    }

    /// The next delivery; `None` once the connection is lost for good (one
    /// Redis: connect again; a cluster connection mends itself and reports
    /// [`Delivery::Disconnected`] instead).
    pub async fn next(&mut self) -> Option<Delivery> {
        match self {
            Self::Single { stream, .. } => {
                let message = stream.next().await?;
                Some(Delivery::Message {
                    channel: message.get_channel_name().to_owned(),
                    payload: message.get_payload_bytes().to_vec(),
                })
            }
            Self::Cluster { pushes, .. } => loop {
                let push = pushes.recv().await?;
                if let Some(delivery) = delivery_of(push) {
                    return Some(delivery);
                }
            },
        }
    }
}

/// Runs `action` for each channel, [`CLUSTER_SUBSCRIBES_IN_FLIGHT`] at a
/// time; the first error, after all were tried.
async fn for_each_channel<F, Fut>(
    connection: &ClusterConnection,
    channels: Vec<String>,
    action: F,
) -> Result<(), RedisError>
where
    F: Fn(ClusterConnection, String) -> Fut,
    Fut: std::future::Future<Output = Result<(), RedisError>>,
{
    let results: Vec<Result<(), RedisError>> = futures::stream::iter(channels)
        .map(|channel| action(connection.clone(), channel))
        .buffer_unordered(CLUSTER_SUBSCRIBES_IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().collect()
}

/// What a cluster node's push means to the subscriber, if anything.
fn delivery_of(push: PushInfo) -> Option<Delivery> {
    let text = |value: &Value| redis::from_redis_value_ref::<String>(value).ok();
    match push.kind {
        PushKind::SMessage | PushKind::Message => {
            let [channel, payload] = <[Value; 2]>::try_from(push.data).ok()?;
            Some(Delivery::Message {
                channel: text(&channel)?,
                payload: redis::from_redis_value::<Vec<u8>>(payload).ok()?,
            })
        }
        PushKind::SUnsubscribe => Some(Delivery::Dropped(text(push.data.first()?)?)),
        PushKind::Disconnection => Some(Delivery::Disconnected),
        _ => None,
    }
}
