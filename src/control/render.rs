//! The objects an attachment consists of, rendered from its [`Attachment`] alone (pure, so the
//! plain manifests in deploy/ are checked against it and a re-run of attach converges), as
//! k8s-openapi's typed objects: a misspelt field does not compile.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, Lifecycle, LifecycleHandler,
    Namespace, ObjectFieldSelector, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, SleepAction, Volume,
    VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
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
/// The key the gateways prove hand-overs with (32 random bytes, created once per attachment).
pub const PEER_SECRET: &str = "scoregate-peer";
/// Where the gateway reads it (a Secret volume).
pub const PEER_KEY_PATH: &str = "/etc/scoregate/peer/key";
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
/// Requests handed over between the gateway replicas (pod network only, no Service).
pub const PEER_PORT: u16 = 8444;
pub const ANNOTATION_INTERNAL: &str = "service.beta.kubernetes.io/azure-load-balancer-internal";
pub const ANNOTATION_SUBNET: &str =
    "service.beta.kubernetes.io/azure-load-balancer-internal-subnet";
pub const ANNOTATION_DNS_LABEL: &str = "service.beta.kubernetes.io/azure-dns-label-name";
pub const ANNOTATION_CONFIG_HASH: &str = "scoregate.io/config-sha256";
pub const DEFAULT_NAMESPACE: &str = "scoregate";
pub const DEFAULT_IMAGE: &str = concat!("scoregate:", env!("CARGO_PKG_VERSION"));

/// The labels every object of the attachment carries (detach deletes by them).
pub fn labels(a: &Attachment) -> Value {
    json!(label_map(a))
}

fn label_map(a: &Attachment) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), APP.into()),
        (LABEL_MANAGED_BY.into(), MANAGER.into()),
        (LABEL_COMPUTE.into(), a.compute.clone()),
    ])
}

/// `app.kubernetes.io/managed-by=scoregate,scoregate.io/compute=<name>`.
pub fn selector(compute: &str) -> String {
    format!("{LABEL_MANAGED_BY}={MANAGER},{LABEL_COMPUTE}={compute}")
}

fn meta(a: &Attachment, name: &str, namespaced: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespaced.then(|| a.namespace.clone()),
        labels: Some(label_map(a)),
        ..ObjectMeta::default()
    }
}

/// A typed object as the JSON the API server and the YAML output take (`apiVersion` and
/// `kind` included by k8s-openapi's serializer).
fn value<K: serde::Serialize>(object: K) -> Value {
    serde_json::to_value(object).unwrap_or(Value::Null)
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
    s += &format!(
        "http = \"0.0.0.0:{HTTP_PORT}\"\nadmin = \"0.0.0.0:{ADMIN_PORT}\"\npeer = \"0.0.0.0:{PEER_PORT}\"\n"
    );
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
    // The replicas share every model replica's limit (members: Leases; address: $POD_IP).
    s += &format!("\n[coordination]\ngroup = \"{GATEWAY}\"\npeer_key_file = \"{PEER_KEY_PATH}\"\n");
    s
}

/// The peer key Secret (created once, never re-rendered: a new key mid-rollout would split the
/// replicas).
pub fn peer_secret(a: &Attachment, key: &[u8]) -> Value {
    value(Secret {
        metadata: meta(a, PEER_SECRET, true),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([("key".into(), ByteString(key.to_vec()))])),
        ..Secret::default()
    })
}

/// Every object, in apply order. The TLS Secret is rendered only with its data (`pem`).
pub fn objects(a: &Attachment, pem: Option<&(Vec<u8>, Vec<u8>)>) -> Vec<Value> {
    let mut out = vec![
        value(ServiceAccount {
            metadata: meta(a, GATEWAY, true),
            ..ServiceAccount::default()
        }),
        value(ClusterRole {
            metadata: meta(a, DISCOVERY_ROLE, false),
            rules: Some(vec![rule(
                "discovery.k8s.io",
                "endpointslices",
                None,
                &["get", "list", "watch"],
            )]),
            ..ClusterRole::default()
        }),
        value(ClusterRole {
            metadata: meta(a, AUTOSCALER_ROLE, false),
            rules: Some(vec![
                rule("apps", "deployments/scale", None, &["get", "patch"]),
                rule("autoscaling", "horizontalpodautoscalers", None, &["list"]),
            ]),
            ..ClusterRole::default()
        }),
        value(ClusterRoleBinding {
            metadata: meta(a, DISCOVERY_ROLE, false),
            role_ref: role_ref("ClusterRole", DISCOVERY_ROLE),
            subjects: Some(vec![gateway_subject(a)]),
        }),
        value(ClusterRoleBinding {
            metadata: meta(a, AUTOSCALER_ROLE, false),
            role_ref: role_ref("ClusterRole", AUTOSCALER_ROLE),
            subjects: Some(vec![gateway_subject(a)]),
        }),
        role(a),
        value(RoleBinding {
            metadata: meta(a, GATEWAY, true),
            role_ref: role_ref("Role", GATEWAY),
            subjects: Some(vec![gateway_subject(a)]),
        }),
        value(ConfigMap {
            metadata: meta(a, CONFIG_MAP, true),
            data: Some(BTreeMap::from([(
                "scoregate.toml".into(),
                gateway_config(a),
            )])),
            ..ConfigMap::default()
        }),
        // Its `services.toml` belongs to the operator: attach owns only the labels.
        value(ConfigMap {
            metadata: meta(a, SERVICES_CONFIG_MAP, true),
            ..ConfigMap::default()
        }),
    ];
    if let (TlsMode::Custom { .. }, Some((cert, key))) = (&a.tls, pem) {
        out.push(value(Secret {
            metadata: meta(a, TLS_SECRET, true),
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([
                ("cert.pem".into(), ByteString(cert.clone())),
                ("key.pem".into(), ByteString(key.clone())),
            ])),
            ..Secret::default()
        }));
    }
    out.push(deployment(a));
    out.push(value(PodDisruptionBudget {
        metadata: meta(a, GATEWAY, true),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(pod_selector(a)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }));
    out.push(load_balancer(a));
    out.push(value(Service {
        metadata: meta(a, INTERNAL_SERVICE, true),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(pod_labels(a)),
            ports: Some(vec![service_port("http", 80)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }));
    out
}

/// The gateway Pods of `compute`, as a label selector string.
pub fn pod_label_selector(compute: &str) -> String {
    format!("app.kubernetes.io/name={APP},{LABEL_COMPUTE}={compute}")
}

fn pod_labels(a: &Attachment) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), APP.into()),
        (LABEL_COMPUTE.into(), a.compute.clone()),
    ])
}

fn pod_selector(a: &Attachment) -> LabelSelector {
    LabelSelector {
        match_labels: Some(pod_labels(a)),
        ..LabelSelector::default()
    }
}

fn rule(group: &str, resource: &str, name: Option<&str>, verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(vec![resource.into()]),
        resource_names: name.map(|n| vec![n.into()]),
        verbs: verbs.iter().map(|v| (*v).into()).collect(),
        ..PolicyRule::default()
    }
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: kind.into(),
        name: name.into(),
    }
}

fn gateway_subject(a: &Attachment) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: GATEWAY.into(),
        namespace: Some(a.namespace.clone()),
        ..Subject::default()
    }
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// Least privilege in the gateway's namespace: its TLS Secret and services ConfigMap by name
/// (list/watch by resourceNames work because the gateway watches with a fieldSelector), and
/// the autoscaler's Lease.
fn role(a: &Attachment) -> Value {
    let mut rules = vec![rule(
        "",
        "configmaps",
        Some(SERVICES_CONFIG_MAP),
        &["get", "list", "watch"],
    )];
    if matches!(a.tls, TlsMode::Custom { .. }) {
        rules.push(rule(
            "",
            "secrets",
            Some(TLS_SECRET),
            &["get", "list", "watch"],
        ));
    }
    // The autoscaler's Lease, and the member Leases of the replicas (watched, applied,
    // deleted on leaving).
    rules.push(rule(
        "coordination.k8s.io",
        "leases",
        None,
        &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
    ));
    value(Role {
        metadata: meta(a, GATEWAY, true),
        rules: Some(rules),
    })
}

fn container_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    }
}

fn deployment(a: &Attachment) -> Value {
    let config = gateway_config(a);
    let hash = sha256_hex(config.as_bytes());
    let mut ports = vec![];
    if a.tls != TlsMode::Disabled {
        ports.push(container_port("https", TLS_PORT));
    }
    ports.push(container_port("http", HTTP_PORT));
    ports.push(container_port("admin", ADMIN_PORT));
    ports.push(container_port("peer", PEER_PORT));
    let mut mounts = vec![
        VolumeMount {
            name: "config".into(),
            mount_path: "/etc/scoregate".into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "peer".into(),
            mount_path: "/etc/scoregate/peer".into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ];
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: CONFIG_MAP.into(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "peer".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(PEER_SECRET.into()),
                // Readable by the gateway's group only (fsGroup below).
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    if matches!(a.tls, TlsMode::Auto { .. }) {
        mounts.push(VolumeMount {
            name: "state".into(),
            mount_path: "/var/lib/scoregate".into(),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "state".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
    }
    let container = Container {
        name: "scoregate".into(),
        image: Some(a.image.clone()),
        args: Some(
            ["serve", "--config", "/etc/scoregate/scoregate.toml"]
                .map(String::from)
                .to_vec(),
        ),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            // The address the other replicas hand requests to.
            field_env("POD_IP", "status.podIP"),
        ]),
        ports: Some(ports),
        // Terminating, the pod leaves the Service's endpoints while it still serves:
        // kube-proxy and the load balancer stop sending new connections before SIGTERM closes
        // the listeners (then in-flight requests drain).
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: i64::from(PRESTOP_SECONDS),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        readiness_probe: Some(http_probe("/readyz", 2)),
        liveness_probe: Some(http_probe("/healthz", 10)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("500m".into())),
                ("memory".into(), Quantity("128Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".into(),
                Quantity("512Mi".into()),
            )])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let pod = PodSpec {
        service_account_name: Some(GATEWAY.into()),
        termination_grace_period_seconds: Some(40),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(10001),
            run_as_group: Some(10001),
            fs_group: Some(10001),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        affinity: Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    WeightedPodAffinityTerm {
                        weight: 100,
                        pod_affinity_term: PodAffinityTerm {
                            topology_key: "kubernetes.io/hostname".into(),
                            label_selector: Some(pod_selector(a)),
                            ..PodAffinityTerm::default()
                        },
                    },
                ]),
                ..PodAntiAffinity::default()
            }),
            ..Affinity::default()
        }),
        containers: vec![container],
        volumes: Some(volumes),
        ..PodSpec::default()
    };
    value(Deployment {
        metadata: meta(a, GATEWAY, true),
        spec: Some(DeploymentSpec {
            replicas: Some(a.purpose.replicas()),
            selector: pod_selector(a),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(label_map(a)),
                    annotations: Some(BTreeMap::from([
                        (ANNOTATION_CONFIG_HASH.into(), hash),
                        ("prometheus.io/scrape".into(), "true".into()),
                        ("prometheus.io/port".into(), ADMIN_PORT.to_string()),
                    ])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

fn load_balancer(a: &Attachment) -> Value {
    let mut annotations = BTreeMap::new();
    if a.load_balancer == LoadBalancerType::InternalLoadBalancer {
        annotations.insert(ANNOTATION_INTERNAL.to_string(), "true".to_string());
        annotations.insert(
            ANNOTATION_SUBNET.to_string(),
            a.subnet
                .clone()
                .unwrap_or_else(|| super::spec::DEFAULT_SUBNET.into()),
        );
    }
    if let TlsMode::Auto { label, suffix, .. } = &a.tls {
        annotations.insert(ANNOTATION_DNS_LABEL.to_string(), format!("{label}{suffix}"));
    }
    let mut metadata = meta(a, GATEWAY, true);
    metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    let port = if a.tls == TlsMode::Disabled {
        service_port("http", 80)
    } else {
        service_port("https", 443)
    };
    value(Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            selector: Some(pod_labels(a)),
            ports: Some(vec![port]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The namespace (attach creates it only when missing; the plain manifests include it).
pub fn namespace(a: &Attachment) -> Value {
    value(Namespace {
        metadata: meta(a, &a.namespace, false),
        ..Namespace::default()
    })
}

/// The marker ConfigMap recording `a` in the cluster.
pub fn marker(a: &Attachment) -> Value {
    let mut metadata = meta(a, MARKER, false);
    metadata.namespace = Some(MARKER_NAMESPACE.into());
    value(ConfigMap {
        metadata,
        data: Some(BTreeMap::from([(
            "attachment.json".into(),
            serde_json::to_string_pretty(a).unwrap_or_default(),
        )])),
        ..ConfigMap::default()
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
            let key = dir.path().join("peer.key");
            std::fs::write(&key, [7u8; 32]).expect("key");
            let text = gateway_config(&sample(tls.clone()))
                .replace("/var/lib/scoregate/acme", &dir.path().display().to_string())
                .replace(PEER_KEY_PATH, &key.display().to_string())
                // In the pod the address is $POD_IP.
                .replace(
                    "[coordination]\n",
                    "[coordination]\nadvertise_ip = \"10.0.0.5\"\n",
                );
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
