//! What a request must pass before it queues (method, key, declared size, version), and what
//! it becomes for the replica.

use http::{HeaderValue, header};

use super::error::GatewayError;
use super::{ClientBody, ClientHead, ConnInfo, Gateway};
use crate::request::forward::Forward;
use crate::request::headers;
use crate::routing::{Endpoint, Service};
use crate::upstream::Outgoing;

impl Gateway {
    /// Checks on the request head only: method, auth, declared size, version. Returns the index
    /// of the version that will serve it.
    pub(super) fn admit(
        &self,
        head: &ClientHead,
        service: &Service,
        endpoint: Endpoint,
        path_version: Option<&str>,
        handed_over: bool,
    ) -> Result<usize, GatewayError> {
        if !endpoint.takes(head.method()) {
            return Err(GatewayError::MethodNotAllowed {
                allow: endpoint.allow(),
            });
        }
        // Azure ML serves swagger.json without a key; scoring needs one (checked by the gateway
        // that handed a request over). The same for v2: metadata and readiness without, infer with.
        if endpoint.needs_key() && !handed_over {
            service
                .auth
                .check(head.header(&header::AUTHORIZATION))
                .map_err(GatewayError::Unauthorized)?;
        }
        if head
            .declared_length()
            .is_some_and(|n| n > self.max_body_bytes)
        {
            return Err(GatewayError::PayloadTooLarge {
                limit: self.max_body_bytes,
            });
        }
        let header_pin = head
            .header(&headers::MODEL_DEPLOYMENT)
            .and_then(|v| std::str::from_utf8(v).ok());
        let pin = match (path_version, header_pin) {
            (Some(p), Some(h)) if p != h => {
                return Err(GatewayError::VersionConflict {
                    path: p.to_string(),
                    header: h.to_string(),
                });
            }
            (p, h) => p.or(h),
        };
        service
            .pick_version(pin, fastrand::u8(..100))
            .map_err(|e| GatewayError::UnknownVersion {
                service: service.name.clone(),
                version: e.0,
            })
    }

    /// The request for the replica: the client's head and body and what forwarding adds
    /// (`request::forward`); the replica client encodes it for its protocol.
    pub(super) fn upstream_request(
        &self,
        head: ClientHead,
        body: ClientBody,
        conn: ConnInfo,
        service: &Service,
        rid: &HeaderValue,
        path: Option<std::borrow::Cow<'static, str>>,
    ) -> Outgoing {
        let replayable = crate::upstream::replayable(head.method(), |h| head.header(h).is_some());
        Outgoing {
            head,
            body,
            forward: Forward {
                path,
                client: conn.remote.ip(),
                tls: conn.tls,
                drop_authorization: service.auth.consumes_header(),
                request_id: rid.clone(),
                max_body: self.max_body_bytes,
                hop: None,
            },
            replayable,
        }
    }
}
