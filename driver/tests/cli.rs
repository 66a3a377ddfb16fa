//! The `driver` binary's command line: `--help` documents every variable,
//! and a bad configuration is refused with every problem listed at once.

use std::process::Command;

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
        .output()
        .expect("driver runs");
    assert_eq!(output.status.code(), Some(2));
    let errors = String::from_utf8_lossy(&output.stderr);
    for variable in ["CWP_MASTER_KEY", "DRIVER_LISTEN", "DRIVER_HEARTBEAT_S"] {
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
    let largest = driver::batch_limits::MAX_EVENT_BODY_BYTES;
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
        help.contains(&driver::batch_limits::MAX_EVENT_BODY_BYTES.to_string()),
        "{help}"
    );
}
