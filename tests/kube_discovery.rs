//! Discovery against the real kube-apiserver: EndpointSlices labelled for two versions route
//! requests by weight; a not-ready endpoint gets no new requests; a deleted slice shrinks the
//! routes; all without restart. Stopping the API server keeps scoring on the last routes and
//! shows in the metrics; starting it again resumes the watch.
#![cfg(feature = "peer-tests")]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

const NS: &str = "models";

fn slice(name: &str, version: &str, backend: SocketAddr, ready: bool) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            labels: Some(BTreeMap::from([
                ("scoregate.io/service".to_string(), "iris".to_string()),
                ("scoregate.io/version".to_string(), version.to_string()),
            ])),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec![backend.ip().to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(ready),
                terminating: Some(false),
            }),
            ..Default::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("scoring".into()),
            port: Some(i32::from(backend.port())),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

async fn wait_replicas(gw: &TestGateway, version: &str, n: usize) {
    let t = Instant::now();
    loop {
        let c: serde_json::Value = reqwest::get(gw.admin_url("/config"))
            .await
            .expect("config")
            .json()
            .await
            .expect("json");
        let count = c["services"][0]["versions"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == version))
            .and_then(|v| v["replicas"].as_array().map(Vec::len));
        if count == Some(n) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{version}: {count:?} replicas, want {n}: {c}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Send `n` requests, 10 at a time, and count which replica answered each.
async fn tally(c: &reqwest::Client, url: &str, n: usize) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for _ in 0..n / 10 {
        let batch: Vec<_> = (0..10)
            .map(|_| {
                let (c, url) = (c.clone(), url.to_string());
                tokio::spawn(async move {
                    let r = post(&c, &url, Some(KEY), ROWS).await;
                    let status = r.status();
                    if status != 200 {
                        panic!("{status}: {}", r.text().await.unwrap_or_default());
                    }
                    r.headers()["x-scoregate-replica"]
                        .to_str()
                        .expect("ascii")
                        .to_string()
                })
            })
            .collect();
        for b in batch {
            *out.entry(b.await.expect("join")).or_default() += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_drive_routes_without_restart_and_survive_an_api_outage() {
    let tb = Testbed::start();
    let kube = tb.client().await;
    tb.kubectl(&["create", "namespace", NS]);
    let slices: Api<EndpointSlice> = Api::namespaced(kube.clone(), NS);

    // Replicas on a test host of our own: the API server refuses loopback endpoint addresses.
    let net = TestNet::new();
    let (blue1, blue2, green1) = (
        net.replica("blue1"),
        net.replica("blue2"),
        net.replica("green1"),
    );

    let pki = Pki::new(&["localhost"]);
    let toml = format!(
        r#"
[listen]
tls = "127.0.0.1:0"
admin = "127.0.0.1:0"

[kubernetes]
kubeconfig = {kc:?}
discovery = true
namespace = "{NS}"

{tls}

[[services]]
name = "iris"
primary_key = "{KEY}"
replica_max_concurrent_requests = 16

[[services.versions]]
name = "blue"
traffic_percentile = 70

[[services.versions]]
name = "green"
is_default = true
"#,
        kc = tb.kubeconfig.display().to_string(),
        tls = pki.toml(),
    );
    let gw = TestGateway::start(&toml).await;
    let c = client(&pki.ca_pem).build().expect("client");
    let url = gw.https("/api/v1/service/iris/score");

    // No slices yet: no ready replica.
    let r = post(&c, &url, Some(KEY), ROWS).await;
    expect_error(r, 503, "no_ready_replicas").await;

    for (name, version, backend) in [
        ("blue-1", "blue", blue1),
        ("blue-2", "blue", blue2),
        ("green-1", "green", green1),
    ] {
        slices
            .create(&PostParams::default(), &slice(name, version, backend, true))
            .await
            .expect("create slice");
    }
    wait_replicas(&gw, "blue", 2).await;
    wait_replicas(&gw, "green", 1).await;
    let counts = tally(&c, &url, 600).await;
    let blue =
        counts.get("blue1").copied().unwrap_or(0) + counts.get("blue2").copied().unwrap_or(0);
    let sd = (600.0f64 * 0.7 * 0.3).sqrt();
    assert!(
        (blue as f64 - 420.0).abs() < 5.0 * sd,
        "blue {blue} of 600: {counts:?}"
    );
    assert!(
        counts.get("blue1").copied().unwrap_or(0) > 0
            && counts.get("blue2").copied().unwrap_or(0) > 0,
        "{counts:?}"
    );

    // blue-2 not ready: it gets no new requests.
    slices
        .replace("blue-2", &PostParams::default(), &{
            let mut s = slice("blue-2", "blue", blue2, false);
            s.metadata.resource_version = slices
                .get("blue-2")
                .await
                .expect("get")
                .metadata
                .resource_version;
            s
        })
        .await
        .expect("mark not ready");
    wait_replicas(&gw, "blue", 1).await;
    let counts = tally(&c, &url, 200).await;
    assert_eq!(
        counts.get("blue2"),
        None,
        "a not-ready endpoint got requests: {counts:?}"
    );

    // Delete green's slice: the pinned version has no replica left.
    slices
        .delete("green-1", &DeleteParams::default())
        .await
        .expect("delete");
    wait_replicas(&gw, "green", 0).await;
    let r = c
        .post(&url)
        .bearer_auth(KEY)
        .header("azureml-model-deployment", "green")
        .body(ROWS)
        .send()
        .await
        .expect("req");
    expect_error(r, 503, "no_ready_replicas").await;

    // API server outage: scoring continues on the last routes; the metrics show it.
    tb.stop_apiserver();
    let t = Instant::now();
    loop {
        let m = reqwest::get(gw.admin_url("/metrics"))
            .await
            .expect("m")
            .text()
            .await
            .expect("t");
        if m.contains("scoregate_discovery_up 0") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "discovery_up did not drop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..50 {
        let r = c
            .post(&url)
            .bearer_auth(KEY)
            .header("azureml-model-deployment", "blue")
            .body(ROWS)
            .send()
            .await
            .expect("req");
        assert_eq!(r.status(), 200, "blue keeps serving during the outage");
        assert_eq!(r.headers()["x-scoregate-replica"], "blue1");
    }
    assert_eq!(
        reqwest::get(gw.admin_url("/readyz"))
            .await
            .expect("readyz")
            .status(),
        200,
        "readiness does not flap"
    );

    // The API server returns: the watch resumes and new slices apply.
    tb.start_apiserver();
    slices
        .create(
            &PostParams::default(),
            &slice("green-2", "green", green1, true),
        )
        .await
        .expect("create after outage");
    wait_replicas(&gw, "green", 1).await;
    let r = c
        .post(&url)
        .bearer_auth(KEY)
        .header("azureml-model-deployment", "green")
        .body(ROWS)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    let m = reqwest::get(gw.admin_url("/metrics"))
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    assert!(m.contains("scoregate_discovery_up 1"), "{m}");
    assert!(counter(&m, "scoregate_discovery_watch_errors_total") >= 1);
    gw.stop().await;
}
