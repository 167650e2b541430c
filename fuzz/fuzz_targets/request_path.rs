//! The request path's own parsing: route matching on an arbitrary path and header hygiene on an
//! arbitrary header list (request id, hop-by-hop stripping, forwarding headers, key auth).
//! Checks the invariants, not only the absence of panics.
#![no_main]
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use scoregate::auth::Auth;
use scoregate::config::AuthConfig;
use scoregate::proxy::headers;
use scoregate::routing::parse_path;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let path = lines.next().unwrap_or_default();
    if let Ok(path) = std::str::from_utf8(path) {
        if let Some((name, endpoint)) = parse_path(path) {
            assert!(!name.is_empty() && !name.contains('/'), "{path:?} -> {name:?}");
            assert!(endpoint.upstream_path().starts_with('/'));
        }
    }
    let mut map = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        map.append(n, v);
    }
    let rid = headers::request_id(&map);
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
        assert!(!map.contains_key(gone), "{gone} survived hop-by-hop stripping");
    }
    headers::set_forwarded(&mut map, std::net::Ipv4Addr::LOCALHOST.into(), true);
    assert!(map.contains_key("x-forwarded-for"));
    let auth = Auth::from_config(&AuthConfig::Key {
        primary: "primary-key-0123456789abcdef".into(),
        secondary: None,
    });
    let ok = auth.check(&map).is_ok();
    // Accepted exactly when the header is `Bearer <key>` (scheme case-insensitive, key trimmed).
    let sent = map.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    let expected = sent.is_some_and(|v| {
        v.len() > 7
            && v[..7].eq_ignore_ascii_case(b"bearer ")
            && v[7..].trim_ascii() == b"primary-key-0123456789abcdef"
    });
    assert_eq!(ok, expected, "{sent:?}");
});
