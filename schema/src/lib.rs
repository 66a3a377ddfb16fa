//! Drover's Redis contract, in code: the one place that names every Redis
//! key and pub/sub channel, says how a name is built from a device's serial
//! or a driver's id, and names the fields of every stream entry, hash and
//! JSON message that crosses Redis. Code elsewhere never spells a name or
//! joins a prefix to an id itself; it asks this crate.
//!
//! The names of the event path depend on the deployment's [`Layout`]: one
//! Redis keeps the names below; a Redis Cluster (or more than one event
//! partition) puts each partition's keys under a hash tag (the [`layout`]
//! module's table). The table below is the single layout.
//!
//! | key | here | type | written by | content |
//! |---|---|---|---|---|
//! | `cwp:events` | [`Layout::events`], [`event_fields`] | stream | bridge | One entry per stored event, exactly once per (serial, event id). |
//! | `cwp:hwm` | [`Layout::high_water_marks`] | hash | bridge | The exactly-once high-water mark: field = serial, value = the highest event id stored for it. |
//! | `cwp:device:{serial}` | [`Layout::device`], [`device_fields`] | hash | bridge | The device registry: whether the device is online, where and since when, and its last event id. |
//! | `cwp:cmd:{serial}` | [`COMMANDS`], [`command_fields`] | pub/sub channel | operators | Commands for a device, as JSON; its driver subscribes while the device is connected. |
//! | `cwp:cmd-result:{serial}` | [`COMMAND_RESULTS`], [`result_fields`] | pub/sub channel | bridge | A device's command result as JSON, or the notice of a command that never reached it. |
//! | `cwp:ledger:{serial}` | [`Layout::ledger`], [`ledger_fields`], [`ledger`] | hash | operators, bridge | A device's durable commands not yet answered, expired or cancelled, in order; it expires an hour after its last command's ttl (the bridge's sweep records the `EXPIRED` outcomes first). |
//! | `cwp:cmd-outcomes` | [`Layout::command_outcomes`], [`outcome_fields`] | stream | operators, bridge | Every outcome of every durable command, as published on `cwp:cmd-result:{serial}`. |
//! | `cwp:ledger-due` | [`Layout::ledger_due`] | sorted set | operators, bridge | Which ledgers have a command to expire, and from when: member = serial, score = Unix ms. |
//! | `cwp:cmd-rejected` | [`REJECTED_COMMANDS`], [`rejection_fields`] | stream | bridge | Every command that never reached its device, and why. |
//! | `cwp:driver:{driver_id}` | [`DRIVER_CONTROL`], [`control_fields`] | pub/sub channel | bridge | Control messages for one driver process (a session superseded elsewhere). |
//! | `cwp:driver-devices:{driver_id}` | [`Layout::driver_devices`] | set | bridge | The serials whose current session lives on that driver. |
//! | `cwp:driver-instance:{driver_id}` | [`Layout::driver_instance`] | string | bridge | The driver process instance currently using that id. |
//! | `cwp:uploads` | [`UPLOADS`], [`upload_fields`] | stream | bridge | One `upload_completed` record per finished upload. |
//! | `cwp:upload-recorded:{serial}:{upload_id}` | [`Layout::upload_recorded`] | string | bridge | Marks an upload as recorded, so that a retried record is not appended twice. |
//! | `cwp:nonce:{serial}:{nonce}` | [`Layout::http_nonce`], [`HTTP_NONCE_TTL_MS`] | string | HTTP gateways | A signed HTTP request's nonce, set once (`SET NX PX`) and expiring after 10 minutes: a replayed request is refused fleet-wide. |
//! | `cwp:layout` | [`LAYOUT`], [`layout_fields`] | hash | bridge | The layout the deployment's Redis was set up with: the number of event partitions and the event streams' names. |
//! | `cwp:rollout:{ID}` | [`rollout::RolloutKeys`], [`rollout::rollout_fields`] | hash | operators, bridge | A rollout: the file, its policy, its state, counts of targets by state, bytes acknowledged. |
//! | `cwp:rollout:{ID}:targets` | [`rollout::RolloutKeys`], [`rollout::target_fields`] | hash | operators, bridge | Each target's state, as JSON, by serial. |
//! | `cwp:rollout:{ID}:active` | [`rollout::RolloutKeys`] | sorted set | bridge | The serials with a transfer under way, scored by the end of their lease. |
//! | `cwp:rollout:{ID}:waiting` | [`rollout::RolloutKeys`] | sorted set | bridge | Online serials waiting for a transfer slot (or for a paused rollout). |
//! | `cwp:rollout:{ID}:results` | [`rollout::RolloutKeys`], [`rollout::file_result_fields`] | stream | operators, bridge | Every target's outcome. |
//! | `cwp:file-offers:{serial}` | [`Layout::file_offers`] | sorted set | operators, bridge | The rollouts a device is a target of (a hint; the rollout is the truth). |
//! | `cwp:file-result:{serial}` | [`FILE_RESULTS`], [`rollout::file_result_fields`] | pub/sub channel | operators, bridge | A device's transfer outcomes, as JSON. |
//!
//! docs/ARCHITECTURE.md ("Redis keys") is the same table with the fields
//! spelled out, and docs/redis-acl.conf grants each component its part of
//! it; the tests below hold all three to these names.
//!
//! # Building names
//!
//! A fixed key is a constant ([`UPLOADS`]). A key of the event path is
//! built by the deployment's [`Layout`] (`layout.device(&serial)`). A
//! channel per device or per driver is a *family* ([`DeviceFamily`],
//! [`DriverFamily`]): `COMMANDS.name(&serial)` builds one name,
//! `COMMANDS.serial_of(channel)` reads the serial back out of one,
//! `COMMAND_RESULTS.pattern()` matches them all. Every name reaches the
//! vendor-bridge's Lua scripts fully built, as one of its `KEYS`: a script
//! never builds a name, so it never touches a key its caller did not name
//! (which Redis Cluster requires: all of a script's keys in one slot).

pub mod layout;
pub mod ledger;
pub mod rollout;

use cwp::Serial;

pub use crate::layout::{LAYOUT, Layout, LayoutError, Partition, layout_fields};

/// Each device's command channel: operators `PUBLISH` JSON commands
/// ([`command_fields`]); the device's driver subscribes while it is online,
/// so `PUBLISH` answers 1 then and 0 when it is offline. On a Redis
/// Cluster it is a sharded channel (`SPUBLISH`, `SSUBSCRIBE`).
pub const COMMANDS: DeviceFamily = DeviceFamily::new("cwp:cmd:");

/// Each device's result channel: the bridge publishes the device's command
/// results and the notices of commands that never reached it, as JSON
/// ([`result_fields`]). On a Redis Cluster it is a sharded channel.
pub const COMMAND_RESULTS: DeviceFamily = DeviceFamily::new("cwp:cmd-result:");

/// Each device's file result channel: the outcomes of its transfers, as
/// JSON ([`rollout::file_result_fields`]), as appended to the rollout's
/// results stream. On a Redis Cluster it is a sharded channel.
pub const FILE_RESULTS: DeviceFamily = DeviceFamily::new("cwp:file-result:");

/// The stream of every command that never reached its device, with
/// [`rejection_fields`]. Capped by the bridge to about 100,000 entries.
pub const REJECTED_COMMANDS: &str = "cwp:cmd-rejected";

/// Each driver process's control channel: the bridge publishes JSON
/// control messages ([`control_fields`]), the driver subscribes. On a
/// Redis Cluster it is a sharded channel.
pub const DRIVER_CONTROL: DriverFamily = DriverFamily::new("cwp:driver:");

/// How long an HTTP gateway remembers a signed request's nonce
/// ([`Layout::http_nonce`]), Unix ms: 10 minutes, the whole span of
/// timestamps a gateway accepts (±300 s around its clock), so a replay is
/// refused until its timestamp is refused anyway, even by a gateway whose
/// clock is up to 5 minutes behind.
pub const HTTP_NONCE_TTL_MS: u64 = 600_000;

/// The stream of finished uploads, one record of [`upload_fields`] each.
pub const UPLOADS: &str = "cwp:uploads";

/// A family of Redis names, one per device: the name is built from the
/// device's [`Serial`] and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceFamily {
    prefix: &'static str,
}

impl DeviceFamily {
    pub(crate) const fn new(prefix: &'static str) -> Self {
        Self { prefix }
    }

    /// The name for the device `serial`.
    pub fn name(&self, serial: &Serial) -> String {
        [self.prefix, serial.as_str()].concat()
    }

    /// The serial `name` was built from, if it is a name of this family
    /// (e.g. the channel of a pub/sub message); `None` for any other name.
    pub fn serial_of(&self, name: &str) -> Option<Serial> {
        name.strip_prefix(self.prefix)?.parse().ok()
    }

    /// The glob that matches every name of the family (`PSUBSCRIBE`,
    /// `SCAN MATCH`, ACL patterns). Serials contain no glob characters, so
    /// it matches nothing else.
    pub fn pattern(&self) -> String {
        [self.prefix, "*"].concat()
    }
}

/// A family of Redis names, one per driver: the name is built from the
/// driver's id (`DRIVER_ID`; the bridge admits 1-128 visible ASCII
/// characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverFamily {
    prefix: &'static str,
}

impl DriverFamily {
    pub(crate) const fn new(prefix: &'static str) -> Self {
        Self { prefix }
    }

    /// The name for the driver `driver_id`.
    pub fn name(&self, driver_id: &str) -> String {
        [self.prefix, driver_id].concat()
    }

    /// The driver id `name` was built from, if it is a non-empty name of
    /// this family; `None` for any other name.
    pub fn driver_of<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(self.prefix).filter(|id| !id.is_empty())
    }

    /// The glob that matches every name of the family.
    pub fn pattern(&self) -> String {
        [self.prefix, "*"].concat()
    }
}

/// The fields of an event stream's entry ([`Layout::events`]), in the
/// order the bridge writes them.
pub mod event_fields {
    /// The device's serial.
    pub const SERIAL: &str = "serial";
    /// The event's id, a u64 in decimal; ids of a device only increase.
    pub const EVENT_ID: &str = "event_id";
    /// The device's timestamp of the event, Unix ms.
    pub const TIME_MS: &str = "time_ms";
    /// The event's kind, 0-65535; 65535 is a command result.
    pub const KIND: &str = "kind";
    /// The event's body, raw bytes.
    pub const BODY: &str = "body";
    /// The driver that received it.
    pub const DRIVER: &str = "driver";
    /// When the driver received it, Unix ms.
    pub const RECEIVED_MS: &str = "received_ms";

    /// Every field, in written order.
    pub const ALL: [&str; 7] = [SERIAL, EVENT_ID, TIME_MS, KIND, BODY, DRIVER, RECEIVED_MS];
}

/// The fields of a device's registry entry ([`Layout::device`]).
pub mod device_fields {
    /// `1` while a session of the device is live, `0` after it ended.
    pub const ONLINE: &str = "online";
    /// The driver holding the current (or last) session.
    pub const DRIVER: &str = "driver";
    /// That driver's process instance.
    pub const INSTANCE: &str = "instance";
    /// The device's address, as the driver saw it (behind HAProxy: from the
    /// PROXY header).
    pub const PEER: &str = "peer";
    /// The firmware version from the device's `HELLO`.
    pub const FIRMWARE: &str = "firmware";
    /// The session id, lowercase hex.
    pub const SESSION: &str = "session";
    /// When the session was authenticated, Unix ms.
    pub const CONNECTED_MS: &str = "connected_ms";
    /// When the device was last heard from, Unix ms.
    pub const LAST_SEEN_MS: &str = "last_seen_ms";
    /// The highest stored event id: copied from the high-water mark when a
    /// session opens and closes, and at most a second behind it while
    /// events flow.
    pub const LAST_EVENT_ID: &str = "last_event_id";

    /// Every field.
    pub const ALL: [&str; 9] = [
        ONLINE,
        DRIVER,
        INSTANCE,
        PEER,
        FIRMWARE,
        SESSION,
        CONNECTED_MS,
        LAST_SEEN_MS,
        LAST_EVENT_ID,
    ];
}

/// The fields of an operator's command, the JSON object published on
/// [`COMMANDS`].
pub mod command_fields {
    /// The command's id, a UUID; the driver generates one when absent.
    pub const ID: &str = "id";
    /// The command's name, 1-255 bytes; required.
    pub const NAME: &str = "name";
    /// The body as UTF-8 text...
    pub const BODY: &str = "body";
    /// ...or as base64 bytes (not both).
    pub const BODY_B64: &str = "body_b64";
    /// Not a command: `{"ledger":true}` tells the device's driver that its
    /// durable ledger has something to send ([`crate::ledger`]).
    pub const LEDGER: &str = "ledger";
    /// Not a command: `{"files":true}` tells the device's driver that a
    /// rollout has (or had) a transfer for it ([`crate::rollout`]).
    pub const FILES: &str = "files";

    /// Every field.
    pub const ALL: [&str; 6] = [ID, NAME, BODY, BODY_B64, LEDGER, FILES];
}

/// The fields of a notice on [`COMMAND_RESULTS`]:
/// a device's command result, or a command that never reached the device.
pub mod result_fields {
    /// The command's id (`null` when unknown).
    pub const ID: &str = "id";
    /// The device's serial.
    pub const SERIAL: &str = "serial";
    /// `OK`, `FAILED`, `UNSUPPORTED`, `BUSY` (or the status byte in decimal)
    /// as the device reported it; `REJECTED` or `UNDELIVERED` when the
    /// command never reached it; `INVALID` when the device's result could
    /// not be read. A durable command also has `QUEUED`, `SENT`, `EXPIRED`
    /// and `CANCELLED` ([`crate::ledger::status`]).
    pub const STATUS: &str = "status";
    /// The device's output as text, or why the command was rejected.
    pub const DATA: &str = "data";
    /// The device's output as base64, when it is not UTF-8.
    pub const DATA_B64: &str = "data_b64";
    /// Why a result could not be read (with status `INVALID`).
    pub const ERROR: &str = "error";
    /// When it happened, Unix ms: for a device's result, when its driver
    /// received it.
    pub const TIME_MS: &str = "time_ms";
    /// A durable command's delivery attempt, from 1 (`SENT`; `EXPIRED`:
    /// how many there were, 0 if it never went out).
    pub const ATTEMPT: &str = "attempt";
    /// When a `QUEUED` command expires, Unix ms.
    pub const EXPIRES_MS: &str = "expires_ms";

    /// Every field.
    pub const ALL: [&str; 9] = [ID, SERIAL, STATUS, DATA, DATA_B64, ERROR, TIME_MS, ATTEMPT, EXPIRES_MS];
}

/// The fields of a pending command's entry in a ledger ([`Layout::ledger`]),
/// a JSON object in the hash field named by the command's id.
pub mod ledger_fields {
    /// The command's name.
    pub const NAME: &str = "name";
    /// Its body, base64.
    pub const BODY_B64: &str = "body_b64";
    /// Its place in the device's order; also the hash field holding the
    /// last one given out.
    pub const SEQ: &str = "seq";
    /// When it was enqueued, Unix ms.
    pub const ENQUEUED_MS: &str = "enqueued_ms";
    /// When it expires, Unix ms.
    pub const EXPIRES_MS: &str = "expires_ms";
    /// `QUEUED` (never sent) or `SENT`.
    pub const STATE: &str = "state";
    /// How many times it was sent.
    pub const ATTEMPTS: &str = "attempts";
    /// The session it was last sent in, lowercase hex.
    pub const SESSION: &str = "session";

    /// Every field.
    pub const ALL: [&str; 8] = [NAME, BODY_B64, SEQ, ENQUEUED_MS, EXPIRES_MS, STATE, ATTEMPTS, SESSION];
}

/// The fields of a [`Layout::command_outcomes`] entry, in the order they
/// are written.
pub mod outcome_fields {
    /// The device.
    pub const SERIAL: &str = "serial";
    /// The command's id.
    pub const ID: &str = "id";
    /// The outcome ([`crate::ledger::status`]).
    pub const STATUS: &str = "status";
    /// When, Unix ms.
    pub const TIME_MS: &str = "time_ms";
    /// The JSON published on `cwp:cmd-result:{serial}`.
    pub const NOTICE: &str = "notice";

    /// Every field, in written order.
    pub const ALL: [&str; 5] = [SERIAL, ID, STATUS, TIME_MS, NOTICE];
}

/// The fields of a [`REJECTED_COMMANDS`] entry, in
/// the order the bridge writes them.
pub mod rejection_fields {
    /// The device the command was for.
    pub const SERIAL: &str = "serial";
    /// The command's id, empty when unreadable.
    pub const COMMAND_ID: &str = "command_id";
    /// `REJECTED` (not a valid command) or `UNDELIVERED` (the session ended
    /// before it could be sent).
    pub const OUTCOME: &str = "outcome";
    /// Why, for humans.
    pub const REASON: &str = "reason";
    /// The message as published, truncated to 4 KiB.
    pub const MESSAGE: &str = "message";
    /// The driver that rejected it.
    pub const DRIVER: &str = "driver";
    /// When, Unix ms.
    pub const REJECTED_MS: &str = "rejected_ms";

    /// Every field, in written order.
    pub const ALL: [&str; 7] = [SERIAL, COMMAND_ID, OUTCOME, REASON, MESSAGE, DRIVER, REJECTED_MS];
}

/// The fields of a control message on
/// [`DRIVER_CONTROL`], a JSON object.
pub mod control_fields {
    /// What the message asks; [`SUPERSEDE`] is the only one.
    pub const TYPE: &str = "type";
    /// The device concerned.
    pub const SERIAL: &str = "serial";
    /// The session concerned, lowercase hex.
    pub const SESSION: &str = "session";

    /// [`TYPE`] of "close this session with `BYE SUPERSEDED`: a newer
    /// session of its device was installed".
    pub const SUPERSEDE: &str = "supersede";

    /// Every field.
    pub const ALL: [&str; 3] = [TYPE, SERIAL, SESSION];
}

/// The fields of an [`UPLOADS`] record, in the order the
/// bridge writes them.
pub mod upload_fields {
    /// The record's type, always [`UPLOAD_COMPLETED`].
    pub const TYPE: &str = "type";
    /// The device that uploaded.
    pub const SERIAL: &str = "serial";
    /// The upload's id, a hyphenated UUID.
    pub const UPLOAD_ID: &str = "upload_id";
    /// The name the device gave it.
    pub const NAME: &str = "name";
    /// Its size in bytes, decimal.
    pub const SIZE: &str = "size";
    /// Its SHA-256, lowercase hex.
    pub const SHA256: &str = "sha256";
    /// Where it lies, relative to `UPLOAD_DIR`.
    pub const PATH: &str = "path";
    /// The driver that received it.
    pub const DRIVER: &str = "driver";
    /// When it was recorded, Unix ms.
    pub const COMPLETED_MS: &str = "completed_ms";
    /// How it arrived: [`TRANSPORT_CWP`] or [`TRANSPORT_HTTP`].
    pub const TRANSPORT: &str = "transport";

    /// [`TRANSPORT`] of an upload a driver received over CWP/1.
    pub const TRANSPORT_CWP: &str = "cwp";
    /// [`TRANSPORT`] of an upload the HTTP gateway received over tus.
    pub const TRANSPORT_HTTP: &str = "http";

    /// [`TYPE`] of a finished upload's record.
    pub const UPLOAD_COMPLETED: &str = "upload_completed";

    /// Every field, in written order.
    pub const ALL: [&str; 10] = [
        TYPE,
        SERIAL,
        UPLOAD_ID,
        NAME,
        SIZE,
        SHA256,
        PATH,
        DRIVER,
        COMPLETED_MS,
        TRANSPORT,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(text: &str) -> Serial {
        text.parse().unwrap()
    }

    /// Every key and channel, as docs/ARCHITECTURE.md writes it (the
    /// single layout): `{serial}`, `{driver_id}` and `{upload_id}` stand
    /// for the ids.
    fn documented_names() -> Vec<String> {
        let per_device = |family: DeviceFamily| format!("{}{{serial}}", family.prefix);
        let per_driver = |family: DriverFamily| format!("{}{{driver_id}}", family.prefix);
        vec![
            "cwp:events".to_owned(),
            "cwp:hwm".to_owned(),
            "cwp:device:{serial}".to_owned(),
            per_device(COMMANDS),
            per_device(COMMAND_RESULTS),
            "cwp:ledger:{serial}".to_owned(),
            "cwp:cmd-outcomes".to_owned(),
            "cwp:ledger-due".to_owned(),
            REJECTED_COMMANDS.to_owned(),
            per_driver(DRIVER_CONTROL),
            "cwp:driver-devices:{driver_id}".to_owned(),
            "cwp:driver-instance:{driver_id}".to_owned(),
            UPLOADS.to_owned(),
            "cwp:upload-recorded:{serial}:{upload_id}".to_owned(),
            "cwp:nonce:{serial}:{nonce}".to_owned(),
            LAYOUT.to_owned(),
            "cwp:rollout:{ID}".to_owned(),
            "cwp:rollout:{ID}:targets".to_owned(),
            "cwp:rollout:{ID}:active".to_owned(),
            "cwp:rollout:{ID}:waiting".to_owned(),
            "cwp:rollout:{ID}:results".to_owned(),
            "cwp:file-offers:{serial}".to_owned(),
            per_device(FILE_RESULTS),
        ]
    }

    /// The first column of the Markdown table that starts with `| key |`
    /// in `text`, each line first stripped of `line_prefix`.
    fn key_column(text: &str, line_prefix: &str) -> Vec<String> {
        text.lines()
            .filter_map(|line| line.strip_prefix(line_prefix))
            .skip_while(|line| !line.starts_with("| key |"))
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .map(|line| {
                line.split('|')
                    .nth(1)
                    .unwrap_or_default()
                    .trim()
                    .trim_matches('`')
                    .to_owned()
            })
            .collect()
    }

    fn read(path: &str) -> String {
        let path = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"))
    }

    /// The row of docs/ARCHITECTURE.md's "Redis keys" table for `key`.
    fn architecture_row(key: &str) -> String {
        read("../docs/ARCHITECTURE.md")
            .lines()
            .find(|line| line.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("docs/ARCHITECTURE.md has no row for {key}"))
            .to_owned()
    }

    /// The Redis contract, name by name: a rename here is a change of the
    /// contract every deployed consumer depends on.
    #[test]
    fn every_name_is_the_documented_one() {
        let device = serial("CTRL-0042");
        let single = Layout::SINGLE;
        let only = single.partition_of(&device);
        assert_eq!(single.events(only), "cwp:events");
        assert_eq!(single.high_water_marks(only), "cwp:hwm");
        assert_eq!(single.device(&device), "cwp:device:CTRL-0042");
        assert_eq!(COMMANDS.name(&device), "cwp:cmd:CTRL-0042");
        assert_eq!(COMMAND_RESULTS.name(&device), "cwp:cmd-result:CTRL-0042");
        assert_eq!(REJECTED_COMMANDS, "cwp:cmd-rejected");
        assert_eq!(DRIVER_CONTROL.name("driver-1"), "cwp:driver:driver-1");
        assert_eq!(single.driver_devices("driver-1"), "cwp:driver-devices:driver-1");
        assert_eq!(single.driver_instance("driver-1"), "cwp:driver-instance:driver-1");
        assert_eq!(UPLOADS, "cwp:uploads");
        assert_eq!(single.ledger(&device), "cwp:ledger:CTRL-0042");
        assert_eq!(single.command_outcomes(only), "cwp:cmd-outcomes");
        assert_eq!(single.ledger_due(only), "cwp:ledger-due");
        assert_eq!(
            single.upload_recorded(&device, "6f1c2b1e-0000-4000-8000-000000000001"),
            "cwp:upload-recorded:CTRL-0042:6f1c2b1e-0000-4000-8000-000000000001"
        );
        assert_eq!(LAYOUT, "cwp:layout");
        assert_eq!(single.file_offers(&device), "cwp:file-offers:CTRL-0042");
        assert_eq!(FILE_RESULTS.name(&device), "cwp:file-result:CTRL-0042");

        let partitioned = Layout::partitioned(3).unwrap();
        let p = partitioned.partition_of(&device);
        let tag = p.tag();
        assert_eq!(partitioned.events(p), format!("cwp:{{{tag}}}:events"));
        assert_eq!(partitioned.high_water_marks(p), format!("cwp:{{{tag}}}:hwm"));
        assert_eq!(partitioned.device(&device), format!("cwp:{{{tag}}}:device:CTRL-0042"));
        assert_eq!(partitioned.ledger(&device), format!("cwp:{{{tag}}}:ledger:CTRL-0042"));
        assert_eq!(
            partitioned.file_offers(&device),
            format!("cwp:{{{tag}}}:file-offers:CTRL-0042")
        );
        assert_eq!(partitioned.command_outcomes(p), format!("cwp:{{{tag}}}:cmd-outcomes"));
        assert_eq!(partitioned.ledger_due(p), format!("cwp:{{{tag}}}:ledger-due"));
        assert_eq!(partitioned.driver_devices("driver-1"), "cwp:driver-devices:{driver-1}");
        assert_eq!(
            partitioned.driver_instance("driver-1"),
            "cwp:driver-instance:{driver-1}"
        );
        assert_eq!(
            partitioned.upload_recorded(&device, "u-1"),
            "cwp:upload-recorded:{cwp:uploads}:CTRL-0042:u-1"
        );
    }

    #[test]
    fn the_architecture_and_this_crate_document_exactly_these_keys() {
        assert_eq!(key_column(&read("../docs/ARCHITECTURE.md"), ""), documented_names());
        assert_eq!(key_column(&read("src/lib.rs"), "//! "), documented_names());
    }

    #[test]
    fn every_field_is_the_documented_one() {
        assert_eq!(
            event_fields::ALL,
            ["serial", "event_id", "time_ms", "kind", "body", "driver", "received_ms"]
        );
        assert_eq!(
            device_fields::ALL,
            [
                "online",
                "driver",
                "instance",
                "peer",
                "firmware",
                "session",
                "connected_ms",
                "last_seen_ms",
                "last_event_id"
            ]
        );
        assert_eq!(
            rejection_fields::ALL,
            [
                "serial",
                "command_id",
                "outcome",
                "reason",
                "message",
                "driver",
                "rejected_ms"
            ]
        );
        assert_eq!(
            upload_fields::ALL,
            [
                "type",
                "serial",
                "upload_id",
                "name",
                "size",
                "sha256",
                "path",
                "driver",
                "completed_ms",
                "transport"
            ]
        );
        assert_eq!(upload_fields::UPLOAD_COMPLETED, "upload_completed");
        assert_eq!(
            (upload_fields::TRANSPORT_CWP, upload_fields::TRANSPORT_HTTP),
            ("cwp", "http")
        );
        assert_eq!(
            command_fields::ALL,
            ["id", "name", "body", "body_b64", "ledger", "files"]
        );
        assert_eq!(
            rollout::rollout_fields::ALL,
            [
                "file",
                "size",
                "name",
                "max_active",
                "retries",
                "expires_ms",
                "max_bytes_per_s",
                "state",
                "created_ms",
                "targets",
                "bytes_acked"
            ]
        );
        assert_eq!(
            rollout::target_state::ALL,
            ["pending", "active", "done", "declined", "failed", "cancelled"]
        );
        assert_eq!(
            rollout::target_fields::ALL,
            ["state", "offset", "session", "mismatches", "why", "updated_ms"]
        );
        assert_eq!(
            rollout::file_result_fields::ALL,
            ["serial", "rollout", "file", "state", "offset", "why", "time_ms"]
        );
        assert_eq!(
            result_fields::ALL,
            [
                "id",
                "serial",
                "status",
                "data",
                "data_b64",
                "error",
                "time_ms",
                "attempt",
                "expires_ms"
            ]
        );
        assert_eq!(
            ledger_fields::ALL,
            [
                "name",
                "body_b64",
                "seq",
                "enqueued_ms",
                "expires_ms",
                "state",
                "attempts",
                "session"
            ]
        );
        assert_eq!(outcome_fields::ALL, ["serial", "id", "status", "time_ms", "notice"]);
        assert_eq!(control_fields::ALL, ["type", "serial", "session"]);
        assert_eq!(control_fields::SUPERSEDE, "supersede");
    }

    #[test]
    fn the_architecture_names_every_field_of_every_record() {
        let families: [(&str, &[&str]); 14] = [
            ("cwp:rollout:{ID}", &rollout::rollout_fields::ALL),
            ("cwp:rollout:{ID}:targets", &rollout::target_fields::ALL),
            ("cwp:rollout:{ID}:results", &rollout::file_result_fields::ALL),
            ("cwp:file-result:{serial}", &rollout::file_result_fields::ALL),
            ("cwp:ledger:{serial}", &ledger_fields::ALL),
            ("cwp:cmd-outcomes", &outcome_fields::ALL),
            ("cwp:events", &event_fields::ALL),
            ("cwp:device:{serial}", &device_fields::ALL),
            ("cwp:cmd:{serial}", &command_fields::ALL),
            ("cwp:cmd-result:{serial}", &result_fields::ALL),
            (REJECTED_COMMANDS, &rejection_fields::ALL),
            ("cwp:driver:{driver_id}", &control_fields::ALL),
            (UPLOADS, &upload_fields::ALL),
            (LAYOUT, &layout_fields::ALL),
        ];
        for (key, fields) in families {
            let row = architecture_row(key);
            for field in fields {
                assert!(
                    row.contains(&format!("`{field}`")) || row.contains(&format!("\"{field}\"")),
                    "docs/ARCHITECTURE.md's row for {key} does not name the field {field}: {row}"
                );
            }
        }
    }

    #[test]
    fn the_acl_users_are_granted_exactly_their_names() {
        let acl = read("../docs/redis-acl.conf");
        // Key (`~`) and channel (`&`) patterns, sorted.
        let user = |name: &str| -> Vec<String> {
            let line = acl
                .lines()
                .find(|line| line.starts_with(&format!("user {name} ")))
                .unwrap_or_else(|| panic!("docs/redis-acl.conf has no user {name}"));
            let mut patterns: Vec<String> = line
                .split_whitespace()
                .filter(|word| word.starts_with('~') || word.starts_with('&'))
                .map(str::to_owned)
                .collect();
            patterns.sort();
            patterns
        };
        let keys = |names: &[&str]| names.iter().map(|name| format!("~{name}")).collect::<Vec<_>>();
        let channels = |names: &[String]| names.iter().map(|name| format!("&{name}")).collect::<Vec<_>>();
        // Both layouts' names: one ACL file serves one Redis and a cluster.
        let mut bridge = keys(&[
            "cwp:events",
            "cwp:hwm",
            "cwp:{p*}:events",
            "cwp:{p*}:hwm",
            Layout::SINGLE.device_pattern(),
            Layout::partitioned(2).unwrap().device_pattern(),
            "cwp:driver-devices:*",
            "cwp:driver-instance:*",
            REJECTED_COMMANDS,
            UPLOADS,
            "cwp:upload-recorded:*",
            LAYOUT,
            Layout::SINGLE.ledger_pattern(),
            Layout::partitioned(2).unwrap().ledger_pattern(),
            "cwp:cmd-outcomes",
            "cwp:{p*}:cmd-outcomes",
            "cwp:ledger-due",
            "cwp:{p*}:ledger-due",
            "cwp:rollout:*",
            Layout::SINGLE.file_offers_pattern(),
            Layout::partitioned(2).unwrap().file_offers_pattern(),
        ]);
        bridge.extend(channels(&[
            DRIVER_CONTROL.pattern(),
            COMMAND_RESULTS.pattern(),
            COMMANDS.pattern(),
            FILE_RESULTS.pattern(),
        ]));
        bridge.sort();
        let mut driver = channels(&[COMMANDS.pattern(), DRIVER_CONTROL.pattern()]);
        driver.sort();
        assert_eq!(
            user("drover-bridge"),
            bridge,
            "the bridge writes every key and publishes results and control"
        );
        assert_eq!(
            user("drover-driver"),
            driver,
            "drivers touch no key and subscribe to commands and control"
        );
    }

    #[test]
    fn a_name_gives_back_its_serial_or_driver_and_no_other_name_does() {
        let device = serial("CTRL-0042");
        assert_eq!(COMMANDS.serial_of(&COMMANDS.name(&device)), Some(device));
        assert_eq!(COMMANDS.serial_of("cwp:cmd-result:CTRL-0042"), None, "another family");
        assert_eq!(COMMANDS.serial_of("cwp:cmd:CTRL 42"), None, "not a serial");
        assert_eq!(COMMANDS.serial_of("cwp:cmd:"), None, "no serial");
        assert_eq!(
            DRIVER_CONTROL.driver_of(&DRIVER_CONTROL.name("driver-1")),
            Some("driver-1")
        );
        assert_eq!(DRIVER_CONTROL.driver_of("cwp:driver-devices:driver-1"), None);
        assert_eq!(DRIVER_CONTROL.driver_of("cwp:driver:"), None);
    }

    #[test]
    fn a_pattern_matches_its_family() {
        assert_eq!(COMMAND_RESULTS.pattern(), "cwp:cmd-result:*");
        assert_eq!(DRIVER_CONTROL.pattern(), "cwp:driver:*");
    }
}
