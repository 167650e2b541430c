//! Request smuggling and header injection over raw sockets. A recording replica shows what got
//! through: conflicting or malformed framing is refused with 400 before any replica sees it; a
//! request carrying both `Transfer-Encoding` and `Content-Length` is framed by the chunked
//! encoding (RFC 9112 §6.1, as haproxy does), the connection is closed after the answer, and the
//! request hidden behind it never reaches a replica; `Upgrade: h2c` and `Connection`-named headers
//! never leave the gateway.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
struct Seen {
    headers: Vec<(String, String)>,
    body: Bytes,
}

async fn recording_replica() -> (Backend, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let backend = Backend::start(move |req: http::Request<hyper::body::Incoming>, _| {
        let log = log.clone();
        async move {
            let headers = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect();
            let body = body_bytes(req.into_body()).await;
            if let Ok(mut l) = log.lock() {
                l.push(Seen { headers, body });
            }
            json_response(r#"{"ok":true}"#)
        }
    })
    .await;
    (backend, seen)
}

/// Send raw bytes; read until the server closes (or 3 s pass). Returns the bytes and whether it
/// closed.
async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn head(extra: &str) -> String {
    format!(
        "POST /api/v1/service/iris/score HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {KEY}\r\n{extra}"
    )
}

#[tokio::test]
async fn conflicting_or_malformed_framing_never_reaches_a_replica() {
    let (replica, seen) = recording_replica().await;
    let pki = Pki::new(&["localhost"]);
    let gw = TestGateway::start(&service_toml(&pki, "", &[replica.addr])).await;
    let http = gw.http.expect("http");

    let refused = [
        // Two different lengths.
        head("content-length: 4\r\ncontent-length: 40\r\n\r\nabcd"),
        // A length that is not a number, or signed.
        head("content-length: 4x\r\n\r\nabcd"),
        head("content-length: +4\r\n\r\nabcd"),
        // Chunked not last, unknown codings, a space before the colon.
        head("transfer-encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
        head("transfer-encoding: xchunked\r\n\r\n0\r\n\r\n"),
        head("transfer-encoding : chunked\r\n\r\n0\r\n\r\n"),
        // Transfer-Encoding in HTTP/1.0.
        head("\r\n")
            .replace("HTTP/1.1", "HTTP/1.0")
            .replace("\r\n\r\n", "\r\n")
            + "transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        // Header injection: a bare CR inside a value, a NUL, obsolete line folding. (A bare LF
        // ends a line, RFC 9112 §2.2; headers are re-serialized with CRLF upstream, so the
        // replica parses exactly what the gateway did.)
        head("x-a: b\rx-injected: c\r\ncontent-length: 0\r\n\r\n"),
        head("x-a: b\0c\r\ncontent-length: 0\r\n\r\n"),
        head("x-a: b\r\n folded: c\r\ncontent-length: 0\r\n\r\n"),
    ];
    for raw in &refused {
        let (answer, closed) = exchange(http, raw.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{raw:?} -> {answer:?}");
        assert!(closed, "{raw:?}: connection closed after the 400");
    }
    assert_eq!(
        seen.lock().map(|s| s.len()).unwrap_or(99),
        0,
        "no refused request reached the replica: {:?}",
        seen.lock().map(|s| s.clone())
    );
    gw.stop().await;
}

#[tokio::test]
async fn te_with_cl_is_framed_by_chunked_and_the_hidden_request_never_arrives() {
    let (replica, seen) = recording_replica().await;
    let pki = Pki::new(&["localhost"]);
    let gw = TestGateway::start(&service_toml(&pki, "", &[replica.addr])).await;
    let http = gw.http.expect("http");
    let hidden = format!(
        "POST /api/v1/service/iris/score HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {KEY}\r\nx-smuggled: yes\r\ncontent-length: 0\r\n\r\n"
    );
    for framing in [
        "content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
        "transfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
    ] {
        // CL says the body is "0\r\n\r\n"; chunked says the same bytes end the body. The hidden
        // request follows on the same connection.
        let raw = format!("{}0\r\n\r\n{hidden}", head(framing));
        let (answer, closed) = exchange(http, raw.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "one answer only: {answer}"
        );
        assert!(
            closed,
            "the connection is closed after an ambiguous request"
        );
    }
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for s in &seen {
        assert!(s.body.is_empty(), "{s:?}");
        assert!(
            !s.headers.iter().any(|(k, _)| k == "x-smuggled"),
            "the hidden request reached the replica: {s:?}"
        );
        let framing: Vec<_> = s
            .headers
            .iter()
            .filter(|(k, _)| k == "content-length" || k == "transfer-encoding")
            .collect();
        assert!(framing.len() <= 1, "one framing header upstream: {s:?}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn upgrade_and_connection_named_headers_stay_at_the_gateway() {
    let (replica, seen) = recording_replica().await;
    let pki = Pki::new(&["localhost"]);
    let gw = TestGateway::start(&service_toml(&pki, "", &[replica.addr])).await;
    let raw = head(
        "connection: Upgrade, HTTP2-Settings, x-internal\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nx-internal: secret-route\r\nte: trailers\r\nproxy-authorization: Basic eDp5\r\ncontent-length: 2\r\n\r\n{}",
    );
    let (answer, _) = exchange(gw.http.expect("http"), raw.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.contains("101"), "no protocol switch: {answer}");
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(seen.len(), 1);
    for gone in [
        "upgrade",
        "http2-settings",
        "x-internal",
        "te",
        "proxy-authorization",
        "connection",
        "authorization",
    ] {
        assert!(
            !seen[0].headers.iter().any(|(k, _)| k == gone),
            "{gone} reached the replica: {:?}",
            seen[0].headers
        );
    }
    assert_eq!(seen[0].body, Bytes::from_static(b"{}"));
    gw.stop().await;
}
