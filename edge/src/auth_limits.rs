//! Failed authentications, limited per source address, per serial and
//! source address, and (only if an operator opts in) per serial.
//!
//! Every `UNAUTHORIZED` (unknown serial or wrong mac, counted alike) adds
//! one to each counter it belongs to. A counter lives for
//! `DRIVER_AUTH_FAILURE_WINDOW` from its first failure. While a counter is
//! at its limit, a `HELLO` it covers is answered `ERROR BUSY` at once: no
//! `CHALLENGE`, no key lookup, and the same answer whether the serial
//! exists or not (a front end other than the driver refuses its own way,
//! as early and as uniformly). The variables named below are the driver's.
//!
//! - **Per address** (`DRIVER_AUTH_FAILURES_PER_ADDRESS`): a host guessing
//!   many serials' keys.
//! - **Per serial and address** (`DRIVER_AUTH_FAILURES_PER_SERIAL_ADDRESS`,
//!   the default guard for one serial): a host guessing one serial's key.
//!   A stranger failing for `CTRL-1` from one address does not keep the
//!   real `CTRL-1` out from another.
//! - **Per serial** (`DRIVER_AUTH_FAILURES_PER_SERIAL`, 0 by default): one
//!   serial's failures from anywhere. Device keys are 256 bits, so this
//!   adds no security against guessing, and it lets anyone who knows a
//!   serial keep that device out for the window: opt-in only.
//!
//! Addresses count as their IPv4 address or their IPv6 /64 (the block one
//! subscriber gets). Only failures count, never successful handshakes:
//! many honest devices share one address behind a carrier's NAT and all
//! reconnect after an outage. The counters are held in bounded caches
//! ([`moka`]), so a flood of random serials or addresses cannot grow them
//! without limit: beyond [`TRACKED_KEYS`] the least useful keys are dropped
//! first (keys that keep failing stay).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cwp::Serial;
use moka::sync::Cache;

/// Keys tracked per limiter at most (tens of bytes each).
pub const TRACKED_KEYS: u64 = 100_000;

/// Which limit refused a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limiter {
    /// Too many failures from the device's address.
    Address,
    /// Too many failures for the serial it claims, from its address.
    SerialAddress,
    /// Too many failures for the serial it claims, from anywhere (opt-in).
    Serial,
}

impl Limiter {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Address => "address",
            Self::SerialAddress => "serial_address",
            Self::Serial => "serial",
        }
    }
}

/// The address a failure counts against: IPv4 addresses whole, IPv6 by
/// their /64, the block one subscriber gets (a host can pick any address
/// inside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(u128);

impl From<IpAddr> for SourceKey {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => Self((u128::from(v6) & !u128::from(u64::MAX)) | 1 << 127),
        }
    }
}

/// The limits, each a number of failures per window (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureLimits {
    /// `DRIVER_AUTH_FAILURES_PER_ADDRESS`.
    pub per_address: u32,
    /// `DRIVER_AUTH_FAILURES_PER_SERIAL_ADDRESS`.
    pub per_serial_address: u32,
    /// `DRIVER_AUTH_FAILURES_PER_SERIAL`.
    pub per_serial: u32,
}

type Counter = Arc<AtomicU32>;

/// One limit's counters.
#[derive(Debug)]
struct Counters<K: std::hash::Hash + Eq + Send + Sync + 'static> {
    counts: Cache<K, Counter>,
    /// 0: no limit (nothing is counted).
    limit: u32,
}

impl<K: std::hash::Hash + Eq + Clone + Send + Sync + 'static> Counters<K> {
    fn new(limit: u32, window: Duration) -> Self {
        Self {
            counts: Cache::builder().max_capacity(TRACKED_KEYS).time_to_live(window).build(),
            limit,
        }
    }

    fn reached(&self, key: &K) -> bool {
        self.limit > 0
            && self
                .counts
                .get(key)
                .is_some_and(|count| count.load(Ordering::Relaxed) >= self.limit)
    }

    /// The counter's window starts at its first failure (the cache's time
    /// to live counts from insertion; later failures only increment it).
    fn count(&self, key: K) {
        if self.limit > 0 {
            self.counts
                .get_with(key, || Arc::new(AtomicU32::new(0)))
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The failure counters and their limits.
#[derive(Debug)]
pub struct AuthLimits {
    per_address: Counters<SourceKey>,
    per_serial_address: Counters<(Serial, SourceKey)>,
    per_serial: Counters<Serial>,
}

impl AuthLimits {
    /// `limits` failures per `window`.
    pub fn new(limits: FailureLimits, window: Duration) -> Self {
        Self {
            per_address: Counters::new(limits.per_address, window),
            per_serial_address: Counters::new(limits.per_serial_address, window),
            per_serial: Counters::new(limits.per_serial, window),
        }
    }

    /// Which limit, if any, refuses a `HELLO` from `source` for `serial`.
    pub fn refuses(&self, source: IpAddr, serial: &Serial) -> Option<Limiter> {
        let source = SourceKey::from(source);
        if self.per_address.reached(&source) {
            return Some(Limiter::Address);
        }
        if self.per_serial_address.reached(&(*serial, source)) {
            return Some(Limiter::SerialAddress);
        }
        if self.per_serial.reached(serial) {
            return Some(Limiter::Serial);
        }
        None
    }

    /// Counts one failed authentication from `source` for `serial`.
    pub fn failed(&self, source: IpAddr, serial: &Serial) {
        let source = SourceKey::from(source);
        self.per_address.count(source);
        self.per_serial_address.count((*serial, source));
        self.per_serial.count(*serial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(text: &str) -> Serial {
        text.parse().expect("valid serial")
    }

    fn address(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn a_stranger_failing_for_a_serial_does_not_keep_it_out_elsewhere() {
        let limits = AuthLimits::new(
            FailureLimits {
                per_address: 1_000,
                per_serial_address: 2,
                per_serial: 0,
            },
            WINDOW,
        );
        let stranger = address("192.0.2.1");
        let device = address("192.0.2.2");
        let target = serial("CTRL-1");
        limits.failed(stranger, &target);
        assert_eq!(limits.refuses(stranger, &target), None, "one failure is allowed");
        limits.failed(stranger, &target);
        assert_eq!(limits.refuses(stranger, &target), Some(Limiter::SerialAddress));
        assert_eq!(limits.refuses(device, &target), None, "the device itself, elsewhere");
        assert_eq!(
            limits.refuses(stranger, &serial("CTRL-2")),
            None,
            "the stranger's other serials"
        );
    }

    #[test]
    fn the_per_address_limit_covers_every_serial_from_that_address() {
        let limits = AuthLimits::new(
            FailureLimits {
                per_address: 3,
                per_serial_address: 0,
                per_serial: 0,
            },
            WINDOW,
        );
        let guesser = address("192.0.2.1");
        for name in ["A", "B", "C"] {
            limits.failed(guesser, &serial(name));
        }
        assert_eq!(limits.refuses(guesser, &serial("D")), Some(Limiter::Address));
        assert_eq!(limits.refuses(address("192.0.2.9"), &serial("D")), None);
    }

    #[test]
    fn the_opt_in_per_serial_limit_keeps_the_serial_out_everywhere() {
        let limits = AuthLimits::new(
            FailureLimits {
                per_address: 0,
                per_serial_address: 0,
                per_serial: 2,
            },
            WINDOW,
        );
        let target = serial("CTRL-1");
        limits.failed(address("192.0.2.1"), &target);
        limits.failed(address("192.0.2.1"), &target);
        assert_eq!(limits.refuses(address("192.0.2.2"), &target), Some(Limiter::Serial));
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_block_and_ipv4_mapped_as_ipv4() {
        let a = address("2001:db8:1:2::1");
        let b = address("2001:db8:1:2:ffff::9");
        let c = address("2001:db8:1:3::1");
        assert_eq!(SourceKey::from(a), SourceKey::from(b));
        assert_ne!(SourceKey::from(a), SourceKey::from(c));
        assert_eq!(
            SourceKey::from(address("::ffff:192.0.2.1")),
            SourceKey::from(address("192.0.2.1"))
        );
    }

    #[test]
    fn a_limit_of_zero_never_refuses() {
        let limits = AuthLimits::new(
            FailureLimits {
                per_address: 0,
                per_serial_address: 0,
                per_serial: 0,
            },
            WINDOW,
        );
        let source = address("192.0.2.1");
        for _ in 0..100 {
            limits.failed(source, &serial("CTRL-1"));
        }
        assert_eq!(limits.refuses(source, &serial("CTRL-1")), None);
    }
}
