//! The file store: files that rollouts send to devices (CWP/1 §3 Files),
//! content-addressed under `FILES_DIR`, shared by every driver (like
//! `UPLOAD_DIR`) and written by the operators' CLI.
//!
//! ```text
//! FILES_DIR/
//!   sha256/<hex>        the file's bytes, named by their SHA-256 (lowercase hex)
//!   sha256/<hex>.json   its FileRecord: size, name, when it was added
//!   tmp/                files being added, before their rename into sha256/
//! ```
//!
//! [`FileStore::add`] copies a file in while hashing it, fsyncs it and
//! renames it into place (then fsyncs the directory): a reader never sees
//! half a file, and adding the same bytes again changes nothing.
//! [`FileStore::open`] gives a [`StoredFile`] that reads by offset
//! (`pread`): a transfer reads what its window needs, so any number of
//! transfers of one file share the page cache and no one holds it whole.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The directory of stored files, by digest.
const BY_DIGEST: &str = "sha256";
/// Files being added.
const TEMP: &str = "tmp";
/// After the digest in a record's name.
const RECORD_SUFFIX: &str = ".json";
/// Bytes read per read while adding.
const COPY_BUFFER: usize = 256 * 1024;

/// A file's SHA-256, the name it is stored and offered under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Lowercase hex, as in paths and Redis.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::str::FromStr for Digest {
    type Err = FileError;

    /// 64 hex digits (either case).
    fn from_str(text: &str) -> Result<Self, FileError> {
        let mut bytes = [0; 32];
        if text.len() != 64 || hex::decode_to_slice(text, &mut bytes).is_err() {
            return Err(FileError::BadDigest(text.chars().take(80).collect()));
        }
        Ok(Self(bytes))
    }
}

/// What the store records beside a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// The name it was added under (its path's last component): what
    /// `FILE_OFFER.name` tells the device.
    pub name: String,
    /// When it was first added, Unix ms.
    pub added_ms: u64,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Not a SHA-256 in hex.
    #[error("not a SHA-256 (64 hex digits): {0:?}")]
    BadDigest(String),
    /// No file with that digest is stored.
    #[error("no file {0} in the file store")]
    NotFound(Digest),
    /// The stored file's record does not read, or does not match its bytes.
    #[error("the record of file {digest} is damaged: {why}")]
    BadRecord {
        /// The file.
        digest: Digest,
        /// What is wrong.
        why: String,
    },
    /// The filesystem failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> FileError {
    let context = context.into();
    move |source| FileError::Io { context, source }
}

/// The store under one `FILES_DIR`.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    /// The store under `root` (created on first add).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Its directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the bytes of `digest` lie.
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        self.root.join(BY_DIGEST).join(digest.to_hex())
    }

    fn record_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join(BY_DIGEST)
            .join([digest.to_hex().as_str(), RECORD_SUFFIX].concat())
    }

    /// Copies the file at `path` into the store: hashed while copied,
    /// fsynced, renamed into place, its directory fsynced. Idempotent: a
    /// file already stored is left as it is (its record, with the name it
    /// was first added under, is returned).
    pub fn add(&self, path: &Path) -> Result<FileRecord, FileError> {
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut source = File::open(path).map_err(io_error(format!("opening {}", path.display())))?;
        self.add_reader(&mut source, &name)
    }

    /// [`FileStore::add`] from any reader, under `name`.
    pub fn add_reader(&self, source: &mut dyn io::Read, name: &str) -> Result<FileRecord, FileError> {
        let by_digest = self.root.join(BY_DIGEST);
        let temp_dir = self.root.join(TEMP);
        for dir in [&by_digest, &temp_dir] {
            fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
        }
        let temp_path = temp_dir.join(format!("add-{}-{}", std::process::id(), unique()));
        let written = copy_hashing(source, &temp_path);
        let (digest, size) = match written {
            Ok(written) => written,
            Err(err) => {
                let _ = fs::remove_file(&temp_path);
                return Err(err);
            }
        };
        if let Ok(record) = self.record(&digest) {
            let _ = fs::remove_file(&temp_path);
            return Ok(record);
        }
        let record = FileRecord {
            sha256: digest.to_hex(),
            size,
            name: name.chars().take(255).collect(),
            added_ms: now_ms(),
        };
        // The record first, then the bytes: a file whose bytes are in place
        // always has its record.
        let record_temp = temp_path.with_extension("json");
        let json = serde_json::to_vec(&record).map_err(|err| FileError::BadRecord {
            digest,
            why: err.to_string(),
        })?;
        write_durably(&record_temp, &json)?;
        fs::rename(&record_temp, self.record_path(&digest))
            .map_err(io_error(format!("renaming {}", record_temp.display())))?;
        fs::rename(&temp_path, self.path_of(&digest)).map_err(io_error(format!("renaming {}", temp_path.display())))?;
        File::open(&by_digest)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(format!("syncing {}", by_digest.display())))?;
        Ok(record)
    }

    /// The record of a stored file.
    pub fn record(&self, digest: &Digest) -> Result<FileRecord, FileError> {
        let path = self.record_path(digest);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(FileError::NotFound(*digest)),
            Err(err) => return Err(io_error(format!("reading {}", path.display()))(err)),
        };
        let record: FileRecord = serde_json::from_slice(&bytes).map_err(|err| FileError::BadRecord {
            digest: *digest,
            why: err.to_string(),
        })?;
        if record.sha256 != digest.to_hex() {
            return Err(FileError::BadRecord {
                digest: *digest,
                why: format!("it names {}", record.sha256),
            });
        }
        Ok(record)
    }

    /// Opens a stored file for reading by offset. Its size is checked
    /// against its record.
    pub fn open(&self, digest: &Digest) -> Result<StoredFile, FileError> {
        let record = self.record(digest)?;
        let path = self.path_of(digest);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(FileError::NotFound(*digest)),
            Err(err) => return Err(io_error(format!("opening {}", path.display()))(err)),
        };
        let size = file
            .metadata()
            .map_err(io_error(format!("reading the size of {}", path.display())))?
            .len();
        if size != record.size {
            return Err(FileError::BadRecord {
                digest: *digest,
                why: format!("the record says {} bytes, the file has {size}", record.size),
            });
        }
        Ok(StoredFile { file, record })
    }
}

/// An open stored file.
#[derive(Debug)]
pub struct StoredFile {
    file: File,
    record: FileRecord,
}

impl StoredFile {
    /// Its record.
    pub fn record(&self) -> &FileRecord {
        &self.record
    }

    /// Its size.
    pub fn size(&self) -> u64 {
        self.record.size
    }

    /// Fills `buf` from `offset` (`pread`); fewer bytes only at the end of
    /// the file. A file that shrank under us is an error.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.record.size.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        self.file.read_exact_at(&mut buf[..want], offset)?;
        Ok(want)
    }
}

/// Copies `source` to a new file at `path`, hashing it, and fsyncs it.
fn copy_hashing(source: &mut dyn io::Read, path: &Path) -> Result<(Digest, u64), FileError> {
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_error(format!("creating {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; COPY_BUFFER];
    let mut size = 0u64;
    loop {
        let read = match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(io_error("reading the file to add")(err)),
        };
        hasher.update(&buffer[..read]);
        out.write_all(&buffer[..read])
            .map_err(io_error(format!("writing {}", path.display())))?;
        size += read as u64;
    }
    out.sync_all()
        .map_err(io_error(format!("syncing {}", path.display())))?;
    Ok((Digest(hasher.finalize().into()), size))
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let mut file = File::create(path).map_err(io_error(format!("creating {}", path.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error(format!("writing {}", path.display())))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A name part no other add of this process uses at the same time.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn a_file_is_stored_under_its_digest_and_read_by_offset() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("firmware-1.2.bin");
        let content: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&source, &content).unwrap();
        let store = FileStore::new(dir.path().join("files"));
        let record = store.add(&source).unwrap();
        assert_eq!(record.sha256, sha(&content));
        assert_eq!(record.size, 1_000_000);
        assert_eq!(record.name, "firmware-1.2.bin");

        let digest: Digest = record.sha256.parse().unwrap();
        assert_eq!(fs::read(store.path_of(&digest)).unwrap(), content);
        let file = store.open(&digest).unwrap();
        let mut buf = vec![0; 4096];
        assert_eq!(file.read_at(10_000, &mut buf).unwrap(), 4096);
        assert_eq!(buf, content[10_000..14_096]);
        assert_eq!(file.read_at(999_000, &mut buf).unwrap(), 1000, "short only at the end");
        assert_eq!(buf[..1000], content[999_000..]);
        assert_eq!(file.read_at(1_000_000, &mut buf).unwrap(), 0);
        assert_eq!(
            fs::read_dir(dir.path().join("files/tmp")).unwrap().count(),
            0,
            "no temp left"
        );
    }

    #[test]
    fn adding_the_same_bytes_again_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        let first = store.add_reader(&mut &b"same bytes"[..], "a.bin").unwrap();
        let again = store.add_reader(&mut &b"same bytes"[..], "b.bin").unwrap();
        assert_eq!(first, again, "the first name and time stay");
        assert_eq!(
            fs::read_dir(dir.path().join(BY_DIGEST)).unwrap().count(),
            2,
            "one file, one record"
        );
        let empty = store.add_reader(&mut &b""[..], "empty").unwrap();
        assert_eq!(empty.size, 0);
        assert_eq!(empty.sha256, sha(b""));
    }

    #[test]
    fn unknown_malformed_and_damaged_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        assert!(matches!("xyz".parse::<Digest>(), Err(FileError::BadDigest(_))));
        assert!(matches!("g".repeat(64).parse::<Digest>(), Err(FileError::BadDigest(_))));
        let missing: Digest = sha(b"never added").parse().unwrap();
        assert!(matches!(store.open(&missing), Err(FileError::NotFound(_))));

        let record = store.add_reader(&mut &b"0123456789"[..], "x").unwrap();
        let digest: Digest = record.sha256.parse().unwrap();
        // Truncated behind the store's back: refused, not served short.
        fs::write(store.path_of(&digest), b"01234").unwrap();
        assert!(matches!(store.open(&digest), Err(FileError::BadRecord { .. })));
        fs::write(store.record_path(&digest), b"not json").unwrap();
        assert!(matches!(store.open(&digest), Err(FileError::BadRecord { .. })));
    }

    #[test]
    fn a_failed_read_leaves_nothing_behind() {
        struct Failing;
        impl io::Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk gone"))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        assert!(matches!(store.add_reader(&mut Failing, "x"), Err(FileError::Io { .. })));
        assert_eq!(fs::read_dir(dir.path().join(TEMP)).unwrap().count(), 0);
        assert_eq!(fs::read_dir(dir.path().join(BY_DIGEST)).unwrap().count(), 0);
    }
}
