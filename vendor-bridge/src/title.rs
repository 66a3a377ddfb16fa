//! The process title `ps aux` shows, refreshed every second:
//! `vendor-bridge v0.1.0 port: 50051 drivers: 4 events: 123456`, followed
//! by ` durability: WEAK, refusing` (or `unchecked`, or `WEAK (relaxed)`)
//! while Redis is not verified to fsync every write.

use std::sync::Arc;
use std::time::Duration;

use drover_service::drain;
use process_title::ProcessTitle;

use crate::Stats;
use crate::stats::DurabilityStatus;

/// Formats the title.
pub fn format_title(port: u16, drivers: u64, events_stored: u64, durability: DurabilityStatus) -> String {
    format!(
        "vendor-bridge v{} port: {port} drivers: {drivers} events: {events_stored}{}",
        env!("CARGO_PKG_VERSION"),
        durability.title_suffix()
    )
}

/// Refreshes the title every second until `stop` is signalled.
pub async fn refresh(title: ProcessTitle, port: u16, stats: Arc<Stats>, stop: drain::Watch) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.signaled() => return,
            _ = tick.tick() => {}
        }
        let snapshot = stats.snapshot();
        title.set(&format_title(
            port,
            snapshot.connected_drivers,
            snapshot.events_stored,
            snapshot.durability,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_port_drivers_and_events() {
        assert_eq!(
            format_title(50051, 4, 1234, DurabilityStatus::Fsynced),
            format!(
                "vendor-bridge v{} port: 50051 drivers: 4 events: 1234",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[test]
    fn says_when_redis_is_not_verified_durable() {
        assert!(format_title(50051, 4, 1234, DurabilityStatus::WeakRefusing).ends_with("durability: WEAK, refusing"));
        assert!(format_title(50051, 4, 1234, DurabilityStatus::WeakAccepted).ends_with("durability: WEAK (relaxed)"));
        assert!(format_title(50051, 4, 1234, DurabilityStatus::Unchecked).ends_with("durability: unchecked"));
    }
}
