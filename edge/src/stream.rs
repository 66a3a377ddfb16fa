//! The event stream: batches of events on one long-lived `StreamEvents`
//! gRPC stream to the vendor-bridge, and the bridge's durable
//! confirmations handed back, one per batch, in order.
//!
//! ```text
//! BatchSource::recv ──▶ [unconfirmed batches] ──EventBatch──▶ bridge
//!        ▲                       │ ◀──────BatchDurable──────────┘
//!        └── BatchSource::durable┘
//! ```
//!
//! Two ways in:
//! - [`BatchStream`] (from [`batch_stream`]): submit a batch, await its
//!   [`BatchDurable`]. Each submission is a batch of its own, never merged
//!   with another, so the counts in its `BatchDurable` are its own (the
//!   HTTP gateway: one request's events).
//! - [`EventStream::new`] with a [`BatchSource`] of the caller's: the
//!   driver gathers its sessions' events into batches in its own source,
//!   merges them while the stream is busy ([`Batch::merge`]) and is told
//!   of each durable batch in the same task, with no channel or oneshot
//!   per batch.
//!
//! Invariants:
//! - Nothing is reported durable unless the bridge said its batch is. A
//!   batch stays unconfirmed until then, across any number of stream
//!   failures; after a reconnect every unconfirmed batch is sent again, in
//!   order (storage is idempotent per serial and event id).
//! - Batches go out in the order they were received, at most
//!   [`MAX_IN_FLIGHT`] at once, and the bridge applies one stream's
//!   batches in order, so each serial's events reach Redis in id order;
//!   a confirmation for any batch but the oldest in flight fails the
//!   stream (and the batches are sent again on a new one).
//! - Once stopped, the stream stores what it holds and what its source
//!   still has waiting, for at most [`STOP_GRACE`]; what is left then is
//!   never reported durable (a [`BatchStream`] caller gets
//!   [`NotStored`]).
//! - A batch must fit in one gRPC message: at most
//!   [`crate::batch_limits::MAX_BATCH_EVENTS`] events and about
//!   [`crate::batch_limits::MAX_BATCH_BYTES`] of bodies (a batch the
//!   bridge refuses would be resent for ever).

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

use drover_proto::bridge::{
    self, BatchDurable, BridgeMessage, DriverMessage, EventBatch, bridge_message, driver_message,
};
use drover_service::backoff::Backoff;
use drover_service::drain;
use futures::StreamExt as _;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use crate::ResultLabel;
use crate::bridge::BridgeClient;

/// Batches sent and not yet confirmed. More than one keeps the stream full
/// while the bridge works on a batch; the bridge queues the rest.
pub const MAX_IN_FLIGHT: usize = 8;

/// How long the stream may keep storing what is pending once told to
/// stop; then it abandons the rest (never reported durable).
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Waits between failed attempts to open the event stream.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// A batch of events to store, as its source keeps it.
pub trait Batch: Send + 'static {
    /// How many events it carries (for the log of what was abandoned).
    fn len(&self) -> usize;

    /// Whether it carries none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The events as the bridge is sent them, built on every send (a
    /// batch is sent again after a reconnect).
    fn events(&self) -> Vec<bridge::Event>;

    /// Takes `next`'s events after its own if the two fit in one batch,
    /// else gives `next` back. Offered only a batch not sent yet, while
    /// the stream is busy; by default batches are never merged.
    fn merge(&mut self, next: Self) -> Result<(), Self>
    where
        Self: Sized,
    {
        Err(next)
    }
}

/// Where an [`EventStream`] gets its batches and reports them durable.
pub trait BatchSource: Send {
    /// The batches it hands out.
    type Batch: Batch;

    /// The next batch; `None` once there will be no more. Must be cancel
    /// safe (it is polled in a `select!`): a batch is either returned or
    /// still waiting.
    fn recv(&mut self) -> impl Future<Output = Option<Self::Batch>> + Send;

    /// Whether no batch is waiting now (a stopped stream exits once its
    /// source is empty and everything is confirmed).
    fn is_empty(&self) -> bool;

    /// The bridge stored `batch`: `durable` is its answer (events newly
    /// stored, duplicates skipped). Called once per batch, in the order
    /// the batches were received.
    fn durable(&mut self, batch: Self::Batch, durable: BatchDurable);
}

/// What the stream counts; the caller registers them under its own names.
#[derive(Debug, Clone, Default)]
pub struct StreamMetrics {
    /// Attempts to open the stream, `result="ok"` or `"failed"`.
    pub connects: Family<ResultLabel, Counter>,
    /// From a batch's (last) send to its confirmation, seconds.
    pub round_trip: Option<Histogram>,
}

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
struct Unconfirmed<B> {
    id: u64,
    batch: B,
    /// When it was last sent (for the round-trip metric).
    sent_at: Option<Instant>,
}

/// The live stream to the bridge.
struct Live {
    outbound: mpsc::Sender<DriverMessage>,
    inbound: tonic::Streaming<BridgeMessage>,
}

/// The task that stores a [`BatchSource`]'s batches: run it with
/// [`EventStream::run`].
pub struct EventStream<S: BatchSource> {
    bridge: BridgeClient,
    metrics: StreamMetrics,
    source: S,
    /// Batches not yet confirmed, oldest first; the first `in_flight` of
    /// them have been sent on the current stream.
    unconfirmed: VecDeque<Unconfirmed<S::Batch>>,
    in_flight: usize,
    next_batch_id: u64,
    /// Signalled to stop: finish what is pending (within [`STOP_GRACE`]),
    /// then exit.
    stop: drain::Watch,
}

impl<S: BatchSource> EventStream<S> {
    /// The task that stores `source`'s batches through `bridge`.
    pub fn new(bridge: BridgeClient, metrics: StreamMetrics, source: S, stop: drain::Watch) -> Self {
        Self {
            bridge,
            metrics,
            source,
            unconfirmed: VecDeque::new(),
            in_flight: 0,
            next_batch_id: 1,
            stop,
        }
    }

    /// Runs until stopped and every pending batch is confirmed, or until
    /// [`STOP_GRACE`] after the stop, or until the source is closed and
    /// every batch is confirmed.
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
                    // Keep taking batches while the bridge is away, so the
                    // source can keep forming them (the driver's would
                    // otherwise hold events apart from their batches).
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
        let lost: usize = self.unconfirmed.iter().map(|u| u.batch.len()).sum();
        if lost > 0 {
            warn!(
                events = lost,
                "stopping with events not confirmed by the bridge: they were not acknowledged, devices will resend them"
            );
        }
    }

    /// Nothing unconfirmed and nothing left to take: stopped (and the
    /// source has nothing waiting), or the source is closed.
    fn done(&self, rx_open: bool) -> bool {
        self.unconfirmed.is_empty() && (!rx_open || (self.stop.is_signaled() && self.source.is_empty()))
    }

    async fn connect(&mut self) -> Option<Live> {
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
                self.metrics.connects.get_or_create(&ResultLabel { result: "ok" }).inc();
                info!(
                    unconfirmed = self.unconfirmed.len(),
                    "event stream to the vendor-bridge open"
                );
                Some(Live {
                    outbound,
                    inbound: response.into_inner(),
                })
            }
            Err(status) => {
                self.metrics
                    .connects
                    .get_or_create(&ResultLabel { result: "failed" })
                    .inc();
                warn!(code = ?status.code(), message = %crate::bridge::describe(&status), "vendor-bridge unavailable");
                None
            }
        }
    }

    /// While disconnected: keep taking batches for `delay`.
    async fn absorb(&mut self, rx_open: &mut bool, delay: Duration) {
        let deadline = tokio::time::Instant::now() + delay;
        while *rx_open {
            match tokio::time::timeout_at(deadline, self.source.recv()).await {
                Ok(Some(batch)) => self.take(batch),
                Ok(None) => *rx_open = false,
                Err(_) => return,
            }
        }
        std::future::pending::<()>().await;
    }

    /// Sends and confirms batches on a live stream until it fails (`Err`) or
    /// the stream is done (`Ok`).
    async fn pump(
        &mut self,
        live: &mut Live,
        rx_open: &mut bool,
        abandon: &mut (impl Future<Output = ()> + Unpin),
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
                batch = self.source.recv(), if *rx_open => match batch {
                    Some(batch) => self.take(batch),
                    None => *rx_open = false,
                },
                () = stop.signaled(), if *rx_open && self.source.is_empty() && self.unconfirmed.is_empty() => {
                    return Ok(());
                }
            }
        }
    }

    /// Sends unsent batches while the in-flight window has room.
    fn send_ready(&mut self, live: &mut Live) -> Result<(), StreamLost> {
        while self.in_flight < MAX_IN_FLIGHT && self.in_flight < self.unconfirmed.len() {
            let unconfirmed = &mut self.unconfirmed[self.in_flight];
            let message = DriverMessage {
                kind: Some(driver_message::Kind::Batch(EventBatch {
                    batch_id: unconfirmed.id,
                    events: unconfirmed.batch.events(),
                })),
            };
            live.outbound
                .try_send(message)
                .map_err(|_| StreamLost::SendQueueClosed)?;
            unconfirmed.sent_at = Some(Instant::now());
            self.in_flight += 1;
        }
        Ok(())
    }

    /// Adds `batch` to the newest unsent batch if it takes it, else queues
    /// it as a batch of its own.
    fn take(&mut self, batch: S::Batch) {
        let has_unsent = self.unconfirmed.len() > self.in_flight;
        let batch = match self.unconfirmed.back_mut() {
            Some(newest) if has_unsent => match newest.batch.merge(batch) {
                Ok(()) => return,
                Err(batch) => batch,
            },
            _ => batch,
        };
        self.unconfirmed.push_back(Unconfirmed {
            id: self.next_batch_id,
            batch,
            sent_at: None,
        });
        self.next_batch_id += 1;
    }

    /// Applies a `BatchDurable`: the oldest in-flight batch is stored.
    fn confirm(&mut self, message: BridgeMessage) -> Result<(), StreamLost> {
        let Some(bridge_message::Kind::Durable(durable)) = message.kind else {
            return Ok(());
        };
        let front_id = self.unconfirmed.front().map(|u| u.id);
        if self.in_flight == 0 || front_id != Some(durable.batch_id) {
            return Err(StreamLost::OutOfOrder {
                confirmed: durable.batch_id,
                oldest: front_id,
            });
        }
        let Some(unconfirmed) = self.unconfirmed.pop_front() else {
            return Ok(());
        };
        self.in_flight -= 1;
        if let (Some(sent_at), Some(round_trip)) = (unconfirmed.sent_at, &self.metrics.round_trip) {
            round_trip.observe(sent_at.elapsed().as_secs_f64());
        }
        self.source.durable(unconfirmed.batch, durable);
        Ok(())
    }
}

/// A batch submitted through a [`BatchStream`].
#[derive(Debug)]
pub struct Submitted {
    events: Vec<bridge::Event>,
    done: oneshot::Sender<BatchDurable>,
}

impl Batch for Submitted {
    fn len(&self) -> usize {
        self.events.len()
    }

    fn events(&self) -> Vec<bridge::Event> {
        self.events.clone()
    }
}

/// The stream's end of a [`BatchStream`]: the batches submitted to it.
#[derive(Debug)]
pub struct Submissions {
    queue: mpsc::UnboundedReceiver<Submitted>,
}

impl BatchSource for Submissions {
    type Batch = Submitted;

    async fn recv(&mut self) -> Option<Submitted> {
        self.queue.recv().await
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn durable(&mut self, batch: Submitted, durable: BatchDurable) {
        // A submitter that gave up does not want the answer.
        let _ = batch.done.send(durable);
    }
}

/// The batch was not stored: the stream stopped first. Nothing of it was
/// reported durable; some of it may still have been stored (a resend is
/// idempotent, so the client may send it again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the event stream stopped before the batch was durable")]
pub struct NotStored;

/// Submits batches to an [`EventStream`]; cheap to clone. The stream's
/// source closes when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct BatchStream {
    queue: mpsc::UnboundedSender<Submitted>,
}

/// A [`BatchStream`] and the stream task that stores what it is given
/// (spawn [`EventStream::run`]; it exits once `stop` is signalled and
/// everything submitted is durable, within [`STOP_GRACE`]).
pub fn batch_stream(
    bridge: BridgeClient,
    metrics: StreamMetrics,
    stop: drain::Watch,
) -> (BatchStream, EventStream<Submissions>) {
    let (queue, rx) = mpsc::unbounded_channel();
    (
        BatchStream { queue },
        EventStream::new(bridge, metrics, Submissions { queue: rx }, stop),
    )
}

impl BatchStream {
    /// Submits `events` as one batch of their own and waits until the
    /// bridge says it is durable: the answer counts this batch's events
    /// only. The events must fit one batch
    /// ([`crate::batch_limits::MAX_BATCH_EVENTS`],
    /// [`crate::batch_limits::MAX_BATCH_BYTES`] plus one event); split
    /// larger sets and add up the answers. Dropping the future leaves the
    /// batch to be stored (or not) without telling anyone.
    pub async fn store(&self, events: Vec<bridge::Event>) -> Result<BatchDurable, NotStored> {
        self.submit(events).await.map_err(|_| NotStored)
    }

    /// Submits `events` as one batch of their own; the receiver gets the
    /// bridge's answer once it is durable, or an error if the stream
    /// stopped first. Does not wait.
    pub fn submit(&self, events: Vec<bridge::Event>) -> oneshot::Receiver<BatchDurable> {
        let (done, answer) = oneshot::channel();
        // A stopped stream drops the batch, and with it `done`: the
        // receiver sees it.
        let _ = self.queue.send(Submitted { events, done });
        answer
    }
}
