//! The process title `ps aux` shows, refreshed every second:
//! `http-gateway v0.1.0 port: 8080 connections: 12 events: 1234 inflight: 3.2MB`.

use std::sync::Arc;
use std::time::Duration;

use drover_service::drain;
use process_title::ProcessTitle;

use crate::metrics::{LineLabel, Metrics};

/// Formats the title.
pub fn format_title(port: u16, connections: i64, events: u64, inflight_bytes: i64, draining: bool) -> String {
    let mut title = format!(
        "http-gateway v{} port: {port} connections: {connections} events: {events} inflight: {:.1}MB",
        env!("CARGO_PKG_VERSION"),
        inflight_bytes as f64 / 1e6
    );
    if draining {
        title.push_str(" (draining)");
    }
    title
}

/// Refreshes the title every second until `stop` is signalled.
pub async fn refresh(
    port: u16,
    metrics: Arc<Metrics>,
    title: ProcessTitle,
    draining: drain::Watch,
    stop: drain::Watch,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stored = metrics.lines.get_or_create(&LineLabel { result: "stored" }).clone();
    loop {
        tokio::select! {
            () = stop.signaled() => return,
            _ = tick.tick() => {}
        }
        title.set(&format_title(
            port,
            metrics.connections.get(),
            stored.get(),
            metrics.inflight_bytes.get(),
            draining.is_signaled(),
        ));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_title_says_the_port_the_connections_and_the_events() {
        assert_eq!(
            super::format_title(8080, 3, 1234, 3_200_000, false),
            format!(
                "http-gateway v{} port: 8080 connections: 3 events: 1234 inflight: 3.2MB",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert!(super::format_title(8080, 0, 0, 0, true).ends_with(" (draining)"));
    }
}
