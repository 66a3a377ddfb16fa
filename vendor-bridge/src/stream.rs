//! One driver's `StreamEvents` stream after its `hello`, as two tasks joined
//! by a bounded queue:
//!
//! ```text
//! gRPC ──▶ reader ──[ValidBatch × BATCH_QUEUE, bytes within the budgets]──▶ applier ──▶ Redis (one script per call)
//!           check                                                              └──▶ BatchDurable × n, in order ──▶ gRPC
//! ```
//!
//! The reader decodes and checks batches while the applier waits for Redis.
//! The applier runs one script at a time, so a stream's batches are stored
//! strictly in order (each device's events stay in id order); batches that
//! are already waiting when a call starts go into the same call (one AOF
//! fsync for all of them) and are answered one by one, in order. A failed
//! call is retried with the same batches until Redis takes them or the
//! driver goes away: nothing is answered that was not stored. While the
//! [`DurabilityGate`] is closed (Redis not verified to fsync every write),
//! the applier holds its batches and calls nothing; it goes on when the
//! gate opens.
//!
//! Back-pressure: when the queue is full, or the stream's or all streams'
//! byte budget ([`crate::budget`]) is spent, the reader stops reading, and
//! HTTP/2 flow control stops the driver.

use std::sync::Arc;
use std::time::Duration;

use drover_proto::bridge::driver_message::Kind;
use drover_proto::bridge::{BatchDurable, BridgeMessage, DriverMessage, bridge_message};
use drover_service::backoff::Backoff;
use drover_service::drain;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;
use tonic::{Status, Streaming};
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::batch::ValidBatch;
use crate::budget::{Reservation, StreamBudget};
use crate::durability::DurabilityGate;
use crate::stats::Stats;
use crate::store::{EventWriter, Store};

/// Batches a stream may have received but not yet stored.
const BATCH_QUEUE: usize = 64;
/// Answers a stream may have ready before the driver reads them.
const REPLY_QUEUE: usize = 256;
/// One script call takes further waiting batches only while it carries
/// fewer events than this. A script blocks Redis for all its clients while
/// it runs (about 10 µs per event): 2,048 events keep that near 20 ms, so
/// that registry calls and other streams are never held up for long, while
/// still amortising each call's fsync over many events...
const MAX_EVENTS_PER_CALL: usize = 2048;
/// ...and fewer bytes of serials, bodies and notices than this. Bounds how
/// long one script blocks Redis (a few milliseconds).
const MAX_BYTES_PER_CALL: usize = 4 << 20;
/// Retry delays after a failed call.
const RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
/// Every this many failed attempts in a row, the retry loop logs an error.
const RETRIES_PER_ERROR_LOG: u32 = 50;

/// The response stream of `StreamEvents`.
pub(crate) type Replies = ReceiverStream<Result<BridgeMessage, Status>>;

/// What a stream's tasks watch to stop, and where they run.
#[derive(Debug, Clone)]
pub(crate) struct Lifecycle {
    /// Signalled when the bridge shuts down: stop reading new batches, store
    /// and answer those already read, end the stream with `UNAVAILABLE`.
    pub(crate) draining: drain::Watch,
    /// Signalled when the shutdown grace period is over: stop retrying.
    pub(crate) abandon: drain::Watch,
    /// Every stream's reader and applier: the shutdown awaits them.
    pub(crate) tasks: TaskTracker,
}

/// What the reader hands the applier.
enum Inbound {
    /// A checked batch to store, and its bytes held in the budgets until it
    /// is answered.
    Batch(ValidBatch, Reservation),
    /// The stream must end with this status once earlier batches are done.
    Fail(Status),
}

/// What one stream works with.
pub(crate) struct StreamParts {
    /// The driver that said hello.
    pub(crate) driver: String,
    /// Stores its batches.
    pub(crate) writer: EventWriter,
    /// The restart cleanup of the driver's `hello`, when it could not run
    /// before the stream opened (the gate was closed): the applier runs it
    /// first, as soon as the gate opens. `(store, instance)`.
    pub(crate) restart_cleanup: Option<(Store, String)>,
    /// Whether the applier may store.
    pub(crate) gate: Arc<DurabilityGate>,
    /// The stream's byte budget.
    pub(crate) budget: StreamBudget,
    /// The bridge's counters.
    pub(crate) stats: Arc<Stats>,
}

/// Starts the tasks of one stream; returns the stream of answers.
pub(crate) fn start(inbound: Streaming<DriverMessage>, parts: StreamParts, lifecycle: Lifecycle) -> Replies {
    let StreamParts {
        driver,
        writer,
        restart_cleanup,
        gate,
        budget,
        stats,
    } = parts;
    let (batches_tx, batches_rx) = mpsc::channel(BATCH_QUEUE);
    let (replies_tx, replies_rx) = mpsc::channel(REPLY_QUEUE);
    let span = info_span!("stream", driver = %driver);
    let tasks = lifecycle.tasks;
    tasks.spawn(read(inbound, batches_tx, budget, lifecycle.draining).instrument(span.clone()));
    let applier = Applier {
        driver,
        writer,
        restart_cleanup,
        gate,
        replies: replies_tx,
        stats,
        abandon: lifecycle.abandon,
    };
    tasks.spawn(applier.run(batches_rx).instrument(span));
    ReceiverStream::new(replies_rx)
}

/// The reader: checks each batch, reserves its bytes and queues it, until
/// the driver ends the stream, sends something invalid, or the bridge
/// drains.
async fn read(
    mut inbound: Streaming<DriverMessage>,
    batches: mpsc::Sender<Inbound>,
    budget: StreamBudget,
    draining: drain::Watch,
) {
    let shutting_down = || Inbound::Fail(Status::unavailable("the vendor-bridge is shutting down; reconnect"));
    loop {
        let message = tokio::select! {
            biased;
            () = draining.signaled() => {
                let _ = batches.send(shutting_down()).await;
                return;
            }
            message = inbound.message() => message,
        };
        let next = match message {
            Ok(Some(DriverMessage {
                kind: Some(Kind::Batch(batch)),
            })) => {
                let bytes = batch.encoded_len();
                match ValidBatch::check(batch) {
                    // Waiting here for room in the budgets is the
                    // back-pressure: nothing more is read from the stream.
                    Ok(batch) => tokio::select! {
                        biased;
                        () = draining.signaled() => shutting_down(),
                        reservation = budget.reserve(bytes) => Inbound::Batch(batch, reservation),
                    },
                    Err(invalid) => {
                        error!(error = %invalid, "refusing an invalid batch; ending the stream");
                        Inbound::Fail(Status::invalid_argument(invalid.to_string()))
                    }
                }
            }
            Ok(Some(DriverMessage {
                kind: Some(Kind::Hello(_)),
            })) => Inbound::Fail(Status::invalid_argument("hello is only allowed as the first message")),
            Ok(Some(DriverMessage { kind: None })) => Inbound::Fail(Status::invalid_argument("empty DriverMessage")),
            Ok(None) => {
                debug!("the driver closed its side of the stream");
                return;
            }
            // A message too large or undecodable, or the driver gone: end
            // the stream with the reason (harmless if nobody listens).
            Err(status) => {
                debug!(%status, "the driver's stream failed");
                Inbound::Fail(status)
            }
        };
        let failed = matches!(next, Inbound::Fail(..));
        if batches.send(next).await.is_err() || failed {
            return;
        }
    }
}

/// The applier: stores queued batches in order and answers each.
struct Applier {
    driver: String,
    writer: EventWriter,
    restart_cleanup: Option<(Store, String)>,
    gate: Arc<DurabilityGate>,
    replies: mpsc::Sender<Result<BridgeMessage, Status>>,
    stats: Arc<Stats>,
    abandon: drain::Watch,
}

impl Applier {
    async fn run(mut self, mut batches: mpsc::Receiver<Inbound>) {
        let stats = Arc::clone(&self.stats);
        let _connected = stats.driver_connected();
        // Batches queue meanwhile, within the budgets.
        if !self.clean_up_restart().await {
            return;
        }
        let mut call: Vec<ValidBatch> = Vec::new();
        // The budgets' hold on the batches of `call`, given back once they
        // are answered.
        let mut reservations: Vec<Reservation> = Vec::new();
        let mut ending: Option<Status> = None;
        while ending.is_none() {
            // Wait for a batch, then take every batch already waiting, up to
            // the limits of one call.
            match batches.recv().await {
                Some(Inbound::Batch(batch, reservation)) => {
                    call.push(batch);
                    reservations.push(reservation);
                }
                Some(Inbound::Fail(status)) => ending = Some(status),
                None => break,
            }
            let (mut events, mut bytes) = call.first().map_or((0, 0), |b| (b.events.len(), b.payload_bytes));
            while ending.is_none() && events < MAX_EVENTS_PER_CALL && bytes < MAX_BYTES_PER_CALL {
                match batches.try_recv() {
                    Ok(Inbound::Batch(batch, reservation)) => {
                        events += batch.events.len();
                        bytes += batch.payload_bytes;
                        call.push(batch);
                        reservations.push(reservation);
                    }
                    Ok(Inbound::Fail(status)) => ending = Some(status),
                    Err(_) => break,
                }
            }
            if !call.is_empty() {
                let Some(stored) = self.store(&call).await else {
                    return;
                };
                if !self.answer(call.drain(..), stored).await {
                    return;
                }
                reservations.clear();
            }
        }
        if let Some(status) = ending {
            let _ = self.replies.send(Err(status)).await;
        }
    }

    /// Waits until the gate is open; false when the driver went away or
    /// the shutdown grace ran out first.
    async fn until_durable(&self) -> bool {
        if self.gate.is_open() {
            return true;
        }
        debug!("holding the stream's batches until Redis is verified durable");
        let _held = self.stats.awaiting_durability();
        tokio::select! {
            () = self.gate.opened() => true,
            () = self.replies.closed() => false,
            () = self.abandon.signaled() => false,
        }
    }

    /// The restart cleanup left over from the `hello`, if any, run as soon
    /// as the gate opens and retried like a store; false when the stream is
    /// over first.
    async fn clean_up_restart(&mut self) -> bool {
        let Some((store, instance)) = self.restart_cleanup.take() else {
            return true;
        };
        let mut backoff = RETRY;
        loop {
            if !self.until_durable().await {
                return false;
            }
            let result = tokio::select! {
                result = store.driver_restart(&self.driver, &instance) => result,
                () = self.replies.closed() => return false,
                () = self.abandon.signaled() => return false,
            };
            match result {
                Ok(offline) => {
                    if offline > 0 {
                        info!(instance = %instance, offline, "driver restarted: its previous instance's devices are offline");
                    }
                    return true;
                }
                Err(err) => {
                    self.stats.add_redis_error();
                    self.gate.after_failure(&err);
                    warn!(error = %err, "restart cleanup failed; retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = self.replies.closed() => return false,
                () = self.abandon.signaled() => return false,
            }
        }
    }

    /// Stores `call`, retrying until it succeeds; `None` when the driver went
    /// away or the shutdown grace ran out first.
    async fn store(&mut self, call: &[ValidBatch]) -> Option<Vec<u32>> {
        let mut backoff = RETRY;
        let mut failures: u32 = 0;
        loop {
            if !self.until_durable().await {
                return None;
            }
            let result = tokio::select! {
                result = self.writer.store(&self.driver, call) => result,
                () = self.replies.closed() => return None,
                () = self.abandon.signaled() => return None,
            };
            let err = match result {
                Ok(stored) => {
                    self.stats.add_unmatched_results(self.writer.take_unmatched_results());
                    if failures > 0 {
                        info!(failures, "Redis stores events again");
                    }
                    return Some(stored);
                }
                Err(err) => err,
            };
            failures += 1;
            self.stats.add_store_retry();
            self.gate.after_failure(&err);
            if failures == 1 {
                warn!(error = %err, batches = call.len(), "cannot store events; retrying until Redis takes them");
            } else if failures.is_multiple_of(RETRIES_PER_ERROR_LOG) {
                error!(error = %err, failures, "still cannot store events in Redis");
            } else {
                tracing::debug!(error = %err, failures, "cannot store events yet");
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = self.replies.closed() => return None,
                () = self.abandon.signaled() => return None,
            }
        }
    }

    /// Sends one `BatchDurable` per batch, in order; false when the driver
    /// went away.
    async fn answer(&self, call: impl Iterator<Item = ValidBatch>, stored: Vec<u32>) -> bool {
        let (mut batches, mut total_stored, mut total_duplicates) = (0u64, 0u64, 0u64);
        let mut delivered = true;
        for (batch, stored) in call.zip(stored) {
            batches += 1;
            let events = u32::try_from(batch.events.len()).unwrap_or(u32::MAX);
            let duplicates = events.saturating_sub(stored);
            total_stored += u64::from(stored);
            total_duplicates += u64::from(duplicates);
            let durable = BridgeMessage {
                kind: Some(bridge_message::Kind::Durable(BatchDurable {
                    batch_id: batch.batch_id,
                    stored,
                    duplicates,
                })),
            };
            if delivered {
                delivered = tokio::select! {
                    sent = self.replies.send(Ok(durable)) => sent.is_ok(),
                    // A driver that stops reading must not hold the task
                    // past the shutdown grace.
                    () = self.abandon.signaled() => false,
                };
            }
        }
        self.stats.add_stored(batches, total_stored, total_duplicates);
        delivered
    }
}
