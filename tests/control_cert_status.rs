//! `scoregate cert status` asks every gateway replica which certificate it serves, through the
//! real API server's pod proxy: two gateways run in-test, watching the attachment's Secret, and
//! a `cert set` rotation shows up replica by replica until it is complete.
#![cfg(feature = "peer-tests")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use scoregate::tls::DevCa;
use serde_json::{Value, json};

fn cli(args: &[&str]) -> (i32, String, String) {
    let o = scoregate(args);
    (o.code, o.stdout, o.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_status_shows_what_each_replica_serves_through_a_rotation() {
    let tb = Testbed::start();
    let net = TestNet::new();
    let client = tb.client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (kc, ws) = (
        tb.kubeconfig.display().to_string(),
        dir.path().join("ws.json").display().to_string(),
    );
    let common = ["--kubeconfig", kc.as_str(), "--workspace", ws.as_str()];
    let ca = DevCa::new("cert status CA").expect("ca");
    let write_pair = |tag: &str| {
        let leaf = ca
            .issue(&["scoring.example.com".to_string(), "localhost".to_string()])
            .expect("leaf");
        let (c, k) = (
            dir.path().join(format!("{tag}-cert.pem")),
            dir.path().join(format!("{tag}-key.pem")),
        );
        std::fs::write(&c, &leaf.cert_pem).expect("w");
        std::fs::write(&k, &leaf.key_pem).expect("w");
        (c.display().to_string(), k.display().to_string(), leaf)
    };
    let (c1, k1, leaf1) = write_pair("v1");
    tb.node("n1", "2");
    let (code, _, err) = cli(&[
        &[
            "attach",
            "aks-dev",
            "--purpose",
            "DevTest",
            "--no-wait",
            "--ssl-cname",
            "scoring.example.com",
            "--ssl-cert-pem-file",
            &c1,
            "--ssl-key-pem-file",
            &k1,
        ][..],
        &common[..],
    ]
    .concat());
    assert_eq!(code, 0, "{err}");

    // Two gateway replicas, as the Deployment would run them: the Secret source, the admin
    // port on an address the API server may proxy to (not loopback).
    let toml = format!(
        r#"
[listen]
tls = "127.0.0.1:0"
admin = "{ip}:0"

[kubernetes]
kubeconfig = {kc:?}

[tls.kubernetes_secret]
name = "scoregate-tls"
namespace = "scoregate"
cname = "scoring.example.com"

{service}"#,
        ip = net.host_ip,
        service = iris_service("127.0.0.1:9", ""),
    );
    let gateways = [
        TestGateway::start(&toml).await,
        TestGateway::start(&toml).await,
    ];
    let pods: Api<Pod> = Api::namespaced(client.clone(), "scoregate");
    for (i, gw) in gateways.iter().enumerate() {
        let admin = gw.admin.expect("admin");
        let name = format!("scoregate-{i}");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "scoregate", "scoregate.io/compute": "aks-dev"}},
            "spec": {"containers": [{"name": "scoregate", "image": "scoregate:0.1.0",
                     "ports": [{"name": "admin", "containerPort": admin.port()}]}]}
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("pod");
        let ip = admin.ip().to_string();
        let st = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&st))
            .await
            .expect("pod status");
    }

    let status = || {
        // The gateways keep running on the other worker meanwhile.
        let (code, out, err) = tokio::task::block_in_place(|| {
            cli(&[
                &["cert", "status", "aks-dev", "-o", "json"][..],
                &common[..],
            ]
            .concat())
        });
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).expect("json")
    };
    let until_complete = async |want: String| {
        let t = Instant::now();
        loop {
            let v = status();
            let fps: Vec<&str> = v["replicas"]
                .as_array()
                .expect("replicas")
                .iter()
                .filter_map(|r| r["fingerprint_sha256"].as_str())
                .collect();
            if v["rotation_complete"] == true && fps == [want.as_str(), want.as_str()] {
                return v;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "rotation to {want} never completed: {v:#}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let v = until_complete(pem_fingerprint(&leaf1.cert_pem)).await;
    assert_eq!(
        v["secret"]["names"],
        json!(["scoring.example.com", "localhost"])
    );
    assert_eq!(v["replicas"][0]["source"], "secret");

    // Rotate with `cert set`: both replicas pick it up from their watch, no restart.
    let (c2, k2, leaf2) = write_pair("v2");
    let (code, _, err) = cli(&[
        &[
            "cert",
            "set",
            "aks-dev",
            "--cert-pem-file",
            &c2,
            "--key-pem-file",
            &k2,
        ][..],
        &common[..],
    ]
    .concat());
    assert_eq!(code, 0, "{err}");
    until_complete(pem_fingerprint(&leaf2.cert_pem)).await;
    for gw in &gateways {
        assert_eq!(
            served_fingerprint(&ca.ca_pem, &gw.https("/"))
                .await
                .expect("probe"),
            pem_fingerprint(&leaf2.cert_pem)
        );
    }
    // The table shows one row per replica.
    let (code, out, err) = cli(&[&["cert", "status", "aks-dev"][..], &common[..]].concat());
    assert_eq!(code, 0, "{err}");
    println!("$ scoregate cert status aks-dev\n{out}");
    assert!(
        out.contains("ROTATION_COMPLETE  true")
            && out.contains("scoregate-0")
            && out.contains("scoregate-1"),
        "{out}"
    );
    for gw in gateways {
        gw.stop().await;
    }
}
