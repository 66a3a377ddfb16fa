//! What the gateway counts, exposed at `/metrics` (`HTTP_ADMIN_LISTEN`) in
//! the Prometheus text format. Names: `drover_http_` + the docs' name for
//! the thing.

use drover_edge::StreamMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A request's endpoint and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `events`, `token`, `uploads` or `other`.
    pub endpoint: &'static str,
    /// `ok`, or the refusal's stable code (`bad_signature`, `replayed`, ...).
    pub outcome: &'static str,
}

/// What happened to a line of an event batch.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LineLabel {
    /// `stored`, `duplicate` or `invalid`.
    pub result: &'static str,
}

/// Every metric of one gateway process.
#[derive(Debug)]
pub struct Metrics {
    /// Client connections open now.
    pub connections: Gauge,
    /// Requests answered, by endpoint and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Lines of event batches, by result.
    pub lines: Family<LineLabel, Counter>,
    /// Bytes of request bodies received, as sent.
    pub body_bytes: Counter,
    /// Bytes of bodies held now (`HTTP_MAX_INFLIGHT_BYTES` is the limit).
    pub inflight_bytes: Gauge,
    /// From a `POST /v1/events`'s headers to its answer, seconds.
    pub events_request_seconds: Histogram,
    /// The event stream to the bridge (connects and round trips).
    pub stream: StreamMetrics,
    /// Upload bytes made durable.
    pub upload_bytes: Counter,
    /// Upload write buffers held now (one per request writing).
    pub upload_buffers: Gauge,
    /// Uploads completed and recorded in `cwp:uploads`.
    pub uploads_completed: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let buckets = || {
            [
                0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]
            .into_iter()
        };
        let metrics = Self {
            connections: Gauge::default(),
            requests: Family::default(),
            lines: Family::default(),
            body_bytes: Counter::default(),
            inflight_bytes: Gauge::default(),
            events_request_seconds: Histogram::new(buckets()),
            stream: StreamMetrics {
                connects: Family::default(),
                round_trip: Some(Histogram::new(buckets())),
            },
            upload_bytes: Counter::default(),
            upload_buffers: Gauge::default(),
            uploads_completed: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("drover_http");
        r.register(
            "connections",
            "Client connections open now",
            metrics.connections.clone(),
        );
        r.register(
            "requests",
            "Requests answered, by endpoint and outcome (ok or the error code)",
            metrics.requests.clone(),
        );
        r.register(
            "lines",
            "Lines of event batches: stored, duplicate or invalid",
            metrics.lines.clone(),
        );
        r.register(
            "body_bytes",
            "Bytes of request bodies received, as sent",
            metrics.body_bytes.clone(),
        );
        r.register(
            "inflight_bytes",
            "Bytes of request bodies held now, until their events are durable",
            metrics.inflight_bytes.clone(),
        );
        r.register(
            "events_request_seconds",
            "From a POST /v1/events's headers to its answer",
            metrics.events_request_seconds.clone(),
        );
        r.register(
            "bridge_connects",
            "Attempts to open the event stream to the vendor-bridge, by result",
            metrics.stream.connects.clone(),
        );
        r.register(
            "upload_bytes",
            "Bytes of tus uploads written and fdatasynced",
            metrics.upload_bytes.clone(),
        );
        r.register(
            "upload_buffers",
            "Upload write buffers held now (UPLOAD_MAX_OPEN is the limit)",
            metrics.upload_buffers.clone(),
        );
        r.register(
            "uploads_completed",
            "tus uploads completed and recorded in cwp:uploads",
            metrics.uploads_completed.clone(),
        );
        if let Some(round_trip) = &metrics.stream.round_trip {
            r.register(
                "bridge_round_trip_seconds",
                "From sending a batch to the bridge to its durable confirmation",
                round_trip.clone(),
            );
        }
        metrics
    }

    /// Counts an answered request.
    pub fn request(&self, endpoint: &'static str, outcome: &'static str) {
        self.requests.get_or_create(&RequestLabels { endpoint, outcome }).inc();
    }
}
