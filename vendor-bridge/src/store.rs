//! All Redis work of the bridge. Every operation that must be atomic is one
//! Lua script (in `src/scripts/`): two bridges, two drivers or a resent
//! batch can never store an event twice or half-install a session. Every
//! key and channel name comes from [`drover_schema`] (the deployment's
//! [`Layout`]) and reaches a script as one of its `KEYS`; a script never
//! builds a name, and all the keys of one call share one Redis Cluster slot
//! (a partition's events, marks and registry entries; a driver's set and
//! instance marker). What spans slots (a driver's device set beside a
//! device's entry, a result's channel beside its event) is a separate
//! command right after the script; each script's header says what follows
//! it. Serials have been checked by [`cwp::Serial`] before they get here.
//!
//! Scripts are sent with `EVALSHA`; after a Redis restart (or on a node
//! that never saw them) the first call gets `NOSCRIPT`, loads the script and
//! runs it again.
//!
//! Connections: one [`Connection`] (multiplexed, mends itself; a cluster
//! connection on a cluster) carries every unary call, and each event
//! stream has one of its own ([`EventWriter`]).

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use cwp::Serial;
use drover_redis::{Connection, Target, Timeouts};
use drover_schema::{self as schema, Layout, Partition};
use futures::StreamExt as _;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, Script, ServerErrorKind};

use crate::batch::{COMMAND_RESULT_KIND, ValidBatch};

/// How long one Redis reply may take. Generous: a script storing thousands
/// of events waits for an fsync with `appendfsync always`, and a retried
/// batch is harmless (a duplicate) but a wasted one.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Registry entries of a restarted driver marked offline at once.
const MARKS_IN_FLIGHT: usize = 64;

/// The bridge's Lua scripts, hashed once.
struct Scripts {
    store_events: Script,
    open_session: Script,
    close_session: Script,
    claim_instance: Script,
    mark_offline: Script,
    record_upload: Script,
    record_layout: Script,
    ledger_take: Script,
    ledger_sweep: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    store_events: Script::new(include_str!("scripts/store_events.lua")),
    open_session: Script::new(include_str!("scripts/open_session.lua")),
    close_session: Script::new(include_str!("scripts/close_session.lua")),
    claim_instance: Script::new(include_str!("scripts/claim_instance.lua")),
    mark_offline: Script::new(include_str!("scripts/mark_offline.lua")),
    record_upload: Script::new(include_str!("scripts/record_upload.lua")),
    record_layout: Script::new(include_str!("scripts/record_layout.lua")),
    ledger_take: Script::new(include_str!("scripts/ledger_take.lua")),
    ledger_sweep: Script::new(include_str!("scripts/ledger_sweep.lua")),
});

/// A failed Redis operation. All of them are worth retrying: Redis down,
/// restarting (`LOADING`), slow, out of memory, a cluster failing over, or
/// replicas that have not confirmed yet.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis failed the command, refused the connection or its login, or
    /// the connection broke.
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    /// Fewer replicas than `BRIDGE_WAIT_REPLICAS` confirmed a write within
    /// `BRIDGE_WAIT_TIMEOUT`: it is on the master, but not acknowledged.
    #[error("{confirmed} of {required} replicas confirmed the write within {timeout:?}")]
    Replicas {
        /// Replicas that confirmed.
        confirmed: u32,
        /// `BRIDGE_WAIT_REPLICAS`.
        required: u32,
        /// `BRIDGE_WAIT_TIMEOUT`.
        timeout: Duration,
    },
}

impl StoreError {
    /// Whether Redis refused the bridge's user (`WRONGPASS`; `NOAUTH`: no
    /// user given while the default user is off) or a command (`NOPERM`):
    /// a configuration problem that retrying will not fix.
    pub fn is_refused_by_acl(&self) -> bool {
        match self {
            Self::Redis(err) => drover_redis::is_refused_by_acl(err),
            Self::Replicas { .. } => false,
        }
    }

    /// Whether the connection may have been lost (anything but an answer
    /// from Redis): the next call dials again, perhaps to a Redis
    /// restarted with another configuration.
    pub fn may_have_lost_the_connection(&self) -> bool {
        match self {
            Self::Redis(err) => !matches!(err.kind(), ErrorKind::Server(_) | ErrorKind::Extension),
            Self::Replicas { .. } => false,
        }
    }
}

/// How many replicas must confirm a write before it is acknowledged
/// (`BRIDGE_WAIT_REPLICAS`, `WAIT`), and for how long to wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaWait {
    /// Replicas that must confirm; 0: none are waited for.
    pub replicas: u32,
    /// How long `WAIT` may block.
    pub timeout: Duration,
}

impl ReplicaWait {
    /// Acknowledge once the master has it (Redis's replication is
    /// asynchronous: a failover may lose the last writes).
    pub const NONE: Self = Self {
        replicas: 0,
        timeout: Duration::from_secs(1),
    };
}

/// A new session for the registry (`OpenSession`).
#[derive(Debug, Clone, Copy)]
pub struct SessionOpening<'a> {
    /// The device.
    pub serial: &'a Serial,
    /// The session id, lowercase hex.
    pub session: &'a str,
    /// The driver holding the session.
    pub driver: &'a str,
    /// That driver's process instance.
    pub instance: &'a str,
    /// The device's address.
    pub peer: &'a str,
    /// The device's firmware version.
    pub firmware: &'a str,
    /// When the session was authenticated, Unix ms.
    pub connected_ms: u64,
}

/// What the registry said when a session was installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOpened {
    /// The serial's highest stored event id, 0 if none.
    pub last_event_id: u64,
    /// Whether a previous live session was told to close.
    pub superseded_other: bool,
    /// Commands in the serial's ledger as the session was installed.
    pub pending_commands: u32,
    /// Rollouts in the serial's index as the session was installed.
    pub pending_file_offers: u32,
}

/// A command that never reached its device (`RejectCommand`).
#[derive(Debug, Clone, Copy)]
pub struct CommandRejection<'a> {
    /// The device the command was for.
    pub serial: &'a Serial,
    /// The command's id, empty if unreadable.
    pub command_id: &'a str,
    /// `REJECTED` or `UNDELIVERED`.
    pub outcome: &'a str,
    /// Why, for humans.
    pub reason: &'a str,
    /// The message as published, at most 4 KiB.
    pub message: &'a [u8],
    /// The driver that rejected it.
    pub driver: &'a str,
    /// When, Unix ms.
    pub rejected_ms: u64,
    /// The JSON published on the device's result channel
    /// ([`schema::COMMAND_RESULTS`]).
    pub notice: &'a str,
}

/// What one sweep of the due ledgers did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sweep {
    /// Commands expired.
    pub expired: u64,
    /// Whether a partition had more ledgers due than one sweep takes.
    pub more_due: bool,
}

/// What `TakeCommands` takes from a ledger for a session.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TakenCommands {
    /// The commands to send now, in order.
    pub commands: Vec<TakenCommand>,
    /// How many more the ledger holds that the session was not sent.
    pub waiting: u32,
    /// The ids (hyphenated) sent in the session and still pending, those
    /// just taken included.
    pub unanswered: Vec<String>,
}

/// A durable command to send now (`TakeCommands`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenCommand {
    /// Its id, hyphenated.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its body, base64.
    pub body_b64: String,
    /// 1 the first time it is sent, then 2, ...
    pub attempt: u32,
}

/// A finished upload (`RecordUpload`).
#[derive(Debug, Clone, Copy)]
pub struct UploadRecord<'a> {
    /// The device that uploaded.
    pub serial: &'a Serial,
    /// The upload's id, a hyphenated UUID.
    pub upload_id: &'a str,
    /// The name the device gave it.
    pub name: &'a str,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: &'a str,
    /// Where it lies, relative to `UPLOAD_DIR`.
    pub path: &'a str,
    /// The driver that received it.
    pub driver: &'a str,
    /// When it was recorded, Unix ms.
    pub completed_ms: u64,
    /// How it arrived (`schema::upload_fields::TRANSPORT_*`).
    pub transport: &'a str,
}

/// What [`Store::check_layout`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutCheck {
    /// Redis holds (or now records) the configured layout.
    Matches,
    /// Redis was set up with another number of partitions.
    Differs {
        /// The partitions Redis records.
        recorded: String,
        /// The partitions configured (`REDIS_EVENT_PARTITIONS`).
        configured: u16,
    },
}

/// The bridge's Redis: the shared [`Connection`] of the unary calls, and
/// what event streams open their own connections with. Cheap to clone.
///
/// Unary calls share one multiplexed connection rather than taking turns
/// on several: with `appendfsync always` every round trip waits for an
/// fsync, and a connect storm of thousands of `OpenSession`s would crawl;
/// multiplexed, they are pipelined and one fsync covers all that arrive
/// together. Redis runs one command at a time whatever the number of
/// connections, so more would not make it answer sooner.
#[derive(Debug, Clone)]
pub struct Store {
    target: Target,
    layout: Layout,
    wait: ReplicaWait,
    unary: Connection,
}

/// The bridge's connection settings.
const TIMEOUTS: Timeouts = Timeouts {
    connect: CONNECT_TIMEOUT,
    response: RESPONSE_TIMEOUT,
};

impl Store {
    /// The bridge's Redis at `target`, its keys laid out as `layout`, its
    /// writes confirmed by `wait`'s replicas. Connects lazily: Redis need
    /// not be up yet.
    pub fn new(target: &Target, layout: Layout, wait: ReplicaWait) -> Result<Self, StoreError> {
        let unary = Connection::open(target, TIMEOUTS)?;
        Ok(Self {
            target: target.clone(),
            layout,
            wait,
            unary,
        })
    }

    /// The one Redis at `redis_url`, keys as always, no replicas waited
    /// for: what tests and embedders start from.
    pub fn for_redis(redis_url: &str) -> Result<Self, StoreError> {
        Self::new(&Target::from(redis_url), Layout::SINGLE, ReplicaWait::NONE)
    }

    /// The shared connection of the unary calls.
    pub(crate) fn connection(&self) -> Connection {
        self.unary.clone()
    }

    /// The key layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// `PING`: whether Redis answers at all (on a cluster, a node does).
    pub async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING").query_async::<()>(&mut self.connection()).await?;
        Ok(())
    }

    /// Records the configured layout in [`schema::LAYOUT`] if Redis has
    /// none, and says whether the one recorded is the configured one.
    pub async fn check_layout(&self) -> Result<LayoutCheck, StoreError> {
        let [(_, partitions), (_, streams)] = self.layout.record();
        let (recorded, _streams): (String, String) = invoke(
            SCRIPTS.record_layout.key(schema::LAYOUT).arg(&partitions).arg(&streams),
            &mut self.connection(),
        )
        .await?;
        if recorded == partitions {
            Ok(LayoutCheck::Matches)
        } else {
            Ok(LayoutCheck::Differs {
                recorded,
                configured: self.layout.partition_count(),
            })
        }
    }

    /// A writer for one event stream (see [`EventWriter`]), with a
    /// connection of its own.
    pub fn event_writer(&self) -> Result<EventWriter, StoreError> {
        Ok(EventWriter::new(
            Connection::open(&self.target, TIMEOUTS)?,
            self.layout,
            self.wait,
        ))
    }

    /// The restart cleanup on a stream's `hello`: if `driver` now runs as a
    /// new process `instance`, the previous one is dead and its devices are
    /// marked offline (sessions the new instance already registered stay).
    /// Returns how many were marked offline.
    pub async fn driver_restart(&self, driver: &str, instance: &str) -> Result<u64, StoreError> {
        let devices_key = self.layout.driver_devices(driver);
        let serials: Vec<String> = invoke(
            SCRIPTS
                .claim_instance
                .key(self.layout.driver_instance(driver))
                .key(&devices_key)
                .arg(instance),
            &mut self.connection(),
        )
        .await?;
        let outcomes: Vec<Result<(String, i64), StoreError>> = futures::stream::iter(serials)
            .filter_map(|serial| async move { serial.parse::<Serial>().ok().map(|s| (serial, s)) })
            .map(|(text, serial)| {
                let mut connection = self.connection();
                let key = self.layout.device(&serial);
                async move {
                    let outcome: i64 =
                        invoke(SCRIPTS.mark_offline.key(key).arg(driver).arg(instance), &mut connection).await?;
                    Ok((text, outcome))
                }
            })
            .buffer_unordered(MARKS_IN_FLIGHT)
            .collect()
            .await;
        let mut offline = 0;
        let mut leaving = Vec::new();
        for outcome in outcomes {
            let (serial, outcome) = outcome?;
            if outcome != 0 {
                leaving.push(serial);
            }
            if outcome == 1 {
                offline += 1;
            }
        }
        if !leaving.is_empty() {
            redis::cmd("SREM")
                .arg(&devices_key)
                .arg(&leaving)
                .query_async::<()>(&mut self.connection())
                .await?;
        }
        Ok(offline)
    }

    /// Installs a session in the registry (`OpenSession`); tells the driver
    /// of a superseded session to close it.
    pub async fn open_session(&self, session: SessionOpening<'_>) -> Result<SessionOpened, StoreError> {
        let partition = self.layout.partition_of(session.serial);
        #[allow(clippy::type_complexity, reason = "the script's reply, as documented in its header")]
        let (last_event_id, superseded, old_driver, old_session, pending_commands, pending_file_offers): (
            String,
            i64,
            String,
            String,
            u32,
            u32,
        ) = invoke(
            SCRIPTS
                .open_session
                .key(self.layout.device(session.serial))
                .key(self.layout.high_water_marks(partition))
                .key(self.layout.ledger(session.serial))
                .key(self.layout.file_offers(session.serial))
                .arg(session.serial.as_str())
                .arg(session.session)
                .arg(session.driver)
                .arg(session.instance)
                .arg(session.peer)
                .arg(session.firmware)
                .arg(session.connected_ms),
            &mut self.connection(),
        )
        .await?;
        let last_event_id = last_event_id.parse().map_err(|_| {
            RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "last_event_id in the registry is not a u64",
                last_event_id,
            ))
        })?;
        let mut joining = redis::cmd("SADD");
        joining
            .arg(self.layout.driver_devices(session.driver))
            .arg(session.serial.as_str());
        let mut connection = self.connection();
        let joined = joining.query_async::<()>(&mut connection);
        if superseded == 1 && !old_driver.is_empty() {
            let notice = serde_json::json!({
                schema::control_fields::TYPE: schema::control_fields::SUPERSEDE,
                schema::control_fields::SERIAL: session.serial.as_str(),
                schema::control_fields::SESSION: old_session,
            })
            .to_string();
            let control = schema::DRIVER_CONTROL.name(&old_driver);
            let mut connection = self.connection();
            let told = publish(&mut connection, &control, &notice);
            let mut connection = self.connection();
            let left = async {
                if old_driver == session.driver {
                    return Ok(());
                }
                redis::cmd("SREM")
                    .arg(self.layout.driver_devices(&old_driver))
                    .arg(session.serial.as_str())
                    .query_async::<()>(&mut connection)
                    .await
            };
            let (joined, told, left) = tokio::join!(joined, told, left);
            joined?;
            told?;
            left?;
        } else {
            joined.await?;
        }
        Ok(SessionOpened {
            last_event_id,
            superseded_other: superseded == 1,
            pending_commands,
            pending_file_offers,
        })
    }

    /// Ends a session unless a newer one replaced it (`CloseSession`);
    /// returns whether it was the current one.
    pub async fn close_session(
        &self,
        serial: &Serial,
        session: &str,
        driver: &str,
        last_seen_ms: u64,
    ) -> Result<bool, StoreError> {
        let partition = self.layout.partition_of(serial);
        let current: i64 = invoke(
            SCRIPTS
                .close_session
                .key(self.layout.device(serial))
                .key(self.layout.high_water_marks(partition))
                .arg(serial.as_str())
                .arg(session)
                .arg(last_seen_ms),
            &mut self.connection(),
        )
        .await?;
        if current == 1 {
            redis::cmd("SREM")
                .arg(self.layout.driver_devices(driver))
                .arg(serial.as_str())
                .query_async::<()>(&mut self.connection())
                .await?;
        }
        Ok(current == 1)
    }

    /// Records a rejected command and publishes its notice (`RejectCommand`).
    pub async fn reject_command(&self, rejection: CommandRejection<'_>) -> Result<(), StoreError> {
        let mut connection = self.connection();
        redis::cmd("XADD")
            .arg(schema::REJECTED_COMMANDS)
            .arg("MAXLEN")
            .arg("~")
            .arg(100_000)
            .arg("*")
            .arg(schema::rejection_fields::SERIAL)
            .arg(rejection.serial.as_str())
            .arg(schema::rejection_fields::COMMAND_ID)
            .arg(rejection.command_id)
            .arg(schema::rejection_fields::OUTCOME)
            .arg(rejection.outcome)
            .arg(schema::rejection_fields::REASON)
            .arg(rejection.reason)
            .arg(schema::rejection_fields::MESSAGE)
            .arg(rejection.message)
            .arg(schema::rejection_fields::DRIVER)
            .arg(rejection.driver)
            .arg(schema::rejection_fields::REJECTED_MS)
            .arg(rejection.rejected_ms)
            .query_async::<()>(&mut connection)
            .await?;
        publish(
            &mut connection,
            &schema::COMMAND_RESULTS.name(rejection.serial),
            rejection.notice,
        )
        .await?;
        Ok(())
    }

    /// The durable commands to send now in `session` of `serial`
    /// (`TakeCommands`, see `scripts/ledger_take.lua`), marked sent; their
    /// outcomes are published on the device's result channel.
    pub async fn take_commands(
        &self,
        serial: &Serial,
        session: &str,
        max_in_flight: u32,
        max_bytes: u32,
    ) -> Result<TakenCommands, StoreError> {
        let partition = self.layout.partition_of(serial);
        let mut connection = self.connection();
        let (flat, notices, waiting, unanswered): (Vec<String>, Vec<String>, u32, Vec<String>) = invoke(
            SCRIPTS
                .ledger_take
                .key(self.layout.ledger(serial))
                .key(self.layout.command_outcomes(partition))
                .key(self.layout.device(serial))
                .arg(serial.as_str())
                .arg(session)
                .arg(max_in_flight)
                .arg(max_bytes),
            &mut connection,
        )
        .await?;
        wait_for_replicas(&mut connection, self.wait, &self.layout.ledger(serial)).await?;
        let channel = schema::COMMAND_RESULTS.name(serial);
        publish_all(
            &connection,
            notices.iter().map(|notice| (channel.clone(), notice.as_str())),
        )
        .await;
        let commands = flat
            .chunks_exact(4)
            .map(|four| TakenCommand {
                id: four[0].clone(),
                name: four[1].clone(),
                body_b64: four[2].clone(),
                attempt: four[3].parse().unwrap_or(1),
            })
            .collect();
        Ok(TakenCommands {
            commands,
            waiting,
            unanswered,
        })
    }

    /// Expires the durable commands whose ttl has passed, in every
    /// partition (at most `per_partition` ledgers each): each leaves its
    /// ledger with its `EXPIRED` outcome, appended and published; a driver
    /// whose live session held one is woken to give the session the
    /// commands that waited behind it.
    pub async fn sweep_ledgers(&self, per_partition: usize) -> Result<Sweep, StoreError> {
        let mut connection = self.connection();
        let now = drover_service::clock::unix_ms();
        let mut sweep = Sweep::default();
        for partition in self.layout.partitions() {
            let due_key = self.layout.ledger_due(partition);
            let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(&due_key)
                .arg("-inf")
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(per_partition)
                .query_async(&mut connection)
                .await?;
            sweep.more_due |= due.len() >= per_partition;
            for member in due {
                let Ok(serial) = member.parse::<Serial>() else {
                    // Not written by our scripts: drop it from the index.
                    redis::cmd("ZREM")
                        .arg(&due_key)
                        .arg(&member)
                        .query_async::<()>(&mut connection)
                        .await?;
                    continue;
                };
                let (notices, wake): (Vec<String>, u8) = invoke(
                    SCRIPTS
                        .ledger_sweep
                        .key(self.layout.ledger(&serial))
                        .key(self.layout.command_outcomes(partition))
                        .key(&due_key)
                        .key(self.layout.device(&serial))
                        .arg(serial.as_str()),
                    &mut connection,
                )
                .await?;
                wait_for_replicas(&mut connection, self.wait, &due_key).await?;
                sweep.expired += notices.len() as u64;
                let channel = schema::COMMAND_RESULTS.name(&serial);
                publish_all(
                    &connection,
                    notices.iter().map(|notice| (channel.clone(), notice.as_str())),
                )
                .await;
                if wake == 1 {
                    wake_driver(&mut connection, &serial).await;
                }
            }
        }
        Ok(sweep)
    }

    /// Appends an `upload_completed` record once per upload
    /// (`RecordUpload`); returns whether this call appended it.
    pub async fn record_upload(&self, upload: UploadRecord<'_>) -> Result<bool, StoreError> {
        let mut connection = self.connection();
        let recorded: i64 = invoke(
            SCRIPTS
                .record_upload
                .key(self.layout.upload_recorded(upload.serial, upload.upload_id))
                .key(schema::UPLOADS)
                .arg(upload.serial.as_str())
                .arg(upload.upload_id)
                .arg(upload.name)
                .arg(upload.size)
                .arg(upload.sha256)
                .arg(upload.path)
                .arg(upload.driver)
                .arg(upload.completed_ms)
                .arg(upload.transport),
            &mut connection,
        )
        .await?;
        wait_for_replicas(&mut connection, self.wait, schema::UPLOADS).await?;
        Ok(recorded == 1)
    }
}

/// Publishes `message` on `channel`: `PUBLISH` on one Redis, `SPUBLISH`
/// (to the channel's shard) on a cluster.
pub(crate) async fn publish(connection: &mut Connection, channel: &str, message: &str) -> Result<(), RedisError> {
    publish_counted(connection, channel, message).await.map(|_| ())
}

/// [`publish`], answering how many subscribers received the message (on a
/// cluster, those of the channel's shard).
pub(crate) async fn publish_counted(
    connection: &mut Connection,
    channel: &str,
    message: &str,
) -> Result<i64, RedisError> {
    let command = if connection.is_cluster() { "SPUBLISH" } else { "PUBLISH" };
    redis::cmd(command)
        .arg(channel)
        .arg(message)
        .query_async(connection)
        .await
}

/// Publishes every `(channel, message)` at once (the connection pipelines
/// them: one round trip, not one per message), logging those that fail.
async fn publish_all<'a>(connection: &Connection, messages: impl Iterator<Item = (String, &'a str)>) {
    let publishing = messages.map(|(channel, message)| {
        let mut connection = connection.clone();
        async move {
            if let Err(err) = publish(&mut connection, &channel, message).await {
                tracing::warn!(error = %err, %channel, "could not publish a durable command's outcome");
            }
        }
    });
    futures::future::join_all(publishing).await;
}

/// Tells the driver holding `serial`'s session that its ledger has
/// commands to send (`{"ledger":true}` on its command channel). Best
/// effort: the commands stay in the ledger, and a session that opens takes
/// them anyway.
async fn wake_driver(connection: &mut Connection, serial: &Serial) {
    let channel = schema::COMMANDS.name(serial);
    let wake = serde_json::json!({ schema::command_fields::LEDGER: true }).to_string();
    if let Err(err) = publish(connection, &channel, &wake).await {
        tracing::warn!(error = %err, %channel, "could not wake the driver for durable commands");
    }
}

/// Runs `invocation`, loading its script first if Redis does not have it.
pub(crate) async fn invoke<T: FromRedisValue>(
    invocation: &mut redis::ScriptInvocation<'_>,
    connection: &mut Connection,
) -> Result<T, RedisError> {
    invocation.invoke_async(connection).await
}

/// After a write to `key`'s master: `WAIT` for `wait.replicas` replicas to
/// confirm everything this connection wrote there.
async fn wait_for_replicas(connection: &mut Connection, wait: ReplicaWait, key: &str) -> Result<(), StoreError> {
    if wait.replicas == 0 {
        return Ok(());
    }
    let answer = connection.on_master_of(key, &wait_command(wait)).await?;
    let confirmed: u32 = redis::from_redis_value(answer).map_err(RedisError::from)?;
    replicas_confirmed(confirmed, wait)
}

/// `WAIT`'s answer against what `wait` requires.
fn replicas_confirmed(confirmed: u32, wait: ReplicaWait) -> Result<(), StoreError> {
    if confirmed < wait.replicas {
        return Err(StoreError::Replicas {
            confirmed,
            required: wait.replicas,
            timeout: wait.timeout,
        });
    }
    Ok(())
}

/// `WAIT replicas timeout_ms`.
fn wait_command(wait: ReplicaWait) -> Cmd {
    let mut command = redis::cmd("WAIT");
    command
        .arg(wait.replicas)
        .arg(u64::try_from(wait.timeout.as_millis()).unwrap_or(u64::MAX));
    command
}

/// How often, at most, one stream refreshes a device's registry entry
/// (`last_event_id`, `last_seen_ms`) while it keeps sending events. The
/// exactly-once high-water mark is exact at every call; only this
/// human-facing copy lags, by at most this much.
const REGISTRY_REFRESH: Duration = Duration::from_secs(1);

/// Stores the batches of one event stream, one script call per partition
/// they touch (all at once), a call at a time.
///
/// Each stream has a Redis connection of its own: a script storing
/// thousands of events takes milliseconds, and the registry calls of
/// `OpenSession` must not queue behind it on a shared connection (a
/// handshake storm during heavy event traffic would time out). It reuses
/// its command buffers and scratch tables, so a call allocates nothing per
/// event (only a key name per registry entry it refreshes).
pub struct EventWriter {
    connection: Connection,
    layout: Layout,
    wait: ReplicaWait,
    /// Per partition: the call being built.
    calls: Vec<PartitionCall>,
    /// Per event of the call, in batch order: its partition.
    partition_of_event: Vec<u16>,
    /// Serials whose registry entry was refreshed in the current and the
    /// previous period: a serial is refreshed when it is in neither. Two
    /// generations bound the memory to the devices active lately.
    refreshed: [HashSet<Serial>; 2],
    period_started: Instant,
    /// Results for durable commands never sent, since the last
    /// [`EventWriter::take_unmatched_results`].
    unmatched_results: u64,
}

/// One partition's part of a call.
#[derive(Default)]
struct PartitionCall {
    /// Serials of the call in this partition with a command result, in
    /// first-seen order: their ledgers follow the registry entries in
    /// `KEYS`.
    ledgers: Vec<Serial>,
    /// Serial -> its ledger's index in `KEYS` (1-based).
    ledger_index: HashMap<Serial, usize>,
    command: Cmd,
    /// Serials of the call in this partition, in first-seen order, those
    /// due a registry refresh first.
    serials: Vec<Serial>,
    /// Serial -> its index (1-based) in `serials`.
    index: HashMap<Serial, usize>,
    /// How many of `serials` are refreshed.
    refreshing: usize,
    /// Events of each batch in this partition.
    per_batch: Vec<usize>,
}

impl std::fmt::Debug for EventWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWriter")
            .field("connection", &self.connection)
            .field("layout", &self.layout)
            .finish()
    }
}

impl EventWriter {
    fn new(connection: Connection, layout: Layout, wait: ReplicaWait) -> Self {
        Self {
            connection,
            layout,
            wait,
            calls: layout.partitions().map(|_| PartitionCall::default()).collect(),
            partition_of_event: Vec::new(),
            refreshed: [HashSet::new(), HashSet::new()],
            period_started: Instant::now(),
            unmatched_results: 0,
        }
    }

    /// How many results answered a durable command that was never sent
    /// (ignored) since the last call.
    pub fn take_unmatched_results(&mut self) -> u64 {
        std::mem::take(&mut self.unmatched_results)
    }

    /// Stores `batches` (in order) and returns, per batch, how many events
    /// were newly appended to their partition's stream; the rest were
    /// duplicates. The command results newly stored are published on their
    /// devices' result channels. On error nothing is known about what was
    /// stored: call again with the same batches.
    pub async fn store(&mut self, driver: &str, batches: &[ValidBatch]) -> Result<Vec<u32>, StoreError> {
        self.plan_calls(batches);
        for (index, call) in self.calls.iter_mut().enumerate() {
            if call.serials.is_empty() {
                continue;
            }
            let partition = self.layout.partitions().nth(index).expect("one call per partition");
            call.build(
                &self.layout,
                partition,
                driver,
                batches,
                &self.partition_of_event,
                index,
            );
        }
        let outcomes = {
            let connection = &self.connection;
            let wait = self.wait;
            let calls = self
                .calls
                .iter()
                .enumerate()
                .filter(|(_, call)| !call.serials.is_empty());
            futures::future::join_all(calls.map(|(index, call)| {
                let mut connection = connection.clone();
                async move {
                    let outcome = run_store_events(&mut connection, &call.command, wait).await?;
                    Ok::<_, StoreError>((index, outcome))
                }
            }))
            .await
        };
        let mut stored = vec![0u32; batches.len()];
        let mut failure = None;
        for outcome in outcomes {
            match outcome {
                Ok((index, (counts, notices, unmatched))) => {
                    let call = &self.calls[index];
                    if counts.len() != batches.len() {
                        failure.get_or_insert(StoreError::from(RedisError::from((
                            ErrorKind::UnexpectedReturnType,
                            "store_events returned a count per batch",
                            format!("{} counts for {} batches", counts.len(), batches.len()),
                        ))));
                        continue;
                    }
                    for (total, count) in stored.iter_mut().zip(counts) {
                        *total += count;
                    }
                    debug_assert!(call.per_batch.len() == batches.len());
                    // Stored: the results are in the stream; a notice
                    // not published is only a live notice lost.
                    publish_all(
                        &self.connection,
                        notices.chunks_exact(2).map(|pair| {
                            let serial = pair[0].parse().unwrap_or(call.serials[0]);
                            (schema::COMMAND_RESULTS.name(&serial), pair[1].as_str())
                        }),
                    )
                    .await;
                    self.unmatched_results += unmatched;
                }
                Err(err) => {
                    failure.get_or_insert(err);
                }
            }
        }
        if let Some(err) = failure {
            // The registry refreshes of a failed call may not have happened.
            for call in &self.calls {
                for serial in &call.serials[..call.refreshing] {
                    self.refreshed[0].remove(serial);
                }
            }
            return Err(err);
        }
        Ok(stored)
    }

    /// Sorts the call's events into partitions and collects each
    /// partition's distinct serials, those due a registry refresh first.
    fn plan_calls(&mut self, batches: &[ValidBatch]) {
        if self.period_started.elapsed() >= REGISTRY_REFRESH {
            self.refreshed.swap(0, 1);
            self.refreshed[0].clear();
            self.period_started = Instant::now();
        }
        for call in &mut self.calls {
            call.serials.clear();
            call.index.clear();
            call.per_batch.clear();
            call.per_batch.resize(batches.len(), 0);
        }
        self.partition_of_event.clear();
        let single = self.calls.len() == 1;
        let mut later: Vec<Vec<Serial>> = vec![Vec::new(); self.calls.len()];
        for (b, batch) in batches.iter().enumerate() {
            for serial in &batch.serials {
                let p = if single {
                    0
                } else {
                    self.layout.partition_of(serial).index()
                };
                self.partition_of_event.push(p);
                let call = &mut self.calls[usize::from(p)];
                call.per_batch[b] += 1;
                if call.index.insert(*serial, 0).is_some() {
                    continue; // met earlier in this call
                }
                let [current, previous] = &mut self.refreshed;
                if current.contains(serial) || previous.contains(serial) {
                    later[usize::from(p)].push(*serial);
                } else {
                    current.insert(*serial);
                    call.serials.push(*serial);
                }
            }
        }
        for (call, later) in self.calls.iter_mut().zip(&mut later) {
            call.refreshing = call.serials.len();
            call.serials.append(later);
            for (i, serial) in call.serials.iter().enumerate() {
                call.index.insert(*serial, i + 1);
            }
        }
    }
}

impl PartitionCall {
    /// Writes `EVALSHA store_events 3+r+l events hwm outcomes device...
    /// ledger... driver k s r serials... n1..nk (index id time kind body
    /// received [notice command ledger])...` for this partition's events
    /// (see `scripts/store_events.lua`).
    fn build(
        &mut self,
        layout: &Layout,
        partition: Partition,
        driver: &str,
        batches: &[ValidBatch],
        partition_of_event: &[u16],
        this: usize,
    ) {
        self.ledgers.clear();
        self.ledger_index.clear();
        let mut partitions = partition_of_event.iter();
        for batch in batches {
            for (event, serial) in batch.events.iter().zip(&batch.serials) {
                let ours = partitions.next().is_some_and(|&p| usize::from(p) == this);
                if ours && event.kind == COMMAND_RESULT_KIND && !self.ledger_index.contains_key(serial) {
                    self.ledgers.push(*serial);
                    self.ledger_index
                        .insert(*serial, 3 + self.refreshing + self.ledgers.len());
                }
            }
        }
        let command = &mut self.command;
        command.clear();
        command
            .arg("EVALSHA")
            .arg(SCRIPTS.store_events.get_hash())
            .arg(3 + self.refreshing + self.ledgers.len())
            .arg(layout.events(partition))
            .arg(layout.high_water_marks(partition))
            .arg(layout.command_outcomes(partition));
        for serial in &self.serials[..self.refreshing] {
            command.arg(layout.device(serial));
        }
        for serial in &self.ledgers {
            command.arg(layout.ledger(serial));
        }
        command
            .arg(driver)
            .arg(batches.len())
            .arg(self.serials.len())
            .arg(self.refreshing);
        for serial in &self.serials {
            command.arg(serial.as_bytes());
        }
        for count in &self.per_batch {
            command.arg(*count);
        }
        let mut partitions = partition_of_event.iter();
        for batch in batches {
            let mut notices = batch.results.iter();
            for (event, serial) in batch.events.iter().zip(&batch.serials) {
                let ours = partitions.next().is_some_and(|&p| usize::from(p) == this);
                let notice = (event.kind == COMMAND_RESULT_KIND).then(|| notices.next());
                if !ours {
                    continue;
                }
                command
                    .arg(self.index.get(serial).copied().unwrap_or(0))
                    .arg(event.event_id)
                    .arg(event.time_ms)
                    .arg(event.kind)
                    .arg(&event.body[..])
                    .arg(event.received_ms);
                if let Some(notice) = notice {
                    // `ValidBatch::check` made one notice per command result.
                    command
                        .arg(notice.map_or("", |n| n.notice.as_str()))
                        .arg(notice.map_or("", |n| n.command_id.as_str()))
                        .arg(self.ledger_index.get(serial).copied().unwrap_or(0));
                }
            }
        }
    }
}

/// What one `store_events` call answers: the counts per batch, the
/// (serial, notice) pairs to publish, and the results for durable commands
/// never sent.
type StoreEventsReply = (Vec<u32>, Vec<String>, u64);

/// Runs a built `store_events` call, loading the script if the node lacks
/// it, and with `wait.replicas` above 0, its `WAIT` for them.
///
/// The script and its `WAIT` go in one pipeline: one request, to the one
/// node that owns the call's slot, over one connection. Sent apart, a
/// `WAIT` that failed on a master stopped right after the script would be
/// retried by the cluster client on the master promoted meanwhile, over a
/// connection that wrote nothing there, and would count that master's
/// replicas for writes it never had: a batch acknowledged and lost (seen
/// once in `e2e/tests/cluster.rs`'s failover test). In one pipeline a retry
/// runs the script again on the new master, which stores what it lacks.
async fn run_store_events(
    connection: &mut Connection,
    command: &Cmd,
    wait: ReplicaWait,
) -> Result<StoreEventsReply, StoreError> {
    if wait.replicas == 0 {
        return match command.query_async(connection).await {
            Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                SCRIPTS.store_events.load_async(connection).await?;
                Ok(command.query_async(connection).await?)
            }
            result => Ok(result?),
        };
    }
    let mut pipeline = redis::pipe();
    pipeline.add_command(command.clone()).add_command(wait_command(wait));
    let answer: Result<(StoreEventsReply, u32), RedisError> = match pipeline.query_async(connection).await {
        Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            SCRIPTS.store_events.load_async(connection).await?;
            pipeline.query_async(connection).await
        }
        answer => answer,
    };
    let (outcome, confirmed) = answer?;
    replicas_confirmed(confirmed, wait)?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use drover_schema::{
        device_fields, event_fields, layout_fields, ledger_fields, outcome_fields, result_fields, rollout,
        upload_fields,
    };

    const SCRIPT_SOURCES: [(&str, &str); 16] = [
        ("rollout_start", drover_schema::rollout::START_SCRIPT),
        ("rollout_targets", drover_schema::rollout::TARGETS_SCRIPT),
        ("rollout_claim", drover_schema::rollout::CLAIM_SCRIPT),
        ("rollout_report", drover_schema::rollout::REPORT_SCRIPT),
        ("rollout_control", drover_schema::rollout::CONTROL_SCRIPT),
        ("ledger_take", include_str!("scripts/ledger_take.lua")),
        ("ledger_sweep", include_str!("scripts/ledger_sweep.lua")),
        ("ledger_enqueue", drover_schema::ledger::ENQUEUE_SCRIPT),
        ("ledger_cancel", drover_schema::ledger::CANCEL_SCRIPT),
        ("store_events", include_str!("scripts/store_events.lua")),
        ("open_session", include_str!("scripts/open_session.lua")),
        ("close_session", include_str!("scripts/close_session.lua")),
        ("claim_instance", include_str!("scripts/claim_instance.lua")),
        ("mark_offline", include_str!("scripts/mark_offline.lua")),
        ("record_upload", include_str!("scripts/record_upload.lua")),
        ("record_layout", include_str!("scripts/record_layout.lua")),
    ];

    /// The quoted strings of a Lua source, comments left out.
    fn literals(source: &str) -> Vec<&str> {
        let mut found = Vec::new();
        for line in source.lines() {
            let code = line.split("--").next().unwrap_or_default();
            let mut rest = code;
            while let Some(open) = rest.find(['\'', '"']) {
                let quote = &rest[open..=open];
                let after = &rest[open + 1..];
                let Some(close) = after.find(quote) else { break };
                found.push(&after[..close]);
                rest = &after[close + 1..];
            }
        }
        found
    }

    /// Names reach the scripts through `KEYS` and `ARGV` (from
    /// `drover_schema`); what a script may spell itself is a Redis command
    /// or keyword, a number, and the field names and values of the schema.
    #[test]
    fn scripts_spell_no_key_or_channel_and_only_the_schemas_fields() {
        let fields: HashSet<&str> = [
            &event_fields::ALL[..],
            &device_fields::ALL,
            &upload_fields::ALL,
            &layout_fields::ALL,
            &ledger_fields::ALL,
            &outcome_fields::ALL,
            &result_fields::ALL,
            &[upload_fields::UPLOAD_COMPLETED],
            &rollout::rollout_fields::ALL,
            &rollout::target_fields::ALL,
            &rollout::target_state::ALL,
            &rollout::state::ALL,
            &rollout::file_result_fields::ALL,
            &[rollout::file_result_fields::RETRYING],
            &rollout::report::ALL,
            &[rollout::action::PAUSE, rollout::action::RESUME, rollout::action::CANCEL],
        ]
        .concat()
        .into_iter()
        .collect();
        for (script, source) in SCRIPT_SOURCES {
            assert!(
                !source.contains("cwp:"),
                "{script}.lua names a key or channel itself: pass it in KEYS or ARGV"
            );
            let literals = literals(source);
            assert!(!literals.is_empty(), "{script}.lua: the literals are found");
            for literal in literals {
                let command_or_keyword = !literal.is_empty() && literal.bytes().all(|b| b.is_ascii_uppercase());
                let number_or_symbol = literal.bytes().all(|b| b.is_ascii_digit())
                    || matches!(literal, "*" | "~" | "=" | "==" | "%x" | "%-" | "^" | "$");
                // Error replies and messages for people.
                let prose = literal.contains(' ');
                assert!(
                    command_or_keyword || number_or_symbol || prose || fields.contains(literal),
                    "{script}.lua spells '{literal}', which is no field name of drover_schema"
                );
            }
        }
    }
}
