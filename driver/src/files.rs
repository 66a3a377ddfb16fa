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
//! The session loop sends chunks only when its send buffer is empty, at
//! most [`FILL_BYTES`] at a time, and the socket keeps at most
//! [`UNSENT_LOWAT`] unsent bytes (`TCP_NOTSENT_LOWAT`): an `ACK` or a
//! `COMMAND` queued during a transfer waits behind that much, not behind
//! megabytes of chunks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cwp::session::FileFrame;
use cwp::{FileChunk, FileId, FileOffer, FileTransfer, Serial, ServerFrame, SessionId, Str8, TransferStep, Violation};
use drover_files::{Digest, FileStore, StoredFile};
use drover_proto::bridge::{FileOfferGrant, FileTransferEvent, FileTransferVerdict};
use drover_schema::rollout::RolloutId;
use drover_service::backoff::Backoff;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::bridge::BridgeClient;
use crate::registry::{Registry, SessionHandle};

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

/// What other tasks leave in a session's mailbox about files.
#[derive(Debug, Default)]
pub struct FileMail {
    /// `{"files":true}` came: look for an offer, or (during a transfer)
    /// report now to learn whether it was paused or cancelled.
    pub wake: bool,
    /// The bridge's answer to `TakeFileOffer`.
    pub offer: Option<FileOfferGrant>,
    /// The bridge's answers to reports, by rollout id.
    pub verdicts: Vec<(String, FileTransferVerdict)>,
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
    /// Devices being fetched for, and whether to fetch once more after.
    pub fetching: Arc<Mutex<HashMap<Serial, bool>>>,
    /// What the calls learned, for each live session until it looks
    /// ([`FileService::take_mail`]).
    pub mail: Arc<Mutex<HashMap<SessionId, FileMail>>>,
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
        if self
            .registry
            .get(&session.serial)
            .is_none_or(|live| live.session_id != session.session_id)
        {
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

    /// Asks the bridge for `serial`'s next transfer, now or right after
    /// the call under way; an offer goes to the session's mailbox.
    pub fn fetch(&self, serial: Serial) {
        {
            let mut fetching = self.fetching.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(again) = fetching.get_mut(&serial) {
                *again = true;
                return;
            }
            fetching.insert(serial, false);
        }
        let this = self.clone();
        self.tasks
            .spawn_on(async move { this.fetch_until_done(serial).await }, &self.runtime);
    }

    async fn fetch_until_done(&self, serial: Serial) {
        let mut backoff = RETRY;
        loop {
            let Some(session) = self.registry.get(&serial) else {
                break;
            };
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
            let mut fetching = self.fetching.lock().unwrap_or_else(PoisonError::into_inner);
            match fetching.get_mut(&serial) {
                Some(again) if *again => *again = false,
                _ => break,
            }
        }
        self.fetching
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&serial);
    }

    /// Reports what happened to `session`'s transfer of `rollout`; the
    /// verdict goes to the session's mailbox. Progress is tried once (the
    /// next report says more); outcomes are retried for a while.
    pub fn report(&self, session: &Arc<SessionHandle>, rollout: &str, event: FileTransferEvent, offset: u64) {
        let this = self.clone();
        let session = session.clone();
        let rollout = rollout.to_owned();
        let call = async move {
            let patient = event != FileTransferEvent::Progress;
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
                        this.leave(&session, |mail| mail.verdicts.push((rollout, verdict)));
                        return;
                    }
                    Err(status) if patient && Instant::now() < deadline => {
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
    /// An outcome was reported: its verdict is awaited.
    pub finishing: bool,
}

/// What the session reports after a frame.
pub type Report = (FileTransferEvent, u64);

impl Transfer {
    /// Opens the granted file and says what to offer.
    pub fn start(store: &FileStore, grant: &FileOfferGrant) -> Result<(Box<Self>, ServerFrame), StartError> {
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
            finishing: false,
        });
        Ok((transfer, ServerFrame::FileOffer(offer)))
    }

    /// Offers the file again from scratch (a retry after a mismatch).
    pub fn reoffer(&mut self) -> ServerFrame {
        self.rules = FileTransfer::offered(self.offer.file_id, self.offer.size);
        self.finishing = false;
        self.reported = 0;
        ServerFrame::FileOffer(self.offer.clone())
    }

    /// Whether it is under way: offered or sending, no outcome yet.
    pub fn is_live(&self) -> bool {
        !self.finishing && !self.rules.is_stopped()
    }

    /// Whether chunks could be sent now.
    pub fn wants_to_send(&self) -> bool {
        self.rules.next_chunk(1).is_some()
    }

    /// A device frame about the transfer: what to report, if anything.
    pub fn on_frame(&mut self, frame: FileFrame) -> Result<Option<Report>, Violation> {
        let step = match frame {
            FileFrame::Accept(accept) => self.rules.on_accept(&accept)?,
            FileFrame::Ack(ack) => self.rules.on_ack(&ack)?,
        };
        let report = match step {
            TransferStep::Ignored => None,
            TransferStep::Accepted { offset } => Some((FileTransferEvent::Progress, offset)),
            TransferStep::Progress { offset } => {
                let due = offset >= self.reported + REPORT_BYTES || self.reported_at.elapsed() >= REPORT_EVERY;
                due.then_some((FileTransferEvent::Progress, offset))
            }
            TransferStep::Complete => Some((FileTransferEvent::Done, self.rules.size())),
            TransferStep::Declined => Some((FileTransferEvent::Declined, 0)),
            TransferStep::DigestMismatch => Some((FileTransferEvent::DigestMismatch, 0)),
            TransferStep::Aborted { offset } => Some((FileTransferEvent::Aborted, offset)),
        };
        if step.ends() {
            self.finishing = true;
        }
        if let Some((_, offset)) = report {
            self.reported_at = Instant::now();
            self.reported = offset;
        }
        Ok(report)
    }

    /// The next chunk, read from the file, if the window has room for
    /// one of at most `max_chunk` bytes.
    pub fn next_chunk(&mut self, max_chunk: usize) -> Option<std::io::Result<ServerFrame>> {
        let (offset, len) = self.rules.next_chunk(max_chunk)?;
        let mut data = BytesMut::zeroed(len);
        if let Err(err) = self.file.read_at(offset, &mut data).and_then(|read| {
            if read == len {
                Ok(())
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the stored file is shorter than its record",
                ))
            }
        }) {
            return Some(Err(err));
        }
        self.rules.chunk_sent(len);
        Some(Ok(ServerFrame::FileChunk(FileChunk { data: data.freeze() })))
    }
}
