//! Listeners and connections: the accept loops (connection cap, accept backoff), TLS handshakes
//! (bounded, counted), the HTTP/1.1 fast path (`fast`, `wire`) and hyper-util's auto HTTP/1.1 +
//! HTTP/2 connections behind it (HTTP/2 by ALPN goes straight to hyper), an idle timeout
//! (`idle`), configuration reload (`reload`), and the graceful drain:
//! on shutdown readiness goes false, accepting stops, in-flight requests finish within the grace
//! period, then [`run`] returns.

mod fast;
pub mod h2;
mod idle;
mod listeners;
mod reload;
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
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use idle::{IdleIo, InFlight};

pub use listeners::{BoundAddrs, Listeners};

use crate::acme::{AcmeManager, ChallengeKind, Challenges};
use crate::admin::AdminState;
use crate::busy_poll::Working;
use crate::config::{Config, Limits};
use crate::metrics::{HandshakeMetrics, Metrics, MetricsError};
use crate::proxy::{ConnInfo, Gateway};
use crate::routing::{RouteHandle, RouteTable};
use crate::tls::{self, CertManager, TlsError};

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

/// Everything a running gateway shares: built from a validated [`Config`], before any bind.
pub struct App {
    pub gateway: Arc<Gateway>,
    pub metrics: Metrics,
    pub routes: RouteHandle,
    pub certs: Option<Arc<CertManager>>,
    pub admin: Arc<AdminState>,
    acceptor: Option<TlsAcceptor>,
    handshakes: HandshakeMetrics,
    kubernetes: Option<crate::discovery::KubeSettings>,

    /// The ACME loop, taken by [`run`].
    acme: std::sync::Mutex<Option<AcmeManager>>,
    /// Certificate file poll interval and debounce.
    reload: (Duration, Duration),
    limits: Limits,
    /// The HTTP/1.1 fast path's limits (from `limits`).
    fast: fast::Settings,
    /// The inputs of the route table (file services, ConfigMap, discovery, key Secrets).
    sources: Arc<crate::discovery::RouteSources>,
    /// The configuration file to reload on SIGHUP and on change.
    config_path: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl App {
    pub fn build(config: &Config) -> Result<App, ServerError> {
        let metrics = Metrics::new()?;
        let routes = RouteHandle::new(RouteTable::build(&config.services, &metrics));
        let certs = CertManager::new(config.tls.slots.clone(), metrics.certs.clone());
        let challenges = config.tls.acme.as_ref().map(|_| Challenges::new());
        let alpn_challenges = config
            .tls
            .acme
            .as_ref()
            .filter(|(a, _)| a.challenge == ChallengeKind::TlsAlpn01)
            .and(challenges.clone());
        let acceptor = match &certs {
            Some(c) => Some(TlsAcceptor::from(tls::server_config(
                c.handle(),
                config.tls.allow_tls12,
                alpn_challenges,
            )?)),
            None => None,
        };
        let acme = match (&config.tls.acme, &certs, &challenges) {
            (Some((settings, slot)), Some(certs), Some(ch)) => Some(AcmeManager {
                settings: settings.clone(),
                challenges: ch.clone(),
                certs: certs.clone(),
                slot: *slot,
                metrics: metrics.acme.clone(),
            }),
            _ => None,
        };
        let gateway = Arc::new(Gateway::new(
            routes.clone(),
            metrics.clone(),
            config.limits.max_body_bytes,
            challenges,
            config.access_log,
        ));
        let admin = Arc::new(AdminState::new(
            metrics.clone(),
            routes.clone(),
            certs.clone(),
            config.limits.clone(),
        ));
        let sources = Arc::new(crate::discovery::RouteSources::new(
            config.services.clone(),
            routes.clone(),
            metrics.clone(),
        ));
        Ok(App {
            sources,
            config_path: None,
            kubernetes: config.kubernetes.clone(),
            acme: std::sync::Mutex::new(acme),
            handshakes: metrics.handshakes(),
            reload: (config.tls.reload_poll, config.tls.reload_debounce),
            gateway,
            metrics,
            routes,
            certs,
            admin,
            acceptor,
            fast: fast::Settings {
                header_read_timeout: config.limits.header_read_timeout,
                max_head: config.limits.max_header_bytes,
                max_body: config.limits.max_body_bytes.min(fast::MAX_FAST_BODY),
            },
            limits: config.limits.clone(),
        })
    }

    /// Reload the services from this file on SIGHUP and whenever it changes.
    pub fn reload_from(mut self, path: std::path::PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    /// Export busy polling's rounds (`scoregate_busy_poll_rounds_total`).
    pub fn busy_poll(self, bp: &crate::busy_poll::BusyPoll) -> Result<Self, MetricsError> {
        self.metrics
            .registry
            .register(Box::new(bp.rounds_counter()))
            .map_err(MetricsError::from)?;
        Ok(self)
    }
}

/// Serve until `shutdown` resolves, then drain within `limits.shutdown_grace`.
pub async fn run(app: App, listeners: Listeners, shutdown: impl Future<Output = ()>) {
    let app = Arc::new(app);
    let (stop_tx, stop_rx) = watch::channel(false);
    let graceful = GracefulShutdown::new();
    let conn_limit = Arc::new(Semaphore::new(app.limits.max_connections));
    let builder = Arc::new(conn_builder(&app.limits));

    if let Some(certs) = &app.certs {
        let (poll, debounce) = app.reload;
        tokio::spawn(certs.clone().watch_files(poll, debounce, stop_rx.clone()));
    }
    if let Some(path) = app.config_path.clone() {
        let (poll, debounce) = app.reload;
        let reloader = reload::Reloader {
            path,
            sources: app.sources.clone(),
            poll,
            debounce,
        };
        tokio::spawn(reloader.run(stop_rx.clone()));
    }
    match &app.kubernetes {
        Some(kube) => spawn_kube_watchers(&app, kube.clone(), stop_rx.clone()),
        // Recommendations are exported as metrics even with nothing to scale.
        None => {
            let run = crate::autoscale::run(
                app.routes.clone(),
                app.metrics.clone(),
                None,
                Duration::from_secs(1),
                stop_rx.clone(),
            );
            tokio::spawn(run);
        }
    }
    if let Some(acme) = app.acme.lock().ok().and_then(|mut a| a.take()) {
        tokio::spawn(acme.run(stop_rx.clone()));
    }
    let admin = listeners
        .admin
        .map(|l| tokio::spawn(crate::admin::serve(l, app.admin.clone())));
    let ctx = AcceptCtx {
        app: &app,
        graceful: &graceful,
        conn_limit: &conn_limit,
        builder: &builder,
    };
    let tls_loop = async {
        if let (Some(l), Some(acc)) = (listeners.tls, app.acceptor.clone()) {
            ctx.accept_loop(l, Some(acc), stop_rx.clone()).await;
        }
    };
    let http_loop = async {
        if let Some(l) = listeners.http {
            ctx.accept_loop(l, None, stop_rx.clone()).await;
        }
    };
    let stopper = async {
        app.admin.set_ready(true);
        shutdown.await;
        app.admin.set_ready(false);
        tracing::info!(
            open_connections = graceful.count(),
            grace_ms = app.limits.shutdown_grace.as_millis() as u64,
            "shutting down: stopped accepting, draining in-flight requests"
        );
        let _ = stop_tx.send(true);
    };
    tokio::join!(tls_loop, http_loop, stopper);

    match tokio::time::timeout(app.limits.shutdown_grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("drained; all connections closed"),
        Err(_) => tracing::warn!("grace period elapsed; closing the remaining connections"),
    }
    if let Some(a) = admin {
        a.abort();
    }
}

struct AcceptCtx<'a> {
    app: &'a Arc<App>,
    graceful: &'a GracefulShutdown,
    conn_limit: &'a Arc<Semaphore>,
    builder: &'a Arc<auto::Builder<TokioExecutor>>,
}

impl AcceptCtx<'_> {
    async fn accept_loop(
        &self,
        listener: TcpListener,
        acceptor: Option<TlsAcceptor>,
        mut stop: watch::Receiver<bool>,
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
                _ = stopped(&mut stop) => return,
            };
            // At the cap, this one connection waits (unserved, no handshake) for a slot and the
            // rest stay in the kernel's backlog. Taking the slot after `accept` keeps an idle
            // listener from holding one.
            let permit = tokio::select! {
                p = self.conn_limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = stopped(&mut stop) => return,
            };
            let _ = stream.set_nodelay(true);
            let conn = Conn {
                app: self.app.clone(),
                builder: self.builder.clone(),
                watcher: self.graceful.watcher(),
                stop: stop.clone(),
            };
            let open = OpenConn::new(self.app.metrics.connections_open.clone(), permit);
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
                    let info = ConnInfo { remote, tls: false };
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

type Accepting = std::pin::Pin<Box<tokio::time::Timeout<tokio_rustls::Accept<TcpStream>>>>;

/// Finish a TLS handshake: the stream (boxed: it then lives in one place instead of being
/// copied into each future that owns it in turn) and whether ALPN chose HTTP/2; `None` when it
/// failed, timed out, or was a TLS-ALPN-01 validation (the handshake was the whole exchange).
async fn handshake(
    accept: Accepting,
    hs: &HandshakeMetrics,
    remote: SocketAddr,
) -> Option<(Box<tokio_rustls::server::TlsStream<TcpStream>>, bool)> {
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
    match tls.get_ref().1.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => hs.tls13.inc(),
        _ => hs.tls12.inc(),
    }
    let h2 = match tls.get_ref().1.alpn_protocol() {
        Some(crate::acme::challenge::ACME_TLS_ALPN) => return None,
        Some(p) => p == b"h2",
        None => false,
    };
    Some((Box::new(tls), h2))
}

struct Conn {
    app: Arc<App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// Held while the fast path serves, so the drain waits for it too; given to hyper after.
    watcher: Watcher,
    stop: watch::Receiver<bool>,
}

impl Conn {
    /// A TLS connection: the handshake (bounded by `handshake_timeout_ms`, counted), then HTTP.
    /// The handshake's future is boxed and freed once it completes, and the TLS stream is moved
    /// to a box of its own: the connection's future only keeps room for what an established
    /// connection needs (936 bytes instead of 3,080).
    fn serve_tls(
        self,
        stream: TcpStream,
        remote: SocketAddr,
        acceptor: TlsAcceptor,
        open: OpenConn,
    ) -> impl Future<Output = ()> + Send + 'static {
        let limit = self.app.limits.handshake_timeout;
        let accept = Box::pin(tokio::time::timeout(limit, acceptor.accept(stream)));
        async move {
            let Some((tls, h2)) = handshake(accept, &self.app.handshakes, remote).await else {
                return; // `open` goes with this future
            };
            self.serve_http(tls, ConnInfo { remote, tls: true }, h2, open)
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
        let mut io = IdleIo::new(io, self.app.limits.idle_timeout, in_flight.clone());
        async move {
            // Moved in, held until the connection ends (used in place: no second copy).
            let _open = &open;
            let app = &self.app;
            // hyper's connection and the HTTP/2 server are boxed (one allocation per
            // connection): held inline, the connection future would reserve room for them, and
            // a second copy of the stream, beside the fast path's — more memory per idle
            // connection.
            if h2 {
                return self.serve_h2(&mut io, info, &in_flight).await;
            }
            let stop = self.stop.clone();
            match fast::serve(&mut io, &app.gateway, info, &app.fast, &in_flight, stop).await {
                fast::Ended::Closed => {}
                // h2c with prior knowledge (the plain listener): the HTTP/2 server, preface
                // included.
                fast::Ended::Handoff(unread) if unread.starts_with(h2::PREFACE_START) => {
                    let mut io = wire::Rewind::new(unread, io);
                    self.serve_h2(&mut io, info, &in_flight).await;
                }
                fast::Ended::Handoff(unread) => {
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
        let (gateway, stop) = (&self.app.gateway, self.stop.clone());
        let max_header = self.app.limits.max_header_bytes;
        Box::pin(h2::serve(io, gateway, info, max_header, in_flight, stop))
    }

    /// hyper-util's auto connection (HTTP/2, or HTTP/1.1 handed over by the fast path with the
    /// bytes it read).
    async fn serve_hyper<I>(self, io: IdleIo<I>, unread: Bytes, info: ConnInfo, in_flight: InFlight)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(wire::Rewind::new(unread, io));
        let gateway = self.app.gateway.clone();
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

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The Kubernetes watchers (TLS Secrets, EndpointSlice discovery) and the autoscaler with its
/// Lease election, once a client can be built.
fn spawn_kube_watchers(
    app: &App,
    kube: crate::discovery::KubeSettings,
    stop: watch::Receiver<bool>,
) {
    let (routes, metrics) = (app.routes.clone(), app.metrics.clone());
    let certs = app.certs.clone();
    let secrets = certs.as_ref().map(|c| c.secret_slots()).unwrap_or_default();
    let sources = app.sources.clone();
    tokio::spawn(async move {
        let client = loop {
            match kube.client().await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, "no Kubernetes client yet; retrying in 2 s");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        };
        if let Some(certs) = certs {
            for (slot, ns, name) in secrets {
                let watch = crate::discovery::secret::watch(
                    client.clone(),
                    ns,
                    name,
                    certs.clone(),
                    slot,
                    stop.clone(),
                );
                tokio::spawn(watch);
            }
        }
        let scaler = crate::autoscale::Scaler {
            client: client.clone(),
            lease: kube.lease.clone(),
        };
        let run = crate::autoscale::run(
            routes,
            metrics,
            Some(scaler),
            kube.autoscale_refresh,
            stop.clone(),
        );
        tokio::spawn(run);
        let config_ns = kube
            .config_namespace
            .clone()
            .or_else(|| kube.namespace.clone())
            .unwrap_or_else(|| "default".into());
        let ns = config_ns.clone();
        sources.watch_keys(client.clone(), ns, stop.clone());
        if let Some(cm) = kube.services_configmap.clone() {
            let ns = config_ns.clone();
            let w = crate::discovery::services::watch(
                client.clone(),
                ns,
                cm,
                kube.discovery,
                sources.clone(),
                stop.clone(),
            );
            tokio::spawn(w);
        }
        if kube.discovery {
            tokio::spawn(crate::discovery::endpoints::run(
                client,
                kube.namespace.clone(),
                sources,
                stop,
            ));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open connection holds its future for its whole life, idle or not. Structured as it
    /// is (handshake boxed and freed, no `async fn` arguments kept twice, the response's body
    /// future small and large bodies boxed), a TLS connection's is under 1 KB; it was 3 KB.
    #[tokio::test]
    async fn an_idle_tls_connection_keeps_a_small_future() {
        let config = crate::config::from_toml(
            "[listen]\ntls = \"127.0.0.1:0\"\n[tls]\nself_signed = [\"localhost\"]\n",
            std::path::Path::new("."),
        )
        .expect("config");
        let app = Arc::new(App::build(&config).expect("app"));
        let acceptor = app.acceptor.clone().expect("a TLS listener");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"));
        let (accepted, _client) = tokio::join!(listener.accept(), client);
        let (stream, remote) = accepted.expect("accept");
        let graceful = GracefulShutdown::new();
        let conn = Conn {
            builder: Arc::new(conn_builder(&app.limits)),
            app: app.clone(),
            watcher: graceful.watcher(),
            stop: watch::channel(false).1,
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
