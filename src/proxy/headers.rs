//! Header hygiene on the request path: request ids, hop-by-hop stripping, forwarding headers.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-request-id");
pub const MODEL_DEPLOYMENT: HeaderName = HeaderName::from_static("azureml-model-deployment");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
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
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    new_request_id()
}

/// A random UUID (version 4 layout).
pub fn new_request_id() -> HeaderValue {
    let r = fastrand::u128(..);
    let r = (r & !(0xF << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let s = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (r >> 96) as u32,
        (r >> 80) as u16,
        (r >> 64) as u16,
        (r >> 48) as u16,
        r as u64 & 0xFFFF_FFFF_FFFF
    );
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("0"))
}

/// Remove hop-by-hop headers, including any the `Connection` header names.
/// `Transfer-Encoding` goes too: hyper frames each hop's body itself.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// Append the client address to `X-Forwarded-For` and set `X-Forwarded-Proto`.
pub fn set_forwarded(headers: &mut HeaderMap, client: IpAddr, tls: bool) {
    let xff = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {client}"),
        None => client.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
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
        assert_eq!(request_id(&h), "abc-123");
        h.insert(REQUEST_ID, "has space".parse().expect("v"));
        let id = request_id(&h);
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, "10.0.0.1".parse().expect("v"));
        set_forwarded(&mut h, "127.0.0.1".parse().expect("ip"), true);
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1, 127.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
    }
}
