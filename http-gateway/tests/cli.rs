//! The `http-gateway` binary's command line: `--help` documents every
//! variable, a bad configuration is refused with every problem listed at
//! once, there is no mode without device keys, and `--health` says a
//! gateway that is not there is unhealthy. (Building this test also builds
//! the binary that the end-to-end tests run.)
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_http-gateway"))
}

#[test]
fn help_lists_every_environment_variable() {
    let output = gateway().arg("--help").output().expect("http-gateway runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for variable in http_gateway::config::VARIABLES {
        assert!(
            help.contains(variable.name),
            "--help does not mention {}",
            variable.name
        );
    }
}

#[test]
fn every_bad_variable_is_reported_together() {
    let output = gateway()
        .env_clear()
        .env("CWP_MASTER_KEY", "not-hex")
        .env("HTTP_LISTEN", "nowhere")
        .env("HTTP_MAX_BODY_BYTES", "lots")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("http-gateway runs");
    assert_eq!(output.status.code(), Some(2));
    let errors = String::from_utf8_lossy(&output.stderr);
    for variable in ["CWP_MASTER_KEY", "HTTP_LISTEN", "HTTP_MAX_BODY_BYTES"] {
        assert!(errors.contains(variable), "{variable} not reported in: {errors}");
    }
}

#[test]
fn there_is_no_mode_without_device_keys() {
    let output = gateway()
        .env_clear()
        .current_dir(std::env::temp_dir())
        .output()
        .expect("http-gateway runs");
    assert_eq!(output.status.code(), Some(2));
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(errors.contains("CWP_MASTER_KEY"), "{errors}");
}

#[test]
fn health_says_a_gateway_that_is_not_there_is_unhealthy() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = gateway()
        .arg("--health")
        .env_clear()
        .env("HTTP_ADMIN_LISTEN", format!("127.0.0.1:{port}"))
        .current_dir(std::env::temp_dir())
        .output()
        .expect("http-gateway runs");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let bad = gateway()
        .arg("--health")
        .env_clear()
        .env("HTTP_ADMIN_LISTEN", "nowhere")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("http-gateway runs");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}
