//! One call at a time per key, with one more after it if asked meanwhile.
//!
//! A device's durable commands and its file offers are fetched from the
//! vendor-bridge when something says there may be news (its session opens,
//! a wake-up arrives, a result is stored). News that arrives during a
//! fetch may postdate what that fetch read, so it asks for exactly one more
//! fetch after it, never a second concurrent one: requests for one device
//! collapse into at most one call under way and one waiting.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The keys with a call under way, and whether each was asked again.
/// Cheap to clone (shared).
#[derive(Debug)]
pub struct SingleFlight<K> {
    asked_again: Arc<Mutex<HashMap<K, bool>>>,
}

impl<K> Clone for SingleFlight<K> {
    fn clone(&self) -> Self {
        Self {
            asked_again: self.asked_again.clone(),
        }
    }
}

impl<K> Default for SingleFlight<K> {
    fn default() -> Self {
        Self {
            asked_again: Arc::default(),
        }
    }
}

/// The right to make calls for one key, until [`Flight::again`] says no
/// or it is dropped.
#[derive(Debug)]
#[must_use = "the flight ends when dropped"]
pub struct Flight<K: Hash + Eq + Clone> {
    flights: SingleFlight<K>,
    key: K,
    landed: bool,
}

impl<K: Hash + Eq + Clone> SingleFlight<K> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, bool>> {
        self.asked_again.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A flight for `key` if none is under way; otherwise the one under
    /// way is asked to go once more, and `None`.
    pub fn start(&self, key: K) -> Option<Flight<K>> {
        let mut flights = self.lock();
        if let Some(again) = flights.get_mut(&key) {
            *again = true;
            return None;
        }
        flights.insert(key.clone(), false);
        Some(Flight {
            flights: self.clone(),
            key,
            landed: false,
        })
    }

    /// Whether a flight for `key` is under way.
    pub fn is_flying(&self, key: &K) -> bool {
        self.lock().contains_key(key)
    }
}

impl<K: Hash + Eq + Clone> Flight<K> {
    /// After a call: whether to make one more (someone asked since the
    /// last answer). When not, the flight has ended, in the same step, so
    /// that a request arriving now starts a new one and is never lost.
    pub fn again(&mut self) -> bool {
        let mut flights = self.flights.lock();
        match flights.get_mut(&self.key) {
            Some(again) if *again => {
                *again = false;
                true
            }
            _ => {
                flights.remove(&self.key);
                self.landed = true;
                false
            }
        }
    }
}

impl<K: Hash + Eq + Clone> Drop for Flight<K> {
    /// A flight cut short (its task cancelled at shutdown) frees its key.
    fn drop(&mut self) {
        if !self.landed {
            self.flights.lock().remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_during_a_flight_asks_for_exactly_one_more_call() {
        let flights = SingleFlight::default();
        let mut flight = flights.start("A").expect("nothing under way");
        assert!(flights.start("A").is_none(), "a second request joins the flight");
        assert!(flights.start("A").is_none(), "and so does a third");
        assert!(flights.start("B").is_some(), "another key flies on its own");
        assert!(flight.again(), "one more call for the requests that came");
        assert!(!flight.again(), "and no more");
        assert!(!flights.is_flying(&"A"));
    }

    #[test]
    fn a_request_after_the_flight_has_ended_starts_a_new_one() {
        let flights = SingleFlight::default();
        let mut flight = flights.start(7).unwrap();
        assert!(!flight.again());
        let next = flights.start(7);
        assert!(next.is_some(), "the ended flight no longer holds the key");
        drop(flight);
        assert!(
            flights.is_flying(&7),
            "dropping a landed flight leaves the new one alone"
        );
    }

    #[test]
    fn a_flight_dropped_mid_way_frees_its_key() {
        let flights = SingleFlight::default();
        let flight = flights.start(1).unwrap();
        drop(flight);
        assert!(flights.start(1).is_some());
    }
}
