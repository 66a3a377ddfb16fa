//! The event pipeline: every device's events gathered into batches for the
//! event stream to the vendor-bridge ([`drover_edge::stream`]), and the
//! bridge's durable confirmations turned back into per-session
//! acknowledgements.
//!
//! ```text
//! sessions ──EventPermit::submit──▶ [admission's queue] ──▶ Gatherer ──▶ EventStream ──EventBatch──▶ bridge
//!      ▲                                                        ▲            │ ◀──BatchDurable──────┘
//!      └─────────── SessionHandle::events_durable + wake ◀── Gatherer::durable┘
//! ```
//!
//! The stream (one task, [`drover_edge::stream::EventStream`]) keeps the
//! batches in order, resends every unconfirmed one after a reconnect and
//! confirms them in order; this module is the driver's [`BatchSource`]:
//! - It gathers whatever waits in the admission queue into one batch, up
//!   to [`MAX_BATCH_EVENTS`] / [`MAX_BATCH_BYTES`], many sessions' events
//!   together, and merges it into the newest batch not yet sent while the
//!   stream is busy ([`Batch::merge`]).
//! - On a durable batch it tells each session once (its highest durable
//!   id and how many of its events the batch carried), records the ack
//!   latencies, tells [`DurableCommands`] of stored command results, and
//!   gives the events' room back to admission: one call per batch, in the
//!   stream's task, no channel or completion per event.
//! - Memory is bounded: every event here holds an
//!   [`crate::admission::EventPermit`]'s room, `DRIVER_MAX_PENDING_EVENTS`
//!   in all (beyond it devices get `BUSY`), which goes back only when the
//!   event is durable. Each gathered batch copies its event bodies into one
//!   buffer, so a pending event never pins a connection's receive buffer.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use cwp::CommandId;
use drover_edge::batch_limits::{MAX_BATCH_BYTES, MAX_BATCH_EVENTS};
use drover_edge::stream::{Batch, BatchSource, EventStream, StreamMetrics};
use drover_edge::{BatchDurable, BridgeClient};
use drover_proto::bridge;
use drover_service::drain;

use crate::admission::{AdmittedEvents, PendingEvent};
use crate::commands::DurableCommands;
use crate::metrics::Metrics;
use crate::registry::SessionHandle;

pub use drover_edge::stream::STOP_GRACE;

/// Sessions' events gathered for the bridge.
pub struct EventsBatch {
    /// The events, bodies already copied out of the receive buffers.
    events: Vec<PendingEvent>,
    /// Sum of the events' body sizes.
    bytes: usize,
}

impl Batch for EventsBatch {
    fn len(&self) -> usize {
        self.events.len()
    }

    fn events(&self) -> Vec<bridge::Event> {
        self.events
            .iter()
            .map(|pending| bridge::Event {
                serial: pending.session.serial.to_string(),
                event_id: pending.event.event_id,
                time_ms: pending.event.time_ms,
                kind: u32::from(pending.event.kind),
                body: pending.event.body.clone(),
                received_ms: pending.received_ms,
            })
            .collect()
    }

    fn merge(&mut self, mut next: Self) -> Result<(), Self> {
        if self.events.len() + next.events.len() <= MAX_BATCH_EVENTS && self.bytes + next.bytes <= MAX_BATCH_BYTES {
            self.events.append(&mut next.events);
            self.bytes += next.bytes;
            Ok(())
        } else {
            Err(next)
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

/// The driver's [`BatchSource`]: the admission queue, gathered.
pub struct Gatherer {
    events: AdmittedEvents,
    /// Told of each stored command result, so that a session gets more
    /// of its durable commands as it answers them.
    durable: DurableCommands,
    metrics: Arc<Metrics>,
}

impl BatchSource for Gatherer {
    type Batch = EventsBatch;

    /// Takes the next event and whatever else is waiting in the queue, and
    /// copies their bodies into one buffer.
    async fn recv(&mut self) -> Option<EventsBatch> {
        let first = self.events.recv().await?;
        let mut bytes = first.event.body.len();
        let mut events = vec![first];
        while events.len() < MAX_BATCH_EVENTS && bytes < MAX_BATCH_BYTES {
            match self.events.try_recv() {
                Some(event) => {
                    bytes += event.event.body.len();
                    events.push(event);
                }
                None => break,
            }
        }
        compact_bodies(&mut events);
        Some(EventsBatch { events, bytes })
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    fn durable(&mut self, batch: EventsBatch, durable: BatchDurable) {
        let now = Instant::now();
        self.metrics.events_duplicate.inc_by(u64::from(durable.duplicates));

        // Tell each session once per batch: its highest durable id and how
        // many of its events this batch carried.
        let mut run: Option<(Arc<SessionHandle>, u64, u32)> = None;
        for pending in &batch.events {
            self.metrics
                .ack_latency
                .observe(now.duration_since(pending.received).as_secs_f64());
            if pending.event.kind == cwp::Event::COMMAND_RESULT_KIND
                && let Some(Ok(command)) = pending.event.body.get(..16).map(<[u8; 16]>::try_from)
            {
                self.durable
                    .answered(pending.session.serial, &pending.session.session_id, CommandId(command));
            }
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
        self.events.release(batch.events.len(), batch.bytes);
        self.metrics.events_acked.inc_by(batch.events.len() as u64);
    }
}

/// The task that stores the events `events` admits: run it with
/// [`EventStream::run`]. It stores until stopped and every pending event is
/// confirmed, or until [`STOP_GRACE`] after `stop`.
pub fn pipeline(
    bridge: BridgeClient,
    durable: DurableCommands,
    metrics: Arc<Metrics>,
    events: AdmittedEvents,
    stop: drain::Watch,
) -> EventStream<Gatherer> {
    let stream_metrics = StreamMetrics {
        connects: metrics.bridge_connects.clone(),
        round_trip: Some(metrics.bridge_round_trip.clone()),
    };
    EventStream::new(
        bridge,
        stream_metrics,
        Gatherer {
            events,
            durable,
            metrics,
        },
        stop,
    )
}
