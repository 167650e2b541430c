//! A replica's answer made the client's: the response head's hygiene (hop-by-hop headers out,
//! the request id and version in), the body tracked until sent (the slot held, then the
//! duration recorded) and, when it streams, paced; or the failure that stands instead.

use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;
use http_body_util::Either;

use super::body::{self, Completion, TrackedBody};
use super::error::{GatewayError, Side};
use super::head::{Answer, AnswerHeaders};
use super::{Gateway, access, grpc, report};
use crate::request::headers;
use crate::routing::Service;
use crate::upstream::{Failure, Lease, Outcome, Reply, ReplyHeaders};

/// When and how a request was sent to its replica.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sent {
    pub at: Instant,
    /// The time it had for the replica's head: `scoring_timeout_ms`, or a gRPC call's shorter
    /// `grpc-timeout`.
    pub budget: std::time::Duration,
    pub grpc: bool,
}

impl Gateway {
    /// The replica's answer (sent within `scoring_timeout_ms` at `sent`), streamed back; or why
    /// there is none.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn answer(
        &self,
        result: Result<Result<Reply, Failure>, tokio::time::error::Elapsed>,
        sent: Sent,
        service: &Arc<Service>,
        version: usize,
        lease: Lease,
        rid: &HeaderValue,
        start: Instant,
        mut access: Option<Box<access::Record>>,
    ) -> Result<Answer, GatewayError> {
        let v = &service.versions[version];
        let model_time = sent.at.elapsed();
        if let Some(a) = &mut access {
            a.upstream = Some(model_time);
        }
        lease.replica.observe_latency(model_time);
        let resp = match result {
            Ok(Ok(ok)) => ok,
            Ok(Err(f)) => {
                v.metrics.in_flight.dec();
                let e = GatewayError::from_failure(f, self.max_body_bytes);
                // The client's failures are not the replica's.
                if e.side() == Side::Replica {
                    report(&lease, Outcome::Failed, service, version);
                }
                return Err(e);
            }
            Err(_) => {
                v.metrics.in_flight.dec();
                // A deadline shorter than the scoring timeout is the client's (`grpc-timeout`):
                // not the replica's failure.
                if sent.budget >= service.settings.scoring_timeout {
                    report(&lease, Outcome::Failed, service, version);
                }
                return Err(GatewayError::Timeout(sent.budget.as_millis()));
            }
        };
        v.metrics.upstream.observe(model_time.as_secs_f64());

        let Reply {
            status,
            headers,
            body,
        } = resp;
        let headers = match headers {
            // Hop-by-hop headers were left out as the head was parsed.
            ReplyHeaders::Raw(replica) => AnswerHeaders::Raw {
                replica,
                request_id: headers::unindexed(rid),
                deployment: v.header.clone(),
            },
            ReplyHeaders::Map(mut map) => {
                if sent.grpc
                    && let Some(code) = grpc::status_in(&map)
                {
                    // Trailers-only: the call ended in its head.
                    self.metrics.protocols.grpc_status(&service.name, code);
                }
                headers::strip_hop_by_hop(&mut map);
                map.insert(headers::REQUEST_ID, headers::unindexed(rid));
                if let Some(name) = &v.header {
                    map.insert(headers::MODEL_DEPLOYMENT, name.clone());
                }
                AnswerHeaders::Map(map)
            }
        };
        let done = Completion {
            lease,
            service: service.clone(),
            version,
            code: status.as_u16(),
            start,
            access,
            grpc: sent.grpc.then(|| self.metrics.protocols.clone()),
        };
        // A body not read whole streams: paced (first byte, gaps between chunks).
        let streamed = !matches!(body, crate::upstream::ResponseBody::Whole(_));
        let mut body = TrackedBody::new(body, done);
        if streamed {
            let s = &service.settings;
            body = body.paced(body::Pacing::new(
                sent.at,
                s.scoring_timeout,
                s.stream_idle_timeout,
                v.metrics.first_byte.clone(),
            ));
        }
        Ok(Answer {
            status,
            headers,
            body: Either::Left(body),
        })
    }
}
