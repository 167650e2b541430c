//! HTTP/1.1 on the wire for the fast path (`fast`): taking a simple request out of the read
//! buffer, writing a response head, and handing a connection's unread bytes to hyper.
//!
//! "Simple" is deliberately narrow — HTTP/1.1, origin-form target, not HEAD/CONNECT, no
//! `Transfer-Encoding`, `Expect` or `Upgrade`, at most one `Content-Length` of plain digits no
//! larger than the body limit, `Connection` only `close`/`keep-alive`, and the whole declared
//! body arrived (`Take::Body` asks for the rest, which the caller reads only if it is readable
//! now). Everything else, including every malformed or ambiguous request, goes to hyper
//! untouched, so its answers (400, 413, 431, smuggling defences) stay exactly hyper's.

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::{Method, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::AnswerHeaders;
use crate::proxy::headers;
use crate::proxy::raw::{self, RawHeaders, RawRequest, Role};

/// hyper's default limit on request header fields.
const MAX_HEADERS: usize = 100;

/// What the read buffer holds.
// Returned once per request and taken apart at once: boxing the parts would cost an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Take {
    /// Not yet a whole head: read more.
    Partial,
    /// Not for the fast path (or malformed): hand the connection to hyper.
    Other,
    /// A simple request whose body has not all been read: the buffer needs this many bytes.
    Body(usize),
    /// A request (its headers raw), its body, and whether the client asked to close afterwards.
    Request {
        head: RawRequest,
        body: Option<Bytes>,
        close: bool,
    },
}

/// Take one simple request from the front of `buf`. `max_head` bounds the head (hyper's
/// `max_buf_size`), `max_body` the declared body.
pub fn take_request(buf: &mut BytesMut, max_head: usize, max_body: u64) -> Take {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) if n <= max_head => n,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Take::Partial,
        _ => return Take::Other,
    };
    if req.version != Some(1) {
        return Take::Other;
    }
    let method = match req.method.map(|m| Method::from_bytes(m.as_bytes())) {
        Some(Ok(m)) if m != Method::HEAD && m != Method::CONNECT => m,
        _ => return Take::Other,
    };
    let Some(path) = req.path.filter(|p| p.starts_with('/')) else {
        return Take::Other;
    };
    let mut body_len: Option<u64> = None;
    let mut close = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            match (body_len, headers::content_length(h.value)) {
                (None, Some(n)) if n <= max_body => body_len = Some(n),
                _ => return Take::Other,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Take::Other;
        } else if name.eq_ignore_ascii_case(b"connection") {
            if h.value.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if !h.value.eq_ignore_ascii_case(b"keep-alive") {
                return Take::Other;
            }
        }
    }
    let content_length = body_len;
    let body_len = body_len.unwrap_or(0) as usize;
    if buf.len() < head_len + body_len {
        return Take::Body(head_len + body_len);
    }
    // Offsets into the buffer: the head is cut from it once frozen (no copies), and its
    // headers stay as they arrived (`proxy::raw`).
    let base = buf.as_ptr() as usize;
    let (path_at, path_len) = raw::offset(base, path.as_bytes());
    let spans = req.headers.iter().map(|h| raw::span(base, h)).collect();
    let data = buf.split_to(head_len + body_len).freeze();
    let (path_at, path_len) = (path_at as usize, path_len as usize);
    let Ok(uri) = Uri::from_maybe_shared(data.slice(path_at..path_at + path_len)) else {
        return Take::Other;
    };
    let body = (body_len > 0).then(|| data.slice(head_len..));
    let head = RawRequest {
        method,
        uri,
        headers: RawHeaders::new(data, spans),
        content_length,
    };
    Take::Request { head, body, close }
}

/// How a response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all (1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
}

/// Write the status line and headers. `Content-Length` and `Transfer-Encoding` come from
/// `framing` (any in `headers` are replaced), hop-by-hop headers are not written; `Date` is
/// added when missing, as hyper does.
pub fn put_head(
    out: &mut BytesMut,
    status: StatusCode,
    headers: &AnswerHeaders,
    framing: Framing,
    close: bool,
) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    let mut dated = false;
    headers.for_each(|name, value| {
        match raw::role(name) {
            Role::Hop => return,
            // A 304 keeps the length of what it stands for; every other length is ours.
            Role::Length if status != StatusCode::NOT_MODIFIED => return,
            Role::Date => dated = true,
            _ => {}
        }
        out.put_slice(name);
        out.put_slice(b": ");
        out.put_slice(value);
        out.put_slice(b"\r\n");
    });
    match framing {
        Framing::None => {}
        Framing::Length(n) => headers::put_content_length(out, n),
        Framing::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    if !dated {
        out.put_slice(b"date: ");
        put_date(out);
        out.put_slice(b"\r\n");
    }
    if close {
        out.put_slice(b"connection: close\r\n");
    }
    out.put_slice(b"\r\n");
}

/// The framing a response gets: none where HTTP forbids a body, its length when the body
/// knows it, else chunked.
pub fn framing(status: StatusCode, exact: Option<u64>) -> Framing {
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::None
    } else if let Some(n) = exact {
        Framing::Length(n)
    } else {
        Framing::Chunked
    }
}

thread_local! {
    /// The IMF-fixdate of the current second, formatted once per second per thread.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

pub(crate) fn put_date(out: &mut BytesMut) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        out.put_slice(d.1.as_bytes());
    });
}

/// A connection whose first bytes were already read: they are read again, then the stream.
#[derive(Debug)]
pub struct Rewind<T> {
    pre: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(pre: Bytes, inner: T) -> Self {
        Rewind { pre, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, header};
    use tokio::io::AsyncReadExt;

    fn take(raw: &[u8]) -> (Take, BytesMut) {
        let mut buf = BytesMut::from(raw);
        let t = take_request(&mut buf, 1024, 100);
        (t, buf)
    }

    #[test]
    fn a_simple_request_is_taken_with_its_body_and_the_rest_stays() {
        let raw = b"POST /api/v1/service/iris/score?x=1 HTTP/1.1\r\nHost: a\r\nX-Custom: v\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n";
        let (t, rest) = take(raw);
        let Take::Request { head, body, close } = t else {
            panic!("not taken: {t:?}");
        };
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.uri, "/api/v1/service/iris/score?x=1");
        assert_eq!(head.headers.get(&http::header::HOST), Some(&b"a"[..]));
        assert_eq!(head.content_length, Some(3));
        let parts = head.into_parts();
        assert_eq!(parts.version, http::Version::HTTP_11);
        assert_eq!(parts.headers["host"], "a");
        assert_eq!(parts.headers["x-custom"], "v");
        assert_eq!(parts.headers.len(), 3);
        assert_eq!(body.as_deref(), Some(&b"abc"[..]));
        assert!(!close);
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn connection_close_is_reported_and_no_length_means_no_body() {
        let (t, rest) = take(b"GET /x HTTP/1.1\r\nconnection: Close\r\n\r\n");
        assert!(
            matches!(
                t,
                Take::Request {
                    body: None,
                    close: true,
                    ..
                }
            ),
            "{t:?}"
        );
        assert!(rest.is_empty());
    }

    #[test]
    fn partial_heads_wait_and_everything_unusual_goes_to_hyper_untouched() {
        for partial in [
            &b"POST /x HTTP/1.1\r\nhost: a"[..],
            b"PO",
            b"GET / HTTP/1.1\r\n",
        ] {
            let (t, rest) = take(partial);
            assert!(matches!(t, Take::Partial), "{partial:?}: {t:?}");
            assert_eq!(&rest[..], partial, "nothing consumed");
        }
        let other: &[&[u8]] = &[
            b"POST /x HTTP/1.0\r\ncontent-length: 1\r\n\r\na",
            b"HEAD /x HTTP/1.1\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"GET http://a/x HTTP/1.1\r\n\r\n",
            b"POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /x HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
            b"GET /x HTTP/1.1\r\nupgrade: h2c\r\n\r\n",
            b"GET /x HTTP/1.1\r\nconnection: upgrade\r\n\r\n",
            b"POST /x HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\na",
            b"POST /x HTTP/1.1\r\ncontent-length: +1\r\n\r\na",
            b"POST /x HTTP/1.1\r\ncontent-length: 101\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GARBAGE\r\n\r\n",
            b"GET /x HTTP/1.1\r\nx-a: b\r\n folded\r\n\r\n",
        ];
        for raw in other {
            let (t, rest) = take(raw);
            assert!(
                matches!(t, Take::Other),
                "{:?}: {t:?}",
                String::from_utf8_lossy(raw)
            );
            assert_eq!(&rest[..], *raw, "nothing consumed");
        }
        // The body is not all here yet: how much the buffer needs, nothing consumed.
        let raw = b"POST /x HTTP/1.1\r\ncontent-length: 5\r\n\r\nab";
        let (t, rest) = take(raw);
        assert!(matches!(t, Take::Body(n) if n == raw.len() + 3), "{t:?}");
        assert_eq!(&rest[..], raw);
        // A head over the limit, complete or not.
        let big = format!("GET /x HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(2000));
        assert!(matches!(take(big.as_bytes()).0, Take::Other));
        assert!(matches!(take(&big.as_bytes()[..1500]).0, Take::Other));
    }

    #[test]
    fn heads_are_framed_by_the_body_and_dated() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert("x-ms-request-id", HeaderValue::from_static("r1"));
        let h = AnswerHeaders::Map(h);
        let mut out = BytesMut::new();
        let f = framing(StatusCode::OK, Some(12));
        put_head(&mut out, StatusCode::OK, &h, f, false);
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-length: 12\r\n"), "{text}");
        assert!(
            !text.contains("999") && !text.contains("connection"),
            "{text}"
        );
        assert!(text.contains("\r\nx-ms-request-id: r1\r\n"), "{text}");
        let date = text
            .split("\r\ndate: ")
            .nth(1)
            .and_then(|d| d.split("\r\n").next());
        assert!(
            date.is_some_and(|d| httpdate::parse_http_date(d).is_ok()),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"));

        out.clear();
        put_head(
            &mut out,
            StatusCode::BAD_GATEWAY,
            &AnswerHeaders::Map(HeaderMap::new()),
            framing(StatusCode::BAD_GATEWAY, None),
            true,
        );
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(
            text.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");

        for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
            assert_eq!(framing(status, Some(0)), Framing::None);
            out.clear();
            put_head(&mut out, status, &h, Framing::None, false);
            let text = String::from_utf8_lossy(&out).to_string();
            // A 304 keeps the length of the representation it stands for; a 204 has none.
            assert_eq!(
                text.contains("content-length: 999"),
                status == StatusCode::NOT_MODIFIED,
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn rewind_reads_the_kept_bytes_first() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut r = Rewind::new(Bytes::from_static(b"hello "), a);
        tokio::io::AsyncWriteExt::write_all(&mut b, b"world")
            .await
            .expect("write");
        drop(b);
        let mut s = String::new();
        r.read_to_string(&mut s).await.expect("read");
        assert_eq!(s, "hello world");
    }
}
