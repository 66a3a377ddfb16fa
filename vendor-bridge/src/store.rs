//! All Redis work of the bridge. Every operation is one Lua script (in
//! `src/scripts/`), so it is atomic: two bridges, two drivers or a resent
//! batch can never store an event twice or half-install a session. Key
//! names follow docs/ARCHITECTURE.md §Redis keys and are built inside the
//! scripts from serials that [`cwp::Serial`] has checked.
//!
//! Scripts are sent with `EVALSHA`; after a Redis restart the first call
//! gets `NOSCRIPT`, loads the script and runs it again.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use deadpool_redis::{Connection, Pool, Runtime, Timeouts};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, Script, ServerErrorKind};

use crate::batch::{COMMAND_RESULT_KIND, ValidBatch};

/// How long one Redis reply may take. Generous: a script storing thousands
/// of events waits for an fsync with `appendfsync always`, and a retried
/// batch is harmless (a duplicate) but a wasted one.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The bridge's Lua scripts, hashed once.
struct Scripts {
    store_events: Script,
    open_session: Script,
    close_session: Script,
    driver_restart: Script,
    reject_command: Script,
    record_upload: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    store_events: Script::new(include_str!("scripts/store_events.lua")),
    open_session: Script::new(include_str!("scripts/open_session.lua")),
    close_session: Script::new(include_str!("scripts/close_session.lua")),
    driver_restart: Script::new(include_str!("scripts/driver_restart.lua")),
    reject_command: Script::new(include_str!("scripts/reject_command.lua")),
    record_upload: Script::new(include_str!("scripts/record_upload.lua")),
});

/// A failed Redis operation. All of them are worth retrying: Redis down,
/// restarting (`LOADING`), slow, or out of memory.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had from the pool.
    #[error("no Redis connection: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    /// Redis failed the command or the connection broke.
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
    /// The Redis URL or pool settings are unusable.
    #[error("cannot set up the Redis pool: {0}")]
    Setup(String),
}

impl StoreError {
    /// Whether Redis refused the bridge's user (`WRONGPASS`; `NOAUTH`: no
    /// user given while the default user is off) or a command (`NOPERM`):
    /// a configuration problem that retrying will not fix.
    pub fn is_refused_by_acl(&self) -> bool {
        let err = match self {
            Self::Redis(err) | Self::Pool(deadpool_redis::PoolError::Backend(err)) => err,
            Self::Pool(_) | Self::Setup(_) => return false,
        };
        err.kind() == ErrorKind::AuthenticationFailed || matches!(err.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
    }

    /// Whether the connection that produced the error is worth keeping.
    fn connection_is_broken(&self) -> bool {
        match self {
            Self::Redis(err) => {
                err.is_io_error() || err.is_connection_dropped() || err.is_timeout() || err.is_connection_refusal()
            }
            Self::Pool(_) | Self::Setup(_) => false,
        }
    }
}

/// A new session for the registry (`OpenSession`).
#[derive(Debug, Clone, Copy)]
pub struct SessionOpening<'a> {
    /// The device.
    pub serial: &'a cwp::Serial,
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
}

/// A command that never reached its device (`RejectCommand`).
#[derive(Debug, Clone, Copy)]
pub struct CommandRejection<'a> {
    /// The device the command was for.
    pub serial: &'a cwp::Serial,
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
    /// The JSON published on `cwp:cmd-result:{serial}`.
    pub notice: &'a str,
}

/// A finished upload (`RecordUpload`).
#[derive(Debug, Clone, Copy)]
pub struct UploadRecord<'a> {
    /// The device that uploaded.
    pub serial: &'a cwp::Serial,
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
}

/// The bridge's Redis: a pool of multiplexed connections for the unary
/// calls, and a client for the event streams' own connections. Cheap to
/// clone.
///
/// Unary calls share one multiplexed connection taken from the pool rather
/// than checking one out per call: a checkout costs a `PING` round trip,
/// and with `appendfsync always` every round trip waits for an fsync, so a
/// connect storm of thousands of `OpenSession`s would crawl. Multiplexed,
/// they are pipelined: one fsync covers all that arrive together. A broken
/// connection is dropped and the pool gives (or makes) another.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    client: redis::Client,
    shared: std::sync::Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("pool", &self.pool.status()).finish()
    }
}

impl Store {
    /// A pool of at most `pool_size` connections to `redis_url`. Connects
    /// lazily: Redis need not be up yet.
    pub fn new(redis_url: &str, pool_size: usize) -> Result<Self, StoreError> {
        let connection = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let client = redis::Client::open(redis_url)?;
        let manager = deadpool_redis::Manager::new_with_config(redis_url, connection)?;
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .timeouts(Timeouts {
                // Waiting for a free connection is back-pressure, not a fault.
                wait: None,
                create: Some(CONNECT_TIMEOUT),
                recycle: Some(CONNECT_TIMEOUT),
            })
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|err| StoreError::Setup(err.to_string()))?;
        Ok(Self {
            pool,
            client,
            shared: std::sync::Arc::default(),
        })
    }

    /// The shared multiplexed connection for unary calls.
    pub(crate) async fn connection(&self) -> Result<SharedConnection, StoreError> {
        let mut slot = self.shared.lock().await;
        let connection = match &*slot {
            Some(connection) => connection.clone(),
            None => {
                let pooled: Connection = self.pool.get().await?;
                let connection = pooled.as_ref().clone();
                *slot = Some(connection.clone());
                connection
            }
        };
        Ok(SharedConnection {
            connection,
            slot: self.shared.clone(),
        })
    }

    /// `PING`: whether Redis answers at all.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// A writer for one event stream (see [`EventWriter`]).
    pub fn event_writer(&self) -> EventWriter {
        EventWriter::new(self.client.clone())
    }

    /// The restart cleanup on a stream's `hello`: returns how many devices
    /// of a previous instance of `driver` were marked offline.
    pub async fn driver_restart(&self, driver: &str, instance: &str) -> Result<u64, StoreError> {
        let mut conn = self.connection().await?;
        Ok(SCRIPTS
            .driver_restart
            .arg(driver)
            .arg(instance)
            .invoke_async(&mut conn)
            .await?)
    }

    /// Installs a session in the registry (`OpenSession`).
    pub async fn open_session(&self, session: SessionOpening<'_>) -> Result<SessionOpened, StoreError> {
        let mut conn = self.connection().await?;
        let (last_event_id, superseded): (String, i64) = SCRIPTS
            .open_session
            .arg(session.serial.as_str())
            .arg(session.session)
            .arg(session.driver)
            .arg(session.instance)
            .arg(session.peer)
            .arg(session.firmware)
            .arg(session.connected_ms)
            .invoke_async(&mut conn)
            .await?;
        let last_event_id = last_event_id.parse().map_err(|_| {
            RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "last_event_id in the registry is not a u64",
                last_event_id,
            ))
        })?;
        Ok(SessionOpened {
            last_event_id,
            superseded_other: superseded == 1,
        })
    }

    /// Ends a session unless a newer one replaced it (`CloseSession`);
    /// returns whether it was the current one.
    pub async fn close_session(
        &self,
        serial: &cwp::Serial,
        session: &str,
        driver: &str,
        last_seen_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        let current: i64 = SCRIPTS
            .close_session
            .arg(serial.as_str())
            .arg(session)
            .arg(driver)
            .arg(last_seen_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(current == 1)
    }

    /// Records a rejected command and publishes its notice (`RejectCommand`).
    pub async fn reject_command(&self, rejection: CommandRejection<'_>) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        SCRIPTS
            .reject_command
            .arg(rejection.serial.as_str())
            .arg(rejection.command_id)
            .arg(rejection.outcome)
            .arg(rejection.reason)
            .arg(rejection.message)
            .arg(rejection.driver)
            .arg(rejection.rejected_ms)
            .arg(rejection.notice)
            .invoke_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Appends an `upload_completed` record once per upload
    /// (`RecordUpload`); returns whether this call appended it.
    pub async fn record_upload(&self, upload: UploadRecord<'_>) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        let recorded: i64 = SCRIPTS
            .record_upload
            .arg(upload.serial.as_str())
            .arg(upload.upload_id)
            .arg(upload.name)
            .arg(upload.size)
            .arg(upload.sha256)
            .arg(upload.path)
            .arg(upload.driver)
            .arg(upload.completed_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(recorded == 1)
    }
}

/// A handle on the shared connection; an I/O failure through it retires
/// the connection for every later call.
pub(crate) struct SharedConnection {
    connection: MultiplexedConnection,
    slot: std::sync::Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>,
}

impl redis::aio::ConnectionLike for SharedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let result = self.connection.req_packed_command(cmd).await;
            self.retire_if_broken(&result).await;
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let result = self.connection.req_packed_commands(cmd, offset, count).await;
            self.retire_if_broken(&result).await;
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.connection.get_db()
    }
}

impl SharedConnection {
    async fn retire_if_broken<T>(&self, result: &Result<T, RedisError>) {
        if let Err(err) = result
            && (err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal())
        {
            *self.slot.lock().await = None;
        }
    }
}

/// How often, at most, one stream refreshes a device's registry entry
/// (`last_event_id`, `last_seen_ms`) while it keeps sending events. The
/// exactly-once high-water mark (`cwp:hwm`) is exact at every call; only
/// this human-facing copy lags, by at most this much.
const REGISTRY_REFRESH: Duration = Duration::from_secs(1);

/// Stores the batches of one event stream, one script call at a time.
///
/// Each stream has a Redis connection of its own: a script storing
/// thousands of events takes milliseconds, and the registry calls of
/// `OpenSession` must not queue behind it on a shared connection (a
/// handshake storm during heavy event traffic would time out). It reuses
/// one command buffer and its scratch tables, so a call allocates nothing
/// per event.
pub struct EventWriter {
    client: redis::Client,
    connection: Option<MultiplexedConnection>,
    command: redis::Cmd,
    /// Serials of the call being built, in first-seen order.
    serials: Vec<String>,
    /// Serial -> its index (1-based) in `serials`.
    index: HashMap<String, usize>,
    /// Serials whose registry entry was refreshed in the current and the
    /// previous period: a serial is refreshed when it is in neither. Two
    /// generations bound the memory to the devices active lately.
    refreshed: [HashSet<String>; 2],
    period_started: Instant,
}

impl std::fmt::Debug for EventWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWriter")
            .field("connected", &self.connection.is_some())
            .finish()
    }
}

impl EventWriter {
    fn new(client: redis::Client) -> Self {
        Self {
            client,
            connection: None,
            command: redis::Cmd::new(),
            serials: Vec::new(),
            index: HashMap::new(),
            refreshed: [HashSet::new(), HashSet::new()],
            period_started: Instant::now(),
        }
    }

    /// Stores `batches` (in order) with one script call and returns, per
    /// batch, how many events were newly appended to `cwp:events`; the rest
    /// were duplicates. On error nothing is known about what was stored:
    /// call again with the same batches.
    pub async fn store(&mut self, driver: &str, batches: &[ValidBatch]) -> Result<Vec<u32>, StoreError> {
        let refreshing = self.plan_call(batches);
        self.build_store_events(driver, batches, refreshing);
        let result = self.invoke().await;
        if let Err(err) = &result {
            if err.connection_is_broken() {
                // The next call connects again.
                self.connection = None;
            }
            // The registry refreshes of a failed call did not happen.
            for serial in &self.serials[..refreshing] {
                self.refreshed[0].remove(serial);
            }
        }
        let stored = result?;
        if stored.len() != batches.len() {
            return Err(RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "store_events returned a count per batch",
                format!("{} counts for {} batches", stored.len(), batches.len()),
            ))
            .into());
        }
        Ok(stored)
    }

    /// Collects the call's distinct serials, those due a registry refresh
    /// first; returns how many are due.
    fn plan_call(&mut self, batches: &[ValidBatch]) -> usize {
        if self.period_started.elapsed() >= REGISTRY_REFRESH {
            self.refreshed.swap(0, 1);
            self.refreshed[0].clear();
            self.period_started = Instant::now();
        }
        self.serials.clear();
        self.index.clear();
        let mut later = Vec::new();
        for event in batches.iter().flat_map(|batch| &batch.events) {
            if self.index.insert(event.serial.clone(), 0).is_some() {
                continue; // met earlier in this call
            }
            let [current, previous] = &mut self.refreshed;
            if current.contains(&event.serial) || previous.contains(&event.serial) {
                later.push(event.serial.clone());
            } else {
                current.insert(event.serial.clone());
                self.serials.push(event.serial.clone());
            }
        }
        let refreshing = self.serials.len();
        self.serials.append(&mut later);
        for (i, serial) in self.serials.iter().enumerate() {
            self.index.insert(serial.clone(), i + 1);
        }
        refreshing
    }

    /// Writes `EVALSHA store_events 0 driver k s r serials... n1..nk
    /// (index id time kind body received [notice])...` into the command
    /// (see `scripts/store_events.lua`).
    fn build_store_events(&mut self, driver: &str, batches: &[ValidBatch], refreshing: usize) {
        let command = &mut self.command;
        command.clear();
        command
            .arg("EVALSHA")
            .arg(SCRIPTS.store_events.get_hash())
            .arg(0)
            .arg(driver)
            .arg(batches.len())
            .arg(self.serials.len())
            .arg(refreshing);
        for serial in &self.serials {
            command.arg(serial.as_bytes());
        }
        for batch in batches {
            command.arg(batch.events.len());
        }
        for batch in batches {
            let mut notices = batch.results.iter();
            for event in &batch.events {
                command
                    .arg(self.index.get(&event.serial).copied().unwrap_or(0))
                    .arg(event.event_id)
                    .arg(event.time_ms)
                    .arg(event.kind)
                    .arg(&event.body[..])
                    .arg(event.received_ms);
                if event.kind == COMMAND_RESULT_KIND {
                    // `ValidBatch::check` made one notice per command result.
                    command.arg(notices.next().map_or("", String::as_str));
                }
            }
        }
    }

    async fn invoke(&mut self) -> Result<Vec<u32>, StoreError> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT));
                let connection = self
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                self.connection.insert(connection)
            }
        };
        match self.command.query_async(connection).await {
            Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                SCRIPTS.store_events.load_async(connection).await?;
                Ok(self.command.query_async(connection).await?)
            }
            result => Ok(result?),
        }
    }
}
