//! A lean HTTP/1.1 client for replicas, driven by the request's own task. The request head (and
//! a body of known, small length) is encoded into one buffer and written with one call; the
//! response head is parsed in place; a body of known, small length is read whole and the
//! connection goes straight back to the pool. Larger or chunked bodies stream from the same
//! connection, which returns to the pool when the body ends.
//!
//! hyper's client connection is a task of its own fed through channels (a task switch each way
//! per request, plus a body channel); this one runs in the request's task instead. h2c keeps
//! hyper's client: one connection multiplexes many requests there. The wire format itself
//! (request heads, response parsing, body decoding) is `http1::client`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use http::{Method, Request, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::replica::Replica;
use super::{Reply, ReplyHeaders};
pub use crate::http1::client::ProtoError;
use crate::http1::client::{Decoder, Step, parse_response_head, put_request_head};
use crate::http1::{Framing, LAST_CHUNK, put_chunk};

/// Request bodies of a known length up to this size go out with the head in one write.
const INLINE_BODY: u64 = 64 * 1024;
/// Response bodies of a known length up to this size are read whole before the answer starts.
const WHOLE_BODY: u64 = 64 * 1024;
const READ_RESERVE: usize = 8 * 1024;

/// An open connection to a replica with whatever it sent that is not consumed yet.
#[derive(Debug)]
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    reused: bool,
}

/// Why an exchange failed before the response head was complete.
#[derive(Debug)]
pub enum SendError {
    /// Nothing of the request left the gateway: the first write failed before the kernel took a
    /// byte of it (the replica had already closed or reset the connection). Safe to send again.
    Unsent(io::Error),
    /// The request, or part of it, was written, then the connection failed or closed before a
    /// byte of an answer arrived. The replica may have read it and acted on it (a reset after
    /// reading looks the same as a reset before), so only a replayable request goes again.
    Unanswered(io::Error),
    /// The connection failed or closed after the answer had begun.
    Io(io::Error),
    /// The replica answered something that is not HTTP/1.1.
    Proto(ProtoError),
    /// The client's request body failed (too large, or the client went away).
    Body(Box<dyn std::error::Error + Send + Sync>),
}

/// The response body failed after the head had been handed on.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the response body from the replica: {0}")]
    Io(#[source] io::Error),
    #[error("{0}")]
    Proto(#[source] ProtoError),
    #[error("the replica closed the connection before the end of the response body")]
    Incomplete,
}

/// A response body that streams from its connection.
#[derive(Debug)]
pub struct Streaming {
    conn: Option<Conn>,
    decoder: Decoder,
    keep_alive: bool,
    replica: Arc<Replica>,
    done: bool,
}

impl Conn {
    pub fn new(io: TcpStream) -> Self {
        Conn {
            io,
            buf: BytesMut::new(),
            reused: false,
        }
    }

    /// Whether it served an exchange before (came from the pool).
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Into the pool: from now on it is a reused connection.
    pub fn pooled(mut self) -> Self {
        self.reused = true;
        self
    }

    /// False when the replica closed (or wrote to) the connection while it sat idle. Costs no
    /// system call unless the event loop saw the socket become readable.
    pub fn usable(&self) -> bool {
        let mut probe = [0u8; 1];
        self.buf.is_empty()
            && matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Write all of `bytes`. `sent` records whether any byte of the request was taken by the
    /// kernel so far: a failure before that is [`SendError::Unsent`], after it
    /// [`SendError::Unanswered`].
    async fn write(&mut self, mut bytes: &[u8], sent: &mut bool) -> Result<(), SendError> {
        while !bytes.is_empty() {
            let e = match self.io.write(bytes).await {
                Ok(0) => io::ErrorKind::WriteZero.into(),
                Ok(n) => {
                    *sent = true;
                    bytes = &bytes[n..];
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            return Err(if *sent {
                SendError::Unanswered(e)
            } else {
                SendError::Unsent(e)
            });
        }
        Ok(())
    }

    /// Spare capacity for the next read.
    fn make_room(&mut self) {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_RESERVE);
        }
    }

    /// Read more of the response; EOF is an error here (the replica had more to send).
    async fn fill(&mut self) -> Result<(), SendError> {
        self.make_room();
        match self.io.read_buf(&mut self.buf).await {
            Ok(0) => Err(SendError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => Ok(()),
            Err(e) => Err(SendError::Io(e)),
        }
    }
}

/// A request encoded for the wire: everything, or the head plus the body still to stream.
pub struct Encoded<B> {
    bytes: BytesMut,
    rest: Rest<B>,
}

/// The part of a request not in [`Encoded::bytes`].
enum Rest<B> {
    /// Nothing: the whole request is encoded.
    None,
    /// The body, to stream after the head (`true`: chunked).
    Body(B, bool),
    /// The body was streamed (or began to be): the request cannot be sent again.
    Streamed,
}

impl<B> Encoded<B> {
    /// A request encoded whole elsewhere (`request::forward::encode_http1`).
    pub fn whole(bytes: BytesMut) -> Self {
        Encoded {
            bytes,
            rest: Rest::None,
        }
    }

    /// Whether the whole request is still at hand (so it can be sent again on a new
    /// connection): it was encoded whole, or its body has not begun to stream.
    pub fn intact(&self) -> bool {
        !matches!(self.rest, Rest::Streamed)
    }
}

/// Encode the head, and the body when its length is known and small. `parts.uri` must be
/// origin-form (the path and query).
pub async fn encode<B>(req: Request<B>) -> Result<(Encoded<B>, Method), SendError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, mut body) = req.into_parts();
    // Sized to the head (and a small body): no regrowth, and no allocation of 1 KiB or more —
    // in glibc, the size that sweeps the fast bins — unless the request needs it.
    let head_len = 64
        + parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + parts
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    let inline = body.size_hint().exact().filter(|&n| n <= INLINE_BODY);
    let mut b = BytesMut::with_capacity(head_len + inline.unwrap_or(0) as usize);
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let end = body.is_end_stream();
    let framing = match body.size_hint().exact() {
        // A bodiless POST says so; a GET without a body says nothing unless the client did.
        _ if end
            && (parts.headers.contains_key(header::CONTENT_LENGTH)
                || !matches!(parts.method, Method::GET | Method::HEAD)) =>
        {
            Framing::Length(0)
        }
        _ if end => Framing::None,
        Some(n) => Framing::Length(n),
        None => Framing::Chunked,
    };
    put_request_head(&mut b, &parts.method, target, &parts.headers, framing);
    let rest = match framing {
        _ if end => Rest::None,
        Framing::Length(n) if n <= INLINE_BODY => {
            b.reserve(n as usize);
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map_err(|e| SendError::Body(e.into()))?.into_data() {
                    b.put_slice(&data);
                }
            }
            Rest::None
        }
        Framing::Chunked => Rest::Body(body, true),
        _ => Rest::Body(body, false),
    };
    Ok((Encoded { bytes: b, rest }, parts.method))
}

/// Send an encoded request and read the response head; a small body is read whole.
pub async fn exchange<B>(
    mut conn: Conn,
    req: &mut Encoded<B>,
    method: &Method,
    replica: &Arc<Replica>,
) -> Result<Reply, SendError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut sent = false;
    conn.write(&req.bytes, &mut sent).await?;
    if matches!(req.rest, Rest::Body(..))
        && let Rest::Body(mut body, chunked) = std::mem::replace(&mut req.rest, Rest::Streamed)
    {
        let mut chunk = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(|e| SendError::Body(e.into()))?.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                // One write per chunk: its size line, data and CRLF in one buffer.
                chunk.clear();
                put_chunk(&mut chunk, &data);
                conn.write(&chunk, &mut sent).await?;
            } else {
                conn.write(&data, &mut sent).await?;
            }
        }
        if chunked {
            conn.write(LAST_CHUNK, &mut sent).await?;
        }
    }
    let mut answered = false;
    let head = loop {
        if let Some(head) = parse_response_head(&mut conn.buf, method).map_err(SendError::Proto)? {
            break head;
        }
        match conn.fill().await {
            Ok(()) => answered = true,
            // Closed or reset before a byte of an answer: whether the replica read the request
            // first cannot be told from here.
            Err(SendError::Io(e)) if !answered => return Err(SendError::Unanswered(e)),
            Err(e) => return Err(e),
        }
    };
    let whole = match head.framing {
        Framing::None => Some(0),
        Framing::Length(n) if n <= WHOLE_BODY => Some(n as usize),
        _ => None,
    };
    let body = match (whole, head.framing) {
        (Some(n), _) => {
            while conn.buf.len() < n {
                conn.fill().await?;
            }
            let data = (n > 0).then(|| conn.buf.split_to(n).freeze());
            if head.keep_alive && conn.buf.is_empty() {
                replica.put_idle(conn);
            }
            super::ResponseBody::Whole(data)
        }
        (None, framing) => super::ResponseBody::H1(Streaming {
            conn: Some(conn),
            decoder: Decoder::new(framing),
            keep_alive: head.keep_alive && framing != Framing::Close,
            replica: replica.clone(),
            done: false,
        }),
    };
    Ok(Reply {
        status: head.status,
        headers: ReplyHeaders::Raw(head.headers),
        body,
    })
}

impl Streaming {
    pub fn is_end_stream(&self) -> bool {
        self.done
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None if self.done => SizeHint::with_exact(0),
            None => SizeHint::default(),
        }
    }

    fn step(&mut self) -> Result<Step, BodyError> {
        match self.conn.as_mut() {
            Some(conn) => self.decoder.step(&mut conn.buf).map_err(BodyError::Proto),
            None => Ok(Step::End),
        }
    }

    /// The body broke off: the connection closes.
    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.done = true;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }

    /// The body is over: a clean end returns the connection to the pool.
    fn finish(&mut self) {
        self.done = true;
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            self.replica.put_idle(conn);
        }
    }
}

impl Body for Streaming {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.step() {
                Ok(Step::Data(d)) => {
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => return this.fail(e),
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if let Err(e) = ready!(conn.io.poll_read_ready(cx)) {
                return this.fail(BodyError::Io(e));
            }
            conn.make_room();
            match conn.io.try_read_buf(&mut conn.buf) {
                Ok(0) if this.decoder.until_close() => {
                    this.keep_alive = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(BodyError::Incomplete),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return this.fail(BodyError::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        Streaming::size_hint(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;
    use http::StatusCode;
    use http_body_util::Full;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A replica that answers each request on a connection with the next canned reply, and
    /// reports how many connections it accepted.
    async fn replica(
        replies: Vec<&'static [u8]>,
    ) -> (Arc<Replica>, Arc<std::sync::atomic::AtomicUsize>) {
        replica_closing(replies, false).await
    }

    /// `close`: the replica closes each connection right after its reply (keep-alive or not).
    async fn replica_closing(
        replies: Vec<&'static [u8]>,
        close: bool,
    ) -> (Arc<Replica>, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut replies = replies.into_iter();
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    if seen.is_empty() {
                        break;
                    }
                    seen.clear();
                    let Some(reply) = replies.next() else { break };
                    if s.write_all(reply).await.is_err() || close {
                        break;
                    }
                }
            }
        });
        (Arc::new(Replica::new(addr, Protocol::Http1, 10)), accepted)
    }

    /// Send a request the way `Replica::send` does: a pooled connection if one is usable.
    async fn send(r: &Arc<Replica>, req: Request<Full<Bytes>>) -> Result<Reply, String> {
        let (mut encoded, method) = encode(req).await.map_err(|e| format!("{e:?}"))?;
        let conn = match r.take_idle() {
            Some(c) => c,
            None => Conn::new(
                TcpStream::connect(r.addr)
                    .await
                    .map_err(|e| e.to_string())?,
            ),
        };
        exchange(conn, &mut encoded, &method, r)
            .await
            .map_err(|e| format!("{e:?}"))
    }

    async fn get(r: &Arc<Replica>) -> Result<(StatusCode, http::HeaderMap, Bytes), String> {
        let req = Request::get("/score")
            .body(Full::default())
            .expect("request");
        let reply = send(r, req).await?;
        let ReplyHeaders::Raw(headers) = reply.headers else {
            return Err("an HTTP/1.1 reply's headers stay raw".into());
        };
        let bytes = reply
            .body
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((reply.status, headers.to_map(0, |_| false), bytes))
    }

    #[tokio::test]
    async fn chunked_body_with_extensions_and_trailers_then_reuse() {
        let (r, accepted) = replica(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ])
        .await;
        let (status, headers, body) = get(&r).await.expect("first");
        assert_eq!(status, 200);
        assert_eq!(headers["x-a"], "1");
        assert_eq!(&body[..], b"hello, world");
        let (_, _, body) = get(&r).await.expect("second");
        assert_eq!(&body[..], b"ok");
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one connection, reused"
        );
    }

    #[tokio::test]
    async fn connection_close_and_http10_are_not_reused() {
        let (r, accepted) = replica(vec![
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\na",
            b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\nb",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nc",
        ])
        .await;
        for want in [b"a", b"b", b"c"] {
            let (_, _, body) = get(&r).await.expect("reply");
            assert_eq!(&body[..], want);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn malformed_replies_are_errors() {
        for reply in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            let (r, _) = replica(vec![reply]).await;
            let e = get(&r).await.expect_err("refused");
            assert!(e.contains("Proto("), "{e}");
        }
        let (r, _) = replica(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ])
        .await;
        let e = get(&r).await.expect_err("bad chunk");
        assert!(e.contains("chunked encoding"), "{e}");
    }

    #[tokio::test]
    async fn an_idle_connection_the_replica_closed_is_not_used() {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let (r, accepted) = replica_closing(vec![ok, ok], true).await;
        get(&r).await.expect("first");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (_, _, body) = get(&r).await.expect("second, on a new connection");
        assert_eq!(&body[..], b"ok");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_without_length_streams_and_a_short_body_waits() {
        let (r, _) = replica(vec![b"HTTP/1.1 200 OK\r\n\r\nuntil the end"]).await;
        // The replica keeps the connection open after its only reply; end it by dropping the
        // listener task's connection: the body ends at EOF.
        let req = Request::get("/").body(Full::default()).expect("request");
        let mut body = send(&r, req).await.expect("head").body;
        let first = body.frame().await.expect("frame").expect("ok");
        assert_eq!(first.into_data().expect("data"), "until the end");
        let (r, _) = replica(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"]).await;
        let e = tokio::time::timeout(std::time::Duration::from_millis(200), get(&r)).await;
        assert!(
            e.is_err(),
            "a short body waits for the rest (the scoring timeout bounds it)"
        );
    }
}
