//! What the driver counts, exposed at `/metrics` in the Prometheus text
//! format. Names follow one rule: `drover_driver_` + the spec's or the
//! README's name for the thing.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A label with one value, e.g. `result="ok"` (the event stream's
/// connects are counted by [`drover_edge`] under it).
pub use drover_edge::ResultLabel;

/// The error code sent to a device.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The spec's name of the code (`BAD_TAG`, `BUSY`, ...).
    pub code: &'static str,
}

/// Why an authentication failed (for operators; devices get the same
/// `UNAUTHORIZED` for both).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `unknown_serial` or `wrong_mac`.
    pub reason: &'static str,
}

/// Which failed-authentication limit refused a `HELLO`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimiterLabel {
    /// `address` or `serial`.
    pub limiter: &'static str,
}

/// Every metric of one driver process.
#[derive(Debug)]
pub struct Metrics {
    /// Device connections open now.
    pub connections: Gauge,
    /// Device connections accepted since start.
    pub connections_accepted: Counter,
    /// Authenticated sessions live now.
    pub sessions: Gauge,
    /// Of those, sessions parked now (no task: [`crate::session::park`]).
    pub sessions_parked: Gauge,
    /// Handshakes by result: `ok`, `unauthorized`, `timeout`, `malformed`,
    /// `unexpected`, `bridge_unavailable`, `closed`, `evicted` (its slot
    /// went to a newer connection, `DRIVER_MAX_HANDSHAKES`), `rate_limited`.
    pub handshakes: Family<ResultLabel, Counter>,
    /// Connections accepted and not yet authenticated, now.
    pub handshakes_in_progress: Gauge,
    /// Failed authentications by reason: `unknown_serial`, `wrong_mac`.
    pub auth_failures: Family<ReasonLabel, Counter>,
    /// `HELLO`s refused with `BUSY` after too many failed authentications,
    /// by limit: `address`, `serial`.
    pub auth_rate_limited: Family<LimiterLabel, Counter>,
    /// `EVENT` frames accepted for storage.
    pub events_received: Counter,
    /// Events acknowledged to devices (stored now or earlier).
    pub events_acked: Counter,
    /// Duplicate events acknowledged without storing.
    pub events_duplicate: Counter,
    /// Bytes of rollouts' files sent in `FILE_CHUNK`s.
    pub file_bytes_sent: Counter,
    /// Sessions sending a rollout's file now: those on the transfers'
    /// thread.
    pub file_transfers: Gauge,
    /// Time from receiving an `EVENT` to its durable confirmation, seconds.
    pub ack_latency: Histogram,
    /// Time from sending a batch to the bridge to its `BatchDurable`, seconds.
    pub bridge_round_trip: Histogram,
    /// Events waiting for the bridge now.
    pub events_pending: Gauge,
    /// Body bytes of the events waiting for the bridge now.
    pub events_pending_bytes: Gauge,
    /// `DRIVER_MAX_PENDING_EVENTS`: beyond it devices get `BUSY` (set once
    /// at start, so that an alert compares `events_pending` with it).
    pub events_pending_limit: Gauge,
    /// `DRIVER_MAX_PENDING_BYTES`, likewise for `events_pending_bytes`.
    pub events_pending_bytes_limit: Gauge,
    /// Event-stream (re)connections to the bridge by result.
    pub bridge_connects: Family<ResultLabel, Counter>,
    /// Commands by outcome: `delivered`, `rejected`, `undelivered`.
    pub commands: Family<ResultLabel, Counter>,
    /// Times the Redis pub/sub connection was lost and every subscription
    /// restored on a new one.
    pub pubsub_reconnects: Counter,
    /// Upload payload bytes made durable.
    pub upload_bytes: Counter,
    /// Uploads by outcome: `ok`, `digest_mismatch`, `size_mismatch`.
    pub uploads: Family<ResultLabel, Counter>,
    /// Upload write buffers held now: one per upload receiving data.
    pub upload_buffers: Gauge,
    /// `ERROR` frames sent to devices, by code.
    pub errors: Family<CodeLabel, Counter>,
    /// `CWP_KEYS_FILE` reloads (SIGHUP) by result: `ok`, `failed` (the
    /// previous keys stay in force).
    pub keys_reloads: Family<ResultLabel, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let latency_buckets = || {
            [
                0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]
            .into_iter()
        };
        let metrics = Self {
            connections: Gauge::default(),
            connections_accepted: Counter::default(),
            sessions: Gauge::default(),
            sessions_parked: Gauge::default(),
            handshakes: Family::default(),
            handshakes_in_progress: Gauge::default(),
            auth_failures: Family::default(),
            auth_rate_limited: Family::default(),
            events_received: Counter::default(),
            events_acked: Counter::default(),
            events_duplicate: Counter::default(),
            file_bytes_sent: Counter::default(),
            file_transfers: Gauge::default(),
            ack_latency: Histogram::new(latency_buckets()),
            bridge_round_trip: Histogram::new(latency_buckets()),
            events_pending: Gauge::default(),
            events_pending_bytes: Gauge::default(),
            events_pending_limit: Gauge::default(),
            events_pending_bytes_limit: Gauge::default(),
            bridge_connects: Family::default(),
            commands: Family::default(),
            pubsub_reconnects: Counter::default(),
            upload_bytes: Counter::default(),
            uploads: Family::default(),
            upload_buffers: Gauge::default(),
            errors: Family::default(),
            keys_reloads: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("drover_driver");
        r.register(
            "connections",
            "Device connections open now",
            metrics.connections.clone(),
        );
        r.register(
            "connections_accepted",
            "Device connections accepted",
            metrics.connections_accepted.clone(),
        );
        r.register("sessions", "Authenticated sessions live now", metrics.sessions.clone());
        r.register(
            "sessions_parked",
            "Of the live sessions, those parked now: quiet, held without a task until their device or an operator needs them",
            metrics.sessions_parked.clone(),
        );
        r.register("handshakes", "Handshakes by result", metrics.handshakes.clone());
        r.register(
            "handshakes_in_progress",
            "Connections accepted and not yet authenticated",
            metrics.handshakes_in_progress.clone(),
        );
        r.register(
            "auth_failures",
            "Failed authentications by reason",
            metrics.auth_failures.clone(),
        );
        r.register(
            "auth_rate_limited",
            "HELLOs refused after too many failed authentications, by limit",
            metrics.auth_rate_limited.clone(),
        );
        r.register(
            "events_received",
            "EVENT frames accepted for storage",
            metrics.events_received.clone(),
        );
        r.register(
            "events_acked",
            "Events acknowledged to devices",
            metrics.events_acked.clone(),
        );
        r.register(
            "file_bytes_sent",
            "Bytes of rollouts' files sent in FILE_CHUNK frames",
            metrics.file_bytes_sent.clone(),
        );
        r.register(
            "file_transfers",
            "Sessions sending a rollout's file now (on the transfers' thread)",
            metrics.file_transfers.clone(),
        );
        r.register(
            "events_duplicate",
            "Duplicate events acknowledged without storing",
            metrics.events_duplicate.clone(),
        );
        r.register(
            "ack_latency_seconds",
            "From EVENT received to durable confirmation",
            metrics.ack_latency.clone(),
        );
        r.register(
            "bridge_round_trip_seconds",
            "From batch sent to BatchDurable",
            metrics.bridge_round_trip.clone(),
        );
        r.register(
            "events_pending",
            "Events awaiting storage",
            metrics.events_pending.clone(),
        );
        r.register(
            "events_pending_bytes",
            "Bytes of event bodies awaiting storage",
            metrics.events_pending_bytes.clone(),
        );
        r.register(
            "events_pending_limit",
            "DRIVER_MAX_PENDING_EVENTS: beyond it devices get BUSY",
            metrics.events_pending_limit.clone(),
        );
        r.register(
            "events_pending_bytes_limit",
            "DRIVER_MAX_PENDING_BYTES: beyond it devices get BUSY",
            metrics.events_pending_bytes_limit.clone(),
        );
        r.register(
            "bridge_connects",
            "Event stream connections to the bridge by result",
            metrics.bridge_connects.clone(),
        );
        r.register("commands", "Operator commands by outcome", metrics.commands.clone());
        r.register(
            "pubsub_reconnects",
            "Redis pub/sub connections re-established, every subscription restored",
            metrics.pubsub_reconnects.clone(),
        );
        r.register(
            "upload_bytes",
            "Upload bytes made durable",
            metrics.upload_bytes.clone(),
        );
        r.register("uploads", "Finished uploads by outcome", metrics.uploads.clone());
        r.register(
            "upload_buffers",
            "Upload write buffers held now (one per upload receiving data)",
            metrics.upload_buffers.clone(),
        );
        r.register("errors", "ERROR frames sent to devices by code", metrics.errors.clone());
        r.register(
            "keys_reloads",
            "CWP_KEYS_FILE reloads by result",
            metrics.keys_reloads.clone(),
        );
        metrics
    }

    /// Counts an `ERROR` sent to a device.
    pub fn error_sent(&self, code: cwp::ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel {
                code: code.name().unwrap_or("OTHER"),
            })
            .inc();
    }

    /// Counts a handshake outcome.
    pub fn handshake(&self, result: &'static str) {
        self.handshakes.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a command outcome.
    pub fn command(&self, result: &'static str) {
        self.commands.get_or_create(&ResultLabel { result }).inc();
    }
}
