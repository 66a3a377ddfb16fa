//! A local Drover fleet made of real processes.
//!
//! - [`process`]: child processes that die with their owner, free loopback
//!   ports, waiting for readiness without sleeping blindly.
//! - [`redis`]: a private `redis-server` with the durability Drover needs.
//! - [`binaries`] and [`components`]: Drover's own processes (vendor-bridge,
//!   drivers), started from the built binaries and configured by
//!   environment like in production.
//! - [`lbconfig`] and [`haproxy`]: the HAProxy configuration for N drivers
//!   (from `lb-config/haproxy.cfg.tmpl`) and HAProxy processes running it.
//! - [`bench`]: the benchmark runner (`fleet bench`).
//! - [`local`]: all of it together, the way `fleet up` runs it.
//! - [`http`]: a tiny GET for health checks and metrics.
//! - [`fault_proxy`]: a TCP proxy that injects network faults (latency,
//!   stalls, a lying store-and-forward hop, cuts) for the tests.

pub mod bench;
pub mod binaries;
pub mod components;
pub mod fault_proxy;
pub mod haproxy;
pub mod http;
pub mod lbconfig;
pub mod local;
pub mod process;
pub mod redis;
