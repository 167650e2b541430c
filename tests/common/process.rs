//! `scoregate serve` as a separate process: its config file, its listening addresses (read from
//! its log), its whole log kept for assertions, signals, and its RSS and open file descriptors
//! from /proc.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct ServeProcess {
    pub child: Child,
    pub tls: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub config: PathBuf,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `field=Some(addr)` of a text log line, or `"field":"Some(addr)"` of a JSON one.
fn addr_field(line: &str, field: &str) -> Option<SocketAddr> {
    let rest = line
        .split(&format!("{field}=Some("))
        .nth(1)
        .or_else(|| line.split(&format!("\"{field}\":\"Some(")).nth(1))?;
    rest.split(')').next()?.parse().ok()
}

impl ServeProcess {
    /// Write `toml` to a file and run `scoregate serve` on it with `RUST_LOG=<log>`; returns once
    /// it logs its listening addresses.
    pub fn start(toml: &str, log: &str, env: &[(&str, &str)]) -> ServeProcess {
        ServeProcess::start_with(toml, log, env, &[])
    }

    /// `start` with global options before the subcommand (`--log-format json`).
    pub fn start_with(toml: &str, log: &str, env: &[(&str, &str)], args: &[&str]) -> ServeProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("scoregate.toml");
        std::fs::write(&config, toml).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_scoregate"))
            .args(args)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", log)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn scoregate serve");
        let stderr = child.stderr.take().expect("stderr");
        let text = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = text.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(" listening") || line.contains(r#""message":"listening""#) {
                    let _ = tx.send(line.clone());
                }
                if let Ok(mut t) = sink.lock() {
                    t.push_str(&line);
                    t.push('\n');
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "scoregate serve did not start:\n{}",
                    text.lock().map(|t| t.clone()).unwrap_or_default()
                )
            });
        ServeProcess {
            tls: addr_field(&line, "tls"),
            http: addr_field(&line, "http"),
            admin: addr_field(&line, "admin"),
            peer: addr_field(&line, "peer"),
            child,
            config,
            log: text,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything logged so far, as written (stderr is a pipe: no colour codes).
    pub fn log(&self) -> String {
        self.log.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Wait until the log contains `needle` (bounded).
    pub fn wait_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} not logged within {within:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Open file descriptors.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Wait (bounded) for the process to exit; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// A TLS connector trusting only `ca_pem`, offering `alpn`.
pub fn tls_connector(ca_pem: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    scoregate::tls::install_default_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("ca cert");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A TLS connection to `addr` as `localhost`, trusting only `ca_pem`, offering `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    tls_connector(ca_pem, alpn)
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// A number from the environment, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
