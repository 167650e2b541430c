//! The kube side of the control module: connect, version and capacity checks, the marker,
//! server-side apply with one field manager, pruning by ownership label, waiting for the rollout
//! and the load balancer address.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::{Value, json};

use super::render::{self, MANAGER, MARKER, MARKER_NAMESPACE};
use super::{Attachment, ControlError, Env, Wait};

/// A connected cluster.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    /// The API server URL (recorded in the workspace).
    pub server: String,
}

/// Connect with a kubeconfig (else `$KUBECONFIG` / `~/.kube/config`, else in-cluster) and context.
/// Where a connection's configuration comes from, recorded with an attachment so later commands
/// reach the same cluster without flags (never credentials: a path and a context name): the
/// kubeconfig file (the flag, else the first of `$KUBECONFIG`, else `~/.kube/config` when it
/// exists; none in a pod) and the context (the flag, else that file's current-context now).
pub fn config_source(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> (Option<std::path::PathBuf>, Option<String>) {
    let path = kubeconfig
        .map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os("KUBECONFIG")
                .and_then(|v| std::env::split_paths(&v).find(|p| !p.as_os_str().is_empty()))
        })
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| std::path::PathBuf::from(h).join(".kube").join("config"))
                .filter(|p| p.exists())
        })
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    let context = context.map(str::to_string).or_else(|| {
        path.as_deref()
            .and_then(|p| Kubeconfig::read_from(p).ok())
            .and_then(|kc| kc.current_context)
    });
    (path, context)
}

pub async fn connect(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<Cluster, ControlError> {
    use crate::discovery::DiscoveryError;
    let opts = KubeConfigOptions {
        context: context.map(str::to_string),
        ..KubeConfigOptions::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let err = |source| {
                ControlError::Connect(DiscoveryError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })
            };
            let kc = Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(err)?
        }
        None if context.is_some() => {
            kube::Config::from_kubeconfig(&opts)
                .await
                .map_err(|source| {
                    ControlError::Connect(DiscoveryError::Kubeconfig {
                        path: "$KUBECONFIG".into(),
                        source,
                    })
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| ControlError::Connect(DiscoveryError::Infer(e)))?,
    };
    let server = config.cluster_url.to_string();
    let client =
        Client::try_from(config).map_err(|e| ControlError::Connect(DiscoveryError::Client(e)))?;
    Ok(Cluster { client, server })
}

/// `(major, minor)` of the API server.
pub async fn server_version(c: &Cluster) -> Result<(u32, u32, String), ControlError> {
    let info = c
        .client
        .apiserver_version()
        .await
        .map_err(ControlError::kube("reading the server version (/version)"))?;
    let num = |s: &str| s.trim_end_matches('+').parse::<u32>().ok();
    match (num(&info.major), num(&info.minor)) {
        (Some(a), Some(b)) => Ok((a, b, info.git_version)),
        _ => Err(ControlError::Refused(format!(
            "the API server reports an unreadable version {:?}.{:?}",
            info.major, info.minor
        ))),
    }
}

/// Refuse versions outside `supported`, listing them.
pub fn check_version(
    version: (u32, u32),
    git: &str,
    supported: &[(u32, u32)],
) -> Result<(), ControlError> {
    if supported.contains(&version) {
        return Ok(());
    }
    let list: Vec<String> = supported.iter().map(|(a, b)| format!("{a}.{b}")).collect();
    Err(ControlError::Refused(format!(
        "Kubernetes {}.{} ({git}) is not supported. Supported versions: {}. Upgrade the cluster \
         (az aks upgrade) or attach another one.",
        version.0,
        version.1,
        list.join(", ")
    )))
}

/// Parse a CPU quantity ("4", "3860m", "0.5") into millicores.
pub fn cpu_millis(q: &str) -> Option<u64> {
    if let Some(m) = q.strip_suffix('m') {
        return m.parse().ok();
    }
    q.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| (v * 1000.0).round() as u64)
}

/// vCPUs of the schedulable Nodes: each node's `status.allocatable.cpu` rounded up to whole
/// vCPUs (the kubelet reserves a fraction of every core: a 4-vCPU AKS node reports ~3860m).
pub async fn vcpus(c: &Cluster) -> Result<(u64, usize), ControlError> {
    let nodes = Api::<Node>::all(c.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(ControlError::kube(
            "listing Nodes for the cluster's capacity",
        ))?;
    let mut total = 0;
    let mut count = 0;
    for n in nodes.items {
        if n.spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
        {
            continue;
        }
        let millis = n
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get("cpu"))
            .and_then(|q| cpu_millis(&q.0))
            .unwrap_or(0);
        total += millis.div_ceil(1000);
        count += 1;
    }
    Ok((total, count))
}

/// The cluster's attachment marker, if any.
pub async fn read_marker(c: &Cluster) -> Result<Option<Attachment>, ControlError> {
    let api = Api::<ConfigMap>::namespaced(c.client.clone(), MARKER_NAMESPACE);
    let Some(cm) = api
        .get_opt(MARKER)
        .await
        .map_err(ControlError::kube(format!(
            "reading the marker {MARKER_NAMESPACE}/{MARKER}"
        )))?
    else {
        return Ok(None);
    };
    let body = cm
        .data
        .as_ref()
        .and_then(|d| d.get("attachment.json"))
        .cloned()
        .unwrap_or_default();
    serde_json::from_str(&body).map(Some).map_err(|e| {
        ControlError::Refused(format!(
            "the marker ConfigMap {MARKER_NAMESPACE}/{MARKER} is unreadable ({e}); inspect it \
             with kubectl and delete it if no attachment uses this cluster"
        ))
    })
}

pub async fn write_marker(c: &Cluster, a: &Attachment) -> Result<(), ControlError> {
    let obj = render::marker(a);
    apply_one(c, &obj).await
}

fn resource(obj: &Value) -> (ApiResource, bool) {
    let api_version = obj["apiVersion"].as_str().unwrap_or("v1");
    let kind = obj["kind"].as_str().unwrap_or("");
    resource_of(api_version, kind)
}

fn resource_of(api_version: &str, kind: &str) -> (ApiResource, bool) {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = format!("{}s", kind.to_ascii_lowercase());
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let namespaced = !matches!(kind, "ClusterRole" | "ClusterRoleBinding" | "Namespace");
    (ApiResource::from_gvk_with_plural(&gvk, &plural), namespaced)
}

fn api(c: &Cluster, ar: &ApiResource, namespaced: bool, ns: Option<&str>) -> Api<DynamicObject> {
    match (namespaced, ns) {
        (true, Some(ns)) => Api::namespaced_with(c.client.clone(), ns, ar),
        _ => Api::all_with(c.client.clone(), ar),
    }
}

/// `Kind/name` or `Kind/namespace/name`.
pub fn describe(obj: &Value) -> String {
    let kind = obj["kind"].as_str().unwrap_or("?");
    let name = obj["metadata"]["name"].as_str().unwrap_or("?");
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

/// Create the peer key Secret when it does not exist yet (32 random bytes); an existing key is
/// kept, so replicas old and new keep proving hand-overs to each other during a rollout.
pub async fn ensure_peer_secret(
    c: &Cluster,
    a: &Attachment,
    env: &Env,
) -> Result<(), ControlError> {
    use k8s_openapi::api::core::v1::Secret;
    let api: Api<Secret> = Api::namespaced(c.client.clone(), &a.namespace);
    let name = render::PEER_SECRET;
    // Created, never replaced: an existing key (409) stays.
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key)
        .map_err(|_| ControlError::Refused("no random bytes for the peer key".to_string()))?;
    let secret: Secret = serde_json::from_value(render::peer_secret(a, &key))
        .map_err(|e| ControlError::Refused(format!("peer key Secret: {e}")))?;
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            env.step(format_args!(
                "created Secret {}/{name} (the key the gateway replicas prove hand-overs with)",
                a.namespace
            ));
            Ok(())
        }
        // Created by a concurrent attach: theirs stays.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(ControlError::kube(format!(
            "creating Secret {}/{name}",
            a.namespace
        ))(e)),
    }
}

async fn apply_one(c: &Cluster, obj: &Value) -> Result<(), ControlError> {
    let (ar, namespaced) = resource(obj);
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let api = api(c, &ar, namespaced, obj["metadata"]["namespace"].as_str());
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map(|_| ())
    .map_err(ControlError::kube(format!("applying {}", describe(obj))))
}

/// Server-side apply every object in order; on failure, which ones were applied.
pub async fn apply_all(
    c: &Cluster,
    objects: &[Value],
    env: &Env,
) -> Result<Vec<String>, ControlError> {
    let mut applied = Vec::new();
    for obj in objects {
        match apply_one(c, obj).await {
            Ok(()) => {
                env.step(format_args!("  applied {}", describe(obj)));
                applied.push(describe(obj));
            }
            Err(ControlError::Kube { error, .. }) => {
                return Err(ControlError::Partial {
                    applied,
                    failed: describe(obj),
                    error,
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(applied)
}

/// Create the namespace when missing; whether it was created. A namespace still being deleted
/// (a detach a moment ago) takes no new objects: wait for it to go, saying so, within the
/// wait's timeout, then create it afresh.
pub async fn ensure_namespace(
    c: &Cluster,
    a: &Attachment,
    wait: Wait,
    env: &Env,
) -> Result<bool, ControlError> {
    let api = Api::<Namespace>::all(c.client.clone());
    let action = || ControlError::kube(format!("creating Namespace/{}", a.namespace));
    let start = Instant::now();
    let mut said = None::<Instant>;
    while let Some(ns) = api.get_opt(&a.namespace).await.map_err(action())? {
        let terminating = ns.metadata.deletion_timestamp.is_some()
            || ns.status.and_then(|s| s.phase).as_deref() == Some("Terminating");
        if !terminating {
            return Ok(false);
        }
        let waited = start.elapsed();
        if waited >= wait.timeout {
            return Err(ControlError::Timeout(format!(
                "Namespace {ns} is still being deleted after {}s (a detach or a delete left it \
                 terminating); wait until `kubectl get namespace {ns}` says NotFound and run the \
                 same attach again, or attach into another namespace with --namespace NAME",
                waited.as_secs(),
                ns = a.namespace
            )));
        }
        if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            env.step(format_args!(
                "  Namespace {} is being deleted (a detach a moment ago?); waiting for it to go \
                 before creating it again ({}s of at most {}s)",
                a.namespace,
                waited.as_secs(),
                wait.timeout.as_secs()
            ));
            said = Some(Instant::now());
        }
        tokio::time::sleep(wait.poll).await;
    }
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": a.namespace, "labels": render::labels(a)}
    }))
    .map_err(|e| ControlError::Refused(format!("namespace object: {e}")))?;
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(action()(e)),
    }
}

/// Every kind attach installs (namespaced ones are listed in `namespace`).
const KINDS: &[(&str, &str)] = &[
    ("v1", "Service"),
    ("policy/v1", "PodDisruptionBudget"),
    ("apps/v1", "Deployment"),
    ("v1", "Secret"),
    ("v1", "ConfigMap"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("v1", "ServiceAccount"),
];

/// Delete the objects labelled for `compute` in `namespace` (and cluster-scoped ones) that
/// are not in `keep` (as [`describe`] names them); the marker is never touched here.
pub async fn prune(
    c: &Cluster,
    compute: &str,
    namespace: &str,
    keep: &BTreeSet<String>,
    env: &Env,
) -> Result<Vec<String>, ControlError> {
    let lp = ListParams::default().labels(&render::selector(compute));
    let mut removed = Vec::new();
    for (api_version, kind) in KINDS {
        let (ar, namespaced) = resource_of(api_version, kind);
        let api = api(c, &ar, namespaced, Some(namespace));
        let list = api
            .list_metadata(&lp)
            .await
            .map_err(ControlError::kube(format!(
                "listing {kind}s of compute {compute}"
            )))?;
        for item in list.items {
            let name = item.metadata.name.clone().unwrap_or_default();
            if namespaced
                && item.metadata.namespace.as_deref() == Some(MARKER_NAMESPACE)
                && name == MARKER
            {
                continue;
            }
            let d = describe(
                &json!({"kind": kind, "metadata": {"name": name, "namespace": if namespaced { Some(namespace) } else { None }}}),
            );
            if keep.contains(&d) {
                continue;
            }
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => continue,
                Err(e) => return Err(ControlError::kube(format!("deleting {d}"))(e)),
            }
            env.step(format_args!("  removed {d}"));
            removed.push(d);
        }
    }
    Ok(removed)
}

pub async fn delete_marker(c: &Cluster) -> Result<bool, ControlError> {
    let api = Api::<ConfigMap>::namespaced(c.client.clone(), MARKER_NAMESPACE);
    match api.delete(MARKER, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(ControlError::kube("deleting the marker")(e)),
    }
}

/// Delete the namespace when attach created it and nothing else lives in it; whether deleted.
pub async fn delete_namespace_if_empty(
    c: &Cluster,
    ns: &str,
    compute: &str,
) -> Result<bool, ControlError> {
    let lp = ListParams::default();
    let action = || ControlError::kube(format!("looking into Namespace/{ns}"));
    let others = [
        ("apps/v1", "Deployment"),
        ("v1", "Pod"),
        ("v1", "Service"),
        ("v1", "Secret"),
        ("v1", "ConfigMap"),
        ("apps/v1", "StatefulSet"),
    ];
    for (v, k) in others {
        let (ar, _) = resource_of(v, k);
        let items = api(c, &ar, true, Some(ns))
            .list_metadata(&lp)
            .await
            .map_err(action())?
            .items;
        // Not someone else's: the cluster's CA bundle ConfigMap (every namespace gets one),
        // what is already being deleted, and what carries this attachment's label (its gateway
        // Pods, which the garbage collector removes with their Deployment after we return).
        let foreign = items.iter().any(|i| {
            let m = &i.metadata;
            m.name.as_deref() != Some("kube-root-ca.crt")
                && m.deletion_timestamp.is_none()
                && m.labels
                    .as_ref()
                    .and_then(|l| l.get(render::LABEL_COMPUTE))
                    .map(String::as_str)
                    != Some(compute)
        });
        if foreign {
            return Ok(false);
        }
    }
    match Api::<Namespace>::all(c.client.clone())
        .delete(ns, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(ControlError::kube(format!("deleting Namespace/{ns}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        assert_eq!(cpu_millis("4"), Some(4000));
        assert_eq!(cpu_millis("3860m"), Some(3860));
        assert_eq!(cpu_millis("0.5"), Some(500));
        assert_eq!(cpu_millis("x"), None);
    }

    #[test]
    fn versions_refused_with_the_list() {
        assert!(check_version((1, 33), "v1.33.1", super::super::SUPPORTED_VERSIONS).is_ok());
        let e = check_version((1, 29), "v1.29.0", &[(1, 30), (1, 31)]).expect_err("old");
        assert!(
            e.to_string().contains("Supported versions: 1.30, 1.31"),
            "{e}"
        );
    }
}
