//! The plumbing the driver and the vendor-bridge share, so that both behave
//! the same way for an operator:
//!
//! - [`env`](mod@env): configuration from environment variables (and `.env`), read
//!   once at start against a documented table; every bad variable reported
//!   together; the same table prints `--help`; [`env::handle_cli`] answers
//!   the command line (`--health` probes a running server at
//!   [`env::probe_address`]).
//! - [`telemetry`]: `tracing` logs (text or JSON, `RUST_LOG`) and, when
//!   `SENTRY_DSN` is set, Sentry errors, panics and breadcrumbs; the
//!   operator's `--sentry-test`.
//! - [`shutdown`]: SIGTERM/SIGINT as a future, SIGHUP as a stream;
//!   [`drain`]: the one way a process's tasks are told to stop and awaited.
//! - [`backoff`], [`clock`] and [`duration`]: the one jittered backoff,
//!   the one Unix-millisecond clock and the one duration syntax of every
//!   Drover process (servers, simulator, tools).
//! - [`tls`]: the PEM files of the optional TLS between drivers and the
//!   bridge, checked at start.
//! - [`admin`]: the HTTP endpoint of both servers, `/metrics` and
//!   `/healthz`.
//! - [`proxy`]: HAProxy's PROXY v2 header (the client's real address),
//!   read by the driver and the HTTP gateway.

pub mod admin;
pub mod backoff;
pub mod clock;
pub mod drain;
pub mod duration;
pub mod env;
pub mod proxy;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
