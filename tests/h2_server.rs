//! The HTTP/2 server (src/server/h2) against real HTTP/2 peers: the h2spec conformance suite
//! (built from Go modules by scripts/kube-testbed.sh), nghttp with a 1 KiB receive window,
//! h2load with many streams per connection, reqwest uploading more than every receive window,
//! curl with an oversized header list, and raw frames for the rapid-reset guard.
#![cfg(feature = "peer-tests")]

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A replica that answers after `delay` with the length and SHA-256 of the body it received,
/// padded to `x-reply-bytes` bytes when asked.
async fn checksum_backend(delay: Duration) -> Backend {
    Backend::start(move |req, _| async move {
        let pad: usize = req
            .headers()
            .get("x-reply-bytes")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        tokio::time::sleep(delay).await;
        let mut out =
            format!(r#"{{"len":{},"sha":"{}"}}"#, body.len(), sha256_hex(&body)).into_bytes();
        while out.len() < pad {
            out.push(b' ');
        }
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(out)))
            .expect("response")
    })
    .await
}

/// One service without key auth (h2spec cannot send a key) in front of `replica`.
fn open_service(pki: &Pki, replica: std::net::SocketAddr) -> String {
    format!(
        r#"
[listen]
tls = "127.0.0.1:0"

{tls}

[[services]]
name = "iris"
auth_enabled = false
replica_max_concurrent_requests = 1000

[[services.versions]]
name = "blue"
replicas = ["{replica}"]
"#,
        tls = pki.toml()
    )
}

/// A new HTTP/2 connection is served as usual (after an abusive or malformed one); then stop.
async fn still_serves_then_stop(gw: TestGateway, pki: &Pki) {
    let c = client(&pki.ca_pem)
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let r = c
        .post(gw.https("/api/v1/service/iris/score"))
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (reqwest::Version::HTTP_2, 200)
    );
    gw.stop().await;
}

fn h2spec_bin() -> String {
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/kube-testbed.sh"
    ))
    .arg("h2spec")
    .output()
    .expect("run scripts/kube-testbed.sh h2spec");
    assert!(
        out.status.success(),
        "h2spec build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}

/// h2spec's JUnit report: each case (package and title) and whether it passed.
fn h2spec_cases(xml: &str) -> Vec<(String, bool)> {
    let attr = |seg: &str, name: &str| {
        let at = seg
            .find(&format!("{name}=\""))
            .map(|i| i + name.len() + 2)?;
        seg[at..].find('"').map(|e| seg[at..at + e].to_string())
    };
    xml.split("<testcase ")
        .skip(1)
        .map(|seg| {
            let seg = &seg[..seg.find("</testcase>").unwrap_or(seg.len())];
            let name = format!(
                "{} {}",
                attr(seg, "package").unwrap_or_default(),
                attr(seg, "classname").unwrap_or_default()
            );
            let passed =
                !seg.contains("<failure") && !seg.contains("<error") && !seg.contains("<skipped");
            (name, passed)
        })
        .collect()
}

/// Every case of h2spec (RFC 9113 and RFC 7541), strict ones included, on two routes behind a
/// replica that answers after 150 ms: the swagger route (h2spec's POSTs are refused with 405
/// there) and the scoring route (its GETs are). Every case must pass on each. Many cases send
/// frames on a stream after opening it; the gateway's own answers (405 here) wait until the
/// request ends (up to 64 KiB, 1 s), so those frames are still checked as the RFC asks instead
/// of racing an early answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2spec_passes_every_case() {
    let bin = tokio::task::spawn_blocking(h2spec_bin).await.expect("join");
    let pki = Pki::new(&["localhost", "127.0.0.1"]);
    let replica = checksum_backend(Duration::from_millis(150)).await;
    let gw = TestGateway::start(&open_service(&pki, replica.addr)).await;
    let port = gw.tls.expect("tls").port().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut runs = Vec::new();
    for (name, path) in [
        ("get", "/api/v1/service/iris/swagger.json"),
        ("post", "/api/v1/service/iris/score"),
    ] {
        let report = dir.path().join(format!("{name}.xml"));
        let (bin, port, r) = (bin.clone(), port.clone(), report.clone());
        let out = tokio::task::spawn_blocking(move || {
            Command::new(bin)
                .args([
                    "-t",
                    "-k",
                    "-S",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-o",
                    "5",
                    "-P",
                    path,
                    "-j",
                ])
                .arg(&r)
                .output()
                .expect("run h2spec")
        })
        .await
        .expect("join");
        let xml = std::fs::read_to_string(&report).unwrap_or_else(|e| {
            panic!(
                "no h2spec report ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        let cases = h2spec_cases(&xml);
        assert!(
            cases.len() >= 146,
            "{} cases:\n{}",
            cases.len(),
            String::from_utf8_lossy(&out.stdout)
        );
        runs.push((cases, String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let ((get, _), (post, _)) = (&runs[0], &runs[1]);
    assert_eq!(get.len(), post.len());
    for ((name, _), (name2, _)) in get.iter().zip(post) {
        assert_eq!(name, name2, "same cases in the same order");
    }
    for (route, (run, out)) in ["GET", "POST"].iter().zip(&runs) {
        let failed: Vec<&String> = run.iter().filter(|c| !c.1).map(|c| &c.0).collect();
        assert!(
            failed.is_empty(),
            "h2spec cases failed on the {route} route: {failed:?}\n{out}"
        );
    }
    still_serves_then_stop(gw, &pki).await;
}

/// Four 5 MiB uploads at once on one connection: more than the 1 MiB stream and 4 MiB connection
/// windows, so they only complete if what the replica reads is credited back as it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_uploads_share_the_windows_and_arrive_intact() {
    let pki = Pki::new(&["localhost"]);
    let replica = checksum_backend(Duration::ZERO).await;
    let gw = TestGateway::start(
        &open_service(&pki, replica.addr)
            .replace("[listen]", "[limits]\nmax_body_bytes = 8388608\n\n[listen]"),
    )
    .await;
    let c = client(&pki.ca_pem)
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let tasks: Vec<_> = (0..4u8)
        .map(|i| {
            let (c, url) = (c.clone(), gw.https("/api/v1/service/iris/score"));
            tokio::spawn(async move {
                let body: Vec<u8> = (0..5 << 20).map(|j: u32| (j % 251) as u8 ^ i).collect();
                let sha = sha256_hex(&body);
                let r = c.post(url).body(body).send().await.expect("upload");
                assert_eq!(r.version(), reqwest::Version::HTTP_2);
                assert_eq!(r.status(), 200);
                let v: serde_json::Value = r.json().await.expect("json");
                assert_eq!(v["len"], 5 << 20);
                assert_eq!(v["sha"], sha.as_str());
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("upload task");
    }
    gw.stop().await;
}

/// nghttp with a 1 KiB stream and connection window: a 300 KB answer goes out in window-sized
/// DATA frames as WINDOW_UPDATEs arrive, intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_respects_a_tiny_client_window() {
    let pki = Pki::new(&["localhost"]);
    let replica = checksum_backend(Duration::ZERO).await;
    let gw = TestGateway::start(&open_service(&pki, replica.addr)).await;
    let url = gw.https("/api/v1/service/iris/swagger.json");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("nghttp")
            .args(["-w", "10", "-W", "10", "-H", "x-reply-bytes: 300000", "-s"])
            .arg(&url)
            .output()
            .expect("run nghttp (Debian nghttp2-client)")
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The body (padded JSON of the empty request body), then nghttp's statistics.
    let end = text.find("***** Statistics *****").expect("statistics");
    let body = &text[..end];
    assert!(
        body.starts_with(r#"{"len":0,"sha":"e3b0c442"#),
        "{}",
        &body[..80.min(body.len())]
    );
    assert_eq!(body.len(), 300_000, "the whole answer arrived");
    gw.stop().await;
}

/// h2load POSTs `n` scoring rows to `url` with `args`: it speaks `proto` and every answer is 2xx.
async fn h2load_all_2xx(url: &str, proto: &str, n: u32, args: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = dir.path().join("rows.json");
    std::fs::write(&body, ROWS).expect("write body");
    let mut cmd = Command::new("h2load");
    cmd.args(["-n", &n.to_string(), "-t", "1"])
        .args(args)
        .args(["-H", "content-type: application/json", "-d"])
        .arg(&body)
        .arg(url);
    let out = tokio::task::spawn_blocking(move || {
        cmd.output().expect("run h2load (Debian nghttp2-client)")
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("Application protocol: {proto}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{n} succeeded, 0 failed, 0 errored")),
        "{text}"
    );
    assert!(text.contains(&format!("status codes: {n} 2xx")), "{text}");
}

/// h2load: 4 connections, 32 streams each, 4,000 POSTs: every one answered 2xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_many_streams_all_succeed() {
    let pki = Pki::new(&["localhost"]);
    let model = Backend::model().await;
    let gw = TestGateway::start(&service_toml(
        &pki,
        "replica_max_concurrent_requests = 1000",
        &[model.addr],
    ))
    .await;
    let url = gw.https("/api/v1/service/iris/score");
    let auth = format!("authorization: Bearer {KEY}");
    h2load_all_2xx(&url, "h2", 4000, &["-c", "4", "-m", "32", "-H", &auth]).await;
    gw.stop().await;
}

/// A header list over `max_header_bytes` is answered 431 (curl over HTTP/2), and the next
/// request, on a new connection, is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_header_list_is_431() {
    let pki = Pki::new(&["localhost"]);
    let replica = checksum_backend(Duration::ZERO).await;
    let gw = TestGateway::start(
        &open_service(&pki, replica.addr)
            .replace("[listen]", "[limits]\nmax_header_bytes = 8192\n\n[listen]"),
    )
    .await;
    let url = gw.https("/api/v1/service/iris/score");
    let ca = pki.ca_path();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
                "--http2",
            ])
            .arg("--cacert")
            .arg(&ca)
            .args(["-H", &format!("x-big: {}", "a".repeat(9000))])
            .arg(&url)
            .output()
            .expect("run curl")
    })
    .await
    .expect("join");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 431");
    still_serves_then_stop(gw, &pki).await;
}

/// One HPACK block for `POST /api/v1/service/iris/score` (literals without indexing).
fn request_block() -> Vec<u8> {
    let mut b = vec![0x83, 0x87]; // :method POST, :scheme https
    let path = b"/api/v1/service/iris/score";
    b.push(0x04); // :path, name from the static table
    b.push(path.len() as u8);
    b.extend_from_slice(path);
    b.push(0x01); // :authority
    b.push(9);
    b.extend_from_slice(b"localhost");
    b
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len() as u32;
    let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Read frames until one of `kind` arrives: its payload (`None` if the connection ends first).
async fn read_until<S: tokio::io::AsyncRead + Unpin>(s: &mut S, kind: u8) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    let mut at = 0;
    loop {
        while got.len() >= at + 9 {
            let len = (usize::from(got[at]) << 16)
                | (usize::from(got[at + 1]) << 8)
                | usize::from(got[at + 2]);
            if got.len() < at + 9 + len {
                break;
            }
            if got[at + 3] == kind {
                return Some(got[at + 9..at + 9 + len].to_vec());
            }
            at += 9 + len;
        }
        let n = s.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// A client that closes its window (SETTINGS_INITIAL_WINDOW_SIZE 0), gets the answer's headers
/// and leaves: the answer's body can never be sent, and the gateway drops it instead of holding
/// the connection — a shutdown right after drains at once, not after the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_stalled_on_a_departed_clients_window_does_not_hold_the_drain() {
    let pki = Pki::new(&["localhost"]);
    let replica = checksum_backend(Duration::ZERO).await;
    let gw = TestGateway::start(&open_service(&pki, replica.addr)).await;
    let mut s = tls_connect(gw.tls.expect("tls"), &pki.ca_pem, &[b"h2"]).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[0, 4, 0, 0, 0, 0])); // INITIAL_WINDOW_SIZE = 0
    out.extend(frame(0x1, 0x4 | 0x1, 1, &request_block()));
    s.write_all(&out).await.expect("write");
    let headers = tokio::time::timeout(Duration::from_secs(10), read_until(&mut s, 0x1))
        .await
        .expect("the answer's headers within 10 s");
    assert!(headers.is_some(), "HEADERS for stream 1");
    // Leave as h2spec does: close_notify and FIN (the gateway reads a clean end, not an error).
    s.shutdown().await.expect("close_notify");
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::timeout(Duration::from_secs(5), gw.stop())
        .await
        .expect("drained within 5 s (the grace period is 30 s)");
}

/// Rapid reset (CVE-2023-44487): a client that opens streams and resets them while the replica
/// works is cut off with GOAWAY(ENHANCE_YOUR_CALM) after 1,024; others are served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_with_enhance_your_calm() {
    let pki = Pki::new(&["localhost"]);
    let replica = checksum_backend(Duration::from_millis(500)).await;
    let gw = TestGateway::start(&open_service(&pki, replica.addr)).await;
    let mut s = tls_connect(gw.tls.expect("tls"), &pki.ca_pem, &[b"h2"]).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    let block = request_block();
    for i in 0..1100u32 {
        let id = 2 * i + 1;
        out.extend(frame(0x1, 0x4 | 0x1, id, &block)); // HEADERS, END_HEADERS | END_STREAM
        out.extend(frame(0x3, 0, id, &8u32.to_be_bytes())); // RST_STREAM(CANCEL)
    }
    s.write_all(&out).await.expect("write");
    let goaway = tokio::time::timeout(Duration::from_secs(10), read_until(&mut s, 0x7))
        .await
        .expect("an answer within 10 s")
        .map(|p| u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
    assert_eq!(goaway, Some(0xb), "GOAWAY with ENHANCE_YOUR_CALM");
    still_serves_then_stop(gw, &pki).await;
}

/// CONTINUATION floods (CVE-2024-27316 and kin): a header block that never ends, fed with empty
/// CONTINUATION frames or with more small ones than any client splits a block into, is cut off
/// with GOAWAY(ENHANCE_YOUR_CALM) and counted; a block split into a few CONTINUATIONs is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_floods_are_cut_off_with_enhance_your_calm() {
    let pki = Pki::new(&["localhost"]);
    let replica = checksum_backend(Duration::ZERO).await;
    let gw = TestGateway::start(&open_service(&pki, replica.addr)).await;
    let block = request_block();
    // A block in 4 pieces: HEADERS and three CONTINUATIONs, the last ending it.
    let honest = {
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(0x4, 0, 0, &[]));
        let q = block.len() / 4;
        out.extend(frame(0x1, 0x1, 1, &block[..q])); // HEADERS, END_STREAM
        out.extend(frame(0x9, 0, 1, &block[q..2 * q]));
        out.extend(frame(0x9, 0, 1, &block[2 * q..3 * q]));
        out.extend(frame(0x9, 0x4, 1, &block[3 * q..])); // END_HEADERS
        out
    };
    let mut s = tls_connect(gw.tls.expect("tls"), &pki.ca_pem, &[b"h2"]).await;
    s.write_all(&honest).await.expect("write");
    let headers = tokio::time::timeout(Duration::from_secs(10), read_until(&mut s, 0x1))
        .await
        .expect("an answer within 10 s");
    assert!(headers.is_some(), "the split block was served");
    drop(s);
    for (kind, piece, count) in [
        ("empty", &[][..], 100_000),
        ("one byte each", &block[1..2], 1_000),
    ] {
        let mut s = tls_connect(gw.tls.expect("tls"), &pki.ca_pem, &[b"h2"]).await;
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(0x4, 0, 0, &[]));
        out.extend(frame(0x1, 0x1, 1, &block[..1])); // HEADERS without END_HEADERS
        for _ in 0..count {
            out.extend(frame(0x9, 0, 1, piece));
        }
        // The gateway may close before reading it all: a failed write is fine.
        let _ = s.write_all(&out).await;
        let goaway = tokio::time::timeout(Duration::from_secs(10), read_until(&mut s, 0x7))
            .await
            .unwrap_or_else(|_| panic!("{kind}: an answer within 10 s"))
            .map(|p| u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
        assert_eq!(goaway, Some(0xb), "{kind}: GOAWAY with ENHANCE_YOUR_CALM");
    }
    let m = gw.app_metrics.render();
    assert_eq!(
        counter(
            &m,
            r#"scoregate_http2_abuse_total{kind="continuation_flood"}"#
        ),
        2,
        "{m}"
    );
    still_serves_then_stop(gw, &pki).await;
}

/// A malformed PRIORITY on a stream the client has not opened is a connection error: a
/// RST_STREAM may not name an idle stream (RFC 9113 §6.4), and before this the stream could then
/// still be opened and answered (found by the h2_conn fuzz target).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_priority_on_an_idle_stream_is_a_connection_error() {
    let pki = Pki::new(&["localhost"]);
    let replica = checksum_backend(Duration::ZERO).await;
    let gw = TestGateway::start(&open_service(&pki, replica.addr)).await;
    let mut s = tls_connect(gw.tls.expect("tls"), &pki.ca_pem, &[b"h2"]).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out.extend(frame(0x2, 0, 21, &[])); // PRIORITY of length 0 on idle stream 21
    out.extend(frame(0x1, 0x4 | 0x1, 21, &request_block()));
    s.write_all(&out).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let mut frames = Vec::new();
    let mut at = 0;
    while got.len() >= at + 9 {
        let len = (usize::from(got[at]) << 16)
            | (usize::from(got[at + 1]) << 8)
            | usize::from(got[at + 2]);
        let stream = u32::from_be_bytes([got[at + 5], got[at + 6], got[at + 7], got[at + 8]]);
        let end = (at + 9 + len).min(got.len());
        frames.push((got[at + 3], stream, got[at + 9..end].to_vec()));
        at += 9 + len;
    }
    assert!(
        frames.iter().all(|(_, stream, _)| *stream == 0),
        "nothing on stream 21 (no RST_STREAM on an idle stream, no answer): {frames:?}"
    );
    let goaway = frames
        .iter()
        .find(|f| f.0 == 0x7)
        .map(|f| u32::from_be_bytes([f.2[4], f.2[5], f.2[6], f.2[7]]));
    assert_eq!(goaway, Some(0x6), "GOAWAY with FRAME_SIZE_ERROR");
    still_serves_then_stop(gw, &pki).await;
}

/// h2c with prior knowledge on the plain listener reaches the same HTTP/2 server through the
/// HTTP/1.1 fast path's handoff (preface included): h2load's 1,000 POSTs and reqwest's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_on_the_plain_listener() {
    let pki = Pki::new(&["localhost"]);
    let replica = checksum_backend(Duration::ZERO).await;
    let toml = open_service(&pki, replica.addr).replace(
        "tls = \"127.0.0.1:0\"",
        "tls = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"",
    );
    let gw = TestGateway::start(&toml).await;
    let url = gw.http_url("/api/v1/service/iris/score");
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let r = c.post(&url).body("{}").send().await.expect("h2c post");
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (reqwest::Version::HTTP_2, 200)
    );
    h2load_all_2xx(&url, "h2c", 1000, &["-c", "2", "-m", "16"]).await;
    gw.stop().await;
}
