//! The HTTP/2 server, for connections that chose `h2` by ALPN and h2c with prior knowledge: its
//! own framing, HPACK and flow control (RFC 9113, RFC 7541) in place of hyper's, so a batch of
//! requests read at once is started at once and answered in one write, with no task, channel or
//! lock per stream. Checked against `h2spec` and real clients (curl, nghttp, reqwest, h2load) in
//! tests/h2_server.rs.
//!
//! Limits: 256 concurrent streams (more are refused), 1 MiB stream and 4 MiB connection receive
//! windows credited as the replica takes the body, header lists up to `max_header_bytes`
//! (larger ones are answered 431), at most 32 CONTINUATION frames per header block and none
//! empty unless it ends the block, at most 1,024 more requests reset by the client while in
//! flight than answered (rapid reset) and 1,024 empty DATA frames per connection (each
//! ENHANCE_YOUR_CALM, counted in `scoregate_http2_abuse_total{kind}`).
//! On shutdown it sends GOAWAY, finishes the streams in flight and closes.

mod conn;
mod frame;
/// Public for the `hpack` fuzz target.
pub mod hpack;
mod huffman;
mod request;

use std::future::{Future, poll_fn};
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};


/// How long after announcing a shutdown the final GOAWAY follows when the client does not
/// answer the PING sooner.
const DRAIN_ANNOUNCED: std::time::Duration = std::time::Duration::from_secs(1);

/// How an h2c prior-knowledge connection starts (the first line of the preface).
pub const PREFACE_START: &[u8] = b"PRI * HTTP/2.0\r\n";

use super::idle::InFlight;
use crate::proxy::{ConnInfo, Gateway};
use tokio_util::sync::CancellationToken;

/// Serve an HTTP/2 connection until it closes.
pub async fn serve<I>(
    io: &mut I,
    gateway: &Gateway,
    info: ConnInfo,
    max_header: usize,
    in_flight: &InFlight,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = conn::Conn::new(gateway, info, in_flight, max_header);
    let mut stopping: Option<Pin<Box<dyn Future<Output = ()> + Send + '_>>> =
        Some(Box::pin(stop.cancelled_owned()));
    // On shutdown: announce it, then the final GOAWAY once the client answered the PING (or
    // after a second): no stream the client sent meanwhile is refused.
    let mut final_goaway: Option<Pin<Box<tokio::time::Sleep>>> = None;
    poll_fn(|cx| {
        if let Some(s) = &mut stopping
            && s.as_mut().poll(cx).is_ready()
        {
            stopping = None;
            conn.announce_shutdown();
            final_goaway = Some(Box::pin(tokio::time::sleep(DRAIN_ANNOUNCED)));
        }
        loop {
            let r = conn.poll(cx, io);
            if r.is_pending()
                && let Some(t) = &mut final_goaway
                && (conn.drain_acked() || t.as_mut().poll(cx).is_ready())
            {
                final_goaway = None;
                conn.go_away();
                continue;
            }
            return r;
        }
    })
    .await;
}

/// Serve one HTTP/2 connection on its own, with no shutdown signal: for the frame-level fuzz
/// target (`fuzz/fuzz_targets/h2_conn.rs`), which drives it over an in-memory pipe. Returns the
/// requests still counted as in flight once the connection is over (every stream ended: 0).
#[cfg(feature = "fuzzing")]
pub async fn serve_alone<I>(
    io: &mut I,
    gateway: &Gateway,
    info: ConnInfo,
    max_header: usize,
) -> usize
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let in_flight = InFlight::default();
    let stop = CancellationToken::new();
    serve(io, gateway, info, max_header, &in_flight, stop).await;
    in_flight.count()
}
