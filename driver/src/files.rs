//! Files to devices (CWP/1 §3 Files; README, "Rollouts").
//!
//! - [`FileService`] (in [`crate::session::Sessions`]) asks the bridge for
//!   the transfer a session should offer (`TakeFileOffer`: when the session
//!   opens, on `{"files":true}`, after each transfer) and reports progress
//!   and outcomes (`ReportFileTransfer`). Both run as short tasks; what
//!   they learn reaches the session through its mailbox ([`FileMail`]).
//! - [`Transfer`] is the one transfer of a connection, held by the session
//!   loop: the protocol's rules ([`cwp::FileTransfer`]), the stored file it
//!   reads by offset (`pread`, never the whole file) and when progress was
//!   last reported.
//!
//! - [`Throttle`]: a rollout's bytes/s limit on this driver, one token
//!   bucket its transfers here share (`max_bytes_per_s`).
//!
//! The session loop sends chunks only when its send buffer is empty, at
//! most [`FILL_BYTES`] at a time, and the socket keeps at most
//! [`UNSENT_LOWAT`] unsent bytes (`TCP_NOTSENT_LOWAT`): an `ACK` or a
//! `COMMAND` queued during a transfer waits behind that much, not behind
//! megabytes of chunks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use cwp::session::FileFrame;
use cwp::{FileId, FileOffer, FileTransfer, Serial, ServerFrame, SessionId, Str8, TransferStep, Violation};
use drover_edge::bridge::BridgeClient;
use drover_files::{Digest, FileStore, StoredFile};
use drover_proto::bridge::{FileOfferGrant, FileTransferEvent, FileTransferVerdict};
use drover_schema::rollout::RolloutId;
use drover_service::backoff::Backoff;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::registry::{Registry, SessionHandle};
use crate::single_flight::{Flight, SingleFlight};
use crate::storm::StormWatch;

/// Chunk bytes queued per turn of the session loop, at most.
pub const FILL_BYTES: usize = 128 * 1024;
/// `TCP_NOTSENT_LOWAT` of a connection with a transfer: unsent bytes the
/// kernel holds before the socket stops being writable.
pub const UNSENT_LOWAT: u32 = 64 * 1024;
/// Progress is reported at least every this many bytes acknowledged...
const REPORT_BYTES: u64 = 4 << 20;
/// ...or this often, whichever comes first.
const REPORT_EVERY: Duration = Duration::from_secs(5);
/// Waits between failed calls while the session lives.
const RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
/// How long an outcome's report is retried before it is left to the
/// rollout's lease (the device is offered the file again at its next
/// session and answers at once).
const REPORT_PATIENCE: Duration = Duration::from_secs(60);
/// A transfer sends at most this far beyond the offset its rollout last
/// recorded (the last progress report answered). During a bridge or Redis
/// outage reports go unanswered, so transfers pause here instead of
/// running on unrecorded, out of reach of a pause or a cancel; two
/// reports' worth, so that the answer to one never holds a transfer back
/// while the bridge answers.
pub const AHEAD_OF_RECORD: u64 = 2 * REPORT_BYTES;

/// What other tasks leave in a session's mailbox about files.
#[derive(Debug, Default)]
pub struct FileMail {
    /// `{"files":true}` came: look for an offer, or (during a transfer)
    /// report now to learn whether it was paused or cancelled.
    pub wake: bool,
    /// The bridge's answer to `TakeFileOffer`.
    pub offer: Option<FileOfferGrant>,
    /// The bridge's answers to reports.
    pub answers: Vec<Answer>,
}

/// The bridge's answer to one report.
#[derive(Debug)]
pub struct Answer {
    /// The rollout reported on.
    pub rollout: String,
    /// What was reported...
    pub event: FileTransferEvent,
    /// ...at which offset.
    pub offset: u64,
    /// What the transfer does next.
    pub verdict: FileTransferVerdict,
}

/// Asks the bridge for offers and reports transfers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FileService {
    /// `FILES_DIR`.
    pub store: FileStore,
    /// `TakeFileOffer`, `ReportFileTransfer`.
    pub bridge: BridgeClient,
    /// The live sessions.
    pub registry: Arc<Registry>,
    /// The devices being asked for.
    pub fetching: SingleFlight<Serial>,
    /// While a connect storm is under way, offers wait (the driver's one
    /// [`StormWatch`], shared with durable commands).
    pub storm: Arc<StormWatch>,
    /// What the calls learned, for each live session until it looks
    /// ([`FileService::take_mail`]).
    pub mail: Arc<Mutex<HashMap<SessionId, FileMail>>>,
    /// The limits of rollouts with transfers on this driver, by rollout
    /// id; an entry lives as long as a transfer holds it.
    pub throttles: Arc<Mutex<HashMap<String, Weak<Throttle>>>>,
    /// Where the calls run: awaited at shutdown.
    pub tasks: TaskTracker,
    /// The runtime they run on (a session may open on the handshake thread).
    pub runtime: tokio::runtime::Handle,
}

impl FileService {
    /// Leaves something for `session` and wakes it; forgotten if the
    /// session ended meanwhile.
    fn leave(&self, session: &SessionHandle, leave: impl FnOnce(&mut FileMail)) {
        leave(
            self.mail
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(session.session_id)
                .or_default(),
        );
        session.note_file_mail();
        if !self.is_live(session) {
            self.session_ended(&session.session_id);
        }
    }

    /// `{"files":true}` came for `session`.
    pub fn wake(&self, session: &SessionHandle) {
        self.leave(session, |mail| mail.wake = true);
    }

    /// What was left for a session.
    pub fn take_mail(&self, session: &SessionId) -> FileMail {
        self.mail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(session)
            .unwrap_or_default()
    }

    /// Forgets an ended session's mail.
    pub fn session_ended(&self, session: &SessionId) {
        self.take_mail(session);
    }

    /// The limit `grant`'s transfer shares with this driver's other
    /// transfers of its rollout, if the rollout has one.
    pub fn throttle(&self, grant: &FileOfferGrant) -> Option<Arc<Throttle>> {
        if grant.max_bytes_per_s == 0 {
            return None;
        }
        let mut throttles = self.throttles.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(throttle) = throttles.get(&grant.rollout_id).and_then(Weak::upgrade) {
            return Some(throttle);
        }
        throttles.retain(|_, throttle| throttle.strong_count() > 0);
        let throttle = Arc::new(Throttle::new(grant.max_bytes_per_s));
        throttles.insert(grant.rollout_id.clone(), Arc::downgrade(&throttle));
        Some(throttle)
    }

    /// Wakes `session` after `delay` (its transfer waits for its
    /// rollout's limit; the session loop keeps no timer of its own).
    /// Not tracked for shutdown: a sleep holds nothing.
    pub fn wake_after(&self, session: &Arc<SessionHandle>, delay: Duration) {
        let session = session.clone();
        self.runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            session.note_file_mail();
        });
    }

    /// Asks the bridge for `serial`'s next transfer, now or right after
    /// the call under way; an offer goes to the session's mailbox.
    pub fn fetch(&self, serial: Serial) {
        let Some(flight) = self.fetching.start(serial) else {
            return;
        };
        let this = self.clone();
        self.tasks.spawn_on(
            async move { this.fetch_until_done(serial, flight).await },
            &self.runtime,
        );
    }

    async fn fetch_until_done(&self, serial: Serial, mut flight: Flight<Serial>) {
        let mut backoff = RETRY;
        self.storm.passed().await;
        loop {
            if let Some(session) = self.registry.get(&serial) {
                match self.bridge.take_file_offer(&serial, &session.session_id).await {
                    Ok(offer) => {
                        backoff.reset();
                        if let Some(offer) = offer {
                            debug!(%serial, rollout = offer.rollout_id, "file offer");
                            self.leave(&session, |mail| mail.offer = Some(offer));
                        }
                    }
                    Err(status) => {
                        let retry_in = backoff.next_delay();
                        warn!(%serial, code = ?status.code(), ?retry_in, "could not ask the vendor-bridge for a file offer");
                        tokio::time::sleep(retry_in).await;
                        continue;
                    }
                }
            }
            if !flight.again() {
                break;
            }
        }
    }

    /// Whether `session` is still the device's live session.
    fn is_live(&self, session: &SessionHandle) -> bool {
        self.registry
            .get(&session.serial)
            .is_some_and(|live| live.session_id == session.session_id)
    }

    /// Reports what happened to `session`'s transfer of `rollout`; the
    /// answer goes to the session's mailbox. Progress is retried as long
    /// as the session lives (its transfer waits for the answer: see
    /// [`AHEAD_OF_RECORD`]); outcomes are retried for a while, session or
    /// not.
    pub fn report(&self, session: &Arc<SessionHandle>, rollout: &str, event: FileTransferEvent, offset: u64) {
        let this = self.clone();
        let session = session.clone();
        let rollout = rollout.to_owned();
        let call = async move {
            let progress = event == FileTransferEvent::Progress;
            let deadline = Instant::now() + REPORT_PATIENCE;
            let mut backoff = RETRY;
            loop {
                match this
                    .bridge
                    .report_file_transfer(&session.serial, &session.session_id, &rollout, event, offset)
                    .await
                {
                    Ok(verdict) => {
                        debug!(serial = %session.serial, rollout, ?event, offset, ?verdict, "file transfer reported");
                        this.leave(&session, |mail| {
                            mail.answers.push(Answer {
                                rollout,
                                event,
                                offset,
                                verdict,
                            });
                        });
                        return;
                    }
                    Err(status) if (progress && this.is_live(&session)) || (!progress && Instant::now() < deadline) => {
                        let retry_in = backoff.next_delay();
                        warn!(serial = %session.serial, rollout, code = ?status.code(), ?retry_in, "could not report a file transfer; retrying");
                        tokio::time::sleep(retry_in).await;
                    }
                    Err(status) => {
                        warn!(serial = %session.serial, rollout, ?event, code = ?status.code(), "could not report a file transfer");
                        return;
                    }
                }
            }
        };
        self.tasks.spawn_on(call, &self.runtime);
    }
}

/// A rollout's bytes/s limit on this driver: a token bucket that every
/// transfer of the rollout here draws from. A chunk goes when the bucket
/// holds anything and takes its whole length (the bucket may go below 0),
/// so the rate holds on average whatever the chunk size; the bucket holds
/// at most a tenth of a second's bytes, so a pause is not made up for by
/// a burst. A transfer held back reserves its turn (a chunk's worth) and
/// is woken when the bytes owed and the turns before it are paid: waiting
/// transfers wake one after the other, not all together for each chunk.
#[derive(Debug)]
pub struct Throttle {
    /// Bytes per second.
    rate: u64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Bytes that may go now (negative: owed).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
    /// Bytes reserved by transfers waiting for their turn.
    reserved: u64,
}

impl Bucket {
    fn refill(&mut self, rate: u64) {
        let now = Instant::now();
        let earned = now.duration_since(self.at).as_secs_f64() * rate as f64;
        self.tokens = (self.tokens + earned).min(Throttle::capacity(rate));
        self.at = now;
    }
}

impl Throttle {
    /// A full bucket of `rate` bytes per second (at least 1).
    pub fn new(rate: u64) -> Self {
        let rate = rate.max(1);
        Self {
            rate,
            bucket: Mutex::new(Bucket {
                tokens: Self::capacity(rate),
                at: Instant::now(),
                reserved: 0,
            }),
        }
    }

    fn capacity(rate: u64) -> f64 {
        rate as f64 / 10.0
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.bucket.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a chunk may go now.
    pub fn allows(&self) -> bool {
        let mut bucket = self.bucket();
        bucket.refill(self.rate);
        bucket.tokens > 0.0
    }

    /// A chunk may not go now: reserves a turn of `bytes` and says how
    /// long until it comes (the bytes owed, then the turns reserved
    /// before). The caller gives the turn back ([`Throttle::release`])
    /// when it is woken, whether it sends or not.
    pub fn reserve(&self, bytes: u64) -> Duration {
        let mut bucket = self.bucket();
        bucket.refill(self.rate);
        let ahead = (1.0 - bucket.tokens).max(0.0) + bucket.reserved as f64;
        bucket.reserved += bytes;
        Duration::from_secs_f64(ahead / self.rate as f64)
    }

    /// Gives a turn back.
    pub fn release(&self, bytes: u64) {
        let mut bucket = self.bucket();
        bucket.reserved = bucket.reserved.saturating_sub(bytes);
    }

    /// A chunk of `bytes` went.
    pub fn spend(&self, bytes: usize) {
        self.bucket().tokens -= bytes as f64;
    }
}

/// Why a transfer cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The bridge's grant does not name a rollout or a file properly.
    #[error("the offer is malformed: {0}")]
    Malformed(String),
    /// The file store has no such file, or not that size.
    #[error(transparent)]
    Store(#[from] drover_files::FileError),
}

/// The transfer of one connection.
#[derive(Debug)]
pub struct Transfer {
    /// The rollout, as the bridge names it.
    pub rollout: String,
    /// CWP/1 §3 Files.
    pub rules: FileTransfer,
    /// What `FILE_OFFER` said (offered again after a digest mismatch).
    offer: FileOffer,
    /// The bytes, read by offset.
    file: StoredFile,
    /// When progress was last reported, and at which offset.
    reported_at: Instant,
    reported: u64,
    /// The offset the rollout recorded: the last progress report answered
    /// (or where the device accepted). Chunks go at most
    /// [`AHEAD_OF_RECORD`] beyond it.
    recorded: u64,
    /// The offset of the progress report awaiting its answer: the next
    /// one waits for it, so that reports reach the rollout in order, one
    /// at a time. An answer to any other report (one of a pass before a
    /// re-offer) records nothing.
    reporting: Option<u64>,
    /// A report was asked for (a wake-up) while one was on its way: made
    /// as soon as that one is answered.
    report_again: bool,
    /// An outcome was reported: its verdict is awaited.
    pub finishing: bool,
    /// The rollout's limit on this driver, if it has one.
    throttle: Option<Arc<Throttle>>,
    /// The turn this transfer reserved under the limit (bytes) and when
    /// it comes: a wake-up is on its way for it.
    turn: Option<(u64, Instant)>,
}

impl Drop for Transfer {
    fn drop(&mut self) {
        // A turn not taken would hold back every transfer behind it.
        if let (Some(throttle), Some((bytes, _))) = (&self.throttle, self.turn) {
            throttle.release(bytes);
        }
    }
}

/// What the session reports after a frame.
pub type Report = (FileTransferEvent, u64);

impl Transfer {
    /// Opens the granted file and says what to offer.
    pub fn start(
        store: &FileStore,
        grant: &FileOfferGrant,
        throttle: Option<Arc<Throttle>>,
    ) -> Result<(Box<Self>, ServerFrame), StartError> {
        let rollout: RolloutId = grant
            .rollout_id
            .parse()
            .map_err(|err: drover_schema::rollout::InvalidRolloutId| StartError::Malformed(err.to_string()))?;
        let digest: Digest = grant
            .sha256
            .parse()
            .map_err(|err: drover_files::FileError| StartError::Malformed(err.to_string()))?;
        let file = store.open(&digest)?;
        if file.size() != grant.size {
            return Err(StartError::Malformed(format!(
                "the rollout says {} bytes, the stored file has {}",
                grant.size,
                file.size()
            )));
        }
        let offer = FileOffer {
            file_id: FileId(rollout.to_bytes()),
            size: file.size(),
            sha256: digest.0,
            name: Str8::truncating(&grant.name),
        };
        let transfer = Box::new(Self {
            rollout: grant.rollout_id.clone(),
            rules: FileTransfer::offered(offer.file_id, offer.size),
            offer: offer.clone(),
            file,
            reported_at: Instant::now(),
            reported: 0,
            recorded: 0,
            reporting: None,
            report_again: false,
            finishing: false,
            throttle,
            turn: None,
        });
        Ok((transfer, ServerFrame::FileOffer(offer)))
    }

    /// Offers the file again from scratch (a retry after a mismatch).
    pub fn reoffer(&mut self) -> ServerFrame {
        self.rules = FileTransfer::offered(self.offer.file_id, self.offer.size);
        self.finishing = false;
        self.reported = 0;
        self.recorded = 0;
        self.reporting = None;
        self.report_again = false;
        ServerFrame::FileOffer(self.offer.clone())
    }

    /// Whether it is under way: offered or sending, no outcome yet.
    pub fn is_live(&self) -> bool {
        !self.finishing && !self.rules.is_stopped()
    }

    /// The next chunk's offset and length, at most `max_chunk` bytes: what
    /// the window has room for ([`FileTransfer::next_chunk`]) and the
    /// rollout's record allows ([`AHEAD_OF_RECORD`]).
    fn next_span(&self, max_chunk: usize) -> Option<(u64, usize)> {
        let unrecorded = (self.recorded + AHEAD_OF_RECORD).saturating_sub(self.rules.sent());
        let max_chunk = usize::try_from(unrecorded).map_or(max_chunk, |room| room.min(max_chunk));
        self.rules.next_chunk(max_chunk)
    }

    /// Whether chunks could be sent now (the window has room, the rollout
    /// recorded enough, and the rollout's limit allows, or this transfer's
    /// turn under it came).
    pub fn wants_to_send(&self) -> bool {
        self.next_span(1).is_some()
            && match (&self.throttle, self.turn) {
                (None, _) => true,
                (Some(_), Some((_, at))) => at <= Instant::now(),
                (Some(throttle), None) => throttle.allows(),
            }
    }

    /// If the rollout's limit holds the next chunk back: `Some(delay)`
    /// when a wake-up is to be arranged after `delay` (a turn of
    /// `chunk` bytes was reserved), `Some(None)` when one is on its way.
    pub fn held_back(&mut self, chunk: usize) -> Option<Option<Duration>> {
        let throttle = self.throttle.as_ref()?;
        if let Some((bytes, at)) = self.turn {
            if at > Instant::now() {
                return Some(None);
            }
            // Woken: the turn is given back, taken or not.
            throttle.release(bytes);
            self.turn = None;
        }
        if throttle.allows() || self.next_span(1).is_none() {
            return None;
        }
        let bytes = chunk as u64;
        let delay = throttle.reserve(bytes);
        self.turn = Some((bytes, Instant::now() + delay));
        Some(Some(delay))
    }

    /// A device frame about the transfer: what to report, if anything.
    pub fn on_frame(&mut self, frame: FileFrame) -> Result<Option<Report>, Violation> {
        let step = match frame {
            FileFrame::Accept(accept) => self.rules.on_accept(&accept)?,
            FileFrame::Ack(ack) => self.rules.on_ack(&ack)?,
        };
        let report = match step {
            TransferStep::Ignored => None,
            TransferStep::Accepted { offset } => {
                // The rollout granted this offset a moment ago.
                self.recorded = offset;
                self.progress_report(true)
            }
            TransferStep::Progress { .. } => self.progress_report(false),
            TransferStep::Complete => Some((FileTransferEvent::Done, self.rules.size())),
            TransferStep::Declined => Some((FileTransferEvent::Declined, 0)),
            TransferStep::DigestMismatch => Some((FileTransferEvent::DigestMismatch, 0)),
            TransferStep::Aborted { offset } => Some((FileTransferEvent::Aborted, offset)),
        };
        if step.ends() {
            self.finishing = true;
        }
        Ok(report)
    }

    /// A progress report, if one is due (`now`: asked for) and none is on
    /// its way; asked for while one is, it follows that one's answer.
    pub fn progress_report(&mut self, now: bool) -> Option<Report> {
        if self.reporting.is_some() {
            self.report_again |= now;
            return None;
        }
        let offset = self.rules.acked();
        let due = now || offset >= self.reported + REPORT_BYTES || self.reported_at.elapsed() >= REPORT_EVERY;
        if !due {
            return None;
        }
        self.reporting = Some(offset);
        self.reported_at = Instant::now();
        self.reported = offset;
        Some((FileTransferEvent::Progress, offset))
    }

    /// The answer to a progress report at `offset` came: the rollout
    /// recorded it. Returns the next report if one is due already.
    pub fn progress_recorded(&mut self, offset: u64) -> Option<Report> {
        if self.reporting != Some(offset) {
            return None;
        }
        self.reporting = None;
        self.recorded = self.recorded.max(offset);
        let again = std::mem::take(&mut self.report_again);
        if self.is_live() {
            self.progress_report(again)
        } else {
            None
        }
    }

    /// Queues the next chunk, if the window has room for one of at most
    /// `max_chunk` bytes, with `queue(len, fill)`: `fill` reads the stored
    /// file's bytes at the chunk's offset into the place `queue` gives it
    /// (the send buffer: no copy of the chunk is held anywhere else). Its
    /// length, `None` if no chunk is due, an error if the file could not
    /// be read (nothing is then queued or counted).
    pub fn queue_next_chunk(
        &mut self,
        max_chunk: usize,
        queue: impl FnOnce(usize, &mut dyn FnMut(&mut [u8]) -> std::io::Result<()>) -> std::io::Result<()>,
    ) -> Option<std::io::Result<usize>> {
        let (offset, len) = self.next_span(max_chunk)?;
        let file = &self.file;
        let mut fill = |data: &mut [u8]| match file.read_at(offset, data)? {
            read if read == data.len() => Ok(()),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the stored file is shorter than its record",
            )),
        };
        if let Err(err) = queue(len, &mut fill) {
            return Some(Err(err));
        }
        self.rules.chunk_sent(len);
        if let Some(throttle) = &self.throttle {
            throttle.spend(len);
        }
        Some(Ok(len))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use cwp::{FileAccept, FileAck, FileAckStatus};

    use super::*;

    /// A transfer of `size` bytes of a stored file, offered; the store's
    /// directory lives as long as the transfer is used.
    fn offered(size: usize) -> (tempfile::TempDir, Box<Transfer>, FileId) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        let record = store.add_reader(&mut &vec![7u8; size][..], "fw.bin").unwrap();
        let grant = FileOfferGrant {
            rollout_id: "6f1c2b1e-0000-4000-8000-000000000001".to_owned(),
            sha256: record.sha256,
            size: record.size,
            name: record.name,
            offset: 0,
            max_bytes_per_s: 0,
        };
        let (transfer, offer) = Transfer::start(&store, &grant, None).unwrap();
        let ServerFrame::FileOffer(offer) = offer else {
            panic!("an offer")
        };
        (dir, transfer, offer.file_id)
    }

    /// Sends every chunk the transfer will send now; their bytes.
    fn send_all(transfer: &mut Transfer) -> u64 {
        let mut codec = cwp::ServerCodec::new();
        let mut wire = bytes::BytesMut::new();
        let mut sent = 0;
        while let Some(chunk) = transfer.queue_next_chunk(64 * 1024, |len, fill| {
            codec.encode_file_chunk_with(len, &mut wire, fill)
        }) {
            sent += chunk.unwrap() as u64;
        }
        sent
    }

    /// README "Outages pause transfers": with a window larger than the
    /// file, chunks stop [`AHEAD_OF_RECORD`] beyond what the rollout
    /// recorded; the answer to the report moves the limit on, and an
    /// answer of a pass before a re-offer moves nothing.
    #[test]
    fn chunks_stop_ahead_of_the_record_until_a_report_is_answered() {
        let size = 3 * AHEAD_OF_RECORD as usize;
        let (_dir, mut transfer, file_id) = offered(size);
        let accept = FileAccept {
            file_id,
            offset: 0,
            window: u32::MAX,
        };
        let report = transfer.on_frame(FileFrame::Accept(accept)).unwrap();
        assert_eq!(
            report,
            Some((FileTransferEvent::Progress, 0)),
            "the accepted offset is reported"
        );
        assert_eq!(
            send_all(&mut transfer),
            AHEAD_OF_RECORD,
            "then nothing until it is answered"
        );
        assert!(!transfer.wants_to_send());

        let ack = |offset| FileAck {
            file_id,
            offset,
            status: FileAckStatus::OK,
        };
        let held = transfer.on_frame(FileFrame::Ack(ack(AHEAD_OF_RECORD))).unwrap();
        assert_eq!(held, None, "one report at a time");
        let next = transfer.progress_recorded(0);
        assert_eq!(
            next,
            Some((FileTransferEvent::Progress, AHEAD_OF_RECORD)),
            "the next one follows the answer"
        );
        assert_eq!(send_all(&mut transfer), 0, "0 recorded: still nothing");
        assert_eq!(transfer.progress_recorded(AHEAD_OF_RECORD), None);
        assert_eq!(
            send_all(&mut transfer),
            AHEAD_OF_RECORD,
            "recorded where the device is: as far again"
        );
        let report = transfer.on_frame(FileFrame::Ack(ack(2 * AHEAD_OF_RECORD))).unwrap();
        assert_eq!(report, Some((FileTransferEvent::Progress, 2 * AHEAD_OF_RECORD)));
        assert_eq!(transfer.progress_recorded(2 * AHEAD_OF_RECORD), None);
        assert_eq!(send_all(&mut transfer), AHEAD_OF_RECORD, "and the rest of the file");

        // A re-offer starts a new pass; the answer to a report of the old
        // one records nothing of it.
        transfer.reoffer();
        let accept = FileAccept {
            file_id,
            offset: 0,
            window: u32::MAX,
        };
        transfer.on_frame(FileFrame::Accept(accept)).unwrap();
        assert_eq!(transfer.progress_recorded(2 * AHEAD_OF_RECORD), None);
        assert_eq!(
            send_all(&mut transfer),
            AHEAD_OF_RECORD,
            "the late answer moved nothing"
        );
    }

    /// Transfers held back by one limit get turns one after the other, a
    /// chunk's time apart, behind the bytes owed; a turn given back no
    /// longer holds the next one back.
    #[test]
    fn waiting_transfers_get_staggered_turns() {
        let throttle = Throttle::new(1000);
        assert!(throttle.allows(), "a full bucket");
        throttle.spend(1100);
        assert!(!throttle.allows(), "1,000 bytes owed");
        let first = throttle.reserve(500).as_secs_f64();
        let second = throttle.reserve(500).as_secs_f64();
        // The owed second less what trickled in meanwhile (microseconds).
        assert!((0.9..=1.01).contains(&first), "{first}");
        assert!((second - first - 0.5).abs() < 0.05, "{first} then {second}");
        throttle.release(500);
        throttle.release(500);
        let again = throttle.reserve(500).as_secs_f64();
        assert!(again <= first + 0.01, "turns given back: {again}");
    }
}
