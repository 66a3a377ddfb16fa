//! What the bridge exposes at `/metrics` ([`crate::admin`]) in the
//! Prometheus text format: [`Stats`] read at each scrape. Names follow the
//! driver's rule: `drover_bridge_` + the README's name for the thing.
//!
//! The counters live in [`Stats`] (the process title and the tests read
//! them too); this collector only formats a snapshot, so a scrape costs a
//! dozen atomic loads and nothing on the hot path changes.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::stats::{DurabilityStatus, Stats};

/// A registry holding every metric of the bridge: [`Stats`], and the byte
/// budget they are measured against (`max_queued_bytes`,
/// `BRIDGE_MAX_QUEUED_BYTES`), so that an alert can compare the two
/// without repeating the configuration.
pub fn registry(stats: Arc<Stats>, max_queued_bytes: u64) -> Registry {
    let mut registry = Registry::default();
    registry
        .sub_registry_with_prefix("drover_bridge")
        .register_collector(Box::new(StatsCollector {
            stats,
            max_queued_bytes,
        }));
    registry
}

/// The durability state as a label: one series per state, 1 for the
/// current one (`drover_bridge_durability{state="fsynced"} 1`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    /// [`DurabilityStatus::name`].
    state: &'static str,
}

#[derive(Debug)]
struct StatsCollector {
    stats: Arc<Stats>,
    max_queued_bytes: u64,
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = self.stats.snapshot();
        gauge(
            &mut encoder,
            "health_serving",
            "1 while grpc.health.v1 reports SERVING (Redis answers, is verified durable, no shutdown), else 0",
            u64::from(now.serving),
        )?;
        let mut durability = encoder.encode_descriptor(
            "durability",
            "Redis's durability as last checked: 1 for the current state (unchecked, fsynced, weak_refusing, weak_accepted)",
            None,
            MetricType::Gauge,
        )?;
        for state in DurabilityStatus::ALL {
            ConstGauge::new(i64::from(state == now.durability))
                .encode(durability.encode_family(&StateLabel { state: state.name() })?)?;
        }
        gauge(
            &mut encoder,
            "driver_streams",
            "StreamEvents streams open now (one per connected driver process)",
            now.connected_drivers,
        )?;
        counter(
            &mut encoder,
            "events_stored",
            "Events appended to the events stream",
            now.events_stored,
        )?;
        counter(
            &mut encoder,
            "events_duplicate",
            "Events found already stored (resends) and acknowledged again",
            now.duplicates,
        )?;
        counter(
            &mut encoder,
            "batches",
            "Batches stored and answered with BatchDurable",
            now.batches,
        )?;
        counter(
            &mut encoder,
            "store_retries",
            "Event-script calls that failed and were retried",
            now.store_retries,
        )?;
        counter(
            &mut encoder,
            "command_results_unmatched",
            "Command results for durable commands the device was never sent: ignored, the command stays pending",
            now.unmatched_results,
        )?;
        counter(
            &mut encoder,
            "ledger_commands_sent",
            "Durable commands handed to drivers to send, redeliveries included",
            now.ledger_sent,
        )?;
        counter(
            &mut encoder,
            "ledger_commands_expired",
            "Durable commands the ledger sweep expired: their ttl passed before a result",
            now.ledger_expired,
        )?;
        counter(
            &mut encoder,
            "take_commands_calls",
            "TakeCommands calls, empty answers included (a session of a device whose ledger is empty makes none)",
            now.take_commands_calls,
        )?;
        counter(
            &mut encoder,
            "redis_errors",
            "Redis operations that failed (PINGs, durability checks, event scripts, unary calls)",
            now.redis_errors,
        )?;
        gauge(
            &mut encoder,
            "queued_bytes",
            "Bytes of batches read from the streams and not yet answered, all streams together",
            now.queued_bytes,
        )?;
        gauge(
            &mut encoder,
            "queued_bytes_peak",
            "The most queued_bytes has been since start",
            now.queued_bytes_peak,
        )?;
        gauge(
            &mut encoder,
            "queued_bytes_limit",
            "BRIDGE_MAX_QUEUED_BYTES: beyond it the bridge stops reading the streams",
            self.max_queued_bytes,
        )?;
        gauge(
            &mut encoder,
            "streams_over_budget",
            "Streams the bridge holds back now, waiting for room in a byte budget",
            now.streams_over_budget,
        )?;
        gauge(
            &mut encoder,
            "streams_awaiting_durability",
            "Streams holding their batches now until Redis is verified durable",
            now.streams_awaiting_durability,
        )?;
        Ok(())
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    let value = i64::try_from(value).unwrap_or(i64::MAX);
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(stats: &Arc<Stats>) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry(Arc::clone(stats), 1 << 28)).unwrap();
        text
    }

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn every_figure_of_stats_is_a_named_series() {
        let stats = Arc::new(Stats::new());
        stats.set_serving(true);
        stats.set_durability(DurabilityStatus::Fsynced);
        stats.add_stored(3, 40, 2);
        stats.add_store_retry();
        stats.add_queued(1000);
        stats.remove_queued(400);
        let _stream = stats.driver_connected();
        let text = scrape(&stats);
        for (series, value) in [
            ("drover_bridge_health_serving", "1"),
            ("drover_bridge_durability{state=\"fsynced\"}", "1"),
            ("drover_bridge_durability{state=\"unchecked\"}", "0"),
            ("drover_bridge_durability{state=\"weak_refusing\"}", "0"),
            ("drover_bridge_durability{state=\"weak_accepted\"}", "0"),
            ("drover_bridge_driver_streams", "1"),
            ("drover_bridge_events_stored_total", "40"),
            ("drover_bridge_events_duplicate_total", "2"),
            ("drover_bridge_batches_total", "3"),
            ("drover_bridge_store_retries_total", "1"),
            ("drover_bridge_redis_errors_total", "1"),
            ("drover_bridge_queued_bytes", "600"),
            ("drover_bridge_queued_bytes_peak", "1000"),
            ("drover_bridge_queued_bytes_limit", "268435456"),
            ("drover_bridge_streams_over_budget", "0"),
            ("drover_bridge_streams_awaiting_durability", "0"),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
    }

    #[test]
    fn not_serving_and_weak_durability_show_as_such() {
        let stats = Arc::new(Stats::new());
        stats.set_durability(DurabilityStatus::WeakRefusing);
        let text = scrape(&stats);
        assert_eq!(sample(&text, "drover_bridge_health_serving"), Some("0"), "{text}");
        assert_eq!(
            sample(&text, "drover_bridge_durability{state=\"weak_refusing\"}"),
            Some("1"),
            "{text}"
        );
        assert_eq!(
            sample(&text, "drover_bridge_durability{state=\"fsynced\"}"),
            Some("0"),
            "{text}"
        );
    }
}
