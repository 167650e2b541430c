//! One pass from [`RawConfig`] to [`Config`]: every rule checked, every failure collected.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::raw::{RawConfig, RawLimits};
use super::{Config, ConfigErrors, FieldError, Limits, Listen};

mod services;
pub(crate) mod tls;

use services::services;
pub(super) use services::services_only;
pub use services::validate_service_name;
use tls::tls_settings;

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
    let runtime = crate::config::RuntimeSettings {
        busy_poll: Duration::from_micros(errs.range(
            "runtime.busy_poll_us",
            raw.runtime.busy_poll_us,
            0,
            10_000,
            0,
        )),
    };
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
    if services
        .iter()
        .any(|s| matches!(s.auth, super::AuthConfig::SecretRef { .. }))
        && raw.kubernetes.is_none()
    {
        errs.push(
            "kubernetes",
            "services with auth_secret read their keys through the Kubernetes API; add a [kubernetes] table",
        );
    }
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
    let coordination = coordination(&raw, &listen, kubernetes.as_ref(), base, &mut errs);
    if errs.0.is_empty() {
        Ok(Config {
            listen,
            tls,
            limits,
            runtime,
            access_log: raw.access_log.enabled.unwrap_or(false),
            services,
            kubernetes,
            coordination,
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
        peer: addr("listen.peer", &raw.listen.peer, errs),
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
        ("listen.peer", l.peer),
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

fn coordination(
    raw: &RawConfig,
    listen: &Listen,
    kube: Option<&crate::discovery::KubeSettings>,
    base: &Path,
    errs: &mut Errors,
) -> Option<super::CoordinationSettings> {
    let Some(c) = &raw.coordination else {
        if listen.peer.is_some() {
            errs.push(
                "listen.peer",
                "the peer listener serves requests handed over by other gateways; add a [coordination] table or remove listen.peer",
            );
        }
        return None;
    };
    let Some(kube) = kube else {
        errs.push(
            "coordination",
            "gateways find each other through Leases in the Kubernetes API; add a [kubernetes] table",
        );
        return None;
    };
    let Some(peer) = listen.peer else {
        errs.push(
            "listen.peer",
            "[coordination] hands requests between gateways on a port of their own; set listen.peer, e.g. \"0.0.0.0:8444\"",
        );
        return None;
    };
    let group = c.group.clone().unwrap_or_else(|| "scoregate".into());
    if group.is_empty() || group.len() > 40 || !tls::valid_dns_label(&group) {
        errs.push(
            "coordination.group",
            format!("{group:?} must be a DNS label of at most 40 characters, e.g. \"scoregate\""),
        );
    }
    let lease_duration = Duration::from_millis(errs.range(
        "coordination.lease_duration_ms",
        c.lease_duration_ms,
        1_000,
        60_000,
        6_000,
    ));
    let peer_key = match &c.peer_key_file {
        None => {
            errs.push(
                "coordination.peer_key_file",
                "required: a file of at least 32 random bytes shared by the gateways (attach keeps it in the Secret scoregate-peer), e.g. `head -c 32 /dev/urandom > peer.key`",
            );
            Vec::new()
        }
        Some(f) => match std::fs::read(base.join(f)) {
            Ok(k) if k.len() >= 32 => k,
            Ok(k) => {
                errs.push(
                    "coordination.peer_key_file",
                    format!(
                        "{f:?} holds {} bytes; the key needs at least 32 random bytes",
                        k.len()
                    ),
                );
                Vec::new()
            }
            Err(e) => {
                errs.push(
                    "coordination.peer_key_file",
                    format!("cannot read {f:?}: {e}"),
                );
                Vec::new()
            }
        },
    };
    let advertise_ip = match &c.advertise_ip {
        Some(ip) => ip.parse().map_err(|_| {
            errs.push(
                "coordination.advertise_ip",
                format!("{ip:?} is not an IP address; write e.g. \"10.0.0.5\""),
            )
        }),
        None => match std::env::var("POD_IP").ok().and_then(|ip| ip.parse().ok()) {
            Some(ip) => Ok(ip),
            None if !peer.ip().is_unspecified() => Ok(peer.ip()),
            None => {
                errs.push(
                    "coordination.advertise_ip",
                    "listen.peer listens on every address: set coordination.advertise_ip (or $POD_IP) to the address the other gateways reach this one on",
                );
                Err(())
            }
        },
    };
    Some(super::CoordinationSettings {
        group,
        namespace: c
            .namespace
            .clone()
            .unwrap_or_else(|| kube.lease.namespace.clone()),
        identity: kube.lease.identity.clone(),
        lease_duration,
        peer_key,
        advertise_ip: advertise_ip.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
    })
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
        idle_timeout: Duration::from_millis(errs.range(
            "limits.idle_timeout_ms",
            raw.idle_timeout_ms,
            100,
            3_600_000,
            ms(d.idle_timeout),
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
        config_namespace: k.config_namespace.clone(),
        autoscale_refresh: Duration::from_millis(errs.range(
            "kubernetes.autoscale_refresh_ms",
            k.autoscale_refresh_ms,
            100,
            60_000,
            1_000,
        )),
    }
}
