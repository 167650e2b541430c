//! A response head written by the gateway's HTTP/1.1 server side.

use bytes::{BufMut, BytesMut};
use http::StatusCode;

use super::raw::{self, Role};
use super::{Framing, put_content_length, put_date};

/// Header fields to write, as (name, value) bytes in order.
pub trait HeaderSource {
    fn for_each(&self, f: impl FnMut(&[u8], &[u8]));
}

/// Write the status line and headers. `Content-Length` and `Transfer-Encoding` come from
/// `framing` (any in `headers` are replaced), hop-by-hop headers are not written; `Date` is
/// added when missing, as hyper does.
pub fn put_head(
    out: &mut BytesMut,
    status: StatusCode,
    headers: &impl HeaderSource,
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
        // A body delimited by the close: the caller closes after it.
        Framing::None | Framing::Close => {}
        Framing::Length(n) => put_content_length(out, n),
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, header};

    struct Map(HeaderMap);
    impl HeaderSource for Map {
        fn for_each(&self, mut f: impl FnMut(&[u8], &[u8])) {
            for (n, v) in &self.0 {
                f(n.as_str().as_bytes(), v.as_bytes());
            }
        }
    }

    #[test]
    fn heads_are_framed_by_the_body_and_dated() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert("x-ms-request-id", HeaderValue::from_static("r1"));
        let h = Map(h);
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
            &Map(HeaderMap::new()),
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
}
