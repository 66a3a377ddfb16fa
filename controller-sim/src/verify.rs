//! The exactly-once check: every event a device saw acknowledged must be in
//! the Redis stream `cwp:events` exactly once, no event of these devices
//! may be there twice, and nothing may be there that they never sent.
//! Three ways to fail, each counted:
//!
//! - **lost** ([`Verdict::missing`]): acknowledged, not stored;
//! - **duplicated**: an event of these devices stored more than once,
//!   acknowledged or not;
//! - **unexpected**: an entry under one of these devices' serials whose
//!   event id the device never sent (above the highest it sent), or an
//!   entry without a readable serial and event id.
//!
//! Entries of other serials ("foreign") are counted but are no failure: a
//! stream is shared by every device of a fleet, and a check covers the
//! devices of one run (or of one process of it).
//!
//! Events stored whose `ACK` the device never saw are allowed (the ack was
//! lost or still on its way when the run ended), and counted.
//!
//! Uploads get the same check against `cwp:uploads` ([`UploadTally`]):
//! every upload a device was told complete (`UPLOAD_DONE OK`) recorded
//! exactly once, with the size and digest the device sent.
//!
//! A [`Tally`] holds what the devices expect and counts what the stream
//! holds (pure, no I/O); [`read_events`] feeds it from Redis (every event
//! stream of the layout), a page of
//! `XRANGE` at a time ([`read_uploads`] feeds an [`UploadTally`]).

use std::collections::HashMap;
use std::fmt;

use cwp::{Serial, UploadId};
use drover_redis::{Connection, Target, Timeouts};
use drover_schema::{Layout, event_fields, upload_fields};
use redis::Value;
use redis::aio::ConnectionLike;

use crate::device::{AckLog, Device, UploadJob};

/// Entries per `XRANGE` page: a page of the largest events the tests send
/// (16 KiB bodies) is then 8 MiB, which arrives well within [`PAGE_WAIT`].
const PAGE: usize = 500;
/// How long one page may take to arrive: generous, only there to fail
/// instead of hanging.
const PAGE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Problems described one by one in a verdict; the rest are only counted.
const EXAMPLES: usize = 10;

/// Why the stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Redis refused or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// `XRANGE` answered something that is not a stream range.
    #[error("unexpected XRANGE reply: {0}")]
    Reply(String),
}

/// What one device knows of its events: which ids it saw acknowledged,
/// and how far it got in sending.
#[derive(Debug, Clone)]
pub struct Expectation {
    /// The device.
    pub serial: Serial,
    /// Every id it saw acknowledged.
    pub acked: AckLog,
    /// The highest id it ever sent; it never sent a higher one.
    pub highest_sent: u64,
}

impl Expectation {
    /// A device's expectation, taking its [`AckLog`]; `None` if it kept none.
    pub fn of(device: &mut Device) -> Option<Self> {
        Some(Self {
            serial: *device.serial(),
            highest_sent: device.highest_sent(),
            acked: device.take_ack_log()?,
        })
    }
}

/// What one device expects, and what the stream held for it.
#[derive(Debug)]
struct DeviceTally {
    serial: Serial,
    acked: AckLog,
    highest_sent: u64,
    /// Times each acknowledged id was found, by its position in `acked`.
    found: Vec<u8>,
    /// Ids found that the device never saw acknowledged (stored, but the
    /// `ACK` was lost or still on its way when the run ended).
    unacked: HashMap<u64, u32>,
    /// Ids found that the device never sent.
    unsent: HashMap<u64, u32>,
}

/// Counts stream entries against the acknowledged ids of a set of devices.
#[derive(Debug, Default)]
pub struct Tally {
    devices: Vec<DeviceTally>,
    by_serial: HashMap<Serial, usize>,
    scanned: u64,
    foreign: u64,
    malformed: u64,
}

impl Tally {
    /// Expects, for each device, exactly the ids of its [`AckLog`], and
    /// none above the highest it sent.
    pub fn new(expected: impl IntoIterator<Item = Expectation>) -> Self {
        let mut tally = Self::default();
        for Expectation {
            serial,
            acked,
            highest_sent,
        } in expected
        {
            let found = vec![0; usize::try_from(acked.len()).unwrap_or(usize::MAX)];
            tally.by_serial.insert(serial, tally.devices.len());
            tally.devices.push(DeviceTally {
                serial,
                acked,
                highest_sent,
                found,
                unacked: HashMap::new(),
                unsent: HashMap::new(),
            });
        }
        tally
    }

    /// One stream entry's `serial` and `event_id` fields, as stored
    /// (`event_id` in decimal).
    pub fn observe(&mut self, serial: &[u8], event_id: &[u8]) {
        self.scanned += 1;
        let parsed = Serial::from_bytes(serial).ok().zip(
            std::str::from_utf8(event_id)
                .ok()
                .and_then(|text| text.parse::<u64>().ok()),
        );
        let Some((serial, event_id)) = parsed else {
            self.malformed += 1;
            return;
        };
        let Some(&index) = self.by_serial.get(&serial) else {
            self.foreign += 1;
            return;
        };
        let device = &mut self.devices[index];
        match device.acked.position(event_id).and_then(|p| usize::try_from(p).ok()) {
            Some(position) => device.found[position] = device.found[position].saturating_add(1),
            None if event_id > device.highest_sent => *device.unsent.entry(event_id).or_default() += 1,
            None => *device.unacked.entry(event_id).or_default() += 1,
        }
    }

    /// Stream entries observed that had no `serial` or `event_id` field.
    pub fn observe_malformed(&mut self) {
        self.scanned += 1;
        self.malformed += 1;
    }

    /// The verdict on everything observed.
    pub fn verdict(&self) -> Verdict {
        let mut verdict = Verdict {
            scanned: self.scanned,
            foreign: self.foreign,
            malformed: self.malformed,
            unexpected: self.malformed,
            ..Verdict::default()
        };
        if self.malformed > 0 {
            verdict.example(format!(
                "{} entries without a readable serial and event_id",
                self.malformed
            ));
        }
        for device in &self.devices {
            verdict.acked += device.acked.len();
            for (event_id, &found) in device.acked.iter().zip(&device.found) {
                match found {
                    1 => verdict.stored_once += 1,
                    0 => {
                        verdict.missing += 1;
                        verdict.example(format!(
                            "{} event {event_id}: acknowledged but not stored",
                            device.serial
                        ));
                    }
                    n => {
                        verdict.duplicated += 1;
                        verdict.example(format!("{} event {event_id}: stored {n} times", device.serial));
                    }
                }
            }
            let mut unacked: Vec<_> = device.unacked.iter().collect();
            unacked.sort_unstable();
            for (&event_id, &found) in unacked {
                verdict.unacked_stored += 1;
                if found > 1 {
                    verdict.duplicated += 1;
                    verdict.example(format!(
                        "{} event {event_id} (ack not received): stored {found} times",
                        device.serial
                    ));
                }
            }
            let mut unsent: Vec<_> = device.unsent.iter().collect();
            unsent.sort_unstable();
            for (&event_id, &found) in unsent {
                verdict.unexpected += u64::from(found);
                verdict.example(format!(
                    "{} event {event_id}: stored {found} times, never sent (highest sent: {})",
                    device.serial, device.highest_sent
                ));
            }
        }
        verdict
    }
}

/// The outcome of the exactly-once check.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    /// Acknowledged (serial, event id) pairs expected in the stream.
    pub acked: u64,
    /// Of those, found exactly once.
    pub stored_once: u64,
    /// Acknowledged but not in the stream: data lost.
    pub missing: u64,
    /// Events of these devices found more than once (acknowledged or not).
    pub duplicated: u64,
    /// Distinct events of these devices stored without the device having
    /// seen their `ACK` (allowed: the ack was lost or late).
    pub unacked_stored: u64,
    /// Entries of these devices' serials with ids they never sent, plus
    /// unreadable entries: data nobody sent.
    #[serde(default)]
    pub unexpected: u64,
    /// Stream entries read.
    pub scanned: u64,
    /// Entries of other serials.
    pub foreign: u64,
    /// Entries without a readable `serial` or `event_id`.
    pub malformed: u64,
    /// The first few problems, spelled out.
    pub examples: Vec<String>,
}

impl Verdict {
    /// Whether every acknowledged event is stored exactly once, nothing is
    /// stored twice, and nothing is stored that was never sent.
    pub fn passed(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.unexpected == 0
    }

    fn example(&mut self, problem: String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(problem);
        }
    }

    /// One verdict for the devices of several processes, each of which
    /// checked its own devices against the whole stream: the counts about
    /// devices add up; every process read the same entries, so what was
    /// scanned is one process's count, and the foreign entries are those of
    /// none of the processes' devices.
    pub fn merge(verdicts: &[Verdict]) -> Verdict {
        let mut merged = Verdict::default();
        let mut own = 0;
        for verdict in verdicts {
            merged.acked += verdict.acked;
            merged.stored_once += verdict.stored_once;
            merged.missing += verdict.missing;
            merged.duplicated += verdict.duplicated;
            merged.unacked_stored += verdict.unacked_stored;
            // Every process counted the same unreadable entries.
            merged.unexpected += verdict.unexpected.saturating_sub(verdict.malformed);
            merged.scanned = merged.scanned.max(verdict.scanned);
            merged.malformed = merged.malformed.max(verdict.malformed);
            own += verdict.scanned.saturating_sub(verdict.foreign + verdict.malformed);
            for problem in &verdict.examples {
                merged.example(problem.clone());
            }
        }
        merged.foreign = merged.scanned.saturating_sub(merged.malformed + own);
        merged.unexpected += merged.malformed;
        merged
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = if self.passed() { "PASS" } else { "FAIL" };
        writeln!(
            f,
            "exactly-once: {outcome}: {} acknowledged, {} stored once, {} lost, {} duplicated, {} unexpected",
            self.acked, self.stored_once, self.missing, self.duplicated, self.unexpected
        )?;
        write!(
            f,
            "  {} stream entries read ({} of other serials, {} unreadable); {} stored without their ack seen",
            self.scanned, self.foreign, self.malformed, self.unacked_stored
        )?;
        for example in &self.examples {
            write!(f, "\n  - {example}")?;
        }
        Ok(())
    }
}

/// What one device knows of its upload: its id, what it sent, and whether
/// the server told it the upload is complete.
#[derive(Debug, Clone)]
pub struct ExpectedUpload {
    /// The device.
    pub serial: Serial,
    /// The upload.
    pub upload_id: UploadId,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// Whether the device heard `UPLOAD_DONE OK`.
    pub completed: bool,
}

impl ExpectedUpload {
    /// The upload of `device`, running `job`; `None` before it began one.
    pub fn of(device: &Device, job: &UploadJob) -> Option<Self> {
        Some(Self {
            serial: *device.serial(),
            upload_id: device.upload_id()?,
            size: job.size(),
            sha256: job.sha256,
            completed: device.upload_done(),
        })
    }
}

/// Counts `cwp:uploads` records against the uploads of a set of devices.
#[derive(Debug, Default)]
pub struct UploadTally {
    /// By serial and hyphenated upload id: the expectation, and how many
    /// records matched it.
    expected: HashMap<(Serial, String), (ExpectedUpload, u32)>,
    serials: std::collections::HashSet<Serial>,
    scanned: u64,
    foreign: u64,
    unexpected: u64,
    examples: Vec<String>,
}

impl UploadTally {
    /// Expects these uploads (at most one record each).
    pub fn new(expected: impl IntoIterator<Item = ExpectedUpload>) -> Self {
        let mut tally = Self::default();
        for upload in expected {
            tally.serials.insert(upload.serial);
            tally
                .expected
                .insert((upload.serial, upload.upload_id.to_string()), (upload, 0));
        }
        tally
    }

    /// One record's `serial`, `upload_id`, `size` and `sha256` fields, as
    /// stored (`None`: the field is missing).
    pub fn observe(&mut self, serial: &[u8], upload_id: &[u8], size: Option<&[u8]>, sha256: Option<&[u8]>) {
        self.scanned += 1;
        let Ok(serial) = Serial::from_bytes(serial) else {
            self.unexpected("a record without a readable serial".to_owned());
            return;
        };
        if !self.serials.contains(&serial) {
            self.foreign += 1;
            return;
        }
        let upload_id = String::from_utf8_lossy(upload_id).into_owned();
        let Some((upload, found)) = self.expected.get_mut(&(serial, upload_id.clone())) else {
            self.unexpected(format!("{serial} upload {upload_id}: recorded, never sent"));
            return;
        };
        let size_matches = size.is_some_and(|size| size == upload.size.to_string().as_bytes());
        let digest_matches = sha256.is_some_and(|digest| digest == hex(&upload.sha256).as_bytes());
        if size_matches && digest_matches {
            *found = found.saturating_add(1);
        } else {
            self.unexpected(format!(
                "{serial} upload {upload_id}: recorded with a size or digest the device never sent"
            ));
        }
    }

    /// A record without a `serial` or `upload_id` field.
    pub fn observe_malformed(&mut self) {
        self.scanned += 1;
        self.unexpected("a record without a serial or upload_id".to_owned());
    }

    fn unexpected(&mut self, problem: String) {
        self.unexpected += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(problem);
        }
    }

    /// The verdict on everything observed.
    pub fn verdict(&self) -> UploadVerdict {
        let mut verdict = UploadVerdict {
            scanned: self.scanned,
            foreign: self.foreign,
            unexpected: self.unexpected,
            examples: self.examples.clone(),
            ..UploadVerdict::default()
        };
        let mut expected: Vec<_> = self.expected.iter().collect();
        expected.sort_unstable_by_key(|(key, _)| *key);
        for ((serial, upload_id), (upload, found)) in expected {
            if upload.completed {
                verdict.completed += 1;
            }
            let problem = match (upload.completed, found) {
                (true, 1) => {
                    verdict.recorded_once += 1;
                    None
                }
                (false, 1) => {
                    verdict.recorded_unconfirmed += 1;
                    None
                }
                (_, 0) if upload.completed => {
                    verdict.missing += 1;
                    Some(format!("{serial} upload {upload_id}: completed but not recorded"))
                }
                (_, 0) => None,
                (_, n) => {
                    verdict.duplicated += 1;
                    Some(format!("{serial} upload {upload_id}: recorded {n} times"))
                }
            };
            if let Some(problem) = problem
                && verdict.examples.len() < EXAMPLES
            {
                verdict.examples.push(problem);
            }
        }
        verdict
    }
}

/// The outcome of the uploads check.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UploadVerdict {
    /// Uploads the devices were told complete.
    pub completed: u64,
    /// Of those, recorded exactly once.
    pub recorded_once: u64,
    /// Recorded once, complete, but the device had not heard so yet
    /// (allowed: `UPLOAD_DONE` lost or late).
    pub recorded_unconfirmed: u64,
    /// Told complete, not recorded: lost.
    pub missing: u64,
    /// Recorded more than once.
    pub duplicated: u64,
    /// Records of these devices' serials that no device sent: unknown
    /// upload ids, a size or digest other than the one sent, unreadable.
    pub unexpected: u64,
    /// Records read.
    pub scanned: u64,
    /// Records of other serials.
    pub foreign: u64,
    /// The first few problems, spelled out.
    pub examples: Vec<String>,
}

impl UploadVerdict {
    /// Whether every completed upload is recorded exactly once, as sent,
    /// and nothing else of these devices is recorded.
    pub fn passed(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.unexpected == 0
    }
}

impl fmt::Display for UploadVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = if self.passed() { "PASS" } else { "FAIL" };
        write!(
            f,
            "uploads: {outcome}: {} completed, {} recorded once, {} lost, {} duplicated, {} unexpected; \
             {} records read ({} of other serials), {} recorded before the device heard",
            self.completed,
            self.recorded_once,
            self.missing,
            self.duplicated,
            self.unexpected,
            self.scanned,
            self.foreign,
            self.recorded_unconfirmed
        )?;
        for example in &self.examples {
            write!(f, "\n  - {example}")?;
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

/// Reads every event the deployment at `target` stored (every event
/// stream its layout names: `cwp:layout`'s `streams`, or `cwp:events` on a
/// Redis that records no layout) into `tally`.
pub async fn read_events(target: &Target, tally: &mut Tally) -> Result<(), VerifyError> {
    let mut redis = connect(target)?;
    for stream in event_streams(&mut redis).await? {
        read_entries(&mut redis, &stream, |fields| {
            match (
                field(fields, event_fields::SERIAL),
                field(fields, event_fields::EVENT_ID),
            ) {
                (Some(serial), Some(event_id)) => tally.observe(serial, event_id),
                _ => tally.observe_malformed(),
            }
        })
        .await?;
    }
    Ok(())
}

/// The event streams of the deployment whose Redis `redis` is.
pub async fn event_streams(redis: &mut impl ConnectionLike) -> Result<Vec<String>, VerifyError> {
    let streams: Option<String> = redis::cmd("HGET")
        .arg(drover_schema::LAYOUT)
        .arg(drover_schema::layout_fields::STREAMS)
        .query_async(redis)
        .await?;
    Ok(match streams {
        Some(streams) => streams.split(',').map(str::to_owned).collect(),
        None => Layout::SINGLE.event_streams(),
    })
}

/// Reads every record of `cwp:uploads` ([`drover_schema::UPLOADS`]) at
/// `target` into `tally`.
pub async fn read_uploads(target: &Target, tally: &mut UploadTally) -> Result<(), VerifyError> {
    let mut redis = connect(target)?;
    read_entries(&mut redis, drover_schema::UPLOADS, |fields| {
        match (
            field(fields, upload_fields::SERIAL),
            field(fields, upload_fields::UPLOAD_ID),
        ) {
            (Some(serial), Some(upload_id)) => {
                tally.observe(
                    serial,
                    upload_id,
                    field(fields, upload_fields::SIZE),
                    field(fields, upload_fields::SHA256),
                );
            }
            _ => tally.observe_malformed(),
        }
    })
    .await
}

fn connect(target: &Target) -> Result<Connection, VerifyError> {
    Ok(Connection::open(
        target,
        Timeouts {
            connect: std::time::Duration::from_secs(5),
            response: PAGE_WAIT,
        },
    )?)
}

/// Hands every entry of `stream` to `observe`, a page of `XRANGE` at a time.
pub async fn read_entries(
    redis: &mut impl ConnectionLike,
    stream: &str,
    mut observe: impl FnMut(&[(Value, Value)]),
) -> Result<(), VerifyError> {
    let mut start = "-".to_owned();
    loop {
        let reply: Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(redis)
            .await?;
        let entries = match reply {
            Value::Array(entries) => entries,
            Value::Nil => Vec::new(),
            other => return Err(VerifyError::Reply(format!("{other:?}"))),
        };
        let count = entries.len();
        let mut last_id = None;
        for entry in entries {
            let (id, fields) = stream_entry(entry)?;
            observe(&fields);
            last_id = Some(id);
        }
        match last_id {
            // `(` makes the next page start after the last id (Redis ≥ 6.2).
            Some(id) if count == PAGE => start = format!("({id}"),
            _ => return Ok(()),
        }
    }
}

/// One `XRANGE` entry: `[id, [field, value, …]]` (RESP2) or with a map
/// of fields (RESP3).
fn stream_entry(entry: Value) -> Result<(String, Vec<(Value, Value)>), VerifyError> {
    let Value::Array(mut parts) = entry else {
        return Err(VerifyError::Reply(format!("entry {entry:?}")));
    };
    if parts.len() != 2 {
        return Err(VerifyError::Reply(format!("entry of {} parts", parts.len())));
    }
    let fields = parts.pop().unwrap_or_default();
    let id = match parts.pop().unwrap_or_default() {
        Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Value::SimpleString(text) => text,
        other => return Err(VerifyError::Reply(format!("entry id {other:?}"))),
    };
    let fields = match fields {
        Value::Array(flat) => {
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut flat = flat.into_iter();
            while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                pairs.push((name, value));
            }
            pairs
        }
        Value::Map(pairs) => pairs,
        other => return Err(VerifyError::Reply(format!("entry fields {other:?}"))),
    };
    Ok((id, fields))
}

/// The value of field `name` of a stream entry, as bytes.
pub fn field<'a>(fields: &'a [(Value, Value)], name: &str) -> Option<&'a [u8]> {
    let text = |value: &'a Value| match value {
        Value::BulkString(bytes) => Some(bytes.as_slice()),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    };
    fields
        .iter()
        .find(|(key, _)| text(key) == Some(name.as_bytes()))
        .and_then(|(_, value)| text(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(ids: impl IntoIterator<Item = u64>) -> AckLog {
        let mut log = AckLog::new();
        for id in ids {
            log.record(id);
        }
        log
    }

    fn serial(text: &str) -> Serial {
        text.parse().unwrap()
    }

    /// A device that sent ids 1..=`highest_sent` and saw `acked` acknowledged.
    fn device(name: &str, acked: impl IntoIterator<Item = u64>, highest_sent: u64) -> Expectation {
        Expectation {
            serial: serial(name),
            acked: log(acked),
            highest_sent,
        }
    }

    #[test]
    fn every_acked_event_stored_once_passes() {
        let mut tally = Tally::new([device("SIM-1", 1..=3, 4), device("SIM-2", [5], 5)]);
        for (s, id) in [
            ("SIM-1", "1"),
            ("SIM-2", "5"),
            ("SIM-1", "2"),
            ("SIM-1", "3"),
            ("OTHER", "1"),
        ] {
            tally.observe(s.as_bytes(), id.as_bytes());
        }
        // Stored but its ack was still on the way: allowed.
        tally.observe(b"SIM-1", b"4");
        let verdict = tally.verdict();
        assert!(verdict.passed(), "{verdict}");
        assert_eq!((verdict.acked, verdict.stored_once), (4, 4));
        assert_eq!((verdict.foreign, verdict.unacked_stored, verdict.scanned), (1, 1, 6));
    }

    #[test]
    fn a_missing_or_doubled_event_fails() {
        let mut tally = Tally::new([device("SIM-1", 1..=3, 9)]);
        for id in ["1", "3", "3", "9", "9"] {
            tally.observe(b"SIM-1", id.as_bytes());
        }
        tally.observe(b"SIM-1", b"not a number");
        let verdict = tally.verdict();
        assert!(!verdict.passed());
        assert_eq!((verdict.missing, verdict.duplicated, verdict.malformed), (1, 2, 1));
        assert_eq!(verdict.unexpected, 1, "the unreadable entry");
        assert_eq!(
            verdict.examples,
            [
                "1 entries without a readable serial and event_id",
                "SIM-1 event 2: acknowledged but not stored",
                "SIM-1 event 3: stored 2 times",
                "SIM-1 event 9 (ack not received): stored 2 times",
            ]
        );
    }

    #[test]
    fn an_event_the_device_never_sent_is_unexpected_and_fails() {
        // SIM-1 sent 1..=5 and saw 1..=3 acknowledged.
        let mut tally = Tally::new([device("SIM-1", 1..=3, 5)]);
        for id in ["1", "2", "3", "5", "6", "6", "40"] {
            tally.observe(b"SIM-1", id.as_bytes());
        }
        let verdict = tally.verdict();
        assert!(!verdict.passed(), "{verdict}");
        assert_eq!((verdict.stored_once, verdict.missing, verdict.duplicated), (3, 0, 0));
        // 5 was sent, its ack not seen: allowed. 6 (twice) and 40 never left
        // the device: three unexpected entries.
        assert_eq!((verdict.unacked_stored, verdict.unexpected), (1, 3));
        assert_eq!(
            verdict.examples,
            [
                "SIM-1 event 6: stored 2 times, never sent (highest sent: 5)",
                "SIM-1 event 40: stored 1 times, never sent (highest sent: 5)",
            ]
        );
    }

    #[test]
    fn entries_of_other_serials_are_counted_but_are_no_failure() {
        let mut tally = Tally::new([device("SIM-1", [1], 1)]);
        tally.observe(b"SIM-1", b"1");
        tally.observe(b"OTHER-7", b"99");
        let verdict = tally.verdict();
        assert!(verdict.passed(), "{verdict}");
        assert_eq!((verdict.foreign, verdict.unexpected), (1, 0));
    }

    #[test]
    fn verdicts_of_several_processes_merge() {
        // Two processes, each with its own devices, read the same 10
        // entries: 3 of process one's devices, 5 of process two's, 1 of
        // nobody's, 1 unreadable.
        let one = Verdict {
            acked: 3,
            stored_once: 3,
            scanned: 10,
            foreign: 6,
            malformed: 1,
            unexpected: 1,
            ..Verdict::default()
        };
        let two = Verdict {
            acked: 5,
            stored_once: 4,
            duplicated: 1,
            scanned: 10,
            foreign: 4,
            malformed: 1,
            unexpected: 3,
            examples: vec!["SIM-2 event 4: stored 2 times".to_owned()],
            ..Verdict::default()
        };
        let merged = Verdict::merge(&[one, two]);
        assert_eq!((merged.acked, merged.stored_once, merged.duplicated), (8, 7, 1));
        assert_eq!((merged.scanned, merged.foreign, merged.malformed), (10, 1, 1));
        // Process two's 2 never-sent ids, and the unreadable entry once.
        assert_eq!(merged.unexpected, 3);
        assert_eq!(merged.examples, ["SIM-2 event 4: stored 2 times"]);
        assert!(!merged.passed());
    }

    fn upload(name: &str, id: u8, completed: bool) -> ExpectedUpload {
        ExpectedUpload {
            serial: serial(name),
            upload_id: UploadId([id; 16]),
            size: 1000,
            sha256: [id; 32],
            completed,
        }
    }

    /// A record as the bridge writes it.
    fn record(tally: &mut UploadTally, name: &str, id: u8, size: &str) {
        let upload_id = UploadId([id; 16]).to_string();
        let digest = hex(&[id; 32]);
        tally.observe(
            name.as_bytes(),
            upload_id.as_bytes(),
            Some(size.as_bytes()),
            Some(digest.as_bytes()),
        );
    }

    #[test]
    fn every_completed_upload_recorded_once_as_sent_passes() {
        let mut tally = UploadTally::new([upload("SIM-1", 1, true), upload("SIM-2", 2, false)]);
        record(&mut tally, "SIM-1", 1, "1000");
        // Complete on the server, UPLOAD_DONE not heard yet: allowed.
        record(&mut tally, "SIM-2", 2, "1000");
        record(&mut tally, "OTHER", 9, "5");
        let verdict = tally.verdict();
        assert!(verdict.passed(), "{verdict}");
        assert_eq!((verdict.completed, verdict.recorded_once), (1, 1));
        assert_eq!(
            (verdict.recorded_unconfirmed, verdict.foreign, verdict.scanned),
            (1, 1, 3)
        );
    }

    #[test]
    fn a_lost_doubled_or_altered_upload_record_fails() {
        let mut tally = UploadTally::new([
            upload("SIM-1", 1, true),
            upload("SIM-2", 2, true),
            upload("SIM-3", 3, true),
        ]);
        record(&mut tally, "SIM-2", 2, "1000");
        record(&mut tally, "SIM-2", 2, "1000");
        record(&mut tally, "SIM-3", 3, "999");
        record(&mut tally, "SIM-3", 4, "1000");
        tally.observe_malformed();
        let verdict = tally.verdict();
        assert!(!verdict.passed());
        // SIM-1's is lost, SIM-3's only record has the wrong size (so it is
        // lost too), and upload 4 was never sent.
        assert_eq!((verdict.missing, verdict.duplicated, verdict.unexpected), (2, 1, 3));
        assert!(
            verdict.examples.contains(&format!(
                "SIM-1 upload {}: completed but not recorded",
                UploadId([1; 16])
            )),
            "{verdict}"
        );
    }

    #[test]
    fn stream_entries_decode_in_resp2_and_resp3_shapes() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp2 = Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![bulk("serial"), bulk("SIM-1"), bulk("event_id"), bulk("7")]),
        ]);
        let (id, fields) = stream_entry(resp2).unwrap();
        assert_eq!(id, "1-0");
        assert_eq!(field(&fields, "event_id"), Some(&b"7"[..]));
        let resp3 = Value::Array(vec![bulk("2-0"), Value::Map(vec![(bulk("serial"), bulk("SIM-1"))])]);
        let (_, fields) = stream_entry(resp3).unwrap();
        assert_eq!(field(&fields, "serial"), Some(&b"SIM-1"[..]));
        assert_eq!(field(&fields, "event_id"), None);
    }
}
