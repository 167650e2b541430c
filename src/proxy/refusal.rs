//! What the gateway does before it answers a request itself: the rest of the client's body read
//! (bounded) so the answer is seen, and the 503 of a saturated version.

use crate::request::{ClientBody, ClientHead};
use crate::routing::Service;
use crate::upstream::Saturated;

use super::error::GatewayError;

/// Bodies up to this size (declared, or of unknown length until this much was read) are read
/// and discarded before an error answer, so that clients still uploading (curl over HTTP/2) see
/// the answer instead of a reset stream, and an HTTP/2 request's frames keep being checked as
/// RFC 9113 asks until it ends.
const DRAIN_LIMIT: u64 = 64 * 1024;
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Boxed: refusals only, so its future is no part of every request's (a box of nothing when
/// there is nothing to read allocates nothing).
pub(super) fn drain(
    mut body: ClientBody,
    head: &ClientHead,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    use hyper::body::Body;
    if body.is_end_stream() || head.declared_length().is_some_and(|n| n > DRAIN_LIMIT) {
        return Box::pin(std::future::ready(()));
    }
    Box::pin(async move {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            let mut read = 0u64;
            while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut body).await {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > DRAIN_LIMIT {
                    break;
                }
            }
        })
        .await;
    })
}

pub(super) fn overloaded(service: &Service, saturated: Saturated) -> GatewayError {
    let detail = match saturated {
        Saturated::Gateway => "the gateway's queue for this service is full".to_string(),
        Saturated::NoReplicas => "the version has no ready replica".to_string(),
        Saturated::Replicas | Saturated::Moved => format!(
            "no replica was free within max_request_wait_time ({} ms)",
            service.settings.max_request_wait_time.as_millis()
        ),
    };
    GatewayError::Overloaded {
        service: service.name.clone(),
        saturated,
        detail,
        retry_after: service.settings.max_request_wait_time,
    }
}
