//! Scoring replicas from EndpointSlices. The label contract: the Kubernetes Service in front of
//! a model version carries `scoregate.io/service=<service>` and `scoregate.io/version=<version>`
//! (the EndpointSlice controller copies them onto its slices; slices created by hand work too).
//! The port named `scoring` is used, else the slice's first port. Only endpoints that are
//! ready and not terminating receive new requests; a removed or terminating endpoint finishes
//! its in-flight requests. A burst of changes is coalesced into one route table rebuild.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use super::RouteSources;
use crate::metrics::DiscoveryMetrics;
use crate::routing::Discovered;
use tokio_util::sync::CancellationToken;

pub const SERVICE_LABEL: &str = "scoregate.io/service";
pub const VERSION_LABEL: &str = "scoregate.io/version";
pub const PORT_NAME: &str = "scoring";
/// Changes arriving within this window are applied together.
const COALESCE: Duration = Duration::from_millis(100);

/// Ready replica addresses by (service, version), sorted.
pub fn collect(slices: &[std::sync::Arc<EndpointSlice>]) -> Discovered {
    let mut out: Discovered = HashMap::new();
    for slice in slices {
        let labels = slice.metadata.labels.as_ref();
        let (Some(svc), Some(ver)) = (
            labels.and_then(|l| l.get(SERVICE_LABEL)),
            labels.and_then(|l| l.get(VERSION_LABEL)),
        ) else {
            continue;
        };
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| p.name.as_deref() == Some(PORT_NAME))
            .or_else(|| ports.first())
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        let entry = out.entry((svc.clone(), ver.clone())).or_default();
        for ep in &slice.endpoints {
            let c = ep.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            if !ready || terminating {
                continue;
            }
            entry.extend(
                ep.addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .map(|ip| SocketAddr::new(ip, port)),
            );
        }
    }
    for v in out.values_mut() {
        v.sort();
        v.dedup();
    }
    out
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Watch EndpointSlices and keep `routes` current until `stop`. While the API server is
/// unreachable the last table keeps serving; the watch retries with backoff.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    sources: Arc<RouteSources>,
    stop: CancellationToken,
) {
    let metrics = sources.metrics().clone();
    let api: Api<EndpointSlice> = match &namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api, watcher::Config::default().labels(SERVICE_LABEL)),
    )
    .default_backoff();
    futures_util::pin_mut!(stream);
    let m: DiscoveryMetrics = metrics.discovery.clone();
    let mut synced = false;
    let mut dirty_since: Option<tokio::time::Instant> = None;
    loop {
        let deadline = dirty_since.map(|t| t + COALESCE);
        tokio::select! {
            e = stream.next() => match e {
                None => return,
                Some(Ok(Event::InitDone)) => {
                    synced = true;
                    m.up.set(1);
                    m.last_event.set(now_unix());
                    dirty_since.get_or_insert_with(tokio::time::Instant::now);
                }
                Some(Ok(Event::Apply(_) | Event::Delete(_))) => {
                    m.up.set(1);
                    m.last_event.set(now_unix());
                    dirty_since.get_or_insert_with(tokio::time::Instant::now);
                }
                Some(Ok(Event::Init | Event::InitApply(_))) => {}
                Some(Err(e)) => {
                    m.up.set(0);
                    m.watch_errors.inc();
                    tracing::warn!(error = %e, "EndpointSlice watch failed; serving the last routes, retrying with backoff");
                }
            },
            _ = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } else { std::future::pending::<()>().await } }, if synced => {
                dirty_since = None;
                let discovered = collect(&store.state());
                let replicas: usize = discovered.values().map(Vec::len).sum();
                tracing::info!(versions = discovered.len(), replicas, "routes rebuilt from EndpointSlices");
                sources.set_discovered(discovered);
            }
            _ = stop.cancelled() => return,
        }
    }
}
