//! `controller-sim`, the binary, run by a test: started with the test
//! master key and `--json`, its summary read back and its exactly-once
//! verdict (`--verify-redis`) asserted. These fail the test when the
//! simulator does.

use std::process::{Child, Command, Stdio};

use crate::device::MASTER_KEY_HEX;

/// `controller-sim` against `target` with the test master key and `--json`;
/// the caller adds the scenario's arguments and spawns it.
pub fn controller_sim(target: &str) -> Command {
    let mut command = Command::new(crate::binaries::binary("controller-sim").expect("controller-sim is built"));
    command
        .args(["--target", target, "--json"])
        .env("CWP_MASTER_KEY", MASTER_KEY_HEX)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

/// Waits for a simulator, asserts it succeeded, returns its JSON summary.
pub fn sim_summary(sim: Child) -> serde_json::Value {
    let output = sim.wait_with_output().expect("waiting for controller-sim");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "controller-sim's summary is not JSON ({err}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    assert!(output.status.success(), "controller-sim failed: {summary}");
    summary
}

/// Ends a simulator started with `--verify-redis` (SIGTERM: it stops,
/// waits for its acks and checks Redis) and asserts its exactly-once
/// verdict: nothing lost, duplicated or unexpected.
pub fn stop_and_verify(sim: Child, name: &str) -> serde_json::Value {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(sim.id()).expect("pids fit in i32"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signalling controller-sim");
    verified(sim_summary(sim), name)
}

/// Asserts the exactly-once verdict of a simulator's summary.
pub fn verified(summary: serde_json::Value, name: &str) -> serde_json::Value {
    eprintln!("{name}: {summary}");
    let verification = &summary["verification"];
    assert_eq!(verification["passed"], true, "{name}: {summary}");
    for problem in ["missing", "duplicated", "unexpected"] {
        assert_eq!(verification[problem], 0, "{name}: {problem}: {summary}");
    }
    summary
}

/// A count from a simulator's summary.
pub fn count(summary: &serde_json::Value, field: &str) -> u64 {
    summary[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {summary}"))
}
