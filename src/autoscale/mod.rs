//! Replica autoscaling as Azure ML's router does it (behaviours.md §2.6): per service version,
//! utilization = (busy + queued) / (replicas × `replica_max_concurrent_requests`), busy and
//! queued summed over every gateway of a `[coordination]` group (the others' as their member
//! Leases last said); the desired
//! replica count is `ceil((busy + queued) / (target × max concurrent))` clamped to min..=max,
//! refreshed every second. Scale-up is immediate; scale-down follows the highest recommendation
//! of the last `scale_down_window` (about a minute), so it happens only once load stayed low.
//! Always exported as metrics; applied through the Deployment's `scale` subresource for versions
//! with `[services.versions.autoscale]`, by the one gateway holding the Lease ([`lease`]), and
//! never on a Deployment that a HorizontalPodAutoscaler targets.

pub mod lease;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use tokio::time::Instant;

use crate::config::AutoscaleConfig;
use crate::metrics::Metrics;
use crate::routing::RouteHandle;
use tokio_util::sync::CancellationToken;

/// `ceil(load / (target × max_concurrent))` within `min..=max`.
pub fn desired_replicas(
    busy: u32,
    queued: u32,
    max_concurrent: u32,
    target: f64,
    min: u32,
    max: u32,
) -> u32 {
    let load = f64::from(busy + queued);
    let want = (load / (target * f64::from(max_concurrent.max(1)))).ceil() as u32;
    want.clamp(min, max.max(min))
}

/// Scale-down stabilization: the highest recommendation within the window.
#[derive(Debug)]
pub struct Recommender {
    window: Duration,
    history: VecDeque<(Instant, u32)>,
}

impl Recommender {
    pub fn new(window: Duration) -> Self {
        Recommender {
            window,
            history: VecDeque::new(),
        }
    }

    pub fn recommend(&mut self, now: Instant, raw: u32) -> u32 {
        self.history.push_back((now, raw));
        while self
            .history
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > self.window)
        {
            self.history.pop_front();
        }
        self.history.iter().map(|(_, r)| *r).max().unwrap_or(raw)
    }
}

/// What applying recommendations needs: a client, and the Lease that makes one gateway the one
/// that scales. The election starts the first time a version has autoscaling (at start or after
/// a reload) and then runs until shutdown.
#[derive(Clone)]
pub struct Scaler {
    pub client: Client,
    pub lease: lease::LeaseSettings,
}

/// Compute recommendations every `refresh` and, when leader, apply them to the Deployments of
/// the versions that have `[services.versions.autoscale]` in the current route table.
pub async fn run(
    routes: RouteHandle,
    metrics: Metrics,
    scaler: Option<Scaler>,
    group: Option<Arc<crate::coordination::Coordinator>>,
    refresh: Duration,
    stop: CancellationToken,
) {
    let leader = Arc::new(AtomicBool::new(false));
    let mut electing = false;
    let mut recommenders: HashMap<(String, String), Recommender> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(refresh) => {}
            _ = stop.cancelled() => return,
        }
        let now = Instant::now();
        let table = routes.load_full();
        let mut seen = Vec::new();
        for svc in table.services() {
            for v in &svc.versions {
                let replicas = v.replicas.replicas();
                // With several gateways, the load of all of them (the others' as their
                // member Leases said it last).
                let (other_busy, other_queued) = group
                    .as_ref()
                    .map_or((0, 0), |g| g.others_load(&svc.name, &v.name));
                let busy: u32 =
                    replicas.iter().map(|r| r.in_flight()).sum::<u32>() + other_busy;
                let queued = v.replicas.queued() + other_queued;
                let maxc = svc.settings.replica_max_concurrent_requests;
                let config = v.autoscale.as_ref();
                let (goal, min, max, window) = config
                    .map(|c| {
                        (
                            c.target_utilization,
                            c.min_replicas,
                            c.max_replicas,
                            c.scale_down_window,
                        )
                    })
                    .unwrap_or((0.7, 1, 10, Duration::from_secs(60)));
                let capacity = (replicas.len() as u32 * maxc).max(1);
                let utilization = f64::from(busy + queued) / f64::from(capacity);
                let raw = desired_replicas(busy, queued, maxc, goal, min, max);
                let key = (svc.name.clone(), v.name.clone());
                let recommender = recommenders
                    .entry(key.clone())
                    .or_insert_with(|| Recommender::new(window));
                recommender.window = window;
                let rec = recommender.recommend(now, raw);
                seen.push(key);
                metrics
                    .autoscale
                    .observe(&svc.name, &v.name, utilization, rec);
                let (Some(config), Some(scaler)) = (config, &scaler) else {
                    continue;
                };
                if !electing {
                    electing = true;
                    tracing::info!(lease = %scaler.lease.name, "autoscaling configured; taking part in the Lease election");
                    tokio::spawn(lease::elect(
                        scaler.client.clone(),
                        scaler.lease.clone(),
                        leader.clone(),
                        stop.clone(),
                    ));
                }
                if leader.load(Ordering::Acquire) {
                    apply(&scaler.client, &svc.name, &v.name, config, rec, &metrics).await;
                }
            }
        }
        // Versions a reload removed start from scratch if they come back.
        recommenders.retain(|k, _| seen.contains(k));
    }
}

async fn apply(
    client: &Client,
    service: &str,
    version: &str,
    config: &AutoscaleConfig,
    replicas: u32,
    metrics: &Metrics,
) {
    let ns = &config.namespace;
    let name = &config.deployment;
    // Never fight a HorizontalPodAutoscaler on the same Deployment.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    match hpas.list(&ListParams::default()).await {
        Ok(list) => {
            if list.items.iter().any(|h| {
                h.spec.as_ref().is_some_and(|s| {
                    s.scale_target_ref.kind == "Deployment" && &s.scale_target_ref.name == name
                })
            }) {
                metrics.autoscale.blocked(service, version, "hpa");
                tracing::warn!(deployment = %name, namespace = %ns, "a HorizontalPodAutoscaler targets this Deployment; not scaling it");
                return;
            }
        }
        Err(e) => {
            metrics.autoscale.blocked(service, version, "api_error");
            tracing::warn!(error = %e, "autoscaler: cannot list HorizontalPodAutoscalers; not scaling");
            return;
        }
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let current = match deployments.get_scale(name).await {
        Ok(s) => s.spec.and_then(|s| s.replicas).unwrap_or(0),
        Err(e) => {
            metrics.autoscale.blocked(service, version, "api_error");
            tracing::warn!(error = %e, deployment = %name, "autoscaler: cannot read the Deployment's scale");
            return;
        }
    };
    let want = i32::try_from(replicas).unwrap_or(i32::MAX);
    if current == want {
        return;
    }
    let patch = serde_json::json!({ "spec": { "replicas": want } });
    match deployments
        .patch_scale(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            metrics.autoscale.scaled(service, version);
            tracing::info!(deployment = %name, namespace = %ns, from = current, to = want, "scaled");
        }
        Err(e) => {
            metrics.autoscale.blocked(service, version, "api_error");
            tracing::warn!(error = %e, deployment = %name, "autoscaler: scale patch failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_formula_with_bounds() {
        // 7 busy of 10 slots at 70 % target -> exactly 10 replicas of 1 slot.
        assert_eq!(desired_replicas(7, 0, 1, 0.7, 1, 10), 10);
        assert_eq!(desired_replicas(1, 0, 1, 0.7, 1, 10), 2);
        assert_eq!(desired_replicas(0, 0, 1, 0.7, 1, 10), 1);
        assert_eq!(desired_replicas(100, 50, 1, 0.7, 1, 10), 10);
        assert_eq!(desired_replicas(14, 0, 4, 0.7, 1, 10), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn scales_up_at_once_and_down_after_the_window() {
        let mut r = Recommender::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(r.recommend(t0, 8), 8);
        assert_eq!(r.recommend(t0 + Duration::from_secs(1), 2), 8, "down waits");
        assert_eq!(
            r.recommend(t0 + Duration::from_secs(30), 9),
            9,
            "up is immediate"
        );
        assert_eq!(r.recommend(t0 + Duration::from_secs(89), 2), 9);
        assert_eq!(
            r.recommend(t0 + Duration::from_secs(91), 2),
            2,
            "after a quiet window"
        );
    }
}
