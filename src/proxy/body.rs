//! The response body streamed back from a replica. It holds the replica slot and the pooled
//! connection until the body has been sent in full (the replica is busy until then), then
//! returns the connection to the pool and records the request's duration.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, SizeHint};

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

#[derive(Debug)]
pub struct TrackedBody {
    inner: ResponseBody,
    done: Option<Completion>,
}

impl TrackedBody {
    pub(crate) fn new(inner: ResponseBody, done: Completion) -> Self {
        TrackedBody {
            inner,
            done: Some(done),
        }
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
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(a) = this.done.as_mut().and_then(|d| d.access.as_mut())
        {
            a.bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
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
