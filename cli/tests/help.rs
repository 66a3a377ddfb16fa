//! The binary's own promises that need no Redis: `--help` documents every
//! exit code `drover` can end with, and usage errors end with 2. (Being an
//! integration test of this package, it also makes `cargo test` build the
//! `drover` binary that the end-to-end tests in `e2e/tests/cli.rs` run.)

use std::process::Command;

use drover_cli::exit::Exit;

fn drover(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(args)
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CLUSTER_NODES")
        .env_remove("CWP_MASTER_KEY")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("drover runs")
}

#[test]
fn the_help_lists_every_exit_code() {
    let output = drover(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let codes = [
        Exit::Success,
        Exit::Error,
        Exit::Usage,
        Exit::Offline,
        Exit::Timeout,
        Exit::NotDelivered,
        Exit::DeviceFailed,
        Exit::NotFound,
        Exit::Refused,
    ];
    for exit in codes {
        let line = format!("\n  {}  ", exit.code());
        assert!(
            help.contains(&line),
            "--help names exit code {} ({exit:?}):\n{help}",
            exit.code()
        );
    }
    // The control: a code drover never uses is not listed.
    assert!(!help.contains("\n  9  "), "{help}");
}

#[test]
fn a_usage_error_ends_with_2() {
    let output = drover(&["send"]);
    assert_eq!(output.status.code(), Some(i32::from(Exit::Usage.code())));
    let output = drover(&["no-such-command"]);
    assert_eq!(output.status.code(), Some(i32::from(Exit::Usage.code())));
}
