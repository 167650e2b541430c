//! `scoregate serve` reloads its configuration on SIGHUP and on file change, under load: a valid
//! file swaps the routes with no failed request, an invalid one is refused with its errors (the
//! field named) and the running routes stay, sections read at start are kept with a warning.
//! SIGTERM under load then drains every in-flight request and exits 0.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;

fn config(pki: &Pki, services: &str, extra: &str) -> String {
    format!(
        "[listen]\ntls = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[tls]\nreload_poll_ms = 200\nreload_debounce_ms = 100\n{}\n{extra}\n{services}",
        pki.toml()
    )
}

fn service(name: &str, replica: std::net::SocketAddr) -> String {
    format!(
        "[[services]]\nname = \"{name}\"\nprimary_key = \"{KEY}\"\n\n[[services.versions]]\nname = \"blue\"\nreplicas = [\"{replica}\"]\n"
    )
}

/// Clients scoring `iris` in a loop until stopped: (requests, failures, last body).
struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(c: &reqwest::Client, url: &str, clients: usize) -> Load {
        let (ok, failed, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let tasks = (0..clients)
            .map(|_| {
                let (c, url) = (c.clone(), url.to_string());
                let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let sent = c.post(&url).bearer_auth(KEY).body(ROWS).send().await;
                        let body = match sent.and_then(|r| r.error_for_status()) {
                            Ok(r) => r.bytes().await.ok(),
                            Err(_) => None,
                        };
                        match body {
                            Some(_) => ok.fetch_add(1, Ordering::Relaxed),
                            None => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        Load {
            ok,
            failed,
            stop,
            tasks,
        }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

async fn who(c: &reqwest::Client, url: &str) -> (u16, String) {
    let r = post(c, url, Some(KEY), ROWS).await;
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_file_changes_reload_under_load_and_bad_files_are_refused() {
    let a = Backend::fixed(r#"{"who":"a"}"#, Duration::from_millis(2)).await;
    let b = Backend::fixed(r#"{"who":"b"}"#, Duration::from_millis(2)).await;
    let pki = Pki::new(&["localhost"]);
    let gw = ServeProcess::start(&config(&pki, &service("iris", a.addr), ""), "info", &[]);
    let port = gw.tls.expect("tls").port();
    let url = |s: &str| format!("https://localhost:{port}/api/v1/service/{s}/score");
    let c = client(&pki.ca_pem).build().expect("client");
    assert_eq!(who(&c, &url("iris")).await, (200, r#"{"who":"a"}"#.into()));
    assert_eq!(who(&c, &url("wine")).await.0, 404);

    let load = Load::start(&c, &url("iris"), 4);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // SIGHUP: iris moves to b, wine appears.
    let two = format!("{}\n{}", service("iris", b.addr), service("wine", b.addr));
    write_atomic(&gw.config, config(&pki, &two, "").as_bytes());
    gw.signal("HUP");
    gw.wait_log("configuration reloaded", Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(who(&c, &url("iris")).await, (200, r#"{"who":"b"}"#.into()));
    assert_eq!(who(&c, &url("wine")).await.0, 200);

    // An invalid file is refused, naming the field; b and wine keep serving.
    let bad = two.replace(
        "name = \"blue\"",
        "name = \"blue\"\ntraffic_percentile = 250",
    );
    // It also changes [limits]: the later valid file still differs from what is *running*.
    write_atomic(
        &gw.config,
        config(&pki, &bad, "[limits]\nmax_connections = 10").as_bytes(),
    );
    gw.signal("HUP");
    let log = gw.wait_log("configuration refused", Duration::from_secs(10));
    assert!(
        log.contains("traffic_percentile"),
        "the refusal names the field:\n{log}"
    );
    assert_eq!(who(&c, &url("iris")).await, (200, r#"{"who":"b"}"#.into()));
    assert_eq!(who(&c, &url("wine")).await.0, 200);

    // A file change alone (no signal) is picked up; a changed [limits] is kept with a warning.
    write_atomic(
        &gw.config,
        config(
            &pki,
            &service("iris", a.addr),
            "[limits]\nmax_connections = 10",
        )
        .as_bytes(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while who(&c, &url("wine")).await.0 != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "file change not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(who(&c, &url("iris")).await, (200, r#"{"who":"a"}"#.into()));
    let log = gw.wait_log("restart to apply them", Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(log.contains("limits"), "{log}");

    let (ok, failed) = load.stop().await;
    println!("under reloads: {ok} requests, {failed} failed");
    assert!(ok > 50, "the load ran ({ok})");
    assert_eq!(failed, 0, "no request failed across three reloads");
    let metrics = reqwest::get(format!("http://{}/metrics", gw.admin.expect("admin")))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert_eq!(
        counter(
            &metrics,
            r#"scoregate_config_reloads_total{result="ok",source="file"}"#
        ),
        2
    );
    assert_eq!(
        counter(
            &metrics,
            r#"scoregate_config_reloads_total{result="rejected",source="file"}"#
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_every_request_and_exits_zero() {
    let slow = Backend::fixed(r#"{"ok":true}"#, Duration::from_millis(300)).await;
    let pki = Pki::new(&["localhost"]);
    let extra = "[limits]\nshutdown_grace_ms = 10000";
    let svc = service("iris", slow.addr).replace(
        "primary_key",
        "replica_max_concurrent_requests = 64\nprimary_key",
    );
    let mut gw = ServeProcess::start(&config(&pki, &svc, extra), "info", &[]);
    let url = format!(
        "https://localhost:{}/api/v1/service/iris/score",
        gw.tls.expect("tls").port()
    );
    let c = client(&pki.ca_pem).build().expect("client");
    // 32 requests in flight (each takes 300 ms at the replica) when SIGTERM arrives.
    let inflight: Vec<_> = (0..32)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                let r = post(&c, &url, Some(KEY), ROWS).await;
                (r.status().as_u16(), r.text().await.unwrap_or_default())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.signal("TERM");
    for t in inflight {
        let (status, body) = t.await.expect("join");
        assert_eq!((status, body.as_str()), (200, r#"{"ok":true}"#));
    }
    let code = tokio::task::spawn_blocking(move || {
        let code = gw.wait_exit(Duration::from_secs(15));
        (code, gw.log())
    })
    .await
    .expect("join");
    assert_eq!(code.0, Some(0), "exit code; log:\n{}", code.1);
    assert!(code.1.contains("drained"), "{}", code.1);
}
