//! The event pipeline: every device's events, batched onto one long-lived
//! gRPC stream to the vendor-bridge, and the bridge's durable confirmations
//! turned back into per-session acknowledgements.
//!
//! ```text
//! connections ──submit──▶ [bounded channel] ──▶ pipeline task ──EventBatch──▶ bridge
//!      ▲                                             │ ◀──BatchDurable─────────┘
//!      └──────── SessionHandle::events_durable + wake ┘
//! ```
//!
//! Invariants:
//! - Nothing is confirmed to a session unless the bridge said its batch is
//!   durable. A batch stays in `unconfirmed` until then, across any number
//!   of stream failures; after a reconnect every unconfirmed batch is sent
//!   again, in order (storage is idempotent per serial and event id).
//! - Batches go out in the order their events arrived, and the bridge
//!   applies one stream's batches in order, so each serial's events reach
//!   Redis in id order.
//! - Memory is bounded: the channel has a fixed capacity, and admission
//!   ([`Pipeline::admit`]) refuses events beyond `max_pending` in total
//!   (the device gets `BUSY`). Each batch copies its event bodies into one
//!   buffer, so a pending event never pins a connection's receive buffer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use drover_proto::bridge::{self, BridgeMessage, DriverMessage, EventBatch, bridge_message, driver_message};
use futures::StreamExt as _;
use rand::RngExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bridge::BridgeClient;
use crate::metrics::{Metrics, ResultLabel};
use crate::registry::SessionHandle;

/// Most events in one batch.
const MAX_BATCH_EVENTS: usize = 2048;
/// Most body bytes in one batch (the bridge accepts 4 MiB messages).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Batches sent and not yet confirmed. More than one keeps the stream full
/// while the bridge works on a batch; the bridge queues the rest.
const MAX_IN_FLIGHT: usize = 8;

/// An event on its way to the bridge.
#[derive(Debug)]
pub struct PendingEvent {
    /// The session that received it, to be told when it is durable.
    pub session: Arc<SessionHandle>,
    /// The event as decoded.
    pub event: cwp::Event,
    /// When the driver received it (for the ack latency metric).
    pub received: Instant,
    /// When the driver received it, Unix ms (stored with the event).
    pub received_ms: u64,
}

/// The connections' side of the pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Unbounded, because [`Pipeline::admit`] bounds it: every event in it
    /// was admitted against `max_pending`. A plain send keeps the session
    /// loop free of a waiting send's future (smaller idle tasks).
    tx: mpsc::UnboundedSender<PendingEvent>,
    pending: Arc<AtomicUsize>,
    max_pending: usize,
    received_total: Arc<AtomicU64>,
}

/// The driver holds too many events awaiting storage: answer `BUSY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineFull;

impl Pipeline {
    /// Reserves room for one event; fails when `max_pending` are waiting.
    /// Every successful `admit` must be followed by [`Pipeline::submit`].
    pub fn admit(&self) -> Result<(), PipelineFull> {
        let before = self.pending.fetch_add(1, Ordering::AcqRel);
        if before >= self.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(PipelineFull);
        }
        Ok(())
    }

    /// Hands an admitted event to the pipeline.
    pub fn submit(&self, event: PendingEvent) {
        event.session.event_submitted();
        self.received_total.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::error::SendError(event)) = self.tx.send(event) {
            // The pipeline task is gone (shutting down): the event is not
            // stored and will not be acknowledged; the device resends it.
            self.pending.fetch_sub(1, Ordering::AcqRel);
            event.session.events_durable(0, 1);
        }
    }

    /// Events received since start (for the process title).
    pub fn received_total(&self) -> u64 {
        self.received_total.load(Ordering::Relaxed)
    }

    /// Events waiting for storage now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

/// A batch and the bookkeeping needed to confirm it.
struct Batch {
    id: u64,
    /// The events, bodies already copied out of the receive buffers.
    events: Vec<PendingEvent>,
    /// Sum of the events' body sizes.
    bytes: usize,
    /// When it was last sent (for the round-trip metric).
    sent_at: Option<Instant>,
}

impl Batch {
    fn to_message(&self) -> DriverMessage {
        let events = self
            .events
            .iter()
            .map(|pending| bridge::Event {
                serial: pending.session.serial.to_string(),
                event_id: pending.event.event_id,
                time_ms: pending.event.time_ms,
                kind: u32::from(pending.event.kind),
                body: pending.event.body.clone(),
                received_ms: pending.received_ms,
            })
            .collect();
        DriverMessage {
            kind: Some(driver_message::Kind::Batch(EventBatch {
                batch_id: self.id,
                events,
            })),
        }
    }
}

/// Copies the bodies of `events` into one buffer and points each event at
/// its slice of it: one allocation per batch, and the connections' receive
/// buffers are released.
fn compact_bodies(events: &mut [PendingEvent]) {
    let total: usize = events.iter().map(|e| e.event.body.len()).sum();
    let mut arena = BytesMut::with_capacity(total);
    for pending in events.iter() {
        arena.extend_from_slice(&pending.event.body);
    }
    let mut arena: Bytes = arena.freeze();
    for pending in events.iter_mut() {
        let len = pending.event.body.len();
        pending.event.body = arena.split_to(len);
    }
}

/// The live stream to the bridge.
struct Stream {
    outbound: mpsc::Sender<DriverMessage>,
    inbound: tonic::Streaming<BridgeMessage>,
}

/// Creates the pipeline: the handle connections use, and the task to spawn.
pub fn pipeline(
    bridge: BridgeClient,
    metrics: Arc<Metrics>,
    max_pending: usize,
) -> (Pipeline, impl FnOnce(CancellationToken) -> PipelineTask) {
    let (tx, rx) = mpsc::unbounded_channel();
    let pending = Arc::new(AtomicUsize::new(0));
    let handle = Pipeline {
        tx,
        pending: pending.clone(),
        max_pending,
        received_total: Arc::new(AtomicU64::new(0)),
    };
    let task = move |stop| PipelineTask {
        bridge,
        metrics,
        rx,
        pending,
        unconfirmed: VecDeque::new(),
        in_flight: 0,
        next_batch_id: 1,
        stop,
    };
    (handle, task)
}

/// The pipeline task's state.
pub struct PipelineTask {
    bridge: BridgeClient,
    metrics: Arc<Metrics>,
    rx: mpsc::UnboundedReceiver<PendingEvent>,
    pending: Arc<AtomicUsize>,
    /// Batches not yet confirmed, oldest first; the first `in_flight` of
    /// them have been sent on the current stream.
    unconfirmed: VecDeque<Batch>,
    in_flight: usize,
    next_batch_id: u64,
    /// Cancelled when the driver stops: finish what is pending, then exit.
    stop: CancellationToken,
}

impl PipelineTask {
    /// Runs until stopped and every pending event is confirmed, or until
    /// `abandon` fires (the drain's deadline).
    pub async fn run(mut self, abandon: CancellationToken) {
        let mut backoff = Backoff::default();
        let mut rx_open = true;
        loop {
            if self.stop.is_cancelled() && self.unconfirmed.is_empty() && (!rx_open || self.rx.is_empty()) {
                break;
            }
            let stream = tokio::select! {
                biased;
                () = abandon.cancelled() => break,
                stream = self.connect() => stream,
            };
            let Some(mut live) = stream else {
                let delay = backoff.next();
                tokio::select! {
                    () = abandon.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                    // Keep batching arrivals while the bridge is away, so the
                    // channel never blocks connections.
                    () = self.absorb(&mut rx_open, delay) => {}
                }
                continue;
            };
            backoff = Backoff::default();
            match self.pump(&mut live, &mut rx_open, &abandon).await {
                Ok(()) => break,
                Err(reason) => {
                    warn!(%reason, unconfirmed = self.unconfirmed.len(), "event stream to the vendor-bridge lost; reconnecting");
                    self.in_flight = 0;
                }
            }
        }
        let lost: usize = self.unconfirmed.iter().map(|b| b.events.len()).sum();
        if lost > 0 {
            warn!(
                events = lost,
                "stopping with events not confirmed by the bridge: they were not acknowledged, devices will resend them"
            );
        }
    }

    async fn connect(&mut self) -> Option<Stream> {
        let (outbound, outbound_rx) = mpsc::channel(MAX_IN_FLIGHT + 2);
        let hello = DriverMessage {
            kind: Some(driver_message::Kind::Hello(bridge::DriverHello {
                driver_id: self.bridge.driver_id().to_owned(),
                instance_id: self.bridge.instance_id().to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })),
        };
        outbound.try_send(hello).ok()?;
        match self.bridge.grpc().stream_events(ReceiverStream::new(outbound_rx)).await {
            Ok(response) => {
                self.metrics
                    .bridge_connects
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                info!(
                    unconfirmed = self.unconfirmed.len(),
                    "event stream to the vendor-bridge open"
                );
                Some(Stream {
                    outbound,
                    inbound: response.into_inner(),
                })
            }
            Err(status) => {
                self.metrics
                    .bridge_connects
                    .get_or_create(&ResultLabel { result: "failed" })
                    .inc();
                warn!(code = ?status.code(), message = %crate::bridge::describe(&status), "vendor-bridge unavailable");
                None
            }
        }
    }

    /// While disconnected: keep receiving events into batches for `delay`.
    async fn absorb(&mut self, rx_open: &mut bool, delay: Duration) {
        let deadline = tokio::time::Instant::now() + delay;
        while *rx_open {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(event)) => self.batch_from(event),
                Ok(None) => *rx_open = false,
                Err(_) => return,
            }
        }
        std::future::pending::<()>().await;
    }

    /// Sends and confirms batches on a live stream until it fails (`Err`) or
    /// the pipeline is done (`Ok`).
    async fn pump(&mut self, live: &mut Stream, rx_open: &mut bool, abandon: &CancellationToken) -> Result<(), String> {
        // Everything unconfirmed was sent on a previous stream: send again.
        self.in_flight = 0;
        loop {
            self.send_ready(live)?;
            if self.stop.is_cancelled() && self.unconfirmed.is_empty() && (!*rx_open || self.rx.is_empty()) {
                return Ok(());
            }
            tokio::select! {
                biased;
                () = abandon.cancelled() => return Ok(()),
                reply = live.inbound.next() => match reply {
                    Some(Ok(message)) => self.confirm(message)?,
                    Some(Err(status)) => return Err(format!("{}: {}", status.code(), status.message())),
                    None => return Err("stream closed by the bridge".to_owned()),
                },
                event = self.rx.recv(), if *rx_open => match event {
                    Some(event) => self.batch_from(event),
                    None => *rx_open = false,
                },
                () = self.stop.cancelled(), if *rx_open && self.rx.is_empty() && self.unconfirmed.is_empty() => {
                    return Ok(());
                }
            }
        }
    }

    /// Sends unsent batches while the in-flight window has room.
    fn send_ready(&mut self, live: &mut Stream) -> Result<(), String> {
        while self.in_flight < MAX_IN_FLIGHT && self.in_flight < self.unconfirmed.len() {
            let batch = &mut self.unconfirmed[self.in_flight];
            live.outbound
                .try_send(batch.to_message())
                .map_err(|_| "stream's send queue closed".to_owned())?;
            batch.sent_at = Some(Instant::now());
            self.in_flight += 1;
        }
        Ok(())
    }

    /// Takes `first` and whatever else is waiting in the channel, copies
    /// their bodies into one buffer, and adds them to the newest unsent
    /// batch if it has room, else to a new batch.
    fn batch_from(&mut self, first: PendingEvent) {
        let mut bytes = first.event.body.len();
        let mut events = vec![first];
        while events.len() < MAX_BATCH_EVENTS && bytes < MAX_BATCH_BYTES {
            match self.rx.try_recv() {
                Ok(event) => {
                    bytes += event.event.body.len();
                    events.push(event);
                }
                Err(_) => break,
            }
        }
        compact_bodies(&mut events);
        self.metrics
            .events_pending
            .set(self.pending.load(Ordering::Acquire) as i64);

        let has_unsent = self.unconfirmed.len() > self.in_flight;
        if let Some(newest) = self.unconfirmed.back_mut()
            && has_unsent
            && newest.events.len() + events.len() <= MAX_BATCH_EVENTS
            && newest.bytes + bytes <= MAX_BATCH_BYTES
        {
            newest.events.append(&mut events);
            newest.bytes += bytes;
            return;
        }
        self.unconfirmed.push_back(Batch {
            id: self.next_batch_id,
            events,
            bytes,
            sent_at: None,
        });
        self.next_batch_id += 1;
    }

    /// Applies a `BatchDurable`: the oldest in-flight batch is stored.
    fn confirm(&mut self, message: BridgeMessage) -> Result<(), String> {
        let Some(bridge_message::Kind::Durable(durable)) = message.kind else {
            return Ok(());
        };
        let front_id = self.unconfirmed.front().map(|b| b.id);
        if self.in_flight == 0 || front_id != Some(durable.batch_id) {
            return Err(format!(
                "bridge confirmed batch {} but the oldest in flight is {front_id:?}",
                durable.batch_id
            ));
        }
        let Some(batch) = self.unconfirmed.pop_front() else {
            return Ok(());
        };
        self.in_flight -= 1;
        let now = Instant::now();
        if let Some(sent_at) = batch.sent_at {
            self.metrics
                .bridge_round_trip
                .observe(now.duration_since(sent_at).as_secs_f64());
        }
        self.metrics.events_duplicate.inc_by(u64::from(durable.duplicates));

        // Tell each session once per batch: its highest durable id and how
        // many of its events this batch carried.
        let mut run: Option<(Arc<SessionHandle>, u64, u32)> = None;
        for pending in &batch.events {
            self.metrics
                .ack_latency
                .observe(now.duration_since(pending.received).as_secs_f64());
            match &mut run {
                Some((session, last, count)) if Arc::ptr_eq(session, &pending.session) => {
                    *last = (*last).max(pending.event.event_id);
                    *count += 1;
                }
                _ => {
                    if let Some((session, last, count)) = run.take() {
                        session.events_durable(last, count);
                        session.wake();
                    }
                    run = Some((pending.session.clone(), pending.event.event_id, 1));
                }
            }
        }
        if let Some((session, last, count)) = run {
            session.events_durable(last, count);
            session.wake();
        }
        self.pending.fetch_sub(batch.events.len(), Ordering::AcqRel);
        self.metrics.events_acked.inc_by(batch.events.len() as u64);
        self.metrics
            .events_pending
            .set(self.pending.load(Ordering::Acquire) as i64);
        Ok(())
    }
}

/// Jittered exponential backoff: 100 ms doubling to 5 s, each delay drawn
/// uniformly from [d/2, d] so that a fleet of drivers does not reconnect in
/// lockstep.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let current = self.next;
        self.next = (current * 2).min(Duration::from_secs(5));
        let half = current / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}
