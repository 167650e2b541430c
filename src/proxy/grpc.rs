//! gRPC pass-through: a request with `content-type: application/grpc…` is a call to the service
//! its `scoregate-service` metadata names, else the service named by the first label of its
//! `:authority` (`iris.models.example.com` → `iris`, as KServe routes by host). The path
//! (`/<package.Service>/<Method>`) goes to an h2c replica as it came, streams both ways, and
//! the replica's trailers come back. The gateway's own refusals are trailers-only gRPC answers
//! (HTTP 200, `grpc-status`, `grpc-message`) with the codes of the gRPC HTTP mapping.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use super::ClientHead;
use super::error::GatewayError;
use crate::auth::AuthError;
use crate::request::headers;
use crate::routing::RouteTable;
use crate::upstream::ClientBodyError;

/// The metadata that names the service of a call.
pub const SERVICE: HeaderName = HeaderName::from_static("scoregate-service");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const RETRY_PUSHBACK: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// gRPC status codes the gateway answers with.
pub mod code {
    pub const CANCELLED: u32 = 1;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const NOT_FOUND: u32 = 5;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const FAILED_PRECONDITION: u32 = 9;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;
}

/// Whether a request is a gRPC call.
pub fn is_grpc(head: &ClientHead) -> bool {
    head.header(&header::CONTENT_TYPE)
        .is_some_and(|ct| ct.starts_with(b"application/grpc"))
}

/// The service a call names: its `scoregate-service` metadata, else the first label of its
/// authority when a service has that name. `None`: neither.
pub fn service_name<'a>(head: &'a ClientHead, routes: &RouteTable) -> Option<&'a str> {
    if let Some(named) = head.header(&SERVICE) {
        return std::str::from_utf8(named).ok();
    }
    let authority = head
        .uri()
        .host()
        .or_else(|| head.header(&header::HOST).and_then(|h| std::str::from_utf8(h).ok()))?;
    let label = authority.split(['.', ':']).next()?;
    routes.get(label).is_some().then_some(label)
}

/// The call's `grpc-timeout` (`<up to 8 digits><H|M|S|m|u|n>`); `None` when absent or malformed
/// (a malformed one is ignored, as gRPC servers do).
pub fn timeout(head: &ClientHead) -> Option<Duration> {
    let v = head.header(&GRPC_TIMEOUT)?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n.saturating_mul(3600)),
        b"M" => Duration::from_secs(n.saturating_mul(60)),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status code for the gateway's own error (the gRPC spec's HTTP mapping, refined).
pub fn status_of(e: &GatewayError) -> u32 {
    match e {
        GatewayError::NotFound | GatewayError::MethodNotAllowed { .. } => code::UNIMPLEMENTED,
        GatewayError::UnknownService(_) | GatewayError::UnknownVersion { .. } => code::NOT_FOUND,
        GatewayError::Unauthorized(_) | GatewayError::PeerUnauthorized(_) => {
            code::UNAUTHENTICATED
        }
        GatewayError::PayloadTooLarge { .. }
        | GatewayError::ClientBody(ClientBodyError::TooLarge) => code::RESOURCE_EXHAUSTED,
        GatewayError::ClientBody(ClientBodyError::Failed { .. }) => code::CANCELLED,
        GatewayError::VersionConflict { .. } | GatewayError::OpenAiModel(_) => {
            code::INVALID_ARGUMENT
        }
        GatewayError::GrpcNeedsH2c { .. } => code::FAILED_PRECONDITION,
        GatewayError::Overloaded { .. } | GatewayError::Upstream(_) => code::UNAVAILABLE,
        GatewayError::Timeout(_) => code::DEADLINE_EXCEEDED,
    }
}

/// `grpc-message`: percent-encoded (every byte outside printable ASCII, and `%`).
fn percent_encode(message: &str) -> HeaderValue {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("gateway error"))
}

/// The gateway's refusal as a trailers-only gRPC answer: HTTP 200, `grpc-status`,
/// `grpc-message`, and for a saturated service `grpc-retry-pushback-ms` (when to try again).
pub fn trailers_only(e: &GatewayError, message: &str, rid: &HeaderValue) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS, HeaderValue::from(status_of(e)));
    h.insert(GRPC_MESSAGE, percent_encode(message));
    h.insert(headers::REQUEST_ID, headers::unindexed(rid));
    if let GatewayError::Overloaded { retry_after, .. } = e {
        h.insert(
            RETRY_PUSHBACK,
            HeaderValue::from(retry_after.as_millis().max(1) as u64),
        );
    }
    if let GatewayError::Unauthorized(AuthError::Missing | AuthError::Malformed) = e {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// The `grpc-status` of an answer's headers or trailers, if it has one.
pub fn status_in(map: &http::HeaderMap) -> Option<u32> {
    map.get(GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)], uri: &str) -> ClientHead {
        let mut b = http::Request::builder().method("POST").uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        ClientHead::Parsed(b.body(()).expect("request").into_parts().0)
    }

    #[test]
    fn reads_grpc_timeouts_and_ignores_malformed_ones() {
        let t = |v: &str| timeout(&head(&[("grpc-timeout", v)], "/a/b"));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S", "S1"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn encodes_messages_and_maps_codes() {
        assert_eq!(percent_encode("50% déjà"), "50%25 d%C3%A9j%C3%A0");
        assert_eq!(
            status_of(&GatewayError::Unauthorized(AuthError::Missing)),
            code::UNAUTHENTICATED
        );
        assert_eq!(status_of(&GatewayError::Timeout(5)), code::DEADLINE_EXCEEDED);
        assert_eq!(status_of(&GatewayError::NotFound), code::UNIMPLEMENTED);
        let r = trailers_only(
            &GatewayError::UnknownService("x".into()),
            "service \"x\" does not exist",
            &HeaderValue::from_static("rid"),
        );
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "5");
        assert_eq!(r.headers()["content-type"], "application/grpc");
    }

    #[test]
    fn names_the_service_by_metadata_then_authority() {
        let routes = RouteTable::default();
        let h = head(&[("scoregate-service", "iris")], "/inference.X/Y");
        assert_eq!(service_name(&h, &routes), Some("iris"));
        // No such service for the authority's first label, and no metadata: none.
        let h = head(&[], "https://iris.models.example.com/inference.X/Y");
        assert_eq!(service_name(&h, &routes), None);
    }
}
