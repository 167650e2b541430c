//! HTTP/1.1 heads kept as the bytes that arrived: one shared buffer and where each header is.
//!
//! The fast path passes a client's request head and an HTTP/1.1 replica's response head through
//! this way: the gateway looks only at the few headers it acts on and copies the rest, instead of
//! parsing every name into a `HeaderMap` (name classification, hashing, allocations) only to
//! write it out again — that was about half of a proxied request's user-space instructions.
//!
//! httparse accepts exactly the header name and value bytes that `http`'s `HeaderName` and
//! `HeaderValue` accept (a test below walks all 256 byte values), so a raw head converts to a
//! `HeaderMap` whenever one is needed (an h2c replica, an HTTP/2 or hyper-served client) without
//! a new way to fail.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};

/// The headers of one HTTP/1.1 head: `buf` holds the bytes, each span a name's and a value's
/// offset and length in it.
#[derive(Clone, Default)]
pub struct RawHeaders {
    buf: Bytes,
    spans: Vec<[u32; 4]>,
}

/// Names only: values (an `Authorization` key) never reach a log.
impl std::fmt::Debug for RawHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(n, _)| String::from_utf8_lossy(n)))
            .finish()
    }
}

/// Where `part` (a slice of the buffer starting at `base`) sits in it.
pub fn offset(base: usize, part: &[u8]) -> (u32, u32) {
    ((part.as_ptr() as usize - base) as u32, part.len() as u32)
}

/// Where a header httparse found in the buffer starting at `base` sits in it.
pub fn span(base: usize, h: &httparse::Header<'_>) -> [u32; 4] {
    let (n, nl) = offset(base, h.name.as_bytes());
    let (v, vl) = offset(base, h.value);
    [n, nl, v, vl]
}

impl RawHeaders {
    /// `spans` as `[name offset, name length, value offset, value length]` into `buf`.
    pub fn new(buf: Bytes, spans: Vec<[u32; 4]>) -> Self {
        RawHeaders { buf, spans }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Every header, in the order it arrived.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans.iter().map(|s| {
            let (n, nl, v, vl) = (s[0] as usize, s[1] as usize, s[2] as usize, s[3] as usize);
            (&self.buf[n..n + nl], &self.buf[v..v + vl])
        })
    }

    /// The span of the first header called `name`. Lengths first: most names are ruled out
    /// without touching their bytes.
    fn find(&self, name: &HeaderName) -> Option<&[u32; 4]> {
        let want = name.as_str().as_bytes();
        self.spans.iter().find(|s| {
            s[1] as usize == want.len()
                && self.buf[s[0] as usize..(s[0] + s[1]) as usize].eq_ignore_ascii_case(want)
        })
    }

    /// The first value of `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        let s = self.find(name)?;
        Some(&self.buf[s[2] as usize..(s[2] + s[3]) as usize])
    }

    /// Every value of `name`.
    pub fn get_all<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> {
        let want = name.as_str().as_bytes();
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(want))
            .map(|(_, v)| v)
    }

    /// The first value of `name` as a `HeaderValue` sharing the buffer.
    pub fn value(&self, name: &HeaderName) -> Option<HeaderValue> {
        let s = self.find(name)?;
        let (v, vl) = (s[2] as usize, s[3] as usize);
        HeaderValue::from_maybe_shared(self.buf.slice(v..v + vl)).ok()
    }

    /// The headers as a `HeaderMap` (values share the buffer), without those `skip` names, with
    /// room for `extra` more.
    pub fn to_map(&self, extra: usize, skip: impl Fn(&[u8]) -> bool) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.len() + extra);
        for s in &self.spans {
            let (n, nl, v, vl) = (s[0] as usize, s[1] as usize, s[2] as usize, s[3] as usize);
            let name = &self.buf[n..n + nl];
            if skip(name) {
                continue;
            }
            // Cannot fail: httparse accepted these bytes (see the module comment).
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name),
                HeaderValue::from_maybe_shared(self.buf.slice(v..v + vl)),
            ) {
                map.append(name, value);
            }
        }
        map
    }
}

/// A simple HTTP/1.1 request head as the fast path took it (`http1::request::take_request`):
/// method and target parsed, headers raw. Its `Connection` header says at most `close` or
/// `keep-alive` (so it names no other header), and it has no `Transfer-Encoding`, `Expect` or
/// `Upgrade`.
#[derive(Debug)]
pub struct RawRequest {
    pub method: Method,
    pub uri: Uri,
    pub headers: RawHeaders,
    /// Its one `Content-Length`, if it has one.
    pub content_length: Option<u64>,
}

impl RawRequest {
    /// The same request with its headers in a `HeaderMap`.
    pub fn into_parts(self) -> http::request::Parts {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.headers = self.headers.to_map(4, |_| false);
        parts.method = self.method;
        parts.uri = self.uri;
        parts.version = Version::HTTP_11;
        parts
    }
}

/// What a header is to the gateway as it passes a raw head on (a request to a replica, an
/// answer to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Copied as it is.
    Pass,
    /// Describes one hop (RFC 9110 §7.6.1), or `Transfer-Encoding` (the gateway frames each
    /// hop itself): dropped.
    Hop,
    /// `Content-Length`: the gateway writes the length of what it sends.
    Length,
    Host,
    Authorization,
    ForwardedFor,
    /// Set by the gateway: `X-Forwarded-Proto`, `X-Ms-Request-Id`.
    Replaced,
    /// `Date`: copied; a response without one gets the gateway's.
    Date,
}

/// Classify a header name (a token, as httparse accepted it) by its length and first letter,
/// then one fixed-length comparison.
pub fn role(name: &[u8]) -> Role {
    let Some(&first) = name.first() else {
        return Role::Pass;
    };
    match (name.len(), first | 0x20) {
        (2, b't') if is(name, b"te") => Role::Hop,
        (4, b'h') if is(name, b"host") => Role::Host,
        (4, b'd') if is(name, b"date") => Role::Date,
        (7, b't') if is(name, b"trailer") => Role::Hop,
        (7, b'u') if is(name, b"upgrade") => Role::Hop,
        (10, b'c') if is(name, b"connection") => Role::Hop,
        (10, b'k') if is(name, b"keep-alive") => Role::Hop,
        (13, b'a') if is(name, b"authorization") => Role::Authorization,
        (14, b'c') if is(name, b"content-length") => Role::Length,
        (15, b'x') if is(name, b"x-forwarded-for") => Role::ForwardedFor,
        (15, b'x') if is(name, b"x-ms-request-id") => Role::Replaced,
        (16, b'p') if is(name, b"proxy-connection") => Role::Hop,
        (16, b'x') if is(name, b"x-scoregate-peer") => Role::Replaced,
        (17, b't') if is(name, b"transfer-encoding") => Role::Hop,
        (17, b'x') if is(name, b"x-forwarded-proto") => Role::Replaced,
        (18, b'p') if is(name, b"proxy-authenticate") => Role::Hop,
        (19, b'p') if is(name, b"proxy-authorization") => Role::Hop,
        _ => Role::Pass,
    }
}

/// `name` is `lower` (lower-case letters and dashes) in any case. Setting bit 5 lower-cases a
/// letter and leaves a dash alone; of the other token bytes none becomes a letter or a dash, so
/// one OR and one XOR per byte, with no branch, compare exactly.
#[inline(always)]
fn is<const N: usize>(name: &[u8], lower: &[u8; N]) -> bool {
    let Ok(name) = <&[u8; N]>::try_from(name) else {
        return false;
    };
    let mut diff = 0u8;
    for i in 0..N {
        diff |= (name[i] | 0x20) ^ lower[i];
    }
    diff == 0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The headers of a whole request head (`request`) or response head.
    pub(crate) fn parsed(head: &'static [u8], request: bool) -> RawHeaders {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let headers = if request {
            let mut req = httparse::Request::new(&mut slots);
            assert!(req.parse(head).expect("parse").is_complete());
            req.headers
        } else {
            let mut resp = httparse::Response::new(&mut slots);
            assert!(resp.parse(head).expect("parse").is_complete());
            resp.headers
        };
        let base = head.as_ptr() as usize;
        let spans = headers.iter().map(|h| span(base, h)).collect();
        RawHeaders::new(Bytes::from_static(head), spans)
    }

    #[test]
    fn lookups_ignore_case_and_keep_order() {
        let h = parsed(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2\r\nAuthorization: Bearer k\r\n\r\n",
            true,
        );
        assert_eq!(h.len(), 4);
        assert_eq!(h.get(&http::header::HOST), Some(&b"a"[..]));
        let xff = HeaderName::from_static("x-forwarded-for");
        assert_eq!(
            h.get_all(&xff).collect::<Vec<_>>(),
            [&b"1.1.1.1"[..], b"2.2.2.2"]
        );
        assert_eq!(h.value(&xff).expect("value"), "1.1.1.1");
        assert!(h.get(&http::header::COOKIE).is_none());
        let map = h.to_map(0, |n| n.eq_ignore_ascii_case(b"host"));
        assert_eq!(map.len(), 3);
        assert_eq!(map.get_all(&xff).iter().count(), 2);
        assert_eq!(map[http::header::AUTHORIZATION], "Bearer k");
        let shown = format!("{h:?}");
        assert!(
            shown.contains("Authorization") && !shown.contains("Bearer"),
            "{shown}"
        );
    }

    #[test]
    fn roles_match_the_names_they_stand_for() {
        for (name, want) in [
            ("TE", Role::Hop),
            ("Host", Role::Host),
            ("trailer", Role::Hop),
            ("Upgrade", Role::Hop),
            ("Connection", Role::Hop),
            ("keep-alive", Role::Hop),
            ("authorization", Role::Authorization),
            ("Content-Length", Role::Length),
            ("X-Forwarded-For", Role::ForwardedFor),
            ("x-ms-request-id", Role::Replaced),
            ("Proxy-Connection", Role::Hop),
            ("transfer-encoding", Role::Hop),
            ("X-Forwarded-Proto", Role::Replaced),
            ("proxy-authenticate", Role::Hop),
            ("Proxy-Authorization", Role::Hop),
            ("content-type", Role::Pass),
            ("x-forwarded-fox", Role::Pass),
            ("hostt", Role::Pass),
            ("", Role::Pass),
            ("Date", Role::Date),
            ("x-ms-request-iD", Role::Replaced),
            // '@' is a token byte next to 'A': bit 5 makes it '`', not a letter.
            ("@uthorization", Role::Pass),
            ("x-forwarded_for", Role::Pass),
        ] {
            assert_eq!(role(name.as_bytes()), want, "{name}");
        }
        // Every token byte but the letters and the dash stays out of the letters and the dash
        // (CR would become a dash, but is no token byte: httparse never gives one in a name).
        for b in (0..=255u8).filter(|b| HeaderName::from_bytes(&[*b]).is_ok()) {
            let folded = b | 0x20;
            let lands = folded.is_ascii_lowercase() || folded == b'-';
            assert_eq!(lands, b.is_ascii_alphabetic() || b == b'-', "byte {b:#x}");
        }
    }

    /// The premise of passing heads through raw: httparse takes a name or value byte exactly
    /// when `http` does, so converting to a `HeaderMap` later cannot fail.
    #[test]
    fn httparse_and_http_accept_the_same_header_bytes() {
        for b in 0..=255u8 {
            let name = [b'x', b];
            let mut head = b"GET / HTTP/1.1\r\n".to_vec();
            head.extend_from_slice(&name);
            head.extend_from_slice(b": v\r\n\r\n");
            let mut slots = [httparse::EMPTY_HEADER; 4];
            let ours = httparse::Request::new(&mut slots).parse(&head).is_ok();
            // A colon ends the name instead: not a name byte for either.
            if b != b':' {
                assert_eq!(
                    ours,
                    HeaderName::from_bytes(&name).is_ok(),
                    "name byte {b:#x}"
                );
            }

            let value = [b'a', b, b'z'];
            let mut head = b"GET / HTTP/1.1\r\nx: ".to_vec();
            head.extend_from_slice(&value);
            head.extend_from_slice(b"\r\n\r\n");
            let mut slots = [httparse::EMPTY_HEADER; 4];
            let ours = httparse::Request::new(&mut slots).parse(&head).is_ok();
            // CR and LF end the line instead: not a value byte for either.
            if b != b'\r' && b != b'\n' {
                assert_eq!(
                    ours,
                    HeaderValue::from_bytes(&value).is_ok(),
                    "value byte {b:#x}"
                );
            }
        }
    }
}
