//! `/metrics` scraped by a real Prometheus server (started here on loopback, bounded waits) and
//! linted by `promtool check metrics`.
#![cfg(feature = "peer-tests")]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: scoregate\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        // Prometheus cannot be told to pick a port itself; retry on the rare collision.
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", cfg.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("prometheus runs (scripts/test.sh installs Debian's prometheus)");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if ready(port) {
                    return Prometheus {
                        child,
                        port,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("prometheus did not become ready");
    }

    async fn query(&self, q: &str) -> serde_json::Value {
        let encoded: String = q
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let url = format!(
            "http://127.0.0.1:{}/api/v1/query?query={encoded}",
            self.port
        );
        reqwest::Client::new()
            .get(url)
            .send()
            .await
            .expect("query")
            .json()
            .await
            .expect("json")
    }

    /// The first sample's value of an instant query, waiting (bounded) until there is one.
    async fn wait_value(&self, q: &str, deadline: Duration) -> f64 {
        let end = Instant::now() + deadline;
        loop {
            let v = self.query(q).await;
            if let Some(s) = v["data"]["result"][0]["value"][1].as_str() {
                return s.parse().expect("number");
            }
            assert!(
                Instant::now() < end,
                "no result for {q} within {deadline:?}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Blocking readiness probe (the caller is synchronous): a raw HTTP/1.0 GET of /-/ready.
fn ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    if s.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

// Multi-threaded: starting Prometheus blocks this test's thread while the gateway keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_and_promtool_accepts_the_metrics() {
    let model = Backend::model().await;
    let pki = Pki::new(&["localhost"]);
    let gw = TestGateway::start(&service_toml(&pki, "", &[model.addr])).await;
    let c = client(&pki.ca_pem).build().expect("client");
    let url = gw.https("/api/v1/service/iris/score");
    for _ in 0..10 {
        let r = post(&c, &url, Some(KEY), ROWS).await;
        assert_eq!(r.status(), 200);
    }
    let r = post(&c, &url, None, ROWS).await;
    assert_eq!(r.status(), 401);

    // promtool lints the exposition exactly as served.
    let text = reqwest::get(gw.admin_url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    {
        use std::io::Write;
        lint.stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    let out = lint.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let prom = Prometheus::start(gw.admin.expect("admin"));
    let up = prom
        .wait_value(r#"up{job="scoregate"}"#, Duration::from_secs(30))
        .await;
    assert_eq!(up, 1.0);
    let ok = prom
        .wait_value(
            r#"sum(scoregate_request_duration_seconds_count{service="iris",version="blue",code="200"})"#,
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(ok, 10.0);
    let rejected = prom
        .wait_value(
            r#"scoregate_requests_rejected_total{service="iris",reason="auth_missing"}"#,
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(rejected, 1.0);
    // The histogram is usable for latency quantiles.
    let p99 = prom
        .wait_value(
            r#"histogram_quantile(0.99, sum by (le) (scoregate_upstream_duration_seconds_bucket{service="iris"}))"#,
            Duration::from_secs(15),
        )
        .await;
    assert!(p99 > 0.0 && p99 < 5.0, "p99 model time {p99}");
    gw.stop().await;
}
