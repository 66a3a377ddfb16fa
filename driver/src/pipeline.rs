//! The event pipeline: every device's events, batched onto one long-lived
//! gRPC stream to the vendor-bridge, and the bridge's durable confirmations
//! turned back into per-session acknowledgements.
//!
//! ```text
//! sessions ──EventPermit::submit──▶ [admission's queue] ──▶ pipeline task ──EventBatch──▶ bridge
//!      ▲                                                        │ ◀──BatchDurable─────────┘
//!      └─────────────── SessionHandle::events_durable + wake ◀──┘
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
//! - Memory is bounded: every event here holds an
//!   [`crate::admission::EventPermit`]'s room, `DRIVER_MAX_PENDING_EVENTS`
//!   in all (beyond it devices get `BUSY`), which goes back only when the
//!   event is durable. Each batch copies its event bodies into one buffer,
//!   so a pending event never pins a connection's receive buffer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cwp::CommandId;
use drover_proto::bridge::{self, BridgeMessage, DriverMessage, EventBatch, bridge_message, driver_message};
use drover_service::backoff::Backoff;
use drover_service::drain;
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use crate::admission::{AdmittedEvents, PendingEvent};
use crate::batch_limits::{MAX_BATCH_BYTES, MAX_BATCH_EVENTS};
use crate::bridge::BridgeClient;
use crate::commands::DurableCommands;
use crate::metrics::{Metrics, ResultLabel};
use crate::registry::SessionHandle;

/// Batches sent and not yet confirmed. More than one keeps the stream full
/// while the bridge works on a batch; the bridge queues the rest.
const MAX_IN_FLIGHT: usize = 8;

/// How long the pipeline may keep storing what is pending once told to
/// stop; then it abandons the rest (not acknowledged: devices resend it).
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Waits between failed attempts to open the event stream.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Why a live stream stopped.
#[derive(Debug, thiserror::Error)]
enum StreamLost {
    /// The bridge failed the stream.
    #[error("{0}")]
    Failed(tonic::Status),
    /// The bridge closed the stream.
    #[error("stream closed by the bridge")]
    Closed,
    /// The stream's send queue is gone (its HTTP/2 stream ended).
    #[error("stream's send queue closed")]
    SendQueueClosed,
    /// The bridge confirmed a batch that is not the oldest in flight.
    #[error("bridge confirmed batch {confirmed} but the oldest in flight is {oldest:?}")]
    OutOfOrder {
        /// The batch it confirmed.
        confirmed: u64,
        /// The oldest batch in flight, if any.
        oldest: Option<u64>,
    },
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

/// The pipeline task's state.
pub struct PipelineTask {
    bridge: BridgeClient,
    /// Told of each stored command result, so that a session gets more
    /// of its durable commands as it answers them.
    durable: DurableCommands,
    metrics: Arc<Metrics>,
    events: AdmittedEvents,
    /// Batches not yet confirmed, oldest first; the first `in_flight` of
    /// them have been sent on the current stream.
    unconfirmed: VecDeque<Batch>,
    in_flight: usize,
    next_batch_id: u64,
    /// Signalled when the driver stops: finish what is pending (within
    /// [`STOP_GRACE`]), then exit.
    stop: drain::Watch,
}

impl PipelineTask {
    /// The task that stores the events `events` admits.
    pub fn new(
        bridge: BridgeClient,
        durable: DurableCommands,
        metrics: Arc<Metrics>,
        events: AdmittedEvents,
        stop: drain::Watch,
    ) -> Self {
        Self {
            bridge,
            durable,
            metrics,
            events,
            unconfirmed: VecDeque::new(),
            in_flight: 0,
            next_batch_id: 1,
            stop,
        }
    }
}

impl PipelineTask {
    /// Runs until stopped and every pending event is confirmed, or until
    /// [`STOP_GRACE`] after the stop.
    pub async fn run(mut self) {
        let stop = self.stop.clone();
        let abandon = async move {
            stop.signaled().await;
            tokio::time::sleep(STOP_GRACE).await;
        };
        let mut abandon = std::pin::pin!(abandon);
        let mut backoff = RECONNECT;
        let mut rx_open = true;
        loop {
            if self.done(rx_open) {
                break;
            }
            let stream = tokio::select! {
                biased;
                () = &mut abandon => break,
                stream = self.connect() => stream,
            };
            let Some(mut live) = stream else {
                let delay = backoff.next_delay();
                tokio::select! {
                    () = &mut abandon => break,
                    () = tokio::time::sleep(delay) => {}
                    // Keep batching arrivals while the bridge is away, so the
                    // queue never holds events apart from their batches.
                    () = self.absorb(&mut rx_open, delay) => {}
                }
                continue;
            };
            backoff.reset();
            match self.pump(&mut live, &mut rx_open, &mut abandon).await {
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

    /// Stopped, nothing unconfirmed and nothing left to batch.
    fn done(&self, rx_open: bool) -> bool {
        self.stop.is_signaled() && self.unconfirmed.is_empty() && (!rx_open || self.events.is_empty())
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
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => self.batch_from(event),
                Ok(None) => *rx_open = false,
                Err(_) => return,
            }
        }
        std::future::pending::<()>().await;
    }

    /// Sends and confirms batches on a live stream until it fails (`Err`) or
    /// the pipeline is done (`Ok`).
    async fn pump(
        &mut self,
        live: &mut Stream,
        rx_open: &mut bool,
        abandon: &mut (impl std::future::Future<Output = ()> + Unpin),
    ) -> Result<(), StreamLost> {
        // Everything unconfirmed was sent on a previous stream: send again.
        self.in_flight = 0;
        let stop = self.stop.clone();
        loop {
            self.send_ready(live)?;
            if self.done(*rx_open) {
                return Ok(());
            }
            tokio::select! {
                biased;
                () = &mut *abandon => return Ok(()),
                reply = live.inbound.next() => match reply {
                    Some(Ok(message)) => self.confirm(message)?,
                    Some(Err(status)) => return Err(StreamLost::Failed(status)),
                    None => return Err(StreamLost::Closed),
                },
                event = self.events.recv(), if *rx_open => match event {
                    Some(event) => self.batch_from(event),
                    None => *rx_open = false,
                },
                () = stop.signaled(), if *rx_open && self.events.is_empty() && self.unconfirmed.is_empty() => {
                    return Ok(());
                }
            }
        }
    }

    /// Sends unsent batches while the in-flight window has room.
    fn send_ready(&mut self, live: &mut Stream) -> Result<(), StreamLost> {
        while self.in_flight < MAX_IN_FLIGHT && self.in_flight < self.unconfirmed.len() {
            let batch = &mut self.unconfirmed[self.in_flight];
            live.outbound
                .try_send(batch.to_message())
                .map_err(|_| StreamLost::SendQueueClosed)?;
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
            match self.events.try_recv() {
                Some(event) => {
                    bytes += event.event.body.len();
                    events.push(event);
                }
                None => break,
            }
        }
        compact_bodies(&mut events);

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
    fn confirm(&mut self, message: BridgeMessage) -> Result<(), StreamLost> {
        let Some(bridge_message::Kind::Durable(durable)) = message.kind else {
            return Ok(());
        };
        let front_id = self.unconfirmed.front().map(|b| b.id);
        if self.in_flight == 0 || front_id != Some(durable.batch_id) {
            return Err(StreamLost::OutOfOrder {
                confirmed: durable.batch_id,
                oldest: front_id,
            });
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
        Ok(())
    }
}
