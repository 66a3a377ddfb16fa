//! Scenarios: what the simulated fleet does. A scenario turns the
//! configuration into a [`Plan`], the [`Behaviour`] of each device; the
//! run (in `main`) is the same for all of them.
//!
//! `events` and `upload` exist so far. The others slot in here: `idle` (no
//! events, heartbeats only), `commands` (devices answer commands an
//! operator publishes), `churn` and `storm` (reconnects), and `mixed`
//! (groups of devices with different behaviours, hence a `Plan` holds
//! several).

use std::sync::Arc;

use bytes::Bytes;
use controller_sim::device::{Behaviour, EventLoad, Pacing, UploadJob};

use crate::cli::Config;

/// `EVENT.kind` of the events scenario's telemetry.
const TELEMETRY_KIND: u16 = 1;
/// Fewest unacknowledged events a device holds before it skips new ones.
const MIN_BACKLOG: usize = 64;
/// Seed of the upload scenario's content (the same in every run).
const UPLOAD_SEED: u64 = 0xC0FF_EE00_D00D;

/// What the devices do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    /// Every device sends events at its share of --rate, answers commands,
    /// and keeps its session alive with heartbeats.
    Events,
    /// Every device uploads --upload-bytes once (no events), resuming
    /// after reconnects; the run ends when all uploads are done.
    Upload,
}

impl Scenario {
    /// The name on the command line and in the summary.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Upload => "upload",
        }
    }

    /// What each device of the run does.
    pub(crate) fn plan(self, config: &Config) -> Plan {
        match self {
            Self::Events => Plan::uniform(Behaviour {
                firmware: config.firmware.clone(),
                events: event_load(config),
                command_delay: config.command_delay,
                ..Behaviour::default()
            }),
            Self::Upload => Plan::uniform(Behaviour {
                firmware: config.firmware.clone(),
                upload: Some(upload_job(config)),
                command_delay: config.command_delay,
                ..Behaviour::default()
            }),
        }
    }
}

/// The events of the `events` scenario: `--rate` spread over the devices,
/// `--event-size` bytes each, all sharing one body buffer.
fn event_load(config: &Config) -> Option<EventLoad> {
    let devices = usize::try_from(config.devices).unwrap_or(usize::MAX);
    let pacing = Pacing::spread(config.rate, devices, config.burst_interval)?;
    Some(EventLoad {
        pacing,
        kind: TELEMETRY_KIND,
        body: event_body(config.event_size),
        backlog: backlog(&pacing),
    })
}

/// The upload scenario's job: the same reproducible content for every
/// device, one buffer shared by all.
fn upload_job(config: &Config) -> UploadJob {
    // --upload-bytes was checked to fit in memory.
    let size = usize::try_from(config.upload_bytes).unwrap_or(usize::MAX);
    let mut job = UploadJob::new(
        UploadJob::content(size, UPLOAD_SEED),
        config.block_size,
        "sim-upload.bin",
    );
    job.window = config.upload_window;
    job
}

/// A recognisable body: `0, 1, 2, …` modulo 256.
fn event_body(size: usize) -> Bytes {
    (0..size).map(|i| (i % 256) as u8).collect::<Vec<_>>().into()
}

/// How many unacknowledged events a device holds: two seconds of its rate
/// and four bursts, at least [`MIN_BACKLOG`]. Enough to ride out a slow
/// moment; bounded, so that a stalled server does not eat the machine's
/// memory across 100,000 devices.
pub(crate) fn backlog(pacing: &Pacing) -> usize {
    let seconds = (pacing.rate * 2.0).ceil();
    let bursts = (pacing.burst() * 4.0).ceil();
    // Both are small positive whole numbers.
    (seconds.max(bursts) as usize).max(MIN_BACKLOG)
}

/// The behaviour of every device of a run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    behaviours: Vec<Arc<Behaviour>>,
}

impl Plan {
    /// Every device behaves the same.
    fn uniform(behaviour: Behaviour) -> Self {
        Self {
            behaviours: vec![Arc::new(behaviour)],
        }
    }

    /// The behaviour of device `index`: groups in turn.
    pub(crate) fn behaviour(&self, index: u64) -> Arc<Behaviour> {
        let group = usize::try_from(index).unwrap_or(0) % self.behaviours.len();
        Arc::clone(&self.behaviours[group])
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn backlog_covers_two_seconds_and_four_bursts() {
        let tick = Duration::from_millis(20);
        let slow = Pacing::spread(100_000.0, 100_000, tick).unwrap();
        assert_eq!(backlog(&slow), MIN_BACKLOG);
        let fast = Pacing::spread(100_000.0, 10, tick).unwrap(); // 10,000/s each
        assert_eq!(backlog(&fast), 20_000);
    }

    #[test]
    fn the_body_has_the_requested_size() {
        assert_eq!(event_body(0).len(), 0);
        let body = event_body(300);
        assert_eq!((body.len(), body[255], body[256]), (300, 255, 0));
    }
}
