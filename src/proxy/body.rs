//! The response body streamed back from a replica. It holds the replica slot and the pooled
//! connection until the body has been sent in full (the replica is busy until then), then
//! returns the connection to the pool and records the request's duration. A streamed body
//! (server-sent events, chunked, large) is paced: its first byte must come within
//! `scoring_timeout_ms` of the request's send, and no gap between two of its chunks may exceed
//! `stream_idle_timeout_ms`; a stalled stream is cut off (the client sees it end early).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;

use crate::routing::Service;
use crate::upstream::{Lease, Outcome, ResponseBody};

/// What the gateway answers with: a replica's streamed body or its own small JSON.
pub type ProxyBody = Either<TrackedBody, Full<Bytes>>;

/// Everything released when the response is done.
#[derive(Debug)]
pub(crate) struct Completion {
    pub lease: Lease,
    pub service: Arc<Service>,
    pub version: usize,
    pub code: u16,
    pub start: Instant,
    /// The access log's record, when it is on.
    pub access: Option<Box<super::access::Record>>,
    /// A gRPC call: its trailers' `grpc-status` is counted here.
    pub grpc: Option<crate::metrics::ProtocolMetrics>,
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Read to its end: the connection goes back to the pool, the replica answered.
    Complete,
    /// The replica broke it off (reset, truncated): a transport failure.
    Broken,
    /// The client went away first: says nothing about the replica.
    Abandoned,
}

impl Completion {
    fn finish(self, end: End) {
        let m = &self.service.versions[self.version].metrics;
        m.observe(self.code, self.start.elapsed().as_secs_f64());
        m.in_flight.dec();
        if let Some(a) = &self.access {
            let v = &self.service.versions[self.version];
            a.log(&self.service.name, &v.name, self.code);
        }
        match end {
            End::Complete => {
                super::report(&self.lease, Outcome::Answered, &self.service, self.version);
            }
            End::Broken => super::report(&self.lease, Outcome::Failed, &self.service, self.version),
            End::Abandoned => {}
        }
        // Dropping the lease frees the replica slot for the next waiter.
    }
}

/// The clocks of a streamed body (none for a body read whole).
#[derive(Debug)]
pub(crate) struct Pacing {
    /// When the request was sent: time to first byte is measured from it.
    pub sent: Instant,
    /// The first byte's deadline: the send plus `scoring_timeout_ms`.
    pub first_by: tokio::time::Instant,
    /// `stream_idle_timeout_ms`.
    pub idle: Duration,
    pub first_byte: prometheus::Histogram,
    /// When the last data arrived; `None` before the first.
    last: Option<tokio::time::Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Pacing {
    pub fn new(
        sent: Instant,
        scoring_timeout: Duration,
        idle: Duration,
        first_byte: prometheus::Histogram,
    ) -> Box<Self> {
        Box::new(Pacing {
            sent,
            first_by: tokio::time::Instant::from_std(sent) + scoring_timeout,
            idle,
            first_byte,
            last: None,
            timer: None,
        })
    }

    fn data(&mut self) {
        if self.last.is_none() {
            self.first_byte.observe(self.sent.elapsed().as_secs_f64());
        }
        self.last = Some(tokio::time::Instant::now());
    }

    /// With the body pending: whether its deadline has passed (else the timer's waker is set).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        let (deadline, what) = match self.last {
            None => (self.first_by, "no body byte within scoring_timeout_ms"),
            Some(t) => (t + self.idle, "no chunk within stream_idle_timeout_ms"),
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready().then_some(what)
    }
}

#[derive(Debug)]
pub struct TrackedBody {
    inner: ResponseBody,
    done: Option<Completion>,
    pacing: Option<Box<Pacing>>,
}

impl TrackedBody {
    pub(crate) fn new(inner: ResponseBody, done: Completion) -> Self {
        TrackedBody {
            inner,
            done: Some(done),
            pacing: None,
        }
    }

    /// Pace a streamed body.
    pub(crate) fn paced(mut self, pacing: Box<Pacing>) -> Self {
        self.pacing = Some(pacing);
        self
    }

    fn finish(&mut self, end: End) {
        if let Some(d) = self.done.take() {
            d.finish(end);
        }
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(p) = this.pacing.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(f))) if f.data_ref().is_some_and(|d| !d.is_empty()) => {
                    p.data();
                }
                Poll::Pending => {
                    if let Some(what) = p.expired(cx) {
                        if let Some(d) = &this.done {
                            let v = &d.service.versions[d.version];
                            tracing::warn!(service = d.service.name.as_str(), version = v.name.as_str(), replica = %d.lease.replica.addr, "streamed answer cut off: {what}");
                        }
                        this.pacing = None;
                        this.finish(End::Broken);
                        return Poll::Ready(Some(Err(what.into())));
                    }
                }
                _ => {}
            }
        }
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(d) = this.done.as_mut()
        {
            if let Some(a) = d.access.as_mut() {
                a.bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            if let (Some(p), Some(t)) = (&d.grpc, frame.trailers_ref())
                && let Some(code) = super::grpc::status_in(t)
            {
                p.grpc_status(&d.service.name, code);
            }
        }
        match &polled {
            Poll::Ready(None) => this.finish(End::Complete),
            Poll::Ready(Some(Err(_))) => this.finish(End::Broken),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(End::Complete),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        // Dropped by the server: either fully sent (an empty or known-length body hyper did not
        // poll to the end) or the client went away mid-body.
        let end = if self.inner.is_end_stream() {
            End::Complete
        } else {
            End::Abandoned
        };
        self.finish(end);
    }
}
