//! The `scoregate demo` command as a black box: start it, score with curl, SIGTERM while a
//! request is in flight — the request completes, readiness turns false, the process exits 0.
#![cfg(feature = "peer-tests")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "demo-test-key-0123456789";

struct Demo {
    child: Child,
    port: u16,
    admin: String,
    ca: String,
    /// The ready-to-paste Open Inference Protocol (v2) curl line it printed.
    v2_curl: String,
    /// The ready-to-paste OpenAI-compatible streaming chat curl line it printed.
    chat_curl: String,
    _dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_demo() -> Demo {
    start_demo_in(tempfile::tempdir().expect("tempdir"))
}

fn start_demo_in(dir: tempfile::TempDir) -> Demo {
    let mut child = Command::new(env!("CARGO_BIN_EXE_scoregate"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--key",
            KEY,
            "--dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn scoregate demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut port, mut admin, mut ca, mut curl_line, mut v2_curl, mut chat_curl) =
        (None, None, None, None, None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        let t = line.trim();
        if let Some(url) = t.strip_prefix("scoring URL") {
            let url = url.trim();
            let p = url
                .trim_start_matches("https://localhost:")
                .split('/')
                .next()
                .expect("port");
            port = Some(p.parse::<u16>().expect("numeric port"));
        } else if let Some(a) = t.strip_prefix("admin") {
            admin = a.split_whitespace().next().map(|s| {
                s.trim_start_matches("http://")
                    .trim_end_matches("/metrics")
                    .to_string()
            });
        } else if let Some(c) = t.strip_prefix("CA to trust") {
            ca = Some(c.trim().to_string());
        } else if t.starts_with("curl ") && t.contains("/v1/chat/completions") {
            chat_curl = Some(t.to_string());
            break;
        } else if t.starts_with("curl ") && t.contains("/v2/") {
            v2_curl = Some(t.to_string());
        } else if t.starts_with("curl ") {
            curl_line = Some(t.to_string());
        }
    }
    let curl_line = curl_line.expect("a ready-to-paste curl line");
    assert!(curl_line.contains(KEY), "the curl line carries the key");
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Demo {
        child,
        port: port.expect("scoring URL printed"),
        admin: admin.expect("admin address printed"),
        ca: ca.expect("CA path printed"),
        v2_curl: v2_curl.expect("a ready-to-paste v2 curl line"),
        chat_curl: chat_curl.expect("a ready-to-paste chat curl line"),
        _dir: dir,
    }
}

/// A printed command line run in a shell as it is (quiet, bounded); its output.
fn pasted(line: &str) -> Vec<u8> {
    let out = Command::new("sh")
        .args(["-c", &format!("{line} -sS --max-time 30")])
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl runs")
}

#[test]
fn demo_scores_with_curl_and_drains_on_sigterm() {
    let mut demo = start_demo();
    assert_eq!(
        std::fs::metadata(std::path::Path::new(&demo.ca).with_file_name("key.pem"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("key file"),
        0o600
    );
    let url = format!("https://localhost:{}/api/v1/service/iris/score", demo.port);
    let auth = format!("Authorization: Bearer {KEY}");
    let out = curl(&[
        "--cacert",
        &demo.ca,
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"data": [[6.7, 3.0, 5.2, 2.3]]}"#,
        &url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["predictions"][0]["label"], "virginica");
    // The printed v2 line, pasted into a shell as it is.
    let v: serde_json::Value = serde_json::from_slice(&pasted(&demo.v2_curl)).expect("v2 json");
    assert_eq!(v["outputs"][0]["name"], "p_virginica", "{v}");
    assert_eq!(
        v["outputs"][0]["data"],
        serde_json::json!([0.0, 0.9054]),
        "{v}"
    );
    // The printed chat line: server-sent events, word by word, then [DONE].
    let out = pasted(&demo.chat_curl);
    let sse = String::from_utf8_lossy(&out);
    let words: String = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(
        words, "With P(virginica) = 0.9054, this iris is Iris virginica.",
        "{sse}"
    );
    assert!(sse.trim_end().ends_with("data: [DONE]"), "{sse}");
    let ready = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/readyz", demo.admin),
    ]);
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "200");

    // A slow upload (~440 KB at 150 KB/s ≈ 3 s) is in flight when SIGTERM arrives.
    let rows = 20_000;
    let body = format!(
        "{{\"data\": [{}]}}",
        vec!["[5.1, 3.5, 1.4, 0.2]"; rows].join(", ")
    );
    let body_file = demo._dir.path().join("body.json");
    std::fs::write(&body_file, body).expect("write body");
    let in_flight = {
        let (ca, auth, url) = (demo.ca.clone(), auth.clone(), url.clone());
        let data = format!("@{}", body_file.display());
        std::thread::spawn(move || {
            curl(&[
                "--http1.1",
                "--limit-rate",
                "150K",
                "--cacert",
                &ca,
                "-H",
                &auth,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &data,
                "-w",
                "\n%{http_code}",
                &url,
            ])
        })
    };
    std::thread::sleep(Duration::from_millis(1000));
    let pid = demo.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    std::thread::sleep(Duration::from_millis(300));
    let ready = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/readyz", demo.admin),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&ready.stdout),
        "503",
        "readiness is false while draining"
    );
    // New connections are refused while draining.
    let refused = curl(&["--cacert", &demo.ca, "-H", &auth, "-d", "{}", &url]);
    assert!(
        !refused.status.success(),
        "the listener is closed after SIGTERM"
    );

    let out = in_flight.join().expect("curl thread");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').expect("status line");
    assert_eq!(
        status,
        "200",
        "the in-flight request completed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(body).expect("json");
    assert_eq!(v["predictions"].as_array().map(Vec::len), Some(rows));

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = demo.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "demo did not exit within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn demo_refuses_a_short_key_with_exit_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_scoregate"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--key",
            "short",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--key: must be at least 16"), "{err}");
}

/// A second demo on the folder of a running one stops before writing anything (exit 64, naming
/// the folder and `--dir`): the first one's certificate files, which it watches and serves,
/// stay as they were and it keeps serving the same certificate.
#[test]
fn a_second_demo_never_rewrites_a_running_demos_files() {
    let first = start_demo_in(tempfile::tempdir().expect("tempdir"));
    let dir = std::path::Path::new(&first.ca)
        .parent()
        .expect("the CA's folder")
        .to_path_buf();
    let before: Vec<Vec<u8>> = ["ca.pem", "cert.pem", "key.pem"]
        .iter()
        .map(|f| std::fs::read(dir.join(f)).expect("read"))
        .collect();
    let second = Command::new(env!("CARGO_BIN_EXE_scoregate"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--dir",
        ])
        .arg(&dir)
        .output()
        .expect("run a second demo");
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(64), "{err}");
    assert!(
        err.contains("in use by another running demo") && err.contains("--dir"),
        "{err}"
    );
    let after: Vec<Vec<u8>> = ["ca.pem", "cert.pem", "key.pem"]
        .iter()
        .map(|f| std::fs::read(dir.join(f)).expect("read"))
        .collect();
    assert!(before == after, "the running demo's files are untouched");
    // And it still serves: curl trusts the same CA file as before.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--cacert",
            &first.ca,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!(
            "https://localhost:{}/api/v1/service/iris/swagger.json",
            first.port
        ))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
