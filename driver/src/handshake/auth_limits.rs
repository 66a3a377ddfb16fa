//! Failed authentications, limited per source address and per serial.
//!
//! Every `UNAUTHORIZED` (unknown serial or wrong mac, counted alike) adds
//! one to a counter for the device's address and one for the serial it
//! claimed. A counter lives for `DRIVER_AUTH_FAILURE_WINDOW` from its first
//! failure. While a counter is at its limit, a `HELLO` from that address or
//! for that serial is answered `ERROR BUSY` at once: no `CHALLENGE`, no key
//! lookup, and the same answer whether the serial exists or not.
//!
//! Only failures count, never successful handshakes: many honest devices
//! share one address behind a carrier's NAT and all reconnect after an
//! outage. The counters are held in bounded caches ([`moka`]), so a flood
//! of random serials or addresses cannot grow them without limit: beyond
//! [`TRACKED_KEYS`] the least useful keys are dropped first (keys that keep
//! failing stay).

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
    /// Too many failures for the serial it claims.
    Serial,
}

impl Limiter {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Address => "address",
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

type Failures = Cache<SourceKey, Arc<AtomicU32>>;

/// The two failure counters and their limits.
#[derive(Debug)]
pub struct AuthLimits {
    per_address: Failures,
    per_serial: Cache<Serial, Arc<AtomicU32>>,
    /// `DRIVER_AUTH_FAILURES_PER_ADDRESS`; 0: no limit.
    address_limit: u32,
    /// `DRIVER_AUTH_FAILURES_PER_SERIAL`; 0: no limit.
    serial_limit: u32,
}

impl AuthLimits {
    /// Limits of `per_address` and `per_serial` failures per `window`.
    pub fn new(per_address: u32, per_serial: u32, window: Duration) -> Self {
        Self {
            per_address: Cache::builder().max_capacity(TRACKED_KEYS).time_to_live(window).build(),
            per_serial: Cache::builder().max_capacity(TRACKED_KEYS).time_to_live(window).build(),
            address_limit: per_address,
            serial_limit: per_serial,
        }
    }

    /// Which limit, if any, refuses a `HELLO` from `source` for `serial`.
    pub fn refuses(&self, source: IpAddr, serial: &Serial) -> Option<Limiter> {
        let reached = |count: Option<Arc<AtomicU32>>, limit: u32| {
            limit > 0 && count.is_some_and(|count| count.load(Ordering::Relaxed) >= limit)
        };
        if reached(self.per_address.get(&SourceKey::from(source)), self.address_limit) {
            return Some(Limiter::Address);
        }
        if reached(self.per_serial.get(serial), self.serial_limit) {
            return Some(Limiter::Serial);
        }
        None
    }

    /// Counts one failed authentication. The counter's window starts at
    /// its first failure (the cache's time to live counts from insertion;
    /// later failures only increment it).
    pub fn failed(&self, source: IpAddr, serial: &Serial) {
        let new_counter = || Arc::new(AtomicU32::new(0));
        if self.address_limit > 0 {
            self.per_address
                .get_with(SourceKey::from(source), new_counter)
                .fetch_add(1, Ordering::Relaxed);
        }
        if self.serial_limit > 0 {
            self.per_serial
                .get_with(*serial, new_counter)
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(text: &str) -> Serial {
        text.parse().expect("valid serial")
    }

    #[test]
    fn each_limit_refuses_once_reached_and_only_its_own_key() {
        let limits = AuthLimits::new(3, 2, Duration::from_secs(60));
        let attacker: IpAddr = "192.0.2.1".parse().expect("address");
        let honest: IpAddr = "192.0.2.2".parse().expect("address");
        let target = serial("CTRL-1");
        limits.failed(attacker, &target);
        assert_eq!(limits.refuses(attacker, &target), None, "one failure is allowed");
        limits.failed(attacker, &target);
        assert_eq!(limits.refuses(honest, &target), Some(Limiter::Serial));
        assert_eq!(limits.refuses(honest, &serial("CTRL-2")), None);
        limits.failed(attacker, &serial("CTRL-3"));
        assert_eq!(limits.refuses(attacker, &serial("CTRL-2")), Some(Limiter::Address));
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_block_and_ipv4_mapped_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("address");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("address");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("address");
        assert_eq!(SourceKey::from(a), SourceKey::from(b));
        assert_ne!(SourceKey::from(a), SourceKey::from(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("address");
        let plain: IpAddr = "192.0.2.1".parse().expect("address");
        assert_eq!(SourceKey::from(mapped), SourceKey::from(plain));
    }

    #[test]
    fn a_limit_of_zero_never_refuses() {
        let limits = AuthLimits::new(0, 0, Duration::from_secs(60));
        let source: IpAddr = "192.0.2.1".parse().expect("address");
        for _ in 0..100 {
            limits.failed(source, &serial("CTRL-1"));
        }
        assert_eq!(limits.refuses(source, &serial("CTRL-1")), None);
    }
}
