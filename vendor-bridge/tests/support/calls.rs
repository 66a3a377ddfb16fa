//! One request of every `VendorBridge` call that writes, sent as a given
//! driver with a given token (or none): what the access and durability
//! tests try, and expect refused, one by one.

use drover_proto::bridge::vendor_bridge_client::VendorBridgeClient;
use drover_proto::bridge::{
    CloseSessionRequest, CloseSessionsRequest, DriverHello, DriverMessage, OpenSessionRequest, OpenSessionsRequest,
    RecordUploadRequest, RejectCommandRequest, driver_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Status};

use drover_testkit::wait::within;

use super::DriverStream;

/// `message` as a request carrying `authorization: Bearer {token}`, if any.
pub(crate) fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("a token is valid metadata"),
        );
    }
    request
}

/// Who sends the calls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct As<'a> {
    /// The `driver_id` every request carries.
    pub(crate) driver_id: &'a str,
    /// The bearer token, if any.
    pub(crate) token: Option<&'a str>,
}

fn opening(serial: &str, driver_id: &str) -> OpenSessionRequest {
    OpenSessionRequest {
        serial: serial.to_owned(),
        session_id: vec![0x5e; 16],
        driver_id: driver_id.to_owned(),
        peer: "203.0.113.9:4000".to_owned(),
        firmware: "fw".to_owned(),
        connected_ms: 1_700_000_000_000,
        instance_id: "instance".to_owned(),
    }
}

fn closing(serial: &str, driver_id: &str) -> CloseSessionRequest {
    CloseSessionRequest {
        serial: serial.to_owned(),
        session_id: vec![0x5e; 16],
        driver_id: driver_id.to_owned(),
        last_seen_ms: 1_700_000_000_001,
    }
}

/// Tries every unary call that writes, about `serial`, as `who`; returns
/// each call's name and outcome, in a fixed order.
pub(crate) async fn every_unary_call(
    client: &mut VendorBridgeClient<Channel>,
    serial: &str,
    who: As<'_>,
) -> Vec<(&'static str, Result<(), Status>)> {
    let As { driver_id, token } = who;
    let mut outcomes = Vec::new();
    let outcome = client.open_session(with_token(opening(serial, driver_id), token)).await;
    outcomes.push(("OpenSession", outcome.map(drop)));
    let sessions = OpenSessionsRequest {
        sessions: vec![opening(serial, driver_id)],
    };
    let outcome = client.open_sessions(with_token(sessions, token)).await;
    outcomes.push(("OpenSessions", outcome.map(drop)));
    let outcome = client
        .close_session(with_token(closing(serial, driver_id), token))
        .await;
    outcomes.push(("CloseSession", outcome.map(drop)));
    let sessions = CloseSessionsRequest {
        sessions: vec![closing(serial, driver_id)],
    };
    let outcome = client.close_sessions(with_token(sessions, token)).await;
    outcomes.push(("CloseSessions", outcome.map(drop)));
    let rejection = RejectCommandRequest {
        serial: serial.to_owned(),
        outcome: "REJECTED".to_owned(),
        driver_id: driver_id.to_owned(),
        command_id: "6f1c0b52-6a51-4b7e-9d2e-2f0c3a0f7b11".to_owned(),
        reason: "a test".to_owned(),
        message: b"{}".to_vec(),
    };
    let outcome = client.reject_command(with_token(rejection, token)).await;
    outcomes.push(("RejectCommand", outcome.map(drop)));
    let upload = RecordUploadRequest {
        serial: serial.to_owned(),
        upload_id: "0a0b0c0d-0e0f-4011-8213-141516171819".to_owned(),
        name: "logs.tar".to_owned(),
        size: 1,
        sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".to_owned(),
        path: format!("{serial}/0a0b0c0d-0e0f-4011-8213-141516171819"),
        driver_id: driver_id.to_owned(),
        transport: String::new(),
    };
    let outcome = client.record_upload(with_token(upload, token)).await;
    outcomes.push(("RecordUpload", outcome.map(drop)));
    outcomes
}

impl DriverStream {
    /// Opens a stream as `who` and says hello as its driver.
    pub(crate) async fn open_as(
        client: &mut VendorBridgeClient<Channel>,
        who: As<'_>,
        instance_id: &str,
    ) -> Result<Self, Status> {
        let (outbound, rx) = mpsc::channel(1024);
        outbound
            .send(DriverMessage {
                kind: Some(driver_message::Kind::Hello(DriverHello {
                    driver_id: who.driver_id.to_owned(),
                    instance_id: instance_id.to_owned(),
                    version: "test".to_owned(),
                })),
            })
            .await
            .expect("the outbound queue is open");
        let request = with_token(ReceiverStream::new(rx), who.token);
        let inbound = within(
            "StreamEvents to be answered",
            super::DEADLINE,
            client.stream_events(request),
        )
        .await?
        .into_inner();
        Ok(Self { outbound, inbound })
    }
}
