//! Coalesces concurrent calls of one kind into batch calls.
//!
//! A connect storm authenticates thousands of devices a second. One
//! `OpenSession` call per device cost the driver, the bridge and Redis
//! together about 150 µs of CPU, a third of all a handshake costs
//! (docs/BENCHMARKS.md, "Connect storm"); most of it is the call, not the
//! work. Here, calls that wait together go out together: the first one goes
//! at once (no added latency when there is no storm), and while
//! [`BatchLimits::in_flight`] batches are out, the next ones gather.
//!
//! The queue is unbounded in type but bounded by its callers: each waits
//! for its answer, so it holds at most one call per handshake slot
//! (`DRIVER_MAX_HANDSHAKES`, opening) or per session
//! (`DRIVER_MAX_CONNECTIONS`, closing).
//!
//! The task forming batches and the task of each batch out are tracked by
//! the caller's task tracker, and stop when the drain it is given is
//! signalled (the driver's background drain): calls still waiting then
//! fail ("shutting down").

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use drover_service::drain;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tonic::Status;

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// The most calls in one batch.
    pub max_batch: usize,
    /// The most batches out at once.
    pub in_flight: usize,
    /// The least time a batch is given, however close its callers'
    /// deadlines are.
    pub min_timeout: Duration,
}

/// What a batch call returns: one result per request, in order, or one
/// failure for all.
pub type BatchResult<Rep> = Result<Vec<Result<Rep, Status>>, Status>;

/// The sending side of a batching queue; cloning it is cheap. The task that
/// forms and sends the batches ends when its stop is signalled or the last
/// clone is dropped.
pub struct Batcher<Req, Rep> {
    queue: mpsc::UnboundedSender<Waiting<Req, Rep>>,
}

impl<Req, Rep> Clone for Batcher<Req, Rep> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<Req, Rep> std::fmt::Debug for Batcher<Req, Rep> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

/// One call waiting for its batch.
struct Waiting<Req, Rep> {
    request: Req,
    deadline: Instant,
    reply: oneshot::Sender<Result<Rep, Status>>,
}

impl<Req, Rep> Batcher<Req, Rep>
where
    Req: Send + 'static,
    Rep: Send + 'static,
{
    /// Spawns, on `tasks`, the task that sends batches with
    /// `send(requests, timeout)` until `stop` is signalled; `timeout` is
    /// what is left of the latest deadline in the batch.
    pub fn spawn<F, Fut>(limits: BatchLimits, tasks: &TaskTracker, stop: drain::Watch, send: F) -> Self
    where
        F: Fn(Vec<Req>, Duration) -> Fut + Send + 'static,
        Fut: Future<Output = BatchResult<Rep>> + Send + 'static,
    {
        let (queue, waiting) = mpsc::unbounded_channel();
        let batches = tasks.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = stop.signaled() => {}
                () = run(waiting, limits, send, batches) => {}
            }
        });
        Self { queue }
    }

    /// Makes the call as part of a batch; gives up at `deadline`.
    pub async fn call(&self, request: Req, deadline: Instant) -> Result<Rep, Status> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Waiting {
                request,
                deadline,
                reply,
            })
            .map_err(|_| Status::unavailable("shutting down"))?;
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_dropped)) => Err(Status::cancelled("the batch carrying the call was dropped")),
            Err(_elapsed) => Err(Status::deadline_exceeded("no answer in time")),
        }
    }
}

async fn run<Req, Rep, F, Fut>(
    mut queue: mpsc::UnboundedReceiver<Waiting<Req, Rep>>,
    limits: BatchLimits,
    send: F,
    batches: TaskTracker,
) where
    Req: Send + 'static,
    Rep: Send + 'static,
    F: Fn(Vec<Req>, Duration) -> Fut,
    Fut: Future<Output = BatchResult<Rep>> + Send + 'static,
{
    let in_flight = Arc::new(Semaphore::new(limits.in_flight.max(1)));
    loop {
        // The permit first: while every batch is out, calls gather.
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(limits.max_batch.min(64));
        if queue.recv_many(&mut batch, limits.max_batch.max(1)).await == 0 {
            return;
        }
        // A caller that gave up is not worth a place in the batch.
        batch.retain(|waiting| !waiting.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let now = Instant::now();
        let timeout = batch
            .iter()
            .map(|waiting| waiting.deadline.saturating_duration_since(now))
            .max()
            .unwrap_or_default()
            .max(limits.min_timeout);
        let (requests, replies): (Vec<Req>, Vec<_>) = batch
            .into_iter()
            .map(|waiting| (waiting.request, waiting.reply))
            .unzip();
        let sent = send(requests, timeout);
        batches.spawn(async move {
            let result = sent.await;
            drop(permit);
            deliver(result, replies);
        });
    }
}

/// Hands each caller its own result.
fn deliver<Rep>(result: BatchResult<Rep>, replies: Vec<oneshot::Sender<Result<Rep, Status>>>) {
    match result {
        Ok(results) if results.len() == replies.len() => {
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that gave up meanwhile does not want it.
                let _ = reply.send(result);
            }
        }
        Ok(results) => {
            let status = Status::internal(format!(
                "the bridge answered {} outcomes for {} calls",
                results.len(),
                replies.len()
            ));
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
        Err(status) => {
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    const LIMITS: BatchLimits = BatchLimits {
        max_batch: 100,
        in_flight: 1,
        min_timeout: Duration::from_secs(1),
    };

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    /// A batcher on a tracker of its own, and the signal that stops it.
    fn batcher<F, Fut>(send: F) -> (Batcher<u32, u32>, drain::Signal)
    where
        F: Fn(Vec<u32>, Duration) -> Fut + Send + 'static,
        Fut: Future<Output = BatchResult<u32>> + Send + 'static,
    {
        let (signal, watch) = drain::channel();
        (Batcher::spawn(LIMITS, &TaskTracker::new(), watch, send), signal)
    }

    /// A batch call that doubles each number, refuses odd ones, and
    /// records the size of every batch it was given.
    fn doubling(sizes: Arc<Mutex<Vec<usize>>>) -> (Batcher<u32, u32>, drain::Signal) {
        batcher(move |numbers: Vec<u32>, _timeout| {
            sizes.lock().unwrap().push(numbers.len());
            async move {
                tokio::task::yield_now().await;
                Ok(numbers
                    .into_iter()
                    .map(|n| {
                        if n % 2 == 0 {
                            Ok(n * 2)
                        } else {
                            Err(Status::invalid_argument("odd"))
                        }
                    })
                    .collect())
            }
        })
    }

    #[tokio::test]
    async fn a_lone_call_goes_at_once_and_gets_its_own_answer() {
        let sizes = Arc::default();
        let (batcher, _stop) = doubling(Arc::clone(&sizes));
        assert_eq!(batcher.call(4, later()).await.unwrap(), 8);
        assert_eq!(*sizes.lock().unwrap(), [1]);
    }

    #[tokio::test]
    async fn calls_that_wait_together_go_together_and_fail_alone() {
        let sizes = Arc::default();
        let (batcher, _stop) = doubling(Arc::clone(&sizes));
        let calls = (0..250).map(|n| batcher.call(n, later()));
        let results = futures::future::join_all(calls).await;
        for (n, result) in (0..250).zip(results) {
            if n % 2 == 0 {
                assert_eq!(result.unwrap(), n * 2);
            } else {
                assert_eq!(result.unwrap_err().code(), tonic::Code::InvalidArgument);
            }
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 250);
        assert!(sizes.iter().all(|&size| size <= LIMITS.max_batch), "{sizes:?}");
        assert!(sizes.len() <= 4, "250 calls at once took {} batches", sizes.len());
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_call_in_it() {
        let (batcher, _stop) = batcher(|_numbers, _timeout| async { Err(Status::unavailable("down")) });
        let results = futures::future::join_all((0..3).map(|n| batcher.call(n, later()))).await;
        assert!(
            results
                .iter()
                .all(|result| result.as_ref().unwrap_err().code() == tonic::Code::Unavailable)
        );
    }

    #[tokio::test]
    async fn a_wrong_number_of_answers_is_an_error_not_a_mix_up() {
        let (batcher, _stop) = batcher(|_numbers, _timeout| async { Ok(vec![Ok(1)]) });
        let results = futures::future::join_all((0..2).map(|n| batcher.call(n, later()))).await;
        for result in results {
            assert_eq!(result.unwrap_err().code(), tonic::Code::Internal);
        }
    }

    #[tokio::test]
    async fn a_call_gives_up_at_its_deadline() {
        let (batcher, _stop) = batcher(|_numbers, _timeout| std::future::pending());
        let deadline = Instant::now() + Duration::from_millis(50);
        let err = batcher.call(1, deadline).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
    }

    #[tokio::test]
    async fn a_batch_is_given_the_latest_deadline_of_its_calls() {
        let timeouts = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&timeouts);
        let (batcher, _stop) = batcher(move |numbers: Vec<u32>, timeout| {
            seen.lock().unwrap().push(timeout);
            async move { Ok(numbers.into_iter().map(Ok).collect()) }
        });
        let soon = Instant::now() + Duration::from_millis(10);
        let late = Instant::now() + Duration::from_secs(30);
        assert_eq!(batcher.call(1, soon).await.unwrap(), 1);
        assert_eq!(batcher.call(2, late).await.unwrap(), 2);
        let timeouts = timeouts.lock().unwrap();
        assert_eq!(
            timeouts[0], LIMITS.min_timeout,
            "a close deadline still gets the minimum"
        );
        assert!(timeouts[1] > Duration::from_secs(29));
    }

    #[tokio::test]
    async fn a_stopped_batcher_fails_its_calls_and_its_tasks_end() {
        let tasks = TaskTracker::new();
        let (signal, watch) = drain::channel();
        let batcher: Batcher<u32, u32> =
            Batcher::spawn(LIMITS, &tasks, watch, |_numbers, _timeout| std::future::pending());
        signal.signal();
        tasks.close();
        tasks.wait().await;
        let err = batcher.call(1, later()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    }
}
