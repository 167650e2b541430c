//! Configuration: the TOML file ([`raw`]) is parsed and validated in one pass ([`validate`]) into an
//! immutable [`Config`]. Every problem is collected and reported at once, each naming its field and
//! the allowed values, before any port is bound (`main` exits 64 on [`ConfigErrors`]).

pub mod raw;
pub(crate) mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::tls::SlotConfig;

pub use validate::{validate, validate_service_name};

/// Azure ML's payload cap: 100 MB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 100 * 1024 * 1024;

/// The validated, effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    pub tls: TlsSettings,
    pub limits: Limits,
    pub runtime: RuntimeSettings,
    /// `[access_log] enabled`: one log event per request (target `scoregate::access`); read at
    /// start.
    pub access_log: bool,
    pub services: Vec<ServiceConfig>,
    /// Set when something needs the Kubernetes API.
    pub kubernetes: Option<crate::discovery::KubeSettings>,
    /// `[coordination]`: several gateways act as one.
    pub coordination: Option<CoordinationSettings>,
}

/// `[coordination]`, validated.
#[derive(Clone)]
pub struct CoordinationSettings {
    pub group: String,
    pub namespace: String,
    /// This gateway's member id (the Kubernetes identity).
    pub identity: String,
    pub lease_duration: Duration,
    /// The HMAC key for requests handed between gateways (never logged).
    pub peer_key: Vec<u8>,
    pub advertise_ip: std::net::IpAddr,
}

impl fmt::Debug for CoordinationSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoordinationSettings")
            .field("group", &self.group)
            .field("namespace", &self.namespace)
            .field("identity", &self.identity)
            .field("lease_duration", &self.lease_duration)
            .field("peer_key", &"<redacted>")
            .field("advertise_ip", &self.advertise_ip)
            .finish()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Listen {
    pub tls: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The certificates to serve, loaded and validated; the first is the default.
    pub slots: Vec<SlotConfig>,
    pub allow_tls12: bool,
    pub reload_poll: Duration,
    pub reload_debounce: Duration,
    /// ACME settings and the index of the slot they feed.
    pub acme: Option<(crate::acme::AcmeSettings, usize)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    #[serde(rename = "header_read_timeout_ms", with = "millis")]
    pub header_read_timeout: Duration,
    #[serde(rename = "handshake_timeout_ms", with = "millis")]
    pub handshake_timeout: Duration,
    /// A connection with no request in flight and no byte either way for this long is closed.
    #[serde(rename = "idle_timeout_ms", with = "millis")]
    pub idle_timeout: Duration,
    #[serde(rename = "shutdown_grace_ms", with = "millis")]
    pub shutdown_grace: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            max_connections: 10_000,
        }
    }
}

/// How the gateway's tokio runtime runs (`[runtime]`; read at start).
#[derive(Debug, Clone, Copy, Default)]
pub struct RuntimeSettings {
    /// After it last did work, the one-worker runtime polls for events without blocking for this
    /// long (`crate::busy_poll`); zero, the default, parks it at once.
    pub busy_poll: Duration,
}

/// One scoring service: its auth, its limits and its versions (deployments).
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    pub auth: AuthConfig,
    pub settings: ServiceSettings,
    pub versions: Vec<VersionConfig>,
    /// Index into `versions` of the version that receives unallocated traffic.
    pub default_version: usize,
}

/// Per-service limits, with Azure ML's defaults.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ServiceSettings {
    /// Bounds the wait for the replica's response head, and for the first byte of a streamed
    /// body.
    #[serde(rename = "scoring_timeout_ms", with = "millis")]
    pub scoring_timeout: Duration,
    /// Bounds the gap between two chunks of a streamed body (server-sent events, chunked).
    #[serde(rename = "stream_idle_timeout_ms", with = "millis")]
    pub stream_idle_timeout: Duration,
    pub replica_max_concurrent_requests: u32,
    #[serde(rename = "max_request_wait_time_ms", with = "millis")]
    pub max_request_wait_time: Duration,
    pub max_queued_requests: u32,
    /// Outlier detection: this many consecutive transport failures eject a replica (0 = never).
    pub outlier_consecutive_failures: u32,
    #[serde(rename = "outlier_base_ejection_ms", with = "millis")]
    pub outlier_base_ejection: Duration,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            scoring_timeout: Duration::from_millis(60_000),
            stream_idle_timeout: Duration::from_millis(60_000),
            replica_max_concurrent_requests: 1,
            max_request_wait_time: Duration::from_millis(500),
            max_queued_requests: 1_000,
            outlier_consecutive_failures: 5,
            outlier_base_ejection: Duration::from_secs(30),
        }
    }
}

#[derive(Clone)]
pub enum AuthConfig {
    None,
    Key {
        primary: String,
        secondary: Option<String>,
    },
    Token(TokenConfig),
    /// Key auth with the keys in a Kubernetes Secret (`primary`, `secondary`); until they are
    /// read, every key is refused.
    SecretRef {
        name: String,
    },
}

impl AuthConfig {
    pub fn mode(&self) -> &'static str {
        match self {
            AuthConfig::None => "none",
            AuthConfig::Key { .. } | AuthConfig::SecretRef { .. } => "key",
            AuthConfig::Token(_) => "token",
        }
    }
}

// Keys never reach a log line, not even through `{:?}`.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthConfig({})", self.mode())
    }
}

#[derive(Clone)]
pub struct TokenConfig {
    pub algorithm: jsonwebtoken::Algorithm,
    pub key: jsonwebtoken::DecodingKey,
    pub audience: String,
    pub issuer: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http1,
    H2c,
}

#[derive(Debug, Clone)]
pub struct VersionConfig {
    pub name: String,
    pub traffic_percentile: u8,
    pub replicas: Vec<SocketAddr>,
    pub protocol: Protocol,
    pub autoscale: Option<AutoscaleConfig>,
}

/// Autoscaling of one version's Deployment (Azure ML's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleConfig {
    pub deployment: String,
    pub namespace: String,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub target_utilization: f64,
    pub scale_down_window: Duration,
}

/// One problem in the configuration: where, and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in one pass over the configuration.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<FieldError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem{}):",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    pub fn one(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![FieldError {
            field: field.into(),
            message: message.into(),
        }])
    }
}

/// Read, parse and validate a configuration file. Relative paths in it are taken from its folder.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let bytes = std::fs::read(path).map_err(|e| {
        ConfigErrors::one(
            "--config",
            format!(
                "cannot read {}: {e}; pass an existing TOML file",
                path.display()
            ),
        )
    })?;
    from_file_bytes(&bytes, path)
}

/// The contents of the configuration file at `path`, already read (a reload reads it once):
/// parsed and validated, relative paths taken from its folder.
pub fn from_file_bytes(bytes: &[u8], path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ConfigErrors::one(
            "--config",
            format!(
                "cannot read {}: {e}; pass a UTF-8 TOML file",
                path.display()
            ),
        )
    })?;
    from_toml(text, path.parent().unwrap_or(Path::new(".")))
}

/// Parse and validate configuration text; `base` resolves relative file paths.
pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigErrors> {
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    validate(raw, base)
}

/// Validate `[[services]]` tables on their own (the services ConfigMap). Relative paths (token
/// public keys) are not allowed to leave the process's working directory assumptions: use absolute ones.
pub fn services_from_toml(text: &str, discovery: bool) -> Result<Vec<ServiceConfig>, ConfigErrors> {
    let raw: raw::RawServices = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    validate::services_only(&raw.services, discovery)
}

/// A TOML syntax or schema error, located by line.
fn toml_error(text: &str, e: &toml::de::Error) -> ConfigErrors {
    let field = e
        .span()
        .map(|s| format!("line {}", text[..s.start].matches('\n').count() + 1))
        .unwrap_or_else(|| "file".to_string());
    ConfigErrors::one(field, e.message().trim().to_string())
}

mod millis {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}
