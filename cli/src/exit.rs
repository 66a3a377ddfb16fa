//! The exit codes, one per outcome a script may want to tell apart (the
//! top-level `--help` and the README list them).

/// How `drover` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done; with `--wait`, the device answered `OK`.
    Success = 0,
    /// Redis unreachable or refused, or data that cannot be read.
    Error = 1,
    /// Bad flags or arguments (clap's own code for them too).
    Usage = 2,
    /// `PUBLISH` reached no driver: the device is offline.
    Offline = 3,
    /// No result came within `--timeout`.
    Timeout = 4,
    /// The command never reached the device: `REJECTED` or `UNDELIVERED`.
    NotDelivered = 5,
    /// The device answered, but not `OK`.
    DeviceFailed = 6,
    /// The registry has no entry for the serial (`drover cancel`: no such
    /// command is pending).
    NotFound = 7,
    /// The device's ledger is full (`CMD_MAX_QUEUED`): nothing was queued;
    /// `drover cancel`: the command was sent already; `drover token`: the
    /// gateway refused.
    Refused = 8,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit.code())
    }
}

/// A mistake in the arguments that clap cannot see (a malformed serial, a
/// body file that cannot be read): reported like clap's, with [`Exit::Usage`].
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A [`UsageError`] as an `anyhow` error.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}
