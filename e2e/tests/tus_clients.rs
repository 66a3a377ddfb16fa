//! tus uploads with real clients (docs/HTTP.md, "Uploads"): the stock
//! Python client tuspy through HAProxy, its gateway killed mid-upload, and
//! the README's `curl` examples, run as written.
//!
//! tuspy lives in the virtualenv of `bench/baselines/INSTALL-tus.md`
//! (`.ci/run` makes it); `DROVER_TUS_PYTHON` names another interpreter.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use drover_testkit::device::serial;
use drover_testkit::fleet::runtime;
use drover_testkit::haproxy_fleet::{env, fleet_spec};
use drover_testkit::ingest::{self, HttpRequest};
use drover_testkit::local::{FleetSpec, LocalFleet};
use drover_testkit::net::free_port;
use drover_testkit::wait::wait_until;
use sha2::Digest as _;

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The Python with tuspy.
fn tus_python() -> String {
    std::env::var("DROVER_TUS_PYTHON").unwrap_or_else(|_| "/opt/drover-tus-venv/bin/python".to_owned())
}

/// Two gateways and one driver behind HAProxy, sharing `UPLOAD_DIR`;
/// bearer tokens over plain HTTP (loopback).
fn fleet(state: &Path, extra: &[(&str, &str)]) -> (LocalFleet, u16) {
    let mut driver_env = env(&[
        ("HTTP_BEARER_REQUIRES_TLS", "false"),
        ("UPLOAD_MIN_FREE_BYTES", "0"),
        ("UPLOAD_MAX_BYTES", "2147483648"),
    ]);
    driver_env.extend(env(extra));
    let http_port = free_port().unwrap();
    let fleet = LocalFleet::start(FleetSpec {
        gateways: 2,
        http_port,
        driver_env,
        ..fleet_spec(1, state)
    })
    .unwrap();
    (fleet, http_port)
}

/// A bearer token for `device`, asked through HAProxy.
fn bearer_token(http_port: u16, device: &cwp::Serial) -> String {
    let frontend = drover_testkit::net::loopback(http_port);
    let answer = runtime()
        .block_on(ingest::send(
            frontend,
            &HttpRequest::signed_events(device, "/v1/token", Vec::new()).without_header("Content-Type"),
        ))
        .unwrap();
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    answer.json()["token"].as_str().unwrap().to_owned()
}

/// The `cwp:uploads` entries' (upload_id, sha256, path, transport).
fn recorded(fleet: &LocalFleet) -> Vec<(String, String, String, String)> {
    let client = redis::Client::open(fleet.redis_url.as_str()).unwrap();
    let mut redis = client.get_connection().unwrap();
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("cwp:uploads")
        .arg("-")
        .arg("+")
        .query(&mut redis)
        .unwrap();
    entries
        .into_iter()
        .map(|(_, fields)| {
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            (field("upload_id"), field("sha256"), field("path"), field("transport"))
        })
        .collect()
}

/// `len` bytes of a deterministic, incompressible-looking stream, written
/// to `path`; returns their SHA-256, hex.
fn write_content(path: &Path, len: u64) -> String {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hasher = sha2::Sha256::new();
    let mut block = [0u8; 1 << 16];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut left = len;
    while left > 0 {
        for byte in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            byte.copy_from_slice(&state.to_le_bytes()[..byte.len()]);
        }
        let n = usize::try_from(left.min(block.len() as u64)).unwrap();
        hasher.update(&block[..n]);
        file.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    file.flush().unwrap();
    hex::encode(hasher.finalize())
}

/// The bytes under `partial/`: how far an upload has come.
fn partial_bytes(upload_dir: &Path) -> u64 {
    let mut total = 0;
    for serial in std::fs::read_dir(upload_dir.join("partial"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for upload in std::fs::read_dir(serial.path()).into_iter().flatten().flatten() {
            total += std::fs::metadata(upload.path().join("data")).map_or(0, |meta| meta.len());
        }
    }
    total
}

/// Whether tuspy is installed (`bench/baselines/install-tus.sh`).
fn tuspy_installed() -> bool {
    Command::new(tus_python())
        .args(["-c", "import tusclient"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[test]
fn tuspy_uploads_a_gigabyte_through_haproxy_and_resumes_on_the_other_gateway_when_its_gateway_dies() {
    if !tuspy_installed() {
        eprintln!(
            "tuspy is not installed in {}: skipped (CI installs it: bench/baselines/install-tus.sh)",
            tus_python()
        );
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let (mut fleet, http_port) = fleet(state.path(), &[]);
    let device = serial("TUS-PY-0001");
    let token = bearer_token(http_port, &device);
    let file = state.path().join("recording.bin");
    let sha256 = write_content(&file, 1 << 30);
    let endpoint = format!("http://127.0.0.1:{http_port}/v1/uploads/");
    let tuspy = Command::new(tus_python())
        .arg(repo().join("bench/baselines/tuspy_upload.py"))
        .args([endpoint.as_str(), file.to_str().unwrap(), "16M", "--checksum"])
        .args(["--retries", "20", "--retry-delay", "1"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg("--state")
        .arg(state.path().join("tuspy-state.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("{} (see bench/baselines/INSTALL-tus.md): {err}", tus_python()));

    // A third of the way in, the gateway writing it dies.
    let upload_dir = state.path().join("uploads");
    wait_until("a third of the file to be durable", Duration::from_secs(300), || {
        partial_bytes(&upload_dir) >= 350 << 20
    })
    .unwrap();
    // The gateway with a PATCH in progress (tuspy sends one at a time; HAProxy
    // spreads them over both gateways, a connection each).
    let mut writing = None;
    wait_until("a PATCH in progress", Duration::from_secs(30), || {
        writing = fleet
            .gateways
            .iter()
            .position(|gateway| gateway.metric("drover_http_upload_buffers", "").unwrap_or(0.0) > 0.0);
        writing.is_some()
    })
    .unwrap();
    let writing = writing.unwrap();
    let killed_wrote = fleet.gateways[writing]
        .metric("drover_http_upload_bytes_total", "")
        .unwrap();
    fleet.gateways[writing].process().kill();

    let output = tuspy.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tuspy: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Resumed, not restarted: both gateways together wrote the file once,
    // give or take the PATCH the kill cut off (a restart would write it
    // again from 0: hundreds of MiB more).
    let survivor = &fleet.gateways[1 - writing];
    assert_eq!(survivor.metric("drover_http_uploads_completed_total", "").unwrap(), 1.0);
    let written = killed_wrote + survivor.metric("drover_http_upload_bytes_total", "").unwrap();
    assert!(
        written <= ((1u64 << 30) + (32 << 20)) as f64,
        "the gateways wrote {written} bytes for a 1 GiB file: the upload resumed, it did not start again"
    );
    let uploads = recorded(&fleet);
    assert_eq!(uploads.len(), 1, "recorded once: {uploads:?}");
    let (upload_id, recorded_sha256, path, transport) = &uploads[0];
    assert_eq!(recorded_sha256, &sha256);
    assert_eq!(transport, "http");
    assert!(stdout.contains(upload_id.as_str()), "{stdout}");
    let mut stored = std::fs::File::open(upload_dir.join(path)).unwrap();
    let mut hasher = sha2::Sha256::new();
    let mut block = vec![0; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut stored, &mut block).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&block[..n]);
    }
    assert_eq!(
        hex::encode(hasher.finalize()),
        sha256,
        "the completed file is the file sent"
    );
}

/// The README's `curl` examples, between their markers, as a shell script.
fn readme_example(name: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let begin = format!("<!-- example: {name} -->");
    let start = readme.find(&begin).unwrap_or_else(|| panic!("README has no {begin}"));
    let block = &readme[start..];
    let code = block.find("```sh\n").unwrap() + "```sh\n".len();
    let end = block[code..].find("```").unwrap();
    block[code..code + end].to_owned()
}

#[test]
fn the_readme_curl_examples_upload_in_one_request_and_resume_with_head_and_patch() {
    let state = tempfile::tempdir().unwrap();
    let (fleet, http_port) = fleet(state.path(), &[]);
    let device = serial("TUS-CURL-0001");
    let token = bearer_token(http_port, &device);
    let work = state.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let report = write_content(&work.join("report.bin"), 300_000);
    let big = write_content(&work.join("big.bin"), 5 << 20);
    for example in ["tus-one-shot", "tus-resume"] {
        let script = readme_example(example);
        let output = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(&work)
            .env("DROVER_HTTP", format!("http://127.0.0.1:{http_port}"))
            .env("TOKEN", &token)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{example}:\n{script}\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let uploads = recorded(&fleet);
    let digests: Vec<&str> = uploads.iter().map(|(_, sha, _, _)| sha.as_str()).collect();
    assert_eq!(digests, [report.as_str(), big.as_str()]);
}
