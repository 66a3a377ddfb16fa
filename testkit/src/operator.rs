//! The operator at the command line: `drover` run as a test's user would
//! run it, with only the variables the test gives it.

use std::process::{Command, Stdio};

use crate::binaries::binary;

/// The operator's variables a test process may carry from its own
/// environment: removed, so that a test sees only what it passes.
const OPERATOR_VARIABLES: [&str; 6] = [
    "REDIS_URL",
    "REDIS_CLUSTER_NODES",
    "CMD_MAX_QUEUED",
    "CWP_MASTER_KEY",
    "FILES_DIR",
    "HTTP_GATEWAY_URL",
];

/// How `drover` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliRun {
    /// Its exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Its standard output, trimmed.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// `drover ARGS` with `env` and none of the caller's operator variables, in
/// the temporary directory (so no `.env` is read), stdin closed.
///
/// # Panics
/// If the binary is missing or cannot be started.
pub fn drover<K: AsRef<str>, V: AsRef<str>>(env: &[(K, V)], args: &[&str]) -> CliRun {
    let mut command = Command::new(binary("drover").expect("the drover binary"));
    for variable in OPERATOR_VARIABLES {
        command.env_remove(variable);
    }
    let output = command
        .args(args)
        .envs(env.iter().map(|(key, value)| (key.as_ref(), value.as_ref())))
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .output()
        .expect("drover runs");
    CliRun {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
