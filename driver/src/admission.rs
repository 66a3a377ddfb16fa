//! Admission: room for events awaiting storage, `DRIVER_MAX_PENDING_EVENTS`
//! in all, as a value.
//!
//! [`Admission::admit`] hands out an [`EventPermit`], the room for one
//! event; [`EventPermit::submit`] consumes it with the event, which then
//! travels to the pipeline ([`crate::pipeline`]) and holds its room until
//! the bridge says it is durable. A permit dropped without an event gives
//! its room back. So no event is stored without room, and no room is
//! taken without an event: the rule is kept by the types, not by
//! convention. The session rules ask for room through
//! [`cwp::EventStore::admit`], and [`cwp::session::Step::Store`] carries
//! the permit to the one place that submits it.
//!
//! The pending count is one number, the `drover_driver_events_pending`
//! gauge itself: the permits move it, the pipeline lowers it as batches
//! become durable, `/metrics` reads it.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;

use crate::session::registry::SessionHandle;

/// An event on its way to the bridge.
#[derive(Debug)]
pub struct PendingEvent {
    /// The session that received it, to be told when it is durable.
    pub session: Arc<SessionHandle>,
    /// The event as decoded.
    pub event: cwp::Event,
    /// When the driver received it (for the ack latency metric).
    pub received: Instant,
    /// When the driver received it, Unix ms (stored with the event).
    pub received_ms: u64,
}

/// The sessions' side of admission: cheap to clone.
#[derive(Debug, Clone)]
pub struct Admission {
    /// To the pipeline. Unbounded in type, bounded by the permits: every
    /// event in it holds one, so it never holds more than `max_pending`.
    /// A plain send keeps the session loop free of a waiting send's
    /// future (idle sessions' tasks stay small).
    queue: mpsc::UnboundedSender<PendingEvent>,
    /// Events admitted and not yet durable: `drover_driver_events_pending`.
    pending: Gauge,
    /// `DRIVER_MAX_PENDING_EVENTS`.
    max_pending: i64,
}

/// The driver holds as many events awaiting storage as it may: the device
/// gets `BUSY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionFull;

/// Room for one event, until it is durable. Dropped unused, it gives the
/// room back.
#[derive(Debug)]
#[must_use = "a permit is room for one event: submit the event with it"]
pub struct EventPermit {
    admission: Admission,
    /// Set once the event is on its way: the room then goes back when the
    /// pipeline confirms it, not when the permit drops.
    submitted: bool,
}

/// The pipeline's side: the events, and giving their room back.
#[derive(Debug)]
pub struct AdmittedEvents {
    queue: mpsc::UnboundedReceiver<PendingEvent>,
    pending: Gauge,
}

/// Admission for at most `max_pending` events; `pending` is the gauge that
/// counts them.
pub fn admission(max_pending: usize, pending: Gauge) -> (Admission, AdmittedEvents) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Admission {
            queue: tx,
            pending: pending.clone(),
            max_pending: i64::try_from(max_pending).unwrap_or(i64::MAX),
        },
        AdmittedEvents { queue: rx, pending },
    )
}

impl Admission {
    /// Room for one event, or [`AdmissionFull`].
    pub fn admit(&self) -> Result<EventPermit, AdmissionFull> {
        let before = self.pending.inc();
        if before >= self.max_pending {
            self.pending.dec();
            return Err(AdmissionFull);
        }
        Ok(EventPermit {
            admission: self.clone(),
            submitted: false,
        })
    }

    /// Events admitted and not yet durable.
    pub fn pending(&self) -> usize {
        usize::try_from(self.pending.get()).unwrap_or(0)
    }
}

impl EventPermit {
    /// Sends the event to the pipeline with this permit's room. If the
    /// pipeline has stopped (the driver is shutting down) the event is not
    /// stored and will not be acknowledged: the device sends it again.
    pub fn submit(mut self, event: PendingEvent) {
        event.session.event_submitted();
        match self.admission.queue.send(event) {
            Ok(()) => self.submitted = true,
            Err(mpsc::error::SendError(event)) => event.session.events_durable(0, 1),
        }
    }
}

impl Drop for EventPermit {
    fn drop(&mut self) {
        if !self.submitted {
            self.admission.pending.dec();
        }
    }
}

impl AdmittedEvents {
    /// The next event; `None` once every [`Admission`] is gone.
    pub async fn recv(&mut self) -> Option<PendingEvent> {
        self.queue.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<PendingEvent> {
        self.queue.try_recv().ok()
    }

    /// Whether no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// `count` events are durable: their room goes back.
    pub fn release(&self, count: usize) {
        self.pending.dec_by(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Events admitted and not yet durable.
    pub fn pending(&self) -> usize {
        usize::try_from(self.pending.get()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use cwp::{Event, SessionId};

    use super::*;

    fn pending_event(session: &Arc<SessionHandle>, id: u64) -> PendingEvent {
        PendingEvent {
            session: session.clone(),
            event: Event {
                event_id: id,
                time_ms: 0,
                kind: 1,
                body: bytes::Bytes::new(),
            },
            received: Instant::now(),
            received_ms: 0,
        }
    }

    #[test]
    fn room_is_taken_by_a_permit_and_given_back_when_it_is_dropped_unused() {
        let gauge = Gauge::default();
        let (admission, _events) = admission(2, gauge.clone());
        let first = admission.admit().unwrap();
        let second = admission.admit().unwrap();
        assert_eq!(admission.admit().unwrap_err(), AdmissionFull);
        assert_eq!(gauge.get(), 2, "the gauge is the count");
        drop(first);
        assert_eq!(admission.pending(), 1);
        let _third = admission.admit().unwrap();
        drop(second);
    }

    #[tokio::test]
    async fn a_submitted_event_keeps_its_room_until_the_pipeline_releases_it() {
        let (admission, mut events) = admission(1, Gauge::default());
        let session = Arc::new(SessionHandle::new("CTRL-1".parse().unwrap(), SessionId([1; 16]), 0));
        admission.admit().unwrap().submit(pending_event(&session, 1));
        assert_eq!(session.pending_events(), 1);
        assert_eq!(admission.admit().unwrap_err(), AdmissionFull, "its room is still taken");
        let event = events.recv().await.unwrap();
        assert_eq!(event.event.event_id, 1);
        events.release(1);
        assert_eq!(admission.pending(), 0);
        assert!(admission.admit().is_ok());
    }

    #[test]
    fn an_event_submitted_after_the_pipeline_stopped_is_not_pending() {
        let (admission, events) = admission(1, Gauge::default());
        drop(events);
        let session = Arc::new(SessionHandle::new("CTRL-1".parse().unwrap(), SessionId([1; 16]), 0));
        admission.admit().unwrap().submit(pending_event(&session, 1));
        assert_eq!(session.pending_events(), 0);
        assert_eq!(admission.pending(), 0);
    }
}
