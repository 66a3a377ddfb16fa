//! The command line (every option also settable from the environment),
//! parsed once into a typed [`Config`]; every bad value is reported
//! together.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::Parser;
use cwp::{MasterKey, Serial};

const AFTER_HELP: &str = "\
Serials are <prefix><number>, numbered from --first-serial and zero-padded to
at least six digits (SIM-000001, SIM-000002, ...); each device's key is
HMAC-SHA256(master_key, \"CWP1 device key\" || serial), as the driver derives it.

At the end of --duration the devices stop making events, wait up to --grace
for the acks of what they sent, say BYE and the summary is printed. Ctrl-C
(or SIGTERM) ends the run early (twice: at once).

Scenarios (every device answers COMMANDs after --command-delay, keeps its
session alive with heartbeats, resends unacknowledged events after a
reconnect and honours BYE DRAINING):
  idle      devices connect (at --connect-rate) and hold their sessions
  events    every device sends events at its share of --rate
  upload    every device uploads --upload-bytes (the same reproducible
            content for all) in BLOCKs of --block-size, resuming after
            reconnects; the run ends when every upload is done (or at
            --duration, then --grace); the summary reports the payload MB/s
            from the first UPLOAD_BEGIN to the last UPLOAD_DONE
  commands  idle devices answering commands; the operator (not the
            simulator) publishes them, e.g. with bench-commands; the
            summary gives COMMAND -> ACK-of-result latency
  churn     idle devices that drop their connection (no BYE) and reconnect
            at once, --churn times per second across the fleet (random,
            exponentially distributed session lifetimes)
  storm     all devices connect at once (--connect-rate is ignored); the
            summary's handshake rate is devices / time to the last first
            WELCOME; then --storm-then end (default) or hold until --duration
  mixed     of every 100 devices: 90 idle, 9 send events (--rate spread
            over them), 1 uploads --upload-bytes; all answer commands

Many devices: each device holds a socket, and one process may have only as
many open files as its limit (`ulimit -Hn`); --procs N runs N worker
processes (the same binary) with disjoint serial ranges and even shares of
--devices, --rate, --connect-rate, --churn and --source-ips, and prints one
summary (counts and rates added, latency histograms merged). Each source
address offers ~28,000 ports per destination: spread 100,000 devices over
at least 4 of them (--source-ips 127.0.0.2-127.0.0.9).

--protocol mqtt (scenario idle only): each device is an MQTT 3.1.1 client
instead (client id = serial, clean session), CONNECTs to --target (a
broker) and sends PINGREQ every --mqtt-keep-alive: the peer of the idle
benchmark.

Exit status: 0 on success, 1 if no device connected, 2 on a bad option,
3 if --verify-redis found a lost or duplicated event (or could not check).

Logs go to stderr; RUST_LOG sets their level (default: warn).";

/// Simulated CWP/1 controllers: connects a fleet of devices to HAProxy or a
/// driver, runs a scenario, and reports what they measured.
// The last of a repeated option wins: the workers of --procs get the
// parent's command line followed by their own share.
#[derive(Debug, Parser)]
#[command(name = "controller-sim", version, after_help = AFTER_HELP, args_override_self = true)]
pub(crate) struct Args {
    /// Where the devices connect: HAProxy or a driver, host:port; several,
    /// comma-separated, share the devices in turn.
    #[arg(long, env = "SIM_TARGET", default_value = "127.0.0.1:7000")]
    target: String,

    /// How many devices to simulate.
    #[arg(long, env = "SIM_DEVICES", default_value_t = 100)]
    devices: u64,

    /// Serial prefix; the number follows.
    #[arg(long, env = "SIM_SERIAL_PREFIX", default_value = "SIM-")]
    serial_prefix: String,

    /// Number of the first serial (several processes take disjoint ranges).
    #[arg(long, env = "SIM_FIRST_SERIAL", default_value_t = 1)]
    first_serial: u64,

    /// The fleet's master key, 64 hex digits; device keys derive from it.
    #[arg(long, env = "CWP_MASTER_KEY", hide_env_values = true, value_name = "HEX")]
    master_key: Option<String>,

    /// What the devices do.
    #[arg(long, env = "SIM_SCENARIO", value_enum, default_value_t = Scenario::Events)]
    scenario: Scenario,

    /// Worker processes; each takes an even share of the devices (at most
    /// its open-file limit minus a reserve each).
    #[arg(long, env = "SIM_PROCS", default_value_t = 1)]
    procs: usize,

    /// The wire protocol of the devices: cwp, or mqtt (the idle peer).
    #[arg(long, env = "SIM_PROTOCOL", value_enum, default_value_t = Protocol::Cwp)]
    protocol: Protocol,

    /// MQTT keep-alive and PINGREQ period (--protocol mqtt).
    #[arg(long, env = "SIM_MQTT_KEEP_ALIVE", default_value = "30s")]
    mqtt_keep_alive: String,

    /// Reconnects per second across the fleet (scenario churn).
    #[arg(long, env = "SIM_CHURN", default_value_t = 0.0)]
    churn: f64,

    /// After a storm: end the run once every device has connected, or
    /// hold the sessions until --duration.
    #[arg(long, env = "SIM_STORM_THEN", value_enum, default_value_t = StormThen::End)]
    storm_then: StormThen,

    /// Events per second across all devices, spread evenly.
    #[arg(long, env = "SIM_RATE", default_value_t = 1000.0)]
    rate: f64,

    /// Bytes of body per event.
    #[arg(long, env = "SIM_EVENT_SIZE", value_name = "BYTES", default_value_t = 64)]
    event_size: usize,

    /// How long devices make events (e.g. 30s, 500ms, 2m, 1h).
    #[arg(long, env = "SIM_DURATION", default_value = "30s")]
    duration: String,

    /// Handshakes per second while the fleet connects; 0 = all at once.
    #[arg(long, env = "SIM_CONNECT_RATE", default_value_t = 0.0)]
    connect_rate: f64,

    /// Local source addresses, spread over the devices: addresses and
    /// ranges, comma-separated (127.0.0.1-127.0.0.20,127.0.1.1).
    #[arg(long, env = "SIM_SOURCE_IPS", value_name = "RANGES")]
    source_ips: Option<String>,

    /// Shortest time between two bursts of one device's events.
    #[arg(long, env = "SIM_BURST_INTERVAL", default_value = "20ms")]
    burst_interval: String,

    /// How long a command "runs" before the device reports its result.
    #[arg(long, env = "SIM_COMMAND_DELAY", default_value = "0ms")]
    command_delay: String,

    /// After --duration, how long to wait for outstanding acks.
    #[arg(long, env = "SIM_GRACE", default_value = "10s")]
    grace: String,

    /// Runtime threads; 1 is a lean single-threaded runtime (run several
    /// processes to use more cores).
    #[arg(long, env = "SIM_THREADS", default_value_t = 1)]
    threads: usize,

    /// HELLO.firmware.
    #[arg(long, env = "SIM_FIRMWARE", default_value = concat!("controller-sim/", env!("CARGO_PKG_VERSION")))]
    firmware: String,

    /// Bytes each device uploads (scenario upload).
    #[arg(long, env = "SIM_UPLOAD_BYTES", value_name = "BYTES", default_value_t = 4_016_000)]
    upload_bytes: u64,

    /// Data bytes per BLOCK (1004: one 1 KiB frame).
    #[arg(long, env = "SIM_BLOCK_SIZE", value_name = "BYTES", default_value_t = controller_sim::device::DEFAULT_BLOCK_SIZE)]
    block_size: usize,

    /// Most upload bytes a device sends beyond the last durable offset.
    #[arg(long, env = "SIM_UPLOAD_WINDOW", value_name = "BYTES", default_value_t = controller_sim::device::DEFAULT_WINDOW)]
    upload_window: u64,

    /// FILE_ACCEPT.window: most file bytes unacknowledged (scenario files).
    #[arg(long, env = "SIM_FILE_WINDOW", value_name = "BYTES", default_value_t = 262_144)]
    file_window: u32,

    /// Probability that a device declines an offered file (scenario files).
    #[arg(long, env = "SIM_FILE_DECLINE", value_name = "P", default_value_t = 0.0)]
    file_decline: f64,

    /// Probability that a transfer has one byte corrupted on its way: the
    /// device answers DIGEST_MISMATCH (scenario files).
    #[arg(long, env = "SIM_FILE_CORRUPT", value_name = "P", default_value_t = 0.0)]
    file_corrupt: f64,

    /// Probability that a device drops its connection somewhere in a
    /// transfer and resumes it on the next one (scenario files).
    #[arg(long, env = "SIM_FILE_DROP", value_name = "P", default_value_t = 0.0)]
    file_drop: f64,

    /// A device accepts a file it was never offered at this offset, as if
    /// an earlier attempt had left it the first BYTES (scenario files;
    /// needs --file-prefix-from).
    #[arg(long, env = "SIM_FILE_START", value_name = "BYTES", default_value_t = 0)]
    file_start: u64,

    /// The bytes a device starting at --file-start holds: the first BYTES
    /// of this file (the rolled-out file; another file's prefix fails its
    /// digest, and the device then takes the file from 0).
    #[arg(long, env = "SIM_FILE_PREFIX_FROM", value_name = "PATH")]
    file_prefix_from: Option<std::path::PathBuf>,

    /// The devices also send events, at their share of --rate, while they
    /// receive files: the ACK latency of a device that is receiving a file
    /// (scenario files).
    #[arg(long, env = "SIM_FILE_EVENTS")]
    file_events: bool,

    /// After the run, check in this Redis that every acknowledged event is
    /// stored exactly once (in cwp:events, or every event stream that
    /// cwp:layout names) (redis://host:port).
    #[arg(long, env = "SIM_VERIFY_REDIS", value_name = "URL")]
    verify_redis: Option<String>,

    /// The same check in a Redis Cluster, given by seed nodes
    /// (redis://host:port,redis://host:port...).
    #[arg(
        long,
        env = "SIM_VERIFY_REDIS_CLUSTER",
        value_name = "NODES",
        conflicts_with = "verify_redis"
    )]
    verify_redis_cluster: Option<String>,

    /// Print the summary as one JSON object instead of text.
    #[arg(long, env = "SIM_JSON")]
    json: bool,

    /// Internal (--procs): run as a worker of a parent process, talking
    /// to it over stdin and stdout.
    #[arg(long, hide = true)]
    worker: bool,

    /// Internal (--procs): digits of the serial numbers, so that every
    /// worker pads them alike.
    #[arg(long, hide = true)]
    serial_width: Option<usize>,

    /// Internal (--procs): the fleet-wide index of this process's first
    /// device, which picks its group (mixed) and its target.
    #[arg(long, hide = true, default_value_t = 0)]
    device_offset: u64,
}

/// The wire protocol the simulated devices speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Protocol {
    /// CWP/1: Drover's devices.
    Cwp,
    /// MQTT 3.1.1 keep-alives to a broker (the idle benchmark's peer).
    Mqtt,
}

/// What a storm does once every device has connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StormThen {
    /// End the run.
    End,
    /// Hold the sessions until --duration.
    Hold,
}

/// How serial numbers are made: `<prefix><number>`, zero-padded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SerialNaming {
    prefix: String,
    first: u64,
    width: usize,
}

impl SerialNaming {
    /// Names for `count` devices numbered from `first`, padded to at least
    /// `width` digits (by default, as many as the last number needs and at
    /// least six); fails if the longest would not be a valid serial.
    pub(crate) fn with_width(prefix: &str, first: u64, count: u64, width: Option<usize>) -> Result<Self, String> {
        let last = first
            .checked_add(count.saturating_sub(1))
            .ok_or("serial numbers overflow")?;
        let naming = Self {
            prefix: prefix.to_owned(),
            first,
            width: width.unwrap_or(0).max(last.to_string().len()).max(6),
        };
        let longest = naming.name(count.saturating_sub(1));
        longest.parse::<Serial>().map_err(|err| format!("{longest:?}: {err}"))?;
        Ok(naming)
    }

    /// The serial of device `index` (0-based) as text.
    pub(crate) fn name(&self, index: u64) -> String {
        format!("{}{:0width$}", self.prefix, self.first + index, width = self.width)
    }

    /// The serial of device `index` (0-based).
    pub(crate) fn serial(&self, index: u64) -> Result<Serial, cwp::InvalidSerial> {
        self.name(index).parse()
    }

    /// The prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The number of the first serial.
    pub(crate) fn first(&self) -> u64 {
        self.first
    }

    /// Digits of the numbers.
    pub(crate) fn width(&self) -> usize {
        self.width
    }
}

/// The validated configuration of a run.
#[derive(Debug)]
pub(crate) struct Config {
    /// Where devices connect, in turn.
    pub(crate) targets: Vec<SocketAddr>,
    pub(crate) devices: u64,
    pub(crate) serials: SerialNaming,
    pub(crate) master_key: MasterKey,
    pub(crate) scenario: Scenario,
    pub(crate) rate: f64,
    pub(crate) event_size: usize,
    pub(crate) duration: Duration,
    pub(crate) connect_rate: f64,
    pub(crate) sources: Vec<IpAddr>,
    pub(crate) burst_interval: Duration,
    pub(crate) command_delay: Duration,
    pub(crate) grace: Duration,
    pub(crate) threads: usize,
    pub(crate) firmware: String,
    pub(crate) upload_bytes: u64,
    pub(crate) block_size: usize,
    pub(crate) upload_window: u64,
    pub(crate) file_policy: controller_sim::device::FilePolicy,
    /// Scenario files: the devices send events too.
    pub(crate) file_events: bool,
    pub(crate) verify_redis: Option<drover_redis::Target>,
    pub(crate) json: bool,
    pub(crate) procs: usize,
    pub(crate) protocol: Protocol,
    pub(crate) mqtt_keep_alive: Duration,
    pub(crate) churn: f64,
    pub(crate) storm_then: StormThen,
    /// This process is a worker of a `--procs` parent.
    pub(crate) worker: bool,
    /// The fleet-wide index of this process's first device.
    pub(crate) device_offset: u64,
}

impl Config {
    /// The targets, comma-separated, as given.
    pub(crate) fn targets_text(&self) -> String {
        let targets: Vec<String> = self.targets.iter().map(ToString::to_string).collect();
        targets.join(",")
    }

    /// Where device `index` (of this process) connects.
    pub(crate) fn target_of(&self, index: u64) -> SocketAddr {
        let global = self.device_offset + index;
        self.targets[usize::try_from(global % self.targets.len() as u64).unwrap_or(0)]
    }
}

/// File descriptors a process needs besides its devices' sockets.
pub(crate) const SPARE_FDS: u64 = 64;

/// The hard limit on open files of this process (what it can raise its
/// soft limit to).
pub(crate) fn open_file_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |(_, hard)| hard)
}

/// Every bad option, one per line.
#[derive(Debug)]
pub(crate) struct ConfigError(Vec<String>);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = String::from("invalid configuration:");
        for problem in &self.0 {
            let _ = write!(text, "\n  - {problem}");
        }
        f.write_str(&text)
    }
}

impl std::error::Error for ConfigError {}

/// The largest `BLOCK` that fits the default `max_payload` with its tag.
const MAX_BLOCK_SIZE: usize = cwp::DEFAULT_MAX_PAYLOAD as usize - cwp::TAG_LEN;
/// The largest upload: its content is one buffer in memory.
const MAX_UPLOAD_BYTES: u64 = 4 << 30;
/// A window that cannot stall against a server reporting once per MiB,
/// whatever the block size.
const MIN_UPLOAD_WINDOW: u64 = (1 << 20) + (64 << 10);

/// The largest event body that fits the default `max_payload` (65,536)
/// with the event's fields and tag.
const MAX_EVENT_SIZE: usize = cwp::DEFAULT_MAX_PAYLOAD as usize - 8 - 8 - 2 - cwp::TAG_LEN;

impl Config {
    /// Checks every option, reporting all problems at once.
    pub(crate) fn from_args(args: Args) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();

        let targets = check(&mut problems, "target", resolve_all(&args.target));
        let serials = check(
            &mut problems,
            "serial-prefix",
            SerialNaming::with_width(&args.serial_prefix, args.first_serial, args.devices, args.serial_width),
        );
        let mqtt_keep_alive = check(&mut problems, "mqtt-keep-alive", parse_duration(&args.mqtt_keep_alive));
        let master_key = check(
            &mut problems,
            "master-key",
            match &args.master_key {
                Some(hex) => MasterKey::from_hex(hex).map_err(|err| err.to_string()),
                None => Err("required (or CWP_MASTER_KEY)".to_owned()),
            },
        );
        let duration = check(&mut problems, "duration", parse_duration(&args.duration));
        let burst_interval = check(&mut problems, "burst-interval", parse_duration(&args.burst_interval));
        let command_delay = check(&mut problems, "command-delay", parse_duration(&args.command_delay));
        let grace = check(&mut problems, "grace", parse_duration(&args.grace));
        let sources = match args.source_ips.as_deref() {
            Some(ranges) => check(&mut problems, "source-ips", parse_sources(ranges)),
            None => Some(Vec::new()),
        };
        let verify_redis = match (&args.verify_redis, &args.verify_redis_cluster) {
            (Some(url), _) => Some(drover_redis::Target::Single(url.clone())),
            (None, Some(nodes)) => check(
                &mut problems,
                "verify-redis-cluster",
                drover_redis::Target::cluster(nodes),
            ),
            (None, None) => None,
        };
        let mut require = |ok: bool, option: &str, what: &str| {
            if !ok {
                problems.push(format!("--{option}: must be {what}"));
            }
        };
        require(args.devices >= 1, "devices", "at least 1");
        require(args.rate.is_finite() && args.rate >= 0.0, "rate", "a number ≥ 0");
        require(
            args.connect_rate.is_finite() && args.connect_rate >= 0.0,
            "connect-rate",
            "a number ≥ 0",
        );
        require(
            args.event_size <= MAX_EVENT_SIZE,
            "event-size",
            "at most 65,510 (what the default max_payload holds)",
        );
        require(args.threads >= 1, "threads", "at least 1");
        require(
            (1..=args.devices.max(1)).contains(&(args.procs as u64)),
            "procs",
            "at least 1 and at most --devices",
        );
        require(
            args.churn.is_finite() && args.churn >= 0.0 && (args.scenario != Scenario::Churn || args.churn > 0.0),
            "churn",
            "a number > 0 with --scenario churn (reconnects per second)",
        );
        require(
            args.protocol == Protocol::Cwp || args.scenario == Scenario::Idle,
            "protocol",
            "cwp unless --scenario idle (MQTT devices only hold idle connections)",
        );
        let per_process = args.devices.div_ceil(args.procs.max(1) as u64);
        let limit = open_file_limit();
        let procs_needed = args.devices.div_ceil(limit.saturating_sub(SPARE_FDS).max(1));
        require(
            per_process + SPARE_FDS <= limit,
            "procs",
            &format!(
                "enough for each process to hold its devices within the open-file limit ({limit}): --procs {procs_needed} or more"
            ),
        );
        require(
            (1..=MAX_BLOCK_SIZE).contains(&args.block_size),
            "block-size",
            "1 to 65,520 (what the default max_payload holds)",
        );
        require(
            args.upload_bytes <= MAX_UPLOAD_BYTES,
            "upload-bytes",
            "at most 4 GiB (the content is held in memory)",
        );
        require(
            args.upload_window >= MIN_UPLOAD_WINDOW,
            "upload-window",
            "at least 1 MiB + 64 KiB (the server reports once per MiB)",
        );
        for (name, probability) in [
            ("file-decline", args.file_decline),
            ("file-corrupt", args.file_corrupt),
            ("file-drop", args.file_drop),
        ] {
            require((0.0..=1.0).contains(&probability), name, "a probability, 0 to 1");
        }
        require(args.file_window > 0, "file-window", "at least 1 byte");
        let file_start = match (args.file_start, &args.file_prefix_from) {
            (0, _) => None,
            (offset, Some(path)) => match controller_sim::device::FileStart::from_file(path, offset) {
                Ok(start) => Some(start),
                Err(err) => {
                    require(
                        false,
                        "file-prefix-from",
                        &format!("a readable file of at least --file-start bytes ({err})"),
                    );
                    None
                }
            },
            (_, None) => {
                require(
                    false,
                    "file-start",
                    "with --file-prefix-from (the bytes the devices hold)",
                );
                None
            }
        };
        require(
            args.firmware.len() <= cwp::Str8::MAX_LEN,
            "firmware",
            "at most 255 bytes",
        );

        match (
            targets,
            serials,
            master_key,
            duration,
            burst_interval,
            command_delay,
            grace,
            sources,
            mqtt_keep_alive,
        ) {
            (
                Some(targets),
                Some(serials),
                Some(master_key),
                Some(duration),
                Some(burst_interval),
                Some(command_delay),
                Some(grace),
                Some(sources),
                Some(mqtt_keep_alive),
            ) if problems.is_empty() => Ok(Self {
                targets,
                devices: args.devices,
                serials,
                master_key,
                scenario: args.scenario,
                rate: args.rate,
                event_size: args.event_size,
                duration,
                // A storm is all devices at once.
                connect_rate: if args.scenario == Scenario::Storm {
                    0.0
                } else {
                    args.connect_rate
                },
                sources,
                burst_interval,
                command_delay,
                grace,
                threads: args.threads,
                firmware: args.firmware,
                upload_bytes: args.upload_bytes,
                block_size: args.block_size,
                upload_window: args.upload_window,
                file_policy: controller_sim::device::FilePolicy {
                    window: args.file_window,
                    decline: args.file_decline,
                    corrupt: args.file_corrupt,
                    drop: args.file_drop,
                    start: file_start,
                },
                file_events: args.file_events,
                verify_redis,
                json: args.json,
                procs: args.procs,
                protocol: args.protocol,
                mqtt_keep_alive,
                churn: args.churn,
                storm_then: args.storm_then,
                worker: args.worker,
                device_offset: args.device_offset,
            }),
            _ => Err(ConfigError(problems)),
        }
    }
}

/// `Some(value)`, or `None` with the problem recorded.
fn check<T, E: std::fmt::Display>(problems: &mut Vec<String>, option: &str, result: Result<T, E>) -> Option<T> {
    result.map_err(|err| problems.push(format!("--{option}: {err}"))).ok()
}

/// Comma-separated `host:port`s, each to the first address it resolves to.
fn resolve_all(targets: &str) -> Result<Vec<SocketAddr>, String> {
    let targets: Vec<SocketAddr> = targets
        .split(',')
        .map(str::trim)
        .filter(|target| !target.is_empty())
        .map(resolve)
        .collect::<Result<_, _>>()?;
    if targets.is_empty() {
        return Err("no address given".to_owned());
    }
    Ok(targets)
}

/// `host:port` to the first address it resolves to.
fn resolve(target: &str) -> Result<SocketAddr, String> {
    target
        .to_socket_addrs()
        .map_err(|err| format!("{target:?}: {err}"))?
        .next()
        .ok_or_else(|| format!("{target:?} resolves to no address"))
}

use drover_service::duration::parse_duration;

/// Most source addresses one run may use.
const MAX_SOURCES: u128 = 65_536;

/// Source addresses: a comma-separated list of addresses and inclusive
/// ranges `first-last` (both of the same family).
pub(crate) fn parse_sources(text: &str) -> Result<Vec<IpAddr>, String> {
    let mut sources = Vec::new();
    for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let parse = |ip: &str| {
            ip.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("{ip:?} is not an IP address"))
        };
        let (first, last) = match item.split_once('-') {
            Some((first, last)) => (parse(first)?, parse(last)?),
            None => (parse(item)?, parse(item)?),
        };
        let (first_n, last_n) = match (first, last) {
            (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b))),
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b)),
            _ => return Err(format!("{item:?} mixes IPv4 and IPv6")),
        };
        if first_n > last_n {
            return Err(format!("{item:?} is an empty range"));
        }
        if last_n - first_n + 1 + sources.len() as u128 > MAX_SOURCES {
            return Err(format!("more than {MAX_SOURCES} addresses"));
        }
        for n in first_n..=last_n {
            sources.push(match first {
                IpAddr::V4(_) => Ipv4Addr::from(u32::try_from(n).map_err(|_| "IPv4 out of range".to_owned())?).into(),
                IpAddr::V6(_) => Ipv6Addr::from(n).into(),
            });
        }
    }
    if sources.is_empty() {
        return Err("no address given".to_owned());
    }
    Ok(sources)
}

/// What the devices do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    /// Devices hold their sessions with heartbeats and answer commands.
    Idle,
    /// Every device sends events at its share of --rate, answers commands,
    /// and keeps its session alive with heartbeats.
    Events,
    /// Every device uploads --upload-bytes once (no events), resuming
    /// after reconnects; the run ends when all uploads are done.
    Upload,
    /// Idle devices answering the commands an operator publishes.
    Commands,
    /// Idle devices dropping and re-establishing their connections,
    /// --churn times per second across the fleet.
    Churn,
    /// Every device connects at once; the handshake rate is the figure.
    Storm,
    /// 90% idle, 9% sending events, 1% uploading; all answer commands.
    Mixed,
    /// Idle devices that accept offered files (--file-window, and decline,
    /// corrupt or drop with --file-decline, --file-corrupt, --file-drop),
    /// verify each one's SHA-256 and report the transfer rates; with
    /// --file-events they send events meanwhile.
    Files,
}

impl Scenario {
    /// The name on the command line and in the summary.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Events => "events",
            Self::Upload => "upload",
            Self::Commands => "commands",
            Self::Churn => "churn",
            Self::Storm => "storm",
            Self::Mixed => "mixed",
            Self::Files => "files",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_prefix_and_zero_padded_number() {
        let naming = SerialNaming::with_width("SIM-", 1, 100_000, None).unwrap();
        assert_eq!(naming.name(0), "SIM-000001");
        assert_eq!(naming.name(99_999), "SIM-100000");
        assert_eq!(naming.serial(41).unwrap().as_str(), "SIM-000042");
        // Wider when the numbers need it; a later process starts elsewhere.
        let naming = SerialNaming::with_width("B.", 2_000_000, 10, None).unwrap();
        assert_eq!(naming.name(0), "B.2000000");
        // Only what CWP/1 allows in a serial.
        assert!(SerialNaming::with_width("SIM ", 1, 1, None).is_err());
        assert!(SerialNaming::with_width(&"X".repeat(27), 1, 1, None).is_err());
        assert!(SerialNaming::with_width(&"X".repeat(26), 1, 1, None).is_ok());
    }

    #[test]
    fn source_ranges_expand_in_order() {
        let sources = parse_sources("127.0.0.1-127.0.0.3, 10.0.0.9").unwrap();
        let expected: Vec<IpAddr> = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "10.0.0.9"]
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect();
        assert_eq!(sources, expected);
        assert_eq!(parse_sources("127.0.0.255-127.0.1.0").unwrap().len(), 2);
        assert_eq!(parse_sources("::1").unwrap(), ["::1".parse::<IpAddr>().unwrap()]);
        for bad in [
            "",
            "127.0.0.5-127.0.0.1",
            "127.0.0.1-::1",
            "localhost",
            "10.0.0.0-10.255.255.255",
        ] {
            assert!(parse_sources(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_bad_option_is_reported_together() {
        let args = Args::try_parse_from([
            "controller-sim",
            "--target",
            "127.0.0.1:7000",
            "--duration",
            "soon",
            "--source-ips",
            "nowhere",
            "--master-key",
            "abc",
        ])
        .unwrap();
        let err = Config::from_args(args).unwrap_err().to_string();
        for name in ["--duration", "--source-ips", "--master-key"] {
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn a_complete_command_line_parses() {
        let key = "00".repeat(32);
        let args = Args::try_parse_from([
            "controller-sim",
            "--target",
            "127.0.0.1:7000",
            "--devices",
            "20",
            "--master-key",
            &key,
            "--source-ips",
            "127.0.0.1-127.0.0.4",
            "--duration",
            "5s",
        ])
        .unwrap();
        let config = Config::from_args(args).unwrap();
        assert_eq!(config.devices, 20);
        assert_eq!(config.sources.len(), 4);
        assert_eq!(config.duration, Duration::from_secs(5));
        assert_eq!(config.serials.name(19), "SIM-000020");
    }
}
