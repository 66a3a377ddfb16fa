//! The Python client of docs/HTTP.md is proven: its code block, taken from
//! the document as it stands, is run by `python3`.
//!
//! 1. Its `sign` gives the worked example's headers.
//! 2. Its `post_events` sends a batch to a local capture server (Python's
//!    `http.server`, in the same process); the request it captured verifies
//!    with the Rust implementation, its body matches the signed digest, and
//!    it parses into exactly the events posted.
//!
//! Without `python3` the test says so and passes (CI installs it).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cwp::{DeviceKey, MasterKey};
use drover_http_ingest::ndjson::{self, BatchLimits};
use drover_http_ingest::signature::{BodyDigest, Credentials};
use serde_json::Value;

const MARKER: &str = "<!-- python-client: run by http-ingest/tests/python_client.rs -->";

/// The code block that follows the marker in docs/HTTP.md.
fn documented_client() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/HTTP.md"))
        .expect("docs/HTTP.md is beside the crate");
    let after = &doc[doc.find(MARKER).expect("docs/HTTP.md marks its Python client") + MARKER.len()..];
    let code = after
        .trim_start()
        .strip_prefix("```python\n")
        .expect("the marker is followed by a python code block");
    code[..code.find("\n```").expect("the code block ends")].to_owned()
}

/// Runs `harness` with the documented client's functions in scope; one JSON
/// value per line of its output.
fn run_python(harness: &str) -> Option<Vec<Value>> {
    let client = documented_client();
    let program = format!(
        "import sys\nclient = {{'__name__': 'client'}}\nexec(compile(sys.stdin.read(), 'client.py', 'exec'), client)\n{harness}"
    );
    let mut command = Command::new("python3");
    command
        .arg("-c")
        .arg(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // The capture server is on loopback: no proxy may stand in between.
    for proxy in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        command.env_remove(proxy);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("python3 is not installed: skipped (CI installs it)");
            return None;
        }
        Err(error) => panic!("python3 did not start: {error}"),
    };
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(client.as_bytes())
        .expect("python3 reads the client");
    let output = child.wait_with_output().expect("python3 runs");
    assert!(output.status.success(), "python3 failed: {}", output.status);
    let stdout = String::from_utf8(output.stdout).expect("JSON output");
    Some(
        stdout
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON value a line"))
            .collect(),
    )
}

#[test]
fn the_documented_client_signs_the_worked_example() {
    let harness = r#"
import json
key = client["device_key"](bytes(range(32)).hex(), "CTRL-0042")
body = (b'{"event_id":1,"time_ms":1767225600000,"kind":1,"body":"{\\"t\\":21.5}"}\n'
        b'{"event_id":2,"time_ms":1767225601000,"kind":2,"body_b64":"AAEC"}\n')
nonce = "00112233445566778899aabbccddeeff"
for path, payload in [("/v1/events", body), ("/v1/token", b"")]:
    authorization, digest = client["sign"](key, "CTRL-0042", "POST", path, payload, 1767225600000, nonce)
    print(json.dumps({"key": key.hex(), "authorization": authorization, "content_sha256": digest}))
"#;
    let Some(lines) = run_python(harness) else { return };
    let expected = [
        (
            "CWP1-HMAC-SHA256 serial=CTRL-0042,ts=1767225600000,nonce=00112233445566778899aabbccddeeff,sig=bbd47bd0cd5ad4088a107b60883e9c5b7bf0d7ec23eec620ed486f9a23cbf097",
            "fd541d580d937e3df85fa37a074810800efbda13d5e3df532a0e22d7744d8553",
        ),
        (
            "CWP1-HMAC-SHA256 serial=CTRL-0042,ts=1767225600000,nonce=00112233445566778899aabbccddeeff,sig=d3b2e0813833be107cd37fd81b73f81f00eaf5b9456fd188ffbcb712a1fa5d98",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
    ];
    assert_eq!(lines.len(), expected.len());
    for (line, (authorization, digest)) in lines.iter().zip(expected) {
        assert_eq!(
            line["key"],
            "c550eed0f0cc5f4f2e050f8b5e78acf9082e0aafb94194c0402d2aab5def18d6"
        );
        assert_eq!(line["authorization"], authorization);
        assert_eq!(line["content_sha256"], digest);
    }
}

#[test]
fn a_batch_the_documented_client_posts_verifies_and_parses() {
    let harness = r#"
import json, threading
from http.server import BaseHTTPRequestHandler, HTTPServer

captured = {}

class Capture(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        captured.update(method=self.command, path=self.path, body=body.hex(),
                        authorization=self.headers["Authorization"],
                        content_sha256=self.headers["X-Content-SHA256"],
                        content_type=self.headers["Content-Type"])
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", 0), Capture)
threading.Thread(target=server.serve_forever, daemon=True).start()
key = client["device_key"](bytes(range(32)).hex(), "CTRL-0042")
events = [
    {"event_id": 41, "time_ms": 1767225600000, "kind": 1, "body": "t=21.5 at café ☃ 😀"},
    {"event_id": 42, "time_ms": 1767225601000, "kind": 2, "body_b64": "AAEC/w=="},
    {"event_id": 43, "time_ms": 0, "kind": 65535, "body_b64": "AAAAAAAAAAAAAAAAAAAAAAFvaw=="},
]
status, text = client["post_events"](f"http://127.0.0.1:{server.server_port}", key, "CTRL-0042", events)
server.shutdown()
captured.update(status=status, answer=text)
print(json.dumps(captured))
"#;
    let Some(lines) = run_python(harness) else { return };
    let request = &lines[0];
    assert_eq!(
        (request["status"].as_u64(), request["answer"].as_str()),
        (Some(200), Some("{}"))
    );
    assert_eq!(request["method"], "POST");
    assert_eq!(request["path"], "/v1/events");
    assert_eq!(request["content_type"], "application/x-ndjson");

    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let credentials =
        Credentials::parse(request["authorization"].as_str().expect("an Authorization header")).expect("well formed");
    let master = MasterKey::from_bytes(std::array::from_fn(|i| i as u8));
    let key = DeviceKey::derive(&master, credentials.serial());
    let verified = credentials
        .verify(&key, "POST", "/v1/events", request["content_sha256"].as_str(), now_ms)
        .expect("the client's signature verifies");
    assert_eq!(verified.serial.as_str(), "CTRL-0042");

    let body = hex::decode(request["body"].as_str().expect("the body")).expect("hex");
    let mut digest = BodyDigest::new();
    digest.update(&body);
    assert_eq!(digest.verify(&verified.body_sha256), Ok(()));

    let batch = ndjson::parse(Bytes::from(body), &BatchLimits::default());
    assert_eq!(batch.errors, vec![]);
    let events: Vec<_> = batch
        .records
        .iter()
        .map(|r| (r.event_id, r.time_ms, r.kind, r.body.to_vec()))
        .collect();
    let mut result = vec![0u8; 16];
    result.extend_from_slice(b"\x01ok");
    assert_eq!(
        events,
        vec![
            (41, 1_767_225_600_000, 1, "t=21.5 at café ☃ 😀".as_bytes().to_vec()),
            (42, 1_767_225_601_000, 2, vec![0x00, 0x01, 0x02, 0xff]),
            (43, 0, 65535, result),
        ]
    );
}
