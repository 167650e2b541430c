//! The composition root: [`App::build`] wires a validated [`Config`] into the gateway's parts
//! (route table, certificates, ACME, the proxy, the admin state, the inputs of the route table)
//! before any bind, and [`run`] starts what runs beside the listeners (certificate file
//! watching, configuration reload, the Kubernetes watchers, the autoscaler, ACME, the admin
//! port), serves until shutdown and drains (`server::serve`).

mod reload;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;


use crate::acme::{AcmeManager, ChallengeKind, Challenges};
use crate::admin::AdminState;
use crate::config::{Config, Limits};
use crate::metrics::{Metrics, MetricsError};
use crate::proxy::Gateway;
use crate::routing::{RouteHandle, RouteTable};
use crate::server::{Listeners, Server, ServerError};
use crate::tls::{self, CertManager};
use tokio_util::sync::CancellationToken;

/// Everything a running gateway shares: built from a validated [`Config`], before any bind.
pub struct App {
    pub gateway: Arc<Gateway>,
    pub metrics: Metrics,
    pub routes: RouteHandle,
    pub certs: Option<Arc<CertManager>>,
    pub admin: Arc<AdminState>,
    /// This gateway's part in its group (`[coordination]`).
    coordinator: Option<Arc<crate::coordination::Coordinator>>,
    /// What the listeners' connections need.
    server: Arc<Server>,
    kubernetes: Option<crate::discovery::KubeSettings>,

    /// The ACME loop, taken by [`run`].
    acme: std::sync::Mutex<Option<AcmeManager>>,
    /// Certificate file poll interval and debounce.
    reload: (Duration, Duration),
    limits: Limits,
    /// The inputs of the route table (file services, ConfigMap, discovery, key Secrets).
    sources: Arc<crate::discovery::RouteSources>,
    /// The configuration file to reload on SIGHUP and on change.
    config_path: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl App {
    pub fn build(config: &Config) -> Result<App, ServerError> {
        let metrics = Metrics::new()?;
        let coordination = crate::coordination::CoordinationMetrics::new(&metrics.registry)
            .map_err(MetricsError::from)?;
        let coordinator = config
            .coordination
            .clone()
            .map(|c| crate::coordination::Coordinator::new(c, coordination));
        let shares = coordinator
            .as_ref()
            .map_or_else(crate::upstream::Shares::whole, |c| c.shares.clone());
        let routes = RouteHandle::new(RouteTable::build_shared(
            &config.services,
            &metrics,
            &shares,
        ));
        let certs = CertManager::new(config.tls.slots.clone(), metrics.certs.clone());
        let challenges = config.tls.acme.as_ref().map(|_| Challenges::new());
        let alpn_challenges = config
            .tls
            .acme
            .as_ref()
            .filter(|(a, _)| a.challenge == ChallengeKind::TlsAlpn01)
            .and(challenges.clone());
        let acceptor = match &certs {
            Some(c) => Some(tls::server_config(
                c.handle(),
                config.tls.allow_tls12,
                alpn_challenges,
            )?),
            None => None,
        };
        let acme = match (&config.tls.acme, &certs, &challenges) {
            (Some((settings, slot)), Some(certs), Some(ch)) => Some(AcmeManager {
                settings: settings.clone(),
                challenges: ch.clone(),
                certs: certs.clone(),
                slot: *slot,
                metrics: metrics.acme.clone(),
            }),
            _ => None,
        };
        let admin = Arc::new(AdminState::new(
            metrics.clone(),
            routes.clone(),
            certs.clone(),
            config.limits.clone(),
        ));
        let ready = admin.clone();
        let gateway = Arc::new(
            Gateway::new(
                routes.clone(),
                metrics.clone(),
                config.limits.max_body_bytes,
                challenges,
                config.access_log,
            )
            .with_coordination(coordinator.clone())
            .with_readiness(crate::proxy::Readiness(Arc::new(move || ready.is_ready()))),
        );
        let sources = Arc::new(crate::discovery::RouteSources::new(
            config.services.clone(),
            routes.clone(),
            metrics.clone(),
        ));
        let server = Arc::new(Server::new(
            gateway.clone(),
            acceptor,
            &metrics,
            &config.limits,
        ));
        Ok(App {
            coordinator,
            server,
            sources,
            config_path: None,
            kubernetes: config.kubernetes.clone(),
            acme: std::sync::Mutex::new(acme),
            reload: (config.tls.reload_poll, config.tls.reload_debounce),
            gateway,
            metrics,
            routes,
            certs,
            admin,
            limits: config.limits.clone(),
        })
    }

    /// What the listeners' connections share.
    pub fn server(&self) -> Arc<Server> {
        self.server.clone()
    }

    /// Reload the services from this file on SIGHUP and whenever it changes.
    pub fn reload_from(mut self, path: std::path::PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    /// Export busy polling's rounds (`scoregate_busy_poll_rounds_total`).
    pub fn busy_poll(self, bp: &crate::busy_poll::BusyPoll) -> Result<Self, MetricsError> {
        self.metrics
            .registry
            .register(Box::new(bp.rounds_counter()))
            .map_err(MetricsError::from)?;
        Ok(self)
    }
}

/// Serve until `shutdown` resolves, then drain within `limits.shutdown_grace`.
pub async fn run(app: App, listeners: Listeners, shutdown: impl Future<Output = ()>) {
    let app = Arc::new(app);
    let stop = CancellationToken::new();

    if let Some(certs) = &app.certs {
        let (poll, debounce) = app.reload;
        tokio::spawn(certs.clone().watch_files(poll, debounce, stop.clone()));
    }
    if let Some(path) = app.config_path.clone() {
        let (poll, debounce) = app.reload;
        let reloader = reload::Reloader {
            path,
            sources: app.sources.clone(),
            poll,
            debounce,
        };
        tokio::spawn(reloader.run(stop.clone()));
    }
    let peer_port = listeners
        .peer
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map_or(0, |a| a.port());
    match &app.kubernetes {
        Some(kube) => spawn_kube_watchers(&app, kube.clone(), peer_port, stop.clone()),
        // Recommendations are exported as metrics even with nothing to scale.
        None => {
            let run = crate::autoscale::run(
                app.routes.clone(),
                app.metrics.clone(),
                None,
                None,
                Duration::from_secs(1),
                stop.clone(),
            );
            tokio::spawn(run);
        }
    }
    if let Some(acme) = app.acme.lock().ok().and_then(|mut a| a.take()) {
        tokio::spawn(acme.run(stop.clone()));
    }
    let admin = listeners
        .admin
        .map(|l| tokio::spawn(crate::admin::serve(l, app.admin.clone())));
    let stopper = async {
        tokio::pin!(shutdown);
        // A member of a group is ready once it knows its share.
        if let Some(c) = &app.coordinator {
            tokio::select! {
                _ = c.ready() => {}
                _ = &mut shutdown => {
                    stop.cancel();
                    return;
                }
            }
        }
        app.admin.set_ready(true);
        shutdown.await;
        app.admin.set_ready(false);
        stop.cancel();
    };
    // The peer port serves on while the gateway drains: requests handed over before the
    // others saw it leave still arrive. It closes once the member Lease is gone.
    let peer_stop = CancellationToken::new();
    let leaving = async {
        stop.cancelled().await;
        if let Some(c) = &app.coordinator {
            c.leave(app.limits.shutdown_grace).await;
        }
        peer_stop.cancel();
    };
    let serving = crate::server::serve(
        app.server.clone(),
        crate::server::Serving {
            tls: listeners.tls,
            http: listeners.http,
            peer: listeners.peer,
            peer_stop: peer_stop.clone(),
        },
        stop.clone(),
    );
    tokio::join!(serving, stopper, leaving);
    if let Some(a) = admin {
        a.abort();
    }
}

/// The Kubernetes watchers (TLS Secrets, EndpointSlice discovery) and the autoscaler with its
/// Lease election, once a client can be built.
fn spawn_kube_watchers(
    app: &App,
    kube: crate::discovery::KubeSettings,
    peer_port: u16,
    stop: CancellationToken,
) {
    let (routes, metrics) = (app.routes.clone(), app.metrics.clone());
    let coordinator = app.coordinator.clone();
    let certs = app.certs.clone();
    let secrets = certs.as_ref().map(|c| c.secret_slots()).unwrap_or_default();
    let sources = app.sources.clone();
    tokio::spawn(async move {
        let client = loop {
            match kube.client().await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, "no Kubernetes client yet; retrying in 2 s");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        };
        if let Some(certs) = certs {
            for (slot, ns, name) in secrets {
                let watch = crate::discovery::secret::watch(
                    client.clone(),
                    ns,
                    name,
                    certs.clone(),
                    slot,
                    stop.clone(),
                );
                tokio::spawn(watch);
            }
        }
        // A gateway joins its group (and may own slots) only once it knows the services and
        // their replicas: a request handed to it before would find no route.
        if let Some(c) = coordinator.clone() {
            let (client, routes, sources) = (client.clone(), routes.clone(), sources.clone());
            let (overrides, discovered) = (kube.services_configmap.is_some(), kube.discovery);
            tokio::spawn(async move {
                sources
                    .loaded(overrides, discovered, Duration::from_secs(10))
                    .await;
                c.start(client, routes, peer_port);
            });
        }
        let scaler = crate::autoscale::Scaler {
            client: client.clone(),
            lease: kube.lease.clone(),
        };
        let run = crate::autoscale::run(
            routes,
            metrics,
            Some(scaler),
            coordinator,
            kube.autoscale_refresh,
            stop.clone(),
        );
        tokio::spawn(run);
        let config_ns = kube
            .config_namespace
            .clone()
            .or_else(|| kube.namespace.clone())
            .unwrap_or_else(|| "default".into());
        let ns = config_ns.clone();
        sources.watch_keys(client.clone(), ns, stop.clone());
        if let Some(cm) = kube.services_configmap.clone() {
            let ns = config_ns.clone();
            let w = crate::discovery::services::watch(
                client.clone(),
                ns,
                cm,
                kube.discovery,
                sources.clone(),
                stop.clone(),
            );
            tokio::spawn(w);
        }
        if kube.discovery {
            tokio::spawn(crate::discovery::endpoints::run(
                client,
                kube.namespace.clone(),
                sources,
                stop,
            ));
        }
    });
}
