//! Live counters of one bridge process, cheap enough to bump per batch:
//! the process title and the logs read them, nothing decides anything on
//! them.

use std::sync::atomic::{AtomicU64, Ordering};

/// The bridge's counters. Shared as `Arc<Stats>`; every field only grows
/// except `connected_drivers`.
#[derive(Debug, Default)]
pub struct Stats {
    /// `StreamEvents` streams open now (one per connected driver process).
    connected_drivers: AtomicU64,
    /// Events appended to the events stream ([`drover_schema::EVENTS`])
    /// since start.
    events_stored: AtomicU64,
    /// Events skipped as already stored (resends after a lost ack).
    duplicates: AtomicU64,
    /// Event-script calls that failed and were retried (Redis down or slow).
    store_retries: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// See [`Stats`].
    pub connected_drivers: u64,
    /// See [`Stats`].
    pub events_stored: u64,
    /// See [`Stats`].
    pub duplicates: u64,
    /// See [`Stats`].
    pub store_retries: u64,
}

impl Stats {
    /// All counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads every counter (each one atomically, not all together).
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connected_drivers: self.connected_drivers.load(Ordering::Relaxed),
            events_stored: self.events_stored.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            store_retries: self.store_retries.load(Ordering::Relaxed),
        }
    }

    /// Counts a driver stream until the returned guard is dropped.
    pub(crate) fn driver_connected(&self) -> ConnectedDriver<'_> {
        self.connected_drivers.fetch_add(1, Ordering::Relaxed);
        ConnectedDriver { stats: self }
    }

    pub(crate) fn add_stored(&self, stored: u64, duplicates: u64) {
        self.events_stored.fetch_add(stored, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
    }

    pub(crate) fn add_store_retry(&self) {
        self.store_retries.fetch_add(1, Ordering::Relaxed);
    }
}

/// Holds one count in `connected_drivers`.
#[derive(Debug)]
pub(crate) struct ConnectedDriver<'a> {
    stats: &'a Stats,
}

impl Drop for ConnectedDriver<'_> {
    fn drop(&mut self) {
        self.stats.connected_drivers.fetch_sub(1, Ordering::Relaxed);
    }
}
