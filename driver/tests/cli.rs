//! The `driver` binary's command line: `--help` documents every variable,
//! a bad configuration is refused with every problem listed at once, and
//! `--health` tells a running driver's health.
#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn driver() -> Command {
    Command::new(env!("CARGO_BIN_EXE_driver"))
}

#[test]
fn help_lists_every_environment_variable() {
    let output = driver().arg("--help").output().expect("driver runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for variable in driver::config::VARIABLES {
        assert!(
            help.contains(variable.name),
            "--help does not mention {}",
            variable.name
        );
    }
}

#[test]
fn every_bad_variable_is_reported_together() {
    let output = driver()
        .env_clear()
        .env("CWP_MASTER_KEY", "not-hex")
        .env("DRIVER_LISTEN", "nowhere")
        .env("DRIVER_HEARTBEAT_S", "0")
        .env("DRIVER_TRANSFER_NICE", "20")
        .output()
        .expect("driver runs");
    assert_eq!(output.status.code(), Some(2));
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(errors.contains("a nice value of 0 to 19"), "{errors}");
    for variable in [
        "CWP_MASTER_KEY",
        "DRIVER_LISTEN",
        "DRIVER_HEARTBEAT_S",
        "DRIVER_TRANSFER_NICE",
    ] {
        assert!(errors.contains(variable), "{variable} not reported in: {errors}");
    }
}

#[test]
fn there_is_no_unauthenticated_mode() {
    let output = driver().env_clear().output().expect("driver runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("CWP_MASTER_KEY or CWP_KEYS_FILE"));
}

/// An event as large as DRIVER_MAX_PAYLOAD must fit, with a full batch
/// before it, in one message to the vendor-bridge: the largest payload that
/// does is accepted, one byte more is refused before anything starts.
#[test]
fn a_payload_limit_whose_events_could_not_reach_the_bridge_is_refused() {
    // DRIVER_HEARTBEAT_S=0 is always refused, so that the driver stops
    // after checking its configuration: only the payload's verdict varies.
    let configured = |max_payload: usize| {
        driver()
            .env_clear()
            .env("CWP_MASTER_KEY", "00".repeat(32))
            .env("DRIVER_HEARTBEAT_S", "0")
            .env("DRIVER_MAX_PAYLOAD", max_payload.to_string())
            .output()
            .expect("driver runs")
    };
    let largest = drover_edge::batch_limits::MAX_EVENT_BODY_BYTES;
    let refused = configured(largest + 1);
    assert_eq!(refused.status.code(), Some(2));
    let errors = String::from_utf8_lossy(&refused.stderr);
    assert!(
        errors.contains(&format!("DRIVER_MAX_PAYLOAD must be at most {largest}")),
        "{errors}"
    );
    let accepted = configured(largest);
    assert_eq!(accepted.status.code(), Some(2));
    assert!(
        !String::from_utf8_lossy(&accepted.stderr).contains("DRIVER_MAX_PAYLOAD"),
        "the largest payload that fits is accepted: {}",
        String::from_utf8_lossy(&accepted.stderr)
    );
}

#[test]
fn the_help_names_the_largest_payload_limit() {
    let output = driver().arg("--help").output().expect("driver runs");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains(&drover_edge::batch_limits::MAX_EVENT_BODY_BYTES.to_string()),
        "{help}"
    );
}

// --- `driver --health`: the container's health check ---------------------

/// A port nothing listens on once this returns.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("a bound listener has an address").port()
}

/// `driver --health` with `DRIVER_ADMIN_LISTEN=admin`: its exit code and
/// what it printed.
fn health(admin: &str) -> (Option<i32>, String) {
    let output = driver()
        .arg("--health")
        .env_clear()
        .env("DRIVER_ADMIN_LISTEN", admin)
        .output()
        .expect("driver runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

/// Asks `driver --health` until its exit code is `wanted`; fails after
/// [`DEADLINE`].
fn wait_for_health(admin: &str, wanted: i32) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (code, text) = health(admin);
        if code == Some(wanted) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "driver --health did not exit {wanted} within {DEADLINE:?}; last: {code:?} {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const DEADLINE: Duration = Duration::from_secs(20);

/// A driver process, killed when dropped.
struct RunningDriver(Child);

impl Drop for RunningDriver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn health_is_ok_while_the_driver_serves_and_fails_once_it_is_gone() {
    let uploads = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    // Neither Redis nor the bridge is needed for /healthz: the driver
    // starts without them and retries.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let mut running = RunningDriver(
        driver()
            .env_clear()
            .env("CWP_MASTER_KEY", "00".repeat(32))
            .env("DRIVER_ID", "health-test")
            .env("DRIVER_LISTEN", format!("127.0.0.1:{}", free_port()))
            // A wildcard address: --health asks on loopback.
            .env("DRIVER_ADMIN_LISTEN", admin.replace("127.0.0.1", "0.0.0.0"))
            .env("VENDOR_BRIDGE_URL", format!("http://{nowhere}"))
            .env("REDIS_URL", format!("redis://{nowhere}"))
            .env("UPLOAD_DIR", uploads.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("driver starts"),
    );
    let healthy = wait_for_health(&admin.replace("127.0.0.1", "0.0.0.0"), 0);
    assert!(healthy.contains("200"), "{healthy}");

    running.0.kill().unwrap();
    running.0.wait().unwrap();
    let (code, text) = health(&admin);
    assert_eq!(code, Some(1), "nothing listens any more: {text}");
    assert!(text.contains(&admin), "the message names the address: {text}");
}

#[test]
fn health_fails_when_healthz_does_not_answer_200() {
    // What a draining driver answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (mut connection, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buffer = [0; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            let read = connection.read(&mut buffer).unwrap();
            assert!(read > 0, "the request ends with an empty line");
            request.extend_from_slice(&buffer[..read]);
        }
        connection
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\ndraining\n")
            .unwrap();
        String::from_utf8(request).unwrap()
    });
    let (code, text) = health(&admin);
    let request = server.join().unwrap();
    assert!(request.starts_with("GET /healthz HTTP/1."), "{request}");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("503"), "{text}");
}

#[test]
fn health_refuses_an_invalid_admin_address() {
    let (code, text) = health("nowhere");
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("DRIVER_ADMIN_LISTEN"), "{text}");
}
