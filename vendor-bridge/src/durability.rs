//! Whether a `BatchDurable` really means "on disk". The bridge answers a
//! batch once its script returned; that is only a promise of durability if
//! Redis writes its append-only file and fsyncs it before answering
//! (`appendonly yes`, `appendfsync always`). The bridge cannot fix a
//! misconfigured Redis, but it says so loudly.

use redis::ErrorKind;
use tracing::{info, warn};

use crate::store::{Store, StoreError};

/// What Redis's configuration makes of an acknowledged batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// `appendonly yes` + `appendfsync always`: acknowledged means fsynced.
    Fsynced,
    /// Anything else: an acknowledged batch can be lost in a crash.
    Weak {
        /// Redis's `appendonly`.
        appendonly: String,
        /// Redis's `appendfsync`.
        appendfsync: String,
    },
    /// Redis refused `CONFIG GET` (renamed command, ACL): nobody knows.
    Unverified {
        /// Redis's answer.
        reason: String,
    },
}

impl Durability {
    /// The verdict for Redis's `appendonly` and `appendfsync` settings.
    pub fn from_settings(appendonly: &str, appendfsync: &str) -> Self {
        if appendonly.eq_ignore_ascii_case("yes") && appendfsync.eq_ignore_ascii_case("always") {
            Self::Fsynced
        } else {
            Self::Weak {
                appendonly: appendonly.to_owned(),
                appendfsync: appendfsync.to_owned(),
            }
        }
    }

    /// Logs the verdict: one `info!` when all is well, a loud `warn!`
    /// otherwise.
    pub fn report(&self) {
        match self {
            Self::Fsynced => info!("Redis fsyncs every write (appendonly yes, appendfsync always): acks mean on disk"),
            Self::Weak {
                appendonly,
                appendfsync,
            } => warn!(
                "\n\
                 *************************************************************************\n\
                 * Redis is NOT configured for durable storage:                          *\n\
                 *   appendonly = {appendonly:?}, appendfsync = {appendfsync:?}\n\
                 * The bridge acknowledges a batch when Redis has applied it; with these *\n\
                 * settings that is not \"on disk\", and a Redis crash or power loss can   *\n\
                 * lose events that the devices were told are stored (they delete them). *\n\
                 * Fix: in redis.conf set   appendonly yes   and   appendfsync always    *\n\
                 * (or at runtime: CONFIG SET appendonly yes; CONFIG SET appendfsync     *\n\
                 * always; CONFIG REWRITE).                                              *\n\
                 *************************************************************************"
            ),
            Self::Unverified { reason } => warn!(
                "\n\
                 *************************************************************************\n\
                 * Could not verify that Redis stores durably: CONFIG GET was refused    *\n\
                 *   ({reason})\n\
                 * Acknowledged batches are only on disk if Redis runs with              *\n\
                 *   appendonly yes   and   appendfsync always                           *\n\
                 * Check its redis.conf, or allow this client CONFIG GET to let the      *\n\
                 * bridge check.                                                         *\n\
                 *************************************************************************"
            ),
        }
    }
}

/// Asks Redis for `appendonly` and `appendfsync`. Fails only when Redis
/// cannot be reached; a refused `CONFIG` is [`Durability::Unverified`].
pub async fn check(store: &Store) -> Result<Durability, StoreError> {
    let mut conn = store.connection();
    let mut settings = Vec::with_capacity(2);
    for name in ["appendonly", "appendfsync"] {
        let reply: Result<Vec<String>, _> = redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut conn).await;
        match reply {
            // CONFIG GET answers [name, value] (a map with RESP3).
            Ok(pair) => match <[String; 2]>::try_from(pair) {
                Ok([_, value]) => settings.push(value),
                Err(pair) => {
                    return Ok(Durability::Unverified {
                        reason: format!("CONFIG GET {name} answered {pair:?}"),
                    });
                }
            },
            Err(err) if matches!(err.kind(), ErrorKind::Server(_)) => {
                return Ok(Durability::Unverified {
                    reason: err.to_string(),
                });
            }
            Err(err) => return Err(err.into()),
        }
    }
    match settings.as_slice() {
        [appendonly, appendfsync] => Ok(Durability::from_settings(appendonly, appendfsync)),
        _ => Ok(Durability::Unverified {
            reason: "CONFIG GET answered nothing".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_append_only_with_fsync_always_is_durable() {
        assert_eq!(Durability::from_settings("yes", "always"), Durability::Fsynced);
        assert!(matches!(
            Durability::from_settings("yes", "everysec"),
            Durability::Weak { .. }
        ));
        assert!(matches!(
            Durability::from_settings("no", "always"),
            Durability::Weak { .. }
        ));
    }
}
