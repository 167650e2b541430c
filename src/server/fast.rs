//! The HTTP/1.1 fast path: a connection's requests are parsed straight from the (TLS)
//! plaintext, handed to the gateway with their body already read, and answered with the head and
//! a small body in one write. No dispatcher task, no body channel, no per-request timer: the
//! header-read deadline is one timer per connection, re-armed only when it fires early.
//!
//! It takes only simple requests (`http1::request::take_request`) with a body of at most
//! `MAX_FAST_BODY`, waiting for a body that comes in several reads (head and body written apart,
//! a body in several segments) up to `header_read_timeout_ms` after its head; the first request
//! that is not simple — chunked, a body slower than that, `Expect`, upgrades, HTTP/1.0, anything
//! malformed — hands the connection, with every byte read so far, to hyper for the rest of its
//! life. So hyper's answers to everything unusual are unchanged, and the fast path never has to
//! stream a request body.
//!
//! Same rules as hyper's connection: the head must arrive within `header_read_timeout_ms` of
//! waiting for it (else the connection closes), `Connection: close` is honoured, and on shutdown
//! an idle connection closes at once while one mid-request finishes and closes.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::idle::InFlight;
use crate::http1::{Framing, LAST_CHUNK, put_chunk};
use crate::http1::request::{Take, take_request};
use crate::http1::response::{framing, put_head};
use crate::proxy::{Answer, ClientBody, ClientHead, ConnInfo, Gateway, ProxyBody};
use tokio_util::sync::CancellationToken;

/// Read room reserved at a time.
const READ_ROOM: usize = 4096;
/// Response bodies of known length up to this size go out in the same write as the head.
const INLINE_BODY: u64 = 64 * 1024;
/// Request bodies up to this size are taken by the fast path.
pub const MAX_FAST_BODY: u64 = 64 * 1024;
/// Room reserved at once for the rest of a body still arriving.
const BODY_AHEAD: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct Settings {
    pub header_read_timeout: Duration,
    pub max_head: usize,
    pub max_body: u64,
}

/// How the fast path left a connection.
#[derive(Debug)]
pub enum Ended {
    /// Finished: the client closed, asked to, timed out, or the gateway is stopping.
    Closed,
    /// A request it does not take: these bytes (read, unparsed) and the connection go to hyper.
    Handoff(Bytes),
}

enum Read {
    Data,
    Eof,
    Timeout,
    Stop,
    Failed(io::Error),
}

type StopFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// On shutdown, how long an idle keep-alive connection still waits for one last request.
const STOP_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

struct Session {
    buf: BytesMut,
    out: BytesMut,
    timer: Pin<Box<Sleep>>,
    /// Fires once when the gateway starts shutting down; `None` after.
    stop: Option<StopFuture>,
    stop_rx: CancellationToken,
}

/// Serve `io` until it closes or a request needs hyper. (A plain function returning its future:
/// an `async fn` keeps its arguments twice, and every idle connection holds this future.)
pub fn serve<'a, I>(
    io: &'a mut I,
    gateway: &'a Gateway,
    info: ConnInfo,
    settings: &'a Settings,
    in_flight: &'a InFlight,
    stop_rx: CancellationToken,
) -> impl Future<Output = Ended> + 'a
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut s = Session {
        buf: BytesMut::new(),
        out: BytesMut::new(),
        timer: Box::pin(tokio::time::sleep(settings.header_read_timeout)),
        stop: Some(Box::pin(stop_rx.clone().cancelled_owned())),
        stop_rx,
    };
    async move {
        loop {
            let mut deadline = Instant::now() + settings.header_read_timeout;
            // Once the head is in and its (small) body is not all here yet: the bytes the
            // request needs, and until when they may take. The head is parsed again only once
            // they are all in.
            let mut rest: Option<(usize, Instant)> = None;
            let (head, body, close) = loop {
                if !s.buf.is_empty() && rest.is_none_or(|(total, _)| s.buf.len() >= total) {
                    // The parse result is not held across the read below (224 bytes that
                    // every idle connection's future would keep room for).
                    let more = match take_request(&mut s.buf, settings.max_head, settings.max_body)
                    {
                        Take::Request { head, body, close } => break (head, body, close),
                        Take::Partial => None,
                        Take::Body(total) => Some(total),
                        Take::Other => return Ended::Handoff(s.buf.split().freeze()),
                    };
                    // The rest of the body is still on its way: a client that writes head and
                    // body apart (Python's requests does), or a body in several segments. Wait
                    // for it here for up to `header_read_timeout` from when the head was in; a
                    // body slower than that goes to hyper, which streams it. Room is reserved
                    // for at most BODY_AHEAD more than has arrived (a head announcing 64 KiB that
                    // never come must not hold 64 KiB); past that the buffer grows as bytes do.
                    if let Some(total) = more {
                        s.buf.reserve(total.saturating_sub(s.buf.len()).min(BODY_AHEAD));
                        rest = Some((total, Instant::now() + settings.header_read_timeout));
                    }
                }
                match s.read(io, rest.map_or(deadline, |(_, t)| t)).await {
                    Read::Data => {}
                    // Shutting down mid-head: finish this request, then close.
                    Read::Stop if !s.buf.is_empty() => {}
                    // Shutting down while the connection waits for its next request: the client
                    // may be sending it right now, and closing would race it. A moment more for
                    // one last request, answered with `Connection: close` (haproxy's
                    // idle-close-on-response).
                    Read::Stop => deadline = deadline.min(Instant::now() + STOP_LINGER),
                    Read::Eof => return finish(io).await,
                    Read::Timeout if rest.is_some() => {
                        return Ended::Handoff(s.buf.split().freeze());
                    }
                    Read::Timeout => {
                        if !s.stop_rx.is_cancelled() {
                            tracing::debug!(remote = %info.remote, "request head not received within header_read_timeout_ms; closing");
                        }
                        return finish(io).await;
                    }
                    Read::Failed(e) => {
                        tracing::debug!(remote = %info.remote, error = %e, "connection read failed");
                        return Ended::Closed;
                    }
                }
            };
            let busy = in_flight.enter();
            // Boxed: the request future is a few KB; the connection's own stays small while idle.
            let answer =
                Box::pin(gateway.serve(ClientHead::Raw(head), ClientBody::Whole(body), info));
            let resp = answer.await;
            let close = close || s.stop_rx.is_cancelled();
            let sent = s.respond(io, resp, close).await;
            drop(busy);
            // An idle keep-alive connection keeps no buffer: the next request's first bytes go
            // to a small stack buffer, as a new connection's do (nginx frees its header buffer
            // on keep-alive the same way). Pipelined bytes keep theirs.
            if s.buf.is_empty() {
                s.buf = BytesMut::new();
            }
            match sent {
                Ok(()) if close => return finish(io).await,
                Ok(()) => {}
                Err(e) => {
                    tracing::debug!(remote = %info.remote, error = %e, "writing the response failed");
                    return Ended::Closed;
                }
            }
        }
    }
}

async fn finish<I: AsyncWrite + Unpin>(io: &mut I) -> Ended {
    let _ = io.shutdown().await; // TLS close_notify, then FIN
    Ended::Closed
}

impl Session {
    /// Read more into the buffer, waiting until `deadline`.
    /// A connection's first read uses a small stack buffer, so a connection that never sends a
    /// request holds no read buffer.
    async fn read<I: AsyncRead + Unpin>(&mut self, io: &mut I, deadline: Instant) -> Read {
        if self.buf.capacity() == 0 {
            let mut first = [0u8; 64];
            let mut rb = ReadBuf::new(&mut first);
            let read = |cx: &mut Context<'_>| {
                Pin::new(&mut *io)
                    .poll_read(cx, &mut rb)
                    .map_ok(|()| rb.filled().len())
            };
            let r = wait(read, &mut self.timer, &mut self.stop, deadline).await;
            if let Read::Data = r {
                self.buf.reserve(READ_ROOM);
                self.buf.put_slice(rb.filled());
            }
            return r;
        }
        if self.buf.capacity() - self.buf.len() < READ_ROOM / 4 {
            self.buf.reserve(READ_ROOM);
        }
        // Straight into the spare capacity, which is never zeroed first (that was a 4 KiB
        // memset per read).
        let buf = &mut self.buf;
        let read =
            |cx: &mut Context<'_>| tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf);
        wait(read, &mut self.timer, &mut self.stop, deadline).await
    }

    /// Write the response: head and a small body in one write, else the head then each frame.
    /// The head is written into the buffer before the future is made, so the future keeps only
    /// the body (the whole `Answer` held across its awaits would double its size, and the
    /// connection's future keeps room for this one while idle).
    fn respond<'a, I: AsyncRead + AsyncWrite + Unpin>(
        &'a mut self,
        io: &'a mut I,
        resp: Answer,
        close: bool,
    ) -> impl Future<Output = io::Result<()>> + 'a {
        let Answer {
            status,
            headers,
            mut body,
        } = resp;
        let framing = framing(status, body.size_hint().exact());
        self.out.clear();
        put_head(&mut self.out, status, &headers, framing, close);
        drop(headers);
        async move {
            match framing {
                Framing::None => drop(body),
                Framing::Length(n) if n <= INLINE_BODY => {
                    self.out.reserve(n as usize);
                    while let Some(frame) = next_frame(&mut self.buf, io, &mut body).await? {
                        if let Ok(data) = frame.into_data() {
                            self.out.put_slice(&data);
                        }
                    }
                }
                // Large or chunked: boxed, as it is rare and its future is twice this one.
                _ => {
                    let chunked = framing == Framing::Chunked;
                    Box::pin(self.stream_body(io, body, chunked)).await?;
                }
            }
            if !self.out.is_empty() {
                io.write_all(&self.out).await?;
            }
            io.flush().await?;
            // An idle keep-alive connection keeps no write buffer either.
            self.out = BytesMut::new();
            Ok(())
        }
    }

    /// Write the head, then the body frame by frame (chunked when `chunked`); a chunked body's
    /// last chunk is left in the buffer.
    async fn stream_body<I: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut I,
        mut body: ProxyBody,
        chunked: bool,
    ) -> io::Result<()> {
        io.write_all(&self.out).await?;
        self.out.clear();
        while let Some(frame) = next_frame(&mut self.buf, io, &mut body).await? {
            let Ok(data) = frame.into_data() else {
                continue; // trailers are not forwarded over HTTP/1.1
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                put_chunk(&mut self.out, &data);
                io.write_all(&self.out).await?;
                self.out.clear();
            } else {
                io.write_all(&data).await?;
            }
        }
        if chunked {
            self.out.put_slice(LAST_CHUNK);
        }
        Ok(())
    }
}

/// The next frame of a response body; meanwhile the client's side is watched, so a client
/// that closes or resets its connection while the replica is still producing (a stream between
/// two chunks, a model still thinking) ends the answer at once — and with it the replica's
/// request (nginx's broken-connection check). Bytes the client sends meanwhile (a pipelined
/// request) are kept in `buf`, up to one read's room; past that the client is not read.
async fn next_frame<I: AsyncRead + Unpin>(
    buf: &mut BytesMut,
    io: &mut I,
    body: &mut ProxyBody,
) -> io::Result<Option<hyper::body::Frame<Bytes>>> {
    poll_fn(|cx| {
        if let Poll::Ready(f) = Pin::new(&mut *body).poll_frame(cx) {
            return Poll::Ready(f.transpose().map_err(io::Error::other));
        }
        while buf.len() < READ_ROOM {
            let mut room = [0u8; 512];
            let mut rb = ReadBuf::new(&mut room);
            match Pin::new(&mut *io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the client closed its connection mid-answer",
                    )));
                }
                Poll::Ready(Ok(())) => buf.put_slice(rb.filled()),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
    .await
}

/// Wait for bytes, the deadline (the head's, or the rest of a body's), or shutdown — whichever
/// comes first.
/// `read` polls one read and returns how many bytes it added (0: end of stream).
async fn wait(
    mut read: impl FnMut(&mut Context<'_>) -> Poll<io::Result<usize>>,
    timer: &mut Pin<Box<Sleep>>,
    stop: &mut Option<StopFuture>,
    deadline: Instant,
) -> Read {
    poll_fn(|cx| {
        match read(cx) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Read::Eof),
            Poll::Ready(Ok(_)) => return Poll::Ready(Read::Data),
            Poll::Ready(Err(e)) => return Poll::Ready(Read::Failed(e)),
            Poll::Pending => {}
        }
        if let Some(f) = stop.as_mut()
            && f.as_mut().poll(cx).is_ready()
        {
            *stop = None;
            return Poll::Ready(Read::Stop);
        }
        // One timer per connection: it is re-armed to the current deadline only when it fires.
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= deadline {
                return Poll::Ready(Read::Timeout);
            }
            timer.as_mut().reset(deadline);
        }
    })
    .await
}
