//! Real processes on loopback for Drover's tests (`e2e/`, the
//! vendor-bridge's), `fleet up` and the benchmarks. Nothing is mocked: the
//! processes are redis-server, HAProxy and Mosquitto as installed, and
//! Drover's own built binaries configured by environment as in production.
//!
//! From the bottom up:
//!
//! - [`process`]: child processes killed (and reaped) when their guard
//!   drops, programs on `PATH`, what `/proc` says of a process.
//! - [`net`]: free loopback ports. [`wait`]: waiting on a condition with a
//!   deadline (readiness, [`wait::eventually`], [`wait::within`]), never
//!   on a guessed duration. [`http`]: a tiny GET for health and metrics.
//! - [`redis`], [`mosquitto`]: private redis-server (durable as Drover
//!   needs it) and Mosquitto (the MQTT peer) on free ports;
//!   [`redis_cluster`]: a Redis Cluster of such servers.
//! - [`lbconfig`] and [`haproxy`]: the HAProxy configuration for N drivers
//!   (also `fleet lb-config`'s) and HAProxy processes running it.
//! - [`binaries`] and [`components`]: Drover's own processes, the
//!   vendor-bridge, drivers and HTTP gateways, from the built binaries;
//!   [`ingest`]: a device's HTTP requests to a gateway, signed.
//! - [`local`]: all of it together behind HAProxy, as `fleet up` runs it.
//! - [`fault_proxy`]: a TCP proxy that injects network faults.
//! - `pki` (feature `pki`): a certificate authority for the TLS tests.
//!
//! For test bodies, which fail (panic) rather than return errors:
//! [`fleet`] (the [`fleet::TestFleet`] of Redis, bridge and drivers),
//! [`cluster_fleet`] (the same on a Redis Cluster),
//! [`haproxy_fleet`] (a [`local::LocalFleet`] for tests), [`device`] (the
//! test master key, device keys, a connected device), [`inspect`] (what
//! Redis holds: exactly-once verdicts) and [`sim`] (the `controller-sim`
//! binary).

pub mod binaries;
pub mod cluster_fleet;
pub mod components;
pub mod device;
pub mod fault_proxy;
pub mod fleet;
pub mod haproxy;
pub mod haproxy_fleet;
pub mod http;
pub mod ingest;
pub mod inspect;
pub mod lbconfig;
pub mod local;
pub mod mosquitto;
pub mod net;
pub mod operator;
#[cfg(feature = "pki")]
pub mod pki;
pub mod process;
pub mod redis;
pub mod redis_cluster;
pub mod sim;
pub mod wait;
