//! The gateway's configuration: every environment variable it reads, parsed
//! once at start into a [`Config`]. The names it shares with the driver
//! (`VENDOR_BRIDGE_*`, `REDIS_*`, `CWP_*`, `UPLOAD_DIR`, `LOG_FORMAT`,
//! `SENTRY_*`) mean the same thing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cwp::MasterKey;
use drover_edge::FailureLimits;
use drover_edge::bridge::BridgeTls;
use drover_proto::auth::BearerToken;
use drover_schema::Layout;
use drover_service::duration::parse_duration;
use drover_service::env::{ConfigError, EnvReader, Variable, parse_bool};

/// Every variable the gateway reads, with its default. `--help` prints this
/// table and the README documents it; a test keeps the two in step.
pub static VARIABLES: &[Variable] = &[
    Variable {
        name: "HTTP_LISTEN",
        default: Some("0.0.0.0:8080"),
        help: "address for devices' HTTP requests (/v1/events, /v1/token, and /healthz for HAProxy's checks)",
    },
    Variable {
        name: "HTTP_ADMIN_LISTEN",
        default: Some("127.0.0.1:9103"),
        help: "address for HTTP /healthz and /metrics; read-only and unauthenticated: loopback by default, another address exposes them to whoever reaches it",
    },
    Variable {
        name: "HTTP_GATEWAY_ID",
        default: None,
        help: "this gateway's unique name at the vendor-bridge (the namespace of driver ids); unset: {hostname}-http-{port}",
    },
    Variable {
        name: "HTTP_PROXY_PROTOCOL",
        default: Some("false"),
        help: "true: every connection must start with a PROXY protocol v2 header (behind HAProxy, `send-proxy-v2-ssl`); the client's address and whether it used TLS come from it",
    },
    Variable {
        name: "HTTP_BEARER_REQUIRES_TLS",
        default: Some("true"),
        help: "refuse bearer tokens on a connection HAProxy did not report as TLS (needs HTTP_PROXY_PROTOCOL); false: accept them over plain HTTP (tests, or a network nobody else can read)",
    },
    Variable {
        name: "HTTP_MAX_BODY_BYTES",
        default: Some("16777216"),
        help: "largest request body, as sent and once gzip is undone; a larger one gets 413",
    },
    Variable {
        name: "HTTP_MAX_INFLIGHT_BYTES",
        default: Some("134217728"),
        help: "bytes of request bodies held by this gateway at once, all requests together, until their events are durable (the parsed form takes at most about 3x that); beyond it requests get 503 and Retry-After",
    },
    Variable {
        name: "HTTP_MAX_CONNECTIONS",
        default: Some("10000"),
        help: "concurrent client connections; further connections wait in the kernel's backlog",
    },
    Variable {
        name: "HTTP_HEADER_TIMEOUT",
        default: Some("10s"),
        help: "a connection whose request headers have not all arrived in this time is closed",
    },
    Variable {
        name: "HTTP_BODY_TIMEOUT",
        default: Some("60s"),
        help: "a request whose body has not all arrived in this time gets 408 (nothing of it stored)",
    },
    Variable {
        name: "HTTP_STORE_TIMEOUT",
        default: Some("10s"),
        help: "a request whose events are not all durable in this time gets 503 and Retry-After (nothing acknowledged; a resend stores nothing twice)",
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
        help: "PEM certificate chain this gateway presents to the bridge (mutual TLS); set with VENDOR_BRIDGE_CLIENT_KEY",
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
        help: "Redis, where request nonces are remembered fleet-wide (cwp:nonce:{serial}:{nonce}); redis://USER:PASSWORD@HOST:PORT for an ACL user",
    },
    drover_redis::config::CLUSTER_NODES,
    drover_redis::config::EVENT_PARTITIONS,
    Variable {
        name: "CWP_MASTER_KEY",
        default: None,
        help: "64 hex digits; device keys derive from it (CWP/1 §2). Set it or CWP_KEYS_FILE, or both",
    },
    Variable {
        name: "CWP_KEYS_FILE",
        default: None,
        help: "file of `SERIAL HEXKEY` lines (`SERIAL -` revokes the serial), consulted before the master key; reloaded on SIGHUP",
    },
    Variable {
        name: "HTTP_AUTH_FAILURES_PER_ADDRESS",
        default: Some("20"),
        help: "failed authentications from one address (IPv6: one /64) per HTTP_AUTH_FAILURE_WINDOW; then its requests get 429 (0: no limit)",
    },
    Variable {
        name: "HTTP_AUTH_FAILURES_PER_SERIAL_ADDRESS",
        default: Some("10"),
        help: "failed authentications for one serial from one address (IPv6: one /64) per HTTP_AUTH_FAILURE_WINDOW; then that serial's requests from there get 429 (0: no limit)",
    },
    Variable {
        name: "HTTP_AUTH_FAILURES_PER_SERIAL",
        default: Some("0"),
        help: "opt-in: failed authentications for one serial from anywhere per HTTP_AUTH_FAILURE_WINDOW; then its requests get 429 everywhere, so a stranger who knows a serial can keep that device out (0: no limit)",
    },
    Variable {
        name: "HTTP_AUTH_FAILURE_WINDOW",
        default: Some("60s"),
        help: "how long failed authentications count, from the first one",
    },
    Variable {
        name: "UPLOAD_DIR",
        default: Some("./data/uploads"),
        help: "where tus uploads are stored, the drivers' upload store: share it with the drivers and the other gateways so that uploads resume on any of them",
    },
    Variable {
        name: "UPLOAD_BUFFER_BYTES",
        default: Some("262144"),
        help: "per-request upload write buffer, 4096 to 16777216 bytes; each full buffer is one write, made durable by an fdatasync running beside the next ones (at most 4 MiB behind)",
    },
    Variable {
        name: "UPLOAD_MAX_BYTES",
        default: Some("1073741824"),
        help: "largest upload accepted (Upload-Length, Tus-Max-Size), bytes",
    },
    Variable {
        name: "UPLOAD_MAX_BYTES_PER_SERIAL",
        default: Some("2147483648"),
        help: "bytes one device's unfinished uploads may hold on disk, all together; beyond it 413 (0: no quota)",
    },
    Variable {
        name: "UPLOAD_MIN_FREE_BYTES",
        default: Some("1073741824"),
        help: "free space UPLOAD_DIR's filesystem must keep; below it creations get 507 (0: no floor)",
    },
    Variable {
        name: "UPLOAD_MAX_OPEN",
        default: Some("1024"),
        help: "upload requests writing at once on this gateway (each holds one buffer); beyond it 503 and Retry-After",
    },
    Variable {
        name: "UPLOAD_EXPIRE_AFTER",
        default: Some("7d"),
        help: "unfinished uploads untouched this long are deleted (Upload-Expires; then 410)",
    },
    Variable {
        name: "HTTP_UPLOAD_IDLE_TIMEOUT",
        default: Some("30s"),
        help: "an upload body that sends no byte for this long is ended (408); what is durable is kept",
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

/// The gateway's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where `/healthz` and `/metrics` are served for operators.
    pub admin_listen: SocketAddr,
    /// This gateway's id at the bridge.
    pub gateway_id: String,
    /// Whether connections start with a PROXY protocol v2 header.
    pub proxy_protocol: bool,
    /// Whether bearer tokens need a TLS client connection (as HAProxy says).
    pub bearer_requires_tls: bool,
    /// Largest body, as sent and decoded.
    pub max_body_bytes: usize,
    /// Bytes of bodies held at once, all requests together.
    pub max_inflight_bytes: usize,
    /// Concurrent connections.
    pub max_connections: usize,
    /// Deadline for a request's headers.
    pub header_timeout: Duration,
    /// Deadline for a request's body.
    pub body_timeout: Duration,
    /// Deadline for a request's events to become durable.
    pub store_timeout: Duration,
    /// The vendor-bridge's gRPC endpoint.
    pub bridge_url: String,
    /// TLS to the bridge (`https://` URL); `None`: plaintext.
    pub bridge_tls: Option<BridgeTls>,
    /// The bridge's shared secret, sent on every call.
    pub bridge_token: Option<BearerToken>,
    /// Redis (or a Redis Cluster): the nonces.
    pub redis: drover_redis::Target,
    /// The deployment's key layout (where a serial's nonces live).
    pub layout: Layout,
    /// The fleet's master key, if devices derive their keys from one.
    pub master_key: Option<MasterKey>,
    /// A file of per-device keys.
    pub keys_file: Option<PathBuf>,
    /// Failed authentications allowed per window.
    pub auth_failures: FailureLimits,
    /// How long a failed authentication counts.
    pub auth_failure_window: Duration,
    /// Root of upload storage, shared with the drivers.
    pub upload_dir: PathBuf,
    /// `UPLOAD_BUFFER_BYTES`.
    pub upload_buffer_bytes: usize,
    /// `UPLOAD_MAX_BYTES`.
    pub upload_max_bytes: u64,
    /// `UPLOAD_MAX_BYTES_PER_SERIAL` (0: none).
    pub upload_max_bytes_per_serial: u64,
    /// `UPLOAD_MIN_FREE_BYTES` (0: none).
    pub upload_min_free_bytes: u64,
    /// `UPLOAD_MAX_OPEN`.
    pub upload_max_open: usize,
    /// `UPLOAD_EXPIRE_AFTER`.
    pub upload_expire_after: Duration,
    /// `HTTP_UPLOAD_IDLE_TIMEOUT`.
    pub upload_idle_timeout: Duration,
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
        let listen: Option<SocketAddr> = env.parse("HTTP_LISTEN");
        let admin_listen = env.parse("HTTP_ADMIN_LISTEN");
        let gateway_id = env.parse_optional::<String>("HTTP_GATEWAY_ID");
        let proxy_protocol = env.parse_with("HTTP_PROXY_PROTOCOL", parse_bool);
        let bearer_requires_tls = env.parse_with("HTTP_BEARER_REQUIRES_TLS", parse_bool);
        let max_body_bytes = env.parse::<usize>("HTTP_MAX_BODY_BYTES");
        let max_inflight_bytes = env.parse::<usize>("HTTP_MAX_INFLIGHT_BYTES");
        let max_connections = env.parse::<usize>("HTTP_MAX_CONNECTIONS");
        let header_timeout = env.parse_with("HTTP_HEADER_TIMEOUT", parse_duration);
        let body_timeout = env.parse_with("HTTP_BODY_TIMEOUT", parse_duration);
        let store_timeout = env.parse_with("HTTP_STORE_TIMEOUT", parse_duration);
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
        let layout = drover_redis::config::read_layout(&mut env, redis.as_ref());
        let master_key = env.parse_with("CWP_MASTER_KEY", MasterKey::from_hex);
        let keys_file = env.parse_optional::<PathBuf>("CWP_KEYS_FILE");
        let per_address = env.parse("HTTP_AUTH_FAILURES_PER_ADDRESS");
        let per_serial_address = env.parse("HTTP_AUTH_FAILURES_PER_SERIAL_ADDRESS");
        let per_serial = env.parse("HTTP_AUTH_FAILURES_PER_SERIAL");
        let auth_failure_window = env.parse_with("HTTP_AUTH_FAILURE_WINDOW", parse_duration);
        let upload_dir = env.parse("UPLOAD_DIR");
        let upload_buffer_bytes = env.parse::<usize>("UPLOAD_BUFFER_BYTES");
        let upload_max_bytes = env.parse("UPLOAD_MAX_BYTES");
        let upload_max_bytes_per_serial = env.parse("UPLOAD_MAX_BYTES_PER_SERIAL");
        let upload_min_free_bytes = env.parse("UPLOAD_MIN_FREE_BYTES");
        let upload_max_open = env.parse::<usize>("UPLOAD_MAX_OPEN");
        let upload_expire_after = env.parse_with("UPLOAD_EXPIRE_AFTER", parse_duration);
        let upload_idle_timeout = env.parse_with("HTTP_UPLOAD_IDLE_TIMEOUT", parse_duration);
        if upload_buffer_bytes.is_some_and(|bytes| !(4096..=16 << 20).contains(&bytes)) {
            env.problem("UPLOAD_BUFFER_BYTES must be between 4096 and 16777216 (16 MiB)");
        }
        if upload_max_open == Some(0) {
            env.problem("UPLOAD_MAX_OPEN must be at least 1");
        }
        if upload_expire_after.is_some_and(|after| after.is_zero()) {
            env.problem("UPLOAD_EXPIRE_AFTER must be longer than 0");
        }
        let log_format = env.parse::<String>("LOG_FORMAT");
        let sentry_dsn = env.parse_optional("SENTRY_DSN");
        let sentry_environment = env.parse_optional("SENTRY_ENVIRONMENT");

        if master_key.is_none() && keys_file.is_none() && env.raw("CWP_MASTER_KEY").is_none() {
            env.problem("set CWP_MASTER_KEY or CWP_KEYS_FILE: there is no unauthenticated mode");
        }
        for (name, value) in [
            ("HTTP_MAX_BODY_BYTES", max_body_bytes),
            ("HTTP_MAX_INFLIGHT_BYTES", max_inflight_bytes),
            ("HTTP_MAX_CONNECTIONS", max_connections),
        ] {
            if value == Some(0) {
                env.problem(format!("{name} must be at least 1"));
            }
        }
        if let (Some(body), Some(inflight)) = (max_body_bytes, max_inflight_bytes)
            && inflight < body
        {
            env.problem("HTTP_MAX_INFLIGHT_BYTES must be at least HTTP_MAX_BODY_BYTES: a largest request must fit");
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
        Ok(Self {
            listen,
            admin_listen: admin_listen.expect("parsed"),
            gateway_id: gateway_id
                .unwrap_or_else(|| format!("{}-http-{}", drover_service::env::hostname_or("gateway"), listen.port())),
            proxy_protocol: proxy_protocol.expect("parsed"),
            bearer_requires_tls: bearer_requires_tls.expect("parsed"),
            max_body_bytes: max_body_bytes.expect("parsed"),
            max_inflight_bytes: max_inflight_bytes.expect("parsed"),
            max_connections: max_connections.expect("parsed"),
            header_timeout: header_timeout.expect("parsed"),
            body_timeout: body_timeout.expect("parsed"),
            store_timeout: store_timeout.expect("parsed"),
            bridge_url: bridge_url.expect("parsed"),
            bridge_tls,
            bridge_token,
            redis: redis.expect("parsed"),
            layout: layout.expect("parsed"),
            master_key,
            keys_file,
            auth_failures: FailureLimits {
                per_address: per_address.expect("parsed"),
                per_serial_address: per_serial_address.expect("parsed"),
                per_serial: per_serial.expect("parsed"),
            },
            auth_failure_window: auth_failure_window.expect("parsed"),
            upload_dir: upload_dir.expect("parsed"),
            upload_buffer_bytes: upload_buffer_bytes.expect("parsed"),
            upload_max_bytes: upload_max_bytes.expect("parsed"),
            upload_max_bytes_per_serial: upload_max_bytes_per_serial.expect("parsed"),
            upload_min_free_bytes: upload_min_free_bytes.expect("parsed"),
            upload_max_open: upload_max_open.expect("parsed"),
            upload_expire_after: upload_expire_after.expect("parsed"),
            upload_idle_timeout: upload_idle_timeout.expect("parsed"),
            json_logs,
            sentry_dsn,
            sentry_environment,
        })
    }
}
