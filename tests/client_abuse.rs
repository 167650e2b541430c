//! Client abuse: silent and idle connections, malformed HTTP/1 and HTTP/2, TLS garbage and half-open
//! handshakes, slow uploads, the connection cap and 10,000 idle TLS connections against a separate
//! `scoregate serve` process (its RSS and file descriptors read from /proc). After each, a
//! well-behaved client is still served.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SCORE: &str = "/api/v1/service/iris/score";

async fn gateway(limits: &str, replicas: &[std::net::SocketAddr]) -> (Pki, TestGateway) {
    let pki = Pki::new(&["localhost"]);
    let toml = service_toml(&pki, "", replicas).replace(
        "[[services]]",
        &format!("[limits]\n{limits}\n\n[[services]]"),
    );
    let gw = TestGateway::start(&toml).await;
    (pki, gw)
}

/// Read until EOF or error; what was read and when it ended (`None`: still open at `within`).
async fn read_to_close(
    s: &mut (impl AsyncRead + Unpin),
    within: Duration,
) -> (Vec<u8>, Option<Duration>) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return (got, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(start.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn still_serves(pki: &Pki, gw: &TestGateway) {
    let c = client(&pki.ca_pem).build().expect("client");
    let r = post(&c, &gw.https(SCORE), Some(KEY), ROWS).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed_after_the_idle_timeout() {
    let model = Backend::model().await;
    let (pki, gw) = gateway("idle_timeout_ms = 400", &[model.addr]).await;
    let tls = gw.tls.expect("tls");

    // A handshake, then silence.
    let mut s = tls_connect(tls, &pki.ca_pem, &[b"http/1.1"]).await;
    let (_, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    let closed = closed.expect("a silent TLS connection is closed");
    assert!(closed >= Duration::from_millis(350), "{closed:?}");

    // HTTP/2: the preface and SETTINGS, then nothing. The server's SETTINGS arrive, then EOF.
    let mut s = tls_connect(tls, &pki.ca_pem, &[b"h2"]).await;
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    let (got, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "an idle HTTP/2 connection is closed");
    assert_eq!(got.get(3), Some(&4u8), "the server's SETTINGS came first");

    let m = gw.metrics().await;
    assert_eq!(counter(&m, "scoregate_connections_open"), 0, "{m}");
    still_serves(&pki, &gw).await;
    gw.stop().await;
}

#[tokio::test]
async fn malformed_http_and_tls_garbage_are_refused_and_the_gateway_keeps_serving() {
    let model = Backend::model().await;
    let (pki, gw) = gateway("handshake_timeout_ms = 400", &[model.addr]).await;
    let http = gw.http.expect("http");
    let tls = gw.tls.expect("tls");

    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"POST /api/v1/service/iris/score HTTP/1.1\r\nhost: x\r\nx-bad: a\x00b\r\n\r\n",
        b"POST /api/v1/service/iris/score HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        b"POST /api/v1/service/iris/score HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n",
        b"POST /api/v1/service/iris/score HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n",
        b"POST /api/v1/service/iris/score HTTP/1.1\r\nhost: x\r\nbad header: 1\r\n\r\n",
        b"POST /api/v1/service/iris/score HTTP/1.1\r\nhost: x\r\nx-folded: a\r\n  b\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(http).await.expect("connect");
        s.write_all(bad).await.expect("write");
        let (got, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 400"),
            "{:?} -> {text:?}",
            String::from_utf8_lossy(bad)
        );
        assert!(closed.is_some(), "closed after a 400");
    }

    // TLS garbage: refused at once.
    let mut s = TcpStream::connect(tls).await.expect("connect");
    let junk: Vec<u8> = (0..2048u32).map(|i| (i * 7919 % 251) as u8).collect();
    let _ = s.write_all(&junk).await;
    let (_, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "TLS garbage gets the connection closed");

    // A half-open handshake: a record header promising 512 bytes, then nothing.
    let mut s = TcpStream::connect(tls).await.expect("connect");
    s.write_all(b"\x16\x03\x01\x02\x00\x01")
        .await
        .expect("write");
    let (_, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    let closed = closed.expect("a stalled handshake is cut at handshake_timeout_ms");
    assert!(closed >= Duration::from_millis(350), "{closed:?}");

    // HTTP/2: a SETTINGS frame whose length is not a multiple of 6 is a connection error.
    let mut s = tls_connect(tls, &pki.ca_pem, &[b"h2"]).await;
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x05\x04\x00\x00\x00\x00\x00hello")
        .await
        .expect("write");
    let (got, closed) = read_to_close(&mut s, Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "a malformed HTTP/2 frame ends the connection"
    );
    let goaway = got
        .windows(4)
        .any(|w| w[0] == 0 && w[1] == 8 && w[2] == 7 && w[3] == 0);
    assert!(goaway, "a GOAWAY frame was sent: {got:?}");

    let m = gw.metrics().await;
    assert!(
        counter(
            &m,
            r#"scoregate_tls_handshakes_total{result="timeout",version="none"}"#
        ) >= 1,
        "{m}"
    );
    still_serves(&pki, &gw).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_slow_upload_is_bounded_by_the_scoring_timeout() {
    let model = Backend::model().await;
    let pki = Pki::new(&["localhost"]);
    let gw = TestGateway::start(&service_toml(
        &pki,
        "scoring_timeout_ms = 800",
        &[model.addr],
    ))
    .await;
    let mut s = TcpStream::connect(gw.http.expect("http"))
        .await
        .expect("connect");
    let head = format!(
        "POST {SCORE} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{{\"data\": ["
    );
    s.write_all(head.as_bytes()).await.expect("head");
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(10) && !got.ends_with(b"}") {
        let _ = s.write_all(b" ").await;
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(text.contains("scoring_timeout"), "{text}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    still_serves(&pki, &gw).await;
    gw.stop().await;
}

#[tokio::test]
async fn connections_over_max_connections_wait_in_the_backlog() {
    let model = Backend::model().await;
    let (pki, gw) = gateway("max_connections = 4", &[model.addr]).await;
    let tls = gw.tls.expect("tls");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let connector = tls_connector(&pki.ca_pem, &[b"http/1.1"]);
    let mut held = Vec::new();
    for _ in 0..4 {
        let tcp = TcpStream::connect(tls).await.expect("connect");
        held.push(
            connector
                .connect(name.clone(), tcp)
                .await
                .expect("handshake"),
        );
    }
    let m = gw.metrics().await;
    assert_eq!(counter(&m, "scoregate_connections_open"), 4, "{m}");
    let tcp = TcpStream::connect(tls)
        .await
        .expect("the kernel backlog takes it");
    let fifth = tokio::spawn({
        let (connector, name) = (connector.clone(), name.clone());
        async move { connector.connect(name, tcp).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    if fifth.is_finished() {
        panic!(
            "no handshake beyond max_connections: {:?}",
            fifth.await.map(|r| r.map(|_| ()))
        );
    }
    held.pop();
    let done = tokio::time::timeout(Duration::from_secs(5), fifth)
        .await
        .expect("served once a connection closed")
        .expect("join");
    assert!(done.is_ok(), "{:?}", done.err());
    drop(held);
    still_serves(&pki, &gw).await;
    gw.stop().await;
}

/// `SCOREGATE_IDLE_CONNECTIONS` (default 10,000) idle TLS connections against `scoregate serve`:
/// memory per connection and descriptors stay bounded, a normal client is served meanwhile, and
/// everything is released when they go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_tls_connections_stay_bounded() {
    let n: usize = env_or("SCOREGATE_IDLE_CONNECTIONS", 10_000);
    // This process holds one descriptor per connection, and so does the gateway, which inherits
    // the limit: raise it to what the test needs, or fail saying why.
    raise_open_files(n + 512);
    let model = Backend::model().await;
    let pki = Pki::new(&["localhost"]);
    let toml = service_toml(&pki, "", &[model.addr]).replace(
        "[[services]]",
        &format!(
            // Held open for the whole test: neither the idle timeout nor the header-read
            // deadline (a connection that never sends a request) may close them meanwhile.
            "[limits]\nmax_connections = {}\nidle_timeout_ms = 600000\nheader_read_timeout_ms = 600000\n\n[[services]]",
            n + 100
        ),
    );
    let gw = ServeProcess::start(&toml, "info", &[]);
    let tls = gw.tls.expect("tls");
    let c = client(&pki.ca_pem).build().expect("client");
    let url = format!("https://localhost:{}{SCORE}", tls.port());
    assert_eq!(post(&c, &url, Some(KEY), ROWS).await.status(), 200);
    let (rss0, fds0) = (gw.rss_kib(), gw.fds());

    let connector = tls_connector(&pki.ca_pem, &[b"http/1.1"]);
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let started = Instant::now();
    let mut conns = Vec::with_capacity(n);
    let mut batch = tokio::task::JoinSet::new();
    for i in 0..n {
        let (connector, name) = (connector.clone(), name.clone());
        batch.spawn(async move {
            let tcp = TcpStream::connect(tls).await?;
            connector.connect(name, tcp).await
        });
        if batch.len() == 256 || i + 1 == n {
            while let Some(r) = batch.join_next().await {
                conns.push(r.expect("join").expect("idle connection handshake"));
            }
        }
    }
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss1, fds1) = (gw.rss_kib(), gw.fds());
    let per_conn = (rss1.saturating_sub(rss0) * 1024) / n as u64;
    let t = Instant::now();
    let status = post(&c, &url, Some(KEY), ROWS).await.status();
    let latency = t.elapsed();
    println!(
        "{n} idle TLS connections opened in {opened:?}: RSS {rss0} -> {rss1} KiB ({per_conn} B each), fds {fds0} -> {fds1}; a request meanwhile: {status} in {latency:?}"
    );
    assert_eq!(status, 200, "served with {n} idle connections open");
    assert!(per_conn < 64 * 1024, "{per_conn} bytes per idle connection");
    assert!(fds1 <= fds0 + n + 16, "fds {fds0} -> {fds1}");
    assert!(fds1 >= fds0 + n, "all {n} held open: fds {fds0} -> {fds1}");
    assert!(latency < Duration::from_secs(5), "{latency:?}");

    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.fds() > fds0 + 16 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fds2 = gw.fds();
    assert!(fds2 <= fds0 + 16, "descriptors released: {fds0} -> {fds2}");
    assert_eq!(post(&c, &url, Some(KEY), ROWS).await.status(), 200);
}

/// This process's open-file limits (soft, hard), from /proc/self/limits.
fn open_files_limits() -> (usize, usize) {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut f = line
        .split_whitespace()
        .skip(3)
        .map(|v| v.parse().unwrap_or(usize::MAX));
    (f.next().expect("soft limit"), f.next().expect("hard limit"))
}

/// Raise this process's soft open-file limit (and so the gateway's it starts) to `need`, with
/// util-linux's `prlimit` (no unsafe code in the tests); panic with the reason if it cannot be.
fn raise_open_files(need: usize) {
    let (soft, hard) = open_files_limits();
    if soft >= need {
        return;
    }
    assert!(
        hard >= need,
        "this test needs {need} open files per process; the hard limit is {hard}: raise it \
         (ulimit -Hn, or LimitNOFILE for a service) or set SCOREGATE_IDLE_CONNECTIONS lower"
    );
    let status = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={need}:{hard}"))
        .status()
        .expect("run prlimit (util-linux)");
    let (soft, _) = open_files_limits();
    assert!(
        status.success() && soft >= need,
        "could not raise the open-file limit to {need} (prlimit: {status}, now {soft})"
    );
}
