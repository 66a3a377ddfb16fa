//! Drover's upload storage under `UPLOAD_DIR`: one store for both
//! transports. The driver writes CWP/1 uploads (`UPLOAD_BEGIN`, `BLOCK`,
//! `UPLOAD_END`) through it, the HTTP gateway tus 1.0 uploads (`POST`,
//! `PATCH`, `HEAD`); both use the same layout, the same lock, the same
//! durable offsets, the same completion records and the same expiry, so
//! that an upload begun on one driver or gateway resumes on any other
//! sharing the directory.
//!
//! [`store`] holds the files; [`fill_to`] is the write-buffer discipline
//! both writers follow; [`expiry`] deletes abandoned partial uploads.
//!
//! # Why a reported offset is always on disk
//!
//! 1. The data file is only ever extended, in order, with the upload's next
//!    bytes (checked bytes of the one writer holding its `flock`). Any
//!    prefix of it is therefore correct data, whatever was interrupted.
//! 2. An offset is reported only after the `fdatasync` that covers it
//!    returned success. A failed write or fsync cuts the file back to the
//!    last durable length (bytes a failed fsync left in the page cache may
//!    never reach the disk).
//! 3. On (re)open the durable offset is the file's length after an
//!    `fdatasync` performed under the lock: bytes a killed process left in
//!    the page cache become durable before they are reported, and the
//!    reported offset may be larger than any offset reported before, never
//!    smaller than a reported one. The one exception is bytes written
//!    under a `verify` marker (waiting for a checksum): they were never
//!    reported, and the open cuts them off.
//! 4. After a power loss, the length may only cover written blocks: true of
//!    ext4 (`data=ordered`, the default, with or without delalloc), XFS and
//!    btrfs, which never expose an extended size over unwritten data. Not
//!    true of ext4 `data=writeback` or ext3 `writeback`: do not put
//!    `UPLOAD_DIR` there. `UPLOAD_DIR` shared between processes must be one
//!    local filesystem (or one whose `flock` and `fdatasync` work across its
//!    clients).
//! 5. The metadata is written before any data, crash-safely (temporary
//!    file, fsync, rename, fsync of the directory), so a data file without
//!    metadata never held anything reported, and is emptied. Completion is:
//!    final write + `fdatasync`, completion record written the same
//!    crash-safe way, data renamed into `completed/`, both directories
//!    fsynced; only then is the upload recorded in `cwp:uploads`.
//!
//! Residual risk: an `fsync` that fails with `EIO` and a crash before the
//! file is cut back (point 2) could let the next open report bytes the disk
//! lost; the kernel logs the I/O error.

pub mod expiry;
pub mod store;

pub use store::{
    CHECKPOINT_BYTES, CompletedUpload, Expired, Opened, PartialUpload, StoreError, Syncer, Transport, TusMeta,
    UploadMeta, UploadStore, serial_dir_name,
};

/// How full a write buffer of `buffer_bytes` gets before it is written,
/// for an upload whose durable offset is `durable`: up to the next multiple
/// of `buffer_bytes` in the file, so that every write is one aligned buffer
/// even after a resume from an unaligned offset.
pub fn fill_to(durable: u64, buffer_bytes: usize) -> usize {
    let buffer_bytes = buffer_bytes.max(1) as u64;
    // Less than buffer_bytes, which is a usize.
    usize::try_from(buffer_bytes - durable % buffer_bytes).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::fill_to;

    #[test]
    fn buffers_fill_to_the_next_aligned_offset_in_the_file() {
        assert_eq!(fill_to(0, 256), 256);
        assert_eq!(fill_to(100, 256), 156);
        assert_eq!(fill_to(512, 256), 256);
    }
}
