//! Traffic split between versions within statistical tolerance, and the pin header winning.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

#[tokio::test]
async fn split_follows_traffic_percentile_and_pin_header_wins() {
    let blue = Backend::fixed(r#"{"v":"blue"}"#, Duration::ZERO).await;
    let green = Backend::fixed(r#"{"v":"green"}"#, Duration::ZERO).await;
    let pki = Pki::new(&["localhost"]);
    let toml = format!(
        r#"
[listen]
tls = "127.0.0.1:0"
{tls}
[[services]]
name = "iris"
primary_key = "{KEY}"
replica_max_concurrent_requests = 64

[[services.versions]]
name = "blue"
traffic_percentile = 70
replicas = ["{blue}"]

[[services.versions]]
name = "green"
is_default = true
replicas = ["{green}"]
"#,
        tls = pki.toml(),
        blue = blue.addr,
        green = green.addr
    );
    let gw = TestGateway::start(&toml).await;
    let c = client(&pki.ca_pem)
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let url = gw.https("/api/v1/service/iris/score");

    const N: usize = 2000;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..(N / 50) {
        let futs: Vec<_> = (0..50)
            .map(|_| {
                let c = c.clone();
                let url = url.clone();
                tokio::spawn(async move {
                    let r = post(&c, &url, Some(KEY), "{}").await;
                    assert_eq!(r.status(), 200);
                    let header = r.headers()["azureml-model-deployment"]
                        .to_str()
                        .expect("ascii")
                        .to_string();
                    let v: serde_json::Value = r.json().await.expect("json");
                    assert_eq!(
                        v["v"],
                        header.as_str(),
                        "the header names the version that answered"
                    );
                    header
                })
            })
            .collect();
        for f in futs {
            *counts.entry(f.await.expect("join")).or_default() += 1;
        }
    }
    let blue_n = counts.get("blue").copied().unwrap_or(0);
    let green_n = counts.get("green").copied().unwrap_or(0);
    assert_eq!(blue_n + green_n, N);
    // Binomial(2000, 0.7): sd ≈ 20.5; ±5 sd keeps false failures below one in a million.
    let expected = 0.7 * N as f64;
    let sd = (N as f64 * 0.7 * 0.3).sqrt();
    assert!(
        (blue_n as f64 - expected).abs() < 5.0 * sd,
        "blue {blue_n} / green {green_n}, expected about {expected}"
    );

    // The pin header wins over the split, both ways.
    for pin in ["green", "blue"] {
        for _ in 0..100 {
            let r = c
                .post(&url)
                .bearer_auth(KEY)
                .header("azureml-model-deployment", pin)
                .body("{}")
                .send()
                .await
                .expect("req");
            assert_eq!(r.headers()["azureml-model-deployment"], pin);
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn load_is_spread_over_replicas_of_a_version() {
    let a = Backend::fixed(r#"{"r":"a"}"#, Duration::from_millis(250)).await;
    let b = Backend::fixed(r#"{"r":"b"}"#, Duration::from_millis(250)).await;
    let pki = Pki::new(&["localhost"]);
    let gw = TestGateway::start(&service_toml(
        &pki,
        "max_request_wait_time = 5000",
        &[a.addr, b.addr],
    ))
    .await;
    let c = client(&pki.ca_pem).build().expect("client");
    let url = gw.https("/api/v1/service/iris/score");
    // Two concurrent requests at a time against two replicas with one slot each: both are used.
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        let pair: Vec<_> = (0..2)
            .map(|_| {
                let (c, url) = (c.clone(), url.clone());
                tokio::spawn(async move {
                    let r = post(&c, &url, Some(KEY), "{}").await;
                    assert_eq!(r.status(), 200);
                    r.json::<serde_json::Value>().await.expect("json")["r"]
                        .as_str()
                        .expect("r")
                        .to_string()
                })
            })
            .collect();
        for p in pair {
            *counts.entry(p.await.expect("join")).or_default() += 1;
        }
    }
    assert_eq!(counts.get("a"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");
    gw.stop().await;
}
