//! Where the keys of the event path live: one Redis as Drover always had
//! it, or `P` partitions that a Redis Cluster spreads over its masters.
//!
//! Each stored event costs one Redis core about 10 µs, so one Redis is the
//! fleet's ceiling for events per second. A [`Layout`] with partitions
//! splits that work: a serial belongs to one partition
//! ([`Layout::partition_of`], a stable hash), and each partition has its own
//! event stream, its own high-water marks and its devices' registry
//! entries, all under one hash tag, so one Redis Cluster slot holds them
//! and every script of the bridge touches one slot.
//!
//! | layout | events | high-water marks | a device's entry |
//! |---|---|---|---|
//! | single (one Redis, `REDIS_EVENT_PARTITIONS=1`) | `cwp:events` | `cwp:hwm` | `cwp:device:{serial}` |
//! | partitioned (a cluster, or more partitions) | `cwp:{TAG}:events` | `cwp:{TAG}:hwm` | `cwp:{TAG}:device:{serial}` |
//!
//! `TAG` is the partition's hash tag: `p` and its number, and when that
//! text's slot does not fall in the partition's share of the 16,384 slots,
//! a `.k` suffix, the smallest that makes it (see [`Partition::tag`]). So a
//! cluster whose masters own equal ranges of slots, as `redis-cli --cluster
//! create` makes them, holds equal numbers of partitions per master when
//! `P` is a multiple of the masters.
//!
//! The per-driver keys of a partitioned layout carry the driver id as
//! their tag (`cwp:driver-devices:{driver-1}`), so that the two keys of a
//! driver share a slot; an upload's marker carries the uploads stream's
//! name (`cwp:upload-recorded:{cwp:uploads}:…`), which puts it in the
//! stream's slot. Pub/sub channel names do not change: a cluster carries
//! them as sharded channels (`SPUBLISH`, `SSUBSCRIBE`), each on the shard
//! that owns its name's slot.
//!
//! The number of partitions is fixed for a deployment: a serial's partition
//! holds its high-water mark, and with another `P` the serial would find
//! another partition's mark and have events stored twice. The bridge
//! records the layout in [`LAYOUT`] and refuses to store with another.

use cwp::Serial;

use crate::{DriverFamily, UPLOADS};

/// The record of the layout a Redis (or cluster) was set up with: a hash
/// of [`layout_fields`], written once by the first bridge and checked by
/// every bridge before it stores anything.
pub const LAYOUT: &str = "cwp:layout";

/// The fields of [`LAYOUT`].
pub mod layout_fields {
    /// The number of partitions, decimal.
    pub const PARTITIONS: &str = "partitions";
    /// The event streams, in partition order, comma-separated: what a
    /// consumer reads (one consumer group per stream).
    pub const STREAMS: &str = "streams";

    /// Every field.
    pub const ALL: [&str; 2] = [PARTITIONS, STREAMS];
}

/// Redis Cluster's number of hash slots.
pub const SLOTS: u16 = 16_384;

/// The most partitions a layout may have.
pub const MAX_PARTITIONS: u16 = 1024;

/// How a deployment's keys are laid out: one of the two forms in the
/// module's table. Copy; every component of a deployment must use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layout {
    /// `None`: the single layout's names; `Some(p)`: `p` partitions.
    partitions: Option<u16>,
}

/// Why a layout cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The number of partitions is outside 1..=[`MAX_PARTITIONS`].
    #[error("the number of event partitions must be between 1 and {MAX_PARTITIONS}, not {0}")]
    Partitions(u32),
}

/// One partition of a [`Layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    index: u16,
    of: u16,
}

impl Layout {
    /// One Redis, the names Drover always used.
    pub const SINGLE: Self = Self { partitions: None };

    /// The layout of a deployment: on a cluster (`cluster`), or with more
    /// than one partition, the partitioned names; otherwise the single
    /// layout's.
    pub fn for_deployment(cluster: bool, partitions: u32) -> Result<Self, LayoutError> {
        let count = u16::try_from(partitions)
            .ok()
            .filter(|p| (1..=MAX_PARTITIONS).contains(p))
            .ok_or(LayoutError::Partitions(partitions))?;
        if !cluster && count == 1 {
            return Ok(Self::SINGLE);
        }
        Ok(Self {
            partitions: Some(count),
        })
    }

    /// `partitions` partitions, with the partitioned names even for one.
    pub fn partitioned(partitions: u32) -> Result<Self, LayoutError> {
        Self::for_deployment(true, partitions)
    }

    /// Whether names carry hash tags (the partitioned form).
    pub fn is_partitioned(&self) -> bool {
        self.partitions.is_some()
    }

    /// The number of partitions (1 for the single layout).
    pub fn partition_count(&self) -> u16 {
        self.partitions.unwrap_or(1)
    }

    /// Every partition, in order.
    pub fn partitions(&self) -> impl Iterator<Item = Partition> + use<> {
        let of = self.partition_count();
        (0..of).map(move |index| Partition { index, of })
    }

    /// The partition that holds `serial`'s events, mark and registry entry:
    /// FNV-1a (32 bits) of the serial's bytes, modulo the number of
    /// partitions. Stable across versions and machines: it decides where a
    /// serial's high-water mark lives.
    pub fn partition_of(&self, serial: &Serial) -> Partition {
        let of = self.partition_count();
        let index = (fnv1a32(serial.as_bytes()) % u32::from(of)) as u16;
        Partition { index, of }
    }

    /// The event stream of `partition`.
    pub fn events(&self, partition: Partition) -> String {
        self.in_partition(partition, "events", "cwp:events")
    }

    /// Every event stream, in partition order.
    pub fn event_streams(&self) -> Vec<String> {
        self.partitions().map(|p| self.events(p)).collect()
    }

    /// The exactly-once high-water marks of `partition`'s serials: a hash,
    /// field = serial, value = the highest event id stored for it.
    pub fn high_water_marks(&self, partition: Partition) -> String {
        self.in_partition(partition, "hwm", "cwp:hwm")
    }

    /// `serial`'s registry entry, a hash of [`crate::device_fields`], in its
    /// partition.
    pub fn device(&self, serial: &Serial) -> String {
        match self.partitions {
            None => ["cwp:device:", serial.as_str()].concat(),
            Some(_) => {
                let tag = self.partition_of(serial).tag();
                ["cwp:{", &tag, "}:device:", serial.as_str()].concat()
            }
        }
    }

    /// The glob matching every registry entry (`SCAN MATCH`, ACLs).
    pub fn device_pattern(&self) -> &'static str {
        match self.partitions {
            None => "cwp:device:*",
            Some(_) => "cwp:{p*}:device:*",
        }
    }

    /// The serial of a registry entry's name; `None` for any other name.
    pub fn serial_of_device(&self, name: &str) -> Option<Serial> {
        let serial = match self.partitions {
            None => name.strip_prefix("cwp:device:")?,
            Some(_) => name.strip_prefix("cwp:{p")?.split_once("}:device:")?.1,
        };
        let serial: Serial = serial.parse().ok()?;
        (self.device(&serial) == name).then_some(serial)
    }

    /// `serial`'s durable command ledger (a hash, [`crate::ledger_fields`]),
    /// in its partition: the scripts that store a command result settle
    /// the ledger in the same call, so on a cluster both share a slot.
    pub fn ledger(&self, serial: &Serial) -> String {
        match self.partitions {
            None => ["cwp:ledger:", serial.as_str()].concat(),
            Some(_) => {
                let tag = self.partition_of(serial).tag();
                ["cwp:{", &tag, "}:ledger:", serial.as_str()].concat()
            }
        }
    }

    /// The glob matching every ledger (`SCAN MATCH`, ACLs).
    pub fn ledger_pattern(&self) -> &'static str {
        match self.partitions {
            None => "cwp:ledger:*",
            Some(_) => "cwp:{p*}:ledger:*",
        }
    }

    /// When `partition`'s ledgers next have a command to expire: a sorted
    /// set, member = serial, score = Unix ms at or before which its ledger
    /// holds a command past its ttl (early is harmless: the sweep finds
    /// nothing and moves the score on). The bridge sweeps it, so that a
    /// command expires with an `EXPIRED` outcome while its device stays
    /// away, not only when its ledger is next read.
    pub fn ledger_due(&self, partition: Partition) -> String {
        self.in_partition(partition, "ledger-due", "cwp:ledger-due")
    }

    /// The rollouts `serial` is a target of (a sorted set: member = rollout
    /// id, score = the rollout's `created_ms`), in its partition: the
    /// script that opens a session counts it (the same slot as
    /// [`Layout::device`]). See [`crate::rollout`].
    pub fn file_offers(&self, serial: &Serial) -> String {
        match self.partitions {
            None => ["cwp:file-offers:", serial.as_str()].concat(),
            Some(_) => {
                let tag = self.partition_of(serial).tag();
                ["cwp:{", &tag, "}:file-offers:", serial.as_str()].concat()
            }
        }
    }

    /// A signed HTTP request's nonce (docs/HTTP.md), remembered fleet-wide
    /// for [`crate::HTTP_NONCE_TTL_MS`] so that the request is accepted
    /// once: a string set with `SET ... NX PX` by the HTTP gateways, in
    /// `serial`'s partition like the device's other keys. `nonce` is the
    /// request's 32 lowercase hex digits.
    pub fn http_nonce(&self, serial: &Serial, nonce: &str) -> String {
        match self.partitions {
            None => ["cwp:nonce:", serial.as_str(), ":", nonce].concat(),
            Some(_) => {
                let tag = self.partition_of(serial).tag();
                ["cwp:{", &tag, "}:nonce:", serial.as_str(), ":", nonce].concat()
            }
        }
    }

    /// The glob matching every remembered nonce (ACLs).
    pub fn http_nonce_pattern(&self) -> &'static str {
        match self.partitions {
            None => "cwp:nonce:*",
            Some(_) => "cwp:{p*}:nonce:*",
        }
    }

    /// The glob matching every device's rollout index (ACLs).
    pub fn file_offers_pattern(&self) -> &'static str {
        match self.partitions {
            None => "cwp:file-offers:*",
            Some(_) => "cwp:{p*}:file-offers:*",
        }
    }

    /// The stream of the durable commands' outcomes of `partition`'s
    /// devices ([`crate::outcome_fields`]).
    pub fn command_outcomes(&self, partition: Partition) -> String {
        self.in_partition(partition, "cmd-outcomes", "cwp:cmd-outcomes")
    }

    /// Every outcomes stream, in partition order.
    pub fn outcome_streams(&self) -> Vec<String> {
        self.partitions().map(|p| self.command_outcomes(p)).collect()
    }

    /// The set of the serials whose current session lives on `driver_id`.
    pub fn driver_devices(&self, driver_id: &str) -> String {
        self.per_driver(DRIVER_DEVICES, driver_id)
    }

    /// The driver id's current process instance.
    pub fn driver_instance(&self, driver_id: &str) -> String {
        self.per_driver(DRIVER_INSTANCE, driver_id)
    }

    /// The marker that upload `upload_id` of `serial` was recorded in
    /// [`UPLOADS`] (in the stream's slot when partitioned).
    pub fn upload_recorded(&self, serial: &Serial, upload_id: &str) -> String {
        match self.partitions {
            None => ["cwp:upload-recorded:", serial.as_str(), ":", upload_id].concat(),
            Some(_) => ["cwp:upload-recorded:{", UPLOADS, "}:", serial.as_str(), ":", upload_id].concat(),
        }
    }

    /// What the bridge records in [`LAYOUT`]: the number of partitions and
    /// the streams, as [`layout_fields`] pairs.
    pub fn record(&self) -> [(&'static str, String); 2] {
        [
            (layout_fields::PARTITIONS, self.partition_count().to_string()),
            (layout_fields::STREAMS, self.event_streams().join(",")),
        ]
    }

    fn in_partition(&self, partition: Partition, suffix: &str, single: &str) -> String {
        match self.partitions {
            None => single.to_owned(),
            Some(_) => ["cwp:{", &partition.tag(), "}:", suffix].concat(),
        }
    }

    fn per_driver(&self, family: DriverFamily, driver_id: &str) -> String {
        match self.partitions {
            None => family.name(driver_id),
            Some(_) => [family.prefix, "{", driver_id, "}"].concat(),
        }
    }
}

/// Each driver's set of the serials whose current session it holds.
const DRIVER_DEVICES: DriverFamily = DriverFamily::new("cwp:driver-devices:");
/// Each driver id's current process instance.
const DRIVER_INSTANCE: DriverFamily = DriverFamily::new("cwp:driver-instance:");

impl Partition {
    /// Its number, 0-based.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The hash tag of its keys: `p{index}`, or `p{index}.{k}` with the
    /// smallest `k` ≥ 1 whose slot falls in the partition's share of the
    /// slots (`[index·16384/P, (index+1)·16384/P)`), where `p{index}`'s
    /// does not.
    pub fn tag(&self) -> String {
        let share = u32::from(SLOTS);
        let low = u32::from(self.index) * share / u32::from(self.of);
        let high = (u32::from(self.index) + 1) * share / u32::from(self.of);
        let fits = |tag: &str| (low..high).contains(&u32::from(slot(tag.as_bytes())));
        let plain = format!("p{}", self.index);
        if fits(&plain) {
            return plain;
        }
        (1u32..)
            .map(|k| format!("p{}.{k}", self.index))
            .find(|tag| fits(tag))
            .expect("some suffix lands in every non-empty range of slots")
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.of)
    }
}

/// FNV-1a, 32 bits.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |hash, &byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// The Redis Cluster slot of a key: CRC-16/XMODEM of its hash tag (the text
/// between the first `{` and the next `}`, if not empty) or of the whole
/// key, modulo 16,384.
pub fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16_xmodem(hashed) % SLOTS
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(text: &str) -> Serial {
        text.parse().unwrap()
    }

    #[test]
    fn one_redis_keeps_the_names_drover_always_used() {
        let layout = Layout::for_deployment(false, 1).unwrap();
        assert_eq!(layout, Layout::SINGLE);
        let device = serial("CTRL-0042");
        let p = layout.partition_of(&device);
        assert_eq!(layout.events(p), "cwp:events");
        assert_eq!(layout.high_water_marks(p), "cwp:hwm");
        assert_eq!(layout.device(&device), "cwp:device:CTRL-0042");
        assert_eq!(layout.driver_devices("driver-1"), "cwp:driver-devices:driver-1");
        assert_eq!(layout.driver_instance("driver-1"), "cwp:driver-instance:driver-1");
        assert_eq!(
            layout.upload_recorded(&device, "u-1"),
            "cwp:upload-recorded:CTRL-0042:u-1"
        );
        assert_eq!(layout.event_streams(), ["cwp:events"]);
        assert_eq!(layout.ledger(&device), "cwp:ledger:CTRL-0042");
        assert_eq!(layout.command_outcomes(p), "cwp:cmd-outcomes");
        assert_eq!(layout.ledger_due(p), "cwp:ledger-due");
    }

    #[test]
    fn a_devices_ledger_shares_the_slot_of_its_partition() {
        let layout = Layout::partitioned(6).unwrap();
        for n in 0..200 {
            let device = serial(&format!("CTRL-{n}"));
            let p = layout.partition_of(&device);
            let events = slot(layout.events(p).as_bytes());
            assert_eq!(slot(layout.ledger(&device).as_bytes()), events);
            assert_eq!(slot(layout.command_outcomes(p).as_bytes()), events);
            assert_eq!(slot(layout.ledger_due(p).as_bytes()), events);
            assert_eq!(slot(layout.device(&device).as_bytes()), events);
        }
    }

    /// Redis's own vectors (the cluster specification and `CLUSTER KEYSLOT`).
    #[test]
    fn slots_are_redis_clusters() {
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(
            slot(b"foo{}{bar}"),
            slot(b"foo{}{bar}"),
            "an empty tag hashes the whole key"
        );
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn a_partitions_keys_and_its_devices_share_one_slot() {
        let layout = Layout::partitioned(12).unwrap();
        for n in 0..200 {
            let device = serial(&format!("DEV-{n}"));
            let p = layout.partition_of(&device);
            let here = slot(layout.events(p).as_bytes());
            assert_eq!(slot(layout.high_water_marks(p).as_bytes()), here);
            assert_eq!(slot(layout.device(&device).as_bytes()), here);
            assert_eq!(layout.serial_of_device(&layout.device(&device)), Some(device));
        }
        assert_eq!(
            slot(layout.driver_devices("driver-1").as_bytes()),
            slot(layout.driver_instance("driver-1").as_bytes())
        );
        let device = serial("CTRL-0042");
        assert_eq!(
            slot(layout.upload_recorded(&device, "u-1").as_bytes()),
            slot(UPLOADS.as_bytes())
        );
    }

    /// With equal slot ranges per master, `P` a multiple of the masters
    /// puts `P / masters` partitions on each.
    #[test]
    fn partitions_spread_evenly_over_the_slots() {
        for count in [1u32, 2, 3, 4, 6, 12, 64] {
            let layout = Layout::partitioned(count).unwrap();
            for p in layout.partitions() {
                let s = u32::from(slot(layout.events(p).as_bytes()));
                let share = u32::from(SLOTS) / count;
                let index = u32::from(p.index());
                assert!(
                    (index * u32::from(SLOTS) / count..(index + 1) * u32::from(SLOTS) / count).contains(&s),
                    "partition {p} of {count} is in slot {s} (share {share})"
                );
            }
        }
    }

    #[test]
    fn serials_spread_over_partitions() {
        let layout = Layout::partitioned(12).unwrap();
        let mut counts = [0u32; 12];
        for n in 0..12_000 {
            counts[usize::from(layout.partition_of(&serial(&format!("SIM-{n:06}"))).index())] += 1;
        }
        for count in counts {
            assert!((800..1200).contains(&count), "{counts:?}");
        }
    }

    /// The partition of a serial is part of the contract: the example
    /// consumer and any other producer compute the same.
    #[test]
    fn the_partition_hash_is_fnv1a_32() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn a_layout_has_between_one_and_1024_partitions() {
        assert_eq!(Layout::for_deployment(true, 0), Err(LayoutError::Partitions(0)));
        assert_eq!(Layout::for_deployment(false, 1025), Err(LayoutError::Partitions(1025)));
        assert_eq!(Layout::for_deployment(false, 3).unwrap().partition_count(), 3);
        assert!(Layout::for_deployment(true, 1).unwrap().is_partitioned());
    }

    #[test]
    fn the_layout_record_names_the_streams() {
        let layout = Layout::partitioned(2).unwrap();
        let [(partitions, count), (streams, names)] = layout.record();
        assert_eq!((partitions, count.as_str()), ("partitions", "2"));
        assert_eq!(streams, "streams");
        assert_eq!(names, layout.event_streams().join(","));
    }
}
