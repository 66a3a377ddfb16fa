//! A local Drover fleet made of real processes.
//!
//! - [`process`]: child processes that die with their owner, free loopback
//!   ports, waiting for readiness without sleeping blindly.
//! - [`redis`]: a private `redis-server` with the durability Drover needs.

pub mod process;
pub mod redis;
