//! CWP/1 §3 Uploads: a device's bulk data, received into one write buffer
//! per uploading connection and stored under `UPLOAD_DIR`.
//!
//! - [`session`]: one connection's upload (`UPLOAD_BEGIN`, `BLOCK`,
//!   `UPLOAD_END`): the write buffer, the incremental SHA-256, the limits,
//!   and the one place upload failures become CWP/1 errors.
//! - [`store`]: the files: layout, the `flock` that makes an upload id
//!   exclusive to one session fleet-wide, recovery, completion, expiry.
//! - [`UploadService`]: what every uploading connection shares (the
//!   store, the `UPLOAD_MAX_OPEN` slots, the limits, the bridge that
//!   records completed uploads).
//! - [`expire_periodically`]: the background task deleting abandoned
//!   partial uploads.
//!
//! # Data path
//!
//! Each `BLOCK`'s data (a slice of the connection's receive buffer, its
//! frame already checked and its tag stripped by the codec) is hashed and
//! copied once, into the write buffer (`UPLOAD_BUFFER_BYTES`, allocated at
//! `UPLOAD_BEGIN`, freed when the upload closes). When the buffer is full,
//! and at `UPLOAD_END`, the buffer and the file move to tokio's blocking
//! pool for one `write` and one `fdatasync`, and come back; meanwhile the
//! connection reads nothing (back-pressure to the device). Then
//! `UPLOAD_STATUS` reports the new durable offset. No allocation per block,
//! never more than one buffer per upload in memory.
//!
//! # Why a reported offset is always on disk
//!
//! 1. The data file is only ever extended, in order, with the upload's next
//!    bytes (checked frames of the one session holding its `flock`). Any
//!    prefix of it is therefore correct data, whatever was interrupted.
//! 2. `UPLOAD_STATUS(n)` is sent only after the `fdatasync` that covers
//!    byte `n` returned success. A failed write or fsync cuts the file back
//!    to the last durable length (bytes a failed fsync left in the page
//!    cache may never reach the disk) and answers `BUSY`.
//! 3. On (re)open the durable offset is the file's length after an
//!    `fdatasync` performed under the lock: bytes a killed process left in
//!    the page cache become durable before they are reported, and the
//!    reported offset may be larger than any offset reported before, never
//!    smaller than a reported one.
//! 4. After a power loss, the length may only cover written blocks: true of
//!    ext4 (`data=ordered`, the default, with or without delalloc), XFS and
//!    btrfs, which never expose an extended size over unwritten data. Not
//!    true of ext4 `data=writeback` or ext3 `writeback`: do not put
//!    `UPLOAD_DIR` there. `UPLOAD_DIR` shared between drivers must be one
//!    local filesystem (or one whose `flock` and `fdatasync` work across its
//!    clients).
//! 5. The metadata (serial, id, name, announced size, creation time) is
//!    written once, before any data, crash-safely (temporary file, fsync,
//!    rename, fsync of the directory), so a data file without metadata
//!    never held anything reported, and is emptied. Completion is: final
//!    write + `fdatasync`, completion record written the same crash-safe
//!    way, data renamed into `completed/`, both directories fsynced; only
//!    then the `upload_completed` record goes to the bridge, and only then
//!    `UPLOAD_DONE OK`.
//!
//! Residual risk: an `fsync` that fails with `EIO` and a crash before the
//! file is cut back (point 2) could let the next open report bytes the disk
//! lost; the kernel logs the I/O error.

pub mod session;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use drover_service::drain;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use drover_edge::bridge::BridgeClient;
pub use session::{Ended, UploadError, Uploads};
pub use store::UploadStore;

use crate::metrics::Metrics;

/// The limits of a driver's uploads.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// `UPLOAD_MAX_OPEN`: uploads in progress on this driver at once.
    pub max_open: usize,
    /// `UPLOAD_MAX_BYTES`: the largest upload.
    pub max_bytes: u64,
    /// `UPLOAD_MAX_BYTES_PER_SERIAL`: bytes of one device's uploads in
    /// progress on disk, all drivers together (0: no quota).
    pub max_bytes_per_serial: u64,
    /// `UPLOAD_MIN_FREE_BYTES`: below this much free space, `UPLOAD_BEGIN`
    /// gets `BUSY` (0: no floor).
    pub min_free_bytes: u64,
    /// `UPLOAD_BUFFER_BYTES`: each upload's write buffer.
    pub buffer_bytes: usize,
}

/// What every uploading connection of the driver shares.
#[derive(Debug)]
pub struct UploadService {
    /// The files under `UPLOAD_DIR`.
    pub store: UploadStore,
    /// `UPLOAD_MAX_OPEN` slots: an upload in progress holds one (and its
    /// write buffer).
    slots: Arc<Semaphore>,
    /// `UPLOAD_MAX_OPEN`, for the refusal's message.
    max_open: usize,
    /// `UPLOAD_MAX_BYTES`.
    max_bytes: u64,
    /// `UPLOAD_MAX_BYTES_PER_SERIAL` (0: no quota).
    max_bytes_per_serial: u64,
    /// `UPLOAD_MIN_FREE_BYTES` (0: no floor).
    min_free_bytes: u64,
    /// `UPLOAD_BUFFER_BYTES`.
    buffer_bytes: usize,
    /// Bytes, outcomes, buffers held.
    metrics: Arc<Metrics>,
    /// Records completed uploads (`RecordUpload`).
    bridge: BridgeClient,
}

impl UploadService {
    /// The uploads of a driver, within `limits`, recording completed ones
    /// through `bridge`.
    pub fn new(store: UploadStore, limits: UploadLimits, metrics: Arc<Metrics>, bridge: BridgeClient) -> Self {
        let UploadLimits {
            max_open,
            max_bytes,
            max_bytes_per_serial,
            min_free_bytes,
            buffer_bytes,
        } = limits;
        Self {
            store,
            slots: Arc::new(Semaphore::new(max_open)),
            max_open,
            max_bytes,
            max_bytes_per_serial,
            min_free_bytes,
            buffer_bytes,
            metrics,
            bridge,
        }
    }
}

/// Longest time between two expiry passes.
const MAX_EXPIRY_INTERVAL: Duration = Duration::from_secs(3600);

/// How often the expiry looks: a quarter of the expiry age, at most hourly,
/// at least every second.
pub fn expiry_interval(expire_after: Duration) -> Duration {
    (expire_after / 4).clamp(Duration::from_secs(1), MAX_EXPIRY_INTERVAL)
}

/// Deletes partial uploads untouched for `expire_after` (and not open on
/// any session) every [`expiry_interval`], until `stop` is signalled.
pub async fn expire_periodically(store: UploadStore, expire_after: Duration, stop: drain::Watch) {
    let interval = expiry_interval(expire_after);
    loop {
        let pass = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.expire(expire_after, SystemTime::now()))
        };
        match pass.await {
            Ok(Ok(expired)) if expired.removed > 0 => {
                info!(
                    removed = expired.removed,
                    in_use = expired.in_use,
                    "expired abandoned partial uploads"
                );
            }
            Ok(Ok(expired)) => debug!(in_use = expired.in_use, "no partial upload to expire"),
            Ok(Err(err)) => warn!(error = %err, dir = %store.root().display(), "upload expiry pass failed"),
            Err(err) => warn!(error = %err, "upload expiry pass panicked"),
        }
        tokio::select! {
            () = stop.signaled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_looks_four_times_per_age_between_every_second_and_hourly() {
        assert_eq!(
            expiry_interval(Duration::from_secs(7 * 86_400)),
            Duration::from_secs(3600)
        );
        assert_eq!(expiry_interval(Duration::from_secs(3600)), Duration::from_secs(900));
        assert_eq!(expiry_interval(Duration::from_secs(2)), Duration::from_secs(1));
    }
}
