//! The harness of the bridge's integration tests: a private `redis-server`
//! (`drover_testkit::redis::RedisServer`), the bridge running in-process on
//! a real 127.0.0.1:0 socket, a real tonic client, and a Redis client to
//! look at what the bridge wrote. Waits are on conditions with deadlines
//! (`drover_testkit::wait`, with [`DEADLINE`]), never on guessed durations.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use drover_proto::bridge::vendor_bridge_client::VendorBridgeClient;
use drover_proto::bridge::{
    BatchDurable, BridgeMessage, DriverMessage, Event, EventBatch, bridge_message, driver_message,
};
use drover_testkit::redis::RedisServer;
use drover_testkit::wait::within;
use redis::aio::MultiplexedConnection;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};
use vendor_bridge::{Config, Stats};

pub(crate) mod calls;

/// How long any awaited condition may take before the test fails.
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);

/// A bridge serving in this process, with its own Redis.
pub(crate) struct Bridge {
    pub(crate) redis: RedisServer,
    pub(crate) addr: SocketAddr,
    pub(crate) stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Bridge {
    /// A bridge on a fresh Redis configured as in production.
    pub(crate) async fn start() -> Self {
        Self::start_on(RedisServer::start().expect("redis-server starts")).await
    }

    /// A bridge on `redis`.
    pub(crate) async fn start_on(redis: RedisServer) -> Self {
        Self::start_with(redis, |_| {}).await
    }

    /// A bridge on `redis`, its configuration changed by `configure` (a
    /// token, TLS, a durability policy, byte budgets).
    pub(crate) async fn start_with(redis: RedisServer, configure: impl FnOnce(&mut Config)) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let stats = Arc::new(Stats::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let mut config = Config::for_redis(redis.url());
        config.listen = addr;
        configure(&mut config);
        let task = tokio::spawn(vendor_bridge::serve(
            config,
            listener,
            Arc::clone(&stats),
            None,
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            redis,
            addr,
            stats,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Waits for the bridge's first check of Redis (which records the key
    /// layout in `cwp:layout` on a fresh Redis): what a test compares
    /// Redis's contents against must be taken after it.
    pub(crate) async fn checked(&self) {
        drover_testkit::wait::eventually("the bridge's first check of Redis", DEADLINE, || async {
            self.stats.snapshot().durability != vendor_bridge::stats::DurabilityStatus::Unchecked
        })
        .await;
    }

    /// A gRPC client of the bridge.
    pub(crate) async fn client(&self) -> VendorBridgeClient<Channel> {
        VendorBridgeClient::connect(format!("http://{}", self.addr))
            .await
            .expect("the bridge accepts connections")
    }

    /// A gRPC channel to the bridge, for other services (health).
    pub(crate) async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("a valid URI")
            .connect()
            .await
            .expect("the bridge accepts connections")
    }

    /// A plain Redis connection to inspect and prepare data.
    pub(crate) async fn redis(&self) -> MultiplexedConnection {
        redis_client(&self.redis)
            .get_multiplexed_async_connection()
            .await
            .expect("Redis accepts connections")
    }

    /// A Redis pub/sub connection subscribed to `channel` (the
    /// subscription is confirmed when this returns).
    pub(crate) async fn subscribe(&self, channel: &str) -> redis::aio::PubSub {
        let mut pubsub = redis_client(&self.redis)
            .get_async_pubsub()
            .await
            .expect("Redis pub/sub");
        pubsub.subscribe(channel).await.expect("SUBSCRIBE");
        pubsub
    }

    /// Resolves the bridge's shutdown future (what SIGTERM does).
    pub(crate) fn request_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for `serve` to return after [`Bridge::request_shutdown`].
    pub(crate) async fn stopped(&mut self) -> anyhow::Result<()> {
        let task = self.task.take().expect("shut down once");
        within("the bridge to shut down", DEADLINE, task)
            .await
            .expect("serve does not panic")
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub(crate) fn redis_client(redis: &RedisServer) -> redis::Client {
    redis::Client::open(redis.url()).expect("a valid Redis URL")
}

/// The next message on a subscribed pub/sub connection, as text.
pub(crate) async fn next_message(pubsub: &mut redis::aio::PubSub) -> String {
    use futures::StreamExt as _;
    let message = within("a pub/sub message", DEADLINE, pubsub.on_message().next())
        .await
        .expect("the subscription stays open");
    message.get_payload::<String>().expect("a text payload")
}

/// One event; `received_ms` and `time_ms` derived from the id so that every
/// field is distinct and checkable.
pub(crate) fn event(serial: &str, event_id: u64, kind: u32, body: &[u8]) -> Event {
    Event {
        serial: serial.to_owned(),
        event_id,
        time_ms: 1_700_000_000_000 + event_id % 1000,
        kind,
        body: Bytes::copy_from_slice(body),
        received_ms: 1_700_000_001_000 + event_id % 1000,
    }
}

/// A driver's `StreamEvents` stream, as the driver sees it.
pub(crate) struct DriverStream {
    outbound: mpsc::Sender<DriverMessage>,
    inbound: Streaming<BridgeMessage>,
}

impl DriverStream {
    /// Opens a stream and says hello as `driver_id`/`instance_id`.
    pub(crate) async fn open(
        client: &mut VendorBridgeClient<Channel>,
        driver_id: &str,
        instance_id: &str,
    ) -> Result<Self, Status> {
        let driver = calls::As { driver_id, token: None };
        Self::open_as(client, driver, instance_id).await
    }

    /// Opens a stream whose first messages are already in `rx`.
    pub(crate) async fn open_raw(
        client: &mut VendorBridgeClient<Channel>,
        outbound: mpsc::Sender<DriverMessage>,
        rx: mpsc::Receiver<DriverMessage>,
    ) -> Result<Self, Status> {
        let inbound = within(
            "StreamEvents to be answered",
            DEADLINE,
            client.stream_events(ReceiverStream::new(rx)),
        )
        .await?
        .into_inner();
        Ok(Self { outbound, inbound })
    }

    /// Sends a batch without waiting for its answer.
    pub(crate) async fn send(&self, batch_id: u64, events: Vec<Event>) {
        self.outbound
            .send(DriverMessage {
                kind: Some(driver_message::Kind::Batch(EventBatch { batch_id, events })),
            })
            .await
            .expect("the outbound queue is open");
    }

    /// The next message from the bridge: an answer, the end of the stream
    /// (`Ok(None)`), or the stream's error.
    pub(crate) async fn next(&mut self) -> Result<Option<BatchDurable>, Status> {
        let message = within("the bridge's next message", DEADLINE, self.inbound.message()).await?;
        Ok(message.map(|message| match message.kind {
            Some(bridge_message::Kind::Durable(durable)) => durable,
            None => panic!("an empty BridgeMessage"),
        }))
    }

    /// The next answer, which must be there.
    pub(crate) async fn durable(&mut self) -> BatchDurable {
        self.next()
            .await
            .expect("no stream error")
            .expect("the stream stays open")
    }

    /// Sends a batch and waits for its answer.
    pub(crate) async fn store(&mut self, batch_id: u64, events: Vec<Event>) -> BatchDurable {
        self.send(batch_id, events).await;
        let durable = self.durable().await;
        assert_eq!(durable.batch_id, batch_id, "answers come in batch order");
        durable
    }

    /// Whether an answer is ready right now, without waiting.
    pub(crate) fn has_answer_ready(&mut self) -> bool {
        use futures::FutureExt as _;
        self.inbound.message().now_or_never().is_some()
    }
}

/// `BatchDurable` as a tuple, for short asserts.
pub(crate) fn counts(durable: &BatchDurable) -> (u64, u32, u32) {
    (durable.batch_id, durable.stored, durable.duplicates)
}

/// One stream entry: its id and its fields in written order.
pub(crate) type Entry = (String, Vec<(String, Vec<u8>)>);

/// The `(serial, event_id)` of every entry of `cwp:events`, in stream order.
pub(crate) async fn stored_events(redis: &mut MultiplexedConnection) -> Vec<(String, String)> {
    let entries: Vec<Entry> = raw_entries(redis, "cwp:events").await;
    entries
        .into_iter()
        .map(|(_, fields)| {
            let get = |name: &str| {
                let value = &fields.iter().find(|(field, _)| field == name).expect("field present").1;
                String::from_utf8(value.clone()).expect("UTF-8")
            };
            (get("serial"), get("event_id"))
        })
        .collect()
}

/// Every entry of stream `key` as (entry id, fields in written order).
pub(crate) async fn raw_entries(redis: &mut MultiplexedConnection, key: &str) -> Vec<Entry> {
    let reply: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(redis)
        .await
        .expect("XRANGE");
    reply
        .into_iter()
        .map(|(id, flat)| {
            let fields = flat
                .chunks(2)
                .map(|pair| {
                    (
                        String::from_utf8(pair[0].clone()).expect("UTF-8 field name"),
                        pair[1].clone(),
                    )
                })
                .collect();
            (id, fields)
        })
        .collect()
}

/// `XLEN key`.
pub(crate) async fn xlen(redis: &mut MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("XLEN").arg(key).query_async(redis).await.expect("XLEN")
}

/// `HGET key field`.
pub(crate) async fn hget(redis: &mut MultiplexedConnection, key: &str, field: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(redis)
        .await
        .expect("HGET")
}

/// `SMEMBERS key`, sorted.
pub(crate) async fn members(redis: &mut MultiplexedConnection, key: &str) -> Vec<String> {
    let mut members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(key)
        .query_async(redis)
        .await
        .expect("SMEMBERS");
    members.sort();
    members
}

/// Every key of the database and its value (`DUMP`), sorted by key: equal
/// snapshots mean nothing was written.
pub(crate) async fn contents(redis: &mut MultiplexedConnection) -> Vec<(String, Vec<u8>)> {
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(redis).await.expect("KEYS");
    keys.sort();
    let mut contents = Vec::with_capacity(keys.len());
    for key in keys {
        let value: Vec<u8> = redis::cmd("DUMP").arg(&key).query_async(redis).await.expect("DUMP");
        contents.push((key, value));
    }
    contents
}
