//! Per-service settings from a ConfigMap: key `services.toml` holds `[[services]]` tables in the
//! configuration file's own schema (timeouts, limits, auth, versions and traffic weights),
//! validated by the same code. A valid update replaces the file's services of the same names
//! and adds the others, without a restart; an invalid one is refused with its errors and the
//! last good services stay. Deleting the ConfigMap returns to the file's services.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;

use super::RouteSources;

pub const KEY: &str = "services.toml";

pub async fn watch(
    client: Client,
    namespace: String,
    name: String,
    discovery: bool,
    sources: Arc<RouteSources>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(api, cfg).default_backoff();
    futures_util::pin_mut!(stream);
    let reloads = sources.metrics().discovery.config_reloads.clone();
    loop {
        let event = tokio::select! {
            e = stream.next() => match e { Some(e) => e, None => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        match event {
            Ok(Event::Apply(cm) | Event::InitApply(cm)) => {
                let text = cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get(KEY))
                    .cloned()
                    .unwrap_or_default();
                match crate::config::services_from_toml(&text, discovery) {
                    Ok(services) => {
                        tracing::info!(%namespace, %name, services = services.len(), "services updated from the ConfigMap");
                        reloads.with_label_values(&["configmap", "ok"]).inc();
                        sources.set_overrides(services);
                    }
                    Err(e) => {
                        reloads.with_label_values(&["configmap", "rejected"]).inc();
                        tracing::warn!(%namespace, %name, errors = %e, "ConfigMap services refused; the last good services stay");
                    }
                }
            }
            Ok(Event::Delete(_)) => {
                tracing::info!(%namespace, %name, "services ConfigMap deleted; back to the file's services");
                sources.set_overrides(Vec::new());
            }
            Ok(Event::Init | Event::InitDone) => {}
            Err(e) => {
                tracing::warn!(error = %e, "watching the services ConfigMap failed; retrying with backoff")
            }
        }
    }
}
