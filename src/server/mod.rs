//! Listeners and connections: the accept loops (connection cap, accept backoff), TLS handshakes
//! (bounded, counted), then per connection: HTTP/2 (ALPN `h2`, or the h2c preface on the plain
//! listener) to the gateway's own HTTP/2 server (`h2`); HTTP/1.1 to the fast path (`fast`),
//! which hands a connection to hyper (`wire::Rewind` replays what it read) at the first request
//! it does not take; an idle timeout (`idle`); and the drain: once told to stop, accepting
//! stops and in-flight requests finish within the grace period ([`serve`]).

mod fast;
pub mod h2;
mod idle;
mod listeners;
pub mod wire;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use idle::{IdleIo, InFlight};

pub use listeners::{BoundAddrs, Listeners};

use crate::busy_poll::Working;
use crate::config::Limits;
use crate::metrics::{HandshakeMetrics, Metrics, MetricsError};
use crate::proxy::{ConnInfo, Gateway};
use crate::tls::{self, TlsError};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{field}: cannot listen on {addr}: {source}")]
    Bind {
        field: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What the listeners' connections need, built by the composition root (`app`).
pub struct Server {
    gateway: Arc<Gateway>,
    acceptor: Option<Arc<rustls::ServerConfig>>,
    handshakes: HandshakeMetrics,
    metrics: Metrics,
    limits: Limits,
    /// The HTTP/1.1 fast path's limits (from `limits`).
    fast: fast::Settings,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Server {
    pub fn new(
        gateway: Arc<Gateway>,
        acceptor: Option<Arc<rustls::ServerConfig>>,
        metrics: &Metrics,
        limits: &Limits,
    ) -> Self {
        Server {
            gateway,
            acceptor,
            handshakes: metrics.handshakes(),
            metrics: metrics.clone(),
            fast: fast::Settings {
                header_read_timeout: limits.header_read_timeout,
                max_head: limits.max_header_bytes,
                max_body: limits.max_body_bytes.min(fast::MAX_FAST_BODY),
            },
            limits: limits.clone(),
        }
    }
}

/// The serving listeners: TLS and plain HTTP close when `stop` (of [`serve`]) is cancelled,
/// the peer port when `peer_stop` is (after the gateway left its group).
pub struct Serving {
    pub tls: Option<TcpListener>,
    pub http: Option<TcpListener>,
    pub peer: Option<TcpListener>,
    pub peer_stop: CancellationToken,
}

/// Accept on the listeners until `stop` turns true, then drain: in-flight requests finish
/// within `limits.shutdown_grace`, then the remaining connections close.
pub async fn serve(server: Arc<Server>, listeners: Serving, stop: CancellationToken) {
    let Serving {
        tls,
        http,
        peer,
        peer_stop,
    } = listeners;
    let graceful = GracefulShutdown::new();
    let conn_limit = Arc::new(Semaphore::new(server.limits.max_connections));
    let builder = Arc::new(conn_builder(&server.limits));
    let ctx = AcceptCtx {
        server: &server,
        graceful: &graceful,
        conn_limit: &conn_limit,
        builder: &builder,
    };
    let tls_loop = async {
        if let (Some(l), Some(acc)) = (tls, server.acceptor.clone()) {
            ctx.accept_loop(l, Some(acc), false, stop.clone()).await;
        }
    };
    let http_loop = async {
        if let Some(l) = http {
            ctx.accept_loop(l, None, false, stop.clone()).await;
        }
    };
    // Requests handed over by other gateways: plaintext HTTP/1.1 on the node network, each
    // with its proof (checked by the proxy).
    let peer_loop = async {
        if let Some(l) = peer {
            ctx.accept_loop(l, None, true, peer_stop).await;
        }
    };
    let announce = async {
        stop.cancelled().await;
        tracing::info!(
            open_connections = graceful.count(),
            grace_ms = server.limits.shutdown_grace.as_millis() as u64,
            "shutting down: stopped accepting, draining in-flight requests"
        );
    };
    tokio::join!(tls_loop, http_loop, peer_loop, announce);

    match tokio::time::timeout(server.limits.shutdown_grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("drained; all connections closed"),
        Err(_) => tracing::warn!("grace period elapsed; closing the remaining connections"),
    }
}

struct AcceptCtx<'a> {
    server: &'a Arc<Server>,
    graceful: &'a GracefulShutdown,
    conn_limit: &'a Arc<Semaphore>,
    builder: &'a Arc<auto::Builder<TokioExecutor>>,
}

impl AcceptCtx<'_> {
    async fn accept_loop(
        &self,
        listener: TcpListener,
        acceptor: Option<Arc<rustls::ServerConfig>>,
        peer: bool,
        stop: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(5);
        loop {
            let (stream, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => { backoff = Duration::from_millis(5); x }
                    Err(e) => {
                        // Out of file descriptors or similar: back off instead of spinning.
                        tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            // At the cap, this one connection waits (unserved, no handshake) for a slot and the
            // rest stay in the kernel's backlog. Taking the slot after `accept` keeps an idle
            // listener from holding one.
            let permit = tokio::select! {
                p = self.conn_limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = stop.cancelled() => return,
            };
            let _ = stream.set_nodelay(true);
            let conn = Conn {
                server: self.server.clone(),
                builder: self.builder.clone(),
                watcher: self.graceful.watcher(),
                stop: stop.clone(),
            };
            let open = OpenConn::new(self.server.metrics.connections_open.clone(), permit);
            // The connection's future is spawned as built, not wrapped in another async block:
            // a wrapper would keep room for the stream and the future it awaits twice over, and
            // that room is held by every idle connection. `Working` adds no room: it counts the
            // future's polls as work for busy polling (`runtime.busy_poll_us`).
            match &acceptor {
                Some(acc) => {
                    let serve = conn.serve_tls(stream, remote, acc.clone(), open);
                    tokio::spawn(Working::new(serve));
                }
                None => {
                    let info = ConnInfo { remote, tls: false, peer };
                    // h2c with prior knowledge is recognised by its preface when the fast path
                    // hands the connection over.
                    tokio::spawn(Working::new(conn.serve_http(stream, info, false, open)));
                }
            }
        }
    }
}

/// Counts an open connection (`scoregate_connections_open`) and holds its slot under the
/// connection cap, until the connection's future ends.
struct OpenConn {
    gauge: prometheus::IntGauge,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl OpenConn {
    fn new(gauge: prometheus::IntGauge, slot: tokio::sync::OwnedSemaphorePermit) -> Self {
        gauge.inc();
        OpenConn { gauge, _slot: slot }
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

type Accepting = std::pin::Pin<
    Box<
        dyn Future<Output = Result<std::io::Result<tls::TlsStream>, tokio::time::error::Elapsed>>
            + Send,
    >,
>;

/// Finish a TLS handshake: the stream (boxed: it then lives in one place instead of being
/// copied into each future that owns it in turn) and whether ALPN chose HTTP/2; `None` when it
/// failed, timed out, or was a TLS-ALPN-01 validation (the handshake was the whole exchange).
async fn handshake(
    accept: Accepting,
    hs: &HandshakeMetrics,
    remote: SocketAddr,
) -> Option<(Box<tls::TlsStream>, bool)> {
    let tls = match accept.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            hs.failed.inc();
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            hs.timed_out.inc();
            tracing::debug!(%remote, "TLS handshake timed out");
            return None;
        }
    };
    match tls.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => hs.tls13.inc(),
        _ => hs.tls12.inc(),
    }
    let h2 = match tls.alpn_protocol() {
        Some(crate::acme::challenge::ACME_TLS_ALPN) => return None,
        Some(p) => p == b"h2",
        None => false,
    };
    Some((Box::new(tls), h2))
}

struct Conn {
    server: Arc<Server>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// Held while the fast path serves, so the drain waits for it too; given to hyper after.
    watcher: Watcher,
    stop: CancellationToken,
}

impl Conn {
    /// A TLS connection: the handshake (bounded by `handshake_timeout_ms`, counted), then HTTP.
    /// The handshake's future is boxed and freed once it completes, and the TLS stream is moved
    /// to a box of its own: the connection's future only keeps room for what an established
    /// connection needs (the test below bounds it).
    fn serve_tls(
        self,
        stream: TcpStream,
        remote: SocketAddr,
        acceptor: Arc<rustls::ServerConfig>,
        open: OpenConn,
    ) -> impl Future<Output = ()> + Send + 'static {
        let limit = self.server.limits.handshake_timeout;
        let accept: Accepting = Box::pin(tokio::time::timeout(limit, tls::accept(stream, acceptor)));
        async move {
            let Some((tls, h2)) = handshake(accept, &self.server.handshakes, remote).await else {
                return; // `open` goes with this future
            };
            let info = ConnInfo {
                remote,
                tls: true,
                peer: false,
            };
            self.serve_http(tls, info, h2, open)
                .await;
        }
    }

    /// Serve HTTP: HTTP/1.1 on the fast path until a request needs hyper; HTTP/2 (ALPN h2, or
    /// h2c with prior knowledge, handed over by the fast path with its preface) on our server.
    /// A plain function returning its future: an `async fn` would keep its arguments twice
    /// (as passed and as moved into its body), in every idle connection.
    /// `open` is held until the connection ends.
    fn serve_http<I>(
        self,
        io: I,
        info: ConnInfo,
        h2: bool,
        open: OpenConn,
    ) -> impl Future<Output = ()> + Send
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let in_flight = InFlight::default();
        let mut io = IdleIo::new(io, self.server.limits.idle_timeout, in_flight.clone());
        async move {
            // Moved in, held until the connection ends (used in place: no second copy).
            let _open = &open;
            let server = &self.server;
            // hyper's connection and the HTTP/2 server are boxed (one allocation per
            // connection): held inline, the connection future would reserve room for them, and
            // a second copy of the stream, beside the fast path's — more memory per idle
            // connection.
            if h2 {
                return self.serve_h2(&mut io, info, &in_flight).await;
            }
            let stop = self.stop.clone();
            match fast::serve(
                &mut io,
                &server.gateway,
                info,
                &server.fast,
                &in_flight,
                stop,
            )
            .await
            {
                fast::Ended::Closed => {}
                // h2c with prior knowledge (the plain listener): the HTTP/2 server, preface
                // included.
                fast::Ended::Handoff(unread) if unread.starts_with(h2::PREFACE_START) => {
                    let mut io = wire::Rewind::new(unread, io);
                    self.serve_h2(&mut io, info, &in_flight).await;
                }
                fast::Ended::Handoff(unread) => {
                    self.server.metrics.http1_general.inc();
                    Box::pin(self.serve_hyper(io, unread, info, in_flight)).await;
                }
            }
        }
    }

    /// Our HTTP/2 server on `io`, boxed: its state lives apart from the connection's future.
    fn serve_h2<'a, J>(
        &'a self,
        io: &'a mut J,
        info: ConnInfo,
        in_flight: &'a InFlight,
    ) -> std::pin::Pin<Box<impl Future<Output = ()> + Send + 'a>>
    where
        J: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        let (gateway, stop) = (&self.server.gateway, self.stop.clone());
        let max_header = self.server.limits.max_header_bytes;
        Box::pin(h2::serve(io, gateway, info, max_header, in_flight, stop))
    }

    /// hyper-util's connection for the HTTP/1.1 requests the fast path does not take, handed over
    /// with the bytes it read (HTTP/2 never gets here: it goes to `h2`).
    async fn serve_hyper<I>(self, io: IdleIo<I>, unread: Bytes, info: ConnInfo, in_flight: InFlight)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(wire::Rewind::new(unread, io));
        let gateway = self.server.gateway.clone();
        let svc = service_fn(move |req| {
            let gateway = gateway.clone();
            let busy = in_flight.enter();
            // Boxed: the request future is a few KB; the connection's own stays small.
            let (parts, body) = req.into_parts();
            let head = crate::proxy::ClientHead::Parsed(parts);
            let body = crate::proxy::ClientBody::Streaming(body);
            let fut = Box::pin(async move { gateway.serve(head, body, info).await });
            async move {
                let resp = fut.await.into_response();
                drop(busy);
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = self.builder.serve_connection(io, svc).into_owned();
        if let Err(e) = self.watcher.watch(conn).await {
            tracing::debug!(remote = %info.remote, error = %e, "connection ended with an error");
        }
    }
}

fn conn_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open connection holds its future for its whole life, idle or not. Structured as it
    /// is (handshake boxed and freed, no `async fn` arguments kept twice, the response's body
    /// future small and large bodies boxed), a TLS connection's is under 1 KB.
    #[tokio::test]
    async fn an_idle_tls_connection_keeps_a_small_future() {
        let config = crate::config::from_toml(
            "[listen]\ntls = \"127.0.0.1:0\"\n[tls]\nself_signed = [\"localhost\"]\n",
            std::path::Path::new("."),
        )
        .expect("config");
        let app = crate::app::App::build(&config).expect("app");
        let app = app.server();
        let acceptor = app.acceptor.clone().expect("a TLS listener");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"));
        let (accepted, _client) = tokio::join!(listener.accept(), client);
        let (stream, remote) = accepted.expect("accept");
        let graceful = GracefulShutdown::new();
        let conn = Conn {
            builder: Arc::new(conn_builder(&app.limits)),
            server: app.clone(),
            watcher: graceful.watcher(),
            stop: CancellationToken::new(),
        };
        let slot = Arc::new(Semaphore::new(1))
            .acquire_owned()
            .await
            .expect("slot");
        let open = OpenConn::new(app.metrics.connections_open.clone(), slot);
        assert_eq!(app.metrics.connections_open.get(), 1);
        // As spawned: `Working` (busy polling's work count) must add nothing.
        let serve = Working::new(conn.serve_tls(stream, remote, acceptor, open));
        let size = std::mem::size_of_val(&serve);
        assert!(size <= 1024, "a TLS connection's future is {size} bytes");
        drop(serve);
        assert_eq!(
            app.metrics.connections_open.get(),
            0,
            "counted until dropped"
        );
    }
}
