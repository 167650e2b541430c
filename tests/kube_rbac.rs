//! The gateway's own ServiceAccount with the RBAC rules of deploy/base (what `scoregate attach`
//! installs), applied by kubectl
//! to the real API server: the gateway runs with that identity (discovery + TLS Secret) and
//! everything beyond the rules is refused with a real 403.
#![cfg(feature = "peer-tests")]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use scoregate::tls::DevCa;

fn forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>, what: &str) {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{what}: expected 403, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_can_do_what_the_gateway_needs_and_nothing_more() {
    let tb = Testbed::start();
    tb.kubectl(&["create", "namespace", "scoregate"]);
    tb.kubectl(&["create", "namespace", "models"]);
    tb.kubectl(&[
        "apply",
        "--server-side",
        "-k",
        concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/overlays/public"),
    ]);
    let admin = tb.client().await;

    // The TLS Secret and one other Secret the gateway must not read.
    let ca = DevCa::new("rbac test CA").expect("ca");
    let leaf = ca.issue(&["localhost".to_string()]).expect("leaf");
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "scoregate");
    for (name, data) in [
        (
            "scoregate-tls",
            BTreeMap::from([
                (
                    "cert.pem".to_string(),
                    ByteString(leaf.cert_pem.clone().into_bytes()),
                ),
                (
                    "key.pem".to_string(),
                    ByteString(leaf.key_pem.clone().into_bytes()),
                ),
            ]),
        ),
        (
            "unrelated",
            BTreeMap::from([("password".to_string(), ByteString(b"hunter2".to_vec()))]),
        ),
    ] {
        let s = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        secrets
            .create(&PostParams::default(), &s)
            .await
            .expect("create secret");
    }

    // The gateway's identity: a token for its ServiceAccount (TokenRequest API).
    let token = tb.kubectl(&[
        "create",
        "token",
        "scoregate",
        "-n",
        "scoregate",
        "--duration",
        "1h",
    ]);
    let sa_kubeconfig = tb.kubeconfig_with_token(token.trim());
    let sa = {
        let kc = kube::config::Kubeconfig::read_from(&sa_kubeconfig).expect("kubeconfig");
        kube::Client::try_from(
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .expect("config"),
        )
        .expect("client")
    };

    // Allowed: what the gateway does.
    let slices: Api<EndpointSlice> = Api::all(sa.clone());
    slices
        .list(&ListParams::default().labels("scoregate.io/service"))
        .await
        .expect("list EndpointSlices");
    let sa_secrets: Api<Secret> = Api::namespaced(sa.clone(), "scoregate");
    sa_secrets
        .get("scoregate-tls")
        .await
        .expect("get the TLS Secret");
    sa_secrets
        .list(&ListParams::default().fields("metadata.name=scoregate-tls"))
        .await
        .expect("list the TLS Secret by name (what the watch does)");

    // The autoscaler's part: the scale subresource, HPAs, its Lease.
    let admin_deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(admin.clone(), "models");
    let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "iris-blue"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "iris"}},
                 "template": {"metadata": {"labels": {"app": "iris"}}, "spec": {"containers": [{"name": "m", "image": "m:1"}]}}}
    })).expect("deployment");
    admin_deployments
        .create(&PostParams::default(), &d)
        .await
        .expect("create deployment");
    let sa_deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(sa.clone(), "models");
    sa_deployments
        .get_scale("iris-blue")
        .await
        .expect("get scale");
    sa_deployments
        .patch_scale(
            "iris-blue",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"replicas": 2}})),
        )
        .await
        .expect("patch scale");
    Api::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>::namespaced(
        sa.clone(),
        "models",
    )
    .list(&ListParams::default())
    .await
    .expect("list HPAs");
    forbidden(
        sa_deployments.get("iris-blue").await,
        "read the Deployment itself",
    );
    forbidden(
        sa_deployments
            .delete("iris-blue", &DeleteParams::default())
            .await,
        "delete a Deployment",
    );

    // Refused for real: other Secrets, listing Secrets, writes, other resources.
    forbidden(sa_secrets.get("unrelated").await, "get another Secret");
    forbidden(
        sa_secrets.list(&ListParams::default()).await,
        "list all Secrets",
    );
    forbidden(
        sa_secrets
            .delete("scoregate-tls", &DeleteParams::default())
            .await,
        "delete the TLS Secret",
    );
    let models: Api<EndpointSlice> = Api::namespaced(sa.clone(), "models");
    forbidden(
        models
            .create(
                &PostParams::default(),
                &EndpointSlice {
                    metadata: ObjectMeta {
                        name: Some("x".into()),
                        ..Default::default()
                    },
                    address_type: "IPv4".into(),
                    endpoints: vec![],
                    ports: None,
                },
            )
            .await,
        "create an EndpointSlice",
    );
    forbidden(
        Api::<Node>::all(sa.clone())
            .list(&ListParams::default())
            .await,
        "list Nodes",
    );
    let can_i = std::process::Command::new(kubectl())
        .arg("--kubeconfig")
        .arg(&sa_kubeconfig)
        .args(["auth", "can-i", "list", "secrets", "-n", "scoregate"])
        .output()
        .expect("kubectl");
    assert_eq!(String::from_utf8_lossy(&can_i.stdout).trim(), "no");

    // The gateway itself, running as the ServiceAccount, serves the Secret's certificate and
    // becomes ready.
    let toml = format!(
        r#"
[listen]
tls = "127.0.0.1:0"
admin = "127.0.0.1:0"

[kubernetes]
kubeconfig = {kc:?}
discovery = true
lease_namespace = "scoregate"

[tls.kubernetes_secret]
name = "scoregate-tls"
namespace = "scoregate"

{service}"#,
        kc = sa_kubeconfig.display().to_string(),
        service = iris_service("127.0.0.1:9", ""),
    );
    let gw = TestGateway::start(&toml).await;
    let t = Instant::now();
    while reqwest::get(gw.admin_url("/readyz"))
        .await
        .expect("readyz")
        .status()
        != 200
    {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "gateway with the ServiceAccount never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        served_fingerprint(&ca.ca_pem, &gw.https("/"))
            .await
            .expect("probe"),
        pem_fingerprint(&leaf.cert_pem)
    );
    let m = reqwest::get(gw.admin_url("/metrics"))
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    assert!(
        m.contains("scoregate_discovery_up 1"),
        "discovery works with the ServiceAccount: {m}"
    );
    gw.stop().await;
}
