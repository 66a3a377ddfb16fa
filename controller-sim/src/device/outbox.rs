//! CWP/1 §3 Events, the device's half: every event is kept until a
//! cumulative `ACK` covers it, at most `event_window` of them are in flight
//! on a connection, and after a reconnect the unacknowledged ones are sent
//! again with the same ids. Pure bookkeeping, no I/O, no clock.

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::time::Instant;

/// One event the device holds until it is acknowledged.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    /// Assigned once, never changes: a resend carries the same id.
    pub(crate) event_id: u64,
    /// Device clock when the event was made (Unix ms).
    pub(crate) time_ms: u64,
    /// `EVENT.kind`; `0xFFFF` for a command result.
    pub(crate) kind: u16,
    /// `EVENT.body`; usually a clone of one shared buffer, so no copy.
    pub(crate) body: Bytes,
    /// When the event was made; for a command result, when the command
    /// arrived (the device's view of the command's round trip).
    pub(crate) made_at: Instant,
    /// When it was last written on the current connection, for the ack
    /// latency; meaningful only while the event is in flight.
    pub(crate) sent_at: Instant,
}

/// The unacknowledged events of one device, oldest first.
///
/// The first `in_flight` entries have been sent on the current connection;
/// the rest wait for room in the window (or for a connection).
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: VecDeque<Pending>,
    in_flight: usize,
}

impl Outbox {
    /// Queues a new event. Ids must increase (CWP/1 §3: "strictly increase
    /// across connections and reboots").
    pub(crate) fn push(&mut self, event: Pending) {
        debug_assert!(
            self.queue.back().is_none_or(|last| last.event_id < event.event_id),
            "event ids strictly increase"
        );
        self.queue.push_back(event);
    }

    /// Unacknowledged events, sent or not.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether every event has been acknowledged.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Events sent on the current connection and not yet acknowledged.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// How many more events may be sent now under `window`.
    pub(crate) fn sendable(&self, window: usize) -> usize {
        window
            .saturating_sub(self.in_flight)
            .min(self.queue.len() - self.in_flight)
    }

    /// A new connection: nothing is in flight on it, so every
    /// unacknowledged event will be sent again, oldest first, same ids.
    pub(crate) fn rewind(&mut self) {
        self.in_flight = 0;
    }

    /// Marks the oldest unsent event as sent at `now` and returns it, if
    /// `window` leaves room for it.
    pub(crate) fn send_next(&mut self, window: usize, now: Instant) -> Option<&Pending> {
        if self.in_flight >= window {
            return None;
        }
        let event = self.queue.get_mut(self.in_flight)?;
        event.sent_at = now;
        self.in_flight += 1;
        Some(event)
    }

    /// `ACK(upto)`: drops every event with id ≤ `upto` (cumulative) and
    /// hands each to `acked` with whether it was in flight on this
    /// connection. Returns how many were dropped.
    pub(crate) fn ack(&mut self, upto: u64, mut acked: impl FnMut(&Pending, bool)) -> usize {
        let mut dropped = 0;
        while let Some(front) = self.queue.front() {
            if front.event_id > upto {
                break;
            }
            // In-flight events are a prefix of the queue.
            let was_in_flight = self.in_flight > 0;
            if was_in_flight {
                self.in_flight -= 1;
            }
            acked(front, was_in_flight);
            self.queue.pop_front();
            dropped += 1;
        }
        dropped
    }

    /// Gives memory back while the device is idle.
    pub(crate) fn trim(&mut self) {
        if self.queue.is_empty() {
            self.queue = VecDeque::new();
        }
    }
}

/// The ids of a device's acknowledged events, as ranges: acks are
/// cumulative, so a run of a million events is one range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckLog {
    /// Disjoint inclusive ranges in increasing order.
    ranges: Vec<(u64, u64)>,
}

impl AckLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `event_id` was acknowledged. Ids arrive in increasing
    /// order (events are acknowledged oldest first).
    pub fn record(&mut self, event_id: u64) {
        match self.ranges.last_mut() {
            Some((_, last)) if event_id == *last + 1 => *last = event_id,
            Some((_, last)) if event_id <= *last => debug_assert!(false, "acked ids increase"),
            _ => self.ranges.push((event_id, event_id)),
        }
    }

    /// The inclusive ranges of acknowledged ids, in increasing order.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// How many ids were acknowledged.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(first, last)| last - first + 1).sum()
    }

    /// Whether nothing was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The position of `event_id` among the acknowledged ids (0-based), or
    /// `None` if it was not acknowledged.
    pub fn position(&self, event_id: u64) -> Option<u64> {
        let mut before = 0;
        for &(first, last) in &self.ranges {
            if event_id < first {
                return None;
            }
            if event_id <= last {
                return Some(before + event_id - first);
            }
            before += last - first + 1;
        }
        None
    }

    /// Every acknowledged id, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|&(first, last)| first..=last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_id: u64) -> Pending {
        Pending {
            event_id,
            time_ms: 0,
            kind: 1,
            body: Bytes::from_static(b"x"),
            made_at: Instant::now(),
            sent_at: Instant::now(),
        }
    }

    fn outbox(ids: impl IntoIterator<Item = u64>) -> Outbox {
        let mut outbox = Outbox::default();
        for id in ids {
            outbox.push(event(id));
        }
        outbox
    }

    fn send(outbox: &mut Outbox, window: usize) -> Vec<u64> {
        let now = Instant::now();
        std::iter::from_fn(|| outbox.send_next(window, now).map(|e| e.event_id)).collect()
    }

    fn ack(outbox: &mut Outbox, upto: u64) -> Vec<(u64, bool)> {
        let mut acked = Vec::new();
        outbox.ack(upto, |e, in_flight| acked.push((e.event_id, in_flight)));
        acked
    }

    #[test]
    fn never_more_than_the_window_in_flight() {
        let mut outbox = outbox(1..=10);
        assert_eq!(outbox.sendable(4), 4);
        assert_eq!(send(&mut outbox, 4), [1, 2, 3, 4]);
        assert_eq!(send(&mut outbox, 4), Vec::<u64>::new());
        assert_eq!(outbox.sendable(4), 0);
        // ACK(2) frees two slots.
        assert_eq!(ack(&mut outbox, 2), [(1, true), (2, true)]);
        assert_eq!(send(&mut outbox, 4), [5, 6]);
        assert_eq!(outbox.in_flight(), 4);
        assert_eq!(outbox.len(), 8);
    }

    #[test]
    fn an_ack_is_cumulative_and_drops_only_what_it_covers() {
        let mut outbox = outbox([3, 5, 9]);
        send(&mut outbox, 10);
        assert_eq!(ack(&mut outbox, 4), [(3, true)]);
        // An ack below everything held, e.g. a repeated one, drops nothing.
        assert_eq!(ack(&mut outbox, 4), []);
        assert_eq!(ack(&mut outbox, 2), []);
        assert_eq!(ack(&mut outbox, 9), [(5, true), (9, true)]);
        assert!(outbox.is_empty());
        assert_eq!(outbox.in_flight(), 0);
    }

    #[test]
    fn unacknowledged_events_are_resent_with_the_same_ids_after_a_reconnect() {
        let mut outbox = outbox(1..=6);
        assert_eq!(send(&mut outbox, 4), [1, 2, 3, 4]);
        ack(&mut outbox, 2);
        // The connection drops before 3 and 4 are acknowledged.
        outbox.rewind();
        assert_eq!(outbox.in_flight(), 0);
        assert_eq!(send(&mut outbox, 3), [3, 4, 5]);
    }

    #[test]
    fn an_ack_covering_unsent_events_drops_them_but_they_were_not_in_flight() {
        // After a reconnect the server may acknowledge, as duplicates, events
        // stored on the previous connection that have not been resent yet.
        let mut outbox = outbox(1..=4);
        send(&mut outbox, 4);
        outbox.rewind();
        assert_eq!(send(&mut outbox, 1), [1]);
        assert_eq!(ack(&mut outbox, 3), [(1, true), (2, false), (3, false)]);
        assert_eq!(outbox.in_flight(), 0);
        assert_eq!(send(&mut outbox, 1), [4]);
    }

    #[test]
    fn nothing_is_dropped_without_an_ack() {
        let mut outbox = outbox(1..=3);
        send(&mut outbox, 3);
        outbox.rewind();
        send(&mut outbox, 3);
        outbox.rewind();
        assert_eq!(outbox.len(), 3);
        outbox.trim();
        assert_eq!(outbox.len(), 3);
    }

    #[test]
    fn the_ack_log_keeps_ranges() {
        let mut log = AckLog::new();
        for id in (1..=5).chain(8..=9).chain([20]) {
            log.record(id);
        }
        assert_eq!(log.ranges(), [(1, 5), (8, 9), (20, 20)]);
        assert_eq!(log.len(), 8);
        assert_eq!(log.position(1), Some(0));
        assert_eq!(log.position(8), Some(5));
        assert_eq!(log.position(20), Some(7));
        assert_eq!(log.position(6), None);
        assert_eq!(log.position(21), None);
        assert_eq!(log.iter().collect::<Vec<_>>(), [1, 2, 3, 4, 5, 8, 9, 20]);
    }
}
