//! What a replica receives: the client's request on the replica's path, hop-by-hop headers
//! gone, forwarding headers set, the gateway's key removed, the request id attached. Encoded
//! for the replica's protocol by the replica client itself, once the replica is known.

use std::net::{IpAddr, SocketAddr};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::Limited;

use super::{ClientBody, ClientHead};
use crate::config::Protocol;
use crate::http1::raw::{RawRequest, Role, role};
use crate::http1::{put_addr, put_content_length, put_ip};
use crate::request::headers::{self, REQUEST_ID};

/// A request body on its way to a replica: the client's, bounded by the service's limit.
pub type UpstreamBody = Limited<ClientBody>;

/// Everything the request to a replica needs besides the client's head and body.
#[derive(Debug, Clone)]
pub struct Forward {
    /// The replica's path for the endpoint (the query is the client's); `None`: the client's
    /// path (a request handed to another gateway).
    pub path: Option<std::borrow::Cow<'static, str>>,
    pub client: IpAddr,
    pub tls: bool,
    /// The gateway's key is in `Authorization`: it is not forwarded.
    pub drop_authorization: bool,
    pub request_id: HeaderValue,
    /// The most body bytes the replica may be sent.
    pub max_body: u64,
    /// Set when the request goes to another gateway instead of a replica.
    pub hop: Option<Box<Hop>>,
}

/// What a request handed to another gateway carries: the proof that a gateway of the same
/// attachment sent it (`x-scoregate-peer`), and the version this gateway chose for it when the
/// client did not pin one (`azureml-model-deployment`), so the traffic split is rolled once.
#[derive(Debug, Clone)]
pub struct Hop {
    pub proof: HeaderValue,
    pub pin: Option<HeaderValue>,
    /// The request's hand-overs with this one.
    pub hops: u8,
}

/// The header carrying a forwarded request's proof (a client's is never passed on).
pub static PEER_PROOF: http::HeaderName = http::HeaderName::from_static("x-scoregate-peer");

/// The request for a replica speaking `protocol` at `replica`, as a `Request` for the replica
/// client (HTTP/1.1: origin-form URI and a `Host`; h2c: an absolute URI, no `Host`).
pub fn into_request(
    head: ClientHead,
    body: ClientBody,
    f: &Forward,
    protocol: Protocol,
    replica: SocketAddr,
) -> Request<UpstreamBody> {
    let mut parts = head.into_parts();
    let query = parts.uri.query().map(|q| format!("?{q}"));
    let path: std::borrow::Cow<'static, str> = match &f.path {
        Some(p) => p.clone(),
        None => parts.uri.path().to_string().into(),
    };
    let pq = || format!("{path}{}", query.as_deref().unwrap_or(""));
    let authority = parts.uri.authority().cloned();
    // `TE: trailers` is the one TE HTTP/2 allows, and gRPC servers require it.
    let te_trailers = parts
        .headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers::strip_hop_by_hop(&mut parts.headers);
    if f.drop_authorization {
        parts.headers.remove(header::AUTHORIZATION);
    }
    headers::set_forwarded(&mut parts.headers, f.client, f.tls);
    parts
        .headers
        .insert(REQUEST_ID, headers::unindexed(&f.request_id));
    parts.headers.remove(&PEER_PROOF);
    if let Some(hop) = &f.hop {
        parts.headers.insert(&PEER_PROOF, hop.proof.clone());
        if let Some(pin) = &hop.pin {
            parts.headers.insert(headers::MODEL_DEPLOYMENT, pin.clone());
        }
    }
    match protocol {
        Protocol::Http1 => {
            parts.version = http::Version::HTTP_11;
            // The common case (no query) allocates nothing.
            parts.uri = match (&query, &f.path) {
                (None, Some(std::borrow::Cow::Borrowed(p))) => Uri::from_static(p),
                _ => Uri::try_from(pq()).unwrap_or_else(|_| Uri::from_static("/")),
            };
            if !parts.headers.contains_key(header::HOST) {
                let host = authority
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| replica.to_string());
                if let Ok(v) = HeaderValue::from_str(&host) {
                    parts.headers.insert(header::HOST, v);
                }
            }
        }
        Protocol::H2c => {
            parts.version = http::Version::HTTP_2;
            if te_trailers {
                parts
                    .headers
                    .insert(header::TE, HeaderValue::from_static("trailers"));
            }
            parts.uri = Uri::try_from(format!("http://{replica}{}", pq()))
                .unwrap_or_else(|_| Uri::from_static("/"));
            parts.headers.remove(header::HOST);
        }
    }
    Request::from_parts(
        parts,
        Limited::new(body, usize::try_from(f.max_body).unwrap_or(usize::MAX)),
    )
}

/// Encode a raw client request for an HTTP/1.1 replica in one buffer: the client's headers
/// copied except hop-by-hop ones, the gateway's key and those the gateway sets
/// (`X-Forwarded-For` gets the client appended, `X-Forwarded-Proto`, the request id, `Host` when
/// missing, the body's length). What [`into_request`] and the replica client's encoder do for a
/// parsed request, without a header map.
pub fn encode_http1(
    req: &RawRequest,
    body: Option<&Bytes>,
    f: &Forward,
    replica: SocketAddr,
) -> BytesMut {
    let body_len = body.map_or(0, Bytes::len);
    let query = req.uri.query();
    let path = f.path.as_deref().unwrap_or(req.uri.path());
    let mut ip = [0u8; 64];
    let ip = put_ip(f.client, &mut ip);
    let mut out = BytesMut::with_capacity(
        160 + path.len()
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
    out.put_slice(path.as_bytes());
    if let Some(q) = query {
        out.put_u8(b'?');
        out.put_slice(q.as_bytes());
    }
    out.put_slice(b" HTTP/1.1\r\n");
    let (mut host, mut length, mut forwarded_for) = (false, false, false);
    for (name, value) in req.headers.iter() {
        match role(name) {
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
    if let Some(hop) = &f.hop {
        put_line(&mut out, PEER_PROOF.as_str().as_bytes(), hop.proof.as_bytes());
        if let Some(pin) = &hop.pin {
            put_line(
                &mut out,
                headers::MODEL_DEPLOYMENT.as_str().as_bytes(),
                pin.as_bytes(),
            );
        }
    }
    if !host {
        out.put_slice(b"host: ");
        let mut a = [0u8; 64];
        out.put_slice(put_addr(replica, &mut a));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::request::{Take, take_request};

    fn replica() -> SocketAddr {
        "127.0.0.1:8080".parse().expect("addr")
    }

    /// The head as the fast path takes it.
    fn raw_request(head: &[u8]) -> RawRequest {
        match take_request(&mut BytesMut::from(head), 64 * 1024, 64 * 1024) {
            Take::Request { head, .. } => head,
            other => panic!("not taken: {other:?}"),
        }
    }

    fn forward(rid: &HeaderValue, drop_authorization: bool) -> Forward {
        Forward {
            path: Some("/score".into()),
            client: "10.1.2.3".parse().expect("ip"),
            tls: true,
            drop_authorization,
            request_id: rid.clone(),
            max_body: 1024,
            hop: None,
        }
    }

    #[test]
    fn raw_requests_are_forwarded_like_parsed_ones() {
        let req = raw_request(
            b"POST /api/v1/service/iris/score?a=1 HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive\r\nAuthorization: Bearer k\r\nX-Forwarded-For: 1.1.1.1\r\nContent-Type: application/json\r\nx-forwarded-for: 2.2.2.2\r\nX-Ms-Request-Id: theirs\r\nKeep-Alive: 5\r\nTE: trailers\r\nX-Forwarded-Proto: http\r\nContent-Length: 2\r\n\r\n{}",
        );
        let rid = HeaderValue::from_static("r-1");
        let body = Bytes::from_static(b"{}");
        let out = encode_http1(&req, Some(&body), &forward(&rid, true), replica());
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
            String::from_utf8(encode_http1(&req, None, &forward(&rid, false), replica()).to_vec())
                .expect("utf8");
        assert!(text.contains("\r\nauthorization: Bearer t\r\n"), "{text}");
        assert!(text.contains("\r\nhost: 127.0.0.1:8080\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-length: 0\r\n"), "{text}");
        assert!(text.contains("\r\nx-forwarded-for: 10.1.2.3\r\n"), "{text}");
        let req = raw_request(b"GET /x HTTP/1.1\r\nhost: h\r\n\r\n");
        let text =
            String::from_utf8(encode_http1(&req, None, &forward(&rid, true), replica()).to_vec())
                .expect("utf8");
        assert!(!text.contains("content-length"), "{text}");
    }
}
