//! A client's request as every layer holds it: its head (parsed by hyper or the HTTP/2 server,
//! or raw from the HTTP/1.1 fast path), its body (whole, or streaming from hyper or an HTTP/2
//! stream's inbox), the header rules for forwarding it ([`headers`]) and what a replica
//! receives ([`forward`]). Below the proxy and the replica client; above only the wire codecs.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Uri, header};
use hyper::body::{Body, Frame, SizeHint};

use crate::http1::content_length;
use crate::http1::raw::RawRequest;
use headers::REQUEST_ID;

pub mod forward;
pub mod headers;
pub mod recv;

/// A client's request head.
#[derive(Debug)]
pub enum ClientHead {
    Parsed(http::request::Parts),
    Raw(RawRequest),
}

impl ClientHead {
    pub fn method(&self) -> &Method {
        match self {
            ClientHead::Parsed(p) => &p.method,
            ClientHead::Raw(r) => &r.method,
        }
    }

    pub fn uri(&self) -> &Uri {
        match self {
            ClientHead::Parsed(p) => &p.uri,
            ClientHead::Raw(r) => &r.uri,
        }
    }

    /// The first value of `name`.
    pub fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        match self {
            ClientHead::Parsed(p) => p.headers.get(name).map(HeaderValue::as_bytes),
            ClientHead::Raw(r) => r.headers.get(name),
        }
    }

    /// The client's request id when it is sane, else a new one.
    pub fn request_id(&self) -> HeaderValue {
        match self {
            ClientHead::Parsed(p) => headers::request_id(p.headers.get(REQUEST_ID)),
            ClientHead::Raw(r) => headers::request_id(r.headers.value(&REQUEST_ID).as_ref()),
        }
    }

    /// The declared body length, when there is a valid one (hyper, the HTTP/2 server and the
    /// fast path each refused any other).
    pub fn declared_length(&self) -> Option<u64> {
        match self {
            ClientHead::Parsed(p) => p
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| content_length(v.as_bytes())),
            // Parsed once already, as the fast path took the request.
            ClientHead::Raw(r) => r.content_length,
        }
    }

    /// The head with its headers in a `HeaderMap`.
    pub fn into_parts(self) -> http::request::Parts {
        match self {
            ClientHead::Parsed(p) => p,
            ClientHead::Raw(r) => r.into_parts(),
        }
    }
}

/// A client's request body: streamed by hyper, read whole by the HTTP/1.1 fast path
/// (`server::fast`, which only takes requests whose declared body is already in its buffer) or
/// by the HTTP/2 server when it arrived with the headers, or streamed by the HTTP/2 server.
#[derive(Debug)]
pub enum ClientBody {
    Streaming(hyper::body::Incoming),
    Whole(Option<Bytes>),
    H2(recv::RecvBody),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ClientBody::Streaming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::Whole(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ClientBody::H2(b) => b.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Streaming(b) => b.is_end_stream(),
            ClientBody::Whole(data) => data.is_none(),
            ClientBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Streaming(b) => b.size_hint(),
            ClientBody::H2(b) => b.size_hint(),
            ClientBody::Whole(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
