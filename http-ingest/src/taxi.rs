//! Sample batches shaped like taxi-trip data, the input of the parser's
//! benchmark (`benches/ndjson.rs`), the footprint example and the load
//! generator of `fleet bench --only http-events` (`bench-http`): each line
//! an event whose body holds four fields of a trip (vendor, pickup,
//! dropoff, fare), about 150 bytes a line, the shape of issue 19's
//! reference service. Deterministic: the same arguments give the same bytes.

use std::fmt::Write as _;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;

/// How a line carries the trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `"body"`: the trip as JSON text, its quotes escaped (decoded into the arena).
    Json,
    /// `"body"`: the trip as CSV text, no escapes (a slice of the input).
    Csv,
    /// `"body_b64"`: the trip's JSON text as base64 (decoded into the arena).
    Base64,
}

impl Shape {
    /// Every shape, with its benchmark name.
    pub const ALL: [(Self, &'static str); 3] = [
        (Self::Json, "taxi_json"),
        (Self::Csv, "taxi_csv"),
        (Self::Base64, "taxi_b64"),
    ];
}

/// `lines` events, ids 1..=lines, with trips that vary as real ones do.
pub fn batch(shape: Shape, lines: u64) -> Bytes {
    batch_from(shape, 1, lines)
}

/// `lines` events with the ids `first_event_id..first_event_id + lines`
/// (a device's next batch continues where its last one ended); the trips
/// are those of [`batch`]'s lines at the same positions. `first_event_id`
/// is at least 1.
pub fn batch_from(shape: Shape, first_event_id: u64, lines: u64) -> Bytes {
    let first_event_id = first_event_id.max(1);
    let mut out = String::with_capacity(usize::try_from(lines).unwrap_or(0).saturating_mul(170));
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..lines {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let vendor = 1 + seed % 2;
        let pickup_s = i * 7 + seed % 60;
        let ride_s = 120 + seed % 3000;
        let fare_cents = 250 + seed % 9000;
        let (pickup, dropoff) = (clock(pickup_s), clock(pickup_s + ride_s));
        let fare = format!("{}.{:02}", fare_cents / 100, fare_cents % 100);
        let json = format!(r#"{{"vendor":{vendor},"pickup":"{pickup}","dropoff":"{dropoff}","fare":{fare}}}"#);
        let time_ms = 1_451_606_400_000 + pickup_s * 1000;
        let event_id = first_event_id + i;
        let _ = write!(out, r#"{{"event_id":{event_id},"time_ms":{time_ms},"kind":1,"#);
        let _ = match shape {
            Shape::Json => write!(out, r#""body":"{}"}}"#, json.replace('"', "\\\"")),
            Shape::Csv => write!(out, r#""body":"{vendor},{pickup},{dropoff},{fare}"}}"#),
            Shape::Base64 => write!(out, r#""body_b64":"{}"}}"#, STANDARD.encode(&json)),
        };
        out.push('\n');
    }
    Bytes::from(out)
}

/// `2016-01-DD HH:MM:SS`, `seconds` after 2016-01-01 00:00:00 (within 28 days).
fn clock(seconds: u64) -> String {
    let s = seconds % (28 * 86_400);
    format!(
        "2016-01-{:02} {:02}:{:02}:{:02}",
        1 + s / 86_400,
        s / 3600 % 24,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ndjson::{BatchLimits, parse};

    #[test]
    fn a_batch_is_valid_and_continues_from_its_first_id() {
        for (shape, name) in Shape::ALL {
            let first = batch(shape, 50);
            let next = batch_from(shape, 51, 50);
            let parsed = parse(next.clone(), &BatchLimits::default());
            assert_eq!(parsed.stats.valid, 50, "{name}: {:?}", parsed.errors);
            assert_eq!(parsed.records.first().map(|r| r.event_id), Some(51), "{name}");
            assert_eq!(parsed.records.last().map(|r| r.event_id), Some(100), "{name}");
            // Same trips at the same positions: only the ids differ.
            let strip = |b: &Bytes| -> Vec<String> {
                String::from_utf8_lossy(b)
                    .lines()
                    .map(|l| {
                        l.split_once(",\"time_ms\"")
                            .map(|(_, rest)| rest.to_owned())
                            .unwrap_or_default()
                    })
                    .collect()
            };
            assert_eq!(strip(&first), strip(&next), "{name}");
            assert_eq!(batch_from(shape, 51, 50), next, "{name}: deterministic");
        }
    }
}
