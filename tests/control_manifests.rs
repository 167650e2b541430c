//! deploy/ is what `scoregate attach` applies: the kustomize overlays, rendered by kubectl, equal
//! `attach --dry-run` object for object; they (and the example model) pass the real API
//! server's validation (`kubectl apply --server-side --dry-run=server`); the Grafana dashboard
//! only queries series the gateway exports.
#![cfg(feature = "peer-tests")]

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use common::*;
use scoregate::tls::DevCa;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Objects keyed by `Kind/namespace/name`.
fn by_key(list: &Value) -> BTreeMap<String, Value> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|o| {
            let key = format!(
                "{}/{}/{}",
                o["kind"].as_str().unwrap_or(""),
                o["metadata"]["namespace"].as_str().unwrap_or(""),
                o["metadata"]["name"].as_str().unwrap_or("")
            );
            (key, o.clone())
        })
        .collect()
}

/// `kubectl kustomize <overlay>` as JSON (kubectl converts; no YAML parser of our own).
fn kustomize(tb: &Testbed, overlay: &str) -> Value {
    let yaml = tb.kubectl(&["kustomize", &format!("{ROOT}/deploy/overlays/{overlay}")]);
    let mut child = Command::new(kubectl())
        .arg("--kubeconfig")
        .arg(&tb.kubeconfig)
        .args(["create", "--dry-run=client", "-o", "json", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write");
    }
    let out = child.wait_with_output().expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One JSON document per object.
    let items: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .expect("json stream");
    serde_json::json!({ "items": items })
}

fn attach_dry_run(extra: &[&str], cert: &str, key: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_scoregate"))
        .args([
            "attach",
            "example",
            "--ssl-cname",
            "scoring.example.com",
            "--ssl-cert-pem-file",
            cert,
            "--ssl-key-pem-file",
            key,
            "--dry-run",
            "-o",
            "json",
            "--workspace",
            "/nonexistent/ws.json",
        ])
        .args(extra)
        .output()
        .expect("scoregate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_manifests_equal_what_attach_applies_and_pass_the_api_server() {
    let tb = Testbed::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::new("manifests CA").expect("ca");
    let leaf = ca
        .issue(&["scoring.example.com".to_string()])
        .expect("leaf");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &leaf.cert_pem).expect("w");
    std::fs::write(&key, &leaf.key_pem).expect("w");
    let (cert, key) = (cert.to_str().expect("p"), key.to_str().expect("p"));

    for (overlay, extra) in [
        ("public", &[][..]),
        ("internal", &["--load-balancer", "InternalLoadBalancer"][..]),
    ] {
        let rendered = by_key(&kustomize(&tb, overlay));
        // Least privilege for the gateway's pod: non-root, read-only root filesystem, no
        // capabilities, no privilege escalation, the runtime's seccomp profile.
        let pod = &rendered["Deployment/scoregate/scoregate"]["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{pod}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        for c in pod["containers"].as_array().expect("containers") {
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{c}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{c}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{c}"
            );
        }
        let attach = by_key(&attach_dry_run(extra, cert, key));
        assert_eq!(
            rendered.keys().collect::<Vec<_>>(),
            attach.keys().collect::<Vec<_>>(),
            "{overlay}: the same objects"
        );
        for (k, want) in &attach {
            assert_eq!(
                &rendered[k], want,
                "{overlay}: {k} differs from `scoregate attach --dry-run`; regenerate deploy/base \
                 (see its header)"
            );
        }
    }

    // The real API server validates every field (a typo fails here).
    tb.kubectl(&["create", "namespace", "scoregate"]);
    tb.kubectl(&["create", "namespace", "models"]);
    for overlay in ["public", "internal"] {
        let out = tb.kubectl(&[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-k",
            &format!("{ROOT}/deploy/overlays/{overlay}"),
        ]);
        assert!(
            out.contains("deployment.apps/scoregate serverside-applied (server dry run)"),
            "{out}"
        );
    }
    let out = tb.kubectl(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        &format!("{ROOT}/deploy/example-model/iris.yaml"),
    ]);
    assert!(out.contains("service/iris-blue"), "{out}");
}

#[test]
fn the_grafana_dashboard_queries_only_exported_series() {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/deploy/grafana/scoregate-dashboard.json"))
            .expect("dashboard"),
    )
    .expect("dashboard is JSON");
    let metrics_src = std::fs::read_to_string(format!("{ROOT}/src/metrics.rs")).expect("src");
    let mut seen = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("scoregate_") {
                    continue;
                }
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .unwrap_or(word);
                assert!(
                    metrics_src.contains(&format!("\"{base}\"")),
                    "panel {:?} queries {word}, which the gateway does not export",
                    panel["title"]
                );
                seen += 1;
            }
        }
    }
    assert!(seen >= 15, "only {seen} series queried");
}
