//! NDJSON batch parsing throughput, beside `serde_json` on the same lines in
//! the same run.
//!
//! Input: 20,000 taxi-trip events (`drover_http_ingest::taxi`), ~150 bytes a line,
//! in three shapes: the trip as escaped JSON text in `body` (`taxi_json`,
//! the example), as CSV text without escapes (`taxi_csv`), and as
//! base64 in `body_b64` (`taxi_b64`).
//!
//! - `drover/*`: [`BatchParser`] fed the body in 64 KiB chunks (as an HTTP
//!   body arrives): line splitting, UTF-8, the scanner, every rule, bodies
//!   decoded, records built, the batch dropped.
//! - `serde_json_value/*`: lines split with `memchr`, each parsed by
//!   `serde_json::from_slice` into a `serde_json::Value` and dropped: no
//!   validation beyond JSON, no base64.
//! - `serde_json_struct/*`: the same into a borrowed struct (`Cow<str>`
//!   bodies, so unescaped text borrows): no rules, no base64.
//!
//! Throughput is reported as records/s and bytes/s of input. Run with
//! `cargo bench -p drover-http-ingest --bench ndjson`; on a machine shared
//! with other work, `NDJSON_BENCH_CLOCK=cpu` measures the benchmark
//! thread's own CPU time instead of wall time ([`Clock`], as in cwp's
//! codec benchmark).

use std::borrow::Cow;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use drover_http_ingest::ndjson::{BatchLimits, BatchParser};
use drover_http_ingest::taxi;
use serde::Deserialize;

/// Events per measured batch.
const LINES: u64 = 20_000;
/// The size of the chunks the parser is fed.
const CHUNK: usize = 64 * 1024;

/// A line as a `serde_json` user would declare it.
#[derive(Deserialize)]
#[allow(dead_code)] // read only through black_box
struct Line<'a> {
    event_id: u64,
    time_ms: u64,
    kind: u16,
    #[serde(borrow, default)]
    body: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    body_b64: Option<Cow<'a, str>>,
}

fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|&b| b == b'\n').filter(|line| !line.is_empty())
}

fn ndjson(c: &mut Criterion<Clock>) {
    let clock = Clock::from_env();
    let mut group = clock.group(c, "ndjson");
    for (shape, name) in taxi::Shape::ALL {
        let body = taxi::batch(shape, LINES);
        let limits = BatchLimits::default();
        let check = drover_http_ingest::ndjson::parse(body.clone(), &limits);
        assert_eq!(check.stats.valid, LINES, "every line of {name} is valid");
        eprintln!(
            "{name}: {} bytes, {:.1} bytes a line, footprint {:.2}x the input",
            body.len(),
            body.len() as f64 / LINES as f64,
            check.footprint.total() as f64 / body.len() as f64
        );
        group.throughput(Throughput::ElementsAndBytes {
            elements: LINES,
            bytes: body.len() as u64,
        });

        group.bench_function(format!("drover/{name}"), |b| {
            b.iter(|| {
                let mut parser = BatchParser::new(limits.clone());
                let mut at = 0;
                while at < body.len() {
                    let end = (at + CHUNK).min(body.len());
                    parser.feed(body.slice(at..end));
                    at = end;
                }
                black_box(parser.finish())
            });
        });
        group.bench_function(format!("serde_json_value/{name}"), |b| {
            b.iter(|| {
                for line in lines(&body) {
                    let value: serde_json::Value = serde_json::from_slice(line).expect("valid JSON");
                    black_box(value);
                }
            });
        });
        group.bench_function(format!("serde_json_struct/{name}"), |b| {
            b.iter(|| {
                for line in lines(&body) {
                    let parsed: Line<'_> = serde_json::from_slice(line).expect("valid lines");
                    black_box(parsed);
                }
            });
        });
    }
    group.finish();
}

/// What a benchmark's time is: wall time (the default), or with
/// `NDJSON_BENCH_CLOCK=cpu` the CPU time the benchmark thread ran, read from
/// Linux's `/proc/thread-self/schedstat` (the same clock as cwp's codec
/// benchmark). That counter can lag by one scheduler tick, so the CPU clock
/// takes few, long, equal samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    Wall,
    ThreadCpu,
}

impl Clock {
    fn from_env() -> Self {
        match std::env::var("NDJSON_BENCH_CLOCK").as_deref() {
            Ok("cpu") if thread_cpu_ns().is_some() => Self::ThreadCpu,
            Ok("cpu") => panic!("NDJSON_BENCH_CLOCK=cpu needs /proc/thread-self/schedstat (Linux)"),
            _ => Self::Wall,
        }
    }

    fn criterion(self) -> Criterion<Self> {
        let criterion = Criterion::default()
            .warm_up_time(Duration::from_secs(1))
            .with_measurement(self);
        match self {
            Self::Wall => criterion.measurement_time(Duration::from_secs(4)),
            Self::ThreadCpu => criterion.measurement_time(Duration::from_secs(6)).sample_size(10),
        }
    }

    fn group<'a>(self, c: &'a mut Criterion<Self>, name: &str) -> BenchmarkGroup<'a, Self> {
        let mut group = c.benchmark_group(name);
        if self == Self::ThreadCpu {
            group.sampling_mode(SamplingMode::Flat);
        }
        group
    }
}

/// Nanoseconds this thread has run on a CPU.
fn thread_cpu_ns() -> Option<u64> {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    schedstat.split_whitespace().next()?.parse().ok()
}

impl Measurement for Clock {
    type Intermediate = (Instant, u64);
    type Value = Duration;

    fn start(&self) -> Self::Intermediate {
        (Instant::now(), thread_cpu_ns().unwrap_or(0))
    }

    fn end(&self, (wall, cpu_ns): Self::Intermediate) -> Duration {
        match self {
            Self::Wall => wall.elapsed(),
            Self::ThreadCpu => Duration::from_nanos(thread_cpu_ns().unwrap_or(0).saturating_sub(cpu_ns)),
        }
    }

    fn add(&self, v1: &Duration, v2: &Duration) -> Duration {
        *v1 + *v2
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        WallTime.formatter()
    }
}

criterion_group! {
    name = benches;
    config = Clock::from_env().criterion();
    targets = ndjson
}
criterion_main!(benches);
