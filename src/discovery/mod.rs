//! The gateway inside a cluster: a kube client (in-cluster config in a pod, a kubeconfig
//! elsewhere) and the watchers that feed the snapshots: scoring replicas from EndpointSlices
//! ([`endpoints`]) and the TLS Secret ([`secret`]).

pub mod endpoints;
pub mod secret;
pub mod services;

use std::path::PathBuf;

use std::sync::Mutex;

use kube::Client;

use crate::config::ServiceConfig;
use crate::metrics::Metrics;
use crate::routing::{Discovered, RouteHandle, RouteTable};

/// The inputs of the route table — services from the file (and the ConfigMap) and replicas from
/// EndpointSlices — and the one place that turns them into a new snapshot.
#[derive(Debug)]
pub struct RouteSources {
    file_services: Vec<ServiceConfig>,
    overrides: Mutex<Vec<ServiceConfig>>,
    discovered: Mutex<Discovered>,
    routes: RouteHandle,
    metrics: Metrics,
}

impl RouteSources {
    pub fn new(file_services: Vec<ServiceConfig>, routes: RouteHandle, metrics: Metrics) -> Self {
        RouteSources {
            file_services,
            overrides: Mutex::new(Vec::new()),
            discovered: Mutex::new(Discovered::new()),
            routes,
            metrics,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Services from the ConfigMap: they replace file services of the same name and add others.
    pub fn set_overrides(&self, services: Vec<ServiceConfig>) {
        if let Ok(mut o) = self.overrides.lock() {
            *o = services;
        }
        self.rebuild();
    }

    pub fn set_discovered(&self, discovered: Discovered) {
        if let Ok(mut d) = self.discovered.lock() {
            *d = discovered;
        }
        self.rebuild();
    }

    fn rebuild(&self) {
        let (Ok(overrides), Ok(discovered)) = (self.overrides.lock(), self.discovered.lock())
        else {
            return;
        };
        let mut services: Vec<ServiceConfig> = self
            .file_services
            .iter()
            .filter(|f| !overrides.iter().any(|o| o.name == f.name))
            .cloned()
            .collect();
        services.extend(overrides.iter().cloned());
        let table = RouteTable::rebuild(
            &services,
            &self.metrics,
            Some(&self.routes.load()),
            &discovered,
        );
        self.routes.store(table);
        self.metrics.discovery.rebuilds.inc();
    }
}
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
    /// A ConfigMap (key `services.toml`) with `[[services]]` tables, watched.
    pub services_configmap: Option<String>,
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
