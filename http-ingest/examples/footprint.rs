//! How much memory a parsed batch holds, counted two ways: the parser's own
//! accounting ([`Footprint`](drover_http_ingest::ndjson::Footprint)) and the
//! growth of the process's resident set (`VmRSS`) while the batch is alive.
//!
//! The body is fed in 64 KiB chunks, each a buffer of its own as an HTTP
//! server hands them over, so a chunk lives on only if a record's body is a
//! slice of it.
//!
//! Each shape is measured in a process of its own, so that memory freed by
//! one measurement does not hide the next one's growth.
//!
//! `cargo run --release -p drover-http-ingest --example footprint [LINES]`
//! (default 1,000,000 lines, ~160 MB of taxi_json).

use bytes::Bytes;
use drover_http_ingest::ndjson::{BatchLimits, BatchParser};
use drover_http_ingest::taxi;

/// Resident set size of this process, in bytes (Linux).
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line");
    kib * 1024
}

fn main() {
    let mut args = std::env::args().skip(1);
    let lines = args.next().unwrap_or_else(|| "1000000".to_owned());
    match args.next() {
        Some(shape) => measure(&shape, lines.parse().expect("LINES is a number")),
        None => {
            let me = std::env::current_exe().expect("the example's own path");
            for (_, name) in taxi::Shape::ALL {
                let status = std::process::Command::new(&me).args([&lines, name]).status();
                assert!(status.expect("the example runs").success());
            }
        }
    }
}

fn measure(name: &str, lines: u64) {
    let (shape, _) = taxi::Shape::ALL
        .into_iter()
        .find(|(_, n)| *n == name)
        .expect("a shape's name");
    let body = taxi::batch(shape, lines);
    let before = rss();
    let mut parser = BatchParser::new(BatchLimits::default());
    for chunk in body.chunks(64 * 1024) {
        parser.feed(Bytes::copy_from_slice(chunk));
    }
    let batch = parser.finish();
    let held = rss().saturating_sub(before);
    let input = body.len() as f64;
    let f = batch.footprint;
    println!(
        "{name}: {} lines, {:.1} MB in; counted {:.2}x the input (input {:.2}, arena {:.2}, records {:.2}), resident growth {:.2}x",
        batch.stats.valid,
        input / 1e6,
        f.total() as f64 / input,
        f.input as f64 / input,
        f.arena as f64 / input,
        f.records as f64 / input,
        held as f64 / input,
    );
}
