//! `[[services]]`: names, limits, auth (keys, key Secrets, JWT) and versions.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::Errors;
use crate::config::raw::{RawService, RawToken, RawVersion};
use crate::config::{
    AuthConfig, ConfigErrors, Protocol, ServiceConfig, ServiceSettings, TokenConfig, VersionConfig,
};

/// Shortest accepted auth key: Azure's generated keys have 32 characters.
const MIN_KEY_LEN: usize = 16;
/// Shortest HS256 secret (RFC 7518 §3.2: at least the hash size).
const MIN_HS256_SECRET: usize = 32;

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

pub(in crate::config) fn services_only(
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

pub(super) fn services(
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
        stream_idle_timeout: Duration::from_millis(errs.range(
            &format!("{field}.stream_idle_timeout_ms"),
            s.stream_idle_timeout_ms,
            1,
            3_600_000,
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
        outlier_consecutive_failures: errs.range(
            &format!("{field}.outlier_consecutive_failures"),
            s.outlier_consecutive_failures,
            0,
            1_000,
            u64::from(d.outlier_consecutive_failures),
        ) as u32,
        outlier_base_ejection: Duration::from_millis(errs.range(
            &format!("{field}.outlier_base_ejection_ms"),
            s.outlier_base_ejection_ms,
            100,
            3_600_000,
            d.outlier_base_ejection.as_millis() as u64,
        )),
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
            let pem = match crate::tls::read_pem_file(&base.join(path)) {
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
