//! The Open Inference Protocol (v2) over REST through the gateway, against real peers: KServe's
//! model server (the `kserve` package) as one version's replica, the demo model as the other's,
//! Triton's HTTP client (`tritonclient.http`) and curl (HTTP/2) as clients, over TLS with key
//! auth. The gateway answers `/v2`, `/v2/health/live|ready` itself and routes
//! `/v2/models/<name>[/versions/<v>]/...` to the service `<name>` (the version picks the
//! replicas); its own errors are v2 errors that the client library reads (status and message).
#![cfg(feature = "peer-tests")]

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_rest_through_tls_with_key_auth_tritonclient_and_kserve() {
    let (kserve, http_port, _) = kserve_iris().await;
    let demo = Backend::model().await;
    let pki = Pki::new(&["localhost"]);
    let toml = format!(
        r#"
[listen]
tls = "127.0.0.1:0"
admin = "127.0.0.1:0"

{tls}

[[services]]
name = "iris"
primary_key = "{KEY}"

[[services.versions]]
name = "blue"
traffic_percentile = 100
is_default = true
replicas = ["127.0.0.1:{http_port}"]

[[services.versions]]
name = "green"
replicas = ["{green}"]
"#,
        tls = pki.toml(),
        green = demo.addr
    );
    let gw = TestGateway::start(&toml).await;
    let url = format!("localhost:{}", gw.tls.expect("tls").port());
    let ca = pki.ca_path().display().to_string();
    let args = |version: &str| {
        [
            "--url",
            &url,
            "--ca",
            &ca,
            "--key",
            KEY,
            "--model",
            "iris",
            "--version",
            version,
        ]
        .map(String::from)
        .to_vec()
    };
    // The expected answer: the same logistic regression in both replicas.
    let p = serde_json::json!([0.0, 0.9054]);
    for (version, replica_version) in [("blue", serde_json::Value::Null), ("green", "1".into())] {
        let r = run_peer_json("v2_client.py", &args(version), Duration::from_secs(120)).await;
        let ok = |k: &str| r[k]["ok"].clone();
        assert_eq!(ok("server_live"), true, "{r}");
        assert_eq!(ok("server_ready"), true, "{r}");
        assert_eq!(ok("server_metadata")["name"], "scoregate", "{r}");
        assert_eq!(ok("model_ready"), true, "{version}: {r}");
        assert_eq!(ok("model_metadata"), "iris", "{version}: {r}");
        // Unpinned: the traffic split (100% blue, KServe); pinned by the path's version.
        assert_eq!(ok("infer")["p_virginica"], p, "{r}");
        assert_eq!(ok("infer")["id"], "req-1", "{r}");
        assert_eq!(ok("infer")["model_version"], serde_json::Value::Null, "{r}");
        assert_eq!(ok("infer_version")["p_virginica"], p, "{version}: {r}");
        assert_eq!(
            ok("infer_version")["model_version"],
            replica_version,
            "{version} answered by its own replica: {r}"
        );
        // The gateway's refusals, as the library reads them.
        let err = |k: &str| {
            (
                r[k]["status"].clone(),
                r[k]["message"].as_str().unwrap_or("").to_string(),
            )
        };
        let (s, m) = err("infer_no_key");
        assert_eq!(s, "401", "{r}");
        assert!(m.contains("missing Authorization header"), "{r}");
        let (s, m) = err("infer_wrong_key");
        assert_eq!(s, "401", "{r}");
        assert!(!m.is_empty() && !m.contains(KEY), "{r}");
        let (s, m) = err("infer_unknown_model");
        assert_eq!(s, "404", "{r}");
        assert!(m.contains("\"no-such-model\" does not exist"), "{r}");
        let (s, m) = err("infer_unknown_version");
        assert_eq!(s, "404", "{r}");
        assert!(m.contains("no version \"no-such-version\""), "{r}");
    }

    // HTTP/2 (curl, ALPN h2): an inference pinned by the path, its request id and version
    // headers; a path version that contradicts the pin header is refused, naming both.
    let infer = r#"{"id":"h2","inputs":[{"name":"measurements","shape":[1,4],"datatype":"FP32","data":[6.7,3.0,5.2,2.3]}]}"#;
    let curl = |path: &str, extra: &[&str]| {
        let mut c = std::process::Command::new("curl");
        c.args(["-sS", "--http2", "--cacert", &ca, "-D", "-", "-o", "-"])
            .args(["-H", &format!("Authorization: Bearer {KEY}")])
            .args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                infer,
            ])
            .args(extra)
            .arg(gw.https(path));
        let out = c.output().expect("curl");
        assert!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let out = curl("/v2/models/iris/versions/green/infer", &[]);
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert!(out.contains("azureml-model-deployment: green"), "{out}");
    assert!(out.contains(r#""data":[0.9054]"#), "{out}");
    assert!(out.contains(r#""id":"h2""#), "{out}");
    let out = curl(
        "/v2/models/iris/versions/green/infer",
        &["-H", "azureml-model-deployment: blue"],
    );
    assert!(out.starts_with("HTTP/2 400"), "{out}");
    assert!(
        out.contains(r#""error":"the path names version \"green\" and the azureml-model-deployment header \"blue\""#),
        "{out}"
    );

    // Every v2 request for a configured service counted under its protocol: per client run,
    // model ready, metadata, 2 infers, 2 refused for their key and the unknown version (7; the
    // unknown model names no service), and the 2 curl requests. The health and server
    // metadata calls are the gateway's own and not counted.
    let m = gw.metrics().await;
    let v2 = counter(&m, r#"scoregate_requests_by_protocol_total{protocol="v2"}"#);
    assert_eq!(v2, 2 * 7 + 2, "v2 requests counted\n{m}");
    assert_eq!(
        counter(
            &m,
            r#"scoregate_requests_by_protocol_total{protocol="azureml"}"#
        ),
        0
    );
    gw.stop().await;
    drop(kserve);
}

/// The health endpoints over TLS with a real client: ready (the admin port's `/readyz` flag:
/// serving, not draining, certificates delivered; the 503 when not is a unit test of
/// `proxy`), live, and only GET and HEAD, refused in the v2 error shape.
#[tokio::test]
async fn v2_health_answers_and_methods() {
    let demo = Backend::model().await;
    let pki = Pki::new(&["localhost"]);
    let gw = TestGateway::start(&service_toml(&pki, "", &[demo.addr])).await;
    let c = client(&pki.ca_pem).build().expect("client");
    let ready = c
        .get(gw.https("/v2/health/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<serde_json::Value>().await.expect("json"),
        serde_json::json!({"ready": true})
    );
    let live = c
        .get(gw.https("/v2/health/live"))
        .send()
        .await
        .expect("live");
    assert_eq!(live.status(), 200);
    let post = c
        .post(gw.https("/v2/health/live"))
        .send()
        .await
        .expect("post");
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
    let body: serde_json::Value = post.json().await.expect("json");
    assert_eq!(body["code"], "method_not_allowed", "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("GET, HEAD")),
        "{body}"
    );
    assert_eq!(
        reqwest::get(gw.admin_url("/readyz"))
            .await
            .expect("readyz")
            .status(),
        200
    );
    gw.stop().await;
}
