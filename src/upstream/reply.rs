//! A replica's answer as the replica clients hand it to the proxy: status, headers (raw from an
//! HTTP/1.1 replica, a map from an h2c one) and a body read whole or streamed.

use super::h1;

/// A replica's answer.
#[derive(Debug)]
pub struct Reply {
    pub status: http::StatusCode,
    pub headers: ReplyHeaders,
    pub body: ResponseBody,
}

#[derive(Debug)]
pub enum ReplyHeaders {
    /// From an h2c replica, as hyper decoded them.
    Map(http::HeaderMap),
    /// From an HTTP/1.1 replica as they arrived, hop-by-hop ones left out.
    Raw(crate::http1::raw::RawHeaders),
}

/// A replica's response body: read whole (small, known length), streaming from an HTTP/1.1
/// connection, or an h2c stream.
#[derive(Debug)]
pub enum ResponseBody {
    Whole(Option<bytes::Bytes>),
    H1(h1::Streaming),
    H2(hyper::body::Incoming),
}

impl hyper::body::Body for ResponseBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        use std::task::Poll;
        match self.get_mut() {
            ResponseBody::Whole(data) => {
                Poll::Ready(data.take().map(|d| Ok(hyper::body::Frame::data(d))))
            }
            ResponseBody::H1(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            ResponseBody::H2(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Whole(data) => data.is_none(),
            ResponseBody::H1(b) => b.is_end_stream(),
            ResponseBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            ResponseBody::Whole(data) => {
                hyper::body::SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseBody::H1(b) => b.size_hint(),
            ResponseBody::H2(b) => b.size_hint(),
        }
    }
}
