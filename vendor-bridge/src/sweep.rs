//! The ledger sweep: durable commands expire when their ttl passes, with
//! their `EXPIRED` outcome, whether or not their device comes back.
//!
//! Every bridge sweeps every partition about once a second
//! ([`SWEEP_EVERY`]); the script is idempotent, so bridges sweeping the same
//! ledger expire each command once. What a sweep costs: one
//! `ZRANGEBYSCORE` per partition, and one script per ledger that has
//! something due.

use std::sync::Arc;
use std::time::Duration;

use drover_service::backoff::Backoff;
use drover_service::drain;
use tracing::{debug, warn};

use crate::stats::Stats;
use crate::store::Store;

/// How often the due ledgers are swept: an `EXPIRED` outcome comes at most
/// about this long after the ttl.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The most ledgers one sweep expires per partition; the rest wait for the
/// next sweep, which comes at once.
const LEDGERS_PER_SWEEP: usize = 500;

/// Waits after a failed sweep (Redis down or restarting).
const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

/// Sweeps until `stop` is signalled.
pub async fn run(store: Store, stats: Arc<Stats>, stop: drain::Watch) {
    let mut backoff = RETRY;
    loop {
        let wait = match store.sweep_ledgers(LEDGERS_PER_SWEEP).await {
            Ok(sweep) => {
                backoff.reset();
                if sweep.expired > 0 {
                    debug!(expired = sweep.expired, "durable commands expired");
                    stats.add_ledger_expired(sweep.expired);
                }
                if sweep.more_due { Duration::ZERO } else { SWEEP_EVERY }
            }
            Err(err) => {
                let wait = backoff.next_delay();
                warn!(error = %err, retry_in = ?wait, "could not sweep the durable command ledgers");
                wait
            }
        };
        tokio::select! {
            () = stop.signaled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
