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
//! everybody sees until a cut). To be able to undo a removal, the removed
//! file is first hard-linked into a hidden graveyard directory in the
//! backing root; a removed (hence empty) directory is remembered by its mode
//! and owner and made again.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, RenameFlags};

use crate::fs::proc_path;

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

/// How to bring back what a removal or a replacing rename took away.
#[derive(Debug)]
enum Buried {
    /// A hard link in the graveyard to the removed file (of any type but a
    /// directory), under this name.
    Link(OsString),
    /// An empty directory: made again with this mode and owner.
    Dir { mode: u32, uid: u32, gid: u32 },
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
            rustix::fs::unlinkat(&graveyard, entry?.file_name(), AtFlags::empty())?;
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
        let was = self.bury(dir, name)?.ok_or(rustix::io::Errno::NOENT)?;
        // The real unlink decides (EISDIR, ENOTDIR, ENOTEMPTY, EACCES...).
        if let Err(e) = rustix::fs::unlinkat(dir, name, flags) {
            self.forget(&was);
            return Err(e.into());
        }
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
        let replaced = if exchange || flags.contains(RenameFlags::NOREPLACE) {
            None
        } else {
            self.bury(to_dir, to)?
        };
        if let Err(e) = rustix::fs::renameat_with(from_dir, from, to_dir, to, flags) {
            if let Some(replaced) = &replaced {
                self.forget(replaced);
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

    /// Keeps what `name` in `dir` is, so that it can be brought back;
    /// `None` if there is nothing there.
    fn bury(&mut self, dir: &File, name: &OsStr) -> io::Result<Option<Buried>> {
        let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            return Ok(Some(Buried::Dir {
                mode: stat.st_mode & 0o7777,
                uid: stat.st_uid,
                gid: stat.st_gid,
            }));
        }
        let buried = OsString::from(self.next_buried.to_string());
        self.next_buried += 1;
        rustix::fs::linkat(dir, name, &self.graveyard, &buried, AtFlags::empty())?;
        Ok(Some(Buried::Link(buried)))
    }

    fn unbury(&self, was: Buried, dir: &File, name: &OsStr) -> io::Result<()> {
        match was {
            Buried::Link(buried) => rustix::fs::renameat(&self.graveyard, &buried, dir, name)?,
            Buried::Dir { mode, uid, gid } => {
                rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode))?;
                let made = File::from(rustix::fs::openat(
                    dir,
                    name,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?);
                // mkdir applies the umask; the directory had exactly `mode`.
                rustix::fs::chmodat(CWD, proc_path(&made), Mode::from_raw_mode(mode), AtFlags::empty())?;
                std::os::unix::fs::chown(proc_path(&made), Some(uid), Some(gid))?;
            }
        }
        Ok(())
    }

    fn forget(&self, was: &Buried) {
        if let Buried::Link(buried) = was {
            let _ = rustix::fs::unlinkat(&self.graveyard, buried, AtFlags::empty());
        }
    }
}

fn same_inode(a: &File, b: &File) -> bool {
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}
