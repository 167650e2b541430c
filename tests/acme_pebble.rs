//! ACME against Let's Encrypt's real test server, pebble (Debian), started here on loopback:
//! issuance with validation skipped and with real HTTP-01 / TLS-ALPN-01 validation answered by
//! the gateway (pebble-challtestsrv as the DNS server only), renewal by threshold keeping the
//! leaf-domain-label name, and a failing order retried with backoff while the old certificate
//! keeps serving. Every port is chosen free here, so these tests need no serialisation.
#![cfg(feature = "peer-tests")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Pebble {
    _procs: Vec<Proc>,
    dir: tempfile::TempDir,
    directory: String,
    mgmt: u16,
    ca_pem: String,
}

impl Pebble {
    /// `http_port`/`tls_port`: where pebble's validator connects (the gateway's listeners).
    /// `real_validation`: resolve names through pebble-challtestsrv (127.0.0.1) and validate for
    /// real; otherwise PEBBLE_VA_ALWAYS_VALID.
    async fn start(http_port: u16, tls_port: u16, real_validation: bool) -> Pebble {
        let dir = tempfile::tempdir().expect("tempdir");
        let own = scoregate::tls::SelfSigned::generate(&["localhost".into(), "127.0.0.1".into()])
            .expect("pebble cert");
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("cert.pem"), &own.cert_pem).expect("write");
        std::fs::write(p("key.pem"), &own.key_pem).expect("write");
        std::fs::write(p("ca.pem"), &own.ca_pem).expect("write");
        let (listen, mgmt) = (free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": p("cert.pem"),
            "privateKey": p("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(p("pebble.json"), config.to_string()).expect("write");
        let mut procs = Vec::new();
        let mut cmd = Command::new("pebble");
        cmd.arg("-config").arg(p("pebble.json"));
        cmd.env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0");
        if real_validation {
            let dns = free_port();
            let child = Command::new("pebble-challtestsrv")
                .args([
                    "-dns01",
                    &format!("127.0.0.1:{dns}"),
                    "-management",
                    &format!("127.0.0.1:{}", free_port()),
                ])
                .args([
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-defaultIPv6",
                    "",
                    "-defaultIPv4",
                    "127.0.0.1",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("pebble-challtestsrv runs (scripts/test.sh installs pebble)");
            procs.push(Proc(child));
            cmd.arg("-dnsserver").arg(format!("127.0.0.1:{dns}"));
        } else {
            cmd.env("PEBBLE_VA_ALWAYS_VALID", "1");
        }
        let log = std::fs::File::create(p("pebble.log")).expect("log");
        let child = cmd
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("pebble runs");
        procs.push(Proc(child));
        let directory = format!("https://127.0.0.1:{listen}/dir");
        let c = client(&own.ca_pem).build().expect("client");
        let t = Instant::now();
        while !c
            .get(&directory)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "pebble not ready: {}",
                std::fs::read_to_string(p("pebble.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Pebble {
            _procs: procs,
            dir,
            directory,
            mgmt,
            ca_pem: own.ca_pem,
        }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The root pebble issues under (new at every start).
    async fn issuing_root(&self) -> String {
        let c = client(&self.ca_pem).build().expect("client");
        c.get(format!("https://127.0.0.1:{}/roots/0", self.mgmt))
            .send()
            .await
            .expect("roots")
            .text()
            .await
            .expect("pem")
    }
}

fn gateway_toml(tls: u16, http: u16, pebble: &Pebble, state: &Path, acme_extra: &str) -> String {
    format!(
        r#"
[listen]
tls = "127.0.0.1:{tls}"
http = "127.0.0.1:{http}"
admin = "127.0.0.1:0"

[tls.acme]
directory = "{dir}"
root_ca = {ca:?}
state_dir = {state:?}
contact = ["mailto:ops@scoregate.test"]
retry_initial_ms = 200
retry_max_ms = 1000
{acme_extra}

{service}"#,
        service = iris_service("127.0.0.1:9", ""),
        dir = pebble.directory,
        ca = pebble.ca_path().display().to_string(),
        state = state.display().to_string(),
    )
}

async fn certificates(gw: &TestGateway) -> serde_json::Value {
    reqwest::get(gw.admin_url("/certificates"))
        .await
        .expect("admin")
        .json()
        .await
        .expect("json")
}

/// Wait (bounded) until the ACME slot serves a certificate issued by pebble with fingerprint
/// different from `not`; returns the status entry.
async fn wait_issued(gw: &TestGateway, not: Option<&str>, within: Duration) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let s = certificates(gw).await;
        let c = &s["certificates"][0];
        if c["issuer"].as_str().is_some_and(|i| i.contains("Pebble"))
            && c["fingerprint_sha256"].as_str() != not
        {
            return c.clone();
        }
        assert!(
            t.elapsed() < within,
            "no pebble certificate within {within:?}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(gw: &TestGateway, series: &str) -> u64 {
    let text = reqwest::get(gw.admin_url("/metrics"))
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    counter(&text, series)
}

/// A real client trusting only pebble's issuing root reaches `name` on the gateway.
async fn verify_with_root(root: &str, name: &str, tls: u16) -> String {
    let addr = format!("127.0.0.1:{tls}").parse().expect("addr");
    served_fingerprint_resolved(root, name, addr).await
}

async fn served_fingerprint_resolved(root: &str, name: &str, addr: std::net::SocketAddr) -> String {
    let c = client(root)
        .resolve(name, addr)
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let r = c
        .get(format!("https://{name}:{}/", addr.port()))
        .send()
        .await
        .expect("the chain verifies against pebble's root");
    let info = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("tls info");
    sha256_hex(info.peer_certificate().expect("peer cert"))
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// Pebble and the configuration of a gateway that orders from it, on free ports.
struct Bed {
    pebble: Pebble,
    state: tempfile::TempDir,
    tls: u16,
    toml: String,
}

impl Bed {
    /// `dead_validator`: pebble's HTTP-01 validator connects where nothing answers.
    async fn new(real_validation: bool, dead_validator: bool, acme_extra: &str) -> Bed {
        let (tls, http) = (free_port(), free_port());
        let validator = if dead_validator { free_port() } else { http };
        let pebble = Pebble::start(validator, tls, real_validation).await;
        let state = tempfile::tempdir().expect("state");
        let toml = gateway_toml(tls, http, &pebble, state.path(), acme_extra);
        Bed {
            pebble,
            state,
            tls,
            toml,
        }
    }

    /// Start the gateway and wait for its first pebble certificate; prints how long it took.
    async fn first_issue(&self, what: &str) -> (TestGateway, serde_json::Value) {
        let started = Instant::now();
        let gw = TestGateway::start(&self.toml).await;
        let issued = wait_issued(&gw, None, Duration::from_secs(60)).await;
        println!("ACME issuance ({what}): {:?}", started.elapsed());
        (gw, issued)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_from_pebble_and_serves_a_chain_to_its_root() {
    let logs = capture_logs();
    let bed = Bed::new(false, false, r#"names = ["iris.scoregate.test"]"#).await;
    let (pebble, state, tls, toml) = (&bed.pebble, &bed.state, bed.tls, &bed.toml);
    let (gw, issued) = bed.first_issue("validation skipped").await;
    assert_eq!(issued["names"][0], "iris.scoregate.test");
    assert_eq!(issued["source"], "acme");
    let root = pebble.issuing_root().await;
    let fp = verify_with_root(&root, "iris.scoregate.test", tls).await;
    assert_eq!(fp, issued["fingerprint_sha256"].as_str().expect("fp"));
    assert_eq!(mode(&state.path().join("key.pem")), 0o600);
    assert_eq!(mode(&state.path().join("account.json")), 0o600);
    assert!(metric(&gw, r#"scoregate_acme_orders_total{result="ok"}"#).await >= 1);
    gw.stop().await;

    // A restart serves the stored certificate at once and reuses the stored account.
    let account = std::fs::read(state.path().join("account.json")).expect("account");
    let gw = TestGateway::start(toml).await;
    let s = certificates(&gw).await;
    assert_eq!(
        s["certificates"][0]["fingerprint_sha256"],
        issued["fingerprint_sha256"]
    );
    assert_eq!(
        std::fs::read(state.path().join("account.json")).expect("account"),
        account
    );
    gw.stop().await;

    // Neither the certificate's private key nor the account key ever reached the log.
    let log = logs.text();
    assert!(log.contains("acme"), "the capture works");
    let key = std::fs::read_to_string(state.path().join("key.pem")).expect("key");
    assert_not_logged(&log, &key, "the ACME certificate's private key");
    let account: serde_json::Value = serde_json::from_slice(&account).expect("account json");
    let account_key = account["key_pkcs8"].as_str().expect("key_pkcs8");
    assert_not_logged(&log, account_key, "the ACME account key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_http01_validation_renewal_and_stable_leaf_domain_name() {
    // renew_fraction = 1: every certificate is due at once, so renewal follows the first order.
    let extra = "leaf_domain_label = \"myiris\"\nregion = \"westeurope\"\nrenew_fraction = 1.0";
    let bed = Bed::new(true, false, extra).await;
    let (gw, first) = bed.first_issue("real HTTP-01").await;
    let name = first["names"][0].as_str().expect("name").to_string();
    assert!(
        name.starts_with("myiris") && name.ends_with(".westeurope.cloudapp.azure.com"),
        "{name}"
    );
    let t = Instant::now();
    let second = wait_issued(
        &gw,
        first["fingerprint_sha256"].as_str(),
        Duration::from_secs(60),
    )
    .await;
    println!("ACME renewal by threshold: {:?}", t.elapsed());
    assert_eq!(
        second["names"][0],
        name.as_str(),
        "renewal keeps the leaf domain name"
    );
    let root = bed.pebble.issuing_root().await;
    verify_with_root(&root, &name, bed.tls).await;
    gw.stop().await;
    // And a restart keeps it too.
    let gw = TestGateway::start(&bed.toml).await;
    assert_eq!(
        certificates(&gw).await["certificates"][0]["name"],
        name.as_str()
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_tls_alpn01_validation() {
    let extra = "names = [\"alpn.scoregate.test\"]\nchallenge = \"tls-alpn-01\"";
    let bed = Bed::new(true, false, extra).await;
    let (gw, issued) = bed.first_issue("real TLS-ALPN-01").await;
    let root = bed.pebble.issuing_root().await;
    assert_eq!(
        verify_with_root(&root, "alpn.scoregate.test", bed.tls).await,
        issued["fingerprint_sha256"].as_str().expect("fp")
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_orders_retry_with_backoff_and_keep_the_current_certificate() {
    // Pebble validates HTTP-01 on a port where nothing answers: every order fails.
    let bed = Bed::new(true, true, r#"names = ["fail.scoregate.test"]"#).await;
    let gw = TestGateway::start(&bed.toml).await;
    let before = certificates(&gw).await["certificates"][0]["fingerprint_sha256"]
        .as_str()
        .expect("fp")
        .to_string();
    let t = Instant::now();
    while metric(&gw, r#"scoregate_acme_orders_total{result="error"}"#).await < 3 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "orders did not fail and retry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let three_failures = t.elapsed();
    // Backoff 200 ms, 400 ms, 800 ms, 1 s (max): three failed orders take at least 0.6 s.
    assert!(
        three_failures >= Duration::from_millis(600),
        "{three_failures:?}"
    );
    let s = certificates(&gw).await;
    assert_eq!(
        s["certificates"][0]["fingerprint_sha256"],
        before.as_str(),
        "placeholder still served"
    );
    assert_eq!(
        metric(&gw, r#"scoregate_acme_orders_total{result="ok"}"#).await,
        0
    );
    // Still serving: a TLS handshake with SNI for the name succeeds (placeholder, untrusted).
    let status = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .expect("client")
        .get(gw.https("/healthz"))
        .send()
        .await
        .expect("TLS listener keeps serving")
        .status();
    assert_eq!(status, 404);
    gw.stop().await;
}
