//! One pass from [`RawConfig`] to [`Config`]: every rule checked, every failure collected.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::raw::{RawAcme, RawConfig, RawLimits, RawService, RawTls, RawToken, RawVersion};
use super::{
    AuthConfig, Config, ConfigErrors, FieldError, Limits, Listen, Protocol, ServiceConfig,
    ServiceSettings, TlsSettings, TokenConfig, VersionConfig,
};
use crate::tls;

/// Shortest accepted auth key: Azure's generated keys have 32 characters.
const MIN_KEY_LEN: usize = 16;
/// Shortest HS256 secret (RFC 7518 §3.2: at least the hash size).
const MIN_HS256_SECRET: usize = 32;

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// `value` (or `default`) when inside `min..=max`, else an error naming the range.
    fn range(&mut self, field: &str, value: Option<u64>, min: u64, max: u64, default: u64) -> u64 {
        match value {
            None => default,
            Some(v) if (min..=max).contains(&v) => v,
            Some(v) => {
                self.push(
                    field,
                    format!("{v} is out of range; allowed {min}..={max} (default {default})"),
                );
                default
            }
        }
    }
}

pub fn validate(raw: RawConfig, base: &Path) -> Result<Config, ConfigErrors> {
    let mut errs = Errors(Vec::new());
    let listen = listen(&raw, &mut errs);
    let limits = limits(&raw.limits, &mut errs);
    let tls = tls_settings(&raw.tls, listen.tls.is_some(), base, &mut errs);
    if let Some((a, _)) = &tls.acme {
        use crate::acme::ChallengeKind;
        match a.challenge {
            ChallengeKind::Http01 if listen.http.is_none() => errs.push(
                "tls.acme.challenge",
                "http-01 is answered on the plain listener; set listen.http (port 80 in production) or use \"tls-alpn-01\"",
            ),
            ChallengeKind::TlsAlpn01 if listen.tls.is_none() => {
                errs.push("tls.acme.challenge", "tls-alpn-01 is answered on the TLS listener; set listen.tls")
            }
            _ => {}
        }
    }
    let discovery = raw
        .kubernetes
        .as_ref()
        .is_some_and(|k| k.discovery.unwrap_or(false));
    let services = services(&raw.services, base, discovery, &mut errs);
    let autoscaled = services
        .iter()
        .any(|s| s.versions.iter().any(|v| v.autoscale.is_some()));
    if autoscaled && raw.kubernetes.is_none() {
        errs.push(
            "kubernetes",
            "versions with [services.versions.autoscale] scale Deployments through the Kubernetes API; add a [kubernetes] table",
        );
    }
    let needs_kube = raw.tls.kubernetes_secret.is_some();
    let kubernetes = match (&raw.kubernetes, needs_kube) {
        (Some(k), _) => Some(kube_settings(k, base, &mut errs)),
        (None, true) => Some(kube_settings(&Default::default(), base, &mut errs)),
        (None, false) => None,
    };
    if errs.0.is_empty() {
        Ok(Config {
            listen,
            tls,
            limits,
            services,
            kubernetes,
        })
    } else {
        Err(ConfigErrors(errs.0))
    }
}

fn addr(field: &str, value: &Option<String>, errs: &mut Errors) -> Option<SocketAddr> {
    let v = value.as_ref()?;
    match v.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errs.push(
                field,
                format!(
                    "{v:?} is not an IP:port address; write e.g. \"0.0.0.0:8443\" or \"[::]:8443\""
                ),
            );
            None
        }
    }
}

fn listen(raw: &RawConfig, errs: &mut Errors) -> Listen {
    let l = Listen {
        tls: addr("listen.tls", &raw.listen.tls, errs),
        http: addr("listen.http", &raw.listen.http, errs),
        admin: addr("listen.admin", &raw.listen.admin, errs),
    };
    if raw.listen.tls.is_none() && raw.listen.http.is_none() {
        errs.push(
            "listen",
            "no serving listener; set listen.tls (e.g. \"0.0.0.0:8443\") and/or listen.http",
        );
    }
    let mut seen = HashSet::new();
    for (name, a) in [
        ("listen.tls", l.tls),
        ("listen.http", l.http),
        ("listen.admin", l.admin),
    ] {
        if let Some(a) = a
            && a.port() != 0
            && !seen.insert(a)
        {
            errs.push(
                name,
                format!("{a} is already used by another listener; use distinct ports"),
            );
        }
    }
    l
}

fn limits(raw: &RawLimits, errs: &mut Errors) -> Limits {
    let d = Limits::default();
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Limits {
        max_body_bytes: errs.range(
            "limits.max_body_bytes",
            raw.max_body_bytes,
            1,
            super::DEFAULT_MAX_BODY_BYTES,
            d.max_body_bytes,
        ),
        max_header_bytes: usize::try_from(errs.range(
            "limits.max_header_bytes",
            raw.max_header_bytes,
            8_192,
            1_048_576,
            d.max_header_bytes as u64,
        ))
        .unwrap_or(d.max_header_bytes),
        header_read_timeout: Duration::from_millis(errs.range(
            "limits.header_read_timeout_ms",
            raw.header_read_timeout_ms,
            100,
            600_000,
            ms(d.header_read_timeout),
        )),
        handshake_timeout: Duration::from_millis(errs.range(
            "limits.handshake_timeout_ms",
            raw.handshake_timeout_ms,
            100,
            600_000,
            ms(d.handshake_timeout),
        )),
        shutdown_grace: Duration::from_millis(errs.range(
            "limits.shutdown_grace_ms",
            raw.shutdown_grace_ms,
            0,
            600_000,
            ms(d.shutdown_grace),
        )),
        max_connections: usize::try_from(errs.range(
            "limits.max_connections",
            raw.max_connections,
            1,
            1_000_000,
            d.max_connections as u64,
        ))
        .unwrap_or(d.max_connections),
    }
}

fn tls_settings(raw: &RawTls, tls_listener: bool, base: &Path, errs: &mut Errors) -> TlsSettings {
    let allow_tls12 = match raw.min_version.as_deref() {
        None | Some("1.2") => true,
        Some("1.3") => false,
        Some(other) => {
            errs.push(
                "tls.min_version",
                format!("{other:?} is not supported; allowed \"1.2\" (default) or \"1.3\""),
            );
            true
        }
    };
    let reload_poll = Duration::from_millis(errs.range(
        "tls.reload_poll_ms",
        raw.reload_poll_ms,
        10,
        3_600_000,
        1_000,
    ));
    let reload_debounce = Duration::from_millis(errs.range(
        "tls.reload_debounce_ms",
        raw.reload_debounce_ms,
        0,
        60_000,
        500,
    ));
    let now = std::time::SystemTime::now();
    let mut slots = Vec::new();
    for (i, c) in raw.certificates.iter().enumerate() {
        let field = format!("tls.certificates[{i}]");
        let roots = match &c.ca {
            None => None,
            Some(ca) => match std::fs::read(base.join(ca))
                .map_err(|e| e.to_string())
                .and_then(|pem| tls::roots_from_pem(&pem).map_err(|e| e.to_string()))
            {
                Ok(r) => Some(std::sync::Arc::new(r)),
                Err(e) => {
                    errs.push(format!("{field}.ca"), format!("{ca}: {e}"));
                    continue;
                }
            },
        };
        let policy = tls::Policy {
            cname: c.cname.clone(),
            roots,
        };
        let (cert, key) = (base.join(&c.cert), base.join(&c.key));
        let loaded = tls::load_pem_files(&cert, &key)
            .and_then(|l| tls::validate(&l, &policy, now).map(|()| l));
        match loaded {
            Ok(initial) => slots.push(tls::SlotConfig {
                name: c
                    .name
                    .clone()
                    .or_else(|| c.cname.clone())
                    .or_else(|| initial.names.first().cloned())
                    .unwrap_or_else(|| format!("certificate-{i}")),
                source: tls::CertSource::Files { cert, key },
                policy,
                initial,
            }),
            Err(e) => errs.push(field, format!("{e}")),
        }
    }
    if let Some(names) = &raw.self_signed {
        if names.is_empty() {
            errs.push(
                "tls.self_signed",
                "needs at least one name, e.g. [\"localhost\", \"127.0.0.1\"]",
            );
        } else {
            match tls::SelfSigned::generate(names).and_then(|ss| ss.certified_key()) {
                Ok(initial) => slots.push(tls::SlotConfig {
                    name: "self-signed".into(),
                    source: tls::CertSource::SelfSigned,
                    policy: tls::Policy::default(),
                    initial,
                }),
                Err(e) => errs.push("tls.self_signed", format!("{e}")),
            }
        }
    }
    if let Some(sec) = &raw.kubernetes_secret {
        let f = "tls.kubernetes_secret";
        let roots = sec.ca.as_ref().and_then(|ca| {
            match std::fs::read(base.join(ca))
                .map_err(|e| e.to_string())
                .and_then(|pem| tls::roots_from_pem(&pem).map_err(|e| e.to_string()))
            {
                Ok(r) => Some(std::sync::Arc::new(r)),
                Err(e) => {
                    errs.push(format!("{f}.ca"), format!("{ca}: {e}"));
                    None
                }
            }
        });
        let namespace = sec.namespace.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "default".into())
        });
        let placeholder_name = sec.cname.clone().unwrap_or_else(|| "localhost".into());
        match tls::SelfSigned::generate(&[placeholder_name]).and_then(|ss| ss.certified_key()) {
            Ok(initial) => slots.push(tls::SlotConfig {
                name: sec.cname.clone().unwrap_or_else(|| sec.name.clone()),
                source: tls::CertSource::Secret {
                    namespace,
                    name: sec.name.clone(),
                },
                policy: tls::Policy {
                    cname: sec.cname.clone(),
                    roots,
                },
                initial,
            }),
            Err(e) => errs.push(f, format!("{e}")),
        }
    }
    let acme = raw.acme.as_ref().and_then(|a| {
        let settings = acme_settings(a, base, errs)?;
        let initial = settings
            .stored()
            .filter(|c| tls::validate(c, &tls::Policy::default(), now).is_ok())
            .or_else(|| {
                // Until the first order completes: a placeholder for the names.
                tls::SelfSigned::generate(&settings.names)
                    .and_then(|ss| ss.certified_key())
                    .ok()
            })?;
        slots.push(tls::SlotConfig {
            name: settings.names[0].clone(),
            source: tls::CertSource::Acme,
            policy: tls::Policy {
                cname: Some(settings.names[0].clone()),
                roots: None,
            },
            initial,
        });
        Some((settings, slots.len() - 1))
    });
    let mut seen = HashSet::new();
    for s in &slots {
        if !seen.insert(s.name.clone()) {
            errs.push(
                "tls.certificates",
                format!(
                    "two certificates are named {:?}; set distinct `name`s",
                    s.name
                ),
            );
        }
    }
    if slots.is_empty()
        && tls_listener
        && errs
            .0
            .iter()
            .all(|e| !e.field.starts_with("tls.certificates["))
    {
        errs.push(
            "tls.certificates",
            "listen.tls is set but no certificate is configured; add [[tls.certificates]] with cert and key PEM files, or tls.self_signed = [\"localhost\"] for development",
        );
    }
    TlsSettings {
        slots,
        allow_tls12,
        reload_poll,
        reload_debounce,
        acme,
    }
}

fn kube_settings(
    k: &super::raw::RawKubernetes,
    base: &Path,
    errs: &mut Errors,
) -> crate::discovery::KubeSettings {
    let identity = k
        .identity
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("scoregate-{}", std::process::id()));
    crate::discovery::KubeSettings {
        kubeconfig: k.kubeconfig.as_ref().map(|p| base.join(p)),
        context: k.context.clone(),
        discovery: k.discovery.unwrap_or(false),
        namespace: k.namespace.clone(),
        lease: crate::autoscale::lease::LeaseSettings {
            namespace: k
                .lease_namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: k
                .lease_name
                .clone()
                .unwrap_or_else(|| "scoregate-autoscaler".into()),
            identity,
            duration: Duration::from_millis(errs.range(
                "kubernetes.lease_duration_ms",
                k.lease_duration_ms,
                1_000,
                600_000,
                15_000,
            )),
        },
        services_configmap: k.services_configmap.clone(),
        autoscale_refresh: Duration::from_millis(errs.range(
            "kubernetes.autoscale_refresh_ms",
            k.autoscale_refresh_ms,
            100,
            60_000,
            1_000,
        )),
    }
}

/// Azure's DNS label rule for `leaf_domain_label`: lowercase letters, digits and '-', starting
/// with a letter; with the 6 generated characters at most 63 characters.
fn valid_dns_label(label: &str) -> bool {
    (1..=57).contains(&label.len())
        && label.starts_with(|c: char| c.is_ascii_lowercase())
        && label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn acme_settings(a: &RawAcme, base: &Path, errs: &mut Errors) -> Option<crate::acme::AcmeSettings> {
    use crate::acme::{AcmeSettings, ChallengeKind, leaf_domain_name};
    let f = "tls.acme";
    let before = errs.0.len();
    if !a.directory.starts_with("https://") {
        errs.push(
            format!("{f}.directory"),
            format!("{:?} must be an https:// ACME directory URL", a.directory),
        );
    }
    let challenge = match a.challenge.as_deref() {
        None | Some("http-01") => ChallengeKind::Http01,
        Some("tls-alpn-01") => ChallengeKind::TlsAlpn01,
        Some(other) => {
            errs.push(
                format!("{f}.challenge"),
                format!(
                    "{other:?} is not supported; allowed \"http-01\" (default) or \"tls-alpn-01\""
                ),
            );
            ChallengeKind::Http01
        }
    };
    let renew_fraction = a.renew_fraction.unwrap_or(1.0 / 3.0);
    if !(renew_fraction > 0.0 && renew_fraction <= 1.0) {
        errs.push(
            format!("{f}.renew_fraction"),
            format!("{renew_fraction} is out of range; allowed 0 < x <= 1 (default 0.333)"),
        );
    }
    let renew_before = Duration::from_secs(
        86_400
            * errs.range(
                &format!("{f}.renew_before_days"),
                a.renew_before_days,
                0,
                365,
                30,
            ),
    );
    let retry_initial = Duration::from_millis(errs.range(
        &format!("{f}.retry_initial_ms"),
        a.retry_initial_ms,
        10,
        3_600_000,
        5_000,
    ));
    let retry_max = Duration::from_millis(errs.range(
        &format!("{f}.retry_max_ms"),
        a.retry_max_ms,
        10,
        86_400_000,
        3_600_000,
    ));
    let order_timeout = Duration::from_millis(errs.range(
        &format!("{f}.order_timeout_ms"),
        a.order_timeout_ms,
        1_000,
        3_600_000,
        120_000,
    ));
    let state_dir = base.join(&a.state_dir);
    let names = match (&a.names, &a.leaf_domain_label, &a.region) {
        (Some(n), None, None) if !n.is_empty() => n.clone(),
        (None, Some(label), Some(region)) => {
            if !valid_dns_label(label) {
                errs.push(
                    format!("{f}.leaf_domain_label"),
                    format!("{label:?}: 1 to 57 lowercase letters, digits or '-', starting with a letter"),
                );
                return None;
            }
            if !valid_dns_label(region) {
                errs.push(
                    format!("{f}.region"),
                    format!("{region:?} is not an Azure region name, e.g. \"westeurope\""),
                );
                return None;
            }
            match leaf_domain_name(&state_dir, label, region) {
                Ok(n) => vec![n],
                Err(e) => {
                    errs.push(format!("{f}.state_dir"), format!("{e}"));
                    return None;
                }
            }
        }
        (None, Some(_), None) => {
            errs.push(
                format!("{f}.region"),
                "leaf_domain_label needs region (e.g. \"westeurope\")",
            );
            return None;
        }
        _ => {
            errs.push(
                f,
                "set exactly one of names = [...] or leaf_domain_label (+ region)",
            );
            return None;
        }
    };
    (errs.0.len() == before).then(|| AcmeSettings {
        directory: a.directory.clone(),
        names,
        contact: a.contact.clone(),
        state_dir,
        root_ca: a.root_ca.as_ref().map(|r| base.join(r)),
        challenge,
        renew_fraction,
        renew_before,
        retry_initial,
        retry_max,
        order_timeout,
    })
}

/// Azure ML's service name rule: 3 to 32 characters, lowercase letters, digits and `-`,
/// starting with a letter and ending with a letter or digit.
pub fn validate_service_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !(3..=32).contains(&name.len()) {
        Err(format!("{name:?} must have 3 to 32 characters"))
    } else if !ok_chars {
        Err(format!(
            "{name:?} may contain only lowercase letters, digits and '-'"
        ))
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        Err(format!("{name:?} must start with a lowercase letter"))
    } else if name.ends_with('-') {
        Err(format!("{name:?} must end with a letter or digit"))
    } else {
        Ok(())
    }
}

pub(super) fn services_only(
    raw: &[RawService],
    discovery: bool,
) -> Result<Vec<ServiceConfig>, ConfigErrors> {
    let mut errs = Errors(Vec::new());
    let out = services(raw, Path::new("."), discovery, &mut errs);
    if errs.0.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errs.0))
    }
}

fn services(
    raw: &[RawService],
    base: &Path,
    discovery: bool,
    errs: &mut Errors,
) -> Vec<ServiceConfig> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let field = format!("services[{i}]");
        if let Err(m) = validate_service_name(&s.name) {
            errs.push(format!("{field}.name"), m);
        }
        if !names.insert(s.name.as_str()) {
            errs.push(
                format!("{field}.name"),
                format!("{:?} is defined twice; service names are unique", s.name),
            );
        }
        let auth = auth(s, &field, base, errs);
        let settings = settings(s, &field, errs);
        let (versions, default_version) = versions(&s.versions, &field, discovery, errs);
        out.push(ServiceConfig {
            name: s.name.clone(),
            auth,
            settings,
            versions,
            default_version,
        });
    }
    out
}

fn settings(s: &RawService, field: &str, errs: &mut Errors) -> ServiceSettings {
    let d = ServiceSettings::default();
    ServiceSettings {
        scoring_timeout: Duration::from_millis(errs.range(
            &format!("{field}.scoring_timeout_ms"),
            s.scoring_timeout_ms,
            1,
            300_000,
            60_000,
        )),
        replica_max_concurrent_requests: errs.range(
            &format!("{field}.replica_max_concurrent_requests"),
            s.replica_max_concurrent_requests,
            1,
            1_000,
            1,
        ) as u32,
        max_request_wait_time: Duration::from_millis(errs.range(
            &format!("{field}.max_request_wait_time"),
            s.max_request_wait_time,
            0,
            300_000,
            500,
        )),
        max_queued_requests: errs.range(
            &format!("{field}.max_queued_requests"),
            s.max_queued_requests,
            0,
            1_000_000,
            u64::from(d.max_queued_requests),
        ) as u32,
    }
}

fn auth(s: &RawService, field: &str, base: &Path, errs: &mut Errors) -> AuthConfig {
    let key_auth = s
        .auth_enabled
        .unwrap_or(!s.token_auth_enabled.unwrap_or(false));
    let token_auth = s.token_auth_enabled.unwrap_or(false);
    if key_auth && token_auth {
        errs.push(
            format!("{field}.token_auth_enabled"),
            "cannot set both token_auth_enabled and auth_enabled; enable one of them",
        );
        return AuthConfig::None;
    }
    let check_key = |errs: &mut Errors, name: &str, k: &str| {
        if k.len() < MIN_KEY_LEN || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errs.push(
                format!("{field}.{name}"),
                format!("must be at least {MIN_KEY_LEN} printable characters without spaces"),
            );
        }
    };
    if key_auth && let Some(name) = &s.auth_secret {
        if s.primary_key.is_some() || s.secondary_key.is_some() {
            errs.push(
                format!("{field}.auth_secret"),
                "keys come either from auth_secret or from primary_key/secondary_key, not both",
            );
        }
        return AuthConfig::SecretRef { name: name.clone() };
    }
    if s.auth_secret.is_some() {
        errs.push(
            format!("{field}.auth_secret"),
            "is only used with key auth (auth_enabled)",
        );
    }
    if key_auth {
        let Some(primary) = s.primary_key.clone() else {
            errs.push(
                format!("{field}.primary_key"),
                "auth_enabled (the default) needs a primary_key (or auth_secret = \"<Secret name>\"); set one, or set auth_enabled = false",
            );
            return AuthConfig::None;
        };
        check_key(errs, "primary_key", &primary);
        if let Some(sk) = &s.secondary_key {
            check_key(errs, "secondary_key", sk);
        }
        if s.token.is_some() {
            errs.push(
                format!("{field}.token"),
                "is only used with token_auth_enabled = true",
            );
        }
        return AuthConfig::Key {
            primary,
            secondary: s.secondary_key.clone(),
        };
    }
    if s.primary_key.is_some() || s.secondary_key.is_some() {
        errs.push(
            format!("{field}.primary_key"),
            "keys are only used with auth_enabled = true; remove them or enable key auth",
        );
    }
    if token_auth {
        return match &s.token {
            None => {
                errs.push(
                    format!("{field}.token"),
                    "token_auth_enabled needs a [services.token] table with algorithm, secret or public_key_file, audience",
                );
                AuthConfig::None
            }
            Some(t) => token(t, &format!("{field}.token"), base, errs)
                .map(AuthConfig::Token)
                .unwrap_or(AuthConfig::None),
        };
    }
    AuthConfig::None
}

fn token(t: &RawToken, field: &str, base: &Path, errs: &mut Errors) -> Option<TokenConfig> {
    use jsonwebtoken::{Algorithm, DecodingKey};
    if t.audience.is_empty() {
        errs.push(format!("{field}.audience"), "must not be empty");
    }
    let key = match (t.algorithm.as_str(), &t.secret, &t.public_key_file) {
        ("HS256", Some(secret), None) => {
            if secret.len() < MIN_HS256_SECRET {
                errs.push(
                    format!("{field}.secret"),
                    format!("must be at least {MIN_HS256_SECRET} bytes for HS256"),
                );
                return None;
            }
            (
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            )
        }
        (alg @ ("RS256" | "ES256"), None, Some(path)) => {
            let pem = match std::fs::read(base.join(path)) {
                Ok(p) => p,
                Err(e) => {
                    errs.push(
                        format!("{field}.public_key_file"),
                        format!("cannot read {path}: {e}"),
                    );
                    return None;
                }
            };
            let parsed = if alg == "RS256" {
                DecodingKey::from_rsa_pem(&pem).map(|k| (Algorithm::RS256, k))
            } else {
                DecodingKey::from_ec_pem(&pem).map(|k| (Algorithm::ES256, k))
            };
            match parsed {
                Ok(k) => k,
                Err(e) => {
                    errs.push(
                        format!("{field}.public_key_file"),
                        format!("{path} is not a PEM public key for {alg}: {e}"),
                    );
                    return None;
                }
            }
        }
        ("HS256", _, _) => {
            errs.push(
                format!("{field}.secret"),
                "HS256 needs secret (and no public_key_file)",
            );
            return None;
        }
        ("RS256" | "ES256", _, _) => {
            errs.push(
                format!("{field}.public_key_file"),
                "RS256/ES256 need public_key_file (and no secret)",
            );
            return None;
        }
        (other, _, _) => {
            errs.push(
                format!("{field}.algorithm"),
                format!("{other:?} is not supported; allowed \"HS256\", \"RS256\", \"ES256\""),
            );
            return None;
        }
    };
    Some(TokenConfig {
        algorithm: key.0,
        key: key.1,
        audience: t.audience.clone(),
        issuer: t.issuer.clone(),
    })
}

fn versions(
    raw: &[RawVersion],
    field: &str,
    discovery: bool,
    errs: &mut Errors,
) -> (Vec<VersionConfig>, usize) {
    if raw.is_empty() {
        errs.push(
            format!("{field}.versions"),
            "a service needs at least one [[services.versions]] with replicas",
        );
        return (Vec::new(), 0);
    }
    let mut names = HashSet::new();
    let mut out = Vec::new();
    let mut total: u64 = 0;
    let mut defaults = Vec::new();
    for (i, v) in raw.iter().enumerate() {
        let vf = format!("{field}.versions[{i}]");
        if let Err(m) = validate_service_name(&v.name) {
            errs.push(format!("{vf}.name"), m);
        }
        if !names.insert(v.name.as_str()) {
            errs.push(
                format!("{vf}.name"),
                format!("{:?} is defined twice in this service", v.name),
            );
        }
        let pct = errs.range(
            &format!("{vf}.traffic_percentile"),
            v.traffic_percentile,
            0,
            100,
            0,
        );
        total += pct;
        if v.is_default == Some(true) {
            defaults.push(i);
        }
        if v.replicas.is_empty() && !discovery {
            errs.push(
                format!("{vf}.replicas"),
                "needs at least one replica address, e.g. [\"10.0.0.5:5001\"] (or [kubernetes] discovery = true)",
            );
        }
        let mut replicas = Vec::new();
        for (j, r) in v.replicas.iter().enumerate() {
            match r.parse::<SocketAddr>() {
                Ok(a) if a.port() != 0 => replicas.push(a),
                _ => errs.push(
                    format!("{vf}.replicas[{j}]"),
                    format!("{r:?} is not an IP:port address with a non-zero port, e.g. \"10.0.0.5:5001\""),
                ),
            }
        }
        let protocol = match v.protocol.as_deref() {
            None | Some("http1") => Protocol::Http1,
            Some("h2c") => Protocol::H2c,
            Some(other) => {
                errs.push(
                    format!("{vf}.protocol"),
                    format!("{other:?} is not supported; allowed \"http1\" (default) or \"h2c\""),
                );
                Protocol::Http1
            }
        };
        let autoscale = v.autoscale.as_ref().map(|a| {
            let af = format!("{vf}.autoscale");
            let min = errs.range(&format!("{af}.min_replicas"), a.min_replicas, 1, 1000, 1) as u32;
            let max = errs.range(&format!("{af}.max_replicas"), a.max_replicas, 1, 1000, 10) as u32;
            if max < min {
                errs.push(
                    format!("{af}.max_replicas"),
                    format!("{max} is below min_replicas {min}"),
                );
            }
            let target = a.target_utilization.unwrap_or(0.7);
            if !(target > 0.0 && target <= 1.0) {
                errs.push(
                    format!("{af}.target_utilization"),
                    format!("{target} is out of range; allowed 0 < x <= 1 (default 0.7)"),
                );
            }
            if a.deployment.is_empty() {
                errs.push(
                    format!("{af}.deployment"),
                    "names the Deployment of this version's pods",
                );
            }
            crate::config::AutoscaleConfig {
                deployment: a.deployment.clone(),
                namespace: a.namespace.clone().unwrap_or_else(|| "default".into()),
                min_replicas: min,
                max_replicas: max,
                target_utilization: target,
                scale_down_window: Duration::from_millis(errs.range(
                    &format!("{af}.scale_down_window_ms"),
                    a.scale_down_window_ms,
                    0,
                    3_600_000,
                    60_000,
                )),
            }
        });
        out.push(VersionConfig {
            name: v.name.clone(),
            traffic_percentile: u8::try_from(pct).unwrap_or(0),
            replicas,
            protocol,
            autoscale,
        });
    }
    if total > 100 {
        errs.push(
            format!("{field}.versions"),
            format!("traffic_percentile values add up to {total}; allowed at most 100 (the rest goes to the default version)"),
        );
    }
    let default_version = match (defaults.as_slice(), raw.len()) {
        ([d], _) => *d,
        ([], 1) => 0,
        ([], _) => {
            errs.push(
                format!("{field}.versions"),
                "several versions but none has is_default = true; mark exactly one",
            );
            0
        }
        (_, _) => {
            errs.push(
                format!("{field}.versions"),
                "more than one version has is_default = true; mark exactly one",
            );
            0
        }
    };
    (out, default_version)
}
