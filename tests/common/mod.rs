//! Shared test harness: the real gateway assembled in-process on 127.0.0.1:0, real scoring
//! backends (hyper servers with scripted behaviour), real TLS clients trusting generated CAs.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const KEY: &str = "test-primary-key-0123456789";
pub const KEY2: &str = "test-secondary-key-0123456789";

/// A CA + leaf written to a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
}

impl Pki {
    pub fn new(names: &[&str]) -> Pki {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let ss = scoregate::tls::SelfSigned::generate(&names).expect("generate certificate");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cert.pem"), &ss.cert_pem).expect("write cert");
        std::fs::write(dir.path().join("key.pem"), &ss.key_pem).expect("write key");
        std::fs::write(dir.path().join("ca.pem"), &ss.ca_pem).expect("write ca");
        Pki {
            dir,
            ca_pem: ss.ca_pem,
        }
    }

    pub fn cert(&self) -> String {
        self.dir.path().join("cert.pem").display().to_string()
    }

    pub fn key(&self) -> String {
        self.dir.path().join("key.pem").display().to_string()
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The `[[tls.certificates]]` table for this pair.
    pub fn toml(&self) -> String {
        format!(
            "[[tls.certificates]]\ncert = {:?}\nkey = {:?}\n",
            self.cert(),
            self.key()
        )
    }
}

/// A gateway running in-process.
pub struct TestGateway {
    pub tls: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub app_metrics: scoregate::metrics::Metrics,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestGateway {
    /// Start from configuration text (listeners should use port 0).
    pub async fn start(toml: &str) -> TestGateway {
        scoregate::tls::install_default_provider();
        let config = scoregate::config::from_toml(toml, Path::new("."))
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{toml}"));
        let app = scoregate::App::build(&config).expect("build app");
        let metrics = app.metrics.clone();
        let listeners = scoregate::Listeners::bind(&config.listen)
            .await
            .expect("bind");
        let a = listeners.addrs();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(scoregate::run(app, listeners, async {
            let _ = rx.await;
        }));
        TestGateway {
            tls: a.tls,
            http: a.http,
            admin: a.admin,
            app_metrics: metrics,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn https(&self, path: &str) -> String {
        format!(
            "https://localhost:{}{path}",
            self.tls.expect("tls listener").port()
        )
    }

    pub fn http_url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}{path}",
            self.http.expect("http listener").port()
        )
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("admin listener"))
    }

    /// Signal shutdown and wait (bounded) for the drain to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("gateway drained within 30 s")
                .expect("gateway task");
        }
    }
}

impl TestGateway {
    /// The admin port's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// Wait (bounded by `within`) until the series reaches `at_least`.
    pub async fn wait_metric(&self, series: &str, at_least: u64, within: Duration) {
        let t = std::time::Instant::now();
        loop {
            let m = self.metrics().await;
            if series_value(&m, series).is_some_and(|v| v >= at_least) {
                return;
            }
            assert!(
                t.elapsed() < within,
                "{series} did not reach {at_least} within {within:?}:\n{m}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// A scoring backend with scripted behaviour, on 127.0.0.1:0 (HTTP/1.1 and h2c).
pub struct Backend {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start<F, Fut>(handler: F) -> Backend
    where
        F: Fn(Request<Incoming>, SocketAddr) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let h = handler.clone();
                let svc = service_fn(move |req| {
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req, peer).await) }
                });
                let conn = builder
                    .serve_connection(TokioIo::new(stream), svc)
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        Backend { addr, task }
    }

    /// The demo's real model (`POST /score`, `GET /swagger.json`).
    pub async fn model() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind model");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(scoregate::demo::model::serve(
            listener,
            std::future::pending(),
        ));
        Backend { addr, task }
    }

    /// Answers `body` with 200 after `delay`.
    pub async fn fixed(body: &'static str, delay: Duration) -> Backend {
        Backend::start(move |_req, _| async move {
            tokio::time::sleep(delay).await;
            json_response(body)
        })
        .await
    }

    /// Echoes what it received: method, path, version and headers, as JSON.
    pub async fn echo() -> Backend {
        Backend::start(|req: Request<Incoming>, peer: SocketAddr| async move {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                .collect();
            let v = serde_json::json!({
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "version": format!("{:?}", req.version()),
                "headers": headers,
                "peer": peer.to_string(),
            });
            let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
            r.headers_mut()
                .insert("content-type", "application/json".parse().expect("v"));
            r.headers_mut()
                .insert("connection", "keep-alive".parse().expect("v"));
            r
        })
        .await
    }
}

/// A request's whole body as a replica received it (empty if reading it failed).
pub async fn body_bytes(body: Incoming) -> Bytes {
    use http_body_util::BodyExt;
    body.collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}

pub fn json_response(body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("v"));
    r
}

/// A TCP backend that reads the request, then closes without answering.
pub async fn dropping_backend() -> (SocketAddr, JoinHandle<()>) {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                drop(s);
            });
        }
    });
    (addr, task)
}

/// A reqwest client trusting only `ca_pem`.
pub fn client(ca_pem: &str) -> reqwest::ClientBuilder {
    scoregate::tls::install_default_provider();
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca pem");
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(30))
}

/// A free port on 127.0.0.1 for an external program that cannot be told to use port 0.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Standard single-service config around one or more replica addresses.
pub fn service_toml(pki: &Pki, extra_service: &str, replicas: &[SocketAddr]) -> String {
    let reps: Vec<String> = replicas.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
[listen]
tls = "127.0.0.1:0"
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

{tls}

[[services]]
name = "iris"
primary_key = "{KEY}"
secondary_key = "{KEY2}"
{extra_service}

[[services.versions]]
name = "blue"
replicas = [{reps}]
"#,
        tls = pki.toml(),
        reps = reps.join(", ")
    )
}

/// POST `body` with `Authorization: Bearer <key>` (no header when `key` is `None`).
pub async fn post(
    c: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: &'static str,
) -> reqwest::Response {
    let mut r = c.post(url).body(body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    r.send().await.expect("request")
}

pub const ROWS: &str = r#"{"data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}"#;

/// Assert the gateway's JSON error shape and return the body.
pub async fn expect_error(resp: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status for {code}");
    let rid = resp
        .headers()
        .get("x-ms-request-id")
        .expect("x-ms-request-id on every answer")
        .to_str()
        .expect("ascii")
        .to_string();
    assert_eq!(
        resp.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("")),
        Some("application/json")
    );
    let body: serde_json::Value = resp.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["request_id"], rid.as_str());
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    body
}

/// Hex SHA-256 of DER bytes (the admin port's fingerprint format).
pub fn sha256_hex(der: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Fingerprint of the certificate a brand-new TLS handshake to `url` is served.
pub async fn served_fingerprint(ca_pem: &str, url: &str) -> Result<String, String> {
    let c = client(ca_pem)
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;
    let r = c.get(url).send().await.map_err(|e| e.to_string())?;
    let info = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .ok_or("no TLS info")?;
    Ok(sha256_hex(
        info.peer_certificate().ok_or("no peer certificate")?,
    ))
}

/// Replace a file atomically (write a sibling, then rename), as secret/volume updaters do.
pub fn write_atomic(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write tmp");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Fingerprint of the leaf in a PEM chain.
pub fn pem_fingerprint(cert_pem: &str) -> String {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("valid PEM");
    sha256_hex(&der)
}

/// The value of the exposition line for `series` (the name with its labels in Prometheus's
/// order, exactly). A series that is absent fails the test: a renamed metric or label must not
/// read as 0.
#[track_caller]
pub fn counter(metrics: &str, series: &str) -> u64 {
    series_value(metrics, series)
        .unwrap_or_else(|| panic!("no series {series} in the exposition:\n{metrics}"))
}

/// The value of `series` if it is exported (for waiting until it appears).
pub fn series_value(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then_some(value)
        })
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The `iris` service with key auth and one version `blue` on `replica`; `extra` adds settings.
pub fn iris_service(replica: impl std::fmt::Display, extra: &str) -> String {
    format!(
        "[[services]]\nname = \"iris\"\nprimary_key = \"{KEY}\"\n{extra}\n\n[[services.versions]]\nname = \"blue\"\nreplicas = [\"{replica}\"]\n"
    )
}

mod cluster;
#[allow(unused_imports)]
pub use cluster::*;
mod process;
#[allow(unused_imports)]
pub use process::*;
mod logs;
#[allow(unused_imports)]
pub use logs::*;
mod peers;
#[allow(unused_imports)]
pub use peers::*;

/// A development CA and two `localhost` leaf pairs, the first written to `cert.pem`/`key.pem` in
/// a temp dir: for tests that rotate certificates by rewriting the files.
pub struct RotatingCert {
    pub ca: scoregate::tls::DevCa,
    pub pairs: [scoregate::tls::Leaf; 2],
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

impl RotatingCert {
    pub fn new(cn: &str) -> RotatingCert {
        let ca = scoregate::tls::DevCa::new(cn).expect("ca");
        let names = vec!["localhost".to_string()];
        let pairs = [
            ca.issue(&names).expect("leaf a"),
            ca.issue(&names).expect("leaf b"),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let r = RotatingCert {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            ca,
            pairs,
            _dir: dir,
        };
        r.install(0);
        r
    }

    /// Write pair `i` over the files (each atomically).
    pub fn install(&self, i: usize) {
        write_atomic(&self.cert, self.pairs[i].cert_pem.as_bytes());
        write_atomic(&self.key, self.pairs[i].key_pem.as_bytes());
    }

    /// `[listen]` (TLS and admin on port 0) and `[tls]` serving these files, polled every
    /// `poll_ms`; `extra` goes into the certificate's table.
    pub fn listen_toml(&self, poll_ms: u64, extra: &str) -> String {
        format!(
            "[listen]\ntls = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[tls]\nreload_poll_ms = {poll_ms}\nreload_debounce_ms = 50\n\n[[tls.certificates]]\ncert = {:?}\nkey = {:?}\n{extra}\n",
            self.cert.display().to_string(),
            self.key.display().to_string(),
        )
    }
}
