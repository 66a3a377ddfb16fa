//! Operators' commands from Redis pub/sub, and the driver's control channel.
//!
//! One Redis pub/sub connection serves every device of the driver (never a
//! connection per device). A session subscribes to `cwp:cmd:{serial}` when
//! it is established and unsubscribes when it ends. Subscription changes go
//! through one task that, for each serial, makes Redis match the registry
//! *at the moment it acts*: a racing "session ended" and "new session of the
//! same serial" therefore always converge to subscribed.
//!
//! When the pub/sub connection is lost (Redis restarted, the connection
//! killed), the task reconnects at once and resubscribes every live serial
//! and the control channel `cwp:driver:{driver_id}`: commands published in
//! between are lost (pub/sub keeps nothing), so the gap must be short. Only
//! when reconnecting fails does it back off, doubling up to 5 s with
//! jitter, so that the drivers of a fleet do not retry in step.
//!
//! On a Redis Cluster the channels are sharded (`SSUBSCRIBE`, one
//! connection per node that owns some of them): a slot that migrates takes
//! its channels away, and the task subscribes the ones still wanted again
//! on the new owner; after a node is lost (a failover), it subscribes
//! everything again until the cluster has a master for every slot.
//!
//! One task does all of it: it reads published messages and applies
//! subscription changes in one loop, so nothing is left running when it
//! stops. Commands that will not reach their device are recorded through
//! the bridge by [`CommandReports`], whose short tasks the driver tracks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use cwp::{Command, CommandId, Serial, SessionId, Str8};
use drover_edge::bridge::{BridgeClient, TakenCommands};
use drover_redis::{Delivery, Subscriber, Target, Timeouts, is_refused_by_acl};
use drover_service::backoff::Backoff;
use drover_service::drain;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::registry::{CloseRequest, Registry};
use crate::single_flight::{Flight, SingleFlight};
use crate::storm::StormWatch;

/// Most channels in one SUBSCRIBE/UNSUBSCRIBE.
const CHANNELS_PER_CALL: usize = 512;
/// The largest rejected message kept for diagnosis.
const MAX_REJECTED_MESSAGE: usize = 4096;
/// Waits between failed attempts to reach Redis.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// Why an undelivered command was not delivered.
const UNDELIVERED: &str = "the device's session ended before delivery";

/// The command channel of `serial`.
fn command_channel(serial: &Serial) -> String {
    drover_schema::COMMANDS.name(serial)
}

/// The control channel of a driver.
fn control_channel(driver_id: &str) -> String {
    drover_schema::DRIVER_CONTROL.name(driver_id)
}

struct SyncRequest {
    serial: Serial,
    confirmed: Option<oneshot::Sender<()>>,
}

/// The sessions' handle on the subscription task.
#[derive(Debug, Clone)]
pub struct Subscriptions {
    /// Unbounded in type, bounded by the sessions: a session asks twice in
    /// its life (when it starts and when it ends), and while Redis is away
    /// the task drops what comes in (a fresh connection subscribes the
    /// registry's serials anyway), so the queue holds at most the requests
    /// of sessions that started or ended within one reconnect attempt.
    tx: mpsc::UnboundedSender<SyncRequest>,
}

impl std::fmt::Debug for SyncRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncRequest").field("serial", &self.serial).finish()
    }
}

impl Subscriptions {
    /// Brings the subscription of `serial` in line with the registry.
    pub fn sync(&self, serial: Serial) {
        let _ = self.tx.send(SyncRequest {
            serial,
            confirmed: None,
        });
    }

    /// Like [`Subscriptions::sync`], and waits (at most `timeout`) for Redis
    /// to confirm; returns whether it did. A session waits for this before
    /// `WELCOME`, so that a `PUBLISH` right after the handshake finds it.
    pub async fn sync_confirmed(&self, serial: Serial, timeout: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self
            .tx
            .send(SyncRequest {
                serial,
                confirmed: Some(tx),
            })
            .is_err()
        {
            return false;
        }
        matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(())))
    }
}

/// A command message as operators publish it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandMessage {
    id: Option<String>,
    name: String,
    body: Option<String>,
    body_b64: Option<String>,
}

/// Why a published message is not a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The message's id, if it had a readable one.
    pub command_id: Option<String>,
    /// What is wrong, for the operator.
    pub reason: String,
}

/// Parses a published message into a `COMMAND` that fits in `max_payload`.
pub fn parse_command(payload: &[u8], max_payload: u32) -> Result<Command, Rejection> {
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|err| Rejection {
        command_id: None,
        reason: format!("not JSON: {err}"),
    })?;
    let command_id = value.get("id").and_then(|id| id.as_str()).map(str::to_owned);
    let reject = |reason: String| Rejection {
        command_id: command_id.clone(),
        reason,
    };
    let message: CommandMessage =
        serde_json::from_value(value).map_err(|err| reject(format!("not a command: {err}")))?;
    let id = match &message.id {
        Some(id) => uuid::Uuid::parse_str(id).map_err(|err| reject(format!("id is not a UUID: {err}")))?,
        None => uuid::Uuid::new_v4(),
    };
    if message.name.is_empty() {
        return Err(reject("name is empty".to_owned()));
    }
    let name = Str8::new(message.name).map_err(|err| reject(format!("name: {err}")))?;
    let body = match (message.body, message.body_b64) {
        (Some(_), Some(_)) => return Err(reject("give body or body_b64, not both".to_owned())),
        (Some(text), None) => Bytes::from(text),
        (None, Some(b64)) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|err| reject(format!("body_b64 is not base64: {err}")))?,
        ),
        (None, None) => Bytes::new(),
    };
    // COMMAND payload: id16 + str8 + body + tag.
    let payload_len = 16 + 1 + name.len() + body.len() + cwp::TAG_LEN;
    if payload_len > max_payload as usize {
        return Err(reject(format!(
            "command is {payload_len} bytes on the wire, the device accepts at most {max_payload}"
        )));
    }
    Ok(Command {
        command_id: CommandId(*id.as_bytes()),
        name,
        body,
    })
}

/// A message on the driver's control channel.
#[derive(Debug, Deserialize)]
struct ControlMessage {
    #[serde(rename = "type")]
    kind: String,
    serial: String,
    session: String,
}

/// Records commands that will not reach their device, where operators
/// look (`cwp:cmd-rejected`, `cwp:cmd-result:{serial}`), through the
/// bridge. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CommandReports {
    /// `RejectCommand`.
    pub bridge: BridgeClient,
    /// `drover_driver_commands_total`.
    pub metrics: Arc<Metrics>,
    /// Where the reports' calls run: awaited at shutdown.
    pub tasks: TaskTracker,
    /// The runtime they run on (a session may end on the handshake thread).
    pub runtime: tokio::runtime::Handle,
}

/// Why a command did not reach its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The message is not a valid command.
    Rejected,
    /// The device's session ended before it could be sent.
    Undelivered,
}

impl Outcome {
    /// The `status`/`outcome` recorded in Redis.
    fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "REJECTED",
            Self::Undelivered => "UNDELIVERED",
        }
    }

    /// The `result` label of `drover_driver_commands_total`.
    fn label(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Undelivered => "undelivered",
        }
    }
}

impl CommandReports {
    /// Records a command that will not reach the device, where operators
    /// look.
    pub fn report(&self, serial: Serial, outcome: Outcome, command_id: Option<String>, reason: String, payload: &[u8]) {
        self.metrics.command(outcome.label());
        let bridge = self.bridge.clone();
        let message = payload[..payload.len().min(MAX_REJECTED_MESSAGE)].to_vec();
        let call = async move {
            if let Err(status) = bridge
                .reject_command(&serial, outcome.as_str(), command_id, &reason, &message)
                .await
            {
                warn!(%serial, code = ?status.code(), "could not record a rejected command with the vendor-bridge");
            }
        };
        self.tasks.spawn_on(call, &self.runtime);
    }

    /// A command queued for a session that ended before it went out.
    pub fn undelivered(&self, serial: Serial, command_id: CommandId) {
        self.report(
            serial,
            Outcome::Undelivered,
            Some(command_id.to_string()),
            UNDELIVERED.to_owned(),
            &[],
        );
    }
}

/// Fetches a device's durable commands (its ledger, through the bridge's
/// `TakeCommands`) into its live session: when the session opens, when
/// `{"ledger":true}` comes on its command channel (after an enqueue), and
/// when the device's results have brought the commands it holds down to
/// half of `CMD_MAX_IN_FLIGHT` while more wait in its ledger. One fetch per
/// device at a time, so the commands reach the session in the ledger's
/// order; a request that comes during a fetch makes it fetch once more.
/// Cheap to clone.
///
/// Why half: refilling after every result cost a `TakeCommands` (and a
/// script reading the whole ledger) per command; refilling at half costs
/// one per `CMD_MAX_IN_FLIGHT / 2` commands while the device still has
/// commands to work on. The ledger's script keeps the limit whatever the
/// driver asks: an extra fetch is only a wasted call.
#[derive(Debug, Clone)]
pub struct DurableCommands {
    /// `TakeCommands`.
    pub bridge: BridgeClient,
    /// The live sessions.
    pub registry: Arc<Registry>,
    /// `CMD_MAX_IN_FLIGHT`.
    pub max_in_flight: u32,
    /// Largest payload a device accepts.
    pub max_payload: u32,
    /// The devices being fetched for.
    pub fetching: SingleFlight<Serial>,
    /// The durable commands handed to each live session and not yet
    /// answered (kept here, not in the session: a parked session's size is
    /// budgeted): a session that ends before sending them leaves them in
    /// the ledger for the next one, with no `UNDELIVERED` report.
    pub handed: Arc<std::sync::Mutex<HashMap<SessionId, Handed>>>,
    /// While a connect storm is under way, fetches wait (see
    /// [`crate::storm::STORM_HANDSHAKES`]).
    pub storm: Arc<StormWatch>,
    /// Where the fetches run: awaited at shutdown.
    pub tasks: TaskTracker,
    /// The runtime they run on (a session may open on the handshake thread).
    pub runtime: tokio::runtime::Handle,
}

/// A live session's durable commands: handed to it and not yet answered.
#[derive(Debug, Default)]
pub struct Handed {
    /// Handed to the session, not answered by a stored result.
    commands: Vec<CommandId>,
    /// Whether the ledger held more for the device at the last fetch.
    more_waiting: bool,
    /// Every command pushed to the session: a fetch hands again those the
    /// ledger sent in this session (in case a reply was lost), and these
    /// are not sent twice.
    pushed: Vec<CommandId>,
}

/// Waits between failed `TakeCommands` while the session lives.
const FETCH_RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));

impl DurableCommands {
    /// Fetches `serial`'s durable commands into its session, now or right
    /// after the fetch under way.
    pub fn fetch(&self, serial: Serial) {
        let Some(flight) = self.fetching.start(serial) else {
            return;
        };
        let this = self.clone();
        self.tasks.spawn_on(
            async move { this.fetch_until_done(serial, flight).await },
            &self.runtime,
        );
    }

    /// Forgets an ended session; the durable commands it was handed and
    /// that were not answered.
    pub fn session_ended(&self, session: &SessionId) -> Vec<CommandId> {
        self.handed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(session)
            .map(|handed| handed.commands)
            .unwrap_or_default()
    }

    /// The device's result for `command` is durably stored (so its ledger
    /// has settled the command, if it was one of its durable commands):
    /// fetches more when the session holds half of `CMD_MAX_IN_FLIGHT` or
    /// fewer and the ledger had more.
    pub fn answered(&self, serial: Serial, session: &SessionId, command: CommandId) {
        let refill = {
            let mut handed = self.handed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(handed) = handed.get_mut(session) else {
                return;
            };
            let Some(at) = handed.commands.iter().position(|id| *id == command) else {
                return;
            };
            handed.commands.swap_remove(at);
            let refill = handed.more_waiting && handed.commands.len() <= self.refill_at();
            if refill {
                handed.more_waiting = false;
            }
            refill
        };
        if refill {
            self.fetch(serial);
        }
    }

    /// How few commands a session holds before it is given more.
    fn refill_at(&self) -> usize {
        usize::try_from(self.max_in_flight / 2).unwrap_or(usize::MAX)
    }

    async fn fetch_until_done(&self, serial: Serial, mut flight: Flight<Serial>) {
        let mut backoff = FETCH_RETRY;
        self.storm.passed().await;
        loop {
            if let Some(session) = self.registry.get(&serial) {
                match self
                    .bridge
                    .take_commands(&serial, &session.session_id, self.max_in_flight, self.max_payload)
                    .await
                {
                    Ok(TakenCommands {
                        commands,
                        waiting,
                        unanswered,
                    }) => {
                        backoff.reset();
                        {
                            let mut handed = self.handed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            let handed = handed.entry(session.session_id).or_default();
                            handed.more_waiting = waiting > 0;
                            // The ledger's view: drops a command that expired
                            // unanswered (an older bridge sends none, and the
                            // commands below are added anyway).
                            handed.commands = unanswered;
                        }
                        for command in commands {
                            let Ok(id) = <[u8; 16]>::try_from(command.command_id.as_slice()) else {
                                warn!(%serial, "the bridge sent a durable command without a 16-byte id; skipped");
                                continue;
                            };
                            let Ok(name) = Str8::new(command.name) else {
                                warn!(%serial, "the bridge sent a durable command with a name over 255 bytes; skipped");
                                continue;
                            };
                            {
                                let mut handed = self.handed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                                let handed = handed.entry(session.session_id).or_default();
                                if handed.pushed.contains(&CommandId(id)) {
                                    // In the session's mailbox or sent already.
                                    continue;
                                }
                                handed.pushed.push(CommandId(id));
                                if !handed.commands.contains(&CommandId(id)) {
                                    handed.commands.push(CommandId(id));
                                }
                            }
                            debug!(%serial, attempt = command.attempt, "sending a durable command");
                            session.push_command(Command {
                                command_id: CommandId(id),
                                name,
                                body: Bytes::from(command.body),
                            });
                        }
                        // A session that ended meanwhile has been forgotten
                        // already: forget what was handed to it since.
                        if self
                            .registry
                            .get(&serial)
                            .is_none_or(|live| live.session_id != session.session_id)
                        {
                            self.session_ended(&session.session_id);
                        }
                    }
                    Err(status) => {
                        // The commands stay in the ledger: retry while the
                        // session lives.
                        let retry_in = backoff.next_delay();
                        warn!(%serial, code = ?status.code(), ?retry_in, "could not fetch durable commands from the vendor-bridge");
                        tokio::time::sleep(retry_in).await;
                        continue;
                    }
                }
            }
            if !flight.again() {
                break;
            }
        }
    }
}

/// Whether a message on a command channel is the ledger's wake-up
/// (`{"ledger":true}`) rather than a command.
pub fn is_ledger_wake(payload: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Wake {
        ledger: bool,
    }
    serde_json::from_slice::<Wake>(payload).is_ok_and(|wake| wake.ledger)
}

/// Whether a message on a command channel is a rollout's wake-up
/// (`{"files":true}`) rather than a command.
pub fn is_files_wake(payload: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Wake {
        files: bool,
    }
    serde_json::from_slice::<Wake>(payload).is_ok_and(|wake| wake.files)
}

/// What the subscription task needs.
#[derive(Debug)]
pub struct CommandRouter {
    /// Redis (or a Redis Cluster), for pub/sub.
    pub redis: Target,
    /// This driver's id (its control channel).
    pub driver_id: String,
    /// The live sessions.
    pub registry: Arc<Registry>,
    /// Rejected and undelivered commands.
    pub reports: CommandReports,
    /// `drover_driver_pubsub_reconnects_total`.
    pub metrics: Arc<Metrics>,
    /// Largest payload a device accepts.
    pub max_payload: u32,
    /// Durable commands.
    pub durable: DurableCommands,
    /// Rollouts' transfers, told of `{"files":true}`.
    pub files: crate::files::FileService,
}

/// How long connecting to Redis and each reply may take.
const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(5),
    response: Duration::from_secs(5),
};

/// Checks once, at start, that Redis accepts this driver's user (the
/// `REDIS_URL` credentials) for what the driver does there: subscribing.
/// A refusal is fatal, since it will not fix itself and would leave every
/// command undelivered; an unreachable Redis is not (the subscription
/// task waits for it).
pub async fn check_access(redis: &Target, driver_id: &str) -> anyhow::Result<()> {
    let attempt = async {
        let mut subscriber = Subscriber::connect(redis, TIMEOUTS).await?;
        subscriber.subscribe(vec![control_channel(driver_id)]).await?;
        Ok::<_, redis::RedisError>(())
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) if is_refused_by_acl(&err) => Err(anyhow::anyhow!(
            "Redis refused this driver's user ({err}): check the user and password in REDIS_URL \
             (redis://USER:PASSWORD@HOST:PORT) and that its ACL allows SUBSCRIBE and UNSUBSCRIBE \
             (SSUBSCRIBE and SUNSUBSCRIBE on a cluster) on the channels cwp:cmd:* and cwp:driver:* (README, Security)"
        )),
        Ok(Err(err)) => {
            warn!(error = %err, "Redis is not reachable at start; commands will be delivered once it is");
            Ok(())
        }
        Err(_) => {
            warn!("Redis did not answer at start; commands will be delivered once it does");
            Ok(())
        }
    }
}

/// The handle sessions use, and the subscription task to spawn; it runs
/// until `stop` is signalled.
pub fn subscriptions(
    router: CommandRouter,
    stop: drain::Watch,
) -> anyhow::Result<(Subscriptions, impl std::future::Future<Output = ()> + Send)> {
    let (tx, rx) = mpsc::unbounded_channel();
    Ok((Subscriptions { tx }, run(router, rx, stop)))
}

/// Every channel this driver needs now: its control channel and the
/// command channel of each live session.
fn every_channel(router: &CommandRouter) -> Vec<String> {
    let mut channels = vec![control_channel(&router.driver_id)];
    channels.extend(router.registry.serials_wanting_commands().iter().map(command_channel));
    channels
}

async fn run(router: CommandRouter, mut requests: mpsc::UnboundedReceiver<SyncRequest>, stop: drain::Watch) {
    let mut backoff = RECONNECT;
    let mut subscribed_before = false;
    let mut subscriber: Option<Subscriber> = None;
    loop {
        // Connect (one Redis: a new connection after every loss; a cluster
        // connection mends itself and is kept), then subscribe everything.
        let connected = match subscriber.take() {
            Some(kept) => Ok(kept),
            None => tokio::select! {
                () = stop.signaled() => return,
                connected = Subscriber::connect(&router.redis, TIMEOUTS) => connected,
            },
        };
        let mut sub = match connected {
            Ok(sub) => sub,
            Err(err) => {
                let retry_in = backoff.next_delay();
                report_failure(
                    &err,
                    retry_in,
                    "Redis pub/sub unavailable; commands cannot be delivered until it returns",
                );
                if wait_dropping_requests(&stop, &mut requests, retry_in).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let resubscribed = tokio::select! {
            () = stop.signaled() => return,
            resubscribed = sub.subscribe(every_channel(&router)) => resubscribed,
        };
        match resubscribed {
            Ok(()) => {
                backoff.reset();
                if subscribed_before {
                    router.metrics.pubsub_reconnects.inc();
                }
                subscribed_before = true;
                info!(sessions = router.registry.len(), "subscribed to command channels");
            }
            Err(err) => {
                // With an ACL user, the connection succeeds and SUBSCRIBE is
                // what is refused; on a cluster, a slot's master may be
                // failing over: back off like a failed connection.
                let retry_in = backoff.next_delay();
                report_failure(&err, retry_in, "subscribing to command channels failed; reconnecting");
                if matches!(sub, Subscriber::Cluster { .. }) && !is_refused_by_acl(&err) {
                    subscriber = Some(sub);
                }
                if wait_dropping_requests(&stop, &mut requests, retry_in).await.is_err() {
                    return;
                }
                continue;
            }
        }

        // Route messages and serve subscription changes until Redis goes
        // away or we stop. The connection's own task buffers messages while
        // a change is applied.
        let control = control_channel(&router.driver_id);
        let lost = loop {
            let first = tokio::select! {
                () = stop.signaled() => return,
                delivery = sub.next() => match delivery {
                    Some(Delivery::Message { channel, payload }) => {
                        route(&router, &control, &channel, &payload);
                        continue;
                    }
                    Some(Delivery::Dropped(channel)) => {
                        // A slot migrated: subscribe again what is still
                        // wanted (the new SSUBSCRIBE finds the new owner).
                        let wanted = channel == control
                            || drover_schema::COMMANDS
                                .serial_of(&channel)
                                .is_some_and(|serial| router.registry.wants_commands(&serial));
                        if wanted && let Err(err) = sub.subscribe(vec![channel]).await {
                            warn!(error = %err, "Redis pub/sub failed; subscribing everything again");
                            break true;
                        }
                        continue;
                    }
                    Some(Delivery::Disconnected) => {
                        warn!("Redis pub/sub connection to a cluster node lost; subscribing everything again");
                        break true;
                    }
                    None => {
                        warn!("Redis pub/sub connection lost");
                        break false;
                    }
                },
                request = requests.recv() => match request {
                    Some(request) => request,
                    None => return,
                },
            };
            let mut batch = vec![first];
            while batch.len() < CHANNELS_PER_CALL {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let (live, gone): (Vec<_>, Vec<_>) = batch.iter().partition(|r| router.registry.wants_commands(&r.serial));
            let subscribe: Vec<String> = live.iter().map(|r| command_channel(&r.serial)).collect();
            let unsubscribe: Vec<String> = gone.iter().map(|r| command_channel(&r.serial)).collect();
            let applied = async {
                if !subscribe.is_empty() {
                    sub.subscribe(subscribe).await?;
                }
                if !unsubscribe.is_empty() {
                    sub.unsubscribe(unsubscribe).await?;
                }
                Ok::<_, redis::RedisError>(())
            };
            if let Err(err) = applied.await {
                // The live serials are resubscribed after reconnecting.
                warn!(error = %err, "Redis pub/sub failed; reconnecting");
                break matches!(sub, Subscriber::Cluster { .. });
            }
            for request in batch {
                if let Some(confirmed) = request.confirmed {
                    let _ = confirmed.send(());
                }
            }
        };
        // A cluster connection is kept (it reconnects by itself); what it
        // may have lost is subscribed again above.
        if lost {
            subscriber = Some(sub);
        }
    }
}

/// While Redis is away: waits `delay`, dropping subscription requests as
/// they come (the next connection subscribes every live serial; a session
/// waiting for a confirmation learns at once that there is none). `Err`
/// once stopped.
async fn wait_dropping_requests(
    stop: &drain::Watch,
    requests: &mut mpsc::UnboundedReceiver<SyncRequest>,
    delay: Duration,
) -> Result<(), ()> {
    let deadline = tokio::time::sleep(delay);
    let mut deadline = std::pin::pin!(deadline);
    loop {
        tokio::select! {
            () = stop.signaled() => return Err(()),
            () = &mut deadline => return Ok(()),
            request = requests.recv() => if request.is_none() {
                return Err(());
            },
        }
    }
}

/// Logs a failure of the pub/sub connection. Refused credentials or
/// permissions will not fix themselves: they are errors that name the
/// variable to look at, not a passing warning.
fn report_failure(err: &redis::RedisError, retry_in: Duration, what: &str) {
    if is_refused_by_acl(err) {
        tracing::error!(
            error = %err,
            ?retry_in,
            "Redis refused this driver's user: check the user and password in REDIS_URL and that its ACL allows \
             SUBSCRIBE/UNSUBSCRIBE on the channels cwp:cmd:* and cwp:driver:* (README, Security); \
             commands cannot be delivered"
        );
    } else {
        warn!(error = %err, ?retry_in, "{what}");
    }
}

/// Routes one published message: a supersede notice on the control
/// channel, or a command for a session.
fn route(router: &CommandRouter, control: &str, channel: &str, payload: &[u8]) {
    if channel == control {
        handle_control(router, payload);
    } else if let Some(serial) = drover_schema::COMMANDS.serial_of(channel) {
        route_command(router, serial, payload);
    }
}

fn handle_control(router: &CommandRouter, payload: &[u8]) {
    let message: ControlMessage = match serde_json::from_slice(payload) {
        Ok(message) => message,
        Err(err) => {
            warn!(error = %err, "ignoring malformed control message");
            return;
        }
    };
    if message.kind != drover_schema::control_fields::SUPERSEDE {
        debug!(kind = message.kind, "ignoring unknown control message");
        return;
    }
    let Ok(serial) = message.serial.parse::<Serial>() else {
        warn!("ignoring supersede notice with an invalid serial");
        return;
    };
    if let Some(session) = router.registry.get(&serial)
        && hex::encode(session.session_id.0) == message.session
    {
        info!(%serial, "session superseded by a newer one elsewhere in the fleet");
        session.request_close(CloseRequest::Superseded);
    }
}

fn route_command(router: &CommandRouter, serial: Serial, payload: &[u8]) {
    if is_files_wake(payload) {
        // As for the ledger: a session being registered asks after
        // OpenSession; a live one is told (it knows whether it has a
        // transfer under way).
        router.registry.wake_opening(&serial);
        if let Some(session) = router.registry.get(&serial) {
            router.files.wake(&session);
        }
        return;
    }
    if is_ledger_wake(payload) {
        // A session being registered fetches after OpenSession: the
        // bridge may have read its ledger before this command came.
        router.registry.wake_opening(&serial);
        if router.registry.get(&serial).is_some() {
            router.durable.fetch(serial);
        }
        return;
    }
    match parse_command(payload, router.max_payload) {
        Ok(command) => match router.registry.get(&serial) {
            Some(session) => session.push_command(command),
            None => router.reports.report(
                serial,
                Outcome::Undelivered,
                Some(command.command_id.to_string()),
                UNDELIVERED.to_owned(),
                payload,
            ),
        },
        Err(rejection) => {
            warn!(%serial, reason = %rejection.reason, "rejected a malformed command (see cwp:cmd-rejected)");
            router.reports.report(
                serial,
                Outcome::Rejected,
                rejection.command_id,
                rejection.reason,
                payload,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_with_text_body_and_id() {
        let command = parse_command(
            br#"{"id":"11111111-1111-1111-1111-111111111111","name":"reboot","body":"{\"delay_s\":5}"}"#,
            65_536,
        )
        .unwrap();
        assert_eq!(command.command_id, CommandId([0x11; 16]));
        assert_eq!(command.name.as_str(), "reboot");
        assert_eq!(&command.body[..], br#"{"delay_s":5}"#);
    }

    #[test]
    fn an_id_is_generated_when_absent_and_base64_bodies_decode() {
        let command = parse_command(br#"{"name":"blink","body_b64":"AAEC"}"#, 65_536).unwrap();
        assert_ne!(command.command_id, CommandId([0; 16]));
        assert_eq!(&command.body[..], &[0, 1, 2]);
    }

    #[test]
    fn malformed_messages_are_rejected_with_a_reason() {
        let cases: [(&[u8], &str); 7] = [
            (b"reboot", "not JSON"),
            (br#"{"body":"x"}"#, "missing field `name`"),
            (br#"{"name":""}"#, "name is empty"),
            (br#"{"name":"x","bdy":"typo"}"#, "unknown field `bdy`"),
            (br#"{"id":"42","name":"x"}"#, "id is not a UUID"),
            (br#"{"name":"x","body":"a","body_b64":"YQ=="}"#, "not both"),
            (br#"{"name":"x","body_b64":"***"}"#, "not base64"),
        ];
        for (message, expected) in cases {
            let rejection = parse_command(message, 65_536).unwrap_err();
            assert!(
                rejection.reason.contains(expected),
                "{rejection:?} should mention {expected:?}"
            );
        }
        let rejection = parse_command(br#"{"id":"42","name":"x"}"#, 65_536).unwrap_err();
        assert_eq!(
            rejection.command_id.as_deref(),
            Some("42"),
            "a readable id is reported back"
        );
    }

    #[test]
    fn the_ledgers_wake_up_is_no_command() {
        assert!(is_ledger_wake(br#"{"ledger":true}"#));
        assert!(!is_ledger_wake(br#"{"ledger":false}"#));
        assert!(!is_ledger_wake(br#"{"name":"reboot"}"#));
        assert!(!is_ledger_wake(b"reboot"));
    }

    #[test]
    fn a_command_must_fit_the_devices_max_payload() {
        let body = "x".repeat(2000);
        let message = format!(r#"{{"name":"big","body":"{body}"}}"#);
        assert!(parse_command(message.as_bytes(), 65_536).is_ok());
        let rejection = parse_command(message.as_bytes(), 1024).unwrap_err();
        assert!(rejection.reason.contains("at most 1024"), "{rejection:?}");
    }
}
