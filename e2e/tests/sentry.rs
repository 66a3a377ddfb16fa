//! Sentry, end to end: the driver's and the vendor-bridge's errors and
//! panics reach a Sentry endpoint as envelopes carrying the process's tags
//! (service, driver, port) and the breadcrumbs logged before them. A local
//! HTTP server stands in for Sentry and the tests read the envelopes it
//! receives, item by item.
//!
//! Not covered: `tags.serial` (the device) on an error inside a device's
//! connection. The only such `error!` is an `INTERNAL` ending of an
//! established session, and no input from outside can provoke one today.

#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use controller_sim::client::Connection;
use drover_testkit::device::{MASTER_KEY_HEX, device_key, serial};
use drover_testkit::fleet::{TestFleet, runtime};
use drover_testkit::net::free_port;
use drover_testkit::wait::wait_until;
use nix::sys::signal::Signal;
use serde_json::Value;

/// How long an event may take to arrive.
const WAIT: Duration = Duration::from_secs(20);

/// One HTTP request as the fake Sentry received it.
#[derive(Debug)]
struct Request {
    /// `POST /api/1/envelope/`.
    request_line: String,
    /// The `X-Sentry-Auth` header.
    auth: String,
    /// The `Content-Encoding` header, if any.
    encoding: Option<String>,
    /// The body, de-chunked.
    body: Vec<u8>,
}

/// A Sentry envelope: a header line, then items, each an item header line
/// and a payload (`length` bytes, or up to the next newline).
#[derive(Debug)]
struct Envelope {
    header: Value,
    items: Vec<(Value, Vec<u8>)>,
}

impl Envelope {
    fn parse(body: &[u8]) -> Self {
        fn line(bytes: &[u8]) -> (&[u8], &[u8]) {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(end) => (&bytes[..end], &bytes[end + 1..]),
                None => (bytes, &[]),
            }
        }
        let (header, mut rest) = line(body);
        let header = serde_json::from_slice(header).unwrap();
        let mut items = Vec::new();
        while !rest.is_empty() {
            let (item_header, after) = line(rest);
            if item_header.is_empty() {
                rest = after;
                continue;
            }
            let item_header: Value = serde_json::from_slice(item_header).unwrap();
            let (payload, after) = match item_header["length"].as_u64() {
                Some(length) => {
                    let (payload, after) = after.split_at(usize::try_from(length).unwrap());
                    (payload, after.strip_prefix(b"\n").unwrap_or(after))
                }
                None => line(after),
            };
            items.push((item_header, payload.to_vec()));
            rest = after;
        }
        Self { header, items }
    }

    /// The payloads of the `event` items.
    fn events(&self) -> impl Iterator<Item = Value> + '_ {
        self.items
            .iter()
            .filter(|(header, _)| header["type"] == "event")
            .map(|(_, payload)| serde_json::from_slice(payload).unwrap())
    }
}

/// A local HTTP/1.1 server playing Sentry's ingestion endpoint: it answers
/// every request `200 {}` and hands each request to the test.
struct FakeSentry {
    addr: SocketAddr,
    requests: mpsc::Receiver<Request>,
    /// Events received and not yet claimed by [`FakeSentry::event`].
    events: RefCell<Vec<Value>>,
}

impl FakeSentry {
    fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let tx = tx.clone();
                std::thread::spawn(move || serve(stream, &tx));
            }
        });
        Self {
            addr,
            requests,
            events: RefCell::default(),
        }
    }

    /// The DSN pointing here: key `public`, project 1.
    fn dsn(&self) -> String {
        format!("http://public@{}/1", self.addr)
    }

    /// The first event, received or arriving, that matches `wanted`.
    fn event(&self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut events = self.events.borrow_mut();
            if let Some(i) = events.iter().position(&wanted) {
                return events.remove(i);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let request = self
                .requests
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no Sentry event {what} within {WAIT:?}; received: {events:#?}"));
            assert_eq!(request.request_line, "POST /api/1/envelope/ HTTP/1.1");
            assert!(request.auth.contains("sentry_key=public"), "{request:?}");
            // sentry 0.49's reqwest transport sends envelopes uncompressed.
            assert_eq!(request.encoding, None, "an encoding this test does not decode");
            let envelope = Envelope::parse(&request.body);
            for event in envelope.events() {
                assert_eq!(
                    envelope.header["event_id"].as_str().map(|id| id.replace('-', "")),
                    event["event_id"].as_str().map(str::to_owned),
                    "the envelope header names its event"
                );
                events.push(event);
            }
        }
    }
}

/// An event's level; Sentry's protocol leaves out the default, `error`.
fn level(event: &Value) -> &str {
    event["level"].as_str().unwrap_or("error")
}

/// Serves one keep-alive connection: requests until the client closes.
fn serve(stream: TcpStream, requests: &mpsc::Sender<Request>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let (mut auth, mut encoding, mut length, mut chunked) = (String::new(), None, 0usize, false);
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap();
            let value = value.trim().to_owned();
            match name.to_ascii_lowercase().as_str() {
                "x-sentry-auth" => auth = value,
                "content-encoding" => encoding = Some(value),
                "content-length" => length = value.parse().unwrap(),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).unwrap();
                let size = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap();
                let mut chunk = vec![0; size + 2]; // the chunk and its CRLF
                reader.read_exact(&mut chunk).unwrap();
                if size == 0 {
                    break; // no trailers are sent
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            body.resize(length, 0);
            reader.read_exact(&mut body).unwrap();
        }
        writer
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap();
        let request = Request {
            request_line: request_line.trim_end().to_owned(),
            auth,
            encoding,
            body,
        };
        if requests.send(request).is_err() {
            return;
        }
    }
}

/// Runs `binary --sentry-test` in an empty directory (no `.env`) with
/// exactly `env`.
fn sentry_test(binary: &str, env: &[(&str, String)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(drover_testkit::binaries::binary(binary).unwrap())
        .arg("--sentry-test")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir.path())
        .output()
        .unwrap()
}

fn breadcrumbs(event: &Value) -> Vec<&str> {
    event["breadcrumbs"]["values"]
        .as_array()
        .map(|crumbs| crumbs.iter().filter_map(|c| c["message"].as_str()).collect())
        .unwrap_or_default()
}

fn is_panic(event: &Value) -> bool {
    event["exception"]["values"][0]["mechanism"]["type"] == "panic"
}

/// The error and the panic `--sentry-test` sends, checked for what every
/// event of the process carries; `tags` are the expected process tags.
fn assert_self_test_events(sentry: &FakeSentry, output: &Output, release: &str, tags: &[(&str, &str)]) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "--sentry-test failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let error = sentry.event("for the test error", |event| {
        level(event) == "error" && event["exception"].is_null()
    });
    let panic = sentry.event("for the test panic", is_panic);
    assert_eq!(
        panic["exception"]["values"][0]["value"],
        "Sentry self-test: a test panic; nothing is wrong"
    );
    assert_eq!(
        error["message"],
        "Sentry self-test: a test error event; nothing is wrong"
    );
    for event in [&error, &panic] {
        let id = event["event_id"].as_str().unwrap();
        assert!(stdout.contains(id), "event {id} is not among those printed: {stdout}");
        assert_eq!(event["release"], release);
        for (tag, value) in tags {
            assert_eq!(event["tags"][tag], *value, "tag {tag} of {event}");
        }
        assert!(
            breadcrumbs(event)
                .iter()
                .any(|crumb| crumb.starts_with("Sentry self-test started")),
            "no breadcrumb in {event}"
        );
    }
}

#[test]
fn driver_sentry_test_sends_a_tagged_error_and_panic_with_breadcrumbs() {
    let sentry = FakeSentry::start();
    let port = free_port().unwrap();
    let output = sentry_test(
        "driver",
        &[
            ("SENTRY_DSN", sentry.dsn()),
            ("CWP_MASTER_KEY", MASTER_KEY_HEX.to_owned()),
            ("DRIVER_ID", "driver-7".to_owned()),
            ("DRIVER_LISTEN", format!("127.0.0.1:{port}")),
        ],
    );
    let release = format!("driver@{}", env!("CARGO_PKG_VERSION"));
    let port = port.to_string();
    assert_self_test_events(
        &sentry,
        &output,
        &release,
        &[("service", "driver"), ("driver", "driver-7"), ("port", &port)],
    );
}

#[test]
fn vendor_bridge_sentry_test_sends_a_tagged_error_and_panic_with_breadcrumbs() {
    let sentry = FakeSentry::start();
    let port = free_port().unwrap();
    let output = sentry_test(
        "vendor-bridge",
        &[
            ("SENTRY_DSN", sentry.dsn()),
            ("BRIDGE_LISTEN", format!("127.0.0.1:{port}")),
        ],
    );
    let release = format!("vendor-bridge@{}", env!("CARGO_PKG_VERSION"));
    let port = port.to_string();
    assert_self_test_events(
        &sentry,
        &output,
        &release,
        &[("service", "vendor-bridge"), ("port", &port)],
    );
}

#[test]
fn http_gateway_sentry_test_sends_a_tagged_error_and_panic_with_breadcrumbs() {
    let sentry = FakeSentry::start();
    let port = free_port().unwrap();
    let output = sentry_test(
        "http-gateway",
        &[
            ("SENTRY_DSN", sentry.dsn()),
            ("CWP_MASTER_KEY", MASTER_KEY_HEX.to_owned()),
            ("HTTP_GATEWAY_ID", "gateway-3".to_owned()),
            ("HTTP_LISTEN", format!("127.0.0.1:{port}")),
        ],
    );
    let release = format!("http-gateway@{}", env!("CARGO_PKG_VERSION"));
    let port = port.to_string();
    assert_self_test_events(
        &sentry,
        &output,
        &release,
        &[("service", "http-gateway"), ("gateway", "gateway-3"), ("port", &port)],
    );
}

#[test]
fn sentry_test_without_a_dsn_fails_clearly_and_is_documented() {
    for (binary, env) in [
        ("driver", vec![("CWP_MASTER_KEY", MASTER_KEY_HEX.to_owned())]),
        ("vendor-bridge", vec![]),
    ] {
        let output = sentry_test(binary, &env);
        assert_eq!(output.status.code(), Some(1), "{binary}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("SENTRY_DSN is not set"), "{binary}: {stderr}");

        let help = Command::new(drover_testkit::binaries::binary(binary).unwrap())
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("--sentry-test"),
            "{binary} --help"
        );
    }
}

/// Whether the process has a handler installed for `signal`
/// (`SigCgt` in `/proc/{pid}/status`).
fn catches(pid: u32, signal: Signal) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal as i32 - 1)) != 0)
}

#[test]
fn a_failed_key_reload_reaches_sentry_with_the_drivers_tags_and_breadcrumbs() {
    let sentry = FakeSentry::start();
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys");
    std::fs::write(&keys_file, format!("CTRL-0001 {MASTER_KEY_HEX}\n")).unwrap();
    let dsn = sentry.dsn();
    let mut fleet = TestFleet::start(
        1,
        &[
            ("SENTRY_DSN", dsn.as_str()),
            ("CWP_KEYS_FILE", keys_file.to_str().unwrap()),
        ],
    );
    let driver = &mut fleet.drivers[0];
    let pid = driver.process().pid();
    wait_until("the driver to handle SIGHUP", WAIT, || catches(pid, Signal::SIGHUP)).unwrap();

    // Devices with wrong keys are refused, on whichever runtime threads
    // serve them: breadcrumbs for the error that follows.
    let addr = driver.addr();
    runtime().block_on(async {
        for i in 0..4 {
            let serial = serial(&format!("CTRL-01{i:02}"));
            let mut connection = Connection::connect(addr).await.unwrap();
            let wrong_key = device_key(&drover_testkit::device::serial("CTRL-9999"));
            assert!(connection.handshake(serial, &wrong_key, "fw").await.is_err());
        }
    });

    // An operator's typo: the driver keeps the old keys and tells Sentry.
    std::fs::write(&keys_file, "CTRL-0001 not-a-key\n").unwrap();
    driver.process().signal(Signal::SIGHUP).unwrap();

    let event = sentry.event("for the failed reload", |event| {
        event["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("CWP_KEYS_FILE not reloaded"))
    });
    assert_eq!(level(&event), "error");
    assert_eq!(event["release"], format!("driver@{}", env!("CARGO_PKG_VERSION")));
    assert_eq!(event["tags"]["service"], "driver");
    assert_eq!(event["tags"]["driver"], driver.driver_id());
    assert_eq!(event["tags"]["port"], driver.addr().port().to_string());
    // "driver ready" was logged on the main thread, each refusal on some
    // runtime thread, the reload failed on another: an error carries the
    // breadcrumbs of the whole process, in order.
    let crumbs = breadcrumbs(&event);
    let ready = crumbs.iter().position(|&c| c == "driver ready");
    let refused_after_ready = ready.map(|ready| crumbs[ready..].iter().filter(|&&c| c == "handshake refused").count());
    assert_eq!(refused_after_ready, Some(4), "breadcrumbs: {crumbs:?}");
    assert!(driver.process().is_running(), "a bad keys file is not fatal");
}
