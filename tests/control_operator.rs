//! The operator's first hour, against the real API server of the test bed (which runs no
//! controllers: Pods, their status and Events are created the way the kubelet would, and the
//! namespace controller's last step, finalizing a deleted namespace, is done by the test): the
//! capacity verdict, progress while waiting and what is missing, Ctrl-C while waiting, the
//! cluster reached later without flags, re-attaching while the namespace is still being deleted,
//! and the certificate commands that destroy or overwrite key material.
#![cfg(feature = "peer-tests")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The CLI with only `KUBECONFIG` naming the cluster (no flag) and a `HOME` of its own.
fn command(home: &Path, kubeconfig: Option<&Path>, ws: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_scoregate"));
    c.args(args)
        .args(["--workspace", s(ws)])
        .env("RUST_LOG", "warn")
        .env("HOME", home)
        .env_remove("KUBERNETES_SERVICE_HOST");
    match kubeconfig {
        Some(k) => c.env("KUBECONFIG", k),
        None => c.env_remove("KUBECONFIG"),
    };
    c
}

fn run(c: &mut Command) -> CliOut {
    let o = c.output().expect("run scoregate");
    CliOut {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A running CLI whose stderr lines arrive on a channel as they are printed.
struct Live {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Live {
    fn spawn(mut c: Command) -> Live {
        let mut child = c
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let err = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Live {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Wait for a line containing `needle`.
    fn until(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line with {needle:?} within {within:?}:\n{}",
            self.seen.join("\n")
        );
    }

    /// Exit code and every stderr line, once it ends.
    fn finish(mut self) -> (i32, String) {
        let code = self.child.wait().expect("wait").code().unwrap_or(-1);
        self.seen.extend(self.lines.iter());
        (code, self.seen.join("\n"))
    }
}

/// A gateway Pod as the kubelet would report one whose image cannot be pulled.
async fn pod_with_image_pull_failure(client: &kube::Client, ns: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "scoregate-6d4f-abcde", "labels": {
            "app.kubernetes.io/name": "scoregate", "scoregate.io/compute": "aks-dev"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "gateway", "image": "scoregate:missing"}]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let status = json!({"status": {"phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
        "containerStatuses": [{"name": "gateway", "image": "scoregate:missing", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff",
            "message": "Back-off pulling image \"scoregate:missing\""}}}]}});
    pods.patch_status(
        "scoregate-6d4f-abcde",
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .expect("pod status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_first_hour_on_a_real_api_server() {
    let tb = Testbed::start();
    let client = tb.client().await;
    let home = tempfile::tempdir().expect("home");
    let ws = home.path().join("ws.json");
    let kc = tb.kubeconfig.clone();
    let cli = |args: &[&str]| command(home.path(), Some(&kc), &ws, args);

    // No Node at all: DevTest attaches with one verdict on capacity; the wait says every 10 s at
    // least what it waits for and what is missing, a broken Pod included, then times out saying
    // how to go on.
    let mut attach = Live::spawn(cli(&[
        "attach",
        "aks-dev",
        "--purpose",
        "DevTest",
        "--no-ssl",
        "--load-balancer",
        "InternalLoadBalancer",
        "--timeout",
        "24",
    ]));
    let verdict = attach.until("vCPUs", Duration::from_secs(30));
    assert!(
        verdict.contains("warning: 0 vCPUs") && verdict.contains("below the 2 recommended"),
        "{verdict}"
    );
    attach.until("no gateway Pod exists yet", Duration::from_secs(30));
    pod_with_image_pull_failure(&client, "scoregate").await;
    attach.until(
        "Pod scoregate-6d4f-abcde: image pull failing (ImagePullBackOff)",
        Duration::from_secs(15),
    );
    let (code, err) = attach.finish();
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("enough for"), "one verdict only:\n{err}");
    let waits: Vec<&str> = err.lines().filter(|l| l.contains("waiting (")).collect();
    assert!(
        waits.len() >= 3,
        "a progress line at least every 10 s over 24 s:\n{err}"
    );
    assert!(err.contains("load balancer has no address yet"), "{err}");
    assert!(
        err.contains("timed out after 24 s")
            && err.contains("`scoregate status aks-dev`")
            && err.contains("`scoregate detach aks-dev`"),
        "{err}"
    );

    // Later, with no KUBECONFIG and no flag: the workspace's record names the cluster.
    let o = run(&mut command(
        home.path(),
        None,
        &ws,
        &["status", "aks-dev", "-o", "json"],
    ));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["compute"], "aks-dev");

    // Ctrl-C while an update waits: exit 130, saying what state is left and what to run.
    let mut update = Live::spawn(cli(&[
        "update",
        "aks-dev",
        "--image",
        "scoregate:other",
        "--timeout",
        "60",
    ]));
    update.until("waiting (", Duration::from_secs(30));
    let pid = update.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let (code, err) = update.finish();
    assert_eq!(code, 130, "{err}");
    assert!(
        err.contains("interrupted")
            && err.contains("`scoregate status aks-dev`")
            && err.contains("`scoregate detach aks-dev`"),
        "{err}"
    );

    // Detach, then attach again at once: the namespace is still being deleted. A short wait ends
    // saying what to run; a longer one waits, saying so, until it is gone.
    // (The garbage collector would delete the Pod with its Deployment's ReplicaSet, and the
    // kubelet confirm it gone: at once here.)
    Api::<Pod>::namespaced(client.clone(), "scoregate")
        .delete(
            "scoregate-6d4f-abcde",
            &kube::api::DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .expect("delete pod");
    let o = run(&mut cli(&["detach", "aks-dev", "-o", "json"]));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["namespace_deleted"], true, "{v}");
    let again = [
        "attach",
        "aks-dev",
        "--purpose",
        "DevTest",
        "--no-ssl",
        "--load-balancer",
        "InternalLoadBalancer",
        "--no-wait",
    ];
    let o = run(&mut cli(&[&again[..], &["--timeout", "3"]].concat()));
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("Namespace scoregate is still being deleted")
            && o.stderr.contains("kubectl get namespace scoregate")
            && o.stderr.contains("--namespace NAME")
            && !o.stderr.contains("Status {"),
        "one sentence, no debug dump:\n{}",
        o.stderr
    );
    let mut waiting = Live::spawn(cli(&[&again[..], &["--timeout", "60"]].concat()));
    waiting.until(
        "Namespace scoregate is being deleted",
        Duration::from_secs(30),
    );
    // The namespace controller's last step: the namespace's content is gone, finalize it.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns = namespaces
        .get("scoregate")
        .await
        .expect("terminating namespace");
    if let Some(spec) = ns.spec.as_mut() {
        spec.finalizers = Some(vec![]);
    }
    namespaces
        .replace_subresource("finalize", "scoregate", &PostParams::default(), &ns)
        .await
        .expect("finalize");
    let (code, err) = waiting.finish();
    assert_eq!(code, 0, "attached once the namespace was gone:\n{err}");

    // Key material: a custom certificate, exported once; not overwritten without --force; not
    // deleted without --yes; then ACME mode, where there is no Secret to export.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = scoregate::tls::DevCa::new("operator CA").expect("ca");
    let leaf = ca
        .issue(&["scoring.example.com".to_string()])
        .expect("leaf");
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, &leaf.cert_pem).expect("w");
    std::fs::write(&key, &leaf.key_pem).expect("w");
    let o = run(&mut cli(&[
        "update",
        "aks-dev",
        "--ssl-cert-pem-file",
        s(&cert),
        "--ssl-key-pem-file",
        s(&key),
        "--ssl-cname",
        "scoring.example.com",
        "--no-wait",
    ]));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(&mut cli(&["cert", "status", "aks-dev", "-o", "json"]));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["rotation_complete"], false);
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no gateway Pod found")),
        "{v}"
    );
    let table = run(&mut cli(&["cert", "status", "aks-dev"]));
    assert!(
        table.stdout.contains("REPLICAS") && table.stdout.contains("none"),
        "{}",
        table.stdout
    );
    let out = dir.path().join("export");
    let o = run(&mut cli(&["cert", "export", "aks-dev", "--dir", s(&out)]));
    assert_eq!(o.code, 0, "{}", o.stderr);
    std::fs::write(out.join("key.pem"), "edited").expect("w");
    let o = run(&mut cli(&["cert", "export", "aks-dev", "--dir", s(&out)]));
    assert_eq!(o.code, 64, "{}", o.stderr);
    assert_eq!(
        std::fs::read_to_string(out.join("key.pem")).expect("r"),
        "edited"
    );
    let o = run(&mut cli(&[
        "cert",
        "export",
        "aks-dev",
        "--dir",
        s(&out),
        "--force",
    ]));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        std::fs::read_to_string(out.join("key.pem")).expect("r"),
        leaf.key_pem
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "scoregate");
    let o = run(&mut cli(&["cert", "disable", "aks-dev", "--no-wait"]));
    assert_eq!(o.code, 64, "{}", o.stderr);
    assert!(
        o.stderr.contains("--yes") && o.stderr.contains("cert export"),
        "{}",
        o.stderr
    );
    assert!(
        secrets
            .get_opt("scoregate-tls")
            .await
            .expect("get")
            .is_some(),
        "kept"
    );
    let o = run(&mut cli(&[
        "cert",
        "disable",
        "aks-dev",
        "--no-wait",
        "--yes",
    ]));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        secrets
            .get_opt("scoregate-tls")
            .await
            .expect("get")
            .is_none(),
        "deleted"
    );
    let o = run(&mut cli(&[
        "update",
        "aks-dev",
        "--leaf-domain-label",
        "mymodel",
        "--region",
        "westeurope",
        "--no-wait",
    ]));
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(&mut cli(&[
        "cert",
        "export",
        "aks-dev",
        "--dir",
        s(&dir.path().join("acme")),
    ]));
    assert_eq!(o.code, 1, "{}", o.stderr);
    assert!(
        o.stderr.contains("by ACME")
            && o.stderr.contains("`scoregate cert status aks-dev`")
            && o.stderr.contains("`scoregate cert renew aks-dev`")
            && !o.stderr.contains("cert set"),
        "{}",
        o.stderr
    );
}
