//! A request's header block, checked as RFC 9113 §8.2–8.3 require, into `http::request::Parts`.
//! Anything malformed is a stream error (PROTOCOL_ERROR); a header list over the limit is
//! answered 431, as the h2 crate does.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Uri, Version};

use super::hpack::Field;

/// Room in a request's header map for the headers the gateway adds before forwarding.
const EXTRA_HEADERS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Malformed (RFC 9113 §8.1.1): reset the stream with PROTOCOL_ERROR.
    Malformed,
    /// Larger than SETTINGS_MAX_HEADER_LIST_SIZE: answer 431.
    TooLarge,
}

/// Collects a request's fields as the decoder yields them.
#[derive(Debug, Default)]
pub struct Builder {
    method: Option<Bytes>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    headers: HeaderMap,
    regular: bool,
    size: usize,
    content_length: Option<u64>,
    error: Option<Refused>,
}

impl Builder {
    pub fn new() -> Self {
        Builder {
            headers: HeaderMap::with_capacity(12 + EXTRA_HEADERS),
            ..Builder::default()
        }
    }

    pub fn field(&mut self, f: Field, max_size: usize) {
        if self.error.is_some() {
            return;
        }
        self.size += f.name.len() + f.value.len() + 32;
        if self.size > max_size {
            self.error = Some(Refused::TooLarge);
            return;
        }
        if let Err(e) = self.take(f) {
            self.error = Some(e);
        }
    }

    fn take(&mut self, f: Field) -> Result<(), Refused> {
        if f.name.first() == Some(&b':') {
            if self.regular {
                return Err(Refused::Malformed);
            }
            let slot = match &f.name[..] {
                b":method" => &mut self.method,
                b":scheme" => &mut self.scheme,
                b":authority" => &mut self.authority,
                b":path" => &mut self.path,
                _ => return Err(Refused::Malformed),
            };
            if slot.replace(f.value).is_some() {
                return Err(Refused::Malformed);
            }
            return Ok(());
        }
        self.regular = true;
        if f.name.iter().any(u8::is_ascii_uppercase) {
            return Err(Refused::Malformed);
        }
        let name = HeaderName::from_bytes(&f.name).map_err(|_| Refused::Malformed)?;
        if is_connection_specific(&name) {
            return Err(Refused::Malformed);
        }
        if name == http::header::TE && !f.value.eq_ignore_ascii_case(b"trailers") {
            return Err(Refused::Malformed);
        }
        if name == http::header::CONTENT_LENGTH {
            let n = crate::http1::content_length(&f.value).ok_or(Refused::Malformed)?;
            if self.content_length.is_some_and(|m| m != n) {
                return Err(Refused::Malformed);
            }
            self.content_length = Some(n);
        }
        let value = HeaderValue::from_maybe_shared(f.value).map_err(|_| Refused::Malformed)?;
        self.headers.append(name, value);
        Ok(())
    }

    /// The request head, and its declared body length.
    pub fn finish(self) -> Result<(http::request::Parts, Option<u64>), Refused> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let method = self
            .method
            .and_then(|m| Method::from_bytes(&m).ok())
            .ok_or(Refused::Malformed)?;
        let uri = if method == Method::CONNECT {
            // Authority-form only (§8.5); the gateway answers it like any unknown route.
            if self.scheme.is_some() || self.path.is_some() {
                return Err(Refused::Malformed);
            }
            let a = self.authority.ok_or(Refused::Malformed)?;
            Uri::from_maybe_shared(a).map_err(|_| Refused::Malformed)?
        } else {
            let (Some(scheme), Some(path)) = (self.scheme, self.path) else {
                return Err(Refused::Malformed);
            };
            if path.is_empty() {
                return Err(Refused::Malformed);
            }
            let mut p = http::uri::Parts::default();
            p.path_and_query =
                Some(PathAndQuery::from_maybe_shared(path).map_err(|_| Refused::Malformed)?);
            if let Some(a) = self.authority {
                p.scheme = Some(Scheme::try_from(&scheme[..]).map_err(|_| Refused::Malformed)?);
                p.authority =
                    Some(Authority::from_maybe_shared(a).map_err(|_| Refused::Malformed)?);
            }
            Uri::from_parts(p).map_err(|_| Refused::Malformed)?
        };
        let mut req = Request::new(());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = self.headers;
        Ok((req.into_parts().0, self.content_length))
    }
}

/// Trailers: regular fields only (§8.1); the gateway does not forward them.
pub fn check_trailer(f: &Field) -> Result<(), Refused> {
    if f.name.first() == Some(&b':') || f.name.iter().any(u8::is_ascii_uppercase) {
        return Err(Refused::Malformed);
    }
    Ok(())
}

/// Headers that only mean something on one HTTP/1.1 connection (§8.2.2).
pub fn is_connection_specific(name: &HeaderName) -> bool {
    use http::header;
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: &'static str, v: &'static str) -> Field {
        Field {
            name: Bytes::from_static(n.as_bytes()),
            value: Bytes::from_static(v.as_bytes()),
        }
    }

    fn build(fields: &[(&'static str, &'static str)]) -> Result<http::request::Parts, Refused> {
        let mut b = Builder::new();
        for (n, v) in fields {
            b.field(field(n, v), 16 * 1024);
        }
        b.finish().map(|(p, _)| p)
    }

    const BASE: [(&str, &str); 4] = [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "example.com"),
        (":path", "/api/v1/service/iris/score?x=1"),
    ];

    #[test]
    fn a_request_with_authority_gets_an_absolute_uri() {
        let mut f = BASE.to_vec();
        f.push(("content-type", "application/json"));
        f.push(("content-length", "12"));
        let p = build(&f).expect("valid");
        assert_eq!(p.method, Method::POST);
        assert_eq!(
            p.uri.to_string(),
            "https://example.com/api/v1/service/iris/score?x=1"
        );
        assert_eq!(p.version, Version::HTTP_2);
        assert_eq!(p.headers["content-type"], "application/json");
        let p = build(&[(":method", "GET"), (":scheme", "https"), (":path", "/x")])
            .expect("no authority");
        assert_eq!(p.uri.to_string(), "/x");
    }

    #[test]
    fn malformed_requests_are_refused() {
        const GET: [(&str, &str); 3] = [(":method", "GET"), (":scheme", "https"), (":path", "/")];
        let plus = |f: (&'static str, &'static str)| {
            let mut v = GET.to_vec();
            v.push(f);
            v
        };
        let cases: Vec<Vec<(&str, &str)>> = vec![
            GET[..2].to_vec(),
            vec![GET[0], GET[1], (":path", "")],
            vec![GET[0], GET[0], GET[1], GET[2]],
            vec![GET[0], ("x", "1"), GET[1], GET[2]],
            plus((":status", "200")),
            plus(("X-Upper", "1")),
            plus(("connection", "close")),
            plus(("te", "gzip")),
            plus(("content-length", "1x")),
            plus(("x", "a\nb")),
            vec![
                (":method", "CONNECT"),
                (":authority", "a:1"),
                (":path", "/"),
            ],
        ];
        for c in cases {
            assert_eq!(build(&c).map(|_| ()), Err(Refused::Malformed), "{c:?}");
        }
        let mut ok = BASE.to_vec();
        ok.push(("te", "trailers"));
        assert!(build(&ok).is_ok());
    }

    #[test]
    fn an_oversized_header_list_is_431() {
        let mut b = Builder::new();
        for (n, v) in BASE {
            b.field(field(n, v), 200);
        }
        b.field(
            field("x-big", "0123456789012345678901234567890123456789"),
            200,
        );
        assert_eq!(b.finish().map(|_| ()), Err(Refused::TooLarge));
    }
}
