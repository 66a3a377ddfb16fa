//! Redis ACL users (README, Security): a Redis whose default user is off,
//! the drivers, the bridge and an HTTP gateway each logged in as the user of
//! docs/redis-acl.conf — that very file, only the password hashes filled
//! in — and the whole flow works: events stored, a command and its result,
//! a session superseded across drivers, an upload recorded, an HTTP batch
//! stored and its replay refused, and Redis
//! denied nothing. A driver with the wrong password, or none, does not
//! start, and says why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use controller_sim::client::Connection;
use controller_sim::device::UploadJob;
use cwp::{
    ByeReason, CommandResult, CommandStatus, DeviceFrame, Event, ServerFrame, Str8, UploadBegin, UploadEnd, UploadId,
    UploadOutcome,
};
use drover_testkit::components::{BridgeProcess, DriverOptions, DriverProcess, GatewayOptions, GatewayProcess};
use drover_testkit::device::{MASTER_KEY_HEX, connect, serial};
use drover_testkit::fleet::{logs, run_to_exit, runtime};
use drover_testkit::ingest::{self, HttpRequest};
use drover_testkit::inspect::{publish, stored_events};
use drover_testkit::redis::RedisServer;
use futures::StreamExt as _;
use sha2::Digest as _;

const WAIT: Duration = Duration::from_secs(20);
const DRIVER_PASSWORD: &str = "driver-password-in-test";
const BRIDGE_PASSWORD: &str = "bridge-password-in-test";
const GATEWAY_PASSWORD: &str = "gateway-password-in-test";
/// The test's own user, standing for an operator with every right.
const OPERATOR_PASSWORD: &str = "operator-password-in-test";

/// docs/redis-acl.conf with the test's password hashes, then the test's
/// own lines: the default user off (connecting without a user gets
/// nowhere) and an operator.
fn acl_config(dir: &Path) -> String {
    let documented = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/redis-acl.conf")).unwrap();
    let sha256 = |password: &str| hex::encode(sha2::Sha256::digest(password.as_bytes()));
    let filled = documented
        .replace("#DRIVER_PASSWORD_SHA256", &format!("#{}", sha256(DRIVER_PASSWORD)))
        .replace("#BRIDGE_PASSWORD_SHA256", &format!("#{}", sha256(BRIDGE_PASSWORD)))
        .replace("#GATEWAY_PASSWORD_SHA256", &format!("#{}", sha256(GATEWAY_PASSWORD)));
    assert_ne!(filled, documented, "docs/redis-acl.conf has the password placeholders");
    let config = format!("{filled}\nuser default off\nuser operator on >{OPERATOR_PASSWORD} ~* &* +@all\n");
    let path = dir.join("acl.conf");
    std::fs::write(&path, config).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Redis with the documented users, and a URL for each.
struct AclRedis {
    server: RedisServer,
    _dir: tempfile::TempDir,
}

impl AclRedis {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = acl_config(dir.path());
        let server = RedisServer::start_with_args(&["--include", &config]).expect("redis-server starts");
        Self { server, _dir: dir }
    }

    fn url(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}", self.server.port())
    }

    async fn operator(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url("operator", OPERATOR_PASSWORD))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// What Redis denied a user since it started (`ACL LOG`), as
/// `user: command (reason)`. `CLIENT SETINFO`, which redis-rs sends on
/// connecting and ignores the answer of, does not count.
async fn denials(redis: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let entries: Vec<std::collections::HashMap<String, redis::Value>> =
        redis::cmd("ACL").arg("LOG").query_async(redis).await.unwrap();
    let text = |entry: &std::collections::HashMap<String, redis::Value>, key: &str| match entry.get(key) {
        Some(redis::Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    entries
        .iter()
        .map(|entry| {
            format!(
                "{}: {} ({})",
                text(entry, "username"),
                text(entry, "object"),
                text(entry, "reason")
            )
        })
        .filter(|denial| !denial.contains("client|setinfo"))
        .collect()
}

async fn send_event(device: &mut Connection, event_id: u64, kind: u16, body: bytes::Bytes) {
    device
        .send(&DeviceFrame::Event(Event {
            event_id,
            time_ms: 0,
            kind,
            body,
        }))
        .await
        .unwrap();
}

/// The next frame that is not an `UPLOAD_STATUS` or `PONG`.
async fn next_frame(device: &mut Connection) -> ServerFrame {
    loop {
        match device.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::UploadStatus(_) | ServerFrame::Pong(_) => {}
            frame => return frame,
        }
    }
}

async fn expect_ack(device: &mut Connection, event_id: u64) {
    let frame = next_frame(device).await;
    assert!(
        matches!(frame, ServerFrame::Ack(ref ack) if ack.event_id == event_id),
        "expected ACK {event_id}, got {frame:?}"
    );
}

#[test]
fn the_whole_flow_works_with_the_documented_minimal_acls() {
    let redis = AclRedis::start();
    let bridge = BridgeProcess::start(&redis.url("drover-bridge", BRIDGE_PASSWORD), &logs(), &[]).unwrap();
    let upload_dir = tempfile::tempdir().unwrap();
    let options = DriverOptions {
        bridge_url: bridge.url(),
        redis_url: redis.url("drover-driver", DRIVER_PASSWORD),
        master_key_hex: MASTER_KEY_HEX.to_owned(),
        proxy_protocol: false,
        extra_env: vec![("UPLOAD_DIR".to_owned(), upload_dir.path().to_str().unwrap().to_owned())],
        logs: logs(),
    };
    let drivers: Vec<DriverProcess> = (0..2).map(|_| DriverProcess::start(&options).unwrap()).collect();
    let gateway = GatewayProcess::start(&GatewayOptions {
        bridge_url: bridge.url(),
        redis_url: redis.url("drover-gateway", GATEWAY_PASSWORD),
        master_key_hex: MASTER_KEY_HEX.to_owned(),
        proxy_protocol: false,
        extra_env: Vec::new(),
        logs: logs(),
    })
    .unwrap();

    runtime().block_on(async {
        let mut operator = redis.operator().await;
        let serial = serial("CTRL-0042");

        // Authenticated session, an event stored and acknowledged.
        let (mut device, _) = connect(drivers[0].addr(), &serial).await;
        send_event(&mut device, 1, 1, "hello".into()).await;
        expect_ack(&mut device, 1).await;

        // A command through the driver's subscription, its result back
        // through the bridge's PUBLISH.
        let mut results = redis::Client::open(redis.url("operator", OPERATOR_PASSWORD))
            .unwrap()
            .get_async_pubsub()
            .await
            .unwrap();
        results.subscribe("cwp:cmd-result:CTRL-0042").await.unwrap();
        let mut results = results.into_on_message();
        let receivers = publish(
            &mut operator,
            "cwp:cmd:CTRL-0042",
            r#"{"id":"11111111-1111-1111-1111-111111111111","name":"reboot"}"#,
        )
        .await;
        assert_eq!(receivers, 1, "the driver's user subscribed to the device's channel");
        let command = match next_frame(&mut device).await {
            ServerFrame::Command(command) => command,
            other => panic!("expected COMMAND, got {other:?}"),
        };
        let result = CommandResult {
            command_id: command.command_id,
            status: CommandStatus::OK,
            data: "done".into(),
        };
        send_event(&mut device, 2, Event::COMMAND_RESULT_KIND, result.encode()).await;
        expect_ack(&mut device, 2).await;
        let published = tokio::time::timeout(WAIT, results.next())
            .await
            .expect("the result within the deadline")
            .expect("the subscription is open");
        let published: serde_json::Value = serde_json::from_slice(published.get_payload_bytes()).unwrap();
        assert_eq!(published["status"], "OK");

        // A new session on the other driver supersedes this one (the
        // bridge publishes on the first driver's control channel).
        let (mut newer, welcome) = connect(drivers[1].addr(), &serial).await;
        assert_eq!(welcome.last_event_id, 2);
        match next_frame(&mut device).await {
            ServerFrame::Bye(bye) => assert_eq!(bye.reason, ByeReason::SUPERSEDED),
            other => panic!("expected BYE SUPERSEDED, got {other:?}"),
        }
        send_event(&mut newer, 3, 1, "again".into()).await;
        expect_ack(&mut newer, 3).await;

        // An upload, recorded by the bridge.
        let job = UploadJob::new(UploadJob::content(10_000, 7), 1004, "test");
        let upload_id = UploadId([7; 16]);
        newer
            .send(&DeviceFrame::UploadBegin(UploadBegin {
                upload_id,
                total_size: job.content.len() as u64,
                name: Str8::new("sensor-log.bin").unwrap(),
            }))
            .await
            .unwrap();
        match newer.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::UploadStatus(status) => assert_eq!(status.durable_offset, 0, "a new upload starts at 0"),
            other => panic!("expected UPLOAD_STATUS, got {other:?}"),
        }
        let blocks: Vec<DeviceFrame> = job
            .content
            .chunks(1004)
            .map(|chunk| {
                DeviceFrame::Block(cwp::Block {
                    data: bytes::Bytes::copy_from_slice(chunk),
                })
            })
            .collect();
        newer.send_all(&blocks).await.unwrap();
        newer
            .send(&DeviceFrame::UploadEnd(UploadEnd {
                upload_id,
                total_size: job.content.len() as u64,
                sha256: job.sha256,
            }))
            .await
            .unwrap();
        match next_frame(&mut newer).await {
            ServerFrame::UploadDone(done) => assert_eq!(done.status, UploadOutcome::OK),
            other => panic!("expected UPLOAD_DONE, got {other:?}"),
        }
        let uploads: u64 = redis::cmd("XLEN")
            .arg("cwp:uploads")
            .query_async(&mut operator)
            .await
            .unwrap();
        assert_eq!(uploads, 1, "the upload is recorded");

        assert_eq!(
            stored_events(&mut operator).await,
            (1..=3).map(|id| ("CTRL-0042".to_owned(), id)).collect::<Vec<_>>()
        );
        // A durable command that expires offline: the bridge's sweep (its
        // index, its script) under the bridge's user.
        let queued: Vec<String> = redis::Script::new(drover_schema::ledger::ENQUEUE_SCRIPT)
            .key("cwp:ledger:CTRL-0099")
            .key("cwp:cmd-outcomes")
            .key("cwp:ledger-due")
            .arg("CTRL-0099")
            .arg("22222222-2222-2222-2222-222222222222")
            .arg("reboot")
            .arg("")
            .arg(100)
            .arg(100)
            .invoke_async(&mut operator)
            .await
            .unwrap();
        assert_eq!(queued[0], "QUEUED");
        drover_testkit::wait::eventually("the sweep to expire the command", WAIT, || {
            let mut operator = operator.clone();
            async move {
                let statuses: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg("cwp:cmd-outcomes")
                    .arg("-")
                    .arg("+")
                    .query_async(&mut operator)
                    .await
                    .unwrap();
                statuses
                    .ids
                    .iter()
                    .any(|entry| entry.get::<String>("status").as_deref() == Some("EXPIRED"))
            }
        })
        .await;

        // A signed HTTP batch through the gateway (its nonce remembered
        // under its user), and the same request replayed: refused.
        let http_device = drover_testkit::device::serial("HTTP-ACL");
        let request = HttpRequest::signed_events(
            &http_device,
            "/v1/events",
            b"{\"event_id\":1,\"time_ms\":0,\"kind\":1,\"body\":\"over http\"}\n".to_vec(),
        );
        let answer = ingest::send(gateway.addr(), &request).await.unwrap();
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        assert_eq!(ingest::send(gateway.addr(), &request).await.unwrap().code(), "replayed");

        assert_eq!(
            denials(&mut operator).await,
            Vec::<String>::new(),
            "the documented ACLs allow everything the components do"
        );
    });
}

/// Runs a driver whose `REDIS_URL` is `redis_url` until it exits (it must,
/// within the deadline); returns its exit code and what it wrote.
fn driver_exit(redis_url: &str) -> (Option<i32>, String) {
    let uploads = tempfile::tempdir().unwrap();
    let upload_dir = uploads.path().to_str().unwrap();
    run_to_exit(
        "driver",
        &[
            ("DRIVER_LISTEN", "127.0.0.1:0"),
            ("DRIVER_ADMIN_LISTEN", "127.0.0.1:0"),
            ("CWP_MASTER_KEY", MASTER_KEY_HEX),
            ("REDIS_URL", redis_url),
            ("UPLOAD_DIR", upload_dir),
        ],
    )
}

#[test]
fn a_driver_with_the_bridges_password_or_none_does_not_start() {
    let redis = AclRedis::start();
    for url in [
        redis.url("drover-driver", BRIDGE_PASSWORD),
        format!("redis://127.0.0.1:{}", redis.server.port()),
    ] {
        let (code, output) = driver_exit(&url);
        assert_ne!(code, Some(0), "{url}: {output}");
        assert!(
            output.contains("Redis refused this driver's user") && output.contains("REDIS_URL"),
            "{url}: the driver names the problem and the variable:\n{output}"
        );
        assert!(
            !output.contains(BRIDGE_PASSWORD),
            "the password is not written out:\n{output}"
        );
    }
}

#[test]
fn the_readme_shows_the_users_of_docs_redis_acl_conf() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let documented = std::fs::read_to_string(format!("{root}/docs/redis-acl.conf")).unwrap();
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let users: Vec<&str> = documented.lines().filter(|line| line.starts_with("user ")).collect();
    assert_eq!(users.len(), 3, "a driver user, a bridge user and a gateway user");
    for user in users {
        assert!(
            readme.lines().any(|line| line == user),
            "README's Security section shows, verbatim:\n{user}"
        );
    }
}
