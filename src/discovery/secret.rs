//! The TLS Secret source: watch one Secret and offer its `cert.pem`/`key.pem` (Azure ML's
//! layout) or `tls.crt`/`tls.key` (kubernetes.io/tls, cert-manager) to the certificate pipeline.
//! A bad Secret is refused there and the last good certificate keeps serving; watch errors are
//! retried with kube's default backoff while serving continues.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::tls::CertManager;

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
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher::watcher(api, cfg).default_backoff();
    futures_util::pin_mut!(stream);
    let mut last_version: Option<String> = None;
    loop {
        let event = tokio::select! {
            e = stream.next() => match e {
                Some(e) => e,
                None => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        match event {
            Ok(Event::Apply(s) | Event::InitApply(s)) => {
                let version = s.metadata.resource_version.clone();
                if version.is_some() && version == last_version {
                    continue;
                }
                last_version = version;
                match material(&s) {
                    Some((cert, key)) => {
                        // Refusals are logged and counted by the pipeline.
                        let _ = certs.offer(slot, cert, key, "secret");
                    }
                    None => {
                        certs.refuse(
                            slot,
                            "secret",
                            format!(
                                "Secret {namespace}/{name} has neither cert.pem/key.pem nor tls.crt/tls.key"
                            ),
                        );
                    }
                }
            }
            Ok(Event::Delete(_)) => {
                tracing::warn!(%namespace, %name, "TLS Secret deleted; the last good certificate stays in service");
            }
            Ok(Event::Init | Event::InitDone) => {}
            Err(e) => {
                tracing::warn!(%namespace, %name, error = %e, "watching the TLS Secret failed; retrying with backoff");
            }
        }
    }
}
