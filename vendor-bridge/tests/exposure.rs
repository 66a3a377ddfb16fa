//! Who can reach the bridge is decided by its configuration, checked by the
//! real binary at start (README, Security): without `BRIDGE_TOKEN` (or
//! `BRIDGE_TOKEN_FILE`) and without mutual TLS it may listen on a loopback
//! address only, and says so when it starts; an address others can reach
//! is a configuration error (exit status 2), reported with every other
//! problem. By default it listens on 127.0.0.1.
//!
//! `--sentry-test` makes the binary parse its whole configuration and then
//! stop for want of `SENTRY_DSN` (exit status 1, binding nothing): how these
//! tests see that a configuration is accepted. The control: each refused
//! configuration differs from an accepted one by the one variable at issue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// The bridge binary with exactly `env` (no `.env` file), its stderr.
fn command(args: &[&str], env: &[(&str, &str)], dir: &tempfile::TempDir) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vendor-bridge"));
    command
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(dir.path())
        .stdin(Stdio::null());
    command
}

/// Runs the binary to its exit: its status code and stderr.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = command(args, env, &dir).output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Whether the binary accepts the configuration `env`.
fn accepts(env: &[(&str, &str)]) -> Result<(), String> {
    match run_to_exit(&["--sentry-test"], env) {
        (Some(1), stderr) if stderr.contains("SENTRY_DSN is not set") => Ok(()),
        (code, stderr) => Err(format!("exit {code:?}: {stderr}")),
    }
}

#[test]
fn without_a_token_or_mutual_tls_only_a_loopback_address_is_accepted() {
    let (code, stderr) = run_to_exit(&[], &[("BRIDGE_LISTEN", "0.0.0.0:50051"), ("LOG_FORMAT", "yaml")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("BRIDGE_LISTEN=0.0.0.0:50051 is reachable from other hosts")
            && stderr.contains("neither BRIDGE_TOKEN (or BRIDGE_TOKEN_FILE) nor BRIDGE_TLS_CLIENT_CA is set"),
        "{stderr}"
    );
    assert!(
        stderr.contains("LOG_FORMAT=\"yaml\""),
        "every problem at once: {stderr}"
    );
    let (code, stderr) = run_to_exit(&[], &[("BRIDGE_LISTEN", "[::]:50051")]);
    assert_eq!(code, Some(2), "{stderr}");

    // The controls: loopback, or the same address with a token.
    accepts(&[("BRIDGE_LISTEN", "127.0.0.1:50051")]).unwrap();
    accepts(&[("BRIDGE_LISTEN", "[::1]:50051")]).unwrap();
    accepts(&[("BRIDGE_LISTEN", "0.0.0.0:50051"), ("BRIDGE_TOKEN", TOKEN)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    accepts(&[
        ("BRIDGE_LISTEN", "0.0.0.0:50051"),
        ("BRIDGE_TOKEN_FILE", token_file.to_str().unwrap()),
    ])
    .unwrap();
    // The default is loopback: a bare bridge starts.
    accepts(&[]).unwrap();
}

#[test]
fn a_bad_token_is_a_configuration_error() {
    for (env, problem) in [
        (
            vec![("BRIDGE_TOKEN", TOKEN), ("BRIDGE_TOKEN_FILE", "/nonexistent")],
            "set BRIDGE_TOKEN or BRIDGE_TOKEN_FILE, not both",
        ),
        (vec![("BRIDGE_TOKEN", "short")], "at least 16 characters"),
        (
            vec![("BRIDGE_TOKEN_FILE", "/nonexistent/token")],
            "BRIDGE_TOKEN_FILE=\"/nonexistent/token\"",
        ),
    ] {
        let (code, stderr) = run_to_exit(&[], &env);
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        assert!(stderr.contains(problem), "{env:?}: {stderr}");
        assert!(!stderr.contains(TOKEN), "the token is never printed: {stderr}");
    }
}

#[test]
fn byte_budgets_below_the_largest_message_are_a_configuration_error() {
    let (code, stderr) = run_to_exit(&[], &[("BRIDGE_MAX_STREAM_BYTES", "1048576")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("BRIDGE_MAX_STREAM_BYTES=1048576 is below 16777216"),
        "{stderr}"
    );
    let (code, stderr) = run_to_exit(&[], &[("BRIDGE_MAX_QUEUED_BYTES", "16777216")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("BRIDGE_MAX_QUEUED_BYTES=16777216 is below BRIDGE_MAX_STREAM_BYTES"),
        "{stderr}"
    );
    accepts(&[
        ("BRIDGE_MAX_STREAM_BYTES", "16777216"),
        ("BRIDGE_MAX_QUEUED_BYTES", "16777216"),
    ])
    .unwrap();
}

/// Kills the child when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_bridge_without_a_token_says_at_start_that_it_listens_on_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = command(
        &[],
        &[
            ("BRIDGE_LISTEN", "127.0.0.1:0"),
            // Nobody listens there: the bridge starts all the same.
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("LOG_FORMAT", "json"),
        ],
        &dir,
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _running = Running(child);
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    loop {
        let line = received
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no loopback notice within 10 s; stderr:\n{}", seen.join("\n")));
        if line.contains("no BRIDGE_TOKEN and no mutual TLS: listening on loopback only") {
            return;
        }
        seen.push(line);
    }
}
