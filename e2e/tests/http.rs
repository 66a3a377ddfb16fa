//! HTTP ingest end to end (docs/HTTP.md): signed NDJSON batches posted to
//! real `http-gateway` processes, stored through the real vendor-bridge
//! into Redis, every answer checked against what Redis holds.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use cwp::{DeviceKey, Serial};
use drover_testkit::components::GatewayProcess;
use drover_testkit::device::{MASTER_KEY_HEX, device_key, serial};
use drover_testkit::fleet::{TestFleet, runtime};
use drover_testkit::haproxy_fleet::fleet_spec;
use drover_testkit::ingest::{self, HttpAnswer, HttpRequest, signed, signed_with, unix_ms};
use drover_testkit::inspect::stored_events;
use drover_testkit::local::{FleetSpec, LocalFleet};
use drover_testkit::operator;
use flate2::Compression;
use flate2::write::GzEncoder;

const EVENTS: &str = "/v1/events";

/// NDJSON lines for `ids`, each a small JSON text body.
fn lines(ids: impl IntoIterator<Item = u64>) -> Vec<u8> {
    ids.into_iter()
        .map(|id| {
            format!("{{\"event_id\":{id},\"time_ms\":1767225600000,\"kind\":1,\"body\":\"{{\\\"n\\\":{id}}}\"}}\n")
        })
        .collect::<String>()
        .into_bytes()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

async fn post(gateway: &GatewayProcess, request: &HttpRequest) -> HttpAnswer {
    ingest::send(gateway.addr(), request).await.unwrap()
}

/// The event ids stored for `serial`, in stream order.
async fn stored(fleet: &TestFleet, serial: &Serial) -> Vec<u64> {
    stored_events(&mut fleet.redis().await)
        .await
        .into_iter()
        .filter(|(s, _)| s == serial.as_str())
        .map(|(_, id)| id)
        .collect()
}

/// `stats.records` of a 200 answer, as (valid, duplicate, invalid, total).
fn counts(answer: &HttpAnswer) -> (u64, u64, u64, u64) {
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    let json = answer.json();
    assert_eq!(json["status"], "ok");
    let records = &json["stats"]["records"];
    let n = |name: &str| records[name].as_u64().unwrap();
    (n("valid"), n("duplicate"), n("invalid"), n("total"))
}

#[test]
fn a_signed_batch_is_stored_once_and_a_resent_batch_stores_nothing_twice() {
    let fleet = TestFleet::start(0, &[]);
    let mut gateway = fleet.start_gateway(&[]);
    let device = serial("HTTP-0001");
    runtime().block_on(async {
        let body = lines(1..=500);
        let answer = post(&gateway, &HttpRequest::signed_events(&device, EVENTS, body.clone())).await;
        assert_eq!(counts(&answer), (500, 0, 0, 500));
        let json = answer.json();
        assert_eq!(json["last_event_id"], 500);
        assert_eq!(json["stats"]["bytes"], body.len() as u64);
        assert_eq!(json["errors"], serde_json::json!([]));
        assert_eq!(stored(&fleet, &device).await, (1..=500).collect::<Vec<_>>());

        // The same batch again (a client that never saw the answer), newly
        // signed: every line a duplicate, nothing stored twice.
        let again = post(&gateway, &HttpRequest::signed_events(&device, EVENTS, body)).await;
        assert_eq!(counts(&again), (0, 500, 0, 500));
        // Overlapping: 401..=600, of which 100 are new.
        let overlap = post(&gateway, &HttpRequest::signed_events(&device, EVENTS, lines(401..=600))).await;
        assert_eq!(counts(&overlap), (100, 100, 0, 200));
        assert_eq!(stored(&fleet, &device).await, (1..=600).collect::<Vec<_>>());
        assert_eq!(
            gateway.metric("drover_http_lines_total", "result=\"stored\"").unwrap(),
            600.0
        );
    });
    // `ps` shows the gateway's port and the events it stored.
    let pid = gateway.process().pid();
    let title = || {
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
            .trim_end_matches('\0')
            .replace('\0', " ")
    };
    let expected = format!("port: {} connections: ", gateway.addr().port());
    drover_testkit::wait::wait_until("the title to show the stored events", Duration::from_secs(10), || {
        let title = title();
        title.starts_with("http-gateway v") && title.contains(&expected) && title.contains("events: 600 ")
    })
    .unwrap_or_else(|err| panic!("{err}: {}", title()));
}

#[test]
fn two_gateways_store_each_event_once_and_share_the_nonces() {
    let fleet = TestFleet::start(0, &[]);
    let gateways = [fleet.start_gateway(&[]), fleet.start_gateway(&[])];
    let device = serial("HTTP-0002");
    runtime().block_on(async {
        // The same batch to both at once, each signed on its own.
        let body = lines(1..=2000);
        let (to_a, to_b) = (
            HttpRequest::signed_events(&device, EVENTS, body.clone()),
            HttpRequest::signed_events(&device, EVENTS, body),
        );
        let (a, b) = tokio::join!(post(&gateways[0], &to_a), post(&gateways[1], &to_b));
        let (a, b) = (counts(&a), counts(&b));
        assert_eq!(a.0 + b.0, 2000, "stored once between them: {a:?} {b:?}");
        assert_eq!(a.0 + a.1, 2000);
        assert_eq!(b.0 + b.1, 2000);
        assert_eq!(stored(&fleet, &device).await, (1..=2000).collect::<Vec<_>>());

        // One signed request, replayed at the other gateway: refused there.
        let request = HttpRequest::signed_events(&device, EVENTS, lines(2001..=2010));
        assert_eq!(counts(&post(&gateways[0], &request).await).0, 10);
        let replay = post(&gateways[1], &request).await;
        assert_eq!((replay.status, replay.code()), (401, "replayed".to_owned()));
        assert_eq!(stored(&fleet, &device).await.len(), 2010);
    });
}

#[test]
fn every_refusal_is_a_401_json_error_and_stores_nothing() {
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), "HTTP-REVOKED -\n").unwrap();
    let fleet = TestFleet::start(0, &[]);
    let keys_file = keys.path().to_str().unwrap();
    let gateway = fleet.start_gateway(&[("CWP_KEYS_FILE", keys_file)]);
    let device = serial("HTTP-0003");
    runtime().block_on(async {
        let body = lines(1..=3);
        let request = |headers: Vec<(String, String)>| {
            let mut request = HttpRequest::signed_events(&device, EVENTS, body.clone());
            for (name, value) in headers {
                request = request.with_header(&name, &value);
            }
            request
        };
        let now = unix_ms();
        let wrong_key = DeviceKey::from_bytes([9; 32]);
        let cases: Vec<(&str, HttpRequest)> = vec![
            (
                "clock_skew",
                request(signed(&device, "POST", EVENTS, &body, now - 301_000)),
            ),
            (
                "clock_skew",
                request(signed(&device, "POST", EVENTS, &body, now + 301_000)),
            ),
            (
                "bad_signature",
                request(signed_with(&wrong_key, &device, "POST", EVENTS, &body, now)),
            ),
            (
                "bad_signature",
                request(signed(&device, "POST", "/v1/events?other=1", &body, now)),
            ),
            (
                "body_digest_mismatch",
                request(signed(&device, "POST", EVENTS, &lines(1..=4), now)),
            ),
            (
                "missing_authorization",
                HttpRequest::signed_events(&device, EVENTS, body.clone()).without_header("Authorization"),
            ),
            (
                "malformed_authorization",
                request(vec![("Authorization".to_owned(), "Basic dXNlcjpwYXNz".to_owned())]),
            ),
            (
                "missing_content_sha256",
                HttpRequest::signed_events(&device, EVENTS, body.clone()).without_header("X-Content-SHA256"),
            ),
        ];
        for (code, request) in cases {
            let answer = post(&gateway, &request).await;
            assert_eq!((answer.status, answer.code()), (401, code.to_owned()), "{code}");
            assert_eq!(answer.json()["status"], "error");
        }
        // A serial without a key answers as a bad signature; a revoked one says so.
        let stranger = serial("HTTP-REVOKED");
        let revoked = post(&gateway, &HttpRequest::signed_events(&stranger, EVENTS, body.clone())).await;
        assert_eq!((revoked.status, revoked.code()), (401, "revoked".to_owned()));
        // A replay of a request that was accepted.
        let accepted = HttpRequest::signed_events(&device, EVENTS, body.clone());
        assert_eq!(
            stored(&fleet, &device).await,
            Vec::<u64>::new(),
            "no refusal stored anything"
        );
        assert_eq!(
            counts(&post(&gateway, &accepted).await).0,
            3,
            "control: the same body, signed right"
        );
        let replay = post(&gateway, &accepted).await;
        assert_eq!((replay.status, replay.code()), (401, "replayed".to_owned()));
        assert_eq!(stored(&fleet, &device).await, vec![1, 2, 3]);
        // Every request needs credentials, unknown paths and GETs aside.
        let token_unsigned = post(
            &gateway,
            &HttpRequest::signed_events(&device, "/v1/token", Vec::new()).without_header("Authorization"),
        )
        .await;
        assert_eq!(token_unsigned.status, 401);
        // The health check is not on the clients' port, only on the admin one.
        let (status, _) = drover_testkit::http::get(gateway.addr(), "/healthz").unwrap();
        assert_eq!(status, 404);
        let (status, body) = drover_testkit::http::get(gateway.admin_addr(), "/healthz").unwrap();
        assert_eq!((status, body.trim()), (200, "ok"));
        assert!(
            gateway
                .metric("drover_http_requests_total", "outcome=\"clock_skew\"")
                .unwrap()
                >= 2.0
        );
    });
}

#[test]
fn gzip_and_chunked_bodies_are_stored_and_a_wrong_type_is_refused() {
    let fleet = TestFleet::start(0, &[]);
    let gateway = fleet.start_gateway(&[]);
    let device = serial("HTTP-0004");
    runtime().block_on(async {
        let gz = |ids| {
            let body = gzip(&lines(ids));
            HttpRequest::signed_events(&device, EVENTS, body).with_header("Content-Encoding", "gzip")
        };
        assert_eq!(counts(&post(&gateway, &gz(1..=1000)).await).0, 1000);
        let chunked = HttpRequest::signed_events(&device, EVENTS, lines(1001..=2000)).chunked(777);
        assert_eq!(counts(&post(&gateway, &chunked).await).0, 1000);
        assert_eq!(counts(&post(&gateway, &gz(2001..=3000).chunked(100)).await).0, 1000);
        assert_eq!(stored(&fleet, &device).await, (1..=3000).collect::<Vec<_>>());

        let text =
            HttpRequest::signed_events(&device, EVENTS, lines(3001..=3002)).with_header("Content-Type", "text/plain");
        let answer = post(&gateway, &text).await;
        assert_eq!(
            (answer.status, answer.code()),
            (415, "unsupported_media_type".to_owned())
        );
        let brotli =
            HttpRequest::signed_events(&device, EVENTS, lines(3001..=3002)).with_header("Content-Encoding", "br");
        assert_eq!(post(&gateway, &brotli).await.status, 415);
        // Not gzip at all, though it says so.
        let liar =
            HttpRequest::signed_events(&device, EVENTS, lines(3001..=3002)).with_header("Content-Encoding", "gzip");
        let answer = post(&gateway, &liar).await;
        assert_eq!((answer.status, answer.code()), (400, "bad_gzip".to_owned()));
        assert_eq!(stored(&fleet, &device).await.len(), 3000);
    });
}

#[test]
fn invalid_lines_are_reported_and_the_valid_ones_stored() {
    let fleet = TestFleet::start(0, &[]);
    let gateway = fleet.start_gateway(&[]);
    let device = serial("HTTP-0005");
    runtime().block_on(async {
        let mut body = lines(1..=2);
        body.extend_from_slice(b"{not json}\n");
        body.extend_from_slice(b"{\"event_id\":2,\"time_ms\":0,\"kind\":1,\"body\":\"again\"}\n");
        body.extend_from_slice(b"\n");
        body.extend_from_slice(b"{\"event_id\":9,\"time_ms\":0,\"kind\":1,\"body\":\"x\",\"extra\":1}\n");
        body.extend_from_slice(&lines([10]));
        let answer = post(&gateway, &HttpRequest::signed_events(&device, EVENTS, body)).await;
        assert_eq!(counts(&answer), (3, 0, 3, 6));
        let json = answer.json();
        assert_eq!(
            json["errors"],
            serde_json::json!([
                {"line": 3, "reason": "invalid_json"},
                {"line": 4, "reason": "out_of_order"},
                {"line": 6, "reason": "unknown_field"},
            ])
        );
        assert_eq!(json["last_event_id"], 10);
        assert_eq!(stored(&fleet, &device).await, vec![1, 2, 10]);
    });
}

#[test]
fn a_body_too_large_is_413_with_a_length_or_in_chunks_and_stores_nothing() {
    let fleet = TestFleet::start(0, &[]);
    let gateway = fleet.start_gateway(&[("HTTP_MAX_BODY_BYTES", "4096"), ("HTTP_MAX_INFLIGHT_BYTES", "4096")]);
    let device = serial("HTTP-0006");
    runtime().block_on(async {
        let big = lines(1..=100);
        assert!(big.len() > 4096);
        for request in [
            HttpRequest::signed_events(&device, EVENTS, big.clone()),
            HttpRequest::signed_events(&device, EVENTS, big.clone()).chunked(1000),
            HttpRequest::signed_events(&device, EVENTS, gzip(&big)).with_header("Content-Encoding", "gzip"),
        ] {
            let answer = post(&gateway, &request).await;
            assert_eq!((answer.status, answer.code()), (413, "body_too_large".to_owned()));
        }
        assert!(stored(&fleet, &device).await.is_empty());
        // Control: a body within the limit.
        assert_eq!(
            counts(&post(&gateway, &HttpRequest::signed_events(&device, EVENTS, lines(1..=10))).await).0,
            10
        );
    });
}

#[test]
fn a_bridge_outage_answers_503_acknowledges_nothing_and_a_retry_stores_once() {
    let mut fleet = TestFleet::start(0, &[]);
    let gateway = fleet.start_gateway(&[("HTTP_STORE_TIMEOUT", "2s")]);
    let device = serial("HTTP-0007");
    runtime().block_on(async {
        assert_eq!(
            counts(&post(&gateway, &HttpRequest::signed_events(&device, EVENTS, lines(1..=10))).await).0,
            10
        );
    });
    let bridge_port = fleet.bridge.port();
    fleet.bridge.process().kill();
    runtime().block_on(async {
        let body = lines(11..=1000);
        let answer = post(&gateway, &HttpRequest::signed_events(&device, EVENTS, body.clone())).await;
        assert_eq!((answer.status, answer.code()), (503, "store_unavailable".to_owned()));
        assert_eq!(answer.header("retry-after"), Some("1"));
        assert_eq!(
            stored(&fleet, &device).await,
            (1..=10).collect::<Vec<_>>(),
            "nothing stored while the bridge is down"
        );
    });
    fleet.bridge = drover_testkit::components::BridgeProcess::start_on(
        bridge_port,
        &fleet.redis.url(),
        &drover_testkit::fleet::logs(),
        &[],
    )
    .unwrap();
    runtime().block_on(async {
        // The client retries until it gets an answer; once it does, every
        // line is durable: newly stored now, or by the first attempt's
        // batches, which waited on the stream (duplicates then).
        let body = lines(11..=1000);
        let answer = loop {
            let answer = post(&gateway, &HttpRequest::signed_events(&device, EVENTS, body.clone())).await;
            if answer.status != 503 {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let (valid, duplicate, invalid, total) = counts(&answer);
        assert_eq!((valid + duplicate, invalid, total), (990, 0, 990));
        assert_eq!(
            stored(&fleet, &device).await,
            (1..=1000).collect::<Vec<_>>(),
            "each event stored once"
        );
    });
}

#[test]
fn a_token_is_issued_to_a_signed_request_and_accepted_only_over_tls_unless_configured() {
    let fleet = TestFleet::start(0, &[]);
    let strict = fleet.start_gateway(&[]);
    let lenient = fleet.start_gateway(&[("HTTP_BEARER_REQUIRES_TLS", "false")]);
    let device = serial("HTTP-0008");
    runtime().block_on(async {
        let ask = HttpRequest::signed_events(&device, "/v1/token", Vec::new());
        let answer = post(&strict, &ask).await;
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        let json = answer.json();
        assert_eq!(json["expires_in"], 3600);
        let token = json["token"].as_str().unwrap().to_owned();
        assert!(token.starts_with("cwp1.HTTP-0008."), "{token}");

        let with_token = |ids| {
            HttpRequest::signed_events(&device, EVENTS, lines(ids))
                .without_header("X-Content-SHA256")
                .with_header("Authorization", &format!("Bearer {token}"))
        };
        // Plain HTTP, no HAProxy to say it was TLS: refused.
        let refused = post(&strict, &with_token(1..=5)).await;
        assert_eq!(
            (refused.status, refused.code()),
            (401, "bearer_requires_tls".to_owned())
        );
        assert!(stored(&fleet, &device).await.is_empty());
        // Where the operator allows it, the token stands for the device.
        assert_eq!(counts(&post(&lenient, &with_token(1..=5)).await).0, 5);
        // The mac's last digit changed (to another digit, whatever it was).
        let last = if token.ends_with('0') { '1' } else { '0' };
        let forged = format!("{}{last}", &token[..token.len() - 1]);
        let forged = post(
            &lenient,
            &with_token(6..=7).with_header("Authorization", &format!("Bearer {forged}")),
        )
        .await;
        assert_eq!((forged.status, forged.code()), (401, "bad_token".to_owned()));
        // A token cannot ask for a token.
        let renew = HttpRequest::signed_events(&device, "/v1/token", Vec::new())
            .with_header("Authorization", &format!("Bearer {token}"));
        assert_eq!(post(&lenient, &renew).await.status, 401);
        assert_eq!(stored(&fleet, &device).await, vec![1, 2, 3, 4, 5]);
    });
}

#[test]
fn a_slow_body_gets_408_and_stores_nothing() {
    let fleet = TestFleet::start(0, &[]);
    let gateway = fleet.start_gateway(&[("HTTP_BODY_TIMEOUT", "1s")]);
    let device = serial("HTTP-0009");
    runtime().block_on(async {
        let body = lines(1..=10);
        let request = HttpRequest::signed_events(&device, EVENTS, body.clone());
        let mut stream = tokio::net::TcpStream::connect(gateway.addr()).await.unwrap();
        // The headers and half the body; the rest never comes. The answer
        // arrives when the gateway's deadline passes (the read below waits
        // for it, with its own longer bound).
        let mut partial = request.clone();
        partial.body.truncate(body.len() / 2);
        ingest::write_request_declaring(&mut stream, gateway.addr(), &partial, body.len())
            .await
            .unwrap();
        let answer = ingest::read_answer(&mut stream).await.unwrap();
        assert_eq!((answer.status, answer.code()), (408, "body_timeout".to_owned()));
        assert!(stored(&fleet, &device).await.is_empty());
    });
}

/// The ```python block of docs/HTTP.md marked as the client.
fn python_client() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/HTTP.md")).unwrap();
    let marker = doc
        .find("<!-- python-client")
        .expect("docs/HTTP.md marks its Python client");
    let start = doc[marker..].find("```python\n").unwrap() + marker + "```python\n".len();
    let end = doc[start..].find("```").unwrap() + start;
    doc[start..end].to_owned()
}

#[test]
fn the_python_client_of_the_docs_posts_to_the_real_gateway() {
    let python = "/usr/bin/python3";
    assert!(std::path::Path::new(python).exists(), "python3 is needed for this test");
    let fleet = TestFleet::start(0, &[]);
    let gateway = fleet.start_gateway(&[]);
    let device = serial("CTRL-0042");
    let dir = tempfile::tempdir().unwrap();
    let client = dir.path().join("client.py");
    std::fs::write(&client, python_client()).unwrap();
    let key_hex = hex::encode(device_key(&device).as_bytes());
    let run = || {
        std::process::Command::new(python)
            .arg(&client)
            .arg(gateway.url())
            .arg(device.as_str())
            .arg(&key_hex)
            .output()
            .unwrap()
    };
    let output = run();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (status, answer) = stdout.trim().split_once(' ').unwrap();
    assert_eq!(status, "200", "{stdout}");
    let answer: serde_json::Value = serde_json::from_str(answer).unwrap();
    assert_eq!(answer["stats"]["records"]["valid"], 2, "{answer}");
    let last = answer["last_event_id"].as_u64().unwrap();
    runtime().block_on(async {
        assert_eq!(stored(&fleet, &device).await, vec![last - 1, last]);
    });
    // Control: with another key, the gateway refuses the client (urllib
    // raises on a 401).
    let wrong = std::process::Command::new(python)
        .arg(&client)
        .arg(gateway.url())
        .arg(device.as_str())
        .arg("00".repeat(32))
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
}

#[test]
fn drover_token_asks_the_gateway_as_the_device_and_the_token_stores_events() {
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), "HTTP-REVOKED -\n").unwrap();
    let fleet = TestFleet::start(0, &[]);
    let gateway = fleet.start_gateway(&[
        ("HTTP_BEARER_REQUIRES_TLS", "false"),
        ("CWP_KEYS_FILE", keys.path().to_str().unwrap()),
    ]);
    let device = serial("HTTP-0010");
    let url = gateway.url();
    let env = |master: &str| vec![("CWP_MASTER_KEY", master.to_owned()), ("HTTP_GATEWAY_URL", url.clone())];
    let run = operator::drover(&env(MASTER_KEY_HEX), &["token", "HTTP-0010"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.starts_with("cwp1.HTTP-0010."), "{run:?}");
    runtime().block_on(async {
        let with_token = HttpRequest::signed_events(&device, EVENTS, lines(1..=3))
            .without_header("X-Content-SHA256")
            .with_header("Authorization", &format!("Bearer {}", run.stdout));
        assert_eq!(counts(&post(&gateway, &with_token).await).0, 3);
    });
    let json = operator::drover(&env(MASTER_KEY_HEX), &["--json", "token", "HTTP-0010"]);
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        (json["serial"].as_str(), json["expires_in"].as_u64()),
        (Some("HTTP-0010"), Some(3600))
    );

    // The gateway refuses what it would refuse the device: a revoked
    // serial, a key from another master key (exit code 8, its error shown).
    let revoked = operator::drover(&env(MASTER_KEY_HEX), &["token", "HTTP-REVOKED"]);
    assert_eq!(revoked.code, Some(8), "{revoked:?}");
    assert!(revoked.stderr.contains("revoked"), "{revoked:?}");
    let other_master = operator::drover(&env(&"ab".repeat(32)), &["token", "HTTP-0010"]);
    assert_eq!(other_master.code, Some(8), "{other_master:?}");
    assert!(other_master.stderr.contains("bad_signature"), "{other_master:?}");
    assert!(other_master.stdout.is_empty());
    // No gateway there: a clear error, not a token.
    let nowhere = operator::drover(
        &[
            ("CWP_MASTER_KEY", MASTER_KEY_HEX),
            ("HTTP_GATEWAY_URL", "http://127.0.0.1:1"),
        ],
        &["token", "HTTP-0010"],
    );
    assert_eq!(nowhere.code, Some(1), "{nowhere:?}");
    assert!(nowhere.stderr.contains("connecting to the gateway"), "{nowhere:?}");
}

#[test]
fn behind_haproxy_the_gateway_sees_each_client_s_own_address() {
    let state = tempfile::tempdir().unwrap();
    let http_port = drover_testkit::net::free_port().unwrap();
    let fleet = LocalFleet::start(FleetSpec {
        gateways: 1,
        http_port,
        driver_env: vec![("HTTP_AUTH_FAILURES_PER_ADDRESS".to_owned(), "3".to_owned())],
        ..fleet_spec(1, state.path())
    })
    .unwrap();
    let frontend = drover_testkit::net::loopback(http_port);
    let device = serial("HTTP-0011");
    let from = |last: u8| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
    runtime().block_on(async {
        // Three failures from 127.0.0.5 (HTTP_AUTH_FAILURES_PER_ADDRESS=3)...
        let wrong_key = DeviceKey::from_bytes([9; 32]);
        for _ in 0..3 {
            let body = lines(1..=2);
            let forged = HttpRequest::signed_events(&device, EVENTS, body.clone()).with_header(
                "Authorization",
                &signed_with(&wrong_key, &device, "POST", EVENTS, &body, unix_ms())[0].1,
            );
            let answer = ingest::send_from(frontend, from(5), &forged).await.unwrap();
            assert_eq!((answer.status, answer.code()), (401, "bad_signature".to_owned()));
        }
        // ... and that address is refused, even signed right.
        let refused = ingest::send_from(
            frontend,
            from(5),
            &HttpRequest::signed_events(&device, EVENTS, lines(1..=2)),
        )
        .await
        .unwrap();
        assert_eq!(refused.status, 429, "{}", String::from_utf8_lossy(&refused.body));
        // Another address is not: the gateway saw each client's address
        // (PROXY v2 from HAProxy), not HAProxy's own, which all share.
        let other = ingest::send_from(
            frontend,
            from(6),
            &HttpRequest::signed_events(&device, EVENTS, lines(1..=2)),
        )
        .await
        .unwrap();
        assert_eq!(counts(&other).0, 2);
    });
    // Direct to the gateway, without HAProxy's header: refused (the
    // gateway trusts the header only, so it demands it).
    let direct = runtime().block_on(ingest::send(
        fleet.gateways[0].addr(),
        &HttpRequest::signed_events(&device, EVENTS, lines(3..=4)),
    ));
    assert!(
        direct.is_err() || direct.as_ref().is_ok_and(|answer| answer.status >= 400),
        "{direct:?}"
    );
}

#[test]
fn slow_or_oversized_headers_and_a_gzip_bomb_are_cut_off_and_store_nothing() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let fleet = TestFleet::start(0, &[]);
    let gateway = fleet.start_gateway(&[("HTTP_HEADER_TIMEOUT", "1s")]);
    let device = serial("HTTP-0012");
    runtime().block_on(async {
        // Headers that never end: the gateway hangs up once
        // HTTP_HEADER_TIMEOUT has passed (the read below waits for that,
        // with its own far longer bound).
        let mut slow = tokio::net::TcpStream::connect(gateway.addr()).await.unwrap();
        slow.write_all(b"POST /v1/events HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(60), slow.read_to_end(&mut answer)).await;
        assert!(
            closed.is_ok(),
            "the gateway closed the connection of a client whose headers never end"
        );
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");

        // Headers beyond 16 KiB: 431, before any credentials are read.
        let oversized =
            HttpRequest::signed_events(&device, EVENTS, lines(1..=2)).with_header("X-Padding", &"a".repeat(20_000));
        let mut stream = tokio::net::TcpStream::connect(gateway.addr()).await.unwrap();
        // The gateway may answer and close before the whole request is
        // written; what it said is what counts.
        let _ = ingest::write_request(&mut stream, gateway.addr(), &oversized).await;
        if let Ok(answer) = ingest::read_answer(&mut stream).await {
            assert_eq!(answer.status, 431, "{}", String::from_utf8_lossy(&answer.body));
        }

        // A gzip bomb: 64 MiB of zeros in about 64 KiB, signed. Refused
        // as soon as it expands past the ratio, never held whole.
        let bomb = gzip(&vec![b'0'; 64 << 20]);
        let request = HttpRequest::signed_events(&device, EVENTS, bomb).with_header("Content-Encoding", "gzip");
        let answer = post(&gateway, &request).await;
        assert_eq!((answer.status, answer.code()), (413, "gzip_ratio".to_owned()));

        assert!(stored(&fleet, &device).await.is_empty());
        // Control: the same gateway stores a well-formed batch.
        assert_eq!(
            counts(&post(&gateway, &HttpRequest::signed_events(&device, EVENTS, lines(1..=2))).await).0,
            2
        );
    });
}
