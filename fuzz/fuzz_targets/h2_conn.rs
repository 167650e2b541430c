//! The HTTP/2 server driven frame by frame: the input is read as a sequence of client frames
//! (any type, flags, stream and payload; HEADERS often carry a well-formed request block, so
//! requests reach the gateway and an echoing replica behind it), written after the preface over
//! an in-memory pipe, then the client's side closes. Checks, besides no panic:
//! - the connection ends (the serve future completes, nothing left in flight) within 10 s;
//! - everything the gateway sends is valid HTTP/2: whole frames within the client's
//!   SETTINGS_MAX_FRAME_SIZE, only frame types a server may send, on stream 0 or a stream the
//!   client opened, header blocks that an independent HPACK decoder (the `hpack` crate) reads
//!   into a `:status` and lower-case, non-connection-specific fields, nothing on a stream after
//!   it ended, nothing after a GOAWAY with an error;
//! - flow control: no stream and not the connection get more DATA than the client allowed
//!   (initial windows and WINDOW_UPDATEs, counted generously);
//! - output bounded: at most the documented limits per stream (answers to 256 streams at a
//!   time, each the echo of a body within the body limit plus its headers).
#![no_main]
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use scoregate::metrics::Metrics;
use scoregate::proxy::{ConnInfo, Gateway};
use scoregate::routing::{RouteHandle, RouteTable};
use scoregate::server::h2::hpack::put_field;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_BODY: u64 = 64 * 1024;
const MAX_HEADER: usize = 16 * 1024;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A replica answering every request with its body (HTTP/1.1), on a thread of its own.
fn replica() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                listener.set_nonblocking(true).expect("nonblocking");
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((s, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(
                            |req: http::Request<hyper::body::Incoming>| async move {
                                use http_body_util::BodyExt;
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                Ok::<_, std::convert::Infallible>(http::Response::new(
                                    http_body_util::Full::new(body),
                                ))
                            },
                        );
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                            .await;
                    });
                }
            });
        });
        addr
    })
}

fn gateway() -> &'static Gateway {
    static GW: OnceLock<Gateway> = OnceLock::new();
    GW.get_or_init(|| {
        let toml = format!(
            r#"
[listen]
http = "127.0.0.1:0"
[limits]
max_body_bytes = {MAX_BODY}
[[services]]
name = "iris"
auth_enabled = false
replica_max_concurrent_requests = 1000
scoring_timeout_ms = 5000
[[services.versions]]
name = "blue"
replicas = ["{}"]
"#,
            replica()
        );
        let config = scoregate::config::from_toml(&toml, Path::new(".")).expect("fuzz config");
        let metrics = Metrics::new().expect("metrics");
        let routes = RouteHandle::new(RouteTable::build(&config.services, &metrics));
        Gateway::new(routes, metrics, MAX_BODY, None, false)
    })
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let n = payload.len() as u32;
    out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

/// A request header block: a scoring POST or a swagger GET, maybe with a content-length and an
/// extra field, from the input's choices.
fn request_block(choice: u8, extra: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    let (method, path): (&[u8], &[u8]) = match choice % 4 {
        0 | 1 => (b"POST", b"/api/v1/service/iris/score"),
        2 => (b"GET", b"/api/v1/service/iris/swagger.json"),
        _ => (b"POST", b"/api/v1/service/nope/score"),
    };
    put_field(&mut b, b":method", method);
    put_field(&mut b, b":scheme", b"https");
    put_field(&mut b, b":path", path);
    put_field(&mut b, b":authority", b"localhost");
    if choice & 0x10 != 0 {
        put_field(
            &mut b,
            b"content-length",
            (extra.len() % 100).to_string().as_bytes(),
        );
    }
    if choice & 0x20 != 0 && !extra.is_empty() {
        let name: Vec<u8> = extra.iter().take(8).map(|c| b'a' + c % 26).collect();
        put_field(&mut b, &name, extra);
    }
    b.to_vec()
}

/// What the client's frames allow the gateway to send.
#[derive(Default)]
struct Allowance {
    max_frame: usize,
    max_initial_window: i64,
    conn_credit: i64,
    stream_credit: HashMap<u32, i64>,
    /// Streams the client sent HEADERS on (odd ids): the only ones an answer may go to.
    opened: HashSet<u32>,
    pings: HashSet<[u8; 8]>,
}

/// Build the client's bytes from the input, and what they allow.
fn client_bytes(data: &[u8]) -> (Vec<u8>, Allowance) {
    let mut out = PREFACE.to_vec();
    frame(&mut out, 0x4, 0, 0, &[]);
    let mut a = Allowance {
        max_frame: 16_384,
        max_initial_window: 65_535,
        conn_credit: 65_535,
        ..Allowance::default()
    };
    let mut rest = data;
    while rest.len() >= 5 {
        let (head, tail) = rest.split_at(5);
        let (kind, flags, sid, len) = (
            head[0],
            head[1],
            head[2],
            usize::from(head[3]) << 4 | usize::from(head[4] >> 4),
        );
        let len = len.min(tail.len());
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        // Stream ids: mostly small odd ones (sid 0 stays 0), sometimes even or large.
        let stream = match sid {
            0 => 0,
            0xff => 0x7fff_ffff,
            s if s & 0x80 != 0 => u32::from(s & 0x7f) * 2,
            s => u32::from(s) * 2 - 1,
        };
        let kind = kind % 11; // 0..=9 the RFC's frame types, 10 an unknown one
        match kind {
            0x1 if flags & 0x40 != 0 => {
                // A well-formed request (flags: END_STREAM 0x1, END_HEADERS 0x4 as given).
                let block = request_block(
                    payload.first().copied().unwrap_or(0),
                    payload.get(1..).unwrap_or_default(),
                );
                frame(&mut out, 0x1, flags & 0x05, stream, &block);
            }
            _ => frame(&mut out, kind, flags, stream, payload),
        }
        if kind == 0x1 && stream % 2 == 1 {
            a.opened.insert(stream);
        }
        if kind == 0x4 && flags & 0x1 == 0 {
            for s in payload.chunks_exact(6) {
                let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                match u16::from_be_bytes([s[0], s[1]]) {
                    0x4 => a.max_initial_window = a.max_initial_window.max(i64::from(v)),
                    0x5 => a.max_frame = a.max_frame.max(v as usize),
                    _ => {}
                }
            }
        }
        if kind == 0x8 && payload.len() >= 4 {
            let inc = i64::from(
                u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff,
            );
            if stream == 0 {
                a.conn_credit += inc;
            } else {
                *a.stream_credit.entry(stream).or_default() += inc;
            }
        }
        if kind == 0x6 && payload.len() == 8 {
            a.pings.insert(payload.try_into().expect("8 bytes"));
        }
    }
    (out, a)
}

#[derive(Default)]
struct StreamSeen {
    headers: bool,
    ended: bool,
    data: i64,
}

/// Check everything the gateway sent.
fn check(out: &[u8], a: &Allowance) {
    const KINDS: [u8; 7] = [0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8];
    let mut at = 0;
    let mut first = true;
    let mut streams: HashMap<u32, StreamSeen> = HashMap::new();
    let mut conn_data = 0i64;
    let mut goaway_error = false;
    let mut block: Option<(u32, Vec<u8>, bool)> = None;
    let mut decoder = hpack::Decoder::new();
    while at < out.len() {
        assert!(
            out.len() - at >= 9,
            "a partial frame head at the end: {:?}",
            &out[at..]
        );
        let len =
            usize::from(out[at]) << 16 | usize::from(out[at + 1]) << 8 | usize::from(out[at + 2]);
        let (kind, flags) = (out[at + 3], out[at + 4]);
        let stream = u32::from_be_bytes([out[at + 5], out[at + 6], out[at + 7], out[at + 8]]);
        assert_eq!(stream & 0x8000_0000, 0, "the reserved bit is set");
        assert!(at + 9 + len <= out.len(), "a partial frame at the end");
        assert!(
            len <= a.max_frame,
            "a {len}-byte frame over the client's {}",
            a.max_frame
        );
        let payload = &out[at + 9..at + 9 + len];
        at += 9 + len;
        assert!(
            !goaway_error,
            "a frame (type {kind}) after a GOAWAY with an error"
        );
        if first {
            assert_eq!(
                (kind, flags & 0x1),
                (0x4, 0),
                "the server's preface is SETTINGS"
            );
            first = false;
        }
        if let Some((id, b, end)) = &mut block {
            assert!(
                kind == 0x9 && stream == *id,
                "a header block interrupted by type {kind}"
            );
            b.extend_from_slice(payload);
            if flags & 0x4 != 0 {
                let (id, b, end) = (*id, std::mem::take(b), *end);
                block = None;
                header_block(&mut decoder, &b, streams.entry(id).or_default(), end);
            }
            continue;
        }
        assert!(KINDS.contains(&kind), "the server sent frame type {kind}");
        match kind {
            0x4 | 0x6 | 0x7 => assert_eq!(stream, 0, "type {kind} on stream {stream}"),
            // Never on an idle stream (RFC 9113 §6.4): only on one the client opened.
            0x3 => assert!(
                a.opened.contains(&stream),
                "RST_STREAM on stream {stream}, which the client never opened"
            ),
            0x8 if stream == 0 => {}
            _ => assert!(
                a.opened.contains(&stream),
                "type {kind} on stream {stream}, never opened by the client"
            ),
        }
        match kind {
            0x0 => {
                let st = streams.entry(stream).or_default();
                assert!(
                    st.headers && !st.ended,
                    "DATA on stream {stream} before its headers or after its end"
                );
                st.data += len as i64;
                conn_data += len as i64;
                let credit =
                    a.max_initial_window + a.stream_credit.get(&stream).copied().unwrap_or(0);
                assert!(
                    st.data <= credit,
                    "stream {stream}: {} DATA bytes, window allowed {credit}",
                    st.data
                );
                assert!(
                    conn_data <= a.conn_credit,
                    "{conn_data} DATA bytes, connection window allowed {}",
                    a.conn_credit
                );
                if flags & 0x1 != 0 {
                    st.ended = true;
                }
            }
            0x1 => {
                let st = streams.entry(stream).or_default();
                assert!(!st.ended, "HEADERS on stream {stream} after its end");
                let end = flags & 0x1 != 0;
                if flags & 0x4 != 0 {
                    header_block(&mut decoder, payload, st, end);
                } else {
                    block = Some((stream, payload.to_vec(), end));
                }
            }
            0x3 => {
                assert_eq!(len, 4, "RST_STREAM size");
                let st = streams.entry(stream).or_default();
                st.ended = true;
            }
            0x6 => {
                assert_eq!(flags & 0x1, 0x1, "the server only answers PINGs");
                let p: [u8; 8] = payload.try_into().expect("an 8-byte PING");
                assert!(
                    a.pings.contains(&p),
                    "a PING ACK for a payload the client never sent"
                );
            }
            0x7 => {
                assert!(len >= 8, "GOAWAY size");
                let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                goaway_error = code != 0;
            }
            0x8 => assert_eq!(len, 4, "WINDOW_UPDATE size"),
            0x4 => assert_eq!(len % 6, 0, "SETTINGS size"),
            _ => {}
        }
    }
    assert!(block.is_none(), "a header block left unfinished");
}

fn header_block(decoder: &mut hpack::Decoder<'_>, block: &[u8], st: &mut StreamSeen, end: bool) {
    let fields = decoder
        .decode(block)
        .unwrap_or_else(|e| panic!("undecodable header block {e:?}: {block:?}"));
    let status = fields
        .iter()
        .find(|(n, _)| n == b":status")
        .map(|(_, v)| v.clone());
    if st.headers {
        // Trailers: no pseudo-header, and they end the stream.
        assert!(
            status.is_none() && end,
            "a second header block that is not trailers"
        );
    } else {
        let status = status.expect("a response without :status");
        assert!(
            status.len() == 3 && status.iter().all(u8::is_ascii_digit),
            "status {status:?}"
        );
        assert!(status[0] != b'1', "an interim response");
    }
    for (name, _) in &fields {
        if name.first() == Some(&b':') {
            assert_eq!(name, b":status", "pseudo-header {name:?} in a response");
            continue;
        }
        assert!(
            !name.iter().any(u8::is_ascii_uppercase),
            "upper-case field name {name:?}"
        );
        for bad in [
            &b"connection"[..],
            b"keep-alive",
            b"proxy-connection",
            b"transfer-encoding",
            b"upgrade",
        ] {
            assert_ne!(
                name.as_slice(),
                bad,
                "connection-specific field in a response"
            );
        }
    }
    st.headers = true;
    if end {
        st.ended = true;
    }
}

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
    }
    let (input, allowance) = client_bytes(data);
    let gw = gateway();
    let info = ConnInfo {
        remote: "127.0.0.1:40000".parse().expect("addr"),
        tls: true,
        peer: false,
    };
    let (out, left) = RT.with(|rt| {
        rt.block_on(async {
            let (mut client, mut server) = tokio::io::duplex(1 << 20);
            let serving = async move {
                let left =
                    scoregate::server::h2::serve_alone(&mut server, gw, info, MAX_HEADER).await;
                drop(server);
                left
            };
            let talking = async move {
                let _ = client.write_all(&input).await;
                let _ = client.shutdown().await;
                let mut out = Vec::new();
                let _ = client.read_to_end(&mut out).await;
                out
            };
            tokio::time::timeout(Duration::from_secs(10), async {
                tokio::join!(serving, talking)
            })
            .await
            .map(|(left, out)| (out, left))
            .expect("the connection did not end within 10 s")
        })
    });
    assert_eq!(
        left, 0,
        "requests still in flight after the connection ended"
    );
    // 256 streams at a time, each answered with at most its echoed body and headers, plus the
    // connection's own frames: far above any honest answer, far below an unbounded one.
    assert!(
        out.len() <= 1024 * 1024 + 64 * data.len(),
        "{} bytes out for {} in",
        out.len(),
        data.len()
    );
    check(&out, &allowance);
});
