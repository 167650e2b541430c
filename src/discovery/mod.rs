//! The gateway inside a cluster: a kube client (in-cluster config in a pod, a kubeconfig
//! elsewhere) and the watchers that feed the snapshots: scoring replicas from EndpointSlices
//! ([`endpoints`]), per-service settings from a ConfigMap ([`services`]), service keys from
//! Secrets ([`keys`]) and the TLS Secret ([`secret`]). [`RouteSources`] is the one place where
//! their inputs become a new route table.

pub mod endpoints;
pub mod keys;
pub mod secret;
pub mod services;

use std::path::PathBuf;

use std::sync::Mutex;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{AuthConfig, ServiceConfig};
use crate::metrics::Metrics;
use crate::routing::{Discovered, RouteHandle, RouteTable};
use tokio_util::sync::CancellationToken;

/// The inputs of the route table — services from the file (and the ConfigMap) and replicas from
/// EndpointSlices — and the one place that turns them into a new snapshot.
pub struct RouteSources {
    /// The configuration file's services (replaced on a reload).
    file_services: Mutex<Vec<ServiceConfig>>,
    overrides: Mutex<Vec<ServiceConfig>>,
    discovered: Mutex<Discovered>,
    /// Keys read from `auth_secret` Secrets, by Secret name.
    keys: Mutex<HashMap<String, (String, Option<String>)>>,
    /// Where key Secrets are watched from, once a client exists; names already watched.
    key_watch: Mutex<Option<KeyWatch>>,
    routes: RouteHandle,
    metrics: Metrics,
    /// Whether the services ConfigMap and the EndpointSlices have been read once.
    loaded: tokio::sync::watch::Sender<(bool, bool)>,
}

// Keys never reach a log line, not even through `{:?}`.
impl std::fmt::Debug for RouteSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteSources")
            .field(
                "file_services",
                &self.file_services.lock().map(|f| f.len()).unwrap_or(0),
            )
            .finish_non_exhaustive()
    }
}

struct KeyWatch {
    client: Client,
    namespace: String,
    stop: CancellationToken,
    watched: std::collections::HashSet<String>,
}

impl std::fmt::Debug for KeyWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyWatch")
            .field("namespace", &self.namespace)
            .field("watched", &self.watched)
            .finish()
    }
}

impl RouteSources {
    pub fn new(file_services: Vec<ServiceConfig>, routes: RouteHandle, metrics: Metrics) -> Self {
        RouteSources {
            file_services: Mutex::new(file_services),
            overrides: Mutex::new(Vec::new()),
            discovered: Mutex::new(Discovered::new()),
            keys: Mutex::new(HashMap::new()),
            key_watch: Mutex::new(None),
            routes,
            metrics,
            loaded: tokio::sync::watch::channel((false, false)).0,
        }
    }

    /// Resolves once the services ConfigMap (`overrides`) and the EndpointSlices
    /// (`discovered`), those asked for, have been read once, or after `within`.
    pub async fn loaded(&self, overrides: bool, discovered: bool, within: std::time::Duration) {
        let mut rx = self.loaded.subscribe();
        let _ = tokio::time::timeout(
            within,
            rx.wait_for(|(o, d)| (*o || !overrides) && (*d || !discovered)),
        )
        .await;
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The configuration file's services after a reload.
    pub fn set_file_services(self: &Arc<Self>, services: Vec<ServiceConfig>) {
        if let Ok(mut f) = self.file_services.lock() {
            *f = services;
        }
        self.rebuild();
    }

    /// Services from the ConfigMap: they replace file services of the same name and add others.
    pub fn set_overrides(self: &Arc<Self>, services: Vec<ServiceConfig>) {
        if let Ok(mut o) = self.overrides.lock() {
            *o = services;
        }
        self.rebuild();
        self.loaded.send_modify(|l| l.0 = true);
    }

    pub fn set_discovered(self: &Arc<Self>, discovered: Discovered) {
        if let Ok(mut d) = self.discovered.lock() {
            *d = discovered;
        }
        self.rebuild();
        self.loaded.send_modify(|l| l.1 = true);
    }

    /// Keys read from the Secret `name`.
    pub fn set_keys(self: &Arc<Self>, name: &str, keys: (String, Option<String>)) {
        if let Ok(mut k) = self.keys.lock() {
            k.insert(name.to_string(), keys);
        }
        self.rebuild();
    }

    /// Watch key Secrets (in `namespace`) for every `auth_secret`, now and as services change.
    pub fn watch_keys(
        self: &Arc<Self>,
        client: Client,
        namespace: String,
        stop: CancellationToken,
    ) {
        if let Ok(mut w) = self.key_watch.lock() {
            *w = Some(KeyWatch {
                client,
                namespace,
                stop,
                watched: Default::default(),
            });
        }
        self.rebuild();
    }

    fn rebuild(self: &Arc<Self>) {
        let (Ok(file_services), Ok(overrides), Ok(discovered), Ok(keys)) = (
            self.file_services.lock(),
            self.overrides.lock(),
            self.discovered.lock(),
            self.keys.lock(),
        ) else {
            return;
        };
        let mut services: Vec<ServiceConfig> = file_services
            .iter()
            .filter(|f| !overrides.iter().any(|o| o.name == f.name))
            .cloned()
            .collect();
        services.extend(overrides.iter().cloned());
        let mut wanted = Vec::new();
        for s in &mut services {
            if let AuthConfig::SecretRef { name } = &s.auth {
                wanted.push(name.clone());
                if let Some((primary, secondary)) = keys.get(name) {
                    s.auth = AuthConfig::Key {
                        primary: primary.clone(),
                        secondary: secondary.clone(),
                    };
                }
            }
        }
        let table = RouteTable::rebuild(
            &services,
            &self.metrics,
            Some(&self.routes.load()),
            &discovered,
        );
        self.routes.store(table);
        self.metrics.discovery.rebuilds.inc();
        drop((file_services, overrides, discovered, keys));
        if let Ok(mut guard) = self.key_watch.lock()
            && let Some(w) = guard.as_mut()
        {
            for name in wanted {
                if w.watched.insert(name.clone()) {
                    let task = keys::watch(
                        w.client.clone(),
                        w.namespace.clone(),
                        name,
                        self.clone(),
                        w.stop.clone(),
                    );
                    tokio::spawn(task);
                }
            }
        }
    }
}

/// What happened to a watched named object.
pub(crate) enum Named<K> {
    /// Created or changed (each resourceVersion once).
    Applied(K),
    Deleted,
    /// The watch failed; it is retried with kube's default backoff.
    Failed(kube::runtime::watcher::Error),
}

/// Watch one object by name (`fieldSelector=metadata.name=<name>`, which RBAC `resourceNames`
/// authorises) until `stop`, handing every change to `on`.
pub(crate) async fn watch_named<K>(
    api: kube::Api<K>,
    name: &str,
    stop: CancellationToken,
    mut on: impl FnMut(Named<K>),
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use futures_util::StreamExt;
    use kube::runtime::WatchStreamExt;
    use kube::runtime::watcher::{self, Event};
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
            _ = stop.cancelled() => return,
        };
        match event {
            Ok(Event::Apply(obj) | Event::InitApply(obj)) => {
                let version = obj.meta().resource_version.clone();
                if version.is_some() && version == last_version {
                    continue;
                }
                last_version = version;
                on(Named::Applied(obj));
            }
            Ok(Event::Delete(_)) => {
                last_version = None;
                on(Named::Deleted);
            }
            Ok(Event::Init | Event::InitDone) => {}
            Err(e) => on(Named::Failed(e)),
        }
    }
}

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
    /// Namespace of the services ConfigMap and the key Secrets (default: `namespace`, else
    /// "default").
    pub config_namespace: Option<String>,
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
