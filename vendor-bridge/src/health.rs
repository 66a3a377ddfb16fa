//! The standard gRPC health service (`grpc.health.v1.Health`) tells load
//! balancers and orchestrators whether the bridge can store anything:
//! `SERVING` while Redis answers a periodic `PING` and the
//! [`DurabilityGate`] is open, `NOT_SERVING` otherwise, and from the start
//! of a shutdown on.
//!
//! The same task runs the gate's durability checks: when Redis comes (back)
//! up, when anyone asks (a call suspects its connection was lost, or finds
//! no verdict), and every [`durability::CHECK_PERIOD`].

use std::sync::Arc;
use std::time::Duration;

use drover_proto::bridge::vendor_bridge_server::VendorBridgeServer;
use drover_service::drain;
use tokio::time::{Instant, MissedTickBehavior};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use crate::durability::{self, Durability, DurabilityGate, DurabilityPolicy, GateState};
use crate::service::Bridge;
use crate::stats::{DurabilityStatus, Stats};
use crate::store::Store;

/// How often Redis is pinged.
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// How long a `PING`, or a durability check, may take before Redis counts
/// as down.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Reports `status` for the whole server (`""`) and for the VendorBridge
/// service by name.
pub(crate) async fn set(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    match status {
        ServingStatus::Serving => reporter.set_serving::<VendorBridgeServer<Bridge>>().await,
        _ => reporter.set_not_serving::<VendorBridgeServer<Bridge>>().await,
    }
}

/// What the watcher needs.
pub(crate) struct Watcher {
    pub(crate) store: Store,
    pub(crate) gate: Arc<DurabilityGate>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) reporter: HealthReporter,
}

impl Watcher {
    /// Pings Redis and checks its durability until `abandon` is signalled.
    /// From `draining` on, health is `NOT_SERVING`, but the checks go on:
    /// the batches received before the drain are still stored, and only
    /// while the gate is open.
    pub(crate) async fn run(self, draining: drain::Watch, abandon: drain::Watch) {
        let mut redis_up: Option<bool> = None;
        let mut serving: Option<bool> = None;
        let mut pings = tokio::time::interval(PING_INTERVAL);
        pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Counts from the last check, whatever caused it.
        let mut checks = tokio::time::interval_at(Instant::now() + durability::CHECK_PERIOD, durability::CHECK_PERIOD);
        checks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut drained = false;
        loop {
            let check_due = tokio::select! {
                biased;
                () = abandon.signaled() => break,
                () = draining.signaled(), if !drained => {
                    drained = true;
                    false
                }
                () = self.gate.recheck_requested() => true,
                _ = checks.tick() => true,
                _ = pings.tick() => false,
            };
            let up = self.ping().await;
            let came_up = up && redis_up != Some(true);
            redis_up = Some(up);
            let unchecked = matches!(self.gate.state(), GateState::Unchecked | GateState::Unreachable { .. });
            if up && (came_up || check_due || unchecked) {
                self.check().await;
                checks.reset();
            }
            let now_serving = up && self.gate.is_open() && !drained;
            if serving != Some(now_serving) {
                serving = Some(now_serving);
                let status = if now_serving {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                info!(health = ?status, "health {}", if now_serving { "SERVING" } else { "NOT_SERVING" });
                self.stats.set_serving(now_serving);
                set(&self.reporter, status).await;
            }
        }
        self.stats.set_serving(false);
        set(&self.reporter, ServingStatus::NotServing).await;
    }

    /// One `PING`; false (and the gate told) when Redis does not answer.
    async fn ping(&self) -> bool {
        let answer = match tokio::time::timeout(PING_TIMEOUT, self.store.ping()).await {
            Ok(Ok(())) => return self.redis_answers(),
            Ok(Err(err)) => (err.to_string(), err.is_refused_by_acl()),
            Err(_) => (format!("no answer to PING within {PING_TIMEOUT:?}"), false),
        };
        self.redis_unreachable(answer)
    }

    fn redis_answers(&self) -> bool {
        if matches!(self.gate.state(), GateState::Unreachable { .. }) {
            info!("Redis answers again");
        }
        true
    }

    fn redis_unreachable(&self, (error, refused): (String, bool)) -> bool {
        self.stats.add_redis_error();
        if self.gate.unreachable(error.clone()).is_some() {
            if refused {
                tracing::error!(
                    %error,
                    "Redis refused the bridge's user: check the user and password in REDIS_URL and its ACL \
                     (README, Security); health NOT_SERVING"
                );
            } else {
                warn!(%error, "Redis does not answer: health NOT_SERVING");
            }
        }
        self.stats.set_durability(DurabilityStatus::Unchecked);
        false
    }

    /// Asks Redis for its durability settings and records the verdict.
    async fn check(&self) {
        let began = self.gate.check_begins();
        let verdict = match tokio::time::timeout(PING_TIMEOUT, durability::check(&self.store)).await {
            Ok(Ok(durability)) => self.gate.checked(began, durability),
            failed => {
                self.stats.add_redis_error();
                self.gate.check_failed(match failed {
                    Ok(Err(err)) => err.to_string(),
                    _ => format!("no answer to CONFIG GET within {PING_TIMEOUT:?}"),
                })
            }
        };
        if let Some(state) = verdict {
            match &state {
                GateState::Checked(durability) => self.gate.report(durability),
                GateState::Unreachable { error } => {
                    warn!(%error, "could not check Redis's durability settings");
                }
                GateState::Unchecked => {}
            }
        }
        self.stats.set_durability(status(&self.gate));
    }
}

/// The gate's state as the statistic shows it.
fn status(gate: &DurabilityGate) -> DurabilityStatus {
    match (gate.state(), gate.policy()) {
        (GateState::Checked(Durability::Fsynced), _) => DurabilityStatus::Fsynced,
        (GateState::Checked(Durability::LayoutMismatch { .. }), _) => DurabilityStatus::LayoutMismatch,
        (GateState::Checked(_), DurabilityPolicy::Strict) => DurabilityStatus::WeakRefusing,
        (GateState::Checked(_), DurabilityPolicy::Relaxed) => DurabilityStatus::WeakAccepted,
        (GateState::Unchecked | GateState::Unreachable { .. }, _) => DurabilityStatus::Unchecked,
    }
}
