//! The rarer records: a command that never reached its device goes to
//! `cwp:cmd-rejected` and is published where the operator waits; a finished
//! upload is appended to `cwp:uploads` once, however often it is reported.
#![allow(clippy::unwrap_used)]

mod support;

use drover_proto::bridge::{RecordUploadRequest, RejectCommandRequest};
use support::{Bridge, next_message, raw_entries, xlen};
use tonic::Code;

fn text(value: &[u8]) -> &str {
    std::str::from_utf8(value).unwrap()
}

#[tokio::test]
async fn a_rejected_command_is_recorded_and_published_to_the_operator() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;
    let mut results = bridge.subscribe("cwp:cmd-result:CTRL-1").await;
    let message = vec![b'{'; 5000];

    client
        .reject_command(RejectCommandRequest {
            serial: "CTRL-1".to_owned(),
            outcome: "REJECTED".to_owned(),
            driver_id: "drv-a".to_owned(),
            command_id: "6f1c0b52-6a51-4b7e-9d2e-2f0c3a0f7b11".to_owned(),
            reason: "body_b64 is not base64".to_owned(),
            message: message.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut results).await,
        r#"{"id":"6f1c0b52-6a51-4b7e-9d2e-2f0c3a0f7b11","serial":"CTRL-1","status":"REJECTED","data":"body_b64 is not base64"}"#
    );

    let entries = raw_entries(&mut redis, "cwp:cmd-rejected").await;
    assert_eq!(entries.len(), 1);
    let fields = &entries[0].1;
    let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "serial",
            "command_id",
            "outcome",
            "reason",
            "message",
            "driver",
            "rejected_ms"
        ]
    );
    assert_eq!(text(&fields[0].1), "CTRL-1");
    assert_eq!(text(&fields[2].1), "REJECTED");
    assert_eq!(fields[4].1, message[..4096], "the message is kept up to 4 KiB");
    assert_eq!(text(&fields[5].1), "drv-a");
    assert!(text(&fields[6].1).parse::<u64>().unwrap() > 1_700_000_000_000);

    // A command that was never readable has no id: null.
    client
        .reject_command(RejectCommandRequest {
            serial: "CTRL-1".to_owned(),
            outcome: "UNDELIVERED".to_owned(),
            driver_id: "drv-a".to_owned(),
            command_id: String::new(),
            reason: "session ended".to_owned(),
            message: b"{}".to_vec(),
        })
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut results).await,
        r#"{"id":null,"serial":"CTRL-1","status":"UNDELIVERED","data":"session ended"}"#
    );
    assert_eq!(xlen(&mut redis, "cwp:cmd-rejected").await, 2);
}

#[tokio::test]
async fn a_rejection_with_an_unknown_outcome_is_refused() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let err = client
        .reject_command(RejectCommandRequest {
            serial: "CTRL-1".to_owned(),
            outcome: "LOST".to_owned(),
            driver_id: "drv-a".to_owned(),
            ..RejectCommandRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

fn upload() -> RecordUploadRequest {
    RecordUploadRequest {
        serial: "CTRL-2".to_owned(),
        upload_id: "0a0b0c0d-0e0f-4011-8213-141516171819".to_owned(),
        name: "logs-2024.tar".to_owned(),
        size: 1_048_576,
        sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".to_owned(),
        path: "CTRL-2/0a0b0c0d-0e0f-4011-8213-141516171819".to_owned(),
        driver_id: "drv-a".to_owned(),
        transport: String::new(),
    }
}

#[tokio::test]
async fn an_upload_is_recorded_once_however_often_it_is_reported() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;

    assert!(client.record_upload(upload()).await.unwrap().into_inner().recorded);
    assert!(!client.record_upload(upload()).await.unwrap().into_inner().recorded);

    let entries = raw_entries(&mut redis, "cwp:uploads").await;
    assert_eq!(entries.len(), 1);
    let fields: Vec<(&str, &str)> = entries[0]
        .1
        .iter()
        .map(|(name, value)| (name.as_str(), text(value)))
        .collect();
    let (transport, fields) = fields.split_last().unwrap();
    assert_eq!(
        *transport,
        ("transport", "cwp"),
        "an upload without a transport came over CWP/1"
    );
    let (last, recorded) = fields.split_last().unwrap();
    assert_eq!(
        recorded,
        [
            ("type", "upload_completed"),
            ("serial", "CTRL-2"),
            ("upload_id", "0a0b0c0d-0e0f-4011-8213-141516171819"),
            ("name", "logs-2024.tar"),
            ("size", "1048576"),
            (
                "sha256",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            ),
            ("path", "CTRL-2/0a0b0c0d-0e0f-4011-8213-141516171819"),
            ("driver", "drv-a"),
        ]
    );
    assert_eq!(last.0, "completed_ms");
    assert!(last.1.parse::<u64>().unwrap() > 1_700_000_000_000);
    let marker: Option<String> = redis::cmd("GET")
        .arg("cwp:upload-recorded:CTRL-2:0a0b0c0d-0e0f-4011-8213-141516171819")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(marker.as_deref(), Some("1"));
}

#[tokio::test]
async fn an_upload_records_how_it_arrived_and_no_transport_but_cwp_or_http() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut redis = bridge.redis().await;
    let http = RecordUploadRequest {
        transport: "http".to_owned(),
        ..upload()
    };
    assert!(client.record_upload(http).await.unwrap().into_inner().recorded);
    let entries = raw_entries(&mut redis, "cwp:uploads").await;
    let transport = entries[0].1.iter().find(|(name, _)| name == "transport").unwrap();
    assert_eq!(text(&transport.1), "http");
    let other = RecordUploadRequest {
        transport: "ftp".to_owned(),
        upload_id: "0a0b0c0d-0e0f-4011-8213-14151617181a".to_owned(),
        ..upload()
    };
    assert_eq!(
        client.record_upload(other).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn an_upload_with_a_malformed_id_is_refused() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let bad = RecordUploadRequest {
        upload_id: "../../x".to_owned(),
        ..upload()
    };
    assert_eq!(
        client.record_upload(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}
