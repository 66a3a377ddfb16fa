//! One connection's upload, CWP/1 §3 Uploads: at most one open at a time,
//! with its write buffer and its running SHA-256.
//!
//! [`Uploads`] is the connection's upload slot. `UPLOAD_BEGIN` opens an
//! upload (or finds it completed), `BLOCK`s fill the buffer, each full
//! buffer is made durable on the blocking pool, `UPLOAD_END` checks size
//! and digest and completes or discards. [`UploadError`] is every way that
//! fails; [`crate::refusal::Refusal::to_frame`] turns it into a CWP/1
//! error, and [`UploadError::into_violation`] tells the one kind that ends
//! the session.

use std::io;

use bytes::Bytes;
use cwp::{
    ErrorCode, FrameType, Serial, UploadBegin, UploadDone, UploadEnd, UploadId, UploadOutcome, UploadStatus, Violation,
};
use drover_service::admin::GaugeHold;
use sha2::{Digest as _, Sha256};
use tracing::{debug, info, warn};

use super::UploadService;
use crate::metrics::ResultLabel;
use drover_upload_store::{CompletedUpload, Opened, PartialUpload, StoreError};

/// Why an upload frame could not be served. Every variant but
/// [`UploadError::Unexpected`] closes the upload; the device reopens it
/// with `UPLOAD_BEGIN` later.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// A frame the upload state does not allow (fatal).
    #[error("{reason}")]
    Unexpected {
        /// The offending frame.
        ref_type: FrameType,
        /// For the device's log.
        reason: &'static str,
    },
    /// The upload is, or would become, larger than `UPLOAD_MAX_BYTES`.
    #[error("upload of {size} bytes exceeds UPLOAD_MAX_BYTES = {limit}")]
    TooLarge {
        /// The offending frame.
        ref_type: FrameType,
        /// Announced, or received so far.
        size: u64,
        /// `UPLOAD_MAX_BYTES`.
        limit: u64,
    },
    /// The upload goes past the `total_size` the device announced.
    #[error("upload goes past the announced total_size {total_size}")]
    PastTotal {
        /// The offending frame.
        ref_type: FrameType,
        /// What `UPLOAD_BEGIN` announced.
        total_size: u64,
    },
    /// The upload is open on another session.
    #[error("upload is open on another session")]
    Conflict,
    /// `UPLOAD_MAX_OPEN` uploads are in progress on this driver already.
    #[error("{0} uploads are in progress on this driver (UPLOAD_MAX_OPEN), retry later")]
    TooManyOpen(usize),
    /// The device's uploads in progress would hold more than
    /// `UPLOAD_MAX_BYTES_PER_SERIAL` on disk.
    #[error("this device's uploads in progress would exceed UPLOAD_MAX_BYTES_PER_SERIAL = {quota} bytes")]
    OverQuota {
        /// The offending frame.
        ref_type: FrameType,
        /// `UPLOAD_MAX_BYTES_PER_SERIAL`.
        quota: u64,
    },
    /// `UPLOAD_DIR`'s filesystem has less free space than
    /// `UPLOAD_MIN_FREE_BYTES`.
    #[error("the server's upload storage is nearly full, retry later")]
    DiskFull,
    /// The disk refused (full, failing): nothing beyond the last
    /// `UPLOAD_STATUS` was stored.
    #[error("cannot store the upload now: {source}")]
    Storage {
        /// The offending frame.
        ref_type: FrameType,
        /// What the filesystem said.
        source: io::Error,
    },
    /// The upload is complete on disk, but the bridge did not take its
    /// `upload_completed` record. The upload is closed (as after any
    /// `BUSY`); `UPLOAD_BEGIN` finds it completed and `UPLOAD_END` records
    /// it again.
    #[error("upload stored, but its record could not be written: {0}")]
    NotRecorded(String),
}

impl UploadError {
    /// The wire code and the frame it refers to (CWP/1 §3 Uploads, §4).
    pub fn code_and_frame(&self) -> (ErrorCode, FrameType) {
        match self {
            Self::Unexpected { ref_type, .. } => (ErrorCode::UNEXPECTED, *ref_type),
            Self::TooLarge { ref_type, .. }
            | Self::PastTotal { ref_type, .. }
            | Self::Storage { ref_type, .. }
            | Self::OverQuota { ref_type, .. } => (ErrorCode::BUSY, *ref_type),
            Self::Conflict => (ErrorCode::UPLOAD_CONFLICT, FrameType::UPLOAD_BEGIN),
            Self::TooManyOpen(_) | Self::DiskFull => (ErrorCode::BUSY, FrameType::UPLOAD_BEGIN),
            Self::NotRecorded(_) => (ErrorCode::BUSY, FrameType::UPLOAD_END),
        }
    }

    /// The `ERROR` frame's message: what the device can act on, nothing
    /// of the server's disk.
    pub fn device_message(&self) -> String {
        match self {
            Self::Storage { .. } => "cannot store the upload now, retry later".to_owned(),
            // Like every BUSY of an upload, it closes the upload; reopened,
            // it is found completed and its UPLOAD_END records it.
            Self::NotRecorded(_) => {
                "upload stored but not recorded yet: retry later with UPLOAD_BEGIN, then UPLOAD_END".to_owned()
            }
            other => other.to_string(),
        }
    }

    /// A frame the upload state does not allow breaks the protocol: the
    /// session ends with it. Every other failure is answered and the
    /// session goes on.
    pub fn into_violation(self) -> Result<Violation, Self> {
        match self {
            Self::Unexpected { ref_type, reason } => Ok(Violation::Unexpected { ref_type, reason }),
            other => Err(other),
        }
    }
}

/// What `UPLOAD_END` answers, in this order.
#[derive(Debug)]
pub struct Ended {
    /// The final durable offset, when the end made more bytes durable.
    pub status: Option<UploadStatus>,
    /// The verdict, or why there is none yet (the upload is stored but
    /// its record could not be written: `BUSY`).
    pub done: Result<UploadDone, UploadError>,
}

/// The connection's upload slot.
#[derive(Debug, Default)]
pub struct Uploads {
    slot: Slot,
}

#[derive(Debug, Default)]
enum Slot {
    /// No upload open.
    #[default]
    Idle,
    /// Receiving `BLOCK`s.
    Receiving(Box<Receiving>),
    /// `UPLOAD_BEGIN` of an upload finished earlier: only its `UPLOAD_END`
    /// (answered again) makes sense.
    Completed(UploadId, Box<CompletedUpload>),
    /// The upload was closed with an error (`BUSY`, `UPLOAD_CONFLICT`):
    /// its `BLOCK`s and `UPLOAD_END` still in flight are ignored until the
    /// next `UPLOAD_BEGIN`, instead of ending the session.
    Refused,
}

/// An open upload receiving data.
#[derive(Debug)]
struct Receiving {
    /// The device's serial, for the logs (sessions carry no tracing span:
    /// see `connection::serve`).
    serial: Serial,
    upload_id: UploadId,
    /// The most bytes it may have: `UPLOAD_MAX_BYTES`, or the announced
    /// `total_size` if smaller.
    limit: Limit,
    /// The data file, locked.
    file: PartialUpload,
    /// Received bytes not yet durable; capacity `UPLOAD_BUFFER_BYTES`.
    buffer: Vec<u8>,
    /// `UPLOAD_BUFFER_BYTES`: flush when the buffer holds this much.
    buffer_bytes: usize,
    /// SHA-256 of every byte received (durable and buffered).
    hasher: Sha256,
    /// Bytes received: durable + buffered.
    received: u64,
    /// Counts this upload's buffer in `upload_buffers` while it lives.
    _counted: GaugeHold,
    /// One of the driver's `UPLOAD_MAX_OPEN` slots, held while it lives.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// The size limits of one upload, and which rule sets each.
#[derive(Debug, Clone, Copy)]
struct Limit {
    /// `UPLOAD_MAX_BYTES`, or the announced `total_size` if smaller.
    bytes: u64,
    /// Whether `bytes` is the announced size.
    announced: bool,
    /// What `UPLOAD_MAX_BYTES_PER_SERIAL` leaves this upload: the quota
    /// less the device's other uploads in progress (`None`: no quota).
    quota: Option<Quota>,
}

/// `UPLOAD_MAX_BYTES_PER_SERIAL` as it applies to one upload.
#[derive(Debug, Clone, Copy)]
struct Quota {
    /// The quota.
    quota: u64,
    /// What the device's other partial uploads leave of it.
    left: u64,
}

impl Limit {
    fn new(total_size: u64, max_bytes: u64, quota: Option<Quota>) -> Self {
        let (bytes, announced) = if total_size > 0 && total_size <= max_bytes {
            (total_size, true)
        } else {
            (max_bytes, false)
        };
        Self {
            bytes,
            announced,
            quota,
        }
    }

    /// Whether the upload may hold `size` bytes.
    fn check(self, ref_type: FrameType, size: u64) -> Result<(), UploadError> {
        if size > self.bytes {
            return Err(if self.announced {
                UploadError::PastTotal {
                    ref_type,
                    total_size: self.bytes,
                }
            } else {
                UploadError::TooLarge {
                    ref_type,
                    size,
                    limit: self.bytes,
                }
            });
        }
        match self.quota {
            Some(quota) if size > quota.left => Err(UploadError::OverQuota {
                ref_type,
                quota: quota.quota,
            }),
            _ => Ok(()),
        }
    }
}

impl Receiving {
    /// How full the buffer gets before it is written: up to the next
    /// multiple of `buffer_bytes` in the file, so that every write is one
    /// aligned buffer even after a resume from an unaligned offset.
    fn fill_to(&self) -> usize {
        drover_upload_store::fill_to(self.file.durable(), self.buffer_bytes)
    }

    /// One write + one fdatasync of the buffer; empties it. The hasher
    /// then holds the state of exactly the durable prefix: checkpointed
    /// every so often, so that a resume need not read it all back.
    fn write_buffer(&mut self) -> io::Result<()> {
        self.file.append(&self.buffer)?;
        self.buffer.clear();
        self.file.checkpoint(&self.hasher);
        Ok(())
    }
}

/// What opening an upload found.
enum Began {
    /// Open on another session.
    Locked,
    /// `UPLOAD_DIR` is below `UPLOAD_MIN_FREE_BYTES`.
    DiskFull,
    /// The device's other uploads in progress use up its quota.
    OverQuota(u64),
    /// Open here, receiving.
    Receiving(Box<Receiving>),
    /// Finished earlier.
    Completed(Box<CompletedUpload>),
}

/// Runs `work` on the blocking pool; a panic there is an I/O failure.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| Err(io::Error::other(join)))
}

/// Makes the buffer durable. On failure the upload is dropped, which
/// releases its lock: the file was already cut back to its durable offset.
async fn flush(mut upload: Box<Receiving>) -> io::Result<Box<Receiving>> {
    blocking(move || upload.write_buffer().map(|()| upload)).await
}

impl Uploads {
    /// Whether an upload is open: `UPLOAD_BEGIN` answered, `UPLOAD_END`
    /// not yet.
    pub fn is_open(&self) -> bool {
        matches!(self.slot, Slot::Receiving(_) | Slot::Completed(..))
    }

    /// Closes whatever is open (the session ends): unflushed bytes are
    /// dropped, never reported; the lock is released.
    pub fn close(&mut self) {
        self.slot = Slot::Idle;
    }

    /// Before a graceful goodbye (`BYE`, a drain): makes the buffered bytes
    /// durable and returns the `UPLOAD_STATUS` that tells the device, so
    /// that it resumes after them. The upload stays open until
    /// [`Uploads::close`].
    pub async fn flush_before_close(&mut self, uploads: &UploadService) -> Option<UploadStatus> {
        let Slot::Receiving(upload) = std::mem::replace(&mut self.slot, Slot::Idle) else {
            return None;
        };
        if upload.buffer.is_empty() {
            return None;
        }
        let flushed = upload.buffer.len() as u64;
        let (serial, upload_id) = (upload.serial, upload.upload_id);
        match flush(upload).await {
            Ok(upload) => {
                uploads.metrics.upload_bytes.inc_by(flushed);
                let status = UploadStatus {
                    upload_id: upload.upload_id,
                    durable_offset: upload.file.durable(),
                };
                self.slot = Slot::Receiving(upload);
                Some(status)
            }
            Err(err) => {
                warn!(%serial, %upload_id, error = %err, "upload buffer not written at close: the device resends it");
                None
            }
        }
    }

    /// `UPLOAD_BEGIN`: opens the upload and returns the `UPLOAD_STATUS`
    /// that tells the device where to resume.
    pub async fn begin(
        &mut self,
        uploads: &UploadService,
        serial: Serial,
        begin: UploadBegin,
    ) -> Result<UploadStatus, UploadError> {
        if self.is_open() {
            return Err(UploadError::Unexpected {
                ref_type: FrameType::UPLOAD_BEGIN,
                reason: "an upload is already open on this connection",
            });
        }
        // Refused until it is open.
        self.slot = Slot::Refused;
        let max_bytes = uploads.max_bytes;
        if begin.total_size > max_bytes {
            return Err(UploadError::TooLarge {
                ref_type: FrameType::UPLOAD_BEGIN,
                size: begin.total_size,
                limit: max_bytes,
            });
        }
        // Each open upload holds a write buffer: their number bounds memory.
        let Ok(slot) = uploads.slots.clone().try_acquire_owned() else {
            return Err(UploadError::TooManyOpen(uploads.max_open));
        };
        let upload_id = begin.upload_id;
        let store = uploads.store.clone();
        let buffer_bytes = uploads.buffer_bytes;
        let name = begin.name.as_str().to_owned();
        let gauge = uploads.metrics.upload_buffers.clone();
        let (quota, min_free) = (uploads.max_bytes_per_serial, uploads.min_free_bytes);
        let opened = blocking(move || {
            if min_free > 0 && store.free_bytes()? < min_free {
                return Ok(Began::DiskFull);
            }
            let quota = if quota == 0 {
                None
            } else {
                let others = store.partial_bytes(&serial, upload_id)?;
                match quota.checked_sub(others) {
                    Some(left) if left > 0 && begin.total_size <= left => Some(Quota { quota, left }),
                    _ => return Ok(Began::OverQuota(quota)),
                }
            };
            let limit = Limit::new(begin.total_size, max_bytes, quota);
            let opened = match store.open(
                &serial,
                upload_id,
                &name,
                begin.total_size,
                drover_service::clock::unix_ms(),
            ) {
                Ok(opened) => opened,
                Err(StoreError::Locked) => return Ok(Began::Locked),
                Err(StoreError::Io(err)) => return Err(err),
            };
            Ok(match opened {
                Opened::Completed(completed) => Began::Completed(Box::new(completed)),
                Opened::Partial(mut file) => {
                    let counted = GaugeHold::new(&gauge);
                    let mut buffer = Vec::with_capacity(buffer_bytes);
                    // A resumed upload: its digest so far, from the last
                    // checkpoint (at most CHECKPOINT_BYTES read back).
                    let (hasher, read_back) = file.hash_prefix(&mut buffer)?;
                    if read_back > 0 {
                        debug!(%serial, %upload_id, read_back, "resumed upload: hashed the bytes after its last checkpoint");
                    }
                    Began::Receiving(Box::new(Receiving {
                        serial,
                        upload_id,
                        limit,
                        received: file.durable(),
                        file,
                        buffer,
                        buffer_bytes,
                        hasher,
                        _counted: counted,
                        _slot: slot,
                    }))
                }
            })
        })
        .await
        .map_err(|source| {
            warn!(%serial, %upload_id, error = %source, "cannot open upload");
            UploadError::Storage {
                ref_type: FrameType::UPLOAD_BEGIN,
                source,
            }
        })?;
        let durable_offset = match opened {
            Began::Locked => return Err(UploadError::Conflict),
            Began::DiskFull => {
                warn!(%serial, %upload_id, dir = %uploads.store.root().display(), "UPLOAD_DIR is below UPLOAD_MIN_FREE_BYTES: uploads get BUSY");
                return Err(UploadError::DiskFull);
            }
            Began::OverQuota(quota) => {
                return Err(UploadError::OverQuota {
                    ref_type: FrameType::UPLOAD_BEGIN,
                    quota,
                });
            }
            Began::Receiving(upload) => {
                upload.limit.check(FrameType::UPLOAD_BEGIN, upload.received)?;
                debug!(%upload_id, durable_offset = upload.received, "upload opened");
                let durable_offset = upload.received;
                self.slot = Slot::Receiving(upload);
                durable_offset
            }
            Began::Completed(completed) => {
                debug!(%upload_id, size = completed.size, "upload was completed earlier");
                let size = completed.size;
                self.slot = Slot::Completed(upload_id, completed);
                size
            }
        };
        Ok(UploadStatus {
            upload_id,
            durable_offset,
        })
    }

    /// `BLOCK`: the next bytes. Returns the `UPLOAD_STATUS` to send when
    /// they filled the buffer and it was made durable.
    pub async fn block(&mut self, uploads: &UploadService, data: Bytes) -> Result<Option<UploadStatus>, UploadError> {
        let mut upload = match std::mem::replace(&mut self.slot, Slot::Refused) {
            Slot::Receiving(upload) => upload,
            Slot::Idle => {
                return Err(UploadError::Unexpected {
                    ref_type: FrameType::BLOCK,
                    reason: "BLOCK with no upload open",
                });
            }
            Slot::Refused => return Ok(None),
            Slot::Completed(_, completed) => {
                return Err(UploadError::PastTotal {
                    ref_type: FrameType::BLOCK,
                    total_size: completed.size,
                });
            }
        };
        let received = upload.received + data.len() as u64;
        upload.limit.check(FrameType::BLOCK, received)?;
        upload.received = received;
        let mut rest: &[u8] = &data;
        let mut status = None;
        loop {
            let fill_to = upload.fill_to();
            let room = fill_to - upload.buffer.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            // Hashed as it enters the buffer: at each flush the hasher
            // covers exactly the durable prefix (see `write_buffer`).
            upload.hasher.update(now);
            upload.buffer.extend_from_slice(now);
            rest = later;
            if upload.buffer.len() == fill_to {
                let flushed = upload.buffer.len() as u64;
                let (serial, upload_id) = (upload.serial, upload.upload_id);
                upload = flush(upload).await.map_err(|source| {
                    warn!(%serial, %upload_id, error = %source, "upload write failed; the device gets BUSY");
                    UploadError::Storage {
                        ref_type: FrameType::BLOCK,
                        source,
                    }
                })?;
                uploads.metrics.upload_bytes.inc_by(flushed);
                status = Some(UploadStatus {
                    upload_id: upload.upload_id,
                    durable_offset: upload.file.durable(),
                });
            }
            if rest.is_empty() {
                break;
            }
        }
        self.slot = Slot::Receiving(upload);
        Ok(status)
    }

    /// `UPLOAD_END`: checks size and digest; completes the upload (durable,
    /// moved to `completed/`, recorded through the bridge) or discards it.
    /// `None`: the frame belongs to an upload refused earlier and is ignored.
    pub async fn end(
        &mut self,
        uploads: &UploadService,
        serial: Serial,
        end: UploadEnd,
    ) -> Result<Option<Ended>, UploadError> {
        let not_open = UploadError::Unexpected {
            ref_type: FrameType::UPLOAD_END,
            reason: "UPLOAD_END for an upload that is not open",
        };
        match std::mem::take(&mut self.slot) {
            Slot::Idle => Err(not_open),
            Slot::Refused => {
                self.slot = Slot::Refused;
                Ok(None)
            }
            Slot::Completed(upload_id, completed) => {
                if upload_id != end.upload_id {
                    return Err(not_open);
                }
                let status = verdict(
                    completed.size,
                    &hex::decode(&completed.sha256).unwrap_or_default(),
                    &end,
                );
                let recorded = if status == UploadOutcome::OK {
                    record(uploads, &completed).await
                } else {
                    warn!(%serial, %upload_id, ?status, "UPLOAD_END does not match the completed upload; it is kept");
                    Ok(())
                };
                if recorded.is_err() {
                    self.slot = Slot::Refused;
                }
                Ok(Some(Ended {
                    status: None,
                    done: recorded.map(|()| UploadDone {
                        upload_id,
                        size: completed.size,
                        status,
                    }),
                }))
            }
            Slot::Receiving(upload) => {
                if upload.upload_id != end.upload_id {
                    return Err(not_open);
                }
                let Receiving {
                    upload_id,
                    mut file,
                    buffer,
                    hasher,
                    received,
                    ..
                } = *upload;
                let digest: [u8; 32] = hasher.finalize().into();
                let status = verdict(received, &digest, &end);
                let done = UploadDone {
                    upload_id,
                    size: received,
                    status,
                };
                if status != UploadOutcome::OK {
                    // CWP/1 §3: on a mismatch the stored upload is discarded.
                    if let Err(err) = blocking(move || file.discard()).await {
                        warn!(%serial, %upload_id, error = %err, "cannot discard a mismatched upload; the expiry will");
                    }
                    let result = if status == UploadOutcome::SIZE_MISMATCH {
                        "size_mismatch"
                    } else {
                        "digest_mismatch"
                    };
                    uploads.metrics.uploads.get_or_create(&ResultLabel { result }).inc();
                    info!(%serial, %upload_id, received, announced = end.total_size, result, "upload discarded");
                    return Ok(Some(Ended {
                        status: None,
                        done: Ok(done),
                    }));
                }
                let flushed = buffer.len() as u64;
                let completed = blocking(move || {
                    if !buffer.is_empty() {
                        file.append(&buffer)?;
                    }
                    file.complete(&digest, drover_service::clock::unix_ms())
                })
                .await
                .map_err(|source| {
                    warn!(%serial, %upload_id, error = %source, "cannot complete upload; the device gets BUSY");
                    UploadError::Storage {
                        ref_type: FrameType::UPLOAD_END,
                        source,
                    }
                })?;
                uploads.metrics.upload_bytes.inc_by(flushed);
                let status = (flushed > 0).then_some(UploadStatus {
                    upload_id,
                    durable_offset: received,
                });
                if let Err(err) = record(uploads, &completed).await {
                    self.slot = Slot::Refused;
                    return Ok(Some(Ended { status, done: Err(err) }));
                }
                uploads
                    .metrics
                    .uploads
                    .get_or_create(&ResultLabel { result: "ok" })
                    .inc();
                info!(
                    %serial,
                    %upload_id,
                    name = %completed.name,
                    size = completed.size,
                    sha256 = %completed.sha256,
                    path = %completed.path,
                    "upload completed"
                );
                Ok(Some(Ended { status, done: Ok(done) }))
            }
        }
    }
}

/// `UPLOAD_DONE.status` for what was received against what `end` claims.
fn verdict(size: u64, digest: &[u8], end: &UploadEnd) -> UploadOutcome {
    if size != end.total_size {
        UploadOutcome::SIZE_MISMATCH
    } else if digest != end.sha256 {
        UploadOutcome::DIGEST_MISMATCH
    } else {
        UploadOutcome::OK
    }
}

/// Appends the `upload_completed` record (idempotent at the bridge).
async fn record(uploads: &UploadService, completed: &CompletedUpload) -> Result<(), UploadError> {
    match uploads.bridge.record_upload(completed).await {
        Ok(appended) => {
            debug!(upload_id = %completed.upload_id, appended, "upload recorded");
            Ok(())
        }
        Err(status) => {
            warn!(serial = %completed.serial, upload_id = %completed.upload_id, code = ?status.code(), message = status.message(), "cannot record a completed upload");
            Err(UploadError::NotRecorded(status.message().to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refusal::Refusal;

    #[test]
    fn each_failure_maps_to_one_cwp_error_with_the_spec_fatality() {
        let cases = [
            (
                UploadError::Unexpected {
                    ref_type: FrameType::BLOCK,
                    reason: "BLOCK with no upload open",
                },
                ErrorCode::UNEXPECTED,
                true,
                FrameType::BLOCK,
            ),
            (
                UploadError::TooLarge {
                    ref_type: FrameType::UPLOAD_BEGIN,
                    size: 2_000,
                    limit: 1_000,
                },
                ErrorCode::BUSY,
                false,
                FrameType::UPLOAD_BEGIN,
            ),
            (
                UploadError::PastTotal {
                    ref_type: FrameType::BLOCK,
                    total_size: 10,
                },
                ErrorCode::BUSY,
                false,
                FrameType::BLOCK,
            ),
            (
                UploadError::Conflict,
                ErrorCode::UPLOAD_CONFLICT,
                false,
                FrameType::UPLOAD_BEGIN,
            ),
            (
                UploadError::Storage {
                    ref_type: FrameType::BLOCK,
                    source: io::Error::from_raw_os_error(28),
                },
                ErrorCode::BUSY,
                false,
                FrameType::BLOCK,
            ),
            (
                UploadError::NotRecorded("unavailable".to_owned()),
                ErrorCode::BUSY,
                false,
                FrameType::UPLOAD_END,
            ),
        ];
        for (error, code, fatal, ref_type) in cases {
            let described = error.to_string();
            let frame = Refusal::Upload(error).to_frame();
            assert_eq!(
                (frame.code, frame.fatal, frame.ref_type),
                (code, fatal, ref_type),
                "{described}"
            );
        }
        let limit = UploadError::TooLarge {
            ref_type: FrameType::BLOCK,
            size: 2_000,
            limit: 1_000,
        };
        assert_eq!(
            Refusal::Upload(limit).to_frame().message.as_str(),
            "upload of 2000 bytes exceeds UPLOAD_MAX_BYTES = 1000"
        );
        let disk = UploadError::Storage {
            ref_type: FrameType::BLOCK,
            source: io::Error::other("/var/lib/drover: No space left on device"),
        };
        assert!(
            !Refusal::Upload(disk).to_frame().message.as_str().contains("/var"),
            "no server paths reach the device"
        );
    }

    #[test]
    fn the_announced_size_is_the_limit_when_it_is_the_smaller() {
        let announced = Limit::new(5_000, 1_000_000, None);
        assert_eq!(announced.bytes, 5_000);
        assert!(announced.check(FrameType::BLOCK, 5_000).is_ok());
        assert!(matches!(
            announced.check(FrameType::BLOCK, 5_001),
            Err(UploadError::PastTotal { total_size: 5_000, .. })
        ));
        for unknown_or_too_big in [0, 2_000_000] {
            let limit = Limit::new(unknown_or_too_big, 1_000_000, None);
            assert_eq!(limit.bytes, 1_000_000);
            assert!(matches!(
                limit.check(FrameType::BLOCK, 1_000_001),
                Err(UploadError::TooLarge { limit: 1_000_000, .. })
            ));
        }
    }

    #[test]
    fn the_serial_quota_binds_when_other_uploads_leave_less() {
        let limit = Limit::new(
            0,
            1_000_000,
            Some(Quota {
                quota: 3_000,
                left: 1_000,
            }),
        );
        assert!(limit.check(FrameType::BLOCK, 1_000).is_ok());
        assert!(matches!(
            limit.check(FrameType::BLOCK, 1_001),
            Err(UploadError::OverQuota { quota: 3_000, .. })
        ));
        let refusal = Refusal::Upload(UploadError::OverQuota {
            ref_type: FrameType::BLOCK,
            quota: 3_000,
        })
        .to_frame();
        assert_eq!((refusal.code, refusal.fatal), (ErrorCode::BUSY, false));
    }
}
