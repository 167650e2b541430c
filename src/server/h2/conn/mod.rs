//! One HTTP/2 connection, driven by one task: frames are parsed from the read buffer in
//! batches, every request of a batch is started before anything is written, each stream's
//! gateway future runs inside the connection's task (no task, channel or lock per stream), and
//! the answers of a batch go out together in one write.

mod inbound;
mod outbound;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{self, Head, Reason};
use super::hpack::Decoder;
use crate::proxy::{Answer, ClientBody, ClientHead, ConnInfo, Gateway, ProxyBody};
use crate::request::recv::{RecvBody, Shared};
use crate::server::idle::{InFlight, InFlightGuard};

/// Our SETTINGS_MAX_CONCURRENT_STREAMS.
pub const MAX_STREAMS: usize = 256;
/// Our SETTINGS_INITIAL_WINDOW_SIZE, and the connection's receive window.
pub const STREAM_WINDOW: u32 = 1 << 20;
pub const CONN_WINDOW: u32 = 4 << 20;
/// Request bodies up to this size that arrived whole with their headers are handed over whole.
const WHOLE_BODY: usize = 64 * 1024;
/// Read room reserved at a time (more when a frame being read needs it).
const READ_ROOM: usize = 4096;
/// No more reading or body polling while this much is waiting to be written.
const HIGH_WATER: usize = 64 * 1024;
/// Streams the client may reset while the gateway works on them, net of those it lets finish.
const MAX_RESETS: u32 = 1024;
/// Empty DATA frames (without END_STREAM) tolerated on one connection.
const MAX_EMPTY_DATA: u32 = 1024;
/// CONTINUATION frames allowed in one header block (nghttp2 allows 8; a block within the header
/// limit fills at most 9 frames of the default size, and some clients split finer).
const MAX_CONTINUATIONS: u32 = 32;
/// Stream ids remembered after we reset or finished them early, whose late frames are ignored.
const RECENT: usize = 128;

type Task<'a> = Pin<Box<dyn Future<Output = (u32, Option<Answer>)> + Send + 'a>>;

/// The PING sent with a shutdown's first GOAWAY: its answer means every stream the client
/// opened before seeing that GOAWAY has arrived.
const DRAIN_PING: [u8; 8] = *b"sg-drain";

/// A connection error: GOAWAY with this code, then close.
#[derive(Debug, Clone, Copy)]
pub struct ConnError(pub Reason);

// The pending request head makes `Pending` the large variant; boxing it would cost an allocation
// per request, and each stream is stored once, in the connection's map.
#[allow(clippy::large_enum_variant)]
enum Phase {
    /// Headers in; started after the current batch of frames (its DATA may complete it).
    Pending {
        parts: Option<http::request::Parts>,
        chunks: Vec<Bytes>,
        len: usize,
    },
    /// The gateway is working on it.
    Running { abort: AbortHandle, body: bool },
    /// Answer headers sent; the body goes out as the windows allow.
    Sending {
        body: Pin<Box<ProxyBody>>,
        pending: Option<Bytes>,
        last: bool,
    },
}

struct Stream {
    /// The client may still send DATA.
    recv_open: bool,
    recv_window: i64,
    declared: Option<u64>,
    received: u64,
    send_window: i64,
    phase: Phase,
    _busy: InFlightGuard,
}

/// A client's abuse of the protocol, answered with GOAWAY ENHANCE_YOUR_CALM and counted in
/// `scoregate_http2_abuse_total{kind}`.
#[derive(Debug, Clone, Copy)]
enum Abuse {
    /// More CONTINUATION frames in one header block than [`MAX_CONTINUATIONS`], or an empty one
    /// that does not end it.
    ContinuationFlood,
    /// A header block over twice `max_header_bytes` (plus a frame).
    HeaderBlockSize,
    /// More than [`MAX_EMPTY_DATA`] empty DATA frames.
    EmptyData,
    /// More than [`MAX_RESETS`] requests reset while in flight, net of those answered.
    RapidReset,
}

impl Abuse {
    fn label(self) -> &'static str {
        match self {
            Abuse::ContinuationFlood => "continuation_flood",
            Abuse::HeaderBlockSize => "header_block_size",
            Abuse::EmptyData => "empty_data",
            Abuse::RapidReset => "rapid_reset",
        }
    }
}

/// A header block still arriving in CONTINUATION frames.
struct HeaderBlock {
    continuations: u32,
    id: u32,
    end_stream: bool,
    self_dependent: bool,
    block: BytesMut,
}

pub struct Conn<'a> {
    gateway: &'a Gateway,
    info: ConnInfo,
    in_flight: &'a InFlight,
    max_header: usize,
    rbuf: BytesMut,
    wbuf: BytesMut,
    scratch: BytesMut,
    preface: bool,
    settings_seen: bool,
    decoder: Decoder,
    /// A dynamic table size update (to 0) is due at the start of our next header block.
    table_update: bool,
    peer_window: u32,
    peer_max_frame: usize,
    send_window: i64,
    recv_window: i64,
    streams: HashMap<u32, Stream>,
    tasks: FuturesUnordered<Task<'a>>,
    shared: Arc<Shared>,
    last_id: u32,
    block: Option<HeaderBlock>,
    recent: VecDeque<u32>,
    dispatch: Vec<u32>,
    sending: Vec<u32>,
    /// GOAWAY sent: no new streams; close when the last one is done.
    going_away: bool,
    /// A shutdown was announced (GOAWAY with the largest stream id, and a PING).
    announced: bool,
    /// That PING was answered.
    drain_acked: bool,
    /// A connection error was sent: close once it is written.
    failed: bool,
    read_closed: bool,
    need_flush: bool,
    resets: u32,
    /// Connection-window bytes taken or discarded here (padding, whole bodies, DATA for streams
    /// that are gone), not yet credited back.
    owed: usize,
    empty_data: u32,
}

impl<'a> Conn<'a> {
    pub fn new(
        gateway: &'a Gateway,
        info: ConnInfo,
        in_flight: &'a InFlight,
        max_header: usize,
    ) -> Self {
        let mut wbuf = BytesMut::with_capacity(256);
        frame::put_settings(
            &mut wbuf,
            &[
                (frame::SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS as u32),
                (frame::SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
                (
                    frame::SETTINGS_MAX_HEADER_LIST_SIZE,
                    u32::try_from(max_header).unwrap_or(u32::MAX),
                ),
            ],
        );
        frame::put_window_update(&mut wbuf, 0, CONN_WINDOW - frame::DEFAULT_WINDOW);
        Conn {
            gateway,
            info,
            in_flight,
            max_header,
            rbuf: BytesMut::new(),
            wbuf,
            scratch: BytesMut::new(),
            preface: false,
            settings_seen: false,
            decoder: Decoder::new(4096),
            table_update: true,
            peer_window: frame::DEFAULT_WINDOW,
            peer_max_frame: frame::DEFAULT_MAX_FRAME as usize,
            send_window: i64::from(frame::DEFAULT_WINDOW),
            recv_window: i64::from(CONN_WINDOW),
            streams: HashMap::new(),
            tasks: FuturesUnordered::new(),
            shared: Shared::new(STREAM_WINDOW, CONN_WINDOW),
            last_id: 0,
            block: None,
            recent: VecDeque::new(),
            dispatch: Vec::new(),
            sending: Vec::new(),
            going_away: false,
            announced: false,
            drain_acked: false,
            failed: false,
            read_closed: false,
            need_flush: false,
            resets: 0,
            owed: 0,
            empty_data: 0,
        }
    }

    /// The first step of a graceful shutdown (RFC 9113 §6.8): GOAWAY with the largest stream
    /// id, so the client opens no new stream while those already on their way are still taken,
    /// and a PING whose answer says they have arrived. [`Conn::go_away`] follows.
    pub fn announce_shutdown(&mut self) {
        if !self.announced && !self.going_away && !self.failed {
            self.announced = true;
            frame::put_goaway(&mut self.wbuf, 0x7fff_ffff, Reason::NoError);
            frame::put_ping(&mut self.wbuf, &DRAIN_PING);
        }
    }

    /// The client answered the shutdown's PING.
    pub fn drain_acked(&self) -> bool {
        self.drain_acked
    }

    /// Stop taking new streams (shutdown): GOAWAY now, close after the last answer.
    pub fn go_away(&mut self) {
        if !self.going_away && !self.failed {
            self.going_away = true;
            frame::put_goaway(&mut self.wbuf, self.last_id, Reason::NoError);
        }
    }

    /// Drive the connection; ready when it is over.
    pub fn poll<I>(&mut self, cx: &mut Context<'_>, io: &mut I) -> Poll<()>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        self.shared.register(cx.waker());
        loop {
            let mut progress = false;
            if !self.read_closed && !self.failed && self.wbuf.len() < HIGH_WATER {
                match self.poll_read(cx, io) {
                    Poll::Ready(Ok(0)) => {
                        self.read_closed = true;
                        self.end_request_bodies();
                        progress = true;
                    }
                    Poll::Ready(Ok(_)) => {
                        progress = true;
                        if let Err(ConnError(reason)) = self.on_bytes() {
                            self.fail(reason);
                        }
                        self.start_pending();
                    }
                    Poll::Ready(Err(e)) => {
                        tracing::debug!(remote = %self.info.remote, error = %e, "HTTP/2 read failed");
                        return Poll::Ready(());
                    }
                    Poll::Pending => {}
                }
            }
            if !self.failed {
                while let Poll::Ready(Some((id, resp))) = self.tasks.poll_next_unpin(cx) {
                    progress = true;
                    if let Some(resp) = resp {
                        self.respond(id, resp);
                    }
                }
                if self.poll_bodies(cx) {
                    progress = true;
                }
                self.send_credits();
            }
            match self.poll_write(cx, io) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    tracing::debug!(remote = %self.info.remote, error = %e, "HTTP/2 write failed");
                    return Poll::Ready(());
                }
                Poll::Pending => {}
            }
            let idle = self.streams.is_empty() && self.tasks.is_empty();
            let done = self.failed || (idle && (self.going_away || self.read_closed));
            if done && self.wbuf.is_empty() && !self.need_flush {
                // Best effort: close_notify for TLS; the client may already be gone.
                let _ = Pin::new(&mut *io).poll_shutdown(cx);
                return Poll::Ready(());
            }
            if !progress {
                if idle && self.rbuf.is_empty() && self.wbuf.is_empty() {
                    // An idle connection keeps no buffers (memory per idle connection).
                    self.rbuf = BytesMut::new();
                    self.wbuf = BytesMut::new();
                }
                return Poll::Pending;
            }
        }
    }

    fn poll_read<I: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut I,
    ) -> Poll<io::Result<usize>> {
        let len = self.rbuf.len();
        let want = Head::parse(&self.rbuf).map_or(0, |h| frame::HEAD_LEN + h.len);
        let room = READ_ROOM.max(want.saturating_sub(len));
        self.rbuf.reserve(room);
        // Straight into the spare capacity, which is never zeroed first (that was a memset of
        // the whole read room per read).
        tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut self.rbuf)
    }

    fn poll_write<I: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut I,
    ) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            match Pin::new(&mut *io).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    self.need_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.wbuf.capacity() > 4 * HIGH_WATER {
            self.wbuf = BytesMut::new();
        }
        if self.need_flush {
            match Pin::new(&mut *io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.need_flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// The client closed its side: bodies still arriving never will. They fail (the gateway
    /// answers or gives up at once) instead of waiting for the scoring timeout, so the connection
    /// ends — and a shutdown's drain with it.
    fn end_request_bodies(&mut self) {
        for (&id, st) in self.streams.iter_mut() {
            if std::mem::take(&mut st.recv_open) {
                self.owed += self.shared.close(id, false);
            }
        }
    }

    /// The connection error for a client's abuse, counted and logged.
    fn calm(&self, abuse: Abuse) -> ConnError {
        self.gateway.metrics().h2_abuse(abuse.label());
        tracing::debug!(remote = %self.info.remote, kind = abuse.label(), "HTTP/2 client abuse; closing the connection");
        ConnError(Reason::EnhanceYourCalm)
    }

    /// A connection error: GOAWAY, drop every stream, close once written.
    fn fail(&mut self, reason: Reason) {
        tracing::debug!(remote = %self.info.remote, ?reason, "HTTP/2 connection error");
        frame::put_goaway(&mut self.wbuf, self.last_id, reason);
        self.failed = true;
        self.close_all();
    }

    fn close_all(&mut self) {
        for (id, st) in self.streams.drain() {
            if let Phase::Running { abort, .. } = &st.phase {
                abort.abort();
            }
            self.shared.close(id, false);
        }
        self.sending.clear();
        self.dispatch.clear();
    }

    /// Start the requests whose headers arrived in the last batch of frames.
    fn start_pending(&mut self) {
        for id in std::mem::take(&mut self.dispatch) {
            let Some(st) = self.streams.get_mut(&id) else {
                continue;
            };
            let Phase::Pending { parts, chunks, len } = &mut st.phase else {
                continue;
            };
            let Some(parts) = parts.take() else {
                continue;
            };
            let whole = !st.recv_open && *len <= WHOLE_BODY;
            let body = if whole {
                self.owed += *len;
                ClientBody::Whole(match chunks.len() {
                    0 => None,
                    1 => chunks.pop(),
                    _ => Some(chunks.concat().into()),
                })
            } else {
                let first = std::mem::take(chunks);
                let body: RecvBody = self.shared.open(id, first, !st.recv_open, st.declared);
                ClientBody::H2(body)
            };
            let (abort, reg) = AbortHandle::new_pair();
            let (gateway, info) = (self.gateway, self.info);
            // The gateway's future is made inside the task: made outside, the few KB of it
            // would be copied once more on the way into the box.
            self.tasks.push(Box::pin(async move {
                let answer = gateway.serve(ClientHead::Parsed(parts), body, info);
                (id, Abortable::new(answer, reg).await.ok())
            }));
            st.phase = Phase::Running {
                abort,
                body: !whole,
            };
        }
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        // Bodies held elsewhere (an h2c replica's connection task) must not wait forever.
        self.close_all();
    }
}
