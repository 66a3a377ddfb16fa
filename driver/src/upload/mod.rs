//! CWP/1 §3 Uploads: a device's bulk data, received into one write buffer
//! per uploading connection and stored under `UPLOAD_DIR`.
//!
//! - [`session`]: one connection's upload (`UPLOAD_BEGIN`, `BLOCK`,
//!   `UPLOAD_END`): the write buffer, the incremental SHA-256, the limits,
//!   and the one place upload failures become CWP/1 errors.
//! - `drover_upload_store`: the files: layout, the `flock` that makes an
//!   upload id exclusive to one session fleet-wide, recovery, completion,
//!   expiry (shared with the HTTP gateway).
//! - [`UploadService`]: what every uploading connection shares (the
//!   store, the `UPLOAD_MAX_OPEN` slots, the limits, the bridge that
//!   records completed uploads).
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
//! Why a reported offset is always on disk, and the layout under
//! `UPLOAD_DIR`: see `drover-upload-store`, shared with the HTTP gateway's
//! tus uploads.

pub mod session;

use std::sync::Arc;

use tokio::sync::Semaphore;

use drover_edge::bridge::BridgeClient;
pub use drover_upload_store::UploadStore;
pub use drover_upload_store::expiry::expire_periodically;
pub use session::{Ended, UploadError, Uploads};

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
