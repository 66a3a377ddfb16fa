//! Shows a server's live state as its process title, the line `ps aux` prints:
//! `driver v0.1.0 port: 5001 controllers: 3 [CTRL-1 CTRL-2 CTRL-3] events: 1234`.
//!
//! `ps` reads `/proc/PID/cmdline`, which the kernel takes from the memory
//! where it placed the program's argument strings at exec. Changing the thread
//! name (`prctl(PR_SET_NAME)`) is not enough: that is `comm`, 15 bytes. So on
//! Linux this crate does what nginx, PostgreSQL and Chromium do: it reuses the
//! argument strings and the environment strings that follow them as one area
//! for the title, after moving the environment out of the way.
//!
//! Layout:
//! - [`ProcessTitle`] (here) is the public handle; elsewhere it is a no-op.
//! - `linux` keeps the one claimed area behind a mutex and decides what part
//!   of a title is shown (`cmdline` and `comm`).
//! - `linux::layout` parses `/proc/self/stat` and `/proc/self/maps` (pure).
//! - `linux::memory`, the only module with `unsafe`, validates the area,
//!   moves the environment strings to the heap and writes the bytes.
//!
//! # Contract
//!
//! Call [`ProcessTitle::init`] first thing in `main`: after reading the
//! command line (`std::env::args` keeps pointers into the original argument
//! strings and reads them lazily, so after `init` it returns pieces of the
//! title, or panics on a piece that is not UTF-8) and before starting any
//! thread (the tokio runtime, sentry, a logger with a worker thread).
//! `init` refuses to run once a second thread exists.
//!
//! ```no_run
//! use process_title::ProcessTitle;
//!
//! let config: Vec<String> = std::env::args().collect(); // read arguments first
//! let title = ProcessTitle::init()?; // then, still single-threaded, init
//! // ... start the runtime; once a second, from any thread:
//! title.set(&format!("driver v0.1.0 port: 5001 args: {}", config.len()));
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;

#[cfg(target_os = "linux")]
mod linux;

/// Handle to the process title; obtained from [`ProcessTitle::init`], cheap
/// to copy and to share between threads.
#[derive(Debug, Clone, Copy)]
pub struct ProcessTitle {
    /// Longest title, in bytes, that shows whole; fixed at `init`.
    capacity: usize,
}

impl ProcessTitle {
    /// Claims the memory of the original command line and environment for
    /// the title. See the crate's [contract](crate#contract): read the
    /// arguments first, and call this while the process has one thread.
    ///
    /// Nothing visible changes until the first [`set`](Self::set).
    ///
    /// Idempotent: once it has succeeded, later calls (from any thread)
    /// return a handle to the same area and do nothing else. A failed call
    /// leaves the process as it was and may be retried.
    ///
    /// # Errors
    ///
    /// On Linux, when `/proc` cannot be read, when the process already has
    /// more than one thread, or when the kernel's argument and environment
    /// area is not where it should be (not in one private writable mapping).
    /// Elsewhere this never fails and returns a handle of capacity 0.
    pub fn init() -> io::Result<ProcessTitle> {
        #[cfg(target_os = "linux")]
        let capacity = linux::init()?;
        #[cfg(not(target_os = "linux"))]
        let capacity = 0;
        Ok(ProcessTitle { capacity })
    }

    /// Shows `title` as the process's command line (`/proc/PID/cmdline`, the
    /// `COMMAND` column of `ps aux`) and its first 15 bytes as the process
    /// name (`/proc/PID/comm`, shown by `top` and `ps -o comm`).
    ///
    /// The title is cut at its first NUL byte (the kernel and `ps` end a
    /// string there), then to at most [`capacity`](Self::capacity) bytes
    /// (15 for the name) at a character boundary, so `ps` never shows half a
    /// character; the rest of the area is cleared. An empty title clears the command
    /// line (procps `ps` then shows `?`) and leaves the name as it was.
    ///
    /// Cheap (a short mutex hold, one copy of the area, one `write` to
    /// `/proc/self/comm`), so meant to be called about once a second from
    /// any thread. The name always goes to the process (its main thread),
    /// never to the calling thread. A failure to set the name is ignored.
    /// A no-op except on Linux.
    pub fn set(&self, title: &str) {
        #[cfg(target_os = "linux")]
        linux::set(title);
        #[cfg(not(target_os = "linux"))]
        let _ = title;
    }

    /// The longest title, in bytes, that [`set`](Self::set) shows whole,
    /// counted before the final NUL: the original arguments' length, or, when
    /// the environment strings follow them directly (as Linux lays them
    /// out), up to 4095 bytes, since the kernel shows at most a page of a
    /// title that runs past the arguments. 0 except on Linux.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}
