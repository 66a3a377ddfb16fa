//! Unauthenticated work on a thread of its own.
//!
//! Accepting connections and running their handshakes is work anyone on
//! the network can ask for: 10,000 slow connections time out together and
//! reconnect together. On the runtime that also runs established sessions,
//! those bursts queued ahead of honest devices' events and pushed their ack
//! p99 to 2.5–3× the unloaded figure (docs/BENCHMARKS.md, "Honest devices
//! under a slowloris attack"). Here they run on one thread with its own
//! single-threaded runtime: the sessions' runtime never queues behind
//! them, and they get one thread's share of the CPU. An authenticated
//! connection's socket moves to the sessions' runtime before its session's
//! task is spawned there.

use crate::runtime_thread::{Nice, RuntimeThread};

/// Starts the handshake thread, at the sessions' own priority (a lower
/// one did not help honest devices under attack: docs/BENCHMARKS.md, "A
/// lower priority for the handshake thread does not measurably help").
pub fn start() -> anyhow::Result<RuntimeThread> {
    RuntimeThread::start("handshakes", Nice::NORMAL)
}
