//! A FUSE filesystem that keeps every file's unsynced writes in memory, and
//! every uncommitted creation, rename and removal undoable, and drops them
//! on a simulated power cut: the test that "acknowledged" means
//! "on disk" (issue 15), as Jepsen's LazyFS does for databases. A `kill -9`
//! keeps the kernel's page cache, so it cannot tell `appendfsync always`
//! from `everysec`; a cut of this filesystem can.
//!
//! ```no_run
//! use drover_powercut::PowerCutFs;
//!
//! # fn main() -> Result<(), drover_powercut::Error> {
//! let mount = PowerCutFs::mount("/tmp/disk", "/tmp/mnt")?;
//! // ... run Redis with --dir /tmp/mnt, acknowledge writes, kill -9 it ...
//! let cut = mount.cut_power(); // unsynced data and names gone, open files stale
//! let mount = mount.remount()?; // optional: the mount also works on as is
//! // ... restart Redis on /tmp/mnt: only fsynced data is there ...
//! # drop((cut, mount)); Ok(()) }
//! ```
//!
//! Layout:
//! - `mount` (re-exported here): [`PowerCutFs::mount`] starts the FUSE
//!   session on its own thread and returns a [`Mount`], whose
//!   [`cut_power`](Mount::cut_power) reaches into the same state.
//! - `fs`: the `fuser::Filesystem`. Every operation goes to the backing
//!   directory at once, except file contents, which go to a `Pending` per
//!   inode until fsync writes them through.
//! - `journal`: the namespace changes (create, mkdir, rename, unlink, rmdir)
//!   no directory fsync has committed yet, and how to undo them.
//! - `pending`: one file's unsynced writes and truncations over its backing
//!   file (pure).
//!
//! README.md says exactly what survives a cut and what is not modelled.

mod fs;
mod journal;
mod mount;
mod pending;

pub use fs::Cut;
pub use mount::{Error, Mount, PowerCutFs};
