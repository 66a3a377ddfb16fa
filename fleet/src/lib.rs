//! A local Drover fleet made of real processes.
//!
//! - [`process`]: child processes that die with their owner, free loopback
//!   ports, waiting for readiness without sleeping blindly.
//! - [`redis`]: a private `redis-server` with the durability Drover needs.
//! - [`binaries`] and [`components`]: Drover's own processes (vendor-bridge,
//!   drivers), started from the built binaries and configured by
//!   environment like in production.
//! - [`http`]: a tiny GET for health checks and metrics.

pub mod binaries;
pub mod components;
pub mod http;
pub mod process;
pub mod redis;
