//! The Linux implementation: the one claimed title area, shared by every
//! [`ProcessTitle`](crate::ProcessTitle) handle, and the rules for what part
//! of a title is shown.

mod layout;
mod memory;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::{Mutex, MutexGuard, PoisonError};

use memory::TitleArea;

/// The kernel keeps a thread name in 16 bytes, the last one a NUL.
const NAME_LEN: usize = 15;

/// Set once by the first successful [`init`]; `None` before. The mutex makes
/// `init` run once and serialises writers, so `set` works from any thread.
static STATE: Mutex<Option<Shown>> = Mutex::new(None);

/// Where the title is shown.
struct Shown {
    /// The memory `/proc/PID/cmdline` reads.
    area: TitleArea,
    /// `/proc/self/comm`, opened at `init` while `self` was the process (not
    /// a thread), so writes rename the process from whichever thread calls
    /// `set`. `prctl(PR_SET_NAME)` would rename only the calling thread,
    /// typically a runtime worker.
    name: File,
}

/// Claims the area (once) and returns its capacity.
pub(crate) fn init() -> io::Result<usize> {
    let mut state = lock();
    if let Some(shown) = state.as_ref() {
        return Ok(shown.area.capacity());
    }
    // Opened before the area is claimed: claiming moves the environment and
    // cannot be undone, so everything that can fail comes first.
    let name = OpenOptions::new().write(true).open("/proc/self/comm")?;
    let area = TitleArea::claim()?;
    let capacity = area.capacity();
    *state = Some(Shown { area, name });
    Ok(capacity)
}

/// Shows `title`; does nothing before a successful [`init`].
pub(crate) fn set(title: &str) {
    let mut state = lock();
    let Some(shown) = state.as_mut() else {
        return;
    };
    shown
        .area
        .write(visible_prefix(title, shown.area.capacity()).as_bytes());
    let name = visible_prefix(title, NAME_LEN);
    if !name.is_empty() {
        // Best effort, as documented on `ProcessTitle::set`: the name is a
        // convenience next to the command line, and a server must not stop
        // over it. The kernel ignores the file offset for `comm`.
        let _ = shown.name.write_all(name.as_bytes());
    }
}

/// The state is plain data, whole after any panic, so poisoning is ignored.
fn lock() -> MutexGuard<'static, Option<Shown>> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The part of `title` that is shown in `max` bytes: up to its first NUL,
/// then cut to `max` bytes at a character boundary.
fn visible_prefix(title: &str, max: usize) -> &str {
    let title = title.find('\0').map_or(title, |nul| &title[..nul]);
    if title.len() <= max {
        return title;
    }
    let mut end = max;
    while !title.is_char_boundary(end) {
        end -= 1;
    }
    &title[..end]
}

#[cfg(test)]
mod tests {
    use super::visible_prefix;

    #[test]
    fn a_title_that_fits_is_shown_whole() {
        assert_eq!(
            visible_prefix("driver v0.1.0 port: 5001", 24),
            "driver v0.1.0 port: 5001"
        );
        assert_eq!(visible_prefix("", 0), "");
    }

    #[test]
    fn a_long_title_is_cut_to_the_limit() {
        assert_eq!(visible_prefix("driver v0.1.0 port: 5001", 15), "driver v0.1.0 p");
        assert_eq!(visible_prefix("driver", 0), "");
    }

    #[test]
    fn the_cut_never_splits_a_character() {
        // "é" is two bytes, "€" three: a cut inside either backs off to its start.
        assert_eq!(visible_prefix("abcé", 4), "abc");
        assert_eq!(visible_prefix("abcé", 5), "abcé");
        assert_eq!(visible_prefix("€€", 5), "€");
        assert_eq!(visible_prefix("€", 2), "");
    }

    #[test]
    fn a_title_ends_at_its_first_nul() {
        assert_eq!(visible_prefix("driver\0hidden", 100), "driver");
        assert_eq!(visible_prefix("\0", 100), "");
    }
}
