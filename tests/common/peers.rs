//! Inference peers from PyPI (KServe's model server, Triton's clients, grpcio, openai) in the
//! virtualenv `scripts/test.sh` installs: `$SCOREGATE_INFERENCE_PYTHON`, else
//! `~/.cache/scoregate/inference-peers/bin/python`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// The inference peers' Python interpreter; fails the test with the way to install it.
pub fn inference_python() -> PathBuf {
    let p = std::env::var_os("SCOREGATE_INFERENCE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/scoregate/inference-peers/bin/python")
        });
    assert!(
        p.exists(),
        "{} is missing: run scripts/test.sh once (it installs the inference peers), or \
         python3 -m venv ~/.cache/scoregate/inference-peers && \
         ~/.cache/scoregate/inference-peers/bin/pip install -r tests/peers/requirements.txt",
        p.display()
    );
    p
}

/// A script of `tests/peers/`.
pub fn peer_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
}

/// A peer process, killed when dropped; its output kept in a file for failure messages.
pub struct PeerProcess {
    pub child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PeerProcess {
    /// Run `tests/peers/<script>` with `args` under the inference peers' Python.
    pub fn start(script: &str, args: &[&str]) -> PeerProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("peer.log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(inference_python())
            .arg(peer_script(script))
            .args(args)
            .stdout(Stdio::from(out.try_clone().expect("log file")))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {script}: {e}"));
        PeerProcess {
            child,
            log,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until `url` answers 200 (plain HTTP), at most `within`.
    pub async fn wait_http_ok(&mut self, url: &str, within: Duration) {
        let c = reqwest::Client::new();
        let start = Instant::now();
        loop {
            if let Ok(r) = c.get(url).send().await
                && r.status() == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the peer exited ({status}):\n{}", self.log_text());
            }
            assert!(
                start.elapsed() < within,
                "{url} not answering 200 after {within:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// KServe's model server (`tests/peers/kserve_iris.py`) serving the iris model on v2 REST and
/// gRPC; returned once the model is ready: (process, REST port, gRPC port).
pub async fn kserve_iris() -> (PeerProcess, u16, u16) {
    let (http_port, grpc_port) = (free_port(), free_port());
    let mut p = PeerProcess::start(
        "kserve_iris.py",
        &[
            "--model_name",
            "iris",
            "--http_port",
            &http_port.to_string(),
            "--grpc_port",
            &grpc_port.to_string(),
        ],
    );
    p.wait_http_ok(
        &format!("http://127.0.0.1:{http_port}/v2/models/iris/ready"),
        Duration::from_secs(90),
    )
    .await;
    (p, http_port, grpc_port)
}

/// Run `tests/peers/<script>` with `args` to its end (at most `within`); its stdout parsed as
/// JSON. A failure shows the script's output.
pub async fn run_peer_json(script: &str, args: &[String], within: Duration) -> serde_json::Value {
    let out = tokio::time::timeout(
        within,
        tokio::process::Command::new(inference_python())
            .arg(peer_script(script))
            .args(args)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{script} did not finish within {within:?}"))
    .unwrap_or_else(|e| panic!("running {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{script} printed no JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
