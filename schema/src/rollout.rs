//! Rollouts: a file from the file store (`FILES_DIR`) sent to a set of
//! devices (CWP/1 §3 Files), durable in Redis so that it reaches devices
//! that connect later, on whichever driver they land.
//!
//! One rollout's keys share one hash tag, its id (`cwp:rollout:{ID}…`), so
//! every script below touches one slot on a Redis Cluster: the rollout's
//! record and counters, its targets' states, the set of active transfers
//! (the fleet-wide `max_active`), the devices waiting for a slot, and its
//! results stream. A device finds the rollouts it is a target of in its
//! own index, [`Layout::file_offers`](crate::Layout::file_offers), in its
//! partition (the slot of its registry entry: `OpenSession` counts it in
//! the same script). The index is a hint, the rollout is the truth: it is
//! written after the rollout's targets, and an entry whose rollout has
//! nothing (more) for the device is removed when it is found.
//!
//! | key | type | content |
//! |---|---|---|
//! | `cwp:rollout:{ID}` | hash | [`rollout_fields`]: the file, the policy, the state, counts by target state, bytes acknowledged |
//! | `cwp:rollout:{ID}:targets` | hash | field = serial, value = a JSON [`target_fields`] object |
//! | `cwp:rollout:{ID}:active` | sorted set | the serials with a transfer under way, scored by their lease's end (Unix ms) |
//! | `cwp:rollout:{ID}:waiting` | sorted set | online serials refused for `max_active` (or a pause), scored by when: woken when a slot frees |
//! | `cwp:rollout:{ID}:results` | stream | [`file_result_fields`]: every target's outcome |
//!
//! Operators and the main application start a rollout with
//! [`START_SCRIPT`] then [`TARGETS_SCRIPT`] (and add the index entries and
//! wake-ups), and control it with [`CONTROL_SCRIPT`]: the README
//! ("Rollouts") is the step-by-step interface. The vendor-bridge runs
//! [`CLAIM_SCRIPT`] and [`REPORT_SCRIPT`] for the drivers.

/// Creates a rollout's record.
pub const START_SCRIPT: &str = include_str!("scripts/rollout_start.lua");
/// Adds targets to a rollout.
pub const TARGETS_SCRIPT: &str = include_str!("scripts/rollout_targets.lua");
/// Pauses, resumes or cancels a rollout.
pub const CONTROL_SCRIPT: &str = include_str!("scripts/rollout_control.lua");
/// Claims a device's transfer (bridge, `TakeFileOffer`).
pub const CLAIM_SCRIPT: &str = include_str!("scripts/rollout_claim.lua");
/// Records a transfer's progress or outcome (bridge, `ReportFileTransfer`).
pub const REPORT_SCRIPT: &str = include_str!("scripts/rollout_report.lua");

/// About how many entries a rollout's results stream keeps.
pub const RESULTS_MAXLEN: u32 = 100_000;

/// How long an active transfer holds its slot without a progress report
/// before another device may take it (a driver killed mid-transfer).
pub const LEASE_MS: u64 = 60_000;

/// The default `max_active`: transfers at once, fleet-wide.
pub const DEFAULT_MAX_ACTIVE: u32 = 100;
/// The default retries after `DIGEST_MISMATCH`.
pub const DEFAULT_RETRIES: u32 = 3;

/// The most serials per [`TARGETS_SCRIPT`] call.
pub const TARGETS_PER_CALL: usize = 1000;

/// A rollout's keys, all under its id's hash tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutKeys {
    /// The record ([`rollout_fields`]).
    pub rollout: String,
    /// The targets' states.
    pub targets: String,
    /// The active transfers' leases.
    pub active: String,
    /// Online devices waiting for a slot.
    pub waiting: String,
    /// The results stream.
    pub results: String,
}

impl RolloutKeys {
    /// The keys of rollout `id`, which must be a [`RolloutId`].
    pub fn of(id: &RolloutId) -> Self {
        let rollout = ["cwp:rollout:{", id.as_str(), "}"].concat();
        Self {
            targets: [rollout.as_str(), ":targets"].concat(),
            active: [rollout.as_str(), ":active"].concat(),
            waiting: [rollout.as_str(), ":waiting"].concat(),
            results: [rollout.as_str(), ":results"].concat(),
            rollout,
        }
    }

    /// The five keys in the order every rollout script takes them.
    pub fn all(&self) -> [&str; 5] {
        [&self.rollout, &self.targets, &self.active, &self.waiting, &self.results]
    }
}

/// A rollout's id: a hyphenated lowercase UUID; its 16 bytes are the
/// `file_id` of the rollout's `FILE_OFFER`s.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RolloutId(String);

/// Not a rollout id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a rollout id is a hyphenated UUID, not {0:?}")]
pub struct InvalidRolloutId(String);

impl RolloutId {
    /// The id of `bytes` (a `file_id`).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        let hex = hex_lower(&bytes);
        Self(
            [
                &hex[0..8],
                "-",
                &hex[8..12],
                "-",
                &hex[12..16],
                "-",
                &hex[16..20],
                "-",
                &hex[20..32],
            ]
            .concat(),
        )
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its 16 bytes (the offers' `file_id`).
    pub fn to_bytes(&self) -> [u8; 16] {
        let digits: Vec<u8> = self.0.bytes().filter(|b| *b != b'-').collect();
        let mut bytes = [0; 16];
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            bytes[i] = (nibble(pair[0]) << 4) | nibble(pair[1]);
        }
        bytes
    }
}

impl std::str::FromStr for RolloutId {
    type Err = InvalidRolloutId;

    fn from_str(text: &str) -> Result<Self, InvalidRolloutId> {
        let lower = text.to_ascii_lowercase();
        let shape_ok = lower.len() == 36
            && lower.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        if shape_ok {
            Ok(Self(lower))
        } else {
            Err(InvalidRolloutId(text.chars().take(64).collect()))
        }
    }
}

impl std::fmt::Display for RolloutId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn nibble(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        _ => digit - b'a' + 10,
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)] as char, DIGITS[usize::from(b & 15)] as char])
        .collect()
}

/// The fields of a rollout's record (`cwp:rollout:{ID}`).
pub mod rollout_fields {
    /// The file's SHA-256, lowercase hex (its name in `FILES_DIR`).
    pub const FILE: &str = "file";
    /// Its size in bytes.
    pub const SIZE: &str = "size";
    /// The name offered to devices.
    pub const NAME: &str = "name";
    /// Transfers at once, fleet-wide, at most.
    pub const MAX_ACTIVE: &str = "max_active";
    /// Offers again after `DIGEST_MISMATCH`, at most.
    pub const RETRIES: &str = "retries";
    /// When the rollout expires, Unix ms: no transfer starts after it.
    pub const EXPIRES_MS: &str = "expires_ms";
    /// Bytes per second each driver sends of the rollout's chunks, its
    /// transfers together, at most; 0: no limit.
    pub const MAX_BYTES_PER_S: &str = "max_bytes_per_s";
    /// [`super::state`]: `running`, `paused` or `cancelled`.
    pub const STATE: &str = "state";
    /// When it was started, Unix ms.
    pub const CREATED_MS: &str = "created_ms";
    /// How many targets it has.
    pub const TARGETS: &str = "targets";
    /// Bytes the devices acknowledged, all transfers together.
    pub const BYTES_ACKED: &str = "bytes_acked";

    /// Every field but the counts by target state (one per
    /// [`super::target_state::ALL`], named as the state).
    pub const ALL: [&str; 11] = [
        FILE,
        SIZE,
        NAME,
        MAX_ACTIVE,
        RETRIES,
        EXPIRES_MS,
        MAX_BYTES_PER_S,
        STATE,
        CREATED_MS,
        TARGETS,
        BYTES_ACKED,
    ];
}

/// A rollout's state ([`rollout_fields::STATE`]).
pub mod state {
    /// Transfers start and go on.
    pub const RUNNING: &str = "running";
    /// No transfer starts; active ones stop between chunks (their devices
    /// keep what they have, and resume on `resume`).
    pub const PAUSED: &str = "paused";
    /// For good: no device gets anything more.
    pub const CANCELLED: &str = "cancelled";

    /// Every state.
    pub const ALL: [&str; 3] = [RUNNING, PAUSED, CANCELLED];
}

/// A target's state (`target_fields::STATE`), and the name of the
/// rollout's count of targets in it.
pub mod target_state {
    /// Not started, or stopped (a cut, a pause) with `offset` held.
    pub const PENDING: &str = "pending";
    /// A transfer is under way (in the session `session`).
    pub const ACTIVE: &str = "active";
    /// The device has the file and its digest matched.
    pub const DONE: &str = "done";
    /// The device declined it (window 0).
    pub const DECLINED: &str = "declined";
    /// Given up, with `why`.
    pub const FAILED: &str = "failed";
    /// The rollout was cancelled before the target was done.
    pub const CANCELLED: &str = "cancelled";

    /// Every state.
    pub const ALL: [&str; 6] = [PENDING, ACTIVE, DONE, DECLINED, FAILED, CANCELLED];
}

/// The fields of a target's JSON state in `cwp:rollout:{ID}:targets`.
pub mod target_fields {
    /// [`super::target_state`].
    pub const STATE: &str = "state";
    /// Bytes the device acknowledged (updated at least every few MiB or
    /// seconds of a transfer).
    pub const OFFSET: &str = "offset";
    /// The session of an active transfer, lowercase hex.
    pub const SESSION: &str = "session";
    /// How many `DIGEST_MISMATCH`es so far.
    pub const MISMATCHES: &str = "mismatches";
    /// Why it failed.
    pub const WHY: &str = "why";
    /// When it last changed, Unix ms.
    pub const UPDATED_MS: &str = "updated_ms";

    /// Every field.
    pub const ALL: [&str; 6] = [STATE, OFFSET, SESSION, MISMATCHES, WHY, UPDATED_MS];
}

/// The fields of a `cwp:rollout:{ID}:results` entry, in written order,
/// and of the JSON notice published on `cwp:file-result:{serial}`.
pub mod file_result_fields {
    /// The device.
    pub const SERIAL: &str = "serial";
    /// The rollout.
    pub const ROLLOUT: &str = "rollout";
    /// The file's SHA-256.
    pub const FILE: &str = "file";
    /// The target's new state ([`super::target_state`]), or [`RETRYING`].
    pub const STATE: &str = "state";
    /// Bytes the device held.
    pub const OFFSET: &str = "offset";
    /// Why (failed, declined, retrying).
    pub const WHY: &str = "why";
    /// When, Unix ms.
    pub const TIME_MS: &str = "time_ms";

    /// [`STATE`] of a `DIGEST_MISMATCH` that is offered again.
    pub const RETRYING: &str = "retrying";

    /// Every field, in written order.
    pub const ALL: [&str; 7] = [SERIAL, ROLLOUT, FILE, STATE, OFFSET, WHY, TIME_MS];
}

/// What a driver reports of a transfer ([`REPORT_SCRIPT`]'s `ARGV[3]`).
pub mod report {
    /// The device acknowledged `offset` bytes; the slot's lease goes on.
    pub const PROGRESS: &str = "progress";
    /// The session ended mid-transfer: the target waits, `offset` held.
    pub const RELEASED: &str = "released";
    /// The device has the file, digest matched.
    pub const DONE: &str = "done";
    /// Window 0.
    pub const DECLINED: &str = "declined";
    /// `FILE_ACK` status `ABORTED`.
    pub const ABORTED: &str = "aborted";
    /// `FILE_ACK` status `DIGEST_MISMATCH`.
    pub const DIGEST_MISMATCH: &str = "digest_mismatch";

    /// Every report.
    pub const ALL: [&str; 6] = [PROGRESS, RELEASED, DONE, DECLINED, ABORTED, DIGEST_MISMATCH];
}

/// What [`CLAIM_SCRIPT`] and [`REPORT_SCRIPT`] answer first, and
/// [`CONTROL_SCRIPT`]'s actions and answers.
pub mod answer {
    /// Claim: offer the file (the target is active in this session).
    pub const OFFER: &str = "OFFER";
    /// Claim: the device must wait (`max_active`, paused); it is woken.
    pub const WAIT: &str = "WAIT";
    /// Claim: nothing for this device (the index entry goes).
    pub const NONE: &str = "NONE";
    /// Report: go on.
    pub const CONTINUE: &str = "CONTINUE";
    /// Report: stop sending between chunks (paused, cancelled, taken over).
    pub const STOP: &str = "STOP";
    /// Report: offer the file again from 0 (a retry after a mismatch).
    pub const REOFFER: &str = "REOFFER";
    /// Report: the transfer is over and its slot is free.
    pub const FREED: &str = "FREED";
    /// Control: no such rollout.
    pub const UNKNOWN: &str = "UNKNOWN";
    /// Control: done (the state changed or already was).
    pub const OK: &str = "OK";
    /// Control: the rollout is cancelled; nothing can change it.
    pub const CANCELLED: &str = "CANCELLED";
    /// Start: a rollout of that id exists.
    pub const EXISTS: &str = "EXISTS";
    /// Start: created.
    pub const CREATED: &str = "CREATED";
}

/// [`CONTROL_SCRIPT`]'s actions.
pub mod action {
    /// Pause.
    pub const PAUSE: &str = "pause";
    /// Resume.
    pub const RESUME: &str = "resume";
    /// Cancel.
    pub const CANCEL: &str = "cancel";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollout_id_is_a_uuid_and_its_bytes_the_file_id() {
        let id: RolloutId = "6F1C2B1E-0000-4000-8000-0000000000AB".parse().unwrap();
        assert_eq!(id.as_str(), "6f1c2b1e-0000-4000-8000-0000000000ab");
        assert_eq!(RolloutId::from_bytes(id.to_bytes()), id);
        assert_eq!(id.to_bytes()[0], 0x6f);
        assert_eq!(id.to_bytes()[15], 0xab);
        for bad in [
            "",
            "6f1c2b1e",
            "6f1c2b1e-0000-4000-8000-0000000000ag",
            "{x}",
            "6f1c2b1e00000-4000-8000-0000000000ab",
        ] {
            assert!(bad.parse::<RolloutId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rollouts_keys_share_its_slot() {
        let id: RolloutId = "6f1c2b1e-0000-4000-8000-0000000000ab".parse().unwrap();
        let keys = RolloutKeys::of(&id);
        assert_eq!(keys.rollout, "cwp:rollout:{6f1c2b1e-0000-4000-8000-0000000000ab}");
        assert_eq!(
            keys.results,
            "cwp:rollout:{6f1c2b1e-0000-4000-8000-0000000000ab}:results"
        );
        let slot = crate::layout::slot(keys.rollout.as_bytes());
        for key in keys.all() {
            assert_eq!(crate::layout::slot(key.as_bytes()), slot, "{key}");
        }
    }
}
