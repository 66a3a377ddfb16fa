//! The standard gRPC health service (`grpc.health.v1.Health`) tells load
//! balancers and orchestrators whether the bridge can store anything:
//! `SERVING` while Redis answers a periodic `PING`, `NOT_SERVING` when it
//! does not, and from the start of a shutdown on. Each time Redis comes (back)
//! up, its durability settings are checked again: a restarted Redis may run
//! with a different configuration.

use std::time::Duration;

use drover_proto::bridge::vendor_bridge_server::VendorBridgeServer;
use drover_service::drain;
use tokio::time::MissedTickBehavior;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use crate::durability;
use crate::service::Bridge;
use crate::store::Store;

/// How often Redis is pinged.
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// How long a `PING` may take before Redis counts as down.
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

/// Pings Redis until `draining` is signalled, then reports `NOT_SERVING`.
pub(crate) async fn watch_redis(store: Store, reporter: HealthReporter, draining: drain::Watch) {
    let mut redis_up: Option<bool> = None;
    let mut ticks = tokio::time::interval(PING_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = draining.signaled() => break,
            _ = ticks.tick() => {}
        }
        let answer = match tokio::time::timeout(PING_TIMEOUT, store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err((err.to_string(), err.is_refused_by_acl())),
            Err(_) => Err((format!("no answer to PING within {PING_TIMEOUT:?}"), false)),
        };
        let up = answer.is_ok();
        if redis_up == Some(up) {
            continue;
        }
        redis_up = Some(up);
        match answer {
            Ok(()) => {
                info!("Redis answers: health SERVING");
                set(&reporter, ServingStatus::Serving).await;
                match durability::check(&store).await {
                    Ok(verdict) => verdict.report(),
                    Err(err) => warn!(error = %err, "could not check Redis's durability settings"),
                }
            }
            Err((error, true)) => {
                tracing::error!(
                    %error,
                    "Redis refused the bridge's user: check the user and password in REDIS_URL and its ACL \
                     (README, Security); health NOT_SERVING"
                );
                set(&reporter, ServingStatus::NotServing).await;
            }
            Err((error, false)) => {
                warn!(%error, "Redis does not answer: health NOT_SERVING");
                set(&reporter, ServingStatus::NotServing).await;
            }
        }
    }
    set(&reporter, ServingStatus::NotServing).await;
}
