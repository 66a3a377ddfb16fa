//! The cap on connections that have not authenticated yet
//! (`DRIVER_MAX_HANDSHAKES`), and the one deadline each of them has, from
//! accept to `AUTH` (CWP/1 §2: 10 seconds by default).
//!
//! When every slot is taken, a new connection takes the slot of the
//! **oldest** handshake in progress, which is told to leave with an
//! unsealed `ERROR BUSY` (the device keeps its data and retries later).
//! Evicting the oldest rather than refusing the newcomer protects honest
//! devices: an honest handshake takes a few round trips, so it is almost
//! never the oldest; a slowloris holds its slot until the deadline, so it
//! always is. To push an honest device out, an attacker has to open
//! `DRIVER_MAX_HANDSHAKES` connections within that device's few round
//! trips, instead of that many per handshake deadline to lock everyone
//! out. It costs one ordered-map entry per handshake.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Every handshake in progress on this driver, oldest first.
#[derive(Debug)]
pub struct HandshakeSlots {
    /// `DRIVER_MAX_HANDSHAKES`.
    cap: usize,
    /// Slot number (in accept order) → the token that evicts it.
    open: Mutex<OpenSlots>,
    /// `drover_driver_handshakes_in_progress`.
    in_progress: Gauge,
}

#[derive(Debug, Default)]
struct OpenSlots {
    next_id: u64,
    by_age: BTreeMap<u64, CancellationToken>,
}

/// One connection's place among the handshakes in progress; freed when
/// dropped (after `AUTH`, or when the connection ends first).
#[derive(Debug)]
pub struct HandshakeSlot {
    id: u64,
    /// When the handshake must be complete: `DRIVER_HANDSHAKE_TIMEOUT`
    /// after accept, PROXY header included.
    pub deadline: Instant,
    evicted: CancellationToken,
    slots: Arc<HandshakeSlots>,
}

impl HandshakeSlots {
    /// Room for `cap` handshakes at once (at least one).
    pub fn new(cap: usize, in_progress: Gauge) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            open: Mutex::new(OpenSlots::default()),
            in_progress,
        })
    }

    fn lock(&self) -> MutexGuard<'_, OpenSlots> {
        // The map stays consistent even if a holder panicked: every
        // critical section is a single insert or remove.
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a connection accepted now, evicting the oldest handshake
    /// in progress if all are taken.
    pub fn take(self: &Arc<Self>, deadline: Instant) -> HandshakeSlot {
        let evicted = CancellationToken::new();
        let mut open = self.lock();
        if open.by_age.len() >= self.cap
            && let Some((_, oldest)) = open.by_age.pop_first()
        {
            oldest.cancel();
        }
        let id = open.next_id;
        open.next_id += 1;
        open.by_age.insert(id, evicted.clone());
        self.in_progress
            .set(i64::try_from(open.by_age.len()).unwrap_or(i64::MAX));
        HandshakeSlot {
            id,
            deadline,
            evicted,
            slots: self.clone(),
        }
    }

    /// Handshakes in progress now.
    pub fn in_progress(&self) -> usize {
        self.lock().by_age.len()
    }
}

impl HandshakeSlot {
    /// Resolves when a newer connection has taken this slot.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await;
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        open.by_age.remove(&self.id);
        self.slots
            .in_progress
            .set(i64::try_from(open.by_age.len()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn beyond_the_cap_the_oldest_handshake_is_evicted() {
        let slots = HandshakeSlots::new(2, Gauge::default());
        let deadline = Instant::now() + Duration::from_secs(10);
        let oldest = slots.take(deadline);
        let middle = slots.take(deadline);
        assert!(!oldest.evicted.is_cancelled());
        let newest = slots.take(deadline);
        assert!(oldest.evicted.is_cancelled(), "the oldest leaves");
        assert!(!middle.evicted.is_cancelled());
        assert!(!newest.evicted.is_cancelled());
        assert_eq!(slots.in_progress(), 2);
        drop(oldest);
        assert_eq!(slots.in_progress(), 2, "an evicted slot was already freed");
        drop(middle);
        assert_eq!(slots.in_progress(), 1);
        drop(newest);
        assert_eq!(slots.in_progress(), 0);
        assert_eq!(slots.in_progress.get(), 0);
    }
}
