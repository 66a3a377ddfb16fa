//! The process title `ps aux` shows, refreshed every second:
//! `driver v0.1.0 port: 5001 controllers: 3 [CTRL-1 CTRL-2 CTRL-3] events: 1234`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use drover_service::drain;
use process_title::ProcessTitle;

use crate::metrics::Metrics;
use crate::registry::Registry;

/// What the title shows, and where it reads it.
#[derive(Debug)]
pub struct TitleSource {
    /// The device port.
    pub port: u16,
    /// Serials named before `+N more` (`DRIVER_TITLE_SERIALS`).
    pub serials_shown: usize,
    /// The live sessions.
    pub registry: Arc<Registry>,
    /// `events_received`.
    pub metrics: Arc<Metrics>,
    /// Signalled when the driver drains: `(draining)`.
    pub draining: drain::Watch,
}

/// Formats the title: the first `limit` serials in order, then `+N more`.
pub fn format_title(port: u16, serials: &[cwp::Serial], total: usize, events: u64, draining: bool) -> String {
    let mut title = format!(
        "driver v{} port: {port} controllers: {total}",
        env!("CARGO_PKG_VERSION")
    );
    if !serials.is_empty() {
        title.push_str(" [");
        for (i, serial) in serials.iter().enumerate() {
            if i > 0 {
                title.push(' ');
            }
            title.push_str(serial.as_str());
        }
        if total > serials.len() {
            let _ = write!(title, " +{} more", total - serials.len());
        }
        title.push(']');
    }
    let _ = write!(title, " events: {events}");
    if draining {
        title.push_str(" (draining)");
    }
    title
}

/// Refreshes the title every second until `stop` is signalled.
pub async fn refresh(source: TitleSource, title: ProcessTitle, stop: drain::Watch) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.signaled() => return,
            _ = tick.tick() => {}
        }
        let (serials, total) = source.registry.sample(source.serials_shown);
        title.set(&format_title(
            source.port,
            &serials,
            total,
            source.metrics.events_received.get(),
            source.draining.is_signaled(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_serials_up_to_the_limit_then_counts_the_rest() {
        let serials: Vec<cwp::Serial> = ["CTRL-1", "CTRL-2", "CTRL-3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            format_title(5001, &serials, 3, 1234, false),
            format!(
                "driver v{} port: 5001 controllers: 3 [CTRL-1 CTRL-2 CTRL-3] events: 1234",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert!(format_title(5001, &serials[..2], 10, 0, false).ends_with("[CTRL-1 CTRL-2 +8 more] events: 0"));
        assert!(format_title(5001, &[], 0, 0, true).ends_with("controllers: 0 events: 0 (draining)"));
    }
}
