//! `bench-commands`: the operator of the commands benchmark. It publishes
//! commands, at a steady rate, to devices picked at random from a range of
//! serials (`PUBLISH cwp:cmd:{serial}`, each command with its own id), and
//! times each from its `PUBLISH` to the result notice on
//! `cwp:cmd-result:{serial}` (one `PSUBSCRIBE cwp:cmd-result:*`), as the
//! main application would see it. The devices themselves are
//! `controller-sim --scenario commands`.
//!
//! Prints one JSON object: commands published, how many `PUBLISH`es
//! answered 1 (a driver was subscribed: the device was online), results
//! by status, commands without a result, and the round trip's HDR
//! percentiles (µs).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use controller_sim::device::LatencyReport;
use drover_schema::{COMMAND_RESULTS, COMMANDS, command_fields, result_fields};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::{Instant, MissedTickBehavior};

/// Commands are sent in batches this often (one pipelined round trip each).
const TICK: Duration = Duration::from_millis(5);

/// Publishes commands to simulated devices and times their results.
#[derive(Debug, Parser)]
#[command(name = "bench-commands", version)]
struct Args {
    /// The fleet's Redis.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Serial prefix of the devices (as controller-sim's --serial-prefix).
    #[arg(long, default_value = "SIM-")]
    serial_prefix: String,
    /// Number of the first device's serial.
    #[arg(long, default_value_t = 1)]
    first_serial: u64,
    /// Devices in the range; each command goes to one picked at random.
    #[arg(long)]
    devices: u64,
    /// Digits of the serial numbers (controller-sim pads to at least 6).
    #[arg(long, default_value_t = 6)]
    serial_width: usize,
    /// Commands per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// How long to publish (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = drover_service::duration::parse_duration)]
    duration: Duration,
    /// After the last command, how long to wait for outstanding results.
    #[arg(long, default_value = "5s", value_parser = drover_service::duration::parse_duration)]
    grace: Duration,
    /// The commands' `name`.
    #[arg(long, default_value = "bench")]
    name: String,
}

/// The summary.
#[derive(Debug, Serialize)]
struct Report {
    published: u64,
    /// `PUBLISH` answered 1: the device was online.
    delivered: u64,
    /// `PUBLISH` answered 0: nobody subscribed for that device.
    not_delivered: u64,
    /// Result notices by `status`.
    results: BTreeMap<String, u64>,
    /// Published, delivered, and no result within the grace.
    without_result: u64,
    /// Seconds spent publishing.
    publish_s: f64,
    /// Commands published per second.
    rate: f64,
    /// `PUBLISH` sent → result notice received, µs.
    round_trip_us: LatencyReport,
}

/// Commands sent and not yet answered: id → when its `PUBLISH` went out.
type Outstanding = Arc<Mutex<HashMap<String, Instant>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.devices >= 1, "--devices must be at least 1");
    anyhow::ensure!(args.rate > 0.0 && args.rate.is_finite(), "--rate must be > 0");
    let client = redis::Client::open(args.redis.as_str()).context("--redis")?;
    let mut publisher = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let mut subscriber = client.get_async_pubsub().await.context("connecting to Redis")?;
    subscriber.psubscribe(COMMAND_RESULTS.pattern()).await?;

    let outstanding: Outstanding = Arc::default();
    let round_trips = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).context("histogram bounds")?,
    ));
    let results: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let listener = {
        let (outstanding, round_trips, results) =
            (Arc::clone(&outstanding), Arc::clone(&round_trips), Arc::clone(&results));
        let mut messages = subscriber.into_on_message();
        tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                let now = Instant::now();
                let notice: serde_json::Value = match serde_json::from_slice(message.get_payload_bytes()) {
                    Ok(notice) => notice,
                    Err(_) => continue,
                };
                let status = notice[result_fields::STATUS].as_str().unwrap_or("?").to_owned();
                let Some(id) = notice[result_fields::ID].as_str() else {
                    continue;
                };
                if let Some(sent) = lock(&outstanding).remove(id) {
                    lock(&round_trips).saturating_record(
                        u64::try_from(now.duration_since(sent).as_micros())
                            .unwrap_or(u64::MAX)
                            .max(1),
                    );
                    *lock(&results).entry(status).or_default() += 1;
                }
            }
        })
    };

    let started = Instant::now();
    let end = started + args.duration;
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut published, mut delivered, mut credit) = (0u64, 0u64, 0f64);
    let mut last = started;
    let body = serde_json::json!({"bench": true}).to_string();
    while Instant::now() < end {
        let now = ticks.tick().await;
        credit += args.rate * now.saturating_duration_since(last).as_secs_f64();
        last = now;
        let owed = credit.floor();
        credit -= owed;
        if owed < 1.0 {
            continue;
        }
        let mut batch = redis::pipe();
        let mut ids = Vec::with_capacity(owed as usize);
        for _ in 0..owed as u64 {
            let number = args.first_serial + rand::random_range(0..args.devices);
            let serial: cwp::Serial = format!("{}{:0width$}", args.serial_prefix, number, width = args.serial_width)
                .parse()
                .context("--serial-prefix and --serial-width must make serials of at most 32 [A-Za-z0-9._-]")?;
            let id = uuid::Uuid::new_v4().to_string();
            let command = serde_json::json!({
                (command_fields::ID): id,
                (command_fields::NAME): args.name,
                (command_fields::BODY): body,
            });
            batch
                .cmd("PUBLISH")
                .arg(COMMANDS.name(&serial))
                .arg(command.to_string());
            ids.push(id);
        }
        let sent = Instant::now();
        {
            let mut outstanding = lock(&outstanding);
            for id in &ids {
                outstanding.insert(id.clone(), sent);
            }
        }
        let replies: Vec<i64> = batch.query_async(&mut publisher).await.context("PUBLISH")?;
        for (id, reply) in ids.iter().zip(&replies) {
            published += 1;
            if *reply > 0 {
                delivered += 1;
            } else {
                // Nobody will answer: not a command in flight.
                lock(&outstanding).remove(id);
            }
        }
    }
    let publish_s = started.elapsed().as_secs_f64();

    // The last results.
    let deadline = Instant::now() + args.grace;
    while Instant::now() < deadline && !lock(&outstanding).is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    listener.abort();
    let report = Report {
        published,
        delivered,
        not_delivered: published - delivered,
        results: lock(&results).clone(),
        without_result: lock(&outstanding).len() as u64,
        publish_s: (publish_s * 1000.0).round() / 1000.0,
        rate: (published as f64 / publish_s * 10.0).round() / 10.0,
        round_trip_us: LatencyReport::of(&lock(&round_trips)),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
