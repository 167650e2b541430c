//! The TLS Secret source against the real kube-apiserver: not ready until the Secret exists,
//! updates rotate the served certificate with no failed request under load, both key layouts
//! work, a bad Secret is refused and the last good certificate stays.
#![cfg(feature = "peer-tests")]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use scoregate::tls::DevCa;

const NS: &str = "scoregate";
const NAME: &str = "scoregate-tls";

fn secret(layout: (&str, &str), cert: &str, key: &str) -> Secret {
    let mut data = BTreeMap::new();
    data.insert(layout.0.to_string(), ByteString(cert.as_bytes().to_vec()));
    data.insert(layout.1.to_string(), ByteString(key.as_bytes().to_vec()));
    Secret {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

async fn put(api: &Api<Secret>, s: &Secret) {
    api.patch(
        NAME,
        &PatchParams::apply("scoregate-test").force(),
        &Patch::Apply(s),
    )
    .await
    .expect("apply secret");
}

async fn wait_fingerprint(ca: &str, url: &str, want: &str) -> Duration {
    let t = Instant::now();
    loop {
        if served_fingerprint(ca, url).await.as_deref() == Ok(want) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "fingerprint {want} not served"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_updates_rotate_with_no_failed_request_and_bad_secrets_are_refused() {
    let tb = Testbed::start();
    let kube = tb.client().await;
    tb.kubectl(&["create", "namespace", NS]);
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), NS);

    let ca = DevCa::new("secret test CA").expect("ca");
    let names = vec!["localhost".to_string()];
    let leaves: Vec<_> = (0..3).map(|_| ca.issue(&names).expect("leaf")).collect();
    let fps: Vec<_> = leaves
        .iter()
        .map(|l| pem_fingerprint(&l.cert_pem))
        .collect();

    let model = Backend::model().await;
    let toml = format!(
        r#"
[listen]
tls = "127.0.0.1:0"
admin = "127.0.0.1:0"

[kubernetes]
kubeconfig = {kc:?}

[tls.kubernetes_secret]
name = "{NAME}"
namespace = "{NS}"
cname = "localhost"

{service}"#,
        kc = tb.kubeconfig.display().to_string(),
        service = iris_service(model.addr, "replica_max_concurrent_requests = 64"),
    );
    let gw = TestGateway::start(&toml).await;
    // No Secret yet: serving a placeholder, and not ready.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ready = reqwest::get(gw.admin_url("/readyz"))
        .await
        .expect("readyz")
        .status();
    assert_eq!(ready, 503, "not ready before the Secret exists");

    put(
        &secrets,
        &secret(
            ("cert.pem", "key.pem"),
            &leaves[0].cert_pem,
            &leaves[0].key_pem,
        ),
    )
    .await;
    let probe = gw.https("/");
    wait_fingerprint(&ca.ca_pem, &probe, &fps[0]).await;
    let t = Instant::now();
    while reqwest::get(gw.admin_url("/readyz"))
        .await
        .expect("readyz")
        .status()
        != 200
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "ready after the Secret arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Rotate 20 times under load, alternating the Azure ML and kubernetes.io/tls layouts.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let url = gw.https("/api/v1/service/iris/score");
    let mut load = Vec::new();
    for i in 0..16 {
        let b = client(&ca.ca_pem);
        let c = if i % 4 == 0 {
            b.pool_max_idle_per_host(0)
        } else {
            b
        }
        .build()
        .expect("client");
        let (url, stop, ok, failed) = (url.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let good = match c.post(&url).bearer_auth(KEY).body(ROWS).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut lags = Vec::new();
    for n in 1..=20 {
        let i = n % 2;
        let layout = if n % 2 == 0 {
            ("cert.pem", "key.pem")
        } else {
            ("tls.crt", "tls.key")
        };
        put(
            &secrets,
            &secret(layout, &leaves[i].cert_pem, &leaves[i].key_pem),
        )
        .await;
        lags.push(wait_fingerprint(&ca.ca_pem, &probe, &fps[i]).await);
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }
    lags.sort();
    println!(
        "Secret rotations 20: {} requests, {} failed; Secret update -> new handshakes p50 {:?} max {:?}",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 100);

    // A bad Secret (the key of another certificate) is refused; the last good one stays.
    let current = fps[0].clone();
    put(
        &secrets,
        &secret(
            ("cert.pem", "key.pem"),
            &leaves[2].cert_pem,
            &leaves[1].key_pem,
        ),
    )
    .await;
    let t = Instant::now();
    loop {
        let s: serde_json::Value = reqwest::get(gw.admin_url("/certificates"))
            .await
            .expect("a")
            .json()
            .await
            .expect("j");
        if s["certificates"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("does not match"))
        {
            assert_eq!(s["certificates"][0]["source"], "secret");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "bad Secret not refused: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        served_fingerprint(&ca.ca_pem, &probe).await.expect("probe"),
        current
    );
    // A Secret with neither layout is refused too.
    let mut empty = secret(("x", "y"), "a", "b");
    empty.data = Some(BTreeMap::from([(
        "other".to_string(),
        ByteString(b"1".to_vec()),
    )]));
    secrets
        .replace(NAME, &PostParams::default(), &{
            let mut e = empty;
            e.metadata.resource_version = secrets
                .get(NAME)
                .await
                .expect("get")
                .metadata
                .resource_version;
            e
        })
        .await
        .expect("replace");
    let t = Instant::now();
    loop {
        let s: serde_json::Value = reqwest::get(gw.admin_url("/certificates"))
            .await
            .expect("a")
            .json()
            .await
            .expect("j");
        if s["certificates"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("neither cert.pem/key.pem nor tls.crt/tls.key"))
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "keyless Secret not refused: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        served_fingerprint(&ca.ca_pem, &probe).await.expect("probe"),
        current
    );
    assert_eq!(
        reqwest::get(gw.admin_url("/readyz"))
            .await
            .expect("readyz")
            .status(),
        200,
        "readiness does not flap"
    );
    gw.stop().await;
}
