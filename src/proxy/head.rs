//! The heads the gateway works on: a client's request (parsed by hyper or the HTTP/2 server, or
//! raw from the HTTP/1.1 fast path) and the answer it gives (its own, or a replica's with the
//! gateway's headers added — raw when the replica spoke HTTP/1.1).

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri, header};

use super::ProxyBody;
use super::headers::{self, MODEL_DEPLOYMENT, REQUEST_ID};
use crate::http1::raw::{self, RawHeaders, RawRequest, Role};
use crate::http1::{content_length, put_addr, put_content_length, put_ip};

/// A client's request head.
#[derive(Debug)]
pub enum ClientHead {
    Parsed(http::request::Parts),
    Raw(RawRequest),
}

impl ClientHead {
    pub fn method(&self) -> &Method {
        match self {
            ClientHead::Parsed(p) => &p.method,
            ClientHead::Raw(r) => &r.method,
        }
    }

    pub fn uri(&self) -> &Uri {
        match self {
            ClientHead::Parsed(p) => &p.uri,
            ClientHead::Raw(r) => &r.uri,
        }
    }

    /// The first value of `name`.
    pub fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        match self {
            ClientHead::Parsed(p) => p.headers.get(name).map(HeaderValue::as_bytes),
            ClientHead::Raw(r) => r.headers.get(name),
        }
    }

    /// The client's request id when it is sane, else a new one.
    pub fn request_id(&self) -> HeaderValue {
        match self {
            ClientHead::Parsed(p) => headers::request_id(p.headers.get(REQUEST_ID)),
            ClientHead::Raw(r) => headers::request_id(r.headers.value(&REQUEST_ID).as_ref()),
        }
    }

    /// The declared body length, when there is a valid one (hyper, the HTTP/2 server and the
    /// fast path each refused any other).
    pub fn declared_length(&self) -> Option<u64> {
        match self {
            ClientHead::Parsed(p) => p
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| content_length(v.as_bytes())),
            // Parsed once already, as the fast path took the request.
            ClientHead::Raw(r) => r.content_length,
        }
    }

    /// The head with its headers in a `HeaderMap`.
    pub fn into_parts(self) -> http::request::Parts {
        match self {
            ClientHead::Parsed(p) => p,
            ClientHead::Raw(r) => r.into_parts(),
        }
    }
}

/// Everything the HTTP/1.1 request to a replica needs besides the client's head.
pub struct Forward<'a> {
    /// The replica's path for the endpoint (the query is the client's).
    pub path: &'static str,
    pub client: std::net::IpAddr,
    pub tls: bool,
    /// The gateway's key is in `Authorization`: it is not forwarded.
    pub drop_authorization: bool,
    pub request_id: &'a HeaderValue,
    pub replica: SocketAddr,
}

/// Encode a raw client request for an HTTP/1.1 replica in one buffer: the client's headers
/// copied except hop-by-hop ones, the gateway's key and those the gateway sets
/// (`X-Forwarded-For` gets the client appended, `X-Forwarded-Proto`, the request id, `Host` when
/// missing, the body's length). What `Gateway::upstream_request` and `h1::encode` do for a
/// parsed request, without a header map.
pub fn encode_h1(req: &RawRequest, body: Option<&Bytes>, f: &Forward<'_>) -> BytesMut {
    let body_len = body.map_or(0, Bytes::len);
    let query = req.uri.query();
    let mut ip = [0u8; 64];
    let ip = put_ip(f.client, &mut ip);
    let mut out = BytesMut::with_capacity(
        160 + f.path.len()
            + query.map_or(0, str::len)
            + req
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 4)
                .sum::<usize>()
            + body_len,
    );
    out.put_slice(req.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(f.path.as_bytes());
    if let Some(q) = query {
        out.put_u8(b'?');
        out.put_slice(q.as_bytes());
    }
    out.put_slice(b" HTTP/1.1\r\n");
    let (mut host, mut length, mut forwarded_for) = (false, false, false);
    for (name, value) in req.headers.iter() {
        match raw::role(name) {
            Role::Pass | Role::Date => {}
            Role::Host => host = true,
            Role::Authorization if !f.drop_authorization => {}
            // Written below as one list, the client last.
            Role::ForwardedFor => {
                forwarded_for = true;
                continue;
            }
            // The length written below is the body's.
            Role::Length => {
                length = true;
                continue;
            }
            Role::Hop | Role::Authorization | Role::Replaced => continue,
        }
        put_line(&mut out, name, value);
    }
    out.put_slice(b"x-forwarded-for: ");
    if forwarded_for {
        for prev in req.headers.get_all(&headers::X_FORWARDED_FOR) {
            out.put_slice(prev);
            out.put_slice(b", ");
        }
    }
    out.put_slice(ip);
    out.put_slice(b"\r\nx-forwarded-proto: ");
    out.put_slice(if f.tls { b"https" } else { b"http" });
    out.put_slice(b"\r\n");
    put_line(
        &mut out,
        REQUEST_ID.as_str().as_bytes(),
        f.request_id.as_bytes(),
    );
    if !host {
        out.put_slice(b"host: ");
        let mut a = [0u8; 64];
        out.put_slice(put_addr(f.replica, &mut a));
        out.put_slice(b"\r\n");
    }
    if body_len > 0 || length || !matches!(req.method, Method::GET | Method::HEAD) {
        put_content_length(&mut out, body_len as u64);
    }
    out.put_slice(b"\r\n");
    if let Some(b) = body {
        out.put_slice(b);
    }
    out
}

fn put_line(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// The gateway's answer: its own (a map), or a replica's.
pub struct Answer {
    pub status: StatusCode,
    pub headers: AnswerHeaders,
    pub body: ProxyBody,
}

pub enum AnswerHeaders {
    Map(HeaderMap),
    /// An HTTP/1.1 replica's headers (hop-by-hop ones already gone), passed through with the
    /// gateway's request id and deployment name in place of any the replica sent.
    Raw {
        replica: RawHeaders,
        request_id: HeaderValue,
        deployment: Option<HeaderValue>,
    },
}

impl crate::http1::response::HeaderSource for AnswerHeaders {
    fn for_each(&self, f: impl FnMut(&[u8], &[u8])) {
        AnswerHeaders::for_each(self, f);
    }
}

impl AnswerHeaders {
    /// Whether a replica header gives way to one the gateway sets.
    fn replaced(name: &[u8], deployment: bool) -> bool {
        name.eq_ignore_ascii_case(REQUEST_ID.as_str().as_bytes())
            || (deployment && name.eq_ignore_ascii_case(MODEL_DEPLOYMENT.as_str().as_bytes()))
    }

    /// Every header, the gateway's last.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &[u8])) {
        match self {
            AnswerHeaders::Map(map) => {
                for (n, v) in map {
                    f(n.as_str().as_bytes(), v.as_bytes());
                }
            }
            AnswerHeaders::Raw {
                replica,
                request_id,
                deployment,
            } => {
                for (n, v) in replica.iter() {
                    if !Self::replaced(n, deployment.is_some()) {
                        f(n, v);
                    }
                }
                f(REQUEST_ID.as_str().as_bytes(), request_id.as_bytes());
                if let Some(d) = deployment {
                    f(MODEL_DEPLOYMENT.as_str().as_bytes(), d.as_bytes());
                }
            }
        }
    }

    pub fn into_map(self) -> HeaderMap {
        match self {
            AnswerHeaders::Map(map) => map,
            AnswerHeaders::Raw {
                replica,
                request_id,
                deployment,
            } => {
                let has = deployment.is_some();
                let mut map = replica.to_map(2, |n| Self::replaced(n, has));
                map.insert(REQUEST_ID, request_id);
                if let Some(d) = deployment {
                    map.insert(MODEL_DEPLOYMENT, d);
                }
                map
            }
        }
    }
}

impl Answer {
    pub fn from_response(r: Response<ProxyBody>) -> Self {
        let (parts, body) = r.into_parts();
        Answer {
            status: parts.status,
            headers: AnswerHeaders::Map(parts.headers),
            body,
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let mut r = Response::new(self.body);
        *r.status_mut() = self.status;
        *r.headers_mut() = self.headers.into_map();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::raw::tests::parsed;
    use crate::http1::request::{Take, take_request};

    /// The head as the fast path takes it.
    fn raw_request(head: &[u8]) -> RawRequest {
        match take_request(&mut BytesMut::from(head), 64 * 1024, 64 * 1024) {
            Take::Request { head, .. } => head,
            other => panic!("not taken: {other:?}"),
        }
    }

    fn forward<'a>(rid: &'a HeaderValue, drop_authorization: bool) -> Forward<'a> {
        Forward {
            path: "/score",
            client: "10.1.2.3".parse().expect("ip"),
            tls: true,
            drop_authorization,
            request_id: rid,
            replica: "127.0.0.1:8080".parse().expect("addr"),
        }
    }

    #[test]
    fn raw_requests_are_forwarded_like_parsed_ones() {
        let req = raw_request(
            b"POST /api/v1/service/iris/score?a=1 HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive\r\nAuthorization: Bearer k\r\nX-Forwarded-For: 1.1.1.1\r\nContent-Type: application/json\r\nx-forwarded-for: 2.2.2.2\r\nX-Ms-Request-Id: theirs\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-Proto: http\r\nContent-Length: 2\r\n\r\n{}",
        );
        let rid = HeaderValue::from_static("r-1");
        let body = Bytes::from_static(b"{}");
        let out = encode_h1(&req, Some(&body), &forward(&rid, true));
        let text = String::from_utf8(out.to_vec()).expect("utf8");
        assert_eq!(
            text,
            "POST /score?a=1 HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
             x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.1.2.3\r\nx-forwarded-proto: https\r\n\
             x-ms-request-id: r-1\r\ncontent-length: 2\r\n\r\n{}"
        );
        // Token auth: the token goes on; no Host: the replica's address; a bodiless POST says
        // so, a GET without a body does not.
        let req = raw_request(b"POST /x HTTP/1.1\r\nauthorization: Bearer t\r\n\r\n");
        let text =
            String::from_utf8(encode_h1(&req, None, &forward(&rid, false)).to_vec()).expect("utf8");
        assert!(text.contains("\r\nauthorization: Bearer t\r\n"), "{text}");
        assert!(text.contains("\r\nhost: 127.0.0.1:8080\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-length: 0\r\n"), "{text}");
        assert!(text.contains("\r\nx-forwarded-for: 10.1.2.3\r\n"), "{text}");
        let req = raw_request(b"GET /x HTTP/1.1\r\nhost: h\r\n\r\n");
        let text =
            String::from_utf8(encode_h1(&req, None, &forward(&rid, true)).to_vec()).expect("utf8");
        assert!(!text.contains("content-length"), "{text}");
    }

    #[test]
    fn raw_answers_put_the_gateways_ids_in_place_of_the_replicas() {
        let raw = parsed(
            b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nX-Ms-Request-Id: theirs\r\nAzureml-Model-Deployment: theirs\r\n\r\n",
            false,
        );
        for deployment in [None, Some(HeaderValue::from_static("blue"))] {
            let h = AnswerHeaders::Raw {
                replica: raw.clone(),
                request_id: HeaderValue::from_static("ours"),
                deployment: deployment.clone(),
            };
            let mut seen = Vec::new();
            h.for_each(|n, v| {
                seen.push(format!(
                    "{}={}",
                    String::from_utf8_lossy(n).to_lowercase(),
                    String::from_utf8_lossy(v)
                ))
            });
            let map = h.into_map();
            let mut from_map: Vec<_> = map
                .iter()
                .map(|(n, v)| format!("{n}={}", v.to_str().expect("ascii")))
                .collect();
            let mut sorted = seen.clone();
            sorted.sort();
            from_map.sort();
            assert_eq!(sorted, from_map, "both views agree");
            assert!(seen.contains(&"x-ms-request-id=ours".to_string()));
            assert!(
                !seen
                    .iter()
                    .any(|s| s.ends_with("=theirs") && s.starts_with("x-ms"))
            );
            let dep = seen
                .iter()
                .find(|s| s.starts_with("azureml-model-deployment="))
                .cloned();
            assert_eq!(
                dep.as_deref(),
                Some(if deployment.is_some() {
                    "azureml-model-deployment=blue"
                } else {
                    "azureml-model-deployment=theirs"
                })
            );
        }
    }
}
