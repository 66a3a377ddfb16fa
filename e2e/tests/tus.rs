//! tus 1.0 uploads end to end (docs/HTTP.md, "Uploads"): real
//! `http-gateway` processes sharing one `UPLOAD_DIR`, the real bridge and
//! Redis; every answer checked against the files and `cwp:uploads`.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cwp::Serial;
use drover_testkit::components::GatewayProcess;
use drover_testkit::device::serial;
use drover_testkit::fleet::{TestFleet, runtime};
use drover_testkit::ingest::{self, HttpAnswer, HttpRequest, signed, unix_ms};
use sha1::Digest as _;
use tokio::io::AsyncWriteExt as _;

const UPLOADS: &str = "/v1/uploads/";

/// Bearer tokens over plain HTTP (the tests' loopback), small buffers so
/// that a few KiB cross buffer boundaries, and a shared `UPLOAD_DIR`.
fn gateway_env(dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("HTTP_BEARER_REQUIRES_TLS", "false".to_owned()),
        ("UPLOAD_DIR", dir.display().to_string()),
        ("UPLOAD_BUFFER_BYTES", "4096".to_owned()),
        ("UPLOAD_MAX_BYTES", "10000000".to_owned()),
        ("UPLOAD_MIN_FREE_BYTES", "0".to_owned()),
        ("HTTP_UPLOAD_IDLE_TIMEOUT", "2s".to_owned()),
    ]
}

fn start_gateway(fleet: &TestFleet, dir: &Path, more: &[(&str, &str)]) -> GatewayProcess {
    let mut env: Vec<(&str, String)> = gateway_env(dir);
    env.extend(more.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    fleet.start_gateway(&env)
}

/// A bearer token for `device`, from `POST /v1/token`.
async fn bearer_token(gateway: &GatewayProcess, device: &Serial) -> String {
    let answer = ingest::send(
        gateway.addr(),
        &HttpRequest::signed_events(device, "/v1/token", Vec::new()).without_header("Content-Type"),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    answer.json()["token"].as_str().unwrap().to_owned()
}

/// A tus request with a bearer token.
fn tus(method: &str, path: &str, token: &str, body: Vec<u8>) -> HttpRequest {
    let mut headers = vec![
        ("Authorization".to_owned(), format!("Bearer {token}")),
        ("Tus-Resumable".to_owned(), "1.0.0".to_owned()),
    ];
    if method == "PATCH" || (method == "POST" && !body.is_empty()) {
        headers.push(("Content-Type".to_owned(), "application/offset+octet-stream".to_owned()));
    }
    HttpRequest {
        method: method.to_owned(),
        path: path.to_owned(),
        headers,
        body,
        framing: ingest::Framing::Length,
    }
}

async fn send(gateway: &GatewayProcess, request: &HttpRequest) -> HttpAnswer {
    ingest::send(gateway.addr(), request).await.unwrap()
}

/// Creates an upload of `length` bytes; returns its path.
async fn create(gateway: &GatewayProcess, token: &str, length: u64, metadata: &str) -> String {
    let mut request = tus("POST", UPLOADS, token, Vec::new()).with_header("Upload-Length", &length.to_string());
    if !metadata.is_empty() {
        request = request.with_header("Upload-Metadata", metadata);
    }
    let answer = send(gateway, &request).await;
    assert_eq!(answer.status, 201, "{}", String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.header("tus-resumable"), Some("1.0.0"));
    assert!(answer.header("upload-expires").is_some());
    answer.header("location").unwrap().to_owned()
}

async fn patch(gateway: &GatewayProcess, token: &str, path: &str, offset: u64, body: &[u8]) -> HttpAnswer {
    send(
        gateway,
        &tus("PATCH", path, token, body.to_vec()).with_header("Upload-Offset", &offset.to_string()),
    )
    .await
}

/// `HEAD`'s `Upload-Offset` (asserting 200).
async fn offset(gateway: &GatewayProcess, token: &str, path: &str) -> u64 {
    let answer = send(gateway, &tus("HEAD", path, token, Vec::new())).await;
    assert_eq!(answer.status, 200, "HEAD {path}: {}", answer.status);
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    answer.header("upload-offset").unwrap().parse().unwrap()
}

fn sha1_checksum(bytes: &[u8]) -> String {
    format!("sha1 {}", STANDARD.encode(sha1::Sha1::digest(bytes)))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Deterministic content.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The `cwp:uploads` entries, as field maps.
async fn recorded_uploads(fleet: &TestFleet) -> Vec<std::collections::HashMap<String, String>> {
    let mut redis = fleet.redis().await;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("cwp:uploads")
        .arg("-")
        .arg("+")
        .query_async::<redis::Value>(&mut redis)
        .await
        .map(|value| {
            let redis::Value::Array(entries) = value else {
                return Vec::new();
            };
            entries
                .into_iter()
                .filter_map(|entry| {
                    let redis::Value::Array(mut parts) = entry else {
                        return None;
                    };
                    let fields = parts.pop()?;
                    let id: String = redis::from_redis_value(parts.pop()?).ok()?;
                    let fields: Vec<String> = redis::from_redis_value(fields).ok()?;
                    Some((
                        id,
                        fields
                            .chunks(2)
                            .map(|pair| (pair[0].clone(), pair[1].clone()))
                            .collect(),
                    ))
                })
                .collect()
        })
        .unwrap();
    entries
        .into_iter()
        .map(|(_, fields)| fields.into_iter().collect())
        .collect()
}

#[test]
fn an_upload_is_created_patched_with_checksums_and_recorded_once_as_http() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = TestFleet::start(0, &[]);
    let gateway = start_gateway(&fleet, dir.path(), &[]);
    let device = serial("TUS-0001");
    let data = content(10_000, 7);
    runtime().block_on(async {
        let token = bearer_token(&gateway, &device).await;
        // OPTIONS needs no credentials: capabilities only.
        let options = send(
            &gateway,
            &HttpRequest {
                headers: Vec::new(),
                ..tus("OPTIONS", UPLOADS, "", Vec::new())
            },
        )
        .await;
        assert_eq!(options.status, 204);
        assert_eq!(options.header("tus-version"), Some("1.0.0"));
        assert_eq!(options.header("tus-max-size"), Some("10000000"));
        assert_eq!(options.header("tus-checksum-algorithm"), Some("sha1,sha256"));
        for extension in [
            "creation",
            "creation-with-upload",
            "creation-defer-length",
            "expiration",
            "checksum",
            "termination",
            "concatenation",
        ] {
            assert!(
                options
                    .header("tus-extension")
                    .unwrap()
                    .split(',')
                    .any(|e| e == extension),
                "{extension}"
            );
        }

        let name = STANDARD.encode("log.bin");
        let path = create(&gateway, &token, data.len() as u64, &format!("filename {name},kind")).await;
        assert!(path.starts_with(UPLOADS), "{path}");
        assert_eq!(offset(&gateway, &token, &path).await, 0);

        // Three pieces, each with its sha1; the offset answered is durable.
        let mut at = 0;
        for piece in [3_000, 5_000, 2_000] {
            let body = &data[at..at + piece];
            let answer = send(
                &gateway,
                &tus("PATCH", &path, &token, body.to_vec())
                    .with_header("Upload-Offset", &at.to_string())
                    .with_header("Upload-Checksum", &sha1_checksum(body)),
            )
            .await;
            assert_eq!(answer.status, 204, "{}", String::from_utf8_lossy(&answer.body));
            at += piece;
            assert_eq!(answer.header("upload-offset"), Some(at.to_string().as_str()));
        }
        // Complete: HEAD says so, the file is in completed/, recorded once.
        assert_eq!(offset(&gateway, &token, &path).await, data.len() as u64);
        let uploads = recorded_uploads(&fleet).await;
        assert_eq!(uploads.len(), 1, "{uploads:?}");
        let record = &uploads[0];
        assert_eq!(record["transport"], "http");
        assert_eq!(record["serial"], "TUS-0001");
        assert_eq!(record["name"], "log.bin");
        assert_eq!(record["size"], "10000");
        assert_eq!(record["sha256"], sha256_hex(&data));
        assert_eq!(std::fs::read(dir.path().join(&record["path"])).unwrap(), data);
        assert_eq!(&path[UPLOADS.len()..], record["upload_id"]);
        // A PATCH after completion: nothing appended.
        let after = patch(&gateway, &token, &path, data.len() as u64, b"more").await;
        assert_eq!((after.status, after.code()), (403, "upload_completed".to_owned()));
        let stale = patch(&gateway, &token, &path, 0, b"more").await;
        assert_eq!((stale.status, stale.code()), (409, "offset_mismatch".to_owned()));
        assert_eq!(recorded_uploads(&fleet).await.len(), 1);
        assert_eq!(gateway.metric("drover_http_uploads_completed_total", "").unwrap(), 1.0);
    });
}

#[test]
fn a_checksum_that_does_not_match_moves_no_offset_and_a_good_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = TestFleet::start(0, &[]);
    let gateway = start_gateway(&fleet, dir.path(), &[]);
    let device = serial("TUS-0002");
    let data = content(9_000, 3);
    runtime().block_on(async {
        let token = bearer_token(&gateway, &device).await;
        let path = create(&gateway, &token, 20_000, "").await;
        let ok = |offset: u64, body: &[u8], checksum: &str| {
            tus("PATCH", &path, &token, body.to_vec())
                .with_header("Upload-Offset", &offset.to_string())
                .with_header("Upload-Checksum", checksum)
        };
        // 9,000 bytes (two full 4 KiB buffers written and synced before the
        // end), the checksum of other bytes: 460, cut back to 0.
        let wrong = send(&gateway, &ok(0, &data, &sha1_checksum(b"other"))).await;
        assert_eq!((wrong.status, wrong.code()), (460, "checksum_mismatch".to_owned()));
        assert_eq!(offset(&gateway, &token, &path).await, 0);
        // The control: the same bytes with their checksum (sha256 this time).
        let sha256 = format!("sha256 {}", STANDARD.encode(sha2::Sha256::digest(&data)));
        let right = send(&gateway, &ok(0, &data, &sha256)).await;
        assert_eq!(right.status, 204);
        assert_eq!(offset(&gateway, &token, &path).await, 9_000);
        // A signed PATCH whose body is not the signed one: 401, nothing moves.
        let mut signed_patch = tus("PATCH", &path, &token, data.clone())
            .without_header("Authorization")
            .with_header("Upload-Offset", "9000");
        for (name, value) in signed(&device, "PATCH", &path, b"not the body", unix_ms()) {
            signed_patch = signed_patch.with_header(&name, &value);
        }
        let forged = send(&gateway, &signed_patch).await;
        assert_eq!((forged.status, forged.code()), (401, "body_digest_mismatch".to_owned()));
        assert_eq!(offset(&gateway, &token, &path).await, 9_000);
        // Unsupported algorithm, malformed checksum.
        let md5 = send(&gateway, &ok(9_000, b"x", "md5 XrY7u+Ae7tCTyyK7j1rNww==")).await;
        assert_eq!((md5.status, md5.code()), (400, "unsupported_checksum".to_owned()));
        let malformed = send(&gateway, &ok(9_000, b"x", "sha1 !!")).await;
        assert_eq!((malformed.status, malformed.code()), (400, "bad_checksum".to_owned()));
        // The file holds exactly the accepted bytes.
        let partial = dir
            .path()
            .join("partial/s-TUS-0002")
            .join(&path[UPLOADS.len()..])
            .join("data");
        assert_eq!(std::fs::read(partial).unwrap(), data);
    });
}

#[test]
fn a_client_cut_off_mid_patch_resumes_on_the_other_gateway_and_two_writers_never_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = TestFleet::start(0, &[]);
    let a = start_gateway(&fleet, dir.path(), &[]);
    let b = start_gateway(&fleet, dir.path(), &[]);
    let device = serial("TUS-0003");
    let data = content(30_000, 11);
    runtime().block_on(async {
        let token = bearer_token(&a, &device).await;
        let path = create(&a, &token, data.len() as u64, "").await;
        // 10,000 bytes of a 20,000-byte PATCH to A, then the client stalls.
        let request = tus("PATCH", &path, &token, data[..10_000].to_vec()).with_header("Upload-Offset", "0");
        let mut stalled = tokio::net::TcpStream::connect(a.addr()).await.unwrap();
        ingest::write_request_declaring(&mut stalled, a.addr(), &request, 20_000)
            .await
            .unwrap();
        // A writes the two full buffers (8,192 bytes); meanwhile the upload
        // is A's alone: B answers 423 to a PATCH and to a HEAD.
        drover_testkit::wait::wait_until("A to write two buffers", Duration::from_secs(10), || {
            std::fs::metadata(
                dir.path()
                    .join("partial/s-TUS-0003")
                    .join(&path[UPLOADS.len()..])
                    .join("data"),
            )
            .is_ok_and(|meta| meta.len() == 8_192)
        })
        .unwrap();
        let competing = patch(&b, &token, &path, 0, &data[..100]).await;
        assert_eq!((competing.status, competing.code()), (423, "upload_locked".to_owned()));
        assert_eq!(competing.header("retry-after"), Some("1"));
        let same_gateway = patch(&a, &token, &path, 0, &data[..100]).await;
        assert_eq!(same_gateway.status, 423, "on the same gateway too");
        let head = send(&b, &tus("HEAD", &path, &token, Vec::new())).await;
        assert_eq!(head.status, 423);
        // The client's connection drops: A keeps what was durable, the
        // full buffers, and lets the upload go.
        stalled.shutdown().await.unwrap();
        drop(stalled);
        let resumed_at = {
            let mut at = None;
            for _ in 0..100 {
                let head = send(&b, &tus("HEAD", &path, &token, Vec::new())).await;
                if head.status == 200 {
                    at = Some(head.header("upload-offset").unwrap().parse::<u64>().unwrap());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            at.expect("the upload is released once the client is gone")
        };
        assert_eq!(resumed_at, 8_192, "every full buffer is kept, nothing more");
        // The client resumes on B from there.
        let rest = patch(&b, &token, &path, resumed_at, &data[resumed_at as usize..]).await;
        assert_eq!(rest.status, 204, "{}", String::from_utf8_lossy(&rest.body));
        let uploads = recorded_uploads(&fleet).await;
        assert_eq!(uploads.len(), 1);
        assert_eq!(uploads[0]["sha256"], sha256_hex(&data));
        assert_eq!(std::fs::read(dir.path().join(&uploads[0]["path"])).unwrap(), data);
    });
}

#[test]
fn partial_uploads_are_concatenated_into_a_final_one_of_the_same_serial_only() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = TestFleet::start(0, &[]);
    let gateway = start_gateway(&fleet, dir.path(), &[]);
    let device = serial("TUS-0004");
    let stranger = serial("TUS-0005");
    let (first, second) = (content(6_000, 1), content(5_000, 2));
    runtime().block_on(async {
        let token = bearer_token(&gateway, &device).await;
        let mut parts = Vec::new();
        for part in [&first, &second] {
            let answer = send(
                &gateway,
                &tus("POST", UPLOADS, &token, Vec::new())
                    .with_header("Upload-Length", &part.len().to_string())
                    .with_header("Upload-Concat", "partial"),
            )
            .await;
            assert_eq!(answer.status, 201);
            let path = answer.header("location").unwrap().to_owned();
            // Uploaded in parallel by a real client; one after the other here.
            assert_eq!(patch(&gateway, &token, &path, 0, part).await.status, 204);
            let head = send(&gateway, &tus("HEAD", &path, &token, Vec::new())).await;
            assert_eq!(head.header("upload-concat"), Some("partial"));
            parts.push(path);
        }
        assert!(recorded_uploads(&fleet).await.is_empty(), "parts are never recorded");
        // Another serial cannot join them (nor see them).
        let other_token = bearer_token(&gateway, &stranger).await;
        assert_eq!(
            send(&gateway, &tus("HEAD", &parts[0], &other_token, Vec::new()))
                .await
                .status,
            404
        );
        let theft = send(
            &gateway,
            &tus("POST", UPLOADS, &other_token, Vec::new())
                .with_header("Upload-Concat", &format!("final;{} {}", parts[0], parts[1])),
        )
        .await;
        assert_eq!((theft.status, theft.code()), (400, "bad_concat".to_owned()));
        // The owner joins them.
        let joined = send(
            &gateway,
            &tus("POST", UPLOADS, &token, Vec::new()).with_header(
                "Upload-Concat",
                &format!("final;{} http://gateway.example{}", parts[0], parts[1]),
            ),
        )
        .await;
        assert_eq!(joined.status, 201, "{}", String::from_utf8_lossy(&joined.body));
        let final_path = joined.header("location").unwrap();
        let mut whole = first.clone();
        whole.extend_from_slice(&second);
        assert_eq!(offset(&gateway, &token, final_path).await, whole.len() as u64);
        let uploads = recorded_uploads(&fleet).await;
        assert_eq!(uploads.len(), 1);
        assert_eq!(uploads[0]["sha256"], sha256_hex(&whole));
        assert_eq!(std::fs::read(dir.path().join(&uploads[0]["path"])).unwrap(), whole);
        // The parts are gone; a PATCH to the final upload is refused.
        assert_eq!(
            send(&gateway, &tus("HEAD", &parts[0], &token, Vec::new())).await.status,
            404
        );
        let more = patch(&gateway, &token, final_path, whole.len() as u64, b"x").await;
        assert_eq!(more.status, 403);
    });
}

#[test]
fn deferred_lengths_creation_with_upload_chunked_bodies_termination_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = TestFleet::start(0, &[]);
    let gateway = start_gateway(&fleet, dir.path(), &[("UPLOAD_EXPIRE_AFTER", "3s")]);
    let device = serial("TUS-0006");
    let data = content(12_345, 5);
    runtime().block_on(async {
        let token = bearer_token(&gateway, &device).await;
        // Deferred length, a first piece in the creation, chunked.
        let created = send(
            &gateway,
            &tus("POST", UPLOADS, &token, data[..5_000].to_vec())
                .with_header("Upload-Defer-Length", "1")
                .chunked(1_000),
        )
        .await;
        assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
        assert_eq!(created.header("upload-offset"), Some("5000"));
        let path = created.header("location").unwrap().to_owned();
        let head = send(&gateway, &tus("HEAD", &path, &token, Vec::new())).await;
        assert_eq!(head.header("upload-defer-length"), Some("1"));
        assert!(head.header("upload-length").is_none());
        // The length, with the rest, chunked.
        let rest = send(
            &gateway,
            &tus("PATCH", &path, &token, data[5_000..].to_vec())
                .with_header("Upload-Offset", "5000")
                .with_header("Upload-Length", &data.len().to_string())
                .chunked(777),
        )
        .await;
        assert_eq!(rest.status, 204, "{}", String::from_utf8_lossy(&rest.body));
        let uploads = recorded_uploads(&fleet).await;
        assert_eq!(uploads.len(), 1);
        assert_eq!(uploads[0]["sha256"], sha256_hex(&data));

        // Termination: 204, then the upload is gone.
        let doomed = create(&gateway, &token, 100, "").await;
        assert_eq!(patch(&gateway, &token, &doomed, 0, &[1; 50]).await.status, 204);
        let deleted = send(&gateway, &tus("DELETE", &doomed, &token, Vec::new())).await;
        assert_eq!(deleted.status, 204);
        assert_eq!(
            send(&gateway, &tus("HEAD", &doomed, &token, Vec::new())).await.status,
            404
        );
        // A completed upload belongs to the application.
        let kept = send(&gateway, &tus("DELETE", &path, &token, Vec::new())).await;
        assert_eq!((kept.status, kept.code()), (403, "upload_completed".to_owned()));

        // Expiration: Upload-Expires is an HTTP date; once it passes, 410.
        let abandoned = create(&gateway, &token, 100, "").await;
        let answer = patch(&gateway, &token, &abandoned, 0, &[2; 10]).await;
        let expires = httpdate::parse_http_date(answer.header("upload-expires").unwrap()).unwrap();
        let in_future = expires.duration_since(std::time::SystemTime::now()).unwrap();
        assert!(in_future <= Duration::from_secs(3), "{in_future:?}");
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        let gone = send(&gateway, &tus("HEAD", &abandoned, &token, Vec::new())).await;
        assert_eq!(gone.status, 410, "an expired upload is Gone");
        let gone = patch(&gateway, &token, &abandoned, 10, &[2; 10]).await;
        assert_eq!((gone.status, gone.code()), (410, "upload_expired".to_owned()));
    });
}

#[test]
fn hostile_requests_get_their_status_and_leak_no_descriptor_or_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = TestFleet::start(0, &[]);
    let mut gateway = start_gateway(&fleet, dir.path(), &[]);
    let device = serial("TUS-0007");
    let pid = gateway.process().pid();
    let descriptors = || std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    runtime().block_on(async {
        let token = bearer_token(&gateway, &device).await;
        let path = create(&gateway, &token, 1_000, "").await;
        let before = descriptors();
        let with = |request: HttpRequest, name: &str, value: &str| request.with_header(name, value);
        let cases: Vec<(&str, HttpRequest, u16, &str)> = vec![
            (
                "no Tus-Resumable",
                tus("PATCH", &path, &token, b"x".to_vec())
                    .with_header("Upload-Offset", "0")
                    .without_header("Tus-Resumable"),
                412,
                "tus_version",
            ),
            (
                "an old version",
                with(tus("HEAD", &path, &token, Vec::new()), "Tus-Resumable", "0.2.2"),
                412,
                "tus_version",
            ),
            (
                "a negative offset",
                with(tus("PATCH", &path, &token, b"x".to_vec()), "Upload-Offset", "-1"),
                400,
                "bad_offset",
            ),
            (
                "a non-numeric offset",
                with(tus("PATCH", &path, &token, b"x".to_vec()), "Upload-Offset", "ten"),
                400,
                "bad_offset",
            ),
            (
                "an offset beyond the length",
                with(tus("PATCH", &path, &token, b"x".to_vec()), "Upload-Offset", "5000"),
                409,
                "offset_mismatch",
            ),
            (
                "a body past the length",
                with(tus("PATCH", &path, &token, vec![0; 1_001]), "Upload-Offset", "0"),
                413,
                "past_length",
            ),
            (
                "a wrong content type",
                with(tus("PATCH", &path, &token, b"x".to_vec()), "Upload-Offset", "0")
                    .with_header("Content-Type", "application/octet-stream"),
                415,
                "unsupported_media_type",
            ),
            (
                "a length above UPLOAD_MAX_BYTES",
                with(tus("POST", UPLOADS, &token, Vec::new()), "Upload-Length", "10000001"),
                413,
                "upload_too_large",
            ),
            (
                "a negative length",
                with(tus("POST", UPLOADS, &token, Vec::new()), "Upload-Length", "-10"),
                400,
                "bad_length",
            ),
            (
                "no length at all",
                tus("POST", UPLOADS, &token, Vec::new()),
                400,
                "bad_length",
            ),
            (
                "metadata that is not base64",
                with(tus("POST", UPLOADS, &token, Vec::new()), "Upload-Length", "10")
                    .with_header("Upload-Metadata", "filename ***"),
                400,
                "bad_metadata",
            ),
            (
                "metadata too large",
                with(tus("POST", UPLOADS, &token, Vec::new()), "Upload-Length", "10")
                    .with_header("Upload-Metadata", &format!("k {}", "QUFB".repeat(1_100))),
                400,
                "bad_metadata",
            ),
            (
                "an id that is no upload",
                tus("HEAD", "/v1/uploads/not-an-id", &token, Vec::new()),
                404,
                "not_found",
            ),
            (
                "an upload that does not exist",
                tus(
                    "HEAD",
                    "/v1/uploads/9b3c2a1e-8f6d-4c7b-a5e4-3d2c1b0a9f8e",
                    &token,
                    Vec::new(),
                ),
                404,
                "upload_not_found",
            ),
            (
                "no credentials",
                tus("HEAD", &path, &token, Vec::new()).without_header("Authorization"),
                401,
                "missing_authorization",
            ),
            (
                "a method uploads do not have",
                tus("PUT", &path, &token, b"x".to_vec()),
                405,
                "method_not_allowed",
            ),
        ];
        for (what, request, status, code) in cases {
            let answer = send(&gateway, &request).await;
            // A HEAD answer has no body: its status says it all.
            let code = if request.method == "HEAD" { "" } else { code };
            let answered = if request.method == "HEAD" {
                String::new()
            } else {
                answer.code()
            };
            assert_eq!(
                (answer.status, answered.as_str()),
                (status, code),
                "{what}: {}",
                String::from_utf8_lossy(&answer.body)
            );
            assert_eq!(answer.header("tus-resumable"), Some("1.0.0"), "{what}");
        }
        // A drip-fed body: 100 bytes, then nothing; ended after the idle
        // timeout (2 s) with 408, the durable offset unmoved (no full buffer).
        let drip = tus("PATCH", &path, &token, vec![9; 100]).with_header("Upload-Offset", "0");
        let mut slow = tokio::net::TcpStream::connect(gateway.addr()).await.unwrap();
        ingest::write_request_declaring(&mut slow, gateway.addr(), &drip, 1_000)
            .await
            .unwrap();
        let answer = ingest::read_answer(&mut slow).await.unwrap();
        assert_eq!((answer.status, answer.code()), (408, "upload_idle".to_owned()));
        // A client that never finishes its headers is closed by the
        // header timeout (the events' rule): nothing to leak.
        assert_eq!(offset(&gateway, &token, &path).await, 0);
        // Nothing stored was corrupted: the upload still completes.
        let data = content(1_000, 9);
        assert_eq!(patch(&gateway, &token, &path, 0, &data).await.status, 204);
        let uploads = recorded_uploads(&fleet).await;
        assert_eq!(uploads[0]["sha256"], sha256_hex(&data));
        // No descriptor and no buffer outlives its request.
        drover_testkit::wait::wait_until("descriptors back to where they were", Duration::from_secs(10), || {
            descriptors() <= before
        })
        .unwrap_or_else(|err| panic!("{err}: {} descriptors, {before} before", descriptors()));
        assert_eq!(gateway.metric("drover_http_upload_buffers", "").unwrap(), 0.0);
    });
}

#[test]
fn the_serial_quota_and_the_free_space_floor_hold_for_http_uploads_as_for_cwp() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = TestFleet::start(0, &[]);
    let gateway = start_gateway(&fleet, dir.path(), &[("UPLOAD_MAX_BYTES_PER_SERIAL", "10000")]);
    let device = serial("TUS-0008");
    runtime().block_on(async {
        let token = bearer_token(&gateway, &device).await;
        // 6,000 of the 10,000 bytes held by one unfinished upload...
        let first = create(&gateway, &token, 8_000, "").await;
        assert_eq!(patch(&gateway, &token, &first, 0, &[1; 6_000]).await.status, 204);
        // ...leave no room for a second of 6,000 (announced)...
        let second = send(
            &gateway,
            &tus("POST", UPLOADS, &token, Vec::new()).with_header("Upload-Length", "6000"),
        )
        .await;
        assert_eq!((second.status, second.code()), (413, "over_quota".to_owned()));
        // ...nor for more than 4,000 bytes of a deferred one.
        let deferred = send(
            &gateway,
            &tus("POST", UPLOADS, &token, Vec::new()).with_header("Upload-Defer-Length", "1"),
        )
        .await;
        let deferred = deferred.header("location").unwrap().to_owned();
        let over = patch(&gateway, &token, &deferred, 0, &[2; 4_001]).await;
        assert_eq!((over.status, over.code()), (413, "over_quota".to_owned()));
        // The control: within the quota it is accepted.
        assert_eq!(patch(&gateway, &token, &deferred, 0, &[2; 4_000]).await.status, 204);
    });
    // A floor above the disk's free space: creations get 507.
    let floor = start_gateway(&fleet, dir.path(), &[("UPLOAD_MIN_FREE_BYTES", "1000000000000000")]);
    runtime().block_on(async {
        let token = bearer_token(&floor, &device).await;
        let refused = send(
            &floor,
            &tus("POST", UPLOADS, &token, Vec::new()).with_header("Upload-Length", "10"),
        )
        .await;
        assert_eq!(
            (refused.status, refused.code()),
            (507, "insufficient_storage".to_owned())
        );
        assert_eq!(refused.header("retry-after"), Some("1"));
    });
}
