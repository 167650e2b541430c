//! End to end over TLS with real clients: reqwest (rustls) over HTTP/1.1 and HTTP/2, the real
//! `curl` binary, SNI choosing among certificates, h2c upstreams, header hygiene.
#![cfg(feature = "peer-tests")]

mod common;

use std::process::Command;

use common::*;

#[tokio::test]
async fn scores_over_http1_and_http2_with_reqwest() {
    let pki = Pki::new(&["localhost", "127.0.0.1"]);
    let model = Backend::model().await;
    let gw = TestGateway::start(&service_toml(&pki, "", &[model.addr])).await;
    for (h2, expected) in [
        (false, reqwest::Version::HTTP_11),
        (true, reqwest::Version::HTTP_2),
    ] {
        let b = client(&pki.ca_pem);
        let c = if h2 {
            b.http2_prior_knowledge()
        } else {
            b.http1_only()
        }
        .build()
        .expect("client");
        let resp = c
            .post(gw.https("/api/v1/service/iris/score"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .header("x-ms-request-id", "client-chosen-id-42")
            .body(ROWS)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.version(), expected);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-ms-request-id"], "client-chosen-id-42");
        assert_eq!(resp.headers()["azureml-model-deployment"], "blue");
        let v: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(v["predictions"][0]["label"], "not-virginica");
        assert_eq!(v["predictions"][1]["label"], "virginica");
    }
    // The secondary key works too; a generated request id is a UUID.
    let c = client(&pki.ca_pem).build().expect("client");
    let resp = c
        .post(gw.https("/api/v1/service/iris/score"))
        .bearer_auth(KEY2)
        .body(ROWS)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-ms-request-id"].len(), 36);
    gw.stop().await;
}

#[tokio::test]
async fn swagger_is_served_from_the_replica_without_a_key() {
    let pki = Pki::new(&["localhost"]);
    let model = Backend::model().await;
    let gw = TestGateway::start(&service_toml(&pki, "", &[model.addr])).await;
    let c = client(&pki.ca_pem).build().expect("client");
    let resp = c
        .get(gw.https("/api/v1/service/iris/swagger.json"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["swagger"], "2.0");
    assert!(v["paths"]["/score"]["post"].is_object());
    gw.stop().await;
}

#[tokio::test]
async fn curl_binary_scores_over_tls_both_protocols() {
    let pki = Pki::new(&["localhost", "127.0.0.1"]);
    let model = Backend::model().await;
    let gw = TestGateway::start(&service_toml(&pki, "", &[model.addr])).await;
    let url = gw.https("/api/v1/service/iris/score");
    for proto in ["--http1.1", "--http2"] {
        let ca = pki.ca_path();
        let url = url.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("curl")
                .args(["-sS", "--max-time", "20", proto, "--cacert"])
                .arg(&ca)
                .args(["-H", &format!("Authorization: Bearer {KEY}")])
                .args(["-H", "Content-Type: application/json", "-d", ROWS])
                .args(["-w", "\n%{http_code} %{http_version}", &url])
                .output()
                .expect("curl runs (scripts/test.sh installs it)")
        })
        .await
        .expect("join");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl {proto}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, status) = stdout.rsplit_once('\n').expect("status line");
        let expected_version = if proto == "--http2" {
            "200 2"
        } else {
            "200 1.1"
        };
        assert_eq!(status, expected_version);
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["predictions"][1]["label"], "virginica");
    }
    gw.stop().await;
}

/// Two certificates from two unrelated CAs: a client that trusts only one CA succeeds for its
/// name only, so each name must have been answered with its own certificate.
#[tokio::test]
async fn sni_picks_the_right_certificate() {
    let a = Pki::new(&["a.scoregate.test"]);
    let b = Pki::new(&["b.scoregate.test", "*.wild.scoregate.test"]);
    let model = Backend::model().await;
    let toml = format!("{}\n{}", service_toml(&a, "", &[model.addr]), b.toml());
    let gw = TestGateway::start(&toml).await;
    let port = gw.tls.expect("tls").port();
    let tls_addr = gw.tls.expect("tls");
    let get = |pki: &Pki, host: &str| {
        let c = client(&pki.ca_pem)
            .resolve(host, tls_addr)
            .build()
            .expect("client");
        let url = format!("https://{host}:{port}/api/v1/service/iris/swagger.json");
        async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
    };
    assert_eq!(get(&a, "a.scoregate.test").await.expect("a with CA a"), 200);
    assert_eq!(get(&b, "b.scoregate.test").await.expect("b with CA b"), 200);
    assert_eq!(
        get(&b, "x.wild.scoregate.test")
            .await
            .expect("wildcard with CA b"),
        200
    );
    assert!(
        get(&a, "b.scoregate.test").await.is_err(),
        "b must not be served a's certificate"
    );
    assert!(
        get(&b, "a.scoregate.test").await.is_err(),
        "a must not be served b's certificate"
    );
    // Unknown names get the default (first) certificate: openssl shows its subject.
    let out = tokio::task::spawn_blocking(move || {
        Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                "unknown.test",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl runs")
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CN = a.scoregate.test"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
    // The server's order wins: AES-128-GCM (SHA-256 key schedule) although OpenSSL lists
    // TLS_AES_256_GCM_SHA384 first.
    assert!(text.contains("TLS_AES_128_GCM_SHA256"), "{text}");
    gw.stop().await;
}

#[tokio::test]
async fn tls12_is_offered_and_alpn_prefers_h2() {
    let pki = Pki::new(&["localhost"]);
    let model = Backend::model().await;
    let gw = TestGateway::start(&service_toml(&pki, "", &[model.addr])).await;
    let port = gw.tls.expect("tls").port();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-tls1_2",
                "-alpn",
                "h2,http/1.1",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl runs")
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Protocol  : TLSv1.2"), "{text}");
    assert!(text.contains("ECDHE-ECDSA-AES128-GCM-SHA256"), "{text}");
    assert!(text.contains("ALPN protocol: h2"), "{text}");
    let metrics = reqwest::get(gw.admin_url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"scoregate_tls_handshakes_total{result="ok",version="1.2"} 1"#),
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn h2c_upstream_and_header_hygiene() {
    let pki = Pki::new(&["localhost"]);
    let echo = Backend::echo().await;
    let toml = service_toml(&pki, "", &[echo.addr])
        .replace("name = \"blue\"", "name = \"blue\"\nprotocol = \"h2c\"");
    let gw = TestGateway::start(&toml).await;
    let c = client(&pki.ca_pem).http1_only().build().expect("client");
    // The first request on the connection is the fast path's (raw, turned into a map for the
    // h2c replica); naming a header in `Connection` hands the connection to hyper.
    for hop in [false, true] {
        let mut req = c
            .post(gw.https("/api/v1/service/iris/score?verbose=1"))
            .bearer_auth(KEY)
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-custom", "kept")
            .body("{}");
        if hop {
            req = req
                .header("connection", "keep-alive, x-hop")
                .header("x-hop", "must-not-pass");
        }
        let resp = req.send().await.expect("request");
        assert_eq!(resp.status(), 200);
        let rid = resp.headers()["x-ms-request-id"]
            .to_str()
            .expect("id")
            .to_string();
        let v: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(v["version"], "HTTP/2.0", "h2c to the replica: {v}");
        assert_eq!(v["uri"], format!("http://{}/score?verbose=1", echo.addr));
        let h = &v["headers"];
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-ms-request-id"], rid.as_str());
        assert_eq!(h["x-custom"], "kept");
        assert!(
            h.get("x-hop").is_none() && h.get("connection").is_none(),
            "hop-by-hop header forwarded: {h}"
        );
        assert!(
            h.get("authorization").is_none(),
            "the gateway key leaked upstream: {h}"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn http1_upstream_connections_are_reused() {
    let pki = Pki::new(&["localhost"]);
    let echo = Backend::echo().await;
    let gw = TestGateway::start(&service_toml(&pki, "", &[echo.addr])).await;
    let c = client(&pki.ca_pem).build().expect("client");
    let mut ports = std::collections::HashSet::new();
    for _ in 0..20 {
        let v: serde_json::Value =
            post(&c, &gw.https("/api/v1/service/iris/score"), Some(KEY), "{}")
                .await
                .json()
                .await
                .expect("json");
        assert_eq!(v["version"], "HTTP/1.1");
        assert_eq!(v["uri"], "/score");
        ports.insert(v["peer"].as_str().map(str::to_string));
    }
    // Sequential requests to one replica: the pool keeps and reuses one connection.
    assert_eq!(ports.len(), 1, "upstream connections: {ports:?}");
    gw.stop().await;
}
