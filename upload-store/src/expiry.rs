//! The background task deleting abandoned partial uploads (every process
//! writing to `UPLOAD_DIR` runs one; the locks keep them from touching an
//! upload in use, and from each other).

use std::time::{Duration, SystemTime};

use drover_service::drain;
use tracing::{debug, info, warn};

use crate::UploadStore;

/// Longest time between two expiry passes.
const MAX_EXPIRY_INTERVAL: Duration = Duration::from_secs(3600);

/// How often the expiry looks: a quarter of the expiry age, at most hourly,
/// at least every second.
pub fn expiry_interval(expire_after: Duration) -> Duration {
    (expire_after / 4).clamp(Duration::from_secs(1), MAX_EXPIRY_INTERVAL)
}

/// Deletes partial uploads untouched for `expire_after` (and not open on
/// any session) every [`expiry_interval`], until `stop` is signalled.
pub async fn expire_periodically(store: UploadStore, expire_after: Duration, stop: drain::Watch) {
    let interval = expiry_interval(expire_after);
    loop {
        let pass = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.expire(expire_after, SystemTime::now()))
        };
        match pass.await {
            Ok(Ok(expired)) if expired.removed > 0 => {
                info!(
                    removed = expired.removed,
                    in_use = expired.in_use,
                    "expired abandoned partial uploads"
                );
            }
            Ok(Ok(expired)) => debug!(in_use = expired.in_use, "no partial upload to expire"),
            Ok(Err(err)) => warn!(error = %err, dir = %store.root().display(), "upload expiry pass failed"),
            Err(err) => warn!(error = %err, "upload expiry pass panicked"),
        }
        tokio::select! {
            () = stop.signaled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_looks_four_times_per_age_between_every_second_and_hourly() {
        assert_eq!(
            expiry_interval(Duration::from_secs(7 * 86_400)),
            Duration::from_secs(3600)
        );
        assert_eq!(expiry_interval(Duration::from_secs(3600)), Duration::from_secs(900));
        assert_eq!(expiry_interval(Duration::from_secs(2)), Duration::from_secs(1));
    }
}
