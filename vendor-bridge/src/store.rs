//! All Redis work of the bridge. Every operation is one Lua script (in
//! `src/scripts/`), so it is atomic: two bridges, two drivers or a resent
//! batch can never store an event twice or half-install a session. Every
//! key and channel name comes from [`drover_schema`] and reaches a script
//! as one of its `KEYS`, or in `ARGV` (a family's prefix, for the names of
//! serials and drivers a script only learns inside Redis); each script's
//! header lists what it takes. Serials have been checked by [`cwp::Serial`]
//! before they get here.
//!
//! Scripts are sent with `EVALSHA`; after a Redis restart the first call
//! gets `NOSCRIPT`, loads the script and runs it again.
//!
//! Connections: one `Connection` (multiplexed, mends itself) carries every
//! unary call, and each event stream has one of its own ([`EventWriter`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use cwp::Serial;
use drover_schema as schema;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{
    Cmd, ErrorKind, IntoConnectionInfo as _, Pipeline, ProtocolVersion, RedisError, RedisFuture, Script,
    ServerErrorKind, Value,
};

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
    /// Redis failed the command, refused the connection or its login, or
    /// the connection broke.
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
}

impl StoreError {
    /// Whether Redis refused the bridge's user (`WRONGPASS`; `NOAUTH`: no
    /// user given while the default user is off) or a command (`NOPERM`):
    /// a configuration problem that retrying will not fix.
    pub fn is_refused_by_acl(&self) -> bool {
        let Self::Redis(err) = self;
        err.kind() == ErrorKind::AuthenticationFailed || matches!(err.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
    }

    /// Whether the connection may have been lost (anything but an error
    /// reply from Redis): the next call dials again, perhaps to a Redis
    /// restarted with another configuration.
    pub fn may_have_lost_the_connection(&self) -> bool {
        let Self::Redis(err) = self;
        !matches!(err.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
    }
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
}

/// The bridge's Redis: one shared `Connection` for the unary calls, and
/// the client that event streams open their own connections with. Cheap to
/// clone.
///
/// Unary calls share one multiplexed connection rather than taking turns
/// on several: with `appendfsync always` every round trip waits for an
/// fsync, and a connect storm of thousands of `OpenSession`s would crawl;
/// multiplexed, they are pipelined and one fsync covers all that arrive
/// together. Redis runs one command at a time whatever the number of
/// connections, so more would not make it answer sooner.
#[derive(Debug, Clone)]
pub struct Store {
    client: redis::Client,
    unary: Connection,
}

impl Store {
    /// The bridge's Redis at `redis_url`. Connects lazily: Redis need not be
    /// up yet.
    ///
    /// Always RESP2, whatever the URL asks for: on RESP3, redis-rs dials a
    /// dropped connection again in the background, and the bridge must see
    /// every reconnection as a failed call (which closes the
    /// [`crate::durability::DurabilityGate`] until the new connection's Redis
    /// is checked).
    pub fn new(redis_url: &str) -> Result<Self, StoreError> {
        let info = redis_url.into_connection_info()?;
        let resp2 = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP2);
        let client = redis::Client::open(info.set_redis_settings(resp2))?;
        let unary = Connection::new(client.clone())?;
        Ok(Self { client, unary })
    }

    /// The shared connection of the unary calls.
    pub(crate) fn connection(&self) -> Connection {
        self.unary.clone()
    }

    /// `PING`: whether Redis answers at all.
    pub async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING").query_async::<()>(&mut self.connection()).await?;
        Ok(())
    }

    /// A writer for one event stream (see [`EventWriter`]), with a
    /// connection of its own.
    pub fn event_writer(&self) -> Result<EventWriter, StoreError> {
        Ok(EventWriter::new(Connection::new(self.client.clone())?))
    }

    /// The restart cleanup on a stream's `hello`: returns how many devices
    /// of a previous instance of `driver` were marked offline.
    pub async fn driver_restart(&self, driver: &str, instance: &str) -> Result<u64, StoreError> {
        Ok(SCRIPTS
            .driver_restart
            .key(schema::DRIVER_INSTANCE.name(driver))
            .key(schema::DRIVER_DEVICES.name(driver))
            .arg(driver)
            .arg(instance)
            .arg(schema::DEVICE.script_prefix())
            .invoke_async(&mut self.connection())
            .await?)
    }

    /// Installs a session in the registry (`OpenSession`).
    pub async fn open_session(&self, session: SessionOpening<'_>) -> Result<SessionOpened, StoreError> {
        let (last_event_id, superseded): (String, i64) = SCRIPTS
            .open_session
            .key(schema::DEVICE.name(session.serial))
            .key(schema::HIGH_WATER_MARKS)
            .key(schema::DRIVER_DEVICES.name(session.driver))
            .arg(session.serial.as_str())
            .arg(session.session)
            .arg(session.driver)
            .arg(session.instance)
            .arg(session.peer)
            .arg(session.firmware)
            .arg(session.connected_ms)
            .arg(schema::DRIVER_DEVICES.script_prefix())
            .arg(schema::DRIVER_CONTROL.script_prefix())
            .invoke_async(&mut self.connection())
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
        serial: &Serial,
        session: &str,
        driver: &str,
        last_seen_ms: u64,
    ) -> Result<bool, StoreError> {
        let current: i64 = SCRIPTS
            .close_session
            .key(schema::DEVICE.name(serial))
            .key(schema::HIGH_WATER_MARKS)
            .key(schema::DRIVER_DEVICES.name(driver))
            .arg(serial.as_str())
            .arg(session)
            .arg(last_seen_ms)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(current == 1)
    }

    /// Records a rejected command and publishes its notice (`RejectCommand`).
    pub async fn reject_command(&self, rejection: CommandRejection<'_>) -> Result<(), StoreError> {
        SCRIPTS
            .reject_command
            .key(schema::REJECTED_COMMANDS)
            .arg(rejection.serial.as_str())
            .arg(rejection.command_id)
            .arg(rejection.outcome)
            .arg(rejection.reason)
            .arg(rejection.message)
            .arg(rejection.driver)
            .arg(rejection.rejected_ms)
            .arg(rejection.notice)
            .arg(schema::COMMAND_RESULTS.name(rejection.serial))
            .invoke_async::<()>(&mut self.connection())
            .await?;
        Ok(())
    }

    /// Appends an `upload_completed` record once per upload
    /// (`RecordUpload`); returns whether this call appended it.
    pub async fn record_upload(&self, upload: UploadRecord<'_>) -> Result<bool, StoreError> {
        let recorded: i64 = SCRIPTS
            .record_upload
            .key(schema::UPLOAD_RECORDED.name(upload.serial, upload.upload_id))
            .key(schema::UPLOADS)
            .arg(upload.serial.as_str())
            .arg(upload.upload_id)
            .arg(upload.name)
            .arg(upload.size)
            .arg(upload.sha256)
            .arg(upload.path)
            .arg(upload.driver)
            .arg(upload.completed_ms)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(recorded == 1)
    }
}

/// A multiplexed Redis connection that mends itself: redis-rs's
/// [`ConnectionManager`], which pipelines concurrent calls over one socket
/// and dials again after an I/O error or a dropped connection, and a fresh
/// manager in the two cases that leave a manager broken for good:
///
/// - a reply that never came within [`RESPONSE_TIMEOUT`]: the manager keeps
///   the connection, and behind a peer that vanished without a reset every
///   later call would time out too;
/// - a refused login (`WRONGPASS`, or a full Redis answering `AUTH` with an
///   error) while dialling: the manager keeps that failed dial and answers
///   every later call with it, so the bridge would stay locked out after
///   the ACL is fixed.
///
/// A call fails at once while Redis is down, rather than waiting through a
/// schedule of reconnection attempts: the manager dials once per failure,
/// and every caller retries on its own terms already (drivers, the event
/// streams' appliers, the health check). Cheap to clone; clones share the
/// connection.
#[derive(Clone)]
pub(crate) struct Connection {
    shared: Arc<Shared>,
}

/// What the clones of a [`Connection`] share.
struct Shared {
    /// Where a new manager dials.
    client: redis::Client,
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

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("replacements", &self.current().generation)
            .finish()
    }
}

impl Connection {
    /// A connection to `client`'s Redis, dialled on first use.
    fn new(client: redis::Client) -> Result<Self, RedisError> {
        let manager = Self::new_manager(&client)?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                current: RwLock::new(Current { generation: 0, manager }),
            }),
        })
    }

    /// A manager that dials on first use.
    fn new_manager(client: &redis::Client) -> Result<ConnectionManager, RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
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

    /// Replaces manager `generation` if `result` shows it cannot recover
    /// by itself (see [`Connection`]).
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
        if let Ok(manager) = Self::new_manager(&self.shared.client) {
            *current = Current {
                generation: generation + 1,
                manager,
            };
        }
    }
}

impl ConnectionLike for Connection {
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

/// How often, at most, one stream refreshes a device's registry entry
/// (`last_event_id`, `last_seen_ms`) while it keeps sending events. The
/// exactly-once high-water mark ([`schema::HIGH_WATER_MARKS`]) is exact at
/// every call; only this human-facing copy lags, by at most this much.
const REGISTRY_REFRESH: Duration = Duration::from_secs(1);

/// Stores the batches of one event stream, one script call at a time.
///
/// Each stream has a Redis connection of its own: a script storing
/// thousands of events takes milliseconds, and the registry calls of
/// `OpenSession` must not queue behind it on a shared connection (a
/// handshake storm during heavy event traffic would time out). It reuses
/// one command buffer and its scratch tables, so a call allocates nothing
/// per event (only a key name per registry entry it refreshes).
pub struct EventWriter {
    connection: Connection,
    command: Cmd,
    /// Serials of the call being built, in first-seen order.
    serials: Vec<Serial>,
    /// Serial -> its index (1-based) in `serials`.
    index: HashMap<Serial, usize>,
    /// Serials whose registry entry was refreshed in the current and the
    /// previous period: a serial is refreshed when it is in neither. Two
    /// generations bound the memory to the devices active lately.
    refreshed: [HashSet<Serial>; 2],
    period_started: Instant,
}

impl std::fmt::Debug for EventWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWriter")
            .field("connection", &self.connection)
            .finish()
    }
}

impl EventWriter {
    fn new(connection: Connection) -> Self {
        Self {
            connection,
            command: Cmd::new(),
            serials: Vec::new(),
            index: HashMap::new(),
            refreshed: [HashSet::new(), HashSet::new()],
            period_started: Instant::now(),
        }
    }

    /// Stores `batches` (in order) with one script call and returns, per
    /// batch, how many events were newly appended to [`schema::EVENTS`]; the
    /// rest were duplicates. On error nothing is known about what was
    /// stored: call again with the same batches.
    pub async fn store(&mut self, driver: &str, batches: &[ValidBatch]) -> Result<Vec<u32>, StoreError> {
        let refreshing = self.plan_call(batches);
        self.build_store_events(driver, batches, refreshing);
        let result = self.invoke().await;
        if result.is_err() {
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
        for &serial in batches.iter().flat_map(|batch| &batch.serials) {
            if self.index.insert(serial, 0).is_some() {
                continue; // met earlier in this call
            }
            let [current, previous] = &mut self.refreshed;
            if current.contains(&serial) || previous.contains(&serial) {
                later.push(serial);
            } else {
                current.insert(serial);
                self.serials.push(serial);
            }
        }
        let refreshing = self.serials.len();
        self.serials.append(&mut later);
        for (i, serial) in self.serials.iter().enumerate() {
            self.index.insert(*serial, i + 1);
        }
        refreshing
    }

    /// Writes `EVALSHA store_events 2+r events hwm device... results-prefix
    /// driver k s serials... n1..nk (index id time kind body received
    /// [notice])...` into the command (see `scripts/store_events.lua`).
    fn build_store_events(&mut self, driver: &str, batches: &[ValidBatch], refreshing: usize) {
        let command = &mut self.command;
        command.clear();
        command
            .arg("EVALSHA")
            .arg(SCRIPTS.store_events.get_hash())
            .arg(2 + refreshing)
            .arg(schema::EVENTS)
            .arg(schema::HIGH_WATER_MARKS);
        for serial in &self.serials[..refreshing] {
            command.arg(schema::DEVICE.name(serial));
        }
        command
            .arg(schema::COMMAND_RESULTS.script_prefix())
            .arg(driver)
            .arg(batches.len())
            .arg(self.serials.len());
        for serial in &self.serials {
            command.arg(serial.as_bytes());
        }
        for batch in batches {
            command.arg(batch.events.len());
        }
        for batch in batches {
            let mut notices = batch.results.iter();
            for (event, serial) in batch.events.iter().zip(&batch.serials) {
                command
                    .arg(self.index.get(serial).copied().unwrap_or(0))
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
        let connection = &mut self.connection;
        match self.command.query_async(connection).await {
            Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                SCRIPTS.store_events.load_async(connection).await?;
                Ok(self.command.query_async(connection).await?)
            }
            result => Ok(result?),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use drover_schema::{control_fields, device_fields, event_fields, rejection_fields, upload_fields};

    const SCRIPT_SOURCES: [(&str, &str); 6] = [
        ("store_events", include_str!("scripts/store_events.lua")),
        ("open_session", include_str!("scripts/open_session.lua")),
        ("close_session", include_str!("scripts/close_session.lua")),
        ("driver_restart", include_str!("scripts/driver_restart.lua")),
        ("reject_command", include_str!("scripts/reject_command.lua")),
        ("record_upload", include_str!("scripts/record_upload.lua")),
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
            &rejection_fields::ALL,
            &upload_fields::ALL,
            &control_fields::ALL,
            &[control_fields::SUPERSEDE, upload_fields::UPLOAD_COMPLETED],
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
                let number_or_symbol = literal.bytes().all(|b| b.is_ascii_digit()) || matches!(literal, "*" | "~");
                assert!(
                    command_or_keyword || number_or_symbol || fields.contains(literal),
                    "{script}.lua spells '{literal}', which is no field name of drover_schema"
                );
            }
        }
    }
}
