//! Uploads on disk: the layout under `UPLOAD_DIR`, the lock that keeps an
//! upload id to one writer, the durable offset of a partial upload,
//! completion and expiry. Plain synchronous file I/O: callers run every
//! call here on tokio's blocking pool.
//!
//! ```text
//! UPLOAD_DIR/
//!   partial/s-<serial>/<upload-id>/data    the bytes received so far, in order; flock'ed while open
//!   partial/s-<serial>/<upload-id>/meta    JSON UploadMeta (temp, fsync, rename, fsync dir)
//!   partial/s-<serial>/<upload-id>/hash    the SHA-256 state of the first N bytes (a checkpoint, see below)
//!   partial/s-<serial>/<upload-id>/verify  while bytes wait for a checksum: the offset to cut back to
//!   completed/s-<serial>/<upload-id>       the finished upload (renamed from partial/…/data)
//!   completed/s-<serial>/<upload-id>.json  JSON CompletedUpload, written before that rename
//!   expired/s-<serial>/<upload-id>         an empty tombstone: this partial upload expired (tus: 410)
//! ```
//!
//! The meta is written before the first byte and rewritten (atomically)
//! only to set a length a tus client deferred.
//!
//! Bytes that must match a checksum before they count (tus `Upload-Checksum`,
//! a signed body) are written and fdatasynced as they come, under a
//! `verify` marker written first: until the marker is removed they are not
//! part of the durable offset, and [`UploadStore::open`] cuts them off if a
//! crash left the marker ([`PartialUpload::begin_verified`]).
//!
//! A serial is never a path component on its own: `.` and `..` are valid
//! serials, so its directory is `s-` followed by the serial (`s-..` is an
//! ordinary name). Upload ids are hyphenated lowercase UUIDs. `partial/`
//! and `completed/` must be on one filesystem (completion is a rename).
//!
//! A resumed upload needs the SHA-256 state of its durable prefix. Rather
//! than reading the whole prefix back on every reconnect (a gigabyte each
//! time a flaky link drops), the state is checkpointed beside the data
//! every [`CHECKPOINT_BYTES`] (written durably, after the data it covers):
//! a resume reads back at most the bytes since the last checkpoint, less
//! than `CHECKPOINT_BYTES` plus one write buffer.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cwp::{Serial, UploadId};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::digest::common::hazmat::SerializableState as _;
use sha2::{Digest as _, Sha256};
use tracing::{debug, error, warn};

/// Partial uploads, by serial directory and upload id.
const PARTIAL: &str = "partial";
/// Finished uploads, by serial directory.
const COMPLETED: &str = "completed";
/// Tombstones of expired partial uploads, by serial directory.
const EXPIRED: &str = "expired";
/// A partial upload's pending-checksum marker: the durable offset (8 bytes,
/// big-endian) the data file is cut back to unless the checksum verified.
const VERIFY: &str = "verify";
/// A partial upload's bytes.
const DATA: &str = "data";
/// A partial upload's [`UploadMeta`].
const META: &str = "meta";
/// A partial upload's hash checkpoint: the durable offset it covers (8
/// bytes, big-endian), then the SHA-256 state serialized by `sha2`.
const HASH: &str = "hash";
/// How many durable bytes a hash checkpoint may lag behind: bounds what a
/// resume reads back.
pub const CHECKPOINT_BYTES: u64 = 16 << 20;
/// Before the serial in its directory's name (never a bare serial: `..`).
const SERIAL_DIR_PREFIX: &str = "s-";
/// After the upload id in the name of a [`CompletedUpload`] record.
const RECORD_SUFFIX: &str = ".json";
/// Files being written before their atomic rename.
const TEMP_SUFFIX: &str = ".tmp";
/// How often `open` starts again when the file it locked was unlinked
/// meanwhile (by a completion, a discard or the expiry).
const OPEN_ATTEMPTS: usize = 5;

/// Why an upload cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another session (on this driver or another one sharing
    /// `UPLOAD_DIR`) holds the upload open.
    #[error("the upload is open on another session")]
    Locked,
    /// The filesystem failed (full, read-only, gone).
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What `UPLOAD_BEGIN` announced, stored beside a partial upload's data
/// when it is first opened and never rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadMeta {
    /// The device.
    pub serial: String,
    /// The upload id, hyphenated.
    pub upload_id: String,
    /// The name the device gave it.
    pub name: String,
    /// `total_size` of the first `UPLOAD_BEGIN` (0: unknown).
    pub total_size: u64,
    /// When the upload was first opened, Unix ms.
    pub created_ms: u64,
    /// What a tus client said of it (an HTTP upload); `None` for CWP/1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tus: Option<TusMeta>,
}

/// What tus 1.0 adds to an upload's meta (HTTP uploads).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TusMeta {
    /// `Upload-Metadata` as the client sent it (checked, never decoded
    /// here): returned by `HEAD`.
    #[serde(default)]
    pub metadata: String,
    /// Created with `Upload-Defer-Length: 1`, length not yet known
    /// (`total_size` is 0 until a `PATCH` sets it).
    #[serde(default)]
    pub deferred_length: bool,
    /// A part of a later concatenation (`Upload-Concat: partial`): complete
    /// when its offset reaches its length, but never completed on its own.
    #[serde(default)]
    pub partial: bool,
}

/// How an upload arrived, in its [`CompletedUpload`] record and the
/// `cwp:uploads` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// CWP/1 `UPLOAD_BEGIN`, `BLOCK`s, `UPLOAD_END` (the driver).
    #[default]
    Cwp,
    /// tus 1.0 over HTTP (the HTTP gateway).
    Http,
}

impl Transport {
    /// The name in records: `cwp` or `http`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cwp => "cwp",
            Self::Http => "http",
        }
    }
}

/// A finished upload: what the `upload_completed` record says, kept beside
/// the file so that a repeated `UPLOAD_END` can be answered without it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletedUpload {
    /// The device.
    pub serial: String,
    /// The upload id, hyphenated.
    pub upload_id: String,
    /// The name the device gave it.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    /// Where the file lies, relative to `UPLOAD_DIR`.
    pub path: String,
    /// When it was completed, Unix ms.
    pub completed_ms: u64,
    /// How it arrived.
    #[serde(default)]
    pub transport: Transport,
    /// A tus upload's `Upload-Metadata`, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
}

/// What `UPLOAD_BEGIN` opens.
#[derive(Debug)]
pub enum Opened {
    /// An upload still receiving data, locked for this session.
    Partial(PartialUpload),
    /// An upload finished earlier.
    Completed(CompletedUpload),
}

/// What an expiry pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// Partial uploads deleted.
    pub removed: usize,
    /// Partial uploads skipped because a session holds them open.
    pub in_use: usize,
}

/// The upload storage under `UPLOAD_DIR`; cheap to clone into blocking
/// tasks.
#[derive(Debug, Clone)]
pub struct UploadStore {
    root: Arc<PathBuf>,
}

impl UploadStore {
    /// Storage under `root` (nothing is touched before [`UploadStore::prepare`]).
    pub fn new(root: PathBuf) -> Self {
        Self { root: Arc::new(root) }
    }

    /// `UPLOAD_DIR`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates `UPLOAD_DIR`, `partial/` and `completed/` if they are missing.
    pub fn prepare(&self) -> io::Result<()> {
        fs::create_dir_all(self.root.as_path())?;
        create_dirs(&self.root, &[PARTIAL])?;
        create_dirs(&self.root, &[COMPLETED])?;
        create_dirs(&self.root, &[EXPIRED])?;
        Ok(())
    }

    /// Opens (or reopens) an upload for `UPLOAD_BEGIN`, locked for the
    /// caller until the returned [`PartialUpload`] is dropped.
    ///
    /// A new upload gets its `meta` first, durably. Then, holding the lock,
    /// the data file is fdatasynced and its length is the durable offset:
    /// whatever a killed writer left in the page cache becomes durable
    /// before anyone reports it.
    pub fn open(
        &self,
        serial: &Serial,
        upload_id: UploadId,
        name: &str,
        total_size: u64,
        now_ms: u64,
    ) -> Result<Opened, StoreError> {
        let meta = UploadMeta {
            serial: serial.to_string(),
            upload_id: upload_id.to_string(),
            name: name.to_owned(),
            total_size,
            created_ms: now_ms,
            tus: None,
        };
        self.open_or_create(serial, upload_id, Some(meta))?
            .ok_or_else(|| io::Error::other("a created upload was not found").into())
    }

    /// Creates an upload with `meta` (its serial and id are `serial`'s and
    /// `upload_id`'s), or opens it if it exists: like [`UploadStore::open`].
    pub fn create(&self, serial: &Serial, upload_id: UploadId, mut meta: UploadMeta) -> Result<Opened, StoreError> {
        meta.serial = serial.to_string();
        meta.upload_id = upload_id.to_string();
        self.open_or_create(serial, upload_id, Some(meta))?
            .ok_or_else(|| io::Error::other("a created upload was not found").into())
    }

    /// Opens an upload that exists, locked like [`UploadStore::open`];
    /// `None` if `serial` has no such upload (never created, discarded,
    /// expired: see [`UploadStore::is_expired`]).
    pub fn open_existing(&self, serial: &Serial, upload_id: UploadId) -> Result<Option<Opened>, StoreError> {
        self.open_or_create(serial, upload_id, None)
    }

    fn open_or_create(
        &self,
        serial: &Serial,
        upload_id: UploadId,
        new_meta: Option<UploadMeta>,
    ) -> Result<Option<Opened>, StoreError> {
        if let Some(completed) = self.completed(serial, upload_id)? {
            return Ok(Some(Opened::Completed(completed)));
        }
        let serial_dir = serial_dir_name(serial);
        let id = upload_id.to_string();
        let dir = self.root.join(PARTIAL).join(&serial_dir).join(&id);
        for _ in 0..OPEN_ATTEMPTS {
            if new_meta.is_some() {
                create_dirs(&self.root, &[PARTIAL, &serial_dir, &id])?;
            }
            let file = match OpenOptions::new()
                .read(true)
                .append(true)
                .create(new_meta.is_some())
                .open(dir.join(DATA))
            {
                Ok(file) => file,
                Err(err) if err.kind() == io::ErrorKind::NotFound && new_meta.is_none() => {
                    // Completed meanwhile, or never there.
                    return Ok(self.completed(serial, upload_id)?.map(Opened::Completed));
                }
                // The expiry removed the directory between the two calls.
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err.into()),
            };
            let data = match lock_briefly_waiting(file) {
                Ok(data) => data,
                Err((_, Errno::EWOULDBLOCK)) => return Err(StoreError::Locked),
                Err((_, errno)) => return Err(io::Error::from(errno).into()),
            };
            if !is_linked_at(&data, &dir.join(DATA))? {
                // Completed, discarded or expired between our open and our
                // lock: that file is no longer the upload.
                continue;
            }
            if let Some(completed) = self.completed(serial, upload_id)? {
                // Completed by another session just before our open created
                // a fresh data file: that file is ours to remove.
                if new_meta.is_some() {
                    remove_partial(&dir, Leftover::All);
                }
                return Ok(Some(Opened::Completed(completed)));
            }
            let meta = match (read_json::<UploadMeta>(&dir.join(META))?, &new_meta) {
                (Some(meta), _) => meta,
                // Being created by a writer that died before its meta:
                // nothing of it was ever reported.
                (None, None) => return Ok(None),
                (None, Some(new_meta)) => {
                    // No meta: nothing of this upload was ever reported
                    // durable (meta is written before the first byte), so
                    // whatever the data file holds can go, and any hash
                    // checkpoint of it.
                    data.set_len(0)?;
                    for name in [HASH, VERIFY] {
                        if let Err(err) = fs::remove_file(dir.join(name))
                            && err.kind() != io::ErrorKind::NotFound
                        {
                            return Err(err.into());
                        }
                    }
                    write_durably(&dir, META, &json_bytes(new_meta)?)?;
                    new_meta.clone()
                }
            };
            // Bytes a crash left waiting for their checksum never counted.
            if let Some(cut_to) = read_verify_marker(&dir)? {
                if cut_to < data.metadata()?.len() {
                    data.set_len(cut_to)?;
                }
                data.sync_data()?;
                drop_checkpoint_beyond(&dir, cut_to)?;
                fs::remove_file(dir.join(VERIFY))?;
                sync_dir(&dir)?;
            }
            data.sync_data()?;
            // The data file's directory entry is durable too, whoever made it.
            sync_dir(&dir)?;
            let touched = data.metadata()?.modified()?;
            // "Touched": the expiry counts the age from the last BEGIN or write.
            data.set_modified(SystemTime::now())?;
            let durable = data.metadata()?.len();
            return Ok(Some(Opened::Partial(PartialUpload {
                data,
                root: Arc::clone(&self.root),
                serial_dir,
                meta,
                durable,
                checkpointed: 0,
                verifying: None,
                touched,
                unsynced: 0,
            })));
        }
        Err(io::Error::other("the upload's directory keeps changing under us").into())
    }

    /// Whether `serial`'s upload `upload_id` expired (recently: a tombstone
    /// lives one expiry age).
    pub fn is_expired(&self, serial: &Serial, upload_id: UploadId) -> bool {
        self.root
            .join(EXPIRED)
            .join(serial_dir_name(serial))
            .join(upload_id.to_string())
            .exists()
    }

    /// Expires a partial upload now (tus: found past its `Upload-Expires`
    /// before the expiry pass did): tombstone, then the files.
    pub fn expire_now(&self, upload: PartialUpload) -> io::Result<()> {
        self.bury(&upload.serial_dir, &upload.meta.upload_id);
        upload.discard()
    }

    /// The tombstone of an expiring upload. Best effort: without it the
    /// client gets 404 instead of 410.
    fn bury(&self, serial_dir: &str, upload_id: &str) {
        let made = create_dirs(&self.root, &[EXPIRED, serial_dir])
            .and_then(|()| File::create(self.root.join(EXPIRED).join(serial_dir).join(upload_id)).map(drop));
        if let Err(err) = made {
            warn!(upload_id, error = %err, "cannot leave an expired upload's tombstone");
        }
    }

    /// Bytes of `serial`'s partial uploads on disk, all but `except`
    /// (the one being opened): what `UPLOAD_MAX_BYTES_PER_SERIAL` counts.
    pub fn partial_bytes(&self, serial: &Serial, except: UploadId) -> io::Result<u64> {
        let except = except.to_string();
        let mut bytes = 0;
        for upload_dir in read_dir_or_empty(&self.root.join(PARTIAL).join(serial_dir_name(serial)))? {
            if upload_dir.file_name().is_some_and(|name| name == except.as_str()) {
                continue;
            }
            match fs::metadata(upload_dir.join(DATA)) {
                Ok(meta) => bytes += meta.len(),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        Ok(bytes)
    }

    /// Bytes free for uploads on `UPLOAD_DIR`'s filesystem (what an
    /// unprivileged writer may still use).
    pub fn free_bytes(&self) -> io::Result<u64> {
        let stat = nix::sys::statvfs::statvfs(self.root.as_path()).map_err(io::Error::from)?;
        Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
    }

    /// The record of a finished upload, if it is finished.
    pub fn completed(&self, serial: &Serial, upload_id: UploadId) -> io::Result<Option<CompletedUpload>> {
        let dir = self.root.join(COMPLETED).join(serial_dir_name(serial));
        let id = upload_id.to_string();
        match fs::symlink_metadata(dir.join(&id)) {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        }
        // The record is written before the file is renamed into place, so
        // a finished upload always has one.
        read_json(&dir.join(format!("{id}{RECORD_SUFFIX}")))?.map_or_else(
            || {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("completed upload {id} has no {RECORD_SUFFIX} record"),
                ))
            },
            |record| Ok(Some(record)),
        )
    }

    /// Deletes partial uploads untouched (no `UPLOAD_BEGIN`, no write) for
    /// `max_age` before `now` that no session holds open. Completed uploads
    /// are never expired: they belong to the application.
    pub fn expire(&self, max_age: Duration, now: SystemTime) -> io::Result<Expired> {
        let mut expired = Expired::default();
        let is_old = |modified: io::Result<SystemTime>| {
            modified.is_ok_and(|modified| now.duration_since(modified).is_ok_and(|age| age >= max_age))
        };
        for serial_dir in read_dir_or_empty(&self.root.join(PARTIAL))? {
            for upload_dir in read_dir_or_empty(&serial_dir)? {
                let is_upload = upload_dir
                    .file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(is_upload_dir_name);
                if !is_upload {
                    continue;
                }
                let data_path = upload_dir.join(DATA);
                let file = match File::open(&data_path) {
                    Ok(file) => file,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {
                        // No data file: a crash between `create_dirs` and
                        // the data file (an empty directory), or after a
                        // completion renamed the data away (a meta is left,
                        // and nobody writes a meta once the upload is
                        // completed). Anything else holds a data file.
                        let completed = serial_dir
                            .file_name()
                            .zip(upload_dir.file_name())
                            .map(|(serial, id)| self.root.join(COMPLETED).join(serial).join(id));
                        if completed.is_some_and(|path| path.exists()) {
                            remove_partial(&upload_dir, Leftover::MetaOnly);
                        } else {
                            let _ = fs::remove_dir(&upload_dir);
                        }
                        continue;
                    }
                    Err(err) => return Err(err),
                };
                let data = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                    Ok(data) => data,
                    Err((_, Errno::EWOULDBLOCK)) => {
                        expired.in_use += 1;
                        continue;
                    }
                    Err((_, errno)) => return Err(errno.into()),
                };
                if !is_linked_at(&data, &data_path)? || !is_old(data.metadata().and_then(|m| m.modified())) {
                    continue;
                }
                debug!(path = %upload_dir.display(), "expiring an abandoned partial upload");
                if let (Some(serial), Some(id)) = (serial_dir.file_name(), upload_dir.file_name()) {
                    self.bury(&serial.to_string_lossy(), &id.to_string_lossy());
                }
                remove_partial(&upload_dir, Leftover::All);
                expired.removed += 1;
            }
            // Gone if it is empty now; a session creating an upload in it
            // at this moment retries (see `open`).
            let _ = fs::remove_dir(&serial_dir);
        }
        // Tombstones older than an expiry age: a client that has not come
        // back by then gets 404 instead of 410.
        for serial_dir in read_dir_or_empty(&self.root.join(EXPIRED))? {
            for tombstone in read_dir_or_empty(&serial_dir)? {
                if is_old(fs::metadata(&tombstone).and_then(|m| m.modified())) {
                    let _ = fs::remove_file(&tombstone);
                }
            }
            let _ = fs::remove_dir(&serial_dir);
        }
        // Records whose write a crash interrupted.
        for serial_dir in read_dir_or_empty(&self.root.join(COMPLETED))? {
            for file in read_dir_or_empty(&serial_dir)? {
                let is_temp = file.extension().is_some_and(|ext| ext == &TEMP_SUFFIX[1..]);
                if is_temp && is_old(fs::metadata(&file).and_then(|m| m.modified())) {
                    let _ = fs::remove_file(&file);
                }
            }
        }
        Ok(expired)
    }
}

/// A partial upload opened by one session, which holds its lock until this
/// is dropped (or the process dies: the kernel releases `flock`s).
#[derive(Debug)]
pub struct PartialUpload {
    /// `partial/…/data`, opened for append, exclusively locked.
    data: Flock<File>,
    /// `UPLOAD_DIR`.
    root: Arc<PathBuf>,
    /// `s-<serial>`.
    serial_dir: String,
    meta: UploadMeta,
    /// Bytes of the data file known to be on disk.
    durable: u64,
    /// The durable offset of the last hash checkpoint written (0: none
    /// this session; [`PartialUpload::hash_prefix`] reads the file's).
    checkpointed: u64,
    /// While bytes wait for a checksum: the durable offset before them.
    verifying: Option<u64>,
    /// When it was last written or opened before this open.
    touched: SystemTime,
    /// Bytes written after `durable` by [`write_unsynced`](Self::write_unsynced),
    /// not yet covered by a sync.
    unsynced: u64,
}

/// A group commit of a [`PartialUpload`]'s bytes, run on another thread
/// while the writer goes on ([`PartialUpload::syncer`]): one `fdatasync`
/// covering every byte written before it was made, then the hash
/// checkpoint of exactly those bytes, when one is due.
#[derive(Debug)]
pub struct Syncer {
    /// The data file (a duplicate descriptor: the lock stays the writer's).
    file: File,
    /// The upload's directory, for the checkpoint.
    dir: PathBuf,
    /// The offset it covers.
    covers: u64,
    /// The SHA-256 state of the first `covers` bytes, when a checkpoint is
    /// due.
    checkpoint: Option<Sha256>,
}

impl Syncer {
    /// Makes the bytes durable; returns the offset now durable. A failed
    /// checkpoint costs a longer read on the next resume, nothing else.
    pub fn sync(self) -> io::Result<u64> {
        self.file.sync_data()?;
        if let Some(hasher) = self.checkpoint {
            let mut state = self.covers.to_be_bytes().to_vec();
            state.extend_from_slice(&hasher.serialize());
            if let Err(err) = write_durably(&self.dir, HASH, &state) {
                warn!(path = %self.dir.display(), error = %err, "cannot checkpoint an upload's hash");
            }
        }
        Ok(self.covers)
    }
}

impl PartialUpload {
    /// The durable offset: every byte below it is written and fdatasynced
    /// (and, in a [`begin_verified`](Self::begin_verified) window, the
    /// offset before the window: the bytes in it do not count yet).
    pub fn durable(&self) -> u64 {
        self.verifying.unwrap_or(self.durable)
    }

    /// Bytes written and fdatasynced, counting those waiting for their
    /// checksum (in a verify window, [`durable`](Self::durable) does not).
    pub fn synced_offset(&self) -> u64 {
        self.durable
    }

    /// Bytes written, counting those waiting for their checksum and those
    /// written by [`write_unsynced`](Self::write_unsynced) and not yet
    /// synced.
    pub fn written(&self) -> u64 {
        self.durable + self.unsynced
    }

    /// Appends `bytes` without syncing them (group commit: a [`Syncer`]
    /// makes them durable while the writer goes on). They count as durable
    /// only once [`synced`](Self::synced) says so; a failure cuts the file
    /// back as [`append`](Self::append) does.
    pub fn write_unsynced(&mut self, bytes: &[u8]) -> io::Result<()> {
        match (&*self.data).write_all(bytes) {
            Ok(()) => {
                self.unsynced += bytes.len() as u64;
                Ok(())
            }
            Err(err) => {
                self.cut_back();
                Err(err)
            }
        }
    }

    /// A group commit of every byte written so far, to run on another
    /// thread; `hasher` is the SHA-256 state of exactly those bytes (its
    /// checkpoint is written with the sync when one is due).
    pub fn syncer(&mut self, hasher: &Sha256) -> io::Result<Syncer> {
        let covers = self.written();
        let checkpoint = (covers >= self.checkpointed + CHECKPOINT_BYTES && self.verifying.is_none()).then(|| {
            self.checkpointed = covers;
            hasher.clone()
        });
        Ok(Syncer {
            file: self.data.try_clone()?,
            dir: self.dir(),
            covers,
            checkpoint,
        })
    }

    /// A [`Syncer`] returned: every byte below `covers` is durable.
    pub fn synced(&mut self, covers: u64) {
        let end = self.written();
        let covers = covers.min(end);
        if covers > self.durable {
            self.durable = covers;
            self.unsynced = end - covers;
        }
    }

    /// After a failed write or sync: the file back to its durable length
    /// (what a failed fsync left in the page cache may never reach the
    /// disk, and must not be mistaken for durable by the next `open`).
    pub fn cut_back(&mut self) {
        self.unsynced = 0;
        if let Err(cut) = self.data.set_len(self.durable).and_then(|()| self.data.sync_data()) {
            error!(
                path = %self.dir().display(),
                durable = self.durable,
                error = %cut,
                "cannot cut a failed upload write back to its durable offset"
            );
        }
    }

    /// When the upload was last written or opened before this open: its
    /// age, for an expiry decided at open (tus `Upload-Expires`).
    pub fn touched_before_open(&self) -> SystemTime {
        self.touched
    }

    /// Sets the length a tus client deferred (`Upload-Defer-Length`),
    /// durably, before any byte beyond what was received is accepted.
    pub fn set_total_size(&mut self, total_size: u64) -> io::Result<()> {
        let mut meta = self.meta.clone();
        meta.total_size = total_size;
        if let Some(tus) = &mut meta.tus {
            tus.deferred_length = false;
        }
        write_durably(&self.dir(), META, &json_bytes(&meta)?)?;
        self.meta = meta;
        Ok(())
    }

    /// Opens a window for bytes that count only if their checksum
    /// verifies: the marker holding the current durable offset is written
    /// durably first, so that a crash inside the window cuts them off at
    /// the next open. Close it with [`commit_verified`](Self::commit_verified)
    /// or [`rollback_verified`](Self::rollback_verified).
    pub fn begin_verified(&mut self) -> io::Result<()> {
        write_durably(&self.dir(), VERIFY, &self.durable.to_be_bytes())?;
        self.verifying = Some(self.durable);
        Ok(())
    }

    /// The checksum verified: the window's bytes count (they are already
    /// on disk; the marker goes).
    pub fn commit_verified(&mut self) -> io::Result<()> {
        if self.verifying.is_none() {
            return Ok(());
        }
        fs::remove_file(self.dir().join(VERIFY))?;
        sync_dir(&self.dir())?;
        self.verifying = None;
        Ok(())
    }

    /// The checksum failed (or the body broke off): the file is cut back
    /// to the offset before the window, durably, with any hash checkpoint
    /// of the bytes cut.
    pub fn rollback_verified(&mut self) -> io::Result<()> {
        let Some(start) = self.verifying else {
            return Ok(());
        };
        self.data.set_len(start)?;
        self.data.sync_data()?;
        self.durable = start;
        self.unsynced = 0;
        let dir = self.dir();
        drop_checkpoint_beyond(&dir, start)?;
        if self.checkpointed > start {
            self.checkpointed = 0;
        }
        fs::remove_file(dir.join(VERIFY))?;
        sync_dir(&dir)?;
        self.verifying = None;
        Ok(())
    }

    /// Appends all of `part`'s durable bytes (a concatenation), hashing
    /// them into `hasher`, with `scratch` as the buffer; one fdatasync at
    /// the end. On failure the file is cut back as in [`append`](Self::append).
    pub fn append_from(&mut self, part: &Self, hasher: &mut Sha256, scratch: &mut Vec<u8>) -> io::Result<()> {
        scratch.resize(scratch.capacity().max(1 << 16), 0);
        let length = part.durable();
        let mut offset = 0;
        let copied = (|| {
            while offset < length {
                let want = usize::try_from(length - offset).map_or(scratch.len(), |left| left.min(scratch.len()));
                let read = part.data.read_at(&mut scratch[..want], offset)?;
                if read == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "a part's data file is shorter than its durable offset",
                    ));
                }
                hasher.update(&scratch[..read]);
                (&*self.data).write_all(&scratch[..read])?;
                offset += read as u64;
            }
            self.data.sync_data()
        })();
        scratch.clear();
        match copied {
            Ok(()) => {
                self.durable += length;
                Ok(())
            }
            Err(err) => {
                let _ = self.data.set_len(self.durable).and_then(|()| self.data.sync_data());
                Err(err)
            }
        }
    }

    /// What the upload's first `UPLOAD_BEGIN` announced.
    pub fn meta(&self) -> &UploadMeta {
        &self.meta
    }

    /// Appends `bytes` (the next bytes of the upload) with one write and
    /// one fdatasync; on success they are durable.
    ///
    /// On failure the file is cut back to the durable offset: bytes that a
    /// failed write or fsync left in the page cache may never reach the
    /// disk, and must not be mistaken for durable ones by the next `open`.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let written = (&*self.data).write_all(bytes).and_then(|()| self.data.sync_data());
        match written {
            Ok(()) => {
                // Covers what was written unsynced before, too.
                self.durable += self.unsynced + bytes.len() as u64;
                self.unsynced = 0;
                Ok(())
            }
            Err(err) => {
                self.cut_back();
                Err(err)
            }
        }
    }

    /// After an [`append`](Self::append), with `hasher` holding the
    /// SHA-256 state of exactly the durable prefix: writes a checkpoint of
    /// it if the last one is [`CHECKPOINT_BYTES`] behind. A failed
    /// checkpoint costs a longer read on the next resume, nothing else.
    pub fn checkpoint(&mut self, hasher: &Sha256) {
        if self.durable < self.checkpointed + CHECKPOINT_BYTES {
            return;
        }
        let mut state = self.durable.to_be_bytes().to_vec();
        state.extend_from_slice(&hasher.serialize());
        match write_durably(&self.dir(), HASH, &state) {
            Ok(()) => self.checkpointed = self.durable,
            Err(err) => warn!(path = %self.dir().display(), error = %err, "cannot checkpoint an upload's hash"),
        }
    }

    /// Writes a hash checkpoint of the durable prefix now, whatever the
    /// distance to the last one (the end of a tus `PATCH`: the next one,
    /// maybe on another gateway, then reads nothing back).
    pub fn checkpoint_now(&mut self, hasher: &Sha256) {
        if self.durable > self.checkpointed && self.verifying.is_none() {
            self.checkpointed = self.durable.saturating_sub(CHECKPOINT_BYTES);
            self.checkpoint(hasher);
        }
    }

    /// The last hash checkpoint at or below the durable offset: its offset
    /// and the SHA-256 state there. A missing, unreadable or later one
    /// counts as none (the prefix is then hashed from the start).
    fn read_checkpoint(&self) -> Option<(u64, Sha256)> {
        let bytes = fs::read(self.dir().join(HASH)).ok()?;
        let (offset, state) = bytes.split_first_chunk::<8>()?;
        let offset = u64::from_be_bytes(*offset);
        if offset > self.durable {
            return None;
        }
        let state = state.try_into().ok()?;
        Some((offset, Sha256::deserialize(state).ok()?))
    }

    /// SHA-256 state of the durable prefix (for a resumed upload): from the
    /// last checkpoint, reading back only the bytes after it, with
    /// `scratch` as the buffer (its capacity; left empty). Returns the
    /// state and how many bytes were read back.
    pub fn hash_prefix(&mut self, scratch: &mut Vec<u8>) -> io::Result<(Sha256, u64)> {
        scratch.clear();
        let (mut offset, mut hasher) = self.read_checkpoint().unwrap_or_else(|| (0, Sha256::new()));
        self.checkpointed = offset;
        let from = offset;
        if self.durable == offset {
            return Ok((hasher, 0));
        }
        scratch.resize(scratch.capacity().max(4096), 0);
        while offset < self.durable {
            let want = usize::try_from(self.durable - offset).map_or(scratch.len(), |left| left.min(scratch.len()));
            let read = self.data.read_at(&mut scratch[..want], offset)?;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the upload's data file is shorter than its durable offset",
                ));
            }
            hasher.update(&scratch[..read]);
            offset += read as u64;
        }
        scratch.clear();
        Ok((hasher, self.durable - from))
    }

    /// Moves the upload, whose every byte must be durable, into
    /// `completed/` atomically: the record is written first, then the data
    /// file is renamed into place, then both directories are fsynced.
    pub fn complete(self, sha256: &[u8; 32], now_ms: u64) -> io::Result<CompletedUpload> {
        let id = &self.meta.upload_id;
        let tus = self.meta.tus.as_ref();
        let record = CompletedUpload {
            serial: self.meta.serial.clone(),
            upload_id: id.clone(),
            name: self.meta.name.clone(),
            size: self.durable,
            sha256: hex::encode(sha256),
            path: format!("{COMPLETED}/{}/{id}", self.serial_dir),
            completed_ms: now_ms,
            transport: if tus.is_some() { Transport::Http } else { Transport::Cwp },
            metadata: tus
                .map(|tus| tus.metadata.clone())
                .filter(|metadata| !metadata.is_empty()),
        };
        create_dirs(&self.root, &[COMPLETED, &self.serial_dir])?;
        let completed_dir = self.root.join(COMPLETED).join(&self.serial_dir);
        let partial_dir = self.dir();
        write_durably(&completed_dir, &format!("{id}{RECORD_SUFFIX}"), &json_bytes(&record)?)?;
        fs::rename(partial_dir.join(DATA), completed_dir.join(id))?;
        sync_dir(&completed_dir)?;
        sync_dir(&partial_dir)?;
        // What is left of the partial upload; a crash here leaves a meta
        // that the next `open` or the expiry cleans up.
        remove_partial(&partial_dir, Leftover::MetaOnly);
        self.remove_serial_dir_if_empty();
        Ok(record)
    }

    /// Deletes the partial upload (a size or digest mismatch): the device
    /// starts again at offset 0.
    pub fn discard(self) -> io::Result<()> {
        remove_partial(&self.dir(), Leftover::All);
        sync_dir(&self.root.join(PARTIAL).join(&self.serial_dir))?;
        self.remove_serial_dir_if_empty();
        Ok(())
    }

    /// `partial/s-<serial>` goes when its last upload does (a session
    /// creating an upload there at this moment retries, see `open`).
    fn remove_serial_dir_if_empty(&self) {
        let _ = fs::remove_dir(self.root.join(PARTIAL).join(&self.serial_dir));
    }

    /// `partial/s-<serial>/<upload-id>`.
    fn dir(&self) -> PathBuf {
        self.root
            .join(PARTIAL)
            .join(&self.serial_dir)
            .join(&self.meta.upload_id)
    }
}

/// The directory name of a serial's uploads.
pub fn serial_dir_name(serial: &Serial) -> String {
    format!("{SERIAL_DIR_PREFIX}{serial}")
}

/// Whether `name` is an upload directory's name (a hyphenated lowercase UUID).
fn is_upload_dir_name(name: &str) -> bool {
    uuid::Uuid::try_parse(name).is_ok_and(|id| id.hyphenated().to_string() == name)
}

/// How long an open waits for a lock held only for a moment (an expiry
/// pass looking at the file) before it says the upload is in use.
const LOCK_PATIENCE: Duration = Duration::from_millis(100);

/// Locks `file` exclusively, retrying for [`LOCK_PATIENCE`]: a writer holds
/// its lock for the whole upload, but the expiry holds it only while it
/// looks, and an open racing it should not be refused for that.
fn lock_briefly_waiting(mut file: File) -> Result<Flock<File>, (File, Errno)> {
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Err((returned, Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                file = returned;
                std::thread::sleep(Duration::from_millis(5));
            }
            result => return result,
        }
    }
}

/// Whether `file` is still the file at `path` (not unlinked or replaced).
fn is_linked_at(file: &File, path: &Path) -> io::Result<bool> {
    let held = file.metadata()?;
    match fs::symlink_metadata(path) {
        Ok(linked) => Ok(linked.dev() == held.dev() && linked.ino() == held.ino()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

/// Creates `base/a/b/…` one level at a time; each directory created is made
/// durable by fsyncing its parent.
fn create_dirs(base: &Path, components: &[&str]) -> io::Result<()> {
    let mut path = base.to_owned();
    for component in components {
        let parent = path.clone();
        path.push(component);
        match fs::create_dir(&path) {
            Ok(()) => sync_dir(&parent)?,
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// The offset a pending-checksum marker holds, if there is one.
fn read_verify_marker(dir: &Path) -> io::Result<Option<u64>> {
    match fs::read(dir.join(VERIFY)) {
        Ok(bytes) => match bytes.first_chunk::<8>() {
            Some(offset) => Ok(Some(u64::from_be_bytes(*offset))),
            // Written crash-safely, so never short; if it is, trust nothing
            // beyond the start.
            None => Ok(Some(0)),
        },
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Removes the hash checkpoint if it covers bytes beyond `offset` (they
/// are being cut: new bytes may later reach that offset again).
fn drop_checkpoint_beyond(dir: &Path, offset: u64) -> io::Result<()> {
    let beyond = match fs::read(dir.join(HASH)) {
        Ok(bytes) => bytes
            .first_chunk::<8>()
            .is_none_or(|checkpoint| u64::from_be_bytes(*checkpoint) > offset),
        Err(err) if err.kind() == io::ErrorKind::NotFound => false,
        Err(err) => return Err(err),
    };
    if beyond {
        fs::remove_file(dir.join(HASH))?;
    }
    Ok(())
}

/// Makes a directory's entries (created, renamed, removed files) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `dir/name` crash-safely: a temporary file, fsynced, renamed over
/// the name, and the directory fsynced. After a crash the name holds the
/// old content or the new one, never a mix.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let mut file = File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temp, dir.join(name))?;
    sync_dir(dir)
}

fn json_bytes(value: &impl Serialize) -> io::Result<Vec<u8>> {
    serde_json::to_vec_pretty(value).map_err(io::Error::other)
}

/// A JSON file, `None` if it does not exist.
fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {err}", path.display()))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// What of a partial upload's directory to remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leftover {
    /// Everything: the caller holds the data file's lock.
    All,
    /// The data is gone (renamed into `completed/`): the meta and the
    /// directory. Never the `data` name, which may be a new session's file.
    MetaOnly,
}

/// Removes a partial upload's directory: meta first (so a crash never
/// leaves a meta whose data is gone, except after a completion), then
/// data, temporaries, the directory.
fn remove_partial(dir: &Path, what: Leftover) {
    let names: &[&str] = match what {
        Leftover::All => &[VERIFY, HASH, META, DATA],
        Leftover::MetaOnly => &[VERIFY, HASH, META],
    };
    for name in names {
        if let Err(err) = fs::remove_file(dir.join(name))
            && err.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %dir.join(name).display(), error = %err, "cannot remove a partial upload's file");
        }
    }
    let _ = fs::remove_file(dir.join(format!("{META}{TEMP_SUFFIX}")));
    let _ = fs::remove_file(dir.join(format!("{HASH}{TEMP_SUFFIX}")));
    let _ = fs::remove_file(dir.join(format!("{VERIFY}{TEMP_SUFFIX}")));
    // Fails harmlessly if another session has just created a new data file.
    let _ = fs::remove_dir(dir);
}

/// The entries of `dir` (none if it does not exist).
fn read_dir_or_empty(dir: &Path) -> io::Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.map(|entry| entry.map(|entry| entry.path())).collect(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    const ID: UploadId = UploadId([
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4d, 0xef, 0x80, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,
    ]);
    const ID_TEXT: &str = "12345678-9abc-4def-8001-020304050607";

    fn serial(text: &str) -> Serial {
        text.parse().unwrap()
    }

    fn store() -> (tempfile::TempDir, UploadStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = UploadStore::new(dir.path().join("uploads"));
        store.prepare().unwrap();
        (dir, store)
    }

    fn open_partial(store: &UploadStore, serial: &Serial) -> PartialUpload {
        match store.open(serial, ID, "log.bin", 0, 1_000).unwrap() {
            Opened::Partial(partial) => partial,
            Opened::Completed(done) => panic!("expected a partial upload, found {done:?}"),
        }
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn a_partial_upload_lives_under_partial_then_moves_to_completed() {
        let (_tmp, store) = store();
        let device = serial("CTRL-0042");
        let mut upload = open_partial(&store, &device);
        assert_eq!(upload.durable(), 0);
        let dir = store.root().join("partial/s-CTRL-0042").join(ID_TEXT);
        assert!(dir.join("data").is_file() && dir.join("meta").is_file());
        let meta: UploadMeta = read_json(&dir.join("meta")).unwrap().unwrap();
        assert_eq!(
            meta,
            UploadMeta {
                serial: "CTRL-0042".to_owned(),
                upload_id: ID_TEXT.to_owned(),
                name: "log.bin".to_owned(),
                total_size: 0,
                created_ms: 1_000,
                tus: None,
            }
        );

        upload.append(b"hello ").unwrap();
        upload.append(b"world").unwrap();
        assert_eq!(upload.durable(), 11);
        assert_eq!(fs::read(dir.join("data")).unwrap(), b"hello world");

        let digest: [u8; 32] = Sha256::digest(b"hello world").into();
        let record = upload.complete(&digest, 2_000).unwrap();
        assert_eq!(record.path, format!("completed/s-CTRL-0042/{ID_TEXT}"));
        assert_eq!(record.size, 11);
        assert_eq!(record.sha256, sha256_hex(b"hello world"));
        assert_eq!(fs::read(store.root().join(&record.path)).unwrap(), b"hello world");
        assert_eq!(
            fs::read_dir(store.root().join("partial")).unwrap().count(),
            0,
            "nothing is left under partial/"
        );
        assert_eq!(store.completed(&device, ID).unwrap(), Some(record.clone()));
        match store.open(&device, ID, "log.bin", 0, 3_000).unwrap() {
            Opened::Completed(found) => assert_eq!(found, record),
            Opened::Partial(_) => panic!("a completed upload reopens as completed"),
        }
        assert!(!dir.exists(), "reopening a completed upload leaves no partial");
    }

    #[test]
    fn serials_that_look_like_paths_stay_inside_their_own_directory() {
        let (_tmp, store) = store();
        for text in [".", "..", "...", "-", "_"] {
            let device = serial(text);
            let mut upload = open_partial(&store, &device);
            upload.append(text.as_bytes()).unwrap();
            let expected = store.root().join("partial").join(format!("s-{text}")).join(ID_TEXT);
            assert_eq!(
                fs::read(expected.join("data")).unwrap(),
                text.as_bytes(),
                "serial {text:?}"
            );
            let record = upload.complete(&Sha256::digest(text.as_bytes()).into(), 0).unwrap();
            assert_eq!(record.path, format!("completed/s-{text}/{ID_TEXT}"));
        }
        // Nothing escaped UPLOAD_DIR or landed beside the two areas.
        let mut top: Vec<String> = fs::read_dir(store.root())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        top.sort();
        assert_eq!(top, ["completed", "expired", "partial"]);
        assert_eq!(fs::read_dir(store.root().parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn bytes_a_killed_writer_left_beyond_the_last_report_are_made_durable_on_reopen() {
        let (_tmp, store) = store();
        let device = serial("CTRL-0042");
        let mut upload = open_partial(&store, &device);
        upload.append(&[1; 100]).unwrap();
        // A process killed after write() and before fdatasync(): the bytes
        // are in the file (page cache), never reported.
        (&*upload.data).write_all(&[2; 50]).unwrap();
        drop(upload);

        let mut reopened = open_partial(&store, &device);
        assert_eq!(
            reopened.durable(),
            150,
            "the reopen fsyncs and reports the file's length"
        );
        let mut scratch = Vec::with_capacity(64);
        let (hasher, read_back) = reopened.hash_prefix(&mut scratch).unwrap();
        assert_eq!(read_back, 150, "no checkpoint yet: the whole prefix is read back");
        let mut expected = vec![1; 100];
        expected.extend([2; 50]);
        assert_eq!(hex::encode(hasher.finalize()), sha256_hex(&expected));
        assert!(
            scratch.is_empty() && scratch.capacity() >= 64,
            "the scratch buffer is reused"
        );
    }

    #[test]
    fn a_resume_reads_back_only_what_follows_the_last_hash_checkpoint() {
        let (_tmp, store) = store();
        let device = serial("CTRL-0042");
        let mut upload = open_partial(&store, &device);
        let chunk = vec![7u8; 1 << 20];
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        // Past two checkpoint boundaries, then a little more.
        while written < 2 * CHECKPOINT_BYTES + (3 << 20) {
            upload.append(&chunk).unwrap();
            hasher.update(&chunk);
            upload.checkpoint(&hasher);
            written += chunk.len() as u64;
        }
        drop(upload);

        let mut reopened = open_partial(&store, &device);
        let (resumed, read_back) = reopened.hash_prefix(&mut Vec::with_capacity(1 << 16)).unwrap();
        assert!(read_back < CHECKPOINT_BYTES, "{read_back} bytes read back on resume");
        assert_eq!(read_back, 3 << 20, "only the bytes since the last checkpoint");
        assert_eq!(
            resumed.finalize(),
            hasher.finalize(),
            "the same digest as hashing it all"
        );
    }

    #[test]
    fn a_stale_checkpoint_never_outlives_its_data() {
        let (_tmp, store) = store();
        let device = serial("CTRL-0042");
        let mut upload = open_partial(&store, &device);
        let mut hasher = Sha256::new();
        let data = vec![9u8; usize::try_from(CHECKPOINT_BYTES).unwrap()];
        upload.append(&data).unwrap();
        hasher.update(&data);
        upload.checkpoint(&hasher);
        upload.discard().unwrap();
        // The same id begun again with other bytes: hashed from its own start.
        let mut again = open_partial(&store, &device);
        let other = vec![1u8; usize::try_from(CHECKPOINT_BYTES).unwrap() + 10];
        again.append(&other).unwrap();
        drop(again);
        let mut reopened = open_partial(&store, &device);
        let (resumed, _) = reopened.hash_prefix(&mut Vec::with_capacity(1 << 16)).unwrap();
        assert_eq!(hex::encode(resumed.finalize()), sha256_hex(&other));
    }

    #[test]
    fn a_data_file_without_meta_held_nothing_reported_and_starts_empty() {
        let (_tmp, store) = store();
        let device = serial("CTRL-0042");
        let dir = store.root().join("partial/s-CTRL-0042").join(ID_TEXT);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("data"), [9; 10]).unwrap();
        let upload = open_partial(&store, &device);
        assert_eq!(upload.durable(), 0);
        assert_eq!(fs::metadata(dir.join("data")).unwrap().len(), 0);
        assert_eq!(upload.meta().name, "log.bin");
    }

    #[test]
    fn an_open_upload_is_locked_until_its_session_drops_it() {
        let (_tmp, store) = store();
        let device = serial("CTRL-0042");
        let first = open_partial(&store, &device);
        assert!(matches!(
            store.open(&device, ID, "log.bin", 0, 0),
            Err(StoreError::Locked)
        ));
        drop(first);
        open_partial(&store, &device);
    }

    #[test]
    fn a_discarded_upload_starts_again_at_zero() {
        let (_tmp, store) = store();
        let device = serial("CTRL-0042");
        let mut upload = open_partial(&store, &device);
        upload.append(b"wrong").unwrap();
        upload.discard().unwrap();
        assert!(!store.root().join("partial/s-CTRL-0042").join(ID_TEXT).exists());
        assert_eq!(open_partial(&store, &device).durable(), 0);
    }

    #[test]
    fn a_completion_interrupted_after_the_rename_is_found_completed() {
        let (_tmp, store) = store();
        let device = serial("CTRL-0042");
        let mut upload = open_partial(&store, &device);
        upload.append(b"abc").unwrap();
        let dir = upload.dir();
        let meta = fs::read(dir.join("meta")).unwrap();
        let record = upload.complete(&Sha256::digest(b"abc").into(), 0).unwrap();
        // As if the driver died before removing the partial's meta.
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("meta"), meta).unwrap();
        assert_eq!(
            store.expire(Duration::from_secs(3600), SystemTime::now()).unwrap(),
            Expired::default()
        );
        assert!(
            !dir.exists(),
            "the expiry removes the leftover meta of a completed upload"
        );
        match store.open(&device, ID, "log.bin", 0, 0).unwrap() {
            Opened::Completed(found) => assert_eq!(found, record),
            Opened::Partial(_) => panic!("completed uploads never reopen as partial"),
        }
    }

    #[test]
    fn expiry_removes_old_unlocked_partial_uploads_only() {
        let (_tmp, store) = store();
        let hour = Duration::from_secs(3600);
        let old = SystemTime::now() - 2 * hour;
        let abandoned = serial("CTRL-0001");
        let mut upload = open_partial(&store, &abandoned);
        upload.append(b"abandoned").unwrap();
        upload.data.set_modified(old).unwrap();
        drop(upload);
        let recent = serial("CTRL-0002");
        let mut upload = open_partial(&store, &recent);
        upload.append(b"recent").unwrap();
        drop(upload);
        let in_use = serial("CTRL-0003");
        let held = open_partial(&store, &in_use);
        held.data.set_modified(old).unwrap();
        // A directory a crash left empty.
        let empty = store.root().join("partial/s-CTRL-0004").join(ID_TEXT);
        fs::create_dir_all(&empty).unwrap();

        let expired = store.expire(hour, SystemTime::now()).unwrap();
        assert_eq!(expired, Expired { removed: 1, in_use: 1 });
        assert!(!store.root().join("partial/s-CTRL-0001").exists());
        assert!(
            store
                .root()
                .join("partial/s-CTRL-0002")
                .join(ID_TEXT)
                .join("data")
                .exists()
        );
        assert!(
            store
                .root()
                .join("partial/s-CTRL-0003")
                .join(ID_TEXT)
                .join("data")
                .exists()
        );
        assert!(!store.root().join("partial/s-CTRL-0004").exists());
        drop(held);

        // The held one expires once its session is gone; the recent one
        // once it is old enough.
        let later = SystemTime::now() + 3 * hour;
        assert_eq!(store.expire(hour, later).unwrap(), Expired { removed: 2, in_use: 0 });
        assert_eq!(fs::read_dir(store.root().join("partial")).unwrap().count(), 0);
        assert!(UNIX_EPOCH < later);
    }

    fn tus_meta(partial: bool) -> UploadMeta {
        UploadMeta {
            serial: String::new(),
            upload_id: String::new(),
            name: "x".to_owned(),
            total_size: 100,
            created_ms: 0,
            tus: Some(TusMeta {
                metadata: "filename eA==".to_owned(),
                deferred_length: false,
                partial,
            }),
        }
    }

    #[test]
    fn bytes_in_a_verify_window_count_only_once_committed() {
        let (_tmp, store) = store();
        let device = serial("CTRL-0042");
        let mut upload = open_partial(&store, &device);
        upload.append(b"kept").unwrap();
        upload.begin_verified().unwrap();
        upload.append(b" unverified").unwrap();
        assert_eq!((upload.durable(), upload.written()), (4, 15), "not counted yet");
        upload.rollback_verified().unwrap();
        assert_eq!((upload.durable(), upload.written()), (4, 4));
        assert_eq!(fs::read(upload.dir().join("data")).unwrap(), b"kept");
        upload.begin_verified().unwrap();
        upload.append(b" verified").unwrap();
        upload.commit_verified().unwrap();
        assert_eq!(upload.durable(), 13);
        assert!(!upload.dir().join("verify").exists());
    }

    #[test]
    fn a_crash_inside_a_verify_window_is_cut_back_at_the_next_open() {
        let (_tmp, store) = store();
        let device = serial("CTRL-0042");
        let mut upload = open_partial(&store, &device);
        upload.append(&[1; 4096]).unwrap();
        let mut hasher = Sha256::new();
        hasher.update([1; 4096]);
        upload.checkpoint_now(&hasher);
        upload.begin_verified().unwrap();
        let unverified = vec![2; usize::try_from(CHECKPOINT_BYTES).unwrap()];
        upload.append(&unverified).unwrap();
        hasher.update(&unverified);
        // A checkpoint written inside the window covers unverified bytes.
        upload.checkpoint(&hasher);
        // The process dies here: the marker stays, the lock goes.
        drop(upload);
        let mut reopened = open_partial(&store, &device);
        assert_eq!(reopened.durable(), 4096, "cut back to the marker's offset");
        let (resumed, _) = reopened.hash_prefix(&mut Vec::with_capacity(4096)).unwrap();
        assert_eq!(hex::encode(resumed.finalize()), sha256_hex(&[1; 4096]));
        assert!(!reopened.dir().join("verify").exists());
    }

    #[test]
    fn a_tus_upload_opens_only_if_it_exists_and_completes_as_http() {
        let (_tmp, store) = store();
        let device = serial("CTRL-0042");
        assert!(store.open_existing(&device, ID).unwrap().is_none(), "never created");
        let Opened::Partial(mut upload) = store.create(&device, ID, tus_meta(false)).unwrap() else {
            panic!("a new upload is partial");
        };
        assert_eq!(upload.meta().serial, "CTRL-0042");
        upload.append(&[7; 100]).unwrap();
        drop(upload);
        let Some(Opened::Partial(upload)) = store.open_existing(&device, ID).unwrap() else {
            panic!("it exists now");
        };
        assert!(
            store.open_existing(&serial("CTRL-0043"), ID).unwrap().is_none(),
            "another serial's directory holds nothing"
        );
        let record = upload.complete(&Sha256::digest([7; 100]).into(), 5).unwrap();
        assert_eq!(record.transport, Transport::Http);
        assert_eq!(record.metadata.as_deref(), Some("filename eA=="));
        assert!(matches!(
            store.open_existing(&device, ID).unwrap(),
            Some(Opened::Completed(_))
        ));
    }

    #[test]
    fn an_expired_upload_leaves_a_tombstone_for_one_expiry_age() {
        let (_tmp, store) = store();
        let device = serial("CTRL-0042");
        let upload = open_partial(&store, &device);
        upload
            .data
            .set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
        drop(upload);
        let hour = Duration::from_secs(3600);
        assert_eq!(store.expire(hour, SystemTime::now()).unwrap().removed, 1);
        assert!(store.is_expired(&device, ID));
        assert!(store.open_existing(&device, ID).unwrap().is_none());
        // One expiry age later the tombstone goes too.
        store.expire(hour, SystemTime::now() + 2 * hour).unwrap();
        assert!(!store.is_expired(&device, ID));
    }

    #[test]
    fn a_deferred_length_is_set_once_durably() {
        let (_tmp, store) = store();
        let device = serial("CTRL-0042");
        let mut meta = tus_meta(false);
        meta.total_size = 0;
        meta.tus.as_mut().unwrap().deferred_length = true;
        let Opened::Partial(mut upload) = store.create(&device, ID, meta).unwrap() else {
            panic!("a new upload is partial");
        };
        upload.set_total_size(500).unwrap();
        drop(upload);
        let Some(Opened::Partial(upload)) = store.open_existing(&device, ID).unwrap() else {
            panic!("it exists");
        };
        assert_eq!(upload.meta().total_size, 500);
        assert!(!upload.meta().tus.as_ref().unwrap().deferred_length);
    }

    #[test]
    fn a_group_commit_makes_durable_what_was_written_before_it_and_checkpoints_it() {
        let (_tmp, store) = store();
        let device = serial("CTRL-0042");
        let mut upload = open_partial(&store, &device);
        let chunk = vec![3u8; usize::try_from(CHECKPOINT_BYTES).unwrap()];
        let mut hasher = Sha256::new();
        upload.write_unsynced(&chunk).unwrap();
        hasher.update(&chunk);
        assert_eq!(
            (upload.durable(), upload.written()),
            (0, CHECKPOINT_BYTES),
            "written, not durable"
        );
        let syncer = upload.syncer(&hasher).unwrap();
        // The writer goes on while the sync runs: those bytes are not covered.
        upload.write_unsynced(b"later").unwrap();
        let covers = std::thread::spawn(move || syncer.sync()).join().unwrap().unwrap();
        upload.synced(covers);
        assert_eq!(upload.durable(), CHECKPOINT_BYTES);
        assert_eq!(upload.written(), CHECKPOINT_BYTES + 5);
        drop(upload);
        // The checkpoint it wrote is of exactly the synced bytes; the reopen
        // makes the rest durable and reads back only it.
        let mut reopened = open_partial(&store, &device);
        assert_eq!(reopened.durable(), CHECKPOINT_BYTES + 5);
        let (resumed, read_back) = reopened.hash_prefix(&mut Vec::with_capacity(4096)).unwrap();
        assert_eq!(read_back, 5);
        hasher.update(b"later");
        assert_eq!(resumed.finalize(), hasher.finalize());
    }

    #[test]
    fn a_failed_group_commit_cuts_the_file_back_to_what_is_durable() {
        let (_tmp, store) = store();
        let device = serial("CTRL-0042");
        let mut upload = open_partial(&store, &device);
        upload.append(b"durable").unwrap();
        upload.write_unsynced(b" not yet").unwrap();
        upload.cut_back();
        assert_eq!((upload.durable(), upload.written()), (7, 7));
        assert_eq!(fs::read(upload.dir().join("data")).unwrap(), b"durable");
    }

    #[test]
    fn only_hyphenated_lowercase_uuids_are_upload_directories() {
        assert!(is_upload_dir_name(ID_TEXT));
        assert!(!is_upload_dir_name(&ID_TEXT.to_uppercase()));
        assert!(!is_upload_dir_name(&ID_TEXT.replace('-', "")));
        assert!(!is_upload_dir_name(".."));
    }
}
