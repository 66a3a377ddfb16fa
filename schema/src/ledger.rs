//! The durable command ledger: commands for a device that wait in Redis
//! until the device has answered them, whether it is online now or not.
//!
//! A device's ledger is one hash, [`Layout::ledger`](crate::Layout::ledger),
//! in the device's partition: the bridge's script that stores a command
//! result settles the ledger in the same call (on a cluster, keys of one
//! slot), so a command leaves the ledger exactly when its result is
//! durably stored. Every outcome is appended to the partition's outcomes
//! stream ([`Layout::command_outcomes`](crate::Layout::command_outcomes))
//! and published on the device's result channel
//! ([`crate::COMMAND_RESULTS`]).
//!
//! Operators and the main application enqueue with [`ENQUEUE_SCRIPT`]
//! and cancel with [`CANCEL_SCRIPT`]: their headers are the documented
//! interface (README, "Durable commands").

/// Enqueues one command: `EVAL` (or `EVALSHA`) with the keys and
/// arguments its header lists.
pub const ENQUEUE_SCRIPT: &str = include_str!("scripts/ledger_enqueue.lua");

/// Cancels a command that was not sent yet.
pub const CANCEL_SCRIPT: &str = include_str!("scripts/ledger_cancel.lua");

/// How long a command waits for its result unless told otherwise: 24 h.
pub const DEFAULT_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// `CMD_MAX_QUEUED`'s default: the most commands pending per device.
pub const DEFAULT_MAX_QUEUED: u32 = 100;

/// About how many entries each outcomes stream keeps.
pub const OUTCOMES_MAXLEN: u32 = 100_000;

/// What [`ENQUEUE_SCRIPT`] answers first.
pub mod enqueued {
    /// Enqueued now.
    pub const QUEUED: &str = "QUEUED";
    /// A command of that id is pending already: nothing changed.
    pub const DUPLICATE: &str = "DUPLICATE";
    /// The device has `CMD_MAX_QUEUED` commands pending: refused.
    pub const FULL: &str = "FULL";
}

/// What [`CANCEL_SCRIPT`] answers first.
pub mod cancelled {
    /// Cancelled now.
    pub const CANCELLED: &str = "CANCELLED";
    /// Sent already: it stays pending.
    pub const SENT: &str = "SENT";
    /// No such command is pending.
    pub const UNKNOWN: &str = "UNKNOWN";
}

/// The `status` of a durable command's outcomes, besides the device's
/// own (`OK`, `FAILED`, `UNSUPPORTED`, `BUSY`).
pub mod status {
    /// In the ledger.
    pub const QUEUED: &str = "QUEUED";
    /// Written to the device's session (with the attempt number).
    pub const SENT: &str = "SENT";
    /// Its ttl passed before a result; it is never sent again.
    pub const EXPIRED: &str = "EXPIRED";
    /// Cancelled before it was sent.
    pub const CANCELLED: &str = "CANCELLED";
    /// Not a command the device can take (e.g. too large for it).
    pub const REJECTED: &str = "REJECTED";
}

/// The state of a ledger entry ([`crate::ledger_fields::STATE`]).
pub mod state {
    /// Never sent.
    pub const QUEUED: &str = "QUEUED";
    /// Sent in the session [`crate::ledger_fields::SESSION`], no result yet.
    pub const SENT: &str = "SENT";
}
