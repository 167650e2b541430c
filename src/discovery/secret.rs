//! The TLS Secret source: watch one Secret and offer its `cert.pem`/`key.pem` (Azure ML's
//! layout) or `tls.crt`/`tls.key` (kubernetes.io/tls, cert-manager) to the certificate pipeline.
//! A bad Secret is refused there and the last good certificate keeps serving; watch errors are
//! retried with kube's default backoff while serving continues.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::{Named, watch_named};
use crate::tls::CertManager;
use tokio_util::sync::CancellationToken;

/// The certificate and key in a Secret, by either accepted layout.
pub fn material(secret: &Secret) -> Option<(&[u8], &[u8])> {
    let data = secret.data.as_ref()?;
    for (c, k) in [("cert.pem", "key.pem"), ("tls.crt", "tls.key")] {
        if let (Some(cert), Some(key)) = (data.get(c), data.get(k)) {
            return Some((cert.0.as_slice(), key.0.as_slice()));
        }
    }
    None
}

/// Watch `namespace/name` and offer every version of it to `slot` until `stop`.
pub async fn watch(
    client: Client,
    namespace: String,
    name: String,
    certs: Arc<CertManager>,
    slot: usize,
    stop: CancellationToken,
) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    watch_named(api, &name.clone(), stop, |event| match event {
        Named::Applied(s) => match material(&s) {
            // Refusals are logged and counted by the pipeline.
            Some((cert, key)) => drop(certs.offer(slot, cert, key, "secret")),
            None => certs.refuse(
                slot,
                "secret",
                format!("Secret {namespace}/{name} has neither cert.pem/key.pem nor tls.crt/tls.key"),
            ),
        },
        Named::Deleted => {
            tracing::warn!(%namespace, %name, "TLS Secret deleted; the last good certificate stays in service")
        }
        Named::Failed(e) => {
            tracing::warn!(%namespace, %name, error = %e, "watching the TLS Secret failed; retrying with backoff")
        }
    })
    .await;
}
