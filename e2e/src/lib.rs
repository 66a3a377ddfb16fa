//! Drover's end-to-end tests. This library is empty: the tests are in
//! `tests/`, one file per concern, each against real processes on loopback
//! (redis-server, HAProxy, the vendor-bridge and drivers from their built
//! binaries) started with `drover-testkit`, driven by simulated
//! controllers (`controller-sim`).
//!
//! - `events.rs`, `commands.rs`, `uploads.rs`, `auth.rs`, `errors.rs`,
//!   `supersede.rs`, `park.rs`: the protocol's paths through a driver, one
//!   device at a time.
//! - `fleet.rs`, `recovery.rs`, `faults.rs`, `soak.rs`: a fleet behind
//!   HAProxy under load while drivers, the bridge, Redis, HAProxy and the
//!   network fail; nothing acknowledged is lost or stored twice.
//! - `hostile.rs`: slow, broken and malicious clients.
//! - `tls.rs`, `acl.rs`, `sentry.rs`: mutual TLS, Redis ACL users, error
//!   reporting.
//! - `sim.rs`: the `controller-sim` binary's scenarios.
//! - `compose.rs`, `docs.rs`: docker-compose.yml and the README checked
//!   against the binaries.
//!
//! `cargo test --workspace` builds the binaries first (Cargo builds the
//! binaries of every package whose integration tests it runs); to run one
//! file alone, `cargo build --workspace` and then, e.g.,
//! `cargo test -p drover-e2e --test faults`. `DROVER_TEST_LOGS=1` shows
//! the processes' logs.
//!
//! What more than one test file reads the same way lives here:
//! [`yaml`] (configuration files as JSON values).

pub mod yaml;
