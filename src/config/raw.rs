//! The configuration file exactly as written: serde types, every table `deny_unknown_fields`.
//! Nothing here is trusted; `super::validate` turns it into a [`super::Config`].

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: RawListen,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub access_log: RawAccessLog,
    #[serde(default)]
    pub services: Vec<RawService>,
    pub kubernetes: Option<RawKubernetes>,
    pub coordination: Option<RawCoordination>,
}

/// `[coordination]`: several gateways share each replica's limit (members from Leases).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCoordination {
    /// The gateways that act as one: Leases labelled `scoregate.io/group=<group>`.
    pub group: Option<String>,
    /// Where the member Leases live (default: `kubernetes.lease_namespace`, else "default").
    pub namespace: Option<String>,
    pub lease_duration_ms: Option<u64>,
    /// The key that authenticates requests handed between gateways (at least 32 bytes).
    pub peer_key_file: Option<String>,
    /// The IP the other gateways reach this one's `listen.peer` port on (default: $POD_IP,
    /// else the IP of `listen.peer`).
    pub advertise_ip: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKubernetes {
    /// Default: in-cluster configuration, else `$KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<String>,
    pub context: Option<String>,
    /// Take replicas of versions without static `replicas` from labelled EndpointSlices.
    pub discovery: Option<bool>,
    /// Namespace watched for EndpointSlices (default: all namespaces).
    pub namespace: Option<String>,
    /// The autoscaler's Lease (one gateway replica applies scaling decisions).
    pub lease_namespace: Option<String>,
    pub lease_name: Option<String>,
    pub lease_duration_ms: Option<u64>,
    /// This replica's identity in the Lease (default: $POD_NAME, else the host name).
    pub identity: Option<String>,
    pub autoscale_refresh_ms: Option<u64>,
    /// Namespace of the services ConfigMap and key Secrets (default: `namespace`, else "default").
    pub config_namespace: Option<String>,
    /// ConfigMap (in `config_namespace`) whose `services.toml` adds/overrides services.
    pub services_configmap: Option<String>,
}

/// The `services.toml` of the services ConfigMap.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServices {
    #[serde(default)]
    pub services: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecretSource {
    pub name: String,
    pub namespace: Option<String>,
    pub cname: Option<String>,
    pub ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub tls: Option<String>,
    pub http: Option<String>,
    pub admin: Option<String>,
    /// Requests handed over by other gateways (`[coordination]`).
    pub peer: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    /// Names for a generated self-signed certificate (development only).
    pub self_signed: Option<Vec<String>>,
    /// Lowest protocol version offered: "1.2" (default) or "1.3".
    pub min_version: Option<String>,
    /// How often certificate files are checked for changes.
    pub reload_poll_ms: Option<u64>,
    /// How long changed files must stay unchanged before they are loaded.
    pub reload_debounce_ms: Option<u64>,
    /// Certificates by ACME.
    pub acme: Option<RawAcme>,
    /// A TLS Secret watched through the Kubernetes API.
    pub kubernetes_secret: Option<RawSecretSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub directory: String,
    pub names: Option<Vec<String>>,
    pub leaf_domain_label: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub contact: Vec<String>,
    pub state_dir: String,
    pub root_ca: Option<String>,
    pub challenge: Option<String>,
    pub renew_fraction: Option<f64>,
    pub renew_before_days: Option<u64>,
    pub retry_initial_ms: Option<u64>,
    pub retry_max_ms: Option<u64>,
    pub order_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
    /// Label for metrics and the admin port (default: `cname`, else the first name).
    pub name: Option<String>,
    /// The name clients use; every candidate must cover it.
    pub cname: Option<String>,
    /// PEM root(s) the chain must lead to.
    pub ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_body_bytes: Option<u64>,
    pub max_header_bytes: Option<u64>,
    pub header_read_timeout_ms: Option<u64>,
    pub handshake_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub shutdown_grace_ms: Option<u64>,
    pub max_connections: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub busy_poll_us: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub enabled: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: String,
    pub auth_enabled: Option<bool>,
    pub token_auth_enabled: Option<bool>,
    pub primary_key: Option<String>,
    pub secondary_key: Option<String>,
    /// A Secret (in the `[kubernetes]` namespace) with keys `primary` and `secondary`.
    pub auth_secret: Option<String>,
    pub token: Option<RawToken>,
    pub scoring_timeout_ms: Option<u64>,
    /// Longest gap between two chunks of a streamed answer (server-sent events).
    pub stream_idle_timeout_ms: Option<u64>,
    pub replica_max_concurrent_requests: Option<u64>,
    /// Milliseconds a request may wait for a free replica (Azure's name and unit).
    pub max_request_wait_time: Option<u64>,
    pub max_queued_requests: Option<u64>,
    /// Consecutive transport failures (connect, reset, garbage, timeout) that eject a replica.
    pub outlier_consecutive_failures: Option<u64>,
    /// First ejection length; it grows with each ejection (× n, at most 10×).
    pub outlier_base_ejection_ms: Option<u64>,
    #[serde(default)]
    pub versions: Vec<RawVersion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub algorithm: String,
    pub secret: Option<String>,
    pub public_key_file: Option<String>,
    pub audience: String,
    pub issuer: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVersion {
    pub name: String,
    pub traffic_percentile: Option<u64>,
    pub is_default: Option<bool>,
    #[serde(default)]
    pub replicas: Vec<String>,
    pub protocol: Option<String>,
    pub autoscale: Option<RawAutoscale>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAutoscale {
    /// The Deployment of this version's scoring pods.
    pub deployment: String,
    pub namespace: Option<String>,
    pub min_replicas: Option<u64>,
    pub max_replicas: Option<u64>,
    pub target_utilization: Option<f64>,
    pub scale_down_window_ms: Option<u64>,
}
