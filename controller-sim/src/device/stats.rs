//! What a fleet of simulated devices measured, shared by all of them:
//! atomic counters, and three HDR histograms behind mutexes (locked once
//! per received `ACK` or handshake, never across an `.await`).
//!
//! A [`StatsSnapshot`] and the [`LatencyHistograms`] are what one process
//! measured; several processes' (`controller-sim --procs`) are merged with
//! [`StatsSnapshot::absorb`] and [`LatencyHistograms::absorb`]: counters
//! add, histograms add bucket by bucket (percentiles are never averaged).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cwp::{ByeReason, ErrorCode};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Error codes counted one by one: every code the spec defines (1–14) has
/// its slot; slot 0 collects codes it does not define.
const ERROR_SLOTS: usize = 15;
/// `BYE` reasons counted one by one (0–3); slot 4 collects the others.
const BYE_SLOTS: usize = 5;
/// Latencies above one hour are recorded as one hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Counters and latency histograms shared by every device of a run.
#[derive(Debug)]
pub struct Stats {
    /// When the run started; the handshake rate is measured from here.
    started: Instant,
    /// Sessions currently established (after `WELCOME`, until they end).
    connected: AtomicI64,
    /// Devices that completed at least one handshake.
    devices_connected: AtomicU64,
    /// When the latest first handshake of a device completed, µs after
    /// `started`.
    last_first_handshake_us: AtomicU64,
    /// Sessions the device dropped on purpose (scenario churn).
    churn_drops: AtomicU64,
    handshakes: AtomicU64,
    connect_failures: AtomicU64,
    handshake_failures: AtomicU64,
    disconnects: AtomicU64,
    reconnects: AtomicU64,
    events_sent: AtomicU64,
    events_resent: AtomicU64,
    events_acked: AtomicU64,
    events_skipped: AtomicU64,
    commands_received: AtomicU64,
    commands_answered: AtomicU64,
    pings_sent: AtomicU64,
    busy_retries: AtomicU64,
    rewinds: AtomicU64,
    unexpected_frames: AtomicU64,
    acks_beyond_sent: AtomicU64,
    last_event_id_regressions: AtomicU64,
    id_jumps: AtomicU64,
    errors: [AtomicU64; ERROR_SLOTS],
    byes: [AtomicU64; BYE_SLOTS],
    /// Upload `BLOCK` payload sent for the first time, and again.
    upload_bytes_sent: AtomicU64,
    upload_bytes_resent: AtomicU64,
    /// Sum of every advance of a `durable_offset`.
    upload_bytes_durable: AtomicU64,
    uploads_completed: AtomicU64,
    /// Payload of the completed uploads.
    upload_bytes_completed: AtomicU64,
    upload_mismatches: AtomicU64,
    upload_refusals: AtomicU64,
    /// `UPLOAD_BEGIN`s answered with an offset above 0.
    upload_resumes: AtomicU64,
    /// `durable_offset` below one reported before: the server lost data.
    upload_offset_regressions: AtomicU64,
    /// The first `UPLOAD_BEGIN` and the last `UPLOAD_DONE OK` of the run,
    /// µs after `started` (0: none yet); their span is the upload time.
    upload_first_begin_us: AtomicU64,
    upload_last_done_us: AtomicU64,
    /// The file transfers (rare enough for a lock).
    files: Mutex<super::FileSummary>,
    /// Woken at every completed upload.
    upload_completion: Notify,
    /// Send of an event → arrival of the `ACK` covering it, µs.
    ack_latency: Mutex<Histogram<u64>>,
    /// TCP connect → `WELCOME`, µs.
    handshake_latency: Mutex<Histogram<u64>>,
    /// `COMMAND` received → `ACK` of its result event, µs (includes the
    /// behaviour's command delay).
    command_latency: Mutex<Histogram<u64>>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

/// An empty latency histogram: 1 µs to one hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// A duration in whole µs, at least 1 (the histogram's lowest value).
pub(crate) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn lock(histogram: &Mutex<Histogram<u64>>) -> MutexGuard<'_, Histogram<u64>> {
    // A panic while recording leaves a histogram that is still usable.
    histogram.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Stats {
    /// Empty statistics; the run starts now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            connected: AtomicI64::new(0),
            devices_connected: AtomicU64::new(0),
            last_first_handshake_us: AtomicU64::new(0),
            churn_drops: AtomicU64::new(0),
            handshakes: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            events_sent: AtomicU64::new(0),
            events_resent: AtomicU64::new(0),
            events_acked: AtomicU64::new(0),
            events_skipped: AtomicU64::new(0),
            commands_received: AtomicU64::new(0),
            commands_answered: AtomicU64::new(0),
            pings_sent: AtomicU64::new(0),
            busy_retries: AtomicU64::new(0),
            rewinds: AtomicU64::new(0),
            unexpected_frames: AtomicU64::new(0),
            acks_beyond_sent: AtomicU64::new(0),
            last_event_id_regressions: AtomicU64::new(0),
            id_jumps: AtomicU64::new(0),
            errors: Default::default(),
            byes: Default::default(),
            upload_bytes_sent: AtomicU64::new(0),
            upload_bytes_resent: AtomicU64::new(0),
            upload_bytes_durable: AtomicU64::new(0),
            uploads_completed: AtomicU64::new(0),
            upload_bytes_completed: AtomicU64::new(0),
            upload_mismatches: AtomicU64::new(0),
            upload_refusals: AtomicU64::new(0),
            upload_resumes: AtomicU64::new(0),
            upload_offset_regressions: AtomicU64::new(0),
            upload_first_begin_us: AtomicU64::new(u64::MAX),
            upload_last_done_us: AtomicU64::new(0),
            files: Mutex::default(),
            upload_completion: Notify::new(),
            ack_latency: Mutex::new(histogram()),
            handshake_latency: Mutex::new(histogram()),
            command_latency: Mutex::new(histogram()),
        }
    }

    /// When the run started.
    pub fn started(&self) -> Instant {
        self.started
    }

    pub(crate) fn session_opened(&self, first: bool, handshake: Duration) {
        self.handshakes.fetch_add(1, Relaxed);
        self.connected.fetch_add(1, Relaxed);
        if first {
            self.devices_connected.fetch_add(1, Relaxed);
            self.last_first_handshake_us
                .fetch_max(micros(self.started.elapsed()), Relaxed);
        }
        lock(&self.handshake_latency).saturating_record(micros(handshake));
    }

    pub(crate) fn session_closed(&self) {
        self.connected.fetch_sub(1, Relaxed);
    }

    pub(crate) fn connect_failed(&self) {
        self.connect_failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn handshake_failed(&self) {
        self.handshake_failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn disconnected(&self) {
        self.disconnects.fetch_add(1, Relaxed);
    }

    pub(crate) fn reconnecting(&self) {
        self.reconnects.fetch_add(1, Relaxed);
    }

    pub(crate) fn events_sent(&self, first: u64, resent: u64) {
        if first > 0 {
            self.events_sent.fetch_add(first, Relaxed);
        }
        if resent > 0 {
            self.events_resent.fetch_add(resent, Relaxed);
        }
    }

    pub(crate) fn events_skipped(&self, skipped: u64) {
        self.events_skipped.fetch_add(skipped, Relaxed);
    }

    pub(crate) fn events_acked(&self, acked: u64) {
        self.events_acked.fetch_add(acked, Relaxed);
    }

    /// The ack latency histogram (µs), for one `ACK`'s worth of samples.
    pub(crate) fn ack_latency(&self) -> MutexGuard<'_, Histogram<u64>> {
        lock(&self.ack_latency)
    }

    /// Records one command's round trip as the device saw it.
    pub(crate) fn command_round_trip(&self, latency: Duration) {
        lock(&self.command_latency).saturating_record(micros(latency));
    }

    pub(crate) fn churn_drop(&self) {
        self.churn_drops.fetch_add(1, Relaxed);
    }

    pub(crate) fn command_received(&self) {
        self.commands_received.fetch_add(1, Relaxed);
    }

    pub(crate) fn command_answered(&self) {
        self.commands_answered.fetch_add(1, Relaxed);
    }

    pub(crate) fn ping_sent(&self) {
        self.pings_sent.fetch_add(1, Relaxed);
    }

    pub(crate) fn busy_retry(&self) {
        self.busy_retries.fetch_add(1, Relaxed);
    }

    pub(crate) fn rewind(&self) {
        self.rewinds.fetch_add(1, Relaxed);
    }

    pub(crate) fn unexpected_frame(&self) {
        self.unexpected_frames.fetch_add(1, Relaxed);
    }

    pub(crate) fn ack_beyond_sent(&self) {
        self.acks_beyond_sent.fetch_add(1, Relaxed);
    }

    pub(crate) fn last_event_id_regression(&self) {
        self.last_event_id_regressions.fetch_add(1, Relaxed);
    }

    pub(crate) fn id_jump(&self) {
        self.id_jumps.fetch_add(1, Relaxed);
    }

    pub(crate) fn error(&self, code: ErrorCode) {
        let slot = if ErrorCode::ALL.contains(&code) {
            usize::from(code.0)
        } else {
            0
        };
        self.errors[slot].fetch_add(1, Relaxed);
    }

    pub(crate) fn bye(&self, reason: ByeReason) {
        let slot = usize::from(reason.0).min(BYE_SLOTS - 1);
        self.byes[slot].fetch_add(1, Relaxed);
    }

    pub(crate) fn upload_begun(&self, now: Instant) {
        self.upload_first_begin_us
            .fetch_min(micros(now.saturating_duration_since(self.started)), Relaxed);
    }

    pub(crate) fn upload_sent(&self, first: u64, resent: u64) {
        if first > 0 {
            self.upload_bytes_sent.fetch_add(first, Relaxed);
        }
        if resent > 0 {
            self.upload_bytes_resent.fetch_add(resent, Relaxed);
        }
    }

    pub(crate) fn upload_durable(&self, advanced: u64) {
        if advanced > 0 {
            self.upload_bytes_durable.fetch_add(advanced, Relaxed);
        }
    }

    pub(crate) fn upload_completed(&self, size: u64) {
        self.uploads_completed.fetch_add(1, Relaxed);
        self.upload_bytes_completed.fetch_add(size, Relaxed);
        self.upload_last_done_us
            .fetch_max(micros(self.started.elapsed()), Relaxed);
        self.upload_completion.notify_waiters();
    }

    pub(crate) fn upload_mismatch(&self) {
        self.upload_mismatches.fetch_add(1, Relaxed);
    }

    pub(crate) fn upload_refused(&self) {
        self.upload_refusals.fetch_add(1, Relaxed);
    }

    pub(crate) fn upload_resumed(&self) {
        self.upload_resumes.fetch_add(1, Relaxed);
    }

    pub(crate) fn upload_offset_regression(&self) {
        self.upload_offset_regressions.fetch_add(1, Relaxed);
    }

    /// Uploads answered `UPLOAD_DONE OK` so far.
    pub fn uploads_completed(&self) -> u64 {
        self.uploads_completed.load(Relaxed)
    }

    /// Upload bytes reported durable so far (every advance of a
    /// `durable_offset`, summed over devices).
    pub fn upload_bytes_durable(&self) -> u64 {
        self.upload_bytes_durable.load(Relaxed)
    }

    /// Waits until at least `count` uploads have completed.
    pub async fn uploads_completed_at_least(&self, count: u64) {
        loop {
            let notified = self.upload_completion.notified();
            if self.uploads_completed() >= count {
                return;
            }
            notified.await;
        }
    }

    /// Events acknowledged so far (cheap: for progress lines).
    pub fn acked(&self) -> u64 {
        self.events_acked.load(Relaxed)
    }

    /// Events sent for the first time so far (cheap: for progress lines).
    pub fn sent(&self) -> u64 {
        self.events_sent.load(Relaxed)
    }

    /// Sessions established right now (cheap: for progress lines).
    pub fn connected(&self) -> u64 {
        u64::try_from(self.connected.load(Relaxed)).unwrap_or(0)
    }

    /// Devices that completed at least one handshake so far.
    pub fn devices_connected(&self) -> u64 {
        self.devices_connected.load(Relaxed)
    }

    /// Copies of the latency histograms, to merge with other processes'.
    pub fn histograms(&self) -> LatencyHistograms {
        LatencyHistograms {
            ack: lock(&self.ack_latency).clone(),
            handshake: lock(&self.handshake_latency).clone(),
            command: lock(&self.command_latency).clone(),
        }
    }

    /// Runs `update` on the file transfers' summary.
    pub(crate) fn with_files<T>(&self, update: impl FnOnce(&mut super::FileSummary) -> T) -> T {
        update(&mut self.files.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Files verified so far.
    pub fn files_verified(&self) -> u64 {
        self.with_files(|summary| summary.verified)
    }

    /// `ERROR` frames received so far (cheap: for progress lines).
    pub fn errors(&self) -> u64 {
        self.errors.iter().map(|slot| slot.load(Relaxed)).sum()
    }

    /// A consistent-enough copy of everything, for the summary.
    pub fn snapshot(&self) -> StatsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Relaxed);
        let errors = self
            .errors
            .iter()
            .enumerate()
            .filter_map(|(slot, count)| {
                let count = load(count);
                let code = u16::try_from(slot).unwrap_or(0);
                (count > 0).then_some((ErrorCode(code), count))
            })
            .collect();
        let byes = self
            .byes
            .iter()
            .enumerate()
            .filter_map(|(slot, count)| {
                let count = load(count);
                let reason = u8::try_from(slot).unwrap_or(u8::MAX);
                (count > 0).then_some((ByeReason(reason), count))
            })
            .collect();
        StatsSnapshot {
            connected: self.connected(),
            devices_connected: load(&self.devices_connected),
            connect_span: Duration::from_micros(load(&self.last_first_handshake_us)),
            churn_drops: load(&self.churn_drops),
            handshakes: load(&self.handshakes),
            connect_failures: load(&self.connect_failures),
            handshake_failures: load(&self.handshake_failures),
            disconnects: load(&self.disconnects),
            reconnects: load(&self.reconnects),
            events_sent: load(&self.events_sent),
            events_resent: load(&self.events_resent),
            events_acked: load(&self.events_acked),
            events_skipped: load(&self.events_skipped),
            commands_received: load(&self.commands_received),
            commands_answered: load(&self.commands_answered),
            pings_sent: load(&self.pings_sent),
            busy_retries: load(&self.busy_retries),
            rewinds: load(&self.rewinds),
            unexpected_frames: load(&self.unexpected_frames),
            acks_beyond_sent: load(&self.acks_beyond_sent),
            last_event_id_regressions: load(&self.last_event_id_regressions),
            id_jumps: load(&self.id_jumps),
            errors,
            byes,
            upload: UploadSummary {
                bytes_sent: load(&self.upload_bytes_sent),
                bytes_resent: load(&self.upload_bytes_resent),
                bytes_durable: load(&self.upload_bytes_durable),
                completed: load(&self.uploads_completed),
                bytes_completed: load(&self.upload_bytes_completed),
                mismatches: load(&self.upload_mismatches),
                refusals: load(&self.upload_refusals),
                resumes: load(&self.upload_resumes),
                offset_regressions: load(&self.upload_offset_regressions),
                first_begin: match load(&self.upload_first_begin_us) {
                    u64::MAX => None,
                    first => Some(Duration::from_micros(first)),
                },
                last_done: match load(&self.upload_last_done_us) {
                    0 => None,
                    last => Some(Duration::from_micros(last)),
                },
            },
            files: self.with_files(|summary| summary.clone()),
            ack_latency: LatencySummary::of(&lock(&self.ack_latency)),
            handshake_latency: LatencySummary::of(&lock(&self.handshake_latency)),
            command_latency: LatencySummary::of(&lock(&self.command_latency)),
        }
    }
}

/// The uploads of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadSummary {
    /// `BLOCK` payload sent for the first time.
    pub bytes_sent: u64,
    /// `BLOCK` payload sent again (after a reconnect or a refusal).
    pub bytes_resent: u64,
    /// Upload bytes the server reported durable.
    pub bytes_durable: u64,
    /// Uploads finished with `UPLOAD_DONE OK`.
    pub completed: u64,
    /// Their payload.
    pub bytes_completed: u64,
    /// `UPLOAD_DONE` with a size or digest mismatch.
    pub mismatches: u64,
    /// Uploads closed by `BUSY` or `UPLOAD_CONFLICT`, begun again later.
    pub refusals: u64,
    /// `UPLOAD_BEGIN`s that resumed above offset 0.
    pub resumes: u64,
    /// `durable_offset`s below one reported before (the server lost data).
    pub offset_regressions: u64,
    /// The first `UPLOAD_BEGIN`, after the start of the run.
    pub first_begin: Option<Duration>,
    /// The last `UPLOAD_DONE OK`, after the start of the run.
    pub last_done: Option<Duration>,
}

impl UploadSummary {
    /// From the first `UPLOAD_BEGIN` to the last `UPLOAD_DONE OK`.
    pub fn span(&self) -> Duration {
        match (self.first_begin, self.last_done) {
            (Some(first), Some(last)) => last.saturating_sub(first),
            _ => Duration::ZERO,
        }
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
}

impl LatencySummary {
    /// Summarises `histogram` (µs samples).
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            count: histogram.len(),
            mean_us: histogram.mean(),
            p50_us: histogram.value_at_quantile(0.5),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// A [`LatencySummary`] as reports print it (JSON field names `samples`,
/// `mean`, `p50`, `p99`, `p999`, `max`; µs, mean to 0.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyReport {
    /// Samples recorded.
    pub samples: u64,
    /// Mean, rounded to 0.1 µs.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl LatencyReport {
    /// Reports `histogram` (µs samples).
    pub fn of(histogram: &Histogram<u64>) -> Self {
        LatencySummary::of(histogram).into()
    }
}

impl From<LatencySummary> for LatencyReport {
    fn from(summary: LatencySummary) -> Self {
        Self {
            samples: summary.count,
            mean: (summary.mean_us * 10.0).round() / 10.0,
            p50: summary.p50_us,
            p99: summary.p99_us,
            p999: summary.p999_us,
            max: summary.max_us,
        }
    }
}

/// Every counter of a [`Stats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Sessions established at that moment.
    pub connected: u64,
    /// Devices that completed at least one handshake.
    pub devices_connected: u64,
    /// From the start of the run to the last device's first `WELCOME`.
    pub connect_span: Duration,
    /// Sessions dropped on purpose to reconnect (scenario churn).
    pub churn_drops: u64,
    /// Handshakes completed, reconnections included.
    pub handshakes: u64,
    /// TCP connections that could not be opened.
    pub connect_failures: u64,
    /// Handshakes refused, cut or timed out.
    pub handshake_failures: u64,
    /// Established sessions that ended without the device asking
    /// (connection lost, fatal `ERROR`, silence).
    pub disconnects: u64,
    /// Connection attempts after a device's first.
    pub reconnects: u64,
    /// Events sent for the first time.
    pub events_sent: u64,
    /// Events sent again after a reconnect (same ids).
    pub events_resent: u64,
    /// Events acknowledged (each counted once).
    pub events_acked: u64,
    /// Events not made because the device's backlog was full.
    pub events_skipped: u64,
    /// `COMMAND`s received.
    pub commands_received: u64,
    /// Command results queued (kind `0xFFFF` events).
    pub commands_answered: u64,
    /// Heartbeat `PING`s sent.
    pub pings_sent: u64,
    /// Times refused (`BUSY`) events were sent again after a backoff.
    pub busy_retries: u64,
    /// Sessions ended to resend events on a new connection (after
    /// `OUT_OF_ORDER`).
    pub rewinds: u64,
    /// Server frames that made no sense in their place.
    pub unexpected_frames: u64,
    /// `ACK`s for ids the device never made (the server is confused).
    pub acks_beyond_sent: u64,
    /// `WELCOME.last_event_id` below an id already acknowledged: the
    /// server lost acknowledged data.
    pub last_event_id_regressions: u64,
    /// Devices with no history that continued numbering above
    /// `WELCOME.last_event_id` (events stored by an earlier run).
    pub id_jumps: u64,
    /// `ERROR` frames received, by code.
    #[serde(with = "error_counts")]
    pub errors: Vec<(ErrorCode, u64)>,
    /// Server `BYE`s received, by reason.
    #[serde(with = "bye_counts")]
    pub byes: Vec<(ByeReason, u64)>,
    /// What the uploads did.
    pub upload: UploadSummary,
    /// What the file transfers did.
    #[serde(default)]
    pub files: super::FileSummary,
    /// Event sent → `ACK` received.
    pub ack_latency: LatencySummary,
    /// TCP connect → `WELCOME`.
    pub handshake_latency: LatencySummary,
    /// `COMMAND` received → `ACK` of its result.
    pub command_latency: LatencySummary,
}

impl StatsSnapshot {
    /// Adds another process's counters to these. Times since the start
    /// (`connect_span`, the upload's first and last) and the latency
    /// summaries are left alone: they depend on when each process started,
    /// and percentiles come from merged [`LatencyHistograms`].
    pub fn absorb(&mut self, other: &Self) {
        self.connected += other.connected;
        self.devices_connected += other.devices_connected;
        self.churn_drops += other.churn_drops;
        self.handshakes += other.handshakes;
        self.connect_failures += other.connect_failures;
        self.handshake_failures += other.handshake_failures;
        self.disconnects += other.disconnects;
        self.reconnects += other.reconnects;
        self.events_sent += other.events_sent;
        self.events_resent += other.events_resent;
        self.events_acked += other.events_acked;
        self.events_skipped += other.events_skipped;
        self.commands_received += other.commands_received;
        self.commands_answered += other.commands_answered;
        self.pings_sent += other.pings_sent;
        self.busy_retries += other.busy_retries;
        self.rewinds += other.rewinds;
        self.unexpected_frames += other.unexpected_frames;
        self.acks_beyond_sent += other.acks_beyond_sent;
        self.last_event_id_regressions += other.last_event_id_regressions;
        self.id_jumps += other.id_jumps;
        add_counts(&mut self.errors, &other.errors, |code| code.0);
        add_counts(&mut self.byes, &other.byes, |reason| u16::from(reason.0));
        let (mine, theirs) = (&mut self.upload, &other.upload);
        mine.bytes_sent += theirs.bytes_sent;
        mine.bytes_resent += theirs.bytes_resent;
        mine.bytes_durable += theirs.bytes_durable;
        mine.completed += theirs.completed;
        mine.bytes_completed += theirs.bytes_completed;
        mine.mismatches += theirs.mismatches;
        mine.refusals += theirs.refusals;
        mine.resumes += theirs.resumes;
        mine.offset_regressions += theirs.offset_regressions;
        self.files.absorb(&other.files);
    }
}

/// Adds `(key, count)` pairs into a list kept in the order of `number`.
fn add_counts<K: Copy + PartialEq>(into: &mut Vec<(K, u64)>, from: &[(K, u64)], number: impl Fn(&K) -> u16) {
    for &(key, count) in from {
        match into.iter_mut().find(|(k, _)| *k == key) {
            Some((_, total)) => *total += count,
            None => into.push((key, count)),
        }
    }
    into.sort_by_key(|(key, _)| number(key));
}

/// The latency histograms of a run (µs samples), whole: what another
/// process needs to merge them with its own.
#[derive(Debug, Clone)]
pub struct LatencyHistograms {
    /// Event sent → covering `ACK`.
    pub ack: Histogram<u64>,
    /// TCP connect → `WELCOME`.
    pub handshake: Histogram<u64>,
    /// `COMMAND` received → `ACK` of its result.
    pub command: Histogram<u64>,
}

impl Default for LatencyHistograms {
    fn default() -> Self {
        Self {
            ack: histogram(),
            handshake: histogram(),
            command: histogram(),
        }
    }
}

impl LatencyHistograms {
    /// Adds another process's samples to these, bucket by bucket.
    pub fn absorb(&mut self, other: &Self) {
        // Same bounds on both sides (`histogram()`); samples beyond them
        // were saturated when recorded.
        for (mine, theirs) in [
            (&mut self.ack, &other.ack),
            (&mut self.handshake, &other.handshake),
            (&mut self.command, &other.command),
        ] {
            if mine.add(theirs).is_err() {
                for value in theirs.iter_recorded() {
                    mine.saturating_record_n(value.value_iterated_to(), value.count_at_value());
                }
            }
        }
    }
}

/// `ErrorCode`s as their numbers on the wire of `--procs`.
mod error_counts {
    use cwp::ErrorCode;
    use serde::{Deserialize as _, Deserializer, Serialize as _, Serializer};

    pub(super) fn serialize<S: Serializer>(counts: &[(ErrorCode, u64)], serializer: S) -> Result<S::Ok, S::Error> {
        let plain: Vec<(u16, u64)> = counts.iter().map(|(code, n)| (code.0, *n)).collect();
        plain.serialize(serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<(ErrorCode, u64)>, D::Error> {
        let plain = Vec::<(u16, u64)>::deserialize(deserializer)?;
        Ok(plain.into_iter().map(|(code, n)| (ErrorCode(code), n)).collect())
    }
}

/// `ByeReason`s as their numbers on the wire of `--procs`.
mod bye_counts {
    use cwp::ByeReason;
    use serde::{Deserialize as _, Deserializer, Serialize as _, Serializer};

    pub(super) fn serialize<S: Serializer>(counts: &[(ByeReason, u64)], serializer: S) -> Result<S::Ok, S::Error> {
        let plain: Vec<(u8, u64)> = counts.iter().map(|(reason, n)| (reason.0, *n)).collect();
        plain.serialize(serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<(ByeReason, u64)>, D::Error> {
        let plain = Vec::<(u8, u64)>::deserialize(deserializer)?;
        Ok(plain.into_iter().map(|(reason, n)| (ByeReason(reason), n)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_byes_are_counted_by_code() {
        let stats = Stats::new();
        stats.error(ErrorCode::BUSY);
        stats.error(ErrorCode::BUSY);
        stats.error(ErrorCode(999));
        stats.bye(ByeReason::DRAINING);
        stats.bye(ByeReason(77));
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.errors, [(ErrorCode(0), 1), (ErrorCode::BUSY, 2)]);
        assert_eq!(snapshot.byes, [(ByeReason::DRAINING, 1), (ByeReason(4), 1)]);
        assert_eq!(stats.errors(), 3);
    }

    #[test]
    fn ack_latencies_land_in_the_histogram() {
        let stats = Stats::new();
        stats.events_acked(4);
        for latency in [1, 2, 3].map(Duration::from_millis) {
            stats.ack_latency().saturating_record(micros(latency));
        }
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.events_acked, 4);
        assert_eq!(snapshot.ack_latency.count, 3);
        assert!(snapshot.ack_latency.p50_us.abs_diff(2_000) <= 2);
        assert!(snapshot.ack_latency.max_us.abs_diff(3_000) <= 3);
    }
}
