//! Certificate rotation under load: 100 swaps between two certificates by rewriting the PEM
//! files while ≥ 16 keep-alive connections and fresh-handshake clients hammer the TLS listener.
//! No request may fail; new handshakes must see the new fingerprint shortly after each swap.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

const KEEPALIVE_CLIENTS: usize = 16;
const FRESH_CLIENTS: usize = 4;
const ROTATIONS: usize = 100;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_rotations_under_load_fail_no_request() {
    let files = RotatingCert::new("rotation test CA");
    let (ca, pairs) = (&files.ca, &files.pairs);
    let fps = [
        pem_fingerprint(&pairs[0].cert_pem),
        pem_fingerprint(&pairs[1].cert_pem),
    ];

    let model = Backend::model().await;
    let toml = format!(
        "{}\n{}",
        files.listen_toml(20, "cname = \"localhost\""),
        iris_service(model.addr, "replica_max_concurrent_requests = 64"),
    );
    let gw = TestGateway::start(&toml).await;
    let url = gw.https("/api/v1/service/iris/score");
    let probe = gw.https("/");
    assert_eq!(
        served_fingerprint(&ca.ca_pem, &probe).await.expect("probe"),
        fps[0]
    );

    let stop = Arc::new(AtomicBool::new(false));
    let rotating = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..KEEPALIVE_CLIENTS + FRESH_CLIENTS {
        let fresh = i >= KEEPALIVE_CLIENTS;
        let b = client(&ca.ca_pem);
        let b = if fresh {
            b.pool_max_idle_per_host(0)
        } else {
            b
        };
        let c = if i % 2 == 0 { b.http1_only() } else { b }
            .build()
            .expect("client");
        let (url, stop, rotating, failures) = (
            url.clone(),
            stop.clone(),
            rotating.clone(),
            failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut calm, mut during) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = match c.post(&url).bearer_auth(KEY).body(ROWS).send().await {
                    Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
                    _ => false,
                };
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                if rotating.load(Ordering::Relaxed) {
                    &mut during
                } else {
                    &mut calm
                }
                .push(t.elapsed());
            }
            (calm, during)
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    rotating.store(true, Ordering::Relaxed);
    let mut lags = Vec::new();
    for n in 1..=ROTATIONS {
        let next = n % 2;
        let t = Instant::now();
        files.install(next);
        loop {
            if served_fingerprint(&ca.ca_pem, &probe).await.as_deref() == Ok(fps[next].as_str()) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "rotation {n} not served within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lags.push(t.elapsed());
    }
    rotating.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let (mut calm, mut during) = (Vec::new(), Vec::new());
    for t in tasks {
        let (c, d) = t.await.expect("load task");
        calm.extend(c);
        during.extend(d);
    }
    calm.sort();
    during.sort();
    lags.sort();
    let failed = failures.load(Ordering::Relaxed);
    println!(
        "rotations {ROTATIONS}: lag p50 {:?} max {:?}; requests calm {} (p99 {:?}), during rotation {} (p99 {:?}); failed {failed}",
        pct(&lags, 0.5),
        pct(&lags, 1.0),
        calm.len(),
        pct(&calm, 0.99),
        during.len(),
        pct(&during, 0.99),
    );
    assert_eq!(failed, 0, "requests failed during rotation");
    assert!(
        during.len() > 500,
        "the load kept running during rotation: {}",
        during.len()
    );
    // Poll 20 ms + debounce 50 ms: a swap is served well within half a second.
    assert!(
        pct(&lags, 0.5) < Duration::from_millis(500),
        "median lag {:?}",
        pct(&lags, 0.5)
    );

    let status: serde_json::Value = reqwest::get(gw.admin_url("/certificates"))
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    assert_eq!(
        status["certificates"][0]["fingerprint_sha256"],
        fps[ROTATIONS % 2].as_str()
    );
    let metrics = reqwest::get(gw.admin_url("/metrics"))
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    let ok_reloads = metrics
        .lines()
        .find(|l| {
            l.starts_with(r#"scoregate_certificate_reloads_total{result="ok",source="files"}"#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("reload counter");
    assert!(
        ok_reloads >= ROTATIONS as u64,
        "{ok_reloads} reloads for {ROTATIONS} rotations"
    );
    assert!(metrics.contains(&format!(
        r#"scoregate_certificate_info{{fingerprint_sha256="{}",name="localhost"}} 1"#,
        fps[ROTATIONS % 2]
    )));
    assert!(
        !metrics.contains(&fps[(ROTATIONS + 1) % 2]),
        "the old fingerprint series was removed"
    );
    gw.stop().await;
}
