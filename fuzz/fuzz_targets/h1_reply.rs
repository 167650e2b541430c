//! The HTTP/1.1 replica client on arbitrary replica bytes. A replica on loopback answers the
//! gateway's first request with the input, then closes its side; every later request (on any
//! connection) gets a response carrying a nonce the input cannot know. Checks, besides no panic
//! and no hang (5 s):
//! - never more body than declared: an answer taken as `Content-Length: N` delivers exactly N
//!   bytes, those after the head;
//! - a chunked answer delivers exactly what an independent decoder reads from the chunks, and an
//!   answer framed by the connection's end delivers exactly the bytes after the head;
//! - never a smuggled second response: the next request is answered by the replica's real
//!   second response (its nonce) or fails, never by bytes that followed the first one.
#![no_main]
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use scoregate::config::Protocol;
use scoregate::metrics::Retries;
use scoregate::request::forward::encode_http1;
use scoregate::request::{ClientBody, ClientHead};
use scoregate::upstream::{Outgoing, Replica, ReplyHeaders};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REQUEST: &[u8] = b"POST /score HTTP/1.1\r\nhost: r\r\ncontent-length: 2\r\n\r\n{}";

/// How the first response's body is framed, read the way RFC 9112 §6.3 says.
enum Framing {
    Length(usize),
    Chunked,
    Close,
}

/// The first final response of `r`: where its head ends and how its body is framed; `None` when
/// it is not a response both sides must read the same way (no complete head, a 101, a parse
/// failure, conflicting lengths).
fn reference(mut r: &[u8]) -> Option<(usize, Framing, u16)> {
    let mut offset = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut resp = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(len) = resp.parse(r).ok()? else {
            return None;
        };
        let code = resp.code?;
        if (100..200).contains(&code) {
            if code == 101 {
                return None;
            }
            offset += len;
            r = &r[len..];
            continue;
        }
        if code == 204 || code == 304 {
            return Some((offset + len, Framing::Length(0), code));
        }
        let mut te = None;
        let mut cl: Option<usize> = None;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = Some(h.value);
            } else if h.name.eq_ignore_ascii_case("content-length") {
                for part in h.value.split(|&c| c == b',') {
                    let part = std::str::from_utf8(part).ok()?.trim_matches([' ', '\t']);
                    if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
                        return None;
                    }
                    let n: usize = part.parse().ok()?;
                    if cl.is_some_and(|c| c != n) {
                        return None;
                    }
                    cl = Some(n);
                }
            }
        }
        let framing = match (te, cl) {
            (Some(te), _) => {
                let last = te.rsplit(|&c| c == b',').next().unwrap_or(&[]);
                if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    Framing::Chunked
                } else {
                    Framing::Close
                }
            }
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        };
        return Some((offset + len, framing, code));
    }
}

/// An independent chunked decoder: the data, or `None` when the chunks are malformed or cut.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let line = |b: &[u8]| -> Option<(Vec<u8>, usize)> {
        let i = b.iter().position(|&c| c == b'\n')?;
        let l = b[..i].strip_suffix(b"\r").unwrap_or(&b[..i]);
        Some((l.to_vec(), i + 1))
    };
    loop {
        let (l, used) = line(b)?;
        b = &b[used..];
        let digits = l.split(|&c| c == b';').next()?.trim_ascii();
        if digits.is_empty() || digits.len() > 15 {
            return None;
        }
        let size = usize::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()?;
        if size == 0 {
            // Trailers up to an empty line.
            loop {
                let (l, used) = line(b)?;
                b = &b[used..];
                if l.is_empty() {
                    return Some(out);
                }
            }
        }
        if b.len() < size {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size..];
        let (l, used) = line(b)?;
        if !l.is_empty() {
            return None;
        }
        b = &b[used..];
    }
}

/// The request as the gateway sends it (forwarding headers added).
fn sent_len() -> usize {
    static LEN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LEN.get_or_init(|| {
        let Outgoing {
            head,
            body,
            forward,
            ..
        } = request();
        let (ClientHead::Raw(head), ClientBody::Whole(body)) = (head, body) else {
            unreachable!("a raw request with its whole body");
        };
        encode_http1(
            &head,
            body.as_ref(),
            &forward,
            "127.0.0.1:9".parse().expect("addr"),
        )
        .len()
    })
}

/// Read one request (the gateway's fixed one) from `s`; false at EOF.
async fn read_request(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    let len = sent_len();
    while buf.len() < len {
        let mut chunk = [0u8; 1024];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..len);
    true
}

async fn replica(first: Bytes, nonce: u64) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let second = format!("HTTP/1.1 200 OK\r\nx-second: {nonce}\r\ncontent-length: 6\r\n\r\nsecond");
    let task = tokio::spawn(async move {
        let mut first = Some(first);
        let mut conns = Vec::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            if let Some(reply) = first.take() {
                if read_request(&mut s, &mut buf).await {
                    let _ = s.write_all(&reply).await;
                }
                // Its side closed (FIN), the connection kept so nothing is reset.
                let _ = s.shutdown().await;
                conns.push(s);
                continue;
            }
            let second = second.clone();
            tokio::spawn(async move {
                while read_request(&mut s, &mut buf).await {
                    if s.write_all(second.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

fn request() -> Outgoing {
    Outgoing::from_wire(REQUEST, "fuzz", false)
}

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
    }
    let nonce = fastrand_nonce(data);
    RT.with(|rt| {
        rt.block_on(async {
            let run = async {
                let (addr, task) = replica(Bytes::copy_from_slice(data), nonce).await;
                let r = Arc::new(Replica::new(addr, Protocol::Http1, 10));
                let retries = Retries::detached();
                if let Ok(reply) = r.send(request(), &retries).await {
                    let status = reply.status.as_u16();
                    let body = reply.body.collect().await.map(|b| b.to_bytes());
                    if let (Ok(body), Some((head, framing, code))) = (body, reference(data)) {
                        assert_eq!(status, code, "the status of the first final response");
                        let rest = &data[head..];
                        match framing {
                            Framing::Length(n) => {
                                assert_eq!(body.len(), n, "declared {n}, delivered {}", body.len());
                                assert_eq!(&body[..], &rest[..n], "the bytes after the head");
                            }
                            Framing::Chunked => {
                                assert_eq!(Some(body.to_vec()), dechunk(rest), "the chunks' data")
                            }
                            Framing::Close => assert_eq!(&body[..], rest, "everything to the end"),
                        }
                    }
                }
                // The next request: the replica's real second answer, or a failure.
                if let Ok(reply) = r.send(request(), &retries).await {
                    let ReplyHeaders::Raw(h) = &reply.headers else {
                        panic!("an HTTP/1.1 reply's headers are raw");
                    };
                    let map = h.to_map(0, |_| false);
                    let seen = map
                        .get("x-second")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let body = reply.body.collect().await.map(|b| b.to_bytes());
                    assert_eq!(
                        (reply.status.as_u16(), seen, body.ok()),
                        (
                            200,
                            Some(nonce.to_string()),
                            Some(Bytes::from_static(b"second"))
                        ),
                        "the second request was answered by something else than the second response"
                    );
                }
                task.abort();
            };
            tokio::time::timeout(Duration::from_secs(5), run)
                .await
                .expect("no hang: both exchanges end within 5 s");
        })
    });
});

/// A value the input cannot predict (the process's randomness mixed with the input's length).
fn fastrand_nonce(data: &[u8]) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(data.len());
    h.finish()
}
