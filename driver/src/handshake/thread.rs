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

use std::thread::JoinHandle;

use anyhow::Context as _;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The handshake thread and its runtime.
#[derive(Debug)]
pub struct HandshakeThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HandshakeThread {
    /// Starts the thread.
    pub fn start() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Breadcrumbs and errors from handshakes join the process's
            // Sentry hub, as those of the sessions' runtime do.
            .on_thread_start(drover_service::telemetry::share_process_hub)
            .build()
            .context("building the handshake runtime")?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("handshakes".to_owned())
            .spawn(move || {
                drover_service::telemetry::share_process_hub();
                // Runs every task spawned on the handle until told to stop;
                // then the runtime, and any task left on it, is dropped here.
                let _ = runtime.block_on(stopped);
            })
            .context("starting the handshake thread")?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where accept loops and handshakes are spawned.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Stops the runtime (tasks still on it are dropped) and waits for the
    /// thread.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}
