//! `cert set|export|status|renew|disable`: the TLS Secret's lifecycle without downtime. The
//! gateways watch their Secret, so `set` rotates every replica in place; `status` asks each
//! replica (through the API server's pod proxy) which certificate it serves right now.

use std::path::Path;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use super::cluster::Cluster;
use super::commands::{UpdateOptions, attachment, locate};
use super::render::{self, ADMIN_PORT, TLS_SECRET};
use super::spec::{self, MSG_RENEW_NO_LABEL, OptionError};
use super::{ControlError, Env, TlsMode, TlsOptions, Wait};

/// Validate a new pair against the attachment's cname, then write the Secret.
pub async fn set(compute: &str, cert: &Path, key: &Path, env: &Env) -> Result<Value, ControlError> {
    let (_, _, c) = locate(compute, env).await?;
    let a = attachment(compute, &c).await?;
    let TlsMode::Custom { cname } = &a.tls else {
        return Err(ControlError::Refused(format!(
            "compute {compute} uses TLS mode {:?}; switch to your own certificate with \
             `scoregate update {compute} --ssl-cert-pem-file … --ssl-key-pem-file … --ssl-cname …`",
            a.tls.label()
        )));
    };
    let mut errs = Vec::new();
    let Some((pem, loaded)) = spec::checked_pair(
        cert,
        key,
        cname,
        ("--cert-pem-file", "--key-pem-file"),
        &mut errs,
    ) else {
        return Err(ControlError::Options(errs));
    };
    let secret = render::objects(&a, Some(&pem))
        .into_iter()
        .find(|o| o["kind"] == "Secret")
        .ok_or_else(|| ControlError::Refused("no Secret rendered for a custom TLS mode".into()))?;
    super::cluster::apply_all(&c, &[secret], env).await?;
    env.step(format_args!(
        "Secret {}/{TLS_SECRET} now holds {} (SHA-256 {}); the gateways pick it up without a \
         restart: follow with `scoregate cert status {compute}`",
        a.namespace, loaded.subject, loaded.fingerprint_sha256
    ));
    Ok(summary(&loaded))
}

fn summary(l: &crate::tls::LoadedCert) -> Value {
    json!({
        "subject": l.subject,
        "names": l.names,
        "issuer": l.issuer,
        "not_after": l.not_after,
        "fingerprint_sha256": l.fingerprint_sha256,
    })
}

/// Only a custom certificate is kept in a Secret: say what to do in the other modes.
fn refuse_without_secret(a: &super::Attachment) -> Result<(), ControlError> {
    let compute = &a.compute;
    match &a.tls {
        TlsMode::Custom { .. } => Ok(()),
        TlsMode::Auto { .. } => Err(ControlError::Refused(format!(
            "compute {compute} gets its certificate by ACME ({}): each gateway replica orders and \
             keeps its own, so there is no Secret to export. See what they serve with `scoregate \
             cert status {compute}`, renew with `scoregate cert renew {compute}`, or switch to \
             your own certificate with `scoregate update {compute} --ssl-cert-pem-file CERT \
             --ssl-key-pem-file KEY --ssl-cname NAME`",
            a.tls.host().unwrap_or_default()
        ))),
        TlsMode::Disabled => Err(ControlError::Refused(format!(
            "compute {compute} serves plain HTTP: there is no certificate. Turn TLS on with \
             `scoregate update {compute} --ssl-cert-pem-file CERT --ssl-key-pem-file KEY \
             --ssl-cname NAME` or `--leaf-domain-label LABEL --region REGION`"
        ))),
    }
}

/// The PEM pair in the Secret (`cert.pem`/`key.pem`, or cert-manager's `tls.crt`/`tls.key`).
async fn read_secret(c: &Cluster, ns: &str) -> Result<(Vec<u8>, Vec<u8>), ControlError> {
    let s: Secret = Api::<Secret>::namespaced(c.client.clone(), ns)
        .get_opt(TLS_SECRET)
        .await
        .map_err(ControlError::kube(format!(
            "reading Secret {ns}/{TLS_SECRET}"
        )))?
        .ok_or_else(|| {
            ControlError::Refused(format!(
                "Secret {ns}/{TLS_SECRET} does not exist; set it with `scoregate cert set \
                 COMPUTE --cert-pem-file CERT --key-pem-file KEY`"
            ))
        })?;
    let data = s.data.unwrap_or_default();
    for (c, k) in [("cert.pem", "key.pem"), ("tls.crt", "tls.key")] {
        if let (Some(cert), Some(key)) = (data.get(c), data.get(k)) {
            return Ok((cert.0.clone(), key.0.clone()));
        }
    }
    Err(ControlError::Refused(format!(
        "Secret {ns}/{TLS_SECRET} has neither cert.pem/key.pem nor tls.crt/tls.key"
    )))
}

/// Write the Secret's `cert.pem` and `key.pem`, decoded, mode 0600, into `dir`; files already
/// there are overwritten only with `force`.
pub async fn export(
    compute: &str,
    dir: &Path,
    force: bool,
    env: &Env,
) -> Result<Value, ControlError> {
    let existing: Vec<String> = ["cert.pem", "key.pem"]
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !force && !existing.is_empty() {
        return Err(ControlError::Options(vec![OptionError {
            field: "--dir".into(),
            message: format!(
                "{} already exist{}; pass --force to overwrite, or choose another --dir",
                existing.join(" and "),
                if existing.len() == 1 { "s" } else { "" }
            ),
        }]));
    }
    let (_, _, c) = locate(compute, env).await?;
    let a = attachment(compute, &c).await?;
    refuse_without_secret(&a)?;
    let (cert, key) = read_secret(&c, &a.namespace).await?;
    std::fs::create_dir_all(dir).map_err(|source| ControlError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    for (name, body) in [("cert.pem", &cert), ("key.pem", &key)] {
        let path = dir.join(name);
        crate::fsutil::write_atomic(&path, body, 0o600).map_err(|source| ControlError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path.display().to_string());
    }
    env.step(format_args!("wrote {} (mode 0600)", written.join(" and ")));
    Ok(json!({"compute": compute, "written": written}))
}

/// The stored certificate and, per gateway replica, the fingerprint it serves now.
pub async fn status(compute: &str, env: &Env) -> Result<Value, ControlError> {
    let (_, _, c) = locate(compute, env).await?;
    let a = attachment(compute, &c).await?;
    let stored = match &a.tls {
        TlsMode::Custom { .. } => {
            let (cert, key) = read_secret(&c, &a.namespace).await?;
            Some(
                crate::tls::load_pem_pair(&cert, &key, "Secret cert.pem", "Secret key.pem")
                    .map(|l| summary(&l))
                    .unwrap_or_else(|e| json!({"error": e.to_string()})),
            )
        }
        _ => None,
    };
    let want = stored
        .as_ref()
        .and_then(|s| s["fingerprint_sha256"].as_str())
        .map(str::to_string);
    let replicas = replica_fingerprints(&c, &a.namespace, compute).await?;
    let behind = lagging(&replicas, want.as_deref());
    let complete = !replicas.is_empty() && behind.is_empty();
    let reason = if replicas.is_empty() {
        Some(format!(
            "no gateway Pod found in namespace {} (is the gateway deployed and scheduled? \
             `scoregate status {compute}` shows its replicas)",
            a.namespace
        ))
    } else if behind.is_empty() {
        None
    } else {
        Some(behind.join("; "))
    };
    Ok(json!({
        "compute": compute,
        "tls": a.tls.label(),
        "host": a.tls.host(),
        "secret": stored,
        "replicas": replicas,
        "rotation_complete": complete,
        "reason": reason,
    }))
}

/// The replicas not serving `want` (any certificate when `None`), each with why.
fn lagging(replicas: &[Value], want: Option<&str>) -> Vec<String> {
    let short = |f: &str| f.chars().take(16).collect::<String>();
    replicas
        .iter()
        .filter_map(|r| {
            let pod = r["pod"].as_str().unwrap_or("?");
            if let Some(e) = r["error"].as_str() {
                return Some(format!("Pod {pod}: not answering ({e})"));
            }
            match (want, r["fingerprint_sha256"].as_str()) {
                (Some(w), Some(f)) if w != f => Some(format!(
                    "Pod {pod} serves {}…, the Secret holds {}… (it reloads the Secret within \
                     seconds of a change: run this again)",
                    short(f),
                    short(w)
                )),
                (_, None) => Some(format!("Pod {pod}: serves no certificate")),
                _ => None,
            }
        })
        .collect()
}

/// Ask every gateway Pod's admin port (`/certificates`) through the API server's pod proxy.
async fn replica_fingerprints(
    c: &Cluster,
    ns: &str,
    compute: &str,
) -> Result<Vec<Value>, ControlError> {
    let lp = ListParams::default().labels(&render::pod_label_selector(compute));
    let pods = Api::<Pod>::namespaced(c.client.clone(), ns)
        .list(&lp)
        .await
        .map_err(ControlError::kube("listing the gateway Pods"))?;
    let mut out = Vec::new();
    for p in pods.items {
        let name = p.metadata.name.clone().unwrap_or_default();
        let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
        let mut row = json!({"pod": name, "ip": ip});
        if ip.is_none() {
            row["error"] = json!("no Pod IP yet");
            out.push(row);
            continue;
        }
        // The container port named "admin" (the gateway's admin listener), else the default.
        let port = p
            .spec
            .as_ref()
            .into_iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .find(|cp| cp.name.as_deref() == Some("admin"))
            .map(|cp| cp.container_port)
            .unwrap_or(i32::from(ADMIN_PORT));
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}:{port}/proxy/certificates");
        let answer = match http::Request::get(&path).body(Vec::new()) {
            Ok(req) => c.client.request_text(req).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match answer.and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string())) {
            Ok(v) => {
                let first = &v["certificates"][0];
                row["fingerprint_sha256"] = first["fingerprint_sha256"].clone();
                row["not_after"] = first["not_after"].clone();
                row["source"] = first["source"].clone();
            }
            Err(e) => row["error"] = json!(e),
        }
        out.push(row);
    }
    Ok(out)
}

/// Force an ACME renewal: a rolling restart of the gateways (their ACME state lives in the
/// Pod, so every new replica orders a fresh certificate), one at a time, none unavailable.
pub async fn renew(compute: &str, env: &Env) -> Result<Value, ControlError> {
    let (_, _, c) = locate(compute, env).await?;
    let a = attachment(compute, &c).await?;
    if !matches!(a.tls, TlsMode::Auto { .. }) {
        return Err(ControlError::Options(vec![OptionError {
            field: "renew".into(),
            message: MSG_RENEW_NO_LABEL.into(),
        }]));
    }
    let at = super::now_unix();
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        "scoregate.io/renew-requested-at": at.to_string()
    }}}}});
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(c.client.clone(), &a.namespace)
        .patch(
            render::GATEWAY,
            &PatchParams::apply("scoregate-renew").force(),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": render::GATEWAY, "namespace": a.namespace},
                "spec": patch["spec"],
            })),
        )
        .await
        .map_err(ControlError::kube(
            "requesting the renewal (Deployment annotation)",
        ))?;
    env.step(format_args!(
        "renewal requested for {}: the gateways restart one at a time and each orders a new \
         certificate; follow with `scoregate cert status {compute}`",
        a.tls.host().unwrap_or_default()
    ));
    Ok(json!({"compute": compute, "host": a.tls.host(), "renew_requested_at": at}))
}

/// Turn TLS off (an `update --no-ssl`): refused behind a PublicIp load balancer unless
/// `allow_public_plaintext`.
pub async fn disable(
    compute: &str,
    allow_public_plaintext: bool,
    yes: bool,
    wait: Wait,
    env: &Env,
) -> Result<Value, ControlError> {
    super::commands::update(
        UpdateOptions {
            compute: compute.to_string(),
            settings: super::commands::Settings {
                tls: TlsOptions {
                    no_ssl: true,
                    ..TlsOptions::default()
                },
                ..Default::default()
            },
            allow_public_plaintext,
            yes,
            wait,
        },
        env,
    )
    .await
}
