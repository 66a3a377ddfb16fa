//! The driver's configuration: every environment variable it reads, parsed
//! once at start into a [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cwp::MasterKey;
use drover_edge::batch_limits::MAX_EVENT_BODY_BYTES;
use drover_edge::bridge::BridgeTls;
use drover_proto::auth::BearerToken;
use drover_service::duration::parse_duration;
use drover_service::env::{ConfigError, EnvReader, Variable, parse_bool};

use crate::runtime_thread::Nice;

/// Every variable the driver reads, with its default. `--help` prints this
/// table and the README documents it; a test keeps the two in step.
pub static VARIABLES: &[Variable] = &[
    Variable {
        name: "DRIVER_LISTEN",
        default: Some("0.0.0.0:5001"),
        help: "address for CWP/1 connections",
    },
    Variable {
        name: "DRIVER_ID",
        default: None,
        help: "this driver's unique name in the fleet; unset: {hostname}-{port}",
    },
    Variable {
        name: "DRIVER_ADMIN_LISTEN",
        default: Some("0.0.0.0:9101"),
        help: "address for HTTP /healthz and /metrics",
    },
    Variable {
        name: "DRIVER_PROXY_PROTOCOL",
        default: Some("false"),
        help: "true: every connection must start with a PROXY protocol v2 header (behind HAProxy)",
    },
    Variable {
        name: "VENDOR_BRIDGE_URL",
        default: Some("http://127.0.0.1:50051"),
        help: "the vendor-bridge's gRPC address; https://HOST:PORT for TLS (then VENDOR_BRIDGE_CA is required)",
    },
    Variable {
        name: "VENDOR_BRIDGE_CA",
        default: None,
        help: "PEM CA certificate(s) the bridge's certificate must chain to (TLS only)",
    },
    Variable {
        name: "VENDOR_BRIDGE_CLIENT_CERT",
        default: None,
        help: "PEM certificate chain this driver presents to the bridge (mutual TLS); set with VENDOR_BRIDGE_CLIENT_KEY",
    },
    Variable {
        name: "VENDOR_BRIDGE_CLIENT_KEY",
        default: None,
        help: "PEM private key of VENDOR_BRIDGE_CLIENT_CERT",
    },
    Variable {
        name: "VENDOR_BRIDGE_TOKEN",
        default: None,
        help: "shared secret sent to the bridge on every call (authorization: Bearer); must match the bridge's BRIDGE_TOKEN",
    },
    Variable {
        name: "VENDOR_BRIDGE_TOKEN_FILE",
        default: None,
        help: "file holding VENDOR_BRIDGE_TOKEN (instead of the variable)",
    },
    Variable {
        name: "VENDOR_BRIDGE_SERVER_NAME",
        default: None,
        help: "name the bridge's certificate must be valid for; unset: the host of VENDOR_BRIDGE_URL",
    },
    Variable {
        name: "REDIS_URL",
        default: Some("redis://127.0.0.1:6379"),
        help: "Redis, for command subscriptions (cwp:cmd:{serial}); redis://USER:PASSWORD@HOST:PORT for an ACL user",
    },
    drover_redis::config::CLUSTER_NODES,
    Variable {
        name: "CWP_MASTER_KEY",
        default: None,
        help: "64 hex digits; device keys derive from it (CWP/1 §2). Set it or CWP_KEYS_FILE, or both",
    },
    Variable {
        name: "CWP_KEYS_FILE",
        default: None,
        help: "file of `SERIAL HEXKEY` lines (`SERIAL -` revokes the serial), consulted before the master key; reloaded on SIGHUP, closing the sessions whose key changed",
    },
    Variable {
        name: "DRIVER_HEARTBEAT_S",
        default: Some("30"),
        help: "heartbeat period announced in WELCOME, seconds (1-65535)",
    },
    Variable {
        name: "DRIVER_IDLE_TIMEOUT",
        default: None,
        help: "close a session silent this long (e.g. 90s) with BYE IDLE, within a tenth of it (at most 1 s) after; unset: 3 x DRIVER_HEARTBEAT_S",
    },
    Variable {
        name: "DRIVER_PARK_AFTER",
        default: Some("1s"),
        help: "park a session silent this long (at once after WELCOME or a PING if nothing is in flight): no task, no I/O registration, ~0.7 KiB instead of ~1.7 KiB, until its device or an operator needs it; 0s: never park",
    },
    Variable {
        name: "DRIVER_HANDSHAKE_TIMEOUT",
        default: Some("10s"),
        help: "close a connection that has not completed the handshake in this time (ERROR TIMEOUT)",
    },
    Variable {
        name: "DRIVER_EVENT_WINDOW",
        default: Some("256"),
        help: "unacknowledged events a device may have in flight, announced in WELCOME (1-65535)",
    },
    Variable {
        name: "DRIVER_MAX_PAYLOAD",
        default: Some("65536"),
        help: "largest frame payload accepted after WELCOME, bytes (announced in WELCOME); 1024 to 15531968 (a batch of events that large must fit in one 16 MiB message to the vendor-bridge)",
    },
    Variable {
        name: "CMD_MAX_IN_FLIGHT",
        default: Some("4"),
        help: "durable commands (README, Durable commands) sent to a device and not yet answered, at most, per device (1-1000); the rest wait in its ledger, in order",
    },
    Variable {
        name: "DRIVER_MAX_PENDING_BYTES",
        default: Some("67108864"),
        help: "bytes of event bodies held by this driver awaiting storage, all devices together; beyond it devices get BUSY (an event larger than this waits until nothing else is pending)",
    },
    Variable {
        name: "DRIVER_MAX_PENDING_EVENTS",
        default: Some("100000"),
        help: "events held by this driver awaiting storage, all devices together; beyond it devices get BUSY",
    },
    Variable {
        name: "DRIVER_MAX_CONNECTIONS",
        default: Some("100000"),
        help: "concurrent device connections; further connections wait in the kernel's backlog",
    },
    Variable {
        name: "DRIVER_MAX_HANDSHAKES",
        default: Some("10000"),
        help: "connections not yet authenticated; beyond it the oldest handshake in progress gets ERROR BUSY and is closed",
    },
    Variable {
        name: "DRIVER_AUTH_FAILURES_PER_ADDRESS",
        default: Some("20"),
        help: "failed authentications from one address (IPv6: one /64) per DRIVER_AUTH_FAILURE_WINDOW; then its HELLOs get ERROR BUSY (0: no limit)",
    },
    Variable {
        name: "DRIVER_AUTH_FAILURES_PER_SERIAL_ADDRESS",
        default: Some("10"),
        help: "failed authentications for one serial from one address (IPv6: one /64) per DRIVER_AUTH_FAILURE_WINDOW; then that serial's HELLOs from there get ERROR BUSY (0: no limit)",
    },
    Variable {
        name: "DRIVER_AUTH_FAILURES_PER_SERIAL",
        default: Some("0"),
        help: "opt-in: failed authentications for one serial from anywhere per DRIVER_AUTH_FAILURE_WINDOW; then its HELLOs get ERROR BUSY everywhere, so a stranger who knows a serial can keep that device out (0: no limit)",
    },
    Variable {
        name: "DRIVER_AUTH_FAILURE_WINDOW",
        default: Some("60s"),
        help: "how long failed authentications count, from the first one",
    },
    Variable {
        name: "DRIVER_DRAIN_PERIOD",
        default: Some("30s"),
        help: "on SIGTERM, devices are told to reconnect at times spread over this period",
    },
    Variable {
        name: "DRIVER_TITLE_SERIALS",
        default: Some("5"),
        help: "serials listed in the process title before `+N more`",
    },
    Variable {
        name: "UPLOAD_DIR",
        default: Some("./data/uploads"),
        help: "where uploads are stored; share it between drivers so uploads resume on any of them",
    },
    Variable {
        name: "FILES_DIR",
        default: Some("./data/files"),
        help: "the file store rollouts send from (`drover files add`); share it between drivers",
    },
    Variable {
        name: "DRIVER_TRANSFER_NICE",
        default: Some("19"),
        help: "nice value (0-19) of the thread that seals and sends rollouts' files: at 19 the kernel runs events, ACKs and commands first when both want a core, and transfers take what is left; 0: transfers compete as equals",
    },
    Variable {
        name: "UPLOAD_BUFFER_BYTES",
        default: Some("262144"),
        help: "per-connection upload write buffer, 4096 to 1048576 bytes; each full buffer is one write + fdatasync",
    },
    Variable {
        name: "UPLOAD_MAX_BYTES",
        default: Some("1073741824"),
        help: "largest upload accepted, bytes",
    },
    Variable {
        name: "UPLOAD_MAX_BYTES_PER_SERIAL",
        default: Some("2147483648"),
        help: "bytes one device's uploads in progress may hold on disk, all its partial uploads together; beyond it its UPLOAD_BEGIN and BLOCKs get BUSY (0: no quota)",
    },
    Variable {
        name: "UPLOAD_MIN_FREE_BYTES",
        default: Some("1073741824"),
        help: "free space UPLOAD_DIR's filesystem must keep; below it UPLOAD_BEGIN gets BUSY (0: no floor)",
    },
    Variable {
        name: "UPLOAD_MAX_OPEN",
        default: Some("1024"),
        help: "uploads in progress at once on this driver (each holds one buffer); beyond it devices get BUSY",
    },
    Variable {
        name: "UPLOAD_EXPIRE_AFTER",
        default: Some("7d"),
        help: "partial uploads untouched this long are deleted (e.g. 7d, 12h)",
    },
    Variable {
        name: "LOG_FORMAT",
        default: Some("text"),
        help: "text or json",
    },
    Variable {
        name: "SENTRY_DSN",
        default: None,
        help: "report errors and panics to this Sentry DSN",
    },
    Variable {
        name: "SENTRY_ENVIRONMENT",
        default: None,
        help: "Sentry environment name (e.g. production)",
    },
];

/// The largest upload write buffer: CWP/1 §3 promises an `UPLOAD_STATUS`
/// at least once per MiB received.
pub const MAX_UPLOAD_BUFFER_BYTES: usize = 1 << 20;

/// The driver's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where devices connect.
    pub listen: SocketAddr,
    /// Unique name of this driver in the fleet.
    pub driver_id: String,
    /// Where `/healthz` and `/metrics` are served.
    pub admin_listen: SocketAddr,
    /// Whether connections start with a PROXY protocol v2 header.
    pub proxy_protocol: bool,
    /// The vendor-bridge's gRPC endpoint.
    pub bridge_url: String,
    /// TLS to the bridge (`https://` URL); `None`: plaintext.
    pub bridge_tls: Option<BridgeTls>,
    /// The bridge's shared secret, sent on every call.
    pub bridge_token: Option<BearerToken>,
    /// Redis (or a Redis Cluster) for command pub/sub.
    pub redis: drover_redis::Target,
    /// The fleet's master key, if devices derive their keys from one.
    pub master_key: Option<MasterKey>,
    /// A file of per-device keys.
    pub keys_file: Option<PathBuf>,
    /// Heartbeat period announced in `WELCOME`.
    pub heartbeat_s: u16,
    /// Silence after which a session is closed with `BYE IDLE`.
    pub idle_timeout: Duration,
    /// Silence after which an established session is parked
    /// ([`crate::session::park`]); `None`: never.
    pub park_after: Option<Duration>,
    /// Deadline for `HELLO` … `AUTH`.
    pub handshake_timeout: Duration,
    /// Unacknowledged events per device.
    pub event_window: u16,
    /// Largest payload accepted after `WELCOME`.
    pub max_payload: u32,
    /// Durable commands unanswered at once per device (`CMD_MAX_IN_FLIGHT`).
    pub max_commands_in_flight: u32,
    /// Events awaiting storage across all devices.
    pub max_pending_events: usize,
    /// Bytes of event bodies awaiting storage across all devices.
    pub max_pending_bytes: usize,
    /// Concurrent device connections.
    pub max_connections: usize,
    /// Connections not yet authenticated.
    pub max_handshakes: usize,
    /// Failed authentications per source address per window (0: no limit).
    pub auth_failures_per_address: u32,
    /// Failed authentications per serial and source address per window
    /// (0: no limit).
    pub auth_failures_per_serial_address: u32,
    /// Failed authentications per serial from anywhere per window (0: no
    /// limit, the default).
    pub auth_failures_per_serial: u32,
    /// How long a failed authentication counts.
    pub auth_failure_window: Duration,
    /// Period over which draining devices are told to reconnect.
    pub drain_period: Duration,
    /// Serials named in the process title.
    pub title_serials: usize,
    /// Root of upload storage.
    pub upload_dir: PathBuf,
    /// Per-connection upload write buffer.
    pub upload_buffer_bytes: usize,
    /// The file store rollouts send from.
    pub files_dir: PathBuf,
    /// The transfers' thread's nice value.
    pub transfer_nice: Nice,
    /// Largest upload.
    pub upload_max_bytes: u64,
    /// Uploads in progress at once.
    pub upload_max_open: usize,
    /// Bytes of one device's uploads in progress (0: no quota).
    pub upload_max_bytes_per_serial: u64,
    /// Free space `UPLOAD_DIR` must keep (0: no floor).
    pub upload_min_free_bytes: u64,
    /// Age after which abandoned partial uploads are deleted.
    pub upload_expire_after: Duration,
    /// JSON log lines.
    pub json_logs: bool,
    /// Sentry DSN.
    pub sentry_dsn: Option<String>,
    /// Sentry environment.
    pub sentry_environment: Option<String>,
}

impl Config {
    /// Reads every variable; reports all problems together.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut env = EnvReader::new(VARIABLES);
        let listen: Option<SocketAddr> = env.parse("DRIVER_LISTEN");
        let driver_id = env.parse_optional::<String>("DRIVER_ID");
        let admin_listen = env.parse("DRIVER_ADMIN_LISTEN");
        let proxy_protocol = env.parse_with("DRIVER_PROXY_PROTOCOL", parse_bool);
        let bridge_url: Option<String> = env.parse("VENDOR_BRIDGE_URL");
        let bridge_tls = BridgeTls::read(&mut env, bridge_url.as_deref());
        let bridge_token = env
            .secret("VENDOR_BRIDGE_TOKEN", "VENDOR_BRIDGE_TOKEN_FILE")
            .and_then(|text| match BearerToken::new(&text) {
                Ok(token) => Some(token),
                Err(err) => {
                    env.problem(format!("VENDOR_BRIDGE_TOKEN: {err}"));
                    None
                }
            });
        let redis = drover_redis::Target::read(&mut env);
        let master_key = env.parse_with("CWP_MASTER_KEY", MasterKey::from_hex);
        let keys_file = env.parse_optional::<PathBuf>("CWP_KEYS_FILE");
        let heartbeat_s = env.parse::<u16>("DRIVER_HEARTBEAT_S");
        let idle_timeout = env.parse_with("DRIVER_IDLE_TIMEOUT", parse_duration);
        let park_after = env.parse_with("DRIVER_PARK_AFTER", parse_duration);
        let handshake_timeout = env.parse_with("DRIVER_HANDSHAKE_TIMEOUT", parse_duration);
        let event_window = env.parse::<u16>("DRIVER_EVENT_WINDOW");
        let max_payload = env.parse::<u32>("DRIVER_MAX_PAYLOAD");
        let max_commands_in_flight = env.parse::<u32>("CMD_MAX_IN_FLIGHT");
        let max_pending_events = env.parse("DRIVER_MAX_PENDING_EVENTS");
        let max_pending_bytes = env.parse("DRIVER_MAX_PENDING_BYTES");
        let max_connections = env.parse("DRIVER_MAX_CONNECTIONS");
        let max_handshakes = env.parse::<usize>("DRIVER_MAX_HANDSHAKES");
        let auth_failures_per_address = env.parse("DRIVER_AUTH_FAILURES_PER_ADDRESS");
        let auth_failures_per_serial_address = env.parse("DRIVER_AUTH_FAILURES_PER_SERIAL_ADDRESS");
        let auth_failures_per_serial = env.parse("DRIVER_AUTH_FAILURES_PER_SERIAL");
        let auth_failure_window = env.parse_with("DRIVER_AUTH_FAILURE_WINDOW", parse_duration);
        let drain_period = env.parse_with("DRIVER_DRAIN_PERIOD", parse_duration);
        let title_serials = env.parse("DRIVER_TITLE_SERIALS");
        let upload_dir = env.parse("UPLOAD_DIR");
        let upload_buffer_bytes = env.parse::<usize>("UPLOAD_BUFFER_BYTES");
        let files_dir = env.parse("FILES_DIR");
        let transfer_nice = env.parse_with("DRIVER_TRANSFER_NICE", |value| {
            value
                .parse::<u8>()
                .ok()
                .and_then(Nice::new)
                .ok_or("a nice value of 0 to 19")
        });
        let upload_max_bytes = env.parse("UPLOAD_MAX_BYTES");
        let upload_max_open = env.parse("UPLOAD_MAX_OPEN");
        let upload_max_bytes_per_serial = env.parse("UPLOAD_MAX_BYTES_PER_SERIAL");
        let upload_min_free_bytes = env.parse("UPLOAD_MIN_FREE_BYTES");
        let upload_expire_after = env.parse_with("UPLOAD_EXPIRE_AFTER", parse_duration);
        let log_format = env.parse::<String>("LOG_FORMAT");
        let sentry_dsn = env.parse_optional("SENTRY_DSN");
        let sentry_environment = env.parse_optional("SENTRY_ENVIRONMENT");

        if master_key.is_none() && keys_file.is_none() && env.raw("CWP_MASTER_KEY").is_none() {
            env.problem("set CWP_MASTER_KEY or CWP_KEYS_FILE: there is no unauthenticated mode");
        }
        if heartbeat_s == Some(0) {
            env.problem("DRIVER_HEARTBEAT_S must be at least 1");
        }
        if event_window == Some(0) {
            env.problem("DRIVER_EVENT_WINDOW must be at least 1");
        }
        if max_handshakes == Some(0) {
            env.problem("DRIVER_MAX_HANDSHAKES must be at least 1");
        }
        if max_commands_in_flight.is_some_and(|m| !(1..=1000).contains(&m)) {
            env.problem("CMD_MAX_IN_FLIGHT must be between 1 and 1000");
        }
        if max_payload.is_some_and(|m| m < 1024) {
            env.problem("DRIVER_MAX_PAYLOAD must be at least 1024 (a 1 KiB BLOCK frame must fit)");
        }
        if max_payload.is_some_and(|m| m as usize > MAX_EVENT_BODY_BYTES) {
            env.problem(format!(
                "DRIVER_MAX_PAYLOAD must be at most {MAX_EVENT_BODY_BYTES}: a batch of events that large must fit in one message to the vendor-bridge ({} bytes)",
                drover_proto::MAX_MESSAGE_BYTES
            ));
        }
        if upload_buffer_bytes.is_some_and(|b| !(4096..=MAX_UPLOAD_BUFFER_BYTES).contains(&b)) {
            // CWP/1 §3: UPLOAD_STATUS at least once per 1 MiB received, and
            // it follows each full buffer.
            env.problem("UPLOAD_BUFFER_BYTES must be between 4096 and 1048576 (1 MiB)");
        }
        let json_logs = match log_format.as_deref() {
            Some("json") => true,
            Some("text") | None => false,
            Some(other) => {
                env.problem(format!("LOG_FORMAT={other:?}: expected text or json"));
                false
            }
        };
        env.finish()?;

        // Every value below was parsed (finish() returned Ok), so the
        // options are all Some; defaults in the table guarantee it.
        let listen = listen.expect("parsed");
        let heartbeat_s = heartbeat_s.expect("parsed");
        Ok(Self {
            listen,
            driver_id: driver_id
                .unwrap_or_else(|| format!("{}-{}", drover_service::env::hostname_or("driver"), listen.port())),
            admin_listen: admin_listen.expect("parsed"),
            proxy_protocol: proxy_protocol.expect("parsed"),
            bridge_url: bridge_url.expect("parsed"),
            bridge_tls,
            bridge_token,
            redis: redis.expect("parsed"),
            master_key,
            keys_file,
            heartbeat_s,
            idle_timeout: idle_timeout.unwrap_or(Duration::from_secs(3 * u64::from(heartbeat_s))),
            park_after: park_after.filter(|after| !after.is_zero()),
            handshake_timeout: handshake_timeout.expect("parsed"),
            event_window: event_window.expect("parsed"),
            max_payload: max_payload.expect("parsed"),
            max_commands_in_flight: max_commands_in_flight.expect("parsed"),
            max_pending_events: max_pending_events.expect("parsed"),
            max_pending_bytes: max_pending_bytes.expect("parsed"),
            max_connections: max_connections.expect("parsed"),
            max_handshakes: max_handshakes.expect("parsed"),
            auth_failures_per_address: auth_failures_per_address.expect("parsed"),
            auth_failures_per_serial_address: auth_failures_per_serial_address.expect("parsed"),
            auth_failures_per_serial: auth_failures_per_serial.expect("parsed"),
            auth_failure_window: auth_failure_window.expect("parsed"),
            drain_period: drain_period.expect("parsed"),
            title_serials: title_serials.expect("parsed"),
            upload_dir: upload_dir.expect("parsed"),
            upload_buffer_bytes: upload_buffer_bytes.expect("parsed"),
            files_dir: files_dir.expect("parsed"),
            transfer_nice: transfer_nice.expect("parsed"),
            upload_max_bytes: upload_max_bytes.expect("parsed"),
            upload_max_open: upload_max_open.expect("parsed"),
            upload_max_bytes_per_serial: upload_max_bytes_per_serial.expect("parsed"),
            upload_min_free_bytes: upload_min_free_bytes.expect("parsed"),
            upload_expire_after: upload_expire_after.expect("parsed"),
            json_logs,
            sentry_dsn,
            sentry_environment,
        })
    }
}
