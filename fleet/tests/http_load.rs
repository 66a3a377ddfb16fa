//! `bench-http`, the HTTP events benchmark's load generator, as `fleet
//! bench --only http-events` runs it, with tiny numbers against the
//! reference service (`bench/baselines/tornado_ndjson.py`): every answer
//! checked, every record written once; and the control, the same load read
//! as the gateway's answers, fails.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use drover_testkit::components::Logs;
use fleet::bench::events::MASTER_KEY_HEX;
use fleet::bench::http_events::{ReferenceService, check_tornado};
use fleet::bench::http_load::LoadReport;

fn bench_http(args: &[&str]) -> (bool, LoadReport) {
    let output = Command::new(env!("CARGO_BIN_EXE_bench-http"))
        .args(args)
        .env("CWP_MASTER_KEY", MASTER_KEY_HEX)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "bench-http printed no report ({err}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.success(), report)
}

#[test]
fn the_load_generator_drives_the_reference_service_and_checks_every_answer() {
    if let Err(err) = check_tornado() {
        eprintln!("skipped: {err:#}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("rows.csv");
    let service = ReferenceService::start(&rows, &Logs::Inherit).unwrap();
    let target = service.addr().to_string();
    let load = [
        "--target",
        &target,
        "--clients",
        "3",
        "--requests",
        "7",
        "--records",
        "20",
        "--answer",
        "reference",
    ];

    let (success, report) = bench_http(&load);
    assert!(success, "{report:?}");
    assert_eq!(report.requests_ok, 7, "{report:?}");
    assert_eq!((report.requests_failed, report.requests_refused), (0, 0));
    assert_eq!(report.records_acked, 7 * 20);
    assert_eq!(report.latency_us.samples, 7);
    assert!(report.records_per_s > 0.0);
    // Every record reached the file once: clients 1..3 send 3, 2 and 2
    // requests, each continuing its ids (1..=60, 1..=40, 1..=40).
    let text = std::fs::read_to_string(&rows).unwrap();
    let mut ids: Vec<u64> = text
        .lines()
        .map(|line| line.split(',').next().unwrap().parse().unwrap())
        .collect();
    ids.sort_unstable();
    let mut expected: Vec<u64> = (1..=60).chain(1..=40).chain(1..=40).collect();
    expected.sort_unstable();
    assert_eq!(ids, expected);

    // The control: the reference's answers are not the gateway's, and the
    // generator says so (exit 1, each failure counted).
    let mut as_gateway = load.to_vec();
    let answer = as_gateway.len() - 1;
    as_gateway[answer] = "drover";
    let (success, report) = bench_http(&as_gateway);
    assert!(!success);
    assert_eq!((report.requests_ok, report.requests_failed), (0, 7), "{report:?}");
    assert!(report.failures[0].contains("no record counts"), "{:?}", report.failures);
}
