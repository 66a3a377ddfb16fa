//! Live counters of one bridge process, cheap enough to bump per batch:
//! the process title, the logs and `/metrics` ([`crate::metrics`]) read
//! them, nothing decides anything on them.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

/// The bridge's counters. Shared as `Arc<Stats>`; every field only grows
/// except the gauges `connected_drivers`, `queued_bytes`,
/// `streams_awaiting_durability`, `streams_over_budget`, `durability` and
/// `serving`.
#[derive(Debug, Default)]
pub struct Stats {
    /// What `grpc.health.v1` says now: true while `SERVING` (set by the
    /// health watcher whenever it changes the status).
    serving: AtomicBool,
    /// `StreamEvents` streams open now (one per connected driver process).
    connected_drivers: AtomicU64,
    /// Events appended to the events stream ([`drover_schema::EVENTS`])
    /// since start.
    events_stored: AtomicU64,
    /// Events skipped as already stored (resends after a lost ack).
    duplicates: AtomicU64,
    /// Batches stored (or found already stored) and answered with
    /// `BatchDurable`.
    batches: AtomicU64,
    /// Event-script calls that failed and were retried (Redis down or slow).
    store_retries: AtomicU64,
    /// Redis operations that failed, of every kind: the health watcher's
    /// `PING`s and durability checks, event-script calls (each retry), the
    /// unary calls and restart cleanups.
    redis_errors: AtomicU64,
    /// Bytes of batches (as received) read from the streams and not yet
    /// answered, all streams together: at most `BRIDGE_MAX_QUEUED_BYTES`.
    queued_bytes: AtomicU64,
    /// The most `queued_bytes` has been since start.
    queued_bytes_peak: AtomicU64,
    /// Streams whose applier holds batches now because Redis is not
    /// verified durable (`BRIDGE_DURABILITY=strict`).
    streams_awaiting_durability: AtomicU64,
    /// Streams whose reader waits now for room in a byte budget (its own or
    /// all streams'): the bridge holds these drivers back.
    streams_over_budget: AtomicU64,
    /// The last durability verdict, a [`DurabilityStatus`] as a number.
    durability: AtomicU8,
    /// Command results for durable commands the device was never sent:
    /// ignored (the command stays pending).
    unmatched_results: AtomicU64,
    /// Durable commands handed to drivers (`TakeCommands`), redeliveries
    /// included.
    ledger_sent: AtomicU64,
    /// `TakeCommands` calls admitted, empty answers included: what a
    /// session costs beyond `OpenSession` (none for an empty ledger).
    take_commands_calls: AtomicU64,
    /// Durable commands the ledger sweep expired (ttl passed before a
    /// result).
    ledger_expired: AtomicU64,
}

/// What the bridge knows of Redis's durability, as operators see it (the
/// process title, [`StatsSnapshot::durability`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum DurabilityStatus {
    /// Not checked yet, or Redis does not answer: nothing is stored.
    #[default]
    Unchecked,
    /// Redis fsyncs every write: acknowledgements mean on disk.
    Fsynced,
    /// Redis is weaker than required (or refuses `CONFIG GET`) and
    /// `BRIDGE_DURABILITY=strict`: nothing is stored or acknowledged.
    WeakRefusing,
    /// Redis is weaker than required and `BRIDGE_DURABILITY=relaxed`:
    /// events are stored and acknowledged, and can be lost in a crash.
    WeakAccepted,
    /// Redis was set up with another number of event partitions than
    /// `REDIS_EVENT_PARTITIONS`: nothing is stored, whatever the policy.
    LayoutMismatch,
}

impl DurabilityStatus {
    /// Every state, in the order of their numbers.
    pub const ALL: [Self; 5] = [
        Self::Unchecked,
        Self::Fsynced,
        Self::WeakRefusing,
        Self::WeakAccepted,
        Self::LayoutMismatch,
    ];

    /// Its name in metrics (`drover_bridge_durability{state="..."}`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Unchecked => "unchecked",
            Self::Fsynced => "fsynced",
            Self::WeakRefusing => "weak_refusing",
            Self::WeakAccepted => "weak_accepted",
            Self::LayoutMismatch => "layout_mismatch",
        }
    }

    fn from_u8(value: u8) -> Self {
        Self::ALL.get(usize::from(value)).copied().unwrap_or_default()
    }

    /// How the process title shows it: nothing when all is well.
    pub fn title_suffix(self) -> &'static str {
        match self {
            Self::Fsynced => "",
            Self::Unchecked => " durability: unchecked",
            Self::WeakRefusing => " durability: WEAK, refusing",
            Self::WeakAccepted => " durability: WEAK (relaxed)",
            Self::LayoutMismatch => " layout: MISMATCH, refusing",
        }
    }
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// See [`Stats`].
    pub serving: bool,
    /// See [`Stats`].
    pub connected_drivers: u64,
    /// See [`Stats`].
    pub events_stored: u64,
    /// See [`Stats`].
    pub duplicates: u64,
    /// See [`Stats`].
    pub batches: u64,
    /// See [`Stats`].
    pub store_retries: u64,
    /// See [`Stats`].
    pub redis_errors: u64,
    /// See [`Stats`].
    pub queued_bytes: u64,
    /// See [`Stats`].
    pub queued_bytes_peak: u64,
    /// See [`Stats`].
    pub streams_awaiting_durability: u64,
    /// See [`Stats`].
    pub streams_over_budget: u64,
    /// See [`Stats`].
    pub durability: DurabilityStatus,
    /// See [`Stats`].
    pub unmatched_results: u64,
    /// See [`Stats`].
    pub ledger_sent: u64,
    /// See [`Stats`].
    pub take_commands_calls: u64,
    /// See [`Stats`].
    pub ledger_expired: u64,
}

impl Stats {
    /// All counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads every counter (each one atomically, not all together).
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            serving: self.serving.load(Ordering::Relaxed),
            connected_drivers: self.connected_drivers.load(Ordering::Relaxed),
            events_stored: self.events_stored.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            store_retries: self.store_retries.load(Ordering::Relaxed),
            redis_errors: self.redis_errors.load(Ordering::Relaxed),
            queued_bytes: self.queued_bytes.load(Ordering::Relaxed),
            queued_bytes_peak: self.queued_bytes_peak.load(Ordering::Relaxed),
            streams_awaiting_durability: self.streams_awaiting_durability.load(Ordering::Relaxed),
            streams_over_budget: self.streams_over_budget.load(Ordering::Relaxed),
            durability: DurabilityStatus::from_u8(self.durability.load(Ordering::Relaxed)),
            unmatched_results: self.unmatched_results.load(Ordering::Relaxed),
            ledger_sent: self.ledger_sent.load(Ordering::Relaxed),
            take_commands_calls: self.take_commands_calls.load(Ordering::Relaxed),
            ledger_expired: self.ledger_expired.load(Ordering::Relaxed),
        }
    }

    /// Counts a driver stream until the returned guard is dropped.
    pub(crate) fn driver_connected(&self) -> Gauged<'_> {
        Gauged::new(&self.connected_drivers)
    }

    /// Counts a stream holding its batches until the guard is dropped.
    pub(crate) fn awaiting_durability(&self) -> Gauged<'_> {
        Gauged::new(&self.streams_awaiting_durability)
    }

    /// Counts a stream waiting for room in a byte budget until the guard is
    /// dropped.
    pub(crate) fn over_budget(&self) -> Gauged<'_> {
        Gauged::new(&self.streams_over_budget)
    }

    pub(crate) fn add_stored(&self, batches: u64, stored: u64, duplicates: u64) {
        self.batches.fetch_add(batches, Ordering::Relaxed);
        self.events_stored.fetch_add(stored, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
    }

    /// An event-script call failed and will be retried (also a Redis error).
    pub(crate) fn add_store_retry(&self) {
        self.store_retries.fetch_add(1, Ordering::Relaxed);
        self.add_redis_error();
    }

    pub(crate) fn add_unmatched_results(&self, results: u64) {
        self.unmatched_results.fetch_add(results, Ordering::Relaxed);
    }

    pub(crate) fn add_ledger_sent(&self, commands: u64) {
        self.ledger_sent.fetch_add(commands, Ordering::Relaxed);
    }

    pub(crate) fn add_ledger_expired(&self, commands: u64) {
        self.ledger_expired.fetch_add(commands, Ordering::Relaxed);
    }

    pub(crate) fn add_take_commands_call(&self) {
        self.take_commands_calls.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_redis_error(&self) {
        self.redis_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Relaxed);
    }

    pub(crate) fn add_queued(&self, bytes: u64) {
        let now = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.queued_bytes_peak.fetch_max(now, Ordering::Relaxed);
    }

    pub(crate) fn remove_queued(&self, bytes: u64) {
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub(crate) fn set_durability(&self, status: DurabilityStatus) {
        self.durability.store(status as u8, Ordering::Relaxed);
    }
}

/// Holds one count in a gauge (`connected_drivers`,
/// `streams_awaiting_durability`, `streams_over_budget`) until dropped.
#[derive(Debug)]
pub(crate) struct Gauged<'a> {
    gauge: &'a AtomicU64,
}

impl<'a> Gauged<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self { gauge }
    }
}

impl Drop for Gauged<'_> {
    fn drop(&mut self) {
        self.gauge.fetch_sub(1, Ordering::Relaxed);
    }
}
