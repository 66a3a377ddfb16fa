//! Rollouts, the drivers' side (README, "Rollouts"; keys and scripts:
//! [`drover_schema::rollout`]): which transfer a session offers
//! ([`Store::take_file_offer`]) and what became of it
//! ([`Store::report_file_transfer`]).
//!
//! A device's index (`Layout::file_offers`) lives in its partition, each
//! rollout under its own hash tag: on a cluster they are different slots,
//! so the index is read, then each rollout claimed with its own script,
//! and stale entries removed after. The index is only a hint; each
//! rollout's script decides.

use std::sync::LazyLock;

use cwp::Serial;
use drover_schema::rollout::{self, RolloutId, RolloutKeys, answer};
use drover_schema::{self as schema, device_fields};
use redis::{RedisError, Script, ScriptInvocation};

use crate::store::{Store, StoreError, invoke, publish, publish_counted};

static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(rollout::CLAIM_SCRIPT));
static REPORT: LazyLock<Script> = LazyLock::new(|| Script::new(rollout::REPORT_SCRIPT));

/// Waiting devices woken per round when a slot frees: a few, since some
/// may have gone offline (their wake-up reaches no driver).
const WAKE_PER_ROUND: usize = 4;
/// Rounds of wake-ups at most, per freed slot.
const WAKE_ROUNDS: usize = 8;

/// A transfer to offer now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The rollout.
    pub rollout: RolloutId,
    /// The file's SHA-256, hex.
    pub sha256: String,
    /// Its size.
    pub size: u64,
    /// The name to offer.
    pub name: String,
    /// What the device acknowledged before.
    pub offset: u64,
    /// Each driver's limit on the rollout's chunks, bytes/s (0: none).
    pub max_bytes_per_s: u64,
}

/// A driver's report on a transfer ([`rollout::report`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferEvent {
    /// Progress.
    Progress,
    /// The session ended mid-transfer.
    Released,
    /// Complete, digest matched.
    Done,
    /// Window 0.
    Declined,
    /// The device aborted.
    Aborted,
    /// The device's digest did not match.
    DigestMismatch,
}

impl TransferEvent {
    fn as_str(self) -> &'static str {
        match self {
            Self::Progress => rollout::report::PROGRESS,
            Self::Released => rollout::report::RELEASED,
            Self::Done => rollout::report::DONE,
            Self::Declined => rollout::report::DECLINED,
            Self::Aborted => rollout::report::ABORTED,
            Self::DigestMismatch => rollout::report::DIGEST_MISMATCH,
        }
    }

    /// Whether the target is over with after it (if the rollout agrees).
    fn is_final(self) -> bool {
        !matches!(self, Self::Progress | Self::Released)
    }
}

/// What the driver does next ([`rollout::answer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on.
    Continue,
    /// Send nothing more.
    Stop,
    /// Offer again from 0.
    Reoffer,
    /// The transfer is over.
    Finished,
}

impl Store {
    /// The transfer `session` of `serial` should offer now, if any
    /// (`TakeFileOffer`).
    pub async fn take_file_offer(
        &self,
        serial: &Serial,
        session: &str,
        now_ms: u64,
    ) -> Result<Option<Grant>, StoreError> {
        let layout = self.layout();
        let mut connection = self.connection();
        let live: (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(layout.device(serial))
            .arg(device_fields::ONLINE)
            .arg(device_fields::SESSION)
            .query_async(&mut connection)
            .await?;
        if live.0.as_deref() != Some("1") || live.1.as_deref() != Some(session) {
            return Ok(None);
        }
        let index = layout.file_offers(serial);
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(&index)
            .arg(0)
            .arg(-1)
            .query_async(&mut connection)
            .await?;
        let results = schema::FILE_RESULTS.name(serial);
        for text in ids {
            let Ok(id) = text.parse::<RolloutId>() else {
                tracing::warn!(%serial, id = text, "a device's rollout index holds no rollout id; removed");
                self.unindex(serial, &text).await?;
                continue;
            };
            let keys = RolloutKeys::of(&id);
            let reply: Vec<String> = invoke(
                on_rollout(&CLAIM, &keys)
                    .arg(serial.as_str())
                    .arg(session)
                    .arg(now_ms)
                    .arg(rollout::LEASE_MS)
                    .arg(id.as_str()),
                &mut connection,
            )
            .await?;
            match reply.first().map(String::as_str) {
                Some(answer::OFFER) if reply.len() == 6 => {
                    return Ok(Some(Grant {
                        rollout: id,
                        sha256: reply[1].clone(),
                        size: number(&reply[2])?,
                        name: reply[3].clone(),
                        offset: number(&reply[4])?,
                        max_bytes_per_s: number(&reply[5])?,
                    }));
                }
                // Another rollout may have a slot; this one wakes the
                // device when it has one, and every transfer's end looks
                // again.
                Some(answer::WAIT) => {}
                Some(answer::NONE) => {
                    if let Some(notice) = reply.get(2) {
                        publish_or_warn(&mut connection, &results, notice).await;
                    }
                    self.unindex(serial, id.as_str()).await?;
                }
                _ => return Err(unexpected("the claim script", &reply)),
            }
        }
        Ok(None)
    }

    /// Records what happened to `serial`'s transfer of `rollout` in
    /// `session` (`ReportFileTransfer`) and says what the driver does next.
    pub async fn report_file_transfer(
        &self,
        serial: &Serial,
        session: &str,
        id: &RolloutId,
        event: TransferEvent,
        offset: u64,
        now_ms: u64,
    ) -> Result<Verdict, StoreError> {
        let keys = RolloutKeys::of(id);
        let mut connection = self.connection();
        let reply: Vec<String> = invoke(
            on_rollout(&REPORT, &keys)
                .arg(serial.as_str())
                .arg(session)
                .arg(event.as_str())
                .arg(offset)
                .arg(now_ms)
                .arg(rollout::LEASE_MS)
                .arg(id.as_str()),
            &mut connection,
        )
        .await?;
        if let Some(notice) = reply.get(1) {
            publish_or_warn(&mut connection, &schema::FILE_RESULTS.name(serial), notice).await;
        }
        let verdict = match reply.first().map(String::as_str) {
            Some(answer::CONTINUE) => Verdict::Continue,
            Some(answer::STOP) => Verdict::Stop,
            Some(answer::REOFFER) => Verdict::Reoffer,
            Some(answer::FREED) => {
                if event.is_final() {
                    self.unindex(serial, id.as_str()).await?;
                }
                self.wake_waiting(&keys.waiting).await?;
                Verdict::Finished
            }
            _ => return Err(unexpected("the report script", &reply)),
        };
        Ok(verdict)
    }

    /// Removes a rollout from a device's index.
    async fn unindex(&self, serial: &Serial, id: &str) -> Result<(), StoreError> {
        redis::cmd("ZREM")
            .arg(self.layout().file_offers(serial))
            .arg(id)
            .query_async::<()>(&mut self.connection())
            .await?;
        Ok(())
    }

    /// A slot is free: wakes devices waiting for one, a few at a time,
    /// until a wake-up reached a driver (the device is online) or none
    /// wait. A device that finds the slot taken again waits again.
    async fn wake_waiting(&self, waiting: &str) -> Result<(), StoreError> {
        let mut connection = self.connection();
        let wake = serde_json::json!({ schema::command_fields::FILES: true }).to_string();
        for _ in 0..WAKE_ROUNDS {
            let popped: Vec<String> = redis::cmd("ZPOPMIN")
                .arg(waiting)
                .arg(WAKE_PER_ROUND)
                .query_async(&mut connection)
                .await?;
            if popped.is_empty() {
                break;
            }
            let mut reached = false;
            // ZPOPMIN answers member, score, member, score…
            for serial in popped.iter().step_by(2) {
                let Ok(serial) = serial.parse::<Serial>() else { continue };
                reached |= publish_counted(&mut connection, &schema::COMMANDS.name(&serial), &wake).await? > 0;
            }
            if reached {
                break;
            }
        }
        Ok(())
    }
}

/// A rollout script's invocation with its keys, the same for every script
/// of a rollout (one hash tag: one slot on a cluster).
fn on_rollout<'a>(script: &'a Script, keys: &RolloutKeys) -> ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    invocation
        .key(&keys.rollout)
        .key(&keys.targets)
        .key(&keys.active)
        .key(&keys.waiting)
        .key(&keys.results);
    invocation
}

async fn publish_or_warn(connection: &mut drover_redis::Connection, channel: &str, notice: &str) {
    if let Err(err) = publish(connection, channel, notice).await {
        tracing::warn!(error = %err, %channel, "could not publish a file transfer's outcome");
    }
}

fn number(text: &str) -> Result<u64, StoreError> {
    text.parse().map_err(|_| {
        StoreError::from(RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "a rollout's number is not a u64",
            text.to_owned(),
        )))
    })
}

fn unexpected(what: &str, reply: &[String]) -> StoreError {
    StoreError::from(RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply",
        format!("{what} answered {reply:?}"),
    )))
}
