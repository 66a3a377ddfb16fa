//! Scenarios: what the simulated fleet does. A scenario (the command
//! line's `--scenario`, [`Scenario`]) turns the configuration into a
//! [`Plan`], the [`Behaviour`] of each device; the
//! run (in `main`) is the same for all of them. A plan holds groups of
//! devices with different behaviours (scenario mixed), each group a share
//! of every [`MIX_PERIOD`] consecutive devices, counted fleet-wide so that
//! the workers of `--procs` keep the same blend.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use controller_sim::device::{Behaviour, EventLoad, Pacing, UploadJob};

use crate::cli::{Config, Scenario};

/// `EVENT.kind` of the events scenario's telemetry.
const TELEMETRY_KIND: u16 = 1;
/// Fewest unacknowledged events a device holds before it skips new ones.
const MIN_BACKLOG: usize = 64;
/// Seed of the upload scenario's content (the same in every run).
const UPLOAD_SEED: u64 = 0xC0FF_EE00_D00D;
/// Groups repeat every this many devices.
const MIX_PERIOD: u64 = 100;
/// Scenario mixed, per [`MIX_PERIOD`] devices: idle, sending events,
/// uploading. Most controllers of a real fleet are quiet most of the time;
/// a few report, fewer still upload a log or an image.
const MIX_IDLE: u64 = 90;
const MIX_EVENTS: u64 = 9;
const MIX_UPLOAD: u64 = 1;
const _: () = assert!(MIX_IDLE + MIX_EVENTS + MIX_UPLOAD == MIX_PERIOD);

impl Scenario {
    /// What each device of the run does.
    pub(crate) fn plan(self, config: &Config) -> Plan {
        let idle = Behaviour {
            firmware: config.firmware.clone(),
            command_delay: config.command_delay,
            ..Behaviour::default()
        };
        match self {
            Self::Idle | Self::Commands | Self::Storm => Plan::uniform(idle),
            Self::Files => Plan::uniform(Behaviour {
                files: Some(config.file_policy.clone()),
                events: if config.file_events {
                    event_load(config, config.devices)
                } else {
                    None
                },
                ..idle
            }),
            Self::Events => Plan::uniform(Behaviour {
                events: event_load(config, config.devices),
                ..idle
            }),
            Self::Upload => Plan::uniform(Behaviour {
                upload: Some(upload_job(config)),
                ..idle
            }),
            Self::Churn => Plan::uniform(Behaviour {
                churn: churn_lifetime(config.churn, config.devices),
                ..idle
            }),
            Self::Mixed => {
                let mut plan = Plan {
                    groups: vec![
                        (MIX_IDLE, Arc::new(idle.clone())),
                        (MIX_EVENTS, Arc::new(idle.clone())),
                        (MIX_UPLOAD, Arc::new(idle.clone())),
                    ],
                    offset: config.device_offset,
                };
                let senders = plan.count(1, config.devices);
                plan.groups[1].1 = Arc::new(Behaviour {
                    events: event_load(config, senders),
                    ..idle.clone()
                });
                plan.groups[2].1 = Arc::new(Behaviour {
                    upload: Some(upload_job(config)),
                    ..idle
                });
                plan
            }
        }
    }
}

/// The mean session lifetime that makes `devices` devices reconnect
/// `churn` times per second in all: each drops after an exponentially
/// distributed lifetime, so the drops form a Poisson stream of that rate.
pub(crate) fn churn_lifetime(churn: f64, devices: u64) -> Option<Duration> {
    if churn <= 0.0 || devices == 0 {
        return None;
    }
    Duration::try_from_secs_f64(devices as f64 / churn).ok()
}

/// Events: `--rate` spread over the `senders` devices that send,
/// `--event-size` bytes each, all sharing one body buffer.
fn event_load(config: &Config, senders: u64) -> Option<EventLoad> {
    let devices = usize::try_from(senders).unwrap_or(usize::MAX);
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

/// The behaviour of every device of a run: groups, each a share of every
/// [`MIX_PERIOD`] devices (or one group for all).
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// (devices per period, behaviour), in order.
    groups: Vec<(u64, Arc<Behaviour>)>,
    /// The fleet-wide index of this process's first device.
    offset: u64,
}

impl Plan {
    /// Every device behaves the same.
    fn uniform(behaviour: Behaviour) -> Self {
        Self {
            groups: vec![(1, Arc::new(behaviour))],
            offset: 0,
        }
    }

    /// The group of device `index` of this process.
    fn group(&self, index: u64) -> usize {
        let period: u64 = self.groups.iter().map(|(share, _)| share).sum();
        let mut slot = (self.offset + index) % period.max(1);
        for (group, (share, _)) in self.groups.iter().enumerate() {
            if slot < *share {
                return group;
            }
            slot -= share;
        }
        0
    }

    /// How many of this process's first `devices` devices are in `group`.
    fn count(&self, group: usize, devices: u64) -> u64 {
        (0..devices).filter(|&index| self.group(index) == group).count() as u64
    }

    /// The behaviour of device `index` of this process.
    pub(crate) fn behaviour(&self, index: u64) -> Arc<Behaviour> {
        Arc::clone(&self.groups[self.group(index)].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_covers_two_seconds_and_four_bursts() {
        let tick = Duration::from_millis(20);
        let slow = Pacing::spread(100_000.0, 100_000, tick).unwrap();
        assert_eq!(backlog(&slow), MIN_BACKLOG);
        let fast = Pacing::spread(100_000.0, 10, tick).unwrap(); // 10,000/s each
        assert_eq!(backlog(&fast), 20_000);
    }

    fn config(line: &str) -> Config {
        let key = "00".repeat(32);
        let mut args = vec!["controller-sim", "--master-key", &key];
        args.extend(line.split_whitespace());
        Config::from_args(<crate::cli::Args as clap::Parser>::try_parse_from(args).unwrap()).unwrap()
    }

    #[test]
    fn mixed_is_ninety_idle_nine_sending_one_uploading_per_hundred() {
        let config = config("--scenario mixed --devices 1000 --rate 900");
        let plan = Scenario::Mixed.plan(&config);
        let (mut idle, mut sending, mut uploading) = (0, 0, 0);
        for index in 0..1000 {
            let behaviour = plan.behaviour(index);
            match (&behaviour.events, &behaviour.upload) {
                (None, None) => idle += 1,
                (Some(load), None) => {
                    sending += 1;
                    // 900 events/s over the 90 senders.
                    assert!((load.pacing.rate - 10.0).abs() < 1e-9, "{}", load.pacing.rate);
                }
                (None, Some(_)) => uploading += 1,
                (Some(_), Some(_)) => panic!("a device both sends and uploads"),
            }
            assert_eq!(behaviour.command_delay, config.command_delay);
        }
        assert_eq!((idle, sending, uploading), (900, 90, 10));
        // Groups are counted fleet-wide: a worker whose first device is the
        // fleet's 95th starts among the senders.
        let worker = self::config("--scenario mixed --devices 10 --rate 10 --device-offset 95");
        let plan = Scenario::Mixed.plan(&worker);
        let kinds: Vec<bool> = (0..10).map(|i| plan.behaviour(i).events.is_some()).collect();
        assert_eq!(
            kinds,
            [true, true, true, true, false, false, false, false, false, false]
        );
    }

    #[test]
    fn every_scenario_answers_commands_and_only_its_own_devices_talk() {
        for (scenario, events, upload, churn) in [
            (Scenario::Idle, false, false, false),
            (Scenario::Commands, false, false, false),
            (Scenario::Storm, false, false, false),
            (Scenario::Events, true, false, false),
            (Scenario::Upload, false, true, false),
            (Scenario::Churn, false, false, true),
        ] {
            let config = config(&format!(
                "--scenario {} --devices 100 --churn 10 --command-delay 5ms",
                scenario.name()
            ));
            let behaviour = scenario.plan(&config).behaviour(42);
            assert_eq!(behaviour.events.is_some(), events, "{scenario:?}");
            assert_eq!(behaviour.upload.is_some(), upload, "{scenario:?}");
            assert_eq!(behaviour.churn.is_some(), churn, "{scenario:?}");
            assert_eq!(behaviour.command_delay, Duration::from_millis(5));
        }
    }

    #[test]
    fn file_devices_send_events_only_when_asked() {
        let quiet = config("--scenario files --devices 10");
        let behaviour = Scenario::Files.plan(&quiet).behaviour(3);
        assert!(behaviour.files.is_some() && behaviour.events.is_none());
        let talking = config("--scenario files --devices 10 --file-events --rate 10");
        let behaviour = Scenario::Files.plan(&talking).behaviour(3);
        assert!(behaviour.files.is_some() && behaviour.events.is_some());
    }

    #[test]
    fn churn_lifetimes_make_the_requested_reconnect_rate() {
        // 100,000 devices, 500 reconnects/s: each lives 200 s on average.
        assert_eq!(churn_lifetime(500.0, 100_000), Some(Duration::from_secs(200)));
        assert_eq!(churn_lifetime(0.0, 100), None);
        let config = config("--scenario churn --devices 100 --churn 50");
        let behaviour = Scenario::Churn.plan(&config).behaviour(0);
        assert_eq!(behaviour.churn, Some(Duration::from_secs(2)));
    }

    #[test]
    fn a_storm_connects_all_at_once() {
        let config = config("--scenario storm --devices 100 --connect-rate 50");
        assert_eq!(config.connect_rate, 0.0);
    }

    #[test]
    fn the_body_has_the_requested_size() {
        assert_eq!(event_body(0).len(), 0);
        let body = event_body(300);
        assert_eq!((body.len(), body[255], body[256]), (300, 255, 0));
    }
}
