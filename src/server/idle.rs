//! The idle timeout of a client connection, for every protocol alike: a connection with no
//! request in flight that has neither sent nor received a byte for `limits.idle_timeout_ms` reads
//! as closed (EOF), so hyper ends it cleanly (TLS close_notify included). It covers a TLS client
//! that completes its handshake and then says nothing, and idle HTTP/2 connections; an HTTP/1.1
//! connection waiting for its next request is bounded sooner by `header_read_timeout_ms`.
//!
//! Cheap on the hot path: a read or write only sets a flag; the timer is looked at when a read
//! would block and re-armed once per period, so the connection closes between one and two
//! periods after its last byte.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Requests in flight on one connection; while non-zero the connection is never idle.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Count a request until the returned guard drops.
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.0.clone())
    }

    fn busy(&self) -> bool {
        self.count() > 0
    }

    /// Requests counted right now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
pub struct IdleIo<T> {
    inner: T,
    period: Duration,
    timer: Pin<Box<Sleep>>,
    touched: bool,
    expired: bool,
    in_flight: InFlight,
}

impl<T> IdleIo<T> {
    pub fn new(inner: T, period: Duration, in_flight: InFlight) -> Self {
        IdleIo {
            inner,
            period,
            timer: Box::pin(tokio::time::sleep(period)),
            touched: false,
            expired: false,
            in_flight,
        }
    }

    /// Whether the idle period has passed (polling the timer registers the waker).
    fn idle(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if !self.touched && !self.in_flight.busy() {
                return true;
            }
            self.touched = false;
            let next = Instant::now() + self.period;
            self.timer.as_mut().reset(next);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Ok(())); // EOF
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => {
                if this.idle(cx) {
                    this.expired = true;
                    tracing::debug!(
                        idle_ms = this.period.as_millis() as u64,
                        "closing an idle connection"
                    );
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
            ready => {
                if buf.filled().len() > before {
                    this.touched = true;
                }
                ready
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touched = true;
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touched = true;
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn silence_reads_as_eof_after_one_to_two_periods() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = IdleIo::new(a, Duration::from_secs(10), InFlight::default());
        let start = Instant::now();
        let mut buf = [0u8; 8];
        b.write_all(b"hi").await.expect("write");
        assert_eq!(io.read(&mut buf).await.expect("read"), 2);
        assert_eq!(io.read(&mut buf).await.expect("eof"), 0);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited <= Duration::from_secs(20),
            "{waited:?}"
        );
        assert_eq!(io.read(&mut buf).await.expect("still eof"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_keeps_the_connection() {
        let (a, _b) = tokio::io::duplex(64);
        let in_flight = InFlight::default();
        let mut io = IdleIo::new(a, Duration::from_secs(10), in_flight.clone());
        let guard = in_flight.enter();
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(100), io.read(&mut buf)).await;
        assert!(r.is_err(), "no EOF while a request is in flight");
        drop(guard);
        assert_eq!(io.read(&mut buf).await.expect("eof"), 0);
    }
}
