//! A measurement, not a check: events per second through the bridge into a
//! real Redis (`appendfsync always`), shaped like the driver's pipeline (one
//! stream, batches of 2,048 events, 8 in flight, 1,000 devices, 64-byte
//! bodies), and where the CPU goes (Redis vs this process: bridge and test
//! driver together).
//!
//! ```sh
//! cargo test -p vendor-bridge --test throughput -- --ignored --nocapture
//! ```
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Instant;

use support::{Bridge, DriverStream, event};

const BATCH: u64 = 2048;
const BATCHES: u64 = 100;
const IN_FLIGHT: u64 = 8;
const DEVICES: u64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn events_per_second() {
    let bridge = Bridge::start().await;
    let mut client = bridge.client().await;
    let mut stream = DriverStream::open(&mut client, "drv-a", "inst-1").await.unwrap();
    let body = [0x5a; 64];
    let serials: Vec<String> = (0..DEVICES).map(|device| format!("DEV-{device}")).collect();
    let batch = |batch_id: u64| {
        (0..BATCH)
            .map(|i| {
                let id = batch_id * BATCH + i;
                event(&serials[(id % DEVICES) as usize], id, 3, &body)
            })
            .collect::<Vec<_>>()
    };

    let redis_before = cpu_seconds(bridge.redis.pid());
    let own_before = cpu_seconds(std::process::id());
    let started = Instant::now();
    let mut next = 1;
    while next <= IN_FLIGHT {
        stream.send(next, batch(next)).await;
        next += 1;
    }
    for answered in 1..=BATCHES {
        assert_eq!(stream.durable().await.batch_id, answered);
        if next <= BATCHES {
            stream.send(next, batch(next)).await;
            next += 1;
        }
    }
    let elapsed = started.elapsed();

    let events = (BATCH * BATCHES) as f64;
    let per_event_us = |seconds: f64| seconds * 1e6 / events;
    println!(
        "{events} events in {elapsed:?}: {:.0} events/s",
        events / elapsed.as_secs_f64()
    );
    println!(
        "CPU per event: redis-server {:.1} us, bridge + test driver {:.1} us",
        per_event_us(cpu_seconds(bridge.redis.pid()) - redis_before),
        per_event_us(cpu_seconds(std::process::id()) - own_before),
    );
    let mut redis = bridge.redis().await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut redis)
        .await
        .unwrap();
    for line in info
        .lines()
        .filter(|line| line.contains("evalsha") || line.contains("xadd"))
    {
        println!("{line}");
    }
}

/// User + system CPU time of a process so far, from `/proc/{pid}/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = stat.rsplit(')').next().unwrap();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), in clock ticks (100/s).
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}
