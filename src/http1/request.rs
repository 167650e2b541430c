//! A simple HTTP/1.1 request taken whole from a server connection's read buffer (the fast path).
//!
//! "Simple" is deliberately narrow — HTTP/1.1, origin-form target, not HEAD/CONNECT, no
//! `Transfer-Encoding`, `Expect` or `Upgrade`, at most one `Content-Length` of plain digits no
//! larger than the body limit, `Connection` only `close`/`keep-alive`, and the whole declared
//! body arrived (`Take::Body` asks for the rest, which the caller reads only if it is readable
//! now). Everything else, including every malformed or ambiguous request, goes to hyper
//! untouched, so its answers (400, 413, 431, smuggling defences) stay exactly hyper's.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::{Method, Uri};

use super::raw::{self, RawHeaders, RawRequest};
use super::{MAX_HEADERS, content_length};

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
            match (body_len, content_length(h.value)) {
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
    // headers stay as they arrived (`http1::raw`).
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
