//! `[tls]`: certificate files, the Kubernetes Secret source and `[tls.acme]`.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use super::Errors;
use crate::config::TlsSettings;
use crate::config::raw::{RawAcme, RawTls};
use crate::tls;

pub(super) fn tls_settings(
    raw: &RawTls,
    tls_listener: bool,
    base: &Path,
    errs: &mut Errors,
) -> TlsSettings {
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
            Some(ca) => match crate::tls::read_pem_file(&base.join(ca))
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
            match crate::tls::read_pem_file(&base.join(ca))
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

/// Azure's DNS label rule for `leaf_domain_label`: lowercase letters, digits and '-', starting
/// with a letter; with the 6 generated characters at most 63 characters.
pub(crate) fn valid_dns_label(label: &str) -> bool {
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
