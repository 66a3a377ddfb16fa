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
