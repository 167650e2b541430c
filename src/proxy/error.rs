//! Every error the gateway answers itself, classified and mapped to HTTP in one place.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::auth::AuthError;
use crate::upstream::{Saturated, UpstreamError};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(
        "no such endpoint; scoring URIs are /api/v1/service/<name>/score and /api/v1/service/<name>/swagger.json"
    )]
    NotFound,
    #[error("service {0:?} does not exist")]
    UnknownService(String),
    #[error("service {service:?} has no version {version:?} (header azureml-model-deployment)")]
    UnknownVersion { service: String, version: String },
    #[error("method not allowed; use {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error("{0}")]
    Unauthorized(#[source] AuthError),
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: u64 },
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
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NotFound
            | GatewayError::UnknownService(_)
            | GatewayError::UnknownVersion { .. } => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Upstream(UpstreamError::BodyTooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::Upstream(UpstreamError::ClientBody { .. }) => StatusCode::BAD_REQUEST,
            GatewayError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// Machine-readable reason: the JSON `code` and the `reason` metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::NotFound => "not_found",
            GatewayError::UnknownService(_) => "service_not_found",
            GatewayError::UnknownVersion { .. } => "version_not_found",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::Unauthorized(e) => e.reason(),
            GatewayError::PayloadTooLarge { .. } => "payload_too_large",
            GatewayError::Overloaded {
                saturated: Saturated::Gateway,
                ..
            } => "gateway_saturated",
            GatewayError::Overloaded {
                saturated: Saturated::Replicas,
                ..
            } => "replicas_saturated",
            GatewayError::Overloaded {
                saturated: Saturated::NoReplicas,
                ..
            } => "no_ready_replicas",
            GatewayError::Timeout(_) => "scoring_timeout",
            GatewayError::Upstream(UpstreamError::BodyTooLarge) => "payload_too_large",
            GatewayError::Upstream(UpstreamError::ClientBody { .. }) => "bad_request_body",
            GatewayError::Upstream(UpstreamError::Closed { .. }) => "replica_closed_connection",
            GatewayError::Upstream(UpstreamError::Connect { .. })
            | GatewayError::Upstream(UpstreamError::ConnectTimeout { .. }) => "replica_unreachable",
            GatewayError::Upstream(UpstreamError::Protocol { .. }) => "replica_bad_response",
        }
    }

    /// The JSON error response. Upstream addresses stay in the logs, not in the client's body.
    pub fn to_response(&self, request_id: &HeaderValue) -> Response<Full<Bytes>> {
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
            GatewayError::Upstream(UpstreamError::ClientBody { .. }) => {
                "the request body could not be read to its end".to_string()
            }
            other => other.to_string(),
        };
        let mut error = serde_json::json!({
            "code": self.reason(),
            "message": message,
            "request_id": request_id.to_str().unwrap_or_default(),
        });
        if let GatewayError::Overloaded { saturated, .. } = self {
            error["saturated"] = match saturated {
                Saturated::Gateway => "gateway",
                Saturated::Replicas | Saturated::NoReplicas => "replicas",
            }
            .into();
        }
        let body = serde_json::json!({ "error": error }).to_string();
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
