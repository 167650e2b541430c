//! A failure half-way through `attach` is reported object by object, records nothing, and the
//! same command run again converges. The failure is real: the operator's identity (a
//! ServiceAccount token) may create namespaced objects but not ClusterRoles, so the API server
//! refuses the third object with a 403.
#![cfg(feature = "peer-tests")]

mod common;

use common::*;

fn cli(args: &[&str]) -> (i32, String) {
    let o = scoregate(args);
    (o.code, o.stderr)
}

const LIMITED: &str = r#"{"apiVersion": "v1", "kind": "List", "items": [
 {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
  "metadata": {"name": "operator-without-cluster-rbac"},
  "rules": [
   {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
   {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "create"]},
   {"apiGroups": [""], "resources": ["configmaps", "serviceaccounts"], "verbs": ["get", "list", "create", "patch"]}
  ]},
 {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
  "metadata": {"name": "operator-without-cluster-rbac"},
  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "operator-without-cluster-rbac"},
  "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": "default"}]}
]}"#;

#[test]
fn a_failed_attach_says_what_was_applied_and_a_rerun_converges() {
    let tb = Testbed::start();
    let dir = tempfile::tempdir().expect("tempdir");
    tb.node("n1", "4");
    let rbac = dir.path().join("rbac.json");
    std::fs::write(&rbac, LIMITED).expect("w");
    tb.kubectl(&["create", "serviceaccount", "operator", "-n", "default"]);
    tb.kubectl(&["apply", "-f", rbac.to_str().expect("p")]);
    let token = tb.kubectl(&["create", "token", "operator", "-n", "default"]);
    let limited = tb.kubeconfig_with_token(token.trim());
    let ws = dir.path().join("ws.json");
    let attach = |kubeconfig: &std::path::Path| {
        cli(&[
            "attach",
            "aks-dev",
            "--purpose",
            "DevTest",
            "--no-ssl",
            "--load-balancer",
            "InternalLoadBalancer",
            "--no-wait",
            "--kubeconfig",
            kubeconfig.to_str().expect("p"),
            "--workspace",
            ws.to_str().expect("p"),
        ])
    };

    let (code, err) = attach(&limited);
    assert_eq!(code, 1, "{err}");
    for want in [
        "applying ClusterRole/scoregate-discovery failed",
        "forbidden",
        "applied before the failure: ServiceAccount/scoregate/scoregate",
        "run the same command again (it converges)",
    ] {
        assert!(err.contains(want), "{want:?} missing in:\n{err}");
    }
    assert!(
        !err.contains("Status {") && !err.contains("ErrorResponse"),
        "the API server's answer in words, not a debug dump:\n{err}"
    );
    assert!(!ws.exists(), "nothing recorded in the workspace");
    assert!(
        tb.kubectl(&["get", "configmap", "-n", "kube-system", "-o", "name"])
            .lines()
            .all(|l| l != "configmap/scoregate-attachment"),
        "no marker after a failed attach"
    );

    // The same command with enough rights converges (the ServiceAccount is re-applied).
    let (code, err) = attach(&tb.kubeconfig);
    assert_eq!(code, 0, "{err}");
    tb.kubectl(&["get", "clusterrole", "scoregate-discovery"]);
    tb.kubectl(&[
        "get",
        "configmap",
        "-n",
        "kube-system",
        "scoregate-attachment",
    ]);
    assert!(ws.exists());
}
