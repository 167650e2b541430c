//! The server side of a TLS connection on rustls's unbuffered API: the gateway owns the record
//! buffers instead of rustls, and frees them whenever they are empty.
//!
//! rustls's buffered `ServerConnection` keeps a read buffer (its deframer) of at least 4 KiB for
//! the life of a connection once it has read anything: 4 KiB in every idle keep-alive connection,
//! the biggest single part of what one holds. Here the TLS bytes read (`incoming`), the
//! plaintext not yet taken (`plain`) and the records not yet sent (`out`) are freed as soon as
//! they are empty, and a read buffer is only allocated once the socket is readable — so an idle
//! connection keeps only rustls's state and the socket.
//!
//! Same behaviour as `tokio_rustls::server::TlsStream` for the gateway: records are sent as soon
//! as they are made; a write returns once its records are made (what the socket does not take
//! now goes with the next write or flush, up to [`WRITE_HIGH`] unsent); `close_notify` on
//! shutdown; a `close_notify` from the client reads as the end of the stream, a TCP close without
//! one as an `UnexpectedEof` error (then the end). Handshake
//! records rustls makes after the handshake (session tickets, a `key_update` answer) go out
//! before the next application data.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use rustls::ServerConfig;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedStatus, WriteTraffic,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Read room reserved at a time (more when a record in the buffer needs more).
const READ_ROOM: usize = 4096;
/// The largest TLS record on the wire (TLSCiphertext: 2^14 + 2,048, plus its 5-byte header).
const MAX_RECORD: usize = 16384 + 2048 + 5;
/// Plaintext encrypted per write call.
const MAX_WRITE: usize = 64 * 1024;
/// Records made and not yet sent above which a write waits for the socket first.
const WRITE_HIGH: usize = 64 * 1024;

/// What the connection needs after the records read so far were processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drive {
    /// Plaintext was delivered (into the caller's buffer or `plain`).
    Plaintext,
    /// More bytes from the client are needed.
    NeedInput,
    /// The client sent `close_notify`: nothing more will be read.
    PeerClosed,
}

/// A server TLS connection over a TCP stream (see the module documentation).
pub struct TlsStream {
    io: TcpStream,
    conn: UnbufferedServerConnection,
    /// TLS bytes read and not processed yet.
    incoming: BytesMut,
    /// Plaintext decrypted and not read by the caller yet.
    plain: BytesMut,
    /// Records to send, from `sent` on.
    out: Vec<u8>,
    sent: usize,
    /// Nothing more to read: `close_notify` received or the TCP stream ended.
    read_eof: bool,
    close_sent: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("incoming", &self.incoming.len())
            .field("plain", &self.plain.len())
            .field("unsent", &(self.out.len() - self.sent))
            .field("read_eof", &self.read_eof)
            .finish_non_exhaustive()
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Run the server side of a TLS handshake on `io`. No deadline of its own: the caller bounds it.
pub async fn accept(io: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut s = TlsStream {
        io,
        conn,
        incoming: BytesMut::new(),
        plain: BytesMut::new(),
        out: Vec::new(),
        sent: 0,
        read_eof: false,
        close_sent: false,
    };
    loop {
        let step = match s.drive(None) {
            Ok(step) => step,
            Err(e) => {
                // The alert rustls made for the failure, if the socket takes it.
                let _ = poll_fn(|cx| s.poll_send(cx)).await;
                return Err(e);
            }
        };
        poll_fn(|cx| s.poll_send(cx)).await?;
        if !s.conn.is_handshaking() {
            s.shrink();
            return Ok(s);
        }
        match step {
            Drive::PeerClosed => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection during the TLS handshake",
                ));
            }
            Drive::Plaintext => {}
            Drive::NeedInput => {
                if poll_fn(|cx| s.poll_fill(cx)).await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed the connection during the TLS handshake",
                    ));
                }
            }
        }
    }
}

impl TlsStream {
    /// The negotiated ALPN protocol.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The negotiated protocol version.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Bytes of buffer this connection holds beside rustls's own state (for tests: an idle
    /// connection holds none).
    pub fn buffered_capacity(&self) -> usize {
        self.incoming.capacity() + self.plain.capacity() + self.out.capacity()
    }

    /// Free the buffers that are empty.
    fn shrink(&mut self) {
        if self.incoming.is_empty() && self.incoming.capacity() > 0 {
            self.incoming = BytesMut::new();
        }
        if self.plain.is_empty() && self.plain.capacity() > 0 {
            self.plain = BytesMut::new();
        }
        if self.sent == self.out.len() && self.out.capacity() > 0 {
            self.out = Vec::new();
            self.sent = 0;
        }
    }

    /// Process the records read so far until plaintext comes out, more input is needed or the
    /// client closed. Plaintext goes into `dst` as far as it has room, the rest into `plain`;
    /// records to send are appended to `out`.
    fn drive(&mut self, mut dst: Option<&mut ReadBuf<'_>>) -> io::Result<Drive> {
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let mut extra = 0;
            let next = match state {
                Err(e) => {
                    self.incoming.advance(discard);
                    self.encode_alerts();
                    return Err(tls_error(e));
                }
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    while let Some(rec) = r.next_record() {
                        let rec = rec.map_err(tls_error)?;
                        extra += rec.discard;
                        let mut payload = rec.payload;
                        if let Some(d) = dst.as_deref_mut()
                            && self.plain.is_empty()
                        {
                            let n = payload.len().min(d.remaining());
                            d.put_slice(&payload[..n]);
                            payload = &payload[n..];
                        }
                        self.plain.extend_from_slice(payload);
                    }
                    Some(Drive::Plaintext)
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode_into(&mut self.out, |b| e.encode(b))?;
                    None
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    // `out` is sent in order before anything made after it.
                    t.done();
                    None
                }
                Ok(ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_)) => {
                    Some(Drive::NeedInput)
                }
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                    self.read_eof = true;
                    Some(Drive::PeerClosed)
                }
                Ok(other) => {
                    // Early data (0-RTT) is never enabled on the server's config.
                    return Err(io::Error::other(format!(
                        "unexpected TLS connection state {other:?}"
                    )));
                }
            };
            self.incoming.advance(discard + extra);
            if let Some(step) = next {
                return Ok(step);
            }
        }
    }

    /// After a failure: the alert rustls queued for the client, into `out`.
    fn encode_alerts(&mut self) {
        for _ in 0..4 {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let _ = discard; // the connection is over: nothing more is read
            match state {
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    if encode_into(&mut self.out, |b| e.encode(b)).is_err() {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => return,
            }
        }
    }

    /// Run `op` (encrypt into `out`) once the connection may write, after any handshake records
    /// it has to send first.
    fn write_traffic(
        &mut self,
        op: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> io::Result<()>,
    ) -> io::Result<()> {
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let mut extra = 0;
            match state.map_err(tls_error)? {
                ConnectionState::WriteTraffic(mut w) => {
                    let r = op(&mut w, &mut self.out);
                    self.incoming.advance(discard);
                    return r;
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    encode_into(&mut self.out, |b| e.encode(b))?;
                }
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::ReadTraffic(mut r) => {
                    // Plaintext decrypted on the way: kept for the reader.
                    while let Some(rec) = r.next_record() {
                        let rec = rec.map_err(tls_error)?;
                        extra += rec.discard;
                        self.plain.extend_from_slice(rec.payload);
                    }
                }
                ConnectionState::PeerClosed => self.read_eof = true,
                ConnectionState::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the TLS connection is closed",
                    ));
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        format!("cannot write in TLS connection state {other:?}"),
                    ));
                }
            }
            self.incoming.advance(discard + extra);
        }
    }

    /// Send `out` until it is empty (then freed) or the socket is full.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if self.out.capacity() > 0 {
            self.out = Vec::new();
            self.sent = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Read from the socket into `incoming`: how many bytes (0: the client closed). Room is only
    /// reserved once the socket is readable, so waiting holds no buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            if self.io.poll_read_ready(cx)?.is_pending() {
                if self.incoming.is_empty() && self.incoming.capacity() > 0 {
                    self.incoming = BytesMut::new();
                }
                return Poll::Pending;
            }
            // Room for the rest of the record at the front, at least `READ_ROOM`.
            let record = match self.incoming.get(..5) {
                Some(h) => 5 + usize::from(u16::from_be_bytes([h[3], h[4]])),
                None => 0,
            };
            let want = record
                .min(MAX_RECORD)
                .saturating_sub(self.incoming.len())
                .max(READ_ROOM);
            if self.incoming.capacity() - self.incoming.len() < want {
                self.incoming.reserve(want);
            }
            // tokio's read, not `try_read_buf`: a short read tells it the socket is drained, so
            // the next wait costs no read that finds nothing.
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.incoming) {
                Poll::Ready(r) => return Poll::Ready(r),
                Poll::Pending => continue,
            }
        }
    }

    /// Hand out plaintext already decrypted.
    fn take_plain(&mut self, buf: &mut ReadBuf<'_>) {
        let n = self.plain.len().min(buf.remaining());
        buf.put_slice(&self.plain[..n]);
        self.plain.advance(n);
        if self.plain.is_empty() {
            self.plain = BytesMut::new();
        }
    }
}

/// Grow `out` until `encode` fits its record at the end.
fn encode_into(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> io::Result<()> {
    grow_into(out, 1024, |b| {
        encode(b).map_err(|e| match e {
            EncodeError::InsufficientSize(s) => Ok(s.required_size),
            e => Err(e.to_string()),
        })
    })
}

/// Grow `out` until `encrypt` fits `data`'s records at the end.
fn encrypt_into(
    out: &mut Vec<u8>,
    data: &[u8],
    mut encrypt: impl FnMut(&[u8], &mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    // Per record: header 5, content type 1, tag 16 (TLS 1.2 GCM: explicit nonce 8 + tag 16).
    let room = data.len() + (data.len() / 16384 + 1) * 32;
    grow_into(out, room, |b| {
        encrypt(data, b).map_err(|e| match e {
            EncryptError::InsufficientSize(s) => Ok(s.required_size),
            e => Err(e.to_string()),
        })
    })
}

/// Append what `put` writes at the end of `out`, with `room` bytes, then as many as it says it
/// needs (`Err(Ok(size))`); `Err(Err(why))` fails.
fn grow_into(
    out: &mut Vec<u8>,
    mut room: usize,
    mut put: impl FnMut(&mut [u8]) -> Result<usize, Result<usize, String>>,
) -> io::Result<()> {
    let start = out.len();
    loop {
        out.resize(start + room, 0);
        match put(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Ok(needed)) if needed > room => room = needed,
            Err(Ok(_)) => {
                out.truncate(start);
                return Err(io::Error::other(
                    "TLS record does not fit its reported size",
                ));
            }
            Err(Err(why)) => {
                out.truncate(start);
                return Err(io::Error::other(why));
            }
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.plain.is_empty() {
            this.take_plain(buf);
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.read_eof {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            let step = match this.drive(Some(buf)) {
                Ok(step) => step,
                Err(e) => {
                    let _ = this.poll_send(cx);
                    return Poll::Ready(Err(e));
                }
            };
            // Records made on the way (a `key_update` answer): sent now if the socket takes
            // them, else with the next write.
            if this.sent < this.out.len()
                && let Poll::Ready(Err(e)) = this.poll_send(cx)
            {
                return Poll::Ready(Err(e));
            }
            match step {
                Drive::Plaintext if buf.filled().len() > before || !this.plain.is_empty() => {
                    return Poll::Ready(Ok(()));
                }
                Drive::Plaintext => continue, // an empty record
                Drive::PeerClosed => return Poll::Ready(Ok(())),
                Drive::NeedInput => {}
            }
            match ready!(this.poll_fill(cx))? {
                0 => {
                    // As rustls's own reader: only `close_notify` ends the stream cleanly. (The
                    // HTTP/2 server ends a connection whose client vanished this way — its
                    // streams' replica requests with it — and lets one that half-closed cleanly
                    // finish its answers.)
                    this.read_eof = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        if this.incoming.is_empty() {
                            "the client closed the connection without a TLS close_notify"
                        } else {
                            "the client closed the connection in the middle of a TLS record"
                        },
                    )));
                }
                _ => continue,
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.out.len() - this.sent >= WRITE_HIGH {
            ready!(this.poll_send(cx))?;
        }
        let take = buf.len().min(MAX_WRITE);
        let data = &buf[..take];
        this.write_traffic(|w, out| encrypt_into(out, data, |p, b| w.encrypt(p, b)))?;
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(take))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let parts = bufs.iter().filter(|b| !b.is_empty()).count();
        if parts > 1 && total <= MAX_WRITE {
            // One run of records for all of them, as rustls's own writer makes.
            let mut joined = Vec::with_capacity(total);
            for b in bufs {
                joined.extend_from_slice(b);
            }
            return self.poll_write(cx, &joined);
        }
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        self.poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.close_sent = true;
            // Not writable any more (the client closed both ways, or it failed): only the
            // socket is shut.
            let _ =
                this.write_traffic(|w, out| encrypt_into(out, &[], |_, b| w.queue_close_notify(b)));
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
