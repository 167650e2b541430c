//! The request path's own parsing: route matching on an arbitrary path and header hygiene on an
//! arbitrary header list (request id, hop-by-hop stripping, forwarding headers, key auth), on a
//! header map and on the fast path's raw head (taken, then forwarded to an HTTP/1.1 replica).
//! Checks the invariants, not only the absence of panics.
#![no_main]
use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use scoregate::auth::Auth;
use scoregate::config::AuthConfig;
use scoregate::http1::request::{Take, take_request};
use scoregate::request::forward::{Forward, encode_http1};
use scoregate::request::headers;
use scoregate::routing::parse_path;

const KEY: &[u8] = b"primary-key-0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let path = lines.next().unwrap_or_default();
    if let Ok(path) = std::str::from_utf8(path) {
        if let Some(route) = parse_path(path) {
            let name = route.service;
            assert!(
                !name.is_empty() && !name.contains('/'),
                "{path:?} -> {name:?}"
            );
            assert!(
                route
                    .version
                    .is_none_or(|v| !v.is_empty() && !v.contains('/')),
                "{path:?} -> {route:?}"
            );
            // The replica's path is the client's, or one that starts at the root and names
            // the same model (a v2 path less its version segment).
            match route.upstream_path() {
                Some(p) => {
                    assert!(p.starts_with('/'), "{path:?} -> {p:?}");
                    if route.endpoint.is_v2() {
                        let rest = p.strip_prefix("/v2/models/").and_then(|r| r.strip_prefix(name));
                        assert!(
                            matches!(rest, Some("" | "/ready" | "/infer")),
                            "{path:?} -> {p:?}"
                        );
                    }
                }
                None => assert!(route.endpoint.is_v2() && route.version.is_none()),
            }
        }
    }
    let mut map = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        map.append(n, v);
    }
    let rid = headers::request_id(map.get(headers::REQUEST_ID));
    assert!(!rid.is_empty() && rid.len() <= 128);
    let named: Vec<HeaderName> = map
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    headers::strip_hop_by_hop(&mut map);
    for gone in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::UPGRADE,
        header::TRAILER,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ]
    .iter()
    .chain(&named)
    {
        assert!(
            !map.contains_key(gone),
            "{gone} survived hop-by-hop stripping"
        );
    }
    headers::set_forwarded(&mut map, std::net::Ipv4Addr::LOCALHOST.into(), true);
    assert!(map.contains_key("x-forwarded-for"));
    let auth = Auth::from_config(&AuthConfig::Key {
        primary: "primary-key-0123456789abcdef".into(),
        secondary: None,
    });
    let sent = map.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let ok = auth.check(sent).is_ok();
    // Accepted exactly when the header is `Bearer <key>` (scheme case-insensitive, key trimmed).
    let expected = sent.is_some_and(|v| {
        v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") && v[7..].trim_ascii() == KEY
    });
    assert_eq!(ok, expected, "{sent:?}");
    raw_forward(data);
});

/// The header lines as a raw HTTP/1.1 request: when the fast path takes it, what it forwards is
/// itself a simple request, without any hop-by-hop header or the key, with exactly one request
/// id, forwarding list, scheme and length, the client last in the list, and the same body.
fn raw_forward(data: &[u8]) {
    let mut raw = b"POST /api/v1/service/iris/score HTTP/1.1\r\n".to_vec();
    for line in data.split(|b| *b == b'\n').skip(1) {
        raw.extend_from_slice(line);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    let Take::Request { head, body, .. } =
        take_request(&mut BytesMut::from(&raw[..]), 1 << 16, 1 << 16)
    else {
        return;
    };
    let rid = HeaderValue::from_static("rid-1");
    let forward = Forward {
        path: Some("/score".into()),
        client: std::net::Ipv4Addr::new(10, 1, 2, 3).into(),
        tls: true,
        drop_authorization: true,
        request_id: rid.clone(),
        max_body: 1 << 16,
        hop: None,
    };
    let out = encode_http1(
        &head,
        body.as_ref(),
        &forward,
        "127.0.0.1:9".parse().expect("addr"),
    );
    let Take::Request {
        head: sent,
        body: sent_body,
        close,
    } = take_request(&mut out.clone(), 1 << 20, 1 << 20)
    else {
        panic!(
            "the forwarded request is not a simple one: {:?}",
            String::from_utf8_lossy(&out)
        );
    };
    assert!(!close);
    assert_eq!(sent.uri, "/score");
    assert_eq!(sent_body, body);
    let count = |name: &str| {
        sent.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .count()
    };
    for gone in [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "transfer-encoding",
        "authorization",
    ] {
        assert_eq!(count(gone), 0, "{gone} forwarded");
    }
    for once in [
        "x-ms-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "content-length",
    ] {
        assert_eq!(count(once), 1, "{once}");
    }
    assert!(count("host") >= 1);
    let xff = HeaderName::from_static("x-forwarded-for");
    let list = sent.headers.get(&xff).expect("x-forwarded-for");
    assert!(
        list.ends_with(b"10.1.2.3"),
        "{:?}",
        String::from_utf8_lossy(list)
    );
    assert_eq!(sent.headers.get(&headers::REQUEST_ID), Some(&b"rid-1"[..]));
}
