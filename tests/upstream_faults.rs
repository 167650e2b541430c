//! Upstream faults, from raw TCP replicas that misbehave on purpose: a reset mid-response, a close
//! before replying, a replica that accepts and never answers, garbage, an oversized header. Each
//! gives the client a 502/504 with its JSON reason (or a cut-off body when a large reply had
//! started streaming: a small one is read whole first, so its loss is still a clean 502),
//! the gateway keeps serving, and a replica that keeps failing is ejected while the others serve.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Start a reply of this many bytes, send 10, then reset the connection (RST).
    ResetMidResponse(u64),
    /// Read the request, close without a byte.
    CloseBeforeReply,
    /// Read the request, then say nothing, holding the connection open.
    NeverAnswer,
    /// Not HTTP at all.
    Garbage,
    /// A status line followed by a 1 MiB header.
    OversizedHeader,
}

struct FaultyReplica {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for FaultyReplica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn faulty(fault: Fault) -> FaultyReplica {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(misbehave(s, fault));
        }
    });
    FaultyReplica { addr, task }
}

async fn misbehave(mut s: TcpStream, fault: Fault) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    match fault {
        Fault::ResetMidResponse(len) => {
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n{{\"partial\"");
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.flush().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = s.set_zero_linger();
            drop(s);
        }
        Fault::CloseBeforeReply => drop(s),
        Fault::NeverAnswer => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Fault::Garbage => {
            let _ = s.write_all(b"\x16\x03\x01 this is not HTTP\r\n\r\n").await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Fault::OversizedHeader => {
            let mut reply = b"HTTP/1.1 200 OK\r\nx-huge: ".to_vec();
            reply.extend(std::iter::repeat_n(b'a', 1024 * 1024));
            reply.extend_from_slice(b"\r\ncontent-length: 2\r\n\r\n{}");
            let _ = s.write_all(&reply).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

const SCORE: &str = "/api/v1/service/iris/score";

/// A model process that dies while scoring: on every connection it answers the first request,
/// then reads the second one whole and resets the connection (SO_LINGER 0). Records the
/// `x-ms-request-id` of every request it read in full.
async fn dies_on_second_request() -> (SocketAddr, Arc<Mutex<Vec<String>>>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for n in 0.. {
                    let Some(id) = read_request(&mut s, &mut buf).await else {
                        return;
                    };
                    log.lock().expect("log").push(id);
                    if n == 1 {
                        let _ = s.set_zero_linger();
                        return;
                    }
                    let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if s.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen, task)
}

/// One whole request (head and `content-length` body) off `s`: its request id, `None` at EOF.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let field = |name: &str| {
                head.lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            };
            let len: usize = field("content-length:").map_or(0, |v| v.parse().unwrap_or(0));
            if buf.len() >= end + 4 + len {
                buf.drain(..end + 4 + len);
                return Some(field("x-ms-request-id:").unwrap_or_default());
            }
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn a_scoring_post_the_replica_read_is_delivered_once_and_answered_502() {
    let (addr, seen, task) = dies_on_second_request().await;
    let pki = Pki::new(&["localhost"]);
    // One replica is never ejected: every request goes to it.
    let gw = TestGateway::start(&service_toml(&pki, "", &[addr])).await;
    let c = client(&pki.ca_pem).build().expect("client");
    let url = gw.https(SCORE);
    let send = |id: &'static str, key: Option<&'static str>| {
        let mut r = c
            .post(&url)
            .bearer_auth(KEY)
            .header("x-ms-request-id", id)
            .body(ROWS);
        if let Some(k) = key {
            r = r.header("idempotency-key", k);
        }
        r.send()
    };
    // Each first request on a connection is answered; each second one is read, then reset.
    let mut statuses = Vec::new();
    for id in ["r0", "r1", "r2", "r3"] {
        let r = send(id, None).await.expect("an answer");
        statuses.push(r.status().as_u16());
        if r.status() == 502 {
            expect_error(r, 502, "replica_closed_connection").await;
        }
    }
    assert_eq!(
        statuses,
        [200, 502, 200, 502],
        "the client learns of the failure"
    );
    assert_eq!(
        *seen.lock().expect("log"),
        ["r0", "r1", "r2", "r3"],
        "each scoring POST reached the model exactly once"
    );
    // With the client's idempotency key, the same failure is sent again on a new connection.
    let r = send("r4", None).await.expect("an answer");
    assert_eq!(r.status(), 200);
    let r = send("r5", Some("order-7")).await.expect("an answer");
    assert_eq!(r.status(), 200, "replayed on a new connection");
    assert_eq!(
        seen.lock().expect("log")[4..],
        ["r4", "r5", "r5"],
        "the key allowed the second delivery"
    );
    let m = gw.metrics().await;
    assert_eq!(
        counter(
            &m,
            r#"scoregate_requests_rejected_total{reason="replica_closed_connection",service="iris"}"#
        ),
        2,
        "{m}"
    );
    let retries = |reason: &str| {
        counter(
            &m,
            &format!(
                r#"scoregate_upstream_retries_total{{reason="{reason}",service="iris",version="blue"}}"#
            ),
        )
    };
    assert_eq!((retries("unsent"), retries("replayable")), (0, 1), "{m}");
    gw.stop().await;
    task.abort();
}

#[tokio::test]
async fn each_fault_is_a_502_or_504_with_its_reason_and_the_gateway_keeps_serving() {
    let cases = [
        (Fault::CloseBeforeReply, 502, "replica_closed_connection"),
        (Fault::NeverAnswer, 504, "scoring_timeout"),
        (Fault::Garbage, 502, "replica_bad_response"),
        (Fault::OversizedHeader, 502, "replica_bad_response"),
    ];
    let model = Backend::model().await;
    for (fault, status, reason) in cases {
        let bad = faulty(fault).await;
        let pki = Pki::new(&["localhost"]);
        // A lone replica is never ejected: every request reaches the faulty one. A second
        // service on a healthy replica shows the same gateway keeps serving.
        let toml = format!(
            "{}\n[[services]]\nname = \"wine\"\nprimary_key = \"{KEY}\"\n[[services.versions]]\nname = \"blue\"\nreplicas = [\"{}\"]\n",
            service_toml(&pki, "scoring_timeout_ms = 500", &[bad.addr]),
            model.addr
        );
        let gw = TestGateway::start(&toml).await;
        let c = client(&pki.ca_pem).build().expect("client");
        for _ in 0..3 {
            let r = post(&c, &gw.https(SCORE), Some(KEY), ROWS).await;
            let body = expect_error(r, status, reason).await;
            assert!(
                !body.to_string().contains("127.0.0.1"),
                "{fault:?}: no replica address leaks to the client: {body}"
            );
            let healthy = post(&c, &gw.https("/api/v1/service/wine/score"), Some(KEY), ROWS).await;
            assert_eq!(
                healthy.status(),
                200,
                "{fault:?}: the gateway keeps serving"
            );
        }
        gw.stop().await;
    }
}

/// Two replicas, one resetting every reply after 10 bytes; pairs of concurrent requests (with one
/// slot per replica, each replica gets one of each pair whatever the balancer prefers) until the
/// bad one is ejected after two failures. Returns what the clients saw per request.
async fn reset_mid_response(len: u64) -> Vec<Result<(u16, usize), String>> {
    let bad = faulty(Fault::ResetMidResponse(len)).await;
    let model = Backend::model().await;
    let pki = Pki::new(&["localhost"]);
    let gw = TestGateway::start(&service_toml(
        &pki,
        "outlier_consecutive_failures = 2",
        &[bad.addr, model.addr],
    ))
    .await;
    let c = client(&pki.ca_pem).build().expect("client");
    let mut seen = Vec::new();
    for _ in 0..15 {
        let url = gw.https(SCORE);
        let one = || async {
            let r = post(&c, &url, Some(KEY), ROWS).await;
            let status = r.status().as_u16();
            r.bytes()
                .await
                .map(|b| (status, b.len()))
                .map_err(|e| format!("{status}: {e}"))
        };
        let (a, b) = tokio::join!(one(), one());
        seen.extend([a, b]);
    }
    let m = gw.metrics().await;
    assert_eq!(
        counter(
            &m,
            r#"scoregate_replica_ejections_total{service="iris",version="blue"}"#
        ),
        1,
        "{m}"
    );
    gw.stop().await;
    seen
}

#[tokio::test]
async fn a_reset_mid_small_response_is_a_502_and_counts_as_a_failure() {
    // A small reply is read whole before the answer starts: its loss is a clean 502.
    let seen = reset_mid_response(1000).await;
    let failed = seen.iter().filter(|r| matches!(r, Ok((502, _)))).count();
    assert_eq!(failed, 2, "ejected after two broken replies: {seen:?}");
    assert!(
        seen.iter().all(|r| matches!(r, Ok((200 | 502, _)))),
        "only whole answers and 502s: {seen:?}"
    );
}

#[tokio::test]
async fn a_reset_mid_large_response_cuts_the_body_and_counts_as_a_failure() {
    // A large reply streams: the status has gone out, so the client sees the body cut off —
    // an error, never a hang or a short "success".
    let seen = reset_mid_response(1 << 20).await;
    let cut = seen.iter().filter(|r| r.is_err()).count();
    assert_eq!(cut, 2, "ejected after two broken replies: {seen:?}");
    assert!(
        seen.iter().all(|r| match r {
            Ok((status, len)) => *status == 200 && *len != 1 << 20,
            Err(e) => e.starts_with("200"),
        }),
        "the status stands, no reset reply arrives whole: {seen:?}"
    );
}

#[tokio::test]
async fn a_failing_replica_is_ejected_and_the_others_keep_serving() {
    for fault in [Fault::CloseBeforeReply, Fault::Garbage, Fault::NeverAnswer] {
        let bad = faulty(fault).await;
        let good = Backend::model().await;
        let pki = Pki::new(&["localhost"]);
        let gw = TestGateway::start(&service_toml(
            &pki,
            "scoring_timeout_ms = 300\noutlier_consecutive_failures = 3\noutlier_base_ejection_ms = 60000",
            &[bad.addr, good.addr],
        ))
        .await;
        let c = client(&pki.ca_pem).build().expect("client");
        let mut failed = 0;
        let mut last_failure = 0;
        let url = gw.https(SCORE);
        // Pairs of concurrent requests: with one slot per replica, the bad replica gets one of
        // each pair until it is ejected, whatever the latency-aware balancer prefers.
        for i in 0..30 {
            let (a, b) = tokio::join!(
                post(&c, &url, Some(KEY), ROWS),
                post(&c, &url, Some(KEY), ROWS)
            );
            for r in [a, b] {
                if r.status() != 200 {
                    failed += 1;
                    last_failure = i;
                }
            }
        }
        let m = gw.metrics().await;
        let ejections = counter(
            &m,
            r#"scoregate_replica_ejections_total{service="iris",version="blue"}"#,
        );
        assert_eq!(
            failed, 3,
            "{fault:?}: exactly the failures that trip the ejection"
        );
        assert_eq!(ejections, 1, "{fault:?}");
        assert!(last_failure < 29, "{fault:?}: served after the ejection");
        gw.stop().await;
    }
}

/// A replica that cannot be reached (a pod that just exited, still listed): no byte of the
/// request was used, so it goes to another replica and the client never sees the failure; the
/// unreachable one is ejected meanwhile.
#[tokio::test]
async fn a_request_for_an_unreachable_replica_goes_to_another() {
    let model = Backend::model().await;
    let gone = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone_addr = gone.local_addr().expect("addr");
    drop(gone);
    let pki = Pki::new(&["localhost"]);
    let gw = TestGateway::start(&service_toml(
        &pki,
        "outlier_consecutive_failures = 3",
        &[gone_addr, model.addr],
    ))
    .await;
    let c = client(&pki.ca_pem).build().expect("client");
    let url = gw.https(SCORE);
    for i in 0..40 {
        let r = post(&c, &url, Some(KEY), ROWS).await;
        assert_eq!(r.status(), 200, "request {i}");
    }
    let m = gw.metrics().await;
    let rerouted = counter(
        &m,
        r#"scoregate_upstream_retries_total{reason="rerouted",service="iris",version="blue"}"#,
    );
    assert!(
        (1..=3).contains(&rerouted),
        "rerouted until ejected: {rerouted}\n{m}"
    );
    assert_eq!(
        counter(
            &m,
            r#"scoregate_replica_ejections_total{service="iris",version="blue"}"#
        ),
        1
    );
    gw.stop().await;
}
