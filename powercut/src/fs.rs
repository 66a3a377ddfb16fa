//! The FUSE filesystem: every operation passes through to the backing
//! directory at once; file contents wait in [`Pending`] until that file is
//! fsynced, and namespace changes are kept in the [`Journal`] until a
//! directory fsync, so that a cut can undo them (README.md, "What survives
//! a cut").
//!
//! One mutex guards the whole state. fuser runs one request loop thread, so
//! the only contention is a power cut or an unmount from the test's thread;
//! holding the lock across an fsync's writes makes a cut land either before
//! or after it, never in the middle.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use rustix::fs::{AtFlags, CWD, Mode, OFlags, Timespec, Timestamps};

use crate::journal::{GRAVEYARD, Journal, proc_path};
use crate::pending::Pending;

/// How long the kernel may cache an entry or attributes: not at all, so that
/// after a cut every `stat` and every path lookup asks us, and sees the
/// lengths of the synced data only.
const TTL: Duration = Duration::ZERO;

/// What one power cut destroyed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cut {
    /// Files that had unsynced writes or truncations.
    pub files: usize,
    /// Bytes of unsynced writes discarded.
    pub bytes: u64,
    /// Open file handles made stale: every later read, write, fsync or close
    /// through them fails with EIO.
    pub stale_handles: usize,
    /// Namespace changes (creations, removals, renames) undone because no
    /// directory fsync had committed them.
    pub namespace_changes: usize,
}

/// The state shared by the FUSE thread and the [`Mount`](crate::Mount).
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
}

/// The filesystem fuser drives, one per mount.
pub(crate) struct PassThrough {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct State {
    /// Inodes the kernel knows (or that hold unsynced data), by FUSE inode
    /// number. Numbers are never reused, so the generation is always 0.
    inodes: HashMap<u64, Inode>,
    /// The FUSE inode number of each backing inode in `inodes`, by
    /// (st_dev, st_ino): a renamed or hard-linked file keeps its number, and
    /// with it its unsynced data.
    by_backing: HashMap<(u64, u64), u64>,
    next_ino: u64,
    /// Open files and directories, by FUSE file handle.
    handles: HashMap<u64, Handle>,
    next_handle: u64,
    /// Power cuts so far; a file handle opened before the latest is stale.
    epoch: u64,
    /// Namespace changes no directory fsync has committed yet.
    journal: Journal,
}

#[derive(Debug)]
struct Inode {
    /// An O_PATH descriptor of the backing file or directory: every
    /// operation reaches the backing inode through it (as `*at` directory
    /// descriptor or as `/proc/self/fd/N`), whatever it was renamed to.
    path: File,
    backing: (u64, u64),
    /// Lookups the kernel has not forgotten yet.
    lookups: u64,
    /// Open file handles.
    open: u64,
    /// The backing regular file opened for reading and writing, from the
    /// first open on: reads and fsync go through it.
    data: Option<File>,
    /// Writes and truncations no fsync has reached yet.
    pending: Option<Pending>,
}

#[derive(Debug)]
enum Handle {
    File {
        ino: u64,
        /// The power cut count at open: a cut since makes the handle stale.
        epoch: u64,
        /// Opened with O_SYNC or O_DSYNC: each write is also an fsync.
        sync_writes: bool,
    },
    /// A directory's entries, read at opendir: readdir pages through them.
    Dir { entries: Vec<(u64, FileType, OsString)> },
}

impl Shared {
    /// The state for a mount of the backing directory `backing`.
    pub(crate) fn new(backing: &Path) -> io::Result<Arc<Shared>> {
        // Following a symbolic link here (unlike inside the filesystem).
        let path = File::from(rustix::fs::openat(
            CWD,
            backing,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
        let meta = path.metadata()?;
        let journal = Journal::open(&path)?;
        let root = Inode {
            path,
            backing: (meta.dev(), meta.ino()),
            // The kernel never forgets the root.
            lookups: 1,
            open: 0,
            data: None,
            pending: None,
        };
        let mut state = State {
            inodes: HashMap::new(),
            by_backing: HashMap::new(),
            next_ino: INodeNo::ROOT.0 + 1,
            handles: HashMap::new(),
            next_handle: 1,
            epoch: 0,
            journal,
        };
        state.by_backing.insert(root.backing, INodeNo::ROOT.0);
        state.inodes.insert(INodeNo::ROOT.0, root);
        Ok(Arc::new(Shared {
            state: Mutex::new(state),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a request leaves the maps consistent (each operation
        // changes them last), so carry on rather than fail every request.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Discards every unsynced write and truncation and makes every open
    /// file handle stale.
    pub(crate) fn cut_power(&self) -> Cut {
        let mut state = self.lock();
        state.epoch += 1;
        let mut cut = Cut {
            namespace_changes: state.journal.undo(),
            ..Cut::default()
        };
        for inode in state.inodes.values_mut() {
            if let Some(pending) = inode.pending.take() {
                cut.files += 1;
                cut.bytes += pending.held_bytes();
            }
        }
        cut.stale_handles = state
            .handles
            .values()
            .filter(|h| matches!(h, Handle::File { .. }))
            .count();
        state.sweep();
        cut
    }

    /// Bytes of unsynced writes held in memory.
    pub(crate) fn pending_bytes(&self) -> u64 {
        let state = self.lock();
        state
            .inodes
            .values()
            .filter_map(|i| i.pending.as_ref())
            .map(Pending::held_bytes)
            .sum()
    }

    /// Writes every file's unsynced data to the backing directory and
    /// commits every namespace change, as a clean unmount does.
    pub(crate) fn sync_all(&self) -> io::Result<()> {
        let mut state = self.lock();
        state.journal.commit();
        let dirty: Vec<u64> = state
            .inodes
            .iter()
            .filter(|(_, i)| i.pending.is_some())
            .map(|(ino, _)| *ino)
            .collect();
        for ino in dirty {
            state
                .sync(ino, false)
                .map_err(|Fail(e)| io::Error::from_raw_os_error(e.code()))?;
        }
        state.sweep();
        Ok(())
    }

    /// Removes the hidden graveyard from the backing directory, once
    /// unmounted.
    pub(crate) fn remove_graveyard(&self) {
        self.lock().journal.remove_graveyard();
    }
}

impl PassThrough {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        PassThrough { shared }
    }
}

impl State {
    fn inode(&self, ino: INodeNo) -> Outcome<&Inode> {
        // The kernel only names inodes we gave it and have not forgotten.
        Ok(self.inodes.get(&ino.0).ok_or(Errno::ESTALE)?)
    }

    fn inode_mut(&mut self, ino: u64) -> Outcome<&mut Inode> {
        Ok(self.inodes.get_mut(&ino).ok_or(Errno::ESTALE)?)
    }

    /// Counts one kernel lookup of the backing inode `path` refers to, and
    /// returns its FUSE inode number.
    fn remember(&mut self, path: File) -> Outcome<u64> {
        let meta = path.metadata()?;
        let backing = (meta.dev(), meta.ino());
        if let Some(&ino) = self.by_backing.get(&backing) {
            // `path` is another descriptor of an inode we already hold.
            self.inode_mut(ino)?.lookups += 1;
            return Ok(ino);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.by_backing.insert(backing, ino);
        self.inodes.insert(
            ino,
            Inode {
                path,
                backing,
                lookups: 1,
                open: 0,
                data: None,
                pending: None,
            },
        );
        Ok(ino)
    }

    /// Drops the unsynced data of an unlinked file nobody has open (no one
    /// can ever read it), and the inode itself once the kernel forgot it and
    /// it holds no unsynced data that a later lookup would have to see.
    fn forget_if_unused(&mut self, ino: u64) {
        let Some(inode) = self.inodes.get_mut(&ino) else { return };
        if ino == INodeNo::ROOT.0 || inode.open > 0 {
            return;
        }
        let linked = inode.path.metadata().map(|m| m.nlink() > 0).unwrap_or(false);
        if !linked {
            inode.pending = None;
        }
        if inode.lookups > 0 || inode.pending.is_some() {
            return;
        }
        let backing = inode.backing;
        self.by_backing.remove(&backing);
        self.inodes.remove(&ino);
    }

    /// Applies [`forget_if_unused`](Self::forget_if_unused) to every inode,
    /// after a cut or a commit changed which files are linked.
    fn sweep(&mut self) {
        let all: Vec<u64> = self.inodes.keys().copied().collect();
        for ino in all {
            self.forget_if_unused(ino);
        }
    }

    /// The attributes the kernel sees: the backing inode's, with the length
    /// of the unsynced data.
    fn attr(&self, ino: u64) -> Outcome<FileAttr> {
        let inode = self.inode(INodeNo(ino))?;
        let meta = inode.path.metadata()?;
        let size = inode.pending.as_ref().map_or(meta.size(), Pending::len);
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: meta.blocks().max(size.div_ceil(512)),
            atime: time(meta.atime(), meta.atime_nsec()),
            mtime: time(meta.mtime(), meta.mtime_nsec()),
            ctime: time(meta.ctime(), meta.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: file_type(&meta.file_type()),
            perm: (meta.mode() & 0o7777) as u16,
            nlink: u32::try_from(meta.nlink()).unwrap_or(u32::MAX),
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: u32::try_from(meta.rdev()).unwrap_or(0),
            blksize: u32::try_from(meta.blksize()).unwrap_or(4096),
            flags: 0,
        })
    }

    /// The backing file opened for data, opening it at first use.
    fn data(&mut self, ino: u64) -> Outcome<&File> {
        let inode = self.inode_mut(ino)?;
        if inode.data.is_none() {
            if !inode.path.metadata()?.is_file() {
                return Err(Errno::EINVAL.into());
            }
            let proc = proc_path(&inode.path);
            // Read-write whatever the caller asked for: fsync writes the
            // pending data through this descriptor. Without O_APPEND: the
            // kernel already put an appending write at the end.
            let data = match File::options().read(true).write(true).open(&proc) {
                Ok(file) => file,
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::ACCESS.raw_os_error()) => File::open(&proc)?,
                Err(e) => return Err(e.into()),
            };
            inode.data = Some(data);
        }
        Ok(inode.data.as_ref().ok_or(Errno::EIO)?)
    }

    /// The pending state of a regular file, started over its backing length.
    fn pending(&mut self, ino: u64) -> Outcome<&mut Pending> {
        if self.inode(INodeNo(ino))?.pending.is_none() {
            let durable_len = self.data(ino)?.metadata()?.len();
            self.inode_mut(ino)?.pending = Some(Pending::new(durable_len));
        }
        Ok(self.inode_mut(ino)?.pending.as_mut().ok_or(Errno::EIO)?)
    }

    /// The file handle `fh`, unless a cut made it stale.
    fn live_file(&self, fh: FileHandle) -> Outcome<(u64, bool)> {
        match self.handles.get(&fh.0) {
            Some(Handle::File {
                ino,
                epoch,
                sync_writes,
            }) if *epoch == self.epoch => Ok((*ino, *sync_writes)),
            // Stale after a power cut (or never opened): like a disk that
            // went away under an open file.
            _ => Err(Errno::EIO.into()),
        }
    }

    fn open_file(&mut self, ino: u64, flags: i32) -> Outcome<FileHandle> {
        let oflags = OFlags::from_bits_retain(flags as u32);
        let durable_len = self.data(ino)?.metadata()?.len();
        if oflags.contains(OFlags::TRUNC) {
            let inode = self.inode_mut(ino)?;
            let len = inode.pending.as_ref().map_or(durable_len, Pending::len);
            // Nothing to hold back for an empty (say, just created) file.
            if len > 0 {
                self.pending(ino)?.truncate(0);
            }
        }
        self.inode_mut(ino)?.open += 1;
        Ok(self.new_handle(Handle::File {
            ino,
            epoch: self.epoch,
            // O_SYNC is O_DSYNC plus a bit on Linux: DSYNC covers both.
            sync_writes: oflags.contains(OFlags::DSYNC),
        }))
    }

    fn new_handle(&mut self, handle: Handle) -> FileHandle {
        let fh = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(fh, handle);
        FileHandle(fh)
    }

    /// fsync: writes the file's pending data to the backing file and syncs
    /// that. On failure the pending data stays, still readable, as a real
    /// kernel keeps dirty pages it could not write.
    fn sync(&mut self, ino: u64, datasync: bool) -> Outcome<()> {
        let inode = self.inode_mut(ino)?;
        let Some(pending) = inode.pending.take() else {
            return Ok(());
        };
        let Some(data) = inode.data.as_ref() else {
            inode.pending = Some(pending);
            return Err(Errno::EIO.into());
        };
        let written = pending
            .apply(data)
            .and_then(|()| if datasync { data.sync_data() } else { data.sync_all() });
        if let Err(e) = written {
            inode.pending = Some(pending);
            return Err(e.into());
        }
        Ok(())
    }

    fn read(&mut self, ino: u64, offset: u64, size: usize) -> Outcome<Vec<u8>> {
        self.data(ino)?;
        let inode = self.inode(INodeNo(ino))?;
        let data = inode.data.as_ref().ok_or(Errno::EIO)?;
        if let Some(pending) = &inode.pending {
            return Ok(pending.read(offset, size, |at, buf| data.read_exact_at(buf, at))?);
        }
        let mut buf = vec![0; size];
        let mut filled = 0;
        while filled < size {
            match data.read_at(&mut buf[filled..], offset + filled as u64)? {
                0 => break,
                n => filled += n,
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    fn setattr(&mut self, ino: u64, change: AttrChange, fh: Option<FileHandle>) -> Outcome<FileAttr> {
        if let Some(fh) = fh {
            self.live_file(fh)?;
        }
        let proc = proc_path(&self.inode(INodeNo(ino))?.path);
        // Modes, owners and times go to the backing inode for good at once:
        // a cut does not undo them (README.md, "What is not modelled").
        let AttrChange {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        } = change;
        if let Some(mode) = mode {
            rustix::fs::chmodat(CWD, &proc, Mode::from_raw_mode(mode & 0o7777), AtFlags::empty())?;
        }
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::chown(&proc, uid, gid)?;
        }
        if atime.is_some() || mtime.is_some() {
            let timestamps = Timestamps {
                last_access: timespec(atime),
                last_modification: timespec(mtime),
            };
            rustix::fs::utimensat(CWD, &proc, &timestamps, AtFlags::empty())?;
        }
        if let Some(size) = size {
            // A truncation is data, not metadata: it waits for fsync.
            self.pending(ino)?.truncate(size);
        }
        self.attr(ino)
    }

    /// Gives a newly created backing inode the caller's ownership, as the
    /// kernel would have (this process may be root creating for another user).
    fn chown_to_caller(file: &File, req: &Request) -> Outcome<()> {
        let meta = file.metadata()?;
        if meta.uid() != req.uid() || meta.gid() != req.gid() {
            std::os::unix::fs::fchown(file, Some(req.uid()), Some(req.gid()))?;
        }
        Ok(())
    }

    /// Fails with EPERM if `name` in `parent` is the hidden graveyard.
    fn not_graveyard(&self, parent: INodeNo, name: &OsStr) -> Outcome<()> {
        if self.journal.is_graveyard(&self.inode(parent)?.path, name) {
            return Err(Errno::EPERM.into());
        }
        Ok(())
    }

    fn lookup(&mut self, parent: INodeNo, name: &OsStr) -> Outcome<FileAttr> {
        if self.journal.is_graveyard(&self.inode(parent)?.path, name) {
            return Err(Errno::ENOENT.into());
        }
        let path = open_path(&self.inode(parent)?.path, name)?;
        let ino = self.remember(path)?;
        self.attr(ino)
    }

    fn create(
        &mut self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Outcome<(FileAttr, FileHandle)> {
        let oflags = OFlags::from_bits_retain(flags as u32);
        let mut create = OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        if oflags.contains(OFlags::EXCL) {
            create |= OFlags::EXCL;
        }
        self.not_graveyard(parent, name)?;
        // A descriptor of our own: the journal below needs `self` mutably.
        let parent_path = &self.inode(parent)?.path.try_clone()?;
        let existed = rustix::fs::statat(parent_path, name, AtFlags::SYMLINK_NOFOLLOW).is_ok();
        let file = File::from(rustix::fs::openat(
            parent_path,
            name,
            create,
            Mode::from_raw_mode(mode & 0o7777),
        )?);
        Self::chown_to_caller(&file, req)?;
        // The new name is on the backing disk at once, until a cut undoes
        // it; its contents are empty there until fsync.
        if !existed {
            self.journal.created(parent_path, name, false)?;
        }
        let path = open_path(parent_path, name)?;
        let ino = self.remember(path)?;
        let inode = self.inode_mut(ino)?;
        if inode.data.is_none() {
            inode.data = Some(file);
        }
        let fh = self.open_file(ino, flags)?;
        Ok((self.attr(ino)?, fh))
    }

    fn mkdir(&mut self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32) -> Outcome<FileAttr> {
        self.not_graveyard(parent, name)?;
        let parent_path = &self.inode(parent)?.path.try_clone()?;
        rustix::fs::mkdirat(parent_path, name, Mode::from_raw_mode(mode & 0o7777))?;
        self.journal.created(parent_path, name, true)?;
        let path = open_path(parent_path, name)?;
        Self::chown_to_caller(&path, req)?;
        let ino = self.remember(path)?;
        self.attr(ino)
    }

    /// The FUSE inode number of `name` in `parent`, if the kernel knows it.
    fn known_child(&self, parent: INodeNo, name: &OsStr) -> Outcome<Option<u64>> {
        let parent_path = &self.inode(parent)?.path;
        Ok(rustix::fs::statat(parent_path, name, AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .and_then(|st| self.by_backing.get(&(st.st_dev, st.st_ino)).copied()))
    }

    fn unlink(&mut self, parent: INodeNo, name: &OsStr, flags: AtFlags) -> Outcome<()> {
        self.not_graveyard(parent, name)?;
        let known = self.known_child(parent, name)?;
        let parent_path = self.inode(parent)?.path.try_clone()?;
        self.journal.remove(&parent_path, name, flags)?;
        if let Some(ino) = known {
            self.forget_if_unused(ino);
        }
        Ok(())
    }

    fn rename(
        &mut self,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Outcome<()> {
        // The renamed inode keeps its FUSE number and so its pending data;
        // the one it replaces may now be unreachable.
        self.not_graveyard(parent, name)?;
        self.not_graveyard(new_parent, new_name)?;
        let replaced = self.known_child(new_parent, new_name)?;
        let from_dir = self.inode(parent)?.path.try_clone()?;
        let to_dir = self.inode(new_parent)?.path.try_clone()?;
        self.journal.rename(
            &from_dir,
            name,
            &to_dir,
            new_name,
            rustix::fs::RenameFlags::from_bits_retain(flags.bits()),
        )?;
        if let Some(ino) = replaced {
            self.forget_if_unused(ino);
        }
        Ok(())
    }

    fn opendir(&mut self, ino: INodeNo) -> Outcome<FileHandle> {
        let mut entries = vec![
            (ino.0, FileType::Directory, OsString::from(".")),
            (ino.0, FileType::Directory, OsString::from("..")),
        ];
        for entry in std::fs::read_dir(proc_path(&self.inode(ino)?.path))? {
            let entry = entry?;
            if ino == INodeNo::ROOT && entry.file_name() == GRAVEYARD {
                continue;
            }
            let kind = file_type(&entry.file_type()?);
            entries.push((entry.ino(), kind, entry.file_name()));
        }
        Ok(self.new_handle(Handle::Dir { entries }))
    }
}

/// What a SETATTR request changes (`None`: leave as it is).
struct AttrChange {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    /// A truncation or extension: file data, held until fsync.
    size: Option<u64>,
    atime: Option<TimeOrNow>,
    mtime: Option<TimeOrNow>,
}

/// An operation's result, failed with the errno the kernel passes on.
type Outcome<T> = Result<T, Fail>;

/// An errno for the kernel, from whichever library raised it.
#[derive(Debug, Clone, Copy)]
struct Fail(Errno);

impl From<Errno> for Fail {
    fn from(errno: Errno) -> Self {
        Fail(errno)
    }
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail(Errno::from(e))
    }
}

impl From<rustix::io::Errno> for Fail {
    fn from(e: rustix::io::Errno) -> Self {
        Fail(Errno::from_i32(e.raw_os_error()))
    }
}

/// Opens `name` under `dir` as an O_PATH descriptor, not following a final
/// symbolic link: an identity, not access to the contents.
fn open_path(dir: impl AsFd, name: impl rustix::path::Arg) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

fn time(secs: i64, nanos: i64) -> SystemTime {
    let nanos = u32::try_from(nanos).unwrap_or(0);
    match u64::try_from(secs) {
        Ok(secs) => UNIX_EPOCH + Duration::new(secs, nanos),
        Err(_) => UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nanos),
    }
}

fn timespec(time: Option<TimeOrNow>) -> Timespec {
    let (tv_sec, tv_nsec) = match time {
        None => (0, rustix::fs::UTIME_OMIT),
        Some(TimeOrNow::Now) => (0, rustix::fs::UTIME_NOW),
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (
                i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                i64::from(d.subsec_nanos()),
            ),
            Err(before) => (-i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX), 0),
        },
    };
    Timespec { tv_sec, tv_nsec }
}

fn file_type(t: &std::fs::FileType) -> FileType {
    FileType::from_std(*t).unwrap_or(FileType::RegularFile)
}

/// Sends `result` as the reply, or its error.
macro_rules! reply {
    ($reply:expr, $result:expr, |$ok:pat_param| $send:expr) => {
        match $result {
            Ok($ok) => $send,
            Err(Fail(errno)) => $reply.error(errno),
        }
    };
}

impl Filesystem for PassThrough {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self.shared.lock().lookup(parent, name);
        reply!(reply, result, |attr| reply.entry(&TTL, &attr, Generation(0)));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut state = self.shared.lock();
        if let Some(inode) = state.inodes.get_mut(&ino.0) {
            inode.lookups = inode.lookups.saturating_sub(nlookup);
        }
        state.forget_if_unused(ino.0);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let result = self.shared.lock().attr(ino.0);
        reply!(reply, result, |attr| reply.attr(&TTL, &attr));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = AttrChange {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        let result = self.shared.lock().setattr(ino.0, change, fh);
        reply!(reply, result, |attr| reply.attr(&TTL, &attr));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let state = self.shared.lock();
        let result = state
            .inode(ino)
            .and_then(|inode| Ok(rustix::fs::readlinkat(&inode.path, "", Vec::new())?));
        reply!(reply, result, |target| reply.data(target.as_bytes()));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let result = self.shared.lock().mkdir(req, parent, name, mode & !umask);
        reply!(reply, result, |attr| reply.entry(&TTL, &attr, Generation(0)));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.shared.lock().unlink(parent, name, AtFlags::empty());
        reply!(reply, result, |()| reply.ok());
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.shared.lock().unlink(parent, name, AtFlags::REMOVEDIR);
        reply!(reply, result, |()| reply.ok());
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self.shared.lock().rename(parent, name, newparent, newname, flags);
        reply!(reply, result, |()| reply.ok());
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let result = self.shared.lock().open_file(ino.0, flags.0);
        // Direct I/O: no kernel page cache in front of us, so every read and
        // write reaches the pending data, and nothing cached survives a cut.
        reply!(reply, result, |fh| reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO));
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut state = self.shared.lock();
        let result = state
            .live_file(fh)
            .and_then(|(ino, _)| state.read(ino, offset, size as usize));
        reply!(reply, result, |data| reply.data(&data));
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.shared.lock();
        let result = state.live_file(fh).and_then(|(ino, sync_writes)| {
            state.pending(ino)?.write(offset, data).map_err(|_| Errno::EFBIG)?;
            if sync_writes {
                state.sync(ino, true)?;
            }
            Ok(data.len() as u32)
        });
        reply!(reply, result, |n| reply.written(n));
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close(2) does not sync; it only reports that the handle died.
        let result = self.shared.lock().live_file(fh);
        reply!(reply, result, |_| reply.ok());
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.shared.lock();
        if let Some(Handle::File { ino, .. }) = state.handles.remove(&fh.0) {
            if let Some(inode) = state.inodes.get_mut(&ino) {
                inode.open = inode.open.saturating_sub(1);
            }
            state.forget_if_unused(ino);
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let mut state = self.shared.lock();
        let result = state.live_file(fh).and_then(|(ino, _)| state.sync(ino, datasync));
        reply!(reply, result, |()| reply.ok());
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = self.shared.lock().opendir(ino);
        reply!(reply, result, |fh| reply.opened(fh, FopenFlags::empty()));
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let state = self.shared.lock();
        let Some(Handle::Dir { entries }) = state.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(skip) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.shared.lock().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let mut state = self.shared.lock();
        // The journal commits every namespace change so far (README.md:
        // "an ordered metadata journal"), not only this directory's.
        state.journal.commit();
        state.sweep();
        let result = state.inode(ino).and_then(|inode| {
            let dir = File::open(proc_path(&inode.path))?;
            Ok(dir.sync_all()?)
        });
        reply!(reply, result, |()| reply.ok());
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let state = self.shared.lock();
        let result = state
            .inode(INodeNo::ROOT)
            .and_then(|root| Ok(rustix::fs::fstatvfs(&root.path)?));
        reply!(reply, result, |st| reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            u32::try_from(st.f_bsize).unwrap_or(4096),
            u32::try_from(st.f_namemax).unwrap_or(255),
            u32::try_from(st.f_frsize).unwrap_or(4096),
        ));
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // No file here is a terminal: what isatty(3) (Python's open, stdio)
        // expects to hear, instead of a warning per open.
        reply.error(Errno::ENOTTY);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self.shared.lock().create(req, parent, name, mode & !umask, flags);
        reply!(reply, result, |(attr, fh)| reply.created(
            &TTL,
            &attr,
            Generation(0),
            fh,
            FopenFlags::FOPEN_DIRECT_IO
        ));
    }
}
