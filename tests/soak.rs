//! Soak: `scoregate serve` under a mixed load (HTTP/1.1 and HTTP/2 clients) for
//! `SCOREGATE_SOAK_SECS` (default 60; `scripts/soak.sh 600` for ten minutes) while, every two
//! seconds, its certificate files rotate, its configuration file is rewritten (a second service
//! comes and goes, settings change) and one replica flips between serving and dropping every
//! request. Each cycle is checked to take effect: new handshakes get the certificate just
//! installed, and the service the new configuration adds (or removes) answers 200 (or 404).
//! Asserts: no unexpected error (the only tolerated failures are the flapping replica's
//! 502s before outlier detection ejects it), RSS and open descriptors stable from start to end.
#![cfg(feature = "peer-tests")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A replica that answers 200 while `healthy`, else reads the request and hangs up.
async fn flapping_replica(
    healthy: Arc<AtomicBool>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let healthy = healthy.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                    // One request per connection: head plus its (small, length-framed) body.
                    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if seen.len() >= end + 4 + len {
                        break;
                    }
                }
                if healthy.load(Ordering::Relaxed) {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\nconnection: close\r\n\r\n{\"who\":\"flap\"}\n")
                        .await;
                }
            });
        }
    });
    (addr, task)
}

fn config(files: &RotatingCert, replicas: &[std::net::SocketAddr], round: u64) -> String {
    let reps: Vec<String> = replicas.iter().map(|a| format!("\"{a}\"")).collect();
    let wine = if !round.is_multiple_of(2) {
        format!(
            "\n[[services]]\nname = \"wine\"\nprimary_key = \"{KEY}\"\n[[services.versions]]\nname = \"blue\"\nreplicas = [{}]\n",
            reps[0]
        )
    } else {
        String::new()
    };
    format!(
        r#"{listen}
[[services]]
name = "iris"
primary_key = "{KEY}"
replica_max_concurrent_requests = 16
max_request_wait_time = {wait}
outlier_consecutive_failures = 3
outlier_base_ejection_ms = 1500

[[services.versions]]
name = "blue"
replicas = [{reps}]
{wine}"#,
        listen = files.listen_toml(100, ""),
        wait = 2000 + round % 3 * 100,
        reps = reps.join(", "),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_rotations_reloads_and_replica_failures() {
    let secs: u64 = env_or("SCOREGATE_SOAK_SECS", 60);
    let files = RotatingCert::new("soak CA");
    let ca = &files.ca;
    let (a, b) = (
        Backend::fixed(r#"{"who":"a"}"#, Duration::from_millis(1)).await,
        Backend::fixed(r#"{"who":"b"}"#, Duration::from_millis(1)).await,
    );
    let healthy = Arc::new(AtomicBool::new(true));
    let (flap, _flap_task) = flapping_replica(healthy.clone()).await;
    let replicas = [a.addr, b.addr, flap];
    let gw = ServeProcess::start(&config(&files, &replicas, 0), "warn,scoregate=info", &[]);
    let port = gw.tls.expect("tls").port();
    let url = format!("https://localhost:{port}/api/v1/service/iris/score");

    let (ok, expected, unexpected, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let first_error: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let builder = client(&ca.ca_pem).pool_max_idle_per_host(4);
            let c = if i % 2 == 0 {
                builder.http1_only()
            } else {
                builder
            }
            .build()
            .expect("client");
            let url = url.clone();
            let (ok, expected, unexpected, stop, first_error) = (
                ok.clone(),
                expected.clone(),
                unexpected.clone(),
                stop.clone(),
                first_error.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = c.post(&url).bearer_auth(KEY).body(ROWS).send().await;
                    let outcome = match r {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body = r.text().await;
                            match (status, body) {
                                (200, Ok(_)) => Ok(()),
                                (502, Ok(b)) if b.contains("replica_closed_connection") => {
                                    Err(None)
                                }
                                (s, b) => Err(Some(format!("{s}: {b:?}"))),
                            }
                        }
                        Err(e) => Err(Some(format!("client error: {e:?}"))),
                    };
                    match outcome {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(None) => expected.fetch_add(1, Ordering::Relaxed),
                        Err(Some(e)) => {
                            if let Ok(mut f) = first_error.lock() {
                                f.get_or_insert(e);
                            }
                            unexpected.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    // Warm up, then the baseline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss0, fds0) = (gw.rss_kib(), gw.fds());
    let started = Instant::now();
    let (mut rotations, mut reloads, mut flaps) = (0u64, 0u64, 0u64);
    let mut round = 0u64;
    let checker = client(&ca.ca_pem).build().expect("client");
    let wine = format!("https://localhost:{port}/api/v1/service/wine/score");
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        round += 1;
        let pair = (round % 2) as usize;
        files.install(pair);
        write_atomic(&gw.config, config(&files, &replicas, round).as_bytes());
        if round.is_multiple_of(3) {
            gw.signal("HUP");
        }
        if round.is_multiple_of(4) {
            healthy.fetch_xor(true, Ordering::Relaxed);
            flaps += 1;
        }
        // Each cycle takes effect: new handshakes get the certificate just installed, and the
        // `wine` service answers exactly while the configuration has it.
        let fp = pem_fingerprint(&files.pairs[pair].cert_pem);
        let t = Instant::now();
        while served_fingerprint(&ca.ca_pem, &url).await.ok().as_ref() != Some(&fp) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "round {round}: the rotated certificate is not served"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rotations += 1;
        let want = if round % 2 == 1 { 200 } else { 404 };
        let t = Instant::now();
        loop {
            let status = post(&checker, &wine, Some(KEY), ROWS).await.status();
            if status == want {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "round {round}: the reloaded route answers {status}, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        reloads += 1;
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    // Let idle connections and pooled upstream connections settle before the final reading.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss1, fds1) = (gw.rss_kib(), gw.fds());
    let (ok, expected, unexpected) = (
        ok.load(Ordering::Relaxed),
        expected.load(Ordering::Relaxed),
        unexpected.load(Ordering::Relaxed),
    );
    println!(
        "soak {elapsed:.0?}: {ok} ok ({:.0}/s), {expected} expected 502s from the flapping replica, {unexpected} unexpected; {rotations} rotations, {reloads} config rewrites, {flaps} replica flips; RSS {rss0} -> {rss1} KiB, fds {fds0} -> {fds1}",
        ok as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(
        unexpected,
        0,
        "first unexpected error: {:?}",
        first_error.lock().map(|f| f.clone())
    );
    assert!(ok > 100 * secs, "the load ran: {ok}");
    assert!(
        rotations >= secs / 4 && reloads == rotations,
        "every cycle's rotation and reload took effect: {rotations}, {reloads}"
    );
    assert!(
        expected <= ok / 20,
        "ejection keeps the flapping replica's failures rare: {expected} of {ok}"
    );
    assert!(
        rss1 <= rss0 + 32 * 1024,
        "RSS grew from {rss0} to {rss1} KiB"
    );
    assert!(fds1 <= fds0 + 32, "descriptors grew from {fds0} to {fds1}");
    let log = gw.log();
    assert!(!log.contains("panicked"), "{log}");
}
