//! A request's valid records into the event stream (docs/HTTP.md, "The
//! gateway"): split into batches that fit one message to the bridge,
//! submitted in order on the process's one `StreamEvents` stream (the
//! bridge applies one stream's batches in order, so the device's events
//! reach Redis in id order), and counted once every batch is durable.
//!
//! A request is answered 200 only when all its batches are durable. When
//! they are not within `HTTP_STORE_TIMEOUT` (the bridge or Redis is down)
//! the answer is 503 and nothing is acknowledged; the batches stay queued
//! on the stream (a resend is idempotent), and the request's share of the
//! in-flight budget stays held until they are durable or dropped, so that
//! retries during an outage cannot pile copies up without bound.

use std::time::Duration;

use cwp::Serial;
use drover_edge::BatchStream;
use drover_edge::batch_limits::{MAX_BATCH_BYTES, MAX_BATCH_EVENTS};
use drover_http_ingest::Record;
use drover_proto::bridge::{BatchDurable, Event};
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use crate::body::Reservation;

/// What the bridge said of a request's events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    /// Newly stored.
    pub stored: u64,
    /// Already stored before (at or below the device's high-water mark).
    pub duplicates: u64,
}

/// The events were not all durable in time; nothing is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the events were not durable within the store timeout")]
pub struct NotDurable;

/// `records` as batches of bridge events, each within the bridge's limits.
pub fn batches(serial: &Serial, records: &[Record], received_ms: u64) -> Vec<Vec<Event>> {
    let serial = serial.to_string();
    let mut batches = Vec::new();
    let mut batch: Vec<Event> = Vec::new();
    let mut bytes = 0;
    for record in records {
        if !batch.is_empty() && (batch.len() == MAX_BATCH_EVENTS || bytes + record.body.len() > MAX_BATCH_BYTES) {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += record.body.len();
        batch.push(Event {
            serial: serial.clone(),
            event_id: record.event_id,
            time_ms: record.time_ms,
            kind: u32::from(record.kind),
            body: record.body.clone(),
            received_ms,
        });
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// Submits `batches` in order and waits, at most `timeout`, until all are
/// durable. On a timeout the rest is left to the stream, `reservation`
/// held (on `tasks`) until it is durable or dropped.
pub async fn store(
    stream: &BatchStream,
    batches: Vec<Vec<Event>>,
    timeout: Duration,
    reservation: Reservation,
    tasks: &TaskTracker,
) -> Result<Stored, NotDurable> {
    let mut pending: Vec<oneshot::Receiver<BatchDurable>> =
        batches.into_iter().map(|batch| stream.submit(batch)).collect();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stored = Stored::default();
    let mut next = 0;
    while next < pending.len() {
        match tokio::time::timeout_at(deadline, &mut pending[next]).await {
            Ok(Ok(durable)) => {
                stored.stored += u64::from(durable.stored);
                stored.duplicates += u64::from(durable.duplicates);
                next += 1;
            }
            // The stream stopped (shutdown) before the batch was durable.
            Ok(Err(_)) => return Err(NotDurable),
            Err(_) => {
                let rest: Vec<_> = pending.drain(next..).collect();
                tasks.spawn(async move {
                    for answer in rest {
                        let _ = answer.await;
                    }
                    drop(reservation);
                });
                return Err(NotDurable);
            }
        }
    }
    drop(reservation);
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn record(event_id: u64, body_len: usize) -> Record {
        Record {
            line: event_id,
            event_id,
            time_ms: 0,
            kind: 1,
            body: Bytes::from(vec![b'x'; body_len]),
        }
    }

    #[test]
    fn batches_keep_the_order_and_fit_the_bridge_limits() {
        let serial: Serial = "CTRL-1".parse().unwrap();
        let records: Vec<Record> = (1..=5000).map(|id| record(id, 10)).collect();
        let batches = batches(&serial, &records, 7);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            [MAX_BATCH_EVENTS, MAX_BATCH_EVENTS, 5000 - 2 * MAX_BATCH_EVENTS]
        );
        let ids: Vec<u64> = batches.iter().flatten().map(|e| e.event_id).collect();
        assert_eq!(ids, (1..=5000).collect::<Vec<_>>());
        // By bytes: 60,000-byte bodies, 17 to a MiB.
        let big: Vec<Record> = (1..=40).map(|id| record(id, 60_000)).collect();
        let batches = super::batches(&serial, &big, 7);
        assert!(
            batches
                .iter()
                .all(|b| b.iter().map(|e| e.body.len()).sum::<usize>() <= MAX_BATCH_BYTES)
        );
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 40);
        assert!(super::batches(&serial, &[], 7).is_empty());
    }
}
