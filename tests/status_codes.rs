//! Every status code the gateway produces, for real: 401, 404, 405, 413, 431, 502, 503, 504,
//! each with its JSON reason and headers.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn gateway_with(extra: &str, replicas: &[std::net::SocketAddr]) -> (Pki, TestGateway) {
    let pki = Pki::new(&["localhost"]);
    let gw = TestGateway::start(&service_toml(&pki, extra, replicas)).await;
    (pki, gw)
}

#[tokio::test]
async fn unauthorized_without_or_with_a_wrong_key() {
    let model = Backend::model().await;
    let (pki, gw) = gateway_with("", &[model.addr]).await;
    let c = client(&pki.ca_pem).build().expect("client");
    let url = gw.https("/api/v1/service/iris/score");
    let resp = post(&c, &url, None, ROWS).await;
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    expect_error(resp, 401, "auth_missing").await;
    let resp = post(&c, &url, Some("wrong-key-0123456789abc"), ROWS).await;
    expect_error(resp, 401, "auth_invalid_key").await;
    let resp = c
        .post(&url)
        .header("authorization", "Basic Zm9vOmJhcg==")
        .body(ROWS)
        .send()
        .await
        .expect("request");
    expect_error(resp, 401, "auth_malformed").await;
    let metrics = reqwest::get(gw.admin_url("/metrics"))
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    assert!(
        metrics.contains(
            r#"scoregate_requests_rejected_total{reason="auth_invalid_key",service="iris"} 1"#
        ),
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn token_auth_accepts_a_valid_jwt_only() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    const SECRET: &str = "a-very-long-hs256-secret-for-tests-000";
    let model = Backend::model().await;
    let pki = Pki::new(&["localhost"]);
    let toml = service_toml(&pki, "", &[model.addr])
        .replace(&format!("primary_key = \"{KEY}\"\nsecondary_key = \"{KEY2}\""), &format!(
            "token_auth_enabled = true\n[services.token]\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\naudience = \"scoring\""
        ));
    let gw = TestGateway::start(&toml).await;
    let c = client(&pki.ca_pem).build().expect("client");
    let url = gw.https("/api/v1/service/iris/score");
    let now = jsonwebtoken::get_current_timestamp();
    let token = |aud: &str, exp: u64| {
        encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"aud": aud, "exp": exp}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode")
    };
    let ok = c
        .post(&url)
        .bearer_auth(token("scoring", now + 300))
        .body(ROWS)
        .send()
        .await
        .expect("req");
    assert_eq!(ok.status(), 200);
    let expired = c
        .post(&url)
        .bearer_auth(token("scoring", now - 300))
        .body(ROWS)
        .send()
        .await
        .expect("req");
    expect_error(expired, 401, "auth_token_expired").await;
    let aud = c
        .post(&url)
        .bearer_auth(token("other", now + 300))
        .body(ROWS)
        .send()
        .await
        .expect("req");
    expect_error(aud, 401, "auth_invalid_token").await;
    let key = post(&c, &url, Some(KEY), ROWS).await;
    expect_error(key, 401, "auth_invalid_token").await;
    gw.stop().await;
}

#[tokio::test]
async fn not_found_for_unknown_service_path_or_version_and_405() {
    let model = Backend::model().await;
    let (pki, gw) = gateway_with("", &[model.addr]).await;
    let c = client(&pki.ca_pem).build().expect("client");
    let r = post(&c, &gw.https("/api/v1/service/nope/score"), Some(KEY), ROWS).await;
    expect_error(r, 404, "service_not_found").await;
    let r = c
        .get(gw.https("/somewhere/else"))
        .send()
        .await
        .expect("req");
    expect_error(r, 404, "not_found").await;
    let r = c
        .post(gw.https("/api/v1/service/iris/score"))
        .bearer_auth(KEY)
        .header("azureml-model-deployment", "purple")
        .body(ROWS)
        .send()
        .await
        .expect("req");
    expect_error(r, 404, "version_not_found").await;
    let r = c
        .get(gw.https("/api/v1/service/iris/score"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("req");
    assert_eq!(r.headers()["allow"], "POST");
    expect_error(r, 405, "method_not_allowed").await;
    gw.stop().await;
}

#[tokio::test]
async fn payload_too_large_declared_or_streamed() {
    let model = Backend::model().await;
    let pki = Pki::new(&["localhost"]);
    let toml = service_toml(&pki, "", &[model.addr]).replace(
        "[[services]]",
        "[limits]\nmax_body_bytes = 1024\n\n[[services]]",
    );
    let gw = TestGateway::start(&toml).await;
    let c = client(&pki.ca_pem).build().expect("client");
    let url = gw.https("/api/v1/service/iris/score");
    // Declared by Content-Length.
    let r = c
        .post(&url)
        .bearer_auth(KEY)
        .body(vec![b' '; 2048])
        .send()
        .await
        .expect("req");
    expect_error(r, 413, "payload_too_large").await;
    // Streamed without a length (chunked): caught while forwarding.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b' '; 512])).collect();
    let body = reqwest::Body::wrap_stream(tokio_stream::iter(chunks));
    let r = c
        .post(&url)
        .bearer_auth(KEY)
        .body(body)
        .send()
        .await
        .expect("req");
    expect_error(r, 413, "payload_too_large").await;
    // Under the limit still works.
    let r = post(&c, &url, Some(KEY), ROWS).await;
    assert_eq!(r.status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn default_limit_is_100_mb_and_checked_before_reading() {
    let model = Backend::model().await;
    let (_pki, gw) = gateway_with("", &[model.addr]).await;
    // Raw HTTP/1.1 on the plain listener: declare 100 MB + 1 and send no body at all.
    let mut s = tokio::net::TcpStream::connect(gw.http.expect("http"))
        .await
        .expect("connect");
    let req = format!(
        "POST /api/v1/service/iris/score HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-length: {}\r\n\r\n",
        100 * 1024 * 1024 + 1
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("answer without reading the body")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
    gw.stop().await;
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let model = Backend::model().await;
    let (pki, gw) = gateway_with("", &[model.addr]).await;
    let c = client(&pki.ca_pem).http1_only().build().expect("client");
    let r = c
        .post(gw.https("/api/v1/service/iris/score"))
        .bearer_auth(KEY)
        .header("x-big", "a".repeat(70 * 1024))
        .body(ROWS)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 431);
    gw.stop().await;
}

#[tokio::test]
async fn bad_gateway_when_the_replica_drops_or_is_down() {
    let (dropping, _t) = dropping_backend().await;
    let (pki, gw) = gateway_with("", &[dropping]).await;
    let c = client(&pki.ca_pem).build().expect("client");
    let r = post(&c, &gw.https("/api/v1/service/iris/score"), Some(KEY), ROWS).await;
    let body = expect_error(r, 502, "replica_closed_connection").await;
    assert!(
        !body.to_string().contains("127.0.0.1"),
        "no upstream address in the body: {body}"
    );
    gw.stop().await;

    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let (pki, gw) = gateway_with("", &[down]).await;
    let c = client(&pki.ca_pem).build().expect("client");
    let r = post(&c, &gw.https("/api/v1/service/iris/score"), Some(KEY), ROWS).await;
    expect_error(r, 502, "replica_unreachable").await;
    gw.stop().await;
}

#[tokio::test]
async fn gateway_timeout_when_the_model_is_slower_than_scoring_timeout() {
    let slow = Backend::fixed(r#"{"late":true}"#, Duration::from_secs(3)).await;
    let (pki, gw) = gateway_with("scoring_timeout_ms = 300", &[slow.addr]).await;
    let c = client(&pki.ca_pem).build().expect("client");
    let started = std::time::Instant::now();
    let r = post(&c, &gw.https("/api/v1/service/iris/score"), Some(KEY), ROWS).await;
    let body = expect_error(r, 504, "scoring_timeout").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout took effect"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("300 ms"))
    );
    gw.stop().await;
}

#[tokio::test]
async fn service_unavailable_when_replicas_stay_busy() {
    let slow = Backend::fixed(r#"{"ok":true}"#, Duration::from_millis(1500)).await;
    let (pki, gw) = gateway_with("max_request_wait_time = 200", &[slow.addr]).await;
    let c = client(&pki.ca_pem).build().expect("client");
    let url = gw.https("/api/v1/service/iris/score");
    let burst: Vec<_> = (0..5)
        .map(|_| {
            let c = c.clone();
            let url = url.clone();
            tokio::spawn(async move { post(&c, &url, Some(KEY), ROWS).await })
        })
        .collect();
    let mut ok = 0;
    let mut unavailable = 0;
    for t in burst {
        let r = t.await.expect("join");
        match r.status().as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(r.headers()["retry-after"], "1");
                let body = expect_error(r, 503, "replicas_saturated").await;
                assert_eq!(body["error"]["saturated"], "replicas");
                assert!(body["error"]["message"].as_str().is_some_and(|m| {
                    m.starts_with("Too many requests for service iris (overloaded)")
                }));
                unavailable += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        (ok, unavailable),
        (1, 4),
        "concurrency 1: one served, the rest waited 200 ms and gave up"
    );
    gw.stop().await;
}

#[tokio::test]
async fn service_unavailable_from_the_gateway_when_its_queue_is_full() {
    let slow = Backend::fixed(r#"{"ok":true}"#, Duration::from_millis(1500)).await;
    let (pki, gw) = gateway_with(
        "max_request_wait_time = 5000\nmax_queued_requests = 1",
        &[slow.addr],
    )
    .await;
    let c = client(&pki.ca_pem).build().expect("client");
    let url = gw.https("/api/v1/service/iris/score");
    let send = |c: reqwest::Client, url: String| {
        tokio::spawn(async move { post(&c, &url, Some(KEY), ROWS).await })
    };
    let first = send(c.clone(), url.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = send(c.clone(), url.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = post(&c, &url, Some(KEY), ROWS).await;
    let body = expect_error(third, 503, "gateway_saturated").await;
    assert_eq!(body["error"]["saturated"], "gateway");
    assert_eq!(first.await.expect("join").status(), 200);
    assert_eq!(
        second.await.expect("join").status(),
        200,
        "the queued request was served"
    );
    gw.stop().await;
}

#[tokio::test]
async fn auth_is_checked_before_taking_a_queue_slot() {
    let slow = Backend::fixed(r#"{"ok":true}"#, Duration::from_millis(1500)).await;
    let (pki, gw) = gateway_with("max_request_wait_time = 1000", &[slow.addr]).await;
    let c = client(&pki.ca_pem).build().expect("client");
    let url = gw.https("/api/v1/service/iris/score");
    let busy = {
        let (c, url) = (c.clone(), url.clone());
        tokio::spawn(async move { post(&c, &url, Some(KEY), ROWS).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The only slot is busy: an unauthenticated request is refused at once, not queued.
    let started = std::time::Instant::now();
    let r = post(&c, &url, Some("not-the-key-0123456789"), ROWS).await;
    expect_error(r, 401, "auth_invalid_key").await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "401 came after {:?}",
        started.elapsed()
    );
    assert_eq!(busy.await.expect("join").status(), 200);
    gw.stop().await;
}

#[tokio::test]
async fn header_read_timeout_closes_a_slowloris_connection() {
    let model = Backend::model().await;
    let pki = Pki::new(&["localhost"]);
    let toml = service_toml(&pki, "", &[model.addr]).replace(
        "[[services]]",
        "[limits]\nheader_read_timeout_ms = 300\n\n[[services]]",
    );
    let gw = TestGateway::start(&toml).await;
    let mut s = tokio::net::TcpStream::connect(gw.http.expect("http"))
        .await
        .expect("connect");
    s.write_all(b"POST /api/v1/service/iris/score HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    // Dribble one header byte every 100 ms; the gateway gives up after 300 ms in total.
    let mut closed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(b"x").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1024];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            closed = true;
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
            break;
        }
    }
    assert!(closed, "slowloris connection still open after 5 s");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    gw.stop().await;
}
