//! No secret reaches the log, at the most verbose level (`debug`, `trace` for scoregate): service
//! keys and JWT secrets through auth successes and failures, private keys through certificate
//! loads, a rotation and a refused key, and configuration errors that quote keys. (ACME account and
//! certificate keys: `acme_pebble.rs`, with the same capture.)
#![cfg(feature = "peer-tests")]

mod common;

use std::time::Duration;

use common::*;

const JWT_SECRET: &str = "jwt-hs256-secret-never-logged-000000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_tokens_and_private_keys_never_reach_the_log() {
    let logs = capture_logs();
    let files = RotatingCert::new("secrets test CA");
    let (ca, [first, second], key) = (&files.ca, &files.pairs, &files.key);
    let model = Backend::model().await;
    let toml = format!(
        r#"{listen}
[[services]]
name = "iris"
primary_key = "{KEY}"
secondary_key = "{KEY2}"

[[services.versions]]
name = "blue"
replicas = ["{replica}"]

[[services]]
name = "token"
token_auth_enabled = true
[services.token]
algorithm = "HS256"
secret = "{JWT_SECRET}"
audience = "scoring"

[[services.versions]]
name = "blue"
replicas = ["{replica}"]
"#,
        listen = files.listen_toml(50, ""),
        replica = model.addr,
    );
    let gw = TestGateway::start(&toml).await;
    let c = client(&ca.ca_pem).build().expect("client");
    let port = gw.tls.expect("tls").port();
    let url = |s: &str| format!("https://localhost:{port}/api/v1/service/{s}/score");

    // Auth: right and wrong keys, a near miss, a token signed with the wrong secret, a good one.
    let wrong_key = "wrong-key-that-is-also-secret-0123";
    let near_miss = format!("{KEY}x");
    for (key, status) in [
        (KEY, 200),
        (KEY2, 200),
        (wrong_key, 401),
        (near_miss.as_str(), 401),
    ] {
        assert_eq!(
            post(&c, &url("iris"), Some(key), ROWS).await.status(),
            status
        );
    }
    let claims = serde_json::json!({"aud": "scoring", "exp": 4_000_000_000u64});
    let sign = |secret: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("jwt")
    };
    let (good, forged) = (sign(JWT_SECRET), sign("another-secret-0000000000000000"));
    assert_eq!(
        post(&c, &url("token"), Some(&good), ROWS).await.status(),
        200
    );
    assert_eq!(
        post(&c, &url("token"), Some(&forged), ROWS).await.status(),
        401
    );

    // A rotation, then a key that does not match its certificate (refused; the last good stays).
    files.install(1);
    let fp = pem_fingerprint(&second.cert_pem);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while served_fingerprint(&ca.ca_pem, &url("iris")).await.ok() != Some(fp.clone()) {
        assert!(std::time::Instant::now() < deadline, "rotation not served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    write_atomic(key, first.key_pem.as_bytes());
    // Wait for the refusal itself (the key does not match the certificate), not for a while.
    let refused = r#"scoregate_certificate_reloads_total{result="rejected",source="files"}"#;
    while series_value(&gw.app_metrics.render(), refused).is_none() {
        assert!(
            std::time::Instant::now() < deadline + Duration::from_secs(10),
            "the mismatched key was not refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counter(&gw.app_metrics.render(), refused), 1);
    assert_eq!(
        served_fingerprint(&ca.ca_pem, &url("iris")).await.ok(),
        Some(fp)
    );

    // Configuration errors about keys name the field, never the value.
    let short = "short-secret-k";
    let bad = toml
        .replace(KEY, short)
        .replace(JWT_SECRET, "tiny-jwt-secret");
    let err = scoregate::config::from_toml(&bad, std::path::Path::new("."))
        .expect_err("short keys are refused")
        .to_string();
    assert!(err.contains("primary_key"), "{err}");
    assert_not_logged(&err, short, "a refused key in the error message");
    assert_not_logged(
        &err,
        "tiny-jwt-secret",
        "a refused JWT secret in the error message",
    );
    gw.stop().await;

    let log = logs.text();
    assert!(
        log.contains("auth") || log.contains("refused"),
        "the capture works: {} bytes",
        log.len()
    );
    assert!(log.len() > 1000, "verbose logs were captured");
    for (secret, what) in [
        (KEY, "the primary key"),
        (KEY2, "the secondary key"),
        (wrong_key, "a presented wrong key"),
        (near_miss.as_str(), "a presented near-miss key"),
        (JWT_SECRET, "the JWT secret"),
        (good.as_str(), "a presented token"),
        (forged.as_str(), "a forged token"),
        (first.key_pem.as_str(), "the first private key"),
        (second.key_pem.as_str(), "the second private key"),
    ] {
        assert_not_logged(&log, secret, what);
    }
}

/// The check itself: a log line quoting any 24 characters of a key is caught, wherever they start,
/// across the key's line breaks too (the key lines joined, as a log quoting it joined would).
#[test]
fn every_window_of_a_secret_is_looked_for() {
    let key = "-----BEGIN KEY-----\nABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghij\nklmnopqrstuvwxyz0123456789\n-----END KEY-----";
    // Offset 29 of the body, 24 characters across the break after "j".
    let leak = "debug: loaded ...defghijklmnopqrstuvwxyz0... from the file";
    let caught = std::panic::catch_unwind(|| assert_not_logged(leak, key, "the key"));
    assert!(
        caught.is_err(),
        "an unaligned window spanning lines is caught"
    );
    assert_not_logged("debug: nothing secret here", key, "the key");
}
