//! The objects an attachment consists of, rendered from its [`Attachment`] alone (pure, so the
//! plain manifests in deploy/ are checked against it and a re-run of attach converges).

use serde_json::{Value, json};

use super::spec::{Attachment, LoadBalancerType, TlsMode};

pub const MANAGER: &str = "scoregate";
pub const APP: &str = "scoregate";
pub const LABEL_COMPUTE: &str = "scoregate.io/compute";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const GATEWAY: &str = "scoregate";
pub const INTERNAL_SERVICE: &str = "scoregate-internal";
pub const CONFIG_MAP: &str = "scoregate-config";
pub const SERVICES_CONFIG_MAP: &str = "scoregate-services";
pub const TLS_SECRET: &str = "scoregate-tls";
pub const DISCOVERY_ROLE: &str = "scoregate-discovery";
pub const AUTOSCALER_ROLE: &str = "scoregate-autoscaler";
/// The marker: one ConfigMap per cluster, in kube-system, naming the attachment.
pub const MARKER_NAMESPACE: &str = "kube-system";
pub const MARKER: &str = "scoregate-attachment";
pub const ADMIN_PORT: u16 = 9100;
/// A terminating gateway pod's pause before SIGTERM (the `preStop` sleep).
pub const PRESTOP_SECONDS: u32 = 5;
pub const TLS_PORT: u16 = 8443;
pub const HTTP_PORT: u16 = 8080;
pub const ANNOTATION_INTERNAL: &str = "service.beta.kubernetes.io/azure-load-balancer-internal";
pub const ANNOTATION_SUBNET: &str =
    "service.beta.kubernetes.io/azure-load-balancer-internal-subnet";
pub const ANNOTATION_DNS_LABEL: &str = "service.beta.kubernetes.io/azure-dns-label-name";
pub const ANNOTATION_CONFIG_HASH: &str = "scoregate.io/config-sha256";
pub const DEFAULT_NAMESPACE: &str = "scoregate";
pub const DEFAULT_IMAGE: &str = concat!("scoregate:", env!("CARGO_PKG_VERSION"));

/// The labels every object of the attachment carries (detach deletes by them).
pub fn labels(a: &Attachment) -> Value {
    json!({
        "app.kubernetes.io/name": APP,
        LABEL_MANAGED_BY: MANAGER,
        LABEL_COMPUTE: a.compute,
    })
}

/// `app.kubernetes.io/managed-by=scoregate,scoregate.io/compute=<name>`.
pub fn selector(compute: &str) -> String {
    format!("{LABEL_MANAGED_BY}={MANAGER},{LABEL_COMPUTE}={compute}")
}

fn meta(a: &Attachment, name: &str, namespaced: bool) -> Value {
    let mut m = json!({ "name": name, "labels": labels(a) });
    if namespaced {
        m["namespace"] = json!(a.namespace);
    }
    m
}

/// The gateway's configuration file for this attachment.
pub fn gateway_config(a: &Attachment) -> String {
    let mut s = format!(
        "# Written by `scoregate attach {c}`; change it with `scoregate update {c}`.\n[listen]\n",
        c = a.compute
    );
    if a.tls != TlsMode::Disabled {
        s += &format!("tls = \"0.0.0.0:{TLS_PORT}\"\n");
    }
    s += &format!("http = \"0.0.0.0:{HTTP_PORT}\"\nadmin = \"0.0.0.0:{ADMIN_PORT}\"\n");
    match &a.tls {
        TlsMode::Custom { cname } => {
            s += &format!(
                "\n[tls.kubernetes_secret]\nname = \"{TLS_SECRET}\"\nnamespace = \"{}\"\ncname = \"{cname}\"\n",
                a.namespace
            );
        }
        TlsMode::Auto { directory, .. } => {
            let host = a.tls.host().unwrap_or_default();
            s += &format!(
                "\n[tls.acme]\ndirectory = \"{directory}\"\nnames = [\"{host}\"]\nchallenge = \"tls-alpn-01\"\nstate_dir = \"/var/lib/scoregate/acme\"\n"
            );
        }
        TlsMode::Disabled => {}
    }
    s += &format!(
        "\n[kubernetes]\ndiscovery = true\nconfig_namespace = \"{ns}\"\nservices_configmap = \"{SERVICES_CONFIG_MAP}\"\nlease_namespace = \"{ns}\"\n",
        ns = a.namespace
    );
    s
}

/// Every object, in apply order. The TLS Secret is rendered only with its data (`pem`).
pub fn objects(a: &Attachment, pem: Option<&(Vec<u8>, Vec<u8>)>) -> Vec<Value> {
    let mut out = vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(a, GATEWAY, true)}),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": meta(a, DISCOVERY_ROLE, false),
            "rules": [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                       "verbs": ["get", "list", "watch"]}],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": meta(a, AUTOSCALER_ROLE, false),
            "rules": [
                {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "patch"]},
                {"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": ["list"]},
            ],
        }),
        cluster_binding(a, DISCOVERY_ROLE),
        cluster_binding(a, AUTOSCALER_ROLE),
        role(a),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": meta(a, GATEWAY, true),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": GATEWAY},
            "subjects": [{"kind": "ServiceAccount", "name": GATEWAY, "namespace": a.namespace}],
        }),
        json!({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(a, CONFIG_MAP, true),
            "data": {"scoregate.toml": gateway_config(a)},
        }),
        // Its `services.toml` belongs to the operator: attach owns only the labels.
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(a, SERVICES_CONFIG_MAP, true)}),
    ];
    if let (TlsMode::Custom { .. }, Some((cert, key))) = (&a.tls, pem) {
        use base64::Engine as _;
        let encode = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        out.push(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": meta(a, TLS_SECRET, true),
            "type": "Opaque",
            "data": {"cert.pem": encode(cert), "key.pem": encode(key)},
        }));
    }
    out.push(deployment(a));
    out.push(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta(a, GATEWAY, true),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": pod_selector(a)}},
    }));
    out.push(load_balancer(a));
    out.push(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": meta(a, INTERNAL_SERVICE, true),
        "spec": {
            "type": "ClusterIP",
            "selector": pod_selector(a),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }));
    out
}

/// The gateway Pods of `compute`, as a label selector string.
pub fn pod_label_selector(compute: &str) -> String {
    format!("app.kubernetes.io/name={APP},{LABEL_COMPUTE}={compute}")
}

fn pod_selector(a: &Attachment) -> Value {
    json!({"app.kubernetes.io/name": APP, LABEL_COMPUTE: a.compute})
}

fn cluster_binding(a: &Attachment, role: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": meta(a, role, false),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": GATEWAY, "namespace": a.namespace}],
    })
}

/// Least privilege in the gateway's namespace: its TLS Secret and services ConfigMap by name
/// (list/watch by resourceNames work because the gateway watches with a fieldSelector), and
/// the autoscaler's Lease.
fn role(a: &Attachment) -> Value {
    let mut rules = vec![json!({
        "apiGroups": [""], "resources": ["configmaps"], "resourceNames": [SERVICES_CONFIG_MAP],
        "verbs": ["get", "list", "watch"],
    })];
    if matches!(a.tls, TlsMode::Custom { .. }) {
        rules.push(json!({
            "apiGroups": [""], "resources": ["secrets"], "resourceNames": [TLS_SECRET],
            "verbs": ["get", "list", "watch"],
        }));
    }
    rules.push(json!({
        "apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
        "verbs": ["get", "create", "update"],
    }));
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": meta(a, GATEWAY, true), "rules": rules,
    })
}

fn deployment(a: &Attachment) -> Value {
    let config = gateway_config(a);
    let hash = sha256_hex(config.as_bytes());
    let mut ports = vec![];
    if a.tls != TlsMode::Disabled {
        ports.push(json!({"name": "https", "containerPort": TLS_PORT, "protocol": "TCP"}));
    }
    ports.push(json!({"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}));
    ports.push(json!({"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}));
    let mut mounts =
        vec![json!({"name": "config", "mountPath": "/etc/scoregate", "readOnly": true})];
    let mut volumes = vec![json!({"name": "config", "configMap": {"name": CONFIG_MAP}})];
    if matches!(a.tls, TlsMode::Auto { .. }) {
        mounts.push(json!({"name": "state", "mountPath": "/var/lib/scoregate"}));
        volumes.push(json!({"name": "state", "emptyDir": {}}));
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(a, GATEWAY, true),
        "spec": {
            "replicas": a.purpose.replicas(),
            "selector": {"matchLabels": pod_selector(a)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": labels(a),
                    "annotations": {
                        ANNOTATION_CONFIG_HASH: hash,
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": ADMIN_PORT.to_string(),
                    },
                },
                "spec": {
                    "serviceAccountName": GATEWAY,
                    "terminationGracePeriodSeconds": 40,
                    "securityContext": {
                        "runAsNonRoot": true, "runAsUser": 10001, "runAsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": pod_selector(a)},
                        },
                    }]}},
                    "containers": [{
                        "name": "scoregate",
                        "image": a.image,
                        "args": ["serve", "--config", "/etc/scoregate/scoregate.toml"],
                        "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        ],
                        "ports": ports,
                        // Terminating, the pod leaves the Service's endpoints while it still
                        // serves: kube-proxy and the load balancer stop sending new connections
                        // before SIGTERM closes the listeners (then in-flight requests drain).
                        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 2},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "admin"}, "periodSeconds": 10},
                        "resources": {
                            "requests": {"cpu": "500m", "memory": "128Mi"},
                            "limits": {"memory": "512Mi"},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    })
}

fn load_balancer(a: &Attachment) -> Value {
    let mut annotations = serde_json::Map::new();
    if a.load_balancer == LoadBalancerType::InternalLoadBalancer {
        annotations.insert(ANNOTATION_INTERNAL.into(), json!("true"));
        annotations.insert(
            ANNOTATION_SUBNET.into(),
            json!(
                a.subnet
                    .clone()
                    .unwrap_or_else(|| super::spec::DEFAULT_SUBNET.into())
            ),
        );
    }
    if let TlsMode::Auto { label, suffix, .. } = &a.tls {
        annotations.insert(
            ANNOTATION_DNS_LABEL.into(),
            json!(format!("{label}{suffix}")),
        );
    }
    let mut metadata = meta(a, GATEWAY, true);
    if !annotations.is_empty() {
        metadata["annotations"] = Value::Object(annotations);
    }
    let port = if a.tls == TlsMode::Disabled {
        json!({"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"})
    } else {
        json!({"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"})
    };
    json!({
        "apiVersion": "v1", "kind": "Service", "metadata": metadata,
        "spec": {"type": "LoadBalancer", "selector": pod_selector(a), "ports": [port]},
    })
}

/// The namespace (attach creates it only when missing; the plain manifests include it).
pub fn namespace(a: &Attachment) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(a, &a.namespace, false)})
}

/// The marker ConfigMap recording `a` in the cluster.
pub fn marker(a: &Attachment) -> Value {
    let mut m = meta(a, MARKER, false);
    m["namespace"] = json!(MARKER_NAMESPACE);
    json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": m,
        "data": {"attachment.json": serde_json::to_string_pretty(a).unwrap_or_default()},
    })
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::spec::{Purpose, TlsMode};

    pub(crate) fn sample(tls: TlsMode) -> Attachment {
        Attachment {
            compute: "aks1".into(),
            workspace: "default".into(),
            namespace: "scoregate".into(),
            purpose: Purpose::FastProd,
            load_balancer: LoadBalancerType::InternalLoadBalancer,
            subnet: None,
            tls,
            image: DEFAULT_IMAGE.into(),
            attached_at: 0,
            created_namespace: true,
        }
    }

    #[test]
    fn the_gateway_config_is_valid_in_every_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        for tls in [
            TlsMode::Custom {
                cname: "scoring.example.com".into(),
            },
            TlsMode::Auto {
                label: "mymodel".into(),
                suffix: "abc123".into(),
                region: "westeurope".into(),
                directory: "https://acme.example/dir".into(),
            },
            TlsMode::Disabled,
        ] {
            let text = gateway_config(&sample(tls.clone()))
                .replace("/var/lib/scoregate/acme", &dir.path().display().to_string());
            if let Err(e) = crate::config::from_toml(&text, dir.path()) {
                panic!("{tls:?}: {e}\n{text}");
            }
        }
    }

    #[test]
    fn internal_load_balancer_and_dns_label_annotations() {
        let a = sample(TlsMode::Auto {
            label: "mymodel".into(),
            suffix: "abc123".into(),
            region: "westeurope".into(),
            directory: "https://acme.example/dir".into(),
        });
        let objs = objects(&a, None);
        let lb = objs
            .iter()
            .find(|o| o["kind"] == "Service" && o["spec"]["type"] == "LoadBalancer")
            .expect("lb");
        let ann = &lb["metadata"]["annotations"];
        assert_eq!(ann[ANNOTATION_INTERNAL], "true");
        assert_eq!(ann[ANNOTATION_SUBNET], "aks-subnet");
        assert_eq!(ann[ANNOTATION_DNS_LABEL], "mymodelabc123");
        assert!(!objs.iter().any(|o| o["kind"] == "Secret"));
        let d = objs.iter().find(|o| o["kind"] == "Deployment").expect("d");
        assert_eq!(d["spec"]["replicas"], 3);
    }
}
