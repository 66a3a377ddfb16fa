//! Mounting, cutting the power, remounting and unmounting.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption, Session, SessionACL};

use crate::fs::{Cut, PassThrough, Shared};

/// The power-cut filesystem. Mount it with [`PowerCutFs::mount`].
#[derive(Debug, Clone, Copy)]
pub struct PowerCutFs;

/// What went wrong mounting or unmounting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backing directory cannot be opened (missing, not a directory).
    #[error("backing directory {}: {source}", path.display())]
    Backing {
        /// The backing directory.
        path: PathBuf,
        /// Why it cannot be used.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the mount (not root, no /dev/fuse, not a directory).
    #[error("mounting a FUSE filesystem at {}: {source}", path.display())]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The kernel's or fuser's error.
        #[source]
        source: io::Error,
    },
    /// Unsynced data could not be written to the backing directory before
    /// a clean unmount.
    #[error("writing unsynced data to {} before unmounting: {source}", path.display())]
    Sync {
        /// The backing directory.
        path: PathBuf,
        /// The write or fsync error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the unmount.
    #[error("unmounting {}: {source}", path.display())]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

/// A mounted [`PowerCutFs`]: its FUSE session runs on its own thread until
/// this is dropped (or [`unmount`](Mount::unmount)ed).
#[derive(Debug)]
pub struct Mount {
    shared: Arc<Shared>,
    /// `None` once unmounted (so that drop does not unmount twice).
    session: Option<BackgroundSession>,
    backing: PathBuf,
    mountpoint: PathBuf,
}

impl PowerCutFs {
    /// Mounts a power-cut filesystem over the directory `backing` (the
    /// "disk") at the directory `mountpoint`. Needs root (or CAP_SYS_ADMIN)
    /// and `/dev/fuse`.
    pub fn mount(backing: impl AsRef<Path>, mountpoint: impl AsRef<Path>) -> Result<Mount, Error> {
        let backing = backing.as_ref().to_path_buf();
        let mountpoint = mountpoint.as_ref().to_path_buf();
        let shared = Shared::new(&backing).map_err(|source| Error::Backing {
            path: backing.clone(),
            source,
        })?;
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(format!("powercut:{}", backing.display())),
            MountOption::Subtype("powercut".to_owned()),
            // The kernel checks permissions from the attributes we report,
            // so we need no `access` and match a real filesystem.
            MountOption::DefaultPermissions,
        ];
        // Other users too: Redis or a driver may run as their own user.
        config.acl = SessionACL::All;
        let session = Session::new(PassThrough::new(Arc::clone(&shared)), &mountpoint, &config)
            .and_then(Session::spawn)
            .map_err(|source| Error::Mount {
                path: mountpoint.clone(),
                source,
            })?;
        Ok(Mount {
            shared,
            session: Some(session),
            backing,
            mountpoint,
        })
    }
}

impl Mount {
    /// Cuts the power: every write and truncation not yet fsynced is
    /// discarded at once, every creation, rename and removal no directory
    /// fsync has committed is undone, and every open file handle becomes
    /// stale (its reads, writes, fsyncs and close fail with EIO). The mount
    /// stays usable: files opened from now on see only what was synced, as
    /// after a reboot. Kill the processes using the mount first (`kill -9`), then
    /// cut, as a real power cut stops both at the same instant.
    pub fn cut_power(&self) -> Cut {
        self.shared.cut_power()
    }

    /// Bytes written but not yet fsynced, which a cut would discard now.
    pub fn pending_bytes(&self) -> u64 {
        self.shared.pending_bytes()
    }

    /// The backing directory: the "disk".
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Where the filesystem is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and mounts again over the same backing directory, like a
    /// reboot after [`cut_power`](Mount::cut_power). Without a cut first,
    /// unsynced data is written to the backing directory on the way (see
    /// [`unmount`](Mount::unmount)).
    pub fn remount(self) -> Result<Mount, Error> {
        let backing = self.backing.clone();
        let mountpoint = self.mountpoint.clone();
        self.unmount()?;
        PowerCutFs::mount(backing, mountpoint)
    }

    /// A clean shutdown: writes every file's unsynced data to the backing
    /// directory and commits every namespace change (as `umount` writes back
    /// dirty pages and commits the journal), then unmounts, waits for the
    /// FUSE thread and removes the hidden graveyard from the backing
    /// directory. To lose unsynced data, cut the power
    /// first. While a process still has a file or directory open on the
    /// mount, the kernel refuses ([`Error::Unmount`], EBUSY) and the mount is
    /// detached lazily instead: it disappears from the namespace now and
    /// ends when its last file is closed. Dropping a `Mount` does the same.
    pub fn unmount(mut self) -> Result<(), Error> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<(), Error> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let synced = self.shared.sync_all().map_err(|source| Error::Sync {
            path: self.backing.clone(),
            source,
        });
        let unmounted = session.umount_and_join().map_err(|source| Error::Unmount {
            path: self.mountpoint.clone(),
            source,
        });
        if unmounted.is_ok() {
            self.shared.remove_graveyard();
        } else {
            // The FUSE thread is detached and goes on serving the processes
            // still using the mount; the kernel ends the session, and the
            // thread, when the last of them closes its files.
            let _ = rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH);
        }
        synced.and(unmounted)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Errors are the caller's to see through `unmount`; here the mount
        // point is freed either way.
        let _ = self.shut_down();
    }
}
