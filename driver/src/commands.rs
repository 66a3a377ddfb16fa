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

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use cwp::{Command, CommandId, Serial, Str8};
use futures::StreamExt as _;
use rand::RngExt as _;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::bridge::BridgeClient;
use crate::metrics::Metrics;
use crate::registry::{CloseRequest, Registry};

/// Prefix of the per-device command channels.
pub const COMMAND_CHANNEL_PREFIX: &str = "cwp:cmd:";
/// Most channels in one SUBSCRIBE/UNSUBSCRIBE.
const CHANNELS_PER_CALL: usize = 512;
/// The largest rejected message kept for diagnosis.
const MAX_REJECTED_MESSAGE: usize = 4096;

/// The command channel of `serial`.
pub fn command_channel(serial: &Serial) -> String {
    format!("{COMMAND_CHANNEL_PREFIX}{serial}")
}

/// The control channel of a driver.
pub fn control_channel(driver_id: &str) -> String {
    format!("cwp:driver:{driver_id}")
}

struct SyncRequest {
    serial: Serial,
    confirmed: Option<oneshot::Sender<()>>,
}

/// The sessions' handle on the subscription task.
#[derive(Debug, Clone)]
pub struct Subscriptions {
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

/// What the subscription task needs.
pub struct CommandRouter {
    /// Redis, for pub/sub.
    pub redis_url: String,
    /// This driver's id (its control channel).
    pub driver_id: String,
    /// The live sessions.
    pub registry: Arc<Registry>,
    /// For reporting rejected and undelivered commands.
    pub bridge: BridgeClient,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Largest payload a device accepts.
    pub max_payload: u32,
}

/// Checks once, at start, that Redis accepts this driver's user (the
/// `REDIS_URL` credentials) for what the driver does there: subscribing.
/// A refusal is fatal, since it will not fix itself and would leave every
/// command undelivered; an unreachable Redis is not (the subscription
/// task waits for it).
pub async fn check_access(redis_url: &str, driver_id: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(redis_url)?;
    let attempt = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(control_channel(driver_id)).await?;
        Ok::<_, redis::RedisError>(())
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) if is_refused_by_acl(&err) => Err(anyhow::anyhow!(
            "Redis refused this driver's user ({err}): check the user and password in REDIS_URL \
             (redis://USER:PASSWORD@HOST:PORT) and that its ACL allows SUBSCRIBE and UNSUBSCRIBE \
             on the channels cwp:cmd:* and cwp:driver:* (README, Security)"
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

/// Starts the subscription task; it runs until `stop` is cancelled.
pub fn spawn(
    router: CommandRouter,
    stop: CancellationToken,
) -> anyhow::Result<(Subscriptions, tokio::task::JoinHandle<()>)> {
    let client = redis::Client::open(router.redis_url.as_str())?;
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(Arc::new(router), client, rx, stop));
    Ok((Subscriptions { tx }, task))
}

async fn run(
    router: Arc<CommandRouter>,
    client: redis::Client,
    mut requests: mpsc::UnboundedReceiver<SyncRequest>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut subscribed_before = false;
    loop {
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            connected = client.get_async_pubsub() => connected,
        };
        let (mut sink, stream) = match connected {
            Ok(pubsub) => pubsub.split(),
            Err(err) => {
                let retry_in = backoff.next();
                report_failure(
                    &err,
                    retry_in,
                    "Redis pub/sub unavailable; commands cannot be delivered until it returns",
                );
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(retry_in) => {}
                }
                continue;
            }
        };

        let lost = CancellationToken::new();
        let reader = tokio::spawn(read_messages(router.clone(), stream, lost.clone()));
        let resubscribed = async {
            sink.subscribe(control_channel(&router.driver_id)).await?;
            for chunk in router.registry.serials().chunks(CHANNELS_PER_CALL) {
                let channels: Vec<String> = chunk.iter().map(command_channel).collect();
                sink.subscribe(channels).await?;
            }
            Ok::<_, redis::RedisError>(())
        };
        match resubscribed.await {
            Ok(()) => {
                backoff = Backoff::default();
                if subscribed_before {
                    router.metrics.pubsub_reconnects.inc();
                }
                subscribed_before = true;
                info!(sessions = router.registry.len(), "subscribed to command channels");
            }
            Err(err) => {
                // With an ACL user, the connection succeeds and SUBSCRIBE is
                // what is refused: back off like a failed connection.
                reader.abort();
                let retry_in = backoff.next();
                report_failure(&err, retry_in, "subscribing to command channels failed; reconnecting");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(retry_in) => {}
                }
                continue;
            }
        }

        // Serve subscription changes until Redis goes away or we stop.
        loop {
            let first = tokio::select! {
                () = stop.cancelled() => { reader.abort(); return; }
                () = lost.cancelled() => break,
                request = requests.recv() => match request {
                    Some(request) => request,
                    None => { reader.abort(); return; }
                },
            };
            let mut batch = vec![first];
            while batch.len() < CHANNELS_PER_CALL {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let (live, gone): (Vec<_>, Vec<_>) = batch.iter().partition(|r| router.registry.get(&r.serial).is_some());
            let subscribe: Vec<String> = live.iter().map(|r| command_channel(&r.serial)).collect();
            let unsubscribe: Vec<String> = gone.iter().map(|r| command_channel(&r.serial)).collect();
            let applied = async {
                if !subscribe.is_empty() {
                    sink.subscribe(subscribe).await?;
                }
                if !unsubscribe.is_empty() {
                    sink.unsubscribe(unsubscribe).await?;
                }
                Ok::<_, redis::RedisError>(())
            };
            if let Err(err) = applied.await {
                // The live serials are resubscribed after reconnecting.
                warn!(error = %err, "Redis pub/sub failed; reconnecting");
                break;
            }
            for request in batch {
                if let Some(confirmed) = request.confirmed {
                    let _ = confirmed.send(());
                }
            }
        }
        reader.abort();
    }
}

/// Waits between failed attempts to reach Redis: 100 ms doubling up to
/// 5 s, each drawn from the upper half of its step (jitter).
#[derive(Debug)]
struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            step: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(Duration::from_secs(5));
        step / 2 + rand::rng().random_range(Duration::ZERO..=step / 2)
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

/// Whether Redis refused the credentials (`WRONGPASS`, `NOAUTH`: none
/// given while the default user is off) or a command (`NOPERM`).
fn is_refused_by_acl(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
}

/// Routes every published message until the connection is lost.
async fn read_messages(router: Arc<CommandRouter>, mut stream: redis::aio::PubSubStream, lost: CancellationToken) {
    let control = control_channel(&router.driver_id);
    while let Some(message) = stream.next().await {
        let channel = message.get_channel_name();
        if channel == control {
            handle_control(&router, message.get_payload_bytes());
        } else if let Some(serial) = channel.strip_prefix(COMMAND_CHANNEL_PREFIX) {
            route_command(&router, serial, message.get_payload_bytes());
        }
    }
    warn!("Redis pub/sub connection lost");
    lost.cancel();
}

fn handle_control(router: &CommandRouter, payload: &[u8]) {
    let message: ControlMessage = match serde_json::from_slice(payload) {
        Ok(message) => message,
        Err(err) => {
            warn!(error = %err, "ignoring malformed control message");
            return;
        }
    };
    if message.kind != "supersede" {
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

fn route_command(router: &Arc<CommandRouter>, serial: &str, payload: &[u8]) {
    let Ok(serial) = serial.parse::<Serial>() else {
        // We only subscribe to valid serials; a pattern subscriber could
        // still hand us something odd.
        return;
    };
    match parse_command(payload, router.max_payload) {
        Ok(command) => match router.registry.get(&serial) {
            Some(session) => session.push_command(command),
            None => report(
                &router.bridge,
                &router.metrics,
                serial,
                "UNDELIVERED",
                Some(command.command_id.to_string()),
                "the device's session ended before delivery".to_owned(),
                payload,
            ),
        },
        Err(rejection) => {
            warn!(%serial, reason = %rejection.reason, "rejected a malformed command (see cwp:cmd-rejected)");
            report(
                &router.bridge,
                &router.metrics,
                serial,
                "REJECTED",
                rejection.command_id,
                rejection.reason,
                payload,
            );
        }
    }
}

/// Records a command that will not reach the device, where operators look.
pub fn report(
    bridge: &BridgeClient,
    metrics: &Metrics,
    serial: Serial,
    outcome: &'static str,
    command_id: Option<String>,
    reason: String,
    payload: &[u8],
) {
    metrics.command(if outcome == "REJECTED" {
        "rejected"
    } else {
        "undelivered"
    });
    let bridge = bridge.clone();
    let message = payload[..payload.len().min(MAX_REJECTED_MESSAGE)].to_vec();
    tokio::spawn(async move {
        if let Err(status) = bridge
            .reject_command(&serial, outcome, command_id, &reason, &message)
            .await
        {
            warn!(%serial, code = ?status.code(), "could not record a rejected command with the vendor-bridge");
        }
    });
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
    fn failed_reconnects_back_off_with_jitter_up_to_five_seconds() {
        let mut backoff = Backoff::default();
        let waits: Vec<Duration> = (0..10).map(|_| backoff.next()).collect();
        assert!((Duration::from_millis(50)..=Duration::from_millis(100)).contains(&waits[0]));
        assert!((Duration::from_millis(100)..=Duration::from_millis(200)).contains(&waits[1]));
        for wait in &waits[6..] {
            assert!(
                (Duration::from_millis(2500)..=Duration::from_secs(5)).contains(wait),
                "{waits:?}"
            );
        }
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
