//! What the server sends: each answer's header block, its body as DATA frames within the
//! client's flow-control windows, trailers, and the WINDOW_UPDATEs owed for request bodies.

use std::task::{Context, Poll};

use bytes::BufMut;
use hyper::body::Body;

use super::super::frame::{self, Reason};
use super::super::{hpack, request};
use super::{CONN_WINDOW, Conn, HIGH_WATER, Phase};
use crate::http1::Framing;
use crate::http1::raw::{self, Role};
use crate::http1::response::framing;
use crate::proxy::Answer;

impl Conn<'_> {
    /// 431 for a header list over SETTINGS_MAX_HEADER_LIST_SIZE (as the h2 crate answers).
    pub(super) fn too_large(&mut self, id: u32, end_stream: bool) {
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

    pub(super) fn put_table_update(&mut self) {
        if std::mem::take(&mut self.table_update) {
            hpack::put_table_size_zero(&mut self.scratch);
        }
    }

    /// The gateway's answer for stream `id`: its headers now, its body as windows allow.
    pub(super) fn respond(&mut self, id: u32, answer: Answer) {
        if !self.streams.contains_key(&id) {
            return;
        }
        let Answer {
            status,
            headers,
            body,
        } = answer;
        let end = body.is_end_stream();
        self.scratch.clear();
        self.put_table_update();
        let out = &mut self.scratch;
        hpack::put_status(out, status);
        // The gateway has already left out every hop-by-hop header (connection-specific ones
        // included) of what a replica answered; an HTTP/1.1 replica's names may be in any case.
        let (mut dated, mut length) = (false, false);
        headers.for_each(|name, value| {
            match raw::role(name) {
                Role::Hop => return,
                Role::Date => dated = true,
                Role::Length => length = true,
                _ => {}
            }
            hpack::put_field(out, name, value);
        });
        drop(headers);
        if !dated {
            hpack::put_date(out);
        }
        if let Framing::Length(n) = framing(status, body.size_hint().exact())
            && !length
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
    pub(super) fn finish(&mut self, id: u32) {
        let Some(st) = self.streams.remove(&id) else {
            return;
        };
        // Each answered request earns back one reset: a long-lived connection whose client
        // cancels now and then is never cut off, one that mostly resets is.
        self.resets = self.resets.saturating_sub(1);
        if st.recv_open {
            // Answered before the client finished sending: ask it to stop (§8.1).
            frame::put_rst(&mut self.wbuf, id, Reason::NoError);
            self.remember(id);
        }
        self.drop_stream(id, st, false);
    }

    /// Send what the answer bodies have, within the flow-control windows. True if anything moved.
    pub(super) fn poll_bodies(&mut self, cx: &mut Context<'_>) -> bool {
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
                Pump::Abandoned => {
                    progress = true;
                    if let Some(st) = self.streams.remove(&id) {
                        self.drop_stream(id, st, false);
                    }
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
                if self.read_closed {
                    // The client is gone: no WINDOW_UPDATE will ever come.
                    return Pump::Abandoned;
                }
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
                            hpack::put_field(
                                &mut self.scratch,
                                name.as_str().as_bytes(),
                                value.as_bytes(),
                            );
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
    pub(super) fn send_credits(&mut self) {
        let c = self.shared.take_credits().unwrap_or_default();
        self.owed += c.conn as usize;
        for (id, n) in c.streams {
            if let Some(st) = self.streams.get_mut(&id)
                && st.recv_open
                && n > 0
            {
                st.recv_window += i64::from(n);
                frame::put_window_update(&mut self.wbuf, id, n);
            }
        }
        // The bodies' share comes in quarters of the window (`Shared`), the connection's own
        // discards are sent from a quarter on: never more than half the window owed.
        if c.conn > 0 || self.owed >= (CONN_WINDOW / 4) as usize {
            let n = u32::try_from(self.owed).unwrap_or(u32::MAX);
            self.owed -= n as usize;
            self.recv_window += i64::from(n);
            frame::put_window_update(&mut self.wbuf, 0, n);
        }
    }
}

enum Pump {
    Blocked,
    Moved,
    Done,
    Failed,
    /// Blocked on a window the client, now gone, will never open.
    Abandoned,
}
