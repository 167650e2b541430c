//! The gateway inside a cluster: a kube client (in-cluster config in a pod, a kubeconfig
//! elsewhere) and the watchers that feed the snapshots: scoring replicas from EndpointSlices
//! ([`endpoints`]) and the TLS Secret ([`secret`]).

pub mod endpoints;
pub mod secret;

use std::path::PathBuf;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Validated `[kubernetes]` settings.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// A kubeconfig file; `None`: in-cluster, else `$KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// Watch EndpointSlices for replicas ([`endpoints`]).
    pub discovery: bool,
    /// Namespace for discovery; `None`: all namespaces.
    pub namespace: Option<String>,
    /// The autoscaler's Lease.
    pub lease: crate::autoscale::lease::LeaseSettings,
    pub autoscale_refresh: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration (in-cluster or kubeconfig): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

impl KubeSettings {
    pub async fn client(&self) -> Result<Client, DiscoveryError> {
        let config = match &self.kubeconfig {
            Some(path) => {
                let err = |source| DiscoveryError::Kubeconfig {
                    path: path.clone(),
                    source,
                };
                let kc = Kubeconfig::read_from(path).map_err(err)?;
                let opts = KubeConfigOptions {
                    context: self.context.clone(),
                    ..KubeConfigOptions::default()
                };
                kube::Config::from_custom_kubeconfig(kc, &opts)
                    .await
                    .map_err(err)?
            }
            None => kube::Config::infer().await.map_err(DiscoveryError::Infer)?,
        };
        Client::try_from(config).map_err(DiscoveryError::Client)
    }
}
