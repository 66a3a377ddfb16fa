//! The title area: the memory the kernel reads for `/proc/PID/cmdline`.
//!
//! # Why this module is `unsafe`
//!
//! `ps` shows `/proc/PID/cmdline`, and the kernel builds that from the bytes
//! at `[arg_start, arg_end)` of the process's memory, continuing into the
//! environment strings up to a NUL when the last argument byte is not NUL
//! (fs/proc/base.c, `get_mm_cmdline` and `get_mm_proctitle`). There is no
//! system call that sets it; `prctl(PR_SET_MM)` needs `CAP_SYS_RESOURCE`.
//! Writing those bytes is the only way, and they belong to no Rust
//! allocation, so safe Rust cannot reach them. Nor can safe Rust repoint
//! libc's `environ` entries, which must move before the environment strings
//! are overwritten. Both are done here and nowhere else in Drover.
//!
//! # Why it is sound
//!
//! - The span comes from the kernel (`/proc/self/stat`) and is checked to lie
//!   inside one private writable mapping (`/proc/self/maps`) before use.
//! - Every `environ` entry that points into the environment strings to be
//!   overwritten is replaced by a heap copy first, while the process has a
//!   single thread (checked), so no `getenv`/`setenv` runs meanwhile.
//!   `std::env` goes through `environ`, so it keeps working.
//! - At most one [`TitleArea`] ever exists, and writing takes `&mut self`,
//!   so writes never overlap.
//!
//! What is left is the caller's side of the crate's contract:
//! `std::env::args` keeps pointers to the original argument strings and
//! reads them lazily, so it must not run on another thread during a write.
//! Also, pointers into the environment strings that libc or other code
//! saved from `getenv` before `init` would see the title; glibc copies what
//! it keeps (locale, time zone, loader paths), as nginx and PostgreSQL rely on.
//! libc's `program_invocation_name` points into the first argument and so
//! shows the title too.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char};
use std::fs;
use std::io;
use std::ops::Range;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

use super::layout;

unsafe extern "C" {
    /// libc's environment (environ(7)): a NULL-terminated array of pointers
    /// to `NAME=value` strings, which `getenv` and `std::env` read.
    static mut environ: *mut *mut c_char;
}

/// Whether a [`TitleArea`] has been handed out; there is only one area.
static CLAIMED: AtomicBool = AtomicBool::new(false);

/// The bytes from `arg_start` that `/proc/PID/cmdline` can show (see
/// `layout::Startup::title_span`). Owning it is the right to write there.
#[derive(Debug)]
pub(super) struct TitleArea {
    /// Address of the first byte; an integer because it came from the
    /// kernel as text, and so the type stays `Send`.
    start: usize,
    /// Bytes in the area, at least 1.
    len: usize,
}

impl TitleArea {
    /// Finds and validates the area, moves the environment strings it covers
    /// to the heap, and hands out the area: once per process.
    pub(super) fn claim() -> io::Result<TitleArea> {
        let startup = layout::parse_stat(&fs::read_to_string("/proc/self/stat")?)?;
        if startup.num_threads != 1 {
            return Err(io::Error::other(format!(
                "the process title must be claimed before any other thread starts, but there are {} threads",
                startup.num_threads
            )));
        }
        let span = startup.title_span().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "/proc/self/stat shows no command-line memory",
            )
        })?;
        if !layout::in_private_writable_mapping(&fs::read_to_string("/proc/self/maps")?, &span) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the command line at {span:#x?} is not in one private writable mapping"),
            ));
        }
        if CLAIMED.swap(true, Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the process title is already claimed",
            ));
        }
        // Nothing fails from here on, so a failed claim changes nothing.
        if let Some(environment) = startup.reused_environment() {
            move_environment_out_of(&environment);
        }
        Ok(TitleArea {
            start: span.start,
            len: span.end - span.start,
        })
    }

    /// Bytes of title that fit before the final NUL.
    pub(super) fn capacity(&self) -> usize {
        self.len - 1
    }

    /// Writes `title` (cut to [`capacity`](Self::capacity)) and fills the
    /// rest of the area with NULs, which clears any longer previous title and
    /// keeps the area's last byte NUL, where the kernel stops reading.
    pub(super) fn write(&mut self, title: &[u8]) {
        let shown = title.len().min(self.capacity());
        let start = ptr::with_exposed_provenance_mut::<u8>(self.start);
        // SAFETY: `[start, start + len)` lies in one private writable mapping
        // (checked in `claim`) that the process keeps for its whole life (the
        // top of the main thread's stack). No Rust object lives there, libc's
        // environment no longer points there, and this `TitleArea` is the
        // only one (`CLAIMED`), borrowed mutably, so no other write races
        // this one. `shown <= len - 1`, so both writes stay inside the area;
        // `title` is a Rust borrow, so it is not inside the area.
        unsafe {
            ptr::copy_nonoverlapping(title.as_ptr(), start, shown);
            ptr::write_bytes(start.add(shown), 0, self.len - shown);
        }
    }
}

/// Repoints every `environ` entry whose string starts in `environment` at a
/// heap copy of that string. The copies are leaked on purpose: an
/// environment string lives as long as the process.
///
/// Must run while the process has a single thread (checked by the caller),
/// before anything writes to `environment`.
fn move_environment_out_of(environment: &Range<usize>) {
    // SAFETY: reads the pointer `environ` by value (no reference to the
    // `static mut`); with one thread, nothing changes it meanwhile.
    let mut entry = unsafe { environ };
    if entry.is_null() {
        return;
    }
    loop {
        // SAFETY: `entry` points into the NULL-terminated `environ` array,
        // at or before the terminating NULL (the loop stops there).
        let string = unsafe { *entry };
        if string.is_null() {
            return;
        }
        if environment.contains(&string.addr()) {
            // SAFETY: `string` is a NUL-terminated string that libc keeps in
            // `environ`, still intact: nothing has written the area yet.
            let copy = unsafe { CStr::from_ptr(string) }.to_owned();
            // SAFETY: `entry` is a valid slot of `environ`, which libc
            // allows the program to modify; with one thread, no `getenv` or
            // `setenv` runs meanwhile.
            unsafe { *entry = copy.into_raw() };
        }
        // SAFETY: `entry` is not the terminating NULL, so the next slot is
        // still inside the array.
        entry = unsafe { entry.add(1) };
    }
}
