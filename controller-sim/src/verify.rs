//! The exactly-once check: every event a device saw acknowledged must be in
//! the Redis stream `cwp:events` exactly once, and no event of these
//! devices may be there twice.
//!
//! A [`Tally`] holds what the devices expect and counts what the stream
//! holds (pure, no I/O); [`read_stream`] feeds it from Redis, a page of
//! `XRANGE` at a time.

use std::collections::HashMap;
use std::fmt;

use cwp::Serial;
use redis::Value;

use crate::device::AckLog;

/// The stream the vendor-bridge appends every stored event to.
pub const EVENTS_STREAM: &str = "cwp:events";
/// Entries per `XRANGE` page.
const PAGE: usize = 10_000;
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

/// What one device expects, and what the stream held for it.
#[derive(Debug)]
struct DeviceTally {
    serial: Serial,
    acked: AckLog,
    /// Times each acknowledged id was found, by its position in `acked`.
    found: Vec<u8>,
    /// Ids found that the device never saw acknowledged (stored, but the
    /// `ACK` was lost or still on its way when the run ended).
    unacked: HashMap<u64, u32>,
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
    /// Expects, for each serial, exactly the ids of its [`AckLog`].
    pub fn new(expected: impl IntoIterator<Item = (Serial, AckLog)>) -> Self {
        let mut tally = Self::default();
        for (serial, acked) in expected {
            let found = vec![0; usize::try_from(acked.len()).unwrap_or(usize::MAX)];
            tally.by_serial.insert(serial, tally.devices.len());
            tally.devices.push(DeviceTally {
                serial,
                acked,
                found,
                unacked: HashMap::new(),
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
            ..Verdict::default()
        };
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
    /// Whether every acknowledged event is stored exactly once and nothing
    /// is stored twice.
    pub fn passed(&self) -> bool {
        self.missing == 0 && self.duplicated == 0
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
            merged.scanned = merged.scanned.max(verdict.scanned);
            merged.malformed = merged.malformed.max(verdict.malformed);
            own += verdict.scanned.saturating_sub(verdict.foreign + verdict.malformed);
            for problem in &verdict.examples {
                merged.example(problem.clone());
            }
        }
        merged.foreign = merged.scanned.saturating_sub(merged.malformed + own);
        merged
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = if self.passed() { "PASS" } else { "FAIL" };
        writeln!(
            f,
            "exactly-once: {outcome}: {} acknowledged, {} stored once, {} missing, {} duplicated",
            self.acked, self.stored_once, self.missing, self.duplicated
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

/// Reads the whole stream `stream` from the Redis at `url` into `tally`.
pub async fn read_stream(url: &str, stream: &str, tally: &mut Tally) -> Result<(), VerifyError> {
    let client = redis::Client::open(url)?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let mut start = "-".to_owned();
    loop {
        let reply: Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(PAGE)
            .query_async(&mut redis)
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
            match (field(&fields, b"serial"), field(&fields, b"event_id")) {
                (Some(serial), Some(event_id)) => tally.observe(serial, event_id),
                _ => tally.observe_malformed(),
            }
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

fn field<'a>(fields: &'a [(Value, Value)], name: &[u8]) -> Option<&'a [u8]> {
    let text = |value: &'a Value| match value {
        Value::BulkString(bytes) => Some(bytes.as_slice()),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    };
    fields
        .iter()
        .find(|(key, _)| text(key) == Some(name))
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

    #[test]
    fn every_acked_event_stored_once_passes() {
        let mut tally = Tally::new([(serial("SIM-1"), log(1..=3)), (serial("SIM-2"), log([5]))]);
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
        let mut tally = Tally::new([(serial("SIM-1"), log(1..=3))]);
        for id in ["1", "3", "3", "9", "9"] {
            tally.observe(b"SIM-1", id.as_bytes());
        }
        tally.observe(b"SIM-1", b"not a number");
        let verdict = tally.verdict();
        assert!(!verdict.passed());
        assert_eq!((verdict.missing, verdict.duplicated, verdict.malformed), (1, 2, 1));
        assert_eq!(
            verdict.examples,
            [
                "SIM-1 event 2: acknowledged but not stored",
                "SIM-1 event 3: stored 2 times",
                "SIM-1 event 9 (ack not received): stored 2 times",
            ]
        );
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
            ..Verdict::default()
        };
        let two = Verdict {
            acked: 5,
            stored_once: 4,
            duplicated: 1,
            scanned: 10,
            foreign: 4,
            malformed: 1,
            examples: vec!["SIM-2 event 4: stored 2 times".to_owned()],
            ..Verdict::default()
        };
        let merged = Verdict::merge(&[one, two]);
        assert_eq!((merged.acked, merged.stored_once, merged.duplicated), (8, 7, 1));
        assert_eq!((merged.scanned, merged.foreign, merged.malformed), (10, 1, 1));
        assert_eq!(merged.examples, ["SIM-2 event 4: stored 2 times"]);
        assert!(!merged.passed());
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
        assert_eq!(field(&fields, b"event_id"), Some(&b"7"[..]));
        let resp3 = Value::Array(vec![bulk("2-0"), Value::Map(vec![(bulk("serial"), bulk("SIM-1"))])]);
        let (_, fields) = stream_entry(resp3).unwrap();
        assert_eq!(field(&fields, b"serial"), Some(&b"SIM-1"[..]));
        assert_eq!(field(&fields, b"event_id"), None);
    }
}
