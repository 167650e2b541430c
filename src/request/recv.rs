//! A request body still arriving on an HTTP/2 stream: the connection pushes DATA into the
//! stream's inbox, the gateway (or the upstream client, in another task for h2c replicas) takes
//! it as a `hyper::body::Body`. What the body takes is credited back to the client (stream and
//! connection WINDOW_UPDATEs, sent by the connection once enough is owed), so a client can never
//! have more than one window of unread data in the gateway's memory.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use hyper::body::{Frame, SizeHint};

/// Why a body ended early.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    #[error("the client reset the HTTP/2 stream before sending its whole body")]
    Reset,
    #[error("the HTTP/2 connection closed before the request body was complete")]
    Closed,
}

#[derive(Debug, Default)]
struct Inbox {
    chunks: VecDeque<Bytes>,
    end: bool,
    failed: Option<bool>,
    waker: Option<Waker>,
    /// Taken by the body, not yet credited back to the client.
    unacked: u32,
}

#[derive(Debug, Default)]
struct State {
    inboxes: HashMap<u32, Inbox>,
    /// Taken on the connection's level, not yet credited back.
    conn_unacked: u32,
}

/// The inboxes of one connection.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<State>,
    /// Set when a WINDOW_UPDATE is owed; the connection looks at the lock only then.
    credit_due: AtomicBool,
    /// The connection's task, woken when credit is due (registered without a lock).
    conn_waker: AtomicWaker,
    /// Owing this much wakes the connection: half a stream window; a quarter of the connection's
    /// (the connection owes the other quarter itself, for bytes it discarded).
    stream_threshold: u32,
    conn_threshold: u32,
}

/// Credits the connection owes the client: (stream, bytes) pairs and the connection's bytes.
#[derive(Debug, Default)]
pub struct Credits {
    pub streams: Vec<(u32, u32)>,
    pub conn: u32,
}

impl Shared {
    pub fn new(stream_window: u32, conn_window: u32) -> Arc<Self> {
        Arc::new(Shared {
            state: Mutex::new(State::default()),
            credit_due: AtomicBool::new(false),
            conn_waker: AtomicWaker::new(),
            stream_threshold: stream_window / 2,
            conn_threshold: conn_window / 4,
        })
    }

    /// `n` bytes taken on the connection's level: flag the credit (and wake the connection) once
    /// enough is owed, or when a stream's share is due.
    fn owe(&self, st: &mut State, n: u32, stream_due: bool) {
        st.conn_unacked = st.conn_unacked.saturating_add(n);
        if (stream_due || st.conn_unacked >= self.conn_threshold)
            && !self.credit_due.swap(true, Ordering::AcqRel)
        {
            self.conn_waker.wake();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A body for stream `id`, starting with what already arrived.
    pub fn open(
        self: &Arc<Self>,
        id: u32,
        first: Vec<Bytes>,
        end: bool,
        len: Option<u64>,
    ) -> RecvBody {
        self.lock().inboxes.insert(
            id,
            Inbox {
                chunks: first.into(),
                end,
                ..Inbox::default()
            },
        );
        RecvBody {
            shared: self.clone(),
            id,
            remaining: len,
        }
    }

    /// DATA for stream `id` (false if its body is gone: the bytes are the connection's to credit).
    pub fn push(&self, id: u32, data: Bytes, end: bool) -> bool {
        let mut st = self.lock();
        let Some(inbox) = st.inboxes.get_mut(&id) else {
            return false;
        };
        if !data.is_empty() {
            inbox.chunks.push_back(data);
        }
        inbox.end |= end;
        if let Some(w) = inbox.waker.take() {
            w.wake();
        }
        true
    }

    /// The stream is gone (reset, or the connection closed): the body fails if not complete.
    /// Returns the bytes it held unread, which the connection credits back.
    pub fn close(&self, id: u32, reset: bool) -> usize {
        let mut st = self.lock();
        let Some(inbox) = st.inboxes.get_mut(&id) else {
            return 0;
        };
        let unread: usize = inbox.chunks.iter().map(Bytes::len).sum();
        inbox.chunks.clear();
        if !inbox.end {
            inbox.failed = Some(reset);
        }
        inbox.end = true;
        if let Some(w) = inbox.waker.take() {
            w.wake();
        }
        unread
    }

    /// Register the connection's waker (woken when credit is due).
    pub fn register(&self, w: &Waker) {
        self.conn_waker.register(w);
    }

    /// The credits owed now, if any.
    pub fn take_credits(&self) -> Option<Credits> {
        if !self.credit_due.swap(false, Ordering::AcqRel) {
            return None;
        }
        let mut st = self.lock();
        let mut c = Credits {
            conn: std::mem::take(&mut st.conn_unacked),
            ..Credits::default()
        };
        for (&id, inbox) in st.inboxes.iter_mut() {
            if inbox.unacked > 0 && !inbox.end {
                c.streams.push((id, std::mem::take(&mut inbox.unacked)));
            }
        }
        Some(c)
    }
}

/// The body of one HTTP/2 request.
#[derive(Debug)]
pub struct RecvBody {
    shared: Arc<Shared>,
    id: u32,
    /// Declared content-length still to come, for the size hint.
    remaining: Option<u64>,
}

impl RecvBody {
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RecvError>>> {
        let shared = &*self.shared;
        let mut guard = shared.lock();
        let st = &mut *guard;
        let Some(inbox) = st.inboxes.get_mut(&self.id) else {
            return Poll::Ready(Some(Err(RecvError::Closed)));
        };
        if let Some(chunk) = inbox.chunks.pop_front() {
            let n = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            inbox.unacked = inbox.unacked.saturating_add(n);
            let stream_due = inbox.unacked >= shared.stream_threshold && !inbox.end;
            shared.owe(st, n, stream_due);
            if let Some(r) = &mut self.remaining {
                *r = r.saturating_sub(chunk.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match (inbox.end, inbox.failed) {
            (true, Some(true)) => Poll::Ready(Some(Err(RecvError::Reset))),
            (true, Some(false)) => Poll::Ready(Some(Err(RecvError::Closed))),
            (true, None) => Poll::Ready(None),
            (false, _) => {
                inbox.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        let st = self.shared.lock();
        st.inboxes
            .get(&self.id)
            .is_none_or(|i| i.end && i.chunks.is_empty() && i.failed.is_none())
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        // Unread bytes are the connection's to credit: count them as taken.
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        if let Some(inbox) = st.inboxes.remove(&self.id) {
            let unread: usize = inbox.chunks.iter().map(Bytes::len).sum();
            self.shared
                .owe(st, u32::try_from(unread).unwrap_or(u32::MAX), false);
        }
    }
}
