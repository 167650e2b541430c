//! Header hygiene on the request path: request ids, hop-by-hop stripping, forwarding headers.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::http1::put_ip;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-request-id");
pub const MODEL_DEPLOYMENT: HeaderName = HeaderName::from_static("azureml-model-deployment");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// The client's request id when it is sane (visible ASCII, at most 128 bytes), else a new one.
pub fn request_id(presented: Option<&HeaderValue>) -> HeaderValue {
    if let Some(v) = presented {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    new_request_id()
}

/// The request id as sent on: marked never-indexed, so HPACK (HTTP/2 clients, h2c replicas)
/// writes it as a literal instead of inserting a value that never repeats into the dynamic
/// table, where each new id would evict a useful entry and lengthen the encoder's search (4% of
/// an HTTP/2 profile). Its own `Debug` hides it, so logs use the unmarked value.
pub fn unindexed(rid: &HeaderValue) -> HeaderValue {
    let mut v = rid.clone();
    v.set_sensitive(true);
    v
}

/// A random UUID (version 4 layout), formatted on the stack.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let r = fastrand::u128(..);
    let r = (r & !(0xF << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let mut out = [0u8; 36];
    let mut at = 0;
    // A byte at a time (two digits), dashes before bytes 4, 6, 8 and 10: 8-4-4-4-12.
    for (i, b) in r.to_be_bytes().into_iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[at] = b'-';
            at += 1;
        }
        out[at] = HEX[usize::from(b >> 4)];
        out[at + 1] = HEX[usize::from(b & 0xF)];
        at += 2;
    }
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("0"))
}

/// Remove hop-by-hop headers, including any the `Connection` header names.
/// `Transfer-Encoding` goes too: hyper frames each hop's body itself.
/// One pass over the (few) names present instead of a hash lookup per listed name.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut doomed: Vec<HeaderName> = Vec::new(); // no allocation unless something is found
    for name in headers.keys() {
        if name == header::TRANSFER_ENCODING || HOP_BY_HOP.contains(name) {
            doomed.push(name.clone());
        }
    }
    if doomed.is_empty() {
        return;
    }
    if doomed.contains(&header::CONNECTION) {
        for v in headers.get_all(header::CONNECTION) {
            let Ok(v) = v.to_str() else { continue };
            for token in v.split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("keep-alive") || token.eq_ignore_ascii_case("close") {
                    continue; // listed above, or not a header name worth a lookup
                }
                if let Ok(n) = HeaderName::from_bytes(token.as_bytes()) {
                    doomed.push(n);
                }
            }
        }
    }
    for n in doomed {
        headers.remove(n);
    }
}

/// Append the client address to `X-Forwarded-For` (every value the client sent, in order: one
/// list) and set `X-Forwarded-Proto`, formatting on the stack.
pub fn set_forwarded(headers: &mut HeaderMap, client: IpAddr, tls: bool) {
    let mut buf = [0u8; 64];
    let ip = put_ip(client, &mut buf);
    let mut v = Vec::new();
    for prev in headers.get_all(X_FORWARDED_FOR) {
        v.extend_from_slice(prev.as_bytes());
        v.extend_from_slice(b", ");
    }
    let value = if v.is_empty() {
        HeaderValue::from_bytes(ip)
    } else {
        v.extend_from_slice(ip);
        HeaderValue::from_bytes(&v)
    };
    if let Ok(v) = value {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, x-secret-hop".parse().expect("v"),
        );
        h.insert("x-secret-hop", "1".parse().expect("v"));
        h.insert("keep-alive", "timeout=5".parse().expect("v"));
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().expect("v"));
        h.insert(header::CONTENT_TYPE, "application/json".parse().expect("v"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn request_id_kept_when_sane_else_generated() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, "abc-123".parse().expect("v"));
        assert_eq!(request_id(h.get(REQUEST_ID)), "abc-123");
        h.insert(REQUEST_ID, "has space".parse().expect("v"));
        let id = request_id(h.get(REQUEST_ID));
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        for _ in 0..1000 {
            let id = new_request_id();
            let b = id.as_bytes();
            assert!([8, 13, 18, 23].iter().all(|&i| b[i] == b'-'), "{id:?}");
            assert_eq!(b[14], b'4', "{id:?}");
            assert!(matches!(b[19], b'8' | b'9' | b'a' | b'b'), "{id:?}");
            assert!(
                b.iter()
                    .all(|c| *c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(c)),
                "{id:?}"
            );
        }
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn connection_close_alone_strips_only_connection() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "close".parse().expect("v"));
        h.insert(header::HOST, "x".parse().expect("v"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "x".parse().expect("v"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, "10.0.0.1".parse().expect("v"));
        h.append(X_FORWARDED_FOR, "10.0.0.2".parse().expect("v"));
        set_forwarded(&mut h, "127.0.0.1".parse().expect("ip"), true);
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2, 127.0.0.1");
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, "2001:db8::1".parse().expect("ip"), false);
        assert_eq!(h[X_FORWARDED_FOR], "2001:db8::1");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
    }

    #[test]
    fn unindexed_marks_the_request_id_sensitive_with_the_same_bytes() {
        let rid = new_request_id();
        let out = unindexed(&rid);
        assert!(out.is_sensitive() && !rid.is_sensitive());
        assert_eq!(out.as_bytes(), rid.as_bytes());
    }
}
