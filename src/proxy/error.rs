//! Every error the gateway answers itself, classified and mapped to HTTP in one place.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::auth::AuthError;
use crate::upstream::{ClientBodyError, Failure, Saturated, UpstreamError};

/// The shape of the gateway's own error bodies, by the protocol the request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{"error": {"code", "message", "request_id"}}`.
    AzureMl,
    /// The Open Inference Protocol's `{"error": "<message>"}`, with `code` and `request_id`
    /// beside it (what v2 clients print is the message).
    V2,
    /// A trailers-only gRPC answer (`grpc-status`, `grpc-message`).
    Grpc,
}

impl Shape {
    /// The shape for a request.
    pub fn of(head: &super::ClientHead) -> Self {
        let path = head.uri().path();
        if super::grpc::is_grpc(head) {
            Shape::Grpc
        } else if path == "/v2" || path.starts_with("/v2/") {
            Shape::V2
        } else {
            Shape::AzureMl
        }
    }
}

/// Whose failure an error is (as pingora's `ErrorSource`): only a replica's counts against it
/// (outlier ejection) and is logged as a failure of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client's request: wrong route, method, key, size, or a body that broke off.
    Client,
    /// A replica: unreachable, closed, answered garbage, or too slow.
    Replica,
    /// The gateway's own limits: queue full, no ready replica.
    Gateway,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(
        "no such endpoint; scoring URIs are /api/v1/service/<name>/score and /api/v1/service/<name>/swagger.json, Open Inference Protocol (v2) URIs /v2/models/<name>[/versions/<version>][/ready|/infer] and /v2/health/live|ready"
    )]
    NotFound,
    #[error("service {0:?} does not exist")]
    UnknownService(String),
    #[error(
        "service {service:?} has no version {version:?} (named by the azureml-model-deployment header or a v2 path's /versions/<version>)"
    )]
    UnknownVersion { service: String, version: String },
    #[error(
        "the path names version {path:?} and the azureml-model-deployment header {header:?}; send one, or the same in both"
    )]
    VersionConflict { path: String, header: String },
    /// A gRPC call for a version whose replicas speak HTTP/1.1.
    #[error(
        "version {version:?} of service {service:?} speaks HTTP/1.1; gRPC needs protocol = \"h2c\""
    )]
    GrpcNeedsH2c { service: String, version: String },
    /// An OpenAI-compatible request whose body names no model (the service).
    #[error("{0}")]
    OpenAiModel(&'static str),
    #[error("method not allowed; use {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error("{0}")]
    Unauthorized(#[source] AuthError),
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("{0}")]
    ClientBody(#[source] ClientBodyError),
    #[error("Too many requests for service {service} (overloaded): {detail}")]
    Overloaded {
        service: String,
        saturated: Saturated,
        detail: String,
        retry_after: Duration,
    },
    #[error("scoring timed out after {0} ms")]
    Timeout(u128),
    #[error("{0}")]
    Upstream(#[source] UpstreamError),
    /// A request on the peer port without a valid proof of another gateway.
    #[error("{0}")]
    PeerUnauthorized(#[source] crate::coordination::ProofError),
}

impl GatewayError {
    /// A failed send, by side.
    pub fn from_failure(f: Failure, limit: u64) -> Self {
        match f {
            Failure::Unsent { error, .. } | Failure::Replica(error) => {
                GatewayError::Upstream(error)
            }
            Failure::ClientBody(ClientBodyError::TooLarge) => {
                GatewayError::PayloadTooLarge { limit }
            }
            Failure::ClientBody(e) => GatewayError::ClientBody(e),
        }
    }

    pub fn side(&self) -> Side {
        match self {
            GatewayError::NotFound
            | GatewayError::UnknownService(_)
            | GatewayError::UnknownVersion { .. }
            | GatewayError::VersionConflict { .. }
            | GatewayError::OpenAiModel(_)
            | GatewayError::MethodNotAllowed { .. }
            | GatewayError::Unauthorized(_)
            | GatewayError::PeerUnauthorized(_)
            | GatewayError::PayloadTooLarge { .. }
            | GatewayError::ClientBody(_) => Side::Client,
            GatewayError::Overloaded { .. } | GatewayError::GrpcNeedsH2c { .. } => Side::Gateway,
            GatewayError::Timeout(_) | GatewayError::Upstream(_) => Side::Replica,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NotFound
            | GatewayError::UnknownService(_)
            | GatewayError::UnknownVersion { .. } => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::GrpcNeedsH2c { .. } => StatusCode::NOT_IMPLEMENTED,
            GatewayError::Unauthorized(_) | GatewayError::PeerUnauthorized(_) => {
                StatusCode::UNAUTHORIZED
            }
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::ClientBody(ClientBodyError::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::ClientBody(ClientBodyError::Failed { .. })
            | GatewayError::VersionConflict { .. }
            | GatewayError::OpenAiModel(_) => StatusCode::BAD_REQUEST,
            GatewayError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// Machine-readable reason: the JSON `code` and the `reason` metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::NotFound => "not_found",
            GatewayError::UnknownService(_) => "service_not_found",
            GatewayError::UnknownVersion { .. } => "version_not_found",
            GatewayError::VersionConflict { .. } => "version_conflict",
            GatewayError::OpenAiModel(_) => "model_missing",
            GatewayError::GrpcNeedsH2c { .. } => "grpc_needs_h2c",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::Unauthorized(e) => e.reason(),
            GatewayError::PeerUnauthorized(_) => "peer_unauthorized",
            GatewayError::PayloadTooLarge { .. } => "payload_too_large",
            GatewayError::Overloaded {
                saturated: Saturated::Gateway,
                ..
            } => "gateway_saturated",
            GatewayError::Overloaded {
                saturated: Saturated::Replicas | Saturated::Moved,
                ..
            } => "replicas_saturated",
            GatewayError::Overloaded {
                saturated: Saturated::NoReplicas,
                ..
            } => "no_ready_replicas",
            GatewayError::Timeout(_) => "scoring_timeout",
            GatewayError::ClientBody(ClientBodyError::TooLarge) => "payload_too_large",
            GatewayError::ClientBody(ClientBodyError::Failed { .. }) => "bad_request_body",
            GatewayError::Upstream(UpstreamError::Closed { .. }) => "replica_closed_connection",
            GatewayError::Upstream(UpstreamError::Connect { .. })
            | GatewayError::Upstream(UpstreamError::ConnectTimeout { .. }) => "replica_unreachable",
            GatewayError::Upstream(UpstreamError::Protocol { .. }) => "replica_bad_response",
        }
    }

    /// The JSON error response. Upstream addresses stay in the logs, not in the client's body.
    pub fn to_response(&self, request_id: &HeaderValue, shape: Shape) -> Response<Full<Bytes>> {
        let message = match self {
            GatewayError::Upstream(UpstreamError::Closed { .. }) => {
                "the scoring replica closed the connection before replying".to_string()
            }
            GatewayError::Upstream(UpstreamError::Connect { .. })
            | GatewayError::Upstream(UpstreamError::ConnectTimeout { .. }) => {
                "the scoring replica could not be reached".to_string()
            }
            GatewayError::Upstream(UpstreamError::Protocol { .. }) => {
                "the scoring replica sent an invalid response".to_string()
            }
            GatewayError::ClientBody(ClientBodyError::Failed { .. }) => {
                "the request body could not be read to its end".to_string()
            }
            other => other.to_string(),
        };
        if shape == Shape::Grpc {
            return super::grpc::trailers_only(self, &message, request_id);
        }
        let mut error = serde_json::json!({
            "code": self.reason(),
            "message": message,
            "request_id": request_id.to_str().unwrap_or_default(),
        });
        if let GatewayError::Overloaded { saturated, .. } = self {
            error["saturated"] = match saturated {
                Saturated::Gateway => "gateway",
                Saturated::Replicas | Saturated::NoReplicas | Saturated::Moved => "replicas",
            }
            .into();
        }
        let body = match shape {
            Shape::AzureMl | Shape::Grpc => serde_json::json!({ "error": error }),
            Shape::V2 => {
                // {"error": "<message>", "code": ..., "request_id": ...[, "saturated": ...]}
                let mut v2 = error;
                if let Some(o) = v2.as_object_mut()
                    && let Some(m) = o.remove("message")
                {
                    o.insert("error".into(), m);
                }
                v2
            }
        }
        .to_string();
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            super::headers::REQUEST_ID,
            super::headers::unindexed(request_id),
        );
        match self {
            GatewayError::Overloaded { retry_after, .. } => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            GatewayError::Unauthorized(_) => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            GatewayError::MethodNotAllowed { allow } => {
                h.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A send's failure lands on its side: the client's body is never held against a replica.
    #[test]
    fn failures_are_classified_by_side() {
        let addr = "127.0.0.1:9".parse().expect("addr");
        let cases = [
            (
                Failure::ClientBody(ClientBodyError::TooLarge),
                Side::Client,
                413,
                "payload_too_large",
            ),
            (
                Failure::ClientBody(ClientBodyError::Failed {
                    source: "client went away".into(),
                }),
                Side::Client,
                400,
                "bad_request_body",
            ),
            (
                Failure::Replica(UpstreamError::Closed {
                    addr,
                    source: "reset".into(),
                }),
                Side::Replica,
                502,
                "replica_closed_connection",
            ),
            (
                Failure::Replica(UpstreamError::ConnectTimeout { addr }),
                Side::Replica,
                502,
                "replica_unreachable",
            ),
        ];
        for (failure, side, status, reason) in cases {
            let e = GatewayError::from_failure(failure, 1024);
            assert_eq!(
                (e.side(), e.status().as_u16(), e.reason()),
                (side, status, reason),
                "{e}"
            );
        }
        assert_eq!(GatewayError::Timeout(5).side(), Side::Replica);
        assert_eq!(GatewayError::NotFound.side(), Side::Client);
    }
}
