//! What the client sends: the preface, frames in order, header blocks (with their
//! CONTINUATIONs) into requests and trailers, DATA into request bodies under the receive windows,
//! and the connection and stream errors RFC 9113 asks for.

use bytes::{Buf, Bytes, BytesMut};

use super::super::frame::{self, Head, Reason};
use super::super::request::{self, Builder, Refused};
use super::{
    Abuse, Conn, ConnError, HeaderBlock, MAX_CONTINUATIONS, MAX_EMPTY_DATA, MAX_RESETS,
    MAX_STREAMS, Phase, RECENT, STREAM_WINDOW, Stream,
};

impl Conn<'_> {
    /// Parse and handle every whole frame in the read buffer.
    pub(super) fn on_bytes(&mut self) -> Result<(), ConnError> {
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

    pub(super) fn on_frame(&mut self, h: Head, payload: Bytes) -> Result<(), ConnError> {
        if let Some(b) = &mut self.block {
            if h.kind != frame::CONTINUATION || h.stream != b.id {
                return Err(ConnError(Reason::Protocol));
            }
            if b.block.len() + payload.len() > self.max_header.saturating_mul(2) + 16_384 {
                return Err(self.calm(Abuse::HeaderBlockSize));
            }
            // CONTINUATION floods (CVE-2024-27316 and kin): an empty one that does not end the
            // block carries nothing, and a block is never split into many frames honestly.
            b.continuations += 1;
            let empty = payload.is_empty() && h.flags & frame::END_HEADERS == 0;
            if empty || b.continuations > MAX_CONTINUATIONS {
                return Err(self.calm(Abuse::ContinuationFlood));
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
                let reason = if payload.len() != 5 {
                    Reason::FrameSize
                } else if dependency(&payload) == h.stream {
                    Reason::Protocol
                } else {
                    return Ok(());
                };
                // A stream error (§6.3, §5.3.1), but RST_STREAM may not name an idle or closed
                // stream (§5.1, §6.4): on a stream that is not open it is a connection error, as
                // nghttp2 makes it.
                if !self.streams.contains_key(&h.stream) {
                    return Err(ConnError(reason));
                }
                self.reset(h.stream, reason);
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
                } else if payload[..] == super::DRAIN_PING {
                    self.drain_acked = true;
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

    pub(super) fn on_headers(&mut self, h: Head, payload: Bytes) -> Result<(), ConnError> {
        if h.stream == 0 {
            return Err(ConnError(Reason::Protocol));
        }
        let mut block = frame::unpad(&payload, h.flags).ok_or(ConnError(Reason::Protocol))?;
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
                continuations: 0,
                id: h.stream,
                end_stream,
                self_dependent,
                block: BytesMut::from(&block[..]),
            });
            return Ok(());
        }
        self.on_header_block(h.stream, block, end_stream, self_dependent)
    }

    pub(super) fn on_header_block(
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
    pub(super) fn on_trailers(
        &mut self,
        id: u32,
        block: &Bytes,
        end_stream: bool,
    ) -> Result<(), ConnError> {
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

    pub(super) fn on_data(&mut self, h: Head, payload: Bytes) -> Result<(), ConnError> {
        if h.stream == 0 {
            return Err(ConnError(Reason::Protocol));
        }
        let flen = payload.len();
        self.recv_window -= flen as i64;
        if self.recv_window < 0 {
            return Err(ConnError(Reason::FlowControl));
        }
        let data = frame::unpad(&payload, h.flags).ok_or(ConnError(Reason::Protocol))?;
        if h.stream > self.last_id {
            return Err(ConnError(Reason::Protocol));
        }
        // Padding is ours to credit at once; so is everything not handed to a body.
        self.owed += flen - data.len();
        let end = h.flags & frame::END_STREAM != 0;
        let id = h.stream;
        let Some(st) = self.streams.get_mut(&id) else {
            self.owed += data.len();
            if self.recent.contains(&id) {
                return Ok(());
            }
            return Err(ConnError(Reason::StreamClosed));
        };
        if !st.recv_open {
            self.owed += data.len();
            self.reset(id, Reason::StreamClosed);
            return Ok(());
        }
        st.recv_window -= flen as i64;
        st.received += data.len() as u64;
        let over = st
            .declared
            .is_some_and(|n| st.received > n || (end && st.received != n));
        if st.recv_window < 0 || over {
            self.owed += data.len();
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
                return Err(self.calm(Abuse::EmptyData));
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
                    self.owed += n;
                }
            }
            Phase::Running { body: false, .. } => self.owed += data.len(),
        }
        Ok(())
    }

    pub(super) fn on_rst(&mut self, h: Head, payload: &[u8]) -> Result<(), ConnError> {
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
                    return Err(self.calm(Abuse::RapidReset));
                }
            }
            // Not remembered: frames after the client's own reset are errors (§5.1).
            self.drop_stream(h.stream, st, true);
        }
        Ok(())
    }

    pub(super) fn on_settings(&mut self, h: Head, payload: &[u8]) -> Result<(), ConnError> {
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

    pub(super) fn on_window_update(&mut self, h: Head, payload: &[u8]) -> Result<(), ConnError> {
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
    pub(super) fn reset(&mut self, id: u32, reason: Reason) {
        frame::put_rst(&mut self.wbuf, id, reason);
        if let Some(st) = self.streams.remove(&id) {
            self.drop_stream(id, st, true);
        }
        self.remember(id);
    }

    pub(super) fn drop_stream(&mut self, id: u32, st: Stream, reset: bool) {
        match st.phase {
            Phase::Running { abort, .. } => abort.abort(),
            Phase::Pending { len, .. } => self.owed += len,
            Phase::Sending { .. } => {}
        }
        self.owed += self.shared.close(id, reset);
        self.sending.retain(|&s| s != id);
    }

    pub(super) fn remember(&mut self, id: u32) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(id);
    }
}

/// The stream a PRIORITY (or HEADERS priority block) depends on.
fn dependency(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff
}
