//! The route table: one immutable snapshot (service -> versions -> replicas) built and validated
//! off the hot path and swapped whole through one `ArcSwap` ([`RouteHandle`]), so discovery can
//! replace it while requests keep flowing.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::Auth;
use crate::config::{Protocol, ServiceConfig, ServiceSettings};
use crate::metrics::{Metrics, VersionMetrics};
use crate::upstream::{ReplicaSet, Shares};

/// Replica addresses found by discovery, by (service, version).
pub type Discovered = HashMap<(String, String), Vec<std::net::SocketAddr>>;

/// The scoring URI prefix (Azure ML's).
pub const PREFIX: &str = "/api/v1/service/";

/// What a request asks of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST .../score`, forwarded to the replica's `/score`.
    Score,
    /// `GET .../swagger.json`, forwarded to the replica's `/swagger.json`.
    Swagger,
}

impl Endpoint {
    pub fn upstream_path(self) -> &'static str {
        match self {
            Endpoint::Score => "/score",
            Endpoint::Swagger => "/swagger.json",
        }
    }
}

/// Split `/api/v1/service/<name>/<score|swagger.json>` into its service name and endpoint.
pub fn parse_path(path: &str) -> Option<(&str, Endpoint)> {
    let rest = path.strip_prefix(PREFIX)?;
    let (name, tail) = rest.split_once('/')?;
    let endpoint = match tail {
        "score" => Endpoint::Score,
        "swagger.json" => Endpoint::Swagger,
        _ => return None,
    };
    (!name.is_empty()).then_some((name, endpoint))
}

#[derive(Debug)]
pub struct Version {
    pub name: String,
    /// `name` as the `azureml-model-deployment` response header value, built once here
    /// instead of per response (version names are validated header-safe).
    pub header: Option<http::HeaderValue>,
    pub traffic_percentile: u8,
    pub protocol: Protocol,
    pub replicas: Arc<ReplicaSet>,
    pub metrics: VersionMetrics,
    /// `[services.versions.autoscale]`, read by the autoscaler on every tick (so a reload that
    /// adds, changes or removes it takes effect).
    pub autoscale: Option<crate::config::AutoscaleConfig>,
}

#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub auth: Auth,
    pub settings: ServiceSettings,
    pub versions: Vec<Version>,
    pub default_version: usize,
    /// Roll (0..100) -> version index: the traffic split, precomputed.
    split: [u8; 100],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service has no version named {0:?}")]
pub struct UnknownVersion(pub String);

impl Service {
    /// Build a service; versions without static replicas take them from `discovered`, and
    /// replica sets of `previous` are reused (updated in place) when their settings match, so
    /// in-flight accounting survives a rebuild.
    pub fn build(
        c: &ServiceConfig,
        metrics: &Metrics,
        previous: Option<&Service>,
        discovered: &Discovered,
        shares: &Arc<Shares>,
    ) -> Self {
        let versions: Vec<Version> = c
            .versions
            .iter()
            .map(|v| {
                let addrs = if v.replicas.is_empty() {
                    discovered
                        .get(&(c.name.clone(), v.name.clone()))
                        .cloned()
                        .unwrap_or_default()
                } else {
                    v.replicas.clone()
                };
                let replicas = previous
                    .and_then(|p| p.versions.iter().find(|pv| pv.name == v.name))
                    .filter(|pv| pv.replicas.compatible(v.protocol, &c.settings))
                    .map(|pv| {
                        pv.replicas.update(&addrs);
                        pv.replicas.clone()
                    })
                    .unwrap_or_else(|| ReplicaSet::new(&addrs, v.protocol, &c.settings, shares));
                Version {
                    name: v.name.clone(),
                    header: http::HeaderValue::from_str(&v.name).ok(),
                    traffic_percentile: v.traffic_percentile,
                    protocol: v.protocol,
                    replicas,
                    metrics: metrics.version(&c.name, &v.name),
                    autoscale: v.autoscale.clone(),
                }
            })
            .collect();
        let mut split = [c.default_version as u8; 100];
        let mut at = 0usize;
        for (i, v) in c.versions.iter().enumerate() {
            for slot in split
                .iter_mut()
                .skip(at)
                .take(usize::from(v.traffic_percentile))
            {
                *slot = i as u8;
            }
            at += usize::from(v.traffic_percentile);
        }
        Service {
            name: c.name.clone(),
            auth: Auth::from_config(&c.auth),
            settings: c.settings,
            versions,
            default_version: c.default_version,
            split,
        }
    }

    /// Index of the version for this request: the pinned one, else by traffic split
    /// (`roll` in 0..100).
    pub fn pick_version(&self, pin: Option<&str>, roll: u8) -> Result<usize, UnknownVersion> {
        match pin {
            Some(name) => self
                .versions
                .iter()
                .position(|v| v.name == name)
                .ok_or_else(|| UnknownVersion(name.to_string())),
            None => Ok(usize::from(self.split[usize::from(roll % 100)])),
        }
    }
}

/// All services, by name, and this gateway's share of their replicas' limits.
#[derive(Debug)]
pub struct RouteTable {
    services: HashMap<String, Arc<Service>>,
    shares: Arc<Shares>,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            services: HashMap::new(),
            shares: Shares::whole(),
        }
    }
}

impl RouteTable {
    /// One gateway: every replica's whole limit.
    pub fn build(services: &[ServiceConfig], metrics: &Metrics) -> Self {
        Self::build_shared(services, metrics, &Shares::whole())
    }

    /// Replica limits shared with other gateways as `shares` says (kept by every rebuild).
    pub fn build_shared(
        services: &[ServiceConfig],
        metrics: &Metrics,
        shares: &Arc<Shares>,
    ) -> Self {
        Self::rebuild_with(services, metrics, None, &Discovered::new(), shares)
    }

    /// A new table from the configured services and the discovered replicas, reusing the
    /// replica sets (and the shares) of `previous`.
    pub fn rebuild(
        services: &[ServiceConfig],
        metrics: &Metrics,
        previous: Option<&RouteTable>,
        discovered: &Discovered,
    ) -> Self {
        let shares = previous.map_or_else(Shares::whole, |p| p.shares.clone());
        Self::rebuild_with(services, metrics, previous, discovered, &shares)
    }

    fn rebuild_with(
        services: &[ServiceConfig],
        metrics: &Metrics,
        previous: Option<&RouteTable>,
        discovered: &Discovered,
        shares: &Arc<Shares>,
    ) -> Self {
        RouteTable {
            shares: shares.clone(),
            services: services
                .iter()
                .map(|s| {
                    let prev = previous
                        .and_then(|p| p.services.get(&s.name))
                        .map(|a| a.as_ref());
                    (
                        s.name.clone(),
                        Arc::new(Service::build(s, metrics, prev, discovered, shares)),
                    )
                })
                .collect(),
        }
    }

    pub fn shares(&self) -> &Arc<Shares> {
        &self.shares
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(name)
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// The effective per-service settings, for the admin port (no keys).
    pub fn describe(&self) -> serde_json::Value {
        let mut names: Vec<_> = self.services.keys().collect();
        names.sort();
        let services: Vec<_> = names
            .into_iter()
            .filter_map(|n| self.services.get(n))
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "auth": s.auth.mode(),
                    "settings": s.settings,
                    "default_version": s.versions.get(s.default_version).map(|v| v.name.as_str()),
                    "versions": s.versions.iter().map(|v| serde_json::json!({
                        "name": v.name,
                        "traffic_percentile": v.traffic_percentile,
                        "protocol": v.protocol,
                        "replicas": v.replicas.replicas().iter().map(|r| serde_json::json!({
                            "address": r.addr.to_string(),
                            "in_flight": r.in_flight(),
                        })).collect::<Vec<_>>(),
                        "queued": v.replicas.queued(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({ "services": services })
    }
}

/// The swappable cell holding the route table.
#[derive(Debug, Clone)]
pub struct RouteHandle(Arc<ArcSwap<RouteTable>>);

impl RouteHandle {
    pub fn new(table: RouteTable) -> Self {
        RouteHandle(Arc::new(ArcSwap::from_pointee(table)))
    }

    pub fn store(&self, table: RouteTable) {
        self.0.store(Arc::new(table));
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.0.load()
    }

    pub fn load_full(&self) -> Arc<RouteTable> {
        self.0.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scoring_paths_only() {
        assert_eq!(
            parse_path("/api/v1/service/iris/score"),
            Some(("iris", Endpoint::Score))
        );
        assert_eq!(
            parse_path("/api/v1/service/iris/swagger.json"),
            Some(("iris", Endpoint::Swagger))
        );
        assert_eq!(parse_path("/api/v1/service//score"), None);
        assert_eq!(parse_path("/api/v1/service/iris/other"), None);
        assert_eq!(parse_path("/api/v1/service/iris"), None);
        assert_eq!(parse_path("/score"), None);
    }
}
