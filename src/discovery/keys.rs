//! Service keys from Kubernetes Secrets (`auth_secret = "<name>"`): keys `primary` and
//! (optionally) `secondary`. Rotating keys is a Secret update — no restart, no config edit. A
//! Secret with a missing or weak primary key is refused and the last good keys stay; so does a
//! deleted Secret. Key material is never logged.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::{Named, RouteSources, watch_named};
use tokio_util::sync::CancellationToken;

/// Keys shorter than this are refused (the config file's rule).
const MIN_KEY_LEN: usize = 16;

/// The (primary, secondary) keys in a Secret, or why they are unusable.
pub fn keys(secret: &Secret) -> Result<(String, Option<String>), String> {
    let data = secret.data.as_ref().ok_or("the Secret has no data")?;
    let read = |k: &str| {
        data.get(k)
            .map(|v| String::from_utf8(v.0.clone()).map(|s| s.trim().to_string()))
            .transpose()
            .map_err(|_| format!("key {k:?} is not UTF-8"))
    };
    let primary = read("primary")?.ok_or("the Secret has no \"primary\" key")?;
    let secondary = read("secondary")?;
    for (name, k) in [
        ("primary", Some(&primary)),
        ("secondary", secondary.as_ref()),
    ] {
        if let Some(k) = k
            && (k.len() < MIN_KEY_LEN || k.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(format!(
                "{name} must be at least {MIN_KEY_LEN} printable characters without spaces"
            ));
        }
    }
    Ok((primary, secondary))
}

pub async fn watch(
    client: Client,
    namespace: String,
    name: String,
    sources: Arc<RouteSources>,
    stop: CancellationToken,
) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let reloads = sources.metrics().discovery.config_reloads.clone();
    watch_named(api, &name.clone(), stop, |event| match event {
        Named::Applied(s) => match keys(&s) {
            Ok(k) => {
                reloads.with_label_values(&["key_secret", "ok"]).inc();
                tracing::info!(%namespace, secret = %name, "service keys loaded");
                sources.set_keys(&name, k);
            }
            Err(why) => {
                reloads.with_label_values(&["key_secret", "rejected"]).inc();
                tracing::warn!(%namespace, secret = %name, error = %why, "key Secret refused; the last good keys stay");
            }
        },
        Named::Deleted => {
            tracing::warn!(%namespace, secret = %name, "key Secret deleted; the last good keys stay")
        }
        Named::Failed(e) => {
            tracing::warn!(error = %e, secret = %name, "watching a key Secret failed; retrying with backoff")
        }
    })
    .await;
}
