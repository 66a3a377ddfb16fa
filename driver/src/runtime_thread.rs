//! A runtime on a thread of its own, at a CPU priority of its own.
//!
//! The sessions' runtime runs what devices wait on: events to their `ACK`s,
//! commands, pings. Two kinds of work are kept off it, each on one thread
//! with a single-threaded runtime (the handshakes' and the transfers'):
//! the sessions' runtime never queues behind them, and each gets at most
//! one core. The transfers' thread also runs at a lower CPU priority
//! (`DRIVER_TRANSFER_PRIORITY`), so that the kernel runs the event path
//! first whenever both want a core.

use std::thread::JoinHandle;

use anyhow::Context as _;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::warn;

/// How a thread competes for the CPU: its nice value, 0 (as every other
/// thread) to 19 (the smallest share of a busy core the kernel gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nice(u8);

impl Nice {
    /// As every other thread of the process.
    pub const NORMAL: Self = Self(0);
    /// The least a thread can ask for without giving up its share.
    pub const LOWEST: Self = Self(19);

    /// A nice value of 0 to 19 (raising a thread above 0 takes a
    /// privilege the driver does not ask for).
    pub fn new(value: u8) -> Option<Self> {
        (value <= 19).then_some(Self(value))
    }

    /// The value.
    pub fn get(self) -> u8 {
        self.0
    }

    /// Gives the calling thread this nice value. Lowering one's own
    /// priority needs no privilege; on Linux it acts on one thread.
    fn apply_to_current_thread(self) -> std::io::Result<()> {
        if self == Self::NORMAL {
            return Ok(());
        }
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), i32::from(self.0))?;
        Ok(())
    }
}

/// A thread and the single-threaded runtime it runs.
#[derive(Debug)]
pub struct RuntimeThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RuntimeThread {
    /// Starts the thread, named `name`, at `nice`.
    pub fn start(name: &str, nice: Nice) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Breadcrumbs and errors from its tasks join the process's
            // Sentry hub, as those of the sessions' runtime do.
            .on_thread_start(drover_service::telemetry::share_process_hub)
            .build()
            .with_context(|| format!("building the {name} runtime"))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread_name = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                drover_service::telemetry::share_process_hub();
                if let Err(err) = nice.apply_to_current_thread() {
                    warn!(thread = thread_name, nice = nice.get(), error = %err, "cannot lower the thread's CPU priority: it competes with the event path as an equal");
                }
                // Runs every task spawned on the handle until told to stop;
                // then the runtime, and any task left on it, is dropped here.
                let _ = runtime.block_on(stopped);
            })
            .with_context(|| format!("starting the {name} thread"))?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where its tasks are spawned.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of the calling thread, from the kernel.
    fn nice_of_current_thread() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    async fn nice_on(thread: &RuntimeThread) -> i32 {
        thread.handle().spawn(async { nice_of_current_thread() }).await.unwrap()
    }

    #[tokio::test]
    async fn a_runtime_thread_runs_at_its_nice_value_and_only_it_does() {
        let ours = nice_of_current_thread();
        let normal = RuntimeThread::start("test-normal", Nice::NORMAL).unwrap();
        let lowest = RuntimeThread::start("test-lowest", Nice::LOWEST).unwrap();
        assert_eq!(nice_on(&normal).await, ours, "nice 0 leaves the thread as its parent");
        assert_eq!(nice_on(&lowest).await, 19);
        assert_eq!(nice_of_current_thread(), ours, "the caller's thread is unchanged");
        normal.stop().await;
        lowest.stop().await;
    }

    #[test]
    fn nice_values_beyond_19_are_refused() {
        assert_eq!(Nice::new(19), Some(Nice::LOWEST));
        assert_eq!(Nice::new(0), Some(Nice::NORMAL));
        assert_eq!(Nice::new(20), None);
    }
}
