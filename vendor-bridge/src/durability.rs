//! Whether a `BatchDurable` really means "on disk". The bridge answers a
//! batch once its script returned; that is only a promise of durability if
//! Redis writes its append-only file and fsyncs it before answering:
//! `appendonly yes`, `appendfsync always`, and `no-appendfsync-on-rewrite
//! no` (with `yes`, Redis skips the fsync while it rewrites the file).
//!
//! [`check`] asks Redis for the three settings; the [`DurabilityGate`]
//! holds the last verdict. With [`DurabilityPolicy::Strict`] (the default)
//! the gate is open only while the last check found Redis durable: event
//! streams hold their batches and unary calls that write answer
//! `UNAVAILABLE` while it is closed. The health watcher (`health`) runs the
//! checks: at start, whenever a connection to Redis was lost (a reconnected
//! Redis may be another process with another configuration; the gate stays
//! closed until it is checked), and every [`CHECK_PERIOD`] (someone may
//! `CONFIG SET` a weaker setting at run time).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use drover_redis::{Connection, Node};
use redis::{ErrorKind, RedisError};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::store::{LayoutCheck, Store, StoreError};

/// How often Redis's settings are checked again while nothing suggests a
/// change: a `CONFIG SET` at run time is noticed within this period.
pub const CHECK_PERIOD: Duration = Duration::from_secs(5);

/// `BRIDGE_DURABILITY`: what the bridge does while Redis is not verified to
/// fsync every write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurabilityPolicy {
    /// Store and acknowledge nothing, health `NOT_SERVING`.
    Strict,
    /// Store and acknowledge anyway, with a warning (acknowledged events
    /// can be lost in a crash of the Redis host).
    Relaxed,
}

impl std::str::FromStr for DurabilityPolicy {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "strict" => Ok(Self::Strict),
            "relaxed" => Ok(Self::Relaxed),
            _ => Err("must be strict or relaxed"),
        }
    }
}

/// Redis's settings that decide whether a write is on disk when answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The node they were read from (`redis` for the one Redis; a
    /// cluster's `HOST:PORT`).
    pub node: String,
    /// `appendonly`: must be `yes`.
    pub appendonly: String,
    /// `appendfsync`: must be `always`.
    pub appendfsync: String,
    /// `no-appendfsync-on-rewrite`: must be `no`.
    pub no_appendfsync_on_rewrite: String,
}

impl Settings {
    /// The settings as required, each as `name value`.
    pub const REQUIRED: [(&'static str, &'static str); 3] = [
        ("appendonly", "yes"),
        ("appendfsync", "always"),
        ("no-appendfsync-on-rewrite", "no"),
    ];

    fn values(&self) -> [&str; 3] {
        [&self.appendonly, &self.appendfsync, &self.no_appendfsync_on_rewrite]
    }

    /// Each setting that is weaker than required, as
    /// `appendfsync is everysec (needs always)`.
    pub fn weaknesses(&self) -> Vec<String> {
        Self::REQUIRED
            .iter()
            .zip(self.values())
            .filter(|((_, required), value)| !value.eq_ignore_ascii_case(required))
            .map(|((name, required), value)| format!("{name} is {value} (needs {required})"))
            .collect()
    }
}

/// What Redis's configuration makes of an acknowledged batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// `appendonly yes`, `appendfsync always`, `no-appendfsync-on-rewrite
    /// no`: acknowledged means fsynced.
    Fsynced,
    /// Anything else: an acknowledged batch can be lost in a crash.
    Weak(Settings),
    /// Redis refused `CONFIG GET` (renamed command, ACL): nobody knows.
    Unverified {
        /// Redis's answer.
        reason: String,
    },
    /// Redis records another number of event partitions than the bridge
    /// is configured with: storing would put a serial's events beside
    /// another partition's high-water marks and store them twice. Refused
    /// under either policy.
    LayoutMismatch {
        /// The partitions Redis records (`cwp:layout`).
        recorded: String,
        /// `REDIS_EVENT_PARTITIONS`.
        configured: u16,
    },
}

impl Durability {
    /// The verdict for Redis's settings.
    pub fn from_settings(settings: Settings) -> Self {
        if settings.weaknesses().is_empty() {
            Self::Fsynced
        } else {
            Self::Weak(settings)
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fsynced => f.write_str(
                "Redis fsyncs every write (appendonly yes, appendfsync always, no-appendfsync-on-rewrite no)",
            ),
            Self::Weak(settings) if settings.node == SINGLE_NODE => write!(
                f,
                "Redis does not fsync every write: {}",
                settings.weaknesses().join(", ")
            ),
            Self::Weak(settings) => write!(
                f,
                "Redis node {} does not fsync every write: {}",
                settings.node,
                settings.weaknesses().join(", ")
            ),
            Self::LayoutMismatch { recorded, configured } => write!(
                f,
                "Redis holds events in {recorded} partition(s) (cwp:layout) but REDIS_EVENT_PARTITIONS is {configured}: \
                 storing would store events twice; set REDIS_EVENT_PARTITIONS={recorded} (README, Redis Cluster)"
            ),
            Self::Unverified { reason } => write!(
                f,
                "Redis's durability cannot be verified, CONFIG GET was refused ({reason}): grant the bridge's user +config|get"
            ),
        }
    }
}

/// The name of the one Redis's only node.
const SINGLE_NODE: &str = "redis";

/// Checks that Redis holds the configured key layout (recording it on
/// first use), then asks every node the cluster holds healthy (the one
/// Redis) for its three durability settings: replicas too, since a
/// failover makes one a master. Fails only when Redis cannot be reached;
/// a refused `CONFIG` is [`Durability::Unverified`].
pub async fn check(store: &Store) -> Result<Durability, StoreError> {
    if let LayoutCheck::Differs { recorded, configured } = store.check_layout().await? {
        return Ok(Durability::LayoutMismatch { recorded, configured });
    }
    let mut conn = store.connection();
    let nodes = conn.nodes().await?;
    for node in nodes.iter().filter(|node| node.healthy) {
        let verdict = check_node(&mut conn, node).await?;
        if verdict != Durability::Fsynced {
            return Ok(verdict);
        }
    }
    Ok(Durability::Fsynced)
}

async fn check_node(conn: &mut Connection, node: &Node) -> Result<Durability, StoreError> {
    let mut values = Vec::with_capacity(Settings::REQUIRED.len());
    for (name, _) in Settings::REQUIRED {
        let reply = conn
            .on_node(node, redis::cmd("CONFIG").arg("GET").arg(name))
            .await
            .and_then(|value| redis::from_redis_value::<Vec<String>>(value).map_err(RedisError::from));
        match reply {
            // CONFIG GET answers [name, value] (a map with RESP3).
            Ok(pair) => match <[String; 2]>::try_from(pair) {
                Ok([_, value]) => values.push(value),
                Err(pair) => {
                    return Ok(Durability::Unverified {
                        reason: format!("CONFIG GET {name} answered {pair:?}"),
                    });
                }
            },
            Err(err) if matches!(err.kind(), ErrorKind::Server(_) | ErrorKind::Extension) => {
                return Ok(Durability::Unverified {
                    reason: err.to_string(),
                });
            }
            Err(err) => return Err(err.into()),
        }
    }
    match <[String; 3]>::try_from(values) {
        Ok([appendonly, appendfsync, no_appendfsync_on_rewrite]) => Ok(Durability::from_settings(Settings {
            node: node.address.clone(),
            appendonly,
            appendfsync,
            no_appendfsync_on_rewrite,
        })),
        Err(_) => Ok(Durability::Unverified {
            reason: "CONFIG GET answered nothing".to_owned(),
        }),
    }
}

/// What the gate knows of Redis's durability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateState {
    /// No verdict yet: at start, and from the moment a connection to Redis
    /// was lost until a check on the reconnected one answers.
    Unchecked,
    /// Redis did not answer the last check (or a `PING` since).
    Unreachable {
        /// Why, for the refusal's message.
        error: String,
    },
    /// The last check's verdict.
    Checked(Durability),
}

/// Why a call that writes is refused (`UNAVAILABLE`, with this message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Redis is configured (or may be) weaker than "on disk".
    #[error("{0}: the vendor-bridge stores nothing until it does (BRIDGE_DURABILITY=strict; README, Durability)")]
    NotDurable(Durability),
    /// Redis's settings are not known yet.
    #[error("Redis's durability settings are not verified yet ({0}); retry")]
    Unchecked(String),
}

/// Whether the bridge may store and acknowledge now, shared by the health
/// watcher (which checks and records), the unary calls and every stream's
/// applier (which wait on it or are refused). See the module's
/// documentation.
#[derive(Debug)]
pub struct DurabilityGate {
    policy: DurabilityPolicy,
    state: watch::Sender<GateState>,
    /// Wakes the watcher to check now rather than at its next tick.
    recheck: Notify,
    /// Bumped by every suspected reconnection: a check that began before
    /// one cannot vouch for the connection after it.
    suspicions: AtomicU64,
}

impl DurabilityGate {
    /// A gate under `policy`, closed (unchecked) until the first check.
    pub fn new(policy: DurabilityPolicy) -> Self {
        Self {
            policy,
            state: watch::channel(GateState::Unchecked).0,
            recheck: Notify::new(),
            suspicions: AtomicU64::new(0),
        }
    }

    /// `BRIDGE_DURABILITY`.
    pub fn policy(&self) -> DurabilityPolicy {
        self.policy
    }

    /// What the gate knows now.
    pub fn state(&self) -> GateState {
        self.state.borrow().clone()
    }

    /// Whether `state` lets the bridge store and acknowledge.
    fn admits(&self, state: &GateState) -> bool {
        match state {
            GateState::Checked(Durability::Fsynced) => true,
            GateState::Checked(Durability::LayoutMismatch { .. }) => false,
            _ => self.policy == DurabilityPolicy::Relaxed,
        }
    }

    /// Whether the bridge may store and acknowledge now.
    pub fn is_open(&self) -> bool {
        self.admits(&self.state.borrow())
    }

    /// Resolves once the gate is open (at once if it is).
    pub async fn opened(&self) {
        let mut state = self.state.subscribe();
        // The sender lives as long as `self`: `wait_for` cannot fail.
        let _ = state.wait_for(|state| self.admits(state)).await;
    }

    /// For a call that writes: `Ok` if the gate is open. Without a verdict
    /// (unchecked, or Redis unreachable), asks for a check now and waits up
    /// to `wait` for one; a known weak verdict is refused at once.
    pub async fn admit(&self, wait: Duration) -> Result<(), Refusal> {
        let mut state = self.state.subscribe();
        let current = state.borrow_and_update().clone();
        if !self.admits(&current) && !matches!(current, GateState::Checked(_)) {
            self.recheck.notify_one();
            // Every check publishes its result, changed or not.
            let _ = tokio::time::timeout(wait, state.changed()).await;
        }
        let current = state.borrow().clone();
        if self.admits(&current) {
            return Ok(());
        }
        Err(match current {
            GateState::Checked(durability) => Refusal::NotDurable(durability),
            GateState::Unchecked => Refusal::Unchecked("checking".to_owned()),
            GateState::Unreachable { error } => Refusal::Unchecked(error),
        })
    }

    /// After a failed Redis call: if the connection may have been lost
    /// (and so be dialled again, possibly to another Redis process), the
    /// gate closes until a check on the new connection answers.
    pub fn after_failure(&self, err: &StoreError) {
        if err.may_have_lost_the_connection() {
            self.suspect_reconnection();
        }
    }

    /// The connection to Redis was (or may have been) lost: no verdict
    /// until the next check, which is asked for now.
    pub fn suspect_reconnection(&self) {
        self.suspicions.fetch_add(1, Ordering::SeqCst);
        self.state.send_if_modified(|state| {
            if matches!(state, GateState::Checked(_)) {
                *state = GateState::Unchecked;
                true
            } else {
                false
            }
        });
        self.recheck.notify_one();
    }

    /// Where a check begins: pass it to [`DurabilityGate::record`].
    pub(crate) fn check_begins(&self) -> u64 {
        self.suspicions.load(Ordering::SeqCst)
    }

    /// Records the verdict of a check that began at `began`; returns the
    /// new state if it changed. A verdict is dropped if a reconnection was
    /// suspected since the check began (it may describe the old
    /// connection's Redis): the next check decides.
    pub(crate) fn checked(&self, began: u64, durability: Durability) -> Option<GateState> {
        if self.suspicions.load(Ordering::SeqCst) != began {
            self.recheck.notify_one();
            return None;
        }
        self.set(GateState::Checked(durability))
    }

    /// A check got no verdict (`error` says why): nothing is verified.
    pub(crate) fn check_failed(&self, error: String) -> Option<GateState> {
        self.set(GateState::Unreachable { error })
    }

    /// Redis did not answer a `PING`: nothing is verified any more.
    pub(crate) fn unreachable(&self, error: String) -> Option<GateState> {
        self.suspicions.fetch_add(1, Ordering::SeqCst);
        self.set(GateState::Unreachable { error })
    }

    /// Publishes `new` (waking every waiter, so that [`DurabilityGate::admit`]
    /// learns that a check answered); returns it if it differs from the
    /// state before.
    fn set(&self, new: GateState) -> Option<GateState> {
        let mut changed = false;
        self.state.send_modify(|state| {
            // An unreachable Redis stays one as its error text varies.
            let same = match (&*state, &new) {
                (GateState::Unreachable { .. }, GateState::Unreachable { .. }) => true,
                (old, new) => old == new,
            };
            if !same {
                *state = new.clone();
                changed = true;
            }
        });
        changed.then_some(new)
    }

    /// Resolves when someone asks for a check now.
    pub(crate) async fn recheck_requested(&self) {
        self.recheck.notified().await;
    }

    /// Logs a new verdict: one `info!` when all is well, a loud `warn!`
    /// otherwise, saying what the bridge does about it.
    pub(crate) fn report(&self, durability: &Durability) {
        let consequence = match self.policy {
            DurabilityPolicy::Strict => {
                "BRIDGE_DURABILITY=strict: the bridge stores and acknowledges NOTHING (health NOT_SERVING; drivers hold \
                 their events, devices get BUSY) until Redis is fixed; it checks again every 5 s"
            }
            DurabilityPolicy::Relaxed => {
                "BRIDGE_DURABILITY=relaxed: the bridge stores and acknowledges anyway; a crash or power loss of the \
                 Redis host can lose events that the devices were told are stored (they delete them)"
            }
        };
        match durability {
            Durability::Fsynced => info!("{durability}: acks mean on disk"),
            Durability::Weak(_) => warn!(
                "\n\
                 *************************************************************************\n\
                 * Redis is NOT configured for durable storage:\n\
                 *   {durability}\n\
                 * {consequence}\n\
                 * Fix: in redis.conf set   appendonly yes, appendfsync always,\n\
                 * no-appendfsync-on-rewrite no   (or at run time: CONFIG SET appendonly\n\
                 * yes; CONFIG SET appendfsync always; CONFIG SET\n\
                 * no-appendfsync-on-rewrite no; CONFIG REWRITE).\n\
                 *************************************************************************"
            ),
            Durability::Unverified { .. } => warn!(
                "\n\
                 *************************************************************************\n\
                 * Could not verify that Redis stores durably:\n\
                 *   {durability}\n\
                 * {consequence}\n\
                 * Acknowledged batches are only on disk if Redis runs with appendonly\n\
                 * yes, appendfsync always, no-appendfsync-on-rewrite no.\n\
                 *************************************************************************"
            ),
            Durability::LayoutMismatch { .. } => tracing::error!(
                "\n\
                 *************************************************************************\n\
                 * Redis holds another key layout than configured:\n\
                 *   {durability}\n\
                 * The bridge stores and acknowledges NOTHING (health NOT_SERVING),\n\
                 * whatever BRIDGE_DURABILITY says.\n\
                 *************************************************************************"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(appendonly: &str, appendfsync: &str, on_rewrite: &str) -> Settings {
        Settings {
            node: "redis".to_owned(),
            appendonly: appendonly.to_owned(),
            appendfsync: appendfsync.to_owned(),
            no_appendfsync_on_rewrite: on_rewrite.to_owned(),
        }
    }

    #[test]
    fn only_append_only_with_fsync_always_and_through_rewrites_is_durable() {
        assert_eq!(
            Durability::from_settings(settings("yes", "always", "no")),
            Durability::Fsynced
        );
        for weak in [
            settings("yes", "everysec", "no"),
            settings("no", "always", "no"),
            settings("yes", "always", "yes"),
        ] {
            assert!(matches!(Durability::from_settings(weak), Durability::Weak(_)));
        }
        assert_eq!(
            settings("yes", "everysec", "yes").weaknesses(),
            [
                "appendfsync is everysec (needs always)",
                "no-appendfsync-on-rewrite is yes (needs no)"
            ]
        );
    }

    #[tokio::test]
    async fn a_strict_gate_opens_only_on_a_durable_verdict_checked_after_the_last_reconnection() {
        let gate = DurabilityGate::new(DurabilityPolicy::Strict);
        assert!(!gate.is_open(), "closed until checked");
        let began = gate.check_begins();
        gate.checked(began, Durability::from_settings(settings("yes", "everysec", "no")));
        assert!(!gate.is_open());
        let refusal = gate.admit(Duration::ZERO).await.unwrap_err();
        assert!(refusal.to_string().contains("appendfsync is everysec"), "{refusal}");

        let began = gate.check_begins();
        gate.checked(began, Durability::Fsynced);
        assert!(gate.is_open());
        assert_eq!(gate.admit(Duration::ZERO).await, Ok(()));

        // A check that began before a reconnection vouches for nothing.
        let began = gate.check_begins();
        gate.suspect_reconnection();
        assert!(!gate.is_open());
        assert_eq!(gate.checked(began, Durability::Fsynced), None);
        assert!(!gate.is_open());
        let began = gate.check_begins();
        gate.checked(began, Durability::Fsynced);
        assert!(gate.is_open());
    }

    #[tokio::test]
    async fn a_relaxed_gate_is_always_open() {
        let gate = DurabilityGate::new(DurabilityPolicy::Relaxed);
        assert!(gate.is_open());
        let began = gate.check_begins();
        gate.checked(began, Durability::from_settings(settings("no", "no", "yes")));
        assert!(gate.is_open());
        gate.opened().await;
    }
}
