//! Namespace changes (create, mkdir, unlink, rmdir, rename) that no
//! directory fsync has committed yet: a power cut undoes them, newest first.
//!
//! The model is a filesystem with an ordered metadata journal, as ext4 and
//! XFS have, where only a directory fsync forces a commit: fsyncing any
//! directory commits every namespace change made before it, in order. So a
//! cut always undoes a suffix of the changes, and undoing them newest first
//! restores exactly the committed namespace.
//!
//! Every change is made on the backing directory at once (that is what
//! everybody sees until a cut). To be able to undo a removal, nothing is
//! destroyed before its commit: a removed or replaced file is first
//! hard-linked into a hidden graveyard directory in the backing root, and a
//! removed or replaced (hence empty) directory is moved there. So every
//! inode the journal refers to, directories included, still exists when a
//! cut undoes the changes.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};

/// The graveyard's name in the backing root, hidden from the mount.
pub(crate) const GRAVEYARD: &str = ".powercut-graveyard";

#[derive(Debug)]
pub(crate) struct Journal {
    /// The backing root, where the graveyard lives.
    root: File,
    /// O_PATH descriptor of the graveyard.
    graveyard: File,
    /// Uncommitted changes, oldest first.
    changes: Vec<Change>,
    /// Names for the next buried file.
    next_buried: u64,
}

/// One uncommitted namespace change. Directories are held as O_PATH
/// descriptors: they stay reachable whatever is renamed later.
#[derive(Debug)]
enum Change {
    Created {
        dir: File,
        name: OsString,
        is_dir: bool,
    },
    Removed {
        dir: File,
        name: OsString,
        was: Buried,
    },
    Renamed {
        from_dir: File,
        from: OsString,
        to_dir: File,
        to: OsString,
        /// What the rename replaced at `to`.
        replaced: Option<Buried>,
        /// RENAME_EXCHANGE: undone by exchanging again.
        exchange: bool,
    },
}

/// What a removal or a replacing rename took away, kept in the graveyard
/// under `name` (a hard link to a file, or the empty directory itself).
#[derive(Debug)]
struct Buried {
    name: OsString,
    is_dir: bool,
}

impl Journal {
    /// Opens (or makes) the graveyard in the backing root `root`, emptied:
    /// whatever a previous mount left there was removed and not restored,
    /// so its removal stands.
    pub(crate) fn open(root: &File) -> io::Result<Journal> {
        match rustix::fs::mkdirat(root, GRAVEYARD, Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let graveyard = File::from(rustix::fs::openat(
            root,
            GRAVEYARD,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
        for entry in std::fs::read_dir(proc_path(&graveyard))? {
            let entry = entry?;
            let flags = if entry.file_type()?.is_dir() {
                AtFlags::REMOVEDIR
            } else {
                AtFlags::empty()
            };
            rustix::fs::unlinkat(&graveyard, entry.file_name(), flags)?;
        }
        Ok(Journal {
            root: root.try_clone()?,
            graveyard,
            changes: Vec::new(),
            next_buried: 0,
        })
    }

    /// Whether `name` in the directory `dir` is the graveyard, which the
    /// mount does not show and no operation may touch.
    pub(crate) fn is_graveyard(&self, dir: &File, name: &OsStr) -> bool {
        name == GRAVEYARD && same_inode(dir, &self.root)
    }

    /// Records that `name` was just created in `dir`.
    pub(crate) fn created(&mut self, dir: &File, name: &OsStr, is_dir: bool) -> io::Result<()> {
        self.changes.push(Change::Created {
            dir: dir.try_clone()?,
            name: name.to_owned(),
            is_dir,
        });
        Ok(())
    }

    /// unlink (or, with `AtFlags::REMOVEDIR`, rmdir) `name` in `dir`.
    pub(crate) fn remove(&mut self, dir: &File, name: &OsStr, flags: AtFlags) -> io::Result<()> {
        let was = if flags.contains(AtFlags::REMOVEDIR) {
            let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
                return Err(rustix::io::Errno::NOTDIR.into());
            }
            // rmdir's own checks, since the directory is moved, not removed.
            ensure_empty(dir, name)?;
            self.bury_by_moving(dir, name)?
        } else {
            let was = self.bury_by_linking(dir, name)?;
            // The real unlink decides (EISDIR for a directory, EACCES...).
            if let Err(e) = rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
                self.forget(&was);
                return Err(e.into());
            }
            was
        };
        self.changes.push(Change::Removed {
            dir: dir.try_clone()?,
            name: name.to_owned(),
            was,
        });
        Ok(())
    }

    /// renameat2 `from` in `from_dir` to `to` in `to_dir`.
    pub(crate) fn rename(
        &mut self,
        from_dir: &File,
        from: &OsStr,
        to_dir: &File,
        to: &OsStr,
        flags: RenameFlags,
    ) -> io::Result<()> {
        let exchange = flags.contains(RenameFlags::EXCHANGE);
        let target = match rustix::fs::statat(to_dir, to, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if !exchange && !flags.contains(RenameFlags::NOREPLACE) => Some(stat),
            // Nothing replaced: absent, or the kernel refuses (NOREPLACE),
            // or it is exchanged, not replaced.
            _ => None,
        };
        let replaced = match target {
            None => None,
            Some(target) if FileType::from_raw_mode(target.st_mode) == FileType::Directory => {
                let source = rustix::fs::statat(from_dir, from, AtFlags::SYMLINK_NOFOLLOW)?;
                if (source.st_dev, source.st_ino) == (target.st_dev, target.st_ino) {
                    return Ok(()); // The same directory: rename does nothing.
                }
                // rename's own checks, since the target is moved away first.
                if FileType::from_raw_mode(source.st_mode) != FileType::Directory {
                    return Err(rustix::io::Errno::ISDIR.into());
                }
                ensure_empty(to_dir, to)?;
                Some(self.bury_by_moving(to_dir, to)?)
            }
            Some(_) => Some(self.bury_by_linking(to_dir, to)?),
        };
        if let Err(e) = rustix::fs::renameat_with(from_dir, from, to_dir, to, flags) {
            if let Some(replaced) = replaced {
                // Put back what was moved away; a link is just dropped.
                if replaced.is_dir {
                    let _ = self.unbury(replaced, to_dir, to);
                } else {
                    self.forget(&replaced);
                }
            }
            return Err(e.into());
        }
        self.changes.push(Change::Renamed {
            from_dir: from_dir.try_clone()?,
            from: from.to_owned(),
            to_dir: to_dir.try_clone()?,
            to: to.to_owned(),
            replaced,
            exchange,
        });
        Ok(())
    }

    /// A directory fsync: every change so far is durable; removed files go
    /// for good.
    pub(crate) fn commit(&mut self) {
        for change in std::mem::take(&mut self.changes) {
            match change {
                Change::Removed { was, .. } => self.forget(&was),
                Change::Renamed {
                    replaced: Some(was), ..
                } => self.forget(&was),
                Change::Created { .. } | Change::Renamed { replaced: None, .. } => {}
            }
        }
    }

    /// The power cut: undoes every uncommitted change, newest first.
    /// Returns how many were undone.
    pub(crate) fn undo(&mut self) -> usize {
        let changes = std::mem::take(&mut self.changes);
        let undone = changes.len();
        for change in changes.into_iter().rev() {
            // Each inverse succeeds on the state the later inverses left:
            // errors could only come from outside interference with the
            // backing directory, and then the best we can do is go on.
            let _ = self.reverse(change);
        }
        undone
    }

    /// Removes the graveyard (at unmount, after a commit).
    pub(crate) fn remove_graveyard(&mut self) {
        self.commit();
        let _ = rustix::fs::unlinkat(&self.root, GRAVEYARD, AtFlags::REMOVEDIR);
    }

    fn reverse(&mut self, change: Change) -> io::Result<()> {
        match change {
            Change::Created { dir, name, is_dir } => {
                let flags = if is_dir { AtFlags::REMOVEDIR } else { AtFlags::empty() };
                rustix::fs::unlinkat(&dir, &name, flags)?;
            }
            Change::Removed { dir, name, was } => self.unbury(was, &dir, &name)?,
            Change::Renamed {
                from_dir,
                from,
                to_dir,
                to,
                replaced,
                exchange,
            } => {
                if exchange {
                    rustix::fs::renameat_with(&to_dir, &to, &from_dir, &from, RenameFlags::EXCHANGE)?;
                } else {
                    rustix::fs::renameat(&to_dir, &to, &from_dir, &from)?;
                    if let Some(was) = replaced {
                        self.unbury(was, &to_dir, &to)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A fresh name in the graveyard.
    fn grave(&mut self) -> OsString {
        let name = OsString::from(self.next_buried.to_string());
        self.next_buried += 1;
        name
    }

    /// Keeps the file `name` in `dir` alive as a hard link in the graveyard.
    fn bury_by_linking(&mut self, dir: &File, name: &OsStr) -> io::Result<Buried> {
        let grave = self.grave();
        rustix::fs::linkat(dir, name, &self.graveyard, &grave, AtFlags::empty())?;
        Ok(Buried {
            name: grave,
            is_dir: false,
        })
    }

    /// Moves the empty directory `name` in `dir` into the graveyard.
    fn bury_by_moving(&mut self, dir: &File, name: &OsStr) -> io::Result<Buried> {
        let grave = self.grave();
        rustix::fs::renameat(dir, name, &self.graveyard, &grave)?;
        Ok(Buried {
            name: grave,
            is_dir: true,
        })
    }

    /// Brings a buried file or directory back as `name` in `dir`.
    fn unbury(&self, was: Buried, dir: &File, name: &OsStr) -> io::Result<()> {
        Ok(rustix::fs::renameat(&self.graveyard, &was.name, dir, name)?)
    }

    /// Destroys a buried file or directory: its removal is committed.
    fn forget(&self, was: &Buried) {
        let flags = if was.is_dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        let _ = rustix::fs::unlinkat(&self.graveyard, &was.name, flags);
    }
}

/// ENOTEMPTY unless the directory `name` in `dir` is empty.
fn ensure_empty(dir: &File, name: &OsStr) -> io::Result<()> {
    let opened = File::from(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?);
    if std::fs::read_dir(proc_path(&opened))?.next().is_some() {
        return Err(rustix::io::Errno::NOTEMPTY.into());
    }
    Ok(())
}

fn same_inode(a: &File, b: &File) -> bool {
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// `/proc/self/fd/N`: opens, chmods and lists the inode an O_PATH
/// descriptor refers to, as libfuse's passthrough_ll does.
pub(crate) fn proc_path(file: &std::fs::File) -> std::path::PathBuf {
    use std::os::fd::AsRawFd as _;
    std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}
