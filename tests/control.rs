//! The control module as a black box (`CARGO_BIN_EXE_scoregate`) against the real API server of
//! the test bed: attach (capacity from Nodes, version, marker, workspace), the objects it
//! applies, a simulated rollout, update in place, the certificate lifecycle, detach.
#![cfg(feature = "peer-tests")]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::Api;
use kube::api::{Patch, PatchParams};
use scoregate::tls::{DevCa, Leaf};
use serde_json::{Value, json};

use common::scoregate as cli;

/// What the Deployment controller and the cloud's load balancer would do: once the gateway
/// Deployment exists, report its replicas ready and give the Service an address.
fn simulate_rollout(
    client: kube::Client,
    ns: &'static str,
    ip: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
        let svcs: Api<Service> = Api::namespaced(client, ns);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(d)) = deps.get_opt("scoregate").await {
                let n = d.spec.and_then(|s| s.replicas).unwrap_or(1);
                let st = json!({"status": {"replicas": n, "readyReplicas": n, "updatedReplicas": n, "availableReplicas": n}});
                let lb = json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}});
                let ok = deps
                    .patch_status("scoregate", &PatchParams::default(), &Patch::Merge(&st))
                    .await
                    .is_ok()
                    && svcs
                        .patch_status("scoregate", &PatchParams::default(), &Patch::Merge(&lb))
                        .await
                        .is_ok();
                if ok {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

struct Certs {
    dir: tempfile::TempDir,
    ca: DevCa,
}

impl Certs {
    fn new() -> Certs {
        Certs {
            dir: tempfile::tempdir().expect("tempdir"),
            ca: DevCa::new("control test CA").expect("ca"),
        }
    }

    /// A fresh leaf for `name`: (cert path, key path, leaf).
    fn pair(&self, tag: &str, name: &str) -> (PathBuf, PathBuf, Leaf) {
        let leaf = self.ca.issue(&[name.to_string()]).expect("leaf");
        let cert = self.dir.path().join(format!("{tag}-cert.pem"));
        let key = self.dir.path().join(format!("{tag}-key.pem"));
        std::fs::write(&cert, format!("{}{}", leaf.cert_pem, self.ca.ca_pem)).expect("cert");
        std::fs::write(&key, &leaf.key_pem).expect("key");
        (cert, key, leaf)
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_update_rotate_detach_on_a_real_api_server() {
    let tb = Testbed::start();
    let client = tb.client().await;
    let kc = tb.kubeconfig.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path().join("workspace.json");
    let common = ["--kubeconfig", s(&kc), "--workspace", s(&ws)];
    let run = |args: &[&str]| cli(&[args, &common[..]].concat());
    let certs = Certs::new();
    let (cert, key, leaf) = certs.pair("v1", "scoring.example.com");
    let custom = [
        "--ssl-cname",
        "scoring.example.com",
        "--ssl-cert-pem-file",
        s(&cert),
        "--ssl-key-pem-file",
        s(&key),
    ];

    // One 4-vCPU node (kubelet reports 3860m): FastProd is refused, DevTest fits.
    tb.node("node-1", "3860m");
    let o = run(&[
        &["attach", "aks-prod", "--purpose", "FastProd"][..],
        &custom[..],
    ]
    .concat());
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr.contains(
            "FastProd needs at least 12 vCPUs; the cluster has 4 on 1 schedulable node(s)"
        ) && o.stderr.contains("--purpose DevTest"),
        "{}",
        o.stderr
    );

    // A version outside the supported range is refused with the list (library call: the test
    // bed's server is 1.33, so narrow the range).
    let env = scoregate::control::Env {
        workspace: ws.clone(),
        kubeconfig: Some(kc.clone()),
        context: None,
        progress: false,
        supported_versions: vec![(1, 31), (1, 32)],
    };
    let e = scoregate::control::commands::attach(
        scoregate::control::commands::AttachOptions {
            compute: "aks-old".into(),
            settings: scoregate::control::commands::Settings {
                purpose: Some("DevTest".into()),
                load_balancer: Some("InternalLoadBalancer".into()),
                tls: scoregate::control::TlsOptions {
                    no_ssl: true,
                    ..Default::default()
                },
                ..Default::default()
            },
            namespace: None,
            allow_public_plaintext: false,
            wait: scoregate::control::Wait {
                enabled: false,
                timeout: Duration::from_secs(1),
                poll: Duration::from_millis(100),
            },
            dry_run: false,
        },
        &env,
    )
    .await
    .expect_err("1.33 is outside 1.31-1.32");
    assert!(e.to_string().contains("Kubernetes 1.33"), "{e}");
    assert!(
        e.to_string().contains("Supported versions: 1.31, 1.32."),
        "{e}"
    );

    // DevTest attach with a custom certificate; the rollout is simulated.
    let rollout = simulate_rollout(client.clone(), "scoregate", "20.50.60.70");
    let o = tokio::task::spawn_blocking({
        let args: Vec<String> = [
            &[
                "attach",
                "aks-dev",
                "--purpose",
                "DevTest",
                "--timeout",
                "60",
                "-o",
                "json",
            ][..],
            &custom[..],
            &common[..],
        ]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .collect();
        move || cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("join");
    rollout.await.expect("rollout");
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let out: Value = serde_json::from_str(&o.stdout).expect("json output");
    assert_eq!(
        out["endpoint"],
        "https://scoring.example.com/api/v1/service/<service-name>/score"
    );
    assert_eq!(out["address"], "20.50.60.70");
    assert_eq!(out["replicas_ready"], "1/1");
    for step in [
        "[1/3] applying",
        "applied Deployment/scoregate/scoregate",
        "replicas ready 1/1, load balancer address: 20.50.60.70",
        "scoring endpoint: https://scoring.example.com/",
    ] {
        assert!(
            o.stderr.contains(step),
            "progress {step:?} missing:\n{}",
            o.stderr
        );
    }

    // The objects, with the right fields.
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "scoregate");
    let d = deps.get("scoregate").await.expect("deployment");
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(1));
    let svcs: Api<Service> = Api::namespaced(client.clone(), "scoregate");
    let lb = svcs.get("scoregate").await.expect("lb");
    assert_eq!(
        lb.spec.as_ref().and_then(|s| s.type_.clone()).as_deref(),
        Some("LoadBalancer")
    );
    assert!(
        lb.metadata.annotations.unwrap_or_default().is_empty(),
        "public: no internal annotations"
    );
    let internal = svcs
        .get("scoregate-internal")
        .await
        .expect("internal service");
    assert_eq!(
        internal.spec.and_then(|s| s.type_).as_deref(),
        Some("ClusterIP")
    );
    let role = tb.kubectl(&["get", "role", "scoregate", "-n", "scoregate", "-o", "json"]);
    let role: Value = serde_json::from_str(&role).expect("role");
    assert!(
        role["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .any(|r| r["resources"][0] == "secrets" && r["resourceNames"][0] == "scoregate-tls")
    );
    tb.kubectl(&["get", "pdb", "scoregate", "-n", "scoregate"]);
    tb.kubectl(&["get", "clusterrolebinding", "scoregate-discovery"]);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "scoregate");
    let secret_cert = |s: Secret| {
        s.data
            .expect("data")
            .get("cert.pem")
            .expect("cert.pem")
            .0
            .clone()
    };
    assert_eq!(
        secret_cert(secrets.get("scoregate-tls").await.expect("secret")),
        std::fs::read(&cert).expect("cert")
    );
    let managers: Vec<String> = d
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.contains(&"scoregate".to_string()),
        "field manager: {managers:?}"
    );
    let marker = Api::<ConfigMap>::namespaced(client.clone(), "kube-system")
        .get("scoregate-attachment")
        .await
        .expect("marker");
    assert!(marker.data.expect("data")["attachment.json"].contains("\"compute\": \"aks-dev\""));

    // Attach again: the name exists; another workspace, same cluster: refused naming the first.
    let o = run(&[
        &["attach", "aks-dev", "--purpose", "DevTest", "--no-wait"][..],
        &custom[..],
    ]
    .concat());
    assert_eq!(o.code, 1);
    assert!(
        o.stderr
            .contains("Compute \"aks-dev\" already exists in workspace \"default\""),
        "{}",
        o.stderr
    );
    let ws2 = dir.path().join("team-b.json");
    let o = cli(&[
        &[
            "attach",
            "aks-other",
            "--purpose",
            "DevTest",
            "--no-wait",
            "--kubeconfig",
            s(&kc),
            "--workspace",
            s(&ws2),
        ][..],
        &custom[..],
    ]
    .concat());
    assert_eq!(o.code, 1);
    assert!(
        o.stderr
            .contains("already attached as compute \"aks-dev\" of workspace \"default\""),
        "{}",
        o.stderr
    );

    // status
    let o = run(&["status", "aks-dev"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    for want in [
        "PURPOSE",
        "DevTest",
        "PublicIp",
        "custom",
        "1/1",
        "20.50.60.70",
    ] {
        assert!(
            o.stdout.contains(want),
            "status lacks {want}:\n{}",
            o.stdout
        );
    }

    // Update in place: public → internal with a subnet, then custom → auto TLS.
    let o = run(&[
        "update",
        "aks-dev",
        "--load-balancer",
        "InternalLoadBalancer",
        "--subnet",
        "models-subnet",
        "--no-wait",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let ann = svcs
        .get("scoregate")
        .await
        .expect("lb")
        .metadata
        .annotations
        .unwrap_or_default();
    assert_eq!(
        ann.get("service.beta.kubernetes.io/azure-load-balancer-internal")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(
        ann.get("service.beta.kubernetes.io/azure-load-balancer-internal-subnet")
            .map(String::as_str),
        Some("models-subnet")
    );
    let hash = |d: Deployment| {
        d.spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .and_then(|a| a.get("scoregate.io/config-sha256").cloned())
    };
    let before = hash(deps.get("scoregate").await.expect("d"));
    let o = run(&[
        "update",
        "aks-dev",
        "--leaf-domain-label",
        "irismodel",
        "--region",
        "westeurope",
        "--acme-directory",
        "https://acme.internal.example/directory",
        "--no-wait",
        // Leaving the custom certificate deletes its Secret: confirmed.
        "--yes",
        "-o",
        "json",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let out: Value = serde_json::from_str(&o.stdout).expect("json");
    let host = out["host"].as_str().expect("host").to_string();
    assert!(
        host.starts_with("irismodel")
            && host.ends_with(".westeurope.cloudapp.azure.com")
            && host.len() == "irismodel".len() + 6 + ".westeurope.cloudapp.azure.com".len(),
        "{host}"
    );
    assert_eq!(out["removed"], json!(["Secret/scoregate/scoregate-tls"]));
    let ann = svcs
        .get("scoregate")
        .await
        .expect("lb")
        .metadata
        .annotations
        .unwrap_or_default();
    assert_eq!(
        ann.get("service.beta.kubernetes.io/azure-dns-label-name")
            .map(String::as_str),
        Some(&host[..host.find('.').expect("dot")])
    );
    assert!(
        ann.contains_key("service.beta.kubernetes.io/azure-load-balancer-internal"),
        "LB type kept"
    );
    assert_ne!(
        hash(deps.get("scoregate").await.expect("d")),
        before,
        "config change rolls the gateways"
    );
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "scoregate")
        .get("scoregate-config")
        .await
        .expect("cm");
    assert!(cm.data.expect("data")["scoregate.toml"].contains(&format!("names = [\"{host}\"]")));
    // Renew keeps the name (the 6 characters are stored) and restarts the gateways.
    let o = run(&["cert", "renew", "aks-dev"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let ann = deps
        .get("scoregate")
        .await
        .expect("d")
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    assert!(
        ann.contains_key("scoregate.io/renew-requested-at"),
        "{ann:?}"
    );
    let o = run(&[
        "update",
        "aks-dev",
        "--leaf-domain-label",
        "irismodel",
        "--region",
        "westeurope",
        "--no-wait",
        "-o",
        "json",
    ]);
    assert_eq!(
        serde_json::from_str::<Value>(&o.stdout).expect("json")["host"],
        json!(host),
        "same label keeps its suffix"
    );
    // Back to a custom certificate.
    let o = run(&[&["update", "aks-dev", "--no-wait"][..], &custom[..]].concat());
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(&["cert", "renew", "aks-dev"]);
    assert_eq!(o.code, 64);
    assert!(o.stderr.contains("Invalid configuration. When renew is set the cluster should have the leaf domain label set for SSL."), "{}", o.stderr);

    // cert set with a bad pair (key of another certificate): refused, Secret untouched.
    let stored = secret_cert(secrets.get("scoregate-tls").await.expect("secret"));
    let (cert2, _, _) = certs.pair("v2", "scoring.example.com");
    let (_, key3, _) = certs.pair("v3", "scoring.example.com");
    let o = run(&[
        "cert",
        "set",
        "aks-dev",
        "--cert-pem-file",
        s(&cert2),
        "--key-pem-file",
        s(&key3),
    ]);
    assert_eq!(o.code, 64, "{}", o.stderr);
    assert!(o.stderr.contains("does not match"), "{}", o.stderr);
    assert_eq!(
        secret_cert(secrets.get("scoregate-tls").await.expect("secret")),
        stored
    );
    let (cert4, key4, leaf4) = certs.pair("v4", "scoring.example.com");
    let o = run(&[
        "cert",
        "set",
        "aks-dev",
        "--cert-pem-file",
        s(&cert4),
        "--key-pem-file",
        s(&key4),
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_ne!(
        pem_fingerprint(&leaf4.cert_pem),
        pem_fingerprint(&leaf.cert_pem)
    );

    // cert export round-trips byte for byte, 0600.
    let exp = dir.path().join("export");
    let o = run(&["cert", "export", "aks-dev", "--dir", s(&exp)]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        std::fs::read(exp.join("cert.pem")).expect("c"),
        std::fs::read(&cert4).expect("c")
    );
    assert_eq!(
        std::fs::read(exp.join("key.pem")).expect("k"),
        std::fs::read(&key4).expect("k")
    );
    use std::os::unix::fs::PermissionsExt;
    for f in ["cert.pem", "key.pem"] {
        assert_eq!(
            std::fs::metadata(exp.join(f))
                .expect("m")
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }

    // Disabling TLS behind the internal load balancer is allowed.
    let o = run(&[
        "cert",
        "disable",
        "aks-dev",
        "--no-wait",
        "--yes",
        "-o",
        "json",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        serde_json::from_str::<Value>(&o.stdout).expect("json")["endpoint"],
        "http://20.50.60.70/api/v1/service/<service-name>/score"
    );

    // Detach: a scoring Deployment in the same namespace and the Nodes stay; twice is fine.
    let model: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "iris-blue", "namespace": "scoregate"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "iris"}},
                 "template": {"metadata": {"labels": {"app": "iris"}}, "spec": {"containers": [{"name": "m", "image": "m:1"}]}}}
    }))
    .expect("deployment");
    deps.create(&Default::default(), &model)
        .await
        .expect("model");
    let o = run(&["detach", "aks-dev", "-o", "json"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let out: Value = serde_json::from_str(&o.stdout).expect("json");
    let removed: Vec<&str> = out["removed"]
        .as_array()
        .expect("removed")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "Deployment/scoregate/scoregate",
        "Service/scoregate/scoregate",
        "ClusterRole/scoregate-discovery",
        "ConfigMap/kube-system/scoregate-attachment",
        "ServiceAccount/scoregate/scoregate",
    ] {
        assert!(removed.contains(&want), "{want} not removed: {removed:?}");
    }
    assert!(
        !removed
            .iter()
            .any(|r| r.contains("iris") || r.starts_with("Namespace/")),
        "{removed:?}"
    );
    assert!(deps.get_opt("scoregate").await.expect("get").is_none());
    assert!(
        deps.get_opt("iris-blue").await.expect("get").is_some(),
        "scoring workload stays"
    );
    tb.kubectl(&["get", "node", "node-1"]);
    assert!(
        o.stderr.contains("kept Namespace/scoregate"),
        "{}",
        o.stderr
    );
    let o = run(&["detach", "aks-dev"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("nothing left to remove"), "{}", o.stderr);

    // Two more 4-vCPU nodes: FastProd fits, with three gateway replicas, internal LB.
    tb.node("node-2", "3860m");
    tb.node("node-3", "3860m");
    let o = run(&[
        &[
            "attach",
            "aks-prod",
            "--no-wait",
            "--load-balancer",
            "InternalLoadBalancer",
        ][..],
        &custom[..],
    ]
    .concat());
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("12 vCPUs on 3 schedulable node(s): enough for FastProd"),
        "{}",
        o.stderr
    );
    assert_eq!(
        deps.get("scoregate")
            .await
            .expect("d")
            .spec
            .and_then(|s| s.replicas),
        Some(3)
    );
    let ann = svcs
        .get("scoregate")
        .await
        .expect("lb")
        .metadata
        .annotations
        .unwrap_or_default();
    assert_eq!(
        ann.get("service.beta.kubernetes.io/azure-load-balancer-internal-subnet")
            .map(String::as_str),
        Some("aks-subnet")
    );
}
