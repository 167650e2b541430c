//! The Open Inference Protocol's (v2) server endpoints, answered by the gateway itself.

use http::{HeaderValue, Method, Response, header};
use http_body_util::Either;

use super::{ClientHead, Gateway, GatewayError, ProxyBody};
use crate::request::headers;

impl Gateway {
    /// The Open Inference Protocol's server endpoints, answered by the gateway itself:
    /// `GET /v2` (server metadata), `/v2/health/live` and `/v2/health/ready`. `None`: not one.
    pub(super) fn v2_server(
        &self,
        head: &ClientHead,
        rid: &HeaderValue,
    ) -> Option<Result<Response<ProxyBody>, GatewayError>> {
        let (status, body) = match head.uri().path() {
            "/v2" => (
                http::StatusCode::OK,
                serde_json::json!({
                    "name": "scoregate",
                    "version": env!("CARGO_PKG_VERSION"),
                    "extensions": [],
                }),
            ),
            "/v2/health/live" => (http::StatusCode::OK, serde_json::json!({ "live": true })),
            "/v2/health/ready" => {
                let ready = self.ready.as_ref().is_none_or(|r| (r.0)());
                let status = if ready {
                    http::StatusCode::OK
                } else {
                    http::StatusCode::SERVICE_UNAVAILABLE
                };
                (status, serde_json::json!({ "ready": ready }))
            }
            _ => return None,
        };
        if !matches!(head.method(), &Method::GET | &Method::HEAD) {
            return Some(Err(GatewayError::MethodNotAllowed { allow: "GET, HEAD" }));
        }
        let body = if head.method() == Method::HEAD {
            bytes::Bytes::new()
        } else {
            bytes::Bytes::from(body.to_string())
        };
        let mut r = Response::new(Either::Right(http_body_util::Full::new(body)));
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(headers::REQUEST_ID, headers::unindexed(rid));
        Some(Ok(r))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::Metrics;
    use crate::proxy::Readiness;
    use crate::routing::RouteHandle;

    fn get(path: &str, method: Method) -> ClientHead {
        let (parts, ()) = http::Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .expect("request")
            .into_parts();
        ClientHead::Parsed(parts)
    }

    fn gateway(ready: bool) -> Gateway {
        let metrics = Metrics::new().expect("metrics");
        let routes = RouteHandle::new(crate::routing::RouteTable::default());
        Gateway::new(routes, metrics, 1024, None, false)
            .with_readiness(Readiness(Arc::new(move || ready)))
    }

    /// `/v2/health/ready` is the gateway's readiness; live stays 200; other paths are not the
    /// gateway's own.
    #[test]
    fn v2_server_endpoints_follow_readiness() {
        let rid = HeaderValue::from_static("r");
        for (ready, status) in [(true, 200), (false, 503)] {
            let g = gateway(ready);
            let r = g
                .v2_server(&get("/v2/health/ready", Method::GET), &rid)
                .expect("the gateway's own")
                .expect("GET is allowed");
            assert_eq!(r.status(), status);
            let live = g
                .v2_server(&get("/v2/health/live", Method::GET), &rid)
                .expect("own")
                .expect("allowed");
            assert_eq!(live.status(), 200);
        }
        let g = gateway(true);
        assert!(g.v2_server(&get("/v2/models/iris", Method::GET), &rid).is_none());
        assert!(matches!(
            g.v2_server(&get("/v2", Method::POST), &rid),
            Some(Err(GatewayError::MethodNotAllowed { .. }))
        ));
    }
}
