//! Byte budgets of the event streams: how many bytes of batches (their size
//! as received, protobuf-encoded) the bridge holds that it has read but not
//! yet stored and answered, per stream (`BRIDGE_MAX_STREAM_BYTES`) and for
//! all streams together (`BRIDGE_MAX_QUEUED_BYTES`).
//!
//! A stream's reader reserves a batch's bytes in both budgets before it
//! queues the batch, and waits while either is spent: it stops reading, so
//! HTTP/2 flow control stops the driver, whose devices get `BUSY` once its
//! own bound is reached. Nothing is ever dropped. The reservation travels
//! with the batch and is given back when the batch has been answered (or
//! abandoned at shutdown).
//!
//! Budgets count in KiB (rounded up per batch), so that the semaphores'
//! `u32` permits cover any budget; the bytes actually held are what
//! [`Stats`] shows, and never exceed the budget.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::stats::Stats;

/// The budget of all streams together; each stream takes a [`StreamBudget`]
/// from it.
#[derive(Debug, Clone)]
pub(crate) struct QueueBudget {
    all: Arc<Semaphore>,
    all_kib: u32,
    stream_kib: u32,
    stats: Arc<Stats>,
}

impl QueueBudget {
    /// `max_queued_bytes` for all streams, `max_stream_bytes` for each.
    pub(crate) fn new(max_stream_bytes: u64, max_queued_bytes: u64, stats: Arc<Stats>) -> Self {
        let all_kib = whole_kib(max_queued_bytes);
        Self {
            all: Arc::new(Semaphore::new(all_kib as usize)),
            all_kib,
            stream_kib: whole_kib(max_stream_bytes),
            stats,
        }
    }

    /// The budget of one new stream.
    pub(crate) fn for_stream(&self) -> StreamBudget {
        StreamBudget {
            stream: Arc::new(Semaphore::new(self.stream_kib as usize)),
            stream_kib: self.stream_kib,
            all: self.clone(),
        }
    }
}

/// One stream's budget, drawing on the [`QueueBudget`] too.
#[derive(Debug)]
pub(crate) struct StreamBudget {
    stream: Arc<Semaphore>,
    stream_kib: u32,
    all: QueueBudget,
}

impl StreamBudget {
    /// Reserves `bytes` in this stream's budget, then in all streams',
    /// waiting until both have room. (A batch larger than a budget, which
    /// the configuration's checks rule out, waits for all of it.)
    pub(crate) async fn reserve(&self, bytes: usize) -> Reservation {
        let bytes = bytes as u64;
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        let stats = &self.all.stats;
        // Per stream first: only this stream's reader takes from it, so no
        // two readers wait on each other.
        let stream = acquire(&self.stream, kib.min(self.stream_kib), stats).await;
        let all = acquire(&self.all.all, kib.min(self.all.all_kib), stats).await;
        stats.add_queued(bytes);
        Reservation {
            _permits: (stream, all),
            bytes,
            stats: Arc::clone(stats),
        }
    }
}

/// `permits` of `semaphore`, counted in `streams_over_budget` while they
/// have to be waited for. (The semaphores are never closed, so `None`
/// never happens.)
async fn acquire(semaphore: &Arc<Semaphore>, permits: u32, stats: &Stats) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = Arc::clone(semaphore).try_acquire_many_owned(permits) {
        return Some(permit);
    }
    let _waiting = stats.over_budget();
    Arc::clone(semaphore).acquire_many_owned(permits).await.ok()
}

/// Bytes of one batch held in the budgets until dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    _permits: (Option<OwnedSemaphorePermit>, Option<OwnedSemaphorePermit>),
    bytes: u64,
    stats: Arc<Stats>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.stats.remove_queued(self.bytes);
    }
}

/// `bytes` in whole KiB, at most `u32::MAX`.
fn whole_kib(bytes: u64) -> u32 {
    u32::try_from(bytes / 1024).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Arc<Stats> {
        Arc::new(Stats::new())
    }

    #[tokio::test]
    async fn a_stream_waits_when_its_budget_is_spent_and_goes_on_when_bytes_are_answered() {
        let stats = stats();
        let budget = QueueBudget::new(4096, 1 << 20, Arc::clone(&stats));
        let stream = budget.for_stream();
        let first = stream.reserve(3000).await;
        let mut second = Box::pin(stream.reserve(1500));
        assert!(
            futures::poll!(&mut second).is_pending(),
            "3 KiB + 2 KiB exceed the stream's 4 KiB"
        );
        assert_eq!(stats.snapshot().streams_over_budget, 1);
        assert_eq!(stats.snapshot().queued_bytes, 3000);
        drop(first);
        drop(second);
        assert_eq!(stats.snapshot().streams_over_budget, 0);
        let _second = stream.reserve(1500).await;
        assert_eq!(stats.snapshot().queued_bytes, 1500);
        assert_eq!(stats.snapshot().queued_bytes_peak, 3000);
    }

    #[tokio::test]
    async fn streams_together_wait_when_all_streams_budget_is_spent() {
        let stats = stats();
        let budget = QueueBudget::new(4096, 6144, Arc::clone(&stats));
        let (a, b) = (budget.for_stream(), budget.for_stream());
        let held = a.reserve(4096).await;
        let mut blocked = Box::pin(b.reserve(4096));
        assert!(
            futures::poll!(&mut blocked).is_pending(),
            "4 KiB + 4 KiB exceed the 6 KiB of all streams"
        );
        drop(blocked);
        let _small = b.reserve(2048).await;
        drop(held);
        let _b = b.reserve(2048).await;
        assert!(stats.snapshot().queued_bytes_peak <= 6144);
    }
}
