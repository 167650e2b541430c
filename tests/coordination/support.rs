//! What the coordination tests share: the model replica that records its concurrency and the
//! request ids it was sent, the gateways' configuration, their metrics, closed-loop load.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

pub const LEASE_MS: u64 = 2000;

/// One test at a time: each runs an API server and three or four gateways, and their timings
/// (Lease renewals, a view settling as the API server delivers every member's release, a queue
/// wait of the default 500 ms) are what they measure. Run side by side on a 2-core CI machine,
/// the API server's watch delivered a settled view ~390 ms late and one request of 4,000 in the
/// churn test waited past 500 ms (a 503, CI run of 04288b6) — the load of the other tests, not
/// the behaviour under test.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
pub const MODEL_TIME: Duration = Duration::from_millis(20);

struct Running(Arc<AtomicU32>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A model replica that records its concurrency and the request ids it was sent.
pub struct Model {
    pub backend: Backend,
    pub now: Arc<AtomicU32>,
    pub max: Arc<AtomicU32>,
    pub ids: Arc<Mutex<HashMap<String, u32>>>,
}

impl Model {
    pub async fn start(time: Duration) -> Model {
        let now = Arc::new(AtomicU32::new(0));
        let max = Arc::new(AtomicU32::new(0));
        let ids = Arc::new(Mutex::new(HashMap::new()));
        let (n, m, i) = (now.clone(), max.clone(), ids.clone());
        let backend = Backend::start(move |req: http::Request<hyper::body::Incoming>, _| {
            let (n, m, i) = (n.clone(), m.clone(), i.clone());
            async move {
                let id = req
                    .headers()
                    .get("x-ms-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                *i.lock().expect("ids").entry(id).or_insert(0) += 1;
                let running = n.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(running, Ordering::SeqCst);
                // Counted down however the request ends (hyper drops the handler of a
                // connection that closed).
                let _running = Running(n);
                tokio::time::sleep(time).await;
                json_response(r#"{"result":[1]}"#)
            }
        })
        .await;
        Model {
            backend,
            now,
            max,
            ids,
        }
    }

    pub fn max(&self) -> u32 {
        self.max.load(Ordering::SeqCst)
    }

    pub fn reset_max(&self) {
        self.max
            .store(self.now.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// It never ran more than `limit` requests at once and was never sent a request twice.
    pub fn assert_within(&self, limit: u32) {
        assert!(self.max() <= limit, "the model ran {} at once", self.max());
        assert_eq!(self.twice(), Vec::new(), "requests sent to the model twice");
    }

    /// Request ids the model was sent more than once.
    pub fn twice(&self) -> Vec<(String, u32)> {
        self.ids
            .lock()
            .expect("ids")
            .iter()
            .filter(|(id, n)| **n > 1 && !id.is_empty())
            .map(|(id, n)| (id.clone(), *n))
            .collect()
    }
}

pub struct Setup<'a> {
    pub tb: &'a Testbed,
    pub key_file: &'a std::path::Path,
    pub group: &'a str,
    /// The version's replicas.
    pub models: &'a [SocketAddr],
    pub limit: u32,
    pub lease_ms: u64,
    pub wait_ms: u64,
    /// Extra TOML after the version (autoscale).
    pub extra: &'a str,
}

impl Setup<'_> {
    pub fn toml(&self, identity: &str) -> String {
        format!(
            r#"
[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"
peer = "127.0.0.1:0"

[kubernetes]
kubeconfig = {kc:?}
lease_namespace = "default"
lease_name = "{group}-autoscaler"
lease_duration_ms = {lease}
identity = "{identity}"
autoscale_refresh_ms = 200

[coordination]
group = "{group}"
peer_key_file = {key:?}
lease_duration_ms = {lease}

[[services]]
name = "iris"
primary_key = "{KEY}"
replica_max_concurrent_requests = {limit}
max_request_wait_time = {wait}

[[services.versions]]
name = "blue"
replicas = {models:?}
{extra}
"#,
            kc = self.tb.kubeconfig.display().to_string(),
            key = self.key_file.display().to_string(),
            group = self.group,
            limit = self.limit,
            wait = self.wait_ms,
            models = self
                .models
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>(),
            lease = self.lease_ms,
            extra = self.extra,
        )
    }

    /// `n` gateways, each coordinated with `n` members.
    pub async fn start(&self, n: usize) -> Vec<ServeProcess> {
        let gws: Vec<ServeProcess> = (0..n)
            .map(|i| {
                ServeProcess::start(
                    &self.toml(&format!("{}-{i}", self.group)),
                    "scoregate=info,scoregate::coordination=debug",
                    &[],
                )
            })
            .collect();
        for gw in &gws {
            wait_series(gw, "scoregate_coordination_members", n as u64).await;
            wait_series(
                gw,
                r#"scoregate_coordination_state{state="coordinated"}"#,
                1,
            )
            .await;
        }
        gws
    }
}

pub async fn metrics(gw: &ServeProcess) -> String {
    let url = format!("http://{}/metrics", gw.admin.expect("admin"));
    match reqwest::get(url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

pub async fn wait_series(gw: &ServeProcess, series: &str, want: u64) {
    let t = Instant::now();
    loop {
        let m = metrics(gw).await;
        if series_value(&m, series) == Some(want) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{series} is not {want} after 30 s:\n{m}\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn share(m: &str) -> u64 {
    series_value(
        m,
        r#"scoregate_coordination_share_slots{service="iris",version="blue"}"#,
    )
    .unwrap_or(0)
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    pub codes: BTreeMap<String, u64>,
    /// (time since the start, status) of every answer.
    pub answers: Vec<(Duration, u16)>,
}

/// `clients` closed-loop clients, spread round-robin over `urls`, for `time`; every request
/// carries an id of its own.
pub async fn load(urls: &[String], clients: usize, time: Duration, tag: &str) -> Tally {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
    let start = Instant::now();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let url = urls[c % urls.len()].clone();
            let (http, tally, tag) = (http.clone(), tally.clone(), tag.to_string());
            tokio::spawn(async move {
                let mut n = 0u64;
                while start.elapsed() < time {
                    n += 1;
                    let r = http
                        .post(&url)
                        .bearer_auth(KEY)
                        .header("x-ms-request-id", format!("{tag}-{c}-{n}"))
                        .body(r#"{"data":[[1,2,3,4]]}"#)
                        .send()
                        .await;
                    let (status, code) = match r {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body: serde_json::Value = r.json().await.unwrap_or_default();
                            let code = body["error"]["code"].as_str().unwrap_or("").to_string();
                            (status, code)
                        }
                        Err(_) => (0, "transport".to_string()),
                    };
                    {
                        let mut t = tally.lock().expect("tally");
                        t.answers.push((start.elapsed(), status));
                        if status == 200 {
                            t.ok += 1;
                        } else {
                            *t.codes.entry(format!("{status} {code}")).or_insert(0) += 1;
                        }
                    }
                    if status != 200 {
                        // An error answer comes fast: do not spin on it.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client");
    }
    Arc::try_unwrap(tally)
        .map(|m| m.into_inner().expect("tally"))
        .unwrap_or_default()
}

pub fn score_urls(gws: &[ServeProcess]) -> Vec<String> {
    gws.iter()
        .map(|g| format!("http://{}/api/v1/service/iris/score", g.http.expect("http")))
        .collect()
}

pub fn key_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("peer.key");
    let key: Vec<u8> = (0..32).map(|_| fastrand::u8(..)).collect();
    std::fs::write(&path, key).expect("peer key");
    path
}
