//! Per-service settings from a ConfigMap: key `services.toml` holds `[[services]]` tables in the
//! configuration file's own schema (timeouts, limits, auth, versions and traffic weights),
//! validated by the same code. A valid update replaces the file's services of the same names
//! and adds the others, without a restart; an invalid one is refused with its errors and the
//! last good services stay. Deleting the ConfigMap returns to the file's services.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};

use super::{Named, RouteSources, watch_named};
use tokio_util::sync::CancellationToken;

pub const KEY: &str = "services.toml";

pub async fn watch(
    client: Client,
    namespace: String,
    name: String,
    discovery: bool,
    sources: Arc<RouteSources>,
    stop: CancellationToken,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let reloads = sources.metrics().discovery.config_reloads.clone();
    watch_named(api, &name.clone(), stop, |event| match event {
        Named::Applied(cm) => {
            let text = cm.data.as_ref().and_then(|d| d.get(KEY)).cloned().unwrap_or_default();
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
        Named::Deleted => {
            tracing::info!(%namespace, %name, "services ConfigMap deleted; back to the file's services");
            sources.set_overrides(Vec::new());
        }
        Named::Failed(e) => {
            tracing::warn!(error = %e, "watching the services ConfigMap failed; retrying with backoff")
        }
    })
    .await;
}
