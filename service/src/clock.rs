//! The one wall clock of Drover's records: Unix time in milliseconds, as
//! stored in Redis (`received_ms`, `connected_ms`, `last_seen_ms`, …) and
//! sent in CWP/1 (`time_ms`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds (0 if the system clock is before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn it_is_after_the_year_2020() {
        assert!(super::unix_ms() > 1_577_836_800_000);
    }
}
