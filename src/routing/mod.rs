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

/// The Open Inference Protocol (v2) model URI prefix.
pub const V2_MODELS: &str = "/v2/models/";

/// What a request asks of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /api/v1/service/<name>/score`, forwarded to the replica's `/score`.
    Score,
    /// `GET .../swagger.json`, forwarded to the replica's `/swagger.json`.
    Swagger,
    /// Open Inference Protocol v2: `GET /v2/models/<name>[/versions/<v>]` (model metadata).
    V2Metadata,
    /// `GET /v2/models/<name>[/versions/<v>]/ready`.
    V2Ready,
    /// `POST /v2/models/<name>[/versions/<v>]/infer`.
    V2Infer,
    /// OpenAI-compatible `POST /v1/chat/completions`, routed by the body's `model`.
    OpenAiChat,
    /// `POST /v1/completions`, routed by the body's `model`.
    OpenAiCompletions,
    /// `POST /v1/embeddings`, routed by the body's `model`.
    OpenAiEmbeddings,
    /// A gRPC call (`content-type: application/grpc…`), routed by its metadata or authority
    /// (`proxy::grpc`), its path the method's.
    Grpc,
}

impl Endpoint {
    /// An Open Inference Protocol (v2) endpoint: its errors are answered in that protocol's
    /// shape (`{"error": "<message>"}`).
    pub fn is_v2(self) -> bool {
        matches!(self, Endpoint::V2Metadata | Endpoint::V2Ready | Endpoint::V2Infer)
    }

    /// An OpenAI-compatible endpoint: the service is the body's `model` ([`Route::service`] is
    /// empty until the body is read).
    pub fn routes_by_body(self) -> bool {
        matches!(
            self,
            Endpoint::OpenAiChat | Endpoint::OpenAiCompletions | Endpoint::OpenAiEmbeddings
        )
    }

    /// The protocol label of `scoregate_requests_by_protocol_total`.
    pub fn protocol(self) -> &'static str {
        if self.is_v2() {
            "v2"
        } else if self.routes_by_body() {
            "openai"
        } else if self == Endpoint::Grpc {
            "grpc"
        } else {
            "azureml"
        }
    }

    /// The methods it takes, as an `Allow` header says them.
    pub fn allow(self) -> &'static str {
        match self {
            Endpoint::Score
            | Endpoint::V2Infer
            | Endpoint::OpenAiChat
            | Endpoint::OpenAiCompletions
            | Endpoint::OpenAiEmbeddings
            | Endpoint::Grpc => "POST",
            Endpoint::Swagger | Endpoint::V2Metadata | Endpoint::V2Ready => "GET, HEAD",
        }
    }

    /// Whether it takes `method` (as [`Endpoint::allow`] says).
    pub fn takes(self, method: &http::Method) -> bool {
        match self.allow() {
            "POST" => method == http::Method::POST,
            _ => method == http::Method::GET || method == http::Method::HEAD,
        }
    }

    /// Whether it needs the service's key. Scoring and inference do; the description of a
    /// service (`swagger.json`, as Azure ML serves it, and its v2 analogues, model metadata and
    /// readiness) does not.
    pub fn needs_key(self) -> bool {
        !matches!(
            self,
            Endpoint::Swagger | Endpoint::V2Metadata | Endpoint::V2Ready
        )
    }
}

/// A request's route: the service, what it asks of it, and the version its path names (v2's
/// `/versions/<v>`; Azure ML's paths name none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    pub service: &'a str,
    pub endpoint: Endpoint,
    pub version: Option<&'a str>,
}

impl Route<'_> {
    /// The path the replica is sent (the query stays the client's): Azure ML's endpoints map
    /// to the scoring container's `/score` and `/swagger.json`; a v2 path goes as it came, less
    /// the version segment (the version picks the replicas; the replica serves the model under
    /// its name); an OpenAI path goes as it came. `None`: the client's path as it is.
    pub fn upstream_path(&self) -> Option<std::borrow::Cow<'static, str>> {
        let suffix = match self.endpoint {
            Endpoint::Score => return Some("/score".into()),
            Endpoint::Swagger => return Some("/swagger.json".into()),
            Endpoint::OpenAiChat
            | Endpoint::OpenAiCompletions
            | Endpoint::OpenAiEmbeddings
            | Endpoint::Grpc => return None,
            Endpoint::V2Metadata => "",
            Endpoint::V2Ready => "/ready",
            Endpoint::V2Infer => "/infer",
        };
        self.version
            .map(|_| format!("{V2_MODELS}{}{suffix}", self.service).into())
    }
}

/// The route of a path: `/api/v1/service/<name>/<score|swagger.json>`,
/// `/v2/models/<name>[/versions/<v>][/ready|/infer]` (names and versions one non-empty segment
/// each), or the OpenAI-compatible `/v1/chat/completions`, `/v1/completions`,
/// `/v1/embeddings` (the service named by the body: `service` is empty).
pub fn parse_path(path: &str) -> Option<Route<'_>> {
    let by_body = match path {
        "/v1/chat/completions" => Some(Endpoint::OpenAiChat),
        "/v1/completions" => Some(Endpoint::OpenAiCompletions),
        "/v1/embeddings" => Some(Endpoint::OpenAiEmbeddings),
        _ => None,
    };
    if let Some(endpoint) = by_body {
        return Some(Route {
            service: "",
            endpoint,
            version: None,
        });
    }
    if let Some(rest) = path.strip_prefix(PREFIX) {
        let (name, tail) = rest.split_once('/')?;
        let endpoint = match tail {
            "score" => Endpoint::Score,
            "swagger.json" => Endpoint::Swagger,
            _ => return None,
        };
        return (!name.is_empty()).then_some(Route {
            service: name,
            endpoint,
            version: None,
        });
    }
    let rest = path.strip_prefix(V2_MODELS)?;
    let mut parts = rest.split('/');
    let service = parts.next().filter(|n| !n.is_empty())?;
    let mut next = parts.next();
    let mut version = None;
    if next == Some("versions") {
        version = Some(parts.next().filter(|v| !v.is_empty())?);
        next = parts.next();
    }
    let endpoint = match next {
        None => Endpoint::V2Metadata,
        Some("ready") => Endpoint::V2Ready,
        Some("infer") => Endpoint::V2Infer,
        Some(_) => return None,
    };
    parts.next().is_none().then_some(Route {
        service,
        endpoint,
        version,
    })
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

    fn route(path: &str) -> Option<(&str, Endpoint, Option<&str>)> {
        parse_path(path).map(|r| (r.service, r.endpoint, r.version))
    }

    #[test]
    fn parses_scoring_paths_only() {
        assert_eq!(
            route("/api/v1/service/iris/score"),
            Some(("iris", Endpoint::Score, None))
        );
        assert_eq!(
            route("/api/v1/service/iris/swagger.json"),
            Some(("iris", Endpoint::Swagger, None))
        );
        assert_eq!(route("/api/v1/service//score"), None);
        assert_eq!(route("/api/v1/service/iris/other"), None);
        assert_eq!(route("/api/v1/service/iris"), None);
        assert_eq!(route("/score"), None);
    }

    #[test]
    fn parses_v2_model_paths() {
        use Endpoint::*;
        assert_eq!(route("/v2/models/iris"), Some(("iris", V2Metadata, None)));
        assert_eq!(route("/v2/models/iris/ready"), Some(("iris", V2Ready, None)));
        assert_eq!(route("/v2/models/iris/infer"), Some(("iris", V2Infer, None)));
        assert_eq!(
            route("/v2/models/iris/versions/blue"),
            Some(("iris", V2Metadata, Some("blue")))
        );
        assert_eq!(
            route("/v2/models/iris/versions/blue/infer"),
            Some(("iris", V2Infer, Some("blue")))
        );
        assert_eq!(
            route("/v2/models/iris/versions/blue/ready"),
            Some(("iris", V2Ready, Some("blue")))
        );
        for bad in [
            "/v2/models/",
            "/v2/models//infer",
            "/v2/models/iris/",
            "/v2/models/iris/versions",
            "/v2/models/iris/versions/",
            "/v2/models/iris/versions//infer",
            "/v2/models/iris/infer/",
            "/v2/models/iris/infer/more",
            "/v2/models/iris/explain",
            "/v2/health/ready",
        ] {
            assert_eq!(route(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_openai_paths_with_the_service_left_to_the_body() {
        use Endpoint::*;
        assert_eq!(route("/v1/chat/completions"), Some(("", OpenAiChat, None)));
        assert_eq!(route("/v1/completions"), Some(("", OpenAiCompletions, None)));
        assert_eq!(route("/v1/embeddings"), Some(("", OpenAiEmbeddings, None)));
        for bad in ["/v1/chat/completions/", "/v1/models", "/v1/chat", "/v1/embeddings/x"] {
            assert_eq!(route(bad), None, "{bad}");
        }
        assert!(OpenAiChat.needs_key() && OpenAiEmbeddings.routes_by_body());
        assert!(OpenAiChat.takes(&http::Method::POST) && !OpenAiChat.takes(&http::Method::GET));
        assert!(V2Metadata.takes(&http::Method::HEAD) && !V2Ready.takes(&http::Method::POST));
        assert_eq!(OpenAiCompletions.protocol(), "openai");
        assert_eq!(parse_path("/v1/completions").and_then(|r| r.upstream_path()), None);
    }

    #[test]
    fn v2_upstream_path_drops_only_the_version() {
        let up = |p: &str| parse_path(p).and_then(|r| r.upstream_path()).map(|c| c.into_owned());
        assert_eq!(up("/api/v1/service/iris/score").as_deref(), Some("/score"));
        assert_eq!(up("/v2/models/iris/infer"), None);
        assert_eq!(
            up("/v2/models/iris/versions/blue/infer").as_deref(),
            Some("/v2/models/iris/infer")
        );
        assert_eq!(
            up("/v2/models/iris/versions/blue").as_deref(),
            Some("/v2/models/iris")
        );
    }
}
