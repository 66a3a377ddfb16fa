//! When a device acts: how a fleet-wide event rate becomes per-device
//! bursts. (How long it waits before reconnecting is
//! [`drover_service::backoff::Backoff`], the one backoff of every Drover
//! process.)

use std::time::Duration;

/// How one device paces its events: a steady average rate, sent in bursts
/// at most once per `interval`, so that a device at 1,000 events/s writes
/// ten bursts of 100 rather than arming a timer per event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pacing {
    /// Events per second this device makes on average.
    pub rate: f64,
    /// Time between bursts.
    pub interval: Duration,
}

impl Pacing {
    /// Spreads `total_rate` events/s evenly over `devices`. A device whose
    /// share is below one event per `min_interval` sends single events
    /// `1 / rate` apart; a faster one sends a burst every `min_interval`.
    /// `None` when there is nothing to send.
    pub fn spread(total_rate: f64, devices: usize, min_interval: Duration) -> Option<Self> {
        if !total_rate.is_finite() || total_rate <= 0.0 || devices == 0 {
            return None;
        }
        let rate = total_rate / devices as f64;
        let min_interval = min_interval.max(Duration::from_millis(1));
        // One event per burst at most 1/rate apart, capped at one hour so
        // that a tiny share still sends now and then.
        let single = Duration::try_from_secs_f64(1.0 / rate).unwrap_or(Duration::MAX);
        let interval = single.clamp(min_interval, Duration::from_secs(3600).max(min_interval));
        Some(Self { rate, interval })
    }

    /// Events per burst, on average.
    pub fn burst(&self) -> f64 {
        self.rate * self.interval.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(20);

    #[test]
    fn a_high_rate_is_sent_in_bursts_every_tick() {
        // 100,000 events/s over 1,000 devices: 100/s each, 2 per 20 ms burst.
        let pacing = Pacing::spread(100_000.0, 1_000, TICK).unwrap();
        assert_eq!(pacing.rate, 100.0);
        assert_eq!(pacing.interval, TICK);
        assert!((pacing.burst() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_low_rate_sends_single_events_spaced_out() {
        // 100,000 events/s over 100,000 devices: one per second each.
        let pacing = Pacing::spread(100_000.0, 100_000, TICK).unwrap();
        assert_eq!(pacing.interval, Duration::from_secs(1));
        assert!((pacing.burst() - 1.0).abs() < 1e-9);
        // 10 events/s over 40 devices: one every 4 s.
        let pacing = Pacing::spread(10.0, 40, TICK).unwrap();
        assert_eq!(pacing.interval, Duration::from_secs(4));
    }

    #[test]
    fn the_fleet_total_is_kept() {
        for (rate, devices) in [(1.0, 3), (7_777.0, 13), (250_000.0, 100_000), (5.0, 1)] {
            let pacing = Pacing::spread(rate, devices, TICK).unwrap();
            let total = pacing.burst() / pacing.interval.as_secs_f64() * devices as f64;
            assert!((total - rate).abs() / rate < 1e-9, "{rate} over {devices}: {total}");
        }
    }

    #[test]
    fn no_rate_no_pacing() {
        assert_eq!(Pacing::spread(0.0, 10, TICK), None);
        assert_eq!(Pacing::spread(10.0, 0, TICK), None);
        assert_eq!(Pacing::spread(f64::NAN, 10, TICK), None);
        assert_eq!(
            Pacing::spread(1e-12, 1, TICK).unwrap().interval,
            Duration::from_secs(3600)
        );
    }
}
