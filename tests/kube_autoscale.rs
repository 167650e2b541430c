//! The autoscaler against the real kube-apiserver: synthetic load scales a Deployment up through
//! its scale subresource at once; without load it scales down only after the window; the Lease is
//! held by one gateway at a time and passes over when the holder stops; a Deployment targeted by
//! a HorizontalPodAutoscaler is never scaled.
#![cfg(feature = "peer-tests")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ObjectMeta, PostParams};

const NS: &str = "models";

fn gateway_toml(
    tb: &Testbed,
    pki: &Pki,
    identity: &str,
    deployment: &str,
    replica: std::net::SocketAddr,
) -> String {
    format!(
        r#"
[listen]
tls = "127.0.0.1:0"
admin = "127.0.0.1:0"

[kubernetes]
kubeconfig = {kc:?}
lease_namespace = "{NS}"
lease_duration_ms = 3000
identity = "{identity}"
autoscale_refresh_ms = 200

{tls}

[[services]]
name = "iris"
primary_key = "{KEY}"
max_request_wait_time = 10000

[[services.versions]]
name = "blue"
replicas = ["{replica}"]

[services.versions.autoscale]
deployment = "{deployment}"
namespace = "{NS}"
max_replicas = 10
scale_down_window_ms = 3000
"#,
        kc = tb.kubeconfig.display().to_string(),
        tls = pki.toml(),
    )
}

async fn replicas(api: &Api<Deployment>, name: &str) -> i32 {
    api.get(name)
        .await
        .expect("get")
        .spec
        .and_then(|s| s.replicas)
        .unwrap_or(0)
}

async fn wait_replicas(api: &Api<Deployment>, name: &str, want: i32, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let n = replicas(api, name).await;
        if n == want {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < within,
            "{name}: {n} replicas, want {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("scoregate-autoscaler")
        .await
        .expect("lease")
        .and_then(|l| l.spec?.holder_identity)
}

/// 14 clients sending back to back to one replica with one slot, until `stop`.
fn load(pki: &Pki, url: String, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..14)
        .map(|_| {
            let c = client(&pki.ca_pem).build().expect("client");
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = c.post(&url).bearer_auth(KEY).body(ROWS).send().await;
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_scales_up_at_once_down_after_the_window_with_one_leader() {
    let tb = Testbed::start();
    tb.kubectl(&["create", "namespace", NS]);
    let kube = tb.client().await;
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), NS);
    deployments
        .create(&PostParams::default(), &deployment(NS, "iris-blue"))
        .await
        .expect("deployment");
    let leases: Api<Lease> = Api::namespaced(kube.clone(), NS);

    let slow = Backend::fixed(r#"{"ok":true}"#, Duration::from_millis(300)).await;
    let pki = Pki::new(&["localhost"]);
    let gw_a = TestGateway::start(&gateway_toml(&tb, &pki, "gw-a", "iris-blue", slow.addr)).await;
    let t = Instant::now();
    while holder(&leases).await.as_deref() != Some("gw-a") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "gw-a never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gw_b = TestGateway::start(&gateway_toml(&tb, &pki, "gw-b", "iris-blue", slow.addr)).await;

    // Load: 1 busy + up to 13 queued on one slot -> ceil(14 / 0.7) = 20 -> max 10, at once.
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&pki, gw_a.https("/api/v1/service/iris/score"), stop.clone());
    let up = wait_replicas(&deployments, "iris-blue", 10, Duration::from_secs(15)).await;
    println!("scale-up 1 -> 10 applied {up:?} after the load started");
    let m = reqwest::get(gw_a.admin_url("/metrics"))
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    assert!(
        m.contains(r#"scoregate_autoscale_desired_replicas{service="iris",version="blue"} 10"#),
        "{m}"
    );
    assert_eq!(
        holder(&leases).await.as_deref(),
        Some("gw-a"),
        "one holder while both run"
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load");
    }
    // Scale-down waits for the 3 s window.
    let quiet = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mid = replicas(&deployments, "iris-blue").await;
    assert!(mid >= 8, "scaled down to {mid} before the window");
    wait_replicas(&deployments, "iris-blue", 1, Duration::from_secs(15)).await;
    let down = quiet.elapsed();
    println!("scale-down 10 -> 1 applied {down:?} after the load stopped (window 3 s)");
    assert!(down >= Duration::from_millis(2800), "{down:?}");

    // The holder stops: the other gateway takes the lease over once it expires.
    gw_a.stop().await;
    let t = Instant::now();
    while holder(&leases).await.as_deref() != Some("gw-b") {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "gw-b never took over the lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "lease taken over by gw-b {:?} after gw-a stopped",
        t.elapsed()
    );

    // An HPA targets the Deployment: load no longer scales it.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(kube.clone(), NS);
    let hpa = HorizontalPodAutoscaler {
        metadata: ObjectMeta {
            name: Some("iris-blue".into()),
            ..Default::default()
        },
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: "iris-blue".into(),
            },
            min_replicas: Some(1),
            max_replicas: 3,
            ..Default::default()
        }),
        ..Default::default()
    };
    hpas.create(&PostParams::default(), &hpa)
        .await
        .expect("hpa");
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&pki, gw_b.https("/api/v1/service/iris/score"), stop.clone());
    gw_b.wait_metric(
        r#"scoregate_autoscale_blocked_total{reason="hpa",service="iris",version="blue"}"#,
        3,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        replicas(&deployments, "iris-blue").await,
        1,
        "scaled despite the HPA"
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load");
    }
    gw_b.stop().await;
}

/// Autoscaling is read from the route table on every tick: a configuration reload that adds
/// `[services.versions.autoscale]` to a gateway that started without any starts the Lease
/// election and scales, and one that lowers `max_replicas` is followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_adds_or_changes_autoscaling_takes_effect() {
    let tb = Testbed::start();
    tb.kubectl(&["create", "namespace", NS]);
    let kube = tb.client().await;
    let deployments: Api<Deployment> = Api::namespaced(kube.clone(), NS);
    deployments
        .create(&PostParams::default(), &deployment(NS, "iris-green"))
        .await
        .expect("deployment");
    let leases: Api<Lease> = Api::namespaced(kube.clone(), NS);
    let slow = Backend::fixed(r#"{"ok":true}"#, Duration::from_millis(300)).await;
    let pki = Pki::new(&["localhost"]);
    // The configuration file is polled every second (the default): reloads land within ~1 s.
    let with = gateway_toml(&tb, &pki, "gw-r", "iris-green", slow.addr);
    let section = with
        .find("[services.versions.autoscale]")
        .expect("autoscale section");
    let without = &with[..section];
    let gw = ServeProcess::start(without, "info", &[]);
    let url = format!(
        "https://localhost:{}/api/v1/service/iris/score",
        gw.tls.expect("tls").port()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&pki, url, stop.clone());

    // Without autoscaling: load changes nothing and no Lease is taken.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(replicas(&deployments, "iris-green").await, 1);
    assert_eq!(
        holder(&leases).await,
        None,
        "no election without autoscaling"
    );

    // Added by a reload: the election starts and the load scales the Deployment to its maximum.
    write_atomic(
        &gw.config,
        with.replace("max_replicas = 10", "max_replicas = 4")
            .as_bytes(),
    );
    let up = wait_replicas(&deployments, "iris-green", 4, Duration::from_secs(20)).await;
    println!("scaled 1 -> 4 {up:?} after the reload that added autoscaling");
    assert_eq!(holder(&leases).await.as_deref(), Some("gw-r"));

    // Changed by a reload: the lower maximum is applied under the same load.
    write_atomic(
        &gw.config,
        with.replace("max_replicas = 10", "max_replicas = 2")
            .replace("scale_down_window_ms = 3000", "scale_down_window_ms = 500")
            .as_bytes(),
    );
    wait_replicas(&deployments, "iris-green", 2, Duration::from_secs(20)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load");
    }
}
