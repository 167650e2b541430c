//! The HTTP/1.1 fast path on the wire (raw sockets, and curl over TLS): pipelined requests, a
//! body written apart from its head awaited (the connection stays on the fast path), a request
//! it does not take (chunked, or a body slower than the header timeout) handed to hyper
//! mid-connection with nothing lost, `Connection: close`, response framing (length, chunked,
//! none for 204) and the `Date` header.
#![cfg(feature = "peer-tests")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A replica that records each request body and answers with the body's length.
async fn counting_replica() -> (Backend, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let backend = Backend::start(move |req: http::Request<hyper::body::Incoming>, _| {
        let log = log.clone();
        async move {
            let status = if req.headers().contains_key("x-want-204") {
                204
            } else {
                200
            };
            let body = body_bytes(req.into_body()).await;
            let answer = format!("{{\"got\":{}}}", body.len());
            if let Ok(mut l) = log.lock() {
                l.push(body);
            }
            let mut r = http::Response::new(Full::new(Bytes::from(answer)));
            *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
            r
        }
    })
    .await;
    (backend, seen)
}

type Seen = Arc<Mutex<Vec<Bytes>>>;

/// A gateway in front of a counting replica, and a plain-HTTP connection to it.
async fn connected() -> (Backend, Seen, Pki, TestGateway, TcpStream) {
    let (replica, seen) = counting_replica().await;
    let pki = Pki::new(&["localhost"]);
    let gw = TestGateway::start(&service_toml(&pki, "", &[replica.addr])).await;
    let s = TcpStream::connect(gw.http.expect("http"))
        .await
        .expect("connect");
    (replica, seen, pki, gw, s)
}

fn post(body: &str, extra: &str) -> String {
    format!(
        "POST /api/v1/service/iris/score HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {KEY}\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

/// Read responses until `n` have ended (by their length) or the server closes; returns the
/// raw text and whether the connection was closed.
async fn read_responses(s: &mut TcpStream, n: usize) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if complete_responses(&got) >= n {
            // Give a close a moment to arrive, so the caller can tell.
            return match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                Ok(Ok(0)) => (String::from_utf8_lossy(&got).into(), true),
                _ => (String::from_utf8_lossy(&got).into(), false),
            };
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&got).into(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into(), true),
            Ok(Ok(k)) => got.extend_from_slice(&buf[..k]),
        }
    }
}

/// Responses in `raw` whose head and (content-length) body are complete.
fn complete_responses(raw: &[u8]) -> usize {
    let mut count = 0;
    let mut rest = raw;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(head)) = resp.parse(rest) else {
            return count;
        };
        let len = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        if rest.len() < head + len {
            return count;
        }
        count += 1;
        rest = &rest[head + len..];
    }
}

#[tokio::test]
async fn pipelined_then_handed_to_hyper_mid_connection_then_closed_on_request() {
    let (_replica, seen, _pki, gw, mut s) = connected().await;

    // Two simple requests in one write (pipelined), then a chunked one (hyper's), then a
    // simple one after it on hyper, asking to close.
    let chunked = format!(
        "POST /api/v1/service/iris/score HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {KEY}\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    );
    let raw = format!(
        "{}{}{}{}",
        post(r#"{"a":1}"#, ""),
        post(r#"{"bb":22}"#, ""),
        chunked,
        post("xyz", "connection: close\r\n"),
    );
    s.write_all(raw.as_bytes()).await.expect("write");
    let (text, closed) = read_responses(&mut s, 4).await;
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 4, "{text}");
    for (i, got) in [7, 9, 7, 3].iter().enumerate() {
        let want = format!("{{\"got\":{got}}}");
        assert!(text.contains(&want), "answer {i} ({want}) missing: {text}");
    }
    assert!(closed, "closed after `connection: close`: {text}");
    let lower = text.to_ascii_lowercase();
    assert_eq!(lower.matches("\r\ndate: ").count(), 4, "{text}");
    assert_eq!(lower.matches("\r\nx-ms-request-id: ").count(), 4, "{text}");
    assert!(lower.contains("\r\nconnection: close\r\n"), "{text}");
    let bodies = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let bodies: Vec<&[u8]> = bodies.iter().map(|b| b.as_ref()).collect();
    assert_eq!(
        bodies,
        vec![&b"{\"a\":1}"[..], b"{\"bb\":22}", b"abcdefg", b"xyz"]
    );
    assert_eq!(
        general_path(&gw).await,
        1,
        "the chunked request moved it to hyper"
    );
    gw.stop().await;
}

/// `scoregate_http1_general_path_connections_total` from the gateway's /metrics (absent: a
/// failure, not a zero).
async fn general_path(gw: &TestGateway) -> u64 {
    let text = gw.metrics().await;
    let line = text
        .lines()
        .find(|l| l.starts_with("scoregate_http1_general_path_connections_total "))
        .unwrap_or_else(|| panic!("no general-path counter in /metrics:\n{text}"));
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a count")
}

/// Send one request whose body comes `gap` after its head (and after the body's first 2,000
/// bytes): how Python's `requests` writes a POST, or a body in several segments.
async fn split_request(s: &mut TcpStream, body_len: usize, gap: Duration) -> String {
    let whole = post(&"x".repeat(body_len), "");
    let head_len = whole.len() - body_len;
    let (head, tail) = whole.split_at(head_len + 2000);
    s.write_all(head.as_bytes()).await.expect("head");
    tokio::time::sleep(gap).await;
    s.write_all(tail.as_bytes()).await.expect("tail");
    read_responses(s, 1).await.0
}

#[tokio::test]
async fn a_body_written_apart_from_its_head_is_awaited_and_the_connection_stays_fast() {
    let (_replica, seen, _pki, gw, mut s) = connected().await;
    // One request first, so the wait happens on a connection already in use.
    s.write_all(post("{}", "").as_bytes()).await.expect("write");
    let (first, _) = read_responses(&mut s, 1).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // The rest of the body 200 ms later (within header_read_timeout_ms, 10 s by default).
    let text = split_request(&mut s, 5000, Duration::from_millis(200)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(r#"{"got":5000}"#), "{text}");
    // And the connection keeps serving afterwards, still on the fast path.
    s.write_all(post("[1]", "").as_bytes())
        .await
        .expect("write");
    let (text, _) = read_responses(&mut s, 1).await;
    assert!(text.contains(r#"{"got":3}"#), "{text}");
    assert_eq!(seen.lock().map(|s| s.len()).unwrap_or(0), 3);
    assert_eq!(
        general_path(&gw).await,
        0,
        "no connection left the fast path"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_body_slower_than_the_header_timeout_goes_to_hyper_and_arrives_whole() {
    let (replica, seen) = counting_replica().await;
    let pki = Pki::new(&["localhost"]);
    let toml = service_toml(&pki, "", &[replica.addr]).replace(
        "[[services]]",
        "[limits]\nheader_read_timeout_ms = 300\n\n[[services]]",
    );
    let gw = TestGateway::start(&toml).await;
    let mut s = TcpStream::connect(gw.http.expect("http"))
        .await
        .expect("connect");
    // The rest of the body 800 ms after its head: past the fast path's wait, so hyper takes the
    // connection (and streams the body) instead of closing it.
    let text = split_request(&mut s, 5000, Duration::from_millis(800)).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(r#"{"got":5000}"#), "{text}");
    assert_eq!(general_path(&gw).await, 1);
    s.write_all(post("[1]", "").as_bytes())
        .await
        .expect("write");
    let (text, _) = read_responses(&mut s, 1).await;
    assert!(text.contains(r#"{"got":3}"#), "{text}");
    let bodies = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(
        bodies.iter().map(|b| b.len()).collect::<Vec<_>>(),
        [5000, 3]
    );
    assert!(bodies[0].iter().all(|&c| c == b'x'));
    gw.stop().await;
}

#[tokio::test]
async fn a_client_that_closes_mid_body_sends_nothing_to_the_replica() {
    let (_replica, seen, _pki, gw, mut s) = connected().await;
    let whole = post(&"x".repeat(5000), "");
    s.write_all(&whole.as_bytes()[..whole.len() - 1000])
        .await
        .expect("head and part of the body");
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        seen.lock().map(|s| s.len()).unwrap_or(0),
        0,
        "a truncated body was forwarded"
    );
    assert_eq!(general_path(&gw).await, 0);
    gw.stop().await;
}

#[tokio::test]
async fn a_body_larger_than_one_read_sent_at_once_is_answered_and_the_connection_reused() {
    let (_replica, seen, _pki, gw, mut s) = connected().await;
    let body = "y".repeat(40_000);
    s.write_all(post(&body, "").as_bytes())
        .await
        .expect("write");
    let (text, _) = read_responses(&mut s, 1).await;
    assert!(text.contains(r#"{"got":40000}"#), "{text}");
    s.write_all(post("{}", "").as_bytes()).await.expect("write");
    let (text, _) = read_responses(&mut s, 1).await;
    assert!(text.contains(r#"{"got":2}"#), "{text}");
    let bodies = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(bodies.first().map(|b| b.len()), Some(40_000));
    assert!(bodies[0].iter().all(|&c| c == b'y'));
    gw.stop().await;
}

#[tokio::test]
async fn a_204_has_no_body_or_length_and_the_connection_is_reused() {
    let (_replica, _, _pki, gw, mut s) = connected().await;
    s.write_all(post("{}", "x-want-204: 1\r\n").as_bytes())
        .await
        .expect("write");
    let (text, _) = read_responses(&mut s, 1).await;
    assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"), "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(!lower.contains("content-length"), "{text}");
    assert!(!lower.contains("transfer-encoding"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n"),
        "nothing after the head: {text:?}"
    );
    s.write_all(post("{}", "").as_bytes()).await.expect("write");
    let (text, _) = read_responses(&mut s, 1).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    gw.stop().await;
}

/// A replica that answers every request with a chunked body of `chunks` x `size` bytes, or a
/// length-delimited one when `length` is set. Raw TCP, one request per connection.
async fn raw_replica(chunks: usize, size: usize, length: bool) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let framing = if length {
                    format!("content-length: {}\r\n", chunks * size)
                } else {
                    "transfer-encoding: chunked\r\n".to_string()
                };
                let head = format!("HTTP/1.1 200 OK\r\nconnection: close\r\n{framing}\r\n");
                let _ = s.write_all(head.as_bytes()).await;
                for i in 0..chunks {
                    let data = vec![b'a' + (i % 26) as u8; size];
                    if !length {
                        let _ = s.write_all(format!("{size:x}\r\n").as_bytes()).await;
                    }
                    let _ = s.write_all(&data).await;
                    if !length {
                        let _ = s.write_all(b"\r\n").await;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                if !length {
                    let _ = s.write_all(b"0\r\n\r\n").await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn large_and_chunked_replies_stream_through_intact_to_curl_over_tls() {
    let pki = Pki::new(&["localhost"]);
    for (chunks, size, length) in [(40, 5000, false), (30, 10_000, true)] {
        let replica = raw_replica(chunks, size, length).await;
        let gw = TestGateway::start(&service_toml(&pki, "", &[replica])).await;
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--http1.1", "-D", "-", "--cacert"])
            .arg(pki.ca_path())
            .args(["-H", &format!("authorization: Bearer {KEY}")])
            .args(["--data", "{}"])
            .arg(gw.https("/api/v1/service/iris/score"))
            .output()
            .await
            .expect("curl runs");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        let lower = head.to_ascii_lowercase();
        if length {
            assert!(lower.contains("content-length: 300000"), "{head}");
        } else {
            assert!(lower.contains("transfer-encoding: chunked"), "{head}");
        }
        let want: String = (0..chunks)
            .map(|i| ((b'a' + (i % 26) as u8) as char).to_string().repeat(size))
            .collect();
        assert_eq!(body.len(), want.len(), "{head}");
        assert!(body == want, "the body arrived intact");
        gw.stop().await;
    }
}

/// A replica on a raw socket: records each request (head and body) and answers every one with
/// `reply`, keeping the connection open.
async fn recording_replica(
    reply: &'static [u8],
) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    // One request: the head, then its content-length body.
                    let mut headers = [httparse::EMPTY_HEADER; 32];
                    let mut req = httparse::Request::new(&mut headers);
                    if let Ok(httparse::Status::Complete(head)) = req.parse(&got) {
                        let len = req
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                            .unwrap_or(0usize);
                        if got.len() >= head + len {
                            let one: Vec<u8> = got.drain(..head + len).collect();
                            if let Ok(mut l) = log.lock() {
                                l.push(String::from_utf8_lossy(&one).into_owned());
                            }
                            if s.write_all(reply).await.is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Header lines of a head, lower-cased names, sorted (order is not part of HTTP semantics
/// across different names); `date` left out.
fn header_set(head: &str) -> Vec<String> {
    let mut lines: Vec<String> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| format!("{}: {v}", n.to_ascii_lowercase()))
        .filter(|l| !l.starts_with("date: "))
        .collect();
    lines.sort();
    lines
}

/// The fast path forwards the client's raw head (hop-by-hop headers and the gateway's key
/// gone, forwarding headers and the request id set) and passes the replica's raw head back
/// (hop-by-hop ones gone, the request id the gateway's): the same as the request hyper parses
/// when the fast path hands a connection over.
#[tokio::test]
async fn raw_heads_are_forwarded_and_answered_as_hyper_parsed_ones_are() {
    let reply: &'static [u8] = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop-Reply\r\nX-Hop-Reply: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nX-Ms-Request-Id: replica-id\r\nX-Reply: kept\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\nok";
    let (replica, seen) = recording_replica(reply).await;
    let pki = Pki::new(&["localhost"]);
    let gw = TestGateway::start(&service_toml(&pki, "", &[replica])).await;
    let mut s = TcpStream::connect(gw.http.expect("http"))
        .await
        .expect("connect");
    let common = format!(
        "Host: localhost\r\nAuthorization: Bearer {KEY}\r\nX-Forwarded-For: 203.0.113.7\r\nx-forwarded-for: 198.51.100.1\r\nKeep-Alive: 300\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\nX-Forwarded-Proto: ftp\r\nX-Ms-Request-Id: client-id-1\r\nX-Custom: kept\r\nContent-Length: 2\r\n"
    );
    // The first is the fast path's; the second names a header in `Connection`, which only
    // hyper handles.
    let raw = format!(
        "POST /api/v1/service/iris/score?x=1 HTTP/1.1\r\n{common}\r\n{{}}\
         POST /api/v1/service/iris/score?x=1 HTTP/1.1\r\n{common}Connection: keep-alive, X-Hop\r\nX-Hop: no\r\n\r\n{{}}"
    );
    s.write_all(raw.as_bytes()).await.expect("write");
    let (text, _) = read_responses(&mut s, 2).await;
    let answers: Vec<&str> = text.split("HTTP/1.1 ").filter(|a| !a.is_empty()).collect();
    assert_eq!(answers.len(), 2, "{text}");
    let mut views = Vec::new();
    for a in &answers {
        let (head, body) = a.split_once("\r\n\r\n").expect("head");
        assert!(head.starts_with("200 OK"), "{a}");
        assert_eq!(body, "ok");
        let set = header_set(&format!("HTTP/1.1 {head}"));
        assert_eq!(
            set,
            [
                "azureml-model-deployment: blue",
                "content-length: 2",
                "content-type: application/json",
                "x-ms-request-id: client-id-1",
                "x-reply: kept"
            ],
            "{a}"
        );
        views.push(set);
    }
    let requests = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(requests.len(), 2, "{requests:?}");
    for r in &requests {
        let (head, body) = r.split_once("\r\n\r\n").expect("head");
        assert!(head.starts_with("POST /score?x=1 HTTP/1.1\r\n"), "{r}");
        assert_eq!(body, "{}");
        assert_eq!(
            header_set(head),
            [
                "content-length: 2",
                "host: localhost",
                "x-custom: kept",
                "x-forwarded-for: 203.0.113.7, 198.51.100.1, 127.0.0.1",
                "x-forwarded-proto: http",
                "x-ms-request-id: client-id-1",
            ],
            "{r}"
        );
    }
    // The same replica head to an HTTP/2 client: names lower-cased (HTTP/2 refuses others),
    // the same headers.
    let c = client(&pki.ca_pem)
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let resp = c
        .post(gw.https("/api/v1/service/iris/score"))
        .bearer_auth(KEY)
        .header("x-ms-request-id", "client-id-1")
        .body("{}")
        .send()
        .await
        .expect("HTTP/2 answer");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let mut set: Vec<String> = resp
        .headers()
        .iter()
        .filter(|(n, _)| n.as_str() != "date")
        .map(|(n, v)| format!("{n}: {}", v.to_str().expect("ascii")))
        .collect();
    set.sort();
    assert_eq!(set, views[0]);
    assert_eq!(resp.text().await.expect("body"), "ok");
    gw.stop().await;
}
