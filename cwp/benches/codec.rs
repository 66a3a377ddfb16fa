//! Codec throughput, against the physical limit of the same work.
//!
//! - `decode_sealed/*`: a server codec decodes and verifies a long run of
//!   sealed frames that a device codec encoded, in order (so every tag
//!   verifies): 1 KiB `BLOCK`s (1,004 data bytes, the firmware's upload unit)
//!   and small `EVENT`s (16-byte body).
//! - `hmac_sha256/*`: the limit: raw HMAC-SHA256 (the `hmac` and `sha2`
//!   crates, keyed state precomputed as the codec does) over the same frames'
//!   bytes, one MAC per frame.
//! - `crc32c/*`: CRC-32C alone over 1 KiB and 64 KiB.
//!
//! Group `bytes` reports MB/s (`Throughput::Bytes`), group `frames` frames/s
//! (`Throughput::Elements`) for the same work. Run with
//! `cargo bench -p cwp --bench codec`; the figures are in docs/BENCHMARKS.md.
//!
//! On a machine shared with other work, wall time measures the share of a
//! core the benchmark got as much as the code. `CODEC_BENCH_CLOCK=cpu`
//! measures the benchmark thread's own CPU time instead ([`Clock`]).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use cwp::{Block, DeviceCodec, DeviceFrame, Event, ServerCodec, SessionKey};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Frames per measured batch: 1 MiB of 1 KiB `BLOCK`s.
const FRAMES: usize = 1024;

const KEY: [u8; 32] = [0x7C; 32];

/// A device's run of `FRAMES` sealed frames, device frames 0 to
/// `FRAMES - 1`, and the size of one frame on the wire.
struct SealedRun {
    wire: BytesMut,
    frame_len: usize,
}

impl SealedRun {
    fn new(frame: impl Fn(u64) -> DeviceFrame) -> Self {
        let mut device = DeviceCodec::new();
        device.start_sealing(&SessionKey::from_bytes(KEY));
        let mut wire = BytesMut::new();
        for seq in 0..FRAMES as u64 {
            device.encode(&frame(seq), &mut wire);
        }
        let frame_len = wire.len() / FRAMES;
        assert_eq!(wire.len(), frame_len * FRAMES, "every frame of a run has the same size");
        Self { wire, frame_len }
    }

    /// 1 KiB `BLOCK`s: 12 header + 1,004 data + 8 tag bytes.
    fn blocks() -> Self {
        let data: Bytes = (0..1004u32).map(|i| (i % 251) as u8).collect();
        let run = Self::new(|_| DeviceFrame::Block(Block { data: data.clone() }));
        assert_eq!(run.frame_len, 1024, "a 1,004-byte block makes a 1 KiB frame");
        run
    }

    /// `EVENT`s with a 16-byte body: 12 + 18 + 16 + 8 = 54 bytes.
    fn events() -> Self {
        Self::new(|seq| {
            DeviceFrame::Event(Event {
                event_id: seq + 1,
                time_ms: 1_767_225_600_000 + seq,
                kind: 7,
                body: Bytes::from_static(b"{\"t\":21.5,\"h\":4}"),
            })
        })
    }

    /// Decodes the whole run with a fresh server codec (receive sequence 0),
    /// so every tag verifies.
    fn bench_decode(&self, c: &mut BenchmarkGroup<'_, Clock>, name: &str) {
        let key = SessionKey::from_bytes(KEY);
        c.bench_function(format!("decode_sealed/{name}"), |b| {
            b.iter_batched(
                || {
                    let mut server = ServerCodec::new();
                    server.start_sealing(&key);
                    (server, self.wire.clone())
                },
                |(mut server, mut rx)| {
                    let mut frames = 0;
                    while let Some(frame) = server.decode(&mut rx).expect("the run is valid") {
                        black_box(frame);
                        frames += 1;
                    }
                    assert_eq!(frames, FRAMES);
                    // Dropped after the measurement: a connection reuses its
                    // buffer rather than freeing 1 MiB per 1,024 frames.
                    rx
                },
                BatchSize::LargeInput,
            );
        });
    }

    /// One HMAC-SHA256 per frame over the frame's bytes, from a precomputed
    /// keyed state: what the tags cost at best.
    fn bench_hmac(&self, c: &mut BenchmarkGroup<'_, Clock>, name: &str) {
        let keyed = Hmac::<Sha256>::new_from_slice(&KEY).expect("HMAC takes any key length");
        c.bench_function(format!("hmac_sha256/{name}"), |b| {
            b.iter(|| {
                for frame in self.wire.chunks_exact(self.frame_len) {
                    let mut mac = keyed.clone();
                    mac.update(black_box(frame));
                    black_box(mac.finalize());
                }
            });
        });
    }
}

/// What a benchmark's time is: wall time (the default), or with
/// `CODEC_BENCH_CLOCK=cpu` the CPU time the benchmark thread ran, read from
/// Linux's `/proc/thread-self/schedstat`. That counter can lag by one
/// scheduler tick (a few ms), so the CPU clock takes few, long, equal samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    Wall,
    ThreadCpu,
}

impl Clock {
    fn from_env() -> Self {
        match std::env::var("CODEC_BENCH_CLOCK").as_deref() {
            Ok("cpu") if thread_cpu_ns().is_some() => Self::ThreadCpu,
            Ok("cpu") => panic!("CODEC_BENCH_CLOCK=cpu needs /proc/thread-self/schedstat (Linux)"),
            _ => Self::Wall,
        }
    }

    fn criterion(self) -> Criterion<Self> {
        let criterion = Criterion::default()
            .warm_up_time(Duration::from_secs(1))
            .with_measurement(self);
        match self {
            // Short runs: these figures are stable within a few seconds.
            Self::Wall => criterion.measurement_time(Duration::from_secs(3)),
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

fn codec(c: &mut Criterion<Clock>) {
    let clock = Clock::from_env();
    let blocks = SealedRun::blocks();
    let events = SealedRun::events();

    let mut bytes = clock.group(c, "bytes");
    for (run, name) in [(&blocks, "block_1k"), (&events, "event_16b")] {
        bytes.throughput(Throughput::Bytes(run.wire.len() as u64));
        run.bench_decode(&mut bytes, name);
        run.bench_hmac(&mut bytes, name);
    }
    for len in [1024, 64 * 1024] {
        let buf: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        bytes.throughput(Throughput::Bytes(len as u64));
        bytes.bench_function(format!("crc32c/{}k", len / 1024), |b| {
            b.iter(|| crc32c::crc32c(black_box(&buf)));
        });
    }
    bytes.finish();

    let mut frames = clock.group(c, "frames");
    frames.throughput(Throughput::Elements(FRAMES as u64));
    for (run, name) in [(&blocks, "block_1k"), (&events, "event_16b")] {
        run.bench_decode(&mut frames, name);
        run.bench_hmac(&mut frames, name);
    }
    frames.finish();
}

criterion_group! {
    name = benches;
    config = Clock::from_env().criterion();
    targets = codec
}
criterion_main!(benches);
