//! A front end's side of the vendor-bridge's unary calls (sessions,
//! rejected commands, completed uploads). Events travel on the event
//! stream ([`crate::stream`]), not here, but over the same [`channel`], so
//! both are plaintext or both are (mutual) TLS. [`batcher`] coalesces the
//! session registrations of a connect storm into batch calls.

pub mod batcher;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use cwp::{CommandId, Serial, SessionId};
use drover_proto::auth::{AttachToken, BearerToken};
use drover_proto::bridge::vendor_bridge_client::VendorBridgeClient;
use drover_proto::bridge::{
    CallError, CloseSessionReply, CloseSessionRequest, CloseSessionsRequest, OpenSessionReply, OpenSessionRequest,
    OpenSessionsRequest, RecordUploadRequest, RejectCommandRequest, TakeCommandsRequest, close_session_outcome,
    open_session_outcome,
};
use drover_service::clock::unix_ms;
use drover_service::drain;
use drover_service::env::EnvReader;
use drover_service::tls::{read_certificates, read_private_key};
use drover_upload_store::CompletedUpload;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The generated client, every call carrying the bridge's token, if any.
pub type GrpcClient = VendorBridgeClient<InterceptedService<Channel, AttachToken>>;

use self::batcher::{BatchLimits, BatchResult, Batcher};

/// How long a unary call may take before the caller gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Sessions opening or closing together are registered together
/// (`OpenSessions`, `CloseSessions`): up to 256 per call, 4 calls out at
/// once. The bridge takes up to 1,000.
const SESSION_BATCHES: BatchLimits = BatchLimits {
    max_batch: 256,
    in_flight: 4,
    // A storm's registrations queue behind each other; a batch whose
    // earliest callers are about to give up still serves the later ones.
    min_timeout: Duration::from_secs(1),
};

/// How the channel to the bridge is secured, as configured (the files are
/// read by [`channel`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeTls {
    /// CA(s) the bridge's certificate must chain to (`VENDOR_BRIDGE_CA`).
    pub ca: PathBuf,
    /// This process's certificate and key for mutual TLS
    /// (`VENDOR_BRIDGE_CLIENT_CERT`, `VENDOR_BRIDGE_CLIENT_KEY`).
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// The name checked against the bridge's certificate
    /// (`VENDOR_BRIDGE_SERVER_NAME`); `None`: the URL's host.
    pub server_name: Option<String>,
}

impl BridgeTls {
    /// The TLS variables together (`VENDOR_BRIDGE_CA`,
    /// `VENDOR_BRIDGE_CLIENT_CERT`, `VENDOR_BRIDGE_CLIENT_KEY`,
    /// `VENDOR_BRIDGE_SERVER_NAME`; the caller's table must list them),
    /// checked against the URL's scheme: TLS is on exactly when the URL is
    /// `https://`, and a TLS file given for a plaintext URL is a mistake
    /// worth stopping for (it would be silently ignored). Problems are
    /// reported to `env`.
    pub fn read(env: &mut EnvReader, bridge_url: Option<&str>) -> Option<Self> {
        let ca = env.parse_optional::<PathBuf>("VENDOR_BRIDGE_CA");
        let cert = env.parse_optional::<PathBuf>("VENDOR_BRIDGE_CLIENT_CERT");
        let key = env.parse_optional::<PathBuf>("VENDOR_BRIDGE_CLIENT_KEY");
        let server_name = env.parse_optional::<String>("VENDOR_BRIDGE_SERVER_NAME");
        let client_identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                env.problem("set both VENDOR_BRIDGE_CLIENT_CERT and VENDOR_BRIDGE_CLIENT_KEY, or neither");
                None
            }
        };
        let https = bridge_url?.starts_with("https://");
        if !https {
            for (name, set) in [
                ("VENDOR_BRIDGE_CA", ca.is_some()),
                ("VENDOR_BRIDGE_CLIENT_CERT", client_identity.is_some()),
                ("VENDOR_BRIDGE_SERVER_NAME", server_name.is_some()),
            ] {
                if set {
                    env.problem(format!(
                        "{name} is set but VENDOR_BRIDGE_URL is not https://: TLS is used only with an https:// URL"
                    ));
                }
            }
            return None;
        }
        let Some(ca) = ca else {
            env.problem("VENDOR_BRIDGE_URL is https:// but VENDOR_BRIDGE_CA is not set: name the CA that signed the bridge's certificate");
            return None;
        };
        Some(Self {
            ca,
            client_identity,
            server_name,
        })
    }
}

/// A connection to the vendor-bridge, shared by the whole process. The
/// channel connects lazily and reconnects by itself.
#[derive(Debug, Clone)]
pub struct BridgeClient {
    client: GrpcClient,
    opens: Batcher<OpenSessionRequest, OpenSessionReply>,
    closes: Batcher<CloseSessionRequest, CloseSessionReply>,
    driver_id: String,
    instance_id: String,
}

/// Opens the gRPC channel to `url` (without connecting yet), over TLS when
/// `tls` is given; its files are read and checked now, so that a bad one
/// stops the process at start.
pub fn channel(url: &str, tls: Option<&BridgeTls>) -> anyhow::Result<Channel> {
    let mut endpoint = Endpoint::from_shared(url.to_owned()).with_context(|| format!("VENDOR_BRIDGE_URL={url}"))?;
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(client_tls(tls)?)
            .context("setting up TLS to the vendor-bridge (VENDOR_BRIDGE_CA, VENDOR_BRIDGE_CLIENT_*)")?;
    }
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        // Detects a dead bridge (or a dead path to it) on an idle stream.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

fn client_tls(tls: &BridgeTls) -> anyhow::Result<ClientTlsConfig> {
    drover_service::tls::install_crypto_provider();
    let ca = read_certificates("VENDOR_BRIDGE_CA", &tls.ca)?;
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        // A bridge that does not answer the handshake counts as down.
        .timeout(Duration::from_secs(10));
    if let Some((cert, key)) = &tls.client_identity {
        let cert = read_certificates("VENDOR_BRIDGE_CLIENT_CERT", cert)?;
        let key = read_private_key("VENDOR_BRIDGE_CLIENT_KEY", key)?;
        config = config.identity(Identity::from_pem(cert, key));
    }
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}

/// A failed call's status with its causes: a transport failure's status
/// message alone ("transport error") does not say that a certificate was
/// refused, its source chain does.
pub fn describe(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut cause = std::error::Error::source(status);
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

/// What `OpenSession` tells the driver.
#[derive(Debug, Clone, Copy)]
pub struct OpenedSession {
    /// For `WELCOME`.
    pub last_event_id: u64,
    /// Whether an older session elsewhere was told to close.
    pub superseded_other: bool,
    /// Whether the device's ledger may hold durable commands: false only
    /// when the bridge said it held none (an older bridge says nothing).
    pub may_have_commands: bool,
    /// Whether a rollout may have a file for the device: false only when
    /// the bridge said its index was empty.
    pub may_have_file_offers: bool,
}

/// What `TakeCommands` hands a session.
#[derive(Debug, Clone, Default)]
pub struct TakenCommands {
    /// The commands to send now, in the ledger's order.
    pub commands: Vec<drover_proto::bridge::LedgerCommand>,
    /// How many more the ledger holds for the device, not sent in this
    /// session (an older bridge says 0).
    pub waiting: u32,
    /// What the session holds from the ledger's view: the commands sent
    /// in it and not answered, those above included (an older bridge says
    /// none).
    pub unanswered: Vec<CommandId>,
}

impl BridgeClient {
    /// A client for `channel`, identifying itself as `driver_id` and
    /// sending `token` on every call. Spawns, on `tasks`, the tasks that
    /// batch session registrations; they end when `stop` is signalled.
    pub fn new(
        channel: Channel,
        token: Option<&BearerToken>,
        driver_id: String,
        instance_id: String,
        tasks: &TaskTracker,
        stop: &drain::Watch,
    ) -> Self {
        let client = VendorBridgeClient::with_interceptor(channel, AttachToken::new(token));
        let opens = Batcher::spawn(SESSION_BATCHES, tasks, stop.clone(), {
            let client = client.clone();
            move |sessions, timeout| open_sessions(client.clone(), sessions, timeout)
        });
        let closes = Batcher::spawn(SESSION_BATCHES, tasks, stop.clone(), {
            let client = client.clone();
            move |sessions, timeout| close_sessions(client.clone(), sessions, timeout)
        });
        Self {
            client,
            opens,
            closes,
            driver_id,
            instance_id,
        }
    }

    /// This process's id at the bridge (the `driver_id` of its calls and
    /// of its event stream's `DriverHello`).
    pub fn driver_id(&self) -> &str {
        &self.driver_id
    }

    /// This process's instance id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The raw gRPC client (for the event stream).
    pub fn grpc(&self) -> GrpcClient {
        self.client.clone()
    }

    /// Registers an authenticated session, batched with others registering
    /// at the same time; see `OpenSessions` in bridge.proto. `timeout` is
    /// what is left of the handshake's time.
    pub async fn open_session(
        &self,
        serial: &Serial,
        session_id: &SessionId,
        peer: SocketAddr,
        firmware: &str,
        timeout: Duration,
    ) -> Result<OpenedSession, tonic::Status> {
        let request = OpenSessionRequest {
            serial: serial.to_string(),
            session_id: session_id.0.to_vec(),
            driver_id: self.driver_id.clone(),
            peer: peer.to_string(),
            firmware: firmware.to_owned(),
            connected_ms: unix_ms(),
            instance_id: self.instance_id.clone(),
        };
        let reply = self.opens.call(request, Instant::now() + timeout).await?;
        Ok(OpenedSession {
            last_event_id: reply.last_event_id,
            superseded_other: reply.superseded_other,
            may_have_commands: reply.pending_commands != Some(0),
            may_have_file_offers: reply.pending_file_offers != Some(0),
        })
    }

    /// Marks a session ended in the registry, batched with others closing
    /// at the same time.
    pub async fn close_session(
        &self,
        serial: &Serial,
        session_id: &SessionId,
        last_seen_ms: u64,
    ) -> Result<(), tonic::Status> {
        let request = CloseSessionRequest {
            serial: serial.to_string(),
            session_id: session_id.0.to_vec(),
            driver_id: self.driver_id.clone(),
            last_seen_ms,
        };
        self.closes.call(request, Instant::now() + CALL_TIMEOUT).await.map(drop)
    }

    /// Records a command that did not reach the device.
    pub async fn reject_command(
        &self,
        serial: &Serial,
        outcome: &str,
        command_id: Option<String>,
        reason: &str,
        message: &[u8],
    ) -> Result<(), tonic::Status> {
        let mut request = tonic::Request::new(RejectCommandRequest {
            serial: serial.to_string(),
            driver_id: self.driver_id.clone(),
            command_id: command_id.unwrap_or_default(),
            reason: reason.to_owned(),
            message: message.to_vec(),
            outcome: outcome.to_owned(),
        });
        request.set_timeout(CALL_TIMEOUT);
        self.client.clone().reject_command(request).await.map(drop)
    }

    /// The durable commands to send now in this session, marked sent
    /// (`TakeCommands`).
    pub async fn take_commands(
        &self,
        serial: &Serial,
        session_id: &SessionId,
        max_in_flight: u32,
        max_payload: u32,
    ) -> Result<TakenCommands, tonic::Status> {
        let mut request = tonic::Request::new(TakeCommandsRequest {
            serial: serial.to_string(),
            session_id: session_id.0.to_vec(),
            driver_id: self.driver_id.clone(),
            max_in_flight,
            max_payload,
        });
        request.set_timeout(CALL_TIMEOUT);
        let reply = self.client.clone().take_commands(request).await?.into_inner();
        Ok(TakenCommands {
            commands: reply.commands,
            waiting: reply.waiting,
            unanswered: reply
                .unanswered
                .iter()
                .filter_map(|id| <[u8; 16]>::try_from(id.as_slice()).ok())
                .map(CommandId)
                .collect(),
        })
    }

    /// The file transfer to offer now in this session, if any
    /// (`TakeFileOffer`).
    pub async fn take_file_offer(
        &self,
        serial: &Serial,
        session_id: &SessionId,
    ) -> Result<Option<drover_proto::bridge::FileOfferGrant>, tonic::Status> {
        let mut request = tonic::Request::new(drover_proto::bridge::TakeFileOfferRequest {
            serial: serial.to_string(),
            session_id: session_id.0.to_vec(),
            driver_id: self.driver_id.clone(),
        });
        request.set_timeout(CALL_TIMEOUT);
        Ok(self.client.clone().take_file_offer(request).await?.into_inner().offer)
    }

    /// Records a transfer's progress or outcome (`ReportFileTransfer`).
    pub async fn report_file_transfer(
        &self,
        serial: &Serial,
        session_id: &SessionId,
        rollout_id: &str,
        event: drover_proto::bridge::FileTransferEvent,
        offset: u64,
    ) -> Result<drover_proto::bridge::FileTransferVerdict, tonic::Status> {
        let mut request = tonic::Request::new(drover_proto::bridge::ReportFileTransferRequest {
            serial: serial.to_string(),
            session_id: session_id.0.to_vec(),
            driver_id: self.driver_id.clone(),
            rollout_id: rollout_id.to_owned(),
            event: event.into(),
            offset,
        });
        request.set_timeout(CALL_TIMEOUT);
        let reply = self.client.clone().report_file_transfer(request).await?.into_inner();
        drover_proto::bridge::FileTransferVerdict::try_from(reply.verdict)
            .map_err(|_| tonic::Status::internal("the bridge sent an unknown verdict"))
    }

    /// Appends the `upload_completed` record of a completed upload (once
    /// per upload, however often it is asked): true if this call appended
    /// it.
    pub async fn record_upload(&self, completed: &CompletedUpload) -> Result<bool, tonic::Status> {
        let mut request = tonic::Request::new(RecordUploadRequest {
            serial: completed.serial.clone(),
            upload_id: completed.upload_id.clone(),
            name: completed.name.clone(),
            size: completed.size,
            sha256: completed.sha256.clone(),
            path: completed.path.clone(),
            driver_id: self.driver_id.clone(),
            transport: completed.transport.as_str().to_owned(),
        });
        request.set_timeout(CALL_TIMEOUT);
        Ok(self.client.clone().record_upload(request).await?.into_inner().recorded)
    }
}

async fn open_sessions(
    mut client: GrpcClient,
    sessions: Vec<OpenSessionRequest>,
    timeout: Duration,
) -> BatchResult<OpenSessionReply> {
    let mut request = tonic::Request::new(OpenSessionsRequest { sessions });
    request.set_timeout(timeout);
    let reply = client.open_sessions(request).await?.into_inner();
    Ok(results(reply.outcomes, |outcome| {
        outcome.outcome.map(|outcome| match outcome {
            open_session_outcome::Outcome::Opened(opened) => Ok(opened),
            open_session_outcome::Outcome::Error(error) => Err(error),
        })
    }))
}

async fn close_sessions(
    mut client: GrpcClient,
    sessions: Vec<CloseSessionRequest>,
    timeout: Duration,
) -> BatchResult<CloseSessionReply> {
    let mut request = tonic::Request::new(CloseSessionsRequest { sessions });
    request.set_timeout(timeout);
    let reply = client.close_sessions(request).await?.into_inner();
    Ok(results(reply.outcomes, |outcome| {
        outcome.outcome.map(|outcome| match outcome {
            close_session_outcome::Outcome::Closed(closed) => Ok(closed),
            close_session_outcome::Outcome::Error(error) => Err(error),
        })
    }))
}

/// A batch reply's outcomes as the results of the calls in it; `split`
/// takes one outcome apart (`None`: the bridge left it empty).
fn results<O, T>(outcomes: Vec<O>, split: impl Fn(O) -> Option<Result<T, CallError>>) -> Vec<Result<T, tonic::Status>> {
    outcomes
        .into_iter()
        .map(|outcome| match split(outcome) {
            Some(Ok(reply)) => Ok(reply),
            Some(Err(error)) => Err(status_of(error)),
            None => Err(tonic::Status::internal("the bridge sent an empty outcome")),
        })
        .collect()
}

/// A batch item's error as the status its unary call would have failed with.
fn status_of(error: CallError) -> tonic::Status {
    tonic::Status::new(tonic::Code::from(error.code), error.message)
}
