//! One HTTP/2 connection, driven by one task: frames are parsed from the read buffer in
//! batches, every request of a batch is started before anything is written, each stream's
//! gateway future runs inside the connection's task (no task, channel or lock per stream), and
//! the answers of a batch go out together in one write.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{Response, header};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frame::{self, Head, Reason};
use super::hpack::{self, Decoder};
use super::recv::{RecvBody, Shared};
use super::request::{self, Builder, Refused};
use crate::proxy::{ClientBody, ConnInfo, Gateway, ProxyBody};
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
/// Streams the client may reset while the gateway works on them, beyond those it lets finish.
const MAX_RESETS: u32 = 1024;
/// Empty DATA frames (without END_STREAM) tolerated on one connection.
const MAX_EMPTY_DATA: u32 = 1024;
/// Stream ids remembered after we reset or finished them early, whose late frames are ignored.
const RECENT: usize = 128;

type Task<'a> = Pin<Box<dyn Future<Output = (u32, Option<Response<ProxyBody>>)> + Send + 'a>>;

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

/// A header block still arriving in CONTINUATION frames.
struct HeaderBlock {
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
    /// A connection error was sent: close once it is written.
    failed: bool,
    read_closed: bool,
    need_flush: bool,
    resets: u32,
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
            failed: false,
            read_closed: false,
            need_flush: false,
            resets: 0,
            empty_data: 0,
        }
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
        self.rbuf.resize(len + room, 0);
        let mut rb = ReadBuf::new(&mut self.rbuf[len..]);
        let r = Pin::new(io).poll_read(cx, &mut rb);
        let n = rb.filled().len();
        self.rbuf.truncate(len + n);
        r.map_ok(|()| n)
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

    /// Parse and handle every whole frame in the read buffer.
    fn on_bytes(&mut self) -> Result<(), ConnError> {
        if !self.preface {
            let n = self.rbuf.len().min(frame::PREFACE.len());
            if self.rbuf[..n] != frame::PREFACE[..n] {
                return Err(ConnError(Reason::Protocol));
            }
            if n < frame::PREFACE.len() {
                return Ok(());
            }
            self.rbuf.advance(n);
            self.preface = true;
        }
        while let Some(h) = Head::parse(&self.rbuf) {
            if h.len > frame::DEFAULT_MAX_FRAME as usize {
                return Err(ConnError(Reason::FrameSize));
            }
            if self.rbuf.len() < frame::HEAD_LEN + h.len {
                break;
            }
            let mut f = self.rbuf.split_to(frame::HEAD_LEN + h.len).freeze();
            f.advance(frame::HEAD_LEN);
            if !self.settings_seen {
                // The client's preface ends with SETTINGS (RFC 9113 §3.4).
                if h.kind != frame::SETTINGS || h.flags & frame::ACK != 0 {
                    return Err(ConnError(Reason::Protocol));
                }
                self.settings_seen = true;
            }
            self.on_frame(h, f)?;
        }
        Ok(())
    }

    fn on_frame(&mut self, h: Head, payload: Bytes) -> Result<(), ConnError> {
        if let Some(b) = &mut self.block {
            if h.kind != frame::CONTINUATION || h.stream != b.id {
                return Err(ConnError(Reason::Protocol));
            }
            if b.block.len() + payload.len() > self.max_header.saturating_mul(2) + 16_384 {
                return Err(ConnError(Reason::EnhanceYourCalm));
            }
            b.block.extend_from_slice(&payload);
            if h.flags & frame::END_HEADERS != 0 {
                let b = self.block.take().ok_or(ConnError(Reason::Internal))?;
                return self.on_header_block(
                    b.id,
                    b.block.freeze(),
                    b.end_stream,
                    b.self_dependent,
                );
            }
            return Ok(());
        }
        match h.kind {
            frame::DATA => self.on_data(h, payload),
            frame::HEADERS => self.on_headers(h, payload),
            frame::PRIORITY => {
                if h.stream == 0 {
                    return Err(ConnError(Reason::Protocol));
                }
                if payload.len() != 5 {
                    self.reset(h.stream, Reason::FrameSize);
                } else if dependency(&payload) == h.stream {
                    self.reset(h.stream, Reason::Protocol);
                }
                Ok(())
            }
            frame::RST_STREAM => self.on_rst(h, &payload),
            frame::SETTINGS => self.on_settings(h, &payload),
            frame::PING => {
                if h.stream != 0 {
                    return Err(ConnError(Reason::Protocol));
                }
                if payload.len() != 8 {
                    return Err(ConnError(Reason::FrameSize));
                }
                if h.flags & frame::ACK == 0 {
                    frame::put_ping_ack(&mut self.wbuf, &payload);
                }
                Ok(())
            }
            frame::GOAWAY => {
                if h.stream != 0 {
                    return Err(ConnError(Reason::Protocol));
                }
                // The client is leaving: finish what is in flight, take nothing new.
                self.going_away = true;
                Ok(())
            }
            frame::WINDOW_UPDATE => self.on_window_update(h, &payload),
            frame::PUSH_PROMISE | frame::CONTINUATION => Err(ConnError(Reason::Protocol)),
            // Unknown frame types are ignored (§5.5).
            _ => Ok(()),
        }
    }

    fn on_headers(&mut self, h: Head, payload: Bytes) -> Result<(), ConnError> {
        if h.stream == 0 {
            return Err(ConnError(Reason::Protocol));
        }
        let body = frame::unpad(&payload, h.flags).ok_or(ConnError(Reason::Protocol))?;
        let start = body.as_ptr() as usize - payload.as_ptr() as usize;
        let mut block = payload.slice(start..start + body.len());
        let mut self_dependent = false;
        if h.flags & frame::PRIORITY_FLAG != 0 {
            if block.len() < 5 {
                return Err(ConnError(Reason::FrameSize));
            }
            self_dependent = dependency(&block) == h.stream;
            block.advance(5);
        }
        let end_stream = h.flags & frame::END_STREAM != 0;
        if h.flags & frame::END_HEADERS == 0 {
            self.block = Some(HeaderBlock {
                id: h.stream,
                end_stream,
                self_dependent,
                block: BytesMut::from(&block[..]),
            });
            return Ok(());
        }
        self.on_header_block(h.stream, block, end_stream, self_dependent)
    }

    fn on_header_block(
        &mut self,
        id: u32,
        block: Bytes,
        end_stream: bool,
        self_dependent: bool,
    ) -> Result<(), ConnError> {
        if id <= self.last_id {
            return self.on_trailers(id, &block, end_stream);
        }
        let mut b = Builder::new();
        let max = self.max_header;
        self.decoder
            .decode(&block, |f| b.field(f, max))
            .map_err(|_| ConnError(Reason::Compression))?;
        if id.is_multiple_of(2) {
            return Err(ConnError(Reason::Protocol));
        }
        self.last_id = id;
        if self_dependent {
            self.reset(id, Reason::Protocol);
            return Ok(());
        }
        if self.going_away || self.streams.len() >= MAX_STREAMS {
            self.reset(id, Reason::RefusedStream);
            return Ok(());
        }
        let (parts, declared) = match b.finish() {
            Ok(p) => p,
            Err(Refused::Malformed) => {
                self.reset(id, Reason::Protocol);
                return Ok(());
            }
            Err(Refused::TooLarge) => {
                self.too_large(id, end_stream);
                return Ok(());
            }
        };
        if end_stream && declared.is_some_and(|n| n != 0) {
            self.reset(id, Reason::Protocol);
            return Ok(());
        }
        self.streams.insert(
            id,
            Stream {
                recv_open: !end_stream,
                recv_window: i64::from(STREAM_WINDOW),
                declared,
                received: 0,
                send_window: i64::from(self.peer_window),
                phase: Phase::Pending {
                    parts: Some(parts),
                    chunks: Vec::new(),
                    len: 0,
                },
                _busy: self.in_flight.enter(),
            },
        );
        self.dispatch.push(id);
        Ok(())
    }

    /// A header block on a stream already opened: trailers, or a protocol error.
    fn on_trailers(&mut self, id: u32, block: &Bytes, end_stream: bool) -> Result<(), ConnError> {
        let mut bad = false;
        self.decoder
            .decode(block, |f| bad |= request::check_trailer(&f).is_err())
            .map_err(|_| ConnError(Reason::Compression))?;
        let Some(st) = self.streams.get_mut(&id) else {
            if self.recent.contains(&id) {
                return Ok(());
            }
            return Err(ConnError(Reason::StreamClosed));
        };
        if !st.recv_open {
            self.reset(id, Reason::StreamClosed);
        } else if bad || !end_stream || st.declared.is_some_and(|n| n != st.received) {
            self.reset(id, Reason::Protocol);
        } else {
            st.recv_open = false;
            if !matches!(st.phase, Phase::Pending { .. }) {
                self.shared.push(id, Bytes::new(), true);
            }
        }
        Ok(())
    }

    fn on_data(&mut self, h: Head, payload: Bytes) -> Result<(), ConnError> {
        if h.stream == 0 {
            return Err(ConnError(Reason::Protocol));
        }
        let flen = payload.len();
        self.recv_window -= flen as i64;
        if self.recv_window < 0 {
            return Err(ConnError(Reason::FlowControl));
        }
        let data = frame::unpad(&payload, h.flags).ok_or(ConnError(Reason::Protocol))?;
        let start = data.as_ptr() as usize - payload.as_ptr() as usize;
        let data = payload.slice(start..start + data.len());
        if h.stream > self.last_id {
            return Err(ConnError(Reason::Protocol));
        }
        // Padding is ours to credit at once; so is everything not handed to a body.
        self.shared.owe_conn(flen - data.len());
        let end = h.flags & frame::END_STREAM != 0;
        let id = h.stream;
        let Some(st) = self.streams.get_mut(&id) else {
            self.shared.owe_conn(data.len());
            if self.recent.contains(&id) {
                return Ok(());
            }
            return Err(ConnError(Reason::StreamClosed));
        };
        if !st.recv_open {
            self.shared.owe_conn(data.len());
            self.reset(id, Reason::StreamClosed);
            return Ok(());
        }
        st.recv_window -= flen as i64;
        st.received += data.len() as u64;
        let over = st
            .declared
            .is_some_and(|n| st.received > n || (end && st.received != n));
        if st.recv_window < 0 || over {
            self.shared.owe_conn(data.len());
            let reason = if over {
                Reason::Protocol
            } else {
                Reason::FlowControl
            };
            self.reset(id, reason);
            return Ok(());
        }
        if data.is_empty() && !end {
            self.empty_data += 1;
            if self.empty_data > MAX_EMPTY_DATA {
                return Err(ConnError(Reason::EnhanceYourCalm));
            }
        }
        st.recv_open = !end;
        match &mut st.phase {
            Phase::Pending { chunks, len, .. } => {
                *len += data.len();
                if !data.is_empty() {
                    chunks.push(data);
                }
            }
            Phase::Running { body: true, .. } | Phase::Sending { .. } => {
                let n = data.len();
                if !self.shared.push(id, data, end) {
                    self.shared.owe_conn(n);
                }
            }
            Phase::Running { body: false, .. } => self.shared.owe_conn(data.len()),
        }
        Ok(())
    }

    fn on_rst(&mut self, h: Head, payload: &[u8]) -> Result<(), ConnError> {
        if h.stream == 0 {
            return Err(ConnError(Reason::Protocol));
        }
        if payload.len() != 4 {
            return Err(ConnError(Reason::FrameSize));
        }
        if h.stream > self.last_id {
            return Err(ConnError(Reason::Protocol));
        }
        if let Some(st) = self.streams.remove(&h.stream) {
            if matches!(st.phase, Phase::Pending { .. } | Phase::Running { .. }) {
                // A request abandoned while the gateway works on it (rapid reset, CVE-2023-44487).
                self.resets += 1;
                if self.resets > MAX_RESETS {
                    return Err(ConnError(Reason::EnhanceYourCalm));
                }
            }
            // Not remembered: frames after the client's own reset are errors (§5.1).
            self.drop_stream(h.stream, st, true);
        }
        Ok(())
    }

    fn on_settings(&mut self, h: Head, payload: &[u8]) -> Result<(), ConnError> {
        if h.stream != 0 {
            return Err(ConnError(Reason::Protocol));
        }
        if h.flags & frame::ACK != 0 {
            return if payload.is_empty() {
                Ok(())
            } else {
                Err(ConnError(Reason::FrameSize))
            };
        }
        if !payload.len().is_multiple_of(6) {
            return Err(ConnError(Reason::FrameSize));
        }
        for s in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([s[0], s[1]]);
            let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match id {
                frame::SETTINGS_HEADER_TABLE_SIZE => self.table_update = true,
                frame::SETTINGS_ENABLE_PUSH if v > 1 => return Err(ConnError(Reason::Protocol)),
                frame::SETTINGS_INITIAL_WINDOW_SIZE => {
                    if i64::from(v) > frame::MAX_WINDOW {
                        return Err(ConnError(Reason::FlowControl));
                    }
                    let delta = i64::from(v) - i64::from(self.peer_window);
                    self.peer_window = v;
                    for st in self.streams.values_mut() {
                        st.send_window += delta;
                        if st.send_window > frame::MAX_WINDOW {
                            return Err(ConnError(Reason::FlowControl));
                        }
                    }
                }
                frame::SETTINGS_MAX_FRAME_SIZE => {
                    if !(frame::DEFAULT_MAX_FRAME..=0xff_ffff).contains(&v) {
                        return Err(ConnError(Reason::Protocol));
                    }
                    self.peer_max_frame = v as usize;
                }
                _ => {}
            }
        }
        frame::put_settings_ack(&mut self.wbuf);
        Ok(())
    }

    fn on_window_update(&mut self, h: Head, payload: &[u8]) -> Result<(), ConnError> {
        let b: [u8; 4] = payload
            .try_into()
            .map_err(|_| ConnError(Reason::FrameSize))?;
        let inc = i64::from(u32::from_be_bytes(b) & 0x7fff_ffff);
        if h.stream == 0 {
            if inc == 0 {
                return Err(ConnError(Reason::Protocol));
            }
            self.send_window += inc;
            if self.send_window > frame::MAX_WINDOW {
                return Err(ConnError(Reason::FlowControl));
            }
            return Ok(());
        }
        if h.stream > self.last_id {
            return Err(ConnError(Reason::Protocol));
        }
        let Some(st) = self.streams.get_mut(&h.stream) else {
            return Ok(());
        };
        if inc == 0 {
            self.reset(h.stream, Reason::Protocol);
            return Ok(());
        }
        st.send_window += inc;
        if st.send_window > frame::MAX_WINDOW {
            self.reset(h.stream, Reason::FlowControl);
        }
        Ok(())
    }

    /// A stream error: RST_STREAM, and the stream is dropped.
    fn reset(&mut self, id: u32, reason: Reason) {
        frame::put_rst(&mut self.wbuf, id, reason);
        if let Some(st) = self.streams.remove(&id) {
            self.drop_stream(id, st, true);
        }
        self.remember(id);
    }

    fn drop_stream(&mut self, id: u32, st: Stream, reset: bool) {
        match st.phase {
            Phase::Running { abort, .. } => abort.abort(),
            Phase::Pending { len, .. } => self.shared.owe_conn(len),
            Phase::Sending { .. } => {}
        }
        let unread = self.shared.close(id, reset);
        self.shared.owe_conn(unread as usize);
        self.sending.retain(|&s| s != id);
    }

    fn remember(&mut self, id: u32) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(id);
    }

    /// 431 for a header list over SETTINGS_MAX_HEADER_LIST_SIZE (as the h2 crate answers).
    fn too_large(&mut self, id: u32, end_stream: bool) {
        self.scratch.clear();
        self.put_table_update();
        hpack::put_status(
            &mut self.scratch,
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        );
        hpack::put_date(&mut self.scratch);
        frame::put_header_block(&mut self.wbuf, id, &self.scratch, true, self.peer_max_frame);
        if !end_stream {
            frame::put_rst(&mut self.wbuf, id, Reason::NoError);
        }
        self.remember(id);
    }

    fn put_table_update(&mut self) {
        if std::mem::take(&mut self.table_update) {
            hpack::put_table_size_zero(&mut self.scratch);
        }
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
                self.shared.owe_conn(*len);
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
            let req = http::Request::from_parts(parts, body);
            let (abort, reg) = AbortHandle::new_pair();
            let fut = Abortable::new(self.gateway.handle(req, self.info), reg);
            self.tasks
                .push(Box::pin(async move { (id, fut.await.ok()) }));
            st.phase = Phase::Running {
                abort,
                body: !whole,
            };
        }
    }

    /// The gateway's answer for stream `id`: its headers now, its body as windows allow.
    fn respond(&mut self, id: u32, resp: Response<ProxyBody>) {
        if !self.streams.contains_key(&id) {
            return;
        }
        let (parts, body) = resp.into_parts();
        let end = body.is_end_stream();
        self.scratch.clear();
        self.put_table_update();
        let out = &mut self.scratch;
        hpack::put_status(out, parts.status);
        for (name, value) in &parts.headers {
            if !request::is_connection_specific(name) {
                hpack::put_field(out, name.as_str(), value.as_bytes());
            }
        }
        if !parts.headers.contains_key(header::DATE) {
            hpack::put_date(out);
        }
        let bodiless = parts.status.is_informational()
            || parts.status == http::StatusCode::NO_CONTENT
            || parts.status == http::StatusCode::NOT_MODIFIED;
        if !bodiless
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
            && let Some(n) = body.size_hint().exact()
        {
            hpack::put_content_length(out, n);
        }
        frame::put_header_block(&mut self.wbuf, id, &self.scratch, end, self.peer_max_frame);
        if end {
            self.finish(id);
            return;
        }
        if let Some(st) = self.streams.get_mut(&id) {
            st.phase = Phase::Sending {
                body: Box::pin(body),
                pending: None,
                last: false,
            };
            self.sending.push(id);
        }
    }

    /// Our side of stream `id` is complete.
    fn finish(&mut self, id: u32) {
        let Some(st) = self.streams.remove(&id) else {
            return;
        };
        if st.recv_open {
            // Answered before the client finished sending: ask it to stop (§8.1).
            frame::put_rst(&mut self.wbuf, id, Reason::NoError);
            self.drop_stream(id, st, false);
            self.remember(id);
        } else {
            let unread = self.shared.close(id, false);
            self.shared.owe_conn(unread as usize);
            self.sending.retain(|&s| s != id);
        }
    }

    /// Send what the answer bodies have, within the flow-control windows. True if anything moved.
    fn poll_bodies(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        let mut i = 0;
        while i < self.sending.len() {
            if self.wbuf.len() >= HIGH_WATER {
                break;
            }
            let id = self.sending[i];
            match self.pump(cx, id) {
                Pump::Blocked => i += 1,
                Pump::Moved => progress = true,
                Pump::Done => {
                    progress = true;
                    self.finish(id);
                }
                Pump::Failed => {
                    progress = true;
                    self.reset(id, Reason::Internal);
                }
            }
        }
        progress
    }

    /// Move one frame of stream `id`'s answer body into the write buffer, if it can.
    fn pump(&mut self, cx: &mut Context<'_>, id: u32) -> Pump {
        let Some(st) = self.streams.get_mut(&id) else {
            return Pump::Done;
        };
        let Phase::Sending {
            body,
            pending,
            last,
        } = &mut st.phase
        else {
            return Pump::Blocked;
        };
        if let Some(chunk) = pending.take() {
            let window = st
                .send_window
                .min(self.send_window)
                .min(self.peer_max_frame as i64);
            if window <= 0 {
                *pending = Some(chunk);
                return Pump::Blocked;
            }
            let n = chunk.len().min(window as usize);
            let end = *last && n == chunk.len();
            let flags = if end { frame::END_STREAM } else { 0 };
            frame::put_head(&mut self.wbuf, n, frame::DATA, flags, id);
            self.wbuf.put_slice(&chunk[..n]);
            st.send_window -= n as i64;
            self.send_window -= n as i64;
            if n < chunk.len() {
                *pending = Some(chunk.slice(n..));
            }
            return if end { Pump::Done } else { Pump::Moved };
        }
        if *last {
            return Pump::Done;
        }
        match body.as_mut().poll_frame(cx) {
            Poll::Pending => Pump::Blocked,
            Poll::Ready(None) => {
                frame::put_head(&mut self.wbuf, 0, frame::DATA, frame::END_STREAM, id);
                Pump::Done
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(remote = %self.info.remote, error = %e, "answer body failed; resetting the stream");
                Pump::Failed
            }
            Poll::Ready(Some(Ok(f))) => match f.into_data() {
                Ok(data) => {
                    *last = body.is_end_stream();
                    if data.is_empty() {
                        if *last {
                            frame::put_head(&mut self.wbuf, 0, frame::DATA, frame::END_STREAM, id);
                            return Pump::Done;
                        }
                        return Pump::Moved;
                    }
                    *pending = Some(data);
                    Pump::Moved
                }
                Err(f) => {
                    let Ok(trailers) = f.into_trailers() else {
                        return Pump::Moved;
                    };
                    self.scratch.clear();
                    for (name, value) in &trailers {
                        if !request::is_connection_specific(name) {
                            hpack::put_field(&mut self.scratch, name.as_str(), value.as_bytes());
                        }
                    }
                    frame::put_header_block(
                        &mut self.wbuf,
                        id,
                        &self.scratch,
                        true,
                        self.peer_max_frame,
                    );
                    Pump::Done
                }
            },
        }
    }

    /// WINDOW_UPDATEs for what the request bodies took (and what was discarded).
    fn send_credits(&mut self) {
        let Some(c) = self.shared.take_credits() else {
            return;
        };
        for (id, n) in c.streams {
            if let Some(st) = self.streams.get_mut(&id)
                && st.recv_open
                && n > 0
            {
                st.recv_window += i64::from(n);
                frame::put_window_update(&mut self.wbuf, id, n);
            }
        }
        if c.conn > 0 {
            self.recv_window += i64::from(c.conn);
            frame::put_window_update(&mut self.wbuf, 0, c.conn);
        }
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        // Bodies held elsewhere (an h2c replica's connection task) must not wait forever.
        self.close_all();
    }
}

enum Pump {
    Blocked,
    Moved,
    Done,
    Failed,
}

/// The stream a PRIORITY (or HEADERS priority block) depends on.
fn dependency(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff
}
