//! The device's side of CWP/1 §3 Uploads: one upload per device, resumed
//! across connections until the server answers `UPLOAD_DONE OK`.
//!
//! On every connection: `UPLOAD_BEGIN`, then `BLOCK`s from the server's
//! `durable_offset`, never more than the job's window beyond the last
//! durable offset in flight, then `UPLOAD_END` with the size and SHA-256.
//! `ERROR BUSY` or `UPLOAD_CONFLICT` about an upload frame: the server has
//! closed the upload; the device waits (backoff) and begins again. A size
//! or digest mismatch: start again at 0.
//!
//! The content is one buffer shared by every device of a run (blocks are
//! slices of it, like event bodies): a device "frees" data below the
//! durable offset simply by never sending it again.

use bytes::Bytes;
use cwp::UploadId;
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

/// Firmware's block size: a `BLOCK` frame of exactly 1 KiB (12 header +
/// 1,004 data + 8 tag).
pub const DEFAULT_BLOCK_SIZE: usize = 1004;
/// Bytes a device sends beyond the last durable offset. The server reports
/// at least once per MiB received (CWP/1 §3), so anything from 1 MiB plus
/// a block never stalls; twice that keeps the pipe full while the server
/// fsyncs.
pub const DEFAULT_WINDOW: u64 = 2 << 20;

/// What a device uploads: the content and how it is sent.
#[derive(Debug, Clone)]
pub struct UploadJob {
    /// The bytes, shared by every device with this job.
    pub content: Bytes,
    /// SHA-256 of `content`, for `UPLOAD_END`.
    pub sha256: [u8; 32],
    /// Data bytes per `BLOCK`.
    pub block_size: usize,
    /// Most bytes in flight beyond the last `durable_offset`.
    pub window: u64,
    /// `UPLOAD_BEGIN.name`.
    pub name: String,
}

impl UploadJob {
    /// A job uploading `content` in blocks of `block_size`, with the
    /// default window.
    pub fn new(content: Bytes, block_size: usize, name: &str) -> Self {
        Self {
            sha256: Sha256::digest(&content).into(),
            content,
            block_size: block_size.max(1),
            window: DEFAULT_WINDOW,
            name: name.to_owned(),
        }
    }

    /// `size` bytes of reproducible pseudo-random content (SplitMix64 from
    /// `seed`): incompressible, and different for different seeds.
    pub fn content(size: usize, seed: u64) -> Bytes {
        let mut state = seed;
        let mut bytes = Vec::with_capacity(size + 8);
        while bytes.len() < size {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        bytes.truncate(size);
        bytes.into()
    }

    /// The upload's size.
    pub fn size(&self) -> u64 {
        self.content.len() as u64
    }
}

/// One device's upload, across its connections.
#[derive(Debug)]
pub(crate) struct UploadProgress {
    /// Chosen once per device and kept across reconnects.
    pub(crate) upload_id: UploadId,
    /// The server's latest `durable_offset`: nothing below it is sent again.
    pub(crate) durable: u64,
    /// Highest offset ever sent (bytes below it sent again are resends).
    pub(crate) highest_sent: u64,
    /// `UPLOAD_DONE OK` received: the device may delete the upload.
    pub(crate) done: bool,
    /// Consecutive refusals, for their backoff.
    pub(crate) refusals: u32,
}

impl UploadProgress {
    pub(crate) fn new(upload_id: UploadId) -> Self {
        Self {
            upload_id,
            durable: 0,
            highest_sent: 0,
            done: false,
            refusals: 0,
        }
    }
}

/// Where the upload stands on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UploadPhase {
    /// Nothing to upload, or done.
    Idle,
    /// `UPLOAD_BEGIN` goes out at `at` (now, or after a refusal's backoff).
    Waiting { at: Instant },
    /// `UPLOAD_BEGIN` sent; waiting for the `UPLOAD_STATUS` that says where
    /// to resume.
    Begun,
    /// Sending `BLOCK`s; `next` is the offset of the next one.
    Sending { next: u64 },
    /// `UPLOAD_END` sent; waiting for `UPLOAD_DONE`.
    Ending,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_reproducible_and_differs_by_seed() {
        let a = UploadJob::content(10_000, 1);
        assert_eq!(a.len(), 10_000);
        assert_eq!(a, UploadJob::content(10_000, 1));
        assert_ne!(a, UploadJob::content(10_000, 2));
        assert_eq!(UploadJob::content(13, 1)[..], a[..13]);
    }

    #[test]
    fn a_job_knows_its_digest() {
        let job = UploadJob::new(Bytes::from_static(b"abc"), 0, "x");
        assert_eq!(
            hex_lower(&job.sha256),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!((job.size(), job.block_size, job.window), (3, 1, DEFAULT_WINDOW));
    }

    fn hex_lower(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
