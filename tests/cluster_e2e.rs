//! End to end through a real one-node cluster (`scripts/kube-testbed.sh cluster-start`: kubelet,
//! containerd + runc, kube-proxy, scheduler, controller manager; the gateway image built from the
//! Dockerfile with buildah and imported). Nothing here patches a status or writes an
//! EndpointSlice: the pods are real processes, the slices come from the EndpointSlice controller,
//! the gateway runs as a pod with its ServiceAccount and reaches the API server through the
//! `kubernetes` Service. Under steady load (HTTP/1.1 and HTTP/2 clients through the gateway's
//! NodePort), every scenario that a client can ride through must cost 0 failed requests; faults
//! (a gateway or a model pod killed) are measured and reported.
#![cfg(feature = "peer-tests")]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use scoregate::tls::DevCa;

const KEY: &str = "e2e-primary-key-0123456789";
const HOST: &str = "scoring.example.com";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Clients sending scoring requests until stopped: half HTTP/1.1, half HTTP/2.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(ca_pem: &str, node: SocketAddr, clients: usize) -> Load {
        let (stop, ok, failed): (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>) =
            (Arc::default(), Arc::default(), Arc::default());
        let errors: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let url = format!("https://{HOST}:{}/api/v1/service/iris/score", node.port());
        let tasks = (0..clients)
            .map(|i| {
                let builder = reqwest::Client::builder()
                    .tls_certs_only(
                        [reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca")],
                    )
                    .resolve(HOST, node)
                    .timeout(Duration::from_secs(10));
                let (c, version) = if i % 2 == 0 {
                    (builder.http1_only(), reqwest::Version::HTTP_11)
                } else {
                    (builder.http2_prior_knowledge(), reqwest::Version::HTTP_2)
                };
                let c = c.build().expect("client");
                let (stop, ok, failed, errors, url) = (
                    stop.clone(),
                    Arc::clone(&ok),
                    Arc::clone(&failed),
                    errors.clone(),
                    url.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let r = c
                            .post(&url)
                            .bearer_auth(KEY)
                            .header("content-type", "application/json")
                            .body(r#"{"data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}"#)
                            .send()
                            .await;
                        let outcome = match r {
                            Ok(r) if r.status() == 200 && r.version() == version => r
                                .bytes()
                                .await
                                .map(|_| ())
                                .map_err(|e| format!("body: {e}")),
                            Ok(r) => {
                                let (status, v) = (r.status(), r.version());
                                Err(format!(
                                    "{status} {v:?}: {}",
                                    r.text().await.unwrap_or_default()
                                ))
                            }
                            Err(e) => Err(format!("{e:?}")),
                        };
                        match outcome {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                if let Ok(mut v) = errors.lock()
                                    && v.len() < 5
                                {
                                    v.push(e);
                                }
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            errors,
            tasks,
        }
    }

    /// Stop; (ok, failed, first errors).
    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let errors = self.errors.lock().map(|v| v.clone()).unwrap_or_default();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

/// Run `scenario` under load with 8 clients; print and return (ok, failed, first errors).
async fn under_load<F: std::future::Future<Output = ()>>(
    name: &str,
    ca: &str,
    node: SocketAddr,
    scenario: F,
) -> (u64, u64, Vec<String>) {
    let load = Load::start(ca, node, 8);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = Instant::now();
    scenario.await;
    // Requests keep flowing a little after the change settled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, failed, errors) = load.finish().await;
    println!(
        "scenario {name}: {ok} requests ok, {failed} failed in {:.0?}{}",
        t.elapsed() + Duration::from_secs(5),
        if errors.is_empty() {
            String::new()
        } else {
            format!("; first errors: {errors:?}")
        }
    );
    assert!(ok > 100, "{name}: the load ran ({ok})");
    (ok, failed, errors)
}

fn kubectl_in(tb: &Testbed, args: &[&str]) -> String {
    tb.kubectl(args)
}

/// Wait until `kubectl rollout status` says the Deployment is rolled out.
fn rolled_out(tb: &Testbed, ns: &str, deploy: &str) {
    kubectl_in(
        tb,
        &[
            "-n",
            ns,
            "rollout",
            "status",
            &format!("deployment/{deploy}"),
            "--timeout=180s",
        ],
    );
}

/// The serving endpoints of the model's EndpointSlices (ready, not terminating).
fn ready_endpoints(tb: &Testbed) -> usize {
    let out = kubectl_in(tb, &["-n", "models", "get", "endpointslices", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["conditions"]["ready"] == true && e["conditions"]["terminating"] != true)
        .count()
}

/// Scale Deployment `ns/deploy` to `n` replicas and wait until it has rolled out.
fn scale(tb: &Testbed, ns: &str, deploy: &str, n: usize) {
    kubectl_in(
        tb,
        &[
            "-n",
            ns,
            "scale",
            &format!("deployment/{deploy}"),
            &format!("--replicas={n}"),
        ],
    );
    rolled_out(tb, ns, deploy);
}

/// The name of the first Pod in `ns`.
/// Each running gateway pod's `/metrics`, through the API server's pod proxy.
fn gateway_metrics(tb: &Testbed) -> Vec<(String, String)> {
    let names = kubectl_in(
        tb,
        &[
            "-n",
            "scoregate",
            "get",
            "pods",
            "--field-selector=status.phase=Running",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    );
    names
        .split_whitespace()
        .map(|pod| {
            // A pod that just went away answers nothing: an empty exposition.
            let out = std::process::Command::new(kubectl())
                .arg("--kubeconfig")
                .arg(&tb.kubeconfig)
                .args([
                    "get",
                    "--raw",
                    &format!("/api/v1/namespaces/scoregate/pods/{pod}:9100/proxy/metrics"),
                ])
                .output()
                .expect("kubectl runs");
            (
                pod.to_string(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        })
        .collect()
}

fn first_pod(tb: &Testbed, ns: &str) -> String {
    kubectl_in(
        tb,
        &[
            "-n",
            ns,
            "get",
            "pods",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
    )
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < within, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_score_rotate_roll_and_detach_on_a_real_cluster() {
    let started = Instant::now();
    let tb = tokio::task::spawn_blocking(Testbed::cluster)
        .await
        .expect("cluster");
    let bring_up = started.elapsed();
    let node_ip = tb.env("NODE_IP");
    let image_size = std::fs::read_to_string(tb.dir.path().join("image-size")).unwrap_or_default();
    println!(
        "cluster up in {bring_up:.1?}; gateway image {}",
        image_size.trim()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = dir.path().join("ws.json");
    let kc = tb.kubeconfig.clone();
    let cli = |args: &[&str]| {
        scoregate(&[args, &["--kubeconfig", s(&kc), "--workspace", s(&ws)][..]].concat())
    };

    // The image: non-root, no shell (its user and what a shell would be).
    let ca = DevCa::new("e2e CA").expect("ca");
    let write_pair = |tag: &str| {
        let leaf = ca.issue(&[HOST.to_string()]).expect("leaf");
        let (c, k) = (
            dir.path().join(format!("{tag}-cert.pem")),
            dir.path().join(format!("{tag}-key.pem")),
        );
        std::fs::write(&c, format!("{}{}", leaf.cert_pem, ca.ca_pem)).expect("w");
        std::fs::write(&k, &leaf.key_pem).expect("w");
        (c, k, leaf)
    };
    let (cert, key, first) = write_pair("first");

    // attach (DevTest) installs the gateway; its pod becomes ready; with no load-balancer
    // controller, attach says so and names the NodePort instead of timing out.
    let o = cli(&[
        "attach",
        "aks-e2e",
        "--purpose",
        "DevTest",
        "--ssl-cname",
        HOST,
        "--ssl-cert-pem-file",
        s(&cert),
        "--ssl-key-pem-file",
        s(&key),
        "--image",
        "docker.io/library/scoregate:0.1.0",
        "--timeout",
        "180",
        "-o",
        "json",
    ]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stderr.contains("no load balancer controller"),
        "{}",
        o.stderr
    );
    let out: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(out["replicas_ready"], "1/1", "{out}");
    let node_port = out["node_port"].as_u64().expect("a NodePort") as u16;
    let node: SocketAddr = format!("{node_ip}:{node_port}").parse().expect("addr");
    assert_eq!(
        out["endpoint"],
        format!("https://{HOST}:{node_port}/api/v1/service/<service-name>/score")
    );
    let pod = kubectl_in(&tb, &["-n", "scoregate", "get", "pods", "-o", "json"]);
    let pod: serde_json::Value = serde_json::from_str(&pod).expect("json");
    let spec = &pod["items"][0]["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let status = cli(&["status", "aks-e2e", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("json");
    assert_eq!(status["replicas_ready"], "1/1", "{status}");

    // The example model, discovered from the real EndpointSlice controller's slices.
    kubectl_in(&tb, &["create", "namespace", "models"]);
    kubectl_in(
        &tb,
        &[
            "apply",
            "-f",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/deploy/example-model/iris.yaml"
            ),
        ],
    );
    let services = dir.path().join("services.toml");
    std::fs::write(
        &services,
        // 8 closed-loop clients on one or two slots (limit 1, now held over all the gateways
        // together) saturate the model: the queue may wait 2 s, so what is measured is the
        // restarts, not the queue deadline under saturation.
        format!("[[services]]\nname = \"iris\"\nprimary_key = \"{KEY}\"\nmax_request_wait_time = 2000\n[[services.versions]]\nname = \"blue\"\nis_default = true\n"),
    )
    .expect("w");
    let cm = kubectl_in(
        &tb,
        &[
            "-n",
            "scoregate",
            "create",
            "configmap",
            "scoregate-services",
            &format!("--from-file=services.toml={}", s(&services)),
            "--dry-run=client",
            "-o",
            "yaml",
        ],
    );
    let cm_file = dir.path().join("cm.yaml");
    std::fs::write(&cm_file, cm).expect("w");
    kubectl_in(&tb, &["apply", "-f", s(&cm_file)]);
    rolled_out(&tb, "models", "iris-blue");
    wait_until("2 ready endpoints", Duration::from_secs(60), || {
        ready_endpoints(&tb) == 2
    });
    for version in [reqwest::Version::HTTP_11, reqwest::Version::HTTP_2] {
        let b = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).expect("ca")])
            .resolve(HOST, node);
        let c = if version == reqwest::Version::HTTP_2 {
            b.http2_prior_knowledge()
        } else {
            b.http1_only()
        }
        .build()
        .expect("client");
        let url = format!("https://{HOST}:{node_port}/api/v1/service/iris/score");
        let t = Instant::now();
        let r = loop {
            let r = c
                .post(&url)
                .bearer_auth(KEY)
                .body(r#"{"data": [[6.7, 3.0, 5.2, 2.3]]}"#)
                .send()
                .await;
            if let Ok(r) = r
                && r.status() == 200
            {
                break r;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the service answers through the NodePort"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(r.version(), version);
        assert!(r.text().await.expect("body").contains("virginica"));
    }

    // Under load, each with 0 failed requests: a certificate rotation seen by every gateway pod;
    let (_, _, second) = write_pair("second");
    let (cert2, key2) = (
        dir.path().join("second-cert.pem"),
        dir.path().join("second-key.pem"),
    );
    let fp2 = pem_fingerprint(&second.cert_pem);
    let (_, failed, errors) =
        under_load("certificate rotation (cert set)", &ca.ca_pem, node, async {
            let o = cli(&[
                "cert",
                "set",
                "aks-e2e",
                "--cert-pem-file",
                s(&cert2),
                "--key-pem-file",
                s(&key2),
            ]);
            assert_eq!(o.code, 0, "{}", o.stderr);
            let t = Instant::now();
            loop {
                let st = cli(&["cert", "status", "aks-e2e", "-o", "json"]);
                let v: serde_json::Value = serde_json::from_str(&st.stdout).unwrap_or_default();
                if v["rotation_complete"] == true {
                    assert!(
                        v["replicas"].as_array().is_some_and(|r| r
                            .iter()
                            .all(|p| p["fingerprint_sha256"] == fp2.as_str())),
                        "{v}"
                    );
                    break;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "rotation seen by every pod: {v}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
        .await;
    assert_eq!(failed, 0, "{errors:?}");
    assert_ne!(pem_fingerprint(&first.cert_pem), fp2);

    // a rolling update of the model (terminating endpoints drained by the router);
    let (_, failed, errors) = under_load("model rolling update", &ca.ca_pem, node, async {
        let tb = &tb;
        tokio::task::block_in_place(|| {
            kubectl_in(
                tb,
                &["-n", "models", "rollout", "restart", "deployment/iris-blue"],
            );
            rolled_out(tb, "models", "iris-blue");
            wait_until("2 ready endpoints", Duration::from_secs(60), || {
                ready_endpoints(tb) == 2
            });
        });
    })
    .await;
    assert_eq!(failed, 0, "{errors:?}");

    // scaling the model 1 → 3 → 1;
    let (_, failed, errors) = under_load("model scaled 1 → 3 → 1", &ca.ca_pem, node, async {
        let tb = &tb;
        tokio::task::block_in_place(|| {
            for n in [1usize, 3, 1] {
                scale(tb, "models", "iris-blue", n);
                wait_until(
                    &format!("{n} ready endpoints"),
                    Duration::from_secs(60),
                    || ready_endpoints(tb) == n,
                );
                std::thread::sleep(Duration::from_secs(2));
            }
        });
    })
    .await;
    assert_eq!(failed, 0, "{errors:?}");

    // the gateway at 3 replicas, restarted one at a time. (Its 500m CPU request × 4 pods during
    // a surge does not fit this 2-vCPU node next to the model: 200m here.)
    kubectl_in(
        &tb,
        &[
            "-n",
            "scoregate",
            "set",
            "resources",
            "deployment/scoregate",
            "--requests=cpu=200m",
        ],
    );
    rolled_out(&tb, "scoregate", "scoregate");
    // Two model replicas (two slots over the gateways): a slot moving between gateways as they
    // come and go leaves the other serving.
    scale(&tb, "models", "iris-blue", 2);
    wait_until("2 ready endpoints", Duration::from_secs(60), || {
        ready_endpoints(&tb) == 2
    });
    let (ok, failed, errors) = under_load("gateway ×3 rolling restart", &ca.ca_pem, node, async {
        let tb = &tb;
        tokio::task::block_in_place(|| {
            scale(tb, "scoregate", "scoregate", 3);
            kubectl_in(
                tb,
                &[
                    "-n",
                    "scoregate",
                    "rollout",
                    "restart",
                    "deployment/scoregate",
                ],
            );
            rolled_out(tb, "scoregate", "scoregate");
        });
    })
    .await;
    // Known residual (README "Running several gateway replicas"): on this loaded one-node
    // cluster a join that moves both slots at once (no slot usable until the view settles; a
    // single slot in transit leaves the other serving) can keep a few queued requests past their
    // deadline; at most 1 in 10,000 answered 503.
    assert!(
        failed * 10_000 <= ok,
        "{failed} failed of {}: {errors:?}",
        ok + failed
    );
    assert!(
        errors.iter().all(|e| e.starts_with("503 ")),
        "only queue-deadline 503s: {errors:?}"
    );
    // The three act as one: each counts three members and is coordinated, the model's two
    // slots (limit 1 each) are owned by the pods together, and the others hand requests over.
    let (_, failed, errors) = under_load("three gateways as one", &ca.ca_pem, node, async {
        tokio::time::sleep(Duration::from_secs(3)).await;
    })
    .await;
    assert_eq!(failed, 0, "{errors:?}");
    // The load's 8 keep-alive connections can all land on the two pods that own a slot (kube-proxy
    // picks a pod per connection: (2/3)^8, one run in 26 — seen once, "sent 0"); 60 requests on
    // new connections each reach every pod, the one without a slot included.
    let fresh = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).expect("ca")])
        .resolve(HOST, node)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    for i in 0..60 {
        let r = fresh
            .post(format!(
                "https://{HOST}:{}/api/v1/service/iris/score",
                node.port()
            ))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(r#"{"data": [[5.1, 3.5, 1.4, 0.2]]}"#)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} on a new connection: {e}"));
        assert_eq!(r.status(), 200, "request {i} on a new connection");
    }
    let mut coordination = Vec::new();
    wait_until(
        "three gateway pods, each coordinated with three members",
        Duration::from_secs(60),
        || {
            coordination = gateway_metrics(&tb);
            coordination.len() == 3
                && coordination.iter().all(|(_, m)| {
                    series_value(m, "scoregate_coordination_members") == Some(3)
                        && series_value(m, r#"scoregate_coordination_state{state="coordinated"}"#)
                            == Some(1)
                })
        },
    );
    let mut shares = 0;
    let mut sent = 0;
    let mut received = 0;
    for (pod, m) in &coordination {
        assert_eq!(
            series_value(m, "scoregate_coordination_members"),
            Some(3),
            "{pod}"
        );
        assert_eq!(
            series_value(m, r#"scoregate_coordination_state{state="coordinated"}"#),
            Some(1),
            "{pod}"
        );
        shares += series_value(
            m,
            r#"scoregate_coordination_share_slots{service="iris",version="blue"}"#,
        )
        .unwrap_or(0);
        let handed = |d: &str| {
            series_value(
                m,
                &format!(
                    r#"scoregate_coordination_handed_over_total{{direction="{d}",service="iris"}}"#
                ),
            )
            .unwrap_or(0)
        };
        sent += handed("sent");
        received += handed("received");
    }
    println!(
        "gateway pods: shares of the model's limit {shares}, hand-overs sent {sent}, received {received}"
    );
    assert_eq!(
        shares, 2,
        "two model replicas of limit 1: two slots over the three pods"
    );
    assert!(sent > 0 && received > 0, "sent {sent}, received {received}");

    // Faults, measured: a gateway pod deleted, a model pod killed, under load.
    under_load("fault: a gateway pod deleted", &ca.ca_pem, node, async {
        let tb = &tb;
        tokio::task::block_in_place(|| {
            let name = first_pod(tb, "scoregate");
            kubectl_in(
                tb,
                &[
                    "-n",
                    "scoregate",
                    "delete",
                    "pod",
                    name.trim(),
                    "--wait=false",
                ],
            );
            rolled_out(tb, "scoregate", "scoregate");
        });
    })
    .await;
    under_load("fault: a model pod killed", &ca.ca_pem, node, async {
        let tb = &tb;
        tokio::task::block_in_place(|| {
            scale(tb, "models", "iris-blue", 2);
            let name = first_pod(tb, "models");
            kubectl_in(
                tb,
                &[
                    "-n",
                    "models",
                    "delete",
                    "pod",
                    name.trim(),
                    "--grace-period=0",
                    "--force",
                ],
            );
            rolled_out(tb, "models", "iris-blue");
            wait_until("2 ready endpoints", Duration::from_secs(60), || {
                ready_endpoints(tb) == 2
            });
        });
    })
    .await;

    // detach removes every object of scoregate and leaves the models running.
    let o = cli(&["detach", "aks-e2e"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // Its pods finish their preStop pause and drain first: everything is gone within a minute.
    let mut left = String::new();
    wait_until(
        "every object of scoregate gone",
        Duration::from_secs(90),
        || {
            left = kubectl_in(
                &tb,
                &[
                    "get",
                    "all,configmaps,secrets,serviceaccounts,roles,rolebindings,clusterroles,clusterrolebindings,poddisruptionbudgets",
                    "-A",
                    "-l",
                    "app.kubernetes.io/managed-by=scoregate",
                    "-o",
                    "name",
                ],
            );
            left.trim().is_empty()
        },
    );
    // The namespace attach created goes too (its deletion finishes once its pods are gone).
    assert!(
        o.stdout.contains("Namespace/scoregate"),
        "detach deletes the namespace attach created: {}{}",
        o.stdout,
        o.stderr
    );
    let mut namespaces = String::new();
    wait_until(
        "the namespace attach created gone",
        Duration::from_secs(90),
        || {
            namespaces = kubectl_in(&tb, &["get", "namespaces", "-o", "name"]);
            !namespaces.contains("namespace/scoregate\n")
        },
    );
    wait_until("the models still serve", Duration::from_secs(10), || {
        ready_endpoints(&tb) == 2
    });
    println!("end to end in {:.0?}", started.elapsed());
}
