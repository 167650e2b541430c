//! Service keys from a Kubernetes Secret (`auth_secret`) on the real API server: refused until
//! the Secret exists, rotated by updating it (primary -> secondary -> gone) without a restart,
//! a weak key refused with the last good keys kept.
#![cfg(feature = "peer-tests")]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};

const OLD: &str = "old-key-0123456789abcdef";
const NEW: &str = "new-key-0123456789abcdef";

async fn put(api: &Api<Secret>, primary: &str, secondary: Option<&str>) {
    let mut data = BTreeMap::from([(
        "primary".to_string(),
        ByteString(primary.as_bytes().to_vec()),
    )]);
    if let Some(s) = secondary {
        data.insert("secondary".to_string(), ByteString(s.as_bytes().to_vec()));
    }
    let s = Secret {
        metadata: ObjectMeta {
            name: Some("iris-keys".into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    // Apply with force replaces the whole data map this manager owns.
    api.patch(
        "iris-keys",
        &PatchParams::apply("scoregate-test").force(),
        &Patch::Apply(&s),
    )
    .await
    .expect("apply secret");
}

async fn wait_status(c: &reqwest::Client, url: &str, key: &str, want: u16) {
    let t = Instant::now();
    loop {
        if post(c, url, Some(key), ROWS).await.status() == want {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "key {key:?} never got {want}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_through_the_secret_without_restart() {
    let tb = Testbed::start();
    tb.kubectl(&["create", "namespace", "scoregate"]);
    let secrets: Api<Secret> = Api::namespaced(tb.client().await, "scoregate");
    let model = Backend::model().await;
    let pki = Pki::new(&["localhost"]);
    let toml = format!(
        "[listen]\ntls = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[kubernetes]\nkubeconfig = {:?}\nnamespace = \"scoregate\"\n\n{}\n[[services]]\nname = \"iris\"\nauth_secret = \"iris-keys\"\n\n[[services.versions]]\nname = \"blue\"\nreplicas = [\"{}\"]\n",
        tb.kubeconfig.display().to_string(),
        pki.toml(),
        model.addr
    );
    let gw = TestGateway::start(&toml).await;
    let c = client(&pki.ca_pem).build().expect("client");
    let url = gw.https("/api/v1/service/iris/score");

    // No Secret yet: every key is refused.
    expect_error(
        post(&c, &url, Some(OLD), ROWS).await,
        401,
        "auth_invalid_key",
    )
    .await;
    put(&secrets, OLD, None).await;
    wait_status(&c, &url, OLD, 200).await;

    // Rotation step 1: new primary, old kept as secondary — both work.
    put(&secrets, NEW, Some(OLD)).await;
    wait_status(&c, &url, NEW, 200).await;
    assert_eq!(post(&c, &url, Some(OLD), ROWS).await.status(), 200);
    // Step 2: the old key is dropped.
    put(&secrets, NEW, None).await;
    wait_status(&c, &url, OLD, 401).await;
    assert_eq!(post(&c, &url, Some(NEW), ROWS).await.status(), 200);

    // A weak key is refused; the last good keys stay.
    put(&secrets, "short", None).await;
    gw.wait_metric(
        r#"scoregate_config_reloads_total{result="rejected",source="key_secret"}"#,
        1,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(post(&c, &url, Some(NEW), ROWS).await.status(), 200);
    expect_error(
        post(&c, &url, Some("short"), ROWS).await,
        401,
        "auth_invalid_key",
    )
    .await;
    gw.stop().await;
}
