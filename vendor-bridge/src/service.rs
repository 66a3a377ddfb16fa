//! The `drover.bridge.v1.VendorBridge` service: checks each request (every
//! serial through [`cwp::Serial`] before it can reach a Redis key; with
//! mutual TLS, every `driver_id` against the client's certificate,
//! `identity`), admits a call that writes only while the
//! [`DurabilityGate`] is open (else `UNAVAILABLE`, naming the setting),
//! hands it to the [`Store`], and maps a Redis failure to `UNAVAILABLE`
//! (the driver retries). `StreamEvents` reads the `hello`, runs the restart
//! cleanup (or leaves it to the stream while the gate is closed) and then
//! hands the stream to the `stream` module. The bearer token, when
//! configured, is checked before any of this, by an interceptor
//! ([`crate::serve`]).

use std::sync::Arc;
use std::time::Duration;

use drover_schema::upload_fields;
use drover_service::clock::unix_ms;

use base64::Engine as _;
use drover_proto::bridge::driver_message::Kind;
use drover_proto::bridge::vendor_bridge_server::VendorBridge;
use drover_proto::bridge::{
    CallError, CloseSessionOutcome, CloseSessionReply, CloseSessionRequest, CloseSessionsReply, CloseSessionsRequest,
    DriverHello, DriverMessage, LedgerCommand, OpenSessionOutcome, OpenSessionReply, OpenSessionRequest,
    OpenSessionsReply, OpenSessionsRequest, RecordUploadReply, RecordUploadRequest, RejectCommandReply,
    RejectCommandRequest, ReportFileTransferReply, ReportFileTransferRequest, TakeCommandsReply, TakeCommandsRequest,
    TakeFileOfferReply, TakeFileOfferRequest, close_session_outcome, open_session_outcome,
};
use drover_proto::bridge::{FileOfferGrant, FileTransferEvent, FileTransferVerdict};
use futures::future::join_all;
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::budget::QueueBudget;
use crate::durability::DurabilityGate;
use crate::identity::Caller;
use crate::rollouts::{TransferEvent, Verdict};
use crate::stats::Stats;
use crate::store::{CommandRejection, SessionOpening, Store, StoreError, UploadRecord};
use crate::stream::{self, Lifecycle, Replies, StreamParts};

/// How long a new stream may take to send its `hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest driver or instance id accepted (they become key names).
const MAX_ID_LEN: usize = 128;
/// How much of a rejected command's message is kept.
const MAX_REJECTED_MESSAGE: usize = 4096;
/// The most sessions one `OpenSessions` or `CloseSessions` call may carry.
const MAX_BATCH_SESSIONS: usize = 1000;
/// How long a call that writes waits for a durability verdict when there
/// is none (at start, after a reconnection) before it is refused.
const ADMIT_WAIT: Duration = Duration::from_secs(2);

/// The gRPC service; one per process, shared by every connection.
#[derive(Debug, Clone)]
pub struct Bridge {
    store: Store,
    stats: Arc<Stats>,
    lifecycle: Lifecycle,
    /// Whether Redis may be written to now.
    gate: Arc<DurabilityGate>,
    /// The bytes all streams may hold.
    budget: QueueBudget,
    /// Whether clients present certificates that name their driver.
    mutual_tls: bool,
}

/// What [`Bridge`] is made of, besides its store.
#[derive(Debug)]
pub(crate) struct BridgeParts {
    pub(crate) stats: Arc<Stats>,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) gate: Arc<DurabilityGate>,
    pub(crate) budget: QueueBudget,
    pub(crate) mutual_tls: bool,
}

impl Bridge {
    pub(crate) fn new(store: Store, parts: BridgeParts) -> Self {
        let BridgeParts {
            stats,
            lifecycle,
            gate,
            budget,
            mutual_tls,
        } = parts;
        Self {
            store,
            stats,
            lifecycle,
            gate,
            budget,
            mutual_tls,
        }
    }

    /// `Ok` while Redis may be written to; else `UNAVAILABLE` saying why.
    async fn admit(&self) -> Result<(), Status> {
        self.gate
            .admit(ADMIT_WAIT)
            .await
            .map_err(|refusal| Status::unavailable(refusal.to_string()))
    }

    /// `unavailable`, after counting the failure and telling the gate.
    fn failed(&self, operation: &str, err: &StoreError) -> Status {
        self.stats.add_redis_error();
        self.gate.after_failure(err);
        unavailable(operation, err)
    }
}

#[tonic::async_trait]
impl VendorBridge for Bridge {
    type StreamEventsStream = Replies;

    async fn stream_events(
        &self,
        request: Request<Streaming<DriverMessage>>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let caller = Caller::of(&request, self.mutual_tls);
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(DriverMessage {
                kind: Some(Kind::Hello(hello)),
            }))) => hello,
            Ok(Ok(_)) => {
                return Err(Status::invalid_argument(
                    "the first message of the stream must be hello",
                ));
            }
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(Status::deadline_exceeded("no hello within 30 s")),
        };
        let DriverHello {
            driver_id,
            instance_id,
            version,
        } = hello;
        check_id("driver_id", &driver_id)?;
        check_id("instance_id", &instance_id)?;
        caller.may_act_as(&driver_id)?;
        if self.lifecycle.draining.is_signaled() {
            return Err(Status::unavailable("the vendor-bridge is shutting down; reconnect"));
        }
        // The restart cleanup writes: now if Redis may be written to, else
        // by the stream's applier once it may (the stream opens anyway, so
        // that the driver's batches wait here rather than reconnecting).
        let restart_cleanup = match self.gate.admit(ADMIT_WAIT).await {
            Ok(()) => {
                let offline = self
                    .store
                    .driver_restart(&driver_id, &instance_id)
                    .await
                    .map_err(|err| self.failed("restart cleanup", &err))?;
                if offline > 0 {
                    info!(driver = %driver_id, instance = %instance_id, offline, "driver restarted: its previous instance's devices are offline");
                }
                None
            }
            Err(refusal) => {
                debug!(driver = %driver_id, %refusal, "restart cleanup deferred");
                Some((self.store.clone(), instance_id.clone()))
            }
        };
        let writer = self
            .store
            .event_writer()
            .map_err(|err| unavailable("StreamEvents", &err))?;
        info!(driver = %driver_id, instance = %instance_id, version = %version, "driver stream open");
        let parts = StreamParts {
            driver: driver_id,
            writer,
            restart_cleanup,
            gate: Arc::clone(&self.gate),
            budget: self.budget.for_stream(),
            stats: Arc::clone(&self.stats),
        };
        Ok(Response::new(stream::start(inbound, parts, self.lifecycle.clone())))
    }

    async fn open_session(&self, request: Request<OpenSessionRequest>) -> Result<Response<OpenSessionReply>, Status> {
        let caller = Caller::of(&request, self.mutual_tls);
        let request = request.into_inner();
        caller.may_act_as(&request.driver_id)?;
        self.admit().await?;
        self.open_one(request).await.map(Response::new)
    }

    async fn close_session(
        &self,
        request: Request<CloseSessionRequest>,
    ) -> Result<Response<CloseSessionReply>, Status> {
        let caller = Caller::of(&request, self.mutual_tls);
        let request = request.into_inner();
        caller.may_act_as(&request.driver_id)?;
        self.admit().await?;
        self.close_one(request).await.map(Response::new)
    }

    async fn open_sessions(
        &self,
        request: Request<OpenSessionsRequest>,
    ) -> Result<Response<OpenSessionsReply>, Status> {
        let caller = Caller::of(&request, self.mutual_tls);
        let sessions = request.into_inner().sessions;
        check_batch_size(sessions.len())?;
        // One session of another driver refuses the whole call: a driver
        // that lies about one is not trusted with the rest.
        for session in &sessions {
            caller.may_act_as(&session.driver_id)?;
        }
        self.admit().await?;
        // Concurrent on the shared multiplexed connection: pipelined to
        // Redis in this order, each session its own atomic script.
        let results = join_all(sessions.into_iter().map(|session| self.open_one(session))).await;
        let outcomes = outcomes(results, |result| OpenSessionOutcome {
            outcome: Some(match result {
                Ok(opened) => open_session_outcome::Outcome::Opened(opened),
                Err(error) => open_session_outcome::Outcome::Error(error),
            }),
        });
        Ok(Response::new(OpenSessionsReply { outcomes }))
    }

    async fn close_sessions(
        &self,
        request: Request<CloseSessionsRequest>,
    ) -> Result<Response<CloseSessionsReply>, Status> {
        let caller = Caller::of(&request, self.mutual_tls);
        let sessions = request.into_inner().sessions;
        check_batch_size(sessions.len())?;
        for session in &sessions {
            caller.may_act_as(&session.driver_id)?;
        }
        self.admit().await?;
        let results = join_all(sessions.into_iter().map(|session| self.close_one(session))).await;
        let outcomes = outcomes(results, |result| CloseSessionOutcome {
            outcome: Some(match result {
                Ok(closed) => close_session_outcome::Outcome::Closed(closed),
                Err(error) => close_session_outcome::Outcome::Error(error),
            }),
        });
        Ok(Response::new(CloseSessionsReply { outcomes }))
    }

    async fn reject_command(
        &self,
        request: Request<RejectCommandRequest>,
    ) -> Result<Response<RejectCommandReply>, Status> {
        let caller = Caller::of(&request, self.mutual_tls);
        let request = request.into_inner();
        let serial = check_device(&caller, &request.serial, &request.driver_id)?;
        if !matches!(request.outcome.as_str(), "REJECTED" | "UNDELIVERED") {
            return Err(Status::invalid_argument("outcome must be REJECTED or UNDELIVERED"));
        }
        let notice = RejectionNotice {
            id: (!request.command_id.is_empty()).then_some(request.command_id.as_str()),
            serial: serial.as_str(),
            status: &request.outcome,
            data: &request.reason,
        };
        let notice = serde_json::to_string(&notice).map_err(|err| Status::internal(err.to_string()))?;
        let message = &request.message[..request.message.len().min(MAX_REJECTED_MESSAGE)];
        self.admit().await?;
        self.store
            .reject_command(CommandRejection {
                serial: &serial,
                command_id: &request.command_id,
                outcome: &request.outcome,
                reason: &request.reason,
                message,
                driver: &request.driver_id,
                rejected_ms: unix_ms(),
                notice: &notice,
            })
            .await
            .map_err(|err| self.failed("RejectCommand", &err))?;
        Ok(Response::new(RejectCommandReply {}))
    }

    async fn record_upload(
        &self,
        request: Request<RecordUploadRequest>,
    ) -> Result<Response<RecordUploadReply>, Status> {
        let caller = Caller::of(&request, self.mutual_tls);
        let request = request.into_inner();
        let serial = check_device(&caller, &request.serial, &request.driver_id)?;
        if !is_hyphenated_uuid(&request.upload_id) {
            return Err(Status::invalid_argument("upload_id must be a hyphenated UUID"));
        }
        if request.sha256.len() != 64 || !request.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(Status::invalid_argument("sha256 must be 64 lowercase hex digits"));
        }
        let transport = match request.transport.as_str() {
            "" | upload_fields::TRANSPORT_CWP => upload_fields::TRANSPORT_CWP,
            upload_fields::TRANSPORT_HTTP => upload_fields::TRANSPORT_HTTP,
            _ => return Err(Status::invalid_argument("transport must be cwp or http")),
        };
        self.admit().await?;
        let recorded = self
            .store
            .record_upload(UploadRecord {
                serial: &serial,
                upload_id: &request.upload_id,
                name: &request.name,
                size: request.size,
                sha256: &request.sha256,
                path: &request.path,
                driver: &request.driver_id,
                completed_ms: unix_ms(),
                transport,
            })
            .await
            .map_err(|err| self.failed("RecordUpload", &err))?;
        Ok(Response::new(RecordUploadReply { recorded }))
    }

    async fn take_commands(
        &self,
        request: Request<TakeCommandsRequest>,
    ) -> Result<Response<TakeCommandsReply>, Status> {
        let caller = Caller::of(&request, self.mutual_tls);
        let request = request.into_inner();
        let serial = check_device(&caller, &request.serial, &request.driver_id)?;
        let session = session_hex(&request.session_id)?;
        if request.max_in_flight == 0 {
            return Err(Status::invalid_argument("max_in_flight must be at least 1"));
        }
        // A COMMAND's payload: id (16), name length (1), name, body, tag.
        let max_bytes = request.max_payload.saturating_sub(16 + 1 + cwp::TAG_LEN as u32);
        self.admit().await?;
        self.stats.add_take_commands_call();
        let taken = self
            .store
            .take_commands(&serial, &session, request.max_in_flight, max_bytes)
            .await
            .map_err(|err| self.failed("TakeCommands", &err))?;
        let mut commands = Vec::with_capacity(taken.commands.len());
        for command in taken.commands {
            let Ok(id) = uuid::Uuid::parse_str(&command.id) else {
                // The enqueue script admits UUIDs only.
                warn!(%serial, id = command.id, "a ledger entry's id is not a UUID; skipped");
                continue;
            };
            let Ok(body) = base64::engine::general_purpose::STANDARD.decode(&command.body_b64) else {
                warn!(%serial, id = command.id, "a ledger entry's body is not base64; skipped");
                continue;
            };
            commands.push(LedgerCommand {
                command_id: id.as_bytes().to_vec(),
                name: command.name,
                body,
                attempt: command.attempt,
            });
        }
        self.stats.add_ledger_sent(commands.len() as u64);
        let unanswered = taken
            .unanswered
            .iter()
            .filter_map(|id| uuid::Uuid::parse_str(id).ok())
            .map(|id| id.as_bytes().to_vec())
            .collect();
        Ok(Response::new(TakeCommandsReply {
            commands,
            waiting: taken.waiting,
            unanswered,
        }))
    }

    async fn take_file_offer(
        &self,
        request: Request<TakeFileOfferRequest>,
    ) -> Result<Response<TakeFileOfferReply>, Status> {
        let caller = Caller::of(&request, self.mutual_tls);
        let request = request.into_inner();
        let serial = check_device(&caller, &request.serial, &request.driver_id)?;
        let session = session_hex(&request.session_id)?;
        self.admit().await?;
        let grant = self
            .store
            .take_file_offer(&serial, &session, unix_ms())
            .await
            .map_err(|err| self.failed("TakeFileOffer", &err))?;
        let offer = grant.map(|grant| FileOfferGrant {
            rollout_id: grant.rollout.to_string(),
            sha256: grant.sha256,
            size: grant.size,
            name: grant.name,
            offset: grant.offset,
            max_bytes_per_s: grant.max_bytes_per_s,
        });
        Ok(Response::new(TakeFileOfferReply { offer }))
    }

    async fn report_file_transfer(
        &self,
        request: Request<ReportFileTransferRequest>,
    ) -> Result<Response<ReportFileTransferReply>, Status> {
        let caller = Caller::of(&request, self.mutual_tls);
        let request = request.into_inner();
        let serial = check_device(&caller, &request.serial, &request.driver_id)?;
        let session = session_hex(&request.session_id)?;
        let rollout: drover_schema::rollout::RolloutId = request
            .rollout_id
            .parse()
            .map_err(|err: drover_schema::rollout::InvalidRolloutId| Status::invalid_argument(err.to_string()))?;
        let event = match FileTransferEvent::try_from(request.event) {
            Ok(FileTransferEvent::Progress) => TransferEvent::Progress,
            Ok(FileTransferEvent::Released) => TransferEvent::Released,
            Ok(FileTransferEvent::Done) => TransferEvent::Done,
            Ok(FileTransferEvent::Declined) => TransferEvent::Declined,
            Ok(FileTransferEvent::Aborted) => TransferEvent::Aborted,
            Ok(FileTransferEvent::DigestMismatch) => TransferEvent::DigestMismatch,
            Ok(FileTransferEvent::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument("event must be a FileTransferEvent"));
            }
        };
        self.admit().await?;
        let verdict = self
            .store
            .report_file_transfer(&serial, &session, &rollout, event, request.offset, unix_ms())
            .await
            .map_err(|err| self.failed("ReportFileTransfer", &err))?;
        let verdict = match verdict {
            Verdict::Continue => FileTransferVerdict::Continue,
            Verdict::Stop => FileTransferVerdict::Stop,
            Verdict::Reoffer => FileTransferVerdict::Reoffer,
            Verdict::Finished => FileTransferVerdict::Finished,
        };
        Ok(Response::new(ReportFileTransferReply {
            verdict: verdict.into(),
        }))
    }
}

impl Bridge {
    /// `OpenSession`, alone or as one of `OpenSessions`, once the caller's
    /// identity and the gate have admitted it.
    async fn open_one(&self, request: OpenSessionRequest) -> Result<OpenSessionReply, Status> {
        let serial = check_serial(&request.serial)?;
        check_id("driver_id", &request.driver_id)?;
        check_id("instance_id", &request.instance_id)?;
        let session = session_hex(&request.session_id)?;
        let opened = self
            .store
            .open_session(SessionOpening {
                serial: &serial,
                session: &session,
                driver: &request.driver_id,
                instance: &request.instance_id,
                peer: &request.peer,
                firmware: &request.firmware,
                connected_ms: request.connected_ms,
            })
            .await
            .map_err(|err| self.failed("OpenSession", &err))?;
        Ok(OpenSessionReply {
            last_event_id: opened.last_event_id,
            superseded_other: opened.superseded_other,
            pending_commands: Some(opened.pending_commands),
            pending_file_offers: Some(opened.pending_file_offers),
        })
    }

    /// `CloseSession`, alone or as one of `CloseSessions`, once admitted.
    async fn close_one(&self, request: CloseSessionRequest) -> Result<CloseSessionReply, Status> {
        let serial = check_serial(&request.serial)?;
        check_id("driver_id", &request.driver_id)?;
        let session = session_hex(&request.session_id)?;
        let was_current = self
            .store
            .close_session(&serial, &session, &request.driver_id, request.last_seen_ms)
            .await
            .map_err(|err| self.failed("CloseSession", &err))?;
        Ok(CloseSessionReply { was_current })
    }
}

fn check_batch_size(sessions: usize) -> Result<(), Status> {
    if sessions == 0 || sessions > MAX_BATCH_SESSIONS {
        return Err(Status::invalid_argument(format!(
            "a batch carries 1-{MAX_BATCH_SESSIONS} sessions, not {sessions}"
        )));
    }
    Ok(())
}

/// A batch's results as its reply's outcomes, each failure as its unary
/// call would have failed; `outcome` wraps one.
fn outcomes<T, O>(results: Vec<Result<T, Status>>, outcome: impl Fn(Result<T, CallError>) -> O) -> Vec<O> {
    results
        .into_iter()
        .map(|result| {
            outcome(result.map_err(|status| CallError {
                code: status.code() as i32,
                message: status.message().to_owned(),
            }))
        })
        .collect()
}

/// The result channel's message ([`drover_schema::COMMAND_RESULTS`]) for a
/// command that never reached its device (its fields:
/// [`drover_schema::result_fields`]).
#[derive(Serialize)]
struct RejectionNotice<'a> {
    id: Option<&'a str>,
    serial: &'a str,
    /// `REJECTED` or `UNDELIVERED`.
    status: &'a str,
    /// Why, for humans.
    data: &'a str,
}

/// A driver's call about one of its devices: the serial, and a driver id
/// the caller may act as.
fn check_device(caller: &Caller, serial: &str, driver_id: &str) -> Result<cwp::Serial, Status> {
    let serial = check_serial(serial)?;
    check_id("driver_id", driver_id)?;
    caller.may_act_as(driver_id)?;
    Ok(serial)
}

fn check_serial(text: &str) -> Result<cwp::Serial, Status> {
    text.parse().map_err(|err| {
        Status::invalid_argument(format!("serial {:?}: {err}", text.chars().take(64).collect::<String>()))
    })
}

/// Driver and instance ids become Redis key and channel names: 1–128
/// visible ASCII characters.
fn check_id(field: &str, id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Status::invalid_argument(format!(
            "{field} must be 1-{MAX_ID_LEN} visible ASCII characters"
        )));
    }
    Ok(())
}

/// The registry's form of a session id: 16 bytes as lowercase hex.
fn session_hex(session_id: &[u8]) -> Result<String, Status> {
    if session_id.len() != 16 {
        return Err(Status::invalid_argument("session_id must be 16 bytes"));
    }
    Ok(hex::encode(session_id))
}

fn is_hyphenated_uuid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Redis failed: the driver retries. Logged at debug only: the health
/// watcher already says loudly that Redis is down, once.
fn unavailable(operation: &str, err: &StoreError) -> Status {
    debug!(error = %err, "{operation} failed");
    Status::unavailable(format!("{operation}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejection_notice_uses_the_schemas_field_names() {
        let notice = RejectionNotice {
            id: Some("11111111-1111-1111-1111-111111111111"),
            serial: "CTRL-1",
            status: "REJECTED",
            data: "name is empty",
        };
        let notice = serde_json::to_value(&notice).unwrap();
        let mut fields: Vec<&str> = notice.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort_unstable();
        let mut expected = [
            drover_schema::result_fields::ID,
            drover_schema::result_fields::SERIAL,
            drover_schema::result_fields::STATUS,
            drover_schema::result_fields::DATA,
        ];
        expected.sort_unstable();
        assert_eq!(fields, expected);
    }
}
