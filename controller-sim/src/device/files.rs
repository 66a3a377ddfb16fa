//! A device receiving a rollout's file (CWP/1 §3 Files), as firmware
//! would: it holds the SHA-256 state of the prefix it has (not the bytes),
//! resumes at that offset after a reconnect, acknowledges every half
//! window, verifies the digest at the end, and checks that the server
//! never sends beyond its window. Optionally it declines offers, corrupts
//! one byte of a transfer, or drops its connection mid-transfer (each
//! with a probability per offer).

use std::time::Duration;

use cwp::{FileAccept, FileAck, FileAckStatus, FileChunk, FileId, FileOffer};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

/// How a device treats offered files.
#[derive(Debug, Clone, PartialEq)]
pub struct FilePolicy {
    /// `FILE_ACCEPT.window`.
    pub window: u32,
    /// Probability that an offer is declined (window 0).
    pub decline: f64,
    /// Probability that a transfer has one byte corrupted (a
    /// `DIGEST_MISMATCH` at its end).
    pub corrupt: f64,
    /// Probability that the device drops its connection somewhere in a
    /// transfer (it resumes on the next one).
    pub drop: f64,
    /// Where a device accepts a file it was never offered before, if not
    /// at 0: as if an earlier attempt had left it that much.
    pub start: Option<FileStart>,
}

/// A device that holds the first bytes of a file before it is offered it
/// (what an earlier attempt, e.g. under another server, left it): it
/// accepts at `offset` and verifies with the prefix's hash state.
#[derive(Debug, Clone)]
pub struct FileStart {
    /// The bytes held.
    pub offset: u64,
    /// The SHA-256 state of those bytes (of the file to be offered, or the
    /// digest will not match and the device starts again from 0).
    pub prefix: Sha256,
}

impl FileStart {
    /// Hashes the first `offset` bytes of `path`.
    pub fn from_file(path: &std::path::Path, offset: u64) -> std::io::Result<Self> {
        use std::io::Read as _;
        let mut file = std::fs::File::open(path)?.take(offset);
        let mut prefix = Sha256::new();
        let mut buffer = vec![0; 64 * 1024];
        let mut copied = 0u64;
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            prefix.update(&buffer[..read]);
            copied += read as u64;
        }
        if copied < offset {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} holds {copied} bytes, fewer than {offset}", path.display()),
            ));
        }
        Ok(Self { offset, prefix })
    }
}

impl PartialEq for FileStart {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset && self.prefix.clone().finalize() == other.prefix.clone().finalize()
    }
}

impl Default for FilePolicy {
    fn default() -> Self {
        Self {
            window: 256 * 1024,
            decline: 0.0,
            corrupt: 0.0,
            drop: 0.0,
            start: None,
        }
    }
}

/// What the file transfers of a run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileSummary {
    /// `FILE_OFFER`s received.
    pub offers: u64,
    /// Offers declined.
    pub declined: u64,
    /// Offers accepted at an offset above 0 (resumes).
    pub resumes: u64,
    /// Chunk bytes received.
    pub bytes: u64,
    /// Files received whole with a matching digest.
    pub verified: u64,
    /// Files whose digest did not match.
    pub mismatches: u64,
    /// Connections dropped on purpose mid-transfer.
    pub drops: u64,
    /// Chunks beyond the window, or not where the device was (the server
    /// broke CWP/1 §3).
    pub window_violations: u64,
    /// Chunks with no transfer accepted.
    pub stray_chunks: u64,
    /// Each verified file's rate, from its first offer to its last byte
    /// (the bytes it did not hold at the first offer), MB/s.
    pub rates_mb_s: Vec<f64>,
}

impl FileSummary {
    /// Adds another process's.
    pub fn absorb(&mut self, other: &Self) {
        self.offers += other.offers;
        self.declined += other.declined;
        self.resumes += other.resumes;
        self.bytes += other.bytes;
        self.verified += other.verified;
        self.mismatches += other.mismatches;
        self.drops += other.drops;
        self.window_violations += other.window_violations;
        self.stray_chunks += other.stray_chunks;
        self.rates_mb_s.extend_from_slice(&other.rates_mb_s);
    }

    /// Per-device rates: min, median, max (MB/s).
    pub fn rate_spread(&self) -> Option<(f64, f64, f64)> {
        let mut rates = self.rates_mb_s.clone();
        rates.sort_by(f64::total_cmp);
        Some((*rates.first()?, rates[rates.len() / 2], *rates.last()?))
    }
}

/// One file the device is receiving (or has), across connections.
#[derive(Debug)]
pub struct Reception {
    file_id: FileId,
    size: u64,
    sha256: [u8; 32],
    /// Bytes held (hashed).
    offset: u64,
    /// The SHA-256 state of the bytes held.
    hasher: Sha256,
    /// The last `FILE_ACK.offset` sent (the window counts from it).
    acked: u64,
    window: u32,
    /// Accepted on this connection (chunks are expected).
    accepted: bool,
    /// The byte to corrupt, if this transfer corrupts one.
    corrupt_at: Option<u64>,
    /// Where to drop the connection, if this transfer drops it.
    drop_at: Option<u64>,
    /// Verified: a new offer of it is answered at once.
    done: bool,
    /// When it was first offered, and where it was then.
    started: Instant,
    first_offset: u64,
}

/// What a chunk calls for.
#[derive(Debug)]
pub enum Received {
    /// Nothing to send.
    Nothing,
    /// Send this acknowledgement.
    Ack(FileAck),
    /// Drop the connection now (a planned cut).
    Drop,
}

fn chance(probability: f64) -> bool {
    probability > 0.0 && rand::random::<f64>() < probability
}

fn somewhere_in(size: u64) -> Option<u64> {
    (size > 1).then(|| rand::random::<u64>() % size)
}

/// The device's answer to `FILE_OFFER`; `reception` is replaced when the
/// offer is another file.
pub fn on_offer(
    reception: &mut Option<Reception>,
    offer: &FileOffer,
    policy: &FilePolicy,
    summary: &mut FileSummary,
) -> FileAccept {
    summary.offers += 1;
    let same = reception
        .as_ref()
        .is_some_and(|r| r.file_id == offer.file_id && r.sha256 == offer.sha256 && r.size == offer.size);
    if !same {
        if chance(policy.decline) {
            summary.declined += 1;
            return FileAccept {
                file_id: offer.file_id,
                offset: 0,
                window: 0,
            };
        }
        // A prefix held from before fits only a file at least as long.
        let (offset, hasher) = match &policy.start {
            Some(start) if start.offset <= offer.size => (start.offset, start.prefix.clone()),
            _ => (0, Sha256::new()),
        };
        *reception = Some(Reception {
            file_id: offer.file_id,
            size: offer.size,
            sha256: offer.sha256,
            offset,
            hasher,
            acked: 0,
            window: policy.window,
            accepted: false,
            corrupt_at: None,
            drop_at: None,
            done: false,
            started: Instant::now(),
            first_offset: offset,
        });
    }
    let Some(r) = reception.as_mut() else {
        unreachable!("a reception was just made")
    };
    if r.offset > 0 && !r.done {
        summary.resumes += 1;
    }
    r.accepted = true;
    r.acked = r.offset;
    r.window = policy.window;
    r.corrupt_at = if chance(policy.corrupt) {
        somewhere_in(r.size)
    } else {
        None
    };
    r.drop_at = if chance(policy.drop) {
        somewhere_in(r.size).filter(|at| *at > r.offset)
    } else {
        None
    };
    FileAccept {
        file_id: r.file_id,
        offset: r.offset,
        window: r.window,
    }
}

/// Whether the device holds a verified copy of every file it was offered
/// so far (and was offered one).
pub fn holds_verified(reception: Option<&Reception>) -> bool {
    reception.is_some_and(|r| r.done)
}

/// After `FILE_ACCEPT`: the acknowledgement the device owes at once, if
/// it holds the whole file already. A verified copy offered again says so
/// (`OK`); a copy whose last bytes came just before its connection was
/// lost (accepted at `offset == size`, so no chunk will come) is verified
/// now: without this answer both sides would wait for each other for as
/// long as the session lives (CWP/1 §3: the transfer ends with the
/// device's `FILE_ACK` at the size).
pub fn ack_if_complete(reception: &mut Option<Reception>, summary: &mut FileSummary) -> Option<FileAck> {
    let r = reception.as_mut()?;
    if !r.accepted {
        return None;
    }
    if r.done {
        return Some(FileAck {
            file_id: r.file_id,
            offset: r.size,
            status: FileAckStatus::OK,
        });
    }
    (r.offset >= r.size).then(|| r.verify(summary))
}

impl Reception {
    /// The whole file is held: the digest decides (CWP/1 §3: `OK`, or
    /// `DIGEST_MISMATCH` and the copy discarded, an offer again starting
    /// from 0).
    fn verify(&mut self, summary: &mut FileSummary) -> FileAck {
        let digest: [u8; 32] = self.hasher.clone().finalize().into();
        self.accepted = false;
        if digest == self.sha256 {
            self.done = true;
            summary.verified += 1;
            let seconds = self.started.elapsed().max(Duration::from_micros(1)).as_secs_f64();
            summary
                .rates_mb_s
                .push(self.size.saturating_sub(self.first_offset) as f64 / 1e6 / seconds);
            return FileAck {
                file_id: self.file_id,
                offset: self.size,
                status: FileAckStatus::OK,
            };
        }
        summary.mismatches += 1;
        let ack = FileAck {
            file_id: self.file_id,
            offset: self.offset,
            status: FileAckStatus::DIGEST_MISMATCH,
        };
        self.offset = 0;
        self.hasher = Sha256::new();
        ack
    }
}

/// One `FILE_CHUNK`.
pub fn on_chunk(reception: &mut Option<Reception>, chunk: &FileChunk, summary: &mut FileSummary) -> Received {
    let Some(r) = reception.as_mut().filter(|r| r.accepted && !r.done) else {
        summary.stray_chunks += 1;
        return Received::Nothing;
    };
    let len = chunk.data.len() as u64;
    if r.offset + len > r.acked + u64::from(r.window) || r.offset + len > r.size {
        summary.window_violations += 1;
    }
    let mut data = chunk.data.to_vec();
    if let Some(at) = r.corrupt_at
        && (r.offset..r.offset + len).contains(&at)
    {
        let index = usize::try_from(at - r.offset).unwrap_or(0);
        data[index] ^= 0xFF;
    }
    r.hasher.update(&data);
    r.offset += len;
    summary.bytes += len;
    // Before the digest: a cut right after the last byte leaves a device
    // that holds the whole file unverified (it verifies when it accepts
    // the next offer at the size, [`ack_if_complete`]).
    if r.drop_at.is_some_and(|at| r.offset >= at) {
        r.drop_at = None;
        r.accepted = false;
        summary.drops += 1;
        return Received::Drop;
    }
    if r.offset >= r.size {
        return Received::Ack(r.verify(summary));
    }
    if r.offset - r.acked >= u64::from(r.window / 2).max(1) {
        r.acked = r.offset;
        return Received::Ack(FileAck {
            file_id: r.file_id,
            offset: r.offset,
            status: FileAckStatus::OK,
        });
    }
    Received::Nothing
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::Bytes;
    use cwp::Str8;

    use super::*;

    const FILE: &[u8] = b"firmware: twelve bytes and some more";

    fn offer() -> FileOffer {
        FileOffer {
            file_id: FileId([3; 16]),
            size: FILE.len() as u64,
            sha256: Sha256::digest(FILE).into(),
            name: Str8::truncating("fw.bin"),
        }
    }

    fn chunk(data: &[u8]) -> FileChunk {
        FileChunk {
            data: Bytes::copy_from_slice(data),
        }
    }

    /// The sequence that stranded a device in the e2e run: its cut came
    /// with the last chunk, so it held every byte unverified; it accepted
    /// the next offer at the size (no chunk comes then) and waited, and so
    /// did the driver. Now it verifies and says so at once.
    #[test]
    fn a_device_cut_after_the_last_byte_verifies_when_it_accepts_at_the_size() {
        let policy = FilePolicy::default();
        let mut summary = FileSummary::default();
        let mut reception = None;
        let accept = on_offer(&mut reception, &offer(), &policy, &mut summary);
        assert_eq!(accept.offset, 0);
        assert!(
            ack_if_complete(&mut reception, &mut summary).is_none(),
            "nothing held yet"
        );
        // The cut is planned inside the last chunk.
        reception.as_mut().unwrap().drop_at = Some(FILE.len() as u64 - 1);
        assert!(matches!(
            on_chunk(&mut reception, &chunk(FILE), &mut summary),
            Received::Drop
        ));
        assert_eq!(summary.verified, 0, "cut before the digest");

        let accept = on_offer(&mut reception, &offer(), &policy, &mut summary);
        assert_eq!(accept.offset, FILE.len() as u64, "resumes at the size");
        let ack = ack_if_complete(&mut reception, &mut summary).expect("the device answers at once");
        assert_eq!((ack.offset, ack.status), (FILE.len() as u64, FileAckStatus::OK));
        assert_eq!((summary.verified, summary.resumes), (1, 1));
        // Offered again, the verified copy says OK again, counted once.
        on_offer(&mut reception, &offer(), &policy, &mut summary);
        let again = ack_if_complete(&mut reception, &mut summary).unwrap();
        assert_eq!(again.status, FileAckStatus::OK);
        assert_eq!(summary.verified, 1);
    }

    /// The same cut with a corrupted byte: the answer at the size is a
    /// mismatch, and the next offer starts from 0.
    #[test]
    fn a_corrupt_copy_held_whole_is_a_mismatch_when_accepted_at_the_size() {
        let policy = FilePolicy::default();
        let mut summary = FileSummary::default();
        let mut reception = None;
        on_offer(&mut reception, &offer(), &policy, &mut summary);
        let r = reception.as_mut().unwrap();
        r.drop_at = Some(FILE.len() as u64 - 1);
        r.corrupt_at = Some(5);
        assert!(matches!(
            on_chunk(&mut reception, &chunk(FILE), &mut summary),
            Received::Drop
        ));
        on_offer(&mut reception, &offer(), &policy, &mut summary);
        let ack = ack_if_complete(&mut reception, &mut summary).unwrap();
        assert_eq!(ack.status, FileAckStatus::DIGEST_MISMATCH);
        assert_eq!(on_offer(&mut reception, &offer(), &policy, &mut summary).offset, 0);
        assert!(ack_if_complete(&mut reception, &mut summary).is_none());
    }

    #[test]
    fn a_device_with_a_prefix_accepts_at_its_offset_and_verifies_with_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fw.bin");
        std::fs::write(&path, FILE).unwrap();
        let policy = FilePolicy {
            start: Some(FileStart::from_file(&path, 10).unwrap()),
            ..FilePolicy::default()
        };
        let mut summary = FileSummary::default();
        let mut reception = None;
        let accept = on_offer(&mut reception, &offer(), &policy, &mut summary);
        assert_eq!(accept.offset, 10);
        let ack = match on_chunk(&mut reception, &chunk(&FILE[10..]), &mut summary) {
            Received::Ack(ack) => ack,
            other => panic!("expected the final FILE_ACK, got {other:?}"),
        };
        assert_eq!(ack.status, FileAckStatus::OK);
        assert_eq!(summary.verified, 1);
        // A file shorter than the prefix is taken from 0.
        let short = FileOffer {
            file_id: FileId([4; 16]),
            size: 5,
            sha256: Sha256::digest(&FILE[..5]).into(),
            name: Str8::truncating("short"),
        };
        assert_eq!(on_offer(&mut reception, &short, &policy, &mut summary).offset, 0);
        assert!(
            FileStart::from_file(&path, 1000).is_err(),
            "a prefix longer than the file"
        );
    }
}
