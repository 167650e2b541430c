//! The request path. In order, and why there:
//! 1. request id — first, so every answer (even a 404) carries `x-ms-request-id`;
//! 2. route — the service from the route table snapshot (one `ArcSwap` load), named by the path
//!    (Azure ML's `/api/v1/service/<name>/…`, the Open Inference Protocol's `/v2/models/<name>/…`),
//!    a gRPC call's metadata or authority ([`grpc`]), or an OpenAI request's body `model`
//!    ([`openai`]: read only after a key some service takes);
//! 3. method, auth — before any queue slot is taken, so unauthenticated load cannot starve others;
//! 4. body limit — a declared oversize body is refused before it is read (413);
//! 5. version — the path's `/versions/<v>` or the `azureml-model-deployment` pin, else the split;
//! 6. queue — a bounded, deadline-aware wait for a replica slot (503 with the reason);
//! 7. upstream — header hygiene, pooled connection, `scoring_timeout_ms` or a shorter
//!    `grpc-timeout` (504), errors (502);
//! 8. response — hop-by-hop stripped, the slot held until the body is sent, a streamed body
//!    paced ([`body`]).
//!
//! Errors are mapped to HTTP (and to gRPC statuses, and to the v2 error shape) in one place:
//! [`error::GatewayError`].

mod access;
mod admit;
mod answer;
mod body;
pub mod grpc;
mod openai;
mod refusal;
mod v2;
pub mod error;
pub mod head;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Response, header};
use http_body_util::Either;

pub use crate::request::{ClientBody, ClientHead};
use refusal::{drain, overloaded};
pub use body::ProxyBody;
use answer::Sent;
use error::{GatewayError, Shape};
pub use head::Answer;
#[cfg(feature = "fuzzing")]
pub use head::AnswerHeaders;

use crate::acme::Challenges;
use crate::coordination::Coordinator;
use crate::coordination::proof::MAX_HOPS;
use crate::metrics::Metrics;
use crate::request::forward::{Hop, PEER_PROOF};
use crate::request::headers;
use crate::routing::{Endpoint, Route, RouteHandle, Service, parse_path};

/// Whether the gateway is ready (serving, not draining, certificates delivered): what
/// `/v2/health/ready` answers.
#[derive(Clone)]
pub struct Readiness(pub Arc<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Readiness")
    }
}
use crate::upstream::{Failure, Lease, Outcome, Saturated};

/// Who is on the other end of a client connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub tls: bool,
    /// On the peer port: requests handed over by another gateway of the group.
    pub peer: bool,
}

/// The proxy: shared by every connection.
#[derive(Debug, Clone)]
pub struct Gateway {
    routes: RouteHandle,
    metrics: Metrics,
    max_body_bytes: u64,
    challenges: Option<Arc<Challenges>>,
    access_log: bool,
    /// Set when several gateways act as one (`[coordination]`).
    coordination: Option<Arc<Coordinator>>,
    /// `None`: always ready (a gateway without the admin state, in tests).
    ready: Option<Readiness>,
}


impl Gateway {
    pub fn new(
        routes: RouteHandle,
        metrics: Metrics,
        max_body_bytes: u64,
        challenges: Option<Arc<Challenges>>,
        access_log: bool,
    ) -> Self {
        Gateway {
            routes,
            metrics,
            max_body_bytes,
            challenges,
            access_log,
            coordination: None,
            ready: None,
        }
    }

    /// What `/v2/health/ready` reports.
    pub fn with_readiness(mut self, ready: Readiness) -> Self {
        self.ready = Some(ready);
        self
    }

    /// Share replica limits with the other gateways of the group and hand requests to them.
    pub fn with_coordination(mut self, c: Option<Arc<Coordinator>>) -> Self {
        self.coordination = c;
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// HTTP-01: `/.well-known/acme-challenge/<token>` answered with the key authorization.
    fn acme_http01(&self, path: &str) -> Option<Response<ProxyBody>> {
        let answer = self.challenges.as_ref()?.answer_path(path)?;
        let mut r = Response::new(Either::Right(http_body_util::Full::new(
            bytes::Bytes::from(answer.clone().unwrap_or_default()),
        )));
        *r.status_mut() = if answer.is_some() {
            http::StatusCode::OK
        } else {
            http::StatusCode::NOT_FOUND
        };
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        Some(r)
    }

    /// Answer a request (parsed by hyper or the HTTP/2 server, or raw from the HTTP/1.1 fast
    /// path). An HTTP/1.1 replica's head comes back raw: the fast path and the HTTP/2 server
    /// write it as it is, hyper gets it as a map (`Answer::into_response`).
    pub async fn serve(&self, head: ClientHead, body: ClientBody, conn: ConnInfo) -> Answer {
        let start = Instant::now();
        let rid = head.request_id();
        if let Some(mut r) = self.acme_http01(head.uri().path()) {
            r.headers_mut()
                .insert(headers::REQUEST_ID, headers::unindexed(&rid));
            return Answer::from_response(r);
        }
        let shape = Shape::of(&head);
        let grpc_call = shape == Shape::Grpc;
        if let Some(answer) = (!grpc_call).then(|| self.v2_server(&head, &rid)).flatten() {
            return match answer {
                Ok(r) => Answer::from_response(r),
                Err(e) => {
                    drain(body, &head).await;
                    self.fail(e, &rid, None, None, conn, start, shape)
                }
            };
        }
        // A gRPC call names its service in its metadata or authority; its path is the method's.
        let route = if grpc_call {
            grpc::service_name(&head, &self.routes.load()).map(|service| Route {
                service,
                endpoint: Endpoint::Grpc,
                version: None,
            })
        } else {
            parse_path(head.uri().path())
        };
        let Some(route) = route else {
            drain(body, &head).await;
            return self.fail(GatewayError::NotFound, &rid, None, None, conn, start, shape);
        };
        let (endpoint, path_version) = (route.endpoint, route.version);
        let upstream_path = route.upstream_path();
        // OpenAI-compatible: the body names the service; it is read (within the limit) first.
        let (body, body_model) = if endpoint.routes_by_body() {
            if !endpoint.takes(head.method()) {
                drain(body, &head).await;
                let e = GatewayError::MethodNotAllowed {
                    allow: endpoint.allow(),
                };
                return self.fail(e, &rid, None, None, conn, start, shape);
            }
            // (On the peer port the key stayed with the gateway that handed the request over;
            // its proof, checked once the body named the service, stands for it.)
            let auth = head.header(&header::AUTHORIZATION);
            let checked = if conn.peer {
                Ok(())
            } else {
                openai::precheck(&self.routes.load(), auth)
            };
            if let Err(e) = checked {
                drain(body, &head).await;
                let e = GatewayError::Unauthorized(e);
                return self.fail(e, &rid, None, None, conn, start, shape);
            }
            match openai::read_model(body, self.max_body_bytes).await {
                Ok((model, bytes)) => (ClientBody::Whole(Some(bytes)), Some(model)),
                Err(e) => return self.fail(e, &rid, None, None, conn, start, shape),
            }
        } else {
            (body, None)
        };
        let name = body_model.as_deref().unwrap_or(route.service);
        let service = match self.routes.load().get(name).cloned() {
            Some(s) => s,
            None => {
                drain(body, &head).await;
                let e = GatewayError::UnknownService(name.to_string());
                return self.fail(e, &rid, None, None, conn, start, shape);
            }
        };
        self.metrics.protocols.of(endpoint.protocol()).inc();
        // On the peer port: another gateway of the group authenticated the client and hands the
        // request over with its proof; it is served here, and handed on again only if the share
        // it waits for moves away (`hops` so far, at most `MAX_HOPS`).
        let mut hops = 0u8;
        if conn.peer {
            let proof = self.coordination.as_ref().map_or(
                Err(crate::coordination::ProofError::Missing),
                |c| c.verify(head.header(&PEER_PROOF), &rid, &service.name),
            );
            match proof {
                Ok((_, h)) => hops = h,
                Err(e) => {
                    drain(body, &head).await;
                    if let Some(c) = &self.coordination {
                        c.metrics.handed(&service.name, "refused");
                    }
                    let e = GatewayError::PeerUnauthorized(e);
                    return self.fail(e, &rid, Some(&service), None, conn, start, shape);
                }
            }
        }
        let version = match self.admit(&head, &service, endpoint, path_version, conn.peer) {
            Ok(v) => v,
            Err(e) => {
                drain(body, &head).await;
                return self.fail(e, &rid, Some(&service), None, conn, start, shape);
            }
        };
        let m = &service.versions[version].metrics;
        let v = &service.versions[version];
        if grpc_call && v.protocol != crate::config::Protocol::H2c {
            drain(body, &head).await;
            let e = GatewayError::GrpcNeedsH2c {
                service: service.name.clone(),
                version: v.name.clone(),
            };
            return self.fail(e, &rid, Some(&service), Some(version), conn, start, shape);
        }
        // With no share of this version's replicas here, the request goes to a gateway that
        // has one (once: that gateway queues it under its own deadline). Not a gRPC call: the
        // peer port speaks HTTP/1.1, which carries no trailers.
        let handed = match &self.coordination {
            Some(c) if !conn.peer && !grpc_call && v.replicas.local_capacity() == 0 => {
                let hop = c.hand_over(&v.replicas, &service.name, &rid, None, 1);
                if hop.is_some() {
                    c.metrics.handed(&service.name, "sent");
                }
                hop
            }
            Some(c) if conn.peer => {
                c.metrics.handed(&service.name, "received");
                None
            }
            _ => None,
        };
        let (lease, hop) = match handed {
            Some((lease, proof)) => (lease, Some(hop(&head, v, proof, 1))),
            None => {
                m.queued.inc();
                let acquired = match &self.coordination {
                    Some(_) if hops < MAX_HOPS && !grpc_call => {
                        v.replicas.acquire_or_moved().await
                    }
                    _ => v.replicas.acquire().await,
                };
                m.queued.dec();
                // The share went to another gateway while the request waited: it goes there.
                let moved = match (&acquired, &self.coordination) {
                    (Err(Saturated::Moved), Some(c)) => {
                        c.hand_over(&v.replicas, &service.name, &rid, None, hops + 1)
                    }
                    _ => None,
                };
                match (acquired, moved) {
                    (_, Some((lease, proof))) => {
                        if let Some(c) = &self.coordination {
                            c.metrics.handed(&service.name, "sent");
                        }
                        (lease, Some(hop(&head, v, proof, hops + 1)))
                    }
                    (Ok((lease, waited)), None) => {
                        m.queue_wait.observe(waited.as_secs_f64());
                        (lease, None)
                    }
                    (Err(saturated), None) => {
                        drain(body, &head).await;
                        let e = overloaded(&service, saturated);
                        m.observe(e.status().as_u16(), start.elapsed().as_secs_f64());
                        return self.fail(e, &rid, Some(&service), Some(version), conn, start, shape);
                    }
                }
            }
        };
        // Sent here, not from a helper async fn: each such level held its future twice over in
        // every request's (boxed, and copied once per request).
        // A gRPC call's own deadline (`grpc-timeout`) shortens the scoring timeout.
        let budget = match grpc_call.then(|| grpc::timeout(&head)).flatten() {
            Some(t) => t.min(service.settings.scoring_timeout),
            None => service.settings.scoring_timeout,
        };
        let mut outgoing =
            self.upstream_request(head, body, conn, &service, &rid, upstream_path);
        if let Some(hop) = hop {
            // The proof stands for the client's key: it does not travel.
            outgoing.forward.path = None;
            outgoing.forward.drop_authorization = true;
            outgoing.forward.hop = Some(hop);
        }
        let sent = Instant::now();
        v.metrics.in_flight.inc();
        let deadline = tokio::time::Instant::from_std(sent) + budget;
        let (mut lease, mut outgoing, mut rerouted) = (lease, outgoing, 0);
        let result = loop {
            let r =
                tokio::time::timeout_at(deadline, lease.replica.send(outgoing, &v.metrics.retries))
                    .await;
            match r {
                // The replica could not be reached: nothing of the request was used, so it goes
                // to another replica (a pod that just exited, before discovery dropped it).
                // A gateway that could not be reached (gone before its Lease expired): the
                // request goes to another that has a share, or is refused as saturated.
                Ok(Err(Failure::Unsent { error, request })) if request.forward.hop.is_some() => {
                    let failed = lease.replica.addr;
                    let next = (rerouted < MAX_REROUTES)
                        .then(|| {
                            let n = request.forward.hop.as_ref().map_or(1, |h| h.hops);
                            self.coordination.as_ref().and_then(|c| {
                                c.hand_over(&v.replicas, &service.name, &rid, Some(failed), n)
                            })
                        })
                        .flatten();
                    rerouted += 1;
                    match next {
                        Some((next, proof)) => {
                            tracing::debug!(request_id = rid.to_str().unwrap_or_default(), gateway = %failed, to = %next.replica.addr, error = %error, "gateway unreachable; handing over to another");
                            lease = next;
                            outgoing = *request;
                            if let Some(hop) = outgoing.forward.hop.as_mut() {
                                hop.proof = proof;
                            }
                        }
                        None => {
                            v.metrics.in_flight.dec();
                            tracing::warn!(request_id = rid.to_str().unwrap_or_default(), gateway = %failed, error = %error, "no gateway with a share of the version could be reached");
                            let e = overloaded(&service, Saturated::Replicas);
                            m.observe(e.status().as_u16(), start.elapsed().as_secs_f64());
                            return self.fail(e, &rid, Some(&service), Some(version), conn, start, shape);
                        }
                    }
                }
                Ok(Err(Failure::Unsent { error, request })) if rerouted < MAX_REROUTES => {
                    rerouted += 1;
                    report(&lease, Outcome::Failed, &service, version);
                    let failed = lease.replica.addr;
                    let other = tokio::time::timeout_at(
                        deadline,
                        v.replicas.acquire_avoiding(Some(failed)),
                    )
                    .await;
                    match other {
                        Ok(Ok((next, _))) if next.replica.addr != failed => {
                            tracing::debug!(request_id = rid.to_str().unwrap_or_default(), replica = %failed, to = %next.replica.addr, error = %error, "replica unreachable; sending to another");
                            v.metrics.retries.rerouted.inc();
                            lease = next;
                            outgoing = *request;
                        }
                        _ => {
                            v.metrics.in_flight.dec();
                            let e = GatewayError::Upstream(error);
                            m.observe(e.status().as_u16(), start.elapsed().as_secs_f64());
                            return self.fail(e, &rid, Some(&service), Some(version), conn, start, shape);
                        }
                    }
                }
                other => break other,
            }
        };
        let access = self.access_log.then(|| {
            Box::new(access::Record {
                request_id: rid.clone(),
                client: conn.remote,
                start,
                upstream: None,
                bytes: 0,
            })
        });
        let sent = Sent {
            at: sent,
            budget,
            grpc: grpc_call,
        };
        match self.answer(result, sent, &service, version, lease, &rid, start, access) {
            Ok(answer) => answer,
            Err(e) => {
                m.observe(e.status().as_u16(), start.elapsed().as_secs_f64());
                self.fail(e, &rid, Some(&service), Some(version), conn, start, shape)
            }
        }
    }

    /// The gateway's own answer for `e` (in the request's protocol's `shape`): counted, logged
    /// (and in the access log when it is on).
    #[allow(clippy::too_many_arguments)]
    fn fail(
        &self,
        e: GatewayError,
        rid: &HeaderValue,
        service: Option<&Service>,
        version: Option<usize>,
        conn: ConnInfo,
        start: Instant,
        shape: Shape,
    ) -> Answer {
        let name = service.map(|s| s.name.as_str()).unwrap_or("");
        let response = e.to_response(rid, shape);
        if shape == Shape::Grpc {
            self.metrics
                .protocols
                .grpc_status(name, grpc::status_of(&e));
        }
        if self.access_log {
            let version = service
                .zip(version)
                .map_or("", |(s, v)| s.versions[v].name.as_str());
            let record = access::Record {
                request_id: rid.clone(),
                client: conn.remote,
                start,
                upstream: None,
                bytes: hyper::body::Body::size_hint(response.body())
                    .exact()
                    .unwrap_or(0),
            };
            record.log(name, version, e.status().as_u16());
        }
        self.metrics.reject(name, e.reason());
        if e.status().is_server_error() {
            tracing::warn!(request_id = rid.to_str().unwrap_or_default(), service = name, reason = e.reason(), error = %crate::report::ErrorChain(&e), "request failed");
        } else {
            tracing::debug!(request_id = rid.to_str().unwrap_or_default(), service = name, reason = e.reason(), error = %e, "request refused");
        }
        Answer::from_response(response.map(Either::Right))
    }

}

/// Tell outlier detection how an exchange ended; count and log an ejection it causes.
pub(crate) fn report(lease: &Lease, outcome: Outcome, service: &Service, version: usize) {
    if let Some(e) = lease.report(outcome) {
        let v = &service.versions[version];
        v.metrics.ejections.inc();
        tracing::warn!(
            service = service.name.as_str(),
            version = v.name.as_str(),
            replica = %e.addr,
            ejected_for_ms = e.duration.as_millis() as u64,
            ejected_now = e.ejected_now,
            "replica ejected after consecutive failures"
        );
    }
}

/// What a request handed to another gateway carries: the proof, and the version rolled here
/// when the client pinned none.
fn hop(head: &ClientHead, v: &crate::routing::Version, proof: HeaderValue, hops: u8) -> Box<Hop> {
    let pin = head
        .header(&headers::MODEL_DEPLOYMENT)
        .is_none()
        .then(|| v.header.clone())
        .flatten();
    Box::new(Hop { proof, pin, hops })
}

/// Other replicas tried, at most, for a request whose replica could not be reached.
const MAX_REROUTES: u32 = 2;

