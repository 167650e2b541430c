//! Leader election on a `coordination.k8s.io/v1` Lease, so that one gateway replica at a time
//! applies autoscaling decisions. Optimistic concurrency (resourceVersion) settles races.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

/// Try to hold the Lease once; true when we hold it afterwards.
async fn try_hold(api: &Api<Lease>, s: &LeaseSettings) -> Result<bool, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let secs = i32::try_from(s.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&s.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(s.name.clone()),
                namespace: Some(s.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(s.identity.clone()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let ours = spec.holder_identity.as_deref() == Some(s.identity.as_str());
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(MicroTime(t)), Some(d)) => {
            t.as_second() + i64::from(d) < Timestamp::now().as_second()
        }
        _ => true,
    };
    if !ours && !expired {
        return Ok(false);
    }
    if !ours {
        spec.holder_identity = Some(s.identity.clone());
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now);
    spec.lease_duration_seconds = Some(secs);
    match api.replace(&s.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Keep `leader` true exactly while we hold the Lease; renew at a third of its duration.
pub async fn elect(
    client: Client,
    s: LeaseSettings,
    leader: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &s.namespace);
    loop {
        let held = match try_hold(&api, &s).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, lease = %s.name, "autoscaler lease: API error");
                false
            }
        };
        if held != leader.swap(held, Ordering::AcqRel) {
            tracing::info!(identity = %s.identity, lease = %s.name, leader = held, "autoscaler leadership changed");
        }
        tokio::select! {
            _ = tokio::time::sleep(s.duration / 3) => {}
            _ = stop.cancelled() => {
                leader.store(false, Ordering::Release);
                return;
            }
        }
    }
}
