//! The bridge's configuration: every environment variable it reads, in one
//! table ([`VARIABLES`], also printed by `--help`), parsed once at start
//! into a [`Config`] that is passed down; nothing else reads the
//! environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use drover_proto::auth::BearerToken;
use drover_redis::Target;
use drover_schema::Layout;
use drover_service::env::{ConfigError, EnvReader, Variable};

pub use crate::durability::DurabilityPolicy;
pub use crate::store::ReplicaWait;

/// Every variable the bridge reads, with its default and meaning.
pub static VARIABLES: &[Variable] = &[
    Variable {
        name: "BRIDGE_LISTEN",
        default: Some("127.0.0.1:50051"),
        help: "address the gRPC server (VendorBridge + grpc.health.v1) listens on; an address other than loopback needs BRIDGE_TOKEN (or BRIDGE_TOKEN_FILE) or BRIDGE_TLS_CLIENT_CA",
    },
    Variable {
        name: "BRIDGE_METRICS_LISTEN",
        default: Some("127.0.0.1:9102"),
        help: "address for HTTP /metrics (Prometheus) and /healthz (200 SERVING, 503 NOT_SERVING); read-only and unauthenticated: loopback by default, another address exposes them to whoever reaches it (e.g. 0.0.0.0:9102 for a Prometheus on another host or container)",
    },
    Variable {
        name: "BRIDGE_TOKEN",
        default: None,
        help: "shared secret every VendorBridge call must carry (authorization: Bearer TOKEN; the drivers' VENDOR_BRIDGE_TOKEN), at least 16 visible ASCII characters; proves the caller is a driver, not which one; grpc.health.v1 needs none",
    },
    Variable {
        name: "BRIDGE_TOKEN_FILE",
        default: None,
        help: "file holding BRIDGE_TOKEN (e.g. a mounted secret; surrounding whitespace ignored); set one or the other, not both",
    },
    Variable {
        name: "BRIDGE_TLS_CERT",
        default: None,
        help: "PEM certificate chain of the gRPC server; set with BRIDGE_TLS_KEY to serve TLS only (unset: plaintext)",
    },
    Variable {
        name: "BRIDGE_TLS_KEY",
        default: None,
        help: "PEM private key of BRIDGE_TLS_CERT",
    },
    Variable {
        name: "BRIDGE_TLS_CLIENT_CA",
        default: None,
        help: "PEM CA certificate(s); when set, every client must present a certificate that chains to one (mutual TLS), and may only act as a driver id its certificate names (its subject CN or a DNS name of its subjectAltName)",
    },
    Variable {
        name: "REDIS_URL",
        default: Some("redis://127.0.0.1:6379"),
        help: "the Redis that holds events and the device registry (needs appendonly yes, appendfsync always, no-appendfsync-on-rewrite no: see BRIDGE_DURABILITY); redis://USER:PASSWORD@HOST:PORT for an ACL user",
    },
    drover_redis::config::CLUSTER_NODES,
    drover_redis::config::EVENT_PARTITIONS,
    Variable {
        name: "BRIDGE_WAIT_REPLICAS",
        default: Some("0"),
        help: "replicas that must confirm each write (Redis WAIT) before the bridge acknowledges it; with 1, an acknowledged event survives the failover of its master (README, Redis Cluster); 0: acknowledged once on the master's disk",
    },
    Variable {
        name: "BRIDGE_WAIT_TIMEOUT",
        default: Some("1s"),
        help: "how long a write waits for BRIDGE_WAIT_REPLICAS; when fewer confirm, nothing is acknowledged and the batch is retried",
    },
    Variable {
        name: "BRIDGE_DURABILITY",
        default: Some("strict"),
        help: "strict: while Redis is not verified to fsync every write (checked at start, after a reconnect and every 5 s), store and acknowledge nothing and report health NOT_SERVING; relaxed: accept weaker settings, with a warning",
    },
    Variable {
        name: "BRIDGE_MAX_STREAM_BYTES",
        default: Some("33554432"),
        help: "bytes of batches (as received) one driver's stream may hold before they are stored and answered; beyond it the bridge stops reading that stream until some are (HTTP/2 flow control holds the driver back); at least 16777216, the largest message",
    },
    Variable {
        name: "BRIDGE_MAX_QUEUED_BYTES",
        default: Some("268435456"),
        help: "the same bound for all streams together; at least BRIDGE_MAX_STREAM_BYTES",
    },
    Variable {
        name: "BRIDGE_SHUTDOWN_GRACE",
        default: Some("10s"),
        help: "on SIGTERM, how long batches already received may take to be stored and answered",
    },
    Variable {
        name: "LOG_FORMAT",
        default: Some("text"),
        help: "text or json (one object per line); filter with RUST_LOG",
    },
    Variable {
        name: "SENTRY_DSN",
        default: None,
        help: "where errors and panics are reported; unset disables Sentry",
    },
    Variable {
        name: "SENTRY_ENVIRONMENT",
        default: None,
        help: "Sentry's environment tag, e.g. production",
    },
];

/// A variable the bridge once read and no longer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retired {
    /// Its name.
    pub name: &'static str,
    /// Why it no longer means anything, for the warning.
    pub why: &'static str,
}

/// Variables the bridge no longer reads. One left in a deployment's
/// environment must not stop the bridge, nor go unnoticed: the bridge
/// starts and warns once that it ignores it.
pub static RETIRED: &[Retired] = &[Retired {
    name: "REDIS_POOL_SIZE",
    why: "the bridge has no connection pool: its unary calls share one multiplexed Redis connection \
          and each event stream has one of its own",
}];

/// What `--help` says the binary is.
pub const SUMMARY: &str = "The gRPC bridge between Drover drivers and Redis: stores device events exactly once \
     and keeps the device registry.";

/// The bridge's configuration, parsed and checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the gRPC server listens (`BRIDGE_LISTEN`). Without a token and
    /// without mutual TLS, only a loopback address is accepted.
    pub listen: SocketAddr,
    /// Where `/metrics` and `/healthz` are served (`BRIDGE_METRICS_LISTEN`,
    /// bound by the binary: [`crate::admin`]).
    pub metrics_listen: SocketAddr,
    /// The token every `VendorBridge` call must carry (`BRIDGE_TOKEN` or
    /// `BRIDGE_TOKEN_FILE`); `None`: no token is asked for.
    pub token: Option<BearerToken>,
    /// TLS on the gRPC server (`BRIDGE_TLS_*`); `None`: plaintext.
    pub tls: Option<ServerTls>,
    /// Redis (`REDIS_URL`) or a Redis Cluster (`REDIS_CLUSTER_NODES`).
    pub redis: Target,
    /// The key layout (`REDIS_EVENT_PARTITIONS`, and whether on a cluster).
    pub layout: Layout,
    /// Replicas that confirm each write before it is acknowledged
    /// (`BRIDGE_WAIT_REPLICAS`, `BRIDGE_WAIT_TIMEOUT`).
    pub replica_wait: ReplicaWait,
    /// Whether Redis must be verified to fsync every write before anything
    /// is stored (`BRIDGE_DURABILITY`).
    pub durability: DurabilityPolicy,
    /// Bytes of batches one stream may hold unanswered
    /// (`BRIDGE_MAX_STREAM_BYTES`).
    pub max_stream_bytes: u64,
    /// Bytes of batches all streams together may hold unanswered
    /// (`BRIDGE_MAX_QUEUED_BYTES`).
    pub max_queued_bytes: u64,
    /// How long a shutdown waits for received batches (`BRIDGE_SHUTDOWN_GRACE`).
    pub shutdown_grace: Duration,
    /// How logs are written (`LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Sentry's DSN (`SENTRY_DSN`); `None` disables Sentry.
    pub sentry_dsn: Option<String>,
    /// Sentry's environment (`SENTRY_ENVIRONMENT`).
    pub sentry_environment: Option<String>,
    /// The [`RETIRED`] variables that are set, to warn about.
    pub retired_set: Vec<Retired>,
}

/// The files of the gRPC server's TLS, as configured (read by [`crate::serve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// The server's certificate chain (`BRIDGE_TLS_CERT`).
    pub cert: PathBuf,
    /// Its private key (`BRIDGE_TLS_KEY`).
    pub key: PathBuf,
    /// CA(s) client certificates must chain to (`BRIDGE_TLS_CLIENT_CA`);
    /// `None`: clients are not asked for a certificate.
    pub client_ca: Option<PathBuf>,
}

/// `LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("must be text or json"),
        }
    }
}

impl Config {
    /// Reads every variable of [`VARIABLES`] from the environment and
    /// reports every bad one together.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut env = EnvReader::new(VARIABLES);
        let listen = env.parse::<SocketAddr>("BRIDGE_LISTEN");
        let metrics_listen = env.parse::<SocketAddr>("BRIDGE_METRICS_LISTEN");
        let token = env
            .secret("BRIDGE_TOKEN", "BRIDGE_TOKEN_FILE")
            .and_then(|text| match BearerToken::new(&text) {
                Ok(token) => Some(token),
                Err(err) => {
                    env.problem(format!("BRIDGE_TOKEN: {err}"));
                    None
                }
            });
        let tls_cert = env.parse_optional::<PathBuf>("BRIDGE_TLS_CERT");
        let tls_key = env.parse_optional::<PathBuf>("BRIDGE_TLS_KEY");
        let tls_client_ca = env.parse_optional::<PathBuf>("BRIDGE_TLS_CLIENT_CA");
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(ServerTls {
                cert,
                key,
                client_ca: tls_client_ca,
            }),
            (None, None) => {
                if tls_client_ca.is_some() {
                    env.problem("BRIDGE_TLS_CLIENT_CA needs BRIDGE_TLS_CERT and BRIDGE_TLS_KEY: client certificates are only asked for over TLS");
                }
                None
            }
            (Some(_), None) => {
                env.problem("BRIDGE_TLS_CERT is set but BRIDGE_TLS_KEY is not: set both, or neither for plaintext");
                None
            }
            (None, Some(_)) => {
                env.problem("BRIDGE_TLS_KEY is set but BRIDGE_TLS_CERT is not: set both, or neither for plaintext");
                None
            }
        };
        if let Some(listen) = listen {
            let mutual_tls = tls.as_ref().is_some_and(|tls| tls.client_ca.is_some());
            // Reading whether the token variables are set, not whether the
            // token is valid: an invalid one is reported on its own.
            let token_set = env.raw("BRIDGE_TOKEN").is_some() || env.raw("BRIDGE_TOKEN_FILE").is_some();
            if let Err(exposed) = check_exposure(listen, token_set, mutual_tls) {
                env.problem(exposed.to_string());
            }
        }
        let redis = Target::read(&mut env);
        let layout = drover_redis::config::read_layout(&mut env, redis.as_ref());
        let wait_replicas = env.parse::<u32>("BRIDGE_WAIT_REPLICAS");
        let wait_timeout = env.parse_with("BRIDGE_WAIT_TIMEOUT", drover_service::duration::parse_duration);
        if wait_timeout.is_some_and(|t| t.is_zero()) {
            env.problem("BRIDGE_WAIT_TIMEOUT must be above 0 (Redis's WAIT 0 would wait forever)");
        }
        let durability = env.parse::<DurabilityPolicy>("BRIDGE_DURABILITY");
        let max_stream_bytes = env.parse::<u64>("BRIDGE_MAX_STREAM_BYTES");
        let max_queued_bytes = env.parse::<u64>("BRIDGE_MAX_QUEUED_BYTES");
        if let (Some(stream), Some(queued)) = (max_stream_bytes, max_queued_bytes) {
            for problem in check_byte_budgets(stream, queued) {
                env.problem(problem);
            }
        }
        let shutdown_grace = env.parse_with("BRIDGE_SHUTDOWN_GRACE", drover_service::duration::parse_duration);
        let log_format = env.parse::<LogFormat>("LOG_FORMAT");
        let sentry_dsn = env.parse_optional::<String>("SENTRY_DSN");
        let sentry_environment = env.parse_optional::<String>("SENTRY_ENVIRONMENT");
        let retired_set = retired_set(|name| std::env::var_os(name).is_some());
        env.finish()?;
        match (
            listen,
            metrics_listen,
            (redis, layout, wait_replicas, wait_timeout),
            durability,
            max_stream_bytes,
            max_queued_bytes,
            shutdown_grace,
            log_format,
        ) {
            (
                Some(listen),
                Some(metrics_listen),
                (Some(redis), Some(layout), Some(replicas), Some(timeout)),
                Some(durability),
                Some(max_stream_bytes),
                Some(max_queued_bytes),
                Some(shutdown_grace),
                Some(log_format),
            ) => Ok(Self {
                listen,
                metrics_listen,
                token,
                tls,
                redis,
                layout,
                replica_wait: ReplicaWait { replicas, timeout },
                durability,
                max_stream_bytes,
                max_queued_bytes,
                shutdown_grace,
                log_format,
                sentry_dsn,
                sentry_environment,
                retired_set,
            }),
            // `finish` fails whenever a variable with a default did not parse.
            _ => Err(ConfigError {
                problems: vec!["a variable did not parse".to_owned()],
            }),
        }
    }

    /// A configuration for the one Redis at `redis_url` with every other
    /// value at its default (listening on 127.0.0.1, ephemeral ports): what
    /// tests and embedders start from.
    pub fn for_redis(redis_url: impl Into<String>) -> Self {
        Self::for_target(Target::Single(redis_url.into()), Layout::SINGLE)
    }

    /// A configuration for `redis` with keys laid out as `layout`, every
    /// other value at its default.
    pub fn for_target(redis: Target, layout: Layout) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: None,
            tls: None,
            redis,
            layout,
            replica_wait: ReplicaWait::NONE,
            durability: DurabilityPolicy::Strict,
            max_stream_bytes: DEFAULT_MAX_STREAM_BYTES,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            shutdown_grace: Duration::from_secs(10),
            log_format: LogFormat::Text,
            sentry_dsn: None,
            sentry_environment: None,
            retired_set: Vec::new(),
        }
    }

    /// Whether clients must present a certificate (mutual TLS), which then
    /// names the driver ids they may act as.
    pub fn mutual_tls(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some())
    }
}

/// `BRIDGE_MAX_STREAM_BYTES`'s default: 32 MiB, two of the largest messages.
pub const DEFAULT_MAX_STREAM_BYTES: u64 = 32 << 20;
/// `BRIDGE_MAX_QUEUED_BYTES`'s default: 256 MiB, eight full streams.
pub const DEFAULT_MAX_QUEUED_BYTES: u64 = 256 << 20;

/// Who may reach a bridge that listens on `listen`: anyone who can reach
/// the address, unless calls need a token or a client certificate. Without
/// either, only a loopback address is acceptable (the processes of this
/// host, and nobody else, can call).
pub fn check_exposure(listen: SocketAddr, token: bool, mutual_tls: bool) -> Result<(), Exposed> {
    if token || mutual_tls || listen.ip().is_loopback() {
        return Ok(());
    }
    Err(Exposed { listen })
}

/// A bridge listening beyond loopback with no way to tell its callers
/// apart ([`check_exposure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "BRIDGE_LISTEN={listen} is reachable from other hosts, but neither BRIDGE_TOKEN (or BRIDGE_TOKEN_FILE) \
     nor BRIDGE_TLS_CLIENT_CA is set: anyone who reaches it could store events and take over device sessions. \
     Set a token (e.g. `openssl rand -hex 32`, and the same as VENDOR_BRIDGE_TOKEN on the drivers), \
     or mutual TLS, or listen on a loopback address such as 127.0.0.1:{port}",
    port = listen.port()
)]
pub struct Exposed {
    /// The address it would listen on.
    pub listen: SocketAddr,
}

/// The problems of a pair of byte budgets: a stream's must hold the largest
/// message, and all streams' must hold one stream's.
fn check_byte_budgets(stream: u64, queued: u64) -> Vec<String> {
    let mut problems = Vec::new();
    let largest = drover_proto::MAX_MESSAGE_BYTES as u64;
    if stream < largest {
        problems.push(format!(
            "BRIDGE_MAX_STREAM_BYTES={stream} is below {largest}, the largest message a driver may send"
        ));
    }
    if queued < stream {
        problems.push(format!(
            "BRIDGE_MAX_QUEUED_BYTES={queued} is below BRIDGE_MAX_STREAM_BYTES={stream}: all streams together may hold at least what one may"
        ));
    }
    problems
}

/// The [`RETIRED`] variables for which `is_set` holds.
fn retired_set(is_set: impl Fn(&str) -> bool) -> Vec<Retired> {
    RETIRED.iter().filter(|retired| is_set(retired.name)).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leftover_redis_pool_size_is_ignored_not_read() {
        assert!(
            VARIABLES.iter().all(|variable| variable.name != "REDIS_POOL_SIZE"),
            "REDIS_POOL_SIZE is no variable of the bridge any more"
        );
        let set = retired_set(|name| name == "REDIS_POOL_SIZE");
        assert_eq!(
            set.iter().map(|retired| retired.name).collect::<Vec<_>>(),
            ["REDIS_POOL_SIZE"]
        );
        assert_eq!(retired_set(|_| false), [], "nothing to warn about when it is unset");
    }

    #[test]
    fn a_retired_variable_is_not_also_a_current_one() {
        for retired in RETIRED {
            assert!(
                VARIABLES.iter().all(|variable| variable.name != retired.name),
                "{} is both read and retired",
                retired.name
            );
        }
    }
}
