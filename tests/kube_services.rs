//! Per-service settings from a ConfigMap on the real API server: services, limits and traffic
//! weights change without a restart; an invalid update is refused and the last good stays.
#![cfg(feature = "peer-tests")]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};

fn services_toml(
    blue: std::net::SocketAddr,
    green: std::net::SocketAddr,
    blue_pct: u8,
    timeout_ms: u64,
) -> String {
    format!(
        r#"
[[services]]
name = "iris"
primary_key = "{KEY}"
scoring_timeout_ms = {timeout_ms}
replica_max_concurrent_requests = 8

[[services.versions]]
name = "blue"
traffic_percentile = {blue_pct}
replicas = ["{blue}"]

[[services.versions]]
name = "green"
is_default = true
replicas = ["{green}"]
"#
    )
}

async fn put(api: &Api<ConfigMap>, text: &str) {
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("scoregate-services".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "services.toml".to_string(),
            text.to_string(),
        )])),
        ..Default::default()
    };
    api.patch(
        "scoregate-services",
        &PatchParams::apply("scoregate-test").force(),
        &Patch::Apply(&cm),
    )
    .await
    .expect("apply configmap");
}

async fn settings(gw: &TestGateway) -> serde_json::Value {
    let c: serde_json::Value = reqwest::get(gw.admin_url("/config"))
        .await
        .expect("config")
        .json()
        .await
        .expect("json");
    c["services"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_services_update_without_restart_and_bad_ones_are_refused() {
    let tb = Testbed::start();
    tb.kubectl(&["create", "namespace", "scoregate"]);
    let cms: Api<ConfigMap> = Api::namespaced(tb.client().await, "scoregate");
    let blue = Backend::fixed(r#"{"r":"blue"}"#, Duration::ZERO).await;
    let green = Backend::fixed(r#"{"r":"green"}"#, Duration::ZERO).await;
    put(&cms, &services_toml(blue.addr, green.addr, 50, 1000)).await;

    let pki = Pki::new(&["localhost"]);
    // The file has no services at all: everything comes from the ConfigMap.
    let toml = format!(
        "[listen]\ntls = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[kubernetes]\nkubeconfig = {:?}\nnamespace = \"scoregate\"\nservices_configmap = \"scoregate-services\"\n\n{}",
        tb.kubeconfig.display().to_string(),
        pki.toml()
    );
    let gw = TestGateway::start(&toml).await;
    let t = Instant::now();
    while settings(&gw).await["settings"]["scoring_timeout_ms"] != 1000 {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "ConfigMap services never applied"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let c = client(&pki.ca_pem).build().expect("client");
    let url = gw.https("/api/v1/service/iris/score");
    let tally = |n: usize| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let mut out: HashMap<String, usize> = HashMap::new();
            for _ in 0..n {
                let r = post(&c, &url, Some(KEY), "{}").await;
                assert_eq!(r.status(), 200);
                *out.entry(
                    r.headers()["azureml-model-deployment"]
                        .to_str()
                        .expect("ascii")
                        .to_string(),
                )
                .or_default() += 1;
            }
            out
        }
    };
    let first = tally(200).await;
    assert!(
        first.get("blue").copied().unwrap_or(0) > 50
            && first.get("green").copied().unwrap_or(0) > 50,
        "{first:?}"
    );

    // New weights and timeout: applied without restart.
    put(&cms, &services_toml(blue.addr, green.addr, 100, 2500)).await;
    let t = Instant::now();
    while settings(&gw).await["settings"]["scoring_timeout_ms"] != 2500 {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "update never applied"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(tally(100).await.get("blue"), Some(&100));

    // An invalid update (timeout out of range) is refused; the last good services stay.
    put(&cms, &services_toml(blue.addr, green.addr, 0, 999_999)).await;
    gw.wait_metric(
        r#"scoregate_config_reloads_total{result="rejected",source="configmap"}"#,
        1,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(settings(&gw).await["settings"]["scoring_timeout_ms"], 2500);
    assert_eq!(tally(50).await.get("blue"), Some(&50));
    gw.stop().await;
}
