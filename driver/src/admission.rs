//! Admission: room for events awaiting storage, as a value. Room is
//! counted twice over, in events (`DRIVER_MAX_PENDING_EVENTS`) and in body
//! bytes (`DRIVER_MAX_PENDING_BYTES`): a hundred thousand 64 KiB events
//! would be 6 GiB, far beyond what a count alone bounds on a small machine.
//!
//! [`Admission::admit`] hands out an [`EventPermit`], the room for one
//! event of a given size; [`EventPermit::submit`] consumes it with the
//! event, which then travels to the pipeline ([`crate::pipeline`]) and
//! holds its room until the bridge says it is durable. A permit dropped
//! without an event gives its room back. So no event is stored without
//! room, and no room is taken without an event: the rule is kept by the
//! types, not by convention. The session rules ask for room through
//! [`cwp::EventStore::admit`], and [`cwp::session::Step::Store`] carries
//! the permit to the one place that submits it.
//!
//! Each pending count is one number, the metric itself
//! (`drover_driver_events_pending`, `drover_driver_events_pending_bytes`):
//! the permits move them, the pipeline lowers them as batches become
//! durable, `/metrics` reads them.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;

use crate::registry::SessionHandle;

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

/// The most the driver holds awaiting storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// `DRIVER_MAX_PENDING_EVENTS`.
    pub events: usize,
    /// `DRIVER_MAX_PENDING_BYTES`: event bodies, bytes.
    pub bytes: usize,
}

/// The two pending counts, which are the metrics themselves.
#[derive(Debug, Clone, Default)]
pub struct PendingGauges {
    /// `drover_driver_events_pending`.
    pub events: Gauge,
    /// `drover_driver_events_pending_bytes`.
    pub bytes: Gauge,
}

/// The sessions' side of admission: cheap to clone.
#[derive(Debug, Clone)]
pub struct Admission {
    /// To the pipeline. Unbounded in type, bounded by the permits: every
    /// event in it holds one, so it never holds more than the limits. A
    /// plain send keeps the session loop free of a waiting send's future
    /// (idle sessions' tasks stay small).
    queue: mpsc::UnboundedSender<PendingEvent>,
    /// Events and bytes admitted and not yet durable.
    pending: PendingGauges,
    max_events: i64,
    max_bytes: i64,
}

/// The driver holds as many events, or as many bytes of them, awaiting
/// storage as it may: the device gets `BUSY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionFull;

/// Room for one event of a given size, until it is durable. Dropped
/// unused, it gives the room back.
#[derive(Debug)]
#[must_use = "a permit is room for one event: submit the event with it"]
pub struct EventPermit {
    admission: Admission,
    /// The body bytes it holds room for.
    bytes: i64,
    /// Set once the event is on its way: the room then goes back when the
    /// pipeline confirms it, not when the permit drops.
    submitted: bool,
}

/// The pipeline's side: the events, and giving their room back.
#[derive(Debug)]
pub struct AdmittedEvents {
    queue: mpsc::UnboundedReceiver<PendingEvent>,
    pending: PendingGauges,
}

/// Admission within `limits`; `pending` are the gauges that count.
pub fn admission(limits: AdmissionLimits, pending: PendingGauges) -> (Admission, AdmittedEvents) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Admission {
            queue: tx,
            pending: pending.clone(),
            max_events: i64::try_from(limits.events).unwrap_or(i64::MAX),
            max_bytes: i64::try_from(limits.bytes).unwrap_or(i64::MAX),
        },
        AdmittedEvents { queue: rx, pending },
    )
}

/// A body's size as the gauges count it.
fn gauge_bytes(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

impl Admission {
    /// Room for one event of `body_bytes`, or [`AdmissionFull`]. An event
    /// larger than the whole byte budget is admitted only when nothing
    /// else is pending, so that it is never refused forever.
    pub fn admit(&self, body_bytes: usize) -> Result<EventPermit, AdmissionFull> {
        let bytes = gauge_bytes(body_bytes);
        let events_before = self.pending.events.inc();
        let bytes_before = self.pending.bytes.inc_by(bytes);
        let over_bytes = bytes_before > 0 && bytes_before.saturating_add(bytes) > self.max_bytes;
        if events_before >= self.max_events || over_bytes {
            self.pending.events.dec();
            self.pending.bytes.dec_by(bytes);
            return Err(AdmissionFull);
        }
        Ok(EventPermit {
            admission: self.clone(),
            bytes,
            submitted: false,
        })
    }

    /// Events admitted and not yet durable.
    pub fn pending(&self) -> usize {
        usize::try_from(self.pending.events.get()).unwrap_or(0)
    }

    /// Body bytes admitted and not yet durable.
    pub fn pending_bytes(&self) -> usize {
        usize::try_from(self.pending.bytes.get()).unwrap_or(0)
    }
}

impl EventPermit {
    /// Sends the event to the pipeline with this permit's room. If the
    /// pipeline has stopped (the driver is shutting down) the event is not
    /// stored and will not be acknowledged: the device sends it again.
    pub fn submit(mut self, event: PendingEvent) {
        debug_assert_eq!(
            gauge_bytes(event.event.body.len()),
            self.bytes,
            "a permit is for one size"
        );
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
            self.admission.pending.events.dec();
            self.admission.pending.bytes.dec_by(self.bytes);
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

    /// `events` events of `bytes` body bytes in all are durable: their
    /// room goes back.
    pub fn release(&self, events: usize, bytes: usize) {
        self.pending.events.dec_by(gauge_bytes(events));
        self.pending.bytes.dec_by(gauge_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use cwp::{Event, SessionId};

    use super::*;

    const LIMITS: AdmissionLimits = AdmissionLimits { events: 2, bytes: 100 };

    fn pending_event(session: &Arc<SessionHandle>, id: u64, body: usize) -> PendingEvent {
        PendingEvent {
            session: session.clone(),
            event: Event {
                event_id: id,
                time_ms: 0,
                kind: 1,
                body: bytes::Bytes::from(vec![0; body]),
            },
            received: Instant::now(),
            received_ms: 0,
        }
    }

    fn session() -> Arc<SessionHandle> {
        Arc::new(SessionHandle::new("CTRL-1".parse().unwrap(), SessionId([1; 16]), 0))
    }

    #[test]
    fn room_is_taken_by_a_permit_and_given_back_when_it_is_dropped_unused() {
        let gauges = PendingGauges::default();
        let (admission, _events) = admission(LIMITS, gauges.clone());
        let first = admission.admit(10).unwrap();
        let second = admission.admit(10).unwrap();
        assert_eq!(admission.admit(10).unwrap_err(), AdmissionFull);
        assert_eq!(
            (gauges.events.get(), gauges.bytes.get()),
            (2, 20),
            "the gauges are the counts"
        );
        drop(first);
        assert_eq!((admission.pending(), admission.pending_bytes()), (1, 10));
        let _third = admission.admit(10).unwrap();
        drop(second);
    }

    #[test]
    fn room_runs_out_in_bytes_before_it_runs_out_in_events() {
        let (admission, _events) = admission(
            AdmissionLimits {
                events: 100,
                bytes: 100,
            },
            PendingGauges::default(),
        );
        let _first = admission.admit(60).unwrap();
        assert_eq!(admission.admit(60).unwrap_err(), AdmissionFull);
        assert_eq!(admission.pending_bytes(), 60, "a refusal takes nothing");
        let _second = admission.admit(40).unwrap();
    }

    #[test]
    fn an_event_larger_than_the_budget_waits_until_nothing_else_is_pending() {
        let (admission, _events) = admission(LIMITS, PendingGauges::default());
        let small = admission.admit(1).unwrap();
        assert_eq!(admission.admit(500).unwrap_err(), AdmissionFull);
        drop(small);
        let _large = admission.admit(500).unwrap();
        assert_eq!(admission.admit(1).unwrap_err(), AdmissionFull);
    }

    #[tokio::test]
    async fn a_submitted_event_keeps_its_room_until_the_pipeline_releases_it() {
        let (admission, mut events) = admission(AdmissionLimits { events: 1, bytes: 100 }, PendingGauges::default());
        let session = session();
        admission.admit(5).unwrap().submit(pending_event(&session, 1, 5));
        assert_eq!(session.pending_events(), 1);
        assert_eq!(
            admission.admit(5).unwrap_err(),
            AdmissionFull,
            "its room is still taken"
        );
        let event = events.recv().await.unwrap();
        assert_eq!(event.event.event_id, 1);
        events.release(1, 5);
        assert_eq!((admission.pending(), admission.pending_bytes()), (0, 0));
        assert!(admission.admit(5).is_ok());
    }

    #[test]
    fn an_event_submitted_after_the_pipeline_stopped_is_not_pending() {
        let (admission, events) = admission(LIMITS, PendingGauges::default());
        drop(events);
        let session = session();
        admission.admit(3).unwrap().submit(pending_event(&session, 1, 3));
        assert_eq!(session.pending_events(), 0);
        assert_eq!((admission.pending(), admission.pending_bytes()), (0, 0));
    }
}
